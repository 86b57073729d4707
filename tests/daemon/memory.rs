//! Memory-aware scheduling (`swapd.memory`) through the real daemon: fake upstreams hold real
//! resident memory (`--hold-mib`), the sampler measures it, and budgets decide what co-resides,
//! what is evicted, what waits and what is refused. The GPU path runs against a stand-in
//! `nvidia-smi` script on `PATH`.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const MIB: u64 = 1 << 20;

/// A model entry: a fake upstream holding `hold` MiB, with an optional declared RAM footprint.
fn model(id: &str, port: u16, hold: u64, declared_ram_mib: Option<u64>, marker: &str) -> String {
    let mut text = format!(
        "  {id}:\n    cmd: {{FAKE}} --port {port} --model {id} --hold-mib {hold} --request-log {marker}/{id}.log\n    proxy: http://127.0.0.1:{port}\n"
    );
    if let Some(mib) = declared_ram_mib {
        text.push_str(&format!("    swapd:\n      memory: {{ram: {mib}MiB}}\n"));
    }
    text
}

fn memory_config(budget: &str, state_file: &Path, models: &[String]) -> String {
    format!(
        "healthCheckTimeout: 15\nswapd:\n  memory:\n    ram: {budget}\n    reserve: 16MiB\n    stateFile: {}\nmodels:\n{}",
        state_file.display(),
        models.concat()
    )
}

/// Kills, on drop, every process whose command line names `marker` (the fake upstreams of a
/// test whose commands do not mention the daemon's own directory).
struct KillMarked(String);

impl Drop for KillMarked {
    fn drop(&mut self) {
        for pid in pids_with_cmdline(&self.0) {
            kill(pid, libc::SIGKILL);
        }
    }
}

fn entry<'a>(running: &'a Value, model: &str) -> Option<&'a Value> {
    running["running"]
        .as_array()?
        .iter()
        .find(|e| e["model"] == model)
}

fn metric(daemon: &Daemon, line_prefix: &str) -> Option<f64> {
    get(&daemon.url("/metrics"))
        .body
        .lines()
        .find_map(|line| line.strip_prefix(line_prefix))
        .and_then(|rest| rest.trim().parse().ok())
}

fn chat_ok(daemon: &Daemon, model: &str) {
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat(model));
    assert_eq!(reply.status, 200, "{model}: {}", reply.body);
}

