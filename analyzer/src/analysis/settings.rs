//! What the engine is told: the step's analysis settings and each tick's
//! counts.

use canary_protocol::SparseLatency;
use serde::{Deserialize, Serialize};

/// One step's analysis settings, resolved from the spec's defaults and the
/// step's overrides. The defaults are the brief's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnalysisSettings {
    /// Total false-rollback budget of the sequential tests, split over them
    /// (Bonferroni on e-values; see `docs/statistics.md`).
    pub alpha: f64,
    pub error_test: bool,
    pub latency_test: bool,
    /// Quantiles of stable's latency at which the count thresholds are set.
    pub latency_quantiles: Vec<f64>,
    /// Canary requests a step needs before it may pass.
    pub min_canary_requests: u64,
    /// Time after each weight change left out of the latency tests. A weight
    /// increase makes Envoy open new connections to the canary (and, in a
    /// mesh, new mTLS handshakes), which slow its first second or two; that
    /// is real but says nothing about the new version, and without this the
    /// latency test rolled back identical canaries (seen with real Envoy).
    pub latency_warmup_ms: u64,
    /// Smallest latency regression the latency count tests act on: canary's
    /// share of requests above a threshold must exceed stable's by more than
    /// this factor (0.25 = 25% more) before evidence accumulates. The test's
    /// null becomes "ratio ≤ 1 + tolerance", which keeps it valid.
    pub latency_tolerance: f64,
    pub guards: Guards,
    pub gates: Gates,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        AnalysisSettings {
            alpha: 0.01,
            error_test: true,
            latency_test: true,
            latency_quantiles: vec![0.5, 0.95, 0.99],
            min_canary_requests: 100,
            latency_warmup_ms: 5_000,
            latency_tolerance: 0.25,
            guards: Guards::default(),
            gates: Gates::default(),
        }
    }
}

/// Absolute rollback triggers. Each holds over the last minute of canary
/// traffic and must stay breached for its duration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Guards {
    pub max_error_rate: f64,
    pub max_error_rate_for_ms: u64,
    pub max_p95_ms: f64,
    pub max_p95_for_ms: u64,
    /// Share of canary hosts failing Envoy's health checks above which the
    /// rollout rolls back at once.
    pub max_unhealthy_host_ratio: f64,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            max_error_rate: 0.05,
            max_error_rate_for_ms: 120_000,
            max_p95_ms: 500.0,
            max_p95_for_ms: 300_000,
            max_unhealthy_host_ratio: 0.5,
        }
    }
}

/// Step promotion gates, evaluated over the whole step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gates {
    /// The canary's error rate must be below this.
    pub max_error_rate: f64,
    /// The canary's p95 must be below this.
    pub max_p95_ms: f64,
    /// Canary requests must reach this fraction of weight × all requests.
    pub min_throughput_ratio: f64,
    pub require_healthy_hosts: bool,
}

impl Default for Gates {
    fn default() -> Self {
        Gates { max_error_rate: 0.01, max_p95_ms: 200.0, min_throughput_ratio: 0.9, require_healthy_hosts: true }
    }
}

/// A setting out of range, named as in the rollout spec (camelCase under
/// `analysis`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("analysis.{field}: {problem}")]
pub struct SettingsError {
    pub field: &'static str,
    pub problem: String,
}

