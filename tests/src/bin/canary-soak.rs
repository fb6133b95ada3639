//! The soak (`cargo xtask soak [--minutes N]`): a real stack under steady
//! load for N minutes with an operation injected every 30 s (analyzer
//! `kill -9` and restart, weight change, rollback, new rollout, pause and
//! resume), then a report of lost requests, lost counts and memory growth.
//! See `canary_tests::soak` for what is measured and how it is judged.
//!
//! Prints the report (Markdown) on stdout, writes `report.json` and
//! `report.md` under `target/soak/<UTC time>/` (or `--out`), and exits
//! non-zero when any check is missed. Everything it starts is stopped when
//! it ends, also on Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use canary_tests::Binaries;
use canary_tests::soak::{self, SoakOptions};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Soak: steady load through Envoy with restarts, weight changes, rollbacks and rollouts injected")]
struct Args {
    /// How long the load runs, in minutes; fractions allowed (0.5 = 30 s).
    /// Runs shorter than 3 minutes inject operations more often than every
    /// 30 s, so they still go through the whole cycle.
    #[arg(long, default_value = "10", value_parser = soak::parse_minutes)]
    minutes: f64,
    /// Directory for report.json and report.md (default
    /// target/soak/<UTC time>/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Open-loop request rate through Envoy.
    #[arg(long, default_value_t = 200.0)]
    requests_per_second: f64,
    /// Client keep-alive connections (the most requests in flight).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Share of requests each backend answers with an injected 500 (below
    /// the rollout gate's 1%, so rollouts can be promoted).
    #[arg(long, default_value_t = 0.005)]
    backend_error_rate: f64,
    /// Leave an operation out of the cycle (repeatable): analyzer-restart,
    /// weight-change, rollback, new-rollout, pause-resume. For diagnosis,
    /// e.g. the analyzer's memory over a whole run without restarts.
    #[arg(long, value_parser = soak::Operation::parse)]
    skip: Vec<soak::Operation>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.backend_error_rate) {
        eprintln!("canary-soak: --backend-error-rate must be in 0..=1, got {}", args.backend_error_rate);
        return ExitCode::FAILURE;
    }
    let out = args.out.clone().unwrap_or_else(|| {
        canary_tests::paths::target_dir().join("soak").join(soak::timestamp_dir_name(SystemTime::now()))
    });
    let options = SoakOptions {
        duration: Duration::from_secs_f64(args.minutes * 60.0),
        requests_per_second: args.requests_per_second,
        connections: args.connections.max(1),
        concurrency: args.concurrency.max(1),
        backend_error_rate: args.backend_error_rate,
        skip: args.skip.clone(),
        binaries: Binaries::from_env(),
    };
    // Returning from main (also on a signal) drops the stack, which kills
    // every process the soak started.
    let report = tokio::select! {
        result = soak::run(&options) => result,
        _ = canary_tests::process::shutdown_signal() => {
            eprintln!("canary-soak: interrupted; stopping everything it started");
            return ExitCode::FAILURE;
        }
    };
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            eprintln!("canary-soak: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.to_markdown());
    if let Err(error) = soak::write_report(&report, &out) {
        eprintln!("canary-soak: {error:#}");
        return ExitCode::FAILURE;
    }
    eprintln!("canary-soak: report written to {}/report.{{md,json}}", out.display());
    if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