#[test]
fn two_models_that_fit_coreside_and_a_third_evicts_the_least_recently_used() {
    let dir = TempDir::new("memory-fit");
    let marker = dir.path().to_str().expect("utf-8").to_string();
    let _guard = KillMarked(format!("{marker}/"));
    let ports = free_port_range(3);
    let models = [
        model("a", ports, 16, Some(40), &marker),
        model("b", ports + 1, 16, Some(40), &marker),
        model("c", ports + 2, 16, Some(40), &marker),
    ];
    let daemon = Daemon::start(&memory_config(
        "100MiB",
        &dir.path().join("state.json"),
        &models,
    ));
    chat_ok(&daemon, "a");
    chat_ok(&daemon, "b");
    daemon.wait_running(&["a", "b"]);
    // The sampler measures each process group: at least the 16 MiB each one holds.
    wait_for("observed RAM of a and b", Duration::from_secs(15), || {
        let running = daemon.running();
        ["a", "b"]
            .iter()
            .all(|m| {
                entry(&running, m)
                    .and_then(|e| e["memory"]["observed"]["ram"].as_u64())
                    .is_some_and(|bytes| bytes >= 16 * MIB)
            })
            .then_some(())
    });
    let running = daemon.running();
    let a = entry(&running, "a").expect("a runs");
    assert_eq!(a["memory"]["footprint"]["ram"], 40 * MIB);
    assert_eq!(a["memory"]["source"]["ram"], "declared");
    assert_eq!(running["memory"]["budget"]["ram"], 100 * MIB);

    // a was used before b, so a is the least recently used: c (40 MiB) evicts it, only it.
    let pid_b = daemon.pid_of("b").expect("b has a pid");
    chat_ok(&daemon, "c");
    daemon.wait_running(&["b", "c"]);
    assert_eq!(daemon.pid_of("b"), Some(pid_b), "b kept its process");
    assert_eq!(
        metric(&daemon, "swapd_evictions_total{reason=\"memory\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&daemon, "swapd_memory_budget_bytes{kind=\"ram\"}"),
        Some((100 * MIB) as f64)
    );
    assert!(
        metric(
            &daemon,
            "swapd_model_memory_bytes{model=\"b\",kind=\"ram\"}"
        )
        .is_some_and(|bytes| bytes >= (16 * MIB) as f64),
        "{}",
        get(&daemon.url("/metrics")).body
    );
}

/// Reads a streamed response until its terminating chunk.
fn read_stream(stream: &mut std::net::TcpStream) -> String {
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

#[test]
fn a_busy_model_is_never_evicted_and_the_newcomer_waits_until_it_drains() {
    let dir = TempDir::new("memory-busy");
    let marker = dir.path().to_str().expect("utf-8").to_string();
    let _guard = KillMarked(format!("{marker}/"));
    let ports = free_port_range(4);
    let models = [
        model("a", ports, 0, Some(40), &marker),
        model("b", ports + 1, 0, Some(40), &marker),
        model("c", ports + 2, 0, Some(70), &marker),
        model("big", ports + 3, 0, Some(200), &marker),
    ];
    let daemon = Daemon::start(&memory_config(
        "100MiB",
        &dir.path().join("state.json"),
        &models,
    ));
    chat_ok(&daemon, "a");
    chat_ok(&daemon, "b");
    daemon.wait_running(&["a", "b"]);
    // a (the least recently used) is busy with a stream whose upstream holds its last event
    // until the gate file exists: in flight for as long as the test needs, whatever the load.
    let gate = dir.path().join("gate");
    let mut slow = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "a", "stream": true, "stream_chunks": 2,
                "gate_file": gate.to_str().expect("utf-8")}),
    );
    let mut started = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&started).contains("tok1") {
        let read = slow.read(&mut buffer).expect("read a's stream");
        assert!(
            read > 0,
            "a's stream ended: {}",
            String::from_utf8_lossy(&started)
        );
        started.extend_from_slice(&buffer[..read]);
    }
    assert!(
        started.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&started)
    );
    let addr = daemon.addr.clone();
    let newcomer = std::thread::spawn(move || {
        post_json(&format!("http://{addr}/v1/chat/completions"), &chat("c"))
    });
    // c (70 MiB) cannot fit next to the busy a (40 MiB) even with b gone: it waits, and b is
    // not evicted for nothing.
    wait_for("c to be queued", Duration::from_secs(30), || {
        let running = daemon.running();
        entry(&running, "c").is_none().then_some(())?;
        // Queued requests are visible in the metrics gauge.
        metric(&daemon, "swapd_queue_depth{model=\"c\"}")
            .filter(|queued| *queued >= 1.0)
            .map(|_| ())
    });
    let states = daemon.running_states();
    assert!(
        states.contains(&("a".to_string(), "ready".to_string()))
            && states.contains(&("b".to_string(), "ready".to_string())),
        "a (busy) and b stay while c waits: {states:?}"
    );
    // Behind the waiting c, a model that can never fit is still refused at once.
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("big"));
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        entry(&daemon.running(), "c").is_none(),
        "c is still waiting for a to drain"
    );
    std::fs::write(&gate, b"open").expect("open the gate");
    let body = read_stream(&mut slow);
    assert!(body.contains("[DONE]"), "a's stream was cut: {body}");
    let reply = newcomer.join().expect("the newcomer thread");
    assert_eq!(reply.status, 200, "{}", reply.body);
    daemon.wait_running(&["c"]);
    assert_eq!(
        metric(&daemon, "swapd_memory_wait_seconds_count"),
        Some(1.0)
    );
}

#[test]
fn an_oversized_model_gets_a_503_at_once() {
    let dir = TempDir::new("memory-big");
    let marker = dir.path().to_str().expect("utf-8").to_string();
    let _guard = KillMarked(format!("{marker}/"));
    let ports = free_port_range(2);
    let models = [
        model("a", ports, 0, Some(40), &marker),
        model("big", ports + 1, 0, Some(200), &marker),
    ];
    let daemon = Daemon::start(&memory_config(
        "100MiB",
        &dir.path().join("state.json"),
        &models,
    ));
    chat_ok(&daemon, "a");
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("big"));
    assert_eq!(reply.status, 503, "{}", reply.body);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("'big'"), "{message}");
    assert!(message.contains("200.0 MiB"), "{message}");
    assert!(message.contains("100.0 MiB"), "{message}");
    // Nothing was evicted for it.
    daemon.wait_running(&["a"]);
}

