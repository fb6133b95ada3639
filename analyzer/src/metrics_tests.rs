//! Tests of `/metrics`: names, labels and values as Prometheus sees them,
//! and the KPI totals' life across the history file.

use canary_protocol::{CanaryWeight, Report, ReportHeader, StatusClass, VersionStats};
use serde_json::json;

use super::*;
use crate::aggregate::AggregateSettings;
use crate::config::Config;
use crate::controller::{HISTORY_FILE_NAME, HistoryFile, ROLLOUT_FORMAT_VERSION};
use crate::rollout::{RolloutSpec, SpecFormat};
use crate::state::AppState;

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

fn render_rollout(rollout: RolloutMetrics) -> String {
    let settings = AggregateSettings { window_seconds: 60, worker_stale_after_ms: 5_000 };
    let aggregate = Aggregate::new(settings, T0_MS);
    let mut snapshot =
        MetricsSnapshot::capture(&aggregate, aggregate.weights(), ReportCounters::default().snapshot(), T0_MS);
    snapshot.rollout = rollout;
    render(&snapshot)
}

fn assert_lines(text: &str, expected_lines: &[&str]) {
    for line in expected_lines {
        assert!(text.lines().any(|got| got == *line), "missing {line:?} in\n{text}");
    }
}

/// A finished rollout of `duration_ms`, decided `time_to_decision_ms` after
/// its last step started.
fn entry(id: &str, outcome: Phase, duration_ms: u64, time_to_decision_ms: u64) -> HistoryEntry {
    HistoryEntry {
        id: id.to_owned(),
        name: "payment-service".to_owned(),
        canary_version: "v1.5.0".to_owned(),
        stable_version: Some("v1.4.0".to_owned()),
        strategy: Strategy::Canary,
        outcome,
        started_at_unix_ms: T0_MS,
        ended_at_unix_ms: T0_MS + duration_ms,
        duration_ms,
        time_to_decision_ms,
        final_step_index: 1,
        final_weight_percent: if outcome == Phase::Promoted { 100.0 } else { 0.0 },
        decisions: Vec::new(),
        decisions_dropped: 0,
    }
}

#[test]
fn the_current_rollout_is_labelled_with_its_name_and_shows_progress_and_e_values() {
    let current = CurrentRollout {
        name: "payment-service".to_owned(),
        id: "payment-service-1".to_owned(),
        canary_version: "v1.5.0".to_owned(),
        stable_version: String::new(),
        strategy: Strategy::Canary,
        phase: Phase::Paused,
        step_index: 3,
        step_count: 7,
        elapsed_seconds: 95.5,
        step_elapsed_seconds: 12.25,
    };
    let assessment = json!({"evidence": {
        "error_test": {"e_value": 3.5, "threshold": 40.0},
        "latency_test": null,
    }});
    let e_values = EValue::of_assessment(&assessment);
    assert_eq!(
        e_values,
        [EValue { test: "error_rate", e_value: 3.5, threshold: 40.0 }],
        "a test turned off is left out"
    );
    let text = render_rollout(RolloutMetrics { current: Some(current), e_values, ..RolloutMetrics::default() });
    assert_lines(
        &text,
        &[
            "canary_rollout_info{rollout=\"payment-service\",id=\"payment-service-1\",canary_version=\"v1.5.0\",\
             stable_version=\"\",strategy=\"canary\"} 1",
            "canary_rollout_phase{rollout=\"payment-service\",phase=\"Paused\"} 1",
            "canary_rollout_phase{rollout=\"payment-service\",phase=\"Progressing\"} 0",
            "canary_rollout_step_index{rollout=\"payment-service\"} 3",
            "canary_rollout_step_count{rollout=\"payment-service\"} 7",
            "canary_rollout_elapsed_seconds{rollout=\"payment-service\"} 95.5",
            "canary_rollout_step_elapsed_seconds{rollout=\"payment-service\"} 12.25",
            "canary_analysis_e_value{rollout=\"payment-service\",test=\"error_rate\"} 3.5",
            "canary_analysis_e_value_threshold{rollout=\"payment-service\",test=\"error_rate\"} 40",
        ],
    );
    assert!(!text.contains("test=\"latency\""), "{text}");
}

