//! A request body that streams through at once and can still be sent again: what gRPC calls
//! need, since gRPC clients never say how long a request is (no `Content-Length`) and a
//! streaming call may wait for an answer before it sends its next message, so the sidecar
//! cannot read the whole body first.
//!
//! Frames go to the upstream as they arrive; the first `max_replay` bytes (data and
//! trailers) are kept beside them. When an upstream did not process the call (a refused
//! HTTP/2 stream, a trailers-only `UNAVAILABLE`) a new reader sends the kept frames again and
//! then goes on reading the client's body where the first reader stopped. Once more than
//! `max_replay` bytes went through, nothing is kept and the body can no longer be replayed:
//! that call is not retried.
//!
//! Only the newest reader that started reading takes frames; an older one (still held by an
//! abandoned upstream stream) ends.
//!
//! Empty data frames are dropped: a client's empty DATA frame that only carries END_STREAM
//! would otherwise go upstream as an empty frame *without* END_STREAM (the reader learns of
//! the end one poll later), and an HTTP/2 server closes a connection that sends it more than
//! a hundred of those (h2's "too_many_data_frames" guard). For the same reason, after a data
//! frame the next one is looked at if it is already there: when it is the end, the data frame
//! goes out carrying END_STREAM instead of being followed by a frame of its own, which could
//! reach an upstream that already answered and closed the stream (each such frame is a stream
//! error there, and an HTTP/2 server closes a connection that causes too many).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::HeaderMap;

/// One frame kept for a replay.
enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Kept::Data(b) => Frame::data(b.clone()),
            Kept::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, hyper::Error>>>;

struct State {
    source: Incoming,
    /// A frame read ahead of its turn (see the module docs).
    peeked: Option<Result<Frame<Bytes>, hyper::Error>>,
    /// The source returned its end.
    ended: bool,
    kept: Vec<Kept>,
    kept_bytes: usize,
    max: usize,
    /// More than `max` bytes went through, or the source failed: no replay any more.
    spent: bool,
    /// Readers made so far (each gets the next number).
    readers: u64,
    /// The newest reader that has read: older ones are retired.
    newest: u64,
}

/// A reader of the shared body: the first one, or a replay.
pub struct Replay {
    shared: Arc<Mutex<State>>,
    id: u64,
    /// Kept frames this reader has returned.
    pos: usize,
}

impl Replay {
    /// The first reader of `source`, keeping up to `max` bytes for replays.
    pub fn new(source: Incoming, max: usize) -> Replay {
        Replay {
            shared: Arc::new(Mutex::new(State {
                source,
                peeked: None,
                ended: false,
                kept: Vec::new(),
                kept_bytes: 0,
                max,
                spent: false,
                readers: 1,
                newest: 0,
            })),
            id: 0,
            pos: 0,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while every frame read so far was kept.
    pub fn can_replay(&self) -> bool {
        !self.state().spent
    }

    /// A new reader from the first frame, when every frame read so far was kept. Once it
    /// starts reading, the readers made before it stop.
    pub fn replay(&self) -> Option<Replay> {
        let mut st = self.state();
        if st.spent {
            return None;
        }
        let id = st.readers;
        st.readers += 1;
        Some(Replay {
            shared: self.shared.clone(),
            id,
            pos: 0,
        })
    }
}

impl State {
    /// The next frame of the client's body that is not an empty data frame.
    fn next(&mut self, cx: &mut Context<'_>) -> Polled {
        if let Some(p) = self.peeked.take() {
            return Poll::Ready(Some(p));
        }
        loop {
            match Pin::new(&mut self.source).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) if f.data_ref().is_some_and(|d| d.is_empty()) => {}
                other => return other,
            }
        }
    }

