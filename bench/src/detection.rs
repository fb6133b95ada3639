//! Detection time end to end: how long a bad canary serves real traffic
//! through Envoy before the analyzer rolls it back on its own, next to what
//! the simulation predicts for the same scenario.
//!
//! Each run starts a fresh stack (Envoy with the filter, the analyzer, a
//! stable and a bad canary backend), sends paced load through Envoy, lets
//! stable traffic warm up, then starts a rollout with the default spec, whose
//! first step holds the canary at 10%: at 1,000 req/s that is the 100 canary
//! requests a second of the issue and of the simulation's A/B scenarios.
//! Nothing else touches the rollout; the benchmark only watches
//! `GET /v1/rollout` until the controller rolls the canary back.
//!
//! - t0: the send time of the first request the canary answered, as the
//!   generator saw it (`x-served-by: canary`). Send times are taken just
//!   before each request is written, through the generator's per-request
//!   header hook.
//! - t1: the `at_unix_ms` of the rollback decision in the rollout's
//!   decision log: when the controller decided, before the weight change is
//!   pushed to the filters.
//! - detection time = t1 − t0. The last canary send time, the decision's
//!   evidence (rule, e-values, thresholds, each arm's p95) and the analyzer's
//!   own `time_to_decision_ms` (from the step's start) are recorded too.
//!
//! Two scenarios, matching the simulation's (`canary-simulate`) A/B rows,
//! whose parameters are read from the simulation itself:
//! - `errors`: canary 5% errors against stable's 0.1%, both backends equally
//!   fast.
//! - `latency`: canary latency ×1.5 (every quantile, p95 included). The
//!   backends inject a fixed delay plus uniform jitter; the canary's options
//!   are calibrated on a separate stack until the canary's p95, as the
//!   analyzer measures it, is 1.5× stable's (recorded with every attempt).
//!
//! The simulation runs in-process on the same engine code (the analyzer's
//! library), with the same seed scheme as `cargo xtask simulate`, so the
//! result file holds both numbers from the same build.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use canary_analyzer::analysis::AnalysisSettings;
use canary_analyzer::analysis::simulation::{self, Expectation, LatencyShift, Scenario, SimulationConfig};
use canary_tests::rollout::{decisions_of, phase, phase_of, rollout_of};
use canary_tests::{BackendOpts, Binaries, Load, LoadReport, Outcome, Stack};
use clap::ValueEnum;
use serde::Serialize;
use serde_json::{Value, json};

use crate::machine;
use crate::quantiles::{Quantiles, nearest_rank};
use crate::report::{self, Bound, Verdict};
use crate::results::RunContext;

const BENCHMARK: &str = "detection";
/// The canary weight of the default spec's first step, which the scenarios
/// assume (100 of 1,000 req/s). Each run records the weight the rollout
/// really set, so a change of the default shows.
pub const EXPECTED_CANARY_PERCENT: f64 = 10.0;
/// Envoy workers, as in the end-to-end tests.
pub const ENVOY_CONCURRENCY: usize = 2;
/// Load before the rollout starts: stable's upstream connections are open,
/// and the analyzer's stable window holds well over the 100 samples that
/// make it the step's latency reference, as the simulation's minute of
/// stable traffic is.
pub const WARM_UP: Duration = Duration::from_secs(2);
/// How often the benchmark reads `GET /v1/rollout` while it waits. t1 comes
/// from the decision's own timestamp, so this only sets how soon the run
/// notices the rollback, not what it measures.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long the data plane may take to apply the rollback before the load
/// stops (it normally takes milliseconds).
const CONVERGENCE_BOUND: Duration = Duration::from_secs(5);
/// Load kept running after convergence, so a canary request still in flight
/// at the rollback is answered and counted.
const TAIL: Duration = Duration::from_millis(300);
/// Runs in a row that may fail (stack start, API) before the benchmark
/// gives up: one failure on a busy machine is noise, three are a broken setup.
const MAX_CONSECUTIVE_FAILURES: usize = 3;

/// The `errors` scenario's backends are this fast, both of them, as in the
/// end-to-end rollback test: equal latency so the latency tests see no
/// difference, and small so the load needs few connections.
const ERRORS_SCENARIO_LATENCY_MS: u64 = 1;
const ERRORS_SCENARIO_JITTER_MS: u64 = 2;

/// What `latency` calibrates to: canary p95 / stable p95.
pub const TARGET_P95_RATIO: f64 = 1.5;
/// A calibration attempt this close to the target is kept as it is. The
/// histogram buckets are 0.8% wide and the jitter is whole milliseconds,
/// so a tighter bound would chase noise.
const CALIBRATION_TOLERANCE: f64 = 0.03;
const CALIBRATION_ATTEMPTS: usize = 4;
/// Most a calibration p95 may exceed its backend's slowest injected delay
/// by (Envoy, the filter, loopback and scheduling took 3–8 ms here). More
/// means the machine stalled during the window (another process's burst),
/// which says nothing about the backend: that attempt is measured again
/// rather than adjusted to.
const CALIBRATION_MAX_OVERHEAD_MS: f64 = 15.0;
/// The calibration stack's analyzer window: the p95s are read from the last
/// this many seconds, which leaves out the canary's cold connections.
const CALIBRATION_WINDOW_S: u64 = 6;
/// After the canary gets its weight, before the window starts to count.
const CALIBRATION_CONNECTION_WARM_UP: Duration = Duration::from_secs(2);

/// Added to the slowest backend's delay when sizing the load's connection
/// pool: Envoy, the filter and loopback.
const PROXY_ALLOWANCE_MS: f64 = 5.0;
/// At least as many connections as the end-to-end tests use at 1,000 req/s,
/// so both Envoy workers get traffic.
const MIN_LOAD_CONNECTIONS: usize = 16;
const MAX_LOAD_CONNECTIONS: usize = 256;

/// The two bad canaries of the issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioKind {
    /// Canary 5% errors, stable the simulation's 0.1%.
    Errors,
    /// Canary p95 ×1.5 (every latency ×1.5).
    Latency,
}

