//! The daemon's HTTP endpoints: `/v1/status` (the [`StatusReport`] as JSON), `/metrics`
//! (Prometheus text), `/healthz` (`ok` while the process serves; it says whether this
//! replica leads but never fails for being a follower, and says when etcd is unreachable
//! without failing for it: the injection webhook works without etcd) and `/healthz/etcd`
//! (503 while etcd is unreachable).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use twin_topology::{now_ms, Backoff, FencePhase, Topology};

use crate::error::CtlError;
use crate::etcd_health::EtcdHealth;
use crate::state::Cluster;
use crate::status::{Extras, StatusReport};

/// What the endpoints read.
pub struct StatusState {
    pub cluster: Cluster,
    /// The watched topology.
    pub topology: Arc<ArcSwap<Topology>>,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// True while this replica leads.
    pub leading: Arc<AtomicBool>,
    /// This replica's `--id`.
    pub id: String,
    /// Whether etcd answers this replica.
    pub etcd: Arc<EtcdHealth>,
}

impl StatusState {
    /// The status report as the API serves it.
    pub async fn report(&self) -> Result<StatusReport, CtlError> {
        let topo = self.topology.load_full();
        let extras = Extras::read(&self.cluster, &topo).await?;
        Ok(StatusReport::build(&topo, extras, Vec::new(), now_ms()))
    }
}

/// Per route: `twin_control_plane_fence_phase{service,phase}` (1 for the phase a fenced
/// change is in, 0 for the others and for routes without one) and
/// `twin_control_plane_fence_seconds{service}` (how long its fence has stood; 0 without).
fn fence_gauges(topo: &Topology, now_ms: u64) {
    const PHASES: [FencePhase; 5] = [
        FencePhase::Fence,
        FencePhase::Drain,
        FencePhase::Sync,
        FencePhase::Switch,
        FencePhase::Lift,
    ];
    for service in topo.routes.keys() {
        let fence = topo
            .fences
            .get(&**service)
            .map(|f| &f.value)
            .filter(|f| f.active_at(now_ms));
        for p in PHASES {
            let on = fence.is_some_and(|f| f.phase == p);
            metrics::gauge!("twin_control_plane_fence_phase", "service" => service.clone(), "phase" => p.as_str())
                .set(if on { 1.0 } else { 0.0 });
        }
        let age = fence.map_or(0.0, |f| now_ms.saturating_sub(f.since_ms) as f64 / 1000.0);
        metrics::gauge!("twin_control_plane_fence_seconds", "service" => service.clone()).set(age);
    }
}

fn text(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    state: Arc<StatusState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/v1/status") => match state.report().await {
            Ok(r) => match serde_json::to_string_pretty(&r) {
                Ok(j) => text(StatusCode::OK, "application/json", j),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            },
            Err(e) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        (&http::Method::GET, "/metrics") => match &state.metrics {
            Some(h) => {
                fence_gauges(&state.topology.load(), now_ms());
                text(StatusCode::OK, "text/plain; version=0.0.4", h.render())
            }
            None => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "metrics are not recorded\n".into(),
            ),
        },
        (&http::Method::GET, "/healthz") => {
            let role = if state.leading.load(Ordering::Relaxed) {
                "leader"
            } else {
                "follower"
            };
            let etcd = state
                .etcd
                .problem()
                .map(|p| format!(", {p}"))
                .unwrap_or_default();
            text(
                StatusCode::OK,
                "text/plain",
                format!("ok {} {role}{etcd}\n", state.id),
            )
        }
        (&http::Method::GET, "/healthz/etcd") => match state.etcd.problem() {
            Some(p) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{p}\n"),
            ),
            None => text(StatusCode::OK, "text/plain", "etcd ok\n".into()),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /v1/status, /metrics, /healthz, /healthz/etcd\n".into(),
        ),
    };
    Ok(resp)
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<StatusState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let (stream, _) = tokio::select! {
            accepted = backoff.accept(&listener, "status API") => accepted,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "status API connection ended");
            }
        });
    }
}
