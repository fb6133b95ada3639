//! `cargo xtask k8s-validate`: the Istio/Kubernetes manifests in
//! `envoy-config/istio/` checked on their own, without the rest of the
//! suite. `cargo xtask test` runs the same test inside its host test step.
//!
//! It first builds the release filter and checks that the WasmPlugin pins
//! the OCI image of exactly that module (`oci::check_manifests`): a stale
//! `sha256` would make every proxy refuse the filter, and under FAIL_OPEN
//! that failure is silent.
//!
//! The checks live in one Rust test (`tests/tests/manifests.rs`), because
//! half of them need the project's own parsers (the filter's configuration,
//! the analyzer's TOML and rollout spec); this task installs the external
//! validators and runs it.

use std::time::Instant;

use anyhow::Result;

use crate::{Paths, cmd, install, oci, tasks};

/// Where the manifests test finds kubectl, the validators' Python and Node
/// and the Istio schemas (`install::k8s_tools`).
pub const CANARY_K8S_TOOLS: &str = "CANARY_K8S_TOOLS";

pub fn validate(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    // Idempotent and cheap once done; no Envoy needed here.
    let tools = install::k8s_tools_only(paths)?;
    tasks::build_release_filter(paths)?;
    oci::check_manifests(paths, &paths.filter_wasm())?;
    cmd::run(
        tasks::cargo(paths).args(["test", "-p", "canary-tests", "--test", "manifests"]).env(CANARY_K8S_TOOLS, &tools),
    )?;
    eprintln!("k8s-validate: every overlay of envoy-config/istio/ is valid ({:.1?})", started.elapsed());
    Ok(())
}
