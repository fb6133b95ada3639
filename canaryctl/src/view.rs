//! The API's JSON, read into the parts the CLI shows. The analyzer owns the
//! shapes (`GET /v1/rollout`, the history, the assignment); these types take
//! only what is rendered and ignore the rest, so a field added on the server
//! does not break an older client. An unknown phase reads as
//! [`Phase::Unknown`] for the same reason.

use serde::Deserialize;

/// `GET /v1/rollout`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FullView {
    pub canary_weight_percent: f64,
    pub weights_version: u64,
    pub versions: Versions,
    pub data_plane: DataPlane,
    /// `null` when no rollout was ever started.
    pub rollout: Option<RolloutView>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Versions {
    pub stable: VersionView,
    pub canary: VersionView,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VersionView {
    pub window: Window,
}

/// One version's counts over the analyzer's sliding window.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Window {
    pub seconds: u32,
    pub requests_per_second: f64,
    pub requests: u64,
    pub errors: u64,
    pub error_ratio: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DataPlane {
    pub live_workers: usize,
    pub converged_workers: usize,
    pub converged: bool,
}

/// Where a rollout stands (the analyzer's `Phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Phase {
    Progressing,
    Paused,
    AwaitingApproval,
    Promoted,
    RolledBack,
    Failed,
    /// A phase this client does not know; shown, never taken as an outcome.
    #[serde(other)]
    Unknown,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Promoted => "Promoted",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
            Phase::Unknown => "Unknown",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Failed)
    }
}

/// `GET /v1/rollout` → `rollout`, and the `rollout` of command answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RolloutView {
    pub id: String,
    pub name: String,
    pub canary_version: String,
    pub stable_version: Option<String>,
    pub strategy: String,
    pub failure_policy: String,
    pub phase: Phase,
    pub pause_cause: Option<String>,
    /// The analyzer's one line on what the rollout waits for.
    pub status: String,
    pub step_index: usize,
    pub step_count: usize,
    pub step: Option<StepView>,
    pub step_elapsed_ms: u64,
    pub weight_percent: f64,
    pub duration_ms: u64,
    pub gradual_rollback: Option<GradualView>,
    /// The last decisions, oldest first.
    pub decisions: Vec<Decision>,
    pub decisions_total: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StepView {
    /// `setWeight`, `pause` or `preChecks`.
    pub kind: String,
    pub weight_percent: Option<f64>,
    pub duration_ms: Option<u64>,
    pub until_approved: bool,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct GradualView {
    pub from_percent: f64,
    pub seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Decision {
    pub at_unix_ms: u64,
    pub actor: String,
    pub action: String,
    pub from_phase: Option<Phase>,
    pub to_phase: Phase,
    pub weight_percent: f64,
    pub reason: String,
}

/// One entry of `GET /v1/rollouts/history`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryEntry {
    pub id: String,
    pub name: String,
    pub canary_version: String,
    pub stable_version: Option<String>,
    pub strategy: String,
    pub outcome: Phase,
    pub started_at_unix_ms: u64,
    pub duration_ms: u64,
    pub time_to_decision_ms: u64,
    pub final_weight_percent: f64,
    pub decisions: Vec<Decision>,
}

/// `GET /v1/assignment?key=K`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Assignment {
    pub key: String,
    pub bucket: u16,
    pub version: String,
    pub canary_weight_bp: u16,
    pub weights_version: u64,
}

/// The answer to a weight change or a rollback.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WeightChange {
    pub weights_version: u64,
    pub canary_weight_percent: f64,
    pub changed: bool,
    pub wait: Option<Propagation>,
    pub rollout: Option<RolloutView>,
}

/// `?wait=true`'s report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Propagation {
    pub confirmed: bool,
    pub propagation_ms: Option<f64>,
    pub workers_total: usize,
    pub workers_confirmed: usize,
    pub unconfirmed: Vec<WorkerRef>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WorkerRef {
    pub proxy_id: String,
    pub worker_id: String,
}
