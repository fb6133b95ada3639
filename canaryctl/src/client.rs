//! The HTTP shell: sends an [`ApiRequest`] to the analyzer with the right
//! token and turns every failure into a [`CallError`] that says what went
//! wrong and what to do next.
//!
//! hyper-util's pooled client over tokio, as the analyzer's own outbound
//! client uses; `https://` through rustls (public roots, or `--ca-file`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

use crate::request::{ACTOR_HEADER, ApiRequest, Family};

/// Largest answer read: a status view with hundreds of workers fits.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Where the analyzer is and who we are to it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `http://host:port` or `https://host:port`, without a trailing slash.
    pub base_url: String,
    pub sre_token: Option<String>,
    pub read_token: Option<String>,
    pub actor: Option<String>,
    pub request_timeout: Duration,
}

/// A connected-on-demand client; cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    settings: Settings,
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A successful (2xx) answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Result<Value, CallError> {
        serde_json::from_slice(&self.body).map_err(|error| CallError::BadAnswer {
            status: self.status,
            detail: format!("the answer is not JSON ({error})"),
        })
    }
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No connection: refused, unknown host, TLS failure.
    Unreachable { base_url: String, detail: String },
    /// Connected (or tried to) but no answer in time.
    TimedOut { base_url: String, after: Duration },
    /// The analyzer answered 4xx or 5xx.
    Refused { status: u16, message: String, field: Option<String>, family: Family, base_url: String, body: Value },
    /// A 2xx answer this client cannot read.
    BadAnswer { status: u16, detail: String },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable { base_url, detail } => {
                write!(f, "cannot reach the analyzer at {base_url}: {detail}")
            }
            CallError::TimedOut { base_url, after } => {
                write!(f, "the analyzer at {base_url} did not answer within {}", humantime::format_duration(*after))
            }
            CallError::Refused { status, message, .. } => write!(f, "analyzer answered {status}: {message}"),
            CallError::BadAnswer { status, detail } => write!(f, "unreadable answer ({status}): {detail}"),
        }
    }
}

impl std::error::Error for CallError {}

impl CallError {
    /// Whether trying again later may succeed: the analyzer is down,
    /// restarting or busy, not refusing on principle.
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Unreachable { .. } | CallError::TimedOut { .. } => true,
            CallError::Refused { status, .. } => matches!(status, 502..=504),
            CallError::BadAnswer { .. } => false,
        }
    }

    /// The HTTP status, if the analyzer answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Refused { status, .. } | CallError::BadAnswer { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// What to do next, in one sentence.
    pub fn hint(&self) -> Option<String> {
        match self {
            CallError::Unreachable { base_url, detail } => Some(if detail.contains("certificate") {
                "the analyzer's certificate is not trusted here: pass its CA with --ca-file or CANARY_CA_FILE"
                    .to_owned()
            } else if base_url.starts_with("http://")
                && (detail.contains("invalid HTTP version") || detail.contains("connection closed"))
            {
                // What a TLS listener's alert looks like to a plain HTTP client.
                format!(
                    "{base_url} did not answer in plain HTTP: if the analyzer serves HTTPS, use an https:// address"
                )
            } else {
                format!("is the analyzer running at {base_url}? Set --addr or CANARY_ADDR")
            }),
            CallError::TimedOut { base_url, .. } => Some(format!(
                "the analyzer at {base_url} may be overloaded or stuck; check its logs, or raise --request-timeout"
            )),
            CallError::Refused { status, message, field, family, base_url, .. } => match (status, family) {
                (401, Family::Sre) => {
                    Some("set CANARY_SRE_TOKEN, --token or --token-file to the analyzer's SRE token".to_owned())
                }
                (401, Family::Read) => Some(
                    "set CANARY_READ_TOKEN or --read-token to the read token, or CANARY_SRE_TOKEN / --token to the \
                     SRE token"
                        .to_owned(),
                ),
                (403, Family::Sre) => Some(
                    "changes need the SRE token (CANARY_SRE_TOKEN, --token or --token-file), not the read token"
                        .to_owned(),
                ),
                (403, Family::Read) => Some("reads need the read token or the SRE token".to_owned()),
                (404 | 405, _) => {
                    Some(format!("is {base_url} the canary analyzer, and at least as new as this canaryctl?"))
                }
                (409, _) => {
                    let commands = commands_named(message);
                    Some(if commands.is_empty() {
                        "`canaryctl status` shows the rollout's phase and what it waits for".to_owned()
                    } else {
                        format!("with canaryctl: {}; `canaryctl status` shows the phase", commands.join(", "))
                    })
                }
                (400 | 422, _) => field.as_ref().map(|field| format!("fix `{field}` and try again")),
                (413, _) => Some("the request is too large: a rollout spec may be up to 256 KiB".to_owned()),
                (503, _) => Some(
                    "nothing was changed: the analyzer could not persist it; check its disk and logs, then retry"
                        .to_owned(),
                ),
                (504, _) => Some(
                    "the change stays applied; `canaryctl status` shows which workers have not confirmed it".to_owned(),
                ),
                _ => None,
            },
            CallError::BadAnswer { .. } => Some("is --addr the canary analyzer?".to_owned()),
        }
    }
}

