//! Data-plane overhead: what the filter costs Envoy per request, next to
//! Envoy's own `weighted_clusters` and two wasm floors.
//!
//! Variants (one bootstrap skeleton for all: the same listener, early header
//! mutation, `stable`/`canary` clusters, router and the same two release
//! `demo-backend`s; only the route and the wasm filter differ):
//!
//! - **(a)** native `weighted_clusters` 90/10, no wasm;
//! - **(b)** a no-op Rust proxy-wasm filter (`bench/wasm/noop`) with the
//!   header-match routes: the floor of any wasm filter;
//! - **(c)** a minimal splitter (`bench/wasm/splitter`): one SplitMix64 draw
//!   and one header write, 10%: the floor of any wasm splitter; and the same
//!   module sticky on `x-user-id` (`c_sticky`): one header read and the
//!   filter's sticky hash instead of the draw, the floor of any sticky wasm
//!   splitter, which (d) sticky is also judged against;
//! - **(d)** `canary_filter.wasm` at 10% with a real analyzer and reporting
//!   on (the production report interval), once random (`d_random`) and once
//!   sticky on the `x-user-id` header (`d_sticky`).
//!
//! Every variant gets the same requests, `x-user-id` included (10,000
//! distinct users in rotation), so the only difference is the filter.
//!
//! For each Envoy `--concurrency` a calibration pass measures every variant's
//! maximum throughput once; the fixed rate is `--rate-fraction` (50%) of the
//! slowest. Then `--rounds` interleaved rounds `a b c c_sticky d_random d_sticky`,
//! each a fresh Envoy, run two phases, each a warm-up and a measured window:
//!
//! 1. **saturation**: closed loop over `--connections` keep-alive
//!    connections: maximum throughput, CPU per request, Envoy's utilisation;
//! 2. **fixed rate**: open loop at the fixed rate: latency p50/p99/p99.9 from
//!    the intended send time (coordinated-omission-safe, see
//!    [`crate::loadgen`]) and CPU per request below saturation.
//!
//! Then `--side-by-side-rounds` rounds start every variant's Envoy at once
//! (on the same CPU when pinned), each under its own open loop at the fixed
//! rate over the number of variants, halved until a probe round keeps up
//! (below saturation), read over one window: a ratio within
//! such a round cancels the machine's drift between sequential rounds,
//! which on a shared VM is larger than the 5% the (d)/(c) target resolves.
//!
//! **CPU per request** = Δ Envoy CPU / Δ `http.ingress.downstream_rq_total`,
//! both read just around the measured window. Envoy CPU is the sum of field 1
//! of `/proc/PID/task/*/schedstat` (ns on CPU, all threads); `utime + stime`
//! of `/proc/PID/stat` (10 ms ticks) is recorded as a cross-check. The
//! counter is read before the CPU at the start and after it at the end, so
//! the admin calls themselves fall outside the window.
//!
//! **Pinning.** At concurrency 1 Envoy runs on CPU 0 and everything else (this
//! process with the load generator, the backends, the analyzer) on CPU 1.
//! The workspace forbids `unsafe`, so there is no `sched_setaffinity` call:
//! this process pins itself with `taskset -a -p -c 1 <own pid>` (all its
//! threads; children and later threads inherit it), starts the backends and
//! the analyzer, and moves each Envoy to CPU 0 with `taskset -a -p -c 0` once
//! it is up (startup is not measured). That is one external command per
//! process and no new dependency. At concurrency 2 Envoy needs both cores of
//! a 2-core machine, so nothing is pinned and the results say
//! `pinned: false`. A pinned Envoy below 95% utilisation at saturation means
//! the load core was the bottleneck: such rounds are flagged.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use canary_protocol::{LatencyHistogram, Version};
use canary_tests::analyzer::Analyzer;
use canary_tests::backend::{Backend, BackendOpts};
use canary_tests::envoy::{self, BootstrapParams, BootstrapShape, Envoy, prometheus_value, render_bootstrap_shaped};
use canary_tests::stack::FILTER_TOKEN;
use canary_tests::{Binaries, http};
use clap::Args;
use hyper::Method;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::json;

use crate::loadgen::{
    self, ClosedLoop, ClosedLoopReport, DispatchStats, HeaderFn, LatencySummary, OpenLoop, OpenLoopReport, Target,
};
use crate::machine::{self, Artifact};
use crate::plots::{self, Bar, LineChart, Series, XScale};
use crate::procfs::{allowed_cpus, parse_cpu_list, parse_schedstat, pin};
use crate::quantiles::Spread;
use crate::report::{self, Bound, Verdict};
use crate::results::RunContext;

/// Canary share of every splitting variant, in percent.
pub const CANARY_PERCENT: u32 = 10;
/// The sticky key header of (d) sticky; every variant's requests carry it.
pub const STICKY_HEADER: &str = "x-user-id";
/// Distinct sticky keys the generator rotates through.
pub const STICKY_USERS: u64 = 10_000;
/// Where Envoy runs when pinned.
pub const ENVOY_CPU: usize = 0;
/// Where the generator, the backends and the analyzer run when pinned.
pub const LOAD_CPU: usize = 1;
/// Targets of the issue: (d) ≤ 1.05 × (c) and ≤ 1.30 × (a) in CPU per request.
pub const TARGET_D_OVER_C: f64 = 1.05;
pub const TARGET_D_OVER_A: f64 = 1.30;
/// A pinned Envoy below this utilisation at saturation was not the
/// bottleneck: the load core was.
pub const SATURATED_UTILISATION: f64 = 0.95;
/// The route header the filters set and the early header mutation strips
/// from clients (the filter's default).
const ROUTE_HEADER: &str = "x-canary-version";
/// Envoy's HTTP connection manager `stat_prefix` in the rendered bootstrap.
const STAT_PREFIX: &str = "ingress";
/// The generator keeps sending this long past the end of the measured
/// window, so the window's last reading is taken under load.
const GENERATOR_TAIL: Duration = Duration::from_millis(300);
/// Connections the open loop opens before its first request: enough for the
/// fixed rate's in-flight requests, and several per Envoy worker.
const OPEN_LOOP_CONNECTIONS: usize = 16;

/// A data-plane variant; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    A,
    B,
    C,
    /// (c) sticky on [`STICKY_HEADER`].
    CSticky,
    DRandom,
    DSticky,
    /// (d) random again, from the module `--candidate-wasm` names: another
    /// build of the filter, measured next to (d) in the same rounds.
    ERandom,
    /// (d) sticky from the candidate module.
    ESticky,
}

impl Variant {
    /// The variants the issue defines: the default set.
    pub const ALL: [Variant; 6] =
        [Variant::A, Variant::B, Variant::C, Variant::CSticky, Variant::DRandom, Variant::DSticky];
    /// Only with `--candidate-wasm`.
    pub const CANDIDATES: [Variant; 2] = [Variant::ERandom, Variant::ESticky];

    pub fn id(self) -> &'static str {
        match self {
            Variant::A => "a",
            Variant::B => "b",
            Variant::C => "c",
            Variant::CSticky => "c_sticky",
            Variant::DRandom => "d_random",
            Variant::DSticky => "d_sticky",
            Variant::ERandom => "e_random",
            Variant::ESticky => "e_sticky",
        }
    }

    /// The label of tables and verdicts: `(d) sticky`.
    pub fn label(self) -> &'static str {
        match self {
            Variant::A => "(a) native",
            Variant::B => "(b) no-op wasm",
            Variant::C => "(c) min splitter",
            Variant::CSticky => "(c) sticky min splitter",
            Variant::DRandom => "(d) random",
            Variant::DSticky => "(d) sticky",
            Variant::ERandom => "(e) candidate random",
            Variant::ESticky => "(e) candidate sticky",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Variant::A => "(a)",
            Variant::B => "(b)",
            Variant::C => "(c)",
            Variant::CSticky => "(c) sticky",
            Variant::DRandom => "(d) random",
            Variant::DSticky => "(d) sticky",
            Variant::ERandom => "(e) random",
            Variant::ESticky => "(e) sticky",
        }
    }

    fn shape(self) -> BootstrapShape {
        match self {
            Variant::A => BootstrapShape::WeightedClusters { canary_percent: CANARY_PERCENT },
            _ => BootstrapShape::HeaderRoute,
        }
    }

    /// The wasm module, or `None` for (a).
    pub fn wasm(self, modules: &WasmModules) -> Option<&Path> {
        match self {
            Variant::A => None,
            Variant::B => Some(&modules.noop),
            Variant::C | Variant::CSticky => Some(&modules.splitter),
            Variant::DRandom | Variant::DSticky => Some(&modules.filter),
            // Without a candidate module the variant cannot run; `check`
            // says so before anything starts.
            Variant::ERandom | Variant::ESticky => modules.candidate.as_deref(),
        }
    }

    /// The plugin configuration. (b) and (c) have none; (c) sticky's is the
    /// header its key is in. (d) runs with
    /// the production report interval (the filter's default) and starts at
    /// 10% before the analyzer's first answer, which also says 10%.
    pub fn filter_configuration(self) -> String {
        let mut config = json!({
            "analyzer_cluster": "canary_analyzer",
            "analyzer_authority": "canary-analyzer",
            "analyzer_token": FILTER_TOKEN,
            "initial_canary_weight_bp": CANARY_PERCENT * 100,
        });
        match self {
            Variant::A | Variant::B | Variant::C => return String::new(),
            Variant::CSticky => return STICKY_HEADER.to_owned(),
            Variant::DRandom | Variant::ERandom => {}
            Variant::DSticky | Variant::ESticky => config["sticky"] = json!({ "header": STICKY_HEADER }),
        }
        config.to_string()
    }

    /// The canary filter, (d) or its candidate (e): needs the analyzer to be
    /// reachable (it reports).
    fn reports(self) -> bool {
        matches!(self, Variant::DRandom | Variant::DSticky | Variant::ERandom | Variant::ESticky)
    }

    fn is_candidate(self) -> bool {
        Variant::CANDIDATES.contains(&self)
    }
}

impl std::str::FromStr for Variant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Variant::ALL.into_iter().chain(Variant::CANDIDATES).find(|variant| variant.id() == text).ok_or_else(|| {
            format!(
                "unknown variant {text:?}: expected one of a, b, c, c_sticky, d_random, d_sticky, \
                     or with --candidate-wasm e_random, e_sticky"
            )
        })
    }
}

/// The three wasm modules of (b), (c) and (d), and the candidate of (e).
#[derive(Debug, Clone, Serialize)]
pub struct WasmModules {
    pub noop: PathBuf,
    pub splitter: PathBuf,
    pub filter: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<PathBuf>,
}

impl WasmModules {
    /// The release builds in Cargo's target directory (the filter from
    /// `binaries`, which honours `CANARY_FILTER_WASM`).
    pub fn default_paths(binaries: &Binaries) -> Self {
        let wasm_dir = canary_tests::paths::target_dir().join("wasm32-wasip1/release");
        Self {
            noop: wasm_dir.join("bench_noop_filter.wasm"),
            splitter: wasm_dir.join("bench_min_splitter.wasm"),
            filter: binaries.filter_wasm.clone(),
            candidate: None,
        }
    }

    /// Fails, saying how to build them, when a module `variants` need is
    /// missing.
    pub fn check(&self, variants: &[Variant]) -> anyhow::Result<()> {
        if let Some(variant) = variants.iter().find(|variant| variant.is_candidate())
            && self.candidate.is_none()
        {
            bail!("variant {} runs the module --candidate-wasm names; none was given", variant.id());
        }
        let missing: Vec<String> = variants
            .iter()
            .filter_map(|variant| variant.wasm(self))
            .filter(|path| !path.is_file())
            .map(|path| format!("  {}", path.display()))
            .collect();
        if !missing.is_empty() {
            bail!(
                "missing wasm modules; build them with `cargo build --release --target wasm32-wasip1 -p canary-filter \
                 -p bench-noop-filter -p bench-min-splitter`:\n{}",
                missing.join("\n")
            );
        }
        Ok(())
    }
}

