//! What the analyzer knows about the data plane, as plain data.
//!
//! [`Aggregate`] folds decoded reports into per-version totals, a sliding
//! window and a "since the weights last changed" aggregate, and keeps the
//! worker table that deduplicates re-sent reports and tracks which weights
//! every worker has applied. It reads no clock and touches no socket: time is
//! an argument (`now_unix_ms`), so every rule here is tested with tables.
//!
//! Rules:
//! - A report whose seq is at most the worker's last ingested seq is a
//!   duplicate (a re-send after a lost acknowledgement): its counts are not
//!   added again. Either way the worker's applied weights version and
//!   last-seen time are recorded.
//! - Counts go to the since-change aggregate only when the report was routed
//!   under the current weights version, so traffic split under old weights
//!   does not blur the comparison after a change.
//! - A worker is live while it was seen within `worker_stale_after_ms`, and
//!   converged when it has applied the current weights version. Workers
//!   silent for [`FORGET_WORKER_AFTER_MS`] are forgotten, which bounds the
//!   table; a re-send after that long would be counted again, but a filter
//!   retries within a second, so such a worker is gone.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::ops::Bound;

use canary_protocol::report::MAX_PROXY_ID_LEN;
use canary_protocol::{CanaryWeight, LatencyHistogram, Report, StatusCounts, Version, VersionDelta, Weights};
use serde::Serialize;

/// Silence after which a worker is dropped from the table.
pub const FORGET_WORKER_AFTER_MS: u64 = 10 * 60 * 1_000;
/// Most lagging workers `GET /v1/rollout` names; `lagging_total` counts
/// them all, and `GET /v1/workers` pages through the whole table.
pub const LAGGING_LISTED_MAX: usize = 100;

/// The knobs of the aggregate, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateSettings {
    pub window_seconds: u32,
    pub worker_stale_after_ms: u64,
}

/// The weights and when they last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightsRecord {
    pub weights: Weights,
    pub changed_at_unix_ms: u64,
}

impl WeightsRecord {
    /// The weights of a fresh analyzer: all traffic on stable, as version 1.
    /// Version 1 rather than 0 because a filter that has not heard from the
    /// analyzer reports version 0 with its configured initial weight; a
    /// different version makes the analyzer's weights win on the first sync.
    pub fn initial(now_unix_ms: u64) -> WeightsRecord {
        WeightsRecord {
            weights: Weights { weights_version: 1, canary_weight: CanaryWeight::ZERO },
            changed_at_unix_ms: now_unix_ms,
        }
    }
}

/// One version's request counts, status classes and latencies.
#[derive(Debug, Clone, Default)]
pub struct VersionCounts {
    pub requests: u64,
    pub status: StatusCounts,
    pub latency_us: LatencyHistogram,
}

/// Identity of a worker VM: the Envoy instance and the VM's random id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerKey {
    pub proxy_id: String,
    pub worker_id: u64,
}

/// By worker id first. It is random, so it nearly always decides; proxy ids
/// (pod names) share long prefixes, and with the proxy id first every step
/// down the worker table's B-tree ran `memcmp` over them (2–4% of the
/// analyzer's CPU with thousands of workers, in `perf` profiles). What
/// people read is sorted by proxy instead (see [`Aggregate::workers_page`]).
impl Ord for WorkerKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.worker_id.cmp(&other.worker_id).then_with(|| self.proxy_id.cmp(&other.proxy_id))
    }
}

impl PartialOrd for WorkerKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl WorkerKey {
    /// The order people read: by proxy, then worker.
    pub fn cmp_by_proxy(&self, other: &Self) -> Ordering {
        self.proxy_id.cmp(&other.proxy_id).then(self.worker_id.cmp(&other.worker_id))
    }
}

impl WorkerKey {
    /// The key of the worker that sent `report`.
    pub fn of(report: &Report) -> WorkerKey {
        WorkerKey { proxy_id: report.header.proxy_id.clone(), worker_id: report.header.worker_id }
    }

    /// The `GET /v1/workers` cursor naming this worker:
    /// `<proxy_id>/<worker_id>`, the worker id as JSON shows it.
    pub fn cursor(&self) -> String {
        format!("{}/{}", self.proxy_id, format_worker_id(self.worker_id))
    }

