//! Failover as an operation on etcd, shared by `twinctl failover` and the daemon's automatic
//! policy: read, plan ([`crate::plan`], placed by [`readiness::place`]), check the guard rails
//! ([`crate::guard`]), then commit every route change in one audited transaction,
//! compare-and-swap on the revisions read. Failback: [`crate::failback`].

use serde::Serialize;
use twin_topology::{now_ms, Change, CommitOptions, Committed, KeyKind, Route, Topology, Weights};

use crate::cutover::CutoverReport;
use crate::deps;
use crate::error::CtlError;
use crate::guard;
use crate::output::{Report, Table};
use crate::plan::{FailoverPlan, Selection};
use crate::readiness::{self, Blocker, BlockerKind};
use crate::state::Cluster;

/// What an SRE (or the automatic policy) asks for.
#[derive(Clone, Debug)]
pub struct FailoverRequest {
    pub from: String,
    pub to: Option<String>,
    pub selection: Selection,
    /// Share of a service's registered capacity assumed used at peak, in percent.
    pub peak_utilization: f64,
}

/// A checked failover, ready to commit.
#[derive(Clone, Debug, Serialize)]
pub struct PreparedFailover {
    pub plan: FailoverPlan,
    /// What the guard rails object to (refused unless forced): the freeze, `fail` routes'
    /// homes and capacity.
    pub objections: Vec<String>,
    /// Every readiness blocker ([`crate::readiness`]): the objections' `fail` routes and
    /// capacity again, and what the dependency map shows. `twinctl failover` refuses on the
    /// map's blockers too; the daemon only logs them.
    pub blockers: Vec<Blocker>,
    /// Routes whose capacity could not be judged (no registered endpoints).
    pub unchecked: Vec<String>,
    /// The full new route of each move, in plan order.
    #[serde(skip)]
    routes: Vec<(Route, Route)>,
    /// The topology the plan was made from.
    #[serde(skip)]
    pub topo: Topology,
}

impl PreparedFailover {
    /// The blockers found in the dependency map (not already among the objections).
    pub fn map_blockers(&self) -> impl Iterator<Item = &Blocker> {
        self.blockers.iter().filter(|b| b.kind.from_map())
    }

    /// Routes left out of the plan because, without `--to`, no datacenter that runs them
    /// could take their traffic ([`readiness::place`]).
    pub fn unplaced(&self) -> impl Iterator<Item = &Blocker> {
        self.blockers
            .iter()
            .filter(|b| b.kind == BlockerKind::NoTarget)
    }

    /// Refuses (exit 3, even with `--force`) when a selected route has nowhere to go.
    pub fn refuse_unplaced(&self) -> Result<(), CtlError> {
        let reasons: Vec<&str> = self.unplaced().map(|b| b.reason.as_str()).collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(CtlError::Refused(reasons.join("; ")))
        }
    }

    /// One compare-and-swap change per moved route.
    pub fn changes(&self, keys: &twin_topology::Keys) -> Result<Vec<Change>, CtlError> {
        let mut changes = Vec::with_capacity(self.routes.len());
        for (m, (before, after)) in self.plan.moves.iter().zip(&self.routes) {
            changes.push(Change {
                key: keys.route(&m.service),
                expected_revision: m.mod_revision,
                value: Some(json(after)?),
                before: Some(json(before)?),
            });
        }
        Ok(changes)
    }
}

