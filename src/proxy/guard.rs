//! The connection guard: closes client connections that sit idle or trickle a request for
//! longer than `headerTimeout`, without ever touching a connection whose request is in progress.
//!
//! tiny_http has no timeouts. A socket read timeout (SO_RCVTIMEO) would also fire on the
//! connection thread that waits for the *next* request while a long request is still being
//! answered, which shuts the read side and silently breaks keep-alive for every request longer
//! than the timeout; and a per-read timeout does not stop a client that sends one byte at a
//! time. So handlers mark their peer active, and one thread scans our sockets twice a second
//! and shuts down those that have been inactive too long.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Per peer: requests in progress, and when the last one ended.
#[derive(Default)]
struct PeerState {
    active: usize,
    /// Of the active requests, those still receiving their body.
    reading: usize,
    last_end: Option<Instant>,
}

pub struct ConnectionGuard {
    peers: Mutex<HashMap<SocketAddr, PeerState>>,
    open_connections: AtomicUsize,
    stopped: AtomicBool,
}

/// Marks a peer active for as long as it lives.
pub struct ActiveRequest<'a> {
    guard: &'a ConnectionGuard,
    peer: Option<SocketAddr>,
}

impl Drop for ActiveRequest<'_> {
    fn drop(&mut self) {
        self.guard.update(self.peer, |state| {
            state.active = state.active.saturating_sub(1);
            state.last_end = Some(Instant::now());
        });
    }
}

/// Marks a request as receiving its body for as long as it lives: a client that stops sending
/// its body for `headerTimeout` is cut like an idle one.
pub struct ReadingBody<'a> {
    guard: &'a ConnectionGuard,
    peer: Option<SocketAddr>,
}

impl Drop for ReadingBody<'_> {
    fn drop(&mut self) {
        self.guard.update(self.peer, |state| {
            state.reading = state.reading.saturating_sub(1)
        });
    }
}

impl ConnectionGuard {
    /// Changes the state of `peer` (nothing for a request without a peer address).
    fn update(&self, peer: Option<SocketAddr>, change: impl FnOnce(&mut PeerState)) {
        if let Some(peer) = peer {
            change(
                self.peers
                    .lock()
                    .expect("guard lock is never poisoned")
                    .entry(peer)
                    .or_default(),
            );
        }
    }

    /// Marks a request from `peer` as receiving its body until the returned value is dropped.
    pub fn reading_body(&self, peer: Option<SocketAddr>) -> ReadingBody<'_> {
        self.update(peer, |state| state.reading += 1);
        ReadingBody { guard: self, peer }
    }

    pub fn new() -> ConnectionGuard {
        ConnectionGuard {
            peers: Mutex::new(HashMap::new()),
            open_connections: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// Marks a request from `peer` as in progress until the returned value is dropped.
    pub fn begin(&self, peer: Option<SocketAddr>) -> ActiveRequest<'_> {
        self.update(peer, |state| state.active += 1);
        ActiveRequest { guard: self, peer }
    }

    /// Client connections seen at the last scan.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Starts the scanning thread for connections accepted on `local`.
    pub fn start(self: &Arc<Self>, local: SocketAddr, timeout: Duration) {
        let guard = self.clone();
        let spawned = thread::Builder::new()
            .name("conn-guard".to_string())
            .stack_size(128 * 1024)
            .spawn(move || {
                let mut first_seen: HashMap<(RawFd, SocketAddr), Instant> = HashMap::new();
                while !guard.stopped.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(500));
                    guard.scan(local, timeout, &mut first_seen);
                }
            });
        if let Err(error) = spawned {
            log::error!("cannot start the connection guard: {error}");
        }
    }

    fn scan(
        &self,
        local: SocketAddr,
        timeout: Duration,
        first_seen: &mut HashMap<(RawFd, SocketAddr), Instant>,
    ) {
        let now = Instant::now();
        let sockets = crate::http::client_sockets(local);
        // tiny_http keeps two descriptors per connection (read and write halves).
        let mut distinct: Vec<SocketAddr> = sockets.iter().map(|(_, peer)| *peer).collect();
        distinct.sort();
        distinct.dedup();
        self.open_connections
            .store(distinct.len(), Ordering::Relaxed);
        first_seen.retain(|key, _| sockets.contains(key));
        let mut peers = self.peers.lock().expect("guard lock is never poisoned");
        peers.retain(|peer, state| state.active > 0 || distinct.contains(peer));
        for &(fd, peer) in &sockets {
            let seen = *first_seen.entry((fd, peer)).or_insert(now);
            let state = peers.get(&peer);
            if let Some(state) = state.filter(|s| s.active > 0) {
                // Busy connections are left alone, except one whose request is still waiting
                // for a body the client stopped sending.
                let stalled = state.reading == state.active
                    && last_receive_age(fd).is_some_and(|age| age >= timeout);
                if stalled {
                    log::debug!("closing connection from {peer}: request body stalled");
                    crate::http::shutdown_socket(fd);
                }
                continue;
            }
            let idle_since = state
                .and_then(|s| s.last_end)
                .map_or(seen, |end| end.max(seen));
            let idle = now.saturating_duration_since(idle_since);
            if idle < timeout {
                continue;
            }
            // A request may be parsed and queued but not yet picked up by a handler; such a
            // connection has just received data, so require silence too, unless it has been
            // dawdling for twice the timeout (a client trickling its request).
            let quiet = last_receive_age(fd).is_none_or(|age| age >= Duration::from_secs(1));
            if quiet || idle >= timeout * 2 {
                log::debug!("closing connection from {peer}: inactive for {idle:?}");
                crate::http::shutdown_socket(fd);
            }
        }
    }
}

impl Default for ConnectionGuard {
    fn default() -> Self {
        ConnectionGuard::new()
    }
}

/// How long ago the kernel last received data on this socket.
fn last_receive_age(fd: RawFd) -> Option<Duration> {
    crate::http::tcp_info(fd).map(|info| Duration::from_millis(u64::from(info.tcpi_last_data_recv)))
}
