//! The proxy surface through the daemon: routes, streaming, rewrites, errors, auth, CORS,
//! passthrough, multipart, and client disconnects.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

#[test]
fn health_needs_no_key_and_everything_else_does() {
    let daemon = Daemon::start(&simple_config(&["a"], "", "apiKeys: [sk-one, sk-two]"));
    for path in ["/health", "/wol-health"] {
        let health = get(&daemon.url(path));
        assert_eq!((health.status, health.body.as_str()), (200, "OK"), "{path}");
    }
    // `/upstream` alone sends a browser to the model list (no key needed for a redirect).
    let redirect = raw_exchange(
        &daemon.addr,
        b"GET /upstream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert!(redirect.starts_with("HTTP/1.1 302"), "{redirect}");
    assert!(redirect.contains("Location: /ui/models\r\n"), "{redirect}");
    // No icon, and no key asked for it (a browser would show a login dialog).
    let icon = get(&daemon.url("/favicon.ico"));
    assert_eq!((icon.status, icon.body.as_str()), (204, ""));
    for path in [
        "/v1/models",
        "/running",
        "/logs",
        "/logs/stream",
        "/api/version",
        "/upstream/a/health",
        "/comfyui/",
    ] {
        let reply = get(&daemon.url(path));
        assert_eq!(reply.status, 401, "{path} answered without a key");
        assert_eq!(reply.json()["error"]["type"], "authentication_error");
    }
    let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
    assert_eq!(reply.status, 401);
    let wrong = get_with_headers(
        &daemon.url("/v1/models"),
        &[("Authorization", "Bearer sk-nope")],
    );
    assert_eq!(wrong.status, 401);
    let bearer = get_with_headers(
        &daemon.url("/v1/models"),
        &[("Authorization", "Bearer sk-two")],
    );
    assert_eq!(bearer.status, 200);
    let x_api_key = get_with_headers(&daemon.url("/v1/models"), &[("x-api-key", "sk-one")]);
    assert_eq!(x_api_key.status, 200);
    // Basic with the key as password: "user:sk-one" in base64.
    let basic = get_with_headers(
        &daemon.url("/v1/models"),
        &[("Authorization", "Basic dXNlcjpzay1vbmU=")],
    );
    assert_eq!(basic.status, 200);
    let chat_reply = post_with_headers(
        &daemon.url("/v1/chat/completions"),
        &[
            ("Authorization", "Bearer sk-one"),
            ("Content-Type", "application/json"),
        ],
        chat("a").to_string().as_bytes(),
    );
    assert_eq!(chat_reply.status, 200, "{}", chat_reply.body);
    let logs = get_with_headers(&daemon.url("/logs"), &[("x-api-key", "sk-one")]);
    assert!(
        !logs.body.contains("sk-one"),
        "keys must never appear in logs"
    );
}

#[test]
fn cors_preflight_on_any_path() {
    let daemon = Daemon::start(&simple_config(&["a"], "", "apiKeys: [k]"));
    let reply = to_options(&daemon.url("/v1/chat/completions"));
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert!(reply
        .header("access-control-allow-methods")
        .unwrap_or("")
        .contains("POST"));
}

fn to_options(url: &str) -> Reply {
    let response = agent()
        .options(url)
        .header(
            "Access-Control-Request-Headers",
            "content-type, authorization",
        )
        .call()
        .expect("options");
    Reply {
        status: response.status().as_u16(),
        headers: response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: String::new(),
    }
}

#[test]
fn every_json_route_family_reaches_the_model() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/rerank",
        "/v1/reranking",
        "/rerank",
        "/reranking",
        "/infill",
        "/completion",
        "/v1/audio/speech",
        "/v1/images/generations",
    ] {
        let reply = post_json(&daemon.url(path), &chat("a"));
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert_eq!(reply.json()["path"], path);
    }
    let reply = post_json(&daemon.url("/v/chat/completions"), &chat("a"));
    assert_eq!(
        reply.json()["path"],
        "/chat/completions",
        "the /v prefix is stripped"
    );
    // A JSON body without a JSON content type still routes.
    let reply = post_raw(
        &daemon.url("/v1/chat/completions"),
        "text/plain",
        chat("a").to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Query routes.
    let reply = get(&daemon.url("/props?model=a"));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/props?model=a");
    let reply = get(&daemon.url("/v1/audio/voices?model=a"));
    assert_eq!(reply.status, 200);
}

