//! The testers' override header: the one configured way a client may choose
//! its version. With it configured, the right value wins over the weights,
//! anything else follows the weights, and a client outside the allowed
//! source networks is ignored. Overridden requests are counted like any
//! other, under the version that served them.

use canary_protocol::Version;
use canary_tests::{Load, LoadReport, Stack, anyhow, eventually};
use serde_json::json;

use super::{assert_all_answered, assert_confirmed, total};

const HEADER: &str = "x-canary";
const CANARY_VALUE: &str = "always";
const STABLE_VALUE: &str = "never";
const REQUESTS: u64 = 400;

/// Sends `REQUESTS` requests, with `header` when given, and asserts every
/// one was answered by `expected`.
async fn assert_all_go_to(stack: &Stack, header: Option<(&str, &str)>, expected: Version, why: &str) -> LoadReport {
    let mut load = Load::requests(REQUESTS).concurrency(8);
    if let Some((name, value)) = header {
        load = load.header(name, value);
    }
    let report = stack.load(load).await;
    assert_all_answered(&report, &[200]);
    assert_eq!(report.served_by(expected.as_str()), REQUESTS, "{why}: served by {:?}", report.served_by);
    eprintln!("override: {why}: {REQUESTS}/{REQUESTS} to {expected}");
    report
}

fn override_config(source_cidrs: &[&str]) -> serde_json::Value {
    json!({ "override": {
        "header": HEADER,
        "canary_value": CANARY_VALUE,
        "stable_value": STABLE_VALUE,
        "source_cidrs": source_cidrs,
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_picks_the_version_only_with_the_configured_value() {
    // The test client connects from 127.0.0.1.
    let stack = super::stack()
        .filter_config(override_config(&["10.0.0.0/8", "127.0.0.1/32"]))
        .start()
        .await
        .expect("stack starts");

    // Weight 0%: only the override reaches canary.
    assert_all_go_to(&stack, Some((HEADER, CANARY_VALUE)), Version::Canary, "0%, right canary value").await;
    assert_all_go_to(&stack, Some((HEADER, "Always")), Version::Stable, "0%, wrong value (case differs)").await;
    assert_all_go_to(&stack, Some((HEADER, "always-and-more")), Version::Stable, "0%, wrong value (longer)").await;
    assert_all_go_to(&stack, None, Version::Stable, "0%, no header").await;
    // The route header is still the filter's alone.
    assert_all_go_to(&stack, Some(("x-canary-version", "canary")), Version::Stable, "0%, client route header").await;

    // Weight 100%: the stable value is the only way back to stable.
    let answer = stack.set_weight(100.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    assert_all_go_to(&stack, Some((HEADER, STABLE_VALUE)), Version::Stable, "100%, right stable value").await;
    assert_all_go_to(&stack, Some((HEADER, "nope")), Version::Canary, "100%, wrong value").await;
    assert_all_go_to(&stack, None, Version::Canary, "100%, no header").await;

    // Overridden requests are counted for the version that served them.
    let [stable, canary] = stack.served().await.expect("backend stats");
    assert_eq!((stable.served, canary.served), (5 * REQUESTS, 3 * REQUESTS), "backends");
    eventually!("the analyzer counted every request, overridden ones included", {
        let rollout = stack.rollout().await?;
        let counted = (total(&rollout, Version::Stable, "requests"), total(&rollout, Version::Canary, "requests"));
        anyhow::ensure!(counted == (Some(stable.served), Some(canary.served)), "analyzer totals {counted:?}");
        Ok(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_is_ignored_from_a_source_outside_the_allowed_networks() {
    // 127.0.0.1, where the test client connects from, is outside both.
    let stack = super::stack()
        .filter_config(override_config(&["10.0.0.0/8", "127.0.0.2/32"]))
        .start()
        .await
        .expect("stack starts");
    assert_all_go_to(&stack, Some((HEADER, CANARY_VALUE)), Version::Stable, "0%, right value, source not allowed")
        .await;

    let answer = stack.set_weight(100.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    assert_all_go_to(&stack, Some((HEADER, STABLE_VALUE)), Version::Canary, "100%, right value, source not allowed")
        .await;
}
