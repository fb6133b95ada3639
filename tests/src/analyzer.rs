//! The `canary-analyzer` sidecar as a restartable child process.
//!
//! Envoy's `canary_analyzer` cluster points at a fixed address, so the first
//! start may use port 0 but every restart must come back on the port the
//! first start got. The state directory and config file stay the same across
//! restarts, which is what a sidecar restart looks like in production.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::http;
use crate::process::ChildProcess;

/// How the analyzer is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGKILL: a crash, nothing flushed.
    Kill,
    /// SIGTERM with a grace period, then SIGKILL.
    Terminate,
}

/// A (possibly stopped) analyzer.
#[derive(Debug)]
pub struct Analyzer {
    binary: PathBuf,
    config_path: PathBuf,
    state_dir: PathBuf,
    log_dir: PathBuf,
    address: SocketAddr,
    process: Option<ChildProcess>,
    starts: u32,
}

impl Analyzer {
    /// Writes the config file and starts the analyzer on `listen` (port 0
    /// allowed), waiting for it to announce its address and answer
    /// `/healthz`.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        listen: SocketAddr,
        filter_token: &str,
        extra_config_toml: &str,
        deadline: Instant,
    ) -> anyhow::Result<Self> {
        let state_dir = dir.join("analyzer-state");
        std::fs::create_dir_all(&state_dir)?;
        let config_path = dir.join("analyzer.toml");
        // Debug formatting of a str is a valid TOML basic string for the
        // plain ASCII tokens and paths used here.
        let config = format!(
            "# Written by the canary-tests harness.\nfilter_token = {filter_token:?}\nstate_dir = {:?}\n{extra_config_toml}\n",
            state_dir.display().to_string()
        );
        std::fs::write(&config_path, config)?;
        let mut analyzer = Self {
            binary: binary.to_path_buf(),
            config_path,
            state_dir,
            log_dir: dir.to_path_buf(),
            address: listen,
            process: None,
            starts: 0,
        };
        analyzer.spawn(deadline).await?;
        Ok(analyzer)
    }

    /// The address the analyzer listens on (fixed after the first start).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The process id of the current run, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildProcess::pid)
    }

    /// The log of the current (or last) run.
    pub fn log_path(&self) -> PathBuf {
        self.log_path_of(self.starts.max(1))
    }

    /// Logs of every run, oldest first.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        (1..=self.starts).map(|start| self.log_path_of(start)).collect()
    }

    /// All runs' logs concatenated.
    pub fn log(&self) -> String {
        self.log_paths().iter().map(|path| crate::process::read_log(path)).collect::<Vec<_>>().join("\n")
    }

    pub async fn stop(&mut self, mode: StopMode) -> anyhow::Result<()> {
        match mode {
            StopMode::Kill => self.kill(),
            StopMode::Terminate => {
                if let Some(mut process) = self.process.take() {
                    process.terminate(Duration::from_secs(5)).await?;
                }
            }
        }
        Ok(())
    }

    /// SIGKILL, synchronously (usable from `Drop`).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts again on the same address, config and state directory.
    pub async fn restart(&mut self, mode: StopMode, deadline: Instant) -> anyhow::Result<()> {
        self.stop(mode).await?;
        self.spawn(deadline).await
    }

    /// Starts a stopped analyzer again.
    pub async fn start_again(&mut self, deadline: Instant) -> anyhow::Result<()> {
        if self.process.is_some() {
            bail!("analyzer is already running");
        }
        self.spawn(deadline).await
    }

    fn log_path_of(&self, start: u32) -> PathBuf {
        if start <= 1 { self.log_dir.join("analyzer.log") } else { self.log_dir.join(format!("analyzer.{start}.log")) }
    }

    async fn spawn(&mut self, deadline: Instant) -> anyhow::Result<()> {
        self.starts += 1;
        let log_path = self.log_path_of(self.starts);
        let mut command = Command::new(&self.binary);
        command
            .arg("--listen")
            .arg(self.address.to_string())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--config")
            .arg(&self.config_path)
            .env("NO_COLOR", "1")
            // The token comes from the config file; an inherited variable
            // must not change what the test configured.
            .env_remove("CANARY_FILTER_TOKEN")
            .env_remove("CANARY_SRE_TOKEN")
            .env_remove("CANARY_READ_TOKEN");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let mut process = ChildProcess::spawn("canary-analyzer", command, &log_path)?;
        let announced = process.wait_for_listening("canary-analyzer", deadline).await?;
        if self.address.port() != 0 && announced != self.address {
            bail!("analyzer announced {announced}, expected {}", self.address);
        }
        self.address = announced;
        loop {
            match http::get(self.address, "/healthz").await {
                Ok(response) if response.status.is_success() => break,
                Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(response) => bail!("analyzer /healthz answered {}: {}", response.status, response.text()),
                Err(error) => return Err(error).context(process.describe_log()),
            }
            process.fail_if_exited("while waiting for /healthz")?;
        }
        self.process = Some(process);
        Ok(())
    }
}
