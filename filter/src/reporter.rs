//! Batched reporting (`"batch_reports"`, on by default): one VM per Envoy,
//! the reporter, sends every worker's report to the analyzer in one
//! `POST /v1/filter/sync-batch`, instead of one sync call per worker VM.
//!
//! The parts, each plain logic tested natively; the shim moves the bytes:
//! - **The lease** ([`Lease`], [`lease_action`]): which VM is the reporter,
//!   held in Envoy shared data and renewed every tick, taken over by another
//!   VM once it expires. Istio runs the module only as an HTTP filter, with
//!   no singleton service, so the reporter is one of the filter VMs.
//! - **Worker → reporter** ([`ReportMessage`]): a worker enqueues its report,
//!   byte for byte as it would have sent it, into the reporter's shared
//!   queue, with its own queue token so the reporter can answer.
//! - **The reporter** ([`Reporter`]): keeps each worker's latest report
//!   until it is acknowledged, frames them into one held batch (the
//!   long-poll) and, for reports whose applied weights version the analyzer
//!   has not seen, a quick unheld one ([`BatchKind`]). It turns the
//!   analyzer's [`BatchAck`] into one [`SyncResponse`] per worker, which the
//!   shim enqueues into that worker's queue, and pushes new weights to the
//!   workers the answer did not acknowledge. Workers then run exactly the
//!   state machine of [`crate::worker`], with the acknowledgement arriving
//!   through their queue instead of an HTTP response.
//!
//! Nothing here can lose or double a count: reports keep their own seq, a
//! worker re-sends an unacknowledged report after its sync timeout (to
//! whichever VM holds the lease then), and the analyzer deduplicates by
//! worker and seq.

use std::collections::BTreeMap;

use canary_protocol::batch::{MAX_BATCH_REPORTS, encode_batch};
use canary_protocol::{BatchAck, SyncResponse, Weights};

/// Shared-data key of the lease.
pub const LEASE_KEY: &str = "canary_split/reporter";

/// Who the reporter is and how to reach it, as stored under [`LEASE_KEY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub owner_worker_id: u64,
    /// The owner's shared queue, for workers' reports.
    pub queue_token: u32,
    /// Wall-clock milliseconds (Envoy's clock, the same in every VM) after
    /// which another VM may take the lease.
    pub expires_at_unix_ms: u64,
}

const LEASE_BYTES: usize = 20;

impl Lease {
    pub fn to_bytes(&self) -> [u8; LEASE_BYTES] {
        let mut out = [0u8; LEASE_BYTES];
        out[..8].copy_from_slice(&self.owner_worker_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.queue_token.to_le_bytes());
        out[12..].copy_from_slice(&self.expires_at_unix_ms.to_le_bytes());
        out
    }

    /// `None` for anything but the exact layout: a lease someone else wrote
    /// wrongly is treated as expired, and taken over.
    pub fn from_bytes(bytes: &[u8]) -> Option<Lease> {
        let bytes: &[u8; LEASE_BYTES] = bytes.try_into().ok()?;
        let (owner, rest) = bytes.split_at(8);
        let (token, expires) = rest.split_at(4);
        Some(Lease {
            owner_worker_id: u64::from_le_bytes(owner.try_into().ok()?),
            queue_token: u32::from_le_bytes(token.try_into().ok()?),
            expires_at_unix_ms: u64::from_le_bytes(expires.try_into().ok()?),
        })
    }
}

/// What a VM does with the lease at its tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// This VM holds it: write it again with a later expiry.
    Renew,
    /// Another VM holds it: send reports to its queue.
    Follow { queue_token: u32 },
    /// Nobody holds it (absent, expired or unreadable): try to take it.
    Take,
}

/// The lease rule. A lease lasts three report intervals (at least a second),
/// so a reporter that misses a tick or two keeps it.
pub fn lease_action(current: Option<Lease>, my_worker_id: u64, now_unix_ms: u64) -> LeaseAction {
    match current {
        Some(lease) if lease.owner_worker_id == my_worker_id => LeaseAction::Renew,
        Some(lease) if lease.expires_at_unix_ms > now_unix_ms => LeaseAction::Follow { queue_token: lease.queue_token },
        _ => LeaseAction::Take,
    }
}

/// How long a lease lasts from its last renewal.
pub fn lease_duration_ms(report_interval_ms: u64) -> u64 {
    (3 * report_interval_ms).max(1_000)
}

/// Where a worker handed its report in batched mode: into this VM's own
/// reporter table, or into the queue of the reporter it followed then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    Own,
    Queue(u32),
}

