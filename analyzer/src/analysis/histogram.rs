//! A step's latency histogram in the shared layout, and the nearest-rank
//! quantile rule used everywhere in the engine.

use canary_protocol::latency::{BUCKET_COUNT, bucket_bounds};
use serde::{Deserialize, Serialize};

/// Dense counts by bucket index, so adding a tick is O(its non-empty
/// buckets). Serialised sparse: a step touches a few hundred buckets of
/// 3,328.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "SparseForm", into = "SparseForm")]
pub(crate) struct DenseLatency {
    counts: Vec<u64>,
    total: u64,
}

#[derive(Serialize, Deserialize)]
struct SparseForm {
    buckets: Vec<(u32, u64)>,
}

impl From<SparseForm> for DenseLatency {
    fn from(form: SparseForm) -> Self {
        let mut dense = DenseLatency::new();
        dense.add(&form.buckets);
        dense
    }
}

impl From<DenseLatency> for SparseForm {
    fn from(dense: DenseLatency) -> Self {
        SparseForm { buckets: dense.nonzero().collect() }
    }
}

impl Default for DenseLatency {
    fn default() -> Self {
        Self::new()
    }
}

impl DenseLatency {
    pub fn new() -> DenseLatency {
        DenseLatency { counts: vec![0; BUCKET_COUNT], total: 0 }
    }

    /// Adds `(bucket index, count)` pairs; indices outside the layout are
    /// ignored.
    pub fn add(&mut self, buckets: &[(u32, u64)]) {
        for &(index, count) in buckets {
            if let Some(slot) = self.counts.get_mut(index as usize) {
                *slot = slot.saturating_add(count);
                self.total = self.total.saturating_add(count);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn nonzero(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, count)| **count > 0).map(|(index, count)| (index as u32, *count))
    }

    /// Nearest-rank quantile in ms (upper edge of the bucket that holds it).
    pub fn quantile_ms(&self, quantile: f64) -> Option<f64> {
        quantile_bucket(self.nonzero(), self.total, quantile).map(bucket_upper_ms)
    }
}

/// The bucket holding the nearest-rank `quantile` of `buckets` (ascending
/// indices, `total` samples): the first whose cumulative count reaches
/// ⌈q·n⌉. `None` when empty or `quantile` is not a number.
pub(crate) fn quantile_bucket(buckets: impl Iterator<Item = (u32, u64)>, total: u64, quantile: f64) -> Option<u32> {
    if total == 0 || quantile.is_nan() {
        return None;
    }
    let rank = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (index, count) in buckets {
        seen = seen.saturating_add(count);
        if seen >= rank {
            return Some(index);
        }
    }
    None
}

/// Upper edge of a bucket in ms.
pub(crate) fn bucket_upper_ms(index: u32) -> f64 {
    bucket_bounds().get(index as usize).map_or(f64::INFINITY, |(_, upper)| *upper as f64 / 1_000.0)
}

/// The first bucket whose upper edge is above `limit_ms`. Quantiles are
/// reported as upper edges, so "the p95 is above the limit" is exactly "more
/// than n − ⌈0.95·n⌉ samples lie in buckets from this one on". A limit that
/// is not a finite non-negative number disables the comparison (nothing is
/// above).
pub(crate) fn first_bucket_above_ms(limit_ms: f64) -> u32 {
    if !(limit_ms.is_finite() && limit_ms >= 0.0) {
        return BUCKET_COUNT as u32;
    }
    let limit_us = limit_ms * 1_000.0;
    bucket_bounds().partition_point(|&(_, upper)| upper as f64 <= limit_us) as u32
}

/// Samples in buckets `>= first_above` among `buckets` (ascending indices).
pub(crate) fn count_from(buckets: &[(u32, u64)], first_above: u32) -> u64 {
    // From the top down, stopping at the first bucket below: a tick has a
    // few dozen buckets and this runs several times per tick.
    let mut sum = 0u64;
    for &(index, count) in buckets.iter().rev() {
        if index < first_above {
            break;
        }
        sum = sum.saturating_add(count);
    }
    sum
}

#[cfg(test)]
mod tests {
    use canary_protocol::LatencyHistogram;

    use super::*;

    #[test]
    fn quantiles_match_the_protocol_histogram() {
        let mut reference = LatencyHistogram::new();
        let mut dense = DenseLatency::new();
        for value_us in [150u64, 900, 2_000, 45_000, 45_100, 120_000, 999_000] {
            reference.record_n_us(value_us, value_us % 7 + 1);
        }
        dense.add(&reference.to_sparse().buckets);
        let qs = [0.01, 0.5, 0.95, 0.99, 1.0];
        let expected = reference.quantiles_us(qs).unwrap();
        for (q, want_us) in qs.into_iter().zip(expected) {
            assert_eq!(dense.quantile_ms(q), Some(want_us as f64 / 1_000.0), "q{q}");
        }
        assert_eq!(DenseLatency::new().quantile_ms(0.5), None);
    }

    #[test]
    fn sparse_serialisation_round_trips_and_drops_bad_indices() {
        let mut dense = DenseLatency::new();
        dense.add(&[(3, 2), (700, 5), (u32::MAX, 9)]);
        assert_eq!(dense.total(), 7);
        let json = serde_json::to_string(&dense).unwrap();
        assert_eq!(json, r#"{"buckets":[[3,2],[700,5]]}"#);
        let back: DenseLatency = serde_json::from_str(&json).unwrap();
        assert_eq!(back, dense);
    }

    #[test]
    fn first_bucket_above_splits_at_the_limit() {
        let bounds = bucket_bounds();
        let index = first_bucket_above_ms(500.0) as usize;
        assert!(bounds[index].1 as f64 > 500_000.0 && bounds[index - 1].1 as f64 <= 500_000.0);
        assert_eq!(first_bucket_above_ms(f64::NAN), BUCKET_COUNT as u32);
        assert_eq!(first_bucket_above_ms(-1.0), BUCKET_COUNT as u32);
        assert_eq!(first_bucket_above_ms(f64::INFINITY), BUCKET_COUNT as u32);
    }
}
