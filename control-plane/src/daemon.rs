//! The `twin-control-plane` daemon: every replica watches the topology and serves the status
//! API; the elected leader also probes every registered endpoint each round, publishes
//! per-datacenter health (fenced by its leader key), and runs the automatic failover policy
//! when it is switched on, and moves old audit records to the archive when retention is set. A replica that loses its lease stops leading at once and campaigns
//! again; on shutdown the leader resigns so another replica takes over without waiting for
//! the lease to expire.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use twin_topology::{Backoff, Source, TopologyView, ViewOptions};

use crate::audit_archive::Retention;
use crate::autofail::{AutoFailover, AutoFailoverPolicy};
use crate::edge::Edges;
use crate::election::{Candidacy, Candidate, Leadership};
use crate::error::CtlError;
use crate::etcd_health::{watch_etcd, EtcdHealth};
use crate::failover::{self, FailoverRequest};
use crate::health::DcHealth;
use crate::plan::Selection;
use crate::probe::Prober;
use crate::state::Cluster;
use crate::status_api::{self, StatusState};

/// How a replica runs.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// This replica's name in the election and in health records.
    pub id: String,
    /// Where to serve `/v1/status`, `/metrics`, `/healthz`.
    pub listen: SocketAddr,
    /// Election lease TTL: how long a dead leader holds the role.
    pub lease_ttl: Duration,
    /// Time between probe rounds.
    pub probe_interval: Duration,
    /// Deadline of one probe.
    pub probe_timeout: Duration,
    /// HTTP path probed on every `http1` and `http2` endpoint (`grpc` ones get the gRPC
    /// health check).
    pub probe_path: String,
    /// TLS client settings for probing endpoints of routes with `tls:` (`--upstream-ca` …).
    pub probe_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The automatic failover policy; `None` = off.
    pub auto_failover: Option<AutoFailoverPolicy>,
    /// Peak utilization assumed by the capacity guard of automatic failovers, in percent.
    pub peak_utilization: f64,
    /// The load balancers that follow the routes (`--edges FILE`); synced by the leader.
    pub edges: Option<Arc<Edges>>,
    /// Audit retention (`--audit-retention-days`, `--audit-archive`): run by the leader.
    pub audit_retention: Option<Retention>,
}

/// Aborts a task when dropped: the edge sync stops the moment this replica stops leading.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a replica until `shutdown` turns true.
pub async fn run(
    cluster: Cluster,
    cfg: DaemonConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), CtlError> {
    let view = TopologyView::start(
        cluster.client(),
        cluster.keys.clone(),
        ViewOptions::default(),
    );
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| CtlError::failed(format!("binding the status API to {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CtlError::failed(format!("status API address: {e}")))?;
    tracing::info!(%addr, id = %cfg.id, "serving /v1/status, /metrics, /healthz, /healthz/etcd");
    let leading = Arc::new(AtomicBool::new(false));
    let etcd = Arc::new(EtcdHealth::default());
    tokio::spawn(watch_etcd(
        etcd.clone(),
        cluster.client(),
        cluster.keys.clone(),
        cfg.probe_interval,
        cfg.probe_timeout.max(Duration::from_secs(2)),
        shutdown.clone(),
    ));
    let state = Arc::new(StatusState {
        cluster: cluster.clone(),
        topology: view.cell(),
        metrics,
        leading: leading.clone(),
        id: cfg.id.clone(),
        etcd,
    });
    let server = tokio::spawn(status_api::serve(listener, state, shutdown.clone()));
    let me = Candidacy {
        id: cfg.id.clone(),
        status_addr: Some(addr.to_string()),
    };
    let candidate = Candidate::new(cluster.client(), &cluster.keys, &me, cfg.lease_ttl);
    let mut autofail = cfg.auto_failover.clone().map(AutoFailover::new);
    // Campaign retries spread out (full jitter) so replicas that lost etcd together do
    // not all come back at once.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !*shutdown.borrow() {
        let leadership = match candidate.campaign(shutdown.clone()).await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(error = %e, ?retry_in, "campaign failed");
                let mut s = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(retry_in) => {}
                    _ = s.wait_for(|s| *s) => break,
                }
                continue;
            }
        };
        backoff.reset();
        tracing::info!(id = %cfg.id, "elected leader");
        leading.store(true, Ordering::Relaxed);
        metrics::gauge!("twin_control_plane_is_leader").set(1.0);
        let resign = lead(
            &cluster,
            &cfg,
            &view,
            leadership,
            autofail.as_mut(),
            shutdown.clone(),
        )
        .await;
        leading.store(false, Ordering::Relaxed);
        metrics::gauge!("twin_control_plane_is_leader").set(0.0);
        if let Some(l) = resign {
            l.resign().await;
            tracing::info!("resigned leadership");
        } else {
            tracing::warn!("lost leadership; campaigning again");
        }
    }
    let _ = server.await;
    Ok(())
}

