//! `cargo xtask bench [--smoke] [NAME...]`: builds what the benchmarks
//! measure and runs them in order, then writes the summary of verdicts.
//!
//! A full run measures what production runs: the release analyzer and the
//! release demo backends (a debug backend would eat the load core's time and
//! make Envoy look cheaper than it is). A smoke run uses the debug builds that
//! `cargo xtask test` already has, and only proves the harness still works.

use std::ffi::OsString;
use std::process::{Command, ExitCode};

use anyhow::{Result, bail};

use crate::install::{self, Tools};
use crate::tasks::{self, artifact_env, cargo};
use crate::{Paths, cmd, wasm_exports};

/// Every benchmark, in the order a full run takes them: the data plane first,
/// while the machine is coolest, and the long analyzer runs last.
pub const BENCHMARKS: [&str; 5] = ["overhead", "propagation", "detection", "scale", "footprint"];

/// Benchmarks CI runs with `--smoke` inside `cargo xtask test`. `detection`
/// is left out: each of its runs waits for the analysis to decide (seconds),
/// and the end-to-end suite already asserts that a bad canary is rolled back.
pub const SMOKE_BENCHMARKS: [&str; 4] = ["overhead", "propagation", "scale", "footprint"];

/// The parsed arguments of `cargo xtask bench`.
#[derive(Debug, PartialEq, Eq)]
pub struct BenchArgs {
    pub smoke: bool,
    pub names: Vec<String>,
}

impl BenchArgs {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut smoke = false;
        let mut names = Vec::new();
        for arg in args {
            match arg.as_str() {
                "--smoke" => smoke = true,
                name if BENCHMARKS.contains(&name) => {
                    if !names.iter().any(|known| known == name) {
                        names.push(name.to_owned());
                    }
                }
                other => bail!("unknown benchmark or flag `{other}`; benchmarks: {}", BENCHMARKS.join(", ")),
            }
        }
        if names.is_empty() {
            let all: &[&str] = if smoke { &SMOKE_BENCHMARKS } else { &BENCHMARKS };
            names = all.iter().map(|name| (*name).to_owned()).collect();
        }
        // Always in the suite's order, whatever order they were named in.
        names.sort_by_key(|name| BENCHMARKS.iter().position(|known| known == name));
        Ok(Self { smoke, names })
    }
}

pub fn bench(paths: &Paths, args: &[String]) -> Result<ExitCode> {
    let args = BenchArgs::parse(args)?;
    let tools = install::install(paths)?;
    build(paths, args.smoke)?;
    run(paths, &tools, &args)
}

/// The filter, the two wasm floors the overhead benchmark compares it with,
/// and the native binaries in the profile the run measures.
fn build(paths: &Paths, smoke: bool) -> Result<()> {
    tasks::build_filter(paths)?;
    build_wasm_floors(paths)?;
    let mut command = cargo(paths);
    command.args(["build", "-p", "canary-analyzer", "-p", "canary-tests", "-p", "canary-bench", "--bins"]);
    if !smoke {
        command.arg("--release");
    }
    cmd::run(&mut command)
}

/// Variants (b) and (c) of the overhead benchmark, built like the filter:
/// Cargo's release build, then pruned down to the callbacks each
/// implements ([`wasm_exports`]).
pub fn build_wasm_floors(paths: &Paths) -> Result<()> {
    cmd::run(cargo(paths).args(["build", "--release", "--target", "wasm32-wasip1"]).args(WASM_FLOORS))?;
    let dir = paths.target.join("wasm32-wasip1").join("release");
    wasm_exports::prune_in_place(&dir.join("bench_noop_filter.wasm"), &wasm_exports::NOOP_FLOOR)?;
    wasm_exports::prune_in_place(&dir.join("bench_min_splitter.wasm"), &wasm_exports::SPLITTER_FLOOR)
}

