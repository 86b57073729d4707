//! Request parsing and rewriting: what a handler spends on the body before forwarding.
//!
//! Times the route lookup, reading `model` and `stream` from JSON bodies of several sizes
//! (without building a tree), the JSON rewrite that `useModelName`, `filters.stripParams` and
//! `filters.setParams` trigger (which does build a tree), and reading the model from a
//! multipart upload. Run it with `cargo bench --bench extract`.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use swapd::proxy::extract;

const CONFIG: &str = r#"
models:
  plain:
    cmd: server --port ${PORT}
  rewritten:
    cmd: server --port ${PORT}
    useModelName: upstream-name
    filters:
      stripParams: "temperature, top_p"
      setParams:
        max_tokens: 256
        chat_template_kwargs:
          enable_thinking: false
"#;

/// A chat request carrying `turns` user/assistant exchanges of about 500 bytes each.
fn chat_body(model: &str, turns: usize) -> Vec<u8> {
    let text = "All work and no play makes Jack a dull boy. ".repeat(11);
    let mut messages = vec![serde_json::json!({"role": "system", "content": "You are terse."})];
    for i in 0..turns {
        messages.push(serde_json::json!({"role": "user", "content": format!("{i}: {text}")}));
        messages.push(serde_json::json!({"role": "assistant", "content": text}));
    }
    serde_json::to_vec(&serde_json::json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "temperature": 0.7,
        "top_p": 0.9,
    }))
    .expect("json")
}

fn multipart_body(size: usize) -> (Vec<u8>, String) {
    let boundary = "----swapd-bench-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
    );
    body.extend((0..size).map(|i| (i * 31 % 251) as u8));
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--{boundary}--\r\n").as_bytes(),
    );
    (body, format!("multipart/form-data; boundary={boundary}"))
}

/// Microseconds per call of `f`, the median of 5 runs sized to about 50 ms each.
fn time_us(mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut calibration = 0u64;
    while started.elapsed().as_millis() < 20 {
        f();
        calibration += 1;
    }
    let per_call = started.elapsed().as_secs_f64() / calibration as f64;
    let iterations = ((0.05 / per_call) as u64).max(1);
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                f();
            }
            started.elapsed().as_secs_f64() * 1e6 / iterations as f64
        })
        .collect();
    runs.sort_by(|a, b| a.total_cmp(b));
    runs[2]
}

fn main() {
    let loaded = swapd::config::parse(CONFIG, Path::new("bench.yaml"), &|_| None)
        .expect("the bench config is valid");
    let rewritten = &loaded.config.models["rewritten"];
    let mut rows: Vec<(String, f64)> = Vec::new();

    rows.push((
        "route lookup (POST /v1/chat/completions)".into(),
        time_us(|| {
            black_box(extract::route(
                black_box("POST"),
                black_box("/v1/chat/completions"),
            ));
        }),
    ));
    for turns in [0usize, 10, 100] {
        let body = chat_body("plain", turns);
        let requested = extract::from_json(&body).expect("valid");
        assert_eq!(requested.model, "plain");
        assert!(requested.stream);
        rows.push((
            format!("model and stream from JSON, {} KiB body", body.len() / 1024),
            time_us(|| {
                black_box(extract::from_json(black_box(&body)).expect("valid"));
            }),
        ));
    }
    for turns in [0usize, 10, 100] {
        let body = chat_body("rewritten", turns);
        assert!(extract::needs_json_rewrite(rewritten, "rewritten"));
        let out = extract::rewrite_json(&body, rewritten, "rewritten").expect("valid");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(value["model"], "upstream-name");
        assert!(value.get("temperature").is_none());
        assert_eq!(value["max_tokens"], 256);
        rows.push((
            format!(
                "rewrite (useModelName, stripParams, setParams), {} KiB body",
                body.len() / 1024
            ),
            time_us(|| {
                black_box(extract::rewrite_json(
                    black_box(&body),
                    rewritten,
                    "rewritten",
                ))
                .expect("valid");
            }),
        ));
    }
    let (body, content_type) = multipart_body(1024 * 1024);
    assert_eq!(
        extract::from_multipart(&body, &content_type)
            .expect("valid")
            .model,
        "whisper"
    );
    rows.push((
        "model from a multipart upload of 1 MiB".into(),
        time_us(|| {
            black_box(extract::from_multipart(black_box(&body), &content_type)).expect("valid");
        }),
    ));

    println!("## request parsing and rewriting (cargo bench --bench extract)");
    println!();
    println!("| work | time per request |");
    println!("|---|---|");
    for (name, us) in rows {
        if us < 0.1 {
            println!("| {name} | {:.0} ns |", us * 1000.0);
        } else {
            println!("| {name} | {us:.2} µs |");
        }
    }
}
