//! The HTTP surface: the filters' sync endpoint, the SRE JSON API, metrics
//! and health. [`app`] builds the router and [`Api`] puts the sync endpoint
//! in front of it; neither does I/O of its own, so tests drive them
//! in-process; `main` serves [`Api`].
//!
//! Every error answers `{"error": "...", "field": ...}` with a 4xx or 5xx
//! status, and a refused request changes nothing.
//!
//! Routes come in families ([`crate::auth::Family`]), each behind its own
//! token: the state-changing SRE routes and the read routes get a route
//! layer, so a route added to a family cannot forget the check and no body
//! is read before it; the sync endpoint checks inline (see `filter_sync`).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Router, middleware};
use canary_protocol::{
    BatchAck, BatchDecodeError, CanaryWeight, DecodeError, Report, ReportBatch, SyncResponse, WorkerAck,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aggregate::{WorkerKey, format_worker_id};
use crate::auth::{self, Family};
use crate::config::MAX_WAIT_TIMEOUT_MS;
use crate::controller::ControlError;
use crate::metrics::RejectReason;
use crate::rollout::{MAX_GRADUAL_SECONDS, RolloutView, SpecError};
use crate::state::{AppState, WaitOutcome, WeightChange, unix_now_ms};
use crate::store::NotDurable;

#[path = "api_rollouts.rs"]
mod rollouts;
#[path = "api_workers.rs"]
mod workers;

/// Largest report body accepted. A report with every latency bucket of both
/// versions filled is under 100 KiB, so this leaves room without letting a
/// client make the analyzer buffer without bound.
pub const MAX_REPORT_BYTES: usize = 1 << 20;
/// Largest batch body accepted: up to 256 workers' reports of a typical few
/// hundred bytes to a few KiB each, with room for busy histograms.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Largest JSON body accepted by the SRE API.
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024;
/// Longest a sync is held waiting for new weights, whatever the filter asks.
pub const MAX_HOLD_MS: u64 = 30_000;

/// The sync endpoint's path.
pub const SYNC_PATH: &str = "/v1/filter/sync";
/// The batched sync endpoint's path: several workers' reports in one call
/// (`canary_protocol::batch`).
pub const SYNC_BATCH_PATH: &str = "/v1/filter/sync-batch";

/// What the listener serves: [`app`], except that `POST /v1/filter/sync`
/// and `POST /v1/filter/sync-batch` go straight to their handlers.
///
/// The sync endpoints carry every report: a call per Envoy per interval when
/// batched, a call per filter VM otherwise. Through the
/// router each call paid a route match, a boxed route future and an
/// extensions map that axum allocates for path parameters even when a
/// route has none (together about 7% of the analyzer's CPU with 4,096
/// workers, 3% with 64, in `perf` profiles). Everything else, including a
/// sync with another method (a JSON 405), goes through the router. The
/// sync handler checks the filter token itself, so skipping the route
/// layers skips no check.
#[derive(Clone)]
pub struct Api {
    state: AppState,
    router: Router,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(state: AppState) -> Api {
        Api { router: app(state.clone()), state }
    }
}

type ApiFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl tower::Service<Request> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = ApiFuture;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> ApiFuture {
        if request.method() == Method::POST && request.uri().path() == SYNC_PATH {
            let state = self.state.clone();
            Box::pin(async move { Ok(filter_sync(State(state), request).await.into_response()) })
        } else if request.method() == Method::POST && request.uri().path() == SYNC_BATCH_PATH {
            let state = self.state.clone();
            Box::pin(async move { Ok(filter_sync_batch(State(state), request).await.into_response()) })
        } else {
            // A router is always ready, so `poll_ready` has nothing to
            // forward.
            Box::pin(self.router.call(request))
        }
    }
}

