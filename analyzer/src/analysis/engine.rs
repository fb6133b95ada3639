//! [`Analysis`]: the state of one rollout's analysis, folded tick by tick.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use canary_protocol::latency::BUCKET_COUNT;
use canary_protocol::{LatencyHistogram, SparseLatency};
use serde::{Deserialize, Serialize};

use super::band::{BAND_QUANTILES, Band};
use super::histogram::{DenseLatency, bucket_upper_ms, count_from, first_bucket_above_ms, quantile_bucket};
use super::mixture::{
    MixturePrior, SplitDispersion, ln_adjusted_bayes_factor, ln_max_likelihood_ratio, log_sum_exp,
    ratio_confidence_bounds,
};
use super::report::{
    AlphaSplit, ArmEvidence, Assessment, BandEvidence, ErrorTestEvidence, Evidence, Gate, GateReport, GateStatus,
    GuardEvidence, LatencyTestEvidence, RULE_ERROR_E_VALUE, RULE_LATENCY_BAND, RULE_LATENCY_E_VALUE, RecentEvidence,
    ThresholdEvidence, Verdict, e_value_from_ln,
};
use super::settings::{AnalysisSettings, ArmTick, HostHealth, Tick};
use super::window::{GUARD_WINDOW_MS, RecentWindow, Sustained, WindowTick};

/// Shares of α: error test, latency count tests, latency band. Errors get
/// half because an error regression is the common failure and its counts
/// are the sparsest; the band is a catch-all and gets the least. A test that
/// is turned off gives its share to the others.
const ALPHA_WEIGHT_ERROR: f64 = 0.5;
const ALPHA_WEIGHT_LATENCY: f64 = 0.4;
const ALPHA_WEIGHT_BAND: f64 = 0.1;

/// A stable reference with fewer samples than this is ignored, and the
/// thresholds are taken from the step's own stable traffic instead.
const MIN_REFERENCE_SAMPLES: u64 = 100;
/// Stable samples collected from the step before its thresholds are fixed
/// when there is no usable reference.
const CALIBRATION_SAMPLES: u64 = 500;

/// One rollout's analysis. Pure: time comes in as `now_ms`, and the whole
/// state serialises so that the controller can persist it and resume.
///
/// Call [`Analysis::start_step`] at each weight change, then
/// [`Analysis::observe`] once per tick. A [`Verdict::Regression`] is final
/// for the rollout (the e-processes carry over between steps); a
/// [`Verdict::GuardTripped`] is final for the step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Analysis {
    settings: AnalysisSettings,
    /// Number of `start_step` calls so far.
    steps_started: u32,
    /// ln of the product of the finished steps' error Bayes factors.
    error_carried_ln_e: f64,
    /// ln of the product of the finished steps' averaged latency factors.
    latency_carried_ln_e: f64,
    regression: Option<Trip>,
    step: Step,
    last_assessment: Option<Assessment>,
}

/// A latched rollback decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Trip {
    rule: String,
    summary: String,
    at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    number: u32,
    canary_weight: f64,
    started_ms: u64,
    last_tick_ms: Option<u64>,
    budget: AlphaBudget,
    canary: ArmTotals,
    stable: ArmTotals,
    /// How clustered the errors' split between the arms is.
    error_dispersion: SplitDispersion,
    latency: LatencyState,
    window: RecentWindow,
    /// First bucket counted above the p95 guard's limit.
    guard_p95_bucket: u32,
    error_breach: Sustained,
    p95_breach: Sustained,
    hosts: Option<HostHealth>,
    guard_trip: Option<Trip>,
    /// The step's priors, rebuilt from `canary_weight` after a restore.
    #[serde(skip)]
    prior: OnceLock<MixturePrior>,
    #[serde(skip)]
    two_sided_prior: OnceLock<MixturePrior>,
}

