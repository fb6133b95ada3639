//! proxy-wasm glue: root context per worker VM, one HTTP context per request.
//!
//! Host calls go through `proxy_wasm::hostcalls`, whose functions return
//! `Result`, rather than the trait helpers, which `unwrap()` and would trap
//! the VM on a host error.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use canary_protocol::{StatusClass, SyncResponse, Version, cookie_value};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::config::{DEFAULT_ROUTE_HEADER, FilterConfig, StickyKey, VersionOverride};
use crate::worker::{SyncFailure, Worker};

/// How often each worker checks whether a sync or a metrics flush is due.
/// Weight changes do not wait for it: they arrive on the open sync call.
const TICK: Duration = Duration::from_millis(200);
const SYNC_PATH: &str = "/v1/filter/sync";
/// With the `test-panic` feature (test builds only), a request carrying this
/// header makes the filter panic, to test Envoy's failure policy.
#[cfg(feature = "test-panic")]
const TEST_PANIC_HEADER: &str = "x-canary-test-panic";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| Box::new(CanaryRoot::new()));
}}

/// State shared by a worker's root context and its request contexts.
struct Configured {
    config: FilterConfig,
    /// `Bearer <token>`, built once rather than per sync.
    authorization: String,
    worker: RefCell<Worker>,
}

/// Envoy-native metric ids, defined once per VM.
struct Metrics {
    requests: [u32; 2],
    weight_bp: u32,
    weights_version: u32,
    sync_failures: u32,
    sync_timeouts: u32,
}

struct CanaryRoot {
    epoch: Instant,
    configured: Option<Rc<Configured>>,
    metrics: Option<Metrics>,
    /// Totals already added to the Envoy counters.
    flushed_requests: [u64; 2],
    flushed_sync_failures: u64,
    flushed_sync_timeouts: u64,
    /// Envoy is tearing the VM down (`on_done`): the last unacknowledged
    /// counts are being sent, and `done()` ends the VM after that.
    shutting_down: bool,
}

impl CanaryRoot {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            configured: None,
            metrics: None,
            flushed_requests: [0; 2],
            flushed_sync_failures: 0,
            flushed_sync_timeouts: 0,
            shutting_down: false,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn start_sync(&mut self) {
        let Some(configured) = self.configured.clone() else { return };
        let now_ms = self.now_ms();
        let config = &configured.config;
        let mut worker = configured.worker.borrow_mut();
        let mut headers = vec![
            (":method", "POST"),
            (":path", SYNC_PATH),
            (":authority", config.analyzer_authority.as_str()),
            ("content-type", "application/octet-stream"),
        ];
        if !config.analyzer_token.is_empty() {
            headers.push(("authorization", configured.authorization.as_str()));
        }
        let timeout = Duration::from_millis(worker.sync_timeout_ms());
        let body = worker.begin_sync(now_ms);
        if hostcalls::dispatch_http_call(&config.analyzer_cluster, headers, Some(body), vec![], timeout).is_err() {
            let outcome = worker.finish_sync(now_ms, Err(SyncFailure::Dispatch));
            if outcome.failed && worker.is_first_failure() {
                log_sync_failure(&worker, &SyncFailure::Dispatch, config);
            }
        }
    }

    fn flush_metrics(&mut self) {
        let (Some(metrics), Some(configured)) = (&self.metrics, &self.configured) else { return };
        let worker = configured.worker.borrow();
        // Counters are bumped here, once per tick, instead of per request:
        // the hot path then makes no metric host calls at all.
        for (index, total) in worker.requests_total().into_iter().enumerate() {
            let delta = total - self.flushed_requests[index];
            if delta > 0 && hostcalls::increment_metric(metrics.requests[index], delta as i64).is_ok() {
                self.flushed_requests[index] = total;
            }
        }
        let failures = worker.sync_failures_total();
        let delta = failures - self.flushed_sync_failures;
        if delta > 0 && hostcalls::increment_metric(metrics.sync_failures, delta as i64).is_ok() {
            self.flushed_sync_failures = failures;
        }
        let timeouts = worker.sync_timeouts_total();
        let delta = timeouts - self.flushed_sync_timeouts;
        if delta > 0 && hostcalls::increment_metric(metrics.sync_timeouts, delta as i64).is_ok() {
            self.flushed_sync_timeouts = timeouts;
        }
    }

