//! The harness for the supervisor's transition table (`table_tests.rs`): the state run with
//! fake effects, in milliseconds, without a process.
//!
//! Each row is a config and a list of steps; each step (a request, a lease given back, a health
//! verdict, an exit, an unload, a reload, a shutdown, time passing) comes with the exact lines
//! it must produce: the effects the state asked for (spawns, probes, signals, `cmdStop`s,
//! cancelled probes), then the replies its requests received, then the unloads and shutdowns
//! that completed. The state runs with a fake [`Effects`] that records instead of acting and a
//! clock that only moves when a step says so; requests, tickets and leases are the real handle
//! API, and the commands they send are fed to [`State::turn`] one by one, as the loop would.
//! `tests/daemon/` covers the same behaviour with real processes.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use super::effects::{Effects, ProbeTarget, Signal};
use super::handle::Gates;
use super::state::State;
use super::{AcquireError, Command, IdleOverride, Lease, ReloadSummary, Reply, Supervisor, Ticket};
use crate::config::{LogToStdout, ModelConfig};
use crate::logs::Logs;
use crate::metrics::Metrics;

/// What the fake effects saw, shared by the fake (inside the state) and the harness.
struct World {
    now: Instant,
    /// Lines not yet collected by the harness.
    lines: Vec<String>,
    /// pid → `model#generation`, for readable signal lines.
    names: HashMap<u32, String>,
    /// Every probe started: its name and cancel flag, and whether its cancellation was seen.
    probes: Vec<(String, Arc<AtomicBool>, bool)>,
}

/// Records every effect; a command whose program is `missing` cannot be spawned, and a
/// `cmdStop` whose program is `failing-stop` fails.
struct Fake(Arc<Mutex<World>>);

fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    world
        .lock()
        .expect("no test panics while holding the world")
}

impl Effects for Fake {
    fn spawn(&mut self, model: &str, generation: u64, config: &ModelConfig) -> io::Result<u32> {
        let mut world = lock(&self.0);
        if config.cmd[0] == "missing" {
            world.lines.push(format!("spawn {model} failed"));
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        }
        let pid = 1000 + generation as u32;
        let name = format!("{model}#{generation}");
        world
            .lines
            .push(format!("spawn {name}: {}", config.cmd_display));
        world.names.insert(pid, name);
        Ok(pid)
    }

    fn start_probe(&mut self, probe: ProbeTarget) {
        let mut world = lock(&self.0);
        let name = format!("{}#{}", probe.model, probe.generation);
        world.lines.push(format!("probe {name}"));
        world.probes.push((name, probe.cancel, false));
    }

    fn signal(&mut self, pgid: u32, signal: Signal) {
        let mut world = lock(&self.0);
        let name = world
            .names
            .get(&pgid)
            .cloned()
            .unwrap_or_else(|| format!("pid {pgid}"));
        let signal = match signal {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        };
        world.lines.push(format!("{signal} {name}"));
    }

    fn run_stop_command(&mut self, argv: &[String], _env: &[(String, String)]) -> io::Result<()> {
        lock(&self.0)
            .lines
            .push(format!("cmdStop {}", argv.join(" ")));
        if argv[0] == "failing-stop" {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        }
        Ok(())
    }

    fn now(&self) -> Instant {
        lock(&self.0).now
    }
}

