//! Envoy's side of the footprint: the wasm modules' sizes, and what the
//! filter adds to Envoy's resident memory, fixed and per worker.
//!
//! Envoy runs one wasm VM per worker plus one on the main thread, so the
//! filter's memory is a fixed part (V8 itself, the main thread's VM) plus a
//! per-worker part. For (a) native routing and (d) the canary filter (random,
//! with the analyzer reachable, as in [`crate::overhead`]) at each Envoy
//! `--concurrency`, `--repeats` fresh Envoys each get one second of
//! closed-loop load (so every VM has run requests and synced), then their
//! `VmRSS` is read from `/proc/PID/status`. The median per (variant,
//! concurrency) is fitted with a least-squares line over concurrency: its
//! slope is the memory per added worker, and the slope of (d) minus that of
//! (a) the per-worker VM memory. Envoy's own `wasm` stats and its admin
//! `/memory` (tcmalloc's view: V8's heaps are not in it) are recorded with
//! each sample.
//!
//! The analyzer's memory is measured by `scale`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use canary_tests::{Binaries, http};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use crate::loadgen::{self, ClosedLoop, Target};
use crate::machine::Artifact;
use crate::overhead::{self, Rig, Variant, WasmModules};
use crate::procfs::status_kib;
use crate::quantiles::nearest_rank;
use crate::report::{self, Verdict};
use crate::results::RunContext;

/// The variants compared: native routing and the canary filter.
pub const VARIANTS: [Variant; 2] = [Variant::A, Variant::DRandom];
/// Load connections per Envoy worker (at least 16), so that the kernel's
/// spreading gives every worker requests.
const CONNECTIONS_PER_WORKER: usize = 8;

/// Command-line flags of `canary-bench footprint`. Flags left out take the
/// `--smoke` preset when it is given, else the defaults shown.
#[derive(Debug, Args)]
pub struct FootprintArgs {
    /// Envoy worker counts [default: 1,2,4; smoke: 1,2].
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Option<Vec<usize>>,
    /// Fresh Envoys per (variant, concurrency) [default: 3; smoke: 1].
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Load before reading the memory, seconds [default: 1; smoke: 0.5].
    #[arg(long)]
    pub load_secs: Option<f64>,
    /// Results directory [default: bench/results/<YYYY-MM-DD>-<hostname>;
    /// smoke: under the target directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seconds in all: concurrency 1 and 2, one Envoy each (for CI).
    #[arg(long)]
    pub smoke: bool,
}

