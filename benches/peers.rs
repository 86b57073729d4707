//! The latency one peer hop adds: a front swapd → a peer swapd → fake-upstream, against the
//! same peer swapd reached directly (and the fixture itself, for scale).
//!
//! It runs `target/release/swapd` and `target/release/fake-upstream` (`cargo bench --bench
//! peers` builds both). Three paths, measured in alternating batches so that drift (other
//! processes on this shared machine, CPU frequency) hits all of them alike:
//!
//! - `fixture`: client → fake-upstream;
//! - `one swapd`: client → swapd (the peer host) → fake-upstream;
//! - `via peer`: client → front swapd → peer swapd → fake-upstream (the model by its FQN, so
//!   the front also rewrites the body).
//!
//! Figures: p50 / p99 of a small non-streaming chat at concurrency 1 over keep-alive
//! connections, and the time to the first `data:` bytes of a stream on a new connection. The
//! hop's cost is `via peer − one swapd`. The machine's load average is printed before and after,
//! since the figures are only comparable under similar load. Every process is killed by pid
//! when its guard drops; a watchdog ends the run if it hangs.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

const REQUESTS: usize = 6_000;
const BATCH: usize = 300;
const WARMUP: usize = 500;
const STREAMS: usize = 200;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const WATCHDOG: Duration = Duration::from_secs(10 * 60);

static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

struct Proc(Child);

impl Proc {
    fn spawn(command: &mut Command) -> Proc {
        let child = command.spawn().expect("start a process");
        PIDS.lock().expect("pids").push(child.id());
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.0.id();
        // SAFETY: kill(2) on a child we spawned and have not reaped yet.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        PIDS.lock().expect("pids").retain(|&p| p != pid);
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
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Starts swapd on `config` (written to a temp dir) and returns it with its address.
fn start_swapd(config: &str, dir: &std::path::Path, name: &str) -> (Proc, String) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config).expect("write config");
    let mut proc = Proc::spawn(
        Command::new(binary("swapd"))
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .env("SWAPD_PEER_CHECK_INTERVAL_MS", "10000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let stderr = proc.0.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("swapd: listening on http://") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("swapd printed its listening line");
    (proc, addr)
}

/// A keep-alive HTTP/1.1 client for Content-Length and chunked answers.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        Client {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        }
    }

    fn post(&mut self, path: &str, body: &str) -> io::Result<u16> {
        write!(
            self.writer,
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| io::Error::other("bad chunk size"))?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
            }
        } else {
            let mut body = vec![0; length.unwrap_or(0)];
            self.reader.read_exact(&mut body)?;
        }
        Ok(status)
    }
}

fn chat_body(model: &str) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello."}}],"max_tokens":8}}"#
    )
}

/// Time to the first `data:` of a stream on a fresh connection, then the stream read to its end.
fn first_event(addr: &str, model: &str) -> Duration {
    let body = format!(
        r#"{{"model":"{model}","stream":true,"stream_chunks":3,"stream_interval_ms":1,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 8192];
    let mut first = None;
    loop {
        let read = stream.read(&mut buffer).expect("read");
        if read == 0 {
            break;
        }
        seen.extend_from_slice(&buffer[..read]);
        if first.is_none() && seen.windows(5).any(|w| w == b"data:") {
            first = Some(started.elapsed());
        }
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("[DONE]"),
        "stream incomplete"
    );
    first.expect("a data: event arrived")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("peers benchmark: skipped (run it with `cargo bench --bench peers`)");
        return;
    }
    thread::spawn(|| {
        thread::sleep(WATCHDOG);
        eprintln!("peers bench: watchdog fired; killing everything");
        for &pid in PIDS.lock().expect("pids").iter() {
            // SAFETY: kill(2) on children this process started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::process::exit(2);
    });
    let dir = std::env::temp_dir().join(format!("swapd-peers-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = loadavg();

    let fake_port = free_port();
    let fake = Proc::spawn(
        Command::new(binary("fake-upstream"))
            .args(["--port", &fake_port.to_string(), "--model", "fast"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let fixture = format!("127.0.0.1:{fake_port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&fixture).is_err() {
        assert!(Instant::now() < deadline, "fake-upstream did not listen");
        thread::sleep(Duration::from_millis(10));
    }
    // The peer host: one model served by the already-running fixture.
    let (peer, peer_addr) = start_swapd(
        &format!("models:\n  fast:\n    cmd: sleep 3600\n    proxy: http://127.0.0.1:{fake_port}\n    checkEndpoint: /health\n"),
        &dir,
        "peer",
    );
    let (front, front_addr) = start_swapd(
        &format!(
            "models: {{}}\npeers:\n  gpu:\n    proxy: http://{peer_addr}\n    models: [fast]\n"
        ),
        &dir,
        "front",
    );
    let paths = [
        ("fixture", fixture.as_str(), "fast"),
        ("one swapd", peer_addr.as_str(), "fast"),
        ("via peer", front_addr.as_str(), "gpu/fast"),
    ];
    let mut clients: Vec<Client> = paths.iter().map(|(_, a, _)| Client::connect(a)).collect();
    let bodies: Vec<String> = paths.iter().map(|(_, _, m)| chat_body(m)).collect();
    for (client, body) in clients.iter_mut().zip(&bodies) {
        for _ in 0..WARMUP {
            assert_eq!(
                client.post("/v1/chat/completions", body).expect("warm-up"),
                200
            );
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(REQUESTS); paths.len()];
    for _ in 0..REQUESTS / BATCH {
        for (index, client) in clients.iter_mut().enumerate() {
            for _ in 0..BATCH {
                let started = Instant::now();
                let status = client
                    .post("/v1/chat/completions", &bodies[index])
                    .expect("request");
                samples[index].push(started.elapsed().as_secs_f64() * 1e6);
                assert_eq!(status, 200);
            }
        }
    }
    let mut firsts: Vec<Vec<f64>> = vec![Vec::with_capacity(STREAMS); paths.len()];
    for _ in 0..STREAMS {
        for (index, (_, addr, model)) in paths.iter().enumerate() {
            firsts[index].push(first_event(addr, model).as_secs_f64() * 1e6);
        }
    }
    let load_after = loadavg();
    println!("peer hop benchmark ({cores} cores; load average before: {load_before}, after: {load_after})");
    println!(
        "{:<10} {:>12} {:>12} {:>20}",
        "path", "chat p50 µs", "chat p99 µs", "stream 1st data p50 µs"
    );
    let mut p50 = Vec::new();
    let mut first_p50 = Vec::new();
    for (index, (name, _, _)) in paths.iter().enumerate() {
        let mut latency = samples[index].clone();
        latency.sort_by(f64::total_cmp);
        let mut first = firsts[index].clone();
        first.sort_by(f64::total_cmp);
        println!(
            "{:<10} {:>12.0} {:>12.0} {:>20.0}",
            name,
            percentile(&latency, 0.5),
            percentile(&latency, 0.99),
            percentile(&first, 0.5)
        );
        p50.push(percentile(&latency, 0.5));
        first_p50.push(percentile(&first, 0.5));
    }
    println!(
        "added by one peer hop (via peer − one swapd): chat p50 {:+.0} µs, stream first data p50 {:+.0} µs",
        p50[2] - p50[1],
        first_p50[2] - first_p50[1]
    );
    drop(front);
    drop(peer);
    drop(fake);
    let _ = std::fs::remove_dir_all(&dir);
}
