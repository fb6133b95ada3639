//! The rollout state machine: pure, so every rule is a table test.
//!
//! A [`Rollout`] is the whole state of one rollout: its spec, phase, step,
//! the weight it wants, its decision log. [`Rollout::handle`] takes one
//! [`Input`] (a tick carrying the analysis engine's latest assessment, or a
//! person's command) and the time, updates the state and returns the
//! [`Action`]s the driver must carry out: set a weight, start an analysis
//! step, send a notification, persist a decision. It reads no clock, holds no
//! socket and never calls the engine itself, so the controller
//! (`crate::controller`) is the only place where time, disk and network meet
//! it.
//!
//! Invariants:
//! - A refused input (`Err`) leaves the state untouched.
//! - Promotion past a timed pause needs its duration, a `Healthy` verdict
//!   (which the engine gives only once the minimum sample is in) and passing
//!   gates. Missing data is `InsufficientData`, which never passes.
//! - Every phase change is a [`Decision`] with actor, reason and evidence.
//! - `RolledBack` and `Failed` want 0% for good: nothing but a new rollout
//!   moves the weight again.

pub mod spec;
pub mod view;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use spec::{
    AnalysisConfig, FailurePolicy, GatesConfig, GuardsConfig, PauseWait, RolloutSpec, SpecError, SpecFormat, Step,
    Strategy,
};
pub use view::{HistoryEntry, RolloutView, StepView};

/// Decisions kept per rollout; older ones are dropped (and counted) so a
/// long manual rollout cannot grow the state file without bound.
pub const MAX_DECISIONS: usize = 200;
/// Longest gradual rollback accepted.
pub const MAX_GRADUAL_SECONDS: u32 = 3_600;
/// The actor of the analyzer's own decisions.
pub const AUTO_ACTOR: &str = "auto";
/// 100% in basis points.
const FULL_BP: u16 = 10_000;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    Progressing,
    Paused,
    AwaitingApproval,
    Promoted,
    RolledBack,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 6] =
        [Phase::Progressing, Phase::Paused, Phase::AwaitingApproval, Phase::Promoted, Phase::RolledBack, Phase::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Promoted => "Promoted",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who paused a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseCause {
    /// A person, through `POST /v1/rollout/pause`.
    Manual,
    /// The failure policy `pause`, on a regression or tripped guard.
    Failure,
}

/// One logged decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at_unix_ms: u64,
    /// `auto` for the analyzer's own decisions, else the caller's identity.
    pub actor: String,
    /// `start`, `promote`, `promote_full`, `pause`, `resume`, `approve`,
    /// `await_approval`, `rollback`, `set_weight`, `advisory` or `fail`.
    pub action: String,
    /// `null` for `start`.
    pub from_phase: Option<Phase>,
    pub to_phase: Phase,
    pub step_index: usize,
    /// The weight after the decision.
    pub weight_percent: f64,
    pub reason: String,
    /// The engine's assessment the decision rests on, if any.
    pub evidence: Option<Value>,
}

/// The engine's verdict as the state machine needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObservedVerdict {
    Healthy,
    InsufficientData { reason: String },
    Regression { rule: String, summary: String },
    GuardTripped { rule: String, summary: String },
}

/// One tick's assessment, reduced to what the state machine decides on,
/// plus the full assessment as JSON for the API and the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub verdict: ObservedVerdict,
    pub gates_pass: bool,
    pub assessment: Value,
}

/// Canary hosts by Envoy's health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCounts {
    pub healthy: u32,
    pub total: u32,
}

/// A person's (or pipeline's) command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// To the next step, or to 100% with `full`.
    Promote {
        full: bool,
    },
    Pause,
    Resume,
    Approve,
    /// Instant, or a linear ramp to 0% over `gradual_seconds`.
    Rollback {
        gradual_seconds: Option<u32>,
    },
    /// Manual strategy only (`PUT /v1/rollout/weight`).
    SetWeight {
        weight_bp: u16,
    },
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Command::Promote { full: false } => "promote",
            Command::Promote { full: true } => "promote_full",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Approve => "approve",
            Command::Rollback { .. } => "rollback",
            Command::SetWeight { .. } => "set_weight",
        }
    }
}

