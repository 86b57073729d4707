//! Live reload through the daemon: only what changed restarts, checked by pid.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

/// A config with models a, b, d (all co-resident) and optionally c; `a_flag` changes a's cmd,
/// `d_alias` and `d_ttl` change only per-request settings of d.
fn config(
    start_port: u16,
    a_flag: &str,
    with_b: bool,
    with_c: bool,
    d_alias: &str,
    d_ttl: u32,
) -> String {
    let model = |id: &str, extra: &str| {
        format!("  {id}:\n    cmd: {{FAKE}} --port ${{PORT}} --model {id} --pid-file {{DIR}}/{id}.pid {extra}\n")
    };
    let mut text = format!("startPort: {start_port}\nmodels:\n");
    text.push_str(&model("a", a_flag));
    if with_b {
        text.push_str(&model("b", ""));
    }
    if with_c {
        text.push_str(&model("c", ""));
    }
    // d gets a fixed port so adding c (sorted before d) does not change d's ${PORT}.
    text.push_str(&format!(
        "  d:\n    cmd: {{FAKE}} --port {} --model d --pid-file {{DIR}}/d.pid\n    proxy: http://127.0.0.1:{}\n    aliases: [{d_alias}]\n    ttl: {d_ttl}\n",
        start_port + 9,
        start_port + 9
    ));
    let members: Vec<&str> = ["a", "b", "c", "d"]
        .into_iter()
        .filter(|m| (*m != "b" || with_b) && (*m != "c" || with_c))
        .collect();
    text.push_str(&format!(
        "groups:\n  all:\n    swap: false\n    members: [{}]\n",
        members.join(", ")
    ));
    text
}

fn write_config(daemon: &Daemon, text: &str) {
    let text = text
        .replace("{FAKE}", FAKE)
        .replace("{DIR}", daemon.dir.path().to_str().expect("utf-8"));
    // Replace the file like an editor does: write a new file, rename it over the old one.
    let temporary = daemon.dir.path().join("config.yaml.tmp");
    std::fs::write(&temporary, text).expect("write config");
    std::fs::rename(&temporary, daemon.dir.path().join("config.yaml")).expect("rename config");
}

fn reload(daemon: &Daemon) -> Reply {
    post_raw(&daemon.url("/api/config/reload"), "application/json", b"")
}

#[test]
fn reload_restarts_only_what_changed() {
    let port = free_port_range(10);
    let daemon = Daemon::start(&config(port, "", true, false, "dee", 0));
    for model in ["a", "b", "d"] {
        assert_eq!(
            post_json(&daemon.url("/v1/chat/completions"), &chat(model)).status,
            200
        );
    }
    let (pid_a, pid_b, pid_d) = (
        daemon.pid_of("a").expect("a"),
        daemon.pid_of("b").expect("b"),
        daemon.pid_of("d").expect("d"),
    );
    // Change a's command, remove b, add c, change only d's alias and ttl.
    write_config(
        &daemon,
        &config(port, "--stream-chunks 3", false, true, "delta", 300),
    );
    let reply = reload(&daemon);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let summary = reply.json();
    assert_eq!(summary["added"], json!(["c"]));
    assert_eq!(summary["removed"], json!(["b"]));
    assert_eq!(summary["restarting"], json!(["a"]));
    assert_eq!(summary["updated"], json!(["d"]));
    wait_for("b stopped", Duration::from_secs(10), || {
        (!pid_alive(pid_b)).then_some(())
    });
    wait_for("a's old process stopped", Duration::from_secs(10), || {
        (!pid_alive(pid_a)).then_some(())
    });
    assert!(
        pid_alive(pid_d),
        "d's start settings did not change: it keeps running"
    );
    assert_eq!(daemon.pid_of("d"), Some(pid_d));
    // The new alias routes to the same process; the old one is gone.
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("delta"));
    assert_eq!(reply.json()["pid"].as_u64(), Some(u64::from(pid_d)));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("dee")).status,
        404
    );
    assert_eq!(
        daemon.running()["running"]
            .as_array()
            .expect("running")
            .iter()
            .find(|e| e["model"] == "d")
            .expect("d")["ttl"],
        300
    );
    // a starts again with its new command; b is unknown; c is routable.
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200);
    assert_ne!(reply.json()["pid"].as_u64(), Some(u64::from(pid_a)));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("b")).status,
        404
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("c")).status,
        200
    );
}

#[test]
fn a_stream_in_flight_to_an_unchanged_model_survives_a_reload() {
    let port = free_port_range(10);
    let daemon = Daemon::start(&config(port, "", true, false, "dee", 0));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("d")).status,
        200
    );
    let mut stream = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "d", "stream": true, "stream_chunks": 20, "stream_interval_ms": 250}),
    );
    let mut first = [0u8; 64];
    let _ = std::io::Read::read(&mut stream, &mut first).expect("stream started");
    write_config(
        &daemon,
        &config(port, "--stream-chunks 3", false, true, "delta", 5),
    );
    assert_eq!(reload(&daemon).status, 200);
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("[DONE]"),
        "the stream was cut by the reload: {text}"
    );
}

