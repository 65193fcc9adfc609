//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/config` and
//! `POST /drain`.
//!
//! `/readyz` answers 200 once a routing table is loaded (from etcd, the snapshot or a routes
//! file) and until the node drains. `/config` shows the table in use: its revision and, per
//! service and datacenter, the weight, whether the datacenter is up and each endpoint's
//! health. `POST /drain` withdraws the node (readiness fails, registrations are revoked)
//! while requests keep being served; SIGTERM then stops it.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};

use crate::outbound::dc;
use crate::outbound::endpoint::healthy_percent;
use crate::outbound::metrics::{DURATION, LATENCY_BUCKETS};
use crate::shutdown::Shutdown;
use crate::table::RoutingTable;

/// The process-wide Prometheus recorder. Installed by the first sidecar of a process; later
/// ones (tests run several in one process) share it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder
                .set_buckets_for_metric(Matcher::Full(DURATION.to_string()), &LATENCY_BUCKETS)
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "latency buckets refused; using summaries");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            crate::outbound::metrics::describe();
            handle
        })
        .clone()
}

/// Called before each `/metrics` render to refresh gauges that are read, not pushed.
pub type BeforeRender = Arc<dyn Fn() + Send + Sync>;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct Admin {
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub shutdown: Shutdown,
    pub prometheus: PrometheusHandle,
    pub before_render: Option<BeforeRender>,
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl Admin {
    /// The hyper service of one admin connection.
    pub fn service(
        self: &Arc<Self>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Resp,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Resp, Infallible>> + Send,
    > + Send
           + 'static {
        let this = self.clone();
        hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok(this.handle(&req)) }
        })
    }

    fn handle<B>(&self, req: &Request<B>) -> Resp {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                if let Some(f) = &self.before_render {
                    f();
                }
                let mut r = text(StatusCode::OK, self.prometheus.render());
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => self.readyz(),
            (&Method::GET, "/config") => json_response(StatusCode::OK, &self.config()),
            (&Method::POST, "/drain") => {
                self.shutdown.drain();
                json_response(StatusCode::OK, &json!({"draining": true}))
            }
            (_, "/metrics" | "/healthz" | "/readyz" | "/config" | "/drain") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz, /config or POST /drain\n",
            ),
        }
    }

    fn readyz(&self) -> Resp {
        if self.shutdown.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        let t = self.table.load();
        if !t.is_loaded() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no routing table loaded yet\n",
            );
        }
        text(
            StatusCode::OK,
            format!("ready (revision {})\n", t.revision()),
        )
    }

    /// The table in use, as JSON.
    pub fn config(&self) -> Value {
        let t = self.table.load_full();
        let mut services = serde_json::Map::new();
        let mut names: Vec<&String> = t.topology.routes.keys().collect();
        names.sort();
        for name in names {
            let Some(s) = t.service(name) else { continue };
            let dcs: Vec<Value> = s
                .dcs
                .iter()
                .enumerate()
                .map(|(i, pool)| {
                    let endpoints: Vec<Value> = pool
                        .members
                        .iter()
                        .map(|m| {
                            json!({
                                "addr": m.state.addr,
                                "capacity": m.capacity,
                                "available": m.state.is_available(),
                                "ejected_for_ms": m.state.ejected_for().as_millis() as u64,
                                "outstanding": m.state.outstanding(),
                                "ewma_ms": m.state.ewma().as_secs_f64() * 1000.0,
                                "idle_connections": m.state.pool.idle(),
                            })
                        })
                        .collect();
                    json!({
                        "name": pool.name,
                        "weight": s.route.weights.get(&pool.name),
                        "up": dc::is_up(s, i),
                        "healthy_percent": healthy_percent(&pool.members),
                        "endpoints": endpoints,
                    })
                })
                .collect();
            services.insert(
                name.clone(),
                json!({
                    "route_revision": s.revision,
                    "route": s.route,
                    "datacenters": dcs,
                }),
            );
        }
        json!({
            "revision": t.revision(),
            "source": t.topology.source,
            "loaded": t.is_loaded(),
            "draining": self.shutdown.is_draining(),
            "datacenters": t.topology.datacenters,
            "services": services,
        })
    }
}