impl ScenarioKind {
    pub fn label(self) -> &'static str {
        match self {
            ScenarioKind::Errors => "5% errors",
            ScenarioKind::Latency => "p95 ×1.5",
        }
    }

    /// Whether `scenario` is the simulation's row for this kind. Matched on
    /// the parameters rather than the name, so a renamed row is still found.
    fn matches(self, scenario: &Scenario) -> bool {
        let regression = matches!(scenario.expectation, Expectation::Regression { .. });
        match self {
            ScenarioKind::Errors => {
                regression
                    && scenario.canary_latency == LatencyShift::None
                    && (scenario.canary_error_rate - 0.05).abs() < 1e-9
            }
            ScenarioKind::Latency => {
                regression
                    && scenario.canary_latency == LatencyShift::Scale(TARGET_P95_RATIO)
                    && scenario.canary_error_rate == scenario.stable_error_rate
            }
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct DetectionOptions {
    /// Real-Envoy runs per scenario.
    pub runs: usize,
    pub scenarios: Vec<ScenarioKind>,
    /// Load through Envoy, both versions together.
    pub rate_per_second: f64,
    /// The filter's `report_interval_ms`: how often each filter VM sends its
    /// counts, hence how stale the analyzer's view is at a tick.
    pub report_interval_ms: u64,
    /// A run without a rollback this long after the rollout started is
    /// recorded as "not rolled back".
    pub run_timeout_s: u64,
    /// Simulated rollouts per scenario.
    pub simulation_runs: usize,
    pub simulation_seed: u64,
    /// `latency` scenario: stable's fixed delay and uniform jitter (0..=N).
    pub stable_latency_ms: u64,
    pub stable_jitter_ms: u64,
    /// `latency` scenario: the canary's, when given; otherwise 1.5× stable's
    /// to start with, then calibrated.
    pub canary_latency_ms: Option<u64>,
    pub canary_jitter_ms: Option<u64>,
    pub smoke: bool,
}

impl DetectionOptions {
    pub const DEFAULT_RUNS: usize = 20;
    pub const DEFAULT_SCENARIOS: [ScenarioKind; 2] = [ScenarioKind::Errors, ScenarioKind::Latency];
    pub const DEFAULT_RATE_PER_SECOND: f64 = 1_000.0;
    /// The filter's own default (`docs/contract.md`): what production runs.
    pub const DEFAULT_REPORT_INTERVAL_MS: u64 = 1_000;
    pub const DEFAULT_RUN_TIMEOUT_S: u64 = 60;
    /// As many as `cargo xtask simulate` runs per A/B scenario.
    pub const DEFAULT_SIMULATION_RUNS: usize = 500;
    pub const DEFAULT_SIMULATION_SEED: u64 = 1;
    /// 50–70 ms, the simulation's median of 50 ms at the bottom: slow
    /// enough that the proxy's few milliseconds (3–8 ms here, varying with
    /// the machine's load) barely move the p95 ratio, fast enough that
    /// 1,000 req/s needs about 220 connections. With 20 + 0..=10 ms the same
    /// overhead swing moved the measured ratio between 1.38 and 1.60.
    pub const DEFAULT_STABLE_LATENCY_MS: u64 = 50;
    pub const DEFAULT_STABLE_JITTER_MS: u64 = 20;
    /// One run of `errors`: proves the benchmark works.
    pub const SMOKE_RUNS: usize = 1;
    pub const SMOKE_SCENARIOS: [ScenarioKind; 1] = [ScenarioKind::Errors];
    pub const SMOKE_RUN_TIMEOUT_S: u64 = 30;
    pub const SMOKE_SIMULATION_RUNS: usize = 100;
}

/// `canary-bench detection` flags. Flags left out take the `--smoke` preset
/// when it is given, else the defaults shown.
#[derive(Debug, clap::Args)]
pub struct DetectionArgs {
    /// Real-Envoy runs per scenario, one fresh stack each [default: 20;
    /// smoke: 1].
    #[arg(long)]
    pub runs: Option<usize>,
    /// Scenarios, in this order [default: errors,latency; smoke: errors].
    #[arg(long, value_delimiter = ',')]
    pub scenario: Option<Vec<ScenarioKind>>,
    /// Load through Envoy in requests per second; the default spec's first
    /// step sends 10% of it to the canary [default: 1000].
    #[arg(long)]
    pub rate: Option<f64>,
    /// The filter's report interval [default: 1000, the filter's own].
    #[arg(long)]
    pub report_interval_ms: Option<u64>,
    /// Longest wait for the rollback per run [default: 60; smoke: 30].
    #[arg(long)]
    pub timeout_s: Option<u64>,
    /// Simulated rollouts per scenario [default: 500; smoke: 100].
    #[arg(long)]
    pub sim_runs: Option<usize>,
    /// Base seed of the simulation, as `canary-simulate --seed` [default: 1].
    #[arg(long)]
    pub sim_seed: Option<u64>,
    /// `latency`: stable backend's fixed delay [default: 50].
    #[arg(long)]
    pub stable_latency_ms: Option<u64>,
    /// `latency`: stable backend's uniform jitter, 0..=N ms [default: 20].
    #[arg(long)]
    pub stable_jitter_ms: Option<u64>,
    /// `latency`: canary backend's fixed delay; given, it is only measured,
    /// not calibrated [default: calibrated from 1.5× stable's].
    #[arg(long)]
    pub canary_latency_ms: Option<u64>,
    /// `latency`: canary backend's jitter [default: 1.5× stable's].
    #[arg(long)]
    pub canary_jitter_ms: Option<u64>,
    /// Results directory [default: bench/results/<YYYY-MM-DD>-<hostname>;
    /// smoke: under the target directory, so it never overwrites a result].
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// One run of the errors scenario: checks the benchmark works (for CI).
    #[arg(long)]
    pub smoke: bool,
}

impl DetectionArgs {
    pub fn options(&self) -> DetectionOptions {
        let (runs, scenarios, run_timeout_s, simulation_runs) = if self.smoke {
            (
                DetectionOptions::SMOKE_RUNS,
                DetectionOptions::SMOKE_SCENARIOS.to_vec(),
                DetectionOptions::SMOKE_RUN_TIMEOUT_S,
                DetectionOptions::SMOKE_SIMULATION_RUNS,
            )
        } else {
            (
                DetectionOptions::DEFAULT_RUNS,
                DetectionOptions::DEFAULT_SCENARIOS.to_vec(),
                DetectionOptions::DEFAULT_RUN_TIMEOUT_S,
                DetectionOptions::DEFAULT_SIMULATION_RUNS,
            )
        };
        DetectionOptions {
            runs: self.runs.unwrap_or(runs),
            scenarios: self.scenario.clone().unwrap_or(scenarios),
            rate_per_second: self.rate.unwrap_or(DetectionOptions::DEFAULT_RATE_PER_SECOND),
            report_interval_ms: self.report_interval_ms.unwrap_or(DetectionOptions::DEFAULT_REPORT_INTERVAL_MS),
            run_timeout_s: self.timeout_s.unwrap_or(run_timeout_s),
            simulation_runs: self.sim_runs.unwrap_or(simulation_runs),
            simulation_seed: self.sim_seed.unwrap_or(DetectionOptions::DEFAULT_SIMULATION_SEED),
            stable_latency_ms: self.stable_latency_ms.unwrap_or(DetectionOptions::DEFAULT_STABLE_LATENCY_MS),
            stable_jitter_ms: self.stable_jitter_ms.unwrap_or(DetectionOptions::DEFAULT_STABLE_JITTER_MS),
            canary_latency_ms: self.canary_latency_ms,
            canary_jitter_ms: self.canary_jitter_ms,
            smoke: self.smoke,
        }
    }
}

/// The settings a result was measured with, constants included.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    #[serde(flatten)]
    pub options: DetectionOptions,
    pub envoy_concurrency: usize,
    pub warm_up_ms: u64,
    pub poll_interval_ms: u64,
    pub convergence_bound_ms: u64,
    pub tail_ms: u64,
    /// The spec every run posts (with the scenario in its name).
    pub rollout_spec: Value,
    pub expected_canary_percent: f64,
    /// The analyzer's controller tick.
    pub rollout_tick_ms: u64,
    /// What the real pipeline may add to the simulation's time for the same
    /// data: a report interval (the counts reach the analyzer up to that
    /// late) plus a controller tick (the decision waits for the next one).
    pub pipeline_slack_ms: u64,
    /// The engine settings the simulation ran with.
    pub simulation_analysis_settings: AnalysisSettings,
    pub target_p95_ratio: f64,
    pub calibration_tolerance: f64,
    pub calibration_window_s: u64,
}

/// A whole run: every scenario, with the context to compare it.
#[derive(Debug, Clone, Serialize)]
pub struct DetectionResult {
    pub benchmark: &'static str,
    /// Bumped when the meaning of a field changes.
    pub schema_version: u32,
    #[serde(flatten)]
    pub context: RunContext,
    pub settings: Settings,
    pub finished_at_unix_ms: u64,
    pub scenarios: Vec<ScenarioRun>,
    pub verdicts: Vec<Verdict>,
}

/// One backend's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BackendSetting {
    pub error_rate: f64,
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
}

impl BackendSetting {
    fn opts(&self) -> BackendOpts {
        BackendOpts::default()
            .error_rate(self.error_rate)
            .latency_ms(self.latency_ms)
            .latency_jitter_ms(self.latency_jitter_ms)
    }

    /// The slowest answer the backend gives on purpose.
    fn slowest_ms(&self) -> u64 {
        self.latency_ms + self.latency_jitter_ms
    }
}

/// One scenario: real runs, the simulation, and how they compare.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioRun {
    pub scenario: ScenarioKind,
    pub label: &'static str,
    pub stable_backend: BackendSetting,
    pub canary_backend: BackendSetting,
    pub load_connections: usize,
    /// `latency` only.
    pub calibration: Option<Calibration>,
    /// The analysis settings of the rollout's step, as the analyzer resolved
    /// the spec (from the first run that started a rollout).
    pub real_step_analysis: Option<Value>,
    pub simulation: SimulationSummary,
    pub summary: RealSummary,
    pub comparison: Comparison,
    pub verdict: Verdict,
    pub samples: Vec<RunSample>,
}

/// How a real run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    RolledBack,
    /// The rollout ended some other way (it should not: the first step
    /// lasts 30 minutes).
    EndedOtherwise,
    /// No rollback within `run_timeout_s`: counts as "never" in the
    /// quantiles, like the simulation's runs without a rollback.
    NotRolledBack,
    /// The run could not measure (stack start, API error): left out of the
    /// quantiles, reported separately.
    Failed,
}

/// One real run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSample {
    pub run: usize,
    pub outcome: RunOutcome,
    pub error: Option<String>,
    /// t1 − t0: decision time minus the first canary request's send time.
    pub detection_ms: Option<f64>,
    /// When the benchmark posted the rollout (client clock = analyzer clock:
    /// same machine).
    pub rollout_posted_unix_ms: Option<u64>,
    pub rollout_started_at_unix_ms: Option<u64>,
    /// The analysed step's start (the analyzer's clock).
    pub step_started_at_unix_ms: Option<u64>,
    /// The weight the rollout's first step set.
    pub canary_weight_percent: Option<f64>,
    /// t0.
    pub first_canary_send_unix_us: Option<u64>,
    /// From the step's start to t0: the weight's push to the filters plus the
    /// wait for the next canary pick.
    pub first_canary_after_step_start_ms: Option<f64>,
    /// t1.
    pub decision_at_unix_ms: Option<u64>,
    /// The analyzer's `time_to_decision_ms`: from the step's start to the
    /// decision.
    pub analyzer_time_to_decision_ms: Option<u64>,
    pub last_canary_send_unix_us: Option<u64>,
    /// The last canary request's send time minus t1: how long canary still
    /// got new requests after the decision (persisting the decision, pushing
    /// the weight); negative when none was sent in that time.
    pub last_canary_send_after_decision_ms: Option<f64>,
    /// Canary answers to requests sent before t1, and the 5xx among them.
    pub canary_requests_before_decision: u64,
    pub canary_errors_before_decision: u64,
    /// Canary answers to requests sent after t1.
    pub canary_requests_after_decision: u64,
    pub actor: Option<String>,
    pub rule: Option<String>,
    pub reason: Option<String>,
    /// From the decision's evidence.
    pub error_e_value: Option<f64>,
    pub error_threshold: Option<f64>,
    pub latency_e_value: Option<f64>,
    pub latency_threshold: Option<f64>,
    /// Each arm's p95 over the step at the decision, as the analyzer saw it.
    pub stable_p95_ms: Option<f64>,
    pub canary_p95_ms: Option<f64>,
    /// Every filter VM applied the rollback within the bound.
    pub data_plane_converged: Option<bool>,
    pub load: LoadSummary,
    pub load_average_before: Option<[f64; 3]>,
    pub load_average_after: Option<[f64; 3]>,
    /// The whole rollback decision, evidence included.
    pub decision: Option<Value>,
}

