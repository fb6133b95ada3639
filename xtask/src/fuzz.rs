//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz targets
//! in `fuzz/` (see fuzz/README.md), and [`smoke`], the few seconds per target
//! that `cargo xtask test` runs in CI.
//!
//! Fuzzing needs the nightly toolchain (libFuzzer's instrumentation and the
//! address sanitizer are nightly-only flags) and `cargo-fuzz`. Nightly is not
//! something this task installs: when it is missing, `fuzz` fails saying so,
//! and `smoke` says that the stable replay of the committed corpus
//! (`cargo test -p canary-fuzz-checks --test corpus`) covers the same inputs.
//! `cargo-fuzz` is installed from crates.io on first use, `--locked`.
//!
//! Each run grows a working corpus under `fuzz/target/work-corpus/<target>`
//! (git-ignored) and reads the committed seeds in `fuzz/corpus/<target>`
//! without writing to them, so a run never dirties the tree; crashes land in
//! `fuzz/artifacts/<target>/` as libFuzzer reports.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::Paths;
use crate::cmd;

/// Every target, in the order they run. Must match `fuzz/Cargo.toml`'s bins
/// and `canary_fuzz_checks::TARGETS`.
pub const TARGETS: &[&str] =
    &["report_decode", "weights_decode", "filter_config", "rollout_spec", "histogram", "batch_decode"];

/// Seconds per target of `cargo xtask fuzz` without `--seconds`.
const DEFAULT_SECONDS: u64 = 10;
/// Seconds per target of the CI smoke.
const SMOKE_SECONDS: u64 = 5;
/// An input that takes longer than this is reported as a hang (libFuzzer's
/// default is 20 minutes, far longer than a smoke).
const INPUT_TIMEOUT_SECONDS: u64 = 10;

/// What one target's run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub target: String,
    /// Inputs executed, from libFuzzer's final `Done N runs in S second(s)`.
    pub executions: Option<u64>,
    /// Seconds libFuzzer reports for the run.
    pub seconds: Option<u64>,
    /// The last stat line (`#N ... cov: ... corp: ...`), for the corpus size.
    pub last_stats: Option<String>,
}

/// `cargo xtask fuzz [--seconds N] [TARGET...]`.
pub fn fuzz(paths: &Paths, args: &[String]) -> Result<ExitCode> {
    let (seconds, targets) = parse_args(args)?;
    if !nightly_available() {
        bail!(
            "fuzzing needs the nightly toolchain (`rustup toolchain install nightly`), which is not installed; \
             `cargo test -p canary-fuzz-checks --test corpus` replays the committed corpus on stable"
        );
    }
    ensure_cargo_fuzz()?;
    let summaries = run_targets(paths, &targets, seconds)?;
    print_summaries(&summaries);
    Ok(ExitCode::SUCCESS)
}

/// The CI smoke: every target for a few seconds when nightly is there;
/// otherwise it says that the stable corpus replay covers the inputs and
/// succeeds. A crash, or a failure to build the targets, is an error.
pub fn smoke(paths: &Paths) -> Result<()> {
    if !nightly_available() {
        eprintln!(
            "fuzz: smoke skipped: the nightly toolchain is not installed; the committed corpus is replayed on stable \
             by `cargo test -p canary-fuzz-checks --test corpus` (part of the workspace tests)"
        );
        return Ok(());
    }
    ensure_cargo_fuzz()?;
    let targets: Vec<String> = TARGETS.iter().map(|target| (*target).to_owned()).collect();
    let summaries = run_targets(paths, &targets, SMOKE_SECONDS)?;
    print_summaries(&summaries);
    Ok(())
}

fn parse_args(args: &[String]) -> Result<(u64, Vec<String>)> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            let value = args.next().context("--seconds needs a number of seconds per target")?;
            seconds = value
                .parse()
                .ok()
                .filter(|seconds| *seconds > 0)
                .with_context(|| format!("--seconds: `{value}` is not a positive whole number of seconds"))?;
        } else if let Some(value) = arg.strip_prefix("--seconds=") {
            seconds = value
                .parse()
                .ok()
                .filter(|seconds| *seconds > 0)
                .with_context(|| format!("--seconds: `{value}` is not a positive whole number of seconds"))?;
        } else if TARGETS.contains(&arg.as_str()) {
            targets.push(arg.clone());
        } else {
            bail!("`{arg}` is neither --seconds N nor a fuzz target; the targets are {}", TARGETS.join(", "));
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|target| (*target).to_owned()).collect();
    }
    Ok((seconds, targets))
}

/// `cargo +nightly ...` with the toolchain the rustup proxy exported to us
/// (the pinned stable of rust-toolchain.toml) removed, so `+nightly` and
/// cargo-fuzz's own `cargo build` both use nightly.
fn nightly_cargo() -> Command {
    let mut cargo = Command::new("cargo");
    cargo.env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO").env_remove("RUSTC").arg("+nightly");
    cargo
}

fn nightly_available() -> bool {
    let mut rustc = Command::new("rustup");
    rustc.env_remove("RUSTUP_TOOLCHAIN").args(["run", "nightly", "rustc", "--version"]);
    match cmd::probe(&mut rustc) {
        Some(version) => {
            eprintln!("fuzz: {}", version.trim());
            true
        }
        None => false,
    }
}

