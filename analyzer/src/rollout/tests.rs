//! The state machine, walked with scripted inputs: no clock, no engine, no
//! disk. Times are seconds after `T0`.

use serde_json::json;

use super::*;

const T0: u64 = 1_764_130_000_000;

fn at(seconds: u64) -> u64 {
    T0 + seconds * 1_000
}

fn spec(yaml: &str) -> RolloutSpec {
    RolloutSpec::parse(yaml.as_bytes(), SpecFormat::Yaml).unwrap_or_else(|error| panic!("{yaml}: {error}"))
}

/// 10% for 10 s, 50% for 10 s, then 100%.
const TWO_STEPS: &str = "
canaryVersion: v2
steps:
  - setWeight: 10
  - pause: {duration: 10s}
  - setWeight: 50
  - pause: {duration: 10s}
  - setWeight: 100
";

fn observation(verdict: ObservedVerdict, gates_pass: bool) -> Observation {
    Observation { verdict, gates_pass, assessment: json!({"test": "evidence"}) }
}

fn healthy() -> Option<Observation> {
    Some(observation(ObservedVerdict::Healthy, true))
}

fn insufficient() -> Option<Observation> {
    Some(observation(ObservedVerdict::InsufficientData { reason: "12 of 100 canary requests".into() }, false))
}

fn regression() -> Option<Observation> {
    Some(observation(
        ObservedVerdict::Regression {
            rule: "error_rate_e_value".into(),
            summary: "canary error rate 4.8% vs stable 0.1%, e-value 412 >= 200".into(),
        },
        false,
    ))
}

fn guard_tripped() -> Option<Observation> {
    Some(observation(
        ObservedVerdict::GuardTripped { rule: "error_rate_above_5pct_for_2m".into(), summary: "errors 9%".into() },
        false,
    ))
}

fn started(yaml: &str) -> (Rollout, Vec<Action>) {
    Rollout::start("r1".into(), spec(yaml), "ci", Some("release 42"), at(0))
}

fn tick(rollout: &mut Rollout, seconds: u64, observation: Option<Observation>) -> Vec<Action> {
    tick_with_hosts(rollout, seconds, observation, None)
}

fn tick_with_hosts(
    rollout: &mut Rollout,
    seconds: u64,
    observation: Option<Observation>,
    hosts: Option<HostCounts>,
) -> Vec<Action> {
    // A test that passes no host counts means host health is not configured.
    let hosts_configured = hosts.is_some();
    rollout.handle(&Input::Tick { observation, hosts, hosts_configured }, at(seconds)).expect("ticks are never refused")
}

fn command(rollout: &mut Rollout, seconds: u64, command: Command) -> Result<Vec<Action>, Rejection> {
    let input = Input::Command { actor: "alice".into(), reason: Some("looks good".into()), command };
    rollout.handle(&input, at(seconds))
}

fn weights(actions: &[Action]) -> Vec<u16> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::SetWeight { weight_bp } => Some(*weight_bp),
            _ => None,
        })
        .collect()
}

fn notified_phases(actions: &[Action]) -> Vec<(Option<Phase>, Phase)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Notify(notification) => Some((notification.decision.from_phase, notification.decision.to_phase)),
            _ => None,
        })
        .collect()
}

fn analysis_starts(actions: &[Action]) -> Vec<(f64, bool)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::StartAnalysisStep { canary_share, fresh, .. } => Some((*canary_share, *fresh)),
            _ => None,
        })
        .collect()
}

/// (phase, weight bp, step index) of a rollout.
fn position(rollout: &Rollout) -> (Phase, u16, usize) {
    (rollout.phase, rollout.weight_bp, rollout.step_index)
}

