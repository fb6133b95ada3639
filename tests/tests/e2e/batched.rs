//! The two reporting modes, side by side: batched (`"batch_reports": true`,
//! the default: one VM per Envoy sends every worker's report in one
//! `POST /v1/filter/sync-batch`) and per worker (`false`: each VM its own
//! `POST /v1/filter/sync`). Each keeps the same promises, checked by the
//! same bodies as the default-mode suites: every request counted exactly
//! once, also across an analyzer crash; weight changes and rollbacks
//! confirmed by every VM, and nothing reaching canary after a confirmed
//! rollback. Here each also shows it used the mode it names.

use canary_tests::envoy::prometheus_value;
use canary_tests::{Stack, StackBuilder};
use serde_json::json;

use super::conservation::{analyzer_crash_keeps_the_split_and_every_count, assert_counts_converge};
use super::propagation::rollbacks_are_confirmed_and_final;

fn mode_stack(batched: bool) -> StackBuilder {
    super::stack().filter_config(json!({"batch_reports": batched}))
}

/// `name` on the analyzer's `/metrics`.
async fn analyzer_metric(stack: &Stack, name: &str) -> Option<f64> {
    let response = stack.analyzer_call(hyper::Method::GET, "/metrics", None).await.ok()?;
    prometheus_value(&response.text(), name)
}

async fn rollbacks_and_counts_in_mode(batched: bool) {
    let stack = rollbacks_are_confirmed_and_final(mode_stack(batched)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_reports_confirm_rollbacks_and_count_exactly() {
    rollbacks_and_counts_in_mode(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_worker_reports_confirm_rollbacks_and_count_exactly() {
    rollbacks_and_counts_in_mode(false).await;
}

/// The default mode is batched, so `conservation` covers it; this is the
/// same crash under per-worker syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_worker_reports_survive_an_analyzer_crash_and_count_exactly() {
    analyzer_crash_keeps_the_split_and_every_count(mode_stack(false)).await;
}
