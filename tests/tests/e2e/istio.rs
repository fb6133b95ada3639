//! The Istio path in real Envoy: the filter loaded the way istiod and the
//! istio-agent configure a WasmPlugin (ECDS, `pluginConfig` as JSON in a
//! `StringValue`, root id, VM environment), routed by the VirtualService's
//! header match to `outbound|PORT|SUBSET|HOST` clusters, syncing with the
//! analyzer through `outbound|9190||canary-analyzer...` (see
//! `canary_tests::istio` and `envoy-config/istio/ENVOY-TRANSLATION.md`).
//! The split, rollback and reporting checks of the other suites run here
//! again on that shape.

use canary_protocol::Version;
use canary_tests::istio::{self, cluster_stat};
use canary_tests::stack::FILTER_TOKEN;
use canary_tests::stats::{Z_99_9, binomial_interval};
use canary_tests::{BackendOpts, Load, Stack, StackBuilder, anyhow, eventually, http};
use serde_json::Value;

use super::conservation::assert_counts_converge;
use super::{assert_all_answered, assert_confirmed};

/// A stack whose Envoy runs the Istio-shaped bootstrap with the
/// WasmPlugin's `pluginConfig`.
pub(super) fn istio_stack() -> StackBuilder {
    super::stack().bootstrap_renderer(istio::render_istio_bootstrap).filter_config(istio::plugin_config(FILTER_TOKEN))
}

/// Envoy's admin `/stats` text (counters keep `|` in cluster names).
pub(super) async fn envoy_stats(stack: &Stack) -> anyhow::Result<String> {
    Ok(http::get(stack.admin(), "/stats").await?.text())
}

