//! The gRPC side of the sidecar's tests: a tonic health server (the standard service from
//! `tonic-health`) that counts its calls and names itself, and a health client that speaks
//! h2c to a sidecar's outbound port with the route's service name as authority.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use twin_sidecar::Sidecar;

use super::SERVICE;

/// How a test server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `Check` answers SERVING; `Watch` streams SERVING, NOT_SERVING, SERVING.
    Serve,
    /// Every call ends at once with UNAVAILABLE (trailers-only).
    Unavailable,
    /// `Watch` answers its headers, then fails with UNAVAILABLE.
    HeadersThenFail,
}

/// A tonic health server that counts its calls and names itself in the `x-served-by`
/// response metadata.
pub struct Server {
    name: &'static str,
    mode: Mode,
    calls: Arc<AtomicUsize>,
}

impl Server {
    /// The service and its call counter.
    pub fn new(name: &'static str, mode: Mode) -> (HealthServer<Server>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let server = Server {
            name,
            mode,
            calls: calls.clone(),
        };
        (HealthServer::new(server), calls)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for Server {
    async fn check(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.mode == Mode::Unavailable {
            return Err(Status::unavailable("busy, try another"));
        }
        let mut resp = Response::new(answer(ServingStatus::Serving));
        resp.metadata_mut()
            .insert("x-served-by", self.name.parse().expect("ascii"));
        Ok(resp)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let stream: WatchStream = match self.mode {
            Mode::Unavailable => return Err(Status::unavailable("busy, try another")),
            Mode::HeadersThenFail => Box::pin(futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(Status::unavailable("went away mid-call"))
            })),
            Mode::Serve => Box::pin(futures::stream::unfold(0u32, |i| async move {
                let status = match i {
                    0 | 2 => ServingStatus::Serving,
                    1 => ServingStatus::NotServing,
                    _ => return None,
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Ok(answer(status)), i + 1))
            })),
        };
        let mut resp = Response::new(stream);
        resp.metadata_mut()
            .insert("x-served-by", self.name.parse().expect("ascii"));
        Ok(resp)
    }
}

/// A running test server (h2c on loopback): its address and call count.
pub struct Grpc {
    pub addr: SocketAddr,
    calls: Arc<AtomicUsize>,
}

impl Grpc {
    pub async fn start(name: &'static str, mode: Mode) -> Grpc {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (svc, calls) = Server::new(name, mode);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
                .await;
        });
        Grpc { addr, calls }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A health client speaking h2c to the sidecar's outbound port, calling [`SERVICE`].
pub async fn client(s: &Sidecar) -> HealthClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", s.outbound_addr))
        .expect("endpoint")
        .origin(format!("http://{SERVICE}").parse().expect("origin"))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("the sidecar accepts h2c");
    HealthClient::new(channel)
}

/// A health request, with `x-twin-unit: unit` when given.
pub fn check(unit: Option<&str>) -> Request<HealthCheckRequest> {
    let mut req = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(u) = unit {
        req.metadata_mut()
            .insert("x-twin-unit", u.parse().expect("ascii"));
    }
    req
}

/// A metadata value as text ("" when absent).
pub fn meta<'a>(m: &'a tonic::metadata::MetadataMap, name: &str) -> &'a str {
    m.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Reads a `Watch` stream of a [`Mode::Serve`] server to its end: every update arrives in
/// order, then the trailers with `grpc-status: 0` (returned).
pub async fn watch_to_the_end(
    mut stream: tonic::Streaming<HealthCheckResponse>,
) -> tonic::metadata::MetadataMap {
    let mut seen = Vec::new();
    while let Some(update) = stream.message().await.expect("stream") {
        seen.push(update.status);
    }
    assert_eq!(
        seen,
        [
            ServingStatus::Serving as i32,
            ServingStatus::NotServing as i32,
            ServingStatus::Serving as i32
        ],
        "every update arrives, then the OK status in the trailers ends the stream"
    );
    let trailers = stream
        .trailers()
        .await
        .expect("trailers")
        .expect("the stream ended with trailers");
    assert_eq!(meta(&trailers, "grpc-status"), "0");
    trailers
}