/// The analyzer's routes.
pub fn app(state: AppState) -> Router {
    // Every route that changes state belongs here, behind the SRE token.
    let sre = Router::new()
        .route("/v1/rollout/weight", put(put_weight))
        .route("/v1/rollout/rollback", post(post_rollback))
        .route("/v1/rollout/promote", post(rollouts::promote))
        .route("/v1/rollout/pause", post(rollouts::pause))
        .route("/v1/rollout/resume", post(rollouts::resume))
        .route("/v1/rollout/approve", post(rollouts::approve))
        .route("/v1/rollouts", post(rollouts::start))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_sre));
    // Open, or behind the SRE or read token (`read_access`).
    let read = Router::new()
        .route("/v1/rollout", get(get_rollout))
        .route("/v1/workers", get(workers::list))
        .route("/v1/rollouts/history", get(rollouts::history))
        .route("/v1/assignment", get(rollouts::assignment))
        .route("/metrics", get(get_metrics))
        .route("/v1/series", get(crate::series::get_series))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_read));
    Router::new()
        // Served by [`Api`] without the router; kept here so that other
        // methods get the usual 405 and tests of the router see it.
        .route(SYNC_PATH, post(filter_sync))
        .route(SYNC_BATCH_PATH, post(filter_sync_batch))
        // Liveness probes carry no token.
        .route("/healthz", get(|| async { "ok" }))
        // The dashboard's page and assets hold no data: open, like /healthz.
        .merge(crate::dashboard::routes(Router::new()))
        .merge(sre)
        .merge(read)
        // Set last, so it reaches every route: a wrong method is a JSON 405.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

/// Why a request was refused; becomes a JSON error response.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No, a malformed or an unknown bearer token; the message names the
    /// token expected.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token of a role this endpoint does not accept.
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    BadRequest { message: String, field: Option<String> },
    #[error("request body is larger than {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize },
    #[error("{0}")]
    NotDurable(#[from] NotDurable),
    #[error("no route for {method} {path}")]
    NotFound { method: Method, path: String },
    #[error("{path} does not take {method}")]
    MethodNotAllowed { method: Method, path: String },
    /// The rollout's phase does not allow the action; the message says what
    /// to do instead.
    #[error("{0}")]
    Conflict(String),
    /// A readable rollout spec with a wrong field.
    #[error("{message}")]
    Unprocessable { message: String, field: Option<String> },
    /// A rollout decision could not be made durable.
    #[error("{0}")]
    Unavailable(String),
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        match error {
            ControlError::Conflict(message) => ApiError::Conflict(message),
            ControlError::NotDurable(message) => ApiError::Unavailable(message),
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(error: SpecError) -> Self {
        if error.syntax {
            ApiError::BadRequest { message: error.to_string(), field: None }
        } else {
            ApiError::Unprocessable { message: error.to_string(), field: error.field }
        }
    }
}

impl ApiError {
    fn bad_request(message: impl Into<String>, field: Option<&str>) -> ApiError {
        ApiError::BadRequest { message: message.into(), field: field.map(str::to_owned) }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotDurable(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { field, .. } | ApiError::Unprocessable { field, .. } => field.as_deref(),
            ApiError::Unauthorized(_) | ApiError::Forbidden(_) => Some("authorization"),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.to_string(), field: self.field().map(str::to_owned) };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
    field: Option<String>,
}

/// `POST /v1/filter/sync`: token, decode, ingest, hold, durability, answer.
/// The acknowledgement still comes only once the report is durable; the
/// hold comes first so that held reports share a lazy commit (see
/// [`AppState::hold_until_durable`]).
///
/// It takes the whole request rather than a `HeaderMap` extractor, which
/// would copy every header: this is the one handler called once per report.
/// For the same reason it checks the filter token inline rather than through
/// a route layer, which also lets it count the refusal in
/// `canary_reports_rejected_total{reason="unauthorized"}` (401 and 403).
async fn filter_sync(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let bytes = read_sync_body(&state, request, MAX_REPORT_BYTES).await?;
    let report = Report::decode(&bytes).map_err(|error| {
        state.count_rejected(RejectReason::Malformed);
        tracing::debug!(%error, "rejected a report");
        ApiError::bad_request(error.to_string(), Some(&decode_error_field(&error)))
    })?;
    let (outcome, generation) = state.ingest(&report);
    tracing::trace!(
        proxy_id = %report.header.proxy_id,
        worker_id = %format_worker_id(report.header.worker_id),
        seq = report.header.seq,
        duplicate = outcome.duplicate,
        "report ingested"
    );
    let max_hold = Duration::from_millis(u64::from(report.header.max_hold_ms).min(MAX_HOLD_MS));
    let weights = state.hold_until_durable(generation, report.header.weights_version, max_hold).await?;
    let response = SyncResponse { acked_seq: report.header.seq, weights: weights.weights };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], response.to_bytes()).into_response())
}

