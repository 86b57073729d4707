//! The log topology: swapd's own log, the combined upstream log, one log per model, and what
//! reaches swapd's stdout (`logToStdout`), following llama-swap §5.
//!
//! `proxy` holds swapd's formatted log lines, `upstream` every child's raw output, `mux` what
//! `logToStdout` selects (its history is `GET /logs`). Each model has its own buffer so that
//! `/logs/stream/<model>` shows just that child.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use crate::config::{LogFormat, LogToStdout};
use crate::logbuf::LogBuffer;

mod stdout;

/// swapd's stdout: every line printed there goes through this one batcher, in order.
pub static STDOUT: stdout::BatchedStdout = stdout::BatchedStdout::new();

pub struct Logs {
    pub proxy: Arc<LogBuffer>,
    pub upstream: Arc<LogBuffer>,
    pub mux: Arc<LogBuffer>,
    models: RwLock<HashMap<String, Arc<LogBuffer>>>,
    to_stdout: LogToStdout,
    capacity: usize,
}

impl Logs {
    pub fn new(to_stdout: LogToStdout, capacity: usize) -> Logs {
        Logs {
            proxy: Arc::new(LogBuffer::new(capacity)),
            upstream: Arc::new(LogBuffer::new(capacity)),
            mux: Arc::new(LogBuffer::new(capacity)),
            models: RwLock::new(HashMap::new()),
            to_stdout,
            capacity,
        }
    }

    /// The buffer of one model, created on first use.
    pub fn model(&self, model_id: &str) -> Arc<LogBuffer> {
        if let Some(buffer) = self
            .models
            .read()
            .expect("the log registry lock is never held across a panic")
            .get(model_id)
        {
            return buffer.clone();
        }
        self.models
            .write()
            .expect("the log registry lock is never held across a panic")
            .entry(model_id.to_string())
            .or_insert_with(|| Arc::new(LogBuffer::new(self.capacity)))
            .clone()
    }

    /// The buffer of a model only if one exists already.
    pub fn existing_model(&self, model_id: &str) -> Option<Arc<LogBuffer>> {
        self.models
            .read()
            .expect("the log registry lock is never held across a panic")
            .get(model_id)
            .cloned()
    }

    /// Writes a formatted swapd log line. `stdout` is the form the terminal gets (with a
    /// timestamp), in pieces written back to back; `None` keeps the line out of stdout (it is
    /// shown another way).
    pub fn write_proxy(&self, bytes: &[u8], stdout: Option<&[&[u8]]>) {
        self.proxy.write(bytes);
        if matches!(self.to_stdout, LogToStdout::Proxy | LogToStdout::Both) {
            self.mux.write(bytes);
            if let Some(parts) = stdout {
                STDOUT.write(parts);
            }
        }
    }

    /// Writes one swapd log line in two forms: `human` into the buffers `/logs` serves, and
    /// `json` (one object and its newline) to stdout when `logToStdout` selects swapd's log.
    pub fn write_proxy_json(&self, human: &[u8], json: &[u8]) {
        self.proxy.write(human);
        if matches!(self.to_stdout, LogToStdout::Proxy | LogToStdout::Both) {
            self.mux.write(human);
            STDOUT.write(&[json]);
        }
    }

    /// Writes raw child output that was already stored in the model's own buffer.
    pub fn write_upstream(&self, bytes: &[u8]) {
        self.upstream.write(bytes);
        if matches!(self.to_stdout, LogToStdout::Upstream | LogToStdout::Both) {
            self.mux.write(bytes);
            STDOUT.write(&[bytes]);
        }
    }

    /// Ends every live log stream (daemon shutdown).
    pub fn close_all_subscribers(&self) {
        self.proxy.close_subscribers();
        self.upstream.close_subscribers();
        self.mux.close_subscribers();
        for buffer in self
            .models
            .read()
            .expect("the log registry lock is never held across a panic")
            .values()
        {
            buffer.close_subscribers();
        }
    }

    /// Bytes that slow subscribers missed, over every buffer.
    pub fn dropped_bytes_total(&self) -> u64 {
        let models: u64 = self
            .models
            .read()
            .expect("the log registry lock is never held across a panic")
            .values()
            .map(|b| b.dropped_bytes_total())
            .sum();
        models
            + self.proxy.dropped_bytes_total()
            + self.upstream.dropped_bytes_total()
            + self.mux.dropped_bytes_total()
    }
}

/// The `log` target of records kept in the logs (`/logs`) but not printed on stdout: the
/// startup line, which swapd prints on stderr in a form scripts read.
pub const NOT_ON_STDOUT: &str = "swapd::not_on_stdout";

/// A `log` backend writing llama-swap style lines `[time ][LEVEL] message` into [`Logs`].
/// On stdout every line starts with an RFC 3339 timestamp (see [`stdout_stamp`]); the
/// `/logs` history keeps llama-swap's form.
pub struct ProxyLogger {
    pub logs: Arc<Logs>,
    pub level: log::LevelFilter,
    pub time_format: Option<String>,
    /// `swapd.logFormat`: with `Json`, stdout gets [`json_log_line`]s instead.
    pub format: LogFormat,
}

