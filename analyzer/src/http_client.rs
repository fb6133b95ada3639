//! The analyzer's outbound HTTP: Envoy admin reads and webhook posts.
//!
//! HTTP/1.1 over hyper, `https://` through rustls with the Mozilla root
//! certificates compiled in (`webpki-roots`), so Slack and PagerDuty work
//! without the host's certificate store. Every call has a deadline and
//! response bodies are capped, so a slow or hostile endpoint can neither hold
//! a task forever nor make the analyzer buffer without bound. Callers treat
//! every failure as data (a string), never as a reason to stop.

use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest response body read (Envoy's `/clusters` of a big mesh fits).
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// A pooled HTTP client; cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        // The TLS layer takes https URLs; the plain connector must not refuse them.
        connector.enforce_http(false);
        let connector =
            HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().wrap_connector(connector);
        HttpClient { client: Client::builder(TokioExecutor::new()).build(connector) }
    }

    /// `GET url`: the status and body, within `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<(StatusCode, Bytes), String> {
        self.call(Method::GET, url, None, timeout).await
    }

    /// `POST url` with a JSON body: the status and body, within `timeout`.
    pub async fn post_json(&self, url: &str, body: Vec<u8>, timeout: Duration) -> Result<(StatusCode, Bytes), String> {
        self.call(Method::POST, url, Some(body), timeout).await
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut request = Request::builder().method(method).uri(url).header(header::USER_AGENT, "canary-analyzer");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| format!("{url}: cannot build the request: {error}"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|error| format!("{url}: {error}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|error| format!("{url}: reading the response: {error}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {} ms", timeout.as_millis()))?
    }
}
