//! The supervisor: one thread that owns every child process and every model's state.
//!
//! Request handlers never read model state to decide anything. They call
//! [`Supervisor::request`] and wait on the [`Ticket`]; the supervisor admits, queues, starts,
//! swaps and answers. Everything that can block (health polling, waiting for a process to exit,
//! reading its output) runs on helper threads that report back as [`Command`]s tagged with a
//! generation number, so stale reports are recognised and dropped. The loop itself never blocks
//! except on its own channel.

mod admission;
pub mod footprints;
pub mod gate;
pub mod health;
pub use crate::config::matrix_solver as matrix;
pub mod memory;
pub mod plan;
mod preload;
pub mod process;
mod reload_request;
pub mod sampler;
#[cfg(test)]
mod stale_tests;

pub use preload::preload;
pub use reload_request::{ReloadOutcome, ReloadRequest};

use std::collections::{HashMap, VecDeque};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config::{Config, ModelConfig};
use crate::logs::Logs;
use crate::metrics::Metrics;
use crate::systemd::Notifier;

/// Why a model could not be acquired. Each maps to one HTTP status (see `proxy::errors`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AcquireError {
    /// The model id is not configured.
    UnknownModel(String),
    /// `concurrencyLimit` admitted requests are already queued, waiting or serving.
    TooManyRequests(String),
    /// The child exited during start or never became healthy; the message says why.
    StartFailed(String),
    /// The model was unloaded while this request waited for it.
    Unloaded(String),
    /// swapd is shutting down.
    ShuttingDown,
    /// The model's footprint exceeds a whole memory budget (`swapd.memory`); the message
    /// gives both.
    TooLarge(String),
}

impl std::fmt::Display for AcquireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcquireError::UnknownModel(model) => write!(f, "could not find model '{model}'"),
            AcquireError::TooManyRequests(_) => write!(f, "Too many requests"),
            AcquireError::StartFailed(message) => write!(f, "{message}"),
            AcquireError::Unloaded(model) => {
                write!(
                    f,
                    "model '{model}' was unloaded while the request waited for it"
                )
            }
            AcquireError::ShuttingDown => write!(f, "swapd is shutting down"),
            AcquireError::TooLarge(message) => write!(f, "{message}"),
        }
    }
}

/// The right to send requests to a running model. Dropping it tells the supervisor the request
/// is finished, so in-flight counts cannot leak, even on panic.
pub struct Lease {
    model: Arc<str>,
    upstream: Arc<str>,
    gate: Arc<gate::Gate>,
    tx: Sender<Command>,
    /// Given back unused: its client left while it waited for the model's start.
    withdrawn: bool,
}

impl Lease {
    /// The model id this lease is for.
    pub fn model(&self) -> &str {
        &self.model
    }
    /// The base URL of the running upstream (`proxy` of the config it was started with).
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Gives the lease back unused because its client left while waiting for the model's
    /// start: the grant raced with the client's departure. If nobody else has used or wants
    /// the model since it became ready, the supervisor abandons the start after all (see
    /// [`abandon_unused_start`]).
    pub fn withdraw(mut self) {
        self.withdrawn = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // The supervisor only needs to hear of the last lease going: that starts the TTL and
        // lets a waiting swap or reload proceed.
        if self.gate.release() == 0 {
            let model = self.model.clone();
            let _ = self.tx.send(if self.withdrawn {
                Command::Withdrawn { model }
            } else {
                Command::Release { model }
            });
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.model)
    }
}

/// What the supervisor answers to a request, in order: at most one `Queued`, then one final.
#[derive(Debug)]
pub enum Reply {
    /// Admitted, but the model is not ready: the final reply follows later.
    Queued,
    Granted(Lease),
    Failed(AcquireError),
}

/// A request's place in the supervisor. Dropping it before the final reply withdraws the
/// request (the client went away), so it neither keeps a model loaded nor triggers a swap.
pub struct Ticket {
    id: u64,
    rx: Receiver<Reply>,
    tx: Sender<Command>,
    finished: bool,
}

impl Ticket {
    /// Waits up to `timeout` for the next reply. `None` means still waiting.
    pub fn wait(&mut self, timeout: Duration) -> Option<Reply> {
        let reply = match self.rx.recv_timeout(timeout) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => return None,
            Err(RecvTimeoutError::Disconnected) => Reply::Failed(AcquireError::ShuttingDown),
        };
        if !matches!(reply, Reply::Queued) {
            self.finished = true;
        }
        Some(reply)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.tx.send(Command::Cancel { id: self.id });
        }
    }
}

/// A model's lifecycle phase, as `/running` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Starting,
    Ready,
    Stopping,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
        }
    }
}

/// One model's state as seen from outside.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelStatus {
    pub model: String,
    pub phase: Phase,
    pub pid: Option<u32>,
    pub inflight: usize,
    pub queued: usize,
    /// How long until the idle-time unload if nothing else uses the model (the whole idle time
    /// while it is busy); `None` when it is never unloaded for idleness.
    pub expires_in: Option<Duration>,
}

/// A request's override of a model's idle time (Ollama's `keep_alive`). It replaces the
/// config's `ttl` until the model's process next stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleOverride {
    /// Unload after this long idle; zero unloads as soon as the model is idle.
    After(Duration),
    /// Never unload for idleness.
    Never,
}

