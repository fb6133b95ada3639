//! How long a rollback takes to reach every Envoy worker, and whether
//! anything reaches canary after the API said it had.
//!
//! For each Envoy `--concurrency`, one stack runs steady background load
//! through Envoy while the benchmark repeats a round:
//!
//! 1. `PUT /v1/rollout/weight?wait=true` with 10% canary (confirmed by every
//!    filter VM), then a pause so that canary really serves traffic;
//! 2. `POST /v1/rollout/rollback?wait=true`, timed by the client;
//! 3. the canary backend's served count right after the call returns, and
//!    again after a check window with the load still running. Any growth is a
//!    request that reached canary after a confirmed rollback: a violation.
//!
//! Two times are recorded per rollback: the analyzer's `wait.propagation_ms`
//! (API receipt, through persisting the new weights version, to the last
//! VM's confirmation) and the client's wall time of the call (adds a TCP
//! connect, HTTP parsing and scheduling on both sides).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use canary_protocol::Version;
use canary_tests::envoy::prometheus_value;
use canary_tests::http::HttpResponse;
use canary_tests::{Binaries, Load, LoadReport, Stack};
use hyper::Method;
use serde::Serialize;
use serde_json::{Value, json};

use crate::quantiles::Quantiles;
use crate::results::RunContext;
use crate::{analyzer_log, machine};

/// The canary weight each round sets before rolling back.
pub const CANARY_WEIGHT_PERCENT: f64 = 10.0;
/// Between the confirmed weight change and the rollback: long enough for the
/// canary to serve a few requests at the default rate, so each rollback
/// withdraws live canary traffic.
pub const PAUSE_BEFORE_ROLLBACK: Duration = Duration::from_millis(150);
/// How long the canary's served count must stay flat after a rollback.
pub const CHECK_WINDOW: Duration = Duration::from_millis(150);
/// Keep-alive connections of the background load. The kernel spreads
/// connections over Envoy's workers by hash, so it takes several per worker
/// to give every worker traffic: with 8 over 4 workers one is left idle in
/// over a third of runs, with 32 about once in 2,500. Which workers got
/// connections is recorded (`envoy_connections_by_worker`).
pub const LOAD_CONNECTIONS: usize = 32;
/// Load before the first round, so every connection is open and every
/// worker has seen traffic when measuring starts.
const WARM_UP: Duration = Duration::from_millis(500);
/// Upper bound of one round, to bound the background load: both calls may
/// hit the analyzer's 2 s wait timeout, plus the pauses and stats calls.
const ROUND_BOUND: Duration = Duration::from_secs(6);

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct PropagationOptions {
    pub rounds: usize,
    /// Envoy `--concurrency` values, one stack each, in this order.
    pub concurrencies: Vec<usize>,
    /// Background load through Envoy, requests per second.
    pub rate_per_second: f64,
    pub smoke: bool,
}

impl PropagationOptions {
    pub const DEFAULT_ROUNDS: usize = 50;
    pub const DEFAULT_CONCURRENCIES: [usize; 2] = [2, 4];
    pub const DEFAULT_RATE_PER_SECOND: f64 = 500.0;
    /// A few seconds in all: proves the benchmark works, measures little.
    pub const SMOKE_ROUNDS: usize = 3;
    pub const SMOKE_CONCURRENCIES: [usize; 1] = [2];
    pub const SMOKE_RATE_PER_SECOND: f64 = 100.0;
}

/// The settings a result was measured with, constants included, so a later
/// change of a constant shows up when comparing two result files.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    #[serde(flatten)]
    pub options: PropagationOptions,
    pub canary_weight_percent: f64,
    pub pause_before_rollback_ms: u64,
    pub check_window_ms: u64,
    pub load_connections: usize,
    pub warm_up_ms: u64,
}

/// A whole run: every concurrency, with the context to compare it.
#[derive(Debug, Clone, Serialize)]
pub struct PropagationResult {
    pub benchmark: &'static str,
    /// Bumped when the meaning of a field changes.
    pub schema_version: u32,
    #[serde(flatten)]
    pub context: RunContext,
    pub settings: Settings,
    pub finished_at_unix_ms: u64,
    pub runs: Vec<ConcurrencyRun>,
}

