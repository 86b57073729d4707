//! Requests in flight: what is being served right now, for the `inflight` events of
//! `/api/events`, and the handle that `POST /api/inflight/{id}/cancel` uses to cut one.
//!
//! Each admitted model request registers an [`Entry`] for as long as its handler runs; the
//! returned [`Tracked`] removes it on drop, so an entry cannot outlive its request whatever
//! way the handler ends. The per-request cost is one short mutex section to insert and one to
//! remove, plus a relaxed atomic add per forwarded chunk; nothing is published per request.
//! `/api/events` readers instead compare snapshots every 250 ms ([`diff`]), which bounds the
//! updates to four per second per request however fast bytes flow, and costs nothing when
//! nobody watches.
//!
//! Cancelling sets a flag that the handler checks while it waits for a model, and shuts down
//! the upstream connection once the forward has one (a duplicate of its socket is attached to
//! the entry), which ends the handler's blocking read at once.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::upstream::Outgoing;

/// Header names whose values are never shown (llama-swap's list).
const REDACTED: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// One request being served.
pub struct Entry {
    pub id: u64,
    unix_millis: u64,
    started: Instant,
    model: String,
    /// The request as it goes upstream, owned here for as long as it is served; its header
    /// lines are redacted on display.
    outgoing: Outgoing,
    remote: Option<SocketAddr>,
    /// Shared with the proxy's relay thread while it moves the response (see `byte_counter`).
    bytes: Arc<AtomicU64>,
    cancelled: AtomicBool,
    /// The upstream connection's socket (shared with the pool's connection) while the
    /// response is read.
    upstream: Mutex<Option<Arc<TcpStream>>>,
}

impl Entry {
    /// The request being served.
    pub fn outgoing(&self) -> &Outgoing {
        &self.outgoing
    }

    /// Counts response bytes sent to the client.
    pub fn add_bytes(&self, count: u64) {
        self.bytes.fetch_add(count, Ordering::Relaxed);
    }

    /// The response byte counter itself, for a thread that sends the response on this
    /// request's behalf (the proxy's relay) and counts as it goes.
    pub fn byte_counter(&self) -> Arc<AtomicU64> {
        self.bytes.clone()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Attaches the upstream connection's socket (shared with the pool's connection), so that a
    /// cancel can shut it down. A cancel that came first shuts it down right away.
    pub fn attach_upstream(&self, socket: Arc<TcpStream>) {
        let mut upstream = self.upstream.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_cancelled() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        *upstream = Some(socket);
    }

    /// Detaches the upstream connection (before it may go back to the pool for another
    /// request).
    pub fn detach_upstream(&self) {
        self.upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn cancel(&self) {
        let upstream = self.upstream.lock().unwrap_or_else(PoisonError::into_inner);
        self.cancelled.store(true, Ordering::Relaxed);
        if let Some(socket) = upstream.as_ref() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// The entry in llama-swap's in-flight shape.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "timestamp": crate::timefmt::rfc3339_millis(self.unix_millis),
            "model": self.model,
            "req_path": self.outgoing.path_and_query.split('?').next().unwrap_or_default(),
            "method": self.outgoing.method,
            "req_headers": redacted_headers(&self.outgoing.headers),
            "remote_ip": self.remote.map(|a| a.ip().to_string()).unwrap_or_default(),
            "resp_bytes": self.bytes(),
            "elapsed_ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// Header lines as a name → value object, with credentials replaced by `[REDACTED]`.
pub fn redacted_headers(lines: &[u8]) -> Value {
    let mut headers = Map::new();
    for line in String::from_utf8_lossy(lines).split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let value = if REDACTED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            "[REDACTED]"
        } else {
            value.trim()
        };
        headers.insert(name.to_string(), Value::from(value));
    }
    Value::Object(headers)
}

/// The registry of requests in flight; one per daemon.
#[derive(Default)]
pub struct Inflight {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// A registered request; dropping it removes the entry.
pub struct Tracked<'a> {
    registry: &'a Inflight,
    pub entry: Arc<Entry>,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.registry
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.entry.id);
    }
}

impl Inflight {
    pub fn new() -> Inflight {
        Inflight::default()
    }

