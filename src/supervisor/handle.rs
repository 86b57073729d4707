//! The handle API request handlers use: [`Supervisor`] (cheap to clone: a channel sender and
//! the published gates), the [`Ticket`] a request waits on, and the [`Lease`] a granted request
//! holds. Nothing here decides anything; it sends [`Command`]s to the supervisor thread and
//! takes a lease through a ready model's gate (see [`gate`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::effects::RealEffects;
use super::state::State;
use super::{
    footprints, gate, AcquireError, Command, IdleOverride, ModelStatus, ReloadSummary, Reply,
};
use crate::config::Config;
use crate::logs::Logs;
use crate::metrics::Metrics;
use crate::systemd::Notifier;

/// The right to send requests to a running model. Dropping it tells the supervisor the request
/// is finished, so in-flight counts cannot leak, even on panic.
pub struct Lease {
    pub(super) model: Arc<str>,
    pub(super) upstream: Arc<str>,
    pub(super) gate: Arc<gate::Gate>,
    pub(super) tx: Sender<Command>,
    /// Given back unused: its client left while it waited for the model's start.
    pub(super) withdrawn: bool,
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
    /// `state::abandon_unused_start`).
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

/// What handlers need to take a lease without asking the supervisor (see [`gate`]).
#[derive(Clone)]
pub(super) struct GateEntry {
    pub(super) model: Arc<str>,
    pub(super) upstream: Arc<str>,
    pub(super) gate: Arc<gate::Gate>,
}

/// The gates of the configured models, published by the supervisor thread (the only writer).
pub(super) type Gates = Arc<RwLock<HashMap<String, GateEntry>>>;

/// The handle request handlers hold. Cloning is cheap; the loop ends on `shutdown`.
#[derive(Clone)]
pub struct Supervisor {
    pub(super) tx: Sender<Command>,
    pub(super) next_id: Arc<AtomicU64>,
    pub(super) gates: Gates,
    pub(super) memory_report: footprints::ReportHandle,
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
        let effects = Box::new(RealEffects::new(logs.clone(), tx.clone()));
        let mut state = State::new(config, logs, metrics, tx.clone(), gates.clone(), effects);
        state.set_notifier(notifier);
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
    /// is abandoned (see `state::abandon_start`).
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
