//! The latency histogram layout shared by filter and analyzer.
//!
//! Latencies are recorded in microseconds into the `histogram` crate's
//! base-2 log-linear layout with grouping power 7 and maximum value power 32:
//! - values below 256 µs have exact buckets;
//! - above that, every power-of-two range is split into 128 equal buckets, so
//!   a bucket's width is at most 1/128 of its lower bound;
//! - the top is 2³² µs (about 71 minutes); longer latencies are clamped into
//!   the last bucket;
//! - there are 3,328 buckets, 26 KiB as dense `u64` counts.
//!
//! Quantiles are reported as the upper bound of the bucket that holds the
//! nearest-rank sample, so an estimate `q̂` of the exact quantile `q` always
//! satisfies `q ≤ q̂ ≤ q · (1 + 2⁻⁷)`: at most 0.79% high, never low.
//!
//! Reports carry only non-zero buckets ([`SparseLatency`]), because a
//! second of traffic touches a few dozen buckets out of thousands.

use std::sync::OnceLock;

use histogram::{Config, Histogram};

/// Grouping power of the shared layout: relative bucket width 2⁻⁷.
pub const GROUPING_POWER: u8 = 7;
/// Maximum value power of the shared layout: values up to 2³² µs.
pub const MAX_VALUE_POWER: u8 = 32;
/// Largest latency that has its own bucket; larger values are clamped.
pub const MAX_LATENCY_US: u64 = (1 << MAX_VALUE_POWER) - 1;
/// Worst-case relative overestimate of a reported quantile.
pub const QUANTILE_RELATIVE_ERROR: f64 = 1.0 / (1u64 << GROUPING_POWER) as f64;

const LAYOUT: Config = match Config::new(GROUPING_POWER, MAX_VALUE_POWER) {
    Ok(config) => config,
    Err(_) => panic!("the shared histogram layout constants are invalid"),
};

/// Number of buckets in the shared layout.
pub const BUCKET_COUNT: usize = LAYOUT.total_buckets();

/// Inclusive `(lower, upper)` bounds in µs of every bucket, by index.
pub fn bucket_bounds() -> &'static [(u64, u64)] {
    static BOUNDS: OnceLock<Vec<(u64, u64)>> = OnceLock::new();
    BOUNDS.get_or_init(|| Histogram::with_config(&LAYOUT).iter().map(|bucket| (bucket.start(), bucket.end())).collect())
}

/// A dense latency histogram in the shared layout.
///
/// Recording is one index computation and one add. Merging adds counts
/// in place, so a worker's memory stays constant however long the analyzer is
/// away.
#[derive(Clone)]
pub struct LatencyHistogram {
    inner: Histogram,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram").field("total_count", &self.total_count()).finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self { inner: Histogram::with_config(&LAYOUT) }
    }

    /// Records one latency; values past the top of the layout are clamped.
    #[inline]
    pub fn record_us(&mut self, latency_us: u64) {
        // Clamping keeps the value in range, so `add` cannot fail; the result
        // is ignored rather than unwrapped because this runs on the filter's
        // hot path. `add` wraps on overflow, which one-at-a-time recording
        // cannot reach (2⁶⁴ requests in one bucket).
        let _ = self.inner.add(latency_us.min(MAX_LATENCY_US), 1);
    }

    /// Records `count` latencies of the same value.
    ///
    /// Saturates like [`merge`](Self::merge) instead of going through the
    /// `histogram` crate's `add`, which wraps: the `histogram` fuzz check
    /// (fuzz/, on its seed corpus) found two large counts in one bucket
    /// wrapping to a small one, losing counts. Not on the hot path, so the
    /// bucket is found by a binary search over the bounds (the crate keeps
    /// its index private).
    pub fn record_n_us(&mut self, latency_us: u64, count: u64) {
        let latency_us = latency_us.min(MAX_LATENCY_US);
        let index = bucket_bounds().partition_point(|&(_, upper_us)| upper_us < latency_us);
        if let Some(bucket) = self.inner.as_mut_slice().get_mut(index) {
            *bucket = bucket.saturating_add(count);
        }
    }

    /// Adds another histogram's counts into this one.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.inner.as_mut_slice().iter_mut().zip(other.inner.as_slice()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Adds a sparse histogram's counts into this one. The sparse form has
    /// been validated on decode, so its indices are in range.
    pub fn merge_sparse(&mut self, sparse: &SparseLatency) {
        let buckets = self.inner.as_mut_slice();
        for &(index, count) in &sparse.buckets {
            if let Some(bucket) = buckets.get_mut(index as usize) {
                *bucket = bucket.saturating_add(count);
            }
        }
    }

    /// Empties the histogram without freeing its storage.
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// Dense counts by bucket index.
    pub fn counts(&self) -> &[u64] {
        self.inner.as_slice()
    }

    /// Number of recorded latencies.
    pub fn total_count(&self) -> u64 {
        self.counts().iter().fold(0u64, |sum, &count| sum.saturating_add(count))
    }

    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(|&count| count == 0)
    }

    /// Non-zero buckets, in increasing index order.
    pub fn nonzero_buckets(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.counts().iter().enumerate().filter(|(_, count)| **count != 0).map(|(index, count)| (index as u32, *count))
    }

    /// The sparse form, as carried in reports.
    pub fn to_sparse(&self) -> SparseLatency {
        SparseLatency { buckets: self.nonzero_buckets().collect() }
    }

    /// Nearest-rank quantile estimates in µs (upper bucket bound), one per
    /// entry of `quantiles` (each in `0.0..=1.0`), computed in one pass.
    /// `None` when the histogram is empty.
    pub fn quantiles_us<const N: usize>(&self, quantiles: [f64; N]) -> Option<[u64; N]> {
        quantiles_of(self.counts().iter().copied().enumerate(), self.total_count(), quantiles)
    }

    /// Number of latencies strictly above `threshold_us`, counting whole
    /// buckets whose lower bound is above the threshold.
    pub fn count_above_us(&self, threshold_us: u64) -> u64 {
        bucket_bounds()
            .iter()
            .zip(self.counts())
            .filter(|((lower, _), _)| *lower > threshold_us)
            .map(|(_, count)| *count)
            .sum()
    }
}

