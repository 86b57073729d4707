//! Steps 2 to 4 of loading: macro expansion over the tree, `${PORT}` assignment, and the
//! typed, validated `Config` with every default applied.
//!
//! The decoded YAML is walked by hand rather than through `#[derive(Deserialize)]` so that each
//! problem can name its key path (and so its line), unknown keys can be warned about instead
//! of silently dropped, and llama-swap's lenient scalar handling (a number where a string is
//! expected, `yes`/`no` booleans) can be kept.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::access::{self, Access, HostRule, OriginRule};
use super::command::{display_command, split_command, strip_comment_lines};
use super::error::{ConfigError, KeyPath, Reporter};
use super::macros::{self, Macro};
use super::memory;
use super::schema;
use super::{
    Config, Filters, GroupConfig, Limits, LogFormat, LogLevel, LogToStdout, ModelConfig,
    DEFAULT_GROUP_ID,
};

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

/// A short description of a value for "expected X, found Y" messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "an empty value".to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(_) => macros::scalar_text(value),
        Value::String(text) => format!("'{text}'"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(tagged) => describe(&tagged.value),
    }
}

/// Strips YAML tags and turns every mapping key into a string, as Go's map[string] decoding
/// does, so that later steps can index mappings by name.
pub(crate) fn normalize(
    value: Value,
    path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<Value, ConfigError> {
    match value {
        Value::Tagged(tagged) => normalize(tagged.value, path, reporter),
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| normalize(item, &path.index(index), reporter))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Sequence),
        Value::Mapping(mapping) => {
            let mut normalized = Mapping::with_capacity(mapping.len());
            for (key, item) in mapping {
                let key = match key {
                    Value::String(text) => text,
                    Value::Null | Value::Bool(_) | Value::Number(_) => macros::scalar_text(&key),
                    Value::Tagged(tagged) => macros::scalar_text(&tagged.value),
                    Value::Sequence(_) | Value::Mapping(_) => {
                        return Err(reporter.error(path, "mapping keys must be plain scalars"))
                    }
                };
                let item_path = path.key(&key);
                if normalized.contains_key(key.as_str()) {
                    return Err(reporter.error(&item_path, format!("duplicate key '{key}'")));
                }
                let item = normalize(item, &item_path, reporter)?;
                normalized.insert(Value::String(key), item);
            }
            Ok(Value::Mapping(normalized))
        }
        scalar => Ok(scalar),
    }
}

/// Reads a scalar as a string and rejects macro references that survived expansion.
fn string_value(
    value: &Value,
    path: &KeyPath,
    reporter: &Reporter<'_>,
    allow_pid: bool,
) -> Result<String, ConfigError> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(_) | Value::Bool(_) => macros::scalar_text(value),
        other => {
            return Err(reporter.error(
                path,
                format!("expected a string, found {}", describe(other)),
            ))
        }
    };
    if let Some(name) = macros::leftover(&text, allow_pid) {
        return Err(reporter.error(path, macros::leftover_message(name)));
    }
    Ok(text)
}

fn int_value(value: &Value, path: &KeyPath, reporter: &Reporter<'_>) -> Result<i64, ConfigError> {
    if let Value::String(text) = value {
        if let Some(name) = macros::leftover(text, false) {
            return Err(reporter.error(path, macros::leftover_message(name)));
        }
        if let Ok(number) = text.trim().parse::<i64>() {
            return Ok(number);
        }
    }
    value.as_i64().ok_or_else(|| {
        reporter.error(
            path,
            format!("expected a whole number, found {}", describe(value)),
        )
    })
}

