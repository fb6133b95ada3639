use super::*;

fn yaml(text: &str) -> Result<RolloutSpec, SpecError> {
    RolloutSpec::parse(text.as_bytes(), SpecFormat::Yaml)
}

#[test]
fn a_full_spec_resolves_with_step_overrides_on_top_of_the_defaults() {
    let spec = yaml(
        "
name: payment-service
canaryVersion: v1.5.0
stableVersion: v1.4.0
failurePolicy: pause
analysis:
  alpha: 0.02
  minCanaryRequests: 50
  guards: {maxErrorRate: 0.1, maxErrorRateFor: 30s, maxP95: 1.5s, maxP95For: 1m, maxUnhealthyHostRatio: 0.25}
  gates: {maxErrorRate: 0.02, maxP95: 250ms, minThroughputRatio: 0.8, requireHealthyHosts: false}
steps:
  - setWeight: 0.5
  - pause: {duration: 90s, analysis: {minCanaryRequests: 500, gates: {maxP95: 300ms}}}
  - pause: {untilApproved: true}
  - setWeight: 100
",
    )
    .expect("valid");
    assert_eq!(spec.name, "payment-service");
    assert_eq!(spec.stable_version.as_deref(), Some("v1.4.0"));
    assert_eq!((spec.strategy, spec.failure_policy), (Strategy::Canary, FailurePolicy::Pause));
    assert_eq!(spec.analysis.alpha, 0.02);
    assert_eq!(spec.analysis.guards.max_error_rate_for_ms, 30_000);
    assert_eq!(spec.analysis.guards.max_p95_ms, 1_500.0);
    assert!(!spec.analysis.gates.require_healthy_hosts);
    assert_eq!(spec.steps[0], Step::SetWeight { weight_bp: 50 });
    let Step::Pause { wait, analysis } = &spec.steps[1] else { panic!("a pause: {:?}", spec.steps[1]) };
    assert_eq!(*wait, PauseWait::Duration { duration_ms: 90_000 });
    assert_eq!(analysis.min_canary_requests, 500, "the step's override");
    assert_eq!(analysis.gates.max_p95_ms, 300.0, "the step's override");
    assert_eq!(analysis.gates.max_error_rate, 0.02, "the spec's default");
    assert_eq!(analysis.alpha, 0.02, "the spec's default");
    assert!(matches!(spec.steps[2], Step::Pause { wait: PauseWait::UntilApproved, .. }));
}

#[test]
fn json_and_yaml_give_the_same_spec() {
    let from_json = RolloutSpec::parse(
        br#"{"canaryVersion": "v2", "steps": [{"setWeight": 10}, {"pause": {"duration": "30s"}}]}"#,
        SpecFormat::Json,
    )
    .expect("json");
    let from_yaml = yaml("canaryVersion: v2\nsteps:\n  - setWeight: 10\n  - pause: {duration: 30s}\n").expect("yaml");
    assert_eq!(from_json, from_yaml);
    assert_eq!(from_json.name, "v2", "the version names an unnamed rollout");
}

#[test]
fn the_defaults_are_the_briefs() {
    let spec = yaml("canaryVersion: v2").expect("valid");
    assert_eq!(spec.strategy, Strategy::Canary);
    assert_eq!(spec.failure_policy, FailurePolicy::Rollback);
    let weights: Vec<u16> = spec
        .steps
        .iter()
        .filter_map(|step| match step {
            Step::SetWeight { weight_bp } => Some(*weight_bp),
            _ => None,
        })
        .collect();
    assert_eq!(weights, [1_000, 2_500, 5_000, 10_000]);
    let pauses: Vec<&PauseWait> = spec
        .steps
        .iter()
        .filter_map(|step| match step {
            Step::Pause { wait, .. } => Some(wait),
            _ => None,
        })
        .collect();
    assert_eq!(pauses, [&PauseWait::Duration { duration_ms: 1_800_000 }; 3]);
    let analysis = &spec.analysis;
    assert_eq!((analysis.gates.max_error_rate, analysis.gates.max_p95_ms), (0.01, 200.0));
    assert_eq!((analysis.guards.max_error_rate, analysis.guards.max_error_rate_for_ms), (0.05, 120_000));
    assert_eq!((analysis.guards.max_p95_ms, analysis.guards.max_p95_for_ms), (500.0, 300_000));
    assert_eq!((analysis.guards.max_unhealthy_host_ratio, analysis.gates.min_throughput_ratio), (0.5, 0.9));
}

