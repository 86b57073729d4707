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

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::*;

const REQUESTS: usize = 6_000;
const BATCH: usize = 300;
const WARMUP: usize = 500;
const STREAMS: usize = 200;
const WATCHDOG: Duration = Duration::from_secs(10 * 60);

/// Starts swapd on `config` with its peer checks slowed down and returns it with its address.
fn start_peer_swapd(config: &str) -> (Swapd, String) {
    let swapd = start_swapd(config, &[("SWAPD_PEER_CHECK_INTERVAL_MS", "10000")], None);
    let addr = swapd.addr.clone();
    (swapd, addr)
}

/// One non-streaming chat on a kept-alive connection; the response's status.
fn post(client: &mut Client, request: &[u8]) -> u16 {
    client.exchange(request).expect("request").status
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
    let mut client = Client::connect(addr).expect("connect");
    write!(
        client.stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut seen = Vec::new();
    let mut first = None;
    client
        .read_response(|piece| {
            seen.extend_from_slice(piece);
            if first.is_none() && find(&seen, b"data:").is_some() {
                first = Some(started.elapsed());
            }
        })
        .expect("read the stream");
    assert!(
        String::from_utf8_lossy(&seen).contains("[DONE]"),
        "stream incomplete"
    );
    first.expect("a data: event arrived")
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("peers benchmark: skipped (run it with `cargo bench --bench peers`)");
        return;
    }
    start_watchdog("peers bench", WATCHDOG);
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = load_average();

    let fake_port = free_port();
    let fake = start_fake(fake_port, &["--model", "fast"]);
    let fixture = format!("127.0.0.1:{fake_port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&fixture).is_err() {
        assert!(Instant::now() < deadline, "fake-upstream did not listen");
        thread::sleep(Duration::from_millis(10));
    }
    // The peer host: one model served by the already-running fixture.
    let (peer, peer_addr) = start_peer_swapd(
        &format!("models:\n  fast:\n    cmd: sleep 3600\n    proxy: http://127.0.0.1:{fake_port}\n    checkEndpoint: /health\n"),
    );
    let (front, front_addr) = start_peer_swapd(&format!(
        "models: {{}}\npeers:\n  gpu:\n    proxy: http://{peer_addr}\n    models: [fast]\n"
    ));
    let paths = [
        ("fixture", fixture.as_str(), "fast"),
        ("one swapd", peer_addr.as_str(), "fast"),
        ("via peer", front_addr.as_str(), "gpu/fast"),
    ];
    let mut clients: Vec<Client> = paths
        .iter()
        .map(|(_, a, _)| Client::connect(a).expect("connect"))
        .collect();
    let requests: Vec<Vec<u8>> = paths
        .iter()
        .map(|(_, _, m)| common::post("bench", "/v1/chat/completions", &chat_body(m)))
        .collect();
    for (client, request) in clients.iter_mut().zip(&requests) {
        for _ in 0..WARMUP {
            assert_eq!(post(client, request), 200, "warm-up");
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(REQUESTS); paths.len()];
    for _ in 0..REQUESTS / BATCH {
        for (index, client) in clients.iter_mut().enumerate() {
            for _ in 0..BATCH {
                let started = Instant::now();
                let status = post(client, &requests[index]);
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
    let load_after = load_average();
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
            percentile(&latency, 50.0),
            percentile(&latency, 99.0),
            percentile(&first, 50.0)
        );
        p50.push(percentile(&latency, 50.0));
        first_p50.push(percentile(&first, 50.0));
    }
    println!(
        "added by one peer hop (via peer − one swapd): chat p50 {:+.0} µs, stream first data p50 {:+.0} µs",
        p50[2] - p50[1],
        first_p50[2] - first_p50[1]
    );
    drop(front);
    drop(peer);
    drop(fake);
}
