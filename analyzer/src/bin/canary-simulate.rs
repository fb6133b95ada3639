//! `canary-simulate`: runs the analysis engine and its two baselines over
//! seeded simulated rollouts and prints the markdown table of
//! `docs/statistics.md`. `cargo xtask simulate` runs it in release mode.
//!
//! The table goes to stdout; progress and timing to stderr. With `--check`
//! the exit status says whether the bounds of the issue hold (A/A
//! false-rollback rate ≤ α, A/B median times within their targets).

use std::process::ExitCode;
use std::time::Instant;

use canary_analyzer::analysis::simulation::{
    SimulationConfig, check_bounds, render_markdown, run_all, standard_scenarios,
};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "canary-simulate", about = "Validate the canary analysis on simulated rollouts")]
struct Args {
    /// Base seed; every run's seed derives from it, the scenario and the run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated 30-minute rollouts per A/A scenario.
    #[arg(long, default_value_t = 2_000)]
    runs_aa: usize,
    /// Simulated rollouts per A/B scenario.
    #[arg(long, default_value_t = 500)]
    runs_ab: usize,
    /// Total false-rollback budget of the engine.
    #[arg(long, default_value_t = 0.01)]
    alpha: f64,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Only run scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Exit with status 1 when a bound does not hold.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        eprintln!("canary-simulate: --alpha must be in (0, 1), got {}", args.alpha);
        return ExitCode::FAILURE;
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let config =
        SimulationConfig { seed: args.seed, runs_aa: args.runs_aa, runs_ab: args.runs_ab, threads, alpha: args.alpha };
    let scenarios: Vec<_> = standard_scenarios(&config)
        .into_iter()
        .filter(|s| args.only.as_deref().is_none_or(|only| s.name.contains(only)))
        .collect();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for scenario in &scenarios {
        let scenario_started = Instant::now();
        outcomes.extend(run_all(&config, std::slice::from_ref(scenario)));
        eprintln!("{}: {} runs in {:.1} s", scenario.name, scenario.runs, scenario_started.elapsed().as_secs_f64());
    }
    print!("{}", render_markdown(&config, &outcomes));
    eprintln!("total {:.1} s on {threads} threads", started.elapsed().as_secs_f64());
    let failures = check_bounds(&config, &outcomes);
    for failure in &failures {
        eprintln!("bound not met: {failure}");
    }
    if args.check && !failures.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
