use serde_json::json;

use super::*;
use crate::fixtures::{full_view, full_view_json, rollout_json};
use crate::view::{Phase, Propagation, WorkerRef};

#[test]
fn progress_bar_table() {
    for (percent, width, expected) in [
        (0.0, 10, "[..........]"),
        (0.5, 10, "[#.........]"),
        (10.0, 10, "[#.........]"),
        (25.0, 8, "[##......]"),
        (50.0, 10, "[#####.....]"),
        (100.0, 10, "[##########]"),
        (150.0, 4, "[####]"),
        (-3.0, 4, "[....]"),
    ] {
        assert_eq!(progress_bar(percent, width), expected, "{percent}% over {width}");
    }
}

#[test]
fn percent_and_duration_text_table() {
    for (percent, expected) in [(10.0, "10%"), (12.5, "12.5%"), (0.01, "0.01%"), (12.34, "12.34%"), (0.0, "0%")] {
        assert_eq!(percent_text(percent), expected);
    }
    for (ms, expected) in [(0, "0s"), (999, "0s"), (3_400, "3s"), (64_400, "1m 4s"), (3_661_000, "1h 1m 1s")] {
        assert_eq!(duration_text(ms), expected);
    }
}

#[test]
fn status_screen_shows_phase_step_bar_table_and_decisions() {
    let screen = status(&full_view("Progressing"), 2);
    let expected_lines = [
        "rollout   demo (r-1764162000000-demo), canary v2-demo over v1-demo",
        "phase     Progressing, for 1m 4s, failure policy rollback",
        "step      2 of 7: pause 5s at 10%, 3s in",
        "status    at 10% for 3s of 5s; insufficient data: 12 of 50 canary requests",
        "weight    [####....................................] 10% canary (weights version 7)",
        "workers   2 of 2 live workers applied it",
        "VERSION       RPS   REQUESTS   ERRORS   ERROR%   P50 MS   P95 MS   P99 MS",
        "stable       90.0       5400        3    0.06%     10.0     40.0     80.0",
        "canary       10.0        600        0    0.00%        -        -        -",
        "(over the last 60 s)",
        "last decisions (2 of 3):",
    ];
    for line in expected_lines {
        assert!(screen.lines().any(|shown| shown == line), "missing {line:?} in\n{screen}");
    }
    // Only the last two decisions, oldest first.
    let decisions: Vec<&str> = screen.lines().skip_while(|line| !line.starts_with("last decisions")).skip(1).collect();
    assert_eq!(decisions.len(), 2, "{screen}");
    assert!(decisions[0].contains("alice") && decisions[0].contains("Progressing → Paused"), "{}", decisions[0]);
    assert!(decisions[1].ends_with("resumed by alice"), "{}", decisions[1]);
    assert!(decisions[0].starts_with("  13:01:01"), "{}", decisions[0]);
}

#[test]
fn status_without_a_rollout_says_how_to_start_one() {
    let view: FullView = serde_json::from_value(full_view_json(serde_json::Value::Null)).unwrap();
    let screen = status(&view, 5);
    assert!(screen.starts_with("rollout   none started (canaryctl start -f rollout.yaml)\n"), "{screen}");
    assert!(!screen.contains("last decisions"), "{screen}");
    assert_eq!(summary_line(&view), "no rollout; canary at 10%");
}

#[test]
fn step_text_table() {
    let mut rollout: RolloutView = serde_json::from_value(rollout_json("Progressing")).unwrap();
    assert_eq!(step_text(&rollout), "2 of 7: pause 5s at 10%, 3s in");
    rollout.step = Some(StepView {
        kind: "pause".into(),
        weight_percent: None,
        duration_ms: None,
        until_approved: true,
        timeout_ms: None,
    });
    assert_eq!(step_text(&rollout), "2 of 7: pause until approved at 10%, 3s in");
    rollout.step = Some(StepView {
        kind: "preChecks".into(),
        weight_percent: None,
        duration_ms: None,
        until_approved: true,
        timeout_ms: Some(600_000),
    });
    assert_eq!(step_text(&rollout), "2 of 7: pre-checks, then approval at 10%, 3s in");
    rollout.step = None;
    rollout.step_index = 7;
    rollout.weight_percent = 100.0;
    assert_eq!(step_text(&rollout), "all 7 steps done, at 100%");
    rollout.step_count = 0;
    assert_eq!(step_text(&rollout), "no steps, at 100%");
}