#[test]
fn a_learned_footprint_is_reused_after_a_restart() {
    let dir = TempDir::new("memory-learned");
    let marker = dir.path().to_str().expect("utf-8").to_string();
    let _guard = KillMarked(format!("{marker}/"));
    let state_file = dir.path().join("footprints.json");
    let ports = free_port_range(2);
    // a declares nothing and holds 64 MiB; b declares 32 MiB.
    let models = [
        model("a", ports, 64, None, &marker),
        model("b", ports + 1, 0, Some(32), &marker),
    ];
    let config = memory_config("200MiB", &state_file, &models);

    let mut first = Daemon::start(&config);
    chat_ok(&first, "b");
    first.wait_running(&["b"]);
    // Unknown footprint: a starts only alone, so b goes.
    chat_ok(&first, "a");
    first.wait_running(&["a"]);
    let learned = wait_for(
        "a's footprint in the state file",
        Duration::from_secs(15),
        || {
            let text = std::fs::read_to_string(&state_file).ok()?;
            let value: Value = serde_json::from_str(&text).ok()?;
            value["models"]["a"]["ram"]
                .as_u64()
                .filter(|bytes| *bytes >= 64 * MIB)
        },
    );
    assert!(
        learned < 200 * MIB,
        "a fake upstream is not that big: {learned}"
    );
    assert_eq!(first.terminate(), Some(0));

    let second = Daemon::start(&config);
    chat_ok(&second, "b");
    second.wait_running(&["b"]);
    // Now a's footprint is known from the file: it fits next to b and nothing is evicted.
    chat_ok(&second, "a");
    second.wait_running(&["a", "b"]);
    let running = second.running();
    let a = entry(&running, "a").expect("a runs");
    assert_eq!(a["memory"]["source"]["ram"], "learned", "{a}");
    assert!(
        a["memory"]["learned"]["ram"].as_u64() >= Some(64 * MIB),
        "{a}"
    );
}

#[test]
fn models_that_outgrow_their_footprints_evict_the_least_recently_used_idle_one() {
    let dir = TempDir::new("memory-growth");
    let marker = dir.path().to_str().expect("utf-8").to_string();
    let _guard = KillMarked(format!("{marker}/"));
    let ports = free_port_range(2);
    // Each declares 10 MiB but holds 40: together they fit the 64 MiB budget on paper, and
    // exceed it (plus the 16 MiB reserve) once measured.
    let models = [
        model("a", ports, 40, Some(10), &marker),
        model("b", ports + 1, 40, Some(10), &marker),
    ];
    let daemon = Daemon::start(&memory_config(
        "64MiB",
        &dir.path().join("state.json"),
        &models,
    ));
    chat_ok(&daemon, "a");
    chat_ok(&daemon, "b");
    daemon.wait_running(&["b"]);
    assert_eq!(
        metric(&daemon, "swapd_evictions_total{reason=\"memory\"}"),
        Some(1.0)
    );
    let log = get(&daemon.url("/logs")).body;
    assert!(
        log.contains("stopping the least recently used idle model a"),
        "{log}"
    );
}