/// Installs cargo-fuzz from crates.io unless `cargo fuzz` already runs.
fn ensure_cargo_fuzz() -> Result<()> {
    if let Some(version) = cmd::probe(nightly_cargo().args(["fuzz", "--version"])) {
        eprintln!("fuzz: {}", version.trim());
        return Ok(());
    }
    eprintln!("fuzz: cargo-fuzz is not installed; installing it from crates.io");
    cmd::run_to_stderr(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz (needs crates.io)")
}

fn run_targets(paths: &Paths, targets: &[String], seconds: u64) -> Result<Vec<RunSummary>> {
    let fuzz_dir = paths.root.join("fuzz");
    let mut summaries = Vec::new();
    for target in targets {
        let seeds = fuzz_dir.join("corpus").join(target);
        let work = fuzz_dir.join("target").join("work-corpus").join(target);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let started = Instant::now();
        let summary = run_target(&paths.root, target, &work, &seeds, seconds)?;
        eprintln!(
            "fuzz: {target}: {} executions in {} s (wall {:.0} s)",
            summary.executions.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            summary.seconds.map_or_else(|| "?".to_owned(), |s| s.to_string()),
            started.elapsed().as_secs_f64()
        );
        summaries.push(summary);
    }
    Ok(summaries)
}

/// Runs one target, echoing libFuzzer's output (it writes to stderr) and
/// reading the execution count from it. A crash, leak or timeout makes
/// libFuzzer exit non-zero, which is an error naming the reproducer.
fn run_target(root: &Path, target: &str, work: &Path, seeds: &Path, seconds: u64) -> Result<RunSummary> {
    let mut command = nightly_cargo();
    command
        .current_dir(root)
        .args(["fuzz", "run", target])
        .arg(work)
        .arg(seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .stderr(Stdio::piped());
    eprintln!("$ {}", cmd::display(&command));
    let mut child = command.spawn().context("could not start `cargo +nightly fuzz`")?;
    let stderr = child.stderr.take().context("the child's stderr is piped")?;
    let mut summary = RunSummary { target: target.to_owned(), executions: None, seconds: None, last_stats: None };
    let mut artifacts = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        eprintln!("{line}");
        read_libfuzzer_line(&line, &mut summary);
        if let Some(path) = line.split_once("Test unit written to ").map(|(_, path)| path.trim().to_owned()) {
            artifacts.push(path);
        }
    }
    let status = child.wait().context("waiting for `cargo fuzz run`")?;
    if !status.success() {
        let found =
            if artifacts.is_empty() { String::new() } else { format!("; reproducer: {}", artifacts.join(", ")) };
        bail!(
            "fuzz target `{target}` failed ({status}){found}. Fix the code, then copy the reproducer into \
             fuzz/corpus/{target}/ so the corpus replay test guards it (fuzz/README.md)"
        );
    }
    Ok(summary)
}

/// Picks the execution count and the last stat line out of libFuzzer's
/// output: `Done 123 runs in 10 second(s)` and `#123\tpulse  cov: ...`.
fn read_libfuzzer_line(line: &str, summary: &mut RunSummary) {
    if let Some(rest) = line.strip_prefix("Done ") {
        let mut words = rest.split_whitespace();
        summary.executions = words.next().and_then(|runs| runs.parse().ok());
        summary.seconds = words.nth(2).and_then(|seconds| seconds.parse().ok());
    } else if line.starts_with('#') && line.contains("cov:") {
        summary.last_stats = Some(line.to_owned());
    }
}

fn print_summaries(summaries: &[RunSummary]) {
    println!("| target | executions | seconds | last libFuzzer stats |");
    println!("|---|---:|---:|---|");
    for summary in summaries {
        let executions = summary.executions.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let seconds = summary.seconds.map_or_else(|| "?".to_owned(), |s| s.to_string());
        let stats = summary.last_stats.as_deref().unwrap_or("").replace('\t', " ");
        println!("| {} | {executions} | {seconds} | `{stats}` |", summary.target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_executions_and_stats_from_libfuzzer_output() {
        let mut summary = RunSummary { target: "t".to_owned(), executions: None, seconds: None, last_stats: None };
        read_libfuzzer_line("#4096\tpulse  cov: 512 ft: 900 corp: 40/2Kb exec/s: 2048 rss: 60Mb", &mut summary);
        read_libfuzzer_line("INFO: Seed: 1234", &mut summary);
        read_libfuzzer_line("Done 123456 runs in 11 second(s)", &mut summary);
        assert_eq!(summary.executions, Some(123_456));
        assert_eq!(summary.seconds, Some(11));
        assert_eq!(
            summary.last_stats.as_deref(),
            Some("#4096\tpulse  cov: 512 ft: 900 corp: 40/2Kb exec/s: 2048 rss: 60Mb")
        );
    }

    #[test]
    fn parses_seconds_and_targets_and_rejects_unknown_words() {
        let args = |words: &[&str]| words.iter().map(|word| (*word).to_owned()).collect::<Vec<_>>();
        let (seconds, targets) = parse_args(&args(&["--seconds", "30", "histogram"])).expect("valid");
        assert_eq!((seconds, targets), (30, vec!["histogram".to_owned()]));
        let (seconds, targets) = parse_args(&args(&[])).expect("valid");
        assert_eq!((seconds, targets.len()), (DEFAULT_SECONDS, TARGETS.len()));
        assert!(parse_args(&args(&["--seconds", "0"])).is_err());
        assert!(parse_args(&args(&["--seconds"])).is_err());
        let error = parse_args(&args(&["histogrm"])).expect_err("unknown target").to_string();
        assert!(error.contains("histogram"), "lists the targets: {error}");
    }

    #[test]
    fn targets_match_the_cargo_fuzz_manifest() {
        let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml"))
            .expect("fuzz/Cargo.toml is readable");
        for target in TARGETS {
            assert!(manifest.contains(&format!("name = \"{target}\"")), "{target} is not a bin of fuzz/Cargo.toml");
        }
        assert_eq!(manifest.matches("[[bin]]").count(), TARGETS.len(), "fuzz/Cargo.toml has a target xtask lacks");
    }
}
