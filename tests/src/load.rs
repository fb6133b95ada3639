//! A bounded, concurrent HTTP/1.1 load generator for loopback tests.
//!
//! Each of `concurrency` tasks owns one keep-alive connection to Envoy, so
//! the kernel spreads the connections (and so the requests) across Envoy's
//! workers. Requests are numbered; a task takes the next number until the
//! count, the time limit or the stop flag ends the run. Every run is bounded
//! in both count and time, so a broken proxy cannot hang a test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Per-request headers, computed from the request's number.
pub type HeadersFn = dyn Fn(u64) -> Vec<(String, String)> + Send + Sync;

/// Time limit of one request through Envoy.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What to send.
#[derive(Clone)]
pub struct Load {
    total_requests: u64,
    concurrency: usize,
    max_duration: Duration,
    rate_per_second: Option<f64>,
    path: String,
    static_headers: Vec<(String, String)>,
    headers_for: Option<Arc<HeadersFn>>,
    record_each: bool,
    stop: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load")
            .field("total_requests", &self.total_requests)
            .field("concurrency", &self.concurrency)
            .field("max_duration", &self.max_duration)
            .field("rate_per_second", &self.rate_per_second)
            .field("path", &self.path)
            .field("static_headers", &self.static_headers)
            .field("record_each", &self.record_each)
            .finish_non_exhaustive()
    }
}

impl Load {
    /// `total_requests` GETs of `/`, 16 connections, at most 60 s.
    pub fn requests(total_requests: u64) -> Self {
        Self {
            total_requests,
            concurrency: 16,
            max_duration: Duration::from_secs(60),
            rate_per_second: None,
            path: "/".to_owned(),
            static_headers: Vec::new(),
            headers_for: None,
            record_each: false,
            stop: None,
        }
    }

    /// Adds a header to every request.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.static_headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds headers computed from each request's number (0-based).
    pub fn headers_for(mut self, headers_for: impl Fn(u64) -> Vec<(String, String)> + Send + Sync + 'static) -> Self {
        self.headers_for = Some(Arc::new(headers_for));
        self
    }

    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    pub fn max_duration(mut self, max_duration: Duration) -> Self {
        self.max_duration = max_duration;
        self
    }

    /// Paces request starts at this rate instead of as fast as possible.
    pub fn rate_per_second(mut self, rate_per_second: f64) -> Self {
        self.rate_per_second = Some(rate_per_second);
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    /// Keeps every request's outcome in [`LoadReport::outcomes`].
    pub fn record_each(mut self) -> Self {
        self.record_each = true;
        self
    }

    /// Ends the run early once `stop` is set.
    pub fn stop_flag(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }
}

/// One request's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub index: u64,
    /// `None` when the request failed below HTTP (reset, timeout).
    pub status: Option<u16>,
    /// The `x-served-by` response header: the backend that served it.
    pub served_by: Option<String>,
    /// When the request was handed to its connection, once the connection
    /// was ready; `None` when no connection could be opened for it.
    pub sent_at: Option<Instant>,
    /// When the rate schedule wanted it sent (`sent_at` minus this is how
    /// late it went out); `None` without a rate.
    pub due_at: Option<Instant>,
    /// From `sent_at` to the end of the response body; `None` without a
    /// response.
    pub latency: Option<Duration>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub sent: u64,
    /// Requests that failed below HTTP.
    pub transport_errors: u64,
    /// Responses by `x-served-by` value; `"none"` when absent (an Envoy
    /// local reply).
    pub served_by: BTreeMap<String, u64>,
    pub status: BTreeMap<u16, u64>,
    pub elapsed: Duration,
    /// Per-request outcomes sorted by index, when recording was asked for.
    pub outcomes: Vec<Outcome>,
    /// The first transport error, to make a failure explainable.
    pub first_error: Option<String>,
}

impl LoadReport {
    /// Responses served by backend `name`.
    pub fn served_by(&self, name: &str) -> u64 {
        self.served_by.get(name).copied().unwrap_or(0)
    }

    /// Responses without the backend's `x-served-by` header: replies Envoy
    /// made itself (no upstream, a failed filter), never a backend's.
    pub fn proxy_replies(&self) -> u64 {
        self.served_by("none")
    }

    /// The `quantile` (0..=1, nearest rank) of the recorded requests'
    /// latencies; needs [`Load::record_each`]. `None` without any response.
    pub fn latency_quantile(&self, quantile: f64) -> Option<Duration> {
        let mut latencies: Vec<Duration> = self.outcomes.iter().filter_map(|outcome| outcome.latency).collect();
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        let rank = (quantile.clamp(0.0, 1.0) * latencies.len() as f64).ceil() as usize;
        latencies.get(rank.saturating_sub(1)).copied()
    }