impl FootprintArgs {
    pub fn options(&self, binaries: &Binaries) -> FootprintOptions {
        let (concurrencies, repeats, load_ms) =
            if self.smoke { (vec![1, 2], 1, 500) } else { (vec![1, 2, 4], 3, 1_000) };
        FootprintOptions {
            concurrencies: self.concurrency.clone().unwrap_or(concurrencies),
            repeats: self.repeats.unwrap_or(repeats),
            load_ms: self.load_secs.map_or(load_ms, |secs| (secs.max(0.0) * 1_000.0) as u64),
            wasm: WasmModules::default_paths(binaries),
            smoke: self.smoke,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct FootprintOptions {
    pub concurrencies: Vec<usize>,
    pub repeats: usize,
    pub load_ms: u64,
    pub wasm: WasmModules,
    pub smoke: bool,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct FootprintResult {
    pub benchmark: &'static str,
    pub schema_version: u32,
    #[serde(flatten)]
    pub context: RunContext,
    pub settings: Settings,
    /// Sizes of the (b), (c) and (d) modules.
    pub wasm_modules: BTreeMap<&'static str, Artifact>,
    pub summaries: Vec<MemorySummary>,
    /// One line per variant, through the median RSS by concurrency.
    pub fits: Vec<MemoryFit>,
    /// Slope of (d) minus slope of (a): what one more worker's wasm VM
    /// costs.
    pub per_worker_vm_kib: Option<f64>,
    /// Median RSS of (d) minus (a), by concurrency: the filter's whole cost
    /// at that size.
    pub wasm_over_native_kib: BTreeMap<usize, f64>,
    pub samples: Vec<MemorySample>,
    /// No footprint target in the issue; present so the summary reads every
    /// benchmark the same way.
    pub verdicts: Vec<Verdict>,
    pub finished_at_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    #[serde(flatten)]
    pub options: FootprintOptions,
    pub variants: [Variant; 2],
    pub connections_per_worker: usize,
    pub filter_configuration: String,
}

/// One Envoy, read after its load.
#[derive(Debug, Clone, Serialize)]
pub struct MemorySample {
    pub variant: Variant,
    pub concurrency: usize,
    /// 1-based.
    pub repeat: usize,
    pub vm_rss_kib: u64,
    pub vm_hwm_kib: Option<u64>,
    pub rss_anon_kib: Option<u64>,
    pub rss_file_kib: Option<u64>,
    /// Requests answered during the load.
    pub requests: u64,
    /// Envoy's stats whose name contains `wasm`.
    pub wasm_stats: BTreeMap<String, u64>,
    /// Envoy's admin `/memory` (tcmalloc), as it answered.
    pub admin_memory: Option<Value>,
}

/// Median, min and max `VmRSS` over repeats.
#[derive(Debug, Clone, Serialize)]
pub struct MemorySummary {
    pub variant: Variant,
    pub concurrency: usize,
    pub repeats: usize,
    pub median_vm_rss_kib: f64,
    pub min_vm_rss_kib: f64,
    pub max_vm_rss_kib: f64,
}

/// `rss ≈ intercept + slope × concurrency`, least squares over the medians.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryFit {
    pub variant: Variant,
    pub slope_kib_per_worker: f64,
    pub intercept_kib: f64,
    pub points: usize,
}

/// Runs the benchmark; see the module docs.
pub async fn run(
    options: &FootprintOptions,
    binaries: &Binaries,
    context: RunContext,
) -> anyhow::Result<FootprintResult> {
    ensure!(options.repeats > 0, "--repeats must be at least 1");
    ensure!(!options.concurrencies.is_empty(), "--concurrency needs at least one value");
    ensure!(options.concurrencies.iter().all(|&concurrency| concurrency > 0), "--concurrency must be positive");
    options.wasm.check(&VARIANTS)?;
    let dir = tempfile::Builder::new().prefix("canary-bench-footprint-").tempdir()?;
    let samples = match measure(options, binaries, dir.path()).await {
        Ok(samples) => samples,
        Err(error) => {
            let kept = dir.keep();
            return Err(error.context(format!("footprint failed; logs kept in {}", kept.display())));
        }
    };
    let summaries = summarise(&samples);
    let fits: Vec<MemoryFit> = VARIANTS.iter().filter_map(|&variant| fit(variant, &summaries)).collect();
    let slope_of =
        |variant: Variant| fits.iter().find(|fit| fit.variant == variant).map(|fit| fit.slope_kib_per_worker);
    let per_worker_vm_kib = slope_of(Variant::DRandom).zip(slope_of(Variant::A)).map(|(ours, native)| ours - native);
    let median_of = |variant: Variant, concurrency: usize| {
        summaries
            .iter()
            .find(|summary| summary.variant == variant && summary.concurrency == concurrency)
            .map(|summary| summary.median_vm_rss_kib)
    };
    let wasm_over_native_kib = options
        .concurrencies
        .iter()
        .filter_map(|&concurrency| {
            Some((concurrency, median_of(Variant::DRandom, concurrency)? - median_of(Variant::A, concurrency)?))
        })
        .collect();
    Ok(FootprintResult {
        benchmark: "footprint",
        schema_version: 1,
        context,
        settings: Settings {
            options: options.clone(),
            variants: VARIANTS,
            connections_per_worker: CONNECTIONS_PER_WORKER,
            filter_configuration: Variant::DRandom.filter_configuration(),
        },
        wasm_modules: overhead::wasm_artifacts(&options.wasm),
        summaries,
        fits,
        per_worker_vm_kib,
        wasm_over_native_kib,
        samples,
        verdicts: Vec::new(),
        finished_at_unix_ms: crate::results::unix_now_ms(),
    })
}

async fn measure(options: &FootprintOptions, binaries: &Binaries, dir: &Path) -> anyhow::Result<Vec<MemorySample>> {
    let rig = Rig::start(binaries, dir, true).await?;
    let mut samples = Vec::new();
    let total = options.repeats * options.concurrencies.len() * VARIANTS.len();
    // Interleaved, so a drift of the machine spreads over every cell.
    for repeat in 1..=options.repeats {
        for &concurrency in &options.concurrencies {
            for variant in VARIANTS {
                report::progress(
                    "footprint",
                    &format!(
                        "{}/{total}: conc {concurrency} repeat {repeat} variant {}",
                        samples.len() + 1,
                        variant.id()
                    ),
                );
                let envoy =
                    rig.start_envoy(variant, &options.wasm, concurrency, false, &format!("repeat-{repeat}")).await?;
                let load = ClosedLoop {
                    target: Target::new(envoy.envoy.listener()),
                    connections: (CONNECTIONS_PER_WORKER * concurrency).max(16),
                    duration: Duration::from_millis(options.load_ms),
                    warm_up: Duration::ZERO,
                    headers: Some(overhead::user_ids()),
                };
                let report =
                    loadgen::run_on_own_thread("loadgen-footprint", move || loadgen::closed_loop(load)).await??;
                ensure!(
                    report.outcomes.answered > 0,
                    "{} at concurrency {concurrency}: no request answered (first error {:?})",
                    variant.label(),
                    report.outcomes.first_error
                );
                let status_path = format!("/proc/{}/status", envoy.pid);
                let status = std::fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
                let vm_rss_kib = status_kib(&status, "VmRSS").with_context(|| format!("no VmRSS in {status_path}"))?;
                let admin = envoy.envoy.admin();
                let wasm_stats = match http::get(admin, "/stats?filter=wasm").await {
                    Ok(response) if response.status.is_success() => wasm_stats(&response.text()),
                    _ => BTreeMap::new(),
                };
                let admin_memory = http::get_json(admin, "/memory").await.ok();
                samples.push(MemorySample {
                    variant,
                    concurrency,
                    repeat,
                    vm_rss_kib,
                    vm_hwm_kib: status_kib(&status, "VmHWM"),
                    rss_anon_kib: status_kib(&status, "RssAnon"),
                    rss_file_kib: status_kib(&status, "RssFile"),
                    requests: report.outcomes.answered,
                    wasm_stats,
                    admin_memory,
                });
            }
        }
    }
    report::progress_done();
    Ok(samples)
}

/// Integer stats of Envoy's plain-text `/stats` whose name contains `wasm`.
fn wasm_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            (name.contains("wasm")).then(|| Some((name.to_owned(), value.trim().parse().ok()?))).flatten()
        })
        .collect()
}

