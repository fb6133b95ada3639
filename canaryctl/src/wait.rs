//! `canaryctl wait`: the decisions of the polling loop, as a pure state
//! machine fed with poll results and the elapsed time, so every exit code is
//! a table test. The loop itself (sleep, HTTP) is in `main`.

use std::time::Duration;

use crate::render::{change_key, rollout_line, summary_line};
use crate::view::{FullView, Phase};

/// The exit codes (also in `canaryctl --help` and the README).
pub mod exit {
    /// Success; `wait`: the rollout was promoted.
    pub const OK: u8 = 0;
    /// `wait`: rolled back or failed; other commands: the analyzer refused.
    pub const FAILED: u8 = 1;
    /// `wait`: still in progress when the timeout ran out.
    pub const TIMED_OUT: u8 = 2;
    /// The analyzer could not be reached or would not answer, or there is
    /// nothing to wait for: the outcome is unknown.
    pub const UNKNOWN: u8 = 3;
    /// The command line is wrong (sysexits' `EX_USAGE`, as clap's own 2
    /// would read as a timeout).
    pub const USAGE: u8 = 64;
}

/// A progress line is printed at least this often while nothing changes,
/// so a pipeline log shows the wait is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(60);

/// What counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Until {
    /// The rollout ended: promoted (0), rolled back or failed (1).
    #[default]
    Done,
    /// The rollout reached a manual approval gate (0) or ended; so a
    /// pipeline can hold its own approval before `canaryctl approve`.
    Approval,
}

