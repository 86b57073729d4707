//! A connection's read buffer and the blocking loops that feed the [`codec`](super::codec)
//! from any `Read`: read until a head is complete, hand out decoded body pieces in place.
//!
//! The buffer is initialised once (zeroed when created or grown) and reused for every message
//! on its connection, so reading needs no `unsafe` and no allocation per request or chunk:
//! `read` fills the spare tail, the codec looks at the filled part, and consumed bytes are
//! only moved when a partial line or head has to make room for more.

// No unsafe code here, although the `http` module as a whole allows it (for `TCP_INFO`).
#![deny(unsafe_code)]

use std::io::{self, Read};

use super::codec::{CodecError, Decoder, Step};

/// The bytes read from one connection and not yet consumed.
pub struct ReadBuffer {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    /// A buffer of `capacity` bytes (grown only when a head or line does not fit).
    pub fn new(capacity: usize) -> ReadBuffer {
        ReadBuffer {
            bytes: vec![0; capacity.max(64)],
            start: 0,
            end: 0,
        }
    }

    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Marks the first `count` unconsumed bytes as used.
    pub fn consume(&mut self, count: usize) {
        self.start = (self.start + count).min(self.end);
        if self.start == self.end {
            self.clear();
        }
    }

    /// Drops everything buffered (the allocation is kept).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Reads once from `reader` after what is buffered: the unconsumed bytes move to the front
    /// first, and the buffer doubles when they fill it. Returns the bytes read, 0 at end of
    /// stream; retries when interrupted by a signal.
    pub fn fill_from(&mut self, reader: &mut impl Read) -> io::Result<usize> {
        if self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.bytes.len() {
            self.bytes.resize(self.bytes.len() * 2, 0);
        }
        loop {
            match reader.read(&mut self.bytes[self.end..]) {
                Ok(read) => {
                    self.end += read;
                    return Ok(read);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}

/// An I/O error for a codec error: `UnexpectedEof` for a truncated body, else `InvalidData`.
pub fn codec_io_error(error: CodecError) -> io::Error {
    let kind = match error {
        CodecError::Truncated => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, error)
}

/// Reads until the buffer holds a complete head (up to and including its empty line) and
/// returns its length; `Ok(None)` when the stream ended before any byte of it. A head longer
/// than `max` is an `InvalidData` error, a stream that ends inside one `UnexpectedEof`.
pub fn read_head(
    buffer: &mut ReadBuffer,
    reader: &mut impl Read,
    max: usize,
) -> io::Result<Option<usize>> {
    let mut searched = 0;
    loop {
        if let Some(end) = super::codec::find_head_end(buffer.data(), searched) {
            return Ok(Some(end));
        }
        if buffer.data().len() >= max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the head is too large",
            ));
        }
        searched = buffer.data().len().saturating_sub(3);
        if buffer.fill_from(reader)? == 0 {
            if buffer.data().is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside a head",
            ));
        }
    }
}

/// Makes the next decoded body bytes available at the front of `buffer` (framing before them
/// is consumed, more is read as needed) and returns how many, 0 at the end of the body. After
/// using them, call `decoder.consume(n)` and `buffer.consume(n)`.
pub fn next_body_piece(
    buffer: &mut ReadBuffer,
    reader: &mut impl Read,
    decoder: &mut Decoder,
) -> io::Result<usize> {
    loop {
        match decoder.step(buffer.data()).map_err(codec_io_error)? {
            Step::Data { skip, len } => {
                buffer.consume(skip);
                return Ok(len);
            }
            Step::Done { skip } => {
                buffer.consume(skip);
                return Ok(0);
            }
            Step::More { skip } => {
                buffer.consume(skip);
                if buffer.fill_from(reader)? == 0 {
                    decoder.end_of_input().map_err(codec_io_error)?;
                }
            }
        }
    }
}

/// Reads a whole body through `decoder`, handing each decoded piece to `on_body` as it
/// arrives.
pub fn read_body(
    buffer: &mut ReadBuffer,
    reader: &mut impl Read,
    decoder: &mut Decoder,
    mut on_body: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        let len = next_body_piece(buffer, reader, decoder)?;
        if len == 0 {
            return Ok(());
        }
        on_body(&buffer.data()[..len])?;
        decoder.consume(len);
        buffer.consume(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::codec;

    /// A reader that hands out its bytes `piece` at a time, like a socket with small reads.
    struct Trickle<'a> {
        bytes: &'a [u8],
        piece: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let count = self.piece.min(out.len()).min(self.bytes.len());
            out[..count].copy_from_slice(&self.bytes[..count]);
            self.bytes = &self.bytes[count..];
            Ok(count)
        }
    }

    /// Reads every response on the stream: (status, body) each, or the first error's kind.
    fn responses(wire: &[u8], piece: usize) -> Result<Vec<(u16, Vec<u8>)>, io::ErrorKind> {
        let mut reader = Trickle { bytes: wire, piece };
        // A small buffer, so that heads and lines also exercise growing and compaction.
        let mut buffer = ReadBuffer::new(8);
        let mut out = Vec::new();
        loop {
            let Some(head_len) = read_head(&mut buffer, &mut reader, 1024).map_err(|e| e.kind())?
            else {
                return Ok(out);
            };
            let head = codec::parse_response_head(&buffer.data()[..head_len])
                .map_err(|e| codec_io_error(e).kind())?;
            buffer.consume(head_len);
            let mut decoder = Decoder::new(codec::response_framing(&head, false));
            let mut body = Vec::new();
            read_body(&mut buffer, &mut reader, &mut decoder, |piece| {
                body.extend_from_slice(piece);
                Ok(())
            })
            .map_err(|e| e.kind())?;
            out.push((head.status, body));
        }
    }

    #[test]
    fn messages_are_read_back_to_back_whatever_the_read_sizes() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nT: x\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.0 500 Oops\r\n\r\nuntil close";
        let expected = vec![
            (200, b"hello".to_vec()),
            (200, b"abcde".to_vec()),
            (204, Vec::new()),
            (500, b"until close".to_vec()),
        ];
        for piece in [1, 2, 7, 64, 4096] {
            assert_eq!(
                responses(wire, piece),
                Ok(expected.clone()),
                "reads of {piece}"
            );
        }
    }

    #[test]
    fn truncation_oversize_and_garbage_are_errors() {
        type Case = (&'static [u8], io::ErrorKind);
        let cases: Vec<Case> = vec![
            (
                b"HTTP/1.1 200 OK\r\nContent-Le",
                io::ErrorKind::UnexpectedEof,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
                io::ErrorKind::UnexpectedEof,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                io::ErrorKind::UnexpectedEof,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
                io::ErrorKind::InvalidData,
            ),
            (
                b"\x00\xffTHIS IS NOT HTTP\r\n\r\n\x01garbage",
                io::ErrorKind::InvalidData,
            ),
        ];
        for (wire, kind) in cases {
            for piece in [1, 5, 4096] {
                assert_eq!(
                    responses(wire, piece),
                    Err(kind),
                    "{}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
        let endless_head = [b'x'; 2000];
        assert_eq!(
            responses(&endless_head, 100),
            Err(io::ErrorKind::InvalidData)
        );
        assert_eq!(responses(b"", 1), Ok(Vec::new()));
    }
}