fn summarise(samples: &[MemorySample]) -> Vec<MemorySummary> {
    let mut groups: BTreeMap<(Variant, usize), Vec<f64>> = BTreeMap::new();
    for sample in samples {
        groups.entry((sample.variant, sample.concurrency)).or_default().push(sample.vm_rss_kib as f64);
    }
    groups
        .into_iter()
        .filter_map(|((variant, concurrency), mut values)| {
            values.sort_by(f64::total_cmp);
            Some(MemorySummary {
                variant,
                concurrency,
                repeats: values.len(),
                median_vm_rss_kib: nearest_rank(&values, 50.0)?,
                min_vm_rss_kib: *values.first()?,
                max_vm_rss_kib: *values.last()?,
            })
        })
        .collect()
}

/// Least-squares line through `variant`'s medians; `None` with fewer than
/// two concurrencies.
fn fit(variant: Variant, summaries: &[MemorySummary]) -> Option<MemoryFit> {
    let points: Vec<(f64, f64)> = summaries
        .iter()
        .filter(|summary| summary.variant == variant)
        .map(|summary| (summary.concurrency as f64, summary.median_vm_rss_kib))
        .collect();
    let count = points.len() as f64;
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / count;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / count;
    let spread_x: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    if points.len() < 2 || spread_x == 0.0 {
        return None;
    }
    let slope = points.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum::<f64>() / spread_x;
    Some(MemoryFit {
        variant,
        slope_kib_per_worker: slope,
        intercept_kib: mean_y - slope * mean_x,
        points: points.len(),
    })
}

fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1_024.0)
}

/// The memory table: median `VmRSS` (min–max) by concurrency.
pub fn table(result: &FootprintResult) -> String {
    let mut out = String::from(
        "| concurrency | (a) native VmRSS MiB | (d) canary filter VmRSS MiB | (d) − (a) MiB |\n|---:|---:|---:|---:|\n",
    );
    for &concurrency in &result.settings.options.concurrencies {
        let cell = |variant: Variant| {
            result
                .summaries
                .iter()
                .find(|summary| summary.variant == variant && summary.concurrency == concurrency)
                .map_or_else(
                    || "–".to_owned(),
                    |summary| {
                        format!(
                            "{} [{}–{}]",
                            mib(summary.median_vm_rss_kib),
                            mib(summary.min_vm_rss_kib),
                            mib(summary.max_vm_rss_kib)
                        )
                    },
                )
        };
        let difference = result.wasm_over_native_kib.get(&concurrency).map_or_else(|| "–".to_owned(), |kib| mib(*kib));
        let _ = writeln!(out, "| {concurrency} | {} | {} | {difference} |", cell(Variant::A), cell(Variant::DRandom));
    }
    out
}

