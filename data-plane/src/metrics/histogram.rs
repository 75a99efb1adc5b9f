//! A latency histogram made of relaxed atomics: one bucket increment and one sum addition per
//! observation, no lock, no allocation (prometheus-client's own histogram takes a lock per
//! observation, which the request path avoids).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{MetricEncoder, NoLabelSet};

/// Upper bounds of the buckets in milliseconds: Kong's latency buckets (the `+Inf` bucket
/// follows).
pub(crate) const BUCKETS_MS: [f64; 16] = [
    1.0, 2.0, 5.0, 7.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0, 750.0, 1000.0, 3000.0,
    6000.0,
];

/// Observations per bucket (not cumulative; the last one is `+Inf`) and their sum.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS_MS.len() + 1],
    /// Sum of the observations, microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub(crate) fn observe(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let bucket = BUCKETS_MS.partition_point(|bound| *bound < ms);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations so far.
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Writes the histogram (milliseconds) to `encoder`.
    pub(crate) fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        let mut buckets = [(0.0, 0); BUCKETS_MS.len() + 1];
        for (i, slot) in buckets.iter_mut().enumerate() {
            let bound = BUCKETS_MS.get(i).copied().unwrap_or(f64::INFINITY);
            *slot = (bound, self.counts[i].load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1000.0;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(1));
        histogram.observe(Duration::from_millis(8));
        histogram.observe(Duration::from_secs(60));
        let counts: Vec<u64> = histogram
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts[0], 2, "0.5 ms and 1 ms are <= 1 ms");
        assert_eq!(counts[4], 1, "8 ms is <= 10 ms");
        assert_eq!(counts[BUCKETS_MS.len()], 1, "60 s is +Inf");
        assert_eq!(histogram.count(), 4);
        assert_eq!(histogram.sum_micros.load(Ordering::Relaxed), 60_009_500);
    }
}
