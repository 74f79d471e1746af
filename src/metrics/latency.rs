//! `LatencyHistogram`: a lock-free histogram of durations for the delivery path, where one
//! observation per socket write would contend on prometheus-client's mutex-guarded
//! `Histogram` (every socket of a fan-out observes once per batch).
//!
//! May use: prometheus-client's encoding traits.  Never: allocate or lock in `observe`.
//! Invariants: counts are per bucket (the encoder makes them cumulative); `observe` is a few relaxed atomic adds.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// Upper bounds in microseconds: 50 µs doubling up to ~3.3 s (17 buckets, then +Inf).
const BOUNDS_MICROS: [u64; 17] = [
    50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400, 204_800, 409_600,
    819_200, 1_638_400, 3_276_800,
];

#[derive(Debug, Default)]
struct Inner {
    /// Per-bucket counts (not cumulative); the last one is +Inf.
    counts: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_nanos: AtomicU64,
}

/// Cloning shares the same counts (as prometheus-client's metrics do).
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    inner: Arc<Inner>,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_MICROS.partition_point(|&b| b < micros);
        self.inner.counts[i].fetch_add(1, Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.counts.iter().map(|c| c.load(Relaxed)).sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // The encoder sums the per-bucket counts into cumulative `le` buckets itself.
        let buckets: Vec<(f64, u64)> = self
            .inner
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bound = BOUNDS_MICROS.get(i).map_or(f64::INFINITY, |&b| b as f64 / 1e6);
                (bound, c.load(Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.inner.sum_nanos.load(Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50)); // le 0.00005
        h.observe(Duration::from_micros(51)); // le 0.0001
        h.observe(Duration::from_secs(10)); // +Inf
        let counts: Vec<u64> = h.inner.counts.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[BOUNDS_MICROS.len()], 1);
        assert_eq!(h.count(), 3);
    }
}
