//! Robustness: bad input, hostile connections, faulty upstreams and security defaults never
//! take swapd down or lose a request silently. Every case checks the answer it gets (a clear
//! 4xx/5xx, or a closed connection for unparseable HTTP) and then that a normal request still
//! succeeds.
//!
//! Handler panics are triggered through the fault-injection variable `SWAPD_FAULT_PANIC_PATH`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// Short timeouts so that the guard and the upstream timeout act within a test's patience.
const SHORT_TIMEOUTS: &str = "swapd:\n  headerTimeout: 2\n  upstreamTimeout: 2\n";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What came back on a raw connection.
struct Raw {
    bytes: Vec<u8>,
    /// The server closed the connection (EOF or reset) before `timeout`.
    closed: bool,
    /// A complete response (head plus its framed body) arrived.
    complete: bool,
    elapsed: Duration,
}

impl Raw {
    fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        let line = text.lines().next()?;
        let mut parts = line.split(' ');
        let version = parts.next()?;
        if !version.starts_with("HTTP/1.") {
            return None;
        }
        parts.next()?.parse().ok()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
    /// The start of the answer, for messages.
    fn head(&self) -> String {
        self.text().chars().take(400).collect()
    }
    /// Neither an answer nor a close: the request hangs.
    fn hung(&self) -> bool {
        !self.closed && !self.complete
    }
    fn body_json(&self) -> Option<Value> {
        let text = self.text();
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }
}

