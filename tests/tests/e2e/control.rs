//! The control plane is honest and guarded: a rollback that the data plane
//! cannot confirm says so (and still applies), and a filter without the
//! right token can neither report nor receive weights.

use canary_tests::envoy::prometheus_value;
use canary_tests::{Load, anyhow, eventually};
use hyper::{Method, StatusCode};
use serde_json::json;

use super::{assert_all_answered, assert_confirmed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmable_rollback_times_out_naming_workers_and_stays_applied() {
    let mut stack = super::stack().start().await.expect("stack starts");
    let answer = stack.set_weight(20.0).await.expect("set weight");
    let workers = answer["wait"]["workers_total"].as_u64().expect("workers_total");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let before_crash = stack.analyzer_get("/v1/workers").await.expect("workers");

    // Every VM vanishes but is still "live" until worker_stale_after_ms.
    stack.kill_envoy();
    let response = stack
        .analyzer_call(Method::POST, "/v1/rollout/rollback?wait=true&timeout_ms=300", None)
        .await
        .expect("rollback call");
    let answer = response.json().expect("JSON body");
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT, "{answer}");
    assert_eq!(answer["wait"]["confirmed"], false, "{answer}");
    assert_eq!(answer["wait"]["workers_confirmed"], 0, "{answer}");
    let unconfirmed = answer["wait"]["unconfirmed"].as_array().cloned().unwrap_or_default();
    assert_eq!(unconfirmed.len() as u64, workers, "every VM is listed as unconfirmed: {answer}");
    assert!(unconfirmed.iter().all(|worker| worker["worker_id"].as_str().is_some_and(|id| id.len() == 16)), "{answer}");

    let rollout = stack.rollout().await.expect("rollout");
    assert_eq!(rollout["canary_weight_bp"], 0, "the rollback stays applied: {rollout}");
    assert_eq!(rollout["data_plane"]["converged"], false, "{rollout}");

    // An SRE finds the proxy by its Envoy node id (the filter's default
    // proxy id, per the contract).
    let listed = before_crash["workers"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len() as u64, workers, "{before_crash}");
    let proxy_ids: Vec<&serde_json::Value> = listed.iter().map(|worker| &worker["proxy_id"]).collect();
    assert!(
        proxy_ids.iter().all(|proxy_id| **proxy_id == canary_tests::stack::NODE_ID),
        "workers should report node.id {:?} as proxy id, got {proxy_ids:?}",
        canary_tests::stack::NODE_ID
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_with_a_wrong_token_gets_no_weights_and_adds_no_counts() {
    let stack = super::stack()
        .filter_config(json!({ "analyzer_token": "not-the-token" }))
        .skip_sync_wait()
        .start()
        .await
        .expect("stack starts");
    // No VM may register, so a weight change has nobody to wait for.
    let response = stack
        .analyzer_call(Method::PUT, "/v1/rollout/weight", Some(&json!({ "canary_percent": 50.0 })))
        .await
        .expect("set weight");
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());

    let report = stack.load(Load::requests(1_000)).await;
    assert_all_answered(&report, &[200]);
    assert_eq!(report.served_by("stable"), 1_000, "weights reached an unauthenticated filter: {:?}", report.served_by);
    eventually!("the filter counts its rejected syncs", {
        let failures = prometheus_value(&stack.envoy_prometheus().await?, "canary_split_sync_failures");
        anyhow::ensure!(failures.is_some_and(|failures| failures > 0.0), "canary_split_sync_failures = {failures:?}");
        Ok(())
    });
    let rollout = stack.rollout().await.expect("rollout");
    assert_eq!(rollout["data_plane"]["live_workers"], 0, "{rollout}");
    assert_eq!(super::total(&rollout, canary_protocol::Version::Stable, "requests"), Some(0), "{rollout}");
}
