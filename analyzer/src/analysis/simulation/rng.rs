//! A small seeded generator and the samplers the simulation needs. Written
//! out here rather than taken from `rand`, so the simulation's numbers depend
//! on nothing but the seed and this file, across versions and platforms.

/// xoshiro256++ (Blackman and Vigna), seeded through SplitMix64.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: [u64; 4],
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        let mut mix = seed;
        let mut next = || {
            mix = mix.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = mix;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        SimRng { state: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1], safe to take the logarithm of.
    pub fn uniform_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let radius = (-2.0 * self.uniform_open().ln()).sqrt();
        radius * (std::f64::consts::TAU * self.uniform()).cos()
    }

    /// Poisson with the given mean: inversion below 10, Hörmann's PTRS
    /// transformed rejection above (the method numpy uses).
    pub fn poisson(&mut self, mean: f64) -> u64 {
        if mean.is_nan() || mean <= 0.0 || mean.is_infinite() {
            return 0;
        }
        if mean < 10.0 {
            let u = self.uniform();
            let mut probability = (-mean).exp();
            let mut cumulative = probability;
            let mut k = 0u64;
            // The cap only guards against rounding leaving `cumulative`
            // short of `u`; the tail beyond it is below 1e-30.
            while u > cumulative && k < 200 {
                k += 1;
                probability *= mean / k as f64;
                cumulative += probability;
            }
            return k;
        }
        // Only the rare slow path needs logarithms; the fast acceptance
        // (about 86% of draws) needs a square root and two uniforms.
        let sqrt_mean = mean.sqrt();
        let b = 0.931 + 2.53 * sqrt_mean;
        let a = -0.059 + 0.02483 * b;
        let inverse_alpha = 1.1239 + 1.1328 / (b - 3.4);
        let v_r = 0.9277 - 3.6224 / (b - 2.0);
        loop {
            let u = self.uniform() - 0.5;
            let v = self.uniform();
            let us = 0.5 - u.abs();
            let k = ((2.0 * a / us + b) * u + mean + 0.43).floor();
            if us >= 0.07 && v <= v_r {
                return k as u64;
            }
            if k < 0.0 || (us < 0.013 && v > us) {
                continue;
            }
            let lhs = v.ln() + inverse_alpha.ln() - (a / (us * us) + b).ln();
            let rhs = -mean + k * mean.ln() - ln_factorial(k);
            if lhs <= rhs {
                return k as u64;
            }
        }
    }

    /// Binomial(n, p) by skipping geometric gaps between successes: about
    /// n·min(p, 1−p) + 1 logarithms, cheap for the small rates simulated.
    pub fn binomial(&mut self, trials: u64, probability: f64) -> u64 {
        if trials == 0 || probability.is_nan() || probability <= 0.0 {
            return 0;
        }
        if probability >= 1.0 {
            return trials;
        }
        if probability > 0.5 {
            return trials - self.binomial(trials, 1.0 - probability);
        }
        let ln_failure = (-probability).ln_1p();
        let mut successes = 0u64;
        let mut position = 0u64;
        loop {
            let gap = (self.uniform_open().ln() / ln_failure).floor();
            if gap.is_nan() || gap >= trials as f64 {
                return successes;
            }
            position = position.saturating_add(gap as u64 + 1);
            if position > trials {
                return successes;
            }
            successes += 1;
        }
    }

    /// Gamma(shape, 1) (Marsaglia and Tsang).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape.is_nan() || shape <= 0.0 {
            return 0.0;
        }
        if shape < 1.0 {
            return self.gamma(shape + 1.0) * self.uniform_open().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.uniform_open();
            if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
                return d * v;
            }
        }
    }
}

/// ln(k!) for a non-negative integer k: exact products below 10, the
/// Stirling series (error below 1e-12) above. statrs' general `ln_gamma`
/// would do, but this runs in the simulation's inner loop.
fn ln_factorial(k: f64) -> f64 {
    if k < 10.0 {
        let mut product = 1.0;
        let mut i = 2.0;
        while i <= k {
            product *= i;
            i += 1.0;
        }
        return product.ln();
    }
    let inverse = 1.0 / k;
    let inverse_squared = inverse * inverse;
    k * k.ln() - k
        + 0.5 * (std::f64::consts::TAU * k).ln()
        + inverse * (1.0 / 12.0 - inverse_squared * (1.0 / 360.0 - inverse_squared / 1260.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(samples: impl Iterator<Item = f64>) -> (f64, f64) {
        let values: Vec<f64> = samples.collect();
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, variance)
    }

    #[test]
    fn samplers_have_the_right_mean_and_variance() {
        let mut rng = SimRng::new(7);
        let n = 200_000;
        for mean in [0.1, 0.9, 4.0, 9.9, 10.0, 45.0, 900.0] {
            let (m, v) = moments((0..n).map(|_| rng.poisson(mean) as f64));
            let tolerance = 5.0 * (mean / n as f64).sqrt();
            assert!((m - mean).abs() < tolerance, "poisson({mean}): mean {m}");
            assert!((v / mean - 1.0).abs() < 0.03, "poisson({mean}): variance {v}");
        }
        for (trials, p) in [(100u64, 0.05), (900, 0.001), (1_000, 0.7), (10, 0.5)] {
            let expected = trials as f64 * p;
            let (m, v) = moments((0..n).map(|_| rng.binomial(trials, p) as f64));
            assert!(
                (m - expected).abs() < 5.0 * (expected * (1.0 - p) / n as f64).sqrt(),
                "binomial({trials}, {p}): {m}"
            );
            assert!((v / (expected * (1.0 - p)) - 1.0).abs() < 0.03, "binomial({trials}, {p}): variance {v}");
        }
        for shape in [0.5, 1.0, 3.0] {
            let (m, v) = moments((0..n).map(|_| rng.gamma(shape)));
            assert!((m - shape).abs() < 0.02 * shape.max(1.0), "gamma({shape}): mean {m}");
            assert!((v / shape - 1.0).abs() < 0.05, "gamma({shape}): variance {v}");
        }
        let (m, v) = moments((0..n).map(|_| rng.normal()));
        assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.02, "normal: {m} {v}");
    }

    #[test]
    fn ln_factorial_matches_ln_gamma() {
        for k in 0..2_000u32 {
            let k = f64::from(k);
            let expected = statrs::function::gamma::ln_gamma(k + 1.0);
            assert!((ln_factorial(k) - expected).abs() < 1e-9 * expected.abs().max(1.0), "{k}");
        }
    }

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (SimRng::new(42), SimRng::new(42));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(SimRng::new(1).next_u64(), SimRng::new(2).next_u64());
        assert_eq!(SimRng::new(3).poisson(f64::NAN), 0);
        assert_eq!(SimRng::new(3).binomial(5, 1.0), 5);
    }
}