/// `POST /v1/filter/sync-batch`: [`filter_sync`] for several workers at
/// once, so an Envoy makes one exchange per interval instead of one per
/// worker VM. The batch is decoded whole before anything is ingested, so a
/// bad report refuses the batch and changes nothing. Each report is
/// deduplicated and acknowledged by its own worker and seq. The call holds
/// for the batch's `max_hold_ms` only while every report says it has
/// applied the published weights; if any has not, it answers at once.
async fn filter_sync_batch(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let bytes = read_sync_body(&state, request, MAX_BATCH_BYTES).await?;
    let batch = ReportBatch::decode(&bytes).map_err(|error| {
        state.count_rejected(RejectReason::Malformed);
        tracing::debug!(%error, "rejected a report batch");
        let field = match &error {
            BatchDecodeError::Framing(error) => decode_error_field(error),
            BatchDecodeError::Report { index, error } => format!("reports[{index}].{}", decode_error_field(error)),
        };
        ApiError::bad_request(error.to_string(), Some(&field))
    })?;
    let generation = state.ingest_batch(&batch.reports);
    let applied_version = batch.reports.first().map_or(0, |report| report.header.weights_version);
    let same_applied_version = batch.reports.iter().all(|report| report.header.weights_version == applied_version);
    let max_hold = if same_applied_version {
        Duration::from_millis(u64::from(batch.max_hold_ms).min(MAX_HOLD_MS))
    } else {
        Duration::ZERO
    };
    let weights = state.hold_until_durable(generation, applied_version, max_hold).await?;
    let acks = batch
        .reports
        .iter()
        .map(|report| WorkerAck { worker_id: report.header.worker_id, acked_seq: report.header.seq })
        .collect();
    let response = BatchAck { weights: weights.weights, acks };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], response.to_bytes()).into_response())
}

/// What both sync endpoints check before decoding: the filter token, no
/// query string, and a body within `limit_bytes`. Each refusal is counted.
async fn read_sync_body(state: &AppState, request: Request, limit_bytes: usize) -> Result<Bytes, ApiError> {
    let (parts, body) = request.into_parts();
    if let Err(denied) = auth::check(state.config(), Family::Filter, &parts.headers) {
        state.count_rejected(RejectReason::Unauthorized);
        return Err(auth::denied_error(state.config(), Family::Filter, &denied));
    }
    // The filter never sends a query string; anything else is a client to
    // refuse, not to half-understand.
    no_query(parts.uri.query()).inspect_err(|_| state.count_rejected(RejectReason::Malformed))?;
    read_body(body, limit_bytes).await.inspect_err(|error| {
        if matches!(error, ApiError::TooLarge { .. }) {
            state.count_rejected(RejectReason::TooLarge);
        }
    })
}

/// `GET /v1/rollout`: issue 2's data-plane view plus the rollout.
#[derive(Debug, Serialize)]
struct FullView {
    #[serde(flatten)]
    data_plane: crate::aggregate::RolloutView,
    /// `null` when no rollout was ever started.
    rollout: Option<RolloutView>,
}

async fn get_rollout(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    no_query(query.as_deref())?;
    let rollout = state.controller().view(unix_now_ms());
    Ok(axum::Json(FullView { data_plane: state.rollout_view(), rollout }).into_response())
}

/// `PUT /v1/rollout/weight` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightRequest {
    canary_percent: f64,
    reason: Option<String>,
}

/// `POST /v1/rollout/rollback` body: empty, `{}`, or a reason and a ramp.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    reason: Option<String>,
    gradual_seconds: Option<u32>,
}

async fn put_weight(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received_at = Instant::now();
    let actor = rollouts::actor(&headers)?;
    let wait = WaitQuery::parse(query.as_deref(), state.config().rollback_wait_timeout_ms)?;
    let bytes = read_body(body, MAX_JSON_BODY_BYTES).await?;
    let request: WeightRequest = parse_json_body(&bytes, &["canary_percent", "reason"])?;
    let canary_weight = CanaryWeight::from_percent(request.canary_percent)
        .map_err(|error| ApiError::bad_request(error.to_string(), Some("canary_percent")))?;
    let reason = rollouts::check_reason(request.reason)?;
    let outcome = state.controller().put_weight(&state, &actor, reason.as_deref(), canary_weight).await?;
    Ok(respond_to_outcome(&state, outcome, wait, received_at).await)
}

