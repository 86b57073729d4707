//! Per-model metrics, token statistics and the recent-request log.
//!
//! Operators want to see what swapd is doing without reading logs: how many requests each model
//! served and how long they took, how often models were swapped or crashed, how many tokens went
//! through, and how fast the upstreams generated them. This module keeps those numbers and
//! renders them in two shapes: the Prometheus text exposition format (version 0.0.4) for
//! `GET /metrics`, and JSON rows describing the most recent requests for `GET /api/metrics`,
//! which are also pushed live to subscribers (for an SSE `/api/events` stream).
//!
//! [`Metrics`] is shared as `Arc<Metrics>`. Recording a request takes one mutex for a constant
//! amount of work; the row itself is built before the lock is taken, and the JSON sent to live
//! subscribers is built outside of it as well. Rendering copies the counters under the lock and
//! formats them after releasing it.
//!
//! Token statistics come from the responses as they are forwarded to the client. A
//! [`UsageScanner`] is fed every chunk; it never holds a whole body. For event streams it splits
//! lines (carrying at most 64 KiB of a partial line) and parses only `data:` lines that mention
//! `"usage"` or `"timings"`; for plain JSON bodies it keeps the last 32 KiB and looks for the
//! `usage` and `timings` objects there once the body is complete. The fields read are those that
//! llama-swap reads (see its `internal/server/metrics*.go`): OpenAI `usage`, OpenAI Responses
//! `response.usage`, Anthropic `usage` and `message.usage`, and llama.cpp `timings`, which take
//! precedence over `usage` when both are present.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::{self, Display, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The default number of recent requests kept for `/api/metrics` (llama-swap's
/// `metricsMaxInMemory` default).
pub const DEFAULT_MAX_ROWS: usize = 1000;

/// How many rows a live subscriber may have queued before further rows are dropped for it.
pub const SUBSCRIBER_DEPTH: usize = 256;

/// Upper bounds, in seconds, of the request-duration and time-to-first-token histograms.
pub const REQUEST_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Upper bounds, in seconds, of the model start-duration histogram.
pub const START_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The longest partial event-stream line a [`UsageScanner`] carries between chunks.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How much of the end of a JSON body a [`UsageScanner`] keeps.
pub const JSON_TAIL_BYTES: usize = 32 * 1024;

/// The eviction reasons that always appear in `swapd_evictions_total`, even at zero.
const KNOWN_EVICTION_REASONS: [&str; 6] = ["swap", "ttl", "unload", "crash", "abandoned", "memory"];

/// The states that always appear in `swapd_model_state`.
const MODEL_STATES: [&str; 4] = ["stopped", "starting", "ready", "stopping"];

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
    subscribers: Mutex<Vec<Sender<Value>>>,
    /// Lets `record_request` skip building JSON when nobody listens, without taking a lock.
    has_subscribers: AtomicBool,
    /// Swap decisions the matrix router made (a start or a swap acted on).
    matrix_decisions: std::sync::atomic::AtomicU64,
}

/// Everything guarded by the main mutex.
struct Inner {
    models: HashMap<String, ModelStats>,
    swaps: u64,
    evictions: Vec<(Cow<'static, str>, u64)>,
    rows: VecDeque<Row>,
    next_id: u64,
    /// Model ids and paths seen in rows, each stored once (at most `MAX_NAMES`).
    names: HashSet<Arc<str>>,
    /// Peer model names (FQN or bare, as requested) to the peer that served them: their
    /// series carry a `peer` label.
    peers: BTreeMap<String, String>,
}

/// Distinct model ids and paths kept for sharing; `/upstream/...` paths are unbounded, and
/// beyond this many each row gets its own copy.
const MAX_NAMES: usize = 256;

/// The shared copy of `name`.
fn intern(names: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(existing) = names.get(name) {
        return existing.clone();
    }
    let shared: Arc<str> = Arc::from(name);
    if names.len() < MAX_NAMES {
        names.insert(shared.clone());
    }
    shared
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

/// The label values of `swapd_tokens_total`, in the order of `ModelStats::tokens`.
const TOKEN_KINDS: [&str; 3] = ["prompt", "completion", "cached"];

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

/// One entry of the recent-request log.
#[derive(Debug, Clone)]
struct Row {
    id: u64,
    unix_millis: u64,
    /// Shared with every other row for the same model or path (see `Inner::names`): a row
    /// makes no allocation of its own, so the rows kept do not pin scattered heap pages.
    model: Arc<str>,
    path: Arc<str>,
    status: u16,
    usage: TokenUsage,
    duration_ms: u64,
}

impl Row {
    /// The JSON shape served by `/api/metrics`; unknown numbers are -1 as in llama-swap.
    fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "timestamp": format_rfc3339_millis(self.unix_millis),
            "model": &*self.model,
            "path": &*self.path,
            "status": self.status,
            "input_tokens": count_or_unknown(self.usage.input),
            "output_tokens": count_or_unknown(self.usage.output),
            "cached_tokens": count_or_unknown(self.usage.cached),
            "prompt_per_second": rate_or_unknown(self.usage.prompt_per_second),
            "tokens_per_second": rate_or_unknown(self.usage.tokens_per_second),
            "duration_ms": self.duration_ms,
        })
    }
}

fn count_or_unknown(value: Option<u64>) -> Value {
    value.map_or(Value::from(-1), Value::from)
}

