//! Readiness to lose a datacenter: for the change `twinctl failover --from DC` would make,
//! every reason it would hurt, judged from the dependency map, presence, health and the
//! plan. Pure: [`assess`] takes what was read and returns one [`Blocker`] per finding.
//! `twinctl readiness` prints them; `twinctl failover` refuses on them (unless `--force`);
//! the daemon's automatic failover logs them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use twin_topology::model::bp_to_percent;
use twin_topology::{Topology, UNKNOWN_SERVICE};

use crate::deps::graph::ago;
use crate::deps::EdgeRecord;
use crate::guard;
use crate::health::{DcHealth, HealthGate};
use crate::plan::{move_off, FailoverPlan, Selection};
use crate::state::LiveNode;

/// A health record younger than this is trusted over the registrations (ms).
pub const HEALTH_FRESH_MS: u64 = 30_000;
/// The health gate a datacenter that gains traffic must pass: `twinctl shift`'s defaults
/// (`--min-healthy 90`), judged on a health record younger than [`HEALTH_FRESH_MS`] (its
/// `--max-health-age 30s`).
pub const TARGET_MIN_HEALTHY_PERCENT: f64 = 90.0;
/// An app's newest edge older than this makes its part of the map stale (ms); sidecars
/// rewrite every edge at least every 5 minutes.
pub const STALE_MAP_MS: u64 = 10 * 60_000;

/// What kind of trouble a blocker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockerKind {
    /// A surviving app calls a service that has no healthy endpoint outside the datacenter.
    SingleDcDependency,
    /// Every live sidecar of an app is in the datacenter.
    AppSingleDc,
    /// An `on_dc_down: fail` route would lose its home.
    FailRoute,
    /// Traffic would go to datacenters where the service does not run: it has weight only
    /// in the datacenter and no other one has an endpoint for it (pass `--to`).
    NoTarget,
    /// A target datacenter would carry more than its capacity.
    Capacity,
    /// A datacenter that would gain a service's traffic is below the health gate.
    UnhealthyTarget,
    /// The map cannot be trusted for an app: its edges are old, or it has none.
    StaleMap,
}

impl BlockerKind {
    /// The name in the table (`single-dc dependency`).
    pub fn label(self) -> &'static str {
        match self {
            BlockerKind::SingleDcDependency => "single-dc dependency",
            BlockerKind::AppSingleDc => "app in one dc",
            BlockerKind::FailRoute => "fail route",
            BlockerKind::NoTarget => "no target",
            BlockerKind::Capacity => "capacity",
            BlockerKind::UnhealthyTarget => "unhealthy target",
            BlockerKind::StaleMap => "stale map",
        }
    }

    /// Not one of the failover's older guard rails (fail route, capacity): judged from the
    /// dependency map, or the target's health. `twinctl failover` refuses on them too; the
    /// daemon's automatic failover only logs them.
    pub fn from_map(self) -> bool {
        !matches!(
            self,
            BlockerKind::FailRoute | BlockerKind::NoTarget | BlockerKind::Capacity
        )
    }
}

/// One finding, one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub kind: BlockerKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub reason: String,
}

/// Everything [`assess`] judges.
pub struct Inputs<'a> {
    pub topo: &'a Topology,
    pub plan: &'a FailoverPlan,
    pub selection: &'a Selection,
    pub edges: &'a [EdgeRecord],
    pub nodes: &'a [LiveNode],
    pub health: &'a BTreeMap<String, DcHealth>,
    pub now_ms: u64,
    /// Capacity guard: share of capacity assumed used at peak, in percent.
    pub peak_utilization: f64,
}

/// A sidecar started without an app name reports its node id as its app: such "apps" are
/// single sidecars, not applications, and are not judged as apps (their calls still count).
fn named(n: &LiveNode) -> bool {
    n.presence.app != n.node
}

/// The services and apps the failover concerns: every one for `--all`; for `--services`,
/// those services and, transitively, the services their apps (same name) call.
fn scope(sel: &Selection, edges: &[EdgeRecord]) -> Option<BTreeSet<String>> {
    let Selection::Services(list) = sel else {
        return None;
    };
    let mut set: BTreeSet<String> = list.iter().cloned().collect();
    loop {
        let more: Vec<String> = edges
            .iter()
            .filter(|e| set.contains(&e.app) && !set.contains(&e.service))
            .map(|e| e.service.clone())
            .collect();
        if more.is_empty() {
            return Some(set);
        }
        set.extend(more);
    }
}

