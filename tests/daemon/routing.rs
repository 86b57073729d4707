//! Routing compatibility with llama-swap: the matrix router, profiles, selectors and config
//! directories. Each test asserts which fake-upstream process served each request (its model
//! name and pid from the echo) and which processes were stopped, not only statuses.

use std::time::Duration;

use crate::common::*;

/// Sends a chat request for `model` and returns (model_served, pid of the serving process).
fn served(daemon: &Daemon, model: &str) -> (String, u32) {
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat(model));
    assert_eq!(reply.status, 200, "{model}: {}", reply.body);
    let body = reply.json();
    (
        body["model_served"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["pid"].as_u64().expect("the echo carries the pid") as u32,
    )
}

fn wait_gone(pid: u32) {
    wait_for(
        &format!("pid {pid} to exit"),
        Duration::from_secs(15),
        || (!pid_alive(pid)).then_some(()),
    );
}

fn metric(daemon: &Daemon, name: &str) -> f64 {
    let text = get(&daemon.url("/metrics")).body;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

#[test]
fn matrix_keeps_set_members_together_and_evicts_the_rest() {
    let mut config = simple_config(&["a", "b", "c", "lonely"], "", "");
    config.push_str(
        "routing:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        vars: {A: a}\n        sets:\n          ab: \"A & b\"\n          conly: \"c\"\n",
    );
    let daemon = Daemon::start(&config);
    let (model, pid_a) = served(&daemon, "a");
    assert_eq!(model, "a");
    // b shares a set with a: only b starts, a keeps serving from the same process.
    let (model, pid_b) = served(&daemon, "b");
    assert_eq!(model, "b");
    daemon.wait_running(&["a", "b"]);
    assert_eq!(served(&daemon, "a"), ("a".to_string(), pid_a));
    // c is in another set: both a and b are evicted.
    let (model, pid_c) = served(&daemon, "c");
    assert_eq!(model, "c");
    wait_gone(pid_a);
    wait_gone(pid_b);
    daemon.wait_running(&["c"]);
    // A model in no set runs alone.
    let (model, _) = served(&daemon, "lonely");
    assert_eq!(model, "lonely");
    wait_gone(pid_c);
    daemon.wait_running(&["lonely"]);
    let log = get(&daemon.url("/logs")).body;
    assert!(
        log.contains("matrix: model=c set=conly dsl=\"c\" evict=[a b] target=[c] cost=2"),
        "{log}"
    );
    assert!(
        log.contains("matrix: model=lonely set=- dsl=\"\" evict=[c] target=[lonely] cost=1"),
        "{log}"
    );
    // a, b (no eviction), c and lonely: four decisions, each logged and counted once.
    assert_eq!(log.matches("matrix: model=").count(), 4, "{log}");
    assert_eq!(metric(&daemon, "swapd_matrix_decisions_total"), 4.0);
}

#[test]
fn matrix_ties_go_to_the_first_defined_set_and_costs_steer() {
    let mut config = simple_config(&["t", "x", "y"], "", "");
    // Legacy top-level form. `zfirst` sorts after `asecond` by name but is defined first.
    config.push_str(
        "matrix:\n  sets:\n    zfirst: \"t & x\"\n    asecond: \"t & y\"\n    both: \"x & y\"\n",
    );
    let daemon = Daemon::start(&config);
    let (_, pid_x) = served(&daemon, "x");
    let (_, pid_y) = served(&daemon, "y");
    daemon.wait_running(&["x", "y"]);
    let (model, _) = served(&daemon, "t");
    assert_eq!(model, "t");
    wait_gone(pid_y);
    daemon.wait_running(&["t", "x"]);
    assert!(pid_alive(pid_x), "x shares the first-defined set with t");
    drop(daemon);

    // With y expensive to evict, t goes with y instead.
    let mut config = simple_config(&["t", "x", "y"], "", "");
    config.push_str(
        "matrix:\n  evict_costs: {y: 10}\n  sets:\n    zfirst: \"t & x\"\n    asecond: \"t & y\"\n    both: \"x & y\"\n",
    );
    let daemon = Daemon::start(&config);
    let (_, pid_x) = served(&daemon, "x");
    let (_, pid_y) = served(&daemon, "y");
    served(&daemon, "t");
    wait_gone(pid_x);
    daemon.wait_running(&["t", "y"]);
    assert!(pid_alive(pid_y));
}

#[test]
fn matrix_config_errors_name_file_line_and_key() {
    let dir = TempDir::new("matrix-check");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "models:\n  a:\n    cmd: x --port ${PORT}\nrouting:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        sets:\n          s1: \"a & +s2\"\n          s2: \"+s1\"\n",
    )
    .expect("write");
    let output = std::process::Command::new(SWAPD)
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run swapd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:11:11: routing.router.settings.matrix.sets.s2: circular reference",
            path.display()
        )),
        "{stderr}"
    );
    // Groups and matrix together are a load error, as in llama-swap.
    std::fs::write(
        &path,
        "models:\n  a:\n    cmd: x --port ${PORT}\ngroups:\n  g: {members: [a]}\nmatrix:\n  sets: {s: a}\n",
    )
    .expect("write");
    let output = std::process::Command::new(SWAPD)
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run swapd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:6:1: matrix: groups and matrix cannot be used together",
            path.display()
        )),
        "{stderr}"
    );
}

