//! A small HTTP/1.1 client for swapd's traffic to upstream servers, peers and health endpoints.
//!
//! ureq (which swapd no longer links) cost most of the proxy's CPU per request when profiled:
//! it resolved `localhost` through getaddrinfo on every request (opening and reading
//! `/etc/hosts` and friends), built an `http::Request`, and wrote the head and the body in two
//! system calls through 128 KiB buffers. A proxy needs much less: one `Host`, the client's
//! headers, one body that is already in memory, and a response body read as it arrives. This
//! client resolves an upstream once, keeps idle connections per upstream, writes head and body
//! in one call, and hands back a [`Body`] that reads straight into the caller's buffer.
//!
//! Pooled connections: llama-server closes a kept-alive connection right after a streamed
//! response without announcing it. A pooled connection is therefore checked before reuse (a
//! non-blocking peek sees the close), and a request whose reused connection fails before the
//! first response byte is sent again on a fresh connection: the body is still in hand, and a
//! server that closed the connection never saw the request.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Idle connections kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 64;
/// Idle connections older than this are closed instead of reused.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Each connection's read buffer (kept with the connection in the pool, so a request allocates
/// none); it grows only for a larger response head.
const READ_BUFFER: usize = 8 * 1024;
/// Request bodies up to this size are sent in the same write as the head.
const COALESCE_BODY: usize = 64 * 1024;

/// Why an upstream request failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The upstream URL is not one this client can reach (e.g. https).
    BadUrl(String),
    /// No connection could be made to any address of the upstream.
    Connect(io::Error),
    /// The upstream did not answer within the read timeout.
    Timeout,
    /// The connection failed while sending or before the response head was complete.
    Io(io::Error),
    /// The upstream answered something that is not HTTP/1.x.
    Protocol(&'static str),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::BadUrl(url) => write!(f, "unsupported upstream url '{url}'"),
            UpstreamError::Connect(error) => write!(f, "connection failed: {error}"),
            UpstreamError::Timeout => write!(f, "timed out"),
            UpstreamError::Io(error) => write!(f, "i/o error: {error}"),
            UpstreamError::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

impl UpstreamError {
    /// Whether sending again on a fresh connection may succeed.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::Io(_) | UpstreamError::Protocol(_)
        )
    }
}

fn io_error(error: io::Error) -> UpstreamError {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => UpstreamError::Timeout,
        _ => UpstreamError::Io(error),
    }
}

/// A request to send: the caller keeps ownership of everything.
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query, e.g. `/v1/chat/completions` or `/slots?id=1`.
    pub path_and_query: &'a str,
    /// Header lines to send besides `Host` and `Content-Length` (which this client writes),
    /// each `Name: value\r\n`, sent as they are.
    pub headers: &'a [u8],
    /// `None` sends no body and no `Content-Length`.
    pub body: Option<&'a [u8]>,
}

/// One connection with the settings it currently has.
struct Connection {
    stream: TcpStream,
    read_timeout: Option<Duration>,
    idle_since: Instant,
    /// Bytes read and not yet consumed by the response being read (empty between responses).
    buffer: Vec<u8>,
}