#[test]
fn a_good_canary_walks_every_step_to_promoted() {
    let (mut rollout, actions) = started(TWO_STEPS);
    assert_eq!(weights(&actions), [0, 1_000], "starts from 0%, then the first setWeight at once");
    assert_eq!(analysis_starts(&actions), [(0.1, true)]);
    assert_eq!(notified_phases(&actions), [(None, Phase::Progressing)]);
    assert_eq!(position(&rollout), (Phase::Progressing, 1_000, 1));
    assert_eq!(rollout.decisions[0].actor, "ci");
    assert!(rollout.decisions[0].reason.ends_with(": release 42"), "{}", rollout.decisions[0].reason);

    // (second, observation, expected position, expected weight changes)
    type Line = (u64, Option<Observation>, (Phase, u16, usize), Vec<u16>);
    let script: Vec<Line> = vec![
        (5, healthy(), (Phase::Progressing, 1_000, 1), vec![]),
        (10, healthy(), (Phase::Progressing, 5_000, 3), vec![5_000]),
        (15, healthy(), (Phase::Progressing, 5_000, 3), vec![]),
        (20, healthy(), (Phase::Promoted, 10_000, 5), vec![10_000]),
    ];
    for (second, observation, expected, expected_weights) in script {
        let actions = tick(&mut rollout, second, observation);
        assert_eq!(position(&rollout), expected, "at {second}s");
        assert_eq!(weights(&actions), expected_weights, "at {second}s");
    }
    let actions: Vec<&str> = rollout.decisions.iter().map(|decision| decision.action.as_str()).collect();
    assert_eq!(actions, ["start", "promote", "promote"]);
    assert!(rollout.decisions.iter().skip(1).all(|decision| decision.actor == AUTO_ACTOR));
    assert_eq!(rollout.decisions[1].evidence, Some(json!({"test": "evidence"})), "promotions carry evidence");
    assert_eq!(rollout.ended_at_unix_ms, Some(at(20)));
    assert_eq!(rollout.time_to_decision_ms, Some(10_000), "from the start of the deciding step");
    assert_eq!(rollout.enforced_weight_bp(), None, "after promotion the weights are the operators' again");
}

#[test]
fn omitted_steps_are_the_briefs_schedule() {
    let (mut rollout, _) = started("canaryVersion: v2");
    let half_hour = 30 * 60;
    let mut seen = vec![rollout.weight_bp];
    for pause in 1..=3 {
        tick(&mut rollout, pause * half_hour - 1, healthy());
        assert_eq!(*seen.last().expect("a weight"), rollout.weight_bp, "not before 30 minutes");
        tick(&mut rollout, pause * half_hour, healthy());
        seen.push(rollout.weight_bp);
    }
    assert_eq!(seen, [1_000, 2_500, 5_000, 10_000]);
    assert_eq!(rollout.phase, Phase::Promoted);
}

#[test]
fn insufficient_data_or_failing_gates_never_pass() {
    let (mut rollout, _) = started(TWO_STEPS);
    let not_enough = [
        insufficient(),
        None,
        Some(observation(ObservedVerdict::Healthy, false)),
        Some(observation(ObservedVerdict::InsufficientData { reason: "no canary traffic".into() }, true)),
    ];
    for (second, observation) in [10, 100, 1_000, 100_000].into_iter().zip(not_enough) {
        let actions = tick(&mut rollout, second, observation.clone());
        assert!(actions.is_empty(), "{observation:?} at {second}s: {actions:?}");
        assert_eq!(position(&rollout), (Phase::Progressing, 1_000, 1));
    }
    assert!(rollout.status_text(at(100_000)).contains("insufficient data"), "{}", rollout.status_text(at(100_000)));
    tick(&mut rollout, 100_001, healthy());
    assert_eq!(position(&rollout), (Phase::Progressing, 5_000, 3), "evidence at last");
}

#[test]
fn a_regression_rolls_back_at_once_with_its_evidence() {
    let (mut rollout, _) = started(TWO_STEPS);
    tick(&mut rollout, 10, healthy());
    let actions = tick(&mut rollout, 12, regression());
    assert_eq!(weights(&actions), [0]);
    assert_eq!(position(&rollout), (Phase::RolledBack, 0, 3));
    assert_eq!(notified_phases(&actions), [(Some(Phase::Progressing), Phase::RolledBack)]);
    let decision = rollout.decisions.last().expect("a decision");
    assert_eq!((decision.actor.as_str(), decision.action.as_str()), (AUTO_ACTOR, "rollback"));
    assert_eq!(
        decision.reason,
        "rolled back: canary error rate 4.8% vs stable 0.1%, e-value 412 >= 200 (error_rate_e_value)"
    );
    assert_eq!(decision.evidence, Some(json!({"test": "evidence"})));
    assert_eq!(rollout.time_to_decision_ms, Some(2_000), "detected 2 s into the 50% step");
    assert_eq!(rollout.enforced_weight_bp(), Some(0));
    assert!(tick(&mut rollout, 13, healthy()).is_empty(), "a rolled-back rollout does nothing on ticks");
}