fn bool_value(value: &Value, path: &KeyPath, reporter: &Reporter<'_>) -> Result<bool, ConfigError> {
    match value {
        Value::Bool(flag) => return Ok(*flag),
        Value::String(text) => {
            if let Some(name) = macros::leftover(text, false) {
                return Err(reporter.error(path, macros::leftover_message(name)));
            }
            // yaml.v3 accepts YAML 1.1 spellings when decoding into a bool field.
            match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "on" => return Ok(true),
                "false" | "no" | "n" | "off" => return Ok(false),
                _ => {}
            }
        }
        _ => {}
    }
    Err(reporter.error(
        path,
        format!("expected true or false, found {}", describe(value)),
    ))
}

/// Converts a YAML value into JSON for request filters and metadata.
fn json_value(
    value: &Value,
    path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<serde_json::Value, ConfigError> {
    Ok(match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(flag) => serde_json::Value::Bool(*flag),
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                serde_json::Value::from(integer)
            } else if let Some(unsigned) = number.as_u64() {
                serde_json::Value::from(unsigned)
            } else {
                let float = number.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(float)
                    .map(serde_json::Value::Number)
                    .ok_or_else(|| {
                        reporter.error(path, format!("{float} cannot be represented in JSON"))
                    })?
            }
        }
        Value::String(_) => serde_json::Value::String(string_value(value, path, reporter, false)?),
        Value::Sequence(items) => serde_json::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| json_value(item, &path.index(index), reporter))
                .collect::<Result<_, _>>()?,
        ),
        Value::Mapping(mapping) => serde_json::Value::Object(json_object(mapping, path, reporter)?),
        Value::Tagged(tagged) => json_value(&tagged.value, path, reporter)?,
    })
}

pub(crate) fn json_object(
    mapping: &Mapping,
    path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let mut object = serde_json::Map::new();
    for (key, item) in mapping {
        let key = key.as_str().unwrap_or_default();
        object.insert(key.to_string(), json_value(item, &path.key(key), reporter)?);
    }
    Ok(object)
}

/// Typed access to the keys of one mapping, with errors that name `path.key`.
pub(crate) struct Fields<'m> {
    mapping: &'m Mapping,
    path: KeyPath,
}

impl<'m> Fields<'m> {
    pub(crate) fn new(mapping: &'m Mapping, path: &KeyPath) -> Fields<'m> {
        Fields {
            mapping,
            path: path.clone(),
        }
    }

    /// The value of `key`; an explicit null counts as absent, as in Go.
    pub(crate) fn get(&self, key: &str) -> Option<&'m Value> {
        self.mapping.get(key).filter(|value| !value.is_null())
    }

    pub(crate) fn path(&self, key: &str) -> KeyPath {
        self.path.key(key)
    }

    pub(crate) fn string(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
    ) -> Result<Option<String>, ConfigError> {
        self.get(key)
            .map(|value| string_value(value, &self.path(key), reporter, false))
            .transpose()
    }

    /// A string where an empty value means "not set".
    pub(crate) fn optional_string(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
    ) -> Result<Option<String>, ConfigError> {
        Ok(self.string(key, reporter)?.filter(|text| !text.is_empty()))
    }

    pub(crate) fn int(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
    ) -> Result<Option<i64>, ConfigError> {
        self.get(key)
            .map(|value| int_value(value, &self.path(key), reporter))
            .transpose()
    }

