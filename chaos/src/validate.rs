//! The rules a drill obeys beyond its types: names that must exist (datacenters, processes,
//! steps, routes), one action per step, steps in time order, a timeline that fits the load
//! and leaves room for the steady-state windows. Each broken rule is one message with the
//! path of the value it is about, which [`crate::drill`] turns into a line number.

use std::collections::{BTreeMap, BTreeSet};

use twin_topology::{validate as topo, Datacenter};

use crate::drill::{ActionKind, Direction, Drill, FaultKind, Step};
use crate::target::{IssuerTarget, LinkTarget, ProcTarget};
use crate::units::format_duration;

/// A broken rule: where (a path like `method[2].network.target`) and what was expected.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub message: String,
}

fn bad(path: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// The `twinctl` commands a step may run.
pub const TWINCTL_COMMANDS: &[&str] = &[
    "status", "route", "shift", "failover", "failback", "freeze", "unfreeze", "audit", "balance",
    "drain", "id",
];

/// Phase names every drill has, besides its step names.
pub const FIXED_PHASES: &[&str] = &["before", "during", "after", "all"];

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

/// Checks every rule; the first broken one is returned.
pub fn drill(d: &Drill) -> Result<(), Invalid> {
    topology(d)?;
    load(d)?;
    let names = steps(d)?;
    checks(d, &names)?;
    timeline(d, "")?;
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

fn topology(d: &Drill) -> Result<(), Invalid> {
    let t = &d.topology;
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

fn load(d: &Drill) -> Result<(), Invalid> {
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
    Ok(())
}

/// Checks each step on its own and returns the step names.
fn steps(d: &Drill) -> Result<BTreeSet<String>, Invalid> {
    let t = &d.topology;
    let mut names = BTreeSet::new();
    for (i, s) in d.method.iter().enumerate() {
        let path = format!("method[{i}]");
        let label = s.label(i);
        if FIXED_PHASES.contains(&label.as_str()) {
            return Err(bad(
                format!("{path}.name"),
                format!("step name {label:?} is reserved for a phase: choose another"),
            ));
        }
        if !names.insert(label.clone()) {
            return Err(bad(
                format!("{path}.name"),
                format!("step name {label:?} is used twice"),
            ));
        }
        match (s.at.is_some(), s.wait_until.is_some()) {
            (true, true) => {
                return Err(bad(
                    &path,
                    "a step has either `at` or `wait_until`, not both",
                ))
            }
            (false, false) => {
                return Err(bad(
                    &path,
                    "a step needs `at` (an offset like 10s) or `wait_until` (a condition)",
                ))
            }
            _ => {}
        }
        let actions = s.actions();
        match actions.len() {
            1 => {}
            0 => return Err(bad(
                &path,
                "a step needs one action: expected one of network, kill, pause, restart, twinctl",
            )),
            _ => {
                return Err(bad(
                    &path,
                    format!("a step has one action, this one has {actions:?}"),
                ))
            }
        }
        if s.expect_exit.is_some() && actions[0] != ActionKind::Twinctl {
            return Err(bad(
                format!("{path}.expect_exit"),
                "expect_exit belongs to a twinctl step",
            ));
        }
        if s.background && actions[0] != ActionKind::Twinctl {
            return Err(bad(
                format!("{path}.background"),
                "background belongs to a twinctl step",
            ));
        }
        action(t, s, &path)?;
        if let Some(w) = &s.wait_until {
            let p = format!("{path}.wait_until");
            let n = [
                w.ids_refused.is_some(),
                w.served_by.is_some(),
                w.ready.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if n != 1 {
                return Err(bad(
                    &p,
                    "wait_until needs exactly one condition: ids_refused, served_by or ready",
                ));
            }
            if let Some(sb) = &w.served_by {
                if !t.datacenters.contains(&sb.dc) {
                    return Err(bad(
                        format!("{p}.served_by.dc"),
                        format!(
                            "unknown datacenter {:?}: the drill has {}",
                            sb.dc,
                            t.datacenters.join(", ")
                        ),
                    ));
                }
            }
            if let Some(r) = &w.ready {
                ProcTarget::parse(t, r).map_err(|m| bad(format!("{p}.ready"), m))?;
            }
        }
    }
    Ok(names)
}

fn action(t: &crate::drill::TopologySpec, s: &Step, path: &str) -> Result<(), Invalid> {
    if let Some(n) = &s.network {
        let p = format!("{path}.network");
        LinkTarget::parse(t, &n.target).map_err(|m| bad(format!("{p}.target"), m))?;
        match n.fault {
            FaultKind::Latency if n.latency.is_none() => {
                return Err(bad(&p, "a latency fault needs `latency` (like 200ms)"))
            }
            FaultKind::Bandwidth if n.bandwidth.is_none() => {
                return Err(bad(&p, "a bandwidth fault needs `bandwidth` (like 64KB/s)"))
            }
            FaultKind::Reset | FaultKind::Blackhole | FaultKind::Refuse
                if n.direction != Direction::Both =>
            {
                return Err(bad(
                    format!("{p}.direction"),
                    "reset, blackhole and refuse act on both directions: remove `direction`",
                ))
            }
            _ => {}
        }
        if n.jitter.is_some() && n.fault != FaultKind::Latency {
            return Err(bad(
                format!("{p}.jitter"),
                "jitter belongs to a latency fault",
            ));
        }
        if n.duration.0.is_zero() {
            return Err(bad(format!("{p}.for"), "a fault must last more than 0s"));
        }
    }
    if let Some(k) = &s.kill {
        ProcTarget::parse(t, k).map_err(|m| bad(format!("{path}.kill"), m))?;
    }
    if let Some(p) = &s.pause {
        ProcTarget::parse(t, &p.target).map_err(|m| bad(format!("{path}.pause.target"), m))?;
    }
    if let Some(r) = &s.restart {
        let target = ProcTarget::parse(t, &r.target)
            .map_err(|m| bad(format!("{path}.restart.target"), m))?;
        if r.clock.is_some() && target.is_etcd() {
            return Err(bad(
                format!("{path}.restart.clock"),
                "etcd is a static Go binary that libfaketime cannot reach: move the clock of a sidecar or control-plane replica",
            ));
        }
    }
    if let Some(w) = &s.twinctl {
        let words = w.words();
        match words.first() {
            Some(c) if TWINCTL_COMMANDS.contains(&c.as_str()) => {}
            other => {
                return Err(bad(
                    format!("{path}.twinctl"),
                    format!(
                        "unknown twinctl command {:?}: expected one of {}",
                        other.map(String::as_str).unwrap_or(""),
                        TWINCTL_COMMANDS.join(", ")
                    ),
                ))
            }
        }
        if words.iter().any(|w| w == "--etcd" || w == "--prefix") {
            return Err(bad(
                format!("{path}.twinctl"),
                "leave out --etcd and --prefix: the drill adds its own",
            ));
        }
    }
    if let Some(code) = s.expect_exit {
        if !(0..=255).contains(&code) {
            return Err(bad(
                format!("{path}.expect_exit"),
                "an exit code is 0 to 255",
            ));
        }
    }
    Ok(())
}

fn phase(names: &BTreeSet<String>, p: &str, path: String) -> Result<(), Invalid> {
    if FIXED_PHASES.contains(&p) || names.contains(p) {
        return Ok(());
    }
    Err(bad(
        path,
        format!(
            "unknown phase {p:?}: expected before, during, after, all or a step name ({})",
            names.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    ))
}

fn checks(d: &Drill, names: &BTreeSet<String>) -> Result<(), Invalid> {
    let t = &d.topology;
    let dcs = datacenter_map(&t.datacenters);
    for (i, c) in d.checks.iter().enumerate() {
        let path = format!("checks[{i}]");
        let kinds = c.kinds();
        if kinds.len() != 1 {
            return Err(bad(
                &path,
                format!(
                    "a check has exactly one kind, this one has {}: expected one of duplicate_ids, lost, double_served, sticky_moved, error_rate, converge, issued, refusals, served",
                    kinds.len()
                ),
            ));
        }
        if let Some(e) = &c.error_rate {
            phase(names, &e.phase, format!("{path}.error_rate.phase"))?;
        }
        if let Some(cv) = &c.converge {
            let p = format!("{path}.converge");
            if !names.contains(&cv.after) {
                return Err(bad(
                    format!("{p}.after"),
                    format!(
                        "unknown step {:?}: converge is measured after a step of the method",
                        cv.after
                    ),
                ));
            }
            if !t.routes.contains_key(&cv.route) {
                return Err(bad(
                    format!("{p}.route"),
                    format!("unknown route {:?}", cv.route),
                ));
            }
            let route = twin_topology::Route::with_weights(cv.to.clone());
            route
                .validate(&dcs)
                .map_err(|e| bad(format!("{p}.to"), e.to_string()))?;
            for dc in &cv.down {
                if !dcs.contains_key(dc) {
                    return Err(bad(
                        format!("{p}.down"),
                        format!("unknown datacenter {dc:?}"),
                    ));
                }
            }
            if cv.window.0.is_zero() {
                return Err(bad(format!("{p}.window"), "the window must be above 0"));
            }
        }
        if let Some(is) = &c.issued {
            IssuerTarget::parse(t, &is.by).map_err(|m| bad(format!("{path}.issued.by"), m))?;
            phase(names, &is.phase, format!("{path}.issued.phase"))?;
        }
        if let Some(r) = &c.refusals {
            phase(names, &r.phase, format!("{path}.refusals.phase"))?;
        }
        if let Some(s) = &c.served {
            match LinkTarget::parse(t, &s.by) {
                Ok(LinkTarget::Upstream { .. } | LinkTarget::Upstreams { .. }) => {}
                _ => {
                    return Err(bad(
                        format!("{path}.served.by"),
                        format!("{:?}: expected upstream/DC/N or upstreams/DC", s.by),
                    ))
                }
            }
            phase(names, &s.phase, format!("{path}.served.phase"))?;
        }
    }
    Ok(())
}

/// Steps with `at` in time order, inside the load, leaving the steady-state windows free.
fn timeline(d: &Drill, form: &str) -> Result<(), Invalid> {
    let dur = d.load.duration.0;
    let ss = &d.steady_state;
    let mut prev: Option<(usize, std::time::Duration)> = None;
    let mut last_end = std::time::Duration::ZERO;
    for (i, s) in d.method.iter().enumerate() {
        let Some(at) = s.at else { continue };
        let path = format!("method[{i}].at");
        if let Some((j, p)) = prev {
            if at.0 < p {
                return Err(bad(
                    path,
                    format!(
                        "steps out of order{form}: {} at {} comes after {} at {}; list steps in time order",
                        s.label(i),
                        at,
                        d.method[j].label(j),
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
                    s.label(i),
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
