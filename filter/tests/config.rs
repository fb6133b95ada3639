//! Plugin configuration parsing: the defaults, a full configuration, and a
//! table of bad configurations whose errors must name the field.

use canary_filter::config::{Cidr, ConfigError, FilterConfig, StickyKey, VersionOverride};
use canary_protocol::{CanaryWeight, Version};

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
            version_override: None,
            batch_reports: true,
        }
    );
}

#[test]
fn full_config_parses() {
    let config = FilterConfig::parse(
        br#"{"analyzer_cluster": "outbound|9190||canary-analyzer.canary.svc.cluster.local",
             "analyzer_authority": "canary-analyzer:9190", "analyzer_token": "s3cret",
             "report_interval_ms": 500, "route_header": "X-Route", "sticky": {"cookie": "session"},
             "initial_canary_weight_bp": 1, "proxy_id": "gw-1", "batch_reports": false}"#,
    )
    .expect("valid");
    assert!(!config.batch_reports, "one sync call per worker VM, when asked for");
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
    check_error(r#"{"analyzer_cluster": "a", "batch_reports": "yes"}"#, "batch_reports: invalid type");
}

fn override_of(json: &str) -> VersionOverride {
    let config = FilterConfig::parse(format!(r#"{{"analyzer_cluster": "a", "override": {json}}}"#).as_bytes())
        .unwrap_or_else(|error| panic!("{json}: {error}"));
    config.version_override.unwrap_or_else(|| panic!("{json}: no override"))
}

#[test]
fn override_parses_and_picks_the_version_by_exact_value() {
    let rule = override_of(r#"{"header": "X-Canary", "canary_value": "always", "stable_value": "never"}"#);
    assert_eq!(rule.header, "x-canary", "header names are lowercased as Envoy stores them");
    assert_eq!(rule.version_for(b"always"), Some(Version::Canary));
    assert_eq!(rule.version_for(b"never"), Some(Version::Stable));
    for wrong in [&b"Always"[..], b"always ", b"alway", b"alwaysx", b"", b"canary"] {
        assert_eq!(rule.version_for(wrong), None, "{:?}", String::from_utf8_lossy(wrong));
    }
    assert!(!rule.restricts_source());
    assert!(rule.allows_source(b"garbage"), "no CIDR list: any source");

    let canary_only = override_of(r#"{"header": "x-canary", "canary_value": "s3cret-9f2c"}"#);
    assert_eq!(canary_only.stable_value, None);
    assert_eq!(canary_only.version_for(b"s3cret-9f2c"), Some(Version::Canary));
    let stable_only = override_of(r#"{"header": "x-canary", "stable_value": "never"}"#);
    assert_eq!(stable_only.version_for(b"never"), Some(Version::Stable));
}

#[test]
fn override_source_cidrs_match_envoy_source_addresses() {
    let rule = override_of(
        r#"{"header": "x-canary", "canary_value": "always",
            "source_cidrs": ["10.0.0.0/8", "127.0.0.1/32", "192.168.7.9", "fd00::/8", "0.0.0.0/0"]}"#,
    );
    assert!(rule.restricts_source());
    let rule = VersionOverride { source_cidrs: rule.source_cidrs[..4].to_vec(), ..rule };
    // Envoy's `source.address` is `ip:port`.
    for allowed in
        ["10.1.2.3:4567", "127.0.0.1:80", "192.168.7.9:1", "[fd12::1]:443", "10.255.255.255", "[::ffff:10.0.0.1]:9"]
    {
        assert!(rule.allows_source(allowed.as_bytes()), "{allowed} must be allowed");
    }
    for refused in ["11.0.0.1:80", "127.0.0.2:80", "192.168.7.8:1", "[fe80::1]:443", "", "not-an-address", "[::1]:80"] {
        assert!(!rule.allows_source(refused.as_bytes()), "{refused} must be refused");
    }
    let everything = Cidr::parse("0.0.0.0/0").expect("valid");
    assert!(everything.contains("203.0.113.7".parse().expect("ip")));
    assert!(!everything.contains("::1".parse().expect("ip")), "an IPv4 network never holds an IPv6 address");
    assert_eq!(Cidr::parse("::1").map(|cidr| cidr.to_string()), Ok("::1/128".to_owned()));
}

#[test]
fn bad_overrides_name_the_field() {
    let with = |json: &str| format!(r#"{{"analyzer_cluster": "a", "override": {json}}}"#);
    check_error(&with(r#"{"canary_value": "always"}"#), "override: missing field `header`");
    check_error(&with(r#"{"header": "x-c", "value": "always"}"#), "override.value: unknown field");
    check_error(&with(r#"{"header": "x c", "canary_value": "a"}"#), "override.header: must be a valid");
    check_error(&with(r#"{"header": "x-canary-version", "canary_value": "a"}"#), "override.header: must differ");
    check_error(&with(r#"{"header": "x-c"}"#), "override: needs canary_value or stable_value");
    check_error(&with(r#"{"header": "x-c", "canary_value": ""}"#), "override.canary_value: must be 1..=256");
    check_error(&with(r#"{"header": "x-c", "stable_value": "a b"}"#), "override.stable_value: must be");
    let long = "v".repeat(257);
    check_error(&with(&format!(r#"{{"header": "x-c", "canary_value": "{long}"}}"#)), "override.canary_value:");
    check_error(
        &with(r#"{"header": "x-c", "canary_value": "a", "stable_value": "a"}"#),
        "override.stable_value: must differ",
    );
    let cidrs = |list: &str| with(&format!(r#"{{"header": "x-c", "canary_value": "a", "source_cidrs": {list}}}"#));
    check_error(&cidrs(r#"["10.0.0.0/8", "10.0.0.0/33"]"#), "override.source_cidrs[1]: \"10.0.0.0/33\": prefix");
    check_error(&cidrs(r#"["10.0.0.1/8"]"#), "override.source_cidrs[0]: \"10.0.0.1/8\": has host bits");
    check_error(
        &cidrs(r#"["10.0.0.1/8"]"#),
        "override.source_cidrs[0]: \"10.0.0.1/8\": has host bits set beyond /8 (did you mean 10.0.0.0/8?)",
    );
    check_error(&cidrs(r#"["localhost"]"#), "override.source_cidrs[0]: \"localhost\": not an IP address");
    check_error(&cidrs(r#"["::/129"]"#), "override.source_cidrs[0]: \"::/129\": prefix length must be 0..=128");
    check_error(
        &cidrs(r#"["::ffff:10.0.0.0/104"]"#),
        "override.source_cidrs[0]: \"::ffff:10.0.0.0/104\": an IPv4-mapped",
    );
    check_error(&cidrs(r#""10.0.0.0/8""#), "override.source_cidrs: invalid type");
    let many = format!("[{}]", vec!["\"10.0.0.0/8\""; 65].join(","));
    check_error(&cidrs(&many), "override.source_cidrs: at most 64");
}
