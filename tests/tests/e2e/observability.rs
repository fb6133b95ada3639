//! The Grafana dashboard (`envoy-config/grafana/`) and the Prometheus alert
//! rules (`envoy-config/prometheus/`) against what the system exports: every
//! PromQL expression parses, and every metric it names is on a real
//! analyzer's `/metrics` or a real Envoy's `/stats/prometheus` with the
//! filter loaded. A renamed metric thus breaks this test instead of a
//! dashboard panel nobody looks at until an incident.
//!
//! Expressions are parsed with `promql-parser` (GreptimeTeam's port of the
//! Prometheus parser), so function names, keywords, label matchers, strings
//! and durations are told apart exactly as Prometheus does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use canary_tests::rollout::{describe_rollout, phase};
use canary_tests::{BackendOpts, Load};
use promql_parser::label::{METRIC_NAME, MatchOp};
use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, parse_duration, walk_expr};
use serde::Deserialize;
use serde_json::{Value, json};

const DASHBOARD: &str = include_str!("../../../envoy-config/grafana/canary-rollout.json");
const ALERT_RULES: &str = include_str!("../../../envoy-config/prometheus/canary-alerts.yaml");

/// Severities the rules may use; receivers route on them.
const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

/// A Prometheus rule file, as far as alerting rules go. Unknown keys are
/// refused so that a misspelt `for:` or `annotation:` is not silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<AlertRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_duration: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn rule_file() -> RuleFile {
    serde_norway::from_str(ALERT_RULES).expect("canary-alerts.yaml is a Prometheus rule file")
}

fn alert_rules() -> Vec<AlertRule> {
    rule_file().groups.into_iter().flat_map(|group| group.rules).collect()
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("canary-rollout.json is JSON")
}

/// Every PromQL expression of the dashboard, with where it is: panel
/// targets (rows included), annotations and the variables' `label_values`
/// queries (whose metric argument is itself a selector).
fn dashboard_expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().into_iter().flatten().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            found.push((format!("panel {title:?} target {}", target["refId"]), expr.to_owned()));
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = annotation["expr"].as_str() {
            found.push((format!("annotation {}", annotation["name"]), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let Some(query) = variable["query"]["query"].as_str() else { continue };
        let name = &variable["name"];
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
            .unwrap_or_else(|| {
                panic!("variable {name}: only label_values(metric, label) queries are checked: {query}")
            });
        found.push((format!("variable {name}"), selector.to_owned()));
    }
    found
}

/// Grafana's variables replaced by what Grafana would put there, so that the
/// expression is plain PromQL: intervals become durations, `$__range_s`
/// seconds, and any other variable (used inside label matchers) a word.
fn substitute_grafana_variables(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let (name, consumed) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').unwrap_or(braced.len());
                (&braced[..end], end + 2)
            }
            None => {
                let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        out.push_str(match name {
            "__rate_interval" | "__interval" | "__range" => "5m",
            "__range_s" | "__range_ms" | "__interval_ms" => "300",
            _ => "x",
        });
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// The metric names an expression selects, by name or by a `__name__`
/// equality matcher.
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            let selector = match expr {
                Expr::VectorSelector(selector) => selector,
                Expr::MatrixSelector(matrix) => &matrix.vs,
                _ => return Ok(true),
            };
            let by_matcher = selector.matchers.matchers.iter().find(|matcher| matcher.name == METRIC_NAME);
            match (&selector.name, by_matcher) {
                (Some(name), _) => self.0.insert(name.clone()),
                (None, Some(matcher)) if matcher.op == MatchOp::Equal => self.0.insert(matcher.value.clone()),
                _ => return Err(format!("a selector without a fixed metric name: {selector}")),
            };
            Ok(true)
        }
    }
    let parsed = parser::parse(&substitute_grafana_variables(expr))?;
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed)?;
    Ok(names.0)
}

/// The series names of a Prometheus text exposition (`_bucket`, `_sum`,
/// `_count` and quantile series under their own names, as PromQL sees them).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The threshold of a rule `<expression> <comparison> <number>`.
fn threshold_of(rule: &AlertRule) -> f64 {
    match parser::parse(&rule.expr) {
        Ok(Expr::Binary(binary)) if binary.op.is_comparison_operator() => match *binary.rhs {
            Expr::NumberLiteral(number) => number.val,
            other => panic!("{}: the threshold is not a number: {other}", rule.alert),
        },
        other => panic!("{}: not `<expression> <comparison> <number>`: {other:?}", rule.alert),
    }
}