#[test]
fn the_pause_policy_freezes_the_weights_and_waits_for_a_person() {
    let (mut rollout, _) = started(&format!("failurePolicy: pause\n{TWO_STEPS}"));
    let actions = tick(&mut rollout, 3, guard_tripped());
    assert!(weights(&actions).is_empty(), "weights frozen");
    assert_eq!(position(&rollout), (Phase::Paused, 1_000, 1));
    assert_eq!(rollout.pause_cause, Some(PauseCause::Failure));
    assert_eq!(notified_phases(&actions), [(Some(Phase::Progressing), Phase::Paused)]);
    for second in [20, 40, 400] {
        assert!(tick(&mut rollout, second, healthy()).is_empty(), "still waiting for a person at {second}s");
    }
    assert_eq!(rollout.enforced_weight_bp(), Some(1_000));

    // Resuming starts fresh evidence and a fresh step clock.
    let actions = command(&mut rollout, 500, Command::Resume).expect("resume");
    assert_eq!(analysis_starts(&actions), [(0.1, true)]);
    assert_eq!(position(&rollout), (Phase::Progressing, 1_000, 1));
    tick(&mut rollout, 505, healthy());
    assert_eq!(rollout.weight_bp, 1_000, "the step restarted at the resume");
    tick(&mut rollout, 510, healthy());
    assert_eq!(rollout.weight_bp, 5_000);
}

#[test]
fn a_regression_while_paused_by_a_person_still_rolls_back() {
    let (mut rollout, _) = started(TWO_STEPS);
    command(&mut rollout, 1, Command::Pause).expect("pause");
    assert!(tick(&mut rollout, 30, healthy()).is_empty(), "a pause holds the step");
    assert!(rollout.status_text(at(30)).starts_with("paused"));
    tick(&mut rollout, 31, regression());
    assert_eq!(position(&rollout), (Phase::RolledBack, 0, 1));
}

#[test]
fn pause_and_resume_hold_the_step_without_losing_its_clock() {
    let (mut rollout, _) = started(TWO_STEPS);
    let actions = command(&mut rollout, 2, Command::Pause).expect("pause");
    assert_eq!(notified_phases(&actions), [(Some(Phase::Progressing), Phase::Paused)]);
    assert_eq!(command(&mut rollout, 3, Command::Pause).map_err(|e| e.message.contains("already paused")), Err(true));
    tick(&mut rollout, 20, healthy());
    assert_eq!(position(&rollout), (Phase::Paused, 1_000, 1));
    let actions = command(&mut rollout, 21, Command::Resume).expect("resume");
    assert!(analysis_starts(&actions).is_empty(), "a person's pause keeps the evidence");
    assert_eq!(rollout.phase, Phase::Progressing);
    tick(&mut rollout, 22, healthy());
    assert_eq!(rollout.weight_bp, 5_000, "the 10 s had passed while paused");
    let resume_again = command(&mut rollout, 23, Command::Resume).expect_err("not paused");
    assert!(resume_again.message.contains("not paused"), "{resume_again}");
}

#[test]
fn an_approval_gate_waits_for_approve() {
    let (mut rollout, actions) = started(
        "canaryVersion: v2
steps:
  - setWeight: 20
  - pause: {duration: 5s}
  - pause: {untilApproved: true}
  - setWeight: 60
  - pause: {duration: 5s}
",
    );
    assert_eq!(analysis_starts(&actions), [(0.2, true)]);
    let error = command(&mut rollout, 1, Command::Approve).expect_err("nothing to approve yet");
    assert!(error.message.contains("nothing awaits approval"), "{error}");
    let actions = tick(&mut rollout, 5, healthy());
    assert_eq!(position(&rollout), (Phase::AwaitingApproval, 2_000, 2));
    assert!(analysis_starts(&actions).is_empty(), "the gate keeps the running engine step");
    assert_eq!(notified_phases(&actions), [(Some(Phase::Progressing), Phase::AwaitingApproval)]);
    assert!(tick(&mut rollout, 5_000, healthy()).is_empty(), "time alone never passes a gate");
    assert!(rollout.status_text(at(5_000)).contains("awaiting approval"));

    let actions = command(&mut rollout, 5_001, Command::Approve).expect("approve");
    assert_eq!(weights(&actions), [6_000]);
    assert_eq!(analysis_starts(&actions), [(0.6, false)], "the e-process carries over");
    assert_eq!(position(&rollout), (Phase::Progressing, 6_000, 4));
    let decision = rollout.decisions.last().expect("decision");
    assert_eq!((decision.actor.as_str(), decision.action.as_str()), ("alice", "approve"));
    assert_eq!(decision.from_phase, Some(Phase::AwaitingApproval));
    assert!(decision.reason.ends_with(": looks good"), "{}", decision.reason);
    tick(&mut rollout, 5_006, healthy());
    assert_eq!(position(&rollout), (Phase::Promoted, 10_000, 5), "steps ran out: promoted to 100%");
}

