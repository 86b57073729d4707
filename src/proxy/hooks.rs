//! Test hooks: switches the integration tests and benchmarks set through the environment.
//!
//! They exist only in builds with the `test-hooks` cargo feature (`make test` and `make bench`
//! turn it on); a release build leaves the feature out and never reads these variables, so
//! nothing in a production environment can turn a hook on.

use std::time::Duration;

/// The hooks in force, read once when the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// A request for exactly this path makes its handler panic (`SWAPD_FAULT_PANIC_PATH`), to
    /// test that a panicking handler costs one 500 and nothing else.
    pub fault_panic_path: Option<String>,
    /// Per-request metrics (token scanning, counters, rows). Only the proxy benchmark turns
    /// them off (`SWAPD_BENCH_NO_REQUEST_METRICS=1`), to measure what they add to latency.
    pub request_metrics: bool,
    /// How often peers are checked (`SWAPD_PEER_CHECK_INTERVAL_MS`), instead of the default.
    pub peer_check_interval: Option<Duration>,
    /// Established streams go through the relay thread. Only the scale benchmark turns it off
    /// (`SWAPD_BENCH_NO_RELAY=1`), to compare both paths with one build.
    pub stream_relay: bool,
}

impl Default for Hooks {
    /// No hook: what every release build runs with.
    fn default() -> Hooks {
        Hooks {
            fault_panic_path: None,
            request_metrics: true,
            peer_check_interval: None,
            stream_relay: true,
        }
    }
}

impl Hooks {
    /// The hooks the environment asks for.
    #[cfg(feature = "test-hooks")]
    pub fn from_environment() -> Hooks {
        Hooks {
            fault_panic_path: std::env::var("SWAPD_FAULT_PANIC_PATH")
                .ok()
                .filter(|path| !path.is_empty()),
            request_metrics: std::env::var_os("SWAPD_BENCH_NO_REQUEST_METRICS").is_none(),
            peer_check_interval: std::env::var("SWAPD_PEER_CHECK_INTERVAL_MS")
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
            stream_relay: std::env::var_os("SWAPD_BENCH_NO_RELAY").is_none(),
        }
    }

    /// Without the `test-hooks` feature the environment is not read: no hook.
    #[cfg(not(feature = "test-hooks"))]
    pub fn from_environment() -> Hooks {
        Hooks::default()
    }
}