/// What the run's load achieved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadSummary {
    pub sent: u64,
    pub elapsed_ms: f64,
    pub achieved_rate_per_second: f64,
    pub transport_errors: u64,
    pub first_error: Option<String>,
    pub status: BTreeMap<u16, u64>,
    pub served_by: BTreeMap<String, u64>,
}

impl From<&LoadReport> for LoadSummary {
    fn from(report: &LoadReport) -> Self {
        Self {
            sent: report.sent,
            elapsed_ms: millis(report.elapsed),
            achieved_rate_per_second: report.requests_per_second(),
            transport_errors: report.transport_errors,
            first_error: report.first_error.clone(),
            status: report.status.clone(),
            served_by: report.served_by.clone(),
        }
    }
}

/// Nearest-rank quantiles of times to rollback over all runs, where a run
/// without a rollback counts as "never" (`null`), exactly as the
/// simulation's table counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TimeQuantiles {
    pub runs: usize,
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub max_s: Option<f64>,
    /// The fastest rollback.
    pub min_s: Option<f64>,
}

impl TimeQuantiles {
    /// `times_s`: one entry per run, `None` for "never".
    pub fn of(times_s: &[Option<f64>]) -> Self {
        let mut sorted: Vec<f64> = times_s.iter().map(|time| time.unwrap_or(f64::INFINITY)).collect();
        sorted.sort_by(f64::total_cmp);
        let finite = |value: Option<f64>| value.filter(|value| value.is_finite());
        Self {
            runs: sorted.len(),
            p50_s: finite(nearest_rank(&sorted, 50.0)),
            p90_s: finite(nearest_rank(&sorted, 90.0)),
            max_s: finite(sorted.last().copied()),
            min_s: finite(sorted.first().copied()),
        }
    }
}

/// The real runs of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RealSummary {
    pub runs: usize,
    pub failed_runs: usize,
    pub rolled_back: usize,
    /// Rollbacks by rule.
    pub rules: BTreeMap<String, usize>,
    /// t1 − t0 over the runs that measured (failed runs left out).
    pub detection: TimeQuantiles,
    /// The analyzer's own `time_to_decision_ms`, from the step's start.
    pub analyzer_time_to_decision: TimeQuantiles,
    pub first_canary_after_step_start_ms: Option<Quantiles>,
    pub last_canary_send_after_decision_ms: Option<Quantiles>,
    pub canary_requests_before_decision: Option<Quantiles>,
    pub error_e_value: Option<Quantiles>,
    pub latency_e_value: Option<Quantiles>,
    pub stable_p95_ms: Option<Quantiles>,
    pub canary_p95_ms: Option<Quantiles>,
}

impl RealSummary {
    pub fn of(samples: &[RunSample]) -> Self {
        let measured: Vec<&RunSample> = samples.iter().filter(|sample| sample.outcome != RunOutcome::Failed).collect();
        let mut rules = BTreeMap::new();
        for sample in &measured {
            if let Some(rule) = &sample.rule {
                *rules.entry(rule.clone()).or_default() += 1;
            }
        }
        let seconds = |pick: fn(&RunSample) -> Option<f64>| -> Vec<Option<f64>> {
            measured.iter().map(|sample| pick(sample).map(|ms| ms / 1_000.0)).collect()
        };
        let values = |pick: fn(&RunSample) -> Option<f64>| -> Option<Quantiles> {
            Quantiles::of(&measured.iter().filter_map(|sample| pick(sample)).collect::<Vec<f64>>())
        };
        Self {
            runs: samples.len(),
            failed_runs: samples.len() - measured.len(),
            rolled_back: measured.iter().filter(|sample| sample.outcome == RunOutcome::RolledBack).count(),
            rules,
            detection: TimeQuantiles::of(&seconds(|sample| sample.detection_ms)),
            analyzer_time_to_decision: TimeQuantiles::of(&seconds(|sample| {
                sample.analyzer_time_to_decision_ms.map(|ms| ms as f64)
            })),
            first_canary_after_step_start_ms: values(|sample| sample.first_canary_after_step_start_ms),
            last_canary_send_after_decision_ms: values(|sample| sample.last_canary_send_after_decision_ms),
            canary_requests_before_decision: values(|sample| {
                (sample.outcome == RunOutcome::RolledBack).then_some(sample.canary_requests_before_decision as f64)
            }),
            error_e_value: values(|sample| sample.error_e_value),
            latency_e_value: values(|sample| sample.latency_e_value),
            stable_p95_ms: values(|sample| sample.stable_p95_ms),
            canary_p95_ms: values(|sample| sample.canary_p95_ms),
        }
    }
}

/// The simulation's row for the scenario, run in-process.
#[derive(Debug, Clone, Serialize)]
pub struct SimulationSummary {
    pub scenario_name: String,
    pub runs: usize,
    pub seed: u64,
    pub alpha: f64,
    pub total_rps: f64,
    pub canary_share: Option<f64>,
    pub stable_error_rate: f64,
    pub canary_error_rate: f64,
    pub latency_median_ms: f64,
    pub latency_sigma: f64,
    /// `Scale(1.5)`, `None`, … as the simulation spells it.
    pub canary_latency: String,
    /// How long each simulated rollout runs: "never" is later than this.
    pub horizon_s: u32,
    pub rolled_back: usize,
    /// Seconds from the rollout's start: the simulation's 1 s ticks, each
    /// with that second's counts, so every time is a whole number.
    pub engine: TimeQuantiles,
    pub rules: BTreeMap<String, usize>,
    pub elapsed_ms: f64,
}

/// Real against simulated, in seconds: real minus simulation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Comparison {
    pub p50_difference_s: Option<f64>,
    pub p90_difference_s: Option<f64>,
    pub max_difference_s: Option<f64>,
    pub pipeline_slack_s: f64,
}

impl Comparison {
    fn of(real: &TimeQuantiles, simulated: &TimeQuantiles, pipeline_slack_s: f64) -> Self {
        let difference = |real: Option<f64>, simulated: Option<f64>| Some(real? - simulated?);
        Self {
            p50_difference_s: difference(real.p50_s, simulated.p50_s),
            p90_difference_s: difference(real.p90_s, simulated.p90_s),
            max_difference_s: difference(real.max_s, simulated.max_s),
            pipeline_slack_s,
        }
    }
}

/// How the `latency` scenario's canary backend was chosen.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub target_ratio: f64,
    pub tolerance: f64,
    /// Whether the canary's options were adjusted (not given on the command
    /// line).
    pub adjusted: bool,
    pub attempts: Vec<CalibrationAttempt>,
    /// The attempt whose ratio is closest to the target; its canary options
    /// are the scenario's.
    pub chosen_attempt: Option<usize>,
}

/// One calibration stack: both backends at the canary's run weight, p95s
/// from the analyzer's window once the canary's connections are warm.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationAttempt {
    pub stable: BackendSetting,
    pub canary: BackendSetting,
    pub window_s: Option<u64>,
    pub stable_requests: Option<u64>,
    pub canary_requests: Option<u64>,
    pub stable_p95_ms: Option<f64>,
    pub canary_p95_ms: Option<f64>,
    pub ratio: Option<f64>,
    /// Both p95s are possible for their backends (see
    /// [`CALIBRATION_MAX_OVERHEAD_MS`]); an implausible attempt is neither
    /// adjusted to nor chosen while a plausible one exists.
    pub plausible: bool,
    pub error: Option<String>,
}

/// The default spec with a name: its first step holds the canary at 10%
/// for 30 minutes.
pub fn rollout_spec(scenario: Option<ScenarioKind>) -> Value {
    let name = match scenario {
        Some(ScenarioKind::Errors) => "detection-errors",
        Some(ScenarioKind::Latency) => "detection-latency",
        None => "detection-<scenario>",
    };
    json!({ "name": name, "canaryVersion": "bad-canary", "stableVersion": "stable" })
}

/// Runs the benchmark: the simulation, then for each scenario the real runs.
pub async fn run(
    options: &DetectionOptions,
    binaries: &Binaries,
    context: RunContext,
) -> anyhow::Result<DetectionResult> {
    ensure!(options.runs > 0, "--runs must be at least 1");
    ensure!(options.rate_per_second > 0.0, "--rate must be positive");
    ensure!(!options.scenarios.is_empty(), "--scenario needs at least one value");
    ensure!(options.simulation_runs > 0, "--sim-runs must be at least 1");
    ensure!(options.run_timeout_s > 0, "--timeout-s must be positive");
    let rollout_tick_ms = canary_analyzer::config::DEFAULT_ROLLOUT_TICK_MS;
    let pipeline_slack_ms = options.report_interval_ms + rollout_tick_ms;
    let simulation_config = SimulationConfig {
        seed: options.simulation_seed,
        runs_aa: 0,
        runs_ab: options.simulation_runs,
        threads: std::thread::available_parallelism().map_or(1, usize::from),
        alpha: AnalysisSettings::default().alpha,
    };
    let mut scenario_runs = Vec::new();
    for &kind in &options.scenarios {
        let scenario_run = run_scenario(kind, options, binaries, &simulation_config, pipeline_slack_ms)
            .await
            .with_context(|| format!("detection scenario {}", kind.label()))?;
        scenario_runs.push(scenario_run);
    }
    Ok(DetectionResult {
        benchmark: BENCHMARK,
        schema_version: 1,
        context,
        settings: Settings {
            options: options.clone(),
            envoy_concurrency: ENVOY_CONCURRENCY,
            warm_up_ms: WARM_UP.as_millis() as u64,
            poll_interval_ms: POLL_INTERVAL.as_millis() as u64,
            convergence_bound_ms: CONVERGENCE_BOUND.as_millis() as u64,
            tail_ms: TAIL.as_millis() as u64,
            rollout_spec: rollout_spec(None),
            expected_canary_percent: EXPECTED_CANARY_PERCENT,
            rollout_tick_ms,
            pipeline_slack_ms,
            simulation_analysis_settings: AnalysisSettings {
                alpha: simulation_config.alpha,
                ..AnalysisSettings::default()
            },
            target_p95_ratio: TARGET_P95_RATIO,
            calibration_tolerance: CALIBRATION_TOLERANCE,
            calibration_window_s: CALIBRATION_WINDOW_S,
        },
        finished_at_unix_ms: crate::results::unix_now_ms(),
        verdicts: scenario_runs.iter().map(|run| run.verdict.clone()).collect(),
        scenarios: scenario_runs,
    })
}

