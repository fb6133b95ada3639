//! Nearest-rank quantiles of a sample.
//!
//! Nearest rank always returns a value that was actually measured (no
//! interpolation between two rounds), which is what a reader expects when the
//! sample is a few dozen rounds: p99 of 50 samples is simply the maximum.

use serde::Serialize;

/// The quantiles every benchmark table shows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    /// Quantiles of `values` (any order; NaNs are ignored), or `None` when
    /// there is nothing to summarise.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|value| !value.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            count: sorted.len(),
            p50: nearest_rank(&sorted, 50.0)?,
            p90: nearest_rank(&sorted, 90.0)?,
            p99: nearest_rank(&sorted, 99.0)?,
            max: *sorted.last()?,
        })
    }
}

/// Median, min and max over rounds (finite values only).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub count: usize,
    /// Nearest rank: a value some round measured.
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|value| value.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            count: sorted.len(),
            median: nearest_rank(&sorted, 50.0)?,
            min: *sorted.first()?,
            max: *sorted.last()?,
        })
    }
}

/// The `percentile`-th percentile (0..=100) of an ascending `sorted` slice by
/// the nearest-rank method: the smallest value such that at least
/// `percentile`% of the sample is at or below it, i.e. the value of rank
/// `ceil(percentile / 100 * n)` (1-based; rank 1 for percentile 0).
pub fn nearest_rank(sorted: &[f64], percentile: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&percentile) {
        return None;
    }
    // Multiplying before dividing keeps whole percentiles exact: 0.07 * 100 is
    // 7.000000000000001 in floating point, which would round up to rank 8.
    let rank = (percentile * sorted.len() as f64 / 100.0).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sample: &[f64], percentile: f64, expected: Option<f64>) {
        assert_eq!(nearest_rank(sample, percentile), expected, "p{percentile} of {sample:?}");
    }

    #[test]
    fn nearest_rank_picks_the_ceiling_rank() {
        let one_to_ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let one_to_hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        let table: &[(&[f64], f64, Option<f64>)] = &[
            (&[], 50.0, None),
            (&[7.0], 0.0, Some(7.0)),
            (&[7.0], 50.0, Some(7.0)),
            (&[7.0], 100.0, Some(7.0)),
            (&one_to_ten, 0.0, Some(1.0)),
            (&one_to_ten, 10.0, Some(1.0)),
            // 10.1% of 10 values needs rank 2.
            (&one_to_ten, 10.1, Some(2.0)),
            (&one_to_ten, 50.0, Some(5.0)),
            (&one_to_ten, 70.0, Some(7.0)),
            (&one_to_ten, 90.0, Some(9.0)),
            (&one_to_ten, 99.0, Some(10.0)),
            (&one_to_ten, 100.0, Some(10.0)),
            (&one_to_hundred, 7.0, Some(7.0)),
            (&one_to_hundred, 99.0, Some(99.0)),
            (&one_to_hundred, 99.5, Some(100.0)),
            // The classic example: 15, 20, 35, 40, 50.
            (&[15.0, 20.0, 35.0, 40.0, 50.0], 30.0, Some(20.0)),
            (&[15.0, 20.0, 35.0, 40.0, 50.0], 40.0, Some(20.0)),
            (&[15.0, 20.0, 35.0, 40.0, 50.0], 50.0, Some(35.0)),
            (&one_to_ten, -1.0, None),
            (&one_to_ten, 100.1, None),
            (&one_to_ten, f64::NAN, None),
        ];
        for (sample, percentile, expected) in table {
            check(sample, *percentile, *expected);
        }
    }

    #[test]
    fn summary_sorts_and_ignores_nan() {
        let summary = Quantiles::of(&[3.0, f64::NAN, 1.0, 2.0]).expect("non-empty");
        assert_eq!(summary, Quantiles { count: 3, p50: 2.0, p90: 3.0, p99: 3.0, max: 3.0 });
        assert_eq!(Quantiles::of(&[]), None);
        assert_eq!(Quantiles::of(&[f64::NAN]), None);
    }
}
