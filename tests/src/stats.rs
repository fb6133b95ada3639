//! The few statistics the split tests need, written out so the bounds a test
//! asserts are visible in its failure message.

/// Two-sided standard normal quantile for 99.9% coverage.
pub const Z_99_9: f64 = 3.290_527;

/// The normal-approximation interval `p ± z·sqrt(p(1−p)/n)` for the share of
/// `n` Bernoulli(p) trials, clamped to `0..=1`.
pub fn binomial_interval(p: f64, n: u64, z: f64) -> (f64, f64) {
    let half_width = z * (p * (1.0 - p) / n as f64).sqrt();
    ((p - half_width).max(0.0), (p + half_width).min(1.0))
}

/// The smallest `k` with `P(X > k) <= tail` for `X ~ Poisson(mean)`: a count
/// above it has less than `tail` probability.
pub fn poisson_upper_bound(mean: f64, tail: f64) -> u64 {
    let mut probability = (-mean).exp();
    let mut cumulative = probability;
    let mut k = 0u64;
    // The loop ends: cumulative tends to 1 and tail > 0; the cap guards
    // against a nonsensical mean.
    while 1.0 - cumulative > tail && k < 1_000_000 {
        k += 1;
        probability *= mean / k as f64;
        cumulative += probability;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_interval_at_ten_percent() {
        let (low, high) = binomial_interval(0.1, 20_000, Z_99_9);
        // sqrt(0.09 / 20000) = 0.002121; times 3.29 = 0.00698.
        assert!((low - 0.093_02).abs() < 1e-4 && (high - 0.106_98).abs() < 1e-4, "{low} {high}");
    }

    #[test]
    fn poisson_bounds() {
        // P(X <= 7 | 2) = 0.99890 and P(X <= 8 | 2) = 0.99976.
        assert_eq!(poisson_upper_bound(2.0, 0.001), 8);
        assert_eq!(poisson_upper_bound(0.0, 0.001), 0);
    }
}
