//! The analyzer's shared state: the aggregate behind a lock, the published
//! weights, the notification channels, the persister task, and the rollout
//! controller with its tasks (tick, host-health poller, webhook delivery).
//!
//! Invariants:
//! - The published weights (what sync responses carry) are always weights
//!   that are on disk. A weight change is written to the weights file
//!   ([`crate::weights_file`]: one `pwrite` + `fdatasync`, outside the
//!   reports' group commit) and published right after; the persister also
//!   publishes the weights of each journal record it wrote, which only matters
//!   when the weights file could not be written. Publishing never goes back
//!   to an older version, whichever of the two gets there first. A weight
//!   change is therefore durable before any filter can apply it.
//! - At startup the newer of the two files' weights wins, and the weights
//!   file is brought up to date before anything is published.
//! - A sync is acknowledged only once its ingest is durable (its journal
//!   record is fsynced), so a `kill -9` never loses acknowledged counts and
//!   never double counts a re-send.
//! - Commit cost follows the batch: a record holds the counters and the
//!   workers that changed since the previous one. The whole state is copied
//!   under the lock only for a snapshot (every [`SNAPSHOT_INTERVAL`] of
//!   traffic), and serialised and written outside it while commits go on.
//! - The lock around the aggregate is a `std` mutex held for microseconds
//!   and never across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use canary_protocol::{CanaryWeight, LatencyHistogram, Report};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aggregate::{
    Aggregate, AggregateSettings, Convergence, DurableParts, IngestOutcome, PageRequest, RolloutView, VersionCounts,
    WeightsRecord, WorkerKey, WorkersPage, format_worker_id,
};
use crate::config::Config;
use crate::controller::{self, Controller, Loaded};
use crate::hosts::{self, HostHealthCell};
use crate::http_client::HttpClient;
use crate::journal::{self, CommitRecord, JournalDir, JournalWriter, ReplayState};
use crate::metrics::{self, MetricsSnapshot, RejectReason, ReportCounters};
use crate::notify::Notifier;
use crate::store::{Durability, LAZY_COMMIT_DELAY, NotDurable, StateFile, Store, StoreError};
use crate::weights_file::WeightsFile;

/// Longest wait for the state to reach disk before a request gives up with
/// 503. A filter then re-sends the same report, which is deduplicated.
pub const DURABILITY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts when the journal or a snapshot cannot be written.
const PERSIST_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Write attempts on shutdown before giving up on a failing disk.
const SHUTDOWN_WRITE_ATTEMPTS: u32 = 3;
/// Longest time between the first journal record after a snapshot and the
/// next snapshot: bounds the replay at startup to seconds of records.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(10);
/// Journal size that makes a snapshot due at once, whatever the time.
const SNAPSHOT_JOURNAL_BYTES: u64 = 16 * 1024 * 1024;

/// Handle to the analyzer's state; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// The result of a weight change request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightChange {
    /// The weights now published to filters.
    pub weights: WeightsRecord,
    /// False when the requested weight was already in force.
    pub changed: bool,
}

/// How a wait for convergence ended.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitOutcome {
    pub confirmed: bool,
    /// From receipt of the request to the last confirmation; `None` when not
    /// confirmed.
    pub propagation_ms: Option<f64>,
    pub workers_total: usize,
    pub workers_confirmed: usize,
    pub unconfirmed: Vec<WorkerKey>,
}

