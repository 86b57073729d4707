//! Waiting for a lease on a model outside the OpenAI routes' own loop (which also streams
//! loading progress): the Ollama routes and websocket upgrades; and the HTTP status every route
//! gives a model that could not be had.

use std::time::Duration;

use crate::activity::inflight::Entry;
use crate::supervisor::{AcquireError, Lease, Reply};

use super::{forward, App, ClientSocket};

/// Why no lease came.
pub enum Waited {
    /// The client left while the model started; the request was withdrawn.
    ClientLeft,
    /// An operator cancelled the request while it waited; the message says so.
    Cancelled(String),
    /// The supervisor refused it or the start failed.
    Failed(AcquireError),
}

/// Takes a lease on `model_id`, starting or swapping as the supervisor decides, and checks
/// every 250 ms whether the client left or (with `tracked`) the request was cancelled. An
/// `explicit_load` (a request that only loads the model) holds its start: the model is loaded
/// even if the client leaves; any other start is abandoned when its clients leave.
pub fn wait_for_lease(
    app: &App,
    model_id: &str,
    client: &ClientSocket,
    explicit_load: bool,
    tracked: Option<&Entry>,
) -> Result<Lease, Waited> {
    if let Some(lease) = app.supervisor.try_lease(model_id) {
        return Ok(lease);
    }
    let mut ticket = if explicit_load {
        app.supervisor.request_load(model_id)
    } else {
        app.supervisor.request(model_id)
    };
    loop {
        match ticket.wait(Duration::from_millis(250)) {
            // The grant may have raced with the client's departure: give it back unused, so a
            // model started only for this client does not stay loaded.
            Some(Reply::Granted(lease)) if !explicit_load && client.is_gone() => {
                log::info!("client left while waiting for '{model_id}'; request withdrawn");
                lease.withdraw();
                return Err(Waited::ClientLeft);
            }
            Some(Reply::Granted(lease)) => return Ok(lease),
            Some(Reply::Failed(error)) => return Err(Waited::Failed(error)),
            Some(Reply::Queued) => {}
            None => {
                if client.is_gone() {
                    log::info!("client left while waiting for '{model_id}'; request withdrawn");
                    return Err(Waited::ClientLeft);
                }
                if tracked.is_some_and(Entry::is_cancelled) {
                    // Dropping the ticket withdraws the request from the queue.
                    let message = forward::cancel_message(model_id);
                    log::info!("{message} while it waited for the model");
                    return Err(Waited::Cancelled(message));
                }
            }
        }
    }
}

/// The HTTP status, error code and extra headers for a model that could not be had.
pub fn error_status(
    error: &AcquireError,
) -> (
    u16,
    Option<&'static str>,
    &'static [(&'static str, &'static str)],
) {
    match error {
        AcquireError::UnknownModel(_) => (404, Some("model_not_found"), &[]),
        AcquireError::TooManyRequests(_) => {
            (429, Some("concurrency_limit"), &[("Retry-After", "1")])
        }
        AcquireError::StartFailed(_) => (503, Some("model_start_failed"), &[]),
        AcquireError::Unloaded(_) => (503, Some("model_unloaded"), &[]),
        AcquireError::ShuttingDown => (503, Some("shutting_down"), &[]),
        AcquireError::TooLarge(_) => (503, Some("model_too_large"), &[]),
        #[allow(unreachable_patterns)] // AcquireError is non_exhaustive for other crates only.
        _ => (500, None, &[]),
    }
}
