use statrs::function::beta::checked_beta_reg;

use super::*;

/// The closed form against values computed by hand (x=1: the factor is
/// exactly one; x=5, ρ=¼, k=10: 2.5·3.5·4.5·5.5·6.5 / (10·11·12·13·14) · 4⁵ = 6)
/// and with an independent lgamma implementation (Python's `math.lgamma`).
#[test]
fn closed_form_matches_known_values() {
    #[track_caller]
    fn check(canary: u64, stable: u64, share: f64, k: f64, expected_ln: f64) {
        let got = lindon_malek_ln_bayes_factor(canary, stable, share, k).unwrap();
        assert!((got - expected_ln).abs() < 1e-9, "x={canary} y={stable} ρ={share} k={k}: {got} != {expected_ln}");
    }
    check(0, 0, 0.1, 100.0, 0.0);
    check(1, 0, 0.1, 100.0, 0.0);
    check(5, 0, 0.25, 10.0, 6f64.ln());
    check(0, 10, 0.1, 100.0, 0.046889784705163695);
    check(15, 3, 0.1, 100.0, 6.029334862467621);
    check(18, 32, 0.1, 100.0, 4.653862713111989);
    check(50, 50, 0.5, 100.0, -0.3478235538265295);
    check(100, 900, 0.1, 100.0, -1.206604800215132);
    check(300, 2000, 0.1, 100.0, 8.777389817004405);
    assert_eq!(lindon_malek_ln_bayes_factor(1, 1, 0.0, 100.0), None);
    assert_eq!(lindon_malek_ln_bayes_factor(1, 1, 1.0, 100.0), None);
    assert_eq!(lindon_malek_ln_bayes_factor(1, 1, f64::NAN, 100.0), None);
}

/// The grid mixture against the closed form restricted to θ ≥ ρ:
/// BF₁ = BF₂ · (1 − I_ρ(a+x, b+y)) / (1 − I_ρ(a, b)). statrs' incomplete beta
/// is accurate at these moderate counts.
#[test]
fn grid_matches_truncated_closed_form() {
    #[track_caller]
    fn check(canary: u64, stable: u64, share: f64) {
        let k = PRIOR_CONCENTRATION;
        let (a, b) = (k * share, k * (1.0 - share));
        let (x, y) = (canary as f64, stable as f64);
        let two_sided = lindon_malek_ln_bayes_factor(canary, stable, share, k).unwrap();
        // 1 − I_ρ(p, q) = I_{1−ρ}(q, p), computed directly so that a tiny
        // tail does not round to zero.
        let tail_posterior = checked_beta_reg(b + y, a + x, 1.0 - share).unwrap();
        let tail_prior = checked_beta_reg(b, a, 1.0 - share).unwrap();
        let expected = two_sided + tail_posterior.ln() - tail_prior.ln();
        let got = MixturePrior::one_sided(share).ln_bayes_factor(x, y, share);
        assert!((got - expected).abs() < 0.01, "x={canary} y={stable} ρ={share}: grid {got} vs closed {expected}");
    }
    for share in [0.1, 0.25, 0.5] {
        for (canary, stable) in [(0, 0), (1, 0), (3, 9), (15, 3), (18, 32), (40, 60), (100, 900), (300, 2000)] {
            check(canary, stable, share);
        }
    }
}

/// Canary better or equal never builds evidence: when θ̂ ≤ ρ every
/// component ψ ≥ 1 has likelihood ratio at most one.
#[test]
fn canary_better_never_counts_against_it() {
    let prior = MixturePrior::one_sided(0.1);
    for (canary, stable, share) in
        [(0, 10, 0.1), (0, 100_000, 0.1), (1, 9, 0.1), (10, 1_000, 0.1), (99, 901, 0.1), (0, 1, 0.5), (400, 600, 0.5)]
    {
        let ln_bf = prior.ln_bayes_factor(canary as f64, stable as f64, share);
        assert!(ln_bf <= 1e-12, "x={canary} y={stable} ρ={share}: ln BF {ln_bf} > 0");
        assert_eq!(ln_max_likelihood_ratio(canary as f64, stable as f64, share), 0.0);
    }
    // The same counts with the arms swapped are strong evidence.
    assert!(prior.ln_bayes_factor(100.0, 10.0, 0.1) > 50.0);
}

