//! `build`, `test` and `demo`: the cargo invocations CI and developers share.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::install::{self, Tools};
use crate::pipeline::Pipeline;
use crate::{Paths, bench, cmd, fuzz, soak, wasm_exports};

/// Environment variables through which the integration tests and the demo
/// find the artifacts, all absolute paths.
pub const ENVOY_BIN: &str = "ENVOY_BIN";
pub const CANARY_FILTER_WASM: &str = "CANARY_FILTER_WASM";
pub const CANARY_ANALYZER_BIN: &str = "CANARY_ANALYZER_BIN";
pub const DEMO_BACKEND_BIN: &str = "DEMO_BACKEND_BIN";
/// The filter built with its test-only `test-panic` feature.
pub const CANARY_FILTER_PANIC_WASM: &str = "CANARY_FILTER_PANIC_WASM";

pub fn build(paths: &Paths) -> Result<()> {
    // On a fresh machine the wasm target is the one thing the build needs
    // that rustup does not add by itself.
    install::rust_targets(paths).context("installing the rust targets")?;
    build_filter(paths)?;
    // Seconds on top of the filter (same SDK, already compiled), and a
    // manual `canary-bench overhead` then finds the floors pruned as the
    // filter is, never Cargo's unpruned output.
    bench::build_wasm_floors(paths)?;
    build_native(paths)
}

/// The filter as Envoy loads it: release profile (LTO, `panic = "abort"`).
pub fn build_filter(paths: &Paths) -> Result<()> {
    build_release_filter(paths)?;
    let wasm = paths.filter_wasm();
    let bytes =
        std::fs::metadata(&wasm).with_context(|| format!("the build did not produce {}", wasm.display()))?.len();
    eprintln!("filter: {} ({bytes} bytes)", wasm.display());
    // The test-only panicking build goes to its own target directory, so it
    // can never be mistaken for (or overwrite) the module above.
    let panic_target = filter_panic_target(paths);
    cmd::run(
        cargo(paths)
            .args(["build", "-p", "canary-filter", "--target", "wasm32-wasip1", "--release"])
            .args(["--features", "test-panic", "--target-dir"])
            .arg(&panic_target)
            .args(reproducible_wasm_flags(cargo_home().as_deref())),
    )?;
    wasm_exports::prune_in_place(&filter_panic_wasm(paths), &wasm_exports::FILTER)
}

/// The release filter as every consumer gets it (Envoy in the tests and the
/// demo, the OCI image): Cargo's build, then its unused per-request
/// callbacks dropped from the exports in place ([`wasm_exports`]).
pub fn build_release_filter(paths: &Paths) -> Result<()> {
    cmd::run(&mut release_filter_build(paths))?;
    wasm_exports::prune_in_place(&paths.filter_wasm(), &wasm_exports::FILTER)
}

/// `cargo build` of the release filter, with its bytes independent of the
/// machine: the WasmPlugin pins the OCI image digest of this module
/// (`cargo xtask oci --update-manifests`), so CI and every developer must
/// build the same bytes from the same tree.
///
/// Panic locations embed source paths. Workspace crates' paths are already
/// relative and the standard library's are `/rustc/<commit>/…`, but
/// dependencies are compiled from `$CARGO_HOME/registry/src/…`, an absolute
/// path that differs between machines and users. Remapping CARGO_HOME to
/// `/cargo` removes it. Cargo's `trim-paths`, which would do this in the
/// profile, is still unstable; `--config` rather than RUSTFLAGS so a path
/// with spaces survives. (An explicit RUSTFLAGS replaces these flags.)
fn release_filter_build(paths: &Paths) -> Command {
    let mut command = cargo(paths);
    command.args(["build", "-p", "canary-filter", "--target", "wasm32-wasip1", "--release"]);
    command.args(reproducible_wasm_flags(cargo_home().as_deref()));
    command
}

