//! Tests of the metrics store: exact counters, histograms and gauges validated against the
//! exposition format's grammar, the bounded recent-request rows and their live subscribers.

use std::collections::HashSet;

use super::prometheus::escape_label_value;
use super::*;
use crate::timefmt::{rfc3339_millis, unix_millis_now};

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
                    .filter(|family| types.get(*family).map(String::as_str) == Some("histogram"))
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
    assert!(timestamp >= rfc3339_millis(before).as_str());
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
    assert!(!metrics.subscribers.any());
}

#[test]
fn metrics_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Metrics>();
}
