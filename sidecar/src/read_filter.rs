//! A socket wrapper that only changes how the socket is read: [`Filtered`] hands each read to
//! a [`ReadFilter`] and passes writes straight to the socket. The connection timeouts
//! ([`crate::conn_guard::Guarded`]) and the bytes put back after sniffing the protocol
//! ([`crate::outbound::h1::rewind::Rewind`]) are the two filters.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`Filtered`] socket does on each read, given the socket underneath.
pub trait ReadFilter<T> {
    fn poll_read(
        &mut self,
        socket: &mut T,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>>;
}

/// `io` read through `filter`; written as it is.
pub struct Filtered<F, T> {
    pub(crate) filter: F,
    pub(crate) io: T,
}

impl<F: ReadFilter<T> + Unpin, T: AsyncRead + Unpin> AsyncRead for Filtered<F, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.filter.poll_read(&mut this.io, cx, buf)
    }
}

impl<F: Unpin, T: AsyncWrite + Unpin> AsyncWrite for Filtered<F, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
