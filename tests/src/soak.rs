//! The soak (`cargo xtask soak [--minutes N]`, binary `canary-soak`): a real
//! stack under steady open-loop load through Envoy for minutes, with one
//! operation injected every period, cycling through an analyzer `kill -9`
//! and restart, a weight change, a rollback, a new rollout, and a pause and
//! resume. At the end it checks the product's promises and reports:
//!
//! - **no request lost**: every request got an HTTP answer, and every non-2xx
//!   answer came from a backend's configured error share, none from Envoy
//!   itself (see [`classify`]);
//! - **no count lost**: the analyzer's per-version totals equal what each
//!   backend served (requests and errors), Envoy's own filter counters agree,
//!   and the total equals the requests sent, once the filters' last reports
//!   are in;
//! - **bounded memory**: Envoy's and the analyzer's `VmRSS` grow less than 5%
//!   after warm-up (see [`rss_growth`]; per incarnation for the analyzer,
//!   whose restarts reset its memory);
//! - **operations**: each injected operation did what it should (a restart
//!   keeps the weights and the rollout phase; weight changes and rollbacks
//!   are confirmed by every filter VM).
//!
//! The pure parts (schedule, classification, growth, checks, Markdown) are
//! unit-tested below without sockets; [`run`] is the shell around them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use canary_protocol::Version;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use serde::Serialize;
use serde_json::{Value, json};

use crate::analyzer::StopMode;
use crate::backend::BackendOpts;
use crate::envoy::prometheus_value;
use crate::paths::Binaries;
use crate::rollout::phase_of;
use crate::stack::Stack;

/// The period between operations in a run of 5 minutes or more.
pub const FULL_PERIOD: Duration = Duration::from_secs(30);
/// A run is cut into at least this many periods, so that a short run (CI's
/// one minute) still goes through the whole cycle of five operations.
pub const MIN_PERIODS: u32 = 6;
/// The memory promise: `VmRSS` grows less than this after warm-up.
pub const MAX_RSS_GROWTH_PERCENT: f64 = 5.0;
/// Warm-up of each process, from its start (the run's start for Envoy,
/// each restart for the analyzer). The analyzer keeps one latency histogram
/// per second and version for its sliding window (60 s by default), so its
/// memory rises by a few MiB during the first minute after every start (a
/// one-minute run measured +3.6 MiB in 50 s) and is flat once the window is
/// full. Envoy gets the same minute for its connections and wasm VMs.
pub const WARMUP: Duration = Duration::from_secs(60);

/// The analyzer's warm-up when one run is judged on its own: [`WARMUP`], or
/// one full cycle of the scheduled operations if that is longer. A fresh
/// analyzer's first rollout allocates its working set (the engine's state,
/// the decisions, the persisted documents: +1.5–3 MiB measured), and no
/// later rollout needs more; before every operation has run once, growth is
/// that working set arriving, not a leak. A run that includes restarts has
/// no run that long: see [`across_runs`].
pub fn analyzer_warmup_s(schedule: &Schedule) -> f64 {
    let kinds = Operation::CYCLE.iter().filter(|operation| !schedule.skipped.contains(operation)).count();
    WARMUP.as_secs_f64().max(kinds as f64 * schedule.period_seconds)
}
/// Each growth window is this share of the post-warm-up samples ...
pub const WINDOW_SHARE: f64 = 0.2;
/// ... and at least this many samples, so one outlier cannot move a median.
pub const MIN_WINDOW_SAMPLES: usize = 3;
/// Time limit of one request through Envoy; longer counts as a client
/// timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A request that left more than this after its scheduled time is "late":
/// the load was not open-loop at that moment.
pub const LATE_AFTER: Duration = Duration::from_millis(100);
/// How long the counts may take to converge after the load stops. The
/// filters report every second; a report that raced a restart is re-sent.
pub const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Problems (non-2xx, client errors) kept with their details for the report.
const MAX_PROBLEMS_KEPT: usize = 50;
/// Canary weights the weight-change operation walks through, in percent.
const WEIGHTS_PERCENT: [f64; 4] = [25.0, 50.0, 10.0, 75.0];
/// How long a pause is held before the resume.
const MAX_PAUSE_HOLD: Duration = Duration::from_secs(2);
/// Who the soak's API calls name as actor.
const ACTOR: &str = "soak";

// ---------------------------------------------------------------------------
// Options and schedule (pure)
// ---------------------------------------------------------------------------

/// What a soak run does.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How long the load runs (operations happen inside it).
    pub duration: Duration,
    pub requests_per_second: f64,
    /// Client connections carrying the load; also the bound on requests in
    /// flight.
    pub connections: usize,
    /// Envoy worker threads.
    pub concurrency: usize,
    /// Share of requests both backends answer with an injected 500.
    pub backend_error_rate: f64,
    /// Operations left out of the cycle, to tell their effects apart (for
    /// example memory over a whole run without analyzer restarts).
    pub skip: Vec<Operation>,
    pub binaries: Binaries,
}

/// Parses `--minutes`: a positive, finite number of minutes up to a day
/// (fractions allowed: `0.5` is 30 s).
pub fn parse_minutes(text: &str) -> Result<f64, String> {
    let minutes: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("--minutes must be a number of minutes such as 10 or 0.5, got {text:?}"))?;
    if !minutes.is_finite() || minutes <= 0.0 || minutes > 24.0 * 60.0 {
        return Err(format!("--minutes must be more than 0 and at most 1440, got {text:?}"));
    }
    // Below 6 s a period would be under a second: nothing meaningful runs.
    if minutes * 60.0 < 6.0 {
        return Err(format!("--minutes must be at least 0.1 (6 s), got {text:?}"));
    }
    Ok(minutes)
}

/// The operations, in the order the soak cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    AnalyzerRestart,
    WeightChange,
    Rollback,
    NewRollout,
    PauseResume,
}

impl Operation {
    pub const CYCLE: [Operation; 5] = [
        Operation::AnalyzerRestart,
        Operation::WeightChange,
        Operation::Rollback,
        Operation::NewRollout,
        Operation::PauseResume,
    ];

    /// Parses an operation's name as the command line spells it.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name.trim() {
            "analyzer-restart" | "restart" => Ok(Operation::AnalyzerRestart),
            "weight-change" | "weight" => Ok(Operation::WeightChange),
            "rollback" => Ok(Operation::Rollback),
            "new-rollout" | "rollout" => Ok(Operation::NewRollout),
            "pause-resume" | "pause" => Ok(Operation::PauseResume),
            other => Err(format!(
                "unknown operation {other:?}; operations: analyzer-restart, weight-change, rollback, new-rollout, \
                 pause-resume"
            )),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Operation::AnalyzerRestart => "analyzer kill -9 + restart",
            Operation::WeightChange => "weight change",
            Operation::Rollback => "rollback",
            Operation::NewRollout => "new rollout",
            Operation::PauseResume => "pause + resume",
        }
    }
}

/// When operations happen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    pub period_seconds: f64,
    /// True when the period is shorter than [`FULL_PERIOD`] because the run
    /// is short.
    pub scaled: bool,
    /// Seconds after the load started, with the operation at that time.
    pub operations: Vec<(f64, Operation)>,
    /// Operations left out of the cycle (`--skip`).
    pub skipped: Vec<Operation>,
}

/// Operations every [`FULL_PERIOD`], or every `duration / MIN_PERIODS` when
/// that is shorter, so a one-minute run still does all five (every 10 s).
/// The first comes one period in (after the load settles), the last at least
/// half a period before the end (so its effect is inside the run). The
/// `skip`ped operations are left out of the cycle.
pub fn schedule(duration: Duration, skip: &[Operation]) -> Schedule {
    let scaled_period = duration / MIN_PERIODS;
    let (period, scaled) = if scaled_period < FULL_PERIOD { (scaled_period, true) } else { (FULL_PERIOD, false) };
    let period_s = period.as_secs_f64();
    let last_s = duration.as_secs_f64() - period_s / 2.0;
    let operations = (1..)
        .map(|k| k as f64 * period_s)
        .take_while(|at_s| *at_s <= last_s + 1e-9)
        .zip(Operation::CYCLE.iter().copied().filter(|operation| !skip.contains(operation)).cycle())
        .collect();
    let mut skipped = skip.to_vec();
    skipped.sort_unstable();
    skipped.dedup();
    Schedule { period_seconds: period_s, scaled, operations, skipped }
}

