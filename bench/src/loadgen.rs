//! The benchmarks' HTTP/1.1 load generator: open loop at a fixed rate
//! (coordinated-omission-safe latency) and closed loop (maximum throughput).
//!
//! **Open loop.** Request `i` is due at `t0 + i / rate`, whatever happened to
//! earlier requests. A dispatcher hands each due request to an idle
//! keep-alive connection of a pool and never waits for an answer. When no
//! connection is idle it opens a new one (up to a cap) and counts a *late
//! start*; at the cap the request queues until a connection comes back. A
//! request's latency is `answered_at − intended_at`, so a slow answer that
//! delays later sends shows up in *their* latency too, instead of silently
//! thinning the sample (coordinated omission, the flaw of `canary-tests`'
//! `Load`, which paces each connection by its own index). The service time
//! `answered_at − sent_at` and the largest number of requests in flight are
//! recorded next to it.
//!
//! Tokio's timer resolves 1 ms, so the dispatcher wakes on millisecond ticks
//! and releases every request that has become due since the last tick in one
//! batch; each request keeps its own intended time, so the batching costs at
//! most 1 ms of latency and is visible as such (`max_dispatch_lag`), never
//! hidden.
//!
//! Idle connections are reused oldest-idle first (FIFO), so that at a low
//! rate the requests still rotate over every pooled connection and so over
//! every Envoy worker the kernel spread those connections across.
//!
//! **Closed loop.** `connections` keep-alive connections, each sending its
//! next request as soon as the previous answer is read, for a duration: the
//! throughput a proxy sustains.
//!
//! Both are bounded in count and time, run on loopback, and record latencies
//! in the shared histogram layout ([`canary_protocol::LatencyHistogram`]:
//! microseconds, grouping power 7, quantiles at most 0.79% high). Requests
//! intended (open loop) or sent (closed loop) before the end of the warm-up
//! are sent but not recorded in the histograms. [`run_on_own_thread`] runs a
//! generator on a dedicated thread with a `current_thread` runtime, so that
//! it competes with nothing of the caller's runtime and stays on whatever
//! CPUs the process is pinned to.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use canary_protocol::LatencyHistogram;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::mpsc;

/// Fills in per-request headers from the request's index (0-based), for
/// example a sticky key.
pub type HeaderFn = dyn Fn(u64, &mut HeaderMap) + Send + Sync;

/// The response header demo-backend names itself in.
pub const SERVED_BY_HEADER: &str = "x-served-by";
/// `served_by` key of a response without [`SERVED_BY_HEADER`] (an Envoy local
/// reply, for example).
pub const SERVED_BY_NONE: &str = "none";
/// Time limit of one request, and of opening one connection.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap of the open-loop pool.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Where requests go: `GET {path}` with `Host: {host}` on `address`.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: SocketAddr,
    pub path: Uri,
    pub host: HeaderValue,
}

impl Target {
    /// `GET /` with `Host: canary.test`, as the tests send.
    pub fn new(address: SocketAddr) -> Self {
        Self { address, path: Uri::from_static("/"), host: HeaderValue::from_static("canary.test") }
    }
}

/// An open-loop run; see the module docs.
#[derive(Clone)]
pub struct OpenLoop {
    pub target: Target,
    pub rate_per_second: f64,
    /// No more than this many requests are sent.
    pub max_requests: u64,
    /// No request is due later than this after `t0`.
    pub max_duration: Duration,
    /// Requests intended before `t0 + warm_up` are sent but not recorded.
    pub warm_up: Duration,
    /// Connections opened before `t0`.
    pub initial_connections: usize,
    pub max_connections: usize,
    pub headers: Option<Arc<HeaderFn>>,
    /// Keep every request's times and `x-served-by` in
    /// [`OpenLoopReport::records`].
    pub record_each: bool,
}

impl std::fmt::Debug for OpenLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenLoop")
            .field("target", &self.target)
            .field("rate_per_second", &self.rate_per_second)
            .field("max_requests", &self.max_requests)
            .field("max_duration", &self.max_duration)
            .field("warm_up", &self.warm_up)
            .field("initial_connections", &self.initial_connections)
            .field("max_connections", &self.max_connections)
            .field("record_each", &self.record_each)
            .finish_non_exhaustive()
    }
}

impl OpenLoop {
    /// `rate_per_second` for `duration`, 16 preopened connections, at most
    /// [`DEFAULT_MAX_CONNECTIONS`], no warm-up, no per-request headers.
    pub fn new(target: Target, rate_per_second: f64, duration: Duration) -> Self {
        Self {
            target,
            rate_per_second,
            max_requests: u64::MAX,
            max_duration: duration,
            warm_up: Duration::ZERO,
            initial_connections: 16,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            headers: None,
            record_each: false,
        }
    }
}

/// A closed-loop run; see the module docs.
#[derive(Clone)]
pub struct ClosedLoop {
    pub target: Target,
    pub connections: usize,
    pub duration: Duration,
    /// Requests sent before `t0 + warm_up` are not recorded.
    pub warm_up: Duration,
    pub headers: Option<Arc<HeaderFn>>,
}

