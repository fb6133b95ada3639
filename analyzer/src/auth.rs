//! Who may call what: bearer tokens by role.
//!
//! Three roles, three secrets, never interchangeable:
//! - the **filter** token (`filter_token`) opens `POST /v1/filter/sync`;
//! - the **SRE** token (`sre_token`) opens every state-changing endpoint and,
//!   with `read_access = "token"`, the read endpoints;
//! - the optional **read** token (`read_token`) opens only the read
//!   endpoints, so a dashboard or a Prometheus scraper can hold a secret that
//!   cannot move the weights.
//!
//! A family whose token is not configured is open (the configuration only
//! allows that on loopback). When it is configured: no or a malformed
//! `authorization` header, or an unknown token, is 401 with
//! `WWW-Authenticate: Bearer`; a valid token of another role is 403. The
//! messages say which token is expected and how to configure it, never what
//! was sent.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::config::{Config, ReadAccess};
use crate::state::AppState;

/// The endpoint families, by what they let a caller do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `POST /v1/filter/sync`: reports in, weights out.
    Filter,
    /// Everything that changes state: weights, rollback, rollouts.
    Sre,
    /// `GET /v1/rollout`, `/v1/workers`, history, assignment, series,
    /// `/metrics`.
    Read,
}

/// Which configured token a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Filter,
    Sre,
    Read,
}

impl TokenKind {
    fn describe(self) -> &'static str {
        match self {
            TokenKind::Filter => "the filter token (filter_token, filter_token_file or CANARY_FILTER_TOKEN)",
            TokenKind::Sre => "the SRE token (sre_token, sre_token_file or CANARY_SRE_TOKEN)",
            TokenKind::Read => "the read token (read_token, read_token_file or CANARY_READ_TOKEN)",
        }
    }

    fn name(self) -> &'static str {
        match self {
            TokenKind::Filter => "filter",
            TokenKind::Sre => "SRE",
            TokenKind::Read => "read",
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No `authorization` header.
    Missing,
    /// An `authorization` header that is not `Bearer <token>`.
    Malformed,
    /// A bearer token that is none of the configured ones.
    Invalid,
    /// A configured token of a role this family does not accept.
    WrongKind(TokenKind),
}

/// Checks `headers` against what `family` accepts under `config`.
pub fn check(config: &Config, family: Family, headers: &HeaderMap) -> Result<(), Denied> {
    let accepted = accepted(config, family);
    if accepted.iter().all(Option::is_none) {
        return Ok(());
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Err(Denied::Missing) };
    let presented = bearer_token(value.as_bytes()).ok_or(Denied::Malformed)?;
    match presented_kind(config, presented) {
        Some(kind) if accepted.contains(&Some(kind)) => Ok(()),
        Some(kind) => Err(Denied::WrongKind(kind)),
        None => Err(Denied::Invalid),
    }
}

/// The token kinds `family` accepts; all `None` when it is open. An array,
/// not a `Vec`: the sync endpoint calls this once per report.
fn accepted(config: &Config, family: Family) -> [Option<TokenKind>; 2] {
    let configured = |token: &Option<String>, kind| token.as_ref().map(|_| kind);
    match family {
        Family::Filter => [configured(&config.filter_token, TokenKind::Filter), None],
        Family::Sre => [configured(&config.sre_token, TokenKind::Sre), None],
        Family::Read => match config.read_access {
            ReadAccess::Open => [None, None],
            ReadAccess::Token => {
                [configured(&config.sre_token, TokenKind::Sre), configured(&config.read_token, TokenKind::Read)]
            }
        },
    }
}

/// Which configured token `presented` is. Every configured token is
/// compared, each in constant time, so the timing does not say which role
/// came close.
fn presented_kind(config: &Config, presented: &[u8]) -> Option<TokenKind> {
    let mut found = None;
    for (token, kind) in [
        (&config.filter_token, TokenKind::Filter),
        (&config.sre_token, TokenKind::Sre),
        (&config.read_token, TokenKind::Read),
    ] {
        if let Some(token) = token
            && constant_time_eq(presented, token.as_bytes())
        {
            found = Some(kind);
        }
    }
    found
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235); `None`
/// for another scheme or an empty token.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(&value[SCHEME.len()..])
}

/// Equality whose running time depends only on the lengths.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let difference = left.iter().zip(right).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
}

/// What `family` expects, in words, for error messages.
fn expected(config: &Config, family: Family) -> String {
    let described: Vec<&str> = accepted(config, family).into_iter().flatten().map(TokenKind::describe).collect();
    described.join(" or ")
}

/// The API error for a refusal: 401 or 403, naming the expected token.
pub fn denied_error(config: &Config, family: Family, denied: &Denied) -> ApiError {
    let expected = expected(config, family);
    match denied {
        Denied::Missing => ApiError::Unauthorized(format!(
            "missing bearer token: send `authorization: Bearer <token>` with {expected}"
        )),
        Denied::Malformed => ApiError::Unauthorized(format!(
            "the authorization header is not `Bearer <token>`: this endpoint needs {expected}"
        )),
        Denied::Invalid => {
            ApiError::Unauthorized(format!("the bearer token is not valid here: this endpoint needs {expected}"))
        }
        Denied::WrongKind(kind) => ApiError::Forbidden(format!(
            "the {} token is not accepted here: this endpoint needs {expected}",
            kind.name()
        )),
    }
}

