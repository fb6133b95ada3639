//! The catch-all latency test: a time-uniform band around each arm's
//! empirical latency CDF, on a grid of latencies fixed at the start of the
//! step. The rollout rolls back when canary's band lies wholly below
//! stable's somewhere (canary slower), which the count tests might miss when
//! a shift falls between their thresholds.
//!
//! Validity. At a grid point g, S_n = Σ (1{X_i ≤ g} − F_i(g)) over an arm's
//! first n samples is a martingale with increments in an interval of length
//! one, hence ¼-sub-Gaussian (Hoeffding's lemma), even when the distribution
//! F_i drifts over the step. Robbins' normal mixture of exp(λS − λ²n/8) over
//! λ ~ N(0, 1/c) with Ville's inequality gives, for every n at once,
//!
//! ```text
//! |S_n| < sqrt((n/4 + c) · ln((n/4 + c) / (c · a²)))   with probability ≥ 1 − a,
//! ```
//!
//! so the radius on F̂_n(g) is that over n. With a = α_band,step / (2G) for
//! G grid points and two arms, every one of the 2G bands holds at all times
//! with probability at least 1 − α_band,step. If canary and stable share a
//! distribution, a separation at any point means one band failed. Each step
//! spends α_band / 2^s (step s = 1, 2, …), which sums to α_band over the
//! rollout. The bands are per step because the canary share changes between
//! steps: under drift, arms sampled in different proportions over time do
//! not average the same distribution.
//!
//! The grid is a handful of stable quantiles; counting is one binary search
//! per non-empty histogram bucket, and the check is O(G).

use serde::{Deserialize, Serialize};

/// Stable quantiles at which the band's grid is placed.
pub(crate) const BAND_QUANTILES: [f64; 12] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999];

/// c in the normal mixture, in units of intrinsic time n/4: small values
/// narrow the band early (a few hundred samples) at a small cost later.
const MIXTURE_PRECISION: f64 = 50.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Band {
    /// Histogram bucket indices, strictly increasing; the CDFs are compared
    /// at the upper edges of these buckets.
    grid: Vec<u32>,
    /// `cells[i]`: samples in buckets after `grid[i-1]` up to `grid[i]`; the
    /// last cell holds everything above the grid.
    canary_cells: Vec<u64>,
    stable_cells: Vec<u64>,
    canary_samples: u64,
    stable_samples: u64,
    /// ln(1/a) for each arm and grid point.
    ln_inverse_alpha_point: f64,
}

/// Where the band stands, for the evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BandStatus {
    pub max_gap: f64,
    /// Grid bucket of the largest gap.
    pub at_bucket: Option<u32>,
    pub radius: f64,
    pub separated: bool,
}

/// The band acts only on a gap this much wider than its radius: canary's
/// CDF must sit more than 5 points below stable's somewhere. The band is the
/// catch-all for shapes the count tests miss, not a detector of a uniform
/// 3% slowdown, which it would otherwise find after a few minutes of
/// traffic. A margin only makes separation rarer, so validity is unchanged.
const PRACTICAL_GAP: f64 = 0.05;

impl Band {
    /// A band over `grid` (any bucket indices; sorted and deduplicated here)
    /// spending `alpha_step` of the false-rollback budget.
    pub fn new(mut grid: Vec<u32>, alpha_step: f64) -> Band {
        grid.sort_unstable();
        grid.dedup();
        let points = grid.len().max(1) as f64;
        let alpha_point = (alpha_step / (2.0 * points)).clamp(f64::MIN_POSITIVE, 1.0);
        Band {
            canary_cells: vec![0; grid.len() + 1],
            stable_cells: vec![0; grid.len() + 1],
            grid,
            canary_samples: 0,
            stable_samples: 0,
            ln_inverse_alpha_point: -alpha_point.ln(),
        }
    }

    /// Adds a tick's canary buckets, in ascending index order.
    pub fn add_canary(&mut self, buckets: &[(u32, u64)]) {
        self.canary_samples = add_to_cells(&self.grid, &mut self.canary_cells, self.canary_samples, buckets);
    }

    /// Adds a tick's stable buckets, in ascending index order.
    pub fn add_stable(&mut self, buckets: &[(u32, u64)]) {
        self.stable_samples = add_to_cells(&self.grid, &mut self.stable_cells, self.stable_samples, buckets);
    }