/// Whether a report handed to a reporter must be handed over again now
/// rather than after the worker's sync timeout: the lease is no longer
/// where the report went (`now` is where a report would go at this tick,
/// `None` when there is no reporter and it would go directly). The old
/// reporter's table, and the report in it, is gone or going: its VM or
/// root context was torn down (a filter configuration update, a drain), or
/// this VM lost the lease and emptied its own table. Re-sending the same
/// seq cannot count twice; the analyzer deduplicates it.
pub fn must_hand_over_again(handed: Handed, now: Option<Handed>) -> bool {
    now != Some(handed)
}

/// A worker's report on its way to the reporter: a fixed header the
/// reporter needs without decoding the report, then the report's bytes.
///
/// | bytes | field |
/// |---|---|
/// | 1 | `b'R'` |
/// | 4 | the worker's queue token, little-endian |
/// | 8 | worker id, little-endian |
/// | 8 | seq, little-endian |
/// | 8 | the weights version the worker had applied when it cut the report |
/// | rest | the version-1 report |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportMessage<'b> {
    pub queue_token: u32,
    pub worker_id: u64,
    pub seq: u64,
    pub weights_version: u64,
    pub report: &'b [u8],
}

/// First byte of a [`ReportMessage`]; an acknowledgement on a worker's
/// queue is a [`SyncResponse`], which starts with `b'C'`.
pub const REPORT_MESSAGE_TAG: u8 = b'R';
const REPORT_MESSAGE_HEADER: usize = 29;

impl<'b> ReportMessage<'b> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(REPORT_MESSAGE_HEADER + self.report.len());
        out.push(REPORT_MESSAGE_TAG);
        out.extend_from_slice(&self.queue_token.to_le_bytes());
        out.extend_from_slice(&self.worker_id.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.weights_version.to_le_bytes());
        out.extend_from_slice(self.report);
    }

    pub fn decode(bytes: &'b [u8]) -> Result<ReportMessage<'b>, &'static str> {
        if bytes.len() <= REPORT_MESSAGE_HEADER {
            return Err("report message shorter than its header");
        }
        if bytes[0] != REPORT_MESSAGE_TAG {
            return Err("not a report message");
        }
        let word = |range: std::ops::Range<usize>| -> [u8; 8] { bytes[range].try_into().unwrap_or([0; 8]) };
        let queue_token = u32::from_le_bytes(bytes[1..5].try_into().unwrap_or([0; 4]));
        Ok(ReportMessage {
            queue_token,
            worker_id: u64::from_le_bytes(word(5..13)),
            seq: u64::from_le_bytes(word(13..21)),
            weights_version: u64::from_le_bytes(word(21..29)),
            report: &bytes[REPORT_MESSAGE_HEADER..],
        })
    }
}

/// A report waiting this long for the rest of the live workers' goes at the
/// next tick without them. Shorter waits are the other workers' reports on
/// their way (a queue hop, well under a millisecond): a tick that falls
/// among them does not split the batch.
pub const GATHER_GRACE_MS: u64 = 20;

/// `acked_seq` of a [`Delivery`] that acknowledges nothing and only carries
/// new weights (seqs start at 1).
pub const WEIGHTS_ONLY_SEQ: u64 = 0;

/// The two batches a reporter may have open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// The long-poll: every waiting report, held by the analyzer for the
    /// report interval unless the weights change. New weights come back on
    /// it.
    Held,
    /// Reports that must not wait for the held batch to come back: those
    /// whose applied weights version the analyzer has not seen from that
    /// worker (a confirmation of new weights, or a worker new to this
    /// reporter). Sent at once with no hold, one such batch at a time.
    Quick,
}

impl BatchKind {
    fn index(self) -> usize {
        match self {
            BatchKind::Held => 0,
            BatchKind::Quick => 1,
        }
    }
}

/// One worker as the reporter knows it.
#[derive(Debug)]
struct Known {
    queue_token: u32,
    last_seen_ms: u64,
    /// The report not yet acknowledged: (seq, bytes).
    pending: Option<(u64, Vec<u8>)>,
    /// When `pending` arrived, and the applied weights version it carries.
    pending_since_ms: u64,
    pending_weights_version: u64,
    /// The applied weights version of this worker's last report sent in a
    /// batch: what the analyzer knows of it.
    sent_weights_version: Option<u64>,
    /// Seq of `pending` and the batch it is in, while that batch is open.
    in_flight: Option<(u64, BatchKind)>,
}

impl Known {
    /// Waiting and not in an open batch.
    fn sendable(&self) -> bool {
        self.pending.is_some() && self.in_flight.is_none()
    }