    /// Reads a [`WorkerKey::cursor`]; the error says what is wrong with it.
    /// The worker id is split off at the last `/`, since a proxy id (an
    /// Envoy node id) may itself contain one.
    pub fn from_cursor(cursor: &str) -> Result<WorkerKey, &'static str> {
        let (proxy_id, worker_id) = cursor.rsplit_once('/').ok_or("it has no '/' before the worker id")?;
        if proxy_id.is_empty() || proxy_id.len() > MAX_PROXY_ID_LEN {
            return Err("its proxy id must be 1..=255 bytes");
        }
        let hex_digits =
            worker_id.len() == 16 && worker_id.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
        let worker_id = u64::from_str_radix(worker_id, 16)
            .ok()
            .filter(|_| hex_digits)
            .ok_or("its worker id must be 16 lowercase hex digits")?;
        Ok(WorkerKey { proxy_id: proxy_id.to_owned(), worker_id })
    }
}

/// A worker table key ordered by proxy, then worker: the order of
/// [`Aggregate::workers_page`] and of the worker table's second index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ByProxy(WorkerKey);

impl Ord for ByProxy {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp_by_proxy(&other.0)
    }
}

impl PartialOrd for ByProxy {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A lagging worker as `GET /v1/rollout` lists them: the oldest applied
/// weights version first, then by proxy and worker.
#[derive(Debug, Clone, Copy)]
struct Lagging<'a> {
    key: &'a WorkerKey,
    worker: &'a WorkerState,
}

impl Ord for Lagging<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.worker
            .applied_weights_version
            .cmp(&other.worker.applied_weights_version)
            .then_with(|| self.key.cmp_by_proxy(other.key))
    }
}

impl PartialOrd for Lagging<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Lagging<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Lagging<'_> {}

/// What `GET /v1/workers` asks for: a page of at most `limit` workers after
/// the `after` cursor, only `proxy`'s when given. The API checks the
/// bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: usize,
    pub after: Option<WorkerKey>,
    pub proxy: Option<String>,
}

/// What the analyzer remembers about one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerState {
    /// Highest seq whose counts were added.
    pub last_seq: u64,
    pub applied_weights_version: u64,
    pub last_seen_unix_ms: u64,
}

/// A worker table entry: what is remembered, and the number of the
/// worker's proxy (see [`ProxyNumbers`]).
#[derive(Debug, Clone, Copy)]
struct Entry {
    state: WorkerState,
    proxy_number: u32,
}

/// Small numbers for the proxies in the worker table, so that counting the
/// live proxies sets a bit per live worker rather than hashing or comparing
/// proxy ids: reading 40,000 proxy ids costs a cache miss each (a hash set
/// of them took 10–20 ms on the 2-core VM, under the lock every report's
/// ingest takes). A proxy gets a number with its first worker and gives it
/// back when its last one is forgotten, so numbers stay below the most
/// proxies ever remembered at once.
#[derive(Debug, Clone, Default)]
struct ProxyNumbers {
    by_proxy_id: HashMap<String, ProxyNumber>,
    free: Vec<u32>,
    /// One more than the highest number ever given.
    end: u32,
}

#[derive(Debug, Clone, Copy)]
struct ProxyNumber {
    number: u32,
    workers: usize,
}

impl ProxyNumbers {
    /// The number of a worker's proxy, counting the worker in.
    fn add_worker(&mut self, proxy_id: &str) -> u32 {
        if let Some(proxy) = self.by_proxy_id.get_mut(proxy_id) {
            proxy.workers += 1;
            return proxy.number;
        }
        let number = self.free.pop().unwrap_or_else(|| {
            let number = self.end;
            self.end = self.end.saturating_add(1);
            number
        });
        self.by_proxy_id.insert(proxy_id.to_owned(), ProxyNumber { number, workers: 1 });
        number
    }

    /// Counts a forgotten worker out; its proxy's number is free once the
    /// proxy has no worker left.
    fn remove_worker(&mut self, proxy_id: &str) {
        let Some(proxy) = self.by_proxy_id.get_mut(proxy_id) else { return };
        proxy.workers = proxy.workers.saturating_sub(1);
        if proxy.workers == 0 {
            self.free.push(proxy.number);
            self.by_proxy_id.remove(proxy_id);
        }
    }
}

