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

use crate::http::buffer::{self, ReadBuffer};
use crate::http::codec::{self, Decoder, Framing, ResponseHead};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Idle connections kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 64;
/// Idle connections older than this are closed instead of reused.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);
/// A connection idle for less than this is reused without first peeking whether the upstream
/// closed it (one system call less per request under load). Upstreams close idle connections
/// after seconds (cpp-httplib, which llama-server is built on, after 5 s by default), and if
/// one did close within this window the request fails before any response byte and is sent
/// again (see `send_observed`).
const UNCHECKED_REUSE: Duration = Duration::from_secs(1);
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
    /// Shared (not duplicated) with whoever may cut the exchange, e.g. an in-flight entry's
    /// cancel: handing it out costs no system call.
    stream: Arc<TcpStream>,
    read_timeout: Option<Duration>,
    idle_since: Instant,
    /// Bytes read and not yet consumed by the response being read (empty between responses);
    /// initialised once and reused for every response on this connection.
    buffer: ReadBuffer,
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
        observe: &dyn Fn(&Arc<TcpStream>) -> bool,
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
            match exchange(&mut connection, &head, request, false) {
                Ok((head_end, parsed)) => {
                    return Ok(Response::new(
                        self,
                        authority,
                        connection,
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
    /// since the check is a system call; one idle for less than [`UNCHECKED_REUSE`] is not
    /// checked).
    fn take_idle(&self, authority: &str) -> Option<Connection> {
        loop {
            let connection = self
                .idle
                .lock()
                .expect("the pool lock is never held across a panic")
                .get_mut(authority)?
                .pop()?;
            let idle = connection.idle_since.elapsed();
            if idle < UNCHECKED_REUSE || (idle < MAX_IDLE_AGE && !connection.is_stale()) {
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
            match connect_waiting_for_descriptors(address, connect_timeout) {
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
                        stream: Arc::new(stream),
                        read_timeout: None,
                        idle_since: Instant::now(),
                        buffer: ReadBuffer::new(READ_BUFFER),
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

/// Connects to `address`, waiting (within the connect timeout) while the process is out of
/// descriptors: in a burst of streams near the descriptor limit, descriptors come free as
/// streams end, and a request that can wait for one should not fail with a 502.
fn connect_waiting_for_descriptors(
    address: &SocketAddr,
    connect_timeout: Duration,
) -> io::Result<TcpStream> {
    let deadline = Instant::now() + connect_timeout;
    loop {
        match TcpStream::connect_timeout(address, connect_timeout) {
            Err(error)
                if matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
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
    codec::write_request_head(
        &mut head,
        request.method,
        &[base_path, request.path_and_query],
        authority,
        request.headers,
        request.body.map(|body| body.len() as u64),
    );
    if let Some(body) = small_body {
        head.extend_from_slice(body);
    }
    head
}

/// Writes the request and reads until a final (non-1xx) response head is complete, or a 101
/// when `switch` allows one (an upgrade request). Returns its length: the head is at the front
/// of the connection's buffer.
fn exchange(
    connection: &mut Connection,
    head: &[u8],
    request: &Request<'_>,
    switch: bool,
) -> Result<(usize, ResponseHead), UpstreamError> {
    (&*connection.stream).write_all(head).map_err(io_error)?;
    if let Some(body) = request.body.filter(|body| body.len() > COALESCE_BODY) {
        (&*connection.stream).write_all(body).map_err(io_error)?;
    }
    let buffer = &mut connection.buffer;
    buffer.clear();
    let mut searched = 0;
    loop {
        if buffer.data().len() >= MAX_HEAD {
            return Err(UpstreamError::Protocol("response head is too large"));
        }
        let read = buffer
            .fill_from(&mut &*connection.stream)
            .map_err(io_error)?;
        if read == 0 {
            return Err(UpstreamError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )));
        }
        // A response may be preceded by interim (1xx) responses, which are skipped.
        while let Some(end) = codec::find_head_end(buffer.data(), searched) {
            let parsed = codec::parse_response_head(&buffer.data()[..end])
                .map_err(|error| UpstreamError::Protocol(error.as_str()))?;
            if (100..200).contains(&parsed.status) {
                if parsed.status == 101 && switch {
                    return Ok((end, parsed));
                }
                if parsed.status == 101 {
                    return Err(UpstreamError::Protocol("upstream switched protocols"));
                }
                buffer.consume(end);
                searched = 0;
                continue;
            }
            return Ok((end, parsed));
        }
        searched = buffer.data().len().saturating_sub(3);
    }
}

/// A response whose head has arrived; read the body through [`Response::into_body`].
pub struct Response<'c> {
    status: u16,
    /// A copy of the head's bytes, which [`ResponseHead::headers`] index.
    head: Vec<u8>,
    parsed: ResponseHead,
    /// HEAD requests and 204/304 responses have no body whatever the head says.
    no_body: bool,
    body: Body<'c>,
}

impl<'c> Response<'c> {
    fn new(
        client: &'c Client,
        authority: &str,
        mut connection: Connection,
        head_end: usize,
        parsed: ResponseHead,
        head_request: bool,
    ) -> Response<'c> {
        let status = parsed.status;
        let no_body = head_request || status == 204 || status == 304;
        let head = connection.buffer.data()[..head_end].to_vec();
        connection.buffer.consume(head_end);
        let framing = codec::response_framing(&parsed, head_request);
        let reusable = parsed.keep_alive && parsed.framing != Framing::UntilClose;
        let mut body = Body {
            client,
            authority: authority.to_string(),
            connection: Some(connection),
            decoder: Decoder::new(framing),
            until_close: framing == Framing::UntilClose,
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
        self.parsed.headers.iter().filter_map(move |span| {
            let name = std::str::from_utf8(span.name(head)).ok()?;
            let value = std::str::from_utf8(span.value(head)).ok()?;
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
    /// Removes the framing; the unconsumed bytes are the front of the connection's buffer.
    decoder: Decoder,
    /// The body ends when the upstream closes the connection.
    until_close: bool,
    reusable: bool,
}

impl Body<'_> {
    fn finish_if_done(&mut self) {
        if self.decoder.is_done() {
            if let Some(mut connection) = self.connection.take() {
                if self.reusable && connection.buffer.data().is_empty() {
                    connection.buffer.clear();
                    self.client.give_back(&self.authority, connection);
                }
            }
        }
    }

    /// Makes body bytes available at the front of the buffer (reading and removing framing as
    /// needed) and returns how many, 0 at the end of the body.
    fn available(&mut self) -> io::Result<usize> {
        let Some(connection) = self.connection.as_mut() else {
            return if self.decoder.is_done() {
                Ok(0)
            } else {
                Err(truncated())
            };
        };
        // The connection goes back to the pool when the body is dropped, not when its end is
        // read: whoever reads the body may still hold a handle to its socket (an in-flight
        // entry's cancel) and must let go of it first.
        match buffer::next_body_piece(
            &mut connection.buffer,
            &mut &*connection.stream,
            &mut self.decoder,
        ) {
            Ok(0) if self.until_close => {
                self.connection = None;
                Ok(0)
            }
            Ok(available) => Ok(available),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                self.connection = None;
                Err(truncated())
            }
            Err(error) => Err(error),
        }
    }

    /// The next piece of the body, empty at its end. Call [`Body::consume`] after using it.
    pub fn chunk(&mut self) -> io::Result<&[u8]> {
        let available = self.available()?;
        Ok(match &self.connection {
            Some(connection) => &connection.buffer.data()[..available],
            None => &[],
        })
    }

    /// Marks `count` bytes of the last [`Body::chunk`] as used.
    pub fn consume(&mut self, count: usize) {
        self.decoder.consume(count);
        if let Some(connection) = self.connection.as_mut() {
            connection.buffer.consume(count);
        }
        self.finish_if_done();
    }
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

/// `path` with `?query` appended unless the query is empty: an [`Outgoing::path_and_query`].
pub fn path_and_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

mod lent;
#[cfg(test)]
mod tests;
mod upgrade;

pub use lent::Lent;
pub use upgrade::{Switched, Upgrade};