/// Command-line flags of `canary-bench overhead`. Flags left out take the
/// `--smoke` preset when it is given, else the defaults shown.
#[derive(Debug, Args)]
pub struct OverheadArgs {
    /// Interleaved rounds of every variant per concurrency [default: 5;
    /// smoke: 1].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Envoy worker counts [default: 1,2; smoke: 1].
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Option<Vec<usize>>,
    /// Variants, in round order [default: a,b,c,c_sticky,d_random,d_sticky; smoke:
    /// a,d_random,d_sticky].
    #[arg(long, value_delimiter = ',')]
    pub variants: Option<Vec<Variant>>,
    /// Warm-up before each measured window, seconds [default: 2; smoke: 0.5].
    #[arg(long)]
    pub warm_up_secs: Option<f64>,
    /// Measured window of each phase, seconds [default: 10; smoke: 1].
    #[arg(long)]
    pub measure_secs: Option<f64>,
    /// Calibration window per variant, seconds [default: 4].
    #[arg(long)]
    pub calibration_secs: Option<f64>,
    /// Keep-alive connections of the saturation phase [default: 64].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Fixed rate of the latency phase, req/s; skips the calibration
    /// [default: calibrated; smoke: 500].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Fixed rate as a share of the slowest variant's calibrated maximum
    /// [default: 0.5].
    #[arg(long)]
    pub rate_fraction: Option<f64>,
    /// Side-by-side rounds per concurrency: every variant's Envoy at once,
    /// each at the fixed rate divided by the number of variants, halved
    /// until a probe round keeps up; 0 skips them [default: 10; smoke: 1].
    #[arg(long)]
    pub side_by_side_rounds: Option<usize>,
    /// Do not pin at concurrency 1 (smoke never pins).
    #[arg(long)]
    pub no_pin: bool,
    /// No-op filter module (b) [default: target/wasm32-wasip1/release/bench_noop_filter.wasm].
    #[arg(long, env = "CANARY_BENCH_NOOP_WASM")]
    pub noop_wasm: Option<PathBuf>,
    /// Minimal splitter module (c) [default: target/wasm32-wasip1/release/bench_min_splitter.wasm].
    #[arg(long, env = "CANARY_BENCH_SPLITTER_WASM")]
    pub splitter_wasm: Option<PathBuf>,
    /// Another build of the filter, run as variants e_random and e_sticky
    /// with (d)'s configuration: to measure a filter change side by side
    /// with the current build before it lands.
    #[arg(long, env = "CANARY_BENCH_CANDIDATE_WASM")]
    pub candidate_wasm: Option<PathBuf>,
    /// Results directory [default: bench/results/<YYYY-MM-DD>-<hostname>;
    /// smoke: under the target directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seconds in all: (a) and (d) for 1 s each at concurrency 1, unpinned,
    /// plus `envoy --mode validate` of every variant (for CI).
    #[arg(long)]
    pub smoke: bool,
}

impl OverheadArgs {
    pub fn options(&self, binaries: &Binaries) -> OverheadOptions {
        let defaults = if self.smoke { OverheadOptions::smoke() } else { OverheadOptions::full() };
        let modules = WasmModules::default_paths(binaries);
        let millis = |secs: Option<f64>, default: u64| secs.map_or(default, |secs| (secs.max(0.0) * 1_000.0) as u64);
        OverheadOptions {
            rounds: self.rounds.unwrap_or(defaults.rounds),
            side_by_side_rounds: self.side_by_side_rounds.unwrap_or(defaults.side_by_side_rounds),
            concurrencies: self.concurrency.clone().unwrap_or(defaults.concurrencies),
            variants: self.variants.clone().unwrap_or(defaults.variants),
            warm_up_ms: millis(self.warm_up_secs, defaults.warm_up_ms),
            measure_ms: millis(self.measure_secs, defaults.measure_ms),
            calibration_ms: millis(self.calibration_secs, defaults.calibration_ms),
            closed_loop_connections: self.connections.unwrap_or(defaults.closed_loop_connections),
            rate_per_second: self.rate.or(defaults.rate_per_second),
            rate_fraction: self.rate_fraction.unwrap_or(defaults.rate_fraction),
            pin: !self.no_pin && defaults.pin,
            wasm: WasmModules {
                noop: self.noop_wasm.clone().unwrap_or(modules.noop),
                splitter: self.splitter_wasm.clone().unwrap_or(modules.splitter),
                filter: modules.filter,
                candidate: self.candidate_wasm.clone(),
            },
            smoke: self.smoke,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadOptions {
    pub rounds: usize,
    /// See [`OverheadArgs::side_by_side_rounds`].
    pub side_by_side_rounds: usize,
    pub concurrencies: Vec<usize>,
    pub variants: Vec<Variant>,
    pub warm_up_ms: u64,
    pub measure_ms: u64,
    pub calibration_ms: u64,
    pub closed_loop_connections: usize,
    /// Given fixed rate; `None`: calibrated.
    pub rate_per_second: Option<f64>,
    pub rate_fraction: f64,
    /// Pin at concurrency 1.
    pub pin: bool,
    pub wasm: WasmModules,
    pub smoke: bool,
}

impl OverheadOptions {
    /// The full run's presets (wasm paths are filled in by the caller).
    fn full() -> Self {
        Self {
            rounds: 5,
            side_by_side_rounds: 10,
            concurrencies: vec![1, 2],
            variants: Variant::ALL.to_vec(),
            warm_up_ms: 2_000,
            measure_ms: 10_000,
            calibration_ms: 4_000,
            closed_loop_connections: 64,
            rate_per_second: None,
            rate_fraction: 0.5,
            pin: true,
            wasm: WasmModules {
                noop: PathBuf::new(),
                splitter: PathBuf::new(),
                filter: PathBuf::new(),
                candidate: None,
            },
            smoke: false,
        }
    }

    fn smoke() -> Self {
        Self {
            rounds: 1,
            side_by_side_rounds: 1,
            concurrencies: vec![1],
            variants: vec![Variant::A, Variant::DRandom, Variant::DSticky],
            warm_up_ms: 500,
            measure_ms: 1_000,
            calibration_ms: 1_000,
            closed_loop_connections: 16,
            rate_per_second: Some(500.0),
            pin: false,
            smoke: true,
            ..Self::full()
        }
    }

    /// Rough wall time of a run, for the start message: per Envoy about
    /// 1.5 s to start plus two phases; plus the calibration.
    pub fn estimated_duration(&self) -> Duration {
        let phase_ms = self.warm_up_ms + self.measure_ms + GENERATOR_TAIL.as_millis() as u64;
        let envoys = (self.rounds * self.variants.len()) as u64;
        let calibration_ms = if self.rate_per_second.is_none() {
            self.variants.len() as u64 * (1_500 + self.warm_up_ms + self.calibration_ms)
        } else {
            0
        };
        let side_by_side_ms = self.side_by_side_rounds as u64 * (1_500 * self.variants.len() as u64 + phase_ms);
        let per_concurrency_ms = envoys * (1_500 + 2 * phase_ms) + calibration_ms + side_by_side_ms;
        Duration::from_millis(per_concurrency_ms * self.concurrencies.len() as u64)
    }
}

/// The settings a result was measured with, constants included.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    #[serde(flatten)]
    pub options: OverheadOptions,
    pub canary_percent: u32,
    pub sticky_header: &'static str,
    pub sticky_users: u64,
    pub open_loop_connections: usize,
    pub generator_tail_ms: u64,
    pub saturated_utilisation_threshold: f64,
    pub envoy_cpu_when_pinned: usize,
    pub load_cpu_when_pinned: usize,
    /// `release` or `debug`: a debug generator needs several times the CPU
    /// of a release one, on the load core.
    pub generator_build_profile: &'static str,
    /// Clock ticks per second of `/proc/PID/stat`.
    pub clock_ticks_per_second: u64,
    /// The plugin configuration of each variant.
    pub filter_configurations: BTreeMap<&'static str, String>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadResult {
    pub benchmark: &'static str,
    pub schema_version: u32,
    #[serde(flatten)]
    pub context: RunContext,
    pub settings: Settings,
    pub wasm_modules: BTreeMap<&'static str, Artifact>,
    /// `envoy --mode validate` of every variant's bootstrap.
    pub validation: Vec<Validation>,
    pub finished_at_unix_ms: u64,
    pub runs: Vec<ConcurrencyRun>,
    pub verdicts: Vec<Verdict>,
}

/// `envoy --mode validate` of one variant's bootstrap.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub variant: Variant,
    pub ok: bool,
    /// Envoy's output when it failed.
    pub output: Option<String>,
}

/// Every round at one Envoy concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct ConcurrencyRun {
    pub concurrency: usize,
    pub pinned: bool,
    /// Where each process ran, in words.
    pub pinning: String,
    pub load_average_before: Option<[f64; 3]>,
    pub load_average_after: Option<[f64; 3]>,
    /// One closed-loop window per variant; empty when `--rate` was given.
    pub calibration: Vec<CalibrationSample>,
    pub fixed_rate_per_second: f64,
    /// How the fixed rate was chosen.
    pub fixed_rate_source: String,
    pub summaries: Vec<VariantSummary>,
    pub ratios: Vec<RatioSummary>,
    pub samples: Vec<VariantRound>,
    /// Each variant's rate in the side-by-side rounds: the fixed rate
    /// divided by the number of variants, halved until a probe round kept
    /// up (see `side_by_side_probes`).
    pub side_by_side_rate_per_second: f64,
    /// The probe rounds that chose that rate, in order; the last one kept
    /// up unless every one of the [`SIDE_BY_SIDE_PROBES`] failed to.
    pub side_by_side_probes: Vec<KeepUp>,
    /// Sets of rounds run at a rate the probe passed but that more than
    /// one round in five then fell behind ([`KEEP_UP_ROUNDS_SHARE`]); the
    /// rounds were run again at half the rate.
    /// Each is summed up like a probe (its lowest share, its highest p99).
    pub side_by_side_abandoned: Vec<KeepUp>,
    pub side_by_side: Vec<SideBySideRound>,
    pub side_by_side_ratios: Vec<SideBySideRatio>,
}

/// At most this many probe rounds choose the side-by-side rate, halving it
/// each time: down to an eighth of the shared fixed rate.
const SIDE_BY_SIDE_PROBES: usize = 4;
/// When more than [`KEEP_UP_ROUNDS_SHARE`] of the rounds fall behind a
/// rate the probe passed (the probe was on the edge of saturation), the
/// rounds run again at half the rate, at most this many times.
const SIDE_BY_SIDE_RETRIES: usize = 1;
/// The share of rounds that must keep up for a set of rounds to stand. A
/// round or two may fall behind to a hiccup of the VM; half of them means
/// the rate itself is on the edge (5 of 10 at 2,838 req/s per Envoy in
/// `results/2026-11-27-vm-3/`).
const KEEP_UP_ROUNDS_SHARE: f64 = 0.8;
/// A side-by-side window (a probe or a round) keeps up when every Envoy
/// served at least this share of its intended rate in the window…
const KEEP_UP_RATE_SHARE: f64 = 0.97;
/// …and the open loop's p99, from the intended send time, stayed under
/// this. Below saturation these backends answer in 3–4 ms at p99; a
/// saturated core queues requests for hundreds of milliseconds. At 50 ms a
/// probe at 33 ms passed on the edge of saturation, and 7 of its 10 rounds
/// then fell behind (`results/2026-11-27-vm-3/`), hence 20.
const KEEP_UP_P99_US: u64 = 20_000;

/// Whether one side-by-side window, a probe or a round, kept up with its
/// rate: [`KEEP_UP_RATE_SHARE`] and [`KEEP_UP_P99_US`].
#[derive(Debug, Clone, Serialize)]
pub struct KeepUp {
    pub rate_per_second: f64,
    pub kept_up: bool,
    /// The lowest share of the intended rate an Envoy served.
    pub lowest_rate_share: f64,
    /// The highest open-loop p99 of an Envoy, µs.
    pub highest_p99_us: Option<u64>,
}

impl KeepUp {
    fn of(rate_per_second: f64, samples: &[SideBySideSample]) -> Self {
        let lowest_rate_share = samples
            .iter()
            .map(|sample| sample.fixed_rate.requests_per_second / rate_per_second)
            .fold(f64::INFINITY, f64::min);
        // At a few requests per window one request is more than 3%: a
        // window one request short of its rate still kept up.
        let one_short = samples.iter().all(|sample| {
            let expected = rate_per_second * sample.fixed_rate.window_ms / 1_000.0;
            sample.fixed_rate.requests as f64 >= expected - 1.0
        });
        let highest_p99_us = samples
            .iter()
            .map(|sample| sample.fixed_rate.generator.latency.as_ref().map(|latency| latency.p99_us))
            .try_fold(0, |highest, p99| p99.map(|p99| highest.max(p99)));
        let kept_up = !samples.is_empty()
            && (lowest_rate_share >= KEEP_UP_RATE_SHARE || one_short)
            && highest_p99_us.is_some_and(|p99| p99 <= KEEP_UP_P99_US);
        Self { rate_per_second, kept_up, lowest_rate_share, highest_p99_us }
    }

    /// "lowest served share 0.952, highest p99 671.7 ms", for the Markdown.
    fn describe(&self) -> String {
        let p99 = self.highest_p99_us.map_or_else(|| "none".to_owned(), |p99| format!("{:.1} ms", p99 as f64 / 1e3));
        format!("lowest served share {:.3}, highest p99 {p99}", self.lowest_rate_share)
    }