/// What the state machine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Once a second: the engine's assessment of the tick (`None` when no
    /// analysis step runs or the data plane is not yet on the rollout's
    /// weight) and the canary hosts' health (`None` when unknown).
    Tick {
        observation: Option<Observation>,
        hosts: Option<HostCounts>,
        /// Whether host health is configured at all. Configured but unknown
        /// (not read yet, or the reading went stale) is not a pass: a
        /// blue-green switch waits for a real reading.
        hosts_configured: bool,
    },
    Command {
        actor: String,
        reason: Option<String>,
        command: Command,
    },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Make this the canary weight (persisted before it is pushed).
    SetWeight { weight_bp: u16 },
    /// Start an engine step at `canary_share`; `fresh` means a new engine
    /// (`Analysis::new`), else the e-process carries over.
    StartAnalysisStep { analysis: AnalysisConfig, canary_share: f64, fresh: bool },
    /// A decision was logged: persist before acknowledging anything.
    RecordDecision(Decision),
    /// Tell the notification targets.
    Notify(Box<Notification>),
}

/// A notification: the rollout and the decision that caused it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// `phase_changed` when the phase changed, else `decision`.
    pub event: &'static str,
    pub rollout_id: String,
    pub name: String,
    pub canary_version: String,
    pub stable_version: Option<String>,
    pub strategy: Strategy,
    pub decision: Decision,
}

/// A command that the rollout's phase does not allow (HTTP 409). The
/// message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub message: String,
}

/// A gradual rollback in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GradualRollback {
    pub from_bp: u16,
    pub seconds: u32,
    pub started_at_unix_ms: u64,
}

impl GradualRollback {
    /// The weight `elapsed_ms` into the ramp: `from · (N − k) / N` with
    /// `k = ⌊elapsed / 1 s⌋ + 1`, so the first step down is immediate, one
    /// follows every second, and 0% is reached `N − 1` seconds in. Rounded
    /// down, towards stable.
    pub fn weight_bp_at(&self, now_unix_ms: u64) -> u16 {
        let seconds = u64::from(self.seconds.max(1));
        let steps_done = (now_unix_ms.saturating_sub(self.started_at_unix_ms) / 1_000 + 1).min(seconds);
        (u64::from(self.from_bp) * (seconds - steps_done) / seconds) as u16
    }
}

/// The whole state of one rollout; persisted as JSON after every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub spec: RolloutSpec,
    pub phase: Phase,
    pub pause_cause: Option<PauseCause>,
    /// Index into `spec.steps`; `steps.len()` once all are done.
    pub step_index: usize,
    pub step_started_at_unix_ms: u64,
    /// The weight this rollout wants the data plane at.
    pub weight_bp: u16,
    pub started_at_unix_ms: u64,
    pub ended_at_unix_ms: Option<u64>,
    /// From the start of the step in which the outcome was decided to the
    /// decision.
    pub time_to_decision_ms: Option<u64>,
    /// Blue-green pre-checks: approval received.
    pub approved: bool,
    /// Whether the engine has been started for this rollout, and at which
    /// weight its current step runs.
    pub analysis_started: bool,
    pub analysis_weight_bp: Option<u16>,
    pub gradual: Option<GradualRollback>,
    pub last_observation: Option<Observation>,
    /// Manual strategy: the last verdict was a regression (so an advisory is
    /// logged once per episode, not every second).
    pub advisory_raised: bool,
    pub decisions: Vec<Decision>,
    pub decisions_dropped: u64,
}

impl Rollout {
    /// A new rollout from a validated spec. It starts at 0% (the canary arm
    /// now runs a new version) and runs its leading `setWeight` steps at
    /// once.
    pub fn start(
        id: String,
        spec: RolloutSpec,
        actor: &str,
        reason: Option<&str>,
        now_unix_ms: u64,
    ) -> (Rollout, Vec<Action>) {
        let mut rollout = Rollout {
            id,
            spec,
            phase: Phase::Progressing,
            pause_cause: None,
            step_index: 0,
            step_started_at_unix_ms: now_unix_ms,
            weight_bp: 0,
            started_at_unix_ms: now_unix_ms,
            ended_at_unix_ms: None,
            time_to_decision_ms: None,
            approved: false,
            analysis_started: false,
            analysis_weight_bp: None,
            gradual: None,
            last_observation: None,
            advisory_raised: false,
            decisions: Vec::new(),
            decisions_dropped: 0,
        };
        let mut actions = vec![Action::SetWeight { weight_bp: 0 }];
        if rollout.spec.strategy != Strategy::Manual {
            rollout.enter(0, now_unix_ms, &mut actions);
        }
        let reason = with_reason(
            format!(
                "{} rollout of {} started{}",
                rollout.spec.strategy.as_str(),
                rollout.spec.canary_version,
                rollout.spec.stable_version.as_ref().map(|stable| format!(" (stable {stable})")).unwrap_or_default()
            ),
            reason,
        );
        rollout.decide(&mut actions, now_unix_ms, actor, "start", None, reason, None);
        rollout.finish_if_terminal(now_unix_ms, now_unix_ms);
        (rollout, actions)
    }

