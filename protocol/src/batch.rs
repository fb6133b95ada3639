//! Several workers' reports in one sync call, and its acknowledgement.
//!
//! A batch carries version-1 [reports](crate::report) unchanged, each one
//! worker's counts since its last acknowledged report with its own seq. So a
//! sender can put bytes a worker encoded into a batch without decoding them,
//! and the analyzer deduplicates and acknowledges per worker exactly as for
//! single reports. What a batch saves is HTTP exchanges: one per Envoy per
//! interval instead of one per worker VM (`docs/batched-reports.md`).
//!
//! # Request, format version 1
//!
//! | field | encoding |
//! |---|---|
//! | magic | 2 bytes, `"CB"` |
//! | format version | 1 byte, `1` |
//! | max hold ms | varint, at most `u32::MAX` |
//! | report count | varint, 1..=[`MAX_BATCH_REPORTS`] |
//! | each report | varint length (at least 1), then that many bytes of a version-1 report |
//!
//! The batch's `max hold ms` is the hold for the whole call; the reports' own
//! `max hold ms` fields are ignored in a batch.
//!
//! # Response, format version 1
//!
//! `"CA"` (2 bytes), format version `1` (1 byte), then varints: weights
//! version, canary weight in basis points (0..=10000), ack count (at most
//! [`MAX_BATCH_REPORTS`]), then that many (worker id, acknowledged seq)
//! pairs, in the order of the request's reports. Nothing may follow.

use crate::report::Report;
use crate::sync::decode_weights;
use crate::weights::Weights;
use crate::wire::{DecodeError, Reader, put_varint};

pub const BATCH_MAGIC: [u8; 2] = *b"CB";
pub const BATCH_FORMAT_VERSION: u8 = 1;
pub const BATCH_ACK_MAGIC: [u8; 2] = *b"CA";
pub const BATCH_ACK_FORMAT_VERSION: u8 = 1;
/// Most reports one batch may carry: one per worker of an Envoy with up to
/// 256 worker threads.
pub const MAX_BATCH_REPORTS: usize = 256;

/// Why a batch could not be decoded: the batch's own framing, or one of its
/// reports, named by its position (0-based) so the sender can find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchDecodeError {
    #[error(transparent)]
    Framing(DecodeError),
    #[error("batch report {index}: {error}")]
    Report { index: usize, error: DecodeError },
}

impl BatchDecodeError {
    /// The underlying field-level error.
    pub fn decode_error(&self) -> &DecodeError {
        match self {
            BatchDecodeError::Framing(error) | BatchDecodeError::Report { error, .. } => error,
        }
    }
}

impl From<DecodeError> for BatchDecodeError {
    fn from(error: DecodeError) -> Self {
        BatchDecodeError::Framing(error)
    }
}

/// A decoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportBatch {
    /// How long the analyzer may hold the response waiting for new weights.
    pub max_hold_ms: u32,
    /// In the order sent; never empty.
    pub reports: Vec<Report>,
}

impl ReportBatch {
    /// Decodes the framing and every report; any error rejects the whole
    /// batch, so a receiver applies all of it or nothing.
    pub fn decode(bytes: &[u8]) -> Result<ReportBatch, BatchDecodeError> {
        let mut reader = Reader::new("batch", bytes);
        reader.header(BATCH_MAGIC, BATCH_FORMAT_VERSION)?;
        let max_hold_ms = reader.varint_at_most("max hold ms", u64::from(u32::MAX), "must fit in 32 bits")? as u32;
        let count = reader.varint("report count")?;
        if count == 0 || count > MAX_BATCH_REPORTS as u64 {
            return Err(DecodeError::Invalid {
                what: "batch",
                field: "report count",
                got: count,
                rule: "must be 1..=256",
            }
            .into());
        }
        let mut reports = Vec::with_capacity(count as usize);
        for index in 0..count as usize {
            let len = reader.varint("report length")?;
            if len == 0 {
                return Err(DecodeError::Invalid {
                    what: "batch",
                    field: "report length",
                    got: 0,
                    rule: "must be non-zero",
                }
                .into());
            }
            // A length past the end is a truncation, reported as such below.
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let bytes = reader.bytes_exact(len, "report bytes")?;
            let report = Report::decode(bytes).map_err(|error| BatchDecodeError::Report { index, error })?;
            reports.push(report);
        }
        reader.finish()?;
        Ok(ReportBatch { max_hold_ms, reports })
    }