#[test]
fn alert_rules_have_the_standard_shape() {
    let file = rule_file();
    let mut group_names = BTreeSet::new();
    for group in &file.groups {
        assert!(!group.name.is_empty() && group_names.insert(group.name.as_str()), "group name {:?}", group.name);
        assert!(!group.rules.is_empty(), "group {} has no rules", group.name);
    }
    let rules: Vec<&AlertRule> = file.groups.iter().flat_map(|group| &group.rules).collect();
    assert!(rules.len() >= 10, "only {} rules", rules.len());
    let mut seen = BTreeSet::new();
    for rule in rules {
        assert!(seen.insert(rule.alert.as_str()), "alert {} defined twice", rule.alert);
        assert!(
            rule.alert.starts_with("Canary") && rule.alert.chars().all(|c| c.is_ascii_alphanumeric()),
            "{}: alert names are CamelCase with the Canary prefix",
            rule.alert
        );
        if let Err(error) = parser::parse(&rule.expr) {
            panic!("{}: expr does not parse: {error}\n{}", rule.alert, rule.expr);
        }
        // promql-parser refuses a zero duration, which Prometheus takes as "fire at once".
        if !matches!(rule.for_duration.as_str(), "0s" | "0m") {
            parse_duration(&rule.for_duration).unwrap_or_else(|error| panic!("{}: for: {error}", rule.alert));
        }
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(
            severity.is_some_and(|severity| SEVERITIES.contains(&severity)),
            "{}: labels.severity is {severity:?}, expected one of {SEVERITIES:?}",
            rule.alert
        );
        let summary = rule.annotations.get("summary").map(String::as_str).unwrap_or_default();
        assert!(!summary.trim().is_empty(), "{}: annotations.summary is missing", rule.alert);
    }
}

#[test]
fn alert_thresholds_match_the_brief() {
    // (alert, threshold, for, severity) from the brief's "Deployment
    // Monitoring" alerts, its rollback triggers ("error rate > 5% for 2
    // minutes", "latency p95 > 500ms for 5 minutes") and its KPI table.
    let brief = [
        ("CanaryErrorRateHigh", 0.01, "2m", "warning"),
        ("CanaryErrorRateCritical", 0.05, "2m", "critical"),
        ("CanaryLatencyP95High", 0.3, "5m", "warning"),
        ("CanaryLatencyP95Critical", 0.5, "5m", "critical"),
        ("CanaryHostsUnhealthy", 0.5, "2m", "critical"),
        ("CanaryDeploymentSuccessRateBelowTarget", 0.99, "1h", "info"),
        ("CanaryRollbackRateAboveTarget", 0.05, "1h", "info"),
        ("CanaryMeanTimeToRollbackAboveTarget", 300.0, "1h", "info"),
        ("CanaryRolloutDurationAboveTarget", 1800.0, "1h", "info"),
    ];
    let rules = alert_rules();
    for (alert, threshold, for_duration, severity) in brief {
        let rule = rules.iter().find(|rule| rule.alert == alert).unwrap_or_else(|| panic!("no alert {alert}"));
        assert_eq!(threshold_of(rule), threshold, "{alert}: threshold");
        assert_eq!(rule.for_duration, for_duration, "{alert}: for");
        assert_eq!(rule.labels["severity"], severity, "{alert}: severity");
    }
    // The latency rules compare seconds, the unit of the histogram they read.
    for alert in ["CanaryLatencyP95High", "CanaryLatencyP95Critical"] {
        let rule = rules.iter().find(|rule| rule.alert == alert).expect("latency rule");
        assert!(rule.expr.contains("histogram_quantile(0.95,"), "{alert}: {}", rule.expr);
        assert!(rule.expr.contains("canary_request_duration_seconds_bucket"), "{alert}: {}", rule.expr);
    }
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|version| version >= 36), "schemaVersion");
    assert!(dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty()), "uid");
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name}"));
    assert_eq!(
        (&variable("datasource")["type"], &variable("datasource")["query"]),
        (&json!("datasource"), &json!("prometheus"))
    );
    assert_eq!(variable("rollout")["type"], "query");

    let mut ids = BTreeSet::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().expect("panels").iter().collect();
    let mut titles = BTreeSet::new();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "panel {title:?}: duplicate id");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap_or(99), grid["w"].as_u64().unwrap_or(99));
        assert!(x + w <= 24 && grid["h"].as_u64().is_some_and(|h| h > 0), "panel {title:?}: gridPos {grid}");
        if panel["type"] == "row" {
            continue;
        }
        titles.insert(title.to_owned());
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title:?} uses the datasource variable");
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "panel {title:?}: target datasource");
            assert!(target["refId"].is_string(), "panel {title:?}: target without refId");
        }
    }
    // What the brief's dashboard shows, and the issue's KPIs.
    for title in [
        "Phase",
        "Step",
        "Canary weight",
        "Rollout duration",
        "Error rate by version",
        "p95 latency by version",
        "Throughput by version",
        "Version comparison (last 5 minutes)",
        "E-values vs threshold",
        "Weights over time",
        "Workers live and converged",
        "Deployment success rate",
        "Rollback rate",
        "Mean time to rollback",
        "Mean rollout duration",
        "Rollouts per day",
        "Envoy: requests by version",
    ] {
        assert!(titles.contains(title), "no panel {title:?} in {titles:?}");
    }
    for (place, expr) in dashboard_expressions(&dashboard) {
        if let Err(error) = metric_names(&expr) {
            panic!("{place}: {error}\n{expr}");
        }
    }
}