/// Reads etcd, plans the failover and lists the guard rails' objections (the caller refuses
/// or, when forced, records them).
pub async fn prepare(
    cluster: &Cluster,
    req: &FailoverRequest,
) -> Result<PreparedFailover, CtlError> {
    let loaded = cluster.load().await?;
    let invalid_routes: Vec<&String> = loaded
        .invalid
        .iter()
        .filter(|l| {
            let key = l.split(": ").next().unwrap_or("");
            match cluster.keys.parse(key) {
                Some(KeyKind::Route(s)) => match &req.selection {
                    Selection::All => true,
                    Selection::Services(list) => list.iter().any(|x| x == s),
                },
                _ => false,
            }
        })
        .collect();
    if let Some(first) = invalid_routes.first() {
        return Err(CtlError::failed(format!(
            "{first}; nothing changed: fix that route or leave it out with --services"
        )));
    }
    let topo = &loaded.topo;
    let mut plan = FailoverPlan::build(topo, &req.from, req.to.as_deref(), &req.selection)
        .map_err(|e| CtlError::failed(e.to_string()))?;
    let edges = deps::read_edges(cluster).await?;
    let nodes = cluster.live_nodes().await?;
    let health = cluster.health_all().await?;
    let now = now_ms();
    // Without --to, a route with weight only in `from` goes where it runs, or nowhere.
    let unplaced = readiness::place(&mut plan, topo, &health, now);
    let mut blockers = readiness::assess(&readiness::Inputs {
        topo,
        plan: &plan,
        selection: &req.selection,
        edges: &edges,
        nodes: &nodes,
        health: &health,
        now_ms: now,
        peak_utilization: req.peak_utilization,
    });
    blockers.extend(unplaced);
    // In kind order; a stable sort keeps each kind's own order.
    blockers.sort_by_key(|b| b.kind);
    let mut objections: Vec<String> = guard::freeze(topo, now).into_iter().collect();
    // The fail-route and capacity guard rails, in that order, as readiness found them. A
    // route with no target is no objection: `--force` cannot choose one for it.
    objections.extend(
        blockers
            .iter()
            .filter(|b| !b.kind.from_map() && b.kind != BlockerKind::NoTarget)
            .map(|b| b.reason.clone()),
    );
    let unchecked = plan
        .moves
        .iter()
        .filter(|m| {
            topo.endpoints
                .get(m.service.as_str())
                .is_none_or(|e| e.is_empty())
        })
        .map(|m| m.service.clone())
        .collect();
    let mut routes = Vec::with_capacity(plan.moves.len());
    for m in &plan.moves {
        let Some(read) = topo.routes.get(m.service.as_str()) else {
            return Err(CtlError::failed(format!(
                "route {} is not in the topology read",
                m.service
            )));
        };
        let before = read.value.clone();
        let mut after = before.clone();
        after.weights = m.after.clone();
        after
            .validate(&topo.datacenters)
            .map_err(|e| CtlError::failed(format!("route {}: {e}", m.service)))?;
        routes.push((before, after));
    }
    Ok(PreparedFailover {
        plan,
        objections,
        blockers,
        unchecked,
        routes,
        topo: loaded.topo,
    })
}

fn json<T: Serialize>(v: &T) -> Result<serde_json::Value, CtlError> {
    serde_json::to_value(v).map_err(|e| CtlError::failed(format!("encoding a route: {e}")))
}

/// Commits a prepared failover in one transaction (fenced by a leader key when given).
/// Refuses when the guard rails object, unless `force`; then the objections go into the
/// audit reason.
pub async fn commit(
    cluster: &Cluster,
    prepared: &PreparedFailover,
    action: &str,
    reason: &str,
    force: bool,
    fence: Option<(String, i64)>,
) -> Result<Option<Committed>, CtlError> {
    let overridden = guard::enforce(prepared.objections.clone(), force)?;
    if prepared.plan.moves.is_empty() {
        return Ok(None);
    }
    let changes = prepared.changes(&cluster.keys)?;
    let audit = cluster.audit(action, &guard::forced_reason(reason, &overridden));
    let options = CommitOptions {
        fence,
        ..CommitOptions::default()
    };
    Ok(Some(
        cluster.store.commit_with(changes, &audit, &options).await?,
    ))
}

/// The `failover` report: before and after per service.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverReport {
    pub dry_run: bool,
    pub from: String,
    pub services: Vec<ServiceWeights>,
    pub unchanged: Vec<String>,
    /// Guard-rail objections: refused, or (with --force) overridden.
    pub objections: Vec<String>,
    /// The dependency map's blockers among them (see `twinctl readiness`).
    pub blockers: Vec<Blocker>,
    pub forced: bool,
    pub capacity_unchecked: Vec<String>,
    /// The audit id to pass to `twinctl failback`.
    pub audit_id: Option<String>,
    pub revision: Option<i64>,
    /// With --fence: the moving units and each phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutover: Option<CutoverReport>,
    /// The plan shown before asking for confirmation (not a dry run's result).
    #[serde(skip)]
    pub confirming: bool,
}

