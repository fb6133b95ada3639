//! `canary-analyzer`: parses the configuration, loads the state directory,
//! serves the API until SIGTERM or Ctrl-C, then flushes the state.

use std::io::IsTerminal;

use anyhow::Context;
use canary_analyzer::config::FILTER_TOKEN_ENV;
use canary_analyzer::{AppState, Cli, Config, app};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal, not a log file.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();

    let config = Config::load(&cli, std::env::var(FILTER_TOKEN_ENV).ok()).context("invalid configuration")?;
    if config.filter_token.is_none() {
        tracing::warn!("no filter token configured: any client can report to /v1/filter/sync");
    }
    let state = AppState::open(config.clone()).context("cannot load the analyzer state")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local_addr = listener.local_addr().context("cannot read the bound address")?;
    // Tests and scripts wait for this exact line to learn the port.
    eprintln!("canary-analyzer listening on {local_addr}");

    let shutdown_state = state.clone();
    let served = axum::serve(listener, app(state.clone()))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            // Held long-polls answer at once so the server can drain.
            shutdown_state.begin_shutdown();
        })
        .await;
    // Flush whatever happened, even if serving failed.
    state.shutdown().await;
    served.context("server failed")
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
