//! The table of bad inputs: every endpoint, walked with wrong methods,
//! missing, malformed, unknown and wrong-role tokens, oversized and malformed
//! bodies, unknown fields, out-of-range numbers, bad query strings and bad
//! reports. Each case asserts the status, the JSON error naming the field or
//! the problem, that no secret is echoed, and — once the table is done — that
//! the state is exactly what it was: weights, totals, workers, rollout phase
//! and history.
//!
//! In-process (`tower::ServiceExt::oneshot` on the router); the exposure
//! refusal and TLS are tested over real sockets in `tests/exposure.rs` and
//! `tls_tests.rs`.

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use canary_protocol::{Report, ReportHeader, StatusClass, VersionStats};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

use super::*;
use crate::config::{Config, ReadAccess};

const FILTER: &str = "Bearer filter-secret";
const SRE: &str = "Bearer sre-secret";
const READ: &str = "Bearer read-secret";
const SECRETS: [&str; 3] = ["filter-secret", "sre-secret", "read-secret"];

/// A rollout that waits an hour at 10%, so nothing moves on its own.
const SPEC: &str = "
name: payment-service
canaryVersion: v1.5.0
steps:
  - setWeight: 10
  - pause: {duration: 1h}
  - setWeight: 50
";

struct Harness {
    _dir: TempDir,
    app: crate::Api,
}

struct Answer {
    status: StatusCode,
    www_authenticate: Option<String>,
    body: Value,
    raw: String,
}

impl Harness {
    fn new(adjust: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::with_state_dir(dir.path().join("state"));
        adjust(&mut config);
        let state = AppState::open(config).expect("state opens");
        Harness { app: crate::Api::new(state), _dir: dir }
    }

    /// Every token configured and reads protected.
    fn locked() -> Harness {
        Harness::new(|config| {
            config.filter_token = Some("filter-secret".into());
            config.sre_token = Some("sre-secret".into());
            config.read_token = Some("read-secret".into());
            config.read_access = ReadAccess::Token;
        })
    }

    async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = self.app.clone().oneshot(builder.body(Body::from(body)).expect("request")).await;
        let response = response.expect("infallible");
        let status = response.status();
        let www_authenticate =
            response.headers().get(header::WWW_AUTHENTICATE).map(|value| value.to_str().expect("ascii").to_owned());
        let bytes = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let raw = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, www_authenticate, body, raw }
    }

    async fn ok(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Value {
        let answer = self.send(method, uri, headers, body.as_bytes().to_vec()).await;
        assert!(answer.status.is_success(), "{method} {uri}: {} {}", answer.status, answer.raw);
        answer.body
    }

    /// What must not change: weights, totals, workers, the rollout's phase
    /// and step, its decisions, and the history.
    async fn snapshot(&self) -> Value {
        let view = self.ok("GET", "/v1/rollout", &[("authorization", SRE)], "").await;
        let history = self.ok("GET", "/v1/rollouts/history", &[("authorization", SRE)], "").await;
        let page = self.ok("GET", "/v1/workers", &[("authorization", SRE)], "").await;
        assert_eq!(page["next"], Value::Null, "one page holds the test's workers");
        let plane = &view["data_plane"];
        let workers: Vec<Value> = page["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .map(|worker| {
                json!([worker["proxy_id"], worker["worker_id"], worker["applied_weights_version"], worker["last_seq"]])
            })
            .collect();
        let rollout = &view["rollout"];
        json!({
            "weights_version": view["weights_version"],
            "canary_weight_bp": view["canary_weight_bp"],
            "stable_total": view["versions"]["stable"]["total"],
            "canary_total": view["versions"]["canary"]["total"],
            "workers": workers,
            "data_plane": [plane["live_workers"], plane["live_proxies"], plane["workers_total"], plane["lagging_total"]],
            "rollout": [rollout["id"], rollout["phase"], rollout["pause_cause"], rollout["step_index"],
                        rollout["weight_bp"], rollout["decisions_total"]],
            "history": history,
        })
    }
}

fn stats(requests: u64) -> VersionStats {
    let mut stats = VersionStats::default();
    for index in 0..requests {
        let class = if index % 10 == 0 { StatusClass::ServerError } else { StatusClass::Success };
        stats.record(class, 1_000 + index * 37);
    }
    stats
}

