//! The Ollama API through the real daemon against real fake-upstream children: listing and
//! model details (from a GGUF header written here), chat and generate (streamed line by line
//! and whole), options and format mapping as the upstream receives them (fake-upstream's
//! `--request-log`), tool calls both ways, embeddings, errors in Ollama's shape, and
//! `keep_alive`.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::*;

/// One model line for [`ollama_config`]: id, program (`{FAKE}` or a path), extra arguments,
/// extra model keys (already indented by four spaces).
struct Model<'a> {
    id: &'a str,
    program: &'a str,
    args: &'a str,
    keys: &'a str,
}

fn model<'a>(id: &'a str) -> Model<'a> {
    Model {
        id,
        program: "{FAKE}",
        args: "",
        keys: "",
    }
}

/// A config whose fake upstreams log every request to `{DIR}/<id>.requests`.
fn ollama_config(models: &[Model], top: &str) -> String {
    let start_port = free_port_range(models.len() as u16);
    let mut config = format!("startPort: {start_port}\nhealthCheckTimeout: 15\n{top}\nmodels:\n");
    for m in models {
        config.push_str(&format!(
            "  {id}:\n    cmd: {program} --port ${{PORT}} --model {id} --pid-file {{DIR}}/{id}.pid --request-log {{DIR}}/{id}.requests {args}\n{keys}",
            id = m.id,
            program = m.program,
            args = m.args,
            keys = m.keys,
        ));
    }
    config
}

/// The POST requests fake-upstream `id` received, in order.
fn upstream_requests(daemon: &Daemon, id: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(daemon.dir.path().join(format!("{id}.requests")))
        .unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("request log lines are JSON"))
        .filter(|request| request["method"] == "POST")
        .collect()
}

fn last_upstream_request(daemon: &Daemon, id: &str) -> Value {
    upstream_requests(daemon, id)
        .pop()
        .unwrap_or_else(|| panic!("fake-upstream '{id}' received no POST"))
}