impl AppState {
    /// Loads the state directory named in `config` and starts the persister.
    /// Must be called within a Tokio runtime. A corrupt state file, or a
    /// weights file without a valid record, is an error; a missing state file
    /// means fresh state (with the weights file's weights, if there is one).
    pub fn open(config: Config) -> Result<AppState, StoreError> {
        let store = Store::open(&config.state_dir)?;
        let settings = AggregateSettings {
            window_seconds: config.window_seconds,
            worker_stale_after_ms: config.worker_stale_after_ms,
        };
        let now_unix_ms = unix_now_ms();
        let journal_dir = JournalDir::new(store.dir());
        let (replayed, next_journal_generation) = recover(&store, &journal_dir, now_unix_ms)?;
        let (mut aggregate, fresh) = match replayed {
            Some(parts) => (Aggregate::restore(settings, now_unix_ms, parts), false),
            None => (Aggregate::new(settings, now_unix_ms), true),
        };
        // A weight change reaches the weights file before the state file, so
        // the weights file's record wins when it is newer.
        let weights_file = WeightsFile::open(store.dir())?;
        let from_weights_file = weights_file.as_ref().is_some_and(|(_, record)| aggregate.adopt_newer_weights(*record));
        let loaded = Loaded::read(store.dir())?;
        // The rollout file is the source of truth for the weight while a
        // rollout holds it (a crash may have come between recording a
        // rollback and persisting its weight): correct it before any filter
        // can sync, and write it down (below) before it is published.
        if let Some(wanted_bp) = loaded.enforced_weight_bp()
            && let Ok(wanted) = CanaryWeight::from_bp(u64::from(wanted_bp))
            && aggregate.change_weight(wanted, now_unix_ms).is_some()
        {
            tracing::warn!(canary_weight = %wanted, "weights corrected to the rollout's before serving");
        }
        let weights = aggregate.weights();
        // Whatever won, the weights file holds it before it is published:
        // created on first start (or next to a state file of an older
        // build), rewritten when the state file or the rollout was ahead.
        let weights_file = match weights_file {
            Some((mut file, record)) => {
                if record != weights {
                    file.write(&weights).map_err(|source| StoreError::WeightsIo {
                        path: file.path().to_owned(),
                        action: "cannot write it",
                        source,
                    })?;
                }
                file
            }
            None => {
                if !fresh {
                    // Expected once after an upgrade from a build without the
                    // weights file, whose state file always held the newest
                    // weights. Otherwise someone removed it, and the state
                    // file's weights may be older than the filters' ones.
                    tracing::warn!(
                        weights_version = weights.weights.weights_version,
                        canary_weight = %weights.weights.canary_weight,
                        "no weights file next to the state file; created it from the state file's weights"
                    );
                }
                WeightsFile::create(store.dir(), &weights)?
            }
        };
        tracing::info!(
            path = %store.path().display(),
            weights_path = %weights_file.path().display(),
            fresh,
            from_weights_file,
            weights_version = weights.weights.weights_version,
            canary_weight = %weights.weights.canary_weight,
            "state loaded"
        );
        // A new journal generation for this process, then a snapshot of what
        // was recovered (and corrected above), which makes the older files
        // stale. Nothing is acknowledged before the journal file exists; the
        // snapshot may fail (the persister retries it) without harm, since
        // the files it would replace stay until one succeeds.
        let journal = journal_dir.create(next_journal_generation).map_err(|source| StoreError::JournalIo {
            path: journal_dir.path(next_journal_generation),
            action: "cannot create it",
            source,
        })?;
        let mut persister = Persister::new(journal_dir, journal);
        let startup_snapshot = StateFile::capture(&aggregate, next_journal_generation);
        match store.save(&startup_snapshot) {
            Ok(()) => persister.journal_dir.remove_before(next_journal_generation),
            Err(error) => {
                tracing::error!(%error, "cannot write the startup snapshot; retrying in the background");
                persister.snapshot_at = Some(Instant::now());
            }
        }
        drop(startup_snapshot);
        let client = HttpClient::new();
        let host_health = HostHealthCell::default();
        let notifier = Notifier::start(&config.notify, client.clone());
        let controller =
            Controller::new(loaded, store.dir(), config.history_limit, host_health.clone(), notifier, now_unix_ms);
        let inner = Arc::new(Inner {
            controller,
            config,
            store,
            weights_file: Arc::new(Mutex::new(weights_file)),
            core: Mutex::new(Core { aggregate, generation: 0, changed_workers: Vec::new() }),
            published: ArcSwap::from_pointee(weights),
            weights_version_tx: watch::Sender::new(weights.weights.weights_version),
            applied_tx: watch::Sender::new(0),
            durability: Durability::new(0),
            shutdown_tx: watch::Sender::new(false),
            weight_change: tokio::sync::Mutex::new(()),
            reports: ReportCounters::default(),
            persister: Mutex::new(None),
            series: crate::series::SeriesCell::default(),
        });
        let persister = spawn_persister(inner.clone(), persister)?;
        *inner.persister.lock().unwrap_or_else(PoisonError::into_inner) = Some(persister);
        let state = AppState { inner };
        let config = &state.inner.config;
        if !config.envoy_admin_urls.is_empty() {
            tokio::spawn(hosts::poll(
                config.envoy_admin_urls.clone(),
                config.canary_cluster.clone(),
                host_health,
                client,
                state.inner.shutdown_tx.subscribe(),
            ));
        }
        tokio::spawn(crate::series::sample(state.clone(), state.inner.shutdown_tx.subscribe()));
        tokio::spawn(controller::drive(
            state.clone(),
            Duration::from_millis(config.rollout_tick_ms.max(1)),
            state.inner.shutdown_tx.subscribe(),
        ));
        Ok(state)
    }

    /// The rollout controller.
    pub fn controller(&self) -> &Controller {
        &self.inner.controller
    }

