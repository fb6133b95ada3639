//! How many proxies one analyzer can serve: simulated filter workers report
//! through the real `POST /v1/filter/sync` path of a real analyzer process
//! (issue 4, part 4), and the analyzer's footprint idle and under them
//! (part 5).
//!
//! Setup: the analyzer runs pinned to core 0 (`taskset -c 0`), so "per core"
//! means one core; this benchmark, with every simulated worker on one
//! `current_thread` runtime, is pinned to core 1 (see [`proc`] for why
//! through `taskset`). The open-files limit is raised for 40k connections on
//! each side, and the workers' connections come from 127.0.0.2–.9 so that
//! ephemeral ports do not run out. The workers behave like the filter's (see
//! [`driver`]).
//!
//! Phases, each on a fresh analyzer with its own state directory:
//! 1. **At 1 Hz**, for each proxy count (default 1,000, 2,000, 4,000 and
//!    10,000 × 4 workers): the analyzer's idle RSS and CPU, a ramp that connects every
//!    worker with its phase spread over the interval, a warm-up, then a
//!    measured window: reports/s, ingest latency, analyzer CPU (per report
//!    and utilisation, from schedstat), RSS, bytes written to storage and the
//!    size of the state snapshot; then `GET /v1/rollout` and one page of
//!    `GET /v1/workers?limit=1000` timed under that load.
//! 2. **Saturation**: workers that send the next report as soon as the
//!    previous one is acknowledged (`max_hold_ms` 0), added in steps until
//!    reports/s stops growing. Reports per second per analyzer core is the
//!    best step's rate over the analyzer's utilisation; below 95% the
//!    analyzer was not the bottleneck and the figure is an extrapolation,
//!    which the results say.
//! 3. **Repeats and the HTTP floor**: the analyzer's best step again on
//!    fresh analyzers (5 measurements in all by default), each followed by
//!    the same load against `bench-scale-floor`
//!    (`bench/src/bin/scale_floor.rs`): the same hyper server and report
//!    decoder with no state, no disk and no hold. The floor's reports per
//!    core-second is what one HTTP exchange per report costs on this
//!    machine, so the analyzer's own share is the difference, taken pair by
//!    pair. One window moves by ±15% and more on this VM, so the verdict is
//!    the median of the analyzer's measurements, with their range.
//! 4. **Memory**: a least-squares line through the idle RSS (0 workers) and
//!    the RSS at each size; its slope is the bytes per worker (worker table
//!    entry, connection and buffers), its R² and residuals say how linear.
//!
//! **Batched** (`--batched`): each simulated proxy is one connection whose
//! workers (each its own worker id and seq) send their reports together, one
//! batch per exchange to `POST /v1/filter/sync-batch`, as the filter's
//! reporter VM does with `batch_reports`; the floor then answers on its batch path. The
//! connection count is the proxy count, so the default sizes are 1,000,
//! 4,000 and 10,000 proxies × 4 (40,000 workers fit where the per-worker
//! mode's 40,000 connections do not). The target is stated per worker
//! report, so every rate and verdict still counts worker reports, with HTTP
//! exchanges per second and per core-second next to them, and every text
//! of a batched run says it is batched.

#[path = "scale_driver.rs"]
pub mod driver;
#[path = "scale_proc.rs"]
pub mod proc;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use canary_protocol::LatencyHistogram;
use canary_protocol::batch::MAX_BATCH_REPORTS;
use canary_tests::envoy::prometheus_value;
use serde::Serialize;

use self::driver::{Driver, SOURCE_IPS, SyncSettings, WindowStats};
use self::proc::{AnalyzerProcess, CpuDelta, OpenFilesLimit, ProcSample};
use crate::machine;
use crate::quantiles::Spread;
use crate::report::{Bound, Verdict, progress, progress_done};
use crate::results::RunContext;

const BENCHMARK: &str = "scale";

/// The results' file stem: a batched run sits next to a per-worker one.
pub fn file_stem(batched: bool) -> &'static str {
    if batched { "scale-batched" } else { BENCHMARK }
}
/// [`ScaleResult::schema_version`].
pub const SCHEMA_VERSION: u32 = 3;
/// The analyzer's core, and this benchmark's.
pub const ANALYZER_CPU: usize = 0;
pub const DRIVER_CPU: usize = 1;
/// The filter token the analyzer is configured with; the workers send it as
/// the filter does, so the bearer check is part of the measured path.
const FILTER_TOKEN: &str = "scale-bench-token";
/// Open files on top of one per worker: the runtime, logs, `/proc` reads.
const OPEN_FILES_MARGIN: u64 = 1_024;
/// New connections per second during a ramp; the ramp lasts a whole number
/// of report intervals, so the workers' phases stay evenly spread.
const RAMP_CONNECTS_PER_SECOND: f64 = 10_000.0;
/// How long the ramp may overrun before the phase goes on without the
/// workers that never got an answer (they are counted).
const RAMP_PATIENCE: Duration = Duration::from_secs(20);
/// Settling time of a fresh analyzer before its idle reading, and the
/// length of that reading.
const IDLE_SETTLE: Duration = Duration::from_millis(500);
const IDLE_READING: Duration = Duration::from_secs(1);
/// Upper bound of the `GET /v1/rollout` calls of one size, and again of the
/// `GET /v1/workers` pages, to bound the load.
const ROLLOUT_GETS_BOUND: Duration = Duration::from_secs(60);
/// Saturation: a step whose rate is less than this times the previous one's
/// means reports/s stopped growing.
const SATURATION_GROWTH: f64 = 1.10;
/// The ramp of each saturation step.
const SATURATION_RAMP: Duration = Duration::from_millis(200);
/// Utilisation above which the analyzer counts as saturated.
const SATURATED_UTILISATION: f64 = 0.95;
/// The issue's targets.
pub const TARGET_REPORTS_PER_CORE_SECOND: f64 = 50_000.0;
/// RSS counts as linear in workers when no point is further than this from
/// the fitted line, relative to the line.
pub const TARGET_MEMORY_RESIDUAL_PERCENT: f64 = 5.0;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleOptions {
    /// Proxy counts measured at the report interval, one fresh analyzer each.
    pub proxies: Vec<usize>,
    pub workers_per_proxy: usize,
    /// The filter's report interval (and `max_hold_ms`).
    pub report_interval_ms: u32,
    pub warm_up_s: f64,
    pub window_s: f64,
    /// `GET /v1/rollout` calls timed at each size, and as many
    /// `GET /v1/workers?limit=1000` pages.
    pub rollout_gets: usize,
    /// Total ack-paced workers of each saturation step; empty skips it.
    pub saturation_workers: Vec<usize>,
    pub saturation_settle_s: f64,
    pub saturation_window_s: f64,
    /// `max_hold_ms` of the saturation workers: 0 answers right after the
    /// report is durable; 100 is the filter's smallest report interval.
    pub saturation_hold_ms: u32,
    /// Pin the analyzer to core 0 and this process to core 1 (needs two).
    pub pin: bool,
    /// Measurements of the analyzer at its best saturation step, the
    /// sweep's own included, each followed by one of the HTTP floor.
    pub saturation_repeats: usize,
    /// Measure the HTTP floor server at the analyzer's best saturation step.
    pub floor: bool,
    /// Each proxy one connection whose workers' reports go together as one
    /// batch per exchange to `POST /v1/filter/sync-batch` (see [`driver`]),
    /// rather than each worker its own connection and one report per
    /// exchange to `POST /v1/filter/sync`.
    pub batched: bool,
    pub smoke: bool,
}

impl ScaleOptions {
    pub const DEFAULT_PROXIES: [usize; 4] = [1_000, 2_000, 4_000, 10_000];
    /// Batched, a proxy is one connection, so 10,000 proxies × 4 workers
    /// (the issue's size) fits under an open-files limit of ~19k.
    pub const DEFAULT_BATCHED_PROXIES: [usize; 3] = [1_000, 4_000, 10_000];
    pub const DEFAULT_WORKERS_PER_PROXY: usize = 4;
    pub const DEFAULT_REPORT_INTERVAL_MS: u32 = 1_000;
    pub const DEFAULT_WARM_UP_S: f64 = 5.0;
    pub const DEFAULT_WINDOW_S: f64 = 10.0;
    pub const DEFAULT_ROLLOUT_GETS: usize = 10;
    pub const DEFAULT_SATURATION_WORKERS: [usize; 6] = [64, 256, 1_024, 4_096, 8_192, 16_384];
    pub const DEFAULT_SATURATION_SETTLE_S: f64 = 1.0;
    pub const DEFAULT_SATURATION_WINDOW_S: f64 = 3.0;
    /// One window on this VM moves by ±15% and more; five give a median.
    pub const DEFAULT_SATURATION_REPEATS: usize = 5;
    /// Seconds in all: proves the benchmark works, measures little.
    pub const SMOKE_PROXIES: [usize; 1] = [10];
    pub const SMOKE_WARM_UP_S: f64 = 0.5;
    pub const SMOKE_WINDOW_S: f64 = 2.0;
    pub const SMOKE_ROLLOUT_GETS: usize = 3;
    pub const SMOKE_SATURATION_WORKERS: [usize; 2] = [8, 40];
    pub const SMOKE_SATURATION_SETTLE_S: f64 = 0.3;
    pub const SMOKE_SATURATION_WINDOW_S: f64 = 0.5;
    pub const SMOKE_SATURATION_REPEATS: usize = 1;

    /// The full run's settings, or the smoke preset, per worker or batched.
    pub fn preset(smoke: bool, batched: bool) -> Self {
        let preset = Self::preset_per_worker(smoke);
        if batched && !smoke {
            Self { proxies: Self::DEFAULT_BATCHED_PROXIES.to_vec(), batched, ..preset }
        } else {
            Self { batched, ..preset }
        }
    }

    fn preset_per_worker(smoke: bool) -> Self {
        if smoke {
            Self {
                proxies: Self::SMOKE_PROXIES.to_vec(),
                workers_per_proxy: Self::DEFAULT_WORKERS_PER_PROXY,
                report_interval_ms: Self::DEFAULT_REPORT_INTERVAL_MS,
                warm_up_s: Self::SMOKE_WARM_UP_S,
                window_s: Self::SMOKE_WINDOW_S,
                rollout_gets: Self::SMOKE_ROLLOUT_GETS,
                saturation_workers: Self::SMOKE_SATURATION_WORKERS.to_vec(),
                saturation_settle_s: Self::SMOKE_SATURATION_SETTLE_S,
                saturation_window_s: Self::SMOKE_SATURATION_WINDOW_S,
                saturation_repeats: Self::SMOKE_SATURATION_REPEATS,
                saturation_hold_ms: 0,
                pin: true,
                floor: true,
                batched: false,
                smoke,
            }
        } else {
            Self {
                proxies: Self::DEFAULT_PROXIES.to_vec(),
                workers_per_proxy: Self::DEFAULT_WORKERS_PER_PROXY,
                report_interval_ms: Self::DEFAULT_REPORT_INTERVAL_MS,
                warm_up_s: Self::DEFAULT_WARM_UP_S,
                window_s: Self::DEFAULT_WINDOW_S,
                rollout_gets: Self::DEFAULT_ROLLOUT_GETS,
                saturation_workers: Self::DEFAULT_SATURATION_WORKERS.to_vec(),
                saturation_settle_s: Self::DEFAULT_SATURATION_SETTLE_S,
                saturation_window_s: Self::DEFAULT_SATURATION_WINDOW_S,
                saturation_repeats: Self::DEFAULT_SATURATION_REPEATS,
                saturation_hold_ms: 0,
                pin: true,
                floor: true,
                batched: false,
                smoke,
            }
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.workers_per_proxy > 0, "--workers-per-proxy must be at least 1");
        ensure!(
            !self.batched || self.workers_per_proxy <= MAX_BATCH_REPORTS,
            "--batched takes at most {MAX_BATCH_REPORTS} workers per proxy (one batch's reports)"
        );
        ensure!(self.proxies.iter().all(|&proxies| proxies > 0), "--proxies values must be at least 1");
        ensure!(self.report_interval_ms >= 1, "--report-interval-ms must be positive");
        for (name, seconds) in [
            ("--warm-up-s", self.warm_up_s),
            ("--window-s", self.window_s),
            ("--saturation-settle-s", self.saturation_settle_s),
            ("--saturation-window-s", self.saturation_window_s),
        ] {
            ensure!(seconds.is_finite() && (0.0..=3_600.0).contains(&seconds), "{name} must be 0..=3600");
        }
        ensure!(self.window_s > 0.0 && self.saturation_window_s > 0.0, "measurement windows must be positive");
        ensure!((1..=50).contains(&self.saturation_repeats), "--saturation-repeats must be 1..=50");
        ensure!(!self.proxies.is_empty() || !self.saturation_workers.is_empty(), "nothing to measure");
        Ok(())
    }

