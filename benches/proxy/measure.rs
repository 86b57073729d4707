//! The measurements of the proxy benchmark (`benches/proxy.rs`): c=1 latency in alternating
//! batches, throughput with CPU accounting, streaming timings, the memory of many open
//! streams, and the fixture's own readiness time.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::common::*;
use super::*;

/// CPU accounting across a measured interval: ours (listed pids plus this process) and the
/// rest of the machine.
pub struct CpuWindow {
    pub pids: Vec<u32>,
    pub start_pids: Vec<u64>,
    pub start_self: u64,
    pub start_machine: (u64, u64),
}

impl CpuWindow {
    pub fn begin(pids: &[u32]) -> CpuWindow {
        CpuWindow {
            pids: pids.to_vec(),
            start_pids: pids.iter().map(|&p| cpu_ticks(p)).collect(),
            start_self: cpu_ticks(std::process::id()),
            start_machine: machine_ticks(),
        }
    }

    /// (ticks per listed pid, ticks of the other processes on the machine, elapsed ticks
    /// per core).
    pub fn end(&self) -> (Vec<u64>, u64) {
        let per_pid: Vec<u64> = self
            .pids
            .iter()
            .zip(&self.start_pids)
            .map(|(&p, &s)| cpu_ticks(p).saturating_sub(s))
            .collect();
        let ours = per_pid.iter().sum::<u64>()
            + cpu_ticks(std::process::id()).saturating_sub(self.start_self);
        let (busy, _total) = machine_ticks();
        let foreign = (busy - self.start_machine.0).saturating_sub(ours);
        (per_pid, foreign)
    }
}

pub fn chat(addr: &str, model: &str) -> Vec<u8> {
    post(
        addr,
        "/v1/chat/completions",
        &CHAT_BODY.replace("\"fast\"", &format!("\"{model}\"")),
    )
}

pub fn stream_request(addr: &str, chunks: u64, interval_ms: u64) -> Vec<u8> {
    post(
        addr,
        "/v1/chat/completions",
        &format!(
            r#"{{"model":"fast","stream":true,"stream_chunks":{chunks},"stream_interval_ms":{interval_ms},"messages":[{{"role":"user","content":"Say hello."}}]}}"#
        ),
    )
}

/// "min–max" of a list of milliseconds.
pub fn range_ms(values: &[f64]) -> String {
    let sorted = sorted(values.to_vec());
    format!(
        "{:.0}–{:.0}",
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN)
    )
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

pub fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The measurements
// ---------------------------------------------------------------------------------------------

/// Latency at concurrency 1 over one keep-alive connection per path, in alternating batches.
/// Latency samples (µs, sorted) for each address, in alternating batches: the order of the
/// paths rotates from batch to batch so that drift hits all of them alike.
pub fn latency(addresses: &[&str]) -> Vec<Vec<f64>> {
    let mut paths: Vec<(Client, Vec<u8>, Vec<f64>)> = addresses
        .iter()
        .map(|addr| {
            (
                Client::connect(addr).expect("connect"),
                chat(addr, "fast"),
                Vec::new(),
            )
        })
        .collect();
    for (client, request, _) in paths.iter_mut() {
        for _ in 0..WARMUP_REQUESTS {
            let r = client.exchange(request).expect("warm-up request");
            assert_eq!(r.status, 200, "warm-up status");
        }
    }
    let mut done = 0;
    while done < LATENCY_REQUESTS {
        let batch = LATENCY_BATCH.min(LATENCY_REQUESTS - done);
        let first = (done / LATENCY_BATCH) % paths.len();
        for k in 0..paths.len() {
            let (client, request, samples) = &mut paths[(first + k) % addresses.len()];
            for _ in 0..batch {
                let started = Instant::now();
                let r = client.exchange(request).expect("latency request");
                samples.push(us(started.elapsed()));
                assert_eq!(r.status, 200, "latency status");
                assert!(r.body_bytes > 0, "an empty response body");
                assert!(!r.close, "the connection must stay open");
            }
        }
        done += batch;
    }
    paths.into_iter().map(|(_, _, v)| sorted(v)).collect()
}

pub struct LoadResult {
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    /// CPU ticks of each watched pid during the run.
    pub cpu: Vec<u64>,
    pub foreign_ticks: u64,
}