/// Reads what the socket has into `buffer`'s spare capacity, without zeroing it first.
fn read_more(stream: &TcpStream, buffer: &mut Vec<u8>) -> io::Result<usize> {
    if buffer.len() == buffer.capacity() {
        buffer.reserve(READ_BUFFER);
    }
    let spare = buffer.capacity() - buffer.len();
    loop {
        // SAFETY: recv writes at most `spare` bytes into the vector's spare capacity, which is
        // allocated; exactly the bytes it reports are then marked as initialised.
        let read = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buffer.as_mut_ptr().add(buffer.len()) as *mut libc::c_void,
                spare,
                0,
            )
        };
        if read >= 0 {
            // SAFETY: see above; `read <= spare`.
            unsafe { buffer.set_len(buffer.len() + read as usize) };
            return Ok(read as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

impl Connection {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.read_timeout != timeout {
            self.stream.set_read_timeout(timeout)?;
            self.stream.set_write_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }

    /// Whether the peer closed (or sent something unasked) while the connection sat idle.
    fn is_stale(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local buffer on a socket we own; nothing is consumed.
        let peeked = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                &mut byte as *mut u8 as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if peeked < 0 {
            let error = io::Error::last_os_error();
            error.kind() != io::ErrorKind::WouldBlock
        } else {
            // 0: orderly close; >0: bytes nobody asked for.
            true
        }
    }
}

/// The connection pool and address cache shared by all connection threads.
pub struct Client {
    idle: Mutex<HashMap<String, Vec<Connection>>>,
    addresses: Mutex<HashMap<String, Arc<[SocketAddr]>>>,
    connect_timeout: Duration,
}

impl Client {
    pub fn new(connect_timeout: Duration) -> Client {
        Client {
            idle: Mutex::default(),
            addresses: Mutex::default(),
            connect_timeout,
        }
    }

    /// Sends `request` to the upstream at `base` (e.g. `http://localhost:5800`) and returns the
    /// response once its head has arrived. `read_timeout` bounds every wait for the upstream.
    pub fn send(
        &self,
        base: &str,
        request: &Request<'_>,
        read_timeout: Option<Duration>,
    ) -> Result<Response<'_>, UpstreamError> {
        self.send_with_connect_timeout(base, request, read_timeout, self.connect_timeout)
    }

    /// [`Client::send`] with a connect timeout other than the client's own (peers have their
    /// own, from `peers.<id>.timeouts.connect`).
    pub fn send_with_connect_timeout(
        &self,
        base: &str,
        request: &Request<'_>,
        read_timeout: Option<Duration>,
        connect_timeout: Duration,
    ) -> Result<Response<'_>, UpstreamError> {
        self.send_observed(base, request, read_timeout, Some(connect_timeout), &|_| {
            true
        })
    }

    /// [`Client::send_with_connect_timeout`] (`None`: the client's own connect timeout),
    /// calling `observe` with each connection's socket just before the request goes out on it
    /// (so another thread can be given a handle that cuts the exchange, even while it waits
    /// for the response head). When `observe` returns `false` the request is abandoned with an
    /// `Interrupted` error instead of being sent or retried.
    pub fn send_observed(
        &self,
        base: &str,
        request: &Request<'_>,
        read_timeout: Option<Duration>,
        connect_timeout: Option<Duration>,
        observe: &dyn Fn(&TcpStream) -> bool,
    ) -> Result<Response<'_>, UpstreamError> {
        let connect_timeout = connect_timeout.unwrap_or(self.connect_timeout);
        let (authority, base_path) = split_base(base)?;
        let head = request_head(authority, base_path, request);
        // A reused connection that fails before the response is a stale one: the request goes
        // out again. A fresh connection that fails gets one more try on another fresh one (an
        // upstream may close its first connection early); a second such failure is the answer.
        let mut fresh_failed = false;
        loop {
            let pooled = if fresh_failed {
                None
            } else {
                self.take_idle(authority)
            };
            let (mut connection, reused) = match pooled {
                Some(connection) => (connection, true),
                None => match self.connect(authority, connect_timeout) {
                    Ok(connection) => (connection, false),
                    Err(error) if !fresh_failed => {
                        fresh_failed = true;
                        log::debug!("connecting to {authority} failed ({error}); trying again");
                        continue;
                    }
                    Err(error) => return Err(error),
                },
            };
            connection
                .set_read_timeout(read_timeout)
                .map_err(UpstreamError::Io)?;
            if !observe(&connection.stream) {
                // A pooled connection goes back untouched; only this request is abandoned.
                if reused {
                    self.give_back(authority, connection);
                }
                return Err(UpstreamError::Io(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "the request was cancelled",
                )));
            }
            match exchange(&mut connection, &head, request) {
                Ok((head_start, head_end, parsed)) => {
                    return Ok(Response::new(
                        self,
                        authority,
                        connection,
                        head_start,
                        head_end,
                        parsed,
                        request.method.eq_ignore_ascii_case("HEAD"),
                    ));
                }
                Err(error) if reused && error.is_retryable() => {
                    log::debug!("pooled connection to {authority} was closed; sending again");
                    continue;
                }
                Err(error) if !fresh_failed && error.is_retryable() => {
                    log::debug!("new connection to {authority} failed ({error}); sending again");
                    fresh_failed = true;
                    continue;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The most recently used idle connection that is still open (checked outside the lock,
    /// since the check is a system call).
    fn take_idle(&self, authority: &str) -> Option<Connection> {
        loop {
            let connection = self
                .idle
                .lock()
                .expect("the pool lock is never held across a panic")
                .get_mut(authority)?
                .pop()?;
            if connection.idle_since.elapsed() < MAX_IDLE_AGE && !connection.is_stale() {
                return Some(connection);
            }
        }
    }

    fn give_back(&self, authority: &str, mut connection: Connection) {
        connection.idle_since = Instant::now();
        let mut idle = self
            .idle
            .lock()
            .expect("the pool lock is never held across a panic");
        if let Some(list) = idle.get_mut(authority) {
            if list.len() < MAX_IDLE_PER_UPSTREAM {
                list.push(connection);
            }
            return;
        }
        idle.insert(authority.to_string(), vec![connection]);
    }

    /// Closes idle connections unused for `max_age` or longer (with their buffers).
    pub fn close_idle(&self, max_age: Duration) {
        let mut idle = self
            .idle
            .lock()
            .expect("the pool lock is never held across a panic");
        for list in idle.values_mut() {
            list.retain(|connection| connection.idle_since.elapsed() < max_age);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    fn connect(
        &self,
        authority: &str,
        connect_timeout: Duration,
    ) -> Result<Connection, UpstreamError> {
        let cached = self
            .addresses
            .lock()
            .expect("the address cache lock is never held across a panic")
            .get(authority)
            .cloned();
        let addresses = match cached {
            Some(addresses) => addresses,
            None => {
                let resolved: Arc<[SocketAddr]> = authority
                    .to_socket_addrs()
                    .map_err(UpstreamError::Connect)?
                    .collect();
                resolved
            }
        };
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address resolved");
        for (index, address) in addresses.iter().enumerate() {
            match TcpStream::connect_timeout(address, connect_timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    // The address that answered goes first next time.
                    let mut ordered: Vec<SocketAddr> = Vec::with_capacity(addresses.len());
                    ordered.push(*address);
                    ordered.extend(
                        addresses
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| *i != index)
                            .map(|(_, a)| *a),
                    );
                    self.addresses
                        .lock()
                        .expect("the address cache lock is never held across a panic")
                        .insert(authority.to_string(), ordered.into());
                    return Ok(Connection {
                        stream,
                        read_timeout: None,
                        idle_since: Instant::now(),
                        buffer: Vec::with_capacity(READ_BUFFER),
                    });
                }
                Err(error) => last_error = error,
            }
        }
        // Resolve again next time: the upstream may have moved.
        self.addresses
            .lock()
            .expect("the address cache lock is never held across a panic")
            .remove(authority);
        Err(UpstreamError::Connect(last_error))
    }
}

/// Splits `http://host:port/base` into `host:port` and `/base` (without a trailing slash).
fn split_base(base: &str) -> Result<(&str, &str), UpstreamError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| UpstreamError::BadUrl(base.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(UpstreamError::BadUrl(base.to_string()));
    }
    Ok((authority, path))
}

/// The request line and headers, with the body appended when it is small.
fn request_head(authority: &str, base_path: &str, request: &Request<'_>) -> Vec<u8> {
    let small_body = request.body.filter(|body| body.len() <= COALESCE_BODY);
    let mut head = Vec::with_capacity(
        256 + request.path_and_query.len()
            + request.headers.len()
            + small_body.map_or(0, |b| b.len()),
    );
    head.extend_from_slice(request.method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(base_path.as_bytes());
    head.extend_from_slice(request.path_and_query.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    head.extend_from_slice(authority.as_bytes());
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(request.headers);
    if let Some(body) = request.body {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.extend_from_slice(b"\r\n");
    if let Some(body) = small_body {
        head.extend_from_slice(body);
    }
    head
}

/// Writes the request and reads until a final (non-1xx) response head is complete. Returns
/// where that head starts and ends in the connection's buffer.
fn exchange(
    connection: &mut Connection,
    head: &[u8],
    request: &Request<'_>,
) -> Result<(usize, usize, ParsedHead), UpstreamError> {
    connection.stream.write_all(head).map_err(io_error)?;
    if let Some(body) = request.body.filter(|body| body.len() > COALESCE_BODY) {
        connection.stream.write_all(body).map_err(io_error)?;
    }
    let buffer = &mut connection.buffer;
    buffer.clear();
    let mut start = 0;
    loop {
        if buffer.len() - start >= MAX_HEAD {
            return Err(UpstreamError::Protocol("response head is too large"));
        }
        let searched_from = buffer.len().saturating_sub(3).max(start);
        let read = read_more(&connection.stream, buffer).map_err(io_error)?;
        if read == 0 {
            return Err(UpstreamError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )));
        }
        // A response may be preceded by interim (1xx) responses, which are skipped.
        let mut from = searched_from;
        while let Some(end) = find_head_end(buffer, from, start) {
            let parsed = parse_head(&buffer[start..end]).map_err(UpstreamError::Protocol)?;
            if (100..200).contains(&parsed.status) {
                if parsed.status == 101 {
                    return Err(UpstreamError::Protocol("upstream switched protocols"));
                }
                start = end;
                from = end;
                continue;
            }
            return Ok((start, end, parsed));
        }
    }
}

/// The index just past the first `\r\n\r\n` at or after `start`.
fn find_head_end(buffer: &[u8], searched_from: usize, start: usize) -> Option<usize> {
    let from = searched_from.max(start);
    buffer[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

/// A parsed response head: the status and where each header sits in the head bytes.
struct ParsedHead {
    status: u16,
    keep_alive: bool,
    framing: Framing,
    /// (name start, name end, value start, value end), relative to the head's start.
    headers: Vec<(usize, usize, usize, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

fn parse_head(head: &[u8]) -> Result<ParsedHead, &'static str> {
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = lines.next().ok_or("empty response")?;
    let status_line = status_line.strip_suffix(b"\r").unwrap_or(status_line);
    let minor = match status_line.get(..9) {
        Some(b"HTTP/1.1 ") => 1,
        Some(b"HTTP/1.0 ") => 0,
        _ => return Err("not an HTTP/1.x response"),
    };
    let status = status_line
        .get(9..12)
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse::<u16>().ok())
        .filter(|status| (100..1000).contains(status))
        .ok_or("bad status code")?;
    let mut headers = Vec::new();
    let mut content_length = None;
    let mut chunked = false;
    let mut connection_close = minor == 0;
    let mut position =
        status_line.len() + 1 + usize::from(head.get(status_line.len()) == Some(&b'\r'));
    for line in lines {
        let line_start = position;
        position += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("header line without a colon")?;
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
                .ok_or("bad content-length")?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err("conflicting content-length headers");
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            let value = value.to_ascii_lowercase();
            if value.windows(5).any(|w| w == b"close") {
                connection_close = true;
            } else if minor == 0 && value.windows(10).any(|w| w == b"keep-alive") {
                connection_close = false;
            }
        }
        headers.push((
            line_start,
            line_start + colon,
            line_start + value_start,
            line_start + value_end,
        ));
    }
    let framing = if chunked {
        Framing::Chunked
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    Ok(ParsedHead {
        status,
        keep_alive: !connection_close,
        framing,
        headers,
    })
}

/// A response whose head has arrived; read the body through [`Response::into_body`].
pub struct Response<'c> {
    status: u16,
    /// A copy of the head's bytes, which [`ParsedHead::headers`] index.
    head: Vec<u8>,
    parsed: ParsedHead,
    /// HEAD requests and 204/304 responses have no body whatever the head says.
    no_body: bool,
    body: Body<'c>,
}

impl<'c> Response<'c> {
    fn new(
        client: &'c Client,
        authority: &str,
        connection: Connection,
        head_start: usize,
        head_end: usize,
        parsed: ParsedHead,
        head_request: bool,
    ) -> Response<'c> {
        let status = parsed.status;
        let no_body = head_request || status == 204 || status == 304;
        let head = connection.buffer[head_start..head_end].to_vec();
        let state = match parsed.framing {
            _ if no_body => State::Done,
            Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        let reusable = parsed.keep_alive && parsed.framing != Framing::UntilClose;
        let mut body = Body {
            client,
            authority: authority.to_string(),
            connection: Some(connection),
            position: head_end,
            state,
            reusable,
        };
        body.finish_if_done();
        Response {
            status,
            head,
            parsed,
            no_body,
            body,
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The response headers in order, as sent (values that are not UTF-8 are skipped).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        let head = &self.head;
        self.parsed
            .headers
            .iter()
            .filter_map(move |&(ns, ne, vs, ve)| {
                let name = std::str::from_utf8(&head[ns..ne]).ok()?;
                let value = std::str::from_utf8(&head[vs..ve]).ok()?;
                Some((name, value))
            })
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The body length the upstream declared, if it declared one.
    pub fn content_length(&self) -> Option<u64> {
        match self.parsed.framing {
            Framing::Length(length) => Some(length),
            _ if self.no_body => Some(0),
            _ => None,
        }
    }

    pub fn into_body(self) -> Body<'c> {
        self.body
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
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

/// The body of an upstream response, decoded (chunk framing removed). When it has been read to
/// the end, its connection goes back to the pool; dropped earlier, the connection is closed.
///
/// [`Body::chunk`] and [`Body::consume`] hand out the body in place, from the connection's
/// buffer; `Read` copies.
pub struct Body<'c> {
    client: &'c Client,
    authority: String,
    /// `None` once the connection was given back or closed.
    connection: Option<Connection>,
    /// Where the unconsumed bytes start in the connection's buffer.
    position: usize,
    state: State,
    reusable: bool,
}

impl Body<'_> {
    fn finish_if_done(&mut self) {
        if self.state == State::Done {
            if let Some(mut connection) = self.connection.take() {
                if self.reusable && self.position >= connection.buffer.len() {
                    connection.buffer.clear();
                    self.client.give_back(&self.authority, connection);
                }
            }
        }
    }

    fn buffered(&self) -> &[u8] {
        match &self.connection {
            Some(connection) => &connection.buffer[self.position..],
            None => &[],
        }
    }

    /// Reads more from the socket into the buffer; `Ok(false)` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(false);
        };
        if self.position >= connection.buffer.len() {
            connection.buffer.clear();
            self.position = 0;
        } else if self.position > 0 {
            connection.buffer.drain(..self.position);
            self.position = 0;
        }
        Ok(read_more(&connection.stream, &mut connection.buffer)? > 0)
    }

    /// Takes one CRLF-terminated line out of the buffer, reading more as needed.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(at) = self.buffered().iter().position(|&b| b == b'\n') {
                let mut line = self.buffered()[..at].to_vec();
                self.position += at + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buffered().len() > 4096 {
                return Err(protocol("chunk framing line is too long"));
            }
            if !self.fill()? {
                self.connection = None;
                return Err(truncated());
            }
        }
    }

    /// Makes body bytes available in the buffer (reading and removing framing as needed) and
    /// returns how many, 0 at the end of the body.
    fn available(&mut self) -> io::Result<usize> {
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Length(remaining) | State::ChunkData(remaining) => {
                    if self.buffered().is_empty() && !self.fill()? {
                        self.connection = None;
                        return Err(truncated());
                    }
                    let buffered = self.buffered().len() as u64;
                    return Ok(buffered.min(remaining) as usize);
                }
                State::UntilClose => {
                    if self.buffered().is_empty() && !self.fill()? {
                        self.state = State::Done;
                        self.connection = None;
                        return Ok(0);
                    }
                    return Ok(self.buffered().len());
                }
                State::ChunkSize => {
                    let line = self.line()?;
                    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|d| u64::from_str_radix(d.trim(), 16).ok())
                        .ok_or_else(|| protocol("bad chunk size"))?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if !self.line()?.is_empty() {
                        return Err(protocol("chunk data is longer than its size"));
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if self.line()?.is_empty() {
                        // The connection goes back to the pool when the body is dropped, not
                        // here: whoever reads the body may still hold a handle to its socket
                        // (an in-flight entry's cancel) and must let go of it first.
                        self.state = State::Done;
                    }
                }
            }
        }
    }

    /// The next piece of the body, empty at its end. Call [`Body::consume`] after using it.
    pub fn chunk(&mut self) -> io::Result<&[u8]> {
        let available = self.available()?;
        Ok(&self.buffered()[..available])
    }

    /// Marks `count` bytes of the last [`Body::chunk`] as used.
    pub fn consume(&mut self, count: usize) {
        self.position += count;
        let count = count as u64;
        match self.state {
            State::Length(remaining) => {
                self.state = if remaining <= count {
                    State::Done
                } else {
                    State::Length(remaining - count)
                };
                self.finish_if_done();
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
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream closed the connection before the end of the body",
    )
}

impl Drop for Body<'_> {
    fn drop(&mut self) {
        // A body read to its end gives its connection back; one dropped earlier closes it.
        self.finish_if_done();
    }
}