/// The wasm filter's config as Envoy loaded it through ECDS, from the
/// admin `/config_dump` (`EcdsConfigDump.ecds_filters[].ecds_filter`).
pub(super) async fn loaded_ecds_filter(stack: &Stack) -> anyhow::Result<Value> {
    let dump = http::get_json(stack.admin(), "/config_dump").await?;
    let configs = dump["configs"].as_array().cloned().unwrap_or_default();
    let filters = configs
        .iter()
        .filter(|config| config["@type"] == "type.googleapis.com/envoy.admin.v3.EcdsConfigDump")
        .flat_map(|config| config["ecds_filters"].as_array().cloned().unwrap_or_default());
    for filter in filters {
        if filter["ecds_filter"]["name"] == istio::filter_resource_name().as_str() {
            return Ok(filter["ecds_filter"]["typed_config"]["config"].clone());
        }
    }
    anyhow::bail!("no ECDS filter {} in /config_dump", istio::filter_resource_name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_shaped_envoy_splits_by_weight_and_routes_by_the_virtual_service() {
    let stack = istio_stack().start().await.expect("Istio-shaped stack starts");

    // Envoy loaded the plugin from ECDS as istiod shapes it; the filter
    // parsed the JSON inside the StringValue (it syncs through the Istio
    // cluster named there) and reports the sidecar's node id.
    let loaded = loaded_ecds_filter(&stack).await.expect("ECDS filter in config_dump");
    assert_eq!(loaded["root_id"], istio::PLUGIN_NAME, "{loaded}");
    assert_eq!(loaded["configuration"]["@type"], "type.googleapis.com/google.protobuf.StringValue", "{loaded}");
    let plugin_config: Value = serde_json::from_str(loaded["configuration"]["value"].as_str().unwrap_or_default())
        .expect("the StringValue holds JSON");
    assert_eq!(plugin_config["analyzer_cluster"], istio::analyzer_cluster().as_str());
    let env = &loaded["vm_config"]["environment_variables"]["key_values"];
    assert_eq!(env[istio::RESOURCE_VERSION_ENV], istio::RESOURCE_VERSION, "{loaded}");
    let page = stack.analyzer_get("/v1/workers").await.expect("workers");
    let workers = page["workers"].as_array().cloned().unwrap_or_default();
    assert!(!workers.is_empty(), "{page}");
    assert!(workers.iter().all(|worker| worker["proxy_id"] == istio::NODE_ID), "{page}");
    let stats = envoy_stats(&stack).await.expect("stats");
    let analyzer_calls = cluster_stat(&stats, &istio::analyzer_cluster(), "upstream_rq_total");
    assert!(analyzer_calls.is_some_and(|calls| calls > 0), "sync calls via the analyzer cluster: {analyzer_calls:?}");

    // At weight 0 a client cannot pick canary by sending the header the
    // VirtualService matches: the EnvoyFilter's early header mutation
    // removes it and the filter writes its own.
    let report = stack.load(Load::requests(500).header("x-canary-version", "canary")).await;
    assert_all_answered(&report, &[200]);
    assert_eq!(report.served_by("stable"), 500, "{:?}", report.served_by);

    let answer = stack.set_weight(10.0).await.expect("set weight");
    assert_eq!(answer["canary_weight_bp"], 1_000, "{answer}");
    assert_confirmed(&answer, stack.concurrency() as u64);
    stack.reset_backends().await.expect("reset backends");
    let requests = 10_000;
    let report = stack.load(Load::requests(requests)).await;
    assert_all_answered(&report, &[200]);
    let [stable, canary] = stack.served().await.expect("backend stats");
    assert_eq!(stable.served + canary.served, requests, "{stable:?} {canary:?}");
    assert_eq!(canary.served, report.served_by("canary"), "client and backend disagree");
    let share = canary.served as f64 / requests as f64;
    let (low, high) = binomial_interval(0.10, requests, Z_99_9);
    eprintln!(
        "Istio shape, split at 10%: {}/{requests} canary = {:.3}% (99.9% interval {:.3}%..{:.3}%)",
        canary.served,
        share * 100.0,
        low * 100.0,
        high * 100.0
    );
    assert!((low..=high).contains(&share), "canary share {share} outside [{low}, {high}]");

    // The VirtualService routes: every request the filter marked canary
    // went to the canary subset's cluster, the rest to stable's (500 stable
    // requests from the header check above included).
    let stats = envoy_stats(&stack).await.expect("stats");
    let via = |cluster: &str| cluster_stat(&stats, cluster, "upstream_rq_total");
    assert_eq!(via(&istio::canary_cluster()), Some(canary.served), "canary subset cluster");
    assert_eq!(via(&istio::stable_cluster()), Some(stable.served + 500), "stable subset cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_shaped_rollback_stops_canary_and_every_request_is_reported_once() {
    let stack = istio_stack()
        .stable(BackendOpts::default().error_rate(0.005))
        .canary(BackendOpts::default().error_rate(0.02))
        .start()
        .await
        .expect("Istio-shaped stack starts");
    let answer = stack.set_weight(50.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let report = stack.load(Load::requests(3_000)).await;
    assert_all_answered(&report, &[200, 500]);
    assert!(report.served_by("canary") > 1_000, "{:?}", report.served_by);

    let answer = stack.rollback().await.expect("rollback");
    assert_eq!(answer["canary_weight_bp"], 0, "{answer}");
    let rollback_ms = assert_confirmed(&answer, stack.concurrency() as u64);
    let canary_before = stack.backend_stats(Version::Canary).await.expect("stats").served;
    let report = stack.load(Load::requests(3_000)).await;
    assert_all_answered(&report, &[200, 500]);
    assert_eq!(report.served_by("canary"), 0, "canary traffic after the rollback: {:?}", report.served_by);
    assert_eq!(stack.backend_stats(Version::Canary).await.expect("stats").served, canary_before);
    eprintln!("Istio shape: rollback confirmed by every VM in {rollback_ms:.1} ms; 0 of 3000 requests to canary after");

    // Reporting: the analyzer's per-version totals and the filter's
    // counters equal what each backend served, through the Istio-named
    // analyzer cluster.
    assert_counts_converge(&stack).await;
}

/// The same `pluginConfig` sent as a `google.protobuf.Struct` instead of
/// istiod's JSON `StringValue` does not configure the filter: Envoy passes a
/// Struct to the VM as protobuf bytes. The filter names the problem and
/// routes everything to stable, even requests that carry the header the
/// VirtualService matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_config_only_works_as_json_in_a_string_value() {
    let stack = super::stack()
        .bootstrap_renderer(istio::render_istio_bootstrap_struct_config)
        .filter_config(istio::plugin_config(FILTER_TOKEN))
        .skip_sync_wait()
        .start()
        .await
        .expect("Envoy serves with the Struct-encoded plugin config");
    let loaded = loaded_ecds_filter(&stack).await.expect("ECDS filter in config_dump");
    assert_eq!(loaded["configuration"]["@type"], "type.googleapis.com/google.protobuf.Struct", "{loaded}");
    eventually!("the filter logs why it is disabled", {
        let log = stack.envoy_log();
        anyhow::ensure!(log.contains("invalid plugin configuration"), "no configuration error in the Envoy log");
        Ok(())
    });

    let report = stack.load(Load::requests(500).header("x-canary-version", "canary")).await;
    assert_all_answered(&report, &[200]);
    assert_eq!(report.served_by("stable"), 500, "{:?}", report.served_by);
    let rollout = stack.rollout().await.expect("rollout");
    assert_eq!(rollout["data_plane"]["live_workers"], 0, "a misconfigured filter synced: {rollout}");
}

/// The filter absent: the istio-agent could not pull the image, and under
/// `failStrategy: FAIL_OPEN` it replaced the wasm filter with an allow-all
/// RBAC filter. Nothing writes the route header then, so without the
/// EnvoyFilter a client's `x-canary-version: canary` matches the
/// VirtualService's canary route (shown first); with it, the header is
/// removed before routing and every request reaches stable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_filter_absent_a_client_sent_route_header_reaches_stable() {
    async fn start(renderer: canary_tests::stack::BootstrapRenderer) -> Stack {
        super::stack()
            .bootstrap_renderer(renderer)
            .filter_config(istio::plugin_config(FILTER_TOKEN))
            .skip_sync_wait()
            .start()
            .await
            .expect("Envoy serves with the fallback RBAC filter in the WasmPlugin's slot")
    }
    let client_picks_canary = || Load::requests(300).header("x-canary-version", "canary");

    // Without the guard: the client picks canary.
    let unguarded = start(istio::render_istio_bootstrap_pull_failed_unguarded).await;
    let report = unguarded.load(client_picks_canary()).await;
    assert_all_answered(&report, &[200]);
    assert_eq!(
        report.served_by("canary"),
        300,
        "the unguarded mesh routes on the client's header: {:?}",
        report.served_by
    );
    drop(unguarded);

    let stack = start(istio::render_istio_bootstrap_pull_failed).await;
    let dump = http::get_json(stack.admin(), "/config_dump").await.expect("config_dump");
    let slot = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|config| config["@type"] == "type.googleapis.com/envoy.admin.v3.EcdsConfigDump")
        .flat_map(|config| config["ecds_filters"].as_array().cloned().unwrap_or_default())
        .find(|filter| filter["ecds_filter"]["name"] == istio::filter_resource_name().as_str())
        .expect("the WasmPlugin's ECDS slot in config_dump");
    assert_eq!(
        slot["ecds_filter"]["typed_config"]["@type"], "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "{slot}"
    );
    let report = stack.load(client_picks_canary()).await;
    assert_all_answered(&report, &[200]);
    assert_eq!(report.served_by("stable"), 300, "{:?}", report.served_by);
    let stats = envoy_stats(&stack).await.expect("stats");
    assert_eq!(cluster_stat(&stats, &istio::canary_cluster(), "upstream_rq_total"), Some(0), "canary subset cluster");
    assert_eq!(cluster_stat(&stats, &istio::stable_cluster(), "upstream_rq_total"), Some(300), "stable subset cluster");
    // No filter VM exists to report.
    let rollout = stack.rollout().await.expect("rollout");
    assert_eq!(rollout["data_plane"]["live_workers"], 0, "{rollout}");
}
