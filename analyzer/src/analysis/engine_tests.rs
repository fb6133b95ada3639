use canary_protocol::{LatencyHistogram, SparseLatency};

use super::*;
use crate::analysis::report::GateStatus;
use crate::analysis::settings::Guards;

/// Latency multipliers of a fixed, long-tailed shape around the median.
const SHAPE: [f64; 20] =
    [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4, 1.6, 1.8, 2.0, 2.3, 2.6, 3.0, 3.5, 4.0, 5.0, 6.0];

/// `requests` latencies spread over [`SHAPE`] × `median_ms`.
fn spread(requests: u64, median_ms: f64) -> SparseLatency {
    let mut histogram = LatencyHistogram::new();
    let parts = SHAPE.len() as u64;
    for (i, multiplier) in SHAPE.iter().enumerate() {
        let count = requests / parts + u64::from((i as u64) < requests % parts);
        histogram.record_n_us((median_ms * multiplier * 1_000.0) as u64, count);
    }
    histogram.to_sparse()
}

fn arm(requests: u64, errors: u64, median_ms: f64) -> ArmTick {
    ArmTick { requests, errors, latency_us: spread(requests, median_ms) }
}

fn tick(second: u64, canary: ArmTick, stable: ArmTick) -> Tick {
    Tick { now_ms: second * 1_000, stable, canary, canary_hosts: None }
}

fn reference(median_ms: f64) -> LatencyHistogram {
    let mut histogram = LatencyHistogram::new();
    histogram.merge_sparse(&spread(60_000, median_ms));
    histogram
}

/// An analysis in its first step at 10%, with a stable reference at 50 ms.
fn started(settings: AnalysisSettings) -> Analysis {
    let mut analysis = Analysis::new(settings.clone());
    analysis.start_step(settings, 0.1, Some(&reference(50.0)), 0);
    analysis
}

/// Feeds `ticks` seconds of `make(second)` and returns the first rollback
/// (second, verdict), if any.
fn run(analysis: &mut Analysis, seconds: std::ops::Range<u64>, make: impl Fn(u64) -> Tick) -> Option<(u64, Verdict)> {
    for second in seconds {
        let verdict = analysis.observe(&make(second)).verdict;
        if verdict.is_rollback() {
            return Some((second, verdict));
        }
    }
    None
}

#[test]
fn error_regression_rolls_back_within_seconds() {
    let mut analysis = started(AnalysisSettings::default());
    let rollback = run(&mut analysis, 1..60, |s| tick(s, arm(100, 5, 50.0), arm(900, 1, 50.0)));
    let (second, verdict) = rollback.unwrap();
    assert!(second <= 5, "rolled back at {second} s");
    assert_eq!(verdict.rule(), Some(RULE_ERROR_E_VALUE));
    let summary = verdict.describe();
    assert!(summary.starts_with("canary error rate 5% vs stable 0.1%, e-value "), "{summary}");
    assert!(summary.ends_with(" >= 200"), "{summary}");
    // Final: later healthy ticks do not undo it.
    let later = analysis.observe(&tick(100, arm(100, 0, 50.0), arm(900, 1, 50.0)));
    assert_eq!(later.verdict, verdict);
}

#[test]
fn canary_better_never_rolls_back() {
    let mut analysis = started(AnalysisSettings::default());
    // An hour of canary with no errors and faster responses.
    let rollback = run(&mut analysis, 1..3_600, |s| tick(s, arm(100, 0, 30.0), arm(900, 5, 50.0)));
    assert_eq!(rollback, None);
    let assessment = analysis.assess();
    assert_eq!(assessment.verdict, Verdict::Healthy);
    let errors = assessment.evidence.error_test.unwrap();
    assert!(errors.e_value < 0.01, "{}", errors.e_value);
    assert!(errors.rate_ratio_upper.is_some_and(|upper| upper < 1.0));
}

#[test]
fn same_behaviour_never_rolls_back_and_is_healthy() {
    let mut analysis = started(AnalysisSettings::default());
    // 0.5% errors and a 30 ms median (p95 150 ms) in both arms: inside the gates.
    let rollback = run(&mut analysis, 1..1_800, |s| tick(s, arm(200, 1, 30.0), arm(1_800, 9, 30.0)));
    assert_eq!(rollback, None);
    let assessment = analysis.assess();
    assert_eq!(assessment.verdict, Verdict::Healthy);
    assert!(assessment.gates.all_pass(), "{:?}", assessment.gates);
}

