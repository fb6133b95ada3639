//! Automated progressive rollouts on a real data plane: a healthy canary is
//! promoted step by step, a failing one is rolled back by the analysis alone
//! and gets no traffic afterwards, operators steer a rollout through the
//! API, and an analyzer crash in the middle of a rollout changes nothing.
//!
//! Specs are compressed (steps of seconds, not 30 minutes) and traffic is
//! steady background load, so each test takes tens of seconds. Shares are
//! measured at the backends, which is what users of the service experience.

use std::time::{Duration, Instant};

use canary_protocol::Version;
use canary_tests::rollout::{AUTO_ACTOR, decisions_of, describe_rollout, phase, phase_of, rollout_of};
use canary_tests::stats::{Z_99_9, binomial_interval};
use canary_tests::{BackendOpts, Load, Stack, StopMode};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::assert_all_answered;

/// Longest a compressed rollout may take from start to its end on a loaded
/// 2-core machine; the specs below need about 10 s.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest an operator action may take to show in `GET /v1/rollout`.
const ACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// The detection bound asserted for a canary with 5% errors. The design's
/// simulation gives a median of 3 s at 100 canary requests per second; this
/// leaves room for a loaded CI machine and is still far below the brief's
/// "error rate > 5% for 2 minutes" guard, so only the sequential test can
/// meet it.
const DETECTION_BOUND: Duration = Duration::from_secs(30);

/// Both versions get the same injected latency, so their latency
/// distributions are equal and dominated by it rather than by scheduling
/// noise of two different processes: a healthy canary must not look slower.
fn backend(error_rate: f64) -> BackendOpts {
    BackendOpts::default().error_rate(error_rate).latency_ms(1).latency_jitter_ms(2)
}

/// Paced traffic for as long as a test needs it (stopped explicitly). Few
/// connections: each one Envoy has to open to a backend in the middle of a
/// step makes that version look slower for a moment.
fn steady_load(requests_per_second: f64) -> Load {
    let connections = (requests_per_second / 60.0).ceil() as usize;
    Load::requests(u64::MAX)
        .rate_per_second(requests_per_second)
        .concurrency(connections.clamp(4, 16))
        .max_duration(Duration::from_secs(180))
}

/// A spec with the brief's shape and the given steps, analysed with a small
/// evidence minimum so compressed steps can pass.
fn spec(name: &str, steps: Value) -> Value {
    json!({
        "name": name,
        "canaryVersion": "v1.5.0",
        "stableVersion": "v1.4.0",
        "analysis": { "minCanaryRequests": 50 },
        "steps": steps,
    })
}

