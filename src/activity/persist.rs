//! The optional activity file (`store.path`): activity rows kept across restarts.
//!
//! llama-swap keeps them in sqlite; swapd uses an append-only file of JSON lines instead (no
//! database dependency). Each row is written with one `write` on a file opened with
//! `O_APPEND`, so a crash mid-write can leave at most one partial last line, which the reader
//! skips with a warning, like any other line that does not parse. When the file grows past
//! its byte budget it is renamed to `<path>.1` (replacing the previous one) and a new file is
//! started, so the two files together never hold much more than twice the budget.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use super::{ActivityRow, Tokens};

/// The file and its size so far.
struct Open {
    file: File,
    bytes: u64,
}

/// An append-only activity file with one rotation.
pub struct Store {
    path: PathBuf,
    max_bytes: u64,
    open: Mutex<Option<Open>>,
}

/// The rotated file's name.
fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

impl Store {
    /// Opens (or creates) the file at `path`; it is rotated once it passes `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Store> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let bytes = file.metadata()?.len();
        Ok(Store {
            path: path.to_path_buf(),
            max_bytes,
            open: Mutex::new(Some(Open { file, bytes })),
        })
    }

    /// Appends one row. Failures are logged, never returned: losing a row of history must not
    /// fail the request it describes.
    pub fn append(&self, row: &ActivityRow) {
        let mut line = to_line(row);
        line.push('\n');
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = open.as_ref() {
            if current.bytes > 0 && current.bytes + line.len() as u64 > self.max_bytes {
                *open = None;
                if let Err(error) = std::fs::rename(&self.path, rotated(&self.path)) {
                    log::warn!(
                        "could not rotate the activity file {}: {error}",
                        self.path.display()
                    );
                }
            }
        }
        if open.is_none() {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(file) => *open = Some(Open { file, bytes: 0 }),
                Err(error) => {
                    log::warn!(
                        "could not open the activity file {}: {error}",
                        self.path.display()
                    );
                    return;
                }
            }
        }
        let current = open.as_mut().expect("the file was opened just above");
        match current.file.write_all(line.as_bytes()) {
            Ok(()) => current.bytes += line.len() as u64,
            Err(error) => log::warn!(
                "could not append to the activity file {}: {error}",
                self.path.display()
            ),
        }
    }

    /// Reads the rows of the rotated file and then the current one, oldest first. Lines that
    /// do not parse (a torn last write, a damaged file) are skipped with one warning per file.
    pub fn load(path: &Path) -> Vec<ActivityRow> {
        let mut rows = Vec::new();
        for file_path in [rotated(path), path.to_path_buf()] {
            let Ok(file) = File::open(&file_path) else {
                continue;
            };
            let mut skipped = 0usize;
            for line in BufReader::new(file).split(b'\n') {
                let Ok(line) = line else {
                    break;
                };
                if line.is_empty() {
                    continue;
                }
                match from_line(&line) {
                    Some(row) => rows.push(row),
                    None => skipped += 1,
                }
            }
            if skipped > 0 {
                log::warn!(
                    "activity file {}: skipped {skipped} damaged line(s)",
                    file_path.display()
                );
            }
        }
        rows
    }
}

/// One row as a line of JSON: the API shape plus the exact time in milliseconds.
fn to_line(row: &ActivityRow) -> String {
    let mut value = row.to_json();
    value["unix_millis"] = Value::from(row.unix_millis);
    value.to_string()
}

fn from_line(line: &[u8]) -> Option<ActivityRow> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let tokens = value.get("tokens")?;
    let count = |key: &str| tokens.get(key).and_then(Value::as_i64).unwrap_or(-1);
    let rate = |key: &str| tokens.get(key).and_then(Value::as_f64).unwrap_or(-1.0);
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(Arc::<str>::from);
    Some(ActivityRow {
        id: value.get("id")?.as_u64()?,
        unix_millis: value.get("unix_millis")?.as_u64()?,
        model: text("model")?,
        req_path: text("req_path")?,
        content_type: text("resp_content_type").unwrap_or_else(|| Arc::from("")),
        status: u16::try_from(value.get("resp_status_code")?.as_u64()?).ok()?,
        tokens: Tokens {
            cache: count("cache_tokens"),
            draft: count("draft_tokens"),
            draft_accepted: count("draft_acc_tokens"),
            input: count("input_tokens"),
            output: count("output_tokens"),
            prompt_per_second: rate("prompt_per_second"),
            tokens_per_second: rate("tokens_per_second"),
        },
        duration_ms: value.get("duration_ms")?.as_u64()?,
        error_msg: value
            .get("error_msg")
            .and_then(Value::as_str)
            .map(Box::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::{ActivityLog, ErrorSource, Finished};
    use crate::metrics::TokenUsage;

    fn temp_path(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "swapd-persist-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("activity.jsonl")
    }

    fn finished(model: &str) -> Finished<'_> {
        Finished {
            model,
            path: "/v1/chat/completions",
            content_type: "text/event-stream",
            status: 500,
            duration_ms: 9,
            usage: TokenUsage {
                input: Some(4),
                tokens_per_second: Some(12.5),
                ..TokenUsage::default()
            },
            error: Some(ErrorSource::Message("boom")),
        }
    }

    #[test]
    fn rows_survive_a_restart_and_ids_continue() {
        let path = temp_path("restart");
        let log = ActivityLog::with_store(
            10,
            Store::open(&path, 1 << 20).expect("open"),
            Store::load(&path),
        );
        log.record(finished("a"));
        log.record(finished("b"));
        let before = log.snapshot();
        drop(log);
        let again = ActivityLog::with_store(
            10,
            Store::open(&path, 1 << 20).expect("open"),
            Store::load(&path),
        );
        assert_eq!(again.snapshot(), before);
        assert_eq!(again.record(finished("c")), 3);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let path = temp_path("torn");
        let store = Store::open(&path, 1 << 20).expect("open");
        let log = ActivityLog::with_store(10, store, Vec::new());
        log.record(finished("a"));
        log.record(finished("b"));
        drop(log);
        // A crash in the middle of the third write leaves half a line.
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(br#"{"id":3,"timestamp":"2026-"#)
            .expect("write");
        let rows = Store::load(&path);
        let models: Vec<&str> = rows.iter().map(|r| &*r.model).collect();
        assert_eq!(models, ["a", "b"]);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn the_file_is_rotated_and_stays_bounded() {
        let path = temp_path("rotate");
        let log =
            ActivityLog::with_store(1000, Store::open(&path, 2000).expect("open"), Vec::new());
        for _ in 0..100 {
            log.record(finished("a"));
        }
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(&path) <= 2000, "{}", size(&path));
        assert!(size(&rotated(&path)) <= 2000);
        assert!(size(&rotated(&path)) > 0);
        let rows = Store::load(&path);
        // The newest rows are kept, in order, up to the last one.
        assert_eq!(rows.last().map(|r| r.id), Some(100));
        assert!(rows.windows(2).all(|w| w[0].id + 1 == w[1].id));
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