    /// The newest weights and the per-version counts routed under them:
    /// what the controller feeds the analysis engine.
    pub fn analysis_inputs(&self) -> (WeightsRecord, [VersionCounts; 2]) {
        let core = self.inner.lock_core();
        (core.aggregate.weights(), core.aggregate.since_weights_change().clone())
    }

    /// Stable's latency over the sliding window, from which a new analysis
    /// step fixes its latency thresholds; `None` without stable traffic.
    pub fn stable_reference(&self) -> Option<LatencyHistogram> {
        let window = self.inner.lock_core().aggregate.window_counts(unix_now_ms());
        let [stable, _] = window;
        (!stable.latency_us.is_empty()).then_some(stable.latency_us)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The weights filters are being told; lock-free.
    pub fn weights(&self) -> WeightsRecord {
        **self.inner.published.load()
    }

    pub fn report_counters(&self) -> &ReportCounters {
        &self.inner.reports
    }

    pub fn count_rejected(&self, reason: RejectReason) {
        self.inner.reports.count_rejected(reason);
    }

    /// Folds a validated report in and notes it for the next commit. Returns
    /// the generation to wait for before acknowledging it.
    pub fn ingest(&self, report: &Report) -> (IngestOutcome, u64) {
        let mut outcome = IngestOutcome::default();
        let generation = self.ingest_reports(std::slice::from_ref(report), |_, ingested| outcome = ingested);
        (outcome, generation)
    }

    /// Folds a batch's reports in, in order, under one lock, and notes them
    /// for the next commit as one change. Each report is deduplicated by its
    /// own worker and seq, as if it came alone. Returns the generation to
    /// wait for before acknowledging any of them.
    pub fn ingest_batch(&self, reports: &[Report]) -> u64 {
        let generation = self.ingest_reports(reports, |report, ingested| {
            tracing::trace!(
                proxy_id = %report.header.proxy_id,
                worker_id = %format_worker_id(report.header.worker_id),
                seq = report.header.seq,
                duplicate = ingested.duplicate,
                "batched report ingested"
            );
        });
        self.inner.reports.count_batch();
        generation
    }

    fn ingest_reports<'r>(&self, reports: &'r [Report], mut each: impl FnMut(&'r Report, IngestOutcome)) -> u64 {
        let now_unix_ms = unix_now_ms();
        let mut applied_version_changed = false;
        let generation = {
            let mut core = self.inner.lock_core();
            for report in reports {
                let key = WorkerKey::of(report);
                let outcome = core.aggregate.ingest_from(&key, report, now_unix_ms);
                core.changed_workers.push(key);
                self.inner.reports.count_received(outcome.duplicate);
                applied_version_changed |= outcome.applied_version_changed;
                each(report, outcome);
            }
            core.generation += 1;
            core.generation
        };
        if applied_version_changed {
            self.inner.applied_tx.send_modify(|changes| *changes = changes.wrapping_add(1));
        }
        self.inner.durability.note_pending(generation);
        generation
    }

    /// Waits until `generation` is on disk (group commit).
    pub async fn wait_durable(&self, generation: u64) -> Result<(), NotDurable> {
        self.inner.durability.wait(generation, DURABILITY_TIMEOUT).await
    }

    /// The sync call's long-poll and its acknowledgement's condition: holds
    /// until the published weights version differs from `applied_version`,
    /// `max_hold` passes or the analyzer shuts down, then waits until the
    /// report (`generation`) is durable, and returns the weights in force
    /// then.
    ///
    /// A held report asks for no commit of its own: the persister commits
    /// pending changes within [`crate::store::LAZY_COMMIT_DELAY`], so one
    /// `fdatasync` covers every report of that span, and a report held for
    /// its whole interval is usually on disk when its hold ends. A hold that
    /// ends early (new weights, or no hold asked for) requests the commit at
    /// once. Durability still bounds the call: past [`DURABILITY_TIMEOUT`]
    /// from arrival it answers 503 as soon as the hold ends.
    pub async fn hold_until_durable(
        &self,
        generation: u64,
        applied_version: u64,
        max_hold: Duration,
    ) -> Result<WeightsRecord, NotDurable> {
        let deadline = tokio::time::Instant::now() + DURABILITY_TIMEOUT;
        let durable = self.inner.durability.subscribe(generation);
        self.hold_while_version(applied_version, max_hold).await;
        self.inner.durability.finish(durable, deadline).await?;
        Ok(self.weights())
    }

    /// The long-poll hold: returns at once if the published weights version
    /// differs from `applied_version`, else when it changes, after
    /// `max_hold`, or on shutdown, whichever is first.
    async fn hold_while_version(&self, applied_version: u64, max_hold: Duration) {
        // Nothing to wait for: skip the subscriptions and the timer, which
        // every report would otherwise pay for.
        if max_hold.is_zero() || self.weights().weights.weights_version != applied_version {
            return;
        }
        // Subscribing before looking at the value means a change between the
        // two cannot be missed.
        let mut version_rx = self.inner.weights_version_tx.subscribe();
        let mut shutdown_rx = self.inner.shutdown_tx.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(max_hold, version_rx.wait_for(|version| *version != applied_version)) => {}
            _ = shutdown_rx.wait_for(|stopping| *stopping) => {}
        }
    }

