//! The one-sided Lindon–Malek mixture on which arm each event fell in.
//!
//! An "event" is an error (error-rate test) or a request slower than a
//! threshold (latency count tests). If the canary is no worse than stable,
//! an event lands in the canary arm with probability ρ, the canary's share of
//! the traffic, whatever the overall event rate is doing. The alternative is
//! that it lands there with θ > ρ. Writing ψ = θ(1−ρ) / (ρ(1−θ)) for the odds
//! ratio, which under Poisson traffic is exactly the canary-to-stable ratio
//! of event rates, the likelihood ratio of `x` canary and `y` stable events is
//!
//! ```text
//! LR(ψ) = ψ^x / (1 − ρ + ρψ)^(x+y)
//! ```
//!
//! Lindon and Malek (NeurIPS 2022) mix the multinomial likelihood over a
//! Beta(kρ, k(1−ρ)) prior on θ, which has a closed form. We keep their prior
//! but restrict it to θ ≥ ρ (ψ ≥ 1, "canary worse") and integrate it on a
//! fine grid in u = ln ψ. The grid makes the Bayes factor a finite mixture of
//! likelihood ratios with data-independent weights: under "canary no worse"
//! every component is a nonnegative supermartingale with initial value 1
//! (a martingale when the rates are equal), so the mixture is one too, and
//! Ville's inequality bounds the chance that it ever reaches 1/α by α, however
//! often it is looked at. On the grid the prior density of u is
//! θ(u)^(kρ) (1−θ(u))^(k(1−ρ)), the Beta density times the Jacobian
//! dθ/du = θ(1−θ). The grid is fine enough that the mixture agrees with the
//! closed form truncated to θ ≥ ρ to well under a percent for the counts that
//! matter (see the tests), and unlike the closed form, which needs the
//! incomplete beta function at arguments in the hundreds of thousands, it
//! never loses precision.
//!
//! Everything is computed in log space, so counts in the billions neither
//! overflow nor underflow.

use serde::{Deserialize, Serialize};
use statrs::function::gamma::ln_gamma;

/// k in the Beta(kρ, k(1−ρ)) prior: the prior's weight in pseudo-events. A
/// hundred is Lindon and Malek's choice; smaller k favours larger effects.
pub const PRIOR_CONCENTRATION: f64 = 100.0;

/// The grid in u = ln ψ: cells growing geometrically by 5% from width 1e-4
/// at u = 0 up to width 0.025, then 0.025 wide up to u = 7 (ψ ≈ 1,100).
/// Near u = 0 the likelihood can be as narrow as 1/√(events) (a fraction of
/// a percent with a step's latency counts), and far out the effects are
/// large and detected on few events, where the likelihood is wide. A
/// coarser grid would cost power, never validity: any fixed discrete prior
/// gives a valid mixture.
const GRID_FIRST_WIDTH: f64 = 0.0001;
const GRID_GROWTH: f64 = 1.05;
const GRID_MAX_WIDTH: f64 = 0.025;
const GRID_MAX_LN_RATIO: f64 = 7.0;

/// The prior's canary share is clamped to this margin from 0 and 1 so its
/// Beta parameters stay positive when a step's weight is 0% or 100%.
const MIN_PRIOR_SHARE: f64 = 0.01;

/// The positive half of the grid: (cell middle, ln cell width), ascending.
fn positive_cells() -> &'static [(f64, f64)] {
    static CELLS: std::sync::OnceLock<Vec<(f64, f64)>> = std::sync::OnceLock::new();
    CELLS.get_or_init(|| {
        let mut cells = Vec::new();
        let (mut start, mut width) = (0.0, GRID_FIRST_WIDTH);
        while start < GRID_MAX_LN_RATIO {
            cells.push((start + 0.5 * width, width.ln()));
            start += width;
            width = (width * GRID_GROWTH).min(GRID_MAX_WIDTH);
        }
        cells
    })
}

/// A discretised Lindon–Malek prior: grid points u_j = ln ψ_j with log
/// weights summing to one.
#[derive(Debug, Clone, PartialEq)]
pub struct MixturePrior {
    ln_ratios: Vec<f64>,
    ln_weights: Vec<f64>,
}

impl MixturePrior {
    /// Lindon and Malek's Beta(kρ₀, k(1−ρ₀)) prior restricted to θ ≥ ρ₀
    /// (u > 0), for a step whose configured canary share is `prior_share`
    /// (ρ₀): the rollback test. The prior is fixed for the step before any
    /// of its data is seen, which is what keeps the mixture a
    /// supermartingale; the likelihood itself uses the observed share, so a
    /// weight that differs from the realised split does not bias the test.
    pub fn one_sided(prior_share: f64) -> MixturePrior {
        Self::on_cells(prior_share, positive_cells().iter().copied())
    }