/// The `canary-bench` arguments of each run of benchmark `name`: one run;
/// `scale` and `propagation` run a second time with `--batched` (the
/// filter's `batch_reports`: one reporter per Envoy), side by side in the
/// same run, which writes `scale-batched.*` and `propagation-batched.*` next
/// to the per-worker results. In a smoke that adds about 15 s, and CI drives
/// `POST /v1/filter/sync-batch` through a real Envoy, the analyzer and the
/// floor.
fn runs(name: &str, smoke: bool) -> Vec<Vec<OsString>> {
    let mut first: Vec<OsString> = vec![name.into()];
    if smoke {
        first.push("--smoke".into());
    }
    let mut runs = vec![first.clone()];
    if matches!(name, "scale" | "propagation") {
        runs.push(first.into_iter().chain(["--batched".into()]).collect());
    }
    runs
}

/// `-p` arguments for the benchmark-only wasm crates.
pub const WASM_FLOORS: [&str; 4] = ["-p", "bench-noop-filter", "-p", "bench-min-splitter"];

/// Runs each benchmark, then the summary. A benchmark that fails does not
/// stop the others: their results are still worth having.
pub fn run(paths: &Paths, tools: &Tools, args: &BenchArgs) -> Result<ExitCode> {
    let profile = if args.smoke { "debug" } else { "release" };
    let bin_dir = paths.target.join(profile);
    let mut env = artifact_env(paths, tools);
    for (name, path) in &mut env {
        if *name == tasks::CANARY_ANALYZER_BIN {
            *path = bin_dir.join("canary-analyzer");
        } else if *name == tasks::DEMO_BACKEND_BIN {
            *path = bin_dir.join("demo-backend");
        }
    }
    let canary_bench = bin_dir.join("canary-bench");
    let smoke_flag: &[&str] = if args.smoke { &["--smoke"] } else { &[] };
    let mut failed = Vec::new();
    for name in &args.names {
        for run_args in runs(name, args.smoke) {
            // The name, and what tells its runs apart: `scale --batched`.
            let label = run_args.iter().filter(|arg| arg.to_str() != Some("--smoke")).map(|arg| arg.to_string_lossy());
            let label = label.collect::<Vec<_>>().join(" ");
            let mut command = Command::new(&canary_bench);
            command.args(&run_args).envs(env.iter().cloned()).current_dir(&paths.root);
            if let Err(error) = cmd::run(&mut command) {
                eprintln!("xtask bench: {label} failed: {error:#}");
                failed.push(label);
            }
        }
    }
    let mut summary = Command::new(&canary_bench);
    summary.arg("summary").args(smoke_flag).current_dir(&paths.root);
    cmd::run(&mut summary)?;
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask bench: failed: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<BenchArgs> {
        BenchArgs::parse(&args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn no_names_means_the_whole_suite_in_order() -> Result<()> {
        assert_eq!(parse(&[])?.names, BENCHMARKS);
        let smoke = parse(&["--smoke"])?;
        assert!(smoke.smoke);
        assert_eq!(smoke.names, SMOKE_BENCHMARKS);
        Ok(())
    }

    #[test]
    fn named_benchmarks_run_once_in_suite_order() -> Result<()> {
        assert_eq!(parse(&["scale", "overhead", "scale"])?.names, ["overhead", "scale"]);
        Ok(())
    }

    #[test]
    fn scale_and_propagation_also_run_batched_side_by_side() {
        let strings = |runs: Vec<Vec<OsString>>| -> Vec<Vec<String>> {
            runs.iter().map(|run| run.iter().map(|arg| arg.to_string_lossy().into_owned()).collect()).collect()
        };
        assert_eq!(strings(runs("scale", true)), [vec!["scale", "--smoke"], vec!["scale", "--smoke", "--batched"]]);
        assert_eq!(strings(runs("propagation", false)), [vec!["propagation"], vec!["propagation", "--batched"]]);
        assert_eq!(strings(runs("overhead", true)), [vec!["overhead", "--smoke"]]);
        assert_eq!(strings(runs("detection", false)), [vec!["detection"]]);
    }

    #[test]
    fn unknown_names_are_refused_with_the_list() {
        let error = parse(&["overheads"]).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("`overheads`") && error.contains("overhead, propagation"), "{error}");
    }
}