/// Messages into the supervisor loop. Closed: the loop matches every variant.
pub enum Command {
    Acquire {
        id: u64,
        model: String,
        reply: Sender<Reply>,
        /// An explicit load (preload, an API load call): a start it causes or joins is never
        /// abandoned, even when no request waits for it any more.
        hold: bool,
    },
    Cancel {
        id: u64,
    },
    Release {
        model: Arc<str>,
    },
    /// The last lease out was given back unused (see [`Lease::withdraw`]).
    Withdrawn {
        model: Arc<str>,
    },
    HealthPassed {
        model: String,
        generation: u64,
    },
    HealthFailed {
        model: String,
        generation: u64,
        reason: String,
    },
    Exited {
        model: String,
        generation: u64,
        status: ExitStatus,
    },
    /// Stop one model (`Some`) or all; `done` is dropped once they are stopped.
    Unload {
        model: Option<String>,
        done: Sender<()>,
    },
    Snapshot {
        reply: Sender<Vec<ModelStatus>>,
    },
    /// Set (`Some`) or clear a running model's idle-time override.
    SetIdle {
        model: String,
        idle: Option<IdleOverride>,
    },
    Shutdown {
        done: Sender<()>,
    },
    /// A memory sample of a running model's process group (see [`sampler`]).
    Observed {
        model: String,
        generation: u64,
        observed: memory::Footprint,
    },
    /// Apply a new configuration; the reply says what changed.
    Reconfigure {
        config: Arc<Config>,
        reply: Sender<ReloadSummary>,
    },
}

/// What a reload did to the models, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Start-relevant settings changed: restarted on next use (after in-flight requests).
    pub changed: Vec<String>,
    /// Only per-request settings changed: the running process keeps serving.
    pub updated: Vec<String>,
}

/// What handlers need to take a lease without asking the supervisor (see [`gate`]).
#[derive(Clone)]
struct GateEntry {
    model: Arc<str>,
    upstream: Arc<str>,
    gate: Arc<gate::Gate>,
}

/// The gates of the configured models, published by the supervisor thread (the only writer).
type Gates = Arc<RwLock<HashMap<String, GateEntry>>>;

/// The handle request handlers hold. Cloning is cheap; the loop ends on `shutdown`.
#[derive(Clone)]
pub struct Supervisor {
    tx: Sender<Command>,
    next_id: Arc<AtomicU64>,
    gates: Gates,
    memory_report: footprints::ReportHandle,
}

impl Supervisor {
    /// Starts the supervisor thread.
    pub fn start(
        config: Arc<Config>,
        logs: Arc<Logs>,
        metrics: Arc<Metrics>,
    ) -> (Supervisor, thread::JoinHandle<()>) {
        Supervisor::start_with_notifier(config, logs, metrics, Arc::new(Notifier::disabled()))
    }

    /// Starts the supervisor thread, which also keeps systemd informed: the `STATUS=` line
    /// whenever the model counts change, and the watchdog pings (from its own loop, so a
    /// wedged supervisor stops pinging and systemd restarts swapd).
    pub fn start_with_notifier(
        config: Arc<Config>,
        logs: Arc<Logs>,
        metrics: Arc<Metrics>,
        notifier: Arc<Notifier>,
    ) -> (Supervisor, thread::JoinHandle<()>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let gates = Gates::default();
        let mut state = State::new(config, logs, metrics, tx.clone(), gates.clone());
        state.systemd = SystemdReport::new(notifier);
        let memory_report = state.memory_report.clone();
        state.reconfigure_memory();
        state.memory_tick();
        state.publish_gates();
        let handle = thread::Builder::new()
            .name("supervisor".to_string())
            .spawn(move || state.run(rx))
            .expect("the supervisor thread must start for swapd to run at all");
        (
            Supervisor {
                tx,
                next_id: Arc::new(AtomicU64::new(1)),
                gates,
                memory_report,
            },
            handle,
        )
    }

    /// Takes a lease on a ready model without involving the supervisor thread, if its gate is
    /// open; `None` means: ask with [`Supervisor::request`].
    pub fn try_lease(&self, model: &str) -> Option<Lease> {
        let gates = self
            .gates
            .read()
            .expect("the gate registry lock is never held across a panic");
        let entry = gates.get(model)?;
        if !entry.gate.try_enter() {
            return None;
        }
        Some(Lease {
            model: entry.model.clone(),
            upstream: entry.upstream.clone(),
            gate: entry.gate.clone(),
            tx: self.tx.clone(),
            withdrawn: false,
        })
    }

    /// Asks for `model` (a configured id, aliases already resolved). The first reply arrives
    /// at once: `Granted` on the fast path, `Failed` when not admitted, else `Queued`.
    ///
    /// This is a client's request: if every request waiting for a start is withdrawn, the start
    /// is abandoned (see [`abandon_start`]).
    pub fn request(&self, model: &str) -> Ticket {
        self.send_request(model, false)
    }

    /// Like [`Supervisor::request`], for an explicit load (`hooks.on_startup.preload`, an API
    /// call that loads a model): the start it causes or joins is kept even when every client
    /// waiting for it leaves.
    pub fn request_load(&self, model: &str) -> Ticket {
        self.send_request(model, true)
    }

    fn send_request(&self, model: &str, hold: bool) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = crossbeam_channel::bounded(2);
        let _ = self.tx.send(Command::Acquire {
            id,
            model: model.to_string(),
            reply,
            hold,
        });
        Ticket {
            id,
            rx,
            tx: self.tx.clone(),
            finished: false,
        }
    }

    /// Blocks until the model is granted or fails (no client to watch: preload, tests). This
    /// is an explicit load: the start is never abandoned.
    pub fn acquire_blocking(&self, model: &str) -> Result<Lease, AcquireError> {
        let mut ticket = self.request_load(model);
        loop {
            match ticket.wait(Duration::from_secs(3600)) {
                Some(Reply::Granted(lease)) => return Ok(lease),
                Some(Reply::Failed(error)) => return Err(error),
                Some(Reply::Queued) | None => continue,
            }
        }
    }

    /// Stops one model or all and waits until they are stopped.
    pub fn unload(&self, model: Option<&str>) {
        let (done, wait) = crossbeam_channel::bounded::<()>(0);
        let _ = self.tx.send(Command::Unload {
            model: model.map(str::to_string),
            done,
        });
        // Every sender is dropped once its model is stopped: a free wait group.
        let _ = wait.recv();
    }

    /// Overrides (`Some`) or restores (`None`) a running model's idle time until it next
    /// stops. Send it while holding a lease on the model, so that a zero idle time cannot stop
    /// the model before the request that asked for it has run.
    pub fn set_idle(&self, model: &str, idle: Option<IdleOverride>) {
        let _ = self.tx.send(Command::SetIdle {
            model: model.to_string(),
            idle,
        });
    }

    /// The state of every configured model.
    /// What memory-aware scheduling knows (budgets, footprints), or `None` when it is off.
    pub fn memory_report(&self) -> Option<footprints::MemoryReport> {
        self.memory_report
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn snapshot(&self) -> Vec<ModelStatus> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Command::Snapshot { reply }).is_err() {
            return Vec::new();
        }
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    }

    /// Applies a new configuration (see [`ReloadSummary`]); returns once the supervisor has
    /// taken it over.
    pub fn reconfigure(&self, config: Arc<Config>) -> ReloadSummary {
        let (reply, rx) = crossbeam_channel::bounded(1);
        if self
            .tx
            .send(Command::Reconfigure { config, reply })
            .is_err()
        {
            return ReloadSummary::default();
        }
        rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default()
    }

    /// Fails every waiting request, stops every child, and returns once all are reaped or
    /// `timeout` has passed.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let (done, wait) = crossbeam_channel::bounded::<()>(0);
        if self.tx.send(Command::Shutdown { done }).is_err() {
            return true;
        }
        !matches!(wait.recv_timeout(timeout), Err(RecvTimeoutError::Timeout))
    }
}

