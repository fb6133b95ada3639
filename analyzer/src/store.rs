//! The state file and the group-commit counters around it.
//!
//! The state file (`state.json` in `--state-dir`) is a snapshot of what must
//! survive a `kill -9`: the weights, per-version totals, the since-change
//! aggregate and the worker table that deduplicates re-sent reports. Group
//! commits do not rewrite it (at 40k workers it is megabytes): they append to
//! the journal ([`crate::journal`]), and the snapshot is taken every few
//! seconds off the commit path and names the journal generation to replay
//! after it. It is JSON so that an operator can read it in an incident.
//! Its weights may lag: a weight change is made durable in the weights file
//! ([`crate::weights_file`]) without waiting for this one, which catches up
//! with the next group commit, and at startup the newer of the two wins.
//!
//! Writes are atomic: the new state goes to a temporary file that is fsynced,
//! renamed over the old one, and then the directory is fsynced so the rename
//! itself survives a crash. A reader therefore sees the old state or the new
//! one, never a mix.
//!
//! Group commit: every change bumps a generation number and asks for it to be
//! persisted ([`Durability::request`]); one persister appends a journal
//! record of everything changed whenever the requested generation is ahead of
//! the durable one and then publishes the generation it covers
//! ([`Durability::mark_durable`]). Callers wait for `durable >= their
//! generation`, so one fsync acknowledges every change that came in while the
//! previous one was being written.

use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use canary_protocol::latency::BUCKET_COUNT;
use canary_protocol::{CanaryWeight, LatencyHistogram, SparseLatency, StatusCounts, Weights};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use crate::aggregate::{Aggregate, DurableParts, VersionCounts, WeightsRecord, WorkerKey, WorkerState};

/// Name of the state file inside the state directory.
pub const STATE_FILE_NAME: &str = "state.json";
/// Version of the state file layout; bumped on incompatible changes. Version
/// 2 added `journal_generation`; version 1 files (written before the journal
/// existed) are still read. An older build refuses a version 2 file rather
/// than ignore the journal and lose its counts.
pub const STATE_FORMAT_VERSION: u32 = 2;

/// Why the state could not be loaded or saved. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state dir {path}: cannot create it: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("state file {path}: cannot read it: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("state file {path}: corrupt: {message} (restore it from a backup or move it away to start afresh)")]
    Corrupt { path: PathBuf, message: String },
    #[error("state file {path}: cannot write it: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("journal {path}: {action}: {source}")]
    JournalIo { path: PathBuf, action: &'static str, source: std::io::Error },
    #[error(
        "journal {path}: corrupt: {message} (it may hold acknowledged counts: restore the state dir from a backup; \
         moving the file away loses what it holds)"
    )]
    JournalCorrupt { path: PathBuf, message: String },
    #[error("weights file {path}: {action}: {source}")]
    WeightsIo { path: PathBuf, action: &'static str, source: std::io::Error },
    #[error(
        "weights file {path}: corrupt: {message} (move it away to fall back to the weights in {STATE_FILE_NAME}, \
         which may be older: check the canary weight before sending traffic)"
    )]
    WeightsCorrupt { path: PathBuf, message: String },
    #[error("cannot start the state persister thread: {source}")]
    PersisterThread { source: std::io::Error },
}

/// The state directory and its file.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
    tmp_path: PathBuf,
}

