//! Weight changes and rollbacks reach every worker, and the API says so only
//! once they have.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use canary_protocol::Version;
use canary_tests::{Load, anyhow, eventually};
use serde_json::json;

use super::{assert_all_answered, assert_confirmed, total};

/// Set-then-rollback cycles; each gives two propagation measurements.
const CYCLES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_is_confirmed_and_nothing_reaches_canary_after_it() {
    rollbacks_are_confirmed_and_final(super::stack()).await;
}

/// Set-then-rollback cycles under steady load on the stack `builder`
/// makes: every change confirmed by every VM, and nothing reaching canary
/// once a rollback is confirmed. Returns the stack for more checks (the
/// reporting-mode tests run it in both modes).
pub(super) async fn rollbacks_are_confirmed_and_final(builder: canary_tests::StackBuilder) -> Arc<canary_tests::Stack> {
    let stack = Arc::new(builder.start().await.expect("stack starts"));
    let workers = stack.concurrency() as u64;

    // Steady background traffic, as in production: propagation must not
    // depend on an idle proxy.
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

    let mut workers_confirmed = Vec::new();
    let mut set_ms = Vec::new();
    let mut rollback_ms = Vec::new();
    for _ in 0..CYCLES {
        let answer = stack.set_weight(50.0).await.expect("set weight");
        assert_eq!(answer["canary_weight_bp"], 5_000, "{answer}");
        set_ms.push(assert_confirmed(&answer, workers));
        tokio::time::sleep(Duration::from_millis(500)).await;

        let answer = stack.rollback().await.expect("rollback");
        assert_eq!(answer["canary_weight_bp"], 0, "{answer}");
        assert_eq!(answer["changed"], true, "{answer}");
        rollback_ms.push(assert_confirmed(&answer, workers));
        workers_confirmed.push(answer["wait"]["workers_confirmed"].as_u64().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let background = background.await.expect("background load");
    assert_all_answered(&background, &[200]);
    assert!(background.served_by("canary") > 0, "the 50% phases sent traffic to canary: {:?}", background.served_by);
    eprintln!(
        "propagation under ~{:.0} req/s, {workers_confirmed:?} VMs confirmed: set 50% {set_ms:.1?} ms, rollback \
         {rollback_ms:.1?} ms",
        background.requests_per_second()
    );

    // The rollback has been confirmed by every worker: from now on nothing
    // may reach canary.
    let canary_before = stack.backend_stats(Version::Canary).await.expect("stats").served;
    let after = stack.load(Load::requests(2_000)).await;
    assert_all_answered(&after, &[200]);
    assert_eq!(after.served_by("stable"), 2_000, "after the rollback: {:?}", after.served_by);
    let canary_after = stack.backend_stats(Version::Canary).await.expect("stats").served;
    assert_eq!(canary_after, canary_before, "canary backend got requests after the confirmed rollback");

    let rollout = stack.rollout().await.expect("rollout");
    assert_eq!(rollout["canary_weight_bp"], 0, "{rollout}");
    assert_eq!(rollout["data_plane"]["converged"], true, "{rollout}");
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_change_stats_count_only_traffic_under_the_new_weights() {
    // A long report interval keeps the 50% phase's counts unreported until
    // the rollback's confirmation sync carries them: the case that matters,
    // since the last second before a rollback is usually the worst one.
    let stack =
        super::stack().filter_config(json!({ "report_interval_ms": 5_000 })).start().await.expect("stack starts");
    let answer = stack.set_weight(50.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    assert_all_answered(&stack.load(Load::requests(2_000)).await, &[200]);
    let [_, canary_at_50] = stack.served().await.expect("stats");
    assert!(canary_at_50.served > 0, "50% sent traffic to canary");

    let answer = stack.rollback().await.expect("rollback");
    assert_confirmed(&answer, stack.concurrency() as u64);
    assert_all_answered(&stack.load(Load::requests(1_000)).await, &[200]);
    let [stable, canary] = stack.served().await.expect("stats");
    assert_eq!(canary.served, canary_at_50.served, "nothing reached canary after the rollback");

    let rollout = eventually!("every request is reported", {
        let rollout = stack.rollout().await?;
        anyhow::ensure!(
            total(&rollout, Version::Stable, "requests") == Some(stable.served)
                && total(&rollout, Version::Canary, "requests") == Some(canary.served),
            "totals {} vs backends stable {} canary {}",
            rollout["versions"],
            stable.served,
            canary.served
        );
        Ok(rollout)
    });
    // What an SRE reads after a rollback: the current step's traffic. The
    // 50% phase's requests belong to the previous weights.
    let since = |version: &str| rollout["versions"][version]["since_weights_change"]["requests"].as_u64();
    assert_eq!(
        (since("stable"), since("canary")),
        (Some(1_000), Some(0)),
        "since_weights_change after the rollback should hold only the 1000 requests sent after it \
         (the backends saw {} stable / {} canary in the 50% phase)",
        stable.served - 1_000,
        canary.served
    );
}