/// Whether `bytes` hold one complete HTTP response (Content-Length or chunked framing).
fn response_complete(bytes: &[u8]) -> bool {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let body = &bytes[head_end + 4..];
    if let Some(length) = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
    {
        return body.len() >= length;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    // 1xx, 204 and 304 have no body; anything else without framing ends at EOF.
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    status < 200 || status == 204 || status == 304
}

/// Reads from `stream` until a complete response, EOF/reset, or `timeout`.
fn read_response(stream: &mut TcpStream, timeout: Duration, started: Instant) -> Raw {
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let mut closed = false;
    loop {
        if response_complete(&bytes) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream
            .set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("read timeout");
        match stream.read(&mut buffer) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    Raw {
        complete: response_complete(&bytes),
        bytes,
        closed,
        elapsed: started.elapsed(),
    }
}

/// Sends `request` on a new connection (optionally half-closing it) and reads the answer.
fn exchange(addr: &str, request: &[u8], half_close: bool, timeout: Duration) -> Raw {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    // The server may close early on oversized input; what it answered is still read below.
    let _ = stream.write_all(request);
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    read_response(&mut stream, timeout, started)
}

fn post_request(path: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: swapd\r\nConnection: close\r\n{extra_headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: swapd\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A normal request right after a bad one must succeed at once. There is no retry on 429: the
/// previous request's slot must already be free when its answer (error or not) has ended, and a
/// 429 here is the "slot released too late" bug (see
/// `sequential_requests_are_not_refused_by_a_released_slot`) or a leaked slot.
fn assert_still_serving(daemon: &Daemon, model: &str, after: &str) {
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat(model));
    assert_eq!(
        reply.status, 200,
        "after {after}: a normal request to '{model}' got {}: {}",
        reply.status, reply.body
    );
    assert_eq!(reply.json()["model_served"], model, "after {after}");
}

/// A streamed chat request on a raw socket.
fn open_chat_stream(addr: &str, body: &Value) -> TcpStream {
    open_stream(addr, "/v1/chat/completions", body)
}

/// swapd's JSON error envelope.
fn assert_error_envelope(raw: &Raw, what: &str) {
    let body = raw
        .body_json()
        .unwrap_or_else(|| panic!("{what}: error body is not JSON: {:?}", raw.head()));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: no error message in {body}"
    );
}

/// Threads and resident memory (KiB) of a process, from /proc/<pid>/status.
fn proc_status(pid: u32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| -> usize {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("Threads:"), field("VmRSS:"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

fn alive(daemon: &mut Daemon) -> bool {
    matches!(daemon.child.try_wait(), Ok(None))
}

/// Reads a streamed response until EOF, the terminating chunk, or `deadline`.
fn read_stream(stream: &mut TcpStream, timeout: Duration) -> Raw {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let mut closed = false;
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        match stream.read(&mut buffer) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                bytes.extend_from_slice(&buffer[..n]);
                if bytes.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    Raw {
        complete: bytes.ends_with(b"0\r\n\r\n"),
        bytes,
        closed,
        elapsed: started.elapsed(),
    }
}

/// Whether the server has closed `stream` (EOF or reset), without blocking.
fn server_closed(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buffer = [0u8; 512];
    let closed = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(_) => continue, // An error response before the close: keep reading.
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

// ---------------------------------------------------------------------------------------------
// Bad HTTP and bad bodies
// ---------------------------------------------------------------------------------------------

/// Runs each raw case on its own connection, in parallel (several of them are only ended by
/// the connection guard), and checks the answer with `acceptable`; after each case a normal
/// request must succeed.
fn run_raw_cases(
    daemon: &Daemon,
    cases: Vec<(&'static str, Vec<u8>, bool)>,
    timeout: Duration,
    acceptable: fn(&Raw) -> bool,
) {
    let failures = Arc::new(Mutex::new(Vec::new()));
    thread::scope(|scope| {
        for (name, request, half_close) in cases {
            let failures = failures.clone();
            scope.spawn(move || {
                let raw = exchange(&daemon.addr, &request, half_close, timeout);
                if !acceptable(&raw) {
                    failures.lock().expect("lock").push(format!(
                        "{name}: status {:?}, closed {}, complete {}, after {:?}: {:?}",
                        raw.status(),
                        raw.closed,
                        raw.complete,
                        raw.elapsed,
                        raw.text().chars().take(300).collect::<String>()
                    ));
                }
                let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
                if reply.status != 200 {
                    failures.lock().expect("lock").push(format!(
                        "{name}: the next normal request got {}: {}",
                        reply.status, reply.body
                    ));
                }
            });
        }
    });
    let failures = failures.lock().expect("lock");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A 4xx (505 for an HTTP version swapd does not speak), or the connection closed.
fn rejected_or_closed(raw: &Raw) -> bool {
    match raw.status() {
        Some(status) => (400..500).contains(&status) || status == 505,
        None => raw.closed,
    }
}

#[test]
fn malformed_request_lines_and_headers_get_400_or_a_close() {
    // The cases run in parallel, each followed by a normal request: room for all of them.
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "    concurrencyLimit: 100\n",
        SHORT_TIMEOUTS,
    ));
    assert_still_serving(&daemon, "a", "start");
    let cases: Vec<(&'static str, Vec<u8>, bool)> = vec![
        ("garbage line", b"GARBAGE\r\n\r\n".to_vec(), false),
        ("method only", b"GET\r\n\r\n".to_vec(), false),
        ("no version", b"GET /\r\n\r\n".to_vec(), false),
        ("unknown version", b"GET / HTTP/9.9\r\n\r\n".to_vec(), false),
        ("HTTP/2 on HTTP/1", b"GET / HTTP/2.0\r\n\r\n".to_vec(), false),
        ("bad version token", b"GET / FOO\r\n\r\n".to_vec(), false),
        ("double spaces", b"GET  /v1/models  HTTP/1.1\r\n\r\n".to_vec(), false),
        ("binary", b"\x00\x01\x02\x03\xff\r\n\r\n".to_vec(), false),
        ("TLS hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), true),
        ("empty lines", b"\r\n\r\n".to_vec(), false),
        ("non-ASCII path", b"GET /v1/\xff\xfe HTTP/1.1\r\n\r\n".to_vec(), false),
        ("header without colon", b"GET /v1/models HTTP/1.1\r\nNoColon\r\n\r\n".to_vec(), false),
        ("non-ASCII header", b"GET /v1/models HTTP/1.1\r\nX-Bad: \xff\xfe\r\n\r\n".to_vec(), false),
        ("unknown expectation", b"GET /v1/models HTTP/1.1\r\nExpect: tea\r\n\r\n".to_vec(), false),
        ("bare LF line ends", b"GET /v1/models HTTP/1.1\nHost: x\n\n".to_vec(), false),
        (
            "unknown method",
            b"BREW /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            false,
        ),
        (
            "chat with GET",
            b"GET /v1/chat/completions HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            false,
        ),
        (
            "non-numeric Content-Length",
            post_request("/v1/chat/completions", "Content-Length: abc\r\n", b""),
            false,
        ),
        (
            "negative Content-Length",
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\nConnection: close\r\n\r\n{}".to_vec(),
            false,
        ),
        (
            "conflicting Content-Lengths",
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 900\r\nConnection: close\r\n\r\n{}".to_vec(),
            false,
        ),
        (
            "bad chunk size",
            b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n".to_vec(),
            false,
        ),
        ("request line cut short", b"GET /v1/mod".to_vec(), true),
        ("headers cut short", b"GET /v1/models HTTP/1.1\r\nHost: x".to_vec(), true),
    ];
    run_raw_cases(&daemon, cases, Duration::from_secs(10), rejected_or_closed);
    assert_still_serving(&daemon, "a", "all malformed requests");
}

#[test]
fn invalid_bodies_get_400_with_an_error_envelope() {
    let daemon = Daemon::start(&simple_config(&["a"], "", SHORT_TIMEOUTS));
    assert_still_serving(&daemon, "a", "start");
    let deep = format!(
        "{{\"model\":\"a\",\"x\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let json_cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", b"".to_vec()),
        ("not JSON", b"{not json".to_vec()),
        (
            "truncated JSON",
            b"{\"model\":\"a\",\"messages\":[".to_vec(),
        ),
        ("JSON array", b"[{\"model\":\"a\"}]".to_vec()),
        ("JSON string", b"\"a\"".to_vec()),
        ("JSON null", b"null".to_vec()),
        ("model is a number", b"{\"model\":5}".to_vec()),
        ("model is null", b"{\"model\":null}".to_vec()),
        ("model is true", b"{\"model\":true}".to_vec()),
        ("model is an array", b"{\"model\":[\"a\"]}".to_vec()),
        ("model is an object", b"{\"model\":{\"id\":\"a\"}}".to_vec()),
        ("model is empty", b"{\"model\":\"\"}".to_vec()),
        ("model is blank", b"{\"model\":\"   \"}".to_vec()),
        ("no model", b"{\"messages\":[]}".to_vec()),
        ("invalid UTF-8 body", b"\xff\xfe\x00\x01".to_vec()),
        ("invalid UTF-8 in model", b"{\"model\":\"a\xff\"}".to_vec()),
        ("lone surrogate escape", b"{\"model\":\"\\ud800\"}".to_vec()),
        ("trailing garbage", b"{\"model\":\"a\"} trailing".to_vec()),
        ("NUL bytes", b"{\"model\":\"a\0\"}".to_vec()),
    ];
    for (name, body) in json_cases {
        let raw = exchange(
            &daemon.addr,
            &post_request(
                "/v1/chat/completions",
                "Content-Type: application/json\r\n",
                &body,
            ),
            false,
            Duration::from_secs(10),
        );
        assert_eq!(raw.status(), Some(400), "{name}: {}", raw.head());
        assert_error_envelope(&raw, name);
        assert_still_serving(&daemon, "a", name);
    }
    // Valid JSON nested 100 000 deep in a field swapd does not read: forwarding it or refusing
    // it are both fine, as long as nothing overflows a stack.
    let raw = exchange(
        &daemon.addr,
        &post_request("/v1/chat/completions", "", deep.as_bytes()),
        false,
        Duration::from_secs(10),
    );
    assert!(
        matches!(raw.status(), Some(200) | Some(400)),
        "deep nesting: {}",
        raw.head()
    );
    assert_still_serving(&daemon, "a", "deep nesting");
    let unknown = exchange(
        &daemon.addr,
        &post_request("/v1/chat/completions", "", b"{\"model\":\"nope\"}"),
        false,
        Duration::from_secs(10),
    );
    assert_eq!(unknown.status(), Some(404), "{}", unknown.text());
    assert_error_envelope(&unknown, "unknown model");
    assert_still_serving(&daemon, "a", "unknown model");

    let part = |name: &str, value: &str| {
        format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
    };
    let multipart_cases: Vec<(&str, String, String)> = vec![
        (
            "no model field",
            "multipart/form-data; boundary=B".into(),
            format!("{}--B--\r\n", part("file", "abc")),
        ),
        (
            "empty model field",
            "multipart/form-data; boundary=B".into(),
            format!("{}--B--\r\n", part("model", "")),
        ),
        (
            "wrong boundary",
            "multipart/form-data; boundary=OTHER".into(),
            format!("{}--B--\r\n", part("model", "a")),
        ),
        (
            "no boundary parameter",
            "multipart/form-data".into(),
            format!("{}--B--\r\n", part("model", "a")),
        ),
        (
            "empty boundary",
            "multipart/form-data; boundary=".into(),
            format!("{}--B--\r\n", part("model", "a")),
        ),
        (
            "JSON content type",
            "application/json".into(),
            "{\"model\":\"a\"}".into(),
        ),
        (
            "boundary once",
            "multipart/form-data; boundary=B".into(),
            "--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na".into(),
        ),
        (
            "part without header end",
            "multipart/form-data; boundary=B".into(),
            "--B\r\nContent-Disposition: form-data; name=\"model\"\r\na\r\n--B--\r\n".into(),
        ),
        (
            "empty body",
            "multipart/form-data; boundary=B".into(),
            String::new(),
        ),
    ];
    for (name, content_type, body) in multipart_cases {
        let raw = exchange(
            &daemon.addr,
            &post_request(
                "/v1/audio/transcriptions",
                &format!("Content-Type: {content_type}\r\n"),
                body.as_bytes(),
            ),
            false,
            Duration::from_secs(10),
        );
        assert_eq!(raw.status(), Some(400), "multipart {name}: {}", raw.head());
        assert_error_envelope(&raw, name);
        assert_still_serving(&daemon, "a", name);
    }
    // Query routes.
    for (path, status) in [
        ("/props", 400),
        ("/props?model=", 400),
        ("/props?model=%ff%fe", 404),
        ("/props?model=nope", 404),
        ("/v1/audio/voices?x=1", 400),
    ] {
        let raw = exchange(
            &daemon.addr,
            &get_request(path),
            false,
            Duration::from_secs(10),
        );
        assert_eq!(raw.status(), Some(status), "{path}: {}", raw.head());
        assert_error_envelope(&raw, path);
        assert_still_serving(&daemon, "a", path);
    }
}

#[test]
fn bodies_over_the_limit_get_413() {
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        "swapd:\n  headerTimeout: 2\n  maxBodyBytes: 1000\n",
    ));
    assert_still_serving(&daemon, "a", "start");
    let big = format!("{{\"model\":\"a\",\"pad\":\"{}\"}}", "x".repeat(5000));
    // Sent whole, with Content-Length.
    let raw = exchange(
        &daemon.addr,
        &post_request("/v1/chat/completions", "", big.as_bytes()),
        false,
        Duration::from_secs(10),
    );
    assert_eq!(raw.status(), Some(413), "{}", raw.head());
    assert_error_envelope(&raw, "Content-Length over the limit");
    assert_still_serving(&daemon, "a", "Content-Length over the limit");
    // Chunked, so the size is only known while reading.
    let mut chunked =
        b"POST /v1/chat/completions HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for piece in big.as_bytes().chunks(700) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let raw = exchange(&daemon.addr, &chunked, false, Duration::from_secs(10));
    assert_eq!(raw.status(), Some(413), "{}", raw.head());
    assert_error_envelope(&raw, "chunked over the limit");
    assert_still_serving(&daemon, "a", "chunked over the limit");
    // With Expect: 100-continue the client waits for permission that must not come; the
    // answer is the 413.
    let mut stream = TcpStream::connect(&daemon.addr).expect("connect");
    let started = Instant::now();
    stream
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                big.len()
            )
            .as_bytes(),
        )
        .expect("write");
    let head = read_response(&mut stream, Duration::from_secs(3), started);
    if head.status() == Some(100) || head.hung() {
        // A server may also say 100 Continue (or wait) and judge the body afterwards.
        let _ = stream.write_all(big.as_bytes());
        let raw = read_response(&mut stream, Duration::from_secs(10), started);
        assert!(raw.text().contains(" 413 "), "{}", raw.head());
    } else {
        assert_eq!(head.status(), Some(413), "{}", head.text());
    }
    assert_still_serving(&daemon, "a", "Expect: 100-continue over the limit");
}

/// Regression: `Content-Length: 1000000000000000000` on any request (even `/health`, even
/// without an API key) used to abort swapd: after answering, tiny_http's `EqualReader::drop`
/// drained the unread body with `vec![0; remaining]`, and the allocation failure aborted the
/// process. The vendored `EqualReader` (src/vendor/tiny_http) now drains in small pieces.
#[test]
fn huge_declared_content_length_does_not_kill_swapd() {
    let mut daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        "swapd:\n  headerTimeout: 2\n  maxBodyBytes: 1000\n",
    ));
    assert_still_serving(&daemon, "a", "start");
    for (path, length) in [
        ("/v1/chat/completions", "1000000000000000000"),
        ("/health", "1099511627776"),
        ("/v1/models", "18446744073709551615"),
    ] {
        let started = Instant::now();
        let mut stream = TcpStream::connect(&daemon.addr).expect("connect");
        let _ = stream.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n{{\"model\":\"a\"}}"
            )
            .as_bytes(),
        );
        let _ = stream.shutdown(Shutdown::Write);
        let raw = read_response(&mut stream, Duration::from_secs(10), started);
        // The abort came from dropping the request, which swapd does before it closes the
        // connection (`Connection: close`); a dying process closes it too. So once the close
        // is seen (instead of sleeping a while), the next request is served or finds swapd gone.
        wait_for(
            "swapd to close the connection",
            Duration::from_secs(30),
            || server_closed(&mut stream).then_some(()),
        );
        assert_still_serving(&daemon, "a", &format!("Content-Length {length}"));
        assert!(
            alive(&mut daemon),
            "swapd died on Content-Length {length} for {path}; answer was {:?}",
            raw.head()
        );
        assert!(
            rejected_or_closed(&raw) || raw.status() == Some(200),
            "{path} with Content-Length {length}: {:?}",
            raw.head()
        );
    }
}