/// A GGUF header: `general.*` metadata, a chat template and three 1000x1000 tensors.
fn write_gguf(path: &Path) {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(3u64.to_le_bytes()); // tensors
    out.extend(5u64.to_le_bytes()); // metadata keys
    let string = |out: &mut Vec<u8>, text: &str| {
        out.extend((text.len() as u64).to_le_bytes());
        out.extend(text.as_bytes());
    };
    let kv_string = |out: &mut Vec<u8>, key: &str, value: &str| {
        string(out, key);
        out.extend(8u32.to_le_bytes());
        string(out, value);
    };
    kv_string(&mut out, "general.architecture", "llama");
    kv_string(
        &mut out,
        "tokenizer.chat_template",
        "{% if tools %}{{ tools }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}",
    );
    let kv_u32 = |out: &mut Vec<u8>, key: &str, value: u32| {
        out.extend((key.len() as u64).to_le_bytes());
        out.extend(key.as_bytes());
        out.extend(4u32.to_le_bytes());
        out.extend(value.to_le_bytes());
    };
    kv_u32(&mut out, "general.file_type", 15);
    kv_u32(&mut out, "llama.context_length", 4096);
    kv_u32(&mut out, "llama.embedding_length", 1000);
    for name in ["a", "b", "c"] {
        out.extend((name.len() as u64).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(2u32.to_le_bytes());
        out.extend(1000u64.to_le_bytes());
        out.extend(1000u64.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
    }
    std::fs::write(path, out).expect("write the GGUF fixture");
}

fn head(url: &str) -> Reply {
    let response = agent().head(url).call().expect("HEAD request");
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

fn delete_json(url: &str, body: &Value) -> Reply {
    let mut response = agent()
        .delete(url)
        .force_send_body()
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("DELETE request");
    Reply {
        status: response.status().as_u16(),
        headers: Vec::new(),
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn ndjson(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect()
}

/// Reads a chunked HTTP response from a raw socket, line by line of the decoded body.
struct ChunkedLines {
    reader: BufReader<TcpStream>,
    pending: Vec<u8>,
    head: String,
    ended: bool,
}

impl ChunkedLines {
    fn new(stream: TcpStream) -> ChunkedLines {
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read the response head");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        ChunkedLines {
            reader,
            pending: Vec::new(),
            head,
            ended: false,
        }
    }

    /// The next body line (without its newline); `None` at the end of the body.
    fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if self.ended {
                return None;
            }
            let mut size = String::new();
            self.reader.read_line(&mut size).expect("read a chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            if size == 0 {
                self.ended = true;
                continue;
            }
            let mut data = vec![0u8; size + 2];
            self.reader.read_exact(&mut data).expect("read a chunk");
            self.pending.extend_from_slice(&data[..size]);
        }
    }
}

fn parse_time(text: &str) -> SystemTime {
    // "YYYY-MM-DDTHH:MM:SS[.fff]Z"
    let (date, time) = text.split_once('T').expect("RFC 3339 date and time");
    let mut parts = date
        .split('-')
        .map(|p| p.parse::<i64>().expect("date digits"));
    let (year, month, day) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let time = time.strip_suffix('Z').expect("UTC");
    let seconds_part = time.split('.').next().unwrap();
    let mut hms = seconds_part
        .split(':')
        .map(|p| p.parse::<i64>().expect("time digits"));
    let (h, m, s) = (
        hms.next().unwrap(),
        hms.next().unwrap(),
        hms.next().unwrap(),
    );
    // Days from civil (Howard Hinnant), the inverse of swapd's conversion.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    UNIX_EPOCH + Duration::from_secs((days * 86_400 + h * 3600 + m * 60 + s) as u64)
}

#[test]
fn tags_show_ps_and_version_describe_the_configured_models() {
    let config = ollama_config(
        &[
            Model {
                args: "-m {DIR}/llama-3m.gguf",
                ..model("a")
            },
            model("b"),
            Model {
                keys: "    unlisted: true\n",
                ..model("hidden")
            },
        ],
        "",
    );
    let daemon = Daemon::start(&config);
    let gguf = daemon.dir.path().join("llama-3m.gguf");
    write_gguf(&gguf);

    let reply = get(&daemon.url("/api/tags"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let models = reply.json()["models"].as_array().expect("models").clone();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["a:latest", "b:latest"],
        "unlisted models stay hidden"
    );
    let a = &models[0];
    assert_eq!(a["model"], "a:latest");
    assert_eq!(a["size"], std::fs::metadata(&gguf).unwrap().len());
    assert_eq!(
        a["details"],
        json!({"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
               "parameter_size": "3M", "quantization_level": "Q4_K_M",
               "context_length": 4096, "embedding_length": 1000})
    );
    assert!(a["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("tools")));
    assert!(!a["digest"].as_str().unwrap().is_empty());
    let modified = parse_time(a["modified_at"].as_str().unwrap());
    let file_time = std::fs::metadata(&gguf).unwrap().modified().unwrap();
    let gap = file_time
        .duration_since(modified)
        .unwrap_or_else(|e| e.duration());
    assert!(gap < Duration::from_secs(1), "modified_at is the file's");
    // No file: nothing invented.
    let b = &models[1];
    assert_eq!(b["size"], 0);
    assert_eq!(
        b["details"],
        json!({"parent_model": "", "format": "", "family": "", "families": null,
               "parameter_size": "", "quantization_level": ""})
    );
    assert!(daemon.running_states().is_empty(), "listing starts nothing");

    let probe = head(&daemon.url("/api/tags"));
    assert_eq!(probe.status, 200);
    let version = get(&daemon.url("/api/version"));
    assert_eq!(version.status, 200);
    assert_eq!(version.json()["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        version.json().get("commit").is_some(),
        "swapd's own fields stay"
    );
    assert_eq!(head(&daemon.url("/api/version")).status, 200);

    let show = post_json(&daemon.url("/api/show"), &json!({"model": "a:latest"}));
    assert_eq!(show.status, 200, "{}", show.body);
    let show = show.json();
    assert_eq!(show["details"]["family"], "llama");
    assert_eq!(show["model_info"]["general.architecture"], "llama");
    assert_eq!(show["model_info"]["llama.context_length"], 4096);
    assert_eq!(show["model_info"]["general.parameter_count"], 3_000_000);
    assert!(show["template"].as_str().unwrap().contains("tools"));
    assert!(show["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("completion")));
    // The legacy `name` field works too.
    let legacy = post_json(&daemon.url("/api/show"), &json!({"name": "b"}));
    assert_eq!(legacy.status, 200);
    let missing = post_json(&daemon.url("/api/show"), &json!({"model": "nope"}));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), json!({"error": "model 'nope' not found"}));

    // /api/ps lists what runs, with the expiry from the model's ttl.
    assert_eq!(get_json(&daemon.url("/api/ps")), json!({"models": []}));
    let chat = post_json(
        &daemon.url("/api/chat"),
        &json!({"model": "a", "stream": false, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(chat.status, 200, "{}", chat.body);
    let ps = get_json(&daemon.url("/api/ps"));
    let running = ps["models"].as_array().unwrap();
    assert_eq!(running.len(), 1, "{ps}");
    assert_eq!(running[0]["name"], "a:latest");
    assert_eq!(running[0]["details"]["quantization_level"], "Q4_K_M");
    assert_eq!(running[0]["size_vram"], 0);
    // No ttl in the config: the model is kept loaded, reported as the far future.
    let expires = parse_time(running[0]["expires_at"].as_str().unwrap());
    assert!(expires > SystemTime::now() + Duration::from_secs(100 * 365 * 86_400));
}

#[test]
fn chat_without_streaming_maps_options_format_images_and_thinking() {
    let daemon = Daemon::start(&ollama_config(&[model("a")], ""));
    let schema = json!({"type": "object", "properties": {"x": {"type": "number"}}});
    let reply = post_json(
        &daemon.url("/api/chat"),
        &json!({
            "model": "a:latest",
            "stream": false,
            "think": true,
            "format": schema,
            "messages": [{"role": "user", "content": "look", "images": ["iVBORw0KGgoAAAANSUhEUg=="]}],
            "options": {"temperature": 0.3, "top_p": 0.8, "top_k": 9, "num_predict": 17,
                        "stop": ["END"], "seed": 7, "repeat_penalty": 1.2, "num_ctx": 8192},
        }),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let answer = reply.json();
    assert_eq!(answer["model"], "a:latest");
    assert_eq!(
        answer["message"],
        json!({"role": "assistant", "content": "hello from a", "thinking": "thinking..."})
    );
    assert_eq!(answer["done"], true);
    assert_eq!(answer["done_reason"], "stop");
    // fake-upstream's usage and llama.cpp timings (13 ms prompt, 17 ms generation).
    assert_eq!(answer["prompt_eval_count"], 25);
    assert_eq!(answer["eval_count"], 10);
    assert_eq!(answer["prompt_eval_duration"], 13_000_000);
    assert_eq!(answer["eval_duration"], 17_000_000);
    assert!(answer["total_duration"].as_u64().unwrap() > 0);
    assert!(answer["load_duration"].as_u64().unwrap() > 0);
    parse_time(answer["created_at"].as_str().unwrap());

    let sent = last_upstream_request(&daemon, "a");
    assert_eq!(sent["path"], "/v1/chat/completions");
    let body = &sent["body"];
    assert_eq!(body["model"], "a");
    assert_eq!(body["stream"], false);
    for (key, value) in [
        ("temperature", json!(0.3)),
        ("top_p", json!(0.8)),
        ("top_k", json!(9)),
        ("max_tokens", json!(17)),
        ("stop", json!(["END"])),
        ("seed", json!(7)),
        ("repeat_penalty", json!(1.2)),
    ] {
        assert_eq!(body[key], value, "{key} in {body}");
    }
    assert!(
        body.get("num_ctx").is_none(),
        "num_ctx is a load-time setting"
    );
    assert!(body.get("options").is_none());
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}})
    );
    assert_eq!(
        body["chat_template_kwargs"],
        json!({"enable_thinking": true})
    );
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}},
        ]}])
    );

    // `format: "json"` is JSON mode.
    let json_mode = post_json(
        &daemon.url("/api/chat"),
        &json!({"model": "a", "stream": false, "format": "json",
                "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(json_mode.status, 200, "{}", json_mode.body);
    assert_eq!(
        last_upstream_request(&daemon, "a")["body"]["response_format"],
        json!({"type": "json_object"})
    );
    // Requests on these routes count in the metrics like the OpenAI ones.
    let rows = get_json(&daemon.url("/api/metrics"));
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|row| row["path"] == "/api/chat" && row["model"] == "a" && row["status"] == 200),
        "{rows}"
    );
}

