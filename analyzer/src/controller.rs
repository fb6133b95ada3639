//! The rollout controller: the I/O shell around the pure state machine
//! ([`crate::rollout`]) and the analysis engine ([`crate::analysis`]).
//!
//! Once a second ([`drive`]) it turns what the aggregate learned since the
//! last tick into an engine [`Tick`], runs the engine and the state machine,
//! and carries out their actions. API commands go through the same path under
//! the same lock, so ticks and commands are totally ordered.
//!
//! Order of effects, and why:
//! 1. Engine steps start (`Analysis::new` / `start_step`).
//! 2. The rollout is persisted (`rollout.json`; finished rollouts first go to
//!    `rollout-history.json`), written atomically and fsynced. Nothing is
//!    acknowledged, pushed or notified before this, so a decision the API
//!    reported survives `kill -9`.
//! 3. The weight change goes through the existing path
//!    (`AppState::set_canary_weight`: persisted, then pushed).
//! 4. Notifications are queued; delivery never blocks (see [`crate::notify`]).
//!
//! The rollout file is the source of truth for the weight while a rollout is
//! active, rolled back or failed: every tick, and once at startup before the
//! analyzer serves anything, the data-plane weight is corrected to what the
//! rollout wants. A crash between steps 2 and 3 is therefore repaired, and a
//! rolled-back rollout can never send canary traffic again.
//!
//! Resume semantics: the engine state and the per-version count cursor are
//! saved with the rollout, so after a restart the evidence collected so far
//! is kept. Counts the filters held while the analyzer was down arrive with
//! their next reports and are fed to the engine on the first tick. If the
//! saved engine state cannot be read (a build with a different engine), the
//! current step's evidence restarts, conservatively, with a fresh engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use canary_protocol::{CanaryWeight, LatencyHistogram, SparseLatency};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aggregate::VersionCounts;
use crate::analysis::{Analysis, AnalysisSettings, ArmTick, Assessment, Gates, Guards, HostHealth, Tick, Verdict};
use crate::hosts::HostHealthCell;
use crate::metrics::{CurrentRollout, EValue, RolloutKpiTotals, RolloutMetrics};
use crate::notify::Notifier;
use crate::rollout::{
    Action, AnalysisConfig, Command, HistoryEntry, Input, Observation, ObservedVerdict, Phase, Rollout, RolloutSpec,
    RolloutView, Step,
};
use crate::state::{AppState, WeightChange, unix_now_ms};
use crate::store::{StoreError, read_if_exists, write_atomically};

/// The current (or last) rollout, with its engine state and count cursor.
pub const ROLLOUT_FILE_NAME: &str = "rollout.json";
/// Finished rollouts, newest first, and the outcome counters.
pub const HISTORY_FILE_NAME: &str = "rollout-history.json";
/// Layout version of both files.
pub const ROLLOUT_FORMAT_VERSION: u32 = 1;

/// Why a rollout request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The rollout's phase does not allow it (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The decision could not be made durable (HTTP 503); nothing was
    /// acknowledged or, for a weight, it is retried on the next tick.
    #[error("{0}")]
    NotDurable(String),
}

/// The result of a command: the rollout after it and the weight change it
/// made, if any.
#[derive(Debug)]
pub struct CommandOutcome {
    pub view: Option<RolloutView>,
    pub weight_change: Option<WeightChange>,
}

/// The rollout file's JSON document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    pub format_version: u32,
    pub rollout: Option<Rollout>,
    /// The engine's serialized state (kept as JSON so an unreadable one
    /// degrades to a fresh engine rather than a refusal to start).
    pub analysis: Option<Value>,
    pub cursor: Option<CursorDoc>,
}

/// [`RolloutFile`] by reference, for writing on every tick: the engine goes
/// straight to bytes, not through a `Value` tree and a copy of the rollout.
#[derive(Serialize)]
struct RolloutFileRef<'a> {
    format_version: u32,
    rollout: Option<&'a Rollout>,
    analysis: Option<&'a Analysis>,
    cursor: Option<CursorDoc>,
}

