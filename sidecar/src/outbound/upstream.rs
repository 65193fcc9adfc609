//! One attempt on one upstream endpoint over a pooled HTTP/1.1 connection.
//!
//! The pool is a stack of idle connections per endpoint. An attempt first gets a connection
//! (idle, or a new one within the connect timeout) and only then hands the request over, so
//! a connect failure returns the request untouched: it never reached an upstream and may go
//! to another endpoint whatever its method. A pooled connection that turns out to be closed
//! before the request was written also gives the request back, and the next connection is
//! tried. Anything after that "may have reached the upstream".

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::outbound::body::{UpstreamBody, UpstreamResponseBody};
use crate::outbound::endpoint::EndpointState;
use crate::outbound::h2::{dial, Alpn};
use crate::outbound::timeout::AttemptTimeouts;

/// The client half of one upstream connection, with why the connection ended once it has.
pub(crate) struct Sender {
    inner: http1::SendRequest<UpstreamBody>,
    /// Set by the connection task when the connection ends, so a request handed back as
    /// "canceled" can say what really happened (a TLS alert, a reset).
    ended: watch::Receiver<Option<String>>,
}

impl Sender {
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        self.inner.ready().await
    }
    /// Why the connection ended, waiting up to `within` for its task to say.
    async fn ended(&mut self, within: Duration) -> Option<String> {
        let said = tokio::time::timeout(within, self.ended.wait_for(Option::is_some)).await;
        match said {
            Ok(Ok(why)) => why.clone(),
            _ => None,
        }
    }
}

/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 512;
/// How long a failed fresh connection's task gets to say why it ended.
const WHY_ENDED_WITHIN: Duration = Duration::from_millis(500);
/// Pooled connections tried before opening a new one.
const MAX_STALE: usize = 8;

/// Idle connections to one endpoint, most recently used at the back.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<VecDeque<(Sender, Instant)>>,
}

impl Pool {
    /// The most recently used idle connection that is still open and has been idle for less
    /// than `max_idle` (the route's `timeouts.idle_ms`). Older ones are closed.
    fn take(&self, max_idle: Duration) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        while idle
            .front()
            .is_some_and(|(_, since)| since.elapsed() >= max_idle)
        {
            idle.pop_front();
        }
        while let Some((s, _)) = idle.pop_back() {
            if !s.is_closed() && s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, sender: Sender) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push_back((sender, Instant::now()));
            }
        }
    }

    /// Closes every idle connection (the endpoint was ejected).
    pub(crate) fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Number of idle connections (for `/config`).
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

/// Returns a connection whose response was read to the end to its endpoint's pool.
pub(crate) fn release(endpoint: Arc<EndpointState>, mut sender: Sender) {
    if sender.is_closed() {
        return;
    }
    if sender.is_ready() {
        endpoint.pool.put(sender);
        return;
    }
    // The connection task has not yet seen the end of the response; wait for it off the
    // request path.
    tokio::spawn(async move {
        if sender.ready().await.is_ok() {
            endpoint.pool.put(sender);
        }
    });
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// No connection: nothing was sent.
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The connection broke after the request was handed to it.
    #[error("upstream {addr} dropped the connection: {}{}", error_chain(&**.source), hint.map_or(String::new(), |h| format!(" ({h})")))]
    Dropped {
        addr: String,
        source: Box<dyn std::error::Error + Send + Sync>,
        /// What most likely happened, when the connection was a fresh TLS one.
        hint: Option<&'static str>,
    },
    /// No response head in time.
    #[error("upstream {addr} did not answer within {limit:?}")]
    Timeout { addr: String, limit: Duration },
    /// Protocols hook ([`crate::outbound::h2`]): the upstream declined the request before
    /// processing it (HTTP/2 `REFUSED_STREAM`, or a graceful GOAWAY that did not cover the
    /// stream). It did no work, but the request body was handed over.
    #[error("upstream {addr} refused the request unprocessed: {reason}")]
    Refused { addr: String, reason: String },
}

/// An error and its causes on one line: hyper says "connection error", its source says why
/// (for example the TLS alert an upstream sent).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

impl AttemptError {
    /// True when the request certainly did not reach the upstream, or reached it and was
    /// refused unprocessed (HTTP/2): no upstream did any work.
    pub fn not_sent(&self) -> bool {
        matches!(
            self,
            AttemptError::Connect { .. } | AttemptError::Refused { .. }
        )
    }
}

