//! One attempt on one upstream endpoint over HTTP/2, for routes with `protocol: http2` or
//! `grpc`.
//!
//! Each endpoint keeps a few multiplexed connections (`H2Pool`): a request takes the least
//! busy one, and a new connection is opened only when every open one carries
//! [`STREAMS_PER_CONNECTION`] streams (up to [`MAX_CONNECTIONS`]), or none is open. Requests
//! that need a new connection at the same moment wait for one connect instead of opening one
//! each; when that connect fails they fail with its reason (and go elsewhere: nothing was
//! sent). A connection idle longer than the route's `timeouts.idle_ms` is closed. TLS routes
//! offer only `h2` by ALPN.
//!
//! Pings follow what gRPC servers accept. gRPC-Go, gRPC-Java and gRPC core servers answer a
//! client that pings more often than every 5 minutes, or pings with no stream open, with
//! GOAWAY `ENHANCE_YOUR_CALM` ("too_many_pings") and close the connection, streams and all.
//! So a connection is pinged only while a stream is open, and only after
//! [`KEEP_ALIVE_INTERVAL`] (over 5 minutes) without a frame from the upstream: a long silent
//! stream (a watch that waits for events) is checked without being cut. An upstream that
//! vanished without a word under an idle connection is found by TCP keep-alive on every
//! upstream socket ([`crate::outbound::endpoint`]), which the server never sees.
//!
//! What may be sent again, as for HTTP/1.1: a request given back by a connection that
//! closed before it was written, and a request the upstream refused unprocessed
//! (`REFUSED_STREAM`, or the graceful GOAWAY that tells a client its stream was not taken:
//! RFC 9113 §8.7). Anything else after the request was handed over "may have been processed".

use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2;
use hyper::header::{HeaderMap, HeaderValue, HOST, TE};
use hyper::http::request::Parts;
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::outbound::body::{UpstreamBody, UpstreamResponseBody};
use crate::outbound::endpoint::EndpointState;
use crate::outbound::timeout::AttemptTimeouts;
use crate::outbound::upstream::{AttemptError, Failed};

/// Streams one connection carries before another is opened beside it.
pub const STREAMS_PER_CONNECTION: usize = 100;
/// Connections per endpoint at most; past that, streams share the least busy one.
pub const MAX_CONNECTIONS: usize = 4;
/// How long a connection with open streams may hear nothing from the upstream before it is
/// pinged: more than the 5 minutes gRPC servers require between pings by default.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(330);
/// A ping unanswered this long closes the connection (gRPC's default).
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pooled connections found closed before a request is dispatched, tried per attempt.
const MAX_STALE: usize = 4;

/// A connected stream to an upstream: TCP, or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Which protocol a TLS handshake offers by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alpn {
    Http1,
    H2,
}

/// TCP (and TLS when the endpoint asks for it) to `endpoint`, within the connect timeout,
/// which covers the TCP connect and the TLS handshake together.
pub(crate) async fn dial(
    endpoint: &EndpointState,
    limits: &AttemptTimeouts,
    alpn: Alpn,
) -> Result<Box<dyn Io>, String> {
    let tcp = endpoint.tcp_connect();
    match &endpoint.tls {
        None => {
            let s = limits
                .connect(tcp)
                .await
                .map_err(|e| format!("timed out after {:?}", e.0))??;
            Ok(Box::new(s))
        }
        Some(tls) => {
            let s = limits
                .connect(async {
                    let tcp = tcp.await?;
                    match alpn {
                        Alpn::H2 => tls.connect_h2(tcp).await,
                        Alpn::Http1 => tls.connect(tcp).await,
                    }
                })
                .await
                .map_err(|e| {
                    format!("timed out after {:?} (TCP connect and TLS handshake)", e.0)
                })??;
            Ok(Box::new(s))
        }
    }
}

/// One HTTP/2 connection of the pool.
struct Conn {
    sender: http2::SendRequest<UpstreamBody>,
    streams: AtomicUsize,
    /// When its last stream ended (or it opened).
    idle_since: Mutex<Instant>,
}

impl Conn {
    fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
    fn idle_for(&self) -> Duration {
        self.idle_since
            .lock()
            .map_or(Duration::ZERO, |t| t.elapsed())
    }
    /// Open, and not idle for `max_idle` or longer.
    fn usable(&self, max_idle: Duration) -> bool {
        let idle_too_long = self.streams() == 0 && self.idle_for() >= max_idle;
        !self.sender.is_closed() && !idle_too_long
    }
}

