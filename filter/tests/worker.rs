//! The worker state machine, driven as the proxy-wasm shim drives it: the
//! split decision, reports cut once and re-sent until acknowledged, weights
//! applied and confirmed, back-off after failures.

use canary_filter::worker::{SyncFailure, Worker};
use canary_protocol::{CanaryWeight, Report, StatusClass, SyncResponse, Version, Weights, sticky_version};

fn worker() -> Worker {
    Worker::new("proxy-a".into(), 7, 1, 1_000, CanaryWeight::ZERO)
}

fn weights(weights_version: u64, bp: u64) -> Weights {
    Weights { weights_version, canary_weight: CanaryWeight::from_bp(bp).expect("valid") }
}

fn ack(seq: u64, weights: Weights) -> Result<SyncResponse, SyncFailure> {
    Ok(SyncResponse { acked_seq: seq, weights })
}

fn sent(worker: &mut Worker, now_ms: u64) -> Report {
    Report::decode(worker.begin_sync(now_ms)).expect("the worker encodes valid reports")
}

#[test]
fn unacknowledged_report_is_resent_unchanged_and_new_counts_wait() {
    let mut worker = worker();
    worker.record(Version::Stable, StatusClass::Success, 100);
    let first = sent(&mut worker, 0);
    assert_eq!((first.header.seq, first.versions[0].requests), (1, 1));

    // Counts that arrive while the report is in flight are kept apart.
    worker.record(Version::Stable, StatusClass::ServerError, 200);
    let outcome = worker.finish_sync(10, Err(SyncFailure::NoResponse));
    assert!(outcome.failed && worker.is_first_failure());
    assert_eq!(worker.weights(), weights(0, 0), "fail-static: weights unchanged");
    assert!(!worker.sync_due(500), "backs off after a failure");
    assert!(worker.sync_due(1_010));

    let again = sent(&mut worker, 1_010);
    assert_eq!(again, first, "the same seq and the same counts are re-sent");
    worker.finish_sync(1_020, ack(1, weights(0, 0)));

    let next = sent(&mut worker, 2_000);
    assert_eq!(next.header.seq, 2);
    assert_eq!(next.versions[0].requests, 1);
    assert_eq!(next.versions[0].status.status_5xx, 1);
}

#[test]
fn counts_are_conserved_across_many_failures() {
    let mut worker = worker();
    let mut acknowledged = [0u64; 2];
    let mut now_ms = 0;
    for round in 0..200u64 {
        for request in 0..(round % 7) {
            let version = if request % 3 == 0 { Version::Canary } else { Version::Stable };
            worker.record(version, StatusClass::Success, request * 10);
        }
        if worker.sync_due(now_ms) {
            let report = sent(&mut worker, now_ms);
            let seq = report.header.seq;
            if round % 3 == 0 {
                worker.finish_sync(now_ms, Err(SyncFailure::Status(503)));
            } else {
                acknowledged[0] += report.versions[0].requests;
                acknowledged[1] += report.versions[1].requests;
                worker.finish_sync(now_ms, ack(seq, weights(0, 0)));
            }
        }
        now_ms += 500;
    }
    // Drain whatever is left with successful syncs.
    for _ in 0..3 {
        let report = sent(&mut worker, now_ms);
        acknowledged[0] += report.versions[0].requests;
        acknowledged[1] += report.versions[1].requests;
        worker.finish_sync(now_ms, ack(report.header.seq, weights(0, 0)));
        now_ms += 1_000;
    }
    assert_eq!(acknowledged, worker.requests_total());
}

