//! `GET /metrics`: the aggregate in Prometheus text format.
//!
//! Metrics are computed at scrape time from the aggregate rather than kept as
//! separate `prometheus` counters, so they can never drift from what the API
//! shows. Request counters come from the persisted totals, so they survive a
//! restart and only ever grow; report counters are per process.
//!
//! `canary_request_duration_seconds` is a Prometheus histogram derived from
//! the shared latency layout. A latency bucket is counted under an `le` edge
//! when its lower bound is at or below the edge. Layout buckets are at most
//! 1/128 of their value wide, so a request counted under `le="x"` took at
//! most `x · (1 + 1/128)`: the edges are exact to within 0.8%. `_sum` is
//! estimated from bucket midpoints, within the same 0.8%.
//!
//! The rollout KPIs are summaries over finished rollouts:
//! `canary_rollout_duration_seconds{outcome}` and
//! `canary_rollout_time_to_rollback_seconds`. Their `_sum` and `_count` come
//! from running totals kept in the history file ([`RolloutKpiTotals`]), so
//! they only grow; their quantiles come from the retained history entries.
//! Rates (success, rollback) are left to PromQL over the counters, where any
//! window can be chosen; `envoy-config/grafana/` and
//! `envoy-config/prometheus/` hold the dashboard and alert rules built on
//! these names.

use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use canary_protocol::latency::bucket_bounds;
use canary_protocol::{StatusCounts, Version};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aggregate::{Aggregate, VersionCounts, WeightsRecord};
use crate::notify::NotifySnapshot;
use crate::rollout::{HistoryEntry, HostCounts, Phase, Rollout, Strategy};

/// `le` edges of `canary_request_duration_seconds`.
pub const DURATION_EDGES_SECONDS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Finished rollouts' outcomes, in the order of the `outcome` label values.
pub const OUTCOMES: [Phase; 3] = [Phase::Promoted, Phase::RolledBack, Phase::Failed];

/// Quantiles of the rollout summaries.
pub const SUMMARY_QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// Why a sync request was refused, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Missing or wrong bearer token.
    Unauthorized,
    /// Body over the size limit.
    TooLarge,
    /// The body is not a valid report.
    Malformed,
}

impl RejectReason {
    pub const ALL: [RejectReason; 3] = [RejectReason::Unauthorized, RejectReason::TooLarge, RejectReason::Malformed];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::TooLarge => "too_large",
            RejectReason::Malformed => "malformed",
        }
    }

    fn index(self) -> usize {
        match self {
            RejectReason::Unauthorized => 0,
            RejectReason::TooLarge => 1,
            RejectReason::Malformed => 2,
        }
    }
}

/// Per-process counters of sync requests, updated without locks.
#[derive(Debug, Default)]
pub struct ReportCounters {
    received_total: AtomicU64,
    duplicate_total: AtomicU64,
    batches_total: AtomicU64,
    rejected_total: [AtomicU64; 3],
}

