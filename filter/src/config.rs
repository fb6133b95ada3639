//! The filter's plugin configuration: the JSON that Envoy passes as the
//! `configuration` StringValue and that Istio passes as `pluginConfig`.
//!
//! Weights are deliberately absent (apart from the weight to use before the
//! analyzer first answers): istiod reloads the VM on every `pluginConfig`
//! edit, so weights live in the analyzer and travel over the sync channel.

use std::net::{IpAddr, SocketAddr};

use canary_protocol::report::MAX_PROXY_ID_LEN;
use canary_protocol::{CanaryWeight, Version};
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
    /// The testers' override header (`"override"` in JSON); off when `None`.
    pub version_override: Option<VersionOverride>,
    /// One VM per Envoy sends every worker's report in one batched call
    /// (`crate::reporter`) instead of one sync call per worker VM. On by
    /// default: the analyzer then handles one HTTP exchange per Envoy.
    pub batch_reports: bool,
}

/// The one way a client may choose its version: a configured request header
/// whose value names the version, optionally only from some source
/// addresses. Off by default. Overridden requests are counted like any other
/// under the version that served them, so they are part of the analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionOverride {
    /// Request header, lowercase as Envoy stores it.
    pub header: String,
    /// Value that sends the request to canary, whatever the weight.
    pub canary_value: Option<String>,
    /// Value that sends the request to stable, whatever the weight.
    pub stable_value: Option<String>,
    /// Client addresses the override is honoured from; empty means any.
    pub source_cidrs: Vec<Cidr>,
}

impl VersionOverride {
    /// The version the header value asks for, if it is one of the configured
    /// values. Both values are always compared, each in time that depends
    /// only on the lengths, so the timing does not tell a guesser how much
    /// of a secret value it got right.
    pub fn version_for(&self, value: &[u8]) -> Option<Version> {
        let matches = |expected: &Option<String>| {
            expected.as_deref().is_some_and(|expected| constant_time_eq(value, expected.as_bytes()))
        };
        let canary = matches(&self.canary_value);
        let stable = matches(&self.stable_value);
        if canary {
            Some(Version::Canary)
        } else if stable {
            Some(Version::Stable)
        } else {
            None
        }
    }

    /// Whether the override depends on the client's address, i.e. whether
    /// the `source.address` property must be read.
    pub fn restricts_source(&self) -> bool {
        !self.source_cidrs.is_empty()
    }