/// One stream on a connection, counted until the answer's body is dropped.
pub(crate) struct Stream(Arc<Conn>);

impl Stream {
    fn start(conn: &Arc<Conn>) -> Stream {
        conn.streams.fetch_add(1, Ordering::Relaxed);
        Stream(conn.clone())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Ok(mut t) = self.0.idle_since.lock() {
                *t = Instant::now();
            }
        }
    }
}

/// The HTTP/2 connections to one endpoint.
#[derive(Default)]
pub(crate) struct H2Pool {
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Held while a connection is being opened.
    connecting: tokio::sync::Mutex<()>,
    /// The last failed connect: requests that waited for it fail with its reason.
    failed: Mutex<Option<(Instant, String)>>,
}

impl H2Pool {
    /// Open connections (for `/config`).
    pub(crate) fn connections(&self) -> usize {
        self.conns.lock().map_or(0, |c| c.len())
    }

    /// Closes every connection (streams in flight finish first).
    pub(crate) fn clear(&self) {
        if let Ok(mut c) = self.conns.lock() {
            c.clear();
        }
    }

    /// The least busy open connection, unless all are full and another may be opened.
    fn pick(&self, max_idle: Duration) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().ok()?;
        conns.retain(|c| c.usable(max_idle));
        let best = conns.iter().min_by_key(|c| c.streams())?;
        if best.streams() < STREAMS_PER_CONNECTION || conns.len() >= MAX_CONNECTIONS {
            Some(best.clone())
        } else {
            None
        }
    }

    fn forget(&self, conn: &Arc<Conn>) {
        if let Ok(mut c) = self.conns.lock() {
            c.retain(|x| !Arc::ptr_eq(x, conn));
        }
    }

    /// A connection for one request, and whether it was already open.
    async fn get(
        &self,
        endpoint: &EndpointState,
        limits: &AttemptTimeouts,
    ) -> Result<(Arc<Conn>, bool), String> {
        if let Some(c) = self.pick(limits.idle) {
            return Ok((c, true));
        }
        let waiting_since = Instant::now();
        let _turn = self.connecting.lock().await;
        if let Some(c) = self.pick(limits.idle) {
            return Ok((c, true));
        }
        let recent_failure = self
            .failed
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .filter(|(at, _)| *at >= waiting_since);
        if let Some((_, why)) = recent_failure {
            return Err(why);
        }
        match connect(endpoint, limits).await {
            Ok(conn) => {
                if let Ok(mut c) = self.conns.lock() {
                    c.push(conn.clone());
                }
                Ok((conn, false))
            }
            Err(why) => {
                if let Ok(mut f) = self.failed.lock() {
                    *f = Some((Instant::now(), why.clone()));
                }
                Err(why)
            }
        }
    }
}

async fn connect(endpoint: &EndpointState, limits: &AttemptTimeouts) -> Result<Arc<Conn>, String> {
    let io = dial(endpoint, limits, Alpn::H2).await?;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        // No pings without a stream: gRPC servers close a connection pinged while idle.
        .keep_alive_while_idle(false);
    let (sender, conn) = limits
        .connect(builder.handshake(TokioIo::new(io)))
        .await
        .map_err(|e| format!("HTTP/2 handshake timed out after {:?}", e.0))?
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let addr = endpoint.addr.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(upstream = %addr, error = %e, "HTTP/2 upstream connection ended");
        }
    });
    Ok(Arc::new(Conn {
        sender,
        streams: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
    }))
}

/// Why an upstream did not process a request it was handed, when it said so: a stream reset
/// with `REFUSED_STREAM`, or the GOAWAY (`NO_ERROR`) of a graceful shutdown, which only
/// reaches streams the upstream did not take.
pub fn unprocessed(e: &hyper::Error) -> Option<&'static str> {
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(h2e) = c.downcast_ref::<::h2::Error>() {
            if !h2e.is_remote() {
                return None;
            }
            return match h2e.reason() {
                Some(::h2::Reason::REFUSED_STREAM) if h2e.is_reset() => {
                    Some("the upstream refused the stream (REFUSED_STREAM)")
                }
                Some(::h2::Reason::NO_ERROR) if h2e.is_go_away() => {
                    Some("the upstream is shutting down (GOAWAY) and did not take the stream")
                }
                _ => None,
            };
        }
        cause = c.source();
    }
    None
}