impl ReportCounters {
    /// A valid report was received (duplicates included).
    pub fn count_received(&self, duplicate: bool) {
        self.received_total.fetch_add(1, Ordering::Relaxed);
        if duplicate {
            self.duplicate_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A valid batch was received; its reports count through
    /// [`Self::count_received`].
    pub fn count_batch(&self) {
        self.batches_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_rejected(&self, reason: RejectReason) {
        self.rejected_total[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ReportCountsSnapshot {
        ReportCountsSnapshot {
            received_total: self.received_total.load(Ordering::Relaxed),
            duplicate_total: self.duplicate_total.load(Ordering::Relaxed),
            batches_total: self.batches_total.load(Ordering::Relaxed),
            rejected_total: RejectReason::ALL
                .map(|reason| (reason, self.rejected_total[reason.index()].load(Ordering::Relaxed))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportCountsSnapshot {
    pub received_total: u64,
    pub duplicate_total: u64,
    pub batches_total: u64,
    pub rejected_total: [(RejectReason, u64); 3],
}

/// Everything a scrape shows, captured under the state lock in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    pub weights: WeightsRecord,
    /// Indexed by [`Version::index`].
    pub versions: [VersionMetrics; 2],
    pub live_workers: usize,
    pub converged_workers: usize,
    pub reports: ReportCountsSnapshot,
    pub rollout: RolloutMetrics,
}

/// The rollout controller's part of a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutMetrics {
    /// The current (or last) rollout.
    pub current: Option<CurrentRollout>,
    pub started_total: u64,
    /// `(outcome, count)` for `Promoted`, `RolledBack`, `Failed`.
    pub completed_total: Vec<(&'static str, u64)>,
    /// The sequential tests of the latest assessment.
    pub e_values: Vec<EValue>,
    pub notifications: NotifySnapshot,
    pub canary_hosts: Option<HostCounts>,
    /// Running totals over every finished rollout: the summaries' `_sum`
    /// and `_count`.
    pub kpi: RolloutKpiTotals,
    /// The retained history, newest first: the summaries' quantiles.
    pub history: Arc<Vec<HistoryEntry>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CurrentRollout {
    pub name: String,
    pub id: String,
    pub canary_version: String,
    /// Empty when the spec names none.
    pub stable_version: String,
    pub strategy: Strategy,
    pub phase: Phase,
    pub step_index: usize,
    pub step_count: usize,
    /// From the start to the end, or to now while it runs.
    pub elapsed_seconds: f64,
    pub step_elapsed_seconds: f64,
}

impl CurrentRollout {
    pub fn of(rollout: &Rollout, now_unix_ms: u64) -> CurrentRollout {
        let end_unix_ms = rollout.ended_at_unix_ms.unwrap_or(now_unix_ms);
        let seconds_since = |start_unix_ms: u64| end_unix_ms.saturating_sub(start_unix_ms) as f64 / 1_000.0;
        CurrentRollout {
            name: rollout.spec.name.clone(),
            id: rollout.id.clone(),
            canary_version: rollout.spec.canary_version.clone(),
            stable_version: rollout.spec.stable_version.clone().unwrap_or_default(),
            strategy: rollout.spec.strategy,
            phase: rollout.phase,
            step_index: rollout.step_index,
            step_count: rollout.spec.steps.len(),
            elapsed_seconds: seconds_since(rollout.started_at_unix_ms),
            step_elapsed_seconds: seconds_since(rollout.step_started_at_unix_ms),
        }
    }
}

/// One sequential test of the engine's latest assessment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EValue {
    /// `error_rate` or `latency`.
    pub test: &'static str,
    pub e_value: f64,
    /// 1/α of the test: the rollout rolls back when `e_value` reaches it.
    pub threshold: f64,
}

impl EValue {
    /// The tests present in an assessment (as the engine serializes it); a
    /// test turned off in the spec has no evidence and is left out.
    pub fn of_assessment(assessment: &Value) -> Vec<EValue> {
        [("error_rate", "/evidence/error_test"), ("latency", "/evidence/latency_test")]
            .into_iter()
            .filter_map(|(test, pointer)| {
                let evidence = assessment.pointer(pointer)?;
                let e_value = evidence.get("e_value")?.as_f64()?;
                let threshold = evidence.get("threshold")?.as_f64()?;
                Some(EValue { test, e_value, threshold })
            })
            .collect()
    }
}

/// Running totals of finished rollouts' durations, kept in the history file
/// next to the outcome counters. The history's entries are capped
/// (`history_limit`), so sums over them would shrink when an old entry is
/// dropped; these only grow, as Prometheus expects of a summary's `_sum`
/// and `_count`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutKpiTotals {
    /// Start to end, by outcome.
    pub promoted_duration: DurationTotal,
    pub rolled_back_duration: DurationTotal,
    pub failed_duration: DurationTotal,
    /// Rolled-back rollouts: from the start of the step in which the
    /// rollback was decided (the canary's exposure at the weight that went
    /// bad; for a gradual rollback, the start of the ramp) to the decision
    /// that put the canary at 0%. This is the brief's time to recovery as
    /// the history can tell it; the weight then reaches the filters within
    /// their sync interval.
    pub time_to_rollback: DurationTotal,
}

/// A count and a sum of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationTotal {
    pub count: u64,
    pub sum_ms: u64,
}

impl DurationTotal {
    fn add(&mut self, duration_ms: u64) {
        self.count = self.count.saturating_add(1);
        self.sum_ms = self.sum_ms.saturating_add(duration_ms);
    }
}

impl RolloutKpiTotals {
    /// Totals over the entries a history file kept, for a file written
    /// before the totals existed (older rollouts dropped by the cap are
    /// not in them).
    pub fn from_entries(entries: &[HistoryEntry]) -> RolloutKpiTotals {
        let mut totals = RolloutKpiTotals::default();
        for entry in entries {
            totals.record(entry);
        }
        totals
    }

    /// Adds one finished rollout. Anything but `Promoted` and `RolledBack`
    /// counts as `Failed`, as the history's outcome counters do.
    pub fn record(&mut self, entry: &HistoryEntry) {
        match entry.outcome {
            Phase::Promoted => self.promoted_duration.add(entry.duration_ms),
            Phase::RolledBack => {
                self.rolled_back_duration.add(entry.duration_ms);
                self.time_to_rollback.add(entry.time_to_decision_ms);
            }
            _ => self.failed_duration.add(entry.duration_ms),
        }
    }

    fn duration(&self, outcome: Phase) -> DurationTotal {
        match outcome {
            Phase::Promoted => self.promoted_duration,
            Phase::RolledBack => self.rolled_back_duration,
            _ => self.failed_duration,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionMetrics {
    pub requests_total: u64,
    pub status: StatusCounts,
    /// Cumulative counts at each of [`DURATION_EDGES_SECONDS`].
    pub duration_cumulative: [u64; DURATION_EDGES_SECONDS.len()],
    pub duration_count: u64,
    pub duration_sum_seconds: f64,
}

impl MetricsSnapshot {
    pub fn capture(
        aggregate: &Aggregate,
        published: WeightsRecord,
        reports: ReportCountsSnapshot,
        now_unix_ms: u64,
    ) -> MetricsSnapshot {
        // `convergence` counts workers at the published version or later;
        // filters only ever receive published weights, so that is the same
        // as "applied the current version", as the API defines converged.
        let view = aggregate.convergence(published.weights.weights_version, now_unix_ms);
        MetricsSnapshot {
            weights: published,
            versions: aggregate.totals().each_ref().map(VersionMetrics::from_counts),
            live_workers: view.workers_total,
            converged_workers: view.workers_confirmed,
            reports,
            rollout: RolloutMetrics::default(),
        }
    }
}

impl VersionMetrics {
    fn from_counts(counts: &VersionCounts) -> VersionMetrics {
        let mut duration_cumulative = [0u64; DURATION_EDGES_SECONDS.len()];
        let mut duration_count = 0u64;
        let mut duration_sum_seconds = 0.0;
        let edges_us = DURATION_EDGES_SECONDS.map(|seconds| (seconds * 1e6) as u64);
        for (&(lower_us, upper_us), &count) in bucket_bounds().iter().zip(counts.latency_us.counts()) {
            if count == 0 {
                continue;
            }
            duration_count = duration_count.saturating_add(count);
            duration_sum_seconds += count as f64 * (lower_us + upper_us) as f64 / 2.0 / 1e6;
            for (cumulative, &edge_us) in duration_cumulative.iter_mut().zip(&edges_us) {
                if lower_us <= edge_us {
                    *cumulative = cumulative.saturating_add(count);
                }
            }
        }
        VersionMetrics {
            requests_total: counts.requests,
            status: counts.status,
            duration_cumulative,
            duration_count,
            duration_sum_seconds,
        }
    }
}

/// The Prometheus text exposition of a snapshot.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let families = families(snapshot);
    let mut buffer = Vec::new();
    // Encoding only fails for a family without samples, and every family
    // below has at least one.
    if let Err(error) = TextEncoder::new().encode(&families, &mut buffer) {
        tracing::error!(%error, "cannot encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

fn families(snapshot: &MetricsSnapshot) -> Vec<MetricFamily> {
    let mut families = traffic_families(snapshot);
    families.extend(rollout_families(&snapshot.rollout));
    families
}

/// Rollout, analysis, KPI, notification and host families. A family with
/// no samples is left out, since the text format cannot encode it.
fn rollout_families(rollout: &RolloutMetrics) -> Vec<MetricFamily> {
    let mut families = Vec::new();
    if let Some(current) = &rollout.current {
        families.extend(current_rollout_families(current, &rollout.e_values));
    }
    families.push(family(
        "canary_rollouts_started_total",
        "Rollouts started since the state directory was created.",
        MetricType::COUNTER,
        vec![counter(&[], rollout.started_total as f64)],
    ));
    if !rollout.completed_total.is_empty() {
        let completed = rollout
            .completed_total
            .iter()
            .map(|(outcome, count)| counter(&[("outcome", outcome)], *count as f64))
            .collect();
        families.push(family(
            "canary_rollouts_completed_total",
            "Finished rollouts by outcome (Promoted, RolledBack, Failed).",
            MetricType::COUNTER,
            completed,
        ));
    }
    families.extend(kpi_families(&rollout.kpi, &rollout.history));
    if !rollout.notifications.is_empty() {
        let sent = rollout
            .notifications
            .iter()
            .map(|(format, sent, _)| counter(&[("format", format.as_str())], *sent as f64))
            .collect();
        let dropped = rollout
            .notifications
            .iter()
            .flat_map(|(format, _, dropped)| {
                dropped.iter().map(|(reason, count)| {
                    counter(&[("format", format.as_str()), ("reason", reason.as_str())], *count as f64)
                })
            })
            .collect();
        families.push(family(
            "canary_notifications_sent_total",
            "Webhook notifications delivered, by payload format.",
            MetricType::COUNTER,
            sent,
        ));
        families.push(family(
            "canary_notifications_dropped_total",
            "Webhook notifications given up on, by format and reason.",
            MetricType::COUNTER,
            dropped,
        ));
    }
    if let Some(hosts) = rollout.canary_hosts {
        let unhealthy = hosts.total.saturating_sub(hosts.healthy);
        families.push(family(
            "canary_hosts",
            "Hosts of the canary cluster by Envoy's health checks (absent when not configured).",
            MetricType::GAUGE,
            vec![
                gauge(&[("version", "canary"), ("health", "healthy")], f64::from(hosts.healthy)),
                gauge(&[("version", "canary"), ("health", "unhealthy")], f64::from(unhealthy)),
            ],
        ));
    }
    families
}

/// The current (or last) rollout's gauges, all labelled `rollout`.
fn current_rollout_families(current: &CurrentRollout, e_values: &[EValue]) -> Vec<MetricFamily> {
    let rollout = ("rollout", current.name.as_str());
    let phases = Phase::ALL
        .iter()
        .map(|phase| {
            let value = if *phase == current.phase { 1.0 } else { 0.0 };
            gauge(&[rollout, ("phase", phase.as_str())], value)
        })
        .collect();
    let info = [
        rollout,
        ("id", current.id.as_str()),
        ("canary_version", current.canary_version.as_str()),
        ("stable_version", current.stable_version.as_str()),
        ("strategy", current.strategy.as_str()),
    ];
    let mut families = vec![
        family(
            "canary_rollout_info",
            "The current (or last) rollout: its id, versions and strategy; always 1.",
            MetricType::GAUGE,
            vec![gauge(&info, 1.0)],
        ),
        family(
            "canary_rollout_phase",
            "1 for the current rollout's phase, 0 for the others.",
            MetricType::GAUGE,
            phases,
        ),
        family(
            "canary_rollout_step_index",
            "Index of the current step in the rollout's spec (equal to the step count once all are done).",
            MetricType::GAUGE,
            vec![gauge(&[rollout], current.step_index as f64)],
        ),
        family(
            "canary_rollout_step_count",
            "Number of steps in the rollout's spec.",
            MetricType::GAUGE,
            vec![gauge(&[rollout], current.step_count as f64)],
        ),
        family(
            "canary_rollout_elapsed_seconds",
            "Time since the rollout started (to its end once it is finished).",
            MetricType::GAUGE,
            vec![gauge(&[rollout], current.elapsed_seconds)],
        ),
        family(
            "canary_rollout_step_elapsed_seconds",
            "Time spent in the current step.",
            MetricType::GAUGE,
            vec![gauge(&[rollout], current.step_elapsed_seconds)],
        ),
    ];
    if !e_values.is_empty() {
        let per_test = |value: &dyn Fn(&EValue) -> f64| {
            e_values.iter().map(|e_value| gauge(&[rollout, ("test", e_value.test)], value(e_value))).collect()
        };
        families.push(family(
            "canary_analysis_e_value",
            "Latest e-value of each sequential test.",
            MetricType::GAUGE,
            per_test(&|e_value| e_value.e_value),
        ));
        families.push(family(
            "canary_analysis_e_value_threshold",
            "E-value at which each test rolls the rollout back (1/alpha of the test).",
            MetricType::GAUGE,
            per_test(&|e_value| e_value.threshold),
        ));
    }
    families
}

/// The KPI summaries: `_sum` and `_count` from the persisted totals (they
/// only grow), quantiles over the retained history (a sliding window, as a
/// Prometheus summary's quantiles are).
fn kpi_families(kpi: &RolloutKpiTotals, history: &[HistoryEntry]) -> Vec<MetricFamily> {
    let durations = OUTCOMES
        .iter()
        .map(|&outcome| {
            let recent_ms: Vec<u64> =
                history.iter().filter(|entry| entry.outcome == outcome).map(|entry| entry.duration_ms).collect();
            summary(&[("outcome", outcome.as_str())], kpi.duration(outcome), recent_ms)
        })
        .collect();
    let recent_rollback_ms = history
        .iter()
        .filter(|entry| entry.outcome == Phase::RolledBack)
        .map(|entry| entry.time_to_decision_ms)
        .collect();
    vec![
        family(
            "canary_rollout_duration_seconds",
            "Finished rollouts from start to end, by outcome; quantiles over the retained history.",
            MetricType::SUMMARY,
            durations,
        ),
        family(
            "canary_rollout_time_to_rollback_seconds",
            "Rolled-back rollouts, from the start of the deciding step (or of a gradual ramp) to the canary at 0%; \
             quantiles over the retained history.",
            MetricType::SUMMARY,
            vec![summary(&[], kpi.time_to_rollback, recent_rollback_ms)],
        ),
    ]
}

fn traffic_families(snapshot: &MetricsSnapshot) -> Vec<MetricFamily> {
    let per_version = |value: &dyn Fn(&VersionMetrics) -> f64| {
        Version::ALL
            .iter()
            .map(|version| counter(&[("version", version.as_str())], value(&snapshot.versions[version.index()])))
            .collect()
    };
    let mut responses = Vec::new();
    for version in Version::ALL {
        let status = snapshot.versions[version.index()].status;
        let classes = ["2xx", "3xx", "4xx", "5xx", "no_response"];
        for (class, count) in classes.into_iter().zip(status.as_array()) {
            responses.push(counter(&[("version", version.as_str()), ("class", class)], count as f64));
        }
    }
    let durations =
        Version::ALL.iter().map(|version| duration_histogram(*version, &snapshot.versions[version.index()])).collect();
    let reports = snapshot.reports;
    let rejected = reports
        .rejected_total
        .iter()
        .map(|(reason, count)| counter(&[("reason", reason.as_str())], *count as f64))
        .collect();
    vec![
        family(
            "canary_requests_total",
            "Requests completed, by version.",
            MetricType::COUNTER,
            per_version(&|v| v.requests_total as f64),
        ),
        family(
            "canary_request_errors_total",
            "Requests that failed (5xx or no upstream response), by version.",
            MetricType::COUNTER,
            per_version(&|v| v.status.errors() as f64),
        ),
        family(
            "canary_responses_total",
            "Requests by version and outcome class (2xx includes 1xx; no_response is a reset, timeout or local reply).",
            MetricType::COUNTER,
            responses,
        ),
        family(
            "canary_request_duration_seconds",
            "Request latency by version; edges exact to within 0.8%.",
            MetricType::HISTOGRAM,
            durations,
        ),
        family(
            "canary_weight_ratio",
            "Share of traffic sent to canary, 0..1.",
            MetricType::GAUGE,
            vec![gauge(&[], f64::from(snapshot.weights.weights.canary_weight.bp()) / 10_000.0)],
        ),
        family(
            "canary_weights_version",
            "Version of the weights pushed to filters.",
            MetricType::GAUGE,
            vec![gauge(&[], snapshot.weights.weights.weights_version as f64)],
        ),
        family(
            "canary_reports_received_total",
            "Valid filter reports received, duplicates included.",
            MetricType::COUNTER,
            vec![counter(&[], reports.received_total as f64)],
        ),
        family(
            "canary_reports_duplicate_total",
            "Re-sent filter reports whose counts were not added again.",
            MetricType::COUNTER,
            vec![counter(&[], reports.duplicate_total as f64)],
        ),
        family(
            "canary_report_batches_total",
            "Valid report batches received (POST /v1/filter/sync-batch); their reports count in canary_reports_received_total.",
            MetricType::COUNTER,
            vec![counter(&[], reports.batches_total as f64)],
        ),
        family("canary_reports_rejected_total", "Filter syncs refused, by reason.", MetricType::COUNTER, rejected),
        family(
            "canary_live_workers",
            "Filter workers that reported recently.",
            MetricType::GAUGE,
            vec![gauge(&[], snapshot.live_workers as f64)],
        ),
        family(
            "canary_converged_workers",
            "Live filter workers that have applied the current weights version.",
            MetricType::GAUGE,
            vec![gauge(&[], snapshot.converged_workers as f64)],
        ),
    ]
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut label = proto::LabelPair::default();
            label.set_name((*name).to_owned());
            label.set_value((*value).to_owned());
            label
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut counter = proto::Counter::default();
    counter.set_value(value);
    let mut metric = proto::Metric::from_label(labels(pairs));
    metric.set_counter(counter);
    metric
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut gauge = proto::Gauge::default();
    gauge.set_value(value);
    let mut metric = proto::Metric::from_label(labels(pairs));
    metric.set_gauge(gauge);
    metric
}

/// A summary with the nearest-rank quantiles of `recent_ms` (none when it
/// is empty: a quantile of nothing is not a number worth plotting).
fn summary(pairs: &[(&str, &str)], total: DurationTotal, mut recent_ms: Vec<u64>) -> proto::Metric {
    recent_ms.sort_unstable();
    let quantiles = match recent_ms.len() {
        0 => Vec::new(),
        len => SUMMARY_QUANTILES
            .iter()
            .map(|&q| {
                let rank = ((q * len as f64).ceil() as usize).clamp(1, len);
                let mut quantile = proto::Quantile::default();
                quantile.set_quantile(q);
                quantile.set_value(recent_ms[rank - 1] as f64 / 1_000.0);
                quantile
            })
            .collect(),
    };
    let mut summary = proto::Summary::default();
    summary.set_sample_count(total.count);
    summary.set_sample_sum(total.sum_ms as f64 / 1_000.0);
    summary.set_quantile(quantiles);
    let mut metric = proto::Metric::from_label(labels(pairs));
    metric.set_summary(summary);
    metric
}

fn duration_histogram(version: Version, metrics: &VersionMetrics) -> proto::Metric {
    let buckets = DURATION_EDGES_SECONDS
        .iter()
        .zip(metrics.duration_cumulative)
        .map(|(&edge_seconds, cumulative)| {
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound(edge_seconds);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    let mut histogram = proto::Histogram::default();
    histogram.set_sample_count(metrics.duration_count);
    histogram.set_sample_sum(metrics.duration_sum_seconds);
    histogram.set_bucket(buckets);
    let mut metric = proto::Metric::from_label(labels(&[("version", version.as_str())]));
    metric.set_histogram(histogram);
    metric
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