    pub(crate) fn bool(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
    ) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|value| bool_value(value, &self.path(key), reporter))
            .transpose()
    }

    pub(crate) fn mapping(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
        expected: &str,
    ) -> Result<Option<&'m Mapping>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Mapping(mapping)) => Ok(Some(mapping)),
            Some(other) => Err(reporter.error(
                &self.path(key),
                format!("expected {expected}, found {}", describe(other)),
            )),
        }
    }

    pub(crate) fn strings(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
    ) -> Result<Vec<String>, ConfigError> {
        let path = self.path(key);
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(index, item)| string_value(item, &path.index(index), reporter, false))
                .collect(),
            Some(other) => Err(reporter.error(
                &path,
                format!("expected a list of strings, found {}", describe(other)),
            )),
        }
    }

    /// A whole number of seconds that must not be negative.
    pub(crate) fn seconds(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
        default: i64,
    ) -> Result<i64, ConfigError> {
        let value = self.int(key, reporter)?.unwrap_or(default);
        if value < 0 {
            return Err(reporter.error(
                &self.path(key),
                format!("must be 0 or more seconds, found {value}"),
            ));
        }
        Ok(value)
    }

    /// A count or size that must be greater than zero.
    pub(crate) fn positive(
        &self,
        key: &str,
        reporter: &Reporter<'_>,
        default: usize,
    ) -> Result<usize, ConfigError> {
        match self.int(key, reporter)? {
            None => Ok(default),
            Some(value) if value > 0 => Ok(usize::try_from(value).unwrap_or(usize::MAX)),
            Some(value) => Err(reporter.error(
                &self.path(key),
                format!("must be greater than 0, found {value}"),
            )),
        }
    }
}

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

fn build_model(
    id: &str,
    mapping: &Mapping,
    path: &KeyPath,
    port: Option<u16>,
    globals: &Globals,
    reporter: &mut Reporter<'_>,
) -> Result<ModelConfig, ConfigError> {
    schema::check_keys(mapping, path, schema::MODEL, reporter);
    for key in ["timeouts", "compat", "capabilities"] {
        if mapping.get(key).is_some_and(|value| !value.is_null()) {
            reporter.warn(&path.key(key), "not supported by swapd and ignored");
        }
    }
    let fields = Fields::new(mapping, path);

    let cmd_path = path.key("cmd");
    let cmd_text = match fields.get("cmd") {
        Some(value) => string_value(value, &cmd_path, reporter, false)?,
        None => return Err(reporter.error(&cmd_path, "cmd is required")),
    };
    let cmd = split_command(&cmd_text).map_err(|message| reporter.error(&cmd_path, message))?;
    if cmd.is_empty() {
        return Err(reporter.error(&cmd_path, "cmd is empty"));
    }
    let cmd_display = display_command(&cmd);

    let cmd_stop_path = path.key("cmdStop");
    let cmd_stop = match fields.get("cmdStop") {
        None => None,
        Some(value) => {
            let text = string_value(value, &cmd_stop_path, reporter, true)?;
            split_command(&text).map_err(|message| reporter.error(&cmd_stop_path, message))?;
            Some(text.trim().to_string()).filter(|text| !text.is_empty())
        }
    };

    let proxy = match fields.string("proxy", reporter)? {
        Some(text) => {
            let trimmed = text.trim().trim_end_matches('/').to_string();
            let host = trimmed
                .strip_prefix("http://")
                .or_else(|| trimmed.strip_prefix("https://"));
            if host.is_none_or(|host| host.is_empty()) {
                return Err(reporter.error(
                    &fields.path("proxy"),
                    format!("expected an http:// or https:// URL, found '{text}'"),
                ));
            }
            trimmed
        }
        None => format!(
            "http://localhost:{}",
            port.expect("a model without proxy was checked to use ${PORT} in cmd")
        ),
    };

    let aliases = build_aliases(&fields, reporter)?;

    let mut env = Vec::new();
    for (index, entry) in fields.strings("env", reporter)?.into_iter().enumerate() {
        match entry.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                env.push((name.to_string(), value.to_string()));
            }
            _ => {
                return Err(reporter.error(
                    &fields.path("env").index(index),
                    format!("expected NAME=VALUE, found '{entry}'"),
                ))
            }
        }
    }

    let check_endpoint = match fields.string("checkEndpoint", reporter)? {
        None => Some(DEFAULT_CHECK_ENDPOINT.to_string()),
        Some(text) if text.trim() == "none" => None,
        Some(text) => {
            let trimmed = text.trim();
            if trimmed.starts_with('/') {
                Some(trimmed.to_string())
            } else {
                Some(format!("/{trimmed}"))
            }
        }
    };

    let ttl = match fields.int("ttl", reporter)? {
        None | Some(-1) => globals.global_ttl,
        Some(value) if value >= 0 => value,
        Some(value) => {
            return Err(reporter.error(
                &fields.path("ttl"),
                format!(
                    "must be -1 (use globalTTL), 0 (never unload) or a number of seconds, found {value}"
                ),
            ))
        }
    };
    let unload_timeout = match fields.seconds("unloadTimeout", reporter, 0)? {
        0 => globals.unload_timeout,
        value => value,
    };

    let mut concurrency_limit = match fields.int("concurrencyLimit", reporter)? {
        None | Some(0) => usize::try_from(DEFAULT_CONCURRENCY_LIMIT).unwrap_or(10),
        Some(value) if value > 0 => usize::try_from(value).unwrap_or(usize::MAX),
        Some(value) => {
            return Err(reporter.error(
                &fields.path("concurrencyLimit"),
                format!("must be 0 (the default of 10) or more, found {value}"),
            ))
        }
    };
    if id == COMFYUI_MODEL_ID {
        concurrency_limit = concurrency_limit.max(COMFYUI_MIN_CONCURRENCY);
    }

    let filters = build_filters(fields.get("filters"), &fields.path("filters"), reporter)?;
    let metadata = match fields.mapping("metadata", reporter, "a mapping")? {
        None => serde_json::Value::Null,
        Some(mapping) => {
            serde_json::Value::Object(json_object(mapping, &fields.path("metadata"), reporter)?)
        }
    };

    Ok(ModelConfig {
        id: id.to_string(),
        cmd,
        cmd_display,
        cmd_stop,
        proxy,
        aliases,
        env,
        check_endpoint,
        ttl: seconds(ttl),
        unload_timeout: seconds(unload_timeout),
        unlisted: fields.bool("unlisted", reporter)?.unwrap_or(false),
        use_model_name: fields.optional_string("useModelName", reporter)?,
        name: fields.optional_string("name", reporter)?,
        description: fields.optional_string("description", reporter)?,
        concurrency_limit,
        filters,
        metadata,
        send_loading_state: fields
            .bool("sendLoadingState", reporter)?
            .unwrap_or(globals.send_loading_state),
        port,
    })
}