#[test]
fn blue_green_and_manual_resolve_their_steps() {
    let spec = yaml("canaryVersion: v2\nstrategy: blueGreen\npreChecks: {untilApproved: true}\npostSwitchWatch: 2m")
        .expect("valid");
    assert_eq!(spec.steps[0], Step::PreChecks { until_approved: true, timeout_ms: DEFAULT_PRE_CHECKS_TIMEOUT_MS });
    assert_eq!(spec.steps[1], Step::SetWeight { weight_bp: 10_000 });
    assert!(matches!(spec.steps[2], Step::Pause { wait: PauseWait::Duration { duration_ms: 120_000 }, .. }));
    let spec = yaml("canaryVersion: v2\nstrategy: manual").expect("valid");
    assert!(spec.steps.is_empty());
}

#[test]
fn invalid_specs_name_the_field_and_the_reason() {
    // (spec, field, words in the message)
    let cases: &[(&str, &str, &str)] = &[
        ("name: x", "canaryVersion", "required"),
        ("canaryVersion: ''", "canaryVersion", "printable"),
        ("canaryVersion: 'v 2'", "canaryVersion", "without spaces"),
        ("canaryVersion: 1.5", "canaryVersion", "expected a string"),
        ("canaryVersion: v2\nname: 'has space'", "name", "letters, digits"),
        ("canaryVersion: v2\ncanary: v3", "canary", "unknown field `canary`"),
        ("canaryVersion: v2\nstrategy: rolling", "strategy", "unknown variant `rolling`"),
        ("canaryVersion: v2\nfailurePolicy: ignore", "failurePolicy", "unknown variant"),
        ("canaryVersion: v2\nsteps: []", "steps", "must not be empty"),
        ("canaryVersion: v2\nsteps: [{setWeight: 12.345}]", "steps[0].setWeight", "two decimals"),
        ("canaryVersion: v2\nsteps: [{setWeight: 101}]", "steps[0].setWeight", "0..=100"),
        ("canaryVersion: v2\nsteps: [{setWeight: -1}]", "steps[0].setWeight", "0..=100"),
        ("canaryVersion: v2\nsteps: [{setWeight: ten}]", "steps[0].setWeight", "canary percent"),
        ("canaryVersion: v2\nsteps: [{setWeigth: 10}]", "steps[0].setWeigth", "unknown field"),
        ("canaryVersion: v2\nsteps: [{setWeight: 10, pause: {duration: 1m}}]", "steps[0]", "exactly one"),
        ("canaryVersion: v2\nsteps: [{}]", "steps[0]", "needs setWeight or pause"),
        ("canaryVersion: v2\nsteps: [{setWeight: 5}, {pause: {duration: 30}}]", "steps[1].pause.duration", "30s"),
        ("canaryVersion: v2\nsteps: [{setWeight: 5}, {pause: {duration: 30x}}]", "steps[1].pause.duration", "unit"),
        ("canaryVersion: v2\nsteps: [{setWeight: 5}, {pause: {duration: 200h}}]", "steps[1].pause.duration", "168h"),
        ("canaryVersion: v2\nsteps: [{setWeight: 5}, {pause: {}}]", "steps[1].pause", "untilApproved"),
        (
            "canaryVersion: v2\nsteps: [{setWeight: 5}, {pause: {duration: 1m, untilApproved: true}}]",
            "steps[1].pause",
            "not both",
        ),
        (
            "canaryVersion: v2\nsteps: [{setWeight: 5}, {pause: {untilApproved: false}}]",
            "steps[1].pause.untilApproved",
            "must be true",
        ),
        ("canaryVersion: v2\nsteps: [{pause: {duration: 1m}}]", "steps[0].pause.duration", "no traffic"),
        (
            "canaryVersion: v2\nsteps: [{setWeight: 5}, {pause: {duration: 1m, analysis: {alpha: 0}}}]",
            "steps[1].pause.analysis.alpha",
            "(0, 0.5]",
        ),
        ("canaryVersion: v2\nanalysis: {minCanaryRequests: 0}", "analysis.minCanaryRequests", "at least 1"),
        ("canaryVersion: v2\nanalysis: {latencyTolerance: -0.5}", "analysis.latencyTolerance", "0..=10"),
        ("canaryVersion: v2\nanalysis: {latencyWarmup: soon}", "analysis.latencyWarmup", ""),
        ("canaryVersion: v2\nanalysis: {guards: {maxErrorRate: 5}}", "analysis.guards.maxErrorRate", "0.05"),
        ("canaryVersion: v2\nanalysis: {gates: {maxP95: 0ms}}", "analysis.gates.maxP95", "longer than 0ms"),
        ("canaryVersion: v2\nanalysis: {latencyQuantiles: [0.5, 1.0]}", "analysis.latencyQuantiles[1]", "(0, 1)"),
        ("canaryVersion: v2\nanalysis: {latencyQuantiles: []}", "analysis.latencyQuantiles", "1 to 5"),
        ("canaryVersion: v2\nanalysis: {guards: {maxP95: fast}}", "analysis.guards.maxP95", "not a duration"),
        ("canaryVersion: v2\nstrategy: blueGreen\nsteps: [{setWeight: 100}]", "steps", "no steps"),
        ("canaryVersion: v2\nstrategy: manual\nsteps: [{setWeight: 1}]", "steps", "PUT /v1/rollout/weight"),
        ("canaryVersion: v2\npreChecks: {untilApproved: true}", "preChecks", "blueGreen"),
        ("canaryVersion: v2\npostSwitchWatch: 1m", "postSwitchWatch", "blueGreen"),
        ("canaryVersion: v2\nstrategy: blueGreen\npreChecks: {timeout: 0s}", "preChecks.timeout", "longer than 0s"),
    ];
    for (text, field, words) in cases {
        let error = yaml(text).expect_err(text);
        assert_eq!(error.field.as_deref(), Some(*field), "{text}: {error}");
        assert!(error.message.contains(words), "{text}: {error:?} lacks {words:?}");
        assert!(!error.syntax, "{text}: a readable spec with a wrong field is not a syntax error");
        assert!(error.to_string().starts_with(field), "{error}");
    }
}

