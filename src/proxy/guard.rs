//! The connection guard: closes client connections that sit idle, trickle a request head or
//! stall a request body for longer than `headerTimeout`, without ever touching a connection
//! whose request is being answered.
//!
//! tiny_http has no timeouts, and a socket read timeout (SO_RCVTIMEO) is not the one needed:
//! it bounds each read, so a client that sends its request head or body one byte at a time
//! never trips it, while the limit here is on the whole head, the whole idle gap and each
//! stall of a body. (Stock tiny_http gave the read timeout a second flaw: its connection thread
//! read the *next* request while a long one was still being answered elsewhere, so the timeout
//! fired mid-answer and broke keep-alive. The vendored tiny_http runs the handler on the
//! connection's own thread and reads the next request only after it returns, so that reason is
//! gone; the trickling one is not.)
//!
//! So every connection is registered here when its thread starts, with the
//! `tiny_http::ConnectionHandle` the vendored crate gives it (which keeps the socket open and
//! lets the guard shut it down directly, with no search for its descriptor); handlers mark
//! requests in progress and bodies being read; and one thread (`conn-guard`) keeps one
//! deadline per connection in a min-heap and sleeps until the earliest one is due. Nothing
//! here ever visits all connections: registering and each deadline cost O(log N) under the
//! guard's lock, marking a request touches only its own connection's state (attached to the
//! connection's handle with `attach`, so no lookup either), and a connection has at most one
//! deadline queued (a later one is queued only when the earlier one has fired). What to do
//! when a deadline comes up is the pure function `verdict`, table-tested below.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Deadlines this close together are handled in one wake-up, so that a burst of connections
/// opened together costs one wake-up, not one each.
const SLACK: Duration = Duration::from_millis(10);

/// A connection that received data this recently is probably finishing a request head that a
/// handler is about to pick up, so an idle deadline is put off, up to twice the timeout.
const RECENT_DATA: Duration = Duration::from_secs(1);

pub struct ConnectionGuard {
    timers: Mutex<Timers>,
    /// Woken when a deadline earlier than every queued one is added, or on `stop`.
    wake: Condvar,
    open_connections: AtomicUsize,
}

/// What the guard thread works from, under one lock.
struct Timers {
    /// (deadline, connection id); ids of closed connections are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    connections: HashMap<u64, Open>,
    timeout: Duration,
    stopped: bool,
}

/// One open connection, as the guard thread sees it.
struct Open {
    socket: tiny_http::ConnectionHandle,
    tracked: Arc<Tracked>,
}

/// One open connection's state. It is also attached to the connection's handle, so that a
/// handler reaches it from the request without a lookup; it holds no handle itself (that
/// would keep the socket open for good).
struct Tracked {
    id: u64,
    state: Mutex<State>,
}

struct State {
    /// Requests in progress (tiny_http hands a connection's requests over one at a time).
    active: usize,
    /// Of the active requests, those still receiving their body.
    reading: usize,
    /// The active request declared a body that nobody has read yet. A handler that answers
    /// without reading it (an error, a 503 for `maxConnections`) makes tiny_http drain the body
    /// before the answer goes out, and a client that stalls it must be cut like one that
    /// stalls a body being read.
    body_owed: bool,
    /// When the connection was opened or its last request ended.
    idle_since: Instant,
    /// Whether the heap holds a deadline for this connection.
    queued: bool,
}

/// What the guard decides when a connection's deadline comes up.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Shut the connection down.
    Cut(&'static str),
    /// Look again at this time.
    Recheck(Instant),
    /// Nothing to do until a request ends (it will queue a deadline).
    Wait,
}

/// The decision for one connection, as a pure function of its state, the time and how long
/// ago the kernel last received data on it (`None`: unknown).
fn verdict(
    active: usize,
    reading: usize,
    idle_since: Instant,
    now: Instant,
    last_receive: Option<Duration>,
    timeout: Duration,
) -> Verdict {
    if active > 0 {
        // A request being answered is left alone, unless every request in progress is waiting
        // for a body the client stopped sending.
        if reading < active {
            return Verdict::Wait;
        }
        return match last_receive {
            Some(age) if age < timeout => Verdict::Recheck(now + (timeout - age)),
            _ => Verdict::Cut("request body stalled"),
        };
    }
    let due = idle_since + timeout;
    if now < due {
        return Verdict::Recheck(due);
    }
    // A request head may be complete but its handler not started yet; such a connection has
    // just received data, so it gets until twice the timeout (a client trickling its request).
    let hard = idle_since + timeout * 2;
    match last_receive {
        Some(age) if age < RECENT_DATA && now < hard => {
            Verdict::Recheck(hard.min(now + (RECENT_DATA - age)))
        }
        _ => Verdict::Cut("inactive"),
    }
}