/// Reads a model's `aliases`: strings, or (as some llama-swap versions write them) mappings
/// with an `id` plus display fields that swapd does not use.
fn build_aliases(
    fields: &Fields<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<Vec<String>, ConfigError> {
    let path = fields.path("aliases");
    let items = match fields.get("aliases") {
        None => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items,
        Some(other) => {
            return Err(reporter.error(
                &path,
                format!("expected a list of strings, found {}", describe(other)),
            ))
        }
    };
    let mut aliases = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_path = path.index(index);
        let alias = match item {
            Value::Mapping(mapping) => {
                schema::check_keys(mapping, &item_path, schema::ALIAS, reporter);
                match mapping.get("id").filter(|id| !id.is_null()) {
                    Some(id) => string_value(id, &item_path.key("id"), reporter, false)?,
                    None => {
                        return Err(
                            reporter.error(&item_path, "an alias written as a mapping needs an id")
                        )
                    }
                }
            }
            other => string_value(other, &item_path, reporter, false)?,
        };
        if alias.trim().is_empty() {
            return Err(reporter.error(&item_path, "aliases must not be empty"));
        }
        aliases.push(alias);
    }
    Ok(aliases)
}

/// The parameter name request filters may never strip or set.
const PROTECTED_PARAM: &str = "model";

