//! `canary-bench`: runs a benchmark against the real stack, prints its
//! tables and writes the results with the machine description (see the
//! library docs and `bench/README.md`).

use std::path::PathBuf;

use anyhow::Context as _;
use canary_bench::detection::{self, DetectionArgs};
use canary_bench::footprint::{self, FootprintArgs};
use canary_bench::machine::Artifacts;
use canary_bench::overhead::{self, OverheadArgs};
use canary_bench::propagation::{self, PropagationOptions};
use canary_bench::results::{self, RunContext};
use canary_bench::scale::{self, ScaleArgs};
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
    /// Time from a bad canary's first request to its automatic rollback
    /// (5% errors; p95 ×1.5), next to the simulation's for the same scenario.
    Detection(DetectionArgs),
    /// How many proxies one analyzer serves: simulated filter workers report
    /// through the real sync path at 1 Hz, then as fast as acks come back;
    /// the analyzer's CPU, RSS and ingest latency (idle and under load).
    Scale(ScaleArgs),
    /// Data-plane overhead: Envoy CPU per request, maximum throughput and
    /// fixed-rate latency of native weighted_clusters, a no-op wasm filter,
    /// a minimal wasm splitter and the canary filter (random and sticky).
    Overhead(OverheadArgs),
    /// Envoy's side of the footprint: wasm module sizes and Envoy's RSS with
    /// and without the filter at several concurrencies (per-worker VM
    /// memory).
    Footprint(FootprintArgs),
    /// Collects the verdicts of every benchmark in a results directory into
    /// `summary.md` and prints them, one line per target.
    Summary(SummaryArgs),
}

#[derive(Debug, Args)]
struct SummaryArgs {
    /// Results directory [default: today's, as the benchmarks choose it].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Summarise today's smoke results under the target directory.
    #[arg(long)]
    smoke: bool,
}

