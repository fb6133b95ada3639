//! What each action sends: method, path, query, body and which token. Pure,
//! so the mapping from the command line to the API is a table test.

use std::time::Duration;

use canary_protocol::CanaryWeight;
use serde_json::{Map, Value, json};

/// The analyzer's header naming who acts.
pub const ACTOR_HEADER: &str = "x-canary-actor";
/// The header carrying the reason of a `POST /v1/rollouts`, whose body is the spec.
pub const REASON_HEADER: &str = "x-canary-reason";

/// Which token a request needs (the analyzer's endpoint families).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// State-changing: the SRE token.
    Sre,
    /// Reads: the read token, or the SRE token.
    Read,
}

/// One thing to ask the analyzer.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    GetRollout,
    History,
    Assignment { key: String },
    Start { spec: Vec<u8>, json: bool, reason: Option<String> },
    SetWeight { weight: CanaryWeight, reason: Option<String>, wait: Option<Propagation> },
    Promote { full: bool, reason: Option<String> },
    Pause { reason: Option<String> },
    Resume { reason: Option<String> },
    Approve { reason: Option<String> },
    Rollback { gradual_seconds: Option<u32>, reason: Option<String>, wait: Option<Propagation> },
}

/// `?wait=true`, with the analyzer's default timeout or this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    pub timeout: Option<Duration>,
}

/// A request, before an address and tokens are added.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: &'static str,
    /// Path and query, e.g. `/v1/rollout/rollback?wait=true`.
    pub path: String,
    pub family: Family,
    /// Content type and bytes; `None` for a GET.
    pub body: Option<(&'static str, Vec<u8>)>,
    /// Extra headers (the reason of a start).
    pub headers: Vec<(&'static str, String)>,
}

impl Action {
    pub fn request(&self) -> ApiRequest {
        let get = |path: String| ApiRequest { method: "GET", path, family: Family::Read, body: None, headers: vec![] };
        let sre = |method: &'static str, path: String, body: Value| ApiRequest {
            method,
            path,
            family: Family::Sre,
            body: Some(("application/json", body.to_string().into_bytes())),
            headers: vec![],
        };
        match self {
            Action::GetRollout => get("/v1/rollout".to_owned()),
            Action::History => get("/v1/rollouts/history".to_owned()),
            Action::Assignment { key } => get(format!("/v1/assignment?key={}", form_encode(key))),
            Action::Start { spec, json, reason } => ApiRequest {
                method: "POST",
                path: "/v1/rollouts".to_owned(),
                family: Family::Sre,
                body: Some((if *json { "application/json" } else { "application/yaml" }, spec.clone())),
                headers: reason.iter().map(|reason| (REASON_HEADER, reason.clone())).collect(),
            },
            Action::SetWeight { weight, reason, wait } => {
                let mut body = Map::new();
                body.insert("canary_percent".to_owned(), json!(weight.percent()));
                insert_reason(&mut body, reason);
                sre("PUT", format!("/v1/rollout/weight{}", wait_query(*wait)), Value::Object(body))
            }
            Action::Promote { full, reason } => {
                let mut body = Map::new();
                if *full {
                    body.insert("full".to_owned(), Value::Bool(true));
                }
                insert_reason(&mut body, reason);
                sre("POST", "/v1/rollout/promote".to_owned(), Value::Object(body))
            }
            Action::Pause { reason } => sre("POST", "/v1/rollout/pause".to_owned(), reason_body(reason)),
            Action::Resume { reason } => sre("POST", "/v1/rollout/resume".to_owned(), reason_body(reason)),
            Action::Approve { reason } => sre("POST", "/v1/rollout/approve".to_owned(), reason_body(reason)),
            Action::Rollback { gradual_seconds, reason, wait } => {
                let mut body = Map::new();
                if let Some(seconds) = gradual_seconds {
                    body.insert("gradual_seconds".to_owned(), json!(seconds));
                }
                insert_reason(&mut body, reason);
                sre("POST", format!("/v1/rollout/rollback{}", wait_query(*wait)), Value::Object(body))
            }
        }
    }
}

fn insert_reason(body: &mut Map<String, Value>, reason: &Option<String>) {
    if let Some(reason) = reason {
        body.insert("reason".to_owned(), Value::String(reason.clone()));
    }
}

fn reason_body(reason: &Option<String>) -> Value {
    let mut body = Map::new();
    insert_reason(&mut body, reason);
    Value::Object(body)
}