    /// Sets the canary weight, waits until it is durable and published, and
    /// returns the weights in force. Changes are serialised so that versions
    /// are handed out in order (and the weights file has one writer).
    ///
    /// The fast path writes the weights file and publishes; the journal
    /// catches up with the next group commit and nothing waits for it. If
    /// the weights file cannot be written, the change waits for a journal
    /// record instead, whose weights are durable too.
    pub async fn set_canary_weight(&self, canary_weight: CanaryWeight) -> Result<WeightChange, NotDurable> {
        let _one_change_at_a_time = self.inner.weight_change.lock().await;
        let now_unix_ms = unix_now_ms();
        let (weights, changed, generation) = {
            let mut core = self.inner.lock_core();
            match core.aggregate.change_weight(canary_weight, now_unix_ms) {
                Some(weights) => {
                    // The journal must hold the new weights and the reset
                    // since-change counts too, but a lazy commit writes
                    // them (see the `note_pending` below): requesting one
                    // here would only put another fsync on the disk next to
                    // this one.
                    core.generation += 1;
                    (weights, true, core.generation)
                }
                // Nothing new, but an earlier change may not be durable yet
                // (its write failed); finish it so the answer is what
                // filters get.
                None => (core.aggregate.weights(), false, core.generation),
            }
        };
        if changed {
            self.inner.durability.note_pending(generation);
            tracing::info!(
                weights_version = weights.weights.weights_version,
                canary_weight = %canary_weight,
                "weights changed"
            );
        }
        if self.weights().weights.weights_version >= weights.weights.weights_version {
            return Ok(WeightChange { weights, changed });
        }
        match self.inner.write_weights_file(weights).await {
            Ok(()) => self.inner.publish(weights),
            Err(error) => {
                tracing::error!(%error, "cannot write the weights file; waiting for the journal instead");
                // `wait_durable` requests the commit itself.
                self.wait_durable(generation).await?;
            }
        }
        Ok(WeightChange { weights, changed })
    }

    /// Waits until every live worker has applied `target_version` (or a later
    /// one), or until `timeout` after `received_at`. Woken by workers'
    /// applied-version changes and by workers going stale, not by polling.
    pub async fn wait_converged(&self, target_version: u64, received_at: Instant, timeout: Duration) -> WaitOutcome {
        let deadline = received_at + timeout;
        let mut applied_rx = self.inner.applied_tx.subscribe();
        let mut shutdown_rx = self.inner.shutdown_tx.subscribe();
        loop {
            applied_rx.borrow_and_update();
            let now_unix_ms = unix_now_ms();
            let convergence = self.inner.lock_core().aggregate.convergence(target_version, now_unix_ms);
            if convergence.is_confirmed() {
                let propagation_ms = received_at.elapsed().as_secs_f64() * 1_000.0;
                return WaitOutcome::new(convergence, Some(propagation_ms));
            }
            let now = Instant::now();
            if now >= deadline || *shutdown_rx.borrow() {
                return WaitOutcome::new(convergence, None);
            }
            // An unconfirmed worker that goes stale stops holding the wait.
            let wake_at = convergence
                .next_stale_at_unix_ms
                .map(|stale_at| now + Duration::from_millis(stale_at.saturating_sub(now_unix_ms)))
                .map_or(deadline, |stale_at| stale_at.min(deadline));
            tokio::select! {
                _ = applied_rx.changed() => {}
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = shutdown_rx.wait_for(|stopping| *stopping) => {}
            }
        }
    }

    /// The `GET /v1/rollout` document.
    pub fn rollout_view(&self) -> RolloutView {
        let published = self.weights();
        self.inner.lock_core().aggregate.rollout_view(&published, unix_now_ms())
    }

    /// A `GET /v1/workers` page, measured against the published weights.
    pub fn workers_page(&self, request: &PageRequest) -> WorkersPage {
        let published_version = self.weights().weights.weights_version;
        self.inner.lock_core().aggregate.workers_page(request, published_version, unix_now_ms())
    }

    /// The dashboard's series of samples.
    pub fn series(&self) -> &crate::series::SeriesCell {
        &self.inner.series
    }

