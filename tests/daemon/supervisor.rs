//! Supervisor behaviour through the daemon: starts, swaps, groups, limits, TTL, unload,
//! failures and shutdown, each checked by its observable effects (pids, /running, statuses).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

#[test]
fn on_demand_start_then_swap_stops_the_previous_model() {
    let daemon = Daemon::start(&simple_config(&["a", "b"], "", ""));
    assert!(
        daemon.running_states().is_empty(),
        "nothing runs before a request"
    );
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["model_served"], "a");
    daemon.wait_running(&["a"]);
    let pid_a = daemon.pid_of("a").expect("a has a pid");
    assert!(pid_alive(pid_a));

    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("b"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["model_served"], "b");
    daemon.wait_running(&["b"]);
    wait_for("a's process to be gone", Duration::from_secs(10), || {
        (!pid_alive(pid_a)).then_some(())
    });
}

#[test]
fn non_swapping_group_members_coreside() {
    let mut config = simple_config(&["a", "b"], "", "");
    config.push_str("groups:\n  pair:\n    swap: false\n    members: [a, b]\n");
    let daemon = Daemon::start(&config);
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("b")).status,
        200
    );
    daemon.wait_running(&["a", "b"]);
}

#[test]
fn persistent_group_survives_and_exclusive_group_evicts() {
    let mut config = simple_config(&["a", "b", "embed", "x"], "", "");
    config.push_str(
        "groups:\n  main:\n    members: [a, b]\n  keep:\n    persistent: true\n    exclusive: false\n    swap: false\n    members: [embed]\n  shared:\n    exclusive: false\n    members: [x]\n",
    );
    let daemon = Daemon::start(&config);
    assert_eq!(
        post_json(&daemon.url("/v1/embeddings"), &chat("embed")).status,
        200
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    daemon.wait_running(&["a", "embed"]);
    // A swap inside the exclusive group keeps the persistent model.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("b")).status,
        200
    );
    daemon.wait_running(&["b", "embed"]);
    // A non-exclusive group loads beside the exclusive one (llama-swap's one-way rule)...
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("x")).status,
        200
    );
    daemon.wait_running(&["b", "embed", "x"]);
    // ...and loading from the exclusive group evicts it, but not the persistent one.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    daemon.wait_running(&["a", "embed"]);
}

/// Reads a streamed response from a raw socket until the terminating chunk.
fn read_to_end_of_stream(stream: &mut std::net::TcpStream) -> String {
    let mut all = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                all.extend_from_slice(&buffer[..n]);
                if all.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// `swapd_queue_depth` from /metrics: requests waiting for a model.
fn queue_depth(daemon: &Daemon) -> usize {
    let metrics = get(&daemon.url("/metrics")).body;
    metrics
        .lines()
        .filter(|line| line.starts_with("swapd_queue_depth"))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as usize
}

/// The process group of a live process, from /proc/<pid>/stat.
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// What the upstream `model` wrote so far (its own log history).
fn upstream_log(daemon: &Daemon, model: &str) -> String {
    let mut stream = std::net::TcpStream::connect(&daemon.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    write!(
        stream,
        "GET /logs/stream/{model} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut all = Vec::new();
    let mut buffer = [0u8; 8192];
    // The history comes at once; the stream then stays open, so read until a pause.
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn swap_waits_for_the_request_in_flight() {
    let daemon = Daemon::start(&simple_config(&["a", "b"], "", ""));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    // A slow stream on a: 20 chunks 250 ms apart (long enough to be in flight under load).
    let mut slow = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "a", "stream": true, "stream_chunks": 20, "stream_interval_ms": 250}),
    );
    let mut first = [0u8; 64];
    let _ = slow.read(&mut first).expect("stream started");
    let addr = daemon.addr.clone();
    let b = std::thread::spawn(move || {
        let reply = post_json(&format!("http://{addr}/v1/chat/completions"), &chat("b"));
        (reply.status, Instant::now())
    });
    // b must be seen waiting while a's stream still runs (a ready, b not started): otherwise
    // b could have arrived after the stream and the checks below would prove nothing.
    wait_for(
        "b queued behind a's stream",
        Duration::from_secs(30),
        || {
            (queue_depth(&daemon) == 1
                && daemon.running_states() == [("a".to_string(), "ready".to_string())])
            .then_some(())
        },
    );
    let a_body = read_to_end_of_stream(&mut slow);
    let a_done = Instant::now();
    assert!(
        a_body.contains("[DONE]"),
        "the stream on a was cut: {a_body}"
    );
    let (status, b_done) = b.join().expect("b thread");
    assert_eq!(status, 200);
    assert!(b_done >= a_done, "b was served before a's stream finished");
}

#[test]
fn requests_are_collated_by_model() {
    // a serves a slow stream; then b, a, b arrive: the second a is served before any b.
    let daemon = Daemon::start(&simple_config(&["a", "b"], "", ""));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let mut slow = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "a", "stream": true, "stream_chunks": 20, "stream_interval_ms": 250}),
    );
    let mut first = [0u8; 64];
    let _ = slow.read(&mut first).expect("stream started");
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    // Each request is sent once the ones before it are queued (swapd_queue_depth) or answered,
    // so they arrive in this order however slow the machine is.
    for (index, model) in ["b", "a", "b"].into_iter().enumerate() {
        wait_for(
            &format!("{index} request(s) queued or answered"),
            Duration::from_secs(30),
            || (queue_depth(&daemon) + order.lock().expect("order").len() == index).then_some(()),
        );
        let addr = daemon.addr.clone();
        let order = order.clone();
        threads.push(std::thread::spawn(move || {
            let reply = post_json(&format!("http://{addr}/v1/chat/completions"), &chat(model));
            assert_eq!(reply.status, 200);
            order.lock().expect("order").push(model);
        }));
    }
    for thread in threads {
        thread.join().expect("client thread");
    }
    read_to_end_of_stream(&mut slow);
    let order = order.lock().expect("order").clone();
    assert_eq!(
        order[0], "a",
        "the queued a should be collated before b: {order:?}"
    );
}

