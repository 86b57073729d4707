//! The activity log: one row per finished model request, in llama-swap's `ActivityLogEntry`
//! shape, for `GET /api/metrics/activity`, `GET /api/metrics/stats` and the `activity` events
//! of `/api/events`.
//!
//! [`ActivityLog`] owns the rows: a ring of at most `metricsMaxInMemory` of them behind one
//! mutex, so memory stays bounded however long swapd runs. Adding a row is a constant amount
//! of work under the lock; queries copy references under the lock and do their sorting on a
//! snapshot. Live subscribers get each row with `try_send`, so a slow `/api/events` reader
//! never slows a request down. With `store` set, rows also go to an append-only file
//! ([`persist`]) and the newest ones are read back at start.
//!
//! The parameter parsing and selection are in [`query`], the histograms in [`stats`]; both are
//! pure and table-tested.

pub mod inflight;
pub mod persist;
pub mod query;
pub mod stats;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Value};

use crate::metrics::TokenUsage;

/// How many rows a live subscriber may have queued before further rows are dropped for it.
pub const SUBSCRIBER_DEPTH: usize = 256;

/// The longest `error_msg` kept, in characters (llama-swap's limit).
pub const MAX_ERROR_CHARS: usize = 500;

/// Token counts and speeds of a row; -1 means the upstream did not say (llama-swap's
/// convention, kept so its UI and scripts read swapd's rows unchanged).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tokens {
    pub cache: i64,
    pub draft: i64,
    pub draft_accepted: i64,
    pub input: i64,
    pub output: i64,
    pub prompt_per_second: f64,
    pub tokens_per_second: f64,
}

impl Tokens {
    pub fn unknown() -> Tokens {
        Tokens {
            cache: -1,
            draft: -1,
            draft_accepted: -1,
            input: -1,
            output: -1,
            prompt_per_second: -1.0,
            tokens_per_second: -1.0,
        }
    }

    /// The row's numbers from what the usage scanner found (llama.cpp `timings` and vLLM
    /// `metrics` already applied there).
    pub fn from_usage(usage: &TokenUsage) -> Tokens {
        let count = |value: Option<u64>| value.map_or(-1, |v| i64::try_from(v).unwrap_or(-1));
        let rate = |value: Option<f64>| value.filter(|v| v.is_finite()).unwrap_or(-1.0);
        Tokens {
            cache: count(usage.cached),
            draft: count(usage.draft),
            draft_accepted: count(usage.draft_accepted),
            input: count(usage.input),
            output: count(usage.output),
            prompt_per_second: rate(usage.prompt_per_second),
            tokens_per_second: rate(usage.tokens_per_second),
        }
    }
}

/// One finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityRow {
    pub id: u64,
    pub unix_millis: u64,
    /// Model, path and content type are shared between rows (see [`ActivityLog::intern`]).
    pub model: Arc<str>,
    pub req_path: Arc<str>,
    pub content_type: Arc<str>,
    pub status: u16,
    pub tokens: Tokens,
    pub duration_ms: u64,
    pub error_msg: Option<Box<str>>,
}

impl ActivityRow {
    /// llama-swap's `ActivityLogEntry` JSON.
    pub fn to_json(&self) -> Value {
        let mut row = json!({
            "id": self.id,
            "timestamp": crate::timefmt::rfc3339_millis(self.unix_millis),
            "model": &*self.model,
            "req_path": &*self.req_path,
            "resp_content_type": &*self.content_type,
            "resp_status_code": self.status,
            "tokens": {
                "cache_tokens": self.tokens.cache,
                "draft_tokens": self.tokens.draft,
                "draft_acc_tokens": self.tokens.draft_accepted,
                "input_tokens": self.tokens.input,
                "output_tokens": self.tokens.output,
                "prompt_per_second": self.tokens.prompt_per_second,
                "tokens_per_second": self.tokens.tokens_per_second,
            },
            "duration_ms": self.duration_ms,
            "has_capture": false,
        });
        if let Some(message) = &self.error_msg {
            row["error_msg"] = json!(&**message);
        }
        row
    }
}

/// What the proxy knows about a finished request.
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    pub model: &'a str,
    pub path: &'a str,
    pub content_type: &'a str,
    pub status: u16,
    pub duration_ms: u64,
    pub usage: TokenUsage,
    /// The start of the response body for non-200 answers, or swapd's own error message.
    pub error: Option<ErrorSource<'a>>,
}

