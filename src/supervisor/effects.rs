//! Everything the supervisor's state machine does to the world, behind one narrow trait.
//!
//! [`State`](super::state::State) decides; [`Effects`] acts: it spawns a model's process (with
//! its reaper and log reader threads), starts its health probe, signals a process group, runs a
//! `cmdStop` command and reads the clock. [`RealEffects`] does all of it for real and is what
//! [`Supervisor::start`](super::Supervisor::start) uses. Tests give the state a fake that
//! records each effect and a clock they move by hand, so the whole transition table runs in
//! milliseconds without a process (see `table_tests.rs`); the process-level behaviour stays
//! covered by `tests/daemon/`.
//!
//! What the real effects report back (a child's exit, a probe's verdict) arrives later as a
//! [`Command`] on the supervisor's channel, tagged with the generation it was started for;
//! a fake's tests send those commands themselves.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::{health, process, Command};
use crate::config::ModelConfig;
use crate::logs::Logs;

/// The signals the supervisor sends to a model's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// Asks it to stop (the grace period starts).
    Term,
    /// Ends it: the grace period ran out, or the leader exited and its group goes with it.
    Kill,
}

/// A health probe to start for one start (generation) of a model.
pub(super) struct ProbeTarget {
    pub model: String,
    pub generation: u64,
    /// The model's server, e.g. `http://127.0.0.1:5800`.
    pub base: String,
    /// The health path, e.g. `/health`.
    pub endpoint: String,
    /// `healthCheckTimeout`: the probe reports a failure after this long.
    pub timeout: Duration,
    /// Set by the supervisor when the start is over some other way; the probe then gives up
    /// without reporting.
    pub cancel: Arc<AtomicBool>,
}

/// The supervisor's effects. Every method is called from the supervisor thread only.
pub(super) trait Effects: Send {
    /// Spawns `config.cmd` for `model` in its own process group, with its output going to the
    /// model's log. Its exit must come back as [`Command::Exited`] tagged with `generation`.
    /// Returns the pid, which is also the process group id.
    fn spawn(&mut self, model: &str, generation: u64, config: &ModelConfig) -> io::Result<u32>;

    /// Starts polling a starting model's health endpoint; the verdict must come back as
    /// [`Command::HealthPassed`] or [`Command::HealthFailed`] tagged with the probe's
    /// generation, unless its `cancel` flag is set first.
    fn start_probe(&mut self, probe: ProbeTarget);

    /// Sends `signal` to the process group `pgid`.
    fn signal(&mut self, pgid: u32, signal: Signal);

    /// Runs a `cmdStop` command line (split, `${PID}` substituted) without waiting for it.
    fn run_stop_command(&mut self, argv: &[String], env: &[(String, String)]) -> io::Result<()>;

    /// The time now, for TTLs, kill deadlines and start durations.
    fn now(&self) -> Instant;
}

/// The effects for real: processes, threads, signals and the system clock.
pub(super) struct RealEffects {
    logs: Arc<Logs>,
    /// The supervisor's own channel, for exit reports and probe verdicts.
    tx: Sender<Command>,
}

impl RealEffects {
    pub(super) fn new(logs: Arc<Logs>, tx: Sender<Command>) -> RealEffects {
        RealEffects { logs, tx }
    }
}

impl Effects for RealEffects {
    fn spawn(&mut self, model: &str, generation: u64, config: &ModelConfig) -> io::Result<u32> {
        let logs = self.logs.clone();
        let sink = process::OutputSink {
            model_log: logs.model(model),
            also: Arc::new(move |bytes: &[u8]| logs.write_upstream(bytes)),
        };
        let tx = self.tx.clone();
        let exited_model = model.to_string();
        process::spawn(&config.cmd, &config.env, sink, move |status| {
            let _ = tx.send(Command::Exited {
                model: exited_model,
                generation,
                status,
            });
        })
    }

    fn start_probe(&mut self, probe: ProbeTarget) {
        health::start_probe(health::Probe {
            base: probe.base,
            endpoint: probe.endpoint,
            model: probe.model,
            generation: probe.generation,
            timeout: probe.timeout,
            cancel: probe.cancel,
            tx: self.tx.clone(),
        });
    }

    fn signal(&mut self, pgid: u32, signal: Signal) {
        let number = match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        process::signal_group(pgid, number);
    }

    fn run_stop_command(&mut self, argv: &[String], env: &[(String, String)]) -> io::Result<()> {
        process::run_stop_command(argv, env)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}