/// A client that declares a body over `maxBodyBytes` and then waits for the verdict (as a
/// client doing its own flow control does) gets the 413 without sending the body. Regression:
/// it used to get none, because building the response dropped the request and tiny_http's
/// `EqualReader::drop` first read the whole declared body.
#[test]
fn declared_body_over_the_limit_is_refused_without_reading_it() {
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        "swapd:\n  headerTimeout: 2\n  maxBodyBytes: 1000\n",
    ));
    assert_still_serving(&daemon, "a", "start");
    let raw = exchange(
        &daemon.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nConnection: close\r\nContent-Length: 50000000\r\n\r\n{\"model\":\"a\"",
        false,
        Duration::from_secs(30),
    );
    assert_eq!(
        raw.status(),
        Some(413),
        "no 413 within {:?} (closed {}): {:?}",
        raw.elapsed,
        raw.closed,
        raw.head()
    );
    assert_still_serving(&daemon, "a", "declared body over the limit");
}

/// Content-Length 5000, a complete JSON object of 30 bytes, then the client half-closes: the
/// body is truncated and must not be forwarded as if complete. Regression: `read_body`
/// (src/proxy/mod.rs) used to accept whatever `read_to_end` returned; it now compares it with
/// the declared length.
#[test]
fn truncated_bodies_are_not_forwarded() {
    let daemon = Daemon::start(&simple_config(&["a"], "", SHORT_TIMEOUTS));
    assert_still_serving(&daemon, "a", "start");
    let body = br#"{"model":"a","messages":[]}"#;
    for declared in [500usize, 5000, 2_000_000] {
        let mut request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nConnection: close\r\nContent-Length: {declared}\r\n\r\n"
        )
        .into_bytes();
        request.extend_from_slice(body);
        let raw = exchange(&daemon.addr, &request, true, Duration::from_secs(10));
        match raw.status() {
            None => assert!(raw.closed, "declared {declared}: neither answer nor close"),
            Some(status) => {
                assert!(
                    (400..500).contains(&status),
                    "declared {declared}, sent {}: got {status}, so the truncated body was forwarded: {}",
                    body.len(),
                    raw.head()
                );
            }
        }
        assert_still_serving(
            &daemon,
            "a",
            &format!("truncated body ({declared} declared)"),
        );
    }
    // The same with chunked framing: a chunk of 0x100 bytes announced, 27 sent, then EOF.
    let mut request = b"POST /v1/chat/completions HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n".to_vec();
    request.extend_from_slice(body);
    let raw = exchange(&daemon.addr, &request, true, Duration::from_secs(10));
    assert!(
        rejected_or_closed(&raw),
        "a chunked body cut short was forwarded: {}",
        raw.head()
    );
    assert_still_serving(&daemon, "a", "chunked body cut short");
}

/// Complete requests whose headers made tiny_http read the body differently from its
/// Content-Length. Regression: `Connection: Upgrade` made the body reader the raw socket (read
/// until EOF), and any Transfer-Encoding was taken as chunked (`gzip` alone cannot be framed:
/// RFC 9112 says 400), so both hung until the client gave up. The vendored tiny_http
/// (src/vendor/tiny_http) no longer does either.
#[test]
fn odd_framing_headers_do_not_hang_a_request() {
    let daemon = Daemon::start(&simple_config(&["a"], "", SHORT_TIMEOUTS));
    assert_still_serving(&daemon, "a", "start");
    let body = br#"{"model":"a","messages":[]}"#;
    for (name, headers) in [
        (
            "Connection: Upgrade (h2c)",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
                .to_string(),
        ),
        (
            "Connection: Upgrade (websocket)",
            "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n".to_string(),
        ),
        (
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: gzip\r\n".to_string(),
        ),
    ] {
        let mut request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let raw = exchange(&daemon.addr, &request, false, Duration::from_secs(30));
        assert!(
            !raw.hung(),
            "{name}: no answer and no close after {:?}",
            raw.elapsed
        );
        assert!(
            raw.status().is_some_and(|s| s == 200 || (400..500).contains(&s)) || raw.closed,
            "{name}: {:?}",
            raw.head()
        );
        assert_still_serving(&daemon, "a", name);
    }
}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

#[test]
fn absurd_paths_get_4xx() {
    let daemon = Daemon::start(&simple_config(&["a", "b"], "", SHORT_TIMEOUTS));
    assert_still_serving(&daemon, "a", "start");
    // Long but within the 16 KiB request-line limit (longer lines get a bare 400, below).
    let long = format!("/{}", "a".repeat(8_000));
    let cases: Vec<(&str, u16)> = vec![
        ("/upstream/../..", 400),
        ("/upstream/a/../../b/x", 400),
        ("/upstream/a/..", 400),
        ("/upstream/a/%2e%2e/%2e%2e/b/x", 400),
        ("/upstream/a/%2E%2E/x", 400),
        ("/upstream/a/%2e%2e%2fb/x", 400),
        ("/v1/../running", 400),
        ("/../../etc/passwd", 400),
        ("/api/models/unload/%2e%2e", 400),
        ("/logs/stream/..%2F..%2Fetc", 400),
        ("/upstream/", 404),
        // `/upstream` alone redirects to the UI (llama-swap's route): see `proxy::health_…`.
        ("/upstream/nope/x", 404),
        ("/upstream/a%00/x", 404),
        ("/upstream/%ff/x", 404),
        ("//", 404),
        ("/%00", 404),
        ("*", 404),
        ("http://evil.example/v1/models", 404),
        (&long, 404),
    ];
    let huge = format!("/{}", "a".repeat(100_000));
    let raw = exchange(
        &daemon.addr,
        &get_request(&huge),
        false,
        Duration::from_secs(10),
    );
    assert_eq!(
        raw.status(),
        Some(400),
        "a 100 000-byte path: {}",
        raw.head()
    );
    assert_still_serving(&daemon, "a", "a 100 000-byte path");
    for (path, expected) in cases {
        let raw = exchange(
            &daemon.addr,
            &get_request(path),
            false,
            Duration::from_secs(10),
        );
        let shown: String = path.chars().take(60).collect();
        let status = raw
            .status()
            .unwrap_or_else(|| panic!("{shown}: no answer: {:?}", raw.head()));
        assert!(
            (400..500).contains(&status),
            "{shown}: expected a 4xx ({expected}), got {status}: {}",
            raw.head()
        );
        assert_eq!(status, expected, "{shown}: {}", raw.head());
        assert_error_envelope(&raw, &shown);
        assert_still_serving(&daemon, "a", &shown);
    }
    assert!(
        !daemon.running_states().iter().any(|(m, _)| m == "b"),
        "no absurd path may start model b"
    );
}

/// Every spelling of `..` is rejected. Regression: the check in `routes::handle`
/// (src/proxy/routes.rs) used to compare case-sensitively and only whole `%2e%2e` pairs, so
/// `%2E%2e`, `%2e%2E`, `.%2e` and `%2e.` reached the upstream (on the model's own server, so an
/// inconsistency rather than an escape: see upstream_paths_cannot_escape_the_model).
/// `is_traversal` now decodes every spelling.
#[test]
fn percent_encoded_traversal_in_any_spelling_gets_400() {
    let daemon = Daemon::start(&simple_config(&["a"], "", SHORT_TIMEOUTS));
    assert_still_serving(&daemon, "a", "start");
    for path in [
        "/upstream/a/%2E%2e/x",
        "/upstream/a/%2e%2E/x",
        "/upstream/a/.%2e/x",
        "/upstream/a/%2e./x",
        "/upstream/a/.%2E/x",
    ] {
        let raw = exchange(
            &daemon.addr,
            &get_request(path),
            false,
            Duration::from_secs(10),
        );
        assert_eq!(raw.status(), Some(400), "{path}: {}", raw.head());
        assert_still_serving(&daemon, "a", path);
    }
}

