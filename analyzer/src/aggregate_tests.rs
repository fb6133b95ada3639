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
    let page = aggregate.workers_page(&everything(), 1, T0_MS);
    let listed: Vec<(&str, &str)> =
        page.workers.iter().map(|worker| (worker.proxy_id.as_str(), worker.worker_id.as_str())).collect();
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
    let page = aggregate.workers_page(&everything(), 3, now_ms);
    let summary: Vec<_> = page.workers.iter().map(|w| (w.live, w.converged, w.last_report_age_ms)).collect();
    assert_eq!(
        summary,
        [(true, true, 0), (true, true, 4_999), (true, false, 5_000), (false, false, 5_001), (true, false, 100)]
    );
    let plane = &view.data_plane;
    assert_eq!((plane.workers_total, plane.live_workers, plane.live_proxies), (5, 4, 1));
    assert_eq!(plane.converged_workers, 2, "converged means applied exactly the current version");
    assert!(!plane.converged);
    // Behind first, then ahead; the stale worker 4 holds nothing back.
    let lagging: Vec<(&str, u64, bool)> =
        plane.lagging.iter().map(|w| (w.worker_id.as_str(), w.applied_weights_version, w.live)).collect();
    assert_eq!(lagging, [("0000000000000003", 2, true), ("0000000000000005", 4, true)]);
    assert_eq!(plane.lagging_total, 2);
}

/// A request for the whole table in one page.
fn everything() -> PageRequest {
    PageRequest { limit: usize::MAX, after: None, proxy: None }
}

#[test]
fn lagging_workers_are_the_oldest_first_and_cut_at_the_limit() {
    // 30 proxies × 5 workers; worker w of proxy p has applied version
    // 1 + (p + w) % 4, and version 4 is published. So 3 in 4 lag.
    let now_ms = T0_MS + 60_000;
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    for proxy in 0..30u64 {
        for worker in 0..5u64 {
            // Worker ids against the proxy order, so that the table's
            // order (by worker id) is not the answer.
            let worker_id = 1_000 - proxy * 10 - worker;
            let applied = 1 + (proxy + worker) % 4;
            aggregate.ingest(&report(&format!("envoy-{proxy:02}"), worker_id, 1, applied, &[]), now_ms);
        }
    }
    // Two stale workers of an old version, and one of a proxy that is
    // otherwise not live: neither listed nor counted as live.
    aggregate.ingest(&report("envoy-00", 5_000, 1, 1, &[]), now_ms - 6_000);
    aggregate.ingest(&report("envoy-stale", 5_001, 1, 1, &[]), now_ms - 6_000);
    let mut published = aggregate.weights();
    published.weights.weights_version = 4;
    let plane = aggregate.rollout_view(&published, now_ms).data_plane;

    let every: Vec<(u64, String, u64)> = {
        let mut every = Vec::new();
        for proxy in 0..30u64 {
            for worker in 0..5u64 {
                let applied = 1 + (proxy + worker) % 4;
                if applied != 4 {
                    every.push((applied, format!("envoy-{proxy:02}"), 1_000 - proxy * 10 - worker));
                }
            }
        }
        every.sort();
        every
    };
    assert_eq!(plane.lagging_total, every.len());
    assert!(plane.lagging_total > LAGGING_LISTED_MAX, "the test must cut the list");
    let listed: Vec<(u64, String, u64)> = plane
        .lagging
        .iter()
        .map(|w| {
            let worker_id = u64::from_str_radix(&w.worker_id, 16).expect("hex");
            (w.applied_weights_version, w.proxy_id.clone(), worker_id)
        })
        .collect();
    assert_eq!(listed, every[..LAGGING_LISTED_MAX], "oldest version first, then by proxy and worker");
    assert!(plane.lagging.iter().all(|w| w.live && !w.converged));
    assert_eq!(plane.live_workers, 150);
    assert_eq!(plane.live_proxies, 30, "the stale proxy is not live");
    assert_eq!(plane.workers_total, 152);
    assert_eq!(plane.converged_workers, 150 - every.len());
    assert!(!plane.converged);

    // On the published version, nobody lags.
    let mut all_on_1 = Aggregate::new(SETTINGS, T0_MS);
    all_on_1.ingest(&report("envoy", 1, 1, 1, &[]), T0_MS);
    let plane = all_on_1.rollout_view(&all_on_1.weights(), T0_MS).data_plane;
    assert!(plane.converged && plane.lagging.is_empty() && plane.lagging_total == 0, "{plane:?}");
}

