//! Validation by simulation: many seeded rollouts through the real engine,
//! with two baselines alongside on the same traffic.
//!
//! A simulated rollout is a sequence of one-second ticks of aggregated counts,
//! generated directly rather than request by request:
//! - Requests per arm and latency bucket are independent Poisson counts
//!   (Poissonisation of a Poisson arrival stream split by weight and by
//!   latency), so a tick costs a few dozen draws however much traffic it
//!   carries.
//! - Latency is lognormal, discretised into 16 quantile bins (finer in the
//!   tail) whose values are placed into the shared histogram layout.
//! - Errors are binomial among the arm's requests; "overdispersed" scenarios
//!   multiply each arm's error probability every tick by an independent
//!   Gamma(r, 1/r) factor, which makes the counts negative binomial with size
//!   r, the arms' bursts unrelated to each other.
//! - Diurnal drift: traffic, the baseline error rate and the latency median
//!   follow one sinusoid with a random phase per run, over a compressed
//!   30-minute period, so every run sees a full cycle.
//!
//! The engine sees exactly what the analyzer would: [`Tick`]s, and at each
//! step a stable reference histogram (the previous minute of stable), or
//! none for the first step of the A/A scenarios so that calibration from the
//! step's own traffic is exercised too.
//!
//! Baselines on the same ticks:
//! - Flagger-style: every 60 s, fail the check when the canary's error rate
//!   over the minute is above 1% or its p99 is above 500 ms (Flagger's
//!   defaults); roll back after 5 failed checks.
//! - Naive: a one-sided two-proportion z-test every second on the step's
//!   cumulative counts, for the error rate and for the share of requests
//!   above stable's p95, each at α/2 (a valid level-α test if looked at
//!   once).
//!
//! Runs are independent and seeded from (seed, scenario name, run), so
//! results depend neither on the number of threads nor on which other
//! scenarios run.

mod rng;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use canary_protocol::LatencyHistogram;
use canary_protocol::latency::{GROUPING_POWER, MAX_LATENCY_US};
use statrs::function::erf::erf_inv;

pub use rng::SimRng;

use super::{Analysis, AnalysisSettings, ArmTick, Tick, Verdict};

/// Probability edges of the latency bins: coarse in the body, finer above
/// the p90 so that the p95 and p99 thresholds have bins on both sides. Each
/// bin is one Poisson draw per arm and tick, the simulation's main cost.
const LATENCY_BIN_EDGES: [f64; 17] =
    [0.0, 0.03, 0.08, 0.15, 0.25, 0.375, 0.5, 0.625, 0.75, 0.85, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999, 1.0];

/// Flagger's defaults: a check a minute, rollback after five failures,
/// request-success-rate ≥ 99% and request-duration p99 ≤ 500 ms.
const FLAGGER_INTERVAL_S: u32 = 60;
const FLAGGER_FAILURES_TO_ROLLBACK: u32 = 5;
const FLAGGER_MAX_ERROR_RATE: f64 = 0.01;
const FLAGGER_MAX_P99_MS: f64 = 500.0;

/// Stable traffic before the first step, the reference for A/B runs.
const REFERENCE_WINDOW_S: u32 = 60;

/// What a scenario is expected to show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expectation {
    /// Canary and stable are the same: every rollback is false.
    NoRegression,
    /// The canary is worse: rollbacks are detections, ideally with a median
    /// time at most this (seconds).
    Regression { target_median_s: Option<f64> },
}

/// How the canary's latency differs from stable's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatencyShift {
    None,
    /// Every latency multiplied (p50, p95 and p99 all scale).
    Scale(f64),
    /// Only the latencies above the arm's `from_quantile` multiplied.
    Tail {
        from_quantile: f64,
        factor: f64,
    },
}

/// One step of a simulated rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimStep {
    pub canary_share: f64,
    pub duration_s: u32,
}

