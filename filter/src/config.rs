//! The filter's plugin configuration: the JSON that Envoy passes as the
//! `configuration` StringValue and that Istio passes as `pluginConfig`.
//!
//! Weights are deliberately absent (apart from the weight to use before the
//! analyzer first answers): istiod reloads the VM on every `pluginConfig`
//! edit, so weights live in the analyzer and travel over the sync channel.

use canary_protocol::CanaryWeight;
use canary_protocol::report::MAX_PROXY_ID_LEN;
use serde::Deserialize;

/// Validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// Envoy cluster of the analyzer, e.g. `outbound|9190||canary-analyzer.ns.svc.cluster.local` in Istio.
    pub analyzer_cluster: String,
    /// `:authority` of sync calls.
    pub analyzer_authority: String,
    /// Bearer token for the analyzer; empty means no `authorization` header.
    pub analyzer_token: String,
    /// How often a worker reports, and how long the analyzer may hold a sync.
    pub report_interval_ms: u32,
    /// Request header Envoy routes on; lowercase.
    pub route_header: String,
    pub sticky: Option<StickyKey>,
    /// Weight applied until the analyzer first answers.
    pub initial_canary_weight: CanaryWeight,
    /// Overrides Envoy's node id as the proxy id in reports.
    pub proxy_id: Option<String>,
}

/// Where the sticky key of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// A request header, lowercase as Envoy stores it.
    Header(String),
    /// A cookie in the `cookie` header.
    Cookie(String),
}

/// The default route header.
pub const DEFAULT_ROUTE_HEADER: &str = "x-canary-version";
const MIN_REPORT_INTERVAL_MS: u32 = 100;
const MAX_REPORT_INTERVAL_MS: u32 = 60_000;

/// A configuration error; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl FilterConfig {
    /// Parses and validates the plugin configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        // serde would accept a JSON array as a struct; say what is expected.
        if bytes.iter().find(|byte| !byte.is_ascii_whitespace()).is_some_and(|byte| *byte != b'{') {
            return Err(ConfigError("plugin configuration must be a JSON object".to_owned()));
        }
        let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
        // serde_path_to_error puts the field path in front of serde's
        // message, so a type error reads "report_interval_ms: invalid type…".
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            if path == "." || path.is_empty() {
                ConfigError(error.inner().to_string())
            } else {
                ConfigError(format!("{path}: {}", error.inner()))
            }
        })?;
        raw.validate()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    analyzer_cluster: String,
    #[serde(default = "default_authority")]
    analyzer_authority: String,
    #[serde(default)]
    analyzer_token: String,
    #[serde(default = "default_interval_ms")]
    report_interval_ms: u32,
    #[serde(default = "default_route_header")]
    route_header: String,
    #[serde(default)]
    sticky: Option<RawSticky>,
    #[serde(default)]
    initial_canary_weight_bp: u64,
    #[serde(default)]
    proxy_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum RawSticky {
    Header(String),
    Cookie(String),
}

fn default_authority() -> String {
    "canary-analyzer".to_owned()
}

fn default_interval_ms() -> u32 {
    1_000
}

fn default_route_header() -> String {
    DEFAULT_ROUTE_HEADER.to_owned()
}

impl RawConfig {
    fn validate(self) -> Result<FilterConfig, ConfigError> {
        let fail = |field: &str, why: &str| Err(ConfigError(format!("{field}: {why}")));
        if self.analyzer_cluster.trim().is_empty() {
            return fail("analyzer_cluster", "must name the Envoy cluster of the analyzer");
        }
        if !is_header_value(&self.analyzer_authority) || self.analyzer_authority.is_empty() {
            return fail("analyzer_authority", "must be a non-empty host[:port]");
        }
        if !is_header_value(&self.analyzer_token) {
            return fail("analyzer_token", "must be printable ASCII without spaces");
        }
        if !(MIN_REPORT_INTERVAL_MS..=MAX_REPORT_INTERVAL_MS).contains(&self.report_interval_ms) {
            return fail("report_interval_ms", "must be 100..=60000");
        }
        let route_header = self.route_header.to_ascii_lowercase();
        if !is_header_name(&route_header) {
            return fail("route_header", "must be a valid HTTP header name");
        }
        let sticky = match self.sticky {
            None => None,
            Some(RawSticky::Header(name)) => {
                let name = name.to_ascii_lowercase();
                if !is_header_name(&name) {
                    return fail("sticky.header", "must be a valid HTTP header name");
                }
                Some(StickyKey::Header(name))
            }
            Some(RawSticky::Cookie(name)) => {
                if !is_header_name(&name.to_ascii_lowercase()) {
                    return fail("sticky.cookie", "must be a valid cookie name");
                }
                Some(StickyKey::Cookie(name))
            }
        };
        let Ok(initial_canary_weight) = CanaryWeight::from_bp(self.initial_canary_weight_bp) else {
            return fail("initial_canary_weight_bp", "must be 0..=10000 (basis points; 1 bp = 0.01%)");
        };
        if let Some(proxy_id) = &self.proxy_id
            && (proxy_id.is_empty() || proxy_id.len() > MAX_PROXY_ID_LEN)
        {
            return fail("proxy_id", "must be 1..=255 bytes");
        }
        Ok(FilterConfig {
            analyzer_cluster: self.analyzer_cluster,
            analyzer_authority: self.analyzer_authority,
            analyzer_token: self.analyzer_token,
            report_interval_ms: self.report_interval_ms,
            route_header,
            sticky,
            initial_canary_weight,
            proxy_id: self.proxy_id,
        })
    }
}

/// RFC 9110 token characters, the only ones allowed in a header name.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
        && !name.starts_with(':')
}

fn is_header_value(value: &str) -> bool {
    value.bytes().all(|byte| byte.is_ascii_graphic())
}