/// Where a row's `error_msg` comes from.
#[derive(Debug, Clone)]
pub enum ErrorSource<'a> {
    /// The first bytes of an upstream's error body.
    Body(&'a [u8]),
    /// swapd's own message (a failed start, a timeout, a cancel).
    Message(&'a str),
}

/// The error message of a non-200 answer, as llama-swap derives it: `error.message`, `error`
/// (a string), `message` or `detail` from a JSON body, else `"<status> <reason>"`; at most
/// [`MAX_ERROR_CHARS`] characters.
pub fn error_message(status: u16, body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let text = |value: &Value| value.as_str().map(str::to_string);
        v.get("error")
            .and_then(|e| e.get("message").and_then(text).or_else(|| text(e)))
            .or_else(|| v.get("message").and_then(text))
            .or_else(|| v.get("detail").and_then(text))
    });
    let message = from_json.unwrap_or_else(|| match crate::http::reason_phrase(status) {
        // The phrase for codes the table does not know is a placeholder, not a reason.
        "Status" => status.to_string(),
        reason => format!("{status} {reason}"),
    });
    truncate_chars(&message, MAX_ERROR_CHARS)
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_string(),
        None => text.to_string(),
    }
}

/// A row's duration as llama-swap derives it: the wall time, or llama.cpp's own
/// `prompt_ms + predicted_ms` when that is longer.
pub fn duration_ms(wall_ms: u64, usage: &TokenUsage) -> u64 {
    let upstream = usage
        .upstream_millis
        .filter(|ms| ms.is_finite() && *ms > 0.0)
        .map_or(0, |ms| ms.ceil() as u64);
    wall_ms.max(upstream)
}

/// Distinct names shared between rows; beyond this many each row gets its own copy (request
/// paths under `/upstream/` are unbounded).
const MAX_NAMES: usize = 256;

/// The rows and their ids, guarded by one mutex.
struct Rows {
    rows: VecDeque<ActivityRow>,
    next_id: u64,
    names: HashSet<Arc<str>>,
}

/// The bounded activity log; share it as `Arc<ActivityLog>`.
pub struct ActivityLog {
    max_rows: usize,
    inner: Mutex<Rows>,
    subscribers: Mutex<Vec<Sender<Arc<ActivityRow>>>>,
    has_subscribers: AtomicBool,
    store: Option<persist::Store>,
}

impl ActivityLog {
    /// An empty log keeping the `max_rows` newest rows (none with 0).
    pub fn new(max_rows: usize) -> ActivityLog {
        ActivityLog {
            max_rows,
            inner: Mutex::new(Rows {
                rows: VecDeque::with_capacity(max_rows.min(1024)),
                next_id: 1,
                names: HashSet::new(),
            }),
            subscribers: Mutex::new(Vec::new()),
            has_subscribers: AtomicBool::new(false),
            store: None,
        }
    }

    /// A log that also appends every row to `store`, starting with the newest rows found there
    /// (ids continue after the highest one read).
    pub fn with_store(max_rows: usize, store: persist::Store, previous: Vec<ActivityRow>) -> Self {
        let mut log = ActivityLog::new(max_rows);
        {
            let inner = log.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
            let skip = previous.len().saturating_sub(max_rows);
            for mut row in previous.into_iter().skip(skip) {
                inner.next_id = inner.next_id.max(row.id + 1);
                row.model = intern(&mut inner.names, &row.model);
                row.req_path = intern(&mut inner.names, &row.req_path);
                row.content_type = intern(&mut inner.names, &row.content_type);
                inner.rows.push_back(row);
            }
        }
        log.store = Some(store);
        log
    }

