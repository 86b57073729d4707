//! Peers: a front swapd routing to other servers (`peers:`), with fake-upstream processes (and
//! other swapds) standing in for the peer hosts and reporting what they received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// A fake-upstream started on its own, acting as a peer host. Killed by pid on drop.
struct FakePeer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl FakePeer {
    fn start(model: &str) -> FakePeer {
        let dir = TempDir::new("peer");
        let log = dir.path().join("requests.jsonl");
        let mut child = Command::new(FAKE)
            .args(["--port", "0", "--model", model, "--request-log"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-upstream");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("fake-upstream: listening on 127.0.0.1:") {
                    let _ = tx.send(port.trim().parse::<u16>().expect("port number"));
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fake-upstream did not start");
            }
        };
        FakePeer {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request the peer received, oldest first.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("request log line is JSON"))
            .collect()
    }

    /// The last chat request the peer received (the reachability checker's GETs aside).
    fn last_post(&self) -> Value {
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r["method"] == "POST")
            .expect("the peer received a POST")
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        kill(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn front_config(local: &[&str], local_keys: &str, peers: &str) -> String {
    let mut config = simple_config(local, local_keys, "");
    config.push_str("peers:\n");
    config.push_str(peers);
    config
}

#[test]
fn fqn_and_unique_bare_names_reach_the_peer_under_its_own_name() {
    let one = FakePeer::start("served-by-one");
    let two = FakePeer::start("served-by-two");
    let front = Daemon::start(&front_config(
        &["local"],
        "",
        &format!(
            "  one: {{proxy: '{}', models: [m1, shared]}}\n  two: {{proxy: '{}/', models: [m2, shared]}}\n",
            one.url(),
            two.url()
        ),
    ));

    let reply = post_json(&front.url("/v1/chat/completions"), &chat("one/m1"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = reply.json();
    assert_eq!(echo["model_served"], "served-by-one");
    assert_eq!(
        echo["request_body"]["model"], "m1",
        "FQN rewritten to the bare name"
    );
    assert_eq!(
        echo["path"], "/v1/chat/completions",
        "path appended to the peer URL"
    );
    assert_eq!(
        echo["headers"]["host"],
        format!("127.0.0.1:{}", one.port),
        "Host rewritten to the peer's"
    );

    // A bare name that exactly one peer lists goes there, body untouched.
    let echo = post_json(&front.url("/v1/chat/completions"), &chat("m2")).json();
    assert_eq!(echo["model_served"], "served-by-two");
    assert_eq!(echo["request_body"]["model"], "m2");

    // A bare name two peers list is ambiguous: no route.
    let reply = post_json(&front.url("/v1/chat/completions"), &chat("shared"));
    assert_eq!(reply.status, 404, "{}", reply.body);
    let echo = post_json(&front.url("/v1/chat/completions"), &chat("two/shared")).json();
    assert_eq!(echo["model_served"], "served-by-two");
    assert_eq!(echo["request_body"]["model"], "shared");

    // Other endpoints route the same way (path kept, model rewritten).
    let echo = post_json(
        &front.url("/v1/embeddings"),
        &json!({"model": "one/m1", "input": "x"}),
    )
    .json();
    assert_eq!(echo["path"], "/v1/embeddings");
    assert_eq!(echo["request_body"]["model"], "m1");
    // Nothing was started locally for any of this.
    assert!(
        front.children().is_empty(),
        "peer requests start no local model"
    );
}

#[test]
fn local_ids_and_aliases_take_precedence_over_bare_peer_names() {
    let peer = FakePeer::start("served-by-peer");
    let front = Daemon::start(&front_config(
        &["m1"],
        "    aliases: [nick]\n",
        &format!(
            "  p: {{proxy: '{}', models: [m1, nick, other]}}\n",
            peer.url()
        ),
    ));
    let echo = post_json(&front.url("/v1/chat/completions"), &chat("m1")).json();
    assert_eq!(
        echo["model_served"], "m1",
        "local id wins over the peer's bare name"
    );
    let echo = post_json(&front.url("/v1/chat/completions"), &chat("nick")).json();
    assert_eq!(echo["model_served"], "m1", "local alias wins");
    let echo = post_json(&front.url("/v1/chat/completions"), &chat("p/m1")).json();
    assert_eq!(
        echo["model_served"], "served-by-peer",
        "the FQN still reaches the peer"
    );
    let echo = post_json(&front.url("/v1/chat/completions"), &chat("other")).json();
    assert_eq!(echo["model_served"], "served-by-peer");
}

#[test]
fn an_fqn_that_is_also_a_local_name_is_a_load_error_naming_both() {
    let dir = TempDir::new("peers-collision");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "models:\n  p/m:\n    cmd: srv --port ${PORT}\npeers:\n  p:\n    proxy: http://127.0.0.1:9\n    models: [m]\n",
    )
    .expect("write");
    let output = Command::new(SWAPD)
        .arg("--config")
        .arg(&path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .expect("run swapd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("peers.p.models[0]"), "{stderr}");
    assert!(
        stderr.contains("'p/m'") && stderr.contains("local model id"),
        "{stderr}"
    );
    assert!(
        stderr.contains("config.yaml:7"),
        "line of the peer model: {stderr}"
    );

    // A valid one is summarised by --check-config.
    std::fs::write(
        &path,
        "models:\n  m:\n    cmd: srv --port ${PORT}\npeers:\n  p:\n    proxy: http://127.0.0.1:9/\n    models: [m, n]\n",
    )
    .expect("write");
    let output = Command::new(SWAPD)
        .arg("--check-config")
        .arg(&path)
        .output()
        .expect("run swapd");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("peer p: http://127.0.0.1:9 → m, n"),
        "{stdout}"
    );
}

#[test]
fn api_key_replaces_credentials_and_the_hop_is_recorded() {
    let keyed = FakePeer::start("keyed");
    let open = FakePeer::start("open");
    let front = Daemon::start(&front_config(
        &["local"],
        "",
        &format!(
            "  keyed: {{proxy: '{}', models: [k], apiKey: peer-secret}}\n  open: {{proxy: '{}', models: [o]}}\n",
            keyed.url(),
            open.url()
        ),
    ));
    let body = chat("keyed/k").to_string();
    let reply = post_with_headers(
        &front.url("/v1/chat/completions"),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer client-token"),
            ("x-api-key", "client-token"),
            ("X-Forwarded-For", "10.9.8.7"),
        ],
        body.as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = keyed.last_post();
    let headers = &seen["headers"];
    assert_eq!(headers["authorization"], "Bearer peer-secret");
    assert_eq!(headers["x-api-key"], "peer-secret");
    assert_eq!(headers["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    let via = headers["via"].as_str().expect("Via sent");
    assert!(via.starts_with("1.1 swapd-"), "{via}");
    assert_eq!(seen["body"]["model"], "k");

    // Without apiKey the client's own credentials pass through.
    let body = chat("o").to_string();
    let reply = post_with_headers(
        &front.url("/v1/chat/completions"),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer client-token"),
        ],
        body.as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = open.last_post();
    assert_eq!(seen["headers"]["authorization"], "Bearer client-token");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
}

#[test]
fn peer_filters_apply_and_use_model_name_does_not_exist_for_peers() {
    let peer = FakePeer::start("filtered");
    let front = Daemon::start(&front_config(
        &["local"],
        "",
        &format!(
            "  p:\n    proxy: '{}'\n    models: [m]\n    filters:\n      stripParams: top_k, model\n      setParams: {{temperature: 0.25}}\n      setParamsByID:\n        p/m: {{max_tokens: 7}}\n",
            peer.url()
        ),
    ));
    let mut request = chat("p/m");
    request["top_k"] = json!(40);
    request["temperature"] = json!(1.0);
    assert_eq!(
        post_json(&front.url("/v1/chat/completions"), &request).status,
        200
    );
    let body = &peer.last_post()["body"];
    assert!(body.get("top_k").is_none(), "stripped: {body}");
    assert_eq!(body["temperature"], 0.25, "setParams");
    assert_eq!(
        body["max_tokens"], 7,
        "setParamsByID keyed by the requested FQN"
    );
    assert_eq!(
        body["model"], "m",
        "model is never stripped; it becomes the peer's name"
    );

    // The bare name does not match the FQN's setParamsByID entry.
    let mut request = chat("m");
    request["top_k"] = json!(40);
    let reply = post_json(&front.url("/v1/chat/completions"), &request);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = &peer.last_post()["body"];
    assert!(body.get("top_k").is_none());
    assert!(body.get("max_tokens").is_none(), "{body}");
}

#[test]
fn a_dead_peer_fails_with_a_502_naming_peer_and_address_and_others_keep_working() {
    let alive = FakePeer::start("alive");
    let port = dead_port();
    let front = Daemon::start(&front_config(
        &["local"],
        "",
        &format!(
            "  gone:\n    proxy: 'http://127.0.0.1:{port}'\n    models: [g]\n    timeouts: {{connect: 1}}\n  alive: {{proxy: '{}', models: [a]}}\n",
            alive.url()
        ),
    ));
    let reply = post_json(&front.url("/v1/chat/completions"), &chat("gone/g"));
    assert_eq!(reply.status, 502, "{}", reply.body);
    let message = reply.json()["error"]["message"]
        .as_str()
        .expect("error envelope")
        .to_string();
    assert!(message.starts_with("peer proxy error:"), "{message}");
    assert!(message.contains("peer 'gone'"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    let reply = post_json(&front.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Reads from `stream` until `needle` has arrived; returns everything read.
fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let read = stream.read(&mut buffer).expect("read the stream");
        assert!(
            read > 0,
            "stream ended before {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn streaming_through_a_peer_arrives_event_by_event() {
    let peer = FakePeer::start("streamer");
    let front = Daemon::start(&front_config(
        &["local"],
        "",
        &format!("  p: {{proxy: '{}', models: [s]}}\n", peer.url()),
    ));
    let gate = front.dir.path().join("gate");
    let mut stream = open_stream(
        &front.addr,
        "/v1/chat/completions",
        &json!({"model": "p/s", "stream": true, "stream_chunks": 3, "stream_interval_ms": 1,
                "gate_file": gate.to_str().expect("utf-8"),
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    // The peer holds its last event until the gate file exists, so seeing the earlier events
    // now proves they were passed on as they came, not buffered to the end.
    let head = read_until(&mut stream, "tok2");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("text/event-stream"));
    assert!(!head.contains("[DONE]"));
    std::fs::write(&gate, b"open").expect("open the gate");
    read_until(&mut stream, "[DONE]");
}

#[test]
fn loading_progress_of_a_peer_swapd_streams_through_the_front() {
    // The peer is a swapd whose model is slow to load and that sends loading progress.
    let peer = Daemon::start(
        &simple_config(&["slow"], "    sendLoadingState: true\n", "")
            .replace("--model slow", "--model slow --startup-delay-ms 1500"),
    );
    let front = Daemon::start(&front_config(
        &["local"],
        "",
        &format!("  gpu: {{proxy: 'http://{}', models: [slow]}}\n", peer.addr),
    ));
    let mut stream = open_stream(
        &front.addr,
        "/v1/chat/completions",
        &json!({"model": "gpu/slow", "stream": true, "stream_chunks": 2,
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    let loading = read_until(&mut stream, "swapd loading model: slow");
    assert!(
        !loading.contains("tok0"),
        "loading text comes before the tokens"
    );
    let head = loading
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert_eq!(
        head.matches("x-accel-buffering: no").count(),
        1,
        "nginx must be told once: {head}"
    );
    read_until(&mut stream, "[DONE]");
}

#[test]
fn a_request_that_loops_back_is_answered_508() {
    // A peer pointing at this very swapd.
    let port = free_port_range(1);
    let listen = format!("127.0.0.1:{port}");
    let front = Daemon::start_with_args(
        &front_config(
            &["local"],
            "",
            &format!("  me: {{proxy: 'http://{listen}', models: [x]}}\n"),
        ),
        &["--listen", &listen],
    );
    let reply = post_json(&front.url("/v1/chat/completions"), &chat("me/x"));
    assert_eq!(reply.status, 508, "{}", reply.body);
    assert!(reply.body.contains("loop detected"), "{}", reply.body);

    // Two swapds naming each other: a → b → a.
    let first = free_port_range(2);
    let (a_listen, b_listen) = (
        format!("127.0.0.1:{first}"),
        format!("127.0.0.1:{}", first + 1),
    );
    let a = Daemon::start_with_args(
        &front_config(
            &["a-local"],
            "",
            &format!("  b: {{proxy: 'http://{b_listen}', models: [ring, b-local]}}\n"),
        ),
        &["--listen", &a_listen],
    );
    let _b = Daemon::start_with_args(
        &front_config(
            &["b-local"],
            "",
            &format!("  a: {{proxy: 'http://{a_listen}', models: [ring]}}\n"),
        ),
        &["--listen", &b_listen],
    );
    let reply = post_json(&a.url("/v1/chat/completions"), &chat("ring"));
    assert_eq!(reply.status, 508, "{}", reply.body);
    assert!(reply.body.contains("loop detected"), "{}", reply.body);
    // A chain that does not loop works: a → b, where the model is local to b.
    let reply = post_json(&a.url("/v1/chat/completions"), &chat("b/b-local"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["model_served"], "b-local");
}

#[test]
// Sets a test hook, which only a build with the feature reads.
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn reachability_is_reported_in_running_metrics_models_and_events() {
    let alive = FakePeer::start("alive");
    let port = dead_port();
    let front = Daemon::start_with_env(
        &front_config(
            &["local"],
            "",
            &format!(
                "  up: {{proxy: '{}', models: [a]}}\n  down: {{proxy: 'http://127.0.0.1:{port}', models: [d]}}\n",
                alive.url()
            ),
        ),
        &[],
        &[("SWAPD_PEER_CHECK_INTERVAL_MS", "200")],
    );
    let peers = wait_for("both peers checked", Duration::from_secs(20), || {
        let running = get_json(&front.url("/running"));
        let peers = running["peers"].clone();
        (peers["up"]["reachable"].is_boolean() && peers["down"]["reachable"].is_boolean())
            .then_some(peers)
    });
    assert_eq!(peers["up"]["reachable"], true);
    assert!(peers["up"]["rttMs"].as_f64().is_some());
    assert_eq!(peers["up"]["proxy"], alive.url());
    assert_eq!(peers["down"]["reachable"], false);
    let error = peers["down"]["lastError"].as_str().expect("last error");
    assert!(error.contains("connection failed"), "{error}");
    // The checker sends its GETs with swapd's Via token, and the checks reach the peer.
    assert!(alive
        .requests()
        .iter()
        .any(|r| r["path"] == "/v1/models" && r["method"] == "GET"));

    assert_eq!(
        post_json(&front.url("/v1/chat/completions"), &chat("up/a")).status,
        200
    );
    assert_eq!(
        post_json(&front.url("/v1/chat/completions"), &chat("d")).status,
        502
    );
    let metrics = get(&front.url("/metrics")).body;
    assert!(
        metrics.contains(&format!(
            "swapd_peer_up{{peer=\"up\",address=\"127.0.0.1:{}\"}} 1",
            alive.port
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "swapd_peer_up{{peer=\"down\",address=\"127.0.0.1:{port}\"}} 0"
    )));
    assert!(metrics.contains("swapd_peer_rtt_seconds{peer=\"up\"}"));
    assert!(
        metrics.contains("swapd_requests_total{model=\"up/a\",peer=\"up\",code=\"200\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("swapd_requests_total{model=\"d\",peer=\"down\",code=\"502\"} 1"));
    assert!(metrics.contains("swapd_request_duration_seconds_count{model=\"up/a\",peer=\"up\"} 1"));

    let models = get_json(&front.url("/v1/models"));
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["down/d", "local", "up/a"]);
    let record = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|m| m["id"] == "up/a")
        .expect("peer model listed");
    assert_eq!(record["owned_by"], "up");
    assert_eq!(record["meta"]["llamaswap"]["type"], "peer");
    assert_eq!(record["meta"]["llamaswap"]["peerID"], "up");

    // /api/events: the first modelStatus frame lists the peer models with their reachability.
    let mut stream = TcpStream::connect(&front.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET /api/events HTTP/1.1\r\nHost: {}\r\n\r\n",
        front.addr
    )
    .expect("write");
    // Entries come in id order and only `up/a` is reachable, so this is the end of it.
    let events = read_until(&mut stream, r#"\"reachable\":true"#);
    assert!(events.contains(r#"\"id\":\"up/a\""#), "{events}");
    assert!(events.contains(r#"\"peerID\":\"up\""#), "{events}");
    assert!(events.contains(r#"\"reachable\":true"#), "{events}");
}

#[test]
fn shutdown_waits_for_an_in_flight_peer_stream() {
    let peer = FakePeer::start("streamer");
    let mut front = Daemon::start(&front_config(
        &["local"],
        "",
        &format!("  p: {{proxy: '{}', models: [s]}}\n", peer.url()),
    ));
    let gate = front.dir.path().join("gate");
    let mut stream = open_stream(
        &front.addr,
        "/v1/chat/completions",
        &json!({"model": "p/s", "stream": true, "stream_chunks": 2, "stream_interval_ms": 1,
                "gate_file": gate.to_str().expect("utf-8"),
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    read_until(&mut stream, "tok1");
    kill(front.pid(), libc::SIGTERM);
    // swapd is now draining; the stream still finishes once the peer sends the rest.
    wait_for(
        "swapd refuses new requests",
        Duration::from_secs(30),
        || {
            let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                post_json(&front.url("/v1/chat/completions"), &chat("p/s"))
            }));
            match reply {
                Ok(reply) if reply.status == 503 => Some(()),
                Err(_) => Some(()), // listener already closed
                _ => None,
            }
        },
    );
    std::fs::write(&gate, b"open").expect("open the gate");
    read_until(&mut stream, "[DONE]");
    assert_eq!(front.terminate(), Some(0));
}

#[test]
fn shutdown_cuts_a_peer_stream_that_outlives_the_shutdown_timeout() {
    let peer = FakePeer::start("streamer");
    let mut config = front_config(
        &["local"],
        "",
        &format!("  p: {{proxy: '{}', models: [s]}}\n", peer.url()),
    );
    config.push_str("swapd:\n  shutdownTimeout: 1\n");
    let mut front = Daemon::start(&config);
    // The gate is never opened: the peer holds the stream's end for as long as the test runs.
    let gate = front.dir.path().join("never");
    let mut stream = open_stream(
        &front.addr,
        "/v1/chat/completions",
        &json!({"model": "p/s", "stream": true, "stream_chunks": 2, "stream_interval_ms": 1,
                "gate_file": gate.to_str().expect("utf-8"),
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    read_until(&mut stream, "tok1");
    kill(front.pid(), libc::SIGTERM);
    // The rest of the stream: swapd must end it (EOF or reset) without the peer's last event;
    // a read that times out (the socket's 30 s) means it was left open.
    let rest = read_to_close(&mut stream);
    assert!(!rest.contains("[DONE]"), "{rest}");
    assert_eq!(front.terminate(), Some(0));
}

#[test]
fn a_reload_adds_and_removes_peers() {
    let peer = FakePeer::start("late");
    let front = Daemon::start(&simple_config(&["local"], "", ""));
    let reply = post_json(&front.url("/v1/chat/completions"), &chat("p/m"));
    assert_eq!(reply.status, 404, "{}", reply.body);

    let path = front.dir.path().join("config.yaml");
    let original = std::fs::read_to_string(&path).expect("read config");
    let with_peer = format!(
        "{original}peers:\n  p: {{proxy: '{}', models: [m]}}\n",
        peer.url()
    );
    std::fs::write(&path, with_peer).expect("write config");
    let reply = post_raw(&front.url("/api/config/reload"), "application/json", b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = post_json(&front.url("/v1/chat/completions"), &chat("p/m")).json();
    assert_eq!(echo["model_served"], "late");
    assert_eq!(echo["request_body"]["model"], "m");

    std::fs::write(&path, original).expect("write config");
    let reply = post_raw(&front.url("/api/config/reload"), "application/json", b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = post_json(&front.url("/v1/chat/completions"), &chat("p/m"));
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(get_json(&front.url("/running")).get("peers").is_none());
}

#[test]
fn selectors_and_profile_pins_may_send_requests_to_peers() {
    let peer = FakePeer::start("remote");
    let mut config = front_config(
        &["local"],
        "",
        &format!("  g: {{proxy: '{}', models: [x]}}\n", peer.url()),
    );
    config.push_str(
        "selectors:\n  far:\n    strategy: pin\n    targets: [g/x, local]\nprofiles:\n  away:\n    pins: {local: x}\n",
    );
    let front = Daemon::start(&config);
    let echo = post_json(&front.url("/v1/chat/completions"), &chat("far")).json();
    assert_eq!(
        echo["model_served"], "remote",
        "the selector's first target"
    );
    assert_eq!(echo["request_body"]["model"], "x");

    let echo = post_json(&front.url("/v1/chat/completions"), &chat("local")).json();
    assert_eq!(echo["model_served"], "local", "no profile active yet");
    let reply = to_put(&front.url("/api/profiles/active"), r#"{"name":"away"}"#);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = post_json(&front.url("/v1/chat/completions"), &chat("local")).json();
    assert_eq!(echo["model_served"], "remote", "pinned to the peer's model");
    assert_eq!(echo["request_body"]["model"], "x");
}

fn to_put(url: &str, body: &str) -> Reply {
    let mut response = agent()
        .put(url)
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .expect("PUT failed at the transport level");
    Reply {
        status: response.status().as_u16(),
        headers: Vec::new(),
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

#[test]
fn upstream_paths_reach_peer_models() {
    let one = FakePeer::start("served-by-one");
    let front = Daemon::start(&front_config(
        &["local"],
        "",
        &format!("  one: {{proxy: '{}', models: [m1, org/m2]}}\n", one.url()),
    ));

    // By FQN: the prefix is stripped and the rest goes to the peer's URL; a JSON body naming
    // some other model goes as it is.
    let reply = post_json(
        &front.url("/upstream/one/m1/v1/chat/completions"),
        &chat("whatever"),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = reply.json();
    assert_eq!(echo["model_served"], "served-by-one");
    assert_eq!(echo["path"], "/v1/chat/completions");
    assert_eq!(echo["request_body"]["model"], "whatever");

    // A body naming the model as the path did is renamed to the peer's own name.
    let echo = post_json(
        &front.url("/upstream/one/m1/v1/chat/completions"),
        &chat("one/m1"),
    )
    .json();
    assert_eq!(echo["request_body"]["model"], "m1");

    // A bare name with a slash that only this peer lists; the query and its escapes kept.
    let reply = get(&front.url("/upstream/org/m2/slots?id=1&x=%2F"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], "/slots?id=1&x=%2F");
    let last = one.requests().pop().expect("the peer got the GET");
    assert_eq!(last["method"], "GET");
    assert!(
        last["headers"]["via"]
            .as_str()
            .is_some_and(|via| via.contains("swapd")),
        "the hop is recorded: {last}"
    );

    // Without the trailing slash: a redirect, as for local models.
    let redirect = raw_exchange(
        &front.addr,
        b"GET /upstream/one/m1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert!(redirect.starts_with("HTTP/1.1 301"), "{redirect}");
    assert!(
        redirect.contains("Location: /upstream/one/m1/\r\n"),
        "{redirect}"
    );

    // A name no peer lists is still a 404.
    assert_eq!(get(&front.url("/upstream/one/nope/health")).status, 404);
}

#[test]
fn ollama_routes_reach_peer_models() {
    let peer = FakePeer::start("served-by-peer");
    let front = Daemon::start(&front_config(
        &["local"],
        "",
        &format!(
            "  gpu:\n    proxy: '{}'\n    models: [big, embedder]\n    apiKey: peer-key\n    filters:\n      setParams: {{temperature: 0.3}}\n",
            peer.url()
        ),
    ));

    // A whole chat answer, by FQN: sent as OpenAI to the peer under the peer's name, with the
    // peer's key and filters, and translated back.
    let reply = post_raw(
        &front.url("/api/chat"),
        "text/plain",
        json!({"model": "gpu/big", "messages": [{"role": "user", "content": "hi"}], "stream": false})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["model"], "gpu/big");
    assert_eq!(answer["message"]["content"], "hello from served-by-peer");
    assert_eq!(answer["done"], true);
    let sent = peer.last_post();
    assert_eq!(sent["path"], "/v1/chat/completions");
    assert_eq!(sent["body"]["model"], "big");
    assert_eq!(sent["body"]["temperature"], 0.3);
    assert_eq!(sent["headers"]["authorization"], "Bearer peer-key");
    assert_eq!(sent["headers"]["content-type"], "application/json");
    assert!(sent["headers"]["via"].is_string(), "{sent}");

    // A bare name only this peer has, with Ollama's `:latest`, streamed as NDJSON.
    let reply = post_json(
        &front.url("/api/generate"),
        &json!({"model": "big:latest", "prompt": "hi"}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let lines: Vec<Value> = reply
        .body
        .lines()
        .map(|line| serde_json::from_str(line).expect("an NDJSON line"))
        .collect();
    assert!(lines.len() >= 2, "{}", reply.body);
    assert_eq!(lines.last().expect("a last line")["done"], true);
    assert_eq!(peer.last_post()["body"]["stream"], true);

    // Embeddings, and an empty (load-only) request, which a peer needs nothing for.
    let reply = post_json(
        &front.url("/api/embed"),
        &json!({"model": "gpu/embedder", "input": "x"}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(peer.last_post()["path"], "/v1/embeddings");
    assert_eq!(peer.last_post()["body"]["model"], "embedder");
    assert!(reply.json()["embeddings"][0].is_array(), "{}", reply.body);
    let reply = post_json(&front.url("/api/chat"), &json!({"model": "gpu/big"}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["done_reason"], "load");

    // Listed by /api/tags and described by /api/show.
    let tags = get_json(&front.url("/api/tags"));
    let names: Vec<&str> = tags["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|model| model["name"].as_str())
        .collect();
    assert!(
        names.contains(&"gpu/big:latest") && names.contains(&"gpu/embedder:latest"),
        "{names:?}"
    );
    let show = post_json(&front.url("/api/show"), &json!({"model": "gpu/big"}));
    assert_eq!(show.status, 200, "{}", show.body);
    assert!(show.json()["modelfile"]
        .as_str()
        .unwrap_or("")
        .contains("gpu"));
    assert!(
        front.children().is_empty(),
        "peer requests start no local model"
    );
}

#[test]
fn websocket_upgrades_reach_peer_models() {
    let peer = FakePeer::start("served-by-peer");
    let front = Daemon::start(&front_config(
        &["local"],
        "",
        &format!(
            "  one: {{proxy: '{}', models: [m1], apiKey: peer-key}}\n",
            peer.url()
        ),
    ));
    let (mut session, head, early) =
        crate::upgrade::upgrade(&front.addr, "/upstream/one/m1/ws?x=1");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("X-Upgraded-Target: /ws?x=1\r\n"), "{head}");
    crate::upgrade::read_exactly(&mut session, early, b"welcome\n");
    session.write_all(b"over the hop").expect("send");
    crate::upgrade::read_exactly(&mut session, Vec::new(), b"over the hop");
    // The handshake went with the headers of any peer request.
    let sent = peer
        .requests()
        .into_iter()
        .find(|r| r["path"] == "/ws?x=1")
        .expect("the peer got the upgrade");
    assert_eq!(sent["headers"]["authorization"], "Bearer peer-key");
    assert_eq!(sent["headers"]["upgrade"], "echo");
    assert!(sent["headers"]["via"].is_string(), "{sent}");
    assert!(front.children().is_empty(), "no local model started");
}