impl AnalysisSettings {
    /// Checks every field, so that a spec is rejected with a named field
    /// rather than analysed with surprising numbers. The engine never panics
    /// on settings that fail this check: it runs on
    /// [`AnalysisSettings::sanitized`].
    pub fn validate(&self) -> Result<(), SettingsError> {
        let fail = |field: &'static str, problem: String| Err(SettingsError { field, problem });
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return fail("alpha", format!("{} is not in (0, 1)", self.alpha));
        }
        if self.latency_quantiles.is_empty() && self.latency_test {
            return fail("latencyQuantiles", "is empty while the latency test is on".to_owned());
        }
        if let Some(q) = self.latency_quantiles.iter().find(|q| !(**q > 0.0 && **q < 1.0)) {
            return fail("latencyQuantiles", format!("{q} is not in (0, 1)"));
        }
        if !(0.0..=10.0).contains(&self.latency_tolerance) {
            return fail("latencyTolerance", format!("{} is not in [0, 10]", self.latency_tolerance));
        }
        let rate = |field: &'static str, value: f64| {
            if (0.0..=1.0).contains(&value) { Ok(()) } else { fail(field, format!("{value} is not in [0, 1]")) }
        };
        let positive_ms = |field: &'static str, value: f64| {
            if value > 0.0 && value.is_finite() {
                Ok(())
            } else {
                fail(field, format!("{value} is not a positive duration"))
            }
        };
        rate("guards.maxErrorRate", self.guards.max_error_rate)?;
        positive_ms("guards.maxP95", self.guards.max_p95_ms)?;
        rate("guards.maxUnhealthyHostRatio", self.guards.max_unhealthy_host_ratio)?;
        rate("gates.maxErrorRate", self.gates.max_error_rate)?;
        positive_ms("gates.maxP95", self.gates.max_p95_ms)?;
        rate("gates.minThroughputRatio", self.gates.min_throughput_ratio)?;
        Ok(())
    }
}

impl AnalysisSettings {
    /// These settings with every value [`AnalysisSettings::validate`] would
    /// reject replaced by its default (and invalid latency quantiles
    /// dropped). The engine runs on these, so that bad input can neither
    /// panic it nor put a number into its state that JSON cannot carry.
    pub fn sanitized(&self) -> AnalysisSettings {
        let defaults = AnalysisSettings::default();
        let rate = |value: f64, default: f64| if (0.0..=1.0).contains(&value) { value } else { default };
        let positive = |value: f64, default: f64| if value > 0.0 && value.is_finite() { value } else { default };
        AnalysisSettings {
            alpha: if self.alpha > 0.0 && self.alpha < 1.0 { self.alpha } else { defaults.alpha },
            error_test: self.error_test,
            latency_test: self.latency_test,
            latency_quantiles: self.latency_quantiles.iter().copied().filter(|q| *q > 0.0 && *q < 1.0).collect(),
            min_canary_requests: self.min_canary_requests,
            latency_warmup_ms: self.latency_warmup_ms,
            latency_tolerance: if (0.0..=10.0).contains(&self.latency_tolerance) {
                self.latency_tolerance
            } else {
                defaults.latency_tolerance
            },
            guards: Guards {
                max_error_rate: rate(self.guards.max_error_rate, defaults.guards.max_error_rate),
                max_error_rate_for_ms: self.guards.max_error_rate_for_ms,
                max_p95_ms: positive(self.guards.max_p95_ms, defaults.guards.max_p95_ms),
                max_p95_for_ms: self.guards.max_p95_for_ms,
                max_unhealthy_host_ratio: rate(
                    self.guards.max_unhealthy_host_ratio,
                    defaults.guards.max_unhealthy_host_ratio,
                ),
            },
            gates: Gates {
                max_error_rate: rate(self.gates.max_error_rate, defaults.gates.max_error_rate),
                max_p95_ms: positive(self.gates.max_p95_ms, defaults.gates.max_p95_ms),
                min_throughput_ratio: rate(self.gates.min_throughput_ratio, defaults.gates.min_throughput_ratio),
                require_healthy_hosts: self.gates.require_healthy_hosts,
            },
        }
    }
}

/// What one arm did in one tick (normally a second): deltas, not totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmTick {
    pub requests: u64,
    pub errors: u64,
    pub latency_us: SparseLatency,
}

/// Canary hosts as Envoy's health checks see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHealth {
    pub healthy: u32,
    pub total: u32,
}

/// One tick of observations. `now_ms` may be monotonic or unix time; only
/// differences are used, and a clock that steps back is treated as no time
/// passing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    pub now_ms: u64,
    pub stable: ArmTick,
    pub canary: ArmTick,
    /// `None` when host health is not known (not configured, or the admin
    /// endpoint did not answer this tick).
    pub canary_hosts: Option<HostHealth>,
}
