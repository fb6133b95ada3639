use canary_protocol::{ReportHeader, SplitRng, StatusClass, VersionStats};

use super::*;

const T0_MS: u64 = 1_764_130_000_000;
const SETTINGS: AggregateSettings = AggregateSettings { window_seconds: 60, worker_stale_after_ms: 5_000 };

/// A request as a test writes it: version, status class, latency.
type Request = (Version, StatusClass, u64);

fn report(proxy_id: &str, worker_id: u64, seq: u64, weights_version: u64, requests: &[Request]) -> Report {
    let mut stats = [VersionStats::default(), VersionStats::default()];
    for &(version, class, latency_us) in requests {
        stats[version.index()].record(class, latency_us);
    }
    Report {
        header: ReportHeader {
            proxy_id: proxy_id.to_owned(),
            worker_id,
            seq,
            weights_version,
            counts_weights_version: weights_version,
            max_hold_ms: 1_000,
        },
        versions: [stats[0].to_delta(), stats[1].to_delta()],
    }
}

fn ok_stable(count: usize) -> Vec<Request> {
    // Below 256 µs buckets are exact, so quantiles come out exact too.
    vec![(Version::Stable, StatusClass::Success, 250); count]
}

fn requests(counts: &[VersionCounts; 2]) -> [u64; 2] {
    [counts[0].requests, counts[1].requests]
}

#[test]
fn duplicates_are_not_counted_twice() {
    // (worker, seq, stable requests in the report, expected duplicate, expected stable total)
    let steps: &[(u64, u64, usize, bool, u64)] = &[
        (1, 1, 5, false, 5),
        (1, 1, 5, true, 5),    // re-send after a lost ack
        (1, 2, 3, false, 8),   // next report
        (1, 2, 3, true, 8),    // re-send again
        (1, 1, 5, true, 8),    // an old seq is still a duplicate
        (2, 1, 4, false, 12),  // another worker has its own seq space
        (1, 3, 0, false, 12),  // an empty heartbeat advances the seq
        (1, 10, 1, false, 13), // gaps are accepted
    ];
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    for (step, &(worker_id, seq, count, duplicate, total)) in steps.iter().enumerate() {
        let outcome = aggregate.ingest(&report("envoy", worker_id, seq, 1, &ok_stable(count)), T0_MS);
        assert_eq!(outcome.duplicate, duplicate, "step {step}");
        assert_eq!(aggregate.totals()[0].requests, total, "step {step}");
        assert_eq!(aggregate.window_counts(T0_MS)[0].requests, total, "window, step {step}");
    }
    let workers: Vec<_> = aggregate.workers(T0_MS).map(|(key, worker)| (key.worker_id, worker.last_seq)).collect();
    assert_eq!(workers, [(1, 10), (2, 1)]);
}

#[test]
fn views_list_workers_by_proxy_whatever_the_table_order() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    // The table orders by worker id: (1, b), (2, a), (9, a).
    for (proxy_id, worker_id) in [("envoy-b", 1), ("envoy-a", 9), ("envoy-a", 2)] {
        aggregate.ingest(&report(proxy_id, worker_id, 1, 1, &ok_stable(1)), T0_MS);
    }
    let table: Vec<u64> = aggregate.worker_table().map(|(key, _)| key.worker_id).collect();
    assert_eq!(table, [1, 2, 9]);
    let view = aggregate.rollout_view(&aggregate.weights(), T0_MS);
    let listed: Vec<(&str, &str)> =
        view.data_plane.workers.iter().map(|worker| (worker.proxy_id.as_str(), worker.worker_id.as_str())).collect();
    assert_eq!(
        listed,
        [("envoy-a", "0000000000000002"), ("envoy-a", "0000000000000009"), ("envoy-b", "0000000000000001")]
    );
    let unconfirmed = aggregate.convergence(2, T0_MS).unconfirmed;
    let named: Vec<(&str, u64)> = unconfirmed.iter().map(|key| (key.proxy_id.as_str(), key.worker_id)).collect();
    assert_eq!(named, [("envoy-a", 2), ("envoy-a", 9), ("envoy-b", 1)]);
}

