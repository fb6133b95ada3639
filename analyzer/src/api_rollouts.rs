//! The rollout endpoints: start, promote, pause, resume, approve, history
//! and sticky assignment. Rollback and weight changes stay in the parent
//! module, next to issue 2's shapes they extend.
//!
//! Every action records who did it: the `x-canary-actor` header (default
//! `api`; `auto` is reserved for the analyzer's own decisions) and an
//! optional `reason`, in the JSON body or, for `POST /v1/rollouts` whose
//! body is the spec, in the `x-canary-reason` header.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canary_protocol::split::{sticky_bucket, version_for_bucket};
use serde::{Deserialize, Serialize};

use super::{ApiError, MAX_JSON_BODY_BYTES, no_query, parse_json_body, read_body};
use crate::rollout::{AUTO_ACTOR, Command, RolloutSpec, SpecFormat};
use crate::state::AppState;

/// The header naming who acts.
pub const ACTOR_HEADER: &str = "x-canary-actor";
/// The header carrying the reason of a `POST /v1/rollouts`.
pub const REASON_HEADER: &str = "x-canary-reason";
/// The actor when the header is absent.
pub const DEFAULT_ACTOR: &str = "api";
/// Largest spec body accepted.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;
/// Longest sticky key `GET /v1/assignment` takes, as Envoy's default
/// header size limits would keep a longer one from reaching the filter.
pub const MAX_ASSIGNMENT_KEY_BYTES: usize = 8 * 1024;
const MAX_ACTOR_CHARS: usize = 128;
const MAX_REASON_CHARS: usize = 1_024;

/// `POST /v1/rollouts`: 201 with the new rollout.
pub(super) async fn start(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    no_query(query.as_deref())?;
    let actor = actor(&headers)?;
    let reason = match headers.get(REASON_HEADER) {
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::bad_request(format!("{REASON_HEADER} must be visible ASCII"), Some(REASON_HEADER))
            })?;
            check_reason(Some(text.to_owned()))?
        }
        None => None,
    };
    let bytes = read_body(body, MAX_SPEC_BYTES).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    let spec = RolloutSpec::parse(&bytes, SpecFormat::from_content_type(content_type))?;
    let view = state.controller().start(&state, spec, &actor, reason.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Body of pause, resume and approve.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

/// Body of promote.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    full: Option<bool>,
    reason: Option<String>,
}

pub(super) async fn promote(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    no_query(query.as_deref())?;
    let bytes = read_body(body, MAX_JSON_BODY_BYTES).await?;
    let request: PromoteBody = parse_json_body(&bytes, &["full", "reason"])?;
    let command = Command::Promote { full: request.full.unwrap_or(false) };
    run(&state, &headers, request.reason, command).await
}

pub(super) async fn pause(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    simple(state, query, headers, body, Command::Pause).await
}

pub(super) async fn resume(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    simple(state, query, headers, body, Command::Resume).await
}

pub(super) async fn approve(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    simple(state, query, headers, body, Command::Approve).await
}

async fn simple(
    state: AppState,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
    command: Command,
) -> Result<Response, ApiError> {
    no_query(query.as_deref())?;
    let bytes = read_body(body, MAX_JSON_BODY_BYTES).await?;
    let request: ReasonBody = parse_json_body(&bytes, &["reason"])?;
    run(&state, &headers, request.reason, command).await
}

/// Runs a command; 200 with the rollout after it.
async fn run(
    state: &AppState,
    headers: &HeaderMap,
    reason: Option<String>,
    command: Command,
) -> Result<Response, ApiError> {
    let actor = actor(headers)?;
    let reason = check_reason(reason)?;
    let outcome = state.controller().command(state, &actor, reason.as_deref(), command).await?;
    Ok(Json(outcome.view).into_response())
}

/// `GET /v1/rollouts/history`: finished rollouts, newest first.
pub(super) async fn history(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    no_query(query.as_deref())?;
    Ok(Json(&*state.controller().history()).into_response())
}