#[test]
fn e_process_multiplies_across_steps() {
    let settings = AnalysisSettings::default();
    // One tick whose factor is suspicious but below 1/α_error = 200.
    let suspicious = || arm(1_000, 15, 50.0);
    let baseline = || arm(9_000, 36, 50.0);
    let mut analysis = started(settings.clone());
    analysis.observe(&tick(1, suspicious(), baseline()));
    let first = analysis.assess().evidence.error_test.unwrap();
    assert!(first.this_step_e_value > 15.0 && first.this_step_e_value < 200.0, "{}", first.this_step_e_value);
    assert!(!analysis.assess().verdict.is_rollback());

    analysis.start_step(settings.clone(), 0.1, Some(&reference(50.0)), 2_000);
    let carried = analysis.assess().evidence.error_test.unwrap();
    assert!((carried.earlier_steps_e_value / first.this_step_e_value - 1.0).abs() < 1e-9);
    assert_eq!(carried.this_step_e_value, 1.0);

    // The same evidence again: neither step alone crosses, the product does.
    let verdict = analysis.observe(&tick(3, suspicious(), baseline())).verdict;
    assert_eq!(verdict.rule(), Some(RULE_ERROR_E_VALUE));
    let product = analysis.assess().evidence.error_test.unwrap();
    assert!((product.e_value / first.this_step_e_value.powi(2) - 1.0).abs() < 1e-9);
    // The regression stays through the next step.
    analysis.start_step(settings, 0.25, None, 4_000);
    assert_eq!(analysis.observe(&tick(5, arm(250, 0, 50.0), arm(750, 0, 50.0))).verdict, verdict);
}

#[test]
fn latency_scale_regression_rolls_back_within_seconds() {
    let mut analysis = started(AnalysisSettings::default());
    let rollback = run(&mut analysis, 1..60, |s| tick(s, arm(100, 0, 75.0), arm(900, 0, 50.0)));
    let (second, verdict) = rollback.unwrap();
    // The first 5 s after the weight change are the latency warm-up.
    let warmup_s = AnalysisSettings::default().latency_warmup_ms / 1_000;
    assert!(second <= warmup_s + 3, "rolled back at {second} s");
    assert_eq!(verdict.rule(), Some(RULE_LATENCY_E_VALUE));
    assert!(verdict.describe().contains("latency e-value"), "{}", verdict.describe());
}

#[test]
fn latency_thresholds_calibrate_from_the_first_stable_traffic() {
    let settings = AnalysisSettings { latency_warmup_ms: 0, ..AnalysisSettings::default() };
    let mut analysis = Analysis::new(settings.clone());
    analysis.start_step(settings, 0.1, None, 0);
    // 300 stable samples: not yet enough to fix the thresholds.
    analysis.observe(&tick(1, arm(33, 0, 50.0), arm(300, 0, 50.0)));
    let latency = analysis.assess().evidence.latency_test.unwrap();
    assert!(!latency.calibrated);
    analysis.observe(&tick(2, arm(33, 0, 50.0), arm(300, 0, 50.0)));
    let latency = analysis.assess().evidence.latency_test.unwrap();
    assert!(latency.calibrated);
    assert_eq!(latency.thresholds.len(), 3);
    // The calibration ticks are not counted by the tests.
    assert!(latency.thresholds.iter().all(|t| t.canary_above == 0 && t.stable_above == 0));
    // Then a slow canary is caught.
    let rollback = run(&mut analysis, 3..60, |s| tick(s, arm(100, 0, 100.0), arm(900, 0, 50.0)));
    assert_eq!(rollback.map(|(_, v)| v.rule().map(str::to_owned)), Some(Some(RULE_LATENCY_E_VALUE.to_owned())));
}

#[test]
fn band_catches_a_shift_when_there_are_no_count_thresholds() {
    let settings = AnalysisSettings { latency_quantiles: Vec::new(), error_test: false, ..AnalysisSettings::default() };
    let mut analysis = started(settings);
    let rollback = run(&mut analysis, 1..120, |s| tick(s, arm(100, 0, 150.0), arm(900, 0, 50.0)));
    let (second, verdict) = rollback.unwrap();
    assert_eq!(verdict.rule(), Some(RULE_LATENCY_BAND));
    assert!(second < 30, "{second}");
}