/// Flags left out take the `--smoke` preset when it is given, else the
/// defaults shown.
#[derive(Debug, Args)]
struct PropagationArgs {
    /// Set-then-rollback rounds per concurrency [default: 200; smoke: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Envoy worker counts, one stack each [default: 2,4; smoke: 2].
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Background load through Envoy in requests per second [default: 2000;
    /// smoke: 100].
    #[arg(long)]
    rate: Option<f64>,
    /// Run the filter with `batch_reports` (its default: one reporter VM per
    /// Envoy); without it, `batch_reports: false` (one sync per worker VM).
    #[arg(long)]
    batched: bool,
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
            batched: self.batched,
            smoke: self.smoke,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.benchmark {
        Benchmark::Propagation(args) => run_propagation(&args).await,
        Benchmark::Detection(args) => run_detection(&args).await,
        Benchmark::Scale(args) => run_scale(&args).await,
        Benchmark::Overhead(args) => run_overhead(&args).await,
        Benchmark::Footprint(args) => run_footprint(&args).await,
        Benchmark::Summary(args) => run_summary(&args),
    }
}

/// The artifacts a stack runs, found as the tests find them and checked,
/// and the context every result records; says on stderr which analyzer and
/// Envoy are measured.
fn artifacts_and_context() -> anyhow::Result<(Binaries, RunContext)> {
    let binaries = Binaries::from_env();
    binaries.check()?;
    let context = RunContext::capture(Artifacts::describe(&binaries));
    eprintln!(
        "analyzer: {} ({} build); envoy: {}",
        context.artifacts.analyzer.path.display(),
        context.artifacts.analyzer_build_profile,
        context.artifacts.envoy_version.as_deref().unwrap_or("unknown version")
    );
    Ok((binaries, context))
}

fn run_summary(args: &SummaryArgs) -> anyhow::Result<()> {
    let hostname = canary_bench::machine::Machine::describe().hostname;
    let dir = results::output_dir(args.out.as_deref(), args.smoke, &hostname);
    let (path, verdicts) = canary_bench::summary::write(&dir)?;
    for verdict in &verdicts {
        println!("{}", verdict.line());
    }
    let missed = verdicts.iter().filter(|verdict| !verdict.met).count();
    println!("{} targets, {missed} missed; summary: {}", verdicts.len(), path.display());
    Ok(())
}

async fn run_propagation(args: &PropagationArgs) -> anyhow::Result<()> {
    let options = args.options();
    let (binaries, context) = artifacts_and_context()?;
    let out_dir = results::output_dir(args.out.as_deref(), options.smoke, &context.machine.hostname);
    let result = propagation::run(&options, &binaries, context).await?;
    let markdown = propagation::markdown(&result);
    let stem = propagation::file_stem(options.batched);
    let (json_path, markdown_path) =
        results::write(&out_dir, stem, &result, &markdown).context("writing the results")?;
    match propagation::plot(&result.runs, &out_dir, stem) {
        Ok(path) => println!("plot: {}", path.display()),
        Err(error) => eprintln!("warning: plot not drawn: {error:#}"),
    }
    println!("{}", propagation::table(&result.runs));
    println!("{}", propagation::breakdown_table(&result.runs));
    let ratios = propagation::ratios(&result.runs);
    if !ratios.is_empty() {
        println!("{ratios}");
    }
    for verdict in &result.verdicts {
        println!("{}", verdict.line());
    }
    println!("results: {} and {}", json_path.display(), markdown_path.display());
    Ok(())
}

async fn run_detection(args: &DetectionArgs) -> anyhow::Result<()> {
    let options = args.options();
    let (binaries, context) = artifacts_and_context()?;
    let out_dir = results::output_dir(args.out.as_deref(), options.smoke, &context.machine.hostname);
    let result = detection::run(&options, &binaries, context).await?;
    let markdown = detection::markdown(&result);
    let (json_path, markdown_path) =
        results::write(&out_dir, "detection", &result, &markdown).context("writing the results")?;
    println!("{}", detection::table(&result.scenarios));
    for verdict in &result.verdicts {
        println!("{}", verdict.line());
    }
    println!("results: {} and {}", json_path.display(), markdown_path.display());
    Ok(())
}

async fn run_scale(args: &ScaleArgs) -> anyhow::Result<()> {
    let options = args.options();
    // Only the analyzer runs here; the other artifacts are described when
    // present, for the record.
    let binaries = Binaries::from_env();
    let context = RunContext::capture(Artifacts::describe(&binaries));
    eprintln!(
        "analyzer: {} ({} build)",
        context.artifacts.analyzer.path.display(),
        context.artifacts.analyzer_build_profile
    );
    if context.artifacts.analyzer_build_profile != "release" && !options.smoke {
        eprintln!(
            "warning: not a release analyzer; build one (`cargo build --release -p canary-analyzer`) and set {}",
            canary_tests::paths::ANALYZER_BIN_ENV
        );
    }
    eprintln!("scale: {}", scale::batching_label(options.batched.then_some(options.workers_per_proxy)));
    let out_dir = results::output_dir(args.out.as_deref(), options.smoke, &context.machine.hostname);
    // Built with canary-bench (same package), so it sits next to it.
    let floor = std::env::current_exe().context("locating canary-bench")?.with_file_name("bench-scale-floor");
    let result = scale::run(&options, &binaries.analyzer, &floor, context).await?;
    let markdown = scale::markdown(&result);
    let stem = scale::file_stem(options.batched);
    let (json_path, markdown_path) =
        results::write(&out_dir, stem, &result, &markdown).context("writing the results")?;
    match scale::plot(&result, &out_dir, stem) {
        Ok(path) => println!("plot: {}", path.display()),
        Err(error) => eprintln!("warning: plot not drawn: {error:#}"),
    }
    println!("{}", scale::sizes_table(&result.sizes));
    if let Some(saturation) = &result.saturation {
        println!("{}", scale::saturation_table(saturation));
    }
    if let Some(line) = scale::floor_line(&result) {
        println!("{line}");
    }
    print!("{}", scale::memory_lines(&result));
    for verdict in &result.verdicts {
        println!("{}", verdict.line());
    }
    println!("results: {} and {}", json_path.display(), markdown_path.display());
    Ok(())
}

async fn run_overhead(args: &OverheadArgs) -> anyhow::Result<()> {
    let (binaries, context) = artifacts_and_context()?;
    let options = args.options(&binaries);
    eprintln!(
        "overhead: load generator: {} build; about {} min",
        overhead::generator_build_profile(),
        options.estimated_duration().as_secs().div_ceil(60),
    );
    if !options.smoke && overhead::generator_build_profile() != "release" {
        eprintln!(
            "warning: a debug load generator shares the load core with the backends; run `cargo run --release -p \
             canary-bench -- overhead` so the load side is not the bottleneck"
        );
    }
    let out_dir = results::output_dir(args.out.as_deref(), options.smoke, &context.machine.hostname);
    let result = overhead::run(&options, &binaries, context).await?;
    let markdown = overhead::markdown(&result);
    let (json_path, markdown_path) =
        results::write(&out_dir, "overhead", &result, &markdown).context("writing the results")?;
    for run in &result.runs {
        println!("concurrency {} (pinned: {}):", run.concurrency, run.pinned);
        println!("{}", overhead::table(run));
        println!("{}", overhead::ratio_table(run));
        if !run.side_by_side.is_empty() {
            println!("{}", overhead::side_by_side_table(run));
        }
    }
    for verdict in &result.verdicts {
        println!("{}", verdict.line());
    }
    match overhead::plots(&result, &out_dir) {
        Ok(paths) => {
            println!("plots: {}", paths.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", "))
        }
        Err(error) => eprintln!("warning: plots not drawn: {error:#}"),
    }
    println!("results: {} and {}", json_path.display(), markdown_path.display());
    Ok(())
}

async fn run_footprint(args: &FootprintArgs) -> anyhow::Result<()> {
    let (binaries, context) = artifacts_and_context()?;
    let options = args.options(&binaries);
    let out_dir = results::output_dir(args.out.as_deref(), options.smoke, &context.machine.hostname);
    let result = footprint::run(&options, &binaries, context).await?;
    let markdown = footprint::markdown(&result);
    let (json_path, markdown_path) =
        results::write(&out_dir, "footprint", &result, &markdown).context("writing the results")?;
    print!("{}", footprint::figures(&result));
    println!("{}", footprint::table(&result));
    println!("results: {} and {}", json_path.display(), markdown_path.display());
    Ok(())
}
