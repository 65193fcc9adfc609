//! The way back of Twin's HTTP/1 engine: an upstream's response to the client (its head and
//! the first body bytes in one vectored write, then the rest as it arrives), or, after a
//! `101 Switching Protocols`, a tunnel copying bytes both ways until one side closes or the
//! drain deadline cuts it.

use std::io::IoSlice;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::outbound::h1::framing::{self, Body, Buf, Framing};
use crate::outbound::h1::parse::{RequestInfo, ResponseInfo};
use crate::outbound::h1::pool::Upstream;
use crate::outbound::h1::{write_all_vectored, Client, Next};
use crate::outbound::metrics;

/// Sends the response whose client head is `head` and whose body starts in `ubuf`, the rest
/// read from `up`. Returns how the client connection goes on, whether the upstream
/// connection ended the exchange cleanly (then it may serve again), and how many body bytes
/// the client was sent.
pub(super) async fn relay<R, W>(
    client: &mut W,
    head: &mut Vec<u8>,
    ubuf: &mut Buf,
    up: &mut R,
    resp: &ResponseInfo,
    req: &RequestInfo,
    stopping: bool,
) -> (Next, bool, u64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let dechunk = resp.framing == Framing::Chunked && req.http10;
    let mut body = Body::new(resp.framing);
    // The body bytes already read go out with the head.
    let prefix = if dechunk {
        0
    } else {
        match body.advance(ubuf.filled()) {
            Ok(n) => n,
            Err(_) => return (Next::Close, false, 0),
        }
    };
    // A small body joins the head in one buffer: one plain write, no iovec.
    let wrote = if prefix <= COALESCE {
        head.extend_from_slice(&ubuf.filled()[..prefix]);
        client.write_all(head).await
    } else {
        write_all_vectored(
            client,
            &mut [IoSlice::new(head), IoSlice::new(&ubuf.filled()[..prefix])],
        )
        .await
    };
    ubuf.consume(prefix);
    if wrote.is_err() {
        return (Next::Close, false, 0);
    }
    if let Err(e) = framing::pump(up, ubuf, client, &mut body, dechunk).await {
        // Too late for an error response: the client sees the connection end early.
        tracing::debug!(error = %e, "response body cut short");
        return (Next::Close, false, body.seen);
    }
    let reusable = resp.keep_alive && body.is_done() && ubuf.is_empty();
    let client_closes = !req.keep_alive || matches!(resp.framing, Framing::Close) || dechunk;
    if client_closes || stopping {
        let _ = client.shutdown().await;
        (Next::Close, reusable, body.seen)
    } else {
        (Next::KeepAlive, reusable, body.seen)
    }
}

/// Body bytes copied after the head rather than written from their own buffer.
const COALESCE: usize = 16 * 1024;

impl Client {
    /// After a 101 whose head is in `self.out`: copies bytes both ways (what either side
    /// sent early first) until one side closes, or until the drain deadline when the sidecar
    /// stops (the listener drops the connection's task then). Never retried, never pooled.
    pub(super) async fn tunnel(&mut self, mut up: Upstream, service: &str, dc: &str) {
        let _open = metrics::tunnel(service, dc);
        let early_up = self.ubuf.take_filled();
        let early_client = self.buf.take_filled();
        let started = async {
            write_all_vectored(
                &mut self.io,
                &mut [IoSlice::new(&self.out), IoSlice::new(&early_up)],
            )
            .await?;
            up.write_all(&early_client).await?;
            tokio::io::copy_bidirectional(&mut self.io, &mut up).await
        };
        if let Err(e) = started.await {
            tracing::debug!(error = %e, service, "tunnel ended");
        }
    }
}