#[test]
fn metric_names_skip_functions_keywords_matchers_and_durations() {
    let check = |expr: &str, expected: &[&str]| {
        let names = metric_names(expr).unwrap_or_else(|error| panic!("{expr}: {error}"));
        assert_eq!(names.iter().map(String::as_str).collect::<Vec<_>>(), expected, "{expr}");
    };
    check(
        "histogram_quantile(0.95, sum by (version, le) (rate(canary_request_duration_seconds_bucket[$__rate_interval])))",
        &["canary_request_duration_seconds_bucket"],
    );
    check(
        r#"sum(rate(a_total{version="canary", class=~"5xx|sum"}[1m])) / ignoring(x) group_left sum(b_total offset 5m)"#,
        &["a_total", "b_total"],
    );
    check(r#"{__name__="by_name", rollout=~"$rollout"} == 1"#, &["by_name"]);
    check("sum(increase(c[$__range])) / ($__range_s / 86400)", &["c"]);
    assert!(metric_names(r#"{__name__=~"canary_.*"}"#).is_err(), "a regex name cannot be checked");
    assert!(metric_names("sum(rate(x[1m])").is_err(), "unbalanced parentheses");
}

/// Canary traffic that keeps the analysis busy without ending the rollout.
fn background_load() -> Load {
    Load::requests(u64::MAX).rate_per_second(150.0).concurrency(4).max_duration(Duration::from_secs(120))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_promql_metric_is_exported_by_the_analyzer_or_envoy() {
    let backend = BackendOpts::default().latency_ms(1);
    let stack =
        super::stack().envoy_host_health().stable(backend.clone()).canary(backend).start().await.expect("stack starts");
    // A rollout that stays at 20% for an hour unless rolled back: the
    // current-rollout gauges and e-values exist while it runs, and the
    // rollback at the end fills the KPI summaries.
    let spec = json!({
        "name": "payment-service",
        "canaryVersion": "v1.5.0",
        "stableVersion": "v1.4.0",
        "analysis": { "minCanaryRequests": 50, "latencyTest": false },
        "steps": [{ "setWeight": 20 }, { "pause": { "duration": "1h" } }, { "setWeight": 100 }],
    });
    stack.start_rollout(&spec).await.expect("rollout starts");
    let load = stack.start_background_load(background_load());

    let deadline = Instant::now() + Duration::from_secs(60);
    let analyzer_text = loop {
        let response = stack.analyzer_call(hyper::Method::GET, "/metrics", None).await.expect("GET /metrics");
        let text = response.text();
        if text.contains("canary_analysis_e_value{") {
            break text;
        }
        assert!(Instant::now() < deadline, "no e-values on /metrics after 60 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let envoy_text = stack.envoy_prometheus().await.expect("envoy /stats/prometheus");
    let report = load.stop().await;
    assert_eq!(report.transport_errors, 0, "{:?}", report.first_error);

    let view = stack.rollback().await.expect("rollback");
    assert_eq!(view["rollout"]["phase"], phase::ROLLED_BACK, "{}", describe_rollout(&view));
    let after_rollback = stack.analyzer_call(hyper::Method::GET, "/metrics", None).await.expect("GET /metrics").text();
    for line in [
        "canary_rollouts_started_total 1",
        "canary_rollouts_completed_total{outcome=\"RolledBack\"} 1",
        "canary_rollout_time_to_rollback_seconds_count 1",
        "canary_rollout_duration_seconds_count{outcome=\"RolledBack\"} 1",
        "canary_rollout_phase{rollout=\"payment-service\",phase=\"RolledBack\"} 1",
    ] {
        assert!(after_rollback.lines().any(|got| got == line), "missing {line:?} in\n{after_rollback}");
    }

    let analyzer: BTreeSet<String> =
        exported_names(&analyzer_text).into_iter().chain(exported_names(&after_rollback)).collect();
    let envoy = exported_names(&envoy_text);
    let mut expressions = dashboard_expressions(&dashboard());
    expressions.extend(alert_rules().into_iter().map(|rule| (format!("alert {}", rule.alert), rule.expr)));
    let mut missing = Vec::new();
    for (place, expr) in &expressions {
        let names = metric_names(expr).unwrap_or_else(|error| panic!("{place}: {error}\n{expr}"));
        missing.extend(
            names
                .into_iter()
                .filter(|name| !analyzer.contains(name) && !envoy.contains(name))
                .map(|name| format!("{place}: {name}")),
        );
    }
    let filter_stats: Vec<&String> = envoy.iter().filter(|name| name.contains("canary_split")).collect();
    // How Envoy names and types the filter's stats (custom wasm stats come
    // without Envoy's `envoy_` prefix).
    let filter_types: Vec<&str> = envoy_text.lines().filter(|line| line.starts_with("# TYPE canary_split")).collect();
    eprintln!("checked {} expressions; the filter's stats on Envoy: {filter_types:#?}", expressions.len());
    assert!(
        missing.is_empty(),
        "metrics nobody exports:\n{}\nanalyzer: {analyzer:?}\nfilter on Envoy: {filter_stats:?}",
        missing.join("\n")
    );
}
