//! The demo backend itself: the other tests trust its counters and its
//! error injection, so check them directly, without Envoy.

use std::time::{Duration, Instant};

use canary_protocol::Version;
use canary_tests::backend::{Backend, BackendOpts, BackendStats};
use canary_tests::{Load, load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_counts_exactly_and_injects_the_configured_error_share() {
    let dir = tempfile::tempdir().expect("temp dir");
    let deadline = Instant::now() + canary_tests::patience();
    let opts = BackendOpts::default().error_rate(0.1).latency_ms(20);
    let binary = super::binaries().backend;
    let backend = Backend::start(&binary, Version::Canary, &opts, dir.path(), deadline).await.expect("backend starts");

    let report = load::run(backend.address(), Load::requests(1_000).concurrency(8)).await;
    assert_eq!(report.transport_errors, 0, "{:?}", report.first_error);
    assert_eq!(report.served_by("canary"), 1_000, "every answer names the backend: {:?}", report.served_by);
    // Deterministic injection: exactly floor(1000 * 0.1) errors, no more.
    assert_eq!(report.status.get(&500), Some(&100), "{:?}", report.status);
    // 1000 requests, 8 at a time, at least 20 ms each.
    assert!(report.elapsed >= Duration::from_millis(20 * 1_000 / 8), "latency not applied: {:?}", report.elapsed);

    // The control endpoints are not counted.
    let stats = backend.stats().await.expect("stats");
    assert_eq!(stats, BackendStats { served: 1_000, errors: 100 });
    assert_eq!(backend.stats().await.expect("stats"), stats);
    backend.reset().await.expect("reset");
    assert_eq!(backend.stats().await.expect("stats"), BackendStats { served: 0, errors: 0 });
}
