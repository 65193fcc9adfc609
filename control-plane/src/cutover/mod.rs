//! Fenced cut-over: a planned routing change during which no unit takes writes in two
//! datacenters at once (AppActive's cut-flow: forbid writes, wait for the data, switch, lift).
//!
//! `--fence` on `route set|apply`, `shift`, `failover` and `failback` runs the change in five
//! phases ([`run`]): **fence** (one transaction writes the moving bucket ranges per service),
//! **drain** (every live sidecar acknowledges: it refuses those units' writes and none of its
//! writes to them is in flight), **sync** (the [`SyncGate`] passes), **switch** (the new
//! weights, compare-and-swap and audited as without a fence; then every live sidecar reports
//! the new routing revision), **lift** (the fence is deleted). Each phase is audited under the
//! change's id. Before the switch, running out of `--fence-max` or a failing gate lifts the
//! fence and leaves the weights alone (exit 3). Only the buckets whose datacenter changes are
//! fenced ([`twin_topology::moving_ranges`]).

pub mod gate;
pub mod run;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use twin_topology::{
    moving_ranges, Change, Datacenter, FencePolicy, KeyKind, Keys, MovingRange, Route, Topology,
    BUCKETS,
};

pub use gate::SyncGate;
pub use run::commit;

use crate::cli::parse_duration;
use crate::error::CtlError;
use crate::output::time_ms;

/// The flags of a fenced change.
#[derive(Clone, Debug, Default, Args)]
pub struct FenceArgs {
    /// Fence the change: writes of the units that change datacenter get 503 (Retry-After: 1)
    /// until the data has synchronised and every sidecar runs the new weights
    #[arg(long)]
    pub fence: bool,
    /// Longest the fence, drain and sync phases may take together before the change is
    /// rolled back (exit 3); sidecars drop a fence by themselves after twice this
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub fence_max: Duration,
    /// What says the moving units' data has reached the new datacenter (checked every second):
    /// exec:CMD (exit 0), http://URL (2xx) or promql:EXPR (every sample not 0; no sample
    /// fails; with --prometheus)
    #[arg(long, value_parser = SyncGate::parse, value_name = "GATE")]
    pub sync_gate: Option<SyncGate>,
    /// Prometheus base URL, e.g. http://prometheus:9090 (for a promql: sync gate, and the
    /// error-rate gate of shift)
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
}

impl FenceArgs {
    /// Refuses flag combinations that cannot work (exit 2).
    pub fn check(&self) -> Result<(), CtlError> {
        if self.sync_gate.is_some() && !self.fence {
            return Err(CtlError::usage("--sync-gate needs --fence"));
        }
        if matches!(self.sync_gate, Some(SyncGate::PromQl(_))) && self.prometheus.is_none() {
            return Err(CtlError::usage(
                "a promql: sync gate needs --prometheus URL",
            ));
        }
        if self.fence && self.fence_max < Duration::from_secs(1) {
            return Err(CtlError::usage("--fence-max must be at least 1s"));
        }
        Ok(())
    }
}

/// The buckets one service's change moves.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceMove {
    pub service: String,
    pub ranges: Vec<MovingRange>,
    /// Share of the service's units fenced (0.3 = 30%).
    pub share: f64,
    /// The route demands fencing (`fence: required`).
    pub required: bool,
}

/// What a change moves, per service; services whose units all stay put are left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Moves {
    pub services: Vec<ServiceMove>,
}

impl Moves {
    /// The moves of `changes` against `topo`: each changed route's ring before and after,
    /// laid on the datacenters as they will be (a routes file may add some).
    pub fn of(keys: &Keys, topo: &Topology, changes: &[Change]) -> Moves {
        let mut dcs: BTreeMap<String, Datacenter> = topo.datacenters.clone();
        for c in changes {
            if let (Some(KeyKind::Datacenter(name)), Some(v)) = (keys.parse(&c.key), &c.value) {
                if let Ok(d) = serde_json::from_value::<Datacenter>(v.clone()) {
                    dcs.insert(name.to_string(), d);
                }
            }
        }
        let route = |v: &Option<serde_json::Value>| {
            v.as_ref()
                .and_then(|v| serde_json::from_value::<Route>(v.clone()).ok())
        };
        let mut services = Vec::new();
        for c in changes {
            let Some(KeyKind::Route(service)) = keys.parse(&c.key) else {
                continue;
            };
            let (Some(before), Some(after)) = (route(&c.before), route(&c.value)) else {
                continue;
            };
            let ranges = moving_ranges(&before.weights, &after.weights, &dcs);
            if ranges.is_empty() {
                continue;
            }
            let moved: u32 = ranges.iter().map(MovingRange::len).sum();
            services.push(ServiceMove {
                service: service.to_string(),
                ranges,
                share: f64::from(moved) / f64::from(BUCKETS),
                required: before.fence == FencePolicy::Required
                    || after.fence == FencePolicy::Required,
            });
        }
        Moves { services }
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Lines for people: each service's moving ranges and share.
    pub fn lines(&self) -> Vec<String> {
        self.services
            .iter()
            .map(|m| {
                let ranges: Vec<String> = m
                    .ranges
                    .iter()
                    .map(|r| format!("{}..{} {}→{}", r.start, r.end, r.from, r.to))
                    .collect();
                format!(
                    "{}: {:.2}% of units move (buckets {})",
                    m.service,
                    m.share * 100.0,
                    ranges.join(", ")
                )
            })
            .collect()
    }
}

/// Guard-rail objections of a change with these moves: a `fence: required` route changed
/// without `--fence`, and a service another change is fencing right now.
pub fn objections(topo: &Topology, moves: &Moves, fenced: bool, now_ms: u64) -> Vec<String> {
    let mut out = Vec::new();
    for m in &moves.services {
        if m.required && !fenced {
            out.push(format!(
                "{} has fence: required and this change moves {:.2}% of its units: add --fence",
                m.service,
                m.share * 100.0
            ));
        }
        if let Some(f) = topo.fences.get(&m.service) {
            if f.value.active_at(now_ms) {
                out.push(format!(
                    "{} is being moved by change {} (phase {}) until {}",
                    m.service,
                    f.value.change_id,
                    f.value.phase.as_str(),
                    time_ms(f.value.until_ms)
                ));
            }
        }
    }
    out
}

/// One phase as it ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    /// How long it took, in milliseconds.
    pub ms: u64,
    /// What happened (or, in a dry run, what would).
    pub note: String,
}

