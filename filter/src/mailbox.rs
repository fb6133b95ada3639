//! Final reports of VMs that are gone: the mailbox a VM being torn down
//! leaves its last counts in, and the table of the VM that adopts them.
//!
//! Envoy 1.40 destroys a replaced VM (a new `vm_config`, which istiod makes
//! on every WasmPlugin edit) as soon as `on_done` returns, without waiting
//! for the `done()` a final sync asks for: counts not yet acknowledged would
//! die with it. Shared queues outlive it: they belong to the `vm_id`, and
//! live while any VM with that `vm_id` does, and Envoy creates the new VMs
//! before it destroys the old ones. So `on_done` enqueues the worker's final
//! reports ([`FinalReports`], [`crate::worker::Worker::final_reports`]) into
//! one queue every VM registers, [`MAILBOX_QUEUE`] (the same token for all of
//! them; each message is dequeued once), and any live VM drains it at its
//! tick and sends what it adopted ([`Adopted`]) to the analyzer until it is
//! acknowledged. A VM torn down with adopted reports unacknowledged puts
//! them back.
//!
//! Nothing here can count twice: the reports keep their worker id, seq and
//! bytes, and the analyzer deduplicates by worker and seq, so a report that
//! also arrives through the worker's own final sync, the reporter, or an
//! adopter that died before its answer is counted once. A worker's reports
//! always travel together, in seq order, in one batch: the analyzer takes a
//! seq at or below the last it counted from that worker as a duplicate.

use std::collections::BTreeMap;

use canary_protocol::BatchAck;
use canary_protocol::batch::{MAX_BATCH_REPORTS, encode_batch};

/// The shared queue of final reports, registered by every configured VM.
pub const MAILBOX_QUEUE: &str = "canary_split/final";

/// First byte of a [`FinalReports`] message (a worker's report message
/// starts with `b'R'`, an acknowledgement with `b'C'`).
pub const FINAL_REPORTS_TAG: u8 = b'F';

/// One worker's final reports, in seq order: (seq, version-1 report bytes).
///
/// | bytes | field |
/// |---|---|
/// | 1 | `b'F'` |
/// | 8 | worker id, little-endian |
/// | then per report: 8 | seq, little-endian |
/// | 4 | report length in bytes, little-endian |
/// | length | the version-1 report |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalReports {
    pub worker_id: u64,
    pub reports: Vec<(u64, Vec<u8>)>,
}

const FINAL_HEADER_BYTES: usize = 9;
const FINAL_REPORT_HEADER_BYTES: usize = 12;

impl FinalReports {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(FINAL_REPORTS_TAG);
        out.extend_from_slice(&self.worker_id.to_le_bytes());
        for (seq, report) in &self.reports {
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&u32::try_from(report.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(report);
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<FinalReports, &'static str> {
        if bytes.len() < FINAL_HEADER_BYTES || bytes[0] != FINAL_REPORTS_TAG {
            return Err("not a final-reports message");
        }
        let worker_id = u64::from_le_bytes(bytes[1..9].try_into().map_err(|_| "worker id")?);
        let mut reports = Vec::new();
        let mut rest = &bytes[FINAL_HEADER_BYTES..];
        while !rest.is_empty() {
            if rest.len() < FINAL_REPORT_HEADER_BYTES {
                return Err("final report shorter than its header");
            }
            let seq = u64::from_le_bytes(rest[..8].try_into().map_err(|_| "seq")?);
            let length_bytes = u32::from_le_bytes(rest[8..12].try_into().map_err(|_| "length")?);
            let length = usize::try_from(length_bytes).map_err(|_| "length")?;
            let report = rest.get(FINAL_REPORT_HEADER_BYTES..FINAL_REPORT_HEADER_BYTES + length);
            let report = report.ok_or("final report shorter than its length")?;
            reports.push((seq, report.to_vec()));
            rest = &rest[FINAL_REPORT_HEADER_BYTES + length..];
        }
        Ok(FinalReports { worker_id, reports })
    }
}

/// The final reports a live VM adopted, until the analyzer acknowledges
/// them. Their acknowledgements go nowhere: the worker that cut them is
/// gone.
#[derive(Debug)]
pub struct Adopted {
    report_interval_ms: u64,
    /// Per worker, its reports in seq order: (seq, bytes).
    reports: BTreeMap<u64, Vec<(u64, Vec<u8>)>>,
    /// A batch is open; at most one at a time, so a worker's reports are
    /// never in two batches that could reach the analyzer out of order.
    in_flight: bool,
    next_send_ms: u64,
    consecutive_failures: u64,
}

impl Adopted {
    pub fn new(report_interval_ms: u32) -> Adopted {
        Adopted {
            report_interval_ms: u64::from(report_interval_ms),
            reports: BTreeMap::new(),
            in_flight: false,
            next_send_ms: 0,
            consecutive_failures: 0,
        }
    }