async fn run_scenario(
    kind: ScenarioKind,
    options: &DetectionOptions,
    binaries: &Binaries,
    simulation_config: &SimulationConfig,
    pipeline_slack_ms: u64,
) -> anyhow::Result<ScenarioRun> {
    let scenario = simulation::standard_scenarios(simulation_config)
        .into_iter()
        .find(|scenario| kind.matches(scenario))
        .with_context(|| format!("the simulation has no scenario for {}", kind.label()))?;
    // First, and alone: it keeps both cores busy for a few seconds, which
    // must not overlap a measured run.
    report::progress(BENCHMARK, &format!("{}: simulating {} rollouts", kind.label(), scenario.runs));
    let simulation = simulate(&scenario, simulation_config);

    let (stable, canary, calibration) = match kind {
        ScenarioKind::Errors => {
            let backend = |error_rate| BackendSetting {
                error_rate,
                latency_ms: ERRORS_SCENARIO_LATENCY_MS,
                latency_jitter_ms: ERRORS_SCENARIO_JITTER_MS,
            };
            (backend(scenario.stable_error_rate), backend(scenario.canary_error_rate), None)
        }
        ScenarioKind::Latency => {
            let stable = BackendSetting {
                error_rate: scenario.stable_error_rate,
                latency_ms: options.stable_latency_ms,
                latency_jitter_ms: options.stable_jitter_ms,
            };
            let canary = BackendSetting {
                error_rate: scenario.canary_error_rate,
                latency_ms: options
                    .canary_latency_ms
                    .unwrap_or_else(|| scaled_ms(options.stable_latency_ms, TARGET_P95_RATIO)),
                latency_jitter_ms: options
                    .canary_jitter_ms
                    .unwrap_or_else(|| scaled_ms(options.stable_jitter_ms, TARGET_P95_RATIO)),
            };
            let calibration = calibrate(options, binaries, stable, canary, options.canary_latency_ms.is_none()).await;
            let chosen = calibration.chosen_attempt.and_then(|index| calibration.attempts.get(index));
            (stable, chosen.map_or(canary, |attempt| attempt.canary), Some(calibration))
        }
    };
    let connections = load_connections(options.rate_per_second, &stable, &canary);

    let mut samples = Vec::with_capacity(options.runs);
    let mut real_step_analysis = None;
    let mut consecutive_failures = 0;
    for run in 0..options.runs {
        report::progress(BENCHMARK, &format!("{}: run {}/{}: starting a stack", kind.label(), run + 1, options.runs));
        let sample = match run_once(kind, run, options, binaries, &stable, &canary, connections).await {
            Ok((sample, step_analysis)) => {
                consecutive_failures = 0;
                if real_step_analysis.is_none() {
                    real_step_analysis = step_analysis;
                }
                sample
            }
            Err(error) => {
                consecutive_failures += 1;
                RunSample::failed(run, &error)
            }
        };
        let outcome = match (sample.outcome, sample.detection_ms) {
            (RunOutcome::RolledBack, Some(ms)) => {
                format!("rolled back {:.2} s after the first canary request ({})", ms / 1_000.0, rule_of(&sample))
            }
            (RunOutcome::Failed, _) => format!("failed: {}", sample.error.as_deref().unwrap_or("unknown error")),
            (outcome, _) => format!("{outcome:?}"),
        };
        report::progress_done();
        eprintln!("  {} run {}/{}: {outcome}", kind.label(), run + 1, options.runs);
        samples.push(sample);
        ensure!(
            consecutive_failures < MAX_CONSECUTIVE_FAILURES,
            "{consecutive_failures} runs in a row failed; the last: {}",
            samples.last().and_then(|sample| sample.error.clone()).unwrap_or_default()
        );
    }

    let summary = RealSummary::of(&samples);
    let pipeline_slack_s = pipeline_slack_ms as f64 / 1_000.0;
    let comparison = Comparison::of(&summary.detection, &simulation.engine, pipeline_slack_s);
    let verdict = verdict_of(
        kind,
        &summary.detection,
        &simulation.engine,
        pipeline_slack_s,
        options.run_timeout_s as f64,
        f64::from(simulation.horizon_s),
    );
    Ok(ScenarioRun {
        scenario: kind,
        label: kind.label(),
        stable_backend: stable,
        canary_backend: canary,
        load_connections: connections,
        calibration,
        real_step_analysis,
        simulation,
        summary,
        comparison,
        verdict,
        samples,
    })
}

/// The verdict: the real p50 may exceed the simulation's by at most the
/// pipeline slack. The simulation's engine sees each second's counts at the
/// end of that second; the real analyzer gets them up to one report
/// interval later and decides on its next tick, up to one tick later. So for
/// the same evidence the real time can be later by at most that much, and
/// anything beyond it is delay the model does not have (lost or late
/// reports, a slow controller, the stable reference, the warm-up). The p50
/// is compared because 20 runs pin it down; p90 and max are in the table.
///
/// "Never" stands for the longest either side waited: the real run's
/// timeout (`real_never_s`), the simulated rollout's horizon
/// (`simulated_never_s`). Both are lower bounds of a time never seen, and
/// finite, so that the verdict stays a JSON number.
fn verdict_of(
    kind: ScenarioKind,
    real: &TimeQuantiles,
    simulated: &TimeQuantiles,
    slack_s: f64,
    real_never_s: f64,
    simulated_never_s: f64,
) -> Verdict {
    let shown = |seconds: Option<f64>, never_s: f64| {
        seconds.map_or_else(|| format!("never (> {never_s} s)"), |seconds| format!("{seconds} s"))
    };
    let quantity = format!(
        "{}: real-Envoy p50 time to rollback{} vs simulation p50 {} + {slack_s} s report/tick slack",
        kind.label(),
        if real.p50_s.is_some() { String::new() } else { format!(" (never: > {real_never_s} s)") },
        shown(simulated.p50_s, simulated_never_s)
    );
    let measured = real.p50_s.unwrap_or(real_never_s);
    let limit = simulated.p50_s.unwrap_or(simulated_never_s) + slack_s;
    let mut verdict = Verdict::new(BENCHMARK, &quantity, measured, Bound::AtMost, limit, " s");
    // A p50 the runs never reached is only known to be later than the
    // timeout, which may be shorter than the limit: it cannot be shown to
    // meet it.
    verdict.met &= real.p50_s.is_some();
    match (real.min_s, real.max_s) {
        (Some(min), Some(max)) => verdict.with_range(min, max),
        _ => verdict,
    }
}

/// The simulation's engine on `scenario`, with the times the way its table
/// shows them.
fn simulate(scenario: &Scenario, config: &SimulationConfig) -> SimulationSummary {
    let started = Instant::now();
    let outcome = simulation::run_all(config, std::slice::from_ref(scenario)).pop();
    let elapsed_ms = millis(started.elapsed());
    let (times_s, rules) = outcome.map_or_else(Default::default, |outcome| {
        (outcome.engine.times_s.iter().map(|&time| f64::from(time)).collect::<Vec<f64>>(), outcome.engine.rules)
    });
    let rolled_back = times_s.len();
    let mut per_run: Vec<Option<f64>> = times_s.into_iter().map(Some).collect();
    per_run.resize(scenario.runs.max(rolled_back), None);
    SimulationSummary {
        scenario_name: scenario.name.clone(),
        runs: scenario.runs,
        seed: config.seed,
        alpha: config.alpha,
        total_rps: scenario.total_rps,
        canary_share: scenario.steps.first().map(|step| step.canary_share),
        stable_error_rate: scenario.stable_error_rate,
        canary_error_rate: scenario.canary_error_rate,
        latency_median_ms: scenario.latency_median_ms,
        latency_sigma: scenario.latency_sigma,
        canary_latency: format!("{:?}", scenario.canary_latency),
        horizon_s: scenario.horizon_s(),
        rolled_back,
        engine: TimeQuantiles::of(&per_run),
        rules,
        elapsed_ms,
    }
}