fn rate_or_unknown(value: Option<f64>) -> Value {
    match value {
        Some(rate) if rate.is_finite() => Value::from(rate),
        _ => Value::from(-1),
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
                rows: VecDeque::with_capacity(max_rows.min(DEFAULT_MAX_ROWS)),
                next_id: 1,
                names: HashSet::new(),
                peers: BTreeMap::new(),
            }),
            subscribers: Mutex::new(Vec::new()),
            has_subscribers: AtomicBool::new(false),
            matrix_decisions: std::sync::atomic::AtomicU64::new(0),
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
        let RequestRecord {
            model,
            path,
            status,
            duration,
            usage,
            time_to_first_token,
        } = record;
        let unix_millis = unix_millis_now();
        let wants_event = self.has_subscribers.load(Ordering::Relaxed);
        let (id, event_row) = {
            let mut inner = self.lock();
            let stats = model_entry(&mut inner.models, model);
            match stats.requests.iter_mut().find(|(code, _)| *code == status) {
                Some((_, count)) => *count += 1,
                None => stats.requests.push((status, 1)),
            }
            stats
                .duration
                .observe(&REQUEST_BUCKETS, duration.as_secs_f64());
            if let Some(ttft) = time_to_first_token {
                stats.ttft.observe(&REQUEST_BUCKETS, ttft.as_secs_f64());
            }
            for (total, value) in
                stats
                    .tokens
                    .iter_mut()
                    .zip([usage.input, usage.output, usage.cached])
            {
                *total = total.saturating_add(value.unwrap_or(0));
            }
            let id = inner.next_id;
            inner.next_id += 1;
            let row = Row {
                id,
                unix_millis,
                model: intern(&mut inner.names, model),
                path: intern(&mut inner.names, path),
                status,
                usage,
                duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            };
            let event_row = wants_event.then(|| row.clone());
            if self.max_rows > 0 {
                if inner.rows.len() >= self.max_rows {
                    inner.rows.pop_front();
                }
                inner.rows.push_back(row);
            }
            (id, event_row)
        };

        // The event's JSON is built after the lock is released.
        if let Some(row) = event_row {
            self.publish(row.to_json());
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
        let rows: Vec<Row> = self.lock().rows.iter().cloned().collect();
        Value::Array(rows.iter().map(Row::to_json).collect())
    }

    /// Subscribes to new rows, delivered in the shape of [`Metrics::rows_json`] elements. A
    /// subscriber that falls [`SUBSCRIBER_DEPTH`] rows behind misses the rows that do not fit;
    /// dropping the receiver unsubscribes.
    pub fn subscribe_rows(&self) -> Receiver<Value> {
        let (tx, rx) = crossbeam_channel::bounded(SUBSCRIBER_DEPTH);
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.push(tx);
        self.has_subscribers.store(true, Ordering::Relaxed);
        rx
    }

    fn publish(&self, event: Value) {
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        });
        self.has_subscribers
            .store(!subscribers.is_empty(), Ordering::Relaxed);
    }

    /// Renders every metric family in the Prometheus text exposition format 0.0.4.
    pub fn render(&self, gauges: &Gauges) -> String {
        let (mut models, swaps, evictions, peers) = {
            let inner = self.lock();
            let models: Vec<(String, ModelStats)> = inner
                .models
                .iter()
                .map(|(name, stats)| (name.clone(), stats.clone()))
                .collect();
            (
                models,
                inner.swaps,
                inner.evictions.clone(),
                inner.peers.clone(),
            )
        };
        models.sort_by(|a, b| a.0.cmp(&b.0));

        // Configured models appear in the gauge families even before their first request; the
        // first entry wins if a model is listed twice.
        let mut live: BTreeMap<&str, &ModelGauge> = BTreeMap::new();
        for gauge in &gauges.models {
            live.entry(gauge.model.as_str()).or_insert(gauge);
        }
        let stats_by_name: BTreeMap<&str, &ModelStats> = models
            .iter()
            .map(|(name, stats)| (name.as_str(), stats))
            .collect();
        let known: BTreeSet<&str> = live
            .keys()
            .copied()
            .chain(stats_by_name.keys().copied())
            .collect();
        let empty = ModelStats::new();
        let stats_of = |model: &str| stats_by_name.get(model).copied().unwrap_or(&empty);

        let mut out = String::with_capacity(4096 + 2048 * known.len());
        let w = &mut out;

        family(
            w,
            "swapd_requests_total",
            "Requests proxied to a model, by HTTP status code.",
            "counter",
        );
        for (model, stats) in &models {
            let mut codes = stats.requests.clone();
            codes.sort_unstable();
            for (code, count) in codes {
                let code = code.to_string();
                sample(
                    w,
                    "swapd_requests_total",
                    &[("model", model), ("code", &code)],
                    count,
                );
            }
        }

        family(
            w,
            "swapd_request_duration_seconds",
            "Time from admitting a request to sending its last byte.",
            "histogram",
        );
        for (model, stats) in &models {
            if stats.duration.count > 0 {
                histogram(
                    w,
                    "swapd_request_duration_seconds",
                    model,
                    &stats.duration,
                    &REQUEST_BUCKETS,
                );
            }
        }

        family(
            w,
            "swapd_inflight",
            "Requests currently being served by a model.",
            "gauge",
        );
        for (model, gauge) in &live {
            sample(w, "swapd_inflight", &[("model", model)], gauge.inflight);
        }

        family(
            w,
            "swapd_queue_depth",
            "Requests waiting for a model to become available.",
            "gauge",
        );
        for (model, gauge) in &live {
            sample(w, "swapd_queue_depth", &[("model", model)], gauge.queued);
        }

        family(
            w,
            "swapd_model_state",
            "1 for the current state of a model, 0 for the other states.",
            "gauge",
        );
        for (model, gauge) in &live {
            for state in MODEL_STATES {
                let value = u8::from(gauge.state == state);
                sample(
                    w,
                    "swapd_model_state",
                    &[("model", model), ("state", state)],
                    value,
                );
            }
            if !MODEL_STATES.contains(&gauge.state) {
                sample(
                    w,
                    "swapd_model_state",
                    &[("model", model), ("state", gauge.state)],
                    1,
                );
            }
        }

        family(
            w,
            "swapd_model_starts_total",
            "Model starts, by whether the model became healthy.",
            "counter",
        );
        for &model in &known {
            let stats = stats_of(model);
            sample(
                w,
                "swapd_model_starts_total",
                &[("model", model), ("result", "ok")],
                stats.starts_ok,
            );
            sample(
                w,
                "swapd_model_starts_total",
                &[("model", model), ("result", "failed")],
                stats.starts_failed,
            );
        }

        family(
            w,
            "swapd_model_start_duration_seconds",
            "Time from spawning a model's process to its first successful health check.",
            "histogram",
        );
        for (model, stats) in &models {
            if stats.start_duration.count > 0 {
                histogram(
                    w,
                    "swapd_model_start_duration_seconds",
                    model,
                    &stats.start_duration,
                    &START_BUCKETS,
                );
            }
        }

        family(
            w,
            "swapd_swaps_total",
            "Times a model was stopped to make room for another.",
            "counter",
        );
        sample(w, "swapd_swaps_total", &[], swaps);

        family(
            w,
            "swapd_matrix_decisions_total",
            "Swap decisions made by the matrix router.",
            "counter",
        );
        sample(
            w,
            "swapd_matrix_decisions_total",
            &[],
            self.matrix_decisions.load(Ordering::Relaxed),
        );

        family(
            w,
            "swapd_evictions_total",
            "Models stopped, by reason.",
            "counter",
        );
        let mut evictions = evictions;
        evictions.sort_by(|a, b| a.0.cmp(&b.0));
        for (reason, count) in &evictions {
            sample(w, "swapd_evictions_total", &[("reason", reason)], count);
        }

        family(
            w,
            "swapd_child_exits_total",
            "Exits of model processes, expected or not.",
            "counter",
        );
        for &model in &known {
            sample(
                w,
                "swapd_child_exits_total",
                &[("model", model)],
                stats_of(model).child_exits,
            );
        }

        family(
            w,
            "swapd_tokens_total",
            "Tokens reported by upstreams, by kind.",
            "counter",
        );
        for &model in &known {
            let stats = stats_of(model);
            for (kind, count) in TOKEN_KINDS.iter().zip(stats.tokens) {
                sample(
                    w,
                    "swapd_tokens_total",
                    &[("model", model), ("kind", kind)],
                    count,
                );
            }
        }

        family(
            w,
            "swapd_time_to_first_token_seconds",
            "Time from admitting a streamed request to sending the first byte of its body.",
            "histogram",
        );
        for (model, stats) in &models {
            if stats.ttft.count > 0 {
                histogram(
                    w,
                    "swapd_time_to_first_token_seconds",
                    model,
                    &stats.ttft,
                    &REQUEST_BUCKETS,
                );
            }
        }

        family(
            w,
            "swapd_log_dropped_bytes_total",
            "Bytes of log data that slow log subscribers missed.",
            "counter",
        );
        sample(
            w,
            "swapd_log_dropped_bytes_total",
            &[],
            gauges.log_dropped_bytes,
        );

        family(
            w,
            "swapd_process_resident_memory_bytes",
            "Resident memory of the swapd process.",
            "gauge",
        );
        if let Some(bytes) = resident_memory_bytes() {
            sample(w, "swapd_process_resident_memory_bytes", &[], bytes);
        }

        family(
            w,
            "swapd_process_threads",
            "Threads of the swapd process.",
            "gauge",
        );
        if let Some(threads) = thread_count() {
            sample(w, "swapd_process_threads", &[], threads);
        }

        family(
            w,
            "swapd_open_connections",
            "Client connections currently open.",
            "gauge",
        );
        sample(w, "swapd_open_connections", &[], gauges.open_connections);

        if peers.is_empty() {
            out
        } else {
            add_peer_labels(&out, &peers)
        }
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

/// Adds `peer="…"` after `model="…"` on every sample line of a peer model. Done on the
/// rendered text so that the many per-model families need no peer-specific code.
fn add_peer_labels(text: &str, peers: &BTreeMap<String, String>) -> String {
    let needles: Vec<(String, String)> = peers
        .iter()
        .map(|(model, peer)| {
            let mut needle = String::from("model=\"");
            escape_label_value(&mut needle, model);
            needle.push('"');
            let mut label = String::from(",peer=\"");
            escape_label_value(&mut label, peer);
            label.push('"');
            (needle, label)
        })
        .collect();
    let mut out = String::with_capacity(text.len() + 64 * peers.len());
    for line in text.split_inclusive('\n') {
        let found = (!line.starts_with('#'))
            .then(|| {
                needles.iter().find_map(|(needle, label)| {
                    line.find(needle.as_str())
                        .map(|at| (at + needle.len(), label))
                })
            })
            .flatten();
        match found {
            Some((end, label)) => {
                out.push_str(&line[..end]);
                out.push_str(label);
                out.push_str(&line[end..]);
            }
            None => out.push_str(line),
        }
    }
    out
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

pub(crate) fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC, e.g.
/// `2024-02-29T12:34:56.789Z`.
pub(crate) fn format_rfc3339_millis(unix_millis: u64) -> String {
    crate::timefmt::rfc3339(
        std::time::Duration::from_millis(unix_millis),
        crate::timefmt::Fraction::Millis,
    )
}

/// Reads the resident set size from `/proc/self/statm`; `None` where that file does not exist.
pub(crate) fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant and has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page_size = u64::try_from(page_size).ok().filter(|&size| size > 0)?;
    Some(pages.saturating_mul(page_size))
}

/// Reads the thread count from `/proc/self/status`; `None` where that file does not exist.
fn thread_count() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|value| value.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Exposition format helpers.
// ---------------------------------------------------------------------------------------------

/// Writes the `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// Writes one sample line with escaped label values.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (index, (label, label_value)) in labels.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, label_value);
            out.push('"');
        }
        out.push('}');
    }
    // Writing to a String cannot fail.
    let _ = writeln!(out, " {value}");
}

/// Escapes a label value as the exposition format requires: backslash, double quote and line
/// feed.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
}

/// A sample value in the spelling Prometheus parses, including the non-finite ones.
struct PromFloat(f64);

impl Display for PromFloat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_nan() {
            f.write_str("NaN")
        } else if self.0.is_infinite() {
            f.write_str(if self.0 > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            // Rust never uses exponent notation here, which Prometheus accepts as well.
            write!(f, "{}", self.0)
        }
    }
}

/// Writes the cumulative buckets, sum and count of one model's histogram.
fn histogram<const N: usize>(
    out: &mut String,
    name: &str,
    model: &str,
    histogram: &Histogram<N>,
    bounds: &[f64; N],
) {
    let bucket_name = format!("{name}_bucket");
    let mut cumulative = 0u64;
    for (bound, count) in bounds.iter().zip(histogram.counts) {
        cumulative += count;
        let le = PromFloat(*bound).to_string();
        sample(
            out,
            &bucket_name,
            &[("model", model), ("le", &le)],
            cumulative,
        );
    }
    sample(
        out,
        &bucket_name,
        &[("model", model), ("le", "+Inf")],
        histogram.count,
    );
    sample(
        out,
        &format!("{name}_sum"),
        &[("model", model)],
        PromFloat(histogram.sum),
    );
    sample(
        out,
        &format!("{name}_count"),
        &[("model", model)],
        histogram.count,
    );
}

// ---------------------------------------------------------------------------------------------
// Usage scanning.
// ---------------------------------------------------------------------------------------------

/// Incremental usage scanner fed with each response chunk as it is forwarded.
///
/// Memory is bounded: at most [`MAX_LINE_BYTES`] of a partial event-stream line, or the last
/// [`JSON_TAIL_BYTES`] of a JSON body (see [`UsageScanner::retained_bytes`]).
pub struct UsageScanner {
    is_event_stream: bool,
    /// Event streams: the current partial line. JSON bodies: the tail of the body.
    buffer: TailRing,
    /// The first bytes of the current partial line, kept so that a line longer than the carry
    /// can still be recognised as a `data:` line.
    line_prefix: [u8; 5],
    line_prefix_len: usize,
    found: Found,
}

