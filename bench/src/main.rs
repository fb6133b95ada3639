//! `canary-bench`: runs a benchmark against the real stack, prints its
//! tables and writes the results with the machine description (see the
//! library docs and `bench/README.md`).

use std::path::PathBuf;

use anyhow::Context as _;
use canary_bench::machine::Artifacts;
use canary_bench::propagation::{self, PropagationOptions};
use canary_bench::results::{self, RunContext};
use canary_tests::Binaries;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "canary-bench", about = "Benchmarks against real Envoy, the filter and the analyzer")]
struct Cli {
    #[command(subcommand)]
    benchmark: Benchmark,
}

#[derive(Debug, Subcommand)]
enum Benchmark {
    /// Rollback propagation to every Envoy worker, under steady load, and
    /// whether any request reaches canary after the rollback returned.
    Propagation(PropagationArgs),
}

/// Flags left out take the `--smoke` preset when it is given, else the
/// defaults shown.
#[derive(Debug, Args)]
struct PropagationArgs {
    /// Set-then-rollback rounds per concurrency [default: 50; smoke: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Envoy worker counts, one stack each [default: 2,4; smoke: 2].
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Background load through Envoy in requests per second [default: 500;
    /// smoke: 100].
    #[arg(long)]
    rate: Option<f64>,
    /// Results directory [default: bench/results/<YYYY-MM-DD>-<hostname>;
    /// smoke: under the target directory, so it never overwrites a result].
    #[arg(long)]
    out: Option<PathBuf>,
    /// A few seconds in all: checks the benchmark works (for CI).
    #[arg(long)]
    smoke: bool,
}

impl PropagationArgs {
    fn options(&self) -> PropagationOptions {
        let (rounds, concurrencies, rate_per_second) = if self.smoke {
            (
                PropagationOptions::SMOKE_ROUNDS,
                PropagationOptions::SMOKE_CONCURRENCIES.to_vec(),
                PropagationOptions::SMOKE_RATE_PER_SECOND,
            )
        } else {
            (
                PropagationOptions::DEFAULT_ROUNDS,
                PropagationOptions::DEFAULT_CONCURRENCIES.to_vec(),
                PropagationOptions::DEFAULT_RATE_PER_SECOND,
            )
        };
        PropagationOptions {
            rounds: self.rounds.unwrap_or(rounds),
            concurrencies: self.concurrency.clone().unwrap_or(concurrencies),
            rate_per_second: self.rate.unwrap_or(rate_per_second),
            smoke: self.smoke,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.benchmark {
        Benchmark::Propagation(args) => run_propagation(&args).await,
    }
}

async fn run_propagation(args: &PropagationArgs) -> anyhow::Result<()> {
    let options = args.options();
    let binaries = Binaries::from_env();
    binaries.check()?;
    let context = RunContext::capture(Artifacts::describe(&binaries));
    eprintln!(
        "analyzer: {} ({} build); envoy: {}",
        context.artifacts.analyzer.path.display(),
        context.artifacts.analyzer_build_profile,
        context.artifacts.envoy_version.as_deref().unwrap_or("unknown version")
    );
    let out_dir = results::output_dir(args.out.as_deref(), options.smoke, &context.machine.hostname);
    let result = propagation::run(&options, &binaries, context).await?;
    let markdown = propagation::markdown(&result);
    let (json_path, markdown_path) =
        results::write(&out_dir, "propagation", &result, &markdown).context("writing the results")?;
    println!("{}", propagation::table(&result.runs));
    println!("{}", propagation::breakdown_table(&result.runs));
    let ratios = propagation::ratios(&result.runs);
    if !ratios.is_empty() {
        println!("{ratios}");
    }
    println!("results: {} and {}", json_path.display(), markdown_path.display());
    Ok(())
}