#[test]
fn same_worker_id_on_another_proxy_is_another_worker() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    assert!(!aggregate.ingest(&report("envoy-a", 7, 1, 1, &ok_stable(1)), T0_MS).duplicate);
    assert!(!aggregate.ingest(&report("envoy-b", 7, 1, 1, &ok_stable(1)), T0_MS).duplicate);
    assert_eq!(aggregate.totals()[0].requests, 2);
}

#[test]
fn ingested_counts_are_conserved_in_totals() {
    let mut rng = SplitRng::new(42);
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    let mut expected = [VersionStats::default(), VersionStats::default()];
    let classes = [
        StatusClass::Success,
        StatusClass::Redirect,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::NoResponse,
    ];
    for seq in 1..=200u64 {
        let worker_id = seq % 4;
        let mut requests = Vec::new();
        for _ in 0..(rng.next_u64() % 20) {
            let version = if rng.next_u64().is_multiple_of(10) { Version::Canary } else { Version::Stable };
            let class = classes[(rng.next_u64() % 5) as usize];
            let latency_us = rng.next_u64() % 2_000_000;
            requests.push((version, class, latency_us));
            expected[version.index()].record(class, latency_us);
        }
        // Worker seqs: each worker sees every fourth seq, still increasing.
        let now_ms = T0_MS + seq * 100;
        aggregate.ingest(&report("envoy", worker_id, seq, 1, &requests), now_ms);
        // Every fifth report is re-sent and must change nothing.
        if seq.is_multiple_of(5) {
            assert!(aggregate.ingest(&report("envoy", worker_id, seq, 1, &requests), now_ms).duplicate);
        }
    }
    for version in Version::ALL {
        let (got, want) = (&aggregate.totals()[version.index()], &expected[version.index()]);
        assert_eq!(got.requests, want.requests, "{version} requests");
        assert_eq!(got.status, want.status, "{version} status");
        assert_eq!(got.latency_us.counts(), want.latency_us.counts(), "{version} latency");
        assert_eq!(got.status.checked_total(), Some(got.requests), "{version} status adds up");
        assert_eq!(got.latency_us.total_count(), got.requests, "{version} histogram adds up");
    }
    // All 200 reports fell within 20 s, so the window holds them all too.
    let window = aggregate.window_counts(T0_MS + 20_000);
    assert_eq!(requests(&window), [expected[0].requests, expected[1].requests]);
}

#[test]
fn window_expires_old_seconds() {
    // (ingest offset ms, query offset ms, expected stable requests in the window)
    let cases: &[(u64, u64, u64)] = &[
        (0, 0, 1),
        (0, 999, 1),
        (0, 59_999, 1),
        (0, 60_000, 0),   // 60 whole seconds later the slot is out of the window
        (999, 59_999, 1), // whole seconds: the window is the last 60 of them
        (999, 60_000, 0),
        (0, 3_600_000, 0), // long after, even though the slot was never reused
    ];
    for &(ingest_ms, query_ms, expected) in cases {
        let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
        aggregate.ingest(&report("envoy", 1, 1, 1, &ok_stable(1)), T0_MS + ingest_ms);
        let window = aggregate.window_counts(T0_MS + query_ms);
        assert_eq!(window[0].requests, expected, "ingest +{ingest_ms} ms, query +{query_ms} ms");
        assert_eq!(aggregate.totals()[0].requests, 1, "totals never expire");
    }
}