/// One real run on a fresh stack; also returns the step's analysis
/// settings as the analyzer resolved them.
async fn run_once(
    kind: ScenarioKind,
    run: usize,
    options: &DetectionOptions,
    binaries: &Binaries,
    stable: &BackendSetting,
    canary: &BackendSetting,
    connections: usize,
) -> anyhow::Result<(RunSample, Option<Value>)> {
    let stack = Stack::builder()
        .binaries(binaries.clone())
        .concurrency(ENVOY_CONCURRENCY)
        .filter_config(json!({ "report_interval_ms": options.report_interval_ms }))
        .stable(stable.opts())
        .canary(canary.opts())
        .start()
        .await?;
    let load_average_before = machine::load_average();

    let run_timeout = Duration::from_secs(options.run_timeout_s);
    // Bounded in time by the longest a run can take, in count by that
    // duration at the rate, and stopped by the flag once the run is over (or
    // when this function returns early).
    let max_duration = WARM_UP + run_timeout + CONVERGENCE_BOUND + TAIL + Duration::from_secs(2);
    let capacity = (options.rate_per_second * max_duration.as_secs_f64()).ceil() as u64;
    let send_times = Arc::new(SendTimes::new(capacity));
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load::requests(capacity)
        .rate_per_second(options.rate_per_second)
        .concurrency(connections)
        .max_duration(max_duration)
        .record_each()
        .stop_flag(Arc::clone(&stop))
        .headers_for({
            let send_times = Arc::clone(&send_times);
            // Called just before the request is written: its send time.
            move |index| {
                send_times.record(index);
                Vec::new()
            }
        });
    let background = tokio::spawn(canary_tests::load::run(stack.listener(), load));
    let _stop_on_exit = SetOnDrop(Arc::clone(&stop));

    tokio::time::sleep(WARM_UP).await;
    let rollout_posted_unix_ms = crate::results::unix_now_ms();
    let created = stack.start_rollout(&rollout_spec(Some(kind))).await?;
    let step_analysis = Some(created["step"]["analysis"].clone()).filter(|analysis| !analysis.is_null());

    let deadline = Instant::now() + run_timeout;
    let mut last_view = Value::Null;
    let ended_in = loop {
        let waited_s = (crate::results::unix_now_ms().saturating_sub(rollout_posted_unix_ms)) as f64 / 1_000.0;
        report::progress(
            BENCHMARK,
            &format!("{}: run {}/{}: waiting for the rollback, {waited_s:.1} s", kind.label(), run + 1, options.runs),
        );
        // A failed read is retried until the deadline: the analyzer may be
        // busy persisting the decision.
        if let Ok(view) = stack.rollout().await {
            let ended = phase_of(&view).filter(|phase| phase::is_terminal(phase)).map(str::to_owned);
            last_view = view;
            if ended.is_some() {
                break ended;
            }
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let rolled_back = ended_in.as_deref() == Some(phase::ROLLED_BACK);
    let data_plane_converged =
        if rolled_back { Some(stack.wait_for_convergence(CONVERGENCE_BOUND).await.is_ok()) } else { None };
    tokio::time::sleep(TAIL).await;
    stop.store(true, Ordering::Relaxed);
    let report = background.await.context("load task")?;
    let load_average_after = machine::load_average();
    drop(stack);

    let decision = if rolled_back { rollback_decision(&last_view) } else { None };
    let facts = decision.as_ref().map(DecisionFacts::of).unwrap_or_default();
    let traffic = CanaryTraffic::of(
        canary_answers(&report.outcomes).map(|outcome| (outcome.index, outcome.status)),
        &send_times,
        facts.at_unix_ms,
    );
    let rollout = rollout_of(&last_view);
    let step_started_at_unix_ms = rollout["step_started_at_unix_ms"].as_u64();
    // Differences in whole microseconds first: a Unix time in milliseconds
    // with a fraction has more digits than an f64 holds exactly.
    let later_by_ms = |later_us: Option<u64>, earlier_us: Option<u64>| {
        later_us.zip(earlier_us).map(|(later, earlier)| (later as i64 - earlier as i64) as f64 / 1_000.0)
    };
    let decision_unix_us = facts.at_unix_ms.map(|ms| ms.saturating_mul(1_000));
    let step_started_unix_us = step_started_at_unix_ms.map(|ms| ms.saturating_mul(1_000));
    let outcome = match ended_in.as_deref() {
        Some(phase::ROLLED_BACK) => RunOutcome::RolledBack,
        Some(_) => RunOutcome::EndedOtherwise,
        None => RunOutcome::NotRolledBack,
    };
    let sample = RunSample {
        run,
        outcome,
        error: None,
        detection_ms: later_by_ms(decision_unix_us, traffic.first_send_unix_us),
        rollout_posted_unix_ms: Some(rollout_posted_unix_ms),
        rollout_started_at_unix_ms: rollout["started_at_unix_ms"].as_u64(),
        step_started_at_unix_ms,
        canary_weight_percent: created["weight_percent"].as_f64(),
        first_canary_send_unix_us: traffic.first_send_unix_us,
        first_canary_after_step_start_ms: later_by_ms(traffic.first_send_unix_us, step_started_unix_us),
        decision_at_unix_ms: facts.at_unix_ms,
        analyzer_time_to_decision_ms: if rolled_back { rollout["time_to_decision_ms"].as_u64() } else { None },
        last_canary_send_unix_us: traffic.last_send_unix_us,
        last_canary_send_after_decision_ms: later_by_ms(traffic.last_send_unix_us, decision_unix_us),
        canary_requests_before_decision: traffic.before_decision,
        canary_errors_before_decision: traffic.errors_before_decision,
        canary_requests_after_decision: traffic.after_decision,
        actor: facts.actor,
        rule: facts.rule,
        reason: facts.reason,
        error_e_value: facts.error_e_value,
        error_threshold: facts.error_threshold,
        latency_e_value: facts.latency_e_value,
        latency_threshold: facts.latency_threshold,
        stable_p95_ms: facts.stable_p95_ms,
        canary_p95_ms: facts.canary_p95_ms,
        data_plane_converged,
        load: LoadSummary::from(&report),
        load_average_before,
        load_average_after,
        decision,
    };
    Ok((sample, step_analysis))
}

impl RunSample {
    fn failed(run: usize, error: &anyhow::Error) -> Self {
        Self {
            run,
            outcome: RunOutcome::Failed,
            error: Some(format!("{error:#}")),
            detection_ms: None,
            rollout_posted_unix_ms: None,
            rollout_started_at_unix_ms: None,
            step_started_at_unix_ms: None,
            canary_weight_percent: None,
            first_canary_send_unix_us: None,
            first_canary_after_step_start_ms: None,
            decision_at_unix_ms: None,
            analyzer_time_to_decision_ms: None,
            last_canary_send_unix_us: None,
            last_canary_send_after_decision_ms: None,
            canary_requests_before_decision: 0,
            canary_errors_before_decision: 0,
            canary_requests_after_decision: 0,
            actor: None,
            rule: None,
            reason: None,
            error_e_value: None,
            error_threshold: None,
            latency_e_value: None,
            latency_threshold: None,
            stable_p95_ms: None,
            canary_p95_ms: None,
            data_plane_converged: None,
            load: LoadSummary::default(),
            load_average_before: None,
            load_average_after: None,
            decision: None,
        }
    }
}

/// The last decision that rolled the rollout back.
fn rollback_decision(view: &Value) -> Option<Value> {
    decisions_of(view).into_iter().rev().find(|decision| decision["to_phase"] == phase::ROLLED_BACK)
}

/// What the benchmark reads from a rollback decision.
#[derive(Debug, Clone, Default, PartialEq)]
struct DecisionFacts {
    at_unix_ms: Option<u64>,
    actor: Option<String>,
    reason: Option<String>,
    rule: Option<String>,
    error_e_value: Option<f64>,
    error_threshold: Option<f64>,
    latency_e_value: Option<f64>,
    latency_threshold: Option<f64>,
    stable_p95_ms: Option<f64>,
    canary_p95_ms: Option<f64>,
}

impl DecisionFacts {
    /// From a decision of the rollout's log (`docs/rollouts.md`): its
    /// `evidence` is the engine's assessment at that moment.
    fn of(decision: &Value) -> Self {
        let assessment = &decision["evidence"];
        let evidence = &assessment["evidence"];
        let text = |value: &Value| value.as_str().map(str::to_owned);
        Self {
            at_unix_ms: decision["at_unix_ms"].as_u64(),
            actor: text(&decision["actor"]),
            reason: text(&decision["reason"]),
            rule: text(&assessment["verdict"]["rule"]),
            error_e_value: evidence["error_test"]["e_value"].as_f64(),
            error_threshold: evidence["error_test"]["threshold"].as_f64(),
            latency_e_value: evidence["latency_test"]["e_value"].as_f64(),
            latency_threshold: evidence["latency_test"]["threshold"].as_f64(),
            stable_p95_ms: evidence["stable"]["p95_ms"].as_f64(),
            canary_p95_ms: evidence["canary"]["p95_ms"].as_f64(),
        }
    }
}

/// Send times by request number, in Unix microseconds (0: not sent). Filled
/// by the generator's header hook, read once the load has stopped.
#[derive(Debug)]
struct SendTimes(Vec<AtomicU64>);

impl SendTimes {
    fn new(requests: u64) -> Self {
        Self((0..requests).map(|_| AtomicU64::new(0)).collect())
    }

    fn record(&self, index: u64) {
        if let Some(slot) = usize::try_from(index).ok().and_then(|index| self.0.get(index)) {
            slot.store(unix_now_us(), Ordering::Relaxed);
        }
    }

    fn get(&self, index: u64) -> Option<u64> {
        let slot = self.0.get(usize::try_from(index).ok()?)?;
        Some(slot.load(Ordering::Relaxed)).filter(|&us| us > 0)
    }
}

/// The canary's share of a run's requests, split at the decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CanaryTraffic {
    first_send_unix_us: Option<u64>,
    last_send_unix_us: Option<u64>,
    before_decision: u64,
    errors_before_decision: u64,
    after_decision: u64,
}

impl CanaryTraffic {
    /// `canary_answers`: the number and HTTP status of every request the
    /// canary answered.
    fn of(
        canary_answers: impl IntoIterator<Item = (u64, Option<u16>)>,
        send_times: &SendTimes,
        decision_unix_ms: Option<u64>,
    ) -> Self {
        let decision_unix_us = decision_unix_ms.map(|ms| ms.saturating_mul(1_000));
        let mut traffic = Self::default();
        for (index, status) in canary_answers {
            let Some(sent_us) = send_times.get(index) else { continue };
            traffic.first_send_unix_us = Some(traffic.first_send_unix_us.map_or(sent_us, |first| first.min(sent_us)));
            traffic.last_send_unix_us = Some(traffic.last_send_unix_us.map_or(sent_us, |last| last.max(sent_us)));
            // Without a decision every canary request counts as "before".
            if decision_unix_us.is_some_and(|decision| sent_us > decision) {
                traffic.after_decision += 1;
            } else {
                traffic.before_decision += 1;
                if status.is_some_and(|status| status >= 500) {
                    traffic.errors_before_decision += 1;
                }
            }
        }
        traffic
    }
}

/// The outcomes the canary answered (`x-served-by: canary`, as the
/// backend names itself).
fn canary_answers(outcomes: &[Outcome]) -> impl Iterator<Item = &Outcome> {
    outcomes.iter().filter(|outcome| outcome.served_by.as_deref() == Some("canary"))
}

/// Calibrates the `latency` scenario's canary backend (see
/// [`CalibrationAttempt`]). With `adjust`, each attempt after the first
/// moves the canary's fixed delay by what the last one missed the target by;
/// without, it measures once.
async fn calibrate(
    options: &DetectionOptions,
    binaries: &Binaries,
    stable: BackendSetting,
    mut canary: BackendSetting,
    adjust: bool,
) -> Calibration {
    let attempts_allowed = if adjust { CALIBRATION_ATTEMPTS } else { 1 };
    let mut attempts: Vec<CalibrationAttempt> = Vec::new();
    for attempt in 0..attempts_allowed {
        report::progress(
            BENCHMARK,
            &format!(
                "calibrating the canary's latency, attempt {}/{attempts_allowed}: {} ms + 0..={} ms",
                attempt + 1,
                canary.latency_ms,
                canary.latency_jitter_ms
            ),
        );
        let measured = measure_p95s(options, binaries, stable, canary).await;
        let close_enough =
            measured.ratio.is_some_and(|ratio| (ratio - TARGET_P95_RATIO).abs() <= CALIBRATION_TOLERANCE);
        let next = adjusted_canary(canary, measured.stable_p95_ms, measured.canary_p95_ms);
        report::progress_done();
        eprintln!(
            "  calibration {}: canary {} ms + 0..={} ms: stable p95 {}, canary p95 {}, ratio {}{}",
            attempt + 1,
            canary.latency_ms,
            canary.latency_jitter_ms,
            optional(measured.stable_p95_ms, " ms"),
            optional(measured.canary_p95_ms, " ms"),
            optional(measured.ratio, "×"),
            if measured.plausible { "" } else { " (implausible: measuring again)" },
        );
        let plausible = measured.plausible;
        attempts.push(measured);
        if !plausible {
            continue;
        }
        match next {
            Some(next) if !close_enough && next != canary => canary = next,
            _ => break,
        }
    }
    let chosen_attempt = chosen_attempt(&attempts);
    Calibration {
        target_ratio: TARGET_P95_RATIO,
        tolerance: CALIBRATION_TOLERANCE,
        adjusted: adjust,
        attempts,
        chosen_attempt,
    }
}

/// The plausible attempt whose ratio is closest to the target; without a
/// plausible one, the closest of all (its `plausible: false` shows).
fn chosen_attempt(attempts: &[CalibrationAttempt]) -> Option<usize> {
    let closest = |only_plausible: bool| {
        attempts
            .iter()
            .enumerate()
            .filter(|(_, attempt)| attempt.plausible || !only_plausible)
            .filter_map(|(index, attempt)| Some((index, (attempt.ratio? - TARGET_P95_RATIO).abs())))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(index, _)| index)
    };
    closest(true).or_else(|| closest(false))
}