/// What one ingest did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// The report had been ingested before; its counts were not added.
    pub duplicate: bool,
    /// The worker is new or reported a different applied weights version, so
    /// convergence waiters should look again.
    pub applied_version_changed: bool,
}

/// Progress of the live workers towards a weights version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Convergence {
    /// Live workers.
    pub workers_total: usize,
    /// Live workers that have applied the target version or a later one.
    pub workers_confirmed: usize,
    /// Live workers that have not.
    pub unconfirmed: Vec<WorkerKey>,
    /// When the first unconfirmed worker stops being live, after which it no
    /// longer holds the rollout back.
    pub next_stale_at_unix_ms: Option<u64>,
}

impl Convergence {
    pub fn is_confirmed(&self) -> bool {
        self.unconfirmed.is_empty()
    }
}

/// The durable part of an [`Aggregate`]: what the state file holds.
#[derive(Debug, Clone)]
pub struct DurableParts {
    pub weights: WeightsRecord,
    pub totals: [VersionCounts; 2],
    pub since_weights_change: [VersionCounts; 2],
    pub workers: Vec<(WorkerKey, WorkerState)>,
}

/// Per-version totals, sliding window, since-change aggregate and worker
/// table.
#[derive(Debug, Clone)]
pub struct Aggregate {
    settings: AggregateSettings,
    /// The newest weights, which may not be published to filters yet.
    weights: WeightsRecord,
    totals: [VersionCounts; 2],
    since_weights_change: [VersionCounts; 2],
    window: Window,
    /// Ordered by worker id first, for ingest (see [`WorkerKey`]'s `Ord`).
    workers: BTreeMap<WorkerKey, Entry>,
    proxy_numbers: ProxyNumbers,
    /// The same keys by proxy, so that a page of `GET /v1/workers` is a walk
    /// over a range rather than a sort of the whole table. It changes only
    /// when a worker is added or forgotten, never per report, which keeps
    /// proxy-id comparisons off the ingest path.
    by_proxy: BTreeSet<ByProxy>,
    last_prune_unix_ms: u64,
}

impl Aggregate {
    /// A fresh aggregate with the initial weights.
    pub fn new(settings: AggregateSettings, now_unix_ms: u64) -> Aggregate {
        Aggregate::restore(
            settings,
            now_unix_ms,
            DurableParts {
                weights: WeightsRecord::initial(now_unix_ms),
                totals: Default::default(),
                since_weights_change: Default::default(),
                workers: Vec::new(),
            },
        )
    }

    /// An aggregate rebuilt from the state file. The window is not persisted:
    /// it starts empty, and its rate counts only the time since `now_unix_ms`.
    pub fn restore(settings: AggregateSettings, now_unix_ms: u64, parts: DurableParts) -> Aggregate {
        let mut proxy_numbers = ProxyNumbers::default();
        let mut workers = BTreeMap::new();
        for (key, state) in parts.workers {
            // The state file holds each key once; a repeated one replaces
            // the entry, as collecting into the map did, and counts once.
            let proxy_number = match workers.get(&key) {
                Some(Entry { proxy_number, .. }) => *proxy_number,
                None => proxy_numbers.add_worker(&key.proxy_id),
            };
            workers.insert(key, Entry { state, proxy_number });
        }
        let by_proxy = workers.keys().cloned().map(ByProxy).collect();
        Aggregate {
            settings,
            weights: parts.weights,
            totals: parts.totals,
            since_weights_change: parts.since_weights_change,
            window: Window::new(settings.window_seconds, now_unix_ms),
            workers,
            proxy_numbers,
            by_proxy,
            last_prune_unix_ms: 0,
        }
    }

    pub fn settings(&self) -> AggregateSettings {
        self.settings
    }

    /// The newest weights (see [`Aggregate::change_weight`]).
    pub fn weights(&self) -> WeightsRecord {
        self.weights
    }

    /// Sets the canary weight. A different weight makes a new weights version
    /// and restarts the since-change aggregate; the same weight changes
    /// nothing and returns `None`.
    pub fn change_weight(&mut self, canary_weight: CanaryWeight, now_unix_ms: u64) -> Option<WeightsRecord> {
        if canary_weight == self.weights.weights.canary_weight {
            return None;
        }
        self.weights = WeightsRecord {
            weights: Weights { weights_version: self.weights.weights.weights_version.saturating_add(1), canary_weight },
            changed_at_unix_ms: now_unix_ms,
        };
        self.since_weights_change = Default::default();
        Some(self.weights)
    }