#[test]
fn a_regression_at_an_approval_gate_rolls_back() {
    let (mut rollout, _) = started("canaryVersion: v2\nsteps: [{setWeight: 5}, {pause: {untilApproved: true}}]");
    assert_eq!(rollout.phase, Phase::AwaitingApproval);
    tick(&mut rollout, 3, regression());
    assert_eq!(position(&rollout), (Phase::RolledBack, 0, 1));
}

#[test]
fn promote_goes_to_the_next_step_and_full_goes_to_100() {
    let (mut rollout, _) = started(TWO_STEPS);
    let actions = command(&mut rollout, 1, Command::Promote { full: false }).expect("promote");
    assert_eq!(weights(&actions), [5_000]);
    assert_eq!(position(&rollout), (Phase::Progressing, 5_000, 3));
    assert!(notified_phases(&actions).is_empty(), "still Progressing");
    let decision = rollout.decisions.last().expect("decision");
    assert_eq!((decision.actor.as_str(), decision.action.as_str()), ("alice", "promote"));

    let actions = command(&mut rollout, 2, Command::Promote { full: true }).expect("promote full");
    assert_eq!(weights(&actions), [10_000]);
    assert_eq!(position(&rollout).0, Phase::Promoted);
    assert_eq!(notified_phases(&actions), [(Some(Phase::Progressing), Phase::Promoted)]);
    assert_eq!(rollout.decisions.last().map(|decision| decision.action.as_str()), Some("promote_full"));
}

#[test]
fn promote_from_a_failure_pause_starts_fresh_evidence() {
    let (mut rollout, _) = started(&format!("failurePolicy: pause\n{TWO_STEPS}"));
    tick(&mut rollout, 2, regression());
    assert_eq!(rollout.pause_cause, Some(PauseCause::Failure));
    let actions = command(&mut rollout, 3, Command::Promote { full: false }).expect("promote");
    assert_eq!(analysis_starts(&actions), [(0.5, true)]);
    assert_eq!((rollout.phase, rollout.pause_cause), (Phase::Progressing, None));
}

#[test]
fn gradual_rollback_ramps_down_one_step_a_second() {
    let (mut rollout, _) = started(TWO_STEPS);
    tick(&mut rollout, 10, healthy());
    assert_eq!(rollout.weight_bp, 5_000);
    let actions = command(&mut rollout, 100, Command::Rollback { gradual_seconds: Some(5) }).expect("rollback");
    assert_eq!(weights(&actions), [4_000], "the first step down happens at once");
    assert_eq!(rollout.phase, Phase::Progressing);
    assert!(rollout.gradual.is_some());
    let refused = command(&mut rollout, 100, Command::Promote { full: false }).expect_err("ramping");
    assert!(refused.message.contains("rolling back gradually"), "{refused}");

    // (second, weight after the tick, phase)
    for (second, weight_bp, phase) in [
        (101, 3_000, Phase::Progressing),
        (101, 3_000, Phase::Progressing),
        (102, 2_000, Phase::Progressing),
        (103, 1_000, Phase::Progressing),
        (104, 0, Phase::RolledBack),
    ] {
        tick(&mut rollout, second, healthy());
        assert_eq!((rollout.weight_bp, rollout.phase), (weight_bp, phase), "at {second}s");
    }
    let last = rollout.decisions.last().expect("decision");
    assert_eq!((last.actor.as_str(), last.to_phase), (AUTO_ACTOR, Phase::RolledBack));
    assert!(last.reason.contains("reached 0%"), "{}", last.reason);
}