#[test]
fn chat_streams_ndjson_line_by_line_before_the_upstream_finishes() {
    // The upstream holds its last event until the gate file exists, so the lines before it
    // can only reach the client if swapd translates and sends each event as it arrives.
    let config = ollama_config(
        &[Model {
            keys: "    filters:\n      setParams:\n        stream_chunks: 3\n        gate_file: \"{DIR}/gate\"\n",
            ..model("a")
        }],
        "",
    );
    let daemon = Daemon::start(&config);
    let gate = daemon.dir.path().join("gate");
    // No `stream` field: Ollama streams by default.
    let stream = open_stream(
        &daemon.addr,
        "/api/chat",
        &json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]}),
    );
    let mut lines = ChunkedLines::new(stream);
    assert!(
        lines
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/x-ndjson"),
        "{}",
        lines.head
    );
    let mut received = Vec::new();
    for _ in 0..3 {
        let line = lines
            .next_line()
            .expect("a line before the upstream's last event");
        received.push(serde_json::from_str::<Value>(&line).expect("JSON line"));
    }
    assert!(
        !gate.exists(),
        "the upstream is still holding its last event"
    );
    std::fs::write(&gate, b"open").expect("open the gate");
    while let Some(line) = lines.next_line() {
        received.push(serde_json::from_str(&line).expect("JSON line"));
    }
    let contents: Vec<&str> = received[..3]
        .iter()
        .map(|line| line["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["tok0 ", "tok1 ", "tok2 "]);
    assert!(received[..3].iter().all(|line| line["done"] == false));
    assert_eq!(received.len(), 4, "{received:?}");
    let done = &received[3];
    assert_eq!(done["done"], true);
    assert_eq!(done["done_reason"], "stop");
    assert_eq!(done["message"]["content"], "");
    for key in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(done[key].as_u64().is_some(), "{key} missing in {done}");
    }
    assert_eq!(done["eval_count"], 3);
    assert_eq!(done["prompt_eval_count"], 25);
    let sent = last_upstream_request(&daemon, "a");
    assert_eq!(sent["body"]["stream"], true);
    assert_eq!(
        sent["body"]["stream_options"],
        json!({"include_usage": true})
    );
}

