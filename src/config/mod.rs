//! Loading and validating llama-swap compatible `config.yaml` files.
//!
//! swapd is a drop-in replacement for llama-swap, so it reads the same file with the same
//! rules: `${env.X}` substitution, ordered macros, automatic `${PORT}` assignment, groups,
//! aliases and request filters. Everything is checked here, at load time, before anything is
//! started, and every problem names its file, line and key path. This is the only module that
//! knows about YAML; the rest of the daemon sees the typed [`Config`].
//!
//! Loading happens in four steps, as in llama-swap: (1) `${env.NAME}` is replaced in the raw
//! text (`env.rs`); (2) the YAML is decoded and macros are expanded over the tree (`macros.rs`);
//! (3) `${PORT}` is assigned in sorted model-id order; (4) typed settings are built with
//! defaults and validated (`typed.rs`).

mod access;
mod capabilities;
mod command;
mod current;
mod env;
mod error;
mod ignore_paths;
mod macros;
mod matrix;
pub mod matrix_solver;
mod memory;
mod peers;
mod scan;
mod schema;
mod selectors;
mod sources;
mod timeouts;
mod typed;

pub use peers::{fqn as peer_fqn, PeerConfig, PeerRoute, Peers, DEFAULT_PEER_CONNECT_TIMEOUT};

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

pub use access::{
    ends_with_ignore_case, split_authority, Access, HostPattern, HostRule, OriginPattern,
    OriginRule, PortPattern,
};
#[cfg(test)]
pub(crate) use access::{parse_host as access_parse_host, parse_origin as access_parse_origin};
pub use capabilities::Capabilities;
pub use command::split_command;
pub use current::Current;
pub use error::ConfigError;
pub use ignore_paths::IgnorePaths;
pub use timeouts::Timeouts;

/// The model `/comfyui/` serves (llama-swap's `config.ComfyUIModelID`).
pub const COMFYUI_MODEL_ID: &str = "comfyui_auto";
pub use matrix::{Expr as MatrixExpr, MatrixConfig, MatrixSet};
pub use memory::{human_bytes, size as parse_size, DeclaredFootprint, GpuBudget, MemoryConfig};
pub use selectors::{ProfileConfig, SelectorConfig, Strategy as SelectorStrategy};
pub use sources::{load_sources, parse_many, Sources};

/// The id of the implicit group that holds every model not listed in an explicit group.
pub const DEFAULT_GROUP_ID: &str = "(default)";

/// A successfully loaded configuration and the warnings found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    /// Non-fatal problems (unknown keys with a suggestion, ignored llama-swap features, unknown
    /// preload names), each formatted as `file:line:column: key.path: message`.
    pub warnings: Vec<String>,
}

/// How much the daemon logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The config spelling of the level.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Which logs are copied to the daemon's stdout (`logToStdout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogToStdout {
    /// Only swapd's own log.
    Proxy,
    /// Only the output of the upstream processes.
    Upstream,
    /// Both.
    Both,
    /// Nothing; logs are still kept for `/logs`.
    None,
}

impl LogToStdout {
    /// The config spelling of the setting.
    pub fn as_str(self) -> &'static str {
        match self {
            LogToStdout::Proxy => "proxy",
            LogToStdout::Upstream => "upstream",
            LogToStdout::Both => "both",
            LogToStdout::None => "none",
        }
    }
}

/// How swapd writes its own log lines to stdout (`swapd.logFormat`). `/logs` and the log
/// streams always keep the human form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `[INFO] message` lines, as llama-swap writes them.
    #[default]
    Text,
    /// One JSON object per line (time, level, target, message, model when known), for
    /// journald, Loki and other log shippers.
    Json,
}