/// One stack at one Envoy concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct ConcurrencyRun {
    pub concurrency: usize,
    /// Filter VMs that sync with the analyzer: one per worker plus the main
    /// thread's.
    pub filter_vms_expected: usize,
    pub filter_configuration: Value,
    pub load_average_before: Option<[f64; 3]>,
    pub load_average_after: Option<[f64; 3]>,
    pub background_load: BackgroundLoad,
    pub counters: CounterDeltas,
    /// Envoy's `listener.*.worker_N.downstream_cx_total` at the end, by
    /// worker id: a worker without connections had no traffic for the
    /// violation check to catch.
    pub envoy_connections_by_worker: BTreeMap<String, u64>,
    pub summary: RunSummary,
    pub samples: Vec<RoundSample>,
}

/// What the background load achieved.
#[derive(Debug, Clone, Serialize)]
pub struct BackgroundLoad {
    pub sent: u64,
    pub elapsed_ms: f64,
    pub achieved_rate_per_second: f64,
    pub transport_errors: u64,
    pub first_error: Option<String>,
    /// Responses by HTTP status.
    pub status: BTreeMap<u16, u64>,
    /// Responses by `x-served-by`.
    pub served_by: BTreeMap<String, u64>,
}

/// Counters of Envoy and the analyzer, as increases from the first round to
/// the end of the last: where to look when a round is an outlier. A failed
/// sync makes a filter VM back off for a report interval before it retries,
/// and a duplicate report is such a retry arriving.
#[derive(Debug, Clone, Serialize)]
pub struct CounterDeltas {
    /// Envoy's `canary_split_sync_failures`, summed over VMs. The filter
    /// flushes it on its 200 ms tick, so it lags by up to one tick.
    pub envoy_sync_failures: Option<f64>,
    /// The analyzer's `canary_reports_received_total`.
    pub analyzer_reports_received: Option<f64>,
    /// The analyzer's `canary_reports_duplicate_total`.
    pub analyzer_reports_duplicate: Option<f64>,
}

/// One set-then-rollback round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundSample {
    pub round: usize,
    pub set_http_status: u16,
    pub set_confirmed: bool,
    /// The analyzer's `wait.propagation_ms` of the 10% weight change.
    pub set_propagation_ms: Option<f64>,
    pub set_weights_version: Option<u64>,
    /// Persisting the 10% version, from the analyzer's log.
    pub set_persist_ms: Option<f64>,
    pub rollback_http_status: u16,
    /// `false` would mean the round's weight change did not happen.
    pub rollback_changed: bool,
    pub rollback_confirmed: bool,
    /// The analyzer's `wait.propagation_ms`: `null` when not confirmed.
    pub propagation_ms: Option<f64>,
    pub rollback_weights_version: Option<u64>,
    /// The part of `propagation_ms` spent persisting the rollback's weights
    /// version before it could be pushed, from the analyzer's log (see
    /// [`crate::analyzer_log`]).
    pub persist_ms: Option<f64>,
    /// Wall time of the rollback call at the client.
    pub client_ms: f64,
    pub workers_total: u64,
    pub workers_confirmed: u64,
    /// Canary requests served from the end of the previous check window to
    /// just after the rollback returned: proof that the round withdrew live
    /// canary traffic.
    pub canary_served_at_weight: u64,
    /// Requests either backend served during the check window: proof that
    /// the check had traffic to catch.
    pub check_window_requests: u64,
    /// Canary requests served during the check window. Must be 0.
    pub canary_served_after_rollback: u64,
}