/// One service's weights before and after.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceWeights {
    pub service: String,
    pub before: Weights,
    pub after: Weights,
}

impl FailoverReport {
    /// The report of `prepared`, committed as `committed` (or a dry run).
    pub fn new(
        prepared: &PreparedFailover,
        committed: Option<&Committed>,
        dry_run: bool,
        forced: bool,
    ) -> Self {
        FailoverReport {
            dry_run,
            from: prepared.plan.from.clone(),
            services: prepared
                .plan
                .moves
                .iter()
                .map(|m| ServiceWeights {
                    service: m.service.clone(),
                    before: m.before.clone(),
                    after: m.after.clone(),
                })
                .collect(),
            unchanged: prepared.plan.unchanged.clone(),
            objections: prepared.objections.clone(),
            blockers: prepared.map_blockers().cloned().collect(),
            forced,
            capacity_unchecked: prepared.unchecked.clone(),
            audit_id: committed.map(|c| c.change_id.clone()),
            revision: committed.map(|c| c.revision),
            cutover: None,
            confirming: false,
        }
    }
}

impl Report for FailoverReport {
    fn text(&self) -> String {
        let mut t = Table::new(["SERVICE", "BEFORE", "AFTER"]);
        for s in &self.services {
            t.row([s.service.clone(), s.before.to_string(), s.after.to_string()]);
        }
        let mut out = Vec::new();
        if !t.is_empty() {
            out.push(t.render());
        }
        if let Some(c) = &self.cutover {
            out.extend(c.lines());
        }
        if !self.unchanged.is_empty() {
            out.push(format!(
                "no weight in {}: {}",
                self.from,
                self.unchanged.join(", ")
            ));
        }
        for o in &self.objections {
            out.push(if self.forced {
                format!("forced past: {o}")
            } else {
                format!("guard rail: {o}")
            });
        }
        if !self.capacity_unchecked.is_empty() {
            out.push(format!(
                "capacity not checked (no registered endpoints): {}",
                self.capacity_unchecked.join(", ")
            ));
        }
        out.push(match (&self.audit_id, self.dry_run) {
            (_, true) if self.confirming => format!(
                "this will change: {} route(s) move off {} to the weights above",
                self.services.len(),
                self.from
            ),
            (_, true) if !self.objections.is_empty() && !self.forced => format!(
                "dry run: {} route(s) would move off {}, but the guard rails refuse it without --force; nothing written",
                self.services.len(),
                self.from
            ),
            (_, true) => format!(
                "dry run: {} route(s) would move off {}; nothing written",
                self.services.len(),
                self.from
            ),
            (Some(id), false) => format!(
                "moved {} route(s) off {} at revision {}; audit id {id} (undo: twinctl failback --audit-id {id} --reason ...)",
                self.services.len(),
                self.from,
                self.revision.unwrap_or(0)
            ),
            (None, false) => format!("nothing to move: no selected route has weight in {}", self.from),
        });
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(dry_run: bool, confirming: bool) -> FailoverReport {
        FailoverReport {
            dry_run,
            from: "m6v".into(),
            services: vec![ServiceWeights {
                service: "payments".into(),
                before: Weights::parse_percent_list("m6v=50,wanguo=50").expect("weights"),
                after: Weights::parse_percent_list("m6v=0,wanguo=100").expect("weights"),
            }],
            unchanged: Vec::new(),
            objections: Vec::new(),
            blockers: Vec::new(),
            forced: false,
            capacity_unchecked: Vec::new(),
            audit_id: None,
            revision: None,
            cutover: None,
            confirming,
        }
    }

    #[test]
    fn the_plan_before_the_question_is_a_plan_not_a_dry_run() {
        let asked = report(true, true).text();
        assert!(
            asked.ends_with("this will change: 1 route(s) move off m6v to the weights above"),
            "{asked}"
        );
        assert!(!asked.contains("dry run"), "{asked}");
        let dry = report(true, false).text();
        assert!(
            dry.ends_with("dry run: 1 route(s) would move off m6v; nothing written"),
            "{dry}"
        );
    }
}