#[test]
fn summary_line_and_change_key_ignore_ticking_seconds() {
    let view = full_view("Progressing");
    assert_eq!(
        summary_line(&view),
        "rollout demo: Progressing, step 2 of 7 at 10%: at 10% for 3s of 5s; insufficient data: 12 of 50 canary requests"
    );
    let mut later = view.clone();
    if let Some(rollout) = later.rollout.as_mut() {
        rollout.status = "at 10% for 4s of 5s; insufficient data".into();
        rollout.step_elapsed_ms += 1_000;
    }
    assert_eq!(change_key(&view), change_key(&later));
    let mut promoted = later.clone();
    if let Some(rollout) = promoted.rollout.as_mut() {
        rollout.phase = Phase::Promoted;
    }
    assert_ne!(change_key(&later), change_key(&promoted));
}

#[test]
fn history_table_is_newest_first_and_limited() {
    let entry = |id: &str, outcome: &str| {
        json!({
            "id": id, "name": "demo", "canary_version": "v2", "stable_version": null, "strategy": "canary",
            "outcome": outcome, "started_at_unix_ms": 1_764_162_000_000u64, "ended_at_unix_ms": 1_764_162_090_000u64,
            "duration_ms": 90_000, "time_to_decision_ms": 4_000, "final_step_index": 1,
            "final_weight_percent": 0.0, "decisions_dropped": 0,
            "decisions": [{"at_unix_ms": 1_764_162_090_000u64, "actor": "auto", "action": "rollback",
                "from_phase": "Progressing", "to_phase": outcome, "step_index": 1, "weight_percent": 0.0,
                "reason": format!("{outcome} by test"), "evidence": null}]
        })
    };
    let entries: Vec<HistoryEntry> =
        serde_json::from_value(json!([entry("r-2", "RolledBack"), entry("r-1", "Promoted")])).unwrap();
    let table = history(&entries, None);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("STARTED"), "{table}");
    assert!(lines[1].starts_with("2025-11-26T13:00:00Z"), "{table}");
    assert!(lines[1].contains("RolledBack") && lines[1].contains("1m 30s") && lines[1].ends_with("RolledBack by test"));
    assert!(lines[2].contains("Promoted"), "{table}");
    assert_eq!(history(&entries, Some(1)).lines().count(), 2);
    assert_eq!(history(&[], None), "no finished rollouts\n");
}

#[test]
fn assignment_and_weight_change_answers() {
    let answer = Assignment {
        key: "user-42".into(),
        bucket: 812,
        version: "canary".into(),
        canary_weight_bp: 1_000,
        weights_version: 7,
    };
    assert_eq!(
        assignment(&answer),
        "key \"user-42\" → canary (bucket 812 of 10000; canary gets buckets below 1000, weights version 7)\n"
    );
    let mut change = WeightChange {
        weights_version: 8,
        canary_weight_percent: 0.5,
        changed: true,
        wait: Some(Propagation {
            confirmed: true,
            propagation_ms: Some(3.4),
            workers_total: 4,
            workers_confirmed: 4,
            unconfirmed: vec![],
        }),
        rollout: None,
    };
    assert_eq!(
        weight_change(&change),
        "canary weight 0.5% (weights version 8)\napplied by all 4 live workers in 3.4 ms\n"
    );
    change.changed = false;
    change.wait = Some(Propagation {
        confirmed: false,
        propagation_ms: None,
        workers_total: 2,
        workers_confirmed: 1,
        unconfirmed: vec![WorkerRef { proxy_id: "envoy-a".into(), worker_id: "3".into() }],
    });
    assert_eq!(
        weight_change(&change),
        "canary weight 0.5% (weights version 8, unchanged)\napplied by 1 of 2 live workers; not yet:\n  envoy-a worker 3\n"
    );
}

#[test]
fn unknown_phases_and_extra_fields_still_read() {
    let mut rollout = rollout_json("Hibernating");
    rollout["new_field"] = json!({"anything": true});
    let view: FullView = serde_json::from_value(full_view_json(rollout)).unwrap();
    assert_eq!(view.rollout.map(|rollout| rollout.phase), Some(Phase::Unknown));
}
