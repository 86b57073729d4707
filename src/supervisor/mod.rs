//! The supervisor: one thread that owns every child process and every model's state.
//!
//! Request handlers never read model state to decide anything. They call
//! [`Supervisor::request`] and wait on the [`Ticket`]; the supervisor admits, queues, starts,
//! swaps and answers. Everything that can block (health polling, waiting for a process to exit,
//! reading its output) runs on helper threads that report back as [`Command`]s tagged with a
//! generation number, so stale reports are recognised and dropped. The loop itself never blocks
//! except on its own channel.
//!
//! The files, by job: this one holds the vocabulary shared with handlers (replies, errors,
//! phases, commands); `handle.rs` the handle API (`Supervisor`, `Lease`, `Ticket`); `state.rs`
//! the state and its loop, with the transitions in `queue.rs` (admission, collation, swaps),
//! `lifecycle.rs` (start, health, exit, stop, timers, unload) and `reconfigure.rs` (reload);
//! `effects.rs` the trait through which the state spawns, signals and reads the clock;
//! `preload.rs` and `reload_request.rs` what the daemon and the reload path ask of it.

// Within the supervisor, only the files that call libc directly may use `unsafe` (process
// groups and reaping, page size, and a test's liveness check); each use has a SAFETY comment.
#![deny(unsafe_code)]

mod admission;
mod effects;
pub mod footprints;
pub mod gate;
mod handle;
pub mod health;
mod lifecycle;
pub use crate::config::matrix_solver as matrix;
pub mod memory;
pub mod plan;
mod preload;
#[allow(unsafe_code)]
pub mod process;
mod queue;
mod reconfigure;
mod reload_request;
#[allow(unsafe_code)]
pub mod sampler;
#[allow(unsafe_code)]
#[cfg(test)]
mod stale_tests;
mod state;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod table_harness;
#[cfg(test)]
mod table_tests;

pub use handle::{Lease, Supervisor, Ticket};

pub use preload::preload;
pub use reload_request::{ReloadOutcome, ReloadRequest};

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::config::Config;

/// The target of the state machine's log lines, whichever file they come from: operators filter
/// and read `swapd::supervisor` (the JSON log format writes it as `target`).
const LOG_TARGET: &str = "swapd::supervisor";

/// Why a model could not be acquired. Each maps to one HTTP status (see `proxy::routes`
/// and `ollama::handlers`).
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

/// What the supervisor answers to a request, in order: at most one `Queued`, then one final.
#[derive(Debug)]
pub enum Reply {
    /// Admitted, but the model is not ready: the final reply follows later.
    Queued,
    Granted(Lease),
    Failed(AcquireError),
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