    /// True when the client's body has nothing more.
    fn source_done(&self) -> bool {
        self.peeked.is_none() && (self.ended || self.source.is_end_stream())
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let shared = this.shared.clone();
        let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
        if this.id < st.newest {
            // A newer attempt reads the body now.
            return Poll::Ready(None);
        }
        st.newest = this.id;
        if !st.spent && this.pos < st.kept.len() {
            let frame = st.kept[this.pos].frame();
            this.pos += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        if st.ended && st.peeked.is_none() {
            return Poll::Ready(None);
        }
        let polled = st.next(cx);
        if matches!(&polled, Poll::Ready(Some(Ok(f))) if f.is_data()) {
            // Is the end already there? Then this frame can carry it.
            match st.next(cx) {
                Poll::Ready(None) => st.ended = true,
                Poll::Ready(Some(next)) => st.peeked = Some(next),
                Poll::Pending => {}
            }
        }
        match &polled {
            Poll::Ready(None) => st.ended = true,
            Poll::Ready(Some(Err(_))) => {
                st.spent = true;
                st.kept = Vec::new();
            }
            Poll::Ready(Some(Ok(frame))) if !st.spent => {
                let kept = if let Some(d) = frame.data_ref() {
                    Kept::Data(d.clone())
                } else if let Some(t) = frame.trailers_ref() {
                    Kept::Trailers(t.clone())
                } else {
                    Kept::Data(Bytes::new())
                };
                let size = match &kept {
                    Kept::Data(d) => d.len(),
                    Kept::Trailers(t) => t
                        .iter()
                        .map(|(k, v)| k.as_str().len() + v.len())
                        .sum::<usize>(),
                };
                st.kept_bytes = st.kept_bytes.saturating_add(size);
                if st.kept_bytes > st.max {
                    st.spent = true;
                    st.kept = Vec::new();
                } else {
                    st.kept.push(kept);
                    this.pos = st.kept.len();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let st = self.state();
        if self.id < st.newest {
            return true;
        }
        st.source_done() && (st.spent || self.pos >= st.kept.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A real `Incoming` with these frames, from a loopback HTTP/2 exchange.
    async fn incoming(chunks: Vec<&'static [u8]>) -> Incoming {
        use http_body_util::StreamBody;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(req.into_body());
                }
                async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Empty::<Bytes>::new(),
                    ))
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let frames = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c)))),
        );
        tokio::spawn(async move {
            let req = hyper::Request::post("/")
                .header("host", "x")
                .body(StreamBody::new(frames))
                .expect("request");
            let _ = send.send_request(req).await;
        });
        rx.await.expect("the server got the body")
    }

    async fn read(r: Replay) -> Vec<u8> {
        r.collect().await.expect("body").to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_replay_sends_the_kept_frames_then_the_rest() {
        let first = Replay::new(incoming(vec![b"abc", b"def"]).await, 100);
        let template = first.replay().expect("replayable");
        assert_eq!(read(first).await, b"abcdef");
        let again = template.replay().expect("still replayable");
        assert_eq!(read(again).await, b"abcdef");
        assert!(template.can_replay());
    }

    #[tokio::test]
    async fn the_last_data_frame_says_it_is_the_end() {
        let mut first = Replay::new(incoming(vec![b"abc"]).await, 100);
        // The client's end arrives with (or right after) its data.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let frame = first.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().expect("data"), "abc");
        assert!(first.is_end_stream(), "no separate end-of-stream frame");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_replayed() {
        let first = Replay::new(incoming(vec![b"abcdef", b"ghijkl"]).await, 8);
        let template = first.replay().expect("nothing read yet");
        assert_eq!(read(first).await, b"abcdefghijkl");
        assert!(!template.can_replay());
        assert!(template.replay().is_none());
    }

    #[tokio::test]
    async fn an_abandoned_reader_stops_when_a_replay_reads() {
        let mut first = Replay::new(incoming(vec![b"abc", b"def"]).await, 100);
        let frame = first.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().expect("data"), "abc");
        let again = first.replay().expect("replayable");
        assert_eq!(read(again).await, b"abcdef");
        assert!(first.frame().await.is_none(), "the old reader is retired");
    }
}
