//! Steady load through the sidecar, and what it saw per datacenter.
//!
//! Workers send `GET /` for the `payments` service at a fixed total rate, each request with a
//! random `x-twin-unit`, so traffic follows the route's weights. The datacenter of each answer
//! comes from its `x-twin-dc` header; answers the sidecar made itself (and transport errors)
//! count under `sidecar`. Every second the screen takes the window and starts a new one.
//!
//! gRPC workers do the same for the `risk` service: `grpc.health.v1.Health/Check` over h2c
//! to the sidecar with the authority `risk`, a random `x-twin-unit` in the call's metadata,
//! the datacenter from the answer's `x-twin-dc` metadata. A call fails when its status is
//! not OK (the sidecar's own errors arrive as gRPC statuses).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

/// Row name for errors no datacenter answered.
pub const SIDECAR_ROW: &str = "sidecar";

#[derive(Default)]
struct DcWindow {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    total: u64,
}

/// Counts shared by the load workers and the screen.
#[derive(Default)]
pub struct Stats {
    by_dc: Mutex<BTreeMap<String, DcWindow>>,
}

/// One datacenter's line of the table for the last window.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub dc: String,
    pub rps: f64,
    pub errors: u64,
    pub p99_ms: f64,
    pub total: u64,
}

impl Stats {
    fn record(&self, dc: &str, ok: bool, latency: Duration) {
        let Ok(mut m) = self.by_dc.lock() else { return };
        let w = m.entry(dc.to_string()).or_default();
        if ok {
            w.ok += 1;
        } else {
            w.errors += 1;
        }
        w.total += 1;
        w.latencies_us.push(latency.as_micros() as u64);
    }

    /// The rows for a window of `elapsed`, and a fresh window.
    pub fn take(&self, elapsed: Duration) -> Vec<Row> {
        let Ok(mut m) = self.by_dc.lock() else {
            return Vec::new();
        };
        let secs = elapsed.as_secs_f64().max(0.001);
        m.iter_mut()
            .map(|(dc, w)| {
                w.latencies_us.sort_unstable();
                let p99 = w
                    .latencies_us
                    .get(
                        (w.latencies_us.len() * 99 / 100)
                            .min(w.latencies_us.len().saturating_sub(1)),
                    )
                    .copied()
                    .unwrap_or(0);
                let row = Row {
                    dc: dc.clone(),
                    rps: w.ok as f64 / secs,
                    errors: w.errors,
                    p99_ms: p99 as f64 / 1000.0,
                    total: w.total,
                };
                w.ok = 0;
                w.errors = 0;
                w.latencies_us.clear();
                row
            })
            .collect()
    }
}

/// How a group of load workers is paced: `workers` tasks that together send `rate` requests
/// per second.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub rate: u32,
    pub workers: u32,
}

impl Pace {
    /// The tick of one worker; a late tick delays the next ones rather than bursting to catch
    /// up.
    fn tick(self) -> tokio::time::Interval {
        let every = Duration::from_secs_f64(f64::from(self.workers) / f64::from(self.rate.max(1)));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    }

    /// Starts the workers on `tasks`, each running `worker` with its own handle on `stats`.
    fn spawn<F, Fut>(self, stats: &Arc<Stats>, tasks: &mut JoinSet<()>, worker: F)
    where
        F: Fn(Arc<Stats>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        for _ in 0..self.workers {
            tasks.spawn(worker(stats.clone()));
        }
    }
}

/// A random sticky key, so that traffic follows the route's weights.
fn random_unit() -> String {
    format!("user-{}", rand::random::<u32>())
}

/// The row of an answer: the datacenter its `x-twin-dc` names, else the sidecar's own row.
fn answered_by<E>(x_twin_dc: Option<Result<&str, E>>) -> String {
    match x_twin_dc {
        Some(Ok(dc)) => dc.to_string(),
        _ => SIDECAR_ROW.to_string(),
    }
}

/// Starts the workers that send `GET /pay` requests to `outbound` at `pace`.
pub fn start(outbound: SocketAddr, pace: Pace, stats: &Arc<Stats>, tasks: &mut JoinSet<()>) {
    pace.spawn(stats, tasks, move |stats| async move {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut tick = pace.tick();
        loop {
            tick.tick().await;
            let req = Request::get(format!("http://{outbound}/pay"))
                .header("host", "payments")
                .header("x-twin-unit", random_unit())
                .body(Empty::new());
            let Ok(req) = req else { continue };
            let started = Instant::now();
            match client.request(req).await {
                Ok(resp) => {
                    let dc = answered_by(resp.headers().get("x-twin-dc").map(|v| v.to_str()));
                    let ok = resp.status().is_success();
                    let body_ok = resp.into_body().collect().await.is_ok();
                    stats.record(&dc, ok && body_ok, started.elapsed());
                }
                Err(_) => stats.record(SIDECAR_ROW, false, started.elapsed()),
            }
        }
    });
}

/// The service the gRPC workers call.
pub const GRPC_SERVICE: &str = "risk";

/// Starts the workers that make gRPC calls to [`GRPC_SERVICE`] through `outbound` at `pace`.
pub fn start_grpc(outbound: SocketAddr, pace: Pace, stats: &Arc<Stats>, tasks: &mut JoinSet<()>) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    pace.spawn(stats, tasks, move |stats| async move {
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
        else {
            return;
        };
        let Ok(origin) = format!("http://{GRPC_SERVICE}").parse() else {
            return;
        };
        // One HTTP/2 connection per worker; calls are multiplexed on it.
        let channel = endpoint
            .origin(origin)
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        let mut client = HealthClient::new(channel);
        let mut tick = pace.tick();
        loop {
            tick.tick().await;
            let mut req = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            if let Ok(v) = random_unit().parse() {
                req.metadata_mut().insert("x-twin-unit", v);
            }
            let started = Instant::now();
            match client.check(req).await {
                Ok(resp) => {
                    let dc = answered_by(resp.metadata().get("x-twin-dc").map(|v| v.to_str()));
                    stats.record(&dc, true, started.elapsed());
                }
                Err(status) => {
                    let dc = answered_by(status.metadata().get("x-twin-dc").map(|v| v.to_str()));
                    stats.record(&dc, false, started.elapsed());
                }
            }
        }
    });
}