    /// Takes a dead worker's final reports; a seq already held (the same
    /// report put back by another adopter) is kept once.
    pub fn adopt(&mut self, message: FinalReports) {
        let held = self.reports.entry(message.worker_id).or_default();
        for (seq, bytes) in message.reports {
            if !held.iter().any(|(held_seq, _)| *held_seq == seq) {
                held.push((seq, bytes));
            }
        }
        held.sort_by_key(|(seq, _)| *seq);
        if held.is_empty() {
            self.reports.remove(&message.worker_id);
        }
    }

    /// Reports held, sent or not.
    pub fn len(&self) -> usize {
        self.reports.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// Whether a batch should go now: something is held, no batch is
    /// open, and the backoff after a failure has passed.
    pub fn send_due(&self, now_ms: u64) -> bool {
        !self.in_flight && !self.reports.is_empty() && now_ms >= self.next_send_ms
    }

    pub fn is_in_flight(&self) -> bool {
        self.in_flight
    }

    /// Frames the held reports, by worker and in seq order, into one batch
    /// the analyzer does not hold (`max_hold_ms` 0: there is no worker to
    /// bring weights to), at most [`MAX_BATCH_REPORTS`]; returns how many.
    /// Reports that do not fit wait for the next batch, which starts again
    /// from each worker's lowest seq.
    pub fn begin_batch(&mut self, out: &mut Vec<u8>) -> usize {
        let reports: Vec<&[u8]> = self
            .reports
            .values()
            .flat_map(|held| held.iter().map(|(_, bytes)| bytes.as_slice()))
            .take(MAX_BATCH_REPORTS)
            .collect();
        let count = reports.len();
        encode_batch(0, reports.into_iter(), out);
        self.in_flight = true;
        count
    }

    /// Ends the open batch: drops each acknowledged report; `None` (the
    /// call failed) keeps them all for a retry after `min(interval, 1 s)`.
    /// Returns how many were acknowledged.
    pub fn finish_batch(&mut self, now_ms: u64, answer: Option<&BatchAck>) -> usize {
        self.in_flight = false;
        let Some(ack) = answer else {
            self.consecutive_failures += 1;
            self.next_send_ms = now_ms + self.report_interval_ms.min(1_000);
            return 0;
        };
        self.consecutive_failures = 0;
        let before = self.len();
        for worker_ack in &ack.acks {
            if let Some(held) = self.reports.get_mut(&worker_ack.worker_id) {
                held.retain(|(seq, _)| *seq != worker_ack.acked_seq);
            }
        }
        self.reports.retain(|_, held| !held.is_empty());
        before - self.len()
    }

    /// Whether the last batch's failure is the first of a run, so the shim
    /// logs once per outage rather than once per retry.
    pub fn is_first_failure(&self) -> bool {
        self.consecutive_failures == 1
    }

    /// This VM is being torn down: everything held, sent or not, one
    /// message per worker, to go back into the mailbox for another VM. A
    /// batch still open may yet be counted; the analyzer deduplicates the
    /// copy.
    pub fn put_back(&mut self) -> Vec<FinalReports> {
        self.in_flight = false;
        std::mem::take(&mut self.reports)
            .into_iter()
            .map(|(worker_id, reports)| FinalReports { worker_id, reports })
            .collect()
    }

    /// How long the batch call may stay open: the analyzer does not hold
    /// it, but a busy one may take a while to commit.
    pub fn batch_timeout_ms(&self) -> u64 {
        self.report_interval_ms + crate::worker::SYNC_TIMEOUT_SLACK_MS
    }
}
