//! The YAML itself: unknown keys (warned, with suggestions and lines), llama-swap keys swapd
//! ignores, anchors and merge keys, nesting limits.

use super::*;

#[test]
fn unknown_keys_warn_with_suggestion_and_line() {
    let loaded = load_ok(
        "\
healthCheckTimout: 30
x-anchors: &base {ttl: 5}
models:
  qwen:
    cmd: srv --port ${PORT}
    ttll: 60
    zzzzzzzzzz: 1
    filters:
      stripParam: a
groups:
  g:
    member: [qwen]
swapd:
  maxBodyByte: 5
",
    );
    assert_eq!(
        loaded.warnings,
        [
            "config.yaml:1:1: healthCheckTimout: unknown key; did you mean 'healthCheckTimeout'?",
            "config.yaml:14:3: swapd.maxBodyByte: unknown key; did you mean 'maxBodyBytes'?",
            "config.yaml:6:5: models.qwen.ttll: unknown key; did you mean 'ttl'?",
            "config.yaml:7:5: models.qwen.zzzzzzzzzz: unknown key",
            "config.yaml:9:7: models.qwen.filters.stripParam: unknown key; did you mean 'stripParams'?",
            "config.yaml:12:5: groups.g.member: unknown key; did you mean 'members'?",
        ]
    );
}

#[test]
fn ignored_llama_swap_keys_load() {
    let loaded = load_ok(
        "\
logRequests: true
captureBuffer: 10
ui: {activity: {session_id: []}}
performance: {disabled: true}
models:
  m:
    cmd: srv --port ${PORT}
    timeouts: {responseHeader: 30, keepalive: 30}
peers: {}
profiles:
selectors: {}
",
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.config.models["m"].timeouts.response_header,
        Some(std::time::Duration::from_secs(30))
    );
}

#[test]
fn yaml_anchors_and_merge_keys_are_expanded_before_macros() {
    let loaded = load_ok(
        "\
x-common: &common
  cmd: srv --port ${PORT} --id ${MODEL_ID}
  ttl: 30
models:
  a:
    <<: *common
  b:
    <<: *common
    ttl: 60
",
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.config.models["a"].cmd_display,
        "srv --port 5800 --id a"
    );
    assert_eq!(
        loaded.config.models["b"].cmd_display,
        "srv --port 5801 --id b"
    );
    assert_eq!(loaded.config.models["b"].ttl, secs(60));
}

#[test]
fn deep_nesting_is_rejected_before_parsing() {
    let deep = format!("models: {}{}\n", "[".repeat(20_000), "]".repeat(20_000));
    let started = std::time::Instant::now();
    let error = load_err(&deep);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(error.message.contains("nested deeper than 64"), "{error}");
    assert_eq!(error.line, Some(1));
    // Brackets inside quotes and comments do not count.
    let quoted = format!(
        "models:\n  a:\n    cmd: \"x --port ${{PORT}} {}\" # {}\n",
        "[".repeat(100),
        "{".repeat(100)
    );
    load_ok(&quoted);
}