    /// Connections (sync loops) `proxies` proxies want: one per worker, or
    /// one per proxy when batched.
    pub fn connections_for(&self, proxies: usize) -> usize {
        if self.batched { proxies } else { proxies * self.workers_per_proxy }
    }

    /// The most connections any phase wants: what the open-files limit must
    /// allow on each side. Saturation steps count workers, in whole proxies.
    pub fn max_connections(&self) -> usize {
        let at_rate = self.proxies.iter().max().map_or(0, |&proxies| self.connections_for(proxies));
        let saturation = self
            .saturation_workers
            .iter()
            .max()
            .map_or(0, |workers| self.connections_for(workers.div_ceil(self.workers_per_proxy)));
        at_rate.max(saturation)
    }

    /// How `proxies` proxies at the report interval use connections under a
    /// budget of `connection_budget`: each sync loop (worker, or proxy when
    /// batched) its own connection and the interval as its hold, or, past
    /// the budget, the budget's connections shared with no hold.
    pub fn size_plan(&self, proxies: usize, connection_budget: usize) -> SizePlan {
        let wanted = self.connections_for(proxies);
        if wanted <= connection_budget {
            let mode = if self.batched { ConnectionMode::PerProxy } else { ConnectionMode::PerWorker };
            SizePlan { connection_mode: mode, connections: wanted, max_hold_ms: self.report_interval_ms }
        } else {
            SizePlan { connection_mode: ConnectionMode::Shared, connections: connection_budget, max_hold_ms: 0 }
        }
    }

    /// Worker reports per exchange when batched, for the texts.
    fn batching(&self) -> Option<usize> {
        self.batched.then_some(self.workers_per_proxy)
    }
}

/// What [`ScaleOptions::size_plan`] decided for one size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizePlan {
    pub connection_mode: ConnectionMode,
    pub connections: usize,
    pub max_hold_ms: u32,
}

/// How a run's texts name its batching: `batched: 4 worker reports per
/// exchange (POST /v1/filter/sync-batch)`, or the per-worker path.
pub fn batching_label(batching: Option<usize>) -> String {
    match batching {
        Some(1) => format!("batched: 1 worker report per exchange (POST {})", driver::SYNC_BATCH_PATH),
        Some(reports) => format!("batched: {reports} worker reports per exchange (POST {})", driver::SYNC_BATCH_PATH),
        None => format!("per worker: 1 worker report per exchange (POST {})", driver::SYNC_PATH),
    }
}

/// `canary-bench scale` flags. Flags left out take the `--smoke` preset when
/// it is given, else the defaults shown.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Proxy counts measured at the report interval, one fresh analyzer each
    /// [default: 1000,2000,4000,10000; with --batched: 1000,4000,10000;
    /// smoke: 10].
    #[arg(long, value_delimiter = ',')]
    pub proxies: Option<Vec<usize>>,
    /// Simulated filter workers (Envoy worker VMs) per proxy [default: 4].
    #[arg(long)]
    pub workers_per_proxy: Option<usize>,
    /// The filter's report interval, also each report's `max_hold_ms`
    /// [default: 1000].
    #[arg(long)]
    pub report_interval_ms: Option<u32>,
    /// Load before each measured window, after the ramp [default: 5; smoke: 0.5].
    #[arg(long)]
    pub warm_up_s: Option<f64>,
    /// Measured window per size [default: 10; smoke: 2].
    #[arg(long)]
    pub window_s: Option<f64>,
    /// `GET /v1/rollout` calls timed at each size [default: 10; smoke: 3].
    #[arg(long)]
    pub rollout_gets: Option<usize>,
    /// Ack-paced workers of each saturation step, in whole proxies; with
    /// --batched still workers, on workers / workers-per-proxy (rounded up)
    /// connections [default: 64,256,1024,4096,8192,16384; smoke: 8,40].
    #[arg(long, value_delimiter = ',')]
    pub saturation_workers: Option<Vec<usize>>,
    /// Skip the saturation sweep.
    #[arg(long)]
    pub no_saturation: bool,
    /// Load before each saturation step's window [default: 1; smoke: 0.3].
    #[arg(long)]
    pub saturation_settle_s: Option<f64>,
    /// Measured window per saturation step [default: 3; smoke: 0.5].
    #[arg(long)]
    pub saturation_window_s: Option<f64>,
    /// Measurements of the analyzer at its best saturation step (the
    /// sweep's included), each on a fresh server and followed by one of the
    /// HTTP floor; the verdict takes the median [default: 5; smoke: 1].
    #[arg(long)]
    pub saturation_repeats: Option<usize>,
    /// `max_hold_ms` of the saturation workers (with --batched, of their
    /// batches): 0 answers as soon as the report is durable, 100 is the
    /// filter's smallest interval [default: 0].
    #[arg(long)]
    pub saturation_hold_ms: Option<u32>,
    /// Do not pin the analyzer to core 0 and the workers to core 1.
    #[arg(long)]
    pub no_pin: bool,
    /// Skip the HTTP floor (`bench-scale-floor` at the best saturation step).
    #[arg(long)]
    pub no_floor: bool,
    /// Batch each proxy's reports: one connection per proxy, its workers'
    /// reports (each worker its own id and seq) together in one batch per
    /// exchange to `POST /v1/filter/sync-batch`, hold = the report interval
    /// (saturation: --saturation-hold-ms), as the filter's reporter VM
    /// does with `batch_reports`. Results still count worker reports, and HTTP exchanges
    /// next to them; the floor runs its batch path.
    #[arg(long)]
    pub batched: bool,
    /// Results directory [default: bench/results/<YYYY-MM-DD>-<hostname>;
    /// smoke: under the target directory, so it never overwrites a result].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A few seconds in all: checks the benchmark works (for CI).
    #[arg(long)]
    pub smoke: bool,
}

impl ScaleArgs {
    pub fn options(&self) -> ScaleOptions {
        let preset = ScaleOptions::preset(self.smoke, self.batched);
        ScaleOptions {
            proxies: self.proxies.clone().unwrap_or(preset.proxies),
            workers_per_proxy: self.workers_per_proxy.unwrap_or(preset.workers_per_proxy),
            report_interval_ms: self.report_interval_ms.unwrap_or(preset.report_interval_ms),
            warm_up_s: self.warm_up_s.unwrap_or(preset.warm_up_s),
            window_s: self.window_s.unwrap_or(preset.window_s),
            rollout_gets: self.rollout_gets.unwrap_or(preset.rollout_gets),
            saturation_workers: if self.no_saturation {
                Vec::new()
            } else {
                self.saturation_workers.clone().unwrap_or(preset.saturation_workers)
            },
            saturation_settle_s: self.saturation_settle_s.unwrap_or(preset.saturation_settle_s),
            saturation_window_s: self.saturation_window_s.unwrap_or(preset.saturation_window_s),
            saturation_repeats: self.saturation_repeats.unwrap_or(preset.saturation_repeats),
            saturation_hold_ms: self.saturation_hold_ms.unwrap_or(preset.saturation_hold_ms),
            pin: !self.no_pin,
            floor: !self.no_floor,
            batched: self.batched,
            smoke: self.smoke,
        }
    }
}

/// The settings a result was measured with, constants included.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    #[serde(flatten)]
    pub options: ScaleOptions,
    pub stable_requests_per_report: u64,
    pub canary_requests_per_report: u64,
    pub buckets_per_version: usize,
    pub ramp_connects_per_second: f64,
    pub saturation_growth: f64,
    pub saturated_utilisation: f64,
}

/// Pinning, limits and addresses actually in force.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub pinned: bool,
    pub analyzer_cpu: Option<usize>,
    pub driver_cpu: Option<usize>,
    /// Why the run is not pinned, when it is not.
    pub pinning_note: Option<String>,
    /// CPUs this process ran on after pinning.
    pub driver_cpus_allowed: Option<String>,
    pub open_files: OpenFilesLimit,
    /// Connections the driver may open: the open-files limit less a margin.
    /// The analyzer inherits the same limit, so it bounds both sides. It
    /// counts connections: workers, or proxies when batched.
    pub connection_budget: usize,
    pub source_ips: Vec<String>,
}

/// How a phase's workers used connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionMode {
    /// As the filter: one keep-alive connection per worker, long-poll held
    /// for `max_hold_ms` = the report interval.
    PerWorker,
    /// Batched: one keep-alive connection per proxy carrying its workers'
    /// reports as one batch, long-poll held for `max_hold_ms` = the report
    /// interval.
    PerProxy,
    /// More workers (batched: proxies) than the connection budget: they
    /// share the budget's connections, with `max_hold_ms` 0 and the 1 Hz
    /// pace kept by the driver. The worker table and the report rate are the
    /// real ones; the analyzer holds fewer connections and no long-poll
    /// timers.
    Shared,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    pub benchmark: &'static str,
    /// Bumped when the meaning of a field changes: 2, `floor` became
    /// `repeats`; 3, `--batched` (`settings.batched`, `connection_mode`
    /// `per_proxy`) and the exchange counts next to the worker-report ones
    /// (`exchanges_acked`, `exchanges_per_second`, `exchanges_per_core_second`,
    /// `cpu_us_per_exchange`, `expected_exchanges_per_second`,
    /// `connections` of a saturation step, the repeats'
    /// `*_exchanges_per_core`); `reports_*` count worker reports in both
    /// modes, and the latency histograms one sample per exchange.
    pub schema_version: u32,
    #[serde(flatten)]
    pub context: RunContext,
    pub settings: Settings,
    pub setup: Setup,
    pub finished_at_unix_ms: u64,
    /// The analyzer with no worker: the first phase's fresh analyzer.
    pub idle: Option<IdleReading>,
    pub sizes: Vec<SizeRun>,
    pub saturation: Option<SaturationRun>,
    /// The best saturation step again, next to the HTTP floor.
    pub repeats: Option<Repeats>,
    /// RSS against workers: idle, then every size whose workers each had a
    /// connection (shared-connection sizes would mix two slopes).
    pub memory_fit: Option<LinearFit>,
    pub verdicts: Vec<Verdict>,
}

/// A fresh analyzer before any worker connects.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReading {
    pub rss_bytes: Option<u64>,
    pub cpu: CpuDelta,
}

/// One proxy count at the report interval.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRun {
    pub proxies: usize,
    pub workers: usize,
    /// Each proxy's workers reported in one batch per exchange.
    pub batched: bool,
    pub idle: IdleReading,
    pub connection_mode: ConnectionMode,
    /// Connections the workers could use (workers, proxies when batched, or
    /// the budget).
    pub connections: usize,
    /// `max_hold_ms` in the workers' reports (batched: of the batches).
    pub max_hold_ms: u32,
    /// From the first connection to every worker's first acknowledged sync.
    pub ramp_ms: f64,
    pub workers_synced: u64,
    /// Workers at the report interval would send this many per second if
    /// every ack were instant; the hold plus the ingest latency make a
    /// worker's period a little longer. Worker reports.
    pub expected_reports_per_second: f64,
    /// The same for HTTP exchanges: one per worker report, or one per proxy
    /// and interval when batched.
    pub expected_exchanges_per_second: f64,
    pub window: WindowSummary,
    pub rollout_get: RolloutGets,
    /// The first page of `GET /v1/workers`, as many calls as `rollout_get`.
    pub workers_page_get: WorkersPageGets,
    pub load_average_before: Option<[f64; 3]>,
    pub load_average_after: Option<[f64; 3]>,
}

