//! The last minute of the step, over which the absolute guards are measured,
//! and the "sustained for" rule.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::histogram::quantile_bucket;

/// Length of the window the guards look at.
pub(crate) const GUARD_WINDOW_MS: u64 = 60_000;
/// Bound on the ticks kept, should ticks come faster than once a second.
const MAX_WINDOW_TICKS: usize = 600;
/// Fewer canary samples than this in the window say nothing about a rate or
/// a p95, so the guards do not count it as a breach.
pub(crate) const GUARD_MIN_SAMPLES: u64 = 20;

/// One tick's canary summary (plus stable's request count, to tell "no
/// traffic" from "no canary traffic").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct WindowTick {
    pub now_ms: u64,
    pub canary_requests: u64,
    pub canary_errors: u64,
    pub canary_latency_samples: u64,
    /// Canary samples in buckets wholly above the p95 guard's limit.
    pub canary_above_p95_guard: u64,
    pub stable_requests: u64,
    /// The canary's non-empty buckets, for the reported p95.
    pub canary_buckets: Vec<(u32, u64)>,
}

/// Ticks of the last [`GUARD_WINDOW_MS`] and their running sums.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RecentWindow {
    ticks: VecDeque<WindowTick>,
    pub canary_requests: u64,
    pub canary_errors: u64,
    pub canary_latency_samples: u64,
    pub canary_above_p95_guard: u64,
    pub stable_requests: u64,
}

impl RecentWindow {
    /// Adds a tick and drops those older than the window. The dropped
    /// tick's bucket vector is reused, so a steady state allocates nothing.
    pub fn push(&mut self, mut tick: WindowTick, canary_buckets: &[(u32, u64)]) {
        let mut spare: Option<Vec<(u32, u64)>> = None;
        while let Some(oldest) = self.ticks.front() {
            let expired = oldest.now_ms.saturating_add(GUARD_WINDOW_MS) <= tick.now_ms;
            if !expired && self.ticks.len() < MAX_WINDOW_TICKS {
                break;
            }
            if let Some(old) = self.ticks.pop_front() {
                self.canary_requests = self.canary_requests.saturating_sub(old.canary_requests);
                self.canary_errors = self.canary_errors.saturating_sub(old.canary_errors);
                self.canary_latency_samples = self.canary_latency_samples.saturating_sub(old.canary_latency_samples);
                self.canary_above_p95_guard = self.canary_above_p95_guard.saturating_sub(old.canary_above_p95_guard);
                self.stable_requests = self.stable_requests.saturating_sub(old.stable_requests);
                spare = Some(old.canary_buckets);
            }
        }
        let mut buckets = spare.unwrap_or_default();
        buckets.clear();
        buckets.extend_from_slice(canary_buckets);
        tick.canary_buckets = buckets;
        self.canary_requests = self.canary_requests.saturating_add(tick.canary_requests);
        self.canary_errors = self.canary_errors.saturating_add(tick.canary_errors);
        self.canary_latency_samples = self.canary_latency_samples.saturating_add(tick.canary_latency_samples);
        self.canary_above_p95_guard = self.canary_above_p95_guard.saturating_add(tick.canary_above_p95_guard);
        self.stable_requests = self.stable_requests.saturating_add(tick.stable_requests);
        self.ticks.push_back(tick);
    }

    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }

    /// Whether the window's canary error rate is above `max_rate`, with
    /// enough requests to say so.
    pub fn error_rate_above(&self, max_rate: f64) -> bool {
        self.canary_requests >= GUARD_MIN_SAMPLES && self.canary_errors as f64 > max_rate * self.canary_requests as f64
    }

    /// Whether the window's canary p95 (nearest rank, upper bucket edge) is
    /// above the guard's limit: exactly when more samples lie above the
    /// limit than the n − ⌈0.95·n⌉ the p95 rank leaves room for.
    pub fn p95_above_guard(&self) -> bool {
        let samples = self.canary_latency_samples;
        let rank = ((0.95 * samples as f64).ceil() as u64).max(1);
        samples >= GUARD_MIN_SAMPLES && self.canary_above_p95_guard > samples - rank.min(samples)
    }

    /// The window's canary p95 bucket.
    pub fn canary_p95_bucket(&self) -> Option<u32> {
        let mut merged = std::collections::BTreeMap::<u32, u64>::new();
        for tick in &self.ticks {
            for &(index, count) in &tick.canary_buckets {
                let slot = merged.entry(index).or_default();
                *slot = slot.saturating_add(count);
            }
        }
        let total = merged.values().fold(0u64, |sum, count| sum.saturating_add(*count));
        quantile_bucket(merged.into_iter(), total, 0.95)
    }
}

/// A condition that must hold continuously for a while.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sustained {
    since_ms: Option<u64>,
}

impl Sustained {
    /// Records whether the condition holds at `now_ms`; true once it has
    /// held without a break for `hold_ms`. A tick where it does not hold
    /// restarts the clock.
    pub fn update(&mut self, holds: bool, now_ms: u64, hold_ms: u64) -> bool {
        if !holds {
            self.since_ms = None;
            return false;
        }
        let since = *self.since_ms.get_or_insert(now_ms);
        now_ms.saturating_sub(since) >= hold_ms
    }

    pub fn held_for_ms(&self, now_ms: u64) -> Option<u64> {
        self.since_ms.map(|since| now_ms.saturating_sub(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_needs_an_unbroken_run() {
        #[track_caller]
        fn check(pattern: &str, hold_ms: u64, expected_trip_at: Option<u64>) {
            let mut sustained = Sustained::default();
            let trip = pattern.bytes().enumerate().find_map(|(second, state)| {
                let now_ms = second as u64 * 1_000;
                sustained.update(state == b'#', now_ms, hold_ms).then_some(now_ms)
            });
            assert_eq!(trip, expected_trip_at, "{pattern}");
        }
        check("####", 2_000, Some(2_000));
        check("##.##.##", 2_000, None);
        check("..###", 2_000, Some(4_000));
        check("#", 0, Some(0));
        check("....", 0, None);
    }

    #[test]
    fn window_forgets_old_ticks_and_keeps_sums() {
        let mut window = RecentWindow::default();
        for second in 0..200u64 {
            let tick = WindowTick {
                now_ms: second * 1_000,
                canary_requests: 10,
                canary_errors: 1,
                canary_latency_samples: 10,
                canary_above_p95_guard: 0,
                stable_requests: 90,
                canary_buckets: Vec::new(),
            };
            window.push(tick, &[(100, 10)]);
        }
        assert_eq!(window.ticks.len(), 60);
        assert_eq!((window.canary_requests, window.canary_errors, window.stable_requests), (600, 60, 5_400));
        assert!(window.error_rate_above(0.05) && !window.error_rate_above(0.1));
        assert_eq!(window.canary_p95_bucket(), Some(100));
        assert!(!window.p95_above_guard());
    }

    #[test]
    fn p95_guard_counts_match_the_quantile_rule() {
        // 100 samples: p95 is the 95th; above the guard when 6 or more are.
        for (above, expected) in [(5, false), (6, true)] {
            let mut window = RecentWindow::default();
            let tick = WindowTick {
                now_ms: 0,
                canary_requests: 100,
                canary_latency_samples: 100,
                canary_above_p95_guard: above,
                ..WindowTick::default()
            };
            window.push(tick, &[]);
            assert_eq!(window.p95_above_guard(), expected, "{above} above");
        }
    }
}
