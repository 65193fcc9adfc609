//! The five phases of a fenced change, each an audited transaction under one change id.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use twin_topology::{
    now_ms, AuditMeta, Change, CommitOptions, Committed, Fence, FencePhase, StoreError, Topology,
};

use super::{CutoverReport, FenceArgs, Moves, Outcome, PhaseReport};
use crate::error::CtlError;
use crate::output::time_ms;
use crate::state::Cluster;

/// How often the drain and switch phases read the acknowledgements and presence keys.
const POLL: Duration = Duration::from_millis(100);
/// How often a failing sync gate is checked again.
const GATE_EVERY: Duration = Duration::from_secs(1);
/// The longest one gate check may take.
const GATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Commits `changes` as the command would without a fence; with `--fence`, runs the five
/// phases around that commit. Returns the switch's commit and the cut-over's report.
pub async fn commit(
    cluster: &Cluster,
    topo: &Topology,
    args: &FenceArgs,
    changes: Vec<Change>,
    audit: &AuditMeta,
    options: CommitOptions,
) -> Result<(Committed, Option<CutoverReport>), CtlError> {
    if !args.fence {
        let c = cluster.store.commit_with(changes, audit, &options).await?;
        return Ok((c, None));
    }
    let moves = Moves::of(&cluster.keys, topo, &changes);
    if moves.is_empty() {
        let c = cluster.store.commit_with(changes, audit, &options).await?;
        let report = CutoverReport {
            change_id: Some(c.change_id.clone()),
            services: Vec::new(),
            phases: Vec::new(),
            outcome: Outcome::NothingMoves,
            unconfirmed: Vec::new(),
        };
        return Ok((c, Some(report)));
    }
    let mut fences = BTreeMap::new();
    for m in &moves.services {
        let key = cluster.keys.fence(&m.service);
        let found = cluster.store.get_json::<Fence>(&key).await?;
        // An expired fence (its twinctl died) is replaced; an active one was refused by the
        // guard rails, and a race with another change fails the compare below.
        let state = match found {
            Some(v) => FenceKey {
                revision: v.mod_revision,
                value: Some(serde_json::to_value(v.value).map_err(StoreError::Encode)?),
            },
            None => FenceKey::default(),
        };
        fences.insert(m.service.clone(), state);
    }
    let cut = Cutover {
        cluster,
        args,
        audit,
        change_id: twin_topology::store::new_change_id(),
        records: 0,
        fences,
        moves,
        started: Instant::now(),
        since_ms: now_ms(),
        phases: Vec::new(),
    };
    cut.run(changes, options).await
}

/// One fence key as last written or read: for the next write's compare and audit record.
#[derive(Default)]
struct FenceKey {
    /// Its `mod_revision` (0: absent).
    revision: i64,
    /// Its value (the audit record's `before` of the next write).
    value: Option<serde_json::Value>,
}

struct Cutover<'a> {
    cluster: &'a Cluster,
    args: &'a FenceArgs,
    audit: &'a AuditMeta,
    change_id: String,
    /// Audit records written so far under `change_id`.
    records: usize,
    /// Service → its fence key as this change last wrote it (or found it, before the first
    /// write).
    fences: BTreeMap<String, FenceKey>,
    moves: Moves,
    started: Instant,
    /// Unix milliseconds of the start (the fences' `since_ms`).
    since_ms: u64,
    phases: Vec<PhaseReport>,
}