#[test]
fn error_statuses_use_the_openai_envelope() {
    let daemon = Daemon::start(&simple_config(&["a"], "", "swapd:\n  maxBodyBytes: 1000\n"));
    let cases: Vec<(Reply, u16)> = vec![
        (
            post_json(&daemon.url("/v1/chat/completions"), &chat("nope")),
            404,
        ),
        (
            post_json(
                &daemon.url("/v1/chat/completions"),
                &json!({"messages": []}),
            ),
            400,
        ),
        (
            post_json(&daemon.url("/v1/chat/completions"), &json!({"model": 5})),
            400,
        ),
        (
            post_raw(
                &daemon.url("/v1/chat/completions"),
                "application/json",
                b"{not json",
            ),
            400,
        ),
        (
            post_raw(
                &daemon.url("/v1/chat/completions"),
                "application/json",
                b"\xff\xfe\x00",
            ),
            400,
        ),
        (
            post_raw(
                &daemon.url("/v1/chat/completions"),
                "application/json",
                &vec![b' '; 5000],
            ),
            413,
        ),
        (get(&daemon.url("/no/such/route")), 404),
    ];
    for (reply, status) in cases {
        assert_eq!(reply.status, status, "{}", reply.body);
        let body = reply.json();
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(body["error"]["type"].is_string());
    }
    // And the daemon still serves.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
}

#[test]
fn models_list_has_llama_swap_record_shape() {
    let mut config = simple_config(&["b", "a", "hidden"], "", "includeAliasesInList: true");
    config = config.replace(
        "--model a --pid-file {DIR}/a.pid\n",
        "--model a --pid-file {DIR}/a.pid\n    aliases: [alpha]\n    name: Model A\n    description: the first\n    metadata:\n      size: 7\n",
    );
    config = config.replace(
        "--model hidden --pid-file {DIR}/hidden.pid\n",
        "--model hidden --pid-file {DIR}/hidden.pid\n    unlisted: true\n",
    );
    // Capabilities render into the record and replace metadata keys of the same names.
    config = config.replace(
        "--model b --pid-file {DIR}/b.pid\n",
        "--model b --pid-file {DIR}/b.pid\n    capabilities:\n      in: [text, image]\n      out: [text]\n      tools: true\n      context: 4096\n    metadata:\n      context_length: 1\n      keep: yes\n",
    );
    let daemon = Daemon::start(&config);
    let list = get_json(&daemon.url("/v1/models"));
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, vec!["a", "alpha", "b"]);
    let a = &list["data"][0];
    assert_eq!(a["object"], "model");
    assert_eq!(a["owned_by"], "swapd");
    assert_eq!(a["name"], "Model A");
    assert_eq!(a["description"], "the first");
    assert_eq!(a["meta"]["llamaswap"]["size"], 7);
    assert_eq!(a["status"]["value"], "unloaded");
    assert!(a["created"].as_u64().is_some());
    assert!(a.get("capabilities").is_none() && a["meta"].get("n_ctx").is_none());
    let b = &list["data"][2];
    assert_eq!(b["id"], "b");
    assert_eq!(b["architecture"]["modality"], "text+image->text");
    assert_eq!(
        b["capabilities"],
        json!({"vision": true, "function_calling": true})
    );
    assert_eq!(b["supported_parameters"], json!(["tools", "tool_choice"]));
    assert_eq!(b["context_length"], 4096);
    assert_eq!(b["meta"]["n_ctx"], 4096);
    assert_eq!(b["meta"]["llamaswap"]["keep"], "yes");
    assert!(b["meta"]["llamaswap"].get("context_length").is_none());
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("alpha")).status,
        200
    );
    let list = get_json(&daemon.url("/models"));
    assert_eq!(list["data"][0]["status"]["value"], "loaded");
    // Unlisted models still route.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("hidden")).status,
        200
    );
}