    /// The same prior over both sides (|u| ≤ 7), for the confidence sequence
    /// of the ratio, which should be able to say "canary better" as well as
    /// "canary worse".
    pub fn two_sided(prior_share: f64) -> MixturePrior {
        let negative = positive_cells().iter().rev().map(|&(middle, ln_width)| (-middle, ln_width));
        Self::on_cells(prior_share, negative.chain(positive_cells().iter().copied()))
    }

    /// Midpoint rule: weight ∝ density(u) · width. The density of u = ln ψ
    /// under Beta(a, b) on θ = logistic(u + logit ρ₀) is θ^a (1−θ)^b: the Beta
    /// density times the Jacobian dθ/du = θ(1−θ).
    fn on_cells(prior_share: f64, cells: impl Iterator<Item = (f64, f64)>) -> MixturePrior {
        let share = if prior_share.is_finite() { prior_share } else { 0.5 };
        let share = share.clamp(MIN_PRIOR_SHARE, 1.0 - MIN_PRIOR_SHARE);
        let alpha = PRIOR_CONCENTRATION * share;
        let beta = PRIOR_CONCENTRATION * (1.0 - share);
        let logit_share = (share / (1.0 - share)).ln();
        let (ln_ratios, unnormalised): (Vec<f64>, Vec<f64>) = cells
            .map(|(ln_ratio, ln_width)| {
                // ln θ and ln(1−θ) via softplus so that neither rounds to −∞
                // at the ends of the grid.
                let logit_theta = ln_ratio + logit_share;
                (ln_ratio, ln_width - alpha * softplus(-logit_theta) - beta * softplus(logit_theta))
            })
            .unzip();
        let ln_total = log_sum_exp(unnormalised.iter().copied());
        MixturePrior { ln_ratios, ln_weights: unnormalised.into_iter().map(|w| w - ln_total).collect() }
    }

    /// ln of the mixture Bayes factor for `canary_events` and `stable_events`
    /// at observed canary share `share`. Counts are real so that they can be
    /// scaled by a dispersion factor (see [`SplitDispersion`]). Zero (a
    /// factor of one) when there is nothing to compare: no events, a share
    /// outside (0, 1), or counts that are not finite and non-negative.
    pub fn ln_bayes_factor(&self, canary_events: f64, stable_events: f64, share: f64) -> f64 {
        let Some(counts) = Counts::new(canary_events, stable_events, share) else {
            return 0.0;
        };
        log_sum_exp(
            self.ln_ratios
                .iter()
                .zip(&self.ln_weights)
                .map(|(ln_ratio, ln_weight)| ln_weight + counts.ln_likelihood_ratio(*ln_ratio)),
        )
    }

    /// Prior mass within a factor `spread` of odds ratio `ratio` (tests).
    #[cfg(test)]
    pub(crate) fn mass_near(&self, ratio: f64, spread: f64) -> f64 {
        let (low, high) = ((ratio / spread).ln(), (ratio * spread).ln());
        self.ln_ratios
            .iter()
            .zip(&self.ln_weights)
            .filter(|(u, _)| **u >= low && **u <= high)
            .map(|(_, w)| w.exp())
            .sum()
    }

    #[cfg(test)]
    pub(crate) fn total_weight(&self) -> f64 {
        self.ln_weights.iter().map(|w| w.exp()).sum()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ln_ratios.len()
    }
}

/// An upper bound on the one-sided [`MixturePrior::ln_bayes_factor`] that costs two
/// logarithms: the largest one-sided log likelihood ratio, x·KL(θ̂‖ρ) at the
/// maximum-likelihood θ̂ = x/(x+y) when θ̂ > ρ, else 0. A mixture never
/// exceeds its best component, so when this bound is below the threshold the
/// full mixture need not be computed. The engine uses it to stay cheap on
/// the millions of quiet ticks of the simulation.
pub fn ln_max_likelihood_ratio(canary_events: f64, stable_events: f64, share: f64) -> f64 {
    let Some(counts) = Counts::new(canary_events, stable_events, share) else {
        return 0.0;
    };
    let theta_hat = counts.canary / counts.total;
    if theta_hat <= share {
        return 0.0;
    }
    // n · KL(θ̂ ‖ ρ) with 0·ln 0 = 0.
    let canary_term = counts.canary * (theta_hat / share).ln();
    let stable_term = if counts.stable > 0.0 { counts.stable * ((1.0 - theta_hat) / (1.0 - share)).ln() } else { 0.0 };
    (canary_term + stable_term).max(0.0)
}