    /// Applies one input. On `Err` nothing changed.
    pub fn handle(&mut self, input: &Input, now_unix_ms: u64) -> Result<Vec<Action>, Rejection> {
        let mut actions = Vec::new();
        match input {
            Input::Tick { observation, hosts, hosts_configured } => {
                self.on_tick(observation.as_ref(), *hosts, *hosts_configured, now_unix_ms, &mut actions)
            }
            Input::Command { actor, reason, command } => {
                self.check(*command)?;
                self.on_command(actor, reason.as_deref(), *command, now_unix_ms, &mut actions);
            }
        }
        Ok(actions)
    }

    /// Active: neither promoted, rolled back nor failed.
    pub fn is_active(&self) -> bool {
        !self.phase.is_terminal()
    }

    /// The weight the data plane must be held at, or `None` once promoted
    /// (the weights are then the operators' again).
    pub fn enforced_weight_bp(&self) -> Option<u16> {
        match self.phase {
            Phase::Promoted => None,
            Phase::RolledBack | Phase::Failed => Some(0),
            _ => Some(self.weight_bp),
        }
    }

    /// The current step, if any.
    pub fn current_step(&self) -> Option<&Step> {
        self.spec.steps.get(self.step_index)
    }

    /// A one-line account of what the rollout is waiting for.
    pub fn status_text(&self, now_unix_ms: u64) -> String {
        let elapsed_ms = now_unix_ms.saturating_sub(self.step_started_at_unix_ms);
        if let Some(gradual) = self.gradual {
            return format!(
                "rolling back gradually from {} to 0% over {}s",
                percent_text(gradual.from_bp),
                gradual.seconds
            );
        }
        match self.phase {
            Phase::Promoted => return "promoted: canary at 100%".to_owned(),
            Phase::RolledBack => return "rolled back: canary at 0% until a new rollout starts".to_owned(),
            Phase::Failed => return "failed: canary at 0% until a new rollout starts".to_owned(),
            Phase::Paused => {
                return match self.pause_cause {
                    Some(PauseCause::Failure) => {
                        "paused by the failure policy: weights frozen; resume, promote or roll back".to_owned()
                    }
                    _ => "paused: weights frozen; analysis keeps running; POST /v1/rollout/resume".to_owned(),
                };
            }
            _ => {}
        }
        let verdict = match self.last_observation.as_ref().map(|observation| &observation.verdict) {
            None => "no evidence yet".to_owned(),
            Some(ObservedVerdict::Healthy) => "healthy".to_owned(),
            Some(ObservedVerdict::InsufficientData { reason }) => format!("insufficient data: {reason}"),
            Some(ObservedVerdict::Regression { summary, .. } | ObservedVerdict::GuardTripped { summary, .. }) => {
                format!("regression: {summary}")
            }
        };
        if self.spec.strategy == Strategy::Manual {
            return format!("manual at {}: analysis advisory, {verdict}", percent_text(self.weight_bp));
        }
        match self.current_step() {
            Some(Step::Pause { wait: PauseWait::Duration { duration_ms }, .. }) => format!(
                "at {} for {} of {}; {verdict}",
                percent_text(self.weight_bp),
                spec::format_duration_ms(elapsed_ms / 1_000 * 1_000),
                spec::format_duration_ms(*duration_ms)
            ),
            Some(Step::Pause { wait: PauseWait::UntilApproved, .. }) => {
                format!("at {}: awaiting approval (POST /v1/rollout/approve); {verdict}", percent_text(self.weight_bp))
            }
            Some(Step::PreChecks { until_approved, .. }) => {
                if *until_approved && !self.approved {
                    "pre-checks: awaiting approval (POST /v1/rollout/approve) and healthy canary hosts".to_owned()
                } else {
                    "pre-checks: waiting for healthy canary hosts".to_owned()
                }
            }
            _ => verdict,
        }
    }