/// What one measurement window saw from both sides.
#[derive(Debug, Clone, Serialize)]
pub struct WindowSummary {
    pub window_ms: f64,
    pub workers: usize,
    /// Worker reports acknowledged in the window.
    pub reports_acked: u64,
    pub reports_per_second: f64,
    /// HTTP exchanges acknowledged in the window: the same as the reports
    /// per worker, one per batch when batched.
    pub exchanges_acked: u64,
    pub exchanges_per_second: f64,
    /// Of the acknowledged worker reports, those held the whole
    /// `max_hold_ms`.
    pub held_acks: u64,
    /// Send to acknowledgement, less the hold (see the driver's docs), one
    /// sample per exchange.
    pub ingest_ms: Option<LatencySummary>,
    /// Send to answer, hold included: what the worker waits.
    pub round_trip_ms: Option<LatencySummary>,
    /// Failed exchanges by kind.
    pub failures: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// Connections open at the end of the window.
    pub connections_open: u64,
    /// Syncs that waited for a shared connection, and the longest wait.
    pub connection_waits: u64,
    pub longest_connection_wait_ms: f64,
    pub analyzer: AnalyzerWindow,
    /// This process (the simulated workers) over the window.
    pub driver_cpu: CpuDelta,
}

/// The analyzer over one window.
#[derive(Debug, Clone, Serialize)]
pub struct AnalyzerWindow {
    pub cpu: CpuDelta,
    /// Per worker report.
    pub cpu_us_per_report: Option<f64>,
    /// Worker reports per second one analyzer core would take at this cost:
    /// `reports_per_second / utilisation`.
    pub reports_per_core_second: Option<f64>,
    /// The same per HTTP exchange.
    pub cpu_us_per_exchange: Option<f64>,
    pub exchanges_per_core_second: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    /// `state.json` at the end of the window: the periodic snapshot. Group
    /// commits append to the journal instead, so this is what a snapshot
    /// writes (every few seconds), not what each commit writes.
    pub state_file_bytes: Option<u64>,
    /// Everything the analyzer wrote to storage (`/proc/PID/io`): journal
    /// appends, snapshots and the weights file.
    pub storage_write_bytes_per_second: Option<f64>,
    /// `canary_reports_received_total` and `canary_reports_duplicate_total`
    /// over the window (a duplicate is a re-send after a failed sync).
    pub reports_received: Option<f64>,
    pub reports_duplicate: Option<f64>,
}

/// Latency quantiles in ms (upper bounds of the histogram bucket that holds
/// them: at most 0.79% high).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    pub fn of(histogram: &LatencyHistogram) -> Option<Self> {
        let [p50, p90, p99, p999, max] = histogram.quantiles_us([0.5, 0.9, 0.99, 0.999, 1.0])?;
        let ms = |us: u64| us as f64 / 1_000.0;
        Some(Self {
            count: histogram.total_count(),
            p50: ms(p50),
            p90: ms(p90),
            p99: ms(p99),
            p999: ms(p999),
            max: ms(max),
        })
    }
}

/// `GET /v1/rollout` timed at the client, one fresh connection per call.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutGets {
    pub samples_ms: Vec<f64>,
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub response_bytes: Option<usize>,
    /// `data_plane.live_workers` of the last answer: the analyzer saw them
    /// all.
    pub live_workers: Option<u64>,
    pub errors: Vec<String>,
}

/// [`WORKERS_PAGE_PATH`] timed at the client, one fresh connection per call.
#[derive(Debug, Clone, Serialize)]
pub struct WorkersPageGets {
    pub samples_ms: Vec<f64>,
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub response_bytes: Option<usize>,
    /// `total` of the last answer: the workers the table holds.
    pub total: Option<u64>,
    pub errors: Vec<String>,
}

/// The page the benchmark times: the first, of the default size.
const WORKERS_PAGE_PATH: &str = "/v1/workers?limit=1000";

/// The saturation sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SaturationRun {
    pub max_hold_ms: u32,
    pub steps: Vec<SaturationStep>,
    /// Index of the step with the most reports/s.
    pub best_step: Option<usize>,
    /// Whether the sweep ended because reports/s stopped growing (rather
    /// than running out of steps).
    pub stopped_growing: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaturationStep {
    pub workers: usize,
    /// Sync loops, each with its own connection while the budget allows:
    /// the workers, or the proxies when batched.
    pub connections: usize,
    pub workers_synced: u64,
    pub window: WindowSummary,
}

impl SaturationStep {
    /// Worker reports per core-second.
    fn per_core(&self) -> Option<f64> {
        self.window.analyzer.reports_per_core_second.filter(|rate| *rate > 0.0)
    }

    fn exchanges_per_core(&self) -> Option<f64> {
        self.window.analyzer.exchanges_per_core_second.filter(|rate| *rate > 0.0)
    }
}

/// The analyzer's best saturation step measured again, each time on a
/// fresh server, and after each the HTTP floor (`bench-scale-floor`) under
/// the same load: analyzer, floor, analyzer, floor, …, the sweep's own step
/// first. One window on this VM moves by ±15% and more, so the verdict and
/// the comparison with the floor rest on medians, pair by pair.
#[derive(Debug, Clone, Serialize)]
pub struct Repeats {
    pub workers: usize,
    /// The step's connections (its sync loops).
    pub connections: usize,
    /// In the order measured; the first is the sweep's best step.
    pub analyzer: Vec<SaturationStep>,
    /// `floor[i]` ran right after `analyzer[i]`; empty with `--no-floor`.
    pub floor: Vec<SaturationStep>,
    /// Worker reports per core-second.
    pub analyzer_per_core: Option<Spread>,
    pub floor_per_core: Option<Spread>,
    /// HTTP exchanges per core-second.
    pub analyzer_exchanges_per_core: Option<Spread>,
    pub floor_exchanges_per_core: Option<Spread>,
    /// The analyzer's CPU per worker report over the floor's, pair by pair.
    pub cpu_ratio: Option<Spread>,
    /// The analyzer's CPU per worker report less the floor's, pair by pair.
    pub own_us: Option<Spread>,
}

impl Repeats {
    pub fn summarize(analyzer: Vec<SaturationStep>, floor: Vec<SaturationStep>) -> Repeats {
        let (workers, connections) = analyzer.first().map_or((0, 0), |step| (step.workers, step.connections));
        let rates = |steps: &[SaturationStep]| steps.iter().filter_map(SaturationStep::per_core).collect::<Vec<_>>();
        let exchange_rates =
            |steps: &[SaturationStep]| steps.iter().filter_map(SaturationStep::exchanges_per_core).collect::<Vec<_>>();
        let pairs: Vec<(f64, f64)> = analyzer
            .iter()
            .zip(&floor)
            .filter_map(|(analyzer, floor)| Some((1e6 / analyzer.per_core()?, 1e6 / floor.per_core()?)))
            .collect();
        let ratios: Vec<f64> = pairs.iter().map(|(analyzer_us, floor_us)| analyzer_us / floor_us).collect();
        let own: Vec<f64> = pairs.iter().map(|(analyzer_us, floor_us)| analyzer_us - floor_us).collect();
        Repeats {
            workers,
            connections,
            analyzer_per_core: Spread::of(&rates(&analyzer)),
            floor_per_core: Spread::of(&rates(&floor)),
            analyzer_exchanges_per_core: Spread::of(&exchange_rates(&analyzer)),
            floor_exchanges_per_core: Spread::of(&exchange_rates(&floor)),
            cpu_ratio: Spread::of(&ratios),
            own_us: Spread::of(&own),
            analyzer,
            floor,
        }
    }
}

/// A least-squares line `rss = intercept + slope × workers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinearFit {
    pub bytes_per_worker: f64,
    pub intercept_bytes: f64,
    pub r_squared: f64,
    /// The largest distance of a point from the line, relative to the
    /// largest RSS measured: the scale the line has to explain. (Relative to
    /// the line at each point, the idle analyzer's few MiB near the
    /// intercept would dominate however straight the line is.)
    pub worst_residual_percent: f64,
    pub points: Vec<FitPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitPoint {
    pub workers: f64,
    pub rss_bytes: f64,
    pub fitted_bytes: f64,
    /// Measured minus fitted.
    pub residual_bytes: f64,
}

/// Least squares through `(x, y)` points; `None` without two distinct x.
pub fn least_squares(points: &[(f64, f64)]) -> Option<LinearFit> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let ss_total: f64 = points.iter().map(|(_, y)| (y - mean_y).powi(2)).sum();
    let fit_points: Vec<FitPoint> = points
        .iter()
        .map(|&(x, y)| {
            let fitted = intercept + slope * x;
            FitPoint { workers: x, rss_bytes: y, fitted_bytes: fitted, residual_bytes: y - fitted }
        })
        .collect();
    let ss_residual: f64 = fit_points.iter().map(|point| point.residual_bytes.powi(2)).sum();
    let largest_rss_bytes = fit_points.iter().map(|point| point.rss_bytes.abs()).fold(0.0, f64::max);
    let worst_residual_percent = if largest_rss_bytes > 0.0 {
        fit_points.iter().map(|point| point.residual_bytes.abs()).fold(0.0, f64::max) / largest_rss_bytes * 100.0
    } else {
        0.0
    };
    Some(LinearFit {
        bytes_per_worker: slope,
        intercept_bytes: intercept,
        r_squared: if ss_total > 0.0 { 1.0 - ss_residual / ss_total } else { 1.0 },
        worst_residual_percent,
        points: fit_points,
    })
}

/// Runs the benchmark. The workers need a thread of their own (a
/// `current_thread` runtime), so this hands the run to a blocking thread.
pub async fn run(
    options: &ScaleOptions,
    analyzer: &Path,
    floor: &Path,
    context: RunContext,
) -> anyhow::Result<ScaleResult> {
    options.validate()?;
    ensure!(
        analyzer.is_file(),
        "the analyzer {} is not built (`cargo build --release -p canary-analyzer`, or set {})",
        analyzer.display(),
        canary_tests::paths::ANALYZER_BIN_ENV
    );
    ensure!(
        !options.floor || floor.is_file(),
        "the HTTP floor server {} is not built (`cargo build --release -p canary-bench`), or pass --no-floor",
        floor.display()
    );
    let options = options.clone();
    let binaries = ScaleBinaries { analyzer: analyzer.to_path_buf(), floor: floor.to_path_buf() };
    tokio::task::spawn_blocking(move || run_on_this_thread(options, binaries, context))
        .await
        .context("the scale driver thread failed")?
}

/// The servers a run starts: the analyzer, and the HTTP floor.
struct ScaleBinaries {
    analyzer: PathBuf,
    floor: PathBuf,
}

