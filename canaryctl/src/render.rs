//! Text for people: the status screen (progress bar, step, per-version
//! table, last decisions), one-line summaries for logs and `wait`, history
//! and command answers. Pure functions of the API's JSON, so every screen is
//! tested on fixed input.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::view::{Assignment, Decision, FullView, HistoryEntry, RolloutView, StepView, WeightChange, Window};

/// Width of the weight bar, in characters between the brackets.
pub const BAR_WIDTH: usize = 40;

/// The whole status screen.
pub fn status(view: &FullView, decisions_shown: usize) -> String {
    let mut out = String::new();
    match &view.rollout {
        Some(rollout) => {
            let _ = writeln!(
                out,
                "rollout   {} ({}), {} {}{}",
                rollout.name,
                rollout.id,
                rollout.strategy,
                rollout.canary_version,
                rollout.stable_version.as_ref().map(|stable| format!(" over {stable}")).unwrap_or_default()
            );
            let cause = rollout.pause_cause.as_ref().map(|cause| format!(" ({cause})")).unwrap_or_default();
            let _ = writeln!(
                out,
                "phase     {}{cause}, for {}, failure policy {}",
                rollout.phase.as_str(),
                duration_text(rollout.duration_ms),
                rollout.failure_policy
            );
            let _ = writeln!(out, "step      {}", step_text(rollout));
            let _ = writeln!(out, "status    {}", rollout.status);
        }
        None => {
            let _ = writeln!(out, "rollout   none started (canaryctl start -f rollout.yaml)");
        }
    }
    let _ = writeln!(
        out,
        "weight    {} {} canary (weights version {})",
        progress_bar(view.canary_weight_percent, BAR_WIDTH),
        percent_text(view.canary_weight_percent),
        view.weights_version
    );
    let data_plane = &view.data_plane;
    let _ = writeln!(
        out,
        "workers   {} of {} live workers applied it{}",
        data_plane.converged_workers,
        data_plane.live_workers,
        if data_plane.live_workers == 0 { " (no filter has reported yet)" } else { "" }
    );
    out.push('\n');
    out.push_str(&version_table(view));
    if let Some(rollout) = &view.rollout
        && decisions_shown > 0
        && !rollout.decisions.is_empty()
    {
        let shown = &rollout.decisions[rollout.decisions.len().saturating_sub(decisions_shown)..];
        let _ = writeln!(out, "\nlast decisions ({} of {}):", shown.len(), rollout.decisions_total);
        for decision in shown {
            let _ = writeln!(out, "  {}", decision_line(decision));
        }
    }
    out
}