#[test]
fn window_slots_are_reused_when_their_second_comes_round() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    for second in 0..120u64 {
        aggregate.ingest(&report("envoy", 1, second + 1, 1, &ok_stable(2)), T0_MS + second * 1_000);
    }
    // The last 60 seconds of 2 requests each.
    let now_ms = T0_MS + 119_000;
    assert_eq!(aggregate.window_counts(now_ms)[0].requests, 120);
    let view = aggregate.rollout_view(&aggregate.weights(), now_ms);
    assert_eq!(view.versions.stable.window.requests_per_second, 2.0);
    assert_eq!(aggregate.totals()[0].requests, 240);
}

#[test]
fn rate_counts_only_the_time_the_window_covers() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    aggregate.ingest(&report("envoy", 1, 1, 1, &ok_stable(30)), T0_MS);
    // 10 s after start: the window covers 10 s, not 60.
    let view = aggregate.rollout_view(&aggregate.weights(), T0_MS + 9_500);
    assert_eq!(view.versions.stable.window.requests_per_second, 3.0);
    let view = aggregate.rollout_view(&aggregate.weights(), T0_MS + 59_000);
    assert_eq!(view.versions.stable.window.requests_per_second, 0.5);
}

#[test]
fn quantiles_and_error_ratio_of_a_known_sample() {
    let mut requests = Vec::new();
    // 100 requests at 1..=100 ms; two 5xx and one without response.
    for ms in 1..=100u64 {
        let class = match ms {
            10 | 20 => StatusClass::ServerError,
            30 => StatusClass::NoResponse,
            40 => StatusClass::ClientError,
            _ => StatusClass::Success,
        };
        requests.push((Version::Canary, class, ms * 1_000));
    }
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    aggregate.ingest(&report("envoy", 1, 1, 1, &requests), T0_MS);
    let summary = aggregate.totals()[Version::Canary.index()].summary();
    assert_eq!(summary.requests, 100);
    assert_eq!(summary.errors, 3, "5xx and no response count as errors, 4xx does not");
    assert_eq!(summary.error_ratio, Some(0.03));
    assert_eq!(
        summary.status,
        StatusView { status_2xx: 96, status_3xx: 0, status_4xx: 1, status_5xx: 2, no_response: 1 }
    );
    // Nearest rank: p50 is the 50th sample (50 ms), p95 the 95th, p99 the 99th,
    // each reported at most 0.8% high and never low.
    for (got, exact_ms) in [(summary.p50_ms, 50.0), (summary.p95_ms, 95.0), (summary.p99_ms, 99.0)] {
        let got = got.expect("non-empty");
        assert!(got >= exact_ms && got <= exact_ms * (1.0 + 1.0 / 128.0), "{got} vs {exact_ms}");
    }

    let stable = aggregate.totals()[Version::Stable.index()].summary();
    assert_eq!(stable.requests, 0);
    assert_eq!((stable.error_ratio, stable.p50_ms, stable.p95_ms, stable.p99_ms), (None, None, None, None));
}

#[test]
fn since_change_counts_only_traffic_under_the_current_weights() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    aggregate.ingest(&report("envoy", 1, 1, 1, &ok_stable(5)), T0_MS);
    assert_eq!(aggregate.since_weights_change()[0].requests, 5);

    let changed = aggregate.change_weight(CanaryWeight::from_bp(1_000).expect("valid"), T0_MS + 1);
    assert_eq!(changed.map(|record| record.weights.weights_version), Some(2));
    assert_eq!(aggregate.since_weights_change()[0].requests, 0, "a change restarts the comparison");

    // Routed under version 1 but arriving after the change: totals only.
    aggregate.ingest(&report("envoy", 1, 2, 1, &ok_stable(3)), T0_MS + 2);
    assert_eq!(aggregate.since_weights_change()[0].requests, 0);
    // The report that confirms version 2 still carries counts routed under
    // version 1 (the filter labels them so): totals only, but converged.
    let mut confirming = report("envoy", 1, 3, 2, &ok_stable(6));
    confirming.header.counts_weights_version = 1;
    aggregate.ingest(&confirming, T0_MS + 3);
    assert_eq!(aggregate.since_weights_change()[0].requests, 0);
    assert!(aggregate.convergence(2, T0_MS + 3).unconfirmed.is_empty());
    aggregate.ingest(&report("envoy", 1, 4, 2, &ok_stable(4)), T0_MS + 4);
    assert_eq!(aggregate.since_weights_change()[0].requests, 4);
    assert_eq!(aggregate.totals()[0].requests, 18);

    // The same weight again is not a change.
    assert_eq!(aggregate.change_weight(CanaryWeight::from_bp(1_000).expect("valid"), T0_MS + 5), None);
    assert_eq!(aggregate.weights().weights.weights_version, 2);
    assert_eq!(aggregate.since_weights_change()[0].requests, 4);
}