/// How often `VmRSS` is sampled: 120 samples a run, between 1 s and 5 s
/// apart.
pub fn sample_interval(duration: Duration) -> Duration {
    (duration / 120).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// The rollout the "new rollout" operation starts: 10%, a pause, 50%, a
/// pause, then 100% (promoted). Each pause is 3/4 of a period, so the
/// rollout is still running when the pause-and-resume comes one period
/// later, and promoted (1.5 periods plus a tick) before the weight change
/// three periods later, which a running automatic rollout would refuse.
///
/// Only the error test runs: the latency test reacts to the short slowdown
/// of a version while Envoy opens connections to it after a weight increase
/// (see the e2e rollout tests' `spec_without_latency_test`), and the soak
/// tests the system's promises, not the analysis.
pub fn rollout_spec(name: &str, period: Duration) -> Value {
    let pause = format!("{}ms", (period.as_millis() * 3 / 4).max(1_000));
    json!({
        "name": name,
        "canaryVersion": "v-soak",
        "stableVersion": "v-stable",
        "analysis": { "minCanaryRequests": 50, "latencyTest": false },
        "steps": [
            { "setWeight": 10 },
            { "pause": { "duration": pause } },
            { "setWeight": 50 },
            { "pause": { "duration": pause } },
        ],
    })
}

// ---------------------------------------------------------------------------
// Response classification (pure)
// ---------------------------------------------------------------------------

/// What the client saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Response {
        status: u16,
        /// `x-served-by`: set by `demo-backend` on every answer, errors
        /// included.
        served_by: Option<String>,
        /// `x-envoy-upstream-service-time`: Envoy adds it to answers that
        /// came from an upstream, never to its own local replies.
        upstream_service_time: bool,
    },
    /// Connect, reset or protocol error below HTTP.
    TransportError,
    /// No complete answer within [`REQUEST_TIMEOUT`].
    Timeout,
}

/// Why a request ended as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseClass {
    /// 2xx from a backend.
    Ok,
    /// 500 from a backend (`x-served-by` present): its configured error
    /// share (`demo-backend --error-rate`).
    BackendInjected,
    /// Any other non-2xx from an upstream: not expected from `demo-backend`.
    BackendOther,
    /// An Envoy local reply (no `x-served-by`, no upstream service time):
    /// 503 no healthy upstream, upstream reset, a filter that failed, ...
    ProxyMade,
    /// The connection failed below HTTP.
    ClientError,
    /// No answer in time.
    ClientTimeout,
}

/// Classifies what the client saw. The backend marks every answer it makes
/// with `x-served-by`, so its absence on a non-2xx means Envoy answered by
/// itself; `x-envoy-upstream-service-time` without `x-served-by` would be an
/// upstream that is not a demo backend, counted as "other".
pub fn classify(seen: &Seen) -> ResponseClass {
    match seen {
        Seen::TransportError => ResponseClass::ClientError,
        Seen::Timeout => ResponseClass::ClientTimeout,
        Seen::Response { status, served_by, upstream_service_time } => {
            let from_backend = served_by.is_some();
            if (200..300).contains(status) && from_backend {
                ResponseClass::Ok
            } else if from_backend && *status == 500 {
                ResponseClass::BackendInjected
            } else if from_backend || *upstream_service_time {
                ResponseClass::BackendOther
            } else {
                ResponseClass::ProxyMade
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Memory growth (pure)
// ---------------------------------------------------------------------------

/// How much a series grew after warm-up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Growth {
    pub warmup_seconds: f64,
    pub post_warmup_samples: usize,
    pub window_samples: usize,
    pub first_window_median_bytes: u64,
    pub last_window_median_bytes: u64,
    /// `last / first - 1`, in percent; negative when memory shrank.
    pub growth_percent: f64,
}

/// Growth of `samples` (seconds since the run started, bytes), for a
/// process started at `started_s`: the samples at least `warmup_s` after
/// its start are the post-warm-up samples; the median of their last
/// [`WINDOW_SHARE`] (at least [`MIN_WINDOW_SAMPLES`]) is compared with the
/// median of their first as many. Medians, so a single spike (an allocator
/// returning memory late, a burst of connections) does not decide. `None`
/// when there are fewer than two windows' worth of samples.
pub fn rss_growth(samples: &[(f64, u64)], started_s: f64, warmup_s: f64) -> Option<Growth> {
    let post: Vec<u64> =
        samples.iter().filter(|(at_s, _)| *at_s >= started_s + warmup_s).map(|(_, bytes)| *bytes).collect();
    let window = ((post.len() as f64 * WINDOW_SHARE).floor() as usize).max(MIN_WINDOW_SAMPLES);
    if post.len() < 2 * window {
        return None;
    }
    let first = median(&post[..window]);
    let last = median(&post[post.len() - window..]);
    if first == 0 {
        return None;
    }
    Some(Growth {
        warmup_seconds: warmup_s,
        post_warmup_samples: post.len(),
        window_samples: window,
        first_window_median_bytes: first,
        last_window_median_bytes: last,
        growth_percent: (last as f64 / first as f64 - 1.0) * 100.0,
    })
}

/// The median (the lower middle value for an even count).
/// Growth across analyzer runs, for soaks that restart it: every complete
/// run (one that ended in a restart, and started after every kind of
/// operation had run once, so that it loaded the same kind of state) goes
/// through the same operations at the same offsets from its start, so a
/// leak that outlives a restart (in the state directory, say) shows as a
/// later run sitting higher than the first. Each run's samples after
/// [`WARMUP`] give a median; the last complete run's is compared with the
/// first's. `None` with fewer than two
/// complete runs of at least [`MIN_WINDOW_SAMPLES`] samples each.
pub fn across_runs(complete_runs: &[Vec<u64>]) -> Option<Growth> {
    let runs: Vec<&Vec<u64>> = complete_runs.iter().filter(|run| run.len() >= MIN_WINDOW_SAMPLES).collect();
    let (first, last) = (runs.first()?, runs.last()?);
    if runs.len() < 2 {
        return None;
    }
    let (first_median, last_median) = (median(first), median(last));
    if first_median == 0 {
        return None;
    }
    Some(Growth {
        warmup_seconds: WARMUP.as_secs_f64(),
        post_warmup_samples: runs.iter().map(|run| run.len()).sum(),
        window_samples: first.len().min(last.len()),
        first_window_median_bytes: first_median,
        last_window_median_bytes: last_median,
        growth_percent: (last_median as f64 / first_median as f64 - 1.0) * 100.0,
    })
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

/// Parses `VmRSS:  12345 kB` out of `/proc/PID/status`, in bytes.
pub fn parse_vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let kib: u64 = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(kib * 1024)
}

fn read_rss_bytes(pid: u32) -> Option<u64> {
    parse_vm_rss_bytes(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

// ---------------------------------------------------------------------------
// The report (pure once filled in)
// ---------------------------------------------------------------------------

/// Requests and what became of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Traffic {
    pub sent: u64,
    /// Requests that got an HTTP answer, whatever its status.
    pub answered: u64,
    pub ok: u64,
    pub backend_injected: u64,
    pub backend_other: u64,
    pub proxy_made: u64,
    pub client_errors: u64,
    pub client_timeouts: u64,
    pub status: BTreeMap<u16, u64>,
    /// Answers by `x-served-by` (`none` for Envoy's own).
    pub served_by: BTreeMap<String, u64>,
    /// The latest a request left after its scheduled time.
    pub max_schedule_lag_ms: f64,
    /// Requests that left more than [`LATE_AFTER`] late.
    pub late_requests: u64,
    /// The first problems, with when and what.
    pub problems: Vec<Problem>,
}

impl Traffic {
    fn count(&mut self, class: ResponseClass) {
        let counter = match class {
            ResponseClass::Ok => &mut self.ok,
            ResponseClass::BackendInjected => &mut self.backend_injected,
            ResponseClass::BackendOther => &mut self.backend_other,
            ResponseClass::ProxyMade => &mut self.proxy_made,
            ResponseClass::ClientError => &mut self.client_errors,
            ResponseClass::ClientTimeout => &mut self.client_timeouts,
        };
        *counter += 1;
    }

    fn merge(&mut self, other: Traffic) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.ok += other.ok;
        self.backend_injected += other.backend_injected;
        self.backend_other += other.backend_other;
        self.proxy_made += other.proxy_made;
        self.client_errors += other.client_errors;
        self.client_timeouts += other.client_timeouts;
        for (status, count) in other.status {
            *self.status.entry(status).or_default() += count;
        }
        for (name, count) in other.served_by {
            *self.served_by.entry(name).or_default() += count;
        }
        self.max_schedule_lag_ms = self.max_schedule_lag_ms.max(other.max_schedule_lag_ms);
        self.late_requests += other.late_requests;
        self.problems.extend(other.problems);
        self.problems.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        self.problems.truncate(MAX_PROBLEMS_KEPT);
    }

    /// Requests that did not end with a 2xx or a backend's injected 500.
    pub fn lost(&self) -> u64 {
        self.backend_other + self.proxy_made + self.client_errors + self.client_timeouts
    }
}

/// One request that did not end well.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub at_s: f64,
    pub class: ResponseClass,
    pub status: Option<u16>,
    pub detail: String,
}

/// One version's counts as each party saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VersionCounts {
    /// Answers the client got with `x-served-by: <version>`.
    pub client_answers: u64,
    pub backend_served: u64,
    pub backend_errors: u64,
    pub analyzer_requests: Option<u64>,
    pub analyzer_errors: Option<u64>,
    /// Envoy's `canary_split_requests_<version>` counter.
    pub envoy_filter_requests: Option<u64>,
}

impl VersionCounts {
    fn all_agree(&self) -> bool {
        self.analyzer_requests == Some(self.backend_served)
            && self.analyzer_errors == Some(self.backend_errors)
            && self.envoy_filter_requests == Some(self.backend_served)
            && self.client_answers == self.backend_served
    }
}

/// The counts after the load stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub stable: VersionCounts,
    pub canary: VersionCounts,
    /// How long after the load stopped the analyzer's totals matched the
    /// backends'; `None` when they never did within
    /// [`CONVERGENCE_TIMEOUT`].
    pub converged_after_ms: Option<u64>,
}