impl UsageScanner {
    /// Creates a scanner for a response whose `Content-Type` is (`true`) or is not (`false`)
    /// `text/event-stream`.
    pub fn new(is_event_stream: bool) -> UsageScanner {
        let limit = if is_event_stream {
            MAX_LINE_BYTES
        } else {
            JSON_TAIL_BYTES
        };
        UsageScanner {
            is_event_stream,
            buffer: TailRing::new(limit),
            line_prefix: [0; 5],
            line_prefix_len: 0,
            found: Found::default(),
        }
    }

    /// Feeds the next chunk of the response body.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.is_event_stream {
            self.feed_event_stream(bytes);
        } else {
            self.buffer.push(bytes);
        }
    }

    /// The bytes of buffer memory held, never more than 64 KiB.
    pub fn retained_bytes(&self) -> usize {
        self.buffer.buf.capacity()
    }

    /// Ends the body and returns what was found; timings override usage field by field.
    pub fn finish(mut self) -> TokenUsage {
        if self.is_event_stream {
            // A stream may end without a final line feed.
            if self.buffer.total > 0 {
                self.end_carried_line();
            }
        } else {
            let complete = self.buffer.total <= self.buffer.limit as u64;
            let tail = self.buffer.linearize();
            // A body that fits the window is parsed whole, which reads only its top-level
            // fields; otherwise, or if it is not one JSON value, the objects are searched for.
            if !(complete && parse_event(&mut self.found, tail)) {
                search_objects(&mut self.found, tail);
            }
        }
        self.found.usage()
    }

    fn feed_event_stream(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            let line = &bytes[..newline];
            if self.buffer.total > 0 {
                self.carry(line);
                self.end_carried_line();
            } else if line.len() <= MAX_LINE_BYTES {
                scan_line(&mut self.found, line);
            } else if line.starts_with(b"data:") {
                search_objects(&mut self.found, &line[line.len() - MAX_LINE_BYTES..]);
            }
            bytes = &bytes[newline + 1..];
        }
        if !bytes.is_empty() {
            self.carry(bytes);
        }
    }

    /// Appends part of the current line to the carry.
    fn carry(&mut self, bytes: &[u8]) {
        if self.line_prefix_len < self.line_prefix.len() {
            let n = (self.line_prefix.len() - self.line_prefix_len).min(bytes.len());
            self.line_prefix[self.line_prefix_len..self.line_prefix_len + n]
                .copy_from_slice(&bytes[..n]);
            self.line_prefix_len += n;
        }
        self.buffer.push(bytes);
    }

    /// Scans the carried line, which is now complete, and empties the carry.
    fn end_carried_line(&mut self) {
        let overlong = self.buffer.total > MAX_LINE_BYTES as u64;
        let is_data = self.line_prefix[..self.line_prefix_len] == *b"data:";
        let line = self.buffer.linearize();
        if !overlong {
            scan_line(&mut self.found, line);
        } else if is_data {
            // Only the end of the line was kept: search it for the objects, which are usually
            // at the end (an OpenAI Responses `response.completed` event carries the whole
            // response, with `usage` near its end).
            search_objects(&mut self.found, line);
        }
        self.buffer.clear();
        self.line_prefix_len = 0;
    }
}

/// Keeps the last `limit` bytes pushed; the buffer grows as needed, never beyond `limit`.
struct TailRing {
    buf: Vec<u8>,
    /// Once `buf` is full: the index of the oldest byte, where the next byte is written.
    head: usize,
    limit: usize,
    /// Bytes pushed since the last `clear`.
    total: u64,
}

impl TailRing {
    fn new(limit: usize) -> TailRing {
        TailRing {
            buf: Vec::new(),
            head: 0,
            limit,
            total: 0,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if bytes.len() >= self.limit {
            bytes = &bytes[bytes.len() - self.limit..];
            self.buf.clear();
            self.head = 0;
        }
        if self.buf.len() < self.limit {
            let n = (self.limit - self.buf.len()).min(bytes.len());
            self.reserve(n);
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        // From here on the buffer is full and the oldest bytes are overwritten.
        while !bytes.is_empty() {
            let n = (self.limit - self.head).min(bytes.len());
            self.buf[self.head..self.head + n].copy_from_slice(&bytes[..n]);
            self.head = (self.head + n) % self.limit;
            bytes = &bytes[n..];
        }
    }

    /// Grows the capacity geometrically but exactly, so that it never exceeds `limit`.
    fn reserve(&mut self, additional: usize) {
        let needed = self.buf.len() + additional;
        if needed > self.buf.capacity() {
            let target = needed.max(self.buf.capacity() * 2).max(256).min(self.limit);
            self.buf.reserve_exact(target - self.buf.len());
        }
    }

    /// The kept bytes in order, oldest first.
    fn linearize(&mut self) -> &[u8] {
        self.buf.rotate_left(self.head);
        self.head = 0;
        &self.buf
    }

    /// Forgets the bytes but keeps the allocation for the next line.
    fn clear(&mut self) {
        self.buf.clear();
        self.head = 0;
        self.total = 0;
    }
}

/// Scans one event-stream line (without its line feed).
fn scan_line(found: &mut Found, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(payload) = line.strip_prefix(b"data:") else {
        return;
    };
    let payload = payload.trim_ascii();
    if payload == b"[DONE]" || !mentions_usage_or_timings(payload) {
        return;
    }
    // Invalid JSON is ignored, as llama-swap does.
    parse_event(found, payload);
}

/// Whether `payload` contains the key `"usage"` or `"timings"` (a cheap pre-filter).
fn mentions_usage_or_timings(payload: &[u8]) -> bool {
    let mut rest = payload;
    while let Some(quote) = rest.iter().position(|&b| b == b'"') {
        rest = &rest[quote..];
        if rest.starts_with(b"\"usage\"")
            || rest.starts_with(b"\"timings\"")
            || rest.starts_with(b"\"metrics\"")
        {
            return true;
        }
        rest = &rest[1..];
    }
    false
}

/// Parses one JSON document and merges its usage and timings into `found`; on invalid JSON
/// nothing is merged and `false` is returned.
fn parse_event(found: &mut Found, json: &[u8]) -> bool {
    let mut trial = *found;
    if parse_seed(json, Lenient(Envelope(&mut trial))).is_some() {
        *found = trial;
        true
    } else {
        false
    }
}

/// Deserializes all of `json` with `seed`; `None` if it is not exactly one JSON value.
fn parse_seed<'de, S: DeserializeSeed<'de>>(json: &'de [u8], seed: S) -> Option<S::Value> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = seed.deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(value)
}

/// Finds the last `"usage"` and `"timings"` objects in a window of JSON text that need not
/// start at a value boundary, and merges them into `found`.
fn search_objects(found: &mut Found, window: &[u8]) {
    let usage = last_object(window, b"\"usage\"", |object| {
        parse_seed(object, Lenient(UsageVisit::default()))
            .flatten()
            .filter(UsageFields::is_some)
    });
    if let Some(usage) = usage {
        found.merge_usage(usage);
    }
    let timings = last_object(window, b"\"timings\"", |object| {
        parse_seed(object, Lenient(TimingsVisit::default())).flatten()
    });
    if timings.is_some() {
        found.timings = timings;
    }
    let vllm = last_object(window, b"\"metrics\"", |object| {
        parse_seed(object, Lenient(VllmVisit::default())).flatten()
    });
    if vllm.is_some() {
        found.vllm = vllm;
    }
}

/// Looks for `key` followed by `:` and an object, from the end of `window` backwards, and
/// returns the first such object that `parse` accepts.
///
/// A key is recognised only at an unescaped quote: inside a JSON string every quote is
/// escaped, so text such as `\"usage\": {` in generated content is never taken for a key, even
/// when the window starts in the middle of a string.
fn last_object<T>(
    window: &[u8],
    key: &[u8],
    mut parse: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    let mut end = window.len();
    while let Some(position) = rfind(&window[..end], key) {
        end = position;
        if is_escaped(window, position) {
            continue;
        }
        let mut index = skip_whitespace(window, position + key.len());
        if window.get(index) != Some(&b':') {
            continue;
        }
        index = skip_whitespace(window, index + 1);
        if window.get(index) != Some(&b'{') {
            continue;
        }
        if let Some(close) = matching_brace(window, index) {
            if let Some(value) = parse(&window[index..close]) {
                return Some(value);
            }
        }
    }
    None
}

/// The position of the last occurrence of `needle` in `haystack`.
fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len())
        .rev()
        .find(|&start| haystack[start..].starts_with(needle))
}

/// Whether the byte at `position` is preceded by an odd number of backslashes.
fn is_escaped(window: &[u8], position: usize) -> bool {
    window[..position]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count()
        % 2
        == 1
}

fn skip_whitespace(window: &[u8], mut index: usize) -> usize {
    while window.get(index).is_some_and(u8::is_ascii_whitespace) {
        index += 1;
    }
    index
}