impl Cutover<'_> {
    async fn run(
        mut self,
        changes: Vec<Change>,
        options: CommitOptions,
    ) -> Result<(Committed, Option<CutoverReport>), CtlError> {
        let max = self.args.fence_max;
        let deadline = self.started + max;
        // 1. fence: sidecars drop it by themselves after twice --fence-max.
        let t = Instant::now();
        let until = now_ms() + 2 * max.as_millis() as u64;
        self.write(
            FencePhase::Fence,
            until,
            Vec::new(),
            &CommitOptions::default(),
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict { what, .. } => CtlError::Refused(format!(
                "{what} is being fenced by another change; nothing changed"
            )),
            other => other.into(),
        })?;
        self.done("fence", t, format!("units fenced until {}", time_ms(until)));
        // 2. drain, 3. sync.
        self.hold(FencePhase::Drain, until, deadline).await?;
        self.hold(FencePhase::Sync, until, deadline).await?;
        // 4. switch: the change itself, and the fence now lasts for the confirmation.
        let t = Instant::now();
        let until = now_ms() + max.as_millis() as u64;
        let committed = match self
            .write(FencePhase::Switch, until, changes, &options)
            .await
        {
            Ok(c) => c,
            Err(e) => return Err(self.rollback("switch", &e.to_string()).await),
        };
        let unconfirmed = self.confirm(committed.revision, t + max).await;
        let note = match unconfirmed.len() {
            0 => format!(
                "weights committed at revision {}; every live sidecar runs them",
                committed.revision
            ),
            n => format!(
                "weights committed at revision {}; {n} sidecar(s) did not confirm",
                committed.revision
            ),
        };
        self.done("switch", t, note);
        // 5. lift.
        let t = Instant::now();
        if let Err(e) = self.lift("lift", "").await {
            return Err(CtlError::failed(format!(
                "fenced change {}: the weights are switched (revision {}), but lifting the fence failed: {e}; sidecars drop it at {}",
                self.change_id,
                committed.revision,
                time_ms(until)
            )));
        }
        self.done(
            "lift",
            t,
            "fence deleted; moved units write in their new datacenter".into(),
        );
        let report = CutoverReport {
            change_id: Some(self.change_id.clone()),
            services: self.moves.services.clone(),
            phases: self.phases,
            outcome: Outcome::Switched,
            unconfirmed,
        };
        Ok((committed, Some(report)))
    }

    /// A phase that waits with the units fenced (drain: the sidecars' acknowledgements;
    /// sync: the sync gate), until `deadline`; its failure rolls the change back.
    async fn hold(
        &mut self,
        phase: FencePhase,
        until: u64,
        deadline: Instant,
    ) -> Result<(), CtlError> {
        let name = phase.as_str();
        let t = Instant::now();
        if let Err(e) = self.phase(phase, until).await {
            return Err(self.rollback(name, &e.to_string()).await);
        }
        let waited = if phase == FencePhase::Drain {
            self.drain(deadline).await
        } else {
            self.sync(deadline).await
        };
        match waited {
            Ok(note) => {
                self.done(name, t, note);
                Ok(())
            }
            Err(why) => Err(self.rollback(name, &why).await),
        }
    }

    fn done(&mut self, phase: &str, since: Instant, note: String) {
        self.phases.push(PhaseReport {
            phase: phase.to_string(),
            ms: since.elapsed().as_millis() as u64,
            note,
        });
    }

    fn audit_for(&self, phase: &str, extra: &str) -> AuditMeta {
        AuditMeta {
            who: self.audit.who.clone(),
            action: format!("{} [{phase}]", self.audit.action),
            reason: if extra.is_empty() {
                self.audit.reason.clone()
            } else {
                format!("{} [{extra}]", self.audit.reason)
            },
        }
    }

    fn fence_value(&self, service: &str, phase: FencePhase, until_ms: u64) -> Option<Fence> {
        let m = self.moves.services.iter().find(|m| m.service == service)?;
        Some(Fence {
            change_id: self.change_id.clone(),
            ranges: m.ranges.clone(),
            until_ms,
            since_ms: self.since_ms,
            phase,
            who: self.audit.who.clone(),
        })
    }

    /// Writes every fence at `phase` (with `extra` changes in the same transaction).
    async fn write(
        &mut self,
        phase: FencePhase,
        until_ms: u64,
        extra: Vec<Change>,
        options: &CommitOptions,
    ) -> Result<Committed, StoreError> {
        let mut changes = extra;
        let mut written = BTreeMap::new();
        for (service, key) in &self.fences {
            let value = self
                .fence_value(service, phase, until_ms)
                .map(|f| serde_json::to_value(f).map_err(StoreError::Encode))
                .transpose()?;
            changes.push(Change {
                key: self.cluster.keys.fence(service),
                expected_revision: key.revision,
                value: value.clone(),
                before: key.value.clone(),
            });
            written.insert(service.clone(), value);
        }
        let n = changes.len();
        let options = CommitOptions {
            change_id: Some(self.change_id.clone()),
            first_record: self.records,
            ..options.clone()
        };
        let audit = if phase == FencePhase::Switch {
            self.audit.clone()
        } else {
            self.audit_for(phase.as_str(), "")
        };
        let c = self
            .cluster
            .store
            .commit_with(changes, &audit, &options)
            .await?;
        self.records += n;
        for (service, key) in &mut self.fences {
            key.revision = c.revision;
            key.value = written.remove(service).flatten();
        }
        Ok(c)
    }

    /// Marks the fences as being in `phase` (for `twinctl status`), audited.
    async fn phase(&mut self, phase: FencePhase, until_ms: u64) -> Result<(), StoreError> {
        self.write(phase, until_ms, Vec::new(), &CommitOptions::default())
            .await
            .map(drop)
    }

    /// Deletes the fences and their acknowledgements, audited as `phase`.
    async fn lift(&mut self, phase: &str, why: &str) -> Result<(), StoreError> {
        let mut changes = Vec::new();
        let mut delete_also = Vec::new();
        for (service, key) in &self.fences {
            changes.push(Change {
                key: self.cluster.keys.fence(service),
                expected_revision: key.revision,
                value: None,
                before: key.value.clone(),
            });
            delete_also.push((self.cluster.keys.fence_acks(service), true));
        }
        let n = changes.len();
        let options = CommitOptions {
            change_id: Some(self.change_id.clone()),
            first_record: self.records,
            delete_also,
            ..CommitOptions::default()
        };
        let audit = self.audit_for(phase, why);
        self.cluster
            .store
            .commit_with(changes, &audit, &options)
            .await?;
        self.records += n;
        Ok(())
    }

    /// Lifts the fence after `phase` failed; the error to exit with (3, or 1 when even
    /// the lift failed).
    async fn rollback(&mut self, phase: &str, why: &str) -> CtlError {
        let id = self.change_id.clone();
        match self.lift("rollback", &format!("{phase} failed: {why}")).await {
            Ok(()) => CtlError::Refused(format!(
                "fenced change {id}: {phase} failed: {why}; the fence is lifted and the weights are unchanged"
            )),
            Err(e) => CtlError::failed(format!(
                "fenced change {id}: {phase} failed: {why}; lifting the fence failed too: {e}; sidecars drop it by themselves within 2 × --fence-max"
            )),
        }
    }

    /// Live sidecars that have not acknowledged every fence of this change.
    async fn unacknowledged(&self) -> Result<(usize, Vec<String>), CtlError> {
        let live = self.cluster.live_nodes().await?;
        let mut acked: BTreeMap<String, usize> = BTreeMap::new();
        for service in self.fences.keys() {
            for (node, ack) in self.cluster.fence_acks(service).await? {
                if ack.change_id == self.change_id {
                    *acked.entry(node).or_default() += 1;
                }
            }
        }
        let need = self.fences.len();
        let pending = live
            .iter()
            .filter(|n| acked.get(&n.node).copied().unwrap_or(0) < need)
            .map(|n| format!("{}/{}", n.dc, n.node))
            .collect();
        Ok((live.len(), pending))
    }

    /// Waits for every live sidecar's acknowledgement, until `deadline`.
    async fn drain(&self, deadline: Instant) -> Result<String, String> {
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        loop {
            let (live, pending) = self.unacknowledged().await.map_err(|e| e.to_string())?;
            if pending.is_empty() {
                return Ok(format!("{live} live sidecar(s) acknowledged"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no acknowledgement within --fence-max {} from {}",
                    humantime::format_duration(self.args.fence_max),
                    pending.join(", ")
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                _ = &mut ctrl_c => return Err("interrupted (Ctrl-C)".into()),
            }
        }
    }

    /// Checks the sync gate every second until it passes or `deadline`.
    async fn sync(&self, deadline: Instant) -> Result<String, String> {
        let Some(gate) = &self.args.sync_gate else {
            return Ok("no --sync-gate given: replication not checked".into());
        };
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match gate
                .check(self.args.prometheus.as_deref(), left.min(GATE_TIMEOUT))
                .await
            {
                Ok(passed) => return Ok(passed),
                Err(why) => why,
            };
            if Instant::now() + GATE_EVERY > deadline {
                return Err(format!(
                    "the sync gate did not pass within --fence-max {}: {last}",
                    humantime::format_duration(self.args.fence_max)
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(GATE_EVERY) => {}
                _ = &mut ctrl_c => return Err(format!("interrupted (Ctrl-C); the gate said: {last}")),
            }
        }
    }

    /// Waits until every live sidecar reports routing revision `revision`, until `deadline`;
    /// the sidecars that did not.
    async fn confirm(&self, revision: i64, deadline: Instant) -> Vec<String> {
        loop {
            let behind: Vec<String> = match self.cluster.live_nodes().await {
                Ok(live) => live
                    .into_iter()
                    .filter(|n| n.presence.routes_revision < revision)
                    .map(|n| {
                        format!(
                            "{}/{} (at revision {})",
                            n.dc, n.node, n.presence.routes_revision
                        )
                    })
                    .collect(),
                Err(e) => vec![format!("presence unreadable: {e}")],
            };
            if behind.is_empty() || Instant::now() >= deadline {
                return behind;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
