//! The metrics store: per-model counters and histograms, token totals and the recent-request
//! log, shared as `Arc<Metrics>` by everything that records or reads them.
//!
//! Operators want to see what swapd is doing without reading logs: how many requests each model
//! served and how long they took, how often models were swapped or crashed, how many tokens went
//! through, and how fast the upstreams generated them. This module keeps those numbers and hands
//! them out in two shapes: the Prometheus text exposition format for `GET /metrics` (written by
//! `prometheus.rs`), and JSON rows describing the most recent requests for `GET /api/metrics`,
//! which are also pushed live to subscribers (kept by `rows.rs`). The `/proc` reads behind the
//! process gauges are in `procfs.rs`.
//!
//! Recording a request takes one mutex for a constant amount of work (a row shares its model
//! and path names with earlier rows, so it allocates only for a name seen for the first time);
//! the JSON sent to live subscribers is built after the lock is released. Rendering copies the
//! counters under the lock and formats them after releasing it.
//!
//! Token counts arrive as a plain [`TokenUsage`]: the scanner that reads them from responses
//! belongs to the proxy (`crate::proxy::usage`), so this module depends on nothing above it.

// Unsafe code only in `procfs` (sysconf).
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod procfs;
mod prometheus;
mod rows;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::Receiver;
use serde_json::Value;

pub(crate) use self::procfs::resident_memory_bytes;
use self::rows::{RecentRows, Row, RowSubscribers};
pub use self::rows::{DEFAULT_MAX_ROWS, SUBSCRIBER_DEPTH};

/// Upper bounds, in seconds, of the request-duration and time-to-first-token histograms.
pub const REQUEST_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Upper bounds, in seconds, of the model start-duration histogram.
pub const START_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The eviction reasons that always appear in `swapd_evictions_total`, even at zero.
const KNOWN_EVICTION_REASONS: [&str; 6] = ["swap", "ttl", "unload", "crash", "abandoned", "memory"];

/// What is known about one finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord<'a> {
    pub model: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Wall-clock time from admission to the last byte sent.
    pub duration: Duration,
    pub usage: TokenUsage,
    /// For streamed responses, the time until the first body byte reached the client.
    pub time_to_first_token: Option<Duration>,
}

/// Token counts and generation speeds read from a response; `None` when the upstream did not
/// report them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TokenUsage {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cached: Option<u64>,
    pub prompt_per_second: Option<f64>,
    pub tokens_per_second: Option<f64>,
    /// Speculative decoding: tokens drafted and drafted tokens accepted (llama.cpp `timings`
    /// `draft_n`/`draft_n_accepted`, vLLM `metrics.speculative_decoding`).
    pub draft: Option<u64>,
    pub draft_accepted: Option<u64>,
    /// llama.cpp's own processing time, `timings.prompt_ms + timings.predicted_ms`.
    pub upstream_millis: Option<f64>,
}

/// The values of gauges that other parts of swapd own, passed to [`Metrics::render`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    pub models: Vec<ModelGauge>,
    /// Total bytes of log data that log subscribers missed (a counter despite the struct name).
    pub log_dropped_bytes: u64,
    pub open_connections: u64,
}

/// The live state of one configured model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelGauge {
    pub model: String,
    /// One of "stopped", "starting", "ready" or "stopping"; any other value is exported as an
    /// extra state line set to 1.
    pub state: &'static str,
    pub inflight: u64,
    pub queued: u64,
}

/// Counters, histograms and the recent-request log; share it as `Arc<Metrics>`.
pub struct Metrics {
    max_rows: usize,
    inner: Mutex<Inner>,
    /// Live listeners for new rows; has its own lock so that publishing never holds `inner`.
    subscribers: RowSubscribers,
    /// Swap decisions the matrix router made (a start or a swap acted on).
    matrix_decisions: AtomicU64,
}

