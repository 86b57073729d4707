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

use std::io;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::*;

const BATCH: usize = 100;
const WARMUP: usize = 200;
const WATCHDOG: Duration = Duration::from_secs(10 * 60);

/// Sends `request` on a kept-alive connection and reads the whole response; returns the time
/// to the first body bytes (the first SSE event or NDJSON line).
fn first_data(client: &mut Client, request: &[u8]) -> io::Result<Duration> {
    let sent = Instant::now();
    client.send(request)?;
    let mut first = None;
    let response = client.read_response(|_| {
        first.get_or_insert_with(|| sent.elapsed());
    })?;
    if response.status != 200 {
        return Err(io::Error::other("status is not 200"));
    }
    first.ok_or_else(|| io::Error::other("empty body"))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ollama benchmark: skipped (run it with `cargo bench --bench ollama`)");
        return;
    }
    start_watchdog("bench", WATCHDOG);
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
    let _swapd = Proc::spawn(
        "swapd",
        Command::new(binary("swapd"))
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(&addr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
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
    let mut openai_connection = Client::connect(&addr).expect("connect");
    let mut ollama_connection = Client::connect(&addr).expect("connect");
    // The first request starts the model; the warm-up fills pools and caches.
    for _ in 0..WARMUP {
        first_data(&mut openai_connection, &openai).expect("OpenAI stream");
        first_data(&mut ollama_connection, &ollama).expect("Ollama stream");
    }
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    while times[0].len() < requests {
        for _ in 0..BATCH {
            let t = first_data(&mut openai_connection, &openai).expect("OpenAI stream");
            times[0].push(t.as_secs_f64() * 1e6);
        }
        for _ in 0..BATCH {
            let t = first_data(&mut ollama_connection, &ollama).expect("Ollama stream");
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
            percentile(list, 50.0),
            percentile(list, 90.0),
            percentile(list, 99.0)
        );
    }
    println!(
        "added by the Ollama route: p50 {:+.1} µs, p90 {:+.1} µs",
        percentile(&times[1], 50.0) - percentile(&times[0], 50.0),
        percentile(&times[1], 90.0) - percentile(&times[0], 90.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
