//! Top-level and per-model settings: every default, explicit values, log settings.

use super::*;

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
            capabilities: Default::default(),
            ignore_websockets: false,
            timeouts: Default::default(),
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
    // comfyui_auto's websockets never start it, whatever its compat block says.
    assert!(loaded.config.models["comfyui_auto"].ignore_websockets);
    assert!(!m.ignore_websockets);
    assert_eq!(loaded.config.resolve_model("a2"), Some("m"));
    assert_eq!(loaded.config.resolve_model("m"), Some("m"));
    assert_eq!(loaded.config.resolve_model("zzz"), None);
    assert_eq!(
        loaded.config.model("a1").map(|model| model.id.as_str()),
        Some("m")
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

#[test]
fn upstream_ignore_paths_replace_the_default_unless_empty() {
    let default = load_ok("models: {}\n").config.upstream_ignore_paths;
    assert_eq!(
        default.patterns().collect::<Vec<_>>(),
        [crate::config::ignore_paths::DEFAULT_PATTERN]
    );
    let empty = load_ok("upstream:\n  ignorePaths: []\n").config;
    assert_eq!(empty.upstream_ignore_paths, default);
    let custom = load_ok("upstream:\n  ignorePaths: ['^/static/', 'x{2}']\n").config;
    let paths = &custom.upstream_ignore_paths;
    assert!(paths.matches("/static/app.html") && paths.matches("/axxb"));
    assert!(!paths.matches("/app.js"), "the default no longer applies");
    // A misspelt key under `upstream` is a warning with a suggestion.
    let loaded = load_ok("upstream:\n  ignorePath: ['x']\n");
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("did you mean 'ignorePaths'")),
        "{:?}",
        loaded.warnings
    );
}