/// Everything guarded by the main mutex.
struct Inner {
    models: HashMap<String, ModelStats>,
    swaps: u64,
    evictions: Vec<(Cow<'static, str>, u64)>,
    rows: RecentRows,
    /// Peer model names (FQN or bare, as requested) to the peer that served them: their
    /// series carry a `peer` label.
    peers: BTreeMap<String, String>,
}

/// The counters of one model.
#[derive(Clone)]
struct ModelStats {
    /// Request counts by status code, in first-seen order.
    requests: Vec<(u16, u64)>,
    duration: Histogram<15>,
    ttft: Histogram<15>,
    starts_ok: u64,
    starts_failed: u64,
    start_duration: Histogram<12>,
    child_exits: u64,
    /// Prompt, completion and cached tokens, in that order.
    tokens: [u64; 3],
}

impl ModelStats {
    fn new() -> ModelStats {
        ModelStats {
            requests: Vec::new(),
            duration: Histogram::new(),
            ttft: Histogram::new(),
            starts_ok: 0,
            starts_failed: 0,
            start_duration: Histogram::new(),
            child_exits: 0,
            tokens: [0; 3],
        }
    }
}

/// A histogram with `N` finite buckets; the implicit `+Inf` bucket is `count`.
#[derive(Clone)]
struct Histogram<const N: usize> {
    /// Observations per bucket, not cumulative; values above the last bound are only counted.
    counts: [u64; N],
    sum: f64,
    count: u64,
}

impl<const N: usize> Histogram<N> {
    fn new() -> Histogram<N> {
        Histogram {
            counts: [0; N],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64; N], value: f64) {
        if let Some(index) = bounds.iter().position(|&bound| value <= bound) {
            self.counts[index] += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

impl Metrics {
    /// Creates an empty registry that keeps the `max_rows` most recent requests.
    pub fn new(max_rows: usize) -> Metrics {
        Metrics {
            max_rows,
            inner: Mutex::new(Inner {
                models: HashMap::new(),
                swaps: 0,
                evictions: KNOWN_EVICTION_REASONS
                    .iter()
                    .map(|&reason| (Cow::Borrowed(reason), 0))
                    .collect(),
                rows: RecentRows::new(max_rows),
                peers: BTreeMap::new(),
            }),
            subscribers: RowSubscribers::new(),
            matrix_decisions: AtomicU64::new(0),
        }
    }

    /// The number of recent requests kept.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The counters stay consistent even if a holder panicked, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a finished request and returns the id of its row (ids start at 1 and never
    /// repeat, even after old rows are discarded).
    pub fn record_request(&self, record: RequestRecord<'_>) -> u64 {
        let unix_millis = crate::timefmt::unix_millis_now();
        let wants_event = self.subscribers.any();
        let (id, event_row) = {
            let mut inner = self.lock();
            let stats = model_entry(&mut inner.models, record.model);
            match stats
                .requests
                .iter_mut()
                .find(|(code, _)| *code == record.status)
            {
                Some((_, count)) => *count += 1,
                None => stats.requests.push((record.status, 1)),
            }
            stats
                .duration
                .observe(&REQUEST_BUCKETS, record.duration.as_secs_f64());
            if let Some(ttft) = record.time_to_first_token {
                stats.ttft.observe(&REQUEST_BUCKETS, ttft.as_secs_f64());
            }
            let usage = &record.usage;
            for (total, value) in
                stats
                    .tokens
                    .iter_mut()
                    .zip([usage.input, usage.output, usage.cached])
            {
                *total = total.saturating_add(value.unwrap_or(0));
            }
            inner
                .rows
                .push(self.max_rows, unix_millis, &record, wants_event)
        };

        // The event's JSON is built after the lock is released.
        if let Some(row) = event_row {
            self.subscribers.publish(row.to_json());
        }
        id
    }

    /// Records the end of a model start: `ok` when it became healthy, after `duration` since
    /// the spawn. Only successful starts are observed in the start-duration histogram.
    pub fn record_start(&self, model: &str, ok: bool, duration: Duration) {
        let mut inner = self.lock();
        let stats = model_entry(&mut inner.models, model);
        if ok {
            stats.starts_ok += 1;
            stats
                .start_duration
                .observe(&START_BUCKETS, duration.as_secs_f64());
        } else {
            stats.starts_failed += 1;
        }
    }

    /// Records one decision of the matrix router.
    pub fn record_matrix_decision(&self) {
        self.matrix_decisions.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that a model was swapped out to make room for another.
    pub fn record_swap(&self) {
        self.lock().swaps += 1;
    }

    /// Records that a model was stopped; `reason` is "swap", "ttl", "unload", "crash" or
    /// "abandoned" (a start every client left; other values are counted under their own label).
    pub fn record_eviction(&self, reason: &str) {
        let mut inner = self.lock();
        match inner
            .evictions
            .iter_mut()
            .find(|(known, _)| known == reason)
        {
            Some((_, count)) => *count += 1,
            None => inner.evictions.push((Cow::Owned(reason.to_owned()), 1)),
        }
    }

    /// Records that a model's process exited, for whatever reason.
    pub fn record_child_exit(&self, model: &str) {
        model_entry(&mut self.lock().models, model).child_exits += 1;
    }

    /// The recent requests as a JSON array, oldest first.
    pub fn rows_json(&self) -> Value {
        let rows: Vec<Row> = self.lock().rows.snapshot();
        Value::Array(rows.iter().map(Row::to_json).collect())
    }

    /// Subscribes to new rows, delivered in the shape of [`Metrics::rows_json`] elements. A
    /// subscriber that falls [`SUBSCRIBER_DEPTH`] rows behind misses the rows that do not fit;
    /// dropping the receiver unsubscribes.
    pub fn subscribe_rows(&self) -> Receiver<Value> {
        self.subscribers.subscribe()
    }

    /// Renders every metric family in the Prometheus text exposition format 0.0.4.
    pub fn render(&self, gauges: &Gauges) -> String {
        let snapshot = {
            let inner = self.lock();
            prometheus::Snapshot {
                models: inner
                    .models
                    .iter()
                    .map(|(name, stats)| (name.clone(), stats.clone()))
                    .collect(),
                swaps: inner.swaps,
                evictions: inner.evictions.clone(),
                peers: inner.peers.clone(),
                matrix_decisions: self.matrix_decisions.load(Ordering::Relaxed),
            }
        };
        prometheus::render(snapshot, gauges)
    }

    /// Marks `model` (a name requests were recorded under) as served by `peer`, so that its
    /// series carry `peer="<peer>"` next to `model`.
    pub fn label_peer(&self, model: &str, peer: &str) {
        let mut inner = self.lock();
        if inner.peers.get(model).map(String::as_str) != Some(peer) {
            inner.peers.insert(model.to_string(), peer.to_string());
        }
    }
}

/// Returns the stats of `model`, creating them on first use; only that first use allocates.
fn model_entry<'a>(models: &'a mut HashMap<String, ModelStats>, model: &str) -> &'a mut ModelStats {
    if !models.contains_key(model) {
        models.insert(model.to_owned(), ModelStats::new());
    }
    models
        .get_mut(model)
        .expect("the entry exists: it was inserted just above if it was missing")
}