/// Under "no difference" the mixture is a martingale in the events: the next
/// event lands in canary with probability ρ, and the expected factor after it
/// equals the factor before it.
#[test]
fn mixture_is_a_martingale_under_the_null() {
    for share in [0.1, 0.3, 0.5] {
        let prior = MixturePrior::one_sided(share);
        for (canary, stable) in [(0.0, 0.0), (2.0, 5.0), (10.0, 90.0), (30.0, 20.0), (500.0, 4_500.0)] {
            let now = prior.ln_bayes_factor(canary, stable, share).exp();
            let next = share * prior.ln_bayes_factor(canary + 1.0, stable, share).exp()
                + (1.0 - share) * prior.ln_bayes_factor(canary, stable + 1.0, share).exp();
            assert!((next / now - 1.0).abs() < 1e-9, "ρ={share} x={canary} y={stable}: {next} vs {now}");
        }
    }
}

#[test]
fn max_likelihood_ratio_bounds_the_mixture() {
    let prior = MixturePrior::one_sided(0.1);
    for canary in [0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 1_000.0, 2.5] {
        for stable in [0.0, 1.0, 9.0, 90.0, 900.0, 9_000.0, 0.5] {
            for share in [0.05, 0.1, 0.2] {
                let mixture = prior.ln_bayes_factor(canary, stable, share);
                let bound = ln_max_likelihood_ratio(canary, stable, share);
                assert!(mixture <= bound + 1e-9, "x={canary} y={stable} ρ={share}: {mixture} > {bound}");
            }
        }
    }
}

#[test]
fn degenerate_inputs_are_neutral_not_panics() {
    let prior = MixturePrior::one_sided(f64::NAN);
    for share in [0.0, 1.0, -1.0, 2.0, f64::NAN, f64::INFINITY] {
        assert_eq!(prior.ln_bayes_factor(5.0, 5.0, share), 0.0);
        assert_eq!(ln_max_likelihood_ratio(5.0, 5.0, share), 0.0);
        assert_eq!(ratio_confidence_bounds(5.0, 5.0, share, 0.0, 5.0), (None, None));
    }
    assert_eq!(prior.ln_bayes_factor(0.0, 0.0, 0.1), 0.0);
    assert_eq!(prior.ln_bayes_factor(f64::NAN, 1.0, 0.1), 0.0);
    assert_eq!(prior.ln_bayes_factor(-1.0, 5.0, 0.1), 0.0);
    assert_eq!(prior.ln_bayes_factor(f64::INFINITY, 5.0, 0.1), 0.0);
    let huge = prior.ln_bayes_factor(u64::MAX as f64 / 2.0, u64::MAX as f64 / 2.0, 0.1);
    assert!(huge.is_finite());
    for share in [0.0, 1.0, 0.5] {
        assert!((MixturePrior::one_sided(share).total_weight() - 1.0).abs() < 1e-9);
        assert!((MixturePrior::two_sided(share).total_weight() - 1.0).abs() < 1e-9);
    }
}

#[test]
fn confidence_bounds_cover_the_estimate_and_imply_the_test() {
    let one_sided = MixturePrior::one_sided(0.1);
    let two_sided = MixturePrior::two_sided(0.1);
    let ln_inverse_alpha = 200f64.ln();
    for (canary, stable) in
        [(5.0, 45.0), (20.0, 40.0), (25.0, 40.0), (40.0, 60.0), (60.0, 40.0), (0.0, 50.0), (50.0, 0.0), (1.0, 500.0)]
    {
        let ln_mixture = two_sided.ln_bayes_factor(canary, stable, 0.1);
        let (lower, upper) = ratio_confidence_bounds(canary, stable, 0.1, ln_mixture, ln_inverse_alpha);
        // A sequence that excludes 1 from below means the (stronger)
        // one-sided test has rejected.
        if lower.is_some_and(|l| l > 1.0) {
            assert!(one_sided.ln_bayes_factor(canary, stable, 0.1) >= ln_inverse_alpha, "x={canary} y={stable}");
        }
        if canary > 0.0 && stable > 0.0 {
            let ratio_hat = (canary / stable) * 9.0;
            assert!(lower.unwrap_or(0.0) <= ratio_hat && upper.unwrap_or(f64::INFINITY) >= ratio_hat);
        }
    }
    // Strong evidence either way bounds the ratio away from 1.
    let bounds = |x, y| ratio_confidence_bounds(x, y, 0.1, two_sided.ln_bayes_factor(x, y, 0.1), ln_inverse_alpha);
    assert!(bounds(60.0, 40.0).0.is_some_and(|l| l > 1.0));
    assert!(bounds(1.0, 500.0).1.is_some_and(|u| u < 1.0));
    assert_eq!(bounds(0.0, 50.0).0, None);
    assert_eq!(bounds(50.0, 0.0).1, None);
}