/// Route layer of the SRE endpoints: runs before the handler reads a body.
pub async fn require_sre(State(state): State<AppState>, request: Request, next: Next) -> Response {
    require(&state, Family::Sre, request, next).await
}

/// Route layer of the read endpoints.
pub async fn require_read(State(state): State<AppState>, request: Request, next: Next) -> Response {
    require(&state, Family::Read, request, next).await
}

async fn require(state: &AppState, family: Family, request: Request, next: Next) -> Response {
    match check(state.config(), family, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(denied) => {
            tracing::debug!(?family, ?denied, path = request.uri().path(), "refused a request");
            denied_error(state.config(), family, &denied).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config(read_access: ReadAccess, read_token: Option<&str>) -> Config {
        let mut config = Config::with_state_dir("/unused");
        config.filter_token = Some("filter-secret".into());
        config.sre_token = Some("sre-secret".into());
        config.read_token = read_token.map(str::to_owned);
        config.read_access = read_access;
        config
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("header value"));
        }
        headers
    }

    #[test]
    fn each_family_accepts_its_own_token_only() {
        use Denied::*;
        let protected = config(ReadAccess::Token, Some("read-secret"));
        // (family, authorization, expected)
        let cases: &[(Family, Option<&str>, Result<(), Denied>)] = &[
            (Family::Sre, Some("Bearer sre-secret"), Ok(())),
            (Family::Sre, Some("bearer sre-secret"), Ok(())),
            (Family::Sre, Some("BEARER sre-secret"), Ok(())),
            (Family::Sre, None, Err(Missing)),
            (Family::Sre, Some("sre-secret"), Err(Malformed)),
            (Family::Sre, Some("Bearer "), Err(Malformed)),
            (Family::Sre, Some("Basic c3JlLXNlY3JldA=="), Err(Malformed)),
            (Family::Sre, Some("Bearer sre-secre"), Err(Invalid)),
            (Family::Sre, Some("Bearer sre-secret "), Err(Invalid)),
            (Family::Sre, Some("Bearer filter-secret"), Err(WrongKind(TokenKind::Filter))),
            (Family::Sre, Some("Bearer read-secret"), Err(WrongKind(TokenKind::Read))),
            (Family::Filter, Some("Bearer filter-secret"), Ok(())),
            (Family::Filter, Some("Bearer sre-secret"), Err(WrongKind(TokenKind::Sre))),
            (Family::Filter, Some("Bearer read-secret"), Err(WrongKind(TokenKind::Read))),
            (Family::Filter, None, Err(Missing)),
            (Family::Read, Some("Bearer sre-secret"), Ok(())),
            (Family::Read, Some("Bearer read-secret"), Ok(())),
            (Family::Read, Some("Bearer filter-secret"), Err(WrongKind(TokenKind::Filter))),
            (Family::Read, None, Err(Missing)),
            (Family::Read, Some("Bearer nope"), Err(Invalid)),
        ];
        for (family, authorization, expected) in cases {
            assert_eq!(&check(&protected, *family, &headers(*authorization)), expected, "{family:?} {authorization:?}");
        }
    }

    #[test]
    fn unconfigured_families_are_open() {
        let open_reads = config(ReadAccess::Open, None);
        assert_eq!(check(&open_reads, Family::Read, &headers(None)), Ok(()));
        assert_eq!(check(&open_reads, Family::Read, &headers(Some("Bearer anything"))), Ok(()));
        let mut nothing = Config::with_state_dir("/unused");
        nothing.read_access = ReadAccess::Open;
        for family in [Family::Filter, Family::Sre, Family::Read] {
            assert_eq!(check(&nothing, family, &headers(None)), Ok(()), "{family:?}");
        }
        // Only the SRE token configured: the filter channel stays open and
        // the SRE endpoints do not.
        let mut sre_only = Config::with_state_dir("/unused");
        sre_only.sre_token = Some("sre-secret".into());
        assert_eq!(check(&sre_only, Family::Filter, &headers(None)), Ok(()));
        assert_eq!(check(&sre_only, Family::Sre, &headers(None)), Err(Denied::Missing));
    }

    #[test]
    fn errors_name_the_expected_token_and_never_echo_one() {
        let protected = config(ReadAccess::Token, Some("read-secret"));
        for (family, denied, status, words) in [
            (Family::Sre, Denied::Missing, 401, "SRE token (sre_token, sre_token_file or CANARY_SRE_TOKEN)"),
            (Family::Sre, Denied::WrongKind(TokenKind::Filter), 403, "the filter token is not accepted here"),
            (Family::Filter, Denied::Invalid, 401, "filter token (filter_token"),
            (Family::Read, Denied::Malformed, 401, "read token (read_token"),
        ] {
            let error = denied_error(&protected, family, &denied);
            assert_eq!(error.status().as_u16(), status, "{error}");
            let message = error.to_string();
            assert!(message.contains(words), "{message} lacks {words:?}");
            assert_eq!(error.field(), Some("authorization"));
            for secret in ["filter-secret", "sre-secret", "read-secret"] {
                assert!(!message.contains(secret), "{message}");
            }
        }
    }

    #[test]
    fn token_comparison_table() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
