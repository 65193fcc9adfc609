//! Connection timeouts kept apart the way Envoy, HAProxy and Go keep them: an **idle
//! timeout** between requests of a keep-alive connection, and a **header timeout** from the
//! first byte of a request head to its end.
//!
//! hyper has one timer for both (its `header_read_timeout` also runs while a keep-alive
//! connection sits idle), so with a short header timeout every idle pooled connection was
//! closed after a few seconds, and a client request sent at that moment raced the close. Here
//! hyper's timer is off; [`Guarded`] wraps the socket and [`Tracked`] wraps the service, and
//! together they know which phase a connection is in:
//!
//! - **busy**: a request is in flight (from the service call until its response body is
//!   dropped). No timer: route timeouts govern it.
//! - **idle**: nothing in flight and no byte of a next request. Closed after `idle`.
//! - **head**: the first byte of a next request arrived. Closed if the service has not been
//!   called within `header`.
//!
//! HTTP/2 connections (recognised by the client preface) are left to HTTP/2's own flow: an
//! idle h2 client is normal and may send pings at any time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::read_filter::{Filtered, ReadFilter};

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Requests in flight on one connection, shared by its socket and its service, and the
/// connection task to wake when the last one ends (so the idle timer starts even when hyper
/// is not reading at that moment).
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    /// Requests started on this connection, ever.
    started: AtomicUsize,
    idle_waker: Mutex<Option<Waker>>,
}

/// Counts one request as in flight until dropped.
struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    fn new(shared: &Arc<InFlight>) -> Self {
        shared.started.fetch_add(1, Ordering::AcqRel);
        shared.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(shared.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waker = self.0.idle_waker.lock().ok().and_then(|mut w| w.take());
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// Protocols hook: found in each request's extensions. A request whose connection becomes a
/// tunnel (an HTTP/1.1 upgrade, [`crate::outbound::tunnel`]) holds the connection busy with
/// it while the tunnel lasts, so neither the idle nor the header timer cuts the tunnel.
#[derive(Clone, Debug)]
pub struct ConnBusy(Arc<InFlight>);

/// Keeps a connection busy until dropped.
pub struct BusyGuard(#[allow(dead_code)] InFlightGuard);

impl ConnBusy {
    pub fn hold(&self) -> BusyGuard {
        BusyGuard(InFlightGuard::new(&self.0))
    }
}

/// Creates the socket wrapper and the service wrapper of one connection.
pub fn guard<T, S>(
    io: T,
    service: S,
    idle: Duration,
    header: Duration,
) -> (Guarded<T>, Tracked<S>) {
    let shared = Arc::new(InFlight::default());
    let io = Guarded {
        filter: Deadlines {
            shared: shared.clone(),
            idle,
            header,
            phase: Phase::Idle,
            seen_started: 0,
            sniff: Some(Vec::new()),
            timer: Box::pin(tokio::time::sleep(idle)),
        },
        io,
    };
    (
        io,
        Tracked {
            inner: service,
            shared,
        },
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Busy,
    H2,
}

/// A socket that ends the read side with `TimedOut` when an idle or header deadline passes.
pub type Guarded<T> = Filtered<Deadlines, T>;

/// The phase of a [`Guarded`] socket's connection and the timer of its deadline.
pub struct Deadlines {
    shared: Arc<InFlight>,
    idle: Duration,
    header: Duration,
    phase: Phase,
    /// `InFlight::started` when this socket last looked.
    seen_started: usize,
    /// The first bytes of the connection, until it is known whether they are the h2 preface.
    sniff: Option<Vec<u8>>,
    timer: Pin<Box<Sleep>>,
}

impl Deadlines {
    fn enter(&mut self, phase: Phase, after: Duration) {
        self.phase = phase;
        self.timer.as_mut().reset(Instant::now() + after);
    }

    /// Moves between idle and busy from the in-flight count; called before each read. A
    /// request that started and finished between two reads (hyper need not read while it
    /// answers) still ends the head phase: the idle timer starts again.
    fn update_phase(&mut self) {
        let busy = self.shared.count.load(Ordering::Acquire) > 0;
        let started = self.shared.started.load(Ordering::Acquire);
        if started != self.seen_started {
            self.seen_started = started;
            if busy {
                self.phase = Phase::Busy;
            } else {
                self.enter(Phase::Idle, self.idle);
            }
            return;
        }
        match (self.phase, busy) {
            (Phase::Idle | Phase::Head, true) => self.phase = Phase::Busy,
            (Phase::Busy, false) => self.enter(Phase::Idle, self.idle),
            _ => {}
        }
    }

    /// Looks at bytes just read: the first ones decide h1 or h2; any byte read while idle
    /// starts the header timer.
    fn on_bytes(&mut self, got: &[u8]) {
        if let Some(sniff) = &mut self.sniff {
            sniff.extend_from_slice(&got[..got.len().min(H2_PREFACE.len())]);
            let n = sniff.len().min(H2_PREFACE.len());
            if sniff[..n] != H2_PREFACE[..n] {
                self.sniff = None;
            } else if n == H2_PREFACE.len() {
                self.sniff = None;
                self.phase = Phase::H2;
                return;
            }
        }
        if self.phase == Phase::Idle {
            self.enter(Phase::Head, self.header);
        }
    }
}

impl<T: AsyncRead + Unpin> ReadFilter<T> for Deadlines {
    fn poll_read(
        &mut self,
        socket: &mut T,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.phase == Phase::H2 {
            return Pin::new(socket).poll_read(cx, buf);
        }
        self.update_phase();
        let before = buf.filled().len();
        match Pin::new(socket).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.on_bytes(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.phase {
                Phase::Idle | Phase::Head if self.timer.as_mut().poll(cx).is_ready() => {
                    let what = if self.phase == Phase::Idle {
                        "keep-alive connection idle past the idle timeout"
                    } else {
                        "request head not complete within the header timeout"
                    };
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                }
                Phase::Busy => {
                    // Be polled again when the last request ends, to start the idle timer.
                    if let Ok(mut w) = self.shared.idle_waker.lock() {
                        match w.as_ref() {
                            Some(old) if old.will_wake(cx.waker()) => {}
                            _ => *w = Some(cx.waker().clone()),
                        }
                    }
                    // It may have ended between the phase check and the registration.
                    if self.shared.count.load(Ordering::Acquire) == 0 {
                        cx.waker().wake_by_ref();
                    }
                    Poll::Pending
                }
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

/// A service that counts its requests in flight until their response bodies are dropped.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    shared: Arc<InFlight>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnBusy(self.shared.clone()));
        let guard = InFlightGuard::new(&self.shared);
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future; hands the in-flight count on to the response body.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlightGuard>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(res.map(|resp| {
            resp.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until hyper drops it.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InFlightGuard>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