fn run_on_this_thread(
    options: ScaleOptions,
    binaries: ScaleBinaries,
    context: RunContext,
) -> anyhow::Result<ScaleResult> {
    // Batched, a proxy is one connection on each side, however many workers
    // it has.
    let open_files = proc::raise_open_files_limit(options.max_connections() as u64 + OPEN_FILES_MARGIN)?;
    let setup = setup(&options, open_files);
    if setup.connection_budget < options.max_connections() {
        eprintln!(
            "scale: the open-files limit is {} (hard {}, not raisable here), so at most {} connections; larger sizes \
             share them (see the results' connection_mode)",
            open_files.soft, open_files.hard, setup.connection_budget
        );
    }
    if let Some(note) = &setup.pinning_note {
        eprintln!("scale: not pinned: {note}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, measure(options, binaries, context, setup))
}

/// Pins this process (see the module docs) and works out the connection
/// budget.
fn setup(options: &ScaleOptions, open_files: OpenFilesLimit) -> Setup {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let note = if !options.pin {
        Some("--no-pin".to_owned())
    } else if cores < 2 {
        Some(format!("{cores} core available; the analyzer and the workers need one each"))
    } else {
        proc::pin_this_process(DRIVER_CPU).err().map(|error| format!("{error:#}"))
    };
    let pinned = note.is_none();
    Setup {
        pinned,
        analyzer_cpu: pinned.then_some(ANALYZER_CPU),
        driver_cpu: pinned.then_some(DRIVER_CPU),
        pinning_note: note,
        driver_cpus_allowed: proc::allowed_cpus(),
        open_files,
        connection_budget: usize::try_from(open_files.soft.saturating_sub(OPEN_FILES_MARGIN)).unwrap_or(usize::MAX),
        source_ips: SOURCE_IPS.iter().map(ToString::to_string).collect(),
    }
}

async fn measure(
    options: ScaleOptions,
    binaries: ScaleBinaries,
    context: RunContext,
    setup: Setup,
) -> anyhow::Result<ScaleResult> {
    let analyzer = &binaries.analyzer;
    let scratch = scratch_dir()?;
    let mut sizes = Vec::with_capacity(options.proxies.len());
    for &proxies in &options.proxies {
        let dir = scratch.path().join(format!("proxies-{proxies}"));
        let size = measure_size(&options, analyzer, &dir, &setup, proxies)
            .await
            .with_context(|| format!("scale at {proxies} proxies"))?;
        progress_done();
        eprintln!("  {}", size_line(&size));
        sizes.push(size);
    }
    let saturation = if options.saturation_workers.is_empty() {
        None
    } else {
        let dir = scratch.path().join("saturation");
        let run = measure_saturation(&options, analyzer, &dir, &setup, "saturation").await.context("saturation")?;
        progress_done();
        Some(run)
    };
    let repeats = match saturation.as_ref().and_then(|run| run.steps.get(run.best_step?)) {
        Some(best) => Some(measure_repeats(&options, &binaries, scratch.path(), &setup, best.clone()).await?),
        None => None,
    };
    let idle = sizes.first().map(|size| size.idle.clone());
    let memory_fit = memory_fit(&sizes);
    let verdicts = verdicts(repeats.as_ref(), memory_fit.as_ref(), options.batching());
    Ok(ScaleResult {
        benchmark: BENCHMARK,
        // See the field's docs.
        schema_version: SCHEMA_VERSION,
        context,
        settings: Settings {
            options,
            stable_requests_per_report: driver::STABLE_REQUESTS_PER_REPORT,
            canary_requests_per_report: driver::CANARY_REQUESTS_PER_REPORT,
            buckets_per_version: driver::BUCKETS_PER_VERSION,
            ramp_connects_per_second: RAMP_CONNECTS_PER_SECOND,
            saturation_growth: SATURATION_GROWTH,
            saturated_utilisation: SATURATED_UTILISATION,
        },
        setup,
        finished_at_unix_ms: crate::results::unix_now_ms(),
        idle,
        sizes,
        saturation,
        repeats,
        memory_fit,
        verdicts,
    })
}

/// See [`Repeats`]. The same load at the analyzer's best step, so that the
/// floor and the analyzer differ only in the server.
async fn measure_repeats(
    options: &ScaleOptions,
    binaries: &ScaleBinaries,
    scratch: &Path,
    setup: &Setup,
    best: SaturationStep,
) -> anyhow::Result<Repeats> {
    let one_step = ScaleOptions { saturation_workers: vec![best.workers], ..options.clone() };
    let rounds = options.saturation_repeats;
    let mut analyzer = vec![best];
    let mut floor = Vec::new();
    for round in 1..=rounds {
        if round > 1 {
            let name = format!("saturation repeat {round}/{rounds}");
            let dir = scratch.join(format!("repeat-{round}"));
            analyzer.push(measure_one_step(&one_step, &binaries.analyzer, &dir, setup, &name).await?);
        }
        if options.floor {
            let name = format!("HTTP floor {round}/{rounds}");
            let dir = scratch.join(format!("floor-{round}"));
            floor.push(measure_one_step(&one_step, &binaries.floor, &dir, setup, &name).await?);
        }
    }
    Ok(Repeats::summarize(analyzer, floor))
}

async fn measure_one_step(
    options: &ScaleOptions,
    binary: &Path,
    dir: &Path,
    setup: &Setup,
    name: &str,
) -> anyhow::Result<SaturationStep> {
    let run = measure_saturation(options, binary, dir, setup, name).await.with_context(|| name.to_owned())?;
    progress_done();
    run.steps.into_iter().next().with_context(|| format!("{name}: no step measured"))
}

/// A temporary directory for the analyzers' state, where the harness puts
/// its stacks' (so the machine description's filesystem applies).
fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("canary-scale-").tempdir().context("creating a temporary directory")
}

/// The RSS fit over idle and every size with a connection per worker (per
/// proxy when batched: one run is one mode); the idle point is the median of
/// the fresh analyzers' idle readings.
fn memory_fit(sizes: &[SizeRun]) -> Option<LinearFit> {
    let mut idle: Vec<f64> = sizes.iter().filter_map(|size| size.idle.rss_bytes).map(|rss| rss as f64).collect();
    idle.sort_by(f64::total_cmp);
    let mut points: Vec<(f64, f64)> = idle.get(idle.len() / 2).map(|&rss| (0.0, rss)).into_iter().collect();
    points.extend(
        sizes
            .iter()
            .filter(|size| size.connection_mode != ConnectionMode::Shared)
            .filter_map(|size| Some((size.window.workers as f64, size.window.analyzer.rss_bytes? as f64))),
    );
    least_squares(&points)
}

/// The verdicts of a run; `batching` is the worker reports per exchange of a
/// batched run, which the throughput verdict names so that it is never
/// mistaken for the per-worker path.
fn verdicts(repeats: Option<&Repeats>, memory_fit: Option<&LinearFit>, batching: Option<usize>) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    if let Some(repeats) = repeats
        && let Some(per_core) = repeats.analyzer_per_core
    {
        let utilisation: Vec<f64> = repeats.analyzer.iter().map(|step| step.window.analyzer.cpu.utilisation).collect();
        let lowest = utilisation.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = utilisation.iter().copied().fold(0.0, f64::max);
        let mut runs = match batching {
            Some(_) => format!("{} workers on {} connections", repeats.workers, repeats.connections),
            None => format!("{} workers", repeats.workers),
        };
        if per_core.count > 1 {
            let _ = write!(runs, ", median of {} runs", per_core.count);
        }
        if batching.is_some()
            && let Some(exchanges) = repeats.analyzer_exchanges_per_core
        {
            let _ = write!(runs, "; {:.0} exchanges per core-second", exchanges.median);
        }
        let what = match batching {
            Some(_) => format!("worker reports per second on one analyzer core, {}", batching_label(batching)),
            None => "reports per second on one analyzer core".to_owned(),
        };
        let quantity = if lowest >= SATURATED_UTILISATION {
            format!("{what} ({runs})")
        } else if (lowest * 100.0).round() == (highest * 100.0).round() {
            format!("{what}, extrapolated from {:.0}% CPU ({runs})", lowest * 100.0)
        } else {
            format!("{what}, extrapolated from {:.0}–{:.0}% CPU ({runs})", lowest * 100.0, highest * 100.0)
        };
        let verdict = Verdict::new(
            BENCHMARK,
            &quantity,
            per_core.median,
            Bound::AtLeast,
            TARGET_REPORTS_PER_CORE_SECOND,
            " reports/s",
        );
        verdicts.push(if per_core.count > 1 { verdict.with_range(per_core.min, per_core.max) } else { verdict });
    }
    if let Some(fit) = memory_fit
        && fit.points.len() >= 3
    {
        verdicts.push(Verdict::new(
            BENCHMARK,
            &format!(
                "analyzer RSS linear in workers ({:.0} bytes/worker, R² {:.5}): worst residual",
                fit.bytes_per_worker, fit.r_squared
            ),
            fit.worst_residual_percent,
            Bound::AtMost,
            TARGET_MEMORY_RESIDUAL_PERCENT,
            "%",
        ));
    }
    verdicts
}

const MIB: f64 = 1024.0 * 1024.0;

/// One proxy count at the report interval, on a fresh analyzer.
async fn measure_size(
    options: &ScaleOptions,
    binary: &Path,
    dir: &Path,
    setup: &Setup,
    proxies: usize,
) -> anyhow::Result<SizeRun> {
    let workers = proxies * options.workers_per_proxy;
    let SizePlan { connection_mode, connections, max_hold_ms } = options.size_plan(proxies, setup.connection_budget);
    let label = match connection_mode {
        ConnectionMode::PerWorker => format!("{proxies}×{} workers", options.workers_per_proxy),
        ConnectionMode::PerProxy => format!("{proxies}×{} workers batched", options.workers_per_proxy),
        ConnectionMode::Shared => format!(
            "{proxies}×{} workers{} on {connections} connections",
            options.workers_per_proxy,
            if options.batched { " batched" } else { "" }
        ),
    };
    progress(BENCHMARK, &format!("{label}: starting the analyzer"));
    let mut analyzer = AnalyzerProcess::start(binary, dir, FILTER_TOKEN, setup.analyzer_cpu).await?;
    // The pid in every progress line, for `perf record -g -p <pid>`.
    let label = format!("{label} (analyzer pid {})", analyzer.pid());
    let idle = idle_reading(&analyzer).await;
    let load_average_before = machine::load_average();

    let interval = Duration::from_millis(u64::from(options.report_interval_ms));
    // A whole number of intervals, at most RAMP_CONNECTS_PER_SECOND sync
    // loops (each its connection) started per second.
    let sync_loops = options.connections_for(proxies);
    let ramp =
        interval.mul_f64((sync_loops as f64 / RAMP_CONNECTS_PER_SECOND / interval.as_secs_f64()).ceil().max(1.0));
    let warm_up = Duration::from_secs_f64(options.warm_up_s);
    let window = Duration::from_secs_f64(options.window_s);
    let bound = ramp + RAMP_PATIENCE + warm_up + window + 2 * ROLLOUT_GETS_BOUND + Duration::from_secs(10);
    let started = Instant::now();
    let mut driver = Driver::new(
        SyncSettings {
            analyzer: analyzer.address(),
            token: FILTER_TOKEN.to_owned(),
            report_interval: interval,
            max_hold_ms,
            connections,
            batched: options.batched,
        },
        started + bound,
    );
    driver.spawn_fleet(0, proxies, options.workers_per_proxy, started, ramp);
    let ramp_ms = wait_for_ramp(&driver, &mut analyzer, &label, started + ramp + RAMP_PATIENCE).await?;
    let workers_synced = driver.synced_workers();
    hold_with_progress(&driver, &label, "warm-up", warm_up).await;
    let window = measure_window(&driver, &analyzer, &label, window).await;
    analyzer.fail_if_exited("during the measurement window")?;
    let rollout_get = time_rollout_gets(analyzer.address(), options.rollout_gets, &label).await;
    let workers_page_get = time_workers_page_gets(analyzer.address(), options.rollout_gets, &label).await;
    let load_average_after = machine::load_average();
    // The server side first: see `AnalyzerProcess::kill`.
    analyzer.kill();
    drop(driver);
    Ok(SizeRun {
        proxies,
        workers,
        batched: options.batched,
        idle,
        connection_mode,
        connections,
        max_hold_ms,
        ramp_ms,
        workers_synced,
        expected_reports_per_second: workers as f64 / interval.as_secs_f64(),
        expected_exchanges_per_second: sync_loops as f64 / interval.as_secs_f64(),
        window,
        rollout_get,
        workers_page_get,
        load_average_before,
        load_average_after,
    })
}