#[test]
fn over_the_concurrency_limit_gets_429_before_streaming() {
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "    concurrencyLimit: 1\n    sendLoadingState: true\n",
        "",
    ));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let mut slow = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "a", "stream": true, "stream_chunks": 20, "stream_interval_ms": 250}),
    );
    let mut first = [0u8; 64];
    let _ = slow.read(&mut first).expect("stream started");
    let reply = post_json(
        &daemon.url("/v1/chat/completions"),
        &json!({"model": "a", "stream": true}),
    );
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.json()["error"]["code"], "concurrency_limit");
    read_to_end_of_stream(&mut slow);
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
}

#[test]
fn a_queued_client_that_leaves_does_not_trigger_a_swap() {
    let daemon = Daemon::start(&simple_config(&["a", "b"], "", ""));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let pid_a = daemon.pid_of("a").expect("a runs");
    let mut slow = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "a", "stream": true, "stream_chunks": 20, "stream_interval_ms": 250}),
    );
    let mut first = [0u8; 64];
    let _ = slow.read(&mut first).expect("stream started");
    // b queues behind a's stream (seen in swapd_queue_depth), then its client goes away, and
    // swapd notices (the queue is empty again) while a's stream still runs.
    let queued = open_stream(&daemon.addr, "/v1/chat/completions", &chat("b"));
    wait_for("b queued", Duration::from_secs(30), || {
        (queue_depth(&daemon) == 1).then_some(())
    });
    drop(queued);
    wait_for("b withdrawn", Duration::from_secs(30), || {
        (queue_depth(&daemon) == 0).then_some(())
    });
    let a_body = read_to_end_of_stream(&mut slow);
    assert!(a_body.contains("[DONE]"), "a's stream was cut: {a_body}");
    // After a's stream, a request for a is served by the same process: b was never started
    // (it would have replaced a), checked by pid rather than by watching for a while.
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["pid"].as_u64(), Some(u64::from(pid_a)));
    assert!(
        daemon.running_states().iter().all(|(m, _)| m == "a"),
        "b was started for a client that had left: {:?}",
        daemon.running_states()
    );
    assert!(pid_alive(pid_a));
}