/// [`spec`] with only the error test: for tests of the controller (operator
/// actions, crash recovery) whose rollouts must not end on analysis. These
/// tests send unpaced bursts of thousands of requests, under which the two
/// backends' latencies drift apart for reasons unrelated to the versions;
/// the engine's latency warm-up and tolerance cover a weight change's
/// connection warm-up, not that. The healthy-canary test keeps latency on.
fn spec_without_latency_test(name: &str, steps: Value) -> Value {
    let mut spec = spec(name, steps);
    spec["analysis"]["latencyTest"] = json!(false);
    spec
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// Sends `requests` through Envoy and returns the share canary served.
async fn canary_share(stack: &Stack, requests: u64) -> f64 {
    let report = stack.load(Load::requests(requests)).await;
    assert_all_answered(&report, &[200, 500]);
    report.served_by("canary") as f64 / requests as f64
}

/// Asserts the backends see `weight_percent` within the 99.9% binomial
/// interval of `requests` requests.
async fn assert_share(stack: &Stack, weight_percent: f64, requests: u64, when: &str) {
    let share = canary_share(stack, requests).await;
    let (low, high) = binomial_interval(weight_percent / 100.0, requests, Z_99_9);
    eprintln!("{when}: canary served {:.2}% of {requests} (weight {weight_percent}%)", share * 100.0);
    assert!((low..=high).contains(&share), "{when}: canary share {share} outside [{low}, {high}]");
}

/// The last decision of a view, which must exist.
fn last_decision(view: &Value) -> Value {
    decisions_of(view).last().cloned().unwrap_or_else(|| panic!("no decisions: {}", describe_rollout(view)))
}

/// Asserts that the last decision was taken by `actor`, led to `to_phase`,
/// and carries the reason the actor gave (when one was given).
fn assert_last_decision(view: &Value, actor: &str, to_phase: &str, reason: Option<&str>) {
    let decision = last_decision(view);
    assert_eq!(decision["actor"], actor, "{decision}");
    assert_eq!(decision["to_phase"], to_phase, "{decision}");
    if let Some(reason) = reason {
        let recorded = decision["reason"].as_str().unwrap_or_default();
        assert!(recorded.contains(reason), "decision reason {recorded:?} should contain {reason:?}: {decision}");
    }
}

fn weight_percent(view: &Value) -> f64 {
    view["canary_weight_percent"].as_f64().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canary_is_promoted_through_every_step() {
    let stack = super::stack()
        .envoy_host_health()
        .stable(backend(0.0))
        .canary(backend(0.0))
        .start()
        .await
        .expect("stack starts");
    let load = stack.start_background_load(steady_load(400.0));
    let spec = spec(
        "payment-service",
        json!([
            { "setWeight": 10 }, { "pause": { "duration": "3s" } },
            { "setWeight": 25 }, { "pause": { "duration": "3s" } },
            { "setWeight": 50 }, { "pause": { "duration": "3s" } },
            { "setWeight": 100 },
        ]),
    );
    let started = Instant::now();
    let created = stack.start_rollout(&spec).await.expect("rollout starts");
    // The answer is the new rollout, already at its first weight.
    assert_eq!(created["phase"], phase::PROGRESSING, "{created}");
    assert_eq!(created["canary_version"], "v1.5.0", "{created}");
    assert_eq!(created["weight_percent"], 10.0, "{created}");

    // Follow the rollout and sample what the backends served at each
    // weight, to check every step's share where users see it.
    let mut segments: Vec<(f64, Duration, [u64; 2], [u64; 2])> = Vec::new();
    let view = loop {
        let view = stack.rollout().await.expect("rollout");
        let [stable, canary] = stack.served().await.expect("backend stats");
        let served = [stable.served, canary.served];
        let weight = weight_percent(&view);
        match segments.last_mut() {
            Some((last_weight, _, _, end)) if *last_weight == weight => *end = served,
            _ => segments.push((weight, started.elapsed(), served, served)),
        }
        match phase_of(&view) {
            Some(phase::PROMOTED) => break view,
            Some(phase::PROGRESSING) => {}
            other => panic!("unexpected phase {other:?}: {}", describe_rollout(&view)),
        }
        assert!(
            started.elapsed() < ROLLOUT_TIMEOUT,
            "not promoted after {ROLLOUT_TIMEOUT:?}: {}",
            describe_rollout(&view)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let promoted_after = started.elapsed();
    let report = load.stop().await;
    assert_all_answered(&report, &[200]);

    // A rollout starts from 0% and runs its first `setWeight` at once; a
    // poll may still catch the 0%.
    let leading_zero = segments.iter().take_while(|(weight, ..)| *weight == 0.0).count();
    segments.drain(..leading_zero);
    let weights: Vec<f64> = segments.iter().map(|(weight, ..)| *weight).collect();
    eprintln!("promoted after {promoted_after:.1?}; weights seen {weights:?}");
    assert_eq!(weights, [10.0, 25.0, 50.0, 100.0], "every step is taken, in order: {segments:?}");
    for (weight, at, start, end) in &segments[..3] {
        let (stable, canary) = (end[0] - start[0], end[1] - start[1]);
        let share = canary as f64 / (stable + canary).max(1) as f64;
        // A sample straddles a weight change by up to one poll (~100 ms).
        let (low, high) = binomial_interval(weight / 100.0, stable + canary, Z_99_9);
        eprintln!(
            "  step {weight}% from {at:.1?}: canary served {canary} of {} ({:.1}%)",
            stable + canary,
            share * 100.0
        );
        assert!((low - 0.03..=high + 0.03).contains(&share), "step {weight}%: canary share {share}");
    }
    assert_eq!(view["canary_weight_bp"], 10_000, "{}", describe_rollout(&view));
    assert_last_decision(&view, AUTO_ACTOR, phase::PROMOTED, None);
    // Whoever started it, every step after that was the controller's call.
    let decisions = decisions_of(&view);
    for decision in &decisions {
        let evidence = &decision["evidence"]["evidence"];
        if evidence.is_object() {
            eprintln!(
                "  {}: error e-value {} latency e-value {} (roll back at {} / {})",
                decision["reason"],
                evidence["error_test"]["e_value"],
                evidence["latency_test"]["e_value"],
                evidence["error_test"]["threshold"],
                evidence["latency_test"]["threshold"]
            );
        }
    }
    let automatic = decisions.iter().skip(1).all(|decision| decision["actor"] == AUTO_ACTOR);
    assert!(automatic && decisions.len() == 4, "start + three automatic promotions: {}", describe_rollout(&view));

    stack.wait_for_convergence(ACTION_TIMEOUT).await.expect("data plane applies 100%");
    assert_share(&stack, 100.0, 1_000, "after promotion").await;
    let history = stack.rollout_history().await.expect("history");
    let latest = history.first().unwrap_or_else(|| panic!("empty history"));
    assert_eq!(latest["outcome"], phase::PROMOTED, "{latest}");
    assert_eq!(latest["name"], "payment-service", "{latest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_canary_is_rolled_back_automatically_and_gets_no_traffic_afterwards() {
    // The design's simulation setting: 5% canary errors against 0.1%, with
    // 1000 requests per second of which 10% go to canary.
    let (requests_per_second, canary_percent) = (1_000.0, 10);
    let mut stack = super::stack()
        .envoy_host_health()
        .stable(backend(0.001))
        .canary(backend(0.05))
        .start()
        .await
        .expect("stack starts");
    let load = stack.start_background_load(steady_load(requests_per_second));
    let spec = spec(
        "payment-service",
        json!([{ "setWeight": canary_percent }, { "pause": { "duration": "10m" } }, { "setWeight": 100 }]),
    );
    let started = Instant::now();
    let started_unix_ms = unix_now_ms();
    stack.start_rollout(&spec).await.expect("rollout starts");
    let view = stack.wait_for_phase(phase::ROLLED_BACK, DETECTION_BOUND * 2).await.expect("automatic rollback");
    let observed_after = started.elapsed();
    let [stable_served, canary_served] = stack.served().await.expect("backend stats");

    let decision = last_decision(&view);
    let decided_after =
        Duration::from_millis(decision["at_unix_ms"].as_u64().unwrap_or(u64::MAX).saturating_sub(started_unix_ms));
    let canary_rate = canary_served.served as f64 / observed_after.as_secs_f64();
    eprintln!(
        "rolled back {decided_after:.1?} after the start (seen by the poller at {observed_after:.1?}); canary got \
         {canary_rate:.0} req/s ({} served, {} errors), stable {} served ({} errors)\n  reason: {}",
        canary_served.served, canary_served.errors, stable_served.served, stable_served.errors, decision["reason"]
    );
    assert!(canary_rate >= 50.0, "the test needs canary traffic to be meaningful: {canary_rate:.0} req/s");
    assert!(decided_after <= DETECTION_BOUND, "rollback took {decided_after:?}, bound {DETECTION_BOUND:?}");
    assert_last_decision(&view, AUTO_ACTOR, phase::ROLLED_BACK, None);
    let reason = decision["reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        reason.contains("error") && (reason.contains("e-value") || reason.contains("e_value")),
        "the reason names the error rate and its evidence: {decision}"
    );
    assert_eq!(view["canary_weight_bp"], 0, "{}", describe_rollout(&view));

    // Once every VM has applied 0%, nothing reaches canary any more.
    stack.wait_for_convergence(ACTION_TIMEOUT).await.expect("data plane applies the rollback");
    let report = load.stop().await;
    assert_all_answered(&report, &[200, 500]);
    let canary_before = stack.backend_stats(Version::Canary).await.expect("canary stats").served;
    assert_share(&stack, 0.0, 2_000, "after the automatic rollback").await;

    // The rollout stays rolled back: a manual weight is refused, and so is
    // promoting or resuming it.
    let response = stack
        .analyzer_call(Method::PUT, "/v1/rollout/weight", Some(&json!({ "canary_percent": 50.0 })))
        .await
        .expect("weight call");
    assert_eq!(response.status, StatusCode::CONFLICT, "{}", response.text());
    eprintln!("PUT /v1/rollout/weight after the rollback: {} {}", response.status, response.text());
    for action in ["promote", "resume"] {
        let response = stack.rollout_action(action, "mallory", &json!({})).await.expect("action call");
        assert_eq!(response.status, StatusCode::CONFLICT, "{action} after a rollback: {}", response.text());
    }

    // Not even a crash of the analyzer brings canary traffic back.
    stack.restart_analyzer(StopMode::Kill).await.expect("analyzer restarts");
    let view = stack.rollout().await.expect("rollout");
    assert_eq!(phase_of(&view), Some(phase::ROLLED_BACK), "{}", describe_rollout(&view));
    assert_eq!(view["canary_weight_bp"], 0, "{}", describe_rollout(&view));
    stack.wait_for_convergence(ACTION_TIMEOUT).await.expect("filters resync with the restarted analyzer");
    assert_share(&stack, 0.0, 2_000, "after the analyzer restarted").await;
    let canary_after = stack.backend_stats(Version::Canary).await.expect("canary stats").served;
    assert_eq!(canary_after, canary_before, "canary served requests after the rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_promote_approve_and_roll_back_through_the_api() {
    let stack = super::stack()
        .envoy_host_health()
        .stable(backend(0.0))
        .canary(backend(0.0))
        .start()
        .await
        .expect("stack starts");
    let view = stack.rollout().await.expect("rollout");
    assert!(rollout_of(&view).is_null(), "no rollout before the first start: {}", describe_rollout(&view));
    // Pauses of an hour: only the operators move this rollout.
    let first = spec_without_latency_test(
        "payment-service",
        json!([
            { "setWeight": 10 }, { "pause": { "duration": "1h" } },
            { "setWeight": 30 }, { "pause": { "untilApproved": true } },
            { "setWeight": 60 }, { "pause": { "duration": "1h" } },
            { "setWeight": 100 },
        ]),
    );
    stack.start_rollout(&first).await.expect("rollout starts");
    let at =
        |weight: f64| move |view: &Value| weight_percent(view) == weight && view["data_plane"]["converged"] == true;
    stack.wait_for_rollout("10% applied", ACTION_TIMEOUT, at(10.0)).await.expect("first step");
    assert_share(&stack, 10.0, 2_000, "first step").await;

    // One rollout at a time, and no manual weights while it runs.
    let response = stack.post_rollout_spec(first.to_string().into(), "application/json").await.expect("second start");
    assert_eq!(response.status, StatusCode::CONFLICT, "{}", response.text());
    let response = stack
        .analyzer_call(Method::PUT, "/v1/rollout/weight", Some(&json!({ "canary_percent": 50.0 })))
        .await
        .expect("weight call");
    assert_eq!(response.status, StatusCode::CONFLICT, "{}", response.text());

    stack.rollout_action_ok("pause", "alice", &json!({ "reason": "checking the dashboards" })).await.expect("pause");
    let view = stack.wait_for_phase(phase::PAUSED, ACTION_TIMEOUT).await.expect("paused");
    assert_last_decision(&view, "alice", phase::PAUSED, Some("checking the dashboards"));
    assert_eq!(weight_percent(&view), 10.0, "pausing keeps the weight: {}", describe_rollout(&view));

    stack.rollout_action_ok("resume", "alice", &json!({})).await.expect("resume");
    let view = stack.wait_for_phase(phase::PROGRESSING, ACTION_TIMEOUT).await.expect("resumed");
    assert_last_decision(&view, "alice", phase::PROGRESSING, None);

    // Promote skips the hour-long pause; the next gate needs an approval.
    stack.rollout_action_ok("promote", "bob", &json!({ "reason": "looks good" })).await.expect("promote");
    let view = stack.wait_for_phase(phase::AWAITING_APPROVAL, ACTION_TIMEOUT).await.expect("awaiting approval");
    assert_eq!(weight_percent(&view), 30.0, "{}", describe_rollout(&view));
    stack.wait_for_convergence(ACTION_TIMEOUT).await.expect("30% applied");
    assert_share(&stack, 30.0, 2_000, "awaiting approval").await;

    stack.rollout_action_ok("approve", "carol", &json!({ "reason": "change ticket 42" })).await.expect("approve");
    let view = stack.wait_for_rollout("60% after the approval", ACTION_TIMEOUT, at(60.0)).await.expect("approved");
    assert_eq!(phase_of(&view), Some(phase::PROGRESSING), "{}", describe_rollout(&view));
    assert!(
        decisions_of(&view).iter().any(|decision| decision["actor"] == "carol"
            && decision["reason"].as_str().is_some_and(|reason| reason.contains("change ticket 42"))),
        "the approval is recorded with its actor and reason: {}",
        describe_rollout(&view)
    );
    assert_share(&stack, 60.0, 2_000, "after the approval").await;

    stack.rollout_action_ok("promote", "dave", &json!({ "full": true })).await.expect("full promotion");
    let view = stack.wait_for_phase(phase::PROMOTED, ACTION_TIMEOUT).await.expect("promoted");
    assert_last_decision(&view, "dave", phase::PROMOTED, None);
    stack.wait_for_convergence(ACTION_TIMEOUT).await.expect("100% applied");
    assert_share(&stack, 100.0, 1_000, "fully promoted").await;

    // A new rollout may start after the last one ended; an operator rolls it
    // back and the data plane confirms it.
    let second = spec_without_latency_test(
        "payment-service-hotfix",
        json!([{ "setWeight": 40 }, { "pause": { "duration": "1h" } }]),
    );
    stack.start_rollout(&second).await.expect("second rollout starts");
    stack.wait_for_rollout("40% applied", ACTION_TIMEOUT, at(40.0)).await.expect("second rollout at 40%");
    let answer = stack
        .rollout_action_ok("rollback?wait=true", "erin", &json!({ "reason": "bad deploy" }))
        .await
        .expect("rollback");
    let propagation_ms = super::assert_confirmed(&answer, stack.concurrency() as u64);
    eprintln!("operator rollback confirmed by the data plane in {propagation_ms:.1} ms");
    let view = stack.wait_for_phase(phase::ROLLED_BACK, ACTION_TIMEOUT).await.expect("rolled back");
    assert_last_decision(&view, "erin", phase::ROLLED_BACK, Some("bad deploy"));
    assert_eq!(view["canary_weight_bp"], 0, "{}", describe_rollout(&view));
    stack.wait_for_convergence(ACTION_TIMEOUT).await.expect("0% applied");
    assert_share(&stack, 0.0, 2_000, "after the operator's rollback").await;

    // A spec with a wrong field is refused, naming it.
    let response = stack
        .post_rollout_spec(
            json!({ "name": "no-version", "steps": [{ "setWeight": 10 }] }).to_string().into(),
            "application/json",
        )
        .await
        .expect("invalid spec");
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", response.text());
    assert_eq!(response.json().expect("JSON error")["field"], "canaryVersion", "{}", response.text());

    // A gradual rollback ramps the weight down step by step. (This spec is
    // YAML, as operators write them.)
    let third =
        "name: payment-service-ramp\ncanaryVersion: v1.5.1\nsteps:\n  - setWeight: 50\n  - pause: {duration: 1h}\n";
    let response = stack.post_rollout_spec(third.into(), "application/yaml").await.expect("YAML spec");
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text());
    stack.wait_for_rollout("50% applied", ACTION_TIMEOUT, at(50.0)).await.expect("third rollout at 50%");
    let ramp_started = Instant::now();
    stack.rollout_action_ok("rollback", "erin", &json!({ "gradual_seconds": 3 })).await.expect("gradual rollback");
    let mut weights_seen = vec![50.0];
    let view = loop {
        let view = stack.rollout().await.expect("rollout");
        let weight = weight_percent(&view);
        if weights_seen.last() != Some(&weight) {
            weights_seen.push(weight);
        }
        if weight == 0.0 && phase_of(&view) == Some(phase::ROLLED_BACK) {
            break view;
        }
        assert!(
            ramp_started.elapsed() < ACTION_TIMEOUT,
            "ramp not finished: {weights_seen:?} {}",
            describe_rollout(&view)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ramp = ramp_started.elapsed();
    eprintln!("gradual rollback over 3 s took {ramp:.1?}, weights seen {weights_seen:?}");
    assert!(weights_seen.windows(2).all(|pair| pair[1] < pair[0]), "the ramp only goes down: {weights_seen:?}");
    // 50% → two steps in between → 0%: one change per second.
    assert!(weights_seen.len() >= 4, "at least one weight change per second: {weights_seen:?}");
    assert!(ramp >= Duration::from_millis(1_500), "a 3 s ramp ended after {ramp:?}");
    assert!(
        decisions_of(&view).iter().any(|decision| decision["actor"] == "erin" && decision["action"] == "rollback"),
        "the operator's gradual rollback is recorded: {}",
        describe_rollout(&view)
    );
    assert_last_decision(&view, AUTO_ACTOR, phase::ROLLED_BACK, None);

    let history = stack.rollout_history().await.expect("history");
    let outcomes: Vec<(&Value, &Value)> = history.iter().map(|entry| (&entry["name"], &entry["outcome"])).collect();
    eprintln!("history: {outcomes:?}");
    assert_eq!(
        outcomes,
        [
            (&json!("payment-service-ramp"), &json!(phase::ROLLED_BACK)),
            (&json!("payment-service-hotfix"), &json!(phase::ROLLED_BACK)),
            (&json!("payment-service"), &json!(phase::PROMOTED)),
        ],
        "history, newest first"
    );
    let actors: Vec<&str> = history[2]["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|decision| decision["actor"].as_str())
        .collect();
    for actor in ["alice", "bob", "carol", "dave"] {
        assert!(actors.contains(&actor), "{actor} is in the first rollout's decisions: {actors:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyzer_killed_mid_rollout_resumes_the_same_step_and_completes() {
    let mut stack = super::stack()
        .envoy_host_health()
        .stable(backend(0.0))
        .canary(backend(0.0))
        .start()
        .await
        .expect("stack starts");
    let load = stack.start_background_load(steady_load(400.0));
    let spec = spec_without_latency_test(
        "payment-service",
        json!([
            { "setWeight": 20 }, { "pause": { "duration": "3s" } },
            // Long enough that the kill and the restart fall inside it.
            { "setWeight": 50 }, { "pause": { "duration": "10s" } },
            { "setWeight": 100 },
        ]),
    );
    let started = Instant::now();
    stack.start_rollout(&spec).await.expect("rollout starts");
    let before = stack
        .wait_for_rollout("the 50% step", ROLLOUT_TIMEOUT, |view| {
            weight_percent(view) == 50.0 && rollout_of(view)["step_elapsed_ms"].as_u64() >= Some(1_000)
        })
        .await
        .expect("rollout reaches 50%");

    stack.stop_analyzer(StopMode::Kill).await.expect("kill -9 the analyzer");
    // The data plane keeps its weights while the analyzer is down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.start_analyzer_again().await.expect("analyzer restarts");
    let after = stack.rollout().await.expect("rollout after the restart");
    let (rollout_before, rollout_after) = (rollout_of(&before), rollout_of(&after));
    let position = |view: &Value| {
        let rollout = rollout_of(view);
        format!(
            "{} step {} at {}% for {} ms, weights v{}",
            rollout["phase"],
            rollout["step_index"],
            rollout["weight_percent"],
            rollout["step_elapsed_ms"],
            view["weights_version"]
        )
    };
    eprintln!("before the kill: {}; after the restart: {}", position(&before), position(&after));
    for field in ["name", "phase", "step_index", "step_count", "weight_percent"] {
        assert_eq!(rollout_after[field], rollout_before[field], "{field} survives kill -9");
    }
    assert_eq!(after["canary_weight_bp"], 5_000, "{}", describe_rollout(&after));
    assert_eq!(after["weights_version"], before["weights_version"], "no weight change from the restart");
    let elapsed_before = rollout_before["step_elapsed_ms"].as_u64().unwrap_or(0);
    let elapsed_after = rollout_after["step_elapsed_ms"].as_u64().unwrap_or(0);
    assert!(elapsed_after >= elapsed_before, "the step's clock went back: {elapsed_before} ms -> {elapsed_after} ms");
    let decisions_before = decisions_of(&before);
    assert_eq!(
        decisions_of(&after).get(..decisions_before.len()),
        Some(&decisions_before[..]),
        "the decisions before the crash are kept"
    );

    let view = stack.wait_for_phase(phase::PROMOTED, ROLLOUT_TIMEOUT).await.expect("rollout completes");
    eprintln!("promoted {:.1?} after the start, across an analyzer kill -9", started.elapsed());
    assert_last_decision(&view, AUTO_ACTOR, phase::PROMOTED, None);
    let report = load.stop().await;
    assert_all_answered(&report, &[200]);
    stack.wait_for_convergence(ACTION_TIMEOUT).await.expect("100% applied");
    assert_share(&stack, 100.0, 1_000, "after promotion").await;
}