#[test]
fn newer_weights_from_the_weights_file_win_at_startup_and_restart_the_comparison() {
    let record = |weights_version, bp| WeightsRecord {
        weights: Weights { weights_version, canary_weight: CanaryWeight::from_bp(bp).expect("valid") },
        changed_at_unix_ms: T0_MS + weights_version,
    };
    let restored = || {
        let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
        aggregate.change_weight(CanaryWeight::from_bp(1_000).expect("valid"), T0_MS + 2);
        aggregate.ingest(&report("envoy", 1, 1, 2, &ok_stable(5)), T0_MS + 3);
        assert_eq!((aggregate.weights(), aggregate.since_weights_change()[0].requests), (record(2, 1_000), 5));
        aggregate
    };
    // (weights file's record, taken?, weights after, since-change requests after)
    let table = [
        (record(3, 0), true, record(3, 0), 0), // a rollback the state file has not caught up with
        (record(2, 1_000), false, record(2, 1_000), 5), // the same change: nothing to do
        (record(1, 0), false, record(2, 1_000), 5), // the state file is ahead
        (record(2, 0), true, record(2, 0), 0), // same version, lower weight: the safe one
        (record(2, 2_000), false, record(2, 1_000), 5), // same version, higher weight: never
    ];
    for (file_record, taken, weights, since) in table {
        let mut aggregate = restored();
        assert_eq!(aggregate.adopt_newer_weights(file_record), taken, "{file_record:?}");
        assert_eq!(aggregate.weights(), weights, "{file_record:?}");
        assert_eq!(aggregate.since_weights_change()[0].requests, since, "{file_record:?}");
        assert_eq!(aggregate.totals()[0].requests, 5, "totals never change: {file_record:?}");
    }
}

#[test]
fn convergence_and_liveness_table() {
    // (worker, applied version, last seen ms before now)
    let workers: &[(u64, u64, u64)] = &[
        (1, 3, 0),     // live, converged
        (2, 3, 4_999), // live, converged
        (3, 2, 5_000), // live (the bound is inclusive), not converged
        (4, 2, 5_001), // stale: does not hold convergence back
        (5, 4, 100),   // ahead: has applied a later version
    ];
    let now_ms = T0_MS + 100_000;
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    for &(worker_id, applied, age_ms) in workers {
        aggregate.ingest(&report("envoy", worker_id, 1, applied, &[]), now_ms - age_ms);
    }
    let convergence = aggregate.convergence(3, now_ms);
    assert_eq!(convergence.workers_total, 4);
    assert_eq!(convergence.workers_confirmed, 3);
    assert_eq!(convergence.unconfirmed, [WorkerKey { proxy_id: "envoy".into(), worker_id: 3 }]);
    assert_eq!(convergence.next_stale_at_unix_ms, Some(now_ms + 1), "worker 3 goes stale 1 ms from now");
    assert!(aggregate.convergence(3, now_ms + 1).is_confirmed());
    assert!(aggregate.convergence(2, now_ms).is_confirmed());

    let mut published = aggregate.weights();
    published.weights.weights_version = 3;
    let view = aggregate.rollout_view(&published, now_ms);
    let summary: Vec<_> = view.data_plane.workers.iter().map(|w| (w.live, w.converged, w.last_report_age_ms)).collect();
    assert_eq!(
        summary,
        [(true, true, 0), (true, true, 4_999), (true, false, 5_000), (false, false, 5_001), (true, false, 100)]
    );
    assert_eq!(view.data_plane.live_workers, 4);
    assert_eq!(view.data_plane.converged_workers, 2, "converged means applied exactly the current version");
    assert!(!view.data_plane.converged);
}