struct Waiter {
    id: u64,
    reply: Sender<Reply>,
}

struct Pending {
    id: u64,
    model: String,
    reply: Sender<Reply>,
    hold: bool,
    /// When this request first had to wait for memory (`swapd.memory`).
    memory_wait: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StopReason {
    Swap,
    Ttl,
    Unload,
    StartFailed,
    Shutdown,
    Reload,
    /// Every request waiting for the start was withdrawn and no explicit load holds it.
    Abandoned,
    /// Evicted to make room under `swapd.memory`.
    Memory,
}

struct Slot {
    config: Arc<ModelConfig>,
    phase: Phase,
    generation: u64,
    pid: Option<u32>,
    probe_cancel: Option<Arc<AtomicBool>>,
    /// Counts the leases out; open while the model is ready and takes new requests.
    gate: Arc<gate::Gate>,
    waiters: Vec<Waiter>,
    last_used: Instant,
    kill_at: Option<Instant>,
    stop_waiters: Vec<Sender<()>>,
    spawned_at: Instant,
    /// An explicit load (preload, API) caused or joined the current start, so it is kept
    /// even when no request waits for it. Reset by every new start.
    start_held: bool,
    /// A request has finished on the current process since it became ready (a `Release`).
    served: bool,
    /// A reload changed how this model starts: the new settings wait here until the running
    /// process has drained and stopped.
    pending_config: Option<Arc<ModelConfig>>,
    /// A reload removed this model: it is stopped once drained, then forgotten.
    removed: bool,
    /// A request's idle time for this process (Ollama's `keep_alive`); cleared when it stops.
    idle_override: Option<IdleOverride>,
}

impl Slot {
    fn new(config: Arc<ModelConfig>) -> Slot {
        Slot {
            gate: Arc::new(gate::Gate::new(config.concurrency_limit)),
            config,
            phase: Phase::Stopped,
            generation: 0,
            pid: None,
            probe_cancel: None,
            waiters: Vec::new(),
            last_used: Instant::now(),
            kill_at: None,
            stop_waiters: Vec::new(),
            spawned_at: Instant::now(),
            start_held: false,
            served: false,
            pending_config: None,
            removed: false,
            idle_override: None,
        }
    }

    /// The idle time after which this model is unloaded; `None` means never.
    fn idle_time(&self) -> Option<Duration> {
        match self.idle_override {
            Some(IdleOverride::Never) => None,
            Some(IdleOverride::After(idle)) => Some(idle),
            None => (!self.config.ttl.is_zero()).then_some(self.config.ttl),
        }
    }

    /// Idle: running with nobody using or waiting for it, so it may be stopped for a swap.
    fn idle(&self) -> bool {
        self.phase == Phase::Ready && self.gate.inflight() == 0 && self.waiters.is_empty()
    }

    fn inflight(&self) -> usize {
        self.gate.inflight()
    }

    /// A reload replaced or removed this model: its process takes no new requests.
    fn retiring(&self) -> bool {
        self.pending_config.is_some() || self.removed
    }
}

struct State {
    config: Arc<Config>,
    logs: Arc<Logs>,
    metrics: Arc<Metrics>,
    tx: Sender<Command>,
    slots: HashMap<String, Slot>,
    queue: VecDeque<Pending>,
    next_generation: u64,
    shutting_down: bool,
    shutdown_done: Vec<Sender<()>>,
    gates: Gates,
    systemd: SystemdReport,
    /// Logs and counts the matrix router's decisions once each.
    matrix_log: plan::DecisionLog,
    /// Memory-aware scheduling; `None` unless `swapd.memory` is configured.
    memory: Option<footprints::MemoryState>,
    memory_report: footprints::ReportHandle,
}

/// What the supervisor tells systemd, and when it last did.
struct SystemdReport {
    notifier: Arc<Notifier>,
    /// When the next `WATCHDOG=1` is due (`None` without a watchdog).
    next_watchdog: Option<Instant>,
    last_status: String,
}

impl SystemdReport {
    fn new(notifier: Arc<Notifier>) -> SystemdReport {
        SystemdReport {
            next_watchdog: notifier.watchdog_interval().map(|_| Instant::now()),
            notifier,
            last_status: String::new(),
        }
    }
}

impl State {
    fn new(
        config: Arc<Config>,
        logs: Arc<Logs>,
        metrics: Arc<Metrics>,
        tx: Sender<Command>,
        gates: Gates,
    ) -> State {
        let slots = config
            .models
            .iter()
            .map(|(id, model)| (id.clone(), Slot::new(Arc::new(model.clone()))))
            .collect();
        State {
            config,
            logs,
            metrics,
            tx,
            slots,
            queue: VecDeque::new(),
            next_generation: 1,
            shutting_down: false,
            shutdown_done: Vec::new(),
            gates,
            systemd: SystemdReport::new(Arc::new(Notifier::disabled())),
            matrix_log: plan::DecisionLog::default(),
            memory: None,
            memory_report: footprints::ReportHandle::default(),
        }
    }