/// Bounds of the confidence sequence for the odds ratio ψ (the canary/stable
/// event-rate ratio), by inverting a mixture (`ln_mixture`, normally the
/// two-sided one): under any fixed ψ₀ the mixture divided by LR(ψ₀) is a
/// likelihood-ratio martingale, so
/// {ψ₀ : ln LR(ψ₀) > ln M − ln(1/α)} covers the true ψ at all times with
/// probability at least 1 − α. Returns `(lower, upper)`; `None` means
/// unbounded on that side (no events, or all events in one arm).
pub fn ratio_confidence_bounds(
    canary_events: f64,
    stable_events: f64,
    share: f64,
    ln_mixture: f64,
    ln_inverse_alpha: f64,
) -> (Option<f64>, Option<f64>) {
    let Some(counts) = Counts::new(canary_events, stable_events, share) else {
        return (None, None);
    };
    let level = ln_mixture - ln_inverse_alpha;
    // ln LR is concave in u = ln ψ with its maximum where θ(u) = θ̂.
    let logit = |p: f64| (p / (1.0 - p)).ln();
    let theta_hat = counts.canary / counts.total;
    let peak = if counts.canary == 0.0 {
        -LN_RATIO_SEARCH_LIMIT
    } else if counts.stable == 0.0 {
        LN_RATIO_SEARCH_LIMIT
    } else {
        (logit(theta_hat) - logit(share)).clamp(-LN_RATIO_SEARCH_LIMIT, LN_RATIO_SEARCH_LIMIT)
    };
    let above = |u: f64| counts.ln_likelihood_ratio(u) > level;
    if !above(peak) {
        // Cannot happen for a mixture of these likelihood ratios (the peak
        // dominates every component); treat rounding as "no information".
        return (None, None);
    }
    let lower =
        if above(-LN_RATIO_SEARCH_LIMIT) { None } else { Some(bisect(-LN_RATIO_SEARCH_LIMIT, peak, above).exp()) };
    let upper =
        if above(LN_RATIO_SEARCH_LIMIT) { None } else { Some(bisect(LN_RATIO_SEARCH_LIMIT, peak, above).exp()) };
    (lower, upper)
}

/// Search range in ln ψ for the confidence bounds: ratios beyond e^±30 are
/// reported as unbounded.
const LN_RATIO_SEARCH_LIMIT: f64 = 30.0;

/// The point where `inside` flips between `outside_end` (false) and
/// `inside_end` (true), to 1e-9 in u.
fn bisect(outside_end: f64, inside_end: f64, inside: impl Fn(f64) -> bool) -> f64 {
    let (mut out, mut inn) = (outside_end, inside_end);
    for _ in 0..64 {
        let mid = 0.5 * (out + inn);
        if inside(mid) {
            inn = mid;
        } else {
            out = mid;
        }
        if (inn - out).abs() < 1e-9 {
            break;
        }
    }
    inn
}

/// Overdispersion of the split of events between the arms, for a
/// quasi-likelihood correction.
///
/// The mixture is exact when, given each tick's events, each lands in the
/// canary independently (binomially). Arm-specific bursts (a canary pod's
/// hiccup, a sticky misbehaving client) cluster events in one arm within a
/// tick, so the canary's share of the step's events varies more than
/// binomially and the test rejects too often. This records, tick by tick,
/// Σ(x_t − θ̂·e_t)² against its binomial expectation θ̂(1−θ̂)·Σe_t, where x_t
/// and e_t are the tick's canary and total events and θ̂ the step's canary
/// share of events: an estimate of Var(X) over its binomial value. Centring
/// on θ̂ rather than ρ keeps a real, steady regression from counting as
/// dispersion. The engine divides the counts by φ = max(1, that) and uses
/// the smaller of the corrected and the uncorrected factor: by Jensen,
/// Σ w·LR^(1/φ) ≤ (Σ w·LR)^(1/φ), so the corrected factor is at most the
/// uncorrected one whenever that is at least one, and taking the minimum
/// makes it so always. Under the binomial model the guarantee is therefore
/// untouched; under overdispersion the correction restores approximate
/// calibration (checked by simulation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitDispersion {
    sum_canary_squared: f64,
    sum_canary_times_total: f64,
    sum_total_squared: f64,
}

/// φ is capped so that a pathological tick cannot erase all evidence.
const MAX_DISPERSION: f64 = 100.0;

impl SplitDispersion {
    /// Records one tick's canary and total events.
    pub fn add(&mut self, canary_events: u64, total_events: u64) {
        if total_events == 0 {
            return;
        }
        let (x, e) = (canary_events as f64, total_events as f64);
        self.sum_canary_squared += x * x;
        self.sum_canary_times_total += x * e;
        self.sum_total_squared += e * e;
    }

