//! Where results go and what every result file carries besides the numbers.
//!
//! A run writes `bench/results/<YYYY-MM-DD>-<hostname>/<benchmark>.json` (raw
//! samples, summary, machine, command line) and `<benchmark>.md` (the tables a
//! human reads). The date is UTC so two machines agree on it. Smoke runs go to
//! Cargo's target directory instead: they exist to prove the benchmark still
//! works, and must never overwrite a real result that is meant to be committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

use crate::machine::{Artifacts, Machine};

/// What every result file records next to a benchmark's own data.
#[derive(Debug, Clone, Serialize)]
pub struct RunContext {
    /// `argv` exactly as the binary received it.
    pub command_line: Vec<String>,
    /// The harness's environment variables that were set, so the run can be
    /// repeated with the same artifacts.
    pub environment: BTreeMap<String, String>,
    pub started_at_unix_ms: u64,
    pub machine: Machine,
    pub artifacts: Artifacts,
}

/// The environment variables that choose artifacts or change the harness.
const RECORDED_ENV: &[&str] = &[
    canary_tests::paths::ENVOY_BIN_ENV,
    canary_tests::paths::FILTER_WASM_ENV,
    canary_tests::paths::ANALYZER_BIN_ENV,
    canary_tests::paths::BACKEND_BIN_ENV,
    canary_tests::PATIENCE_ENV,
    "CARGO_TARGET_DIR",
    "RUST_LOG",
];

impl RunContext {
    pub fn capture(artifacts: Artifacts) -> Self {
        Self {
            command_line: std::env::args_os().map(|arg| arg.to_string_lossy().into_owned()).collect(),
            environment: RECORDED_ENV
                .iter()
                .filter_map(|name| std::env::var(name).ok().map(|value| ((*name).to_owned(), value)))
                .collect(),
            started_at_unix_ms: unix_now_ms(),
            machine: Machine::describe(),
            artifacts,
        }
    }
}

impl RunContext {
    /// The first lines of every benchmark's Markdown: the machine, the date
    /// and the exact command, so a table is never read without them.
    pub fn markdown_preamble(&self) -> String {
        let machine = &self.machine;
        let unknown = || "unknown".to_owned();
        format!(
            "Measured on `{}` ({}, {} cores available, {} MiB), kernel {}, on {} (UTC).\n\n- command: `{}`\n",
            machine.hostname,
            machine.cpu_model.clone().unwrap_or_else(unknown),
            machine.cores_available.map_or_else(unknown, |cores| cores.to_string()),
            machine.memory_total_mib.map_or_else(unknown, |mib| mib.to_string()),
            machine.kernel.clone().unwrap_or_else(unknown),
            utc_date(self.started_at_unix_ms / 1_000),
            self.command_line.join(" "),
        )
    }
}

/// The directory a run writes to: `explicit` if given, else a per-day,
/// per-host directory under `bench/results/` (smoke runs: under the target
/// directory).
pub fn output_dir(explicit: Option<&Path>, smoke: bool, hostname: &str) -> PathBuf {
    if let Some(explicit) = explicit {
        return explicit.to_path_buf();
    }
    let run_name = format!("{}-{}", utc_date(unix_now_ms() / 1_000), path_safe(hostname));
    if smoke {
        canary_tests::paths::target_dir().join("canary-bench-smoke").join(run_name)
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("results").join(run_name)
    }
}

/// Writes `<dir>/<benchmark>.json` and `<dir>/<benchmark>.md`, returning
/// their paths.
pub fn write(dir: &Path, benchmark: &str, json: &impl Serialize, markdown: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join(format!("{benchmark}.json"));
    let mut text = serde_json::to_string_pretty(json)?;
    text.push('\n');
    std::fs::write(&json_path, text).with_context(|| format!("writing {}", json_path.display()))?;
    let markdown_path = dir.join(format!("{benchmark}.md"));
    std::fs::write(&markdown_path, markdown).with_context(|| format!("writing {}", markdown_path.display()))?;
    Ok((json_path, markdown_path))
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn utc_date(unix_s: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_s);
    let mut text = humantime::format_rfc3339_seconds(time).to_string();
    text.truncate("YYYY-MM-DD".len());
    text
}

/// A hostname reduced to characters that are safe in a path on every OS.
fn path_safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        let table = [
            (0, "1970-01-01"),
            (86_399, "1970-01-01"),
            (86_400, "1970-01-02"),
            (951_782_400, "2000-02-29"),
            (1_709_164_800, "2024-02-29"),
            (1_764_130_000, "2025-11-26"),
            (1_767_225_599, "2025-12-31"),
            (1_767_225_600, "2026-01-01"),
        ];
        for (unix_s, expected) in table {
            assert_eq!(utc_date(unix_s), expected, "{unix_s}");
        }
    }

    #[test]
    fn hostnames_become_safe_path_components() {
        assert_eq!(path_safe("ci-runner-1.example"), "ci-runner-1.example");
        assert_eq!(path_safe("a/b c"), "a_b_c");
    }
}