pub(crate) fn build_filters(
    value: Option<&Value>,
    path: &KeyPath,
    reporter: &mut Reporter<'_>,
) -> Result<Filters, ConfigError> {
    let mapping = match value {
        None => return Ok(Filters::default()),
        Some(Value::Mapping(mapping)) => mapping,
        Some(other) => {
            return Err(reporter.error(
                path,
                format!(
                    "expected a mapping with stripParams, setParams or setParamsByID, found {}",
                    describe(other)
                ),
            ))
        }
    };
    schema::check_keys(mapping, path, schema::FILTERS, reporter);
    let fields = Fields::new(mapping, path);
    if fields.get("setParamsByMatch").is_some() {
        reporter.warn(
            &fields.path("setParamsByMatch"),
            "not supported by swapd and ignored",
        );
    }

    let strip_text = match fields.string("stripParams", reporter)? {
        Some(text) => text,
        // llama-swap still accepts the old snake_case spelling.
        None => fields.string("strip_params", reporter)?.unwrap_or_default(),
    };
    let strip_params: BTreeSet<String> = strip_text
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != PROTECTED_PARAM)
        .map(str::to_string)
        .collect();

    let mut set_params = match fields.mapping("setParams", reporter, "a mapping of parameters")? {
        None => serde_json::Map::new(),
        Some(mapping) => json_object(mapping, &fields.path("setParams"), reporter)?,
    };
    set_params.remove(PROTECTED_PARAM);

    let mut set_params_by_id = BTreeMap::new();
    let by_id_path = fields.path("setParamsByID");
    if let Some(by_id) = fields.mapping(
        "setParamsByID",
        reporter,
        "a mapping of requested model ids to parameters",
    )? {
        for (key, params) in by_id {
            let key = key.as_str().unwrap_or_default();
            let key_path = by_id_path.key(key);
            if let Some(name) = macros::leftover(key, false) {
                return Err(reporter.error(&key_path, macros::leftover_message(name)));
            }
            if key.is_empty() {
                return Err(reporter.error(&key_path, "keys must not be empty"));
            }
            let mut object = match params {
                Value::Null => serde_json::Map::new(),
                Value::Mapping(mapping) => json_object(mapping, &key_path, reporter)?,
                other => {
                    return Err(reporter.error(
                        &key_path,
                        format!(
                            "expected a mapping of parameters, found {}",
                            describe(other)
                        ),
                    ))
                }
            };
            object.remove(PROTECTED_PARAM);
            set_params_by_id.insert(key.to_string(), object);
        }
    }

    Ok(Filters {
        strip_params: strip_params.into_iter().collect(),
        set_params,
        set_params_by_id,
    })
}

/// Builds the alias table: explicit aliases first, then `setParamsByID` keys, each of which
/// becomes an alias of its model unless it is the model's own id.
fn register_aliases(
    models: &mut BTreeMap<String, ModelConfig>,
    models_path: &KeyPath,
    reporter: &Reporter<'_>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    for (id, model) in models.iter() {
        for (index, alias) in model.aliases.iter().enumerate() {
            let path = models_path.key(id).key("aliases").index(index);
            if models.contains_key(alias) {
                return Err(
                    reporter.error(&path, format!("alias '{alias}' is also the id of a model"))
                );
            }
            if let Some(owner) = aliases.get(alias) {
                let message = if owner == id {
                    format!("alias '{alias}' is listed twice")
                } else {
                    format!("alias '{alias}' is already used by model '{owner}'")
                };
                return Err(reporter.error(&path, message));
            }
            aliases.insert(alias.clone(), id.clone());
        }
    }
    let ids: Vec<String> = models.keys().cloned().collect();
    for id in &ids {
        let keys: Vec<String> = models[id]
            .filters
            .set_params_by_id
            .keys()
            .cloned()
            .collect();
        for key in keys {
            if &key == id {
                continue;
            }
            let path = models_path
                .key(id)
                .key("filters")
                .key("setParamsByID")
                .key(&key);
            if models.contains_key(&key) {
                return Err(
                    reporter.error(&path, format!("key '{key}' is the id of another model"))
                );
            }
            match aliases.get(&key) {
                Some(owner) if owner == id => {}
                Some(owner) => {
                    return Err(reporter.error(
                        &path,
                        format!("key '{key}' is already an alias of model '{owner}'"),
                    ))
                }
                None => {
                    aliases.insert(key.clone(), id.clone());
                    if let Some(model) = models.get_mut(id) {
                        model.aliases.push(key);
                    }
                }
            }
        }
    }
    Ok(aliases)
}

