//! The HTTP/1.x codec: request and response heads (parsing and writing), chunked and
//! Content-Length body framing (decoding and encoding), as pure functions and one small state
//! machine over byte slices.
//!
//! Nothing here touches a socket or allocates per body chunk: the decoder is handed whatever
//! bytes a caller has buffered and says how many of them are framing to skip and where the body
//! bytes sit, so the upstream client, the fake upstream and the benchmarks' clients all decode in
//! place in their own buffers. A head parser returns offsets into the head, not copies.

// No unsafe code here, although the `http` module as a whole allows it (for `TCP_INFO`).
#![deny(unsafe_code)]

use std::fmt;

/// The longest chunk-size, chunk-end or trailer line accepted.
pub const MAX_LINE: usize = 4096;
/// The terminating chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// What follows each chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// Why bytes could not be decoded as HTTP/1.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    /// The start line is not an HTTP/1.0 or HTTP/1.1 request or response line.
    StartLine,
    /// A status code outside 100..=999 or not three digits.
    Status,
    /// A header line without a colon.
    HeaderLine,
    /// A `Content-Length` that is not a number, or two that disagree.
    ContentLength,
    /// A chunk-size line that is not hexadecimal (extensions after `;` are allowed).
    ChunkSize,
    /// A chunk's data is not followed by CRLF.
    ChunkEnd,
    /// A framing line longer than [`MAX_LINE`].
    LineTooLong,
    /// The input ended before the body did.
    Truncated,
}

