//! Tests of the whole loading pipeline, from YAML text to `Config`, mirroring llama-swap's
//! rules (reference §1) and checking that every error names its key, problem and line.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::*;

fn test_env(name: &str) -> Option<String> {
    match name {
        "SWAPD_TEST_DIR" => Some("/srv/models".to_string()),
        "SWAPD_TEST_KEY" => Some("sk-from-env".to_string()),
        _ => None,
    }
}

fn load_ok(text: &str) -> Loaded {
    parse(text, Path::new("config.yaml"), &test_env).unwrap_or_else(|error| panic!("{error}"))
}

fn load_err(text: &str) -> ConfigError {
    match parse(text, Path::new("config.yaml"), &test_env) {
        Ok(loaded) => panic!("expected an error, loaded {:#?}", loaded.config),
        Err(error) => error,
    }
}

fn secs(value: u64) -> Duration {
    Duration::from_secs(value)
}

#[test]
fn defaults_of_every_key() {
    let loaded = load_ok("models:\n  m:\n    cmd: srv --port ${PORT}\n");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = &loaded.config;
    assert_eq!(config.health_check_timeout, secs(120));
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.log_time_format, None);
    assert_eq!(config.log_to_stdout, LogToStdout::Proxy);
    assert_eq!(config.start_port, 5800);
    assert!(!config.send_loading_state);
    assert!(!config.include_aliases_in_list);
    assert_eq!(config.global_ttl, Duration::ZERO);
    assert_eq!(config.unload_timeout, secs(10));
    assert_eq!(config.metrics_max_in_memory, 1000);
    assert!(config.api_keys.is_empty());
    assert!(config.preload.is_empty());
    assert!(config.aliases.is_empty());
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.limits.log_buffer_bytes, 102_400);
    assert_eq!(config.limits.max_body_bytes, 64 * 1024 * 1024);
    assert_eq!(config.limits.header_timeout, secs(10));
    assert_eq!(config.limits.max_connections, 1024);
    assert_eq!(config.limits.upstream_timeout, secs(600));
    assert_eq!(config.limits.shutdown_timeout, secs(30));
    assert_eq!(
        config.groups,
        vec![GroupConfig {
            id: DEFAULT_GROUP_ID.to_string(),
            swap: true,
            exclusive: true,
            persistent: false,
            members: vec!["m".to_string()],
        }]
    );

    let model = &config.models["m"];
    assert_eq!(
        model,
        &ModelConfig {
            id: "m".to_string(),
            cmd: vec!["srv".to_string(), "--port".to_string(), "5800".to_string()],
            cmd_display: "srv --port 5800".to_string(),
            cmd_stop: None,
            proxy: "http://localhost:5800".to_string(),
            aliases: Vec::new(),
            env: Vec::new(),
            check_endpoint: Some("/health".to_string()),
            ttl: Duration::ZERO,
            unload_timeout: secs(10),
            unlisted: false,
            use_model_name: None,
            name: None,
            description: None,
            concurrency_limit: 10,
            filters: Filters::default(),
            metadata: serde_json::Value::Null,
            send_loading_state: false,
            port: Some(5800),
        }
    );
}

#[test]
fn empty_file_loads_with_a_warning() {
    let loaded = load_ok("");
    assert_eq!(loaded.config, Config::default());
    assert_eq!(
        loaded.warnings,
        ["config.yaml: models: no models are configured"]
    );
}

