//! The log topology: swapd's own log, the combined upstream log, one log per model, and what
//! reaches swapd's stdout (`logToStdout`), following llama-swap §5.
//!
//! `proxy` holds swapd's formatted log lines, `upstream` every child's raw output, `mux` what
//! `logToStdout` selects (its history is `GET /logs`). Each model has its own buffer so that
//! `/logs/stream/<model>` shows just that child.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, RwLock};

use crate::config::LogToStdout;
use crate::logbuf::LogBuffer;

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

    /// Writes a formatted swapd log line.
    pub fn write_proxy(&self, bytes: &[u8]) {
        self.proxy.write(bytes);
        if matches!(self.to_stdout, LogToStdout::Proxy | LogToStdout::Both) {
            self.mux.write(bytes);
            let _ = std::io::stdout().lock().write_all(bytes);
        }
    }

    /// Writes raw child output that was already stored in the model's own buffer.
    pub fn write_upstream(&self, bytes: &[u8]) {
        self.upstream.write(bytes);
        if matches!(self.to_stdout, LogToStdout::Upstream | LogToStdout::Both) {
            self.mux.write(bytes);
            let _ = std::io::stdout().lock().write_all(bytes);
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

/// A `log` backend writing llama-swap style lines `[time ][LEVEL] message` into [`Logs`].
pub struct ProxyLogger {
    pub logs: Arc<Logs>,
    pub level: log::LevelFilter,
    pub time_format: Option<String>,
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
        let line = match &self.time_format {
            Some(_) => format!("{} [{level}] {}\n", timestamp_rfc3339(), record.args()),
            None => format!("[{level}] {}\n", record.args()),
        };
        self.logs.write_proxy(line.as_bytes());
    }

    fn flush(&self) {}
}

/// The current UTC time as RFC 3339 with seconds (no time-zone database needed).
pub fn timestamp_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, seconds) = (now.div_euclid(86_400), now.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