#[test]
fn a_late_tick_jumps_down_the_ramp_and_rollback_or_a_guard_cuts_it_short() {
    let ramp = GradualRollback { from_bp: 10_000, seconds: 4, started_at_unix_ms: at(0) };
    let schedule: Vec<u16> =
        [0, 999, 1_000, 2_500, 3_000, 60_000].iter().map(|ms| ramp.weight_bp_at(T0 + ms)).collect();
    assert_eq!(schedule, [7_500, 7_500, 5_000, 2_500, 0, 0]);

    let (mut rollout, _) = started(TWO_STEPS);
    command(&mut rollout, 1, Command::Rollback { gradual_seconds: Some(10) }).expect("ramp");
    let actions = command(&mut rollout, 2, Command::Rollback { gradual_seconds: None }).expect("finish at once");
    assert_eq!(weights(&actions), [0]);
    assert_eq!(rollout.phase, Phase::RolledBack);

    let (mut rollout, _) = started(TWO_STEPS);
    command(&mut rollout, 1, Command::Rollback { gradual_seconds: Some(10) }).expect("ramp");
    tick(&mut rollout, 2, guard_tripped());
    assert_eq!((rollout.weight_bp, rollout.phase), (0, Phase::RolledBack));
    assert_eq!(rollout.decisions.last().map(|decision| decision.actor.as_str()), Some(AUTO_ACTOR));
}

#[test]
fn instant_rollback_by_a_person_records_who_and_why() {
    let (mut rollout, _) = started(TWO_STEPS);
    let actions = command(&mut rollout, 4, Command::Rollback { gradual_seconds: None }).expect("rollback");
    assert_eq!(weights(&actions), [0]);
    assert_eq!(notified_phases(&actions), [(Some(Phase::Progressing), Phase::RolledBack)]);
    let decision = rollout.decisions.last().expect("decision");
    assert_eq!(decision.reason, "rolled back by alice: looks good");
    assert_eq!(rollout.time_to_decision_ms, Some(4_000));
}

#[test]
fn terminal_phases_refuse_every_command_and_change_nothing() {
    let mut terminal = Vec::new();
    let (mut promoted, _) = started(TWO_STEPS);
    command(&mut promoted, 1, Command::Promote { full: true }).expect("promote");
    terminal.push(promoted);
    let (mut rolled_back, _) = started(TWO_STEPS);
    tick(&mut rolled_back, 1, regression());
    terminal.push(rolled_back);
    let (mut failed, _) = started("canaryVersion: v2\nstrategy: blueGreen\npreChecks: {timeout: 5s}");
    tick_with_hosts(&mut failed, 6, None, Some(HostCounts { healthy: 0, total: 2 }));
    terminal.push(failed);

    let commands = [
        Command::Promote { full: false },
        Command::Promote { full: true },
        Command::Pause,
        Command::Resume,
        Command::Approve,
        Command::Rollback { gradual_seconds: None },
        Command::Rollback { gradual_seconds: Some(30) },
        Command::SetWeight { weight_bp: 100 },
    ];
    for rollout in terminal {
        assert!(rollout.phase.is_terminal());
        for candidate in commands {
            let mut copy = rollout.clone();
            let error = command(&mut copy, 50, candidate).expect_err("terminal");
            assert!(error.message.contains("POST /v1/rollouts"), "{}: {error}", rollout.phase);
            assert_eq!(copy, rollout, "{candidate:?} on {} changed the state", rollout.phase);
        }
    }
}