    // -- commands ----------------------------------------------------------

    /// Refuses commands the phase does not allow, naming what to do.
    fn check(&self, command: Command) -> Result<(), Rejection> {
        let name = &self.spec.name;
        let reject = |message: String| Err(Rejection { message });
        if self.phase.is_terminal() {
            let state = match self.phase {
                Phase::Promoted => "was promoted",
                Phase::RolledBack => "was rolled back; the canary stays at 0%",
                _ => "failed; the canary stays at 0%",
            };
            return reject(format!(
                "{}: rollout {name} {state}; start a new rollout with POST /v1/rollouts",
                command.name()
            ));
        }
        if let Some(gradual) = self.gradual
            && !matches!(command, Command::Rollback { .. })
        {
            return reject(format!(
                "{}: rollout {name} is rolling back gradually from {} over {}s; POST /v1/rollout/rollback \
                 to finish it at once",
                command.name(),
                percent_text(gradual.from_bp),
                gradual.seconds
            ));
        }
        match command {
            Command::Pause if self.phase == Phase::Paused => {
                reject(format!("pause: rollout {name} is already paused; POST /v1/rollout/resume to continue"))
            }
            Command::Resume if self.phase != Phase::Paused => {
                reject(format!("resume: rollout {name} is {}, not paused", self.phase))
            }
            Command::Approve if self.phase != Phase::AwaitingApproval => reject(format!(
                "approve: nothing awaits approval: rollout {name} is {}{}",
                self.phase,
                if self.phase == Phase::Paused { "; resume it first" } else { "" }
            )),
            Command::SetWeight { .. } if self.spec.strategy != Strategy::Manual => reject(format!(
                "set weight: rollout {name} ({}) is {}: its steps set the weights; use POST /v1/rollout/promote, \
                 /pause or /rollback",
                self.spec.strategy.as_str(),
                self.phase
            )),
            Command::SetWeight { .. } if self.phase == Phase::Paused => reject(format!(
                "set weight: rollout {name} is paused, which freezes the weights; POST /v1/rollout/resume first"
            )),
            _ => Ok(()),
        }
    }

