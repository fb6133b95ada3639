//! A minimal HTTP/1.1 client for control-plane calls: the analyzer API,
//! Envoy's admin interface and the backends' `/__stats`.
//!
//! One connection per call keeps it obviously correct; these calls are a few
//! per second at most. The load generator in [`crate::load`] is the fast path.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Default time limit of one control call. Long enough for `?wait=true`
/// calls, whose server-side timeout defaults to 2 s.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(15);

/// A complete response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, with the raw body in the error when it is not.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response {} is not JSON: {}", self.status, self.text()))
    }

    /// The body as JSON, failing (with the body) unless the status is 2xx.
    pub fn success_json(&self) -> anyhow::Result<serde_json::Value> {
        if !self.status.is_success() {
            bail!("HTTP {}: {}", self.status, self.text());
        }
        self.json()
    }
}

/// Sends one request on a fresh connection and reads the whole response.
pub async fn send(
    address: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: Option<Bytes>,
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    send_with_headers(address, method, path_and_query, &[], body, timeout).await
}

/// Like [`send`], with extra request headers (for example `x-canary-actor`).
pub async fn send_with_headers(
    address: SocketAddr,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    let what = format!("{method} http://{address}{path_and_query}");
    tokio::time::timeout(timeout, send_inner(address, method, path_and_query, headers, body))
        .await
        .with_context(|| format!("{what}: no response within {timeout:?}"))?
        .with_context(|| what)
}

async fn send_inner(
    address: SocketAddr,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> anyhow::Result<HttpResponse> {
    let stream = tokio::net::TcpStream::connect(address).await.context("connect")?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path_and_query).header("host", address.to_string());
    let has_content_type = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    if body.is_some() && !has_content_type {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.unwrap_or_default()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    connection.abort();
    Ok(HttpResponse { status, headers, body })
}

pub async fn get(address: SocketAddr, path_and_query: &str) -> anyhow::Result<HttpResponse> {
    send(address, Method::GET, path_and_query, None, CONTROL_TIMEOUT).await
}

pub async fn get_json(address: SocketAddr, path_and_query: &str) -> anyhow::Result<serde_json::Value> {
    get(address, path_and_query).await?.success_json()
}

/// Sends `body` as JSON with `method`; returns the response whatever its
/// status, so callers can assert on 4xx/5xx answers too.
pub async fn send_json(
    address: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: &serde_json::Value,
) -> anyhow::Result<HttpResponse> {
    send(address, method, path_and_query, Some(Bytes::from(body.to_string())), CONTROL_TIMEOUT).await
}
