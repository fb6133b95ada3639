//! The two reporting modes, side by side: batched (`"batch_reports": true`,
//! the default: one VM per Envoy sends every worker's report in one
//! `POST /v1/filter/sync-batch`) and per worker (`false`: each VM its own
//! `POST /v1/filter/sync`). Each keeps the same promises: every request
//! counted exactly once, also across an analyzer crash; weight changes and
//! rollbacks confirmed by every VM, and nothing reaching canary after a
//! confirmed rollback. The other suites run in the default mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use canary_protocol::Version;
use canary_tests::envoy::prometheus_value;
use canary_tests::{Load, StackBuilder, StopMode, anyhow, eventually};
use serde_json::json;

use super::conservation::assert_counts_converge;
use super::{assert_all_answered, assert_confirmed};

const CYCLES: usize = 3;

fn mode_stack(batched: bool) -> StackBuilder {
    super::stack().filter_config(json!({"batch_reports": batched}))
}

/// `name` on the analyzer's `/metrics`.
async fn analyzer_metric(stack: &canary_tests::Stack, name: &str) -> Option<f64> {
    let response = stack.analyzer_call(hyper::Method::GET, "/metrics", None).await.ok()?;
    prometheus_value(&response.text(), name)
}

async fn rollbacks_are_confirmed_and_counts_exact(batched: bool) {
    let stack = Arc::new(mode_stack(batched).start().await.expect("stack starts"));
    let workers = stack.concurrency() as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let stack = Arc::clone(&stack);
        let load = Load::requests(1_000_000)
            .rate_per_second(1_000.0)
            .concurrency(8)
            .max_duration(Duration::from_secs(60))
            .stop_flag(Arc::clone(&stop));
        tokio::spawn(async move { stack.load(load).await })
    };
    let mut set_ms = Vec::new();
    let mut rollback_ms = Vec::new();
    for _ in 0..CYCLES {
        let answer = stack.set_weight(50.0).await.expect("set weight");
        set_ms.push(assert_confirmed(&answer, workers));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let answer = stack.rollback().await.expect("rollback");
        assert_eq!(answer["canary_weight_bp"], 0, "{answer}");
        rollback_ms.push(assert_confirmed(&answer, workers));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let background = background.await.expect("background load");
    assert_all_answered(&background, &[200]);
    assert!(background.served_by("canary") > 0, "the 50% phases reached canary: {:?}", background.served_by);
    eprintln!("batch_reports {batched}: propagation set 50% {set_ms:.1?} ms, rollback {rollback_ms:.1?} ms");

    let canary_before = stack.backend_stats(Version::Canary).await.expect("stats").served;
    let after = stack.load(Load::requests(2_000)).await;
    assert_eq!(after.served_by("stable"), 2_000, "after the confirmed rollback: {:?}", after.served_by);
    let canary_after = stack.backend_stats(Version::Canary).await.expect("stats").served;
    assert_eq!(canary_after, canary_before, "canary got requests after the confirmed rollback");

    assert_counts_converge(&stack).await;
    let batches = analyzer_metric(&stack, "canary_report_batches_total").await.unwrap_or(0.0);
    let reports = analyzer_metric(&stack, "canary_reports_received_total").await.unwrap_or(0.0);
    eprintln!("batch_reports {batched}: {reports} reports in {batches} batches");
    let log = stack.envoy_log();
    if batched {
        // One exchange carried several VMs' reports.
        assert!(batches > 0.0 && reports > 1.5 * batches, "{reports} reports in {batches} batches");
        assert!(log.contains("this VM is now this Envoy's reporter"), "no reporter in the Envoy log:\n{log}");
    } else {
        assert_eq!(batches, 0.0, "per-worker syncs send no batch");
        assert!(reports > 0.0);
        assert!(!log.contains("reporter"), "a reporter in per-worker mode:\n{log}");
    }
}

async fn an_analyzer_crash_loses_and_doubles_nothing(batched: bool) {
    let mut stack = mode_stack(batched).start().await.expect("stack starts");
    let answer = stack.set_weight(50.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let load = stack.start_background_load(
        Load::requests(20_000).rate_per_second(2_000.0).concurrency(16).max_duration(Duration::from_secs(30)),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.stop_analyzer(StopMode::Kill).await.expect("kill analyzer");
    eventually!("Envoy counts failed syncs while the analyzer is down", {
        let failures = prometheus_value(&stack.envoy_prometheus().await?, "canary_split_sync_failures");
        anyhow::ensure!(failures.is_some_and(|failures| failures > 0.0), "canary_split_sync_failures = {failures:?}");
        Ok(())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.start_analyzer_again().await.expect("analyzer restarts on the same port and state");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    assert_all_answered(&report, &[200]);
    assert_eq!(report.served_by("none"), 0, "Envoy answered itself: {:?}", report.served_by);
    let rollout = stack.rollout().await.expect("rollout");
    assert_eq!(rollout["canary_weight_bp"], 5_000, "weight survives the restart: {rollout}");
    assert_counts_converge(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_reports_confirm_rollbacks_and_count_exactly() {
    rollbacks_are_confirmed_and_counts_exact(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_worker_reports_confirm_rollbacks_and_count_exactly() {
    rollbacks_are_confirmed_and_counts_exact(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_reports_survive_an_analyzer_crash_and_count_exactly() {
    an_analyzer_crash_loses_and_doubles_nothing(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_worker_reports_survive_an_analyzer_crash_and_count_exactly() {
    an_analyzer_crash_loses_and_doubles_nothing(false).await;
}