/// The history file's JSON document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryFile {
    pub format_version: u32,
    /// Finished rollouts by outcome, since the state directory was created
    /// (the entries themselves are capped by `history_limit`).
    pub promoted_total: u64,
    pub rolled_back_total: u64,
    pub failed_total: u64,
    /// Newest first.
    pub entries: Vec<HistoryEntry>,
    /// Running duration totals behind the KPI metrics; missing in files
    /// written before they existed, and then rebuilt from `entries`.
    #[serde(default)]
    pub kpi: Option<RolloutKpiTotals>,
}

/// What the state directory holds for the controller, read at startup.
#[derive(Debug)]
pub struct Loaded {
    rollout: Option<Rollout>,
    analysis: Option<Value>,
    cursor: Option<CursorDoc>,
    history: HistoryFile,
}

impl Loaded {
    /// Reads both files; missing files mean no rollout yet. A file that
    /// exists but cannot be understood is an error naming it, never a silent
    /// reset (which could put canary traffic back after a rollback).
    pub fn read(dir: &Path) -> Result<Loaded, StoreError> {
        let rollout_file: Option<RolloutFile> = read_json(&dir.join(ROLLOUT_FILE_NAME))?;
        let history: Option<HistoryFile> = read_json(&dir.join(HISTORY_FILE_NAME))?;
        let mut history =
            history.unwrap_or(HistoryFile { format_version: ROLLOUT_FORMAT_VERSION, ..Default::default() });
        if history.kpi.is_none() {
            history.kpi = Some(RolloutKpiTotals::from_entries(&history.entries));
        }
        let (rollout, analysis, cursor) = match rollout_file {
            Some(file) => (file.rollout, file.analysis, file.cursor),
            None => (None, None, None),
        };
        // A crash between writing the history and the rollout file leaves a
        // finished rollout that the history may lack: add it.
        if let Some(entry) = rollout.as_ref().and_then(Rollout::history_entry)
            && !history.entries.iter().any(|known| known.id == entry.id)
        {
            record_outcome(&mut history, entry, usize::MAX);
        }
        Ok(Loaded { rollout, analysis, cursor, history })
    }

    /// The weight the data plane must be at before the analyzer serves.
    pub fn enforced_weight_bp(&self) -> Option<u16> {
        self.rollout.as_ref().and_then(Rollout::enforced_weight_bp)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let Some(bytes) = read_if_exists(path).map_err(|source| StoreError::Read { path: path.to_owned(), source })? else {
        return Ok(None);
    };
    let corrupt = |message: String| StoreError::Corrupt { path: path.to_owned(), message };
    let value: Value = serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
    let version = value.get("format_version").and_then(Value::as_u64);
    if version != Some(u64::from(ROLLOUT_FORMAT_VERSION)) {
        return Err(corrupt(format!(
            "format_version is {version:?}, this build reads version {ROLLOUT_FORMAT_VERSION}"
        )));
    }
    serde_path_to_error::deserialize(&value)
        .map(Some)
        .map_err(|error| corrupt(format!("{}: {}", error.path(), error.inner())))
}

/// Runs the controller's tick until shutdown.
pub async fn drive(state: AppState, tick: Duration, mut shutdown_rx: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown_rx.wait_for(|stopping| *stopping) => return,
        }
        state.controller().tick(&state).await;
    }
}

/// The controller's state behind its lock.
#[derive(Debug)]
struct Core {
    rollout: Option<Rollout>,
    analysis: Option<Analysis>,
    cursor: Cursor,
    history: HistoryFile,
}

/// What the API and metrics read without taking the controller's lock.
#[derive(Debug)]
struct Published {
    rollout: Option<Rollout>,
    history: Arc<Vec<HistoryEntry>>,
    completed_total: [u64; 3],
    kpi: RolloutKpiTotals,
}

/// See the module docs.
#[derive(Debug)]
pub struct Controller {
    core: tokio::sync::Mutex<Core>,
    published: ArcSwap<Published>,
    hosts: HostHealthCell,
    notifier: Notifier,
    dir: PathBuf,
    history_limit: usize,
}