    fn record_weight_gauges(&self) {
        let (Some(metrics), Some(configured)) = (&self.metrics, &self.configured) else { return };
        let weights = configured.worker.borrow().weights();
        let _ = hostcalls::record_metric(metrics.weight_bp, u64::from(weights.canary_weight.bp()));
        let _ = hostcalls::record_metric(metrics.weights_version, weights.weights_version);
    }
}

impl Context for CanaryRoot {
    /// Envoy is tearing the VM down (the listener or filter config that
    /// owns it was removed or replaced, or Envoy is shutting down). Counts
    /// the analyzer has not acknowledged would die with the VM, so the VM
    /// asks Envoy to wait (returns false) while it sends them in a final
    /// sync, and calls `done()` when that ends (see `continue_shutdown`).
    fn on_done(&mut self) -> bool {
        let Some(configured) = self.configured.clone() else { return true };
        self.shutting_down = true;
        configured.worker.borrow_mut().stop_holding();
        let (in_flight, unreported, (in_report, accumulating)) = {
            let worker = configured.worker.borrow();
            (worker.sync_in_flight(), worker.has_unreported_counts(), worker.unacknowledged_requests())
        };
        let at_stake = in_report + accumulating > 0;
        // The numbers make a loss at shutdown measurable from Envoy's log.
        log(
            LogLevel::Info,
            &format!(
                "VM shutting down with requests not yet acknowledged by the analyzer: {in_report} in the report \
                 in flight, {accumulating} accumulating{}",
                if at_stake { "; sending them in a final sync" } else { "" }
            ),
        );
        if !at_stake {
            // An open long-poll carrying an empty report loses nothing.
            self.flush_metrics();
            return true;
        }
        if in_flight {
            // Its answer continues the shutdown.
            return false;
        }
        if !unreported {
            self.flush_metrics();
            return true;
        }
        self.start_sync();
        let in_flight = configured.worker.borrow().sync_in_flight();
        if !in_flight {
            self.flush_metrics();
        }
        !in_flight
    }

    fn on_http_call_response(&mut self, _token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(configured) = self.configured.clone() else { return };
        let now_ms = self.now_ms();
        let result = read_sync_response(num_headers, body_size);
        let failure = result.as_ref().err().cloned();
        let outcome = configured.worker.borrow_mut().finish_sync(now_ms, result);
        {
            let worker = configured.worker.borrow();
            if let Some((old, new)) = outcome.weights_changed {
                log(
                    LogLevel::Info,
                    &format!(
                        "applied weights v{} (canary {}), was v{} (canary {})",
                        new.weights_version, new.canary_weight, old.weights_version, old.canary_weight
                    ),
                );
            }
            if outcome.recovered {
                log(LogLevel::Info, "analyzer reachable again; reporting resumed");
            }
            if let Some(failure) = failure.filter(|_| worker.is_first_failure()) {
                log_sync_failure(&worker, &failure, &configured.config);
            }
        }
        if outcome.weights_changed.is_some() {
            self.record_weight_gauges();
        }
        if self.shutting_down {
            self.continue_shutdown(outcome.failed);
            return;
        }
        if outcome.resync_now {
            self.start_sync();
        }
    }
}

impl CanaryRoot {
    /// One step of the final flush: after a successful sync, send whatever
    /// is still unreported; otherwise (nothing left, or the analyzer is
    /// unreachable, so waiting would only delay the shutdown) let Envoy
    /// finish the VM.
    fn continue_shutdown(&mut self, last_failed: bool) {
        let Some(configured) = self.configured.clone() else { return };
        let unreported = configured.worker.borrow().has_unreported_counts();
        if unreported && !last_failed {
            self.start_sync();
            if configured.worker.borrow().sync_in_flight() {
                return;
            }
        }
        self.flush_metrics();
        let _ = hostcalls::done();
    }
}