    /// Cumulative per-version totals and the data plane's convergence on the
    /// published weights: what the series sampler reads.
    pub fn series_reading(&self, now_unix_ms: u64) -> crate::series::Reading {
        let published = self.weights().weights;
        let core = self.inner.lock_core();
        let convergence = core.aggregate.convergence(published.weights_version, now_unix_ms);
        crate::series::Reading {
            at_unix_ms: now_unix_ms,
            weights_version: published.weights_version,
            canary_weight_bp: published.canary_weight.bp(),
            totals: core.aggregate.totals().clone(),
            live_workers: convergence.workers_total,
            converged_workers: convergence.workers_confirmed,
        }
    }

    /// The Prometheus text exposition.
    pub fn render_metrics(&self) -> String {
        let published = self.weights();
        let reports = self.inner.reports.snapshot();
        let now_unix_ms = unix_now_ms();
        let mut snapshot = MetricsSnapshot::capture(&self.inner.lock_core().aggregate, published, reports, now_unix_ms);
        snapshot.rollout = self.inner.controller.metrics(now_unix_ms);
        metrics::render(&snapshot)
    }

    /// Releases held long-polls and convergence waits so that the server can
    /// drain; the persister keeps running until [`AppState::shutdown`].
    pub fn begin_shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
    }

    /// Stops the persister after it has written everything requested so far.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        let persister = self.inner.persister.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(persister) = persister {
            let joined = tokio::task::spawn_blocking(move || persister.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("state persister thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.inner.config)
            .field("weights", &self.weights())
            .finish_non_exhaustive()
    }
}

impl WaitOutcome {
    fn new(convergence: Convergence, propagation_ms: Option<f64>) -> WaitOutcome {
        WaitOutcome {
            confirmed: convergence.is_confirmed(),
            propagation_ms,
            workers_total: convergence.workers_total,
            workers_confirmed: convergence.workers_confirmed,
            unconfirmed: convergence.unconfirmed,
        }
    }
}

/// Milliseconds since the Unix epoch; 0 if the clock is before it.
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis().try_into().unwrap_or(u64::MAX))
}

struct Inner {
    controller: Controller,
    config: Config,
    store: Store,
    /// Behind a `std` mutex because it is written from blocking code; only
    /// weight changes, which `weight_change` serialises, take it.
    weights_file: Arc<Mutex<WeightsFile>>,
    core: Mutex<Core>,
    /// Weights that are on disk and sent to filters.
    published: ArcSwap<WeightsRecord>,
    /// The published weights version, for long-polls to wait on.
    weights_version_tx: watch::Sender<u64>,
    /// Bumped whenever a worker's applied weights version changes, to wake
    /// convergence waiters.
    applied_tx: watch::Sender<u64>,
    durability: Durability,
    shutdown_tx: watch::Sender<bool>,
    weight_change: tokio::sync::Mutex<()>,
    reports: ReportCounters,
    persister: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The dashboard's last 15 minutes, filled by `series::sample`.
    series: crate::series::SeriesCell,
}

struct Core {
    aggregate: Aggregate,
    /// Incremented by every change that must reach disk.
    generation: u64,
    /// Workers whose entry changed since the last journal record: what the
    /// next record carries besides the (small) counters. A list rather than
    /// a set, so that a report pays a push rather than a hash of its key;
    /// the commit sorts and dedupes it (a worker rarely has two reports in
    /// one batch: its filter waits for each acknowledgement).
    changed_workers: Vec<WorkerKey>,
}

impl Inner {
    fn lock_core(&self) -> MutexGuard<'_, Core> {
        // Nothing that runs under the lock can leave the aggregate half
        // updated in a way that matters more than stopping would.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `weights` to the weights file: blocking work of about a
    /// quarter of a millisecond on a local SSD. On the multi-threaded runtime
    /// (the analyzer's) it runs in place, after handing this worker's other
    /// tasks to another thread: the rollback waits for no thread hand-off,
    /// which on a busy machine can cost a scheduling slice each way. Tests'
    /// single-threaded runtimes cannot do that, so there it goes to the
    /// blocking pool.
    async fn write_weights_file(&self, weights: WeightsRecord) -> Result<(), String> {
        let weights_file = Arc::clone(&self.weights_file);
        let write = move || {
            let mut file = weights_file.lock().unwrap_or_else(PoisonError::into_inner);
            file.write(&weights).map_err(|error| format!("{}: {error}", file.path().display()))
        };
        if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            return tokio::task::block_in_place(write);
        }
        match tokio::task::spawn_blocking(write).await {
            Ok(result) => result,
            Err(error) => Err(format!("weights writer task failed: {error}")),
        }
    }

    /// Hands `weights` to filters, unless a newer version already went out:
    /// the weight path and the persister both publish, in either order.
    fn publish(&self, weights: WeightsRecord) {
        let version = weights.weights.weights_version;
        // The watch's lock orders concurrent publishers; the long-polls read
        // `published` after the version they wait for has changed.
        let newer = self.weights_version_tx.send_if_modified(|published_version| {
            if version <= *published_version {
                return false;
            }
            self.published.store(Arc::new(weights));
            *published_version = version;
            true
        });
        if newer {
            tracing::info!(
                weights_version = version,
                canary_weight = %weights.weights.canary_weight,
                "weights published to filters"
            );
        }
    }
}

