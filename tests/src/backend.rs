//! The stable and canary upstreams: `demo-backend` processes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use canary_protocol::Version;
use hyper::Method;
use serde::Deserialize;

use crate::http;
use crate::process::ChildProcess;

/// How one backend behaves. Defaults: no errors, no added latency.
#[derive(Debug, Clone, Default)]
pub struct BackendOpts {
    /// Share of requests answered with 500, in 0..=1 (deterministic pattern).
    pub error_rate: f64,
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
}

impl BackendOpts {
    pub fn error_rate(mut self, error_rate: f64) -> Self {
        self.error_rate = error_rate;
        self
    }

    pub fn latency_ms(mut self, latency_ms: u64) -> Self {
        self.latency_ms = latency_ms;
        self
    }

    pub fn latency_jitter_ms(mut self, latency_jitter_ms: u64) -> Self {
        self.latency_jitter_ms = latency_jitter_ms;
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
}

/// What a backend has served since start or its last reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct BackendStats {
    pub served: u64,
    pub errors: u64,
}

/// A running backend.
#[derive(Debug)]
pub struct Backend {
    version: Version,
    address: SocketAddr,
    process: ChildProcess,
}

impl Backend {
    /// Starts the backend named after `version` (`stable` or `canary`,
    /// which is what it returns in `x-served-by`) and waits for its address.
    pub async fn start(
        binary: &Path,
        version: Version,
        opts: &BackendOpts,
        log_dir: &Path,
        deadline: Instant,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", opts.port))
            .arg("--name")
            .arg(version.as_str())
            .arg("--error-rate")
            .arg(opts.error_rate.to_string())
            .arg("--latency-ms")
            .arg(opts.latency_ms.to_string())
            .arg("--latency-jitter-ms")
            .arg(opts.latency_jitter_ms.to_string())
            // Different seeds so the two versions' jitter is independent.
            .arg("--seed")
            .arg((version.index() + 1).to_string());
        let log_path = log_dir.join(format!("backend-{version}.log"));
        let mut process = ChildProcess::spawn(&format!("{version} backend"), command, &log_path)?;
        let address = process.wait_for_listening("demo-backend", deadline).await?;
        Ok(Self { version, address, process })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub async fn stats(&self) -> anyhow::Result<BackendStats> {
        let body = http::get_json(self.address, "/__stats").await?;
        serde_json::from_value(body).with_context(|| format!("{} backend /__stats", self.version))
    }

    pub async fn reset(&self) -> anyhow::Result<()> {
        http::send(self.address, Method::POST, "/__reset", None, http::CONTROL_TIMEOUT).await?.success_json()?;
        Ok(())
    }
}