/// The numbers the table shows, from [`RoundSample`]s.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub rounds: usize,
    pub workers_total_min: u64,
    pub workers_total_max: u64,
    /// Rollbacks without a 200 and full confirmation.
    pub unconfirmed_rollbacks: usize,
    /// Over confirmed rollbacks only.
    pub propagation_ms: Option<Quantiles>,
    pub client_ms: Option<Quantiles>,
    pub set_propagation_ms: Option<Quantiles>,
    /// The persistence part of confirmed rollbacks' `propagation_ms`.
    pub persist_ms: Option<Quantiles>,
    /// The rest: `propagation_ms - persist_ms`, mostly the push to every
    /// filter VM and their confirmations (plus handling the call before the
    /// change). This is the part that depends on the number of workers.
    pub after_persist_ms: Option<Quantiles>,
    /// Confirmed rollbacks after which canary still served something. An
    /// unconfirmed rollback promised nothing, so it cannot violate anything;
    /// it is counted in `unconfirmed_rollbacks` instead.
    pub violation_rounds: usize,
    /// Requests canary served after confirmed rollbacks returned.
    pub violation_requests: u64,
    /// Rounds whose 10% phase served no canary request (weak rounds).
    pub rounds_without_canary_traffic: usize,
    /// Rounds whose check window saw no request at all (unchecked rounds).
    pub check_windows_without_traffic: usize,
}

/// Runs the benchmark: one stack per concurrency, one after the other.
pub async fn run(
    options: &PropagationOptions,
    binaries: &Binaries,
    context: RunContext,
) -> anyhow::Result<PropagationResult> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(options.rate_per_second > 0.0, "--rate must be positive");
    ensure!(!options.concurrencies.is_empty(), "--concurrency needs at least one value");
    let mut runs = Vec::new();
    for &concurrency in &options.concurrencies {
        eprintln!(
            "propagation: concurrency {concurrency}, {} rounds at {} req/s",
            options.rounds, options.rate_per_second
        );
        let run = run_concurrency(options, binaries, concurrency)
            .await
            .with_context(|| format!("propagation at concurrency {concurrency}"))?;
        let summary = &run.summary;
        eprintln!(
            "  concurrency {concurrency}: propagation_ms p50 {}, max {}; {} unconfirmed; {} violations",
            summary.propagation_ms.map_or_else(|| "–".to_owned(), |q| format!("{:.2}", q.p50)),
            summary.propagation_ms.map_or_else(|| "–".to_owned(), |q| format!("{:.2}", q.max)),
            summary.unconfirmed_rollbacks,
            summary.violation_requests,
        );
        runs.push(run);
    }
    Ok(PropagationResult {
        benchmark: "propagation",
        schema_version: 1,
        context,
        settings: Settings {
            options: options.clone(),
            canary_weight_percent: CANARY_WEIGHT_PERCENT,
            pause_before_rollback_ms: PAUSE_BEFORE_ROLLBACK.as_millis() as u64,
            check_window_ms: CHECK_WINDOW.as_millis() as u64,
            load_connections: LOAD_CONNECTIONS,
            warm_up_ms: WARM_UP.as_millis() as u64,
        },
        finished_at_unix_ms: crate::results::unix_now_ms(),
        runs,
    })
}

impl RunSummary {
    pub fn of(samples: &[RoundSample]) -> Self {
        let confirmed: Vec<&RoundSample> = samples.iter().filter(|sample| sample.rollback_confirmed).collect();
        let propagation_ms: Vec<f64> = confirmed.iter().filter_map(|sample| sample.propagation_ms).collect();
        let client_ms: Vec<f64> = samples.iter().map(|sample| sample.client_ms).collect();
        let set_propagation_ms: Vec<f64> = samples.iter().filter_map(|sample| sample.set_propagation_ms).collect();
        let persist_ms: Vec<f64> = confirmed.iter().filter_map(|sample| sample.persist_ms).collect();
        let after_persist_ms: Vec<f64> =
            confirmed.iter().filter_map(|sample| Some(sample.propagation_ms? - sample.persist_ms?)).collect();
        Self {
            rounds: samples.len(),
            workers_total_min: samples.iter().map(|sample| sample.workers_total).min().unwrap_or(0),
            workers_total_max: samples.iter().map(|sample| sample.workers_total).max().unwrap_or(0),
            unconfirmed_rollbacks: samples.len() - confirmed.len(),
            propagation_ms: Quantiles::of(&propagation_ms),
            client_ms: Quantiles::of(&client_ms),
            set_propagation_ms: Quantiles::of(&set_propagation_ms),
            persist_ms: Quantiles::of(&persist_ms),
            after_persist_ms: Quantiles::of(&after_persist_ms),
            violation_rounds: confirmed.iter().filter(|sample| sample.canary_served_after_rollback > 0).count(),
            violation_requests: confirmed.iter().map(|sample| sample.canary_served_after_rollback).sum(),
            rounds_without_canary_traffic: samples.iter().filter(|sample| sample.canary_served_at_weight == 0).count(),
            check_windows_without_traffic: samples.iter().filter(|sample| sample.check_window_requests == 0).count(),
        }
    }
}

