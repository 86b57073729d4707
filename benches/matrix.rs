//! The matrix router's swap decision: how long one `solve` takes on a large matrix.
//!
//! 40 models and 30 sets, each set an `&` of four `(a | b | c | d)` choices plus a `+ref` to
//! the previous set for a third of them, so the DSL stands for thousands of combinations
//! (printed below). A decision must not enumerate them: it projects the sets onto the target
//! and the running models. Run it with `cargo bench --bench matrix`.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use swapd::config::{MatrixConfig, MatrixExpr};
use swapd::supervisor::matrix::solve;

fn config_text() -> String {
    let mut text = String::from("startPort: 9000\nmodels:\n");
    for i in 0..40 {
        text.push_str(&format!("  m{i}:\n    cmd: server --port ${{PORT}}\n"));
    }
    text.push_str("routing:\n  router:\n    use: matrix\n    settings:\n      matrix:\n");
    text.push_str("        evict_costs: {m3: 5, m7: 2, m11: 9}\n        sets:\n");
    for s in 0..30 {
        let terms: Vec<String> = (0..4)
            .map(|t| {
                let options: Vec<String> = (0..4)
                    .map(|o| format!("m{}", (s * 3 + t * 7 + o * 5) % 40))
                    .collect();
                format!("({})", options.join(" | "))
            })
            .collect();
        let mut dsl = terms.join(" & ");
        if s % 3 == 2 {
            dsl = format!("({dsl}) | +set{}", s - 1);
        }
        text.push_str(&format!("          set{s}: \"{dsl}\"\n"));
    }
    text
}

/// How many combinations the sets stand for when expanded (counted, not built).
fn combinations(expr: &MatrixExpr) -> u64 {
    match expr {
        MatrixExpr::Model(_) => 1,
        MatrixExpr::Or(items) => items.iter().map(|i| combinations(i)).sum(),
        MatrixExpr::And(items) => items.iter().map(|i| combinations(i)).product(),
    }
}

fn main() {
    let text = config_text();
    let loaded = swapd::config::parse(&text, Path::new("bench.yaml"), &|_| None)
        .expect("the bench config is valid");
    let matrix: MatrixConfig = loaded.config.matrix.expect("matrix configured");
    let expanded: u64 = matrix.sets.iter().map(|set| combinations(&set.expr)).sum();
    println!(
        "matrix: {} models, {} sets, {} combinations if expanded",
        matrix.models.len(),
        matrix.sets.len(),
        expanded
    );
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("m5", vec![]),
        ("m5", vec!["m1", "m8", "m20"]),
        ("m0", vec!["m3", "m9", "m12", "m33"]),
        (
            "m17",
            vec!["m2", "m4", "m6", "m8", "m10", "m30", "m31", "m39"],
        ),
        (
            "m25",
            vec![
                "m0", "m3", "m6", "m9", "m12", "m15", "m18", "m21", "m24", "m27", "m30", "m33",
                "m36", "m39",
            ],
        ),
    ];
    for (target, running) in &cases {
        // Warm up, then time enough iterations for a stable mean.
        for _ in 0..100 {
            black_box(solve(target, running, &matrix));
        }
        let iterations = 2_000u32;
        let start = Instant::now();
        let mut each = Vec::with_capacity(iterations as usize);
        for _ in 0..iterations {
            let one = Instant::now();
            black_box(solve(black_box(target), black_box(running), &matrix));
            each.push(one.elapsed());
        }
        let mean = start.elapsed() / iterations;
        each.sort_unstable();
        // The 99th percentile: the worst single sample mostly measures the scheduler.
        let p99 = each[each.len() * 99 / 100];
        let decision = solve(target, running, &matrix);
        println!(
            "solve target={target} running={}: mean {:.1} µs, p99 {:.1} µs (set={} evict={} cost={})",
            running.len(),
            mean.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            decision.set.as_deref().unwrap_or("-"),
            decision.evict.len(),
            decision.cost
        );
    }
}
