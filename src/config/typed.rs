//! Steps 2 to 4 of loading: macro expansion over the tree, `${PORT}` assignment, and the
//! typed, validated `Config` with every default applied.
//!
//! The decoded YAML is walked by hand rather than through `#[derive(Deserialize)]` so that each
//! problem can name its key path (and so its line), unknown keys can be warned about instead
//! of silently dropped, and llama-swap's lenient scalar handling (a number where a string is
//! expected, `yes`/`no` booleans) can be kept.
//!
//! `build` reads as the list of steps it runs, one named function each. This file holds the
//! steps and the top-level settings; `typed/fields.rs` the YAML access, `typed/models.rs` one
//! model's settings and the alias table, `typed/groups.rs` groups, scheduler and preload.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::access::{self, Access, HostRule, OriginRule};
use super::command::strip_comment_lines;
use super::error::{ConfigError, KeyPath, Reporter};
use super::macros::{self, Macro};
use super::memory;
use super::schema;
use super::{
    Config, GroupConfig, Limits, LogFormat, LogLevel, LogToStdout, MatrixConfig, ModelConfig,
    Peers, ProfileConfig, SelectorConfig,
};

mod fields;
mod groups;
mod models;

pub(crate) use fields::{describe, json_object, normalize, Fields};
use groups::{build_groups, build_preload, check_scheduler};
pub(crate) use models::build_filters;
use models::{build_model, register_aliases};

const DEFAULT_HEALTH_CHECK_TIMEOUT: i64 = 120;
const MIN_HEALTH_CHECK_TIMEOUT: i64 = 15;
const DEFAULT_START_PORT: i64 = 5800;
const DEFAULT_UNLOAD_TIMEOUT: i64 = 10;
const DEFAULT_METRICS_MAX_IN_MEMORY: i64 = 1000;
const DEFAULT_CONCURRENCY_LIMIT: i64 = 10;
/// llama-swap raises the limit of its ComfyUI passthrough model, which serves many small calls.
use super::COMFYUI_MODEL_ID;
const COMFYUI_MIN_CONCURRENCY: usize = 50;
const DEFAULT_CHECK_ENDPOINT: &str = "/health";

/// The Go time layouts llama-swap accepts for `logTimeFormat`, by name.
pub(crate) const TIME_FORMATS: &[&str] = &[
    "ansic",
    "unixdate",
    "rubydate",
    "rfc822",
    "rfc822z",
    "rfc850",
    "rfc1123",
    "rfc1123z",
    "rfc3339",
    "rfc3339nano",
    "kitchen",
    "stamp",
    "stampmilli",
    "stampmicro",
    "stampnano",
];

fn seconds(value: i64) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