    /// The analyzer has not seen this worker apply the version its waiting
    /// report carries.
    fn unconfirmed(&self) -> bool {
        self.sent_weights_version != Some(self.pending_weights_version)
    }
}

/// What to do with an answered batch: one message per worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub queue_token: u32,
    pub response: SyncResponse,
}

/// The reporter's state (only the VM holding the lease uses it).
#[derive(Debug)]
pub struct Reporter {
    report_interval_ms: u64,
    workers: BTreeMap<u64, Known>,
    /// Indexed by [`BatchKind::index`].
    open: [bool; 2],
    next_send_ms: u64,
    batches_failed_total: u64,
    consecutive_failures: u64,
    /// The weights of the last answer, to tell when an answer brings new
    /// ones.
    last_weights: Option<Weights>,
}

impl Reporter {
    pub fn new(report_interval_ms: u32) -> Reporter {
        Reporter {
            report_interval_ms: u64::from(report_interval_ms),
            workers: BTreeMap::new(),
            open: [false; 2],
            next_send_ms: 0,
            batches_failed_total: 0,
            consecutive_failures: 0,
            last_weights: None,
        }
    }

    /// A VM that lost the lease drops what it held (its workers re-send to
    /// the new reporter after their sync timeout) but keeps its failure
    /// counts, which Envoy's counters have already been given.
    pub fn forget_workers(&mut self) {
        self.workers.clear();
        self.open = [false; 2];
        self.next_send_ms = 0;
        self.last_weights = None;
    }

    /// A worker is live while it reported within two and a half intervals:
    /// at least once per interval, plus slack for a slow tick.
    fn is_live(&self, known: &Known, now_ms: u64) -> bool {
        now_ms.saturating_sub(known.last_seen_ms) <= self.report_interval_ms * 5 / 2
    }

    /// Takes a worker's report. A newer seq replaces the older one, which
    /// the worker only moves past once it was acknowledged; the same seq
    /// again (a re-send) keeps the bytes already held.
    pub fn receive(&mut self, message: ReportMessage<'_>, now_ms: u64) {
        let known = self.workers.entry(message.worker_id).or_insert(Known {
            queue_token: message.queue_token,
            last_seen_ms: now_ms,
            pending: None,
            pending_since_ms: now_ms,
            pending_weights_version: message.weights_version,
            sent_weights_version: None,
            in_flight: None,
        });
        known.queue_token = message.queue_token;
        known.last_seen_ms = now_ms;
        let newer = known.pending.as_ref().is_none_or(|(seq, _)| message.seq > *seq);
        if newer {
            known.pending = Some((message.seq, message.report.to_vec()));
            known.pending_since_ms = now_ms;
            known.pending_weights_version = message.weights_version;
        }
    }

    /// Which batch should go now, if any (past the backoff after a failure):
    /// - the held batch, when none is open, something waits, and either
    ///   every live worker has a report waiting (so one batch carries all
    ///   of them, as after an answer) or, at a tick, a report has waited
    ///   [`GATHER_GRACE_MS`] (a worker that went quiet must not hold the
    ///   others back longer than a tick);
    /// - else a quick batch, when none is open and a waiting report is
    ///   unconfirmed (see [`BatchKind::Quick`]).
    pub fn send_due(&self, now_ms: u64, at_tick: bool) -> Option<BatchKind> {
        if now_ms < self.next_send_ms {
            return None;
        }
        if !self.open[BatchKind::Held.index()] {
            let mut oldest_wait_ms = None;
            let mut live_without_report = 0usize;
            for known in self.workers.values() {
                if known.sendable() {
                    let waited = now_ms.saturating_sub(known.pending_since_ms);
                    oldest_wait_ms = oldest_wait_ms.max(Some(waited));
                } else if known.pending.is_none() && self.is_live(known, now_ms) {
                    live_without_report += 1;
                }
            }
            let due =
                oldest_wait_ms.is_some_and(|waited| live_without_report == 0 || (at_tick && waited >= GATHER_GRACE_MS));
            return due.then_some(BatchKind::Held);
        }
        let quick = !self.open[BatchKind::Quick.index()]
            && self.workers.values().any(|known| known.sendable() && known.unconfirmed());
        quick.then_some(BatchKind::Quick)
    }

