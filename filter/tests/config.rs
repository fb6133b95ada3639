//! Plugin configuration parsing: the defaults, a full configuration, and a
//! table of bad configurations whose errors must name the field.

use canary_filter::config::{ConfigError, FilterConfig, StickyKey};
use canary_protocol::CanaryWeight;

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