#[test]
fn blue_green_switches_in_one_change_once_hosts_are_healthy_then_watches() {
    let (mut rollout, actions) =
        started("canaryVersion: v2\nstrategy: blueGreen\npostSwitchWatch: 30s\npreChecks: {timeout: 1m}");
    assert_eq!(weights(&actions), [0]);
    assert_eq!(position(&rollout), (Phase::Progressing, 0, 0));
    assert!(analysis_starts(&actions).is_empty(), "no traffic to analyse at 0%");

    let unhealthy = Some(HostCounts { healthy: 1, total: 2 });
    let healthy_hosts = Some(HostCounts { healthy: 2, total: 2 });
    assert!(tick_with_hosts(&mut rollout, 10, None, unhealthy).is_empty());
    assert!(tick_with_hosts(&mut rollout, 11, None, Some(HostCounts { healthy: 0, total: 0 })).is_empty());
    let actions = tick_with_hosts(&mut rollout, 12, None, healthy_hosts);
    assert_eq!(weights(&actions), [10_000], "one switch, 0% → 100%");
    assert_eq!(analysis_starts(&actions), [(1.0, true)]);
    assert_eq!(position(&rollout), (Phase::Progressing, 10_000, 2));
    assert!(rollout.decisions.last().is_some_and(|decision| decision.reason.contains("2 of 2 canary hosts healthy")));

    // At 100% only the guards count: no stable arm, no comparison.
    tick(&mut rollout, 20, regression());
    tick(&mut rollout, 30, insufficient());
    assert_eq!(position(&rollout), (Phase::Progressing, 10_000, 2));
    let actions = tick(&mut rollout, 42, insufficient());
    assert_eq!(position(&rollout), (Phase::Promoted, 10_000, 3));
    assert!(weights(&actions).iter().all(|weight| *weight == 10_000));
}

#[test]
fn blue_green_waits_while_configured_host_health_is_not_read_yet() {
    // The first tick can come before the first poll of Envoy's /clusters:
    // unknown is not healthy when host health is configured.
    let (mut rollout, _) = started("canaryVersion: v2\nstrategy: blueGreen\npreChecks: {timeout: 1m}");
    let unknown = Input::Tick { observation: None, hosts: None, hosts_configured: true };
    assert!(rollout.handle(&unknown, at(1)).expect("ticks are never refused").is_empty());
    assert_eq!(position(&rollout), (Phase::Progressing, 0, 0));
    let actions = tick_with_hosts(&mut rollout, 2, None, Some(HostCounts { healthy: 1, total: 1 }));
    assert_eq!(weights(&actions), [10_000]);
    // Still unknown when the pre-check times out: failed at 0%, saying why.
    let (mut rollout, _) = started("canaryVersion: v2\nstrategy: blueGreen\npreChecks: {timeout: 5s}");
    rollout.handle(&unknown, at(10)).expect("ticks are never refused");
    assert_eq!(position(&rollout), (Phase::Failed, 0, 0));
    assert!(rollout.decisions.last().is_some_and(|d| d.reason.contains("not read from Envoy")));
}

#[test]
fn blue_green_switches_back_instantly_on_a_guard_or_a_rollback() {
    let spec_text = "canaryVersion: v2\nstrategy: blueGreen";
    let (mut rollout, _) = started(spec_text);
    tick(&mut rollout, 1, None);
    assert_eq!(rollout.weight_bp, 10_000, "host health unknown: the pre-check is skipped");
    let actions = tick(&mut rollout, 2, guard_tripped());
    assert_eq!(weights(&actions), [0]);
    assert_eq!(rollout.phase, Phase::RolledBack);

    let (mut rollout, _) = started(spec_text);
    tick(&mut rollout, 1, None);
    let actions = command(&mut rollout, 2, Command::Rollback { gradual_seconds: None }).expect("switch back");
    assert_eq!(weights(&actions), [0]);
    assert_eq!(rollout.phase, Phase::RolledBack);
}

#[test]
fn blue_green_pre_checks_can_wait_for_approval_and_time_out() {
    let (mut rollout, _) = started("canaryVersion: v2\nstrategy: blueGreen\npreChecks: {untilApproved: true}");
    assert_eq!(rollout.phase, Phase::AwaitingApproval);
    let healthy_hosts = Some(HostCounts { healthy: 3, total: 3 });
    assert!(tick_with_hosts(&mut rollout, 5, None, healthy_hosts).is_empty(), "healthy but not approved");
    let actions = command(&mut rollout, 6, Command::Approve).expect("approve");
    assert!(weights(&actions).is_empty(), "the switch waits for the next tick's host check");
    assert_eq!(rollout.phase, Phase::Progressing);
    tick_with_hosts(&mut rollout, 7, None, healthy_hosts);
    assert_eq!(rollout.weight_bp, 10_000);

    let (mut rollout, _) = started("canaryVersion: v2\nstrategy: blueGreen\npreChecks: {timeout: 30s}");
    let sick = Some(HostCounts { healthy: 0, total: 3 });
    tick_with_hosts(&mut rollout, 29, None, sick);
    assert_eq!(rollout.phase, Phase::Progressing);
    let actions = tick_with_hosts(&mut rollout, 30, None, sick);
    assert_eq!(position(&rollout), (Phase::Failed, 0, 0));
    assert_eq!(notified_phases(&actions), [(Some(Phase::Progressing), Phase::Failed)]);
    assert_eq!(rollout.enforced_weight_bp(), Some(0));
}

