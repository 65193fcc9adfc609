//! Twin's own HTTP/1 engine for the outbound listener (`--http1-engine twin`).
//!
//! One task owns a client connection and, while it serves one of its requests, the upstream
//! connection that request uses: no channel between tasks per request, no per-request
//! allocation once the connection's buffers have grown to fit. Heads are parsed in place with
//! `httparse` and forwarded with their header bytes as they came ([`parse`]); bodies pass
//! through as they arrive, chunked ones checked on the way ([`framing`]); idle upstream
//! connections wait in their endpoint's pool ([`pool`]). The routing decisions are the ones
//! hyper's engine makes ([`crate::outbound::plan`]); [`forward`] does the I/O between them.
//! Each request is observed as hyper's path observes it ([`crate::outbound::observe`]): its
//! request id and `traceparent` are written into the upstream head once and the parent id
//! patched in place for each attempt, `x-twin-force-dc` is decided (and never forwarded), and
//! the access log line is written once the answer has been sent. A 101 tunnel's line is
//! written when the tunnel ends (hyper's path has no tunnels).
//!
//! A connection is served request after request until the client or the response says
//! close, the idle or header timeout passes (the same limits as [`crate::conn_guard`]), or the
//! sidecar stops: then an idle connection closes at once and a busy one after its response.

pub mod buf;
pub mod duplex;
pub mod forward;
pub mod framing;
pub mod parse;
pub mod pool;
pub mod relay;
pub mod rewind;

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::config::Limits;
use crate::outbound::error::ProxyError;
use crate::outbound::h1::framing::{Body, Buf, Framing};
use crate::outbound::trace::{new_request_id, RequestId, X_REQUEST_ID};
use crate::outbound::{InFlight, Outbound};
use crate::shutdown::Shutdown;

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The engine: what every connection it serves shares.
pub struct Engine {
    outbound: Arc<Outbound>,
    max_head: usize,
    idle: Duration,
    header: Duration,
    shutdown: Shutdown,
}

/// What the first bytes of a connection said.
pub enum Sniffed {
    /// The HTTP/2 preface: for hyper, with the bytes already read.
    H2(rewind::Rewind<TcpStream>),
    /// HTTP/1: for this engine, with the bytes already read in its buffer.
    H1(TcpStream, Buf),
    /// Closed, timed out or stopped before it said anything.
    Gone,
}

impl Engine {
    pub fn new(outbound: Arc<Outbound>, limits: &Limits, shutdown: Shutdown) -> Engine {
        Engine {
            outbound,
            max_head: limits.max_header_bytes.max(1024),
            idle: Duration::from_millis(limits.idle_timeout_ms),
            header: Duration::from_millis(limits.header_read_timeout_ms),
            shutdown,
        }
    }

    /// Reads the first bytes of a new connection: the HTTP/2 preface, or anything else
    /// (HTTP/1). Waits up to the idle timeout for the first byte.
    pub async fn sniff(&self, mut io: TcpStream) -> Sniffed {
        let mut buf = Buf::new();
        let deadline = Instant::now() + self.idle;
        loop {
            let got = buf.filled();
            let n = got.len().min(H2_PREFACE.len());
            if got[..n] != H2_PREFACE[..n] {
                return Sniffed::H1(io, buf);
            }
            if n == H2_PREFACE.len() {
                let prefix = buf.take_filled();
                return Sniffed::H2(rewind::Rewind::new(io, prefix));
            }
            let read = tokio::select! {
                biased;
                () = self.shutdown.stopped(), if buf.is_empty() => return Sniffed::Gone,
                r = tokio::time::timeout_at(deadline, buf.fill(&mut io, usize::MAX)) => r,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Sniffed::Gone,
            }
        }
    }

