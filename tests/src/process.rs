//! Child processes that die with their owner and keep their logs.
//!
//! Every process a stack starts writes stdout and stderr to one log file and
//! is killed (SIGKILL) and reaped when its [`ChildProcess`] is dropped, also
//! when a test panics. The log file outlives the process so a failing test
//! can print it.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

/// How often readiness loops look again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A running child process and its log file.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ChildProcess {
    /// Starts `command` with stdin closed and stdout and stderr appended to
    /// `log_path`.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> anyhow::Result<Self> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open log {}", log_path.display()))?;
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = command.spawn().with_context(|| format!("start {name}: {command:?}"))?;
        Ok(Self { name: name.to_owned(), child: Some(child), log_path: log_path.to_path_buf() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (lossy UTF-8; empty if unreadable).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|child| child.try_wait().ok().flatten())
    }

    /// Waits until the log has a line `"{announcer} listening on ADDR"` and
    /// returns ADDR. Fails early, with the log tail, if the process exits.
    pub async fn wait_for_listening(&mut self, announcer: &str, deadline: Instant) -> anyhow::Result<SocketAddr> {
        let needle = format!("{announcer} listening on ");
        loop {
            let log = strip_ansi(&self.log());
            if let Some(address) = log.lines().find_map(|line| {
                let (_, rest) = line.split_once(&needle)?;
                // Loggers may put fields after the address; take one token.
                let token = rest.split_whitespace().next()?;
                token.trim_end_matches(|c: char| !c.is_ascii_digit()).parse::<SocketAddr>().ok()
            }) {
                return Ok(address);
            }
            self.fail_if_exited("before announcing its address")?;
            if Instant::now() >= deadline {
                bail!("{} did not print {needle:?} in time\n{}", self.name, self.describe_log());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// An error with the log tail if the process has exited.
    pub fn fail_if_exited(&mut self, when: &str) -> anyhow::Result<()> {
        if let Some(status) = self.exit_status() {
            bail!("{} exited {when} ({status})\n{}", self.name, self.describe_log());
        }
        Ok(())
    }

    /// The log path and its last lines, for error messages.
    pub fn describe_log(&self) -> String {
        format!("--- last lines of {} ---\n{}", self.log_path.display(), tail(&self.log(), 40))
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if the process has not exited within `grace`.
    /// Returns the exit status when it exited on its own.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let Some(pid) = self.pid() else { return Ok(None) };
        // std has no portable signal API and the workspace forbids unsafe
        // code, so ask kill(1) to deliver the signal.
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map_err(|error| anyhow!("run kill -TERM {pid}: {error}"))?;
        if !status.success() {
            bail!("kill -TERM {pid} failed: {status}");
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                self.child = None;
                return Ok(Some(status));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.kill();
        Ok(None)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A log file's contents, lossily decoded; empty when it does not exist.
pub fn read_log(path: &Path) -> String {
    std::fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes ANSI colour sequences (`ESC [ ... letter`), which loggers emit
/// even into files unless told otherwise.
pub fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for code in chars.by_ref() {
                if code.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Resolves on Ctrl-C or SIGTERM: the binaries that own a stack then drop
/// it (killing its processes) rather than leave it running without them.
pub async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(terminate) => { terminate.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colour_codes() {
        assert_eq!(strip_ansi("\u{1b}[2mINFO\u{1b}[0m listening on 1.2.3.4:5"), "INFO listening on 1.2.3.4:5");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }
}