/// α for each test in one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct AlphaBudget {
    total: f64,
    error: f64,
    latency: f64,
    band_total: f64,
    band_step: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ArmTotals {
    requests: u64,
    errors: u64,
    latency: DenseLatency,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum LatencyState {
    Off,
    /// Collecting stable samples to fix the thresholds.
    Calibrating {
        stable_samples: u64,
        stable_buckets: BTreeMap<u32, u64>,
    },
    Ready(LatencyTests),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LatencyTests {
    thresholds: Vec<Threshold>,
    /// Latency samples counted since the thresholds were fixed.
    canary_samples: u64,
    stable_samples: u64,
    band: Band,
    /// The settings' `latency_tolerance`, fixed for the step.
    #[serde(default)]
    tolerance: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Threshold {
    quantile: f64,
    /// The quantile's bucket in the reference; samples in later buckets are
    /// "above". Thresholds are bucket edges, so no bucket straddles one.
    bucket: u32,
    canary_above: u64,
    stable_above: u64,
    dispersion: SplitDispersion,
}

impl Analysis {
    /// An analysis with no step yet: until [`Analysis::start_step`] the
    /// verdict is "insufficient data" and only the absolute guards run.
    pub fn new(settings: AnalysisSettings) -> Analysis {
        let settings = settings.sanitized();
        let step = Step::new(&settings, 0.0, None, 0, 0);
        Analysis {
            settings,
            steps_started: 0,
            error_carried_ln_e: 0.0,
            latency_carried_ln_e: 0.0,
            regression: None,
            step,
            last_assessment: None,
        }
    }

    /// Starts a step at `canary_share` (the weight, 0..=1). The finished
    /// step's Bayes factors are multiplied into the carried e-values; guard
    /// timers, gate counters and step counts restart. The latency thresholds
    /// come from `stable_reference` when it has at least 100 samples, else
    /// from the step's first 500 stable samples. Settings are used
    /// [sanitized](AnalysisSettings::sanitized).
    pub fn start_step(
        &mut self,
        settings: AnalysisSettings,
        canary_share: f64,
        stable_reference: Option<&LatencyHistogram>,
        now_ms: u64,
    ) {
        self.error_carried_ln_e += self.step.error_ln_bayes_factor();
        self.latency_carried_ln_e += self.step.latency_ln_bayes_factor();
        self.steps_started = self.steps_started.saturating_add(1);
        self.settings = settings.sanitized();
        self.step = Step::new(&self.settings, canary_share, stable_reference, now_ms, self.steps_started);
        self.last_assessment = None;
    }

    /// Folds one tick in and assesses it.
    pub fn observe(&mut self, tick: &Tick) -> Assessment {
        self.update(tick);
        let assessment = self.assess();
        self.last_assessment = Some(assessment.clone());
        assessment
    }

    /// The decision path of [`Analysis::observe`] without the evidence:
    /// the same state change and the same verdict, at a fraction of the cost.
    /// For callers that run millions of ticks (the simulation). Clears
    /// [`Analysis::last_assessment`], which would otherwise be stale.
    pub fn observe_verdict(&mut self, tick: &Tick) -> Verdict {
        self.update(tick);
        self.last_assessment = None;
        self.verdict()
    }

    pub fn last_assessment(&self) -> Option<&Assessment> {
        self.last_assessment.as_ref()
    }

    /// The assessment of the current state (what `observe` returned last,
    /// recomputed).
    pub fn assess(&self) -> Assessment {
        Assessment { verdict: self.verdict(), gates: self.gates(), evidence: self.evidence() }
    }

    pub fn settings(&self) -> &AnalysisSettings {
        &self.settings
    }

    fn update(&mut self, tick: &Tick) {
        let step = &mut self.step;
        let now_ms = tick.now_ms.max(step.last_tick_ms.unwrap_or(step.started_ms));
        step.last_tick_ms = Some(now_ms);
        let canary = CleanArm::new(&tick.canary);
        let stable = CleanArm::new(&tick.stable);
        step.canary.add(&canary);
        step.stable.add(&stable);
        step.error_dispersion.add(canary.errors, canary.errors.saturating_add(stable.errors));
        step.window.push(
            WindowTick {
                now_ms,
                canary_requests: canary.requests,
                canary_errors: canary.errors,
                canary_latency_samples: canary.latency_samples,
                canary_above_p95_guard: count_from(&canary.buckets, step.guard_p95_bucket),
                stable_requests: stable.requests,
                canary_buckets: Vec::new(),
            },
            &canary.buckets,
        );
        // Right after a weight change the canary's first connections are new
        // and slow; leave that out of the latency tests (not the guards).
        if now_ms.saturating_sub(step.started_ms) >= self.settings.latency_warmup_ms {
            step.latency.add(&self.settings, step.budget.band_step, &canary, &stable);
        }
        if let Some(hosts) = tick.canary_hosts {
            step.hosts = Some(hosts);
        }

        if self.regression.is_none() {
            self.regression = self.test_trip(now_ms);
        }
        let guard_trip = self.step.update_guards(&self.settings, tick.canary_hosts, now_ms);
        if self.step.guard_trip.is_none() {
            self.step.guard_trip = guard_trip;
        }
    }

    /// The first sequential test over its threshold, if any.
    fn test_trip(&self, now_ms: u64) -> Option<Trip> {
        let step = &self.step;
        let trip = |rule: &str, summary: String| Some(Trip { rule: rule.to_owned(), summary, at_ms: now_ms });
        if step.budget.error > 0.0 {
            let ln_threshold = -step.budget.error.ln();
            let (x, y) = (step.canary.errors, step.stable.errors);
            if let Some(share) = share_of(step.canary.requests, step.stable.requests) {
                // Cheap bound first: the mixture never beats its best
                // component, and the corrected one is at most that over φ.
                let phi = step.error_dispersion.factor(x, x.saturating_add(y));
                let bound = ln_max_likelihood_ratio(x as f64, y as f64, share) / phi;
                if self.error_carried_ln_e + bound >= ln_threshold {
                    let ln_e = self.error_carried_ln_e + step.error_ln_bayes_factor();
                    if ln_e >= ln_threshold {
                        let summary = format!(
                            "canary error rate {} vs stable {}, e-value {} >= {}",
                            percent(ratio(x, step.canary.requests)),
                            percent(ratio(y, step.stable.requests)),
                            format_e_value(e_value_from_ln(ln_e)),
                            format_e_value(1.0 / step.budget.error),
                        );
                        return trip(RULE_ERROR_E_VALUE, summary);
                    }
                }
            }
        }
        if let LatencyState::Ready(tests) = &step.latency {
            if step.budget.latency > 0.0 {
                let ln_threshold = -step.budget.latency.ln();
                if let Some(share) = share_of(tests.canary_samples, tests.stable_samples) {
                    let bound = tests
                        .thresholds
                        .iter()
                        .map(|t| {
                            let phi =
                                t.dispersion.factor(t.canary_above, t.canary_above.saturating_add(t.stable_above));
                            ln_max_likelihood_ratio(t.canary_above as f64, t.stable_above as f64, share) / phi
                        })
                        .fold(f64::NEG_INFINITY, f64::max);
                    if self.latency_carried_ln_e + bound >= ln_threshold {
                        let ln_factors: Vec<f64> =
                            tests.ln_bayes_factors(step.prior(), share).into_iter().map(|(f, _)| f).collect();
                        let ln_e = self.latency_carried_ln_e + ln_average(&ln_factors);
                        if ln_e >= ln_threshold {
                            let summary = tests.summary(&ln_factors, e_value_from_ln(ln_e), 1.0 / step.budget.latency);
                            return trip(RULE_LATENCY_E_VALUE, summary);
                        }
                    }
                }
            }
            if step.budget.band_step > 0.0 {
                let status = tests.band.status();
                if status.separated {
                    let at = status.at_bucket.map_or_else(|| "?".to_owned(), |b| format_ms(bucket_upper_ms(b)));
                    let summary = format!(
                        "canary latency distribution slower than stable's: {:.1} points more of stable is within {at}, \
                         beyond the time-uniform band of {:.1}",
                        status.max_gap * 100.0,
                        status.radius * 100.0,
                    );
                    return trip(RULE_LATENCY_BAND, summary);
                }
            }
        }
        None
    }

    fn verdict(&self) -> Verdict {
        let trips = [self.regression.as_ref().map(|t| (t, true)), self.step.guard_trip.as_ref().map(|t| (t, false))];
        // The earliest trip is the one the controller acted on.
        if let Some((trip, is_regression)) = trips.into_iter().flatten().min_by_key(|(trip, _)| trip.at_ms) {
            let (rule, summary) = (trip.rule.clone(), trip.summary.clone());
            return if is_regression {
                Verdict::Regression { rule, summary }
            } else {
                Verdict::GuardTripped { rule, summary }
            };
        }
        let step = &self.step;
        if self.steps_started == 0 {
            return Verdict::InsufficientData { reason: "no step started".to_owned() };
        }
        let needed = self.settings.min_canary_requests;
        if step.canary.requests < needed {
            return Verdict::InsufficientData {
                reason: format!("canary served {} of the {needed} requests a step needs", step.canary.requests),
            };
        }
        if !step.window.is_empty() && step.window.canary_requests == 0 {
            let reason = if step.window.stable_requests == 0 {
                "no traffic in the last minute"
            } else {
                "no canary traffic in the last minute"
            };
            return Verdict::InsufficientData { reason: reason.to_owned() };
        }
        Verdict::Healthy
    }

    fn gates(&self) -> GateReport {
        let gates = &self.settings.gates;
        let step = &self.step;
        let canary = &step.canary;
        let needed = self.settings.min_canary_requests;
        let enough = canary.requests >= needed.max(1);
        let gate = |status, value: Option<f64>, limit: f64, detail: String| Gate { status, value, limit, detail };

        let min_samples = gate(
            if canary.requests >= needed { GateStatus::Pass } else { GateStatus::Insufficient },
            Some(canary.requests as f64),
            needed as f64,
            "canary requests this step".to_owned(),
        );

        let error_rate_value = ratio(canary.errors, canary.requests);
        let error_rate = gate(
            match error_rate_value {
                Some(rate) if enough && rate < gates.max_error_rate => GateStatus::Pass,
                Some(_) if enough => GateStatus::Fail,
                _ => GateStatus::Insufficient,
            },
            error_rate_value,
            gates.max_error_rate,
            "canary error rate this step, must be below the limit".to_owned(),
        );

        let p95_value = canary.latency.quantile_ms(0.95);
        let p95 = gate(
            match p95_value {
                Some(p95) if canary.latency.total() >= needed.max(1) && p95 < gates.max_p95_ms => GateStatus::Pass,
                Some(_) if canary.latency.total() >= needed.max(1) => GateStatus::Fail,
                _ => GateStatus::Insufficient,
            },
            p95_value,
            gates.max_p95_ms,
            "canary p95 this step in ms, must be below the limit".to_owned(),
        );

        let all_requests = canary.requests.saturating_add(step.stable.requests);
        let expected = step.canary_weight * all_requests as f64;
        // The weight is sanitised to [0, 1], never NaN.
        let throughput = if step.canary_weight <= 0.0 {
            gate(GateStatus::Skipped, None, gates.min_throughput_ratio, "weight is 0".to_owned())
        } else if expected < needed.max(1) as f64 {
            gate(
                GateStatus::Insufficient,
                (expected > 0.0).then(|| canary.requests as f64 / expected),
                gates.min_throughput_ratio,
                "too few requests to compare the canary's share with its weight".to_owned(),
            )
        } else {
            let value = canary.requests as f64 / expected;
            gate(
                if value >= gates.min_throughput_ratio { GateStatus::Pass } else { GateStatus::Fail },
                Some(value),
                gates.min_throughput_ratio,
                format!("canary requests / (weight × all requests), expected {expected:.0}"),
            )
        };

        let healthy_hosts = match (gates.require_healthy_hosts, step.hosts) {
            (false, _) => gate(GateStatus::Skipped, None, 1.0, "not required".to_owned()),
            (true, None) => gate(
                GateStatus::Skipped,
                None,
                1.0,
                "host health unknown: not configured or not reported this step".to_owned(),
            ),
            (true, Some(hosts)) => {
                let healthy = hosts.healthy.min(hosts.total);
                let status =
                    if hosts.total > 0 && healthy == hosts.total { GateStatus::Pass } else { GateStatus::Fail };
                gate(
                    status,
                    ratio(u64::from(healthy), u64::from(hosts.total)),
                    1.0,
                    format!("{healthy} of {} canary hosts healthy", hosts.total),
                )
            }
        };

        GateReport { min_samples, error_rate, p95, throughput, healthy_hosts }
    }

    fn evidence(&self) -> Evidence {
        let step = &self.step;
        let now_ms = step.last_tick_ms.unwrap_or(step.started_ms);
        let budget = step.budget;
        let error_test = self.settings.error_test.then(|| self.error_evidence());
        let latency_test = self.settings.latency_test.then(|| self.latency_evidence());
        let hosts = step.hosts;
        Evidence {
            step_number: step.number,
            step_elapsed_ms: now_ms.saturating_sub(step.started_ms),
            canary_weight: step.canary_weight,
            observed_canary_share: share_of(step.canary.requests, step.stable.requests),
            alpha: AlphaSplit {
                total: budget.total,
                error_test: budget.error,
                latency_test: budget.latency,
                latency_band: budget.band_total,
                latency_band_this_step: budget.band_step,
            },
            canary: step.canary.evidence(),
            stable: step.stable.evidence(),
            recent: RecentEvidence {
                window_ms: GUARD_WINDOW_MS,
                canary_requests: step.window.canary_requests,
                canary_errors: step.window.canary_errors,
                canary_error_rate: ratio(step.window.canary_errors, step.window.canary_requests),
                canary_latency_samples: step.window.canary_latency_samples,
                canary_p95_ms: step.window.canary_p95_bucket().map(bucket_upper_ms),
                stable_requests: step.window.stable_requests,
            },
            error_test,
            latency_test,
            guards: GuardEvidence {
                error_rate_breached_for_ms: step.error_breach.held_for_ms(now_ms),
                p95_breached_for_ms: step.p95_breach.held_for_ms(now_ms),
                canary_hosts: hosts,
                unhealthy_host_ratio: hosts
                    .and_then(|h| ratio(u64::from(h.total.saturating_sub(h.healthy.min(h.total))), u64::from(h.total))),
            },
        }
    }

    fn error_evidence(&self) -> ErrorTestEvidence {
        let step = &self.step;
        let (x, y) = (step.canary.errors, step.stable.errors);
        let share = share_of(step.canary.requests, step.stable.requests);
        let ln_step = step.error_ln_bayes_factor();
        let ln_inverse_alpha = if step.budget.error > 0.0 { -step.budget.error.ln() } else { f64::INFINITY };
        let phi = step.error_dispersion.factor(x, x.saturating_add(y));
        let (lower, upper) = match share {
            Some(share) if ln_inverse_alpha.is_finite() => {
                // On the dispersion-corrected counts, like the test.
                let (x, y) = (x as f64 / phi, y as f64 / phi);
                let ln_two_sided = step.two_sided_prior().ln_bayes_factor(x, y, share);
                ratio_confidence_bounds(x, y, share, ln_two_sided, ln_inverse_alpha)
            }
            _ => (None, None),
        };
        let stable_rate = ratio(y, step.stable.requests).filter(|rate| *rate > 0.0);
        let difference = |bound: Option<f64>| stable_rate.zip(bound).map(|(rate, ratio)| rate * (ratio - 1.0));
        ErrorTestEvidence {
            e_value: e_value_from_ln(self.error_carried_ln_e + ln_step),
            threshold: if step.budget.error > 0.0 { 1.0 / step.budget.error } else { f64::MAX },
            this_step_e_value: e_value_from_ln(ln_step),
            earlier_steps_e_value: e_value_from_ln(self.error_carried_ln_e),
            canary_errors: x,
            stable_errors: y,
            canary_share: share,
            dispersion: phi,
            rate_ratio_lower: lower,
            rate_ratio_upper: upper,
            rate_difference_lower: difference(lower),
            rate_difference_upper: difference(upper),
        }
    }

    fn latency_evidence(&self) -> LatencyTestEvidence {
        let step = &self.step;
        let ln_step = step.latency_ln_bayes_factor();
        let mut evidence = LatencyTestEvidence {
            calibrated: false,
            e_value: e_value_from_ln(self.latency_carried_ln_e + ln_step),
            threshold: if step.budget.latency > 0.0 { 1.0 / step.budget.latency } else { f64::MAX },
            this_step_e_value: e_value_from_ln(ln_step),
            earlier_steps_e_value: e_value_from_ln(self.latency_carried_ln_e),
            canary_share: None,
            thresholds: Vec::new(),
            band: None,
        };
        if let LatencyState::Ready(tests) = &step.latency {
            let share = share_of(tests.canary_samples, tests.stable_samples);
            let ln_factors = share.map(|share| tests.ln_bayes_factors(step.prior(), share));
            evidence.calibrated = true;
            evidence.canary_share = share;
            evidence.thresholds = tests
                .thresholds
                .iter()
                .enumerate()
                .map(|(i, t)| ThresholdEvidence {
                    quantile: t.quantile,
                    threshold_ms: bucket_upper_ms(t.bucket),
                    canary_above: t.canary_above,
                    stable_above: t.stable_above,
                    canary_fraction_above: ratio(t.canary_above, tests.canary_samples),
                    stable_fraction_above: ratio(t.stable_above, tests.stable_samples),
                    this_step_e_value: e_value_from_ln(
                        ln_factors.as_ref().and_then(|f| f.get(i)).map_or(0.0, |(f, _)| *f),
                    ),
                    dispersion: ln_factors.as_ref().and_then(|f| f.get(i)).map_or(1.0, |(_, phi)| *phi),
                })
                .collect();
            let status = tests.band.status();
            evidence.band = (step.budget.band_step > 0.0).then(|| BandEvidence {
                max_gap: status.max_gap,
                at_ms: status.at_bucket.map(bucket_upper_ms),
                radius: if status.radius.is_finite() { status.radius } else { f64::MAX },
                separated: status.separated,
            });
        }
        evidence
    }
}

impl Step {
    fn new(
        settings: &AnalysisSettings,
        canary_weight: f64,
        stable_reference: Option<&LatencyHistogram>,
        now_ms: u64,
        number: u32,
    ) -> Step {
        let canary_weight = if canary_weight.is_finite() { canary_weight.clamp(0.0, 1.0) } else { 0.0 };
        let budget = AlphaBudget::new(settings, number);
        let latency = if !settings.latency_test || number == 0 {
            LatencyState::Off
        } else {
            match stable_reference.filter(|r| r.total_count() >= MIN_REFERENCE_SAMPLES) {
                Some(reference) => LatencyState::Ready(LatencyTests::from_reference(
                    reference.nonzero_buckets(),
                    reference.total_count(),
                    &settings.latency_quantiles,
                    budget.band_step,
                    settings.latency_tolerance,
                )),
                None => LatencyState::Calibrating { stable_samples: 0, stable_buckets: BTreeMap::new() },
            }
        };
        Step {
            number,
            canary_weight,
            started_ms: now_ms,
            last_tick_ms: None,
            budget,
            canary: ArmTotals::default(),
            stable: ArmTotals::default(),
            latency,
            window: RecentWindow::default(),
            guard_p95_bucket: first_bucket_above_ms(settings.guards.max_p95_ms),
            error_dispersion: SplitDispersion::default(),
            error_breach: Sustained::default(),
            p95_breach: Sustained::default(),
            hosts: None,
            guard_trip: None,
            prior: OnceLock::new(),
            two_sided_prior: OnceLock::new(),
        }
    }

    /// The one-sided prior of the rollback tests.
    fn prior(&self) -> &MixturePrior {
        self.prior.get_or_init(|| MixturePrior::one_sided(self.canary_weight))
    }

    /// The two-sided prior of the ratio's confidence sequence.
    fn two_sided_prior(&self) -> &MixturePrior {
        self.two_sided_prior.get_or_init(|| MixturePrior::two_sided(self.canary_weight))
    }

    /// ln of this step's error Bayes factor (0 when the test is off).
    fn error_ln_bayes_factor(&self) -> f64 {
        if self.budget.error <= 0.0 {
            return 0.0;
        }
        share_of(self.canary.requests, self.stable.requests).map_or(0.0, |share| {
            ln_adjusted_bayes_factor(
                self.prior(),
                self.canary.errors,
                self.stable.errors,
                share,
                &self.error_dispersion,
            )
            .0
        })
    }

    /// ln of this step's average of the latency Bayes factors (0 when off or
    /// not calibrated).
    fn latency_ln_bayes_factor(&self) -> f64 {
        match &self.latency {
            LatencyState::Ready(tests) if self.budget.latency > 0.0 => {
                share_of(tests.canary_samples, tests.stable_samples).map_or(0.0, |share| {
                    let factors: Vec<f64> =
                        tests.ln_bayes_factors(self.prior(), share).into_iter().map(|(f, _)| f).collect();
                    ln_average(&factors)
                })
            }
            _ => 0.0,
        }
    }

    /// Advances the guard timers; returns a trip when one fires.
    fn update_guards(&mut self, settings: &AnalysisSettings, hosts: Option<HostHealth>, now_ms: u64) -> Option<Trip> {
        let guards = &settings.guards;
        let error_breached = self.window.error_rate_above(guards.max_error_rate);
        let error_tripped = self.error_breach.update(error_breached, now_ms, guards.max_error_rate_for_ms);
        let p95_breached = self.window.p95_above_guard();
        let p95_tripped = self.p95_breach.update(p95_breached, now_ms, guards.max_p95_for_ms);
        let trip = |rule: String, summary: String| Some(Trip { rule, summary, at_ms: now_ms });
        if error_tripped {
            return trip(
                format!(
                    "error_rate_above_{}pct_for_{}",
                    trim_number(guards.max_error_rate * 100.0),
                    format_duration(guards.max_error_rate_for_ms)
                ),
                format!(
                    "canary error rate {} over the last minute, above {} for {}",
                    percent(ratio(self.window.canary_errors, self.window.canary_requests)),
                    percent(Some(guards.max_error_rate)),
                    format_duration(self.error_breach.held_for_ms(now_ms).unwrap_or(0)),
                ),
            );
        }
        if p95_tripped {
            let p95 = self.window.canary_p95_bucket().map_or_else(|| "?".to_owned(), |b| format_ms(bucket_upper_ms(b)));
            return trip(
                format!(
                    "p95_above_{}ms_for_{}",
                    trim_number(guards.max_p95_ms),
                    format_duration(guards.max_p95_for_ms)
                ),
                format!(
                    "canary p95 {p95} over the last minute, above {} for {}",
                    format_ms(guards.max_p95_ms),
                    format_duration(self.p95_breach.held_for_ms(now_ms).unwrap_or(0)),
                ),
            );
        }
        if let Some(hosts) = hosts.filter(|h| h.total > 0) {
            let unhealthy = hosts.total - hosts.healthy.min(hosts.total);
            if f64::from(unhealthy) > guards.max_unhealthy_host_ratio * f64::from(hosts.total) {
                return trip(
                    format!("unhealthy_hosts_above_{}pct", trim_number(guards.max_unhealthy_host_ratio * 100.0)),
                    format!(
                        "{unhealthy} of {} canary hosts fail Envoy health checks, more than {}",
                        hosts.total,
                        percent(Some(guards.max_unhealthy_host_ratio)),
                    ),
                );
            }
        }
        None
    }
}

impl AlphaBudget {
    fn new(settings: &AnalysisSettings, step_number: u32) -> AlphaBudget {
        let total = if settings.alpha > 0.0 && settings.alpha < 1.0 { settings.alpha } else { 0.01 };
        if step_number == 0 {
            // Before the first step nothing is tested, so nothing is spent.
            return AlphaBudget { total, error: 0.0, latency: 0.0, band_total: 0.0, band_step: 0.0 };
        }
        let error_weight = if settings.error_test { ALPHA_WEIGHT_ERROR } else { 0.0 };
        let (latency_weight, band_weight) =
            if settings.latency_test { (ALPHA_WEIGHT_LATENCY, ALPHA_WEIGHT_BAND) } else { (0.0, 0.0) };
        let weights = error_weight + latency_weight + band_weight;
        if weights <= 0.0 {
            return AlphaBudget { total, error: 0.0, latency: 0.0, band_total: 0.0, band_step: 0.0 };
        }
        let band_total = total * band_weight / weights;
        AlphaBudget {
            total,
            error: total * error_weight / weights,
            latency: total * latency_weight / weights,
            band_total,
            // Σ 2^-s over s ≥ 1 is one, so the band never spends more than
            // its share however many steps the rollout has.
            band_step: band_total * 0.5f64.powi(step_number.min(1_000) as i32),
        }
    }
}

impl ArmTotals {
    fn add(&mut self, arm: &CleanArm<'_>) {
        self.requests = self.requests.saturating_add(arm.requests);
        self.errors = self.errors.saturating_add(arm.errors);
        self.latency.add(&arm.buckets);
    }

    fn evidence(&self) -> ArmEvidence {
        ArmEvidence {
            requests: self.requests,
            errors: self.errors,
            error_rate: ratio(self.errors, self.requests),
            latency_samples: self.latency.total(),
            p50_ms: self.latency.quantile_ms(0.5),
            p95_ms: self.latency.quantile_ms(0.95),
            p99_ms: self.latency.quantile_ms(0.99),
        }
    }
}

impl LatencyState {
    fn add(&mut self, settings: &AnalysisSettings, band_alpha: f64, canary: &CleanArm<'_>, stable: &CleanArm<'_>) {
        match self {
            LatencyState::Off => {}
            LatencyState::Calibrating { stable_samples, stable_buckets } => {
                // Calibration ticks only fix the thresholds; they are not
                // counted, so the thresholds never depend on the data tested.
                for &(index, count) in stable.buckets.iter() {
                    let slot = stable_buckets.entry(index).or_default();
                    *slot = slot.saturating_add(count);
                }
                *stable_samples = stable_samples.saturating_add(stable.latency_samples);
                if *stable_samples >= CALIBRATION_SAMPLES {
                    let buckets = std::mem::take(stable_buckets);
                    *self = LatencyState::Ready(LatencyTests::from_reference(
                        buckets.into_iter(),
                        *stable_samples,
                        &settings.latency_quantiles,
                        band_alpha,
                        settings.latency_tolerance,
                    ));
                }
            }
            LatencyState::Ready(tests) => tests.add(canary, stable),
        }
    }
}

impl LatencyTests {
    fn from_reference(
        buckets: impl Iterator<Item = (u32, u64)>,
        total: u64,
        quantiles: &[f64],
        band_alpha: f64,
        tolerance: f64,
    ) -> LatencyTests {
        let buckets: Vec<(u32, u64)> = buckets.collect();
        let bucket_at = |q: f64| quantile_bucket(buckets.iter().copied(), total, q);
        let last_bucket = (BUCKET_COUNT - 1) as u32;
        let thresholds = quantiles
            .iter()
            .filter(|q| **q > 0.0 && **q < 1.0)
            .filter_map(|&quantile| {
                // A threshold in the last bucket has nothing above it.
                let bucket = bucket_at(quantile).filter(|b| *b < last_bucket)?;
                Some(Threshold {
                    quantile,
                    bucket,
                    canary_above: 0,
                    stable_above: 0,
                    dispersion: SplitDispersion::default(),
                })
            })
            .collect();
        let grid = BAND_QUANTILES.iter().filter_map(|&q| bucket_at(q)).collect();
        LatencyTests {
            thresholds,
            canary_samples: 0,
            stable_samples: 0,
            band: Band::new(grid, band_alpha),
            tolerance: tolerance.max(0.0),
        }
    }

    fn add(&mut self, canary: &CleanArm<'_>, stable: &CleanArm<'_>) {
        self.canary_samples = self.canary_samples.saturating_add(canary.latency_samples);
        self.stable_samples = self.stable_samples.saturating_add(stable.latency_samples);
        for threshold in &mut self.thresholds {
            let first_above = threshold.bucket.saturating_add(1);
            let (canary_above, stable_above) =
                (count_from(&canary.buckets, first_above), count_from(&stable.buckets, first_above));
            threshold.canary_above = threshold.canary_above.saturating_add(canary_above);
            threshold.stable_above = threshold.stable_above.saturating_add(stable_above);
            threshold.dispersion.add(canary_above, canary_above.saturating_add(stable_above));
        }
        self.band.add_canary(&canary.buckets);
        self.band.add_stable(&stable.buckets);
    }

    /// Each threshold's dispersion-corrected ln factor and its φ.
    fn ln_bayes_factors(&self, prior: &MixturePrior, share: f64) -> Vec<(f64, f64)> {
        let share = tolerant_share(share, self.tolerance);
        self.thresholds
            .iter()
            .map(|t| ln_adjusted_bayes_factor(prior, t.canary_above, t.stable_above, share, &t.dispersion))
            .collect()
    }

    /// Words for a latency rollback: the threshold with the most evidence.
    fn summary(&self, ln_factors: &[f64], e_value: f64, threshold: f64) -> String {
        let strongest =
            ln_factors.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).and_then(|(i, _)| self.thresholds.get(i));
        let detail = strongest.map_or_else(String::new, |t| {
            format!(
                "canary requests above {} (stable p{}): {} vs stable {}, ",
                format_ms(bucket_upper_ms(t.bucket)),
                trim_number(t.quantile * 100.0),
                percent(ratio(t.canary_above, self.canary_samples)),
                percent(ratio(t.stable_above, self.stable_samples)),
            )
        });
        format!("{detail}latency e-value {} >= {}", format_e_value(e_value), format_e_value(threshold))
    }
}

/// A tick's arm with errors capped at requests and only valid, non-empty
/// latency buckets, in ascending index order (as the wire format already
/// promises; anything else is repaired here, once, for every consumer).
struct CleanArm<'a> {
    requests: u64,
    errors: u64,
    latency_samples: u64,
    buckets: Cow<'a, [(u32, u64)]>,
}

impl<'a> CleanArm<'a> {
    fn new(arm: &'a ArmTick) -> CleanArm<'a> {
        let valid = |&(index, count): &(u32, u64)| (index as usize) < BUCKET_COUNT && count > 0;
        let SparseLatency { buckets } = &arm.latency_us;
        // One plain pass: this runs twice per tick in the simulation.
        let mut clean = true;
        let mut latency_samples = 0u64;
        let mut previous: Option<u32> = None;
        for bucket in buckets {
            clean &= valid(bucket) && previous.is_none_or(|p| p < bucket.0);
            previous = Some(bucket.0);
            latency_samples = latency_samples.saturating_add(bucket.1);
        }
        let buckets: Cow<'a, [(u32, u64)]> = if clean {
            Cow::Borrowed(buckets.as_slice())
        } else {
            let mut repaired: Vec<(u32, u64)> = buckets.iter().copied().filter(valid).collect();
            repaired.sort_unstable_by_key(|(index, _)| *index);
            latency_samples = repaired.iter().fold(0u64, |sum, (_, count)| sum.saturating_add(*count));
            Cow::Owned(repaired)
        };
        CleanArm { requests: arm.requests, errors: arm.errors.min(arm.requests), latency_samples, buckets }
    }
}

/// ρ = canary / (canary + stable), when both arms have something.
fn share_of(canary: u64, stable: u64) -> Option<f64> {
    (canary > 0 && stable > 0).then(|| canary as f64 / (canary as f64 + stable as f64))
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// ln of the average of the factors whose logs are given; 0 (a factor of
/// one) for none.
fn ln_average(ln_factors: &[f64]) -> f64 {
    if ln_factors.is_empty() {
        return 0.0;
    }
    log_sum_exp(ln_factors.iter().copied()) - (ln_factors.len() as f64).ln()
}

/// "4.8%", "0.1%", "0.02%", "?" for no value.
fn percent(rate: Option<f64>) -> String {
    match rate {
        Some(rate) if rate.is_finite() => {
            let pct = rate * 100.0;
            if pct != 0.0 && pct.abs() < 0.1 { format!("{pct:.2}%") } else { format!("{}%", trim_number(pct)) }
        }
        _ => "?".to_owned(),
    }
}

/// A number with at most one decimal and no trailing zero: 5, 2.5, 0.1.
fn trim_number(value: f64) -> String {
    let text = format!("{value:.1}");
    text.strip_suffix(".0").map_or(text.clone(), str::to_owned)
}

fn format_ms(ms: f64) -> String {
    if ms >= 10_000.0 { format!("{}s", trim_number(ms / 1_000.0)) } else { format!("{} ms", trim_number(ms)) }
}

/// "2m", "90s", "1h", "500ms".
fn format_duration(ms: u64) -> String {
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// "412", "3.5", "1.2e9".
fn format_e_value(value: f64) -> String {
    if value >= 1e6 {
        format!("{value:.1e}")
    } else if value >= 10.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

/// The null share of a count test that tolerates canary being up to
/// `1 + tolerance` times as likely as stable to have an event: an event
/// then falls in canary with odds `(1 + tolerance)` times the traffic odds.
/// The one-sided mixture tests ψ > 1 against this share, i.e. a ratio of
/// event rates above `1 + tolerance`; by the monotone likelihood ratio of the
/// binomial it stays a supermartingale for every ratio at or below that.
fn tolerant_share(share: f64, tolerance: f64) -> f64 {
    let factor = 1.0 + tolerance.max(0.0);
    let odds = share / (1.0 - share) * factor;
    if odds.is_finite() { odds / (1.0 + odds) } else { share }
}