/// A valid report of worker 7; `seq` must grow for it to count.
fn report(seq: u64) -> Vec<u8> {
    let report = Report {
        header: ReportHeader {
            proxy_id: "envoy-bad-input".into(),
            worker_id: 7,
            seq,
            weights_version: 0,
            counts_weights_version: 0,
            max_hold_ms: 0,
        },
        versions: [stats(20).to_delta(), stats(3).to_delta()],
    };
    let mut bytes = Vec::new();
    report.encode(&mut bytes);
    bytes
}

/// A valid report, decoded, edited and re-encoded.
/// A batch of already-encoded reports, held for nothing.
fn batch(reports: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    canary_protocol::batch::encode_batch(0, reports.iter().map(Vec::as_slice), &mut bytes);
    bytes
}

fn edited_report(edit: impl FnOnce(&mut Report)) -> Vec<u8> {
    let mut decoded = Report::decode(&report(2)).expect("valid");
    edit(&mut decoded);
    let mut bytes = Vec::new();
    decoded.encode(&mut bytes);
    bytes
}

/// One bad request and what the answer must say.
struct Case {
    what: &'static str,
    method: &'static str,
    uri: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: StatusCode,
    /// The `field` of the error; `Value::Null` when the body as a whole is
    /// at fault.
    field: Value,
    /// Words the message must contain.
    words: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    uri: &str,
    auth: Option<&'static str>,
    body: impl Into<Vec<u8>>,
) -> Case {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = auth {
        headers.push(("authorization", auth));
    }
    Case {
        what,
        method,
        uri: uri.to_owned(),
        headers,
        body: body.into(),
        status: StatusCode::BAD_REQUEST,
        field: Value::Null,
        words: "",
    }
}