    fn on_command(
        &mut self,
        actor: &str,
        reason: Option<&str>,
        command: Command,
        now_unix_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let from = self.phase;
        let deciding_step_started = self.step_started_at_unix_ms;
        let name = command.name();
        match command {
            Command::Promote { full } => {
                if full || self.spec.strategy == Strategy::Manual {
                    self.set_weight(FULL_BP, actions);
                    self.phase = Phase::Promoted;
                    self.pause_cause = None;
                    let text = format!("promoted to 100% by {actor}");
                    self.decide(actions, now_unix_ms, actor, name, Some(from), with_reason(text, reason), None);
                } else {
                    self.leave_pause();
                    self.enter(self.step_index + 1, now_unix_ms, actions);
                    let text = format!("promoted by {actor} to {}", self.position_text());
                    self.decide(actions, now_unix_ms, actor, name, Some(from), with_reason(text, reason), None);
                }
            }
            Command::Pause => {
                self.phase = Phase::Paused;
                self.pause_cause = Some(PauseCause::Manual);
                let text = format!("paused by {actor} at {}", percent_text(self.weight_bp));
                self.decide(actions, now_unix_ms, actor, name, Some(from), with_reason(text, reason), None);
            }
            Command::Resume => {
                if self.pause_cause == Some(PauseCause::Failure) {
                    // The old e-process already crossed its threshold and
                    // would fail the rollout again at once: the person who
                    // resumes asks for fresh evidence, and the step restarts.
                    self.analysis_started = false;
                    self.analysis_weight_bp = None;
                    self.step_started_at_unix_ms = now_unix_ms;
                    self.start_analysis_for_current_step(actions);
                }
                self.pause_cause = None;
                self.phase = self.phase_for_current_step();
                let text = format!("resumed by {actor}");
                self.decide(actions, now_unix_ms, actor, name, Some(from), with_reason(text, reason), None);
            }
            Command::Approve => {
                match self.current_step() {
                    Some(Step::PreChecks { .. }) => {
                        // The switch happens on the next tick, once the
                        // canary hosts are healthy too.
                        self.approved = true;
                        self.phase = Phase::Progressing;
                    }
                    _ => self.enter(self.step_index + 1, now_unix_ms, actions),
                }
                let text = format!("approved by {actor}; now {}", self.position_text());
                self.decide(actions, now_unix_ms, actor, name, Some(from), with_reason(text, reason), None);
            }
            Command::Rollback { gradual_seconds } => {
                let gradual_seconds = gradual_seconds.unwrap_or(0).min(MAX_GRADUAL_SECONDS);
                if gradual_seconds <= 1 || self.weight_bp == 0 || self.gradual.is_some() {
                    let text = if self.gradual.is_some() {
                        format!("gradual rollback finished at once by {actor}")
                    } else {
                        format!("rolled back by {actor}")
                    };
                    self.gradual = None;
                    self.roll_back(actions, now_unix_ms, actor, Some(from), with_reason(text, reason), None);
                } else {
                    let gradual = GradualRollback {
                        from_bp: self.weight_bp,
                        seconds: gradual_seconds,
                        started_at_unix_ms: now_unix_ms,
                    };
                    self.gradual = Some(gradual);
                    self.phase = Phase::Progressing;
                    self.pause_cause = None;
                    let text = format!(
                        "gradual rollback by {actor}: {} to 0% over {gradual_seconds}s",
                        percent_text(gradual.from_bp)
                    );
                    self.decide(actions, now_unix_ms, actor, name, Some(from), with_reason(text, reason), None);
                    self.force_notify(actions);
                    // The first step down happens at once.
                    self.ramp(None, now_unix_ms, actions);
                }
            }
            Command::SetWeight { weight_bp } => {
                self.set_weight(weight_bp, actions);
                self.start_analysis_for_current_step(actions);
                let text = format!("weight set to {} by {actor}", percent_text(weight_bp));
                self.decide(actions, now_unix_ms, actor, name, Some(from), with_reason(text, reason), None);
            }
        }
        self.finish_if_terminal(now_unix_ms, deciding_step_started);
    }

    // -- ticks ---------------------------------------------------------------

    fn on_tick(
        &mut self,
        observation: Option<&Observation>,
        hosts: Option<HostCounts>,
        hosts_configured: bool,
        now_unix_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        if self.phase.is_terminal() {
            return;
        }
        if let Some(observation) = observation {
            self.last_observation = Some(observation.clone());
        }
        if self.gradual.is_some() {
            self.ramp(observation, now_unix_ms, actions);
            return;
        }
        if self.spec.strategy == Strategy::Manual {
            self.advise(observation, now_unix_ms, actions);
            return;
        }
        if self.pause_cause == Some(PauseCause::Failure) {
            // Waiting for a person; the first failure is already logged.
            return;
        }
        // Safety first: a regression acts even while a person has paused
        // the progression.
        if let Some((summary, evidence)) = failure_trigger(observation, self.weight_bp) {
            self.fail_by_policy(summary, evidence, now_unix_ms, actions);
            return;
        }
        if self.phase == Phase::Paused {
            return;
        }
        let from = self.phase;
        let deciding_step_started = self.step_started_at_unix_ms;
        let elapsed_ms = now_unix_ms.saturating_sub(self.step_started_at_unix_ms);
        match self.current_step().cloned() {
            Some(Step::Pause { wait: PauseWait::Duration { duration_ms }, .. }) => {
                let Some(observation) = observation else { return };
                if elapsed_ms < duration_ms || !passes(observation, self.weight_bp) {
                    return;
                }
                let passed_index = self.step_index;
                let passed_weight = self.weight_bp;
                self.enter(self.step_index + 1, now_unix_ms, actions);
                let reason = format!(
                    "step {passed_index} passed at {} after {}: {}; now {}",
                    percent_text(passed_weight),
                    spec::format_duration_ms(elapsed_ms / 1_000 * 1_000),
                    if passed_weight == FULL_BP { "no guard tripped" } else { "verdict healthy, gates pass" },
                    self.position_text()
                );
                let evidence = Some(observation.assessment.clone());
                self.decide(actions, now_unix_ms, AUTO_ACTOR, "promote", Some(from), reason, evidence);
            }
            Some(Step::PreChecks { until_approved, timeout_ms }) => {
                let hosts_ok = match hosts {
                    Some(hosts) => hosts.total > 0 && hosts.healthy == hosts.total,
                    None => !hosts_configured,
                };
                let hosts_text = match hosts {
                    Some(hosts) => format!("{} of {} canary hosts healthy", hosts.healthy, hosts.total),
                    None if hosts_configured => "canary host health not read from Envoy".to_owned(),
                    None => "host health not configured".to_owned(),
                };
                if hosts_ok && (!until_approved || self.approved) {
                    self.enter(self.step_index + 1, now_unix_ms, actions);
                    let reason = format!("pre-checks passed ({hosts_text}): switched 0% → 100%");
                    self.decide(actions, now_unix_ms, AUTO_ACTOR, "promote", Some(from), reason, None);
                } else if !hosts_ok && elapsed_ms >= timeout_ms {
                    self.set_weight(0, actions);
                    self.phase = Phase::Failed;
                    let reason = format!(
                        "pre-checks failed: {hosts_text} after {}",
                        spec::format_duration_ms(elapsed_ms / 1_000 * 1_000)
                    );
                    self.decide(actions, now_unix_ms, AUTO_ACTOR, "fail", Some(from), reason, None);
                }
            }
            // An approval gate waits for a person; nothing else to do.
            _ => {}
        }
        self.finish_if_terminal(now_unix_ms, deciding_step_started);
    }

