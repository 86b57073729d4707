//! What the Ollama translation adds to time to first token: one release `swapd` in front of one
//! release `fake-upstream` model, the same streamed chat sent as OpenAI (`/v1/chat/completions`,
//! bytes passed through) and as Ollama (`/api/chat`, each SSE event translated into an NDJSON
//! line), in alternating batches on kept-alive connections so that drift hits both alike.
//!
//! Time to first token is measured from writing the request to reading the first body chunk
//! that carries data (the first `data:` event, or the first NDJSON line); the rest of each
//! response is read to its end before the next request. It builds nothing itself: run
//! `cargo build --release --bins` first (`cargo bench --bench ollama` does). Every process is
//! stopped by pid when its guard drops, and a watchdog ends the run if it takes too long.
//!
//! Environment: `SWAPD_BENCH_TTFT_REQUESTS` (default 2000) requests per route.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BATCH: usize = 100;
const WARMUP: usize = 200;
const WATCHDOG: Duration = Duration::from_secs(10 * 60);

/// Kills (SIGTERM, then SIGKILL after a bound) and reaps on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/release")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --bins` first",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// A kept-alive connection that reads chunked responses and notes when data first arrives.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(addr: &str) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `request` and reads the chunked response; returns the time to the first data.
    fn first_data(&mut self, request: &[u8]) -> io::Result<Duration> {
        let sent = Instant::now();
        self.reader.get_mut().write_all(request)?;
        let mut line = String::new();
        let mut status_ok = false;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line.starts_with("HTTP/1.1 200") {
                status_ok = true;
            }
            if line == "\r\n" {
                break;
            }
            if line.is_empty() {
                return Err(io::Error::other("connection closed in the head"));
            }
        }
        if !status_ok {
            return Err(io::Error::other("status is not 200"));
        }
        let mut first = None;
        let mut data = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                line.clear();
                self.reader.read_line(&mut line)?;
                break;
            }
            data.resize(size + 2, 0);
            self.reader.read_exact(&mut data)?;
            if first.is_none() {
                first = Some(sent.elapsed());
            }
        }
        first.ok_or_else(|| io::Error::other("empty body"))
    }
}

fn post(addr: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ollama benchmark: skipped (run it with `cargo bench --bench ollama`)");
        return;
    }
    thread::spawn(|| {
        thread::sleep(WATCHDOG);
        eprintln!("bench: watchdog: the run took longer than {WATCHDOG:?}");
        std::process::exit(2);
    });
    let requests: usize = std::env::var("SWAPD_BENCH_TTFT_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = std::env::temp_dir().join(format!("swapd-bench-ollama-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("config.yaml");
    let upstream_port = free_port();
    std::fs::write(
        &config,
        format!(
            "healthCheckTimeout: 15\nmodels:\n  fast:\n    cmd: {} --port {upstream_port} --stream-chunks 4 --stream-interval-ms 0\n    proxy: http://127.0.0.1:{upstream_port}\n",
            binary("fake-upstream").display()
        ),
    )
    .expect("write config");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _swapd = Proc(
        Command::new(binary("swapd"))
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(&addr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start swapd"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "swapd did not listen within 15 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let openai = post(
        &addr,
        "/v1/chat/completions",
        r#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"Say hello."}]}"#,
    );
    let ollama = post(
        &addr,
        "/api/chat",
        r#"{"model":"fast","messages":[{"role":"user","content":"Say hello."}]}"#,
    );
    let mut openai_connection = Connection::open(&addr).expect("connect");
    let mut ollama_connection = Connection::open(&addr).expect("connect");
    // The first request starts the model; the warm-up fills pools and caches.
    for _ in 0..WARMUP {
        openai_connection
            .first_data(&openai)
            .expect("OpenAI stream");
        ollama_connection
            .first_data(&ollama)
            .expect("Ollama stream");
    }
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    while times[0].len() < requests {
        for _ in 0..BATCH {
            let t = openai_connection
                .first_data(&openai)
                .expect("OpenAI stream");
            times[0].push(t.as_secs_f64() * 1e6);
        }
        for _ in 0..BATCH {
            let t = ollama_connection
                .first_data(&ollama)
                .expect("Ollama stream");
            times[1].push(t.as_secs_f64() * 1e6);
        }
    }
    for list in times.iter_mut() {
        list.sort_by(|a, b| a.total_cmp(b));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "time to first token through swapd, streamed chat, {} requests per route (load average: {})",
        times[0].len(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("| route | p50 µs | p90 µs | p99 µs |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, list) in [
        ("OpenAI /v1/chat/completions", &times[0]),
        ("Ollama /api/chat", &times[1]),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            percentile(list, 0.5),
            percentile(list, 0.9),
            percentile(list, 0.99)
        );
    }
    println!(
        "added by the Ollama route: p50 {:+.1} µs, p90 {:+.1} µs",
        percentile(&times[1], 0.5) - percentile(&times[0], 0.5),
        percentile(&times[1], 0.9) - percentile(&times[0], 0.9)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