/// The whole daemon configuration, fully resolved: defaults applied, macros expanded, ports
/// assigned and every cross reference checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Maximum wait for a model to become ready; at least 15 s (default 120 s).
    pub health_check_timeout: Duration,
    pub log_level: LogLevel,
    /// A Go time layout name (`rfc3339`, `kitchen`, ...), lowercase; `None` means no timestamps.
    pub log_time_format: Option<String>,
    pub log_to_stdout: LogToStdout,
    /// The form of swapd's own lines on stdout (`swapd.logFormat`).
    pub log_format: LogFormat,
    /// The first port handed out for `${PORT}` (default 5800).
    pub start_port: u16,
    /// Global default for streaming loading progress to clients of cold models.
    pub send_loading_state: bool,
    /// Whether `/v1/models` also lists aliases.
    pub include_aliases_in_list: bool,
    /// Default idle time before a model is unloaded; zero means never (default 0).
    pub global_ttl: Duration,
    /// Grace period between SIGTERM and SIGKILL for unloads (default 10 s).
    pub unload_timeout: Duration,
    /// Row cap of the in-memory request activity log (default 1000).
    pub metrics_max_in_memory: usize,
    /// `store.path`: the file activity rows are also appended to, kept across restarts.
    pub activity_store: Option<std::path::PathBuf>,
    /// When non-empty, every protected route requires one of these keys.
    pub api_keys: Vec<String>,
    /// Models by id, sorted.
    pub models: BTreeMap<String, ModelConfig>,
    /// Explicit groups in id order, then the implicit `(default)` group (swap and exclusive)
    /// holding every ungrouped model, if there is any.
    pub groups: Vec<GroupConfig>,
    /// The matrix router's sets (`routing.router.use: matrix` or the legacy `matrix:`); when
    /// set, it decides what runs together and `groups` is empty.
    pub matrix: Option<MatrixConfig>,
    /// Virtual model ids that pick a target per request (`selectors`), by id.
    pub selectors: BTreeMap<String, SelectorConfig>,
    /// Runtime-switchable model id rewrites (`profiles`), by name; none is active at start.
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// Model ids to load at startup, in order (`hooks.on_startup.preload`, aliases resolved).
    pub preload: Vec<String>,
    /// Alias to model id, including `filters.setParamsByID` keys.
    pub aliases: BTreeMap<String, String>,
    /// swapd's own settings (the `swapd:` section).
    pub limits: Limits,
    /// Who may use a keyless swapd (`swapd.allowedOrigins`, `swapd.allowedHosts`). Kept apart
    /// from `limits` because it changes on reload and holds lists.
    pub access: Access,
    /// Memory-aware scheduling (`swapd.memory`); `None` keeps llama-swap's behaviour.
    pub memory: Option<MemoryConfig>,
    /// Other OpenAI-compatible servers whose models swapd routes to (`peers`).
    pub peers: Peers,
    /// `upstream.ignorePaths`: `/upstream/` paths that never load a model.
    pub upstream_ignore_paths: IgnorePaths,
}

/// One upstream model server: how to start it and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub id: String,
    /// The argv to spawn (comments removed, lines joined, macros expanded, shell-split).
    pub cmd: Vec<String>,
    /// The argv as one shell-quoted line, for `/running` and `--check-config`.
    pub cmd_display: String,
    /// Command run instead of SIGTERM; may still contain `${PID}`, which the supervisor
    /// substitutes before splitting it with [`split_command`].
    pub cmd_stop: Option<String>,
    /// Base URL requests are forwarded to, without a trailing `/`.
    pub proxy: String,
    /// Other names for the model, including its `setParamsByID` keys.
    pub aliases: Vec<String>,
    /// Extra environment variables for the process, in config order.
    pub env: Vec<(String, String)>,
    /// Readiness probe path (default `/health`); `None` means ready as soon as spawned.
    pub check_endpoint: Option<String>,
    /// Idle time before unloading; zero means never.
    pub ttl: Duration,
    /// Grace period between SIGTERM and SIGKILL when unloading this model.
    pub unload_timeout: Duration,
    /// Hidden from `/v1/models` but still routable.
    pub unlisted: bool,
    /// Replaces the request's `model` field before forwarding.
    pub use_model_name: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Maximum admitted requests (queued, waiting or served) before clients get 429.
    pub concurrency_limit: usize,
    pub filters: Filters,
    /// Free-form data shown in `/v1/models`; `Null` when absent.
    pub metadata: serde_json::Value,
    /// What the model reads, writes and supports, for `/v1/models`; empty when not given.
    pub capabilities: Capabilities,
    /// `compat.ignoreWebsockets` (forced for `comfyui_auto`): a websocket upgrade never starts
    /// the model (409 when it is not ready) and does not count as a request in flight.
    pub ignore_websockets: bool,
    /// `timeouts.connect` and `timeouts.responseHeader`; unset ones use swapd's defaults (5 s
    /// to connect, `swapd.upstreamTimeout` for reads).
    pub timeouts: Timeouts,
    pub send_loading_state: bool,
    /// The port assigned for `${PORT}`, when the model's cmd uses it.
    pub port: Option<u16>,
}

