//! Webhook notifications of rollout phase changes.
//!
//! The controller hands each [`Notification`] to [`Notifier::notify`], which
//! never waits: every target has its own bounded queue and delivery task, so
//! a slow or dead webhook delays only its own later messages and can never
//! block, slow or change a rollout. A delivery is retried with exponential
//! backoff on network errors, 5xx and 429; other 4xx answers are final. After
//! [`MAX_ATTEMPTS`] it is dropped, and every drop is counted in
//! `canary_notifications_dropped_total{format,reason}`.
//!
//! Payloads ([`payload`]) are pure:
//! - `slack`: an incoming-webhook message, `text` plus one coloured
//!   attachment with the details (also accepted by Mattermost and others).
//! - `pagerduty`: an Events API v2 event. Phases that need a person or mean
//!   harm (`RolledBack`, `Failed`, a failure-policy pause, `AwaitingApproval`)
//!   `trigger`; `Promoted` and `Progressing` `resolve`; all share the
//!   rollout's `dedup_key`, so the incident closes when the rollout moves on.
//! - `json`: the analyzer's own event document.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::{NotifyFormat, NotifyTarget};
use crate::http_client::HttpClient;
use crate::rollout::{Notification, Phase};

/// Deliveries tried per notification.
pub const MAX_ATTEMPTS: u32 = 5;
/// Notifications waiting per target before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 64;
/// Deadline of one delivery attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff before the second attempt; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// `source` of PagerDuty events.
const SOURCE: &str = "canary-analyzer";

/// Why a notification was dropped, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The target's queue was full.
    QueueFull,
    /// Every attempt failed.
    RetriesExhausted,
    /// The target answered with a 4xx other than 429.
    Rejected,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [DropReason::QueueFull, DropReason::RetriesExhausted, DropReason::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Rejected => "rejected",
        }
    }
}

/// Delivery counters per format, for the metrics.
#[derive(Debug, Default)]
pub struct NotifyCounters {
    sent: [AtomicU64; 3],
    dropped: [[AtomicU64; 3]; 3],
}

/// `(format, sent, [(reason, dropped)])` for every format.
pub type NotifySnapshot = Vec<(NotifyFormat, u64, Vec<(DropReason, u64)>)>;

impl NotifyCounters {
    fn sent(&self, format: NotifyFormat) {
        self.sent[format_index(format)].fetch_add(1, Ordering::Relaxed);
    }

    fn dropped(&self, format: NotifyFormat, reason: DropReason) {
        self.dropped[format_index(format)][reason_index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> NotifySnapshot {
        NotifyFormat::ALL
            .iter()
            .map(|&format| {
                let index = format_index(format);
                let dropped = DropReason::ALL
                    .iter()
                    .map(|&reason| (reason, self.dropped[index][reason_index(reason)].load(Ordering::Relaxed)))
                    .collect();
                (format, self.sent[index].load(Ordering::Relaxed), dropped)
            })
            .collect()
    }
}

fn format_index(format: NotifyFormat) -> usize {
    match format {
        NotifyFormat::Slack => 0,
        NotifyFormat::Pagerduty => 1,
        NotifyFormat::Json => 2,
    }
}

fn reason_index(reason: DropReason) -> usize {
    match reason {
        DropReason::QueueFull => 0,
        DropReason::RetriesExhausted => 1,
        DropReason::Rejected => 2,
    }
}

/// Hands notifications to the per-target delivery tasks.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    queues: Vec<(NotifyFormat, mpsc::Sender<Arc<Notification>>)>,
    counters: Arc<NotifyCounters>,
}

impl Notifier {
    /// Starts one delivery task per target. Must run within a Tokio runtime.
    pub fn start(targets: &[NotifyTarget], client: HttpClient) -> Notifier {
        Notifier::start_with_backoff(targets, client, FIRST_BACKOFF)
    }

    /// As [`Notifier::start`], with a shorter first backoff for tests.
    pub fn start_with_backoff(targets: &[NotifyTarget], client: HttpClient, first_backoff: Duration) -> Notifier {
        let counters = Arc::new(NotifyCounters::default());
        let queues = targets
            .iter()
            .map(|target| {
                let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
                tokio::spawn(deliver(target.clone(), receiver, client.clone(), counters.clone(), first_backoff));
                (target.format, sender)
            })
            .collect();
        Notifier { queues, counters }
    }

    /// Queues a notification for every target; never waits.
    pub fn notify(&self, notification: Notification) {
        let notification = Arc::new(notification);
        for (format, queue) in &self.queues {
            if queue.try_send(notification.clone()).is_err() {
                self.counters.dropped(*format, DropReason::QueueFull);
                tracing::warn!(format = format.as_str(), "notification queue full; notification dropped");
            }
        }
    }