/// Given the index of a `{`, returns the index just past its matching `}`, skipping braces and
/// brackets inside strings (whose quotes may be escaped); `None` if it is not closed in
/// `window`.
fn matching_brace(window: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &byte) in window[open..].iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(open + offset + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// What has been read from a response so far.
#[derive(Debug, Clone, Copy, Default)]
struct Found {
    input: Option<u64>,
    output: Option<u64>,
    cached: Option<u64>,
    /// The last `timings` object seen.
    timings: Option<Timings>,
    /// The last vLLM `metrics` object seen.
    vllm: Option<VllmMetrics>,
}

impl Found {
    /// Merges a `usage` object: later non-zero values overwrite earlier ones (llama-swap's
    /// rule, which lets Anthropic's `message_delta` complete `message_start`).
    fn merge_usage(&mut self, usage: UsageFields) {
        merge_count(&mut self.input, usage.input);
        merge_count(&mut self.output, usage.output);
        merge_count(&mut self.cached, usage.cached);
    }

    fn usage(&self) -> TokenUsage {
        let mut usage = TokenUsage {
            input: self.input,
            output: self.output,
            cached: self.cached,
            prompt_per_second: None,
            tokens_per_second: None,
            draft: None,
            draft_accepted: None,
            upstream_millis: None,
        };
        // vLLM: prompt speed from the uncached prompt tokens over the time to first token,
        // generation speed from the mean inter-token latency (llama-swap's derivation).
        if let Some(vllm) = self.vllm {
            let uncached = usage
                .input
                .map(|input| input.saturating_sub(usage.cached.unwrap_or(0)));
            usage.prompt_per_second = derived_rate(uncached, vllm.time_to_first_token_ms);
            usage.tokens_per_second = derived_rate(Some(1), vllm.mean_itl_ms);
            if let (Some(draft), Some(accepted)) = (
                to_count(vllm.num_draft_tokens),
                to_count(vllm.num_accepted_draft_tokens),
            ) {
                usage.draft = Some(draft);
                usage.draft_accepted = Some(accepted);
            }
        }
        if let Some(timings) = self.timings {
            let prompt_n = to_count(timings.prompt_n);
            let predicted_n = to_count(timings.predicted_n);
            usage.input = prompt_n.or(usage.input);
            usage.output = predicted_n.or(usage.output);
            usage.cached = to_count(timings.cache_n).or(usage.cached);
            usage.prompt_per_second = to_rate(timings.prompt_per_second)
                .or_else(|| derived_rate(prompt_n, timings.prompt_ms));
            usage.tokens_per_second = to_rate(timings.predicted_per_second)
                .or_else(|| derived_rate(predicted_n, timings.predicted_ms));
            usage.draft = to_count(timings.draft_n).or(usage.draft);
            usage.draft_accepted = to_count(timings.draft_n_accepted).or(usage.draft_accepted);
            let millis = to_rate(timings.prompt_ms).unwrap_or(0.0)
                + to_rate(timings.predicted_ms).unwrap_or(0.0);
            usage.upstream_millis = (millis > 0.0).then_some(millis);
        }
        usage
    }
}

fn merge_count(slot: &mut Option<u64>, value: Option<u64>) {
    if let Some(value) = value {
        if slot.is_none() || value != 0 {
            *slot = Some(value);
        }
    }
}

/// A token count from a JSON number; negative or non-finite numbers mean "unknown".
fn to_count(value: Option<f64>) -> Option<u64> {
    // The cast saturates, and token counts are far below 2^53 anyway.
    value
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v as u64)
}

fn to_rate(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite() && *v >= 0.0)
}

/// Tokens per second from a count and the milliseconds it took, when the upstream gave those
/// but not the rate itself.
fn derived_rate(count: Option<u64>, millis: Option<f64>) -> Option<f64> {
    let millis = to_rate(millis).filter(|&ms| ms > 0.0)?;
    Some(count? as f64 * 1000.0 / millis)
}

/// The fields of one `usage` object.
#[derive(Debug, Clone, Copy, Default)]
struct UsageFields {
    input: Option<u64>,
    output: Option<u64>,
    cached: Option<u64>,
}

impl UsageFields {
    fn is_some(&self) -> bool {
        self.input.is_some() || self.output.is_some() || self.cached.is_some()
    }
}

/// The fields of one llama.cpp `timings` object.
#[derive(Debug, Clone, Copy, Default)]
struct Timings {
    prompt_n: Option<f64>,
    predicted_n: Option<f64>,
    cache_n: Option<f64>,
    prompt_per_second: Option<f64>,
    predicted_per_second: Option<f64>,
    prompt_ms: Option<f64>,
    predicted_ms: Option<f64>,
    draft_n: Option<f64>,
    draft_n_accepted: Option<f64>,
}

/// The fields of one vLLM `metrics` object.
#[derive(Debug, Clone, Copy, Default)]
struct VllmMetrics {
    time_to_first_token_ms: Option<f64>,
    mean_itl_ms: Option<f64>,
    num_draft_tokens: Option<f64>,
    num_accepted_draft_tokens: Option<f64>,
}

// The JSON is read with hand-written, lenient serde visitors rather than into a
// `serde_json::Value`: unknown fields are skipped without allocating, a value of an unexpected
// type is treated as absent instead of failing the whole document, and duplicate keys are
// accepted (the last one wins).

/// The object keys the scanner cares about; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Usage,
    Timings,
    Response,
    Message,
    PromptTokens,
    InputTokens,
    CompletionTokens,
    OutputTokens,
    CacheReadInputTokens,
    PromptTokensDetails,
    InputTokensDetails,
    CachedTokens,
    PromptN,
    PredictedN,
    CacheN,
    PromptPerSecond,
    PredictedPerSecond,
    PromptMs,
    PredictedMs,
    DraftN,
    DraftNAccepted,
    Metrics,
    TimeToFirstTokenMs,
    MeanItlMs,
    SpeculativeDecoding,
    NumDraftTokens,
    NumAcceptedDraftTokens,
    Other,
}