    /// A whole set of rounds at one rate: kept up if at least
    /// [`KEEP_UP_ROUNDS_SHARE`] of its rounds did.
    fn of_rounds(rate_per_second: f64, rounds: &[SideBySideRound]) -> Self {
        let kept_up = rounds.iter().filter(|round| round.keep_up.kept_up).count();
        Self {
            rate_per_second,
            kept_up: !rounds.is_empty() && kept_up as f64 >= KEEP_UP_ROUNDS_SHARE * rounds.len() as f64,
            lowest_rate_share: rounds.iter().map(|round| round.keep_up.lowest_rate_share).fold(f64::INFINITY, f64::min),
            highest_p99_us: rounds
                .iter()
                .try_fold(0, |highest, round| Some(highest.max(round.keep_up.highest_p99_us?))),
        }
    }
}

/// One side-by-side round: a fresh Envoy per variant, all running at once
/// (on the same CPU when pinned), each under its own open loop at the same
/// rate, measured over the same window. Whatever the machine does to one
/// (steal time, frequency, a neighbour's cache traffic) it does to all, so
/// a ratio within a round cancels it; between sequential rounds it does not.
#[derive(Debug, Clone, Serialize)]
pub struct SideBySideRound {
    /// 1-based.
    pub round: usize,
    /// A round that fell behind its rate measured saturation, not the fixed
    /// rate: the ratios leave it out unless no round kept up.
    pub keep_up: KeepUp,
    /// In the order of the variants; the start order rotates by round.
    pub samples: Vec<SideBySideSample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SideBySideSample {
    pub variant: Variant,
    pub fixed_rate: PhaseSample,
}

/// The side-by-side rounds the ratios and tables use: those that kept up,
/// or every round if none did (the verdicts then say "saturated").
fn counted_rounds(rounds: &[SideBySideRound]) -> impl Iterator<Item = &SideBySideRound> {
    let any_kept_up = rounds.iter().any(|round| round.keep_up.kept_up);
    rounds.iter().filter(move |round| round.keep_up.kept_up || !any_kept_up)
}

/// `numerator / denominator` of CPU per request within each side-by-side
/// round that kept up (within every round if none did).
#[derive(Debug, Clone, Serialize)]
pub struct SideBySideRatio {
    pub numerator: Variant,
    pub denominator: Variant,
    pub spread: Option<Spread>,
    pub by_round: Vec<f64>,
    /// The rounds `by_round` comes from, 1-based.
    pub rounds: Vec<usize>,
}

impl SideBySideRatio {
    fn of(numerator: Variant, denominator: Variant, rounds: &[SideBySideRound]) -> Self {
        let cpu = |round: &SideBySideRound, variant: Variant| {
            round
                .samples
                .iter()
                .find(|sample| sample.variant == variant)
                .map(|sample| sample.fixed_rate.cpu_per_request_us)
        };
        let (rounds, by_round): (Vec<usize>, Vec<f64>) = counted_rounds(rounds)
            .filter_map(|round| Some((round.round, cpu(round, numerator)? / cpu(round, denominator)?)))
            .filter(|(_, ratio)| ratio.is_finite())
            .unzip();
        Self { numerator, denominator, spread: Spread::of(&by_round), by_round, rounds }
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.numerator.short(), self.denominator.short())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CalibrationSample {
    pub variant: Variant,
    pub saturation: PhaseSample,
}

/// One variant in one round: one Envoy, two phases.
#[derive(Debug, Clone, Serialize)]
pub struct VariantRound {
    pub variant: Variant,
    /// 1-based.
    pub round: usize,
    pub saturation: PhaseSample,
    pub fixed_rate: PhaseSample,
    /// (d) only: the filter's `canary_split_sync_failures` at the end of the
    /// round (a failed sync backs off: not the steady state).
    pub envoy_sync_failures: Option<f64>,
}

/// One measured window.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSample {
    pub window_ms: f64,
    /// Δ `http.ingress.downstream_rq_total`.
    pub requests: u64,
    pub requests_per_second: f64,
    /// Δ schedstat run time over all Envoy threads.
    pub envoy_cpu_ns: u64,
    pub cpu_per_request_us: f64,
    /// Cross-check: Δ (utime + stime) in clock ticks, per request.
    pub ticks_cpu_per_request_us: f64,
    /// Envoy CPU time / wall time.
    pub envoy_cores_used: f64,
    /// `envoy_cores_used / concurrency`.
    pub envoy_utilisation: f64,
    /// Pinned saturation phases only: below the threshold, the load core
    /// was the bottleneck.
    pub load_core_bound: Option<bool>,
    /// Share of each CPU's time spent busy (not idle or waiting for I/O)
    /// over the window, by CPU, whoever ran: shows a saturated load CPU.
    pub cpu_busy_share: BTreeMap<usize, f64>,
    /// Pinned only: Envoy's CPU busy with something other than Envoy (other
    /// processes, interrupts) as a share of its time. Anything above a few
    /// percent means Envoy shared its core, and its cost per request is
    /// less trustworthy (caches, wake-ups).
    pub other_busy_on_envoy_cpu: Option<f64>,
    pub generator: GeneratorSample,
}

/// The load generator's view of a phase.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratorSample {
    /// `closed_loop` or `open_loop`.
    pub mode: &'static str,
    pub connections: Option<usize>,
    pub rate_per_second: Option<f64>,
    pub sent: u64,
    pub answered: u64,
    pub transport_errors: u64,
    pub first_error: Option<String>,
    pub status: BTreeMap<u16, u64>,
    pub served_by: BTreeMap<String, u64>,
    /// Canary answers / answers naming a backend.
    pub canary_share: Option<f64>,
    /// Answers of requests in the generator's measured window.
    pub measured_answered: u64,
    /// Open loop: from the intended send time; closed loop: the service
    /// time.
    pub latency: Option<LatencySummary>,
    pub service: Option<LatencySummary>,
    pub dispatch: Option<DispatchStats>,
}

/// One variant over every round of a concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct VariantSummary {
    pub variant: Variant,
    pub rounds: usize,
    pub saturated_cpu_per_request_us: Option<Spread>,
    pub fixed_rate_cpu_per_request_us: Option<Spread>,
    pub max_requests_per_second: Option<Spread>,
    pub saturated_envoy_utilisation: Option<Spread>,
    /// Rounds whose saturation phase was flagged load-core-bound.
    pub load_core_bound_rounds: usize,
    /// Pinned only: see [`PhaseSample::other_busy_on_envoy_cpu`].
    pub saturated_other_busy_on_envoy_cpu: Option<Spread>,
    /// Pinned only: how busy the load CPU was at saturation.
    pub saturated_load_cpu_busy: Option<Spread>,
    /// Over every round's fixed-rate window together.
    pub fixed_rate_latency: Option<LatencySummary>,
    pub canary_share: Option<Spread>,
}

/// `numerator / denominator` of CPU per request, per round pair.
#[derive(Debug, Clone, Serialize)]
pub struct RatioSummary {
    pub numerator: Variant,
    pub denominator: Variant,
    pub saturated: Option<Spread>,
    pub fixed_rate: Option<Spread>,
    pub saturated_by_round: Vec<f64>,
    pub fixed_rate_by_round: Vec<f64>,
}

impl RatioSummary {
    pub fn label(&self) -> String {
        format!("{}/{}", self.numerator.short(), self.denominator.short())
    }
}

/// The ratios the results report, in this order, when both sides ran.
const RATIOS: [(Variant, Variant); 13] = [
    (Variant::DRandom, Variant::C),
    (Variant::DSticky, Variant::C),
    (Variant::DSticky, Variant::CSticky),
    (Variant::DRandom, Variant::A),
    (Variant::DSticky, Variant::A),
    (Variant::B, Variant::A),
    (Variant::C, Variant::A),
    (Variant::CSticky, Variant::C),
    (Variant::ERandom, Variant::DRandom),
    (Variant::ESticky, Variant::DSticky),
    (Variant::ERandom, Variant::C),
    (Variant::ESticky, Variant::C),
    (Variant::ESticky, Variant::CSticky),
];

/// The [`RATIOS`] whose both sides ran.
fn ratio_pairs(variants: &[Variant]) -> impl Iterator<Item = (Variant, Variant)> {
    RATIOS.into_iter().filter(|(numerator, denominator)| variants.contains(numerator) && variants.contains(denominator))
}

/// Runs the benchmark; see the module docs.
pub async fn run(
    options: &OverheadOptions,
    binaries: &Binaries,
    context: RunContext,
) -> anyhow::Result<OverheadResult> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(!options.variants.is_empty(), "--variants needs at least one variant");
    ensure!(!options.concurrencies.is_empty(), "--concurrency needs at least one value");
    ensure!(options.concurrencies.iter().all(|&concurrency| concurrency > 0), "--concurrency must be positive");
    ensure!(options.measure_ms > 0, "--measure-secs must be positive");
    ensure!(options.closed_loop_connections > 0, "--connections must be positive");
    ensure!(options.rate_per_second.is_none_or(|rate| rate > 0.0), "--rate must be positive");
    ensure!(options.rate_fraction > 0.0 && options.rate_fraction <= 1.0, "--rate-fraction must be in (0, 1]");
    // Smoke validates every variant, so it needs every module.
    let needed = if options.smoke { Variant::ALL.to_vec() } else { options.variants.clone() };
    options.wasm.check(&needed)?;

    let dir = tempfile::Builder::new().prefix("canary-bench-overhead-").tempdir()?;
    let outcome = run_in(options, binaries, dir.path()).await;
    let (validation, runs) = match outcome {
        Ok(parts) => parts,
        Err(error) => {
            let kept = dir.keep();
            return Err(error.context(format!("overhead failed; Envoy and backend logs kept in {}", kept.display())));
        }
    };
    let verdicts = verdicts(&runs);
    Ok(OverheadResult {
        benchmark: "overhead",
        // 2: side-by-side rounds.
        schema_version: 3,
        context,
        settings: Settings {
            options: options.clone(),
            canary_percent: CANARY_PERCENT,
            sticky_header: STICKY_HEADER,
            sticky_users: STICKY_USERS,
            open_loop_connections: OPEN_LOOP_CONNECTIONS,
            generator_tail_ms: GENERATOR_TAIL.as_millis() as u64,
            saturated_utilisation_threshold: SATURATED_UTILISATION,
            envoy_cpu_when_pinned: ENVOY_CPU,
            load_cpu_when_pinned: LOAD_CPU,
            generator_build_profile: generator_build_profile(),
            clock_ticks_per_second: clock_ticks_per_second(),
            filter_configurations: Variant::ALL
                .into_iter()
                .map(|variant| (variant.id(), variant.filter_configuration()))
                .collect(),
        },
        wasm_modules: wasm_artifacts(&options.wasm),
        validation,
        finished_at_unix_ms: crate::results::unix_now_ms(),
        runs,
        verdicts,
    })
}

/// `release` or `debug`: how this binary, and so the load generator, was
/// built.
pub fn generator_build_profile() -> &'static str {
    if cfg!(debug_assertions) { "debug" } else { "release" }
}

/// The modules of (b), (c), (d) as artifacts (path, size, time).
pub fn wasm_artifacts(modules: &WasmModules) -> BTreeMap<&'static str, Artifact> {
    let mut artifacts = BTreeMap::from([
        ("b_noop", Artifact::at(&modules.noop)),
        ("c_splitter", Artifact::at(&modules.splitter)),
        ("d_canary_filter", Artifact::at(&modules.filter)),
    ]);
    if let Some(candidate) = &modules.candidate {
        artifacts.insert("e_candidate_filter", Artifact::at(candidate));
    }
    artifacts
}

async fn run_in(
    options: &OverheadOptions,
    binaries: &Binaries,
    dir: &Path,
) -> anyhow::Result<(Vec<Validation>, Vec<ConcurrencyRun>)> {
    let validation = validate_variants(binaries, &options.wasm, dir)?;
    let failed: Vec<&Validation> = validation.iter().filter(|validation| !validation.ok).collect();
    if let Some(first) = failed.first() {
        bail!(
            "envoy --mode validate rejected {} bootstrap(s); first, {}:\n{}",
            failed.len(),
            first.variant.label(),
            first.output.as_deref().unwrap_or("")
        );
    }
    let own_pid = std::process::id();
    // Only asked when pinning, so that an unpinned run (the smoke) needs
    // neither /proc/self/status's CPU list nor taskset.
    let own_cpus = if options.pin { allowed_cpus(own_pid) } else { None };
    let can_pin = own_cpus
        .as_deref()
        .and_then(parse_cpu_list)
        .is_some_and(|cpus| cpus.contains(&ENVOY_CPU) && cpus.contains(&LOAD_CPU));
    if options.pin && !can_pin {
        eprintln!(
            "overhead: CPUs {ENVOY_CPU} and {LOAD_CPU} are not both available ({}): not pinning",
            own_cpus.as_deref().unwrap_or("unknown")
        );
    }
    let mut runs = Vec::new();
    for &concurrency in &options.concurrencies {
        let pinned = can_pin && concurrency == 1;
        if pinned {
            // Children inherit the affinity, so the backends and the
            // analyzer started next land on the load CPU too.
            pin(own_pid, &LOAD_CPU.to_string()).context("pinning the benchmark (use --no-pin to run without)")?;
        }
        let run =
            run_concurrency(options, binaries, &dir.join(format!("concurrency-{concurrency}")), concurrency, pinned)
                .await
                .with_context(|| format!("overhead at concurrency {concurrency}"));
        if pinned && let Some(own_cpus) = &own_cpus {
            // Back to where it started, whatever happened.
            pin(own_pid, own_cpus).context("unpinning the benchmark")?;
        }
        runs.push(run?);
    }
    Ok((validation, runs))
}