/// Every worker id of a page, as (proxy, worker id).
fn listed(page: &WorkersPage) -> Vec<(String, u64)> {
    page.workers.iter().map(|w| (w.proxy_id.clone(), u64::from_str_radix(&w.worker_id, 16).expect("hex"))).collect()
}

#[test]
fn pages_list_every_worker_once_in_proxy_order() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    let mut expected = Vec::new();
    for proxy in ["envoy-c", "envoy-a", "envoy/with/slashes", "envoy-b"] {
        for worker_id in [u64::MAX, 7, 0, 1 << 40] {
            aggregate.ingest(&report(proxy, worker_id, 1, 1, &[]), T0_MS);
            expected.push((proxy.to_owned(), worker_id));
        }
    }
    expected.sort();
    for limit in [1, 3, 4, 5, 16, 17, 1_000] {
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = aggregate.workers_page(&PageRequest { limit, after, proxy: None }, 1, T0_MS);
            assert_eq!(page.total, 16, "limit {limit}");
            assert!(page.workers.len() <= limit);
            seen.extend(listed(&page));
            pages += 1;
            let Some(next) = page.next else { break };
            after = Some(WorkerKey::from_cursor(&next).expect("a page's next is a cursor"));
        }
        assert_eq!(seen, expected, "limit {limit}");
        assert_eq!(pages, expected.len().div_ceil(limit), "limit {limit}: no empty last page");
    }

    // One proxy, paged; a cursor of another proxy is a position.
    let only_b = |limit, after: Option<&str>| {
        let after = after.map(|cursor| WorkerKey::from_cursor(cursor).expect("cursor"));
        aggregate.workers_page(&PageRequest { limit, after, proxy: Some("envoy-b".into()) }, 1, T0_MS)
    };
    let first = only_b(3, None);
    assert_eq!(listed(&first), [("envoy-b".into(), 0), ("envoy-b".into(), 7), ("envoy-b".into(), 1 << 40)]);
    assert_eq!(first.total, 4);
    assert_eq!(first.next.as_deref(), Some("envoy-b/0000010000000000"));
    let second = only_b(3, first.next.as_deref());
    assert_eq!(listed(&second), [("envoy-b".to_owned(), u64::MAX)]);
    assert_eq!(second.next, None);
    assert_eq!(listed(&only_b(10, Some("envoy-a/ffffffffffffffff"))).len(), 4, "a cursor before the proxy");
    assert_eq!(only_b(10, Some("envoy-c/0000000000000000")).workers.len(), 0, "a cursor after the proxy");
    let unknown =
        aggregate.workers_page(&PageRequest { limit: 10, after: None, proxy: Some("envoy-z".into()) }, 1, T0_MS);
    assert!(unknown.workers.is_empty() && unknown.next.is_none() && unknown.total == 0, "{unknown:?}");

    // Past the end: an empty last page, whether or not the cursor's worker
    // exists.
    for cursor in ["envoy/with/slashes/ffffffffffffffff", "zzz/0000000000000000"] {
        let after = Some(WorkerKey::from_cursor(cursor).expect("cursor"));
        let page = aggregate.workers_page(&PageRequest { limit: 5, after, proxy: None }, 1, T0_MS);
        assert!(page.workers.is_empty() && page.next.is_none(), "{cursor}: {page:?}");
        assert_eq!(page.total, 16);
    }
}