    /// Manual strategy: regressions are logged and notified, never acted on.
    fn advise(&mut self, observation: Option<&Observation>, now_unix_ms: u64, actions: &mut Vec<Action>) {
        let Some(observation) = observation else { return };
        match failure_trigger(Some(observation), self.weight_bp) {
            Some((summary, evidence)) if !self.advisory_raised => {
                self.advisory_raised = true;
                let reason = format!("advisory (manual strategy, weights unchanged): {summary}");
                self.decide(actions, now_unix_ms, AUTO_ACTOR, "advisory", Some(self.phase), reason, evidence);
                self.force_notify(actions);
            }
            Some(_) => {}
            None => self.advisory_raised = false,
        }
    }

    /// One step of a gradual rollback; a tripped guard or regression cuts
    /// it short.
    fn ramp(&mut self, observation: Option<&Observation>, now_unix_ms: u64, actions: &mut Vec<Action>) {
        let Some(gradual) = self.gradual else { return };
        let from = self.phase;
        if let Some((summary, evidence)) = failure_trigger(observation, self.weight_bp) {
            self.gradual = None;
            let reason = format!("gradual rollback cut short: {summary}");
            self.roll_back(actions, now_unix_ms, AUTO_ACTOR, Some(from), reason, evidence);
            self.finish_if_terminal(now_unix_ms, gradual.started_at_unix_ms);
            return;
        }
        let target_bp = gradual.weight_bp_at(now_unix_ms);
        if target_bp < self.weight_bp {
            self.set_weight(target_bp, actions);
        }
        if self.weight_bp == 0 {
            self.gradual = None;
            let reason = format!(
                "gradual rollback from {} reached 0% after {}s",
                percent_text(gradual.from_bp),
                now_unix_ms.saturating_sub(gradual.started_at_unix_ms) / 1_000
            );
            self.roll_back(actions, now_unix_ms, AUTO_ACTOR, Some(from), reason, None);
            self.finish_if_terminal(now_unix_ms, gradual.started_at_unix_ms);
        }
    }

    fn fail_by_policy(
        &mut self,
        summary: String,
        evidence: Option<Value>,
        now_unix_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let from = self.phase;
        let deciding_step_started = self.step_started_at_unix_ms;
        match self.spec.failure_policy {
            FailurePolicy::Rollback => {
                let reason = format!("rolled back: {summary}");
                self.roll_back(actions, now_unix_ms, AUTO_ACTOR, Some(from), reason, evidence);
                self.finish_if_terminal(now_unix_ms, deciding_step_started);
            }
            FailurePolicy::Pause => {
                self.phase = Phase::Paused;
                self.pause_cause = Some(PauseCause::Failure);
                let reason =
                    format!("paused by failure policy, weights frozen at {}: {summary}", percent_text(self.weight_bp));
                self.decide(actions, now_unix_ms, AUTO_ACTOR, "pause", Some(from), reason, evidence);
                self.force_notify(actions);
            }
        }
    }