/// `concurrency` client threads, each on its own keep-alive connection, for `seconds`.
pub fn load(addr: &str, concurrency: usize, seconds: f64, watch: &[u32]) -> LoadResult {
    let request = Arc::new(chat(addr, "fast"));
    let barrier = Arc::new(Barrier::new(concurrency + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let (addr, request, barrier, stop) = (
                addr.to_string(),
                request.clone(),
                barrier.clone(),
                stop.clone(),
            );
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut client = Client::connect(&addr).ok();
                    barrier.wait();
                    let (mut ok, mut errors) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let Some(c) = client.as_mut() else {
                            client = Client::connect(&addr).ok();
                            if client.is_none() {
                                errors += 1;
                                thread::sleep(Duration::from_millis(1));
                            }
                            continue;
                        };
                        match c.exchange(&request) {
                            Ok(r) => {
                                if stop.load(Ordering::Relaxed) {
                                    break; // finished after the window closed
                                }
                                if r.status == 200 {
                                    ok += 1;
                                } else {
                                    errors += 1;
                                }
                                if r.close {
                                    client = None;
                                }
                            }
                            Err(_) => {
                                errors += 1;
                                client = None;
                            }
                        }
                    }
                    (ok, errors)
                })
                .expect("client thread")
        })
        .collect();
    barrier.wait();
    let window = CpuWindow::begin(watch);
    let started = Instant::now();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu, foreign_ticks) = window.end();
    let (mut ok, mut errors) = (0, 0);
    for h in handles {
        let (o, e) = h.join().expect("client thread panicked");
        ok += o;
        errors += e;
    }
    LoadResult {
        ok,
        errors,
        seconds: elapsed,
        cpu,
        foreign_ticks,
    }
}

/// One streaming request: (time to first `data:` bytes, arrival times of every event).
pub fn stream_once(
    client: &mut Client,
    request: &[u8],
) -> io::Result<(Duration, Vec<Instant>, bool)> {
    let started = Instant::now();
    client.send(request)?;
    let mut body = Vec::new();
    let mut times = Vec::new();
    let response = client.read_response(|piece| {
        let now = Instant::now();
        body.extend_from_slice(piece);
        let events = body.windows(6).filter(|w| w == b"data: ").count();
        while times.len() < events {
            times.push(now);
        }
    })?;
    if response.status != 200 || times.is_empty() {
        return Err(invalid(&format!("stream status {}", response.status)));
    }
    let done = find(&body, b"data: [DONE]").is_some();
    Ok((times[0] - started, times, done))
}

pub struct Streaming {
    pub ttfc_direct: Vec<f64>,
    pub ttfc_proxied: Vec<f64>,
    pub gaps_direct: Vec<f64>,
    pub gaps_proxied: Vec<f64>,
}

pub fn streaming(direct: &str, proxied: &str) -> Streaming {
    let addrs = [direct, proxied];
    let mut clients: Vec<Client> = addrs
        .iter()
        .map(|a| Client::connect(a).expect("connect"))
        .collect();
    // Time to first chunk: quick streams (2 events, no interval), alternating one by one.
    let mut ttfc = [Vec::new(), Vec::new()];
    let quick: Vec<Vec<u8>> = addrs.iter().map(|a| stream_request(a, 2, 0)).collect();
    for i in 0..TTFC_REQUESTS + 20 {
        for which in [i % 2, 1 - i % 2] {
            let (first, _, done) =
                stream_once(&mut clients[which], &quick[which]).expect("streaming request");
            assert!(done, "stream ended without [DONE]");
            if i >= 20 {
                ttfc[which].push(us(first));
            }
        }
    }
    // Gaps: GAP_CHUNKS token events GAP_INTERVAL_MS apart.
    let mut gaps = [Vec::new(), Vec::new()];
    let slow: Vec<Vec<u8>> = addrs
        .iter()
        .map(|a| stream_request(a, GAP_CHUNKS, GAP_INTERVAL_MS))
        .collect();
    for i in 0..GAP_REQUESTS {
        for which in [i % 2, 1 - i % 2] {
            let (_, times, done) =
                stream_once(&mut clients[which], &slow[which]).expect("streaming request");
            assert!(done, "stream ended without [DONE]");
            assert!(times.len() as u64 >= GAP_CHUNKS, "missing events");
            for pair in times[..GAP_CHUNKS as usize].windows(2) {
                gaps[which].push(us(pair[1] - pair[0]));
            }
        }
    }
    let [td, tp] = ttfc;
    let [gd, gp] = gaps;
    Streaming {
        ttfc_direct: sorted(td),
        ttfc_proxied: sorted(tp),
        gaps_direct: sorted(gd),
        gaps_proxied: sorted(gp),
    }
}