/// What one poll of `GET /v1/rollout` gave.
#[derive(Debug, Clone, Copy)]
pub enum Poll<'a> {
    View(&'a FullView),
    /// Down, restarting or overloaded: worth polling again. The text says
    /// what failed and what to check.
    Unavailable(&'a str),
    /// A refusal that polling again cannot fix (a missing token).
    Refused(&'a str),
}

/// What the loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Poll again; print `line` first if there is one.
    Continue { line: Option<String> },
    /// Stop with this exit code and message.
    Finish { code: u8, message: String },
}

/// The wait's memory between polls.
#[derive(Debug, Clone)]
pub struct Waiter {
    timeout: Duration,
    until: Until,
    /// Only this rollout counts, when given.
    rollout_id: Option<String>,
    last_key: Option<String>,
    last_line_at: Option<Duration>,
    unavailable: bool,
}

impl Waiter {
    pub fn new(timeout: Duration, until: Until, rollout_id: Option<String>) -> Waiter {
        Waiter { timeout, until, rollout_id, last_key: None, last_line_at: None, unavailable: false }
    }

    /// Takes one poll made `elapsed` after the wait started.
    pub fn observe(&mut self, poll: Poll<'_>, elapsed: Duration) -> Next {
        let timeout_text = humantime::format_duration(self.timeout);
        match poll {
            Poll::Refused(message) => Next::Finish { code: exit::UNKNOWN, message: message.to_owned() },
            Poll::Unavailable(message) => {
                if elapsed >= self.timeout {
                    return Next::Finish {
                        code: exit::UNKNOWN,
                        message: format!("gave up after {timeout_text}, outcome unknown: {message}"),
                    };
                }
                let first = !self.unavailable;
                self.unavailable = true;
                Next::Continue { line: first.then(|| format!("{message}; retrying until {timeout_text} have passed")) }
            }
            Poll::View(view) => {
                let recovered = std::mem::replace(&mut self.unavailable, false);
                let Some(rollout) = &view.rollout else {
                    return Next::Finish {
                        code: exit::UNKNOWN,
                        message: "no rollout to wait for: start one with `canaryctl start -f rollout.yaml`".to_owned(),
                    };
                };
                if let Some(id) = &self.rollout_id
                    && id != &rollout.id
                {
                    return Next::Finish {
                        code: exit::UNKNOWN,
                        message: format!(
                            "the current rollout is {} ({}), not {id}; `canaryctl history` has the outcome of {id}",
                            rollout.id, rollout.name
                        ),
                    };
                }
                match rollout.phase {
                    Phase::Promoted => {
                        return Next::Finish { code: exit::OK, message: rollout_line(rollout) };
                    }
                    Phase::RolledBack | Phase::Failed => {
                        let last = rollout.decisions.last().map(|decision| decision.reason.as_str());
                        return Next::Finish {
                            code: exit::FAILED,
                            message: match last {
                                Some(reason) => format!("{}\nlast decision: {reason}", rollout_line(rollout)),
                                None => rollout_line(rollout),
                            },
                        };
                    }
                    Phase::AwaitingApproval if self.until == Until::Approval => {
                        return Next::Finish { code: exit::OK, message: rollout_line(rollout) };
                    }
                    _ => {}
                }
                if elapsed >= self.timeout {
                    return Next::Finish {
                        code: exit::TIMED_OUT,
                        message: format!("timed out after {timeout_text}, still in progress: {}", summary_line(view)),
                    };
                }
                let key = change_key(view);
                let due = self.last_line_at.is_none_or(|at| elapsed.saturating_sub(at) >= HEARTBEAT);
                if recovered || due || self.last_key.as_ref() != Some(&key) {
                    self.last_key = Some(key);
                    self.last_line_at = Some(elapsed);
                    return Next::Continue { line: Some(summary_line(view)) };
                }
                Next::Continue { line: None }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{full_view, full_view_json};

    const SECOND: Duration = Duration::from_secs(1);

    fn finish_code(next: &Next) -> Option<u8> {
        match next {
            Next::Finish { code, .. } => Some(*code),
            Next::Continue { .. } => None,
        }
    }

    #[test]
    fn terminal_phases_map_to_exit_codes() {
        for (phase, code, words) in [
            ("Promoted", exit::OK, "rollout demo: Promoted"),
            ("RolledBack", exit::FAILED, "last decision: resumed by alice"),
            ("Failed", exit::FAILED, "rollout demo: Failed"),
        ] {
            let mut waiter = Waiter::new(60 * SECOND, Until::Done, None);
            let next = waiter.observe(Poll::View(&full_view(phase)), SECOND);
            assert_eq!(finish_code(&next), Some(code), "{phase}");
            let Next::Finish { message, .. } = next else { unreachable!() };
            assert!(message.contains(words), "{phase}: {message}");
        }
    }

    #[test]
    fn active_phases_continue_until_the_timeout_then_exit_2() {
        for phase in ["Progressing", "Paused", "AwaitingApproval", "SomethingNew"] {
            let mut waiter = Waiter::new(10 * SECOND, Until::Done, None);
            let view = full_view(phase);
            assert_eq!(finish_code(&waiter.observe(Poll::View(&view), SECOND)), None, "{phase}");
            assert_eq!(finish_code(&waiter.observe(Poll::View(&view), 9 * SECOND)), None, "{phase}");
            let next = waiter.observe(Poll::View(&view), 10 * SECOND);
            assert_eq!(finish_code(&next), Some(exit::TIMED_OUT), "{phase}");
        }
        // A terminal phase seen at the deadline is still the outcome.
        let mut waiter = Waiter::new(10 * SECOND, Until::Done, None);
        assert_eq!(finish_code(&waiter.observe(Poll::View(&full_view("Promoted")), 30 * SECOND)), Some(exit::OK));
    }

    #[test]
    fn unreachable_retries_until_the_timeout_then_exit_3() {
        let mut waiter = Waiter::new(10 * SECOND, Until::Done, None);
        let first = waiter.observe(Poll::Unavailable("cannot reach the analyzer"), SECOND);
        assert_eq!(
            first,
            Next::Continue { line: Some("cannot reach the analyzer; retrying until 10s have passed".to_owned()) }
        );
        // Said once, not every poll.
        assert_eq!(waiter.observe(Poll::Unavailable("cannot reach"), 2 * SECOND), Next::Continue { line: None });
        // Back: the progress line is printed even though nothing changed.
        let view = full_view("Progressing");
        assert!(matches!(waiter.observe(Poll::View(&view), 3 * SECOND), Next::Continue { line: Some(_) }));
        assert!(matches!(
            waiter.observe(Poll::Unavailable("down again"), 4 * SECOND),
            Next::Continue { line: Some(_) }
        ));
        let next = waiter.observe(Poll::Unavailable("down again"), 10 * SECOND);
        assert_eq!(finish_code(&next), Some(exit::UNKNOWN));
        let Next::Finish { message, .. } = next else { unreachable!() };
        assert_eq!(message, "gave up after 10s, outcome unknown: down again");
    }

    #[test]
    fn refusals_and_missing_rollouts_stop_at_once_with_exit_3() {
        let mut waiter = Waiter::new(60 * SECOND, Until::Done, None);
        assert_eq!(finish_code(&waiter.observe(Poll::Refused("401"), SECOND)), Some(exit::UNKNOWN));
        let empty: FullView = serde_json::from_value(full_view_json(serde_json::Value::Null)).unwrap();
        let next = Waiter::new(60 * SECOND, Until::Done, None).observe(Poll::View(&empty), SECOND);
        assert_eq!(finish_code(&next), Some(exit::UNKNOWN));
        let next = Waiter::new(60 * SECOND, Until::Done, Some("r-other".into()))
            .observe(Poll::View(&full_view("Promoted")), SECOND);
        let Next::Finish { code, message } = next else { panic!("{next:?}") };
        assert_eq!(code, exit::UNKNOWN);
        assert!(message.contains("not r-other"), "{message}");
        let next = Waiter::new(60 * SECOND, Until::Done, Some("r-1764162000000-demo".into()))
            .observe(Poll::View(&full_view("Promoted")), SECOND);
        assert_eq!(finish_code(&next), Some(exit::OK));
    }

    #[test]
    fn until_approval_ends_at_a_gate_or_an_outcome() {
        for (phase, code) in [
            ("AwaitingApproval", Some(exit::OK)),
            ("Promoted", Some(exit::OK)),
            ("RolledBack", Some(exit::FAILED)),
            ("Progressing", None),
            ("Paused", None),
        ] {
            let mut waiter = Waiter::new(60 * SECOND, Until::Approval, None);
            assert_eq!(finish_code(&waiter.observe(Poll::View(&full_view(phase)), SECOND)), code, "{phase}");
        }
        // Waiting for the end, a gate is just a phase to wait through.
        let mut waiter = Waiter::new(60 * SECOND, Until::Done, None);
        assert_eq!(finish_code(&waiter.observe(Poll::View(&full_view("AwaitingApproval")), SECOND)), None);
    }

    #[test]
    fn progress_lines_on_change_and_heartbeat_only() {
        let mut waiter = Waiter::new(3_600 * SECOND, Until::Done, None);
        let view = full_view("Progressing");
        assert!(matches!(waiter.observe(Poll::View(&view), SECOND), Next::Continue { line: Some(_) }));
        assert_eq!(waiter.observe(Poll::View(&view), 2 * SECOND), Next::Continue { line: None });
        let mut paused = view.clone();
        if let Some(rollout) = paused.rollout.as_mut() {
            rollout.phase = Phase::Paused;
        }
        assert!(matches!(waiter.observe(Poll::View(&paused), 3 * SECOND), Next::Continue { line: Some(_) }));
        assert_eq!(waiter.observe(Poll::View(&paused), 62 * SECOND), Next::Continue { line: None });
        assert!(matches!(waiter.observe(Poll::View(&paused), 63 * SECOND), Next::Continue { line: Some(_) }));
    }
}
