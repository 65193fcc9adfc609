//! Failback: undo one audited traffic change. Reads the change's audit records, refuses any
//! change that is not a traffic change, and writes back every route it changed in one
//! transaction, compare-and-swap on the change's own revision: only while each route is
//! still exactly as the change left it. The same checks run for `--dry-run`.

use serde::Serialize;
use twin_topology::{CommitOptions, Committed, KeyKind, Keys, StoreError, Topology};

use crate::cutover::{self, CutoverReport, FenceArgs};
use crate::error::CtlError;
use crate::state::Cluster;

/// The actions of the changes a failback undoes: traffic changes to routes. A fenced
/// change's phases are audited as `ACTION [phase]` ([`base_action`]).
pub const TRAFFIC_ACTIONS: [&str; 6] = [
    "failover",
    "failback",
    "route set",
    "route apply",
    "shift",
    "shift rollback",
];

/// How many audit records of a route a failback looks through to find who already failed
/// back a change.
const UNDONE_LOOKBACK: usize = 200;

/// An audit record's action without a fenced change's phase (`route set [fence]` →
/// `route set`).
pub fn base_action(action: &str) -> &str {
    action.split_once(" [").map_or(action, |(a, _)| a)
}

/// One key a failback restores.
#[derive(Clone, Debug, Serialize)]
pub struct Restore {
    pub key: String,
    /// The value now: what the change wrote (checked to be still in place).
    pub now: Option<serde_json::Value>,
    /// The value restored (what the change replaced).
    pub restored: Option<serde_json::Value>,
    /// The revision the change was committed at; the restore is compare-and-swap on it.
    pub revision: i64,
}

impl Restore {
    /// The `mod_revision` the key must still have: the change's revision, or 0 (absent)
    /// when the change deleted it.
    fn expected_revision(&self) -> i64 {
        if self.now.is_some() {
            self.revision
        } else {
            0
        }
    }
}

/// What a failback of one change writes back.
#[derive(Clone, Debug, Serialize)]
pub struct FailbackPlan {
    pub restores: Vec<Restore>,
    /// Keys the change wrote that a failback leaves as they are (a routes file's
    /// datacenters): it restores routes only.
    pub kept: Vec<String>,
}

/// Reads the audit records of `change_id` and plans restoring every route it changed.
/// Refuses (exit 3) a change that is not a traffic change, and fails (exit 1) when a route
/// moved since — naming the failback that already undid it, when one did.
pub async fn plan(cluster: &Cluster, change_id: &str) -> Result<FailbackPlan, CtlError> {
    let records = cluster.audit_change(change_id).await?;
    if records.is_empty() {
        return Err(CtlError::failed(format!(
            "no audit records with id {change_id} (see twinctl audit)"
        )));
    }
    if let Some((_, r)) = records
        .iter()
        .find(|(_, r)| !TRAFFIC_ACTIONS.contains(&base_action(&r.action)))
    {
        return Err(CtlError::Refused(format!(
            "audit id {change_id} is a `{}`, not a traffic change: failback undoes failover, route set/apply, shift and fenced changes only",
            base_action(&r.action)
        )));
    }
    let mut plan = FailbackPlan {
        restores: Vec::new(),
        kept: Vec::new(),
    };
    for (rev, r) in records {
        match cluster.keys.parse(&r.key) {
            Some(KeyKind::Route(_)) => plan.restores.push(Restore {
                key: r.key,
                now: r.after,
                restored: r.before,
                revision: rev,
            }),
            // A fenced change's fence records are its bookkeeping, lifted with it.
            Some(KeyKind::Fence(_)) => {}
            _ => plan.kept.push(r.key),
        }
    }
    if plan.restores.is_empty() {
        return Err(CtlError::failed(format!(
            "audit id {change_id} changed no route (a fenced change rolled back?); nothing to restore"
        )));
    }
    check_unchanged(cluster, change_id, &plan.restores).await?;
    Ok(plan)
}

