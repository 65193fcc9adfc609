//! Read buffers of Twin's HTTP/1 engine, held only while they hold bytes.
//!
//! A connection spends most of its life waiting: for its client's next request, or for its
//! upstream's answer. A buffer kept for the whole connection would sit empty through those
//! waits, 4 KiB per side and per connection (8 MiB for a thousand clients). So a [`Buf`]
//! that becomes empty gives its storage back to a free list of the thread, and takes one
//! again only for bytes a read brought (read first into the stack): a thousand waiting
//! connections hold no read buffer at all, and the storage moves from connection to
//! connection without touching the allocator (a steady state allocates nothing). A buffer
//! that grew past the standard size for a large head keeps its storage, as before.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The standard size of a buffer's storage: what the free list holds.
pub const STANDARD: usize = 4 * 1024;

/// Spare storage kept per thread beyond what connections hold (1 MiB): more is freed.
const MAX_SPARE: usize = 256;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Storage of the standard size: from the thread's free list, else new.
fn take() -> Vec<u8> {
    SPARE
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; STANDARD])
}

/// Gives standard-size storage back to the thread's free list (freed if it is full).
fn give(data: Vec<u8>) {
    if data.len() != STANDARD {
        return;
    }
    let _ = SPARE.try_with(|s| {
        if let Ok(mut spare) = s.try_borrow_mut() {
            if spare.len() < MAX_SPARE {
                spare.push(data);
            }
        }
    });
}

/// Spare buffers on this thread's free list (for tests and benches).
pub fn spare() -> usize {
    SPARE.try_with(|s| s.borrow().len()).unwrap_or(0)
}

/// A read buffer of a connection: bytes `start..end` are read and not yet used. Empty, it
/// holds no storage (see the module's note).
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    /// An empty buffer, holding no storage yet.
    pub fn new() -> Buf {
        Buf {
            data: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// The bytes read and not yet used.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// True while the buffer holds storage.
    pub fn holds_storage(&self) -> bool {
        !self.data.is_empty()
    }

    /// Drops the first `n` buffered bytes (all of them when `n` is larger).
    pub fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() == STANDARD {
                give(std::mem::take(&mut self.data));
            }
        }
    }

    /// Drops everything buffered: what is left of an answer that will not be relayed.
    pub fn clear(&mut self) {
        self.consume(self.end - self.start);
    }

    /// Reads more after what is buffered, growing the buffer up to `max` bytes when it is
    /// full. An empty buffer takes storage only once `r` is readable. Ok(0): the peer closed,
    /// or the buffer holds `max` bytes already.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R, max: usize) -> io::Result<usize> {
        if !self.data.is_empty() && self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < max {
                let grown = (self.data.len() * 2).clamp(1024, max);
                self.data.resize(grown, 0);
            } else {
                return Ok(0);
            }
        }
        let n = poll_fn(|cx| self.poll_fill(r, cx)).await?;
        self.end += n;
        if n == 0 {
            // Nothing read: the storage goes back if nothing else is held.
            self.consume(0);
        }
        Ok(n)
    }

    /// One read after the buffered bytes. An empty buffer holds no storage while it waits:
    /// it reads into the stack and takes storage only for bytes that came (a copy of a few
    /// hundred bytes costs less than polling the socket's readiness twice).
    fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.data.is_empty() {
            let mut scratch = [const { MaybeUninit::<u8>::uninit() }; STANDARD];
            let mut space = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut space))?;
            let got = space.filled();
            if !got.is_empty() {
                self.data = take();
                self.data[..got.len()].copy_from_slice(got);
            }
            return Poll::Ready(Ok(got.len()));
        }
        let mut space = ReadBuf::new(&mut self.data[self.end..]);
        ready!(Pin::new(&mut *r).poll_read(cx, &mut space))?;
        Poll::Ready(Ok(space.filled().len()))
    }

    /// Takes the buffered bytes out (for a tunnel), leaving the buffer empty.
    pub fn take_filled(&mut self) -> Vec<u8> {
        let out = self.filled().to_vec();
        self.consume(out.len());
        out
    }
}

impl Default for Buf {
    fn default() -> Self {
        Buf::new()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    /// Both ends of a loopback TCP connection: (client, server).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    #[tokio::test]
    async fn storage_is_held_only_while_bytes_are() {
        let (mut client, mut server) = pair().await;
        let mut buf = Buf::new();
        assert!(!buf.holds_storage());
        client.write_all(b"hello world").await.expect("write");
        let mut got = 0;
        while got < 11 {
            got += buf.fill(&mut server, STANDARD).await.expect("read");
        }
        assert!(buf.holds_storage());
        assert_eq!(buf.filled(), b"hello world");
        buf.consume(6);
        assert!(buf.holds_storage());
        let before = spare();
        buf.consume(5);
        assert!(!buf.holds_storage());
        assert_eq!(spare(), before + 1);
        // The next fill takes it back from the free list.
        client.write_all(b"again").await.expect("write");
        buf.fill(&mut server, STANDARD).await.expect("read");
        assert_eq!(spare(), before);
        assert!(buf.filled().starts_with(b"a"));
        // An end read with nothing held gives the storage back too.
        buf.clear();
        drop(client);
        assert_eq!(buf.fill(&mut server, STANDARD).await.expect("eof"), 0);
        assert!(!buf.holds_storage());
    }

    #[tokio::test]
    async fn a_grown_buffer_keeps_its_storage() {
        let (mut client, mut server) = pair().await;
        let big = vec![b'x'; STANDARD + 100];
        client.write_all(&big).await.expect("write");
        let mut buf = Buf::new();
        while buf.filled().len() < big.len() {
            buf.fill(&mut server, 64 * 1024).await.expect("read");
        }
        buf.clear();
        assert!(buf.holds_storage());
    }

    /// A retried 5xx's head was consumed and its body is still buffered: clearing must drop
    /// the body, or it is parsed as the head of the next attempt's answer. (A wrapping
    /// `start + usize::MAX` moved `start` one byte back instead, in release builds.)
    #[tokio::test]
    async fn clear_after_a_partial_consume_drops_everything() {
        let (mut client, mut server) = pair().await;
        let answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
        client.write_all(answer).await.expect("write");
        let mut buf = Buf::new();
        while buf.filled().len() < answer.len() {
            buf.fill(&mut server, STANDARD).await.expect("read");
        }
        buf.consume(answer.len() - 4);
        assert_eq!(buf.filled(), b"busy");
        buf.clear();
        assert!(buf.is_empty());
        buf.consume(usize::MAX);
        assert!(buf.is_empty());
    }
}