    // -- helpers -------------------------------------------------------------

    /// Runs steps from `index`: `setWeight` at once, stopping at the first
    /// pause or pre-check (which becomes the current step) or promoting once
    /// the steps run out. Sets the phase; the caller logs the decision.
    fn enter(&mut self, mut index: usize, now_unix_ms: u64, actions: &mut Vec<Action>) {
        loop {
            match self.spec.steps.get(index).cloned() {
                None => {
                    self.step_index = self.spec.steps.len();
                    self.step_started_at_unix_ms = now_unix_ms;
                    if self.weight_bp != FULL_BP {
                        self.set_weight(FULL_BP, actions);
                    }
                    self.phase = Phase::Promoted;
                    return;
                }
                Some(Step::SetWeight { weight_bp }) => {
                    self.set_weight(weight_bp, actions);
                    index += 1;
                }
                Some(Step::Pause { wait, .. }) => {
                    self.step_index = index;
                    self.step_started_at_unix_ms = now_unix_ms;
                    self.approved = false;
                    // An approval gate at an unchanged weight keeps the
                    // running engine step, so its guard timers go on.
                    if matches!(wait, PauseWait::Duration { .. }) || self.analysis_weight_bp != Some(self.weight_bp) {
                        self.start_analysis_for_current_step(actions);
                    }
                    self.phase = self.phase_for_current_step();
                    return;
                }
                Some(Step::PreChecks { .. }) => {
                    self.step_index = index;
                    self.step_started_at_unix_ms = now_unix_ms;
                    self.approved = false;
                    self.phase = self.phase_for_current_step();
                    return;
                }
            }
        }
    }

    /// Asks for an engine step at the current weight with the current
    /// step's settings; nothing at 0%, where there is no canary traffic.
    fn start_analysis_for_current_step(&mut self, actions: &mut Vec<Action>) {
        if self.weight_bp == 0 {
            self.analysis_weight_bp = None;
            return;
        }
        let analysis = match self.current_step() {
            Some(Step::Pause { analysis, .. }) => analysis.clone(),
            _ => self.spec.analysis.clone(),
        };
        actions.push(Action::StartAnalysisStep {
            analysis,
            canary_share: f64::from(self.weight_bp) / f64::from(FULL_BP),
            fresh: !self.analysis_started,
        });
        self.analysis_started = true;
        self.analysis_weight_bp = Some(self.weight_bp);
    }

    /// The phase the current step puts an unpaused rollout in.
    fn phase_for_current_step(&self) -> Phase {
        match self.current_step() {
            Some(Step::Pause { wait: PauseWait::UntilApproved, .. }) => Phase::AwaitingApproval,
            Some(Step::PreChecks { until_approved: true, .. }) if !self.approved => Phase::AwaitingApproval,
            _ => Phase::Progressing,
        }
    }

    /// Leaving a failure pause by promotion: the engine starts afresh,
    /// since its e-process already crossed the threshold.
    fn leave_pause(&mut self) {
        if self.pause_cause == Some(PauseCause::Failure) {
            self.analysis_started = false;
            self.analysis_weight_bp = None;
        }
        self.pause_cause = None;
    }

    fn set_weight(&mut self, weight_bp: u16, actions: &mut Vec<Action>) {
        self.weight_bp = weight_bp;
        actions.push(Action::SetWeight { weight_bp });
    }

    #[allow(clippy::too_many_arguments)]
    fn roll_back(
        &mut self,
        actions: &mut Vec<Action>,
        now_unix_ms: u64,
        actor: &str,
        from: Option<Phase>,
        reason: String,
        evidence: Option<Value>,
    ) {
        self.set_weight(0, actions);
        self.phase = Phase::RolledBack;
        self.pause_cause = None;
        self.decide(actions, now_unix_ms, actor, "rollback", from, reason, evidence);
    }