/// A family of simulated rollouts.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub expectation: Expectation,
    pub runs: usize,
    pub steps: Vec<SimStep>,
    /// Both arms together, before drift.
    pub total_rps: f64,
    /// Relative amplitudes of the diurnal sinusoid (0 = none).
    pub traffic_drift: f64,
    pub error_rate_drift: f64,
    pub latency_drift: f64,
    pub drift_period_s: f64,
    pub stable_error_rate: f64,
    pub canary_error_rate: f64,
    /// Negative-binomial size r of the error counts; `None` for binomial.
    pub error_dispersion: Option<f64>,
    pub latency_median_ms: f64,
    pub latency_sigma: f64,
    pub canary_latency: LatencyShift,
    /// Whether the first step gets a stable reference (from a minute of
    /// stable-only traffic) or calibrates from its own traffic.
    pub reference_for_first_step: bool,
}

impl Scenario {
    pub fn horizon_s(&self) -> u32 {
        self.steps.iter().map(|s| s.duration_s).sum()
    }
}

/// Knobs of a simulation run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulationConfig {
    pub seed: u64,
    /// Runs per A/A scenario.
    pub runs_aa: usize,
    /// Runs per A/B scenario.
    pub runs_ab: usize,
    pub threads: usize,
    pub alpha: f64,
}

impl Default for SimulationConfig {
    fn default() -> Self {
        SimulationConfig { seed: 1, runs_aa: 2_000, runs_ab: 500, threads: 1, alpha: 0.01 }
    }
}

/// The scenarios of `docs/statistics.md`: two A/A families (Poisson and
/// overdispersed errors, 30-minute rollouts through 10% → 25% → 50% with
/// diurnal drift) and four A/B families at 100 canary and 900 stable
/// requests a second.
pub fn standard_scenarios(config: &SimulationConfig) -> Vec<Scenario> {
    let aa = Scenario {
        name: String::new(),
        expectation: Expectation::NoRegression,
        runs: config.runs_aa,
        steps: vec![
            SimStep { canary_share: 0.10, duration_s: 600 },
            SimStep { canary_share: 0.25, duration_s: 600 },
            SimStep { canary_share: 0.50, duration_s: 600 },
        ],
        total_rps: 1_000.0,
        traffic_drift: 0.5,
        error_rate_drift: 0.5,
        latency_drift: 0.2,
        drift_period_s: 1_800.0,
        stable_error_rate: 0.001,
        canary_error_rate: 0.001,
        error_dispersion: None,
        latency_median_ms: 50.0,
        latency_sigma: 0.5,
        canary_latency: LatencyShift::None,
        reference_for_first_step: false,
    };
    let ab = |name: &str, target_median_s: Option<f64>| Scenario {
        name: name.to_owned(),
        expectation: Expectation::Regression { target_median_s },
        runs: config.runs_ab,
        steps: vec![SimStep { canary_share: 0.10, duration_s: 900 }],
        traffic_drift: 0.0,
        error_rate_drift: 0.0,
        latency_drift: 0.0,
        reference_for_first_step: true,
        ..aa.clone()
    };
    vec![
        Scenario { name: "A/A, binomial errors, drift".to_owned(), ..aa.clone() },
        Scenario {
            name: "A/A, negative-binomial errors (r = 1), drift".to_owned(),
            error_dispersion: Some(1.0),
            ..aa.clone()
        },
        Scenario { canary_error_rate: 0.05, ..ab("A/B errors 5% vs 0.1%", Some(10.0)) },
        Scenario { canary_error_rate: 0.005, ..ab("A/B errors 0.5% vs 0.1%", Some(60.0)) },
        Scenario { canary_latency: LatencyShift::Scale(1.5), ..ab("A/B latency ×1.5 (p95 ×1.5)", Some(10.0)) },
        Scenario {
            canary_latency: LatencyShift::Tail { from_quantile: 0.95, factor: 2.0 },
            ..ab("A/B latency tail: slowest 5% ×2", None)
        },
    ]
}

/// How one method did over a scenario's runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodOutcome {
    pub rollbacks: usize,
    /// Seconds from the start of the rollout to each rollback, ascending.
    pub times_s: Vec<u32>,
    /// Rule that fired → count (the engine only).
    pub rules: BTreeMap<String, usize>,
}

impl MethodOutcome {
    pub fn rate(&self, runs: usize) -> f64 {
        if runs == 0 { 0.0 } else { self.rollbacks as f64 / runs as f64 }
    }