/// Validates each variant's bootstrap with placeholder addresses.
fn validate_variants(binaries: &Binaries, modules: &WasmModules, dir: &Path) -> anyhow::Result<Vec<Validation>> {
    let placeholder = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut validation = Vec::new();
    for variant in Variant::ALL.into_iter().chain(Variant::CANDIDATES) {
        if variant.is_candidate() && modules.candidate.is_none() {
            continue;
        }
        if variant.wasm(modules).is_some_and(|path| !path.is_file()) {
            // Not needed by this run (checked before) and not built.
            continue;
        }
        let wasm = variant.wasm(modules).map(Path::to_path_buf).unwrap_or_default();
        let bootstrap = render_bootstrap_shaped(
            &BootstrapParams {
                node_id: format!("bench-validate-{}", variant.id()),
                listener_port: 0,
                admin_port: 0,
                stable: placeholder(8081),
                canary: placeholder(8082),
                analyzer: placeholder(9190),
                filter_configuration: variant.filter_configuration(),
                filter_wasm: wasm,
                route_header: ROUTE_HEADER.to_owned(),
            },
            variant.shape(),
        );
        let path = dir.join(format!("validate-{}.yaml", variant.id()));
        std::fs::write(&path, bootstrap).with_context(|| format!("writing {}", path.display()))?;
        let output = envoy::validate(&binaries.envoy, &path, dir)?;
        let ok = output.status.success();
        validation.push(Validation {
            variant,
            ok,
            output: (!ok).then(|| {
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
            }),
        });
    }
    Ok(validation)
}

async fn run_concurrency(
    options: &OverheadOptions,
    binaries: &Binaries,
    dir: &Path,
    concurrency: usize,
    pinned: bool,
) -> anyhow::Result<ConcurrencyRun> {
    let rig = Rig::start(binaries, dir, options.variants.iter().any(|variant| variant.reports())).await?;
    let load_average_before = machine::load_average();
    let warm_up = Duration::from_millis(options.warm_up_ms);
    let measure = Duration::from_millis(options.measure_ms);
    let phases = Phases { concurrency, pinned, warm_up, measure, connections: options.closed_loop_connections };

    let mut calibration = Vec::new();
    let (fixed_rate_per_second, fixed_rate_source) = match options.rate_per_second {
        Some(rate) => (rate, "given (--rate)".to_owned()),
        None => {
            let calibrate = Phases { measure: Duration::from_millis(options.calibration_ms), ..phases };
            for (position, &variant) in options.variants.iter().enumerate() {
                report::progress(
                    "overhead",
                    &format!(
                        "conc {concurrency} calibration {}/{} variant {}",
                        position + 1,
                        options.variants.len(),
                        variant.id()
                    ),
                );
                let envoy = rig.start_envoy(variant, &options.wasm, concurrency, pinned, "calibration").await?;
                let saturation = calibrate.saturation(&envoy, variant).await?;
                calibration.push(CalibrationSample { variant, saturation });
            }
            let Some(slowest) = calibration.iter().min_by(|one, other| {
                one.saturation.requests_per_second.total_cmp(&other.saturation.requests_per_second)
            }) else {
                bail!("no variant to calibrate the fixed rate with");
            };
            let rate = (slowest.saturation.requests_per_second * options.rate_fraction).max(1.0).round();
            let source = format!(
                "{:.0}% of the slowest variant's calibrated maximum ({}: {:.0} req/s)",
                options.rate_fraction * 100.0,
                slowest.variant.label(),
                slowest.saturation.requests_per_second
            );
            (rate, source)
        }
    };

    let mut samples = Vec::new();
    let mut latencies: BTreeMap<Variant, LatencyHistogram> = BTreeMap::new();
    for round in 1..=options.rounds {
        for &variant in &options.variants {
            let progress = |what: &str| {
                report::progress(
                    "overhead",
                    &format!("conc {concurrency} round {round}/{} variant {}: {what}", options.rounds, variant.id()),
                );
            };
            progress("starting Envoy");
            let envoy = rig.start_envoy(variant, &options.wasm, concurrency, pinned, &format!("round-{round}")).await?;
            progress("saturating");
            let saturation = phases.saturation(&envoy, variant).await?;
            progress(&format!(
                "{:.1}k req/s, {:.1} µs/req; {fixed_rate_per_second:.0} req/s open loop",
                saturation.requests_per_second / 1_000.0,
                saturation.cpu_per_request_us
            ));
            let (fixed_rate, latency) = phases.fixed_rate(&envoy, variant, fixed_rate_per_second).await?;
            latencies.entry(variant).or_default().merge(&latency);
            let envoy_sync_failures = if variant.reports() {
                envoy
                    .envoy
                    .prometheus()
                    .await
                    .ok()
                    .and_then(|text| prometheus_value(&text, "canary_split_sync_failures"))
            } else {
                None
            };
            samples.push(VariantRound { variant, round, saturation, fixed_rate, envoy_sync_failures });
        }
    }
    // Every Envoy on one core costs more per request than one alone
    // (shared caches, more wake-ups), so the fixed rate shared among the
    // variants can saturate that core, and a saturated round measures
    // batching, not the cost at a fixed rate: probe, and halve the rate
    // until all of them keep up.
    let mut side_by_side_rate_per_second = fixed_rate_per_second / options.variants.len().max(1) as f64;
    let mut side_by_side_probes = Vec::new();
    let start_all = async |label: &str, round: usize| -> anyhow::Result<Vec<(Variant, VariantEnvoy)>> {
        // Rotating the start order keeps any advantage of starting (or
        // being read) first from always going to the same variant.
        let mut order = options.variants.clone();
        let shift = round.saturating_sub(1) % order.len().max(1);
        order.rotate_left(shift);
        let mut envoys = Vec::new();
        for variant in order {
            let name = format!("{label}-{round}");
            envoys.push((variant, rig.start_envoy(variant, &options.wasm, concurrency, pinned, &name).await?));
        }
        Ok(envoys)
    };
    if options.side_by_side_rounds > 0 {
        for probe in 1..=SIDE_BY_SIDE_PROBES {
            report::progress(
                "overhead",
                &format!(
                    "conc {concurrency} side by side, probe {probe}: {} Envoys at {side_by_side_rate_per_second:.0} \
                     req/s each",
                    options.variants.len()
                ),
            );
            let envoys = start_all("side-by-side-probe", probe).await?;
            let samples = phases.side_by_side(&envoys, side_by_side_rate_per_second).await?;
            let outcome = KeepUp::of(side_by_side_rate_per_second, &samples);
            let kept_up = outcome.kept_up;
            side_by_side_probes.push(outcome);
            if kept_up || probe == SIDE_BY_SIDE_PROBES {
                break;
            }
            side_by_side_rate_per_second /= 2.0;
        }
    }
    let mut side_by_side = Vec::new();
    let mut side_by_side_abandoned = Vec::new();
    for attempt in 0..=SIDE_BY_SIDE_RETRIES {
        side_by_side.clear();
        for round in 1..=options.side_by_side_rounds {
            report::progress(
                "overhead",
                &format!(
                    "conc {concurrency} side by side {round}/{}: {} Envoys at {side_by_side_rate_per_second:.0} req/s \
                     each",
                    options.side_by_side_rounds,
                    options.variants.len()
                ),
            );
            let envoys = start_all("side-by-side", round).await?;
            let mut round_samples = phases.side_by_side(&envoys, side_by_side_rate_per_second).await?;
            round_samples.sort_by_key(|sample| options.variants.iter().position(|&variant| variant == sample.variant));
            let keep_up = KeepUp::of(side_by_side_rate_per_second, &round_samples);
            side_by_side.push(SideBySideRound { round, keep_up, samples: round_samples });
        }
        let set = KeepUp::of_rounds(side_by_side_rate_per_second, &side_by_side);
        if attempt == SIDE_BY_SIDE_RETRIES || set.kept_up {
            break;
        }
        side_by_side_abandoned.push(set);
        side_by_side_rate_per_second /= 2.0;
    }
    report::progress_done();
    let load_average_after = machine::load_average();
    drop(rig);

    let summaries = options
        .variants
        .iter()
        .map(|&variant| VariantSummary::of(variant, &samples, latencies.get(&variant)))
        .collect();
    let ratios = ratio_pairs(&options.variants)
        .map(|(numerator, denominator)| RatioSummary::of(numerator, denominator, &samples))
        .collect();
    let side_by_side_ratios = ratio_pairs(&options.variants)
        .map(|(numerator, denominator)| SideBySideRatio::of(numerator, denominator, &side_by_side))
        .filter(|ratio| !ratio.by_round.is_empty())
        .collect();
    Ok(ConcurrencyRun {
        concurrency,
        pinned,
        pinning: if pinned {
            format!("Envoy on CPU {ENVOY_CPU}; load generator, backends and analyzer on CPU {LOAD_CPU} (taskset)")
        } else {
            "none: Envoy, the load generator, the backends and the analyzer share every CPU".to_owned()
        },
        load_average_before,
        load_average_after,
        calibration,
        fixed_rate_per_second,
        fixed_rate_source,
        summaries,
        ratios,
        samples,
        side_by_side_rate_per_second,
        side_by_side_probes,
        side_by_side_abandoned,
        side_by_side,
        side_by_side_ratios,
    })
}

impl ConcurrencyRun {
    /// The last probe kept up, so the side-by-side rounds ran below
    /// saturation.
    pub fn side_by_side_kept_up(&self) -> bool {
        self.side_by_side_probes.last().is_some_and(|probe| probe.kept_up)
    }

    /// How many side-by-side rounds kept up with their rate.
    pub fn side_by_side_rounds_kept_up(&self) -> usize {
        self.side_by_side.iter().filter(|round| round.keep_up.kept_up).count()
    }
}

impl VariantSummary {
    fn of(variant: Variant, samples: &[VariantRound], latency: Option<&LatencyHistogram>) -> Self {
        let rounds: Vec<&VariantRound> = samples.iter().filter(|sample| sample.variant == variant).collect();
        let spread = |value: &dyn Fn(&VariantRound) -> Option<f64>| {
            Spread::of(&rounds.iter().filter_map(|round| value(round)).collect::<Vec<_>>())
        };
        Self {
            variant,
            rounds: rounds.len(),
            saturated_cpu_per_request_us: spread(&|round| Some(round.saturation.cpu_per_request_us)),
            fixed_rate_cpu_per_request_us: spread(&|round| Some(round.fixed_rate.cpu_per_request_us)),
            max_requests_per_second: spread(&|round| Some(round.saturation.requests_per_second)),
            saturated_envoy_utilisation: spread(&|round| Some(round.saturation.envoy_utilisation)),
            load_core_bound_rounds: rounds
                .iter()
                .filter(|round| round.saturation.load_core_bound == Some(true))
                .count(),
            saturated_other_busy_on_envoy_cpu: spread(&|round| round.saturation.other_busy_on_envoy_cpu),
            saturated_load_cpu_busy: spread(&|round| {
                round.saturation.other_busy_on_envoy_cpu?;
                round.saturation.cpu_busy_share.get(&LOAD_CPU).copied()
            }),
            fixed_rate_latency: latency.and_then(LatencySummary::of),
            canary_share: spread(&|round| round.saturation.generator.canary_share),
        }
    }
}

impl RatioSummary {
    fn of(numerator: Variant, denominator: Variant, samples: &[VariantRound]) -> Self {
        let by_round = |phase: fn(&VariantRound) -> &PhaseSample| -> Vec<f64> {
            let of = |variant: Variant| -> BTreeMap<usize, f64> {
                samples
                    .iter()
                    .filter(|sample| sample.variant == variant)
                    .map(|sample| (sample.round, phase(sample).cpu_per_request_us))
                    .collect()
            };
            let (numerators, denominators) = (of(numerator), of(denominator));
            numerators
                .iter()
                .filter_map(|(round, top)| denominators.get(round).map(|bottom| top / bottom))
                .filter(|ratio| ratio.is_finite())
                .collect()
        };
        let saturated_by_round = by_round(|sample| &sample.saturation);
        let fixed_rate_by_round = by_round(|sample| &sample.fixed_rate);
        Self {
            numerator,
            denominator,
            saturated: Spread::of(&saturated_by_round),
            fixed_rate: Spread::of(&fixed_rate_by_round),
            saturated_by_round,
            fixed_rate_by_round,
        }
    }
}