#[test]
fn error_guard_trips_only_when_sustained() {
    let settings = AnalysisSettings { error_test: false, ..AnalysisSettings::default() };
    // 10% errors in both arms: no relative regression, but above the 5% guard.
    let mut analysis = started(settings.clone());
    let rollback = run(&mut analysis, 1..600, |s| tick(s, arm(100, 10, 50.0), arm(900, 90, 50.0)));
    let (second, verdict) = rollback.unwrap();
    // Breached from the first tick (1 s); held for 2 min at 121 s.
    assert_eq!(second, 121);
    assert!(matches!(&verdict, Verdict::GuardTripped { rule, .. } if rule == "error_rate_above_5pct_for_2m"));

    // A one-minute burst drops out of the window before it has lasted 2 min.
    let mut analysis = started(settings.clone());
    let burst = |s: u64| if s <= 60 { 10 } else { 0 };
    let rollback = run(&mut analysis, 1..600, |s| tick(s, arm(100, burst(s), 50.0), arm(900, 9 * burst(s), 50.0)));
    assert_eq!(rollback, None);

    // A new step restarts the guard.
    let mut analysis = started(settings.clone());
    run(&mut analysis, 1..100, |s| tick(s, arm(100, 10, 50.0), arm(900, 90, 50.0)));
    analysis.start_step(settings, 0.1, Some(&reference(50.0)), 100_000);
    let rollback = run(&mut analysis, 101..300, |s| tick(s, arm(100, 10, 50.0), arm(900, 90, 50.0)));
    assert_eq!(rollback.map(|(s, _)| s), Some(221));
}

#[test]
fn p95_guard_trips_after_five_minutes() {
    let settings = AnalysisSettings { latency_test: false, ..AnalysisSettings::default() };
    let mut analysis = started(settings);
    // Both arms slow (median 300 ms, p95 900 ms): a guard, not a comparison.
    let rollback = run(&mut analysis, 1..1_000, |s| tick(s, arm(100, 0, 300.0), arm(900, 0, 300.0)));
    let (second, verdict) = rollback.unwrap();
    assert_eq!(second, 301);
    assert!(matches!(&verdict, Verdict::GuardTripped { rule, .. } if rule == "p95_above_500ms_for_5m"));
}

#[test]
fn unhealthy_hosts_trip_at_once_above_the_ratio() {
    #[track_caller]
    fn check(healthy: u32, total: u32, tripped: bool, gate: GateStatus) {
        let mut analysis = started(AnalysisSettings::default());
        let mut t = tick(1, arm(100, 0, 50.0), arm(900, 0, 50.0));
        t.canary_hosts = Some(HostHealth { healthy, total });
        let assessment = analysis.observe(&t);
        assert_eq!(assessment.verdict.is_rollback(), tripped, "{healthy}/{total}: {:?}", assessment.verdict);
        assert_eq!(assessment.gates.healthy_hosts.status, gate, "{healthy}/{total}");
        if tripped {
            assert_eq!(assessment.verdict.rule(), Some("unhealthy_hosts_above_50pct"));
        }
    }
    check(1, 4, true, GateStatus::Fail);
    check(2, 4, false, GateStatus::Fail);
    check(4, 4, false, GateStatus::Pass);
    check(0, 0, false, GateStatus::Fail);
    check(9, 4, false, GateStatus::Pass);
}

