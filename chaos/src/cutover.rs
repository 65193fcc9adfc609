//! What the `twinctl` steps of a run changed, read from their JSON output (kept in
//! [`StepRun::output`]): which buckets of a route changed datacenter, and for a fenced
//! cut-over (`route set ... --fence -o json`) how long each of its phases took.
//!
//! Which units move is computed here, with the shared bucket ring, from the route's weights
//! before and after (`diffs[].before.weights` / `diffs[].after.weights` of `route set`), not
//! taken from the ranges the cut-over says it fenced: the checks must not trust the claim
//! they judge. Only when a step printed a `cutover` and no route diff are its `ranges` used.

use std::collections::BTreeMap;

use twin_topology::{bucket_of_with, BucketRing, Datacenter, RouteHash, Weights};

use crate::record::StepRun;

/// The buckets one step moved between datacenters, for one route.
pub struct RouteMove {
    /// The step's label.
    pub step: String,
    /// How the route hashes a unit into its bucket.
    pub hash: RouteHash,
    pub moved: Moved,
}

pub enum Moved {
    /// The route's weights before and after: a bucket moved iff its owner changed.
    Rings {
        before: BucketRing,
        after: BucketRing,
    },
    /// `[start, end)` bucket ranges, as a cut-over reported them.
    Ranges(Vec<(u32, u32)>),
}

impl RouteMove {
    /// Whether this step moved `unit` (a sticky key, e.g. `unit-17`) to another datacenter.
    pub fn moves(&self, unit: &str) -> bool {
        let b = bucket_of_with(self.hash, unit.as_bytes());
        match &self.moved {
            Moved::Rings { before, after } => before.owner(b) != after.owner(b),
            Moved::Ranges(r) => r.iter().any(|(s, e)| (*s..*e).contains(&b)),
        }
    }
}

/// The moves of route `service` (whose units hash by `hash`), one per `twinctl` step whose
/// output says it changed that route's weights (or fenced a cut-over of it), in step order.
pub fn route_moves(
    steps: &[StepRun],
    service: &str,
    hash: RouteHash,
    dcs: &BTreeMap<String, Datacenter>,
) -> Vec<RouteMove> {
    steps
        .iter()
        .filter_map(|s| {
            let out = s.output.as_ref()?;
            let moved = weights_diff(out, service, dcs).or_else(|| cutover_ranges(out, service))?;
            Some(RouteMove {
                step: s.label.clone(),
                hash,
                moved,
            })
        })
        .collect()
}

/// The route's weights before and after from `diffs[]` (key `.../routes/{service}`).
fn weights_diff(
    out: &serde_json::Value,
    service: &str,
    dcs: &BTreeMap<String, Datacenter>,
) -> Option<Moved> {
    let suffix = format!("/routes/{service}");
    let diff = out.get("diffs")?.as_array()?.iter().find(|d| {
        d.get("key")
            .and_then(|k| k.as_str())
            .is_some_and(|k| k.ends_with(&suffix))
    })?;
    let weights = |side: &str| -> Option<Weights> {
        serde_json::from_value(diff.get(side)?.get("weights")?.clone()).ok()
    };
    let (before, after) = (weights("before")?, weights("after")?);
    Some(Moved::Rings {
        before: BucketRing::new(&before, dcs),
        after: BucketRing::new(&after, dcs),
    })
}

/// `cutover.services[service].ranges` as `[start, end)` pairs.
fn cutover_ranges(out: &serde_json::Value, service: &str) -> Option<Moved> {
    let svc = out
        .get("cutover")?
        .get("services")?
        .as_array()?
        .iter()
        .find(|s| s.get("service").and_then(|x| x.as_str()) == Some(service))?;
    let ranges = svc
        .get("ranges")?
        .as_array()?
        .iter()
        .filter_map(|r| {
            let n = |f: &str| r.get(f)?.as_u64().and_then(|v| u32::try_from(v).ok());
            Some((n("start")?, n("end")?))
        })
        .collect();
    Some(Moved::Ranges(ranges))
}