/// Workers that send on every ack, added in steps on one analyzer until
/// reports/s stops growing.
async fn measure_saturation(
    options: &ScaleOptions,
    binary: &Path,
    dir: &Path,
    setup: &Setup,
    name: &str,
) -> anyhow::Result<SaturationRun> {
    progress(BENCHMARK, &format!("{name}: starting the server"));
    let mut analyzer = AnalyzerProcess::start(binary, dir, FILTER_TOKEN, setup.analyzer_cpu).await?;
    let settle = Duration::from_secs_f64(options.saturation_settle_s);
    let window = Duration::from_secs_f64(options.saturation_window_s);
    let per_step = SATURATION_RAMP + RAMP_PATIENCE + settle + window;
    let bound = per_step * options.saturation_workers.len() as u32 + Duration::from_secs(10);
    let mut driver = Driver::new(
        SyncSettings {
            analyzer: analyzer.address(),
            token: FILTER_TOKEN.to_owned(),
            report_interval: Duration::ZERO,
            max_hold_ms: options.saturation_hold_ms,
            // Ack-paced sync loops each keep one busy while the budget allows.
            connections: options.max_connections().min(setup.connection_budget),
            batched: options.batched,
        },
        Instant::now() + bound,
    );
    let mut steps: Vec<SaturationStep> = Vec::new();
    let mut proxies = 0;
    let mut stopped_growing = false;
    for &target in &options.saturation_workers {
        let target_proxies = target.div_ceil(options.workers_per_proxy);
        if target_proxies <= proxies {
            continue;
        }
        let label =
            format!("{name} {} workers (server pid {})", target_proxies * options.workers_per_proxy, analyzer.pid());
        let started = Instant::now();
        driver.spawn_fleet(proxies, target_proxies - proxies, options.workers_per_proxy, started, SATURATION_RAMP);
        proxies = target_proxies;
        wait_for_ramp(&driver, &mut analyzer, &label, started + SATURATION_RAMP + RAMP_PATIENCE).await?;
        let workers_synced = driver.synced_workers();
        hold_with_progress(&driver, &label, "settle", settle).await;
        let window = measure_window(&driver, &analyzer, &label, window).await;
        analyzer.fail_if_exited("during saturation")?;
        let rate = window.reports_per_second;
        let previous = steps.last().map(|step| step.window.reports_per_second);
        progress_done();
        eprintln!(
            "  {name} {} workers{}: {rate:.0} reports/s, {:.0} exchanges/s, server {:.0}% CPU, ingest p99 {}",
            driver.workers(),
            if options.batched { format!(" on {} connections, batched", driver.sync_loops()) } else { String::new() },
            window.exchanges_per_second,
            window.analyzer.cpu.utilisation * 100.0,
            window.ingest_ms.map_or_else(|| "–".to_owned(), |q| format!("{:.1} ms", q.p99)),
        );
        steps.push(SaturationStep {
            workers: driver.workers(),
            connections: driver.sync_loops(),
            workers_synced,
            window,
        });
        if previous.is_some_and(|previous| rate < previous * SATURATION_GROWTH) {
            stopped_growing = true;
            break;
        }
    }
    analyzer.kill();
    drop(driver);
    let best_step = steps
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| a.window.reports_per_second.total_cmp(&b.window.reports_per_second))
        .map(|(index, _)| index);
    Ok(SaturationRun { max_hold_ms: options.saturation_hold_ms, steps, best_step, stopped_growing })
}

/// A fresh analyzer's RSS and CPU with no worker.
async fn idle_reading(analyzer: &AnalyzerProcess) -> IdleReading {
    tokio::time::sleep(IDLE_SETTLE).await;
    let before = analyzer.sample();
    tokio::time::sleep(IDLE_READING).await;
    let after = analyzer.sample();
    IdleReading { rss_bytes: after.rss_bytes, cpu: CpuDelta::between(&before, &after) }
}

/// Waits until every worker has had a sync acknowledged, or `deadline`;
/// returns how long it took. Fails if the analyzer died.
async fn wait_for_ramp(
    driver: &Driver,
    analyzer: &mut AnalyzerProcess,
    label: &str,
    deadline: Instant,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    while (driver.synced_workers() as usize) < driver.workers() && Instant::now() < deadline {
        let (_, failures) = driver.totals();
        progress(
            BENCHMARK,
            &format!(
                "{label}: ramp, {} connected, {} synced of {}, {failures} failed syncs",
                driver.connected(),
                driver.synced_workers(),
                driver.workers()
            ),
        );
        analyzer.fail_if_exited("during the ramp")?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(started.elapsed().as_secs_f64() * 1_000.0)
}

/// Keeps the load on for `duration`, with a progress line.
async fn hold_with_progress(driver: &Driver, label: &str, what: &str, duration: Duration) {
    let started = Instant::now();
    let mut last = (started, driver.totals().0);
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(500).min(duration.saturating_sub(started.elapsed()))).await;
        let now = (Instant::now(), driver.totals().0);
        let rate = (now.1 - last.1) as f64 / now.0.saturating_duration_since(last.0).as_secs_f64().max(1e-3);
        last = now;
        progress(
            BENCHMARK,
            &format!(
                "{label}: {what} {:.1}/{:.1} s, {rate:.0} reports/s, {} failed syncs",
                started.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                driver.totals().1
            ),
        );
    }
}

/// One measured window: the workers' view and both processes' CPU, the
/// analyzer's memory, storage writes and report counters around it.
async fn measure_window(driver: &Driver, analyzer: &AnalyzerProcess, label: &str, duration: Duration) -> WindowSummary {
    let counters_before = ReportCounters::read(analyzer.address()).await;
    let driver_before = ProcSample::read(std::process::id());
    let before = analyzer.sample();
    driver.start_window();
    hold_with_progress(driver, label, "measuring", duration).await;
    let stats = driver.end_window();
    let after = analyzer.sample();
    let driver_after = ProcSample::read(std::process::id());
    let counters_after = ReportCounters::read(analyzer.address()).await;
    let state_file_bytes = analyzer.state_file_bytes();
    summarize_window(
        driver,
        stats.as_ref(),
        &before,
        &after,
        CpuDelta::between(&driver_before, &driver_after),
        state_file_bytes,
        counters_after.since(&counters_before),
    )
}

fn summarize_window(
    driver: &Driver,
    stats: Option<&WindowStats>,
    before: &ProcSample,
    after: &ProcSample,
    driver_cpu: CpuDelta,
    state_file_bytes: Option<u64>,
    (reports_received, reports_duplicate): (Option<f64>, Option<f64>),
) -> WindowSummary {
    let cpu = CpuDelta::between(before, after);
    let (workers, connections_open) = (driver.workers(), driver.connected());
    let window_s = stats.map_or(cpu.wall_ms / 1_000.0, |stats| stats.duration().as_secs_f64());
    let acks = stats.map_or(0, |stats| stats.acks);
    let exchanges = stats.map_or(0, |stats| stats.exchanges);
    let per_second = |count: u64| if window_s > 0.0 { count as f64 / window_s } else { 0.0 };
    let (reports_per_second, exchanges_per_second) = (per_second(acks), per_second(exchanges));
    let storage_write_bytes_per_second = after
        .storage_write_bytes
        .zip(before.storage_write_bytes)
        .map(|(after_bytes, before_bytes)| after_bytes.saturating_sub(before_bytes) as f64 / (cpu.wall_ms / 1_000.0));
    WindowSummary {
        window_ms: window_s * 1_000.0,
        workers,
        reports_acked: acks,
        reports_per_second,
        exchanges_acked: exchanges,
        exchanges_per_second,
        held_acks: stats.map_or(0, |stats| stats.held_acks),
        ingest_ms: stats.and_then(|stats| LatencySummary::of(&stats.ingest_us)),
        round_trip_ms: stats.and_then(|stats| LatencySummary::of(&stats.round_trip_us)),
        failures: stats
            .map(|stats| stats.failures.iter().map(|(kind, count)| (kind.label(), *count)).collect())
            .unwrap_or_default(),
        first_error: stats.and_then(|stats| stats.first_error.clone()),
        connections_open,
        connection_waits: stats.map_or(0, |stats| stats.connection_waits),
        longest_connection_wait_ms: stats.map_or(0.0, |stats| stats.longest_connection_wait.as_secs_f64() * 1_000.0),
        analyzer: AnalyzerWindow {
            cpu_us_per_report: (acks > 0).then(|| cpu.cpu_ms * 1_000.0 / acks as f64),
            reports_per_core_second: (cpu.utilisation > 0.0 && acks > 0).then(|| reports_per_second / cpu.utilisation),
            cpu_us_per_exchange: (exchanges > 0).then(|| cpu.cpu_ms * 1_000.0 / exchanges as f64),
            exchanges_per_core_second: (cpu.utilisation > 0.0 && exchanges > 0)
                .then(|| exchanges_per_second / cpu.utilisation),
            rss_bytes: after.rss_bytes,
            peak_rss_bytes: after.peak_rss_bytes,
            state_file_bytes,
            storage_write_bytes_per_second,
            reports_received,
            reports_duplicate,
            cpu,
        },
        driver_cpu,
    }
}

/// The analyzer's own report counters.
struct ReportCounters {
    received: Option<f64>,
    duplicate: Option<f64>,
}

impl ReportCounters {
    async fn read(address: SocketAddr) -> Self {
        let text = canary_tests::http::get(address, "/metrics").await.ok().map(|response| response.text());
        Self {
            received: text.as_deref().and_then(|text| prometheus_value(text, "canary_reports_received_total")),
            duplicate: text.as_deref().and_then(|text| prometheus_value(text, "canary_reports_duplicate_total")),
        }
    }

    fn since(&self, before: &ReportCounters) -> (Option<f64>, Option<f64>) {
        let delta = |after: Option<f64>, before: Option<f64>| Some(after? - before?);
        (delta(self.received, before.received), delta(self.duplicate, before.duplicate))
    }
}

/// `count` sequential `GET /v1/rollout` calls under the running load.
async fn time_rollout_gets(address: SocketAddr, count: usize, label: &str) -> RolloutGets {
    let timed = time_gets(address, "/v1/rollout", b"\"live_workers\":", count, label).await;
    let summary = crate::quantiles::Quantiles::of(&timed.samples_ms);
    RolloutGets {
        p50_ms: summary.map(|q| q.p50),
        max_ms: summary.map(|q| q.max),
        samples_ms: timed.samples_ms,
        response_bytes: timed.response_bytes,
        live_workers: timed.number,
        errors: timed.errors,
    }
}

/// `count` sequential [`WORKERS_PAGE_PATH`] calls under the running load.
async fn time_workers_page_gets(address: SocketAddr, count: usize, label: &str) -> WorkersPageGets {
    let timed = time_gets(address, WORKERS_PAGE_PATH, b"\"total\":", count, label).await;
    let summary = crate::quantiles::Quantiles::of(&timed.samples_ms);
    WorkersPageGets {
        p50_ms: summary.map(|q| q.p50),
        max_ms: summary.map(|q| q.max),
        samples_ms: timed.samples_ms,
        response_bytes: timed.response_bytes,
        total: timed.number,
        errors: timed.errors,
    }
}

/// What [`time_gets`] saw.
struct TimedGets {
    samples_ms: Vec<f64>,
    response_bytes: Option<usize>,
    /// The number after `number_key` in the last answer.
    number: Option<u64>,
    errors: Vec<String>,
}