/// `--config` arguments that remap `cargo_home` out of the wasm target's paths.
fn reproducible_wasm_flags(cargo_home: Option<&Path>) -> Vec<String> {
    match cargo_home {
        // A TOML basic string: the Debug form of a str escapes `"` and `\` alike.
        Some(home) => vec![
            "--config".to_owned(),
            format!("target.wasm32-wasip1.rustflags=[{:?}]", format!("--remap-path-prefix={}=/cargo", home.display())),
        ],
        None => Vec::new(),
    }
}

/// Cargo's own rule: `$CARGO_HOME`, else `$HOME/.cargo`.
fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}

/// Where the `test-panic` filter build lives.
fn filter_panic_target(paths: &Paths) -> PathBuf {
    paths.target.join("filter-test-panic")
}

/// The module of the test-only panicking build.
fn filter_panic_wasm(paths: &Paths) -> PathBuf {
    filter_panic_target(paths).join("wasm32-wasip1").join("release").join("canary_filter.wasm")
}

/// The analyzer and the test crate's binaries (`demo-backend`, `canary-demo`).
fn build_native(paths: &Paths) -> Result<()> {
    cmd::run(cargo(paths).args(["build", "-p", "canary-analyzer", "-p", "canary-tests", "--bins"]))
}

const INSTALL: &str = "install";
const FMT: &str = "fmt --check";
const BUILD: &str = "build";
const CLIPPY_HOST: &str = "clippy (host)";
const CLIPPY_WASM: &str = "clippy (wasm32-wasip1)";
const TEST_HOST: &str = "test (host, with Envoy)";
const TEST_WASM: &str = "test protocol (wasm32, Node)";
const FUZZ_SMOKE: &str = "fuzz smoke";
const SOAK: &str = "soak (1 minute)";
const BENCH_SMOKE: &str = "bench smoke";

/// Clippy warnings fail CI.
const DENY: [&str; 3] = ["--", "-D", "warnings"];

pub fn test(paths: &Paths) -> Result<()> {
    let mut pipeline = Pipeline::new(
        "xtask test",
        &[INSTALL, FMT, BUILD, CLIPPY_HOST, CLIPPY_WASM, TEST_HOST, TEST_WASM, FUZZ_SMOKE, SOAK, BENCH_SMOKE],
    );
    let result = test_steps(paths, &mut pipeline);
    eprintln!("{}", pipeline.summary());
    result
}

fn test_steps(paths: &Paths, pipeline: &mut Pipeline) -> Result<()> {
    let tools = pipeline.step(INSTALL, || install::install(paths))?;
    pipeline.step(FMT, || cmd::run(cargo(paths).args(["fmt", "--all", "--", "--check"])))?;
    pipeline.step(BUILD, || build(paths))?;
    pipeline
        .step(CLIPPY_HOST, || cmd::run(cargo(paths).args(["clippy", "--workspace", "--all-targets"]).args(DENY)))?;
    pipeline.step(CLIPPY_WASM, || {
        cmd::run(
            cargo(paths)
                .args(["clippy", "-p", "canary-filter", "-p", "canary-protocol", "--target", "wasm32-wasip1"])
                .args(bench::WASM_FLOORS)
                .args(["--all-targets"])
                .args(DENY),
        )
    })?;
    let artifacts = artifact_env(paths, &tools);
    pipeline.step(TEST_HOST, || cmd::run(cargo(paths).args(["test", "--workspace"]).envs(artifacts)))?;
    // The protocol crate's dev-dependencies put wasm-bindgen in Cargo.lock,
    // so a missing runner is a broken setup, not a reason to skip the
    // cross-target check.
    pipeline.step(TEST_WASM, || {
        let runner = tools.wasm_bindgen_test_runner.as_deref().ok_or_else(|| {
            anyhow::anyhow!("wasm-bindgen-test-runner is not installed (no wasm-bindgen in Cargo.lock?)")
        })?;
        wasm_tests(paths, runner, tools.node_dir.as_deref())
    })?;
    // Seconds per target on nightly; the stable corpus replay is already
    // part of TEST_HOST.
    pipeline.step(FUZZ_SMOKE, || fuzz::smoke(paths))?;
    // Every operation of the soak once, with its no-request-lost and
    // no-count-lost checks (too short to judge memory; the 10-minute run's
    // result is in the README).
    pipeline.step(SOAK, || soak::run(paths, &tools, &["--minutes", "1"]))?;
    // Seconds per benchmark: proves the harness still runs against the real
    // stack. The verdicts are printed, never enforced (benchmarks are not
    // timed tests).
    pipeline.step(BENCH_SMOKE, || {
        cmd::run(cargo(paths).args(["build", "-p", "canary-bench", "--bins"]))?;
        let args = bench::BenchArgs::parse(&["--smoke".to_owned()])?;
        match bench::run(paths, &tools, &args)? {
            code if code == ExitCode::SUCCESS => Ok(()),
            _ => bail!("a benchmark smoke run failed (see above)"),
        }
    })?;
    Ok(())
}