fn put_json(url: &str, body: &str) -> Reply {
    let response = agent()
        .put(url)
        .header("Content-Type", "application/json")
        .send(body.as_bytes());
    let mut response = response.expect("transport");
    Reply {
        status: response.status().as_u16(),
        headers: Vec::new(),
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

/// The `/v1/models` record with this id, if listed.
fn listed(daemon: &Daemon, id: &str) -> Option<serde_json::Value> {
    get_json(&daemon.url("/v1/models"))["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|record| record["id"] == id)
        .cloned()
}

/// Reads an SSE stream until `needle` has been seen (bounded by the socket's read timeout).
fn read_until(stream: &mut std::net::TcpStream, seen: &mut String, needle: &str) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut buffer = [0u8; 4096];
    while !seen.contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in {seen}"
        );
        match stream.read(&mut buffer) {
            Ok(0) => panic!("stream closed before {needle:?}: {seen}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
            Err(error) => panic!("read failed ({error}) before {needle:?}: {seen}"),
        }
    }
}

const PROFILE_TOP: &str = "profiles:\n  coding:\n    description: pair programming\n    pins:\n      chat: b\n      b: a\n      c: \"\"\n      quick: fast\n  other:\n    pins: {chat: c}\nselectors:\n  fast:\n    strategy: pin\n    targets: [b]\n";

#[test]
fn profiles_pin_requested_models_without_chaining() {
    let config = simple_config(&["a", "b", "c"], "", PROFILE_TOP);
    let daemon = Daemon::start(&config);
    // None active at start: `chat` is nobody.
    let profiles = get_json(&daemon.url("/api/profiles"));
    assert_eq!(profiles["active"], serde_json::Value::Null);
    assert_eq!(profiles["profiles"][0]["id"], "coding");
    assert_eq!(profiles["profiles"][0]["pins"]["chat"], "b");
    assert_eq!(profiles["profiles"][0]["pins"]["c"], "");
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("chat"));
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(listed(&daemon, "chat").is_none());

    // Events: the current profile on connect, then every change.
    let mut events = std::net::TcpStream::connect(&daemon.addr).expect("connect");
    events
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    std::io::Write::write_all(
        &mut events,
        format!("GET /api/events HTTP/1.1\r\nHost: {}\r\n\r\n", daemon.addr).as_bytes(),
    )
    .expect("write");
    let mut seen = String::new();
    read_until(&mut events, &mut seen, r#"\"active\":null"#);

    let reply = put_json(&daemon.url("/api/profiles/active"), r#"{"name":"coding"}"#);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["active"], "coding");
    read_until(&mut events, &mut seen, r#"{\"active\":\"coding\"}"#);

    // JSON body: chat → b, and b → a (pins do not chain: chat is b, not a).
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("chat"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["model_served"], "b");
    assert_eq!(
        reply.json()["request_body"]["model"],
        "b",
        "the body names the target"
    );
    assert_eq!(served(&daemon, "b").0, "a");
    // An empty target disables the id.
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("c"));
    assert_eq!(reply.status, 404, "{}", reply.body);
    // A pin to a selector goes through the selector.
    assert_eq!(served(&daemon, "quick").0, "b");
    // Query (GET /props?model=) and multipart form.
    let reply = get(&daemon.url("/props?model=chat"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["model_served"], "b");
    let body = b"--BOUND\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nchat\r\n--BOUND\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nabc\r\n--BOUND--\r\n";
    let reply = post_raw(
        &daemon.url("/v1/audio/transcriptions"),
        "multipart/form-data; boundary=BOUND",
        body,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["model_served"], "b");
    // /upstream/<pin>/...: the longest pin prefix is replaced.
    let reply = get(&daemon.url("/upstream/chat/props"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["model_served"], "b");
    assert_eq!(reply.json()["path"], "/props");
    // /v1/models lists the active pins that are not model ids.
    let record = listed(&daemon, "chat").expect("chat is listed while coding is active");
    assert_eq!(record["meta"]["llamaswap"]["type"], "profile");
    assert_eq!(
        listed(&daemon, "b").expect("b")["meta"]["llamaswap"]["type"],
        "model"
    );

    // Bad bodies and unknown names leave the profile as it is.
    assert_eq!(
        put_json(&daemon.url("/api/profiles/active"), "nope").status,
        400
    );
    assert_eq!(
        put_json(&daemon.url("/api/profiles/active"), "{}").status,
        400
    );
    assert_eq!(
        put_json(&daemon.url("/api/profiles/active"), r#"{"name":5}"#).status,
        400
    );
    let reply = put_json(&daemon.url("/api/profiles/active"), r#"{"name":"missing"}"#);
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(get_json(&daemon.url("/api/profiles"))["active"], "coding");

    // Switching profiles applies at once.
    assert_eq!(
        put_json(&daemon.url("/api/profiles/active"), r#"{"name":"other"}"#).status,
        200
    );
    assert_eq!(served(&daemon, "chat").0, "c");
    read_until(&mut events, &mut seen, r#"{\"active\":\"other\"}"#);

    // A reload deactivates the profile without restarting the running model.
    let pid_c = daemon.pid_of("c").expect("c runs");
    let reply = post_json(&daemon.url("/api/config/reload"), &serde_json::json!({}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        get_json(&daemon.url("/api/profiles"))["active"],
        serde_json::Value::Null
    );
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("chat")).status,
        404
    );
    assert_eq!(served(&daemon, "c"), ("c".to_string(), pid_c));
    // Clearing with null.
    assert_eq!(
        put_json(&daemon.url("/api/profiles/active"), r#"{"name":"coding"}"#).status,
        200
    );
    let reply = put_json(&daemon.url("/api/profiles/active"), r#"{"name":null}"#);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["active"], serde_json::Value::Null);
}

#[test]
fn selectors_route_by_strategy() {
    let top = "groups:\n  pool:\n    swap: false\n    members: [s1, s2]\nselectors:\n  pinned:\n    strategy: pin\n    targets: [b, a]\n    name: Pinned\n  warmest:\n    strategy: warm\n    targets: [a, b]\n    description: whatever is warm\n  spill:\n    strategy: spillover\n    targets: [s1, s2]\n    metadata: {tier: gpu}\n  hidden:\n    strategy: pin\n    targets: [a]\n    unlisted: true\n";
    let config = simple_config(&["a", "b", "s1", "s2"], "", top);
    let daemon = Daemon::start(&config);
    // Listed as selectors, unloaded while no target runs.
    let record = listed(&daemon, "spill").expect("spill is listed");
    assert_eq!(record["meta"]["llamaswap"]["type"], "selector");
    assert_eq!(record["meta"]["llamaswap"]["strategy"], "spillover");
    assert_eq!(record["meta"]["llamaswap"]["spillover"], 1);
    assert_eq!(record["meta"]["llamaswap"]["tier"], "gpu");
    assert_eq!(record["status"]["value"], "unloaded");
    assert_eq!(listed(&daemon, "pinned").expect("pinned")["name"], "Pinned");
    assert!(listed(&daemon, "hidden").is_none());

    // pin: always the first target.
    let (model, pid_b) = served(&daemon, "pinned");
    assert_eq!(model, "b");
    assert_eq!(
        listed(&daemon, "pinned").expect("pinned")["status"]["value"],
        "loaded"
    );
    // warm: b is ready, so b serves although a is listed first.
    assert_eq!(served(&daemon, "warmest"), ("b".to_string(), pid_b));
    assert_eq!(
        served(&daemon, "hidden").0,
        "a",
        "unlisted selectors still route"
    );
    wait_gone(pid_b);
    // Now a is the warm one.
    assert_eq!(served(&daemon, "warmest").0, "a");
    // Not applied to /upstream.
    assert_eq!(get(&daemon.url("/upstream/pinned/props")).status, 404);

    // spillover: a long stream keeps s1 busy, so the next request cold-starts s2. (30 s
    // long, so that it is still in flight on a loaded machine; dropping it ends it.)
    let mut stream = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &serde_json::json!({"model": "spill", "stream": true, "stream_chunks": 1500, "stream_interval_ms": 20,
                            "messages": [{"role": "user", "content": "hi"}]}),
    );
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\"model\":\"s1\"");
    let (model, pid_s2) = served(&daemon, "spill");
    assert_eq!(model, "s2");
    let pid_s1 = daemon.pid_of("s1").expect("s1 runs");
    drop(stream);
    // swapd notices the departed client at its next write and ends the stream.
    wait_for("s1's stream to end", Duration::from_secs(30), || {
        get(&daemon.url("/metrics"))
            .body
            .contains("swapd_inflight{model=\"s1\"} 0\n")
            .then_some(())
    });
    // Both idle: equally busy targets take turns. (The selector gives its count back as the
    // stream's handler returns, a moment after the stream ended: polled.)
    wait_for(
        "the selector's counts to drain",
        Duration::from_secs(20),
        || {
            let mut pids: Vec<u32> = (0..4).map(|_| served(&daemon, "spill").1).collect();
            pids.sort_unstable();
            pids.dedup();
            (pids == {
                let mut both = vec![pid_s1, pid_s2];
                both.sort_unstable();
                both
            })
            .then_some(())
        },
    );
    assert_eq!(
        listed(&daemon, "spill").expect("spill")["status"]["value"],
        "loaded"
    );
}

#[test]
fn profile_and_selector_config_errors_name_file_line_and_key() {
    let dir = TempDir::new("routing-check");
    let path = dir.path().join("config.yaml");
    for (text, expected) in [
        (
            "models:\n  a:\n    cmd: x --port ${PORT}\nprofiles:\n  old:\n    - a\n",
            ":5:3: profiles.old: profile must be a mapping with description and pins; the legacy list syntax is no longer supported",
        ),
        (
            "models:\n  a:\n    cmd: x --port ${PORT}\nprofiles:\n  p:\n    pins:\n      x: nope\n",
            ":7:7: profiles.p.pins.x: pin 'x' references unknown model 'nope'",
        ),
        (
            "models:\n  a:\n    cmd: x --port ${PORT}\nselectors:\n  a:\n    strategy: pin\n    targets: [a]\n",
            ":5:3: selectors.a: selector id 'a' conflicts with model id 'a'",
        ),
    ] {
        std::fs::write(&path, text).expect("write");
        let output = std::process::Command::new(SWAPD)
            .arg("--check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run swapd");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{}{expected}", path.display())),
            "{stderr}"
        );
    }
}

/// Writes a file with `{FAKE}` and `{DIR}` (the daemon's directory) filled in, atomically.
fn write_templated(daemon: &Daemon, path: &std::path::Path, text: &str) {
    let text = text
        .replace("{FAKE}", FAKE)
        .replace("{DIR}", daemon.dir.path().to_str().expect("utf-8"));
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

fn model_entry(id: &str) -> String {
    format!(
        "  {id}:\n    cmd: {{FAKE}} --port ${{PORT}} --model {id} --pid-file {{DIR}}/{id}.pid\n"
    )
}

#[test]
fn reload_applies_routing_changes_without_restarting_models() {
    let models: String = ["a", "b", "c"].iter().map(|m| model_entry(m)).collect();
    let head = format!(
        "startPort: {}\nhealthCheckTimeout: 15\nmodels:\n{models}",
        free_port_range(3)
    );
    let before = format!(
        "{head}matrix:\n  sets:\n    ab: \"a & b\"\n    conly: c\nselectors:\n  sel: {{strategy: pin, targets: [a]}}\n"
    );
    let daemon = Daemon::start(&before);
    let (_, pid_a) = served(&daemon, "a");
    let (_, pid_b) = served(&daemon, "b");
    assert_eq!(served(&daemon, "sel"), ("a".to_string(), pid_a));

    let after = format!(
        "{head}matrix:\n  sets:\n    ac: \"a & c\"\n    bonly: b\nselectors:\n  sel: {{strategy: pin, targets: [b]}}\nprofiles:\n  p:\n    pins: {{x: c}}\n"
    );
    write_templated(&daemon, &daemon.dir.path().join("config.yaml"), &after);
    let reply = post_raw(&daemon.url("/api/config/reload"), "application/json", b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The selector's new target serves at once, from the process that was already running.
    assert_eq!(served(&daemon, "sel"), ("b".to_string(), pid_b));
    assert_eq!(served(&daemon, "a"), ("a".to_string(), pid_a));
    // The new profile exists; the new matrix sets decide: c goes with a, b is evicted.
    assert_eq!(
        put_json(&daemon.url("/api/profiles/active"), r#"{"name":"p"}"#).status,
        200
    );
    assert_eq!(served(&daemon, "x").0, "c");
    wait_gone(pid_b);
    daemon.wait_running(&["a", "c"]);
    assert!(pid_alive(pid_a));
}

/// Kills, on drop, every process whose command line mentions `marker` (fake upstreams that a
/// config outside the daemon's own directory started).
struct KillByMarker(String);

impl Drop for KillByMarker {
    fn drop(&mut self) {
        for pid in pids_with_cmdline(&self.0) {
            kill(pid, libc::SIGKILL);
        }
    }
}

#[test]
fn config_dir_merges_files_and_reloads_the_whole_set() {
    let conf = TempDir::new("conf-d");
    let conf_path = conf.path().to_str().expect("utf-8").to_string();
    let _cleanup = KillByMarker(conf_path.clone());
    let entry = |id: &str| {
        format!("  {id}:\n    cmd: {FAKE} --port ${{PORT}} --model {id} --pid-file {conf_path}/{id}.pid\n")
    };
    std::fs::write(
        conf.path().join("10-b.yaml"),
        format!(
            "models:\n{}profiles:\n  p:\n    pins: {{alias-b: b}}\n",
            entry("b")
        ),
    )
    .expect("write");
    std::fs::write(
        conf.path().join("20-selectors.yml"),
        "selectors:\n  pick: {strategy: pin, targets: [b]}\napiKeys: []\n",
    )
    .expect("write");
    std::fs::write(conf.path().join("ignored.txt"), "not: [yaml").expect("write");
    let main = format!(
        "startPort: {}\nhealthCheckTimeout: 15\nmodels:\n{}",
        free_port_range(6),
        model_entry("a")
    );
    let daemon = Daemon::start_with_args(&main, &["--config-dir", &conf_path, "--watch-config"]);
    assert_eq!(served(&daemon, "a").0, "a");
    let (model, pid_b) = served(&daemon, "b");
    assert_eq!(model, "b");
    assert_eq!(served(&daemon, "pick"), ("b".to_string(), pid_b));
    assert!(get_json(&daemon.url("/api/profiles"))["profiles"][0]["id"] == "p");

    // --watch-config sees a new file in the directory.
    std::fs::write(
        conf.path().join("30-c.yaml"),
        format!("models:\n{}", entry("c")),
    )
    .expect("write");
    wait_for("c to be added", Duration::from_secs(15), || {
        listed(&daemon, "c").map(|_| ())
    });
    let (model, pid_c) = served(&daemon, "c");
    assert_eq!(model, "c");

    // SIGHUP reloads the whole set too (the watcher may get there first; either way d appears).
    std::fs::write(
        conf.path().join("40-d.yaml"),
        format!("models:\n{}", entry("d")),
    )
    .expect("write");
    kill(daemon.pid(), libc::SIGHUP);
    wait_for("d to be added", Duration::from_secs(15), || {
        listed(&daemon, "d").map(|_| ())
    });

    // A file that defines a model again is rejected, naming both files; the old set serves.
    std::fs::write(
        conf.path().join("50-dup.yaml"),
        format!("models:\n{}", entry("b")),
    )
    .expect("write");
    let reply = post_raw(&daemon.url("/api/config/reload"), "application/json", b"");
    assert_eq!(reply.status, 400, "{}", reply.body);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(&format!("{conf_path}/50-dup.yaml:2:3: models.b: 'b' is defined in more than one file; already set in {conf_path}/10-b.yaml:2")),
        "{message}"
    );
    assert_eq!(served(&daemon, "c"), ("c".to_string(), pid_c));
    assert!(listed(&daemon, "d").is_some());
    std::fs::remove_file(conf.path().join("50-dup.yaml")).expect("remove");

    // --check-config takes the same flags, alone or together, Go style too.
    let check = |args: &[&str]| {
        std::process::Command::new(SWAPD)
            .args(args)
            .output()
            .expect("run swapd")
    };
    let output = check(&["-check-config", "-config-dir", &conf_path]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("3 model(s)"));
    let config_file = daemon.dir.path().join("config.yaml");
    let config_file = config_file.to_str().expect("utf-8");
    let output = check(&[
        "--check-config",
        "--config",
        config_file,
        "--config-dir",
        &conf_path,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("4 model(s)"));
    // A scalar that differs between files.
    std::fs::write(conf.path().join("60-port.yaml"), "startPort: 1\n").expect("write");
    let output = check(&[
        "--check-config",
        "--config",
        config_file,
        "--config-dir",
        &conf_path,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{conf_path}/60-port.yaml:1:1: startPort: 1 differs from the earlier value"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("already set in {config_file}:1")),
        "{stderr}"
    );
    // The file may not also be inside the directory.
    let inside = conf.path().join("10-b.yaml");
    let output = check(&[
        "--check-config",
        "--config",
        inside.to_str().expect("utf-8"),
        "--config-dir",
        &conf_path,
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is inside the config directory"));
}

#[test]
fn errors_follow_the_accept_header() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    let body = chat("nope").to_string();
    let ask = |accept: &str| {
        post_with_headers(
            &daemon.url("/v1/chat/completions"),
            &[("Content-Type", "application/json"), ("Accept", accept)],
            body.as_bytes(),
        )
    };
    let plain = ask("text/plain");
    assert_eq!(plain.status, 404);
    assert_eq!(plain.body, "swapd: could not find model 'nope'");
    assert!(plain
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("text/plain")));
    let html = ask("text/html,application/xhtml+xml");
    assert_eq!(html.status, 404);
    assert_eq!(
        html.body,
        "<html><body><h1>swapd</h1><p>could not find model &#39;nope&#39;</p></body></html>"
    );
    let json = ask("application/json");
    assert_eq!(json.status, 404);
    assert_eq!(
        json.json()["error"]["message"],
        "could not find model 'nope'"
    );
    // Without an Accept header the JSON envelope stays the default.
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("nope"));
    assert_eq!(reply.json()["error"]["code"], "model_not_found");
    // The model still serves normally.
    assert_eq!(served(&daemon, "a").0, "a");
}

#[test]
fn warm_joins_a_starting_target_and_spillover_refuses_when_all_are_stopping() {
    let port = free_port_range(3);
    let config = [
        format!("startPort: {port}\nhealthCheckTimeout: 15\nmodels:\n"),
        "  a:\n    cmd: {FAKE} --port ${PORT} --model a --pid-file {DIR}/a.pid\n".to_string(),
        "  slow:\n    cmd: {FAKE} --port ${PORT} --model slow --startup-delay-ms 1500 --pid-file {DIR}/slow.pid\n".to_string(),
        "  stubborn:\n    cmd: {FAKE} --port ${PORT} --model stubborn --ignore-sigterm --pid-file {DIR}/stubborn.pid\n    unloadTimeout: 3\n".to_string(),
        "selectors:\n  warmest:\n    strategy: warm\n    targets: [a, slow]\n  solo:\n    strategy: spillover\n    targets: [stubborn]\n".to_string(),
    ]
    .concat();
    let daemon = Daemon::start(&config);
    // Start `slow` in the background; while it is starting, warm picks it over cold `a`.
    let url = daemon.url("/v1/chat/completions");
    let background = std::thread::spawn(move || post_json(&url, &chat("slow")));
    wait_for("slow to be starting", Duration::from_secs(10), || {
        daemon
            .running_states()
            .contains(&("slow".to_string(), "starting".to_string()))
            .then_some(())
    });
    assert_eq!(served(&daemon, "warmest").0, "slow");
    assert_eq!(background.join().expect("join").status, 200);
    assert!(daemon.pid_of("a").is_none(), "a was never started");

    // spillover: the only target is stopping (it ignores SIGTERM), so nothing is available.
    let (model, pid) = served(&daemon, "solo");
    assert_eq!(model, "stubborn");
    let unload_url = daemon.url("/api/models/unload/stubborn");
    let unloading = std::thread::spawn(move || post_raw(&unload_url, "application/json", b""));
    wait_for("stubborn to be stopping", Duration::from_secs(10), || {
        daemon
            .running_states()
            .contains(&("stubborn".to_string(), "stopping".to_string()))
            .then_some(())
    });
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("solo"));
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("selector 'solo' has no target available"),
        "{}",
        reply.body
    );
    assert_eq!(unloading.join().expect("join").status, 200);
    wait_gone(pid);
    // Once stopped it is cold again: spillover starts it.
    let (model, new_pid) = served(&daemon, "solo");
    assert_eq!(model, "stubborn");
    assert_ne!(new_pid, pid);
}