#[test]
fn new_weights_apply_at_once_and_are_confirmed_immediately() {
    let mut worker = worker();
    sent(&mut worker, 0);
    let outcome = worker.finish_sync(5, ack(1, weights(3, 1_000)));
    assert_eq!(outcome.weights_changed, Some((weights(0, 0), weights(3, 1_000))));
    assert!(outcome.resync_now && worker.sync_due(5));
    worker.record(Version::Canary, StatusClass::Success, 1);
    let confirmation = sent(&mut worker, 5);
    assert_eq!(confirmation.header.weights_version, 3, "the next report confirms the applied version");
    assert_eq!(
        confirmation.header.counts_weights_version, 0,
        "but its counts were routed under the weights before the change"
    );
    worker.record(Version::Canary, StatusClass::Success, 1);

    // Unchanged weights answered early: the next report waits for the interval.
    let outcome = worker.finish_sync(300, ack(2, weights(3, 1_000)));
    assert_eq!(outcome.weights_changed, None);
    assert!(!outcome.resync_now);
    assert!(!worker.sync_due(900));
    assert!(worker.sync_due(1_005));

    // A hold that lasted the whole interval: the next sync opens at once, so
    // there is no gap in which a rollback would wait for a tick.
    let held = sent(&mut worker, 1_005);
    assert_eq!((held.header.weights_version, held.header.counts_weights_version), (3, 3));
    assert_eq!(held.versions[1].requests, 1, "requests after the change are labelled with the new weights");
    let outcome = worker.finish_sync(2_006, ack(held.header.seq, weights(3, 1_000)));
    assert!(outcome.resync_now && worker.sync_due(2_006));
}

#[test]
fn wrong_ack_is_a_failure_and_keeps_the_report() {
    let mut worker = worker();
    worker.record(Version::Canary, StatusClass::Success, 1);
    let first = sent(&mut worker, 0);
    let outcome = worker.finish_sync(1, ack(9, weights(4, 10_000)));
    assert!(outcome.failed);
    assert_eq!(worker.weights(), weights(0, 0), "weights from a confused answer are not applied");
    assert_eq!(sent(&mut worker, 2_000), first);
}

#[test]
fn recovery_is_reported_once() {
    let mut worker = worker();
    sent(&mut worker, 0);
    worker.finish_sync(0, Err(SyncFailure::Dispatch));
    sent(&mut worker, 1_000);
    worker.finish_sync(1_000, Err(SyncFailure::Dispatch));
    assert!(!worker.is_first_failure());
    assert_eq!(worker.sync_failures_total(), 2);
    sent(&mut worker, 2_000);
    let outcome = worker.finish_sync(2_000, ack(1, weights(0, 0)));
    assert!(outcome.recovered);
}

#[test]
fn decisions_follow_the_weight() {
    let mut worker = worker();
    assert!(!worker.needs_key());
    assert!((0..1_000).all(|_| worker.decide_random() == Version::Stable));
    sent(&mut worker, 0);
    worker.finish_sync(0, ack(1, weights(1, 10_000)));
    assert!((0..1_000).all(|_| worker.decide_random() == Version::Canary));
    sent(&mut worker, 0);
    worker.finish_sync(0, ack(2, weights(2, 2_500)));
    assert!(worker.needs_key());
    let canary = (0..40_000).filter(|_| worker.decide_random() == Version::Canary).count();
    assert!((9_500..10_500).contains(&canary), "{canary}");
    assert_eq!(worker.decide_sticky(b"user-1"), sticky_version(b"user-1", CanaryWeight::from_bp(2_500).expect("ok")));
}

#[test]
fn initial_weight_is_used_until_the_analyzer_answers() {
    let mut worker = Worker::new("p".into(), 1, 1, 1_000, CanaryWeight::FULL);
    assert_eq!(worker.decide_random(), Version::Canary);
    assert_eq!(worker.weights().weights_version, 0);
}