async fn post_rollback(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received_at = Instant::now();
    let actor = rollouts::actor(&headers)?;
    let wait = WaitQuery::parse(query.as_deref(), state.config().rollback_wait_timeout_ms)?;
    let bytes = read_body(body, MAX_JSON_BODY_BYTES).await?;
    let request: RollbackRequest = parse_json_body(&bytes, &["reason", "gradual_seconds"])?;
    if let Some(seconds) = request.gradual_seconds
        && seconds > MAX_GRADUAL_SECONDS
    {
        return Err(ApiError::bad_request(
            format!("gradual_seconds is {seconds}, must be 0..={MAX_GRADUAL_SECONDS}"),
            Some("gradual_seconds"),
        ));
    }
    let reason = rollouts::check_reason(request.reason)?;
    let outcome = state.controller().rollback(&state, &actor, reason.as_deref(), request.gradual_seconds).await?;
    if let Some(change) = outcome.weight_change.filter(|change| change.changed) {
        let weights = change.weights.weights;
        if weights.canary_weight.bp() == 0 {
            tracing::warn!(weights_version = weights.weights_version, %actor, "rollback: canary weight set to 0");
        } else {
            tracing::warn!(weights_version = weights.weights_version, %actor, canary_weight = %weights.canary_weight, "rollback: ramping down");
        }
    }
    Ok(respond_to_outcome(&state, outcome, wait, received_at).await)
}

async fn get_metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], state.render_metrics()).into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound { method, path: uri.path().to_owned() }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method, path: uri.path().to_owned() }
}

/// Refuses a query string on an endpoint that takes none, naming the first
/// parameter: a typo such as `?wiat=true` must not pass silently.
pub(crate) fn no_query(query: Option<&str>) -> Result<(), ApiError> {
    let Some(pair) = query.unwrap_or_default().split('&').find(|pair| !pair.is_empty()) else { return Ok(()) };
    let (name, _) = pair.split_once('=').unwrap_or((pair, ""));
    Err(ApiError::bad_request(format!("unknown query parameter {name:?}; this endpoint takes none"), Some(name)))
}

/// Response of a weight change or rollback.
#[derive(Debug, Serialize)]
struct WeightChangeBody {
    /// Present only on a 504, so the body also follows the error convention.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<Option<String>>,
    weights_version: u64,
    canary_weight_percent: f64,
    canary_weight_bp: u16,
    changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    wait: Option<WaitBody>,
    /// The rollout after the change, when one holds the weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<RolloutView>,
}

#[derive(Debug, Serialize)]
struct WaitBody {
    confirmed: bool,
    propagation_ms: Option<f64>,
    workers_total: usize,
    workers_confirmed: usize,
    unconfirmed: Vec<WorkerRef>,
}

#[derive(Debug, Serialize)]
struct WorkerRef {
    proxy_id: String,
    worker_id: String,
}

impl From<&WorkerKey> for WorkerRef {
    fn from(key: &WorkerKey) -> Self {
        WorkerRef { proxy_id: key.proxy_id.clone(), worker_id: format_worker_id(key.worker_id) }
    }
}

/// Answers a rollback or weight change that went through the controller.
async fn respond_to_outcome(
    state: &AppState,
    outcome: crate::controller::CommandOutcome,
    wait: WaitQuery,
    received_at: Instant,
) -> Response {
    // A command that moved no weight (none is expected here) reports the
    // weights in force.
    let change = outcome.weight_change.unwrap_or(WeightChange { weights: state.weights(), changed: false });
    respond_to_change(state, change, wait, received_at, outcome.view).await
}

async fn respond_to_change(
    state: &AppState,
    change: WeightChange,
    wait: WaitQuery,
    received_at: Instant,
    rollout: Option<RolloutView>,
) -> Response {
    let weights = change.weights.weights;
    let mut body = WeightChangeBody {
        error: None,
        field: None,
        weights_version: weights.weights_version,
        canary_weight_percent: weights.canary_weight.percent(),
        canary_weight_bp: weights.canary_weight.bp(),
        changed: change.changed,
        wait: None,
        rollout,
    };
    if !wait.wait {
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let timeout = Duration::from_millis(wait.timeout_ms);
    let outcome: WaitOutcome = state.wait_converged(weights.weights_version, received_at, timeout).await;
    let status = if outcome.confirmed {
        StatusCode::OK
    } else {
        body.error = Some(format!(
            "{} of {} live workers did not confirm weights version {} within {} ms; the weights stay applied",
            outcome.unconfirmed.len(),
            outcome.workers_total,
            weights.weights_version,
            wait.timeout_ms
        ));
        body.field = Some(None);
        StatusCode::GATEWAY_TIMEOUT
    };
    body.wait = Some(WaitBody {
        confirmed: outcome.confirmed,
        propagation_ms: outcome.propagation_ms,
        workers_total: outcome.workers_total,
        workers_confirmed: outcome.workers_confirmed,
        unconfirmed: outcome.unconfirmed.iter().map(WorkerRef::from).collect(),
    });
    (status, axum::Json(body)).into_response()
}

/// `?wait=true&timeout_ms=N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WaitQuery {
    wait: bool,
    timeout_ms: u64,
}