    /// Publishes each model's gate and upstream for [`Supervisor::try_lease`]. Called whenever
    /// a model is added or removed or its settings change.
    fn publish_gates(&self) {
        let entries = self
            .slots
            .iter()
            .map(|(id, slot)| {
                (
                    id.clone(),
                    GateEntry {
                        model: Arc::from(id.as_str()),
                        upstream: Arc::from(slot.config.proxy.as_str()),
                        gate: slot.gate.clone(),
                    },
                )
            })
            .collect();
        *self
            .gates
            .write()
            .expect("the gate registry lock is never held across a panic") = entries;
    }

    /// Opens a ready model's gate unless it must not take new requests.
    fn open_gate(&self, model: &str) {
        if let Some(slot) = self.slots.get(model) {
            if slot.phase == Phase::Ready && !slot.retiring() && !self.shutting_down {
                slot.gate.open(slot.config.concurrency_limit);
            }
        }
    }

    fn run(&mut self, rx: Receiver<Command>) {
        self.report_to_systemd(Instant::now());
        loop {
            let deadline = match (self.next_deadline(), self.systemd.next_watchdog) {
                (Some(timer), Some(watchdog)) => Some(timer.min(watchdog)),
                (timer, watchdog) => timer.or(watchdog),
            };
            let command = match deadline {
                Some(deadline) => match rx.recv_deadline(deadline) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(command) => Some(command),
                    Err(_) => break,
                },
            };
            if let Some(command) = command {
                self.handle(command);
            }
            self.on_timers(Instant::now());
            self.retire_drained();
            self.pump();
            self.memory_tick();
            self.report_to_systemd(Instant::now());
            if self.shutting_down && self.slots.values().all(|s| s.phase == Phase::Stopped) {
                self.shutdown_done.clear();
                break;
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Acquire {
                id,
                model,
                reply,
                hold,
            } => self.on_acquire(id, model, reply, hold),
            Command::Cancel { id } => self.on_cancel(id),
            Command::Release { model } => {
                // The gate counted the release; this message says the model went idle.
                if let Some(slot) = self.slots.get_mut(&*model) {
                    slot.last_used = Instant::now();
                    slot.served = true;
                }
            }
            Command::Withdrawn { model } => self.on_withdrawn(&model),
            Command::HealthPassed { model, generation } => self.on_healthy(&model, generation),
            Command::HealthFailed {
                model,
                generation,
                reason,
            } => self.on_health_failed(&model, generation, reason),
            Command::Exited {
                model,
                generation,
                status,
            } => self.on_exited(&model, generation, status),
            Command::Unload { model, done } => self.on_unload(model, done),
            Command::Snapshot { reply } => {
                let now = Instant::now();
                let mut statuses: Vec<ModelStatus> = self
                    .slots
                    .iter()
                    .map(|(id, slot)| ModelStatus {
                        model: id.clone(),
                        phase: slot.phase,
                        pid: slot.pid,
                        inflight: slot.inflight(),
                        queued: slot.waiters.len()
                            + self.queue.iter().filter(|p| &p.model == id).count(),
                        expires_in: match ttl_deadline(slot) {
                            Some(deadline) => Some(deadline.saturating_duration_since(now)),
                            None => slot.idle_time(),
                        },
                    })
                    .collect();
                statuses.sort_by(|a, b| a.model.cmp(&b.model));
                let _ = reply.send(statuses);
            }
            Command::Observed {
                model,
                generation,
                observed,
            } => self.on_observed(&model, generation, observed),
            Command::Reconfigure { config, reply } => {
                let summary = self.on_reconfigure(config);
                let _ = reply.send(summary);
            }
            Command::SetIdle { model, idle } => {
                // Only a running process has an idle time to override.
                if let Some(slot) = self.slots.get_mut(&model) {
                    if matches!(slot.phase, Phase::Starting | Phase::Ready) {
                        slot.idle_override = idle;
                    }
                }
            }
            Command::Shutdown { done } => {
                if !self.shutting_down {
                    log::info!("supervisor: shutting down, stopping every model");
                }
                self.shutting_down = true;
                self.shutdown_done.push(done);
                for slot in self.slots.values() {
                    slot.gate.close();
                }
                for pending in self.queue.drain(..) {
                    let _ = pending
                        .reply
                        .send(Reply::Failed(AcquireError::ShuttingDown));
                }
                let running: Vec<String> = self
                    .slots
                    .iter()
                    .filter(|(_, s)| matches!(s.phase, Phase::Starting | Phase::Ready))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in running {
                    let grace = self.slots[&id].config.unload_timeout;
                    self.begin_stop(&id, StopReason::Shutdown, grace);
                }
                // A model already stopping keeps its deadline unless a reload has since
                // shortened its unloadTimeout; shutdown never waits longer than that.
                let now = Instant::now();
                for slot in self.slots.values_mut() {
                    if slot.phase == Phase::Stopping {
                        let limit = now + slot.config.unload_timeout;
                        slot.kill_at = Some(slot.kill_at.map_or(limit, |at| at.min(limit)));
                    }
                }
            }
        }
    }

    /// A request was withdrawn (its client left). If it was the last one waiting for a start
    /// that no explicit load holds, the start is abandoned: nobody wants the model any more,
    /// and a model left loaded would hold its memory until its TTL, or forever.
    fn on_cancel(&mut self, id: u64) {
        self.queue.retain(|p| p.id != id);
        let mut left: Option<String> = None;
        for (model, slot) in self.slots.iter_mut() {
            let before = slot.waiters.len();
            slot.waiters.retain(|w| w.id != id);
            if slot.waiters.len() != before {
                left = Some(model.clone());
            }
        }
        let Some(model) = left else {
            return;
        };
        let slot = &self.slots[&model];
        let queued = self.queue.iter().filter(|p| p.model == model).count();
        if abandon_start(
            slot.phase,
            slot.waiters.len() + queued,
            slot.start_held,
            self.shutting_down,
        ) {
            log::info!("{model}: every request waiting for its start left; abandoning the start");
            let grace = slot.config.unload_timeout;
            self.begin_stop(&model, StopReason::Abandoned, grace);
        }
    }

