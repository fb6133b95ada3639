//! What the engine says: the verdict, the gates and the evidence behind
//! them. Everything here is serialisable: it is shown by `GET /v1/rollout`
//! and persisted with every decision.

use serde::{Deserialize, Serialize};

use super::settings::HostHealth;

/// Rule of the error-rate e-process.
pub const RULE_ERROR_E_VALUE: &str = "error_rate_e_value";
/// Rule of the averaged latency count e-processes.
pub const RULE_LATENCY_E_VALUE: &str = "latency_e_value";
/// Rule of the time-uniform band on the latency distributions.
pub const RULE_LATENCY_BAND: &str = "latency_distribution_band";

/// The engine's judgement after one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub verdict: Verdict,
    pub gates: GateReport,
    pub evidence: Evidence,
}

/// Serialised with a `kind` tag: `{"kind": "regression", "rule": …, "summary": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Verdict {
    /// No regression detected so far.
    Healthy,
    /// Not enough traffic yet to judge. Never a pass.
    InsufficientData { reason: String },
    /// A sequential test crossed its threshold: roll back. Final for the
    /// rollout: the e-processes carry over to later steps.
    Regression { rule: String, summary: String },
    /// An absolute guard held for its duration: roll back. Final for the
    /// step.
    GuardTripped { rule: String, summary: String },
}

impl Verdict {
    /// Whether this verdict asks for a rollback.
    pub fn is_rollback(&self) -> bool {
        matches!(self, Verdict::Regression { .. } | Verdict::GuardTripped { .. })
    }

    /// The rule that fired, for rollbacks.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Verdict::Regression { rule, .. } | Verdict::GuardTripped { rule, .. } => Some(rule),
            Verdict::Healthy | Verdict::InsufficientData { .. } => None,
        }
    }

    /// Plain words for a decision's `reason`.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Healthy => "no regression detected".to_owned(),
            Verdict::InsufficientData { reason } => format!("insufficient data: {reason}"),
            Verdict::Regression { summary, .. } | Verdict::GuardTripped { summary, .. } => summary.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    Pass,
    Fail,
    /// Not enough data to decide; blocks promotion.
    Insufficient,
    /// Not applicable (turned off, or host health not configured); does not
    /// block promotion.
    Skipped,
}

/// One gate: its status, the measured value and the limit it is held to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub status: GateStatus,
    pub value: Option<f64>,
    pub limit: f64,
    pub detail: String,
}

/// The step's promotion gates, measured over the whole step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// Canary requests in the step against `min_canary_requests`.
    pub min_samples: Gate,
    pub error_rate: Gate,
    pub p95: Gate,
    /// Canary requests / (weight × all requests).
    pub throughput: Gate,
    pub healthy_hosts: Gate,
}

impl GateReport {
    /// Every gate passed or does not apply.
    pub fn all_pass(&self) -> bool {
        self.iter().all(|(_, gate)| matches!(gate.status, GateStatus::Pass | GateStatus::Skipped))
    }

    /// The gates with their names, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Gate)> {
        [
            ("min_samples", &self.min_samples),
            ("error_rate", &self.error_rate),
            ("p95", &self.p95),
            ("throughput", &self.throughput),
            ("healthy_hosts", &self.healthy_hosts),
        ]
        .into_iter()
    }
}

/// Numbers behind the verdict and the gates. Rates are fractions (0.01 is
/// 1%); e-values are capped at 1e300 so that they stay finite in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// 1 for the first `start_step`, 2 for the next, …
    pub step_number: u32,
    pub step_elapsed_ms: u64,
    /// The step's weight, as given to `start_step`.
    pub canary_weight: f64,
    /// Canary share of the step's requests.
    pub observed_canary_share: Option<f64>,
    pub alpha: AlphaSplit,
    pub canary: ArmEvidence,
    pub stable: ArmEvidence,
    /// The last minute, over which the guards are measured.
    pub recent: RecentEvidence,
    /// `None` when the error test is turned off.
    pub error_test: Option<ErrorTestEvidence>,
    /// `None` when the latency test is turned off.
    pub latency_test: Option<LatencyTestEvidence>,
    pub guards: GuardEvidence,
}

