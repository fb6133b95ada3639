//! `filter_config`: the filter's plugin configuration parser, which reads
//! the JSON an operator (or an Istio `WasmPlugin`) hands to Envoy.

use canary_filter::config::{FilterConfig, StickyKey};

/// Top-level keys of the configuration: an error that points at a field
/// starts with one of them (or `sticky.…`).
const FIELDS: &[&str] = &[
    "analyzer_cluster",
    "analyzer_authority",
    "analyzer_token",
    "report_interval_ms",
    "route_header",
    "sticky",
    "initial_canary_weight_bp",
    "proxy_id",
    "override",
];

/// Never panics; an accepted configuration satisfies the documented
/// ranges; every error names a field or says what is expected.
pub fn check_filter_config(data: &[u8]) {
    match FilterConfig::parse(data) {
        Ok(config) => {
            // Accepted bytes are one JSON document, nothing after it.
            assert!(
                serde_json::from_slice::<serde_json::Value>(data).is_ok(),
                "accepted a configuration that is not valid JSON: {:?}",
                String::from_utf8_lossy(data)
            );
            assert!(!config.analyzer_cluster.trim().is_empty(), "accepted an empty analyzer_cluster");
            assert!(!config.analyzer_authority.is_empty(), "accepted an empty analyzer_authority");
            assert!((100..=60_000).contains(&config.report_interval_ms), "report_interval_ms out of range");
            assert_eq!(config.route_header, config.route_header.to_ascii_lowercase(), "route header not lowercase");
            assert!(!config.route_header.is_empty(), "accepted an empty route_header");
            if let Some(StickyKey::Header(name)) = &config.sticky {
                assert_eq!(*name, name.to_ascii_lowercase(), "sticky header not lowercase");
            }
            if let Some(proxy_id) = &config.proxy_id {
                assert!((1..=255).contains(&proxy_id.len()), "proxy_id of {} bytes accepted", proxy_id.len());
            }
            if let Some(version_override) = &config.version_override {
                let header = &version_override.header;
                assert_eq!(*header, header.to_ascii_lowercase(), "override header not lowercase");
                assert_ne!(*header, config.route_header, "override header equals the route header");
                assert!(
                    version_override.canary_value.is_some() || version_override.stable_value.is_some(),
                    "an override with no value accepted"
                );
            }
        }
        Err(error) => {
            let message = error.to_string();
            let names_field = FIELDS.iter().any(|field| message.starts_with(field));
            // serde_json's own errors (syntax, missing or unknown field,
            // wrong type at the top) say what was expected and where.
            let says_where = message.contains(" at line ") && message.contains(" column ");
            let says_expected = message == "plugin configuration must be a JSON object";
            assert!(
                names_field || says_where || says_expected,
                "configuration error names no field and no position: {message:?}"
            );
        }
    }
}