/// Edits applied to JSON request bodies before they are forwarded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filters {
    /// Top-level keys to delete; sorted, de-duplicated, never `model`.
    pub strip_params: Vec<String>,
    /// Keys to set or overwrite; never `model`.
    pub set_params: serde_json::Map<String, serde_json::Value>,
    /// Keys to set, chosen by the model name the client requested; applied after `set_params`.
    pub set_params_by_id: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

impl Filters {
    /// Whether these filters change a JSON body requested as `requested`.
    pub fn change_body_for(&self, requested: &str) -> bool {
        !self.strip_params.is_empty()
            || !self.set_params.is_empty()
            || self.set_params_by_id.contains_key(requested)
    }
}

/// A set of models with shared swapping rules.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub id: String,
    /// Loading a member unloads the other running members.
    pub swap: bool,
    /// Loading a member unloads the models of other, non-persistent groups.
    pub exclusive: bool,
    /// Members are never unloaded by other groups' loads.
    pub persistent: bool,
    /// Model ids, in config order.
    pub members: Vec<String>,
}

/// swapd-only settings from the top-level `swapd:` section, which llama-swap ignores.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Bytes of log history kept per source (`logBufferBytes`).
    pub log_buffer_bytes: usize,
    /// Largest request body accepted (`maxBodyBytes`).
    pub max_body_bytes: usize,
    /// Deadline for a client to send its request headers (`headerTimeout`).
    pub header_timeout: Duration,
    /// Simultaneous client connections (`maxConnections`).
    pub max_connections: usize,
    /// Longest wait for upstream response headers or between body reads before a 504
    /// (`upstreamTimeout`).
    pub upstream_timeout: Duration,
    /// How long shutdown waits for in-flight requests (`shutdownTimeout`).
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            log_buffer_bytes: 100 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            upstream_timeout: Duration::from_secs(600),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for Config {
    /// The settings of an empty config file: every default, no models.
    fn default() -> Config {
        Config {
            health_check_timeout: Duration::from_secs(120),
            log_level: LogLevel::Info,
            log_time_format: None,
            log_to_stdout: LogToStdout::Proxy,
            log_format: LogFormat::Text,
            start_port: 5800,
            send_loading_state: false,
            include_aliases_in_list: false,
            global_ttl: Duration::ZERO,
            unload_timeout: Duration::from_secs(10),
            metrics_max_in_memory: 1000,
            activity_store: None,
            api_keys: Vec::new(),
            models: BTreeMap::new(),
            groups: Vec::new(),
            matrix: None,
            selectors: BTreeMap::new(),
            profiles: BTreeMap::new(),
            preload: Vec::new(),
            aliases: BTreeMap::new(),
            limits: Limits::default(),
            access: Access::default(),
            memory: None,
            peers: Peers::default(),
            upstream_ignore_paths: IgnorePaths::default(),
        }
    }
}

/// Reads and validates the config file at `path`, taking `${env.X}` from the process
/// environment.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        path: path.to_path_buf(),
        line: None,
        column: None,
        key: String::new(),
        message: format!("cannot read the config file: {error}"),
    })?;
    let environment =
        |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
    parse(&text, path, &environment)
}

/// Validates config `text` as if read from `path` (used in messages only), looking up
/// `${env.X}` with `env`.
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    sources::parse_many(&[(path.to_path_buf(), text.to_string())], env)
}

/// The deepest nesting a config may use. Real configs use fewer than ten levels; the limit
/// keeps a hostile or broken file from making the YAML parser work for seconds.
const MAX_NESTING: usize = 64;

