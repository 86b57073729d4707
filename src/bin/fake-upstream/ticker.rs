//! fake-upstream's ticker: the one thread that writes the events of every plain timed SSE
//! stream, as llama-server generates every slot's next token in one decode loop rather than
//! one sleeping thread per request. Kept apart from the connection handling in
//! `fake-upstream.rs`.

use std::io;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use swapd::http::codec;

use crate::{timings, usage};

/// The one thread that writes the events of every plain timed stream (`stream_interval_ms`
/// without a crash, a gate or tool calls): a connection thread writes the head, hands its
/// socket over and waits for the stream's end, so a stream costs one wake-up of its own
/// thread, not one per event; the ticker sleeps until the earliest event is due and writes
/// every due one. The bytes on the wire and their timing are those of the per-thread loop
/// (the same event JSON, each event due at `start + interval × i`, the final event, `[DONE]`
/// and the terminating chunk right after the last one). A socket that cannot take an event at
/// once (a reader that is behind) keeps it pending and is retried a few milliseconds later,
/// so one slow reader never holds up the other streams.
pub struct Ticker {
    queue: std::sync::Mutex<std::collections::BinaryHeap<std::cmp::Reverse<Tick>>>,
    wake: std::sync::Condvar,
}

/// One stream in the ticker's queue, ordered by when it next needs the ticker.
struct Tick {
    due: Instant,
    stream: Box<TimedStream>,
}

impl PartialEq for Tick {
    fn eq(&self, other: &Tick) -> bool {
        self.due == other.due
    }
}
impl Eq for Tick {}
impl PartialOrd for Tick {
    fn partial_cmp(&self, other: &Tick) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Tick {
    fn cmp(&self, other: &Tick) -> std::cmp::Ordering {
        self.due.cmp(&other.due)
    }
}

struct TimedStream {
    /// The connection's socket, borrowed: its thread blocks in `Ticker::run` until `done`
    /// has been sent, so the descriptor stays open (and is used by nobody else) until then.
    /// Writing through the descriptor rather than a duplicate keeps a stream at one
    /// descriptor, as the thread loop was (the scale benchmark runs near the limit).
    socket: std::os::fd::RawFd,
    model: String,
    n: u64,
    interval: Duration,
    started: Instant,
    /// The next event to write.
    next: u64,
    /// Bytes the socket has not taken yet.
    pending: Vec<u8>,
    done: std::sync::mpsc::Sender<io::Result<()>>,
}

/// How long a stream whose socket is full waits before the next try.
const RETRY: Duration = Duration::from_millis(5);

impl Ticker {
    pub fn shared() -> &'static Ticker {
        static TICKER: std::sync::OnceLock<&'static Ticker> = std::sync::OnceLock::new();
        TICKER.get_or_init(|| {
            let ticker: &'static Ticker = Box::leak(Box::new(Ticker {
                queue: std::sync::Mutex::new(std::collections::BinaryHeap::new()),
                wake: std::sync::Condvar::new(),
            }));
            thread::Builder::new()
                .name("ticker".to_string())
                .spawn(move || ticker.tick_forever())
                .expect("the ticker thread starts");
            ticker
        })
    }

    /// Writes `n` timed events (then the final event, `[DONE]` and the end of the body) on
    /// `w`, whose head is already out, and returns when they have all been written.
    pub fn run(
        &self,
        w: &mut &TcpStream,
        model: &str,
        n: u64,
        interval: Duration,
        started: Instant,
    ) -> io::Result<()> {
        let (done, finished) = std::sync::mpsc::channel();
        let stream = TimedStream {
            socket: std::os::fd::AsRawFd::as_raw_fd(*w),
            model: model.to_string(),
            n,
            interval,
            started,
            next: 0,
            pending: Vec::new(),
            done,
        };
        self.push(started, Box::new(stream));
        // `w` stays borrowed (open, unused here) until the ticker is done with it.
        finished
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the ticker stopped")))
    }

    fn push(&self, due: Instant, stream: Box<TimedStream>) {
        let mut queue = self.queue.lock().expect("ticker lock");
        let earliest = queue.peek().is_none_or(|first| due < first.0.due);
        queue.push(std::cmp::Reverse(Tick { due, stream }));
        if earliest {
            self.wake.notify_one();
        }
    }

    fn tick_forever(&self) {
        let mut queue = self.queue.lock().expect("ticker lock");
        loop {
            let now = Instant::now();
            match queue.peek().map(|first| first.0.due) {
                None => queue = self.wake.wait(queue).expect("ticker lock"),
                Some(due) if due > now => {
                    queue = self
                        .wake
                        .wait_timeout(queue, due - now)
                        .expect("ticker lock")
                        .0
                }
                Some(_) => {
                    let Some(std::cmp::Reverse(tick)) = queue.pop() else {
                        continue;
                    };
                    drop(queue);
                    let mut stream = tick.stream;
                    if let Some(due) = stream.advance(now) {
                        queue = self.queue.lock().expect("ticker lock");
                        queue.push(std::cmp::Reverse(Tick { due, stream }));
                    } else {
                        queue = self.queue.lock().expect("ticker lock");
                    }
                }
            }
        }
    }
}

impl TimedStream {
    /// Writes what is due; `Some(when)` the stream needs the ticker next, `None` when it has
    /// ended (and its connection thread has been told).
    fn advance(&mut self, now: Instant) -> Option<Instant> {
        if self.pending.is_empty() && self.next < self.n {
            let i = self.next;
            let event = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": self.model,
                               "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}}]});
            codec::encode_chunk(&mut self.pending, format!("data: {event}\n\n").as_bytes());
            self.next += 1;
            if self.next == self.n {
                let n = self.n;
                let last = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": self.model,
                                  "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                  "usage": usage(n), "timings": timings(n)});
                codec::encode_chunk(&mut self.pending, format!("data: {last}\n\n").as_bytes());
                codec::encode_chunk(&mut self.pending, b"data: [DONE]\n\n");
                self.pending.extend_from_slice(codec::LAST_CHUNK);
            }
        }
        while !self.pending.is_empty() {
            // SAFETY: the descriptor is open (see `socket`), and send reads at most
            // `pending.len()` bytes from the vector. MSG_DONTWAIT: a full socket is retried
            // later instead of holding up the other streams.
            let sent = unsafe {
                libc::send(
                    self.socket,
                    self.pending.as_ptr() as *const libc::c_void,
                    self.pending.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            let result = if sent < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(sent as usize)
            };
            match result {
                Ok(0) => return self.end(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => {
                    self.pending.drain(..written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(now + RETRY),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.end(Err(e)),
            }
        }
        if self.next == self.n {
            return self.end(Ok(()));
        }
        Some(self.started + self.interval * self.next as u32)
    }

    fn end(&mut self, result: io::Result<()>) -> Option<Instant> {
        let _ = self.done.send(result);
        None
    }
}