/// A fenced cut-over as its step reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct Cutover {
    /// ms per phase (`fence`, `drain`, `sync`, `switch`, `lift`), in the order printed.
    pub phases: Vec<(String, f64)>,
    /// `switched` or `rolled_back`.
    pub outcome: String,
}

impl Cutover {
    /// The `cutover` object of a step's output, if it has one with its phases.
    pub fn of(out: &serde_json::Value) -> Option<Cutover> {
        let c = out.get("cutover")?;
        let phases = c
            .get("phases")?
            .as_array()?
            .iter()
            .filter_map(|p| {
                let name = p.get("phase")?.as_str()?.to_string();
                Some((name, p.get("ms")?.as_f64()?))
            })
            .collect();
        let outcome = c
            .get("outcome")
            .and_then(|o| o.as_str())
            .unwrap_or("?")
            .to_string();
        Some(Cutover { phases, outcome })
    }

    /// How long a phase took (ms), if it ran.
    pub fn phase_ms(&self, name: &str) -> Option<f64> {
        self.phases
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ms)| *ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::datacenter_map;
    use twin_topology::bucket_of;

    fn step(output: serde_json::Value) -> StepRun {
        StepRun {
            label: "cut".into(),
            started_ms: 0.0,
            ended_ms: 0.0,
            ok: true,
            detail: String::new(),
            output: Some(output),
        }
    }

    #[test]
    fn a_route_set_diff_moves_exactly_the_buckets_whose_owner_changed() {
        let dcs = datacenter_map(&["m6v".into(), "wanguo".into()]);
        let out = serde_json::json!({"diffs": [{
            "key": "/twin-drill-1/v1/routes/payments",
            "before": {"weights": {"m6v": 5000, "wanguo": 5000}},
            "after": {"weights": {"m6v": 0, "wanguo": 10000}},
        }]});
        let moves = route_moves(&[step(out)], "payments", RouteHash::default(), &dcs);
        assert_eq!(moves.len(), 1);
        assert!(route_moves(&[], "payments", RouteHash::default(), &dcs).is_empty());
        let ring = BucketRing::new(
            &serde_json::from_value(serde_json::json!({"m6v": 5000, "wanguo": 5000}))
                .expect("weights"),
            &dcs,
        );
        let mut moved = 0;
        for n in 0..1000 {
            let unit = format!("unit-{n}");
            let was_m6v = ring.owner(bucket_of(unit.as_bytes())) == Some(0);
            assert_eq!(moves[0].moves(&unit), was_m6v, "{unit}");
            moved += usize::from(was_m6v);
        }
        assert!((400..600).contains(&moved), "{moved} of 1000 moved");
    }

    #[test]
    fn a_cutover_gives_its_phases_and_ranges_when_there_is_no_diff() {
        let out = serde_json::json!({"cutover": {
            "change_id": "x",
            "services": [{"service": "payments", "share": 0.3,
                          "ranges": [{"start": 0, "end": 3000, "from": "m6v", "to": "wanguo"}]}],
            "phases": [{"phase": "fence", "ms": 12}, {"phase": "drain", "ms": 40},
                       {"phase": "sync", "ms": 1003}, {"phase": "switch", "ms": 30},
                       {"phase": "lift", "ms": 5}],
            "outcome": "switched"}});
        let c = Cutover::of(&out).expect("cutover");
        assert_eq!(c.phase_ms("drain"), Some(40.0));
        assert_eq!(c.phase_ms("sync"), Some(1003.0));
        assert_eq!(c.outcome, "switched");
        let dcs = datacenter_map(&["m6v".into(), "wanguo".into()]);
        let moves = route_moves(&[step(out)], "payments", RouteHash::default(), &dcs);
        let in_range = (0..200)
            .map(|n| format!("unit-{n}"))
            .find(|u| bucket_of(u.as_bytes()) < 3000)
            .expect("a unit in range");
        assert!(moves[0].moves(&in_range));
        assert!(route_moves(
            &[step(serde_json::json!({}))],
            "payments",
            RouteHash::default(),
            &dcs
        )
        .is_empty());
    }
}