/// `[##########..............................]` for a percent in 0..=100.
pub fn progress_bar(percent: f64, width: usize) -> String {
    let filled = ((percent.clamp(0.0, 100.0) / 100.0) * width as f64).round() as usize;
    // Any canary traffic at all shows, so 0.5% does not look like 0%.
    let filled = if percent > 0.0 { filled.max(1) } else { filled };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// Where the rollout is in its steps.
pub fn step_text(rollout: &RolloutView) -> String {
    let position = if rollout.step_count == 0 {
        "no steps".to_owned()
    } else if rollout.step_index >= rollout.step_count {
        format!("all {} steps done", rollout.step_count)
    } else {
        format!("{} of {}", rollout.step_index + 1, rollout.step_count)
    };
    match &rollout.step {
        Some(step) => format!(
            "{position}: {} at {}, {} in",
            describe_step(step),
            percent_text(rollout.weight_percent),
            duration_text(rollout.step_elapsed_ms)
        ),
        None => format!("{position}, at {}", percent_text(rollout.weight_percent)),
    }
}

fn describe_step(step: &StepView) -> String {
    match step.kind.as_str() {
        "setWeight" => format!("setWeight {}", step.weight_percent.map(percent_text).unwrap_or_default()),
        "pause" if step.until_approved => "pause until approved".to_owned(),
        "pause" => format!("pause {}", step.duration_ms.map(duration_text).unwrap_or_default()),
        "preChecks" if step.until_approved => "pre-checks, then approval".to_owned(),
        "preChecks" => "pre-checks".to_owned(),
        other => other.to_owned(),
    }
}

/// Stable and canary over the analyzer's window.
fn version_table(view: &FullView) -> String {
    let mut out = format!(
        "{:<8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "VERSION", "RPS", "REQUESTS", "ERRORS", "ERROR%", "P50 MS", "P95 MS", "P99 MS"
    );
    for (name, window) in [("stable", &view.versions.stable.window), ("canary", &view.versions.canary.window)] {
        let _ = writeln!(out, "{}", version_row(name, window));
    }
    let _ = writeln!(out, "(over the last {} s)", view.versions.canary.window.seconds);
    out
}

fn version_row(name: &str, window: &Window) -> String {
    let optional = |value: Option<f64>, decimals: usize| match value {
        Some(value) => format!("{value:.decimals$}"),
        None => "-".to_owned(),
    };
    format!(
        "{name:<8} {:>8.1} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        window.requests_per_second,
        window.requests,
        window.errors,
        window.error_ratio.map(|ratio| format!("{:.2}%", ratio * 100.0)).unwrap_or_else(|| "-".to_owned()),
        optional(window.p50_ms, 1),
        optional(window.p95_ms, 1),
        optional(window.p99_ms, 1),
    )
}

/// `13:12:35  auto  promote  Progressing → Paused  25%  reason`.
pub fn decision_line(decision: &Decision) -> String {
    let transition = match decision.from_phase {
        Some(from) if from != decision.to_phase => format!("{} → {}", from.as_str(), decision.to_phase.as_str()),
        _ => decision.to_phase.as_str().to_owned(),
    };
    format!(
        "{}  {:<10} {:<14} {:<28} {:>7}  {}",
        clock_text(decision.at_unix_ms),
        decision.actor,
        decision.action,
        transition,
        percent_text(decision.weight_percent),
        decision.reason
    )
}

/// One line for logs, `status --watch` without a terminal and `wait`.
pub fn summary_line(view: &FullView) -> String {
    match &view.rollout {
        Some(rollout) => rollout_line(rollout),
        None => format!("no rollout; canary at {}", percent_text(view.canary_weight_percent)),
    }
}

/// `rollout demo: Progressing, step 2 of 7 at 10%: <status>`.
pub fn rollout_line(rollout: &RolloutView) -> String {
    let position = if rollout.step_count == 0 || rollout.step_index >= rollout.step_count {
        String::new()
    } else {
        format!(", step {} of {}", rollout.step_index + 1, rollout.step_count)
    };
    format!(
        "rollout {}: {}{position} at {}: {}",
        rollout.name,
        rollout.phase.as_str(),
        percent_text(rollout.weight_percent),
        rollout.status
    )
}

/// What changes a summary line is worth printing for: not the seconds in
/// the status text, which tick every poll.
pub fn change_key(view: &FullView) -> String {
    match &view.rollout {
        Some(rollout) => format!(
            "{}|{}|{}|{}|{}",
            rollout.id,
            rollout.phase.as_str(),
            rollout.step_index,
            rollout.weight_percent,
            rollout.decisions_total
        ),
        None => format!("none|{}", view.canary_weight_percent),
    }
}

/// `GET /v1/rollouts/history`, newest first.
pub fn history(entries: &[HistoryEntry], limit: Option<usize>) -> String {
    if entries.is_empty() {
        return "no finished rollouts\n".to_owned();
    }
    let mut out = format!(
        "{:<20} {:<24} {:<10} {:<20} {:>10} {:>10} {:>7}  {}\n",
        "STARTED", "NAME", "OUTCOME", "VERSION", "DURATION", "DECIDED IN", "WEIGHT", "LAST DECISION"
    );
    for entry in entries.iter().take(limit.unwrap_or(usize::MAX)) {
        let last = entry.decisions.last().map(|decision| decision.reason.as_str()).unwrap_or("");
        let _ = writeln!(
            out,
            "{:<20} {:<24} {:<10} {:<20} {:>10} {:>10} {:>7}  {last}",
            date_time_text(entry.started_at_unix_ms),
            entry.name,
            entry.outcome.as_str(),
            entry.canary_version,
            duration_text(entry.duration_ms),
            duration_text(entry.time_to_decision_ms),
            percent_text(entry.final_weight_percent),
        );
    }
    out
}

pub fn assignment(assignment: &Assignment) -> String {
    format!(
        "key {:?} → {} (bucket {} of 10000; canary gets buckets below {}, weights version {})\n",
        assignment.key, assignment.version, assignment.bucket, assignment.canary_weight_bp, assignment.weights_version
    )
}

/// The answer to set-weight and rollback.
pub fn weight_change(change: &WeightChange) -> String {
    let mut out = format!(
        "canary weight {} (weights version {}{})\n",
        percent_text(change.canary_weight_percent),
        change.weights_version,
        if change.changed { "" } else { ", unchanged" }
    );
    if let Some(wait) = &change.wait {
        if wait.confirmed {
            let _ = writeln!(
                out,
                "applied by all {} live workers{}",
                wait.workers_total,
                wait.propagation_ms.map(|ms| format!(" in {ms:.1} ms")).unwrap_or_default()
            );
        } else {
            let _ =
                writeln!(out, "applied by {} of {} live workers; not yet:", wait.workers_confirmed, wait.workers_total);
            for worker in &wait.unconfirmed {
                let _ = writeln!(out, "  {} worker {}", worker.proxy_id, worker.worker_id);
            }
        }
    }
    if let Some(rollout) = &change.rollout {
        let _ = writeln!(out, "{}", rollout_line(rollout));
    }
    out
}

/// `12.5%`, `10%`, `0.01%`: two decimals at most, no trailing zeros.
pub fn percent_text(percent: f64) -> String {
    let text = format!("{percent:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// `1h 2m 3s`, whole seconds.
pub fn duration_text(ms: u64) -> String {
    if ms < 1_000 {
        return "0s".to_owned();
    }
    humantime::format_duration(Duration::from_secs(ms / 1_000)).to_string()
}

/// `13:12:35` in UTC.
fn clock_text(unix_ms: u64) -> String {
    let text = date_time_text(unix_ms);
    text.get(11..19).unwrap_or(&text).to_owned()
}

/// `2026-11-26T13:12:35Z`.
fn date_time_text(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