#[test]
fn generate_chat_raw_and_fill_in_middle_reach_the_right_endpoint() {
    let config = ollama_config(
        &[
            model("a"),
            Model {
                program: "{DIR}/llama-server",
                ..model("llama")
            },
        ],
        "",
    );
    let daemon = Daemon::start(&config);
    // A command named llama-server gets llama.cpp's /infill for fill-in-middle.
    std::os::unix::fs::symlink(FAKE, daemon.dir.path().join("llama-server"))
        .expect("symlink llama-server");

    let streamed = post_json(
        &daemon.url("/api/generate"),
        &json!({"model": "a", "prompt": "once", "system": "be brief"}),
    );
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    let lines = ndjson(&streamed.body);
    let pieces: Vec<&str> = lines[..lines.len() - 1]
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert_eq!(pieces.concat(), "tok0 tok1 tok2 tok3 tok4 ");
    let last = lines.last().unwrap();
    assert_eq!(
        (last["done"].as_bool(), last["response"].as_str()),
        (Some(true), Some(""))
    );
    let sent = last_upstream_request(&daemon, "a");
    assert_eq!(sent["path"], "/v1/chat/completions");
    assert_eq!(
        sent["body"]["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "once"}])
    );

    let raw = post_json(
        &daemon.url("/api/generate"),
        &json!({"model": "a", "prompt": "<s>raw", "raw": true, "stream": false,
                "options": {"num_predict": 3}}),
    );
    assert_eq!(raw.status, 200, "{}", raw.body);
    assert_eq!(raw.json()["response"], "hello from a");
    let sent = last_upstream_request(&daemon, "a");
    assert_eq!(sent["path"], "/v1/completions");
    assert_eq!(
        (
            sent["body"]["prompt"].as_str(),
            sent["body"]["max_tokens"].as_u64()
        ),
        (Some("<s>raw"), Some(3))
    );

    // Fill-in-middle on an upstream that is not llama-server: OpenAI completions with suffix.
    let fim = post_json(
        &daemon.url("/api/generate"),
        &json!({"model": "a", "prompt": "def f(", "suffix": "    return x", "stream": false}),
    );
    assert_eq!(fim.status, 200, "{}", fim.body);
    let sent = last_upstream_request(&daemon, "a");
    assert_eq!(sent["path"], "/v1/completions");
    assert_eq!(sent["body"]["suffix"], "    return x");
    // On llama-server: /infill with llama.cpp's field names.
    let infill = post_json(
        &daemon.url("/api/generate"),
        &json!({"model": "llama", "prompt": "def f(", "suffix": "    return x", "stream": false,
                "options": {"num_predict": 5}}),
    );
    assert_eq!(infill.status, 200, "{}", infill.body);
    let sent = last_upstream_request(&daemon, "llama");
    assert_eq!(sent["path"], "/infill");
    assert_eq!(sent["body"]["input_prefix"], "def f(");
    assert_eq!(sent["body"]["input_suffix"], "    return x");
    assert_eq!(sent["body"]["n_predict"], 5);

    let images = post_json(
        &daemon.url("/api/generate"),
        &json!({"model": "a", "prompt": "what", "images": ["/9j/4AAQSkZJRg=="], "stream": false}),
    );
    assert_eq!(images.status, 200);
    assert_eq!(
        last_upstream_request(&daemon, "a")["body"]["messages"][0]["content"][1]["image_url"]
            ["url"],
        "data:image/jpeg;base64,/9j/4AAQSkZJRg=="
    );
}

#[test]
fn tool_calls_go_both_ways() {
    let daemon = Daemon::start(&ollama_config(&[model("a")], ""));
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}}}}]);
    let history = json!([
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "12 degrees", "tool_name": "get_weather"},
        {"role": "user", "content": "and Paris?"},
    ]);
    let reply = post_json(
        &daemon.url("/api/chat"),
        &json!({"model": "a", "stream": false, "tools": tools, "messages": history}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Upstream → Ollama: arguments become an object.
    assert_eq!(
        reply.json()["message"]["tool_calls"],
        json!([{"id": "call_fake1", "function": {"index": 0, "name": "get_weather",
                                                  "arguments": {"echo": "and Paris?"}}}])
    );
    // Ollama → upstream: string arguments, type and id; the tool result names its call.
    let sent = last_upstream_request(&daemon, "a")["body"].clone();
    assert_eq!(sent["tools"], tools);
    let call = &sent["messages"][1]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Oslo\"}");
    let id = call["id"].as_str().expect("an id was added");
    assert_eq!(sent["messages"][2]["tool_call_id"], id);
    assert_eq!(sent["messages"][2]["name"], "get_weather");

    // Streamed: the fragments arrive joined, as one whole call in one line.
    let streamed = post_json(
        &daemon.url("/api/chat"),
        &json!({"model": "a", "tools": tools,
                "messages": [{"role": "user", "content": "Oslo"}]}),
    );
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    let lines = ndjson(&streamed.body);
    let with_calls: Vec<&Value> = lines
        .iter()
        .filter(|line| line["message"].get("tool_calls").is_some())
        .collect();
    assert_eq!(with_calls.len(), 1, "{lines:?}");
    assert_eq!(
        with_calls[0]["message"]["tool_calls"][0]["function"]["arguments"],
        json!({"echo": "Oslo"})
    );
    assert_eq!(lines.last().unwrap()["done"], true);
}