#[test]
fn kpi_summaries_count_every_finished_rollout_and_take_quantiles_from_the_history() {
    let history = vec![
        entry("c", Phase::RolledBack, 600_000, 90_000),
        entry("b", Phase::Promoted, 1_800_000, 600_000),
        entry("a", Phase::Promoted, 1_200_000, 600_000),
    ];
    let mut kpi = RolloutKpiTotals::from_entries(&history);
    // One more promoted rollout that the history no longer holds.
    kpi.record(&entry("old", Phase::Promoted, 3_000_000, 1_000));
    let text = render_rollout(RolloutMetrics { kpi, history: Arc::new(history), ..RolloutMetrics::default() });
    assert_lines(
        &text,
        &[
            "# TYPE canary_rollout_duration_seconds summary",
            // Nearest rank over the two retained promoted rollouts.
            "canary_rollout_duration_seconds{outcome=\"Promoted\",quantile=\"0.5\"} 1200",
            "canary_rollout_duration_seconds{outcome=\"Promoted\",quantile=\"0.9\"} 1800",
            "canary_rollout_duration_seconds_sum{outcome=\"Promoted\"} 6000",
            "canary_rollout_duration_seconds_count{outcome=\"Promoted\"} 3",
            "canary_rollout_duration_seconds_sum{outcome=\"RolledBack\"} 600",
            "canary_rollout_duration_seconds_count{outcome=\"RolledBack\"} 1",
            "canary_rollout_duration_seconds_count{outcome=\"Failed\"} 0",
            "# TYPE canary_rollout_time_to_rollback_seconds summary",
            "canary_rollout_time_to_rollback_seconds{quantile=\"0.5\"} 90",
            "canary_rollout_time_to_rollback_seconds_sum 90",
            "canary_rollout_time_to_rollback_seconds_count 1",
        ],
    );
    assert!(!text.contains("outcome=\"Failed\",quantile"), "no quantiles without rollouts: {text}");
}

#[tokio::test]
async fn a_history_file_without_kpi_totals_gets_them_from_its_entries_and_keeps_adding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).expect("state dir");
    let history = HistoryFile {
        format_version: ROLLOUT_FORMAT_VERSION,
        promoted_total: 1,
        rolled_back_total: 1,
        failed_total: 0,
        entries: vec![entry("b", Phase::RolledBack, 300_000, 45_000), entry("a", Phase::Promoted, 900_000, 1_000)],
        kpi: None,
    };
    // A file from a build before the totals: no `kpi` key at all.
    let mut legacy = serde_json::to_value(&history).expect("json");
    legacy.as_object_mut().expect("object").remove("kpi");
    std::fs::write(state_dir.join(HISTORY_FILE_NAME), legacy.to_string()).expect("write history");

    let state = AppState::open(Config::with_state_dir(&state_dir)).expect("a legacy history file loads");
    let text = state.render_metrics();
    assert_lines(
        &text,
        &[
            "canary_rollouts_completed_total{outcome=\"RolledBack\"} 1",
            "canary_rollout_duration_seconds_count{outcome=\"Promoted\"} 1",
            "canary_rollout_duration_seconds_sum{outcome=\"Promoted\"} 900",
            "canary_rollout_time_to_rollback_seconds_sum 45",
            "canary_rollout_time_to_rollback_seconds_count 1",
        ],
    );

    // The next finished rollout adds to the rebuilt totals.
    let spec = "name: payment-service\ncanaryVersion: v1.6.0\nsteps:\n  - setWeight: 10\n  - pause: {duration: 1h}\n";
    let spec = RolloutSpec::parse(spec.as_bytes(), SpecFormat::Yaml).expect("valid spec");
    let controller = state.controller();
    controller.start(&state, spec, "alice", None).await.expect("starts");
    controller.rollback(&state, "alice", Some("bad dashboards"), None).await.expect("rolls back");
    let text = state.render_metrics();
    assert_lines(
        &text,
        &[
            "canary_rollouts_completed_total{outcome=\"RolledBack\"} 2",
            "canary_rollout_duration_seconds_count{outcome=\"RolledBack\"} 2",
            "canary_rollout_time_to_rollback_seconds_count 2",
        ],
    );
    let reloaded: HistoryFile =
        serde_json::from_slice(&std::fs::read(state_dir.join(HISTORY_FILE_NAME)).expect("read")).expect("history");
    let kpi = reloaded.kpi.expect("the totals are written with the history");
    assert_eq!((kpi.time_to_rollback.count, kpi.promoted_duration.sum_ms), (2, 900_000));
}