#[test]
fn upstream_paths_cannot_escape_the_model() {
    let daemon = Daemon::start(&simple_config(&["a", "b"], "", SHORT_TIMEOUTS));
    assert_still_serving(&daemon, "a", "start");
    for path in [
        "/upstream/a/..%2F..%2Fb/x",
        "/upstream/a/..%2f..%2fb/x",
        "/upstream/http://evil/x",
        "/upstream/a/@evil.com/",
        "/upstream/a/%40evil.com/x",
        "/upstream/a//evil.com/x",
        "/upstream/a/http://evil/x",
        "/upstream/a%2F..%2Fb/x",
        "/upstream/a@evil.com/x",
        "/upstream/a:80@evil.com/x",
        "/upstream/a/%2E%2e/b/x",
        "/upstream/a/..;/b/x",
        "/upstream/a/..\\b/x",
        "/upstream/a/%5c..%5cb/x",
        "/upstream/a/x?next=http://evil/",
        "/upstream/a",
        "/upstream//evil.com/x",
    ] {
        let raw = exchange(
            &daemon.addr,
            &get_request(path),
            false,
            Duration::from_secs(10),
        );
        let status = raw
            .status()
            .unwrap_or_else(|| panic!("{path}: no answer: {:?}", raw.head()));
        match status {
            400..=499 => assert_error_envelope(&raw, path),
            300..=399 => {
                let text = raw.text();
                let location = text
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("Location: ")
                            .or_else(|| l.strip_prefix("location: "))
                    })
                    .unwrap_or_else(|| panic!("{path}: redirect without Location: {text}"));
                assert!(
                    location.starts_with("/upstream/a") && !location.starts_with("//"),
                    "{path}: redirect leaves swapd: {location}"
                );
            }
            200..=299 => {
                let body = raw
                    .body_json()
                    .unwrap_or_else(|| panic!("{path}: {}", raw.head()));
                assert_eq!(
                    body["model_served"], "a",
                    "{path} reached something other than model a: {body}"
                );
            }
            other => panic!("{path}: unexpected {other}: {}", raw.head()),
        }
        assert_still_serving(&daemon, "a", path);
    }
    assert!(
        !daemon.running_states().iter().any(|(m, _)| m == "b"),
        "model b must never be reached through /upstream/a/..."
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile connections
// ---------------------------------------------------------------------------------------------

#[test]
fn idle_and_dawdling_connections_are_closed_after_the_header_timeout() {
    let daemon = Daemon::start(&simple_config(&["a"], "", SHORT_TIMEOUTS));
    assert_still_serving(&daemon, "a", "start");
    // Taken before the first connection, so "closed after" can only overstate the time each
    // connection was open (the lower bound below stays safe on a slow machine).
    let started = Instant::now();
    let mut silent = TcpStream::connect(&daemon.addr).expect("connect");
    let mut partial = TcpStream::connect(&daemon.addr).expect("connect");
    partial.write_all(b"GET /v1/mo").expect("write");
    let mut headers_only = TcpStream::connect(&daemon.addr).expect("connect");
    headers_only
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    // A kept-alive connection after a complete request.
    let mut kept = TcpStream::connect(&daemon.addr).expect("connect");
    kept.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let answered = read_response(&mut kept, Duration::from_secs(30), Instant::now());
    assert_eq!(answered.status(), Some(200), "{}", answered.text());
    let mut open: Vec<(&str, &mut TcpStream)> = vec![
        ("silent", &mut silent),
        ("partial request line", &mut partial),
        ("headers without end", &mut headers_only),
        ("kept alive", &mut kept),
    ];
    let mut closed_at = Vec::new();
    // A hang guard only, far above 2×headerTimeout: how soon they close is not timed here.
    while !open.is_empty() && started.elapsed() < Duration::from_secs(60) {
        let mut index = 0;
        while index < open.len() {
            if server_closed(open[index].1) {
                let (name, _) = open.remove(index);
                closed_at.push((name, started.elapsed()));
            } else {
                index += 1;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<&str> = open.iter().map(|(name, _)| *name).collect();
    assert!(left.is_empty(), "still open after 60 s: {left:?}");
    for (name, at) in &closed_at {
        assert!(
            *at >= Duration::from_millis(1500),
            "{name} closed after {at:?}, before headerTimeout (2 s)"
        );
    }
    assert_still_serving(&daemon, "a", "idle connections");
}

#[test]
fn slowloris_connections_are_cut_and_do_not_starve_others() {
    const COUNT: usize = 50;
    // A longer headerTimeout than elsewhere, so that the ordering check below has seconds of
    // slack on a loaded machine.
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        "logLevel: debug\nswapd:\n  headerTimeout: 5\n  upstreamTimeout: 2\n",
    ));
    assert_still_serving(&daemon, "a", "start");
    let stop = Arc::new(AtomicBool::new(false));
    // Rounds of one byte sent on every connection, and connections the server has closed.
    let rounds = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicUsize::new(0));
    let addr = daemon.addr.clone();
    let trickler = {
        let (stop, rounds, cut) = (stop.clone(), rounds.clone(), cut.clone());
        thread::spawn(move || {
            let started = Instant::now();
            let mut sockets: Vec<(usize, TcpStream)> = (0..COUNT)
                .map(|i| (i, TcpStream::connect(&addr).expect("connect")))
                .collect();
            let request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let mut position = 0usize;
            let mut closed: Vec<(usize, Duration)> = Vec::new();
            while !sockets.is_empty() && !stop.load(Ordering::Relaxed) {
                // One header byte per connection every 500 ms, never finishing the headers.
                let byte = if position < request.len() {
                    request[position]
                } else {
                    b'a'
                };
                position += 1;
                let mut index = 0;
                while index < sockets.len() {
                    let gone = sockets[index].1.write_all(&[byte]).is_err()
                        || server_closed(&mut sockets[index].1);
                    if gone {
                        let (id, _) = sockets.remove(index);
                        closed.push((id, started.elapsed()));
                        cut.fetch_add(1, Ordering::SeqCst);
                    } else {
                        index += 1;
                    }
                }
                rounds.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(500));
            }
            (closed, sockets.len())
        })
    };
    // Normal clients are served while every slowloris connection is open and trickling: the
    // order is checked (nothing cut yet when the answer came), not how long it took.
    wait_for(
        "every slowloris connection to have sent two bytes",
        Duration::from_secs(60),
        || (rounds.load(Ordering::SeqCst) >= 2).then_some(()),
    );
    for round in 0..3 {
        let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
        assert_eq!(reply.status, 200, "round {round}: {}", reply.body);
        let models = get(&daemon.url("/v1/models"));
        assert_eq!(models.status, 200);
        if round == 0 {
            assert_eq!(
                cut.load(Ordering::SeqCst),
                0,
                "the first normal request was only served once slowloris connections were cut"
            );
        }
    }
    // A hang guard only, far above 2×headerTimeout (10 s).
    let watchdog = Instant::now();
    while !trickler.is_finished() && watchdog.elapsed() < Duration::from_secs(60) {
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (closed, still_open) = trickler.join().expect("trickler");
    assert_eq!(
        still_open, 0,
        "{still_open} slowloris connections were never closed"
    );
    for (id, at) in &closed {
        assert!(
            *at >= Duration::from_millis(4500),
            "slowloris connection {id} closed after {at:?}, before headerTimeout (5 s); \
             swapd's closing lines:\n{}",
            daemon
                .stderr
                .lock()
                .expect("lock")
                .lines()
                .filter(|line| line.contains("clos") || line.contains("thread"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_still_serving(&daemon, "a", "slowloris");
}

/// Headers complete, then the body stalls (a slowloris on the body). Regression: the guard
/// used to leave connections with a request in progress alone and `read_body`
/// (src/proxy/mod.rs) had no deadline, so `maxConnections` stalled bodies made swapd answer
/// every other request with 503 indefinitely. `read_body` now tells the guard it is reading a
/// body (`ConnectionGuard::reading_body`), and the guard cuts a stalled one.
#[test]
fn stalled_request_bodies_are_timed_out() {
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        "swapd:\n  headerTimeout: 2\n  upstreamTimeout: 2\n  maxConnections: 3\n",
    ));
    assert_still_serving(&daemon, "a", "start");
    let mut stalled = Vec::new();
    for declared in [500usize, 5000, 5000, 5000] {
        let mut stream = TcpStream::connect(&daemon.addr).expect("connect");
        stream
            .write_all(
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n{{\"model\":\"a\""
                )
                .as_bytes(),
            )
            .expect("write");
        stalled.push((declared, stream, Instant::now()));
    }
    // Each stalled request is ended by swapd (an answer or a close), however long that takes
    // on this machine: polled, with only a hang guard.
    for (declared, stream, started) in stalled.iter_mut() {
        let raw = read_response(stream, Duration::from_secs(60), *started);
        assert!(
            !raw.hung(),
            "a body stalled at 12 of {declared} bytes was neither answered nor closed after {:?}",
            raw.elapsed
        );
        if let Some(status) = raw.status() {
            assert!((400..500).contains(&status), "stalled body: {}", raw.head());
        }
    }
    // Then they no longer crowd out everybody else (maxConnections is 3).
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(
        reply.status, 200,
        "after 4 stalled bodies were cut (maxConnections 3): {}",
        reply.body
    );
    assert_still_serving(&daemon, "a", "stalled bodies");
}

/// A stalled body on a request that is answered without reading its body (an unknown route,
/// or the 503 of `maxConnections`). Regression: tiny_http drains an unread body before the
/// answer goes out, and the guard saw a request in progress that was not reading, so it never
/// cut the connection: the thread, and a `maxConnections` slot, were held for good.
#[test]
fn stalled_bodies_of_requests_answered_unread_are_cut() {
    let daemon = Daemon::start(&simple_config(&["a"], "", "swapd:\n  headerTimeout: 2\n"));
    let mut stalled = Vec::new();
    for path in ["/no/such/route", "/unload"] {
        let mut stream = TcpStream::connect(&daemon.addr).expect("connect");
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{{\"model\":\"a\""
                )
                .as_bytes(),
            )
            .expect("write");
        stalled.push((path, stream, Instant::now()));
    }
    for (path, stream, started) in stalled.iter_mut() {
        let raw = read_response(stream, Duration::from_secs(60), *started);
        assert!(
            !raw.hung(),
            "{path}: a body stalled at 11 of 5000 bytes was neither answered nor closed after {:?}",
            raw.elapsed
        );
    }
    assert_still_serving(&daemon, "a", "stalled unread bodies");
}

/// An endless header line. Regression: tiny_http's `read_next_line` had no length limit, so
/// swapd buffered the line until the guard cut the connection after 2×headerTimeout (a release
/// build took 2.1 GB from one connection that way). The vendored reader now limits lines.
#[test]
fn oversized_headers_are_refused_without_buffering_them() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    assert_still_serving(&daemon, "a", "start");
    // An endless header line, as fast as swapd reads it: memory must not follow. The peak
    // (VmHWM) is what counts: the buffer is freed when the connection is cut.
    let baseline_peak = peak_rss(daemon.pid());
    let mut stream = TcpStream::connect(&daemon.addr).expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\nX-Endless: ")
        .expect("write");
    let chunk = vec![b'a'; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < 256 * 1024 * 1024 && started.elapsed() < Duration::from_secs(25) {
        if stream.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    drop(stream);
    let peak = peak_rss(daemon.pid());
    assert!(
        peak < baseline_peak + 32 * 1024,
        "swapd's peak memory grew from {baseline_peak} KiB to {peak} KiB while it read {} MiB of one header line",
        sent >> 20
    );
    assert_still_serving(&daemon, "a", "endless header");

    // One 2 MiB header (Go's net/http, which llama-swap uses, refuses more than 1 MiB).
    let mut request = b"GET /v1/models HTTP/1.1\r\nConnection: close\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let raw = exchange(&daemon.addr, &request, false, Duration::from_secs(20));
    assert!(
        rejected_or_closed(&raw),
        "a 2 MiB header was accepted: {:?}",
        raw.status()
    );
    assert_still_serving(&daemon, "a", "2 MiB header");
}

/// The peak resident memory (VmHWM, KiB) of a process.
fn peak_rss(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmHWM")
}

#[test]
fn abandoned_connections_leave_no_threads_or_memory_behind() {
    const WAVES: usize = 10;
    const PER_WAVE: usize = 200;
    let daemon = Daemon::start(&simple_config(&["a"], "", SHORT_TIMEOUTS));
    let pid = daemon.pid();
    // Warm up: the model runs, every code path has allocated once.
    for _ in 0..20 {
        assert_still_serving(&daemon, "a", "warm-up");
        let mut stream = open_stream(
            &daemon.addr,
            "/v1/chat/completions",
            &json!({"model": "a", "stream": true, "stream_chunks": 2}),
        );
        let _ = read_stream(&mut stream, Duration::from_secs(5));
    }
    // The baseline is taken once tiny_http's and our spare threads have settled: polled until
    // the thread and descriptor counts stay the same for two seconds of samples.
    let (baseline_threads, baseline_rss, baseline_fds) = {
        let mut last = (usize::MAX, usize::MAX);
        let mut stable_since = Instant::now();
        wait_for(
            "swapd's threads to settle",
            Duration::from_secs(120),
            || {
                let (threads, rss) = proc_status(pid);
                let now = (threads, open_fds(pid));
                if now != last {
                    last = now;
                    stable_since = Instant::now();
                    return None;
                }
                (stable_since.elapsed() >= Duration::from_secs(2)).then_some((threads, rss, now.1))
            },
        )
    };
    let body = json!({"model": "a", "stream": true, "stream_chunks": 20, "stream_interval_ms": 20})
        .to_string();
    for wave in 0..WAVES {
        let mut sockets = Vec::with_capacity(PER_WAVE);
        for index in 0..PER_WAVE {
            let Ok(mut stream) = TcpStream::connect(&daemon.addr) else {
                panic!("wave {wave}: connection {index} refused");
            };
            let kind = (wave * PER_WAVE + index) % 7;
            let _ = match kind {
                0 => Ok(()),
                1 => stream.write_all(b"GET /v1/mo"),
                2 => stream.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"),
                3 => stream.write_all(
                    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{\"model\":",
                ),
                4 => stream.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"),
                5 => stream.write_all(
                    format!(
                        "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                ),
                _ => {
                    // Reset instead of FIN on close.
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    // SAFETY: setsockopt on our own socket with a correctly sized value.
                    unsafe {
                        libc::setsockopt(
                            stream.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            &linger as *const _ as *const libc::c_void,
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                    stream.write_all(b"GET /v1/models HTTP/1.1\r\n")
                }
            };
            sockets.push(stream);
        }
        // Leave once the complete requests (kinds 4 and 5) have been dealt with: their answer
        // has started (or, on a loaded machine, the guard cut a connection whose request was
        // not read in time), so some connections are dropped mid-response.
        for (index, stream) in sockets.iter_mut().enumerate() {
            if matches!((wave * PER_WAVE + index) % 7, 4 | 5) {
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                let mut first = [0u8; 1];
                let got = stream.read(&mut first);
                assert!(
                    !matches!(&got, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
                    "wave {wave}: connection {index} got neither an answer nor a close in 30 s"
                );
            }
        }
        drop(sockets);
    }
    // The last wave's streams hold their slots (concurrencyLimit 10 by default) until swapd
    // notices their clients left, at its next write: waited for on swapd_inflight, so that
    // the request below meets free slots and any 429 is a real leak.
    wait_for(
        "the abandoned streams to give their slots back (swapd_inflight 0)",
        Duration::from_secs(60),
        || {
            get(&daemon.url("/metrics"))
                .body
                .lines()
                .any(|line| line.starts_with("swapd_inflight{model=\"a\"} 0"))
                .then_some(())
        },
    );
    assert_still_serving(&daemon, "a", "2000 abandoned connections");
    let settled = Instant::now();
    let (cleaned, last) = loop {
        let (threads, rss) = proc_status(pid);
        let fds = open_fds(pid);
        let now = (threads, rss, fds);
        if threads <= baseline_threads + 10
            && rss < baseline_rss + 20 * 1024
            && fds <= baseline_fds + 10
        {
            break (true, now);
        }
        if settled.elapsed() > Duration::from_secs(60) {
            break (false, now);
        }
        thread::sleep(Duration::from_millis(500));
    };
    assert!(
        cleaned,
        "60 s after 2000 abandoned connections: threads {} (baseline {baseline_threads}), \
         RSS {} KiB (baseline {baseline_rss}), fds {} (baseline {baseline_fds})",
        last.0, last.1, last.2
    );
    eprintln!(
        "abandoned connections: threads {baseline_threads} -> {}, RSS {baseline_rss} -> {} KiB, \
         fds {baseline_fds} -> {}, settled in {:?}",
        last.0,
        last.1,
        last.2,
        settled.elapsed()
    );
    assert_still_serving(&daemon, "a", "cleanup");
    let running = daemon.running_states();
    assert_eq!(running, vec![("a".to_string(), "ready".to_string())]);
}

// ---------------------------------------------------------------------------------------------
// Faulty upstreams
// ---------------------------------------------------------------------------------------------

/// The concurrency limit of 1 proves that a failed request released its slot.
fn limited_config(models: &[&str], extra_top: &str) -> String {
    simple_config(
        models,
        "    concurrencyLimit: 1\n",
        &format!("{SHORT_TIMEOUTS}{extra_top}"),
    )
}

#[test]
fn upstream_crash_mid_stream_ends_the_client_stream_with_an_error() {
    let daemon = Daemon::start(&limited_config(&["a"], ""));
    assert_still_serving(&daemon, "a", "start");
    let pid_before = daemon.pid_of("a").expect("a runs");
    let mut stream = open_chat_stream(
        &daemon.addr,
        &json!({"model": "a", "stream": true, "stream_chunks": 50,
                "stream_interval_ms": 50, "crash_after_chunks": 3}),
    );
    let raw = read_stream(&mut stream, Duration::from_secs(15));
    let text = raw.text();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        raw.closed,
        "the stream must end (closed) within bounds, not hang: after {:?}: {text}",
        raw.elapsed
    );
    assert!(
        text.contains("tok2"),
        "the chunks before the crash arrive: {text}"
    );
    assert!(
        !text.contains("[DONE]"),
        "a crashed stream must not look finished: {text}"
    );
    let sse_error = text.contains("data: {") && text.contains("\"error\"");
    assert!(
        !raw.complete || sse_error,
        "the client must see an error: no terminating chunk, or an SSE error event: {text}"
    );
    // The crashed child is gone; the next request starts a new one and succeeds.
    wait_for(
        "the crashed child to be reaped",
        Duration::from_secs(10),
        || (!pid_alive(pid_before)).then_some(()),
    );
    let reply = wait_for(
        "a request after the crash to succeed",
        Duration::from_secs(15),
        || {
            let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
            (reply.status == 200).then_some(reply)
        },
    );
    assert_eq!(reply.json()["model_served"], "a");
    assert_still_serving(&daemon, "a", "crash mid-stream");
}

#[test]
fn upstream_crash_before_the_first_chunk_gives_an_error_not_a_hang() {
    let daemon = Daemon::start(&limited_config(&["a"], ""));
    assert_still_serving(&daemon, "a", "start");
    let mut stream = open_chat_stream(
        &daemon.addr,
        &json!({"model": "a", "stream": true, "crash_after_chunks": 0}),
    );
    let raw = read_stream(&mut stream, Duration::from_secs(15));
    let text = raw.text();
    assert!(raw.closed || raw.complete, "hung: {text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let status = raw.status().expect("a status line");
    if status == 200 {
        let sse_error = text.contains("\"error\"");
        assert!(!raw.complete || sse_error, "{text}");
    } else {
        assert_eq!(status, 502, "{text}");
    }
    wait_for(
        "a request after the crash to succeed",
        Duration::from_secs(15),
        || (post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status == 200).then_some(()),
    );
}

#[test]
fn upstream_that_never_answers_gives_504_and_releases_the_slot() {
    let daemon = Daemon::start(&limited_config(&["a"], ""));
    assert_still_serving(&daemon, "a", "start");
    for round in 0..2 {
        let started = Instant::now();
        let reply = post_json(
            &daemon.url("/v1/chat/completions"),
            &json!({"model": "a", "hang": true}),
        );
        let elapsed = started.elapsed();
        assert_eq!(reply.status, 504, "round {round}: {}", reply.body);
        assert!(reply.json()["error"]["message"].is_string());
        assert!(
            elapsed >= Duration::from_millis(1500),
            "round {round}: 504 after {elapsed:?}, before upstreamTimeout (2 s)"
        );
        assert_still_serving(&daemon, "a", "a hung upstream");
    }
    // A streaming request whose upstream stalls after the first event: the stream ends with an
    // error within the timeout instead of hanging.
    let mut stream = open_chat_stream(
        &daemon.addr,
        &json!({"model": "a", "stream": true, "stream_chunks": 3, "stream_interval_ms": 8000}),
    );
    // The next event is 8 s away; the 60 s here is a hang guard. That the stream was ended by
    // upstreamTimeout and not by the upstream's next event is shown by its content: tok0 only.
    let raw = read_stream(&mut stream, Duration::from_secs(60));
    let text = raw.text();
    assert!(text.contains("tok0"), "{text}");
    assert!(
        raw.closed,
        "a stalled stream must be ended by upstreamTimeout, not hang: {:?}: {text}",
        raw.elapsed
    );
    assert!(
        !text.contains("tok1"),
        "the stream went on past the stall instead of being ended: {text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(
        !raw.complete || text.contains("\"error\""),
        "the client must see an error: {text}"
    );
    assert_still_serving(&daemon, "a", "a stalled stream");
}

#[test]
fn upstream_answering_garbage_gives_502_and_releases_the_slot() {
    let daemon = Daemon::start(&limited_config(&["a"], ""));
    assert_still_serving(&daemon, "a", "start");
    for stream in [false, true] {
        let reply = post_json(
            &daemon.url("/v1/chat/completions"),
            &json!({"model": "a", "garbage": true, "stream": stream}),
        );
        assert_eq!(reply.status, 502, "stream={stream}: {}", reply.body);
        let error = reply.json();
        assert!(
            error["error"]["message"].is_string(),
            "stream={stream}: {error}"
        );
        assert_still_serving(&daemon, "a", "garbage");
    }
}

/// A test-controlled upstream socket: what it does with each connection is set by `mode`.
struct ScriptedUpstream {
    port: u16,
    mode: Arc<AtomicU8>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<thread::JoinHandle<()>>,
}

const CLOSE_AT_ONCE: u8 = 0;
const READ_THEN_CLOSE: u8 = 1;
const NEVER_ANSWER: u8 = 2;
const ANSWER: u8 = 3;
const HALF_ANSWER: u8 = 4;
/// Stop calling accept(): new connections complete in the kernel's backlog and wait there.
const STOP_ACCEPTING: u8 = 5;

/// Reads one request (head and Content-Length body) from `connection`.
fn read_request(connection: &mut TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    connection
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while !head.ends_with(b"\r\n\r\n") {
        match connection.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let _ = connection.read_exact(&mut body);
}

impl ScriptedUpstream {
    fn start() -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(ANSWER));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (mode, accepted, stop, held) =
                (mode.clone(), accepted.clone(), stop.clone(), held.clone());
            thread::spawn(move || loop {
                while mode.load(Ordering::SeqCst) == STOP_ACCEPTING && !stop.load(Ordering::SeqCst)
                {
                    thread::sleep(Duration::from_millis(20));
                }
                let connection = listener.accept();
                if stop.load(Ordering::SeqCst) {
                    return; // Dropping the listener closes the port.
                }
                let Ok((mut connection, _)) = connection else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                match mode.load(Ordering::SeqCst) {
                    CLOSE_AT_ONCE => drop(connection),
                    READ_THEN_CLOSE => {
                        read_request(&mut connection);
                        drop(connection);
                    }
                    NEVER_ANSWER | STOP_ACCEPTING => {
                        read_request(&mut connection);
                        held.lock().expect("lock").push(connection);
                    }
                    HALF_ANSWER => {
                        read_request(&mut connection);
                        let _ = connection.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\":",
                        );
                        drop(connection);
                    }
                    _ => {
                        read_request(&mut connection);
                        let body = br#"{"model_served":"scripted"}"#;
                        let _ = connection.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        );
                        let _ = connection.write_all(body);
                    }
                }
            })
        };
        ScriptedUpstream {
            port,
            mode,
            accepted,
            stop,
            held,
            thread: Some(thread),
        }
    }

    /// Stops the thread and closes the listening port.
    fn close(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.held.lock().expect("lock").clear();
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.close();
    }
}

/// A model served by a scripted socket (which answers the health probe while in `ANSWER`
/// mode); the process is a fake-upstream on a port nobody uses.
fn scripted_model_config(port: u16) -> String {
    format!(
        "{SHORT_TIMEOUTS}models:\n  s:\n    cmd: {{FAKE}} --port 0 --model s --pid-file {{DIR}}/s.pid\n    proxy: http://127.0.0.1:{port}\n    concurrencyLimit: 1\n"
    )
}

fn scripted_ok(daemon: &Daemon, after: &str) {
    // No retry on 429: a slot still held here would be a release that came too late.
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("s"));
    assert_eq!(reply.status, 200, "after {after}: {}", reply.body);
    assert_eq!(reply.json()["model_served"], "scripted", "after {after}");
}

#[test]
fn upstream_closing_early_gives_502_and_releases_the_slot() {
    let upstream = ScriptedUpstream::start();
    let daemon = Daemon::start(&scripted_model_config(upstream.port));
    scripted_ok(&daemon, "start");
    for (mode, name) in [
        (CLOSE_AT_ONCE, "closed at accept"),
        (READ_THEN_CLOSE, "closed after reading the request"),
        (HALF_ANSWER, "closed half-way through the body"),
    ] {
        upstream.mode.store(mode, Ordering::SeqCst);
        let accepted_before = upstream.accepted.load(Ordering::SeqCst);
        let raw = exchange(
            &daemon.addr,
            &post_request("/v1/chat/completions", "", chat("s").to_string().as_bytes()),
            false,
            Duration::from_secs(10),
        );
        assert!(!raw.hung(), "{name}: hung for {:?}", raw.elapsed);
        if mode == HALF_ANSWER {
            // The status was already sent: the body must visibly end short (a close before
            // the declared 100 bytes), never look complete.
            assert!(
                raw.closed && !raw.complete,
                "{name}: {:?} (closed {})",
                raw.head(),
                raw.closed
            );
        } else {
            assert_eq!(raw.status(), Some(502), "{name}: {}", raw.head());
            assert_error_envelope(&raw, name);
        }
        assert!(
            upstream.accepted.load(Ordering::SeqCst) > accepted_before,
            "{name}: the request never reached the scripted upstream"
        );
        upstream.mode.store(ANSWER, Ordering::SeqCst);
        scripted_ok(&daemon, name);
    }
}

#[test]
fn upstream_that_stops_accepting_gives_504_then_502_when_gone() {
    let mut upstream = ScriptedUpstream::start();
    let daemon = Daemon::start(&scripted_model_config(upstream.port));
    scripted_ok(&daemon, "start");
    // Connections complete in the kernel's backlog but are never accepted or answered.
    upstream.mode.store(STOP_ACCEPTING, Ordering::SeqCst);
    for round in 0..2 {
        let started = Instant::now();
        let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("s"));
        // Round 1 proves the slot was released: with concurrencyLimit 1 a leak would be a 429.
        assert_eq!(reply.status, 504, "round {round}: {}", reply.body);
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "round {round}: 504 after {:?}, before upstreamTimeout (2 s)",
            started.elapsed()
        );
    }
    // With nothing listening at all: a 502 (a refused connection, not a timeout's 504), and the slot is free again afterwards.
    upstream.close();
    for round in 0..2 {
        let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("s"));
        assert_eq!(reply.status, 502, "round {round}: {}", reply.body);
    }
}

/// `checkEndpoint: none` means "ready as soon as spawned", and the request that triggers the
/// start is served. Regression: `Supervisor::start` set the phase to Ready itself while the
/// queue code that called it kept the request only if the phase was Starting, so that first
/// request failed with 503 "could not be started" although the model did start.
#[test]
fn check_endpoint_none_serves_the_request_that_starts_the_model() {
    let upstream = ScriptedUpstream::start();
    let daemon = Daemon::start(&scripted_model_config(upstream.port).replace(
        "    concurrencyLimit: 1\n",
        "    concurrencyLimit: 1\n    checkEndpoint: none\n",
    ));
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("s"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["model_served"], "scripted");
}

#[test]
fn upstream_slow_to_listen_is_waited_for() {
    let config =
        limited_config(&["a"], "").replace("--model a", "--model a --listen-delay-ms 1500");
    let daemon = Daemon::start(&config);
    let started = Instant::now();
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "answered before the upstream listened: {:?}",
        started.elapsed()
    );
    assert_still_serving(&daemon, "a", "slow listen");
}

/// With `concurrencyLimit: 1`, a client that sends its next request as soon as the previous
/// response ended is never refused. Regression: it got 429 now and then (about 1 in 12 for
/// short streams), because the lease was dropped only after `forward` had returned, after the
/// last byte had gone to the client. `forward` (src/proxy/forward.rs) now gives the lease back
/// as soon as the upstream body has been read, and before an error answer is sent; the other
/// tests in this file do not retry on 429, so a late release fails them too.
#[test]
fn sequential_requests_are_not_refused_by_a_released_slot() {
    let daemon = Daemon::start(&limited_config(&["a"], ""));
    assert_still_serving(&daemon, "a", "start");
    let mut refused = 0;
    for index in 0..200 {
        let mut stream = open_stream(
            &daemon.addr,
            "/v1/chat/completions",
            &json!({"model": "a", "stream": true, "stream_chunks": 2, "stream_interval_ms": 0}),
        );
        let raw = read_stream(&mut stream, Duration::from_secs(10));
        match raw.status() {
            Some(200) => assert!(raw.complete, "request {index}: {}", raw.head()),
            Some(429) => refused += 1,
            other => panic!("request {index}: {other:?}: {}", raw.head()),
        }
    }
    assert_eq!(
        refused, 0,
        "{refused} of 200 strictly sequential requests got 429"
    );
}

// ---------------------------------------------------------------------------------------------
// Security defaults
// ---------------------------------------------------------------------------------------------

/// Stops a swapd started by hand when the test ends.
struct Stopper(std::process::Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        kill(self.0.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The machine's address on its default route, if it has one that is not loopback.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Holds an exclusive lock on a file shared by every swapd test run on this machine, so runs
/// that need the fixed port 8080 take turns instead of colliding. Closing the file (on drop)
/// releases the lock.
struct PortLock(#[allow(dead_code)] std::fs::File);

impl PortLock {
    fn port_8080() -> PortLock {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("swapd-test-port-8080.lock"))
            .expect("open the port lock file");
        // SAFETY: flock(2) on a descriptor this struct owns; blocking until the lock is ours.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "cannot lock the port 8080 lock file");
        PortLock(file)
    }
}

/// Runs swapd without `--listen`: the default address must be 127.0.0.1:8080. The port is
/// fixed, so the test waits (bounded) for it to be free and fails loudly if it never is: a
/// busy port is never a silent pass.
#[test]
fn listens_on_loopback_by_default() {
    let _lock = PortLock::port_8080();
    wait_for(
        "port 8080 to be free (this test needs it: swapd's default address)",
        Duration::from_secs(120),
        || {
            (TcpListener::bind("0.0.0.0:8080").is_ok()
                && TcpListener::bind("127.0.0.1:8080").is_ok())
            .then_some(())
        },
    );
    let dir = TempDir::new("loopback");
    let config = simple_config(&["a"], "", "")
        .replace("{FAKE}", FAKE)
        .replace("{DIR}", dir.path().to_str().expect("utf-8"));
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(SWAPD)
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start swapd");
    let stderr = child.stderr.take().expect("stderr");
    let stdout = child.stdout.take().expect("stdout");
    let _stopper = Stopper(child);
    let (tx, rx) = crossbeam_channel::unbounded();
    for pipe in [
        Box::new(stderr) as Box<dyn Read + Send>,
        Box::new(stdout) as Box<dyn Read + Send>,
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let done = line.contains("listening on");
            lines.push(line);
            if done && lines.iter().filter(|l| l.contains("listening on")).count() >= 1 {
                break;
            }
        }
    }
    let listening: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("listening on"))
        .collect();
    assert!(
        listening
            .iter()
            .any(|l| l.contains("http://127.0.0.1:8080")),
        "expected to listen on 127.0.0.1:8080: {lines:?}"
    );
    let health = get("http://127.0.0.1:8080/health");
    assert_eq!((health.status, health.body.as_str()), (200, "OK"));
    // Every host has 127.0.0.2 (all of 127/8 is loopback): a socket bound to 0.0.0.0 answers
    // there, one bound to 127.0.0.1 does not. This check runs everywhere.
    let other_loopback = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 2], 8080)),
        Duration::from_secs(2),
    );
    assert!(
        other_loopback.is_err(),
        "swapd answered on 127.0.0.2:8080, so it listens on more than 127.0.0.1"
    );
    // And, on a host that has one, the address on the default route.
    if let Some(ip) = non_loopback_address() {
        let outside =
            TcpStream::connect_timeout(&SocketAddr::new(ip, 8080), Duration::from_secs(2));
        assert!(
            outside.is_err(),
            "swapd answered on {ip}:8080 without being told to listen there"
        );
    }
}