/// Fails, as the commit would, when a key is no longer as the change left it.
async fn check_unchanged(
    cluster: &Cluster,
    change_id: &str,
    restores: &[Restore],
) -> Result<(), CtlError> {
    for r in restores {
        let resp = cluster.client().get(r.key.as_str(), None).await?;
        let current = resp.kvs().first().map_or(0, |kv| kv.mod_revision());
        let expected = r.expected_revision();
        if current != expected {
            return Err(moved(cluster, change_id, r, expected, current).await);
        }
    }
    Ok(())
}

/// The error for a key that moved since the change: who failed it back, when the trail
/// shows a failback that undid exactly this change's write; else the revisions.
async fn moved(
    cluster: &Cluster,
    change_id: &str,
    r: &Restore,
    expected: i64,
    current: i64,
) -> CtlError {
    match undone_by(cluster, r).await {
        Ok(Some(by)) => CtlError::failed(format!(
            "audit id {change_id} was already failed back by audit id {by}; nothing restored (see twinctl audit)"
        )),
        Ok(None) => CtlError::failed(format!(
            "{} changed since that change (rev {expected} → {current}); nothing restored: look at twinctl audit and decide by hand",
            what(&cluster.keys, &r.key)
        )),
        Err(e) => e,
    }
}

/// The failback (its audit id) that wrote back exactly what `r`'s change replaced, over
/// exactly what it wrote, after it.
async fn undone_by(cluster: &Cluster, r: &Restore) -> Result<Option<String>, CtlError> {
    let records = cluster.audit_of_key(&r.key, UNDONE_LOOKBACK).await?;
    Ok(records
        .into_iter()
        .filter(|(rev, rec)| {
            *rev > r.revision
                && base_action(&rec.action) == "failback"
                && rec.before == r.now
                && rec.after == r.restored
        })
        .min_by_key(|(rev, _)| *rev)
        .map(|(_, rec)| rec.change_id))
}

/// `route payments` for a route key.
fn what(keys: &Keys, key: &str) -> String {
    match keys.parse(key) {
        Some(KeyKind::Route(s)) => format!("route {s}"),
        _ => key.to_string(),
    }
}

/// Restores the planned keys in one transaction (fenced with `--fence`); each must still be
/// exactly as the change left it, else nothing is written.
pub async fn commit(
    cluster: &Cluster,
    change_id: &str,
    restores: &[Restore],
    reason: &str,
    fence: &FenceArgs,
    topo: &Topology,
) -> Result<(Committed, Option<CutoverReport>), CtlError> {
    let audit = cluster.audit("failback", reason);
    let result = cutover::commit(
        cluster,
        topo,
        fence,
        changes(restores),
        &audit,
        CommitOptions::default(),
    )
    .await;
    match result {
        // Written between the check and the commit: say it as the check would.
        Err(CtlError::Store(StoreError::Conflict {
            what,
            expected,
            current,
        })) => Err(match check_unchanged(cluster, change_id, restores).await {
            Err(e) => e,
            Ok(()) => CtlError::failed(format!(
                "{what} changed since that change (rev {expected} → {current}); nothing restored: look at twinctl audit and decide by hand"
            )),
        }),
        other => other,
    }
}

/// The compare-and-swap changes that restore `restores`.
pub fn changes(restores: &[Restore]) -> Vec<twin_topology::Change> {
    restores
        .iter()
        .map(|r| twin_topology::Change {
            key: r.key.clone(),
            expected_revision: r.expected_revision(),
            value: r.restored.clone(),
            before: r.now.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_phase_is_its_change_s_action() {
        assert_eq!(base_action("route set [fence]"), "route set");
        assert_eq!(base_action("failover"), "failover");
        assert!(!TRAFFIC_ACTIONS.contains(&base_action("dc add")));
        assert!(!TRAFFIC_ACTIONS.contains(&base_action("id-template-set")));
    }
}
