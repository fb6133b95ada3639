//! `GET /v1/workers`: the whole worker table, a page at a time, by proxy id
//! then worker id. `GET /v1/rollout` carries only a bounded summary of the
//! data plane (counts and the first lagging workers), so that polling it
//! costs the same with 40 workers or 40,000; this is where a client reads
//! them all.
//!
//! Query: `limit` (1..=[`MAX_LIMIT`], default [`DEFAULT_LIMIT`]), `after`
//! (a page's `next`: `<proxy_id>/<worker_id>`, percent-encoded like any query
//! value) and `proxy` (only that proxy's workers). The answer is
//! `{workers, next, total}`; `next` is `null` on the last page. A cursor
//! names a position, not a snapshot: a worker added behind it while a
//! client pages is not listed, one ahead of it is, and no worker is listed
//! twice.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use canary_protocol::report::MAX_PROXY_ID_LEN;

use super::ApiError;
use super::rollouts::percent_decode;
use crate::aggregate::{PageRequest, WorkerKey};
use crate::state::AppState;

/// Workers per page when the client does not say.
pub const DEFAULT_LIMIT: usize = 1_000;
/// Most workers per page: about 2 MB of JSON.
pub const MAX_LIMIT: usize = 10_000;

pub(super) async fn list(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let request = parse_query(query.as_deref())?;
    Ok(Json(state.workers_page(&request)).into_response())
}

/// Parses the query, naming the parameter at fault.
fn parse_query(query: Option<&str>) -> Result<PageRequest, ApiError> {
    let mut request = PageRequest { limit: DEFAULT_LIMIT, after: None, proxy: None };
    let mut seen: Vec<&str> = Vec::new();
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if seen.contains(&name) {
            return Err(ApiError::bad_request(format!("{name} is given twice"), Some(name)));
        }
        seen.push(name);
        match name {
            "limit" => {
                request.limit = raw.parse().ok().filter(|limit| (1..=MAX_LIMIT).contains(limit)).ok_or_else(|| {
                    ApiError::bad_request(
                        format!("limit is {raw:?}, must be an integer in 1..={MAX_LIMIT}"),
                        Some("limit"),
                    )
                })?;
            }
            "after" => {
                let cursor = decoded(name, raw)?;
                let key = WorkerKey::from_cursor(&cursor).map_err(|why| {
                    ApiError::bad_request(
                        format!("after is {cursor:?}, not a cursor: {why}; pass back a page's `next`"),
                        Some("after"),
                    )
                })?;
                request.after = Some(key);
            }
            "proxy" => {
                let proxy = decoded(name, raw)?;
                if proxy.is_empty() || proxy.len() > MAX_PROXY_ID_LEN {
                    return Err(ApiError::bad_request(
                        format!("proxy is {} bytes, must be 1..={MAX_PROXY_ID_LEN}", proxy.len()),
                        Some("proxy"),
                    ));
                }
                request.proxy = Some(proxy);
            }
            _ => {
                return Err(ApiError::bad_request(
                    format!("unknown query parameter {name:?}; expected limit, after or proxy"),
                    Some(name),
                ));
            }
        }
    }
    Ok(request)
}

/// A query value, percent-decoded; proxy ids are text.
fn decoded(name: &str, raw: &str) -> Result<String, ApiError> {
    String::from_utf8(percent_decode(raw))
        .map_err(|_| ApiError::bad_request(format!("{name} is not UTF-8 once percent-decoded"), Some(name)))
}
