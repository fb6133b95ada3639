//! One worker VM's state, as plain logic: the split decision, the
//! per-version accumulators and the sync state machine (report, acknowledge,
//! apply weights, back off).
//!
//! Nothing here calls the host. The proxy-wasm shim in `lib.rs` feeds it
//! callbacks and a monotonic clock reading, and carries out what it returns,
//! so every rule below is unit-tested natively.
//!
//! Counts are never lost: a report is cut from the accumulators once, kept
//! with its seq until the analyzer acknowledges it, and re-sent unchanged
//! after a failure. Requests completed meanwhile accumulate apart and go
//! into the next seq, so memory stays at two dense histograms per version
//! however long the analyzer is away.

use canary_protocol::report::encode_report;
use canary_protocol::{
    CanaryWeight, ReportHeader, SplitRng, StatusClass, SyncResponse, Version, VersionStats, Weights, sticky_version,
};

/// What the shim must do after a sync completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOutcome {
    /// `Some((old, new))` when the applied weights changed.
    pub weights_changed: Option<(Weights, Weights)>,
    /// The first success after one or more failures.
    pub recovered: bool,
    /// The sync failed; the worker keeps its last weights (fail-static).
    pub failed: bool,
    /// Start the next sync now instead of waiting for a tick: set when new
    /// weights must be confirmed to the analyzer at once, or when the
    /// analyzer held the call for the whole report interval.
    pub resync_now: bool,
}

/// Why a sync did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncFailure {
    /// Envoy could not dispatch the call (unknown cluster, bad headers).
    Dispatch,
    /// Reset or connection failure: Envoy reports these as a response
    /// without headers.
    NoResponse,
    /// The call's timeout fired: the analyzer accepted the call and never
    /// answered. Envoy 1.40 ends such a call with its own 504 (measured; a
    /// reset could also arrive as a response without headers), so the shim
    /// reports [`SyncFailure::Status`] or [`SyncFailure::NoResponse`] and
    /// [`Worker::finish_sync`] tells a timeout apart by how long the call
    /// was open.
    Timeout { open_ms: u64 },
    /// The analyzer answered with a status other than 200.
    Status(u16),
    /// A 200 whose body did not decode.
    BadBody(String),
    /// A 200 acknowledging a seq other than the one sent.
    WrongAck { sent: u64, acked: u64 },
    /// Batched mode: no reporter VM could be reached in this Envoy.
    NoReporter,
}

impl std::fmt::Display for SyncFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncFailure::Dispatch => f.write_str("could not dispatch the call (is the analyzer cluster defined?)"),
            SyncFailure::NoResponse => f.write_str("no response (connection refused or reset)"),
            SyncFailure::Timeout { open_ms } => write!(f, "no answer within {open_ms} ms (timed out)"),
            SyncFailure::Status(status) => write!(f, "analyzer answered HTTP {status}"),
            SyncFailure::BadBody(error) => write!(f, "bad response body: {error}"),
            SyncFailure::WrongAck { sent, acked } => write!(f, "sent seq {sent} but the analyzer acknowledged {acked}"),
            SyncFailure::NoReporter => f.write_str("no reporter VM in this Envoy could take the report (batched mode)"),
        }
    }
}

/// How much longer than the analyzer's longest hold a sync call may stay
/// open before Envoy abandons it.
pub const SYNC_TIMEOUT_SLACK_MS: u64 = 5_000;
/// A header-less response this close to the deadline is the timeout firing:
/// the host timer and the VM's clock are read at slightly different moments.
const TIMEOUT_CLOCK_TOLERANCE_MS: u64 = 50;

/// A worker VM's state.
#[derive(Debug)]
pub struct Worker {
    weights: Weights,
    accumulating: [VersionStats; 2],
    /// Weights version the accumulating counts were routed under.
    accumulating_weights_version: u64,
    /// Requests per version since the VM started, for Envoy-native counters.
    requests_total: [u64; 2],
    rng: SplitRng,
    header: ReportHeader,
    report_interval_ms: u64,
    /// The report cut and sent but not yet acknowledged: (seq, bytes).
    unacked: Option<(u64, Vec<u8>)>,
    /// Requests in the unacknowledged report.
    unacked_requests: u64,
    /// VM shutting down ([`Worker::final_reports`]): the report after
    /// `unacked`, cut from the accumulators while `unacked` was still out,
    /// so that every count can leave the VM before it is destroyed. It
    /// becomes `unacked` when that is acknowledged: (seq, bytes, requests).
    cut_ahead: Option<(u64, Vec<u8>, u64)>,
    in_flight: bool,
    last_dispatch_ms: u64,
    /// No sync starts before this monotonic time.
    next_sync_ms: u64,
    consecutive_failures: u64,
    sync_failures_total: u64,
    sync_timeouts_total: u64,
    /// Batched mode: hand the next report over as soon as one is
    /// acknowledged (see [`Worker::set_batched`]).
    batched: bool,
}

