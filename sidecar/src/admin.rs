//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/config` and
//! `POST /drain`.
//!
//! `/readyz` answers 200 once a routing table is loaded (from etcd, the snapshot or a routes
//! file) and until the node drains. `/config` shows the table in use: its revision and, per
//! service and datacenter, the weight, whether the datacenter is up and each endpoint's
//! health. `POST /drain` withdraws the node (readiness fails, registrations are revoked)
//! while requests keep being served; SIGTERM then stops it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};

use crate::deps::Edges;
use crate::outbound::dc;
use crate::outbound::endpoint::healthy_percent;
use crate::outbound::error::X_TWIN_ERROR;
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
    /// When set, POST /drain must carry `Authorization: Bearer <file contents>`.
    pub token_file: Option<PathBuf>,
    /// The application's name and its calls per service (`/v1/deps`).
    pub app: String,
    pub edges: Arc<Edges>,
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
    /// The answer to one admin request.
    pub(crate) fn handle<B>(&self, req: &Request<B>) -> Resp {
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
            (&Method::GET, "/v1/deps") => json_response(StatusCode::OK, &self.deps()),
            (&Method::POST, "/drain") => match self.refusal(req) {
                None => {
                    self.shutdown.drain();
                    json_response(StatusCode::OK, &json!({"draining": true}))
                }
                Some(refused) => refused,
            },
            (
                _,
                path @ ("/metrics" | "/healthz" | "/readyz" | "/config" | "/drain" | "/v1/deps"),
            ) => {
                let allow = if path == "/drain" { "POST" } else { "GET" };
                let mut r = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("method not allowed: use {allow}\n"),
                );
                r.headers_mut()
                    .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz, /config, /v1/deps or POST /drain\n",
            ),
        }
    }

    /// This sidecar's edges of the dependency map: every service its application called
    /// since the sidecar started, with the datacenters that answered.
    fn deps(&self) -> Value {
        let table = self.table.load();
        let names = crate::deps::dc_names(&table.topology);
        let edges: Vec<Value> = self
            .edges
            .all()
            .into_iter()
            .filter_map(|(service, stats)| {
                let c = stats.counts();
                (c.requests > 0).then(|| {
                    let e = crate::deps::edge_value("", &c, &names, 0, 0, 0);
                    json!({
                        "service": service,
                        "requests": e.requests,
                        "errors": e.errors,
                        "served": e.served,
                    })
                })
            })
            .collect();
        json!({"app": self.app, "edges": edges})
    }

    /// The answer refusing a mutating request without the right bearer token; `None` when it
    /// may proceed. The file is read on every call, so a rotated (projected) token is picked
    /// up without a restart.
    fn refusal<B>(&self, req: &Request<B>) -> Option<Resp> {
        let path = self.token_file.as_ref()?;
        let want = match read_token(path) {
            Ok(t) => t,
            Err(e) => {
                let mut r = text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
                r.headers_mut().insert(
                    X_TWIN_ERROR,
                    HeaderValue::from_static("admin token unreadable"),
                );
                return Some(r);
            }
        };
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The auth scheme is case-insensitive (RFC 9110 §11.1): `bearer` is as good.
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token);
        if given.is_some_and(|g| g.trim() == want) {
            return None;
        }
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "POST /drain needs the admin bearer token\n",
        );
        r.headers_mut().insert(
            X_TWIN_ERROR,
            HeaderValue::from_static("missing or wrong admin bearer token"),
        );
        Some(r)
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
        let mut names: Vec<&str> = t.topology.routes.keys().map(|k| &**k).collect();
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
                                "idle_connections": m.state.pool.idle() + m.state.idle.len(),
                                "h2_connections": m.state.h2.connections(),
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
                name.to_string(),
                json!({
                    "route_revision": s.revision,
                    "protocol": s.route.protocol,
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

/// The admin token in `path`, without surrounding whitespace.
fn read_token(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(format!("admin token file {} is empty", path.display())),
        Err(e) => Err(format!("admin token file {}: {e}", path.display())),
    }
}

/// Why `twin-sidecar drain` failed.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("starting a runtime: {0}")]
    Runtime(std::io::Error),
    #[error("--admin {0:?} is not an address like 127.0.0.1:15000")]
    Addr(String),
    #[error("{0}")]
    Token(String),
    #[error("sidecar admin at {addr}: {reason}")]
    Request { addr: String, reason: String },
    #[error("sidecar admin at {addr} answered {status}: {body}")]
    Refused {
        addr: String,
        status: StatusCode,
        body: String,
    },
}

/// Asks the sidecar whose admin listens on `admin` to drain (`POST /drain`), with the bearer
/// token from `token_file` if given. This is what `twin-sidecar drain` (the preStop hook) runs.
pub async fn request_drain(admin: &str, token_file: Option<&Path>) -> Result<(), DrainError> {
    use http_body_util::BodyExt;
    let addr: std::net::SocketAddr = admin
        .parse()
        .map_err(|_| DrainError::Addr(admin.to_string()))?;
    let token = token_file
        .map(read_token)
        .transpose()
        .map_err(DrainError::Token)?;
    let failed = |reason: String| DrainError::Request {
        addr: admin.to_string(),
        reason,
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::post("/drain").header(hyper::header::HOST, admin);
        if let Some(t) = &token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| failed(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(DrainError::Refused {
                addr: admin.to_string(),
                status,
                body,
            })
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| failed("no answer within 5s".to_string()))?
}

/// [`request_drain`] from synchronous code (the `drain` subcommand).
pub fn request_drain_blocking(admin: &str, token_file: Option<&Path>) -> Result<(), DrainError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DrainError::Runtime)?
        .block_on(request_drain(admin, token_file))
}
