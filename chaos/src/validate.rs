//! The rules a drill obeys beyond its file's types: a sound topology and load, names that
//! must exist (datacenters, processes, steps, routes), steps in time order, a timeline that
//! fits the load and leaves room for the steady-state windows. `drill` turns the file's
//! form into the typed [`Drill`] (each step and check resolving itself: [`crate::step`],
//! [`crate::checkspec`]). Each broken rule is one message with the path of the value it is
//! about, which [`crate::drill`] turns into a line number.

use std::collections::{BTreeMap, BTreeSet};

use twin_topology::{validate as topo, Datacenter};

use crate::checkspec::FIXED_PHASES;
use crate::drill::{Drill, DrillFile, Through, TopologySpec, WriteLoad};
use crate::step::{Step, StepFile};
use crate::units::format_duration;

/// A broken rule: where (a path like `method[2].network.target`) and what was expected.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub message: String,
}

pub(crate) fn bad(path: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// The datacenters of a drill as the topology model knows them (code = position).
pub fn datacenter_map(names: &[String]) -> BTreeMap<String, Datacenter> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.clone(),
                Datacenter {
                    code: i as u8,
                    display_name: String::new(),
                },
            )
        })
        .collect()
}

/// The drill a file describes, or the first rule it breaks.
pub(crate) fn drill(f: DrillFile) -> Result<Drill, Invalid> {
    topology(&f.topology)?;
    load(&f)?;
    let method = steps(&f.topology, f.method)?;
    let names: BTreeSet<String> = method.iter().map(|s| s.name.clone()).collect();
    let checks = f
        .checks
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.resolve(&f.topology, f.load.writes.is_some(), &names, i))
        .collect::<Result<_, _>>()?;
    let d = Drill {
        name: f.name,
        description: f.description,
        topology: f.topology,
        load: f.load,
        quick: f.quick,
        steady_state: f.steady_state,
        method,
        checks,
    };
    timeline(&d, "")?;
    quick(&d)?;
    Ok(d)
}

/// The `--quick` form: a sensible scale, under a minute, and its own timeline sound.
fn quick(d: &Drill) -> Result<(), Invalid> {
    if let Some(q) = &d.quick {
        if !(q.scale > 0.0 && q.scale <= 1.0) {
            return Err(bad(
                "quick.scale",
                "quick.scale must be above 0 and at most 1",
            ));
        }
        let quick = d.quick();
        if quick.load.duration.0.as_secs_f64() >= 60.0 {
            return Err(bad(
                "quick",
                format!(
                    "the --quick form must run under 60s, but its load lasts {}",
                    quick.load.duration
                ),
            ));
        }
        timeline(&quick, " (in the --quick form)")?;
    }
    Ok(())
}

fn topology(t: &TopologySpec) -> Result<(), Invalid> {
    if t.datacenters.is_empty() || t.datacenters.len() > 8 {
        return Err(bad("topology.datacenters", "expected 1 to 8 datacenters"));
    }
    let mut seen = BTreeSet::new();
    for (i, dc) in t.datacenters.iter().enumerate() {
        let path = format!("topology.datacenters[{i}]");
        topo::datacenter_name(dc).map_err(|e| bad(&path, e.to_string()))?;
        if !seen.insert(dc) {
            return Err(bad(path, format!("datacenter {dc:?} is listed twice")));
        }
    }
    if ![1, 3, 5].contains(&t.etcd.members) {
        return Err(bad(
            "topology.etcd.members",
            format!("expected 1, 3 or 5 etcd members, got {}", t.etcd.members),
        ));
    }
    let ranges = [
        ("upstreams_per_dc", t.upstreams_per_dc, 1, 16),
        ("sidecars_per_dc", t.sidecars_per_dc, 1, 16),
        ("control_planes", t.control_planes, 0, 5),
    ];
    for (field, v, min, max) in ranges {
        if v < min || v > max {
            return Err(bad(
                format!("topology.{field}"),
                format!("{field} must be between {min} and {max}, got {v}"),
            ));
        }
    }
    if t.register && t.sidecars_per_dc < t.upstreams_per_dc {
        return Err(bad(
            "topology.register",
            format!(
                "with register, each sidecar registers one upstream: sidecars_per_dc ({}) must be at least upstreams_per_dc ({})",
                t.sidecars_per_dc, t.upstreams_per_dc
            ),
        ));
    }
    let dcs = datacenter_map(&t.datacenters);
    if t.routes.is_empty() {
        return Err(bad("topology.routes", "expected at least one route"));
    }
    for (service, route) in &t.routes {
        let path = format!("topology.routes.{service}");
        topo::service_name(service).map_err(|e| bad(&path, e.to_string()))?;
        if !route.endpoints.is_empty() {
            return Err(bad(
                format!("{path}.endpoints"),
                "a drill route takes no endpoints: the drill points them at its upstreams",
            ));
        }
        route
            .validate(&dcs)
            .map_err(|e| bad(&path, format!("route {service}: {e}")))?;
    }
    Ok(())
}