#[test]
fn applied_version_changes_are_reported_for_waiters() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    let check = |aggregate: &mut Aggregate, seq: u64, version: u64, expected: (bool, bool)| {
        let outcome = aggregate.ingest(&report("envoy", 1, seq, version, &[]), T0_MS);
        assert_eq!((outcome.duplicate, outcome.applied_version_changed), expected, "seq {seq} version {version}");
    };
    check(&mut aggregate, 1, 1, (false, true)); // a new worker
    check(&mut aggregate, 2, 1, (false, false));
    check(&mut aggregate, 2, 2, (true, true)); // a duplicate still records the applied version
    check(&mut aggregate, 3, 2, (false, false));
    assert_eq!(aggregate.workers(T0_MS).next().map(|(_, worker)| worker.applied_weights_version), Some(2));
}

#[test]
fn silent_workers_are_forgotten_after_ten_minutes_not_before() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    aggregate.ingest(&report("envoy", 1, 1, 1, &[]), T0_MS);
    aggregate.ingest(&report("envoy", 2, 1, 1, &[]), T0_MS);
    // Worker 2 keeps reporting; worker 1 falls silent.
    let mut now_ms = T0_MS;
    for seq in 2..=20u64 {
        now_ms = T0_MS + seq * 30_000; // up to 10 minutes
        aggregate.ingest(&report("envoy", 2, seq, 1, &[]), now_ms);
    }
    assert_eq!(now_ms - T0_MS, FORGET_WORKER_AFTER_MS);
    assert_eq!(aggregate.workers(now_ms).count(), 2, "exactly 10 minutes of silence is remembered");
    aggregate.ingest(&report("envoy", 2, 21, 1, &[]), now_ms + 1_000);
    let remaining: Vec<u64> = aggregate.workers(now_ms + 1_000).map(|(key, _)| key.worker_id).collect();
    assert_eq!(remaining, [2]);
    assert_eq!(aggregate.worker_table().count(), 1, "forgotten workers leave the table and the state file");
}

#[test]
fn rollout_view_has_the_documented_json_shape() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    aggregate.ingest(&report("envoy-local", 0xdead_beef, 17, 1, &ok_stable(3)), T0_MS);
    let json = serde_json::to_value(aggregate.rollout_view(&aggregate.weights(), T0_MS + 120)).expect("serializes");
    assert_eq!(json["canary_weight_percent"], 0.0);
    assert_eq!(json["canary_weight_bp"], 0);
    assert_eq!(json["weights_version"], 1);
    assert_eq!(json["weights_changed_at_unix_ms"], T0_MS);
    let window = &json["versions"]["stable"]["window"];
    assert_eq!(window["seconds"], 60);
    assert_eq!(window["requests"], 3);
    assert_eq!(window["status"]["2xx"], 3);
    assert_eq!(window["p50_ms"], 0.25);
    assert_eq!(json["versions"]["stable"]["since_weights_change"]["requests"], 3);
    assert_eq!(json["versions"]["canary"]["total"]["error_ratio"], serde_json::Value::Null);
    assert_eq!(json["versions"]["canary"]["total"]["p99_ms"], serde_json::Value::Null);
    let worker = &json["data_plane"]["workers"][0];
    assert_eq!(worker["worker_id"], "00000000deadbeef");
    assert_eq!(worker["last_seq"], 17);
    assert_eq!(worker["last_report_age_ms"], 120);
    assert_eq!(json["data_plane"]["converged"], true);
}