impl Controller {
    pub fn new(
        loaded: Loaded,
        dir: &Path,
        history_limit: usize,
        hosts: HostHealthCell,
        notifier: Notifier,
        now_unix_ms: u64,
    ) -> Controller {
        let Loaded { rollout, analysis, cursor, history } = loaded;
        let cursor = cursor.map(Cursor::from_doc).unwrap_or_default();
        let analysis = match (&rollout, analysis) {
            (_, None) => None,
            (Some(rollout), Some(value)) if rollout.is_active() => match serde_json::from_value::<Analysis>(value) {
                Ok(analysis) => Some(analysis),
                Err(error) => {
                    tracing::warn!(%error, "saved analysis state unreadable; the current step's evidence restarts");
                    None
                }
            },
            _ => None,
        };
        let mut core = Core { rollout, analysis, cursor, history };
        restart_evidence_if_lost(&mut core, now_unix_ms);
        Controller {
            published: ArcSwap::from_pointee(Published::of(&core, None)),
            core: tokio::sync::Mutex::new(core),
            hosts,
            notifier,
            dir: dir.to_owned(),
            history_limit,
        }
    }

    /// `GET /v1/rollout`'s `rollout`; lock-free.
    pub fn view(&self, now_unix_ms: u64) -> Option<RolloutView> {
        let published = self.published.load();
        let hosts = self.hosts.current(now_unix_ms);
        published.rollout.as_ref().map(|rollout| rollout.view(now_unix_ms, hosts))
    }

    /// `GET /v1/rollouts/history`, newest first; lock-free.
    pub fn history(&self) -> Arc<Vec<HistoryEntry>> {
        self.published.load().history.clone()
    }

    /// The rollout part of `/metrics`; lock-free.
    pub fn metrics(&self, now_unix_ms: u64) -> RolloutMetrics {
        let published = self.published.load();
        let rollout = published.rollout.as_ref();
        let active = rollout.is_some_and(Rollout::is_active);
        let [promoted, rolled_back, failed] = published.completed_total;
        let assessment = rollout.and_then(|rollout| rollout.last_observation.as_ref());
        RolloutMetrics {
            current: rollout.map(|rollout| CurrentRollout::of(rollout, now_unix_ms)),
            started_total: promoted + rolled_back + failed + u64::from(active),
            completed_total: vec![("Promoted", promoted), ("RolledBack", rolled_back), ("Failed", failed)],
            e_values: assessment.map(|observation| EValue::of_assessment(&observation.assessment)).unwrap_or_default(),
            notifications: self.notifier.counters().snapshot(),
            canary_hosts: self.hosts.current(now_unix_ms),
            kpi: published.kpi,
            history: published.history.clone(),
        }
    }