/// The lines under the table: module sizes and the per-worker figures.
pub fn figures(result: &FootprintResult) -> String {
    let mut out = String::new();
    for (name, module) in &result.wasm_modules {
        let _ = writeln!(
            out,
            "- wasm module {name}: {} bytes",
            module.size_bytes.map_or_else(|| "unknown".to_owned(), |bytes| bytes.to_string())
        );
    }
    for fit in &result.fits {
        let _ = writeln!(
            out,
            "- {}: {} MiB per added worker (least squares over {} concurrencies; {} MiB at 0 workers)",
            fit.variant.label(),
            mib(fit.slope_kib_per_worker),
            fit.points,
            mib(fit.intercept_kib)
        );
    }
    if let Some(per_worker) = result.per_worker_vm_kib {
        let _ = writeln!(out, "- per-worker wasm VM memory, (d) slope − (a) slope: {} MiB", mib(per_worker));
    }
    out
}

/// The whole result in Markdown.
pub fn markdown(result: &FootprintResult) -> String {
    let mut out = String::from("# Footprint (Envoy side)\n\n");
    out.push_str(&result.context.markdown_preamble());
    let artifacts = &result.context.artifacts;
    let _ = writeln!(out, "- envoy: {}", artifacts.envoy_version.as_deref().unwrap_or("unknown"));
    let _ = writeln!(
        out,
        "- source: {}{}",
        artifacts.git_commit.as_deref().unwrap_or("unknown"),
        if artifacts.git_dirty == Some(true) { " (with uncommitted changes)" } else { "" }
    );
    let options = &result.settings.options;
    let _ = writeln!(
        out,
        "- per (variant, concurrency): {} fresh Envoys, each {} ms of closed-loop load, then `VmRSS` from \
         `/proc/PID/status`; (d) is the canary filter, random, with the analyzer reachable\n",
        options.repeats, options.load_ms
    );
    out.push_str(&figures(result));
    out.push('\n');
    out.push_str(&table(result));
    if let Some(sample) = result.samples.iter().find(|sample| sample.variant == Variant::DRandom) {
        let _ = writeln!(
            out,
            "\nEnvoy's wasm stats (first (d) sample, concurrency {}): {:?}",
            sample.concurrency, sample.wasm_stats
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_and_stats() {
        let stats = "wasm.envoy.wasm.runtime.v8.active: 3\nwasm.envoy.wasm.runtime.v8.created: 3\nhttp.x: 1\n\
                     wasm.x.histogram: P0(nan,1)\n";
        assert_eq!(
            wasm_stats(stats),
            BTreeMap::from([
                ("wasm.envoy.wasm.runtime.v8.active".to_owned(), 3),
                ("wasm.envoy.wasm.runtime.v8.created".to_owned(), 3)
            ])
        );
    }

    fn summary(variant: Variant, concurrency: usize, median_vm_rss_kib: f64) -> MemorySummary {
        MemorySummary {
            variant,
            concurrency,
            repeats: 1,
            median_vm_rss_kib,
            min_vm_rss_kib: median_vm_rss_kib,
            max_vm_rss_kib: median_vm_rss_kib,
        }
    }

    #[test]
    fn fits_the_slope_per_worker() {
        let summaries = [
            summary(Variant::DRandom, 1, 100_000.0),
            summary(Variant::DRandom, 2, 101_500.0),
            summary(Variant::DRandom, 4, 104_500.0),
            summary(Variant::A, 1, 70_000.0),
        ];
        let fit = fit(Variant::DRandom, &summaries).expect("three points");
        assert!((fit.slope_kib_per_worker - 1_500.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.intercept_kib - 98_500.0).abs() < 1e-6, "{fit:?}");
        assert!(super::fit(Variant::A, &summaries).is_none(), "one point has no slope");
    }

    #[test]
    fn summarises_by_median() {
        let sample = |vm_rss_kib| MemorySample {
            variant: Variant::A,
            concurrency: 2,
            repeat: 1,
            vm_rss_kib,
            vm_hwm_kib: None,
            rss_anon_kib: None,
            rss_file_kib: None,
            requests: 1,
            wasm_stats: BTreeMap::new(),
            admin_memory: None,
        };
        let summaries = summarise(&[sample(3), sample(1), sample(2)]);
        assert_eq!(summaries.len(), 1);
        assert_eq!(
            (summaries[0].median_vm_rss_kib, summaries[0].min_vm_rss_kib, summaries[0].max_vm_rss_kib),
            (2.0, 1.0, 3.0)
        );
    }
}