#[test]
fn manual_strategy_takes_weights_from_the_api_and_only_advises() {
    let (mut rollout, actions) = started("canaryVersion: v2\nstrategy: manual");
    assert_eq!(weights(&actions), [0]);
    assert_eq!(position(&rollout), (Phase::Progressing, 0, 0));
    let actions = command(&mut rollout, 1, Command::SetWeight { weight_bp: 1_234 }).expect("set weight");
    assert_eq!(weights(&actions), [1_234]);
    assert_eq!(analysis_starts(&actions), [(0.1234, true)]);

    let actions = tick(&mut rollout, 2, regression());
    assert!(weights(&actions).is_empty(), "advisory only");
    assert_eq!(rollout.phase, Phase::Progressing);
    assert_eq!(rollout.decisions.last().map(|decision| decision.action.as_str()), Some("advisory"));
    assert_eq!(notified_phases(&actions).len(), 1, "an advisory is notified");
    assert!(tick(&mut rollout, 3, regression()).is_empty(), "logged once per episode");
    tick(&mut rollout, 4, healthy());
    assert_eq!(tick(&mut rollout, 5, guard_tripped()).len(), 2, "a new episode is logged again");

    command(&mut rollout, 6, Command::Pause).expect("pause");
    let refused = command(&mut rollout, 7, Command::SetWeight { weight_bp: 5_000 }).expect_err("paused");
    assert!(refused.message.contains("resume"), "{refused}");
    command(&mut rollout, 8, Command::Resume).expect("resume");
    let actions = command(&mut rollout, 9, Command::Promote { full: false }).expect("promote");
    assert_eq!(weights(&actions), [10_000]);
    assert_eq!(rollout.phase, Phase::Promoted);
}

#[test]
fn set_weight_on_an_automatic_rollout_names_the_actions_to_use() {
    let (mut rollout, _) = started(TWO_STEPS);
    let error = command(&mut rollout, 1, Command::SetWeight { weight_bp: 5 }).expect_err("canary");
    assert!(error.message.contains("/v1/rollout/promote"), "{error}");
}

#[test]
fn a_restored_rollout_continues_exactly_where_it_was() {
    let (mut uninterrupted, _) = started(TWO_STEPS);
    let (mut restarted, _) = started(TWO_STEPS);
    for rollout in [&mut uninterrupted, &mut restarted] {
        tick(rollout, 10, healthy());
        command(rollout, 11, Command::Pause).expect("pause");
    }
    // As after kill -9: only what was persisted survives.
    let saved = serde_json::to_vec(&restarted).expect("serialize");
    let mut restarted: Rollout = serde_json::from_slice(&saved).expect("deserialize");
    assert_eq!(restarted, uninterrupted);
    for rollout in [&mut uninterrupted, &mut restarted] {
        command(rollout, 30, Command::Resume).expect("resume");
        tick(rollout, 31, healthy());
    }
    assert_eq!(restarted, uninterrupted);
    assert_eq!(position(&restarted), (Phase::Promoted, 10_000, 5));
}

#[test]
fn a_spec_of_only_set_weights_promotes_on_start() {
    let (rollout, actions) = started("canaryVersion: v2\nsteps: [{setWeight: 50}, {setWeight: 100}]");
    assert_eq!(weights(&actions), [0, 5_000, 10_000]);
    assert_eq!(rollout.phase, Phase::Promoted);
    assert_eq!(rollout.time_to_decision_ms, Some(0));
    assert_eq!(notified_phases(&actions), [(None, Phase::Promoted)]);
}

#[test]
fn the_decision_log_is_bounded() {
    let (mut rollout, _) = started("canaryVersion: v2\nstrategy: manual");
    for second in 1..=(MAX_DECISIONS as u64 + 10) {
        command(&mut rollout, second, Command::SetWeight { weight_bp: (second % 100) as u16 + 1 }).expect("set");
    }
    assert_eq!(rollout.decisions.len(), MAX_DECISIONS);
    assert_eq!(rollout.decisions_dropped, 11);
}