    /// The last lease out was given back unused: its client left while waiting for the start,
    /// too late for [`State::on_cancel`] (the model became ready first). If the start was for
    /// nobody else, it is abandoned now, so it does not stay ready.
    fn on_withdrawn(&mut self, model: &str) {
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        slot.last_used = Instant::now();
        let queued = self.queue.iter().filter(|p| p.model == model).count();
        let slot = &self.slots[model];
        if abandon_unused_start(
            slot.phase,
            slot.served,
            slot.waiters.len() + queued,
            slot.start_held || slot.retiring(),
            self.shutting_down,
        ) && slot.gate.close_if_idle()
        {
            log::info!(
                "{model}: the requests it was started for left as it became ready; stopping it"
            );
            let grace = slot.config.unload_timeout;
            self.begin_stop(model, StopReason::Abandoned, grace);
        }
    }

    fn on_acquire(&mut self, id: u64, model: String, reply: Sender<Reply>, hold: bool) {
        if self.shutting_down {
            let _ = reply.send(Reply::Failed(AcquireError::ShuttingDown));
            return;
        }
        let Some(slot) = self.slots.get(&model).filter(|slot| !slot.removed) else {
            let _ = reply.send(Reply::Failed(AcquireError::UnknownModel(model)));
            return;
        };
        let admitted = slot.inflight()
            + slot.waiters.len()
            + self.queue.iter().filter(|p| p.model == model).count();
        if admitted >= slot.config.concurrency_limit {
            let _ = reply.send(Reply::Failed(AcquireError::TooManyRequests(model)));
            return;
        }
        // Fast path: a ready model serves at once, even when an earlier queued request waits
        // to evict it (llama-swap's collation; the swap happens once it drains).
        if slot.phase == Phase::Ready && !slot.retiring() {
            let lease = self.grant(&model);
            let _ = reply.send(Reply::Granted(lease));
            return;
        }
        let _ = reply.send(Reply::Queued);
        self.queue.push_back(Pending {
            id,
            model,
            reply,
            hold,
            memory_wait: None,
        });
    }

    fn grant(&mut self, model: &str) -> Lease {
        let slot = self
            .slots
            .get_mut(model)
            .expect("grant is only called for configured models");
        slot.gate.enter_granted();
        Lease {
            model: Arc::from(model),
            upstream: Arc::from(slot.config.proxy.as_str()),
            gate: slot.gate.clone(),
            tx: self.tx.clone(),
            withdrawn: false,
        }
    }

    /// Serves, joins or starts what the queue allows, in arrival order. Requests for a model
    /// that is ready or starting are served or joined at once, which collates A B A B into
    /// A A B B; a swap waits until every model it must evict is idle.
    fn pump(&mut self) {
        if self.shutting_down {
            return;
        }
        let mut index = 0;
        let mut memory_blocked = false;
        while index < self.queue.len() {
            let model = self.queue[index].model.clone();
            let phase = self.slots[&model].phase;
            match phase {
                Phase::Stopped if self.memory.is_some() => {
                    if !self.admit_with_memory(index, &mut memory_blocked) {
                        index += 1;
                    }
                }
                Phase::Ready if self.slots[&model].retiring() => index += 1,
                Phase::Ready => {
                    let pending = self.queue.remove(index).expect("index is in bounds");
                    let lease = self.grant(&model);
                    let _ = pending.reply.send(Reply::Granted(lease));
                }
                Phase::Starting => {
                    let pending = self.queue.remove(index).expect("index is in bounds");
                    let slot = self
                        .slots
                        .get_mut(&model)
                        .expect("queued models are configured");
                    slot.start_held |= pending.hold;
                    slot.waiters.push(Waiter {
                        id: pending.id,
                        reply: pending.reply,
                    });
                }
                Phase::Stopping => index += 1,
                Phase::Stopped => {
                    let running: Vec<&str> = self
                        .slots
                        .iter()
                        .filter(|(_, s)| s.phase != Phase::Stopped)
                        .map(|(id, _)| id.as_str())
                        .collect();
                    let swap_plan = plan::plan(&model, &running, &self.config);
                    let evict = swap_plan.evict.clone();
                    if evict.is_empty() {
                        self.matrix_log
                            .note(&model, &swap_plan, &self.config, &self.metrics);
                        let pending = self.queue.remove(index).expect("index is in bounds");
                        self.start(&model);
                        let slot = self.slots.get_mut(&model).expect("configured");
                        if slot.phase == Phase::Starting {
                            slot.start_held = pending.hold;
                            slot.waiters.push(Waiter {
                                id: pending.id,
                                reply: pending.reply,
                            });
                        } else if slot.phase == Phase::Ready {
                            // `checkEndpoint: none`: ready as soon as spawned.
                            let lease = self.grant(&model);
                            let _ = pending.reply.send(Reply::Granted(lease));
                        } else {
                            // The spawn itself failed; `start` recorded why.
                            let message =
                                self.start_failure_message(&model, "could not be started");
                            let _ = pending
                                .reply
                                .send(Reply::Failed(AcquireError::StartFailed(message)));
                        }
                    } else {
                        if self.close_all_if_idle(&evict) {
                            self.matrix_log
                                .note(&model, &swap_plan, &self.config, &self.metrics);
                            self.metrics.record_swap();
                            for id in &evict {
                                log::info!(model = model; "swapping: stopping {id} to load {model}");
                                // Every stop uses unloadTimeout (llama-swap waits
                                // healthCheckTimeout here, so a swap away from a server that
                                // ignores SIGTERM made the request wait minutes).
                                let grace = self.slots[id].config.unload_timeout;
                                self.begin_stop(id, StopReason::Swap, grace);
                            }
                        }
                        index += 1;
                    }
                }
            }
        }
    }