impl std::fmt::Debug for ClosedLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosedLoop")
            .field("target", &self.target)
            .field("connections", &self.connections)
            .field("duration", &self.duration)
            .field("warm_up", &self.warm_up)
            .finish_non_exhaustive()
    }
}

/// One request of an open-loop run, when [`OpenLoop::record_each`] is set.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub index: u64,
    pub intended_at: Instant,
    pub sent_at: Instant,
    /// `None` when the request failed below HTTP.
    pub answered_at: Option<Instant>,
    pub status: Option<u16>,
    /// The `x-served-by` header; `None` when absent or failed.
    pub served_by: Option<Arc<str>>,
}

/// Outcomes common to both modes.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    /// Requests written to a connection (or attempted: a failed connect
    /// counts as a sent request with a transport error).
    pub sent: u64,
    /// Requests answered with any HTTP status.
    pub answered: u64,
    /// Requests that failed below HTTP (connect, reset, timeout).
    pub transport_errors: u64,
    pub first_error: Option<String>,
    pub status: BTreeMap<u16, u64>,
    /// Answers by `x-served-by` ([`SERVED_BY_NONE`] when absent).
    pub served_by: BTreeMap<String, u64>,
    /// Answered requests inside the measured window.
    pub measured_answered: u64,
    /// `answered_at − intended_at` (open loop; closed loop: equal to the
    /// service time) over the measured window, µs.
    pub latency: LatencyHistogram,
    /// `answered_at − sent_at` over the measured window, µs.
    pub service: LatencyHistogram,
}

impl Outcomes {
    /// Share of answers served by `name` among answers naming a backend.
    pub fn share_of(&self, name: &str) -> Option<f64> {
        let named: u64 =
            self.served_by.iter().filter(|(label, _)| label.as_str() != SERVED_BY_NONE).map(|(_, count)| count).sum();
        (named > 0).then(|| self.served_by.get(name).copied().unwrap_or(0) as f64 / named as f64)
    }

    fn merge(&mut self, other: Outcomes) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.transport_errors += other.transport_errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        for (status, count) in other.status {
            *self.status.entry(status).or_default() += count;
        }
        for (name, count) in other.served_by {
            *self.served_by.entry(name).or_default() += count;
        }
        self.measured_answered += other.measured_answered;
        self.latency.merge(&other.latency);
        self.service.merge(&other.service);
    }
}

/// What an open-loop run did.
#[derive(Debug, Clone)]
pub struct OpenLoopReport {
    /// `t0`: request `i` was intended at `started_at + i / rate`.
    pub started_at: Instant,
    pub rate_per_second: f64,
    /// Requests the schedule held (bounded by count and duration).
    pub scheduled: u64,
    pub outcomes: Outcomes,
    pub dispatch: DispatchStats,
    /// From `t0` to the last answer (or give-up).
    pub elapsed: Duration,
    /// The measured window: from `t0 + warm_up` to the end of the schedule.
    pub measured_window: Duration,
    /// Sorted by index; empty unless [`OpenLoop::record_each`].
    pub records: Vec<RequestRecord>,
}

impl OpenLoopReport {
    /// The latest intended send time of a request answered by `served_by`:
    /// after it, no request that was sent reached that backend.
    pub fn latest_intended_served_by(&self, served_by: &str) -> Option<Instant> {
        self.records
            .iter()
            .filter(|record| record.served_by.as_deref() == Some(served_by))
            .map(|record| record.intended_at)
            .max()
    }
}

/// What a closed-loop run did.
#[derive(Debug, Clone)]
pub struct ClosedLoopReport {
    pub started_at: Instant,
    pub connections: usize,
    pub outcomes: Outcomes,
    pub elapsed: Duration,
    /// From `t0 + warm_up` to the end of the run.
    pub measured_window: Duration,
}

impl ClosedLoopReport {
    /// Answers per second over the measured window.
    pub fn measured_rate_per_second(&self) -> f64 {
        self.outcomes.measured_answered as f64 / self.measured_window.as_secs_f64().max(1e-9)
    }
}

/// Nearest-rank latency quantiles of a histogram, in µs (upper bucket
/// bounds: at most 0.79% high).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(histogram: &LatencyHistogram) -> Option<Self> {
        let [p50_us, p90_us, p99_us, p999_us, max_us] = histogram.quantiles_us([0.5, 0.9, 0.99, 0.999, 1.0])?;
        Some(Self { count: histogram.total_count(), p50_us, p90_us, p99_us, p999_us, max_us })
    }
}

// ---------------------------------------------------------------------------
// The schedule and the pool: pure logic, tested without sockets or clocks.

/// Request `i` is due `i / rate` after `t0`; see the module docs.
#[derive(Debug, Clone)]
pub struct Schedule {
    rate_per_second: f64,
    total: u64,
    next: u64,
}