    /// Encodes decoded reports, as simulated proxies and tests do.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let encoded: Vec<Vec<u8>> = self
            .reports
            .iter()
            .map(|report| {
                let mut bytes = Vec::new();
                report.encode(&mut bytes);
                bytes
            })
            .collect();
        encode_batch(self.max_hold_ms, encoded.iter().map(Vec::as_slice), out);
    }
}

/// Frames already-encoded version-1 reports into a batch. The caller keeps
/// the count within [`MAX_BATCH_REPORTS`] and each report non-empty; the
/// decoder rejects a batch that does not.
pub fn encode_batch<'r>(max_hold_ms: u32, reports: impl ExactSizeIterator<Item = &'r [u8]>, out: &mut Vec<u8>) {
    out.extend_from_slice(&BATCH_MAGIC);
    out.push(BATCH_FORMAT_VERSION);
    put_varint(out, u64::from(max_hold_ms));
    put_varint(out, reports.len() as u64);
    for report in reports {
        put_varint(out, report.len() as u64);
        out.extend_from_slice(report);
    }
}

/// One report's acknowledgement in a [`BatchAck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerAck {
    pub worker_id: u64,
    /// The analyzer has made this seq's counts durable; the worker may drop
    /// them.
    pub acked_seq: u64,
}

/// The analyzer's answer to a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAck {
    pub weights: Weights,
    /// In the order of the batch's reports.
    pub acks: Vec<WorkerAck>,
}

