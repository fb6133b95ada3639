//! `summary.md`: every verdict of a results directory in one table, with the
//! machine it was measured on. This is the table the README's performance
//! section quotes; the bench never edits the README itself.
//!
//! It reads the `verdicts` array that each benchmark writes into its JSON, so
//! it can be rerun on an old directory, and a benchmark that was not run is
//! simply absent.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use crate::report::Verdict;

/// The JSON files a summary looks for, in the suite's order; `-batched` are
/// the runs with the filter's `batch_reports` (one reporter per Envoy).
pub const BENCHMARKS: [&str; 7] =
    ["overhead", "propagation", "propagation-batched", "detection", "scale", "scale-batched", "footprint"];

/// What one benchmark's JSON contributed.
#[derive(Debug, Clone)]
pub struct Section {
    pub benchmark: String,
    pub verdicts: Vec<Verdict>,
    /// The whole result: every benchmark flattens its run context (machine,
    /// artifacts, command line) into the top level.
    pub result: Value,
}

/// Reads the verdicts of every benchmark present in `dir`.
pub fn collect(dir: &Path) -> anyhow::Result<Vec<Section>> {
    let mut sections = Vec::new();
    for benchmark in BENCHMARKS {
        let path = dir.join(format!("{benchmark}.json"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        let json: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let verdicts = match json.get("verdicts") {
            Some(verdicts) => serde_json::from_value(verdicts.clone())
                .with_context(|| format!("reading the verdicts of {}", path.display()))?,
            None => Vec::new(),
        };
        sections.push(Section { benchmark: benchmark.to_owned(), verdicts, result: json });
    }
    Ok(sections)
}

/// The Markdown of `summary.md`.
pub fn markdown(dir: &Path, sections: &[Section]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark summary\n");
    let _ = writeln!(out, "Results directory: `{}`.\n", display_dir(dir));
    if let Some(context) = sections.iter().map(|section| &section.result).find(|result| result.get("machine").is_some())
    {
        let text = |pointer: &str| context.pointer(pointer).map(value_text).unwrap_or_else(|| "unknown".to_owned());
        let _ = writeln!(
            out,
            "Machine: {} ({} cores available, {} MiB), kernel {}; Envoy {}; analyzer {} build at commit {}.\n",
            text("/machine/cpu_model"),
            text("/machine/cores_available"),
            text("/machine/memory_total_mib"),
            text("/machine/kernel"),
            text("/artifacts/envoy_version"),
            text("/artifacts/analyzer_build_profile"),
            text("/artifacts/git_commit"),
        );
    }
    let _ = writeln!(out, "| benchmark | quantity | measured | min | max | target | verdict |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for section in sections {
        if section.verdicts.is_empty() {
            let _ = writeln!(out, "| {} | (no verdict recorded) | | | | | |", section.benchmark);
        }
        for verdict in &section.verdicts {
            let sign = match verdict.bound {
                crate::report::Bound::AtMost => "≤",
                crate::report::Bound::AtLeast => "≥",
            };
            let optional = |value: Option<f64>| value.map(|value| format!("{value:.3}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {} | {:.3}{} | {} | {} | {sign} {}{} | {} |",
                verdict.benchmark,
                verdict.quantity,
                verdict.measured,
                verdict.unit,
                optional(verdict.min),
                optional(verdict.max),
                verdict.limit,
                verdict.unit,
                if verdict.met { "met" } else { "**missed**" }
            );
        }
    }
    let _ =
        writeln!(out, "\nEach benchmark's own tables, settings and raw samples are in `<benchmark>.md` and `.json`.");
    out
}

/// Writes `summary.md` into `dir` and returns its path and the verdicts.
pub fn write(dir: &Path) -> anyhow::Result<(PathBuf, Vec<Verdict>)> {
    let sections = collect(dir)?;
    if sections.is_empty() {
        anyhow::bail!("no benchmark results in {}; run a benchmark first", dir.display());
    }
    let path = dir.join("summary.md");
    std::fs::write(&path, markdown(dir, &sections)).with_context(|| format!("writing {}", path.display()))?;
    Ok((path, sections.into_iter().flat_map(|section| section.verdicts).collect()))
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "unknown".to_owned(),
        other => other.to_string(),
    }
}

/// The directory relative to the workspace when it is inside it, so a
/// committed summary does not carry one machine's absolute paths.
fn display_dir(dir: &Path) -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("/"));
    dir.strip_prefix(workspace).unwrap_or(dir).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Bound;

    #[test]
    fn summary_lists_every_verdict_and_skips_missing_benchmarks() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let met =
            Verdict::new("overhead", "(d)/(c) CPU per request", 1.03, Bound::AtMost, 1.05, "×").with_range(1.01, 1.06);
        let missed = Verdict::new("scale", "reports/s on one core", 40_000.0, Bound::AtLeast, 50_000.0, " /s");
        let machine = serde_json::json!({"cpu_model": "Test CPU", "cores_available": 2});
        std::fs::write(
            dir.path().join("overhead.json"),
            serde_json::to_string(&serde_json::json!({"verdicts": [met], "machine": machine}))?,
        )?;
        std::fs::write(
            dir.path().join("scale.json"),
            serde_json::to_string(&serde_json::json!({"verdicts": [missed]}))?,
        )?;
        std::fs::write(dir.path().join("footprint.json"), "{}")?;

        let (path, verdicts) = write(dir.path())?;
        assert_eq!(verdicts.len(), 2);
        let text = std::fs::read_to_string(path)?;
        assert!(text.contains("Test CPU (2 cores available"), "{text}");
        assert!(
            text.contains("| overhead | (d)/(c) CPU per request | 1.030× | 1.010 | 1.060 | ≤ 1.05× | met |"),
            "{text}"
        );
        assert!(
            text.contains("| scale | reports/s on one core | 40000.000 /s |  |  | ≥ 50000 /s | **missed** |"),
            "{text}"
        );
        assert!(text.contains("| footprint | (no verdict recorded)"), "{text}");
        assert!(!text.contains("propagation"), "{text}");
        Ok(())
    }

    #[test]
    fn an_empty_directory_is_an_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(write(dir.path()).is_err());
        Ok(())
    }

    #[test]
    fn a_malformed_verdict_names_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("scale.json"), r#"{"verdicts": [{"measured": "fast"}]}"#)?;
        let error = format!("{:#}", write(dir.path()).unwrap_err());
        assert!(error.contains("scale.json"), "{error}");
        Ok(())
    }
}