#[test]
fn ttl_unloads_an_idle_model() {
    let daemon = Daemon::start(&simple_config(&["a"], "    ttl: 1\n", ""));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let pid = daemon.pid_of("a").expect("a runs");
    wait_for("ttl unload", Duration::from_secs(10), || {
        daemon.running_states().is_empty().then_some(())
    });
    wait_for("process gone", Duration::from_secs(30), || {
        (!pid_alive(pid)).then_some(())
    });
}

#[test]
fn unload_one_and_all() {
    let mut config = simple_config(&["a", "b/c"], "", "");
    config.push_str("groups:\n  pair:\n    swap: false\n    members: [a, b/c]\n");
    let daemon = Daemon::start(&config);
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("b/c")).status,
        200
    );
    let pid_b = daemon.pid_of("b/c").expect("b/c runs");
    let reply = post_raw(&daemon.url("/api/models/unload/b/c"), "text/plain", b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        !pid_alive(pid_b),
        "unload answers only once the process is gone"
    );
    assert_eq!(
        daemon.running_states(),
        vec![("a".to_string(), "ready".to_string())]
    );
    let reply = post_raw(&daemon.url("/api/models/unload/nope"), "text/plain", b"");
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["code"], "model_not_found");
    let pid_a = daemon.pid_of("a").expect("a runs");
    let reply = get(&daemon.url("/unload"));
    assert_eq!(reply.status, 200);
    assert!(!pid_alive(pid_a));
    assert!(daemon.running_states().is_empty());
}

#[test]
fn a_crashed_child_is_restarted_by_the_next_request() {
    let start_port = free_port_range(1);
    let config = format!(
        "startPort: {start_port}\nmodels:\n  a:\n    cmd: {{FAKE}} --port ${{PORT}} --model a --exit-after-ms 400 --pid-file {{DIR}}/a.pid\n"
    );
    let daemon = Daemon::start(&config);
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let first = daemon.pid_of("a").expect("a runs");
    wait_for("crash noticed", Duration::from_secs(10), || {
        daemon.running_states().is_empty().then_some(())
    });
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let second = reply.json()["pid"].as_u64().expect("pid") as u32;
    assert_ne!(first, second);
}

#[test]
fn a_child_that_fails_to_start_gives_a_clear_error_then_retries() {
    let start_port = free_port_range(1);
    let config = format!(
        "startPort: {start_port}\nmodels:\n  broken:\n    cmd: {{FAKE}} --port ${{PORT}} --exit-immediately 7 --pid-file {{DIR}}/b.pid\n"
    );
    let daemon = Daemon::start(&config);
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("broken"));
    assert_eq!(reply.status, 503, "{}", reply.body);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("broken"), "{message}");
    // Reported because the process exited (not after healthCheckTimeout): checked by the
    // reason in the message, not by how long it took.
    assert!(message.contains("exit code 7"), "{message}");
    assert!(!message.contains("health check"), "{message}");
    assert!(
        message.contains("simulated failure"),
        "the last log lines: {message}"
    );
    // The next request retries (and fails the same way, proving it was not stuck).
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("broken")).status,
        503
    );
}

#[test]
fn health_check_timeout_fails_waiters() {
    let start_port = free_port_range(1);
    let config = format!(
        "startPort: {start_port}\nhealthCheckTimeout: 15\nmodels:\n  slow:\n    cmd: {{FAKE}} --port ${{PORT}} --startup-delay-ms 600000 --pid-file {{DIR}}/s.pid\n"
    );
    let daemon = Daemon::start(&config);
    let started = Instant::now();
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("slow"));
    let waited = started.elapsed();
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        waited >= Duration::from_secs(14),
        "failed after {waited:?}, before healthCheckTimeout (15 s)"
    );
    assert!(reply.body.contains("health check"), "{}", reply.body);
    wait_for("child stopped", Duration::from_secs(10), || {
        daemon.children().is_empty().then_some(())
    });
}

#[test]
fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
    let daemon = Daemon::start(
        &simple_config(&["a"], "    unloadTimeout: 1\n", "")
            .replace("--model a", "--model a --ignore-sigterm"),
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let pid = daemon.pid_of("a").expect("a runs");
    let started = Instant::now();
    assert_eq!(get(&daemon.url("/unload")).status, 200);
    let took = started.elapsed();
    assert!(!pid_alive(pid));
    assert!(
        took >= Duration::from_millis(900),
        "SIGKILL came before the grace: {took:?}"
    );
}

