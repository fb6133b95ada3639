//! How long a rollback takes to reach every Envoy worker, and whether
//! anything reaches canary after the API said it had.
//!
//! For each Envoy `--concurrency`, one stack runs steady background load
//! through Envoy while the benchmark repeats a round:
//!
//! 1. `PUT /v1/rollout/weight?wait=true` with 100% canary (confirmed by every
//!    filter VM), then a pause so that canary really serves traffic;
//! 2. `POST /v1/rollout/rollback?wait=true`, timed by the client;
//! 3. the canary backend's served count right after the call returns, and
//!    again after a check window with the load still running. Any growth is a
//!    request that reached canary after a confirmed rollback: a violation.
//!
//! Three times are recorded per rollback:
//! - on the data plane, the *last canary send*: the latest send time of a
//!   background request that canary answered, minus the send time of the
//!   rollback call. After it no new request reached canary, on any worker:
//!   this is the issue's "time from the API call to the moment after which
//!   no new request reaches canary". The background load records every
//!   request's send time and `x-served-by`, so at 2,000 req/s the cut-over
//!   is located to about half a millisecond over all workers (one request
//!   interval per worker: 1 ms at 2 workers, 2 ms at 4);
//! - the analyzer's `wait.propagation_ms` (API receipt, through persisting
//!   the new weights version, to the last VM's confirmation);
//! - the client's wall time of the call until `?wait=true` confirmed (adds a
//!   TCP connect, HTTP parsing and scheduling on both sides).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
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

use crate::plots::{self, LineChart, Marker, Series, XScale};
use crate::quantiles::Quantiles;
use crate::report::{self, Bound, Verdict};
use crate::results::RunContext;
use crate::{analyzer_log, machine};

/// The canary weight each round sets before rolling back: all of it, so that
/// every request a worker routes before its cut-over goes to canary, and the
/// last canary request marks the cut-over to within one request interval. At
/// 10%, a worker of four at 2,000 req/s routes a canary request only every
/// 20 ms on average, and the last canary send would trail the cut-over by
/// that much: the measure would be sampling noise. The rollback itself is the
/// same at any weight (a new weights version pushed to every worker).
pub const CANARY_WEIGHT_PERCENT: f64 = 100.0;
/// Between the confirmed weight change and the rollback: long enough for the
/// canary to serve live traffic on every worker, so each rollback withdraws
/// it.
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

/// The results' file stem: a batched run sits next to a per-worker one.
pub fn file_stem(batched: bool) -> &'static str {
    if batched { "propagation-batched" } else { "propagation" }
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct PropagationOptions {
    pub rounds: usize,
    /// Envoy `--concurrency` values, one stack each, in this order.
    pub concurrencies: Vec<usize>,
    /// Background load through Envoy, requests per second.
    pub rate_per_second: f64,
    /// The filter runs with `batch_reports` (its default): one reporter VM
    /// per Envoy syncs for all, and new weights reach the other VMs through
    /// their shared queues. Otherwise `batch_reports: false`, one sync call
    /// per worker VM.
    pub batched: bool,
    pub smoke: bool,
}

impl PropagationOptions {
    /// Enough that p99 is not simply the maximum (it is the 198th of 200).
    pub const DEFAULT_ROUNDS: usize = 200;
    pub const DEFAULT_CONCURRENCIES: [usize; 2] = [2, 4];
    /// One request every half millisecond: the resolution of the data-plane
    /// measure.
    pub const DEFAULT_RATE_PER_SECOND: f64 = 2_000.0;
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
    /// The targets, per concurrency: the data-plane measure and the
    /// confirmation, p99 ≤ 20 ms each.
    pub verdicts: Vec<Verdict>,
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
    /// How late requests went out against the rate schedule (send time minus
    /// due time). The load claims the next due request on whichever of its
    /// connections is free, so one slow answer does not hold the schedule
    /// back; a large lateness would mean the generator itself could not
    /// keep up, and the data-plane measure's resolution is worse by as much.
    pub send_lateness_ms: Option<Quantiles>,
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
    /// The analyzer's `wait.propagation_ms` of the weight change before the
    /// rollback.
    pub set_propagation_ms: Option<f64>,
    pub set_weights_version: Option<u64>,
    /// Persisting that weight change's version, from the analyzer's log.
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
    /// The background load's view of the round, filled in once the load has
    /// ended.
    #[serde(flatten)]
    pub data_plane: DataPlane,
}