    /// Radius of one arm's band after `samples` samples.
    fn radius(&self, samples: u64) -> f64 {
        if samples == 0 {
            return f64::INFINITY;
        }
        let intrinsic_time = samples as f64 / 4.0 + MIXTURE_PRECISION;
        let ln_term = (intrinsic_time / MIXTURE_PRECISION).ln() + 2.0 * self.ln_inverse_alpha_point;
        (intrinsic_time * ln_term).sqrt() / samples as f64
    }

    pub fn status(&self) -> BandStatus {
        let radius = self.radius(self.canary_samples) + self.radius(self.stable_samples);
        let (mut canary_below, mut stable_below) = (0u64, 0u64);
        let mut best: (f64, Option<u32>) = (f64::NEG_INFINITY, None);
        if self.canary_samples > 0 && self.stable_samples > 0 {
            for (i, &bucket) in self.grid.iter().enumerate() {
                canary_below = canary_below.saturating_add(self.canary_cells.get(i).copied().unwrap_or(0));
                stable_below = stable_below.saturating_add(self.stable_cells.get(i).copied().unwrap_or(0));
                let gap =
                    stable_below as f64 / self.stable_samples as f64 - canary_below as f64 / self.canary_samples as f64;
                if gap > best.0 {
                    best = (gap, Some(bucket));
                }
            }
        }
        let max_gap = if best.0.is_finite() { best.0 } else { 0.0 };
        BandStatus {
            max_gap,
            at_bucket: best.1,
            radius,
            separated: radius.is_finite() && max_gap > radius + PRACTICAL_GAP,
        }
    }
}

/// Adds `buckets` (ascending indices, as the engine passes them) to the
/// cells, walking the grid alongside instead of searching it per bucket.
fn add_to_cells(grid: &[u32], cells: &mut [u64], samples: u64, buckets: &[(u32, u64)]) -> u64 {
    let mut samples = samples;
    let mut cell = 0;
    for &(index, count) in buckets {
        // Cell i holds indices in (grid[i-1], grid[i]]; the last, the rest.
        while grid.get(cell).is_some_and(|&g| g < index) {
            cell += 1;
        }
        if let Some(slot) = cells.get_mut(cell) {
            *slot = slot.saturating_add(count);
            samples = samples.saturating_add(count);
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_distribution_never_separates_and_a_shift_does() {
        let grid: Vec<u32> = (10..30).collect();
        let mut band = Band::new(grid.clone(), 0.001);
        // Identical shapes, 1:9 split, a thousand ticks.
        let shape: Vec<(u32, u64)> = (8..32).map(|i| (i, 1 + (i as u64 % 5))).collect();
        let scaled = |k: u64| shape.iter().map(|&(i, c)| (i, c * k)).collect::<Vec<_>>();
        for _ in 0..1_000 {
            band.add_canary(&scaled(1));
            band.add_stable(&scaled(9));
        }
        let status = band.status();
        assert!(!status.separated && status.max_gap.abs() < 1e-12, "{status:?}");

        // Canary's whole distribution five buckets slower.
        let mut shifted = Band::new(grid, 0.001);
        let slower: Vec<(u32, u64)> = shape.iter().map(|&(i, c)| (i + 5, c)).collect();
        let mut separated_at = None;
        for tick in 1..=1_000 {
            shifted.add_canary(&slower);
            shifted.add_stable(&scaled(9));
            if shifted.status().separated {
                separated_at = Some(tick);
                break;
            }
        }
        assert!(separated_at.is_some_and(|t| t < 100), "{separated_at:?}");
    }

    #[test]
    fn canary_faster_never_separates() {
        let mut band = Band::new(vec![10, 20, 30], 0.001);
        for _ in 0..10_000 {
            band.add_canary(&[(5, 100)]);
            band.add_stable(&[(25, 900)]);
        }
        assert!(!band.status().separated);
        assert!(band.status().max_gap <= 0.0);
    }

    #[test]
    fn radius_shrinks_like_root_n_and_is_infinite_without_data() {
        let band = Band::new(vec![1, 2, 3], 0.001);
        assert!(band.radius(0).is_infinite());
        let (r1, r2) = (band.radius(10_000), band.radius(1_000_000));
        assert!(r1 > r2 && r2 > 0.0 && r1 / r2 < 20.0 && r1 / r2 > 5.0, "{r1} {r2}");
        let empty = Band::new(Vec::new(), 0.001);
        assert!(!empty.status().separated);
    }
}
