//! The recent-request log behind `GET /api/metrics`: the rows kept (bounded, with ids that never
//! repeat and names shared between rows), their JSON shape, and the live subscribers every new
//! row is pushed to (for the `/api/events` stream).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::Value;

use super::{RequestRecord, TokenUsage};

/// The default number of recent requests kept for `/api/metrics` (llama-swap's
/// `metricsMaxInMemory` default).
pub const DEFAULT_MAX_ROWS: usize = 1000;

/// How many rows a live subscriber may have queued before further rows are dropped for it.
pub const SUBSCRIBER_DEPTH: usize = 256;

/// Distinct model ids and paths kept for sharing; `/upstream/...` paths are unbounded, and
/// beyond this many each row gets its own copy.
const MAX_NAMES: usize = 256;

/// The rows kept, oldest first; guarded by the store's mutex together with the counters.
pub(super) struct RecentRows {
    rows: VecDeque<Row>,
    next_id: u64,
    /// Model ids and paths seen in rows, each stored once (at most `MAX_NAMES`).
    names: HashSet<Arc<str>>,
}

impl RecentRows {
    pub(super) fn new(max_rows: usize) -> RecentRows {
        RecentRows {
            rows: VecDeque::with_capacity(max_rows.min(DEFAULT_MAX_ROWS)),
            next_id: 1,
            names: HashSet::new(),
        }
    }

    /// Appends the row of a finished request, discarding the oldest beyond `max_rows`, and
    /// returns its id and, when `copy` is set, a copy of the row for live subscribers.
    pub(super) fn push(
        &mut self,
        max_rows: usize,
        unix_millis: u64,
        record: &RequestRecord<'_>,
        copy: bool,
    ) -> (u64, Option<Row>) {
        let id = self.next_id;
        self.next_id += 1;
        let row = Row {
            id,
            unix_millis,
            model: intern(&mut self.names, record.model),
            path: intern(&mut self.names, record.path),
            status: record.status,
            usage: record.usage,
            duration_ms: u64::try_from(record.duration.as_millis()).unwrap_or(u64::MAX),
        };
        let copy = copy.then(|| row.clone());
        if max_rows > 0 {
            if self.rows.len() >= max_rows {
                self.rows.pop_front();
            }
            self.rows.push_back(row);
        }
        (id, copy)
    }

    /// A copy of the rows kept, oldest first (cheap: the names are shared).
    pub(super) fn snapshot(&self) -> Vec<Row> {
        self.rows.iter().cloned().collect()
    }
}

/// The shared copy of `name`.
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

/// One entry of the recent-request log.
#[derive(Debug, Clone)]
pub(super) struct Row {
    id: u64,
    unix_millis: u64,
    /// Shared with every other row for the same model or path (see `RecentRows::names`): a
    /// row makes no allocation of its own, so the rows kept do not pin scattered heap pages.
    model: Arc<str>,
    path: Arc<str>,
    status: u16,
    usage: TokenUsage,
    duration_ms: u64,
}

impl Row {
    /// The JSON shape served by `/api/metrics`; unknown numbers are -1 as in llama-swap.
    pub(super) fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "timestamp": crate::timefmt::rfc3339_millis(self.unix_millis),
            "model": &*self.model,
            "path": &*self.path,
            "status": self.status,
            "input_tokens": count_or_unknown(self.usage.input),
            "output_tokens": count_or_unknown(self.usage.output),
            "cached_tokens": count_or_unknown(self.usage.cached),
            "prompt_per_second": rate_or_unknown(self.usage.prompt_per_second),
            "tokens_per_second": rate_or_unknown(self.usage.tokens_per_second),
            "duration_ms": self.duration_ms,
        })
    }
}

fn count_or_unknown(value: Option<u64>) -> Value {
    value.map_or(Value::from(-1), Value::from)
}

fn rate_or_unknown(value: Option<f64>) -> Value {
    match value {
        Some(rate) if rate.is_finite() => Value::from(rate),
        _ => Value::from(-1),
    }
}

/// The live listeners for new rows, each with a bounded queue.
pub(super) struct RowSubscribers {
    senders: Mutex<Vec<Sender<Value>>>,
    /// Lets `record_request` skip building JSON when nobody listens, without taking a lock.
    any: AtomicBool,
}

impl RowSubscribers {
    pub(super) fn new() -> RowSubscribers {
        RowSubscribers {
            senders: Mutex::new(Vec::new()),
            any: AtomicBool::new(false),
        }
    }

    /// Whether anyone listened when last looked (a hint: a new subscriber may miss one row).
    pub(super) fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// A new listener whose queue holds [`SUBSCRIBER_DEPTH`] rows.
    pub(super) fn subscribe(&self) -> Receiver<Value> {
        let (tx, rx) = crossbeam_channel::bounded(SUBSCRIBER_DEPTH);
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        senders.push(tx);
        self.any.store(true, Ordering::Relaxed);
        rx
    }

    /// Sends `event` to every listener with room for it, and forgets the listeners that left.
    pub(super) fn publish(&self, event: Value) {
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        senders.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        });
        self.any.store(!senders.is_empty(), Ordering::Relaxed);
    }
}