const KEY: &str = "sk-robust-7f3a9c1e5b";

#[test]
fn api_keys_guard_every_endpoint_but_health() {
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        &format!("apiKeys: [{KEY}]\nlogLevel: debug\n{SHORT_TIMEOUTS}"),
    ));
    let health = get(&daemon.url("/health"));
    assert_eq!((health.status, health.body.as_str()), (200, "OK"));
    let chat_body = chat("a").to_string();
    let multipart = "--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--B--\r\n";
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("GET", "/", "", ""),
        ("GET", "/v1/models", "", ""),
        ("GET", "/models", "", ""),
        ("GET", "/running", "", ""),
        ("GET", "/logs", "", ""),
        ("GET", "/logs/stream", "", ""),
        ("GET", "/logs/stream/proxy", "", ""),
        ("GET", "/logs/stream/upstream", "", ""),
        ("GET", "/logs/stream/a", "", ""),
        ("GET", "/logs/stream?no-history", "", ""),
        ("GET", "/metrics", "", ""),
        ("GET", "/api/metrics", "", ""),
        ("GET", "/api/events", "", ""),
        ("GET", "/api/version", "", ""),
        ("GET", "/unload", "", ""),
        ("POST", "/api/models/unload", "", ""),
        ("POST", "/api/models/unload/a", "", ""),
        ("GET", "/upstream/a/health", "", ""),
        (
            "POST",
            "/upstream/a/v1/chat/completions",
            "application/json",
            &chat_body,
        ),
        ("GET", "/props?model=a", "", ""),
        ("GET", "/v1/audio/voices?model=a", "", ""),
        (
            "POST",
            "/v1/chat/completions",
            "application/json",
            &chat_body,
        ),
        ("POST", "/v1/embeddings", "application/json", &chat_body),
        (
            "POST",
            "/v/chat/completions",
            "application/json",
            &chat_body,
        ),
        (
            "POST",
            "/v1/audio/transcriptions",
            "multipart/form-data; boundary=B",
            multipart,
        ),
        ("GET", "/no/such/route", "", ""),
        ("DELETE", "/upstream/a/x", "", ""),
    ];
    let wrong_keys: [(&str, &str); 5] = [
        ("Authorization", "Bearer sk-robust-wrong"),
        ("Authorization", "Bearer "),
        ("x-api-key", ""),
        ("Authorization", "Basic dXNlcjp3cm9uZw=="), // user:wrong
        ("Authorization", KEY),                      // the key without a scheme
    ];
    for (method, path, content_type, body) in &cases {
        for attempt in 0..=wrong_keys.len() {
            let mut extra = String::new();
            if attempt > 0 {
                let (name, value) = wrong_keys[attempt - 1];
                extra = format!("{name}: {value}\r\n");
            }
            if !content_type.is_empty() {
                extra.push_str(&format!("Content-Type: {content_type}\r\n"));
            }
            let mut request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(body.as_bytes());
            let raw = exchange(&daemon.addr, &request, false, Duration::from_secs(10));
            assert_eq!(
                raw.status(),
                Some(401),
                "{method} {path} (attempt {attempt}) answered without a valid key: {}",
                raw.text().chars().take(300).collect::<String>()
            );
            assert!(
                !raw.text().contains("\"running\"") && !raw.text().contains("model_served"),
                "{method} {path}: data leaked with the 401"
            );
        }
    }
    // Nothing was started, unloaded or otherwise touched by the refused requests.
    let running = get_with_headers(&daemon.url("/running"), &[("x-api-key", KEY)]);
    assert_eq!(running.status, 200);
    assert_eq!(
        running.json()["running"],
        json!([]),
        "a refused request started a model"
    );
    // And with the key everything works.
    let reply = post_with_headers(
        &daemon.url("/v1/chat/completions"),
        &[
            ("Authorization", &format!("Bearer {KEY}")),
            ("Content-Type", "application/json"),
        ],
        chat_body.as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn api_keys_never_appear_in_logs() {
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        &format!("apiKeys: [{KEY}, sk-second-key-0042]\nlogLevel: debug\n{SHORT_TIMEOUTS}"),
    ));
    // Live log readers, subscribed before the traffic.
    let collected: Vec<Arc<Mutex<Vec<u8>>>> =
        ["/logs/stream", "/logs/stream/proxy", "/logs/stream/a"]
            .iter()
            .map(|path| {
                let buffer = Arc::new(Mutex::new(Vec::new()));
                let mut stream = TcpStream::connect(&daemon.addr).expect("connect");
                stream
                    .write_all(
                        format!("GET {path} HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n\r\n")
                            .as_bytes(),
                    )
                    .expect("write");
                let sink = buffer.clone();
                thread::spawn(move || {
                    let mut chunk = [0u8; 8192];
                    stream
                        .set_read_timeout(Some(Duration::from_secs(20)))
                        .expect("timeout");
                    while let Ok(n) = stream.read(&mut chunk) {
                        if n == 0 {
                            break;
                        }
                        sink.lock().expect("lock").extend_from_slice(&chunk[..n]);
                    }
                });
                buffer
            })
            .collect();
    // Subscribed means the 200 head of each stream has arrived.
    for (path, buffer) in ["/logs/stream", "/logs/stream/proxy", "/logs/stream/a"]
        .iter()
        .zip(&collected)
    {
        wait_for(
            &format!("the head of {path}"),
            Duration::from_secs(30),
            || {
                let seen = buffer.lock().expect("lock");
                let text = String::from_utf8_lossy(&seen);
                text.contains("\r\n\r\n").then(|| text.into_owned())
            },
        );
        let head = String::from_utf8_lossy(&buffer.lock().expect("lock")).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    }
    let basic = "dXNlcjpzay1yb2J1c3QtN2YzYTljMWU1Yg=="; // "user:sk-robust-7f3a9c1e5b"
    let bearer = format!("Bearer {KEY}");
    let authenticated: Vec<Vec<(&str, &str)>> = vec![
        vec![("Authorization", bearer.as_str())],
        vec![("x-api-key", KEY)],
        vec![(
            "Authorization",
            "Basic dXNlcjpzay1yb2J1c3QtN2YzYTljMWU1Yg==",
        )],
        vec![("X-Api-Key", "sk-second-key-0042")],
    ];
    for headers in &authenticated {
        let mut with_type = headers.clone();
        with_type.push(("Content-Type", "application/json"));
        let reply = post_with_headers(
            &daemon.url("/v1/chat/completions"),
            &with_type,
            chat("a").to_string().as_bytes(),
        );
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.body);
        let reply = get_with_headers(&daemon.url("/upstream/a/health"), headers);
        assert_eq!(reply.status, 200, "{}", reply.body);
        // A streamed request with the key, on a raw socket.
        let body = json!({"model": "a", "stream": true, "stream_chunks": 2}).to_string();
        let mut request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        let mut stream = TcpStream::connect(&daemon.addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("write");
        let streamed = read_stream(&mut stream, Duration::from_secs(30));
        assert_eq!(
            streamed.status(),
            Some(200),
            "{headers:?}: {}",
            streamed.head()
        );
        assert!(
            streamed.complete && streamed.text().contains("[DONE]"),
            "{headers:?}: the stream did not finish: {}",
            streamed.text()
        );
        // Errors get logged too.
        let reply = post_with_headers(
            &daemon.url("/v1/chat/completions"),
            &with_type,
            br#"{"model":"a","status":500}"#,
        );
        assert_eq!(reply.status, 500);
        let reply = post_with_headers(
            &daemon.url("/v1/chat/completions"),
            &with_type,
            br#"{"model":"nope"}"#,
        );
        assert_eq!(reply.status, 404);
    }
    // Unauthenticated attempts with the key in the wrong place are refused, and logged safely.
    let reply = get_with_headers(&daemon.url("/v1/models"), &[("Authorization", KEY)]);
    assert_eq!(reply.status, 401);
    // An unload (logged at info) with the key.
    let reply = get_with_headers(&daemon.url("/unload"), &[("x-api-key", KEY)]);
    assert_eq!(reply.status, 200);
    // Everything up to the unload has reached the history and the live proxy streams once
    // its last line ("a stopped ...") has: polled instead of waiting a while.
    wait_for(
        "the unload in the log history",
        Duration::from_secs(30),
        || {
            let history = get_with_headers(&daemon.url("/logs"), &[("x-api-key", KEY)]);
            history.body.contains("a stopped").then_some(())
        },
    );
    for (path, buffer) in ["/logs/stream", "/logs/stream/proxy"]
        .iter()
        .zip(&collected)
    {
        wait_for(
            &format!("the unload on {path}"),
            Duration::from_secs(30),
            || {
                String::from_utf8_lossy(&buffer.lock().expect("lock"))
                    .contains("a stopped")
                    .then_some(())
            },
        );
    }

    let history = get_with_headers(&daemon.url("/logs"), &[("x-api-key", KEY)]);
    assert_eq!(history.status, 200);
    assert!(
        history.body.contains("/v1/chat/completions"),
        "the log has the requests (so the check below means something): {}",
        history.body
    );
    let mut sources: Vec<(String, String)> = vec![("/logs".into(), history.body.clone())];
    for (path, buffer) in ["/logs/stream", "/logs/stream/proxy", "/logs/stream/a"]
        .iter()
        .zip(&collected)
    {
        let text = String::from_utf8_lossy(&buffer.lock().expect("lock")).into_owned();
        assert!(text.len() > 100, "{path} streamed nothing: {text:?}");
        sources.push((path.to_string(), text));
    }
    sources.push((
        "swapd stderr".into(),
        daemon.stderr.lock().expect("lock").clone(),
    ));
    for (name, text) in &sources {
        for secret in [KEY, "sk-second-key-0042", basic] {
            assert!(
                !text.contains(secret),
                "{name} contains the secret {secret:?}:\n{text}"
            );
        }
    }
}