/// The state directory's recovery: the snapshot, then the journal files
/// from the snapshot's generation on. Returns the durable parts (`None`: a
/// fresh state) and the generation for this process's journal file.
fn recover(
    store: &Store,
    journal_dir: &JournalDir,
    now_unix_ms: u64,
) -> Result<(Option<DurableParts>, u64), StoreError> {
    let (snapshot, snapshot_generation) = match store.load()? {
        Some((parts, generation)) => (Some(parts), generation),
        None => (None, None),
    };
    let list_error = |source| StoreError::JournalIo { path: store.dir().to_owned(), action: "cannot list", source };
    let present = journal_dir.generations().map_err(list_error)?;
    let plan = journal::plan_replay(snapshot_generation, &present)
        .map_err(|message| StoreError::JournalCorrupt { path: store.dir().to_owned(), message })?;
    let mut state = snapshot.map(ReplayState::from);
    for &generation in &plan {
        let path = journal_dir.path(generation);
        let bytes = std::fs::read(&path).map_err(|source| StoreError::JournalIo {
            path: path.clone(),
            action: "cannot read it",
            source,
        })?;
        let scan = journal::scan(&bytes).map_err(|corrupt| StoreError::JournalCorrupt {
            path: path.clone(),
            message: format!("at byte {}: {}", corrupt.offset, corrupt.message),
        })?;
        if scan.generation != generation {
            return Err(StoreError::JournalCorrupt {
                path,
                message: format!("its header says generation {}", scan.generation),
            });
        }
        if scan.valid_bytes < bytes.len() {
            // Never acknowledged: the append that wrote it did not finish.
            tracing::warn!(
                path = %path.display(),
                at_byte = scan.valid_bytes,
                discarded_bytes = bytes.len() - scan.valid_bytes,
                "journal: discarding a torn last record"
            );
        }
        let records = scan.records.len();
        let state = state.get_or_insert_with(|| {
            ReplayState::from(DurableParts {
                weights: WeightsRecord::initial(now_unix_ms),
                totals: Default::default(),
                since_weights_change: Default::default(),
                workers: Vec::new(),
            })
        });
        for record in scan.records {
            state.apply(record);
        }
        tracing::info!(path = %path.display(), records, "journal replayed");
    }
    let newest_present = present.iter().copied().max().unwrap_or(0);
    let next_generation = newest_present.max(snapshot_generation.unwrap_or(0)).saturating_add(1);
    Ok((state.map(DurableParts::from), next_generation))
}

/// How a snapshot task ended: the generation it named, and its result.
type SnapshotOutcome = (u64, Result<(), String>);

/// The persister's own state: the journal being appended to and the
/// snapshot schedule. Owned by [`persist_loop`], so it needs no lock.
struct Persister {
    journal_dir: JournalDir,
    /// `None` after a failed append (the file may end in a partial record)
    /// or a lost writer: the next commit starts a new generation.
    journal: Option<JournalWriter>,
    /// The generation the next new journal file gets.
    next_generation: u64,
    /// When the next snapshot is due; `None` while nothing since the last
    /// one needs it.
    snapshot_at: Option<Instant>,
    snapshot_task: Option<JoinHandle<SnapshotOutcome>>,
}

impl Persister {
    fn new(journal_dir: JournalDir, journal: JournalWriter) -> Persister {
        Persister {
            journal_dir,
            next_generation: journal.generation().saturating_add(1),
            journal: Some(journal),
            snapshot_at: None,
            snapshot_task: None,
        }
    }

    /// Creates the next journal generation's file (blocking: the persister
    /// has its own thread).
    fn new_generation(&mut self) -> Result<JournalWriter, String> {
        let generation = self.next_generation;
        let created = self
            .journal_dir
            .create(generation)
            .map_err(|error| format!("{}: {error}", self.journal_dir.path(generation).display()))?;
        self.next_generation = generation.saturating_add(1);
        Ok(created)
    }