/// Where the matrix settings were found: the mapping and its key path.
type MatrixSource<'m> = (&'m Mapping, KeyPath);

/// Reads `groups` (legacy) or `routing.router.settings.groups`, validates membership and adds
/// the implicit `(default)` group holding every ungrouped model.
fn build_groups<'m>(
    top: &Fields<'m>,
    models: &BTreeMap<String, ModelConfig>,
    aliases: &BTreeMap<String, String>,
    reporter: &mut Reporter<'_>,
) -> Result<(Vec<GroupConfig>, Option<MatrixSource<'m>>), ConfigError> {
    let mut router_groups: Option<(&Mapping, KeyPath)> = None;
    let mut router_matrix: Option<(&Mapping, KeyPath)> = None;
    let mut use_matrix = false;
    let mut router_used = false;
    if let Some(routing) =
        top.mapping("routing", reporter, "a mapping with router and scheduler")?
    {
        let routing_path = top.path("routing");
        schema::check_keys(routing, &routing_path, schema::ROUTING, reporter);
        let routing_fields = Fields::new(routing, &routing_path);
        if let Some(router) =
            routing_fields.mapping("router", reporter, "a mapping with use and settings")?
        {
            let router_path = routing_path.key("router");
            schema::check_keys(router, &router_path, schema::ROUTER, reporter);
            let router_fields = Fields::new(router, &router_path);
            let use_name = router_fields.string("use", reporter)?;
            match use_name.as_deref() {
                None | Some("") | Some("group") => {}
                Some("matrix") => use_matrix = true,
                Some(other) => {
                    return Err(reporter.error(
                        &router_path.key("use"),
                        format!("unknown router '{other}' (valid: group, matrix)"),
                    ))
                }
            }
            router_used = use_name.is_some();
            if let Some(settings) =
                router_fields.mapping("settings", reporter, "a mapping with groups")?
            {
                let settings_path = router_path.key("settings");
                schema::check_keys(settings, &settings_path, schema::ROUTER_SETTINGS, reporter);
                let settings_fields = Fields::new(settings, &settings_path);
                if let Some(matrix) = settings_fields.mapping(
                    "matrix",
                    reporter,
                    "a mapping with vars, evict_costs and sets",
                )? {
                    router_used = true;
                    if use_matrix {
                        router_matrix = Some((matrix, settings_path.key("matrix")));
                    } else {
                        reporter.warn(
                            &settings_path.key("matrix"),
                            "ignored: routing.router.use is not matrix, so the group router is in use",
                        );
                    }
                }
                if let Some(groups) = settings_fields.mapping(
                    "groups",
                    reporter,
                    "a mapping of group ids to groups",
                )? {
                    router_used = true;
                    if use_matrix {
                        return Err(reporter.error(
                            &settings_path.key("groups"),
                            "groups and matrix cannot be used together; routing.router.use is matrix",
                        ));
                    }
                    router_groups = Some((groups, settings_path.key("groups")));
                }
                if use_matrix && router_matrix.is_none() {
                    return Err(reporter.error(
                        &settings_path,
                        "routing.router.use is matrix, so routing.router.settings.matrix is required",
                    ));
                }
            }
        }
    }
    if use_matrix && router_matrix.is_none() {
        return Err(reporter.error(
            &top.path("routing").key("router").key("settings"),
            "routing.router.use is matrix, so routing.router.settings.matrix is required",
        ));
    }
    let legacy_matrix = top.mapping(
        "matrix",
        reporter,
        "a mapping with vars, evict_costs and sets",
    )?;
    if legacy_matrix.is_some() && (router_used || use_matrix) {
        return Err(reporter.error(
            &top.path("matrix"),
            "the top-level `matrix` cannot be combined with `routing.router`; move it to routing.router.settings.matrix",
        ));
    }
    let legacy = top.mapping("groups", reporter, "a mapping of group ids to groups")?;
    if legacy.is_some() && legacy_matrix.is_some() {
        return Err(reporter.error(
            &top.path("matrix"),
            "groups and matrix cannot be used together",
        ));
    }
    let matrix = match legacy_matrix {
        Some(matrix) => Some((matrix, top.path("matrix"))),
        None => router_matrix,
    };
    if legacy.is_some() && router_used {
        return Err(reporter.error(
            &top.path("groups"),
            "the top-level `groups` cannot be combined with `routing.router`; move the groups to routing.router.settings.groups",
        ));
    }
    let source = match legacy {
        Some(groups) => Some((groups, top.path("groups"))),
        None => router_groups,
    };

    let mut groups = Vec::new();
    let mut member_of: BTreeMap<String, String> = BTreeMap::new();
    if let Some((mapping, groups_path)) = source {
        let mut entries: Vec<(&str, &Value)> = mapping
            .iter()
            .map(|(key, value)| (key.as_str().unwrap_or_default(), value))
            .collect();
        entries.sort_by(|left, right| left.0.cmp(right.0));
        for (group_id, value) in entries {
            let path = groups_path.key(group_id);
            if group_id == DEFAULT_GROUP_ID {
                return Err(reporter.error(
                    &path,
                    format!("the group id '{DEFAULT_GROUP_ID}' is reserved for ungrouped models"),
                ));
            }
            let empty = Mapping::new();
            let group = match value {
                Value::Null => &empty,
                Value::Mapping(group) => group,
                other => {
                    return Err(reporter.error(
                        &path,
                        format!(
                        "expected a mapping with swap, exclusive, persistent and members, found {}",
                        describe(other)
                    ),
                    ))
                }
            };
            schema::check_keys(group, &path, schema::GROUP, reporter);
            let fields = Fields::new(group, &path);
            let members = fields.strings("members", reporter)?;
            for (index, member) in members.iter().enumerate() {
                let member_path = path.key("members").index(index);
                if !models.contains_key(member) {
                    let message = match aliases.get(member) {
                        Some(owner) => format!(
                            "'{member}' is an alias of model '{owner}'; group members must be model ids"
                        ),
                        None => format!("unknown model '{member}'"),
                    };
                    return Err(reporter.error(&member_path, message));
                }
                if members[..index].contains(member) {
                    return Err(reporter.error(
                        &member_path,
                        format!("model '{member}' is listed twice in group '{group_id}'"),
                    ));
                }
                if let Some(other) = member_of.get(member) {
                    return Err(reporter.error(
                        &member_path,
                        format!("model '{member}' is already a member of group '{other}'"),
                    ));
                }
                member_of.insert(member.clone(), group_id.to_string());
            }
            groups.push(GroupConfig {
                id: group_id.to_string(),
                swap: fields.bool("swap", reporter)?.unwrap_or(true),
                exclusive: fields.bool("exclusive", reporter)?.unwrap_or(true),
                persistent: fields.bool("persistent", reporter)?.unwrap_or(false),
                members,
            });
        }
    }
    let ungrouped: Vec<String> = models
        .keys()
        .filter(|id| !member_of.contains_key(*id))
        .cloned()
        .collect();
    if !ungrouped.is_empty() {
        groups.push(GroupConfig {
            id: DEFAULT_GROUP_ID.to_string(),
            swap: true,
            exclusive: true,
            persistent: false,
            members: ungrouped,
        });
    }
    Ok((groups, matrix))
}

