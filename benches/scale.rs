//! Connections at scale: what N open client connections cost swapd, for N in 100, 1,000,
//! 4,000 and 10,000 (override with `SWAPD_SCALE_N=100,1000`).
//!
//! For each N, with the release `swapd` in front of the release `fake-upstream` (one model):
//!
//! 1. **Idle keep-alive connections.** Two fresh swapds; N connections are opened to the first,
//!    each makes one `GET /health` and stays open. With them held: the first swapd's CPU over a
//!    10 s window (percent of one core), its threads and RSS, RSS per idle connection
//!    ((RSS with N open − RSS before) / N), and c=1 non-streaming chat p50/p99 on it and on the
//!    second swapd (no other connection open), in alternating batches of 100 so that the load
//!    of the machine hits both alike.
//! 2. **Concurrent streams.** The same N streams are first requested straight from the
//!    fake-upstream (the floor: what the fixture and the client manage on this machine), then
//!    through swapd. A fresh swapd gets N streaming chat requests at once (each on
//!    its own connection, opened as fast as the client can; 31 SSE events 100 ms apart, so
//!    each stream lasts 3.0 s): wall time from the first connect until the last stream has
//!    ended, failures (refused or reset connections, non-200 answers, streams cut before their
//!    terminating chunk, or not done within 120 s), swapd's largest thread count and its peak
//!    RSS (VmHWM).
//!
//! The client side holds all N sockets in one thread with epoll, so the benchmark adds no
//! thread per connection. The benchmark raises its own RLIMIT_NOFILE (soft and, as root,
//! hard), which swapd and fake-upstream inherit. headerTimeout is 300 s so that the idle
//! connections are not cut during the measurement, and maxConnections/concurrencyLimit are
//! raised above N. Every process started here is killed by pid when its guard drops (also on
//! panic), and a watchdog ends the run if it takes too long. BENCHMARKS.md has the results.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use swapd::http::codec::{self, Decoder};

mod common;

use common::*;

const DEFAULT_NS: [usize; 4] = [100, 1_000, 4_000, 10_000];
/// c=1 requests per latency figure, after a warm-up.
const LATENCY_REQUESTS: usize = 4_000;
const LATENCY_BATCH: usize = 100;
const LATENCY_WARMUP: usize = 200;
/// The idle CPU window.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Each stream: this many events, this far apart (3.0 s in all).
const STREAM_CHUNKS: u64 = 31;
const STREAM_INTERVAL_MS: u64 = 100;
/// A stream not done after this long counts as failed.
const STREAM_DEADLINE: Duration = Duration::from_secs(120);
const WATCHDOG: Duration = Duration::from_secs(30 * 60);

/// A swapd on `127.0.0.1:0` serving one fake model; `_dir` holds its config.
struct ScaleSwapd {
    proc: Proc,
    addr: String,
    /// The model's fake-upstream, for the direct baseline.
    upstream_addr: String,
    _dir: TempDir,
}

fn start_swapd(n: usize) -> ScaleSwapd {
    let limit = n * 2 + 100;
    let model_port = free_port_range(1);
    let config = format!(
        "healthCheckTimeout: 30\nstartPort: {}\nswapd:\n  headerTimeout: 300\n  \
         maxConnections: {limit}\nmodels:\n  fast:\n    cmd: {} --port ${{PORT}} --model fast\n    \
         concurrencyLimit: {limit}\n",
        model_port,
        binary("fake-upstream").display()
    );
    let Swapd { proc, addr, dir } = common::start_swapd(&config, &[], Some("scale: swapd: "));
    let swapd = ScaleSwapd {
        proc: proc.with_grace(Duration::from_secs(20)),
        addr,
        upstream_addr: format!("127.0.0.1:{model_port}"),
        _dir: dir,
    };
    // Start the model and warm every path up.
    let mut client = Client::connect(&swapd.addr).expect("connect to swapd");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.exchange(&chat(&swapd.addr)) {
            Ok(r) if r.status == 200 => break,
            other if Instant::now() > deadline => {
                panic!("the model did not start: {:?}", other.err())
            }
            _ => {
                thread::sleep(Duration::from_millis(50));
                client = Client::connect(&swapd.addr).expect("connect to swapd");
            }
        }
    }
    swapd
}

