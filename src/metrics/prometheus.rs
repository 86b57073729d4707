//! The Prometheus text exposition format (version 0.0.4) for `GET /metrics`: one function per
//! metric family, writing from a snapshot of the store taken under its lock, plus the escaping
//! and number spelling the format requires.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Display, Write as _};

use super::procfs::{resident_memory_bytes, thread_count};
use super::{Gauges, Histogram, ModelGauge, ModelStats, REQUEST_BUCKETS, START_BUCKETS};

/// The states that always appear in `swapd_model_state`.
const MODEL_STATES: [&str; 4] = ["stopped", "starting", "ready", "stopping"];

/// The label values of `swapd_tokens_total`, in the order of `ModelStats::tokens`.
const TOKEN_KINDS: [&str; 3] = ["prompt", "completion", "cached"];

/// The store's counters, copied under its lock so that formatting happens without it.
pub(super) struct Snapshot {
    pub(super) models: Vec<(String, ModelStats)>,
    pub(super) swaps: u64,
    pub(super) evictions: Vec<(Cow<'static, str>, u64)>,
    pub(super) peers: BTreeMap<String, String>,
    pub(super) matrix_decisions: u64,
}

/// The per-model views that several families share.
struct Models<'a> {
    /// Models with recorded counters, sorted by name.
    stats: &'a [(String, ModelStats)],
    /// Configured models with their live gauges, by name; these appear in the gauge families
    /// even before their first request.
    live: BTreeMap<&'a str, &'a ModelGauge>,
    /// Every model named by either of the above, sorted.
    known: BTreeSet<&'a str>,
    by_name: BTreeMap<&'a str, &'a ModelStats>,
    /// The counters of a model that has recorded nothing yet.
    empty: ModelStats,
}

impl<'a> Models<'a> {
    fn new(stats: &'a [(String, ModelStats)], gauges: &'a Gauges) -> Models<'a> {
        // The first entry wins if a model is listed twice.
        let mut live: BTreeMap<&str, &ModelGauge> = BTreeMap::new();
        for gauge in &gauges.models {
            live.entry(gauge.model.as_str()).or_insert(gauge);
        }
        let by_name: BTreeMap<&str, &ModelStats> = stats
            .iter()
            .map(|(name, stats)| (name.as_str(), stats))
            .collect();
        let known = live
            .keys()
            .copied()
            .chain(by_name.keys().copied())
            .collect();
        Models {
            stats,
            live,
            known,
            by_name,
            empty: ModelStats::new(),
        }
    }

    fn stats_of(&self, model: &str) -> &ModelStats {
        self.by_name.get(model).copied().unwrap_or(&self.empty)
    }
}

/// Renders every family, in a fixed order, then labels the series of peer models.
pub(super) fn render(mut snapshot: Snapshot, gauges: &Gauges) -> String {
    snapshot.models.sort_by(|a, b| a.0.cmp(&b.0));
    let models = Models::new(&snapshot.models, gauges);
    let mut out = String::with_capacity(4096 + 2048 * models.known.len());
    let w = &mut out;

    requests_total(w, &models);
    histogram_family(
        w,
        "swapd_request_duration_seconds",
        "Time from admitting a request to sending its last byte.",
        &models,
        |stats| &stats.duration,
        &REQUEST_BUCKETS,
    );
    live_gauge_family(
        w,
        "swapd_inflight",
        "Requests currently being served by a model.",
        &models,
        |gauge| gauge.inflight,
    );
    live_gauge_family(
        w,
        "swapd_queue_depth",
        "Requests waiting for a model to become available.",
        &models,
        |gauge| gauge.queued,
    );
    model_state(w, &models);
    model_starts_total(w, &models);
    histogram_family(
        w,
        "swapd_model_start_duration_seconds",
        "Time from spawning a model's process to its first successful health check.",
        &models,
        |stats| &stats.start_duration,
        &START_BUCKETS,
    );
    single(
        w,
        "swapd_swaps_total",
        "Times a model was stopped to make room for another.",
        "counter",
        snapshot.swaps,
    );
    single(
        w,
        "swapd_matrix_decisions_total",
        "Swap decisions made by the matrix router.",
        "counter",
        snapshot.matrix_decisions,
    );
    evictions_total(w, snapshot.evictions);
    child_exits_total(w, &models);
    tokens_total(w, &models);
    histogram_family(
        w,
        "swapd_time_to_first_token_seconds",
        "Time from admitting a streamed request to sending the first byte of its body.",
        &models,
        |stats| &stats.ttft,
        &REQUEST_BUCKETS,
    );
    single(
        w,
        "swapd_log_dropped_bytes_total",
        "Bytes of log data that slow log subscribers missed.",
        "counter",
        gauges.log_dropped_bytes,
    );
    process_gauges(w);
    single(
        w,
        "swapd_open_connections",
        "Client connections currently open.",
        "gauge",
        gauges.open_connections,
    );

    if snapshot.peers.is_empty() {
        out
    } else {
        add_peer_labels(&out, &snapshot.peers)
    }
}

