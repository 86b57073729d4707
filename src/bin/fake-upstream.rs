//! A stand-in for llama-server, used by swapd's integration tests as a real child process.
//!
//! It is deliberately small and dependency-light: a thread per connection and swapd's own
//! HTTP/1 codec (`swapd::http::codec`, the one the upstream client uses) with hand-built writes
//! give full control over what goes on the wire and when it is flushed, which is what the tests
//! need (incremental SSE streams, keep-alive, a connection closed without
//! warning after a stream, garbage bytes, hangs, crashes mid-stream). Flags simulate slow model
//! loading, late binding, ignored SIGTERM, crashes, failures at startup and forked
//! grandchildren. It logs to stdout and stderr so that log capture can be tested too.
//!
//! For the Ollama translation tests it can also record every request it receives
//! (`--request-log`), answer tool calls (streamed in fragments, as OpenAI servers do), return
//! reasoning content when a request enables thinking, return OpenAI-shaped embeddings, report
//! an error inside a stream (`stream_error`), and hold a stream's last event until a file exists
//! (`gate_file`), which lets a test prove that earlier events were delivered before it.

use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::exit;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use swapd::http::buffer::{self, ReadBuffer};
use swapd::http::codec::{self, Decoder, Framing};

#[path = "fake-upstream/ticker.rs"]
mod ticker;
use ticker::Ticker;

/// The largest request head or body accepted; anything bigger is answered with 400.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Command-line options; see the usage text.
#[derive(Clone, Debug)]
struct Opts {
    port: u16,
    model: String,
    startup_delay_ms: u64,
    listen_delay_ms: u64,
    ignore_sigterm: bool,
    exit_after_ms: Option<u64>,
    exit_immediately: Option<i32>,
    fork_grandchild: bool,
    close_after_stream: bool,
    stream_interval_ms: u64,
    stream_chunks: u64,
    pid_file: Option<String>,
    /// Append every request as one JSON line (`{method, path, body, headers}`) to this file.
    request_log: Option<String>,
    /// Allocate this many MiB and touch every page, so the process stays that much resident
    /// (the memory-aware scheduling tests measure it).
    hold_mib: usize,
}