    /// `POST /v1/rollouts`: starts a rollout unless one is active.
    pub async fn start(
        &self,
        app: &AppState,
        spec: RolloutSpec,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<RolloutView, ControlError> {
        let mut core = self.core.lock().await;
        if let Some(current) = core.rollout.as_ref().filter(|rollout| rollout.is_active()) {
            return Err(ControlError::Conflict(format!(
                "rollout {} ({}) is {}: promote it or roll it back before starting another",
                current.spec.name, current.spec.canary_version, current.phase
            )));
        }
        let now_unix_ms = unix_now_ms();
        let id = format!("{}-{now_unix_ms}", spec.name);
        let (rollout, actions) = Rollout::start(id, spec, actor, reason, now_unix_ms);
        // A new rollout starts a new engine and a new cursor.
        let next = Next { rollout, analysis: None, cursor: Cursor::default() };
        self.commit(&mut core, app, next, actions, now_unix_ms).await?;
        let rollout = core.rollout.as_ref().map(|rollout| rollout.view(now_unix_ms, self.hosts.current(now_unix_ms)));
        rollout.ok_or_else(|| ControlError::NotDurable("the rollout vanished after it started".to_owned()))
    }

    /// Promote, pause, resume, approve, rollback on the current rollout.
    pub async fn command(
        &self,
        app: &AppState,
        actor: &str,
        reason: Option<&str>,
        command: Command,
    ) -> Result<CommandOutcome, ControlError> {
        let mut core = self.core.lock().await;
        self.command_locked(&mut core, app, actor, reason, command).await
    }

    /// `POST /v1/rollout/rollback`: the rollout's rollback while one is
    /// active; refused after a rollback or failure (the canary is already at
    /// 0% for good); otherwise issue 2's plain rollback to 0%.
    pub async fn rollback(
        &self,
        app: &AppState,
        actor: &str,
        reason: Option<&str>,
        gradual_seconds: Option<u32>,
    ) -> Result<CommandOutcome, ControlError> {
        let mut core = self.core.lock().await;
        match core.rollout.as_ref() {
            // Active, rolled back or failed: the rollout decides (and refuses the
            // last two).
            Some(rollout) if rollout.phase != Phase::Promoted => {
                let command = Command::Rollback { gradual_seconds };
                self.command_locked(&mut core, app, actor, reason, command).await
            }
            _ => {
                if gradual_seconds.is_some() {
                    return Err(ControlError::Conflict(
                        "rollback: gradual_seconds needs an active rollout; without one the rollback is instant \
                         (omit gradual_seconds)"
                            .to_owned(),
                    ));
                }
                let change = app
                    .set_canary_weight(CanaryWeight::ZERO)
                    .await
                    .map_err(|error| ControlError::NotDurable(error.to_string()))?;
                Ok(CommandOutcome { view: None, weight_change: Some(change) })
            }
        }
    }

    /// `PUT /v1/rollout/weight`: through the rollout for a manual one,
    /// refused while an automatic rollout is active or after a rollback or
    /// failure, otherwise issue 2's plain weight change.
    pub async fn put_weight(
        &self,
        app: &AppState,
        actor: &str,
        reason: Option<&str>,
        weight: CanaryWeight,
    ) -> Result<CommandOutcome, ControlError> {
        let mut core = self.core.lock().await;
        match core.rollout.as_ref() {
            Some(rollout) if rollout.phase != Phase::Promoted => {
                let command = Command::SetWeight { weight_bp: weight.bp() };
                self.command_locked(&mut core, app, actor, reason, command).await
            }
            _ => {
                let change =
                    app.set_canary_weight(weight).await.map_err(|error| ControlError::NotDurable(error.to_string()))?;
                Ok(CommandOutcome { view: None, weight_change: Some(change) })
            }
        }
    }

    /// One tick: reconcile the weight, feed the engine, step the machine.
    pub async fn tick(&self, app: &AppState) {
        let now_unix_ms = unix_now_ms();
        let mut core = self.core.lock().await;
        let Some(rollout) = core.rollout.clone() else { return };
        if let Some(wanted_bp) = rollout.enforced_weight_bp()
            && app.weights().weights.canary_weight.bp() != wanted_bp
        {
            reconcile_weight(app, wanted_bp).await;
        }
        if !rollout.is_active() {
            return;
        }
        let (weights, since) = app.analysis_inputs();
        let mut cursor = core.cursor.clone();
        let deltas = cursor.advance(weights.weights.weights_version, &since);
        let hosts = self.hosts.current(now_unix_ms);
        let mut analysis = core.analysis.clone();
        let engine_runs_here = weights.weights.canary_weight.bp() == rollout.weight_bp
            && rollout.analysis_weight_bp == Some(rollout.weight_bp);
        let observation = match (analysis.as_mut(), deltas) {
            (Some(engine), Some([stable, canary])) if engine_runs_here => {
                let tick = Tick {
                    now_ms: now_unix_ms,
                    stable,
                    canary,
                    canary_hosts: hosts.map(|hosts| HostHealth { healthy: hosts.healthy, total: hosts.total }),
                };
                Some(observation_of(&engine.observe(&tick)))
            }
            _ => None,
        };
        let mut next = rollout;
        let hosts_configured = !app.config().envoy_admin_urls.is_empty();
        let input = Input::Tick { observation: observation.clone(), hosts, hosts_configured };
        let actions = match next.handle(&input, now_unix_ms) {
            Ok(actions) => actions,
            Err(rejection) => {
                tracing::error!(%rejection, "the state machine refused a tick");
                return;
            }
        };
        if actions.is_empty() && observation.is_none() {
            // Nothing to persist: only the cursor moved past counts that no
            // engine step was running for.
            core.cursor = cursor;
            return;
        }
        let next = Next { rollout: next, analysis, cursor };
        if let Err(error) = self.commit(&mut core, app, next, actions, now_unix_ms).await {
            tracing::error!(%error, "rollout tick not applied; retrying on the next tick");
        }
    }

    async fn command_locked(
        &self,
        core: &mut Core,
        app: &AppState,
        actor: &str,
        reason: Option<&str>,
        command: Command,
    ) -> Result<CommandOutcome, ControlError> {
        let Some(mut next) = core.rollout.clone() else {
            return Err(ControlError::Conflict("no rollout has been started; POST /v1/rollouts starts one".to_owned()));
        };
        let now_unix_ms = unix_now_ms();
        let input = Input::Command { actor: actor.to_owned(), reason: reason.map(str::to_owned), command };
        let actions =
            next.handle(&input, now_unix_ms).map_err(|rejection| ControlError::Conflict(rejection.message))?;
        let next = Next { rollout: next, analysis: core.analysis.clone(), cursor: core.cursor.clone() };
        let weight_change = self.commit(core, app, next, actions, now_unix_ms).await?;
        let view = core.rollout.as_ref().map(|rollout| rollout.view(now_unix_ms, self.hosts.current(now_unix_ms)));
        Ok(CommandOutcome { view, weight_change })
    }

    /// Carries out `actions` for the `next` state in the order of the module
    /// docs and makes it current. Nothing is kept if persisting fails.
    async fn commit(
        &self,
        core: &mut Core,
        app: &AppState,
        mut next: Next,
        actions: Vec<Action>,
        now_unix_ms: u64,
    ) -> Result<Option<WeightChange>, ControlError> {
        let mut weight_bp = None;
        let mut notifications = Vec::new();
        for action in actions {
            match action {
                Action::StartAnalysisStep { analysis, canary_share, fresh } => {
                    let settings = engine_settings(&analysis);
                    let engine = match next.analysis.as_mut() {
                        Some(engine) if !fresh => engine,
                        _ => next.analysis.insert(Analysis::new(settings.clone())),
                    };
                    let reference = app.stable_reference();
                    engine.start_step(settings, canary_share, reference.as_ref(), now_unix_ms);
                }
                Action::SetWeight { weight_bp: bp } => weight_bp = Some(bp),
                Action::RecordDecision(decision) => tracing::info!(
                    rollout = %next.rollout.spec.name,
                    actor = %decision.actor,
                    action = %decision.action,
                    from = ?decision.from_phase,
                    to = %decision.to_phase,
                    weight_percent = decision.weight_percent,
                    reason = %decision.reason,
                    "rollout decision"
                ),
                Action::Notify(notification) => notifications.push(*notification),
            }
        }

        // The history is copied only when a rollout finishes: this runs on
        // every tick, and copying it each time churned the allocator enough
        // to grow the analyzer's memory in long soaks.
        let finished =
            next.rollout.history_entry().filter(|entry| !core.history.entries.iter().any(|e| e.id == entry.id));
        let history = match finished {
            Some(entry) => {
                let mut history = core.history.clone();
                record_outcome(&mut history, entry, self.history_limit);
                let bytes =
                    serde_json::to_vec(&history).map_err(|error| ControlError::NotDurable(error.to_string()))?;
                self.write(HISTORY_FILE_NAME, bytes).await?;
                Some(history)
            }
            None => None,
        };
        let file = RolloutFileRef {
            format_version: ROLLOUT_FORMAT_VERSION,
            rollout: Some(&next.rollout),
            analysis: next.analysis.as_ref(),
            cursor: Some(next.cursor.to_doc()),
        };
        let bytes = serde_json::to_vec(&file).map_err(|error| ControlError::NotDurable(error.to_string()))?;
        self.write(ROLLOUT_FILE_NAME, bytes).await?;

        core.rollout = Some(next.rollout);
        core.analysis = next.analysis;
        core.cursor = next.cursor;
        let history_changed = history.is_some();
        if let Some(history) = history {
            core.history = history;
        }

        let weight_change = match weight_bp.map(|bp| CanaryWeight::from_bp(u64::from(bp))) {
            Some(Ok(weight)) => app.set_canary_weight(weight).await.map(Some).map_err(|error| {
                ControlError::NotDurable(format!(
                    "the decision is recorded, but the weight change is not yet durable ({error}); \
                     it is retried every second"
                ))
            }),
            Some(Err(error)) => Err(ControlError::NotDurable(format!("rollout weight: {error}"))),
            None => Ok(None),
        };
        // Published after the weight, so that a reader who sees the new
        // phase also sees its weight in force.
        self.publish(core, history_changed);
        for notification in notifications {
            self.notifier.notify(notification);
        }
        weight_change
    }

    async fn write(&self, file_name: &str, bytes: Vec<u8>) -> Result<(), ControlError> {
        let dir = self.dir.clone();
        let path = dir.join(file_name);
        let tmp_path = dir.join(format!("{file_name}.tmp"));
        let written = tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &tmp_path, &bytes)).await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                Err(ControlError::NotDurable(format!("cannot persist {}: {error}", self.dir.join(file_name).display())))
            }
            Err(error) => Err(ControlError::NotDurable(format!("rollout writer task failed: {error}"))),
        }
    }

    fn publish(&self, core: &Core, history_changed: bool) {
        // Unchanged entries are shared rather than copied on every tick.
        let unchanged_history = (!history_changed).then(|| self.published.load().history.clone());
        self.published.store(Arc::new(Published::of(core, unchanged_history)));
    }
}