/// Whether a measured p95 can be the backend's: at least its fixed delay,
/// at most its slowest delay plus [`CALIBRATION_MAX_OVERHEAD_MS`].
fn plausible_p95(backend: &BackendSetting, p95_ms: Option<f64>) -> bool {
    p95_ms.is_some_and(|p95| {
        (backend.latency_ms as f64..=backend.slowest_ms() as f64 + CALIBRATION_MAX_OVERHEAD_MS).contains(&p95)
    })
}

/// The canary with its fixed delay moved so that its p95 lands on the
/// target: the jitter stays, so the p95 moves one for one with the delay.
fn adjusted_canary(
    canary: BackendSetting,
    stable_p95_ms: Option<f64>,
    canary_p95_ms: Option<f64>,
) -> Option<BackendSetting> {
    let missing_ms = TARGET_P95_RATIO * stable_p95_ms? - canary_p95_ms?;
    let latency_ms = (canary.latency_ms as f64 + missing_ms).round().max(0.0) as u64;
    Some(BackendSetting { latency_ms, ..canary })
}

/// One calibration stack. The weight is set directly (no rollout), so
/// nothing rolls the slow canary back while it is measured.
async fn measure_p95s(
    options: &DetectionOptions,
    binaries: &Binaries,
    stable: BackendSetting,
    canary: BackendSetting,
) -> CalibrationAttempt {
    let mut attempt = CalibrationAttempt {
        stable,
        canary,
        window_s: None,
        stable_requests: None,
        canary_requests: None,
        stable_p95_ms: None,
        canary_p95_ms: None,
        ratio: None,
        plausible: false,
        error: None,
    };
    match read_calibration_view(options, binaries, stable, canary).await {
        Ok(view) => {
            let window = |version: &str| &view["versions"][version]["window"];
            attempt.window_s = window("stable")["seconds"].as_u64();
            attempt.stable_requests = window("stable")["requests"].as_u64();
            attempt.canary_requests = window("canary")["requests"].as_u64();
            attempt.stable_p95_ms = window("stable")["p95_ms"].as_f64();
            attempt.canary_p95_ms = window("canary")["p95_ms"].as_f64();
            attempt.ratio = attempt
                .canary_p95_ms
                .zip(attempt.stable_p95_ms)
                .filter(|&(_, stable)| stable > 0.0)
                .map(|(canary, stable)| canary / stable);
            attempt.plausible =
                plausible_p95(&stable, attempt.stable_p95_ms) && plausible_p95(&canary, attempt.canary_p95_ms);
        }
        Err(error) => attempt.error = Some(format!("{error:#}")),
    }
    attempt
}

async fn read_calibration_view(
    options: &DetectionOptions,
    binaries: &Binaries,
    stable: BackendSetting,
    canary: BackendSetting,
) -> anyhow::Result<Value> {
    let stack = Stack::builder()
        .binaries(binaries.clone())
        .concurrency(ENVOY_CONCURRENCY)
        .filter_config(json!({ "report_interval_ms": options.report_interval_ms }))
        // A short window holds only the traffic after the canary's
        // connections warmed up, as the engine's latency warm-up leaves out.
        .analyzer_config(&format!("window_seconds = {CALIBRATION_WINDOW_S}\n"))
        .stable(stable.opts())
        .canary(canary.opts())
        .start()
        .await?;
    let window = Duration::from_secs(CALIBRATION_WINDOW_S);
    let max_duration = WARM_UP + CALIBRATION_CONNECTION_WARM_UP + window + Duration::from_secs(5);
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load::requests((options.rate_per_second * max_duration.as_secs_f64()).ceil() as u64)
        .rate_per_second(options.rate_per_second)
        .concurrency(load_connections(options.rate_per_second, &stable, &canary))
        .max_duration(max_duration)
        .stop_flag(Arc::clone(&stop));
    let background = tokio::spawn(canary_tests::load::run(stack.listener(), load));
    let _stop_on_exit = SetOnDrop(Arc::clone(&stop));
    tokio::time::sleep(WARM_UP).await;
    stack.set_weight(EXPECTED_CANARY_PERCENT).await?;
    // The report interval too, so the window's last second has arrived.
    tokio::time::sleep(CALIBRATION_CONNECTION_WARM_UP + window + Duration::from_millis(options.report_interval_ms))
        .await;
    let view = stack.rollout().await?;
    stop.store(true, Ordering::Relaxed);
    let report = background.await.context("calibration load task")?;
    ensure!(report.transport_errors == 0, "calibration load: {:?}", report.first_error);
    Ok(view)
}

/// Keep-alive connections for the load: each carries one request at a
/// time, so the pool must cover the requests in flight (rate × latency, by
/// Little's law) twice over, or a slow answer would delay the next send.
fn load_connections(rate_per_second: f64, stable: &BackendSetting, canary: &BackendSetting) -> usize {
    let slowest_ms = stable.slowest_ms().max(canary.slowest_ms()) as f64 + PROXY_ALLOWANCE_MS;
    let in_flight = rate_per_second * slowest_ms / 1_000.0;
    ((2.0 * in_flight).ceil() as usize).clamp(MIN_LOAD_CONNECTIONS, MAX_LOAD_CONNECTIONS)
}

fn scaled_ms(ms: u64, factor: f64) -> u64 {
    (ms as f64 * factor).round() as u64
}

fn rule_of(sample: &RunSample) -> &str {
    sample.rule.as_deref().unwrap_or("no rule")
}

fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1_000.0
}

fn unix_now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_micros() as u64)
}

fn optional(value: Option<f64>, unit: &str) -> String {
    value.map_or_else(|| "–".to_owned(), |value| format!("{}{unit}", two_decimals(value)))
}

/// Two decimals, or scientific notation from a million on: a latency
/// e-value past its threshold grows by orders of magnitude a tick.
fn two_decimals(value: f64) -> String {
    if value.abs() >= 1e6 { format!("{value:.2e}") } else { format!("{value:.2}") }
}