fn load(d: &DrillFile) -> Result<(), Invalid> {
    let l = &d.load;
    if !d.topology.routes.contains_key(&l.routed.service) {
        return Err(bad(
            "load.routed.service",
            format!(
                "unknown route {:?}: the topology has {}",
                l.routed.service,
                d.topology
                    .routes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    edge(d)?;
    if l.routed.keys == 0 {
        return Err(bad("load.routed.keys", "expected at least 1 sticky key"));
    }
    let m = &l.routed.mix;
    if m.get + m.post_idempotent + m.post == 0 {
        return Err(bad(
            "load.routed.mix",
            "the mix needs at least one non-zero weight",
        ));
    }
    if l.ids.count == 0 || l.ids.count > 1000 {
        return Err(bad("load.ids.count", "expected 1 to 1000 IDs per call"));
    }
    if l.ids.formats.is_empty() && l.ids.share.0 > 0.0 {
        return Err(bad("load.ids.formats", "expected at least one ID format"));
    }
    if l.duration.0.as_secs_f64() < 1.0 {
        return Err(bad("load.duration", "the load must last at least 1s"));
    }
    if l.timeout.0.is_zero() {
        return Err(bad("load.timeout", "the timeout must be above 0"));
    }
    if l.max_in_flight == 0 {
        return Err(bad("load.max_in_flight", "expected at least 1"));
    }
    if let Some(w) = &l.writes {
        writes(d, w)?;
    }
    Ok(())
}

/// `topology.edge` and `load.routed.through: edge` go together: the edge follows the load's
/// route and needs a control plane to keep it in step.
fn edge(d: &DrillFile) -> Result<(), Invalid> {
    let (t, through) = (&d.topology, d.load.routed.through);
    if through == Through::Edge && t.edge.is_none() {
        return Err(bad(
            "load.routed.through",
            "the load enters through the edge, but the topology has none: add `topology.edge: haproxy`",
        ));
    }
    if t.edge.is_some() && t.control_planes == 0 {
        return Err(bad(
            "topology.edge",
            "the edge follows the route through a control plane (--edges): set `topology.control_planes` to at least 1",
        ));
    }
    if t.edge.is_some() && through != Through::Edge {
        return Err(bad(
            "topology.edge",
            "nothing enters through the edge: set `load.routed.through: edge`",
        ));
    }
    Ok(())
}

/// The most writes per second the writer may send, all units together.
const MAX_WRITE_RATE: f64 = 5000.0;

fn writes(d: &DrillFile, w: &WriteLoad) -> Result<(), Invalid> {
    if !d.topology.routes.contains_key(&w.service) {
        return Err(bad(
            "load.writes.service",
            format!("unknown route {:?}", w.service),
        ));
    }
    if w.units == 0 || w.units > 100_000 {
        return Err(bad("load.writes.units", "expected 1 to 100000 units"));
    }
    let total = f64::from(w.units) * w.rate_per_unit.0;
    if total > MAX_WRITE_RATE {
        return Err(bad(
            "load.writes.rate_per_unit",
            format!(
                "{} units at {} send {total:.0} writes/s: at most {MAX_WRITE_RATE:.0}/s",
                w.units, w.rate_per_unit
            ),
        ));
    }
    if w.work.min.0 > w.work.max.0 {
        return Err(bad(
            "load.writes.work",
            format!(
                "work.min ({}) is above work.max ({})",
                w.work.min, w.work.max
            ),
        ));
    }
    if w.work.max.0 >= d.load.timeout.0 || w.work.max.0 > twin_lab::upstream::MAX_ASKED_WORK {
        return Err(bad(
            "load.writes.work.max",
            format!(
                "work.max ({}) must be below the load's timeout ({}) and at most 10s",
                w.work.max, d.load.timeout
            ),
        ));
    }
    Ok(())
}

/// Resolves each step against the topology; step names must be unique and not a phase's.
fn steps(t: &TopologySpec, method: Vec<StepFile>) -> Result<Vec<Step>, Invalid> {
    let mut names = BTreeSet::new();
    let mut steps = Vec::with_capacity(method.len());
    for (i, raw) in method.into_iter().enumerate() {
        let step = raw.resolve(t, i)?;
        let name = &step.name;
        if FIXED_PHASES.contains(&name.as_str()) {
            return Err(bad(
                format!("method[{i}].name"),
                format!("step name {name:?} is reserved for a phase: choose another"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(bad(
                format!("method[{i}].name"),
                format!("step name {name:?} is used twice"),
            ));
        }
        steps.push(step);
    }
    Ok(steps)
}

/// Steps with `at` in time order, inside the load, leaving the steady-state windows free.
fn timeline(d: &Drill, form: &str) -> Result<(), Invalid> {
    let dur = d.load.duration.0;
    let ss = &d.steady_state;
    let mut prev: Option<(usize, std::time::Duration)> = None;
    let mut last_end = std::time::Duration::ZERO;
    for (i, s) in d.method.iter().enumerate() {
        let Some(at) = s.at() else { continue };
        let path = format!("method[{i}].at");
        if let Some((j, p)) = prev {
            if at.0 < p {
                return Err(bad(
                    path,
                    format!(
                        "steps out of order{form}: {} at {} comes after {} at {}; list steps in time order",
                        s.name,
                        at,
                        d.method[j].name,
                        format_duration(p)
                    ),
                ));
            }
        }
        if prev.is_none() && at.0 < d.load.warmup.0 + ss.window.0 {
            return Err(bad(
                path.clone(),
                format!(
                    "the first step is at {at}{form}, inside the warmup ({}) and the steady-state window ({}) before it",
                    d.load.warmup, ss.window
                ),
            ));
        }
        let end = at.0 + s.lasts().map(|l| l.0).unwrap_or_default();
        if end > dur {
            return Err(bad(
                path,
                format!(
                    "{} ends at {}{form}, after the load ({})",
                    s.name,
                    format_duration(end),
                    d.load.duration
                ),
            ));
        }
        last_end = last_end.max(end);
        prev = Some((i, at.0));
    }
    if prev.is_some() && last_end + ss.settle.0 + ss.window.0 > dur {
        return Err(bad(
            "load.duration",
            format!(
                "the load ({}){form} must outlast the last step ({}) by settle ({}) plus the steady-state window ({})",
                d.load.duration,
                format_duration(last_end),
                ss.settle,
                ss.window
            ),
        ));
    }
    Ok(())
}