    /// φ ≥ 1 for the step so far, with `canary_events` of `total_events`.
    pub fn factor(&self, canary_events: u64, total_events: u64) -> f64 {
        if total_events == 0 || canary_events == 0 || canary_events >= total_events {
            return 1.0;
        }
        let total = total_events as f64;
        let theta = canary_events as f64 / total;
        let squared_deviations = self.sum_canary_squared - 2.0 * theta * self.sum_canary_times_total
            + theta * theta * self.sum_total_squared;
        let ratio = squared_deviations / (total * theta * (1.0 - theta));
        if ratio.is_finite() { ratio.clamp(1.0, MAX_DISPERSION) } else { 1.0 }
    }
}

/// The one-sided factor with the dispersion correction: the smaller of the
/// mixture on counts divided by φ and on the raw counts (see
/// [`SplitDispersion`]). Returns `(ln factor, φ)`.
pub fn ln_adjusted_bayes_factor(
    prior: &MixturePrior,
    canary_events: u64,
    stable_events: u64,
    share: f64,
    dispersion: &SplitDispersion,
) -> (f64, f64) {
    let (x, y) = (canary_events as f64, stable_events as f64);
    let phi = dispersion.factor(canary_events, canary_events.saturating_add(stable_events));
    let raw = prior.ln_bayes_factor(x, y, share);
    if phi <= 1.0 {
        return (raw, phi);
    }
    (raw.min(prior.ln_bayes_factor(x / phi, y / phi, share)), phi)
}

/// Lindon and Malek's two-sided Bayes factor in closed form, ln of
/// B(kρ+x, k(1−ρ)+y) / B(kρ, k(1−ρ)) / (ρ^x (1−ρ)^y). It is the reference the
/// grid is checked against and is reported nowhere else. `None` when ρ is
/// not in (0, 1) or k is not positive.
pub fn lindon_malek_ln_bayes_factor(canary_events: u64, stable_events: u64, share: f64, k: f64) -> Option<f64> {
    if !(share > 0.0 && share < 1.0 && k > 0.0 && k.is_finite()) {
        return None;
    }
    let (x, y) = (canary_events as f64, stable_events as f64);
    let (a, b) = (k * share, k * (1.0 - share));
    let ln_beta = |p: f64, q: f64| ln_gamma(p) + ln_gamma(q) - ln_gamma(p + q);
    Some(ln_beta(a + x, b + y) - ln_beta(a, b) - x * share.ln() - y * (1.0 - share).ln())
}

/// ln(e^a + e^b + …) in one pass and without overflow; terms that are −∞
/// or NaN contribute nothing. −∞ for an empty sequence.
pub(crate) fn log_sum_exp(values: impl Iterator<Item = f64>) -> f64 {
    let mut max = f64::NEG_INFINITY;
    let mut scaled_sum = 0.0;
    for value in values {
        if value.is_nan() || value == f64::NEG_INFINITY {
            continue;
        }
        if value <= max {
            scaled_sum += (value - max).exp();
        } else {
            scaled_sum = scaled_sum * (max - value).exp() + 1.0;
            max = value;
        }
    }
    if scaled_sum > 0.0 { max + scaled_sum.ln() } else { f64::NEG_INFINITY }
}

/// ln(1 + e^z), accurate at both ends.
fn softplus(z: f64) -> f64 {
    if z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() }
}

/// Validated counts of one comparison, as floats.
#[derive(Debug, Clone, Copy)]
struct Counts {
    canary: f64,
    stable: f64,
    total: f64,
    share: f64,
}

impl Counts {
    fn new(canary: f64, stable: f64, share: f64) -> Option<Counts> {
        let total = canary + stable;
        let valid = canary >= 0.0 && stable >= 0.0 && total > 0.0 && total.is_finite() && share > 0.0 && share < 1.0;
        valid.then_some(Counts { canary, stable, total, share })
    }

    /// ln LR(ψ) = x·u − (x+y)·ln(1 − ρ + ρ·e^u) at u = ln ψ.
    fn ln_likelihood_ratio(&self, ln_ratio: f64) -> f64 {
        // 1 − ρ + ρe^u = 1 + ρ·(e^u − 1), accurate for u near 0 either side.
        let ln_denominator = (self.share * ln_ratio.exp_m1()).ln_1p();
        self.canary * ln_ratio - self.total * ln_denominator
    }
}

#[cfg(test)]
#[path = "mixture_tests.rs"]
mod tests;