impl Client {
    pub fn new(settings: Settings, ca_file: Option<&Path>) -> anyhow::Result<Client> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.request_timeout));
        connector.set_nodelay(true);
        // The TLS layer takes https URLs; the plain connector must not refuse them.
        connector.enforce_http(false);
        let builder = match ca_file {
            Some(path) => HttpsConnectorBuilder::new().with_tls_config(tls_config(path)?),
            None => HttpsConnectorBuilder::new().with_webpki_roots(),
        };
        let connector = builder.https_or_http().enable_http1().wrap_connector(connector);
        // One request at a time, so no pool is worth keeping warm across polls
        // that may be seconds apart.
        let http =
            HyperClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Client { settings, http })
    }

    pub fn base_url(&self) -> &str {
        &self.settings.base_url
    }

    /// Sends `request` with the token of its family, within the request
    /// timeout (or `timeout` when shorter).
    pub async fn send(&self, request: &ApiRequest, timeout: Option<Duration>) -> Result<Answer, CallError> {
        let base_url = self.settings.base_url.clone();
        let timeout =
            timeout.map_or(self.settings.request_timeout, |timeout| timeout.min(self.settings.request_timeout));
        let http_request = self.build(request)?;
        let exchange = async {
            let response = self
                .http
                .request(http_request)
                .await
                .map_err(|error| CallError::Unreachable { base_url: base_url.clone(), detail: error_chain(&error) })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|error| CallError::BadAnswer { status, detail: format!("cannot read the answer: {error}") })?
                .to_bytes();
            Ok::<_, CallError>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::TimedOut { base_url: base_url.clone(), after: timeout })??;
        if (200..300).contains(&status) {
            return Ok(Answer { status, body });
        }
        Err(refusal(status, &body, request.family, &base_url))
    }

    fn build(&self, request: &ApiRequest) -> Result<Request<Full<Bytes>>, CallError> {
        let invalid = |detail: String| CallError::Unreachable { base_url: self.settings.base_url.clone(), detail };
        let mut builder = Request::builder()
            .method(request.method)
            .uri(format!("{}{}", self.settings.base_url, request.path))
            .header(header::USER_AGENT, concat!("canaryctl/", env!("CARGO_PKG_VERSION")));
        let token = match request.family {
            Family::Sre => self.settings.sre_token.as_ref(),
            Family::Read => self.settings.read_token.as_ref().or(self.settings.sre_token.as_ref()),
        };
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(actor) = &self.settings.actor {
            builder = builder.header(ACTOR_HEADER, actor);
        }
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let body = match &request.body {
            Some((content_type, bytes)) => {
                builder = builder.header(header::CONTENT_TYPE, *content_type);
                Bytes::from(bytes.clone())
            }
            None => Bytes::new(),
        };
        // A header value with a line break or a non-ASCII character is the
        // usual way to get here: name the inputs that become headers.
        builder.body(Full::new(body)).map_err(|error| {
            invalid(format!(
                "cannot build the request ({error}); tokens, --actor and a start's --reason must be plain ASCII \
                 without line breaks"
            ))
        })
    }
}