/// `count` sequential `GET`s of `path`, at most [`ROLLOUT_GETS_BOUND`] in
/// all.
async fn time_gets(address: SocketAddr, path: &str, number_key: &[u8], count: usize, label: &str) -> TimedGets {
    let started = Instant::now();
    let mut timed =
        TimedGets { samples_ms: Vec::with_capacity(count), response_bytes: None, number: None, errors: Vec::new() };
    for call in 0..count {
        if started.elapsed() > ROLLOUT_GETS_BOUND {
            timed.errors.push(format!("stopped after {call} calls: over {ROLLOUT_GETS_BOUND:?}"));
            break;
        }
        progress(BENCHMARK, &format!("{label}: GET {path} {}/{count}", call + 1));
        let sent = Instant::now();
        match canary_tests::http::get(address, path).await {
            Ok(response) if response.status.is_success() => {
                timed.samples_ms.push(sent.elapsed().as_secs_f64() * 1_000.0);
                timed.response_bytes = Some(response.body.len());
                timed.number = json_number_after(&response.body, number_key);
            }
            Ok(response) => timed.errors.push(format!("HTTP {}", response.status)),
            Err(error) => timed.errors.push(format!("{error:#}")),
        }
    }
    timed
}

/// The unsigned number right after the first `key` in a JSON text, without
/// parsing megabytes of worker list on the measuring core.
fn json_number_after(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = body.windows(key.len()).position(|window| window == key)? + key.len();
    let digits: String = body[at..]
        .iter()
        .skip_while(|byte| byte.is_ascii_whitespace())
        .take_while(|byte| byte.is_ascii_digit())
        .map(|&byte| byte as char)
        .collect();
    digits.parse().ok()
}

fn size_line(size: &SizeRun) -> String {
    let window = &size.window;
    format!(
        "{} workers{}: {:.0} reports/s (of {:.0}), {:.0} exchanges/s, ingest p50 {} p99 {}, analyzer {:.0}% CPU, {} \
         µs/report, RSS {}, GET /v1/rollout p50 {}, GET /v1/workers page p50 {}",
        size.workers,
        connections_note(size),
        window.reports_per_second,
        size.expected_reports_per_second,
        window.exchanges_per_second,
        ms_cell(window.ingest_ms.map(|q| q.p50)),
        ms_cell(window.ingest_ms.map(|q| q.p99)),
        window.analyzer.cpu.utilisation * 100.0,
        number_cell(window.analyzer.cpu_us_per_report, 1),
        mib_cell(window.analyzer.rss_bytes),
        ms_cell(size.rollout_get.p50_ms),
        ms_cell(size.workers_page_get.p50_ms),
    )
}

/// How a size's workers reached the analyzer, for its row: nothing for one
/// connection per worker.
fn connections_note(size: &SizeRun) -> String {
    match size.connection_mode {
        ConnectionMode::PerWorker => String::new(),
        ConnectionMode::PerProxy => format!(" batched on {} connections", size.connections),
        ConnectionMode::Shared => format!(
            "{} on {} shared connections, no hold",
            if size.batched { " batched" } else { "" },
            size.connections
        ),
    }
}

/// Run-queue wait over wall time, in percent: how long the analyzer's
/// threads were runnable but not running (its own threads or another
/// process had the core).
fn waited_percent(cpu: &CpuDelta) -> f64 {
    if cpu.wall_ms > 0.0 { cpu.run_queue_wait_ms / cpu.wall_ms * 100.0 } else { 0.0 }
}

fn ms_cell(ms: Option<f64>) -> String {
    ms.map_or_else(|| "–".to_owned(), |ms| format!("{ms:.1} ms"))
}

fn number_cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |value| format!("{value:.decimals$}"))
}

fn mib_cell(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "–".to_owned(), |bytes| format!("{:.1} MiB", bytes as f64 / MIB))
}

/// The table of the sizes at the report interval.
/// `<stem>-throughput.svg` (`scale-throughput.svg`, or
/// `scale-batched-throughput.svg` for a `--batched` run): acknowledged
/// reports per second against the
/// number of simulated workers, at 1 Hz (with the offered rate) and in the
/// saturation sweep, plus what one analyzer core would take at the measured
/// cost, against the 50,000 reports/s target.
pub fn plot(result: &ScaleResult, dir: &Path, stem: &str) -> anyhow::Result<PathBuf> {
    let at_one_hz = |value: fn(&SizeRun) -> Option<f64>| -> Vec<(f64, f64)> {
        result.sizes.iter().filter_map(|size| Some((size.workers as f64, value(size)?))).collect()
    };
    let mut series = vec![
        crate::plots::Series {
            label: "offered at 1 Hz".to_owned(),
            points: at_one_hz(|size| Some(size.expected_reports_per_second)),
        },
        crate::plots::Series {
            label: "acknowledged at 1 Hz".to_owned(),
            points: at_one_hz(|size| Some(size.window.reports_per_second)),
        },
        crate::plots::Series {
            label: "per analyzer core at 1 Hz (measured cost)".to_owned(),
            points: at_one_hz(|size| size.window.analyzer.reports_per_core_second),
        },
    ];
    if let Some(saturation) = &result.saturation {
        let steps = |value: fn(&SaturationStep) -> Option<f64>| -> Vec<(f64, f64)> {
            saturation.steps.iter().filter_map(|step| Some((step.workers as f64, value(step)?))).collect()
        };
        series.push(crate::plots::Series {
            label: "acknowledged, saturated".to_owned(),
            points: steps(|step| Some(step.window.reports_per_second)),
        });
        series.push(crate::plots::Series {
            label: "per analyzer core, saturated".to_owned(),
            points: steps(|step| step.window.analyzer.reports_per_core_second),
        });
    }
    series.retain(|series| !series.points.is_empty());
    let path = dir.join(format!("{stem}-throughput.svg"));
    let title = if result.settings.options.batched {
        format!("Analyzer ingest, batched ({} worker reports per exchange)", result.settings.options.workers_per_proxy)
    } else {
        "Analyzer ingest: reports/s against simulated filter workers".to_owned()
    };
    crate::plots::LineChart {
        title: &title,
        x_label: "filter workers (proxies × workers per proxy)",
        y_label: "worker reports per second",
        x_scale: crate::plots::XScale::Log10,
        series: &series,
        vertical_markers: &[],
        horizontal_markers: &[crate::plots::Marker {
            label: "target 50,000 reports/s per core".to_owned(),
            value: TARGET_REPORTS_PER_CORE_SECOND,
        }],
        legend: crate::plots::Legend::UpperLeft,
    }
    .draw(&path)?;
    Ok(path)
}

pub fn sizes_table(sizes: &[SizeRun]) -> String {
    let mut out = String::from(
        "| proxies × workers | reports/s (expected) | exchanges/s (expected) | ingest p50 ms | p99 | max | analyzer CPU \
         | waited for CPU | µs/report | µs/exchange | RSS | snapshot | storage MB/s | GET /v1/rollout p50 ms | max \
         | GET /v1/workers page p50 ms | max | failed syncs \
         |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for size in sizes {
        let window = &size.window;
        let analyzer = &window.analyzer;
        let _ = writeln!(
            out,
            "| {} × {}{} | {:.0} ({:.0}) | {:.0} ({:.0}) | {} | {} | {} | {:.0}% | {:.0}% | {} | {} | {} | {} | {} | {} \
             | {} | {} | {} | {} |",
            size.proxies,
            size.workers / size.proxies.max(1),
            connections_note(size),
            window.reports_per_second,
            size.expected_reports_per_second,
            window.exchanges_per_second,
            size.expected_exchanges_per_second,
            number_cell(window.ingest_ms.map(|q| q.p50), 2),
            number_cell(window.ingest_ms.map(|q| q.p99), 2),
            number_cell(window.ingest_ms.map(|q| q.max), 1),
            analyzer.cpu.utilisation * 100.0,
            waited_percent(&analyzer.cpu),
            number_cell(analyzer.cpu_us_per_report, 1),
            number_cell(analyzer.cpu_us_per_exchange, 1),
            mib_cell(analyzer.rss_bytes),
            analyzer
                .state_file_bytes
                .map_or_else(|| "–".to_owned(), |bytes| format!("{:.0} KiB", bytes as f64 / 1024.0)),
            number_cell(analyzer.storage_write_bytes_per_second.map(|bytes| bytes / 1e6), 1),
            number_cell(size.rollout_get.p50_ms, 1),
            number_cell(size.rollout_get.max_ms, 1),
            number_cell(size.workers_page_get.p50_ms, 1),
            number_cell(size.workers_page_get.max_ms, 1),
            window.failures.values().sum::<u64>(),
        );
    }
    out
}

/// The saturation sweep's table.
pub fn saturation_table(run: &SaturationRun) -> String {
    let mut out = String::from(
        "| workers | connections | reports/s | exchanges/s | analyzer CPU | waited for CPU | reports per core-second \
         | exchanges per core-second | µs/report | ingest p50 ms | p99 | driver CPU | RSS | snapshot | failed syncs \
         |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (index, step) in run.steps.iter().enumerate() {
        let window = &step.window;
        let analyzer = &window.analyzer;
        let _ = writeln!(
            out,
            "| {}{} | {} | {:.0} | {:.0} | {:.0}% | {:.0}% | {} | {} | {} | {} | {} | {:.0}% | {} | {} | {} |",
            step.workers,
            if run.best_step == Some(index) { " (best)" } else { "" },
            step.connections,
            window.reports_per_second,
            window.exchanges_per_second,
            analyzer.cpu.utilisation * 100.0,
            waited_percent(&analyzer.cpu),
            number_cell(analyzer.reports_per_core_second, 0),
            number_cell(analyzer.exchanges_per_core_second, 0),
            number_cell(analyzer.cpu_us_per_report, 1),
            number_cell(window.ingest_ms.map(|q| q.p50), 2),
            number_cell(window.ingest_ms.map(|q| q.p99), 2),
            window.driver_cpu.utilisation * 100.0,
            mib_cell(analyzer.rss_bytes),
            analyzer
                .state_file_bytes
                .map_or_else(|| "–".to_owned(), |bytes| format!("{:.0} KiB", bytes as f64 / 1024.0)),
            window.failures.values().sum::<u64>(),
        );
    }
    out
}

/// The memory fit as lines of text.
pub fn memory_lines(result: &ScaleResult) -> String {
    let mut out = String::new();
    if let Some(idle) = &result.idle {
        let _ = writeln!(
            out,
            "- analyzer idle (no worker): RSS {}, {:.2}% CPU",
            mib_cell(idle.rss_bytes),
            idle.cpu.utilisation * 100.0
        );
    }
    match &result.memory_fit {
        Some(fit) => {
            let _ = writeln!(
                out,
                "- RSS = {:.1} MiB + {:.0} bytes × workers (least squares, R² {:.4})",
                fit.intercept_bytes / MIB,
                fit.bytes_per_worker,
                fit.r_squared
            );
            for point in &fit.points {
                let _ = writeln!(
                    out,
                    "  - {:.0} workers: {:.1} MiB measured, {:.1} MiB fitted, residual {:+.2} MiB",
                    point.workers,
                    point.rss_bytes / MIB,
                    point.fitted_bytes / MIB,
                    point.residual_bytes / MIB
                );
            }
        }
        None => out.push_str("- RSS fit: needs at least one size with a connection per worker besides idle\n"),
    }
    for size in result.sizes.iter().filter(|size| size.connection_mode == ConnectionMode::Shared) {
        let _ = writeln!(
            out,
            "- not in the fit: {} workers sharing {} connections: RSS {}",
            size.workers,
            size.connections,
            mib_cell(size.window.analyzer.rss_bytes)
        );
    }
    out
}

/// The `scale.md` next to the JSON.
/// The analyzer's cost per report next to the HTTP floor's, at the same
/// load, as medians over the repeats; `None` without both.
pub fn floor_line(result: &ScaleResult) -> Option<String> {
    floor_comparison(result.repeats.as_ref()?, result.settings.options.batched)
}

