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

use std::sync::atomic::{AtomicU64, Ordering};

use canary_protocol::latency::bucket_bounds;
use canary_protocol::{StatusCounts, Version};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

use crate::aggregate::{Aggregate, VersionCounts, WeightsRecord};
use crate::notify::NotifySnapshot;
use crate::rollout::{HostCounts, Phase};

/// `le` edges of `canary_request_duration_seconds`.
pub const DURATION_EDGES_SECONDS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

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

    pub fn count_rejected(&self, reason: RejectReason) {
        self.rejected_total[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ReportCountsSnapshot {
        ReportCountsSnapshot {
            received_total: self.received_total.load(Ordering::Relaxed),
            duplicate_total: self.duplicate_total.load(Ordering::Relaxed),
            rejected_total: RejectReason::ALL
                .map(|reason| (reason, self.rejected_total[reason.index()].load(Ordering::Relaxed))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportCountsSnapshot {
    pub received_total: u64,
    pub duplicate_total: u64,
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
    /// `(test, e-value)` of the latest assessment.
    pub e_values: Vec<(&'static str, f64)>,
    pub notifications: NotifySnapshot,
    pub canary_hosts: Option<HostCounts>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CurrentRollout {
    pub name: String,
    pub phase: Phase,
    pub step_index: usize,
    pub step_elapsed_seconds: f64,
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

/// Rollout, analysis, notification and host families. A family with no
/// samples is left out, since the text format cannot encode it.
fn rollout_families(rollout: &RolloutMetrics) -> Vec<MetricFamily> {
    let mut families = Vec::new();
    if let Some(current) = &rollout.current {
        let phases = Phase::ALL
            .iter()
            .map(|phase| {
                let value = if *phase == current.phase { 1.0 } else { 0.0 };
                gauge(&[("rollout", &current.name), ("phase", phase.as_str())], value)
            })
            .collect();
        families.push(family(
            "canary_rollout_phase",
            "1 for the current rollout's phase, 0 for the others.",
            MetricType::GAUGE,
            phases,
        ));
        families.push(family(
            "canary_rollout_step",
            "Index of the current rollout's step in its spec.",
            MetricType::GAUGE,
            vec![gauge(&[("rollout", &current.name)], current.step_index as f64)],
        ));
        families.push(family(
            "canary_rollout_step_elapsed_seconds",
            "Time spent in the current step.",
            MetricType::GAUGE,
            vec![gauge(&[("rollout", &current.name)], current.step_elapsed_seconds)],
        ));
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
    if !rollout.e_values.is_empty() {
        let e_values = rollout.e_values.iter().map(|(test, value)| gauge(&[("test", test)], *value)).collect();
        families.push(family(
            "canary_analysis_e_value",
            "Latest e-value of each sequential test (rollback at 1/alpha of the test).",
            MetricType::GAUGE,
            e_values,
        ));
    }
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
mod tests {
    use canary_protocol::{CanaryWeight, Report, ReportHeader, StatusClass, VersionStats};

    use super::*;
    use crate::aggregate::AggregateSettings;

    const T0_MS: u64 = 1_764_130_000_000;

    fn scrape() -> String {
        let settings = AggregateSettings { window_seconds: 60, worker_stale_after_ms: 5_000 };
        let mut aggregate = Aggregate::new(settings, T0_MS);
        aggregate.change_weight(CanaryWeight::from_bp(2_500).expect("valid"), T0_MS);
        let mut canary = VersionStats::default();
        // (latency, class): one under each of the first edges, one past the last.
        for (latency_us, class) in [
            (500, StatusClass::Success),
            (1_000, StatusClass::Success),
            (2_000, StatusClass::ServerError),
            (60_000, StatusClass::NoResponse),
            (30_000_000, StatusClass::ClientError),
        ] {
            canary.record(class, latency_us);
        }
        let header = ReportHeader {
            proxy_id: "envoy".into(),
            worker_id: 1,
            seq: 1,
            weights_version: 2,
            counts_weights_version: 2,
            max_hold_ms: 0,
        };
        aggregate.ingest(&Report { header, versions: [VersionStats::default().to_delta(), canary.to_delta()] }, T0_MS);
        let counters = ReportCounters::default();
        counters.count_received(false);
        counters.count_received(true);
        counters.count_rejected(RejectReason::Malformed);
        let snapshot = MetricsSnapshot::capture(&aggregate, aggregate.weights(), counters.snapshot(), T0_MS);
        render(&snapshot)
    }

    #[test]
    fn scrape_has_the_conventional_names_and_values() {
        let text = scrape();
        let expected_lines = [
            "# TYPE canary_requests_total counter",
            "canary_requests_total{version=\"stable\"} 0",
            "canary_requests_total{version=\"canary\"} 5",
            "canary_request_errors_total{version=\"canary\"} 2",
            "canary_responses_total{version=\"canary\",class=\"2xx\"} 2",
            "canary_responses_total{version=\"canary\",class=\"4xx\"} 1",
            "canary_responses_total{version=\"canary\",class=\"no_response\"} 1",
            "# TYPE canary_request_duration_seconds histogram",
            "canary_request_duration_seconds_bucket{version=\"canary\",le=\"0.001\"} 2",
            "canary_request_duration_seconds_bucket{version=\"canary\",le=\"0.0025\"} 3",
            "canary_request_duration_seconds_bucket{version=\"canary\",le=\"0.05\"} 3",
            "canary_request_duration_seconds_bucket{version=\"canary\",le=\"0.1\"} 4",
            "canary_request_duration_seconds_bucket{version=\"canary\",le=\"10\"} 4",
            "canary_request_duration_seconds_bucket{version=\"canary\",le=\"+Inf\"} 5",
            "canary_request_duration_seconds_count{version=\"canary\"} 5",
            "canary_weight_ratio 0.25",
            "canary_weights_version 2",
            "canary_reports_received_total 2",
            "canary_reports_duplicate_total 1",
            "canary_reports_rejected_total{reason=\"malformed\"} 1",
            "canary_reports_rejected_total{reason=\"unauthorized\"} 0",
            "canary_live_workers 1",
            "canary_converged_workers 1",
        ];
        for line in expected_lines {
            assert!(text.lines().any(|got| got == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn duration_sum_is_within_the_documented_error() {
        let text = scrape();
        let sum: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("canary_request_duration_seconds_sum{version=\"canary\"} "))
            .and_then(|value| value.parse().ok())
            .expect("a canary sum");
        let exact = (500 + 1_000 + 2_000 + 60_000 + 30_000_000) as f64 / 1e6;
        assert!((sum - exact).abs() <= exact / 128.0, "{sum} vs {exact}");
    }
}