impl CodecError {
    /// The error's text, as the upstream client reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            CodecError::StartLine => "not an HTTP/1.x message",
            CodecError::Status => "bad status code",
            CodecError::HeaderLine => "header line without a colon",
            CodecError::ContentLength => "bad content-length",
            CodecError::ChunkSize => "bad chunk size",
            CodecError::ChunkEnd => "chunk data is longer than its size",
            CodecError::LineTooLong => "chunk framing line is too long",
            CodecError::Truncated => "the connection closed before the end of the body",
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for CodecError {}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` bytes (a request without a body is `Length(0)`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response body that ends when the connection closes (no framing header).
    UntilClose,
}

/// Where one header sits in the head it was parsed from: name and trimmed value, as
/// `(start, end)` offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: (usize, usize),
    pub value: (usize, usize),
}

impl HeaderSpan {
    pub fn name<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.name.0..self.name.1]
    }

    pub fn value<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.value.0..self.value.1]
    }
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Whether the connection may carry another exchange (HTTP/1.1 unless `Connection: close`,
    /// HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The framing the headers declare; whether this response has a body at all also depends
    /// on the request method and the status (see [`response_framing`]).
    pub framing: Framing,
    pub headers: Vec<HeaderSpan>,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: (usize, usize),
    pub target: (usize, usize),
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub keep_alive: bool,
    /// `Length(0)` when the request declares no body.
    pub framing: Framing,
    pub headers: Vec<HeaderSpan>,
}

/// The index just past the first `\r\n\r\n` in `buffer` at or after `from` (pass where the
/// previous search stopped, minus 3, to scan each byte about once).
pub fn find_head_end(buffer: &[u8], from: usize) -> Option<usize> {
    let from = from.min(buffer.len());
    buffer[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

/// What the header lines of a head say about the connection and the body.
struct HeaderFacts {
    headers: Vec<HeaderSpan>,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

/// Parses the header lines that start at `position` in `head` (up to the empty line).
fn parse_headers(head: &[u8], mut position: usize) -> Result<HeaderFacts, CodecError> {
    let mut facts = HeaderFacts {
        headers: Vec::new(),
        content_length: None,
        chunked: false,
        close: false,
        keep_alive: false,
    };
    for line in head[position.min(head.len())..].split(|&b| b == b'\n') {
        let line_start = position;
        position += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(CodecError::HeaderLine)?;
        let name = &line[..colon];
        let mut value_start = colon + 1;
        while line
            .get(value_start)
            .is_some_and(|b| *b == b' ' || *b == b'\t')
        {
            value_start += 1;
        }
        let mut value_end = line.len();
        while value_end > value_start
            && (line[value_end - 1] == b' ' || line[value_end - 1] == b'\t')
        {
            value_end -= 1;
        }
        let value = &line[value_start..value_end];
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(CodecError::ContentLength)?;
            if facts
                .content_length
                .is_some_and(|previous| previous != length)
            {
                return Err(CodecError::ContentLength);
            }
            facts.content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only a final `chunked` coding frames the body.
            facts.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_ignore_case(value, b"close") {
                facts.close = true;
            } else if contains_ignore_case(value, b"keep-alive") {
                facts.keep_alive = true;
            }
        }
        facts.headers.push(HeaderSpan {
            name: (line_start, line_start + colon),
            value: (line_start + value_start, line_start + value_end),
        });
    }
    Ok(facts)
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The first line of `head` without its line ending, and where the next line starts.
fn start_line(head: &[u8]) -> (&[u8], usize) {
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = &head[..end];
    (line.strip_suffix(b"\r").unwrap_or(line), end + 1)
}

fn version_minor(version: &[u8]) -> Option<u8> {
    match version {
        b"HTTP/1.1" => Some(1),
        b"HTTP/1.0" => Some(0),
        _ => None,
    }
}

/// Parses a response head (status line and headers, with or without the final empty line).
pub fn parse_response_head(head: &[u8]) -> Result<ResponseHead, CodecError> {
    let (status_line, next) = start_line(head);
    let minor = status_line
        .get(..8)
        .and_then(version_minor)
        .filter(|_| status_line.get(8) == Some(&b' '))
        .ok_or(CodecError::StartLine)?;
    let status = status_line
        .get(9..12)
        .filter(|digits| digits.iter().all(u8::is_ascii_digit))
        .map(|d| {
            u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0')
        })
        .filter(|status| *status >= 100)
        .ok_or(CodecError::Status)?;
    let facts = parse_headers(head, next)?;
    let framing = if facts.chunked {
        Framing::Chunked
    } else if let Some(length) = facts.content_length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    Ok(ResponseHead {
        status,
        keep_alive: !facts.close && (minor == 1 || facts.keep_alive),
        framing,
        headers: facts.headers,
    })
}

/// Parses a request head: `METHOD target HTTP/1.x` and headers.
pub fn parse_request_head(head: &[u8]) -> Result<RequestHead, CodecError> {
    let (request_line, next) = start_line(head);
    let mut spans = Vec::with_capacity(3);
    let mut position = 0;
    for part in request_line.split(|b| b.is_ascii_whitespace()) {
        if !part.is_empty() {
            spans.push((position, position + part.len()));
        }
        position += part.len() + 1;
    }
    let [method, target, version] = spans[..] else {
        return Err(CodecError::StartLine);
    };
    let minor = version_minor(&request_line[version.0..version.1]).ok_or(CodecError::StartLine)?;
    let facts = parse_headers(head, next)?;
    let framing = if facts.chunked {
        Framing::Chunked
    } else {
        Framing::Length(facts.content_length.unwrap_or(0))
    };
    Ok(RequestHead {
        method,
        target,
        minor,
        keep_alive: !facts.close && (minor == 1 || facts.keep_alive),
        framing,
        headers: facts.headers,
    })
}

/// The framing of a response's body given what was asked: HEAD requests and 1xx, 204 and 304
/// responses have no body whatever the head says.
pub fn response_framing(head: &ResponseHead, head_request: bool) -> Framing {
    if head_request || head.status == 204 || head.status == 304 || head.status < 200 {
        Framing::Length(0)
    } else {
        head.framing
    }
}

/// Appends a request line, `Host`, the caller's raw header lines (each `Name: value\r\n`),
/// `Content-Length` when there is a body, and the empty line. The target is `target_parts`
/// joined (a base path and a path with query, say).
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &str,
    target_parts: &[&str],
    host: &str,
    raw_headers: &[u8],
    content_length: Option<u64>,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    for part in target_parts {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(raw_headers);
    if let Some(length) = content_length {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, length);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a status line, `headers` (except `Content-Length`, `Transfer-Encoding` and
/// `Connection`: framing is decided here), the framing header (`UntilClose` writes none) and
/// `Connection: close` when `close`, then the empty line.
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    framing: Framing,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(super::reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("connection")
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(length) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, length);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::UntilClose => {}
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A chunk-size line (`<hex>\r\n`) built on the stack.
pub struct ChunkHeader {
    bytes: [u8; 18],
    len: usize,
}

impl ChunkHeader {
    pub fn new(size: usize) -> ChunkHeader {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut bytes = [0u8; 18];
        let digits = ((usize::BITS - size.leading_zeros()).div_ceil(4)).max(1) as usize;
        for (index, byte) in bytes[..digits].iter_mut().enumerate() {
            let shift = 4 * (digits - 1 - index);
            *byte = HEX[(size >> shift) & 0xF];
        }
        bytes[digits] = b'\r';
        bytes[digits + 1] = b'\n';
        ChunkHeader {
            bytes,
            len: digits + 2,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Appends `data` as one chunk (nothing for empty data, which would end the body).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(ChunkHeader::new(data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_END);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many body bytes are still to come.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk with this many bytes left.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// Reading the trailer section after the last chunk.
    Trailers,
    UntilClose,
    Done,
}

/// What [`Decoder::step`] found at the front of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// After `skip` bytes of framing, `len` (> 0) body bytes follow; report what was used
    /// with [`Decoder::consume`].
    Data { skip: usize, len: usize },
    /// `skip` bytes of framing were taken; more input is needed.
    More { skip: usize },
    /// The body ended after `skip` bytes of framing; what follows belongs to the next message.
    Done { skip: usize },
}

/// Removes body framing (Content-Length, chunked with extensions and trailers, until-close)
/// from bytes handed to it piece by piece, without copying them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads framing at the front of `input` (the bytes not yet consumed) and says where the
    /// next body bytes are.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, CodecError> {
        let mut skip = 0;
        loop {
            let rest = &input[skip..];
            match self.state {
                State::Done => return Ok(Step::Done { skip }),
                State::Length(remaining) | State::ChunkData(remaining) => {
                    if rest.is_empty() {
                        return Ok(Step::More { skip });
                    }
                    let len = (rest.len() as u64).min(remaining) as usize;
                    return Ok(Step::Data { skip, len });
                }
                State::UntilClose => {
                    if rest.is_empty() {
                        return Ok(Step::More { skip });
                    }
                    return Ok(Step::Data {
                        skip,
                        len: rest.len(),
                    });
                }
                State::ChunkSize => {
                    let Some((line, used)) = line(rest)? else {
                        return Ok(Step::More { skip });
                    };
                    let size = chunk_size(line)?;
                    skip += used;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    let Some((line, used)) = line(rest)? else {
                        return Ok(Step::More { skip });
                    };
                    if !line.is_empty() {
                        return Err(CodecError::ChunkEnd);
                    }
                    skip += used;
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some((line, used)) = line(rest)? else {
                        return Ok(Step::More { skip });
                    };
                    skip += used;
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
            }
        }
    }

    /// Passes over body and framing at the front of `input` without handing the body out:
    /// how many bytes were taken, and whether the body has ended.
    pub fn skip(&mut self, input: &[u8]) -> Result<(usize, bool), CodecError> {
        let mut taken = 0;
        loop {
            match self.step(&input[taken..])? {
                Step::Data { skip, len } => {
                    self.consume(len);
                    taken += skip + len;
                }
                Step::More { skip } => return Ok((taken + skip, false)),
                Step::Done { skip } => return Ok((taken + skip, true)),
            }
        }
    }

    /// Marks `count` body bytes (at most the `len` of the last [`Step::Data`]) as used.
    pub fn consume(&mut self, count: usize) {
        let count = count as u64;
        match self.state {
            State::Length(remaining) => {
                self.state = if remaining <= count {
                    State::Done
                } else {
                    State::Length(remaining - count)
                };
            }
            State::ChunkData(remaining) => {
                self.state = if remaining <= count {
                    State::ChunkEnd
                } else {
                    State::ChunkData(remaining - count)
                };
            }
            _ => {}
        }
    }

    /// The input ended (the connection closed): the end of an until-close body, else a
    /// truncated one.
    pub fn end_of_input(&mut self) -> Result<(), CodecError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(CodecError::Truncated),
        }
    }
}

/// One LF-terminated line at the front of `input` without its CR LF, and the bytes it took;
/// `None` when the line is not complete yet.
fn line(input: &[u8]) -> Result<Option<(&[u8], usize)>, CodecError> {
    match input.iter().position(|&b| b == b'\n') {
        Some(at) if at > MAX_LINE => Err(CodecError::LineTooLong),
        Some(at) => {
            let line = &input[..at];
            Ok(Some((line.strip_suffix(b"\r").unwrap_or(line), at + 1)))
        }
        None if input.len() > MAX_LINE => Err(CodecError::LineTooLong),
        None => Ok(None),
    }
}

/// The size in a chunk-size line: hexadecimal digits, optional white space, optional
/// `;extensions`.
fn chunk_size(line: &[u8]) -> Result<u64, CodecError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return Err(CodecError::ChunkSize);
    }
    let mut size = 0u64;
    for &digit in digits {
        let value = (digit as char).to_digit(16).ok_or(CodecError::ChunkSize)?;
        size = (size << 4) | u64::from(value);
    }
    Ok(size)
}

#[cfg(test)]
mod tests;