impl Worker {
    /// A worker that splits at `initial_weight` until the analyzer answers.
    pub fn new(
        proxy_id: String,
        worker_id: u64,
        rng_seed: u64,
        report_interval_ms: u32,
        initial_weight: CanaryWeight,
    ) -> Self {
        Self {
            // Version 0 means "never heard from the analyzer".
            weights: Weights { weights_version: 0, canary_weight: initial_weight },
            accumulating: Default::default(),
            accumulating_weights_version: 0,
            requests_total: [0; 2],
            rng: SplitRng::new(rng_seed),
            header: ReportHeader {
                proxy_id,
                worker_id,
                seq: 0,
                weights_version: 0,
                counts_weights_version: 0,
                max_hold_ms: report_interval_ms,
            },
            report_interval_ms: u64::from(report_interval_ms),
            unacked: None,
            unacked_requests: 0,
            cut_ahead: None,
            in_flight: false,
            last_dispatch_ms: 0,
            next_sync_ms: 0,
            consecutive_failures: 0,
            sync_failures_total: 0,
            sync_timeouts_total: 0,
            batched: false,
        }
    }

    /// Batched mode: every acknowledgement makes the next report due at
    /// once. The reporter holds one call for the whole Envoy and sends the
    /// next one when every live worker's report is in, so a worker that
    /// waited for its interval instead would hold the batch up, or miss it
    /// and wait a whole hold for the one after.
    pub fn set_batched(&mut self, batched: bool) {
        self.batched = batched;
    }

    /// Batched mode: weights the reporter pushed to this worker because its
    /// report was not in the answered batch. Applied only if newer than the
    /// ones in force (a push never undoes an acknowledgement's weights);
    /// the report in flight is untouched, and its acknowledgement makes the
    /// next report, which confirms the new version, due at once. Returns
    /// `(old, new)` when the weights changed.
    pub fn apply_pushed_weights(&mut self, weights: Weights) -> Option<(Weights, Weights)> {
        if weights.weights_version <= self.weights.weights_version {
            return None;
        }
        let old = self.weights;
        self.weights = weights;
        Some((old, weights))
    }

    pub fn weights(&self) -> Weights {
        self.weights
    }

    pub fn requests_total(&self) -> [u64; 2] {
        self.requests_total
    }

    pub fn sync_failures_total(&self) -> u64 {
        self.sync_failures_total
    }

    /// Failed syncs that were timeouts (a subset of the failures).
    pub fn sync_timeouts_total(&self) -> u64 {
        self.sync_timeouts_total
    }

    /// The timeout to give each sync call: the analyzer's longest hold (the
    /// report interval) plus slack for a slow network or a busy analyzer.
    pub fn sync_timeout_ms(&self) -> u64 {
        self.report_interval_ms + SYNC_TIMEOUT_SLACK_MS
    }

    /// Whether the worker has counts the analyzer has not acknowledged yet
    /// (cut into a report or still accumulating).
    pub fn has_unreported_counts(&self) -> bool {
        self.unacked.is_some() || self.cut_ahead.is_some() || self.accumulating.iter().any(|stats| !stats.is_empty())
    }

    /// Requests the analyzer has not acknowledged yet: `(in_report,
    /// accumulating)`, those in the report in flight (or waiting to be
    /// re-sent; the analyzer may already have counted them) and those not
    /// yet cut into a report (it cannot have).
    pub fn unacknowledged_requests(&self) -> (u64, u64) {
        let accumulating: u64 = self.accumulating.iter().map(|stats| stats.requests).sum();
        let in_report = if self.unacked.is_some() { self.unacked_requests } else { 0 };
        let cut_ahead = self.cut_ahead.as_ref().map_or(0, |(_, _, requests)| *requests);
        (in_report + cut_ahead, accumulating)
    }