#[test]
fn pages_skip_forgotten_workers_and_follow_the_table_through_pruning_and_restore() {
    let mut aggregate = Aggregate::new(SETTINGS, T0_MS);
    aggregate.ingest(&report("envoy-a", 1, 1, 1, &[]), T0_MS);
    aggregate.ingest(&report("envoy-b", 2, 1, 1, &[]), T0_MS + FORGET_WORKER_AFTER_MS);
    // Worker 1 is past the limit but not pruned yet (no ingest since).
    let now_ms = T0_MS + FORGET_WORKER_AFTER_MS + 1;
    let page = aggregate.workers_page(&everything(), 1, now_ms);
    assert_eq!((listed(&page), page.total), (vec![("envoy-b".to_owned(), 2)], 1));
    let only_a = PageRequest { limit: 10, after: None, proxy: Some("envoy-a".into()) };
    assert_eq!(aggregate.workers_page(&only_a, 1, now_ms).total, 0);
    assert_eq!(aggregate.rollout_view(&aggregate.weights(), now_ms).data_plane.workers_total, 1);

    // Pruned, then a worker of the same key comes back: listed once.
    aggregate.ingest(&report("envoy-b", 2, 2, 1, &[]), now_ms + 1_000);
    aggregate.ingest(&report("envoy-a", 1, 1, 1, &[]), now_ms + 1_000);
    let page = aggregate.workers_page(&everything(), 1, now_ms + 1_000);
    assert_eq!(listed(&page), [("envoy-a".to_owned(), 1), ("envoy-b".to_owned(), 2)]);

    // Restored from the state file's parts: the proxy order is rebuilt.
    let parts = DurableParts {
        weights: aggregate.weights(),
        totals: Default::default(),
        since_weights_change: Default::default(),
        workers: aggregate.worker_table().map(|(key, worker)| (key.clone(), *worker)).collect(),
    };
    let restored = Aggregate::restore(SETTINGS, now_ms + 1_000, parts);
    assert_eq!(listed(&restored.workers_page(&everything(), 1, now_ms + 1_000)), listed(&page));
}

#[test]
fn cursor_table() {
    let key = |proxy: &str, worker_id| WorkerKey { proxy_id: proxy.into(), worker_id };
    for (text, expected) in [
        ("envoy/00000000deadbeef", Ok(key("envoy", 0xdead_beef))),
        ("a/b/ffffffffffffffff", Ok(key("a/b", u64::MAX))),
        ("envoy", Err("no '/'")),
        ("/0000000000000001", Err("proxy id")),
        ("envoy/1", Err("16 lowercase hex")),
        ("envoy/00000000DEADBEEF", Err("16 lowercase hex")),
        ("envoy/+000000000000001", Err("16 lowercase hex")),
        ("envoy/00000000deadbeef0", Err("16 lowercase hex")),
    ] {
        let parsed = WorkerKey::from_cursor(text);
        match expected {
            Ok(expected) => {
                assert_eq!(parsed.as_ref(), Ok(&expected), "{text}");
                assert_eq!(expected.cursor(), text, "round trip");
            }
            Err(words) => assert!(parsed.is_err_and(|why| why.contains(words)), "{text}"),
        }
    }
    let long = format!("{}/0000000000000001", "p".repeat(256));
    assert!(WorkerKey::from_cursor(&long).is_err_and(|why| why.contains("1..=255")));
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
    assert_eq!(
        json["data_plane"],
        serde_json::json!({
            "live_workers": 1, "converged_workers": 1, "converged": true, "live_proxies": 1,
            "workers_total": 1, "lagging": [], "lagging_total": 0,
        })
    );
    let mut published = aggregate.weights();
    published.weights.weights_version = 2;
    let json = serde_json::to_value(aggregate.rollout_view(&published, T0_MS + 120)).expect("serializes");
    assert_eq!(
        json["data_plane"]["lagging"],
        serde_json::json!([{
            "proxy_id": "envoy-local", "worker_id": "00000000deadbeef", "applied_weights_version": 1,
            "last_seq": 17, "last_report_age_ms": 120, "live": true, "converged": false,
        }])
    );
    let page = serde_json::to_value(aggregate.workers_page(&everything(), 1, T0_MS + 120)).expect("serializes");
    assert_eq!(
        page,
        serde_json::json!({
            "workers": [{
                "proxy_id": "envoy-local", "worker_id": "00000000deadbeef", "applied_weights_version": 1,
                "last_seq": 17, "last_report_age_ms": 120, "live": true, "converged": true,
            }],
            "next": null,
            "total": 1,
        })
    );
}