    /// At startup, takes the weights file's record when it is newer than the
    /// weights restored from the state file: a weight change is durable in
    /// the weights file before the state file catches up. Newer means a
    /// higher version, or the same version and a lower canary weight (the
    /// two records of one version can only differ if one was damaged or
    /// edited; the weights file's is checksummed, and the lower weight is the
    /// safe one). The since-change aggregate restarts, as
    /// [`Aggregate::change_weight`] restarted it: reports counted after the
    /// change were never acknowledged from a state file that predates it, so
    /// their filters send them again. Returns whether the record was taken.
    pub fn adopt_newer_weights(&mut self, record: WeightsRecord) -> bool {
        let current = self.weights.weights;
        let newer = record.weights.weights_version > current.weights_version
            || (record.weights.weights_version == current.weights_version
                && record.weights.canary_weight.bp() < current.canary_weight.bp());
        if newer {
            self.weights = record;
            self.since_weights_change = Default::default();
        }
        newer
    }

    /// Folds one decoded report in (see the module docs for the rules).
    pub fn ingest(&mut self, report: &Report, now_unix_ms: u64) -> IngestOutcome {
        self.ingest_from(&WorkerKey::of(report), report, now_unix_ms)
    }

    /// [`Aggregate::ingest`] with the sender's key already built (it must be
    /// [`WorkerKey::of`] the report): the caller keeps it, and the key is
    /// cloned only for a worker seen for the first time.
    pub fn ingest_from(&mut self, key: &WorkerKey, report: &Report, now_unix_ms: u64) -> IngestOutcome {
        self.prune(now_unix_ms);
        let header = &report.header;
        let (duplicate, applied_version_changed) = match self.workers.get_mut(key).map(|entry| &mut entry.state) {
            Some(worker) => {
                let duplicate = header.seq <= worker.last_seq;
                let changed = worker.applied_weights_version != header.weights_version;
                if !duplicate {
                    worker.last_seq = header.seq;
                }
                worker.applied_weights_version = header.weights_version;
                worker.last_seen_unix_ms = now_unix_ms;
                (duplicate, changed)
            }
            None => {
                let worker = WorkerState {
                    last_seq: header.seq,
                    applied_weights_version: header.weights_version,
                    last_seen_unix_ms: now_unix_ms,
                };
                let proxy_number = self.proxy_numbers.add_worker(&key.proxy_id);
                self.workers.insert(key.clone(), Entry { state: worker, proxy_number });
                self.by_proxy.insert(ByProxy(key.clone()));
                (false, true)
            }
        };
        if !duplicate {
            // Attribute by the weights the counts were routed under, not the
            // ones the worker has applied since: the first report after a
            // change carries requests split under the old weights.
            let current_weights = header.counts_weights_version == self.weights.weights.weights_version;
            for version in Version::ALL {
                let delta = report.version(version);
                if delta.requests == 0 {
                    continue;
                }
                let index = version.index();
                self.totals[index].add_delta(delta);
                self.window.add(version, delta, now_unix_ms);
                if current_weights {
                    self.since_weights_change[index].add_delta(delta);
                }
            }
        }
        IngestOutcome { duplicate, applied_version_changed }
    }

    /// Per-version totals since the state was created.
    pub fn totals(&self) -> &[VersionCounts; 2] {
        &self.totals
    }

    /// Per-version counts since the weights last changed.
    pub fn since_weights_change(&self) -> &[VersionCounts; 2] {
        &self.since_weights_change
    }

    /// Per-version counts of the sliding window ending at `now_unix_ms`.
    pub fn window_counts(&self, now_unix_ms: u64) -> [VersionCounts; 2] {
        self.window.sum(now_unix_ms)
    }

    /// Seconds of traffic the window covers at `now_unix_ms`: its length, or
    /// less while the analyzer has been up for a shorter time.
    pub fn window_covered_seconds(&self, now_unix_ms: u64) -> u64 {
        self.window.covered_seconds(now_unix_ms)
    }

    /// Workers seen within [`FORGET_WORKER_AFTER_MS`], in key order (by
    /// worker id; see [`WorkerKey`]'s `Ord`).
    pub fn workers(&self, now_unix_ms: u64) -> impl Iterator<Item = (&WorkerKey, &WorkerState)> {
        self.entries(now_unix_ms).map(|(key, entry)| (key, &entry.state))
    }