#[test]
fn a_changed_model_finishes_its_stream_before_restarting() {
    let port = free_port_range(10);
    let daemon = Daemon::start(&config(port, "", true, false, "dee", 0));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let pid_a = daemon.pid_of("a").expect("a");
    let mut stream = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "a", "stream": true, "stream_chunks": 20, "stream_interval_ms": 250}),
    );
    let mut first = [0u8; 64];
    let _ = std::io::Read::read(&mut stream, &mut first).expect("stream started");
    write_config(
        &daemon,
        &config(port, "--stream-chunks 3", true, false, "dee", 0),
    );
    assert_eq!(reload(&daemon).status, 200);
    // A request arriving now waits for the old process to drain, then gets the new one.
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    assert!(
        String::from_utf8_lossy(&rest).contains("[DONE]"),
        "in-flight request finished first"
    );
    assert_eq!(reply.status, 200);
    assert_ne!(reply.json()["pid"].as_u64(), Some(u64::from(pid_a)));
}

#[test]
fn an_invalid_config_is_rejected_and_the_old_one_keeps_serving() {
    let port = free_port_range(10);
    let daemon = Daemon::start(&config(port, "", true, false, "dee", 0));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let pid_a = daemon.pid_of("a").expect("a");
    std::fs::write(
        daemon.dir.path().join("config.yaml"),
        "models:\n  a:\n    cmd: x --port ${PORT}\n    ttl: forever\n",
    )
    .expect("write");
    let reply = reload(&daemon);
    assert_eq!(reply.status, 400);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("config.yaml:4"),
        "names file and line: {message}"
    );
    assert!(message.contains("models.a.ttl"), "names the key: {message}");
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("b")).status,
        200
    );
    assert_eq!(daemon.pid_of("a"), Some(pid_a));
}

#[test]
fn sighup_and_watched_file_bursts_reload_once_to_the_final_state() {
    let port = free_port_range(10);
    let daemon = Daemon::start_with_args(
        &config(port, "", true, false, "dee", 0),
        &["--watch-config"],
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    // A burst of edits, each changing a's command. For each, the instants just before it
    // started and just after it ended: a pause the watcher could see as a settled file is at
    // most the time from one write's start to the next write's end.
    let mut writes = Vec::new();
    for i in 0..10 {
        let before = Instant::now();
        write_config(
            &daemon,
            &config(
                port,
                &format!("--stream-chunks {}", i + 1),
                true,
                i % 2 == 0,
                "dee",
                0,
            ),
        );
        writes.push((before, Instant::now()));
        std::thread::sleep(Duration::from_millis(30));
    }
    // The watcher reloads a file that stayed the same for 100 ms. Every pause in the burst
    // shorter than that cannot have been reloaded; each longer one (a loaded machine) may add
    // one reload of an intermediate file.
    let long_pauses = writes
        .windows(2)
        .filter(|pair| pair[1].1 - pair[0].0 >= Duration::from_millis(100))
        .count();
    // Keep asking until the final file is served: there is never more than one process for
    // a, and every request is answered (a request during a restart waits for it).
    let marker = format!("{}/a.pid", daemon.dir.path().display());
    wait_for(
        "a to run the final command (10 chunks)",
        Duration::from_secs(60),
        || {
            // Only this daemon's children: other tests run fake-upstream models named a too.
            let instances = pids_with_cmdline(&marker).len();
            assert!(instances <= 1, "two instances of a at once");
            let reply = post_json(
                &daemon.url("/v1/chat/completions"),
                &json!({"model": "a", "stream": true}),
            );
            assert_eq!(reply.status, 200, "during the reloads: {}", reply.body);
            (reply.body.matches("\"content\":\"tok").count() == 10).then_some(())
        },
    );
    // Counted in swapd's log, where every reload says so.
    let reloads = || {
        get(&daemon.url("/logs"))
            .body
            .matches("config reloaded from")
            .count()
    };
    assert!(
        (1..=long_pauses + 1).contains(&reloads()),
        "{} reloads for a burst of 10 writes with {long_pauses} pause(s) of 100 ms or more",
        reloads()
    );
    // The final file has no c (i = 9 is odd); SIGHUP reloads the same file again harmlessly.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("c")).status,
        404
    );
    write_config(
        &daemon,
        &config(port, "--stream-chunks 10", true, true, "dee", 0),
    );
    kill(daemon.pid(), libc::SIGHUP);
    wait_for("c added by SIGHUP", Duration::from_secs(30), || {
        (post_json(&daemon.url("/v1/chat/completions"), &chat("c")).status == 200).then_some(())
    });
}
