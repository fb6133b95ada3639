//! The reporter's rules (lease, message, batches, acknowledgements), driven
//! as the shim drives them.

use canary_filter::reporter::{
    BatchKind, Delivery, GATHER_GRACE_MS, Handed, Lease, LeaseAction, ReportMessage, Reporter, WEIGHTS_ONLY_SEQ,
    lease_action, lease_duration_ms, must_hand_over_again,
};
use canary_filter::worker::Worker;
use canary_protocol::batch::MAX_BATCH_REPORTS;
use canary_protocol::{BatchAck, CanaryWeight, ReportBatch, SyncResponse, Weights, WorkerAck};

const INTERVAL_MS: u32 = 1_000;

/// A worker's real report bytes for `seq`, cut by the worker state machine.
fn worker_report(worker_id: u64, requests: u64) -> (Worker, Vec<u8>) {
    let mut worker = Worker::new("envoy-1".into(), worker_id, 1, INTERVAL_MS, CanaryWeight::ZERO);
    for _ in 0..requests {
        worker.record(canary_protocol::Version::Stable, canary_protocol::StatusClass::Success, 900);
    }
    let bytes = worker.begin_sync(0).to_vec();
    (worker, bytes)
}

fn message_at(queue_token: u32, worker_id: u64, seq: u64, weights_version: u64, report: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ReportMessage { queue_token, worker_id, seq, weights_version, report }.encode(&mut out);
    out
}

/// A report that says the worker has applied weights version 1.
fn receive(reporter: &mut Reporter, queue_token: u32, worker_id: u64, seq: u64, report: &[u8], now_ms: u64) {
    receive_at(reporter, queue_token, worker_id, seq, 1, report, now_ms);
}

fn receive_at(
    reporter: &mut Reporter,
    queue_token: u32,
    worker_id: u64,
    seq: u64,
    weights_version: u64,
    report: &[u8],
    now_ms: u64,
) {
    let bytes = message_at(queue_token, worker_id, seq, weights_version, report);
    reporter.receive(ReportMessage::decode(&bytes).expect("valid message"), now_ms);
}

const HELD: BatchKind = BatchKind::Held;
const QUICK: BatchKind = BatchKind::Quick;

fn weights(version: u64, bp: u64) -> Weights {
    Weights { weights_version: version, canary_weight: CanaryWeight::from_bp(bp).expect("valid") }
}

/// A reporter whose two workers (queues 11 and 12, ids 1 and 2) each sent
/// seq 1 at 0 ms, acknowledged in one held batch at `acked_at_ms`; with a
/// report to send again and a scratch body.
fn two_workers_past_their_first_batch(acked_at_ms: u64) -> (Reporter, Vec<u8>, Vec<u8>) {
    let mut reporter = Reporter::new(INTERVAL_MS);
    let (_, report) = worker_report(1, 1);
    receive(&mut reporter, 11, 1, 1, &report, 0);
    receive(&mut reporter, 12, 2, 1, &report, 0);
    let mut body = Vec::new();
    reporter.begin_batch(HELD, INTERVAL_MS, 0, &mut body);
    reporter.finish_batch(HELD, acked_at_ms, Some(ack(1, &[(1, 1), (2, 1)])));
    (reporter, report, body)
}

fn ack(version: u64, pairs: &[(u64, u64)]) -> BatchAck {
    BatchAck {
        weights: weights(version, 500),
        acks: pairs.iter().map(|&(worker_id, acked_seq)| WorkerAck { worker_id, acked_seq }).collect(),
    }
}

#[test]
fn lease_is_renewed_by_its_owner_followed_while_valid_and_taken_once_expired() {
    let lease = Lease { owner_worker_id: 7, queue_token: 3, expires_at_unix_ms: 10_000 };
    assert_eq!(Lease::from_bytes(&lease.to_bytes()), Some(lease));
    assert_eq!(Lease::from_bytes(&lease.to_bytes()[..19]), None, "a short value is no lease");
    assert_eq!(lease_action(Some(lease), 7, 20_000), LeaseAction::Renew, "the owner renews even late");
    assert_eq!(lease_action(Some(lease), 8, 9_999), LeaseAction::Follow { queue_token: 3 });
    assert_eq!(lease_action(Some(lease), 8, 10_000), LeaseAction::Take);
    assert_eq!(lease_action(None, 8, 0), LeaseAction::Take);
    assert_eq!(lease_duration_ms(1_000), 3_000);
    assert_eq!(lease_duration_ms(100), 1_000, "at least a second, whatever the interval");
}