/// Rejects flow collections (`[`, `{`) nested deeper than [`MAX_NESTING`] and lines indented
/// deeper than what that many block levels could need, before any parsing.
fn check_nesting(text: &str, path: &Path) -> Result<(), ConfigError> {
    let error = |line: usize, message: String| ConfigError {
        path: path.to_path_buf(),
        line: Some(line),
        column: None,
        key: String::new(),
        message,
    };
    let mut depth = 0usize;
    for (index, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent > MAX_NESTING * 16 {
            return Err(error(
                index + 1,
                format!("line is indented by {indent} spaces; nesting this deep is not supported"),
            ));
        }
        // Compact block sequences (`- - - x`) nest without indentation.
        let compact = line
            .trim_start()
            .split_inclusive(' ')
            .take_while(|token| token.trim() == "-")
            .count();
        if compact > MAX_NESTING {
            return Err(error(
                index + 1,
                format!("sequences nested deeper than {MAX_NESTING} levels are not supported"),
            ));
        }
        let mut quote: Option<char> = None;
        for character in line.chars() {
            match (quote, character) {
                (Some(open), c) if c == open => quote = None,
                (Some(_), _) => {}
                (None, '"') | (None, '\'') => quote = Some(character),
                (None, '#') => break,
                (None, '[') | (None, '{') => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(error(index + 1, format!("collections nested deeper than {MAX_NESTING} levels are not supported")));
                    }
                }
                (None, ']') | (None, '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// A YAML syntax error, positioned where serde_yaml found it.
fn syntax_error(path: &Path, error: &serde_yaml::Error) -> ConfigError {
    let location = error.location();
    let mut message = error.to_string();
    if let Some(location) = &location {
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        message = message.replacen(&suffix, "", 1);
    }
    ConfigError {
        path: path.to_path_buf(),
        line: location.as_ref().map(|location| location.line()),
        column: location.as_ref().map(|location| location.column()),
        key: String::new(),
        message: format!("invalid YAML: {message}"),
    }
}

impl Config {
    /// The model id that `name` refers to: a model id itself, or an alias.
    pub fn resolve_model(&self, name: &str) -> Option<&str> {
        if let Some((id, _)) = self.models.get_key_value(name) {
            return Some(id.as_str());
        }
        self.aliases.get(name).map(String::as_str)
    }

    /// The model that `name` (an id or alias) refers to.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.resolve_model(name).and_then(|id| self.models.get(id))
    }

    /// The group a model belongs to (every model belongs to exactly one).
    pub fn group_of(&self, model_id: &str) -> Option<&GroupConfig> {
        self.groups
            .iter()
            .find(|group| group.members.iter().any(|member| member == model_id))
    }

    /// A human-readable summary for `swapd --check-config`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let seconds = |duration: Duration| format!("{}s", duration.as_secs());
        let ttl = |duration: Duration| {
            if duration.is_zero() {
                "never".to_string()
            } else {
                seconds(duration)
            }
        };
        // Writing into a String cannot fail, so the results of writeln! are ignored.
        let _ = writeln!(
            out,
            "{} model(s), {} group(s), {} alias(es); ports from {}",
            self.models.len(),
            self.groups.len(),
            self.aliases.len(),
            self.start_port
        );
        let _ = writeln!(
            out,
            "healthCheckTimeout {}, globalTTL {}, unloadTimeout {}, logLevel {}, logToStdout {}, API keys {}",
            seconds(self.health_check_timeout),
            ttl(self.global_ttl),
            seconds(self.unload_timeout),
            self.log_level.as_str(),
            self.log_to_stdout.as_str(),
            if self.api_keys.is_empty() {
                "off".to_string()
            } else {
                format!("required ({})", self.api_keys.len())
            }
        );
        if !self.preload.is_empty() {
            let _ = writeln!(out, "preload: {}", self.preload.join(", "));
        }
        if let Some(memory) = &self.memory {
            let _ = writeln!(out, "{}", memory.summary());
        }
        if let Some(matrix) = &self.matrix {
            let names: Vec<&str> = matrix.sets.iter().map(|set| set.name.as_str()).collect();
            let _ = writeln!(out, "router: matrix, sets in order: {}", names.join(", "));
        }
        for selector in self.selectors.values() {
            let _ = writeln!(
                out,
                "selector {}: {} → {}",
                selector.id,
                selector.strategy.as_str(),
                selector.targets.join(", ")
            );
        }
        for profile in self.profiles.values() {
            let _ = writeln!(out, "profile {}: {} pin(s)", profile.id, profile.pins.len());
        }
        for peer in self.peers.peers.values() {
            let _ = writeln!(
                out,
                "peer {}: {} → {}",
                peer.id,
                peer.proxy,
                peer.models.join(", ")
            );
        }
        for model in self.models.values() {
            let _ = writeln!(out);
            let _ = writeln!(out, "model {}", model.id);
            let port = model
                .port
                .map_or_else(|| "-".to_string(), |port| port.to_string());
            let _ = writeln!(out, "  port:    {port}");
            let _ = writeln!(out, "  proxy:   {}", model.proxy);
            if !model.aliases.is_empty() {
                let _ = writeln!(out, "  aliases: {}", model.aliases.join(", "));
            }
            let _ = writeln!(out, "  ttl:     {}", ttl(model.ttl));
            if let Some(group) = self.group_of(&model.id) {
                let _ = writeln!(out, "  group:   {}", group.id);
            }
            let _ = writeln!(out, "  cmd:     {}", model.cmd_display);
        }
        out
    }
}