/// How a fenced change ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    DryRun,
    /// Nothing moves: committed without a fence.
    NothingMoves,
    Switched,
    RolledBack,
}

/// The `cutover` part of a command's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CutoverReport {
    pub change_id: Option<String>,
    pub services: Vec<ServiceMove>,
    pub phases: Vec<PhaseReport>,
    pub outcome: Outcome,
    /// Live sidecars that did not confirm the new weights before the lift.
    pub unconfirmed: Vec<String>,
}

impl CutoverReport {
    /// What `--dry-run --fence` prints: the moves and each phase it would run.
    pub fn preview(moves: &Moves, args: &FenceArgs) -> CutoverReport {
        let gate = args
            .sync_gate
            .as_ref()
            .map_or("no --sync-gate: passes at once".to_string(), |g| {
                format!("until {g} passes, checked every second")
            });
        let max = humantime::format_duration(args.fence_max);
        let phase = |name: &str, note: String| PhaseReport {
            phase: name.to_string(),
            ms: 0,
            note,
        };
        CutoverReport {
            change_id: None,
            services: moves.services.clone(),
            phases: vec![
                phase("fence", "write the moving ranges; sidecars answer their writes 503 unit_fenced".into()),
                phase("drain", format!("wait for every live sidecar's acknowledgement (fence, drain and sync within {max})")),
                phase("sync", gate),
                phase("switch", "commit the new weights; wait for every live sidecar to run them".into()),
                phase("lift", "delete the fence; the moved units write in their new datacenter".into()),
            ],
            outcome: Outcome::DryRun,
            unconfirmed: Vec::new(),
        }
    }

    /// Lines for people.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![match &self.change_id {
            Some(id) => format!("fenced change {id}:"),
            None => "fenced change:".to_string(),
        }];
        out.extend(
            Moves {
                services: self.services.clone(),
            }
            .lines()
            .into_iter()
            .map(|l| format!("  {l}")),
        );
        for p in &self.phases {
            if self.outcome == Outcome::DryRun {
                out.push(format!("  {:<7} {}", p.phase, p.note));
            } else {
                out.push(format!("  {:<7} {:>6} ms  {}", p.phase, p.ms, p.note));
            }
        }
        for n in &self.unconfirmed {
            out.push(format!(
                "  warning: {n} did not confirm the new weights before the lift"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twin_topology::Weights;

    fn topo() -> Topology {
        Topology::with_datacenters(&[("m6v", 0), ("wanguo", 1)]).expect("dcs")
    }

    /// The moves of changing route `pay` (with `fence`) from `before` to `after`, percent
    /// lists, in `t`.
    fn moves(t: &Topology, before: &str, after: &str, fence: FencePolicy) -> Moves {
        let keys = Keys::default();
        let route = |w: &str| {
            let mut r = Route::with_weights(Weights::parse_percent_list(w).expect("weights"));
            r.fence = fence;
            serde_json::to_value(r).expect("json")
        };
        let change = Change {
            key: keys.route("pay"),
            expected_revision: 3,
            value: Some(route(after)),
            before: Some(route(before)),
        };
        Moves::of(&keys, t, &[change])
    }

    #[test]
    fn only_buckets_that_change_datacenter_are_fenced() {
        let m = moves(
            &topo(),
            "m6v=50,wanguo=50",
            "m6v=30,wanguo=70",
            FencePolicy::Optional,
        );
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services[0].share, 0.2);
        assert_eq!(
            m.lines(),
            vec!["pay: 20.00% of units move (buckets 3000..5000 m6v→wanguo)"]
        );
        let same = moves(
            &topo(),
            "m6v=50,wanguo=50",
            "m6v=50,wanguo=50",
            FencePolicy::Optional,
        );
        assert!(same.is_empty());
    }

    #[test]
    fn a_required_fence_objects_without_fence_and_an_active_fence_objects_always() {
        let mut t = topo();
        let m = moves(
            &t,
            "m6v=50,wanguo=50",
            "m6v=0,wanguo=100",
            FencePolicy::Required,
        );
        assert_eq!(objections(&t, &m, true, 0), Vec::<String>::new());
        let o = objections(&t, &m, false, 0);
        assert!(o[0].contains("fence: required"), "{o:?}");
        t.fences.insert(
            "pay".into(),
            twin_topology::Versioned {
                value: twin_topology::Fence {
                    change_id: "c9".into(),
                    ranges: Vec::new(),
                    until_ms: 100,
                    since_ms: 0,
                    phase: twin_topology::FencePhase::Drain,
                    who: String::new(),
                },
                mod_revision: 5,
            },
        );
        assert!(objections(&t, &m, true, 99)[0].contains("change c9 (phase drain)"));
        assert!(objections(&t, &m, true, 100).is_empty(), "expired");
    }
}