/// A registered connection; dropping it (when the connection ends) unregisters it.
pub struct Registration {
    guard: Arc<ConnectionGuard>,
    tracked: Option<Arc<Tracked>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(tracked) = self.tracked.take() {
            self.guard.timers().connections.remove(&tracked.id);
            self.guard.open_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Registration {
    /// Marks a request on this connection as in progress until the returned value is dropped;
    /// `body_owed`: the request declared a body (it counts as being received until read).
    pub fn begin(&self, body_owed: bool) -> ActiveRequest {
        if let Some(tracked) = &self.tracked {
            let queue = {
                let mut state = tracked.state();
                state.active += 1;
                state.body_owed = body_owed;
                body_owed && !std::mem::replace(&mut state.queued, true)
            };
            if queue {
                self.guard.queue(tracked.id, Instant::now());
            }
        }
        ActiveRequest {
            guard: self.guard.clone(),
            tracked: self.tracked.clone(),
        }
    }
}

/// Marks a request active for as long as it lives.
pub struct ActiveRequest {
    guard: Arc<ConnectionGuard>,
    tracked: Option<Arc<Tracked>>,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        if let Some(tracked) = &self.tracked {
            let now = Instant::now();
            let queue = {
                let mut state = tracked.state();
                state.active = state.active.saturating_sub(1);
                state.body_owed = false;
                state.idle_since = now;
                !std::mem::replace(&mut state.queued, true)
            };
            if queue {
                self.guard.queue(tracked.id, now);
            }
        }
    }
}

/// Marks a request as receiving its body for as long as it lives: a client that stops sending
/// its body for `headerTimeout` is cut like an idle one.
pub struct ReadingBody {
    tracked: Option<Arc<Tracked>>,
}

impl Drop for ReadingBody {
    fn drop(&mut self) {
        if let Some(tracked) = &self.tracked {
            let mut state = tracked.state();
            state.reading = state.reading.saturating_sub(1);
            // The handler read the body (or gave up on it): nothing is owed any more.
            state.body_owed = false;
        }
    }
}

impl Tracked {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("connection state lock is never held across a panic")
    }
}

impl ConnectionGuard {
    pub fn new() -> ConnectionGuard {
        ConnectionGuard {
            timers: Mutex::new(Timers {
                deadlines: BinaryHeap::new(),
                connections: HashMap::new(),
                timeout: Duration::from_secs(10),
                stopped: false,
            }),
            wake: Condvar::new(),
            open_connections: AtomicUsize::new(0),
        }
    }

    fn timers(&self) -> MutexGuard<'_, Timers> {
        self.timers
            .lock()
            .expect("guard lock is never held across a panic")
    }

    /// Queues a look at connection `id` one timeout after `from`.
    fn queue(&self, id: u64, from: Instant) {
        let mut timers = self.timers();
        let at = from + timers.timeout;
        push(&mut timers, &self.wake, at, id);
    }

    /// Registers a connection whose thread just started; its first request is due within the
    /// timeout. Called on the connection's thread, never the accept thread.
    pub fn register(
        self: &Arc<Self>,
        socket: Option<&tiny_http::ConnectionHandle>,
    ) -> Registration {
        let Some(socket) = socket else {
            return Registration {
                guard: self.clone(),
                tracked: None,
            };
        };
        let now = Instant::now();
        let tracked = Arc::new(Tracked {
            id: socket.id(),
            state: Mutex::new(State {
                active: 0,
                reading: 0,
                body_owed: false,
                idle_since: now,
                queued: true,
            }),
        });
        socket.attach(tracked.clone());
        {
            let mut timers = self.timers();
            let open = Open {
                socket: socket.clone(),
                tracked: tracked.clone(),
            };
            timers.connections.insert(tracked.id, open);
            let at = now + timers.timeout;
            push(&mut timers, &self.wake, at, tracked.id);
        }
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        Registration {
            guard: self.clone(),
            tracked: Some(tracked),
        }
    }

    /// Marks the request on `socket`'s connection as receiving its body until the returned
    /// value is dropped.
    pub fn reading_body(&self, socket: Option<&tiny_http::ConnectionHandle>) -> ReadingBody {
        let tracked = socket.and_then(|socket| socket.attachment::<Tracked>());
        if let Some(tracked) = &tracked {
            let queue = {
                let mut state = tracked.state();
                state.reading += 1;
                !std::mem::replace(&mut state.queued, true)
            };
            if queue {
                self.queue(tracked.id, Instant::now());
            }
        }
        ReadingBody { tracked }
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// Ends the guard thread.
    pub fn stop(&self) {
        self.timers().stopped = true;
        self.wake.notify_all();
    }

    /// Starts the guard thread with `timeout` as the deadline for idle connections, request
    /// heads and stalled bodies.
    pub fn start(self: &Arc<Self>, timeout: Duration) {
        self.timers().timeout = timeout;
        let guard = self.clone();
        let spawned = thread::Builder::new()
            .name("conn-guard".to_string())
            .stack_size(128 * 1024)
            .spawn(move || guard.run());
        if let Err(error) = spawned {
            log::error!("cannot start the connection guard: {error}");
        }
    }

    /// Sleeps until the earliest deadline, handles every deadline then due, and so on.
    fn run(&self) {
        let mut timers = self.timers();
        loop {
            if timers.stopped {
                return;
            }
            let now = Instant::now();
            let next = timers.deadlines.peek().map(|Reverse((at, _))| *at);
            match next {
                None => {
                    timers = self
                        .wake
                        .wait(timers)
                        .expect("guard lock is never held across a panic");
                }
                Some(at) if at > now + SLACK => {
                    timers = self
                        .wake
                        .wait_timeout(timers, at - now)
                        .expect("guard lock is never held across a panic")
                        .0;
                }
                Some(_) => {
                    let Some(Reverse((_, id))) = timers.deadlines.pop() else {
                        continue;
                    };
                    self.expire(&mut timers, id, now + SLACK);
                    shrink(&mut timers.deadlines);
                }
            }
        }
    }

    /// Handles connection `id`'s deadline.
    fn expire(&self, timers: &mut Timers, id: u64, now: Instant) {
        // A closed connection unregistered itself; its stale deadline is simply dropped.
        let Some(open) = timers.connections.get(&id) else {
            return;
        };
        let (socket, tracked) = (open.socket.clone(), open.tracked.clone());
        let mut state = tracked.state();
        state.queued = false;
        let last_receive = last_receive_age(&socket);
        let decided = verdict(
            state.active,
            state.reading + usize::from(state.body_owed),
            state.idle_since,
            now,
            last_receive,
            timers.timeout,
        );
        match decided {
            Verdict::Cut(why) => {
                log::debug!("closing connection from {:?}: {why}", socket.peer_addr());
                // An error means the connection is already closed.
                let _ = socket.shutdown(Shutdown::Both);
            }
            Verdict::Recheck(at) => {
                state.queued = true;
                drop(state);
                push(timers, &self.wake, at, id);
            }
            Verdict::Wait => {}
        }
    }
}