/// The data plane's view of one rollback, from the background load's
/// per-request send times and `x-served-by`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DataPlane {
    /// The latest send time of a request canary answered, minus the send
    /// time of the rollback call: after it, no new request reached canary on
    /// any worker. Negative when the last canary request went out before the
    /// call (a worker with no traffic at that moment). `None` when canary
    /// answered nothing sent in the round.
    pub last_canary_send_ms: Option<f64>,
    /// From that last canary send to the next request sent (to stable): how
    /// finely the load located the cut-over in this round.
    pub next_send_gap_ms: Option<f64>,
    /// Background requests sent from the weight change's call to the end of
    /// the check window.
    pub round_requests_sent: u64,
    /// Requests canary answered that were sent after the confirmed rollback
    /// had returned. Must be 0; the send-time twin of
    /// `canary_served_after_rollback`.
    pub canary_sent_after_return: u64,
}

/// One background request, as the data-plane measure sees it: its send time
/// in milliseconds since the run's origin, and whether canary answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SentRequest {
    pub sent_ms: f64,
    pub canary: bool,
}

/// When a round's calls happened, in milliseconds since the run's origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundTimes {
    pub set_sent_ms: f64,
    pub rollback_sent_ms: f64,
    pub rollback_returned_ms: f64,
    pub check_ended_ms: f64,
}

impl DataPlane {
    /// The data plane's view of the round `times`, from `requests` sorted by
    /// send time. Only requests sent between the weight change's call and
    /// the end of the check window belong to the round: before it canary was
    /// at 0% since the previous rollback.
    pub fn of(requests: &[SentRequest], times: &RoundTimes) -> Self {
        let start = requests.partition_point(|request| request.sent_ms < times.set_sent_ms);
        let end = requests.partition_point(|request| request.sent_ms <= times.check_ended_ms);
        let round = requests.get(start..end).unwrap_or_default();
        let last_canary = round.iter().rposition(|request| request.canary);
        let next_send_gap_ms = last_canary.and_then(|position| {
            let next = round.get(position + 1).or_else(|| requests.get(end))?;
            Some(next.sent_ms - round[position].sent_ms)
        });
        Self {
            last_canary_send_ms: last_canary
                .map(|position| whole_micros(round[position].sent_ms - times.rollback_sent_ms)),
            next_send_gap_ms: next_send_gap_ms.map(whole_micros),
            round_requests_sent: round.len() as u64,
            canary_sent_after_return: round
                .iter()
                .filter(|request| request.canary && request.sent_ms > times.rollback_returned_ms)
                .count() as u64,
        }
    }
}

/// The numbers the table shows, from [`RoundSample`]s.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub rounds: usize,
    pub workers_total_min: u64,
    pub workers_total_max: u64,
    /// Rollbacks without a 200 and full confirmation.
    pub unconfirmed_rollbacks: usize,
    /// The data-plane measure over every round that had canary traffic.
    pub last_canary_send_ms: Option<Quantiles>,
    /// Its smallest value, for the verdict's range.
    pub last_canary_send_ms_min: Option<f64>,
    /// How finely the load located each round's cut-over.
    pub next_send_gap_ms: Option<Quantiles>,
    /// Rounds in which canary answered no background request sent in the
    /// round (no data-plane measure).
    pub rounds_without_canary_send: usize,
    /// Canary answers to requests sent after a confirmed rollback returned,
    /// over confirmed rollbacks. Must be 0.
    pub canary_sent_after_return: u64,
    /// Over confirmed rollbacks only.
    pub propagation_ms: Option<Quantiles>,
    pub client_ms: Option<Quantiles>,
    /// Its smallest value, for the verdict's range.
    pub client_ms_min: Option<f64>,
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
    /// Rounds whose phase at the canary weight served no canary request
    /// (weak rounds).
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
        let run = run_concurrency(options, binaries, concurrency).await;
        report::progress_done();
        let run = run.with_context(|| format!("propagation at concurrency {concurrency}"))?;
        let summary = &run.summary;
        let p50_max = |quantiles: Option<Quantiles>| {
            quantiles.map_or_else(|| "–".to_owned(), |q| format!("p50 {:.2}, max {:.2}", q.p50, q.max))
        };
        eprintln!(
            "propagation: concurrency {concurrency}: last canary send ms {}; propagation_ms {}; {} unconfirmed; {} \
             violations",
            p50_max(summary.last_canary_send_ms),
            p50_max(summary.propagation_ms),
            summary.unconfirmed_rollbacks,
            summary.violation_requests + summary.canary_sent_after_return,
        );
        if let Some(warning) = run.background_load.behind_warning() {
            eprintln!("propagation: concurrency {concurrency}: {warning}");
        }
        runs.push(run);
    }
    let verdicts = verdicts(&runs, options.batched);
    Ok(PropagationResult {
        benchmark: "propagation",
        // 2: 100% canary before each rollback (was 10%), the data-plane
        // measure, verdicts.
        schema_version: 2,
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
        verdicts,
    })
}