fn seconds_cell(value: Option<f64>) -> String {
    value.map_or_else(|| "never".to_owned(), |seconds| format!("{seconds:.2}"))
}

fn difference_cell(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |seconds| format!("{seconds:+.2}"))
}

/// The summary table, in Markdown (readable as plain text too).
pub fn table(scenarios: &[ScenarioRun]) -> String {
    let mut out = String::from(
        "| scenario | runs | rolled back | real p50 s | p90 | max | simulation p50 s | p90 | max | Δp50 | Δp90 | rules |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for scenario in scenarios {
        let (real, simulated) = (&scenario.summary.detection, &scenario.simulation.engine);
        let rules: Vec<String> =
            scenario.summary.rules.iter().map(|(rule, count)| format!("{rule}: {count}")).collect();
        let failed = match scenario.summary.failed_runs {
            0 => String::new(),
            failed => format!(" ({failed} failed)"),
        };
        let _ = writeln!(
            out,
            "| {} | {}{failed} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            scenario.label,
            scenario.summary.runs,
            scenario.summary.rolled_back,
            seconds_cell(real.p50_s),
            seconds_cell(real.p90_s),
            seconds_cell(real.max_s),
            seconds_cell(simulated.p50_s),
            seconds_cell(simulated.p90_s),
            seconds_cell(simulated.max_s),
            difference_cell(scenario.comparison.p50_difference_s),
            difference_cell(scenario.comparison.p90_difference_s),
            if rules.is_empty() { "none".to_owned() } else { rules.join(", ") },
        );
    }
    out
}

/// Every run of one scenario.
fn runs_table(scenario: &ScenarioRun) -> String {
    let mut out = String::from(
        "| run | outcome | detection s | analyzer time_to_decision s | first canary after step start ms \
         | last canary send after decision ms | canary requests before decision (5xx) | rule | error e-value \
         | latency e-value | stable p95 ms | canary p95 ms |\n\
         |---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n",
    );
    for sample in &scenario.samples {
        let _ = writeln!(
            out,
            "| {} | {:?} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} |",
            sample.run,
            sample.outcome,
            optional(sample.detection_ms.map(|ms| ms / 1_000.0), ""),
            optional(sample.analyzer_time_to_decision_ms.map(|ms| ms as f64 / 1_000.0), ""),
            optional(sample.first_canary_after_step_start_ms, ""),
            optional(sample.last_canary_send_after_decision_ms, ""),
            sample.canary_requests_before_decision,
            sample.canary_errors_before_decision,
            rule_of(sample),
            optional(sample.error_e_value, ""),
            optional(sample.latency_e_value, ""),
            optional(sample.stable_p95_ms, ""),
            optional(sample.canary_p95_ms, ""),
        );
    }
    out
}

/// The `detection.md` next to the JSON.
pub fn markdown(result: &DetectionResult) -> String {
    let context = &result.context;
    let artifacts = &context.artifacts;
    let settings = &result.settings;
    let unknown = || "unknown".to_owned();
    let mut out = String::new();
    let _ = writeln!(out, "# Detection time end to end\n");
    out.push_str(&context.markdown_preamble());
    let _ = writeln!(out, "- envoy: {}", artifacts.envoy_version.clone().unwrap_or_else(unknown));
    let _ = writeln!(
        out,
        "- analyzer: {} build, `{}`",
        artifacts.analyzer_build_profile,
        artifacts.analyzer.path.display()
    );
    let _ = writeln!(
        out,
        "- source: {}{}",
        artifacts.git_commit.clone().unwrap_or_else(unknown),
        if artifacts.git_dirty == Some(true) { " (with uncommitted changes)" } else { "" }
    );
    let _ = writeln!(
        out,
        "- each run: a fresh stack (Envoy `--concurrency {}`), {} req/s through Envoy, {} ms of stable-only warm-up, \
         then `POST /v1/rollouts` with the default spec `{}` (first step: {}% canary for 30 minutes); filter report \
         interval {} ms, controller tick {} ms; a run without a rollback within {} s counts as never\n",
        settings.envoy_concurrency,
        settings.options.rate_per_second,
        settings.warm_up_ms,
        settings.rollout_spec,
        settings.expected_canary_percent,
        settings.options.report_interval_ms,
        settings.rollout_tick_ms,
        settings.options.run_timeout_s,
    );
    let _ = writeln!(
        out,
        "Detection time is the rollback decision's `at_unix_ms` minus the send time of the first request the canary \
         answered. The simulation column is the analyzer's own simulation (`canary-simulate`, the same engine code) \
         of the same scenario, in-process, with {} runs from seed {}: its times are whole seconds of 1 s ticks. \
         Δ is real minus simulation. The real pipeline can add up to a report interval plus a controller tick \
         ({} ms) to the simulation's time for the same evidence: the verdict allows exactly that on the p50. \
         Quantiles are nearest-rank over all runs, \"never\" when they fall on runs without a rollback.\n",
        settings.options.simulation_runs, settings.options.simulation_seed, settings.pipeline_slack_ms,
    );
    out.push_str(&table(&result.scenarios));
    let _ = writeln!(out);
    for verdict in &result.verdicts {
        let _ = writeln!(out, "- `{}`", verdict.line());
    }
    for scenario in &result.scenarios {
        let _ = writeln!(out, "\n## {}\n", scenario.label);
        let simulation = &scenario.simulation;
        let _ = writeln!(
            out,
            "- backends: stable {} errors, {} ms + 0..={} ms; canary {} errors, {} ms + 0..={} ms; {} load connections",
            scenario.stable_backend.error_rate,
            scenario.stable_backend.latency_ms,
            scenario.stable_backend.latency_jitter_ms,
            scenario.canary_backend.error_rate,
            scenario.canary_backend.latency_ms,
            scenario.canary_backend.latency_jitter_ms,
            scenario.load_connections,
        );
        let _ = writeln!(
            out,
            "- simulation: \"{}\": {} req/s, canary share {}, errors {} vs {}, lognormal latency median {} ms σ {}, \
             canary {}; rolled back {} of {} runs in {:.0} ms of compute",
            simulation.scenario_name,
            simulation.total_rps,
            simulation.canary_share.map_or_else(unknown, |share| share.to_string()),
            simulation.canary_error_rate,
            simulation.stable_error_rate,
            simulation.latency_median_ms,
            simulation.latency_sigma,
            simulation.canary_latency,
            simulation.rolled_back,
            simulation.runs,
            simulation.elapsed_ms,
        );
        let summary = &scenario.summary;
        let quantiles = |q: Option<Quantiles>, unit: &str| {
            q.map_or_else(
                || "–".to_owned(),
                |q| {
                    let [p50, p90, max] = [q.p50, q.p90, q.max].map(two_decimals);
                    format!("p50 {p50}{unit}, p90 {p90}{unit}, max {max}{unit}")
                },
            )
        };
        let _ = writeln!(
            out,
            "- analyzer's time_to_decision (from the step's start): p50 {} s, p90 {} s, max {} s",
            seconds_cell(summary.analyzer_time_to_decision.p50_s),
            seconds_cell(summary.analyzer_time_to_decision.p90_s),
            seconds_cell(summary.analyzer_time_to_decision.max_s),
        );
        let _ = writeln!(
            out,
            "- first canary request after the step's start: {}; last canary send after the decision: {}",
            quantiles(summary.first_canary_after_step_start_ms, " ms"),
            quantiles(summary.last_canary_send_after_decision_ms, " ms"),
        );
        let _ = writeln!(
            out,
            "- at the decision: error e-value {}; latency e-value {}; stable p95 {}; canary p95 {}",
            quantiles(summary.error_e_value, ""),
            quantiles(summary.latency_e_value, ""),
            quantiles(summary.stable_p95_ms, " ms"),
            quantiles(summary.canary_p95_ms, " ms"),
        );
        if let Some(calibration) = &scenario.calibration {
            let _ = writeln!(
                out,
                "\nCalibration (target canary p95 = {}× stable's ± {}, from the analyzer's last {} s window at {}% \
                 canary, after {} ms of warm connections):\n",
                calibration.target_ratio,
                calibration.tolerance,
                settings.calibration_window_s,
                settings.expected_canary_percent,
                CALIBRATION_CONNECTION_WARM_UP.as_millis(),
            );
            let _ = writeln!(
                out,
                "| attempt | canary ms + jitter | stable p95 ms | canary p95 ms | ratio | stable / canary requests | chosen |\n\
                 |---:|---|---:|---:|---:|---|---|"
            );
            for (index, attempt) in calibration.attempts.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "| {} | {} + 0..={} | {} | {} | {} | {} / {} | {} |",
                    index + 1,
                    attempt.canary.latency_ms,
                    attempt.canary.latency_jitter_ms,
                    optional(attempt.stable_p95_ms, ""),
                    optional(attempt.canary_p95_ms, ""),
                    optional(attempt.ratio, ""),
                    attempt.stable_requests.map_or_else(unknown, |n| n.to_string()),
                    attempt.canary_requests.map_or_else(unknown, |n| n.to_string()),
                    if calibration.chosen_attempt == Some(index) {
                        "yes".to_owned()
                    } else {
                        attempt.error.clone().unwrap_or_default()
                    },
                );
            }
        }
        let _ = writeln!(out, "\nRuns:\n");
        out.push_str(&runs_table(scenario));
    }
    out
}