impl Read for Body<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let chunk = self.chunk()?;
        let count = chunk.len().min(out.len());
        out[..count].copy_from_slice(&chunk[..count]);
        self.consume(count);
        Ok(count)
    }
}

/// The request as it will be sent upstream.
pub struct Outgoing {
    pub method: String,
    /// Path and query, e.g. `/v1/chat/completions` or `/slots?id=1`.
    pub path_and_query: String,
    /// Client header lines to pass on, each `Name: value\r\n` (hop-by-hop, Host and
    /// Content-Length already removed).
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    /// Whether the request gets an activity row: POSTs to the model-dispatched inference
    /// routes, directly or through `/upstream/<model>/`, as llama-swap meters them (not a
    /// passthrough `GET /health`, for instance).
    pub metered: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// Serves each accepted connection with `respond(connection_index, request_bytes)` for
    /// every request read on it; an empty answer closes the connection.
    fn server(answers: Vec<Vec<&'static [u8]>>) -> (String, thread::JoinHandle<Vec<Vec<Vec<u8>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            let mut seen = Vec::new();
            for answers in answers {
                let (mut stream, _) = listener.accept().unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut requests = Vec::new();
                for answer in answers {
                    let mut request = Vec::new();
                    let mut byte = [0u8; 1];
                    while !request.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).unwrap() == 0 {
                            break;
                        }
                        request.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(length) = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|l| l.trim().parse::<usize>().ok())
                    {
                        let mut body = vec![0u8; length];
                        stream.read_exact(&mut body).unwrap();
                        request.extend_from_slice(&body);
                    }
                    requests.push(request);
                    if answer.is_empty() {
                        break;
                    }
                    stream.write_all(answer).unwrap();
                }
                seen.push(requests);
            }
            seen
        });
        (base, handle)
    }

    fn get(headers: &[u8]) -> Request<'_> {
        Request {
            method: "GET",
            path_and_query: "/x?a=%20b",
            headers,
            body: None,
        }
    }

    fn read_all(body: &mut Body<'_>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buffer = [0u8; 3];
        loop {
            let read = body.read(&mut buffer)?;
            if read == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buffer[..read]);
        }
    }

    #[test]
    fn content_length_body_and_connection_reuse() {
        let (base, server) = server(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1 \r\n\r\nhello",
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nbye",
        ]]);
        let client = Client::new(Duration::from_secs(2));
        let response = client.send(&base, &get(b"X-Test: yes\r\n"), None).unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.header("x-a"), Some("1"));
        assert_eq!(response.content_length(), Some(5));
        let mut body = response.into_body();
        assert_eq!(read_all(&mut body).unwrap(), b"hello");
        drop(body);
        let post = Request {
            method: "POST",
            path_and_query: "/y",
            headers: b"",
            body: Some(b"{\"a\":1}"),
        };
        let response = client.send(&base, &post, None).unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(read_all(&mut response.into_body()).unwrap(), b"bye");
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 1, "both requests used one connection");
        let first = String::from_utf8(seen[0][0].clone()).unwrap();
        assert!(first.starts_with("GET /x?a=%20b HTTP/1.1\r\nHost: 127.0.0.1:"));
        assert!(first.contains("\r\nX-Test: yes\r\n"));
        assert!(!first.to_lowercase().contains("content-length"));
        let second = String::from_utf8(seen[0][1].clone()).unwrap();
        assert!(second.ends_with("Content-Length: 7\r\n\r\n{\"a\":1}"));
    }

    #[test]
    fn chunked_body_is_decoded_with_extensions_and_trailers() {
        let (base, server) = server(vec![vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nT: 1\r\n\r\n",
        ]]);
        let client = Client::new(Duration::from_secs(2));
        let response = client.send(&base, &get(b""), None).unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.content_length(), None);
        let mut body = response.into_body();
        assert_eq!(read_all(&mut body).unwrap(), b"hello world");
        drop(body);
        let idle = client.idle.lock().unwrap();
        assert_eq!(
            idle.get(base.strip_prefix("http://").unwrap())
                .map(Vec::len),
            Some(1)
        );
        server.join().unwrap();
    }

    #[test]
    fn stale_pooled_connection_is_replaced_and_the_request_resent() {
        // The first connection answers once and closes (like llama-server after a stream);
        // the second request must arrive on a new connection.
        let (base, server) = server(vec![
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", b""],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"],
        ]);
        let client = Client::new(Duration::from_secs(2));
        let response = client.send(&base, &get(b""), None).unwrap();
        assert_eq!(read_all(&mut response.into_body()).unwrap(), b"a");
        let response = client.send(&base, &get(b""), None).unwrap();
        assert_eq!(read_all(&mut response.into_body()).unwrap(), b"b");
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn a_failed_new_connection_is_tried_once_more() {
        // The first connection takes the request and closes without an answer.
        let (base, first) = server(vec![
            vec![b""],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        ]);
        let client = Client::new(Duration::from_secs(2));
        let response = client.send(&base, &get(b""), None).unwrap();
        assert_eq!(read_all(&mut response.into_body()).unwrap(), b"ok");
        assert_eq!(first.join().unwrap().len(), 2);
        // Twice in a row is the upstream's answer.
        let (base, second) = server(vec![vec![b""], vec![b""]]);
        assert!(matches!(
            client.send(&base, &get(b""), None),
            Err(UpstreamError::Io(_))
        ));
        assert_eq!(second.join().unwrap().len(), 2);
    }

    #[test]
    fn body_until_close_and_truncation_and_head_requests() {
        let (base, server) = server(vec![
            vec![b"HTTP/1.1 200 OK\r\n\r\nrest of stream"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"],
        ]);
        let client = Client::new(Duration::from_secs(2));
        // The server thread closes each connection after answering, ending the first body.
        let response = client.send(&base, &get(b""), None).unwrap();
        assert_eq!(response.content_length(), None);
        assert_eq!(
            read_all(&mut response.into_body()).unwrap(),
            b"rest of stream"
        );
        let response = client.send(&base, &get(b""), None).unwrap();
        let error = read_all(&mut response.into_body()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let head = Request {
            method: "HEAD",
            path_and_query: "/",
            headers: b"",
            body: None,
        };
        let response = client.send(&base, &head, None).unwrap();
        assert_eq!(response.header("content-length"), Some("10"));
        assert_eq!(read_all(&mut response.into_body()).unwrap(), b"");
        server.join().unwrap();
    }

    #[test]
    fn garbage_and_silence_are_errors() {
        // Garbage on the first connection and on the one retry.
        let (base, server) = server(vec![
            vec![b"SSH-2.0-OpenSSH\r\n\r\n"],
            vec![b"SSH-2.0-OpenSSH\r\n\r\n"],
        ]);
        let client = Client::new(Duration::from_secs(2));
        match client.send(&base, &get(b""), None) {
            Err(UpstreamError::Protocol(_)) => {}
            other => panic!(
                "expected a protocol error, got {:?}",
                other.map(|r| r.status())
            ),
        }
        server.join().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        match client.send(&base, &get(b""), Some(Duration::from_millis(100))) {
            Err(UpstreamError::Timeout) => {}
            other => panic!("expected a timeout, got {:?}", other.map(|r| r.status())),
        }
        drop(listener);
        match client.send(&base, &get(b""), None) {
            Err(UpstreamError::Connect(_)) => {}
            other => panic!(
                "expected a connect error, got {:?}",
                other.map(|r| r.status())
            ),
        }
        assert!(matches!(
            client.send("https://example.com", &get(b""), None),
            Err(UpstreamError::BadUrl(_))
        ));
    }

    #[test]
    fn base_urls_split_into_authority_and_path() {
        assert_eq!(
            split_base("http://localhost:5800").unwrap(),
            ("localhost:5800", "")
        );
        assert_eq!(
            split_base("http://127.0.0.1:9/api/").unwrap(),
            ("127.0.0.1:9", "/api")
        );
        assert!(split_base("http:///x").is_err());
    }

    #[test]
    fn response_heads_parse() {
        let parsed = parse_head(
            b"HTTP/1.0 404 Not Found\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
        )
        .unwrap();
        assert_eq!(parsed.status, 404);
        assert!(parsed.keep_alive);
        assert_eq!(parsed.framing, Framing::Length(2));
        let parsed = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!parsed.keep_alive);
        assert_eq!(parsed.framing, Framing::UntilClose);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 2 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
    }
}
