//! Wiring the daemon together: command line, logger, signals, supervisor, HTTP server, and the
//! shutdown order (stop accepting → let requests finish → stop every child → exit).
//!
//! This is the top of the module graph (ARCHITECTURE.md, "Dependencies"): it builds the config
//! cell, the supervisor, the HTTP front and the reload path, and plugs the Ollama API into the
//! front, so none of those needs to know the others above its own layer.

use std::fmt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::config::{self, LogLevel};
use crate::logs::{Logs, ProxyLogger};
use crate::metrics::Metrics;
use crate::proxy::{self, App};
use crate::reload::{self, Reloader};
use crate::supervisor::{self, ReloadRequest, Supervisor};
use crate::systemd;

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(Options),
    CheckConfig(config::Sources),
    Version,
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The config file; empty when only `--config-dir` is given.
    pub config: String,
    /// A directory of `*.yml`/`*.yaml` files merged after the file (`--config-dir`).
    pub config_dir: Option<String>,
    pub listen: String,
    pub watch_config: bool,
    pub log_level: Option<String>,
}

pub const USAGE: &str = "\
swapd: a model-swapping proxy for local LLM servers (llama-swap compatible)

usage: swapd --config FILE [--config-dir DIR] [--listen ADDR] [--watch-config] [--log-level LEVEL]
       swapd --check-config FILE | --check-config --config-dir DIR [--config FILE]
       swapd --version | --help

  --config FILE      llama-swap style config.yaml (also -config)
  --config-dir DIR   also load DIR/*.yml and *.yaml, sorted, merged after FILE (either or both)
  --listen ADDR      address to listen on, default 127.0.0.1:8080 (':8080' means all interfaces)
  --watch-config     reload when the config file changes (also SIGHUP)
  --log-level LEVEL  debug, info, warn or error (overrides logLevel)
  --check-config     validate FILE, print a summary, exit 0 if valid
  --version          print the version
";

/// Parses arguments in both the GNU (`--config x`, `--config=x`) and Go (`-config x`) forms.
pub fn parse_args(args: &[String]) -> Result<Action, String> {
    let mut config = None;
    let mut config_dir = None;
    let mut listen = None;
    let mut watch_config = false;
    let mut log_level = None;
    let mut check = false;
    let mut index = 0;
    while index < args.len() {
        let raw = &args[index];
        let trimmed = raw.trim_start_matches('-');
        if raw == trimmed {
            return Err(format!("unexpected argument '{raw}'"));
        }
        let (name, inline) = match trimmed.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (trimmed, None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            if let Some(value) = inline.clone() {
                return Ok(value);
            }
            index += 1;
            args.get(index)
                .cloned()
                .ok_or_else(|| format!("--{what} needs a value"))
        };
        match name {
            "config" => config = Some(value("config")?),
            "config-dir" => config_dir = Some(value("config-dir")?),
            "listen" => listen = Some(value("listen")?),
            "log-level" => log_level = Some(value("log-level")?),
            "watch-config" => watch_config = inline.as_deref() != Some("false"),
            "check-config" => {
                check = true;
                if let Some(value) = inline {
                    config = Some(value);
                } else if args
                    .get(index + 1)
                    .is_some_and(|next| !next.starts_with('-'))
                {
                    index += 1;
                    config = Some(args[index].clone());
                }
            }
            "version" => return Ok(Action::Version),
            "help" | "h" => return Ok(Action::Help),
            other => return Err(format!("unknown option '-{other}' (see --help)")),
        }
        index += 1;
    }
    if config.is_none() && config_dir.is_none() {
        return Err("--config FILE or --config-dir DIR is required (see --help)".to_string());
    }
    if check {
        return Ok(Action::CheckConfig(config::Sources {
            file: config.map(std::path::PathBuf::from),
            dir: config_dir.map(std::path::PathBuf::from),
        }));
    }
    let config = config.unwrap_or_default();
    let listen = listen.unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let listen = match listen.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => listen,
    };
    Ok(Action::Run(Options {
        config,
        config_dir,
        listen,
        watch_config,
        log_level,
    }))
}

impl Options {
    /// The config sources these options name.
    pub fn sources(&self) -> config::Sources {
        config::Sources {
            file: Some(std::path::PathBuf::from(&self.config)).filter(|_| !self.config.is_empty()),
            dir: self.config_dir.as_ref().map(std::path::PathBuf::from),
        }
    }
}

fn level_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Error => log::LevelFilter::Error,
    }
}

/// Why the daemon could not start (exit code 1); the message is what `swapd:` prints.
#[derive(Debug)]
pub enum RunError {
    /// systemd's socket-activation variables are inconsistent.
    Activation(String),
    /// The config failed to load.
    Config(config::ConfigError),
    /// `--log-level` names no level.
    LogLevel(String),
    /// The listening socket could not be bound.
    Listen {
        address: String,
        error: std::io::Error,
    },
    /// The listening socket could not be prepared (its address read or its handle shared).
    Socket {
        what: &'static str,
        error: std::io::Error,
    },
    /// The HTTP server did not start.
    Serve(std::io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Activation(message) => f.write_str(message),
            RunError::Config(error) => write!(f, "{error}"),
            RunError::LogLevel(level) => write!(
                f,
                "--log-level: unknown level '{level}' (debug, info, warn, error)"
            ),
            RunError::Listen { address, error } => write!(f, "cannot listen on {address}: {error}"),
            RunError::Socket { what, error } => write!(f, "cannot {what}: {error}"),
            RunError::Serve(error) => write!(f, "cannot start the HTTP server: {error}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Runs the daemon until SIGTERM or SIGINT. An error means exit code 1.
pub fn run(options: Options) -> Result<(), RunError> {
    // The systemd variables are read (and removed) before any thread exists, since removing
    // environment variables races with threads reading them.
    let (notifier, notify_problem) = systemd::Notifier::from_environment();
    let notifier = Arc::new(notifier);
    let activation = systemd::activated_listener().map_err(RunError::Activation)?;
    let signals = block_signals();
    let sources = options.sources();
    let loaded = config::load_sources(&sources).map_err(RunError::Config)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let config = Arc::new(loaded.config);
    let level = match options.log_level.as_deref() {
        Some("debug") => log::LevelFilter::Debug,
        Some("info") => log::LevelFilter::Info,
        Some("warn") => log::LevelFilter::Warn,
        Some("error") => log::LevelFilter::Error,
        Some(other) => return Err(RunError::LogLevel(other.to_string())),
        None => level_filter(config.log_level),
    };
    let logs = Arc::new(Logs::new(
        config.log_to_stdout,
        config.limits.log_buffer_bytes,
    ));
    let logger = ProxyLogger {
        logs: logs.clone(),
        level,
        time_format: config.log_time_format.clone(),
        format: config.log_format,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
    for warning in &loaded.warnings {
        log::warn!("config: {warning}");
    }
    raise_open_file_limit();
    limit_malloc_arenas();

    if let Some(problem) = notify_problem {
        log::warn!("systemd notifications are off: {problem}");
    }
    // With socket activation systemd holds the port (across restarts too) and passes the
    // listening socket; otherwise swapd binds its own.
    let activated = activation.is_some();
    let listener = match activation {
        Some(activation) => {
            if activation.passed > 1 {
                log::warn!(
                    "systemd passed {} sockets; swapd uses only the first",
                    activation.passed
                );
            }
            log::info!("using the listening socket passed by systemd; --listen is ignored");
            activation.listener
        }
        None => proxy::bind(&options.listen).map_err(|error| RunError::Listen {
            address: options.listen.clone(),
            error,
        })?,
    };
    let local_addr = listener.local_addr().map_err(|error| RunError::Socket {
        what: "read the listening address",
        error,
    })?;
    let listener_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let server_listener = listener.try_clone().map_err(|error| RunError::Socket {
        what: "share the listening socket",
        error,
    })?;
    let metrics = Arc::new(Metrics::new(config.metrics_max_in_memory));
    let (supervisor, supervisor_thread) = Supervisor::start_with_notifier(
        config.clone(),
        logs.clone(),
        metrics.clone(),
        notifier.clone(),
    );
    let (reload_tx, reload_rx) = crossbeam_channel::unbounded();
    // The one config cell: handlers read it, only the reload path replaces it.
    let current = Arc::new(config::Current::new(config.clone()));
    let app = Arc::new(App::new(
        current.clone(),
        supervisor.clone(),
        logs.clone(),
        metrics,
        local_addr,
        reload_tx.clone(),
        vec![ollama_api],
    ));
    spawn_memory_trimmer(app.clone());
    proxy::peers::spawn_checker(app.clone());
    let mut server = Some(proxy::serve(&app, server_listener).map_err(RunError::Serve)?);
    let front = app.clone();
    let reloader = Reloader {
        sources: sources.clone(),
        config: current,
        supervisor: supervisor.clone(),
        on_change: Box::new(move |old, new| front.config_changing(old, new)),
    };
    for warning in proxy::origin::exposure_warnings(&config, local_addr) {
        log::warn!("{warning}");
    }
    // The terminal gets one startup line, on stderr, in the form tests and scripts read to
    // learn the port when listening on port 0; the log history (`/logs`) gets its own copy.
    log::info!(
        target: crate::logs::NOT_ON_STDOUT,
        "swapd {} listening on http://{local_addr}",
        env!("CARGO_PKG_VERSION")
    );
    // Watched from before the address is announced: an edit made by whoever reads the line
    // below is always seen (the watcher's first look happens now).
    if options.watch_config {
        reload::watch(sources.clone(), Duration::from_secs(2), reload_tx.clone());
    }
    // Tests and scripts read this line to learn the port when listening on port 0.
    eprintln!("swapd: listening on http://{local_addr}");

    supervisor::preload(&supervisor, &config.preload);
    notifier.ready();

    // The main thread serves reloads one at a time until SIGTERM or SIGINT; systemd hears
    // RELOADING=1 … READY=1 around each.
    loop {
        crossbeam_channel::select! {
            recv(signals) -> signal => match signal {
                Ok(libc::SIGHUP) => {
                    log::info!("SIGHUP: reloading {}", sources.describe());
                    notifier.reloading();
                    reloader.serve(ReloadRequest { reply: None }, &reload_rx);
                    notifier.ready();
                }
                Ok(signal) => {
                    log::info!("received signal {signal}; shutting down");
                    break;
                }
                Err(_) => break,
            },
            recv(reload_rx) -> request => {
                if let Ok(request) = request {
                    notifier.reloading();
                    reloader.serve(request, &reload_rx);
                    notifier.ready();
                }
            }
        }
    }
    notifier.stopping();
    let config = app.config();

    let budget = config.limits.shutdown_timeout;
    let deadline = Instant::now() + budget;
    if activated {
        // Dropping the server ends its accept loop (it connects to itself to wake it) without
        // shutting down the socket systemd keeps for the next instance.
        server.take();
        proxy::stop_accepting(&app, None, deadline);
    } else {
        proxy::stop_accepting(&app, Some(listener_fd), deadline);
    }
    logs.close_all_subscribers();
    let remaining = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
    if !supervisor.shutdown(remaining) {
        log::error!("some children did not stop in time");
    }
    let _ = supervisor_thread.join();
    log::info!("swapd stopped");
    drop(server);
    drop(listener);
    Ok(())
}

/// The Ollama API as a [`proxy::Dialect`]: its routes are handled by [`crate::ollama`], the
/// others go back to the proxy's own routes.
fn ollama_api(
    app: &App,
    request: tiny_http::Request,
    method: &str,
    path: &str,
) -> Option<tiny_http::Request> {
    match crate::ollama::route(method, path) {
        Some(route) => {
            crate::ollama::handle(app, request, route);
            None
        }
        None => Some(request),
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in every thread (call before starting any) and turns
/// them into channel messages on a dedicated thread. Children get a clean signal mask: std's
/// `Command` resets it after fork.
fn block_signals() -> crossbeam_channel::Receiver<libc::c_int> {
    let (tx, rx) = crossbeam_channel::unbounded();
    // SAFETY: sigset operations on a local set, then pthread_sigmask for the calling thread
    // before any other thread exists, so every later thread inherits the mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    thread::Builder::new()
        .name("signals".to_string())
        .stack_size(64 * 1024)
        .spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: sigwait with a valid set and out-pointer; the signals are blocked.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 && tx.send(signal).is_err() {
                return;
            }
        })
        .expect("the signal thread must start for swapd to shut down cleanly");
    rx
}

/// Many concurrent clients each hold a socket; the default soft limit of 1024 descriptors
/// would make accept() fail, which ends tiny_http's accept thread for good.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// glibc gives every thread that allocates its own malloc arena (up to 8 per core), and each
/// arena keeps the memory its thread freed. With one thread per connection, a burst of
/// connections left RSS several MiB above idle for good. Two arenas are plenty on the small
/// hosts swapd is for.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tuning value (glibc serialises it internally).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Once swapd has been idle for a few seconds after serving requests (long enough for the
/// connection threads of a burst to have exited and handed their caches back), returns the
/// memory malloc keeps free to the system, so RSS goes back near its idle level.
fn spawn_memory_trimmer(app: Arc<App>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const CHECK_EVERY: Duration = Duration::from_secs(2);
        const IDLE_BEFORE_TRIM: Duration = Duration::from_secs(6);
        let spawned = thread::Builder::new()
            .name("mem-trim".to_string())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut served_since_trim = false;
                let mut idle_since: Option<Instant> = None;
                loop {
                    thread::sleep(CHECK_EVERY);
                    if app.is_shutting_down() {
                        return;
                    }
                    if app.active_requests() > 0 {
                        served_since_trim = true;
                        idle_since = None;
                        continue;
                    }
                    let idle = *idle_since.get_or_insert_with(Instant::now);
                    if served_since_trim && idle.elapsed() >= IDLE_BEFORE_TRIM {
                        // Upstream connections kept for a burst that is over go too.
                        app.upstream().close_idle(IDLE_BEFORE_TRIM);
                        // SAFETY: malloc_trim is thread-safe and only returns free pages.
                        unsafe {
                            libc::malloc_trim(0);
                        }
                        served_since_trim = false;
                    }
                }
            });
        if let Err(error) = spawned {
            log::warn!("cannot start the memory trimmer: {error}");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = app;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn both_flag_styles_parse() {
        let expected = Action::Run(Options {
            config: "c.yaml".into(),
            config_dir: None,
            listen: "127.0.0.1:9000".into(),
            watch_config: true,
            log_level: None,
        });
        assert_eq!(
            parse_args(&args(&[
                "--config",
                "c.yaml",
                "--listen",
                "127.0.0.1:9000",
                "--watch-config"
            ])),
            Ok(expected.clone())
        );
        assert_eq!(
            parse_args(&args(&[
                "-config",
                "c.yaml",
                "-listen=127.0.0.1:9000",
                "-watch-config"
            ])),
            Ok(expected)
        );
    }

    #[test]
    fn defaults_and_special_forms() {
        match parse_args(&args(&["-config", "c.yaml"])) {
            Ok(Action::Run(options)) => assert_eq!(options.listen, "127.0.0.1:8080"),
            other => panic!("unexpected {other:?}"),
        }
        match parse_args(&args(&["-config", "c.yaml", "-listen", ":8080"])) {
            Ok(Action::Run(options)) => assert_eq!(options.listen, "0.0.0.0:8080"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            parse_args(&args(&["--check-config", "c.yaml"])),
            Ok(Action::CheckConfig(config::Sources::file("c.yaml")))
        );
        assert_eq!(
            parse_args(&args(&["-check-config", "-config-dir", "conf.d"])),
            Ok(Action::CheckConfig(config::Sources {
                file: None,
                dir: Some("conf.d".into()),
            }))
        );
        match parse_args(&args(&["--config-dir=conf.d", "--config", "c.yaml"])) {
            Ok(Action::Run(options)) => assert_eq!(
                options.sources(),
                config::Sources {
                    file: Some("c.yaml".into()),
                    dir: Some("conf.d".into()),
                }
            ),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(parse_args(&args(&["-version"])), Ok(Action::Version));
        assert!(parse_args(&args(&[])).is_err());
        assert!(parse_args(&args(&["--bogus"])).is_err());
        assert!(parse_args(&args(&["--config"])).is_err());
    }
}
