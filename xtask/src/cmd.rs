//! Running child processes with the command line echoed first, so a CI log
//! shows exactly what to re-run by hand when a step fails.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Runs `cmd` to completion with inherited stdio; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", display(cmd));
    let status = cmd.status().with_context(|| format!("could not start `{}`", program(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Like [`run`], but also hands every line of the child's stdout to
/// `on_line` (after echoing it), for steps that check what a tool reported.
pub fn run_watching_stdout(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<()> {
    eprintln!("$ {}", display(cmd));
    let mut child =
        cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("could not start `{}`", program(cmd)))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the child's stdout")?;
        println!("{line}");
        on_line(&line);
    }
    let status = child.wait().with_context(|| format!("waiting for `{}`", program(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Like [`run`], but the child's stdout goes to our stderr. Setup commands use
/// this so that `cargo xtask envoy-path` keeps stdout for the path alone.
pub fn run_to_stderr(cmd: &mut Command) -> Result<()> {
    cmd.stdout(stderr_as_stdio()?);
    run(cmd)
}

/// Runs `cmd` quietly and returns its stdout, or `None` if it could not be
/// started or exited non-zero. Used to probe whether a tool is present.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let output = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Like [`probe`], but a failure is an error that carries the command's stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let output = cmd.stdin(Stdio::null()).output().with_context(|| format!("could not start `{}`", program(cmd)))?;
    if !output.status.success() {
        bail!("`{}` failed ({}):\n{}", display(cmd), output.status, String::from_utf8_lossy(&output.stderr).trim_end());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `KEY=value program arg ...`, with the environment variables this command
/// sets explicitly, quoted where a shell would need it.
pub fn display(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), quote(value?))));
    let words = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(quote);
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain { word.into_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

#[cfg(unix)]
fn stderr_as_stdio() -> Result<Stdio> {
    use std::os::fd::AsFd;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().context("duplicating stderr")?;
    Ok(Stdio::from(fd))
}

#[cfg(not(unix))]
fn stderr_as_stdio() -> Result<Stdio> {
    Ok(Stdio::inherit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "-p", "canary-protocol", "a b", "it's", ""]).env("RUNNER", "/x/y z");
        assert_eq!(display(&cmd), r"RUNNER='/x/y z' cargo test -p canary-protocol 'a b' 'it'\''s' ''");
    }

    #[test]
    fn output_reports_failure_with_stderr() {
        let err = output(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("boom") && message.contains("exit status: 3"), "{message}");
    }

    #[test]
    fn watching_stdout_sees_every_line_and_the_exit_status() {
        let mut lines = Vec::new();
        run_watching_stdout(Command::new("sh").args(["-c", "echo one; echo two"]), |line| lines.push(line.to_owned()))
            .unwrap();
        assert_eq!(lines, ["one", "two"]);
        let err = run_watching_stdout(Command::new("sh").args(["-c", "echo x; exit 1"]), |_| {}).unwrap_err();
        assert!(err.to_string().contains("exit status: 1"), "{err}");
    }

    #[test]
    fn probe_is_none_for_missing_programs() {
        assert_eq!(probe(&mut Command::new("/nonexistent/xtask-probe")), None);
        assert_eq!(probe(Command::new("sh").args(["-c", "echo hi"])).as_deref(), Some("hi\n"));
    }
}