/// The protocol crate's tests compiled to `wasm32-unknown-unknown` and run by
/// wasm-bindgen-test-runner under Node: the split hash and the wire format
/// must give the same answers in the filter's VM as in the analyzer.
///
/// The runner exits non-zero when a test fails, which fails `cargo test`.
/// It only runs `#[wasm_bindgen_test]` functions, though, and says nothing
/// about plain `#[test]`s, so a run that passed zero tests is an error too
/// rather than a silent pass. Doctests are left out (`--tests`): on this
/// target they would be compiled and then skipped.
fn wasm_tests(paths: &Paths, runner: &Path, node_dir: Option<&Path>) -> Result<()> {
    let mut command = cargo(paths);
    command
        .args(["test", "-p", "canary-protocol", "--target", "wasm32-unknown-unknown", "--tests"])
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", runner);
    if let Some(node_dir) = node_dir {
        // The runner starts whichever `node` is first on PATH.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(node_dir.to_path_buf()).chain(std::env::split_paths(&path)))
            .context("putting node on PATH")?;
        command.env("PATH", path);
    }
    let mut passed_total = 0;
    cmd::run_watching_stdout(&mut command, |line| passed_total += tests_passed(line).unwrap_or(0))?;
    if passed_total == 0 {
        bail!("no test ran on wasm32; are the protocol tests marked `#[wasm_bindgen_test]`?");
    }
    eprintln!("protocol on wasm32 (Node): {passed_total} tests passed");
    Ok(())
}

/// `test result: ok. 12 passed; 0 failed; ...` → 12 (libtest and
/// wasm-bindgen-test-runner print the same summary line).
fn tests_passed(line: &str) -> Option<u64> {
    let counts = line.trim().strip_prefix("test result: ")?.split_once(". ")?.1;
    counts.split(';').find_map(|count| count.trim().strip_suffix(" passed")?.parse().ok())
}

/// `cargo xtask simulate [ARGS]`: the analysis engine's validation
/// simulation (`docs/statistics.md`), in release mode because it runs
/// millions of ticks. Needs nothing installed; ARGS go to `canary-simulate`.
pub fn simulate(paths: &Paths, args: &[String]) -> Result<ExitCode> {
    let args = match args {
        [separator, rest @ ..] if separator == "--" => rest,
        _ => args,
    };
    let mut command = cargo(paths);
    command.args(["run", "--release", "-p", "canary-analyzer", "--bin", "canary-simulate", "--"]).args(args);
    eprintln!("$ {}", cmd::display(&command));
    let status = command.status().context("running cargo")?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `cargo xtask demo [ARGS]`: set up, build, then hand over to `canary-demo`.
pub fn demo(paths: &Paths, args: &[String]) -> Result<ExitCode> {
    let tools = install::install(paths)?;
    build(paths)?;
    let demo = paths.debug_bin("canary-demo");
    let mut command = Command::new(&demo);
    // `cargo xtask demo -- --canary bad` and `cargo xtask demo --canary bad`
    // mean the same: a leading `--` only separates the demo's arguments.
    let args = match args {
        [separator, rest @ ..] if separator == "--" => rest,
        _ => args,
    };
    // From the repo root, the relative paths in envoy-config/local/ resolve.
    command.args(args).envs(artifact_env(paths, &tools)).current_dir(&paths.root);
    eprintln!("$ {}", cmd::display(&command));
    exec(command).with_context(|| format!("running {}", demo.display()))
}

/// Replaces xtask with the demo so that signals (Ctrl-C) and the exit status
/// are the demo's own.
#[cfg(unix)]
fn exec(mut command: Command) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    Err(command.exec().into())
}

