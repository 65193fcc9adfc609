//! The edge sync, run by the leader only, as its own task: it never blocks or delays a route
//! change in etcd. On every change of a route that has an edge (seen through the watched
//! topology, so within moments of the commit) and every [`DRIFT_INTERVAL`], it reads back
//! what the load balancer holds, sets what differs from the route, and publishes what it saw
//! and did at `control/edges/{service}` (`twinctl edge status`, `twinctl status`). A
//! difference while the route stood still is drift (a hand edit, a restarted HAProxy): it is
//! restored and audited as `edge-sync`. A load balancer that is down or refuses is retried
//! with backoff, counted in `twin_control_edge_sync_failures_total{service,driver}`, and
//! published as failing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use twin_topology::{now_ms, AuditMeta, Backoff, Change, CommitOptions, Topology};

use crate::edge::config::{Driver, EdgeConfig, Edges};
use crate::edge::exec;
use crate::edge::haproxy::RuntimeApi;
use crate::edge::plan::{self, EdgeChange, EdgeState, MapEntry};
use crate::error::CtlError;
use crate::state::Cluster;

/// Time between checks of a load balancer whose route did not change.
pub const DRIFT_INTERVAL: Duration = Duration::from_secs(10);
/// Who the audit records of restored drift name.
pub const WHO: &str = "edge-sync";

/// What the leader last saw and did at one service's edge: `control/edges/{service}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub service: String,
    pub driver: String,
    /// The Runtime API address.
    pub socket: String,
    /// True when the load balancer holds what the route says.
    pub ok: bool,
    /// Why not, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failed attempts in a row.
    #[serde(default)]
    pub failures: u64,
    /// What the route asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<EdgeState>,
    /// What the load balancer held when last read (before any change was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<EdgeState>,
    /// What the last sync changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<EdgeChange>,
    /// The route's revision the sync worked from.
    pub route_revision: i64,
    /// The replica that wrote this.
    pub by: String,
    /// When this state began (Unix ms).
    pub since_ms: u64,
}

/// One service's sync state.
struct Slot {
    /// What the load balancer held after the last successful sync.
    applied: Option<EdgeState>,
    route_revision: Option<i64>,
    backoff: Backoff,
    due: Instant,
    failures: u64,
    published: Option<EdgeRecord>,
}