    /// Closes the gates of `models` if every one is idle (a swap may evict them); otherwise
    /// leaves them all open.
    fn close_all_if_idle(&self, models: &[String]) -> bool {
        let mut closed = Vec::new();
        for id in models {
            let slot = &self.slots[id];
            if slot.idle() && slot.gate.close_if_idle() {
                closed.push(id);
            } else {
                for id in closed {
                    self.open_gate(id);
                }
                return false;
            }
        }
        true
    }

    fn start(&mut self, model: &str) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let logs = self.logs.clone();
        let model_log = logs.model(model);
        let slot = self.slots.get_mut(model).expect("configured");
        let config = slot.config.clone();
        let tx = self.tx.clone();
        let exited_model = model.to_string();
        let sink = process::OutputSink {
            model_log,
            also: Arc::new(move |bytes: &[u8]| logs.write_upstream(bytes)),
        };
        log::info!(model = model; "starting {model}: {}", config.cmd_display);
        let spawned = process::spawn(&config.cmd, &config.env, sink, move |status| {
            let _ = tx.send(Command::Exited {
                model: exited_model,
                generation,
                status,
            });
        });
        let pid = match spawned {
            Ok(pid) => pid,
            Err(error) => {
                log::error!(model = model; "cannot start {model}: {}: {error}", config.cmd_display);
                self.logs.model(model).write(
                    format!("swapd: cannot start '{}': {error}\n", config.cmd[0]).as_bytes(),
                );
                return;
            }
        };
        slot.phase = Phase::Starting;
        slot.start_held = false;
        slot.spawned_at = Instant::now();
        slot.generation = generation;
        slot.pid = Some(pid);
        slot.kill_at = None;
        match &config.check_endpoint {
            None => {
                slot.phase = Phase::Ready;
                slot.last_used = Instant::now();
                self.metrics
                    .record_start(model, true, slot.spawned_at.elapsed());
                self.open_gate(model);
                self.wake_waiters(model);
            }
            Some(endpoint) => {
                let cancel = Arc::new(AtomicBool::new(false));
                slot.probe_cancel = Some(cancel.clone());
                health::start_probe(health::Probe {
                    base: config.proxy.clone(),
                    endpoint: endpoint.to_string(),
                    model: model.to_string(),
                    generation,
                    timeout: self.config.health_check_timeout,
                    cancel,
                    tx: self.tx.clone(),
                });
            }
        }
    }

    fn on_healthy(&mut self, model: &str, generation: u64) {
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        if slot.generation != generation || slot.phase != Phase::Starting {
            return;
        }
        slot.phase = Phase::Ready;
        slot.probe_cancel = None;
        slot.last_used = Instant::now();
        slot.served = false;
        let took = slot.spawned_at.elapsed();
        self.metrics.record_start(model, true, took);
        log::info!(
            model = model;
            "{model} is ready ({:.0} ms after spawn)",
            took.as_secs_f64() * 1000.0
        );
        self.open_gate(model);
        self.wake_waiters(model);
    }

    fn wake_waiters(&mut self, model: &str) {
        let waiters = std::mem::take(&mut self.slots.get_mut(model).expect("configured").waiters);
        for waiter in waiters {
            let lease = self.grant(model);
            // A waiter whose client left drops the lease with the channel: released at once.
            let _ = waiter.reply.send(Reply::Granted(lease));
        }
    }

    fn fail_waiters(&mut self, model: &str, error: AcquireError) {
        let slot = self.slots.get_mut(model).expect("configured");
        for waiter in slot.waiters.drain(..) {
            let _ = waiter.reply.send(Reply::Failed(error.clone()));
        }
    }

    fn on_health_failed(&mut self, model: &str, generation: u64, reason: String) {
        let Some(slot) = self.slots.get(model) else {
            return;
        };
        if slot.generation != generation || slot.phase != Phase::Starting {
            return;
        }
        let message = self.start_failure_message(model, &reason);
        log::error!("{message}");
        self.metrics
            .record_start(model, false, slot.spawned_at.elapsed());
        self.fail_waiters(model, AcquireError::StartFailed(message));
        let grace = self.slots[model].config.unload_timeout;
        self.begin_stop(model, StopReason::StartFailed, grace);
    }

    fn start_failure_message(&self, model: &str, reason: &str) -> String {
        let tail = self
            .logs
            .existing_model(model)
            .map(|buffer| last_lines(&buffer.history(), 10))
            .unwrap_or_default();
        if tail.is_empty() {
            format!("model '{model}' failed to start: {reason}")
        } else {
            format!("model '{model}' failed to start: {reason}; last output:\n{tail}")
        }
    }

    fn on_exited(&mut self, model: &str, generation: u64, status: ExitStatus) {
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let described = process::describe_exit(&status);
        let pid = slot.pid.take();
        if let Some(pid) = pid {
            // The leader is gone; take any grandchildren still in its group with it.
            process::signal_group(pid, libc::SIGKILL);
        }
        if let Some(cancel) = slot.probe_cancel.take() {
            cancel.store(true, Ordering::Relaxed);
        }
        let previous = slot.phase;
        let spawned_at = slot.spawned_at;
        slot.gate.close();
        slot.phase = Phase::Stopped;
        slot.kill_at = None;
        slot.idle_override = None;
        slot.stop_waiters.clear();
        self.metrics.record_child_exit(model);
        match previous {
            Phase::Starting => {
                self.metrics
                    .record_start(model, false, spawned_at.elapsed());
                let message = self.start_failure_message(
                    model,
                    &format!("process exited during start with {described}"),
                );
                log::error!("{message}");
                self.fail_waiters(model, AcquireError::StartFailed(message));
            }
            Phase::Ready => {
                self.metrics.record_eviction("crash");
                log::warn!(model = model; "{model}: upstream process exited unexpectedly with {described}");
            }
            Phase::Stopping | Phase::Stopped => {
                log::info!(model = model; "{model} stopped ({described})");
            }
        }
        if let Some(buffer) = self.logs.existing_model(model) {
            buffer.clear();
        }
        self.became_stopped(model);
    }

