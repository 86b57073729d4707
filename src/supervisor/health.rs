//! Health probing of a starting model, on its own thread so the supervisor never blocks.
//!
//! llama-swap waits 250 ms and then polls once a second, adding up to a second to every start.
//! We poll every 5 ms for the first second (most small models and test fixtures are ready
//! within it, and a refused or 503 probe on loopback costs microseconds), then back off by half
//! each time up to 100 ms, so a model is seen ready within a few milliseconds of answering 200
//! and a slow load is polled ten times a second.
//!
//! Probes go through swapd's own HTTP/1.1 client (`crate::upstream`), one client per probe with
//! nothing pooled across probes: a probe is one short GET on loopback, and not linking a second
//! HTTP client keeps the binary small.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::Command;

/// The wait between probes during the first second, and the longest wait after it.
const FAST_DELAY: Duration = Duration::from_millis(5);
const FAST_PHASE: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_millis(100);

pub struct Probe {
    /// The model's server, e.g. `http://127.0.0.1:5800`.
    pub base: String,
    /// The health path, e.g. `/health`.
    pub endpoint: String,
    pub model: String,
    pub generation: u64,
    pub timeout: Duration,
    pub cancel: Arc<AtomicBool>,
    pub tx: Sender<Command>,
}

/// How long one probe may take to connect, and then to get its answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

pub fn start_probe(probe: Probe) {
    let spawned = thread::Builder::new()
        .name(format!("health-{}", probe.model))
        .stack_size(128 * 1024)
        .spawn(move || run(probe));
    if let Err(error) = spawned {
        log::error!("cannot start a health probe thread: {error}");
    }
}

fn run(probe: Probe) {
    let client = crate::upstream::Client::new(CONNECT_TIMEOUT);
    let request = crate::upstream::Request {
        method: "GET",
        path_and_query: &probe.endpoint,
        headers: b"",
        body: None,
    };
    let url = format!("{}{}", probe.base, probe.endpoint);
    let started = Instant::now();
    let deadline = started + probe.timeout;
    let mut delay = FAST_DELAY;
    loop {
        thread::sleep(delay);
        if probe.cancel.load(Ordering::Relaxed) {
            return;
        }
        let last_problem = match client.send(&probe.base, &request, Some(ANSWER_TIMEOUT)) {
            Ok(response) if response.status() == 200 => {
                let _ = probe.tx.send(Command::HealthPassed {
                    model: probe.model,
                    generation: probe.generation,
                });
                return;
            }
            Ok(response) => format!("{url} answered {}", response.status()),
            Err(error) => format!("{url}: {error}"),
        };
        if Instant::now() >= deadline {
            let _ = probe.tx.send(Command::HealthFailed {
                model: probe.model,
                generation: probe.generation,
                reason: format!(
                    "health check did not pass within {}s (last: {last_problem})",
                    probe.timeout.as_secs()
                ),
            });
            return;
        }
        if started.elapsed() >= FAST_PHASE {
            delay = (delay + delay / 2).min(MAX_DELAY);
        }
    }
}