impl From<&LoadReport> for BackgroundLoad {
    fn from(report: &LoadReport) -> Self {
        Self {
            sent: report.sent,
            elapsed_ms: millis(report.elapsed),
            achieved_rate_per_second: report.requests_per_second(),
            transport_errors: report.transport_errors,
            first_error: report.first_error.clone(),
            status: report.status.clone(),
            served_by: report.served_by.clone(),
        }
    }
}

/// The per-concurrency table, in Markdown (readable as plain text too).
pub fn table(runs: &[ConcurrencyRun]) -> String {
    let mut out = String::from(
        "| concurrency | rounds | workers | propagation_ms p50 | p90 | p99 | max | client_ms p50 | p90 | p99 | max \
         | unconfirmed | violations |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        let summary = &run.summary;
        let workers = if summary.workers_total_min == summary.workers_total_max {
            summary.workers_total_min.to_string()
        } else {
            format!("{}–{}", summary.workers_total_min, summary.workers_total_max)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} in {} rounds |",
            run.concurrency,
            summary.rounds,
            workers,
            quantile_cells(summary.propagation_ms.as_ref()),
            quantile_cells(summary.client_ms.as_ref()),
            summary.unconfirmed_rollbacks,
            summary.violation_requests,
            summary.violation_rounds,
        );
    }
    out
}

/// Where confirmed rollbacks' `propagation_ms` went: persisting the new
/// version, and the rest (mostly the push and the confirmations).
pub fn breakdown_table(runs: &[ConcurrencyRun]) -> String {
    let mut out = String::from(
        "| concurrency | persist_ms p50 | p90 | p99 | max | after_persist_ms p50 | p90 | p99 | max |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            run.concurrency,
            quantile_cells(run.summary.persist_ms.as_ref()),
            quantile_cells(run.summary.after_persist_ms.as_ref()),
        );
    }
    out
}

fn quantile_cells(quantiles: Option<&Quantiles>) -> String {
    match quantiles {
        Some(q) => format!("{:.2} | {:.2} | {:.2} | {:.2}", q.p50, q.p90, q.p99, q.max),
        None => "– | – | – | –".to_owned(),
    }
}

/// Ratios of every run's p50 and p90 to the first run's: the comparison that
/// stays meaningful across machines. `after_persist_ms` leaves out the disk,
/// so its ratio is the one that shows what more workers cost.
pub fn ratios(runs: &[ConcurrencyRun]) -> String {
    let Some((baseline, others)) = runs.split_first() else { return String::new() };
    let mut out = String::new();
    for run in others {
        let ratio = |pick: fn(&RunSummary) -> Option<Quantiles>, quantile: fn(&Quantiles) -> f64| match (
            pick(&run.summary),
            pick(&baseline.summary),
        ) {
            (Some(this), Some(base)) if quantile(&base) > 0.0 => format!("{:.2}×", quantile(&this) / quantile(&base)),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "- concurrency {} vs {}: propagation_ms p50 {}, p90 {}; client_ms p50 {}, p90 {}; after_persist_ms p50 {}, \
             p90 {}",
            run.concurrency,
            baseline.concurrency,
            ratio(|summary| summary.propagation_ms, |q| q.p50),
            ratio(|summary| summary.propagation_ms, |q| q.p90),
            ratio(|summary| summary.client_ms, |q| q.p50),
            ratio(|summary| summary.client_ms, |q| q.p90),
            ratio(|summary| summary.after_persist_ms, |q| q.p50),
            ratio(|summary| summary.after_persist_ms, |q| q.p90),
        );
    }
    out
}