    /// A model reached `Stopped`: apply a reload's pending settings or forget a removed model.
    fn became_stopped(&mut self, model: &str) {
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        if let Some(config) = slot.pending_config.take() {
            log::info!(model = model; "{model}: new settings from the reload take effect");
            slot.config = config;
            self.publish_gates();
        }
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        if slot.removed {
            self.fail_waiters(model, AcquireError::UnknownModel(model.to_string()));
            self.slots.remove(model);
            self.publish_gates();
            let (gone, kept): (Vec<Pending>, Vec<Pending>) =
                self.queue.drain(..).partition(|p| p.model == model);
            self.queue = kept.into();
            for pending in gone {
                let _ = pending
                    .reply
                    .send(Reply::Failed(AcquireError::UnknownModel(pending.model)));
            }
            log::info!(model = model; "{model}: removed by the reload");
        }
    }

    /// Stops retiring models (replaced or removed by a reload) once nothing uses them.
    fn retire_drained(&mut self) {
        let drained: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.retiring())
            .filter(|(_, slot)| {
                slot.phase == Phase::Stopped
                    || (slot.phase == Phase::Ready
                        && slot.inflight() == 0
                        && slot.waiters.is_empty())
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in drained {
            if self.slots[&id].phase == Phase::Stopped {
                self.became_stopped(&id);
            } else {
                let grace = self.slots[&id].config.unload_timeout;
                self.begin_stop(&id, StopReason::Reload, grace);
            }
        }
    }

    fn on_reconfigure(&mut self, config: Arc<Config>) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        for (id, slot) in self.slots.iter_mut() {
            if !config.models.contains_key(id) {
                slot.removed = true;
                summary.removed.push(id.clone());
            }
        }
        // Requests queued for a removed model cannot be served any more.
        let mut index = 0;
        while index < self.queue.len() {
            let model = &self.queue[index].model;
            if self.slots.get(model).is_none_or(|slot| slot.removed) {
                let pending = self.queue.remove(index).expect("index is in bounds");
                let _ = pending.reply.send(Reply::Failed(AcquireError::UnknownModel(
                    pending.model.clone(),
                )));
            } else {
                index += 1;
            }
        }
        for (id, model) in &config.models {
            let model = Arc::new(model.clone());
            match self.slots.get_mut(id) {
                None => {
                    self.slots.insert(id.clone(), Slot::new(model));
                    summary.added.push(id.clone());
                }
                Some(slot) => {
                    slot.removed = false;
                    if same_start(&slot.config, &model) {
                        if *slot.config != *model {
                            summary.updated.push(id.clone());
                        }
                        slot.config = model;
                        slot.pending_config = None;
                    } else if slot.phase == Phase::Stopped {
                        slot.config = model;
                        slot.pending_config = None;
                        summary.changed.push(id.clone());
                    } else {
                        slot.pending_config = Some(model);
                        summary.changed.push(id.clone());
                    }
                }
            }
        }
        self.config = config;
        self.reconfigure_memory();
        let ids: Vec<String> = self.slots.keys().cloned().collect();
        for id in ids {
            if self.slots[&id].retiring() {
                self.slots[&id].gate.close();
            } else {
                self.open_gate(&id);
            }
        }
        self.publish_gates();
        log::info!(
            "reload: added {:?}, removed {:?}, restarting {:?}, updated in place {:?}",
            summary.added,
            summary.removed,
            summary.changed,
            summary.updated
        );
        summary
    }

    fn on_unload(&mut self, model: Option<String>, done: Sender<()>) {
        let targets: Vec<String> = match model {
            Some(model) => vec![model],
            None => self.slots.keys().cloned().collect(),
        };
        for id in targets {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.phase == Phase::Stopped {
                continue;
            }
            slot.stop_waiters.push(done.clone());
            // Requests queued for a model being unloaded are answered, not left hanging.
            let mut index = 0;
            while index < self.queue.len() {
                if self.queue[index].model == id {
                    let pending = self.queue.remove(index).expect("index is in bounds");
                    let _ = pending
                        .reply
                        .send(Reply::Failed(AcquireError::Unloaded(id.clone())));
                } else {
                    index += 1;
                }
            }
            if matches!(self.slots[&id].phase, Phase::Starting | Phase::Ready) {
                let grace = self.slots[&id].config.unload_timeout;
                self.begin_stop(&id, StopReason::Unload, grace);
            }
        }
    }

    fn begin_stop(&mut self, model: &str, reason: StopReason, grace: Duration) {
        let slot = self.slots.get_mut(model).expect("configured");
        slot.gate.close();
        if let Some(cancel) = slot.probe_cancel.take() {
            cancel.store(true, Ordering::Relaxed);
        }
        let Some(pid) = slot.pid else {
            slot.phase = Phase::Stopped;
            slot.idle_override = None;
            self.became_stopped(model);
            return;
        };
        log::info!(model = model; "stopping {model} (pid {pid}, reason {reason:?})");
        match reason {
            StopReason::Swap => self.metrics.record_eviction("swap"),
            StopReason::Ttl => self.metrics.record_eviction("ttl"),
            StopReason::Unload => self.metrics.record_eviction("unload"),
            StopReason::Abandoned => self.metrics.record_eviction("abandoned"),
            StopReason::Memory => self.metrics.record_eviction("memory"),
            StopReason::StartFailed | StopReason::Shutdown | StopReason::Reload => {}
        }
        slot.phase = Phase::Stopping;
        slot.kill_at = Some(Instant::now() + grace);
        let waiters_error = match reason {
            StopReason::Shutdown => AcquireError::ShuttingDown,
            _ => AcquireError::Unloaded(model.to_string()),
        };
        let config = slot.config.clone();
        self.fail_waiters(model, waiters_error);
        match &config.cmd_stop {
            Some(cmd_stop) => {
                let command = cmd_stop.replace("${PID}", &pid.to_string());
                let result = crate::config::split_command(&command)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                    .and_then(|argv| process::run_stop_command(&argv, &config.env));
                if let Err(error) = result {
                    log::warn!(model = model; "{model}: cmdStop '{command}' failed ({error}); sending SIGTERM");
                    process::signal_group(pid, libc::SIGTERM);
                }
            }
            None => process::signal_group(pid, libc::SIGTERM),
        }
    }

