//! Table tests for the Ollama ↔ OpenAI translation rules in `translate` and its submodules.

use super::*;

fn secs(s: f64) -> Option<KeepAlive> {
    Some(KeepAlive::For(Duration::from_secs_f64(s)))
}

#[test]
fn keep_alive_forms() {
    let table: &[(Value, Option<KeepAlive>)] = &[
        (json!("5m"), secs(300.0)),
        (json!("1h30m"), secs(5400.0)),
        (json!("300ms"), secs(0.3)),
        (json!("1.5s"), secs(1.5)),
        (json!("24h"), secs(86_400.0)),
        (json!("0"), Some(KeepAlive::Unload)),
        (json!("0s"), Some(KeepAlive::Unload)),
        (json!(0), Some(KeepAlive::Unload)),
        (json!(-1), Some(KeepAlive::Forever)),
        (json!("-1"), Some(KeepAlive::Forever)),
        (json!("-1m"), Some(KeepAlive::Forever)),
        (json!(30), secs(30.0)),
        (json!(2.5), secs(2.5)),
        (Value::Null, None),
    ];
    for (value, expected) in table {
        assert_eq!(&parse_keep_alive(Some(value)).unwrap(), expected, "{value}");
    }
    assert_eq!(parse_keep_alive(None).unwrap(), None);
    for bad in [
        json!("3600"),
        json!("5 minutes"),
        json!("m"),
        json!(true),
        json!([1]),
    ] {
        let error = parse_keep_alive(Some(&bad)).unwrap_err();
        assert!(error.contains("keep_alive"), "{bad}: {error}");
    }
}

#[test]
fn options_map_to_upstream_names() {
    let options = json!({
        "temperature": 0.2, "top_p": 0.9, "top_k": 7, "num_predict": 12,
        "stop": ["\n", "END"], "seed": 42, "repeat_penalty": 1.1,
        "num_ctx": 4096, "mirostat": 1, "min_p": 0.05,
    });
    let mut out = Map::new();
    let mapped = map_options(Some(&options), &mut out, "max_tokens").unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"temperature": 0.2, "top_p": 0.9, "top_k": 7, "max_tokens": 12,
               "stop": ["\n", "END"], "seed": 42, "repeat_penalty": 1.1, "min_p": 0.05})
    );
    let mut ignored = mapped.ignored.clone();
    ignored.sort();
    assert_eq!(ignored, ["mirostat", "num_ctx"]);

    let mut out = Map::new();
    map_options(
        Some(&json!({"num_predict": 5, "stop": "x"})),
        &mut out,
        "n_predict",
    )
    .unwrap();
    assert_eq!(Value::Object(out), json!({"n_predict": 5, "stop": ["x"]}));

    let mut out = Map::new();
    map_options(Some(&json!({"num_predict": -1})), &mut out, "max_tokens").unwrap();
    assert!(out.is_empty(), "-1 means no limit: {out:?}");

    for bad in [
        json!({"temperature": "hot"}),
        json!({"stop": 3}),
        json!({"num_predict": 1.5}),
        json!([1]),
    ] {
        let mut out = Map::new();
        assert!(
            map_options(Some(&bad), &mut out, "max_tokens").is_err(),
            "{bad}"
        );
    }
}