    /// [`Aggregate::workers`] with their proxy numbers.
    fn entries(&self, now_unix_ms: u64) -> impl Iterator<Item = (&WorkerKey, &Entry)> {
        self.workers.iter().filter(move |(_, entry)| !is_forgotten(&entry.state, now_unix_ms))
    }

    pub fn is_live(&self, worker: &WorkerState, now_unix_ms: u64) -> bool {
        now_unix_ms.saturating_sub(worker.last_seen_unix_ms) <= self.settings.worker_stale_after_ms
    }

    /// How far the live workers are from having applied `target_version`.
    pub fn convergence(&self, target_version: u64, now_unix_ms: u64) -> Convergence {
        let mut convergence = Convergence {
            workers_total: 0,
            workers_confirmed: 0,
            unconfirmed: Vec::new(),
            next_stale_at_unix_ms: None,
        };
        for (key, worker) in self.workers(now_unix_ms) {
            if !self.is_live(worker, now_unix_ms) {
                continue;
            }
            convergence.workers_total += 1;
            if worker.applied_weights_version >= target_version {
                convergence.workers_confirmed += 1;
            } else {
                convergence.unconfirmed.push(key.clone());
                let stale_at =
                    worker.last_seen_unix_ms.saturating_add(self.settings.worker_stale_after_ms).saturating_add(1);
                convergence.next_stale_at_unix_ms =
                    Some(convergence.next_stale_at_unix_ms.map_or(stale_at, |earliest| earliest.min(stale_at)));
            }
        }
        convergence.unconfirmed.sort_unstable_by(WorkerKey::cmp_by_proxy);
        convergence
    }

    /// One worker's entry, pruned or not.
    pub fn worker(&self, key: &WorkerKey) -> Option<&WorkerState> {
        self.workers.get(key).map(|entry| &entry.state)
    }

    /// The whole worker table, including workers not yet pruned: what the
    /// state file holds for deduplication after a restart.
    pub fn worker_table(&self) -> impl Iterator<Item = (&WorkerKey, &WorkerState)> {
        self.workers.iter().map(|(key, entry)| (key, &entry.state))
    }

    /// The `GET /v1/rollout` document. `published` is what the filters are
    /// being told, which is what convergence is measured against.
    pub fn rollout_view(&self, published: &WeightsRecord, now_unix_ms: u64) -> RolloutView {
        let window = self.window_counts(now_unix_ms);
        let covered_seconds = self.window_covered_seconds(now_unix_ms);
        let version_view = |version: Version| {
            let index = version.index();
            VersionView {
                window: WindowView {
                    seconds: self.settings.window_seconds,
                    requests_per_second: window[index].requests as f64 / covered_seconds as f64,
                    summary: window[index].summary(),
                },
                since_weights_change: self.since_weights_change[index].summary(),
                total: self.totals[index].summary(),
            }
        };
        RolloutView {
            canary_weight_percent: published.weights.canary_weight.percent(),
            canary_weight_bp: published.weights.canary_weight.bp(),
            weights_version: published.weights.weights_version,
            weights_changed_at_unix_ms: published.changed_at_unix_ms,
            versions: VersionsView { stable: version_view(Version::Stable), canary: version_view(Version::Canary) },
            data_plane: self.data_plane_view(published.weights.weights_version, now_unix_ms),
        }
    }