impl Case {
    fn expect(mut self, status: StatusCode, field: Value, words: &'static str) -> Case {
        self.status = status;
        self.field = field;
        self.words = words;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Case {
        self.headers.retain(|(existing, _)| *existing != name);
        self.headers.push((name, value));
        self
    }
}

/// The state-changing endpoints, each with a body that would change state
/// if the request were let in.
fn sre_endpoints() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    vec![
        ("PUT", "/v1/rollout/weight", "application/json", r#"{"canary_percent": 50}"#),
        ("POST", "/v1/rollout/rollback", "application/json", "{}"),
        ("POST", "/v1/rollout/promote", "application/json", r#"{"full": true}"#),
        ("POST", "/v1/rollout/pause", "application/json", "{}"),
        ("POST", "/v1/rollout/resume", "application/json", "{}"),
        ("POST", "/v1/rollout/approve", "application/json", "{}"),
        ("POST", "/v1/rollouts", "application/yaml", SPEC),
    ]
}

const READ_ENDPOINTS: [&str; 5] =
    ["/v1/rollout", "/v1/workers?limit=5", "/v1/rollouts/history", "/v1/assignment?key=user-42", "/metrics"];

fn auth_cases() -> Vec<Case> {
    use StatusCode as S;
    let mut cases = Vec::new();
    for (method, uri, content_type, body) in sre_endpoints() {
        for (what, auth, status, words) in [
            ("SRE endpoint without a token", None, S::UNAUTHORIZED, "missing bearer token"),
            ("SRE endpoint with an unknown token", Some("Bearer sre-secreT"), S::UNAUTHORIZED, "not valid"),
            ("SRE endpoint with basic auth", Some("Basic c3JlLXNlY3JldA=="), S::UNAUTHORIZED, "not `Bearer <token>`"),
            ("SRE endpoint with the bare token", Some("sre-secret"), S::UNAUTHORIZED, "not `Bearer <token>`"),
            ("SRE endpoint with the filter token", Some(FILTER), S::FORBIDDEN, "the filter token is not accepted"),
            ("SRE endpoint with the read token", Some(READ), S::FORBIDDEN, "the read token is not accepted"),
        ] {
            cases.push(case(what, method, uri, auth, body).header("content-type", content_type).expect(
                status,
                json!("authorization"),
                words,
            ));
        }
    }
    for uri in READ_ENDPOINTS {
        for (what, auth, status, words) in [
            ("read endpoint without a token", None, S::UNAUTHORIZED, "the SRE token"),
            ("read endpoint with an unknown token", Some("Bearer nope"), S::UNAUTHORIZED, "read token"),
            ("read endpoint with the filter token", Some(FILTER), S::FORBIDDEN, "the filter token is not accepted"),
        ] {
            cases.push(case(what, "GET", uri, auth, "").expect(status, json!("authorization"), words));
        }
    }
    for (what, auth, status, words) in [
        ("sync without a token", None, S::UNAUTHORIZED, "the filter token"),
        ("sync with an unknown token", Some("Bearer filter-secreT"), S::UNAUTHORIZED, "not valid"),
        ("sync with the SRE token", Some(SRE), S::FORBIDDEN, "the SRE token is not accepted"),
        ("sync with the read token", Some(READ), S::FORBIDDEN, "the read token is not accepted"),
    ] {
        for (uri, body) in [("/v1/filter/sync", report(2)), ("/v1/filter/sync-batch", batch(&[report(2)]))] {
            cases.push(case(what, "POST", uri, auth, body).header("content-type", "application/octet-stream").expect(
                status,
                json!("authorization"),
                words,
            ));
        }
    }
    cases
}

fn method_and_route_cases() -> Vec<Case> {
    use StatusCode as S;
    let mut cases = Vec::new();
    for (method, uri) in [
        ("GET", "/v1/rollout/weight"),
        ("POST", "/v1/rollout/weight"),
        ("GET", "/v1/rollout/rollback"),
        ("DELETE", "/v1/rollout"),
        ("PUT", "/v1/rollouts"),
        ("POST", "/v1/rollouts/history"),
        ("POST", "/v1/assignment"),
        ("POST", "/v1/workers"),
        ("GET", "/v1/filter/sync"),
        ("PUT", "/v1/filter/sync"),
        ("GET", "/v1/filter/sync-batch"),
        ("PUT", "/v1/filter/sync-batch"),
        ("POST", "/metrics"),
        ("POST", "/healthz"),
    ] {
        cases.push(case("wrong method", method, uri, Some(SRE), "").expect(
            S::METHOD_NOT_ALLOWED,
            Value::Null,
            "does not take",
        ));
    }
    // The method is checked before the token: a 405 only says the path
    // exists, which the documentation says anyway.
    cases.push(case("wrong method without a token", "GET", "/v1/rollout/weight", None, "").expect(
        S::METHOD_NOT_ALLOWED,
        Value::Null,
        "does not take",
    ));
    cases.push(case("unknown route", "GET", "/v1/rollout/weights", Some(SRE), "").expect(
        S::NOT_FOUND,
        Value::Null,
        "no route",
    ));
    // Next to the path `Api` serves without the router: only the exact path
    // takes that way.
    for uri in ["/v1/filter/sync/", "/v1/filter/sync-batch/"] {
        cases.push(case("unknown route beside a sync path", "POST", uri, Some(FILTER), "").expect(
            S::NOT_FOUND,
            Value::Null,
            "no route",
        ));
    }
    cases
}

fn body_cases() -> Vec<Case> {
    use StatusCode as S;
    let oversized_json = format!(r#"{{"reason": "{}"}}"#, "x".repeat(MAX_JSON_BODY_BYTES));
    let oversized_spec = format!("{SPEC}\n# {}\n", "x".repeat(rollouts::MAX_SPEC_BYTES));
    let long_reason = format!(r#"{{"reason": "{}"}}"#, "r".repeat(1_025));
    let null = Value::Null;
    let mut cases = vec![
        // Oversized bodies.
        case("oversized weight body", "PUT", "/v1/rollout/weight", Some(SRE), oversized_json.clone()).expect(
            S::PAYLOAD_TOO_LARGE,
            null.clone(),
            "larger than",
        ),
        case("oversized rollback body", "POST", "/v1/rollout/rollback", Some(SRE), oversized_json.clone()).expect(
            S::PAYLOAD_TOO_LARGE,
            null.clone(),
            "larger than",
        ),
        case("oversized spec", "POST", "/v1/rollouts", Some(SRE), oversized_spec)
            .header("content-type", "application/yaml")
            .expect(S::PAYLOAD_TOO_LARGE, null.clone(), "larger than"),
        // Malformed JSON.
        case("truncated JSON", "PUT", "/v1/rollout/weight", Some(SRE), r#"{"canary_percent": 5"#).expect(
            S::BAD_REQUEST,
            null.clone(),
            "not valid JSON",
        ),
        case("a JSON list", "POST", "/v1/rollout/rollback", Some(SRE), "[1]").expect(
            S::BAD_REQUEST,
            null.clone(),
            "must be a JSON object",
        ),
        case("form encoding", "POST", "/v1/rollout/promote", Some(SRE), "full=true").expect(
            S::BAD_REQUEST,
            null.clone(),
            "not valid JSON",
        ),
        case("a JSON string", "POST", "/v1/rollout/pause", Some(SRE), r#""pause""#).expect(
            S::BAD_REQUEST,
            null.clone(),
            "must be a JSON object",
        ),
        case("bad spec syntax", "POST", "/v1/rollouts", Some(SRE), r#"{"canaryVersion": "#).expect(
            S::BAD_REQUEST,
            null.clone(),
            "not valid JSON",
        ),
        // Unknown fields.
        case(
            "unknown weight field",
            "PUT",
            "/v1/rollout/weight",
            Some(SRE),
            r#"{"canary_percent": 5, "canary_pct": 5}"#,
        )
        .expect(S::BAD_REQUEST, json!("canary_pct"), "unknown field"),
        case("unknown rollback field", "POST", "/v1/rollout/rollback", Some(SRE), r#"{"gradual": 5}"#).expect(
            S::BAD_REQUEST,
            json!("gradual"),
            "unknown field",
        ),
        case("unknown promote field", "POST", "/v1/rollout/promote", Some(SRE), r#"{"fulll": true}"#).expect(
            S::BAD_REQUEST,
            json!("fulll"),
            "unknown field",
        ),
        case("unknown pause field", "POST", "/v1/rollout/pause", Some(SRE), r#"{"reasons": "x"}"#).expect(
            S::BAD_REQUEST,
            json!("reasons"),
            "unknown field",
        ),
        case("unknown resume field", "POST", "/v1/rollout/resume", Some(SRE), r#"{"force": true}"#).expect(
            S::BAD_REQUEST,
            json!("force"),
            "unknown field",
        ),
        case("unknown approve field", "POST", "/v1/rollout/approve", Some(SRE), r#"{"step": 2}"#).expect(
            S::BAD_REQUEST,
            json!("step"),
            "unknown field",
        ),
        case("unknown spec field", "POST", "/v1/rollouts", Some(SRE), "canaryVersion: v2\ncolour: blue")
            .header("content-type", "application/yaml")
            .expect(S::UNPROCESSABLE_ENTITY, json!("colour"), "colour"),
        // Numbers out of range or of the wrong type.
        case("weight above 100", "PUT", "/v1/rollout/weight", Some(SRE), r#"{"canary_percent": 100.01}"#).expect(
            S::BAD_REQUEST,
            json!("canary_percent"),
            "100",
        ),
        case("negative weight", "PUT", "/v1/rollout/weight", Some(SRE), r#"{"canary_percent": -0.01}"#).expect(
            S::BAD_REQUEST,
            json!("canary_percent"),
            "canary",
        ),
        case("weight with three decimals", "PUT", "/v1/rollout/weight", Some(SRE), r#"{"canary_percent": 12.345}"#)
            .expect(S::BAD_REQUEST, json!("canary_percent"), "canary"),
        case("infinite weight", "PUT", "/v1/rollout/weight", Some(SRE), r#"{"canary_percent": 1e400}"#).expect(
            S::BAD_REQUEST,
            null.clone(),
            "out of range",
        ),
        case("weight as a string", "PUT", "/v1/rollout/weight", Some(SRE), r#"{"canary_percent": "50"}"#).expect(
            S::BAD_REQUEST,
            json!("canary_percent"),
            "invalid type",
        ),
        case("missing weight", "PUT", "/v1/rollout/weight", Some(SRE), "{}").expect(
            S::BAD_REQUEST,
            json!("canary_percent"),
            "missing field",
        ),
        case("gradual rollback too long", "POST", "/v1/rollout/rollback", Some(SRE), r#"{"gradual_seconds": 3601}"#)
            .expect(S::BAD_REQUEST, json!("gradual_seconds"), "0..=3600"),
        case("negative gradual rollback", "POST", "/v1/rollout/rollback", Some(SRE), r#"{"gradual_seconds": -1}"#)
            .expect(S::BAD_REQUEST, json!("gradual_seconds"), "invalid value"),
        case("fractional gradual rollback", "POST", "/v1/rollout/rollback", Some(SRE), r#"{"gradual_seconds": 1.5}"#)
            .expect(S::BAD_REQUEST, json!("gradual_seconds"), "invalid type"),
        case(
            "gradual rollback beyond u32",
            "POST",
            "/v1/rollout/rollback",
            Some(SRE),
            r#"{"gradual_seconds": 4294967296}"#,
        )
        .expect(S::BAD_REQUEST, json!("gradual_seconds"), "invalid value"),
        case("promote full not a bool", "POST", "/v1/rollout/promote", Some(SRE), r#"{"full": "yes"}"#).expect(
            S::BAD_REQUEST,
            json!("full"),
            "invalid type",
        ),
        case("reason too long", "POST", "/v1/rollout/pause", Some(SRE), long_reason).expect(
            S::BAD_REQUEST,
            json!("reason"),
            "longer than 1024",
        ),
        case("reason with a control character", "POST", "/v1/rollout/rollback", Some(SRE), r#"{"reason": "a\u0007b"}"#)
            .expect(S::BAD_REQUEST, json!("reason"), "control characters"),
        case(
            "spec weight above 100",
            "POST",
            "/v1/rollouts",
            Some(SRE),
            r#"{"canaryVersion": "v2", "steps": [{"setWeight": 101}]}"#,
        )
        .expect(S::UNPROCESSABLE_ENTITY, json!("steps[0].setWeight"), "setWeight"),
        case(
            "spec pause too long",
            "POST",
            "/v1/rollouts",
            Some(SRE),
            "canaryVersion: v2\nsteps: [{setWeight: 5}, {pause: {duration: 30d}}]",
        )
        .header("content-type", "application/yaml")
        .expect(S::UNPROCESSABLE_ENTITY, json!("steps[1].pause.duration"), "duration"),
        // Headers.
        case("reserved actor", "POST", "/v1/rollout/pause", Some(SRE), "{}").header("x-canary-actor", "auto").expect(
            S::BAD_REQUEST,
            json!("x-canary-actor"),
            "reserved",
        ),
        case("empty actor", "PUT", "/v1/rollout/weight", Some(SRE), r#"{"canary_percent": 50}"#)
            .header("x-canary-actor", " ")
            .expect(S::BAD_REQUEST, json!("x-canary-actor"), "1 to 128"),
    ];
    // Query strings.
    for (what, method, uri, body, field, words) in [
        (
            "zero wait timeout",
            "PUT",
            "/v1/rollout/weight?wait=true&timeout_ms=0",
            r#"{"canary_percent": 50}"#,
            "timeout_ms",
            "1..=600000",
        ),
        ("wait timeout too long", "POST", "/v1/rollout/rollback?timeout_ms=600001", "{}", "timeout_ms", "1..=600000"),
        ("negative wait timeout", "POST", "/v1/rollout/rollback?timeout_ms=-5", "{}", "timeout_ms", "integer"),
        (
            "wait not a bool",
            "PUT",
            "/v1/rollout/weight?wait=maybe",
            r#"{"canary_percent": 50}"#,
            "wait",
            "true or false",
        ),
        ("misspelt wait", "POST", "/v1/rollout/rollback?wiat=true", "{}", "wiat", "unknown query parameter"),
        ("wait given twice", "POST", "/v1/rollout/rollback?wait=true&wait=false", "{}", "wait", "twice"),
        ("query on pause", "POST", "/v1/rollout/pause?force=1", "{}", "force", "takes none"),
        ("query on promote", "POST", "/v1/rollout/promote?full=true", "{}", "full", "takes none"),
        ("query on start", "POST", "/v1/rollouts?dry_run", SPEC, "dry_run", "takes none"),
        ("query on the view", "GET", "/v1/rollout?verbose=1", "", "verbose", "takes none"),
        ("query on history", "GET", "/v1/rollouts/history?limit=5", "", "limit", "takes none"),
        ("assignment without key", "GET", "/v1/assignment", "", "key", "key is required"),
        ("assignment with an empty key", "GET", "/v1/assignment?key=", "", "key", "empty"),
        ("assignment with two keys", "GET", "/v1/assignment?key=a&key=b", "", "key", "twice"),
        ("assignment with another parameter", "GET", "/v1/assignment?key=a&user=b", "", "user", "expected key"),
        ("page limit zero", "GET", "/v1/workers?limit=0", "", "limit", "1..=10000"),
        ("page limit too large", "GET", "/v1/workers?limit=10001", "", "limit", "1..=10000"),
        ("page limit not a number", "GET", "/v1/workers?limit=ten", "", "limit", "integer"),
        ("negative page limit", "GET", "/v1/workers?limit=-1", "", "limit", "integer"),
        ("empty page limit", "GET", "/v1/workers?limit=", "", "limit", "integer"),
        ("page limit given twice", "GET", "/v1/workers?limit=1&limit=2", "", "limit", "twice"),
        ("cursor without a worker id", "GET", "/v1/workers?after=envoy-bad-input", "", "after", "no '/'"),
        (
            "cursor with a short worker id",
            "GET",
            "/v1/workers?after=envoy-bad-input/7",
            "",
            "after",
            "16 lowercase hex",
        ),
        ("cursor without a proxy id", "GET", "/v1/workers?after=/0000000000000007", "", "after", "proxy id"),
        ("cursor not UTF-8", "GET", "/v1/workers?after=%FF/0000000000000007", "", "after", "UTF-8"),
        (
            "cursor given twice",
            "GET",
            "/v1/workers?after=a/0000000000000007&after=b/0000000000000007",
            "",
            "after",
            "twice",
        ),
        ("empty proxy filter", "GET", "/v1/workers?proxy=", "", "proxy", "1..=255"),
        ("proxy filter not UTF-8", "GET", "/v1/workers?proxy=%C3", "", "proxy", "UTF-8"),
        ("unknown page parameter", "GET", "/v1/workers?offset=5", "", "offset", "expected limit, after or proxy"),
    ] {
        let content_type = if uri.starts_with("/v1/rollouts?") { "application/yaml" } else { "application/json" };
        cases.push(case(what, method, uri, Some(SRE), body).header("content-type", content_type).expect(
            S::BAD_REQUEST,
            json!(field),
            words,
        ));
    }
    let long_key = format!("/v1/assignment?key={}", "k".repeat(rollouts::MAX_ASSIGNMENT_KEY_BYTES + 1));
    let mut long_key_case =
        case("assignment key too long", "GET", "", Some(SRE), "").expect(S::BAD_REQUEST, json!("key"), "at most");
    long_key_case.uri = long_key;
    cases.push(long_key_case);
    let mut long_proxy_case =
        case("proxy filter too long", "GET", "", Some(SRE), "").expect(S::BAD_REQUEST, json!("proxy"), "1..=255");
    long_proxy_case.uri = format!("/v1/workers?proxy={}", "p".repeat(256));
    cases.push(long_proxy_case);
    cases
}

fn report_cases() -> Vec<Case> {
    use StatusCode as S;
    let valid = report(2);
    let mut unknown_format = valid.clone();
    unknown_format[2] = 9;
    let mut bad_magic = valid.clone();
    bad_magic[0] = b'X';
    let mut layout = valid.clone();
    layout[3] = 5;
    let mut trailing = valid.clone();
    trailing.extend_from_slice(&[0, 0]);
    // The canary section's bucket count, claimed far beyond the layout: the
    // decoder must refuse it before reserving memory for it.
    let mut huge_bucket_count = Vec::new();
    let header_only = edited_report(|r| r.versions = [Default::default(), Default::default()]);
    huge_bucket_count.extend_from_slice(&header_only[..header_only.len() - 7]);
    huge_bucket_count.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    huge_bucket_count.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let reports: Vec<(&'static str, Vec<u8>, S, &'static str, &'static str)> = vec![
        ("empty report", Vec::new(), S::BAD_REQUEST, "magic", "truncated while reading magic"),
        ("truncated report", valid[..valid.len() / 2].to_vec(), S::BAD_REQUEST, "", "truncated while reading"),
        (
            "report cut by one byte",
            valid[..valid.len() - 1].to_vec(),
            S::BAD_REQUEST,
            "canary.bucket count value",
            "truncated",
        ),
        ("oversized report", vec![0; MAX_REPORT_BYTES + 1], S::PAYLOAD_TOO_LARGE, "", "larger than"),
        (
            "unknown format version",
            unknown_format,
            S::BAD_REQUEST,
            "format version",
            "format version 9 is not supported",
        ),
        ("not a report", bad_magic, S::BAD_REQUEST, "magic", "not the magic bytes"),
        ("other histogram layout", layout, S::BAD_REQUEST, "histogram layout", "histogram layout"),
        ("trailing bytes", trailing, S::BAD_REQUEST, "end of message", "unexpected bytes"),
        (
            "status counts above the requests",
            edited_report(|r| r.versions[1].status.status_2xx += 1),
            S::BAD_REQUEST,
            "canary.status counts",
            "sum to",
        ),
        (
            "latency counts below the requests",
            edited_report(|r| {
                r.versions[0].requests += 1;
                r.versions[0].status.status_2xx += 1;
            }),
            S::BAD_REQUEST,
            "stable.latency bucket counts",
            "sum to",
        ),
        (
            "status counts that overflow",
            edited_report(|r| {
                r.versions[0].status.status_2xx = u64::MAX;
                r.versions[0].status.status_5xx = 2;
            }),
            S::BAD_REQUEST,
            "stable.status_2xx",
            "overflow",
        ),
        ("impossible bucket count", huge_bucket_count, S::BAD_REQUEST, "canary.bucket count", "3328"),
        ("seq zero", edited_report(|r| r.header.seq = 0), S::BAD_REQUEST, "seq", "must start at 1"),
        ("empty proxy id", edited_report(|r| r.header.proxy_id.clear()), S::BAD_REQUEST, "proxy id length", "1..=255"),
    ];
    let query = case("query on the sync endpoint", "POST", "/v1/filter/sync?seq=1", Some(FILTER), valid.clone())
        .header("content-type", "application/octet-stream")
        .expect(S::BAD_REQUEST, json!("seq"), "takes none");
    reports
        .into_iter()
        .map(|(what, bytes, status, field, words)| {
            let field = if field.is_empty() && status == S::PAYLOAD_TOO_LARGE { Value::Null } else { json!(field) };
            let mut case = case(what, "POST", "/v1/filter/sync", Some(FILTER), bytes)
                .header("content-type", "application/octet-stream")
                .expect(status, field, words);
            // A truncation's field depends on where the cut falls; the
            // words say what matters.
            if what == "truncated report" {
                case.field = Value::String(String::new());
            }
            case
        })
        .chain([query])
        .chain(batch_cases())
        .collect()
}

/// The batch endpoint's framing, and a bad report inside a batch, which
/// refuses the whole batch, good reports included.
fn batch_cases() -> Vec<Case> {
    use StatusCode as S;
    let valid = report(2);
    let seq_zero = edited_report(|r| r.header.seq = 0);
    let mut wrong_count = batch(std::slice::from_ref(&valid));
    // The count byte follows magic, version and a one-byte hold.
    wrong_count[4] = 2;
    let cases: Vec<(&'static str, Vec<u8>, S, Value, &'static str)> = vec![
        ("empty batch body", Vec::new(), S::BAD_REQUEST, json!("magic"), "batch: truncated while reading magic"),
        ("a single report sent as a batch", valid.clone(), S::BAD_REQUEST, json!("magic"), "not the magic bytes"),
        ("batch of no reports", b"CB\x01\x00\x00".to_vec(), S::BAD_REQUEST, json!("report count"), "must be 1..=256"),
        ("batch count above its reports", wrong_count, S::BAD_REQUEST, json!("report length"), "truncated"),
        (
            "bad report after a good one",
            batch(&[valid.clone(), seq_zero]),
            S::BAD_REQUEST,
            json!("reports[1].seq"),
            "batch report 1: report: seq is 0",
        ),
        ("oversized batch", vec![0; MAX_BATCH_BYTES + 1], S::PAYLOAD_TOO_LARGE, Value::Null, "larger than"),
    ];
    let query = case("query on the batch endpoint", "POST", "/v1/filter/sync-batch?x=1", Some(FILTER), batch(&[valid]))
        .header("content-type", "application/octet-stream")
        .expect(S::BAD_REQUEST, json!("x"), "takes none");
    cases
        .into_iter()
        .map(|(what, bytes, status, field, words)| {
            case(what, "POST", "/v1/filter/sync-batch", Some(FILTER), bytes)
                .header("content-type", "application/octet-stream")
                .expect(status, field, words)
        })
        .chain([query])
        .collect()
}

#[tokio::test]
async fn every_endpoint_refuses_bad_input_naming_the_problem_and_changes_nothing() {
    let harness = Harness::locked();
    // Some state worth protecting: counts from a worker, a rollout paused at
    // 10% by hand, one finished rollout in the history.
    let sync = harness.send("POST", "/v1/filter/sync", &[("authorization", FILTER)], report(1)).await;
    assert_eq!(sync.status, StatusCode::OK, "{}", sync.raw);
    let yaml = [("content-type", "application/yaml"), ("authorization", SRE)];
    harness.ok("POST", "/v1/rollouts", &yaml, SPEC).await;
    harness.ok("POST", "/v1/rollout/rollback", &[("authorization", SRE)], r#"{"reason": "first try"}"#).await;
    harness.ok("POST", "/v1/rollouts", &yaml, SPEC).await;
    harness.ok("POST", "/v1/rollout/pause", &[("authorization", SRE)], "").await;
    let before = harness.snapshot().await;
    assert_eq!(before["rollout"][1], "Paused", "{before:#}");
    assert_eq!(before["history"].as_array().map(Vec::len), Some(1), "{before:#}");
    assert_eq!(before["stable_total"]["requests"], 20);

    let cases: Vec<Case> =
        [auth_cases(), method_and_route_cases(), body_cases(), report_cases()].into_iter().flatten().collect();
    let mut failures = Vec::new();
    for case in &cases {
        let answer = harness.send(case.method, &case.uri, &case.headers, case.body.clone()).await;
        let label = format!("{} ({} {})", case.what, case.method, &case.uri[..case.uri.len().min(60)]);
        let message = answer.body["error"].as_str().unwrap_or_default();
        let field_ok = match &case.field {
            Value::String(expected) if expected.is_empty() => answer.body["field"].is_string(),
            expected => answer.body["field"] == *expected,
        };
        let shape_ok =
            answer.body.as_object().is_some_and(|object| object.contains_key("field")) && !message.is_empty();
        let challenge_ok =
            (answer.status == StatusCode::UNAUTHORIZED) == (answer.www_authenticate.as_deref() == Some("Bearer"));
        if answer.status != case.status || !field_ok || !shape_ok || !message.contains(case.words) || !challenge_ok {
            failures.push(format!(
                "{label}: got {} {} (www-authenticate {:?}), want {} field {} with {:?}",
                answer.status, answer.raw, answer.www_authenticate, case.status, case.field, case.words
            ));
        }
        if let Some(secret) = SECRETS.iter().find(|secret| answer.raw.contains(**secret)) {
            failures.push(format!("{label}: the answer echoes {secret}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert!(cases.len() > 120, "the table shrank to {} cases", cases.len());

    let after = harness.snapshot().await;
    assert_eq!(after, before, "a rejected request changed the state");
}

#[tokio::test]
async fn rejections_of_the_filter_channel_are_counted() {
    let harness = Harness::locked();
    let auth_refusals = auth_cases().into_iter().filter(|case| case.uri.starts_with("/v1/filter/sync")).count();
    for case in auth_cases().into_iter().chain(report_cases()).filter(|case| case.uri.starts_with("/v1/filter/sync")) {
        harness.send(case.method, &case.uri, &case.headers, case.body).await;
    }
    let answer = harness.send("GET", "/metrics", &[("authorization", READ)], Vec::new()).await;
    assert_eq!(answer.status, StatusCode::OK);
    let malformed = report_cases().iter().filter(|case| case.status == StatusCode::BAD_REQUEST).count();
    let too_large = report_cases().iter().filter(|case| case.status == StatusCode::PAYLOAD_TOO_LARGE).count();
    for line in [
        format!("canary_reports_rejected_total{{reason=\"unauthorized\"}} {auth_refusals}"),
        format!("canary_reports_rejected_total{{reason=\"malformed\"}} {malformed}"),
        format!("canary_reports_rejected_total{{reason=\"too_large\"}} {too_large}"),
        "canary_reports_received_total 0".to_owned(),
    ] {
        assert!(answer.raw.lines().any(|got| got == line), "missing {line:?} in\n{}", answer.raw);
    }
}

#[tokio::test]
async fn open_reads_and_the_right_tokens_pass() {
    // Reads open (the default), SRE and filter tokens set: reads need no
    // token, changes still do.
    let harness = Harness::new(|config| {
        config.filter_token = Some("filter-secret".into());
        config.sre_token = Some("sre-secret".into());
    });
    for uri in READ_ENDPOINTS {
        let answer = harness.send("GET", uri, &[], Vec::new()).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.raw);
    }
    let healthz = harness.send("GET", "/healthz", &[], Vec::new()).await;
    assert_eq!((healthz.status, healthz.raw.as_str()), (StatusCode::OK, "ok"));
    let json = ("content-type", "application/json");
    let refused = harness.send("PUT", "/v1/rollout/weight", &[json], br#"{"canary_percent": 5}"#.to_vec()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let changed =
        harness.ok("PUT", "/v1/rollout/weight", &[json, ("authorization", SRE)], r#"{"canary_percent": 5}"#).await;
    assert_eq!((changed["canary_weight_bp"].as_u64(), changed["changed"].as_bool()), (Some(500), Some(true)));
    // The scheme is case-insensitive.
    let lower = harness
        .ok("PUT", "/v1/rollout/weight", &[json, ("authorization", "bearer sre-secret")], r#"{"canary_percent": 6}"#)
        .await;
    assert_eq!(lower["canary_weight_bp"], 600);

    // With every family open (loopback without tokens), nothing asks for one.
    let open = Harness::new(|_| {});
    let answer = open.send("PUT", "/v1/rollout/weight", &[json], br#"{"canary_percent": 7}"#.to_vec()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.raw);
}