#[test]
fn format_and_think() {
    assert_eq!(
        response_format(Some(&json!("json"))).unwrap(),
        Some(json!({"type": "json_object"}))
    );
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    assert_eq!(
        response_format(Some(&schema)).unwrap(),
        Some(json!({"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}))
    );
    assert_eq!(response_format(Some(&json!(""))).unwrap(), None);
    assert!(response_format(Some(&json!("yaml"))).is_err());
    assert_eq!(
        think_kwargs(Some(&json!(true))).unwrap(),
        Some(json!({"enable_thinking": true}))
    );
    assert_eq!(
        think_kwargs(Some(&json!("high"))).unwrap(),
        Some(json!({"enable_thinking": true, "reasoning_effort": "high"}))
    );
    assert!(think_kwargs(Some(&json!("extreme"))).is_err());
}

#[test]
fn messages_translate_images_tools_and_thinking() {
    let messages = json!([
        {"role": "system", "content": "be brief"},
        {"role": "USER", "content": "what is this?", "images": ["iVBORw0KGgo=", "/9j/4AAQ"]},
        {"role": "assistant", "content": "", "thinking": "hmm",
         "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
    ]);
    let out = chat_messages(&messages).unwrap();
    assert_eq!(out[0], json!({"role": "system", "content": "be brief"}));
    assert_eq!(
        out[1],
        json!({"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        ]})
    );
    assert_eq!(
        out[2],
        json!({"role": "assistant", "content": "", "reasoning_content": "hmm",
               "tool_calls": [{"id": "call_0", "type": "function",
                               "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]})
    );
    assert_eq!(
        out[3],
        json!({"role": "tool", "content": "sunny", "name": "weather", "tool_call_id": "call_0"})
    );
    assert!(chat_messages(&json!([{"content": "no role"}])).is_err());
    assert!(chat_messages(&json!([{"role": "user", "content": ["parts"]}])).is_err());
    assert!(chat_messages(&json!("text")).is_err());
}

#[test]
fn chat_request_defaults_to_streaming_and_maps_everything() {
    let request = json!({
        "model": "m:latest", "messages": [{"role": "user", "content": "hi"}],
        "format": "json", "options": {"temperature": 0, "num_ctx": 8192}, "think": false,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "keep_alive": "10m",
    });
    let translated = chat_request(&request).unwrap();
    assert!(translated.stream);
    assert!(!translated.load_only);
    assert_eq!(translated.model, "m:latest");
    assert_eq!(translated.keep_alive, secs(600.0));
    assert_eq!(translated.ignored_options, ["num_ctx"]);
    assert_eq!(
        translated.body,
        json!({
            "model": "m:latest", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "stream": true, "stream_options": {"include_usage": true},
            "temperature": 0, "response_format": {"type": "json_object"},
            "chat_template_kwargs": {"enable_thinking": false},
        })
    );
    let load = chat_request(&json!({"model": "m", "stream": false})).unwrap();
    assert!(load.load_only && !load.stream);
    assert_eq!(load.body["stream"], false);
    assert!(load.body.get("stream_options").is_none());
    for bad in [
        json!({"messages": []}),
        json!({"model": 3}),
        json!({"model": "m", "stream": "yes"}),
        json!([]),
    ] {
        assert!(chat_request(&bad).is_err(), "{bad}");
    }
}

#[test]
fn generate_routes_by_mode() {
    let chat = generate_request(
        &json!({"model": "m", "prompt": "p", "system": "s", "stream": false}),
        true,
    )
    .unwrap();
    assert_eq!(chat.endpoint, Endpoint::Chat);
    assert_eq!(
        chat.body["messages"],
        json!([{"role": "system", "content": "s"}, {"role": "user", "content": "p"}])
    );
    let raw = generate_request(&json!({"model": "m", "prompt": "p", "raw": true}), true).unwrap();
    assert_eq!(raw.endpoint, Endpoint::Completions);
    assert_eq!(raw.body["prompt"], "p");
    let infill = generate_request(
        &json!({"model": "m", "prompt": "def f(", "suffix": "return x", "options": {"num_predict": 9}}),
        true,
    )
    .unwrap();
    assert_eq!(infill.endpoint, Endpoint::Infill);
    assert_eq!(infill.body["input_prefix"], "def f(");
    assert_eq!(infill.body["input_suffix"], "return x");
    assert_eq!(infill.body["n_predict"], 9);
    assert!(infill.body.get("stream_options").is_none());
    let fim =
        generate_request(&json!({"model": "m", "prompt": "a", "suffix": "b"}), false).unwrap();
    assert_eq!(fim.endpoint, Endpoint::Completions);
    assert_eq!(
        (fim.body["prompt"].as_str(), fim.body["suffix"].as_str()),
        (Some("a"), Some("b"))
    );
    let images = generate_request(
        &json!({"model": "m", "prompt": "see", "images": ["R0lGODlh"]}),
        true,
    )
    .unwrap();
    assert_eq!(
        images.body["messages"][0]["content"][1]["image_url"]["url"],
        "data:image/gif;base64,R0lGODlh"
    );
    let templated = generate_request(
        &json!({"model": "m", "prompt": "p", "template": "{{ .Prompt }}", "context": [1, 2]}),
        true,
    )
    .unwrap();
    assert_eq!(templated.ignored_options, ["template", "context"]);
    let load = generate_request(&json!({"model": "m", "keep_alive": 0}), true).unwrap();
    assert!(load.load_only);
    assert_eq!(load.keep_alive, Some(KeepAlive::Unload));
    assert!(generate_request(
        &json!({"model": "m", "prompt": "p", "raw": true, "system": "s"}),
        true
    )
    .is_err());
    assert!(generate_request(&json!({"model": "m", "prompt": 1}), true).is_err());
}

#[test]
fn pieces_from_every_upstream_shape() {
    let chunk =
        json!({"choices": [{"index": 0, "delta": {"content": "a", "reasoning_content": "r"}}]});
    let got = piece(&chunk);
    assert_eq!((got.content.as_str(), got.thinking.as_str()), ("a", "r"));
    let text = piece(&json!({"choices": [{"text": "t", "finish_reason": "length"}]}));
    assert_eq!(
        (text.content.as_str(), text.finish_reason.as_deref()),
        ("t", Some("length"))
    );
    let native = piece(&json!({"content": "n", "stop": true, "stopped_limit": true,
                               "tokens_evaluated": 4, "tokens_predicted": 2}));
    assert_eq!(native.finish_reason.as_deref(), Some("length"));
    assert_eq!(
        (native.stats.prompt_tokens, native.stats.completion_tokens),
        (Some(4), Some(2))
    );
    let last = piece(&json!({"choices": [{"delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 5},
        "timings": {"prompt_n": 22, "cache_n": 3, "prompt_ms": 13.0, "predicted_n": 5, "predicted_ms": 17.5}}));
    assert_eq!(last.stats.prompt_eval_count(), Some(25));
    assert_eq!(last.stats.eval_count(), Some(5));
    let no_usage = Stats {
        prompt_n: Some(22),
        cache_n: Some(3),
        predicted_n: Some(5),
        ..Stats::default()
    };
    assert_eq!(
        (no_usage.prompt_eval_count(), no_usage.eval_count()),
        (Some(25), Some(5))
    );
    let error = piece(&json!({"error": {"code": 500, "message": "boom"}}));
    assert_eq!(error.error.as_deref(), Some("boom"));
}

#[test]
fn tool_call_fragments_join_per_index() {
    let fragments = [
        CallFragment {
            index: 0,
            id: Some("call_a".into()),
            name: Some("weather".into()),
            arguments: "{\"ci".into(),
        },
        CallFragment {
            index: 1,
            id: Some("call_b".into()),
            name: Some("time".into()),
            arguments: String::new(),
        },
        CallFragment {
            index: 0,
            id: None,
            name: None,
            arguments: "ty\":\"Paris\"}".into(),
        },
    ];
    assert_eq!(
        tool_calls(&fragments),
        vec![
            json!({"id": "call_a", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}}),
            json!({"id": "call_b", "function": {"index": 1, "name": "time", "arguments": {}}}),
        ]
    );
}

#[test]
fn final_line_carries_metrics() {
    let stats = Stats {
        prompt_tokens: Some(25),
        completion_tokens: Some(5),
        prompt_ms: Some(13.0),
        predicted_ms: Some(17.5),
        ..Stats::default()
    };
    let measured = Measured {
        total: Duration::from_millis(40),
        load: Duration::from_millis(2),
        ..Measured::default()
    };
    let mut line = response_line(Kind::Chat, "m", "t", "", "", Vec::new(), true);
    finish_line(&mut line, "stop", &stats, &measured);
    assert_eq!(
        Value::Object(line),
        json!({"model": "m", "created_at": "t", "message": {"role": "assistant", "content": ""},
               "done": true, "done_reason": "stop", "total_duration": 40_000_000u64,
               "load_duration": 2_000_000u64, "prompt_eval_count": 25,
               "prompt_eval_duration": 13_000_000u64, "eval_count": 5, "eval_duration": 17_500_000u64})
    );
    let mut line = response_line(Kind::Generate, "m", "t", "", "", Vec::new(), true);
    finish_line(&mut line, "length", &Stats::default(), &Measured::default());
    assert!(line.get("eval_count").is_none() && line.get("eval_duration").is_none());
    assert_eq!(line["response"], "");
}

#[test]
fn whole_answers_translate() {
    let upstream = json!({"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant",
        "content": "", "tool_calls": [{"id": "c1", "type": "function",
        "function": {"name": "f", "arguments": "{\"x\":1}"}}]}}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}});
    let out = whole_response(Kind::Chat, "m:latest", "t", &upstream, &Measured::default());
    assert_eq!(
        out["message"]["tool_calls"],
        json!([{"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}])
    );
    assert_eq!(
        (out["done"].as_bool(), out["done_reason"].as_str()),
        (Some(true), Some("stop"))
    );
    assert_eq!(
        (
            out["prompt_eval_count"].as_u64(),
            out["eval_count"].as_u64()
        ),
        (Some(3), Some(4))
    );
    let generate = whole_response(
        Kind::Generate,
        "m",
        "t",
        &json!({"choices": [{"text": "xyz", "finish_reason": "length"}]}),
        &Measured::default(),
    );
    assert_eq!(
        (
            generate["response"].as_str(),
            generate["done_reason"].as_str()
        ),
        (Some("xyz"), Some("length"))
    );
    assert_eq!(
        load_response(Kind::Chat, "m", "t", true)["done_reason"],
        "unload"
    );
    assert_eq!(
        load_response(Kind::Generate, "m", "t", false)["response"],
        ""
    );
}

#[test]
fn embeddings() {
    let request = embed_request(
        &json!({"model": "e", "input": ["a", "b"], "dimensions": 2}),
        false,
    )
    .unwrap();
    assert_eq!(request.inputs, ["a", "b"]);
    assert_eq!(
        embed_upstream_body(&request),
        json!({"model": "e", "input": ["a", "b"], "dimensions": 2})
    );
    assert_eq!(
        embed_request(&json!({"model": "e", "input": "x"}), false)
            .unwrap()
            .inputs,
        ["x"]
    );
    assert!(embed_request(&json!({"model": "e", "input": ""}), false)
        .unwrap()
        .inputs
        .is_empty());
    assert!(embed_request(&json!({"model": "e", "input": [1]}), false).is_err());
    assert_eq!(
        embed_request(&json!({"model": "e", "prompt": "p"}), true)
            .unwrap()
            .inputs,
        ["p"]
    );
    let upstream = json!({"data": [{"index": 1, "embedding": [0.0, 2.0, 9.0]}, {"index": 0, "embedding": [3.0, 4.0, 1.0]}],
                          "usage": {"prompt_tokens": 6}});
    let out = embed_response("e", &upstream, Some(2), &Measured::default()).unwrap();
    assert_eq!(out["embeddings"], json!([[0.6, 0.8], [0.0, 1.0]]));
    assert_eq!(out["prompt_eval_count"], 6);
    let legacy = legacy_embedding_response(&json!({"data": [{"embedding": [3.0, 4.0]}]})).unwrap();
    assert_eq!(legacy, json!({"embedding": [3.0, 4.0]}));
    assert!(embed_response("e", &json!({"oops": 1}), None, &Measured::default()).is_err());
}

#[test]
fn names_times_and_numbers() {
    assert_eq!(listed_name("qwen"), "qwen:latest");
    assert_eq!(listed_name("qwen:7b"), "qwen:7b");
    assert_eq!(listed_name("org/m"), "org/m:latest");
    assert_eq!(listed_name("host:8080/m"), "host:8080/m:latest");
    assert_eq!(lookup_names("a:latest"), ["a:latest", "a"]);
    assert_eq!(lookup_names("a"), ["a"]);
    assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
    assert_eq!(
        rfc3339(1_691_176_965, 499_127_000),
        "2023-08-04T19:22:45.499127Z"
    );
    assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
    assert_eq!(rfc3339(4_102_444_800, 0), "2100-01-01T00:00:00Z");
    assert_eq!(human_number(7_615_616_512), "7.6B");
    assert_eq!(human_number(8_000_000_000), "8B");
    assert_eq!(human_number(494_032_768), "494.03M");
    assert_eq!(human_number(135_000_000), "135M");
    assert_eq!(human_number(91_456), "91K");
    assert_eq!(human_number(999), "999");
    assert_eq!(image_mime("UklGRh4AAABXRUJQ"), "image/webp");
}
