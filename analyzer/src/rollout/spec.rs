//! The rollout spec: what a person or a pipeline submits to
//! `POST /v1/rollouts`, in YAML or JSON.
//!
//! Its shape follows Argo Rollouts' canary `steps` (`setWeight`, `pause`),
//! with camelCase keys. Parsing is two stages: the text becomes a JSON value
//! (YAML is converted, so both formats give the same errors), then the value
//! is read into `Raw*` types through `serde_path_to_error`, whose path names
//! the field at fault (`steps[1].setWeight`). The leaf types ([`Percent`],
//! [`DurationMs`], [`Ratio`]) validate while they are read, so their errors
//! carry the path too. Rules that span fields are checked afterwards, and the
//! result is a [`RolloutSpec`] with every default resolved: the rest of the
//! analyzer never sees an optional setting.

use std::fmt;

use canary_protocol::CanaryWeight;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Pause between steps when `steps` is omitted: the brief's production hold.
pub const DEFAULT_PAUSE_MS: u64 = 30 * 60 * 1_000;
/// The brief's schedule: 10% → 25% → 50% → 100%.
pub const DEFAULT_WEIGHTS_BP: [u16; 3] = [1_000, 2_500, 5_000];
/// Watch after a blue-green switch, during which only the guards run.
pub const DEFAULT_POST_SWITCH_WATCH_MS: u64 = 5 * 60 * 1_000;
/// How long blue-green pre-checks may wait for healthy canary hosts.
pub const DEFAULT_PRE_CHECKS_TIMEOUT_MS: u64 = 10 * 60 * 1_000;
/// More steps than this is a mistake, not a rollout plan.
pub const MAX_STEPS: usize = 64;
/// Longest duration accepted anywhere in a spec (one week).
pub const MAX_DURATION_MS: u64 = 7 * 24 * 60 * 60 * 1_000;

/// How the rollout moves traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// Steps of `setWeight` and `pause`, each promoted on evidence.
    Canary,
    /// 0% → 100% in one weight change once the pre-checks pass.
    BlueGreen,
    /// Weights only through the API; analysis is advisory.
    Manual,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::BlueGreen => "blueGreen",
            Strategy::Manual => "manual",
        }
    }
}

/// What happens when the analysis finds a regression or a guard trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailurePolicy {
    /// Canary to 0% at once.
    Rollback,
    /// Freeze the weights and wait for a person.
    Pause,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Rollback => "rollback",
            FailurePolicy::Pause => "pause",
        }
    }
}

/// A validated spec with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    pub name: String,
    pub canary_version: String,
    pub stable_version: Option<String>,
    pub strategy: Strategy,
    pub failure_policy: FailurePolicy,
    /// The spec-wide analysis settings (steps may override them).
    pub analysis: AnalysisConfig,
    /// Resolved steps: the default schedule when omitted, synthesized for
    /// blue-green, empty for manual.
    pub steps: Vec<Step>,
}