    /// Random split for a request without a sticky key.
    #[inline]
    pub fn decide_random(&mut self) -> Version {
        match self.weights.canary_weight {
            CanaryWeight::ZERO => Version::Stable,
            CanaryWeight::FULL => Version::Canary,
            weight => self.rng.next_version(weight),
        }
    }

    /// Sticky split by key.
    #[inline]
    pub fn decide_sticky(&self, key: &[u8]) -> Version {
        sticky_version(key, self.weights.canary_weight)
    }

    /// Whether the decision can skip reading the sticky key: at 0% and 100%
    /// every key gets the same answer.
    #[inline]
    pub fn needs_key(&self) -> bool {
        !matches!(self.weights.canary_weight, CanaryWeight::ZERO | CanaryWeight::FULL)
    }

    /// Counts one completed request.
    #[inline]
    pub fn record(&mut self, version: Version, class: StatusClass, latency_us: u64) {
        self.accumulating[version.index()].record(class, latency_us);
        let total = &mut self.requests_total[version.index()];
        *total = total.saturating_add(1);
    }

    /// Asks the analyzer not to hold the answers to reports cut from now on
    /// (`max_hold_ms` 0): a VM that is shutting down wants its
    /// acknowledgement at once, not after a report interval.
    pub fn stop_holding(&mut self) {
        self.header.max_hold_ms = 0;
    }

    /// Whether a sync call is open.
    pub fn sync_in_flight(&self) -> bool {
        self.in_flight
    }

    /// Random per VM; names this worker in reports.
    pub fn worker_id(&self) -> u64 {
        self.header.worker_id
    }

    /// Seq of the report cut and not yet acknowledged.
    pub fn unacked_seq(&self) -> Option<u64> {
        self.unacked.as_ref().map(|(seq, _)| *seq)
    }

    /// The report cut and not yet acknowledged: its seq, the weights
    /// version it says this worker has applied, and its bytes (what
    /// [`Worker::begin_sync`] returned).
    pub fn unacked_report(&self) -> Option<(u64, u64, &[u8])> {
        self.unacked.as_ref().map(|(seq, bytes)| (*seq, self.header.weights_version, bytes.as_slice()))
    }

    /// Batched mode: whether the report handed to the reporter has gone
    /// unacknowledged for a whole sync timeout. The shim then ends the sync
    /// as [`SyncFailure::Timeout`], and the report is re-sent, to whichever
    /// VM is the reporter by then. (A worker's own HTTP call gets this from
    /// Envoy's call timeout.)
    pub fn sync_timed_out(&self, now_ms: u64) -> bool {
        self.in_flight && now_ms.saturating_sub(self.last_dispatch_ms) >= self.sync_timeout_ms()
    }