/// Non-zero buckets of a latency histogram: `(bucket index, count)` with
/// strictly increasing indices and non-zero counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseLatency {
    pub buckets: Vec<(u32, u64)>,
}

impl SparseLatency {
    pub fn total_count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |sum, (_, count)| sum.saturating_add(*count))
    }

    /// Nearest-rank quantile estimates in µs; see
    /// [`LatencyHistogram::quantiles_us`].
    pub fn quantiles_us<const N: usize>(&self, quantiles: [f64; N]) -> Option<[u64; N]> {
        let entries = self.buckets.iter().map(|&(index, count)| (index as usize, count));
        quantiles_of(entries, self.total_count(), quantiles)
    }
}

fn quantiles_of<const N: usize>(
    buckets: impl Iterator<Item = (usize, u64)>,
    total_count: u64,
    quantiles: [f64; N],
) -> Option<[u64; N]> {
    if total_count == 0 {
        return None;
    }
    let bounds = bucket_bounds();
    // Nearest rank: the smallest sample whose rank is at least ceil(q·n).
    // Above 2⁵³ samples `total_count as f64` is rounded, so the rank is
    // capped at the count (rounding up left the rank of q = 1 unreached and
    // u64::MAX as the estimate) and q = 1 takes the count exactly (rounding
    // down put the maximum in an earlier bucket). Both found by the
    // `histogram` fuzz target.
    let ranks = quantiles.map(|q| match q.clamp(0.0, 1.0) {
        q if q >= 1.0 => total_count,
        q => ((q * total_count as f64).ceil() as u64).clamp(1, total_count),
    });
    let mut estimates = [u64::MAX; N];
    let mut seen = 0u64;
    for (index, count) in buckets {
        if count == 0 {
            continue;
        }
        seen = seen.saturating_add(count);
        let upper_us = bounds.get(index).map_or(MAX_LATENCY_US, |(_, upper)| *upper);
        for (estimate, rank) in estimates.iter_mut().zip(ranks) {
            if *estimate == u64::MAX && seen >= rank {
                *estimate = upper_us;
            }
        }
    }
    Some(estimates)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::split::SplitRng;

    #[test]
    fn layout_is_as_documented() {
        assert_eq!(BUCKET_COUNT, 3_328);
        let bounds = bucket_bounds();
        assert_eq!(bounds.len(), BUCKET_COUNT);
        assert_eq!(bounds[0], (0, 0));
        assert_eq!(bounds[255], (255, 255));
        assert_eq!(bounds.last().map(|b| b.1), Some(MAX_LATENCY_US));
        for pair in bounds.windows(2) {
            assert_eq!(pair[0].1 + 1, pair[1].0, "buckets tile the range");
        }
        for &(lower, upper) in bounds {
            let width = upper - lower + 1;
            assert!(width == 1 || (width as f64) <= lower as f64 * QUANTILE_RELATIVE_ERROR + 1.0);
        }
    }

    /// Exact nearest-rank quantile of sorted samples.
    fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn quantiles_are_within_documented_error_of_exact() {
        let mut rng = SplitRng::new(3);
        for (case, scale_us) in [50u64, 2_000, 150_000, 3_000_000].into_iter().enumerate() {
            let mut histogram = LatencyHistogram::new();
            // A long-tailed sample: log-uniform over three decades.
            let mut samples: Vec<u64> = (0..5_000)
                .map(|_| {
                    let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    (scale_us as f64 * 10f64.powf(unit * 3.0)) as u64
                })
                .collect();
            for &sample in &samples {
                histogram.record_us(sample);
            }
            samples.sort_unstable();
            let qs = [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0];
            let estimates = histogram.quantiles_us(qs).expect("non-empty");
            for (q, estimate) in qs.into_iter().zip(estimates) {
                let exact = exact_quantile(&samples, q);
                assert!(estimate >= exact, "case {case} q{q}: {estimate} < exact {exact}");
                let bound = exact as f64 * (1.0 + QUANTILE_RELATIVE_ERROR);
                assert!(estimate as f64 <= bound, "case {case} q{q}: {estimate} > {bound}");
            }
            assert_eq!(histogram.to_sparse().quantiles_us(qs), Some(estimates));
        }
    }

    #[test]
    fn merge_is_associative_and_conserves_counts() {
        let mut rng = SplitRng::new(11);
        let mut parts: Vec<LatencyHistogram> = Vec::new();
        for _ in 0..3 {
            let mut histogram = LatencyHistogram::new();
            for _ in 0..1_000 {
                histogram.record_us(rng.next_u64() % 1_000_000);
            }
            parts.push(histogram);
        }
        let mut left = parts[0].clone();
        left.merge(&parts[1]);
        left.merge(&parts[2]);
        let mut right = parts[1].clone();
        right.merge(&parts[2]);
        let mut right_total = parts[0].clone();
        right_total.merge(&right);
        assert_eq!(left.counts(), right_total.counts());
        assert_eq!(left.total_count(), 3_000);

        let mut via_sparse = LatencyHistogram::new();
        for part in &parts {
            via_sparse.merge_sparse(&part.to_sparse());
        }
        assert_eq!(via_sparse.counts(), left.counts());
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut histogram = LatencyHistogram::new();
        histogram.record_us(u64::MAX);
        histogram.record_us(0);
        assert_eq!(histogram.total_count(), 2);
        assert_eq!(histogram.quantiles_us([1.0]), Some([MAX_LATENCY_US]));
        assert_eq!(histogram.count_above_us(1_000), 1);
        histogram.reset();
        assert!(histogram.is_empty());
        assert_eq!(histogram.quantiles_us([0.5]), None);
    }

    /// Found by the `histogram` fuzz target (fuzz/corpus/histogram/: seed-ones, crash-*).
    #[test]
    fn huge_counts_saturate_and_keep_quantiles_inside_the_data() {
        let mut histogram = LatencyHistogram::new();
        histogram.record_n_us(1_000, u64::MAX - 1);
        histogram.record_n_us(1_000, 5);
        assert_eq!(histogram.total_count(), u64::MAX, "saturates, does not wrap to 3");
        // A total above 2^53 that rounds up as f64: the rank of q = 1 must
        // still be reached.
        let mut histogram = LatencyHistogram::new();
        histogram.record_n_us(10, 1);
        histogram.record_n_us(1_000, (1 << 54) + 2);
        let upper_us = bucket_bounds()[histogram.to_sparse().buckets[1].0 as usize].1;
        assert_eq!(histogram.quantiles_us([0.0, 1.0]), Some([10, upper_us]));
        assert_eq!(histogram.to_sparse().quantiles_us([1.0]), Some([upper_us]));
        // And one that rounds down: the single sample at the top must still
        // be the maximum.
        let mut histogram = LatencyHistogram::new();
        histogram.record_n_us(1_000, 1 << 60);
        histogram.record_us(u64::MAX);
        assert_eq!(histogram.quantiles_us([1.0]), Some([MAX_LATENCY_US]));
        // record_n_us finds its bucket by the bounds, record_us through the
        // histogram crate: the same bucket at every edge.
        for (index, &(lower_us, upper_us)) in bucket_bounds().iter().enumerate() {
            for value_us in [lower_us, upper_us] {
                let (mut by_bounds, mut by_crate) = (LatencyHistogram::new(), LatencyHistogram::new());
                by_bounds.record_n_us(value_us, 1);
                by_crate.record_us(value_us);
                assert_eq!(by_bounds.to_sparse().buckets, [(index as u32, 1)], "{value_us} µs");
                assert_eq!(by_crate.counts(), by_bounds.counts(), "{value_us} µs");
            }
        }
    }
}