    pub fn counters(&self) -> &NotifyCounters {
        &self.counters
    }
}

async fn deliver(
    target: NotifyTarget,
    mut receiver: mpsc::Receiver<Arc<Notification>>,
    client: HttpClient,
    counters: Arc<NotifyCounters>,
    first_backoff: Duration,
) {
    while let Some(notification) = receiver.recv().await {
        let body = match serde_json::to_vec(&payload(target.format, target.routing_key.as_deref(), &notification)) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "cannot encode a notification");
                continue;
            }
        };
        let mut backoff = first_backoff;
        let mut attempt = 1;
        loop {
            let outcome = client.post_json(&target.url, body.clone(), ATTEMPT_TIMEOUT).await;
            let retry = match &outcome {
                Ok((status, _)) if status.is_success() => {
                    counters.sent(target.format);
                    break;
                }
                Ok((status, _)) if status.is_client_error() && status.as_u16() != 429 => {
                    counters.dropped(target.format, DropReason::Rejected);
                    tracing::warn!(url = %target.url, %status, "webhook refused a notification; not retried");
                    break;
                }
                Ok((status, _)) => format!("status {status}"),
                Err(error) => error.clone(),
            };
            if attempt >= MAX_ATTEMPTS {
                counters.dropped(target.format, DropReason::RetriesExhausted);
                tracing::warn!(url = %target.url, attempts = attempt, error = %retry, "notification dropped");
                break;
            }
            tracing::debug!(url = %target.url, attempt, error = %retry, "notification failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }
}

/// The body a target of `format` gets for `notification`.
pub fn payload(format: NotifyFormat, routing_key: Option<&str>, notification: &Notification) -> Value {
    let decision = &notification.decision;
    let from = decision.from_phase.map_or("none", Phase::as_str);
    let to = decision.to_phase.as_str();
    let headline = format!(
        "{} {}: {} → {} ({} by {})",
        notification.name, notification.canary_version, from, to, decision.action, decision.actor
    );
    match format {
        NotifyFormat::Json => json!({
            "event": notification.event,
            "rollout": {
                "id": notification.rollout_id,
                "name": notification.name,
                "canary_version": notification.canary_version,
                "stable_version": notification.stable_version,
                "strategy": notification.strategy,
            },
            "decision": decision,
        }),
        NotifyFormat::Slack => {
            let color = match decision.to_phase {
                Phase::RolledBack | Phase::Failed => "danger",
                Phase::Paused | Phase::AwaitingApproval => "warning",
                Phase::Promoted | Phase::Progressing => "good",
            };
            json!({
                "text": format!("{headline}: {}", decision.reason),
                "attachments": [{
                    "color": color,
                    "fallback": headline,
                    "fields": [
                        {"title": "Rollout", "value": notification.name, "short": true},
                        {"title": "Canary", "value": notification.canary_version, "short": true},
                        {"title": "Phase", "value": to, "short": true},
                        {"title": "Canary weight", "value": format!("{}%", decision.weight_percent), "short": true},
                        {"title": "Step", "value": decision.step_index.to_string(), "short": true},
                        {"title": "Actor", "value": decision.actor, "short": true},
                        {"title": "Reason", "value": decision.reason, "short": false},
                    ],
                    "ts": decision.at_unix_ms / 1_000,
                }],
            })
        }
        NotifyFormat::Pagerduty => {
            let (action, severity) = match decision.to_phase {
                Phase::RolledBack | Phase::Failed => ("trigger", "critical"),
                Phase::Paused if decision.actor == crate::rollout::AUTO_ACTOR => ("trigger", "error"),
                Phase::AwaitingApproval => ("trigger", "info"),
                _ if decision.action == "advisory" => ("trigger", "warning"),
                _ => ("resolve", "info"),
            };
            let mut event = json!({
                "routing_key": routing_key.unwrap_or_default(),
                "event_action": action,
                "dedup_key": format!("canary-rollout/{}", notification.rollout_id),
            });
            if action == "trigger" {
                event["payload"] = json!({
                    "summary": truncate(&format!("{headline}: {}", decision.reason), 1_024),
                    "source": SOURCE,
                    "severity": severity,
                    "component": notification.name,
                    "group": "canary-rollout",
                    "class": decision.action,
                    "timestamp": rfc3339(decision.at_unix_ms),
                    "custom_details": {
                        "rollout_id": notification.rollout_id,
                        "canary_version": notification.canary_version,
                        "stable_version": notification.stable_version,
                        "from_phase": from,
                        "to_phase": to,
                        "weight_percent": decision.weight_percent,
                        "step_index": decision.step_index,
                        "actor": decision.actor,
                        "reason": decision.reason,
                    },
                });
            }
            event
        }
    }
}

/// PagerDuty caps `summary` at 1024 characters.
fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// `2026-11-26T05:00:00.000Z` from Unix milliseconds.
fn rfc3339(unix_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
#[path = "notify_tests.rs"]
mod tests;
