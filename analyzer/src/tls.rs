//! Serving: plain HTTP, or HTTPS with rustls when `tls_cert_file` and
//! `tls_key_file` are set, on the same listener and with the same graceful
//! shutdown.
//!
//! Why tokio-rustls behind axum's own `serve` rather than `axum-server`:
//! axum 0.8 serves any [`axum::serve::Listener`], so a listener that yields
//! TLS streams keeps `axum::serve(...).with_graceful_shutdown(...)` — and
//! with it the held long-polls answering at shutdown — identical for both
//! schemes, with no second server loop or shutdown handle to keep in step.
//! tokio-rustls and rustls (with ring, the provider hyper-rustls already
//! uses for webhooks) are in the build anyway.
//!
//! Handshakes run in their own tasks, bounded in number and time, so a
//! client that opens a connection and never speaks TLS cannot stall the
//! accept loop for everyone else.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::api::Api;
use crate::config::{ConfigError, TlsFiles};
use crate::state::AppState;

/// Longest a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Most handshakes in progress at once; further connections wait in the
/// kernel's backlog.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Reads and checks the PEM files into a rustls server configuration. Every
/// failure names the key (`tls_cert_file` or `tls_key_file`) and the path.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, ConfigError> {
    let cert_bytes = read_pem_file("tls_cert_file", &files.cert_file)?;
    let certs = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error("tls_cert_file", &files.cert_file, "a certificate", error))?;
    if certs.is_empty() {
        return Err(invalid_at(
            "tls_cert_file",
            format!("{} holds no CERTIFICATE PEM block", files.cert_file.display()),
        ));
    }
    let key_bytes = read_pem_file("tls_key_file", &files.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|error| pem_error("tls_key_file", &files.key_file, "a private key", error))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid_at("tls_cert_file", format!("no usable TLS version: {error}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| {
            invalid_at(
                "tls_key_file",
                format!("{} cannot serve {}: {error}", files.key_file.display(), files.cert_file.display()),
            )
        })?;
    // The server speaks HTTP/1.1 only (axum's http1 feature).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_pem_file(field: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| invalid_at(field, format!("cannot read {}: {error}", path.display())))
}

fn pem_error(field: &'static str, path: &Path, what: &str, error: pem::Error) -> ConfigError {
    let message = match error {
        pem::Error::NoItemsFound => format!("{} holds no PEM block with {what}", path.display()),
        error => format!("{} is not valid PEM: {error}", path.display()),
    };
    invalid_at(field, message)
}

fn invalid_at(field: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { field, message }
}

/// Serves the API on `listener` until `shutdown` resolves, over TLS when
/// `tls` is given. At shutdown, held syncs answer at once so the server can
/// drain; the caller then flushes the state.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let api = tower::make::Shared::new(Api::new(state.clone()));
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down");
        state.begin_shutdown();
    };
    match tls {
        Some(config) => axum::serve(TlsListener::new(listener, config)?, api).with_graceful_shutdown(shutdown).await,
        None => axum::serve(listener, api).with_graceful_shutdown(shutdown).await,
    }
}

/// A listener that yields connections whose TLS handshake is done.
#[derive(Debug)]
pub struct TlsListener {
    local_addr: SocketAddr,
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (sender, handshaken) = mpsc::channel(64);
        let accept_task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), sender));
        Ok(TlsListener { local_addr, handshaken, accept_task })
    }
}

// The server is done with the listener: stop accepting.
impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accept loop never ends on its own; if it was aborted,
            // no connection will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshaken: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok(permit) = pending.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin,
                // as axum's own listener does.
                tracing::error!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let handshaken = handshaken.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    // Fails only once the server stopped accepting.
                    let _ = handshaken.send((tls, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