/// One resolved step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Step {
    /// Set the canary weight; takes no time.
    SetWeight { weight_bp: u16 },
    /// Hold the weight while the analysis collects evidence; leaves after
    /// the duration once the evidence passes, or on approval.
    Pause { wait: PauseWait, analysis: AnalysisConfig },
    /// Blue-green only: wait at 0% for healthy canary hosts (and approval
    /// if asked) before the switch.
    PreChecks { until_approved: bool, timeout_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseWait {
    Duration { duration_ms: u64 },
    UntilApproved,
}

/// The analysis engine's settings as the spec resolves them; the controller
/// turns them into `analysis::AnalysisSettings`. Kept apart from the
/// engine's type so that the persisted spec does not change shape when the
/// engine does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisConfig {
    pub alpha: f64,
    pub error_test: bool,
    pub latency_test: bool,
    pub latency_quantiles: Vec<f64>,
    pub min_canary_requests: u64,
    #[serde(default = "default_latency_warmup_ms")]
    pub latency_warmup_ms: u64,
    #[serde(default = "default_latency_tolerance")]
    pub latency_tolerance: f64,
    pub guards: GuardsConfig,
    pub gates: GatesConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardsConfig {
    pub max_error_rate: f64,
    pub max_error_rate_for_ms: u64,
    pub max_p95_ms: f64,
    pub max_p95_for_ms: u64,
    pub max_unhealthy_host_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatesConfig {
    pub max_error_rate: f64,
    pub max_p95_ms: f64,
    pub min_throughput_ratio: f64,
    pub require_healthy_hosts: bool,
}

impl Default for AnalysisConfig {
    /// The brief's numbers: gates at 1% errors and 200 ms p95, guards at 5%
    /// for 2 minutes and 500 ms for 5 minutes, half the hosts unhealthy.
    fn default() -> Self {
        AnalysisConfig {
            alpha: 0.01,
            error_test: true,
            latency_test: true,
            latency_quantiles: vec![0.5, 0.95, 0.99],
            min_canary_requests: 100,
            latency_warmup_ms: default_latency_warmup_ms(),
            latency_tolerance: default_latency_tolerance(),
            guards: GuardsConfig {
                max_error_rate: 0.05,
                max_error_rate_for_ms: 120_000,
                max_p95_ms: 500.0,
                max_p95_for_ms: 300_000,
                max_unhealthy_host_ratio: 0.5,
            },
            gates: GatesConfig {
                max_error_rate: 0.01,
                max_p95_ms: 200.0,
                min_throughput_ratio: 0.9,
                require_healthy_hosts: true,
            },
        }
    }
}

fn default_latency_warmup_ms() -> u64 {
    5_000
}

fn default_latency_tolerance() -> f64 {
    0.25
}

/// Why a spec was refused: the field (as a path such as `steps[1].pause`)
/// and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|field| format!("{field}: ")).unwrap_or_default())]
pub struct SpecError {
    /// `None` when the body as a whole is unreadable.
    pub field: Option<String>,
    pub message: String,
    /// True when the body is not YAML/JSON at all (400) rather than a
    /// readable spec with a wrong field (422).
    pub syntax: bool,
}

impl SpecError {
    fn field(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError { field: Some(field.into()), message: message.into(), syntax: false }
    }

    fn syntax(message: impl Into<String>) -> SpecError {
        SpecError { field: None, message: message.into(), syntax: true }
    }
}

/// Which parser a body goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    Json,
    /// Also reads JSON, which is (almost) a subset of YAML.
    Yaml,
}

impl SpecFormat {
    /// From a `Content-Type`: JSON for `application/json` and `+json`
    /// types, YAML otherwise (including no header), since YAML reads both.
    pub fn from_content_type(content_type: Option<&str>) -> SpecFormat {
        let essence = content_type.and_then(|value| value.split(';').next()).map(|value| value.trim().to_lowercase());
        match essence.as_deref() {
            Some("application/json") => SpecFormat::Json,
            Some(other) if other.ends_with("+json") => SpecFormat::Json,
            _ => SpecFormat::Yaml,
        }
    }
}

impl RolloutSpec {
    /// Parses and validates a spec body.
    pub fn parse(body: &[u8], format: SpecFormat) -> Result<RolloutSpec, SpecError> {
        let value = match format {
            SpecFormat::Json => serde_json::from_slice::<Value>(body)
                .map_err(|error| SpecError::syntax(format!("body is not valid JSON: {error}")))?,
            SpecFormat::Yaml => {
                let yaml: serde_norway::Value = serde_norway::from_slice(body)
                    .map_err(|error| SpecError::syntax(format!("body is not valid YAML or JSON: {error}")))?;
                serde_json::to_value(yaml).map_err(|error| {
                    SpecError::syntax(format!("body uses YAML that has no JSON equivalent: {error}"))
                })?
            }
        };
        if !value.is_object() {
            return Err(SpecError::syntax("a rollout spec is a mapping (YAML) or an object (JSON)"));
        }
        let raw: RawSpec = serde_path_to_error::deserialize(&value).map_err(path_error)?;
        raw.resolve()
    }

    /// Parses a spec file's text (examples, tests); the format follows the
    /// extension, YAML by default.
    pub fn parse_file_text(path: &str, text: &str) -> Result<RolloutSpec, SpecError> {
        let format = if path.ends_with(".json") { SpecFormat::Json } else { SpecFormat::Yaml };
        RolloutSpec::parse(text.as_bytes(), format)
    }
}

/// Turns a serde error with its path into a [`SpecError`]. The path of an
/// unknown key already ends with it; a missing one is named after its parent.
fn path_error(error: serde_path_to_error::Error<serde_json::Error>) -> SpecError {
    let parent = error.path().to_string();
    let message = error.inner().to_string();
    let join = |child: &str| if parent == "." { child.to_owned() } else { format!("{parent}.{child}") };
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some((name, _)) = rest.split_once('`')
    {
        return SpecError::field(join(name), "required".to_owned());
    }
    SpecError::field(if parent == "." { "spec".to_owned() } else { parent }, message)
}

// ---------------------------------------------------------------------------
// The spec as written.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    name: Option<String>,
    canary_version: Option<String>,
    stable_version: Option<String>,
    strategy: Option<Strategy>,
    failure_policy: Option<FailurePolicy>,
    analysis: Option<RawAnalysis>,
    steps: Option<Vec<RawStep>>,
    pre_checks: Option<RawPreChecks>,
    post_switch_watch: Option<DurationMs>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawStep {
    set_weight: Option<Percent>,
    pause: Option<RawPause>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPause {
    duration: Option<DurationMs>,
    until_approved: Option<bool>,
    analysis: Option<RawAnalysis>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPreChecks {
    until_approved: Option<bool>,
    timeout: Option<DurationMs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawAnalysis {
    alpha: Option<Alpha>,
    error_test: Option<bool>,
    latency_test: Option<bool>,
    latency_quantiles: Option<Vec<Quantile>>,
    min_canary_requests: Option<u64>,
    latency_warmup: Option<DurationMs>,
    latency_tolerance: Option<f64>,
    guards: Option<RawGuards>,
    gates: Option<RawGates>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGuards {
    max_error_rate: Option<Ratio>,
    max_error_rate_for: Option<DurationMs>,
    #[serde(rename = "maxP95")]
    max_p95: Option<DurationMs>,
    #[serde(rename = "maxP95For")]
    max_p95_for: Option<DurationMs>,
    max_unhealthy_host_ratio: Option<Ratio>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGates {
    max_error_rate: Option<Ratio>,
    #[serde(rename = "maxP95")]
    max_p95: Option<DurationMs>,
    min_throughput_ratio: Option<Ratio>,
    require_healthy_hosts: Option<bool>,
}

impl RawSpec {
    fn resolve(self) -> Result<RolloutSpec, SpecError> {
        let canary_version = match self.canary_version {
            Some(version) => label("canaryVersion", version, 128)?,
            None => {
                return Err(SpecError::field("canaryVersion", "required: the canary's version label, e.g. v1.5.0"));
            }
        };
        let stable_version = self.stable_version.map(|version| label("stableVersion", version, 128)).transpose()?;
        let name = match self.name {
            Some(name) => {
                let valid = !name.is_empty()
                    && name.len() <= 63
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !valid {
                    return Err(SpecError::field(
                        "name",
                        format!("{name:?} must be 1 to 63 letters, digits, '-', '_' or '.' (it labels metrics)"),
                    ));
                }
                name
            }
            // The version label identifies the rollout when no name is given.
            None => canary_version
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
                .take(63)
                .collect(),
        };
        let strategy = self.strategy.unwrap_or(Strategy::Canary);
        let failure_policy = self.failure_policy.unwrap_or(FailurePolicy::Rollback);
        let analysis = self.analysis.unwrap_or_default().apply(&AnalysisConfig::default(), "analysis")?;

        if strategy != Strategy::BlueGreen {
            if self.pre_checks.is_some() {
                return Err(SpecError::field("preChecks", "only strategy blueGreen has pre-checks"));
            }
            if self.post_switch_watch.is_some() {
                return Err(SpecError::field("postSwitchWatch", "only strategy blueGreen has a post-switch watch"));
            }
        }
        let steps = match strategy {
            Strategy::Canary => match self.steps {
                None => default_steps(&analysis),
                Some(raw_steps) => resolve_steps(raw_steps, &analysis)?,
            },
            Strategy::BlueGreen => {
                if self.steps.is_some() {
                    return Err(SpecError::field(
                        "steps",
                        "strategy blueGreen switches 0% → 100% in one weight change and takes no steps \
                         (use preChecks and postSwitchWatch)",
                    ));
                }
                let pre_checks = self.pre_checks.unwrap_or(RawPreChecks { until_approved: None, timeout: None });
                let timeout_ms = pre_checks.timeout.map_or(DEFAULT_PRE_CHECKS_TIMEOUT_MS, |timeout| timeout.0);
                if timeout_ms == 0 {
                    return Err(SpecError::field("preChecks.timeout", "must be longer than 0s"));
                }
                vec![
                    Step::PreChecks { until_approved: pre_checks.until_approved.unwrap_or(false), timeout_ms },
                    Step::SetWeight { weight_bp: CanaryWeight::FULL.bp() },
                    Step::Pause {
                        wait: PauseWait::Duration {
                            duration_ms: self.post_switch_watch.map_or(DEFAULT_POST_SWITCH_WATCH_MS, |watch| watch.0),
                        },
                        analysis: analysis.clone(),
                    },
                ]
            }
            Strategy::Manual => {
                if self.steps.is_some() {
                    return Err(SpecError::field(
                        "steps",
                        "strategy manual takes no steps: weights change only through PUT /v1/rollout/weight",
                    ));
                }
                Vec::new()
            }
        };
        Ok(RolloutSpec { name, canary_version, stable_version, strategy, failure_policy, analysis, steps })
    }
}

fn default_steps(analysis: &AnalysisConfig) -> Vec<Step> {
    let mut steps = Vec::new();
    for weight_bp in DEFAULT_WEIGHTS_BP {
        steps.push(Step::SetWeight { weight_bp });
        steps.push(Step::Pause {
            wait: PauseWait::Duration { duration_ms: DEFAULT_PAUSE_MS },
            analysis: analysis.clone(),
        });
    }
    steps.push(Step::SetWeight { weight_bp: CanaryWeight::FULL.bp() });
    steps
}

fn resolve_steps(raw_steps: Vec<RawStep>, defaults: &AnalysisConfig) -> Result<Vec<Step>, SpecError> {
    if raw_steps.is_empty() {
        return Err(SpecError::field(
            "steps",
            "must not be empty; omit it for the default 10% → 25% → 50% → 100% with 30m pauses",
        ));
    }
    if raw_steps.len() > MAX_STEPS {
        return Err(SpecError::field("steps", format!("has {} steps, at most {MAX_STEPS}", raw_steps.len())));
    }
    let mut steps = Vec::with_capacity(raw_steps.len());
    // The weight in force when each step runs, to refuse timed pauses that
    // would have no canary traffic to judge.
    let mut weight_bp = 0u16;
    for (index, raw) in raw_steps.into_iter().enumerate() {
        let at = format!("steps[{index}]");
        match (raw.set_weight, raw.pause) {
            (Some(percent), None) => {
                weight_bp = percent.0.bp();
                steps.push(Step::SetWeight { weight_bp });
            }
            (None, Some(pause)) => {
                let wait = match (pause.duration, pause.until_approved) {
                    (Some(_), Some(true)) => {
                        return Err(SpecError::field(
                            format!("{at}.pause"),
                            "give either duration or untilApproved: true, not both",
                        ));
                    }
                    (Some(duration), _) => PauseWait::Duration { duration_ms: duration.0 },
                    (None, Some(true)) => PauseWait::UntilApproved,
                    (None, Some(false)) => {
                        return Err(SpecError::field(
                            format!("{at}.pause.untilApproved"),
                            "must be true (or give a duration instead)",
                        ));
                    }
                    (None, None) => {
                        return Err(SpecError::field(
                            format!("{at}.pause"),
                            "needs a duration (e.g. 30m) or untilApproved: true",
                        ));
                    }
                };
                if weight_bp == 0 && matches!(wait, PauseWait::Duration { .. }) {
                    return Err(SpecError::field(
                        format!("{at}.pause.duration"),
                        "a timed pause at 0% canary has no traffic to judge; set a weight first \
                         (or use untilApproved: true)",
                    ));
                }
                let analysis = pause.analysis.unwrap_or_default().apply(defaults, &format!("{at}.pause.analysis"))?;
                steps.push(Step::Pause { wait, analysis });
            }
            (Some(_), Some(_)) => {
                return Err(SpecError::field(at, "a step has exactly one of setWeight or pause, not both"));
            }
            (None, None) => {
                return Err(SpecError::field(at, "a step needs setWeight or pause"));
            }
        }
    }
    Ok(steps)
}

impl RawAnalysis {
    /// These settings on top of `base`; `at` is the path for errors.
    fn apply(self, base: &AnalysisConfig, at: &str) -> Result<AnalysisConfig, SpecError> {
        let mut resolved = base.clone();
        if let Some(alpha) = self.alpha {
            resolved.alpha = alpha.0;
        }
        if let Some(error_test) = self.error_test {
            resolved.error_test = error_test;
        }
        if let Some(latency_test) = self.latency_test {
            resolved.latency_test = latency_test;
        }
        if let Some(quantiles) = self.latency_quantiles {
            if quantiles.is_empty() || quantiles.len() > 5 {
                return Err(SpecError::field(format!("{at}.latencyQuantiles"), "must list 1 to 5 quantiles"));
            }
            resolved.latency_quantiles = quantiles.into_iter().map(|quantile| quantile.0).collect();
        }
        if let Some(min_canary_requests) = self.min_canary_requests {
            if min_canary_requests == 0 {
                // With no minimum an idle canary could pass on no evidence.
                return Err(SpecError::field(
                    format!("{at}.minCanaryRequests"),
                    "must be at least 1: a step never passes without canary traffic",
                ));
            }
            resolved.min_canary_requests = min_canary_requests;
        }
        if let Some(warmup) = self.latency_warmup {
            resolved.latency_warmup_ms = warmup.0;
        }
        if let Some(tolerance) = self.latency_tolerance {
            if !(0.0..=10.0).contains(&tolerance) {
                return Err(SpecError::field(
                    format!("{at}.latencyTolerance"),
                    "must be 0..=10 (0.25 = act on 25% more slow requests than stable)",
                ));
            }
            resolved.latency_tolerance = tolerance;
        }
        if let Some(guards) = self.guards {
            let target = &mut resolved.guards;
            if let Some(rate) = guards.max_error_rate {
                target.max_error_rate = rate.0;
            }
            if let Some(duration) = guards.max_error_rate_for {
                target.max_error_rate_for_ms = duration.0;
            }
            if let Some(p95) = guards.max_p95 {
                target.max_p95_ms = positive_ms(p95, &format!("{at}.guards.maxP95"))?;
            }
            if let Some(duration) = guards.max_p95_for {
                target.max_p95_for_ms = duration.0;
            }
            if let Some(ratio) = guards.max_unhealthy_host_ratio {
                target.max_unhealthy_host_ratio = ratio.0;
            }
        }
        if let Some(gates) = self.gates {
            let target = &mut resolved.gates;
            if let Some(rate) = gates.max_error_rate {
                target.max_error_rate = rate.0;
            }
            if let Some(p95) = gates.max_p95 {
                target.max_p95_ms = positive_ms(p95, &format!("{at}.gates.maxP95"))?;
            }
            if let Some(ratio) = gates.min_throughput_ratio {
                target.min_throughput_ratio = ratio.0;
            }
            if let Some(require) = gates.require_healthy_hosts {
                target.require_healthy_hosts = require;
            }
        }
        Ok(resolved)
    }
}

fn positive_ms(duration: DurationMs, field: &str) -> Result<f64, SpecError> {
    if duration.0 == 0 {
        return Err(SpecError::field(field, "must be longer than 0ms"));
    }
    Ok(duration.0 as f64)
}

/// A version label: non-empty, printable, no whitespace.
fn label(field: &str, value: String, max_len: usize) -> Result<String, SpecError> {
    if value.is_empty() || value.len() > max_len || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SpecError::field(
            field,
            format!("{value:?} must be 1 to {max_len} printable characters without spaces"),
        ));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------
// Leaf types that validate while they are read.

/// A canary percentage with at most two decimals (`12.34`).
#[derive(Debug, Clone, Copy)]
struct Percent(CanaryWeight);

/// A duration such as `500ms`, `30s`, `2m`, `1h`, `1.5m`, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct DurationMs(u64);

/// A ratio in `0..=1`.
#[derive(Debug, Clone, Copy)]
struct Ratio(f64);

/// A false-rollback budget in `(0, 0.5]`.
#[derive(Debug, Clone, Copy)]
struct Alpha(f64);

/// A latency quantile in `(0, 1)`.
#[derive(Debug, Clone, Copy)]
struct Quantile(f64);

/// Reads a JSON number (integer or float) as `f64`.
fn deserialize_number<'de, D: Deserializer<'de>>(deserializer: D, expecting: &'static str) -> Result<f64, D::Error> {
    struct NumberVisitor(&'static str);
    impl Visitor<'_> for NumberVisitor {
        type Value = f64;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str(self.0)
        }
        fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
            Ok(value)
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
            Ok(value as f64)
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
            Ok(value as f64)
        }
    }
    deserializer.deserialize_any(NumberVisitor(expecting))
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let percent = deserialize_number(deserializer, "a canary percent in 0..=100 with at most two decimals")?;
        CanaryWeight::from_percent(percent).map(Percent).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ratio = deserialize_number(deserializer, "a ratio in 0..=1, e.g. 0.05 for 5%")?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(de::Error::custom(format!("{ratio} is not a ratio in 0..=1 (write 5% as 0.05)")));
        }
        Ok(Ratio(ratio))
    }
}

impl<'de> Deserialize<'de> for Alpha {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let alpha = deserialize_number(deserializer, "a false-rollback budget in (0, 0.5], e.g. 0.01")?;
        if !(alpha > 0.0 && alpha <= 0.5) {
            return Err(de::Error::custom(format!("{alpha} is not in (0, 0.5]")));
        }
        Ok(Alpha(alpha))
    }
}

impl<'de> Deserialize<'de> for Quantile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let quantile = deserialize_number(deserializer, "a quantile in (0, 1), e.g. 0.95")?;
        if !(quantile > 0.0 && quantile < 1.0) {
            return Err(de::Error::custom(format!("{quantile} is not a quantile in (0, 1)")));
        }
        Ok(Quantile(quantile))
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationMs;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a duration such as \"500ms\", \"30s\", \"2m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<DurationMs, E> {
                parse_duration_ms(text).map(DurationMs).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h` (decimals allowed: `1.5m`) into ms.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit_ms = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => {
            return Err(format!("{text:?} is not a duration: use a number with a unit of ms, s, m or h, e.g. \"30s\""));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use a number with a unit of ms, s, m or h, e.g. \"30s\""))?;
    let ms = (value * unit_ms).round();
    if !ms.is_finite() || ms > MAX_DURATION_MS as f64 {
        return Err(format!("{text:?} is longer than the longest accepted duration, 168h"));
    }
    Ok(ms as u64)
}

/// Formats milliseconds the way specs write them: `30m`, `1.5s`, `500ms`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    let units = [(3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (unit_ms, unit) in units {
        if ms >= unit_ms && ms.is_multiple_of(unit_ms) {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    if ms >= 1_000 { format!("{}s", ms as f64 / 1_000.0) } else { format!("{ms}ms") }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
