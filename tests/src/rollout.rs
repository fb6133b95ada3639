//! Progressive rollouts through the analyzer API (`docs/rollouts.md`):
//! starting one from a spec, operator actions with an actor, waiting for the
//! controller to reach a phase, and steady background traffic for it to
//! analyse.
//!
//! The rollout object is read as JSON (`GET /v1/rollout` → `rollout`), so a
//! failed wait can print exactly what the API said.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hyper::Method;
use hyper::body::Bytes;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::http::{self, HttpResponse};
use crate::load::{self, Load, LoadReport};
use crate::stack::Stack;

/// Header naming who asked for an action; the engine's own actions are
/// `auto`.
pub const ACTOR_HEADER: &str = "x-canary-actor";
/// The actor of the controller's own decisions.
pub const AUTO_ACTOR: &str = "auto";

/// Rollout phases as the API spells them.
pub mod phase {
    pub const PROGRESSING: &str = "Progressing";
    pub const PAUSED: &str = "Paused";
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    pub const PROMOTED: &str = "Promoted";
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const FAILED: &str = "Failed";

    /// Phases a rollout never leaves.
    pub fn is_terminal(phase: &str) -> bool {
        matches!(phase, PROMOTED | ROLLED_BACK | FAILED)
    }
}

/// How often waits poll `GET /v1/rollout`.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The `rollout` object of a `GET /v1/rollout` answer (`null` when no
/// rollout ever started).
pub fn rollout_of(view: &Value) -> &Value {
    &view["rollout"]
}

/// The rollout's phase, if there is a rollout.
pub fn phase_of(view: &Value) -> Option<&str> {
    rollout_of(view)["phase"].as_str()
}

/// The rollout's recent decisions, oldest first.
pub fn decisions_of(view: &Value) -> Vec<Value> {
    rollout_of(view)["decisions"].as_array().cloned().unwrap_or_default()
}

/// The rollout part of a view without the bulky analysis and evidence, for
/// messages.
pub fn describe_rollout(view: &Value) -> String {
    let mut rollout = rollout_of(view).clone();
    if let Some(object) = rollout.as_object_mut() {
        object.remove("analysis");
        for decision in object.get_mut("decisions").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(decision) = decision.as_object_mut() {
                decision.remove("evidence");
            }
        }
    }
    format!(
        "canary_weight_percent {} weights_version {} rollout {}",
        view["canary_weight_percent"], view["weights_version"], rollout
    )
}

/// Steady traffic through Envoy in the background, until stopped.
#[derive(Debug)]
pub struct BackgroundLoad {
    stop: Arc<AtomicBool>,
    task: JoinHandle<LoadReport>,
}

impl BackgroundLoad {
    /// Stops sending and waits for the requests in flight to finish, so the
    /// backends' counters are final when this returns.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_else(|error| LoadReport {
            first_error: Some(format!("background load task failed: {error}")),
            transport_errors: 1,
            ..LoadReport::default()
        })
    }
}

impl Stack {
    /// Sends `load` through Envoy in the background; its stop flag is
    /// replaced by the returned handle's.
    pub fn start_background_load(&self, load: Load) -> BackgroundLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let load = load.stop_flag(Arc::clone(&stop));
        let listener = self.listener();
        BackgroundLoad { stop, task: tokio::spawn(load::run(listener, load)) }
    }

    /// `POST /v1/rollouts` with a JSON spec; fails unless 201. Returns the
    /// answer: the new rollout (what `GET /v1/rollout` shows as `rollout`).
    pub async fn start_rollout(&self, spec: &Value) -> anyhow::Result<Value> {
        let response = self.post_rollout_spec(Bytes::from(spec.to_string()), "application/json").await?;
        if response.status != hyper::StatusCode::CREATED {
            bail!("POST /v1/rollouts answered {}: {}\nspec: {spec}", response.status, response.text());
        }
        response.json()
    }

    /// `POST /v1/rollouts` with a spec in any content type, whatever the
    /// answer.
    pub async fn post_rollout_spec(&self, body: Bytes, content_type: &str) -> anyhow::Result<HttpResponse> {
        http::send_with_headers(
            self.analyzer_address(),
            Method::POST,
            "/v1/rollouts",
            &[("content-type", content_type)],
            Some(body),
            http::CONTROL_TIMEOUT,
        )
        .await
    }

    /// `POST /v1/rollout/{action}` (`pause`, `resume`, `approve`, `promote`,
    /// `rollback`, with an optional query) as `actor`, whatever the answer.
    pub async fn rollout_action(&self, action: &str, actor: &str, body: &Value) -> anyhow::Result<HttpResponse> {
        http::send_with_headers(
            self.analyzer_address(),
            Method::POST,
            &format!("/v1/rollout/{action}"),
            &[(ACTOR_HEADER, actor)],
            Some(Bytes::from(body.to_string())),
            http::CONTROL_TIMEOUT,
        )
        .await
    }

    /// Like [`Stack::rollout_action`], failing unless the answer is 2xx.
    pub async fn rollout_action_ok(&self, action: &str, actor: &str, body: &Value) -> anyhow::Result<Value> {
        self.rollout_action(action, actor, body)
            .await?
            .success_json()
            .with_context(|| format!("POST /v1/rollout/{action} as {actor} with {body}"))
    }

    /// `GET /v1/rollouts/history`: finished rollouts, newest first.
    pub async fn rollout_history(&self) -> anyhow::Result<Vec<Value>> {
        let history = self.analyzer_get("/v1/rollouts/history").await?;
        match history {
            Value::Array(entries) => Ok(entries),
            other => bail!("/v1/rollouts/history is not a list: {other}"),
        }
    }

    /// Polls `GET /v1/rollout` until `done` holds, for at most `timeout`.
    /// Gives up early, with the decisions, when the rollout ended in a phase
    /// that `done` does not accept, since it will never change again.
    pub async fn wait_for_rollout(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last: Value;
        loop {
            match self.rollout().await {
                Ok(view) => {
                    if done(&view) {
                        return Ok(view);
                    }
                    if let Some(phase) = phase_of(&view)
                        && phase::is_terminal(phase)
                    {
                        bail!("waiting for {what}: the rollout ended {phase} instead: {}", describe_rollout(&view));
                    }
                    last = view;
                }
                Err(error) => last = Value::String(format!("{error:#}")),
            }
            if Instant::now() >= deadline {
                bail!(
                    "waiting for {what}: not there after {timeout:?}; last {}\n{}",
                    describe_rollout(&last),
                    self.describe_logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the rollout is in `phase`.
    pub async fn wait_for_phase(&self, phase: &str, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_for_rollout(&format!("phase {phase}"), timeout, |view| phase_of(view) == Some(phase)).await
    }

    /// Waits until every live filter VM has applied the analyzer's current
    /// weights, and returns that view.
    pub async fn wait_for_convergence(&self, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.rollout().await?;
            if view["data_plane"]["converged"] == true && view["data_plane"]["live_workers"].as_u64() > Some(0) {
                return Ok(view);
            }
            if Instant::now() >= deadline {
                bail!("the data plane did not converge within {timeout:?}: {}", view["data_plane"]);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
