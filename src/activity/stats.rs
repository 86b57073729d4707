//! `GET /api/metrics/stats`: totals and speed histograms over the activity rows, as pure
//! functions.
//!
//! llama-swap's shape: `{total_requests, total_input_tokens, total_output_tokens,
//! total_cache_tokens, prompt_histogram, gen_histogram}`, each histogram `{bins, min, max,
//! binSize, p50, p95, p99}` over the speeds above zero, with Sturges' bin count clamped to
//! 5–20, and `null` when no row reported a speed.

use serde_json::{json, Value};

use super::ActivityRow;

/// The fewest and most bins a histogram has.
pub const MIN_BINS: usize = 5;
pub const MAX_BINS: usize = 20;

/// A histogram of positive values with its percentiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub bins: Vec<u64>,
    pub min: f64,
    pub max: f64,
    pub bin_size: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Histogram {
    pub fn to_json(&self) -> Value {
        json!({
            "bins": self.bins,
            "min": self.min,
            "max": self.max,
            "binSize": self.bin_size,
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
        })
    }
}

/// Sturges' rule, `ceil(log2 n) + 1`, clamped to [`MIN_BINS`]..=[`MAX_BINS`].
pub fn sturges_bins(count: usize) -> usize {
    if count <= 1 {
        return MIN_BINS;
    }
    let bins = (count as f64).log2().ceil() as usize + 1;
    bins.clamp(MIN_BINS, MAX_BINS)
}

/// The nearest-rank percentile (`p` in 0–100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The histogram of the finite values above zero; `None` when there are none.
pub fn histogram(values: impl IntoIterator<Item = f64>) -> Option<Histogram> {
    let mut values: Vec<f64> = values
        .into_iter()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let min = values[0];
    let max = values[values.len() - 1];
    let count = sturges_bins(values.len());
    // With every value equal the range is empty; one unit per bin keeps the axis readable and
    // puts every value in the first bin.
    let bin_size = if max > min {
        (max - min) / count as f64
    } else {
        1.0
    };
    let mut bins = vec![0u64; count];
    for value in &values {
        let index = (((value - min) / bin_size) as usize).min(count - 1);
        bins[index] += 1;
    }
    Some(Histogram {
        bins,
        min,
        max,
        bin_size,
        p50: percentile(&values, 50.0),
        p95: percentile(&values, 95.0),
        p99: percentile(&values, 99.0),
    })
}

/// The stats document for the rows of `model` (all rows when `None`).
pub fn stats<'a>(rows: impl IntoIterator<Item = &'a ActivityRow>, model: Option<&str>) -> Value {
    let mut total_requests = 0u64;
    let mut totals = [0u64; 3];
    let mut prompt_speeds = Vec::new();
    let mut gen_speeds = Vec::new();
    for row in rows {
        if model.is_some_and(|m| m != &*row.model) {
            continue;
        }
        total_requests += 1;
        for (total, value) in
            totals
                .iter_mut()
                .zip([row.tokens.input, row.tokens.output, row.tokens.cache])
        {
            *total += u64::try_from(value).unwrap_or(0);
        }
        prompt_speeds.push(row.tokens.prompt_per_second);
        gen_speeds.push(row.tokens.tokens_per_second);
    }
    let render = |values: Vec<f64>| histogram(values).map_or(Value::Null, |h| h.to_json());
    json!({
        "total_requests": total_requests,
        "total_input_tokens": totals[0],
        "total_output_tokens": totals[1],
        "total_cache_tokens": totals[2],
        "prompt_histogram": render(prompt_speeds),
        "gen_histogram": render(gen_speeds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sturges_is_clamped() {
        let cases = [
            (0, 5),
            (1, 5),
            (2, 5),
            (16, 5),
            (17, 6),
            (100, 8),
            (1000, 11),
            (1 << 19, 20),
            (1 << 20, 20),
        ];
        for (count, bins) in cases {
            assert_eq!(sturges_bins(count), bins, "n={count}");
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 95.0), 95.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn histogram_bins_every_positive_value() {
        assert_eq!(histogram([0.0, -1.0, f64::NAN]), None);
        let h = histogram([10.0, 20.0, 30.0, 40.0, 50.0, 0.0, -1.0]).expect("values");
        assert_eq!(h.bins, [1, 1, 1, 1, 1]);
        assert_eq!((h.min, h.max, h.bin_size), (10.0, 50.0, 8.0));
        assert_eq!((h.p50, h.p95, h.p99), (30.0, 50.0, 50.0));

        let h = histogram([5.0, 5.0, 5.0]).expect("values");
        assert_eq!(h.bins, [3, 0, 0, 0, 0]);
        assert_eq!(h.bin_size, 1.0);

        let many: Vec<f64> = (1..=1000).map(f64::from).collect();
        let h = histogram(many).expect("values");
        assert_eq!(h.bins.len(), 11);
        assert_eq!(h.bins.iter().sum::<u64>(), 1000);
        assert_eq!(h.p99, 990.0);
    }
}
