//! The one HTTP client of the drill runner (load generator and readiness probes): HTTP/1.1
//! over plain TCP to loopback, keep-alive, the Host header set by the caller.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How long an idle pooled connection may be reused. Servers close idle keep-alive
/// connections (the sidecar after its 10 s header-read timeout); a client that reuses one
/// just as the server closes it loses the request ("connection closed before message
/// completed"), so the pool lets connections go well before any server would.
pub const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// A client that keeps up to `idle` connections per host and leaves Host to the caller.
pub fn client(idle: usize) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(POOL_IDLE)
        .set_host(false)
        .build(conn)
}

/// GET `http://{addr}{path}`; the status and body, or the error as text.
pub async fn get(
    c: &HttpClient,
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<(u16, String), String> {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = c.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
