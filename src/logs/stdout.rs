//! swapd's stdout, written in batches: a log line is appended to a pending buffer, and one
//! flusher thread writes what accumulated. Under load that is one `write` per batch window
//! instead of one per request (each proxied request logs a line); a line that arrives after a
//! quiet spell is written at once. Order is kept (one buffer, one writer), and a writer waits
//! while the pending buffer is full, so a stuck stdout slows the loggers as a direct write
//! would instead of growing memory.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::thread;
use std::time::Duration;

/// After writing a batch the flusher waits this long before the next, so lines arriving
/// meanwhile share one `write` (and wake nobody).
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Loggers wait while this much is pending.
const MAX_PENDING: usize = 1024 * 1024;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The flusher is writing or inside its batch window: it will look again without a wake.
    armed: bool,
    /// No flusher thread could be started: each logger writes its own line.
    direct: bool,
}

pub struct BatchedStdout {
    pending: Mutex<Pending>,
    /// The flusher waits here for a first line.
    has_lines: Condvar,
    /// Loggers wait here for room.
    has_room: Condvar,
    /// Serialises writes to the real stdout (the flusher's batches and [`BatchedStdout::flush`]).
    output: Mutex<()>,
    flusher: Once,
    /// Where batches go: the process's stdout, or a test's collector.
    sink: fn(&[u8]),
}

impl BatchedStdout {
    /// Batches for the process's stdout.
    pub const fn new() -> BatchedStdout {
        BatchedStdout::with_sink(write_to_stdout)
    }

    pub const fn with_sink(sink: fn(&[u8])) -> BatchedStdout {
        BatchedStdout {
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                armed: false,
                direct: false,
            }),
            has_lines: Condvar::new(),
            has_room: Condvar::new(),
            output: Mutex::new(()),
            flusher: Once::new(),
            sink,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `parts` (written back to back, e.g. a timestamp and a line) for stdout.
    pub fn write(&'static self, parts: &[&[u8]]) {
        self.flusher.call_once(|| self.start_flusher());
        let mut pending = self.lock();
        while pending.bytes.len() >= MAX_PENDING {
            pending = self
                .has_room
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        for part in parts {
            pending.bytes.extend_from_slice(part);
        }
        if pending.direct {
            drop(pending);
            self.flush();
        } else if !pending.armed {
            pending.armed = true;
            drop(pending);
            self.has_lines.notify_one();
        }
    }

    fn start_flusher(&'static self) {
        let started = thread::Builder::new()
            .name("stdout".to_string())
            .stack_size(64 * 1024)
            .spawn(move || self.run_flusher());
        if let Err(error) = started {
            eprintln!("swapd: cannot start the stdout thread ({error}); writing lines directly");
            self.lock().direct = true;
        }
    }

    fn run_flusher(&self) {
        let mut spare = Vec::new();
        loop {
            let mut pending = self.lock();
            while pending.bytes.is_empty() {
                pending.armed = false;
                pending = self
                    .has_lines
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.armed = true;
            self.write_pending(pending, &mut spare);
            spare.shrink_to(64 * 1024);
            thread::sleep(BATCH_WINDOW);
        }
    }

    /// Writes whatever is pending now (shutdown calls it so that no line is left behind).
    pub fn flush(&self) {
        self.write_pending(self.lock(), &mut Vec::new());
    }

    /// Swaps the pending bytes into `batch` (empty) and writes them; the output lock is taken
    /// before the pending lock is let go, so batches go out in the order they were taken.
    fn write_pending(&self, mut pending: MutexGuard<'_, Pending>, batch: &mut Vec<u8>) {
        std::mem::swap(&mut pending.bytes, batch);
        let output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        drop(pending);
        if batch.len() >= MAX_PENDING {
            // Loggers may be waiting for room (a notify is a system call even when none is).
            self.has_room.notify_all();
        }
        (self.sink)(batch);
        drop(output);
        batch.clear();
    }
}

impl Default for BatchedStdout {
    fn default() -> Self {
        BatchedStdout::new()
    }
}

fn write_to_stdout(batch: &[u8]) {
    if batch.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(batch);
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    static SEEN: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    static BATCHED: BatchedStdout = BatchedStdout::with_sink(|batch| {
        SEEN.lock().unwrap().push(batch.to_vec());
    });

    fn written() -> Vec<u8> {
        SEEN.lock().unwrap().concat()
    }

    #[test]
    fn lines_arrive_in_order_in_fewer_writes_and_a_lone_line_is_not_held_back() {
        let lines: Vec<String> = (0..2000).map(|i| format!("line {i}\n")).collect();
        for line in &lines {
            BATCHED.write(&[b"[t] ", line.as_bytes()]);
        }
        let expected: Vec<u8> = lines
            .iter()
            .flat_map(|line| [b"[t] ".as_slice(), line.as_bytes()].concat())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while written().len() < expected.len() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(written(), expected);
        let writes = SEEN.lock().unwrap().len();
        assert!(
            writes < lines.len(),
            "{writes} writes for {} lines",
            lines.len()
        );
        // After the flusher went quiet, one more line is written without further lines or a
        // flush pushing it out.
        while {
            let pending = BATCHED.lock();
            !pending.bytes.is_empty() || pending.armed
        } {
            assert!(Instant::now() < deadline, "the flusher never went idle");
            thread::sleep(Duration::from_millis(5));
        }
        BATCHED.write(&[b"last\n"]);
        while !written().ends_with(b"last\n") {
            assert!(Instant::now() < deadline, "a lone line stayed pending");
            thread::sleep(Duration::from_millis(5));
        }
    }
}