#[test]
fn gates_pass_fail_and_insufficient() {
    #[track_caller]
    fn check(settings: AnalysisSettings, ticks: &[Tick], expected: [GateStatus; 5]) {
        let mut analysis = started(settings);
        for t in ticks {
            analysis.observe(t);
        }
        let gates = analysis.assess().gates;
        let got: Vec<GateStatus> = gates.iter().map(|(_, gate)| gate.status).collect();
        assert_eq!(got, expected, "{gates:?}");
        assert_eq!(gates.all_pass(), expected.iter().all(|s| matches!(s, GateStatus::Pass | GateStatus::Skipped)));
    }
    use GateStatus::{Fail, Insufficient, Pass, Skipped};
    let defaults = AnalysisSettings::default;
    // The shape's p95 is 5 × the median: 150 ms here, 400 ms for `slow`.
    let healthy = |s: u64| tick(s, arm(100, 0, 30.0), arm(900, 0, 30.0));
    // [min_samples, error_rate, p95, throughput, healthy_hosts]
    check(defaults(), &[], [Insufficient, Insufficient, Insufficient, Insufficient, Skipped]);
    check(
        defaults(),
        &[tick(1, arm(50, 0, 30.0), arm(450, 0, 30.0))],
        [Insufficient, Insufficient, Insufficient, Insufficient, Skipped],
    );
    check(defaults(), &(1..10).map(healthy).collect::<Vec<_>>(), [Pass, Pass, Pass, Pass, Skipped]);
    let mut with_hosts: Vec<Tick> = (1..10).map(healthy).collect();
    with_hosts[8].canary_hosts = Some(HostHealth { healthy: 3, total: 3 });
    check(defaults(), &with_hosts, [Pass, Pass, Pass, Pass, Pass]);
    with_hosts[8].canary_hosts = Some(HostHealth { healthy: 2, total: 3 });
    check(defaults(), &with_hosts, [Pass, Pass, Pass, Pass, Fail]);
    let no_hosts_needed = AnalysisSettings {
        gates: crate::analysis::Gates { require_healthy_hosts: false, ..Default::default() },
        ..defaults()
    };
    check(no_hosts_needed, &with_hosts, [Pass, Pass, Pass, Pass, Skipped]);
    // 2% errors in both arms: no regression, but the gate fails.
    let errors: Vec<Tick> = (1..10).map(|s| tick(s, arm(100, 2, 30.0), arm(900, 18, 30.0))).collect();
    check(defaults(), &errors, [Pass, Fail, Pass, Pass, Skipped]);
    let slow: Vec<Tick> = (1..10).map(|s| tick(s, arm(100, 0, 80.0), arm(900, 0, 80.0))).collect();
    check(defaults(), &slow, [Pass, Pass, Fail, Pass, Skipped]);
    // Canary gets half its weight's share.
    let starved: Vec<Tick> = (1..10).map(|s| tick(s, arm(50, 0, 30.0), arm(950, 0, 30.0))).collect();
    check(defaults(), &starved, [Pass, Pass, Pass, Fail, Skipped]);
}

#[test]
fn missing_traffic_is_insufficient_never_healthy() {
    let mut analysis = Analysis::new(AnalysisSettings::default());
    let verdict = analysis.observe(&tick(1, arm(100, 0, 50.0), arm(900, 0, 50.0))).verdict;
    assert_eq!(verdict, Verdict::InsufficientData { reason: "no step started".to_owned() });

    let mut analysis = started(AnalysisSettings::default());
    let verdict = analysis.observe(&tick(1, arm(40, 0, 50.0), arm(360, 0, 50.0))).verdict;
    assert_eq!(
        verdict,
        Verdict::InsufficientData { reason: "canary served 40 of the 100 requests a step needs".to_owned() }
    );
    assert_eq!(analysis.observe(&tick(2, arm(100, 0, 50.0), arm(900, 0, 50.0))).verdict, Verdict::Healthy);
    // The canary stops receiving traffic for a minute.
    let mut verdict = Verdict::Healthy;
    for second in 3..70 {
        verdict = analysis.observe(&tick(second, ArmTick::default(), arm(1_000, 0, 50.0))).verdict;
    }
    assert_eq!(verdict, Verdict::InsufficientData { reason: "no canary traffic in the last minute".to_owned() });
    for second in 70..140 {
        verdict = analysis.observe(&Tick { now_ms: second * 1_000, ..Tick::default() }).verdict;
    }
    assert_eq!(verdict, Verdict::InsufficientData { reason: "no traffic in the last minute".to_owned() });
}

#[test]
fn state_round_trips_through_json_and_resumes_identically() {
    let settings = AnalysisSettings::default();
    let mut analysis = Analysis::new(settings.clone());
    analysis.start_step(settings.clone(), 0.1, None, 0);
    let make = |s: u64| {
        let mut t = tick(s, arm(100 + s % 7, s % 3, 50.0 + (s % 5) as f64), arm(900, 1, 50.0));
        t.canary_hosts = s.is_multiple_of(2).then_some(HostHealth { healthy: 3, total: 3 });
        t
    };
    run(&mut analysis, 1..90, make);
    analysis.start_step(settings, 0.25, Some(&reference(52.0)), 90_000);
    run(&mut analysis, 90..150, make);

    let json = serde_json::to_string(&analysis).unwrap();
    let mut restored: Analysis = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&restored).unwrap(), json);
    assert_eq!(restored.last_assessment(), analysis.last_assessment());
    for second in 150..400 {
        assert_eq!(restored.observe(&make(second)), analysis.observe(&make(second)), "at {second} s");
    }
    let assessment_json = serde_json::to_string(&analysis.assess()).unwrap();
    let back: Assessment = serde_json::from_str(&assessment_json).unwrap();
    assert_eq!(back, analysis.assess());
}

