//! Loading real files: the summary, missing files, the shipped example configs and
//! llama-swap's documented shapes.

use super::*;

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