    pub fn requests_per_second(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, other: LoadReport) {
        self.sent += other.sent;
        self.transport_errors += other.transport_errors;
        for (name, count) in other.served_by {
            *self.served_by.entry(name).or_default() += count;
        }
        for (status, count) in other.status {
            *self.status.entry(status).or_default() += count;
        }
        self.outcomes.extend(other.outcomes);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Runs `load` against `target` and returns what happened.
pub async fn run(target: SocketAddr, load: Load) -> LoadReport {
    let started = Instant::now();
    let deadline = started + load.max_duration;
    let next_index = Arc::new(AtomicU64::new(0));
    let load = Arc::new(load);
    let tasks: Vec<_> = (0..load.concurrency)
        .map(|_| tokio::spawn(worker(target, Arc::clone(&load), Arc::clone(&next_index), started, deadline)))
        .collect();
    let mut report = LoadReport::default();
    for task in tasks {
        match task.await {
            Ok(part) => report.merge(part),
            Err(error) => {
                report.transport_errors += 1;
                report.first_error.get_or_insert_with(|| format!("load task failed: {error}"));
            }
        }
    }
    report.outcomes.sort_by_key(|outcome| outcome.index);
    report.elapsed = started.elapsed();
    report
}

async fn worker(
    target: SocketAddr,
    load: Arc<Load>,
    next_index: Arc<AtomicU64>,
    started: Instant,
    deadline: Instant,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        if Instant::now() >= deadline || load.stop.as_ref().is_some_and(|stop| stop.load(Ordering::Relaxed)) {
            break;
        }
        let index = next_index.fetch_add(1, Ordering::Relaxed);
        if index >= load.total_requests {
            break;
        }
        let mut due_at = None;
        if let Some(rate_per_second) = load.rate_per_second {
            let due = started + Duration::from_secs_f64(index as f64 / rate_per_second);
            if due >= deadline {
                break;
            }
            due_at = Some(due);
            tokio::time::sleep_until(due.into()).await;
        }
        report.sent += 1;
        let mut sent_at = None;
        let result =
            tokio::time::timeout(REQUEST_TIMEOUT, send_one(target, &load, index, &mut sender, &mut sent_at)).await;
        let outcome = match result {
            Ok(Ok((status, served_by))) => {
                *report.status.entry(status).or_default() += 1;
                *report.served_by.entry(served_by.clone().unwrap_or_else(|| "none".to_owned())).or_default() += 1;
                let latency = sent_at.map(|sent_at| sent_at.elapsed());
                Outcome { index, status: Some(status), served_by, sent_at, due_at, latency }
            }
            Ok(Err(error)) => {
                sender = None;
                report.transport_errors += 1;
                report.first_error.get_or_insert_with(|| format!("request {index}: {error:#}"));
                Outcome { index, status: None, served_by: None, sent_at, due_at, latency: None }
            }
            Err(_) => {
                sender = None;
                report.transport_errors += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("request {index}: timed out after {REQUEST_TIMEOUT:?}"));
                Outcome { index, status: None, served_by: None, sent_at, due_at, latency: None }
            }
        };
        if load.record_each {
            report.outcomes.push(outcome);
        }
    }
    report
}

/// Sends request `index` on the task's connection, opening one if needed,
/// and notes in `sent_at` when it was handed to the connection.
async fn send_one(
    target: SocketAddr,
    load: &Load,
    index: u64,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    sent_at: &mut Option<Instant>,
) -> anyhow::Result<(u16, Option<String>)> {
    let open = ready_connection(target, sender).await?;
    let mut request = Request::get(load.path.as_str()).header("host", "canary.test");
    for (name, value) in &load.static_headers {
        request = request.header(name.as_str(), value.as_str());
    }
    if let Some(headers_for) = &load.headers_for {
        for (name, value) in headers_for(index) {
            request = request.header(name, value);
        }
    }
    let request = request.body(Full::new(Bytes::new()))?;
    *sent_at = Some(Instant::now());
    let response = open.send_request(request).await?;
    let status = response.status().as_u16();
    let served_by = response.headers().get("x-served-by").and_then(|value| value.to_str().ok()).map(str::to_owned);
    // Drain the body so the connection can carry the next request.
    response.into_body().collect().await?;
    Ok((status, served_by))
}

/// The keep-alive connection of `sender`, ready for a request: a connection
/// Envoy closed is replaced before the request is written, so no request is
/// lost or sent twice because of it.
pub(crate) async fn ready_connection(
    target: SocketAddr,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
    if sender.as_mut().is_none_or(|open| open.is_closed()) {
        *sender = Some(connect(target).await?);
    }
    if let Some(open) = sender.as_mut()
        && open.ready().await.is_err()
    {
        *sender = Some(connect(target).await?);
    }
    sender.as_mut().ok_or_else(|| anyhow::anyhow!("no connection"))
}

async fn connect(target: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends when the sender is dropped or Envoy closes it.
        let _ = connection.await;
    });
    Ok(sender)
}
