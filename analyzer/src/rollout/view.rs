//! The JSON shapes of a rollout in the API: `GET /v1/rollout`'s `rollout`
//! object and the history entries. Plain data built from a [`Rollout`] and
//! the time.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    AnalysisConfig, Decision, FailurePolicy, HostCounts, ObservedVerdict, PauseCause, PauseWait, Phase, Rollout, Step,
    Strategy,
};

/// Decisions shown in `GET /v1/rollout` (the full log is in the history).
pub const VIEW_DECISIONS: usize = 20;

/// `GET /v1/rollout` → `rollout`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutView {
    pub id: String,
    pub name: String,
    pub canary_version: String,
    pub stable_version: Option<String>,
    pub strategy: Strategy,
    pub failure_policy: FailurePolicy,
    pub phase: Phase,
    /// `manual` or `failure` while paused, else `null`.
    pub pause_cause: Option<PauseCause>,
    /// One line on what the rollout is waiting for.
    pub status: String,
    pub step_index: usize,
    pub step_count: usize,
    /// The current step; `null` once the steps are done (or for manual).
    pub step: Option<StepView>,
    pub step_started_at_unix_ms: u64,
    pub step_elapsed_ms: u64,
    /// The weight of the next `setWeight` step after the current one, for
    /// "next: increase to 25%"; `null` when none is left.
    pub next_weight_percent: Option<f64>,
    /// The weight the rollout holds the data plane at.
    pub weight_percent: f64,
    pub weight_bp: u16,
    pub started_at_unix_ms: u64,
    pub ended_at_unix_ms: Option<u64>,
    pub duration_ms: u64,
    pub time_to_decision_ms: Option<u64>,
    pub gradual_rollback: Option<GradualView>,
    /// Canary hosts by Envoy's health checks; `null` when not configured or
    /// not read recently.
    pub canary_hosts: Option<HostCounts>,
    /// The latest verdict, in short (`{"kind": "healthy"}`, ...).
    pub verdict: Option<ObservedVerdict>,
    /// The engine's latest assessment: verdict, gates, evidence.
    pub analysis: Option<Value>,
    /// The last [`VIEW_DECISIONS`] decisions, oldest first.
    pub decisions: Vec<Decision>,
    pub decisions_total: u64,
}

/// A step as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    /// `setWeight`, `pause` or `preChecks`.
    pub kind: &'static str,
    pub weight_percent: Option<f64>,
    /// A timed pause's duration.
    pub duration_ms: Option<u64>,
    pub until_approved: bool,
    /// Pre-checks: how long healthy hosts may take.
    pub timeout_ms: Option<u64>,
    /// A pause's resolved analysis settings.
    pub analysis: Option<AnalysisConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GradualView {
    pub from_percent: f64,
    pub seconds: u32,
    pub started_at_unix_ms: u64,
    pub ends_at_unix_ms: u64,
}

/// One finished rollout in `GET /v1/rollouts/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: String,
    pub name: String,
    pub canary_version: String,
    pub stable_version: Option<String>,
    pub strategy: Strategy,
    /// `Promoted`, `RolledBack` or `Failed`.
    pub outcome: Phase,
    pub started_at_unix_ms: u64,
    pub ended_at_unix_ms: u64,
    pub duration_ms: u64,
    pub time_to_decision_ms: u64,
    /// The step the rollout ended in and the weight it left.
    pub final_step_index: usize,
    pub final_weight_percent: f64,
    /// Every decision, oldest first.
    pub decisions: Vec<Decision>,
    pub decisions_dropped: u64,
}

