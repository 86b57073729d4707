//! Behaviours the README promises that no other file tested: shutdown with requests in
//! flight, `maxConnections`, what a reload restarts or applies live, watched configs replaced
//! by rename or symlink swap, `logToStdout`, `globalTTL` and unloading everything. Each is
//! checked by its observable effect (pids, statuses, ordering, log lines), never by timing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

/// Reads a response on `stream` until its terminating chunk, EOF or `timeout` (a hang guard).
fn read_all(stream: &mut TcpStream, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut all = Vec::new();
    let mut buffer = [0u8; 8192];
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    while Instant::now() < deadline && !all.ends_with(b"0\r\n\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Reads one response with a Content-Length body from `stream` (bounded by a hang guard).
fn read_one_response(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    read_until(stream, &mut seen, "\r\n\r\n");
    let text = String::from_utf8_lossy(&seen).into_owned();
    let (head, _) = text.split_once("\r\n\r\n").expect("a head");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buffer = [0u8; 8192];
    while seen.len() < head.len() + 4 + length {
        assert!(Instant::now() < deadline, "body never completed: {text}");
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads until `needle` has arrived on `stream` (bounded by a hang guard).
fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buffer = [0u8; 8192];
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} never arrived: {}",
            String::from_utf8_lossy(seen)
        );
        match stream.read(&mut buffer) {
            Ok(0) => panic!(
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(seen)
            ),
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
    }
}

/// Replaces the daemon's config file the way an editor does: write a new file, rename it over.
fn replace_config(daemon: &Daemon, text: &str) {
    let text = text
        .replace("{FAKE}", FAKE)
        .replace("{DIR}", daemon.dir.path().to_str().expect("utf-8"));
    let temporary = daemon.dir.path().join("config.yaml.tmp");
    std::fs::write(&temporary, text).expect("write config");
    std::fs::rename(&temporary, daemon.dir.path().join("config.yaml")).expect("rename config");
}

fn reload(daemon: &Daemon) -> serde_json::Value {
    let reply = post_raw(&daemon.url("/api/config/reload"), "application/json", b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn chat_pid(daemon: &Daemon, model: &str) -> u32 {
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat(model));
    assert_eq!(reply.status, 200, "{model}: {}", reply.body);
    reply.json()["pid"].as_u64().expect("pid") as u32
}

// ---------------------------------------------------------------------------------------------
// Shutdown and connection limits
// ---------------------------------------------------------------------------------------------

/// SIGTERM with a stream in flight: the stream finishes whole, a new request (on a connection
/// that was already open, since new connections are no longer accepted) gets 503 with the
/// error envelope, and swapd exits 0 only after the stream ended.
#[test]
fn sigterm_lets_a_stream_in_flight_finish_and_refuses_new_requests() {
    // stdout is collected: it carries swapd's log, which says when the signal was taken.
    let mut daemon = Daemon::start_capturing_stdout(&simple_config(
        &["a"],
        "",
        "swapd:\n  shutdownTimeout: 120\n",
    ));
    chat_pid(&daemon, "a");
    // A kept-alive connection, used once before the signal.
    let mut kept = TcpStream::connect(&daemon.addr).expect("connect");
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut seen = Vec::new();
    read_until(&mut kept, &mut seen, "\r\n\r\nOK");
    // A stream whose upstream holds its last event until the gate file exists: in flight
    // through the steps below, however loaded the machine.
    let gate = daemon.dir.path().join("gate");
    let mut stream = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "a", "stream": true, "stream_chunks": 60, "stream_interval_ms": 1,
                "gate_file": gate.to_str().expect("utf-8")}),
    );
    let mut streamed = Vec::new();
    read_until(&mut stream, &mut streamed, "tok1");
    kill(daemon.pid(), libc::SIGTERM);
    // swapd has taken the signal once its log says so.
    wait_for(
        "swapd to begin shutting down",
        Duration::from_secs(60),
        || get_log_line(&daemon, "shutting down"),
    );
    // A new request gets 503. (That it is answered at all shows the stream is still in
    // flight: with nothing in flight swapd would have exited and closed this connection.)
    let body = chat("a").to_string();
    write!(
        kept,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write on the kept-alive connection");
    // Read by its Content-Length: swapd keeps the connection until it exits.
    let refused = read_one_response(&mut kept);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let envelope: serde_json::Value = serde_json::from_str(
        refused
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .unwrap_or(""),
    )
    .unwrap_or_else(|e| panic!("no JSON envelope ({e}): {refused}"));
    assert!(
        envelope["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("shutting down")),
        "{envelope}"
    );
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "swapd exited with a stream in flight"
    );
    // The stream finishes whole, then swapd exits 0.
    std::fs::write(&gate, b"open").expect("open the gate");
    let rest = read_all(&mut stream, Duration::from_secs(120));
    let all = String::from_utf8_lossy(&streamed).into_owned() + &rest;
    assert!(all.contains("tok59"), "the stream was cut: {all}");
    assert!(all.contains("[DONE]"), "the stream was cut: {all}");
    assert!(
        all.ends_with("0\r\n\r\n"),
        "the stream did not end cleanly: {all}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// Whether swapd's log has a line containing `needle` yet. During a shutdown the HTTP server no
/// longer accepts connections, so the log is read where it also goes: stdout.
fn get_log_line(daemon: &Daemon, needle: &str) -> Option<()> {
    daemon
        .stdout
        .lock()
        .expect("stdout lock")
        .contains(needle)
        .then_some(())
}

/// Requests over `maxConnections` get 503 with the JSON envelope and Retry-After, and are
/// served again once the others are done.
#[test]
fn requests_over_max_connections_get_503_with_the_error_envelope() {
    let daemon = Daemon::start(&simple_config(&["a"], "", "swapd:\n  maxConnections: 2\n"));
    chat_pid(&daemon, "a");
    // Two streams in flight hold both places (their upstream holds the last event until the
    // gate file exists, so they are in flight when the third request comes, whatever the load).
    let gate = daemon.dir.path().join("gate");
    let mut streams: Vec<(TcpStream, Vec<u8>)> = (0..2)
        .map(|_| {
            let mut stream = open_stream(
                &daemon.addr,
                "/v1/chat/completions",
                &json!({"model": "a", "stream": true, "stream_chunks": 2,
                        "gate_file": gate.to_str().expect("utf-8")}),
            );
            let mut seen = Vec::new();
            read_until(&mut stream, &mut seen, "tok0");
            (stream, seen)
        })
        .collect();
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(
        reply
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        reply.headers
    );
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("limit of 2"), "{message}");
    // Both streams go on to their end.
    std::fs::write(&gate, b"open").expect("open the gate");
    for (stream, _) in streams.iter_mut() {
        let rest = read_all(stream, Duration::from_secs(60));
        assert!(
            rest.contains("[DONE]"),
            "a stream in flight was cut: {rest}"
        );
    }
    drop(streams);
    // The streams' handlers return an instant after their last byte; until then a request
    // may still find both places taken. Waited for with a request that changes nothing
    // (`/health` would not do: it is answered before the limit is checked); then a chat
    // request is served.
    wait_for("a place to free up", Duration::from_secs(60), || {
        (get(&daemon.url("/v1/models")).status == 200).then_some(())
    });
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

// ---------------------------------------------------------------------------------------------
// What a reload restarts, and what it applies live
// ---------------------------------------------------------------------------------------------

/// Models a and b at fixed ports; `a_extra` is added to a's settings only.
fn two_models(port: u16, a_extra: &str, top: &str) -> String {
    format!(
        "{top}models:\n  a:\n    cmd: {{FAKE}} --port {port} --model a --pid-file {{DIR}}/a.pid\n    proxy: http://127.0.0.1:{port}\n{a_extra}  b:\n    cmd: {{FAKE}} --port {} --model b --pid-file {{DIR}}/b.pid\n    proxy: http://127.0.0.1:{}\ngroups:\n  both:\n    swap: false\n    members: [a, b]\n",
        port + 1,
        port + 1
    )
}

/// Runs a and b, replaces a's settings by `changed` (its cmd untouched), reloads, and checks
/// that a (only) restarts: the reload says so, the old process goes, the next request is
/// served by a new pid, and b keeps its pid.
fn assert_reload_restarts_a(before: &str, changed: &str) {
    let port = free_port_range(2);
    let daemon = Daemon::start(&two_models(port, before, ""));
    let (old_a, old_b) = (chat_pid(&daemon, "a"), chat_pid(&daemon, "b"));
    replace_config(&daemon, &two_models(port, changed, ""));
    let summary = reload(&daemon);
    assert_eq!(summary["restarting"], json!(["a"]), "{summary}");
    wait_for("a's old process to stop", Duration::from_secs(60), || {
        (!pid_alive(old_a)).then_some(())
    });
    let new_a = chat_pid(&daemon, "a");
    assert_ne!(new_a, old_a, "a was not restarted");
    assert_eq!(chat_pid(&daemon, "b"), old_b, "b's settings did not change");
}

#[test]
fn reload_restarts_a_model_whose_env_changed() {
    assert_reload_restarts_a(
        "    env: [\"SWAPD_TEST_FLAVOUR=one\"]\n",
        "    env: [\"SWAPD_TEST_FLAVOUR=two\"]\n",
    );
}

#[test]
fn reload_restarts_a_model_whose_proxy_changed() {
    // The same upstream reached by another name: only the `proxy` text differs.
    let port = free_port_range(2);
    let daemon = Daemon::start(&two_models(port, "", ""));
    let (old_a, old_b) = (chat_pid(&daemon, "a"), chat_pid(&daemon, "b"));
    let changed = two_models(port, "", "").replacen(
        &format!("proxy: http://127.0.0.1:{port}\n"),
        &format!("proxy: http://localhost:{port}\n"),
        1,
    );
    assert!(changed.contains("localhost"));
    replace_config(&daemon, &changed);
    let summary = reload(&daemon);
    assert_eq!(summary["restarting"], json!(["a"]), "{summary}");
    wait_for("a's old process to stop", Duration::from_secs(60), || {
        (!pid_alive(old_a)).then_some(())
    });
    assert_ne!(chat_pid(&daemon, "a"), old_a, "a was not restarted");
    assert_eq!(chat_pid(&daemon, "b"), old_b, "b's settings did not change");
    let running = daemon.running();
    let entry = running["running"]
        .as_array()
        .expect("running")
        .iter()
        .find(|e| e["model"] == "a")
        .expect("a runs")
        .clone();
    assert_eq!(entry["proxy"], format!("http://localhost:{port}"));
}

#[test]
fn reload_restarts_a_model_whose_check_endpoint_changed() {
    assert_reload_restarts_a("", "    checkEndpoint: /v1/models\n");
}

/// A reload that changes only per-request settings keeps the process: the control for the
/// three tests above (the same harness, nothing that affects the start changed).
#[test]
fn reload_keeps_a_model_whose_start_settings_did_not_change() {
    let port = free_port_range(2);
    let daemon = Daemon::start(&two_models(port, "", ""));
    let old_a = chat_pid(&daemon, "a");
    replace_config(
        &daemon,
        &two_models(port, "    aliases: [alpha]\n    ttl: 300\n", ""),
    );
    let summary = reload(&daemon);
    assert_eq!(summary["restarting"], json!([]), "{summary}");
    assert_eq!(summary["updated"], json!(["a"]), "{summary}");
    assert_eq!(chat_pid(&daemon, "alpha"), old_a);
}

/// Groups from a reload apply to the running processes at once: a and b swap each other out
/// before; after a reload that puts them in one `swap: false` group they run side by side,
/// without either being restarted by the reload itself.
#[test]
fn reload_applies_groups_live() {
    let port = free_port_range(2);
    let swapping = two_models(port, "", "").replace(
        "groups:\n  both:\n    swap: false\n    members: [a, b]\n",
        "",
    );
    let daemon = Daemon::start(&swapping);
    let old_a = chat_pid(&daemon, "a");
    let b = chat_pid(&daemon, "b");
    wait_for("a swapped out by b", Duration::from_secs(60), || {
        (!pid_alive(old_a)).then_some(())
    });
    replace_config(&daemon, &two_models(port, "", ""));
    let summary = reload(&daemon);
    assert_eq!(summary["restarting"], json!([]), "{summary}");
    let a = chat_pid(&daemon, "a");
    assert!(
        pid_alive(b),
        "b was swapped out although the group says swap: false"
    );
    assert_eq!(chat_pid(&daemon, "b"), b);
    assert_eq!(daemon.pid_of("a"), Some(a));
}

/// Filters from a reload apply to the next request, on the same process.
#[test]
fn reload_applies_filters_live() {
    let port = free_port_range(2);
    let daemon = Daemon::start(&two_models(port, "", ""));
    let body = json!({"model": "a", "temperature": 0.5, "messages": []});
    let before = post_json(&daemon.url("/v1/chat/completions"), &body);
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(before.json()["request_body"]["temperature"], 0.5);
    let pid = before.json()["pid"].as_u64();
    replace_config(
        &daemon,
        &two_models(
            port,
            "    filters:\n      stripParams: temperature\n      setParams:\n        top_k: 7\n",
            "",
        ),
    );
    let summary = reload(&daemon);
    assert_eq!(summary["restarting"], json!([]), "{summary}");
    let after = post_json(&daemon.url("/v1/chat/completions"), &body);
    assert_eq!(after.status, 200, "{}", after.body);
    let echoed = after.json();
    assert_eq!(echoed["pid"].as_u64(), pid, "the process was restarted");
    assert!(
        echoed["request_body"].get("temperature").is_none(),
        "stripParams not applied: {}",
        echoed["request_body"]
    );
    assert_eq!(
        echoed["request_body"]["top_k"], 7,
        "{}",
        echoed["request_body"]
    );
}

/// A concurrency limit from a reload applies to the running process: before it, a second
/// request beside a stream in flight is served; after it (limit 1), it gets 429.
#[test]
fn reload_applies_concurrency_limits_live() {
    let port = free_port_range(2);
    let daemon = Daemon::start(&two_models(port, "", ""));
    let pid = chat_pid(&daemon, "a");
    // A stream held open until its gate file exists: in flight when the request beside it
    // comes, whatever the load.
    let long_stream = |gate: &std::path::Path| {
        let mut stream = open_stream(
            &daemon.addr,
            "/v1/chat/completions",
            &json!({"model": "a", "stream": true, "stream_chunks": 2,
                    "gate_file": gate.to_str().expect("utf-8")}),
        );
        let mut seen = Vec::new();
        read_until(&mut stream, &mut seen, "tok0");
        stream
    };
    let (gate_one, gate_two) = (
        daemon.dir.path().join("gate-one"),
        daemon.dir.path().join("gate-two"),
    );
    let mut first = long_stream(&gate_one);
    let beside = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(beside.status, 200, "no limit yet: {}", beside.body);
    std::fs::write(&gate_one, b"open").expect("open the gate");
    assert!(read_all(&mut first, Duration::from_secs(60)).contains("[DONE]"));
    replace_config(&daemon, &two_models(port, "    concurrencyLimit: 1\n", ""));
    let summary = reload(&daemon);
    assert_eq!(summary["restarting"], json!([]), "{summary}");
    let mut second = long_stream(&gate_two);
    let beside = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(
        beside.status, 429,
        "the new limit is not applied: {}",
        beside.body
    );
    std::fs::write(&gate_two, b"open").expect("open the gate");
    assert!(read_all(&mut second, Duration::from_secs(60)).contains("[DONE]"));
    assert_eq!(chat_pid(&daemon, "a"), pid, "the process was restarted");
}

/// Whether `/v1/models` lists `id`.
fn listed(daemon: &Daemon, id: &str) -> bool {
    get_json(&daemon.url("/v1/models"))["data"]
        .as_array()
        .expect("data")
        .iter()
        .any(|record| record["id"] == id)
}

/// `--watch-config` follows an editor's save (a new file renamed over the old one) and a
/// symlink pointed at another file: each replacement is reloaded, checked by a model that
/// becomes routable.
#[test]
fn watched_config_follows_an_editor_rename_and_a_symlink_swap() {
    let port = free_port_range(3);
    let base = |extra: &str| {
        format!(
            "models:\n  a:\n    cmd: {{FAKE}} --port {port} --model a --pid-file {{DIR}}/a.pid\n    proxy: http://127.0.0.1:{port}\n{extra}"
        )
    };
    let model = |id: &str, offset: u16| {
        format!(
            "  {id}:\n    cmd: {{FAKE}} --port {} --model {id} --pid-file {{DIR}}/{id}.pid\n    proxy: http://127.0.0.1:{}\n",
            port + offset,
            port + offset
        )
    };
    let daemon = Daemon::start_with_args(&base(""), &["--watch-config"]);
    let fill = |text: &str| {
        text.replace("{FAKE}", FAKE)
            .replace("{DIR}", daemon.dir.path().to_str().expect("utf-8"))
    };
    let config = daemon.dir.path().join("config.yaml");
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("b")).status,
        404
    );
    // An editor's save: write elsewhere, rename over.
    replace_config(&daemon, &base(&model("b", 1)));
    wait_for(
        "b listed after the renamed file",
        Duration::from_secs(60),
        || listed(&daemon, "b").then_some(()),
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("b")).status,
        200
    );
    // The config becomes a symlink to one file, then is pointed at another.
    let first = daemon.dir.path().join("first.yaml");
    let second = daemon.dir.path().join("second.yaml");
    std::fs::write(&first, fill(&base(&model("b", 1)))).expect("write first");
    std::fs::write(&second, fill(&base(&(model("b", 1) + &model("c", 2))))).expect("write second");
    let link = daemon.dir.path().join("config.yaml.link");
    std::os::unix::fs::symlink(&first, &link).expect("symlink");
    std::fs::rename(&link, &config).expect("install the symlink");
    // Pointing the link elsewhere (an atomic swap, as deployment tools do it).
    std::os::unix::fs::symlink(&second, &link).expect("symlink");
    std::fs::rename(&link, &config).expect("swap the symlink");
    wait_for(
        "c listed after the symlink swap",
        Duration::from_secs(60),
        || listed(&daemon, "c").then_some(()),
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("c")).status,
        200
    );
    assert!(
        get(&daemon.url("/logs"))
            .body
            .contains("changed; reloading"),
        "the watcher did the reloads"
    );
}

