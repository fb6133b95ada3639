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

#[cfg(test)]
mod tests {
    use super::*;

    fn check_error(json: &str, expected: &str) {
        match FilterConfig::parse(json.as_bytes()) {
            Ok(config) => panic!("accepted {json}: {config:?}"),
            Err(ConfigError(message)) => assert!(message.starts_with(expected), "{json}: got {message:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = FilterConfig::parse(br#"{"analyzer_cluster": "canary_analyzer"}"#).expect("valid");
        assert_eq!(
            config,
            FilterConfig {
                analyzer_cluster: "canary_analyzer".into(),
                analyzer_authority: "canary-analyzer".into(),
                analyzer_token: String::new(),
                report_interval_ms: 1_000,
                route_header: "x-canary-version".into(),
                sticky: None,
                initial_canary_weight: CanaryWeight::ZERO,
                proxy_id: None,
            }
        );
    }

    #[test]
    fn full_config_parses() {
        let config = FilterConfig::parse(
            br#"{"analyzer_cluster": "outbound|9190||canary-analyzer.canary.svc.cluster.local",
                 "analyzer_authority": "canary-analyzer:9190", "analyzer_token": "s3cret",
                 "report_interval_ms": 500, "route_header": "X-Route", "sticky": {"cookie": "session"},
                 "initial_canary_weight_bp": 1, "proxy_id": "gw-1"}"#,
        )
        .expect("valid");
        assert_eq!(config.route_header, "x-route");
        assert_eq!(config.sticky, Some(StickyKey::Cookie("session".into())));
        assert_eq!(config.initial_canary_weight.bp(), 1);
        let header = FilterConfig::parse(br#"{"analyzer_cluster": "a", "sticky": {"header": "X-User-Id"}}"#);
        assert_eq!(header.map(|c| c.sticky), Ok(Some(StickyKey::Header("x-user-id".into()))));
    }

    #[test]
    fn bad_configs_name_the_field() {
        check_error("", "EOF while parsing");
        check_error("[]", "plugin configuration must be a JSON object");
        check_error(r#"{}"#, "missing field `analyzer_cluster`");
        check_error(r#"{"analyzer_cluster": "a", "weight": 5}"#, "weight: unknown field `weight`");
        check_error(r#"{"analyzer_cluster": "a", "report_interval_ms": "x"}"#, "report_interval_ms: invalid type");
        check_error(r#"{"analyzer_cluster": "a", "report_interval_ms": 5}"#, "report_interval_ms: must be");
        check_error(r#"{"analyzer_cluster": " "}"#, "analyzer_cluster: must name");
        check_error(r#"{"analyzer_cluster": "a", "route_header": "bad header"}"#, "route_header: must be");
        check_error(r#"{"analyzer_cluster": "a", "route_header": ":path"}"#, "route_header: must be");
        check_error(r#"{"analyzer_cluster": "a", "sticky": {"query": "u"}}"#, "sticky: unknown variant `query`");
        check_error(r#"{"analyzer_cluster": "a", "sticky": {"header": ""}}"#, "sticky.header: must be");
        check_error(r#"{"analyzer_cluster": "a", "initial_canary_weight_bp": 10001}"#, "initial_canary_weight_bp:");
        check_error(r#"{"analyzer_cluster": "a", "analyzer_token": "a b"}"#, "analyzer_token: must be");
        check_error(r#"{"analyzer_cluster": "a", "proxy_id": ""}"#, "proxy_id: must be");
    }
}
