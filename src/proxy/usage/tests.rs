//! Tests of the token-usage scanner: every response shape it reads, any split of the stream
//! into chunks, and its memory bounds.

use super::fields::Found;
use super::*;

fn scan(is_event_stream: bool, body: &[u8]) -> TokenUsage {
    let mut scanner = UsageScanner::new(is_event_stream);
    scanner.feed(body);
    scanner.finish()
}

fn scan_pieces(is_event_stream: bool, pieces: &[&[u8]]) -> TokenUsage {
    let mut scanner = UsageScanner::new(is_event_stream);
    for piece in pieces {
        scanner.feed(piece);
    }
    scanner.finish()
}

#[test]
fn vllm_metrics_and_llama_cpp_drafts() {
    // vLLM: prompt t/s = (input - cached) / time to first token; t/s = 1000 / mean ITL;
    // drafts only when both speculative-decoding counts are present.
    let body = br#"{"usage":{"prompt_tokens":120,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":20}},"metrics":{"time_to_first_token_ms":50.0,"mean_itl_ms":20.0,"speculative_decoding":{"num_draft_tokens":8,"num_accepted_draft_tokens":5}}}"#;
    let usage = scan(false, body);
    assert_eq!(usage.prompt_per_second, Some(2000.0));
    assert_eq!(usage.tokens_per_second, Some(50.0));
    assert_eq!((usage.draft, usage.draft_accepted), (Some(8), Some(5)));
    let stream = b"data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_tokens\":10},\"metrics\":{\"mean_itl_ms\":4.0,\"speculative_decoding\":{\"num_draft_tokens\":3}}}\n\n";
    let usage = scan(true, stream);
    assert_eq!(usage.tokens_per_second, Some(250.0));
    assert_eq!(usage.prompt_per_second, None);
    assert_eq!((usage.draft, usage.draft_accepted), (None, None));
    // llama.cpp: draft_n / draft_n_accepted from timings.
    let body = br#"{"timings":{"prompt_n":5,"predicted_n":9,"predicted_per_second":30.0,"draft_n":6,"draft_n_accepted":4}}"#;
    let usage = scan(false, body);
    assert_eq!((usage.draft, usage.draft_accepted), (Some(6), Some(4)));
    assert_eq!(usage.upstream_millis, None);
    let body = br#"{"timings":{"prompt_ms":12.5,"predicted_ms":30.0}}"#;
    assert_eq!(scan(false, body).upstream_millis, Some(42.5));
    assert_eq!((usage.input, usage.output), (Some(5), Some(9)));
}

#[test]
fn openai_json_body_with_cached_tokens() {
    let body = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"usage\": {\"prompt_tokens\": 999}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":7,"total_tokens":49,"prompt_tokens_details":{"cached_tokens":30,"audio_tokens":0}}}"#;
    let expected = TokenUsage {
        input: Some(42),
        output: Some(7),
        cached: Some(30),
        ..TokenUsage::default()
    };
    assert_eq!(scan(false, body), expected);
    // Fed byte by byte, the result is the same.
    let pieces: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(scan_pieces(false, &pieces), expected);
}

const OPENAI_STREAM: &str = concat!(
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n",
    ": keep-alive comment\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34,\"total_tokens\":46,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn streamed_usage_survives_any_split() {
    let expected = TokenUsage {
        input: Some(12),
        output: Some(34),
        cached: Some(8),
        ..TokenUsage::default()
    };
    let body = OPENAI_STREAM.as_bytes();
    assert_eq!(scan(true, body), expected);
    for split in 0..=body.len() {
        assert_eq!(
            scan_pieces(true, &[&body[..split], &body[split..]]),
            expected,
            "split at {split}"
        );
    }
    for first in (0..body.len()).step_by(7) {
        for second in (first..=body.len()).step_by(13) {
            let pieces = [&body[..first], &body[first..second], &body[second..]];
            assert_eq!(
                scan_pieces(true, &pieces),
                expected,
                "splits at {first}, {second}"
            );
        }
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(scan_pieces(true, &bytes), expected);
    // CRLF line endings and a missing final line feed are handled too.
    let crlf = OPENAI_STREAM
        .replace("data: [DONE]\n\n", "")
        .replace('\n', "\r\n");
    assert_eq!(scan(true, crlf.trim_end().as_bytes()), expected);
}

#[test]
fn llama_cpp_timings_override_usage() {
    let body = br#"{"choices":[{"message":{"content":"x"}}],"timings":{"cache_n":5,"prompt_n":20,"prompt_ms":40.0,"prompt_per_second":500.25,"predicted_n":16,"predicted_ms":200.0,"predicted_per_second":80.5},"usage":{"completion_tokens":15,"prompt_tokens":25,"total_tokens":40}}"#;
    let expected = TokenUsage {
        input: Some(20),
        output: Some(16),
        cached: Some(5),
        prompt_per_second: Some(500.25),
        tokens_per_second: Some(80.5),
        ..TokenUsage::default()
    };
    // The body's timings also give llama.cpp's own time (prompt_ms + predicted_ms).
    let with_time = TokenUsage {
        upstream_millis: Some(240.0),
        ..expected
    };
    assert_eq!(scan(false, body), with_time);

    // The same in a stream whose earlier chunks carry partial timings: the last one wins.
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"timings\":{\"prompt_n\":20,\"predicted_n\":1,\"predicted_per_second\":10.0}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"completion_tokens\":15,\"prompt_tokens\":25},\"timings\":{\"cache_n\":5,\"prompt_n\":20,\"prompt_per_second\":500.25,\"predicted_n\":16,\"predicted_per_second\":80.5}}\n\n",
        "data: [DONE]\n\n",
    );
    assert_eq!(scan(true, stream.as_bytes()), expected);

    // Without the rates, they are derived from the counts and milliseconds.
    let derived = scan(
        false,
        br#"{"timings":{"prompt_n":20,"prompt_ms":40.0,"predicted_n":16,"predicted_ms":200.0}}"#,
    );
    assert_eq!(derived.prompt_per_second, Some(500.0));
    assert_eq!(derived.tokens_per_second, Some(80.0));
    assert_eq!(derived.cached, None);

    // llama.cpp /infill answers with an array: the last element's timings count.
    let infill = br#"[{"content":"a","timings":{"prompt_n":1,"predicted_n":2}},{"content":"b","timings":{"prompt_n":3,"predicted_n":4}}]"#;
    let usage = scan(false, infill);
    assert_eq!((usage.input, usage.output), (Some(3), Some(4)));
}