// ---------------------------------------------------------------------------------------------
// Logs, TTL and unloading
// ---------------------------------------------------------------------------------------------

/// `logToStdout` decides what reaches swapd's stdout: swapd's own lines ("proxy", the
/// default), the models' output ("upstream"), both, or nothing.
#[test]
fn log_to_stdout_modes_choose_what_reaches_stdout() {
    for (mode, proxy_lines, upstream_lines) in [
        (None, true, false),
        (Some("proxy"), true, false),
        (Some("upstream"), false, true),
        (Some("both"), true, true),
        (Some("none"), false, false),
    ] {
        let top = mode.map_or(String::new(), |m| format!("logToStdout: {m}\n"));
        let mut daemon = Daemon::start_capturing_stdout(&simple_config(&["a"], "", &top));
        chat_pid(&daemon, "a");
        // The model's own output is in its log (so it could have reached stdout).
        wait_for("a's output in its log", Duration::from_secs(60), || {
            let mut stream = TcpStream::connect(&daemon.addr).expect("connect");
            stream
                .write_all(b"GET /logs/stream/a HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            let mut seen = Vec::new();
            read_until(&mut stream, &mut seen, "\r\n\r\n");
            let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
            let mut buffer = [0u8; 8192];
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buffer[..n]);
            }
            String::from_utf8_lossy(&seen)
                .contains("fake-upstream: listening")
                .then_some(())
        });
        // Once swapd has exited and its stdout reached its end, all it wrote has been read.
        assert_eq!(daemon.terminate(), Some(0), "{mode:?}");
        wait_for("the end of stdout", Duration::from_secs(60), || {
            daemon
                .stdout_ended
                .load(std::sync::atomic::Ordering::SeqCst)
                .then_some(())
        });
        let stdout = daemon.stdout.lock().expect("lock").clone();
        assert_eq!(
            stdout.contains("starting a"),
            proxy_lines,
            "logToStdout {mode:?}: swapd's lines on stdout: {stdout}"
        );
        assert_eq!(
            stdout.contains("fake-upstream: listening"),
            upstream_lines,
            "logToStdout {mode:?}: the model's output on stdout: {stdout}"
        );
    }
}

