//! The harness the end-to-end benchmarks share (`mod common;` in proxy, scale, peers and
//! ollama): process guards that stop children by pid on drop with a watchdog behind them,
//! starting swapd and fake-upstream from `target/release`, free ports and temporary
//! directories, `/proc` readings (CPU ticks, RSS, threads, children), percentiles, and a small
//! keep-alive HTTP/1.1 client built on swapd's own codec (`swapd::http::codec`).
//!
//! It lives in a subdirectory so that cargo does not take it for a benchmark target. Not every
//! benchmark uses every item, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use swapd::http::buffer::{self, ReadBuffer};
use swapd::http::codec::{self, Decoder, Framing};

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Every pid started here, for the watchdog.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A child process stopped (SIGTERM, then SIGKILL after a bounded wait) and reaped when
/// dropped, also when the benchmark panics.
pub struct Proc {
    pub child: Child,
    name: String,
    grace: Duration,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> Proc {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        PIDS.lock().expect("pid list").push(child.id());
        Proc {
            child,
            name: name.to_string(),
            grace: Duration::from_secs(10),
        }
    }

    /// How long SIGTERM is given before SIGKILL (default 10 s).
    pub fn with_grace(mut self, grace: Duration) -> Proc {
        self.grace = grace;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id();
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on a child we spawned and have not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            if let Ok(None) = self.child.try_wait() {
                eprintln!(
                    "bench: {} (pid {pid}) ignored SIGTERM; killing it",
                    self.name
                );
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        PIDS.lock().expect("pid list").retain(|&p| p != pid);
    }
}

/// Kills every process started here and exits if the run takes longer than `limit`.
pub fn start_watchdog(label: &str, limit: Duration) {
    let label = label.to_string();
    thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            thread::sleep(limit);
            eprintln!("{label}: watchdog: the run took longer than {limit:?}; killing everything");
            for &pid in PIDS.lock().expect("pid list").iter() {
                // SAFETY: kill(2) on children this process started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::process::exit(2);
        })
        .expect("watchdog thread");
}

pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release")
}