    /// Registers a request; keep the result for as long as the request is served.
    pub fn begin(
        &self,
        model: &str,
        outgoing: Outgoing,
        remote: Option<SocketAddr>,
    ) -> Tracked<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            id,
            unix_millis: crate::timefmt::unix_millis_now(),
            started: Instant::now(),
            model: model.to_string(),
            outgoing,
            remote,
            bytes: Arc::new(AtomicU64::new(0)),
            cancelled: AtomicBool::new(false),
            upstream: Mutex::new(None),
        });
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, entry.clone());
        Tracked {
            registry: self,
            entry,
        }
    }

    /// Cancels the request `id`; `false` when no such request is in flight.
    pub fn cancel(&self, id: u64) -> bool {
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
        match entry {
            Some(entry) => {
                entry.cancel();
                true
            }
            None => false,
        }
    }

    /// The entries now, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Entry>> {
        let mut entries: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        entries.sort_by_key(|entry| entry.id);
        entries
    }
}

/// What changed between two looks at the registry: entries new or with more bytes (to
/// upsert) and ids gone (to remove). `seen` maps ids to the byte count last sent and is
/// updated in place.
pub fn diff(seen: &mut HashMap<u64, u64>, now: &[(u64, u64)]) -> (Vec<u64>, Vec<u64>) {
    let mut upserts = Vec::new();
    for &(id, bytes) in now {
        if seen.insert(id, bytes) != Some(bytes) {
            upserts.push(id);
        }
    }
    let mut removes: Vec<u64> = seen
        .keys()
        .copied()
        .filter(|id| !now.iter().any(|(current, _)| current == id))
        .collect();
    removes.sort_unstable();
    for id in &removes {
        seen.remove(id);
    }
    (upserts, removes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn outgoing(method: &str, path: &str) -> Outgoing {
        Outgoing {
            method: method.to_string(),
            path_and_query: path.to_string(),
            headers: b"Authorization: Bearer secret\r\n".to_vec(),
            body: Vec::new(),
            metered: true,
        }
    }

    #[test]
    fn entries_live_as_long_as_their_handle() {
        let registry = Inflight::new();
        let first = registry.begin("m", outgoing("POST", "/v1/chat/completions?x=1"), None);
        let second = registry.begin("n", outgoing("GET", "/props"), None);
        let ids: Vec<u64> = registry.snapshot().iter().map(|e| e.id).collect();
        assert_eq!(ids, [first.entry.id, second.entry.id]);
        let shown = registry.snapshot()[0].to_json();
        assert_eq!(shown["req_path"], "/v1/chat/completions");
        assert_eq!(shown["req_headers"]["Authorization"], "[REDACTED]");
        drop(first);
        assert_eq!(registry.snapshot().len(), 1);
        assert!(!registry.cancel(1));
        assert!(registry.cancel(second.entry.id));
        assert!(second.entry.is_cancelled());
    }

    #[test]
    fn headers_are_redacted() {
        let lines = b"Authorization: Bearer secret\r\nX-Api-Key: k\r\nCookie: a=b\r\nUser-Agent: curl/8\r\n";
        let headers = redacted_headers(lines);
        assert_eq!(headers["Authorization"], "[REDACTED]");
        assert_eq!(headers["X-Api-Key"], "[REDACTED]");
        assert_eq!(headers["Cookie"], "[REDACTED]");
        assert_eq!(headers["User-Agent"], "curl/8");
        assert!(!headers.to_string().contains("secret"));
    }

    #[test]
    fn diff_upserts_changes_and_removes_gone_entries() {
        let mut seen = HashMap::new();
        assert_eq!(diff(&mut seen, &[(1, 0), (2, 5)]), (vec![1, 2], vec![]));
        assert_eq!(diff(&mut seen, &[(1, 0), (2, 5)]), (vec![], vec![]));
        assert_eq!(diff(&mut seen, &[(2, 9), (3, 0)]), (vec![2, 3], vec![1]));
        assert_eq!(diff(&mut seen, &[]), (vec![], vec![2, 3]));
        assert!(seen.is_empty());
    }

    #[test]
    fn cancel_shuts_the_attached_upstream_down() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server_side, _) = listener.accept().expect("accept");
        let registry = Inflight::new();
        let tracked = registry.begin("m", outgoing("POST", "/v1/chat/completions"), None);
        tracked
            .entry
            .attach_upstream(Arc::new(client.try_clone().expect("dup")));
        assert!(registry.cancel(tracked.entry.id));
        // The peer sees the connection end.
        let mut buffer = [0u8; 8];
        assert_eq!(server_side.read(&mut buffer).expect("read"), 0);
        // Attaching after a cancel shuts down at once as well.
        let late = registry.begin("m", outgoing("POST", "/x"), None);
        registry.cancel(late.entry.id);
        let other = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut other_server, _) = listener.accept().expect("accept");
        late.entry
            .attach_upstream(Arc::new(other.try_clone().expect("dup")));
        assert_eq!(other_server.read(&mut buffer).expect("read"), 0);
    }
}
