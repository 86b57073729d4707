//! The supervisor's state and its loop: every model's [`Slot`] (phase, generation, waiters,
//! timers), the request queue, and one turn of the loop ([`State::turn`]) that handles a
//! command, fires due timers, retires drained models, serves the queue and reports to systemd.
//!
//! The transitions live in sibling files as further `impl State` blocks: `queue.rs`
//! (admission, collation, swaps), `lifecycle.rs` (start, health, exit, stop, timers, unload)
//! and `reconfigure.rs` (reload). The state reaches the world only through its
//! [`Effects`](super::effects::Effects), so `table_tests.rs` drives it without processes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::effects::Effects;
use super::handle::{GateEntry, Gates};
use super::LOG_TARGET;
use super::{footprints, gate, plan};
use super::{AcquireError, Command, IdleOverride, ModelStatus, Phase, Reply};
use crate::config::{Config, ModelConfig};
use crate::logs::Logs;
use crate::metrics::Metrics;
use crate::systemd::Notifier;

pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) reply: Sender<Reply>,
}

pub(super) struct Pending {
    pub(super) id: u64,
    pub(super) model: String,
    pub(super) reply: Sender<Reply>,
    pub(super) hold: bool,
    /// When this request first had to wait for memory (`swapd.memory`).
    pub(super) memory_wait: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum StopReason {
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

pub(super) struct Slot {
    pub(super) config: Arc<ModelConfig>,
    pub(super) phase: Phase,
    pub(super) generation: u64,
    pub(super) pid: Option<u32>,
    pub(super) probe_cancel: Option<Arc<AtomicBool>>,
    /// Counts the leases out; open while the model is ready and takes new requests.
    pub(super) gate: Arc<gate::Gate>,
    pub(super) waiters: Vec<Waiter>,
    pub(super) last_used: Instant,
    pub(super) kill_at: Option<Instant>,
    pub(super) stop_waiters: Vec<Sender<()>>,
    pub(super) spawned_at: Instant,
    /// An explicit load (preload, API) caused or joined the current start, so it is kept
    /// even when no request waits for it. Reset by every new start.
    pub(super) start_held: bool,
    /// A request has finished on the current process since it became ready (a `Release`).
    pub(super) served: bool,
    /// A reload changed how this model starts: the new settings wait here until the running
    /// process has drained and stopped.
    pub(super) pending_config: Option<Arc<ModelConfig>>,
    /// A reload removed this model: it is stopped once drained, then forgotten.
    pub(super) removed: bool,
    /// A request's idle time for this process (Ollama's `keep_alive`); cleared when it stops.
    pub(super) idle_override: Option<IdleOverride>,
}

impl Slot {
    pub(super) fn new(config: Arc<ModelConfig>, now: Instant) -> Slot {
        Slot {
            gate: Arc::new(gate::Gate::new(config.concurrency_limit)),
            config,
            phase: Phase::Stopped,
            generation: 0,
            pid: None,
            probe_cancel: None,
            waiters: Vec::new(),
            last_used: now,
            kill_at: None,
            stop_waiters: Vec::new(),
            spawned_at: now,
            start_held: false,
            served: false,
            pending_config: None,
            removed: false,
            idle_override: None,
        }
    }

    /// The idle time after which this model is unloaded; `None` means never.
    pub(super) fn idle_time(&self) -> Option<Duration> {
        match self.idle_override {
            Some(IdleOverride::Never) => None,
            Some(IdleOverride::After(idle)) => Some(idle),
            None => (!self.config.ttl.is_zero()).then_some(self.config.ttl),
        }
    }

    /// Idle: running with nobody using or waiting for it, so it may be stopped for a swap.
    pub(super) fn idle(&self) -> bool {
        self.phase == Phase::Ready && self.gate.inflight() == 0 && self.waiters.is_empty()
    }

    pub(super) fn inflight(&self) -> usize {
        self.gate.inflight()
    }

    /// A reload replaced or removed this model: its process takes no new requests.
    pub(super) fn retiring(&self) -> bool {
        self.pending_config.is_some() || self.removed
    }
}

pub(super) struct State {
    pub(super) config: Arc<Config>,
    pub(super) logs: Arc<Logs>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) tx: Sender<Command>,
    pub(super) slots: HashMap<String, Slot>,
    pub(super) queue: VecDeque<Pending>,
    pub(super) next_generation: u64,
    pub(super) shutting_down: bool,
    pub(super) shutdown_done: Vec<Sender<()>>,
    pub(super) gates: Gates,
    pub(super) systemd: SystemdReport,
    /// Logs and counts the matrix router's decisions once each.
    pub(super) matrix_log: plan::DecisionLog,
    /// Memory-aware scheduling; `None` unless `swapd.memory` is configured.
    pub(super) memory: Option<footprints::MemoryState>,
    pub(super) memory_report: footprints::ReportHandle,
    /// Spawning, signalling and the clock (see [`Effects`]).
    pub(super) effects: Box<dyn Effects>,
}

/// What the supervisor tells systemd, and when it last did.
pub(super) struct SystemdReport {
    pub(super) notifier: Arc<Notifier>,
    /// When the next `WATCHDOG=1` is due (`None` without a watchdog).
    pub(super) next_watchdog: Option<Instant>,
    pub(super) last_status: String,
}

impl SystemdReport {
    pub(super) fn new(notifier: Arc<Notifier>, now: Instant) -> SystemdReport {
        SystemdReport {
            next_watchdog: notifier.watchdog_interval().map(|_| now),
            notifier,
            last_status: String::new(),
        }
    }
}

impl State {
    pub(super) fn new(
        config: Arc<Config>,
        logs: Arc<Logs>,
        metrics: Arc<Metrics>,
        tx: Sender<Command>,
        gates: Gates,
        effects: Box<dyn Effects>,
    ) -> State {
        let now = effects.now();
        let slots = config
            .models
            .iter()
            .map(|(id, model)| (id.clone(), Slot::new(Arc::new(model.clone()), now)))
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
            systemd: SystemdReport::new(Arc::new(Notifier::disabled()), now),
            matrix_log: plan::DecisionLog::default(),
            memory: None,
            memory_report: footprints::ReportHandle::default(),
            effects,
        }
    }