/// `GET /v1/assignment?key=K`.
#[derive(Debug, Serialize)]
struct AssignmentBody {
    key: String,
    /// The key's sticky bucket, 0..10000 (`canary_protocol::sticky_bucket`).
    bucket: u16,
    /// `canary` iff `bucket < canary_weight_bp`.
    version: &'static str,
    canary_weight_bp: u16,
    weights_version: u64,
}

/// Which version a sticky key gets at the weights filters are told now,
/// computed with the filter's own hash.
pub(super) async fn assignment(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let mut key = None;
    for pair in query.as_deref().unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "key" if key.is_some() => {
                return Err(ApiError::bad_request("key is given twice", Some("key")));
            }
            "key" => key = Some(percent_decode(value)),
            _ => {
                return Err(ApiError::bad_request(
                    format!("unknown query parameter {name:?}; expected key"),
                    Some(name),
                ));
            }
        }
    }
    let key = key.ok_or_else(|| {
        ApiError::bad_request("key is required: the sticky header or cookie value, e.g. ?key=user-42", Some("key"))
    })?;
    if key.is_empty() {
        // The filter splits a request with an empty key at random, so no
        // version can be named for it.
        return Err(ApiError::bad_request(
            "key is empty; a request without a sticky key is split at random",
            Some("key"),
        ));
    }
    if key.len() > MAX_ASSIGNMENT_KEY_BYTES {
        return Err(ApiError::bad_request(
            format!("key is {} bytes, at most {MAX_ASSIGNMENT_KEY_BYTES}", key.len()),
            Some("key"),
        ));
    }
    let weights = state.weights().weights;
    let bucket = sticky_bucket(&key);
    let version = version_for_bucket(bucket, weights.canary_weight);
    Ok(Json(AssignmentBody {
        key: String::from_utf8_lossy(&key).into_owned(),
        bucket,
        version: version.as_str(),
        canary_weight_bp: weights.canary_weight.bp(),
        weights_version: weights.weights_version,
    })
    .into_response())
}

/// The acting identity from `x-canary-actor`, `api` when absent.
pub(super) fn actor(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(ACTOR_HEADER) else { return Ok(DEFAULT_ACTOR.to_owned()) };
    let invalid = |message: String| ApiError::bad_request(message, Some(ACTOR_HEADER));
    let actor = value.to_str().map_err(|_| invalid(format!("{ACTOR_HEADER} must be visible ASCII")))?.trim();
    if actor.is_empty() || actor.chars().count() > MAX_ACTOR_CHARS {
        return Err(invalid(format!("{ACTOR_HEADER} must be 1 to {MAX_ACTOR_CHARS} characters")));
    }
    if actor == AUTO_ACTOR {
        return Err(invalid(format!("{ACTOR_HEADER}: {AUTO_ACTOR:?} is reserved for the analyzer's own decisions")));
    }
    Ok(actor.to_owned())
}

/// A reason is free text, bounded so the decision log stays small.
pub(super) fn check_reason(reason: Option<String>) -> Result<Option<String>, ApiError> {
    match reason {
        Some(reason) if reason.chars().count() > MAX_REASON_CHARS => {
            Err(ApiError::bad_request(format!("reason is longer than {MAX_REASON_CHARS} characters"), Some("reason")))
        }
        Some(reason) if reason.chars().any(char::is_control) => {
            Err(ApiError::bad_request("reason must not contain control characters", Some("reason")))
        }
        reason => Ok(reason.filter(|reason| !reason.trim().is_empty())),
    }
}

/// Decodes `application/x-www-form-urlencoded` (`+` is a space, `%XX` a
/// byte); a malformed escape stays as it is.
pub(super) fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' if index + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        decoded.push(byte);
                        index += 3;
                        continue;
                    }
                    None => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        index += 1;
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_table() {
        for (text, expected) in [
            ("user-42", &b"user-42"[..]),
            ("a+b", b"a b"),
            ("a%20b%2Fc", b"a b/c"),
            ("%e2%9c%93", "✓".as_bytes()),
            ("100%", b"100%"),
            ("%zz", b"%zz"),
            ("%4", b"%4"),
        ] {
            assert_eq!(percent_decode(text), expected, "{text}");
        }
    }
}
