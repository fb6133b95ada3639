//! Every request is counted exactly once, for the version that served it:
//! the analyzer's totals and Envoy's native counters equal what the backends
//! served, also across an analyzer crash (the filter keeps unacknowledged
//! reports and resends them; the analyzer drops duplicates by sequence).

use std::time::Duration;

use canary_protocol::Version;
use canary_tests::envoy::prometheus_value;
use canary_tests::rollout::phase_of;
use canary_tests::stats::{Z_99_9, binomial_interval};
use canary_tests::{BackendOpts, Load, Stack, StopMode, anyhow, eventually};

use super::{assert_all_answered, assert_confirmed, total};

/// Waits until the analyzer's per-version totals (requests and errors) and
/// Envoy's `canary_split_requests_*` counters equal the backends' counts.
pub(super) async fn assert_counts_converge(stack: &Stack) {
    let [stable, canary] = stack.served().await.expect("backend stats");
    eventually!("analyzer and Envoy counts equal the backends'", {
        let rollout = stack.rollout().await?;
        let prometheus = stack.envoy_prometheus().await?;
        for (version, served) in [(Version::Stable, stable), (Version::Canary, canary)] {
            let requests = total(&rollout, version, "requests");
            let errors = total(&rollout, version, "errors");
            anyhow::ensure!(
                requests == Some(served.served) && errors == Some(served.errors),
                "{version}: analyzer total requests {requests:?} errors {errors:?}, backend served {} errors {}",
                served.served,
                served.errors
            );
            let native = prometheus_value(&prometheus, &format!("canary_split_requests_{version}"));
            anyhow::ensure!(
                native == Some(served.served as f64),
                "{version}: Envoy counter {native:?}, backend served {}",
                served.served
            );
        }
        Ok(())
    });
    eprintln!("conserved: stable {stable:?}, canary {canary:?} (analyzer and Envoy agree exactly)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyzer_totals_equal_backend_counts_across_weight_changes() {
    let stack = super::stack()
        .stable(BackendOpts::default().error_rate(0.005))
        .canary(BackendOpts::default().error_rate(0.02))
        .start()
        .await
        .expect("stack starts");
    for canary_percent in [0.0, 25.0, 75.0, 100.0, 5.0] {
        if canary_percent > 0.0 {
            let answer = stack.set_weight(canary_percent).await.expect("set weight");
            assert_confirmed(&answer, stack.concurrency() as u64);
        }
        let report = stack.load(Load::requests(3_000)).await;
        assert_all_answered(&report, &[200, 500]);
    }
    assert_counts_converge(&stack).await;
}

/// The analyzer is killed (`kill -9`) and restarted while traffic flows:
/// no request fails in the proxy (every response comes from a backend),
/// the workers keep the split they had (fail-static), and after the restart
/// the weight, its version and the rollout phase are unchanged and every
/// request is counted exactly once. (The rollout tests check a `kill -9` in
/// the middle of a rollout step.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_survives_an_analyzer_crash_and_counts_recover_exactly() {
    analyzer_crash_keeps_the_split_and_every_count(super::stack()).await;
}

/// The crash case above on the stack `builder` makes (the reporting-mode
/// tests run it in both modes).
pub(super) async fn analyzer_crash_keeps_the_split_and_every_count(builder: canary_tests::StackBuilder) {
    let mut stack = builder.start().await.expect("stack starts");
    let answer = stack.set_weight(50.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let weights_version = answer["weights_version"].clone();
    let phase_before = phase_of(&stack.rollout().await.expect("rollout")).map(str::to_owned);
    assert_all_answered(&stack.load(Load::requests(2_000)).await, &[200]);

    // Paced so the analyzer is down for a good part of the run and comes
    // back while requests still flow; bounded in count and time.
    let load = stack.start_background_load(
        Load::requests(20_000).rate_per_second(2_000.0).concurrency(16).max_duration(Duration::from_secs(30)),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.stop_analyzer(StopMode::Kill).await.expect("kill analyzer");
    eventually!("Envoy counts sync failures while the analyzer is down", {
        let failures = prometheus_value(&stack.envoy_prometheus().await?, "canary_split_sync_failures");
        anyhow::ensure!(failures.is_some_and(|failures| failures > 0.0), "canary_split_sync_failures = {failures:?}");
        Ok(())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.start_analyzer_again().await.expect("analyzer restarts on the same port and state");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;

    // No proxy-made errors: every response carries the backend's marker.
    assert_all_answered(&report, &[200]);
    assert_eq!(report.served_by("none"), 0, "Envoy answered itself: {:?}", report.served_by);
    // Fail-static: the workers kept the last weights they applied.
    let requests = report.sent;
    let share = report.served_by("canary") as f64 / requests as f64;
    let (low, high) = binomial_interval(0.5, requests, Z_99_9);
    eprintln!(
        "analyzer kill -9 and restart under load: canary share {:.2}% of {requests} (99.9% interval {:.2}%..{:.2}%)",
        share * 100.0,
        low * 100.0,
        high * 100.0
    );
    assert!((low..=high).contains(&share), "split across the crash {share} outside [{low}, {high}]");

    let rollout = stack.rollout().await.expect("rollout");
    assert_eq!(rollout["canary_weight_bp"], 5_000, "weight survives the restart: {rollout}");
    assert_eq!(rollout["weights_version"], weights_version, "weights version survives the restart: {rollout}");
    assert_eq!(phase_of(&rollout).map(str::to_owned), phase_before, "rollout phase survives the restart");
    assert_counts_converge(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_percentiles_reflect_each_versions_backend() {
    let canary_latency_ms = 20;
    let stack = super::stack()
        .canary(BackendOpts::default().latency_ms(canary_latency_ms))
        .start()
        .await
        .expect("stack starts");
    let answer = stack.set_weight(50.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    assert_all_answered(&stack.load(Load::requests(2_000)).await, &[200]);
    assert_counts_converge(&stack).await;

    let rollout = stack.rollout().await.expect("rollout");
    let percentile = |version: &str, key: &str| rollout["versions"][version]["total"][key].as_f64();
    let (stable_p50, canary_p50) = (percentile("stable", "p50_ms"), percentile("canary", "p50_ms"));
    eprintln!(
        "latency: stable p50/p99 {stable_p50:?}/{:?} ms, canary (+{canary_latency_ms} ms) p50/p99 {canary_p50:?}/{:?} ms",
        percentile("stable", "p99_ms"),
        percentile("canary", "p99_ms")
    );
    // The histogram has ~1% resolution; Envoy adds a little on top.
    assert!(canary_p50.is_some_and(|p50| p50 >= 0.97 * canary_latency_ms as f64), "canary p50 {canary_p50:?}");
    assert!(stable_p50.is_some_and(|p50| p50 < canary_latency_ms as f64 / 2.0), "stable p50 {stable_p50:?}");
}