impl RootContext for CanaryRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten();
        let config = match FilterConfig::parse(bytes.as_deref().unwrap_or_default()) {
            Ok(config) => config,
            Err(error) => {
                log(
                    LogLevel::Error,
                    &format!(
                        "invalid plugin configuration: {error}; \
                         the filter is disabled and routes every request to stable"
                    ),
                );
                // Returning false would be the conventional answer, but
                // Envoy 1.40 then refuses the whole plugin ("Unable to create
                // Wasm plugin") whatever the failure policy, so the listener
                // would carry no traffic at all. Staying loaded and routing
                // everything to stable is the fail-safe outcome; the gauge
                // makes it alertable.
                self.configured = None;
                if let Ok(id) = hostcalls::define_metric(MetricType::Gauge, "canary_split_config_invalid") {
                    let _ = hostcalls::record_metric(id, 1);
                }
                return true;
            }
        };
        // A reconfiguration keeps the worker, so its unreported counts and
        // applied weights survive.
        if let Some(existing) = self.configured.take() {
            let worker = match Rc::try_unwrap(existing) {
                Ok(old) => old.worker.into_inner(),
                Err(shared) => {
                    self.configured = Some(shared);
                    return true;
                }
            };
            self.configured = Some(Rc::new(configured(config, worker)));
            return true;
        }
        let proxy_id = config.proxy_id.clone().unwrap_or_else(node_id);
        let worker_id = getrandom::u64().unwrap_or_else(|_| fallback_entropy());
        let rng_seed = getrandom::u64().unwrap_or_else(|_| fallback_entropy() ^ worker_id.rotate_left(17));
        let worker =
            Worker::new(proxy_id, worker_id, rng_seed, config.report_interval_ms, config.initial_canary_weight);
        self.configured = Some(Rc::new(configured(config, worker)));
        self.metrics = define_metrics();
        self.record_weight_gauges();
        let _ = hostcalls::set_tick_period(TICK);
        // Fetch the weights now rather than at the first tick.
        self.start_sync();
        true
    }

    fn on_tick(&mut self) {
        self.flush_metrics();
        if self.shutting_down {
            // Syncs continue only through `continue_shutdown`.
            return;
        }
        let due = self.configured.as_ref().is_some_and(|c| c.worker.borrow().sync_due(self.now_ms()));
        if due {
            self.start_sync();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CanaryRequest { configured: self.configured.clone(), decision: None, status: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request.
struct CanaryRequest {
    configured: Option<Rc<Configured>>,
    /// The version chosen and when the request was seen.
    decision: Option<(Version, Instant)>,
    /// Upstream or local response status, once response headers pass.
    status: Option<u16>,
}

impl Context for CanaryRequest {}

impl HttpContext for CanaryRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "test-panic")]
        if hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, TEST_PANIC_HEADER).ok().flatten().is_some() {
            panic!("test-panic build: request carried {TEST_PANIC_HEADER}");
        }
        let Some(configured) = &self.configured else {
            // Unconfigured: still overwrite the default header, so a client
            // cannot pick canary while the filter is not working.
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, DEFAULT_ROUTE_HEADER, Some("stable"));
            return Action::Continue;
        };
        // Only with an override configured does a request pay for one more
        // header lookup (no allocation when the header is absent).
        let forced = configured.config.version_override.as_ref().and_then(override_version);
        let version = if let Some(version) = forced {
            version
        } else {
            let mut worker = configured.worker.borrow_mut();
            let key = match &configured.config.sticky {
                Some(sticky) if worker.needs_key() => sticky_key(sticky),
                _ => None,
            };
            match key {
                Some(key) => match key {
                    KeyBytes::Header(bytes) => worker.decide_sticky(&bytes),
                    KeyBytes::Cookie(header, range) => worker.decide_sticky(&header[range]),
                },
                None => worker.decide_random(),
            }
        };
        let _ = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            &configured.config.route_header,
            Some(version.as_str()),
        );
        self.decision = Some((version, Instant::now()));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.decision.is_some() {
            self.status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok());
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(configured), Some((version, started))) = (&self.configured, self.decision) else { return };
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let class = match self.status {
            None => StatusClass::NoResponse,
            // Only error statuses need the (costly) property read that tells
            // an upstream 5xx from a reply Envoy made itself.
            Some(status) if status >= 500 && !is_upstream_response() => StatusClass::NoResponse,
            Some(status) => StatusClass::from_status(status),
        };
        configured.worker.borrow_mut().record(version, class, latency_us);
    }
}