/// Expands macros in every setting of one model (not in `macros` itself), including the keys
/// of `filters.setParamsByID`, the only mapping keys llama-swap treats as macro targets.
fn expand_model(
    mapping: &mut Mapping,
    scope: &[Macro],
    path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<(), ConfigError> {
    for (key, value) in mapping.iter_mut() {
        if key.as_str() != Some("macros") {
            macros::expand_value(value, scope);
        }
    }
    let Some(Value::Mapping(filters)) = mapping.get_mut("filters") else {
        return Ok(());
    };
    let Some(Value::Mapping(by_id)) = filters.get_mut("setParamsByID") else {
        return Ok(());
    };
    let by_id_path = path.key("filters").key("setParamsByID");
    let mut expanded = Mapping::with_capacity(by_id.len());
    for (key, value) in std::mem::take(by_id) {
        let original = key.as_str().unwrap_or_default().to_string();
        let new_key = macros::scalar_text(&macros::expand_str(&original, scope));
        if expanded.contains_key(new_key.as_str()) {
            return Err(reporter.error(
                &by_id_path.key(&original),
                format!("key '{original}' expands to '{new_key}', which is already a key here"),
            ));
        }
        expanded.insert(Value::String(new_key), value);
    }
    *by_id = expanded;
    Ok(())
}

/// Settings shared by every model, needed while building each one.
struct Globals {
    global_ttl: i64,
    unload_timeout: i64,
    send_loading_state: bool,
}

/// Builds and validates the whole configuration from the decoded, normalized YAML document,
/// in llama-swap's order: macros (step 2), `${PORT}` (step 3), typed settings (step 4). Each
/// step is one function below, called in the order its errors and warnings are reported.
pub(crate) fn build(root: Value, reporter: &mut Reporter<'_>) -> Result<Config, ConfigError> {
    let root_path = KeyPath::root();
    let mut root = top_mapping(root, &root_path, reporter)?;
    schema::check_keys(&root, &root_path, schema::TOP_LEVEL, reporter);

    // Step 2: macros. The models leave the tree here; the rest of the root stays in `root`.
    let models_path = root_path.key("models");
    let (mut models, ids) = expand_macros(&mut root, &root_path, &models_path, reporter)?;

    // Step 3: ${PORT}, in sorted id order, only for models whose cmd uses it.
    let top = Fields::new(&root, &root_path);
    let start_port = start_port(&top, reporter)?;
    let ports = assign_ports(&mut models, &ids, &models_path, start_port, reporter)?;

    // Step 4: typed settings with defaults.
    let settings = top_settings(&top, reporter)?;
    let limits = build_limits(&top, reporter)?;
    let log_format = build_log_format(&top, reporter)?;
    let access = build_access(&top, reporter)?;
    let memory = memory::build(
        top.mapping("swapd", reporter, "a mapping of swapd settings")?,
        &top.path("swapd"),
        &models,
        &models_path,
        &memory::mem_total,
        reporter,
    )?;
    let shared = Globals {
        global_ttl: settings.global_ttl,
        unload_timeout: settings.unload_timeout,
        send_loading_state: settings.send_loading_state,
    };
    let mut built = build_models(&models, &ids, &models_path, &ports, &shared, reporter)?;
    let aliases = register_aliases(&mut built, &models_path, reporter)?;
    let routing = build_routing(&top, &built, &aliases, reporter)?;
    let upstream_ignore_paths = super::ignore_paths::build(&top, reporter)?;

    Ok(Config {
        health_check_timeout: seconds(settings.health_check_timeout),
        log_level: settings.log_level,
        log_time_format: settings.log_time_format,
        log_to_stdout: settings.log_to_stdout,
        log_format,
        start_port,
        send_loading_state: settings.send_loading_state,
        include_aliases_in_list: settings.include_aliases_in_list,
        global_ttl: seconds(settings.global_ttl),
        unload_timeout: seconds(settings.unload_timeout),
        metrics_max_in_memory: usize::try_from(settings.metrics_max_in_memory)
            .unwrap_or(usize::MAX),
        activity_store: settings.activity_store,
        api_keys: settings.api_keys,
        models: built,
        groups: routing.groups,
        matrix: routing.matrix,
        selectors: routing.selectors,
        profiles: routing.profiles,
        preload: routing.preload,
        aliases,
        limits,
        access,
        memory,
        peers: routing.peers,
        upstream_ignore_paths,
    })
}

/// The document's top level as a mapping (an empty document is an empty config).
fn top_mapping(
    root: Value,
    root_path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<Mapping, ConfigError> {
    match root {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(mapping) => Ok(mapping),
        other => Err(reporter.error(
            root_path,
            format!(
                "expected a mapping of settings at the top level, found {}",
                describe(&other)
            ),
        )),
    }
}

/// Step 2: global macros apply to every top-level section except `models`, which gets a
/// per-model scope (the model's own macros over the global ones). Takes `models` out of
/// `root` and returns it with every model checked to be a mapping, and the sorted model ids.
fn expand_macros(
    root: &mut Mapping,
    root_path: &KeyPath,
    models_path: &KeyPath,
    reporter: &mut Reporter<'_>,
) -> Result<(Mapping, Vec<String>), ConfigError> {
    let globals = macros::parse_list(root.get("macros"), &root_path.key("macros"), reporter)?;
    for (key, value) in root.iter_mut() {
        if !matches!(key.as_str(), Some("models" | "macros")) {
            macros::expand_value(value, &globals);
        }
    }
    let mut models = match root.remove("models") {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(mapping)) => mapping,
        Some(other) => {
            return Err(reporter.error(
                models_path,
                format!(
                    "expected a mapping of model ids to model settings, found {}",
                    describe(&other)
                ),
            ))
        }
    };
    let mut ids: Vec<String> = models
        .keys()
        .map(|key| key.as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    if ids.is_empty() {
        reporter.warn(models_path, "no models are configured");
    }
    for id in &ids {
        let path = models_path.key(id);
        if id.trim().is_empty() {
            return Err(reporter.error(&path, "model ids must not be empty"));
        }
        let model = models
            .get_mut(id.as_str())
            .expect("the id was just read from this mapping");
        let mapping = match model {
            Value::Mapping(mapping) => mapping,
            other => {
                return Err(reporter.error(
                    &path,
                    format!(
                        "expected a mapping of model settings, found {}",
                        describe(other)
                    ),
                ))
            }
        };
        // Comment lines go before expansion, so a commented-out ${PORT} takes no port.
        for key in ["cmd", "cmdStop"] {
            if let Some(Value::String(text)) = mapping.get_mut(key) {
                *text = strip_comment_lines(text);
            }
        }
        let locals = macros::parse_list(mapping.get("macros"), &path.key("macros"), reporter)?;
        let scope = macros::model_scope(id, &globals, &locals);
        expand_model(mapping, &scope, &path, reporter)?;
    }
    Ok((models, ids))
}

/// `startPort`, the first port `${PORT}` hands out.
fn start_port(top: &Fields<'_>, reporter: &Reporter<'_>) -> Result<u16, ConfigError> {
    let start_port = top
        .int("startPort", reporter)?
        .unwrap_or(DEFAULT_START_PORT);
    u16::try_from(start_port)
        .ok()
        .filter(|&port| port >= 1)
        .ok_or_else(|| {
            reporter.error(
                &top.path("startPort"),
                format!("must be between 1 and 65535, found {start_port}"),
            )
        })
}

/// Step 3: gives each model whose `cmd` uses `${PORT}` the next port from `startPort`, in
/// sorted id order, and expands `${PORT}` in its settings. A model whose `proxy` needs a port
/// that its `cmd` does not take is an error.
fn assign_ports(
    models: &mut Mapping,
    ids: &[String],
    models_path: &KeyPath,
    start_port: u16,
    reporter: &mut Reporter<'_>,
) -> Result<BTreeMap<String, u16>, ConfigError> {
    let mut next_port = i64::from(start_port);
    let mut ports: BTreeMap<String, u16> = BTreeMap::new();
    for id in ids {
        let path = models_path.key(id);
        let mapping = models
            .get_mut(id.as_str())
            .and_then(Value::as_mapping_mut)
            .expect("every model was checked to be a mapping");
        // A missing or mistyped cmd is the real problem, so report it before the port rules.
        let cmd_path = path.key("cmd");
        let cmd_uses_port = match mapping.get("cmd") {
            None | Some(Value::Null) => return Err(reporter.error(&cmd_path, "cmd is required")),
            Some(Value::String(cmd)) => cmd.contains("${PORT}"),
            Some(Value::Number(_) | Value::Bool(_)) => false,
            Some(other) => {
                return Err(reporter.error(
                    &cmd_path,
                    format!("expected a string, found {}", describe(other)),
                ))
            }
        };
        let proxy = mapping.get("proxy").filter(|value| !value.is_null());
        let proxy_uses_port = match proxy {
            None => true,
            Some(value) => value.as_str().is_some_and(|text| text.contains("${PORT}")),
        };
        if proxy_uses_port && !cmd_uses_port {
            let message = if proxy.is_some() {
                "proxy uses ${PORT} but cmd does not; a port is only assigned to models whose cmd uses ${PORT}"
            } else {
                "cmd does not use ${PORT}, so proxy must be set (the default http://localhost:${PORT} needs a port)"
            };
            return Err(reporter.error(&path.key("proxy"), message));
        }
        if cmd_uses_port {
            let port = u16::try_from(next_port).map_err(|_| {
                reporter.error(
                    &path.key("cmd"),
                    format!(
                        "no port left for ${{PORT}}: startPort {start_port} plus the models before this one passes 65535"
                    ),
                )
            })?;
            next_port += 1;
            let scope = [Macro::new("PORT", Value::Number(port.into()))];
            expand_model(mapping, &scope, &path, reporter)?;
            ports.insert(id.clone(), port);
        }
    }
    Ok(ports)
}

/// The top-level scalar settings of step 4, defaults applied.
struct TopSettings {
    health_check_timeout: i64,
    log_level: LogLevel,
    log_time_format: Option<String>,
    log_to_stdout: LogToStdout,
    send_loading_state: bool,
    include_aliases_in_list: bool,
    global_ttl: i64,
    unload_timeout: i64,
    metrics_max_in_memory: i64,
    api_keys: Vec<String>,
    activity_store: Option<std::path::PathBuf>,
}

/// Reads the top-level scalar settings, in this order (which is the order their problems are
/// reported in), then warns about top-level sections swapd ignores.
fn top_settings(top: &Fields<'_>, reporter: &mut Reporter<'_>) -> Result<TopSettings, ConfigError> {
    let settings = TopSettings {
        health_check_timeout: top
            .int("healthCheckTimeout", reporter)?
            .unwrap_or(DEFAULT_HEALTH_CHECK_TIMEOUT)
            .max(MIN_HEALTH_CHECK_TIMEOUT),
        log_level: log_level(top, reporter)?,
        log_time_format: log_time_format(top, reporter)?,
        log_to_stdout: log_to_stdout(top, reporter)?,
        send_loading_state: top.bool("sendLoadingState", reporter)?.unwrap_or(false),
        include_aliases_in_list: top.bool("includeAliasesInList", reporter)?.unwrap_or(false),
        global_ttl: top.seconds("globalTTL", reporter, 0)?,
        unload_timeout: match top.seconds("unloadTimeout", reporter, DEFAULT_UNLOAD_TIMEOUT)? {
            0 => DEFAULT_UNLOAD_TIMEOUT,
            seconds => seconds,
        },
        metrics_max_in_memory: metrics_max_in_memory(top, reporter)?,
        api_keys: api_keys(top, reporter)?,
        activity_store: activity_store(top, reporter)?,
    };
    Ok(settings)
}

/// `logLevel`; an unknown level warns and falls back to info, as llama-swap does.
fn log_level(top: &Fields<'_>, reporter: &mut Reporter<'_>) -> Result<LogLevel, ConfigError> {
    let Some(text) = top.string("logLevel", reporter)? else {
        return Ok(LogLevel::Info);
    };
    Ok(match text.to_ascii_lowercase().as_str() {
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warn" => LogLevel::Warn,
        "error" => LogLevel::Error,
        _ => {
            reporter.warn(
                &top.path("logLevel"),
                format!("unknown log level '{text}'; using info (valid: debug, info, warn, error)"),
            );
            LogLevel::Info
        }
    })
}

/// `logTimeFormat`, one of Go's layout names; an unknown name warns and means no timestamp.
fn log_time_format(
    top: &Fields<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<Option<String>, ConfigError> {
    let Some(text) = top.optional_string("logTimeFormat", reporter)? else {
        return Ok(None);
    };
    let lowered = text.to_ascii_lowercase();
    if TIME_FORMATS.contains(&lowered.as_str()) {
        return Ok(Some(lowered));
    }
    reporter.warn(
        &top.path("logTimeFormat"),
        format!(
            "unknown time format '{text}'; log lines get no timestamp (valid: {})",
            TIME_FORMATS.join(", ")
        ),
    );
    Ok(None)
}

/// `logToStdout`: which logs are copied to stdout.
fn log_to_stdout(top: &Fields<'_>, reporter: &Reporter<'_>) -> Result<LogToStdout, ConfigError> {
    let Some(text) = top.string("logToStdout", reporter)? else {
        return Ok(LogToStdout::Proxy);
    };
    match text.to_ascii_lowercase().as_str() {
        "proxy" => Ok(LogToStdout::Proxy),
        "upstream" => Ok(LogToStdout::Upstream),
        "both" => Ok(LogToStdout::Both),
        "none" => Ok(LogToStdout::None),
        _ => Err(reporter.error(
            &top.path("logToStdout"),
            format!("must be one of proxy, upstream, both, none; found '{text}'"),
        )),
    }
}

/// `metricsMaxInMemory`, the activity ring's size (0 keeps none).
fn metrics_max_in_memory(top: &Fields<'_>, reporter: &Reporter<'_>) -> Result<i64, ConfigError> {
    let value = top
        .int("metricsMaxInMemory", reporter)?
        .unwrap_or(DEFAULT_METRICS_MAX_IN_MEMORY);
    if value < 0 {
        return Err(reporter.error(
            &top.path("metricsMaxInMemory"),
            format!("must be 0 or more, found {value}"),
        ));
    }
    Ok(value)
}

/// `apiKeys`: non-empty, without spaces (a key travels in a `Bearer` header).
fn api_keys(top: &Fields<'_>, reporter: &Reporter<'_>) -> Result<Vec<String>, ConfigError> {
    let api_keys = top.strings("apiKeys", reporter)?;
    for (index, key) in api_keys.iter().enumerate() {
        let path = top.path("apiKeys").index(index);
        if key.is_empty() {
            return Err(reporter.error(&path, "API keys must not be empty"));
        }
        if key.contains(' ') {
            return Err(reporter.error(&path, "API keys must not contain spaces"));
        }
    }
    Ok(api_keys)
}

/// `store.path`, the activity log's file; a `store` without a path keeps activity in memory.
fn activity_store(
    top: &Fields<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<Option<std::path::PathBuf>, ConfigError> {
    let Some(store) = top.mapping("store", reporter, "a mapping with `path`")? else {
        return Ok(None);
    };
    let store = Fields::new(store, &top.path("store"));
    match store.string("path", reporter)? {
        Some(path) if path.trim().is_empty() => {
            Err(reporter.error(&store.path("path"), "must not be empty"))
        }
        Some(path) => Ok(Some(std::path::PathBuf::from(path))),
        None => {
            reporter.warn(
                &top.path("store"),
                "has no `path`; activity is kept in memory only",
            );
            Ok(None)
        }
    }
}

/// Builds every model in sorted id order (ports from step 3, shared defaults from `shared`).
fn build_models(
    models: &Mapping,
    ids: &[String],
    models_path: &KeyPath,
    ports: &BTreeMap<String, u16>,
    shared: &Globals,
    reporter: &mut Reporter<'_>,
) -> Result<BTreeMap<String, ModelConfig>, ConfigError> {
    let mut built: BTreeMap<String, ModelConfig> = BTreeMap::new();
    for id in ids {
        let mapping = models
            .get(id.as_str())
            .and_then(Value::as_mapping)
            .expect("every model was checked to be a mapping");
        let model = build_model(
            id,
            mapping,
            &models_path.key(id),
            ports.get(id).copied(),
            shared,
            reporter,
        )?;
        built.insert(id.clone(), model);
    }
    Ok(built)
}

/// What runs together and how requests find models, all built after the models and aliases.
struct Routing {
    groups: Vec<GroupConfig>,
    matrix: Option<MatrixConfig>,
    peers: Peers,
    selectors: BTreeMap<String, SelectorConfig>,
    profiles: BTreeMap<String, ProfileConfig>,
    preload: Vec<String>,
}

/// Groups (or the matrix), peers, selectors and profiles, the scheduler and the preload list.
fn build_routing(
    top: &Fields<'_>,
    built: &BTreeMap<String, ModelConfig>,
    aliases: &BTreeMap<String, String>,
    reporter: &mut Reporter<'_>,
) -> Result<Routing, ConfigError> {
    let resolve = |name: &str| -> Option<String> {
        if built.contains_key(name) {
            Some(name.to_string())
        } else {
            aliases.get(name).cloned()
        }
    };
    let (groups, matrix_source) = build_groups(top, built, aliases, reporter)?;
    // With the matrix router, sets decide what runs together and groups play no part.
    let (groups, matrix) = match matrix_source {
        Some((mapping, path)) => (
            Vec::new(),
            Some(super::matrix::build(
                mapping, &path, built, aliases, reporter,
            )?),
        ),
        None => (groups, None),
    };
    // Peers first: selector targets and profile pins may name peer models.
    let peers = super::peers::build(top, built, aliases, reporter)?;
    let selectors = super::selectors::build_selectors(
        top,
        built,
        aliases,
        &groups,
        matrix.as_ref(),
        &peers,
        reporter,
    )?;
    let profiles =
        super::selectors::build_profiles(top, built, aliases, &selectors, &peers, reporter)?;
    super::peers::check_reserved(top, &peers, &selectors, &profiles, reporter)?;
    check_scheduler(top, &resolve, reporter)?;
    let preload = build_preload(top, &resolve, reporter)?;
    Ok(Routing {
        groups,
        matrix,
        peers,
        selectors,
        profiles,
        preload,
    })
}

fn build_limits(top: &Fields<'_>, reporter: &mut Reporter<'_>) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let Some(mapping) = top.mapping("swapd", reporter, "a mapping of swapd settings")? else {
        return Ok(defaults);
    };
    let path = top.path("swapd");
    schema::check_keys(mapping, &path, schema::SWAPD, reporter);
    let fields = Fields::new(mapping, &path);
    let seconds_of = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
        let default = usize::try_from(default.as_secs()).unwrap_or(usize::MAX);
        let value = fields.positive(key, reporter, default)?;
        Ok(Duration::from_secs(
            u64::try_from(value).unwrap_or(u64::MAX),
        ))
    };
    Ok(Limits {
        log_buffer_bytes: fields.positive("logBufferBytes", reporter, defaults.log_buffer_bytes)?,
        max_body_bytes: fields.positive("maxBodyBytes", reporter, defaults.max_body_bytes)?,
        header_timeout: seconds_of("headerTimeout", defaults.header_timeout)?,
        max_connections: fields.positive("maxConnections", reporter, defaults.max_connections)?,
        upstream_timeout: seconds_of("upstreamTimeout", defaults.upstream_timeout)?,
        shutdown_timeout: seconds_of("shutdownTimeout", defaults.shutdown_timeout)?,
    })
}

/// `swapd.logFormat`: `text` (the default) or `json`.
fn build_log_format(
    top: &Fields<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<LogFormat, ConfigError> {
    let Some(mapping) = top.mapping("swapd", reporter, "a mapping of swapd settings")? else {
        return Ok(LogFormat::Text);
    };
    let path = top.path("swapd");
    let fields = Fields::new(mapping, &path);
    match fields.string("logFormat", reporter)? {
        None => Ok(LogFormat::Text),
        Some(text) => match text.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(reporter.error(
                &path.key("logFormat"),
                format!("must be text or json; found '{text}'"),
            )),
        },
    }
}

/// `swapd.allowedOrigins` and `swapd.allowedHosts` (see `access.rs` for the entry syntax).
fn build_access(top: &Fields<'_>, reporter: &mut Reporter<'_>) -> Result<Access, ConfigError> {
    let Some(mapping) = top.mapping("swapd", reporter, "a mapping of swapd settings")? else {
        return Ok(Access::default());
    };
    let fields = Fields::new(mapping, &top.path("swapd"));
    let mut origins = Vec::new();
    let mut any_origin = false;
    for (index, entry) in fields
        .strings("allowedOrigins", reporter)?
        .iter()
        .enumerate()
    {
        match access::parse_origin(entry) {
            Ok(Some(pattern)) => origins.push(pattern),
            Ok(None) => any_origin = true,
            Err(message) => {
                return Err(reporter.error(&fields.path("allowedOrigins").index(index), message))
            }
        }
    }
    let mut hosts = Vec::new();
    let mut any_host = false;
    for (index, entry) in fields.strings("allowedHosts", reporter)?.iter().enumerate() {
        match access::parse_host(entry) {
            Ok(Some(pattern)) => hosts.push(pattern),
            Ok(None) => any_host = true,
            Err(message) => {
                return Err(reporter.error(&fields.path("allowedHosts").index(index), message))
            }
        }
    }
    Ok(Access {
        origins: if any_origin {
            OriginRule::Any
        } else {
            OriginRule::List(origins)
        },
        hosts: if any_host {
            HostRule::Any
        } else {
            HostRule::List(hosts)
        },
    })
}