/// [`floor_line`] of `repeats`; `batched` names the floor's batch path and
/// adds the exchanges per core-second.
fn floor_comparison(repeats: &Repeats, batched: bool) -> Option<String> {
    let (analyzer, floor) = (repeats.analyzer_per_core?, repeats.floor_per_core?);
    let (ratio, own) = (repeats.cpu_ratio?, repeats.own_us?);
    let range = |spread: Spread, decimals: usize| {
        if spread.count > 1 {
            format!(" [{:.decimals$}–{:.decimals$}]", spread.min, spread.max)
        } else {
            String::new()
        }
    };
    let exchanges = |spread: Option<Spread>| match spread {
        Some(spread) if batched => format!(", {:.0}{} exchanges per core-second", spread.median, range(spread, 0)),
        _ => String::new(),
    };
    Some(format!(
        "HTTP floor{} at {} workers{}: {:.0} worker reports per core-second{} ({:.1} µs/report{}); the analyzer: \
         {:.0}{} ({:.1} µs/report{}); pair by pair, the analyzer's CPU per worker report is {:.2}×{} the floor's, \
         {:.1} µs{} of its own{}.",
        if batched { format!(" (its batch path, POST {})", driver::SYNC_BATCH_PATH) } else { String::new() },
        repeats.workers,
        if batched { format!(" on {} connections", repeats.connections) } else { String::new() },
        floor.median,
        range(floor, 0),
        1e6 / floor.median,
        exchanges(repeats.floor_exchanges_per_core),
        analyzer.median,
        range(analyzer, 0),
        1e6 / analyzer.median,
        exchanges(repeats.analyzer_exchanges_per_core),
        ratio.median,
        range(ratio, 2),
        own.median,
        range(own, 1),
        if ratio.count > 1 { format!(" (medians of {} pairs)", ratio.count) } else { String::new() },
    ))
}

/// The Markdown setup line that says how the workers reported, so that a
/// batched run is never mistaken for the per-worker path.
pub fn reporting_line(options: &ScaleOptions) -> String {
    let how = match options.batching() {
        Some(reports) => format!(
            "one connection per proxy, its {reports} workers' reports (each its own worker id and seq) in one batch \
             per exchange, as the filter's reporter does with `batch_reports`; reports/s count worker reports, exchanges/s \
             HTTP exchanges"
        ),
        None => "one connection per worker, as the filter's worker VMs today".to_owned(),
    };
    format!("- reporting: {}; {how}\n", batching_label(options.batching()))
}

/// One row per repeat: the analyzer, then the floor right after it.
pub fn repeats_table(repeats: &Repeats) -> String {
    let mut out = String::from(
        "| run | analyzer reports/s | exchanges/s | CPU | reports per core-second | exchanges per core-second \
         | µs/report | floor reports per core-second | exchanges per core-second | µs/report \
         | CPU ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (index, step) in repeats.analyzer.iter().enumerate() {
        let floor = repeats.floor.get(index);
        let us = |step: &SaturationStep| step.per_core().map(|rate| 1e6 / rate);
        let ratio = us(step).zip(floor.and_then(us)).map(|(analyzer, floor)| analyzer / floor);
        let _ = writeln!(
            out,
            "| {}{} | {:.0} | {:.0} | {:.0}% | {} | {} | {} | {} | {} | {} | {} |",
            index + 1,
            if index == 0 { " (sweep)" } else { "" },
            step.window.reports_per_second,
            step.window.exchanges_per_second,
            step.window.analyzer.cpu.utilisation * 100.0,
            number_cell(step.per_core(), 0),
            number_cell(step.exchanges_per_core(), 0),
            number_cell(us(step), 1),
            number_cell(floor.and_then(SaturationStep::per_core), 0),
            number_cell(floor.and_then(SaturationStep::exchanges_per_core), 0),
            number_cell(floor.and_then(us), 1),
            ratio.map_or_else(|| "–".to_owned(), |ratio| format!("{ratio:.2}×")),
        );
    }
    out
}