/// The Bonferroni split of α over the tests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AlphaSplit {
    pub total: f64,
    pub error_test: f64,
    pub latency_test: f64,
    /// The band's share over the whole rollout…
    pub latency_band: f64,
    /// …of which this step spends `latency_band / 2^step_number`.
    pub latency_band_this_step: f64,
}

/// One arm over the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmEvidence {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub latency_samples: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The canary over the guards' window (the last minute of the step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentEvidence {
    pub window_ms: u64,
    pub canary_requests: u64,
    pub canary_errors: u64,
    pub canary_error_rate: Option<f64>,
    pub canary_latency_samples: u64,
    pub canary_p95_ms: Option<f64>,
    pub stable_requests: u64,
}

/// The error-rate e-process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorTestEvidence {
    /// Product of the earlier steps' Bayes factors and this step's.
    pub e_value: f64,
    /// 1 / α_error: the rollout rolls back when `e_value` reaches it.
    pub threshold: f64,
    pub this_step_e_value: f64,
    pub earlier_steps_e_value: f64,
    pub canary_errors: u64,
    pub stable_errors: u64,
    /// ρ: the canary share of the step's requests used by the test.
    pub canary_share: Option<f64>,
    /// φ ≥ 1: how much more the errors' split between the arms varies from
    /// second to second than independent errors would; the counts are
    /// divided by it (1 means no correction).
    pub dispersion: f64,
    /// Confidence sequence (level 1 − α_error, this step, two-sided
    /// mixture on the dispersion-corrected counts) for the ratio of canary to
    /// stable error rates. `None`: unbounded on that side.
    pub rate_ratio_lower: Option<f64>,
    pub rate_ratio_upper: Option<f64>,
    /// The ratio bounds as a difference of error rates, (ratio − 1) × stable's
    /// rate; `None` when unbounded or stable saw no errors.
    pub rate_difference_lower: Option<f64>,
    pub rate_difference_upper: Option<f64>,
}

/// The latency count e-processes and the band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyTestEvidence {
    /// False until the thresholds are fixed (from the stable reference, or
    /// from the step's first stable traffic).
    pub calibrated: bool,
    /// Product of the earlier steps' averaged factors and this step's.
    pub e_value: f64,
    pub threshold: f64,
    pub this_step_e_value: f64,
    pub earlier_steps_e_value: f64,
    /// ρ: the canary share of the latency samples counted by the test.
    pub canary_share: Option<f64>,
    pub thresholds: Vec<ThresholdEvidence>,
    pub band: Option<BandEvidence>,
}

/// Counts above one latency threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdEvidence {
    /// The stable quantile the threshold was taken at.
    pub quantile: f64,
    /// Requests count as slower when their histogram bucket lies wholly
    /// above this (the upper edge of the quantile's bucket).
    pub threshold_ms: f64,
    pub canary_above: u64,
    pub stable_above: u64,
    pub canary_fraction_above: Option<f64>,
    pub stable_fraction_above: Option<f64>,
    /// This step's Bayes factor for this threshold.
    pub this_step_e_value: f64,
    /// φ ≥ 1, as for the error test.
    pub dispersion: f64,
}

/// The time-uniform band on the two latency CDFs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandEvidence {
    /// Largest F_stable(x) − F_canary(x) over the grid: how much more of
    /// stable than of canary is at most x.
    pub max_gap: f64,
    /// The x of that gap.
    pub at_ms: Option<f64>,
    /// The sum of the two arms' band radii there; the band separates when the
    /// gap exceeds it.
    pub radius: f64,
    pub separated: bool,
}

/// Where the absolute guards stand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardEvidence {
    /// How long the recent canary error rate has been above the guard.
    pub error_rate_breached_for_ms: Option<u64>,
    /// How long the recent canary p95 has been above the guard.
    pub p95_breached_for_ms: Option<u64>,
    /// The latest host health seen in the step.
    pub canary_hosts: Option<HostHealth>,
    pub unhealthy_host_ratio: Option<f64>,
}

/// An e-value from its logarithm, finite for JSON: e^700 is about 1e304.
pub(crate) fn e_value_from_ln(ln_e_value: f64) -> f64 {
    if ln_e_value.is_nan() { 1.0 } else { ln_e_value.min(700.0).exp() }
}