    /// Nearest-rank quantile of the time to rollback over all `runs`,
    /// counting runs without a rollback as never: `None` when the quantile
    /// falls among those.
    pub fn time_quantile_s(&self, quantile: f64, runs: usize) -> Option<u32> {
        let rank = ((quantile * runs as f64).ceil() as usize).max(1);
        self.times_s.get(rank - 1).copied()
    }

    fn record(&mut self, time_s: u32, rule: Option<String>) {
        self.rollbacks += 1;
        self.times_s.push(time_s);
        if let Some(rule) = rule {
            *self.rules.entry(rule).or_default() += 1;
        }
    }
}

/// The three methods on one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioOutcome {
    pub scenario: Scenario,
    pub engine: MethodOutcome,
    pub flagger: MethodOutcome,
    pub naive: MethodOutcome,
}

/// Runs every scenario; deterministic for a given config whatever
/// `threads` is.
pub fn run_all(config: &SimulationConfig, scenarios: &[Scenario]) -> Vec<ScenarioOutcome> {
    let settings = AnalysisSettings { alpha: config.alpha, ..AnalysisSettings::default() };
    scenarios
        .iter()
        .map(|scenario| run_scenario(scenario, &settings, scenario_seed(config.seed, &scenario.name), config.threads))
        .collect()
}

/// A scenario's base seed from the run's seed and the scenario's name, so
/// that running a subset of the scenarios reproduces their rows exactly.
fn scenario_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a: stable across platforms and releases, unlike `DefaultHasher`.
    let hash = name
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
    seed ^ hash
}