pub fn markdown(result: &ScaleResult) -> String {
    let context = &result.context;
    let machine = &context.machine;
    let artifacts = &context.artifacts;
    let unknown = || "unknown".to_owned();
    let options = &result.settings.options;
    let setup = &result.setup;
    let batching = options.batching();
    let mut out = String::new();
    let _ = writeln!(out, "# Analyzer scale{}\n", if batching.is_some() { ", batched" } else { "" });
    out.push_str(&context.markdown_preamble());
    out.push_str(&reporting_line(options));
    let _ = writeln!(
        out,
        "- analyzer: {} build, `{}`; state on {}",
        artifacts.analyzer_build_profile,
        artifacts.analyzer.path.display(),
        machine.temp_dir_filesystem.as_ref().map_or_else(unknown, |filesystem| format!(
            "{} ({} mounted at {})",
            filesystem.fs_type, filesystem.source, filesystem.mount_point
        ))
    );
    let _ = writeln!(
        out,
        "- source: {}{}",
        artifacts.git_commit.clone().unwrap_or_else(unknown),
        if artifacts.git_dirty == Some(true) { " (with uncommitted changes)" } else { "" }
    );
    let _ = writeln!(
        out,
        "- pinning: {}; open files {} (was {}, hard limit {}), so at most {} connections; worker connections from {}",
        if setup.pinned {
            format!(
                "analyzer on core {}, workers on core {}",
                setup.analyzer_cpu.unwrap_or(ANALYZER_CPU),
                setup.driver_cpu.unwrap_or(DRIVER_CPU)
            )
        } else {
            format!("none ({})", setup.pinning_note.clone().unwrap_or_else(unknown))
        },
        setup.open_files.soft,
        setup.open_files.soft_before,
        setup.open_files.hard,
        setup.connection_budget,
        setup.source_ips.join(", ")
    );
    let _ = writeln!(
        out,
        "- each worker: a real report every {} ms{} (`max_hold_ms` {}, or 0 on shared connections), {} stable and {} \
         canary requests in {} latency buckets per version; {} s warm-up, {} s window per size, on a fresh analyzer \
         each\n",
        options.report_interval_ms,
        if batching.is_some() { " in its proxy's batch" } else { "" },
        options.report_interval_ms,
        result.settings.stable_requests_per_report,
        result.settings.canary_requests_per_report,
        result.settings.buckets_per_version,
        options.warm_up_s,
        options.window_s,
    );
    for verdict in &result.verdicts {
        let _ = writeln!(out, "**{}**\n", verdict.line());
    }
    let _ = writeln!(
        out,
        "## At the report interval\n\n{}`ingest` is send to acknowledgement less the analyzer's hold (so: decode, \
         ingest, group commit, answer), per exchange; CPU is the analyzer's, from schedstat, over the window; `waited for CPU` is the \
         time its threads were runnable but not running, summed over threads (its own threads share one core, so \
         some is normal; with CPU below 100% the rest is other processes on the core, and latencies then say more \
         about the machine than the analyzer); `snapshot` is the size of `state.json`, written every few seconds \
         (group commits append to the journal); `storage MB/s` is everything the analyzer wrote.\n",
        match batching {
            Some(reports) => format!(
                "Batched: `reports/s` and `µs/report` count worker reports, `exchanges/s` and `µs/exchange` HTTP \
                 exchanges ({reports} worker reports each). "
            ),
            None => String::new(),
        }
    );
    out.push_str(&sizes_table(&result.sizes));
    if let Some(largest) = result.sizes.last() {
        let _ = writeln!(out, "\nBusiest analyzer threads at {} workers (CPU ms over the window):\n", largest.workers);
        for thread in &largest.window.analyzer.cpu.top_threads {
            let _ = writeln!(out, "- {} ({}): {:.0} ms", thread.name, thread.tid, thread.cpu_ms);
        }
    }
    if let Some(run) = &result.saturation {
        let _ = writeln!(
            out,
            "\n## Saturation\n\n{} as soon as the previous one is acknowledged (`max_hold_ms` {}); steps add workers \
             until reports/s grows less than {:.0}%. Reports per core-second is reports/s over the analyzer's \
             utilisation, exchanges per core-second the same for HTTP exchanges.{}\n",
            match batching {
                Some(_) => "Each proxy sends its workers' next batch (one connection per proxy)",
                None => "Workers send the next report",
            },
            run.max_hold_ms,
            (SATURATION_GROWTH - 1.0) * 100.0,
            if run.stopped_growing { "" } else { " The sweep ran out of steps before reports/s stopped growing." }
        );
        out.push_str(&saturation_table(run));
    }
    if let Some(repeats) = &result.repeats {
        let _ = writeln!(
            out,
            "\n## Repeats and the HTTP floor\n\nThe analyzer's best step again, each time on a fresh analyzer, and \
             after each the same load against `bench-scale-floor`: the analyzer's hyper server and report decoder \
             with no state, no disk, no token check and no hold, so what {} costs on this machine. One window moves \
             by ±15% and more here, so the verdict takes the median.\n",
            match batching {
                Some(reports) => format!(
                    "one HTTP exchange per batch of {reports} worker reports (the floor's batch path, POST {})",
                    driver::SYNC_BATCH_PATH
                ),
                None => "one HTTP exchange per report".to_owned(),
            }
        );
        out.push_str(&repeats_table(repeats));
        if let Some(line) = floor_line(result) {
            let _ = writeln!(out, "\n{line}");
        }
    }
    let _ = writeln!(out, "\n## Memory\n");
    out.push_str(&memory_lines(result));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_a_line_and_reports_residuals() {
        let fit = least_squares(&[(0.0, 10.0), (1_000.0, 2_010.0), (4_000.0, 8_010.0)]).expect("a fit");
        assert!((fit.bytes_per_worker - 2.0).abs() < 1e-9, "{fit:?}");
        assert!((fit.intercept_bytes - 10.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.r_squared - 1.0).abs() < 1e-12);
        assert!(fit.worst_residual_percent < 1e-6);
        assert!(fit.points.iter().all(|point| point.residual_bytes.abs() < 1e-6));

        let bent = least_squares(&[(0.0, 0.0), (1.0, 1.0), (2.0, 4.0), (3.0, 9.0)]).expect("a fit");
        assert!(bent.r_squared < 0.95, "a parabola is not linear: {bent:?}");
        // The line is 3x - 1: it misses every point by 1, and the largest
        // value measured is 9.
        assert!((bent.worst_residual_percent - 100.0 / 9.0).abs() < 1e-9, "{bent:?}");
        let residual_sum: f64 = bent.points.iter().map(|point| point.residual_bytes).sum();
        assert!(residual_sum.abs() < 1e-9, "least-squares residuals sum to zero");

        assert_eq!(least_squares(&[(1.0, 2.0)]), None);
        assert_eq!(least_squares(&[(1.0, 2.0), (1.0, 3.0)]), None);
        assert_eq!(least_squares(&[]), None);
    }

    #[test]
    fn finds_a_number_in_json_text() {
        let body = br#"{"canary_weight_bp":0,"data_plane":{"live_workers": 40000,"converged_workers":39998}}"#;
        assert_eq!(json_number_after(body, b"\"live_workers\":"), Some(40_000));
        assert_eq!(json_number_after(body, b"\"missing\":"), None);
    }

    #[test]
    fn presets_are_valid_and_smoke_is_small() {
        let full = ScaleOptions::preset(false, false);
        full.validate().expect("valid");
        assert_eq!(full.max_connections(), 40_000);
        let smoke = ScaleOptions::preset(true, false);
        smoke.validate().expect("valid");
        assert_eq!(smoke.max_connections(), 40);
        assert!(smoke.window_s <= 2.0);
        assert_eq!(smoke.saturation_repeats, 1, "one floor run, as before repeats");
        let mut bad = smoke.clone();
        bad.window_s = 0.0;
        assert!(bad.validate().is_err());
        let mut bad = smoke.clone();
        bad.saturation_repeats = 0;
        assert!(bad.validate().is_err());
    }

    /// A saturation step whose analyzer did `per_core` reports per
    /// core-second at `utilisation`, one exchange per report.
    fn step(per_core: f64, utilisation: f64) -> SaturationStep {
        batched_step(per_core, utilisation, 1)
    }

    /// The same with `per_exchange` worker reports per exchange, on 64
    /// workers' worth of proxies.
    fn batched_step(per_core: f64, utilisation: f64, per_exchange: usize) -> SaturationStep {
        let cpu = CpuDelta {
            wall_ms: 1_000.0,
            cpu_ms: utilisation * 1_000.0,
            utilisation,
            run_queue_wait_ms: 0.0,
            top_threads: Vec::new(),
        };
        let reports_per_second = per_core * utilisation;
        let exchanges_per_second = reports_per_second / per_exchange as f64;
        SaturationStep {
            workers: 64,
            connections: 64 / per_exchange,
            workers_synced: 64,
            window: WindowSummary {
                window_ms: 1_000.0,
                workers: 64,
                reports_acked: reports_per_second as u64,
                reports_per_second,
                exchanges_acked: exchanges_per_second as u64,
                exchanges_per_second,
                held_acks: 0,
                ingest_ms: None,
                round_trip_ms: None,
                failures: BTreeMap::new(),
                first_error: None,
                connections_open: (64 / per_exchange) as u64,
                connection_waits: 0,
                longest_connection_wait_ms: 0.0,
                analyzer: AnalyzerWindow {
                    cpu: cpu.clone(),
                    cpu_us_per_report: Some(1e6 / per_core),
                    reports_per_core_second: Some(per_core),
                    cpu_us_per_exchange: Some(1e6 / per_core * per_exchange as f64),
                    exchanges_per_core_second: Some(per_core / per_exchange as f64),
                    rss_bytes: None,
                    peak_rss_bytes: None,
                    state_file_bytes: None,
                    storage_write_bytes_per_second: None,
                    reports_received: None,
                    reports_duplicate: None,
                },
                driver_cpu: cpu,
            },
        }
    }

    #[test]
    fn repeats_compare_pair_by_pair_and_the_verdict_takes_the_median() {
        // The machine slows down over the run: the floor slows with it, so
        // the pairwise ratio stays put while the rates move.
        let analyzer = vec![step(40_000.0, 0.8), step(50_000.0, 0.8), step(25_000.0, 0.8)];
        let floor = vec![step(80_000.0, 1.0), step(100_000.0, 1.0), step(50_000.0, 1.0)];
        let repeats = Repeats::summarize(analyzer, floor);
        let per_core = repeats.analyzer_per_core.expect("rates");
        assert_eq!((per_core.count, per_core.median, per_core.min, per_core.max), (3, 40_000.0, 25_000.0, 50_000.0));
        assert_eq!(repeats.floor_per_core.expect("floor").median, 80_000.0);
        let ratio = repeats.cpu_ratio.expect("pairs");
        assert!((ratio.min - 2.0).abs() < 1e-9 && (ratio.max - 2.0).abs() < 1e-9, "{ratio:?}");
        let own = repeats.own_us.expect("pairs");
        assert_eq!((own.min, own.median, own.max), (10.0, 12.5, 20.0));

        let verdicts = verdicts(Some(&repeats), None, None);
        assert_eq!(verdicts.len(), 1);
        let line = verdicts[0].line();
        assert!(line.contains("median of 3 runs") && line.contains("extrapolated from 80% CPU"), "{line}");
        assert!(!line.contains("batched") && !line.contains("exchanges"), "{line}");
        assert_eq!(
            (verdicts[0].measured, verdicts[0].min, verdicts[0].max),
            (40_000.0, Some(25_000.0), Some(50_000.0))
        );
        assert!(!verdicts[0].met, "the median, not the best run, is judged");

        let table = repeats_table(&repeats);
        assert_eq!(table.lines().count(), 2 + 3, "{table}");
        assert!(
            table.contains("| 1 (sweep) | 32000 | 32000 | 80% | 40000 | 40000 | 25.0 | 80000 | 80000 | 12.5 | 2.00× |"),
            "{table}"
        );
    }

    #[test]
    fn a_single_run_without_a_floor_has_no_range_and_no_ratio() {
        let repeats = Repeats::summarize(vec![step(60_000.0, 1.0)], Vec::new());
        assert!(repeats.cpu_ratio.is_none() && repeats.floor_per_core.is_none());
        let verdicts = verdicts(Some(&repeats), None, None);
        assert_eq!((verdicts[0].min, verdicts[0].max), (None, None));
        assert!(verdicts[0].met);
        assert!(verdicts[0].line().contains("(64 workers)"), "{}", verdicts[0].line());
    }

    /// `canary-bench scale ARGS` as the binary parses it.
    fn options_of(args: &[&str]) -> anyhow::Result<ScaleOptions> {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            scale: ScaleArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(std::iter::once("scale").chain(args.iter().copied()))?;
        let options = cli.scale.options();
        options.validate()?;
        Ok(options)
    }

    #[test]
    fn batched_is_off_by_default_and_sizes_by_proxies_when_on() -> anyhow::Result<()> {
        let per_worker = options_of(&[])?;
        assert!(!per_worker.batched);
        assert_eq!(per_worker.proxies, ScaleOptions::DEFAULT_PROXIES, "the per-worker defaults are unchanged");
        assert_eq!(per_worker.batching(), None);

        let batched = options_of(&["--batched"])?;
        assert!(batched.batched);
        assert_eq!(batched.proxies, [1_000, 4_000, 10_000]);
        assert_eq!(batched.batching(), Some(4));
        // 10,000 proxies are 10,000 connections; the saturation sweep's
        // 16,384 workers are 4,096.
        assert_eq!(batched.max_connections(), 10_000);
        assert_eq!(per_worker.max_connections(), 40_000);
        // Everything else as the per-worker run.
        assert_eq!(
            (batched.saturation_workers.clone(), batched.window_s, batched.saturation_repeats),
            (per_worker.saturation_workers.clone(), per_worker.window_s, per_worker.saturation_repeats)
        );

        let smoke = options_of(&["--smoke", "--batched"])?;
        assert!(smoke.batched && smoke.smoke);
        assert_eq!(smoke.proxies, ScaleOptions::SMOKE_PROXIES);
        assert_eq!(smoke.max_connections(), 10, "10 proxies; 40 saturation workers are 10 proxies");

        let explicit = options_of(&["--batched", "--proxies", "7,70", "--workers-per-proxy", "8"])?;
        assert_eq!((explicit.proxies.as_slice(), explicit.workers_per_proxy), ([7, 70].as_slice(), 8));
        let error = options_of(&["--batched", "--workers-per-proxy", "257"]).expect_err("more than a batch holds");
        assert!(error.to_string().contains("at most 256 workers per proxy"), "{error}");
        options_of(&["--workers-per-proxy", "257"]).expect("per worker, any number");
        Ok(())
    }

    #[test]
    fn connections_are_workers_or_proxies_and_the_budget_caps_them() {
        let per_worker = ScaleOptions { saturation_workers: vec![10, 64], ..ScaleOptions::preset(false, false) };
        let batched = ScaleOptions { batched: true, ..per_worker.clone() };
        assert_eq!((per_worker.connections_for(1_000), batched.connections_for(1_000)), (4_000, 1_000));
        // Saturation workers count workers, in whole proxies: 10 workers are
        // 3 proxies.
        let saturation_only = |options: &ScaleOptions| {
            ScaleOptions { proxies: Vec::new(), saturation_workers: vec![10], ..options.clone() }.max_connections()
        };
        assert_eq!((saturation_only(&per_worker), saturation_only(&batched)), (12, 3));
        assert_eq!((per_worker.max_connections(), batched.max_connections()), (40_000, 10_000));

        // The open-files limit of this machine: hard 20,000 less the margin.
        let budget = 20_000 - OPEN_FILES_MARGIN as usize;
        let plan = |options: &ScaleOptions, proxies| options.size_plan(proxies, budget);
        assert_eq!(
            plan(&per_worker, 4_000),
            SizePlan { connection_mode: ConnectionMode::PerWorker, connections: 16_000, max_hold_ms: 1_000 }
        );
        assert_eq!(
            plan(&per_worker, 10_000),
            SizePlan { connection_mode: ConnectionMode::Shared, connections: budget, max_hold_ms: 0 },
            "40,000 workers do not fit"
        );
        assert_eq!(
            plan(&batched, 10_000),
            SizePlan { connection_mode: ConnectionMode::PerProxy, connections: 10_000, max_hold_ms: 1_000 },
            "10,000 proxies do"
        );
        assert_eq!(
            batched.size_plan(10_000, 5_000),
            SizePlan { connection_mode: ConnectionMode::Shared, connections: 5_000, max_hold_ms: 0 }
        );
    }

    #[test]
    fn a_batched_run_says_so_and_counts_worker_reports() {
        let options = ScaleOptions::preset(false, true);
        let line = reporting_line(&options);
        assert!(line.contains("batched: 4 worker reports per exchange (POST /v1/filter/sync-batch)"), "{line}");
        let per_worker = reporting_line(&ScaleOptions::preset(false, false));
        assert!(per_worker.contains("per worker: 1 worker report per exchange (POST /v1/filter/sync)"), "{per_worker}");

        // Worker reports per core-second at 80% CPU, 4 per exchange, each
        // run next to a floor that takes twice as many.
        let repeats = Repeats::summarize(
            vec![batched_step(60_000.0, 0.8, 4), batched_step(40_000.0, 0.8, 4), batched_step(50_000.0, 0.8, 4)],
            vec![batched_step(120_000.0, 1.0, 4), batched_step(80_000.0, 1.0, 4), batched_step(100_000.0, 1.0, 4)],
        );
        assert_eq!((repeats.workers, repeats.connections), (64, 16));
        assert_eq!(repeats.analyzer_exchanges_per_core.expect("rates").median, 12_500.0);
        let verdicts = verdicts(Some(&repeats), None, options.batching());
        let line = verdicts[0].line();
        assert!(
            line.contains("worker reports per second on one analyzer core, batched: 4 worker reports per exchange (POST /v1/filter/sync-batch)"),
            "{line}"
        );
        assert!(
            line.contains("(64 workers on 16 connections, median of 3 runs; 12500 exchanges per core-second)"),
            "{line}"
        );
        assert_eq!(verdicts[0].measured, 50_000.0, "judged per worker report");
        assert!(verdicts[0].met);

        let floor = floor_comparison(&repeats, true).expect("a floor line");
        assert!(floor.starts_with("HTTP floor (its batch path, POST /v1/filter/sync-batch) at 64 workers on 16 connections: 100000 worker reports per core-second [80000–120000] (10.0 µs/report, 25000 [20000–30000] exchanges per core-second)"), "{floor}");
        let floor = floor_comparison(&repeats, false).expect("a floor line");
        assert!(floor.starts_with("HTTP floor at 64 workers: 100000 worker reports per core-second"), "{floor}");
        assert!(!floor.contains("exchanges"), "{floor}");

        let table = repeats_table(&repeats);
        assert!(
            table.contains("| 1 (sweep) | 48000 | 12000 | 80% | 60000 | 15000 | 16.7 | 120000 | 30000 | 8.3 | 2.00× |"),
            "{table}"
        );
        let run = SaturationRun {
            max_hold_ms: 0,
            steps: repeats.analyzer.clone(),
            best_step: Some(0),
            stopped_growing: true,
        };
        let table = saturation_table(&run);
        assert!(table.contains("| 64 (best) | 16 | 48000 | 12000 | 80% | 0% | 60000 | 15000 | 16.7 |"), "{table}");
    }

    #[test]
    fn latency_summary_in_ms() {
        let mut histogram = LatencyHistogram::new();
        for us in 1..=1_000 {
            histogram.record_us(us);
        }
        let summary = LatencySummary::of(&histogram).expect("samples");
        assert_eq!(summary.count, 1_000);
        assert!((summary.p50 - 0.5).abs() < 0.01, "{summary:?}");
        assert!((summary.p99 - 0.99).abs() < 0.01, "{summary:?}");
        assert!(summary.max >= 1.0 && summary.max < 1.01, "{summary:?}");
        assert_eq!(LatencySummary::of(&LatencyHistogram::new()), None);
    }
}
