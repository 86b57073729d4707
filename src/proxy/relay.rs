//! The relay: one thread that moves the body bytes of every established stream from its
//! upstream socket to its client socket, so that a stream costs no thread wake-up per event.
//!
//! The HTTP server stays thread-per-connection: a connection thread sends the request, reads the
//! response head, sends the client its head, and only then hands the rest of a plain
//! pass-through stream (a 200 `text/event-stream` body, chunked to the client) to this thread,
//! with everything it needs to keep the per-stream bookkeeping as it goes: the upstream body's
//! socket, buffered bytes and decoder ([`crate::upstream::Lent`]), the client connection's
//! handle, the token-usage scanner and the in-flight entry's byte counter. The connection thread
//! then blocks on a channel until the relay reports how the stream ended ([`Relayed`]), and goes
//! on exactly as if it had moved the bytes itself (the ending, the lease, the activity row,
//! metrics, keep-alive are all still its own: see `forward::forward_to`). One wake-up per
//! stream instead of one per event: measured on a 2-core host, relaying an SSE event cost ~33 µs
//! of CPU through a connection thread, nearly all of it the kernel waking that thread.
//!
//! The relay thread waits in `epoll_wait` (edge-triggered) on every lent socket and on an
//! eventfd that announces new jobs. For each ready stream it reads what the upstream has
//! (non-blocking, decoded by the shared HTTP/1 codec through `Lent::chunk`), frames each piece
//! as one chunk into the stream's output buffer and writes that to the client. The output
//! buffer is bounded ([`MAX_PENDING`]): a client that reads slowly stops the relay reading its
//! upstream, exactly as a connection thread blocked in `write` did, and a client that stops
//! reading holds its stream for as long as it did then (no timeout applied to client writes,
//! then or now). A stream's upstream read timeout is kept in a min-heap, one deadline per
//! stream, checked lazily, so nothing here visits every stream: each event, job and deadline
//! costs O(1) or O(log N).
//!
//! What counts as the end is the same as on the thread path: the upstream body's end (all of
//! it written to the client before the report), a failed write to the client ("client left"),
//! or an upstream read error (a truncated body, the read timeout, a cancel shutting the
//! upstream socket down). The relay never writes the terminating chunk or an error event: the
//! connection thread does, with its own writer, after taking the body back.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::http::codec;
use crate::proxy::usage::UsageScanner;
use crate::upstream::Lent;

/// Output buffered for one client at most; past it the relay stops reading that stream's
/// upstream until the client has taken some (the thread path's blocking `write`, bounded).
pub const MAX_PENDING: usize = 64 * 1024;

/// The epoll token of the eventfd that announces new jobs.
const WAKE_TOKEN: u64 = u64::MAX;

/// How a relayed stream ended.
#[derive(Debug)]
pub enum End {
    /// The upstream body ended and everything was written to the client.
    Complete,
    /// A write to the client failed: it went away.
    ClientLeft,
    /// Reading the upstream failed: a truncated body, a cancel's shutdown, the read timeout
    /// (`WouldBlock`, as a blocking read with a timeout reports it), bad framing.
    Upstream(io::Error),
}

/// What the relay reports when a stream ends; the body's parts are given back to the caller.
pub struct Relayed {
    pub end: End,
    pub upstream: Option<Lent>,
    pub scanner: Option<UsageScanner>,
    /// Body bytes relayed (decoded, before chunk framing).
    pub bytes: u64,
    /// When the first body byte arrived from the upstream.
    pub first_byte: Option<Instant>,
}

/// One stream handed to the relay.
pub struct Handoff {
    pub upstream: Lent,
    /// The client's socket; the relay switches it to non-blocking mode and back before it
    /// reports.
    pub client: ClientEnd,
    pub scanner: Option<UsageScanner>,
    /// The in-flight entry's response byte counter.
    pub counter: Arc<AtomicU64>,
    /// How long the upstream may stay silent while the relay waits for it.
    pub read_timeout: Duration,
}

