//! `histogram`: the latency histogram's merge and quantile code, shared by
//! the filter (merging worker accumulators) and the analyzer (merging
//! reports and computing the p50/p95/p99 its gates and tests read).

use arbitrary::{Arbitrary, Unstructured};
use canary_protocol::LatencyHistogram;
use canary_protocol::latency::bucket_bounds;

/// Three histograms and the quantiles to ask of them, built from fuzz bytes.
#[derive(Debug)]
pub struct HistogramInput {
    /// `(latency µs, how many)` per histogram. Counts are full `u64`s so the
    /// fuzzer reaches saturation and counts beyond `f64`'s exact integers.
    pub recordings: [Vec<(u64, u64)>; 3],
    /// Quantiles as fractions of `u16::MAX`, so every one is in `0.0..=1.0`.
    pub quantiles: Vec<u16>,
    /// Arbitrary floats (NaN, infinities, out of range): must not panic.
    pub raw_quantiles: [f64; 4],
}

// Written out rather than derived: the derive pulls a second `syn` major
// into the workspace build for three lines of code.
impl<'a> Arbitrary<'a> for HistogramInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(HistogramInput {
            recordings: [u.arbitrary()?, u.arbitrary()?, u.arbitrary()?],
            quantiles: u.arbitrary()?,
            raw_quantiles: u.arbitrary()?,
        })
    }
}

/// Merge is associative and commutative (dense and sparse alike) and
/// conserves the total count; quantiles are monotone in q, equal between
/// the dense and sparse forms, and lie within the bounds of the lowest and
/// highest non-empty buckets (q = 0 and q = 1 hitting them exactly).
pub fn check_histogram(data: &[u8]) {
    let Ok(input) = HistogramInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let parts = input.recordings.map(|recordings| {
        // `record_n_us` finds its bucket itself, `record_us` lets the
        // `histogram` crate do it: they must agree (checked on the first
        // recording only, as each check costs three bucket scans).
        if let Some(&(latency_us, _)) = recordings.first() {
            let (mut by_bounds, mut by_crate) = (LatencyHistogram::new(), LatencyHistogram::new());
            by_bounds.record_n_us(latency_us, 1);
            by_crate.record_us(latency_us);
            assert_eq!(
                by_bounds.to_sparse(),
                by_crate.to_sparse(),
                "record_n_us and record_us disagree on {latency_us}"
            );
        }
        let mut histogram = LatencyHistogram::new();
        let mut recorded = 0u64;
        for (latency_us, count) in recordings {
            histogram.record_n_us(latency_us, count);
            recorded = recorded.saturating_add(count);
        }
        // Recording conserves counts too (saturating, like merge).
        assert_eq!(histogram.total_count(), recorded, "recording lost or invented counts");
        histogram
    });
    let [a, b, c] = &parts;

    // (a + b) + c == a + (b + c) == (c + b) + a
    let mut left = a.clone();
    left.merge(b);
    left.merge(c);
    let mut bc = b.clone();
    bc.merge(c);
    let mut right = a.clone();
    right.merge(&bc);
    assert_eq!(left.counts(), right.counts(), "merge is not associative");
    let mut reversed = c.clone();
    reversed.merge(b);
    reversed.merge(a);
    assert_eq!(left.counts(), reversed.counts(), "merge is not commutative");
    let mut via_sparse = LatencyHistogram::new();
    for part in &parts {
        via_sparse.merge_sparse(&part.to_sparse());
    }
    assert_eq!(via_sparse.counts(), left.counts(), "sparse merge differs from dense merge");
    let expected_total = parts.iter().fold(0u64, |sum, part| sum.saturating_add(part.total_count()));
    assert_eq!(left.total_count(), expected_total, "merge lost or invented counts");

    for histogram in parts.iter().chain([&left]) {
        check_quantiles(histogram, &input.quantiles, input.raw_quantiles);
    }
}

fn check_quantiles(histogram: &LatencyHistogram, quantiles: &[u16], raw_quantiles: [f64; 4]) {
    let sparse = histogram.to_sparse();
    let (Some(&(first, _)), Some(&(last, _))) = (sparse.buckets.first(), sparse.buckets.last()) else {
        assert!(histogram.is_empty(), "a non-empty histogram has no non-zero bucket");
        assert_eq!(histogram.quantiles_us([0.5]), None, "an empty histogram has no quantiles");
        return;
    };
    let saturated = histogram.counts().iter().try_fold(0u64, |sum, &count| sum.checked_add(count)).is_none();
    let bounds = bucket_bounds();
    let (lowest_us, highest_us) = (bounds[first as usize].1, bounds[last as usize].1);

    // A few quantiles per input suffice for monotonicity, and each costs a
    // scan of all 3,328 buckets twice: more would slow the fuzzer tenfold.
    let mut sorted: Vec<f64> = quantiles.iter().take(16).map(|&q| f64::from(q) / f64::from(u16::MAX)).collect();
    sorted.extend([0.0, 1.0]);
    sorted.sort_by(f64::total_cmp);
    let mut previous_us = 0u64;
    for q in sorted {
        let Some([estimate_us]) = histogram.quantiles_us([q]) else { panic!("no quantile of a non-empty histogram") };
        assert_eq!(sparse.quantiles_us([q]), Some([estimate_us]), "sparse and dense quantiles differ at q={q}");
        assert!(estimate_us >= previous_us, "quantile not monotone: q={q} gives {estimate_us} < {previous_us}");
        assert!(
            (lowest_us..=highest_us).contains(&estimate_us),
            "q={q} gives {estimate_us} µs outside the recorded buckets {lowest_us}..={highest_us}"
        );
        if q == 0.0 {
            assert_eq!(estimate_us, lowest_us, "q=0 is not the lowest bucket");
        }
        // Only when the counts did not saturate: past u64::MAX the running
        // sum reaches the (capped) rank of q = 1 before the last bucket,
        // which is the best a saturated histogram can say (found by this
        // target; fuzz/corpus/histogram/crash-saturated-total-q1).
        if q == 1.0 && !saturated {
            assert_eq!(estimate_us, highest_us, "q=1 is not the highest bucket");
        }
        previous_us = estimate_us;
    }
    // Out-of-range and NaN quantiles are clamped, never a panic or a value
    // outside the data.
    if let Some(estimates) = histogram.quantiles_us(raw_quantiles) {
        for estimate_us in estimates {
            assert!((lowest_us..=highest_us).contains(&estimate_us), "raw quantile gives {estimate_us} µs");
        }
    }
}
