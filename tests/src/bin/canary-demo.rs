//! The canary demo (`cargo xtask demo`): a real Envoy with the filter, the
//! analyzer, and two backends, under steady load, while an operator walks
//! the canary through 0.01% → 1% → 10% → 25% → 50% and then rolls back.
//!
//! It prints what an SRE watches: the applied weight, each version's traffic
//! and share, error rate and latency percentiles (from the analyzer's
//! `GET /v1/rollout`), whether every Envoy worker has applied the weights,
//! and how long each change took to reach the data plane. Everything it
//! starts is stopped when it ends, also on Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use canary_protocol::Version;
use canary_tests::{BackendOpts, Binaries, Load, LoadReport, Ports, Stack};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Canary traffic-splitting demo on a real Envoy")]
struct Args {
    /// Canary weights to walk through, in percent.
    #[arg(long, value_delimiter = ',', default_value = "0.01,1,10,25,50")]
    steps_percent: Vec<f64>,
    /// How long each weight is held.
    #[arg(long, default_value_t = 6)]
    hold_seconds: u64,
    /// Steady client load through Envoy.
    #[arg(long, default_value_t = 400.0)]
    requests_per_second: f64,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Stable backend's injected error share.
    #[arg(long, default_value_t = 0.001)]
    stable_error_rate: f64,
    /// Canary backend's injected error share.
    #[arg(long, default_value_t = 0.01)]
    canary_error_rate: f64,
}