#[cfg(not(unix))]
fn exec(mut command: Command) -> Result<ExitCode> {
    let status = command.status()?;
    Ok(ExitCode::from(status.code().map_or(1, |code| code as u8)))
}

/// What the integration tests and the demo read to find the artifacts.
pub fn artifact_env(paths: &Paths, tools: &Tools) -> Vec<(&'static str, PathBuf)> {
    vec![
        (ENVOY_BIN, tools.envoy.clone()),
        (CANARY_FILTER_WASM, paths.filter_wasm()),
        (CANARY_ANALYZER_BIN, paths.debug_bin("canary-analyzer")),
        (DEMO_BACKEND_BIN, paths.debug_bin("demo-backend")),
        (CANARY_FILTER_PANIC_WASM, filter_panic_wasm(paths)),
    ]
}

/// `cargo` as found on PATH (the rustup proxy, so `rust-toolchain.toml`
/// applies), run from the workspace root.
pub fn cargo(paths: &Paths) -> Command {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(&paths.root);
    cargo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_passed_tests_from_summary_lines() {
        let check = |line: &str, expected: Option<u64>| assert_eq!(tests_passed(line), expected, "{line}");
        check(
            "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.03s",
            Some(12),
        );
        check("test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 filtered out; finished in 0.04s", Some(1));
        check("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out", Some(0));
        check("test tests::passes ... ok", None);
        check("running 2 tests", None);
    }

    #[test]
    fn the_wasm_build_remaps_cargo_home() {
        assert_eq!(
            reproducible_wasm_flags(Some(Path::new("/home/a \"b\"/.cargo"))),
            ["--config", r#"target.wasm32-wasip1.rustflags=["--remap-path-prefix=/home/a \"b\"/.cargo=/cargo"]"#]
        );
        assert!(reproducible_wasm_flags(None).is_empty());
    }

    #[test]
    fn artifact_env_is_absolute_and_complete() {
        let paths = Paths { root: "/repo".into(), target: "/repo/target".into(), cache: "/repo/.cache".into() };
        let tools =
            Tools { envoy: "/repo/.cache/envoy-1.40.0/envoy".into(), wasm_bindgen_test_runner: None, node_dir: None };
        let env = artifact_env(&paths, &tools);
        let get = |key: &str| env.iter().find(|(name, _)| *name == key).map(|(_, path)| path.to_str().unwrap());
        assert_eq!(get(ENVOY_BIN), Some("/repo/.cache/envoy-1.40.0/envoy"));
        assert_eq!(get(CANARY_FILTER_WASM), Some("/repo/target/wasm32-wasip1/release/canary_filter.wasm"));
        assert_eq!(get(CANARY_ANALYZER_BIN), Some("/repo/target/debug/canary-analyzer"));
        assert_eq!(get(DEMO_BACKEND_BIN), Some("/repo/target/debug/demo-backend"));
        assert_eq!(
            get(CANARY_FILTER_PANIC_WASM),
            Some("/repo/target/filter-test-panic/wasm32-wasip1/release/canary_filter.wasm")
        );
    }
}
