//! The final-reports mailbox: the message a VM being torn down leaves, and
//! the adopting VM's table (what it sends, keeps, re-sends and puts back).

use canary_filter::mailbox::{Adopted, FinalReports};
use canary_filter::worker::Worker;
use canary_protocol::batch::MAX_BATCH_REPORTS;
use canary_protocol::{BatchAck, CanaryWeight, ReportBatch, StatusClass, Version, Weights, WorkerAck};

const INTERVAL_MS: u32 = 250;

/// A worker torn down with a report out and counts accumulated since.
fn final_reports_of(worker_id: u64) -> FinalReports {
    let mut worker = Worker::new("envoy-1".into(), worker_id, 1, INTERVAL_MS, CanaryWeight::ZERO);
    worker.record(Version::Stable, StatusClass::Success, 900);
    worker.begin_sync(0);
    worker.record(Version::Canary, StatusClass::Success, 900);
    FinalReports { worker_id, reports: worker.final_reports() }
}

fn ack(acks: &[(u64, u64)]) -> BatchAck {
    BatchAck {
        weights: Weights { weights_version: 1, canary_weight: CanaryWeight::ZERO },
        acks: acks.iter().map(|&(worker_id, acked_seq)| WorkerAck { worker_id, acked_seq }).collect(),
    }
}

/// (worker id, seq) of each report in a batch, in order.
fn batch_order(body: &[u8]) -> (u32, Vec<(u64, u64)>) {
    let batch = ReportBatch::decode(body).expect("valid batch");
    (batch.max_hold_ms, batch.reports.iter().map(|report| (report.header.worker_id, report.header.seq)).collect())
}

#[test]
fn final_reports_round_trip_and_bad_messages_are_rejected() {
    let message = final_reports_of(7);
    assert_eq!(message.reports.len(), 2);
    let mut bytes = Vec::new();
    message.encode(&mut bytes);
    assert_eq!(FinalReports::decode(&bytes), Ok(message.clone()));
    assert!(FinalReports::decode(&bytes[..bytes.len() - 1]).is_err(), "truncated report");
    assert!(FinalReports::decode(&bytes[..15]).is_err(), "truncated report header");
    assert!(FinalReports::decode(b"R123456789").is_err(), "a worker's report message");
    assert!(FinalReports::decode(b"F").is_err());
    let empty = FinalReports { worker_id: 3, reports: Vec::new() };
    let mut bytes = Vec::new();
    empty.encode(&mut bytes);
    assert_eq!(FinalReports::decode(&bytes), Ok(empty));
}

/// A worker's reports go together and in seq order in one unheld batch;
/// acknowledged ones are dropped, the rest re-sent after a failure.
#[test]
fn adopted_reports_go_in_seq_order_and_are_kept_until_acknowledged() {
    let mut adopted = Adopted::new(INTERVAL_MS);
    assert!(!adopted.send_due(0));
    adopted.adopt(final_reports_of(9));
    adopted.adopt(final_reports_of(4));
    assert_eq!(adopted.len(), 4);
    assert!(adopted.send_due(0));

    let mut body = Vec::new();
    assert_eq!(adopted.begin_batch(&mut body), 4);
    assert_eq!(batch_order(&body), (0, vec![(4, 1), (4, 2), (9, 1), (9, 2)]));
    assert!(!adopted.send_due(0), "one batch at a time");

    // The call fails: everything waits for the backoff, then goes again.
    assert_eq!(adopted.finish_batch(100, None), 0);
    assert!(adopted.is_first_failure());
    assert!(!adopted.send_due(349) && adopted.send_due(350));
    let mut again = Vec::new();
    adopted.begin_batch(&mut again);
    assert_eq!(again, body, "the same reports, byte for byte");

    // Acknowledgements drop exactly what they name.
    assert_eq!(adopted.finish_batch(400, Some(&ack(&[(4, 1), (4, 2), (9, 1)]))), 3);
    assert!(!adopted.is_first_failure());
    assert_eq!(adopted.len(), 1);
    let mut rest = Vec::new();
    adopted.begin_batch(&mut rest);
    assert_eq!(batch_order(&rest).1, vec![(9, 2)]);
    assert_eq!(adopted.finish_batch(500, Some(&ack(&[(9, 2), (77, 1)]))), 1, "an unknown worker's ack is ignored");
    assert!(adopted.is_empty() && !adopted.send_due(1_000));
}

/// A VM torn down with adopted reports out puts them all back, one message
/// per worker; another VM adopting a copy it already holds keeps one.
#[test]
fn adopted_reports_are_put_back_whole_and_duplicates_are_kept_once() {
    let mut adopted = Adopted::new(INTERVAL_MS);
    adopted.adopt(final_reports_of(1));
    adopted.adopt(final_reports_of(2));
    let mut body = Vec::new();
    adopted.begin_batch(&mut body);
    let put_back = adopted.put_back();
    assert!(adopted.is_empty() && !adopted.is_in_flight());
    assert_eq!(put_back, vec![final_reports_of(1), final_reports_of(2)]);

    let mut next = Adopted::new(INTERVAL_MS);
    for message in put_back.iter().cloned().chain(put_back.iter().cloned()) {
        next.adopt(message);
    }
    assert_eq!(next.len(), 4, "each seq once");
    // Out of order on arrival, in order in the batch.
    let mut reversed = final_reports_of(3);
    reversed.reports.reverse();
    next.adopt(reversed);
    let mut body = Vec::new();
    next.begin_batch(&mut body);
    assert_eq!(batch_order(&body).1, vec![(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]);
}

/// More than a batch holds: the first batch takes the lowest seqs, the rest
/// follow once it is answered.
#[test]
fn adopted_reports_beyond_one_batch_follow_in_the_next() {
    let mut adopted = Adopted::new(INTERVAL_MS);
    let workers = MAX_BATCH_REPORTS as u64 / 2 + 1;
    for worker_id in 0..workers {
        adopted.adopt(final_reports_of(worker_id));
    }
    let mut body = Vec::new();
    assert_eq!(adopted.begin_batch(&mut body), MAX_BATCH_REPORTS);
    let (_, sent) = batch_order(&body);
    adopted.finish_batch(10, Some(&ack(&sent)));
    let mut body = Vec::new();
    assert_eq!(adopted.begin_batch(&mut body), 2);
    assert_eq!(batch_order(&body).1, vec![(workers - 1, 1), (workers - 1, 2)]);
}