impl Schedule {
    /// At most `max_requests`, none due at or after `max_duration`.
    pub fn new(rate_per_second: f64, max_requests: u64, max_duration: Duration) -> Self {
        let rate_per_second = if rate_per_second.is_finite() && rate_per_second > 0.0 { rate_per_second } else { 0.0 };
        // Requests due strictly before max_duration: ceil(duration * rate).
        let within_duration = (max_duration.as_secs_f64() * rate_per_second).ceil();
        let total = if within_duration >= u64::MAX as f64 { u64::MAX } else { within_duration as u64 };
        Self { rate_per_second, total: total.min(max_requests), next: 0 }
    }

    /// Requests the schedule holds.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Offset of request `index` from `t0`, rounded to the nanosecond.
    pub fn intended_offset(&self, index: u64) -> Duration {
        if self.rate_per_second <= 0.0 {
            return Duration::MAX;
        }
        Duration::from_nanos((index as f64 * 1e9 / self.rate_per_second).round() as u64)
    }

    /// Releases every request due at `elapsed` (intended offset ≤ elapsed)
    /// that was not released yet.
    pub fn release_due(&mut self, elapsed: Duration) -> Range<u64> {
        let start = self.next;
        if start >= self.total {
            return start..start;
        }
        // A first guess from floating point, then corrected against
        // `intended_offset` so that both always agree exactly.
        let guess = (elapsed.as_secs_f64() * self.rate_per_second).floor();
        let mut end = if guess >= self.total as f64 { self.total } else { (guess as u64 + 1).min(self.total) };
        while end > start && self.intended_offset(end - 1) > elapsed {
            end -= 1;
        }
        while end < self.total && self.intended_offset(end) <= elapsed {
            end += 1;
        }
        let end = end.max(start);
        self.next = end;
        start..end
    }

    /// When the next unreleased request is due, or `None` when all are.
    pub fn next_due_offset(&self) -> Option<Duration> {
        (self.next < self.total).then(|| self.intended_offset(self.next))
    }
}

/// A request handed to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub index: u64,
    /// Offset of the intended send time from `t0`.
    pub intended: Duration,
}

/// What a connection reports when it is done with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Answered; the connection is idle again.
    Idle(usize),
    /// Failed; the connection is gone.
    Closed(usize),
}

/// Where the dispatcher sends a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// An open, idle connection.
    Existing(usize),
    /// A connection to open now, with this id.
    New(usize),
}

/// The dispatcher's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DispatchStats {
    /// Requests that found no idle connection when due.
    pub late_starts: u64,
    /// Of those, requests that also found the pool at its cap and queued.
    pub queued_at_cap: u64,
    /// Connections opened, preopened ones included.
    pub connections_opened: u64,
    /// Most requests assigned to connections and not yet answered.
    pub max_in_flight: u64,
    /// Longest a request waited between its intended time and being handed
    /// to a connection (timer ticks, queueing at the cap), µs.
    pub max_dispatch_lag_us: u64,
}

/// The pool and the queue of requests waiting at its cap: decides where
/// each due request goes. Pure; the async shell carries the decisions out.
#[derive(Debug)]
pub struct Dispatcher {
    idle: VecDeque<usize>,
    open: usize,
    next_id: usize,
    max_connections: usize,
    backlog: VecDeque<Job>,
    assigned: u64,
    completed: u64,
    stats: DispatchStats,
}

impl Dispatcher {
    /// A pool with `preopened` idle connections (ids `0..preopened`).
    pub fn new(preopened: usize, max_connections: usize) -> Self {
        let max_connections = max_connections.max(1);
        let preopened = preopened.min(max_connections);
        Self {
            idle: (0..preopened).collect(),
            open: preopened,
            next_id: preopened,
            max_connections,
            backlog: VecDeque::new(),
            assigned: 0,
            completed: 0,
            stats: DispatchStats { connections_opened: preopened as u64, ..DispatchStats::default() },
        }
    }

    /// Hands a job that is due at `now` (offset from `t0`) to a connection,
    /// or queues it when the pool is at its cap.
    pub fn dispatch(&mut self, job: Job, now: Duration, out: &mut Vec<(Assignment, Job)>) {
        if let Some(id) = self.idle.pop_front() {
            self.assign(Assignment::Existing(id), job, now, out);
            return;
        }
        self.stats.late_starts += 1;
        if self.open < self.max_connections {
            let id = self.next_id;
            self.next_id += 1;
            self.open += 1;
            self.stats.connections_opened += 1;
            self.assign(Assignment::New(id), job, now, out);
        } else {
            self.stats.queued_at_cap += 1;
            self.backlog.push_back(job);
        }
    }

    /// A connection finished its job at `now`: the next queued job goes to
    /// it (or to its replacement, if it failed).
    pub fn on_event(&mut self, event: ConnectionEvent, now: Duration, out: &mut Vec<(Assignment, Job)>) {
        self.completed += 1;
        match event {
            ConnectionEvent::Idle(id) => match self.backlog.pop_front() {
                Some(job) => self.assign(Assignment::Existing(id), job, now, out),
                None => self.idle.push_back(id),
            },
            ConnectionEvent::Closed(_) => {
                self.open = self.open.saturating_sub(1);
                if let Some(job) = self.backlog.pop_front() {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.open += 1;
                    self.stats.connections_opened += 1;
                    self.assign(Assignment::New(id), job, now, out);
                }
            }
        }
    }