/// How often the table gets a row.
const ROW_INTERVAL: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    // Returning from main (also on a signal) drops the stack, which kills
    // every process the demo started.
    tokio::select! {
        result = run(&args, started) => result,
        _ = shutdown_signal() => {
            println!("\ninterrupted: stopping everything the demo started");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(terminate) => { terminate.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

async fn run(args: &Args, started: Instant) -> anyhow::Result<()> {
    println!("canary demo: starting stable and canary backends, the analyzer, and Envoy with the canary filter");
    let stack = Arc::new(
        Stack::builder()
            .binaries(Binaries::from_env())
            .concurrency(args.concurrency)
            .ports(Ports::contract_defaults_if_free())
            // The contract's default interval: what production would run.
            .filter_config(json!({ "report_interval_ms": 1000, "proxy_id": "envoy-demo" }))
            .stable(BackendOpts::default().error_rate(args.stable_error_rate).latency_ms(2).latency_jitter_ms(1))
            .canary(BackendOpts::default().error_rate(args.canary_error_rate).latency_ms(4).latency_jitter_ms(2))
            .without_permit()
            .start()
            .await?,
    );
    println!(
        "  envoy listener http://{}   envoy admin http://{}   analyzer http://{}",
        stack.listener(),
        stack.admin(),
        stack.analyzer_address()
    );
    println!(
        "  stable: {:.1}% errors, ~2 ms   canary: {:.1}% errors, ~4 ms   load: {:.0} req/s over {} workers\n",
        args.stable_error_rate * 100.0,
        args.canary_error_rate * 100.0,
        args.requests_per_second,
        args.concurrency
    );

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stack = Arc::clone(&stack);
        let load = Load::requests(10_000_000)
            .rate_per_second(args.requests_per_second)
            .concurrency(16)
            .max_duration(Duration::from_secs(300))
            .stop_flag(Arc::clone(&stop));
        tokio::spawn(async move { stack.load(load).await })
    };

    print_table_header();
    for &canary_percent in &args.steps_percent {
        let answer = stack.set_weight(canary_percent).await?;
        println!("{}", describe_change(&format!("canary -> {canary_percent}%"), &answer, started));
        let hold_until = Instant::now() + Duration::from_secs(args.hold_seconds);
        while Instant::now() < hold_until {
            tokio::time::sleep(ROW_INTERVAL.min(hold_until - Instant::now())).await;
            print_row(&stack.rollout().await?, started);
        }
    }

    let answer = stack.rollback().await?;
    println!("{}", describe_change("ROLLBACK", &answer, started));
    let canary_at_rollback = stack.backend_stats(Version::Canary).await?.served;
    let requests_at_rollback = stack.served().await?.iter().map(|stats| stats.served).sum::<u64>();
    tokio::time::sleep(ROW_INTERVAL).await;
    print_row(&stack.rollout().await?, started);
    let canary_after = stack.backend_stats(Version::Canary).await?.served - canary_at_rollback;
    let requests_after = stack.served().await?.iter().map(|stats| stats.served).sum::<u64>() - requests_at_rollback;
    println!(
        "  after the confirmed rollback: {canary_after} of {requests_after} requests reached canary (requests \
         already in flight at the rollback may finish there)"
    );

    stop.store(true, Ordering::Relaxed);
    let report = load.await.context("load task")?;
    print_summary(&stack, &report, started).await?;
    Ok(())
}

fn print_table_header() {
    println!(
        "{:>6}  {:>7}  {:>8} {:>7} {:>18}  {:>8} {:>8} {:>7} {:>18}  data plane",
        "time", "weight", "stable", "err", "p50/p95/p99 ms", "canary", "share", "err", "p50/p95/p99 ms"
    );
}

/// One table row from `GET /v1/rollout`, using the counts since the last
/// weight change so each step's numbers stand on their own.
fn print_row(rollout: &Value, started: Instant) {
    let stats = |version: &str| &rollout["versions"][version]["since_weights_change"];
    let requests = |version: &str| stats(version)["requests"].as_u64().unwrap_or(0);
    let (stable, canary) = (requests("stable"), requests("canary"));
    let share = if stable + canary > 0 { canary as f64 / (stable + canary) as f64 * 100.0 } else { 0.0 };
    let plane = &rollout["data_plane"];
    println!(
        "{:>5.1}s  {:>6.2}%  {:>8} {:>7} {:>18}  {:>8} {:>7.2}% {:>7} {:>18}  {}/{} workers on v{}{}",
        started.elapsed().as_secs_f64(),
        rollout["canary_weight_percent"].as_f64().unwrap_or(f64::NAN),
        stable,
        percent(&stats("stable")["error_ratio"]),
        percentiles(stats("stable")),
        canary,
        share,
        percent(&stats("canary")["error_ratio"]),
        percentiles(stats("canary")),
        plane["converged_workers"].as_u64().unwrap_or(0),
        plane["live_workers"].as_u64().unwrap_or(0),
        rollout["weights_version"],
        if plane["converged"] == true { " (converged)" } else { " (converging)" },
    );
}

fn percent(ratio: &Value) -> String {
    ratio.as_f64().map_or_else(|| "-".to_owned(), |ratio| format!("{:.2}%", ratio * 100.0))
}

fn percentiles(stats: &Value) -> String {
    let value = |key: &str| stats[key].as_f64().map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"));
    format!("{}/{}/{}", value("p50_ms"), value("p95_ms"), value("p99_ms"))
}

fn describe_change(what: &str, answer: &Value, started: Instant) -> String {
    let wait = &answer["wait"];
    format!(
        "{:>5.1}s  {what}: weights v{} applied by {}/{} workers, confirmed={} in {:.1} ms",
        started.elapsed().as_secs_f64(),
        answer["weights_version"],
        wait["workers_confirmed"],
        wait["workers_total"],
        wait["confirmed"],
        wait["propagation_ms"].as_f64().unwrap_or(f64::NAN),
    )
}

async fn print_summary(stack: &Stack, report: &LoadReport, started: Instant) -> anyhow::Result<()> {
    let [stable, canary] = stack.served().await?;
    // The last reports reach the analyzer within a report interval or two.
    let deadline = Instant::now() + Duration::from_secs(5);
    let rollout = loop {
        let rollout = stack.rollout().await?;
        let total = |version: &str| rollout["versions"][version]["total"]["requests"].as_u64().unwrap_or(0);
        if (total("stable") == stable.served && total("canary") == canary.served) || Instant::now() >= deadline {
            break rollout;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let total = |version: &str| rollout["versions"][version]["total"]["requests"].as_u64().unwrap_or(0);
    println!(
        "\nsummary after {:.1}s: client sent {} requests ({:.0} req/s), {} transport errors",
        started.elapsed().as_secs_f64(),
        report.sent,
        report.requests_per_second(),
        report.transport_errors
    );
    println!(
        "  backends served: stable {} ({} errors), canary {} ({} errors)",
        stable.served, stable.errors, canary.served, canary.errors
    );
    println!(
        "  analyzer counted: stable {}, canary {}  -> {}",
        total("stable"),
        total("canary"),
        if total("stable") == stable.served && total("canary") == canary.served {
            "every request accounted for exactly once"
        } else {
            "MISMATCH with the backends"
        }
    );
    println!("stopping Envoy, the analyzer and the backends");
    Ok(())
}