    /// Reports to systemd through `notifier` from now on.
    pub(super) fn set_notifier(&mut self, notifier: Arc<Notifier>) {
        self.systemd = SystemdReport::new(notifier, self.effects.now());
    }

    /// Publishes each model's gate and upstream for [`Supervisor::try_lease`]. Called whenever
    /// a model is added or removed or its settings change.
    pub(super) fn publish_gates(&self) {
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
    pub(super) fn open_gate(&self, model: &str) {
        if let Some(slot) = self.slots.get(model) {
            if slot.phase == Phase::Ready && !slot.retiring() && !self.shutting_down {
                slot.gate.open(slot.config.concurrency_limit);
            }
        }
    }

    /// The supervisor thread's loop: waits for a command or the next timer, then takes a turn.
    pub(super) fn run(&mut self, rx: Receiver<Command>) {
        self.report_to_systemd(self.effects.now());
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
            if self.turn(command) {
                break;
            }
        }
    }

    /// One turn of the loop, after a command (`Some`) or a timer (`None`) woke it: handles the
    /// command, fires due timers, retires drained models, serves the queue and reports.
    /// Returns true once a shutdown is complete (every model stopped): the loop ends.
    pub(super) fn turn(&mut self, command: Option<Command>) -> bool {
        if let Some(command) = command {
            self.handle(command);
        }
        self.on_timers(self.effects.now());
        self.retire_drained();
        self.pump();
        self.memory_tick();
        self.report_to_systemd(self.effects.now());
        if self.shutting_down && self.slots.values().all(|s| s.phase == Phase::Stopped) {
            self.shutdown_done.clear();
            return true;
        }
        false
    }

    pub(super) fn handle(&mut self, command: Command) {
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
                    slot.last_used = self.effects.now();
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
                let now = self.effects.now();
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
                    log::info!(target: LOG_TARGET, "supervisor: shutting down, stopping every model");
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
                let now = self.effects.now();
                for slot in self.slots.values_mut() {
                    if slot.phase == Phase::Stopping {
                        let limit = now + slot.config.unload_timeout;
                        slot.kill_at = Some(slot.kill_at.map_or(limit, |at| at.min(limit)));
                    }
                }
            }
        }
    }

    /// Pings systemd's watchdog when due and sends the status line when it changed. Both
    /// come from this loop on purpose: if it wedges, the pings stop and systemd restarts swapd.
    pub(super) fn report_to_systemd(&mut self, now: Instant) {
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

    pub(super) fn next_deadline(&self) -> Option<Instant> {
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

/// Whether a start is abandoned once a request waiting for it has been withdrawn: only while
/// it is still starting, when no request waits for it any more, when no explicit load (preload,
/// API) holds it, and not during shutdown (which stops everything anyway).
pub(super) fn abandon_start(
    phase: Phase,
    still_waiting: usize,
    held: bool,
    shutting_down: bool,
) -> bool {
    phase == Phase::Starting && still_waiting == 0 && !held && !shutting_down
}

/// Whether a model that just became ready is stopped after all, once the last lease out was
/// given back unused ([`Lease::withdraw`]): only while no request has been served on it, no
/// request waits for it, no explicit load (or reload) holds it, and swapd is not shutting down.
/// The caller also checks that no lease is out, atomically with closing the gate.
pub(super) fn abandon_unused_start(
    phase: Phase,
    served: bool,
    still_waiting: usize,
    held: bool,
    shutting_down: bool,
) -> bool {
    phase == Phase::Ready && !served && still_waiting == 0 && !held && !shutting_down
}

/// When an idle ready model's TTL runs out (none while it is busy or has no TTL).
pub(super) fn ttl_deadline(slot: &Slot) -> Option<Instant> {
    let ttl = slot.idle_time()?;
    (slot.phase == Phase::Ready && slot.inflight() == 0 && slot.waiters.is_empty())
        .then(|| slot.last_used + ttl)
}

/// The last `count` lines of a log, as text.
pub(super) fn last_lines(history: &[u8], count: usize) -> String {
    let text = String::from_utf8_lossy(history);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}