/// The client's socket as the relay holds it: the connection's own handle, which keeps the
/// socket open without a second descriptor (a burst of streams near the descriptor limit must
/// not need more than the thread path did), or a socket of its own (tests).
pub enum ClientEnd {
    Handle(tiny_http::ConnectionHandle),
    Socket(TcpStream),
}

impl ClientEnd {
    /// The handle of a TCP connection (`None` for a Unix socket).
    pub fn from_handle(handle: &tiny_http::ConnectionHandle) -> Option<ClientEnd> {
        handle.tcp_stream()?;
        Some(ClientEnd::Handle(handle.clone()))
    }

    fn stream(&self) -> &TcpStream {
        match self {
            ClientEnd::Handle(handle) => handle
                .tcp_stream()
                .expect("only TCP handles are made into a ClientEnd"),
            ClientEnd::Socket(socket) => socket,
        }
    }
}

/// A handoff with the channel its report goes back on.
struct Job {
    handoff: Handoff,
    done: Sender<Relayed>,
}

/// The handle connection threads use to hand streams over.
pub struct Relay {
    jobs: Sender<Job>,
    wake: Arc<OwnedFd>,
}

impl Relay {
    /// Starts a relay thread.
    pub fn start() -> io::Result<Relay> {
        // SAFETY: epoll_create1 and eventfd have no preconditions; each result is checked and
        // owned by an OwnedFd right away.
        let (epoll, wake) = unsafe {
            let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if epoll < 0 {
                return Err(io::Error::last_os_error());
            }
            let epoll = OwnedFd::from_raw_fd(epoll);
            let wake = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
            if wake < 0 {
                return Err(io::Error::last_os_error());
            }
            (epoll, Arc::new(OwnedFd::from_raw_fd(wake)))
        };
        control(
            &epoll,
            libc::EPOLL_CTL_ADD,
            wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            WAKE_TOKEN,
        )?;
        let (jobs, incoming) = crossbeam_channel::unbounded();
        let thread_wake = wake.clone();
        thread::Builder::new()
            .name("relay".to_string())
            .stack_size(256 * 1024)
            .spawn(move || Worker::new(epoll, thread_wake, incoming).run())?;
        Ok(Relay { jobs, wake })
    }

    /// The process's relay, started on first use; `None` if it could not be started (the
    /// connection threads then move the bytes themselves, as they always could). The scale
    /// benchmark turns it off with the test hook `SWAPD_BENCH_NO_RELAY=1` (builds with the
    /// `test-hooks` feature only) to compare both paths in one build.
    pub fn shared() -> Option<&'static Relay> {
        static RELAY: OnceLock<Option<Relay>> = OnceLock::new();
        RELAY
            .get_or_init(|| {
                if !super::hooks::Hooks::from_environment().stream_relay {
                    return None;
                }
                match Relay::start() {
                Ok(relay) => Some(relay),
                Err(error) => {
                    log::warn!("cannot start the stream relay thread ({error}); streams are relayed by their connection threads");
                    None
                }
                }
            })
            .as_ref()
    }

    /// Hands the stream to the relay thread and waits until it has ended. The handoff comes
    /// back untouched if the relay thread is gone (it panicked), so that the caller can move
    /// the stream itself rather than fail it.
    pub fn run(&self, handoff: Handoff) -> Result<Relayed, Box<Handoff>> {
        let (done, report) = crossbeam_channel::bounded(1);
        if let Err(refused) = self.jobs.send(Job { handoff, done }) {
            return Err(Box::new(refused.into_inner().handoff));
        }
        let one: u64 = 1;
        // An error means the counter is saturated: the relay is awake anyway.
        let _ = (&*fd_file(&self.wake)).write(&one.to_ne_bytes());
        Ok(report.recv().unwrap_or_else(|_| lost()))
    }
}