    /// The data plane in a size that does not grow with the fleet: counts,
    /// and the first [`LAGGING_LISTED_MAX`] live workers not on
    /// `published_version` in [`Lagging`] order.
    fn data_plane_view(&self, published_version: u64, now_unix_ms: u64) -> DataPlaneView {
        // This runs under the state lock that every report's ingest takes.
        // A sorted copy of the table (what this view once listed) held it
        // for tens of ms with 40,000 workers. So: one pass that reads no
        // proxy id but the lagging ones, and a max-heap of the best
        // LAGGING_LISTED_MAX lagging workers so far, whose top is the one to
        // drop when a better one comes: O(n log 100), where sorting the
        // lagging workers would be O(n log n) and a copy of them. The only
        // allocation that grows with the fleet is a bit per proxy number
        // (see [`ProxyNumbers`]).
        let mut workers_total = 0;
        let mut live_workers = 0;
        let mut converged_workers = 0;
        let mut lagging_total = 0;
        let mut live_proxies = 0;
        let mut live_proxy_bits = vec![0u64; (self.proxy_numbers.end as usize).div_ceil(64)];
        let mut lagging: BinaryHeap<Lagging<'_>> = BinaryHeap::with_capacity(LAGGING_LISTED_MAX);
        for (key, entry) in self.entries(now_unix_ms) {
            let worker = &entry.state;
            workers_total += 1;
            if !self.is_live(worker, now_unix_ms) {
                continue;
            }
            live_workers += 1;
            let bit = 1u64 << (entry.proxy_number % 64);
            if let Some(bits) = live_proxy_bits.get_mut((entry.proxy_number / 64) as usize)
                && *bits & bit == 0
            {
                *bits |= bit;
                live_proxies += 1;
            }
            if worker.applied_weights_version == published_version {
                converged_workers += 1;
                continue;
            }
            lagging_total += 1;
            let candidate = Lagging { key, worker };
            if lagging.len() < LAGGING_LISTED_MAX {
                lagging.push(candidate);
            } else if let Some(mut last) = lagging.peek_mut()
                && candidate < *last
            {
                *last = candidate;
            }
        }
        let lagging = lagging
            .into_sorted_vec()
            .into_iter()
            .map(|entry| self.worker_view(entry.key, entry.worker, published_version, now_unix_ms))
            .collect();
        DataPlaneView {
            live_workers,
            converged_workers,
            converged: live_workers == converged_workers,
            live_proxies,
            workers_total,
            lagging,
            lagging_total,
        }
    }

    /// The `GET /v1/workers` page `request` asks for (see [`PageRequest`]),
    /// in the order people read: by proxy, then worker. Cost follows the
    /// page, not the table, apart from counting `total`.
    pub fn workers_page(&self, request: &PageRequest, published_version: u64, now_unix_ms: u64) -> WorkersPage {
        let first_of = |proxy: &str| ByProxy(WorkerKey { proxy_id: proxy.to_owned(), worker_id: 0 });
        let start = match (&request.after, &request.proxy) {
            // A cursor before the proxy's workers starts at its first.
            (Some(after), Some(proxy)) if after.proxy_id < *proxy => Bound::Included(first_of(proxy)),
            (Some(after), _) => Bound::Excluded(ByProxy(after.clone())),
            (None, Some(proxy)) => Bound::Included(first_of(proxy)),
            (None, None) => Bound::Unbounded,
        };
        let in_scope = |key: &WorkerKey| request.proxy.as_deref().is_none_or(|proxy| key.proxy_id == proxy);
        let mut listed = self
            .by_proxy
            .range((start, Bound::Unbounded))
            .map(|entry| &entry.0)
            .take_while(|key| in_scope(key))
            .filter_map(|key| Some((key, self.remembered(key, now_unix_ms)?)));
        let mut workers = Vec::with_capacity(request.limit.min(self.workers.len()));
        let mut last_key = None;
        for (key, worker) in listed.by_ref().take(request.limit) {
            workers.push(self.worker_view(key, worker, published_version, now_unix_ms));
            last_key = Some(key);
        }
        let next = if listed.next().is_some() { last_key.map(WorkerKey::cursor) } else { None };
        let total = match &request.proxy {
            Some(proxy) => self
                .by_proxy
                .range((Bound::Included(first_of(proxy)), Bound::Unbounded))
                .take_while(|entry| entry.0.proxy_id == *proxy)
                .filter(|entry| self.remembered(&entry.0, now_unix_ms).is_some())
                .count(),
            None => self.workers(now_unix_ms).count(),
        };
        WorkersPage { workers, next, total }
    }

    /// A worker's entry unless it is past [`FORGET_WORKER_AFTER_MS`] and only
    /// waits to be pruned (as [`Aggregate::workers`] filters).
    fn remembered(&self, key: &WorkerKey, now_unix_ms: u64) -> Option<&WorkerState> {
        self.worker(key).filter(|worker| !is_forgotten(worker, now_unix_ms))
    }