#[test]
fn anthropic_stream() {
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":11,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let expected = TokenUsage {
        input: Some(25),
        output: Some(15),
        cached: Some(11),
        ..TokenUsage::default()
    };
    assert_eq!(scan(true, stream.as_bytes()), expected);
    // A later zero does not erase an earlier non-zero value.
    let zero =
        "data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":0,\"output_tokens\":16}}\n";
    assert_eq!(
        scan(true, format!("{stream}{zero}").as_bytes()),
        TokenUsage {
            output: Some(16),
            ..expected
        }
    );
    // The non-streamed Anthropic body.
    let body = br#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"Hi"}],"usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":2}}"#;
    assert_eq!(
        scan(false, body),
        TokenUsage {
            input: Some(3),
            output: Some(4),
            cached: Some(2),
            ..TokenUsage::default()
        }
    );
}

#[test]
fn openai_responses_usage() {
    let expected = TokenUsage {
        input: Some(36),
        output: Some(87),
        cached: Some(12),
        ..TokenUsage::default()
    };
    let body = br#"{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"ok"}]}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":12},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#;
    assert_eq!(scan(false, body), expected);
    let stream = concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"delta\":\"ok\"}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":12},\"output_tokens\":87,\"total_tokens\":123}}}\n\n",
    );
    assert_eq!(scan(true, stream.as_bytes()), expected);
}