impl Key {
    fn from_name(name: &str) -> Key {
        match name {
            "usage" => Key::Usage,
            "timings" => Key::Timings,
            "response" => Key::Response,
            "message" => Key::Message,
            "prompt_tokens" => Key::PromptTokens,
            "input_tokens" => Key::InputTokens,
            "completion_tokens" => Key::CompletionTokens,
            "output_tokens" => Key::OutputTokens,
            "cache_read_input_tokens" => Key::CacheReadInputTokens,
            "prompt_tokens_details" => Key::PromptTokensDetails,
            "input_tokens_details" => Key::InputTokensDetails,
            "cached_tokens" => Key::CachedTokens,
            "prompt_n" => Key::PromptN,
            "predicted_n" => Key::PredictedN,
            "cache_n" => Key::CacheN,
            "prompt_per_second" => Key::PromptPerSecond,
            "predicted_per_second" => Key::PredictedPerSecond,
            "prompt_ms" => Key::PromptMs,
            "predicted_ms" => Key::PredictedMs,
            "draft_n" => Key::DraftN,
            "draft_n_accepted" => Key::DraftNAccepted,
            "metrics" => Key::Metrics,
            "time_to_first_token_ms" => Key::TimeToFirstTokenMs,
            "mean_itl_ms" => Key::MeanItlMs,
            "speculative_decoding" => Key::SpeculativeDecoding,
            "num_draft_tokens" => Key::NumDraftTokens,
            "num_accepted_draft_tokens" => Key::NumAcceptedDraftTokens,
            _ => Key::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(Key::from_name(name))
            }
            fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<Key, E> {
                Ok(std::str::from_utf8(name).map_or(Key::Other, Key::from_name))
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A JSON number, or `None` for any other value.
struct Num(Option<f64>);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Num, D::Error> {
        struct NumVisitor;
        impl<'de> Visitor<'de> for NumVisitor {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(Some(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Num, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Num(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Num, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Num(None))
            }
        }
        deserializer.deserialize_any(NumVisitor)
    }
}

/// The shape-specific part of a lenient object visitor: what to do with each field, and with
/// each element if the value turns out to be an array.
trait ObjectVisit {
    /// The result; its default is returned for values that are not objects.
    type Out: Default;

    /// Consumes the value of `key` from `map`.
    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error>;

    /// Consumes one element of an array; returns `false` at its end.
    fn element<'de, A: SeqAccess<'de>>(&mut self, seq: &mut A) -> Result<bool, A::Error> {
        Ok(seq.next_element::<IgnoredAny>()?.is_some())
    }

    /// The result for an object whose fields have all been visited.
    fn finish(self) -> Self::Out;
}

/// Accepts any JSON value, visiting objects with `T` and skipping everything else.
struct Lenient<T>(T);

impl<'de, T: ObjectVisit> DeserializeSeed<'de> for Lenient<T> {
    type Value = T::Out;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T::Out, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: ObjectVisit> Visitor<'de> for Lenient<T> {
    type Value = T::Out;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_none<E: de::Error>(self) -> Result<T::Out, E> {
        Ok(T::Out::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<T::Out, A::Error> {
        while self.0.element(&mut seq)? {}
        Ok(T::Out::default())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<T::Out, A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            self.0.field(key, &mut map)?;
        }
        Ok(self.0.finish())
    }
}

/// A whole event or body: `usage`, `timings`, `response.usage` and `message.usage` at the top
/// level, and the same in each element of a top-level array (llama.cpp `/infill`).
struct Envelope<'a>(&'a mut Found);

impl ObjectVisit for Envelope<'_> {
    type Out = ();

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        match key {
            Key::Usage => {
                if let Some(usage) = map.next_value_seed(Lenient(UsageVisit::default()))? {
                    self.0.merge_usage(usage);
                }
            }
            Key::Timings => {
                if let Some(timings) = map.next_value_seed(Lenient(TimingsVisit::default()))? {
                    self.0.timings = Some(timings);
                }
            }
            Key::Metrics => {
                if let Some(metrics) = map.next_value_seed(Lenient(VllmVisit::default()))? {
                    self.0.vllm = Some(metrics);
                }
            }
            Key::Response | Key::Message => {
                map.next_value_seed(Lenient(UsageHolder(&mut *self.0)))?;
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn element<'de, A: SeqAccess<'de>>(&mut self, seq: &mut A) -> Result<bool, A::Error> {
        Ok(seq
            .next_element_seed(Lenient(Envelope(&mut *self.0)))?
            .is_some())
    }

    fn finish(self) -> Self::Out {}
}

/// An object that may hold a `usage` object (OpenAI Responses `response`, Anthropic `message`).
struct UsageHolder<'a>(&'a mut Found);

impl ObjectVisit for UsageHolder<'_> {
    type Out = ();

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        if key == Key::Usage {
            if let Some(usage) = map.next_value_seed(Lenient(UsageVisit::default()))? {
                self.0.merge_usage(usage);
            }
        } else {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn finish(self) -> Self::Out {}
}

/// A `usage` object in any of the OpenAI, OpenAI Responses and Anthropic spellings.
#[derive(Default)]
struct UsageVisit(UsageFields);

impl ObjectVisit for UsageVisit {
    type Out = Option<UsageFields>;

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        let usage = &mut self.0;
        match key {
            Key::PromptTokens | Key::InputTokens => {
                merge_count(&mut usage.input, to_count(map.next_value::<Num>()?.0));
            }
            Key::CompletionTokens | Key::OutputTokens => {
                merge_count(&mut usage.output, to_count(map.next_value::<Num>()?.0));
            }
            Key::CacheReadInputTokens => {
                merge_count(&mut usage.cached, to_count(map.next_value::<Num>()?.0));
            }
            Key::PromptTokensDetails | Key::InputTokensDetails => {
                let cached = map.next_value_seed(Lenient(DetailsVisit::default()))?;
                merge_count(&mut usage.cached, to_count(cached));
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Self::Out {
        Some(self.0)
    }
}

/// A `prompt_tokens_details` or `input_tokens_details` object.
#[derive(Default)]
struct DetailsVisit(Option<f64>);

impl ObjectVisit for DetailsVisit {
    type Out = Option<f64>;

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        if key == Key::CachedTokens {
            self.0 = map.next_value::<Num>()?.0;
        } else {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn finish(self) -> Self::Out {
        self.0
    }
}

/// A llama.cpp `timings` object.
#[derive(Default)]
struct TimingsVisit(Timings);

impl ObjectVisit for TimingsVisit {
    type Out = Option<Timings>;

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        let timings = &mut self.0;
        let slot = match key {
            Key::PromptN => &mut timings.prompt_n,
            Key::PredictedN => &mut timings.predicted_n,
            Key::CacheN => &mut timings.cache_n,
            Key::PromptPerSecond => &mut timings.prompt_per_second,
            Key::PredictedPerSecond => &mut timings.predicted_per_second,
            Key::PromptMs => &mut timings.prompt_ms,
            Key::PredictedMs => &mut timings.predicted_ms,
            Key::DraftN => &mut timings.draft_n,
            Key::DraftNAccepted => &mut timings.draft_n_accepted,
            _ => {
                map.next_value::<IgnoredAny>()?;
                return Ok(());
            }
        };
        *slot = map.next_value::<Num>()?.0;
        Ok(())
    }

    fn finish(self) -> Self::Out {
        Some(self.0)
    }
}

/// A vLLM `metrics` object (and its `speculative_decoding` member).
#[derive(Default)]
struct VllmVisit(VllmMetrics);

impl ObjectVisit for VllmVisit {
    type Out = Option<VllmMetrics>;

    fn field<'de, A: MapAccess<'de>>(&mut self, key: Key, map: &mut A) -> Result<(), A::Error> {
        let metrics = &mut self.0;
        let slot = match key {
            Key::TimeToFirstTokenMs => &mut metrics.time_to_first_token_ms,
            Key::MeanItlMs => &mut metrics.mean_itl_ms,
            Key::NumDraftTokens => &mut metrics.num_draft_tokens,
            Key::NumAcceptedDraftTokens => &mut metrics.num_accepted_draft_tokens,
            Key::SpeculativeDecoding => {
                if let Some(inner) = map.next_value_seed(Lenient(VllmVisit::default()))? {
                    metrics.num_draft_tokens = inner.num_draft_tokens;
                    metrics.num_accepted_draft_tokens = inner.num_accepted_draft_tokens;
                }
                return Ok(());
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
                return Ok(());
            }
        };
        *slot = map.next_value::<Num>()?.0;
        Ok(())
    }

    fn finish(self) -> Self::Out {
        Some(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Label names and unescaped values, in order.
    type Labels = Vec<(String, String)>;

    /// One parsed sample line: name, labels and value.
    type Sample = (String, Labels, f64);

    fn record(model: &str, status: u16, millis: u64) -> RequestRecord<'_> {
        RequestRecord {
            model,
            path: "/v1/chat/completions",
            status,
            duration: Duration::from_millis(millis),
            usage: TokenUsage::default(),
            time_to_first_token: None,
        }
    }

    fn gauge(model: &str, state: &'static str, inflight: u64, queued: u64) -> ModelGauge {
        ModelGauge {
            model: model.to_owned(),
            state,
            inflight,
            queued,
        }
    }

    /// Parses a label set `{a="x",b="y"}` at the start of `text`; returns the labels with their
    /// values unescaped and the rest of the text.
    fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
        let mut labels = Vec::new();
        let mut rest = text
            .strip_prefix('{')
            .ok_or_else(|| format!("expected '{{' in {text:?}"))?;
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        loop {
            let name_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .ok_or("unterminated label name")?;
            let name = &rest[..name_len];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!("bad label name in {text:?}"));
            }
            rest = rest[name_len..]
                .strip_prefix("=\"")
                .ok_or_else(|| format!("expected '=\"' after label {name}"))?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {text:?}")),
                    },
                    Some((index, '"')) => break index,
                    Some((_, '\n')) => return Err("raw line feed in label value".into()),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value in {text:?}")),
                }
            };
            if labels.iter().any(|(known, _)| known == name) {
                return Err(format!("duplicate label {name} in {text:?}"));
            }
            labels.push((name.to_owned(), value));
            rest = &rest[end + 1..];
            if let Some(after) = rest.strip_prefix('}') {
                return Ok((labels, after));
            }
            rest = rest
                .strip_prefix(',')
                .ok_or_else(|| format!("expected ',' or '}}' in {text:?}"))?;
        }
    }

    fn parse_value(text: &str) -> Result<f64, String> {
        match text {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => text.parse().map_err(|_| format!("bad value {text:?}")),
        }
    }

    /// Histogram series state: the last bucket's bound and value, the +Inf bucket, the count.
    #[derive(Default)]
    struct Series {
        last_le: Option<f64>,
        last_bucket: f64,
        inf: Option<f64>,
        count: Option<f64>,
    }

    /// A small validator for the rules `promtool check metrics` enforces on the text format.
    /// Returns every sample as (name, labels, value).
    fn validate(text: &str) -> Result<Vec<Sample>, String> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut finished: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut series: BTreeMap<(String, Labels), Series> = BTreeMap::new();
        let mut samples = Vec::new();
        let mut seen: HashSet<(String, Labels)> = HashSet::new();

        let mut switch = |name: &str, current: &mut Option<String>| -> Result<(), String> {
            if current.as_deref() != Some(name) {
                if finished.contains(name) {
                    return Err(format!("family {name} is not contiguous"));
                }
                if let Some(previous) = current.take() {
                    finished.insert(previous);
                }
                *current = Some(name.to_owned());
            }
            Ok(())
        };