    fn worker_view(
        &self,
        key: &WorkerKey,
        worker: &WorkerState,
        published_version: u64,
        now_unix_ms: u64,
    ) -> WorkerView {
        WorkerView {
            proxy_id: key.proxy_id.clone(),
            worker_id: format_worker_id(key.worker_id),
            applied_weights_version: worker.applied_weights_version,
            last_seq: worker.last_seq,
            last_report_age_ms: now_unix_ms.saturating_sub(worker.last_seen_unix_ms),
            live: self.is_live(worker, now_unix_ms),
            converged: worker.applied_weights_version == published_version,
        }
    }

    /// Drops workers silent for [`FORGET_WORKER_AFTER_MS`]; at most once a
    /// second, because ingest calls it on every report.
    fn prune(&mut self, now_unix_ms: u64) {
        if now_unix_ms.saturating_sub(self.last_prune_unix_ms) < 1_000 {
            return;
        }
        self.last_prune_unix_ms = now_unix_ms;
        let (by_proxy, proxy_numbers) = (&mut self.by_proxy, &mut self.proxy_numbers);
        self.workers.retain(|key, entry| {
            let forgotten = is_forgotten(&entry.state, now_unix_ms);
            if forgotten {
                // A clone per forgotten worker: they are few, and rare.
                by_proxy.remove(&ByProxy(key.clone()));
                proxy_numbers.remove_worker(&key.proxy_id);
            }
            !forgotten
        });
    }
}

impl VersionCounts {
    pub fn add_delta(&mut self, delta: &VersionDelta) {
        self.requests = self.requests.saturating_add(delta.requests);
        self.status.merge(&delta.status);
        self.latency_us.merge_sparse(&delta.latency_us);
    }

    pub fn merge(&mut self, other: &VersionCounts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.status.merge(&other.status);
        self.latency_us.merge(&other.latency_us);
    }

    /// Requests that count against a version: 5xx and no response.
    pub fn errors(&self) -> u64 {
        self.status.errors()
    }

    pub fn clear(&mut self) {
        self.requests = 0;
        self.status = StatusCounts::default();
        self.latency_us.reset();
    }

    /// Ratio of errors to requests; `None` without requests.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors() as f64 / self.requests as f64)
    }

    /// The JSON summary: counts, error ratio and p50/p95/p99 in ms.
    pub fn summary(&self) -> SummaryView {
        let quantiles_ms = self.latency_us.quantiles_us([0.5, 0.95, 0.99]).map(|us| us.map(|q| q as f64 / 1_000.0));
        SummaryView {
            requests: self.requests,
            errors: self.errors(),
            error_ratio: self.error_ratio(),
            p50_ms: quantiles_ms.map(|q| q[0]),
            p95_ms: quantiles_ms.map(|q| q[1]),
            p99_ms: quantiles_ms.map(|q| q[2]),
            status: StatusView::from(&self.status),
        }
    }
}

/// Silent for longer than [`FORGET_WORKER_AFTER_MS`]: out of every view,
/// and out of the table at the next prune.
fn is_forgotten(worker: &WorkerState, now_unix_ms: u64) -> bool {
    now_unix_ms.saturating_sub(worker.last_seen_unix_ms) > FORGET_WORKER_AFTER_MS
}

/// A worker id as JSON shows it: 16 lowercase hex digits, because a u64
/// does not fit a JavaScript number.
pub fn format_worker_id(worker_id: u64) -> String {
    format!("{worker_id:016x}")
}