/// The canaryctl commands for the API routes an analyzer message names
/// ("POST /v1/rollout/resume first"), so its advice reads in this tool's terms.
pub fn commands_named(message: &str) -> Vec<&'static str> {
    const ROUTES: [(&str, &str); 6] = [
        ("/v1/rollout/promote", "`canaryctl promote`"),
        ("/v1/rollout/resume", "`canaryctl resume`"),
        ("/v1/rollout/approve", "`canaryctl approve`"),
        ("/v1/rollout/rollback", "`canaryctl rollback`"),
        ("/v1/rollout/weight", "`canaryctl set-weight`"),
        ("/v1/rollouts", "`canaryctl start -f FILE`"),
    ];
    ROUTES.iter().filter(|(route, _)| message.contains(route)).map(|(_, command)| *command).collect()
}

/// The analyzer's `{"error": ..., "field": ...}`, or the raw text of
/// something that is not the analyzer.
fn refusal(status: u16, body: &[u8], family: Family, base_url: &str) -> CallError {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let message =
        json.as_ref().and_then(|value| value.get("error")).and_then(Value::as_str).map(str::to_owned).unwrap_or_else(
            || {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() { "(no message)".to_owned() } else { text.chars().take(300).collect() }
            },
        );
    let field = json.as_ref().and_then(|value| value.get("field")).and_then(Value::as_str).map(str::to_owned);
    CallError::Refused {
        status,
        message,
        field,
        family,
        base_url: base_url.to_owned(),
        body: json.unwrap_or(Value::Null),
    }
}

