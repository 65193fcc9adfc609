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

/// A request body on its way to an upstream.
pub enum UpstreamBody {
    Empty,
    /// A body kept in memory so a retry can send it again.
    Full(Option<Bytes>),
    /// The client's body, streamed through (cannot be sent twice).
    Stream(Incoming),
}

impl UpstreamBody {
    /// A copy for another attempt, when the body can be sent again.
    pub fn replay(&self) -> Option<UpstreamBody> {
        match self {
            UpstreamBody::Empty => Some(UpstreamBody::Empty),
            UpstreamBody::Full(b) => Some(UpstreamBody::Full(b.clone())),
            UpstreamBody::Stream(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(b) => b.is_none(),
            UpstreamBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::Stream(s) => s.size_hint(),
        }
    }
}

/// An upstream's response body. When it has been read to the end, its connection goes back
/// to the endpoint's pool; dropped early, the connection is closed (HTTP/1.1 cannot abandon
/// a response half way). It also keeps the endpoint's outstanding count until then.
pub struct UpstreamResponseBody {
    inner: Incoming,
    release: Option<Release>,
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

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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

/// What the client receives: an upstream's body, or a short body the sidecar wrote itself.
pub enum ResponseBody {
    Upstream(UpstreamResponseBody),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn text(s: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Full(Some(s.into()))
    }
    pub fn empty() -> ResponseBody {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(b) => b.size_hint(),
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