/// The version a request's override header asks for, if the header is
/// present with a configured value and the client's address is allowed.
/// The `source.address` property is read only after the value matched.
fn override_version(rule: &VersionOverride) -> Option<Version> {
    let value = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, &rule.header).ok().flatten()?;
    let version = rule.version_for(&value)?;
    if !rule.restricts_source() {
        return Some(version);
    }
    let address = hostcalls::get_property(vec!["source", "address"]).ok().flatten()?;
    rule.allows_source(&address).then_some(version)
}

/// A sticky key as read from the request, kept in the buffer the host gave.
enum KeyBytes {
    Header(Vec<u8>),
    Cookie(Vec<u8>, std::ops::Range<usize>),
}

fn sticky_key(sticky: &StickyKey) -> Option<KeyBytes> {
    match sticky {
        StickyKey::Header(name) => {
            let value = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()?;
            (!value.is_empty()).then_some(KeyBytes::Header(value))
        }
        StickyKey::Cookie(name) => {
            let header = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "cookie").ok().flatten()?;
            let text = std::str::from_utf8(&header).ok()?;
            let value = cookie_value(text, name).filter(|value| !value.is_empty())?;
            let start = value.as_ptr() as usize - text.as_ptr() as usize;
            let range = start..start + value.len();
            Some(KeyBytes::Cookie(header, range))
        }
    }
}

fn configured(config: FilterConfig, worker: Worker) -> Configured {
    let authorization = format!("Bearer {}", config.analyzer_token);
    Configured { config, authorization, worker: RefCell::new(worker) }
}

fn read_sync_response(num_headers: usize, body_size: usize) -> Result<SyncResponse, SyncFailure> {
    if num_headers == 0 {
        return Err(SyncFailure::NoResponse);
    }
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse::<u16>().ok())
        .ok_or(SyncFailure::NoResponse)?;
    if status != 200 {
        return Err(SyncFailure::Status(status));
    }
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
    SyncResponse::decode(&body).map_err(|error| SyncFailure::BadBody(error.to_string()))
}

fn is_upstream_response() -> bool {
    match hostcalls::get_property(vec!["response", "code_details"]) {
        Ok(Some(details)) => details == b"via_upstream",
        // Without the property, trust the status: count it as a 5xx.
        _ => true,
    }
}

/// Envoy's node id. Envoy 1.40 exposes it as `xds.node.id`; the older
/// `node.id` path answers nothing there but is kept for other hosts.
fn node_id() -> String {
    [vec!["xds", "node", "id"], vec!["node", "id"]]
        .into_iter()
        .find_map(|path| {
            hostcalls::get_property(path)
                .ok()
                .flatten()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .filter(|id| !id.is_empty() && id.len() <= canary_protocol::report::MAX_PROXY_ID_LEN)
        })
        .unwrap_or_else(|| "envoy".to_owned())
}

/// Entropy when the host offers no random source: the clock's nanoseconds.
/// Only the worker id and the split's seed use it; neither is a secret.
fn fallback_entropy() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0x5eed, |since| since.as_nanos() as u64)
}

fn define_metrics() -> Option<Metrics> {
    let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
    let gauge = |name: &str| hostcalls::define_metric(MetricType::Gauge, name).ok();
    Some(Metrics {
        requests: [counter("canary_split_requests_stable")?, counter("canary_split_requests_canary")?],
        weight_bp: gauge("canary_split_weight_bp")?,
        weights_version: gauge("canary_split_weights_version")?,
        sync_failures: counter("canary_split_sync_failures")?,
        sync_timeouts: counter("canary_split_sync_timeouts")?,
    })
}

fn log_sync_failure(worker: &Worker, failure: &SyncFailure, config: &FilterConfig) {
    let weights = worker.weights();
    log(
        LogLevel::Warn,
        &format!(
            "sync with analyzer cluster {:?} failed: {failure}; keeping weights v{} (canary {}) \
             and the unreported counts until it answers",
            config.analyzer_cluster, weights.weights_version, weights.canary_weight
        ),
    );
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}
