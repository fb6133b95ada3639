//! The route header is the filter's alone: a client cannot pick its version.

use canary_protocol::Version;
use canary_tests::Load;
use canary_tests::envoy::prometheus_value;

use super::{assert_all_answered, assert_confirmed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_supplied_route_header_is_overwritten() {
    let stack = super::stack().start().await.expect("stack starts");

    // Weight 0 (the initial state): asking for canary gets stable.
    let report = stack.load(Load::requests(2_000).header("x-canary-version", "canary")).await;
    assert_all_answered(&report, &[200]);
    assert_eq!(report.served_by("stable"), 2_000, "spoofed canary header: {:?}", report.served_by);
    assert_eq!(stack.backend_stats(Version::Canary).await.expect("stats").served, 0);

    // Weight 100%: asking for stable gets canary, so the header is
    // overwritten both ways rather than only defaulted.
    let answer = stack.set_weight(100.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let report = stack.load(Load::requests(2_000).header("x-canary-version", "stable")).await;
    assert_all_answered(&report, &[200]);
    assert_eq!(report.served_by("canary"), 2_000, "spoofed stable header: {:?}", report.served_by);

    // The applied weight is visible in Envoy's own metrics too.
    let prometheus = stack.envoy_prometheus().await.expect("prometheus");
    assert_eq!(prometheus_value(&prometheus, "canary_split_weight_bp"), Some(10_000.0), "applied weight gauge");
}