/// One injected operation and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationRecord {
    pub number: usize,
    pub at_s: f64,
    pub operation: Operation,
    pub ok: bool,
    pub took_ms: f64,
    pub detail: String,
}

/// One `VmRSS` reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RssSample {
    pub at_s: f64,
    pub envoy_bytes: Option<u64>,
    pub analyzer_bytes: Option<u64>,
    /// Which analyzer run (1 = the first; each restart adds one).
    pub analyzer_incarnation: u32,
}

/// One analyzer run's memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incarnation {
    pub number: u32,
    pub started_s: f64,
    pub ended_s: f64,
    pub pid: Option<u32>,
    /// `None` when the run was too short to judge.
    pub growth: Option<Growth>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Memory {
    pub warmup_seconds: f64,
    /// Warm-up of an analyzer run judged on its own ([`analyzer_warmup_s`]).
    pub analyzer_warmup_seconds: f64,
    pub sample_interval_seconds: f64,
    pub envoy: Option<Growth>,
    pub analyzer: Vec<Incarnation>,
    /// The last complete analyzer run against the first ([`across_runs`]).
    pub analyzer_across_runs: Option<Growth>,
    pub samples: Vec<RssSample>,
}

/// Whether the run kept a promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Missed,
    /// The run was too short to measure it (memory after warm-up in a
    /// one-minute run); it does not fail the run, and the report says so.
    NotJudged,
}

impl Verdict {
    fn met_if(condition: bool) -> Self {
        if condition { Verdict::Met } else { Verdict::Missed }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotJudged => "not judged",
        }
    }
}

/// A promise and whether the run kept it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// Everything a soak run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SoakReport {
    pub started_utc: String,
    pub load_seconds: f64,
    pub requests_per_second: f64,
    pub connections: usize,
    pub envoy_workers: usize,
    pub backend_error_rate: f64,
    pub schedule: Schedule,
    pub traffic: Traffic,
    pub counts: Counts,
    pub operations: Vec<OperationRecord>,
    pub memory: Memory,
    /// The analyzer's view at the end (weights and rollout phase).
    pub final_state: String,
    pub checks: Vec<Check>,
}

impl SoakReport {
    /// Fills in [`SoakReport::checks`] from the measurements.
    pub fn evaluate(&mut self) {
        self.checks = checks(self);
    }

    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|check| check.verdict != Verdict::Missed)
    }

    /// The report as Markdown (also what the terminal shows).
    pub fn to_markdown(&self) -> String {
        markdown(self)
    }
}