    /// Frames the reports `kind` takes (at most [`MAX_BATCH_REPORTS`],
    /// by worker id) into a batch body, marks them in flight and returns
    /// how many there are. Forgets workers gone quiet with nothing left to
    /// deliver.
    pub fn begin_batch(&mut self, kind: BatchKind, max_hold_ms: u32, now_ms: u64, out: &mut Vec<u8>) -> usize {
        let interval = self.report_interval_ms;
        self.workers.retain(|_, known| {
            known.pending.is_some()
                || known.in_flight.is_some()
                || now_ms.saturating_sub(known.last_seen_ms) <= interval * 10
        });
        let mut reports: Vec<&[u8]> = Vec::new();
        for known in self.workers.values_mut() {
            if reports.len() == MAX_BATCH_REPORTS || !known.sendable() {
                continue;
            }
            if kind == BatchKind::Quick && !known.unconfirmed() {
                continue;
            }
            if let Some((seq, bytes)) = &known.pending {
                known.in_flight = Some((*seq, kind));
                known.sent_weights_version = Some(known.pending_weights_version);
                reports.push(bytes);
            }
        }
        let count = reports.len();
        encode_batch(max_hold_ms, reports.into_iter(), out);
        self.open[kind.index()] = true;
        count
    }

    /// Whether a batch of `kind` is open.
    pub fn is_open(&self, kind: BatchKind) -> bool {
        self.open[kind.index()]
    }

    /// Whether a report waits that no open batch carries.
    pub fn has_waiting(&self) -> bool {
        self.workers.values().any(Known::sendable)
    }

    pub fn batches_failed_total(&self) -> u64 {
        self.batches_failed_total
    }

    /// Whether the last batch's failure is the first of a run, so the shim
    /// logs once per outage rather than once per retry.
    pub fn is_first_failure(&self) -> bool {
        self.consecutive_failures == 1
    }

    /// Ends the open batch of `kind` with the analyzer's answer, or `None`
    /// when the call failed (the shim logs why). On an answer, each
    /// acknowledged report is dropped and its worker gets a
    /// [`SyncResponse`] with the weights; an acknowledgement for a seq the
    /// reporter did not send in this batch is ignored (the worker re-sends
    /// after its timeout). When the answer brings new weights, every other
    /// known worker gets them too, as a [`WEIGHTS_ONLY_SEQ`] delivery: a
    /// rollback must not wait for a worker's report to be in the batch. On
    /// a failure the batch's reports wait again, the analyzer is told
    /// nothing new of their workers, and the next batch waits
    /// `min(interval, 1 s)`.
    pub fn finish_batch(&mut self, kind: BatchKind, now_ms: u64, answer: Option<BatchAck>) -> Vec<Delivery> {
        self.open[kind.index()] = false;
        let Some(ack) = answer else {
            self.batches_failed_total += 1;
            self.consecutive_failures += 1;
            self.next_send_ms = now_ms + self.report_interval_ms.min(1_000);
            for known in self.workers.values_mut() {
                if known.in_flight.is_some_and(|(_, open)| open == kind) {
                    known.in_flight = None;
                    known.sent_weights_version = None;
                }
            }
            return Vec::new();
        };
        self.consecutive_failures = 0;
        let mut deliveries = Vec::with_capacity(self.workers.len());
        for worker_ack in &ack.acks {
            let Some(known) = self.workers.get_mut(&worker_ack.worker_id) else { continue };
            if known.in_flight != Some((worker_ack.acked_seq, kind)) {
                continue;
            }
            known.in_flight = None;
            if known.pending.as_ref().is_some_and(|(seq, _)| *seq == worker_ack.acked_seq) {
                known.pending = None;
            }
            deliveries.push(Delivery {
                queue_token: known.queue_token,
                response: SyncResponse { acked_seq: worker_ack.acked_seq, weights: ack.weights },
            });
        }
        let new_weights = self.last_weights != Some(ack.weights);
        self.last_weights = Some(ack.weights);
        let acked = deliveries.len();
        for known in self.workers.values_mut() {
            if known.in_flight.is_some_and(|(_, open)| open == kind) {
                // Not acknowledged: wait again.
                known.in_flight = None;
            }
            if new_weights && !deliveries[..acked].iter().any(|delivery| delivery.queue_token == known.queue_token) {
                deliveries.push(Delivery {
                    queue_token: known.queue_token,
                    response: SyncResponse { acked_seq: WEIGHTS_ONLY_SEQ, weights: ack.weights },
                });
            }
        }
        deliveries
    }

    /// How long the batch call may stay open: the hold plus the same slack a
    /// worker's own sync gets.
    pub fn batch_timeout_ms(&self) -> u64 {
        self.report_interval_ms + crate::worker::SYNC_TIMEOUT_SLACK_MS
    }
}
