//! The message that asks for a config reload, defined here, below both the HTTP front that
//! sends it (`POST /api/config/reload`) and the reload path that serves it, so neither of those
//! modules imports the other (ARCHITECTURE.md, "Dependencies").

use crossbeam_channel::Sender;

use super::ReloadSummary;

/// What a reload answers: what changed, or why the new config was rejected.
pub type ReloadOutcome = Result<ReloadSummary, String>;

/// A request to reload; `reply` (if any) receives the outcome.
pub struct ReloadRequest {
    pub reply: Option<Sender<ReloadOutcome>>,
}
