//! The way back of Twin's HTTP/1 engine: an upstream's response to the client (its head and
//! the first body bytes in one vectored write, then the rest as it arrives), or, after a
//! `101 Switching Protocols`, a tunnel copying bytes both ways until one side closes or the
//! drain deadline cuts it.

use std::io::IoSlice;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::outbound::h1::framing::{self, Body, Buf, Framing, PumpError};
use crate::outbound::h1::parse::{RequestInfo, ResponseInfo};
use crate::outbound::h1::pool::Upstream;
use crate::outbound::h1::{write_all_vectored, Client, Next};
use crate::outbound::metrics;

/// How a relayed answer ended.
pub(super) struct Relayed {
    /// How the client connection goes on.
    pub next: Next,
    /// The upstream connection ended the exchange cleanly: it may serve again.
    pub reusable: bool,
    /// Body bytes the client was sent.
    pub bytes: u64,
    /// The upstream's answer broke (its body's framing, or the connection before the body's
    /// end); the client's own failures are not the upstream's fault.
    pub fault: Option<Fault>,
}

/// An upstream answer that broke while it was relayed.
#[derive(Debug)]
pub(super) enum Fault {
    /// Before anything reached the client: the caller can still answer 502 in its place.
    Unsent(String),
    /// After the head went out: the client sees the connection end early.
    CutShort,
}

/// Sends the response whose client head is `head` and whose body starts in `ubuf`, the rest
/// read from `up`.
pub(super) async fn relay<R, W>(
    client: &mut W,
    head: &mut Vec<u8>,
    ubuf: &mut Buf,
    up: &mut R,
    resp: &ResponseInfo,
    req: &RequestInfo,
    stopping: bool,
) -> Relayed
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
            Err(e) => return Relayed::ended(0, Some(Fault::Unsent(e.to_string()))),
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
        return Relayed::ended(0, None);
    }
    if let Err(e) = framing::pump(up, ubuf, client, &mut body, dechunk).await {
        // Too late for an error response: the client sees the connection end early.
        tracing::debug!(error = %e, "response body cut short");
        let fault = match e {
            PumpError::Write(_) => None,
            _ => Some(Fault::CutShort),
        };
        return Relayed::ended(body.seen, fault);
    }
    let reusable = resp.keep_alive && body.is_done() && ubuf.is_empty();
    let client_closes = !req.keep_alive || matches!(resp.framing, Framing::Close) || dechunk;
    let next = if client_closes || stopping {
        let _ = client.shutdown().await;
        Next::Close
    } else {
        Next::KeepAlive
    };
    Relayed {
        next,
        reusable,
        bytes: body.seen,
        fault: None,
    }
}

impl Relayed {
    /// An answer that ended early: the client connection closes, the upstream's is not kept.
    fn ended(bytes: u64, fault: Option<Fault>) -> Relayed {
        Relayed {
            next: Next::Close,
            reusable: false,
            bytes,
            fault,
        }
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