    /// One group commit: appends the record of everything changed since the
    /// previous one, then publishes its weights and marks its generation
    /// durable.
    fn commit(&mut self, inner: &Inner) -> Result<(), String> {
        let mut journal = match self.journal.take() {
            Some(journal) => journal,
            None => self.new_generation()?,
        };
        let (generation, record, changed) = {
            let mut core = inner.lock_core();
            let mut changed = std::mem::take(&mut core.changed_workers);
            changed.sort_unstable();
            changed.dedup();
            let record = CommitRecord::capture(&core.aggregate, &changed);
            (core.generation, record, changed)
        };
        let weights = record.weights;
        // In place: this thread does nothing else, and a hand-off to a pool
        // thread and back costs two wake-ups per commit.
        let appended = journal.append(&record);
        let failure = match appended {
            Ok(()) => {
                let journal_bytes = journal.len_bytes();
                self.journal = Some(journal);
                let now = Instant::now();
                let due = if journal_bytes >= SNAPSHOT_JOURNAL_BYTES { now } else { now + SNAPSHOT_INTERVAL };
                self.snapshot_at = Some(self.snapshot_at.map_or(due, |at| at.min(due)));
                inner.publish(weights);
                inner.durability.mark_durable(generation);
                return Ok(());
            }
            // The file may now end in a partial record: leave it (a torn
            // tail is discarded at recovery) and start a new generation.
            Err(error) => error.to_string(),
        };
        // The record never reached disk: its workers go into the next one.
        // Deduped again, so that during a long outage of the disk the list
        // stays near the worker table's size instead of growing by a key
        // per report.
        let mut core = inner.lock_core();
        core.changed_workers.extend(changed);
        core.changed_workers.sort_unstable();
        core.changed_workers.dedup();
        Err(failure)
    }

    fn snapshot_due(&self) -> bool {
        self.snapshot_task.is_none() && self.snapshot_at.is_some_and(|at| at <= Instant::now())
    }

    /// Starts a snapshot: a new journal generation (unless the current one
    /// has no record yet), a copy of the state taken at that point, and a
    /// background task that writes it and then deletes the older journal
    /// files. Commits go on meanwhile, into the new generation.
    fn start_snapshot(&mut self, inner: &Inner) -> Result<(), String> {
        let journal = match self.journal.take() {
            Some(journal) if journal.len_bytes() <= journal::HEADER_BYTES as u64 => journal,
            // The old writer (if any) is closed; its file stays for replay
            // until the snapshot is durable.
            _ => self.new_generation()?,
        };
        let generation = journal.generation();
        self.journal = Some(journal);
        // No commit runs between the new generation and this copy (this task
        // is the only committer), so the generation's records hold only
        // changes after it; changes not yet committed are in both, and
        // replaying them again is harmless (absolute counters, upserts).
        let file = StateFile::capture(&inner.lock_core().aggregate, generation);
        let store = inner.store.clone();
        let journal_dir = self.journal_dir.clone();
        self.snapshot_at = None;
        self.snapshot_task = Some(tokio::task::spawn_blocking(move || {
            let result = store.save(&file).map_err(|error| error.to_string());
            if result.is_ok() {
                journal_dir.remove_before(generation);
            }
            (generation, result)
        }));
        Ok(())
    }

    /// Handles a finished snapshot task.
    fn snapshot_finished(&mut self, outcome: Result<SnapshotOutcome, tokio::task::JoinError>) {
        self.snapshot_task = None;
        let error = match outcome {
            Ok((generation, Ok(()))) => {
                tracing::debug!(journal_generation = generation, "snapshot written");
                return;
            }
            Ok((_, Err(error))) => error,
            Err(error) => format!("snapshot writer task failed: {error}"),
        };
        tracing::error!(%error, "cannot write the snapshot; the journal keeps growing until one succeeds");
        let retry_at = Instant::now() + PERSIST_RETRY_BACKOFF;
        self.snapshot_at = Some(self.snapshot_at.map_or(retry_at, |at| at.max(retry_at)));
    }

    /// Between commits: collects a finished snapshot and starts a due one.
    async fn housekeeping(&mut self, inner: &Inner) {
        if let Some(task) = self.snapshot_task.as_mut()
            && task.is_finished()
        {
            let outcome = task.await;
            self.snapshot_finished(outcome);
        }
        if self.snapshot_due()
            && let Err(error) = self.start_snapshot(inner)
        {
            tracing::error!(%error, "cannot start a snapshot; retrying");
            self.snapshot_at = Some(Instant::now() + PERSIST_RETRY_BACKOFF);
        }
    }