#[test]
fn report_message_round_trips_and_refuses_other_bytes() {
    let bytes = message_at(9, 0xdead_beef, 42, 7, b"CR-report");
    let decoded = ReportMessage::decode(&bytes).expect("valid");
    assert_eq!(
        decoded,
        ReportMessage { queue_token: 9, worker_id: 0xdead_beef, seq: 42, weights_version: 7, report: b"CR-report" }
    );
    assert_eq!(ReportMessage::decode(&bytes[..29]), Err("report message shorter than its header"));
    let mut wrong_tag = bytes.clone();
    wrong_tag[0] = b'C';
    assert_eq!(ReportMessage::decode(&wrong_tag), Err("not a report message"));
}

#[test]
fn one_batch_carries_every_worker_and_each_gets_its_own_ack() {
    let mut reporter = Reporter::new(INTERVAL_MS);
    let (_, first) = worker_report(1, 3);
    let (_, second) = worker_report(2, 5);
    assert!(!reporter.has_waiting());
    receive(&mut reporter, 11, 1, 1, &first, 0);
    assert!(reporter.send_due(0, false).is_some(), "every known worker has a report waiting");
    receive(&mut reporter, 12, 2, 1, &second, 1);
    assert!(reporter.has_waiting());

    let mut body = Vec::new();
    assert_eq!(reporter.begin_batch(HELD, INTERVAL_MS, 1, &mut body), 2);
    assert!(!reporter.has_waiting(), "both reports ride the open batch");
    assert!(reporter.is_open(HELD) && reporter.send_due(1, true).is_none(), "one held batch at a time");
    let batch = ReportBatch::decode(&body).expect("a valid batch");
    assert_eq!(batch.max_hold_ms, INTERVAL_MS);
    let sent: Vec<(u64, u64)> = batch.reports.iter().map(|r| (r.header.worker_id, r.header.seq)).collect();
    assert_eq!(sent, [(1, 1), (2, 1)]);
    assert_eq!(batch.reports[1].versions[0].requests, 5, "the worker's bytes, untouched");

    let deliveries = reporter.finish_batch(HELD, 900, Some(ack(2, &[(1, 1), (2, 1)])));
    assert_eq!(
        deliveries,
        [
            Delivery { queue_token: 11, response: SyncResponse { acked_seq: 1, weights: weights(2, 500) } },
            Delivery { queue_token: 12, response: SyncResponse { acked_seq: 1, weights: weights(2, 500) } },
        ]
    );
    assert!(reporter.send_due(900, true).is_none(), "nothing left to send");
    assert!(!reporter.has_waiting());
}

#[test]
fn a_batch_waits_for_every_live_worker_until_the_tick() {
    let (mut reporter, report, _) = two_workers_past_their_first_batch(1_000);
    // Worker 1 answers its ack with its next report first.
    receive(&mut reporter, 11, 1, 2, &report, 1_001);
    assert!(reporter.has_waiting(), "what a tick that finds it keeps ticking fast for");
    assert!(reporter.send_due(1_001, false).is_none(), "worker 2 is live and its next report is on its way");
    assert!(reporter.send_due(1_001, true).is_none(), "a tick among the arrivals does not split the batch");
    assert!(reporter.send_due(1_001 + GATHER_GRACE_MS - 1, true).is_none());
    assert!(
        reporter.send_due(1_001 + GATHER_GRACE_MS, true).is_some(),
        "but a tick does not wait longer than the grace"
    );
    // Worker 2 went quiet: past two and a half intervals it holds nothing up.
    assert!(reporter.send_due(3_501, false).is_some());
}

#[test]
fn a_failed_batch_keeps_every_report_and_backs_off() {
    let mut reporter = Reporter::new(INTERVAL_MS);
    let (_, report) = worker_report(1, 4);
    receive(&mut reporter, 11, 1, 1, &report, 0);
    let mut body = Vec::new();
    reporter.begin_batch(HELD, INTERVAL_MS, 0, &mut body);
    assert_eq!(reporter.finish_batch(HELD, 100, None), []);
    assert_eq!(reporter.batches_failed_total(), 1);
    assert!(reporter.is_first_failure());
    assert!(reporter.send_due(1_099, true).is_none(), "backs off for min(interval, 1 s)");
    assert!(reporter.send_due(1_100, true).is_some());
    let mut again = Vec::new();
    reporter.begin_batch(HELD, INTERVAL_MS, 1_100, &mut again);
    assert_eq!(again, body, "the same report, byte for byte");
}