    fn lock(&self) -> MutexGuard<'_, Rows> {
        // Rows are whole values pushed and popped; a panicking holder cannot leave half a row.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a finished request and returns its id.
    pub fn record(&self, finished: Finished<'_>) -> u64 {
        let error_msg = match finished.error {
            Some(ErrorSource::Message(message)) => {
                Some(truncate_chars(message, MAX_ERROR_CHARS).into_boxed_str())
            }
            Some(ErrorSource::Body(body)) => {
                Some(error_message(finished.status, body).into_boxed_str())
            }
            None if finished.status != 200 => {
                Some(error_message(finished.status, b"").into_boxed_str())
            }
            None => None,
        };
        let unix_millis = crate::timefmt::unix_millis_now();
        let wants_row = self.has_subscribers.load(Ordering::Relaxed) || self.store.is_some();
        let (id, copy) = {
            let mut inner = self.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            let row = ActivityRow {
                id,
                unix_millis,
                model: intern(&mut inner.names, finished.model),
                req_path: intern(&mut inner.names, finished.path),
                content_type: intern(&mut inner.names, finished.content_type),
                status: finished.status,
                tokens: Tokens::from_usage(&finished.usage),
                duration_ms: duration_ms(finished.duration_ms, &finished.usage),
                error_msg,
            };
            let copy = wants_row.then(|| Arc::new(row.clone()));
            if self.max_rows > 0 {
                if inner.rows.len() >= self.max_rows {
                    inner.rows.pop_front();
                }
                inner.rows.push_back(row);
            }
            (id, copy)
        };
        if let Some(row) = copy {
            if let Some(store) = &self.store {
                store.append(&row);
            }
            self.publish(row);
        }
        id
    }

    /// A copy of the rows, oldest first (cheap: names are shared).
    pub fn snapshot(&self) -> Vec<ActivityRow> {
        self.lock().rows.iter().cloned().collect()
    }

    /// The `/api/metrics/activity` answer for `query`.
    pub fn page_json(&self, query: &query::ActivityQuery) -> Value {
        let rows = self.snapshot();
        let page = query::select(query, &rows);
        json!({
            "data": page.rows.iter().map(|row| row.to_json()).collect::<Vec<_>>(),
            "page": page.page,
            "limit": page.limit,
            "total": page.total,
            "total_pages": page.total_pages,
        })
    }

    /// The `/api/metrics/stats` answer.
    pub fn stats_json(&self, model: Option<&str>) -> Value {
        stats::stats(&self.snapshot(), model)
    }

    /// Subscribes to new rows; dropping the receiver unsubscribes. A subscriber that falls
    /// [`SUBSCRIBER_DEPTH`] rows behind misses the rows that do not fit.
    pub fn subscribe(&self) -> Receiver<Arc<ActivityRow>> {
        let (tx, rx) = crossbeam_channel::bounded(SUBSCRIBER_DEPTH);
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.push(tx);
        self.has_subscribers.store(true, Ordering::Relaxed);
        rx
    }

    fn publish(&self, row: Arc<ActivityRow>) {
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if subscribers.is_empty() {
            return;
        }
        subscribers.retain(|tx| match tx.try_send(row.clone()) {
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        });
        self.has_subscribers
            .store(!subscribers.is_empty(), Ordering::Relaxed);
    }
}

/// The byte budget of the activity file before it is rotated: room for roughly ten times the
/// rows kept in memory (a row is about 400 bytes), at least 1 MiB.
fn store_budget(max_rows: usize) -> u64 {
    (max_rows as u64 * 4000).max(1 << 20)
}

/// The daemon's activity log: in memory only, or also in the file at `store` (whose newest
/// rows are read back). A file that cannot be opened is reported and activity stays in
/// memory, so a bad path never keeps swapd from serving.
pub fn open(max_rows: usize, store: Option<&std::path::Path>) -> ActivityLog {
    let Some(path) = store else {
        return ActivityLog::new(max_rows);
    };
    let previous = persist::Store::load(path);
    match persist::Store::open(path, store_budget(max_rows)) {
        Ok(file) => {
            log::info!(
                "activity is kept in {} ({} earlier rows read)",
                path.display(),
                previous.len()
            );
            ActivityLog::with_store(max_rows, file, previous)
        }
        Err(error) => {
            log::warn!(
                "could not open the activity store {}: {error}; activity is kept in memory only",
                path.display()
            );
            ActivityLog::new(max_rows)
        }
    }
}