#[test]
fn no_usage_means_all_none() {
    assert_eq!(
        scan(false, br#"{"data":[{"embedding":[0.1,0.2]}]}"#),
        TokenUsage::default()
    );
    assert_eq!(scan(false, b""), TokenUsage::default());
    assert_eq!(scan(false, b"not json at all"), TokenUsage::default());
    assert_eq!(
        scan(
            true,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n"
        ),
        TokenUsage::default()
    );
    assert_eq!(scan(true, b""), TokenUsage::default());
    // Values of unexpected types are ignored, not fatal.
    assert_eq!(
        scan(false, br#"{"usage":{"prompt_tokens":"many","completion_tokens":[1],"prompt_tokens_details":null}}"#),
        TokenUsage::default()
    );
    assert_eq!(
        scan(
            false,
            br#"{"usage":{"prompt_tokens":-1,"completion_tokens":3.0},"timings":null}"#
        ),
        TokenUsage {
            output: Some(3),
            ..TokenUsage::default()
        }
    );
}

#[test]
fn done_and_invalid_json_lines_are_ignored() {
    let stream = concat!(
        "data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n",
        "data: {\"usage\":{\"prompt_tokens\":100, broken\n",
        "data: {\"usage\":{\"prompt_tokens\":100}} trailing\n",
        "data: [DONE]\n",
        "data:[DONE]\n",
        "event: usage\n",
        "data: \"usage\"\n",
    );
    assert_eq!(
        scan(true, stream.as_bytes()),
        TokenUsage {
            input: Some(5),
            output: Some(6),
            ..TokenUsage::default()
        }
    );
}

#[test]
fn five_megabyte_stream_stays_bounded() {
    let chunk = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"some generated text here\"}}],\"usage\":null}\n\n";
    let mut body = String::with_capacity(5 * 1024 * 1024 + 4096);
    while body.len() < 5 * 1024 * 1024 {
        body.push_str(chunk);
    }
    // One overlong line in the middle is skipped without growing the carry.
    body.push_str("data: {\"choices\":[{\"delta\":{\"content\":\"");
    body.push_str(&"x".repeat(200 * 1024));
    body.push_str("\"}}]}\n\n");
    body.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":99999}}\n\ndata: [DONE]\n\n");
    let mut scanner = UsageScanner::new(true);
    for piece in body.as_bytes().chunks(1024) {
        scanner.feed(piece);
        assert!(
            scanner.retained_bytes() <= 64 * 1024,
            "{}",
            scanner.retained_bytes()
        );
    }
    let usage = scanner.finish();
    assert_eq!((usage.input, usage.output), (Some(9), Some(99999)));
}

#[test]
fn five_megabyte_json_body_stays_bounded() {
    let mut body = String::from(r#"{"choices":[{"message":{"content":""#);
    // Generated text that mentions usage in escaped form and contains braces.
    let filler = r#"text with \"usage\": {\"prompt_tokens\": 1} and } braces { "#;
    while body.len() < 5 * 1024 * 1024 {
        body.push_str(filler);
    }
    body.push_str(r#""}}],"usage":{"prompt_tokens":321,"completion_tokens":654,"prompt_tokens_details":{"cached_tokens":7}}}"#);
    let mut scanner = UsageScanner::new(false);
    for piece in body.as_bytes().chunks(1024) {
        scanner.feed(piece);
        assert!(scanner.retained_bytes() <= 64 * 1024);
    }
    assert_eq!(
        scanner.finish(),
        TokenUsage {
            input: Some(321),
            output: Some(654),
            cached: Some(7),
            ..TokenUsage::default()
        }
    );
    // A single huge feed is bounded as well.
    let mut scanner = UsageScanner::new(false);
    scanner.feed(body.as_bytes());
    assert!(scanner.retained_bytes() <= JSON_TAIL_BYTES);
    assert_eq!(scanner.finish().input, Some(321));
}

#[test]
fn overlong_responses_event_still_yields_usage() {
    let text = "y".repeat(300 * 1024);
    let line = format!(
        "data: {{\"type\":\"response.completed\",\"response\":{{\"output\":[{{\"content\":[{{\"text\":\"{text}\"}}]}}],\"tools\":[{{\"parameters\":{{\"usage\":{{\"type\":\"string\"}}}}}}],\"usage\":{{\"input_tokens\":11,\"output_tokens\":22}},\"user\":null}}}}\n\n"
    );
    let expected = TokenUsage {
        input: Some(11),
        output: Some(22),
        ..TokenUsage::default()
    };
    // Carried across many chunks.
    let mut scanner = UsageScanner::new(true);
    for piece in line.as_bytes().chunks(1000) {
        scanner.feed(piece);
        assert!(scanner.retained_bytes() <= MAX_LINE_BYTES);
    }
    assert_eq!(scanner.finish(), expected);
    // Complete within one chunk.
    assert_eq!(scan(true, line.as_bytes()), expected);
    // An overlong line that is not a data line is skipped.
    let other = format!("event: {text}\n\n");
    assert_eq!(scan(true, other.as_bytes()), TokenUsage::default());
}

#[test]
fn brace_matching_handles_strings() {
    let window = br#"xx"usage": {"a": "}\"{", "b": [1, {"c": "\\"}], "prompt_tokens": 4} tail"#;
    let open = window
        .iter()
        .position(|&b| b == b'{')
        .expect("an open brace");
    let close = matching_brace(window, open).expect("a match");
    assert!(window[..close].ends_with(br#""prompt_tokens": 4}"#));
    assert_eq!(matching_brace(br#"{"a": "}"#, 0), None);
    assert!(is_escaped(br#"a\"usage"#, 2));
    assert!(!is_escaped(br#"a\\"usage"#, 3));
    // A window that starts inside a string still finds the real key.
    let mut found = Found::default();
    search_objects(
        &mut found,
        br#"ge\": {\"prompt_tokens\": 1}, more", "usage": {"prompt_tokens": 4, "note": "{\"x\"}"}}"#,
    );
    assert_eq!(found.input, Some(4));
}

#[test]
fn sse_hot_path_keeps_its_allocation() {
    let mut scanner = UsageScanner::new(true);
    let line = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n";
    for _ in 0..100 {
        scanner.feed(&line[..20]);
        scanner.feed(&line[20..]);
    }
    let capacity = scanner.retained_bytes();
    assert!(capacity > 0 && capacity <= 256);
    for _ in 0..1000 {
        scanner.feed(&line[..20]);
        scanner.feed(&line[20..]);
    }
    assert_eq!(scanner.retained_bytes(), capacity);
    assert!(!mentions_usage_or_timings(&line[6..]));
    assert!(mentions_usage_or_timings(b"{\"a\":1,\"usage\":null}"));
    assert!(mentions_usage_or_timings(b"{\"timings\":{}}"));
}

#[test]
fn scanner_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<UsageScanner>();
}