#[test]
fn prior_concentrates_near_no_difference() {
    // Beta(10, 90) restricted to θ ≥ 0.1: most mass on ratios below 2.5.
    let prior = MixturePrior::one_sided(0.1);
    assert!(prior.mass_near(1.1, 1.05) > prior.mass_near(2.0, 1.05));
    assert!(prior.mass_near(2.0, 1.05) > prior.mass_near(10.0, 1.05));
    assert!(prior.mass_near(10.0, 1.05) > 0.0);
    assert!(prior.mass_near(1.5, 1.7) > 0.9);
    // The two-sided prior has about half its mass on either side of 1.
    let both = MixturePrior::two_sided(0.1);
    assert_eq!(both.len(), 2 * prior.len());
    assert!((both.mass_near(1.0, 1e6) - 1.0).abs() < 1e-9);
    let below = both.mass_near(0.5, 2.0 - 1e-9);
    assert!(below > 0.4 && below < 0.6, "{below}");
}

#[test]
fn log_sum_exp_handles_extremes() {
    assert_eq!(log_sum_exp([].into_iter()), f64::NEG_INFINITY);
    assert_eq!(log_sum_exp([f64::NEG_INFINITY, f64::NAN].into_iter()), f64::NEG_INFINITY);
    assert!((log_sum_exp([1000.0, 1000.0].into_iter()) - (1000.0 + 2f64.ln())).abs() < 1e-12);
    assert!((log_sum_exp([-1000.0, 0.0, f64::NEG_INFINITY].into_iter()) - 0.0).abs() < 1e-12);
}

#[test]
fn dispersion_is_one_for_binomial_splits_and_grows_with_clustering() {
    // Events spread evenly (no clustering): the sum of squares is below the
    // binomial expectation, and φ is clamped at one.
    let mut even = SplitDispersion::default();
    for _ in 0..100 {
        even.add(1, 10);
    }
    assert_eq!(even.factor(100, 1_000), 1.0);
    // All of a tick's events in one arm: every tick deviates by the whole
    // tick, φ ≈ e_t.
    let mut clustered = SplitDispersion::default();
    for tick in 0..100 {
        clustered.add(if tick % 10 == 0 { 10 } else { 0 }, 10);
    }
    let phi = clustered.factor(100, 1_000);
    assert!((phi - 10.0).abs() < 1e-9, "{phi}");
    assert_eq!(SplitDispersion::default().factor(0, 0), 1.0);
    assert_eq!(clustered.factor(0, 1_000), 1.0);

    // The corrected factor is never above the raw one when that is ≥ 1, and
    // at most the raw one always.
    let prior = MixturePrior::one_sided(0.1);
    for (x, y) in [(30u64, 90u64), (5, 200), (50, 50)] {
        let (adjusted, phi) = ln_adjusted_bayes_factor(&prior, x, y, 0.1, &clustered);
        let raw = prior.ln_bayes_factor(x as f64, y as f64, 0.1);
        assert!(phi > 1.0 && adjusted <= raw, "x={x} y={y}: {adjusted} vs {raw}");
    }
    let mut steady = SplitDispersion::default();
    for _ in 0..30 {
        steady.add(1, 4);
    }
    let (adjusted, phi) = ln_adjusted_bayes_factor(&prior, 30, 90, 0.1, &steady);
    assert_eq!((adjusted, phi), (prior.ln_bayes_factor(30.0, 90.0, 0.1), 1.0));
}