impl Published {
    /// `history_entries`: the entries already published, when `core`'s are the
    /// same.
    fn of(core: &Core, history_entries: Option<Arc<Vec<HistoryEntry>>>) -> Published {
        let history = &core.history;
        Published {
            rollout: core.rollout.clone(),
            history: history_entries.unwrap_or_else(|| Arc::new(history.entries.clone())),
            completed_total: [history.promoted_total, history.rolled_back_total, history.failed_total],
            kpi: history.kpi.unwrap_or_default(),
        }
    }
}

/// The state a commit makes current.
struct Next {
    rollout: Rollout,
    analysis: Option<Analysis>,
    cursor: Cursor,
}

fn record_outcome(history: &mut HistoryFile, entry: HistoryEntry, limit: usize) {
    match entry.outcome {
        Phase::Promoted => history.promoted_total += 1,
        Phase::RolledBack => history.rolled_back_total += 1,
        _ => history.failed_total += 1,
    }
    history.kpi.get_or_insert_with(Default::default).record(&entry);
    history.entries.insert(0, entry);
    history.entries.truncate(limit);
}

/// After a restart without readable engine state: start the current step's
/// evidence again, with a fresh engine and a fresh step clock.
fn restart_evidence_if_lost(core: &mut Core, now_unix_ms: u64) {
    let Some(rollout) = core.rollout.as_mut() else { return };
    if !rollout.is_active() || core.analysis.is_some() || rollout.analysis_weight_bp.is_none() {
        return;
    }
    let analysis = match rollout.current_step() {
        Some(Step::Pause { analysis, .. }) => analysis.clone(),
        _ => rollout.spec.analysis.clone(),
    };
    let settings = engine_settings(&analysis);
    let mut engine = Analysis::new(settings.clone());
    engine.start_step(settings, f64::from(rollout.weight_bp) / 10_000.0, None, now_unix_ms);
    core.analysis = Some(engine);
    rollout.step_started_at_unix_ms = now_unix_ms;
    rollout.last_observation = None;
}