#[test]
fn rewrites_use_model_name_and_filters() {
    let config = simple_config(&["a"], "", "").replace(
        "--model a --pid-file {DIR}/a.pid\n",
        "--model a --pid-file {DIR}/a.pid\n    useModelName: upstream-a\n    filters:\n      stripParams: \"top_p, model\"\n      setParams:\n        temperature: 0.25\n      setParamsByID:\n        a-think:\n          top_k: 20\n",
    );
    let daemon = Daemon::start(&config);
    let reply = post_json(
        &daemon.url("/v1/chat/completions"),
        &json!({"model": "a-think", "top_p": 0.9, "messages": []}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echoed = reply.json();
    let sent = &echoed["request_body"];
    assert_eq!(sent["model"], "upstream-a");
    assert!(sent.get("top_p").is_none());
    assert_eq!(sent["temperature"], 0.25);
    assert_eq!(sent["top_k"], 20);
    let length: usize = echoed["headers"]["content-length"]
        .as_str()
        .expect("length")
        .parse()
        .expect("number");
    assert_eq!(
        length,
        serde_json::to_vec(sent).expect("json").len(),
        "Content-Length recomputed"
    );
}

#[test]
fn streaming_is_delivered_as_it_is_produced() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let started = Instant::now();
    let mut stream = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "a", "stream": true, "stream_chunks": 4, "stream_interval_ms": 1000}),
    );
    let mut arrivals = Vec::new();
    let mut all = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                all.extend_from_slice(&buffer[..n]);
                if buffer[..n].windows(5).any(|w| w == b"data:") {
                    arrivals.push(started.elapsed());
                }
                if all.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-accel-buffering: no"),
        "{text}"
    );
    assert!(text.contains("[DONE]"));
    // Four events produced a second apart arrive in (at least) four separate reads: an event
    // held back until the next one would merge two of them. Counted, not timed: only a reader
    // descheduled for a whole second could merge them on its own.
    assert!(
        arrivals.len() >= 4,
        "events arrived together: {} reads with events at {arrivals:?}",
        arrivals.len()
    );
    let first = arrivals.first().copied().expect("events arrived");
    let last = arrivals.last().copied().expect("events arrived");
    assert!(
        last - first >= Duration::from_millis(2500),
        "events arrived together (first {first:?}, last {last:?})"
    );
}

#[test]
fn client_disconnect_mid_stream_releases_the_slot() {
    let daemon = Daemon::start(&simple_config(&["a", "b"], "    concurrencyLimit: 1\n", ""));
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("a")).status,
        200
    );
    let mut stream = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "a", "stream": true, "stream_chunks": 1200, "stream_interval_ms": 50}),
    );
    let mut first = [0u8; 64];
    let _ = stream.read(&mut first).expect("stream started");
    drop(stream);
    // With the limit at 1, a new request succeeds only once the slot was released, and the
    // abandoned stream would run for another minute: a success within the (hang-guard)
    // deadline means the release came from the client leaving.
    let reply = wait_for("slot released", Duration::from_secs(30), || {
        let reply = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
        (reply.status == 200).then_some(reply)
    });
    assert_eq!(reply.status, 200);
    // And the model can be swapped out.
    assert_eq!(
        post_json(&daemon.url("/v1/chat/completions"), &chat("b")).status,
        200
    );
}