/// Moves the rest of `body` to the client on the relay thread and waits until it has ended:
/// the body's connection and decoder, and the scanner, are back in place when this returns.
/// `None` (nothing moved) when the relay cannot take the stream: no relay thread (or it is
/// gone), a client on a Unix socket, or the body's connection already closed.
pub fn relay_body(
    client: &super::ClientSocket,
    body: &mut crate::upstream::Body<'_>,
    scanner: &mut Option<UsageScanner>,
    tracked: &crate::activity::inflight::Entry,
    read_timeout: Duration,
) -> Option<Relayed> {
    let relay = Relay::shared()?;
    let client = ClientEnd::from_handle(client.socket.as_ref()?)?;
    let upstream = body.lend()?;
    let handoff = Handoff {
        upstream,
        client,
        scanner: scanner.take(),
        counter: tracked.byte_counter(),
        read_timeout,
    };
    let mut relayed = match relay.run(handoff) {
        Ok(relayed) => relayed,
        Err(handoff) => {
            body.restore(handoff.upstream);
            *scanner = handoff.scanner;
            return None;
        }
    };
    if let Some(upstream) = relayed.upstream.take() {
        body.restore(upstream);
    }
    *scanner = relayed.scanner.take();
    Some(relayed)
}

/// The report when the relay thread died with the stream (it panicked): the body's parts went
/// with it, so the stream is ended as an upstream failure and its upstream connection closed.
fn lost() -> Relayed {
    Relayed {
        end: End::Upstream(io::Error::other("the stream relay stopped")),
        upstream: None,
        scanner: None,
        bytes: 0,
        first_byte: None,
    }
}

/// A `File` view of a descriptor that does not own it (for `read`/`write` on the eventfd).
fn fd_file(fd: &OwnedFd) -> std::mem::ManuallyDrop<std::fs::File> {
    // SAFETY: the File is never dropped (ManuallyDrop), so the descriptor stays owned by `fd`,
    // which outlives the borrow.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd.as_raw_fd()) })
}