/// A release binary of this package; `SWAPD_BENCH_SWAPD` swaps in another swapd (an unstripped
/// build for profiling, or an older one to compare).
pub fn binary(name: &str) -> PathBuf {
    if name == "swapd" {
        if let Some(path) = std::env::var_os("SWAPD_BENCH_SWAPD") {
            return PathBuf::from(path);
        }
    }
    let path = bin_dir().join(name);
    if !path.exists() {
        panic!(
            "{} is missing: run `cargo build --release --bins` first",
            path.display()
        );
    }
    path
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// `count` consecutive free ports, for swapd's `startPort`.
pub fn free_port_range(count: u16) -> u16 {
    let seed = (std::process::id() % 10_000) as u16;
    for attempt in 0..1000u16 {
        // Below the ephemeral range (32768 and up), which outgoing connections draw from.
        let base = 20_000 + (seed.wrapping_add(attempt.wrapping_mul(37)) % 12_000);
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range");
}

/// Starts fake-upstream on `port` with output discarded.
pub fn start_fake(port: u16, extra: &[&str]) -> Proc {
    Proc::spawn(
        "fake-upstream",
        Command::new(binary("fake-upstream"))
            .arg("--port")
            .arg(port.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A swapd on `127.0.0.1:0`; `_dir` holds its config.
pub struct Swapd {
    pub proc: Proc,
    pub addr: String,
    pub dir: TempDir,
}

/// Starts swapd with `config` and `env`, and waits (bounded) for its listening line. Its
/// stderr is drained for as long as it runs; with `echo` set, later lines that carry `ERROR`
/// or `WARN` are printed with that prefix.
pub fn start_swapd(config: &str, env: &[(&str, &str)], echo: Option<&'static str>) -> Swapd {
    let dir = TempDir::new("swapd-bench");
    let path = dir.0.join("config.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut proc = Proc::spawn(
        "swapd",
        Command::new(binary("swapd"))
            .arg("--config")
            .arg(&path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let stderr = proc.child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        // Keeps draining stderr so swapd never blocks on it.
        let mut reader = io::BufReader::new(stderr);
        let mut line = String::new();
        let mut sent = false;
        let mut early = String::new();
        loop {
            line.clear();
            match io::BufRead::read_line(&mut reader, &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !sent {
                if let Some(addr) = line.trim().strip_prefix("swapd: listening on http://") {
                    let _ = tx.send(Ok(addr.to_string()));
                    sent = true;
                } else {
                    early.push_str(&line);
                }
            } else if let Some(prefix) = echo {
                if line.contains("ERROR") || line.contains("WARN") {
                    eprint!("{prefix}{line}");
                }
            }
        }
        if !sent {
            let _ = tx.send(Err(early));
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(Ok(addr)) => addr,
        Ok(Err(output)) => panic!("swapd exited before listening:\n{output}"),
        Err(_) => panic!("swapd did not print its listening line within 15 s"),
    };
    Swapd { proc, addr, dir }
}

// ---------------------------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------------------------

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Fields of /proc/<pid>/stat after the command name (index 0 is field 3, the state).
pub fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    stat_fields(&pid.to_string()).map_or(0, |f| {
        f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
    })
}

/// Busy and total ticks of the whole machine (all cores), from /proc/stat.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Pids whose parent is `parent` (swapd's model processes).
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if stat_fields(name).is_some_and(|f| f.get(1) == Some(&u64::from(parent))) {
            pids.push(name.parse().expect("digits"));
        }
    }
    pids
}

/// A value from /proc/<pid>/status (`VmRSS`, `VmHWM` in KiB, `Threads`).
pub fn status_value(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The three load averages, space-separated (`unknown` when /proc/loadavg cannot be read).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// The `p`-th percentile (0 to 100) of sorted values, nearest rank; NaN for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

pub fn median(values: &[f64]) -> f64 {
    percentile(&sorted(values.to_vec()), 50.0)
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

/// The non-streaming chat every latency figure sends (`fast` is the model's name).
pub const CHAT_BODY: &str =
    r#"{"model":"fast","messages":[{"role":"user","content":"Say hello."}],"max_tokens":8}"#;

/// Socket read/write timeout of the client: no wait in a benchmark is unbounded.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response head the client accepts.
const MAX_HEAD: usize = 1 << 20;

/// One keep-alive connection; responses are framed and decoded by swapd's codec.
pub struct Client {
    pub stream: TcpStream,
    buffer: ReadBuffer,
}

/// What the benchmarks look at in a response.
pub struct Response {
    pub status: u16,
    /// The connection cannot carry another request.
    pub close: bool,
    pub body_bytes: usize,
}

pub fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Client {
    pub fn connect(addr: &str) -> io::Result<Client> {
        let addr: SocketAddr = addr.parse().map_err(|_| invalid("bad address"))?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Client {
            stream,
            buffer: ReadBuffer::new(16 * 1024),
        })
    }

    pub fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.stream.write_all(request)
    }

    /// Reads one response; `on_body` sees the decoded body piece by piece as it arrives.
    pub fn read_response(&mut self, mut on_body: impl FnMut(&[u8])) -> io::Result<Response> {
        let head_len = buffer::read_head(&mut self.buffer, &mut self.stream, MAX_HEAD)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))?;
        let head = codec::parse_response_head(&self.buffer.data()[..head_len])
            .map_err(buffer::codec_io_error)?;
        self.buffer.consume(head_len);
        let framing = codec::response_framing(&head, false);
        let mut decoder = Decoder::new(framing);
        let mut body_bytes = 0;
        buffer::read_body(&mut self.buffer, &mut self.stream, &mut decoder, |piece| {
            body_bytes += piece.len();
            on_body(piece);
            Ok(())
        })?;
        Ok(Response {
            status: head.status,
            close: !head.keep_alive || framing == Framing::UntilClose,
            body_bytes,
        })
    }

    /// Sends a request and reads the response, discarding the body.
    pub fn exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        self.send(request)?;
        self.read_response(|_| {})
    }
}

/// A JSON POST request.
pub fn post(host: &str, path: &str, body: &str) -> Vec<u8> {
    let mut request = Vec::with_capacity(128 + body.len());
    codec::write_request_head(
        &mut request,
        "POST",
        &[path],
        host,
        b"Content-Type: application/json\r\n",
        Some(body.len() as u64),
    );
    request.extend_from_slice(body.as_bytes());
    request
}

pub fn get(host: &str, path: &str) -> Vec<u8> {
    let mut request = Vec::with_capacity(64);
    codec::write_request_head(&mut request, "GET", &[path], host, b"", None);
    request
}

/// One request on a fresh connection, expecting 200.
pub fn one_shot(addr: &str, request: &[u8]) -> io::Result<Response> {
    let mut client = Client::connect(addr)?;
    let response = client.exchange(request)?;
    if response.status != 200 {
        return Err(invalid(&format!("status {}", response.status)));
    }
    Ok(response)
}

/// Polls `GET /health` until 200 or `timeout`; returns the time it took.
pub fn wait_healthy(addr: &str, timeout: Duration, interval: Duration) -> Option<Duration> {
    let started = Instant::now();
    let request = get(addr, "/health");
    let mut client: Option<Client> = None;
    while started.elapsed() < timeout {
        if client.is_none() {
            client = Client::connect(addr).ok();
        }
        if let Some(c) = client.as_mut() {
            match c.exchange(&request) {
                Ok(r) if r.status == 200 => return Some(started.elapsed()),
                Ok(r) if !r.close => {}
                _ => client = None,
            }
        }
        thread::sleep(interval);
    }
    None
}