/// Validates `routing.scheduler`; swapd's scheduler is first-in, first-out only.
fn check_scheduler(
    top: &Fields<'_>,
    resolve: &dyn Fn(&str) -> Option<String>,
    reporter: &mut Reporter<'_>,
) -> Result<(), ConfigError> {
    let Some(routing) = top.mapping("routing", reporter, "a mapping with router and scheduler")?
    else {
        return Ok(());
    };
    let routing_path = top.path("routing");
    let routing_fields = Fields::new(routing, &routing_path);
    let Some(scheduler) =
        routing_fields.mapping("scheduler", reporter, "a mapping with use and settings")?
    else {
        return Ok(());
    };
    let scheduler_path = routing_path.key("scheduler");
    schema::check_keys(scheduler, &scheduler_path, schema::SCHEDULER, reporter);
    let scheduler_fields = Fields::new(scheduler, &scheduler_path);
    match scheduler_fields.string("use", reporter)?.as_deref() {
        None | Some("") | Some("fifo") => {}
        Some(other) => {
            return Err(reporter.error(
                &scheduler_path.key("use"),
                format!("unknown scheduler '{other}' (valid: fifo)"),
            ))
        }
    }
    let Some(settings) = scheduler_fields.mapping("settings", reporter, "a mapping with fifo")?
    else {
        return Ok(());
    };
    let settings_path = scheduler_path.key("settings");
    schema::check_keys(
        settings,
        &settings_path,
        schema::SCHEDULER_SETTINGS,
        reporter,
    );
    let settings_fields = Fields::new(settings, &settings_path);
    let Some(fifo) = settings_fields.mapping("fifo", reporter, "a mapping with priority")? else {
        return Ok(());
    };
    let fifo_path = settings_path.key("fifo");
    schema::check_keys(fifo, &fifo_path, schema::FIFO, reporter);
    let fifo_fields = Fields::new(fifo, &fifo_path);
    let Some(priority) =
        fifo_fields.mapping("priority", reporter, "a mapping of model ids to numbers")?
    else {
        return Ok(());
    };
    let priority_path = fifo_path.key("priority");
    let priority_fields = Fields::new(priority, &priority_path);
    for key in priority.keys() {
        let name = key.as_str().unwrap_or_default();
        if resolve(name).is_none() {
            return Err(reporter.error(&priority_path.key(name), format!("unknown model '{name}'")));
        }
        priority_fields.int(name, reporter)?;
    }
    if !priority.is_empty() {
        reporter.warn(
            &priority_path,
            "swapd serves queued requests first in, first out; priorities are ignored",
        );
    }
    Ok(())
}