/// The verdicts, one per promise.
pub fn checks(report: &SoakReport) -> Vec<Check> {
    let traffic = &report.traffic;
    let mut checks = Vec::new();
    checks.push(Check {
        name: "no request lost".to_owned(),
        verdict: Verdict::met_if(traffic.sent > 0 && traffic.lost() == 0),
        detail: format!(
            "{} sent, {} answered; non-2xx: {} backend-injected, {} proxy-made, {} other; {} client errors, {} \
             timeouts",
            traffic.sent,
            traffic.answered,
            traffic.backend_injected,
            traffic.proxy_made,
            traffic.backend_other,
            traffic.client_errors,
            traffic.client_timeouts
        ),
    });

    let counts = &report.counts;
    let analyzer_total = counts.stable.analyzer_requests.unwrap_or(0) + counts.canary.analyzer_requests.unwrap_or(0);
    let backend_errors = counts.stable.backend_errors + counts.canary.backend_errors;
    let counts_met = counts.stable.all_agree()
        && counts.canary.all_agree()
        && analyzer_total == traffic.sent
        && traffic.backend_injected == backend_errors;
    checks.push(Check {
        name: "no count lost".to_owned(),
        verdict: Verdict::met_if(counts_met),
        detail: format!(
            "analyzer stable {} + canary {} = {analyzer_total} of {} sent; backends served {} + {}; analyzer errors \
             {} + {} vs backend errors {} + {}; Envoy filter counters {} + {}; {}",
            show(counts.stable.analyzer_requests),
            show(counts.canary.analyzer_requests),
            traffic.sent,
            counts.stable.backend_served,
            counts.canary.backend_served,
            show(counts.stable.analyzer_errors),
            show(counts.canary.analyzer_errors),
            counts.stable.backend_errors,
            counts.canary.backend_errors,
            show(counts.stable.envoy_filter_requests),
            show(counts.canary.envoy_filter_requests),
            match counts.converged_after_ms {
                Some(ms) => format!("matched {ms} ms after the load stopped"),
                None => format!("did not match within {} s after the load stopped", CONVERGENCE_TIMEOUT.as_secs()),
            }
        ),
    });

    let memory = &report.memory;
    checks.push(match &memory.envoy {
        Some(growth) => Check {
            name: "Envoy memory".to_owned(),
            verdict: Verdict::met_if(growth.growth_percent < MAX_RSS_GROWTH_PERCENT),
            detail: format!(
                "VmRSS {} after warm-up ({} → {}), limit +{MAX_RSS_GROWTH_PERCENT}%",
                percent_text(growth.growth_percent),
                mib_text(growth.first_window_median_bytes),
                mib_text(growth.last_window_median_bytes)
            ),
        },
        None => Check {
            name: "Envoy memory".to_owned(),
            verdict: Verdict::NotJudged,
            detail: too_short(report.memory.warmup_seconds),
        },
    });

    // Runs long enough to judge on their own, and the runs against each
    // other when restarts cut them short.
    let mut judged: Vec<(String, &Growth)> = memory
        .analyzer
        .iter()
        .filter_map(|run| run.growth.as_ref().map(|growth| (format!("run #{}", run.number), growth)))
        .collect();
    if let Some(growth) = &memory.analyzer_across_runs {
        judged.push(("across runs (last complete vs first)".to_owned(), growth));
    }
    let worst = judged.iter().max_by(|a, b| a.1.growth_percent.total_cmp(&b.1.growth_percent));
    checks.push(match worst {
        Some((what, growth)) => Check {
            name: "analyzer memory".to_owned(),
            verdict: Verdict::met_if(judged.iter().all(|(_, growth)| growth.growth_percent < MAX_RSS_GROWTH_PERCENT)),
            detail: format!(
                "largest VmRSS growth {} ({what}; {} runs, judged: {}), limit +{MAX_RSS_GROWTH_PERCENT}%",
                percent_text(growth.growth_percent),
                memory.analyzer.len(),
                judged
                    .iter()
                    .map(|(what, growth)| format!("{what} {}", percent_text(growth.growth_percent)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        None => Check {
            name: "analyzer memory".to_owned(),
            verdict: Verdict::NotJudged,
            detail: format!(
                "no analyzer run was long enough ({:.0} s of warm-up, then at least {} samples) and fewer than two \
                 runs ended in a restart",
                memory.analyzer_warmup_seconds,
                2 * MIN_WINDOW_SAMPLES
            ),
        },
    });

    let failed: Vec<String> = report
        .operations
        .iter()
        .filter(|op| !op.ok)
        .map(|op| format!("#{} {} at {:.0} s", op.number, op.operation.describe(), op.at_s))
        .collect();
    let done = |kind: Operation| report.operations.iter().filter(|op| op.operation == kind && op.ok).count();
    // A run must restart the analyzer and change the weight at least once,
    // unless it was asked not to.
    let has_basics = [Operation::AnalyzerRestart, Operation::WeightChange]
        .iter()
        .all(|kind| report.schedule.skipped.contains(kind) || done(*kind) > 0);
    checks.push(Check {
        name: "operations".to_owned(),
        verdict: Verdict::met_if(failed.is_empty() && has_basics),
        detail: format!(
            "{} of {} succeeded ({} restarts, {} weight changes, {} rollbacks, {} rollouts, {} pause+resume){}{}",
            report.operations.len() - failed.len(),
            report.operations.len(),
            done(Operation::AnalyzerRestart),
            done(Operation::WeightChange),
            done(Operation::Rollback),
            done(Operation::NewRollout),
            done(Operation::PauseResume),
            if failed.is_empty() { String::new() } else { format!("; failed: {}", failed.join(", ")) },
            skipped_text(&report.schedule.skipped)
        ),
    });
    checks
}

fn skipped_text(skipped: &[Operation]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = skipped.iter().map(|operation| operation.describe()).collect();
    format!("; skipped on request: {}", names.join(", "))
}

fn too_short(warmup_s: f64) -> String {
    format!(
        "too short to judge: growth needs {warmup_s:.0} s of warm-up, then at least {} samples (runs of about 2 \
         minutes or more)",
        2 * MIN_WINDOW_SAMPLES
    )
}

fn show(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |value| value.to_string())
}

fn percent_text(percent: f64) -> String {
    format!("{percent:+.2}%")
}

fn mib_text(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn markdown(report: &SoakReport) -> String {
    let mut out = String::new();
    let traffic = &report.traffic;
    let _ = writeln!(
        out,
        "# Soak: {:.1} min at {:.0} req/s through Envoy\n",
        report.load_seconds / 60.0,
        report.requests_per_second
    );
    let _ = writeln!(
        out,
        "Started {}. Load: open-loop {:.0} req/s on {} keep-alive connections (at most {} in flight), {:.1} s; Envoy \
         {} workers with the filter; both backends inject {}% errors (500 with `x-served-by`). One operation every \
         {:.1} s{}{}.\n",
        report.started_utc,
        report.requests_per_second,
        report.connections,
        report.connections,
        report.load_seconds,
        report.envoy_workers,
        report.backend_error_rate * 100.0,
        report.schedule.period_seconds,
        if report.schedule.scaled {
            format!(
                " (scaled down from {} s because the run is shorter than {} periods of {} s, so that it still \
                 goes through the whole cycle)",
                FULL_PERIOD.as_secs(),
                MIN_PERIODS,
                FULL_PERIOD.as_secs()
            )
        } else {
            String::new()
        },
        skipped_text(&report.schedule.skipped)
    );

    let _ = writeln!(out, "## Verdicts\n");
    for check in &report.checks {
        let _ = writeln!(out, "- **{}** {}: {}", check.verdict.as_str(), check.name, check.detail);
    }
    let _ = writeln!(out, "\nOverall: {}\n", if report.passed() { "PASS" } else { "FAIL" });

    let _ = writeln!(out, "## Requests\n");
    let _ = writeln!(out, "| what | requests |\n|---|---:|");
    for (what, count) in [
        ("sent", traffic.sent),
        ("answered over HTTP", traffic.answered),
        ("2xx", traffic.ok),
        ("non-2xx, backend-injected (500 with `x-served-by`)", traffic.backend_injected),
        ("non-2xx, proxy-made (Envoy local reply: no `x-served-by`, no upstream time)", traffic.proxy_made),
        ("non-2xx, other", traffic.backend_other),
        ("client errors (connect/reset)", traffic.client_errors),
        ("client timeouts", traffic.client_timeouts),
    ] {
        let _ = writeln!(out, "| {what} | {count} |");
    }
    let _ = writeln!(
        out,
        "\nStatus codes: {}. Schedule lag: max {:.1} ms; {} requests left more than {} ms late.\n",
        traffic.status.iter().map(|(status, count)| format!("{status}: {count}")).collect::<Vec<_>>().join(", "),
        traffic.max_schedule_lag_ms,
        traffic.late_requests,
        LATE_AFTER.as_millis()
    );
    if !traffic.problems.is_empty() {
        let _ = writeln!(out, "First problems:\n");
        for problem in traffic.problems.iter().take(10) {
            let _ = writeln!(
                out,
                "- {:.1} s: {:?} {} {}",
                problem.at_s,
                problem.class,
                problem.status.map_or_else(|| "-".to_owned(), |status| status.to_string()),
                problem.detail
            );
        }
        let _ = writeln!(out);
    }

    let counts = &report.counts;
    let _ = writeln!(out, "## Counts (after the load stopped)\n");
    let _ = writeln!(
        out,
        "| version | client answers | backend served | backend errors | analyzer requests | analyzer errors | Envoy \
         filter counter |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (name, version) in [("stable", &counts.stable), ("canary", &counts.canary)] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            version.client_answers,
            version.backend_served,
            version.backend_errors,
            show(version.analyzer_requests),
            show(version.analyzer_errors),
            show(version.envoy_filter_requests)
        );
    }
    let sum = |f: fn(&VersionCounts) -> Option<u64>| f(&counts.stable).zip(f(&counts.canary)).map(|(a, b)| a + b);
    let _ = writeln!(
        out,
        "| total | {} | {} | {} | {} | {} | {} |\n\nRequests sent: {}. {}\n",
        counts.stable.client_answers + counts.canary.client_answers,
        counts.stable.backend_served + counts.canary.backend_served,
        counts.stable.backend_errors + counts.canary.backend_errors,
        show(sum(|v| v.analyzer_requests)),
        show(sum(|v| v.analyzer_errors)),
        show(sum(|v| v.envoy_filter_requests)),
        traffic.sent,
        match counts.converged_after_ms {
            Some(ms) => format!("The analyzer's totals matched the backends' {ms} ms after the load stopped."),
            None => "The analyzer's totals never matched the backends'.".to_owned(),
        }
    );

    let _ = writeln!(out, "## Operations\n");
    let _ = writeln!(out, "| # | at | operation | result | took | detail |\n|---:|---:|---|---|---:|---|");
    for op in &report.operations {
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {} | {} | {:.0} ms | {} |",
            op.number,
            op.at_s,
            op.operation.describe(),
            if op.ok { "ok" } else { "FAILED" },
            op.took_ms,
            op.detail.replace('|', "\\|")
        );
    }
    let _ = writeln!(out, "\nFinal state: {}\n", report.final_state);

    let memory = &report.memory;
    let _ = writeln!(out, "## Memory (VmRSS)\n");
    let _ = writeln!(
        out,
        "Sampled every {:.0} s from `/proc/PID/status`. Growth: the median of the last {:.0}% of the post-warm-up \
         samples against the median of the first {:.0}% (at least {MIN_WINDOW_SAMPLES} samples each). Warm-up: \
         Envoy's first {:.0} s; for an analyzer run (each restart starts from nothing) {:.0} s, one full cycle of \
         operations, since its first rollout allocates a working set no later one adds to. Runs cut short by a \
         restart are compared with each other instead: the median after {:.0} s of the last complete run against \
         the first's, at the same offsets in the same cycle of operations, counting only runs that started after \
         that first cycle (an earlier one starts from a state directory without a rollout).\n",
        memory.sample_interval_seconds,
        WINDOW_SHARE * 100.0,
        WINDOW_SHARE * 100.0,
        memory.warmup_seconds,
        memory.analyzer_warmup_seconds,
        memory.warmup_seconds
    );
    let _ = writeln!(
        out,
        "| process | span | samples after warm-up | first window | last window | growth |\n|---|---|---:|---:|---:|---:|"
    );
    let growth_row = |growth: &Option<Growth>| match growth {
        Some(growth) => format!(
            "{} | {} | {} | {}",
            growth.post_warmup_samples,
            mib_text(growth.first_window_median_bytes),
            mib_text(growth.last_window_median_bytes),
            percent_text(growth.growth_percent)
        ),
        None => "too short | | | not judged".to_owned(),
    };
    let _ = writeln!(out, "| Envoy | 0–{:.0} s | {} |", report.load_seconds, growth_row(&memory.envoy));
    for run in &memory.analyzer {
        let _ = writeln!(
            out,
            "| analyzer run {} (pid {}) | {:.0}–{:.0} s | {} |",
            run.number,
            show(run.pid.map(u64::from)),
            run.started_s,
            run.ended_s,
            growth_row(&run.growth)
        );
    }
    if memory.analyzer_across_runs.is_some() {
        let _ = writeln!(
            out,
            "| analyzer, last complete run vs first | after {:.0} s of each | {} |",
            memory.warmup_seconds,
            growth_row(&memory.analyzer_across_runs)
        );
    }
    // A readable timeline: about 20 rows; the JSON has every sample.
    let stride = (memory.samples.len() / 20).max(1);
    let _ = writeln!(out, "\n| at | Envoy | analyzer (run) |\n|---:|---:|---:|");
    let mut last_run = 0;
    for (index, sample) in memory.samples.iter().enumerate() {
        let restarted = sample.analyzer_incarnation != last_run;
        last_run = sample.analyzer_incarnation;
        if index % stride != 0 && !restarted && index + 1 != memory.samples.len() {
            continue;
        }
        let _ = writeln!(
            out,
            "| {:.0} s | {} | {} (#{}){} |",
            sample.at_s,
            sample.envoy_bytes.map_or_else(|| "?".to_owned(), mib_text),
            sample.analyzer_bytes.map_or_else(|| "?".to_owned(), mib_text),
            sample.analyzer_incarnation,
            if restarted && index > 0 { " restarted" } else { "" }
        );
    }
    out
}

// ---------------------------------------------------------------------------
// The run (sockets and processes)
// ---------------------------------------------------------------------------

/// What the sampler reads: the current analyzer pid changes on restart.
#[derive(Debug)]
struct SamplerTarget {
    envoy_pid: Option<u32>,
    analyzer_pid: Option<u32>,
    incarnation: u32,
}

/// Starts a stack, runs the soak and returns the report (checks filled in).
/// Progress lines go to stderr.
pub async fn run(options: &SoakOptions) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(
        options.requests_per_second.is_finite() && options.requests_per_second > 0.0,
        "requests per second must be positive, got {}",
        options.requests_per_second
    );
    let schedule = schedule(options.duration, &options.skip);
    let sample_every = sample_interval(options.duration);
    let backend = BackendOpts::default().error_rate(options.backend_error_rate).latency_ms(1).latency_jitter_ms(2);
    let mut stack = Stack::builder()
        .binaries(options.binaries.clone())
        .concurrency(options.concurrency)
        // The contract's default report interval: what production runs.
        .filter_config(json!({ "report_interval_ms": 1000, "proxy_id": "envoy-soak" }))
        .stable(backend.clone())
        .canary(backend)
        .without_permit()
        .start()
        .await
        .context("starting the soak stack")?;
    let started_utc = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    eprintln!(
        "soak: {:.1} s of load at {} req/s, an operation every {:.1} s ({} operations){}",
        options.duration.as_secs_f64(),
        options.requests_per_second,
        schedule.period_seconds,
        schedule.operations.len(),
        if schedule.scaled { " (period scaled down for a short run)" } else { "" }
    );

    let target = Arc::new(Mutex::new(SamplerTarget {
        envoy_pid: stack.envoy_pid(),
        analyzer_pid: stack.analyzer_pid(),
        incarnation: 1,
    }));
    let mut incarnations =
        vec![Incarnation { number: 1, started_s: 0.0, ended_s: 0.0, pid: stack.analyzer_pid(), growth: None }];

    let load_started = Instant::now();
    let load_deadline = load_started + options.duration;
    let next_index = Arc::new(AtomicU64::new(0));
    let load_tasks: Vec<_> = (0..options.connections.max(1))
        .map(|_| {
            tokio::spawn(load_worker(
                stack.listener(),
                options.requests_per_second,
                load_started,
                load_deadline,
                Arc::clone(&next_index),
            ))
        })
        .collect();
    let sampler = tokio::spawn(sample_rss(Arc::clone(&target), load_started, load_deadline, sample_every));

    let mut operations = Vec::new();
    let mut rollouts_started = 0usize;
    for (number, (at_s, operation)) in schedule.operations.iter().enumerate() {
        tokio::time::sleep_until((load_started + Duration::from_secs_f64(*at_s)).into()).await;
        let began = Instant::now();
        let at_s = load_started.elapsed().as_secs_f64();
        let cycle = number / Operation::CYCLE.len();
        let result = match operation {
            Operation::AnalyzerRestart => restart(&mut stack, &target, &mut incarnations, load_started).await,
            Operation::WeightChange => change_weight(&stack, WEIGHTS_PERCENT[cycle % WEIGHTS_PERCENT.len()]).await,
            Operation::Rollback => roll_back(&stack).await,
            Operation::NewRollout => {
                rollouts_started += 1;
                let name = format!("soak-{rollouts_started}");
                start_rollout(&stack, &name, Duration::from_secs_f64(schedule.period_seconds)).await
            }
            Operation::PauseResume => {
                pause_and_resume(&stack, MAX_PAUSE_HOLD.min(Duration::from_secs_f64(schedule.period_seconds / 5.0)))
                    .await
            }
        };
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(error) => (false, format!("{error:#}")),
        };
        let record = OperationRecord {
            number: number + 1,
            at_s,
            operation: *operation,
            ok,
            took_ms: began.elapsed().as_secs_f64() * 1e3,
            detail,
        };
        eprintln!(
            "soak: {:>6.1} s #{} {}: {} ({:.0} ms) {}",
            record.at_s,
            record.number,
            operation.describe(),
            if ok { "ok" } else { "FAILED" },
            record.took_ms,
            record.detail
        );
        operations.push(record);
    }

    let mut traffic = Traffic::default();
    for task in load_tasks {
        match task.await {
            Ok(part) => traffic.merge(part),
            Err(error) => {
                traffic.client_errors += 1;
                traffic.problems.push(Problem {
                    at_s: load_started.elapsed().as_secs_f64(),
                    class: ResponseClass::ClientError,
                    status: None,
                    detail: format!("load task failed: {error}"),
                });
            }
        }
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    let samples = sampler.await.unwrap_or_default();
    eprintln!(
        "soak: load done: {} sent, {} answered, {} lost; waiting for the counts to converge",
        traffic.sent,
        traffic.answered,
        traffic.lost()
    );
    let counts = converge_counts(&stack, &traffic).await;

    if let Some(last) = incarnations.last_mut() {
        last.ended_s = load_seconds;
    }
    let warmup_s = WARMUP.as_secs_f64();
    let analyzer_warmup_s = analyzer_warmup_s(&schedule);
    let envoy_series: Vec<(f64, u64)> =
        samples.iter().filter_map(|sample| sample.envoy_bytes.map(|bytes| (sample.at_s, bytes))).collect();
    let mut complete_runs = Vec::new();
    let last_run = incarnations.len();
    for run in &mut incarnations {
        let series: Vec<(f64, u64)> = samples
            .iter()
            .filter(|sample| sample.analyzer_incarnation == run.number)
            .filter_map(|sample| sample.analyzer_bytes.map(|bytes| (sample.at_s, bytes)))
            .collect();
        run.growth = rss_growth(&series, run.started_s, analyzer_warmup_s);
        // Every run but the last ended in a restart. A run that started
        // before every kind of operation had run once began from a state
        // directory without a rollout or a history, and loads less than the
        // later ones: it is not comparable.
        if (run.number as usize) < last_run && run.started_s >= analyzer_warmup_s {
            complete_runs.push(
                series.iter().filter(|(at_s, _)| *at_s >= run.started_s + warmup_s).map(|(_, bytes)| *bytes).collect(),
            );
        }
    }
    let final_state = match stack.rollout().await {
        Ok(view) => format!(
            "canary weight {}% (weights version {}), rollout {}, {} live filter VMs, converged {}",
            view["canary_weight_percent"],
            view["weights_version"],
            phase_of(&view).unwrap_or("none"),
            view["data_plane"]["live_workers"],
            view["data_plane"]["converged"]
        ),
        Err(error) => format!("GET /v1/rollout failed: {error:#}"),
    };
    let mut report = SoakReport {
        started_utc,
        load_seconds,
        requests_per_second: options.requests_per_second,
        connections: options.connections.max(1),
        envoy_workers: options.concurrency,
        backend_error_rate: options.backend_error_rate,
        schedule,
        traffic,
        counts,
        operations,
        memory: Memory {
            warmup_seconds: warmup_s,
            sample_interval_seconds: sample_every.as_secs_f64(),
            envoy: rss_growth(&envoy_series, 0.0, warmup_s),
            analyzer: incarnations,
            analyzer_across_runs: across_runs(&complete_runs),
            analyzer_warmup_seconds: analyzer_warmup_s,
            samples,
        },
        final_state,
        checks: Vec::new(),
    };
    report.evaluate();
    Ok(report)
}

/// Writes `report.json` and `report.md` into `dir` (created if needed).
pub fn write_report(report: &SoakReport, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report).context("serialise the soak report")?;
    std::fs::write(dir.join("report.json"), json + "\n")
        .with_context(|| format!("write {}/report.json", dir.display()))?;
    std::fs::write(dir.join("report.md"), report.to_markdown())
        .with_context(|| format!("write {}/report.md", dir.display()))?;
    Ok(())
}