    /// Jobs assigned and not yet reported back.
    pub fn in_flight(&self) -> u64 {
        self.assigned - self.completed
    }

    /// Jobs waiting for a connection at the cap.
    pub fn queued(&self) -> usize {
        self.backlog.len()
    }

    pub fn stats(&self) -> DispatchStats {
        self.stats
    }

    fn assign(&mut self, assignment: Assignment, job: Job, now: Duration, out: &mut Vec<(Assignment, Job)>) {
        self.assigned += 1;
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight());
        let lag = now.saturating_sub(job.intended);
        self.stats.max_dispatch_lag_us = self.stats.max_dispatch_lag_us.max(lag.as_micros() as u64);
        out.push((assignment, job));
    }
}

// ---------------------------------------------------------------------------
// The async shell.

type Sender = SendRequest<Empty<Bytes>>;

/// Runs an open-loop schedule; see the module docs. Fails only when the
/// preopened connections cannot be opened (nothing to measure against).
pub async fn open_loop(load: OpenLoop) -> anyhow::Result<OpenLoopReport> {
    let mut senders = Vec::with_capacity(load.initial_connections);
    for _ in 0..load.initial_connections.min(load.max_connections.max(1)) {
        senders.push(connect(load.target.address).await.context("opening the preopened connections")?);
    }
    let shared = Arc::new(Shared {
        target: load.target.clone(),
        headers: load.headers.clone(),
        record_each: load.record_each,
        warm_up: load.warm_up,
    });
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<ConnectionEvent>();
    let mut dispatcher = Dispatcher::new(senders.len(), load.max_connections);
    let mut connections: Vec<Option<mpsc::UnboundedSender<Job>>> = Vec::new();
    let mut tasks = Vec::new();
    let started_at = Instant::now();
    let spawn_connection = |id: usize,
                            sender: Option<Sender>,
                            connections: &mut Vec<Option<mpsc::UnboundedSender<Job>>>,
                            tasks: &mut Vec<tokio::task::JoinHandle<Tally>>| {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        if connections.len() <= id {
            connections.resize_with(id + 1, || None);
        }
        connections[id] = Some(jobs_tx);
        tasks.push(tokio::spawn(open_loop_connection(
            id,
            sender,
            Arc::clone(&shared),
            started_at,
            jobs_rx,
            events_tx.clone(),
        )));
    };
    for (id, sender) in senders.into_iter().enumerate() {
        spawn_connection(id, Some(sender), &mut connections, &mut tasks);
    }

    let mut schedule = Schedule::new(load.rate_per_second, load.max_requests, load.max_duration);
    let scheduled = schedule.total();
    let mut assignments = Vec::new();
    // Bounded: every iteration either releases due requests and sleeps until
    // the next one (at most `scheduled` of them, each at a later time), or
    // handles one connection event, which every request causes at most once
    // (each request is bounded by REQUEST_TIMEOUT).
    loop {
        let now = started_at.elapsed();
        for index in schedule.release_due(now) {
            dispatcher.dispatch(Job { index, intended: schedule.intended_offset(index) }, now, &mut assignments);
        }
        for (assignment, job) in assignments.drain(..) {
            let id = match assignment {
                Assignment::Existing(id) => id,
                Assignment::New(id) => {
                    spawn_connection(id, None, &mut connections, &mut tasks);
                    id
                }
            };
            if let Some(Some(jobs)) = connections.get(id) {
                // The task holds its receiver until it reports Closed, and
                // it is only given a job while open, so this cannot fail.
                let _ = jobs.send(job);
            }
        }
        let next_due = schedule.next_due_offset();
        if next_due.is_none() && dispatcher.queued() == 0 {
            break;
        }
        let sleep_until = next_due.map(|offset| started_at + offset);
        tokio::select! {
            // Only listen for answers while requests queue at the cap;
            // otherwise answers are absorbed at the next tick, in a batch.
            event = events_rx.recv(), if dispatcher.queued() > 0 => match event {
                Some(event) => dispatcher.on_event(event, started_at.elapsed(), &mut assignments),
                // Cannot happen while `events_tx` is alive here.
                None => break,
            },
            () = sleep_until_or_forever(sleep_until) => {}
        }
        // Drain answers that arrived meanwhile, so their connections are
        // idle for this tick's batch.
        while let Ok(event) = events_rx.try_recv() {
            dispatcher.on_event(event, started_at.elapsed(), &mut assignments);
        }
    }
    // The schedule spans `scheduled / rate`: request `scheduled` would have
    // been the first one after it.
    let schedule_end = started_at + schedule.intended_offset(scheduled);
    // Closing every job channel ends each connection task after its current
    // request, which REQUEST_TIMEOUT bounds.
    drop(connections);
    let mut outcomes = Outcomes::default();
    let mut records = Vec::new();
    for task in tasks {
        match task.await {
            Ok(tally) => {
                outcomes.merge(tally.outcomes);
                records.extend(tally.records);
            }
            Err(error) => {
                outcomes.first_error.get_or_insert_with(|| format!("connection task failed: {error}"));
            }
        }
    }
    records.sort_by_key(|record| record.index);
    let measured_start = started_at + load.warm_up;
    Ok(OpenLoopReport {
        started_at,
        rate_per_second: load.rate_per_second,
        scheduled,
        outcomes,
        dispatch: dispatcher.stats(),
        elapsed: started_at.elapsed(),
        measured_window: schedule_end.saturating_duration_since(measured_start),
        records,
    })
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs a closed loop; see the module docs. Fails only when no connection
/// can be opened at all.
pub async fn closed_loop(load: ClosedLoop) -> anyhow::Result<ClosedLoopReport> {
    let mut senders = Vec::with_capacity(load.connections);
    for _ in 0..load.connections.max(1) {
        senders.push(connect(load.target.address).await.context("opening the closed-loop connections")?);
    }
    let shared = Arc::new(Shared {
        target: load.target.clone(),
        headers: load.headers.clone(),
        record_each: false,
        warm_up: load.warm_up,
    });
    let started_at = Instant::now();
    let deadline = started_at + load.duration;
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(id, sender)| {
            tokio::spawn(closed_loop_connection(
                id as u64,
                load.connections as u64,
                sender,
                Arc::clone(&shared),
                started_at,
                deadline,
            ))
        })
        .collect();
    let mut outcomes = Outcomes::default();
    for task in tasks {
        match task.await {
            Ok(tally) => outcomes.merge(tally.outcomes),
            Err(error) => {
                outcomes.first_error.get_or_insert_with(|| format!("connection task failed: {error}"));
            }
        }
    }
    Ok(ClosedLoopReport {
        started_at,
        connections: load.connections,
        outcomes,
        elapsed: started_at.elapsed(),
        measured_window: load.duration.saturating_sub(load.warm_up),
    })
}