const USAGE: &str = "usage: fake-upstream --port N [--model NAME] [--startup-delay-ms N] \
[--listen-delay-ms N] [--ignore-sigterm] [--exit-after-ms N] [--exit-immediately CODE] \
[--fork-grandchild] [--close-after-stream] [--stream-interval-ms N] [--stream-chunks N] \
[--pid-file PATH] [--request-log PATH] [--hold-mib N] [-m MODEL_FILE]";

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        port: 0,
        model: "fake".into(),
        startup_delay_ms: 0,
        listen_delay_ms: 0,
        ignore_sigterm: false,
        exit_after_ms: None,
        exit_immediately: None,
        fork_grandchild: false,
        close_after_stream: false,
        stream_interval_ms: 10,
        stream_chunks: 5,
        pid_file: None,
        request_log: None,
        hold_mib: 0,
    };
    let mut port = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value` are accepted.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--port" => port = Some(num(&flag, value()?)?),
            "--model" => o.model = value()?,
            "--startup-delay-ms" => o.startup_delay_ms = num(&flag, value()?)?,
            "--listen-delay-ms" => o.listen_delay_ms = num(&flag, value()?)?,
            "--exit-after-ms" => o.exit_after_ms = Some(num(&flag, value()?)?),
            "--exit-immediately" => o.exit_immediately = Some(num(&flag, value()?)?),
            "--stream-interval-ms" => o.stream_interval_ms = num(&flag, value()?)?,
            "--stream-chunks" => o.stream_chunks = num(&flag, value()?)?,
            "--pid-file" => o.pid_file = Some(value()?),
            "--request-log" => o.request_log = Some(value()?),
            "--hold-mib" => o.hold_mib = num(&flag, value()?)?,
            // llama-server's model file: accepted (and ignored) so that configs can name a
            // GGUF file for swapd to read details from.
            "-m" => {
                value()?;
            }
            "--ignore-sigterm" => o.ignore_sigterm = true,
            "--fork-grandchild" => o.fork_grandchild = true,
            "--close-after-stream" => o.close_after_stream = true,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    o.port = port.ok_or(format!("--port is required\n{USAGE}"))?;
    Ok(o)
}

/// Allocates `mib` MiB and writes one non-zero byte per 4 KiB page.
fn hold_memory(mib: usize) -> Vec<u8> {
    let mut block = vec![0u8; mib << 20];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&block);
    block
}

/// Parses a flag's numeric value.
fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: invalid number {v:?}"))
}

fn main() {
    let started = Instant::now();
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            exit(2);
        }
    };
    if let Some(code) = opts.exit_immediately {
        eprintln!("fatal: simulated failure");
        exit(code);
    }
    if opts.ignore_sigterm {
        // SAFETY: installing SIG_IGN has no handler code to run and is async-signal-safe.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    let pid = std::process::id();
    if let Some(path) = &opts.pid_file {
        if let Err(e) = std::fs::write(path, format!("{pid}\n")) {
            eprintln!("fake-upstream: cannot write pid file {path}: {e}");
            exit(2);
        }
    }
    eprintln!("fake-upstream: starting model {} (pid {pid})", opts.model);
    if opts.fork_grandchild {
        // The grandchild inherits stdout and stderr, so the pipes stay open after we die.
        match std::process::Command::new("sleep").arg("1000").spawn() {
            Ok(child) => eprintln!("fake-upstream: spawned grandchild pid {}", child.id()),
            Err(e) => eprintln!("fake-upstream: cannot spawn grandchild: {e}"),
        }
    }
    if let Some(ms) = opts.exit_after_ms {
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            eprintln!("fake-upstream: simulated crash after {ms} ms");
            exit(3);
        });
    }
    // Kept until the process exits; written page by page so every page is really resident
    // (an untouched allocation would only reserve address space).
    let held = hold_memory(opts.hold_mib);
    if !held.is_empty() {
        eprintln!("fake-upstream: holding {} MiB resident", opts.hold_mib);
    }
    thread::sleep(Duration::from_millis(opts.listen_delay_ms));
    let listener = match TcpListener::bind(("127.0.0.1", opts.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-upstream: cannot bind 127.0.0.1:{}: {e}", opts.port);
            exit(1);
        }
    };
    // The system's largest accept queue (std asks for 128), so that a burst of thousands of
    // upstream connections from swapd (the scale benchmark) is not refused or delayed.
    // SAFETY: listen() on our own listening socket only changes its backlog; the kernel caps
    // the value at net.core.somaxconn.
    unsafe {
        libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), libc::c_int::MAX);
    }
    // With `--port 0` the kernel picks the port; report the real one.
    let port = listener.local_addr().map_or(opts.port, |a| a.port());
    println!("fake-upstream: listening on 127.0.0.1:{port}");
    let ctx = Arc::new((opts, started));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let ctx = Arc::clone(&ctx);
        thread::spawn(move || {
            // Errors here only mean the client went away.
            let _ = serve_connection(stream, &ctx.0, ctx.1);
        });
    }
}

/// One parsed request.
struct Request {
    method: String,
    target: String,
    /// Whether the client lets the connection carry another request.
    keep_alive: bool,
    /// Lowercased names, in order of arrival.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn query(&self, key: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// The body as JSON, or as a string when it is not JSON.
    fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }

    fn headers_json(&self) -> Map<String, Value> {
        self.headers
            .iter()
            .map(|(n, v)| (n.clone(), Value::String(v.clone())))
            .collect()
    }

    fn wants_close(&self) -> bool {
        !self.keep_alive
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads the next request; `Ok(None)` when the client closed the connection between requests.
fn read_request(
    buf: &mut ReadBuffer,
    r: &mut &TcpStream,
    w: &mut &TcpStream,
) -> io::Result<Option<Request>> {
    let Some(head_len) = buffer::read_head(buf, r, MAX_HEAD)? else {
        return Ok(None);
    };
    let head = &buf.data()[..head_len];
    let parsed = codec::parse_request_head(head).map_err(|e| bad(e.to_string()))?;
    let text =
        |(start, end): (usize, usize)| String::from_utf8_lossy(&head[start..end]).into_owned();
    let mut req = Request {
        method: text(parsed.method),
        target: text(parsed.target),
        keep_alive: parsed.keep_alive,
        headers: parsed
            .headers
            .iter()
            .map(|h| (text(h.name).to_ascii_lowercase(), text(h.value)))
            .collect(),
        body: Vec::new(),
    };
    buf.consume(head_len);
    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    if matches!(parsed.framing, Framing::Length(len) if len > MAX_BODY as u64) {
        return Err(bad("body too large"));
    }
    let mut decoder = Decoder::new(parsed.framing);
    let body = &mut req.body;
    buffer::read_body(buf, r, &mut decoder, |piece| {
        if body.len() + piece.len() > MAX_BODY {
            return Err(bad("body too large"));
        }
        body.extend_from_slice(piece);
        Ok(())
    })?;
    Ok(Some(req))
}

/// Writes a complete response with a Content-Length body in one write.
fn respond(
    w: &mut &TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    respond_with(w, status, &[("Content-Type", ctype)], body, close)
}

/// [`respond`] with any headers.
fn respond_with(
    w: &mut &TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + body.len());
    codec::write_response_head(
        &mut out,
        status,
        headers,
        Framing::Length(body.len() as u64),
        close,
    );
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

fn respond_json(w: &mut &TcpStream, status: u16, v: &Value, close: bool) -> io::Result<()> {
    respond(
        w,
        status,
        "application/json",
        v.to_string().as_bytes(),
        close,
    )
}

/// Starts a chunked response; every `chunk` call is one flushed HTTP chunk.
fn start_chunked(w: &mut &TcpStream, ctype: &str) -> io::Result<()> {
    let mut head = Vec::with_capacity(256);
    codec::write_response_head(
        &mut head,
        200,
        &[("Content-Type", ctype), ("Cache-Control", "no-cache")],
        Framing::Chunked,
        false,
    );
    w.write_all(&head)?;
    w.flush()
}

fn chunk(w: &mut &TcpStream, data: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(data.len() + 24);
    codec::encode_chunk(&mut out, data);
    w.write_all(&out)?;
    w.flush()
}

fn end_chunked(w: &mut &TcpStream) -> io::Result<()> {
    w.write_all(codec::LAST_CHUNK)?;
    w.flush()
}

fn timings(n: u64) -> Value {
    json!({"prompt_n": 25, "prompt_ms": 13.0, "predicted_n": n, "predicted_ms": 17.0,
           "prompt_per_second": 1923.0, "predicted_per_second": 294.1, "cache_n": 3})
}

fn usage(n: u64) -> Value {
    json!({"prompt_tokens": 25, "completion_tokens": n, "total_tokens": 25 + n})
}

/// Serves requests on one connection until either side closes it.
fn serve_connection(stream: TcpStream, opts: &Opts, started: Instant) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Reading and writing through one descriptor (`&TcpStream` is both `Read` and `Write`):
    // a connection costs the fixture one descriptor, so a burst of thousands of streams (the
    // scale benchmark, near the descriptor limit) is not refused here.
    let mut w = &stream;
    let mut r = &stream;
    let mut buf = ReadBuffer::new(16 * 1024);
    loop {
        let req = match read_request(&mut buf, &mut r, &mut w) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                eprintln!("fake-upstream: bad request: {e}");
                let body = json!({"error": {"code": 400, "message": e.to_string()}});
                return respond_json(&mut w, 400, &body, true);
            }
            Err(e) => return Err(e),
        };
        println!(
            "fake-upstream[{}]: {} {} ({} bytes)",
            opts.model,
            req.method,
            req.target,
            req.body.len()
        );
        if let Some(path) = &opts.request_log {
            log_request(path, &req);
        }
        if let Some(protocol) = req.header("upgrade") {
            return upgrade(&req, protocol, &stream, &buf);
        }
        let keep_alive = handle(&req, &mut w, opts, started)? && !req.wants_close();
        if !keep_alive {
            let _ = w.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

/// An upgrade request: at `/ws`, a `101` that switches to an echo of every byte (after a
/// `welcome` line sent at once); anywhere else, `426`.
fn upgrade(req: &Request, protocol: &str, stream: &TcpStream, buf: &ReadBuffer) -> io::Result<()> {
    let mut w = stream;
    if req.path() != "/ws" {
        let body = json!({"error": {"code": 426, "message": "upgrades only at /ws"}});
        return respond_json(&mut w, 426, &body, true);
    }
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\nConnection: Upgrade\r\nX-Upgraded-Target: {}\r\n\r\nwelcome\n",
        req.target
    );
    w.write_all(head.as_bytes())?;
    // Bytes the client sent after its head are echoed first.
    w.write_all(buf.data())?;
    io::copy(&mut &*stream, &mut w)?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}

/// Appends one request to the request log (a JSON line), for tests to see what swapd sent.
fn log_request(path: &str, req: &Request) {
    let (body, headers) = (req.body_json(), req.headers_json());
    let line = json!({"method": req.method, "path": req.target, "body": body, "headers": headers});
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        eprintln!("fake-upstream: cannot write the request log {path}: {e}");
    }
}

/// The tool call this fixture makes when a chat request offers tools: the first tool, with
/// the last message's text as its argument.
fn tool_call_for(body: &Value) -> Option<(String, String)> {
    let tool = body.get("tools")?.as_array()?.first()?;
    let name = tool.pointer("/function/name")?.as_str()?.to_string();
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .map(|c| match c {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    Some((name, json!({ "echo": last }).to_string()))
}

fn thinking_enabled(body: &Value) -> bool {
    body.pointer("/chat_template_kwargs/enable_thinking")
        .and_then(Value::as_bool)
        == Some(true)
}

/// Waits until `path` exists (bounded, so a broken test cannot leave this hanging forever).
fn wait_for_gate(path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(path).exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
}

/// Answers one request; returns whether the connection may be reused.
fn handle(req: &Request, w: &mut &TcpStream, opts: &Opts, started: Instant) -> io::Result<bool> {
    let close = req.wants_close();
    let path = req.path();
    if req.method != "POST" {
        if path == "/health" {
            let loading = started.elapsed() < Duration::from_millis(opts.startup_delay_ms);
            let (status, state) = if loading {
                (503, "loading")
            } else {
                (200, "ok")
            };
            respond_json(w, status, &json!({ "status": state }), close)?;
        } else if path == "/slow" {
            let n = req
                .query("chunks")
                .and_then(|v| v.parse().ok())
                .unwrap_or(opts.stream_chunks);
            let ms = req
                .query("interval_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(opts.stream_interval_ms);
            start_chunked(w, "text/plain")?;
            for i in 0..n {
                if i > 0 {
                    thread::sleep(Duration::from_millis(ms));
                }
                chunk(w, format!("line {i}\n").as_bytes())?;
            }
            end_chunked(w)?;
        } else {
            respond_json(w, 200, &echo(req, opts), close)?;
        }
        return Ok(true);
    }

    if path == "/v1/audio/transcriptions" || path == "/v1/images/edits" {
        let n = req.body.len();
        let body = json!({
            "text": format!("The length of the file is {n} bytes"),
            "model_served": opts.model,
            "content_type": req.header("content-type").unwrap_or(""),
            "body_len": n,
            "path": req.target,
        });
        respond_json(w, 200, &body, close)?;
        return Ok(true);
    }

    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let field = |k: &str| body.get(k).and_then(Value::as_u64);
    if body.get("hang").and_then(Value::as_bool) == Some(true) {
        // Keep the socket open without ever answering; only the client or a signal ends this.
        loop {
            thread::sleep(Duration::from_secs(3600));
        }
    }
    if body.get("garbage").and_then(Value::as_bool) == Some(true) {
        w.write_all(b"\x00\xffTHIS IS NOT HTTP\r\n\r\n\x01garbage")?;
        w.flush()?;
        return Ok(false);
    }
    if let Some(status) = field("status").filter(|s| (400..=599).contains(s)) {
        let status = status as u16;
        let err = json!({"error": {"code": status, "message": format!("simulated error {status}"),
                                   "type": "server_error"}});
        // A header of the upstream's own, so tests can check error answers pass through whole.
        let body = err.to_string();
        respond_with(
            w,
            status,
            &[
                ("Content-Type", "application/json"),
                ("X-Fake-Upstream", &opts.model),
            ],
            body.as_bytes(),
            close,
        )?;
        return Ok(true);
    }
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        respond_json(w, 200, &echo(req, opts), close)?;
        return Ok(true);
    }

    let n = field("stream_chunks").unwrap_or(opts.stream_chunks);
    let interval =
        Duration::from_millis(field("stream_interval_ms").unwrap_or(opts.stream_interval_ms));
    let crash_after = field("crash_after_chunks");
    let chunk_event = |delta: Value| {
        let event = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                           "model": opts.model, "choices": [{"index": 0, "delta": delta}]});
        format!("data: {event}\n\n")
    };
    start_chunked(w, "text/event-stream")?;
    if thinking_enabled(&body) {
        chunk(
            w,
            chunk_event(json!({"reasoning_content": "thinking..."})).as_bytes(),
        )?;
    }
    if body.get("stream_error").and_then(Value::as_bool) == Some(true) {
        chunk(w, chunk_event(json!({"content": "partial "})).as_bytes())?;
        let error = json!({"error": {"code": 500, "message": "simulated error inside the stream",
                                     "type": "server_error"}});
        chunk(w, format!("data: {error}\n\n").as_bytes())?;
        end_chunked(w)?;
        return Ok(true);
    }
    let mut finish_reason = "stop";
    if let Some((name, arguments)) = tool_call_for(&body) {
        // OpenAI streams a call's arguments in fragments; a client must join them.
        let (head, tail) = arguments.split_at(arguments.len() / 2);
        let first = json!({"tool_calls": [{"index": 0, "id": "call_fake1", "type": "function",
                                           "function": {"name": name, "arguments": head}}]});
        let second = json!({"tool_calls": [{"index": 0, "function": {"arguments": tail}}]});
        chunk(w, chunk_event(first).as_bytes())?;
        chunk(w, chunk_event(second).as_bytes())?;
        finish_reason = "tool_calls";
    }
    let n = if finish_reason == "tool_calls" { 0 } else { n };
    // Events are due at fixed times from the start, like tokens from a model generating at a
    // steady rate: a late wake-up (a loaded machine) delays one event, not all that follow.
    let stream_started = Instant::now();
    let gated = body.get("gate_file").and_then(Value::as_str).is_some();
    if n > 0 && !interval.is_zero() && crash_after.is_none() && !gated {
        // A plain timed stream: its events are written by the one ticker thread, as
        // llama-server generates every slot's next token in one loop (see `Ticker`).
        Ticker::shared().run(w, &opts.model, n, interval, stream_started)?;
        return Ok(!opts.close_after_stream);
    }
    for i in 0..n {
        if crash_after == Some(i) {
            eprintln!("fake-upstream: simulated crash after {i} chunks");
            exit(4);
        }
        if i > 0 {
            let due = stream_started + interval * i as u32;
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let event = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": opts.model,
                           "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}}]});
        chunk(w, format!("data: {event}\n\n").as_bytes())?;
    }
    if crash_after.is_some_and(|k| k >= n) {
        eprintln!("fake-upstream: simulated crash after {n} chunks");
        exit(4);
    }
    if let Some(gate) = body.get("gate_file").and_then(Value::as_str) {
        println!("fake-upstream: holding the last event until {gate} exists");
        wait_for_gate(gate);
    }
    let last = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": opts.model,
                      "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}],
                      "usage": usage(n), "timings": timings(n)});
    chunk(w, format!("data: {last}\n\n").as_bytes())?;
    chunk(w, b"data: [DONE]\n\n")?;
    end_chunked(w)?;
    // llama-server may drop the connection after a stream without saying so beforehand.
    Ok(!opts.close_after_stream)
}

/// The JSON echo of a request, used for GETs and non-streaming POSTs.
fn echo(req: &Request, opts: &Opts) -> Value {
    let (request_body, headers) = (req.body_json(), req.headers_json());
    let mut v = json!({
        "model_served": opts.model,
        "path": req.target,
        "method": req.method,
        "headers": headers,
        "pid": std::process::id(),
    });
    if req.method == "POST" {
        v["request_body"] = request_body;
        v["usage"] = usage(10);
        v["timings"] = timings(10);
        v["choices"] = json!([{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": format!("hello from {}", opts.model)}}]);
        let body = &v["request_body"].clone();
        if thinking_enabled(body) {
            v["choices"][0]["message"]["reasoning_content"] = json!("thinking...");
        }
        if let Some((name, arguments)) = tool_call_for(body) {
            v["choices"][0]["finish_reason"] = json!("tool_calls");
            v["choices"][0]["message"]["content"] = json!("");
            v["choices"][0]["message"]["tool_calls"] = json!([{"id": "call_fake1",
                "type": "function", "function": {"name": name, "arguments": arguments}}]);
        }
        if req.path() == "/v1/embeddings" {
            // One vector per input, derived from its length, so tests can check the order.
            let inputs: Vec<String> = match body.get("input") {
                Some(Value::String(text)) => vec![text.clone()],
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| i.as_str().unwrap_or_default().to_string())
                    .collect(),
                _ => Vec::new(),
            };
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(index, text)| {
                    json!({"object": "embedding", "index": index,
                           "embedding": [text.len() as f64, 0.0, 1.0]})
                })
                .collect();
            let tokens: usize = inputs.iter().map(String::len).sum();
            v["object"] = json!("list");
            v["data"] = json!(data);
            v["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
        }
    }
    v
}
