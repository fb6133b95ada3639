//! Configuration mistakes are caught, named, and never route to canary; and
//! every Envoy config shipped in the repository is accepted by Envoy.
//!
//! Why the filter does not reject a bad configuration: measured with Envoy
//! 1.40 and a static bootstrap, a module whose `on_configure` returns false
//! makes Envoy refuse the whole bootstrap ("Unable to create Wasm plugin
//! canary_split"), at startup and in `--mode validate`, even with
//! `failure_policy: FAIL_OPEN`: the proxy would not serve at all. The filter
//! instead logs one error naming the field and disables itself, routing
//! everything to stable, which is what these tests pin down. Because Envoy
//! then accepts the config, the repository check below also fails on any
//! error line in `--mode validate` output, so CI still catches the typo.

use std::path::{Path, PathBuf};
use std::time::Instant;

use canary_protocol::Version;
use canary_tests::backend::{Backend, BackendOpts};
use canary_tests::envoy::{self, BootstrapParams, Envoy, render_bootstrap};
use canary_tests::paths::repo_root;
use canary_tests::process::{read_log, tail};
use canary_tests::{Load, patience};

use super::assert_all_answered;

/// Starts Envoy with a malformed filter configuration and checks the
/// mistake is named in Envoy's log and no request can reach canary.
async fn check_bad_config(configuration: &str, field: &str) {
    let _permit = canary_tests::stack::acquire_stack_permit().await;
    let binaries = super::binaries();
    binaries.check().expect("artifacts are built");
    let dir = tempfile::Builder::new().prefix("canary-bad-config-").tempdir().expect("temp dir");
    let deadline = Instant::now() + patience();
    let opts = BackendOpts::default();
    let stable = Backend::start(&binaries.backend, Version::Stable, &opts, dir.path(), deadline).await.expect("stable");
    let canary = Backend::start(&binaries.backend, Version::Canary, &opts, dir.path(), deadline).await.expect("canary");
    let bootstrap = render_bootstrap(&BootstrapParams {
        node_id: "envoy-bad-config".to_owned(),
        listener_port: 0,
        admin_port: 0,
        stable: stable.address(),
        canary: canary.address(),
        // Nothing listens there: this filter must not get far enough to sync.
        analyzer: "127.0.0.1:9".parse().expect("address"),
        filter_configuration: configuration.to_owned(),
        filter_wasm: binaries.filter_wasm.clone(),
        route_header: "x-canary-version".to_owned(),
    });
    let bootstrap_path = dir.path().join("envoy.yaml");
    std::fs::write(&bootstrap_path, bootstrap).expect("write bootstrap");

    let validation = envoy::validate(&binaries.envoy, &bootstrap_path, dir.path()).expect("run validate");
    let validation_text =
        format!("{}{}", String::from_utf8_lossy(&validation.stdout), String::from_utf8_lossy(&validation.stderr));
    let envoy = match Envoy::start(&binaries.envoy, &bootstrap_path, 2, dir.path(), deadline).await {
        Ok(envoy) => envoy,
        Err(error) => panic!("config {configuration}: Envoy must keep serving with a bad filter config: {error:#}"),
    };
    let log = read_log(&dir.path().join("envoy.log"));
    let filter_line = log.lines().find(|line| line.contains("wasm log") && line.contains(field));
    assert!(
        filter_line.is_some(),
        "config {configuration}: Envoy's log has no filter line naming `{field}`:\n{}",
        tail(&log, 30)
    );
    eprintln!("config {configuration}:\n  {}", filter_line.unwrap_or_default());
    // An operator running `envoy --mode validate` sees the same line.
    assert!(
        validation_text.lines().any(|line| line.contains("[error][wasm]") && line.contains(field)),
        "validate output does not name `{field}`:\n{validation_text}"
    );

    // The filter fails safe: stable only, even for a client that asks for
    // canary (with the filter bypassed, the client's header would route).
    let report =
        canary_tests::load::run(envoy.listener(), Load::requests(1_000).header("x-canary-version", "canary")).await;
    assert_all_answered(&report, &[200]);
    assert_eq!(report.served_by("stable"), 1_000, "misconfigured filter routed: {:?}", report.served_by);
    assert_eq!(canary.stats().await.expect("canary stats").served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_filter_config_is_named_and_never_routes_to_canary() {
    check_bad_config(r#"{"analyzer_cluster": "canary_analyzer", "report_interval_ms": "x"}"#, "report_interval_ms")
        .await;
    check_bad_config(r#"{"analyzer_cluster": "canary_analyzer", "canary_percent": 10}"#, "canary_percent").await;
    check_bad_config(r#"{"report_interval_ms": 1000}"#, "analyzer_cluster").await;
}

/// Envoy bootstraps under `envoy-config/`: YAML files with a top-level
/// `static_resources:` or `admin:` key. Kubernetes and Istio manifests
/// (`apiVersion:`) are not Envoy configs and are skipped.
fn envoy_bootstraps(dir: &Path, found: &mut Vec<PathBuf>, skipped: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            envoy_bootstraps(&path, found, skipped);
            continue;
        }
        if !matches!(path.extension().and_then(|extension| extension.to_str()), Some("yaml" | "yml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let top_level = |key: &str| text.lines().any(|line| line.starts_with(key));
        if !top_level("apiVersion:") && (top_level("static_resources:") || top_level("admin:")) {
            found.push(path);
        } else {
            skipped.push(path);
        }
    }
}

#[test]
fn every_envoy_config_in_the_repo_validates() {
    let binaries = super::binaries();
    binaries.check().expect("artifacts are built");
    let root = repo_root();
    let (mut configs, mut skipped) = (Vec::new(), Vec::new());
    envoy_bootstraps(&root.join("envoy-config"), &mut configs, &mut skipped);
    assert!(!configs.is_empty(), "no Envoy bootstrap found under {}", root.join("envoy-config").display());
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for config in &configs {
        let relative = config.strip_prefix(&root).unwrap_or(config);
        // Validation instantiates the wasm VM and runs on_configure, so the
        // module must exist. Configs name it relative to the repo root
        // (validated from there); when that file is not where this build
        // put it (CANARY_FILTER_WASM elsewhere), validate a copy that names
        // the artifact under test instead.
        let text = std::fs::read_to_string(config).expect("read config");
        let mut rewritten = false;
        let patched: Vec<String> = text
            .lines()
            .map(|line| match line.trim_start().strip_prefix("filename:") {
                Some(value) if value.trim().trim_matches('"').ends_with(".wasm") => {
                    let named = root.join(value.trim().trim_matches('"'));
                    if named.is_file() {
                        line.to_owned()
                    } else {
                        rewritten = true;
                        let indent = &line[..line.len() - line.trim_start().len()];
                        format!("{indent}filename: {:?}", binaries.filter_wasm.display().to_string())
                    }
                }
                _ => line.to_owned(),
            })
            .collect();
        let to_validate = if rewritten {
            let copy = scratch.path().join(relative.to_string_lossy().replace('/', "__"));
            std::fs::write(&copy, patched.join("\n")).expect("write patched config");
            copy
        } else {
            config.clone()
        };
        let output = envoy::validate(&binaries.envoy, &to_validate, &root).expect("run envoy --mode validate");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        let note = if rewritten { " (module path replaced with the built filter)" } else { "" };
        // A filter that rejects its configuration logs an error but lets
        // Envoy accept the file, so error lines count as failures too.
        let error_lines: Vec<&str> =
            text.lines().filter(|line| line.contains("][error][") || line.contains("][critical][")).collect();
        if output.status.success() && error_lines.is_empty() {
            eprintln!("validated {}{note}", relative.display());
        } else {
            failures.push(format!("{}{note}:\n{}", relative.display(), tail(&text, 15)));
        }
    }
    for path in &skipped {
        eprintln!("skipped (not an Envoy bootstrap) {}", path.strip_prefix(&root).unwrap_or(path).display());
    }
    assert!(failures.is_empty(), "envoy --mode validate failed:\n{}", failures.join("\n\n"));
}
