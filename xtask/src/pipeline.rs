//! A fail-fast sequence of named steps with a timing per step and a summary,
//! so a CI log answers "which step failed, and where did the time go" at the
//! bottom without scrolling.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

#[derive(Debug)]
pub struct Pipeline {
    title: &'static str,
    steps: Vec<Step>,
    started: Instant,
}

#[derive(Debug, Clone, PartialEq)]
struct Step {
    name: &'static str,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    NotRun,
    Passed(Duration),
    Failed(Duration),
}

impl Pipeline {
    /// `planned` names every step up front so the summary can also list the
    /// ones a failure prevented.
    pub fn new(title: &'static str, planned: &[&'static str]) -> Pipeline {
        let steps = planned.iter().map(|&name| Step { name, outcome: Outcome::NotRun }).collect();
        Pipeline { title, steps, started: Instant::now() }
    }

    /// Runs one planned step. An error is returned with the step's name in
    /// front, and the caller is expected to stop (`?`).
    pub fn step<T>(&mut self, name: &'static str, body: impl FnOnce() -> Result<T>) -> Result<T> {
        let index = self.steps.iter().position(|step| step.name == name).expect("step was planned");
        eprintln!("\n==> [{}/{}] {name}", index + 1, self.steps.len());
        let started = Instant::now();
        let result = body();
        let elapsed = started.elapsed();
        match result {
            Ok(value) => {
                eprintln!("<== {name}: ok in {}", format_duration(elapsed));
                self.steps[index].outcome = Outcome::Passed(elapsed);
                Ok(value)
            }
            Err(err) => {
                eprintln!("<== {name}: FAILED after {}", format_duration(elapsed));
                self.steps[index].outcome = Outcome::Failed(elapsed);
                Err(anyhow!("step `{name}` failed: {err:#}"))
            }
        }
    }

    pub fn summary(&self) -> String {
        let width = self.steps.iter().map(|step| step.name.len()).max().unwrap_or(0);
        let mut out = format!("\n{} summary:\n", self.title);
        for step in &self.steps {
            let (status, time) = match step.outcome {
                Outcome::NotRun => ("not run", String::new()),
                Outcome::Passed(elapsed) => ("ok", format_duration(elapsed)),
                Outcome::Failed(elapsed) => ("FAILED", format_duration(elapsed)),
            };
            let line = format!("  {status:<8} {:<width$}  {time:>7}", step.name);
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let total = format_duration(self.started.elapsed());
        match self.steps.iter().find(|step| matches!(step.outcome, Outcome::Failed(_))) {
            Some(failed) => {
                let _ = write!(out, "{}: FAILED at `{}` after {total}", self.title, failed.name);
            }
            None if self.steps.iter().all(|step| !matches!(step.outcome, Outcome::NotRun)) => {
                let passed = self.steps.len();
                let _ = write!(out, "{}: ok ({passed} passed) in {total}", self.title);
            }
            None => {
                let _ = write!(out, "{}: stopped after {total}", self.title);
            }
        }
        out
    }
}

/// `0.4s`, `12.3s`, `4m05s`.
pub fn format_duration(elapsed: Duration) -> String {
    let tenths = elapsed.as_millis() / 100;
    if tenths < 600 {
        format!("{}.{}s", tenths / 10, tenths % 10)
    } else {
        let seconds = elapsed.as_secs();
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations() {
        let check = |millis: u64, expected: &str| assert_eq!(format_duration(Duration::from_millis(millis)), expected);
        check(0, "0.0s");
        check(449, "0.4s");
        check(12_345, "12.3s");
        check(59_999, "59.9s");
        check(60_000, "1m00s");
        check(245_900, "4m05s");
        check(5_400_000, "90m00s");
    }

    #[test]
    fn stops_at_the_first_failure_and_says_where() {
        let mut pipeline = Pipeline::new("xtask test", &["fmt", "clippy", "test"]);
        pipeline.step("fmt", || Ok(())).unwrap();
        let err = pipeline.step("clippy", || -> Result<()> { Err(anyhow!("exit status: 101")) }).unwrap_err();
        assert_eq!(err.to_string(), "step `clippy` failed: exit status: 101");

        let summary = pipeline.summary();
        let lines: Vec<&str> = summary.lines().collect();
        assert_eq!(lines[1], "xtask test summary:");
        assert!(lines[2].starts_with("  ok       fmt   "), "{summary}");
        assert!(lines[3].starts_with("  FAILED   clippy"), "{summary}");
        assert_eq!(lines[4], "  not run  test");
        assert!(lines[5].starts_with("xtask test: FAILED at `clippy` after "), "{summary}");
    }

    #[test]
    fn reports_success_when_every_step_passed() {
        let mut pipeline = Pipeline::new("xtask test", &["a", "b"]);
        assert_eq!(pipeline.step("a", || Ok(1)).unwrap(), 1);
        assert!(pipeline.summary().contains("\nxtask test: stopped after "), "{}", pipeline.summary());
        pipeline.step("b", || Ok(())).unwrap();
        assert!(pipeline.summary().contains("\nxtask test: ok (2 passed) in "));
    }
}