/// One verdict per target, d-mode and concurrency, on CPU per request at
/// saturation and at the fixed rate (median over round pairs, with min and
/// max). Both are kept: at saturation each variant runs at its own
/// throughput, so the kernel batches its socket work differently; at the
/// fixed rate every variant sees the same request pacing, so only the
/// filter differs.
pub fn verdicts(runs: &[ConcurrencyRun]) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for run in runs {
        for ratio in &run.ratios {
            let Some(limit) = target_of(ratio.numerator, ratio.denominator) else { continue };
            for (phase, spread) in [("saturated", ratio.saturated), ("fixed rate", ratio.fixed_rate)] {
                let Some(spread) = spread else { continue };
                let quantity = format!("{} CPU per request, {phase}, concurrency {}", ratio.label(), run.concurrency);
                verdicts.push(
                    Verdict::new("overhead", &quantity, spread.median, Bound::AtMost, limit, "×")
                        .with_range(spread.min, spread.max),
                );
            }
        }
        for ratio in &run.side_by_side_ratios {
            let Some(limit) = target_of(ratio.numerator, ratio.denominator) else { continue };
            let Some(spread) = ratio.spread else { continue };
            // Said in the verdict itself: a saturated round is no longer
            // the fixed-rate measurement the line claims.
            let kept_up = run.side_by_side_rounds_kept_up();
            let rate = if !run.side_by_side_kept_up() {
                "saturated (no probe rate kept up)".to_owned()
            } else if kept_up == 0 {
                format!("at {:.0} req/s each but saturated (no round kept up)", run.side_by_side_rate_per_second)
            } else {
                format!("at {:.0} req/s each", run.side_by_side_rate_per_second)
            };
            let rounds = if kept_up == 0 || kept_up == run.side_by_side.len() {
                format!("{} rounds", ratio.by_round.len())
            } else {
                format!("{} of {} rounds: the others fell behind", ratio.by_round.len(), run.side_by_side.len())
            };
            let quantity = format!(
                "{} CPU per request, side by side {rate}, concurrency {} ({rounds})",
                ratio.label(),
                run.concurrency,
            );
            verdicts.push(
                Verdict::new("overhead", &quantity, spread.median, Bound::AtMost, limit, "×")
                    .with_range(spread.min, spread.max),
            );
        }
    }
    verdicts
}

/// The issue's limit on `numerator / denominator`, if it sets one.
fn target_of(numerator: Variant, denominator: Variant) -> Option<f64> {
    // The canary filter: (d), and its candidate (e), judged as (d) would be.
    if !numerator.reports() {
        return None;
    }
    match denominator {
        Variant::C | Variant::CSticky => Some(TARGET_D_OVER_C),
        Variant::A => Some(TARGET_D_OVER_A),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The processes.

/// The two backends and the analyzer, shared by every Envoy of one
/// concurrency.
pub(crate) struct Rig {
    binaries: Binaries,
    dir: PathBuf,
    stable: Backend,
    canary: Backend,
    analyzer: Option<Analyzer>,
}

/// A running Envoy of one variant, with its process id.
pub(crate) struct VariantEnvoy {
    pub(crate) envoy: Envoy,
    pub(crate) pid: u32,
    concurrency: usize,
    pinned: bool,
}

impl Rig {
    /// Starts the backends and, when a variant reports, the analyzer with
    /// the canary weight at 10%.
    pub(crate) async fn start(binaries: &Binaries, dir: &Path, with_analyzer: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let deadline = deadline();
        let options = BackendOpts::default();
        let (stable, canary) = tokio::try_join!(
            Backend::start(&binaries.backend, Version::Stable, &options, dir, deadline),
            Backend::start(&binaries.backend, Version::Canary, &options, dir, deadline),
        )?;
        let analyzer = if with_analyzer {
            let analyzer = Analyzer::start(
                &binaries.analyzer,
                dir,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                FILTER_TOKEN,
                "",
                deadline,
            )
            .await?;
            // No `?wait=true`: no filter VM is up yet. The weight is
            // persisted, so every Envoy started later gets it.
            http::send_json(
                analyzer.address(),
                Method::PUT,
                "/v1/rollout/weight",
                &json!({ "canary_percent": f64::from(CANARY_PERCENT) }),
            )
            .await?
            .success_json()
            .context("setting the analyzer's canary weight")?;
            Some(analyzer)
        } else {
            None
        };
        Ok(Self { binaries: binaries.clone(), dir: dir.to_path_buf(), stable, canary, analyzer })
    }

    /// Starts a fresh Envoy for `variant` in its own directory, pinned to
    /// [`ENVOY_CPU`] when `pinned`.
    pub(crate) async fn start_envoy(
        &self,
        variant: Variant,
        modules: &WasmModules,
        concurrency: usize,
        pinned: bool,
        name: &str,
    ) -> anyhow::Result<VariantEnvoy> {
        let envoy_dir = self.dir.join(format!("envoy-{name}-{}", variant.id()));
        std::fs::create_dir_all(&envoy_dir)?;
        // A variant that does not report still gets a reachable address for
        // the (unused) analyzer cluster.
        let analyzer = self.analyzer.as_ref().map_or(self.stable.address(), Analyzer::address);
        let bootstrap = render_bootstrap_shaped(
            &BootstrapParams {
                node_id: format!("bench-{name}-{}", variant.id()),
                listener_port: 0,
                admin_port: 0,
                stable: self.stable.address(),
                canary: self.canary.address(),
                analyzer,
                filter_configuration: variant.filter_configuration(),
                filter_wasm: variant.wasm(modules).map(Path::to_path_buf).unwrap_or_default(),
                route_header: ROUTE_HEADER.to_owned(),
            },
            variant.shape(),
        );
        let bootstrap_path = envoy_dir.join("envoy.yaml");
        std::fs::write(&bootstrap_path, bootstrap)?;
        let envoy = Envoy::start(&self.binaries.envoy, &bootstrap_path, concurrency, &envoy_dir, deadline()).await?;
        let pid = envoy.process().pid().context("envoy has no process id")?;
        if pinned {
            pin(pid, &ENVOY_CPU.to_string()).context("pinning Envoy")?;
        }
        Ok(VariantEnvoy { envoy, pid, concurrency, pinned })
    }
}

fn deadline() -> Instant {
    Instant::now() + canary_tests::patience().max(Duration::from_secs(20))
}

// ---------------------------------------------------------------------------
// The phases.

#[derive(Debug, Clone, Copy)]
struct Phases {
    concurrency: usize,
    pinned: bool,
    warm_up: Duration,
    measure: Duration,
    connections: usize,
}

impl Phases {
    async fn saturation(&self, envoy: &VariantEnvoy, variant: Variant) -> anyhow::Result<PhaseSample> {
        let load = ClosedLoop {
            target: Target::new(envoy.envoy.listener()),
            connections: self.connections,
            duration: self.warm_up + self.measure + GENERATOR_TAIL,
            warm_up: self.warm_up,
            headers: Some(user_ids()),
        };
        let (window, report) = self
            .measure_around(envoy, loadgen::run_on_own_thread("loadgen-closed", move || loadgen::closed_loop(load)))
            .await?;
        let report: ClosedLoopReport = report?;
        let generator = GeneratorSample::closed(&report);
        let sample = window.sample(envoy, generator, true);
        check_phase(&sample, variant, "saturation")?;
        Ok(sample)
    }

    async fn fixed_rate(
        &self,
        envoy: &VariantEnvoy,
        variant: Variant,
        rate_per_second: f64,
    ) -> anyhow::Result<(PhaseSample, LatencyHistogram)> {
        let mut load = OpenLoop::new(
            Target::new(envoy.envoy.listener()),
            rate_per_second,
            self.warm_up + self.measure + GENERATOR_TAIL,
        );
        load.warm_up = self.warm_up;
        load.initial_connections = OPEN_LOOP_CONNECTIONS;
        load.headers = Some(user_ids());
        let (window, report) = self
            .measure_around(envoy, loadgen::run_on_own_thread("loadgen-open", move || loadgen::open_loop(load)))
            .await?;
        let report: OpenLoopReport = report?;
        let latency = report.outcomes.latency.clone();
        let generator = GeneratorSample::open(&report);
        let sample = window.sample(envoy, generator, false);
        check_phase(&sample, variant, "fixed rate")?;
        Ok((sample, latency))
    }

    /// Every Envoy of a side-by-side round under its own open loop at
    /// `rate_per_second`, all measured over one window.
    async fn side_by_side(
        &self,
        envoys: &[(Variant, VariantEnvoy)],
        rate_per_second: f64,
    ) -> anyhow::Result<Vec<SideBySideSample>> {
        let started = Instant::now();
        let generators: Vec<_> = envoys
            .iter()
            .map(|(variant, envoy)| {
                let mut load = OpenLoop::new(
                    Target::new(envoy.envoy.listener()),
                    rate_per_second,
                    self.warm_up + self.measure + GENERATOR_TAIL,
                );
                load.warm_up = self.warm_up;
                load.initial_connections = OPEN_LOOP_CONNECTIONS;
                load.headers = Some(user_ids());
                let name = format!("loadgen-{}", variant.id());
                tokio::spawn(async move { loadgen::run_on_own_thread(&name, move || loadgen::open_loop(load)).await })
            })
            .collect();
        tokio::time::sleep_until((started + self.warm_up).into()).await;
        let mut starts = Vec::new();
        for (_, envoy) in envoys {
            starts.push(Reading::take(envoy, ReadOrder::CounterFirst).await);
        }
        tokio::time::sleep_until((started + self.warm_up + self.measure).into()).await;
        let mut ends = Vec::new();
        for (_, envoy) in envoys {
            ends.push(Reading::take(envoy, ReadOrder::CpuFirst).await);
        }
        let mut samples = Vec::new();
        for (((variant, envoy), generator), (start, end)) in
            envoys.iter().zip(generators).zip(starts.into_iter().zip(ends))
        {
            let report: OpenLoopReport = generator.await.context("load generator task")???;
            let window = Window { start: start?, end: end?, concurrency: self.concurrency, pinned: self.pinned };
            let sample = window.sample(envoy, GeneratorSample::open(&report), false);
            check_phase(&sample, *variant, "side by side")?;
            samples.push(SideBySideSample { variant: *variant, fixed_rate: sample });
        }
        Ok(samples)
    }

    /// Runs `generator` and reads Envoy's counters and CPU around the
    /// measured window: from `warm_up` after the start to `warm_up +
    /// measure`, while the generator is still sending.
    async fn measure_around<T: Send + 'static>(
        &self,
        envoy: &VariantEnvoy,
        generator: impl Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<(Window, T)> {
        let started = Instant::now();
        let generator = tokio::spawn(generator);
        tokio::time::sleep_until((started + self.warm_up).into()).await;
        let start = Reading::take(envoy, ReadOrder::CounterFirst).await;
        tokio::time::sleep_until((started + self.warm_up + self.measure).into()).await;
        let end = Reading::take(envoy, ReadOrder::CpuFirst).await;
        let report = generator.await.context("load generator task")??;
        Ok((Window { start: start?, end: end?, concurrency: self.concurrency, pinned: self.pinned }, report))
    }
}

/// Fails a phase that measured nothing: a broken variant must not pass as a
/// cheap one.
fn check_phase(sample: &PhaseSample, variant: Variant, phase: &str) -> anyhow::Result<()> {
    ensure!(
        sample.requests > 0 && sample.generator.answered > 0,
        "{} {phase}: no request went through Envoy in the measured window (generator: {} sent, {} answered, first \
         error {:?})",
        variant.label(),
        sample.generator.sent,
        sample.generator.answered,
        sample.generator.first_error
    );
    Ok(())
}

/// Each request carries `x-user-id`, rotating over [`STICKY_USERS`] users.
pub(crate) fn user_ids() -> Arc<HeaderFn> {
    let name = HeaderName::from_static(STICKY_HEADER);
    let values: Vec<HeaderValue> =
        (0..STICKY_USERS).filter_map(|user| HeaderValue::try_from(format!("user-{user}")).ok()).collect();
    Arc::new(move |index: u64, headers: &mut HeaderMap| {
        if let Some(value) = values.get((index % values.len().max(1) as u64) as usize) {
            headers.insert(name.clone(), value.clone());
        }
    })
}

#[derive(Debug, Clone, Copy)]
enum ReadOrder {
    /// Start of a window: the admin call happens before the CPU reading.
    CounterFirst,
    /// End of a window: the CPU reading happens before the admin call.
    CpuFirst,
}

/// Envoy's request counter and CPU time at one moment.
#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    requests: u64,
    cpu: CpuTimes,
    /// Every CPU's busy and total ticks (`/proc/stat`), to tell how busy
    /// the load CPU was and what else ran on Envoy's.
    machine: BTreeMap<usize, CpuTicks>,
}

impl Reading {
    async fn take(envoy: &VariantEnvoy, order: ReadOrder) -> anyhow::Result<Self> {
        Ok(match order {
            ReadOrder::CounterFirst => {
                let requests = downstream_requests(envoy.envoy.admin()).await?;
                let at = Instant::now();
                let cpu = CpuTimes::read(envoy.pid)?;
                Self { at, requests, cpu, machine: CpuTicks::read_all() }
            }
            ReadOrder::CpuFirst => {
                let at = Instant::now();
                let cpu = CpuTimes::read(envoy.pid)?;
                let machine = CpuTicks::read_all();
                let requests = downstream_requests(envoy.envoy.admin()).await?;
                Self { at, requests, cpu, machine }
            }
        })
    }
}

struct Window {
    start: Reading,
    end: Reading,
    concurrency: usize,
    pinned: bool,
}

impl Window {
    fn sample(&self, envoy: &VariantEnvoy, generator: GeneratorSample, saturated: bool) -> PhaseSample {
        let wall = self.end.at.duration_since(self.start.at);
        let requests = self.end.requests.saturating_sub(self.start.requests);
        let cpu_ns = self.end.cpu.schedstat_ns.saturating_sub(self.start.cpu.schedstat_ns);
        let ticks = self.end.cpu.ticks.saturating_sub(self.start.cpu.ticks);
        let per_request = |ns: f64| if requests > 0 { ns / 1_000.0 / requests as f64 } else { f64::NAN };
        let cores_used = cpu_ns as f64 / wall.as_nanos().max(1) as f64;
        let utilisation = cores_used / self.concurrency.max(1) as f64;
        debug_assert_eq!(envoy.concurrency, self.concurrency);
        let cpu_busy_share: BTreeMap<usize, f64> = self
            .end
            .machine
            .iter()
            .filter_map(|(cpu, end)| Some((*cpu, end.busy_share_since(self.start.machine.get(cpu)?)?)))
            .collect();
        let pinned = self.pinned && envoy.pinned;
        PhaseSample {
            window_ms: wall.as_micros() as f64 / 1_000.0,
            requests,
            requests_per_second: requests as f64 / wall.as_secs_f64().max(1e-9),
            envoy_cpu_ns: cpu_ns,
            cpu_per_request_us: per_request(cpu_ns as f64),
            ticks_cpu_per_request_us: per_request(ticks as f64 * 1e9 / clock_ticks_per_second() as f64),
            envoy_cores_used: cores_used,
            envoy_utilisation: utilisation,
            load_core_bound: (saturated && pinned).then_some(utilisation < SATURATED_UTILISATION),
            other_busy_on_envoy_cpu: pinned
                .then(|| cpu_busy_share.get(&ENVOY_CPU).map(|busy| (busy - cores_used).max(0.0)))
                .flatten(),
            cpu_busy_share,
            generator,
        }
    }
}

impl GeneratorSample {
    fn closed(report: &ClosedLoopReport) -> Self {
        let outcomes = &report.outcomes;
        Self {
            mode: "closed_loop",
            connections: Some(report.connections),
            rate_per_second: None,
            sent: outcomes.sent,
            answered: outcomes.answered,
            transport_errors: outcomes.transport_errors,
            first_error: outcomes.first_error.clone(),
            status: outcomes.status.clone(),
            served_by: outcomes.served_by.clone(),
            canary_share: outcomes.share_of(Version::Canary.as_str()),
            measured_answered: outcomes.measured_answered,
            latency: LatencySummary::of(&outcomes.latency),
            service: LatencySummary::of(&outcomes.service),
            dispatch: None,
        }
    }

    fn open(report: &OpenLoopReport) -> Self {
        let outcomes = &report.outcomes;
        Self {
            mode: "open_loop",
            connections: None,
            rate_per_second: Some(report.rate_per_second),
            sent: outcomes.sent,
            answered: outcomes.answered,
            transport_errors: outcomes.transport_errors,
            first_error: outcomes.first_error.clone(),
            status: outcomes.status.clone(),
            served_by: outcomes.served_by.clone(),
            canary_share: outcomes.share_of(Version::Canary.as_str()),
            measured_answered: outcomes.measured_answered,
            latency: LatencySummary::of(&outcomes.latency),
            service: LatencySummary::of(&outcomes.service),
            dispatch: Some(report.dispatch),
        }
    }
}

// ---------------------------------------------------------------------------
// /proc and the admin interface (pinning and the shared /proc parsing are
// in `procfs`).

/// CPU time of a process, all threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Sum of field 1 of `/proc/PID/task/*/schedstat`: ns on CPU.
    pub schedstat_ns: u64,
    /// `utime + stime` of `/proc/PID/stat`, in clock ticks.
    pub ticks: u64,
}

