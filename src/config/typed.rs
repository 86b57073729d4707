//! Steps 2 to 4 of loading: macro expansion over the tree, `${PORT}` assignment, and the
//! typed, validated `Config` with every default applied.
//!
//! The decoded YAML is walked by hand rather than through `#[derive(Deserialize)]` so that each
//! problem can name its key path (and so its line), unknown keys can be warned about instead
//! of silently dropped, and llama-swap's lenient scalar handling (a number where a string is
//! expected, `yes`/`no` booleans) can be kept.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::access::{self, Access, HostRule, OriginRule};
use super::command::strip_comment_lines;
use super::error::{ConfigError, KeyPath, Reporter};
use super::macros::{self, Macro};
use super::memory;
use super::schema;
use super::{Config, Limits, LogFormat, LogLevel, LogToStdout, ModelConfig};

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
const COMFYUI_MODEL_ID: &str = "comfyui_auto";
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

/// Builds and validates the whole configuration from the decoded, normalized YAML document.
pub(crate) fn build(root: Value, reporter: &mut Reporter<'_>) -> Result<Config, ConfigError> {
    let root_path = KeyPath::root();
    let mut root = match root {
        Value::Null => Mapping::new(),
        Value::Mapping(mapping) => mapping,
        other => {
            return Err(reporter.error(
                &root_path,
                format!(
                    "expected a mapping of settings at the top level, found {}",
                    describe(&other)
                ),
            ))
        }
    };
    schema::check_keys(&root, &root_path, schema::TOP_LEVEL, reporter);

    // Step 2: global macros apply to every top-level section except `models`, which gets a
    // per-model scope below.
    let globals = macros::parse_list(root.get("macros"), &root_path.key("macros"), reporter)?;
    for (key, value) in root.iter_mut() {
        if !matches!(key.as_str(), Some("models" | "macros")) {
            macros::expand_value(value, &globals);
        }
    }
    let models_path = root_path.key("models");
    let mut models = match root.remove("models") {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(mapping)) => mapping,
        Some(other) => {
            return Err(reporter.error(
                &models_path,
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
        reporter.warn(&models_path, "no models are configured");
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

    // Step 3: ${PORT}, in sorted id order, only for models whose cmd uses it.
    let top = Fields::new(&root, &root_path);
    let start_port = top
        .int("startPort", reporter)?
        .unwrap_or(DEFAULT_START_PORT);
    if !(1..=i64::from(u16::MAX)).contains(&start_port) {
        return Err(reporter.error(
            &root_path.key("startPort"),
            format!("must be between 1 and 65535, found {start_port}"),
        ));
    }
    let mut next_port = start_port;
    let mut ports: BTreeMap<String, u16> = BTreeMap::new();
    for id in &ids {
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

    // Step 4: typed settings with defaults.
    let top = Fields::new(&root, &root_path);
    let health_check_timeout = top
        .int("healthCheckTimeout", reporter)?
        .unwrap_or(DEFAULT_HEALTH_CHECK_TIMEOUT)
        .max(MIN_HEALTH_CHECK_TIMEOUT);
    let log_level = match top.string("logLevel", reporter)? {
        None => LogLevel::Info,
        Some(text) => {
            match text.to_ascii_lowercase().as_str() {
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
            }
        }
    };
    let log_time_format = match top.optional_string("logTimeFormat", reporter)? {
        None => None,
        Some(text) => {
            let lowered = text.to_ascii_lowercase();
            if TIME_FORMATS.contains(&lowered.as_str()) {
                Some(lowered)
            } else {
                reporter.warn(
                    &top.path("logTimeFormat"),
                    format!(
                        "unknown time format '{text}'; log lines get no timestamp (valid: {})",
                        TIME_FORMATS.join(", ")
                    ),
                );
                None
            }
        }
    };
    let log_to_stdout = match top.string("logToStdout", reporter)? {
        None => LogToStdout::Proxy,
        Some(text) => match text.to_ascii_lowercase().as_str() {
            "proxy" => LogToStdout::Proxy,
            "upstream" => LogToStdout::Upstream,
            "both" => LogToStdout::Both,
            "none" => LogToStdout::None,
            _ => {
                return Err(reporter.error(
                    &top.path("logToStdout"),
                    format!("must be one of proxy, upstream, both, none; found '{text}'"),
                ))
            }
        },
    };
    let send_loading_state = top.bool("sendLoadingState", reporter)?.unwrap_or(false);
    let include_aliases_in_list = top.bool("includeAliasesInList", reporter)?.unwrap_or(false);
    let global_ttl = top.seconds("globalTTL", reporter, 0)?;
    let mut unload_timeout = top.seconds("unloadTimeout", reporter, DEFAULT_UNLOAD_TIMEOUT)?;
    if unload_timeout == 0 {
        unload_timeout = DEFAULT_UNLOAD_TIMEOUT;
    }
    let metrics_max_in_memory = top
        .int("metricsMaxInMemory", reporter)?
        .unwrap_or(DEFAULT_METRICS_MAX_IN_MEMORY);
    if metrics_max_in_memory < 0 {
        return Err(reporter.error(
            &top.path("metricsMaxInMemory"),
            format!("must be 0 or more, found {metrics_max_in_memory}"),
        ));
    }
    let mut api_keys = top.strings("apiKeys", reporter)?;
    for (index, key) in api_keys.iter_mut().enumerate() {
        let path = top.path("apiKeys").index(index);
        if key.is_empty() {
            return Err(reporter.error(&path, "API keys must not be empty"));
        }
        if key.contains(' ') {
            return Err(reporter.error(&path, "API keys must not contain spaces"));
        }
    }
    let activity_store = match top.mapping("store", reporter, "a mapping with `path`")? {
        Some(store) => {
            let store = Fields::new(store, &top.path("store"));
            match store.string("path", reporter)? {
                Some(path) if path.trim().is_empty() => {
                    return Err(reporter.error(&store.path("path"), "must not be empty"));
                }
                Some(path) => Some(std::path::PathBuf::from(path)),
                None => {
                    reporter.warn(
                        &top.path("store"),
                        "has no `path`; activity is kept in memory only",
                    );
                    None
                }
            }
        }
        None => None,
    };
    for (key, message) in [("upstream", "not supported by swapd and ignored")] {
        if top.get(key).is_some() {
            reporter.warn(&top.path(key), message);
        }
    }
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
        global_ttl,
        unload_timeout,
        send_loading_state,
    };
    let mut built: BTreeMap<String, ModelConfig> = BTreeMap::new();
    for id in &ids {
        let mapping = models
            .get(id.as_str())
            .and_then(Value::as_mapping)
            .expect("every model was checked to be a mapping");
        let model = build_model(
            id,
            mapping,
            &models_path.key(id),
            ports.get(id).copied(),
            &shared,
            reporter,
        )?;
        built.insert(id.clone(), model);
    }
    let aliases = register_aliases(&mut built, &models_path, reporter)?;
    let resolve = |name: &str| -> Option<String> {
        if built.contains_key(name) {
            Some(name.to_string())
        } else {
            aliases.get(name).cloned()
        }
    };

    let (groups, matrix_source) = build_groups(&top, &built, &aliases, reporter)?;
    // With the matrix router, sets decide what runs together and groups play no part.
    let (groups, matrix) = match matrix_source {
        Some((mapping, path)) => (
            Vec::new(),
            Some(super::matrix::build(
                mapping, &path, &built, &aliases, reporter,
            )?),
        ),
        None => (groups, None),
    };
    // Peers first: selector targets and profile pins may name peer models.
    let peers = super::peers::build(&top, &built, &aliases, reporter)?;
    let selectors = super::selectors::build_selectors(
        &top,
        &built,
        &aliases,
        &groups,
        matrix.as_ref(),
        &peers,
        reporter,
    )?;
    let profiles =
        super::selectors::build_profiles(&top, &built, &aliases, &selectors, &peers, reporter)?;
    super::peers::check_reserved(&top, &peers, &selectors, &profiles, reporter)?;
    check_scheduler(&top, &resolve, reporter)?;
    let preload = build_preload(&top, &resolve, reporter)?;

    Ok(Config {
        health_check_timeout: seconds(health_check_timeout),
        log_level,
        log_time_format,
        log_to_stdout,
        log_format,
        start_port: u16::try_from(start_port).expect("startPort was range-checked"),
        send_loading_state,
        include_aliases_in_list,
        global_ttl: seconds(global_ttl),
        unload_timeout: seconds(unload_timeout),
        metrics_max_in_memory: usize::try_from(metrics_max_in_memory).unwrap_or(usize::MAX),
        activity_store,
        api_keys,
        models: built,
        groups,
        matrix,
        selectors,
        profiles,
        preload,
        aliases,
        limits,
        access,
        memory,
        peers,
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
