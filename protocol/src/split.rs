//! The split decision: which version a request goes to.
//!
//! Both modes map a request to a bucket in `0..10000` and send it to canary
//! iff `bucket < canary_weight_bp`. Because the comparison is against the same
//! bucket for a given key, sticky routing is monotone: raising the weight only
//! moves keys from stable to canary, lowering it only from canary to stable.
//!
//! # Sticky bucket, specified
//!
//! `bucket(key) = ((XXH3_64(key, seed = 0) >> 32) * 10000) >> 32`
//!
//! XXH3-64 is a published, endian-independent hash with reference test
//! vectors; the multiply-shift maps its upper 32 bits to `0..10000` with a
//! bias below 3·10⁻⁶ per bucket and no division. The key is the raw bytes of
//! the configured header value or cookie value.

use crate::weights::{CanaryWeight, FULL_BP};

/// One of the two versions under release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    Stable,
    Canary,
}

impl Version {
    /// Both versions, stable first: the order used in reports and JSON.
    pub const ALL: [Version; 2] = [Version::Stable, Version::Canary];

    /// The route header value Envoy matches on.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Stable => "stable",
            Version::Canary => "canary",
        }
    }

    /// Index into per-version arrays: 0 for stable, 1 for canary.
    pub fn index(self) -> usize {
        match self {
            Version::Stable => 0,
            Version::Canary => 1,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Number of split buckets: one per basis point.
pub const BUCKETS: u16 = FULL_BP;

/// The version for a bucket at a weight: canary iff `bucket < weight`.
#[inline]
pub fn version_for_bucket(bucket: u16, weight: CanaryWeight) -> Version {
    if bucket < weight.bp() { Version::Canary } else { Version::Stable }
}

/// The sticky bucket of a key (see the module docs for the specification).
#[inline]
pub fn sticky_bucket(key: &[u8]) -> u16 {
    scale_to_buckets(xxhash_rust::xxh3::xxh3_64(key))
}

/// The version a sticky key gets at a weight.
#[inline]
pub fn sticky_version(key: &[u8], weight: CanaryWeight) -> Version {
    version_for_bucket(sticky_bucket(key), weight)
}

/// Multiply-shift of the upper 32 bits onto `0..BUCKETS`.
#[inline]
fn scale_to_buckets(hash: u64) -> u16 {
    // (hash >> 32) < 2^32, so the product is < 10000 · 2^32 and the result is
    // < 10000: the narrowing cannot truncate.
    (((hash >> 32) * u64::from(BUCKETS)) >> 32) as u16
}

/// Per-VM pseudo-random source for requests without a sticky key.
///
/// SplitMix64 (Steele, Lea, Flood 2014): three multiplies and shifts per
/// draw, passes BigCrush, and needs no crate or host call. It is written here
/// because it is six lines and the filter's hot path must not allocate or
/// call the host for randomness; it is not for anything security-related.
#[derive(Debug, Clone)]
pub struct SplitRng {
    state: u64,
}

impl SplitRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform bucket in `0..10000`.
    #[inline]
    pub fn next_bucket(&mut self) -> u16 {
        scale_to_buckets(self.next_u64())
    }

    /// The version for the next random request at a weight.
    #[inline]
    pub fn next_version(&mut self, weight: CanaryWeight) -> Version {
        version_for_bucket(self.next_bucket(), weight)
    }
}

/// The value of cookie `name` in a `Cookie` request header, without
/// allocating. Follows RFC 6265's `name=value; name2=value2` form, trims the
/// optional whitespace around pairs, and takes the first match.
pub fn cookie_value<'h>(cookie_header: &'h str, name: &str) -> Option<&'h str> {
    cookie_header.split(';').find_map(|pair| {
        let (pair_name, value) = pair.trim().split_once('=')?;
        (pair_name == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn weight(bp: u64) -> CanaryWeight {
        CanaryWeight::from_bp(bp).expect("valid weight")
    }

    #[test]
    fn bucket_edges() {
        assert_eq!(version_for_bucket(0, CanaryWeight::ZERO), Version::Stable);
        assert_eq!(version_for_bucket(0, weight(1)), Version::Canary);
        assert_eq!(version_for_bucket(1, weight(1)), Version::Stable);
        assert_eq!(version_for_bucket(9_999, CanaryWeight::FULL), Version::Canary);
        assert_eq!(scale_to_buckets(0), 0);
        assert_eq!(scale_to_buckets(u64::MAX), 9_999);
    }

    #[test]
    fn sticky_is_monotone_in_weight() {
        for key_index in 0..2_000u32 {
            let key = format!("user-{key_index}");
            let mut was_canary = false;
            for bp in (0..=10_000).step_by(50) {
                let is_canary = sticky_version(key.as_bytes(), weight(bp)) == Version::Canary;
                assert!(!was_canary || is_canary, "key {key} left canary when weight rose to {bp} bp");
                was_canary = is_canary;
            }
            assert!(was_canary, "every key is canary at 100%");
        }
    }

    #[test]
    fn random_split_matches_weight() {
        let mut rng = SplitRng::new(42);
        let draws = 200_000;
        let canary = (0..draws).filter(|_| rng.next_version(weight(1_000)) == Version::Canary).count();
        // 10% of 200k is 20k with a standard deviation of ~134; 5 sigma.
        assert!((canary as i64 - 20_000).abs() < 700, "got {canary} canary draws");
    }

    #[test]
    fn random_buckets_are_uniform() {
        let mut rng = SplitRng::new(7);
        let mut deciles = [0u32; 10];
        for _ in 0..100_000 {
            deciles[usize::from(rng.next_bucket() / 1_000)] += 1;
        }
        for (decile, count) in deciles.iter().enumerate() {
            assert!((9_500..10_500).contains(count), "decile {decile} got {count}");
        }
    }

    #[test]
    fn cookie_lookup_table() {
        let check = |header: &str, name: &str, expected: Option<&str>| {
            assert_eq!(cookie_value(header, name), expected, "{header:?} / {name}");
        };
        check("session=abc", "session", Some("abc"));
        check("a=1; session=abc; b=2", "session", Some("abc"));
        check("a=1;session=abc", "session", Some("abc"));
        check("xsession=abc", "session", None);
        check("session", "session", None);
        check("", "session", None);
        check("session=", "session", Some(""));
        check("session=a=b", "session", Some("a=b"));
    }
}