fn wait_query(wait: Option<Propagation>) -> String {
    match wait {
        None => String::new(),
        Some(Propagation { timeout: None }) => "?wait=true".to_owned(),
        // The CLI bounds it to 1 ms..=10 min, the API's range.
        Some(Propagation { timeout: Some(timeout) }) => format!("?wait=true&timeout_ms={}", timeout.as_millis()),
    }
}

/// `application/x-www-form-urlencoded`, the encoding the analyzer decodes
/// for `?key=`: unreserved bytes as they are, everything else `%XX`.
/// Hand-written: a crate for one query parameter would be more than it saves.
pub fn form_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(percent: f64) -> CanaryWeight {
        CanaryWeight::from_percent(percent).expect("valid weight")
    }

    /// (action, method, path, family, body as JSON or `None`).
    fn check(action: Action, method: &str, path: &str, family: Family, body: Option<Value>) {
        let request = action.request();
        assert_eq!((request.method, request.path.as_str(), request.family), (method, path, family), "{action:?}");
        let sent = request.body.map(|(content_type, bytes)| {
            assert_eq!(content_type, "application/json", "{action:?}");
            serde_json::from_slice::<Value>(&bytes).expect("JSON body")
        });
        assert_eq!(sent, body, "{action:?}");
    }

    #[test]
    fn action_to_request_table() {
        let reason = || Some("p95 up".to_owned());
        check(Action::GetRollout, "GET", "/v1/rollout", Family::Read, None);
        check(Action::History, "GET", "/v1/rollouts/history", Family::Read, None);
        check(
            Action::Assignment { key: "user 42/ü".to_owned() },
            "GET",
            "/v1/assignment?key=user%2042%2F%C3%BC",
            Family::Read,
            None,
        );
        check(
            Action::SetWeight { weight: weight(12.34), reason: None, wait: None },
            "PUT",
            "/v1/rollout/weight",
            Family::Sre,
            Some(json!({"canary_percent": 12.34})),
        );
        check(
            Action::SetWeight {
                weight: weight(0.5),
                reason: reason(),
                wait: Some(Propagation { timeout: Some(Duration::from_secs(5)) }),
            },
            "PUT",
            "/v1/rollout/weight?wait=true&timeout_ms=5000",
            Family::Sre,
            Some(json!({"canary_percent": 0.5, "reason": "p95 up"})),
        );
        check(
            Action::Promote { full: false, reason: None },
            "POST",
            "/v1/rollout/promote",
            Family::Sre,
            Some(json!({})),
        );
        check(
            Action::Promote { full: true, reason: reason() },
            "POST",
            "/v1/rollout/promote",
            Family::Sre,
            Some(json!({"full": true, "reason": "p95 up"})),
        );
        check(Action::Pause { reason: None }, "POST", "/v1/rollout/pause", Family::Sre, Some(json!({})));
        check(
            Action::Resume { reason: reason() },
            "POST",
            "/v1/rollout/resume",
            Family::Sre,
            Some(json!({"reason": "p95 up"})),
        );
        check(Action::Approve { reason: None }, "POST", "/v1/rollout/approve", Family::Sre, Some(json!({})));
        check(
            Action::Rollback { gradual_seconds: None, reason: None, wait: Some(Propagation { timeout: None }) },
            "POST",
            "/v1/rollout/rollback?wait=true",
            Family::Sre,
            Some(json!({})),
        );
        check(
            Action::Rollback { gradual_seconds: Some(60), reason: reason(), wait: None },
            "POST",
            "/v1/rollout/rollback",
            Family::Sre,
            Some(json!({"gradual_seconds": 60, "reason": "p95 up"})),
        );
    }

    #[test]
    fn start_sends_the_file_as_is_with_its_type_and_the_reason_header() {
        let yaml = b"canaryVersion: v2\n".to_vec();
        let request = Action::Start { spec: yaml.clone(), json: false, reason: Some("release 42".into()) }.request();
        assert_eq!((request.method, request.path.as_str(), request.family), ("POST", "/v1/rollouts", Family::Sre));
        assert_eq!(request.body, Some(("application/yaml", yaml)));
        assert_eq!(request.headers, vec![(REASON_HEADER, "release 42".to_owned())]);
        let request = Action::Start { spec: b"{}".to_vec(), json: true, reason: None }.request();
        assert_eq!(request.body.map(|(content_type, _)| content_type), Some("application/json"));
        assert!(request.headers.is_empty());
    }

    #[test]
    fn form_encoding_round_trips_through_the_analyzer_decoding() {
        assert_eq!(form_encode("user-42"), "user-42");
        assert_eq!(form_encode("a+b&c=d"), "a%2Bb%26c%3Dd");
        assert_eq!(form_encode("✓"), "%E2%9C%93");
    }
}