#[test]
fn a_re_send_keeps_the_bytes_and_a_stale_ack_delivers_nothing() {
    let mut reporter = Reporter::new(INTERVAL_MS);
    let (_, report) = worker_report(1, 2);
    receive(&mut reporter, 11, 1, 3, &report, 0);
    // The worker timed out and re-sent the same seq: one copy is kept.
    receive(&mut reporter, 11, 1, 3, b"different bytes", 10);
    let mut body = Vec::new();
    assert_eq!(reporter.begin_batch(HELD, INTERVAL_MS, 10, &mut body), 1);
    assert_eq!(ReportBatch::decode(&body).expect("valid").reports.len(), 1);
    // An ack for a seq this batch did not carry, or a worker it does not
    // know, is ignored: the worker re-sends after its timeout.
    let deliveries = reporter.finish_batch(HELD, 20, Some(ack(1, &[(1, 2), (9, 1)])));
    assert_eq!(
        deliveries,
        [Delivery {
            queue_token: 11,
            response: SyncResponse { acked_seq: WEIGHTS_ONLY_SEQ, weights: weights(1, 500) }
        }],
        "no acknowledgement, only the weights of a first answer"
    );
    assert!(reporter.send_due(20, true).is_some(), "seq 3 still waits");
}

#[test]
fn a_batch_holds_at_most_the_protocol_limit_and_the_rest_goes_next() {
    let mut reporter = Reporter::new(INTERVAL_MS);
    let (_, report) = worker_report(1, 1);
    let workers = MAX_BATCH_REPORTS as u64 + 3;
    for worker_id in 1..=workers {
        receive(&mut reporter, worker_id as u32, worker_id, 1, &report, 0);
    }
    let mut body = Vec::new();
    assert_eq!(reporter.begin_batch(HELD, INTERVAL_MS, 0, &mut body), MAX_BATCH_REPORTS);
    let acked: Vec<(u64, u64)> = (1..=MAX_BATCH_REPORTS as u64).map(|worker_id| (worker_id, 1)).collect();
    let deliveries = reporter.finish_batch(HELD, 5, Some(ack(1, &acked)));
    let acks = deliveries.iter().filter(|delivery| delivery.response.acked_seq != WEIGHTS_ONLY_SEQ).count();
    assert_eq!((acks, deliveries.len() - acks), (MAX_BATCH_REPORTS, 3), "the rest get the weights");
    let mut rest = Vec::new();
    assert_eq!(reporter.begin_batch(HELD, INTERVAL_MS, 5, &mut rest), 3);
}

#[test]
fn workers_gone_quiet_are_forgotten_once_delivered() {
    let (mut reporter, report, mut body) = two_workers_past_their_first_batch(5);
    // Only worker 1 keeps reporting; at the batch after ten intervals
    // worker 2 is dropped from the table, so new weights are no longer
    // pushed to its (gone) queue.
    receive(&mut reporter, 11, 1, 2, &report, 10_001);
    reporter.begin_batch(HELD, INTERVAL_MS, 10_001, &mut body);
    let deliveries = reporter.finish_batch(HELD, 10_002, Some(ack(2, &[(1, 2)])));
    assert_eq!(
        deliveries,
        [Delivery { queue_token: 11, response: SyncResponse { acked_seq: 2, weights: weights(2, 500) } }]
    );
}

#[test]
fn new_weights_reach_workers_whose_report_missed_the_batch() {
    let (mut reporter, report, mut body) = two_workers_past_their_first_batch(1_000);

    // Worker 1's next report makes the held batch; worker 2's comes late.
    receive(&mut reporter, 11, 1, 2, &report, 1_001);
    reporter.begin_batch(HELD, INTERVAL_MS, 1_030, &mut body);
    receive(&mut reporter, 12, 2, 2, &report, 1_040);
    // A rollback answers the held batch: worker 2, whose report waits for
    // the next batch, gets the weights pushed at the same moment.
    let deliveries = reporter.finish_batch(HELD, 1_050, Some(ack(2, &[(1, 2)])));
    assert_eq!(
        deliveries,
        [
            Delivery { queue_token: 11, response: SyncResponse { acked_seq: 2, weights: weights(2, 500) } },
            Delivery {
                queue_token: 12,
                response: SyncResponse { acked_seq: WEIGHTS_ONLY_SEQ, weights: weights(2, 500) }
            },
        ]
    );
    // Unchanged weights push nothing.
    reporter.begin_batch(HELD, INTERVAL_MS, 1_051, &mut body);
    let deliveries = reporter.finish_batch(HELD, 2_051, Some(ack(2, &[(2, 2)])));
    assert_eq!(
        deliveries,
        [Delivery { queue_token: 12, response: SyncResponse { acked_seq: 2, weights: weights(2, 500) } }]
    );
}