/// Queues a deadline, waking the guard thread if it is now the earliest.
fn push(timers: &mut Timers, wake: &Condvar, at: Instant, id: u64) {
    let earliest = timers
        .deadlines
        .peek()
        .is_none_or(|Reverse((first, _))| at < *first);
    timers.deadlines.push(Reverse((at, id)));
    if earliest {
        wake.notify_one();
    }
}

/// Gives back the heap's memory after a burst of connections has drained.
fn shrink(deadlines: &mut BinaryHeap<Reverse<(Instant, u64)>>) {
    if deadlines.capacity() > 1024 && deadlines.len() < deadlines.capacity() / 4 {
        deadlines.shrink_to(deadlines.len() * 2);
    }
}

impl Default for ConnectionGuard {
    fn default() -> Self {
        ConnectionGuard::new()
    }
}

/// How long ago the kernel last received data on this socket.
fn last_receive_age(socket: &tiny_http::ConnectionHandle) -> Option<Duration> {
    crate::http::tcp_info(socket.as_raw_fd())
        .map(|info| Duration::from_millis(u64::from(info.tcpi_last_data_recv)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn idle_connections_are_cut_after_the_timeout_unless_data_just_arrived() {
        let t0 = Instant::now();
        // Before the deadline: look again at the deadline.
        assert_eq!(
            verdict(0, 0, t0, t0 + secs(1.0), Some(secs(1.0)), TIMEOUT),
            Verdict::Recheck(t0 + TIMEOUT)
        );
        // Silent since the last request: cut.
        assert_eq!(
            verdict(0, 0, t0, t0 + TIMEOUT, Some(secs(2.0)), TIMEOUT),
            Verdict::Cut("inactive")
        );
        assert_eq!(
            verdict(0, 0, t0, t0 + TIMEOUT, None, TIMEOUT),
            Verdict::Cut("inactive")
        );
        // Data 200 ms ago: a second later, at most.
        assert_eq!(
            verdict(0, 0, t0, t0 + TIMEOUT, Some(secs(0.2)), TIMEOUT),
            Verdict::Recheck(t0 + TIMEOUT + secs(0.8))
        );
        // A trickling client is cut at twice the timeout however recent its last byte.
        assert_eq!(
            verdict(0, 0, t0, t0 + TIMEOUT * 2, Some(secs(0.1)), TIMEOUT),
            Verdict::Cut("inactive")
        );
        assert_eq!(
            verdict(0, 0, t0, t0 + secs(3.9), Some(secs(0.1)), TIMEOUT),
            Verdict::Recheck(t0 + TIMEOUT * 2)
        );
    }

    #[test]
    fn requests_in_progress_are_left_alone_unless_their_body_stalls() {
        let t0 = Instant::now();
        let late = t0 + secs(100.0);
        assert_eq!(
            verdict(1, 0, t0, late, Some(secs(50.0)), TIMEOUT),
            Verdict::Wait
        );
        assert_eq!(
            verdict(1, 1, t0, late, Some(secs(2.5)), TIMEOUT),
            Verdict::Cut("request body stalled")
        );
        assert_eq!(
            verdict(1, 1, t0, late, Some(secs(0.5)), TIMEOUT),
            Verdict::Recheck(late + secs(1.5))
        );
    }
}
