//! The HTTP/2 probes of [`crate::probe::Prober`], for routes whose upstreams speak HTTP/2:
//! one fresh connection per probe (h2c with prior knowledge, or TLS offering only `h2` by
//! ALPN for a route with `tls:`), then
//!
//! - `protocol: http2`: `GET {--probe-path}`; up on 2xx or 3xx, as the HTTP/1.1 probe;
//! - `protocol: grpc`: the standard gRPC health checking protocol,
//!   `grpc.health.v1.Health/Check` for the service [`GRPC_HEALTH_SERVICE`] (the empty name:
//!   the server as a whole). Up only on `SERVING`; `NOT_SERVING`, `UNKNOWN`,
//!   `SERVICE_UNKNOWN` and every gRPC error (a server without the health service answers
//!   `UNIMPLEMENTED`) are down, with the reason.
//!
//! An h2c-only server (a tonic or grpc-go server) does not answer HTTP/1.1 at all, so the
//! HTTP/1.1 probe would call every one of them down.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Body;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use twin_topology::upstream_tls::TlsTarget;

/// The service name a gRPC probe asks about: empty, which the protocol defines as the
/// server's overall health (tonic-health and grpc-go register it as `SERVING` by default).
pub const GRPC_HEALTH_SERVICE: &str = "";

/// What a probe connection runs over.
pub enum Transport<'a> {
    /// h2c with prior knowledge.
    Plain,
    /// TLS offering only `h2` by ALPN, as the sidecars connect to such a route.
    Tls(&'a TlsTarget),
}

/// Opens one HTTP/2 connection to `addr` (its driver runs until the sender is dropped).
async fn connect<B>(addr: &str, transport: &Transport<'_>) -> Result<SendRequest<B>, String>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            "connection refused".to_string()
        } else {
            format!("connect: {e}")
        }
    })?;
    let _ = tcp.set_nodelay(true);
    match transport {
        Transport::Plain => handshake(tcp).await,
        Transport::Tls(target) => handshake(target.connect_h2(tcp).await?).await,
    }
}

async fn handshake<IO, B>(io: IO) -> Result<SendRequest<B>, String>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// The scheme of the URIs sent over `transport`.
fn scheme(transport: &Transport<'_>) -> &'static str {
    match transport {
        Transport::Plain => "http",
        Transport::Tls(_) => "https",
    }
}

/// `GET {path}` over HTTP/2: `Ok(())` on 2xx or 3xx.
pub async fn get(addr: &str, path: &str, transport: &Transport<'_>) -> Result<(), String> {
    let mut send = connect::<Empty<Bytes>>(addr, transport).await?;
    let req = http::Request::get(format!("{}://{addr}{path}", scheme(transport)))
        .body(Empty::new())
        .map_err(|e| format!("bad request: {e}"))?;
    match send.send_request(req).await {
        Ok(resp) if resp.status().as_u16() < 400 => Ok(()),
        Ok(resp) => Err(format!("HTTP {}", resp.status().as_u16())),
        Err(e) => Err(format!("HTTP/2 request failed: {e}")),
    }
}

/// `grpc.health.v1.Health/Check` for [`GRPC_HEALTH_SERVICE`]: `Ok(())` only on `SERVING`.
pub async fn grpc_check(addr: &str, transport: &Transport<'_>) -> Result<(), String> {
    let origin: http::Uri = format!("{}://{addr}", scheme(transport))
        .parse()
        .map_err(|e| format!("bad address: {e}"))?;
    let send = connect::<tonic::body::Body>(addr, transport).await?;
    let service = tower::service_fn(move |req| {
        let mut send = send.clone();
        async move { send.send_request(req).await }
    });
    let mut client = HealthClient::with_origin(service, origin);
    let req = HealthCheckRequest {
        service: GRPC_HEALTH_SERVICE.to_string(),
    };
    match client.check(req).await {
        Ok(resp) => match ServingStatus::try_from(resp.into_inner().status) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(other) => Err(format!("gRPC health: {}", other.as_str_name())),
            Err(_) => Err("gRPC health: a status the protocol does not define".to_string()),
        },
        Err(s) if s.code() == tonic::Code::Unimplemented => Err(
            "gRPC health: UNIMPLEMENTED (the server has no grpc.health.v1.Health service; register one, or set the route's protocol to http2)"
                .to_string(),
        ),
        Err(s) => Err(format!("gRPC health: {:?}: {}", s.code(), s.message())),
    }
}