impl CpuTimes {
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let mut schedstat_ns = 0u64;
        let tasks = format!("/proc/{pid}/task");
        for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
            // A thread that exits between listing and reading takes its
            // time with it; Envoy's threads live as long as Envoy.
            let Ok(task) = task else { continue };
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                schedstat_ns += parse_schedstat(&text).map_or(0, |(on_cpu_ns, _)| on_cpu_ns);
            }
        }
        let stat_path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
        let ticks = parse_stat_ticks(&stat).with_context(|| format!("parsing {stat_path}: {stat}"))?;
        Ok(Self { schedstat_ns, ticks })
    }
}

/// One CPU's line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// Everything but idle and iowait.
    pub busy: u64,
    pub total: u64,
}

impl CpuTicks {
    /// Every `cpuN` line of `/proc/stat`; empty when unreadable (a
    /// diagnostic, not a measurement to fail on).
    pub fn read_all() -> BTreeMap<usize, CpuTicks> {
        std::fs::read_to_string("/proc/stat").map(|text| parse_proc_stat(&text)).unwrap_or_default()
    }

    /// Busy share of the time between `before` and `self`.
    pub fn busy_share_since(&self, before: &CpuTicks) -> Option<f64> {
        let total = self.total.checked_sub(before.total).filter(|&total| total > 0)?;
        Some(self.busy.saturating_sub(before.busy) as f64 / total as f64)
    }
}

/// The per-CPU lines of `/proc/stat`: `cpuN user nice system idle iowait irq
/// softirq steal …`.
fn parse_proc_stat(text: &str) -> BTreeMap<usize, CpuTicks> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let cpu: usize = fields.next()?.strip_prefix("cpu")?.parse().ok()?;
            let ticks: Vec<u64> = fields.map_while(|field| field.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal; guest time is
            // already counted in user.
            let total: u64 = ticks.iter().take(8).sum();
            let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
            Some((cpu, CpuTicks { busy: total.saturating_sub(idle), total }))
        })
        .collect()
}

/// `utime + stime` (fields 14 and 15) of `/proc/PID/stat`. The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted
/// from the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field N is `fields[N - 3]`.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK`, the unit of `/proc/PID/stat` times; 100 (Linux's
/// value on every common architecture) when it cannot be asked.
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// `http.ingress.downstream_rq_total` from Envoy's admin `/stats`.
async fn downstream_requests(admin: SocketAddr) -> anyhow::Result<u64> {
    let name = format!("http.{STAT_PREFIX}.downstream_rq_total");
    let response = http::get(admin, &format!("/stats?filter={name}")).await?;
    ensure!(response.status.is_success(), "envoy /stats answered {}", response.status);
    parse_stat_line(&response.text(), &name).with_context(|| format!("no {name} in envoy /stats"))
}

/// The value of `name: value` in Envoy's plain-text `/stats`.
pub fn parse_stat_line(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(": ")?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

// ---------------------------------------------------------------------------
// Output.

fn spread_cell(spread: Option<&Spread>, decimals: usize) -> String {
    spread.map_or_else(
        || "–".to_owned(),
        |spread| format!("{:.decimals$} [{:.decimals$}–{:.decimals$}]", spread.median, spread.min, spread.max),
    )
}

/// The per-variant table of one concurrency.
pub fn table(run: &ConcurrencyRun) -> String {
    let mut out = String::from(
        "| variant | CPU/req µs, saturated | CPU/req µs, fixed rate | max req/s | Envoy utilisation | load-core-bound \
         rounds | p50 µs | p99 µs | p99.9 µs | canary share |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for summary in &run.summaries {
        let latency = summary.fixed_rate_latency;
        let cell = |value: Option<u64>| value.map_or_else(|| "–".to_owned(), |value| value.to_string());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} |",
            summary.variant.label(),
            spread_cell(summary.saturated_cpu_per_request_us.as_ref(), 1),
            spread_cell(summary.fixed_rate_cpu_per_request_us.as_ref(), 1),
            spread_cell(summary.max_requests_per_second.as_ref(), 0),
            spread_cell(summary.saturated_envoy_utilisation.as_ref(), 2),
            summary.load_core_bound_rounds,
            summary.rounds,
            cell(latency.map(|latency| latency.p50_us)),
            cell(latency.map(|latency| latency.p99_us)),
            cell(latency.map(|latency| latency.p999_us)),
            spread_cell(summary.canary_share.as_ref(), 3),
        );
    }
    out
}