/// Reads `hooks.on_startup.preload`: trimmed, aliases resolved, unknown names dropped.
fn build_preload(
    top: &Fields<'_>,
    resolve: &dyn Fn(&str) -> Option<String>,
    reporter: &mut Reporter<'_>,
) -> Result<Vec<String>, ConfigError> {
    let Some(hooks) = top.mapping("hooks", reporter, "a mapping with on_startup")? else {
        return Ok(Vec::new());
    };
    let hooks_path = top.path("hooks");
    schema::check_keys(hooks, &hooks_path, schema::HOOKS, reporter);
    let hooks_fields = Fields::new(hooks, &hooks_path);
    let Some(on_startup) =
        hooks_fields.mapping("on_startup", reporter, "a mapping with preload")?
    else {
        return Ok(Vec::new());
    };
    let on_startup_path = hooks_path.key("on_startup");
    schema::check_keys(on_startup, &on_startup_path, schema::ON_STARTUP, reporter);
    let on_startup_fields = Fields::new(on_startup, &on_startup_path);
    let mut preload = Vec::new();
    for (index, name) in on_startup_fields
        .strings("preload", reporter)?
        .iter()
        .enumerate()
    {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        match resolve(name) {
            Some(id) => preload.push(id),
            None => reporter.warn(
                &on_startup_path.key("preload").index(index),
                format!("unknown model '{name}'; it is not preloaded"),
            ),
        }
    }
    Ok(preload)
}