async fn reconcile_weight(app: &AppState, wanted_bp: u16) {
    let Ok(weight) = CanaryWeight::from_bp(u64::from(wanted_bp)) else { return };
    tracing::warn!(canary_weight = %weight, "data-plane weight differs from the rollout's; correcting it");
    if let Err(error) = app.set_canary_weight(weight).await {
        tracing::error!(%error, "cannot correct the weight; retrying on the next tick");
    }
}

/// The spec's resolved settings as the engine takes them.
fn engine_settings(config: &AnalysisConfig) -> AnalysisSettings {
    AnalysisSettings {
        alpha: config.alpha,
        error_test: config.error_test,
        latency_test: config.latency_test,
        latency_quantiles: config.latency_quantiles.clone(),
        min_canary_requests: config.min_canary_requests,
        latency_warmup_ms: config.latency_warmup_ms,
        latency_tolerance: config.latency_tolerance,
        guards: Guards {
            max_error_rate: config.guards.max_error_rate,
            max_error_rate_for_ms: config.guards.max_error_rate_for_ms,
            max_p95_ms: config.guards.max_p95_ms,
            max_p95_for_ms: config.guards.max_p95_for_ms,
            max_unhealthy_host_ratio: config.guards.max_unhealthy_host_ratio,
        },
        gates: Gates {
            max_error_rate: config.gates.max_error_rate,
            max_p95_ms: config.gates.max_p95_ms,
            min_throughput_ratio: config.gates.min_throughput_ratio,
            require_healthy_hosts: config.gates.require_healthy_hosts,
        },
    }
}