/// The `propagation.md` next to the JSON.
pub fn markdown(result: &PropagationResult) -> String {
    let context = &result.context;
    let machine = &context.machine;
    let artifacts = &context.artifacts;
    let unknown = || "unknown".to_owned();
    let mut out = String::new();
    let _ = writeln!(out, "# Rollback propagation\n");
    let _ = writeln!(
        out,
        "Measured on `{}` ({}, {} cores available, {} MiB), kernel {}, on {} (UTC).\n",
        machine.hostname,
        machine.cpu_model.clone().unwrap_or_else(unknown),
        machine.cores_available.map_or_else(unknown, |cores| cores.to_string()),
        machine.memory_total_mib.map_or_else(unknown, |mib| mib.to_string()),
        machine.kernel.clone().unwrap_or_else(unknown),
        crate::results::utc_date(context.started_at_unix_ms / 1_000),
    );
    let _ = writeln!(out, "- command: `{}`", context.command_line.join(" "));
    let _ = writeln!(out, "- envoy: {}", artifacts.envoy_version.clone().unwrap_or_else(unknown));
    let _ = writeln!(
        out,
        "- analyzer state (the stacks' temporary directory) on: {}",
        machine.temp_dir_filesystem.as_ref().map_or_else(unknown, |filesystem| format!(
            "{} ({} mounted at {})",
            filesystem.fs_type, filesystem.source, filesystem.mount_point
        ))
    );
    let _ = writeln!(
        out,
        "- analyzer: {} build, `{}`",
        artifacts.analyzer_build_profile,
        artifacts.analyzer.path.display()
    );
    let _ = writeln!(
        out,
        "- source: {}{}",
        artifacts.git_commit.clone().unwrap_or_else(unknown),
        if artifacts.git_dirty == Some(true) { " (with uncommitted changes)" } else { "" }
    );
    let settings = &result.settings;
    let _ = writeln!(
        out,
        "- each round: set {}% canary (`?wait=true`), wait {} ms, roll back (`?wait=true`), then check for {} ms \
         that canary serves nothing; background load {} req/s over {} connections\n",
        settings.canary_weight_percent,
        settings.pause_before_rollback_ms,
        settings.check_window_ms,
        settings.options.rate_per_second,
        settings.load_connections,
    );
    let _ = writeln!(
        out,
        "`propagation_ms` is the analyzer's `wait.propagation_ms` (API receipt to the last filter VM's \
         confirmation); `client_ms` is the wall time of the rollback call at the client. `workers` counts filter \
         VMs: one per Envoy worker plus the main thread's. `violations` are requests the canary backend served \
         after a confirmed rollback returned (must be 0).\n"
    );
    out.push_str(&table(&result.runs));
    let ratios = ratios(&result.runs);
    if !ratios.is_empty() {
        // `ratios` ends with a newline already.
        let _ = write!(out, "\nRatios to the first concurrency:\n\n{ratios}");
    }
    let _ = writeln!(
        out,
        "\nWhere `propagation_ms` goes (confirmed rollbacks; `persist_ms` from the analyzer's log: writing and \
         fsyncing the new version before it is pushed; `after_persist_ms` is the rest, mostly the push to every filter \
         VM and their confirmations; quantiles of parts do not add up to quantiles of the whole):\n"
    );
    out.push_str(&breakdown_table(&result.runs));
    let _ = writeln!(out, "\nPer run:\n");
    for run in &result.runs {
        let summary = &run.summary;
        let load = &run.background_load;
        let set = summary.set_propagation_ms.map_or_else(
            || "–".to_owned(),
            |q| format!("p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms", q.p50, q.p90, q.max),
        );
        let _ = writeln!(
            out,
            "- concurrency {}: background load {} requests at {:.0} req/s, {} transport errors, statuses {:?}; \
             10% set propagation {}; rounds without canary traffic at 10%: {}; check windows without traffic: \
             {}; connections by Envoy worker {:?}; Envoy sync failures {}, analyzer reports {} ({} duplicates); load average (1, 5, 15 min) \
             before {}, after {}",
            run.concurrency,
            load.sent,
            load.achieved_rate_per_second,
            load.transport_errors,
            load.status,
            set,
            summary.rounds_without_canary_traffic,
            summary.check_windows_without_traffic,
            run.envoy_connections_by_worker,
            counter(run.counters.envoy_sync_failures),
            counter(run.counters.analyzer_reports_received),
            counter(run.counters.analyzer_reports_duplicate),
            load_average(run.load_average_before),
            load_average(run.load_average_after),
        );
    }
    out
}