/// Sets a flag when dropped: stops the load when a run returns early.
#[derive(Debug)]
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_scenarios_exist_in_the_simulation() {
        let scenarios = simulation::standard_scenarios(&SimulationConfig::default());
        for kind in DetectionOptions::DEFAULT_SCENARIOS {
            let found: Vec<&str> = scenarios
                .iter()
                .filter(|scenario| kind.matches(scenario))
                .map(|scenario| scenario.name.as_str())
                .collect();
            assert_eq!(found.len(), 1, "{kind:?} matches {found:?}");
        }
        let errors = scenarios.iter().find(|scenario| ScenarioKind::Errors.matches(scenario));
        // The setting: 100 canary requests a second.
        let errors = errors.map(|scenario| (scenario.total_rps, scenario.steps[0].canary_share));
        assert_eq!(errors, Some((1_000.0, 0.10)));
    }

    #[test]
    fn time_quantiles_count_never_like_the_simulation() {
        let all = TimeQuantiles::of(&[Some(3.0), Some(1.0), Some(2.0), Some(4.0)]);
        assert_eq!((all.p50_s, all.p90_s, all.max_s, all.min_s), (Some(2.0), Some(4.0), Some(4.0), Some(1.0)));
        // One of ten never: p50 and p90 are still measured, max is never.
        let mut times: Vec<Option<f64>> = (1..=9).map(|s| Some(f64::from(s))).collect();
        times.push(None);
        let one_never = TimeQuantiles::of(&times);
        assert_eq!((one_never.p50_s, one_never.p90_s, one_never.max_s), (Some(5.0), Some(9.0), None));
        let mostly_never = TimeQuantiles::of(&[None, None, Some(1.0)]);
        assert_eq!((mostly_never.p50_s, mostly_never.min_s), (None, Some(1.0)));
        assert_eq!(TimeQuantiles::of(&[]), TimeQuantiles::default());
    }

    #[test]
    fn canary_traffic_is_split_at_the_decision() {
        let send_times = SendTimes::new(6);
        let at = [1_000_000, 1_000_500, 1_001_000, 1_002_000, 1_003_000];
        for (index, us) in at.iter().enumerate() {
            send_times.0[index].store(*us, Ordering::Relaxed);
        }
        let canary_answers = [
            (1, Some(500)),
            (2, Some(200)),
            (4, Some(200)),
            // Never sent as far as the hook knows: left out.
            (5, Some(200)),
            (6, None),
        ];
        let traffic = CanaryTraffic::of(canary_answers, &send_times, Some(1_002));
        assert_eq!(
            traffic,
            CanaryTraffic {
                first_send_unix_us: Some(1_000_500),
                last_send_unix_us: Some(1_003_000),
                before_decision: 2,
                errors_before_decision: 1,
                after_decision: 1,
            }
        );
        assert_eq!(CanaryTraffic::of(canary_answers, &send_times, None).before_decision, 3);
    }

    #[test]
    fn reads_the_rollback_decision() {
        let view = json!({ "rollout": { "phase": "RolledBack", "decisions": [
            { "at_unix_ms": 1, "actor": "api", "action": "start", "to_phase": "Progressing" },
            { "at_unix_ms": 4211, "actor": "auto", "action": "rollback", "to_phase": "RolledBack",
              "reason": "rolled back: canary error rate 4.8% vs stable 0.1%, e-value 412 >= 200",
              "evidence": {
                  "verdict": { "kind": "regression", "rule": "error_rate_e_value", "summary": "…" },
                  "evidence": {
                      "error_test": { "e_value": 412.5, "threshold": 200.0 },
                      "latency_test": { "e_value": 1.5, "threshold": 250.0 },
                      "stable": { "p95_ms": 3.1 }, "canary": { "p95_ms": 3.3 }
                  }
              } }
        ] } });
        let decision = rollback_decision(&view).unwrap_or_default();
        let facts = DecisionFacts::of(&decision);
        assert_eq!(facts.at_unix_ms, Some(4211));
        assert_eq!(facts.actor.as_deref(), Some("auto"));
        assert_eq!(facts.rule.as_deref(), Some("error_rate_e_value"));
        assert_eq!((facts.error_e_value, facts.error_threshold), (Some(412.5), Some(200.0)));
        assert_eq!((facts.latency_e_value, facts.latency_threshold), (Some(1.5), Some(250.0)));
        assert_eq!((facts.stable_p95_ms, facts.canary_p95_ms), (Some(3.1), Some(3.3)));
        assert_eq!(rollback_decision(&json!({ "rollout": null })), None);
        assert_eq!(DecisionFacts::of(&Value::Null), DecisionFacts::default());
    }

    #[test]
    fn calibration_moves_the_canary_delay_by_what_it_missed() {
        let canary = BackendSetting { error_rate: 0.001, latency_ms: 30, latency_jitter_ms: 15 };
        // 1.5 × 31 = 46.5; the canary measured 45.2 ms, 1.3 ms short.
        let next = adjusted_canary(canary, Some(31.0), Some(45.2));
        assert_eq!(next, Some(BackendSetting { latency_ms: 31, ..canary }));
        assert_eq!(adjusted_canary(canary, Some(10.0), Some(100.0)).map(|next| next.latency_ms), Some(0));
        assert_eq!(adjusted_canary(canary, None, Some(45.0)), None);
    }

    #[test]
    fn calibration_ignores_stalled_measurements() {
        let stable = BackendSetting { error_rate: 0.001, latency_ms: 20, latency_jitter_ms: 10 };
        let canary = BackendSetting { latency_ms: 30, latency_jitter_ms: 15, ..stable };
        assert!(plausible_p95(&stable, Some(33.5)));
        // Measured on this machine while another build ran: both arms 117 ms.
        assert!(!plausible_p95(&stable, Some(116.7)));
        assert!(!plausible_p95(&stable, Some(12.0)));
        assert!(!plausible_p95(&stable, None));
        let attempt = |ratio: f64, plausible: bool| CalibrationAttempt {
            stable,
            canary,
            window_s: Some(6),
            stable_requests: Some(5_400),
            canary_requests: Some(600),
            stable_p95_ms: Some(33.5),
            canary_p95_ms: Some(33.5 * ratio),
            ratio: Some(ratio),
            plausible,
            error: None,
        };
        assert_eq!(chosen_attempt(&[attempt(1.46, true), attempt(1.5, false), attempt(1.52, true)]), Some(2));
        assert_eq!(chosen_attempt(&[attempt(1.2, false), attempt(1.45, false)]), Some(1));
        assert_eq!(chosen_attempt(&[]), None);
    }

    #[test]
    fn huge_e_values_print_in_scientific_notation() {
        assert_eq!(two_decimals(961.758), "961.76");
        assert_eq!(two_decimals(3.07e22), "3.07e22");
        assert_eq!(optional(None, " ms"), "–");
    }

    #[test]
    fn connections_cover_the_requests_in_flight() {
        let fast = BackendSetting { error_rate: 0.0, latency_ms: 1, latency_jitter_ms: 2 };
        assert_eq!(load_connections(1_000.0, &fast, &fast), MIN_LOAD_CONNECTIONS);
        let stable = BackendSetting { latency_ms: 20, latency_jitter_ms: 10, ..fast };
        let canary = BackendSetting { latency_ms: 30, latency_jitter_ms: 15, ..fast };
        // 1,000/s × 50 ms = 50 in flight, twice over.
        assert_eq!(load_connections(1_000.0, &stable, &canary), 100);
        assert_eq!(load_connections(1e6, &stable, &canary), MAX_LOAD_CONNECTIONS);
    }

    #[test]
    fn verdict_allows_the_pipeline_slack_on_the_p50() {
        let simulated =
            TimeQuantiles { runs: 500, p50_s: Some(3.0), p90_s: Some(4.0), max_s: Some(6.0), min_s: Some(2.0) };
        let real = TimeQuantiles { runs: 20, p50_s: Some(4.6), p90_s: Some(5.5), max_s: Some(6.1), min_s: Some(3.2) };
        let verdict = verdict_of(ScenarioKind::Errors, &real, &simulated, 2.0, 60.0, 900.0);
        assert!(verdict.met, "{}", verdict.line());
        assert_eq!(
            verdict.line(),
            "detection: 5% errors: real-Envoy p50 time to rollback vs simulation p50 3 s + 2 s report/tick slack \
             4.6 s [min 3.2, max 6.1] ≤ 5 s MET"
        );
        let never = TimeQuantiles { p50_s: None, ..real };
        let never = verdict_of(ScenarioKind::Errors, &never, &simulated, 2.0, 60.0, 900.0);
        assert!(!never.met, "{}", never.line());
        assert_eq!((never.measured, never.limit), (60.0, 5.0));
        let short_timeout =
            verdict_of(ScenarioKind::Errors, &TimeQuantiles { p50_s: None, ..real }, &simulated, 2.0, 2.0, 900.0);
        assert!(!short_timeout.met, "{}", short_timeout.line());
        // The verdict is written as JSON, which has no infinity.
        assert!(serde_json::to_value(&never).is_ok_and(|json| json["measured"] == 60.0));
    }

    #[test]
    fn smoke_preset_is_one_errors_run() {
        let args = DetectionArgs {
            runs: None,
            scenario: None,
            rate: None,
            report_interval_ms: None,
            timeout_s: None,
            sim_runs: None,
            sim_seed: None,
            stable_latency_ms: None,
            stable_jitter_ms: None,
            canary_latency_ms: None,
            canary_jitter_ms: None,
            out: None,
            smoke: true,
        };
        let options = args.options();
        assert_eq!((options.runs, options.scenarios.as_slice()), (1, &[ScenarioKind::Errors][..]));
        let options = DetectionArgs { smoke: false, runs: Some(3), ..args }.options();
        assert_eq!((options.runs, options.scenarios.len(), options.rate_per_second), (3, 2, 1_000.0));
    }
}