/// Whether the client asked for trailers (`te: trailers`, which gRPC clients send): the one
/// `te` HTTP/2 allows, restored by [`to_upstream`] after the hop-by-hop headers were removed.
pub fn wants_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// Turns a head [`crate::outbound::headers::to_upstream`] made for HTTP/1.1 into an HTTP/2
/// one: the authority (from the Host header) and scheme go into the URI, `te: trailers` comes
/// back when the client sent it.
pub fn to_upstream(parts: &mut Parts, te_trailers: bool, tls: bool) {
    let authority = parts
        .headers
        .remove(HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    if let Some(authority) = authority {
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        if let Ok(uri) = Uri::builder()
            .scheme(if tls { "https" } else { "http" })
            .authority(authority)
            .path_and_query(pq)
            .build()
        {
            parts.uri = uri;
        }
    }
    parts.version = Version::HTTP_2;
    if te_trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Sends `req` to `endpoint` over one of its HTTP/2 connections and waits for the response
/// head.
pub async fn send(
    endpoint: &Arc<EndpointState>,
    mut req: Request<UpstreamBody>,
    limits: &AttemptTimeouts,
) -> Result<Response<UpstreamResponseBody>, Failed> {
    let in_flight = endpoint.start_request();
    let mut stale = 0;
    loop {
        let (conn, reused) = match endpoint.h2.get(endpoint, limits).await {
            Ok(c) => c,
            Err(reason) => return Err(Failed::connect(&endpoint.addr, reason, req)),
        };
        let stream = Stream::start(&conn);
        let mut sender = conn.sender.clone();
        let started = Instant::now();
        match limits.response_head(sender.try_send_request(req)).await {
            Ok(Ok(resp)) => {
                endpoint.observe_latency(started.elapsed());
                let (parts, body) = resp.into_parts();
                let body = UpstreamResponseBody::unpooled(body, (in_flight, stream));
                return Ok(Response::from_parts(parts, body));
            }
            Ok(Err(mut e)) => match e.take_message() {
                // The connection closed before the request was dispatched.
                Some(back) if reused && stale < MAX_STALE => {
                    endpoint.h2.forget(&conn);
                    req = back;
                    stale += 1;
                }
                Some(back) => {
                    endpoint.h2.forget(&conn);
                    let reason = format!(
                        "the HTTP/2 connection ended before the request was sent: {}",
                        e.into_error()
                    );
                    return Err(Failed::connect(&endpoint.addr, reason, back));
                }
                None => {
                    let e = e.into_error();
                    if conn.sender.is_closed() {
                        endpoint.h2.forget(&conn);
                    }
                    return Err(match unprocessed(&e) {
                        Some(reason) => Failed {
                            error: AttemptError::Refused {
                                addr: endpoint.addr.clone(),
                                reason: reason.to_string(),
                            },
                            request: None,
                        },
                        None => Failed::dropped(&endpoint.addr, e, None),
                    });
                }
            },
            Err(elapsed) => return Err(Failed::timeout(&endpoint.addr, elapsed.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_head_carries_authority_scheme_and_te_trailers() {
        let r = Request::builder()
            .uri("http://payments/grpc.health.v1.Health/Check")
            .version(Version::HTTP_2)
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(())
            .expect("request");
        let (mut parts, ()) = r.into_parts();
        let te = wants_trailers(&parts.headers);
        crate::outbound::headers::to_upstream(&mut parts);
        assert!(!parts.headers.contains_key(TE), "hop-by-hop for HTTP/1.1");
        to_upstream(&mut parts, te, false);
        assert_eq!(
            parts.uri.to_string(),
            "http://payments/grpc.health.v1.Health/Check"
        );
        assert_eq!(parts.version, Version::HTTP_2);
        assert_eq!(parts.headers[TE], "trailers");
        assert!(!parts.headers.contains_key(HOST));

        let r = Request::builder()
            .uri("/x?y=1")
            .header(HOST, "ledger:8080")
            .body(())
            .expect("request");
        let (mut parts, ()) = r.into_parts();
        crate::outbound::headers::to_upstream(&mut parts);
        to_upstream(&mut parts, false, true);
        assert_eq!(parts.uri.to_string(), "https://ledger:8080/x?y=1");
        assert!(!parts.headers.contains_key(TE));
    }
}