/// Every blocker, in kind order, then by app and service.
pub fn assess(inp: &Inputs) -> Vec<Blocker> {
    let from = inp.plan.from.as_str();
    let scope = scope(inp.selection, inp.edges);
    let in_scope = |name: &str| scope.as_ref().is_none_or(|s| s.contains(name));
    let mut out = Vec::new();

    // Apps (named ones) and where their live sidecars are.
    let mut apps: BTreeMap<&str, Vec<&LiveNode>> = BTreeMap::new();
    let mut callers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for n in inp.nodes {
        if named(n) {
            apps.entry(n.presence.app.as_str()).or_default().push(n);
        }
        callers
            .entry(n.presence.app.as_str())
            .or_default()
            .insert(n.dc.as_str());
    }

    // Single-datacenter dependencies: a caller that keeps running, a service that does not.
    let pairs: BTreeSet<(&str, &str)> = inp
        .edges
        .iter()
        .filter(|e| e.service != UNKNOWN_SERVICE && in_scope(&e.service))
        .map(|e| (e.app.as_str(), e.service.as_str()))
        .collect();
    let mut judged: BTreeMap<&str, Option<String>> = BTreeMap::new();
    for (app, service) in pairs {
        let survivors: Vec<&str> = callers
            .get(app)
            .map(|d| d.iter().copied().filter(|d| *d != from).collect())
            .unwrap_or_default();
        if survivors.is_empty() {
            continue;
        }
        let missing = judged
            .entry(service)
            .or_insert_with(|| unavailable_outside(inp, service));
        if let Some(evidence) = missing {
            out.push(Blocker {
                kind: BlockerKind::SingleDcDependency,
                service: Some(service.to_string()),
                app: Some(app.to_string()),
                reason: format!(
                    "{app} calls {service}, which has no healthy endpoint outside {from} ({evidence}); {app} keeps running in {}",
                    survivors.join(", ")
                ),
            });
        }
    }

    // Apps that run only in the datacenter.
    for (app, nodes) in &apps {
        if in_scope(app) && nodes.iter().all(|n| n.dc == from) {
            out.push(Blocker {
                kind: BlockerKind::AppSingleDc,
                service: None,
                app: Some(app.to_string()),
                reason: format!(
                    "app {app} runs only in {from} ({} live sidecar(s), none elsewhere): it goes down with {from}",
                    nodes.len()
                ),
            });
        }
    }

    // The failover's own guard rails, as blockers.
    for (service, reason) in guard::fail_routes_by_service(inp.plan) {
        out.push(Blocker {
            kind: BlockerKind::FailRoute,
            service: Some(service),
            app: None,
            reason,
        });
    }
    for (service, reason) in guard::capacity_by_service(inp.topo, inp.plan, inp.peak_utilization) {
        out.push(Blocker {
            kind: BlockerKind::Capacity,
            service: Some(service),
            app: None,
            reason,
        });
    }

    // A datacenter that gains a service's traffic while below the health gate.
    out.extend(unhealthy_targets(inp));

    // A stale map: the verdict above rests on edges that may be missing.
    for (app, nodes) in &apps {
        if !in_scope(app) {
            continue;
        }
        let newest = inp
            .edges
            .iter()
            .filter(|e| e.app == *app)
            .map(|e| e.edge.at_ms)
            .max();
        let reason = match newest {
            Some(at) if inp.now_ms.saturating_sub(at) > STALE_MAP_MS => format!(
                "dependency map of app {app} is stale: its newest edge was written {} ago (sidecars rewrite edges every 5m); its calls may be missing",
                ago(inp.now_ms.saturating_sub(at))
            ),
            Some(_) => continue,
            None => {
                // A sidecar has been up at least since its last presence write.
                let Some(oldest) = nodes.iter().min_by_key(|n| n.presence.at_ms) else {
                    continue;
                };
                let up = inp.now_ms.saturating_sub(oldest.presence.at_ms);
                if up <= STALE_MAP_MS {
                    continue;
                }
                format!(
                    "dependency map of app {app} is stale: no edges at all, though its sidecar {}/{} has been up at least {} (a sidecar without the edge publisher, or an app that calls nothing)",
                    oldest.dc, oldest.node, ago(up)
                )
            }
        };
        out.push(Blocker {
            kind: BlockerKind::StaleMap,
            service: None,
            app: Some(app.to_string()),
            reason,
        });
    }
    out
}

/// One blocker per (service, datacenter) whose weight the plan raises while the datacenter's
/// fresh health record puts the service below [`TARGET_MIN_HEALTHY_PERCENT`], with the reason
/// `twinctl shift` would refuse it with. Without a fresh record (no control plane) or
/// without a share to judge (no endpoint probed there) nothing is claimed.
fn unhealthy_targets(inp: &Inputs) -> Vec<Blocker> {
    let gate = HealthGate {
        min_healthy_percent: TARGET_MIN_HEALTHY_PERCENT,
        max_age_ms: HEALTH_FRESH_MS,
    };
    let mut out = Vec::new();
    for m in &inp.plan.moves {
        for (dc, &after) in &m.after.0 {
            if after <= m.before.get(dc) {
                continue;
            }
            let Some(h) = inp
                .health
                .get(dc)
                .filter(|h| h.age_ms(inp.now_ms) <= HEALTH_FRESH_MS)
            else {
                continue;
            };
            if h.service_percent(&m.service).is_none() {
                continue;
            }
            if let Err(why) = gate.check(dc, &m.service, Some(h), inp.now_ms) {
                out.push(Blocker {
                    kind: BlockerKind::UnhealthyTarget,
                    service: Some(m.service.clone()),
                    app: None,
                    reason: format!(
                        "{why}, yet it would get {} of {} (twinctl shift refuses such a move)",
                        bp_to_percent(after),
                        m.service
                    ),
                });
            }
        }
    }
    out
}

