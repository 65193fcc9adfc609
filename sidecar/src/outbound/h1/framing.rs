//! Message bodies of Twin's HTTP/1 engine: where a body ends (RFC 9112 §6), a chunked-coding
//! checker that lets valid chunks through as they are, and the pump that moves a body from one
//! connection to another through a buffer reused for the whole connection.

use std::io;
use std::ops::Range;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub use crate::outbound::h1::buf::Buf;

/// Longest chunk-size line and trailer section accepted.
const MAX_CHUNK_LINE: u32 = 4096;
const MAX_TRAILERS: u32 = 16 * 1024;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

/// A body that breaks its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FramingError(pub &'static str);

/// Why moving a body stopped.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("reading the body: {0}")]
    Read(io::Error),
    #[error("the body ended before its declared end")]
    Truncated,
    #[error("bad chunked body: {0}")]
    Framing(FramingError),
    #[error("writing the body: {0}")]
    Write(io::Error),
}

/// Where the chunked checker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of a chunk size (`digits` so far).
    Size {
        digits: u32,
    },
    /// After the size: extensions up to the CR LF.
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (an empty line ends the body).
    TrailerStart,
    Trailer,
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// The progress of one body through its framing.
pub struct Body {
    framing: Framing,
    /// Bytes left of a `Length` body.
    remaining: u64,
    chunk: Chunk,
    size: u64,
    /// Bytes of the current size line or of the trailers.
    line: u32,
    /// Data bytes seen so far.
    pub seen: u64,
}

impl Body {
    pub fn new(framing: Framing) -> Body {
        Body {
            framing,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: Chunk::Size { digits: 0 },
            size: 0,
            line: 0,
            seen: 0,
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// True when the whole body has passed (a `Close` body never is: it ends at EOF).
    pub fn is_done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.remaining == 0,
            Framing::Chunked => self.chunk == Chunk::Done,
            Framing::Close => false,
        }
    }

    /// How many bytes at the start of `input` belong to the body, checked; the body moves
    /// past them.
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::Length(_) => {
                let n = (input.len() as u64).min(self.remaining);
                self.remaining -= n;
                self.seen += n;
                Ok(n as usize)
            }
            Framing::Close => {
                self.seen += input.len() as u64;
                Ok(input.len())
            }
            Framing::Chunked => {
                let mut used = 0;
                while used < input.len() && self.chunk != Chunk::Done {
                    let (n, _) = self.step(&input[used..])?;
                    used += n;
                }
                Ok(used)
            }
        }
    }

    /// One step of the chunked coding over `input`: bytes used, and the range of chunk data
    /// among them (what a client that cannot read chunks gets).
    pub fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Range<usize>>), FramingError> {
        if let Chunk::Data(left) = self.chunk {
            let n = (input.len() as u64).min(left);
            self.chunk = if n == left {
                Chunk::DataCr
            } else {
                Chunk::Data(left - n)
            };
            self.seen += n;
            return Ok((n as usize, Some(0..n as usize)));
        }
        let Some(&b) = input.first() else {
            return Ok((0, None));
        };
        self.chunk = match self.chunk {
            Chunk::Size { digits } => match (b as char).to_digit(16) {
                Some(d) => {
                    if digits >= 15 {
                        return Err(FramingError("chunk size too large"));
                    }
                    self.size = self.size * 16 + u64::from(d);
                    Chunk::Size { digits: digits + 1 }
                }
                None if digits == 0 => return Err(FramingError("chunk size is not hex")),
                None if b == b'\r' => Chunk::SizeLf,
                None if b == b';' || b == b' ' || b == b'\t' => Chunk::Ext,
                None => return Err(FramingError("invalid byte after the chunk size")),
            },
            Chunk::Ext => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err(FramingError("chunk extension too long"));
                }
                match b {
                    b'\r' => Chunk::SizeLf,
                    b'\n' => return Err(FramingError("bare LF in the chunk size line")),
                    _ => Chunk::Ext,
                }
            }
            Chunk::SizeLf => {
                if b != b'\n' {
                    return Err(FramingError("chunk size line without CR LF"));
                }
                self.line = 0;
                let size = std::mem::take(&mut self.size);
                if size == 0 {
                    Chunk::TrailerStart
                } else {
                    Chunk::Data(size)
                }
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size { digits: 0 },
            Chunk::DataCr | Chunk::DataLf => {
                return Err(FramingError("chunk data longer than its size"))
            }
            Chunk::TrailerStart | Chunk::Trailer => {
                self.line += 1;
                if self.line > MAX_TRAILERS {
                    return Err(FramingError("trailers too long"));
                }
                let empty = self.chunk == Chunk::TrailerStart;
                match b {
                    b'\r' => Chunk::TrailerLf { empty },
                    b'\n' => return Err(FramingError("bare LF in the trailers")),
                    _ => Chunk::Trailer,
                }
            }
            Chunk::TrailerLf { empty } => match (b, empty) {
                (b'\n', true) => Chunk::Done,
                (b'\n', false) => Chunk::TrailerStart,
                _ => return Err(FramingError("trailer line without CR LF")),
            },
            Chunk::Done | Chunk::Data(_) => return Ok((0, None)),
        };
        Ok((1, None))
    }
}

/// Moves the rest of `body` from `src` (bytes already in `buf` first) to `dst`. `dechunk`
/// writes only the chunk data (for an HTTP/1.0 client). A `Close` body ends at EOF.
pub async fn pump<R, W>(
    src: &mut R,
    buf: &mut Buf,
    dst: &mut W,
    body: &mut Body,
    dechunk: bool,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if body.is_done() {
            return Ok(());
        }
        if buf.is_empty() {
            let n = buf.fill(src, usize::MAX).await.map_err(PumpError::Read)?;
            if n == 0 {
                return if body.framing() == Framing::Close {
                    Ok(())
                } else {
                    Err(PumpError::Truncated)
                };
            }
        }
        if dechunk && body.framing() == Framing::Chunked {
            let (used, data) = body.step(buf.filled()).map_err(PumpError::Framing)?;
            if let Some(r) = data {
                dst.write_all(&buf.filled()[r])
                    .await
                    .map_err(PumpError::Write)?;
            }
            buf.consume(used);
        } else {
            let n = body.advance(buf.filled()).map_err(PumpError::Framing)?;
            dst.write_all(&buf.filled()[..n])
                .await
                .map_err(PumpError::Write)?;
            buf.consume(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(wire: &[u8]) -> Result<(usize, bool, Vec<u8>), FramingError> {
        let mut b = Body::new(Framing::Chunked);
        let mut data = Vec::new();
        let mut used = 0;
        // One byte at a time: a chunk boundary may fall anywhere in a read.
        while used < wire.len() && !b.is_done() {
            let (n, d) = b.step(&wire[used..used + 1])?;
            if let Some(r) = d {
                data.extend_from_slice(&wire[used..used + 1][r]);
            }
            used += n;
        }
        Ok((used, b.is_done(), data))
    }

    #[test]
    fn chunked_bodies_are_checked_and_decoded() {
        let wire = b"5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        let (used, done, data) = check(wire).expect("valid");
        assert!(done);
        assert_eq!(&wire[used..], b"NEXT");
        assert_eq!(data, b"hello world");
        let mut whole = Body::new(Framing::Chunked);
        assert_eq!(whole.advance(wire), Ok(wire.len() - 4));
        assert_eq!(whole.seen, 11);

        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhello!\r\n",
            b"5\nhello\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\nx\n",
        ] {
            assert!(check(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let (_, done, _) = check(b"5\r\nhel").expect("partial");
        assert!(!done);
    }
}