/// The engine's assessment as the state machine needs it.
fn observation_of(assessment: &Assessment) -> Observation {
    let verdict = match &assessment.verdict {
        Verdict::Healthy => ObservedVerdict::Healthy,
        Verdict::InsufficientData { reason } => ObservedVerdict::InsufficientData { reason: reason.clone() },
        Verdict::Regression { rule, summary } => {
            ObservedVerdict::Regression { rule: rule.clone(), summary: summary.clone() }
        }
        Verdict::GuardTripped { rule, summary } => {
            ObservedVerdict::GuardTripped { rule: rule.clone(), summary: summary.clone() }
        }
    };
    Observation {
        verdict,
        gates_pass: assessment.gates.all_pass(),
        assessment: serde_json::to_value(assessment).unwrap_or(Value::Null),
    }
}

/// Where the engine has read up to in the aggregate's since-change counts,
/// per version. Counts are attributed to the weights version they were
/// routed under, so a new version starts the cursor at zero.
#[derive(Debug, Clone, Default, PartialEq)]
struct Cursor {
    weights_version: u64,
    arms: [ArmCursor; 2],
}

#[derive(Debug, Clone, Default)]
struct ArmCursor {
    requests: u64,
    errors: u64,
    latency_us: LatencyHistogram,
}

impl PartialEq for ArmCursor {
    fn eq(&self, other: &Self) -> bool {
        self.requests == other.requests
            && self.errors == other.errors
            && self.latency_us.counts() == other.latency_us.counts()
    }
}

/// The cursor in the rollout file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorDoc {
    pub weights_version: u64,
    pub stable: ArmCursorDoc,
    pub canary: ArmCursorDoc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmCursorDoc {
    pub requests: u64,
    pub errors: u64,
    /// Non-zero latency buckets as `[index, count]`.
    pub latency_us: Vec<(u32, u64)>,
}

impl Cursor {
    /// The counts since the last call, per version (stable, canary), and
    /// moves the cursor to `since`. `None` when the aggregate is behind the
    /// cursor: after a crash the cursor may include reports that were never
    /// made durable; their re-sends catch the aggregate up, and until then
    /// nothing is counted twice.
    fn advance(&mut self, weights_version: u64, since: &[VersionCounts; 2]) -> Option<[ArmTick; 2]> {
        if self.weights_version != weights_version {
            *self = Cursor { weights_version, arms: Default::default() };
        }
        let mut ticks: [ArmTick; 2] = Default::default();
        for ((arm, counts), tick) in self.arms.iter().zip(since).zip(ticks.iter_mut()) {
            let errors = counts.errors();
            if counts.requests < arm.requests || errors < arm.errors {
                return None;
            }
            let mut buckets = Vec::new();
            for (index, (&now, &before)) in counts.latency_us.counts().iter().zip(arm.latency_us.counts()).enumerate() {
                match now.checked_sub(before) {
                    Some(0) => {}
                    Some(delta) => buckets.push((index as u32, delta)),
                    None => return None,
                }
            }
            *tick = ArmTick {
                requests: counts.requests - arm.requests,
                errors: errors - arm.errors,
                latency_us: SparseLatency { buckets },
            };
        }
        for (arm, counts) in self.arms.iter_mut().zip(since) {
            arm.requests = counts.requests;
            arm.errors = counts.errors();
            arm.latency_us = counts.latency_us.clone();
        }
        Some(ticks)
    }

