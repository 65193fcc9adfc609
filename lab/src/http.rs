//! The lab's HTTP clients: a pooled HTTP/1.1 client for tests and tools on loopback, and
//! small helpers that send a request and read the whole answer. The servers are in
//! [`crate::upstream`] (re-exported here for the tests that import them from this module).

pub use crate::upstream::{Behavior, Upstream};

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A pooled HTTP/1.1 client for tests.
pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// A new pooled client.
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Sends `req` and reads the whole answer.
pub async fn send(client: &Client, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `GET http://{addr}{path}` with `Host: host` and extra headers.
pub async fn get(
    client: &Client,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut b = Request::get(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        client,
        b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?,
    )
    .await
}

/// A pooled client for load on loopback: up to `idle` kept-alive connections per host, the
/// Host header left to the caller, and idle connections let go after [`POOL_IDLE`].
pub fn pooled_client(idle: usize) -> Client {
    let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(POOL_IDLE)
        .set_host(false)
        .build(conn)
}

/// How long an idle pooled connection may be reused. Servers close idle keep-alive
/// connections; a client that reuses one just as the server closes it loses the request
/// ("connection closed before message completed"), so the pool lets connections go well
/// before any server would.
pub const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// GET `http://{addr}{path}` with `Host: {addr}`: the status and the body as text, or the
/// error as text.
pub async fn get_text(c: &Client, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let reply = get(c, addr, &addr.to_string(), path, &[]).await?;
    Ok((reply.status.as_u16(), reply.text()))
}

/// One HTTP/1.1 connection over `io` (a TCP or TLS stream), its driver spawned: every request
/// sent on it rides that one connection, for tests of what a connection keeps.
pub async fn http1_over<I, B>(io: I) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// [`http1_over`] a new TCP connection to `addr`.
pub async fn http1_connection<B>(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    http1_over(tcp).await
}