/// `GET /v1/rollout`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub canary_weight_percent: f64,
    pub canary_weight_bp: u16,
    pub weights_version: u64,
    pub weights_changed_at_unix_ms: u64,
    pub versions: VersionsView,
    pub data_plane: DataPlaneView,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionsView {
    pub stable: VersionView,
    pub canary: VersionView,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    pub window: WindowView,
    pub since_weights_change: SummaryView,
    pub total: SummaryView,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowView {
    pub seconds: u32,
    pub requests_per_second: f64,
    #[serde(flatten)]
    pub summary: SummaryView,
}

/// Counts, error ratio and latency quantiles of one version over a span.
/// Ratios and quantiles are `null` when there were no requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryView {
    pub requests: u64,
    pub errors: u64,
    pub error_ratio: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub status: StatusView,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatusView {
    #[serde(rename = "2xx")]
    pub status_2xx: u64,
    #[serde(rename = "3xx")]
    pub status_3xx: u64,
    #[serde(rename = "4xx")]
    pub status_4xx: u64,
    #[serde(rename = "5xx")]
    pub status_5xx: u64,
    pub no_response: u64,
}

impl From<&StatusCounts> for StatusView {
    fn from(status: &StatusCounts) -> Self {
        StatusView {
            status_2xx: status.status_2xx,
            status_3xx: status.status_3xx,
            status_4xx: status.status_4xx,
            status_5xx: status.status_5xx,
            no_response: status.no_response,
        }
    }
}

/// The data plane in `GET /v1/rollout`: a summary whose size does not grow
/// with the fleet; `GET /v1/workers` lists every worker.
#[derive(Debug, Clone, Serialize)]
pub struct DataPlaneView {
    pub live_workers: usize,
    /// Live workers on exactly the published weights version.
    pub converged_workers: usize,
    /// Every live worker has applied the current weights version (true when
    /// there are none).
    pub converged: bool,
    /// Distinct proxy ids among the live workers.
    pub live_proxies: usize,
    /// Workers in the table, live or not (a worker is forgotten after
    /// [`FORGET_WORKER_AFTER_MS`] of silence).
    pub workers_total: usize,
    /// Live workers not on the published weights version, the oldest
    /// applied version first, then by proxy and worker; at most
    /// [`LAGGING_LISTED_MAX`].
    pub lagging: Vec<WorkerView>,
    /// All of them: more than `lagging` lists when the list was cut.
    pub lagging_total: usize,
}

/// `GET /v1/workers`: one page of the worker table.
#[derive(Debug, Clone, Serialize)]
pub struct WorkersPage {
    pub workers: Vec<WorkerView>,
    /// The cursor for the next page (`?after=`), `null` on the last one.
    pub next: Option<String>,
    /// Workers in the table, or the proxy's with `?proxy=`.
    pub total: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub proxy_id: String,
    pub worker_id: String,
    pub applied_weights_version: u64,
    pub last_seq: u64,
    pub last_report_age_ms: u64,
    pub live: bool,
    pub converged: bool,
}

/// A ring of per-second slots, each with per-version counts. A slot is
/// reused (reset, not reallocated) when its second comes round again.
#[derive(Debug, Clone)]
struct Window {
    seconds: u32,
    slots: Vec<WindowSlot>,
    /// When the window started filling, to report a rate over the time it
    /// actually covers.
    origin_unix_second: u64,
}

#[derive(Debug, Clone, Default)]
struct WindowSlot {
    unix_second: Option<u64>,
    versions: [VersionCounts; 2],
}

impl Window {
    fn new(seconds: u32, now_unix_ms: u64) -> Window {
        // Configuration validates the length; a zero here would make the
        // ring empty, so treat it as one second rather than divide by zero.
        let seconds = seconds.max(1);
        Window {
            seconds,
            slots: (0..seconds).map(|_| WindowSlot::default()).collect(),
            origin_unix_second: now_unix_ms / 1_000,
        }
    }

    fn add(&mut self, version: Version, delta: &VersionDelta, now_unix_ms: u64) {
        let second = now_unix_ms / 1_000;
        let index = (second % u64::from(self.seconds)) as usize;
        let Some(slot) = self.slots.get_mut(index) else { return };
        if slot.unix_second != Some(second) {
            for counts in &mut slot.versions {
                counts.clear();
            }
            slot.unix_second = Some(second);
        }
        slot.versions[version.index()].add_delta(delta);
    }

    /// Slots of the seconds in `(now - seconds, now]`.
    fn sum(&self, now_unix_ms: u64) -> [VersionCounts; 2] {
        let now_second = now_unix_ms / 1_000;
        let mut sum: [VersionCounts; 2] = Default::default();
        for slot in &self.slots {
            let Some(second) = slot.unix_second else { continue };
            if second <= now_second && second + u64::from(self.seconds) > now_second {
                for (total, counts) in sum.iter_mut().zip(&slot.versions) {
                    total.merge(counts);
                }
            }
        }
        sum
    }

    fn covered_seconds(&self, now_unix_ms: u64) -> u64 {
        let elapsed_seconds = (now_unix_ms / 1_000).saturating_sub(self.origin_unix_second) + 1;
        elapsed_seconds.clamp(1, u64::from(self.seconds))
    }
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