fn load_average(load_average: Option<[f64; 3]>) -> String {
    load_average.map_or_else(|| "unknown".to_owned(), |[one, five, fifteen]| format!("{one:.2} {five:.2} {fifteen:.2}"))
}

fn counter(value: Option<f64>) -> String {
    value.map_or_else(|| "unknown".to_owned(), |value| format!("{value:.0}"))
}

async fn run_concurrency(
    options: &PropagationOptions,
    binaries: &Binaries,
    concurrency: usize,
) -> anyhow::Result<ConcurrencyRun> {
    let builder = Stack::builder().binaries(binaries.clone()).concurrency(concurrency);
    let filter_configuration = serde_json::from_str(&builder.filter_configuration())?;
    let stack = Arc::new(builder.start().await?);
    let load_average_before = machine::load_average();

    // Bounded twice, as the harness requires: the stop flag ends it after
    // the last round, the duration if the benchmark fails half-way.
    let stop = Arc::new(AtomicBool::new(false));
    let max_duration = WARM_UP + ROUND_BOUND * options.rounds as u32;
    let background = {
        let load = Load::requests((options.rate_per_second * max_duration.as_secs_f64()).ceil() as u64)
            .rate_per_second(options.rate_per_second)
            .concurrency(LOAD_CONNECTIONS)
            .max_duration(max_duration)
            .stop_flag(Arc::clone(&stop));
        let stack = Arc::clone(&stack);
        tokio::spawn(async move { stack.load(load).await })
    };
    // The flag also stops the load when a round fails and `?` returns early.
    let _stop_on_exit = SetOnDrop(Arc::clone(&stop));

    tokio::time::sleep(WARM_UP).await;
    let counters_before = Counters::read(&stack).await;
    let mut samples = Vec::with_capacity(options.rounds);
    let mut canary_served_before = canary_served(&stack).await?;
    for round in 0..options.rounds {
        ensure!(!background.is_finished(), "the background load ended before round {round}");
        let sample = measure_round(&stack, round, canary_served_before).await?;
        canary_served_before += sample.canary_served_at_weight + sample.canary_served_after_rollback;
        if (round + 1) % 10 == 0 || round + 1 == options.rounds {
            let propagation =
                sample.propagation_ms.map_or_else(|| "unconfirmed".to_owned(), |ms| format!("{ms:.2} ms"));
            eprintln!("  round {}/{}: propagation {propagation}", round + 1, options.rounds);
        }
        samples.push(sample);
    }
    let persist_ms = analyzer_log::persist_ms_by_version(&stack.analyzer_log());
    for sample in &mut samples {
        let persist_of = |version: Option<u64>| version.and_then(|version| persist_ms.get(&version).copied());
        sample.set_persist_ms = persist_of(sample.set_weights_version);
        sample.persist_ms = persist_of(sample.rollback_weights_version);
    }
    ensure!(!background.is_finished(), "the background load ended before the last check window did");
    let counters_after = Counters::read(&stack).await;
    stop.store(true, Ordering::Relaxed);
    let background = background.await.context("background load task")?;
    let load_average_after = machine::load_average();
    drop(stack);

    Ok(ConcurrencyRun {
        concurrency,
        filter_vms_expected: concurrency + 1,
        filter_configuration,
        load_average_before,
        load_average_after,
        background_load: BackgroundLoad::from(&background),
        counters: counters_after.since(&counters_before),
        envoy_connections_by_worker: counters_after.connections_by_worker.clone(),
        summary: RunSummary::of(&samples),
        samples,
    })
}