impl Store {
    /// Opens the state directory, creating it if needed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir { path: dir.to_owned(), source })?;
        Ok(Store {
            dir: dir.to_owned(),
            path: dir.join(STATE_FILE_NAME),
            tmp_path: dir.join(format!("{STATE_FILE_NAME}.tmp")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or `None` when there is no state file yet. A file
    /// that exists but cannot be understood is an error, never a silent
    /// reset: starting afresh would send every filter back to 0% canary and
    /// lose the totals.
    /// With the parts comes the journal generation the snapshot was taken at
    /// (`None` for a version 1 file).
    pub fn load(&self) -> Result<Option<(DurableParts, Option<u64>)>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path: self.path.clone(), source }),
        };
        let corrupt = |message: String| StoreError::Corrupt { path: self.path.clone(), message };
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
        let journal_generation = file.journal_generation;
        file.into_parts().map(|parts| Some((parts, journal_generation))).map_err(corrupt)
    }

    /// Replaces the state file atomically (see the module docs). Blocking.
    pub fn save(&self, file: &StateFile) -> Result<(), StoreError> {
        let write_error = |source| StoreError::Write { path: self.path.clone(), source };
        let bytes = serde_json::to_vec(file).map_err(|error| write_error(std::io::Error::other(error)))?;
        write_atomically(&self.dir, &self.path, &self.tmp_path, &bytes).map_err(write_error)
    }

    /// The state directory, where sibling files (the rollout's) live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Replaces `path` (inside `dir`) with `bytes` so that a crash at any moment
/// leaves the old content or the new, never a mix: write `tmp_path`, fsync,
/// rename over `path`, fsync the directory. Blocking.
pub fn write_atomically(dir: &Path, path: &Path, tmp_path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = File::create(tmp_path)?;
    tmp.write_all(bytes)?;
    tmp.sync_all()?;
    drop(tmp);
    std::fs::rename(tmp_path, path)?;
    // The rename is only durable once the directory entry is.
    File::open(dir).and_then(|dir| dir.sync_all())
}