    /// Open for [`SyncFailure::Timeout`] to carry.
    pub fn sync_open_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_dispatch_ms)
    }

    /// Batched mode, VM shutting down: stop waiting for the reporter's
    /// acknowledgement, so the report can be sent directly in the final
    /// sync. The report keeps its seq, so the analyzer counts it once
    /// whichever copy arrives first.
    pub fn abandon_sync(&mut self) {
        self.in_flight = false;
    }

    /// Whether a sync should start now.
    pub fn sync_due(&self, now_ms: u64) -> bool {
        !self.in_flight && now_ms >= self.next_sync_ms
    }

    /// Starts a sync and returns the body to send: the unacknowledged report
    /// again if there is one, otherwise a new report cut from the
    /// accumulators (which are then emptied).
    pub fn begin_sync(&mut self, now_ms: u64) -> &[u8] {
        self.in_flight = true;
        self.last_dispatch_ms = now_ms;
        if self.unacked.is_none() {
            let (seq, body, requests) = self.cut_report();
            self.unacked_requests = requests;
            self.unacked = Some((seq, body));
        }
        self.unacked.as_ref().map_or(&[], |(_, body)| body.as_slice())
    }

    /// Cuts the next report from the accumulators (which are then emptied):
    /// its seq, bytes and requests.
    fn cut_report(&mut self) -> (u64, Vec<u8>, u64) {
        self.header.seq += 1;
        self.header.weights_version = self.weights.weights_version;
        // The counts cut now were routed under the weights in force when
        // they started accumulating; from here on they are the applied ones.
        self.header.counts_weights_version = self.accumulating_weights_version;
        self.accumulating_weights_version = self.weights.weights_version;
        let requests = self.accumulating.iter().map(|stats| stats.requests).sum();
        let mut body = Vec::with_capacity(256);
        encode_report(&self.header, &self.accumulating[0], &self.accumulating[1], &mut body);
        for stats in &mut self.accumulating {
            stats.reset();
        }
        (self.header.seq, body, requests)
    }

    /// VM shutting down: every report that carries counts the analyzer has
    /// not acknowledged, in seq order, cutting one from the accumulators if
    /// they hold any. At most two: the report out (or waiting to be
    /// re-sent), unchanged, and the one after it. The worker keeps both, so
    /// its own final sync sends the same seqs and bytes, and the analyzer
    /// counts each once whichever copy arrives first. They must reach it in
    /// seq order: it takes a seq at or below the last it counted as a
    /// duplicate.
    pub fn final_reports(&mut self) -> Vec<(u64, Vec<u8>)> {
        let accumulated = self.accumulating.iter().any(|stats| !stats.is_empty());
        if accumulated && self.cut_ahead.is_none() {
            let cut = self.cut_report();
            if self.unacked.is_some() {
                self.cut_ahead = Some(cut);
            } else {
                let (seq, body, requests) = cut;
                self.unacked_requests = requests;
                self.unacked = Some((seq, body));
            }
        }
        let ahead = self.cut_ahead.as_ref().map(|(seq, body, _)| (*seq, body.clone()));
        self.unacked.iter().cloned().chain(ahead).collect()
    }

    /// Ends the sync in flight with the analyzer's answer or a failure.
    pub fn finish_sync(&mut self, now_ms: u64, result: Result<SyncResponse, SyncFailure>) -> SyncOutcome {
        self.in_flight = false;
        let sent_seq = self.unacked.as_ref().map_or(0, |(seq, _)| *seq);
        let open_ms = now_ms.saturating_sub(self.last_dispatch_ms);
        let timed_out = open_ms + TIMEOUT_CLOCK_TOLERANCE_MS >= self.sync_timeout_ms();
        let result = result.map_err(|failure| match failure {
            SyncFailure::NoResponse | SyncFailure::Status(504) if timed_out => SyncFailure::Timeout { open_ms },
            other => other,
        });
        let result = result.and_then(|response| {
            if response.acked_seq == sent_seq {
                Ok(response)
            } else {
                Err(SyncFailure::WrongAck { sent: sent_seq, acked: response.acked_seq })
            }
        });
        match result {
            Ok(response) => {
                self.unacked = None;
                if let Some((seq, body, requests)) = self.cut_ahead.take() {
                    self.unacked = Some((seq, body));
                    self.unacked_requests = requests;
                }
                let recovered = self.consecutive_failures > 0;
                self.consecutive_failures = 0;
                let old = self.weights;
                let weights_changed = (response.weights != old).then_some((old, response.weights));
                self.weights = response.weights;
                // New weights are confirmed at once, and so is a version the
                // analyzer has not seen this worker apply yet (pushed while
                // the report was in flight); in batched mode every next
                // report goes at once. Otherwise keep to the report interval
                // even if the analyzer answered early.
                let unconfirmed = self.weights.weights_version != self.header.weights_version;
                self.next_sync_ms = if weights_changed.is_some() || unconfirmed || self.batched {
                    now_ms
                } else {
                    self.last_dispatch_ms + self.report_interval_ms
                };
                // A hold that lasted the whole interval makes the next sync
                // due at once: reopening it here, not at the next tick, keeps
                // a call open nearly all the time, so a rollback never waits
                // for a tick to reach this worker.
                let resync_now = now_ms >= self.next_sync_ms;
                SyncOutcome { weights_changed, recovered, failed: false, resync_now }
            }
            Err(failure) => {
                self.consecutive_failures += 1;
                self.sync_failures_total += 1;
                if matches!(failure, SyncFailure::Timeout { .. }) {
                    self.sync_timeouts_total += 1;
                }
                self.next_sync_ms = now_ms + self.report_interval_ms.min(1_000);
                SyncOutcome { weights_changed: None, recovered: false, failed: true, resync_now: false }
            }
        }
    }

    /// Whether this failure is the first of a run, so the shim logs once per
    /// outage rather than once per retry.
    pub fn is_first_failure(&self) -> bool {
        self.consecutive_failures == 1
    }
}