/// Raises this process's descriptor limit (children inherit it): the soft limit to the hard
/// one, and as root the hard limit too.
fn raise_fd_limit(wanted: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_max < wanted {
            let raised = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: wanted,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return wanted;
            }
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

fn chat(addr: &str) -> Vec<u8> {
    post(addr, "/v1/chat/completions", CHAT_BODY)
}

fn stream_request(addr: &str) -> Vec<u8> {
    post(
        addr,
        "/v1/chat/completions",
        &format!(
            r#"{{"model":"fast","stream":true,"stream_chunks":{STREAM_CHUNKS},"stream_interval_ms":{STREAM_INTERVAL_MS},"messages":[{{"role":"user","content":"Say hello."}}]}}"#
        ),
    )
}

/// c=1 latency of non-streaming chat requests, one keep-alive connection per swapd, in
/// alternating batches so that both see the same machine load: ((p50, p99) of `first`,
/// (p50, p99) of `second`) in µs.
fn paired_latency(first: &str, second: &str) -> ((f64, f64), (f64, f64)) {
    let mut paths = [first, second].map(|addr| {
        (
            Client::connect(addr).expect("connect for latency"),
            chat(addr),
            Vec::with_capacity(LATENCY_REQUESTS),
        )
    });
    for (client, request, _) in paths.iter_mut() {
        for _ in 0..LATENCY_WARMUP {
            let response = client.exchange(request).expect("c=1 warm-up request");
            assert_eq!(response.status, 200, "c=1 warm-up request failed");
        }
    }
    for _ in 0..LATENCY_REQUESTS / LATENCY_BATCH {
        for (client, request, samples) in paths.iter_mut() {
            for _ in 0..LATENCY_BATCH {
                let started = Instant::now();
                let response = client.exchange(request).expect("c=1 request");
                assert_eq!(response.status, 200, "c=1 request failed");
                samples.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let [first, second] = paths.map(|(_, _, mut samples)| {
        samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        (percentile(&samples, 50.0), percentile(&samples, 99.0))
    });
    (first, second)
}

// ---------------------------------------------------------------------------------------------
// Phase 1: idle keep-alive connections
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct IdleFigures {
    open_secs: f64,
    failures: usize,
    cpu_percent: f64,
    p50_none: f64,
    p99_none: f64,
    p50_open: f64,
    p99_open: f64,
    threads: u64,
    rss_kib: u64,
    rss_before_kib: u64,
    peak_kib: u64,
}

fn idle_phase(n: usize) -> IdleFigures {
    let swapd = start_swapd(n);
    let pid = swapd.proc.pid();
    // A second swapd that holds no idle connections: the "none" latency is measured on it in
    // batches alternating with the one holding N, so machine load hits both alike.
    let reference = start_swapd(n);
    // Let spare connection threads from the warm-up exit before the baseline is read.
    thread::sleep(Duration::from_secs(6));
    let rss_before_kib = status_value(pid, "VmRSS");
    let started = Instant::now();
    let health = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", swapd.addr).into_bytes();
    let mut held = Vec::with_capacity(n);
    let mut failures = 0;
    for _ in 0..n {
        match Client::connect(&swapd.addr).and_then(|mut c| c.exchange(&health).map(|r| (c, r))) {
            Ok((client, response)) if response.status == 200 => held.push(client),
            _ => failures += 1,
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    // The connection threads are all parked in their next read by now; let the accept burst's
    // bookkeeping settle before measuring.
    thread::sleep(Duration::from_secs(2));
    let ticks_before = cpu_ticks(pid);
    let window = Instant::now();
    thread::sleep(IDLE_WINDOW);
    let ticks = cpu_ticks(pid) - ticks_before;
    let cpu_percent =
        ticks as f64 / clock_ticks_per_second() as f64 / window.elapsed().as_secs_f64() * 100.0;
    let threads = status_value(pid, "Threads");
    let rss_kib = status_value(pid, "VmRSS");
    let ((p50_open, p99_open), (p50_none, p99_none)) = paired_latency(&swapd.addr, &reference.addr);
    let peak_kib = status_value(pid, "VmHWM");
    // Every held connection must still be open (no answer, no close).
    let still_open = held
        .iter()
        .filter(|client| {
            client.stream.set_nonblocking(true).expect("nonblocking");
            let mut byte = [0u8; 1];
            matches!((&client.stream).read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        })
        .count();
    failures += held.len() - still_open;
    drop(held);
    drop(swapd);
    drop(reference);
    IdleFigures {
        open_secs,
        failures,
        cpu_percent,
        p50_none,
        p99_none,
        p50_open,
        p99_open,
        threads,
        rss_kib,
        rss_before_kib,
        peak_kib,
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 2: concurrent streams, read with epoll
// ---------------------------------------------------------------------------------------------

struct StreamState {
    stream: TcpStream,
    /// The head until it is complete, then any framing split between two reads.
    pending: Vec<u8>,
    /// Set once a 200 head has arrived.
    decoder: Option<Decoder>,
}

struct StreamFigures {
    /// The same streams straight from fake-upstream.
    direct_wall_secs: f64,
    direct_failures: usize,
    /// Until the last connection was opened and its request sent.
    open_secs: f64,
    wall_secs: f64,
    /// CPU seconds during the phase: swapd, fake-upstream, the rest of the machine.
    cpu_swapd: f64,
    cpu_upstream: f64,
    cpu_foreign: f64,
    failures: usize,
    max_threads: u64,
    rss_before_kib: u64,
    peak_kib: u64,
}

/// Reads what is available on one stream; `Some(ok)` once it has ended.
fn pump(state: &mut StreamState, buffer: &mut [u8]) -> Option<bool> {
    loop {
        match state.stream.read(buffer) {
            Ok(0) => return Some(false),
            Ok(read) => {
                let mut data = &buffer[..read];
                if state.decoder.is_none() {
                    state.pending.extend_from_slice(data);
                    let Some(end) = codec::find_head_end(&state.pending, 0) else {
                        continue;
                    };
                    match codec::parse_response_head(&state.pending[..end]) {
                        Ok(head) if head.status == 200 => {
                            state.decoder =
                                Some(Decoder::new(codec::response_framing(&head, false)));
                        }
                        _ => return Some(false),
                    }
                    state.pending.drain(..end);
                    data = &[];
                }
                let decoder = state.decoder.as_mut().expect("the head was parsed");
                // Bytes are only kept when a framing line is split between two reads.
                let ended = if state.pending.is_empty() {
                    decoder.skip(data).map(|(taken, ended)| {
                        state.pending.extend_from_slice(&data[taken..]);
                        ended
                    })
                } else {
                    state.pending.extend_from_slice(data);
                    decoder.skip(&state.pending).map(|(taken, ended)| {
                        state.pending.drain(..taken);
                        ended
                    })
                };
                match ended {
                    Ok(true) => return Some(true),
                    Ok(false) => {}
                    Err(_) => return Some(false),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some(false),
        }
    }
}

/// Opens `n` connections to `addr` as fast as possible, sends a streaming request on each and
/// reads every stream to its end: (seconds until all were opened, wall seconds, failures).
fn run_streams(addr: &str, n: usize) -> (f64, f64, usize) {
    let request = stream_request(addr);
    let address: SocketAddr = addr.parse().expect("stream address");
    // SAFETY: epoll_create1 has no preconditions; the descriptor is closed below.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1 failed");
    let mut states: Vec<Option<StreamState>> = Vec::with_capacity(n);
    let mut failures = 0;
    let mut done = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut handle_events = |states: &mut Vec<Option<StreamState>>,
                             timeout_ms: i32,
                             failures: &mut usize,
                             done: &mut usize| {
        // SAFETY: `events` has room for its length; the kernel writes at most that many.
        let ready = unsafe {
            libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, timeout_ms)
        };
        for event in events.iter().take(ready.max(0) as usize) {
            let index = event.u64 as usize;
            let Some(state) = states[index].as_mut() else {
                continue;
            };
            if let Some(ok) = pump(state, &mut buffer) {
                if !ok {
                    *failures += 1;
                }
                *done += 1;
                // Dropping the socket closes it and removes it from the epoll set.
                states[index] = None;
            }
        }
    };
    let started = Instant::now();
    for index in 0..n {
        let opened =
            TcpStream::connect_timeout(&address, Duration::from_secs(10)).and_then(|mut s| {
                s.write_all(&request)?;
                s.set_nonblocking(true)?;
                Ok(s)
            });
        match opened {
            Ok(stream) => {
                let mut event = libc::epoll_event {
                    events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                    u64: index as u64,
                };
                // SAFETY: registering a socket we own with a valid event struct.
                unsafe {
                    libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, stream.as_raw_fd(), &mut event);
                }
                states.push(Some(StreamState {
                    stream,
                    pending: Vec::new(),
                    decoder: None,
                }));
            }
            Err(_) => {
                states.push(None);
                failures += 1;
                done += 1;
            }
        }
        if index % 100 == 99 {
            handle_events(&mut states, 0, &mut failures, &mut done);
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    while done < n && started.elapsed() < STREAM_DEADLINE {
        handle_events(&mut states, 100, &mut failures, &mut done);
    }
    let wall_secs = started.elapsed().as_secs_f64();
    failures += n - done;
    drop(states);
    // SAFETY: closing the epoll descriptor created above.
    unsafe { libc::close(epoll) };
    (open_secs, wall_secs, failures)
}

fn stream_phase(n: usize) -> StreamFigures {
    let swapd = start_swapd(n);
    let pid = swapd.proc.pid();
    // The same streams straight from the fixture first: the floor swapd is measured against.
    let (_, direct_wall_secs, direct_failures) = run_streams(&swapd.upstream_addr, n);
    // Let the fixture's connection threads exit.
    thread::sleep(Duration::from_secs(2));
    let rss_before_kib = status_value(pid, "VmRSS");
    let max_threads = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (max_threads, sampling) = (max_threads.clone(), sampling.clone());
        thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                max_threads.fetch_max(status_value(pid, "Threads"), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let upstream = children_of(pid);
    let cpu_start = (
        cpu_ticks(pid),
        upstream.iter().map(|&p| cpu_ticks(p)).sum::<u64>(),
        cpu_ticks(std::process::id()),
        machine_ticks().0,
    );
    let (open_secs, wall_secs, failures) = run_streams(&swapd.addr, n);
    let ticks = clock_ticks_per_second() as f64;
    let swapd_ticks = cpu_ticks(pid) - cpu_start.0;
    let upstream_ticks = upstream.iter().map(|&p| cpu_ticks(p)).sum::<u64>() - cpu_start.1;
    let own_ticks = cpu_ticks(std::process::id()) - cpu_start.2;
    let foreign_ticks =
        (machine_ticks().0 - cpu_start.3).saturating_sub(swapd_ticks + upstream_ticks + own_ticks);
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let peak_kib = status_value(pid, "VmHWM");
    drop(swapd);
    StreamFigures {
        direct_wall_secs,
        direct_failures,
        open_secs,
        wall_secs,
        cpu_swapd: swapd_ticks as f64 / ticks,
        cpu_upstream: upstream_ticks as f64 / ticks,
        cpu_foreign: foreign_ticks as f64 / ticks,
        failures,
        max_threads: max_threads.load(Ordering::Relaxed),
        rss_before_kib,
        peak_kib,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without it,
    // and a several-minute run with thousands of connections has no place in the test suite.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale benchmark: skipped (run it with `cargo bench --bench scale`)");
        return;
    }
    start_watchdog("scale", WATCHDOG);
    let ns: Vec<usize> = match std::env::var("SWAPD_SCALE_N") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("SWAPD_SCALE_N: comma-separated numbers")
            })
            .collect(),
        Err(_) => DEFAULT_NS.to_vec(),
    };
    let largest = ns.iter().copied().max().unwrap_or(0) as u64;
    let fd_limit = raise_fd_limit((largest * 3 + 1_000).max(65_536));
    println!(
        "scale: swapd {} with fake-upstream; {} cores; load average {}; RLIMIT_NOFILE {fd_limit}",
        binary("swapd").display(),
        thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!(
        "idle: N connections each make one GET /health and stay open; CPU over {} s; c=1 chat \
         latency ({LATENCY_REQUESTS} requests per swapd, batches of {LATENCY_BATCH} alternating) \
         with them open and on a second swapd with none",
        IDLE_WINDOW.as_secs()
    );
    println!(
        "streams: N concurrent streams of {STREAM_CHUNKS} events {STREAM_INTERVAL_MS} ms apart \
         ({:.1} s each)",
        (STREAM_CHUNKS - 1) as f64 * STREAM_INTERVAL_MS as f64 / 1000.0
    );
    println!();
    println!(
        "| N | idle: open time | failed | swapd CPU idle | c=1 p50 / p99 none (µs) | c=1 p50 / p99 with N (µs) | p99 ratio | threads | RSS | RSS per conn | peak RSS | streams direct: wall | failed | streams via swapd: opened in | wall | failed | max threads | peak RSS | CPU s: swapd / upstream / others |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut per_event = Vec::new();
    for &n in &ns {
        // For profiling, `SWAPD_SCALE_STREAMS_ONLY=1` skips the idle phase (its columns print 0).
        let idle = if std::env::var_os("SWAPD_SCALE_STREAMS_ONLY").is_some() {
            IdleFigures::default()
        } else {
            idle_phase(n)
        };
        let streams = stream_phase(n);
        let per_conn = (idle.rss_kib as f64 - idle.rss_before_kib as f64) / n as f64;
        println!(
            "| {n} | {:.2} s | {} | {:.2} % | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {} | {:.1} MiB | {:.1} KiB | {:.1} MiB | {:.2} s | {} | {:.2} s | {:.2} s | {} | {} | {:.1} MiB (from {:.1}) | {:.1} / {:.1} / {:.1} |",
            idle.open_secs,
            idle.failures,
            idle.cpu_percent,
            idle.p50_none,
            idle.p99_none,
            idle.p50_open,
            idle.p99_open,
            idle.p99_open / idle.p99_none,
            idle.threads,
            idle.rss_kib as f64 / 1024.0,
            per_conn,
            idle.peak_kib as f64 / 1024.0,
            streams.direct_wall_secs,
            streams.direct_failures,
            streams.open_secs,
            streams.wall_secs,
            streams.failures,
            streams.max_threads,
            streams.peak_kib as f64 / 1024.0,
            streams.rss_before_kib as f64 / 1024.0,
            streams.cpu_swapd,
            streams.cpu_upstream,
            streams.cpu_foreign,
        );
        // Per relayed event: each stream's 31 timed events (the last carries the final event,
        // `[DONE]` and the terminating chunk with it).
        let events = (n as u64 * STREAM_CHUNKS) as f64;
        per_event.push(format!(
            "streams N = {n}: CPU per relayed event: swapd {:.1} µs, fixture {:.1} µs ({} events)",
            streams.cpu_swapd * 1e6 / events,
            streams.cpu_upstream * 1e6 / events,
            events
        ));
    }
    println!();
    for line in &per_event {
        println!("{line}");
    }
    println!();
    println!("scale: load average at the end {}", load_average());
}