/// Runs `make()`'s future on a new thread with its own `current_thread`
/// runtime and returns its output. The thread inherits the process's CPU
/// affinity (see the overhead benchmark's pinning).
pub async fn run_on_own_thread<T, F, Fut>(name: &str, make: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(make()))
                .map_err(|error| anyhow!("building the load generator's runtime: {error}"));
            let _ = result_tx.send(result);
        })
        .context("starting the load generator's thread")?;
    result_rx.await.map_err(|_| anyhow!("the load generator's thread ended without a result"))?
}

/// What every connection task shares.
struct Shared {
    target: Target,
    headers: Option<Arc<HeaderFn>>,
    record_each: bool,
    warm_up: Duration,
}

/// One connection task's outcomes, merged at the end.
#[derive(Default)]
struct Tally {
    outcomes: Outcomes,
    /// `x-served-by` values seen, compared as bytes so that counting an
    /// answer allocates nothing.
    served_by: Vec<(HeaderValue, Arc<str>, u64)>,
    records: Vec<RequestRecord>,
}

impl Tally {
    fn served_by_label(&mut self, value: Option<&HeaderValue>) -> Option<Arc<str>> {
        let value = value?;
        if let Some(entry) = self.served_by.iter_mut().find(|(seen, _, _)| seen == value) {
            entry.2 += 1;
            return Some(Arc::clone(&entry.1));
        }
        let label: Arc<str> = Arc::from(String::from_utf8_lossy(value.as_bytes()).as_ref());
        self.served_by.push((value.clone(), Arc::clone(&label), 1));
        Some(label)
    }

    fn error(&mut self, error: String) {
        self.outcomes.transport_errors += 1;
        self.outcomes.first_error.get_or_insert(error);
    }

    fn finish(mut self) -> Self {
        let mut unnamed = self.outcomes.answered;
        for (_, label, count) in &self.served_by {
            *self.outcomes.served_by.entry(label.to_string()).or_default() += count;
            unnamed = unnamed.saturating_sub(*count);
        }
        if unnamed > 0 {
            *self.outcomes.served_by.entry(SERVED_BY_NONE.to_owned()).or_default() += unnamed;
        }
        self
    }
}

/// The status and `x-served-by` of an answer.
type Answer = (u16, Option<HeaderValue>);