impl BatchAck {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&BATCH_ACK_MAGIC);
        out.push(BATCH_ACK_FORMAT_VERSION);
        put_varint(out, self.weights.weights_version);
        put_varint(out, u64::from(self.weights.canary_weight.bp()));
        put_varint(out, self.acks.len() as u64);
        for ack in &self.acks {
            put_varint(out, ack.worker_id);
            put_varint(out, ack.acked_seq);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.acks.len() * 12);
        self.encode(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<BatchAck, DecodeError> {
        let mut reader = Reader::new("batch ack", bytes);
        reader.header(BATCH_ACK_MAGIC, BATCH_ACK_FORMAT_VERSION)?;
        let weights = decode_weights(&mut reader)?;
        let count = reader.varint_at_most("ack count", MAX_BATCH_REPORTS as u64, "must be at most 256")?;
        let mut acks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let worker_id = reader.varint("worker id")?;
            let acked_seq = reader.varint("acked seq")?;
            acks.push(WorkerAck { worker_id, acked_seq });
        }
        reader.finish()?;
        Ok(BatchAck { weights, acks })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::report::{ReportHeader, StatusClass, VersionStats, encode_report};
    use crate::weights::CanaryWeight;

    fn report_bytes(worker_id: u64, seq: u64, requests: u64) -> Vec<u8> {
        let header = ReportHeader {
            proxy_id: "envoy-1".to_owned(),
            worker_id,
            seq,
            weights_version: 4,
            counts_weights_version: 4,
            max_hold_ms: 1_000,
        };
        let mut stable = VersionStats::default();
        for request in 0..requests {
            stable.record(StatusClass::Success, 1_000 + request * 37);
        }
        let mut out = Vec::new();
        encode_report(&header, &stable, &VersionStats::default(), &mut out);
        out
    }

    fn batch_bytes(max_hold_ms: u32, reports: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_batch(max_hold_ms, reports.iter().map(Vec::as_slice), &mut out);
        out
    }

    #[test]
    fn batch_round_trips_and_keeps_report_order() {
        let reports = [report_bytes(7, 1, 3), report_bytes(9, 12, 0), report_bytes(8, 2, 40)];
        let bytes = batch_bytes(750, &reports);
        assert_eq!(&bytes[..5], &[b'C', b'B', 1, 0xee, 0x05], "magic, version, hold 750");
        let batch = ReportBatch::decode(&bytes).expect("valid batch");
        assert_eq!(batch.max_hold_ms, 750);
        let ids: Vec<(u64, u64)> = batch.reports.iter().map(|r| (r.header.worker_id, r.header.seq)).collect();
        assert_eq!(ids, [(7, 1), (9, 12), (8, 2)]);
        for (decoded, original) in batch.reports.iter().zip(&reports) {
            assert_eq!(decoded, &Report::decode(original).expect("valid report"));
        }
        let mut again = Vec::new();
        batch.encode(&mut again);
        assert_eq!(again, bytes, "the sparse re-encoding is byte for byte the same");
    }

    #[test]
    fn batch_rejects_bad_framing_naming_the_field() {
        let check = |bytes: &[u8], message: &str| {
            let error = ReportBatch::decode(bytes).expect_err("must be rejected");
            assert!(matches!(error, BatchDecodeError::Framing(_)), "{error:?}");
            assert_eq!(error.to_string(), message);
        };
        check(b"", "batch: truncated while reading magic");
        check(b"CR\x01", "batch: starts with [43, 52], not the magic bytes [43, 42]");
        check(b"CB\x02", "batch: format version 2 is not supported (this build speaks version 1)");
        check(b"CB\x01\x00\x00", "batch: report count is 0, must be 1..=256");
        check(b"CB\x01\x00\x81\x02", "batch: report count is 257, must be 1..=256");
        check(b"CB\x01\x00\x01\x00", "batch: report length is 0, must be non-zero");
        check(b"CB\x01\x00\x01\x05CR", "batch: truncated while reading report bytes");
        check(b"CB\x01\x80\x80\x80\x80\x10\x01", "batch: max hold ms is 4294967296, must fit in 32 bits");
        let mut trailing = batch_bytes(0, &[report_bytes(1, 1, 1)]);
        trailing.push(0);
        check(&trailing, "batch: 1 unexpected bytes after the end of the message");
    }

    #[test]
    fn batch_names_the_bad_report_by_position() {
        // seq 0 is invalid: a worker's first report is seq 1.
        let batch = batch_bytes(0, &[report_bytes(1, 1, 2), report_bytes(2, 0, 2)]);
        let error = ReportBatch::decode(&batch).expect_err("must be rejected");
        assert_eq!(
            error,
            BatchDecodeError::Report {
                index: 1,
                error: DecodeError::Invalid { what: "report", field: "seq", got: 0, rule: "must start at 1" }
            }
        );
        assert_eq!(error.to_string(), "batch report 1: report: seq is 0, must start at 1");
        assert_eq!(
            error.decode_error(),
            &DecodeError::Invalid { what: "report", field: "seq", got: 0, rule: "must start at 1" }
        );
    }

    #[test]
    fn ack_round_trips_with_exact_bytes() {
        let ack = BatchAck {
            weights: Weights { weights_version: 7, canary_weight: CanaryWeight::from_bp(1_234).expect("valid") },
            acks: vec![WorkerAck { worker_id: 5, acked_seq: 300 }, WorkerAck { worker_id: 1, acked_seq: 1 }],
        };
        let bytes = ack.to_bytes();
        assert_eq!(bytes, [b'C', b'A', 1, 7, 0xd2, 0x09, 2, 5, 0xac, 0x02, 1, 1]);
        assert_eq!(BatchAck::decode(&bytes), Ok(ack));
    }

    #[test]
    fn ack_rejects_bad_input_naming_the_field() {
        let check = |bytes: &[u8], message: &str| {
            assert_eq!(BatchAck::decode(bytes).expect_err("must be rejected").to_string(), message);
        };
        check(b"CW\x01", "batch ack: starts with [43, 57], not the magic bytes [43, 41]");
        check(b"CA\x01\x01\x91\x4e\x00", "batch ack: canary weight bp is 10001, must be 0..=10000");
        check(b"CA\x01\x01\x00\x81\x02", "batch ack: ack count is 257, must be at most 256");
        check(b"CA\x01\x01\x00\x01\x05", "batch ack: truncated while reading acked seq");
        check(b"CA\x01\x01\x00\x00\x00", "batch ack: 1 unexpected bytes after the end of the message");
    }
}