#[test]
fn explicit_groups_keep_their_rules_on_top_of_memory() {
    let dir = TempDir::new("memory-groups");
    let marker = dir.path().to_str().expect("utf-8").to_string();
    let _guard = KillMarked(format!("{marker}/"));
    let ports = free_port_range(4);
    let models = [
        model("a", ports, 0, Some(10), &marker),
        model("b", ports + 1, 0, Some(10), &marker),
        model("c", ports + 2, 0, Some(10), &marker),
        model("solo", ports + 3, 0, Some(10), &marker),
    ];
    let mut config = memory_config("100MiB", &dir.path().join("state.json"), &models);
    config.push_str(
        "groups:\n  pair:\n    swap: true\n    exclusive: false\n    members: [a, b]\n  alone:\n    members: [solo]\n",
    );
    let daemon = Daemon::start(&config);
    chat_ok(&daemon, "a");
    chat_ok(&daemon, "c");
    daemon.wait_running(&["a", "c"]);
    // Everything would fit, but the pair swaps its members: b replaces a, c stays.
    chat_ok(&daemon, "b");
    daemon.wait_running(&["b", "c"]);
    // An exclusive group (the default for explicit groups) still unloads the others.
    chat_ok(&daemon, "solo");
    daemon.wait_running(&["solo"]);
    assert_eq!(
        metric(&daemon, "swapd_evictions_total{reason=\"memory\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&daemon, "swapd_evictions_total{reason=\"swap\"}"),
        Some(3.0)
    );
}

#[test]
fn a_reload_switches_memory_aware_scheduling_on_and_off() {
    let dir = TempDir::new("memory-reload");
    let marker = dir.path().to_str().expect("utf-8").to_string();
    let _guard = KillMarked(format!("{marker}/"));
    let ports = free_port_range(2);
    let models = [
        model("a", ports, 0, Some(10), &marker),
        model("b", ports + 1, 0, Some(10), &marker),
    ];
    let with_memory = memory_config("100MiB", &dir.path().join("state.json"), &models);
    let without = format!("healthCheckTimeout: 15\nmodels:\n{}", models.concat());
    let daemon = Daemon::start(&without);
    let reload = |text: &str| {
        let path = daemon.dir.path().join("config.yaml");
        let temporary = daemon.dir.path().join("config.yaml.tmp");
        std::fs::write(&temporary, text.replace("{FAKE}", FAKE)).expect("write config");
        std::fs::rename(&temporary, &path).expect("rename config");
        let reply = post_raw(&daemon.url("/api/config/reload"), "application/json", b"");
        assert_eq!(reply.status, 200, "{}", reply.body);
    };
    // Without swapd.memory, the default group swaps.
    chat_ok(&daemon, "a");
    chat_ok(&daemon, "b");
    daemon.wait_running(&["b"]);
    assert!(daemon.running().get("memory").is_none());
    reload(&with_memory);
    chat_ok(&daemon, "a");
    daemon.wait_running(&["a", "b"]);
    assert_eq!(daemon.running()["memory"]["budget"]["ram"], 100 * MIB);
    // Off again: the next start swaps as before.
    reload(&without);
    daemon.pid_of("a").expect("a still runs");
    assert!(daemon.running().get("memory").is_none());
    let reply = post_raw(&daemon.url("/api/models/unload/b"), "application/json", b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    daemon.wait_running(&["a"]);
    chat_ok(&daemon, "b");
    daemon.wait_running(&["b"]);
}

#[test]
fn a_corrupt_state_file_is_a_warning_not_a_failure() {
    let dir = TempDir::new("memory-corrupt");
    let marker = dir.path().to_str().expect("utf-8").to_string();
    let _guard = KillMarked(format!("{marker}/"));
    let state_file = dir.path().join("footprints.json");
    std::fs::write(&state_file, "{ this is not json").expect("write the state file");
    let ports = free_port_range(1);
    let daemon = Daemon::start(&memory_config(
        "100MiB",
        &state_file,
        &[model("a", ports, 0, Some(10), &marker)],
    ));
    chat_ok(&daemon, "a");
    let log = get(&daemon.url("/logs")).body;
    assert!(
        log.contains("ignoring the learned memory footprints"),
        "{log}"
    );
}

#[test]
fn gpu_memory_per_process_comes_from_nvidia_smi() {
    // A stand-in nvidia-smi: one 24 GiB card, and per-process memory for the pids the fake
    // upstreams wrote to their pid files (5000 MiB for a, 7000 MiB for b), plus a process that
    // is not ours. On a real NVIDIA host the real nvidia-smi prints the same CSV shape.
    let dir = TempDir::new("memory-gpu");
    let marker = dir.path().to_str().expect("utf-8").to_string();
    let _guard = KillMarked(format!("{marker}/"));
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("create bin dir");
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  --query-gpu=*) echo 24576 ;;\n  --query-compute-apps=*)\n    \
         [ -f {marker}/a.pid ] && echo \"$(cat {marker}/a.pid), 5000\"\n    \
         [ -f {marker}/b.pid ] && echo \"$(cat {marker}/b.pid), 7000\"\n    echo \"1, 123\" ;;\n  *) exit 2 ;;\nesac\n"
    );
    let stand_in = bin.join("nvidia-smi");
    std::fs::write(&stand_in, script).expect("write the stand-in");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
    }
    let ports = free_port_range(2);
    let entry_for = |id: &str, port: u16, gpu: &str| {
        format!(
            "  {id}:\n    cmd: {{FAKE}} --port {port} --model {id} --pid-file {marker}/{id}.pid\n    proxy: http://127.0.0.1:{port}\n    swapd:\n      memory: {{ram: 10MiB{gpu}}}\n"
        )
    };
    let config = format!(
        "healthCheckTimeout: 15\nswapd:\n  memory:\n    ram: 1GiB\n    gpu: auto\n    reserve: 1GiB\n    stateFile: {marker}/state.json\nmodels:\n{}{}",
        entry_for("a", ports, ""),
        entry_for("b", ports + 1, ", gpu: 22GiB"),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let daemon = Daemon::start_with_env(&config, &[], &[("PATH", path.as_str())]);
    // gpu: auto = the card's 24 GiB minus the 1 GiB reserve.
    assert_eq!(
        metric(&daemon, "swapd_memory_budget_bytes{kind=\"gpu\"}"),
        Some((23 * 1024 * MIB) as f64)
    );
    // a's GPU footprint is unknown: it starts alone and is measured through nvidia-smi.
    chat_ok(&daemon, "a");
    let gpu = wait_for("a's GPU memory", Duration::from_secs(15), || {
        entry(&daemon.running(), "a")?["memory"]["observed"]["gpu"].as_u64()
    });
    assert_eq!(gpu, 5000 * MIB, "only a's own pid counts");
    // Ollama clients see it too.
    let ps = get_json(&daemon.url("/api/ps"));
    assert_eq!(ps["models"][0]["size_vram"], 5000 * MIB, "{ps}");
    // b declares 22 GiB of GPU memory: with a's 5000 MiB learned, 23 GiB cannot hold both, so
    // the idle a is evicted for memory.
    chat_ok(&daemon, "b");
    daemon.wait_running(&["b"]);
    assert_eq!(
        metric(&daemon, "swapd_evictions_total{reason=\"memory\"}"),
        Some(1.0)
    );
}