/// A failed attempt, with the request back when it was never sent.
pub struct Failed {
    pub error: AttemptError,
    pub request: Option<Request<UpstreamBody>>,
}

impl Failed {
    /// No connection to `addr` ([`AttemptError::Connect`]): `request` was not sent and comes
    /// back for another attempt.
    pub fn connect(addr: &str, reason: String, request: Request<UpstreamBody>) -> Failed {
        Failed {
            error: AttemptError::Connect {
                addr: addr.to_string(),
                reason,
            },
            request: Some(request),
        }
    }

    /// The connection to `addr` broke after the request was handed to it
    /// ([`AttemptError::Dropped`]).
    pub fn dropped(
        addr: &str,
        source: impl std::error::Error + Send + Sync + 'static,
        hint: Option<&'static str>,
    ) -> Failed {
        Failed {
            error: AttemptError::Dropped {
                addr: addr.to_string(),
                source: Box::new(source),
                hint,
            },
            request: None,
        }
    }

    /// No response head from `addr` within `limit` ([`AttemptError::Timeout`]).
    pub fn timeout(addr: &str, limit: Duration) -> Failed {
        Failed {
            error: AttemptError::Timeout {
                addr: addr.to_string(),
                limit,
            },
            request: None,
        }
    }
}

/// A new HTTP/1.1 connection to `endpoint`: [`dial`] (the connect timeout covers the TCP
/// connect and the TLS handshake together), then the HTTP/1.1 handshake.
async fn connect(endpoint: &EndpointState, limits: &AttemptTimeouts) -> Result<Sender, String> {
    let io = dial(endpoint, limits, Alpn::Http1).await?;
    http1_over(io).await
}

/// HTTP/1.1 over a connected (and, for TLS routes, handshaken) stream.
async fn http1_over<T>(io: T) -> Result<Sender, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (inner, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let (why, ended) = watch::channel(None);
    tokio::spawn(async move {
        let reason = match conn.await {
            Ok(()) => "the upstream closed the connection".to_string(),
            Err(e) => {
                tracing::debug!(error = %e, "upstream connection ended");
                error_chain(&e)
            }
        };
        let _ = why.send(Some(reason));
    });
    Ok(Sender { inner, ended })
}

/// Sends `req` to `endpoint` and waits for the response head.
pub async fn send(
    endpoint: &Arc<EndpointState>,
    mut req: Request<UpstreamBody>,
    limits: &AttemptTimeouts,
) -> Result<Response<UpstreamResponseBody>, Failed> {
    let in_flight = endpoint.start_request();
    let mut stale = 0;
    loop {
        let pooled = if stale < MAX_STALE {
            endpoint.pool.take(limits.idle)
        } else {
            None
        };
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(s) => s,
            None => match connect(endpoint, limits).await {
                Ok(s) => s,
                Err(reason) => return Err(Failed::connect(&endpoint.addr, reason, req)),
            },
        };
        let started = Instant::now();
        match limits
            .response_head(sender.inner.try_send_request(req))
            .await
        {
            Ok(Ok(resp)) => {
                endpoint.observe_latency(started.elapsed());
                let (parts, body) = resp.into_parts();
                let body = UpstreamResponseBody::new(body, sender, endpoint.clone(), in_flight);
                return Ok(Response::from_parts(parts, body));
            }
            Ok(Err(mut e)) => match e.take_message() {
                // Closed before our request was written: it did not reach the upstream.
                Some(back) if reused => {
                    req = back;
                    stale += 1;
                }
                Some(back) => {
                    // A fresh connection that ended at once: its task knows why.
                    let canceled = e.into_error().to_string();
                    let mut reason = match sender.ended(WHY_ENDED_WITHIN).await {
                        Some(why) => {
                            format!("the connection ended before the request was sent: {why}")
                        }
                        None => canceled,
                    };
                    if let Some(tls) = &endpoint.tls {
                        reason = format!("{reason} ({})", tls.closed_after_handshake_hint());
                    }
                    return Err(Failed::connect(&endpoint.addr, reason, back));
                }
                None => {
                    let hint = match (&endpoint.tls, reused) {
                        (Some(tls), false) => Some(tls.closed_after_handshake_hint()),
                        _ => None,
                    };
                    return Err(Failed::dropped(&endpoint.addr, e.into_error(), hint));
                }
            },
            Err(elapsed) => return Err(Failed::timeout(&endpoint.addr, elapsed.0)),
        }
    }
}