fn intern(names: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(existing) = names.get(name) {
        return existing.clone();
    }
    let shared: Arc<str> = Arc::from(name);
    if names.len() < MAX_NAMES {
        names.insert(shared.clone());
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(model: &str, status: u16) -> Finished<'_> {
        Finished {
            model,
            path: "/v1/chat/completions",
            content_type: "application/json",
            status,
            duration_ms: 12,
            usage: TokenUsage::default(),
            error: None,
        }
    }

    #[test]
    fn keeps_at_most_max_rows_and_ids_keep_counting() {
        let log = ActivityLog::new(3);
        for _ in 0..5 {
            log.record(finished("m", 200));
        }
        let ids: Vec<u64> = log.snapshot().iter().map(|r| r.id).collect();
        assert_eq!(ids, [3, 4, 5]);
        let none = ActivityLog::new(0);
        assert_eq!(none.record(finished("m", 200)), 1);
        assert!(none.snapshot().is_empty());
    }

    #[test]
    fn row_json_has_llama_swaps_shape() {
        let log = ActivityLog::new(10);
        let usage = TokenUsage {
            input: Some(25),
            output: Some(7),
            cached: Some(3),
            prompt_per_second: Some(1923.0),
            tokens_per_second: Some(294.1),
            ..TokenUsage::default()
        };
        log.record(Finished {
            usage,
            ..finished("m", 200)
        });
        let row = log.snapshot()[0].to_json();
        assert_eq!(row["id"], 1);
        assert_eq!(row["model"], "m");
        assert_eq!(row["req_path"], "/v1/chat/completions");
        assert_eq!(row["resp_content_type"], "application/json");
        assert_eq!(row["resp_status_code"], 200);
        assert_eq!(row["duration_ms"], 12);
        assert_eq!(row["has_capture"], false);
        assert!(row.get("error_msg").is_none());
        let tokens = &row["tokens"];
        assert_eq!(tokens["input_tokens"], 25);
        assert_eq!(tokens["output_tokens"], 7);
        assert_eq!(tokens["cache_tokens"], 3);
        assert_eq!(tokens["draft_tokens"], -1);
        assert_eq!(tokens["draft_acc_tokens"], -1);
        assert_eq!(tokens["prompt_per_second"], 1923.0);
        assert_eq!(tokens["tokens_per_second"], 294.1);
        let stamp = row["timestamp"].as_str().expect("a string");
        assert!(query::parse_rfc3339_millis(stamp).is_some(), "{stamp}");
    }

    #[test]
    fn duration_is_the_longer_of_wall_and_upstream_time() {
        let timed = |millis| TokenUsage {
            upstream_millis: millis,
            ..TokenUsage::default()
        };
        assert_eq!(duration_ms(12, &timed(None)), 12);
        assert_eq!(duration_ms(12, &timed(Some(30.2))), 31);
        assert_eq!(duration_ms(50, &timed(Some(30.0))), 50);
        assert_eq!(duration_ms(5, &timed(Some(f64::NAN))), 5);
    }

    #[test]
    fn error_messages_follow_llama_swap() {
        let cases: [(u16, &[u8], &str); 7] = [
            (500, br#"{"error":{"message":"boom","code":500}}"#, "boom"),
            (400, br#"{"error":"bad thing"}"#, "bad thing"),
            (422, br#"{"message":"nope"}"#, "nope"),
            (422, br#"{"detail":"field x"}"#, "field x"),
            (503, b"not json", "503 Service Unavailable"),
            (404, b"", "404 Not Found"),
            (599, b"", "599"),
        ];
        for (status, body, expected) in cases {
            assert_eq!(error_message(status, body), expected);
        }
        let long = format!(r#"{{"error":"{}"}}"#, "é".repeat(600));
        assert_eq!(error_message(500, long.as_bytes()).chars().count(), 500);
    }

    #[test]
    fn non_200_rows_carry_an_error() {
        let log = ActivityLog::new(10);
        log.record(Finished {
            error: Some(ErrorSource::Body(br#"{"error":{"message":"simulated"}}"#)),
            ..finished("m", 500)
        });
        log.record(Finished {
            error: Some(ErrorSource::Message("model failed to start")),
            ..finished("m", 503)
        });
        log.record(finished("m", 502));
        let messages: Vec<Option<Box<str>>> =
            log.snapshot().into_iter().map(|r| r.error_msg).collect();
        assert_eq!(
            messages,
            [
                Some("simulated".into()),
                Some("model failed to start".into()),
                Some("502 Bad Gateway".into())
            ]
        );
    }

    #[test]
    fn subscribers_get_rows_and_slow_ones_do_not_block() {
        let log = ActivityLog::new(10);
        let rx = log.subscribe();
        for _ in 0..SUBSCRIBER_DEPTH + 5 {
            log.record(finished("m", 200));
        }
        assert_eq!(rx.len(), SUBSCRIBER_DEPTH);
        assert_eq!(rx.recv().expect("a row").id, 1);
        drop(rx);
        log.record(finished("m", 200));
        assert!(!log.has_subscribers.load(Ordering::Relaxed));
    }
}
