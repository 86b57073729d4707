//! Metrics through the daemon: exact counter values and parsed token numbers after real
//! requests, and the exposition format.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// The value of one sample line, e.g. `swapd_requests_total{model="a",code="200"}`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line[series.len()..].trim().parse().ok())
}

/// Every sample line belongs to a family declared by TYPE; each family is declared once.
fn assert_exposition_parses(text: &str) {
    let mut families = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().expect("family name");
            assert!(
                families.insert(name.to_string()),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("sample has a name");
        let name = &line[..name_end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| families.contains(*f)))
            .unwrap_or(name);
        assert!(
            families.contains(family),
            "sample {name} has no TYPE: {line}"
        );
        let value = line.rsplit(' ').next().expect("value");
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN",
            "{line}"
        );
    }
}

#[test]
fn metrics_count_requests_tokens_starts_and_evictions() {
    let mut config = simple_config(&["a", "b"], "", "");
    config = config.replace(
        "--model b --pid-file {DIR}/b.pid\n",
        "--model b --pid-file {DIR}/b.pid\n    ttl: 1\n",
    );
    config.push_str(
        "  broken:\n    cmd: {FAKE} --port 1 --exit-immediately 9\n    proxy: http://127.0.0.1:1\n",
    );
    let daemon = Daemon::start(&config);
    // Two non-streamed and one streamed request to a.
    for _ in 0..2 {
        assert_eq!(
            post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
            200
        );
    }
    let streamed = post_json(
        &daemon.url("/v1/chat/completions"),
        &json!({"model": "a", "stream": true, "stream_chunks": 4, "stream_interval_ms": 5}),
    );
    assert_eq!(streamed.status, 200);
    // A failed start.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("broken")).status,
        503
    );
    // b swaps a out, then its TTL unloads it.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("b")).status,
        200
    );
    wait_for("b's ttl unload", Duration::from_secs(10), || {
        daemon.running_states().is_empty().then_some(())
    });

    let text = get(&daemon.url("/metrics")).body;
    assert_exposition_parses(&text);
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(value(r#"swapd_requests_total{model="a",code="200"}"#), 3.0);
    assert_eq!(value(r#"swapd_requests_total{model="b",code="200"}"#), 1.0);
    assert_eq!(
        value(r#"swapd_requests_total{model="broken",code="503"}"#),
        1.0
    );
    // fake-upstream reports llama.cpp timings (prompt_n 25, cache_n 3, predicted_n = tokens),
    // which override usage: 10 completion tokens per plain answer, 4 for the stream.
    assert_eq!(
        value(r#"swapd_tokens_total{model="a",kind="prompt"}"#),
        75.0
    );
    assert_eq!(
        value(r#"swapd_tokens_total{model="a",kind="completion"}"#),
        24.0
    );
    assert_eq!(value(r#"swapd_tokens_total{model="a",kind="cached"}"#), 9.0);
    assert_eq!(
        value(r#"swapd_model_starts_total{model="a",result="ok"}"#),
        1.0
    );
    assert_eq!(
        value(r#"swapd_model_starts_total{model="broken",result="failed"}"#),
        1.0
    );
    assert_eq!(value("swapd_swaps_total"), 1.0);
    assert_eq!(value(r#"swapd_evictions_total{reason="swap"}"#), 1.0);
    assert_eq!(value(r#"swapd_evictions_total{reason="ttl"}"#), 1.0);
    assert_eq!(
        value(r#"swapd_time_to_first_token_seconds_count{model="a"}"#),
        1.0
    );
    assert_eq!(
        value(r#"swapd_request_duration_seconds_count{model="a"}"#),
        3.0
    );
    assert_eq!(
        value(r#"swapd_model_state{model="a",state="stopped"}"#),
        1.0
    );
    assert!(value("swapd_process_resident_memory_bytes") > 0.0);

    let rows = get_json(&daemon.url("/api/metrics"));
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 5);
    let first = &rows[0];
    assert_eq!(first["model"], "a");
    assert_eq!(first["path"], "/v1/chat/completions");
    assert_eq!(first["status"], 200);
    assert_eq!(first["input_tokens"], 25);
    assert_eq!(first["output_tokens"], 10);
    assert_eq!(first["cached_tokens"], 3);
    assert!(
        first["tokens_per_second"].as_f64().is_some_and(|t| t > 0.0),
        "{first}"
    );
    assert_eq!(
        rows[2]["output_tokens"], 4,
        "the streamed final chunk's numbers"
    );
    assert_eq!(rows[3]["model"], "broken");
    assert_eq!(rows[3]["status"], 503);
    assert_eq!(rows[3]["output_tokens"], -1);
}

#[test]
fn events_stream_model_status_logs_and_activity() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    let mut stream = std::net::TcpStream::connect(&daemon.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::Write::write_all(&mut stream, b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let url = daemon.url("/v1/chat/completions");
    let client = std::thread::spawn(move || post_json(&url, &chat("a")).status);
    let mut seen = String::new();
    let mut buffer = [0u8; 8192];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && !(seen.contains("\"type\":\"activity\"") && seen.contains(r#"\"state\":\"ready\""#))
    {
        match std::io::Read::read(&mut stream, &mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
        }
    }
    assert_eq!(client.join().expect("client"), 200);
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(
        seen.contains("event:message\ndata:{\"type\":\"logData\""),
        "{seen}"
    );
    assert!(seen.contains("\"type\":\"modelStatus\""), "{seen}");
    assert!(seen.contains("\"type\":\"activity\""), "{seen}");
    assert!(seen.contains(r#"\"state\":\"ready\""#), "{seen}");
}