/// Leads until leadership is lost (returns `None`) or shutdown (returns the leadership, to
/// resign).
async fn lead(
    cluster: &Cluster,
    cfg: &DaemonConfig,
    view: &TopologyView,
    mut leadership: Leadership,
    mut autofail: Option<&mut AutoFailover>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Leadership> {
    let prober = Prober::new(&cfg.probe_path, cfg.probe_timeout).with_tls(cfg.probe_tls.clone());
    // The edge sync is its own task, so a slow or dead load balancer never delays probes,
    // health or failovers; it ends with this function.
    let _edge_sync = cfg.edges.clone().map(|edges| {
        AbortOnDrop(tokio::spawn(crate::edge::sync::run(
            cluster.clone(),
            edges,
            cfg.id.clone(),
            leadership.fence(),
            view.subscribe(),
        )))
    });
    // Audit retention too: its deletes are fenced by this leadership, and it stops with it.
    let _audit_retention = cfg.audit_retention.clone().map(|r| {
        AbortOnDrop(tokio::spawn(crate::audit_archive::run(
            cluster.clone(),
            r,
            leadership.fence(),
        )))
    });
    let mut tick = tokio::time::interval(cfg.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = leadership.lost() => return None,
            _ = shutdown.wait_for(|s| *s) => return Some(leadership),
        }
        let topo = view.current();
        if topo.source == Source::Empty {
            continue;
        }
        let rounds = topo
            .datacenters
            .keys()
            .map(|dc| prober.probe_dc(&topo, dc, &cfg.id));
        let healths: BTreeMap<String, DcHealth> = futures::future::join_all(rounds)
            .await
            .into_iter()
            .map(|h| (h.dc.clone(), h))
            .collect();
        metrics::counter!("twin_control_plane_probe_rounds_total").increment(1);
        if leadership.is_lost() {
            return None;
        }
        for h in healths.values() {
            if let Some(p) = h.healthy_percent() {
                metrics::gauge!("twin_control_plane_dc_healthy_percent", "dc" => h.dc.clone())
                    .set(p);
            }
            match publish(cluster, &leadership, h).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("health write refused by the fence: no longer the leader");
                    return None;
                }
                Err(e) => tracing::warn!(dc = %h.dc, error = %e, "publishing health failed"),
            }
        }
        if let Some(policy) = autofail.as_deref_mut() {
            let now = tokio::time::Instant::now();
            if let Some(dc) = policy.observe(now, &healths) {
                policy.acted(now);
                auto_failover(cluster, cfg, &leadership, &dc, &healths).await;
            }
        }
    }
}

/// Writes one datacenter's health if this replica still leads; `Ok(false)` when the fence
/// says it does not.
async fn publish(
    cluster: &Cluster,
    leadership: &Leadership,
    h: &DcHealth,
) -> Result<bool, CtlError> {
    let (leader_key, rev) = leadership.fence();
    let value =
        serde_json::to_string(h).map_err(|e| CtlError::failed(format!("encoding health: {e}")))?;
    let txn = Txn::new()
        .when([Compare::create_revision(leader_key, CompareOp::Equal, rev)])
        .and_then([TxnOp::put(cluster.keys.health(&h.dc), value, None)]);
    Ok(cluster.client().kv_client().txn(txn).await?.succeeded())
}

/// The automatic failover: the command's path, guard rails not forced, fenced, reason `auto`.
async fn auto_failover(
    cluster: &Cluster,
    cfg: &DaemonConfig,
    leadership: &Leadership,
    dc: &str,
    healths: &BTreeMap<String, DcHealth>,
) {
    let pct = healths
        .get(dc)
        .and_then(DcHealth::healthy_percent)
        .unwrap_or(0.0);
    let req = FailoverRequest {
        from: dc.to_string(),
        to: None,
        selection: Selection::All,
        peak_utilization: cfg.peak_utilization,
    };
    let result = async {
        let prepared = failover::prepare(cluster, &req).await?;
        // The dependency map's blockers are logged and noted in the audit reason, not
        // enforced: the policy acts only on a datacenter that is already failing, and
        // leaving its traffic there would not save what depends on it.
        let noted: Vec<String> = prepared.map_blockers().map(|b| b.reason.clone()).collect();
        for b in &noted {
            tracing::warn!(%dc, blocker = %b, "automatic failover: dependency blocker (not enforced)");
        }
        let mut reason = if noted.is_empty() {
            format!("auto: {dc} {pct:.0}% healthy")
        } else {
            format!(
                "auto: {dc} {pct:.0}% healthy [dependency blockers not enforced: {}]",
                noted.join("; ")
            )
        };
        // Routes with weight only in `dc` and no other datacenter running them stay put.
        let unplaced: Vec<String> = prepared.unplaced().map(|b| b.reason.clone()).collect();
        for b in &unplaced {
            tracing::warn!(%dc, blocker = %b, "automatic failover: route left in place");
        }
        if !unplaced.is_empty() {
            reason.push_str(&format!(" [left in place: {}]", unplaced.join("; ")));
        }
        failover::commit(
            cluster,
            &prepared,
            "failover",
            &reason,
            false,
            Some(leadership.fence()),
        )
        .await
    }
    .await;
    match result {
        Ok(Some(c)) => {
            metrics::counter!("twin_control_plane_auto_failovers_total").increment(1);
            tracing::warn!(%dc, audit_id = %c.change_id, revision = c.revision, "automatic failover done");
        }
        Ok(None) => tracing::info!(%dc, "automatic failover: no route has weight there"),
        Err(e) => {
            metrics::counter!("twin_control_plane_auto_failovers_refused_total").increment(1);
            tracing::warn!(%dc, error = %e, "automatic failover not done");
        }
    }
}