#[test]
fn a_report_the_analyzer_has_not_seen_the_version_of_goes_at_once_unheld() {
    let mut reporter = Reporter::new(INTERVAL_MS);
    let (_, report) = worker_report(1, 1);
    // A new reporter knows only its own worker when it opens the long-poll.
    receive_at(&mut reporter, 11, 1, 1, 3, &report, 0);
    assert_eq!(reporter.send_due(0, false), Some(HELD));
    let mut held = Vec::new();
    reporter.begin_batch(HELD, INTERVAL_MS, 0, &mut held);
    // Another worker's first report must not wait a whole hold behind it:
    // the analyzer has never seen this worker apply version 3.
    receive_at(&mut reporter, 12, 2, 1, 3, &report, 1);
    assert_eq!(reporter.send_due(1, false), Some(QUICK));
    let mut quick = Vec::new();
    assert_eq!(reporter.begin_batch(QUICK, 0, 1, &mut quick), 1);
    assert_eq!(ReportBatch::decode(&quick).expect("valid").max_hold_ms, 0, "a quick batch asks for no hold");
    receive_at(&mut reporter, 13, 3, 1, 3, &report, 2);
    assert_eq!(reporter.send_due(2, true), None, "one quick batch at a time");
    // A failed quick batch tells the analyzer nothing: worker 3 waits for
    // the backoff, then still goes quick, with worker 2.
    assert_eq!(reporter.finish_batch(QUICK, 3, None), []);
    assert_eq!(reporter.send_due(3, true), None, "backing off");
    assert_eq!(reporter.send_due(1_003, false), Some(QUICK));
    let mut quick = Vec::new();
    assert_eq!(reporter.begin_batch(QUICK, 0, 1_003, &mut quick), 2);
    let deliveries = reporter.finish_batch(QUICK, 1_004, Some(ack(3, &[(2, 1), (3, 1)])));
    assert_eq!(
        deliveries,
        [
            Delivery { queue_token: 12, response: SyncResponse { acked_seq: 1, weights: weights(3, 500) } },
            Delivery { queue_token: 13, response: SyncResponse { acked_seq: 1, weights: weights(3, 500) } },
            // The first answer's weights, to the worker whose report is in
            // the held batch.
            Delivery {
                queue_token: 11,
                response: SyncResponse { acked_seq: WEIGHTS_ONLY_SEQ, weights: weights(3, 500) }
            },
        ]
    );
    // Their next reports carry the version the analyzer has seen: they wait
    // for the held batch, however long, rather than loop through quick ones.
    receive_at(&mut reporter, 12, 2, 2, 3, &report, 1_005);
    assert_eq!(reporter.send_due(1_005, true), None);
    // A confirmation of newer weights does not wait.
    receive_at(&mut reporter, 13, 3, 2, 4, &report, 1_006);
    assert_eq!(reporter.send_due(1_006, false), Some(QUICK));
}

#[test]
fn a_reporter_that_loses_the_lease_forgets_its_workers_but_not_its_failures() {
    let mut reporter = Reporter::new(INTERVAL_MS);
    let (_, report) = worker_report(1, 1);
    receive(&mut reporter, 11, 1, 1, &report, 0);
    let mut body = Vec::new();
    reporter.begin_batch(HELD, INTERVAL_MS, 0, &mut body);
    reporter.finish_batch(HELD, 5, None);
    reporter.forget_workers();
    assert_eq!(reporter.batches_failed_total(), 1, "Envoy's counter only grows");
    assert!(!reporter.is_open(HELD) && reporter.send_due(5_000, true).is_none(), "nothing held any more");
}

#[test]
fn a_report_is_handed_over_again_as_soon_as_the_lease_moves() {
    // The reporter it went to still holds the lease: keep waiting for it.
    assert!(!must_hand_over_again(Handed::Queue(7), Some(Handed::Queue(7))));
    assert!(!must_hand_over_again(Handed::Own, Some(Handed::Own)));
    // Its VM or root context was torn down and another VM took the lease
    // (a configuration update): its table is gone, re-send to the new one.
    assert!(must_hand_over_again(Handed::Queue(7), Some(Handed::Queue(9))));
    // This VM took the lease: the report goes into its own table.
    assert!(must_hand_over_again(Handed::Queue(7), Some(Handed::Own)));
    // This VM lost the lease: forgetting its workers dropped its own report.
    assert!(must_hand_over_again(Handed::Own, Some(Handed::Queue(9))));
    // No reporter (released, not yet taken): the report goes directly.
    assert!(must_hand_over_again(Handed::Queue(7), None));

    // Handing it over again is a re-send of the same seq and bytes: the
    // worker state machine gives back the report it cut, not a new one.
    let (mut worker, first) = worker_report(42, 5);
    let seq = worker.unacked_seq();
    worker.abandon_sync();
    assert!(worker.sync_due(0), "due again at once");
    worker.record(canary_protocol::Version::Canary, canary_protocol::StatusClass::Success, 900);
    assert_eq!(worker.begin_sync(0), first.as_slice());
    assert_eq!(worker.unacked_seq(), seq);
    assert_eq!(worker.unacknowledged_requests(), (5, 1), "the new request waits for the next report");
}