impl Rollout {
    /// The API view at `now_unix_ms`.
    pub fn view(&self, now_unix_ms: u64, canary_hosts: Option<HostCounts>) -> RolloutView {
        let end = self.ended_at_unix_ms.unwrap_or(now_unix_ms);
        let shown_from = self.decisions.len().saturating_sub(VIEW_DECISIONS);
        RolloutView {
            id: self.id.clone(),
            name: self.spec.name.clone(),
            canary_version: self.spec.canary_version.clone(),
            stable_version: self.spec.stable_version.clone(),
            strategy: self.spec.strategy,
            failure_policy: self.spec.failure_policy,
            phase: self.phase,
            pause_cause: self.pause_cause,
            status: self.status_text(now_unix_ms),
            step_index: self.step_index,
            step_count: self.spec.steps.len(),
            step: self.current_step().map(StepView::from),
            step_started_at_unix_ms: self.step_started_at_unix_ms,
            step_elapsed_ms: end.saturating_sub(self.step_started_at_unix_ms),
            next_weight_percent: self.spec.steps.iter().skip(self.step_index + 1).find_map(|step| match step {
                Step::SetWeight { weight_bp } => Some(f64::from(*weight_bp) / 100.0),
                _ => None,
            }),
            weight_percent: f64::from(self.weight_bp) / 100.0,
            weight_bp: self.weight_bp,
            started_at_unix_ms: self.started_at_unix_ms,
            ended_at_unix_ms: self.ended_at_unix_ms,
            duration_ms: end.saturating_sub(self.started_at_unix_ms),
            time_to_decision_ms: self.time_to_decision_ms,
            gradual_rollback: self.gradual.map(|gradual| GradualView {
                from_percent: f64::from(gradual.from_bp) / 100.0,
                seconds: gradual.seconds,
                started_at_unix_ms: gradual.started_at_unix_ms,
                ends_at_unix_ms: gradual.started_at_unix_ms + u64::from(gradual.seconds.saturating_sub(1)) * 1_000,
            }),
            canary_hosts,
            verdict: self.last_observation.as_ref().map(|observation| observation.verdict.clone()),
            analysis: self.last_observation.as_ref().map(|observation| observation.assessment.clone()),
            decisions: self.decisions[shown_from..].to_vec(),
            decisions_total: self.decisions.len() as u64 + self.decisions_dropped,
        }
    }

    /// The history entry of a finished rollout; `None` while it is active.
    pub fn history_entry(&self) -> Option<HistoryEntry> {
        let ended_at_unix_ms = self.ended_at_unix_ms?;
        if !self.phase.is_terminal() {
            return None;
        }
        Some(HistoryEntry {
            id: self.id.clone(),
            name: self.spec.name.clone(),
            canary_version: self.spec.canary_version.clone(),
            stable_version: self.spec.stable_version.clone(),
            strategy: self.spec.strategy,
            outcome: self.phase,
            started_at_unix_ms: self.started_at_unix_ms,
            ended_at_unix_ms,
            duration_ms: ended_at_unix_ms.saturating_sub(self.started_at_unix_ms),
            time_to_decision_ms: self.time_to_decision_ms.unwrap_or_default(),
            final_step_index: self.step_index,
            final_weight_percent: f64::from(self.weight_bp) / 100.0,
            decisions: self.decisions.clone(),
            decisions_dropped: self.decisions_dropped,
        })
    }
}

impl From<&Step> for StepView {
    fn from(step: &Step) -> Self {
        let empty = StepView {
            kind: "setWeight",
            weight_percent: None,
            duration_ms: None,
            until_approved: false,
            timeout_ms: None,
            analysis: None,
        };
        match step {
            Step::SetWeight { weight_bp } => StepView { weight_percent: Some(f64::from(*weight_bp) / 100.0), ..empty },
            Step::Pause { wait, analysis } => StepView {
                kind: "pause",
                duration_ms: match wait {
                    PauseWait::Duration { duration_ms } => Some(*duration_ms),
                    PauseWait::UntilApproved => None,
                },
                until_approved: *wait == PauseWait::UntilApproved,
                analysis: Some(analysis.clone()),
                ..empty
            },
            Step::PreChecks { until_approved, timeout_ms } => {
                StepView { kind: "preChecks", until_approved: *until_approved, timeout_ms: Some(*timeout_ms), ..empty }
            }
        }
    }
}