#[test]
fn upstream_passthrough_with_slashes_in_ids() {
    let daemon = Daemon::start(&simple_config(&["org/model", "org"], "", ""));
    let reply = get(&daemon.url("/upstream/org/model/slots?id=1&x=%2F"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echoed = reply.json();
    assert_eq!(echoed["model_served"], "org/model", "longest prefix wins");
    assert_eq!(echoed["path"], "/slots?id=1&x=%2F");
    let reply = get(&daemon.url("/upstream/org/health"));
    assert_eq!(reply.json()["status"], "ok");
    let reply = get(&daemon.url("/upstream/unknown/x"));
    assert_eq!(reply.status, 404);
    let reply = raw_exchange(
        &daemon.addr,
        b"GET /upstream/org/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
}

#[test]
fn static_files_and_comfyui_paths_never_load_a_model() {
    let daemon = Daemon::start(&simple_config(&["a", "comfyui_auto"], "", ""));
    // llama-swap's default upstream.ignorePaths: a static file does not load the model.
    let refused = get(&daemon.url("/upstream/a/assets/app%2Ejs"));
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(
        refused.json()["error"]["message"],
        "model a is not loaded; path matches upstream.ignorePaths"
    );
    assert!(daemon.running_states().is_empty());
    // Any other path loads it; then static files are served.
    assert_eq!(get(&daemon.url("/upstream/a/props")).status, 200);
    let served = get(&daemon.url("/upstream/a/assets/app.js?v=2"));
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.json()["path"], "/assets/app.js?v=2");

    // /comfyui/: only the root may load comfyui_auto.
    let refused = get(&daemon.url("/comfyui/api/queue"));
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(
        refused.json()["error"]["message"],
        "model comfyui_auto is not loaded; only /comfyui/ can start it"
    );
    let redirect = raw_exchange(
        &daemon.addr,
        b"GET /comfyui?tab=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(30),
    );
    assert!(redirect.starts_with("HTTP/1.1 301"), "{redirect}");
    assert!(
        redirect.contains("Location: /comfyui/?tab=1\r\n"),
        "{redirect}"
    );
    // Other methods keep theirs (308), and /upstream/<model> redirects the same way.
    for (request, location) in [
        (&b"POST /comfyui HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..], "/comfyui/"),
        (&b"POST /upstream/a?v=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..], "/upstream/a/?v=2"),
    ] {
        let redirect = raw_exchange(&daemon.addr, request, Duration::from_secs(30));
        assert!(redirect.starts_with("HTTP/1.1 308"), "{redirect}");
        assert!(redirect.contains(&format!("Location: {location}\r\n")), "{redirect}");
    }
    let root = get(&daemon.url("/comfyui/"));
    assert_eq!(root.status, 200, "{}", root.body);
    assert_eq!(root.json()["model_served"], "comfyui_auto");
    let reply = post_json(
        &daemon.url("/comfyui/api/prompt?x=1"),
        &json!({"prompt": {}}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], "/api/prompt?x=1");

    // Configured patterns replace the default; without comfyui_auto, /comfyui/ is a 404.
    let daemon = Daemon::start(&simple_config(
        &["a"],
        "",
        "upstream:\n  ignorePaths: ['^/static/']",
    ));
    assert_eq!(get(&daemon.url("/upstream/a/static/x.html")).status, 409);
    assert!(daemon.running_states().is_empty());
    assert_eq!(get(&daemon.url("/upstream/a/app.js")).status, 200);
    assert_eq!(get(&daemon.url("/comfyui/")).status, 404);
}

#[test]
fn audio_api_tasks_route_by_body_without_their_prefix() {
    let daemon = Daemon::start(&simple_config(&["tts"], "", ""));
    let reply = post_json(
        &daemon.url("/audioapi/v1/tasks/run"),
        &json!({"model": "tts", "task": "speak"}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echoed = reply.json();
    assert_eq!(echoed["model_served"], "tts");
    assert_eq!(echoed["path"], "/v1/tasks/run");
}

#[test]
fn multipart_uploads_route_by_form_field() {
    let config = simple_config(&["whisper"], "    useModelName: large-v3\n", "");
    let daemon = Daemon::start(&config);
    let file = vec![b'x'; 200_000];
    let mut body = b"--BOUND\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--BOUND\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n".to_vec();
    body.extend_from_slice(&file);
    body.extend_from_slice(b"\r\n--BOUND--\r\n");
    let reply = post_raw(
        &daemon.url("/v1/audio/transcriptions"),
        "multipart/form-data; boundary=BOUND",
        &body,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echoed = reply.json();
    assert_eq!(echoed["model_served"], "whisper");
    let expected_len = body.len() - "whisper".len() + "large-v3".len();
    assert_eq!(
        echoed["body_len"], expected_len,
        "useModelName rewrote the form field"
    );
    let broken = post_raw(
        &daemon.url("/v1/audio/transcriptions"),
        "multipart/form-data; boundary=OTHER",
        &body,
    );
    assert_eq!(broken.status, 400);
    let missing = post_raw(
        &daemon.url("/v1/audio/transcriptions"),
        "multipart/form-data; boundary=BOUND",
        b"--BOUND\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc\r\n--BOUND--\r\n",
    );
    assert_eq!(missing.status, 400);
}

#[test]
fn upstream_errors_pass_through_untouched() {
    let daemon = Daemon::start(&simple_config(&["a"], "", ""));
    for status in [418, 500, 503] {
        let reply = post_json(
            &daemon.url("/v1/chat/completions"),
            &json!({"model": "a", "status": status}),
        );
        assert_eq!(reply.status, status, "{}", reply.body);
        // The upstream's own body, byte for byte (not swapd's error envelope)...
        let expected = json!({"error": {"code": status, "message": format!("simulated error {status}"),
                                        "type": "server_error"}});
        assert_eq!(reply.body, expected.to_string(), "status {status}");
        // ...and its headers.
        assert_eq!(
            reply.header("x-fake-upstream"),
            Some("a"),
            "status {status}"
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "status {status}"
        );
    }
}

#[test]
fn loading_state_streams_progress_then_the_answer() {
    let daemon = Daemon::start(
        &simple_config(&["a"], "    sendLoadingState: true\n", "")
            .replace("--model a", "--model a --startup-delay-ms 800"),
    );
    let mut stream = open_stream(
        &daemon.addr,
        "/v1/chat/completions",
        &json!({"model": "a", "stream": true}),
    );
    let mut first = [0u8; 2048];
    let n = stream.read(&mut first).expect("immediate answer");
    let head = String::from_utf8_lossy(&first[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut rest = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                rest.extend_from_slice(&buffer[..n]);
                if rest.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let all = head + &String::from_utf8_lossy(&rest);
    assert!(all.contains("reasoning_content"), "{all}");
    assert!(all.contains("loading model: a"), "{all}");
    assert!(all.contains("Done!"), "{all}");
    assert!(all.contains("tok0"), "the real stream follows: {all}");
    // The stream started while the model was still loading (checked by order, not by time):
    // progress comes first, and only a model that is not ready yet gets progress.
    assert!(
        all.find("loading model: a") < all.find("tok0"),
        "the progress came after the answer: {all}"
    );
}

/// Behaviour check, not a proof of the retry: the upstream client (src/upstream.rs) already
/// drops pooled connections whose FIN has arrived before reusing them, so this passes even
/// without its resend on a stale pooled connection; the resend covers the narrower race where
/// the upstream closes just as a request is written, which this test rarely hits.
#[test]
fn stale_pooled_upstream_connections_never_become_errors() {
    // fake-upstream closes the connection after every streamed response without saying so,
    // as llama-server does; the next request must not fail on the dead pooled connection.
    let daemon = Daemon::start(&simple_config(&["a"], "", "").replace(
        "--model a",
        "--model a --close-after-stream --stream-interval-ms 1",
    ));
    for round in 0..40 {
        let streamed = post_json(
            &daemon.url("/v1/chat/completions"),
            &json!({"model": "a", "stream": true, "stream_chunks": 2}),
        );
        assert_eq!(streamed.status, 200, "round {round}: {}", streamed.body);
        assert!(streamed.body.contains("[DONE]"), "round {round}");
        let plain = post_json(&daemon.url("/v1/chat/completions"), &chat("a"));
        assert_eq!(plain.status, 200, "round {round}: {}", plain.body);
    }
}