/// One round; see the module docs.
async fn measure_round(stack: &Stack, round: usize, canary_served_before: u64) -> anyhow::Result<RoundSample> {
    let set = stack
        .analyzer_call(
            Method::PUT,
            "/v1/rollout/weight?wait=true",
            Some(&json!({ "canary_percent": CANARY_WEIGHT_PERCENT })),
        )
        .await
        .context("set weight")?;
    let set_answer = set.json()?;
    tokio::time::sleep(PAUSE_BEFORE_ROLLBACK).await;

    let started = Instant::now();
    let rollback = stack.analyzer_call(Method::POST, "/v1/rollout/rollback?wait=true", None).await;
    let client_ms = millis(started.elapsed());
    // Canary first: its count is the one the check compares.
    let canary_at_rollback = canary_served(stack).await?;
    let stable_at_rollback = stack.backend_stats(Version::Stable).await?.served;
    let rollback = rollback.context("rollback")?;
    let rollback_answer = rollback.json()?;

    tokio::time::sleep(CHECK_WINDOW).await;
    let canary_after = canary_served(stack).await?;
    let stable_after = stack.backend_stats(Version::Stable).await?.served;

    let wait = &rollback_answer["wait"];
    Ok(RoundSample {
        round,
        set_http_status: set.status.as_u16(),
        set_confirmed: is_confirmed(&set, &set_answer),
        set_propagation_ms: set_answer["wait"]["propagation_ms"].as_f64(),
        set_weights_version: set_answer["weights_version"].as_u64(),
        // Filled in from the analyzer's log once the run is over.
        set_persist_ms: None,
        rollback_http_status: rollback.status.as_u16(),
        rollback_changed: rollback_answer["changed"] == true,
        rollback_confirmed: is_confirmed(&rollback, &rollback_answer),
        propagation_ms: wait["propagation_ms"].as_f64(),
        rollback_weights_version: rollback_answer["weights_version"].as_u64(),
        persist_ms: None,
        client_ms,
        workers_total: wait["workers_total"].as_u64().unwrap_or(0),
        workers_confirmed: wait["workers_confirmed"].as_u64().unwrap_or(0),
        canary_served_at_weight: canary_at_rollback.saturating_sub(canary_served_before),
        check_window_requests: (stable_after + canary_after).saturating_sub(stable_at_rollback + canary_at_rollback),
        canary_served_after_rollback: canary_after.saturating_sub(canary_at_rollback),
    })
}

/// Milliseconds with microsecond resolution, so the JSON shows what was
/// measured rather than binary floating-point noise.
fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1_000.0
}

fn is_confirmed(response: &HttpResponse, answer: &Value) -> bool {
    response.status.is_success() && answer["wait"]["confirmed"] == true
}

async fn canary_served(stack: &Stack) -> anyhow::Result<u64> {
    Ok(stack.backend_stats(Version::Canary).await?.served)
}

/// Raw counter values; see [`CounterDeltas`].
struct Counters {
    connections_by_worker: BTreeMap<String, u64>,
    envoy_sync_failures: Option<f64>,
    analyzer_reports_received: Option<f64>,
    analyzer_reports_duplicate: Option<f64>,
}

impl Counters {
    /// Best effort: a counter that cannot be read is `None`, not an error,
    /// since it only helps explain the measurements.
    async fn read(stack: &Stack) -> Self {
        let envoy = stack.envoy_prometheus().await.ok();
        let analyzer = stack.analyzer_call(Method::GET, "/metrics", None).await.ok().map(|response| response.text());
        Self {
            connections_by_worker: envoy.as_deref().map(connections_by_worker).unwrap_or_default(),
            envoy_sync_failures: envoy.as_deref().and_then(|text| prometheus_value(text, "canary_split_sync_failures")),
            analyzer_reports_received: analyzer
                .as_deref()
                .and_then(|text| prometheus_value(text, "canary_reports_received_total")),
            analyzer_reports_duplicate: analyzer
                .as_deref()
                .and_then(|text| prometheus_value(text, "canary_reports_duplicate_total")),
        }
    }