/// epoll_ctl on `fd` with `events` and `token`.
fn control(epoll: &OwnedFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: both descriptors are open (owned by the caller), and `event` is a valid
    // epoll_event for the duration of the call (EPOLL_CTL_DEL ignores it).
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One stream the relay thread is moving.
struct Stream {
    upstream: Lent,
    /// The upstream descriptor as registered (the socket is closed only when `upstream` is
    /// dropped or given back, after it was deregistered).
    upstream_fd: Option<RawFd>,
    client: ClientEnd,
    scanner: Option<UsageScanner>,
    counter: Arc<AtomicU64>,
    read_timeout: Duration,
    done: Sender<Relayed>,
    /// Framed output not yet written to the client, from `written` on.
    out: Vec<u8>,
    written: usize,
    bytes: u64,
    first_byte: Option<Instant>,
    /// How the stream ends once `out` has been written (the upstream side is finished).
    ending: Option<End>,
    /// Since when the relay has been waiting for the upstream with nothing left to write (the
    /// read timeout runs from here, like a blocking read's).
    waiting_since: Instant,
}

impl Stream {
    fn pending(&self) -> usize {
        self.out.len() - self.written
    }

    /// Moves what can be moved now: `Some` when the stream has ended.
    fn pump(&mut self, now: Instant) -> Option<End> {
        loop {
            let mut upstream_idle = false;
            while self.ending.is_none() && self.pending() < MAX_PENDING {
                match self.upstream.chunk() {
                    Ok([]) => self.ending = Some(End::Complete),
                    Ok(data) => {
                        let read = data.len();
                        if self.written == self.out.len() {
                            self.out.clear();
                            self.written = 0;
                        }
                        codec::encode_chunk(&mut self.out, data);
                        if let Some(scanner) = self.scanner.as_mut() {
                            scanner.feed(data);
                        }
                        self.upstream.consume(read);
                        self.counter.fetch_add(read as u64, Ordering::Relaxed);
                        self.bytes += read as u64;
                        self.first_byte.get_or_insert(now);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        upstream_idle = true;
                        break;
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => self.ending = Some(End::Upstream(error)),
                }
            }
            if self.flush().is_err() {
                return Some(End::ClientLeft);
            }
            if self.pending() > 0 {
                // The client's turn: its socket reports when it has room again.
                return None;
            }
            if let Some(end) = self.ending.take() {
                return Some(end);
            }
            if upstream_idle {
                self.waiting_since = now;
                return None;
            }
        }
    }

    /// Writes pending output until it is all written or the client's socket is full.
    fn flush(&mut self) -> io::Result<()> {
        while self.written < self.out.len() {
            match self.client.stream().write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(count) => self.written += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > MAX_PENDING * 2 {
            self.out.shrink_to(MAX_PENDING);
        }
        Ok(())
    }

    /// When the read timeout fires if the relay is still waiting for the upstream then.
    fn deadline(&self) -> Option<Instant> {
        self.waiting_since.checked_add(self.read_timeout)
    }

    fn waiting_for_upstream(&self) -> bool {
        self.ending.is_none() && self.pending() == 0
    }
}

/// The relay thread's state: every stream it moves, in a slab indexed by epoll token.
struct Worker {
    epoll: OwnedFd,
    wake: Arc<OwnedFd>,
    incoming: Receiver<Job>,
    streams: Vec<Option<Stream>>,
    free: Vec<usize>,
    /// (deadline, slot), checked when it comes up (lazily: a stream that moved data since just
    /// gets its next one).
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Per slot, the time of its entry in `deadlines` that counts (`None`: none). A slot has
    /// one entry, or two while a stream with a shorter timeout took it over; an entry whose
    /// time is not this one is stale and skipped. So the heap never holds more than about two
    /// entries per slot, however many streams came and went.
    queued: Vec<Option<Instant>>,
    /// Output buffers of ended streams, for the next ones (no allocation per stream).
    spare: Vec<Vec<u8>>,
}

/// Spare output buffers kept at most.
const SPARE_BUFFERS: usize = 64;

impl Worker {
    fn new(epoll: OwnedFd, wake: Arc<OwnedFd>, incoming: Receiver<Job>) -> Worker {
        Worker {
            epoll,
            wake,
            incoming,
            streams: Vec::new(),
            free: Vec::new(),
            deadlines: BinaryHeap::new(),
            queued: Vec::new(),
            spare: Vec::new(),
        }
    }

    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        loop {
            let timeout = self.next_timeout_ms();
            // SAFETY: `events` has room for its length; the kernel writes at most that many.
            let ready = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    timeout,
                )
            };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("the stream relay cannot wait for events: {error}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            let now = Instant::now();
            for event in events.iter().take(ready as usize) {
                let token = event.u64;
                if token == WAKE_TOKEN {
                    let mut counter = [0u8; 8];
                    let _ = (&*fd_file(&self.wake)).read(&mut counter);
                    while let Ok(job) = self.incoming.try_recv() {
                        self.add(job, now);
                    }
                } else {
                    let hangup = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
                    if event.events & hangup != 0 {
                        // Perhaps the client's socket (it shares the token): then the extra
                        // read this costs the upstream side finds nothing, harmlessly.
                        if let Some(stream) = self
                            .streams
                            .get_mut(token as usize)
                            .and_then(Option::as_mut)
                        {
                            stream.upstream.peer_closing();
                        }
                    }
                    self.pump(token as usize, now);
                }
            }
            self.expire(Instant::now());
        }
    }

    /// Milliseconds until the earliest deadline (rounded up), -1 for none.
    fn next_timeout_ms(&self) -> libc::c_int {
        match self.deadlines.peek() {
            None => -1,
            Some(Reverse((at, _))) => {
                let left = at.saturating_duration_since(Instant::now());
                let ms = left.as_nanos().div_ceil(1_000_000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        }
    }

    fn add(&mut self, job: Job, now: Instant) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.streams.push(None);
            self.queued.push(None);
            self.streams.len() - 1
        });
        let Job { handoff, done } = job;
        let upstream_fd = handoff.upstream.socket().map(AsRawFd::as_raw_fd);
        let mut stream = Stream {
            upstream: handoff.upstream,
            upstream_fd,
            client: handoff.client,
            scanner: handoff.scanner,
            counter: handoff.counter,
            read_timeout: handoff.read_timeout,
            done,
            out: self.spare.pop().unwrap_or_default(),
            written: 0,
            bytes: 0,
            first_byte: None,
            ending: None,
            waiting_since: now,
        };
        let edge = libc::EPOLLET as u32;
        let registered = stream.client.stream().set_nonblocking(true).and_then(|()| {
            control(
                &self.epoll,
                libc::EPOLL_CTL_ADD,
                stream.client.stream().as_raw_fd(),
                libc::EPOLLOUT as u32 | edge,
                slot as u64,
            )
        });
        let registered = registered.and_then(|()| match upstream_fd {
            Some(fd) => control(
                &self.epoll,
                libc::EPOLL_CTL_ADD,
                fd,
                (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | edge,
                slot as u64,
            ),
            None => Ok(()),
        });
        if let Err(error) = registered {
            // Not expected (a descriptor limit in the kernel): the stream ends as an upstream
            // failure rather than hanging.
            log::warn!("cannot relay a stream: {error}");
            stream.ending = Some(End::Upstream(error));
        }
        let deadline = stream.deadline();
        self.streams[slot] = Some(stream);
        if let Some(at) = deadline {
            self.queue(slot, at);
        }
        // The lent buffer may already hold body bytes.
        self.pump(slot, now);
    }

    fn pump(&mut self, slot: usize, now: Instant) {
        let Some(stream) = self.streams.get_mut(slot).and_then(Option::as_mut) else {
            // An event for a stream that already ended in this batch.
            return;
        };
        if let Some(end) = stream.pump(now) {
            self.finish(slot, end);
        }
    }

    /// Queues a look at `slot` at `at`, unless an earlier one is queued already.
    fn queue(&mut self, slot: usize, at: Instant) {
        if self.queued[slot].is_some_and(|queued| queued <= at) {
            return;
        }
        self.queued[slot] = Some(at);
        self.deadlines.push(Reverse((at, slot)));
    }

    /// Ends the streams whose upstream stayed silent past the read timeout.
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, slot))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if self.queued[slot] != Some(at) {
                // Superseded by an earlier entry for this slot.
                continue;
            }
            self.queued[slot] = None;
            let Some(stream) = self.streams.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let due = stream.deadline();
            if stream.waiting_for_upstream() && due.is_some_and(|due| due <= now) {
                // What a blocking read with SO_RCVTIMEO reports, so the message is the same.
                let timeout = io::Error::from_raw_os_error(libc::EAGAIN);
                self.finish(slot, End::Upstream(timeout));
                continue;
            }
            // Still moving (or the client's turn): look again one timeout from when the relay
            // last started waiting, or from now.
            let next = if stream.waiting_for_upstream() {
                due
            } else {
                now.checked_add(stream.read_timeout)
            };
            if let Some(next) = next {
                self.queue(slot, next.max(now));
            }
        }
        // Give back the heap's memory after a burst has drained.
        if self.deadlines.capacity() > 1024 && self.deadlines.len() < self.deadlines.capacity() / 4
        {
            self.deadlines.shrink_to(self.deadlines.len() * 2);
        }
    }

    /// Deregisters a stream, gives its client socket back in blocking mode and reports.
    fn finish(&mut self, slot: usize, end: End) {
        let Some(stream) = self.streams[slot].take() else {
            return;
        };
        self.free.push(slot);
        // Removing a descriptor that was never added fails harmlessly.
        let _ = control(
            &self.epoll,
            libc::EPOLL_CTL_DEL,
            stream.client.stream().as_raw_fd(),
            0,
            0,
        );
        if let Some(fd) = stream.upstream_fd {
            // The upstream socket may have been closed by the decoder at its end (until-close
            // bodies, truncation): then it already left the interest list with its last
            // descriptor, and this fails harmlessly.
            if stream.upstream.socket().is_some() {
                let _ = control(&self.epoll, libc::EPOLL_CTL_DEL, fd, 0, 0);
            }
        }
        let _ = stream.client.stream().set_nonblocking(false);
        drop(stream.client);
        if self.spare.len() < SPARE_BUFFERS && stream.out.capacity() <= MAX_PENDING * 2 {
            let mut out = stream.out;
            out.clear();
            self.spare.push(out);
        }
        let _ = stream.done.send(Relayed {
            end,
            upstream: Some(stream.upstream),
            scanner: stream.scanner,
            bytes: stream.bytes,
            first_byte: stream.first_byte,
        });
    }
}

#[cfg(test)]
mod tests;