#[test]
// Sets a test hook, which only a build with the feature reads.
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn a_panicking_handler_answers_500_and_swapd_keeps_serving() {
    let daemon = Daemon::start_with_env(
        &simple_config(&["m1"], "", ""),
        &[],
        &[("SWAPD_FAULT_PANIC_PATH", "/v1/boom")],
    );
    let addr = daemon.addr.clone();
    // Keep-alive: the panicking request and a normal one on the same connection.
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .write_all(b"GET /v1/boom HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let raw = read_response(&mut stream, Duration::from_secs(10), Instant::now());
    assert_eq!(raw.status(), Some(500), "{}", raw.head());
    assert_error_envelope(&raw, "panicking handler");
    assert!(
        raw.text()
            .to_lowercase()
            .contains("content-type: application/json"),
        "{}",
        raw.head()
    );
    let body = serde_json::to_vec(&chat("m1")).expect("json");
    stream
        .write_all(&post_request("/v1/chat/completions", "", &body))
        .expect("send on the same connection");
    let raw = read_response(&mut stream, Duration::from_secs(20), Instant::now());
    assert_eq!(raw.status(), Some(200), "{}", raw.head());
    // Many panics in a row, on new connections, do not take the daemon down.
    for _ in 0..20 {
        let raw = exchange(
            &addr,
            &get_request("/v1/boom"),
            false,
            Duration::from_secs(10),
        );
        assert_eq!(raw.status(), Some(500), "{}", raw.head());
    }
    assert_still_serving(&daemon, "m1", "20 handler panics");
    let log = get(&daemon.url("/logs")).body;
    assert!(
        log.contains("a request handler panicked"),
        "the panic is logged: {log}"
    );
}

#[test]
fn a_models_response_header_timeout_replaces_upstream_timeout() {
    // No swapd.upstreamTimeout here (its default is 10 minutes): only the model's own
    // `timeouts.responseHeader` can end the wait for a hung upstream.
    let config = simple_config(
        &["a"],
        "    timeouts: {connect: 3, responseHeader: 1, keepalive: 30}\n",
        "",
    );
    let daemon = Daemon::start(&config);
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let started = Instant::now();
    let reply = post_json(
        &daemon.url("/v1/chat/completions"),
        &json!({"model": "a", "hang": true}),
    );
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "504 after {:?}, before the model's 1 s timeout",
        started.elapsed()
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
}
