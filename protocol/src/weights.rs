//! The canary weight, in basis points, and the versioned weights message.

use std::fmt;

/// Number of basis points in 100%: the split has 0.01% resolution.
pub const FULL_BP: u16 = 10_000;

/// Share of traffic that goes to canary, in basis points (0..=10000).
///
/// The only way to build one is through a checked constructor, so a value of
/// this type is always in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CanaryWeight(u16);

impl CanaryWeight {
    /// All traffic on stable.
    pub const ZERO: Self = Self(0);
    /// All traffic on canary.
    pub const FULL: Self = Self(FULL_BP);

    /// A weight from basis points; 1 bp is 0.01%.
    pub fn from_bp(canary_weight_bp: u64) -> Result<Self, WeightError> {
        if canary_weight_bp > u64::from(FULL_BP) {
            return Err(WeightError::BpOutOfRange(canary_weight_bp));
        }
        // The range check above makes the narrowing lossless.
        Ok(Self(canary_weight_bp as u16))
    }

    /// A weight from a percentage with at most two decimals, as an SRE types
    /// it: `12.34` is 1234 bp. More precision than the split has is an error
    /// rather than a silent rounding, so what is asked is what is applied.
    pub fn from_percent(canary_percent: f64) -> Result<Self, WeightError> {
        if !canary_percent.is_finite() {
            return Err(WeightError::NotFinite);
        }
        if !(0.0..=100.0).contains(&canary_percent) {
            return Err(WeightError::PercentOutOfRange(canary_percent));
        }
        let scaled = canary_percent * 100.0;
        let bp = scaled.round();
        // Decimal fractions such as 12.34 are not exact in binary, so allow
        // for representation error far below the 0.01 resolution.
        if (scaled - bp).abs() > 1e-6 {
            return Err(WeightError::TooPrecise(canary_percent));
        }
        Ok(Self(bp as u16))
    }

    /// The weight in basis points.
    pub fn bp(self) -> u16 {
        self.0
    }

    /// The weight in percent, for display and JSON.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for CanaryWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}%", self.0 / 100, self.0 % 100)
    }
}

/// Why a requested weight was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightError {
    #[error("canary weight {0} bp is out of range: must be 0..=10000")]
    BpOutOfRange(u64),
    #[error("canary percent {0} is out of range: must be 0..=100")]
    PercentOutOfRange(f64),
    #[error("canary percent has more than two decimals ({0}); the split resolution is 0.01%")]
    TooPrecise(f64),
    #[error("canary percent is not a finite number")]
    NotFinite,
}

/// The weights every filter applies. `weights_version` increases by one on
/// every change, so a worker's applied version says exactly which change it
/// has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Weights {
    pub weights_version: u64,
    pub canary_weight: CanaryWeight,
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn check_percent(input: f64, expected: Result<u16, WeightError>) {
        assert_eq!(CanaryWeight::from_percent(input).map(CanaryWeight::bp), expected, "input {input}");
    }

    #[test]
    fn percent_parsing_table() {
        check_percent(0.0, Ok(0));
        check_percent(0.01, Ok(1));
        check_percent(0.5, Ok(50));
        check_percent(12.34, Ok(1234));
        check_percent(33.33, Ok(3333));
        check_percent(99.99, Ok(9999));
        check_percent(100.0, Ok(10_000));
        check_percent(0.001, Err(WeightError::TooPrecise(0.001)));
        check_percent(12.345, Err(WeightError::TooPrecise(12.345)));
        check_percent(-0.01, Err(WeightError::PercentOutOfRange(-0.01)));
        check_percent(100.01, Err(WeightError::PercentOutOfRange(100.01)));
        check_percent(f64::NAN, Err(WeightError::NotFinite));
        check_percent(f64::INFINITY, Err(WeightError::NotFinite));
    }

    #[test]
    fn every_two_decimal_percent_round_trips() {
        for bp in 0..=FULL_BP {
            let percent = f64::from(bp) / 100.0;
            let weight = CanaryWeight::from_percent(percent).expect("two decimals");
            assert_eq!(weight.bp(), bp);
            assert_eq!(weight.percent(), percent);
        }
    }

    #[test]
    fn bp_range_and_display() {
        assert_eq!(CanaryWeight::from_bp(10_001), Err(WeightError::BpOutOfRange(10_001)));
        assert_eq!(CanaryWeight::from_bp(1).map(|w| w.to_string()), Ok("0.01%".to_owned()));
        assert_eq!(CanaryWeight::FULL.to_string(), "100.00%");
    }
}
