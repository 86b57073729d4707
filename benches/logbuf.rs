//! Benchmark of `swapd::logbuf::LogBuffer` against llama-swap's published ring-buffer figures.
//!
//! llama-swap PR #421 measured its contiguous circular buffer (Go, M1 Pro) for small, medium and
//! large writes, a write with five subscribers, and `GetHistory` after 1000 writes. This runs the
//! same cases at the seed's 10 KiB capacity and at llama-swap's current 100 KiB, counting heap
//! allocations with a wrapping global allocator, and prints a markdown table with the Go
//! figures alongside. Run it with `cargo bench --bench logbuf`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use swapd::logbuf::{LogBuffer, Subscription};

/// Counts allocations and allocated bytes on top of the system allocator.
struct CountingAlloc;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are plain atomics and do not allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// How long each case runs (after a short warm-up).
const TIME_BOX: Duration = Duration::from_millis(500);

/// Operations per timed batch: small enough that five subscriber queues (256 chunks) never
/// overflow between drains, large enough that reading the clock is negligible.
const BATCH: u64 = 200;

/// The measured cost of one operation.
struct Measurement {
    ns_per_op: f64,
    allocs_per_op: f64,
    bytes_per_op: f64,
}

/// Runs `op` in batches for about `TIME_BOX`, calling `between` after every batch outside the
/// timed region but inside the allocation count (so allocations it frees are not hidden, and
/// allocations it makes itself are reported as well; the callers' `between` does not allocate).
fn measure(mut op: impl FnMut(), mut between: impl FnMut()) -> Measurement {
    let warm_up = Instant::now();
    while warm_up.elapsed() < TIME_BOX / 10 {
        for _ in 0..BATCH {
            op();
        }
        between();
    }
    let mut timed = Duration::ZERO;
    let mut ops = 0u64;
    let allocs_before = ALLOCS.load(Ordering::Relaxed);
    let bytes_before = ALLOC_BYTES.load(Ordering::Relaxed);
    while timed < TIME_BOX {
        let start = Instant::now();
        for _ in 0..BATCH {
            op();
        }
        timed += start.elapsed();
        ops += BATCH;
        between();
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs_before;
    let bytes = ALLOC_BYTES.load(Ordering::Relaxed) - bytes_before;
    Measurement {
        ns_per_op: timed.as_nanos() as f64 / ops as f64,
        allocs_per_op: allocs as f64 / ops as f64,
        bytes_per_op: bytes as f64 / ops as f64,
    }
}

/// Measures writes of `size` bytes into a buffer of `capacity` bytes with `subscribers`
/// subscribers, which are drained between batches (outside the timed region).
fn bench_write(capacity: usize, size: usize, subscribers: usize) -> Measurement {
    let buf = LogBuffer::new(capacity);
    let subs: Vec<Subscription> = (0..subscribers).map(|_| buf.subscribe_live()).collect();
    // Printable data that varies, like log lines.
    let message: Vec<u8> = (0..size).map(|i| b' ' + (i % 94) as u8).collect();
    let result = measure(
        || buf.write(black_box(&message)),
        || {
            for sub in &subs {
                while let Ok(chunk) = sub.receiver().try_recv() {
                    black_box(chunk);
                }
            }
        },
    );
    assert_eq!(
        buf.dropped_bytes_total(),
        0,
        "subscribers must keep up in this benchmark"
    );
    result
}

/// Measures writes with one subscriber that never reads: its queue is full the whole time.
fn bench_write_stalled(capacity: usize, size: usize) -> Measurement {
    let buf = LogBuffer::new(capacity);
    let _stalled = buf.subscribe_live();
    let message: Vec<u8> = (0..size).map(|i| b' ' + (i % 94) as u8).collect();
    let result = measure(|| buf.write(black_box(&message)), || {});
    assert!(
        buf.dropped_bytes_total() > 0,
        "the stalled subscriber must be dropping"
    );
    result
}

/// Like `bench_write` with subscribers, but the timed region includes draining them, so the
/// figure is the whole cost of moving one write to every reader on a single thread.
fn bench_write_and_drain(capacity: usize, size: usize, subscribers: usize) -> Measurement {
    let buf = LogBuffer::new(capacity);
    let subs: Vec<Subscription> = (0..subscribers).map(|_| buf.subscribe_live()).collect();
    let message: Vec<u8> = (0..size).map(|i| b' ' + (i % 94) as u8).collect();
    measure(
        || {
            buf.write(black_box(&message));
            for sub in &subs {
                if let Ok(chunk) = sub.receiver().try_recv() {
                    black_box(chunk);
                }
            }
        },
        || {},
    )
}

/// Measures `history()` on a full buffer after 1000 writes of 241 bytes.
fn bench_history(capacity: usize) -> Measurement {
    let buf = LogBuffer::new(capacity);
    let message: Vec<u8> = (0..241).map(|i| b' ' + (i % 94) as u8).collect();
    for _ in 0..1000 {
        buf.write(&message);
    }
    measure(|| drop(black_box(buf.history())), || {})
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter); there is nothing to configure, so
    // arguments are ignored.
    struct Case {
        name: &'static str,
        go_after_ns: &'static str,
        go_after_allocs: &'static str,
        run: fn(usize) -> Measurement,
    }
    let cases = [
        Case {
            name: "write 14 B",
            go_after_ns: "26",
            go_after_allocs: "1 (16 B)",
            run: |cap| bench_write(cap, 14, 0),
        },
        Case {
            name: "write 241 B",
            go_after_ns: "67",
            go_after_allocs: "1 (240 B)",
            run: |cap| bench_write(cap, 241, 0),
        },
        Case {
            name: "write 4 KiB",
            go_after_ns: "774",
            go_after_allocs: "1 (4,096 B)",
            run: |cap| bench_write(cap, 4096, 0),
        },
        Case {
            name: "write 241 B, 5 subscribers",
            go_after_ns: "325",
            go_after_allocs: "1 (240 B)",
            run: |cap| bench_write(cap, 241, 5),
        },
        Case {
            name: "write 241 B, 5 subscribers, incl. draining",
            go_after_ns: "-",
            go_after_allocs: "-",
            run: |cap| bench_write_and_drain(cap, 241, 5),
        },
        Case {
            name: "write 241 B, 1 stalled subscriber",
            go_after_ns: "-",
            go_after_allocs: "-",
            run: |cap| bench_write_stalled(cap, 241),
        },
        Case {
            name: "history() after 1000 writes",
            go_after_ns: "1,042",
            go_after_allocs: "1 (10,240 B)",
            run: bench_history,
        },
    ];

    println!("| case | capacity | ns/op | allocs/op | bytes/op | llama-swap Go \"after\" ns/op | Go allocs/op |");
    println!("|---|---|---:|---:|---:|---:|---|");
    for capacity in [10 * 1024, 100 * 1024] {
        for case in &cases {
            let m = (case.run)(capacity);
            println!(
                "| {} | {} KiB | {:.1} | {:.2} | {:.0} | {} | {} |",
                case.name,
                capacity / 1024,
                m.ns_per_op,
                m.allocs_per_op,
                m.bytes_per_op,
                case.go_after_ns,
                case.go_after_allocs,
            );
        }
    }
    println!();
    println!(
        "Go figures: llama-swap PR #428 (#421), MBP M1 Pro, 10 KB buffer. Subscriber queues are \
         drained between {BATCH}-write batches outside the timed region unless noted."
    );
}
