//! What every benchmark prints for a human while and after it runs: one
//! progress line on stderr, overwritten in place, and one verdict line per
//! target ("met" or "missed", with the measured ratio or value).
//!
//! Verdicts are printed and written to the results, never enforced: a
//! benchmark that misses a target still succeeds, because it measured what it
//! set out to measure.

use std::io::Write as _;

use serde::{Deserialize, Serialize};

/// Which side of the limit meets the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// The measured value must be at most the limit (costs, latencies).
    AtMost,
    /// The measured value must be at least the limit (throughputs).
    AtLeast,
}

/// One target of the issue, and what was measured against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Benchmark name, e.g. `overhead`.
    pub benchmark: String,
    /// What is compared, e.g. `(d)/(c) CPU per request, concurrency 1`.
    pub quantity: String,
    /// The value the verdict is about (a median ratio, a p99, a rate).
    pub measured: f64,
    /// Smallest and largest value over rounds, when there were rounds.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub bound: Bound,
    pub limit: f64,
    /// Unit suffix as printed: `×`, ` ms`, ` reports/s`.
    pub unit: String,
    pub met: bool,
}

impl Verdict {
    pub fn new(benchmark: &str, quantity: &str, measured: f64, bound: Bound, limit: f64, unit: &str) -> Self {
        let met = match bound {
            Bound::AtMost => measured <= limit,
            Bound::AtLeast => measured >= limit,
        };
        Self {
            benchmark: benchmark.to_owned(),
            quantity: quantity.to_owned(),
            measured,
            min: None,
            max: None,
            bound,
            limit,
            unit: unit.to_owned(),
            met,
        }
    }

    /// Adds the spread over rounds that the verdict's value summarises.
    pub fn with_range(mut self, min: f64, max: f64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }

    /// `overhead: (d)/(c) CPU per request 1.04× [min 1.01, max 1.07] ≤ 1.05× MET`
    pub fn line(&self) -> String {
        let range = match (self.min, self.max) {
            (Some(min), Some(max)) => format!(" [min {}, max {}]", number(min), number(max)),
            _ => String::new(),
        };
        let sign = match self.bound {
            Bound::AtMost => "≤",
            Bound::AtLeast => "≥",
        };
        format!(
            "{}: {} {}{}{range} {sign} {}{} {}",
            self.benchmark,
            self.quantity,
            number(self.measured),
            self.unit,
            number(self.limit),
            self.unit,
            if self.met { "MET" } else { "MISSED" }
        )
    }
}

/// Three significant digits: enough to compare, few enough to read.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    let decimals = match magnitude {
        m if m >= 1_000.0 || m == 0.0 => return format!("{value:.0}"),
        m if m >= 100.0 => 1,
        m if m >= 10.0 => 2,
        _ => 3,
    };
    format!("{value:.decimals$}").trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Prints the progress line `[benchmark] message`, overwriting the previous
/// one on a terminal-like stderr. Call [`progress_done`] before printing
/// anything else.
pub fn progress(benchmark: &str, message: &str) {
    let mut stderr = std::io::stderr().lock();
    // `\x1b[K` clears what a longer previous line left behind.
    let _ = write!(stderr, "\r[{benchmark}] {message}\x1b[K");
    let _ = stderr.flush();
}

/// Ends the progress line so that the next output starts on a fresh line.
pub fn progress_done() {
    let _ = writeln!(std::io::stderr().lock());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_verdict_reads_as_the_issue_writes_it() {
        let verdict =
            Verdict::new("overhead", "(d)/(c) CPU per request", 1.04, Bound::AtMost, 1.05, "×").with_range(1.012, 1.07);
        assert!(verdict.met);
        assert_eq!(verdict.line(), "overhead: (d)/(c) CPU per request 1.04× [min 1.012, max 1.07] ≤ 1.05× MET");
    }

    #[test]
    fn throughput_verdict_is_met_from_above() {
        let missed = Verdict::new("scale", "reports per second on one core", 41_234.0, Bound::AtLeast, 50_000.0, " /s");
        assert!(!missed.met);
        assert_eq!(missed.line(), "scale: reports per second on one core 41234 /s ≥ 50000 /s MISSED");
        assert!(Verdict::new("scale", "x", 50_000.0, Bound::AtLeast, 50_000.0, "").met);
    }

    #[test]
    fn latency_verdict_at_the_limit_is_met() {
        let verdict = Verdict::new("propagation", "p99", 20.0, Bound::AtMost, 20.0, " ms");
        assert!(verdict.met);
        assert!(verdict.line().ends_with("≤ 20 ms MET"), "{}", verdict.line());
    }
}