/// The ratios of one concurrency.
pub fn ratio_table(run: &ConcurrencyRun) -> String {
    let mut out = String::from(
        "| CPU per request | saturated: median [min–max] | fixed rate: median [min–max] | saturated, by round |\n\
         |---|---:|---:|---|\n",
    );
    for ratio in &run.ratios {
        let by_round: Vec<String> = ratio.saturated_by_round.iter().map(|ratio| format!("{ratio:.3}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            ratio.label(),
            spread_cell(ratio.saturated.as_ref(), 3),
            spread_cell(ratio.fixed_rate.as_ref(), 3),
            by_round.join(", ")
        );
    }
    out
}

/// The whole result in Markdown.
pub fn markdown(result: &OverheadResult) -> String {
    let mut out = String::from("# Data-plane overhead\n\n");
    out.push_str(&result.context.markdown_preamble());
    let artifacts = &result.context.artifacts;
    let unknown = || "unknown".to_owned();
    let _ = writeln!(out, "- envoy: {}", artifacts.envoy_version.clone().unwrap_or_else(unknown));
    let _ = writeln!(
        out,
        "- source: {}{}",
        artifacts.git_commit.clone().unwrap_or_else(unknown),
        if artifacts.git_dirty == Some(true) { " (with uncommitted changes)" } else { "" }
    );
    let _ = writeln!(
        out,
        "- load generator build: {}; analyzer: {} build; backends: {}",
        result.settings.generator_build_profile,
        artifacts.analyzer_build_profile,
        artifacts.backend.path.display()
    );
    for (name, module) in &result.wasm_modules {
        let _ = writeln!(
            out,
            "- wasm {name}: {} bytes ({})",
            module.size_bytes.map_or_else(unknown, |bytes| bytes.to_string()),
            module.path.display()
        );
    }
    let options = &result.settings.options;
    let _ = writeln!(
        out,
        "- per round and variant, one Envoy; saturation: closed loop over {} connections; fixed rate: open loop from \
         the intended send time; each phase {} ms of warm-up, then {} ms measured; {} interleaved rounds; every \
         request carries `{}` ({} users)\n",
        options.closed_loop_connections,
        options.warm_up_ms,
        options.measure_ms,
        options.rounds,
        result.settings.sticky_header,
        result.settings.sticky_users,
    );
    let _ = writeln!(
        out,
        "CPU per request = Δ Envoy CPU (schedstat, all threads) / Δ `http.ingress.downstream_rq_total` over the \
         measured window. Ratios are taken per round pair, then summarised; medians are nearest-rank (a value some \
         round measured). Latency is over every round's fixed-rate window together.\n"
    );
    if !result.verdicts.is_empty() {
        out.push_str("## Verdicts\n\n");
        for verdict in &result.verdicts {
            let _ = writeln!(out, "- {}", verdict.line());
        }
        out.push('\n');
    }
    for run in &result.runs {
        let _ = writeln!(out, "## Concurrency {}\n", run.concurrency);
        let _ = writeln!(out, "- pinned: {} ({})", run.pinned, run.pinning);
        let _ = writeln!(out, "- fixed rate: {:.0} req/s, {}", run.fixed_rate_per_second, run.fixed_rate_source);
        let _ = writeln!(
            out,
            "- load average (1, 5, 15 min) before {}, after {}",
            load_average(run.load_average_before),
            load_average(run.load_average_after)
        );
        if run.pinned {
            out.push_str(&pinned_cpu_lines(run));
        }
        out.push('\n');
        out.push_str(&table(run));
        out.push('\n');
        out.push_str(&ratio_table(run));
        out.push('\n');
        if !run.side_by_side.is_empty() {
            out.push_str(&side_by_side_section(run));
        }
    }
    out
}

/// The side-by-side part of a concurrency's Markdown.
fn side_by_side_section(run: &ConcurrencyRun) -> String {
    format!(
        "### Side by side\n\n{} rounds, each with a fresh Envoy per variant, all running at once{}, each under its \
         own open loop at {:.0} req/s, measured over one window. A ratio is taken within a round, so the machine's \
         drift between rounds cancels.\n\n{}\n\n{}\n",
        run.side_by_side.len(),
        if run.pinned { format!(" on CPU {ENVOY_CPU}") } else { String::new() },
        run.side_by_side_rate_per_second,
        probe_sentence(run),
        side_by_side_table(run),
    )
}

/// How the side-by-side rate was chosen, in words.
fn probe_sentence(run: &ConcurrencyRun) -> String {
    let tried: Vec<String> = run
        .side_by_side_probes
        .iter()
        .map(|probe| {
            format!(
                "{:.0} req/s each: {}{}",
                probe.rate_per_second,
                probe.describe(),
                if probe.kept_up { ", kept up" } else { "" }
            )
        })
        .collect();
    let rule = format!(
        "The rate starts at the fixed rate over the number of variants and halves until one probe round keeps up: \
         every Envoy serves at least {KEEP_UP_RATE_SHARE} of its rate with an open-loop p99 of at most {} ms. A \
         round that does not keep up is left out of the ratios (unless none does).",
        KEEP_UP_P99_US / 1_000
    );
    let verdict = if run.side_by_side_kept_up() {
        String::new()
    } else {
        " **No probe kept up: the rounds ran saturated.**".to_owned()
    };
    let behind: Vec<String> = run
        .side_by_side
        .iter()
        .filter(|round| !round.keep_up.kept_up)
        .map(|round| format!("{} ({})", round.round, round.keep_up.describe()))
        .collect();
    let abandoned: String = run
        .side_by_side_abandoned
        .iter()
        .map(|set| {
            format!(
                " At {:.0} req/s each more than {:.0}% of the rounds fell behind ({}), so the rounds ran again at half \
                 that rate.",
                set.rate_per_second,
                (1.0 - KEEP_UP_ROUNDS_SHARE) * 100.0,
                set.describe()
            )
        })
        .collect();
    let rounds = if behind.is_empty() {
        format!(" Every one of the {} rounds kept up.", run.side_by_side.len())
    } else {
        format!(" Rounds that fell behind: {}.", behind.join("; "))
    };
    format!("{rule} Probes: {}.{verdict}{abandoned}{rounds}", tried.join("; "))
}

/// Each variant's samples over the side-by-side rounds that kept up (every
/// round if none did), in variant order.
fn side_by_side_by_variant(run: &ConcurrencyRun) -> Vec<(Variant, Vec<&PhaseSample>)> {
    let variants: Vec<Variant> = run
        .side_by_side
        .first()
        .map(|round| round.samples.iter().map(|sample| sample.variant).collect())
        .unwrap_or_default();
    variants
        .into_iter()
        .map(|variant| {
            let samples = counted_rounds(&run.side_by_side)
                .filter_map(|round| round.samples.iter().find(|sample| sample.variant == variant))
                .map(|sample| &sample.fixed_rate)
                .collect();
            (variant, samples)
        })
        .collect()
}

/// The side-by-side rounds of one concurrency: CPU per request per variant,
/// then the ratios round by round.
pub fn side_by_side_table(run: &ConcurrencyRun) -> String {
    let mut out =
        String::from("| variant | CPU/req µs: median [min–max] | p99 µs: median of rounds |\n|---|---:|---:|\n");
    for (variant, samples) in side_by_side_by_variant(run) {
        let cpu = Spread::of(&samples.iter().map(|sample| sample.cpu_per_request_us).collect::<Vec<_>>());
        let p99 = Spread::of(
            &samples.iter().filter_map(|sample| Some(sample.generator.latency?.p99_us as f64)).collect::<Vec<_>>(),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            variant.label(),
            spread_cell(cpu.as_ref(), 1),
            p99.map_or_else(|| "–".to_owned(), |spread| format!("{:.0}", spread.median)),
        );
    }
    out.push_str("\n| CPU per request | median [min–max] | by round kept up |\n|---|---:|---|\n");
    for ratio in &run.side_by_side_ratios {
        let by_round: Vec<String> =
            ratio.rounds.iter().zip(&ratio.by_round).map(|(round, ratio)| format!("{round}: {ratio:.3}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            ratio.label(),
            spread_cell(ratio.spread.as_ref(), 3),
            by_round.join(", ")
        );
    }
    out
}

/// At saturation, per variant: how busy the load CPU was, and how much of
/// Envoy's CPU something else used (should be ≈ 0 on a quiet machine).
fn pinned_cpu_lines(run: &ConcurrencyRun) -> String {
    let mut out = String::from(
        "- at saturation, CPU busy with something other than Envoy on Envoy's CPU, and load CPU busy (median \
         [min–max]):",
    );
    for summary in &run.summaries {
        let _ = write!(
            out,
            " {} {} / {};",
            summary.variant.short(),
            spread_cell(summary.saturated_other_busy_on_envoy_cpu.as_ref(), 3),
            spread_cell(summary.saturated_load_cpu_busy.as_ref(), 3),
        );
    }
    out.pop();
    out.push('\n');
    out
}

fn load_average(load_average: Option<[f64; 3]>) -> String {
    load_average.map_or_else(|| "unknown".to_owned(), |[one, five, fifteen]| format!("{one:.2} {five:.2} {fifteen:.2}"))
}

/// SVG charts next to the results: CPU per request (median with min–max
/// whiskers) and fixed-rate latency percentiles, per concurrency.
pub fn plots(result: &OverheadResult, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for run in &result.runs {
        let bars: Vec<Bar> = run
            .summaries
            .iter()
            .filter_map(|summary| {
                let spread = summary.saturated_cpu_per_request_us?;
                Some(Bar {
                    label: summary.variant.short().to_owned(),
                    value: spread.median,
                    min: spread.min,
                    max: spread.max,
                })
            })
            .collect();
        if !bars.is_empty() {
            let path = dir.join(format!("overhead-cpu-concurrency-{}.svg", run.concurrency));
            let title = format!("Envoy CPU per request at saturation, concurrency {}", run.concurrency);
            plots::bars_with_range(&path, &title, "µs per request", &bars)?;
            written.push(path);
        }
        let side_by_side_bars: Vec<Bar> = side_by_side_by_variant(run)
            .into_iter()
            .filter_map(|(variant, samples)| {
                let spread = Spread::of(&samples.iter().map(|sample| sample.cpu_per_request_us).collect::<Vec<_>>())?;
                Some(Bar { label: variant.short().to_owned(), value: spread.median, min: spread.min, max: spread.max })
            })
            .collect();
        if !side_by_side_bars.is_empty() {
            let path = dir.join(format!("overhead-cpu-side-by-side-concurrency-{}.svg", run.concurrency));
            let title = format!(
                "Envoy CPU per request, side by side at {:.0} req/s each, concurrency {}",
                run.side_by_side_rate_per_second, run.concurrency
            );
            plots::bars_with_range(&path, &title, "µs per request", &side_by_side_bars)?;
            written.push(path);
        }
        // x: the number of nines (p50 = 0.3, p99 = 2, p99.9 = 3), so the
        // tail gets room.
        let series: Vec<Series> = run
            .summaries
            .iter()
            .filter_map(|summary| {
                let latency = summary.fixed_rate_latency?;
                let nines = |quantile: f64| -(1.0 - quantile).log10();
                Some(Series {
                    label: summary.variant.short().to_owned(),
                    points: vec![
                        (nines(0.5), latency.p50_us as f64),
                        (nines(0.9), latency.p90_us as f64),
                        (nines(0.99), latency.p99_us as f64),
                        (nines(0.999), latency.p999_us as f64),
                    ],
                })
            })
            .collect();
        if !series.is_empty() {
            let path = dir.join(format!("overhead-latency-concurrency-{}.svg", run.concurrency));
            let title = format!(
                "Latency at {:.0} req/s (open loop), concurrency {}",
                run.fixed_rate_per_second, run.concurrency
            );
            LineChart {
                title: &title,
                x_label: "percentile, in nines (0.3 = p50, 2 = p99, 3 = p99.9)",
                y_label: "µs from the intended send time",
                x_scale: XScale::Linear,
                series: &series,
                vertical_markers: &[],
                horizontal_markers: &[],
                legend: plots::Legend::LowerRight,
            }
            .draw(&path)?;
            written.push(path);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "4242 (envoy (main) x) S 1 4242 4242 0 -1 4194560 2885 0 0 0 1234 567 0 0 20 0 9 0 \
                    100 200000000 20000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 0 0 0 0 0 0\n";
        assert_eq!(parse_stat_ticks(stat), Some(1_801));
        assert_eq!(parse_stat_ticks("4242 (envoy) S 1"), None);
        let stats = "http.ingress.downstream_rq_total: 12345\nhttp.ingress.downstream_rq_total_x: 9\n";
        assert_eq!(parse_stat_line(stats, "http.ingress.downstream_rq_total"), Some(12_345));
        assert_eq!(parse_stat_line(stats, "http.ingress.downstream_rq_active"), None);
        let proc_stat = "cpu  1704723 31436 230251 544197 8699 0 28798 14102 0 0\n\
                         cpu0 800 0 100 50 50 0 0 0 0 0\ncpu1 10 0 10 970 10 0 0 0 0 0\nintr 1 2 3\n";
        let cpus = parse_proc_stat(proc_stat);
        assert_eq!(cpus.len(), 2, "the aggregate line is left out");
        assert_eq!(cpus[&0], CpuTicks { busy: 900, total: 1_000 });
        assert_eq!(cpus[&1], CpuTicks { busy: 20, total: 1_000 });
        let later = CpuTicks { busy: 1_400, total: 2_000 };
        assert_eq!(later.busy_share_since(&cpus[&0]), Some(0.5));
        assert_eq!(cpus[&0].busy_share_since(&cpus[&0]), None);
    }

    #[test]
    fn variants_parse_and_render() {
        for variant in Variant::ALL {
            assert_eq!(variant.id().parse::<Variant>(), Ok(variant));
        }
        assert!("d".parse::<Variant>().is_err());
        assert_eq!(Variant::A.filter_configuration(), "");
        assert_eq!(Variant::C.filter_configuration(), "", "(c) splits at random");
        assert_eq!(Variant::CSticky.filter_configuration(), STICKY_HEADER, "(c) sticky reads the key (d) reads");
        let sticky: Value = serde_json::from_str(&Variant::DSticky.filter_configuration()).expect("JSON");
        assert_eq!(sticky["sticky"]["header"], STICKY_HEADER);
        assert_eq!(sticky["initial_canary_weight_bp"], 1_000);
        let random: Value = serde_json::from_str(&Variant::DRandom.filter_configuration()).expect("JSON");
        assert!(random.get("sticky").is_none());
        // The production report interval: the filter's default.
        assert!(random.get("report_interval_ms").is_none());
    }

    fn phase(cpu_per_request_us: f64) -> PhaseSample {
        PhaseSample {
            window_ms: 1_000.0,
            requests: 1_000,
            requests_per_second: 1_000.0,
            envoy_cpu_ns: 0,
            cpu_per_request_us,
            ticks_cpu_per_request_us: cpu_per_request_us,
            envoy_cores_used: 0.5,
            envoy_utilisation: 0.5,
            load_core_bound: None,
            cpu_busy_share: BTreeMap::new(),
            other_busy_on_envoy_cpu: None,
            generator: GeneratorSample {
                mode: "closed_loop",
                connections: Some(1),
                rate_per_second: None,
                sent: 1,
                answered: 1,
                transport_errors: 0,
                first_error: None,
                status: BTreeMap::new(),
                served_by: BTreeMap::new(),
                canary_share: Some(0.1),
                measured_answered: 1,
                latency: None,
                service: None,
                dispatch: None,
            },
        }
    }

    fn round(variant: Variant, round: usize, saturated: f64, fixed: f64) -> VariantRound {
        VariantRound {
            variant,
            round,
            saturation: phase(saturated),
            fixed_rate: phase(fixed),
            envoy_sync_failures: None,
        }
    }

    #[test]
    fn ratios_pair_rounds_and_verdicts_follow_the_targets() {
        let samples = vec![
            round(Variant::A, 1, 100.0, 150.0),
            round(Variant::C, 1, 110.0, 160.0),
            round(Variant::DRandom, 1, 121.0, 160.0),
            round(Variant::A, 2, 200.0, 150.0),
            round(Variant::C, 2, 100.0, 160.0),
            round(Variant::DRandom, 2, 103.0, 176.0),
            round(Variant::A, 3, 100.0, 150.0),
            round(Variant::C, 3, 100.0, 160.0),
            round(Variant::DRandom, 3, 104.0, 168.0),
        ];
        let ratio = RatioSummary::of(Variant::DRandom, Variant::C, &samples);
        assert_eq!(ratio.label(), "(d) random/(c)");
        assert_eq!(ratio.saturated_by_round.len(), 3);
        let saturated = ratio.saturated.expect("three rounds");
        assert!((saturated.median - 1.04).abs() < 1e-9, "{saturated:?}");
        assert!((saturated.min - 1.03).abs() < 1e-9 && (saturated.max - 1.1).abs() < 1e-9, "{saturated:?}");
        let fixed = ratio.fixed_rate.expect("three rounds");
        assert!((fixed.median - 1.05).abs() < 1e-9, "{fixed:?}");

        let run = ConcurrencyRun {
            ratios: vec![
                ratio,
                RatioSummary::of(Variant::DRandom, Variant::A, &samples),
                RatioSummary::of(Variant::C, Variant::A, &samples),
            ],
            samples,
            ..run_at(1)
        };
        let verdicts = verdicts(&[run]);
        assert_eq!(verdicts.len(), 4, "saturated and fixed rate for two targets; (c)/(a) has no target");
        assert_eq!(
            verdicts[0].line(),
            "overhead: (d) random/(c) CPU per request, saturated, concurrency 1 1.04× [min 1.03, max 1.1] ≤ 1.05× MET"
        );
        assert!(verdicts[1].quantity.contains("fixed rate") && verdicts[1].met, "{:?}", verdicts[1]);
        // (d)/(a) by round: 1.21, 0.515, 1.04: median 1.04.
        assert!(verdicts[2].met);
        assert_eq!(verdicts[2].limit, TARGET_D_OVER_A);
    }

    #[test]
    fn a_probe_keeps_up_only_when_every_envoy_served_its_rate_promptly() {
        let sample = |variant: Variant, requests_per_second: f64, p99_us: Option<u64>| {
            let mut fixed_rate = phase(100.0);
            fixed_rate.requests_per_second = requests_per_second;
            // `phase` is a 1 s window.
            fixed_rate.requests = requests_per_second.round() as u64;
            fixed_rate.generator.latency =
                p99_us.map(|p99_us| LatencySummary { count: 1, p50_us: 1, p90_us: 1, p99_us, p999_us: 1, max_us: 1 });
            SideBySideSample { variant, fixed_rate }
        };
        let prompt = [sample(Variant::C, 995.0, Some(4_000)), sample(Variant::DRandom, 990.0, Some(6_000))];
        let probe = KeepUp::of(1_000.0, &prompt);
        assert!(probe.kept_up, "{probe:?}");
        assert_eq!(probe.highest_p99_us, Some(6_000));
        assert!((probe.lowest_rate_share - 0.99).abs() < 1e-9);
        // One Envoy behind its rate, or queueing, or without a latency
        // summary is enough to fail the probe.
        let behind = [sample(Variant::C, 995.0, Some(4_000)), sample(Variant::DRandom, 950.0, Some(6_000))];
        assert!(!KeepUp::of(1_000.0, &behind).kept_up);
        let queueing = [sample(Variant::C, 995.0, Some(4_000)), sample(Variant::DRandom, 990.0, Some(300_000))];
        assert!(!KeepUp::of(1_000.0, &queueing).kept_up);
        // At 1 req/s over a 20 s window, 19 requests is one short: kept up.
        let mut slow = sample(Variant::C, 0.95, Some(4_000));
        slow.fixed_rate.window_ms = 20_000.0;
        slow.fixed_rate.requests = 19;
        assert!(KeepUp::of(1.0, std::slice::from_ref(&slow)).kept_up);
        slow.fixed_rate.requests_per_second = 0.9;
        slow.fixed_rate.requests = 18;
        assert!(!KeepUp::of(1.0, &[slow]).kept_up, "two short");
        let unknown = [sample(Variant::C, 995.0, None)];
        assert!(!KeepUp::of(1_000.0, &unknown).kept_up);
        assert!(!KeepUp::of(1_000.0, &[]).kept_up);
    }

    /// A run of `concurrency` with nothing in it, for a test to fill.
    fn run_at(concurrency: usize) -> ConcurrencyRun {
        ConcurrencyRun {
            concurrency,
            pinned: concurrency == 1,
            pinning: String::new(),
            load_average_before: None,
            load_average_after: None,
            calibration: Vec::new(),
            fixed_rate_per_second: 1_000.0,
            fixed_rate_source: String::new(),
            summaries: Vec::new(),
            ratios: Vec::new(),
            samples: Vec::new(),
            side_by_side_rate_per_second: 0.0,
            side_by_side_probes: Vec::new(),
            side_by_side_abandoned: Vec::new(),
            side_by_side: Vec::new(),
            side_by_side_ratios: Vec::new(),
        }
    }

    fn side_by_side_round(round: usize, cpu: &[(Variant, f64)]) -> SideBySideRound {
        SideBySideRound {
            round,
            keep_up: KeepUp {
                rate_per_second: 1_000.0,
                kept_up: true,
                lowest_rate_share: 1.0,
                highest_p99_us: Some(3_000),
            },
            samples: cpu
                .iter()
                .map(|&(variant, cpu_per_request_us)| SideBySideSample {
                    variant,
                    fixed_rate: phase(cpu_per_request_us),
                })
                .collect(),
        }
    }

    #[test]
    fn side_by_side_ratios_pair_within_a_round_and_get_verdicts_and_a_table() {
        let rounds = vec![
            side_by_side_round(1, &[(Variant::A, 100.0), (Variant::C, 110.0), (Variant::DRandom, 112.2)]),
            // A slow round: every Envoy slowed alike, the ratio holds.
            side_by_side_round(2, &[(Variant::A, 200.0), (Variant::C, 220.0), (Variant::DRandom, 228.8)]),
            // (d) missing from a round: that round gives no (d) ratio.
            side_by_side_round(3, &[(Variant::A, 100.0), (Variant::C, 120.0)]),
        ];
        let ratio = SideBySideRatio::of(Variant::DRandom, Variant::C, &rounds);
        assert_eq!(ratio.by_round.len(), 2);
        assert!((ratio.by_round[0] - 1.02).abs() < 1e-9 && (ratio.by_round[1] - 1.04).abs() < 1e-9, "{ratio:?}");
        let floor = SideBySideRatio::of(Variant::C, Variant::A, &rounds);
        assert_eq!(floor.by_round.len(), 3);

        let run = ConcurrencyRun {
            side_by_side_rate_per_second: 1_000.0,
            side_by_side_probes: vec![
                KeepUp { rate_per_second: 2_000.0, kept_up: false, lowest_rate_share: 0.8, highest_p99_us: None },
                KeepUp {
                    rate_per_second: 1_000.0,
                    kept_up: true,
                    lowest_rate_share: 0.99,
                    highest_p99_us: Some(3_000),
                },
            ],
            side_by_side_ratios: vec![ratio, SideBySideRatio::of(Variant::DRandom, Variant::A, &rounds), floor],
            side_by_side: rounds,
            ..run_at(2)
        };
        let verdicts = verdicts(std::slice::from_ref(&run));
        assert_eq!(verdicts.len(), 2, "(d)/(c) and (d)/(a); (c)/(a) has no target");
        assert_eq!(
            verdicts[0].line(),
            "overhead: (d) random/(c) CPU per request, side by side at 1000 req/s each, concurrency 2 (2 rounds) 1.02× \
             [min 1.02, max 1.04] ≤ 1.05× MET"
        );
        let markdown = side_by_side_section(&run);
        assert!(markdown.contains("2000 req/s each: lowest served share 0.800, highest p99 none; 1000 req/s each"));

        // When even the last probe did not keep up, every verdict says so.
        let mut saturated = run.clone();
        saturated.side_by_side_probes.pop();
        let saturated_verdicts = super::verdicts(std::slice::from_ref(&saturated));
        assert!(
            saturated_verdicts[0].quantity.contains("side by side saturated (no probe rate kept up)"),
            "{:?}",
            saturated_verdicts[0]
        );
        assert!(side_by_side_section(&saturated).contains("No probe kept up"));
        assert_eq!(verdicts[1].limit, TARGET_D_OVER_A);
        let table = side_by_side_table(&run);
        assert!(table.contains("| (d) random/(c) | 1.020 [1.020–1.040] | 1: 1.020, 2: 1.040 |"), "{table}");
        assert!(table.contains("| (a) native | 100.0 [100.0–200.0] | – |"), "{table}");
        assert!(side_by_side_section(&run).contains("Every one of the 3 rounds kept up."));
    }

    #[test]
    fn a_round_that_fell_behind_is_left_out_unless_none_kept_up() {
        let mut behind = side_by_side_round(2, &[(Variant::C, 100.0), (Variant::DRandom, 100.0)]);
        behind.keep_up =
            KeepUp { rate_per_second: 1_000.0, kept_up: false, lowest_rate_share: 0.8, highest_p99_us: Some(900_000) };
        let rounds = vec![
            side_by_side_round(1, &[(Variant::C, 100.0), (Variant::DRandom, 104.0)]),
            behind,
            side_by_side_round(3, &[(Variant::C, 100.0), (Variant::DRandom, 106.0)]),
        ];
        let ratio = SideBySideRatio::of(Variant::DRandom, Variant::C, &rounds);
        assert_eq!(ratio.rounds, [1, 3]);
        assert_eq!(ratio.spread.map(|spread| spread.max), Some(1.06));
        let mut run = ConcurrencyRun {
            side_by_side_rate_per_second: 1_000.0,
            side_by_side_probes: vec![KeepUp {
                rate_per_second: 1_000.0,
                kept_up: true,
                lowest_rate_share: 1.0,
                highest_p99_us: Some(3_000),
            }],
            side_by_side_ratios: vec![ratio],
            side_by_side: rounds,
            ..run_at(1)
        };
        let verdict = &verdicts(std::slice::from_ref(&run))[0];
        assert!(
            verdict.quantity.ends_with("at 1000 req/s each, concurrency 1 (2 of 3 rounds: the others fell behind)"),
            "{verdict:?}"
        );
        let section = side_by_side_section(&run);
        assert!(
            section.contains("Rounds that fell behind: 2 (lowest served share 0.800, highest p99 900.0 ms)."),
            "{section}"
        );
        let set = KeepUp::of_rounds(1_000.0, &run.side_by_side);
        assert!(!set.kept_up, "2 of 3 rounds kept up, under 80%: {set:?}");
        let mut five: Vec<SideBySideRound> =
            (1..=5).map(|round| side_by_side_round(round, &[(Variant::C, 1.0)])).collect();
        five[0].keep_up.kept_up = false;
        assert!(KeepUp::of_rounds(1_000.0, &five).kept_up, "4 of 5 is 80%");
        five[1].keep_up.kept_up = false;
        assert!(!KeepUp::of_rounds(1_000.0, &five).kept_up, "3 of 5");
        assert_eq!((set.lowest_rate_share, set.highest_p99_us), (0.8, Some(900_000)));
        run.side_by_side_abandoned = vec![KeepUp {
            rate_per_second: 2_000.0,
            kept_up: false,
            lowest_rate_share: 0.9,
            highest_p99_us: Some(1_200_000),
        }];
        assert!(
            side_by_side_section(&run).contains(
                "At 2000 req/s each more than 20% of the rounds fell behind (lowest served share 0.900, highest p99 \
                 1200.0 ms), so the rounds ran again at half that rate."
            ),
            "{}",
            side_by_side_section(&run)
        );
        // The per-variant table leaves the round out too: (d) 104 and 106.
        assert!(
            side_by_side_table(&run).contains("| (d) random | 104.0 [104.0–106.0] |"),
            "{}",
            side_by_side_table(&run)
        );

        // No round kept up: every round counts, and the verdict says so.
        for round in &mut run.side_by_side {
            round.keep_up.kept_up = false;
        }
        let ratio = SideBySideRatio::of(Variant::DRandom, Variant::C, &run.side_by_side);
        assert_eq!(ratio.rounds, [1, 2, 3]);
        run.side_by_side_ratios = vec![ratio];
        let verdict = &verdicts(std::slice::from_ref(&run))[0];
        assert!(verdict.quantity.contains("at 1000 req/s each but saturated (no round kept up)"), "{verdict:?}");
        assert!(verdict.quantity.ends_with("(3 rounds)"), "{verdict:?}");
    }

    #[test]
    fn spread_is_nearest_rank() {
        let spread = Spread::of(&[3.0, 1.0, 2.0, 4.0, f64::NAN]).expect("values");
        assert_eq!(spread, Spread { count: 4, median: 2.0, min: 1.0, max: 4.0 });
        assert_eq!(Spread::of(&[]), None);
    }
}