/// The content of `path`, or `None` when it does not exist.
pub fn read_if_exists(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// The state file's JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub format_version: u32,
    /// The journal generation started when this snapshot was taken: replay
    /// begins with its file. Absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_generation: Option<u64>,
    pub weights: WeightsDoc,
    pub totals: PerVersionDoc,
    pub since_weights_change: PerVersionDoc,
    pub workers: Vec<WorkerDoc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsDoc {
    pub weights_version: u64,
    pub canary_weight_bp: u64,
    pub changed_at_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerVersionDoc {
    pub stable: CountsDoc,
    pub canary: CountsDoc,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountsDoc {
    pub requests: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub no_response: u64,
    /// Non-zero latency buckets as `[index, count]` pairs.
    pub latency_us: Vec<(u32, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerDoc {
    pub proxy_id: String,
    /// 16 hex digits, as in the API.
    pub worker_id: String,
    pub last_seq: u64,
    pub applied_weights_version: u64,
    pub last_seen_unix_ms: u64,
}

impl StateFile {
    /// The document for the aggregate's current state, as a snapshot taken
    /// when journal generation `journal_generation` started.
    pub fn capture(aggregate: &Aggregate, journal_generation: u64) -> StateFile {
        let record = aggregate.weights();
        let per_version = |counts: &[VersionCounts; 2]| PerVersionDoc {
            stable: CountsDoc::from(&counts[0]),
            canary: CountsDoc::from(&counts[1]),
        };
        StateFile {
            format_version: STATE_FORMAT_VERSION,
            journal_generation: Some(journal_generation),
            weights: WeightsDoc {
                weights_version: record.weights.weights_version,
                canary_weight_bp: u64::from(record.weights.canary_weight.bp()),
                changed_at_unix_ms: record.changed_at_unix_ms,
            },
            totals: per_version(aggregate.totals()),
            since_weights_change: per_version(aggregate.since_weights_change()),
            workers: aggregate
                .worker_table()
                .map(|(key, worker)| WorkerDoc {
                    proxy_id: key.proxy_id.clone(),
                    worker_id: crate::aggregate::format_worker_id(key.worker_id),
                    last_seq: worker.last_seq,
                    applied_weights_version: worker.applied_weights_version,
                    last_seen_unix_ms: worker.last_seen_unix_ms,
                })
                .collect(),
        }
    }

    /// Validates the document and turns it back into aggregate parts; the
    /// error names the offending field.
    pub fn into_parts(self) -> Result<DurableParts, String> {
        let expects_journal = match self.format_version {
            1 => false,
            STATE_FORMAT_VERSION => true,
            other => {
                return Err(format!(
                    "format_version is {other}, this build reads versions 1 and {STATE_FORMAT_VERSION}"
                ));
            }
        };
        if expects_journal != self.journal_generation.is_some() {
            return Err(format!(
                "journal_generation must be present in format_version {STATE_FORMAT_VERSION} and only there"
            ));
        }
        let canary_weight = CanaryWeight::from_bp(self.weights.canary_weight_bp)
            .map_err(|error| format!("weights.canary_weight_bp: {error}"))?;
        let weights = WeightsRecord {
            weights: Weights { weights_version: self.weights.weights_version, canary_weight },
            changed_at_unix_ms: self.weights.changed_at_unix_ms,
        };
        let per_version = |doc: PerVersionDoc, what: &str| -> Result<[VersionCounts; 2], String> {
            Ok([doc.stable.into_counts(&format!("{what}.stable"))?, doc.canary.into_counts(&format!("{what}.canary"))?])
        };
        let totals = per_version(self.totals, "totals")?;
        let since_weights_change = per_version(self.since_weights_change, "since_weights_change")?;
        let mut workers = Vec::with_capacity(self.workers.len());
        for (position, doc) in self.workers.into_iter().enumerate() {
            let worker_id = u64::from_str_radix(&doc.worker_id, 16)
                .map_err(|_| format!("workers[{position}].worker_id {:?} is not 16 hex digits", doc.worker_id))?;
            let key = WorkerKey { proxy_id: doc.proxy_id, worker_id };
            let worker = WorkerState {
                last_seq: doc.last_seq,
                applied_weights_version: doc.applied_weights_version,
                last_seen_unix_ms: doc.last_seen_unix_ms,
            };
            workers.push((key, worker));
        }
        Ok(DurableParts { weights, totals, since_weights_change, workers })
    }
}

impl From<&VersionCounts> for CountsDoc {
    fn from(counts: &VersionCounts) -> Self {
        let status = counts.status;
        CountsDoc {
            requests: counts.requests,
            status_2xx: status.status_2xx,
            status_3xx: status.status_3xx,
            status_4xx: status.status_4xx,
            status_5xx: status.status_5xx,
            no_response: status.no_response,
            latency_us: counts.latency_us.nonzero_buckets().collect(),
        }
    }
}

impl CountsDoc {
    fn into_counts(self, what: &str) -> Result<VersionCounts, String> {
        let mut previous_index = None;
        for &(index, _) in &self.latency_us {
            if index as usize >= BUCKET_COUNT || previous_index.is_some_and(|previous| index <= previous) {
                return Err(format!(
                    "{what}.latency_us: bucket index {index} is past the layout or out of order (0..{BUCKET_COUNT}, increasing)"
                ));
            }
            previous_index = Some(index);
        }
        let mut latency_us = LatencyHistogram::new();
        latency_us.merge_sparse(&SparseLatency { buckets: self.latency_us });
        Ok(VersionCounts {
            requests: self.requests,
            status: StatusCounts {
                status_2xx: self.status_2xx,
                status_3xx: self.status_3xx,
                status_4xx: self.status_4xx,
                status_5xx: self.status_5xx,
                no_response: self.no_response,
            },
            latency_us,
        })
    }
}

/// Where group commit stands: the newest generation on disk, and the last
/// write error while the newest requested one is not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurableStatus {
    pub generation: u64,
    pub last_error: Option<String>,
}

/// The state could not be made durable in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state not yet durable after {waited_ms} ms{}", last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct NotDurable {
    pub waited_ms: u64,
    pub last_error: Option<String>,
}

/// The generation counters of group commit, and the callers waiting for the
/// durable one to reach theirs.
///
/// Two kinds of change reach the persister. A *request* (a caller waits for
/// it now) is committed at once. A change that is only *pending* (a report
/// still held by its long-poll, a weight change whose own file is already
/// durable) is committed within [`LAZY_COMMIT_DELAY`] of the first such
/// change, so one `fdatasync` covers every report of that span instead of a
/// handful.
///
/// Waiters are kept by generation and each is woken once, when a commit
/// covers it. A broadcast (a `watch` on the durable generation) woke every
/// waiter on every commit, and under load many of them were waiting for the
/// commit after: each such task was polled through the HTTP stack for
/// nothing.
#[derive(Debug)]
pub struct Durability {
    /// Wakes the persister: a commit is requested, or a change became
    /// pending while nothing else was.
    wake: Notify,
    durable: Mutex<DurableState>,
}

/// How long a change may stay pending before the persister commits it
/// unasked. Well below the filter's shortest report interval (100 ms), so a
/// report held for its whole interval is durable by the time its hold ends;
/// long enough to gather tens to hundreds of reports per commit at 1 Hz
/// per worker.
pub const LAZY_COMMIT_DELAY: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
struct DurableState {
    status: DurableStatus,
    /// Highest generation a caller waits for now.
    requested: u64,
    /// Highest generation changed in memory (at least `requested`).
    pending: u64,
    /// Lowest generation first.
    waiters: BinaryHeap<Waiter>,
    /// Waiters left after the last sweep of abandoned ones.
    waiters_after_sweep: usize,
}

/// What the persister compares: the generation on disk, the one a caller
/// waits for, and the newest in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub durable: u64,
    pub requested: u64,
    pub pending: u64,
}

/// Below this many waiters, abandoned ones (timed out, or their connection
/// gone) are left for their commit to drop.
const WAITERS_SWEEP_FLOOR: usize = 4_096;

#[derive(Debug)]
struct Waiter {
    generation: u64,
    durable_tx: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.generation == other.generation
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    /// Reversed, so that the max-heap holds the lowest generation on top.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.generation.cmp(&self.generation)
    }
}

/// A registered wait for one generation: see [`Durability::subscribe`].
#[derive(Debug)]
pub struct DurableWait {
    generation: u64,
    subscribed_at: tokio::time::Instant,
    /// `None` when the generation was durable already.
    durable_rx: Option<oneshot::Receiver<()>>,
}

impl Durability {
    /// Counters for a state that is durable up to `generation`.
    pub fn new(generation: u64) -> Durability {
        Durability {
            wake: Notify::new(),
            durable: Mutex::new(DurableState {
                status: DurableStatus { generation, last_error: None },
                requested: generation,
                pending: generation,
                ..DurableState::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DurableState> {
        // Every update under this lock is a single assignment or a heap
        // operation, so a panic elsewhere cannot leave it half done.
        self.durable.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that the state up to `generation` changed in memory: the
    /// persister commits it within [`LAZY_COMMIT_DELAY`] unless a request
    /// comes first. Wakes the persister only when it had nothing to do, so
    /// a burst of reports costs it one wake-up.
    pub fn note_pending(&self, generation: u64) {
        let idle = {
            let mut state = self.lock();
            let idle = state.pending <= state.status.generation;
            state.pending = state.pending.max(generation);
            idle && generation > state.status.generation
        };
        if idle {
            self.wake.notify_one();
        }
    }

    /// Asks the persister to write at least `generation` now.
    pub fn request(&self, generation: u64) {
        let newer = {
            let mut state = self.lock();
            state.pending = state.pending.max(generation);
            let newer = generation > state.requested && generation > state.status.generation;
            state.requested = state.requested.max(generation);
            newer
        };
        if newer {
            self.wake.notify_one();
        }
    }

    /// What the persister waits on. A wake-up that comes while it commits
    /// is kept (one permit), so none is lost between its check and its wait.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    pub fn targets(&self) -> Targets {
        let state = self.lock();
        Targets { durable: state.status.generation, requested: state.requested, pending: state.pending }
    }

    /// Registers for the commit that covers `generation`, without asking
    /// for one: a caller that can wait (a held long-poll) lets the lazy
    /// commit cover it, and calls [`Durability::finish`] when it can wait
    /// no longer.
    pub fn subscribe(&self, generation: u64) -> DurableWait {
        let subscribed_at = tokio::time::Instant::now();
        let mut state = self.lock();
        if state.status.generation >= generation {
            return DurableWait { generation, subscribed_at, durable_rx: None };
        }
        let (durable_tx, durable_rx) = oneshot::channel();
        state.waiters.push(Waiter { generation, durable_tx });
        // While the disk is out, waiters time out faster than commits
        // drop them: sweep the abandoned ones whenever the heap has
        // doubled, which keeps it near the number still waiting.
        if state.waiters.len() >= WAITERS_SWEEP_FLOOR.max(2 * state.waiters_after_sweep) {
            state.waiters.retain(|waiter| !waiter.durable_tx.is_closed());
            state.waiters_after_sweep = state.waiters.len();
        }
        DurableWait { generation, subscribed_at, durable_rx: Some(durable_rx) }
    }

    /// Completes a [`Durability::subscribe`]: requests its generation now if
    /// it is not durable yet, and waits for it until `deadline` (a deadline
    /// already past still takes a commit that has happened).
    pub async fn finish(&self, wait: DurableWait, deadline: tokio::time::Instant) -> Result<(), NotDurable> {
        let Some(mut durable_rx) = wait.durable_rx else {
            return Ok(());
        };
        // Covered while the caller held: no commit to ask for.
        if durable_rx.try_recv().is_ok() {
            return Ok(());
        }
        self.request(wait.generation);
        match tokio::time::timeout_at(deadline, durable_rx).await {
            Ok(Ok(())) => Ok(()),
            // The sender lives as long as `self` unless a commit covered
            // this generation, so only the timeout remains.
            _ => Err(NotDurable {
                waited_ms: wait.subscribed_at.elapsed().as_millis().try_into().unwrap_or(u64::MAX),
                last_error: self.lock().status.last_error.clone(),
            }),
        }
    }

    /// Called by the persister once `generation` is on disk: wakes the
    /// waiters it covers, and only those.
    pub fn mark_durable(&self, generation: u64) {
        let mut state = self.lock();
        state.status.generation = state.status.generation.max(generation);
        state.status.last_error = None;
        let durable = state.status.generation;
        while state.waiters.peek().is_some_and(|waiter| waiter.generation <= durable) {
            if let Some(waiter) = state.waiters.pop() {
                // A waiter that gave up has dropped its receiver: nothing to do.
                let _ = waiter.durable_tx.send(());
            }
        }
    }

    /// Called by the persister when a write failed; it will retry.
    pub fn mark_failed(&self, error: String) {
        self.lock().status.last_error = Some(error);
    }

    /// Requests `generation` now and waits until it is on disk, at most
    /// `timeout`.
    pub async fn wait(&self, generation: u64, timeout: Duration) -> Result<(), NotDurable> {
        let wait = self.subscribe(generation);
        self.finish(wait, tokio::time::Instant::now() + timeout).await
    }

    /// Callers waiting for a commit, including any that gave up since the
    /// last sweep.
    #[cfg(test)]
    fn waiters(&self) -> usize {
        self.lock().waiters.len()
    }
}

#[cfg(test)]
mod tests {
    use canary_protocol::{Report, ReportHeader, StatusClass, VersionStats};

    use super::*;
    use crate::aggregate::AggregateSettings;

    const SETTINGS: AggregateSettings = AggregateSettings { window_seconds: 60, worker_stale_after_ms: 5_000 };

    fn busy_aggregate() -> Aggregate {
        let mut aggregate = Aggregate::new(SETTINGS, 1_000);
        let mut stable = VersionStats::default();
        let mut canary = VersionStats::default();
        for latency_us in [90, 1_000, 25_000, 3_000_000] {
            stable.record(StatusClass::Success, latency_us);
            canary.record(StatusClass::ServerError, latency_us * 2);
        }
        let header = |seq, weights_version| ReportHeader {
            proxy_id: "envoy-a".into(),
            worker_id: u64::MAX,
            seq,
            weights_version,
            counts_weights_version: weights_version,
            max_hold_ms: 1_000,
        };
        let report = |seq, weights_version| Report {
            header: header(seq, weights_version),
            versions: [stable.to_delta(), canary.to_delta()],
        };
        aggregate.ingest(&report(1, 1), 2_000);
        aggregate.change_weight(CanaryWeight::from_bp(1_234).expect("valid"), 3_000);
        aggregate.ingest(&report(2, 2), 4_000);
        aggregate
    }

    #[test]
    fn save_then_load_restores_every_durable_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("nested/state")).expect("creates the directory");
        assert!(store.load().expect("no file yet").is_none(), "a missing file means fresh state");

        let aggregate = busy_aggregate();
        let saved = StateFile::capture(&aggregate, 1);
        store.save(&saved).expect("save");
        let (parts, journal_generation) = store.load().expect("load").expect("a file now");
        assert_eq!(journal_generation, Some(1));
        let restored = Aggregate::restore(SETTINGS, 5_000, parts);
        assert_eq!(StateFile::capture(&restored, 1), saved);
        assert_eq!(restored.weights(), aggregate.weights());
        assert_eq!(restored.totals()[1].latency_us.counts(), aggregate.totals()[1].latency_us.counts());
        assert_eq!(restored.totals()[0].requests, 8);
        assert_eq!(restored.since_weights_change()[0].requests, 4);
        assert!(!store.tmp_path.exists(), "the temporary file was renamed into place");
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_file_and_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let valid = serde_json::to_value(StateFile::capture(&busy_aggregate(), 1)).expect("json");
        let check = |bytes: Vec<u8>, problem: &str| {
            std::fs::write(store.path(), &bytes).expect("write");
            let message = store.load().expect_err("must be refused").to_string();
            assert!(message.contains(&store.path().display().to_string()), "{message}");
            assert!(message.contains(problem), "{message} should mention {problem}");
        };
        check(b"{\"format_version\": 1, \"weig".to_vec(), "EOF");
        check(Vec::new(), "EOF");
        let mut wrong = valid.clone();
        wrong["weights"]["canary_weight_bp"] = 10_001.into();
        check(serde_json::to_vec(&wrong).expect("json"), "weights.canary_weight_bp");
        let mut wrong = valid.clone();
        wrong["totals"]["canary"]["latency_us"] = serde_json::json!([[5, 1], [3, 1]]);
        check(serde_json::to_vec(&wrong).expect("json"), "totals.canary.latency_us");
        let mut wrong = valid.clone();
        wrong["workers"][0]["worker_id"] = "xyz".into();
        check(serde_json::to_vec(&wrong).expect("json"), "workers[0].worker_id");
        let mut wrong = valid;
        wrong["format_version"] = 3.into();
        check(serde_json::to_vec(&wrong).expect("json"), "format_version");
    }

    #[test]
    fn a_version_1_file_loads_without_a_journal_generation_and_version_2_needs_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut document = serde_json::to_value(StateFile::capture(&busy_aggregate(), 4)).expect("json");
        assert_eq!(document["journal_generation"], 4);
        // As written before the journal existed.
        document["format_version"] = 1.into();
        document.as_object_mut().expect("object").remove("journal_generation");
        std::fs::write(store.path(), serde_json::to_vec(&document).expect("json")).expect("write");
        let (parts, journal_generation) = store.load().expect("a version 1 file loads").expect("present");
        assert_eq!(journal_generation, None);
        assert_eq!(parts.totals[0].requests, 8);
        document["format_version"] = STATE_FORMAT_VERSION.into();
        std::fs::write(store.path(), serde_json::to_vec(&document).expect("json")).expect("write");
        let message = store.load().expect_err("version 2 names its journal").to_string();
        assert!(message.contains("journal_generation"), "{message}");
    }

    #[tokio::test]
    async fn waiters_are_released_by_the_generation_they_wait_for() {
        let durability = std::sync::Arc::new(Durability::new(0));
        durability.request(2);
        let waiter = {
            let durability = durability.clone();
            tokio::spawn(async move { durability.wait(2, Duration::from_secs(5)).await })
        };
        durability.mark_durable(1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "generation 1 does not make generation 2 durable");
        durability.mark_durable(2);
        assert!(waiter.await.expect("joins").is_ok());

        durability.mark_failed("disk full".into());
        let error = durability.wait(3, Duration::from_millis(10)).await.expect_err("nothing wrote generation 3");
        assert_eq!(error.last_error.as_deref(), Some("disk full"));
        assert!(error.to_string().contains("disk full"), "{error}");
    }

    #[tokio::test]
    async fn a_commit_wakes_the_waiters_it_covers_in_any_order_and_no_others() {
        let durability = std::sync::Arc::new(Durability::new(0));
        // Registered out of generation order, as tasks on several threads do.
        let waiters: Vec<_> = [5u64, 2, 9, 1, 5, 7]
            .into_iter()
            .map(|generation| {
                let durability = durability.clone();
                (generation, tokio::spawn(async move { durability.wait(generation, Duration::from_secs(5)).await }))
            })
            .collect();
        while durability.waiters() < waiters.len() {
            tokio::task::yield_now().await;
        }
        durability.mark_durable(5);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        for (generation, waiter) in &waiters {
            assert_eq!(waiter.is_finished(), *generation <= 5, "generation {generation} after a commit of 5");
        }
        assert_eq!(durability.waiters(), 2, "7 and 9 still wait");
        assert!(durability.wait(4, Duration::from_secs(5)).await.is_ok(), "already durable: no wait");
        durability.mark_durable(9);
        for (generation, waiter) in waiters {
            assert!(waiter.await.expect("joins").is_ok(), "generation {generation}");
        }
        assert_eq!(durability.waiters(), 0);
    }

    #[tokio::test]
    async fn pending_changes_wake_an_idle_persister_once_and_requests_wake_it_always() {
        let durability = Durability::new(0);
        let woken = |durability: &Durability| {
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            std::pin::pin!(durability.notified()).poll(&mut context).is_ready()
        };
        assert!(!woken(&durability), "nothing to do");
        durability.note_pending(1);
        assert!(woken(&durability), "the first pending change arms the lazy commit");
        durability.note_pending(2);
        assert!(!woken(&durability), "already armed: a burst of reports costs one wake-up");
        assert_eq!(durability.targets(), Targets { durable: 0, requested: 0, pending: 2 });
        durability.request(2);
        assert!(woken(&durability), "a request cuts the lazy delay short");
        durability.request(1);
        assert!(!woken(&durability), "an older request adds nothing");
        durability.mark_durable(2);
        durability.note_pending(3);
        assert!(woken(&durability), "idle again after the commit");
        assert_eq!(durability.targets(), Targets { durable: 2, requested: 2, pending: 3 });
    }

    #[tokio::test]
    async fn a_subscribed_wait_asks_for_a_commit_only_when_it_finishes_uncovered() {
        let durability = Durability::new(0);
        let past = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(1)).await;

        durability.note_pending(2);
        let held = durability.subscribe(2);
        assert_eq!(durability.targets().requested, 0, "subscribing asks for nothing");
        durability.mark_durable(2);
        durability.finish(held, past).await.expect("covered by the lazy commit, even past its deadline");
        assert_eq!(durability.targets().requested, 0, "covered: no commit asked for");

        durability.note_pending(3);
        let cut_short = durability.subscribe(3);
        let error = durability.finish(cut_short, past).await.expect_err("nothing wrote 3");
        assert_eq!(durability.targets().requested, 3, "finishing uncovered asks for the commit");
        assert!(error.to_string().contains("not yet durable"), "{error}");
    }

    #[tokio::test]
    async fn abandoned_waiters_are_swept_while_nothing_commits() {
        let durability = Durability::new(0);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        for generation in 1..=5 * WAITERS_SWEEP_FLOOR as u64 {
            durability.request(generation);
            // Polled once (so registered), then dropped, as a request whose
            // client went away does.
            let mut wait = std::pin::pin!(durability.wait(generation, Duration::from_secs(60)));
            assert!(wait.as_mut().poll(&mut context).is_pending(), "the disk is out");
        }
        // Five floors' worth of abandoned waiters registered; sweeps keep the
        // heap below twice the floor.
        assert!(durability.waiters() < 2 * WAITERS_SWEEP_FLOOR, "{} waiters kept", durability.waiters());
    }
}
