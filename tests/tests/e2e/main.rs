//! End-to-end tests against real Envoy 1.40, the wasm filter, the analyzer
//! and two demo backends. Each test starts its own stack (Envoy with at least
//! two workers); the harness runs one stack at a time per process by default
//! (`CANARY_TEST_MAX_STACKS`), since one stack keeps a 2-core machine busy.
//!
//! Run with `cargo xtask test`, which builds the filter and the analyzer and
//! passes their paths. Measured numbers (split shares, propagation times) are
//! printed to stderr; add `-- --nocapture` to see them.

mod backend;
mod batched;
mod config;
mod conservation;
mod control;
mod dashboard;
mod faults;
mod handover;
mod istio;
mod observability;
// `override` is a reserved word; the module keeps the file's name readable.
#[path = "override.rs"]
mod override_header;
mod propagation;
mod rollout;
mod routing;
mod split;
mod sticky;

use canary_protocol::Version;
use canary_tests::{Binaries, LoadReport, Stack, StackBuilder};
use serde_json::Value;

/// The artifacts under test, with the `demo-backend` Cargo built for this
/// test binary unless `DEMO_BACKEND_BIN` says otherwise.
fn binaries() -> Binaries {
    Binaries::from_env_with_backend(env!("CARGO_BIN_EXE_demo-backend"))
}

/// A stack builder with two Envoy workers and the artifacts under test.
fn stack() -> StackBuilder {
    Stack::builder().binaries(binaries()).concurrency(2)
}

/// `versions.<version>.total.<field>` of a `/v1/rollout` answer.
fn total(rollout: &Value, version: Version, field: &str) -> Option<u64> {
    rollout["versions"][version.as_str()]["total"][field].as_u64()
}

/// Asserts that every request got an HTTP answer with one of `statuses`.
fn assert_all_answered(report: &LoadReport, statuses: &[u16]) {
    assert_eq!(report.transport_errors, 0, "transport errors: {:?}", report.first_error);
    let unexpected: Vec<_> = report.status.iter().filter(|(status, _)| !statuses.contains(status)).collect();
    assert!(unexpected.is_empty(), "unexpected statuses {unexpected:?} in {:?}", report.status);
}

/// Asserts a `?wait=true` answer confirmed the change on every live VM, and
/// returns its `propagation_ms`.
fn assert_confirmed(answer: &Value, min_workers: u64) -> f64 {
    let wait = &answer["wait"];
    assert_eq!(wait["confirmed"], true, "not confirmed: {answer}");
    let workers_total = wait["workers_total"].as_u64().unwrap_or(0);
    assert!(
        workers_total >= min_workers,
        "only {workers_total} workers confirmed, expected >= {min_workers}: {answer}"
    );
    assert_eq!(wait["workers_confirmed"], wait["workers_total"], "{answer}");
    wait["propagation_ms"].as_f64().unwrap_or_else(|| panic!("no propagation_ms in {answer}"))
}