/// A directory name for a run started at `time`: `20261126T104200Z`.
pub fn timestamp_dir_name(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string().replace(['-', ':'], "")
}

async fn restart(
    stack: &mut Stack,
    target: &Mutex<SamplerTarget>,
    incarnations: &mut Vec<Incarnation>,
    load_started: Instant,
) -> anyhow::Result<String> {
    let before = stack.rollout().await.context("GET /v1/rollout before the kill")?;
    let old_pid = stack.analyzer_pid();
    if let Ok(mut target) = target.lock() {
        target.analyzer_pid = None;
    }
    let killed_at = Instant::now();
    let restarted = stack.restart_analyzer(StopMode::Kill).await;
    let down_ms = killed_at.elapsed().as_secs_f64() * 1e3;
    let new_pid = stack.analyzer_pid();
    let now_s = load_started.elapsed().as_secs_f64();
    if let Some(last) = incarnations.last_mut() {
        last.ended_s = now_s;
    }
    let number = incarnations.len() as u32 + 1;
    incarnations.push(Incarnation { number, started_s: now_s, ended_s: now_s, pid: new_pid, growth: None });
    if let Ok(mut target) = target.lock() {
        target.analyzer_pid = new_pid;
        target.incarnation = number;
    }
    restarted.context("restart the analyzer on the same port and state directory")?;
    let resync_started = Instant::now();
    stack
        .wait_for_data_plane(stack.concurrency() + 1, Instant::now() + crate::patience())
        .await
        .context("filter VMs re-syncing with the restarted analyzer")?;
    let resync_ms = resync_started.elapsed().as_secs_f64() * 1e3;
    let after = stack.rollout().await.context("GET /v1/rollout after the restart")?;
    let facts = |view: &Value| {
        (view["canary_weight_bp"].clone(), view["weights_version"].clone(), phase_of(view).map(str::to_owned))
    };
    let (before_facts, after_facts) = (facts(&before), facts(&after));
    // A running rollout may take its next step in the second the analyzer
    // is down or just after; only a settled state must be identical.
    let progressing = phase_of(&before) == Some(crate::rollout::phase::PROGRESSING);
    anyhow::ensure!(
        progressing || before_facts == after_facts,
        "weights or phase changed across the restart: before {before_facts:?}, after {after_facts:?}"
    );
    Ok(format!(
        "pid {} → {}, back in {down_ms:.0} ms, all filter VMs synced {resync_ms:.0} ms later; weight {} bp v{}, \
         rollout {} {}",
        show(old_pid.map(u64::from)),
        show(new_pid.map(u64::from)),
        after_facts.0,
        after_facts.1,
        after_facts.2.as_deref().unwrap_or("none"),
        if progressing { "(was progressing)" } else { "(unchanged)" }
    ))
}

