//! Fixed API answers for the unit tests, in the analyzer's shapes (copied
//! from a real `GET /v1/rollout` during a rollout, trimmed).

use serde_json::{Value, json};

use crate::view::FullView;

/// A canary rollout in its second step, at 10% with a 5 s pause.
pub fn rollout_json(phase: &str) -> Value {
    json!({
        "id": "r-1764162000000-demo",
        "name": "demo",
        "canary_version": "v2-demo",
        "stable_version": "v1-demo",
        "strategy": "canary",
        "failure_policy": "rollback",
        "phase": phase,
        "pause_cause": null,
        "status": "at 10% for 3s of 5s; insufficient data: 12 of 50 canary requests",
        "step_index": 1,
        "step_count": 7,
        "step": {
            "kind": "pause", "weight_percent": null, "duration_ms": 5000, "until_approved": false,
            "timeout_ms": null, "analysis": {"alpha": 0.01}
        },
        "step_started_at_unix_ms": 1_764_162_001_000u64,
        "step_elapsed_ms": 3_400,
        "weight_percent": 10.0,
        "weight_bp": 1000,
        "started_at_unix_ms": 1_764_162_000_000u64,
        "ended_at_unix_ms": null,
        "duration_ms": 64_400,
        "time_to_decision_ms": null,
        "gradual_rollback": null,
        "canary_hosts": null,
        "verdict": {"kind": "insufficient_data", "reason": "12 of 50 canary requests"},
        "analysis": {"verdict": "insufficient_data"},
        "decisions": [
            {
                "at_unix_ms": 1_764_162_000_000u64, "actor": "ci-pipeline", "action": "start", "from_phase": null,
                "to_phase": "Progressing", "step_index": 1, "weight_percent": 10.0,
                "reason": "canary rollout of v2-demo started (stable v1-demo): release 42", "evidence": null
            },
            {
                "at_unix_ms": 1_764_162_061_000u64, "actor": "alice", "action": "pause",
                "from_phase": "Progressing", "to_phase": "Paused", "step_index": 1, "weight_percent": 10.0,
                "reason": "paused by alice at 10%", "evidence": null
            },
            {
                "at_unix_ms": 1_764_162_062_000u64, "actor": "alice", "action": "resume",
                "from_phase": "Paused", "to_phase": "Progressing", "step_index": 1, "weight_percent": 10.0,
                "reason": "resumed by alice", "evidence": null
            }
        ],
        "decisions_total": 3
    })
}

fn window(requests_per_second: f64, requests: u64, errors: u64, p95_ms: Option<f64>) -> Value {
    let ratio = if requests == 0 { Value::Null } else { json!(errors as f64 / requests as f64) };
    json!({
        "seconds": 60, "requests_per_second": requests_per_second, "requests": requests, "errors": errors,
        "error_ratio": ratio, "p50_ms": p95_ms.map(|p95| p95 / 4.0), "p95_ms": p95_ms,
        "p99_ms": p95_ms.map(|p95| p95 * 2.0),
        "status": {"2xx": requests - errors, "3xx": 0, "4xx": 0, "5xx": errors, "no_response": 0}
    })
}

/// `GET /v1/rollout` with `rollout` (or `null`).
pub fn full_view_json(rollout: Value) -> Value {
    let summary = json!({"requests": 0, "errors": 0, "error_ratio": null, "p50_ms": null, "p95_ms": null,
        "p99_ms": null, "status": {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "no_response": 0}});
    json!({
        "canary_weight_percent": 10.0,
        "canary_weight_bp": 1000,
        "weights_version": 7,
        "weights_changed_at_unix_ms": 1_764_162_001_000u64,
        "versions": {
            "stable": {"window": window(90.0, 5_400, 3, Some(40.0)), "since_weights_change": summary, "total": summary},
            "canary": {"window": window(10.0, 600, 0, None), "since_weights_change": summary, "total": summary}
        },
        "data_plane": {
            "live_workers": 2, "converged_workers": 2, "converged": true, "live_proxies": 1, "workers_total": 2,
            "lagging": [], "lagging_total": 0
        },
        "rollout": rollout
    })
}

pub fn full_view(phase: &str) -> FullView {
    serde_json::from_value(full_view_json(rollout_json(phase))).expect("fixture reads")
}