pub struct StreamMemory {
    pub rss_before_kib: u64,
    pub rss_during_kib: u64,
    pub threads_before: u64,
    pub threads_during: u64,
    pub all_open: bool,
    pub failures: usize,
    pub ramp_seconds: f64,
}

/// Opens STREAM_CLIENTS slow streams at once and reads swapd's RSS while all are open.
pub fn stream_memory(addr: &str, swapd_pid: u32) -> StreamMemory {
    let rss_before_kib = status_value(swapd_pid, "VmRSS");
    let threads_before = status_value(swapd_pid, "Threads");
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(stream_request(addr, SLOW_CHUNKS, SLOW_INTERVAL_MS));
    let first_event_ms = Arc::new(Mutex::new(Vec::new()));
    let ramp = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..STREAM_CLIENTS {
        let (addr, request, started, finished, first_event_ms) = (
            addr.to_string(),
            request.clone(),
            started.clone(),
            finished.clone(),
            first_event_ms.clone(),
        );
        let handle = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || -> Result<(), String> {
                let result = (|| -> io::Result<bool> {
                    let sent = Instant::now();
                    let mut client = Client::connect(&addr)?;
                    client.send(&request)?;
                    let mut seen = false;
                    let mut tail = Vec::new();
                    let response = client.read_response(|piece| {
                        if !seen {
                            seen = true;
                            started.fetch_add(1, Ordering::SeqCst);
                            first_event_ms
                                .lock()
                                .unwrap()
                                .push(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        tail.extend_from_slice(piece);
                        if tail.len() > 64 {
                            tail.drain(..tail.len() - 64);
                        }
                    })?;
                    Ok(response.status == 200 && find(&tail, b"data: [DONE]").is_some())
                })();
                finished.fetch_add(1, Ordering::SeqCst);
                match result {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("bad status or no [DONE]".into()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .expect("stream client thread");
        handles.push(handle);
        // Paced so that the listen backlogs never overflow (a dropped SYN costs a 1 s retry).
        thread::sleep(STREAM_PACING);
    }
    // Wait (bounded) until every stream has delivered its first event.
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::SeqCst) + finished.load(Ordering::SeqCst) < STREAM_CLIENTS
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(5));
    }
    let ramp_seconds = ramp.elapsed().as_secs_f64();
    let first = sorted(first_event_ms.lock().unwrap().clone());
    println!(
        "stream clients: time to first event p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&first, 50.0),
        percentile(&first, 99.0),
        percentile(&first, 100.0)
    );
    // Sample for a moment while every stream is open; keep the highest reading.
    let mut rss_during_kib = 0;
    let mut threads_during = 0;
    for _ in 0..20 {
        rss_during_kib = rss_during_kib.max(status_value(swapd_pid, "VmRSS"));
        threads_during = threads_during.max(status_value(swapd_pid, "Threads"));
        thread::sleep(Duration::from_millis(25));
    }
    let all_open =
        started.load(Ordering::SeqCst) == STREAM_CLIENTS && finished.load(Ordering::SeqCst) == 0;
    let mut failures = 0;
    let mut first_failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failures += 1;
                first_failure.get_or_insert(e);
            }
            Err(_) => failures += 1,
        }
    }
    if let Some(e) = first_failure {
        eprintln!("bench: {failures} of {STREAM_CLIENTS} streams failed, first: {e}");
    }
    StreamMemory {
        rss_before_kib,
        rss_during_kib,
        threads_before,
        threads_during,
        all_open,
        failures,
        ramp_seconds,
    }
}

/// The fixture's own time from spawn to a healthy `/health`, polled every millisecond.
pub fn fixture_readiness(startup_delay_ms: u64) -> Vec<f64> {
    let mut samples = Vec::new();
    for _ in 0..READINESS_SAMPLES {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let started = Instant::now();
        let fake = start_fake(port, &["--startup-delay-ms", &startup_delay_ms.to_string()]);
        wait_healthy(&addr, Duration::from_secs(10), Duration::from_millis(1))
            .expect("the fixture did not become healthy within 10 s");
        samples.push(started.elapsed().as_secs_f64() * 1e3);
        drop(fake);
    }
    samples
}

/// Time of one chat request on a fresh connection, in ms.
pub fn timed_request(addr: &str, model: &str) -> f64 {
    let started = Instant::now();
    one_shot(addr, &chat(addr, model)).unwrap_or_else(|e| panic!("request for {model}: {e}"));
    started.elapsed().as_secs_f64() * 1e3
}
