use std::sync::Mutex;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;

use super::*;
use crate::rollout::{Decision, Strategy};

fn notification(from: Option<Phase>, to: Phase, actor: &str, action: &str) -> Notification {
    Notification {
        event: "phase_changed",
        rollout_id: "payment-service-1764130000000".into(),
        name: "payment-service".into(),
        canary_version: "v1.5.0".into(),
        stable_version: Some("v1.4.0".into()),
        strategy: Strategy::Canary,
        decision: Decision {
            at_unix_ms: 1_764_133_200_123,
            actor: actor.into(),
            action: action.into(),
            from_phase: from,
            to_phase: to,
            step_index: 3,
            weight_percent: 0.0,
            reason: "rolled back: canary error rate 4.8% vs stable 0.1%, e-value 412 >= 200".into(),
            evidence: Some(json!({"e_value": 412})),
        },
    }
}

#[test]
fn slack_payload_is_an_incoming_webhook_message() {
    let body = payload(
        NotifyFormat::Slack,
        None,
        &notification(Some(Phase::Progressing), Phase::RolledBack, "auto", "rollback"),
    );
    let text = body["text"].as_str().expect("text");
    assert!(
        text.starts_with("payment-service v1.5.0: Progressing → RolledBack (rollback by auto): rolled back"),
        "{text}"
    );
    assert_eq!(body["attachments"][0]["color"], "danger");
    assert_eq!(body["attachments"][0]["ts"], 1_764_133_200);
}

#[test]
fn pagerduty_triggers_on_harm_and_resolves_on_progress() {
    let key = Some("R0UT1NGKEY");
    let rolled_back = payload(
        NotifyFormat::Pagerduty,
        key,
        &notification(Some(Phase::Progressing), Phase::RolledBack, "auto", "rollback"),
    );
    assert_eq!(rolled_back["routing_key"], "R0UT1NGKEY");
    assert_eq!(rolled_back["event_action"], "trigger");
    assert_eq!(rolled_back["dedup_key"], "canary-rollout/payment-service-1764130000000");
    assert_eq!(rolled_back["payload"]["severity"], "critical");
    assert_eq!(rolled_back["payload"]["source"], "canary-analyzer");
    assert_eq!(rolled_back["payload"]["timestamp"], "2025-11-26T05:00:00.123Z");
    assert_eq!(rolled_back["payload"]["custom_details"]["to_phase"], "RolledBack");
    // (to phase, actor, expected action)
    for (to, actor, action) in [
        (Phase::Paused, "auto", "trigger"),
        (Phase::Paused, "alice", "resolve"),
        (Phase::AwaitingApproval, "auto", "trigger"),
        (Phase::Failed, "auto", "trigger"),
        (Phase::Promoted, "auto", "resolve"),
        (Phase::Progressing, "bob", "resolve"),
    ] {
        let event = payload(NotifyFormat::Pagerduty, key, &notification(Some(Phase::Progressing), to, actor, "x"));
        assert_eq!(event["event_action"], action, "{to} by {actor}");
        assert_eq!(event.get("payload").is_some(), action == "trigger", "{to}: resolve events carry no payload");
    }
}

#[test]
fn json_payload_carries_the_whole_decision() {
    let body = payload(NotifyFormat::Json, None, &notification(None, Phase::Progressing, "ci", "start"));
    assert_eq!(body["event"], "phase_changed");
    assert_eq!(body["rollout"]["strategy"], "canary");
    assert_eq!(body["decision"]["from_phase"], Value::Null);
    assert_eq!(body["decision"]["evidence"]["e_value"], 412);
}

#[test]
fn rfc3339_table() {
    for (unix_ms, text) in [
        (0, "1970-01-01T00:00:00.000Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        (1_764_133_200_123, "2025-11-26T05:00:00.123Z"),
    ] {
        assert_eq!(rfc3339(unix_ms), text);
    }
}

/// A webhook that fails its first `failures` calls with 503, then accepts.
async fn flaky_webhook(failures: usize) -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU64::new(0));
    let app = {
        let received = received.clone();
        Router::new().route(
            "/hook",
            post(move |body: axum::Json<Value>| {
                let received = received.clone();
                let calls = calls.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < failures as u64 {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    received.lock().expect("lock").push(body.0);
                    StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hook"), received)
}

async fn eventually(check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn deliveries_are_retried_with_backoff_until_they_land() {
    let (url, received) = flaky_webhook(2).await;
    let target = NotifyTarget { url, format: NotifyFormat::Json, routing_key: None };
    let notifier = Notifier::start_with_backoff(&[target], HttpClient::new(), Duration::from_millis(10));
    notifier.notify(notification(None, Phase::Progressing, "ci", "start"));
    eventually(|| received.lock().expect("lock").len() == 1).await;
    let snapshot = notifier.counters().snapshot();
    let (_, sent, dropped) = &snapshot[format_index(NotifyFormat::Json)];
    assert_eq!(*sent, 1);
    assert!(dropped.iter().all(|(_, count)| *count == 0), "{dropped:?}");
}

#[tokio::test]
async fn a_dead_webhook_is_dropped_after_the_attempts_and_counted() {
    let target =
        NotifyTarget { url: "http://127.0.0.1:9/unreachable".into(), format: NotifyFormat::Slack, routing_key: None };
    let notifier = Notifier::start_with_backoff(&[target], HttpClient::new(), Duration::from_millis(1));
    let started = std::time::Instant::now();
    notifier.notify(notification(None, Phase::Progressing, "ci", "start"));
    assert!(started.elapsed() < Duration::from_millis(50), "notify never waits for delivery");
    let dropped_after_retries = || {
        let snapshot = notifier.counters().snapshot();
        snapshot[format_index(NotifyFormat::Slack)].2[reason_index(DropReason::RetriesExhausted)].1 == 1
    };
    eventually(dropped_after_retries).await;
}

#[tokio::test]
async fn https_targets_go_through_tls_and_fail_like_any_other() {
    // Nothing listens there: the TLS client is built and the failure is
    // counted, never a panic.
    let target = NotifyTarget {
        url: "https://127.0.0.1:9/hook".into(),
        format: NotifyFormat::Pagerduty,
        routing_key: Some("k".into()),
    };
    let notifier = Notifier::start_with_backoff(&[target], HttpClient::new(), Duration::from_millis(1));
    notifier.notify(notification(None, Phase::Progressing, "ci", "start"));
    let dropped = || {
        let snapshot = notifier.counters().snapshot();
        snapshot[format_index(NotifyFormat::Pagerduty)].2[reason_index(DropReason::RetriesExhausted)].1 == 1
    };
    eventually(dropped).await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let target =
        NotifyTarget { url: "http://127.0.0.1:9/unreachable".into(), format: NotifyFormat::Json, routing_key: None };
    // A long backoff keeps the first notification in its retries.
    let notifier = Notifier::start_with_backoff(&[target], HttpClient::new(), Duration::from_secs(60));
    for _ in 0..QUEUE_CAPACITY + 10 {
        notifier.notify(notification(None, Phase::Progressing, "ci", "start"));
    }
    let snapshot = notifier.counters().snapshot();
    let queue_full = snapshot[format_index(NotifyFormat::Json)].2[reason_index(DropReason::QueueFull)].1;
    assert!(queue_full >= 9, "{queue_full}");
}
