//! The body types of the proxy. Bodies stream frame by frame in both directions; a request
//! body is held in memory only when it is small and the request may be retried.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::outbound::endpoint::{EndpointState, InFlight};
use crate::outbound::upstream::{self, Sender};

/// A body of the proxy: held whole in memory, or streamed frame by frame from `S`.
pub enum ProxyBody<S> {
    /// One data frame (none: an empty body), then the end: a short body the sidecar wrote
    /// itself, or a small request body kept so a retry can send it again.
    Whole(Option<Bytes>),
    /// Streamed through as it arrives (a request body streamed cannot be sent twice).
    Streamed(S),
    /// Protocols hook (gRPC requests): streamed through as it arrives while its first
    /// `max_replay` bytes are kept, so a call no upstream processed can be sent again.
    Replay(crate::outbound::replay::Replay),
}

/// A request body on its way to an upstream: the client's body, kept whole or streamed.
pub type UpstreamBody = ProxyBody<Incoming>;

/// What the client receives: an upstream's body, or a short body the sidecar wrote itself.
pub type ResponseBody = ProxyBody<UpstreamResponseBody>;

/// One poll of a body's next frame.
type Polled = Poll<Option<Result<Frame<Bytes>, hyper::Error>>>;

impl UpstreamBody {
    /// A copy for another attempt, when the body can be sent again.
    pub fn replay(&self) -> Option<UpstreamBody> {
        match self {
            ProxyBody::Whole(b) => Some(ProxyBody::Whole(b.clone())),
            ProxyBody::Streamed(_) => None,
            ProxyBody::Replay(r) => r.replay().map(ProxyBody::Replay),
        }
    }

    /// True when [`UpstreamBody::replay`] would give a copy now.
    pub fn can_replay(&self) -> bool {
        match self {
            ProxyBody::Whole(_) => true,
            ProxyBody::Streamed(_) => false,
            ProxyBody::Replay(r) => r.can_replay(),
        }
    }
}

impl ResponseBody {
    pub fn text(s: impl Into<Bytes>) -> ResponseBody {
        ProxyBody::Whole(Some(s.into()))
    }
    pub fn empty() -> ResponseBody {
        ProxyBody::Whole(None)
    }
}

impl<S> Body for ProxyBody<S>
where
    S: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        match self.get_mut() {
            ProxyBody::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Streamed(s) => Pin::new(s).poll_frame(cx),
            ProxyBody::Replay(r) => Pin::new(r).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Whole(b) => b.is_none(),
            ProxyBody::Streamed(s) => s.is_end_stream(),
            ProxyBody::Replay(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Streamed(s) => s.size_hint(),
            ProxyBody::Replay(_) => SizeHint::default(),
        }
    }
}

/// An upstream's response body. When it has been read to the end, its connection goes back
/// to the endpoint's pool; dropped early, the connection is closed (HTTP/1.1 cannot abandon
/// a response half way). It also keeps the endpoint's outstanding count until then.
pub struct UpstreamResponseBody {
    inner: Incoming,
    release: Option<Release>,
    /// Protocols hook: what an answer that does not go back to the HTTP/1.1 pool keeps until
    /// it is dropped (HTTP/2: the endpoint's in-flight count and the connection's stream
    /// count; an upgrade's connection is its own).
    _held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

struct Release {
    sender: Sender,
    endpoint: Arc<EndpointState>,
    _in_flight: InFlight,
}

impl UpstreamResponseBody {
    pub(crate) fn new(
        inner: Incoming,
        sender: Sender,
        endpoint: Arc<EndpointState>,
        in_flight: InFlight,
    ) -> Self {
        UpstreamResponseBody {
            inner,
            release: Some(Release {
                sender,
                endpoint,
                _in_flight: in_flight,
            }),
            _held: None,
        }
    }

    /// An answer on a connection that is not pooled here (HTTP/2 streams, upgrades): `held`
    /// is dropped with the body.
    pub(crate) fn unpooled(inner: Incoming, held: impl std::any::Any + Send + Sync) -> Self {
        UpstreamResponseBody {
            inner,
            release: None,
            _held: Some(Box::new(held)),
        }
    }

    fn finish(&mut self) {
        if let Some(r) = self.release.take() {
            upstream::release(r.endpoint, r.sender);
        }
    }
}

impl Drop for UpstreamResponseBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                // The connection is broken: never reuse it.
                this.release = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
