//! A stream that first gives back bytes already read from it: the accept loop reads a new
//! connection's first bytes to choose between HTTP/2 (hyper) and HTTP/1 (Twin's engine), and
//! hyper must still see them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::read_filter::{Filtered, ReadFilter};

/// `io` with `prefix` put back in front of what it reads next.
pub type Rewind<T> = Filtered<Prefix, T>;

/// The bytes a [`Rewind`] gives back before reading its socket again.
pub struct Prefix {
    bytes: Vec<u8>,
    /// Bytes already given back.
    pos: usize,
}

impl<T> Rewind<T> {
    pub fn new(io: T, prefix: Vec<u8>) -> Rewind<T> {
        Filtered {
            filter: Prefix {
                bytes: prefix,
                pos: 0,
            },
            io,
        }
    }
}

impl<T: AsyncRead + Unpin> ReadFilter<T> for Prefix {
    fn poll_read(
        &mut self,
        socket: &mut T,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.bytes.len() {
            let n = (self.bytes.len() - self.pos).min(buf.remaining());
            buf.put_slice(&self.bytes[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.bytes.len() {
                self.bytes = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(socket).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_prefix_comes_back_first() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .expect("write");
        drop(a);
        let mut r = Rewind::new(b, b"hello".to_vec());
        let mut out = String::new();
        r.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }
}
