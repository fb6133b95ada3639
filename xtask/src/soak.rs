//! `cargo xtask soak [--minutes N] [--out DIR] [...]`: installs and builds
//! what a stack needs (as `cargo xtask demo` does), then runs
//! `target/debug/canary-soak` with the test environment. The soak's own
//! options are documented by `target/debug/canary-soak --help`; its report
//! goes to stdout and, as JSON and Markdown, to `target/soak/<UTC time>/`.
//! The exit status is the soak's: non-zero when any check is missed.

use std::process::{Command, ExitCode};

use anyhow::Result;

use crate::install::{self, Tools};
use crate::tasks::{self, artifact_env};
use crate::{Paths, cmd};

/// `cargo xtask soak ARGS`: install, build, run.
pub fn soak(paths: &Paths, args: &[String]) -> Result<ExitCode> {
    let tools = install::install(paths)?;
    tasks::build(paths)?;
    // A missed check is the soak's answer, already printed with its report,
    // not an xtask failure: exit non-zero without a second error report.
    match run(paths, &tools, args) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("xtask soak: {error:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs the soak with the artifacts already installed and built, e.g.
/// `run(paths, &tools, &["--minutes", "1"])` in a pipeline that has just
/// built everything. An error when the soak could not run or missed a check
/// (its report, printed above, says which).
pub fn run(paths: &Paths, tools: &Tools, args: &[impl AsRef<str>]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    // `cargo xtask soak -- --minutes 1` and `cargo xtask soak --minutes 1`
    // mean the same.
    let args = match args.as_slice() {
        ["--", rest @ ..] => rest,
        all => all,
    };
    let mut command = Command::new(paths.debug_bin("canary-soak"));
    command.args(args).envs(artifact_env(paths, tools)).current_dir(&paths.root);
    cmd::run(&mut command)
}
