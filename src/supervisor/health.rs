//! Health probing of a starting model, on its own thread so the supervisor never blocks.
//!
//! llama-swap waits 250 ms and then polls once a second, adding up to a second to every start.
//! We poll every 5 ms for the first second (most small models and test fixtures are ready
//! within it, and a refused or 503 probe on loopback costs microseconds), then back off by half
//! each time up to 100 ms, so a model is seen ready within a few milliseconds of answering 200
//! and a slow load is polled ten times a second.

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
    pub agent: ureq::Agent,
    pub url: String,
    pub model: String,
    pub generation: u64,
    pub timeout: Duration,
    pub cancel: Arc<AtomicBool>,
    pub tx: Sender<Command>,
}

/// The agent used for health checks: short timeouts, statuses as data, no pooling surprises.
pub fn probe_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(1)))
        .timeout_per_call(Some(Duration::from_secs(2)))
        .max_idle_connections(0)
        .build()
        .new_agent()
}

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
    let started = Instant::now();
    let deadline = started + probe.timeout;
    let mut delay = FAST_DELAY;
    loop {
        thread::sleep(delay);
        if probe.cancel.load(Ordering::Relaxed) {
            return;
        }
        let last_problem = match probe.agent.get(&probe.url).call() {
            Ok(response) if response.status().as_u16() == 200 => {
                let _ = probe.tx.send(Command::HealthPassed {
                    model: probe.model,
                    generation: probe.generation,
                });
                return;
            }
            Ok(response) => format!("{} answered {}", probe.url, response.status()),
            Err(error) => format!("{}: {error}", probe.url),
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