#[test]
fn embeddings_current_and_legacy() {
    let daemon = Daemon::start(&ollama_config(&[model("e")], ""));
    let reply = post_json(
        &daemon.url("/api/embed"),
        &json!({"model": "e", "input": ["abc", "abcd"]}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    // fake-upstream's vectors are [len, 0, 1]; Ollama's are unit length, in input order.
    let expected = |len: f64| {
        let norm = (len * len + 1.0).sqrt();
        vec![len / norm, 0.0, 1.0 / norm]
    };
    let got: Vec<Vec<f64>> = serde_json::from_value(answer["embeddings"].clone()).unwrap();
    for (vector, want) in got.iter().zip([expected(3.0), expected(4.0)]) {
        for (a, b) in vector.iter().zip(&want) {
            assert!((a - b).abs() < 1e-9, "{got:?}");
        }
    }
    assert_eq!(answer["prompt_eval_count"], 7);
    assert_eq!(answer["model"], "e");
    assert_eq!(
        last_upstream_request(&daemon, "e")["body"]["input"],
        json!(["abc", "abcd"])
    );

    let single = post_json(
        &daemon.url("/api/embed"),
        &json!({"model": "e", "input": "xy"}),
    );
    assert_eq!(single.status, 200, "{}", single.body);
    assert_eq!(single.json()["embeddings"].as_array().unwrap().len(), 1);
    let legacy = post_json(
        &daemon.url("/api/embeddings"),
        &json!({"model": "e", "prompt": "hello"}),
    );
    assert_eq!(legacy.status, 200, "{}", legacy.body);
    assert_eq!(legacy.json(), json!({"embedding": [5.0, 0.0, 1.0]}));
    let bad = post_json(
        &daemon.url("/api/embed"),
        &json!({"model": "e", "input": [1, 2]}),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("input"));
}

#[test]
fn errors_use_ollama_shape_and_limits_apply() {
    let config = ollama_config(
        &[
            model("a"),
            Model {
                keys: "    filters:\n      setParams:\n        status: 500\n",
                ..model("broken")
            },
            Model {
                keys: "    filters:\n      setParams:\n        stream_error: true\n",
                ..model("midway")
            },
            Model {
                keys: "    concurrencyLimit: 1\n    filters:\n      setParams:\n        gate_file: \"{DIR}/gate\"\n",
                ..model("one")
            },
        ],
        "",
    );
    let daemon = Daemon::start(&config);
    let chat =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let is_ollama_error = |reply: &Reply| {
        let body = reply.json();
        assert!(
            body["error"].is_string(),
            "not Ollama's error shape: {body}"
        );
        body["error"].as_str().unwrap().to_string()
    };

    let unknown = post_json(&daemon.url("/api/chat"), &chat("nope"));
    assert_eq!(unknown.status, 404);
    assert_eq!(is_ollama_error(&unknown), "model 'nope' not found");
    let bad_json = post_raw(
        &daemon.url("/api/generate"),
        "application/json",
        b"{not json",
    );
    assert_eq!(bad_json.status, 400);
    assert!(is_ollama_error(&bad_json).contains("JSON"));
    let empty = post_raw(&daemon.url("/api/chat"), "application/json", b"");
    assert_eq!(empty.status, 400);
    assert_eq!(is_ollama_error(&empty), "missing request body");
    let wrong_type = post_json(
        &daemon.url("/api/chat"),
        &json!({"model": "a", "messages": [], "options": {"temperature": "hot"}}),
    );
    assert_eq!(wrong_type.status, 400);
    assert!(is_ollama_error(&wrong_type).contains("temperature"));
    let bad_keep_alive = post_json(
        &daemon.url("/api/generate"),
        &json!({"model": "a", "keep_alive": "3600"}),
    );
    assert_eq!(bad_keep_alive.status, 400);
    assert!(is_ollama_error(&bad_keep_alive).contains("keep_alive"));

    // An upstream error status passes through with its message.
    let broken = post_json(&daemon.url("/api/chat"), &chat("broken"));
    assert_eq!(broken.status, 500);
    assert_eq!(is_ollama_error(&broken), "simulated error 500");
    // An error inside a stream is one more line, after what was already sent.
    let midway = post_json(&daemon.url("/api/chat"), &chat("midway"));
    assert_eq!(midway.status, 200);
    let lines = ndjson(&midway.body);
    assert_eq!(lines[0]["message"]["content"], "partial ");
    assert_eq!(
        lines.last().unwrap(),
        &json!({"error": "simulated error inside the stream"})
    );

    for (path, reply) in [
        (
            "/api/pull",
            post_json(&daemon.url("/api/pull"), &json!({"model": "x"})),
        ),
        (
            "/api/push",
            post_json(&daemon.url("/api/push"), &json!({"model": "x"})),
        ),
        (
            "/api/create",
            post_json(&daemon.url("/api/create"), &json!({"model": "x"})),
        ),
        (
            "/api/copy",
            post_json(
                &daemon.url("/api/copy"),
                &json!({"source": "a", "destination": "b"}),
            ),
        ),
        (
            "/api/delete",
            delete_json(&daemon.url("/api/delete"), &json!({"model": "a"})),
        ),
    ] {
        assert_eq!(reply.status, 501, "{path}: {}", reply.body);
        let message = is_ollama_error(&reply);
        assert!(message.contains("config"), "{path}: {message}");
    }
    let wrong_method = get(&daemon.url("/api/chat"));
    assert_eq!(wrong_method.status, 405);
    is_ollama_error(&wrong_method);

    // concurrencyLimit: a second request while one streams is refused with 429.
    let stream = open_stream(&daemon.addr, "/api/chat", &chat("one"));
    let mut first = ChunkedLines::new(stream);
    first.next_line().expect("the first request streams");
    let refused = post_json(&daemon.url("/api/chat"), &chat("one"));
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    is_ollama_error(&refused);
    std::fs::write(daemon.dir.path().join("gate"), b"open").expect("open the gate");
    while first.next_line().is_some() {}
}

#[test]
fn auth_and_cors_apply_as_on_the_openai_routes() {
    let daemon = Daemon::start(&ollama_config(&[model("a")], "apiKeys: [sk-one]"));
    assert_eq!(get(&daemon.url("/api/tags")).status, 401);
    assert_eq!(
        post_json(
            &daemon.url("/api/chat"),
            &json!({"model": "a", "messages": []})
        )
        .status,
        401
    );
    let allowed = get_with_headers(
        &daemon.url("/api/tags"),
        &[
            ("Authorization", "Bearer sk-one"),
            ("Origin", "http://app.local"),
        ],
    );
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://app.local")
    );
    let chat = post_with_headers(
        &daemon.url("/api/chat"),
        &[
            ("x-api-key", "sk-one"),
            ("Content-Type", "application/json"),
        ],
        json!({"model": "a", "stream": false, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(chat.status, 200, "{}", chat.body);
    assert_eq!(chat.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn keep_alive_loads_unloads_and_sets_the_idle_time() {
    let daemon = Daemon::start(&ollama_config(&[model("a"), model("b")], ""));
    // An empty generate loads the model: one object, done_reason "load".
    let load = post_json(&daemon.url("/api/generate"), &json!({"model": "a"}));
    assert_eq!(load.status, 200, "{}", load.body);
    let load = load.json();
    assert_eq!(
        (load["done"].as_bool(), load["done_reason"].as_str()),
        (Some(true), Some("load"))
    );
    assert_eq!(load["response"], "");
    assert_eq!(
        daemon.running_states(),
        [("a".to_string(), "ready".to_string())]
    );
    assert!(
        upstream_requests(&daemon, "a").is_empty(),
        "loading sends no prompt"
    );

    // keep_alive sets the idle time /api/ps reports.
    let one_hour = post_json(
        &daemon.url("/api/chat"),
        &json!({"model": "a", "messages": [], "keep_alive": "1h"}),
    );
    assert_eq!(one_hour.status, 200, "{}", one_hour.body);
    let expires = parse_time(
        get_json(&daemon.url("/api/ps"))["models"][0]["expires_at"]
            .as_str()
            .unwrap(),
    );
    let now = SystemTime::now();
    assert!(
        expires > now + Duration::from_secs(3000) && expires <= now + Duration::from_secs(3601),
        "1h"
    );

    // An empty request with keep_alive 0 unloads it (and answers once it is stopped).
    let unload = post_json(
        &daemon.url("/api/generate"),
        &json!({"model": "a", "keep_alive": 0}),
    );
    assert_eq!(unload.status, 200, "{}", unload.body);
    assert_eq!(unload.json()["done_reason"], "unload");
    assert!(
        daemon.running_states().is_empty(),
        "{:?}",
        daemon.running_states()
    );
    let chat_unload = post_json(
        &daemon.url("/api/chat"),
        &json!({"model": "a", "messages": [], "keep_alive": "0s"}),
    );
    assert_eq!(
        chat_unload.json()["message"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chat_unload.json()["done_reason"], "unload");

    // A real request with a short keep_alive is served, then the model unloads when idle; the
    // other model (no keep_alive, no ttl) stays.
    let served = post_json(
        &daemon.url("/api/chat"),
        &json!({"model": "a", "stream": false, "keep_alive": "300ms",
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(served.json()["message"]["content"], "hello from a");
    let stay = post_json(
        &daemon.url("/api/embed"),
        &json!({"model": "b", "input": "stay"}),
    );
    assert_eq!(stay.status, 200, "{}", stay.body);
    wait_for(
        "a to unload after its keep_alive",
        Duration::from_secs(20),
        || (daemon.running_states() == [("b".to_string(), "ready".to_string())]).then_some(()),
    );

    // keep_alive 0 on a real request: answered in full, then unloaded.
    let last = post_json(
        &daemon.url("/api/generate"),
        &json!({"model": "b", "prompt": "bye", "keep_alive": 0, "stream": false}),
    );
    assert_eq!(last.json()["response"], "hello from b");
    wait_for(
        "b to unload after keep_alive 0",
        Duration::from_secs(20),
        || daemon.running_states().is_empty().then_some(()),
    );

    // -1 keeps it for good; the override ends with the process, so the next load is back to
    // the config's ttl (none here, also "never").
    let forever_load = post_json(
        &daemon.url("/api/generate"),
        &json!({"model": "a", "keep_alive": -1}),
    );
    assert_eq!(forever_load.status, 200, "{}", forever_load.body);
    let forever = parse_time(
        get_json(&daemon.url("/api/ps"))["models"][0]["expires_at"]
            .as_str()
            .unwrap(),
    );
    assert!(forever > SystemTime::now() + Duration::from_secs(100 * 365 * 86_400));
}

#[test]
fn keep_alive_override_ends_when_the_model_stops() {
    // ttl 3600 in the config; keep_alive 1h30m overrides it until the process stops.
    let config = ollama_config(
        &[Model {
            keys: "    ttl: 3600\n",
            ..model("a")
        }],
        "",
    );
    let daemon = Daemon::start(&config);
    let expires_in = || {
        let ps = get_json(&daemon.url("/api/ps"));
        let at = parse_time(
            ps["models"][0]["expires_at"]
                .as_str()
                .expect("a running model"),
        );
        at.duration_since(SystemTime::now()).unwrap_or_default()
    };
    let generate = |body: Value| {
        let reply = post_json(&daemon.url("/api/generate"), &body);
        assert_eq!(reply.status, 200, "{body}: {}", reply.body);
    };
    generate(json!({"model": "a", "keep_alive": "1h30m"}));
    assert!(expires_in() > Duration::from_secs(3700), "override applies");
    generate(json!({"model": "a", "keep_alive": 0}));
    generate(json!({"model": "a"}));
    let left = expires_in();
    assert!(
        left <= Duration::from_secs(3600) && left > Duration::from_secs(3000),
        "{left:?}"
    );
}