async fn open_loop_connection(
    id: usize,
    mut sender: Option<Sender>,
    shared: Arc<Shared>,
    started_at: Instant,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    events: mpsc::UnboundedSender<ConnectionEvent>,
) -> Tally {
    let mut tally = Tally::default();
    let measured_from = shared.warm_up;
    while let Some(job) = jobs.recv().await {
        let intended_at = started_at + job.intended;
        let sent_at = Instant::now();
        tally.outcomes.sent += 1;
        let result = exchange(&shared, &mut sender, job.index).await;
        let answered_at = Instant::now();
        let (status, served_by, event) = match result {
            Ok((status, served_by)) => {
                tally.outcomes.answered += 1;
                *tally.outcomes.status.entry(status).or_default() += 1;
                let label = tally.served_by_label(served_by.as_ref());
                if job.intended >= measured_from {
                    tally.outcomes.measured_answered += 1;
                    tally.outcomes.latency.record_us(answered_at.duration_since(intended_at).as_micros() as u64);
                    tally.outcomes.service.record_us(answered_at.duration_since(sent_at).as_micros() as u64);
                }
                (Some(status), label, ConnectionEvent::Idle(id))
            }
            Err(error) => {
                tally.error(format!("request {}: {error:#}", job.index));
                (None, None, ConnectionEvent::Closed(id))
            }
        };
        if shared.record_each {
            tally.records.push(RequestRecord {
                index: job.index,
                intended_at,
                sent_at,
                answered_at: status.map(|_| answered_at),
                status,
                served_by,
            });
        }
        // The dispatcher outlives every task's last event; if it does not,
        // the run is over anyway.
        let _ = events.send(event);
        if matches!(event, ConnectionEvent::Closed(_)) {
            break;
        }
    }
    tally.finish()
}

async fn closed_loop_connection(
    id: u64,
    connections: u64,
    sender: Sender,
    shared: Arc<Shared>,
    started_at: Instant,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender = Some(sender);
    let measured_from = started_at + shared.warm_up;
    // Interleaved indices, so per-request headers (sticky keys) differ
    // across connections as they would across clients.
    let mut index = id;
    // Bounded by the deadline: each request takes at most REQUEST_TIMEOUT.
    while Instant::now() < deadline {
        let sent_at = Instant::now();
        tally.outcomes.sent += 1;
        match exchange(&shared, &mut sender, index).await {
            Ok((status, served_by)) => {
                let answered_at = Instant::now();
                tally.outcomes.answered += 1;
                *tally.outcomes.status.entry(status).or_default() += 1;
                tally.served_by_label(served_by.as_ref());
                if sent_at >= measured_from && answered_at <= deadline {
                    let service_us = answered_at.duration_since(sent_at).as_micros() as u64;
                    tally.outcomes.measured_answered += 1;
                    tally.outcomes.latency.record_us(service_us);
                    tally.outcomes.service.record_us(service_us);
                }
            }
            Err(error) => {
                tally.error(format!("request {index}: {error:#}"));
                // `exchange` reconnects on the next request; pause briefly
                // so a dead proxy does not turn this into a busy loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        index += connections;
    }
    tally.finish()
}

/// One request on `sender`, opening the connection first when there is
/// none. A failed request drops the connection.
async fn exchange(shared: &Shared, sender: &mut Option<Sender>, index: u64) -> anyhow::Result<Answer> {
    let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let open = match sender {
            Some(open) => open,
            None => sender.insert(connect(shared.target.address).await?),
        };
        open.ready().await.context("connection closed")?;
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.uri_mut() = shared.target.path.clone();
        request.headers_mut().insert(HOST, shared.target.host.clone());
        if let Some(headers) = &shared.headers {
            headers(index, request.headers_mut());
        }
        let response = open.send_request(request).await?;
        let status = response.status().as_u16();
        let served_by = response.headers().get(SERVED_BY_HEADER).cloned();
        // Read the whole body so the connection can carry the next request.
        response.into_body().collect().await?;
        anyhow::Ok((status, served_by))
    })
    .await;
    let result = result.unwrap_or_else(|_| Err(anyhow!("timed out after {REQUEST_TIMEOUT:?}")));
    if result.is_err() {
        *sender = None;
    }
    result
}