#[test]
fn a_header_less_answer_at_the_deadline_counts_as_a_timeout() {
    let mut worker = worker();
    assert_eq!(worker.sync_timeout_ms(), 1_000 + canary_filter::worker::SYNC_TIMEOUT_SLACK_MS);
    worker.record(Version::Canary, StatusClass::Success, 100);
    assert!(worker.has_unreported_counts());
    sent(&mut worker, 0);
    worker.record(Version::Stable, StatusClass::Success, 100);
    assert_eq!(worker.unacknowledged_requests(), (1, 1), "one in the report, one accumulating");
    assert!(worker.sync_in_flight());
    // Early: the connection was refused or reset, not a timeout.
    assert!(worker.finish_sync(300, Err(SyncFailure::NoResponse)).failed);
    assert_eq!((worker.sync_failures_total(), worker.sync_timeouts_total()), (1, 0));

    // The analyzer accepted the call and never answered: Envoy ends it at
    // the timeout it was given.
    sent(&mut worker, 2_000);
    let deadline_ms = 2_000 + worker.sync_timeout_ms();
    assert!(worker.finish_sync(deadline_ms, Err(SyncFailure::NoResponse)).failed);
    assert_eq!((worker.sync_failures_total(), worker.sync_timeouts_total()), (2, 1));
    assert_eq!(worker.weights(), weights(0, 0), "fail-static");
    assert!(worker.has_unreported_counts(), "the report waits for an acknowledgement");

    // Envoy 1.40 ends a timed-out call with its own 504.
    sent(&mut worker, 8_000);
    worker.finish_sync(8_000 + worker.sync_timeout_ms(), Err(SyncFailure::Status(504)));
    assert_eq!((worker.sync_failures_total(), worker.sync_timeouts_total()), (3, 2));
    // An early 504 (say, from a proxy in between) is not this call's timeout.
    sent(&mut worker, 9_000);
    worker.finish_sync(9_100, Err(SyncFailure::Status(504)));
    assert_eq!((worker.sync_failures_total(), worker.sync_timeouts_total()), (4, 2));

    // Other failures at the deadline are not timeouts.
    sent(&mut worker, 10_000);
    worker.finish_sync(10_000 + worker.sync_timeout_ms(), Err(SyncFailure::Status(503)));
    assert_eq!((worker.sync_failures_total(), worker.sync_timeouts_total()), (5, 2));

    let report = sent(&mut worker, 20_000);
    let outcome = worker.finish_sync(20_010, ack(report.header.seq, weights(1, 0)));
    assert!(outcome.recovered);
    assert_eq!(worker.unacknowledged_requests(), (0, 1), "the report is acknowledged, the later request waits");
    assert_eq!(report.header.max_hold_ms, 1_000, "the analyzer may hold a report for the interval");
    worker.stop_holding();
    let report = sent(&mut worker, 21_000);
    assert_eq!(report.header.max_hold_ms, 0, "a VM shutting down wants its answer at once");
    assert_eq!(worker.unacknowledged_requests(), (1, 0));
    worker.finish_sync(21_010, ack(report.header.seq, weights(1, 0)));
    assert!(!worker.has_unreported_counts(), "acknowledged");
    assert_eq!(worker.unacknowledged_requests(), (0, 0));
}

/// Batched mode: the report handed to the reporter is the one the worker
/// keeps; the worker times it out itself (no HTTP call of its own carries a
/// timeout), and a VM shutting down stops waiting for the reporter so that
/// it can send the same report directly.
#[test]
fn batched_reports_time_out_at_the_sync_timeout_and_can_be_abandoned_for_a_direct_send() {
    let mut worker = worker();
    assert_eq!(worker.worker_id(), 7);
    worker.record(Version::Canary, StatusClass::Success, 300);
    let handed = worker.begin_sync(100).to_vec();
    assert_eq!(worker.unacked_report(), Some((1, 0, handed.as_slice())));
    assert_eq!(worker.unacked_seq(), Some(1));

    let timeout_ms = worker.sync_timeout_ms();
    assert!(!worker.sync_timed_out(100 + timeout_ms - 1));
    assert!(worker.sync_timed_out(100 + timeout_ms));
    let open_ms = worker.sync_open_ms(100 + timeout_ms);
    let outcome = worker.finish_sync(100 + timeout_ms, Err(SyncFailure::Timeout { open_ms }));
    assert!(outcome.failed);
    assert_eq!(worker.sync_timeouts_total(), 1);
    assert!(!worker.sync_timed_out(200 + timeout_ms), "nothing in flight after the failure");

    // Re-sent unchanged, then abandoned as the VM shuts down: the report
    // stays, so the direct final sync carries the same seq and bytes.
    assert_eq!(worker.begin_sync(2_000 + timeout_ms), handed.as_slice());
    assert!(worker.sync_in_flight());
    worker.abandon_sync();
    assert!(!worker.sync_in_flight() && worker.has_unreported_counts());
    assert_eq!(worker.begin_sync(2_001 + timeout_ms), handed.as_slice());
    assert_eq!(
        SyncFailure::NoReporter.to_string(),
        "no reporter VM in this Envoy could take the report (batched mode)"
    );
}