#[test]
fn explicit_top_level_settings_are_read() {
    let loaded = load_ok(
        "\
healthCheckTimeout: 5
logLevel: debug
logTimeFormat: RFC3339
logToStdout: both
startPort: 9000
sendLoadingState: true
includeAliasesInList: yes
globalTTL: 300
unloadTimeout: 0
metricsMaxInMemory: 50
apiKeys: [\"k1\", \"${env.SWAPD_TEST_KEY}\"]
swapd:
  logBufferBytes: 2048
  maxBodyBytes: 1000
  headerTimeout: 3
  maxConnections: 7
  upstreamTimeout: 60
  shutdownTimeout: 5
models:
  m:
    cmd: srv
    proxy: http://127.0.0.1:8080/
    ttl: -1
    unloadTimeout: 4
",
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = loaded.config;
    assert_eq!(
        config.health_check_timeout,
        secs(15),
        "raised to the minimum"
    );
    assert_eq!(config.log_level, LogLevel::Debug);
    assert_eq!(config.log_time_format.as_deref(), Some("rfc3339"));
    assert_eq!(config.log_to_stdout, LogToStdout::Both);
    assert_eq!(config.start_port, 9000);
    assert!(config.send_loading_state);
    assert!(config.include_aliases_in_list);
    assert_eq!(config.global_ttl, secs(300));
    assert_eq!(config.unload_timeout, secs(10), "0 means the default");
    assert_eq!(config.metrics_max_in_memory, 50);
    assert_eq!(config.api_keys, ["k1", "sk-from-env"]);
    assert_eq!(
        config.limits,
        Limits {
            log_buffer_bytes: 2048,
            max_body_bytes: 1000,
            header_timeout: secs(3),
            max_connections: 7,
            upstream_timeout: secs(60),
            shutdown_timeout: secs(5),
        }
    );
    let model = &config.models["m"];
    assert_eq!(model.proxy, "http://127.0.0.1:8080");
    assert_eq!(model.port, None);
    assert_eq!(model.ttl, secs(300), "-1 means globalTTL");
    assert_eq!(model.unload_timeout, secs(4));
    assert!(model.send_loading_state, "inherits the global setting");
}

#[test]
fn per_model_settings_are_read() {
    let loaded = load_ok(
        "\
sendLoadingState: true
models:
  m:
    cmd: srv --port ${PORT}
    cmdStop: kill -TERM ${PID}
    aliases: [a1, a2]
    env: [\"A=1\", \"B=x=y\", \"C=\"]
    checkEndpoint: ready
    ttl: 0
    unlisted: true
    useModelName: real-name
    name: Nice ${MODEL_ID}
    description: on port ${PORT}
    concurrencyLimit: 3
    sendLoadingState: false
  n:
    cmd: srv
    proxy: http://h:1
    checkEndpoint: none
    concurrencyLimit: 0
  comfyui_auto:
    cmd: comfy --port ${PORT}
",
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let m = &loaded.config.models["m"];
    assert_eq!(m.cmd_stop.as_deref(), Some("kill -TERM ${PID}"));
    assert_eq!(m.aliases, ["a1", "a2"]);
    assert_eq!(
        m.env,
        [
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x=y".to_string()),
            ("C".to_string(), String::new())
        ]
    );
    assert_eq!(m.check_endpoint.as_deref(), Some("/ready"));
    assert_eq!(m.ttl, Duration::ZERO);
    assert!(m.unlisted);
    assert_eq!(m.use_model_name.as_deref(), Some("real-name"));
    assert_eq!(m.name.as_deref(), Some("Nice m"));
    assert_eq!(
        m.port,
        Some(5801),
        "comfyui_auto sorts first and takes 5800"
    );
    assert_eq!(m.description.as_deref(), Some("on port 5801"));
    assert_eq!(m.concurrency_limit, 3);
    assert!(!m.send_loading_state);
    let n = &loaded.config.models["n"];
    assert_eq!(n.check_endpoint, None);
    assert_eq!(n.concurrency_limit, 10);
    assert_eq!(loaded.config.models["comfyui_auto"].concurrency_limit, 50);
    assert_eq!(loaded.config.resolve_model("a2"), Some("m"));
    assert_eq!(loaded.config.resolve_model("m"), Some("m"));
    assert_eq!(loaded.config.resolve_model("zzz"), None);
    assert_eq!(
        loaded.config.model("a1").map(|model| model.id.as_str()),
        Some("m")
    );
}

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
fn ports_follow_sorted_ids_and_skip_models_without_port() {
    let loaded = load_ok(
        "\
macros:
  first: 6000
startPort: ${first}
models:
  zeta:
    cmd: srv --port ${PORT}
  alpha:
    cmd: srv --port ${PORT}
  fixed:
    cmd: srv --port 9999
    proxy: http://localhost:9999
  commented:
    cmd: |
      srv --port 1234
      # --port ${PORT}
    proxy: http://localhost:1234
  beta:
    cmd: srv --port ${PORT}
",
    );
    let port = |id: &str| loaded.config.models[id].port;
    assert_eq!(port("alpha"), Some(6000));
    assert_eq!(port("beta"), Some(6001));
    assert_eq!(
        port("commented"),
        None,
        "a commented-out ${{PORT}} takes no port"
    );
    assert_eq!(port("fixed"), None);
    assert_eq!(port("zeta"), Some(6002));
    assert_eq!(loaded.config.models["zeta"].proxy, "http://localhost:6002");
}

#[test]
fn pid_is_only_allowed_in_cmd_stop() {
    let loaded = load_ok(
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    cmdStop: |\n      # stop it\n      kill ${PID}\n",
    );
    assert_eq!(
        loaded.config.models["m"].cmd_stop.as_deref(),
        Some("kill ${PID}")
    );

    let error = load_err("models:\n  m:\n    cmd: srv ${PID} --port ${PORT}\n");
    assert_eq!(error.key, "models.m.cmd");
    assert!(error.message.contains("unknown macro '${PID}'"), "{error}");
}

#[test]
fn cmd_is_split_like_a_posix_shell() {
    let loaded = load_ok(
        "\
models:
  m:
    cmd: |
      # leading comment
      /usr/bin/server \\
        --port ${PORT} \\
        # commented-out flag
        --prompt \"say \\\"hi\\\" to ${MODEL_ID}\" \\
        --name 'it''s fine' --raw a\\ b
",
    );
    assert_eq!(
        loaded.config.models["m"].cmd,
        [
            "/usr/bin/server",
            "--port",
            "5800",
            "--prompt",
            "say \"hi\" to m",
            "--name",
            "its fine",
            "--raw",
            "a b"
        ]
    );
    assert_eq!(
        loaded.config.models["m"].cmd_display,
        "/usr/bin/server --port 5800 --prompt 'say \"hi\" to m' --name 'its fine' --raw 'a b'"
    );
}

#[test]
fn groups_in_legacy_form_with_default_group() {
    let loaded = load_ok(
        "\
models:
  a: {cmd: \"srv --port ${PORT}\"}
  b: {cmd: \"srv --port ${PORT}\"}
  c: {cmd: \"srv --port ${PORT}\"}
  d: {cmd: \"srv --port ${PORT}\"}
groups:
  zz:
    members: [d]
  embed:
    swap: false
    exclusive: false
    persistent: true
    members: [c, a]
",
    );
    let groups = &loaded.config.groups;
    assert_eq!(
        groups
            .iter()
            .map(|group| group.id.as_str())
            .collect::<Vec<_>>(),
        ["embed", "zz", DEFAULT_GROUP_ID]
    );
    assert_eq!(
        groups[0],
        GroupConfig {
            id: "embed".to_string(),
            swap: false,
            exclusive: false,
            persistent: true,
            members: vec!["c".to_string(), "a".to_string()],
        }
    );
    assert!(groups[1].swap && groups[1].exclusive && !groups[1].persistent);
    assert_eq!(groups[2].members, ["b"]);
    assert_eq!(
        loaded.config.group_of("a").map(|group| group.id.as_str()),
        Some("embed")
    );
    assert_eq!(
        loaded.config.group_of("b").map(|group| group.id.as_str()),
        Some(DEFAULT_GROUP_ID)
    );
    assert!(loaded.config.group_of("nope").is_none());
}

#[test]
fn groups_in_routing_form_and_no_default_group_when_all_grouped() {
    let loaded = load_ok(
        "\
models:
  a: {cmd: \"srv --port ${PORT}\"}
routing:
  router:
    use: group
    settings:
      groups:
        only:
          members: [a]
  scheduler:
    use: fifo
",
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.groups.len(), 1);
    assert_eq!(loaded.config.groups[0].id, "only");
}

#[test]
fn scheduler_priorities_are_ignored_with_a_warning() {
    let loaded = load_ok(
        "\
models:
  a: {cmd: \"srv --port ${PORT}\", aliases: [x]}
routing:
  scheduler:
    settings:
      fifo:
        priority: {x: 5}
",
    );
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0]
            .starts_with("config.yaml:7:9: routing.scheduler.settings.fifo.priority: "),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn aliases_and_set_params_by_id_keys() {
    let loaded = load_ok(
        "\
models:
  qwen:
    cmd: srv --port ${PORT}
    aliases: [q, gpt-4]
    filters:
      stripParams: \"top_k, model ,temperature,top_k\"
      setParams: {model: no, temperature: 0.2}
      setParamsByID:
        qwen: {mode: plain}
        q: {mode: short}
        ${MODEL_ID}-thinking:
          think: true
          model: ignored
  other:
    cmd: srv --port ${PORT}
    filters:
      strip_params: a,b
",
    );
    let config = &loaded.config;
    let qwen = &config.models["qwen"];
    assert_eq!(qwen.aliases, ["q", "gpt-4", "qwen-thinking"]);
    assert_eq!(qwen.filters.strip_params, ["temperature", "top_k"]);
    assert_eq!(
        qwen.filters.set_params,
        json!({"temperature": 0.2})
            .as_object()
            .cloned()
            .expect("object")
    );
    assert_eq!(
        qwen.filters.set_params_by_id["qwen-thinking"],
        json!({"think": true}).as_object().cloned().expect("object")
    );
    assert_eq!(qwen.filters.set_params_by_id.len(), 3);
    assert_eq!(config.models["other"].filters.strip_params, ["a", "b"]);
    let expected: Vec<(&str, &str)> =
        vec![("gpt-4", "qwen"), ("q", "qwen"), ("qwen-thinking", "qwen")];
    assert_eq!(
        config
            .aliases
            .iter()
            .map(|(alias, id)| (alias.as_str(), id.as_str()))
            .collect::<Vec<_>>(),
        expected
    );
}

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
    timeouts: {responseHeader: 30}
peers: {}
profiles:
selectors: {}
",
    );
    assert_eq!(
        loaded.warnings,
        ["config.yaml:8:5: models.m.timeouts: not supported by swapd and ignored"]
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
fn preload_resolves_aliases_and_drops_unknown_names() {
    let loaded = load_ok(
        "\
models:
  m: {cmd: \"srv --port ${PORT}\", aliases: [mm]}
hooks:
  on_startup:
    preload: [\" mm \", \"\", ghost, m]
",
    );
    assert_eq!(loaded.config.preload, ["m", "m"]);
    assert_eq!(
        loaded.warnings,
        ["config.yaml:5:5: hooks.on_startup.preload[2]: unknown model 'ghost'; it is not preloaded"]
    );
}

#[test]
fn unknown_log_level_and_time_format_fall_back_with_warnings() {
    let loaded = load_ok(
        "logLevel: verbose\nlogTimeFormat: iso\nmodels:\n  m: {cmd: \"srv --port ${PORT}\"}\n",
    );
    assert_eq!(loaded.config.log_level, LogLevel::Info);
    assert_eq!(loaded.config.log_time_format, None);
    assert_eq!(loaded.warnings.len(), 2);
    assert!(
        loaded.warnings[0].starts_with("config.yaml:1:1: logLevel: unknown log level 'verbose'")
    );
    assert!(
        loaded.warnings[1].starts_with("config.yaml:2:1: logTimeFormat: unknown time format 'iso'")
    );
}

#[test]
fn summary_lists_each_model() {
    let loaded =
        load_ok("models:\n  m:\n    cmd: srv --port ${PORT}\n    aliases: [x]\n    ttl: 60\n");
    let summary = loaded.config.summary();
    for expected in [
        "model m",
        "port:    5800",
        "proxy:   http://localhost:5800",
        "aliases: x",
        "ttl:     60s",
        "group:   (default)",
        "cmd:     srv --port 5800",
    ] {
        assert!(
            summary.contains(expected),
            "{expected:?} missing from:\n{summary}"
        );
    }
}

#[test]
fn load_reads_a_file_and_reports_missing_ones() {
    let error = load(Path::new("/nonexistent/swapd/config.yaml")).expect_err("missing");
    assert!(error
        .to_string()
        .starts_with("/nonexistent/swapd/config.yaml: cannot read the config file"));

    let directory = std::env::temp_dir().join(format!("swapd-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let file = directory.join("config.yaml");
    std::fs::write(&file, "models:\n  m: {cmd: \"srv --port ${PORT}\"}\n").expect("write");
    let loaded = load(&file).expect("loads");
    assert_eq!(loaded.config.models.len(), 1);
    std::fs::remove_dir_all(&directory).expect("cleanup");
}

#[test]
fn example_config_loads_without_warnings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml");
    let text = std::fs::read_to_string(&path).expect("config/example.yaml exists");
    let environment = |name: &str| match name {
        "HOME" => Some("/home/swapd".to_string()),
        _ => None,
    };
    let loaded = parse(&text, &path, &environment).unwrap_or_else(|error| panic!("{error}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let config = &loaded.config;
    assert!(config.models.len() >= 3);
    assert!(
        config.api_keys.is_empty(),
        "make run must work without keys"
    );
    for model in config.models.values() {
        assert_eq!(model.cmd[0], "fake-upstream", "{}", model.id);
    }
}

#[test]
fn example_configs_show_every_routing_feature() {
    let environment = |name: &str| match name {
        "HOME" => Some("/home/swapd".to_string()),
        _ => None,
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml");
    let text = std::fs::read_to_string(&path).expect("config/example.yaml exists");
    let config = parse(&text, &path, &environment)
        .unwrap_or_else(|error| panic!("{error}"))
        .config;
    let strategies: Vec<&str> = config
        .selectors
        .values()
        .map(|selector| selector.strategy.as_str())
        .collect();
    assert_eq!(strategies, vec!["warm", "spillover", "pin"]);
    assert_eq!(
        config.profiles["big"].pins["qwen"].as_deref(),
        Some("llama-large")
    );
    assert_eq!(config.profiles["big"].pins["qwen-small-creative"], None);

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example-matrix.yaml");
    let text = std::fs::read_to_string(&path).expect("config/example-matrix.yaml exists");
    let loaded = parse(&text, &path, &environment).unwrap_or_else(|error| panic!("{error}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let matrix = loaded
        .config
        .matrix
        .expect("the matrix router is configured");
    let names: Vec<&str> = matrix.sets.iter().map(|set| set.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["chat-with-vision", "everything-small", "embed-only"],
        "definition order is kept"
    );
    assert_eq!(matrix.cost_of("gemma"), 50);
    assert!(loaded.config.groups.is_empty());
}

/// Each case: YAML text, expected key path, a fragment of the message, expected line.
const INVALID: &[(&str, &str, &str, Option<usize>)] = &[
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    ttl: abc\n",
        "models.m.ttl",
        "expected a whole number, found 'abc'",
        Some(4),
    ),
    ("models: []\n", "models", "expected a mapping of model ids", Some(1)),
    ("- a\n- b\n", "", "expected a mapping of settings at the top level", None),
    ("models:\n  m: srv\n", "models.m", "expected a mapping of model settings, found 'srv'", Some(2)),
    ("models:\n  m:\n    cmd: [srv]\n", "models.m.cmd", "expected a string, found a list", Some(3)),
    ("models:\n  m:\n    proxy: http://h:1\n", "models.m.cmd", "cmd is required", Some(2)),
    (
        "models:\n  m:\n    cmd: \"# only a comment\"\n    proxy: http://h:1\n",
        "models.m.cmd",
        "cmd is empty",
        Some(3),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT} 'open\n",
        "models.m.cmd",
        "unterminated single quote",
        Some(3),
    ),
    (
        "models:\n  m:\n    cmd: srv ${foo} --port ${PORT}\n",
        "models.m.cmd",
        "unknown macro '${foo}'",
        Some(3),
    ),
    ("macros:\n  PORT: 1\n", "macros.PORT", "is reserved", Some(2)),
    ("macros:\n  PID: x\n", "macros.PID", "is reserved", Some(2)),
    ("macros:\n  MODEL_ID: x\n", "macros.MODEL_ID", "is reserved", Some(2)),
    ("macros:\n  bad.name: x\n", "macros.bad.name", "must match ^[a-zA-Z0-9_-]+$", Some(2)),
    ("macros:\n  list: [1, 2]\n", "macros.list", "must be a string, number or boolean", Some(2)),
    (
        "models:\n  m:\n    macros:\n      me: ${me}\n    cmd: x\n",
        "models.m.macros.me",
        "refers to itself",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv\n    proxy: http://localhost:${PORT}\n",
        "models.m.proxy",
        "proxy uses ${PORT} but cmd does not",
        Some(4),
    ),
    ("models:\n  m:\n    cmd: srv\n", "models.m.proxy", "cmd does not use ${PORT}", Some(2)),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    ttl: -2\n",
        "models.m.ttl",
        "must be -1 (use globalTTL), 0 (never unload)",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    env:\n      - A=1\n      - NOEQUALS\n",
        "models.m.env[1]",
        "expected NAME=VALUE, found 'NOEQUALS'",
        Some(6),
    ),
    (
        "models:\n  a:\n    cmd: srv --port ${PORT}\n    aliases: [x]\n  b:\n    cmd: srv --port ${PORT}\n    aliases:\n      - x\n",
        "models.b.aliases[0]",
        "alias 'x' is already used by model 'a'",
        Some(8),
    ),
    (
        "models:\n  a:\n    cmd: srv --port ${PORT}\n  b:\n    cmd: srv --port ${PORT}\n    aliases:\n      - a\n",
        "models.b.aliases[0]",
        "alias 'a' is also the id of a model",
        Some(7),
    ),
    (
        "models:\n  a:\n    cmd: srv --port ${PORT}\n  b:\n    cmd: srv --port ${PORT}\n    filters:\n      setParamsByID:\n        a: {x: 1}\n",
        "models.b.filters.setParamsByID.a",
        "key 'a' is the id of another model",
        Some(8),
    ),
    (
        "models:\n  a:\n    cmd: srv --port ${PORT}\n    aliases: [fast]\n  b:\n    cmd: srv --port ${PORT}\n    filters:\n      setParamsByID:\n        fast: {x: 1}\n",
        "models.b.filters.setParamsByID.fast",
        "key 'fast' is already an alias of model 'a'",
        Some(9),
    ),
    (
        "models:\n  a:\n    cmd: srv --port ${PORT}\n    filters:\n      setParamsByID:\n        a-x: {}\n        ${MODEL_ID}-x: {}\n",
        "models.a.filters.setParamsByID.${MODEL_ID}-x",
        "expands to 'a-x', which is already a key here",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g:\n    members:\n      - a\n      - ghost\n",
        "groups.g.members[1]",
        "unknown model 'ghost'",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\ngroups:\n  g:\n    members:\n      - al\n",
        "groups.g.members[0]",
        "'al' is an alias of model 'a'; group members must be model ids",
        Some(6),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g1:\n    members: [a]\n  g2:\n    members:\n      - a\n",
        "groups.g2.members[0]",
        "model 'a' is already a member of group 'g1'",
        Some(8),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g:\n    members:\n      - a\n      - a\n",
        "groups.g.members[1]",
        "model 'a' is listed twice in group 'g'",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  (default):\n    members: [a]\n",
        "groups.(default)",
        "is reserved for ungrouped models",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g: {members: [a]}\nrouting:\n  router:\n    use: group\n",
        "groups",
        "cannot be combined with `routing.router`",
        Some(3),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\npeers:\n  remote:\n    proxy: http://x\n",
        "peers.remote.models",
        "a peer needs a non-empty list of the models it serves",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nprofiles:\n  p: {pins: {x: nope}}\n",
        "profiles.p.pins.x",
        "pin 'x' references unknown model 'nope'",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nprofiles:\n  old:\n    - a\n    - b\n",
        "profiles.old",
        "the legacy list syntax is no longer supported",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nprofiles:\n  p:\n    description: empty\n",
        "profiles.p.pins",
        "pins must contain at least one entry",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  a: {strategy: pin, targets: [b]}\n",
        "selectors.a",
        "conflicts with model id 'a'",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  al: {strategy: pin, targets: [b]}\n",
        "selectors.al",
        "conflicts with an alias of model 'a'",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s:\n    targets: [b]\n",
        "selectors.s.strategy",
        "strategy is required",
        Some(5),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s:\n    strategy: fast\n    targets: [b]\n",
        "selectors.s.strategy",
        "unknown strategy 'fast' (valid: warm, pin, spillover)",
        Some(6),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s:\n    strategy: pin\n    targets: []\n",
        "selectors.s.targets",
        "at least one entry",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s:\n    strategy: pin\n    targets:\n      - zz\n",
        "selectors.s.targets[0]",
        "unknown model 'zz'",
        Some(8),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s1: {strategy: pin, targets: [a]}\n  s2:\n    strategy: pin\n    targets:\n      - s1\n",
        "selectors.s2.targets[0]",
        "selector chaining is not supported",
        Some(9),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g: {swap: false, members: [a, b]}\nselectors:\n  s:\n    strategy: spillover\n    targets:\n      - a\n      - al\n",
        "selectors.s.targets[1]",
        "targets contain model 'a' twice",
        Some(11),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nselectors:\n  s:\n    strategy: spillover\n    targets: [a, b]\n",
        "selectors.s.targets",
        "is not in a routing group",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g: {members: [a, b]}\nselectors:\n  s:\n    strategy: spillover\n    targets: [a, b]\n",
        "selectors.s.targets",
        "must share a group with swap: false",
        Some(9),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  sets: {x: a, y: b}\nselectors:\n  s:\n    strategy: spillover\n    targets: [a, b]\n",
        "selectors.s.targets",
        "must all appear together in one matrix set",
        Some(9),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\", aliases: [al]}\n  b: {cmd: \"srv --port ${PORT}\"}\ngroups:\n  g: {swap: false, members: [a, b]}\nselectors:\n  s:\n    strategy: spillover\n    targets: [a, b]\n    settings: {spillover: 0}\n",
        "selectors.s.settings.spillover",
        "spillover must be 1 or more",
        Some(10),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  sets: {s: zz}\n",
        "matrix.sets.s",
        "unknown var or model 'zz'",
        Some(4),
    ),
    (
        "routing:\n  router:\n    use: matrix\n",
        "routing.router.settings",
        "routing.router.settings.matrix is required",
        Some(2),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        sets:\n          s1: \"a & +s2\"\n          s2: \"+s1\"\n",
        "routing.router.settings.matrix.sets.s2",
        "circular reference between sets: s1 -> +s2 -> +s1",
        Some(10),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        sets:\n          s1: \"a | +nope\"\n",
        "routing.router.settings.matrix.sets.s1",
        "'+nope' references undefined set 'nope'",
        Some(9),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        sets:\n          s1: \"(a\"\n",
        "routing.router.settings.matrix.sets.s1",
        "missing closing parenthesis in '(a'",
        Some(9),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  router:\n    use: matrix\n    settings:\n      matrix:\n        sets: {}\n",
        "routing.router.settings.matrix.sets",
        "at least one set",
        Some(8),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  router:\n    use: matrix\n    settings:\n      groups: {g: {members: [a]}}\n      matrix:\n        sets: {s: a}\n",
        "routing.router.settings.groups",
        "groups and matrix cannot be used together",
        Some(7),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\ngroups: {g: {members: [a]}}\nmatrix:\n  sets: {s: a}\n",
        "matrix",
        "groups and matrix cannot be used together",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  vars: {x: nope}\n  sets: {s: a}\n",
        "matrix.vars.x",
        "var 'x' references unknown model 'nope'",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  vars: {\"bad name\": a}\n  sets: {s: a}\n",
        "matrix.vars.bad name",
        "must be 1-32 characters",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  evict_costs: {a: 0}\n  sets: {s: a}\n",
        "matrix.evict_costs.a",
        "must be a positive whole number",
        Some(4),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nmatrix:\n  evict_costs: {q: 3}\n  sets: {s: a}\n",
        "matrix.evict_costs.q",
        "unknown var or model 'q'",
        Some(4),
    ),
    (
        "routing:\n  router:\n    use: random\n",
        "routing.router.use",
        "unknown router 'random'",
        Some(3),
    ),
    (
        "routing:\n  scheduler:\n    use: priority\n",
        "routing.scheduler.use",
        "unknown scheduler 'priority' (valid: fifo)",
        Some(3),
    ),
    (
        "models:\n  a: {cmd: \"srv --port ${PORT}\"}\nrouting:\n  scheduler:\n    settings:\n      fifo:\n        priority:\n          ghost: 1\n",
        "routing.scheduler.settings.fifo.priority.ghost",
        "unknown model 'ghost'",
        Some(8),
    ),
    ("logToStdout: stderr\n", "logToStdout", "must be one of proxy, upstream, both, none", Some(1)),
    ("startPort: 0\n", "startPort", "must be between 1 and 65535, found 0", Some(1)),
    ("startPort: 70000\n", "startPort", "must be between 1 and 65535", Some(1)),
    ("globalTTL: -1\n", "globalTTL", "must be 0 or more seconds, found -1", Some(1)),
    ("unloadTimeout: -5\n", "unloadTimeout", "must be 0 or more seconds", Some(1)),
    ("metricsMaxInMemory: -1\n", "metricsMaxInMemory", "must be 0 or more, found -1", Some(1)),
    ("apiKeys:\n  - good\n  - \"has space\"\n", "apiKeys[1]", "must not contain spaces", Some(3)),
    ("apiKeys:\n  - \"\"\n", "apiKeys[0]", "must not be empty", Some(2)),
    ("apiKeys: [\"${nokey}\"]\n", "apiKeys[0]", "unknown macro '${nokey}'", Some(1)),
    (
        "models:\n  m:\n    cmd: srv\n    proxy: http://h:1\n    name: on ${PORT}\n",
        "models.m.name",
        "unknown macro '${PORT}' (a port is only assigned to models whose cmd uses ${PORT})",
        Some(5),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    metadata:\n      a:\n        b: ${nope}\n",
        "models.m.metadata.a.b",
        "unknown macro '${nope}'",
        Some(6),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    unlisted: maybe\n",
        "models.m.unlisted",
        "expected true or false, found 'maybe'",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    concurrencyLimit: -1\n",
        "models.m.concurrencyLimit",
        "must be 0 (the default of 10) or more",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv\n    proxy: localhost:8080\n",
        "models.m.proxy",
        "expected an http:// or https:// URL",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    metadata: [1]\n",
        "models.m.metadata",
        "expected a mapping, found a list",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    filters:\n      stripParams: [a]\n",
        "models.m.filters.stripParams",
        "expected a string, found a list",
        Some(5),
    ),
    ("swapd:\n  maxBodyBytes: 0\n", "swapd.maxBodyBytes", "must be greater than 0, found 0", Some(2)),
    ("swapd:\n  headerTimeout: soon\n", "swapd.headerTimeout", "expected a whole number", Some(2)),
    (
        "models:\n  m:\n    cmd: srv --port ${PORT}\n    aliases: fast\n",
        "models.m.aliases",
        "expected a list of strings, found 'fast'",
        Some(4),
    ),
    (
        "models:\n  m:\n    cmd: x ${env.SWAPD_TEST_UNSET}\n",
        "models.m.cmd",
        "environment variable 'SWAPD_TEST_UNSET' is not set",
        Some(3),
    ),
    ("models:\n  m:\n    cmd: [unclosed\n", "", "invalid YAML", Some(4)),
    ("a: 1\na: 2\n", "", "invalid YAML: duplicate entry with key \"a\"", Some(1)),
];

#[test]
fn invalid_configs_name_key_problem_and_line() {
    assert!(INVALID.len() >= 20);
    for (text, key, fragment, line) in INVALID {
        let error = load_err(text);
        assert_eq!(&error.key, key, "wrong key for {text:?}: {error}");
        assert!(
            error.message.contains(fragment),
            "message for {text:?} lacks {fragment:?}: {error}"
        );
        assert_eq!(&error.line, line, "wrong line for {text:?}: {error}");
        let rendered = error.to_string();
        assert!(rendered.starts_with("config.yaml"), "{rendered}");
        if !key.is_empty() {
            assert!(rendered.contains(&format!(" {key}: ")), "{rendered}");
        }
    }
}

#[test]
fn split_command_is_public_for_cmd_stop() {
    assert_eq!(
        split_command("kill \\\n  -TERM 42").expect("splits"),
        ["kill", "-TERM", "42"]
    );
}

/// The shapes used by llama-swap's own config.example.yaml (without its peers and matrix
/// sections, which swapd rejects) load with the same results.
#[test]
fn llama_swap_example_shapes_load() {
    let environment = |name: &str| match name {
        "HOME" => Some("/home/u".to_string()),
        "API_KEY_1" => Some("sk-one".to_string()),
        _ => None,
    };
    let text = r#"
healthCheckTimeout: 500
logTimeFormat: ""
logToStdout: "proxy"
captureBuffer: 15
startPort: 10001
macros:
  "latest-llama": >
    /path/to/llama-server/llama-server-ec9e0301
    --port ${PORT}

  "default_ctx": 4096
  "default_args": "--ctx-size ${default_ctx}"
  "models_dir": "${env.HOME}/models"
apiKeys:
  - "sk-hunter2"
  # - "${env.API_KEY_2}"
  - "${env.API_KEY_1}"
models:
  "gpt-oss-120b":
    macros:
      "default_ctx": 16384
      "temp": 0.7
    cmd: |
      # ${latest-llama} is a macro that is defined above
      ${latest-llama}
      --model path/to/gpt-oss-120B.gguf
      --ctx-size ${default_ctx}
      --temperature ${temp}
    name: "gpt-oss 120B"
    env:
      - "CUDA_VISIBLE_DEVICES=0,1,2"
    proxy: http://127.0.0.1:8999
    checkEndpoint: /custom-endpoint
    ttl: 60
    useModelName: "openai/gpt-oss-120B"
    filters:
      stripParams: "temperature, top_p, top_k"
      setParams:
        temperature: 0.7
        top_p: 0.9
      setParamsByID:
        "${MODEL_ID}":
          chat_template_kwargs:
            reasoning_effort: medium
        "${MODEL_ID}:high":
          chat_template_kwargs:
            reasoning_effort: high
    aliases:
      - id: "gpt-4o-mini"
        name: "gpt-4o-mini"
        unlisted: false
    metadata:
      port: ${PORT}
      temperature: ${temp}
      note: "The ${MODEL_ID} is running on port ${PORT} temp=${temp}, context=${default_ctx}"
      an_obj:
        c: ["${temp}", false, "model: ${MODEL_ID}"]
    concurrencyLimit: 0
    sendLoadingState: false
  "qwen-unlisted":
    unlisted: true
    cmd: llama-server --port ${PORT} -m Llama-3.2-1B-Instruct-Q4_K_M.gguf -ngl 0
  "docker-llama":
    proxy: "http://127.0.0.1:${PORT}"
    cmd: |
      docker run --name ${MODEL_ID}
      --init --rm -p ${PORT}:8080 -v /mnt/nvme/models:/models
      ghcr.io/ggml-org/llama.cpp:server
      --model '/models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf'
    cmdStop: docker stop ${MODEL_ID}
hooks:
  on_startup:
    preload:
      - "llama"
"#;
    let loaded = parse(text, Path::new("config.yaml"), &environment)
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        loaded.warnings,
        ["config.yaml:75:7: hooks.on_startup.preload[0]: unknown model 'llama'; it is not preloaded"]
    );
    let config = &loaded.config;
    assert_eq!(config.api_keys, ["sk-hunter2", "sk-one"]);
    assert_eq!(config.health_check_timeout, secs(500));
    let gpt = &config.models["gpt-oss-120b"];
    assert_eq!(
        gpt.cmd_display,
        "/path/to/llama-server/llama-server-ec9e0301 --port 10002 --model path/to/gpt-oss-120B.gguf --ctx-size 16384 --temperature 0.7"
    );
    assert_eq!(gpt.port, Some(10002), "docker-llama sorts first");
    assert_eq!(gpt.proxy, "http://127.0.0.1:8999");
    assert_eq!(gpt.aliases, ["gpt-4o-mini", "gpt-oss-120b:high"]);
    assert_eq!(gpt.filters.strip_params, ["temperature", "top_k", "top_p"]);
    assert_eq!(
        gpt.metadata,
        json!({
            "port": 10002,
            "temperature": 0.7,
            "note": "The gpt-oss-120b is running on port 10002 temp=0.7, context=16384",
            "an_obj": {"c": [0.7, false, "model: gpt-oss-120b"]},
        })
    );
    let docker = &config.models["docker-llama"];
    assert_eq!(docker.proxy, "http://127.0.0.1:10001");
    assert_eq!(docker.cmd_stop.as_deref(), Some("docker stop docker-llama"));
    assert_eq!(docker.cmd[7], "10001:8080");
    assert_eq!(config.models["qwen-unlisted"].port, Some(10003));
    assert_eq!(
        config.resolve_model("gpt-oss-120b:high"),
        Some("gpt-oss-120b")
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
fn log_format_is_text_by_default_and_json_on_request() {
    let model = "models:\n  m:\n    cmd: srv --port ${PORT}\n";
    assert_eq!(load_ok(model).config.log_format, LogFormat::Text);
    let loaded = load_ok(&format!("swapd:\n  logFormat: json\n{model}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.log_format, LogFormat::Json);
    assert_eq!(
        load_ok(&format!("swapd:\n  logFormat: TEXT\n{model}"))
            .config
            .log_format,
        LogFormat::Text
    );
    let error = load_err(&format!("swapd:\n  logFormat: xml\n{model}")).to_string();
    assert!(
        error.contains("config.yaml:2:")
            && error.contains("swapd.logFormat")
            && error.contains("'xml'"),
        "{error}"
    );
}