/// The target for both measures: p99 at most this.
pub const TARGET_P99_MS: f64 = 20.0;

/// Per concurrency: the data-plane measure and the confirmation at the
/// client, each p99 ≤ [`TARGET_P99_MS`]. A run without samples gets a NaN
/// value, which misses. A batched run's verdicts say so.
pub fn verdicts(runs: &[ConcurrencyRun], batched: bool) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for run in runs {
        let summary = &run.summary;
        let verdict = |quantity: &str, quantiles: Option<Quantiles>, min: Option<f64>| {
            let quantity = format!(
                "{quantity}, p99 at concurrency {}{} ({} rollbacks)",
                run.concurrency,
                if batched { ", batched reports" } else { "" },
                quantiles.map_or(0, |q| q.count)
            );
            let verdict = Verdict::new(
                "propagation",
                &quantity,
                quantiles.map_or(f64::NAN, |q| q.p99),
                Bound::AtMost,
                TARGET_P99_MS,
                " ms",
            );
            match (quantiles, min) {
                (Some(q), Some(min)) => verdict.with_range(min, q.max),
                _ => verdict,
            }
        };
        verdicts.push(verdict(
            "API call to the last request sent to canary (data plane)",
            summary.last_canary_send_ms,
            summary.last_canary_send_ms_min,
        ));
        verdicts.push(verdict("API call to `?wait=true` confirmed (client)", summary.client_ms, summary.client_ms_min));
    }
    verdicts
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
        let last_canary_send_ms: Vec<f64> =
            samples.iter().filter_map(|sample| sample.data_plane.last_canary_send_ms).collect();
        let next_send_gap_ms: Vec<f64> =
            samples.iter().filter_map(|sample| sample.data_plane.next_send_gap_ms).collect();
        let min = |values: &[f64]| values.iter().copied().reduce(f64::min);
        Self {
            rounds: samples.len(),
            last_canary_send_ms: Quantiles::of(&last_canary_send_ms),
            last_canary_send_ms_min: min(&last_canary_send_ms),
            next_send_gap_ms: Quantiles::of(&next_send_gap_ms),
            rounds_without_canary_send: samples.len() - last_canary_send_ms.len(),
            canary_sent_after_return: confirmed.iter().map(|sample| sample.data_plane.canary_sent_after_return).sum(),
            client_ms_min: min(&client_ms),
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

/// Above this p99 lateness the background load could not keep its schedule:
/// the data-plane measure's resolution is gone (a few request intervals).
pub const LATE_SEND_WARNING_MS: f64 = 5.0;

impl BackgroundLoad {
    /// A warning when the load fell behind its schedule, which means the
    /// machine was too busy for the data-plane measure to be trusted.
    pub fn behind_warning(&self) -> Option<String> {
        let lateness = self.send_lateness_ms?;
        (lateness.p99 > LATE_SEND_WARNING_MS).then(|| {
            format!(
                "the background load fell behind its schedule (p99 {:.2} ms, max {:.2} ms late, above {} ms): the \
                 machine was too busy, so the data-plane numbers of this run are not to be trusted",
                lateness.p99, lateness.max, LATE_SEND_WARNING_MS
            )
        })
    }
}

impl From<&LoadReport> for BackgroundLoad {
    fn from(report: &LoadReport) -> Self {
        let lateness_ms: Vec<f64> = report
            .outcomes
            .iter()
            .filter_map(|outcome| Some(millis(outcome.sent_at?.saturating_duration_since(outcome.due_at?))))
            .collect();
        Self {
            sent: report.sent,
            elapsed_ms: millis(report.elapsed),
            achieved_rate_per_second: report.requests_per_second(),
            send_lateness_ms: Quantiles::of(&lateness_ms),
            transport_errors: report.transport_errors,
            first_error: report.first_error.clone(),
            status: report.status.clone(),
            served_by: report.served_by.clone(),
        }
    }
}

/// The per-concurrency table, in Markdown (readable as plain text too): the
/// data-plane measure, then the confirmation as the analyzer and the client
/// saw it.
/// `<stem>-cdf.svg` (`propagation-cdf.svg`, or `propagation-batched-cdf.svg`
/// for a `--batched` run): per concurrency, the CDF of the data-plane
/// measure (last canary send) and of the client's wait for `?wait=true`,
/// with the 20 ms target as a vertical line.
pub fn plot(runs: &[ConcurrencyRun], dir: &Path, stem: &str) -> anyhow::Result<PathBuf> {
    let mut series = Vec::new();
    for run in runs {
        let last_sends: Vec<f64> =
            run.samples.iter().filter_map(|sample| sample.data_plane.last_canary_send_ms).collect();
        let confirmations: Vec<f64> = run.samples.iter().map(|sample| sample.client_ms).collect();
        series.push(Series {
            label: format!("last canary send, concurrency {}", run.concurrency),
            points: plots::cdf_points(&last_sends),
        });
        series.push(Series {
            label: format!("?wait=true confirmed, concurrency {}", run.concurrency),
            points: plots::cdf_points(&confirmations),
        });
    }
    let path = dir.join(format!("{stem}-cdf.svg"));
    LineChart {
        title: "Rollback propagation: CDF over rounds",
        x_label: "ms after the rollback call was sent",
        y_label: "% of rollbacks",
        x_scale: XScale::Linear,
        series: &series,
        vertical_markers: &[Marker { label: format!("target p99 {TARGET_P99_MS} ms"), value: TARGET_P99_MS }],
        horizontal_markers: &[],
        legend: plots::Legend::LowerRight,
    }
    .draw(&path)?;
    Ok(path)
}

pub fn table(runs: &[ConcurrencyRun]) -> String {
    let mut out = String::from(
        "| concurrency | rounds | workers | last_canary_send_ms p50 | p90 | p99 | max | propagation_ms p50 | p90 | p99 \
         | max | client_ms p50 | p90 | p99 | max | unconfirmed | violations |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
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
            "| {} | {} | {} | {} | {} | {} | {} | {} in {} rounds, {} by send time |",
            run.concurrency,
            summary.rounds,
            workers,
            quantile_cells(summary.last_canary_send_ms.as_ref()),
            quantile_cells(summary.propagation_ms.as_ref()),
            quantile_cells(summary.client_ms.as_ref()),
            summary.unconfirmed_rollbacks,
            summary.violation_requests,
            summary.violation_rounds,
            summary.canary_sent_after_return,
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
            "- concurrency {} vs {}: last_canary_send_ms p50 {}, p90 {}; propagation_ms p50 {}, p90 {}; client_ms p50 \
             {}, p90 {}; after_persist_ms p50 {}, p90 {}",
            run.concurrency,
            baseline.concurrency,
            ratio(|summary| summary.last_canary_send_ms, |q| q.p50),
            ratio(|summary| summary.last_canary_send_ms, |q| q.p90),
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
    out.push_str(&context.markdown_preamble());
    if result.settings.options.batched {
        let _ = writeln!(
            out,
            "- filter: `batch_reports` on: one reporter VM per Envoy syncs for all its VMs \
             (`POST /v1/filter/sync-batch`); new weights reach the others through their shared queues"
        );
    } else {
        let _ = writeln!(out, "- filter: `batch_reports: false`: each VM keeps its own `POST /v1/filter/sync` open");
    }
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
        "`last_canary_send_ms` is the data-plane measure: the latest send time of a background request that canary \
         answered, minus the send time of the rollback call; after it no new request reached canary on any worker. \
         `propagation_ms` is the analyzer's `wait.propagation_ms` (API receipt to the last filter VM's \
         confirmation); `client_ms` is the wall time of the rollback call at the client, until `?wait=true` \
         confirmed. `workers` counts filter VMs: one per Envoy worker plus the main thread's. `violations` are \
         requests the canary backend served after a confirmed rollback returned, and canary answers to requests \
         sent after it returned (both must be 0).\n"
    );
    let _ = writeln!(out, "Verdicts (p99 is nearest-rank: with fewer than 100 rounds it is the maximum):\n");
    for verdict in &result.verdicts {
        let _ = writeln!(out, "- {}", verdict.line());
    }
    out.push('\n');
    out.push_str(&table(&result.runs));
    let ratios = ratios(&result.runs);
    if !ratios.is_empty() {
        // `ratios` ends with a newline already.
        let _ = write!(out, "\nRatios to the first concurrency:\n\n{ratios}");
    }
    let _ = writeln!(
        out,
        "\nWhere `propagation_ms` goes (confirmed rollbacks; `persist_ms` from the analyzer's log: making the \
         new version durable before it is pushed; `after_persist_ms` is the rest, mostly the push to every filter \
         VM and their confirmations; quantiles of parts do not add up to quantiles of the whole):\n"
    );
    out.push_str(&breakdown_table(&result.runs));
    let _ = writeln!(out, "\nPer run:\n");
    for run in &result.runs {
        if let Some(warning) = run.background_load.behind_warning() {
            let _ = writeln!(out, "- **concurrency {}: {warning}.**", run.concurrency);
        }
        let summary = &run.summary;
        let load = &run.background_load;
        let set = summary.set_propagation_ms.map_or_else(
            || "–".to_owned(),
            |q| format!("p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms", q.p50, q.p90, q.max),
        );
        let lateness = load.send_lateness_ms.map_or_else(
            || "–".to_owned(),
            |q| format!("p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", q.p50, q.p99, q.max),
        );
        let gap = summary.next_send_gap_ms.map_or_else(
            || "–".to_owned(),
            |q| format!("p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", q.p50, q.p99, q.max),
        );
        let _ = writeln!(
            out,
            "- concurrency {}: background load {} requests at {:.0} req/s, {} transport errors, statuses {:?}, sent \
             late against the schedule by {lateness}; gap from the last canary send to the next send {gap}; rounds \
             without a canary send: {}; {}% set propagation {}; rounds without canary traffic at the weight: {}; \
             check windows without traffic: {}; connections by Envoy worker {:?}; Envoy sync failures {}, analyzer \
             reports {} ({} duplicates); load average (1, 5, 15 min) before {}, after {}",
            run.concurrency,
            load.sent,
            load.achieved_rate_per_second,
            load.transport_errors,
            load.status,
            summary.rounds_without_canary_send,
            result.settings.canary_weight_percent,
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
    // Said either way, so the run measures the mode it names whatever the
    // filter's default.
    let builder = Stack::builder()
        .binaries(binaries.clone())
        .concurrency(concurrency)
        .filter_config(serde_json::json!({"batch_reports": options.batched}));
    let filter_configuration = serde_json::from_str(&builder.filter_configuration())?;
    report::progress("propagation", &format!("concurrency {concurrency}: starting the stack"));
    let stack = Arc::new(builder.start().await?);
    let load_average_before = machine::load_average();
    // Every time of the data-plane measure is taken from here.
    let origin = Instant::now();

    // Bounded twice, as the harness requires: the stop flag ends it after
    // the last round, the duration if the benchmark fails half-way.
    let stop = Arc::new(AtomicBool::new(false));
    let max_duration = WARM_UP + ROUND_BOUND * options.rounds as u32;
    let background = {
        let load = Load::requests((options.rate_per_second * max_duration.as_secs_f64()).ceil() as u64)
            .rate_per_second(options.rate_per_second)
            .concurrency(LOAD_CONNECTIONS)
            .max_duration(max_duration)
            .record_each()
            .stop_flag(Arc::clone(&stop));
        let stack = Arc::clone(&stack);
        tokio::spawn(async move { stack.load(load).await })
    };
    // The flag also stops the load when a round fails and `?` returns early.
    let _stop_on_exit = SetOnDrop(Arc::clone(&stop));

    tokio::time::sleep(WARM_UP).await;
    let counters_before = Counters::read(&stack).await;
    let mut samples = Vec::with_capacity(options.rounds);
    let mut times = Vec::with_capacity(options.rounds);
    let mut canary_served_before = canary_served(&stack).await?;
    for round in 0..options.rounds {
        ensure!(!background.is_finished(), "the background load ended before round {round}");
        let (sample, round_times) = measure_round(&stack, round, canary_served_before, origin).await?;
        canary_served_before += sample.canary_served_at_weight + sample.canary_served_after_rollback;
        let propagation = sample.propagation_ms.map_or_else(|| "unconfirmed".to_owned(), |ms| format!("{ms:.2} ms"));
        report::progress(
            "propagation",
            &format!(
                "concurrency {concurrency}: round {}/{}, confirmed in {propagation} (client {:.2} ms)",
                round + 1,
                options.rounds,
                sample.client_ms
            ),
        );
        samples.push(sample);
        times.push(round_times);
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

    let requests = sent_requests(&background, origin);
    for (sample, round_times) in samples.iter_mut().zip(&times) {
        sample.data_plane = DataPlane::of(&requests, round_times);
    }

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

/// Answered background requests by send time, in milliseconds since
/// `origin`.
fn sent_requests(report: &LoadReport, origin: Instant) -> Vec<SentRequest> {
    let canary = Version::Canary.as_str();
    let mut requests: Vec<SentRequest> = report
        .outcomes
        .iter()
        .filter(|outcome| outcome.status.is_some())
        .filter_map(|outcome| {
            Some(SentRequest {
                sent_ms: millis(outcome.sent_at?.saturating_duration_since(origin)),
                canary: outcome.served_by.as_deref() == Some(canary),
            })
        })
        .collect();
    requests.sort_by(|left, right| left.sent_ms.total_cmp(&right.sent_ms));
    requests
}

/// One round; see the module docs.
async fn measure_round(
    stack: &Stack,
    round: usize,
    canary_served_before: u64,
    origin: Instant,
) -> anyhow::Result<(RoundSample, RoundTimes)> {
    let since_origin = |at: Instant| millis(at.saturating_duration_since(origin));
    let set_sent_ms = since_origin(Instant::now());
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
    let returned = Instant::now();
    let client_ms = millis(returned.duration_since(started));
    // Canary first: its count is the one the check compares.
    let canary_at_rollback = canary_served(stack).await?;
    let stable_at_rollback = stack.backend_stats(Version::Stable).await?.served;
    let rollback = rollback.context("rollback")?;
    let rollback_answer = rollback.json()?;

    tokio::time::sleep(CHECK_WINDOW).await;
    let canary_after = canary_served(stack).await?;
    let stable_after = stack.backend_stats(Version::Stable).await?.served;
    let times = RoundTimes {
        set_sent_ms,
        rollback_sent_ms: since_origin(started),
        rollback_returned_ms: since_origin(returned),
        check_ended_ms: since_origin(Instant::now()),
    };

    let wait = &rollback_answer["wait"];
    let sample = RoundSample {
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
        // Filled in once the background load has ended.
        data_plane: DataPlane::default(),
    };
    Ok((sample, times))
}

/// Milliseconds with microsecond resolution, so the JSON shows what was
/// measured rather than binary floating-point noise.
fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1_000.0
}

/// A difference of two [`millis`] values, rounded back to whole microseconds
/// (the subtraction leaves binary floating-point noise).
fn whole_micros(ms: f64) -> f64 {
    (ms * 1_000.0).round() / 1_000.0
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
            data_plane: DataPlane {
                last_canary_send_ms: Some(propagation_ms - 1.0),
                next_send_gap_ms: Some(0.5),
                round_requests_sent: 600,
                canary_sent_after_return: 0,
            },
        }
    }

    const TIMES: RoundTimes =
        RoundTimes { set_sent_ms: 100.0, rollback_sent_ms: 260.0, rollback_returned_ms: 265.0, check_ended_ms: 420.0 };

    fn requests(sends: &[(f64, bool)]) -> Vec<SentRequest> {
        sends.iter().map(|&(sent_ms, canary)| SentRequest { sent_ms, canary }).collect()
    }

    #[test]
    fn the_last_canary_send_is_measured_from_the_rollback_call() {
        let sends = requests(&[
            (90.0, true), // the previous round's: not this round's
            (100.0, true),
            (259.5, true),
            (262.0, true),
            (262.5, false),
            (263.0, true), // the last canary send: 3 ms after the call
            (263.5, false),
            (300.0, false),
            (420.0, false),
            (425.0, true), // the next round's
        ]);
        let data_plane = DataPlane::of(&sends, &TIMES);
        assert_eq!(data_plane.last_canary_send_ms, Some(3.0));
        assert_eq!(data_plane.next_send_gap_ms, Some(0.5));
        assert_eq!(data_plane.round_requests_sent, 8);
        assert_eq!(data_plane.canary_sent_after_return, 0);
    }

    #[test]
    fn canary_answers_after_the_return_are_counted_and_edge_cases_hold() {
        // A canary answer sent after the confirmed rollback returned.
        let violation = requests(&[(200.0, true), (266.0, true), (300.0, false)]);
        let data_plane = DataPlane::of(&violation, &TIMES);
        assert_eq!((data_plane.last_canary_send_ms, data_plane.canary_sent_after_return), (Some(6.0), 1));

        // The last canary request went out before the call: negative.
        let early = requests(&[(250.0, true), (258.0, false), (270.0, false)]);
        assert_eq!(DataPlane::of(&early, &TIMES).last_canary_send_ms, Some(-10.0));

        // No canary answer in the round, and the last request of the run.
        assert_eq!(DataPlane::of(&requests(&[(200.0, false)]), &TIMES).last_canary_send_ms, None);
        let last = DataPlane::of(&requests(&[(262.0, true)]), &TIMES);
        assert_eq!((last.last_canary_send_ms, last.next_send_gap_ms), (Some(2.0), None));
        // The gap may reach past the round's end.
        let gap = DataPlane::of(&requests(&[(419.0, true), (430.0, false)]), &TIMES);
        assert_eq!(gap.next_send_gap_ms, Some(11.0));
        assert_eq!(DataPlane::of(&[], &TIMES), DataPlane::default());
    }

    #[test]
    fn a_load_that_fell_behind_its_schedule_is_flagged() {
        let mut load = BackgroundLoad::from(&LoadReport::default());
        assert_eq!(load.behind_warning(), None, "nothing measured, nothing to say");
        let lateness = |p99| Quantiles { count: 100, p50: 1.0, p90: 1.5, p99, max: p99 * 2.0 };
        load.send_lateness_ms = Some(lateness(LATE_SEND_WARNING_MS));
        assert_eq!(load.behind_warning(), None);
        load.send_lateness_ms = Some(lateness(40.0));
        assert!(load.behind_warning().is_some_and(|warning| warning.contains("p99 40.00 ms")));
    }

    #[test]
    fn verdicts_per_concurrency_for_both_measures() {
        let samples: Vec<RoundSample> = (1..=100).map(|ms| sample(true, f64::from(ms) / 4.0, 0.1, 0)).collect();
        let run = ConcurrencyRun {
            concurrency: 4,
            filter_vms_expected: 5,
            filter_configuration: Value::Null,
            load_average_before: None,
            load_average_after: None,
            background_load: BackgroundLoad::from(&LoadReport::default()),
            counters: CounterDeltas {
                envoy_sync_failures: None,
                analyzer_reports_received: None,
                analyzer_reports_duplicate: None,
            },
            envoy_connections_by_worker: BTreeMap::new(),
            summary: RunSummary::of(&samples),
            samples,
        };
        let lines: Vec<String> = verdicts(std::slice::from_ref(&run), false).iter().map(Verdict::line).collect();
        assert_eq!(
            lines,
            [
                // Last canary send = propagation - 1 = 0.25 * n - 1; p99 of 100 is rank 99.
                "propagation: API call to the last request sent to canary (data plane), p99 at concurrency 4 (100 \
                 rollbacks) 23.75 ms [min -0.75, max 24] ≤ 20 ms MISSED",
                // Client = propagation + 1.
                "propagation: API call to `?wait=true` confirmed (client), p99 at concurrency 4 (100 rollbacks) 25.75 \
                 ms [min 1.25, max 26] ≤ 20 ms MISSED",
            ]
        );
        let batched = verdicts(std::slice::from_ref(&run), true);
        assert!(batched[0].line().contains("p99 at concurrency 4, batched reports (100 rollbacks)"), "{batched:?}");
        let mut empty = run;
        empty.summary = RunSummary::of(&[]);
        assert!(verdicts(&[empty], false).iter().all(|verdict| !verdict.met && verdict.measured.is_nan()));
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