        if !text.ends_with('\n') {
            return Err("exposition must end with a line feed".into());
        }
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                if !helps.insert(name.to_owned()) {
                    return Err(format!("HELP for {name} twice"));
                }
                switch(name, &mut current)?;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap_or_default();
                let kind = parts.next().unwrap_or_default();
                if parts.next().is_some() || !["counter", "gauge", "histogram"].contains(&kind) {
                    return Err(format!("bad TYPE line {line:?}"));
                }
                if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                    return Err(format!("TYPE for {name} twice"));
                }
                if kind == "counter" && !name.ends_with("_total") {
                    return Err(format!("counter {name} does not end in _total"));
                }
                switch(name, &mut current)?;
            } else if line.starts_with('#') {
                continue;
            } else {
                let name_end = line
                    .find(['{', ' '])
                    .ok_or_else(|| format!("bad sample line {line:?}"))?;
                let name = &line[..name_end];
                let (labels, rest) = if line[name_end..].starts_with('{') {
                    parse_labels(&line[name_end..])?
                } else {
                    (Vec::new(), &line[name_end..])
                };
                let value = parse_value(
                    rest.strip_prefix(' ')
                        .ok_or_else(|| format!("no value in {line:?}"))?,
                )?;
                let family = if types.get(name).is_some_and(|kind| kind != "histogram") {
                    name.to_owned()
                } else {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .filter(|family| {
                            types.get(*family).map(String::as_str) == Some("histogram")
                        })
                        .ok_or_else(|| format!("sample {name} has no declared family"))?
                        .to_owned()
                };
                if current.as_deref() != Some(family.as_str()) {
                    return Err(format!("sample {name} outside its family block"));
                }
                if !seen.insert((name.to_owned(), labels.clone())) {
                    return Err(format!("duplicate series {line:?}"));
                }
                if types[&family] == "counter" && value < 0.0 {
                    return Err(format!("negative counter {line:?}"));
                }
                if types[&family] == "histogram" {
                    let key_labels: Labels =
                        labels.iter().filter(|(n, _)| n != "le").cloned().collect();
                    let state = series.entry((family.clone(), key_labels)).or_default();
                    if name.ends_with("_bucket") {
                        let le = labels
                            .iter()
                            .find(|(n, _)| n == "le")
                            .ok_or_else(|| format!("bucket without le: {line:?}"))?;
                        let le = parse_value(&le.1)?;
                        if state.inf.is_some() {
                            return Err(format!("bucket after +Inf: {line:?}"));
                        }
                        if state.last_le.is_some_and(|last| le <= last) {
                            return Err(format!("bucket bounds not increasing: {line:?}"));
                        }
                        if value < state.last_bucket {
                            return Err(format!("buckets decrease: {line:?}"));
                        }
                        state.last_le = Some(le);
                        state.last_bucket = value;
                        if le.is_infinite() {
                            state.inf = Some(value);
                        }
                    } else if name.ends_with("_count") {
                        state.count = Some(value);
                    } else if labels.iter().any(|(n, _)| n == "le") {
                        return Err(format!("le on a _sum: {line:?}"));
                    }
                }
                samples.push((name.to_owned(), labels, value));
            }
        }
        for ((family, labels), state) in &series {
            match (state.inf, state.count) {
                (Some(inf), Some(count)) if inf == count => {}
                _ => return Err(format!("histogram {family} {labels:?}: +Inf != _count")),
            }
        }
        Ok(samples)
    }

    fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, value)| *value)
    }

    #[test]
    fn request_counters_are_exact() {
        let metrics = Metrics::new(10);
        metrics.record_request(record("a", 200, 10));
        metrics.record_request(record("a", 200, 20));
        metrics.record_request(record("b", 503, 30));
        let text = metrics.render(&Gauges::default());
        assert!(text.contains("swapd_requests_total{model=\"a\",code=\"200\"} 2\n"));
        assert!(text.contains("swapd_requests_total{model=\"b\",code=\"503\"} 1\n"));
        assert!(!text.contains("swapd_requests_total{model=\"a\",code=\"503\"}"));
        assert!(!text.contains("swapd_requests_total{model=\"b\",code=\"200\"}"));
        let samples = validate(&text).expect("valid exposition");
        assert_eq!(
            value_of(
                &samples,
                "swapd_request_duration_seconds_count",
                &[("model", "a")]
            ),
            Some(2.0)
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let metrics = Metrics::new(10);
        for millis in [3, 7, 300, 2000, 400_000] {
            let mut r = record("m", 200, millis);
            r.time_to_first_token = Some(Duration::from_millis(millis / 2));
            metrics.record_request(r);
        }
        let samples = validate(&metrics.render(&Gauges::default())).expect("valid exposition");
        let bucket = |le: &str| {
            value_of(
                &samples,
                "swapd_request_duration_seconds_bucket",
                &[("model", "m"), ("le", le)],
            )
        };
        assert_eq!(bucket("0.005"), Some(1.0));
        assert_eq!(bucket("0.01"), Some(2.0));
        assert_eq!(bucket("0.25"), Some(2.0));
        assert_eq!(bucket("0.5"), Some(3.0));
        assert_eq!(bucket("1"), Some(3.0));
        assert_eq!(bucket("2.5"), Some(4.0));
        assert_eq!(bucket("300"), Some(4.0));
        assert_eq!(bucket("+Inf"), Some(5.0));
        assert_eq!(
            value_of(
                &samples,
                "swapd_request_duration_seconds_count",
                &[("model", "m")]
            ),
            Some(5.0)
        );
        let sum = value_of(
            &samples,
            "swapd_request_duration_seconds_sum",
            &[("model", "m")],
        )
        .expect("sum present");
        assert!((sum - 402.31).abs() < 1e-9, "sum was {sum}");
        assert_eq!(
            value_of(
                &samples,
                "swapd_time_to_first_token_seconds_bucket",
                &[("model", "m"), ("le", "0.005")]
            ),
            Some(2.0)
        );
        assert_eq!(
            value_of(
                &samples,
                "swapd_time_to_first_token_seconds_count",
                &[("model", "m")]
            ),
            Some(5.0)
        );
        let buckets = samples
            .iter()
            .filter(|(n, l, _)| n == "swapd_request_duration_seconds_bucket" && l[0].1 == "m")
            .count();
        assert_eq!(buckets, REQUEST_BUCKETS.len() + 1);
    }

    #[test]
    fn peer_models_carry_a_peer_label_on_every_series() {
        let metrics = Metrics::new(10);
        metrics.record_request(record("gpu/a", 200, 1));
        metrics.record_request(record("local", 200, 1));
        metrics.label_peer("gpu/a", "gp\"u");
        let text = metrics.render(&Gauges::default());
        let samples = validate(&text).expect("valid exposition");
        let peer_lines: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("model=\"gpu/a\""))
            .collect();
        assert!(!peer_lines.is_empty());
        for line in &peer_lines {
            assert!(line.contains("model=\"gpu/a\",peer=\"gp\\\"u\""), "{line}");
        }
        assert_eq!(
            value_of(
                &samples,
                "swapd_requests_total",
                &[("model", "gpu/a"), ("peer", "gp\"u"), ("code", "200")]
            ),
            Some(1.0)
        );
        assert!(!text.contains("model=\"local\",peer"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new(10);
        let weird = "we\"ird\\name\nline";
        metrics.record_request(record(weird, 200, 1));
        let text = metrics.render(&Gauges {
            models: vec![gauge(weird, "ready", 1, 0)],
            ..Gauges::default()
        });
        assert!(text.contains(r#"swapd_requests_total{model="we\"ird\\name\nline",code="200"} 1"#));
        let samples = validate(&text).expect("valid exposition");
        assert_eq!(
            value_of(&samples, "swapd_inflight", &[("model", weird)]),
            Some(1.0)
        );
        let mut escaped = String::new();
        escape_label_value(&mut escaped, "a\\b\"c\nd");
        assert_eq!(escaped, "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn every_family_is_declared_even_without_data() {
        let metrics = Metrics::new(10);
        let text = metrics.render(&Gauges::default());
        validate(&text).expect("valid exposition");
        for (name, kind) in [
            ("swapd_requests_total", "counter"),
            ("swapd_request_duration_seconds", "histogram"),
            ("swapd_inflight", "gauge"),
            ("swapd_queue_depth", "gauge"),
            ("swapd_model_state", "gauge"),
            ("swapd_model_starts_total", "counter"),
            ("swapd_model_start_duration_seconds", "histogram"),
            ("swapd_swaps_total", "counter"),
            ("swapd_evictions_total", "counter"),
            ("swapd_child_exits_total", "counter"),
            ("swapd_tokens_total", "counter"),
            ("swapd_time_to_first_token_seconds", "histogram"),
            ("swapd_log_dropped_bytes_total", "counter"),
            ("swapd_process_resident_memory_bytes", "gauge"),
            ("swapd_process_threads", "gauge"),
            ("swapd_open_connections", "gauge"),
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {name} {kind}\n")).count(),
                1,
                "{name}"
            );
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
        }
        assert!(text.contains("swapd_swaps_total 0\n"));
        assert!(text.contains("swapd_evictions_total{reason=\"crash\"} 0\n"));
    }

    #[test]
    fn gauges_cover_models_without_requests() {
        let metrics = Metrics::new(10);
        metrics.record_request(record("busy", 200, 5));
        let gauges = Gauges {
            models: vec![
                gauge("idle", "stopped", 0, 0),
                gauge("busy", "ready", 2, 3),
                gauge("odd", "shutdown", 0, 0),
                gauge("idle", "ready", 9, 9),
            ],
            log_dropped_bytes: 1234,
            open_connections: 7,
        };
        let text = metrics.render(&gauges);
        let samples = validate(&text).expect("valid exposition");
        let get = |name: &str, labels: &[(&str, &str)]| value_of(&samples, name, labels);
        assert_eq!(get("swapd_inflight", &[("model", "idle")]), Some(0.0));
        assert_eq!(get("swapd_inflight", &[("model", "busy")]), Some(2.0));
        assert_eq!(get("swapd_queue_depth", &[("model", "busy")]), Some(3.0));
        for (state, expected) in [
            ("stopped", 1.0),
            ("starting", 0.0),
            ("ready", 0.0),
            ("stopping", 0.0),
        ] {
            assert_eq!(
                get("swapd_model_state", &[("model", "idle"), ("state", state)]),
                Some(expected),
                "{state}"
            );
        }
        assert_eq!(
            get(
                "swapd_model_state",
                &[("model", "busy"), ("state", "ready")]
            ),
            Some(1.0)
        );
        assert_eq!(
            get(
                "swapd_model_state",
                &[("model", "odd"), ("state", "shutdown")]
            ),
            Some(1.0)
        );
        assert_eq!(
            get(
                "swapd_model_starts_total",
                &[("model", "idle"), ("result", "ok")]
            ),
            Some(0.0)
        );
        assert_eq!(
            get(
                "swapd_tokens_total",
                &[("model", "idle"), ("kind", "cached")]
            ),
            Some(0.0)
        );
        assert_eq!(
            get("swapd_child_exits_total", &[("model", "idle")]),
            Some(0.0)
        );
        assert_eq!(get("swapd_log_dropped_bytes_total", &[]), Some(1234.0));
        assert_eq!(get("swapd_open_connections", &[]), Some(7.0));
        // No histogram series for a model that has not been observed.
        assert!(!text.contains("swapd_request_duration_seconds_count{model=\"idle\"}"));
        if cfg!(target_os = "linux") {
            assert!(get("swapd_process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
            assert!(get("swapd_process_threads", &[]).is_some_and(|v| v >= 1.0));
        }
    }

    #[test]
    fn lifecycle_counters() {
        let metrics = Metrics::new(10);
        metrics.record_start("a", true, Duration::from_millis(700));
        metrics.record_start("a", true, Duration::from_secs(200));
        metrics.record_start("a", false, Duration::from_secs(3));
        metrics.record_swap();
        metrics.record_swap();
        metrics.record_eviction("swap");
        metrics.record_eviction("swap");
        metrics.record_eviction("ttl");
        metrics.record_eviction("crash");
        metrics.record_eviction("shutdown");
        metrics.record_child_exit("a");
        metrics.record_child_exit("b");
        metrics.record_child_exit("b");
        let mut r = record("a", 200, 100);
        r.usage = TokenUsage {
            input: Some(10),
            output: Some(5),
            cached: Some(2),
            ..TokenUsage::default()
        };
        metrics.record_request(r.clone());
        r.usage.cached = None;
        metrics.record_request(r);

        let samples = validate(&metrics.render(&Gauges::default())).expect("valid exposition");
        let get = |name: &str, labels: &[(&str, &str)]| value_of(&samples, name, labels);
        assert_eq!(
            get(
                "swapd_model_starts_total",
                &[("model", "a"), ("result", "ok")]
            ),
            Some(2.0)
        );
        assert_eq!(
            get(
                "swapd_model_starts_total",
                &[("model", "a"), ("result", "failed")]
            ),
            Some(1.0)
        );
        assert_eq!(
            get(
                "swapd_model_starts_total",
                &[("model", "b"), ("result", "ok")]
            ),
            Some(0.0)
        );
        assert_eq!(
            get(
                "swapd_model_start_duration_seconds_count",
                &[("model", "a")]
            ),
            Some(2.0)
        );
        assert_eq!(
            get(
                "swapd_model_start_duration_seconds_bucket",
                &[("model", "a"), ("le", "1")]
            ),
            Some(1.0)
        );
        assert_eq!(
            get(
                "swapd_model_start_duration_seconds_bucket",
                &[("model", "a"), ("le", "120")]
            ),
            Some(1.0)
        );
        assert_eq!(
            get("swapd_model_start_duration_seconds_sum", &[("model", "a")]),
            Some(200.7)
        );
        assert_eq!(get("swapd_swaps_total", &[]), Some(2.0));
        assert_eq!(
            get("swapd_evictions_total", &[("reason", "swap")]),
            Some(2.0)
        );
        assert_eq!(
            get("swapd_evictions_total", &[("reason", "ttl")]),
            Some(1.0)
        );
        assert_eq!(
            get("swapd_evictions_total", &[("reason", "unload")]),
            Some(0.0)
        );
        assert_eq!(
            get("swapd_evictions_total", &[("reason", "crash")]),
            Some(1.0)
        );
        assert_eq!(
            get("swapd_evictions_total", &[("reason", "shutdown")]),
            Some(1.0)
        );
        assert_eq!(get("swapd_child_exits_total", &[("model", "a")]), Some(1.0));
        assert_eq!(get("swapd_child_exits_total", &[("model", "b")]), Some(2.0));
        assert_eq!(
            get("swapd_tokens_total", &[("model", "a"), ("kind", "prompt")]),
            Some(20.0)
        );
        assert_eq!(
            get(
                "swapd_tokens_total",
                &[("model", "a"), ("kind", "completion")]
            ),
            Some(10.0)
        );
        assert_eq!(
            get("swapd_tokens_total", &[("model", "a"), ("kind", "cached")]),
            Some(2.0)
        );
        // No streamed request: no time-to-first-token series.
        assert_eq!(
            get("swapd_time_to_first_token_seconds_count", &[("model", "a")]),
            None
        );
    }

    #[test]
    fn rows_are_bounded_and_ids_keep_increasing() {
        let metrics = Metrics::new(3);
        let ids: Vec<u64> = (0..5)
            .map(|i| metrics.record_request(record(&format!("m{i}"), 200, i)))
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        let rows = metrics.rows_json();
        let rows = rows.as_array().expect("an array");
        assert_eq!(rows.len(), 3);
        let row_ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().expect("id")).collect();
        assert_eq!(row_ids, vec![3, 4, 5]);
        assert_eq!(rows[2]["model"], "m4");

        let none = Metrics::new(0);
        assert_eq!(none.record_request(record("a", 200, 1)), 1);
        assert_eq!(none.record_request(record("a", 200, 1)), 2);
        assert_eq!(none.rows_json(), serde_json::json!([]));
    }

    #[test]
    fn rows_json_fields() {
        let metrics = Metrics::new(10);
        let before = unix_millis_now();
        metrics.record_request(RequestRecord {
            model: "llama",
            path: "/v1/completions",
            status: 200,
            duration: Duration::from_micros(1_234_567),
            usage: TokenUsage {
                input: Some(100),
                output: Some(20),
                cached: None,
                prompt_per_second: Some(512.5),
                tokens_per_second: None,
                ..TokenUsage::default()
            },
            time_to_first_token: Some(Duration::from_millis(50)),
        });
        let rows = metrics.rows_json();
        let row = &rows[0];
        assert_eq!(row["id"], 1);
        assert_eq!(row["model"], "llama");
        assert_eq!(row["path"], "/v1/completions");
        assert_eq!(row["status"], 200);
        assert_eq!(row["input_tokens"], 100);
        assert_eq!(row["output_tokens"], 20);
        assert_eq!(row["cached_tokens"], -1);
        assert_eq!(row["prompt_per_second"], 512.5);
        assert_eq!(row["tokens_per_second"], -1);
        assert_eq!(row["duration_ms"], 1234);
        let timestamp = row["timestamp"].as_str().expect("a string");
        assert_eq!(timestamp.len(), "2024-02-29T12:34:56.789Z".len());
        assert!(timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T');
        assert!(timestamp >= format_rfc3339_millis(before).as_str());
        assert_eq!(row.as_object().expect("an object").len(), 11);
    }

    #[test]
    fn subscribers_get_rows_and_full_queues_drop() {
        let metrics = Metrics::new(10);
        let rx = metrics.subscribe_rows();
        let id = metrics.record_request(record("a", 200, 1));
        let event = rx.try_recv().expect("a row was pushed");
        assert_eq!(event["id"], id);
        assert_eq!(event["model"], "a");
        assert_eq!(event, metrics.rows_json()[0]);
        for _ in 0..SUBSCRIBER_DEPTH + 10 {
            metrics.record_request(record("a", 200, 1));
        }
        assert_eq!(rx.len(), SUBSCRIBER_DEPTH);
        drop(rx);
        metrics.record_request(record("a", 200, 1));
        assert!(!metrics.has_subscribers.load(Ordering::Relaxed));
    }

    fn scan(is_event_stream: bool, body: &[u8]) -> TokenUsage {
        let mut scanner = UsageScanner::new(is_event_stream);
        scanner.feed(body);
        scanner.finish()
    }

    fn scan_pieces(is_event_stream: bool, pieces: &[&[u8]]) -> TokenUsage {
        let mut scanner = UsageScanner::new(is_event_stream);
        for piece in pieces {
            scanner.feed(piece);
        }
        scanner.finish()
    }

    #[test]
    fn vllm_metrics_and_llama_cpp_drafts() {
        // vLLM: prompt t/s = (input - cached) / time to first token; t/s = 1000 / mean ITL;
        // drafts only when both speculative-decoding counts are present.
        let body = br#"{"usage":{"prompt_tokens":120,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":20}},"metrics":{"time_to_first_token_ms":50.0,"mean_itl_ms":20.0,"speculative_decoding":{"num_draft_tokens":8,"num_accepted_draft_tokens":5}}}"#;
        let usage = scan(false, body);
        assert_eq!(usage.prompt_per_second, Some(2000.0));
        assert_eq!(usage.tokens_per_second, Some(50.0));
        assert_eq!((usage.draft, usage.draft_accepted), (Some(8), Some(5)));
        let stream = b"data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_tokens\":10},\"metrics\":{\"mean_itl_ms\":4.0,\"speculative_decoding\":{\"num_draft_tokens\":3}}}\n\n";
        let usage = scan(true, stream);
        assert_eq!(usage.tokens_per_second, Some(250.0));
        assert_eq!(usage.prompt_per_second, None);
        assert_eq!((usage.draft, usage.draft_accepted), (None, None));
        // llama.cpp: draft_n / draft_n_accepted from timings.
        let body = br#"{"timings":{"prompt_n":5,"predicted_n":9,"predicted_per_second":30.0,"draft_n":6,"draft_n_accepted":4}}"#;
        let usage = scan(false, body);
        assert_eq!((usage.draft, usage.draft_accepted), (Some(6), Some(4)));
        assert_eq!(usage.upstream_millis, None);
        let body = br#"{"timings":{"prompt_ms":12.5,"predicted_ms":30.0}}"#;
        assert_eq!(scan(false, body).upstream_millis, Some(42.5));
        assert_eq!((usage.input, usage.output), (Some(5), Some(9)));
    }

    #[test]
    fn openai_json_body_with_cached_tokens() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"usage\": {\"prompt_tokens\": 999}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":7,"total_tokens":49,"prompt_tokens_details":{"cached_tokens":30,"audio_tokens":0}}}"#;
        let expected = TokenUsage {
            input: Some(42),
            output: Some(7),
            cached: Some(30),
            ..TokenUsage::default()
        };
        assert_eq!(scan(false, body), expected);
        // Fed byte by byte, the result is the same.
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan_pieces(false, &pieces), expected);
    }

    const OPENAI_STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n",
        ": keep-alive comment\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34,\"total_tokens\":46,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn streamed_usage_survives_any_split() {
        let expected = TokenUsage {
            input: Some(12),
            output: Some(34),
            cached: Some(8),
            ..TokenUsage::default()
        };
        let body = OPENAI_STREAM.as_bytes();
        assert_eq!(scan(true, body), expected);
        for split in 0..=body.len() {
            assert_eq!(
                scan_pieces(true, &[&body[..split], &body[split..]]),
                expected,
                "split at {split}"
            );
        }
        for first in (0..body.len()).step_by(7) {
            for second in (first..=body.len()).step_by(13) {
                let pieces = [&body[..first], &body[first..second], &body[second..]];
                assert_eq!(
                    scan_pieces(true, &pieces),
                    expected,
                    "splits at {first}, {second}"
                );
            }
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan_pieces(true, &bytes), expected);
        // CRLF line endings and a missing final line feed are handled too.
        let crlf = OPENAI_STREAM
            .replace("data: [DONE]\n\n", "")
            .replace('\n', "\r\n");
        assert_eq!(scan(true, crlf.trim_end().as_bytes()), expected);
    }

    #[test]
    fn llama_cpp_timings_override_usage() {
        let body = br#"{"choices":[{"message":{"content":"x"}}],"timings":{"cache_n":5,"prompt_n":20,"prompt_ms":40.0,"prompt_per_second":500.25,"predicted_n":16,"predicted_ms":200.0,"predicted_per_second":80.5},"usage":{"completion_tokens":15,"prompt_tokens":25,"total_tokens":40}}"#;
        let expected = TokenUsage {
            input: Some(20),
            output: Some(16),
            cached: Some(5),
            prompt_per_second: Some(500.25),
            tokens_per_second: Some(80.5),
            ..TokenUsage::default()
        };
        // The body's timings also give llama.cpp's own time (prompt_ms + predicted_ms).
        let with_time = TokenUsage {
            upstream_millis: Some(240.0),
            ..expected
        };
        assert_eq!(scan(false, body), with_time);

        // The same in a stream whose earlier chunks carry partial timings: the last one wins.
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"timings\":{\"prompt_n\":20,\"predicted_n\":1,\"predicted_per_second\":10.0}}\n\n",
            "data: {\"choices\":[],\"usage\":{\"completion_tokens\":15,\"prompt_tokens\":25},\"timings\":{\"cache_n\":5,\"prompt_n\":20,\"prompt_per_second\":500.25,\"predicted_n\":16,\"predicted_per_second\":80.5}}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(scan(true, stream.as_bytes()), expected);

        // Without the rates, they are derived from the counts and milliseconds.
        let derived = scan(
            false,
            br#"{"timings":{"prompt_n":20,"prompt_ms":40.0,"predicted_n":16,"predicted_ms":200.0}}"#,
        );
        assert_eq!(derived.prompt_per_second, Some(500.0));
        assert_eq!(derived.tokens_per_second, Some(80.0));
        assert_eq!(derived.cached, None);

        // llama.cpp /infill answers with an array: the last element's timings count.
        let infill = br#"[{"content":"a","timings":{"prompt_n":1,"predicted_n":2}},{"content":"b","timings":{"prompt_n":3,"predicted_n":4}}]"#;
        let usage = scan(false, infill);
        assert_eq!((usage.input, usage.output), (Some(3), Some(4)));
    }

    #[test]
    fn anthropic_stream() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":11,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let expected = TokenUsage {
            input: Some(25),
            output: Some(15),
            cached: Some(11),
            ..TokenUsage::default()
        };
        assert_eq!(scan(true, stream.as_bytes()), expected);
        // A later zero does not erase an earlier non-zero value.
        let zero = "data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":0,\"output_tokens\":16}}\n";
        assert_eq!(
            scan(true, format!("{stream}{zero}").as_bytes()),
            TokenUsage {
                output: Some(16),
                ..expected
            }
        );
        // The non-streamed Anthropic body.
        let body = br#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"Hi"}],"usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":2}}"#;
        assert_eq!(
            scan(false, body),
            TokenUsage {
                input: Some(3),
                output: Some(4),
                cached: Some(2),
                ..TokenUsage::default()
            }
        );
    }

    #[test]
    fn openai_responses_usage() {
        let expected = TokenUsage {
            input: Some(36),
            output: Some(87),
            cached: Some(12),
            ..TokenUsage::default()
        };
        let body = br#"{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"ok"}]}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":12},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#;
        assert_eq!(scan(false, body), expected);
        let stream = concat!(
            "event: response.created\n",
            "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
            "event: response.output_text.delta\n",
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"ok\"}\n\n",
            "event: response.completed\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":12},\"output_tokens\":87,\"total_tokens\":123}}}\n\n",
        );
        assert_eq!(scan(true, stream.as_bytes()), expected);
    }

    #[test]
    fn no_usage_means_all_none() {
        assert_eq!(
            scan(false, br#"{"data":[{"embedding":[0.1,0.2]}]}"#),
            TokenUsage::default()
        );
        assert_eq!(scan(false, b""), TokenUsage::default());
        assert_eq!(scan(false, b"not json at all"), TokenUsage::default());
        assert_eq!(
            scan(
                true,
                b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n"
            ),
            TokenUsage::default()
        );
        assert_eq!(scan(true, b""), TokenUsage::default());
        // Values of unexpected types are ignored, not fatal.
        assert_eq!(
            scan(false, br#"{"usage":{"prompt_tokens":"many","completion_tokens":[1],"prompt_tokens_details":null}}"#),
            TokenUsage::default()
        );
        assert_eq!(
            scan(
                false,
                br#"{"usage":{"prompt_tokens":-1,"completion_tokens":3.0},"timings":null}"#
            ),
            TokenUsage {
                output: Some(3),
                ..TokenUsage::default()
            }
        );
    }

    #[test]
    fn done_and_invalid_json_lines_are_ignored() {
        let stream = concat!(
            "data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n",
            "data: {\"usage\":{\"prompt_tokens\":100, broken\n",
            "data: {\"usage\":{\"prompt_tokens\":100}} trailing\n",
            "data: [DONE]\n",
            "data:[DONE]\n",
            "event: usage\n",
            "data: \"usage\"\n",
        );
        assert_eq!(
            scan(true, stream.as_bytes()),
            TokenUsage {
                input: Some(5),
                output: Some(6),
                ..TokenUsage::default()
            }
        );
    }

    #[test]
    fn five_megabyte_stream_stays_bounded() {
        let chunk = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"some generated text here\"}}],\"usage\":null}\n\n";
        let mut body = String::with_capacity(5 * 1024 * 1024 + 4096);
        while body.len() < 5 * 1024 * 1024 {
            body.push_str(chunk);
        }
        // One overlong line in the middle is skipped without growing the carry.
        body.push_str("data: {\"choices\":[{\"delta\":{\"content\":\"");
        body.push_str(&"x".repeat(200 * 1024));
        body.push_str("\"}}]}\n\n");
        body.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":99999}}\n\ndata: [DONE]\n\n");
        let mut scanner = UsageScanner::new(true);
        for piece in body.as_bytes().chunks(1024) {
            scanner.feed(piece);
            assert!(
                scanner.retained_bytes() <= 64 * 1024,
                "{}",
                scanner.retained_bytes()
            );
        }
        let usage = scanner.finish();
        assert_eq!((usage.input, usage.output), (Some(9), Some(99999)));
    }

    #[test]
    fn five_megabyte_json_body_stays_bounded() {
        let mut body = String::from(r#"{"choices":[{"message":{"content":""#);
        // Generated text that mentions usage in escaped form and contains braces.
        let filler = r#"text with \"usage\": {\"prompt_tokens\": 1} and } braces { "#;
        while body.len() < 5 * 1024 * 1024 {
            body.push_str(filler);
        }
        body.push_str(r#""}}],"usage":{"prompt_tokens":321,"completion_tokens":654,"prompt_tokens_details":{"cached_tokens":7}}}"#);
        let mut scanner = UsageScanner::new(false);
        for piece in body.as_bytes().chunks(1024) {
            scanner.feed(piece);
            assert!(scanner.retained_bytes() <= 64 * 1024);
        }
        assert_eq!(
            scanner.finish(),
            TokenUsage {
                input: Some(321),
                output: Some(654),
                cached: Some(7),
                ..TokenUsage::default()
            }
        );
        // A single huge feed is bounded as well.
        let mut scanner = UsageScanner::new(false);
        scanner.feed(body.as_bytes());
        assert!(scanner.retained_bytes() <= JSON_TAIL_BYTES);
        assert_eq!(scanner.finish().input, Some(321));
    }

    #[test]
    fn overlong_responses_event_still_yields_usage() {
        let text = "y".repeat(300 * 1024);
        let line = format!(
            "data: {{\"type\":\"response.completed\",\"response\":{{\"output\":[{{\"content\":[{{\"text\":\"{text}\"}}]}}],\"tools\":[{{\"parameters\":{{\"usage\":{{\"type\":\"string\"}}}}}}],\"usage\":{{\"input_tokens\":11,\"output_tokens\":22}},\"user\":null}}}}\n\n"
        );
        let expected = TokenUsage {
            input: Some(11),
            output: Some(22),
            ..TokenUsage::default()
        };
        // Carried across many chunks.
        let mut scanner = UsageScanner::new(true);
        for piece in line.as_bytes().chunks(1000) {
            scanner.feed(piece);
            assert!(scanner.retained_bytes() <= MAX_LINE_BYTES);
        }
        assert_eq!(scanner.finish(), expected);
        // Complete within one chunk.
        assert_eq!(scan(true, line.as_bytes()), expected);
        // An overlong line that is not a data line is skipped.
        let other = format!("event: {text}\n\n");
        assert_eq!(scan(true, other.as_bytes()), TokenUsage::default());
    }

    #[test]
    fn brace_matching_handles_strings() {
        let window = br#"xx"usage": {"a": "}\"{", "b": [1, {"c": "\\"}], "prompt_tokens": 4} tail"#;
        let open = window
            .iter()
            .position(|&b| b == b'{')
            .expect("an open brace");
        let close = matching_brace(window, open).expect("a match");
        assert!(window[..close].ends_with(br#""prompt_tokens": 4}"#));
        assert_eq!(matching_brace(br#"{"a": "}"#, 0), None);
        assert!(is_escaped(br#"a\"usage"#, 2));
        assert!(!is_escaped(br#"a\\"usage"#, 3));
        // A window that starts inside a string still finds the real key.
        let mut found = Found::default();
        search_objects(
            &mut found,
            br#"ge\": {\"prompt_tokens\": 1}, more", "usage": {"prompt_tokens": 4, "note": "{\"x\"}"}}"#,
        );
        assert_eq!(found.input, Some(4));
    }

    #[test]
    fn sse_hot_path_keeps_its_allocation() {
        let mut scanner = UsageScanner::new(true);
        let line = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n";
        for _ in 0..100 {
            scanner.feed(&line[..20]);
            scanner.feed(&line[20..]);
        }
        let capacity = scanner.retained_bytes();
        assert!(capacity > 0 && capacity <= 256);
        for _ in 0..1000 {
            scanner.feed(&line[..20]);
            scanner.feed(&line[20..]);
        }
        assert_eq!(scanner.retained_bytes(), capacity);
        assert!(!mentions_usage_or_timings(&line[6..]));
        assert!(mentions_usage_or_timings(b"{\"a\":1,\"usage\":null}"));
        assert!(mentions_usage_or_timings(b"{\"timings\":{}}"));
    }

    #[test]
    fn metrics_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Metrics>();
        fn assert_send<T: Send>() {}
        assert_send::<UsageScanner>();
    }
}
