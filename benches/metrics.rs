//! What the metrics cost per request, in time and memory.
//!
//! Every proxied request feeds its response through a `UsageScanner` (token counts from `usage`
//! and `timings`) and ends with one `Metrics::record_request`. This bench times exactly that
//! work, in-process, for a non-streamed chat response and for a streamed one, so it can be set
//! against the added latency that `cargo bench --bench proxy` measures (swapd has no switch to
//! turn metrics off; this is their whole per-request cost). It also records 100 000 requests
//! and prints the resident memory before and after, which shows that the metrics stay bounded
//! (`metricsMaxInMemory` rows plus fixed counters and histograms), and times one `/metrics`
//! render. Run it with `cargo bench --bench metrics`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use swapd::metrics::{Gauges, Metrics, ModelGauge, RequestRecord};
use swapd::proxy::usage::UsageScanner;

const MODELS: [&str; 4] = ["llama-3-8b", "qwen-coder", "embed", "rerank"];

fn non_streamed_body() -> Vec<u8> {
    let content = "The quick brown fox jumps over the lazy dog. ".repeat(10);
    format!(
        r#"{{"choices":[{{"finish_reason":"stop","index":0,"message":{{"role":"assistant","content":"{content}"}}}}],"created":1764700000,"model":"llama-3-8b","object":"chat.completion","usage":{{"completion_tokens":120,"prompt_tokens":35,"total_tokens":155,"prompt_tokens_details":{{"cached_tokens":12}}}},"timings":{{"prompt_n":35,"prompt_ms":21.5,"prompt_per_second":1627.9,"predicted_n":120,"predicted_ms":1500.2,"predicted_per_second":79.99}}}}"#
    )
    .into_bytes()
}

/// 100 SSE events of one token each, then the usage chunk and `[DONE]`, as separate reads.
fn streamed_chunks() -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"tok{i} \"}},\"index\":0}}],\"created\":1764700000,\"model\":\"llama-3-8b\",\"object\":\"chat.completion.chunk\"}}\n\n"
            )
            .into_bytes()
        })
        .collect();
    chunks.push(
        br#"data: {"choices":[],"usage":{"completion_tokens":100,"prompt_tokens":35,"total_tokens":135},"timings":{"prompt_per_second":1500.0,"predicted_per_second":80.0}}

"#
        .to_vec(),
    );
    chunks.push(b"data: [DONE]\n\n".to_vec());
    chunks
}

fn record(metrics: &Metrics, i: usize, usage: swapd::metrics::TokenUsage, ttft: bool) {
    metrics.record_request(RequestRecord {
        model: MODELS[i % MODELS.len()],
        path: "/v1/chat/completions",
        status: if i % 50 == 0 { 502 } else { 200 },
        duration: Duration::from_micros(300 + (i % 1000) as u64 * 7),
        usage,
        time_to_first_token: ttft.then(|| Duration::from_micros(90 + (i % 100) as u64)),
    });
}

/// Nanoseconds per iteration of `f`, the median of 5 runs of `iterations`.
fn time_ns(iterations: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for i in 0..iterations {
                f(i);
            }
            started.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    runs.sort_by(|a, b| a.total_cmp(b));
    runs[2]
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let body = non_streamed_body();
    let chunks = streamed_chunks();
    let stream_bytes: usize = chunks.iter().map(Vec::len).sum();

    let scan_whole = time_ns(20_000, |_| {
        let mut scanner = UsageScanner::new(false);
        scanner.feed(black_box(&body));
        black_box(scanner.finish());
    });
    let mut check = UsageScanner::new(false);
    check.feed(&body);
    let usage_whole = check.finish();
    assert_eq!(
        usage_whole.output,
        Some(120),
        "the bench body must be understood"
    );

    let scan_stream = time_ns(2_000, |_| {
        let mut scanner = UsageScanner::new(true);
        for chunk in &chunks {
            scanner.feed(black_box(chunk));
        }
        black_box(scanner.finish());
    });
    let mut check = UsageScanner::new(true);
    for chunk in &chunks {
        check.feed(chunk);
    }
    let usage_stream = check.finish();
    assert_eq!(
        usage_stream.output,
        Some(100),
        "the bench stream must be understood"
    );

    let metrics = Metrics::new(1000);
    let record_ns = time_ns(100_000, |i| record(&metrics, i, usage_whole, i % 2 == 0));

    let fresh = Metrics::new(1000);
    let rss_before = rss_kib();
    for i in 0..100_000 {
        record(&fresh, i, usage_stream, true);
    }
    let rss_after_100k = rss_kib();
    for i in 0..100_000 {
        record(&fresh, i, usage_stream, true);
    }
    let rss_after_200k = rss_kib();

    let gauges = Gauges {
        models: MODELS
            .iter()
            .map(|model| ModelGauge {
                model: model.to_string(),
                state: "ready",
                inflight: 1,
                queued: 0,
            })
            .collect(),
        log_dropped_bytes: 0,
        open_connections: 3,
    };
    let rendered = fresh.render(&gauges);
    let render_ns = time_ns(200, |_| {
        black_box(fresh.render(black_box(&gauges)));
    });
    let rows = fresh.rows_json();

    println!("## metrics cost per request (cargo bench --bench metrics)");
    println!();
    println!("| work | time |");
    println!("|---|---|");
    println!(
        "| scan a non-streamed response ({} B, usage + timings) | {:.2} µs |",
        body.len(),
        scan_whole / 1000.0
    );
    println!(
        "| scan a streamed response ({} events, {} B) | {:.2} µs |",
        chunks.len(),
        stream_bytes,
        scan_stream / 1000.0
    );
    println!(
        "| record one request (counters, histograms, row) | {:.2} µs |",
        record_ns / 1000.0
    );
    println!(
        "| per non-streamed request in total | {:.2} µs |",
        (scan_whole + record_ns) / 1000.0
    );
    println!(
        "| render /metrics (4 models, {} bytes) | {:.1} µs |",
        rendered.len(),
        render_ns / 1000.0
    );
    println!();
    println!(
        "memory: RSS {rss_before} KiB before, {rss_after_100k} KiB after 100 000 recorded requests, \
         {rss_after_200k} KiB after 200 000; rows kept: {} (metricsMaxInMemory 1000)",
        rows.as_array().map_or(0, Vec::len)
    );
}