async fn change_weight(stack: &Stack, canary_percent: f64) -> anyhow::Result<String> {
    let answer = stack.set_weight(canary_percent).await?;
    confirmed(&answer).map(|propagation| format!("canary → {canary_percent}%, {propagation}"))
}

async fn roll_back(stack: &Stack) -> anyhow::Result<String> {
    let answer = stack.rollback().await?;
    confirmed(&answer).map(|propagation| format!("canary → 0%, {propagation}"))
}

/// Describes a `?wait=true` answer; fails unless every live VM confirmed.
fn confirmed(answer: &Value) -> anyhow::Result<String> {
    let wait = &answer["wait"];
    anyhow::ensure!(wait["confirmed"] == true, "not confirmed by every filter VM: {answer}");
    Ok(format!(
        "v{} confirmed by {}/{} VMs in {:.1} ms",
        answer["weights_version"],
        wait["workers_confirmed"],
        wait["workers_total"],
        wait["propagation_ms"].as_f64().unwrap_or(f64::NAN)
    ))
}

async fn start_rollout(stack: &Stack, name: &str, period: Duration) -> anyhow::Result<String> {
    let spec = rollout_spec(name, period);
    let answer = stack.start_rollout(&spec).await?;
    Ok(format!(
        "{name}: 10% then 50% with {} pauses, phase {}",
        spec["steps"][1]["pause"]["duration"].as_str().unwrap_or("?"),
        answer["phase"].as_str().unwrap_or("?")
    ))
}

async fn pause_and_resume(stack: &Stack, hold: Duration) -> anyhow::Result<String> {
    let paused = stack.rollout_action_ok("pause", ACTOR, &json!({ "reason": "soak" })).await?;
    tokio::time::sleep(hold).await;
    let resumed = stack.rollout_action_ok("resume", ACTOR, &json!({ "reason": "soak" })).await?;
    Ok(format!(
        "paused ({}), held {} ms, resumed ({})",
        paused["phase"].as_str().or_else(|| paused["rollout"]["phase"].as_str()).unwrap_or("?"),
        hold.as_millis(),
        resumed["phase"].as_str().or_else(|| resumed["rollout"]["phase"].as_str()).unwrap_or("?")
    ))
}