/// `globalTTL` unloads idle models that have no `ttl` of their own (or `ttl: -1`), and not
/// those with `ttl: 0` (never).
#[test]
fn global_ttl_unloads_models_without_their_own_ttl() {
    let port = free_port_range(3);
    let model = |id: &str, offset: u16, ttl: &str| {
        format!(
            "  {id}:\n    cmd: {{FAKE}} --port {} --model {id} --pid-file {{DIR}}/{id}.pid\n    proxy: http://127.0.0.1:{}\n{ttl}",
            port + offset,
            port + offset
        )
    };
    let config = format!(
        "globalTTL: 1\nmodels:\n{}{}{}groups:\n  all:\n    swap: false\n    members: [a, b, c]\n",
        model("a", 0, ""),
        model("b", 1, "    ttl: -1\n"),
        model("c", 2, "    ttl: 0\n"),
    );
    let daemon = Daemon::start(&config);
    let (a, b, c) = (
        chat_pid(&daemon, "a"),
        chat_pid(&daemon, "b"),
        chat_pid(&daemon, "c"),
    );
    // Polled until swapd has seen both exits (a process can be gone a moment before swapd
    // has reaped it and lists it as stopped).
    wait_for(
        "a and b unloaded by globalTTL",
        Duration::from_secs(60),
        || (daemon.running_states() == vec![("c".to_string(), "ready".to_string())]).then_some(()),
    );
    assert!(!pid_alive(a) && !pid_alive(b), "a or b still runs");
    assert!(pid_alive(c), "c has ttl: 0 and stays");
    let running = daemon.running();
    assert_eq!(running["running"][0]["ttl"], 0);
}

/// `POST /api/models/unload` (no model) stops every running model and answers once they are
/// gone.
#[test]
fn post_api_models_unload_stops_every_model() {
    let mut config = simple_config(&["a", "b"], "", "");
    config.push_str("groups:\n  pair:\n    swap: false\n    members: [a, b]\n");
    let daemon = Daemon::start(&config);
    let (a, b) = (chat_pid(&daemon, "a"), chat_pid(&daemon, "b"));
    let reply = post_raw(&daemon.url("/api/models/unload"), "application/json", b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        !pid_alive(a) && !pid_alive(b),
        "answered before the models stopped"
    );
    assert!(
        daemon.running_states().is_empty(),
        "{:?}",
        daemon.running_states()
    );
    // And they start again on demand.
    assert_ne!(chat_pid(&daemon, "a"), a);
}