/// Runs one scenario's runs over `threads` threads.
pub fn run_scenario(scenario: &Scenario, settings: &AnalysisSettings, seed: u64, threads: usize) -> ScenarioOutcome {
    let threads = threads.clamp(1, scenario.runs.max(1));
    let mut results: Vec<Option<RunOutcome>> = vec![None; scenario.runs];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || {
                    (thread..scenario.runs)
                        .step_by(threads)
                        .map(|run| (run, simulate_run(scenario, settings, seed.wrapping_add(run as u64))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            // A panicking run is a bug in the simulation, and a table with
            // runs silently missing would be wrong: pass the panic on.
            match handle.join() {
                Ok(outcomes) => {
                    for (run, outcome) in outcomes {
                        if let Some(slot) = results.get_mut(run) {
                            *slot = Some(outcome);
                        }
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    let (mut engine, mut flagger, mut naive) =
        (MethodOutcome::default(), MethodOutcome::default(), MethodOutcome::default());
    for outcome in results.into_iter().flatten() {
        if let Some((time_s, rule)) = outcome.engine {
            engine.record(time_s, Some(rule));
        }
        if let Some(time_s) = outcome.flagger {
            flagger.record(time_s, None);
        }
        if let Some(time_s) = outcome.naive {
            naive.record(time_s, None);
        }
    }
    for method in [&mut engine, &mut flagger, &mut naive] {
        method.times_s.sort_unstable();
    }
    ScenarioOutcome { scenario: scenario.clone(), engine, flagger, naive }
}

/// When each method rolled back in one run (seconds since the rollout
/// started), if it did.
#[derive(Debug, Clone, Default)]
struct RunOutcome {
    engine: Option<(u32, String)>,
    flagger: Option<u32>,
    naive: Option<u32>,
}

fn simulate_run(scenario: &Scenario, settings: &AnalysisSettings, seed: u64) -> RunOutcome {
    let mut rng = SimRng::new(seed);
    let traffic = Traffic::new(scenario, rng.uniform() * std::f64::consts::TAU);
    let mut outcome = RunOutcome::default();
    let mut analysis = Analysis::new(settings.clone());
    let mut flagger = Flagger::new();
    let mut naive = NaiveZ::new(settings.alpha);
    let mut tick = Tick::default();

    // A minute of stable-only traffic before the rollout, the first step's
    // reference when the scenario asks for one.
    let mut reference = LatencyHistogram::new();
    if scenario.reference_for_first_step {
        for second in 0..REFERENCE_WINDOW_S {
            let at = traffic.at(f64::from(second) - f64::from(REFERENCE_WINDOW_S));
            traffic.arm(&mut rng, &at, 1.0, false, &mut tick.stable);
            reference.merge_sparse(&tick.stable.latency_us);
        }
    }

    let mut second = 0u32;
    for (index, step) in scenario.steps.iter().enumerate() {
        let now_ms = u64::from(second) * 1_000;
        let stable_reference = (index > 0 || scenario.reference_for_first_step).then_some(&reference);
        analysis.start_step(settings.clone(), step.canary_share, stable_reference, now_ms);
        naive.start_step(&traffic, f64::from(second));
        let mut next_reference = LatencyHistogram::new();
        for step_second in 0..step.duration_s {
            let at = traffic.at(f64::from(second));
            let engine_open = outcome.engine.is_none();
            let naive_open = outcome.naive.is_none();
            if !engine_open && !naive_open && outcome.flagger.is_some() {
                return outcome;
            }
            traffic.arm(&mut rng, &at, step.canary_share, true, &mut tick.canary);
            // Stable only matters to the comparisons; Flagger looks at the
            // canary alone.
            if engine_open || naive_open {
                traffic.arm(&mut rng, &at, 1.0 - step.canary_share, false, &mut tick.stable);
            } else {
                tick.stable = ArmTick::default();
            }
            second += 1;
            tick.now_ms = u64::from(second) * 1_000;
            if engine_open {
                let verdict = analysis.observe_verdict(&tick);
                if let Verdict::Regression { rule, .. } | Verdict::GuardTripped { rule, .. } = verdict {
                    outcome.engine = Some((second, rule));
                }
            }
            if naive_open && naive.observe(&tick) {
                outcome.naive = Some(second);
            }
            if outcome.flagger.is_none() && flagger.observe(&tick.canary) {
                outcome.flagger = Some(second);
            }
            if step.duration_s - step_second <= REFERENCE_WINDOW_S {
                next_reference.merge_sparse(&tick.stable.latency_us);
            }
        }
        reference = next_reference;
    }
    outcome
}

/// The traffic model of a scenario with its run's drift phase.
struct Traffic<'a> {
    scenario: &'a Scenario,
    phase: f64,
    /// Probability of each latency bin.
    bin_probabilities: Vec<f64>,
    /// exp(σ·z) at each bin's middle quantile, before and after the
    /// canary's shift.
    stable_multipliers: Vec<f64>,
    canary_multipliers: Vec<f64>,
}

/// The drifted parameters at one moment.
struct Moment {
    total_rps: f64,
    error_rate_factor: f64,
    latency_median_ms: f64,
}

impl<'a> Traffic<'a> {
    fn new(scenario: &'a Scenario, phase: f64) -> Traffic<'a> {
        let mut bin_probabilities = Vec::new();
        let mut stable_multipliers = Vec::new();
        let mut canary_multipliers = Vec::new();
        for edges in LATENCY_BIN_EDGES.windows(2) {
            let (low, high) = (edges[0], edges[1]);
            let middle = 0.5 * (low + high);
            let z = std::f64::consts::SQRT_2 * erf_inv(2.0 * middle - 1.0);
            let multiplier = (scenario.latency_sigma * z).exp();
            let shift = match scenario.canary_latency {
                LatencyShift::None => 1.0,
                LatencyShift::Scale(factor) => factor,
                LatencyShift::Tail { from_quantile, factor } => {
                    if low >= from_quantile {
                        factor
                    } else {
                        1.0
                    }
                }
            };
            bin_probabilities.push(high - low);
            stable_multipliers.push(multiplier);
            canary_multipliers.push(multiplier * shift);
        }
        Traffic { scenario, phase, bin_probabilities, stable_multipliers, canary_multipliers }
    }

    fn at(&self, second: f64) -> Moment {
        let s = self.scenario;
        let wave = (std::f64::consts::TAU * second / s.drift_period_s.max(1.0) + self.phase).sin();
        Moment {
            total_rps: s.total_rps * (1.0 + s.traffic_drift * wave),
            error_rate_factor: 1.0 + s.error_rate_drift * wave,
            latency_median_ms: s.latency_median_ms * (1.0 + s.latency_drift * wave),
        }
    }

    /// One second of one arm receiving `share` of the traffic.
    fn arm(&self, rng: &mut SimRng, at: &Moment, share: f64, canary: bool, out: &mut ArmTick) {
        let s = self.scenario;
        let rate_rps = at.total_rps * share;
        let multipliers = if canary { &self.canary_multipliers } else { &self.stable_multipliers };
        let buckets = &mut out.latency_us.buckets;
        buckets.clear();
        let mut requests = 0u64;
        for (probability, multiplier) in self.bin_probabilities.iter().zip(multipliers) {
            let count = rng.poisson(rate_rps * probability);
            if count == 0 {
                continue;
            }
            requests += count;
            let index = bucket_index_ms(at.latency_median_ms * multiplier);
            match buckets.last_mut() {
                Some((last, total)) if *last == index => *total += count,
                _ => buckets.push((index, count)),
            }
        }
        out.requests = requests;
        let base_rate = if canary { s.canary_error_rate } else { s.stable_error_rate };
        let frailty = s.error_dispersion.map_or(1.0, |size| rng.gamma(size) / size);
        out.errors = rng.binomial(requests, (base_rate * at.error_rate_factor * frailty).min(1.0));
    }
}

/// The shared layout's bucket of a latency, computed rather than searched
/// (the simulation places dozens of values a tick): values below 2^(p+1)
/// have their own bucket, and above, with h the highest set bit and
/// w = h − p, the index is w·2^p + (v >> w), for grouping power p = 7. The
/// tests check it against the protocol's bucket table.
fn bucket_index_ms(latency_ms: f64) -> u32 {
    let latency_us = ((latency_ms * 1_000.0).max(0.0) as u64).min(MAX_LATENCY_US);
    let grouping = u32::from(GROUPING_POWER);
    if latency_us < 1 << (grouping + 1) {
        return latency_us as u32;
    }
    let shift = (63 - latency_us.leading_zeros()) - grouping;
    (shift << grouping) + (latency_us >> shift) as u32
}

/// Flagger-style threshold checks on the canary alone.
struct Flagger {
    seconds: u32,
    failures: u32,
    p99_first_bucket_above: u32,
    requests: u64,
    errors: u64,
    samples: u64,
    above: u64,
}

impl Flagger {
    fn new() -> Flagger {
        Flagger {
            seconds: 0,
            failures: 0,
            p99_first_bucket_above: bucket_index_ms(FLAGGER_MAX_P99_MS) + 1,
            requests: 0,
            errors: 0,
            samples: 0,
            above: 0,
        }
    }

    /// True when this tick's check is the fifth failure.
    fn observe(&mut self, canary: &ArmTick) -> bool {
        self.seconds += 1;
        self.requests += canary.requests;
        self.errors += canary.errors;
        for &(index, count) in &canary.latency_us.buckets {
            self.samples += count;
            if index >= self.p99_first_bucket_above {
                self.above += count;
            }
        }
        if !self.seconds.is_multiple_of(FLAGGER_INTERVAL_S) {
            return false;
        }
        let p99_rank = (0.99 * self.samples as f64).ceil() as u64;
        let error_failed = self.errors as f64 > FLAGGER_MAX_ERROR_RATE * self.requests as f64;
        let latency_failed = self.samples > 0 && self.above > self.samples - p99_rank.min(self.samples);
        if error_failed || latency_failed {
            self.failures += 1;
        }
        (self.requests, self.errors, self.samples, self.above) = (0, 0, 0, 0);
        self.failures >= FLAGGER_FAILURES_TO_ROLLBACK
    }
}

/// Two-proportion z-tests every second on the step's cumulative counts.
struct NaiveZ {
    critical_z: f64,
    /// Samples in buckets after this one are above stable's p95.
    p95_bucket: u32,
    canary: NaiveCounts,
    stable: NaiveCounts,
}

#[derive(Default)]
struct NaiveCounts {
    requests: u64,
    errors: u64,
    samples: u64,
    above: u64,
}

impl NaiveZ {
    fn new(alpha: f64) -> NaiveZ {
        // One-sided at α/2 for each of the two metrics.
        let critical_z = std::f64::consts::SQRT_2 * erf_inv(1.0 - alpha);
        NaiveZ { critical_z, p95_bucket: u32::MAX, canary: NaiveCounts::default(), stable: NaiveCounts::default() }
    }

    /// Resets the counts and fixes the latency threshold at stable's true
    /// p95 at the step's start (the bin that holds the 0.95 quantile).
    fn start_step(&mut self, traffic: &Traffic<'_>, second: f64) {
        let median = traffic.at(second).latency_median_ms;
        let mut cumulative = 0.0;
        for (probability, multiplier) in traffic.bin_probabilities.iter().zip(&traffic.stable_multipliers) {
            cumulative += probability;
            if cumulative >= 0.95 - 1e-12 {
                self.p95_bucket = bucket_index_ms(median * multiplier);
                break;
            }
        }
        self.canary = NaiveCounts::default();
        self.stable = NaiveCounts::default();
    }

    fn observe(&mut self, tick: &Tick) -> bool {
        for (counts, arm) in [(&mut self.canary, &tick.canary), (&mut self.stable, &tick.stable)] {
            counts.requests += arm.requests;
            counts.errors += arm.errors;
            for &(index, count) in &arm.latency_us.buckets {
                counts.samples += count;
                if index > self.p95_bucket {
                    counts.above += count;
                }
            }
        }
        let (c, s) = (&self.canary, &self.stable);
        two_proportion_z(c.errors, c.requests, s.errors, s.requests) > self.critical_z
            || two_proportion_z(c.above, c.samples, s.above, s.samples) > self.critical_z
    }
}

/// Pooled two-proportion z statistic of (x1/n1 − x2/n2); 0 when undefined.
fn two_proportion_z(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 0.0;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    if !(pooled > 0.0 && pooled < 1.0) {
        return 0.0;
    }
    (x1 as f64 / n1f - x2 as f64 / n2f) / (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt()
}

/// The bounds the issue sets, checked: every A/A scenario's engine
/// false-rollback rate at most α, and every A/B scenario with a target
/// detected with a median time at most that. Returns what failed, in words.
pub fn check_bounds(config: &SimulationConfig, outcomes: &[ScenarioOutcome]) -> Vec<String> {
    let mut failures = Vec::new();
    for outcome in outcomes {
        let s = &outcome.scenario;
        match s.expectation {
            Expectation::NoRegression => {
                let rate = outcome.engine.rate(s.runs);
                if rate > config.alpha {
                    failures.push(format!("{}: false-rollback rate {rate} > α = {}", s.name, config.alpha));
                }
            }
            Expectation::Regression { target_median_s: Some(target) } => {
                match outcome.engine.time_quantile_s(0.5, s.runs) {
                    Some(median) if f64::from(median) <= target => {}
                    median => failures.push(format!("{}: median time to rollback {median:?} s > {target} s", s.name)),
                }
            }
            Expectation::Regression { target_median_s: None } => {}
        }
    }
    failures
}

/// The results as markdown: one table of the three methods side by side and
/// one of the rules the engine's rollbacks came from.
pub fn render_markdown(config: &SimulationConfig, outcomes: &[ScenarioOutcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Seed {}, α = {}, {} runs per A/A scenario, {} per A/B scenario.\n",
        config.seed, config.alpha, config.runs_aa, config.runs_ab
    );
    let _ = writeln!(
        out,
        "| scenario | runs | horizon | target | anytime-valid engine | Flagger-style (60 s checks, 5 failures) | naive z-test every 1 s |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---|---|---|");
    for outcome in outcomes {
        let s = &outcome.scenario;
        let target = match s.expectation {
            Expectation::NoRegression => format!("false rollbacks ≤ {}%", trim(config.alpha * 100.0)),
            Expectation::Regression { target_median_s: Some(t) } => format!("median ≤ {t} s"),
            Expectation::Regression { target_median_s: None } => "—".to_owned(),
        };
        let cell = |method: &MethodOutcome| match s.expectation {
            Expectation::NoRegression => format!(
                "{}% false rollbacks ({}/{})",
                trim_precise(method.rate(s.runs) * 100.0),
                method.rollbacks,
                s.runs
            ),
            Expectation::Regression { .. } => {
                let time =
                    |q: f64| method.time_quantile_s(q, s.runs).map_or_else(|| "never".to_owned(), |t| format!("{t} s"));
                format!("{} / {} (rolled back {}%)", time(0.5), time(0.9), trim(method.rate(s.runs) * 100.0))
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} min | {} | {} | {} | {} |",
            s.name,
            s.runs,
            s.horizon_s() / 60,
            target,
            cell(&outcome.engine),
            cell(&outcome.flagger),
            cell(&outcome.naive)
        );
    }
    let _ = writeln!(
        out,
        "\nA/B cells: median / p90 time to rollback over all runs (\"never\": not within the horizon).\n"
    );
    let _ = writeln!(out, "| scenario | engine rollbacks by rule |");
    let _ = writeln!(out, "|---|---|");
    for outcome in outcomes {
        let rules = if outcome.engine.rules.is_empty() {
            "none".to_owned()
        } else {
            outcome.engine.rules.iter().map(|(rule, count)| format!("{rule}: {count}")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(out, "| {} | {} |", outcome.scenario.name, rules);
    }
    out
}

fn trim(value: f64) -> String {
    let text = format!("{value:.1}");
    text.strip_suffix(".0").map_or(text.clone(), str::to_owned)
}

fn trim_precise(value: f64) -> String {
    format!("{value:.2}")
}

#[cfg(test)]
mod tests {
    use canary_protocol::SparseLatency;

    use super::*;

    #[test]
    fn two_proportion_z_is_signed_and_safe() {
        assert!(two_proportion_z(50, 1_000, 10, 1_000) > 5.0);
        assert!(two_proportion_z(10, 1_000, 50, 1_000) < -5.0);
        assert_eq!(two_proportion_z(0, 0, 5, 10), 0.0);
        assert_eq!(two_proportion_z(0, 10, 0, 10), 0.0);
    }

    #[test]
    fn computed_bucket_index_matches_the_protocol_table() {
        let bounds = canary_protocol::latency::bucket_bounds();
        let mut rng = SimRng::new(9);
        let mut values: Vec<u64> = (0..2_000).map(|v| v * 7).collect();
        values.extend((0..20_000).map(|_| rng.next_u64() >> (rng.next_u64() % 64)));
        values.extend(bounds.iter().flat_map(|&(lower, upper)| [lower, upper]));
        for value_us in values {
            let value_us = value_us.min(MAX_LATENCY_US);
            let index = bucket_index_ms(value_us as f64 / 1_000.0) as usize;
            let (lower, upper) = bounds[index];
            // Division by 1,000 and back can lose a microsecond.
            assert!(
                lower <= value_us + 1 && value_us <= upper + 1,
                "{value_us} µs in bucket {index} {lower}..={upper}"
            );
        }
    }

    #[test]
    fn traffic_matches_its_parameters() {
        let config = SimulationConfig::default();
        let scenario = standard_scenarios(&config).remove(0);
        let traffic = Traffic::new(&scenario, 0.0);
        assert!((traffic.bin_probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let mut rng = SimRng::new(5);
        let at = Moment { total_rps: 1_000.0, error_rate_factor: 1.0, latency_median_ms: 50.0 };
        let mut arm = ArmTick::default();
        let mut histogram = LatencyHistogram::new();
        let (mut requests, mut errors) = (0u64, 0u64);
        for _ in 0..2_000 {
            traffic.arm(&mut rng, &at, 0.9, false, &mut arm);
            requests += arm.requests;
            errors += arm.errors;
            histogram.merge_sparse(&arm.latency_us);
            assert_eq!(arm.latency_us.total_count(), arm.requests);
            assert!(arm.latency_us.buckets.windows(2).all(|w| w[0].0 < w[1].0));
        }
        let expected_requests = 900.0 * 2_000.0;
        assert!((requests as f64 / expected_requests - 1.0).abs() < 0.01);
        assert!((errors as f64 / requests as f64 / 0.001 - 1.0).abs() < 0.05);
        // Lognormal(ln 50 ms, 0.5): median 50 ms, p95 about 114 ms.
        let [p50, p95] = histogram.quantiles_us([0.5, 0.95]).unwrap_or([0, 0]);
        assert!((45_000..=56_000).contains(&p50), "p50 {p50}");
        assert!((100_000..=125_000).contains(&p95), "p95 {p95}");
    }

    #[test]
    fn flagger_needs_five_failed_minutes() {
        let mut flagger = Flagger::new();
        let bad = ArmTick { requests: 100, errors: 5, latency_us: SparseLatency::default() };
        let rolled_back_at = (1..=600).find(|_| flagger.observe(&bad));
        assert_eq!(rolled_back_at, Some(300));
    }
}
