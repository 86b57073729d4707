//! The activity API (`/api/metrics/activity`, `/api/metrics/stats`), the in-flight events and
//! cancel endpoint, the activity store file, and the UI's files, against the real daemon.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

fn activity(daemon: &Daemon, query: &str) -> Value {
    let reply = get(&daemon.url(&format!("/api/metrics/activity{query}")));
    assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    reply.json()
}

fn ids(page: &Value) -> Vec<u64> {
    page["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|row| row["id"].as_u64().expect("id"))
        .collect()
}

/// Two models; `a` gets three requests (one streamed, one failing upstream), `b` one.
fn daemon_with_traffic() -> Daemon {
    let daemon = Daemon::start(&simple_config(
        &["a", "b"],
        "",
        "groups:\n  all:\n    swap: false\n    members: [a, b]",
    ));
    // A request's row is recorded once its response has gone out, so the client can already
    // send the next one: each request waits for its own row, which fixes the ids' order.
    let send = |body: &Value, status: u16, rows: usize| {
        assert_eq!(
            post_json(&daemon.url("/v1/chat/completions"), body).status,
            status
        );
        wait_for(
            "the request's activity row",
            Duration::from_secs(30),
            || (activity(&daemon, "")["total"] == rows).then_some(()),
        );
    };
    send(&chat("a"), 200, 1);
    let mut streamed = chat("a");
    streamed["stream"] = json!(true);
    streamed["stream_chunks"] = json!(3);
    send(&streamed, 200, 2);
    let mut failing = chat("a");
    failing["status"] = json!(500);
    send(&failing, 500, 3);
    send(&chat("b"), 200, 4);
    daemon
}

#[test]
fn activity_rows_have_llama_swaps_shape_and_derivations() {
    let daemon = daemon_with_traffic();
    let page = activity(&daemon, "");
    assert_eq!(page["page"], 1);
    assert_eq!(page["limit"], 25);
    assert_eq!(page["total"], 4);
    assert_eq!(page["total_pages"], 1);
    // Newest first by default.
    assert_eq!(ids(&page), [4, 3, 2, 1]);
    let rows = page["data"].as_array().expect("rows");

    let plain = &rows[3];
    assert_eq!(plain["model"], "a");
    assert_eq!(plain["req_path"], "/v1/chat/completions");
    assert_eq!(plain["resp_status_code"], 200);
    assert!(plain["resp_content_type"]
        .as_str()
        .expect("content type")
        .starts_with("application/json"));
    assert_eq!(plain["has_capture"], false);
    assert!(plain.get("error_msg").is_none(), "{plain}");
    // At least llama.cpp's own prompt_ms + predicted_ms (13 + 17 in fake-upstream's timings),
    // whatever the wall time.
    assert!(plain["duration_ms"].as_u64() >= Some(30), "{plain}");
    assert!(plain["timestamp"]
        .as_str()
        .expect("timestamp")
        .ends_with('Z'));
    // fake-upstream's llama.cpp timings override its usage: prompt_n 25, predicted_n 10,
    // cache_n 3, 1923 and 294.1 tokens per second; no drafts.
    let tokens = &plain["tokens"];
    assert_eq!(tokens["input_tokens"], 25);
    assert_eq!(tokens["output_tokens"], 10);
    assert_eq!(tokens["cache_tokens"], 3);
    assert_eq!(tokens["prompt_per_second"], 1923.0);
    assert_eq!(tokens["tokens_per_second"], 294.1);
    assert_eq!(tokens["draft_tokens"], -1);
    assert_eq!(tokens["draft_acc_tokens"], -1);

    let streamed = &rows[2];
    assert_eq!(streamed["resp_content_type"], "text/event-stream");
    assert_eq!(streamed["tokens"]["output_tokens"], 3);

    let failed = &rows[1];
    assert_eq!(failed["resp_status_code"], 500);
    assert_eq!(failed["error_msg"], "simulated error 500");
    assert_eq!(failed["tokens"]["input_tokens"], -1);

    assert_eq!(rows[0]["model"], "b");
}

#[test]
fn activity_parameters_filter_sort_and_page() {
    let daemon = daemon_with_traffic();
    assert_eq!(ids(&activity(&daemon, "?model=b")), [4]);
    assert_eq!(
        ids(&activity(&daemon, "?model=a&model=b&order=asc")),
        [1, 2, 3, 4]
    );
    assert_eq!(ids(&activity(&daemon, "?min_id=2&max_id=3")), [3, 2]);
    let page = activity(&daemon, "?limit=3&page=2");
    assert_eq!(ids(&page), [1]);
    assert_eq!(
        (page["limit"].as_u64(), page["total_pages"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(
        ids(&activity(&daemon, "?sort=resp_status_code&limit=1")),
        [3]
    );
    assert_eq!(
        ids(&activity(&daemon, "?sort=generated&order=asc&limit=1")),
        [3]
    );
    // Every sort key of llama-swap is accepted.
    for key in [
        "id",
        "time",
        "model",
        "req_path",
        "resp_status_code",
        "resp_content_type",
        "cached",
        "prompt",
        "generated",
        "drafted",
        "prompt_speed",
        "gen_speed",
        "duration",
    ] {
        assert_eq!(
            activity(&daemon, &format!("?sort={key}"))["total"],
            4,
            "{key}"
        );
    }
    // A window in the future selects nothing; one around now selects everything.
    assert_eq!(activity(&daemon, "?start=2999-01-01T00:00:00Z")["total"], 0);
    assert_eq!(
        activity(
            &daemon,
            "?start=2000-01-01T00:00:00Z&end=2999-01-01T00:00:00%2B02:00"
        )["total"],
        4
    );
}

#[test]
fn bad_activity_parameters_get_400_envelopes() {
    let daemon = daemon_with_traffic();
    for query in [
        "limit=0",
        "limit=1000",
        "page=0",
        "sort=nope",
        "order=sideways",
        "start=yesterday",
        "min_id=-1",
        "start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z",
    ] {
        let reply = get(&daemon.url(&format!("/api/metrics/activity?{query}")));
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        let body = reply.json();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{query}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

#[test]
fn stats_totals_and_histograms() {
    let daemon = daemon_with_traffic();
    let stats = get_json(&daemon.url("/api/metrics/stats"));
    assert_eq!(stats["total_requests"], 4);
    // Three successful rows with 25 prompt tokens each; outputs 10 + 3 + 10.
    assert_eq!(stats["total_input_tokens"], 75);
    assert_eq!(stats["total_output_tokens"], 23);
    assert_eq!(stats["total_cache_tokens"], 9);
    let histogram = &stats["gen_histogram"];
    assert_eq!(histogram["bins"].as_array().expect("bins").len(), 5);
    assert_eq!(histogram["bins"][0], 3);
    assert_eq!(histogram["p50"], 294.1);
    assert_eq!(histogram["min"], 294.1);
    assert_eq!(stats["prompt_histogram"]["p99"], 1923.0);

    let only_b = get_json(&daemon.url("/api/metrics/stats?model=b"));
    assert_eq!(only_b["total_requests"], 1);
    let none = get_json(&daemon.url("/api/metrics/stats?model=nobody"));
    assert_eq!(none["total_requests"], 0);
    assert_eq!(none["gen_histogram"], Value::Null);
    assert_eq!(none["prompt_histogram"], Value::Null);
    // The legacy array stays.
    assert_eq!(
        get_json(&daemon.url("/api/metrics"))
            .as_array()
            .map(Vec::len),
        Some(4)
    );
}

#[test]
fn activity_is_bounded_by_metrics_max_in_memory() {
    let daemon = Daemon::start(&simple_config(&["a"], "", "metricsMaxInMemory: 2"));
    for _ in 0..5 {
        assert_eq!(
            post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
            200
        );
    }
    let page = activity(&daemon, "");
    assert_eq!(page["total"], 2);
    assert_eq!(ids(&page), [5, 4]);
}

/// Reads from an `/api/events` stream until `done` holds for what arrived (or 30 s pass).
fn read_events_until(stream: &mut TcpStream, seen: &mut String, done: impl Fn(&str) -> bool) {
    let mut buffer = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(seen) {
        assert!(
            Instant::now() < deadline,
            "events never matched; got:\n{seen}"
        );
        match stream.read(&mut buffer) {
            Ok(0) => panic!("events stream ended; got:\n{seen}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("events read failed: {error}"),
        }
    }
}

/// The `data` JSON of every event of `kind` seen so far.
fn events_of(seen: &str, kind: &str) -> Vec<Value> {
    seen.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter(|frame| frame["type"] == kind)
        .filter_map(|frame| serde_json::from_str(frame["data"].as_str()?).ok())
        .collect()
}

#[test]
fn inflight_events_and_cancel_cut_a_slow_stream() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    let mut events = TcpStream::connect(&daemon.addr).expect("connect");
    events
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    events
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut seen = String::new();
    read_events_until(&mut events, &mut seen, |s| {
        s.contains("\"type\":\"inflight\"")
    });
    let snapshot = &events_of(&seen, "inflight")[0];
    assert_eq!(snapshot["operation"], "snapshot");
    assert_eq!(snapshot["requests"], json!([]));

    // A stream of 600 events 50 ms apart: half a minute unless cancelled.
    let mut slow = chat("a");
    slow["stream"] = json!(true);
    slow["stream_chunks"] = json!(600);
    slow["stream_interval_ms"] = json!(50);
    let mut client = TcpStream::connect(&daemon.addr).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let body = slow.to_string();
    write!(
        client,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret-token\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");

    read_events_until(&mut events, &mut seen, |s| {
        events_of(s, "inflight")
            .iter()
            .any(|e| e["operation"] == "upsert" && e["request"]["resp_bytes"].as_u64() > Some(0))
    });
    let upsert = events_of(&seen, "inflight")
        .into_iter()
        .find(|e| e["operation"] == "upsert")
        .expect("an upsert");
    let request = &upsert["request"];
    assert_eq!(request["model"], "a");
    assert_eq!(request["method"], "POST");
    assert_eq!(request["req_path"], "/v1/chat/completions");
    assert_eq!(request["remote_ip"], "127.0.0.1");
    assert_eq!(request["req_headers"]["Authorization"], "[REDACTED]");
    assert!(request["elapsed_ms"].is_u64());
    let id = request["id"].as_u64().expect("id");

    // Unknown ids are 404s with the envelope; the real one is cancelled.
    let missing = post_json(&daemon.url("/api/inflight/999999/cancel"), &json!({}));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error");
    assert_eq!(
        post_json(&daemon.url("/api/inflight/x/cancel"), &json!({})).status,
        404
    );
    let reply = post_json(
        &daemon.url(&format!("/api/inflight/{id}/cancel")),
        &json!({}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!({"msg": "ok"}));

    // The client's stream ends with an error event and a closed connection, without the
    // upstream's end (which would have taken 30 s).
    let received = read_to_close(&mut client);
    assert!(received.contains("cancelled by an operator"), "{received}");
    assert!(!received.contains("[DONE]"), "{received}");

    read_events_until(&mut events, &mut seen, |s| {
        events_of(s, "inflight")
            .iter()
            .any(|e| e["operation"] == "remove" && e["id"] == id)
    });
    // The activity row records the cancel and arrives as an event too.
    read_events_until(&mut events, &mut seen, |s| {
        events_of(s, "activity")
            .iter()
            .any(|row| row["resp_status_code"] == 499)
    });
    let row = &activity(&daemon, "")["data"][0];
    assert_eq!(row["resp_status_code"], 499);
    assert!(row["error_msg"]
        .as_str()
        .is_some_and(|m| m.contains("cancelled")));
    // The lease was released: the model serves the next request at once and stays ready.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    assert_eq!(
        daemon.running_states(),
        [("a".to_string(), "ready".to_string())]
    );
}

#[test]
fn cancel_while_waiting_for_a_model_start() {
    // The model reports "loading" for a minute: the request waits for it.
    let config = format!(
        "startPort: {}\nhealthCheckTimeout: 120\nmodels:\n  a:\n    cmd: {{FAKE}} --port ${{PORT}} --model a --startup-delay-ms 60000 --pid-file {{DIR}}/a.pid\n",
        free_port_range(1)
    );
    let daemon = Daemon::start(&config);
    let url = daemon.url("/v1/chat/completions");
    let waiting = std::thread::spawn(move || post_json(&url, &chat("a")));
    let id = wait_for("the waiting request", Duration::from_secs(30), || {
        only_inflight_id(&daemon)
    });
    let reply = post_json(
        &daemon.url(&format!("/api/inflight/{id}/cancel")),
        &json!({}),
    );
    assert_eq!(reply.status, 200);
    let answer = waiting.join().expect("client thread");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.body.contains("cancelled by an operator"),
        "{}",
        answer.body
    );
}

#[test]
fn activity_store_survives_a_restart_and_skips_a_torn_line() {
    let store_dir = TempDir::new("activity-store");
    let store = store_dir.path().join("activity.jsonl");
    let config = simple_config(&["a"], "", &format!("store:\n  path: {}", store.display()));
    let mut first = Daemon::start(&config);
    for _ in 0..2 {
        assert_eq!(
            post_json(&first.url("/v1/chat/completions"), &chat("a")).status,
            200
        );
    }
    assert_eq!(first.terminate(), Some(0));
    // A crash in the middle of a write leaves a partial last line.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&store)
        .expect("the store file exists");
    file.write_all(br#"{"id":3,"timestamp":"20"#)
        .expect("write");
    drop(file);

    let second = Daemon::start(&config);
    let page = activity(&second, "");
    assert_eq!(ids(&page), [2, 1]);
    assert_eq!(page["data"][0]["tokens"]["output_tokens"], 10);
    let logs = get(&second.url("/logs")).body;
    assert!(logs.contains("skipped 1 damaged line"), "{logs}");
    assert_eq!(
        post_json(&second.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    assert_eq!(ids(&activity(&second, "?limit=1")), [3]);
}

#[test]
fn ui_files_types_etag_gzip_and_redirects() {
    let daemon = Daemon::start(&simple_config(&["a"], "", "apiKeys: [k1]"));
    let page = get(&daemon.url("/ui/"));
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.body.contains("<script src=\"app.js\""),
        "{}",
        page.body
    );
    let etag = page.header("ETag").expect("an ETag").to_string();
    let again = get_with_headers(&daemon.url("/ui/"), &[("If-None-Match", &etag)]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    let script = get(&daemon.url("/ui/app.js"));
    assert_eq!(
        script.header("Content-Type"),
        Some("text/javascript; charset=utf-8")
    );
    let style = get(&daemon.url("/ui/app.css"));
    assert_eq!(
        style.header("Content-Type"),
        Some("text/css; charset=utf-8")
    );
    assert_ne!(style.header("ETag"), script.header("ETag"));
    assert_eq!(get(&daemon.url("/ui/missing.png")).status, 404);
    // Extension-less paths are the page (a bookmarked view).
    assert_eq!(get(&daemon.url("/ui/models")).body, page.body);

    // gzip when asked: raw bytes, so ureq does not decode them on the way.
    let raw = raw_exchange(
        &daemon.addr,
        b"GET /ui/app.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert!(raw.contains("Content-Encoding: gzip"), "{raw}");
    let length: usize = raw
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a length");
    assert!(
        length < script.body.len() / 2,
        "{length} vs {}",
        script.body.len()
    );

    // `/ui` goes to `/ui/` relatively; `/` sends browsers to the UI and API clients to the
    // model list, as before.
    let ui = raw_exchange(
        &daemon.addr,
        b"GET /ui HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert!(ui.contains("Location: ui/\r\n"), "{ui}");
    let browser = raw_exchange(
        &daemon.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html,*/*\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert!(browser.starts_with("HTTP/1.1 302"), "{browser}");
    assert!(browser.contains("Location: ui/\r\n"), "{browser}");
    let api = raw_exchange(
        &daemon.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nAuthorization: Bearer k1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert!(api.contains("Location: /v1/models"), "{api}");

    // The page needs no key, its API does; the page's own calls get no Basic challenge (no
    // browser login dialog), other clients do.
    let refused = get(&daemon.url("/api/metrics/activity"));
    assert_eq!(refused.status, 401);
    assert!(refused.header("WWW-Authenticate").is_some());
    let from_page = get_with_headers(
        &daemon.url("/api/metrics/activity"),
        &[("X-Requested-With", "swapd-ui")],
    );
    assert_eq!(from_page.status, 401);
    assert_eq!(from_page.header("WWW-Authenticate"), None);
    let with_key = get_with_headers(
        &daemon.url("/api/metrics/activity"),
        &[("Authorization", "Bearer k1")],
    );
    assert_eq!(with_key.status, 200);
    assert_eq!(
        post_json(&daemon.url("/api/inflight/1/cancel"), &json!({})).status,
        401
    );
}

#[test]
fn only_inference_posts_get_activity_rows() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    // A passthrough GET (the UI's Load button) starts the model but is not activity.
    assert_eq!(get(&daemon.url("/upstream/a/health")).status, 200);
    assert_eq!(get(&daemon.url("/props?model=a")).status, 200);
    assert_eq!(activity(&daemon, "")["total"], 0);
    // An inference POST through /upstream/ is, as in llama-swap.
    let reply = post_json(&daemon.url("/upstream/a/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200);
    let page = activity(&daemon, "");
    assert_eq!(page["total"], 1);
    assert_eq!(page["data"][0]["req_path"], "/v1/chat/completions");
}

/// The id of the only request in flight, read from a fresh `/api/events` snapshot.
fn only_inflight_id(daemon: &Daemon) -> Option<u64> {
    let mut events = TcpStream::connect(&daemon.addr).ok()?;
    events.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    events
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut seen = String::new();
    read_events_until(&mut events, &mut seen, |s| {
        s.contains("\"type\":\"inflight\"")
    });
    let snapshot = events_of(&seen, "inflight").into_iter().next()?;
    snapshot["requests"][0]["id"].as_u64()
}

#[test]
fn cancel_while_the_upstream_has_not_answered() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    // fake-upstream reads the request and never answers it.
    let url = daemon.url("/v1/chat/completions");
    let mut hang = chat("a");
    hang["hang"] = json!(true);
    let waiting = std::thread::spawn(move || post_json(&url, &hang));
    let id = wait_for("the hanging request", Duration::from_secs(30), || {
        only_inflight_id(&daemon)
    });
    let reply = post_json(
        &daemon.url(&format!("/api/inflight/{id}/cancel")),
        &json!({}),
    );
    assert_eq!(reply.status, 200);
    let answer = waiting.join().expect("client thread");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.body.contains("cancelled by an operator"),
        "{}",
        answer.body
    );
    assert_eq!(activity(&daemon, "")["data"][0]["resp_status_code"], 499);
    // The model's slot is free again.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
}

#[test]
fn ollama_requests_get_activity_rows() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    let reply = post_json(
        &daemon.url("/api/chat"),
        &json!({"model": "a", "stream": false, "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let page = activity(&daemon, "");
    assert_eq!(page["total"], 1, "{page}");
    let row = &page["data"][0];
    assert_eq!(row["req_path"], "/api/chat");
    assert_eq!(row["model"], "a");
    assert_eq!(row["resp_status_code"], 200);
    assert_eq!(row["tokens"]["output_tokens"], 10);
}

#[test]
fn ollama_requests_are_in_flight_and_can_be_cancelled() {
    // The upstream holds its last event until a gate file appears (it never does here), so
    // without the cancel the stream would hang until the client's 20 s read timeout.
    let config = simple_config(
        &["a"],
        "    filters:\n      setParams:\n        stream_chunks: 3\n        gate_file: \"{DIR}/gate\"\n",
        "",
    );
    let daemon = Daemon::start(&config);
    let mut client = open_stream(
        &daemon.addr,
        "/api/chat",
        &json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]}),
    );
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let id = wait_for(
        "the Ollama request in flight",
        Duration::from_secs(30),
        || only_inflight_id(&daemon),
    );
    let reply = post_json(
        &daemon.url(&format!("/api/inflight/{id}/cancel")),
        &json!({}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let received = read_to_close(&mut client);
    assert!(received.contains("cancelled by an operator"), "{received}");
    assert!(!received.contains("\"done\":true"), "{received}");
    wait_for("the in-flight entry to go", Duration::from_secs(30), || {
        only_inflight_id(&daemon).is_none().then_some(())
    });
    let row = &activity(&daemon, "")["data"][0];
    assert_eq!(row["req_path"], "/api/chat");
    assert_eq!(row["resp_status_code"], 499);
    // The lease was released: the model answers the next request.
    let reply = post_json(
        &daemon.url("/api/chat"),
        &json!({"model": "a", "stream": false, "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// A fake-upstream run directly (a peer host), killed by pid on drop.
struct PeerHost(std::process::Child);

impl Drop for PeerHost {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn peer_requests_get_activity_rows() {
    let port = free_port_range(1);
    let _peer = PeerHost(
        std::process::Command::new(FAKE)
            .args(["--port", &port.to_string(), "--model", "m"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start fake-upstream"),
    );
    let mut config = simple_config(&["local"], "", "");
    config.push_str(&format!(
        "peers:\n  p:\n    proxy: http://127.0.0.1:{port}\n    models: [m]\n"
    ));
    // The peer host is up once it accepts connections; then one request, which must succeed.
    wait_for("the peer host to listen", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    let daemon = Daemon::start(&config);
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("p/m"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("hello from m"), "{}", reply.body);
    let page = activity(&daemon, "?model=p/m");
    assert_eq!(page["total"], 1, "{page}");
    let row = &page["data"][0];
    assert_eq!(row["resp_status_code"], 200);
    assert_eq!(row["tokens"]["output_tokens"], 10);
}
