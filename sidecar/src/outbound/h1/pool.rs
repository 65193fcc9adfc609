//! Upstream connections of Twin's HTTP/1 engine: plain or TLS streams, opened within the
//! route's connect timeout, and kept idle per endpoint between exchanges.
//!
//! A connection is owned by one client connection's task for a whole exchange (request and
//! response), then put back idle only after a complete response with nothing left over. Before
//! an idle connection is used again it is checked for an end or stray bytes the upstream sent
//! while it sat idle, so a request is never written into a connection known to be closed.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::outbound::endpoint::EndpointState;
use crate::outbound::timeout::AttemptTimeouts;

/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 512;

/// A plain or a TLS stream (or one half of it): reads and writes go to whichever it is.
pub enum PlainOrTls<P, T> {
    Plain(P),
    Tls(T),
}

/// One upstream connection.
pub type Upstream = PlainOrTls<TcpStream, Box<TlsStream<TcpStream>>>;

/// The read half of an [`Upstream`].
pub type UpRead<'a> =
    PlainOrTls<tokio::net::tcp::ReadHalf<'a>, tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>>;

/// The write half of an [`Upstream`].
pub type UpWrite<'a> =
    PlainOrTls<tokio::net::tcp::WriteHalf<'a>, tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>>;

impl Upstream {
    /// True when the upstream has neither closed the connection nor sent anything while it
    /// was idle: an answer nobody asked for means the connection cannot be trusted.
    fn is_quiet(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            PlainOrTls::Plain(s) => {
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            PlainOrTls::Tls(s) => {
                // One poll with a waker that does nothing: Pending means nothing to read.
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(s.as_mut())
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

impl Upstream {
    /// Read and write halves, for a body that streams both ways at once (borrowed: no
    /// allocation for a plain connection).
    pub fn halves(&mut self) -> (UpRead<'_>, UpWrite<'_>) {
        match self {
            PlainOrTls::Plain(s) => {
                let (r, w) = s.split();
                (PlainOrTls::Plain(r), PlainOrTls::Plain(w))
            }
            PlainOrTls::Tls(s) => {
                let (r, w) = tokio::io::split(s.as_mut());
                (PlainOrTls::Tls(r), PlainOrTls::Tls(w))
            }
        }
    }
}

impl<P: AsyncRead + Unpin, T: AsyncRead + Unpin> AsyncRead for PlainOrTls<P, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainOrTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PlainOrTls::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<P: AsyncWrite + Unpin, T: AsyncWrite + Unpin> AsyncWrite for PlainOrTls<P, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlainOrTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PlainOrTls::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlainOrTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PlainOrTls::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PlainOrTls::Plain(s) => s.is_write_vectored(),
            PlainOrTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainOrTls::Plain(s) => Pin::new(s).poll_flush(cx),
            PlainOrTls::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainOrTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PlainOrTls::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Idle connections to one endpoint, most recently used at the back.
#[derive(Default)]
pub struct IdlePool {
    idle: Mutex<Vec<(Upstream, Instant)>>,
}

impl IdlePool {
    /// The most recently used idle connection that is still quiet and has been idle for less
    /// than `max_idle` (the route's `timeouts.idle_ms`) at `now`. Others are closed.
    pub fn take(&self, now: Instant, max_idle: Duration) -> Option<Upstream> {
        loop {
            let (mut conn, since) = self.idle.lock().ok()?.pop()?;
            if now.saturating_duration_since(since) < max_idle && conn.is_quiet() {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection whose exchange ended cleanly, idle since `since` (a time the caller
    /// read already; an earlier one only makes the connection look idle for longer).
    pub fn put(&self, conn: Upstream, since: Instant) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push((conn, since));
            }
        }
    }

    /// Closes every idle connection (the endpoint was ejected).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Number of idle connections.
    pub fn len(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Opens a connection to `endpoint` (TCP, then TLS when the route asks for it) within the
/// connect timeout. The error is one line for `x-twin-error`.
pub async fn connect(
    endpoint: &EndpointState,
    limits: &AttemptTimeouts,
) -> Result<Upstream, String> {
    let tcp = endpoint.tcp_connect();
    match &endpoint.tls {
        None => limits
            .connect(tcp)
            .await
            .map_err(|e| format!("timed out after {:?}", e.0))?
            .map(Upstream::Plain),
        Some(tls) => limits
            .connect(async { tls.connect(tcp.await?).await })
            .await
            .map_err(|e| format!("timed out after {:?} (TCP connect and TLS handshake)", e.0))?
            .map(|s| PlainOrTls::Tls(Box::new(s))),
    }
}