    /// Serves an HTTP/1 connection whose first bytes are in `buf` until it closes, or until
    /// a request for an HTTP/2 or gRPC route: then the connection and the bytes not yet used
    /// (that request's head first) are returned for hyper's path.
    pub async fn serve(
        &self,
        io: TcpStream,
        buf: Buf,
        _peer: SocketAddr,
    ) -> Option<(TcpStream, Vec<u8>)> {
        let mut client = Client {
            io,
            buf,
            up_head: Vec::with_capacity(512),
            out: Vec::with_capacity(512),
            ubuf: Buf::new(),
            host: String::new(),
            bucket: twin_topology::bucket_of(&rand::random::<u64>().to_le_bytes()),
            parent_at: 0,
            sent: Sent::default(),
            wait_timer: Box::pin(tokio::time::sleep(self.idle)),
            head_timer: Box::pin(tokio::time::sleep(self.idle)),
        };
        loop {
            let head = match self.next_head(&mut client).await {
                Ok(true) => Ok(()),
                Ok(false) => return None,
                Err(e) => Err(e),
            };
            let in_flight = head
                .is_ok()
                .then(|| InFlight::start(&self.outbound.in_flight));
            // The routed request is served by reference and its error answered only after
            // the match: the task then keeps one slot for it, not one per use.
            let mut step = head.and_then(|()| self.route(&mut client));
            let ended = match &mut step {
                Ok(Some(routed)) => Some(self.request(&mut client, routed).await),
                _ => None,
            };
            match (step, ended) {
                (Ok(Some(routed)), Some(ended)) => {
                    Engine::close(routed.obs, client.sent, &ended);
                    drop(in_flight);
                    if ended.0 != Next::KeepAlive || self.shutdown.is_stopping() {
                        return None;
                    }
                }
                // An HTTP/2 or gRPC route: hyper's path speaks HTTP/2 to its upstreams, and
                // serves the connection from this request (still in the buffer) on.
                (Ok(None), _) => {
                    let rest = client.buf.take_filled();
                    return Some((client.io, rest));
                }
                (Err(e), _) => {
                    crate::outbound::metrics::error("", e.label());
                    let id = new_request_id();
                    let _ = client.write_error(e, true, false, false, &id).await;
                    return None;
                }
                (Ok(Some(_)), None) => return None,
            }
        }
    }

    /// Waits for the next request head: up to the idle timeout for its first byte (closing at
    /// once if the sidecar stops meanwhile), then up to the header timeout for the rest.
    /// Ok(false): the connection is over.
    async fn next_head(&self, c: &mut Client) -> Result<bool, ProxyError> {
        let mut started = !c.buf.is_empty();
        let mut deadline = Instant::now() + if started { self.header } else { self.idle };
        // The header deadline is read from the clock only when a head did not come whole.
        let mut header_from_now = false;
        loop {
            if started && head_complete(c.buf.filled()) {
                return Ok(true);
            }
            if c.buf.filled().len() >= self.max_head {
                return Err(ProxyError::HeadTooLarge(self.max_head));
            }
            if header_from_now {
                header_from_now = false;
                deadline = Instant::now() + self.header;
            }
            c.wait_timer.as_mut().reset(deadline);
            let read = tokio::select! {
                biased;
                () = self.shutdown.stopped(), if !started => return Ok(false),
                r = c.buf.fill(&mut c.io, self.max_head) => r,
                // Closed after the idle or the header timeout: nothing to answer.
                () = c.wait_timer.as_mut() => return Ok(false),
            };
            match read {
                Ok(n) if n > 0 => {
                    if !started {
                        started = true;
                        header_from_now = true;
                    }
                }
                // Closed or reset: nothing to answer.
                _ => return Ok(false),
            }
        }
    }
}

/// True when `buf` holds a whole head (or enough to refuse it). The blank line that ends a
/// head is looked for first, so a complete head is parsed once, by the request.
fn head_complete(buf: &[u8]) -> bool {
    if ends_head(buf) {
        return true;
    }
    let mut headers = [httparse::EMPTY_HEADER; parse::MAX_HEADERS];
    !matches!(
        httparse::Request::new(&mut headers).parse(buf),
        Ok(httparse::Status::Partial)
    )
}

/// True when `buf` holds a blank line (`\n\n` or `\n\r\n`): one pass over the bytes, from
/// one line feed to the next.
fn ends_head(buf: &[u8]) -> bool {
    // Most often a request arrives whole in one read, and nothing after it.
    if buf.ends_with(b"\r\n\r\n") {
        return true;
    }
    let mut rest = buf;
    while let Some(lf) = rest.iter().position(|&b| b == b'\n') {
        rest = &rest[lf + 1..];
        if rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n") {
            return true;
        }
    }
    false
}