/// Runs until the task is dropped (the leader stops leading) or the topology watch ends.
pub async fn run(
    cluster: Cluster,
    edges: Arc<Edges>,
    leader: String,
    fence: (String, i64),
    mut topology: watch::Receiver<Arc<Topology>>,
) {
    let mut slots: BTreeMap<String, Slot> = edges
        .edges
        .keys()
        .map(|s| {
            (
                s.clone(),
                Slot {
                    applied: None,
                    route_revision: None,
                    backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(5)),
                    due: Instant::now(),
                    failures: 0,
                    published: None,
                },
            )
        })
        .collect();
    loop {
        let topo = topology.borrow_and_update().clone();
        let now = Instant::now();
        for (service, slot) in slots.iter_mut() {
            let rev = topo.routes.get(service.as_str()).map(|r| r.mod_revision);
            if rev != slot.route_revision {
                slot.route_revision = rev;
                slot.due = now;
            }
        }
        let rounds =
            slots
                .iter_mut()
                .filter(|(_, s)| s.due <= now)
                .filter_map(|(service, slot)| {
                    let edge = edges.edges.get(service)?;
                    Some(round(&cluster, &leader, &fence, service, edge, slot, &topo))
                });
        futures::future::join_all(rounds).await;
        let next = slots
            .values()
            .map(|s| s.due)
            .min()
            .unwrap_or_else(|| Instant::now() + DRIFT_INTERVAL);
        tokio::select! {
            changed = topology.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// One sync of one service, with its bookkeeping: schedule, metrics, publication, audit.
async fn round(
    cluster: &Cluster,
    leader: &str,
    fence: &(String, i64),
    service: &str,
    edge: &EdgeConfig,
    slot: &mut Slot,
    topo: &Topology,
) {
    let driver = edge.driver.as_str();
    let outcome = match edge.driver {
        Driver::Haproxy => sync_one(service, edge, topo).await,
        Driver::Exec => sync_exec(service, edge, topo, slot.applied.as_ref()).await,
    };
    let mut record = EdgeRecord {
        service: service.to_string(),
        driver: driver.to_string(),
        socket: edge.socket().to_string(),
        ok: outcome.error.is_none(),
        error: outcome.error.clone(),
        failures: 0,
        desired: outcome.desired.clone(),
        observed: outcome.observed.clone(),
        changed: outcome.changed.clone(),
        route_revision: slot.route_revision.unwrap_or(0),
        by: leader.to_string(),
        since_ms: now_ms(),
    };
    let drift = match &outcome.error {
        Some(e) => {
            slot.failures += 1;
            record.failures = slot.failures;
            metrics::counter!("twin_control_edge_sync_failures_total", "service" => service.to_string(), "driver" => driver).increment(1);
            let retry_in = slot.backoff.next_delay();
            tracing::warn!(%service, %driver, error = %e, ?retry_in, "edge sync failed");
            slot.due = Instant::now() + retry_in;
            false
        }
        None => {
            slot.failures = 0;
            slot.backoff.reset();
            slot.due = Instant::now() + DRIFT_INTERVAL;
            // Drift: the load balancer moved away from what this leader had set while the
            // route stood still.
            let drift = !outcome.changed.is_empty() && slot.applied == outcome.desired;
            slot.applied = outcome.desired.clone();
            if !outcome.changed.is_empty() {
                let what: Vec<String> = outcome.changed.iter().map(EdgeChange::line).collect();
                tracing::info!(%service, %driver, drift, changes = %what.join("; "), "edge synced");
                metrics::counter!("twin_control_edge_sync_changes_total", "service" => service.to_string(), "driver" => driver).increment(what.len() as u64);
            }
            drift
        }
    };
    let same = slot.published.as_ref().is_some_and(|p| {
        p.ok == record.ok
            && p.error == record.error
            && p.desired == record.desired
            && p.observed == record.observed
            && p.route_revision == record.route_revision
    });
    if same && !drift {
        return;
    }
    let written = if drift {
        audit_drift(cluster, fence, &record).await
    } else {
        publish(cluster, fence, &record).await
    };
    match written {
        Ok(()) => slot.published = Some(record),
        Err(e) => tracing::warn!(%service, error = %e, "publishing the edge state failed"),
    }
}

/// What one sync did.
#[derive(Default)]
struct Outcome {
    desired: Option<EdgeState>,
    observed: Option<EdgeState>,
    changed: Vec<EdgeChange>,
    error: Option<String>,
}

async fn sync_one(service: &str, edge: &EdgeConfig, topo: &Topology) -> Outcome {
    let mut out = Outcome::default();
    let desired = match preview(service, edge, topo).await {
        Ok(p) => p,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    out.desired = Some(desired.desired.clone());
    out.observed = Some(desired.observed.clone());
    let api = RuntimeApi::new(edge.socket());
    for c in &desired.changes {
        let done = match c {
            EdgeChange::Weight { server, to, .. } => api.set_weight(server, *to).await,
            EdgeChange::Units { map, to, .. } => api.replace_map(map, to).await,
            EdgeChange::Exec { .. } => Ok(()),
        };
        if let Err(e) = done {
            out.error = Some(e);
            return out;
        }
        out.changed.push(c.clone());
    }
    out
}

/// One sync by the exec driver: runs the command when the desired state differs from what
/// it last applied (it cannot read the load balancer back).
async fn sync_exec(
    service: &str,
    edge: &EdgeConfig,
    topo: &Topology,
    applied: Option<&EdgeState>,
) -> Outcome {
    let mut out = Outcome::default();
    let Some(route) = topo.routes.get(service) else {
        out.error = Some(format!("route {service} does not exist"));
        return out;
    };
    let desired = match plan::desired(service, edge, &route.value, &topo.datacenters) {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    out.desired = Some(desired.clone());
    out.observed = applied.cloned();
    if applied == Some(&desired) {
        return out;
    }
    let input = exec::desired(service, edge, &route.value, route.mod_revision, &desired);
    match exec::run(&edge.command, &input).await {
        Ok(()) => out.changed.push(EdgeChange::Exec {
            command: edge.socket().to_string(),
            weights: desired.weights.clone(),
        }),
        Err(e) => out.error = Some(e),
    }
    out
}

/// What a sync of `service` would do now.
#[derive(Clone, Debug, Serialize)]
pub struct Preview {
    pub desired: EdgeState,
    pub observed: EdgeState,
    pub changes: Vec<EdgeChange>,
}

/// Reads the load balancer and compares it with the route: the changes a sync would make.
pub async fn preview(service: &str, edge: &EdgeConfig, topo: &Topology) -> Result<Preview, String> {
    let route = topo
        .routes
        .get(service)
        .ok_or_else(|| format!("route {service} does not exist"))?;
    let desired = plan::desired(service, edge, &route.value, &topo.datacenters)?;
    if edge.driver == Driver::Exec {
        // Nothing to read back: a sync would run the command with the desired state.
        return Ok(Preview {
            changes: vec![EdgeChange::Exec {
                command: edge.socket().to_string(),
                weights: desired.weights.clone(),
            }],
            desired,
            observed: EdgeState::default(),
        });
    }
    let api = RuntimeApi::new(edge.socket());
    let mut weights = BTreeMap::new();
    for d in edge.datacenters.values() {
        weights.insert(d.server.clone(), Some(api.weight(&d.server).await?));
    }
    let units: Option<Vec<MapEntry>> = match &edge.units {
        Some(u) => Some(api.show_map(&u.map).await?),
        None => None,
    };
    let changes = plan::diff(edge, &desired, &weights, units.as_deref());
    let observed = EdgeState {
        weights: weights
            .into_iter()
            .filter_map(|(s, w)| Some((s, w?)))
            .collect(),
        units,
    };
    Ok(Preview {
        desired,
        observed,
        changes,
    })
}

/// Writes the record while this replica still leads.
async fn publish(
    cluster: &Cluster,
    fence: &(String, i64),
    record: &EdgeRecord,
) -> Result<(), CtlError> {
    let value = serde_json::to_string(record)
        .map_err(|e| CtlError::failed(format!("encoding the edge state: {e}")))?;
    let txn = Txn::new()
        .when([Compare::create_revision(
            fence.0.as_str(),
            CompareOp::Equal,
            fence.1,
        )])
        .and_then([TxnOp::put(cluster.keys.edge(&record.service), value, None)]);
    let resp = cluster.client().kv_client().txn(txn).await?;
    if resp.succeeded() {
        Ok(())
    } else {
        Err(CtlError::failed(
            "edge state not written: no longer the leader",
        ))
    }
}

/// Writes the record with an audit record of the drift restored, as `edge-sync`.
async fn audit_drift(
    cluster: &Cluster,
    fence: &(String, i64),
    record: &EdgeRecord,
) -> Result<(), CtlError> {
    let key = cluster.keys.edge(&record.service);
    let current = cluster.store.get_json::<serde_json::Value>(&key).await?;
    let what: Vec<String> = record.changed.iter().map(EdgeChange::line).collect();
    let audit = AuditMeta {
        who: WHO.to_string(),
        action: "edge restore".to_string(),
        reason: format!(
            "{} at {} drifted from route {} (changed by hand or restarted); restored: {}",
            record.driver,
            record.socket,
            record.service,
            what.join("; ")
        ),
    };
    let change = Change {
        key,
        expected_revision: current.as_ref().map_or(0, |c| c.mod_revision),
        value: Some(
            serde_json::to_value(record)
                .map_err(|e| CtlError::failed(format!("encoding the edge state: {e}")))?,
        ),
        before: record
            .observed
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok()),
    };
    let options = CommitOptions {
        fence: Some(fence.clone()),
        ..CommitOptions::default()
    };
    cluster
        .store
        .commit_with(vec![change], &audit, &options)
        .await?;
    Ok(())
}

/// Every published edge record, by service.
pub async fn read_records(cluster: &Cluster) -> Result<Vec<EdgeRecord>, CtlError> {
    let found = cluster
        .list_json::<EdgeRecord>(&cluster.keys.edge(""), "edge record")
        .await?;
    Ok(found.into_iter().map(|(_, r)| r).collect())
}