/// One step of a row. Names like `r1` label a request: its ticket, then its lease.
#[derive(Clone, Copy, Debug)]
pub(super) enum Step {
    /// A client's request for a model (`Supervisor::request`).
    Ask(&'static str, &'static str),
    /// An explicit load (`Supervisor::request_load`: preload, an API load).
    Load(&'static str, &'static str),
    /// A lease through the model's gate without asking the supervisor (`try_lease`).
    Fast(&'static str, &'static str),
    /// The request's client leaves before its final reply (the ticket is dropped).
    Leave(&'static str),
    /// The request finishes (its lease is dropped).
    Done(&'static str),
    /// The lease is given back unused (`Lease::withdraw`).
    Withdraw(&'static str),
    /// The health probe of the model's current start passes, or fails.
    Healthy(&'static str),
    Unhealthy(&'static str),
    /// The model's current process exits with this code.
    Exit(&'static str, i32),
    /// Late reports tagged with an explicit generation.
    HealthyGen(&'static str, u64),
    ExitGen(&'static str, u64),
    /// Unload one model, or all.
    Unload(Option<&'static str>),
    /// A request's idle-time override (Ollama's `keep_alive`).
    SetIdle(&'static str, Option<IdleOverride>),
    /// A reload with this config text.
    Reload(&'static str),
    Shutdown,
    /// Time moves to the loop's next deadline ("wake +N ms"), or "no deadline".
    Wake,
    /// Time moves on by this many milliseconds, then the loop takes a timer turn.
    Wait(u64),
    /// Every model's phase, with the leases out in brackets when there are any.
    Phases,
}

use Step::*;

struct Harness {
    state: State,
    rx: Receiver<Command>,
    handle: Supervisor,
    world: Arc<Mutex<World>>,
    tickets: Vec<(&'static str, Ticket)>,
    leases: HashMap<&'static str, Lease>,
    /// Unloads and shutdowns not yet done: a label and the receiver that disconnects.
    pending_done: Vec<(String, Receiver<()>)>,
    /// The loop's last turn said it is over (a shutdown completed); `announced` once said.
    ended: bool,
    announced: bool,
}

fn parse(text: &str) -> Arc<crate::config::Config> {
    let loaded = crate::config::parse(text, Path::new("table.yaml"), &|_| None)
        .expect("the table's configs are valid");
    Arc::new(loaded.config)
}

impl Harness {
    fn new(config: &str) -> Harness {
        let world = Arc::new(Mutex::new(World {
            now: Instant::now(),
            lines: Vec::new(),
            names: HashMap::new(),
            probes: Vec::new(),
        }));
        let (tx, rx) = crossbeam_channel::unbounded();
        let gates = Gates::default();
        let mut state = State::new(
            parse(config),
            Arc::new(Logs::new(LogToStdout::None, 64 * 1024)),
            Arc::new(Metrics::new(100)),
            tx.clone(),
            gates.clone(),
            Box::new(Fake(world.clone())),
        );
        // As `Supervisor::start` does before the loop runs.
        state.reconfigure_memory();
        state.memory_tick();
        state.publish_gates();
        let handle = Supervisor {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            gates,
            memory_report: state.memory_report.clone(),
        };
        Harness {
            state,
            rx,
            handle,
            world,
            tickets: Vec::new(),
            leases: HashMap::new(),
            pending_done: Vec::new(),
            ended: false,
            announced: false,
        }
    }

    fn send(&self, command: Command) {
        self.handle
            .tx
            .send(command)
            .expect("the harness holds the receiver");
    }

    /// The current generation of a model's slot.
    fn generation(&self, model: &str) -> u64 {
        self.state.slots[model].generation
    }

    fn advance(&mut self, by: Duration) {
        lock(&self.world).now += by;
    }

    /// Runs one step and returns the lines it produced.
    fn run(&mut self, step: Step) -> Vec<String> {
        let mut extra = Vec::new();
        match step {
            Ask(name, model) => self.tickets.push((name, self.handle.request(model))),
            Load(name, model) => self.tickets.push((name, self.handle.request_load(model))),
            Fast(name, model) => match self.handle.try_lease(model) {
                Some(lease) => {
                    extra.push(format!("{name} fast lease"));
                    self.leases.insert(name, lease);
                }
                None => extra.push(format!("{name} no fast lease")),
            },
            Leave(name) => self.tickets.retain(|(n, _)| *n != name),
            Done(name) => drop(self.leases.remove(name).expect("a lease to finish")),
            Withdraw(name) => self.leases.remove(name).expect("a lease").withdraw(),
            Healthy(model) => self.send(Command::HealthPassed {
                model: model.to_string(),
                generation: self.generation(model),
            }),
            Unhealthy(model) => self.send(Command::HealthFailed {
                model: model.to_string(),
                generation: self.generation(model),
                reason: "health check did not pass".to_string(),
            }),
            Exit(model, code) => self.send(Command::Exited {
                model: model.to_string(),
                generation: self.generation(model),
                status: ExitStatus::from_raw(code << 8),
            }),
            HealthyGen(model, generation) => self.send(Command::HealthPassed {
                model: model.to_string(),
                generation,
            }),
            ExitGen(model, generation) => self.send(Command::Exited {
                model: model.to_string(),
                generation,
                status: ExitStatus::from_raw(9),
            }),
            Unload(model) => {
                let (done, wait) = crossbeam_channel::bounded(0);
                let label = format!("unload {}", model.unwrap_or("all"));
                self.pending_done.push((label, wait));
                self.send(Command::Unload {
                    model: model.map(str::to_string),
                    done,
                });
            }
            SetIdle(model, idle) => self.handle.set_idle(model, idle),
            Reload(text) => {
                let (reply, summary) = crossbeam_channel::bounded(1);
                self.send(Command::Reconfigure {
                    config: parse(text),
                    reply,
                });
                self.settle();
                let summary = summary.try_recv().expect("a reload is answered at once");
                lock(&self.world).lines.insert(0, describe_reload(&summary));
            }
            Shutdown => {
                let (done, wait) = crossbeam_channel::bounded(0);
                self.pending_done.push(("shutdown".to_string(), wait));
                self.send(Command::Shutdown { done });
            }
            Wake => match self.state.next_deadline() {
                Some(deadline) => {
                    let mut world = lock(&self.world);
                    let by = deadline.saturating_duration_since(world.now);
                    world.lines.push(format!("wake +{}ms", by.as_millis()));
                    drop(world);
                    self.advance(by);
                    self.timer_turn();
                }
                None => extra.push("no deadline".to_string()),
            },
            Wait(ms) => {
                self.advance(Duration::from_millis(ms));
                self.timer_turn();
            }
            Phases => extra.push(self.phases()),
        }
        self.settle();
        self.collect(extra)
    }

    fn timer_turn(&mut self) {
        if !self.ended {
            self.ended = self.state.turn(None);
        }
    }

    /// Feeds every command sent so far (by the harness, tickets and leases) to the state, one
    /// turn each, as the loop does. Once the loop has ended, commands go unanswered.
    fn settle(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(command) if !self.ended => self.ended = self.state.turn(Some(command)),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    fn collect(&mut self, extra: Vec<String>) -> Vec<String> {
        let mut lines = {
            let mut world = lock(&self.world);
            let mut lines = std::mem::take(&mut world.lines);
            for (name, cancel, seen) in world.probes.iter_mut() {
                if !*seen && cancel.load(Ordering::Relaxed) {
                    *seen = true;
                    lines.push(format!("probe {name} cancelled"));
                }
            }
            lines
        };
        lines.extend(extra);
        let mut finished = Vec::new();
        // A ticket is polled until its final reply: after it, the reply channel is closed and
        // `wait` would read that as a shutdown.
        for (name, ticket) in self.tickets.iter_mut() {
            while let Some(reply) = ticket.wait(Duration::ZERO) {
                match reply {
                    Reply::Queued => lines.push(format!("{name} queued")),
                    Reply::Granted(lease) => {
                        lines.push(format!("{name} granted"));
                        self.leases.insert(name, lease);
                        finished.push(*name);
                        break;
                    }
                    Reply::Failed(error) => {
                        lines.push(format!("{name} failed {}", kind(&error)));
                        finished.push(*name);
                        break;
                    }
                }
            }
        }
        self.tickets.retain(|(name, _)| !finished.contains(name));
        self.pending_done.retain(|(label, wait)| {
            let done = matches!(wait.try_recv(), Err(TryRecvError::Disconnected));
            if done {
                lines.push(format!("{label} done"));
            }
            !done
        });
        if self.ended && !self.announced {
            lines.push("loop ends".to_string());
            self.announced = true;
        }
        lines
    }

    fn phases(&self) -> String {
        let mut models: Vec<(&String, String)> = self
            .state
            .slots
            .iter()
            .map(|(id, slot)| {
                let leases = slot.inflight();
                let phase = slot.phase.as_str();
                let text = if leases > 0 {
                    format!("{id}:{phase}[{leases}]")
                } else {
                    format!("{id}:{phase}")
                };
                (id, text)
            })
            .collect();
        models.sort();
        let texts: Vec<String> = models.into_iter().map(|(_, text)| text).collect();
        format!("phases {}", texts.join(" "))
    }
}

fn kind(error: &AcquireError) -> &'static str {
    match error {
        AcquireError::UnknownModel(_) => "UnknownModel",
        AcquireError::TooManyRequests(_) => "TooManyRequests",
        AcquireError::StartFailed(_) => "StartFailed",
        AcquireError::Unloaded(_) => "Unloaded",
        AcquireError::ShuttingDown => "ShuttingDown",
        AcquireError::TooLarge(_) => "TooLarge",
    }
}

fn describe_reload(summary: &ReloadSummary) -> String {
    let mut parts = vec!["reload".to_string()];
    for (what, ids) in [
        ("added", &summary.added),
        ("removed", &summary.removed),
        ("changed", &summary.changed),
        ("updated", &summary.updated),
    ] {
        if !ids.is_empty() {
            parts.push(format!("{what} {}", ids.join(",")));
        }
    }
    parts.join(" ")
}

/// A row: what it shows, the config, and each step with the lines it must produce.
pub(super) type Row = (
    &'static str,
    &'static str,
    &'static [(Step, &'static [&'static str])],
);

/// Runs rows and reports every row whose step differs (its first such step), so one broken
/// transition shows all the rows that depend on it. Within one step the order of lines is not
/// compared: the state visits models in hash order (an unload of all, a shutdown).
pub(super) fn check(rows: &[Row]) {
    let mut failures = Vec::new();
    for (what, config, steps) in rows {
        let mut harness = Harness::new(config);
        for (index, (step, expected)) in steps.iter().enumerate() {
            let mut got = harness.run(*step);
            let mut want: Vec<String> = expected.iter().map(|line| line.to_string()).collect();
            got.sort();
            want.sort();
            if got != want {
                failures.push(format!(
                    "{what}\n  step {index} {step:?}\n    expected {expected:?}\n    got      {got:?}"
                ));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n"));
}