impl WaitQuery {
    fn parse(query: Option<&str>, default_timeout_ms: u64) -> Result<WaitQuery, ApiError> {
        let mut parsed = WaitQuery { wait: false, timeout_ms: default_timeout_ms };
        let mut seen: Vec<&str> = Vec::new();
        for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if seen.contains(&key) {
                return Err(ApiError::bad_request(format!("{key} is given twice"), Some(key)));
            }
            seen.push(key);
            match key {
                "wait" => {
                    parsed.wait = match value {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(ApiError::bad_request(
                                format!("wait is {value:?}, must be true or false"),
                                Some("wait"),
                            ));
                        }
                    }
                }
                "timeout_ms" => {
                    parsed.timeout_ms =
                        value.parse().ok().filter(|ms| (1..=MAX_WAIT_TIMEOUT_MS).contains(ms)).ok_or_else(|| {
                            ApiError::bad_request(
                                format!("timeout_ms is {value:?}, must be an integer in 1..={MAX_WAIT_TIMEOUT_MS}"),
                                Some("timeout_ms"),
                            )
                        })?;
                }
                _ => {
                    return Err(ApiError::bad_request(
                        format!("unknown query parameter {key:?}; expected wait or timeout_ms"),
                        Some(key),
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

/// Reads a whole body, refusing more than `limit_bytes`.
async fn read_body(body: Body, limit_bytes: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit_bytes).await.map_err(|error| {
        let over_limit =
            std::error::Error::source(&error).is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if over_limit {
            ApiError::TooLarge { limit_bytes }
        } else {
            ApiError::bad_request(format!("cannot read the request body: {error}"), None)
        }
    })
}

/// Parses a JSON object body into `T`, naming the field at fault. An empty
/// body counts as `{}`. Unknown keys are found here, before serde, so the
/// error can name them; `T` also denies them, as a second line.
fn parse_json_body<T: DeserializeOwned>(bytes: &[u8], fields: &[&str]) -> Result<T, ApiError> {
    let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(bytes)
            .map_err(|error| ApiError::bad_request(format!("body is not valid JSON: {error}"), None))?
    };
    let Value::Object(object) = &value else {
        return Err(ApiError::bad_request("body must be a JSON object", None));
    };
    if let Some(unknown) = object.keys().find(|key| !fields.contains(&key.as_str())) {
        let expected = if fields.is_empty() { "no fields".to_owned() } else { fields.join(", ") };
        return Err(ApiError::bad_request(format!("unknown field {unknown:?}; expected {expected}"), Some(unknown)));
    }
    serde_path_to_error::deserialize(&value).map_err(|error| {
        // Every key is known by now, so serde complains about a missing field
        // (named in its message) or the type of a present one (its path).
        let path = error.path().to_string();
        let message = error.inner().to_string();
        let field = if path == "." {
            message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()).map(str::to_owned)
        } else {
            Some(path)
        };
        ApiError::BadRequest { message: format!("{}: {message}", field.as_deref().unwrap_or("body")), field }
    })
}

/// The report field a decode error is about, as the error message names it.
fn decode_error_field(error: &DecodeError) -> String {
    match error {
        DecodeError::Truncated { field, .. }
        | DecodeError::VarintOverflow { field, .. }
        | DecodeError::Invalid { field, .. } => (*field).to_owned(),
        DecodeError::BadMagic { .. } => "magic".to_owned(),
        DecodeError::UnsupportedFormat { .. } => "format version".to_owned(),
        DecodeError::LayoutMismatch { .. } => "histogram layout".to_owned(),
        DecodeError::ProxyIdNotUtf8 => "proxy id".to_owned(),
        DecodeError::CountMismatch { version, what_sum, .. } => format!("{version}.{what_sum}"),
        DecodeError::TrailingBytes { .. } => "end of message".to_owned(),
    }
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "rollout_api_tests.rs"]
mod rollout_tests;

#[cfg(test)]
#[path = "bad_input_tests.rs"]
mod bad_input_tests;
