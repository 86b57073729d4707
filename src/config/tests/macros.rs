//! Macro expansion (step 2): order, scopes, `${env.X}`, typed whole-value macros, limits.

use super::*;

#[test]
fn macros_expand_last_to_first_with_model_overrides() {
    let loaded = load_ok(
        "\
macros:
  bin: /opt/bin/server
  base: ${bin} --threads 4
  ctx: 2048
models:
  a:
    cmd: ${base} --ctx ${ctx} --port ${PORT} --alias ${MODEL_ID}
  b:
    macros:
      ctx: 8192
      extra: --flash
    cmd: ${base} --ctx ${ctx} ${extra} --port ${PORT}
",
    );
    assert_eq!(
        loaded.config.models["a"].cmd_display,
        "/opt/bin/server --threads 4 --ctx 2048 --port 5800 --alias a"
    );
    assert_eq!(
        loaded.config.models["b"].cmd_display,
        "/opt/bin/server --threads 4 --ctx 8192 --flash --port 5801"
    );
}

#[test]
fn model_macros_do_not_leak_to_other_models() {
    let error = load_err(
        "\
models:
  a:
    macros: {only_a: x}
    cmd: srv ${only_a} --port ${PORT}
  b:
    cmd: srv ${only_a} --port ${PORT}
",
    );
    assert_eq!(error.key, "models.b.cmd");
    assert_eq!(error.line, Some(6));
    assert_eq!(error.message, "unknown macro '${only_a}'");
}

#[test]
fn forward_macro_reference_is_an_unknown_macro() {
    let error = load_err(
        "\
macros:
  first: ${second}
  second: value
models:
  m:
    cmd: srv ${first} --port ${PORT}
",
    );
    assert_eq!(
        error.to_string(),
        "config.yaml:6:5: models.m.cmd: unknown macro '${second}'"
    );
}

#[test]
fn self_referencing_macro_is_rejected() {
    let error = load_err("macros:\n  a: x ${a}\nmodels: {}\n");
    assert_eq!(error.key, "macros.a");
    assert_eq!(error.line, Some(2));
    assert!(error.message.contains("refers to itself"), "{error}");
}

#[test]
fn global_macros_apply_to_other_sections() {
    let loaded = load_ok(
        "\
macros:
  key: secret
  port: 7000
  who: m
startPort: ${port}
apiKeys: [\"${key}\"]
hooks:
  on_startup:
    preload: [\"${who}\"]
models:
  m:
    cmd: srv --port ${PORT}
",
    );
    assert_eq!(loaded.config.start_port, 7000);
    assert_eq!(loaded.config.api_keys, ["secret"]);
    assert_eq!(loaded.config.preload, ["m"]);
    assert_eq!(loaded.config.models["m"].port, Some(7000));
}

#[test]
fn env_macros_are_substituted_first_and_unset_ones_fail() {
    let loaded = load_ok(
        "\
# ${env.NOT_SET_BUT_IN_A_COMMENT}
models:
  m:
    cmd: srv --dir ${env.SWAPD_TEST_DIR} --port ${PORT}  # ${env.ALSO_IGNORED}
",
    );
    assert_eq!(loaded.config.models["m"].cmd[2], "/srv/models");

    let error = load_err("models:\n  m:\n    cmd: srv ${env.SWAPD_TEST_UNSET}\n");
    assert_eq!(
        error.to_string(),
        "config.yaml:3:14: models.m.cmd: environment variable 'SWAPD_TEST_UNSET' is not set"
    );
}

#[test]
fn whole_value_macros_keep_their_type_in_metadata() {
    let loaded = load_ok(
        "\
macros:
  ctx: 4096
  temp: 0.7
  fast: true
  label: big
models:
  m:
    cmd: srv --port ${PORT}
    metadata:
      context: ${ctx}
      temperature: ${temp}
      fast: ${fast}
      port: ${PORT}
      id: ${MODEL_ID}
      text: ctx=${ctx} on ${PORT}
      nested: {list: [\"${label}\", 1, null]}
",
    );
    assert_eq!(
        loaded.config.models["m"].metadata,
        json!({
            "context": 4096,
            "temperature": 0.7,
            "fast": true,
            "port": 5800,
            "id": "m",
            "text": "ctx=4096 on 5800",
            "nested": {"list": ["big", 1, null]},
        })
    );
}

#[test]
fn whole_value_macros_feed_typed_settings() {
    let loaded = load_ok(
        "\
macros:
  idle: 45
  hidden: true
  limit: \"3\"
models:
  m:
    cmd: srv --port ${PORT}
    ttl: ${idle}
    unlisted: ${hidden}
    concurrencyLimit: ${limit}
",
    );
    let model = &loaded.config.models["m"];
    assert_eq!(model.ttl, secs(45));
    assert!(model.unlisted);
    assert_eq!(model.concurrency_limit, 3);
}

#[test]
fn exponential_macros_are_an_error_naming_the_field() {
    let mut text = String::from("macros:\n  m0: \"xxxxxxxxxxxxxxxx\"\n");
    for i in 1..40 {
        text.push_str(&format!("  m{i}: \"${{m{}}}${{m{}}}\"\n", i - 1, i - 1));
    }
    text.push_str("models:\n  a:\n    cmd: x ${m39}\n    proxy: http://127.0.0.1:9\n");
    let started = std::time::Instant::now();
    let error = load_err(&text);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(error.key, "models.a.cmd");
    assert!(error.message.contains("grows past"), "{error}");
}

#[test]
fn capabilities_are_read_with_macros() {
    let loaded = load_ok(
        "\
macros:
  ctx: 8192
  eyes: image
models:
  m:
    cmd: srv --port ${PORT}
    capabilities:
      in: [text, \"${eyes}\"]
      out: [text]
      tools: true
      context: ${ctx}
  plain:
    cmd: srv --port ${PORT}
",
    );
    let capabilities = &loaded.config.models["m"].capabilities;
    assert_eq!(capabilities.input, ["text", "image"]);
    assert_eq!(capabilities.output, ["text"]);
    assert!(capabilities.tools && !capabilities.reranker);
    assert_eq!(capabilities.context, 8192);
    assert!(loaded.config.models["plain"].capabilities.is_empty());
    // The block is read now, so no "not supported" warning is left for it.
    assert!(
        !loaded.warnings.iter().any(|w| w.contains("capabilities")),
        "{:?}",
        loaded.warnings
    );
}