    fn on_timers(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (id, slot) in self.slots.iter_mut() {
            if let (Phase::Stopping, Some(kill_at), Some(pid)) =
                (slot.phase, slot.kill_at, slot.pid)
            {
                if now >= kill_at {
                    log::warn!(
                        model = id.as_str();
                        "{id} (pid {pid}) did not stop within its grace period; sending SIGKILL"
                    );
                    process::signal_group(pid, libc::SIGKILL);
                    slot.kill_at = None;
                }
            }
            if let Some(deadline) = ttl_deadline(slot) {
                if now >= deadline && !self.shutting_down {
                    expired.push(id.clone());
                }
            }
        }
        for id in expired {
            // A request may have taken the gate since the deadline was computed.
            if !self.slots[&id].gate.close_if_idle() {
                continue;
            }
            log::info!(
                model = id.as_str();
                "{id}: unloading after {:.1}s idle (ttl)",
                self.slots[&id]
                    .idle_time()
                    .unwrap_or_default()
                    .as_secs_f64()
            );
            let grace = self.slots[&id].config.unload_timeout;
            self.begin_stop(&id, StopReason::Ttl, grace);
        }
    }

    /// Pings systemd's watchdog when due and sends the status line when it changed. Both
    /// come from this loop on purpose: if it wedges, the pings stop and systemd restarts swapd.
    fn report_to_systemd(&mut self, now: Instant) {
        if !self.systemd.notifier.is_enabled() {
            return;
        }
        if let (Some(due), Some(interval)) = (
            self.systemd.next_watchdog,
            self.systemd.notifier.watchdog_interval(),
        ) {
            if now >= due {
                self.systemd.notifier.watchdog();
                self.systemd.next_watchdog = Some(now + interval);
            }
        }
        let count = |phase: Phase| self.slots.values().filter(|s| s.phase == phase).count();
        let status = crate::systemd::status_line(
            self.slots.len(),
            count(Phase::Ready) + count(Phase::Stopping),
            count(Phase::Starting),
            self.shutting_down,
        );
        if status != self.systemd.last_status {
            self.systemd.notifier.status(&status);
            self.systemd.last_status = status;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .values()
            .flat_map(|slot| {
                let kill = if slot.phase == Phase::Stopping {
                    slot.kill_at
                } else {
                    None
                };
                [kill, ttl_deadline(slot)]
            })
            .flatten()
            .min()
    }
}

/// Whether two settings start the same process (command, environment, address, health check),
/// so a reload may keep the running one.
fn same_start(old: &ModelConfig, new: &ModelConfig) -> bool {
    old.cmd == new.cmd
        && old.env == new.env
        && old.proxy == new.proxy
        && old.check_endpoint == new.check_endpoint
}

/// Whether a start is abandoned once a request waiting for it has been withdrawn: only while
/// it is still starting, when no request waits for it any more, when no explicit load (preload,
/// API) holds it, and not during shutdown (which stops everything anyway).
fn abandon_start(phase: Phase, still_waiting: usize, held: bool, shutting_down: bool) -> bool {
    phase == Phase::Starting && still_waiting == 0 && !held && !shutting_down
}

/// Whether a model that just became ready is stopped after all, once the last lease out was
/// given back unused ([`Lease::withdraw`]): only while no request has been served on it, no
/// request waits for it, no explicit load (or reload) holds it, and swapd is not shutting down.
/// The caller also checks that no lease is out, atomically with closing the gate.
fn abandon_unused_start(
    phase: Phase,
    served: bool,
    still_waiting: usize,
    held: bool,
    shutting_down: bool,
) -> bool {
    phase == Phase::Ready && !served && still_waiting == 0 && !held && !shutting_down
}

/// When an idle ready model's TTL runs out (none while it is busy or has no TTL).
fn ttl_deadline(slot: &Slot) -> Option<Instant> {
    let ttl = slot.idle_time()?;
    (slot.phase == Phase::Ready && slot.inflight() == 0 && slot.waiters.is_empty())
        .then(|| slot.last_used + ttl)
}

/// The last `count` lines of a log, as text.
fn last_lines(history: &[u8], count: usize) -> String {
    let text = String::from_utf8_lossy(history);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_is_abandoned_only_when_nobody_wants_it_any_more() {
        use Phase::*;
        // (phase, requests still waiting, held by an explicit load, shutting down) → abandon
        let table = [
            (Starting, 0, false, false, true),
            (Starting, 1, false, false, false),
            (Starting, 3, false, false, false),
            (Starting, 0, true, false, false),
            (Starting, 0, false, true, false),
            (Ready, 0, false, false, false),
            (Stopping, 0, false, false, false),
            (Stopped, 0, false, false, false),
        ];
        for (phase, waiting, held, shutting_down, expected) in table {
            assert_eq!(
                abandon_start(phase, waiting, held, shutting_down),
                expected,
                "{phase:?}, {waiting} waiting, held {held}, shutting down {shutting_down}"
            );
        }
    }

    #[test]
    fn a_ready_start_is_stopped_after_a_withdrawn_grant_only_if_unused() {
        use Phase::*;
        // (phase, served since ready, still waiting, held, shutting down) → stop
        let table = [
            (Ready, false, 0, false, false, true),
            (Ready, true, 0, false, false, false),
            (Ready, false, 1, false, false, false),
            (Ready, false, 0, true, false, false),
            (Ready, false, 0, false, true, false),
            (Starting, false, 0, false, false, false),
            (Stopping, false, 0, false, false, false),
            (Stopped, false, 0, false, false, false),
        ];
        for (phase, served, waiting, held, shutting_down, expected) in table {
            assert_eq!(
                abandon_unused_start(phase, served, waiting, held, shutting_down),
                expected,
                "{phase:?}, served {served}, {waiting} waiting, held {held}, shutting down {shutting_down}"
            );
        }
    }

    #[test]
    fn last_lines_takes_the_tail() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines(b"only", 5), "only");
        assert_eq!(last_lines(b"", 5), "");
    }
}