/// `None` when `service` has a healthy endpoint in some datacenter other than the plan's
/// `from`; else what was looked at, e.g. `wanguo: 0 of 2 up 3s ago`.
fn unavailable_outside(inp: &Inputs, service: &str) -> Option<String> {
    let mut evidence = Vec::new();
    for dc in inp.topo.datacenters.keys().filter(|d| *d != &inp.plan.from) {
        match serves(inp.topo, inp.health, inp.now_ms, service, dc) {
            Ok(()) => return None,
            Err(e) => evidence.push(e),
        }
    }
    if evidence.is_empty() {
        evidence.push("no other datacenter".to_string());
    }
    Some(evidence.join(", "))
}

/// `Ok` when `service` has a healthy endpoint in `dc`: a static one; else, by a fresh health
/// record that probed it, one up; else (not probed yet, or no fresh health) a registered
/// one. Otherwise what was looked at, e.g. `wanguo: 0 of 2 up 3s ago`.
pub fn serves(
    topo: &Topology,
    health: &BTreeMap<String, DcHealth>,
    now_ms: u64,
    service: &str,
    dc: &str,
) -> Result<(), String> {
    let route = topo.routes.get(service).map(|r| &r.value);
    let statics = route.and_then(|r| r.endpoints.get(dc)).map_or(0, Vec::len);
    if statics > 0 {
        return Ok(());
    }
    let registered = topo.endpoints_in(service, dc).count();
    let fresh = health
        .get(dc)
        .filter(|h| h.age_ms(now_ms) <= HEALTH_FRESH_MS);
    match fresh.and_then(|h| h.services.get(service).map(|s| (h, s))) {
        Some((h, s)) if s.total > 0 => {
            if s.up > 0 {
                return Ok(());
            }
            Err(format!(
                "{dc}: 0 of {} up {} ago",
                s.total,
                ago(h.age_ms(now_ms))
            ))
        }
        // Not probed yet (registered after the last round) or no fresh health: the
        // registrations decide.
        _ if registered > 0 => Ok(()),
        _ => Err(format!("{dc}: no endpoint registered or static")),
    }
}

/// Without `--to`, a route whose every other datacenter holds weight 0 would have its share
/// of `from` spread equally over all of them, staged ones with nothing running included.
/// Spreads it instead only over the datacenters that [`serves`] the service; a route with
/// none is taken out of the plan and returned as a [`BlockerKind::NoTarget`] blocker (the
/// command must name `--to`). Routes with weight elsewhere keep their proportional split.
pub fn place(
    plan: &mut FailoverPlan,
    topo: &Topology,
    health: &BTreeMap<String, DcHealth>,
    now_ms: u64,
) -> Vec<Blocker> {
    if plan.to.is_some() {
        return Vec::new();
    }
    let from = plan.from.clone();
    let others: Vec<&String> = topo.datacenters.keys().filter(|d| **d != from).collect();
    let mut out = Vec::new();
    plan.moves.retain_mut(|m| {
        if others.iter().any(|d| m.before.get(d) > 0) {
            return true;
        }
        let mut serving = Vec::new();
        let mut evidence = Vec::new();
        for dc in &others {
            match serves(topo, health, now_ms, &m.service, dc) {
                Ok(()) => serving.push((*dc).clone()),
                Err(e) => evidence.push(e),
            }
        }
        if serving.is_empty() {
            out.push(Blocker {
                kind: BlockerKind::NoTarget,
                service: Some(m.service.clone()),
                app: None,
                reason: format!(
                    "{} has weight only in {from} and no other datacenter serves it ({}): pass --to DC to say where its traffic goes",
                    m.service,
                    evidence.join(", ")
                ),
            });
            return false;
        }
        m.after = move_off(&m.before, &from, None, &serving);
        true
    });
    out
}

/// `ready` or `not ready`, and why, in one line.
pub fn verdict(from: &str, blockers: &[Blocker], moves: usize, edges: usize) -> String {
    if blockers.is_empty() {
        format!(
            "ready: failing over {from} moves {moves} route(s); no blocker found in {edges} dependency edge(s), presence, health and capacity"
        )
    } else {
        format!(
            "not ready: {} blocker(s) to failing over {from}; twinctl failover refuses them without --force",
            blockers.len()
        )
    }
}

#[cfg(test)]
#[path = "readiness_tests.rs"]
mod tests;