async fn connect(address: SocketAddr) -> anyhow::Result<Sender> {
    let connecting = async {
        let stream = tokio::net::TcpStream::connect(address).await.with_context(|| format!("connect {address}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the peer closes.
            let _ = connection.await;
        });
        anyhow::Ok(sender)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, connecting)
        .await
        .unwrap_or_else(|_| Err(anyhow!("connect {address}: timed out after {REQUEST_TIMEOUT:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn schedule_is_bounded_by_count_and_duration() {
        assert_eq!(Schedule::new(1_000.0, u64::MAX, Duration::from_secs(2)).total(), 2_000);
        assert_eq!(Schedule::new(1_000.0, 500, Duration::from_secs(2)).total(), 500);
        // Due strictly before the duration: 0, 1/3 s, 2/3 s.
        assert_eq!(Schedule::new(3.0, u64::MAX, Duration::from_secs(1)).total(), 3);
        assert_eq!(Schedule::new(0.0, 10, Duration::from_secs(1)).total(), 0);
        assert_eq!(Schedule::new(f64::NAN, 10, Duration::from_secs(1)).total(), 0);
    }

    #[test]
    fn intended_times_follow_the_rate() {
        let schedule = Schedule::new(3.0, u64::MAX, Duration::from_secs(10));
        assert_eq!(schedule.intended_offset(0), Duration::ZERO);
        assert_eq!(schedule.intended_offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(schedule.intended_offset(3), Duration::from_secs(1));
        let schedule = Schedule::new(10_000.0, u64::MAX, Duration::from_secs(1));
        assert_eq!(schedule.intended_offset(12_345), Duration::from_micros(1_234_500));
    }

    #[test]
    fn release_batches_everything_due_at_a_tick() {
        let mut schedule = Schedule::new(2_500.0, u64::MAX, Duration::from_millis(10));
        // 2.5 requests per ms: ticks release 0..1 at 0, then 2 or 3 each.
        assert_eq!(schedule.release_due(Duration::ZERO), 0..1);
        assert_eq!(schedule.release_due(Duration::ZERO), 1..1, "nothing twice");
        assert_eq!(schedule.release_due(MS), 1..3, "0.4 ms and 0.8 ms");
        assert_eq!(schedule.next_due_offset(), Some(Duration::from_micros(1_200)));
        assert_eq!(schedule.release_due(2 * MS), 3..6, "1.2, 1.6 and 2.0 ms");
        // A late tick releases the whole backlog at once.
        assert_eq!(schedule.release_due(5 * MS + Duration::from_micros(100)), 6..13);
        assert_eq!(schedule.release_due(Duration::from_secs(60)), 13..25, "bounded by the duration");
        assert_eq!(schedule.next_due_offset(), None);
        assert_eq!(schedule.release_due(Duration::from_secs(61)), 25..25);
    }

    #[test]
    fn release_agrees_with_intended_offsets_at_awkward_rates() {
        for rate in [1.0, 3.0, 7.0, 999.9, 1_234.5, 33_333.0] {
            let mut schedule = Schedule::new(rate, 5_000, Duration::from_secs(3));
            let mut released = 0;
            let mut elapsed = Duration::ZERO;
            while let Some(next) = schedule.next_due_offset() {
                // Exactly at a due time, and just before the following one.
                for probe in [next, next + Duration::from_nanos(1)] {
                    elapsed = elapsed.max(probe);
                    let batch = schedule.release_due(elapsed);
                    for index in batch.clone() {
                        assert!(schedule.intended_offset(index) <= elapsed, "rate {rate}: {index} released early");
                    }
                    assert_eq!(batch.start, released, "rate {rate}: contiguous");
                    released = batch.end;
                }
            }
            assert_eq!(released, schedule.total(), "rate {rate}");
        }
    }

    fn job(index: u64, intended_ms: u64) -> Job {
        Job { index, intended: Duration::from_millis(intended_ms) }
    }

    #[test]
    fn dispatcher_reuses_idle_connections_oldest_first() {
        let mut dispatcher = Dispatcher::new(3, 8);
        let mut out = Vec::new();
        for index in 0..3 {
            dispatcher.dispatch(job(index, index), Duration::from_millis(index), &mut out);
        }
        let ids: Vec<_> = out.drain(..).map(|(assignment, _)| assignment).collect();
        assert_eq!(ids, [Assignment::Existing(0), Assignment::Existing(1), Assignment::Existing(2)]);
        // Answers come back 1, 0, 2: the next jobs rotate in that order, not
        // always onto the most recently used connection.
        for id in [1, 0, 2] {
            dispatcher.on_event(ConnectionEvent::Idle(id), 3 * MS, &mut out);
        }
        assert!(out.is_empty());
        for index in 3..6 {
            dispatcher.dispatch(job(index, 4), 4 * MS, &mut out);
        }
        let ids: Vec<_> = out.drain(..).map(|(assignment, _)| assignment).collect();
        assert_eq!(ids, [Assignment::Existing(1), Assignment::Existing(0), Assignment::Existing(2)]);
        let stats = dispatcher.stats();
        assert_eq!((stats.late_starts, stats.connections_opened, stats.max_in_flight), (0, 3, 3));
    }

    #[test]
    fn dispatcher_counts_late_starts_and_queues_at_the_cap() {
        let mut dispatcher = Dispatcher::new(1, 2);
        let mut out = Vec::new();
        dispatcher.dispatch(job(0, 0), Duration::ZERO, &mut out);
        // No idle connection: a late start on a new one.
        dispatcher.dispatch(job(1, 1), MS, &mut out);
        // At the cap: late, and queued.
        dispatcher.dispatch(job(2, 2), 2 * MS, &mut out);
        dispatcher.dispatch(job(3, 2), 2 * MS, &mut out);
        assert_eq!(std::mem::take(&mut out), [(Assignment::Existing(0), job(0, 0)), (Assignment::New(1), job(1, 1))]);
        assert_eq!((dispatcher.queued(), dispatcher.in_flight()), (2, 2));
        // Connection 1 answers at 5 ms: job 2 goes to it, 3 ms after its
        // intended time.
        dispatcher.on_event(ConnectionEvent::Idle(1), 5 * MS, &mut out);
        assert_eq!(std::mem::take(&mut out), [(Assignment::Existing(1), job(2, 2))]);
        // Connection 0 fails at 6 ms: job 3 goes to a replacement.
        dispatcher.on_event(ConnectionEvent::Closed(0), 6 * MS, &mut out);
        assert_eq!(std::mem::take(&mut out), [(Assignment::New(2), job(3, 2))]);
        assert_eq!((dispatcher.queued(), dispatcher.in_flight()), (0, 2));
        let stats = dispatcher.stats();
        assert_eq!(stats.late_starts, 3);
        assert_eq!(stats.queued_at_cap, 2);
        assert_eq!(stats.connections_opened, 3);
        assert_eq!(stats.max_in_flight, 2);
        assert_eq!(stats.max_dispatch_lag_us, 4_000);
    }

    /// The pacing loop of [`open_loop`] on tokio's paused clock: every
    /// request is released at or after its intended time, at most one timer
    /// tick (1 ms) late, in batches of what became due since the last tick.
    #[tokio::test(start_paused = true)]
    async fn pacing_releases_in_millisecond_batches() {
        let rate = 10_000.0;
        let mut schedule = Schedule::new(rate, 2_000, Duration::from_secs(1));
        let tokio_start = tokio::time::Instant::now();
        let mut batches = Vec::new();
        let mut released = 0;
        for _ in 0..10_000 {
            let now = tokio_start.elapsed();
            let batch = schedule.release_due(now);
            for index in batch.clone() {
                let intended = schedule.intended_offset(index);
                assert!(intended <= now, "{index} released before it was due");
                assert!(now - intended <= MS, "{index} released {:?} late", now - intended);
            }
            released += batch.end - batch.start;
            if !batch.is_empty() {
                batches.push(batch.end - batch.start);
            }
            let Some(next) = schedule.next_due_offset() else { break };
            tokio::time::sleep_until(tokio_start + next).await;
        }
        assert_eq!(released, 2_000);
        // 10 requests per 1 ms tick: a tick never releases more than its
        // share plus the one due exactly at the tick.
        assert!(batches.iter().all(|&size| size <= 11), "{batches:?}");
        assert!(batches.len() >= 150, "one batch per tick, not one per request or one in all: {}", batches.len());
    }

    /// A tiny hyper server on loopback that names itself like demo-backend.
    async fn serve_loopback() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            // Bounded by the test: the runtime ends with it.
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                        let name = request.headers().get("x-user-id").map_or("anonymous", |_| "named");
                        hyper::Response::builder()
                            .header(SERVED_BY_HEADER, name)
                            .body(http_body_util::Full::new(Bytes::from_static(b"ok")))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn open_and_closed_loop_against_a_loopback_server() {
        let address = serve_loopback().await;
        let mut load = OpenLoop::new(Target::new(address), 2_000.0, Duration::from_millis(150));
        load.warm_up = Duration::from_millis(50);
        load.initial_connections = 2;
        load.record_each = true;
        let half_named: Arc<HeaderFn> = Arc::new(|index, headers: &mut HeaderMap| {
            if index % 2 == 0 {
                headers.insert("x-user-id", HeaderValue::from(index));
            }
        });
        load.headers = Some(half_named);
        let report = open_loop(load).await.expect("open loop");
        let outcomes = &report.outcomes;
        assert_eq!(report.scheduled, 300);
        assert_eq!((outcomes.sent, outcomes.answered, outcomes.transport_errors), (300, 300, 0), "{outcomes:?}");
        assert_eq!(outcomes.status, BTreeMap::from([(200, 300)]));
        assert_eq!(outcomes.served_by, BTreeMap::from([("anonymous".to_owned(), 150), ("named".to_owned(), 150)]));
        assert_eq!(outcomes.share_of("named"), Some(0.5));
        // Requests intended from 50 ms on: 200 of 300.
        assert_eq!(outcomes.measured_answered, 200);
        assert_eq!(outcomes.latency.total_count(), 200);
        assert_eq!(outcomes.service.total_count(), 200);
        assert_eq!(report.records.len(), 300);
        assert!(report.records.iter().enumerate().all(|(index, record)| record.index == index as u64));
        let latest_named = report.latest_intended_served_by("named").expect("named answers");
        assert_eq!(latest_named, report.started_at + Duration::from_micros(149_000));
        let summary = LatencySummary::of(&outcomes.latency).expect("latencies");
        assert!(summary.p50_us <= summary.p99_us && summary.p99_us <= summary.max_us, "{summary:?}");
        assert!(report.dispatch.connections_opened >= 2);

        let closed = closed_loop(ClosedLoop {
            target: Target::new(address),
            connections: 4,
            duration: Duration::from_millis(200),
            warm_up: Duration::from_millis(50),
            headers: None,
        })
        .await
        .expect("closed loop");
        let outcomes = &closed.outcomes;
        assert!(outcomes.answered > 10, "{outcomes:?}");
        assert_eq!(outcomes.transport_errors, 0, "{outcomes:?}");
        assert_eq!(outcomes.served_by.keys().collect::<Vec<_>>(), ["anonymous"]);
        assert!(outcomes.measured_answered > 0 && outcomes.measured_answered < outcomes.answered);
        assert!(closed.measured_rate_per_second() > 0.0);
    }

    #[tokio::test]
    async fn runs_on_its_own_thread() {
        let name = run_on_own_thread("loadgen-test", || async { std::thread::current().name().map(str::to_owned) })
            .await
            .expect("thread result");
        assert_eq!(name.as_deref(), Some("loadgen-test"));
    }
}