#[test]
fn verdict_serialises_with_a_kind_tag() {
    let verdict = Verdict::Regression { rule: RULE_ERROR_E_VALUE.to_owned(), summary: "s".to_owned() };
    assert_eq!(
        serde_json::to_string(&verdict).unwrap(),
        r#"{"kind":"regression","rule":"error_rate_e_value","summary":"s"}"#
    );
    assert_eq!(serde_json::to_string(&Verdict::Healthy).unwrap(), r#"{"kind":"healthy"}"#);
}

#[test]
fn hostile_input_neither_panics_nor_poisons_the_state() {
    let bad_settings = AnalysisSettings {
        alpha: f64::NAN,
        latency_quantiles: vec![f64::NAN, -1.0, 2.0, 0.5],
        guards: Guards { max_error_rate: f64::NAN, max_p95_ms: f64::NAN, ..Guards::default() },
        ..AnalysisSettings::default()
    };
    assert!(bad_settings.validate().is_err());
    let mut analysis = Analysis::new(bad_settings.clone());
    analysis.start_step(bad_settings.clone(), f64::NAN, Some(&LatencyHistogram::new()), u64::MAX);
    let hostile = [
        Tick {
            now_ms: 5,
            canary: ArmTick {
                requests: 3,
                errors: 1_000,
                latency_us: SparseLatency { buckets: vec![(u32::MAX, 5), (10, 0), (20, u64::MAX)] },
            },
            stable: ArmTick { requests: u64::MAX, errors: u64::MAX, latency_us: spread(100, 1e12) },
            canary_hosts: Some(HostHealth { healthy: 7, total: 0 }),
        },
        Tick { now_ms: 0, ..Tick::default() },
        Tick { now_ms: u64::MAX, canary: arm(u64::MAX, u64::MAX, 50.0), ..Tick::default() },
    ];
    for t in &hostile {
        let assessment = analysis.observe(t);
        let json = serde_json::to_string(&assessment).unwrap();
        let _: Assessment = serde_json::from_str(&json).unwrap();
    }
    analysis.start_step(bad_settings, 1.0, None, 0);
    for t in &hostile {
        analysis.observe(t);
    }
    let json = serde_json::to_string(&analysis).unwrap();
    let _: Analysis = serde_json::from_str(&json).unwrap();
}

#[test]
fn settings_validation_names_the_field() {
    assert_eq!(AnalysisSettings::default().validate(), Ok(()));
    #[track_caller]
    fn check(settings: AnalysisSettings, field: &str) {
        assert_eq!(settings.validate().map_err(|e| e.field), Err(field));
    }
    let d = AnalysisSettings::default;
    check(AnalysisSettings { alpha: 0.0, ..d() }, "alpha");
    check(AnalysisSettings { latency_quantiles: vec![0.5, 1.0], ..d() }, "latencyQuantiles");
    check(
        AnalysisSettings { guards: Guards { max_error_rate: 1.5, ..Guards::default() }, ..d() },
        "guards.maxErrorRate",
    );
    check(
        AnalysisSettings { gates: crate::analysis::Gates { max_p95_ms: 0.0, ..Default::default() }, ..d() },
        "gates.maxP95",
    );
    let err = AnalysisSettings { alpha: 2.0, ..d() }.validate().unwrap_err();
    assert_eq!(err.to_string(), "analysis.alpha: 2 is not in (0, 1)");
}

#[test]
fn alpha_split_follows_the_enabled_tests() {
    #[track_caller]
    fn check(error_test: bool, latency_test: bool, expected: [f64; 3]) {
        let settings = AnalysisSettings { error_test, latency_test, ..AnalysisSettings::default() };
        let budget = AlphaBudget::new(&settings, 1);
        let got = [budget.error, budget.latency, budget.band_total];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-15, "{got:?} vs {expected:?}");
        }
        assert!((budget.band_step - budget.band_total / 2.0).abs() < 1e-15);
    }
    check(true, true, [0.005, 0.004, 0.001]);
    check(true, false, [0.01, 0.0, 0.0]);
    check(false, true, [0.0, 0.008, 0.002]);
    check(false, false, [0.0, 0.0, 0.0]);
}