impl log::Log for ProxyLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("swapd")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => "ERROR",
            log::Level::Warn => "WARN",
            log::Level::Info => "INFO",
            log::Level::Debug | log::Level::Trace => "DEBUG",
        };
        // One allocation of a size that fits an access log line (the `format!` grew it
        // several times).
        let mut line = String::with_capacity(192);
        let _ = match &self.time_format {
            Some(_) => writeln!(line, "{} [{level}] {}", timestamp_rfc3339(), record.args()),
            None => writeln!(line, "[{level}] {}", record.args()),
        };
        // The startup line goes to the terminal on stderr instead (see NOT_ON_STDOUT).
        let on_stdout = record.target() != NOT_ON_STDOUT;
        match self.format {
            LogFormat::Text => match (on_stdout, &self.time_format) {
                (false, _) => self.logs.write_proxy(line.as_bytes(), None),
                (true, Some(_)) => self
                    .logs
                    .write_proxy(line.as_bytes(), Some(&[line.as_bytes()])),
                (true, None) => {
                    let stamp = stdout_stamp();
                    self.logs
                        .write_proxy(line.as_bytes(), Some(&[stamp.as_bytes(), line.as_bytes()]));
                }
            },
            LogFormat::Json if !on_stdout => self.logs.write_proxy(line.as_bytes(), None),
            LogFormat::Json => {
                let model = record
                    .key_values()
                    .get(log::kv::Key::from_str("model"))
                    .map(|value| value.to_string());
                let json = json_log_line(
                    &timestamp_rfc3339_millis(std::time::SystemTime::now()),
                    level,
                    record.target(),
                    &record.args().to_string(),
                    model.as_deref(),
                );
                self.logs.write_proxy_json(line.as_bytes(), json.as_bytes());
            }
        }
    }

    fn flush(&self) {
        STDOUT.flush();
    }
}

/// The prefix of a swapd log line on stdout in the text format: the current UTC time in
/// RFC 3339, to the millisecond, then a space, e.g. `2026-12-06T03:57:41.123Z [INFO] ...`.
pub fn stdout_stamp() -> String {
    let mut stamp = timestamp_rfc3339_millis(std::time::SystemTime::now());
    stamp.push(' ');
    stamp
}

/// One log line for machines (`swapd.logFormat: json`): a JSON object with `time` (RFC 3339,
/// UTC, milliseconds), `level`, `target` (the Rust module, e.g. `swapd::supervisor`),
/// `message` and, when the line concerns one model, `model`; then a newline. serde_json
/// escapes whatever a message contains, so every line parses on its own.
pub fn json_log_line(
    time: &str,
    level: &str,
    target: &str,
    message: &str,
    model: Option<&str>,
) -> String {
    let mut object = serde_json::Map::new();
    object.insert("time".into(), time.into());
    object.insert("level".into(), level.to_ascii_lowercase().into());
    object.insert("target".into(), target.into());
    object.insert("message".into(), message.into());
    if let Some(model) = model {
        object.insert("model".into(), model.into());
    }
    let mut line = serde_json::Value::Object(object).to_string();
    line.push('\n');
    line
}

/// `time` as RFC 3339 in UTC with milliseconds, e.g. `2026-12-06T03:52:17.123Z`.
pub fn timestamp_rfc3339_millis(time: std::time::SystemTime) -> String {
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::timefmt::rfc3339(since_epoch, crate::timefmt::Fraction::Millis)
}

/// The current UTC time as RFC 3339 with seconds (no time-zone database needed).
pub fn timestamp_rfc3339() -> String {
    crate::timefmt::now_rfc3339(crate::timefmt::Fraction::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_one_object_each() {
        let line = json_log_line(
            "2026-12-06T03:52:17.123Z",
            "INFO",
            "swapd::supervisor",
            "starting \"a\"\nsecond line",
            Some("a"),
        );
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(
            value,
            serde_json::json!({
                "time": "2026-12-06T03:52:17.123Z",
                "level": "info",
                "target": "swapd::supervisor",
                "message": "starting \"a\"\nsecond line",
                "model": "a",
            })
        );
        let without: serde_json::Value =
            serde_json::from_str(&json_log_line("t", "WARN", "swapd", "m", None)).expect("JSON");
        assert!(without.get("model").is_none());
        assert_eq!(without["level"], "warn");
    }

    #[test]
    fn millisecond_timestamps() {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_529_137_045);
        assert_eq!(timestamp_rfc3339_millis(time), "2026-12-06T03:52:17.045Z");
        assert_eq!(
            timestamp_rfc3339_millis(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn stdout_lines_carry_an_rfc3339_timestamp() {
        let line = format!("{}[INFO] hello\n", stdout_stamp());
        let (stamp, rest) = line.split_once(' ').expect("a stamp and the line");
        assert_eq!(rest, "[INFO] hello\n");
        assert_eq!(stamp.len(), "2026-12-06T03:37:41.042Z".len(), "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
    }
}