    fn to_doc(&self) -> CursorDoc {
        let arm = |arm: &ArmCursor| ArmCursorDoc {
            requests: arm.requests,
            errors: arm.errors,
            latency_us: arm.latency_us.nonzero_buckets().collect(),
        };
        CursorDoc { weights_version: self.weights_version, stable: arm(&self.arms[0]), canary: arm(&self.arms[1]) }
    }

    fn from_doc(doc: CursorDoc) -> Cursor {
        let arm = |doc: ArmCursorDoc| {
            let mut latency_us = LatencyHistogram::new();
            // merge_sparse ignores indices past the layout.
            latency_us.merge_sparse(&SparseLatency { buckets: doc.latency_us });
            ArmCursor { requests: doc.requests, errors: doc.errors, latency_us }
        };
        Cursor { weights_version: doc.weights_version, arms: [arm(doc.stable), arm(doc.canary)] }
    }
}

#[cfg(test)]
mod tests {
    use canary_protocol::StatusCounts;

    use super::*;

    fn counts(requests: u64, errors: u64, latencies_us: &[u64]) -> VersionCounts {
        let mut latency_us = LatencyHistogram::new();
        for &latency in latencies_us {
            latency_us.record_us(latency);
        }
        VersionCounts { requests, status: StatusCounts { status_5xx: errors, ..Default::default() }, latency_us }
    }

    #[test]
    fn the_cursor_yields_deltas_per_weights_version() {
        let mut cursor = Cursor::default();
        let first = cursor.advance(2, &[counts(10, 1, &[1_000; 10]), counts(2, 0, &[2_000, 2_000])]).expect("delta");
        assert_eq!((first[0].requests, first[0].errors, first[1].requests), (10, 1, 2));
        assert_eq!(first[1].latency_us.total_count(), 2);
        let second = cursor.advance(2, &[counts(15, 1, &[1_000; 15]), counts(2, 0, &[2_000, 2_000])]).expect("delta");
        assert_eq!((second[0].requests, second[0].errors, second[1].requests), (5, 0, 0));
        assert_eq!(second[0].latency_us.total_count(), 5);
        assert!(second[1].latency_us.buckets.is_empty());
        // A new weights version restarts the since-change counts.
        let third = cursor.advance(3, &[counts(1, 0, &[500]), counts(1, 1, &[900])]).expect("delta");
        assert_eq!((third[0].requests, third[1].errors), (1, 1));
    }

    #[test]
    fn a_cursor_ahead_of_the_aggregate_waits_and_survives_a_restart() {
        let mut cursor = Cursor::default();
        cursor.advance(4, &[counts(10, 0, &[1_000; 10]), counts(3, 1, &[1_000; 3])]).expect("delta");
        let restored = Cursor::from_doc(
            serde_json::from_value(serde_json::to_value(cursor.to_doc()).expect("json")).expect("doc"),
        );
        assert_eq!(restored, cursor);
        let mut cursor = restored;
        assert!(cursor.advance(4, &[counts(8, 0, &[1_000; 8]), counts(3, 1, &[1_000; 3])]).is_none(), "behind");
        let caught_up = cursor.advance(4, &[counts(12, 0, &[1_000; 12]), counts(3, 1, &[1_000; 3])]).expect("delta");
        assert_eq!(caught_up[0].requests, 2, "nothing counted twice");
    }
}
