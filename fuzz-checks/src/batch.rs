//! `batch_decode`: the analyzer's decoder of report batches, which reads
//! bytes from any process that can reach the analyzer's port, and the
//! decoder of the batch acknowledgement the sender reads back.

use canary_protocol::batch::MAX_BATCH_REPORTS;
use canary_protocol::{BatchAck, BatchDecodeError, Report, ReportBatch};

use crate::check_report_decode;

/// Never panics; an accepted batch holds 1..=256 reports, each as valid as
/// `report_decode` asks, and round-trips; a report the decoder blames is one
/// the framing declares, and is the first of them that does not decode; an
/// accepted acknowledgement round-trips and holds at most 256 acks.
pub fn check_batch_decode(data: &[u8]) {
    match ReportBatch::decode(data) {
        Ok(batch) => check_accepted_batch(data, &batch),
        Err(BatchDecodeError::Report { index, error }) => {
            let framing = read_framing(data)
                .unwrap_or_else(|| panic!("report {index} blamed ({error}), but the batch header does not read"));
            assert!(
                (index as u64) < framing.count,
                "report {index} blamed ({error}), but the batch declares {} reports",
                framing.count
            );
            let raw = framing
                .reports
                .get(index)
                .unwrap_or_else(|| panic!("report {index} blamed ({error}), but its bytes are not all there"));
            for (earlier, bytes) in framing.reports[..index].iter().enumerate() {
                assert!(Report::decode(bytes).is_ok(), "report {index} blamed, but report {earlier} before it is bad");
            }
            assert_eq!(Report::decode(raw).as_ref(), Err(&error), "the blamed report fails differently on its own");
        }
        Err(BatchDecodeError::Framing(_)) => {}
    }

    // The same bytes as the analyzer's answer, which the sender decodes.
    if let Ok(ack) = BatchAck::decode(data) {
        assert!(ack.acks.len() <= MAX_BATCH_REPORTS, "accepted {} acks", ack.acks.len());
        let encoded = ack.to_bytes();
        // Non-minimal varints are accepted, so the input may be longer.
        assert!(encoded.len() <= data.len(), "re-encoding grew the batch ack");
        assert_eq!(BatchAck::decode(&encoded), Ok(ack), "batch ack encode → decode does not round-trip");
    }
}

fn check_accepted_batch(data: &[u8], batch: &ReportBatch) {
    let count = batch.reports.len();
    assert!((1..=MAX_BATCH_REPORTS).contains(&count), "accepted a batch of {count} reports");

    // The decoder took each report from where the framing puts it.
    let framing = read_framing(data).unwrap_or_else(|| panic!("accepted a batch whose header does not read"));
    assert_eq!(u64::from(batch.max_hold_ms), framing.max_hold_ms, "max hold ms is not the one sent");
    assert_eq!(count as u64, framing.count, "report count is not the one declared");
    assert_eq!(framing.reports.len(), count, "the framing holds a different number of reports");
    for (index, (report, raw)) in batch.reports.iter().zip(&framing.reports).enumerate() {
        assert_eq!(Report::decode(raw).as_ref(), Ok(report), "report {index} is not its bytes decoded alone");
        // Each report is as valid as a single one: the `report_decode`
        // invariants, on its canonical encoding.
        let mut encoded = Vec::new();
        report.encode(&mut encoded);
        check_report_decode(&encoded);
    }

    let mut encoded = Vec::new();
    batch.encode(&mut encoded);
    // Non-minimal varints are accepted (in the framing and in the reports),
    // so the input may be longer than the canonical encoding, never shorter.
    assert!(encoded.len() <= data.len(), "re-encoding grew the batch");
    assert_eq!(ReportBatch::decode(&encoded).as_ref(), Ok(batch), "batch encode → decode does not round-trip");
}

/// A batch's framing, read without the decoder under test: the header's
/// fields as sent (not range-checked) and the bytes of each report that is
/// all there, up to the declared count.
#[derive(Debug)]
struct Framing<'d> {
    max_hold_ms: u64,
    count: u64,
    reports: Vec<&'d [u8]>,
}

fn read_framing(data: &[u8]) -> Option<Framing<'_>> {
    let mut rest = data.strip_prefix(b"CB\x01")?;
    let max_hold_ms = read_varint(&mut rest)?;
    let count = read_varint(&mut rest)?;
    let mut reports = Vec::new();
    // Each report takes at least one byte, so this ends with the input.
    while (reports.len() as u64) < count {
        let Some(len) = read_varint(&mut rest) else { break };
        let Some(len) = usize::try_from(len).ok().filter(|&len| len <= rest.len()) else { break };
        let (report, after) = rest.split_at(len);
        reports.push(report);
        rest = after;
    }
    Some(Framing { max_hold_ms, count, reports })
}

/// An unsigned LEB128 varint of at most 64 bits, non-minimal forms allowed.
fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (position, &byte) in bytes.iter().enumerate().take(10) {
        let payload = u64::from(byte & 0x7f);
        // The tenth byte may only carry the single top bit.
        if position == 9 && payload > 1 {
            return None;
        }
        value |= payload << (7 * position);
        if byte & 0x80 == 0 {
            *bytes = &bytes[position + 1..];
            return Some(value);
        }
    }
    None
}