#[test]
fn unreadable_bodies_are_syntax_errors_without_a_field() {
    let cases: &[(&[u8], SpecFormat)] = &[
        (b"{\"canaryVersion\": ", SpecFormat::Json),
        (b"canaryVersion: [unclosed", SpecFormat::Yaml),
        (b"- just\n- a list\n", SpecFormat::Yaml),
        (b"", SpecFormat::Json),
        (b"42", SpecFormat::Json),
    ];
    for (body, format) in cases {
        let error = RolloutSpec::parse(body, *format).expect_err("unreadable");
        assert!(error.syntax, "{error}");
        assert_eq!(error.field, None);
    }
}

#[test]
fn content_types_choose_the_parser() {
    for (content_type, format) in [
        (Some("application/json"), SpecFormat::Json),
        (Some("application/json; charset=utf-8"), SpecFormat::Json),
        (Some("application/vnd.rollout+json"), SpecFormat::Json),
        (Some("application/yaml"), SpecFormat::Yaml),
        (Some("text/yaml"), SpecFormat::Yaml),
        (None, SpecFormat::Yaml),
    ] {
        assert_eq!(SpecFormat::from_content_type(content_type), format, "{content_type:?}");
    }
}

#[test]
fn durations_table() {
    for (text, expected) in [
        ("500ms", Ok(500)),
        ("30s", Ok(30_000)),
        ("2m", Ok(120_000)),
        ("1h", Ok(3_600_000)),
        ("1.5m", Ok(90_000)),
        ("0s", Ok(0)),
        ("168h", Ok(MAX_DURATION_MS)),
        ("30", Err(())),
        ("s", Err(())),
        ("-1s", Err(())),
        ("1d", Err(())),
        ("169h", Err(())),
    ] {
        assert_eq!(parse_duration_ms(text).map_err(|_| ()), expected, "{text}");
    }
    for (ms, text) in
        [(0, "0s"), (500, "500ms"), (30_000, "30s"), (1_800_000, "30m"), (7_200_000, "2h"), (1_500, "1.5s")]
    {
        assert_eq!(format_duration_ms(ms), text);
    }
}

/// The examples shipped in `envoy-config/rollouts/` are specs users copy:
/// each must parse.
#[test]
fn every_shipped_example_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy-config/rollouts");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display())) {
        let path = entry.expect("dir entry").path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()).map(str::to_owned) else { continue };
        if !(name.ends_with(".yaml") || name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let spec = RolloutSpec::parse_file_text(&name, &text).unwrap_or_else(|error| panic!("{name}: {error}"));
        names.push((name, spec.strategy));
    }
    names.sort();
    let strategies: Vec<Strategy> = names.iter().map(|(_, strategy)| *strategy).collect();
    for wanted in [Strategy::Canary, Strategy::BlueGreen, Strategy::Manual] {
        assert!(strategies.contains(&wanted), "no {wanted:?} example among {names:?}");
    }
    assert!(names.len() >= 4, "{names:?}");
}
