//! In-process tests of the rollout API: requests go straight into
//! `app(state)`; the state directory and the controller's tick are real.

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use canary_protocol::{CanaryWeight, Report, ReportHeader, StatusClass, SyncResponse, VersionStats};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

use super::*;
use crate::config::Config;

struct Harness {
    dir: TempDir,
    state: AppState,
    app: crate::Api,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(|_| {})
    }

    fn with(adjust: impl FnOnce(&mut Config)) -> Harness {
        Harness::open(tempfile::tempdir().expect("tempdir"), adjust)
    }

    fn open(dir: TempDir, adjust: impl FnOnce(&mut Config)) -> Harness {
        let mut config = Config::with_state_dir(dir.path().join("state"));
        adjust(&mut config);
        let state = AppState::open(config).expect("state opens");
        let app = crate::Api::new(state.clone());
        Harness { dir, state, app }
    }

    async fn request(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> (StatusCode, Value) {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = self.app.clone().oneshot(builder.body(Body::from(body.to_owned())).expect("request")).await;
        let response = response.expect("infallible");
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    /// A JSON action as `alice`.
    async fn act(&self, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let headers = [("content-type", "application/json"), ("x-canary-actor", "alice")];
        self.request(method, uri, &headers, body).await
    }

    async fn start(&self, yaml: &str) -> (StatusCode, Value) {
        let headers = [
            ("content-type", "application/yaml"),
            ("x-canary-actor", "ci-pipeline"),
            ("x-canary-reason", "release 42"),
        ];
        self.request("POST", "/v1/rollouts", &headers, yaml).await
    }

    async fn rollout(&self) -> Value {
        let (status, value) = self.request("GET", "/v1/rollout", &[], "").await;
        assert_eq!(status, StatusCode::OK);
        value
    }

    async fn history(&self) -> Value {
        let (status, value) = self.request("GET", "/v1/rollouts/history", &[], "").await;
        assert_eq!(status, StatusCode::OK);
        value
    }

    /// Polls `GET /v1/rollout` until `check` holds, for up to 15 s.
    async fn eventually(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let rollout = self.rollout().await;
            if check(&rollout) {
                return rollout;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what} never happened: {rollout:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// 10% for an hour, an approval gate, 50% for an hour, then 100%.
const SLOW: &str = "
name: payment-service
canaryVersion: v1.5.0
stableVersion: v1.4.0
steps:
  - setWeight: 10
  - pause: {duration: 1h}
  - pause: {untilApproved: true}
  - setWeight: 50
  - pause: {duration: 1h}
  - setWeight: 100
";

#[tokio::test]
async fn start_is_201_with_the_rollout_and_a_second_start_is_409() {
    let harness = Harness::new();
    assert_eq!(harness.rollout().await["rollout"], Value::Null, "no rollout yet");
    let (status, body) = harness.start(SLOW).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "payment-service");
    assert_eq!(body["canary_version"], "v1.5.0");
    assert_eq!(body["strategy"], "canary");
    assert_eq!(body["phase"], "Progressing");
    assert_eq!((&body["step_index"], &body["step_count"]), (&json!(1), &json!(6)));
    assert_eq!(body["step"]["kind"], "pause");
    assert_eq!(body["step"]["duration_ms"], 3_600_000);
    assert_eq!(body["weight_percent"], 10.0);
    let decision = &body["decisions"][0];
    assert_eq!((&decision["actor"], &decision["action"]), (&json!("ci-pipeline"), &json!("start")));
    assert_eq!(decision["from_phase"], Value::Null);
    assert!(decision["reason"].as_str().is_some_and(|reason| reason.ends_with(": release 42")), "{decision}");

    let view = harness.rollout().await;
    assert_eq!(view["canary_weight_bp"], 1_000, "the first step's weight is pushed to filters");
    assert_eq!(view["rollout"]["phase"], "Progressing");
    assert!(view["versions"]["canary"].is_object(), "issue 2's view is still there");

    let (status, error) = harness.start(SLOW).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert!(error["error"].as_str().is_some_and(|message| message.contains("promote it or roll it back")), "{error}");
}

#[tokio::test]
async fn invalid_specs_are_refused_naming_the_field_and_start_nothing() {
    let harness = Harness::new();
    // (content type, body, status, field)
    let cases: &[(&str, &str, StatusCode, Value)] = &[
        ("application/yaml", "name: x", StatusCode::UNPROCESSABLE_ENTITY, json!("canaryVersion")),
        (
            "application/yaml",
            "canaryVersion: v2\nsteps: [{setWeight: 12.345}]",
            StatusCode::UNPROCESSABLE_ENTITY,
            json!("steps[0].setWeight"),
        ),
        (
            "application/json",
            r#"{"canaryVersion": "v2", "steps": [{"setWeight": 101}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            json!("steps[0].setWeight"),
        ),
        ("application/yaml", "canaryVersion: v2\ncolour: blue", StatusCode::UNPROCESSABLE_ENTITY, json!("colour")),
        (
            "application/yaml",
            "canaryVersion: v2\nsteps: [{setWeight: 5}, {pause: {duration: soon}}]",
            StatusCode::UNPROCESSABLE_ENTITY,
            json!("steps[1].pause.duration"),
        ),
        (
            "application/yaml",
            "canaryVersion: v2\nstrategy: blueGreen\nsteps: [{setWeight: 100}]",
            StatusCode::UNPROCESSABLE_ENTITY,
            json!("steps"),
        ),
        ("application/json", r#"{"canaryVersion": "#, StatusCode::BAD_REQUEST, Value::Null),
        ("application/yaml", "- a list", StatusCode::BAD_REQUEST, Value::Null),
    ];
    for (content_type, body, status, field) in cases {
        let headers = [("content-type", *content_type)];
        let (got, error) = harness.request("POST", "/v1/rollouts", &headers, body).await;
        assert_eq!(got, *status, "{body}: {error}");
        assert_eq!(error["field"], *field, "{body}: {error}");
        assert!(error["error"].as_str().is_some_and(|message| !message.is_empty()));
    }
    assert_eq!(harness.rollout().await["rollout"], Value::Null, "nothing started");
    assert_eq!(harness.history().await, json!([]));
}

#[tokio::test]
async fn every_action_records_its_actor_and_reason() {
    let harness = Harness::new();
    harness.start(SLOW).await;

    let (status, body) = harness.act("POST", "/v1/rollout/pause", r#"{"reason": "investigating"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["phase"], &body["pause_cause"]), (&json!("Paused"), &json!("manual")));
    let (status, error) = harness.act("POST", "/v1/rollout/pause", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    let (status, body) = harness.act("POST", "/v1/rollout/resume", "{}").await;
    assert_eq!((status, &body["phase"]), (StatusCode::OK, &json!("Progressing")));
    let (status, error) = harness.act("POST", "/v1/rollout/approve", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing awaits approval: {error}");

    let (status, body) = harness.act("POST", "/v1/rollout/promote", r#"{"reason": "manual override"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["phase"], &body["step_index"]), (&json!("AwaitingApproval"), &json!(2)));
    let (status, body) = harness.act("POST", "/v1/rollout/approve", r#"{"reason": "QA signed off"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["phase"], &body["weight_percent"]), (&json!("Progressing"), &json!(50.0)));
    assert_eq!(harness.rollout().await["canary_weight_bp"], 5_000);

    let (status, error) = harness.act("PUT", "/v1/rollout/weight", r#"{"canary_percent": 80}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "steps own the weights: {error}");
    assert!(error["error"].as_str().is_some_and(|message| message.contains("/v1/rollout/promote")), "{error}");

    let (status, body) = harness.act("POST", "/v1/rollout/rollback", r#"{"reason": "p99 looks off"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["canary_weight_bp"], &body["changed"]), (&json!(0), &json!(true)));
    assert_eq!(body["rollout"]["phase"], "RolledBack");

    let view = harness.rollout().await["rollout"].clone();
    let actions: Vec<(&str, &str)> = view["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|decision| (decision["actor"].as_str().unwrap_or(""), decision["action"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        actions,
        [
            ("ci-pipeline", "start"),
            ("alice", "pause"),
            ("alice", "resume"),
            ("alice", "promote"),
            ("alice", "approve"),
            ("alice", "rollback")
        ]
    );
    assert!(view["decisions"][1]["reason"].as_str().is_some_and(|reason| reason.ends_with(": investigating")));
    assert!(view["decisions"][5]["reason"].as_str().is_some_and(|reason| reason.ends_with(": p99 looks off")));

    // Rolled back stays at 0: every action but a new rollout is refused.
    for (method, uri, body) in [
        ("PUT", "/v1/rollout/weight", r#"{"canary_percent": 5}"#),
        ("POST", "/v1/rollout/promote", r#"{"full": true}"#),
        ("POST", "/v1/rollout/resume", ""),
        ("POST", "/v1/rollout/rollback", ""),
    ] {
        let (status, error) = harness.act(method, uri, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {uri}: {error}");
        assert!(error["error"].as_str().is_some_and(|message| message.contains("POST /v1/rollouts")), "{error}");
    }
    assert_eq!(harness.rollout().await["canary_weight_bp"], 0);
    let (status, _) = harness.start(SLOW).await;
    assert_eq!(status, StatusCode::CREATED, "a new rollout may start");
}

#[tokio::test]
async fn the_actor_header_is_checked() {
    let harness = Harness::new();
    harness.start(SLOW).await;
    for actor in ["auto", " ", &"x".repeat(129)] {
        let headers = [("x-canary-actor", actor)];
        let (status, error) = harness.request("POST", "/v1/rollout/pause", &headers, "").await;
        assert_eq!((status, &error["field"]), (StatusCode::BAD_REQUEST, &json!("x-canary-actor")), "{actor:?}");
    }
    let (status, body) = harness.request("POST", "/v1/rollout/pause", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["decisions"].as_array().and_then(|decisions| decisions.last()).map(|d| &d["actor"]),
        Some(&json!("api"))
    );
    let (status, error) = harness.act("POST", "/v1/rollout/resume", r#"{"reason": 5}"#).await;
    assert_eq!((status, &error["field"]), (StatusCode::BAD_REQUEST, &json!("reason")));
    let (status, error) = harness.act("POST", "/v1/rollout/promote", r#"{"fully": true}"#).await;
    assert_eq!((status, &error["field"]), (StatusCode::BAD_REQUEST, &json!("fully")));
    let (status, error) = harness.act("POST", "/v1/rollout/rollback", r#"{"gradual_seconds": 999999}"#).await;
    assert_eq!((status, &error["field"]), (StatusCode::BAD_REQUEST, &json!("gradual_seconds")));
}

#[tokio::test]
async fn commands_without_a_rollout_are_409_but_issue_2_rollback_and_weights_still_work() {
    let harness = Harness::new();
    for uri in ["/v1/rollout/promote", "/v1/rollout/pause", "/v1/rollout/resume", "/v1/rollout/approve"] {
        let (status, error) = harness.act("POST", uri, "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{uri}: {error}");
        assert!(error["error"].as_str().is_some_and(|message| message.contains("POST /v1/rollouts")));
    }
    let (status, body) = harness.act("PUT", "/v1/rollout/weight", r#"{"canary_percent": 20, "reason": "smoke"}"#).await;
    assert_eq!((status, &body["canary_weight_bp"]), (StatusCode::OK, &json!(2_000)));
    assert!(body.get("rollout").is_none(), "issue 2's shape when no rollout holds the weights");
    let (status, body) = harness.act("POST", "/v1/rollout/rollback", "").await;
    assert_eq!((status, &body["canary_weight_bp"]), (StatusCode::OK, &json!(0)));
    let (status, _) = harness.act("POST", "/v1/rollout/rollback", r#"{"gradual_seconds": 10}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "a ramp needs a rollout");
}

#[tokio::test]
async fn history_lists_finished_rollouts_newest_first_and_survives_a_restart() {
    let harness = Harness::new();
    harness.start(SLOW).await;
    let (status, body) = harness.act("POST", "/v1/rollout/promote", r#"{"full": true, "reason": "hotfix"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["phase"], &body["weight_percent"]), (&json!("Promoted"), &json!(100.0)));
    assert_eq!(harness.rollout().await["canary_weight_bp"], 10_000);
    // After promotion the weights are the operators' again.
    let (status, _) = harness.act("PUT", "/v1/rollout/weight", r#"{"canary_percent": 0}"#).await;
    assert_eq!(status, StatusCode::OK);

    harness.start(&SLOW.replace("v1.5.0", "v1.6.0")).await;
    harness.act("POST", "/v1/rollout/rollback", "").await;

    let history = harness.history().await;
    let entries = history.as_array().expect("array");
    assert_eq!(entries.len(), 2);
    assert_eq!((&entries[0]["canary_version"], &entries[0]["outcome"]), (&json!("v1.6.0"), &json!("RolledBack")));
    assert_eq!((&entries[1]["canary_version"], &entries[1]["outcome"]), (&json!("v1.5.0"), &json!("Promoted")));
    for entry in entries {
        for field in ["id", "name", "started_at_unix_ms", "ended_at_unix_ms", "duration_ms", "time_to_decision_ms"] {
            assert!(!entry[field].is_null(), "{field} in {entry}");
        }
    }
    let decisions: Vec<&str> =
        entries[1]["decisions"].as_array().expect("decisions").iter().filter_map(|d| d["action"].as_str()).collect();
    assert_eq!(decisions, ["start", "promote_full"]);

    let metrics = {
        let (_, text) = harness.request("GET", "/metrics", &[], "").await;
        text.as_str().unwrap_or_default().to_owned()
    };
    for line in [
        "canary_rollouts_started_total 2",
        "canary_rollouts_completed_total{outcome=\"Promoted\"} 1",
        "canary_rollouts_completed_total{outcome=\"RolledBack\"} 1",
        "canary_rollout_phase{rollout=\"payment-service\",phase=\"RolledBack\"} 1",
        "canary_rollout_phase{rollout=\"payment-service\",phase=\"Progressing\"} 0",
    ] {
        assert!(metrics.lines().any(|got| got == line), "missing {line:?} in\n{metrics}");
    }

    let Harness { dir, state: _first, app: _ } = harness;
    let restarted = Harness::open(dir, |_| {});
    assert_eq!(restarted.history().await, history, "persisted");
    assert_eq!(restarted.rollout().await["rollout"]["phase"], "RolledBack");
}

/// The newest weights on disk, from the weights file.
fn newest_weights(state_dir: &std::path::Path) -> canary_protocol::Weights {
    let (_, record) = crate::weights_file::WeightsFile::open(state_dir).expect("readable").expect("a weights file");
    record.weights
}

#[tokio::test]
async fn a_rollback_recorded_before_a_crash_keeps_the_weight_at_zero_after_restart() {
    let harness = Harness::new();
    harness.start(SLOW).await;
    harness.act("POST", "/v1/rollout/rollback", "").await;
    let Harness { dir, state: _first, app: _ } = harness;
    // As if kill -9 came after the decision was written but before the
    // weight change reached disk: put the weights back to the version
    // before the rollback, at 10%, in both the state file and the weights
    // file.
    let state_dir = dir.path().join("state");
    let state_path = state_dir.join(crate::store::STATE_FILE_NAME);
    let mut saved: Value = serde_json::from_slice(&std::fs::read(&state_path).expect("state file")).expect("json");
    let rolled_back_version = newest_weights(&state_dir).weights_version;
    let before_rollback = crate::aggregate::WeightsRecord {
        weights: canary_protocol::Weights {
            weights_version: rolled_back_version - 1,
            canary_weight: CanaryWeight::from_bp(1_000).expect("valid"),
        },
        changed_at_unix_ms: 1,
    };
    saved["weights"]["weights_version"] = json!(before_rollback.weights.weights_version);
    saved["weights"]["canary_weight_bp"] = json!(1_000);
    std::fs::write(&state_path, serde_json::to_vec(&saved).expect("json")).expect("write");
    crate::weights_file::WeightsFile::create(&state_dir, &before_rollback).expect("weights file");

    let restarted = Harness::open(dir, |_| {});
    assert_eq!(restarted.state.weights().weights.canary_weight, CanaryWeight::ZERO, "corrected before serving");
    assert_eq!(restarted.rollout().await["canary_weight_bp"], 0);
    let on_disk = newest_weights(&restarted.dir.path().join("state"));
    assert_eq!(on_disk, restarted.state.weights().weights, "the correction is durable before it is published");
}

#[tokio::test]
async fn a_restart_resumes_the_rollout_where_it_was() {
    let harness = Harness::new();
    harness.start(SLOW).await;
    harness.act("POST", "/v1/rollout/promote", "").await;
    let before = harness.rollout().await["rollout"].clone();
    assert_eq!(before["phase"], "AwaitingApproval");
    let Harness { dir, state: _first, app: _ } = harness;

    let restarted = Harness::open(dir, |_| {});
    let after = restarted.rollout().await["rollout"].clone();
    for field in ["id", "phase", "step_index", "weight_percent", "decisions", "step_started_at_unix_ms"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    let (status, body) = restarted.act("POST", "/v1/rollout/approve", "").await;
    assert_eq!((status, &body["weight_percent"]), (StatusCode::OK, &json!(50.0)));
}

#[tokio::test]
async fn gradual_rollback_ramps_to_zero_one_change_a_tick() {
    let harness = Harness::with(|config| config.rollout_tick_ms = 50);
    harness.start("canaryVersion: v2\nsteps: [{setWeight: 40}, {pause: {duration: 1h}}]").await;
    let (status, body) = harness.act("POST", "/v1/rollout/rollback", r#"{"gradual_seconds": 2}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["canary_weight_bp"], 2_000, "the first step down is immediate");
    assert_eq!(body["rollout"]["phase"], "Progressing");
    assert_eq!(body["rollout"]["gradual_rollback"]["from_percent"], 40.0);
    let (status, _) = harness.act("POST", "/v1/rollout/pause", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing but rollback during the ramp");
    let view = harness.eventually("the ramp ends", |view| view["rollout"]["phase"] == "RolledBack").await;
    assert_eq!(view["canary_weight_bp"], 0);
    let last = view["rollout"]["decisions"].as_array().and_then(|decisions| decisions.last()).cloned();
    assert_eq!(last.map(|decision| decision["actor"].clone()), Some(json!("auto")));
}

#[tokio::test]
async fn manual_rollouts_take_weights_from_put_and_record_them() {
    let harness = Harness::new();
    let (status, _) = harness.start("canaryVersion: v2\nstrategy: manual").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) =
        harness.act("PUT", "/v1/rollout/weight", r#"{"canary_percent": 0.5, "reason": "first users"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["canary_weight_bp"], &body["changed"]), (&json!(50), &json!(true)));
    let decision =
        body["rollout"]["decisions"].as_array().and_then(|decisions| decisions.last()).cloned().expect("decision");
    assert_eq!((&decision["actor"], &decision["action"]), (&json!("alice"), &json!("set_weight")));
    let (status, body) = harness.act("POST", "/v1/rollout/promote", "").await;
    assert_eq!((status, &body["phase"]), (StatusCode::OK, &json!("Promoted")));
}

#[tokio::test]
async fn assignment_uses_the_filters_sticky_hash() {
    let harness = Harness::new();
    harness.act("PUT", "/v1/rollout/weight", r#"{"canary_percent": 37.5}"#).await;
    let weight = CanaryWeight::from_bp(3_750).expect("valid");
    for key in ["user-1", "user-42", "alice@example.com", "ünïcode key"] {
        let encoded: String = key
            .bytes()
            .map(|byte| if byte.is_ascii_alphanumeric() { (byte as char).to_string() } else { format!("%{byte:02X}") })
            .collect();
        let (status, body) = harness.request("GET", &format!("/v1/assignment?key={encoded}"), &[], "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["key"], key);
        assert_eq!(body["bucket"], canary_protocol::sticky_bucket(key.as_bytes()));
        assert_eq!(body["version"], canary_protocol::sticky_version(key.as_bytes(), weight).as_str(), "{key}");
        assert_eq!(body["canary_weight_bp"], 3_750);
    }
    let (status, error) = harness.request("GET", "/v1/assignment", &[], "").await;
    assert_eq!((status, &error["field"]), (StatusCode::BAD_REQUEST, &json!("key")));
    let (status, error) = harness.request("GET", "/v1/assignment?user=1", &[], "").await;
    assert_eq!((status, &error["field"]), (StatusCode::BAD_REQUEST, &json!("user")));
}

/// A worker's report of `stable_ok` and `canary` requests at 1 ms, of
/// which `canary_errors` failed, routed under `weights_version`.
fn report(seq: u64, weights_version: u64, stable_ok: u64, canary: u64, canary_errors: u64) -> Vec<u8> {
    let mut stable = VersionStats::default();
    for _ in 0..stable_ok {
        stable.record(StatusClass::Success, 1_000);
    }
    let mut canary_stats = VersionStats::default();
    for index in 0..canary {
        let class = if index < canary_errors { StatusClass::ServerError } else { StatusClass::Success };
        canary_stats.record(class, 1_000);
    }
    let report = Report {
        header: ReportHeader {
            proxy_id: "envoy-test".into(),
            worker_id: 7,
            seq,
            weights_version,
            counts_weights_version: weights_version,
            max_hold_ms: 0,
        },
        versions: [stable.to_delta(), canary_stats.to_delta()],
    };
    let mut bytes = Vec::new();
    report.encode(&mut bytes);
    bytes
}

/// Plays a filter at the current weight until `done` says stop: every
/// 50 ms, `total` requests split by the weight, a share of canary failing.
async fn serve_traffic(harness: &Harness, canary_error_ratio: f64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut weights_version = 0;
    for seq in 1.. {
        let weight_bp = u64::from(harness.state.weights().weights.canary_weight.bp());
        let total = 200;
        let canary = total * weight_bp / 10_000;
        let errors = (canary as f64 * canary_error_ratio).round() as u64;
        let request = Request::builder()
            .method("POST")
            .uri("/v1/filter/sync")
            .body(Body::from(report(seq, weights_version, total - canary, canary, errors)))
            .expect("request");
        let response = harness.app.clone().oneshot(request).await.expect("infallible");
        let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        weights_version = SyncResponse::decode(&bytes).expect("sync response").weights.weights_version;
        let view = harness.rollout().await;
        if done(&view) {
            return view;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {view:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!("the loop returns or panics")
}

const FAST: &str = "
name: fast
canaryVersion: v2
analysis: {minCanaryRequests: 50, guards: {maxErrorRateFor: 1s}}
steps:
  - setWeight: 20
  - pause: {duration: 1s}
  - setWeight: 50
  - pause: {duration: 1s}
  - setWeight: 100
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_by_the_engine_step_by_step() {
    let harness = Harness::with(|config| config.rollout_tick_ms = 100);
    harness.start(FAST).await;
    let view = serve_traffic(&harness, 0.0, |view| view["rollout"]["phase"] != "Progressing").await;
    assert_eq!(view["rollout"]["phase"], "Promoted", "{view:#}");
    let promotions: Vec<&Value> = view["rollout"]["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .filter(|decision| decision["action"] == "promote" && decision["actor"] == "auto")
        .collect();
    assert_eq!(promotions.len(), 2, "{view:#}");
    let (_, metrics) = harness.request("GET", "/metrics", &[], "").await;
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(metrics.contains("canary_analysis_e_value{rollout=\"fast\",test=\"error_rate\"}"), "{metrics}");
    assert!(metrics.contains("canary_rollout_phase{rollout=\"fast\",phase=\"Promoted\"} 1"), "{metrics}");
    assert!(
        promotions
            .iter()
            .all(|decision| decision["evidence"]["verdict"].is_object() || decision["evidence"]["verdict"].is_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_by_the_engine_with_evidence() {
    let harness = Harness::with(|config| config.rollout_tick_ms = 100);
    harness.start(FAST).await;
    let view = serve_traffic(&harness, 0.5, |view| view["rollout"]["phase"] != "Progressing").await;
    assert_eq!(view["rollout"]["phase"], "RolledBack", "{view:#}");
    assert_eq!(view["canary_weight_bp"], 0);
    let decision =
        view["rollout"]["decisions"].as_array().and_then(|decisions| decisions.last()).cloned().expect("decision");
    assert_eq!(decision["actor"], "auto");
    assert!(decision["reason"].as_str().is_some_and(|reason| reason.starts_with("rolled back: ")), "{decision}");
    assert!(decision["evidence"].is_object(), "{decision}");
    let history = harness.history().await;
    assert_eq!(history[0]["outcome"], "RolledBack");
}

/// A local HTTP server: `GET /clusters` answers Envoy's document with the
/// canary host healthy or not; `POST /hook` records JSON bodies.
struct FakeEndpoints {
    url: String,
    canary_healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    hooks: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

async fn fake_endpoints() -> FakeEndpoints {
    use std::sync::atomic::Ordering;
    let canary_healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hooks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = {
        let healthy = canary_healthy.clone();
        let hooks = hooks.clone();
        Router::new()
            .route(
                "/clusters",
                get(move || {
                    let failed = !healthy.load(Ordering::SeqCst);
                    async move {
                        let health = if failed {
                            json!({"failed_active_health_check": true, "eds_health_status": "HEALTHY"})
                        } else {
                            json!({"eds_health_status": "HEALTHY"})
                        };
                        axum::Json(json!({"cluster_statuses": [
                            {"name": "canary", "host_statuses": [{"health_status": health}]}
                        ]}))
                    }
                }),
            )
            .route(
                "/hook",
                post(move |body: axum::Json<Value>| {
                    let hooks = hooks.clone();
                    async move {
                        hooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(body.0);
                        StatusCode::OK
                    }
                }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeEndpoints { url: format!("http://{address}"), canary_healthy, hooks }
}

#[tokio::test]
async fn blue_green_switches_once_envoy_reports_the_canary_hosts_healthy_and_notifies() {
    let endpoints = fake_endpoints().await;
    let harness = Harness::with(|config| {
        config.rollout_tick_ms = 50;
        config.envoy_admin_urls = vec![endpoints.url.clone()];
        config.notify = vec![crate::config::NotifyTarget {
            url: format!("{}/hook", endpoints.url),
            format: crate::config::NotifyFormat::Json,
            routing_key: None,
        }];
    });
    let (status, body) = harness.start("canaryVersion: v2\nstrategy: blueGreen\npostSwitchWatch: 1h").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let view = harness.eventually("host health is read", |view| !view["rollout"]["canary_hosts"].is_null()).await;
    assert_eq!(view["rollout"]["canary_hosts"], json!({"healthy": 0, "total": 1}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(harness.rollout().await["canary_weight_bp"], 0, "no switch while the canary host is unhealthy");

    endpoints.canary_healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let view = harness.eventually("the switch", |view| view["canary_weight_bp"] == 10_000).await;
    assert_eq!((&view["rollout"]["phase"], &view["rollout"]["step_index"]), (&json!("Progressing"), &json!(2)));
    let (_, metrics) = harness.request("GET", "/metrics", &[], "").await;
    assert!(
        metrics.as_str().unwrap_or_default().contains("canary_hosts{version=\"canary\",health=\"healthy\"} 1"),
        "{metrics}"
    );

    let (status, body) = harness.act("POST", "/v1/rollout/rollback", r#"{"reason": "switch back"}"#).await;
    assert_eq!((status, &body["canary_weight_bp"]), (StatusCode::OK, &json!(0)), "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let phases: Vec<Value> = endpoints
            .hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|hook| hook["decision"]["to_phase"].clone())
            .collect();
        if phases == [json!("Progressing"), json!("RolledBack")] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "webhook got {phases:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hooks = endpoints.hooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert_eq!(hooks[1]["decision"]["actor"], "alice");
    assert_eq!(hooks[1]["rollout"]["strategy"], "blueGreen");
}