/// An error and its causes, `a: b: c`, as hyper's top-level message
/// ("client error (Connect)") alone does not say what failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Trusts exactly the CA certificates in `path`, for an analyzer with a
/// private or self-signed certificate.
fn tls_config(path: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let bytes = std::fs::read(path).with_context(|| format!("--ca-file {}: cannot read it", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&bytes) {
        let certificate =
            certificate.with_context(|| format!("--ca-file {}: not a PEM certificate file", path.display()))?;
        roots.add(certificate).with_context(|| format!("--ca-file {}: unusable certificate", path.display()))?;
    }
    anyhow::ensure!(!roots.is_empty(), "--ca-file {}: holds no PEM certificate", path.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `--addr` as a base URL: `http://` is added to a bare `host:port`, a
/// trailing slash is dropped, anything but http and https is refused.
pub fn base_url(addr: &str) -> Result<String, String> {
    let addr = addr.trim().trim_end_matches('/');
    let with_scheme = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let uri: hyper::Uri = with_scheme
        .parse()
        .map_err(|error| format!("--addr {addr:?} is not an address ({error}); e.g. http://127.0.0.1:9190"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("--addr {addr:?}: the scheme must be http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("--addr {addr:?} has no host; e.g. http://127.0.0.1:9190"));
    }
    if uri.path_and_query().is_some_and(|path| path.as_str() != "/" && !path.as_str().is_empty()) {
        return Err(format!("--addr {addr:?}: give the analyzer's address without a path"));
    }
    Ok(with_scheme)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn base_url_table() {
        for (addr, expected) in [
            ("http://127.0.0.1:9190", Ok("http://127.0.0.1:9190")),
            ("http://127.0.0.1:9190/", Ok("http://127.0.0.1:9190")),
            ("127.0.0.1:9190", Ok("http://127.0.0.1:9190")),
            ("https://canary.internal", Ok("https://canary.internal")),
            ("ftp://host", Err("the scheme must be")),
            ("http://host:1/v1", Err("without a path")),
            ("http:// bad", Err("is not an address")),
        ] {
            match (base_url(addr), expected) {
                (Ok(url), Ok(want)) => assert_eq!(url, want, "{addr}"),
                (Err(message), Err(words)) => assert!(message.contains(words), "{addr}: {message}"),
                (got, want) => panic!("{addr}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn refused(status: u16, family: Family, body: Value) -> CallError {
        refusal(status, body.to_string().as_bytes(), family, "http://127.0.0.1:9190")
    }

    #[test]
    fn every_refusal_says_what_to_do_next() {
        let cases = [
            (
                refused(401, Family::Sre, json!({"error": "missing bearer token", "field": "authorization"})),
                "CANARY_SRE_TOKEN",
            ),
            (refused(401, Family::Read, json!({"error": "missing bearer token"})), "CANARY_READ_TOKEN"),
            (refused(403, Family::Sre, json!({"error": "the read token is not accepted here"})), "not the read token"),
            (refused(404, Family::Read, json!({"error": "no route"})), "is http://127.0.0.1:9190 the canary analyzer"),
            (
                refused(409, Family::Sre, json!({"error": "resume: rollout demo is Progressing, not paused"})),
                "canaryctl status",
            ),
            (
                refused(422, Family::Sre, json!({"error": "steps[1].pause: bad", "field": "steps[1].pause"})),
                "fix `steps[1].pause`",
            ),
            (refused(503, Family::Sre, json!({"error": "not durable"})), "nothing was changed"),
            (refused(504, Family::Sre, json!({"error": "1 of 2 live workers did not confirm"})), "stays applied"),
        ];
        for (error, words) in cases {
            let hint = error.hint().unwrap_or_default();
            assert!(hint.contains(words), "{error}: {hint}");
        }
        let unreachable =
            CallError::Unreachable { base_url: "http://127.0.0.1:9".into(), detail: "Connection refused".into() };
        assert_eq!(
            unreachable.hint().as_deref(),
            Some("is the analyzer running at http://127.0.0.1:9? Set --addr or CANARY_ADDR")
        );
        assert!(unreachable.retryable());
        let untrusted = CallError::Unreachable {
            base_url: "https://127.0.0.1:9".into(),
            detail: "client error (Connect): invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(untrusted.hint().unwrap_or_default().contains("--ca-file"));
        assert!(!refused(401, Family::Read, json!({})).retryable());
        assert!(refused(503, Family::Read, json!({})).retryable());
        assert!(!refused(500, Family::Read, json!({})).retryable());
        assert!(refused(502, Family::Read, json!({})).retryable());
    }

    #[test]
    fn conflicts_name_the_canaryctl_command() {
        let hint = |message: &str| refused(409, Family::Sre, json!({"error": message})).hint().unwrap_or_default();
        assert_eq!(
            hint("set weight: rollout demo is paused, which freezes the weights; POST /v1/rollout/resume first"),
            "with canaryctl: `canaryctl resume`; `canaryctl status` shows the phase"
        );
        assert_eq!(
            hint("promote: rollout demo was promoted; start a new rollout with POST /v1/rollouts"),
            "with canaryctl: `canaryctl start -f FILE`; `canaryctl status` shows the phase"
        );
        assert_eq!(
            hint("resume: rollout demo is Progressing, not paused"),
            "`canaryctl status` shows the rollout's phase and what it waits for"
        );
    }

    #[test]
    fn refusal_reads_the_error_body_or_falls_back_to_text() {
        let error = refused(409, Family::Sre, json!({"error": "pause: rollout demo is already paused", "field": null}));
        assert_eq!(error.to_string(), "analyzer answered 409: pause: rollout demo is already paused");
        let error = refusal(502, b"Bad Gateway\n", Family::Read, "http://x");
        assert_eq!(error.to_string(), "analyzer answered 502: Bad Gateway");
        let error = refusal(500, b"", Family::Read, "http://x");
        assert_eq!(error.to_string(), "analyzer answered 500: (no message)");
    }
}