    /// Whether a client at `address` (Envoy's `source.address` property:
    /// `ip:port`, `[ipv6]:port` or a bare IP) may use the override. An
    /// address that does not parse is refused: the override fails closed.
    pub fn allows_source(&self, address: &[u8]) -> bool {
        if !self.restricts_source() {
            return true;
        }
        let Some(ip) = std::str::from_utf8(address).ok().and_then(|text| {
            text.parse::<SocketAddr>().map(|socket| socket.ip()).or_else(|_| text.parse::<IpAddr>()).ok()
        }) else {
            return false;
        };
        self.source_cidrs.iter().any(|cidr| cidr.contains(ip))
    }
}

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `::1/128`).
///
/// Hand-written over `std::net` rather than pulling a crate into the wasm
/// module: std parses the address, and what is left is a prefix mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Parses `ADDRESS/PREFIX`; a bare address is a single host. Host bits
    /// set beyond the prefix are an error (they usually mean a typo).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| format!("{text:?}: not an IP address"))?;
        let max_len: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max_len,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(len) if len <= max_len && !prefix.starts_with('+') => len,
                _ => return Err(format!("{text:?}: prefix length must be 0..={max_len}")),
            },
        };
        if network.to_canonical() != network {
            return Err(format!("{text:?}: an IPv4-mapped IPv6 network; write the IPv4 network instead"));
        }
        let cidr = Cidr { network, prefix_len };
        if cidr.masked(network) != bits(network) {
            let canonical = Cidr::from_bits(network, cidr.masked(network), prefix_len);
            return Err(format!("{text:?}: has host bits set beyond /{prefix_len} (did you mean {canonical}?)"));
        }
        Ok(cidr)
    }

    /// Whether `ip` is in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.1.2.3`) count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == bits(self.network)
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        let width: u32 = if ip.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix_len);
        // checked_shl: a /0 shifts by the full width, which `<<` rejects.
        let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
        bits(ip) & mask
    }

    fn from_bits(like: IpAddr, value: u128, prefix_len: u8) -> String {
        let network = match like {
            IpAddr::V4(_) => IpAddr::from(u32::try_from(value).unwrap_or(0).to_be_bytes()),
            IpAddr::V6(_) => IpAddr::from(value.to_be_bytes()),
        };
        format!("{network}/{prefix_len}")
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Equality whose running time depends only on the lengths (as the
/// analyzer's token check).
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let difference = left.iter().zip(right).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
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
/// Longest override value; a secret needs no more, and it bounds the compare.
pub const MAX_OVERRIDE_VALUE_LEN: usize = 256;
/// Most CIDRs an override may list; each request that carries the header
/// walks the list.
pub const MAX_OVERRIDE_CIDRS: usize = 64;

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
        let raw: RawConfig = serde_path_to_error::deserialize(&mut *deserializer).map_err(|error| {
            let path = error.path().to_string();
            if path == "." || path.is_empty() {
                ConfigError(error.inner().to_string())
            } else {
                ConfigError(format!("{path}: {}", error.inner()))
            }
        })?;
        // Reading the struct stops at its closing brace; without this check
        // `{…} anything` was accepted (found by the filter_config fuzz
        // invariant "accepted bytes are valid JSON").
        deserializer.end().map_err(|error| ConfigError(format!("after the configuration object: {error}")))?;
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
    #[serde(default, rename = "override")]
    version_override: Option<RawOverride>,
    #[serde(default = "default_batch_reports")]
    batch_reports: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    header: String,
    #[serde(default)]
    canary_value: Option<String>,
    #[serde(default)]
    stable_value: Option<String>,
    #[serde(default)]
    source_cidrs: Vec<String>,
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

fn default_batch_reports() -> bool {
    true
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
        let version_override = match self.version_override {
            None => None,
            Some(raw) => Some(raw.validate(&route_header)?),
        };
        Ok(FilterConfig {
            analyzer_cluster: self.analyzer_cluster,
            analyzer_authority: self.analyzer_authority,
            analyzer_token: self.analyzer_token,
            report_interval_ms: self.report_interval_ms,
            route_header,
            sticky,
            initial_canary_weight,
            proxy_id: self.proxy_id,
            version_override,
            batch_reports: self.batch_reports,
        })
    }
}

impl RawOverride {
    fn validate(self, route_header: &str) -> Result<VersionOverride, ConfigError> {
        let fail = |field: &str, why: &str| Err(ConfigError(format!("override.{field}: {why}")));
        let header = self.header.to_ascii_lowercase();
        if !is_header_name(&header) {
            return fail("header", "must be a valid HTTP header name");
        }
        if header == route_header {
            // Envoy strips the route header before the filter runs, so an
            // override on it could never fire.
            return fail("header", "must differ from route_header");
        }
        for (field, value) in [("canary_value", &self.canary_value), ("stable_value", &self.stable_value)] {
            if let Some(value) = value
                && (value.is_empty() || value.len() > MAX_OVERRIDE_VALUE_LEN || !is_header_value(value))
            {
                return fail(field, "must be 1..=256 printable ASCII characters without spaces");
            }
        }
        match (&self.canary_value, &self.stable_value) {
            (None, None) => {
                return Err(ConfigError(
                    "override: needs canary_value or stable_value (or both); without one the header does nothing"
                        .to_owned(),
                ));
            }
            (Some(canary), Some(stable)) if canary == stable => {
                return fail("stable_value", "must differ from canary_value");
            }
            _ => {}
        }
        if self.source_cidrs.len() > MAX_OVERRIDE_CIDRS {
            return fail("source_cidrs", "at most 64 networks");
        }
        let mut source_cidrs = Vec::with_capacity(self.source_cidrs.len());
        for (index, text) in self.source_cidrs.iter().enumerate() {
            match Cidr::parse(text.trim()) {
                Ok(cidr) => source_cidrs.push(cidr),
                Err(why) => return Err(ConfigError(format!("override.source_cidrs[{index}]: {why}"))),
            }
        }
        Ok(VersionOverride { header, canary_value: self.canary_value, stable_value: self.stable_value, source_cidrs })
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