/// Whether a client connection goes on after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    Close,
}

/// One client connection and the buffers it reuses for every request.
pub struct Client {
    io: TcpStream,
    /// Bytes from the client not yet used.
    buf: Buf,
    /// The request head for the upstream, and after it a small body kept so the request can
    /// be sent again.
    up_head: Vec<u8>,
    /// The response head for the client.
    out: Vec<u8>,
    /// Bytes from the upstream not yet used.
    ubuf: Buf,
    /// The service name, when it had to be lowered.
    host: String,
    /// The sticky bucket of requests without a sticky header.
    bucket: u32,
    /// Where the `traceparent` parent id is in `up_head`, stamped for each attempt.
    parent_at: usize,
    /// What the client received for the current request (for its access log line).
    sent: Sent,
    /// The idle and header timeouts, and the response-head timeout of each attempt: timers
    /// kept for the connection, since moving a deadline later costs no new registration.
    wait_timer: Pin<Box<Sleep>>,
    head_timer: Pin<Box<Sleep>>,
}

/// The answer a client received: its status and how many body bytes were sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub status: u16,
    pub bytes: u64,
    /// The upstream's body broke after the head went out: the client saw the connection end
    /// early.
    pub cut_short: bool,
}

/// Runs `fut` unless `timer` reaches `deadline` first (then None).
pub(super) async fn within<F: Future>(
    mut timer: Pin<&mut Sleep>,
    deadline: Instant,
    fut: F,
) -> Option<F::Output> {
    timer.as_mut().reset(deadline);
    tokio::select! {
        biased;
        out = fut => Some(out),
        () = timer => None,
    }
}

impl Client {
    /// Answers with the sidecar's own error response (as hyper's engine does) carrying the
    /// request's id, closing the connection after it when `close`.
    async fn write_error(
        &mut self,
        e: ProxyError,
        close: bool,
        head: bool,
        http10: bool,
        request_id: &RequestId,
    ) -> io::Result<()> {
        let resp = e.into_response();
        let body = match resp.body() {
            crate::outbound::body::ProxyBody::Whole(Some(b)) => b.clone(),
            _ => bytes::Bytes::new(),
        };
        self.out.clear();
        let status = resp.status();
        let _ = io::Write::write_fmt(
            &mut self.out,
            format_args!(
                "HTTP/1.{} {} {}\r\n",
                if http10 { 0 } else { 1 },
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
        );
        for (name, value) in resp.headers() {
            self.out.extend_from_slice(name.as_str().as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        let _ = io::Write::write_fmt(
            &mut self.out,
            format_args!("content-length: {}\r\n", body.len()),
        );
        self.out.extend_from_slice(X_REQUEST_ID.as_str().as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(request_id.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        if close {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        let body: &[u8] = if head { &[] } else { &body };
        self.sent = Sent {
            status: status.as_u16(),
            bytes: body.len() as u64,
            cut_short: false,
        };
        write_all_vectored(
            &mut self.io,
            &mut [IoSlice::new(&self.out), IoSlice::new(body)],
        )
        .await
    }

    /// Reads and drops the rest of a request body the sidecar refused, when it is small
    /// enough; false when the connection must close instead.
    async fn discard_body(&mut self, framing: Framing, max: usize) -> bool {
        match framing {
            Framing::Empty => true,
            Framing::Length(n) if n <= max as u64 => {
                let mut body = Body::new(framing);
                framing::pump(
                    &mut self.io,
                    &mut self.buf,
                    &mut tokio::io::sink(),
                    &mut body,
                    false,
                )
                .await
                .is_ok()
            }
            _ => false,
        }
    }
}

/// Writes every byte of `bufs`, in as few writes as the socket allows.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ends_head;

    #[test]
    fn a_blank_line_ends_a_head() {
        assert!(ends_head(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"));
        assert!(ends_head(b"GET / HTTP/1.1\nhost: a\n\n"));
        assert!(ends_head(b"GET / HTTP/1.1\r\n\r\nbody"));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nhost: a\r\n"));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nhost: a\r\n\r"));
        assert!(!ends_head(b""));
        assert!(!ends_head(b"\r\n"));
        assert!(ends_head(b"\n\n"));
    }
}