/// `swapd_requests_total{model,code}`: only the codes a model has answered with.
fn requests_total(w: &mut String, models: &Models<'_>) {
    family(
        w,
        "swapd_requests_total",
        "Requests proxied to a model, by HTTP status code.",
        "counter",
    );
    for (model, stats) in models.stats {
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
}

/// A histogram family with the series of every model that has observed at least one value.
fn histogram_family<const N: usize>(
    w: &mut String,
    name: &str,
    help: &str,
    models: &Models<'_>,
    pick: impl Fn(&ModelStats) -> &Histogram<N>,
    bounds: &[f64; N],
) {
    family(w, name, help, "histogram");
    for (model, stats) in models.stats {
        let observed = pick(stats);
        if observed.count > 0 {
            histogram(w, name, model, observed, bounds);
        }
    }
}

/// A gauge family with one series per configured model, read from its live gauge.
fn live_gauge_family(
    w: &mut String,
    name: &str,
    help: &str,
    models: &Models<'_>,
    value: impl Fn(&ModelGauge) -> u64,
) {
    family(w, name, help, "gauge");
    for (model, gauge) in &models.live {
        sample(w, name, &[("model", model)], value(gauge));
    }
}

/// `swapd_model_state{model,state}`: every known state, 1 for the current one; a state outside
/// the known four gets a line of its own.
fn model_state(w: &mut String, models: &Models<'_>) {
    family(
        w,
        "swapd_model_state",
        "1 for the current state of a model, 0 for the other states.",
        "gauge",
    );
    for (model, gauge) in &models.live {
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
}

/// `swapd_model_starts_total{model,result}` for every known model, zeros included.
fn model_starts_total(w: &mut String, models: &Models<'_>) {
    family(
        w,
        "swapd_model_starts_total",
        "Model starts, by whether the model became healthy.",
        "counter",
    );
    for &model in &models.known {
        let stats = models.stats_of(model);
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
}

/// `swapd_evictions_total{reason}`, sorted by reason; the known reasons appear even at zero.
fn evictions_total(w: &mut String, mut evictions: Vec<(Cow<'static, str>, u64)>) {
    family(
        w,
        "swapd_evictions_total",
        "Models stopped, by reason.",
        "counter",
    );
    evictions.sort_by(|a, b| a.0.cmp(&b.0));
    for (reason, count) in &evictions {
        sample(w, "swapd_evictions_total", &[("reason", reason)], count);
    }
}

/// `swapd_child_exits_total{model}` for every known model, zeros included.
fn child_exits_total(w: &mut String, models: &Models<'_>) {
    family(
        w,
        "swapd_child_exits_total",
        "Exits of model processes, expected or not.",
        "counter",
    );
    for &model in &models.known {
        sample(
            w,
            "swapd_child_exits_total",
            &[("model", model)],
            models.stats_of(model).child_exits,
        );
    }
}

/// `swapd_tokens_total{model,kind}` for every known model and kind, zeros included.
fn tokens_total(w: &mut String, models: &Models<'_>) {
    family(
        w,
        "swapd_tokens_total",
        "Tokens reported by upstreams, by kind.",
        "counter",
    );
    for &model in &models.known {
        let stats = models.stats_of(model);
        for (kind, count) in TOKEN_KINDS.iter().zip(stats.tokens) {
            sample(
                w,
                "swapd_tokens_total",
                &[("model", model), ("kind", kind)],
                count,
            );
        }
    }
}

/// The resident-memory and thread gauges; a family without a sample where `/proc` is missing.
fn process_gauges(w: &mut String) {
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
}

/// A family with a single unlabelled sample.
fn single(w: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    family(w, name, help, kind);
    sample(w, name, &[], value);
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
pub(super) fn escape_label_value(out: &mut String, value: &str) {
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