/// Batched mode: the next report is due as soon as one is acknowledged, and
/// weights the reporter pushes apply at once but only forwards; the report
/// in flight still carries the old applied version, so its acknowledgement
/// makes the confirming report due at once even in per-worker timing.
#[test]
fn batched_workers_report_right_after_each_ack_and_apply_pushed_weights_forwards_only() {
    let mut worker = worker();
    worker.set_batched(true);
    sent(&mut worker, 0);
    let outcome = worker.finish_sync(10, ack(1, weights(0, 0)));
    assert!(outcome.resync_now, "batched: the next report goes at once, not after the interval");

    let mut worker = worker_with_weights(weights(3, 100));
    assert_eq!(worker.apply_pushed_weights(weights(3, 900)), None, "the same version is not re-applied");
    assert_eq!(worker.apply_pushed_weights(weights(2, 900)), None, "an older version never undoes a newer one");
    let report = sent(&mut worker, 1_000);
    assert_eq!(report.header.weights_version, 3);
    assert_eq!(worker.apply_pushed_weights(weights(4, 0)), Some((weights(3, 100), weights(4, 0))));
    assert_eq!(worker.decide_random(), Version::Stable, "a pushed rollback applies at once");
    // The ack (same weights as pushed) still makes the confirming report due.
    let outcome = worker.finish_sync(1_010, ack(report.header.seq, weights(4, 0)));
    assert!(outcome.weights_changed.is_none() && outcome.resync_now);
    assert_eq!(sent(&mut worker, 1_010).header.weights_version, 4);
}

/// A per-worker worker that has applied `applied` through an ack.
fn worker_with_weights(applied: Weights) -> Worker {
    let mut worker = worker();
    sent(&mut worker, 0);
    worker.finish_sync(5, ack(1, applied));
    worker
}

/// A VM shutting down: every unacknowledged count leaves in at most two
/// reports, in seq order. The report out keeps its seq and bytes; what
/// accumulated since is cut into the next seq. The worker's own final sync
/// then sends exactly those, so whichever copy reaches the analyzer first is
/// the one counted.
#[test]
fn final_reports_carry_the_report_out_unchanged_and_cut_the_rest_into_the_next_seq() {
    let mut worker = worker();
    worker.record(Version::Stable, StatusClass::Success, 100);
    let out = worker.begin_sync(0).to_vec();
    worker.record(Version::Canary, StatusClass::Success, 100);
    worker.record(Version::Canary, StatusClass::Success, 100);
    assert_eq!(worker.unacknowledged_requests(), (1, 2));
    worker.stop_holding();

    let reports = worker.final_reports();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(reports[0], (1, out.clone()), "the report out, unchanged");
    let next = Report::decode(&reports[1].1).expect("valid report");
    assert_eq!((reports[1].0, next.header.seq, next.header.max_hold_ms), (2, 2, 0));
    assert_eq!((next.versions[0].requests, next.versions[1].requests), (0, 2));
    assert_eq!(worker.unacknowledged_requests(), (3, 0));
    assert_eq!(worker.final_reports(), reports, "asking again cuts nothing new");

    // The direct final sync: the report out (still in flight, re-sent
    // unchanged after a failure), then the one cut ahead, then nothing.
    worker.abandon_sync();
    assert_eq!(worker.begin_sync(10), out.as_slice());
    worker.finish_sync(20, ack(1, weights(0, 0)));
    assert!(worker.has_unreported_counts());
    assert_eq!(worker.begin_sync(30), reports[1].1.as_slice());
    worker.finish_sync(40, ack(2, weights(0, 0)));
    assert!(!worker.has_unreported_counts());
    assert_eq!(worker.unacknowledged_requests(), (0, 0));
}

#[test]
fn final_reports_cut_one_report_when_none_is_out_and_none_when_nothing_is_unacknowledged() {
    let mut worker = worker();
    assert!(worker.final_reports().is_empty());
    worker.record(Version::Stable, StatusClass::Success, 100);
    let reports = worker.final_reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].0, 1);
    assert!(!worker.sync_in_flight(), "cut, not sent");
    assert_eq!(worker.begin_sync(0), reports[0].1.as_slice(), "the final sync sends the same bytes");
    worker.finish_sync(10, ack(1, weights(0, 0)));
    assert!(worker.final_reports().is_empty());
}
