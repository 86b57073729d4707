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