    /// At shutdown, once every commit is durable: a last snapshot, so that
    /// the next start has no journal to replay. Best effort: the journal
    /// already holds everything.
    async fn finish(&mut self, inner: &Inner) {
        if let Some(task) = self.snapshot_task.take() {
            self.snapshot_finished(task.await);
        }
        match self.start_snapshot(inner) {
            Ok(()) => {
                if let Some(task) = self.snapshot_task.take() {
                    self.snapshot_finished(task.await);
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot write the snapshot at shutdown; the journal holds everything")
            }
        }
    }
}

/// Runs [`persist_loop`] on a thread of its own, with a single-threaded
/// runtime. On the shared runtime the loop queued behind every ready request
/// task: under load a commit's wake-up waited up to tens of milliseconds for
/// a worker, and every report waiting for durability waited with it.
fn spawn_persister(inner: Arc<Inner>, persister: Persister) -> Result<std::thread::JoinHandle<()>, StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|source| StoreError::PersisterThread { source })?;
    // If the caller's runtime ends without `AppState::shutdown` (tests do
    // that), its tasks are dropped, this guard with them, and the persister
    // stops instead of outliving it.
    let guard = ShutdownOnDrop(Arc::downgrade(&inner));
    tokio::spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await
    });
    std::thread::Builder::new()
        .name("canary-persister".to_owned())
        .spawn(move || runtime.block_on(persist_loop(inner, persister)))
        .map_err(|source| StoreError::PersisterThread { source })
}

struct ShutdownOnDrop(std::sync::Weak<Inner>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.shutdown_tx.send_replace(true);
        }
    }
}

/// The one writer of the journal and the snapshots: whenever a requested
/// generation is ahead of the durable one, append a record at once; when
/// changes are only pending, append one [`LAZY_COMMIT_DELAY`] after the
/// first of them; between commits, take a due snapshot. Exits on shutdown
/// once everything in memory is on disk.
async fn persist_loop(inner: Arc<Inner>, mut persister: Persister) {
    let mut shutdown_rx = inner.shutdown_tx.subscribe();
    let mut stopping = false;
    // When the pending changes must be committed, though nobody asked.
    let mut lazy_due: Option<Instant> = None;
    loop {
        let mut failures = 0u32;
        loop {
            persister.housekeeping(&inner).await;
            let targets = inner.durability.targets();
            let lazy_now = stopping || lazy_due.is_some_and(|due| due <= Instant::now());
            let target = if lazy_now { targets.pending } else { targets.requested };
            if targets.durable >= target {
                break;
            }
            match persister.commit(&inner) {
                // A commit takes everything in memory, pending or requested.
                Ok(()) => lazy_due = None,
                Err(error) => {
                    failures += 1;
                    tracing::error!(%error, failures, "cannot persist the analyzer state; retrying");
                    inner.durability.mark_failed(error);
                    if stopping && failures >= SHUTDOWN_WRITE_ATTEMPTS {
                        tracing::error!("giving up on the journal at shutdown; unacknowledged changes are lost");
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(PERSIST_RETRY_BACKOFF) => {}
                        _ = shutdown_rx.wait_for(|stopping| *stopping), if !stopping => stopping = true,
                    }
                }
            }
        }
        if stopping {
            persister.finish(&inner).await;
            tracing::info!(path = %inner.store.path().display(), "state flushed");
            return;
        }
        // Idle, or only pending changes: wake for a request, a new pending
        // change, shutdown, the lazy commit, a finished snapshot, or a due
        // one.
        let targets = inner.durability.targets();
        if targets.pending > targets.durable {
            lazy_due.get_or_insert_with(|| Instant::now() + LAZY_COMMIT_DELAY);
        }
        let snapshot_wake = persister.snapshot_at.filter(|_| persister.snapshot_task.is_none());
        let wake_at = snapshot_wake.into_iter().chain(lazy_due).min();
        let woke = tokio::select! {
            _ = inner.durability.notified() => Wake::Stop(false),
            _ = shutdown_rx.wait_for(|stopping| *stopping) => Wake::Stop(true),
            _ = sleep_until_or_never(wake_at) => Wake::Stop(false),
            outcome = wait_task(persister.snapshot_task.as_mut()) => Wake::Snapshot(outcome),
        };
        stopping = match woke {
            Wake::Stop(stop) => stop,
            Wake::Snapshot(outcome) => {
                persister.snapshot_finished(outcome);
                false
            }
        };
    }
}

enum Wake {
    Stop(bool),
    Snapshot(Result<SnapshotOutcome, tokio::task::JoinError>),
}

async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn wait_task(task: Option<&mut JoinHandle<SnapshotOutcome>>) -> Result<SnapshotOutcome, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}