    fn since(&self, before: &Counters) -> CounterDeltas {
        let delta = |after: Option<f64>, before: Option<f64>| Some(after? - before?);
        CounterDeltas {
            envoy_sync_failures: delta(self.envoy_sync_failures, before.envoy_sync_failures),
            analyzer_reports_received: delta(self.analyzer_reports_received, before.analyzer_reports_received),
            analyzer_reports_duplicate: delta(self.analyzer_reports_duplicate, before.analyzer_reports_duplicate),
        }
    }
}

/// Downstream connections Envoy accepted, by worker id, from its
/// `/stats/prometheus` text.
fn connections_by_worker(prometheus: &str) -> BTreeMap<String, u64> {
    const SERIES: &str = "envoy_listener_worker_downstream_cx_total{";
    const WORKER_LABEL: &str = "envoy_worker_id=\"";
    let mut connections = BTreeMap::new();
    for line in prometheus.lines() {
        let Some(labels_and_value) = line.strip_prefix(SERIES) else { continue };
        let Some((labels, value)) = labels_and_value.rsplit_once("} ") else { continue };
        let Some(worker) = labels.split_once(WORKER_LABEL).and_then(|(_, rest)| rest.split_once('"')) else {
            continue;
        };
        if let Ok(value) = value.trim().parse::<f64>() {
            *connections.entry(worker.0.to_owned()).or_default() += value as u64;
        }
    }
    connections
}

/// Sets a flag when dropped.
#[derive(Debug)]
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(confirmed: bool, propagation_ms: f64, persist_ms: f64, canary_after: u64) -> RoundSample {
        RoundSample {
            round: 0,
            set_http_status: 200,
            set_confirmed: true,
            set_propagation_ms: Some(1.0),
            set_weights_version: Some(2),
            set_persist_ms: Some(0.5),
            rollback_http_status: if confirmed { 200 } else { 504 },
            rollback_changed: true,
            rollback_confirmed: confirmed,
            propagation_ms: confirmed.then_some(propagation_ms),
            rollback_weights_version: Some(3),
            persist_ms: Some(persist_ms),
            client_ms: propagation_ms + 1.0,
            workers_total: 3,
            workers_confirmed: if confirmed { 3 } else { 2 },
            canary_served_at_weight: 5,
            check_window_requests: 70,
            canary_served_after_rollback: canary_after,
        }
    }

    #[test]
    fn summary_counts_violations_of_confirmed_rollbacks_only() {
        let samples = [sample(true, 4.0, 3.0, 0), sample(true, 6.0, 2.0, 2), sample(false, 2_000.0, 1.0, 7)];
        let summary = RunSummary::of(&samples);
        assert_eq!((summary.rounds, summary.unconfirmed_rollbacks), (3, 1));
        // The unconfirmed rollback promised nothing; its canary requests are
        // not violations.
        assert_eq!((summary.violation_rounds, summary.violation_requests), (1, 2));
        let propagation = summary.propagation_ms.expect("two confirmed");
        assert_eq!((propagation.count, propagation.p50, propagation.max), (2, 4.0, 6.0));
        let after_persist = summary.after_persist_ms.expect("two confirmed");
        assert_eq!((after_persist.p50, after_persist.max), (1.0, 4.0));
        // The client waited for every call, confirmed or not.
        assert_eq!(summary.client_ms.map(|client| client.count), Some(3));
    }

    #[test]
    fn reads_connections_by_worker() {
        let prometheus = "\
# TYPE envoy_listener_worker_downstream_cx_total counter
envoy_listener_worker_downstream_cx_total{envoy_worker_id=\"0\",envoy_listener_address=\"127.0.0.1_0\"} 9
envoy_listener_worker_downstream_cx_total{envoy_worker_id=\"1\",envoy_listener_address=\"127.0.0.1_0\"} 0
envoy_listener_worker_downstream_cx_active{envoy_worker_id=\"0\",envoy_listener_address=\"127.0.0.1_0\"} 9
envoy_server_worker_watchdog_miss{envoy_worker_id=\"0\"} 0
";
        assert_eq!(connections_by_worker(prometheus), BTreeMap::from([("0".to_owned(), 9), ("1".to_owned(), 0)]));
    }
}