/// Waits until the analyzer's totals equal the backends' counts (the
/// filters' last reports arrive within a report interval, or a little more
/// when one raced a restart), and returns every party's counts.
async fn converge_counts(stack: &Stack, traffic: &Traffic) -> Counts {
    let started = Instant::now();
    loop {
        let counts = read_counts(stack, traffic).await;
        let settled = counts.stable.all_agree() && counts.canary.all_agree();
        if settled || started.elapsed() >= CONVERGENCE_TIMEOUT {
            return Counts { converged_after_ms: settled.then(|| started.elapsed().as_millis() as u64), ..counts };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn read_counts(stack: &Stack, traffic: &Traffic) -> Counts {
    let view = stack.rollout().await.ok();
    let prometheus = stack.envoy_prometheus().await.ok();
    let mut counts = Counts::default();
    for (version, slot) in [(Version::Stable, &mut counts.stable), (Version::Canary, &mut counts.canary)] {
        let backend = stack.backend_stats(version).await.ok();
        let total = view.as_ref().map(|view| &view["versions"][version.as_str()]["total"]);
        *slot = VersionCounts {
            client_answers: traffic.served_by.get(version.as_str()).copied().unwrap_or(0),
            backend_served: backend.map_or(0, |stats| stats.served),
            backend_errors: backend.map_or(0, |stats| stats.errors),
            analyzer_requests: total.and_then(|total| total["requests"].as_u64()),
            analyzer_errors: total.and_then(|total| total["errors"].as_u64()),
            envoy_filter_requests: prometheus
                .as_deref()
                .and_then(|text| prometheus_value(text, &format!("canary_split_requests_{version}")))
                .map(|value| value as u64),
        };
    }
    counts
}

/// Samples `VmRSS` of Envoy and the current analyzer until `deadline`.
async fn sample_rss(
    target: Arc<Mutex<SamplerTarget>>,
    started: Instant,
    deadline: Instant,
    every: Duration,
) -> Vec<RssSample> {
    let mut samples = Vec::new();
    let mut next = started;
    while next < deadline {
        tokio::time::sleep_until(next.into()).await;
        let (envoy_pid, analyzer_pid, incarnation) = match target.lock() {
            Ok(target) => (target.envoy_pid, target.analyzer_pid, target.incarnation),
            Err(_) => break,
        };
        samples.push(RssSample {
            at_s: started.elapsed().as_secs_f64(),
            envoy_bytes: envoy_pid.and_then(read_rss_bytes),
            // While the analyzer is being restarted there is no pid: skip.
            analyzer_bytes: analyzer_pid.and_then(read_rss_bytes),
            analyzer_incarnation: incarnation,
        });
        next += every;
    }
    samples
}

/// One connection's share of the open-loop load: requests are numbered, and
/// request `i` is due at `started + i / rate` whichever connection sends it,
/// so a slow answer on one connection delays only that connection's next
/// request (and shows as schedule lag), not the schedule.
async fn load_worker(
    target: SocketAddr,
    requests_per_second: f64,
    started: Instant,
    deadline: Instant,
    next_index: Arc<AtomicU64>,
) -> Traffic {
    let mut traffic = Traffic::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let index = next_index.fetch_add(1, Ordering::Relaxed);
        let due = started + Duration::from_secs_f64(index as f64 / requests_per_second);
        if due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let lag = Instant::now().saturating_duration_since(due);
        traffic.max_schedule_lag_ms = traffic.max_schedule_lag_ms.max(lag.as_secs_f64() * 1e3);
        if lag > LATE_AFTER {
            traffic.late_requests += 1;
        }
        traffic.sent += 1;
        let at_s = started.elapsed().as_secs_f64();
        let (seen, detail) = match tokio::time::timeout(REQUEST_TIMEOUT, send_one(target, &mut sender)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                sender = None;
                (Seen::TransportError, format!("{error:#}"))
            }
            Err(_) => {
                sender = None;
                (Seen::Timeout, format!("no answer within {REQUEST_TIMEOUT:?}"))
            }
        };
        let class = classify(&seen);
        traffic.count(class);
        let mut status = None;
        if let Seen::Response { status: code, served_by, .. } = &seen {
            status = Some(*code);
            traffic.answered += 1;
            *traffic.status.entry(*code).or_default() += 1;
            *traffic.served_by.entry(served_by.clone().unwrap_or_else(|| "none".to_owned())).or_default() += 1;
        }
        if !matches!(class, ResponseClass::Ok | ResponseClass::BackendInjected)
            && traffic.problems.len() < MAX_PROBLEMS_KEPT
        {
            traffic.problems.push(Problem { at_s, class, status, detail });
        }
    }
    traffic
}

/// Sends one GET on the worker's keep-alive connection (reopening it when
/// Envoy closed it) and reads the whole answer. Returns what was seen and,
/// for a non-2xx, a detail for the report (Envoy's local replies say why in
/// the body, e.g. `no healthy upstream`).
async fn send_one(target: SocketAddr, sender: &mut Option<SendRequest<Full<Bytes>>>) -> anyhow::Result<(Seen, String)> {
    let open = crate::load::ready_connection(target, sender).await?;
    let request = Request::get("/").header("host", "canary.test").body(Full::new(Bytes::new()))?;
    let response = open.send_request(request).await?;
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let served_by = header("x-served-by");
    let upstream_service_time = header("x-envoy-upstream-service-time").is_some();
    let server = header("server");
    let body = response.into_body().collect().await?.to_bytes();
    let detail = if (200..300).contains(&status) {
        String::new()
    } else {
        let text = String::from_utf8_lossy(&body);
        format!(
            "server {:?}, x-served-by {:?}, upstream time {}, body {:?}",
            server.unwrap_or_default(),
            served_by.as_deref().unwrap_or(""),
            upstream_service_time,
            text.chars().take(160).collect::<String>()
        )
    };
    Ok((Seen::Response { status, served_by, upstream_service_time }, detail))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn minutes_accept_fractions_and_refuse_nonsense() {
        assert_eq!(parse_minutes("10"), Ok(10.0));
        assert_eq!(parse_minutes("0.5"), Ok(0.5));
        for bad in ["0", "-1", "nan", "inf", "ten", "", "0.05", "2000"] {
            let error = parse_minutes(bad).expect_err(bad);
            assert!(error.contains("--minutes") && error.contains(&format!("{bad:?}")), "{bad}: {error}");
        }
    }

    #[test]
    fn ten_minutes_run_nineteen_operations_every_30_s_in_cycle_order() {
        let plan = schedule(Duration::from_secs(600), &[]);
        assert_eq!(plan.period_seconds, 30.0);
        assert!(!plan.scaled);
        assert_eq!(plan.operations.len(), 19);
        assert_eq!(plan.operations[0], (30.0, Operation::AnalyzerRestart));
        assert_eq!(plan.operations[18], (570.0, Operation::NewRollout));
        for (index, (_, operation)) in plan.operations.iter().enumerate() {
            assert_eq!(*operation, Operation::CYCLE[index % 5]);
        }
    }

    #[test]
    fn a_one_minute_run_scales_the_period_and_still_restarts_and_changes_the_weight() {
        let plan = schedule(Duration::from_secs(60), &[]);
        assert!(plan.scaled);
        assert_eq!(plan.period_seconds, 10.0);
        let kinds: Vec<Operation> = plan.operations.iter().map(|(_, operation)| *operation).collect();
        assert_eq!(kinds, Operation::CYCLE, "all five operations, once each");
        assert_eq!(plan.operations.last().map(|(at_s, _)| *at_s), Some(50.0));
        // Half a minute still restarts and changes the weight.
        let half = schedule(Duration::from_secs(30), &[]);
        assert_eq!(half.period_seconds, 5.0);
        assert!(half.operations.len() >= 2, "{half:?}");
        assert_eq!(half.operations[0].1, Operation::AnalyzerRestart);
        assert_eq!(half.operations[1].1, Operation::WeightChange);
    }

    #[test]
    fn skipped_operations_leave_the_cycle_and_the_basics_check() {
        let plan = schedule(Duration::from_secs(600), &[Operation::AnalyzerRestart]);
        assert_eq!(plan.skipped, [Operation::AnalyzerRestart]);
        assert_eq!(plan.operations[0], (30.0, Operation::WeightChange));
        assert_eq!(plan.operations[4], (150.0, Operation::WeightChange));
        assert!(plan.operations.iter().all(|(_, operation)| *operation != Operation::AnalyzerRestart));
        assert_eq!(Operation::parse("restart"), Ok(Operation::AnalyzerRestart));
        assert_eq!(Operation::parse("pause-resume"), Ok(Operation::PauseResume));
        assert!(Operation::parse("reboot").is_err_and(|error| error.contains("\"reboot\"")));

        let mut report = good_report();
        report.operations.retain(|op| op.operation != Operation::AnalyzerRestart);
        assert_eq!(unmet(&report), [("operations".to_owned(), Verdict::Missed)]);
        report.schedule.skipped = vec![Operation::AnalyzerRestart];
        assert!(unmet(&report).is_empty());
        assert!(checks(&report)[4].detail.ends_with("skipped on request: analyzer kill -9 + restart"));
    }

    #[test]
    fn sampling_follows_the_run_length() {
        assert_eq!(sample_interval(Duration::from_secs(600)), Duration::from_secs(5));
        assert_eq!(sample_interval(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(sample_interval(Duration::from_secs(240)), Duration::from_secs(2));
    }

    #[test]
    fn rollout_spec_pauses_fit_between_the_pause_and_the_next_weight_change() {
        let spec = rollout_spec("soak-3", Duration::from_secs(30));
        assert_eq!(spec["name"], "soak-3");
        assert_eq!(spec["steps"][0]["setWeight"], 10);
        assert_eq!(spec["steps"][1]["pause"]["duration"], "22500ms");
        assert_eq!(spec["steps"][3]["pause"]["duration"], "22500ms");
        assert_eq!(spec["analysis"]["latencyTest"], false);
        // 1.5 periods of pauses: running one period in, done before three.
        assert_eq!(rollout_spec("x", Duration::from_secs(10))["steps"][1]["pause"]["duration"], "7500ms");
    }

    fn response(status: u16, served_by: Option<&str>, upstream_service_time: bool) -> Seen {
        Seen::Response { status, served_by: served_by.map(str::to_owned), upstream_service_time }
    }

    #[test]
    fn responses_are_classified_by_who_made_them() {
        let table = [
            (response(200, Some("stable"), true), ResponseClass::Ok),
            (response(204, Some("canary"), true), ResponseClass::Ok),
            (response(500, Some("canary"), true), ResponseClass::BackendInjected),
            (response(404, Some("stable"), true), ResponseClass::BackendOther),
            // An upstream answer that is not from a demo backend.
            (response(502, None, true), ResponseClass::BackendOther),
            (response(200, None, true), ResponseClass::BackendOther),
            // Envoy's own replies: no backend mark, no upstream time.
            (response(503, None, false), ResponseClass::ProxyMade),
            (response(500, None, false), ResponseClass::ProxyMade),
            (response(200, None, false), ResponseClass::ProxyMade),
            (Seen::TransportError, ResponseClass::ClientError),
            (Seen::Timeout, ResponseClass::ClientTimeout),
        ];
        for (seen, class) in table {
            assert_eq!(classify(&seen), class, "{seen:?}");
        }
    }

    fn series(values: &[u64]) -> Vec<(f64, u64)> {
        values.iter().enumerate().map(|(index, bytes)| (index as f64, *bytes)).collect()
    }

    #[test]
    fn growth_compares_medians_of_the_first_and_last_windows_after_warm_up() {
        // 5 warm-up samples that grow fast, then 15 at 100 and 15 at 104.
        let mut values = vec![10, 40, 70, 90, 95];
        values.extend([100; 15]);
        values.extend([104; 15]);
        let growth = rss_growth(&series(&values), 0.0, 5.0).expect("enough samples");
        assert_eq!(growth.post_warmup_samples, 30);
        assert_eq!(growth.window_samples, 6);
        assert_eq!(growth.first_window_median_bytes, 100);
        assert_eq!(growth.last_window_median_bytes, 104);
        assert!((growth.growth_percent - 4.0).abs() < 1e-9, "{growth:?}");
    }

    #[test]
    fn one_spike_in_a_window_does_not_decide_the_growth() {
        let mut values = vec![100; 20];
        values[19] = 500;
        values[0] = 1;
        let growth = rss_growth(&series(&values), 0.0, 0.0).expect("enough samples");
        assert_eq!(growth.growth_percent, 0.0, "{growth:?}");
    }

    #[test]
    fn growth_needs_two_windows_after_warm_up_and_respects_a_late_start() {
        assert_eq!(rss_growth(&series(&[100; 5]), 0.0, 0.0), None);
        let growth = rss_growth(&series(&[100; 6]), 0.0, 0.0).expect("two windows of three");
        assert_eq!(growth.window_samples, 3);
        // A process started at 10 s with 5 s of warm-up: only samples from
        // 15 s on count.
        let mut values = vec![1; 15];
        values.extend([200, 200, 200, 220, 220, 220]);
        let growth = rss_growth(&series(&values), 10.0, 5.0).expect("six samples after 15 s");
        assert_eq!(growth.first_window_median_bytes, 200);
        assert!((growth.growth_percent - 10.0).abs() < 1e-9, "{growth:?}");
        assert_eq!(rss_growth(&series(&[0; 10]), 0.0, 0.0), None, "no division by zero");
    }

    #[test]
    fn across_runs_compares_the_last_complete_run_with_the_first() {
        let runs = vec![vec![100, 101, 99, 100], vec![102; 4], vec![103, 104, 103]];
        let growth = across_runs(&runs).expect("three complete runs");
        assert_eq!(growth.first_window_median_bytes, 100);
        assert_eq!(growth.last_window_median_bytes, 103);
        assert!((growth.growth_percent - 3.0).abs() < 1e-9, "{growth:?}");
        // Runs with too few samples are left out; one run is not enough.
        assert_eq!(across_runs(&[vec![100; 4], vec![200; 2]]), None);
        assert_eq!(across_runs(&[vec![100; 4]]), None);
        assert_eq!(across_runs(&[]), None);
        assert_eq!(across_runs(&[vec![0; 4], vec![1; 4]]), None, "no division by zero");
    }

    #[test]
    fn an_analyzer_run_alone_warms_up_for_a_full_cycle_of_operations() {
        let ten_minutes = Duration::from_secs(600);
        // Five operations every 30 s, or four without restarts.
        assert_eq!(analyzer_warmup_s(&schedule(ten_minutes, &[])), 150.0);
        assert_eq!(analyzer_warmup_s(&schedule(ten_minutes, &[Operation::AnalyzerRestart])), 120.0);
        // A one-minute run's cycle (10 s periods) is shorter than the minute.
        assert_eq!(analyzer_warmup_s(&schedule(Duration::from_secs(60), &[])), WARMUP.as_secs_f64());
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tenvoy\nVmPeak:\t  999 kB\nVmRSS:\t   51234 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss_bytes(status), Some(51_234 * 1024));
        assert_eq!(parse_vm_rss_bytes("VmRSS: 12 MB\n"), None);
        assert_eq!(parse_vm_rss_bytes("Name: x\n"), None);
    }

    fn growth(percent: f64) -> Growth {
        Growth {
            warmup_seconds: 60.0,
            post_warmup_samples: 20,
            window_samples: 4,
            first_window_median_bytes: 100 << 20,
            last_window_median_bytes: ((100.0 + percent) * 1024.0 * 1024.0) as u64,
            growth_percent: percent,
        }
    }

    fn counts(served: u64, errors: u64) -> VersionCounts {
        VersionCounts {
            client_answers: served,
            backend_served: served,
            backend_errors: errors,
            analyzer_requests: Some(served),
            analyzer_errors: Some(errors),
            envoy_filter_requests: Some(served),
        }
    }

    fn operation(number: usize, operation: Operation, ok: bool) -> OperationRecord {
        OperationRecord { number, at_s: number as f64 * 10.0, operation, ok, took_ms: 5.0, detail: "d".to_owned() }
    }

    /// A run in which everything went right.
    fn good_report() -> SoakReport {
        let traffic = Traffic {
            sent: 1_000,
            answered: 1_000,
            ok: 995,
            backend_injected: 5,
            status: BTreeMap::from([(200, 995), (500, 5)]),
            served_by: BTreeMap::from([("stable".to_owned(), 700), ("canary".to_owned(), 300)]),
            ..Traffic::default()
        };
        SoakReport {
            started_utc: "2026-11-26T10:00:00Z".to_owned(),
            load_seconds: 60.0,
            requests_per_second: 200.0,
            connections: 8,
            envoy_workers: 2,
            backend_error_rate: 0.005,
            schedule: schedule(Duration::from_secs(60), &[]),
            traffic,
            counts: Counts { stable: counts(700, 3), canary: counts(300, 2), converged_after_ms: Some(900) },
            operations: Operation::CYCLE
                .iter()
                .enumerate()
                .map(|(index, kind)| operation(index + 1, *kind, true))
                .collect(),
            memory: Memory {
                warmup_seconds: 60.0,
                analyzer_warmup_seconds: 150.0,
                analyzer_across_runs: Some(growth(-1.0)),
                sample_interval_seconds: 1.0,
                envoy: Some(growth(1.0)),
                analyzer: vec![
                    Incarnation { number: 1, started_s: 0.0, ended_s: 10.0, pid: Some(7), growth: None },
                    Incarnation { number: 2, started_s: 10.0, ended_s: 60.0, pid: Some(8), growth: Some(growth(2.0)) },
                ],
                samples: vec![
                    RssSample {
                        at_s: 0.0,
                        envoy_bytes: Some(1 << 20),
                        analyzer_bytes: Some(1 << 20),
                        analyzer_incarnation: 1,
                    },
                    RssSample { at_s: 11.0, envoy_bytes: Some(1 << 20), analyzer_bytes: None, analyzer_incarnation: 2 },
                ],
            },
            final_state: "canary weight 0%".to_owned(),
            checks: Vec::new(),
        }
    }

    /// The checks that are not met, with their verdicts.
    fn unmet(report: &SoakReport) -> Vec<(String, Verdict)> {
        checks(report)
            .into_iter()
            .filter(|check| check.verdict != Verdict::Met)
            .map(|check| (check.name, check.verdict))
            .collect()
    }

    #[test]
    fn a_clean_run_meets_every_check() {
        let mut report = good_report();
        report.evaluate();
        assert_eq!(report.checks.len(), 5);
        assert!(report.passed(), "{:#?}", report.checks);
    }

    #[test]
    fn each_broken_promise_misses_exactly_its_check() {
        type Breakage = Box<dyn Fn(&mut SoakReport)>;
        let cases: Vec<(&str, Breakage)> = vec![
            ("no request lost", Box::new(|report| report.traffic.proxy_made = 1)),
            ("no request lost", Box::new(|report| report.traffic.client_timeouts = 2)),
            ("no count lost", Box::new(|report| report.counts.canary.analyzer_requests = Some(299))),
            ("no count lost", Box::new(|report| report.counts.stable.analyzer_errors = Some(4))),
            ("no count lost", Box::new(|report| report.counts.stable.envoy_filter_requests = None)),
            ("no count lost", Box::new(|report| report.traffic.sent = 1_001)),
            ("Envoy memory", Box::new(|report| report.memory.envoy = Some(growth(5.0)))),
            ("analyzer memory", Box::new(|report| report.memory.analyzer[1].growth = Some(growth(7.5)))),
            ("analyzer memory", Box::new(|report| report.memory.analyzer_across_runs = Some(growth(6.0)))),
            ("operations", Box::new(|report| report.operations[2].ok = false)),
            ("operations", Box::new(|report| report.operations.retain(|op| op.operation != Operation::WeightChange))),
        ];
        for (expected, break_it) in cases {
            let mut report = good_report();
            break_it(&mut report);
            assert_eq!(unmet(&report), [(expected.to_owned(), Verdict::Missed)], "breaking {expected}");
            report.evaluate();
            assert!(!report.passed());
        }
    }

    #[test]
    fn memory_is_not_judged_in_a_run_too_short_for_warm_up_and_that_does_not_fail_it() {
        let mut report = good_report();
        report.memory.envoy = None;
        report.memory.analyzer[1].growth = None;
        report.memory.analyzer_across_runs = None;
        assert_eq!(
            unmet(&report),
            [("Envoy memory".to_owned(), Verdict::NotJudged), ("analyzer memory".to_owned(), Verdict::NotJudged)]
        );
        report.evaluate();
        assert!(report.passed());
        let text = report.to_markdown();
        assert!(
            text.contains("- **not judged** Envoy memory: too short to judge: growth needs 60 s of warm-up"),
            "{text}"
        );
        assert!(text.contains("Overall: PASS"), "{text}");
    }

    #[test]
    fn markdown_shows_verdicts_numbers_and_restarts() {
        let mut report = good_report();
        report.operations[0].ok = false;
        report.operations[0].detail = "weights changed | badly".to_owned();
        report.evaluate();
        let text = report.to_markdown();
        assert!(text.contains("- **met** no request lost: 1000 sent, 1000 answered"), "{text}");
        assert!(text.contains("- **MISSED** operations: 4 of 5 succeeded"), "{text}");
        assert!(text.contains("Overall: FAIL"), "{text}");
        assert!(text.contains("| stable | 700 | 700 | 3 | 700 | 3 | 700 |"), "{text}");
        assert!(text.contains("| total | 1000 | 1000 | 5 | 1000 | 5 | 1000 |"), "{text}");
        assert!(text.contains("scaled down from 30 s"), "{text}");
        assert!(text.contains("weights changed \\| badly"), "table cells escape pipes: {text}");
        assert!(text.contains("| analyzer run 2 (pid 8) | 10–60 s | 20 | 100.0 MiB | 102.0 MiB | +2.00% |"), "{text}");
        assert!(text.contains("| analyzer run 1 (pid 7) | 0–10 s | too short | | | not judged |"), "{text}");
        assert!(text.contains("| 11 s | 1.0 MiB | ? (#2) restarted |"), "{text}");
    }

    #[test]
    fn traffic_merge_adds_up_and_keeps_the_earliest_problems() {
        let mut total = Traffic::default();
        for offset in [0.0, 0.5] {
            let mut part = Traffic { sent: 10, answered: 9, ok: 8, client_errors: 1, ..Traffic::default() };
            part.count(ResponseClass::ProxyMade);
            part.status.insert(503, 1);
            part.problems = (0..MAX_PROBLEMS_KEPT)
                .map(|index| Problem {
                    at_s: index as f64 + offset,
                    class: ResponseClass::ProxyMade,
                    status: Some(503),
                    detail: String::new(),
                })
                .collect();
            total.merge(part);
        }
        assert_eq!((total.sent, total.answered, total.ok, total.proxy_made, total.client_errors), (20, 18, 16, 2, 2));
        assert_eq!(total.status[&503], 2);
        assert_eq!(total.lost(), 4);
        assert_eq!(total.problems.len(), MAX_PROBLEMS_KEPT);
        assert_eq!(total.problems[1].at_s, 0.5);
    }

    #[test]
    fn run_directories_are_named_by_utc_time() {
        let time = UNIX_EPOCH + Duration::from_secs(1_764_153_720);
        assert_eq!(timestamp_dir_name(time), "20251126T104200Z");
    }
}