#[test]
fn cmd_stop_is_used_with_the_pid() {
    let config = simple_config(
        &["a"],
        "    cmdStop: sh -c 'echo stopped-${PID} > {DIR}/stopped; kill ${PID}'\n",
        "",
    );
    let daemon = Daemon::start(&config);
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let pid = daemon.pid_of("a").expect("a runs");
    assert_eq!(get(&daemon.url("/unload")).status, 200);
    let marker = std::fs::read_to_string(daemon.dir.path().join("stopped")).expect("cmdStop ran");
    assert_eq!(marker.trim(), format!("stopped-{pid}"));
    assert!(!pid_alive(pid));
}

#[test]
fn preload_starts_models_at_startup() {
    let mut config = simple_config(&["a", "b"], "", "");
    config.push_str("hooks:\n  on_startup:\n    preload: [b]\n");
    let daemon = Daemon::start(&config);
    daemon.wait_running(&["b"]);
}

#[test]
fn sigterm_stops_every_child_and_exits_zero() {
    let mut config = simple_config(&["a", "b"], "", "");
    config.push_str("groups:\n  pair:\n    swap: false\n    members: [a, b]\n");
    let mut daemon = Daemon::start(&config.replace("--model b", "--model b --fork-grandchild"));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("b")).status,
        200
    );
    let children = daemon.children();
    assert!(children.len() >= 2, "{children:?}");
    // The grandchild (`sleep 1000`) has no marker in its command line; b says its pid.
    let grandchild = wait_for(
        "b to report its grandchild",
        Duration::from_secs(30),
        || {
            let log = upstream_log(&daemon, "b");
            log.split("spawned grandchild pid ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|pid| pid.parse::<u32>().ok())
        },
    );
    assert!(pid_alive(grandchild), "the grandchild {grandchild} runs");
    assert_eq!(
        process_group(grandchild),
        process_group(daemon.pid_of("b").expect("b runs")),
        "the grandchild is in b's process group"
    );
    assert_eq!(daemon.terminate(), Some(0));
    wait_for("children gone", Duration::from_secs(30), || {
        children.iter().all(|&pid| !pid_alive(pid)).then_some(())
    });
    wait_for("the grandchild gone", Duration::from_secs(30), || {
        (!pid_alive(grandchild)).then_some(())
    });
}

#[test]
fn sigkill_of_swapd_takes_the_children_down() {
    let mut daemon = Daemon::start(&simple_config(&["a"], "", ""));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let pid = daemon.pid_of("a").expect("a runs");
    kill(daemon.pid(), libc::SIGKILL);
    let _ = daemon.child.wait();
    wait_for(
        "child gone after SIGKILL of swapd",
        Duration::from_secs(30),
        || (!pid_alive(pid)).then_some(()),
    );
}

#[test]
fn requests_for_a_starting_model_share_one_start() {
    let daemon = Daemon::start(
        &simple_config(&["a"], "", "").replace("--model a", "--model a --startup-delay-ms 300"),
    );
    let mut threads = Vec::new();
    for _ in 0..4 {
        let url = daemon.url("/v1/chat/completions");
        threads.push(std::thread::spawn(move || post_json(&url, &chat("a"))));
    }
    let pids: Vec<u64> = threads
        .into_iter()
        .map(|t| {
            t.join().expect("client").json()["pid"]
                .as_u64()
                .expect("pid")
        })
        .collect();
    assert!(
        pids.iter().all(|&p| p == pids[0]),
        "one start serves all: {pids:?}"
    );
}

#[test]
fn running_lists_state_and_details() {
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "    name: Model A\n    description: first\n    ttl: 300\n",
        "",
    ));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let running = daemon.running();
    let entry = &running["running"][0];
    assert_eq!(entry["model"], "a");
    assert_eq!(entry["state"], "ready");
    assert_eq!(entry["name"], "Model A");
    assert_eq!(entry["description"], "first");
    assert_eq!(entry["ttl"], 300);
    assert!(entry["cmd"]
        .as_str()
        .unwrap_or_default()
        .contains("fake-upstream"));
    assert!(entry["proxy"]
        .as_str()
        .unwrap_or_default()
        .starts_with("http://"));
    let _ = std::io::stdout().flush();
}
