//! The access decision every request of a keyless swapd goes through (`proxy::origin`): time
//! per decision and heap allocations per decision, for the common cases. Run it with
//! `cargo bench --bench access`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use swapd::proxy::origin::{decide, Facts, Policy};

/// The system allocator, counting allocations so the bench can report them per decision.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEYLESS: &str = r#"
models:
  a:
    cmd: server --port ${PORT}
swapd:
  allowedOrigins: ["https://app.example.com", "*.corp.example"]
  allowedHosts: [llm.example.com]
"#;

const KEYED: &str = r#"
apiKeys: [sk-bench]
models:
  a:
    cmd: server --port ${PORT}
"#;

/// Nanoseconds per call of `f` (median of 5 runs of about 50 ms) and allocations per call.
fn measure(mut f: impl FnMut()) -> (f64, f64) {
    let started = Instant::now();
    let mut calibration = 0u64;
    while started.elapsed().as_millis() < 20 {
        f();
        calibration += 1;
    }
    let per_call = started.elapsed().as_secs_f64() / calibration as f64;
    let iterations = ((0.05 / per_call) as u64).max(1);
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                f();
            }
            started.elapsed().as_secs_f64() * 1e9 / iterations as f64
        })
        .collect();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    runs.sort_by(|a, b| a.total_cmp(b));
    (runs[2], allocations as f64 / (5 * iterations) as f64)
}

fn main() {
    let load = |text| {
        swapd::config::parse(text, Path::new("bench.yaml"), &|_| None)
            .expect("bench config loads")
            .config
    };
    let keyless = load(KEYLESS);
    let keyed = load(KEYED);
    let hostname = Some("workstation");
    let base = Facts {
        method: "POST",
        path: "/v1/chat/completions",
        host: Some("127.0.0.1:8080"),
        content_type: Some("application/json"),
        ..Facts::default()
    };
    let cases: Vec<(&str, &swapd::config::Config, Facts)> = vec![
        (
            "keyless, no Origin, Host 127.0.0.1:8080 (SDKs, curl)",
            &keyless,
            base,
        ),
        (
            "keyless, no Origin, Host localhost:8080",
            &keyless,
            Facts {
                host: Some("localhost:8080"),
                ..base
            },
        ),
        (
            "keyless, no Origin, Host llm.example.com (allowedHosts)",
            &keyless,
            Facts {
                host: Some("llm.example.com"),
                ..base
            },
        ),
        (
            "keyless, Origin http://localhost:5173",
            &keyless,
            Facts {
                origin: Some("http://localhost:5173"),
                ..base
            },
        ),
        (
            "keyless, Origin https://x.corp.example (allowedOrigins)",
            &keyless,
            Facts {
                origin: Some("https://x.corp.example"),
                ..base
            },
        ),
        (
            "keyless, foreign Origin (refused)",
            &keyless,
            Facts {
                origin: Some("https://evil.example"),
                ..base
            },
        ),
        (
            "keyless, no Origin, Sec-Fetch-Site cross-site GET /unload",
            &keyless,
            Facts {
                method: "GET",
                path: "/unload",
                fetch_site: Some("cross-site"),
                ..base
            },
        ),
        ("keyed (every check off)", &keyed, base),
    ];
    println!("access decision per request (proxy::origin::decide)");
    println!("{:<62} {:>10} {:>12}", "case", "ns", "allocations");
    for (name, config, facts) in cases {
        let policy = Policy::new(config, hostname);
        let (ns, allocations) = measure(|| {
            black_box(decide(black_box(&facts), black_box(&policy)));
        });
        println!("{name:<62} {ns:>10.1} {allocations:>12.2}");
    }
}