#[test]
fn error_evidence_reports_a_confidence_sequence_for_the_ratio() {
    let mut analysis = started(AnalysisSettings::default());
    for second in 1..=600 {
        // Canary 0.3% vs stable 0.1%: the ratio is 3.
        let canary_errors = u64::from(second % 10 < 3);
        analysis.observe(&tick(second, arm(100, canary_errors, 50.0), arm(900, 1, 50.0)));
    }
    let errors = analysis.assess().evidence.error_test.unwrap();
    let (lower, upper) = (errors.rate_ratio_lower.unwrap(), errors.rate_ratio_upper.unwrap());
    assert!(lower < 3.0 && 3.0 < upper, "{lower} {upper}");
    let (dl, du) = (errors.rate_difference_lower.unwrap(), errors.rate_difference_upper.unwrap());
    assert!(dl < 0.002 && 0.002 < du, "{dl} {du}");
    assert_eq!(errors.canary_share, Some(0.1));
    assert_eq!(errors.threshold, 200.0);
}

#[test]
fn a_slow_start_after_a_weight_change_is_not_a_regression() {
    // New connections make the canary slower for its first seconds at a new
    // weight (seen with real Envoy); that is left out of the latency tests.
    let mut analysis = started(AnalysisSettings::default());
    let rollback = run(&mut analysis, 1..120, |s| {
        let canary_ms = if s <= 4 { 100.0 } else { 50.0 };
        tick(s, arm(100, 0, canary_ms), arm(900, 0, 50.0))
    });
    assert_eq!(rollback, None);
    // Without the warm-up the same slow start is acted on.
    let settings = AnalysisSettings { latency_warmup_ms: 0, ..AnalysisSettings::default() };
    let mut analysis = started(settings);
    let rollback = run(&mut analysis, 1..120, |s| {
        let canary_ms = if s <= 4 { 100.0 } else { 50.0 };
        tick(s, arm(100, 0, canary_ms), arm(900, 0, 50.0))
    });
    assert_eq!(rollback.and_then(|(_, v)| v.rule().map(str::to_owned)), Some(RULE_LATENCY_E_VALUE.to_owned()));
}

#[test]
fn a_latency_shift_within_the_tolerance_is_not_acted_on() {
    // 3% slower everywhere on a smooth (lognormal) distribution: about 5-15%
    // more requests above each threshold, under the 25% tolerance, so
    // evidence does not build over ten minutes.
    let smooth_tick = |s: u64, canary_ms: f64| Tick {
        now_ms: s * 1_000,
        canary: ArmTick { requests: 100, errors: 0, latency_us: lognormal(100, canary_ms) },
        stable: ArmTick { requests: 900, errors: 0, latency_us: lognormal(900, 50.0) },
        canary_hosts: None,
    };
    let mut reference_histogram = LatencyHistogram::new();
    reference_histogram.merge_sparse(&lognormal(60_000, 50.0));
    let start = |settings: AnalysisSettings| {
        let mut analysis = Analysis::new(settings.clone());
        analysis.start_step(settings, 0.1, Some(&reference_histogram), 0);
        analysis
    };
    let mut analysis = start(AnalysisSettings::default());
    assert_eq!(run(&mut analysis, 1..600, |s| smooth_tick(s, 51.5)), None);
    // With no tolerance the same shift is a (real, small) regression.
    let mut analysis = start(AnalysisSettings { latency_tolerance: 0.0, ..AnalysisSettings::default() });
    let rollback = run(&mut analysis, 1..600, |s| smooth_tick(s, 51.5));
    assert!(rollback.is_some(), "a 3% shift is detected when no tolerance is allowed");
}

/// `requests` latencies at evenly spaced quantiles of a lognormal with the
/// given median and σ = 0.5: a smooth distribution, unlike [`spread`].
fn lognormal(requests: u64, median_ms: f64) -> SparseLatency {
    use statrs::distribution::{ContinuousCDF, Normal};
    let normal = Normal::standard();
    let mut histogram = LatencyHistogram::new();
    for i in 0..requests {
        let quantile = (i as f64 + 0.5) / requests as f64;
        let latency_ms = median_ms * (0.5 * normal.inverse_cdf(quantile)).exp();
        histogram.record_us((latency_ms * 1_000.0) as u64);
    }
    histogram.to_sparse()
}
