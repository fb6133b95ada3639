//! `canary-analyzer`: parses the configuration, loads the state directory,
//! serves the API (HTTPS when configured) until SIGTERM or Ctrl-C, then
//! flushes the state.

use std::io::IsTerminal;

use anyhow::Context;
use canary_analyzer::config::{EnvTokens, ReadAccess, is_loopback};
use canary_analyzer::{AppState, Cli, Config, tls};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc malloc: with glibc, the analyzer's resident
/// memory kept rising for 15 minutes in a soak without restarts (23.8 →
/// 26.7 MiB) while heaptrack showed a flat live heap of under 4 MiB: freed
/// memory stayed in glibc's per-thread arenas. jemalloc returns it (its
/// dirty pages decay back to the system) and stayed flat.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal, not a log file.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();

    // Refuses a non-loopback address without both tokens (see config.rs).
    let config = Config::load(&cli, EnvTokens::from_process()).context("invalid configuration")?;
    // Before the state is touched: a bad certificate stops startup at once.
    let tls_config = config.tls.as_ref().map(tls::server_config).transpose().context("invalid TLS configuration")?;
    if config.filter_token.is_none() {
        tracing::warn!("no filter token configured: any client can report to /v1/filter/sync");
    }
    if config.sre_token.is_none() {
        tracing::warn!("no SRE token configured: any local client can change weights and rollouts");
    }
    if !is_loopback(config.listen.ip()) && config.read_access == ReadAccess::Open {
        tracing::info!(listen = %config.listen, "read endpoints are open (read_access = \"open\")");
    }
    let state = AppState::open(config.clone()).context("cannot load the analyzer state")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local_addr = listener.local_addr().context("cannot read the bound address")?;
    // Handlers are installed before anyone can learn the port: a SIGTERM
    // right after the line below must still flush, not kill.
    let shutdown = shutdown_signal()?;
    // Tests and scripts wait for this exact line to learn the port.
    eprintln!("canary-analyzer listening on {local_addr}");
    tracing::info!(scheme = if tls_config.is_some() { "https" } else { "http" }, "serving");

    let served = tls::serve(listener, tls_config, state.clone(), shutdown).await;
    // Flush whatever happened, even if serving failed.
    state.shutdown().await;
    served.context("server failed")
}

/// Installs the SIGTERM and SIGINT (Ctrl-C) handlers now, and returns a
/// future that resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    })
}