    /// Logs a decision that brought the rollout to its current phase;
    /// notifies when the phase changed.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        actions: &mut Vec<Action>,
        now_unix_ms: u64,
        actor: &str,
        action: &str,
        from_phase: Option<Phase>,
        reason: String,
        evidence: Option<Value>,
    ) {
        let decision = Decision {
            at_unix_ms: now_unix_ms,
            actor: actor.to_owned(),
            action: action.to_owned(),
            from_phase,
            to_phase: self.phase,
            step_index: self.step_index,
            weight_percent: f64::from(self.weight_bp) / 100.0,
            reason,
            evidence,
        };
        if self.decisions.len() >= MAX_DECISIONS {
            self.decisions.remove(0);
            self.decisions_dropped += 1;
        }
        self.decisions.push(decision.clone());
        let phase_changed = from_phase != Some(self.phase);
        actions.push(Action::RecordDecision(decision.clone()));
        if phase_changed {
            actions.push(Action::Notify(Box::new(self.notification("phase_changed", decision))));
        }
    }

    /// Notifies the last decision although the phase did not change
    /// (advisories, failure pauses from a manual pause, ramp starts).
    fn force_notify(&mut self, actions: &mut Vec<Action>) {
        let already = actions.iter().any(|action| matches!(action, Action::Notify(_)));
        if let (false, Some(decision)) = (already, self.decisions.last().cloned()) {
            actions.push(Action::Notify(Box::new(self.notification("decision", decision))));
        }
    }

    fn notification(&self, event: &'static str, decision: Decision) -> Notification {
        Notification {
            event,
            rollout_id: self.id.clone(),
            name: self.spec.name.clone(),
            canary_version: self.spec.canary_version.clone(),
            stable_version: self.spec.stable_version.clone(),
            strategy: self.spec.strategy,
            decision,
        }
    }

    fn finish_if_terminal(&mut self, now_unix_ms: u64, deciding_step_started_at_unix_ms: u64) {
        if self.phase.is_terminal() && self.ended_at_unix_ms.is_none() {
            self.ended_at_unix_ms = Some(now_unix_ms);
            self.time_to_decision_ms = Some(now_unix_ms.saturating_sub(deciding_step_started_at_unix_ms));
            self.gradual = None;
        }
    }

    /// "step 3 of 7 at 25%" or "100% (promoted)".
    fn position_text(&self) -> String {
        match self.phase {
            Phase::Promoted => "100% (promoted)".to_owned(),
            _ => format!("step {} of {} at {}", self.step_index, self.spec.steps.len(), percent_text(self.weight_bp)),
        }
    }
}

/// Whether an observation lets a timed pause pass. At 100% there is no
/// stable arm to compare against, so only the absolute guards count there
/// (they are checked before this); elsewhere the verdict must be `Healthy`
/// (never `InsufficientData`) and the gates must pass.
fn passes(observation: &Observation, weight_bp: u16) -> bool {
    if weight_bp == FULL_BP {
        return !matches!(observation.verdict, ObservedVerdict::GuardTripped { .. });
    }
    observation.verdict == ObservedVerdict::Healthy && observation.gates_pass
}

/// A verdict that must stop the rollout: a tripped guard whenever canary
/// has traffic, a comparative regression only while there is a stable arm.
fn failure_trigger(observation: Option<&Observation>, weight_bp: u16) -> Option<(String, Option<Value>)> {
    let observation = observation?;
    let summary = match &observation.verdict {
        ObservedVerdict::GuardTripped { rule, summary } if weight_bp > 0 => format!("{summary} ({rule})"),
        ObservedVerdict::Regression { rule, summary } if weight_bp > 0 && weight_bp < FULL_BP => {
            format!("{summary} ({rule})")
        }
        _ => return None,
    };
    Some((summary, Some(observation.assessment.clone())))
}

fn with_reason(text: String, reason: Option<&str>) -> String {
    match reason.map(str::trim).filter(|reason| !reason.is_empty()) {
        Some(reason) => format!("{text}: {reason}"),
        None => text,
    }
}

/// `12.5%`, `10%`, `0.01%`.
pub fn percent_text(weight_bp: u16) -> String {
    let percent = f64::from(weight_bp) / 100.0;
    format!("{percent}%")
}

#[cfg(test)]
mod tests;
