//! Simulated filter workers for `scale`: each one behaves towards the
//! analyzer like a worker VM of the filter (`filter/src/worker.rs`), through
//! the real `POST /v1/filter/sync` ingest path, or, batched, every worker of
//! a simulated Envoy together through `POST /v1/filter/sync-batch`.
//!
//! What a worker does, as the filter does it:
//! - one sync in flight at a time, on a keep-alive connection of its own;
//! - each report is a real `canary_protocol` report: an Istio-shaped proxy id,
//!   a random worker id, seq from 1, the applied weights version, the version
//!   the counts were routed under, `max_hold_ms` = its report interval, and
//!   about 20 latency buckets per version with realistic counts;
//! - a report is re-sent with the same seq and bytes until acknowledged;
//! - after a 200 it applies the weights; it syncs again at once when the
//!   weights changed or when the hold lasted the whole interval, else when
//!   the interval since the last dispatch is over; so at 1 Hz a call is open
//!   nearly all the time and reports arrive about once per interval;
//! - after a failure it backs off `min(interval, 1 s)` (at least 100 ms here,
//!   so the ack-paced saturation mode cannot spin on errors).
//!
//! The analyzer answers a report only after its ingest is durable (group
//! commit) and then holds the answer while the weights are unchanged, for
//! `max_hold_ms`. So a held sync's round trip is ingest + durability + the
//! hold, and the **ingest latency** recorded here is the round trip minus the
//! hold for held answers (an answer carrying the same weights version as the
//! report was held the full `max_hold_ms`), and the whole round trip for
//! early ones. The analyzer's hold timer has millisecond granularity, so a
//! held sample may read up to about 1 ms high.
//!
//! **Batched** ([`SyncSettings::batched`]), each simulated proxy is one sync
//! loop with one connection, as the filter's reporter VM is with
//! `batch_reports` (`docs/batched-reports.md`): its workers keep their own worker ids and
//! seqs, each cuts its report as above, and the proxy sends them together as
//! one `canary_protocol::batch` whose `max_hold_ms` is the workers' hold. The
//! answer is a `BatchAck`; unless it acknowledges every worker id with the
//! seq sent, in request order, the exchange counts as a wrong ack and the
//! same batch (same seqs, same bytes) is sent again after the back-off.
//! Reports are counted per worker report, exchanges per HTTP exchange; the
//! latency histograms hold one sample per exchange. In the per-worker mode
//! the two counts are the same.
//!
//! When the driver may open fewer connections than there are workers (the
//! open-files limit caps both processes), the workers share a pool of
//! connections instead: a worker takes an idle one for each sync. With the
//! filter's long-poll that would cap the rate at one report per connection
//! per hold, so the caller then also sets `max_hold_ms` to 0 and keeps the
//! 1 Hz pace in the driver; the results record which mode a phase ran in.
//! Batched, the proxies share the pool the same way.
//!
//! The client is a minimal HTTP/1.1 one (one `write` per request, `httparse`
//! for the answer) rather than hyper: the driver must outrun the analyzer on
//! one core, and the analyzer's server sees the same bytes either way.
//! Everything runs on one thread (a `current_thread` runtime and a
//! `LocalSet`), so the shared counters are plain `Cell`s.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use canary_protocol::batch::{BatchAck, MAX_BATCH_REPORTS, WorkerAck, encode_batch};
use canary_protocol::{LatencyHistogram, Report, ReportHeader, SyncResponse, VersionDelta, VersionStats, Weights};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Loopback source addresses the workers' connections come from, round
/// robin: one address has about 28k ephemeral ports, too few for 40k
/// connections plus the TIME_WAIT of earlier phases.
pub const SOURCE_IPS: [Ipv4Addr; 8] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
    Ipv4Addr::new(127, 0, 0, 6),
    Ipv4Addr::new(127, 0, 0, 7),
    Ipv4Addr::new(127, 0, 0, 8),
    Ipv4Addr::new(127, 0, 0, 9),
];
/// Distinct count templates; workers cycle through them so the analyzer
/// merges different buckets, not one report over and over.
pub const TEMPLATE_COUNT: usize = 16;
/// Latency buckets per version in every report.
pub const BUCKETS_PER_VERSION: usize = 20;
/// Requests per report interval of a simulated worker: a busy pod's worker
/// at 10% canary.
pub const STABLE_REQUESTS_PER_REPORT: u64 = 400;
pub const CANARY_REQUESTS_PER_REPORT: u64 = 40;
/// The analyzer's sync endpoints: one report per exchange, or one batch.
pub const SYNC_PATH: &str = "/v1/filter/sync";
pub const SYNC_BATCH_PATH: &str = "/v1/filter/sync-batch";
/// Connection attempts in progress at once: more only overflows the
/// analyzer's accept backlog (1,024) and turns into SYN retransmits.
const CONNECTS_IN_FLIGHT: usize = 256;
/// A sync may take this long on top of its hold before it counts as failed.
const SYNC_TIMEOUT_SLACK: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer read: an analyzer error body is a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How every worker of one driver syncs.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub analyzer: SocketAddr,
    pub token: String,
    /// The filter's report interval: a new report is due this long after the
    /// previous dispatch. Zero sends the next report as soon as the previous
    /// one is acknowledged (ack-paced, for saturation).
    pub report_interval: Duration,
    /// `max_hold_ms` in every report, and of every batch.
    pub max_hold_ms: u32,
    /// Most connections open at once; fewer than sync loops (workers, or
    /// proxies when batched) makes them share.
    pub connections: usize,
    /// One batch per proxy per exchange to [`SYNC_BATCH_PATH`] instead of
    /// one report per worker to [`SYNC_PATH`] (see the module docs).
    pub batched: bool,
}

/// One simulated worker VM.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub proxy_id: Rc<str>,
    pub worker_id: u64,
    pub template: usize,
    /// When its first sync starts, to spread the workers' phases.
    pub start_at: Instant,
}

/// One simulated Envoy of the batched mode: its workers report together.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// Each with its own worker id and template; their `start_at` is unused.
    pub workers: Vec<WorkerSpec>,
    /// When the proxy's first sync starts.
    pub start_at: Instant,
}

/// Where in `spread` the `index`-th sync loop starts, in `[0, 1)`: scrambled,
/// so each moment of a ramp mixes proxies.
fn phase(index: usize) -> f64 {
    ((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64
}

/// The proxies of [`fleet`] (the same worker ids and templates), each one
/// batched sync loop, starting evenly over `spread` from `start`.
pub fn proxy_fleet(
    first_proxy: usize,
    proxies: usize,
    workers_per_proxy: usize,
    start: Instant,
    spread: Duration,
) -> Vec<ProxySpec> {
    let workers = fleet(first_proxy, proxies, workers_per_proxy, start, spread);
    workers
        .chunks(workers_per_proxy.max(1))
        .enumerate()
        .map(|(index, workers)| ProxySpec { workers: workers.to_vec(), start_at: start + spread.mul_f64(phase(index)) })
        .collect()
}

/// `workers_per_proxy` workers for each of `proxies` proxies numbered from
/// `first_proxy`, starting evenly over `spread` from `start`. The numbering
/// makes ids deterministic, so two runs simulate the same fleet.
pub fn fleet(
    first_proxy: usize,
    proxies: usize,
    workers_per_proxy: usize,
    start: Instant,
    spread: Duration,
) -> Vec<WorkerSpec> {
    let total = proxies * workers_per_proxy;
    let mut specs = Vec::with_capacity(total);
    for proxy in first_proxy..first_proxy + proxies {
        let proxy_id: Rc<str> = istio_proxy_id(proxy).into();
        for worker in 0..workers_per_proxy {
            let index = (proxy - first_proxy) * workers_per_proxy + worker;
            specs.push(WorkerSpec {
                proxy_id: Rc::clone(&proxy_id),
                worker_id: splitmix64(((proxy as u64) << 8) | worker as u64) | 1,
                template: (proxy * workers_per_proxy + worker) % TEMPLATE_COUNT,
                start_at: start + spread.mul_f64(phase(index)),
            });
        }
    }
    specs
}

/// An Istio sidecar's node id, as the filter uses by default:
/// `sidecar~<pod ip>~<pod name>.<namespace>~<namespace>.svc.cluster.local`.
pub fn istio_proxy_id(proxy: usize) -> String {
    let hash = splitmix64(proxy as u64 ^ 0x5CA1_E000);
    let ip = [10, ((proxy >> 16) as u8).wrapping_add(1), (proxy >> 8) as u8, proxy as u8];
    let namespace = format!("team-{:02}", proxy % 24);
    let app = ["checkout", "reviews", "payments", "catalog", "search", "cart"][proxy % 6];
    // A Deployment's pod name: app, ReplicaSet hash (10), pod suffix (5).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut random = hash;
    let mut token = |len: usize| -> String {
        (0..len)
            .map(|_| {
                let c = ALPHABET[(random % ALPHABET.len() as u64) as usize] as char;
                random = splitmix64(random);
                c
            })
            .collect()
    };
    let pod = format!("{app}-v{}-{}-{}", proxy % 3 + 1, token(10), token(5));
    format!("sidecar~{}.{}.{}.{}~{pod}.{namespace}~{namespace}.svc.cluster.local", ip[0], ip[1], ip[2], ip[3])
}

/// The per-version counts of each template: ~20 latency buckets per version,
/// log-spaced from about 0.4 ms to 60 ms around a 3 ms median, with a few
/// 4xx and 5xx.
pub fn report_templates() -> Vec<[VersionDelta; 2]> {
    (0..TEMPLATE_COUNT)
        .map(|template| {
            let seed = splitmix64(template as u64 + 1);
            [
                version_counts(seed, STABLE_REQUESTS_PER_REPORT, 1.0),
                version_counts(splitmix64(seed), CANARY_REQUESTS_PER_REPORT, 1.15),
            ]
        })
        .collect()
}

fn version_counts(seed: u64, requests: u64, slowdown: f64) -> VersionDelta {
    let mut stats = VersionStats::default();
    // Weights of a bell over the log-spaced buckets, every bucket at least 1.
    let weights: Vec<f64> = (0..BUCKETS_PER_VERSION)
        .map(|bucket| {
            let x = (bucket as f64 - BUCKETS_PER_VERSION as f64 * 0.35) / 4.0;
            (-x * x / 2.0).exp()
        })
        .collect();
    let total_weight: f64 = weights.iter().sum();
    let spare = requests - BUCKETS_PER_VERSION as u64;
    let mut counts: Vec<u64> = weights.iter().map(|weight| 1 + (weight / total_weight * spare as f64) as u64).collect();
    // Rounding down leaves a few requests over; they go to the median bucket.
    let assigned: u64 = counts.iter().sum();
    counts[BUCKETS_PER_VERSION * 35 / 100] += requests - assigned;
    let mut random = seed;
    for (bucket, count) in counts.iter().enumerate() {
        random = splitmix64(random);
        // 25% steps keep neighbours in distinct buckets (each is < 1% wide);
        // the jitter moves the exact buckets from template to template.
        let jitter = 1.0 + (random % 1_000) as f64 / 10_000.0;
        let latency_us = 400.0 * 1.25f64.powi(bucket as i32) * jitter * slowdown;
        stats.latency_us.record_n_us(latency_us as u64, *count);
    }
    stats.requests = requests;
    let errors_5xx = 1 + requests / 200 + seed % 2;
    let errors_4xx = 1 + requests / 100;
    stats.status.status_5xx = errors_5xx;
    stats.status.status_4xx = errors_4xx;
    stats.status.status_2xx = requests - errors_5xx - errors_4xx;
    stats.to_delta()
}

/// SplitMix64: a good 64-bit mix for deterministic ids.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Why a sync failed, as counted in the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    Connect,
    Timeout,
    /// Reset, closed, or a read or write error.
    Transport,
    /// A status other than 200.
    Status(u16),
    /// Unparseable HTTP or a body that is not a sync response.
    BadResponse,
    /// A 200 acknowledging another seq (batched: not every worker with the
    /// seq it sent, in request order).
    WrongAck,
}

impl FailureKind {
    pub fn label(self) -> String {
        match self {
            FailureKind::Connect => "connect".to_owned(),
            FailureKind::Timeout => "timeout".to_owned(),
            FailureKind::Transport => "transport".to_owned(),
            FailureKind::Status(status) => format!("http_{status}"),
            FailureKind::BadResponse => "bad_response".to_owned(),
            FailureKind::WrongAck => "wrong_ack".to_owned(),
        }
    }
}

/// What the workers saw during one measurement window.
#[derive(Debug, Clone)]
pub struct WindowStats {
    pub started: Instant,
    pub ended: Option<Instant>,
    /// Worker reports acknowledged inside the window.
    pub acks: u64,
    /// Of which held for the whole `max_hold_ms`.
    pub held_acks: u64,
    /// HTTP exchanges acknowledged inside the window: `acks` one by one, or
    /// the batches that carried them.
    pub exchanges: u64,
    /// Ingest latency of every acknowledged exchange (see the module docs).
    pub ingest_us: LatencyHistogram,
    /// Send to answer, hold included.
    pub round_trip_us: LatencyHistogram,
    /// Failed exchanges, by why.
    pub failures: BTreeMap<FailureKind, u64>,
    pub first_error: Option<String>,
    /// Syncs that waited for a shared connection, and the longest wait: a
    /// pool too small for the rate would show here, not as analyzer latency.
    pub connection_waits: u64,
    pub longest_connection_wait: Duration,
}

impl WindowStats {
    fn new(started: Instant) -> Self {
        Self {
            started,
            ended: None,
            acks: 0,
            held_acks: 0,
            exchanges: 0,
            ingest_us: LatencyHistogram::new(),
            round_trip_us: LatencyHistogram::new(),
            failures: BTreeMap::new(),
            first_error: None,
            connection_waits: 0,
            longest_connection_wait: Duration::ZERO,
        }
    }

    pub fn duration(&self) -> Duration {
        self.ended.unwrap_or_else(Instant::now).saturating_duration_since(self.started)
    }

    pub fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// Running totals, for the progress line and to wait for the ramp.
#[derive(Debug, Default)]
struct Totals {
    /// Worker reports acknowledged.
    acks: Cell<u64>,
    /// HTTP exchanges acknowledged.
    exchanges: Cell<u64>,
    /// Failed exchanges.
    failures: Cell<u64>,
    /// Workers whose connection is open now.
    connected: Cell<u64>,
    /// Workers that have had at least one sync acknowledged.
    synced_workers: Cell<u64>,
}

struct Shared {
    settings: SyncSettings,
    templates: Vec<[VersionDelta; 2]>,
    /// The request line and fixed headers, up to `content-length: `.
    request_head: Vec<u8>,
    connect_permits: Semaphore,
    /// One permit per connection that may be open.
    connection_slots: Semaphore,
    /// Open connections not in use.
    idle: RefCell<Vec<Connection>>,
    /// Connections opened so far, to rotate the source addresses.
    opened: Cell<usize>,
    totals: Totals,
    window: RefCell<Option<WindowStats>>,
    /// Every worker stops by itself here, whatever the orchestrator does.
    stop_at: Instant,
}

impl Shared {
    /// One acknowledged exchange that carried `reports` worker reports.
    fn record_ack(&self, sent_at: Instant, acked_at: Instant, held: bool, reports: u64) {
        self.totals.acks.set(self.totals.acks.get() + reports);
        self.totals.exchanges.set(self.totals.exchanges.get() + 1);
        let mut window = self.window.borrow_mut();
        let Some(window) = window.as_mut().filter(|window| acked_at >= window.started) else { return };
        let round_trip = acked_at.saturating_duration_since(sent_at);
        let hold = if held { Duration::from_millis(u64::from(self.settings.max_hold_ms)) } else { Duration::ZERO };
        window.acks += reports;
        window.held_acks += if held { reports } else { 0 };
        window.exchanges += 1;
        window.round_trip_us.record_us(round_trip.as_micros() as u64);
        window.ingest_us.record_us(round_trip.saturating_sub(hold).as_micros() as u64);
    }

    fn record_connection_wait(&self, waited: Duration) {
        if let Some(window) = self.window.borrow_mut().as_mut() {
            window.connection_waits += 1;
            window.longest_connection_wait = window.longest_connection_wait.max(waited);
        }
    }

    fn connection_closed(&self) {
        self.totals.connected.set(self.totals.connected.get().saturating_sub(1));
    }

    fn record_failure(&self, kind: FailureKind, error: &dyn std::fmt::Display) {
        self.totals.failures.set(self.totals.failures.get() + 1);
        if let Some(window) = self.window.borrow_mut().as_mut() {
            *window.failures.entry(kind).or_default() += 1;
            if window.first_error.is_none() {
                window.first_error = Some(format!("{}: {error}", kind.label()));
            }
        }
    }
}

/// The simulated fleet of one phase. Dropping it aborts every worker, which
/// closes their connections.
pub struct Driver {
    shared: Rc<Shared>,
    /// One sync loop per worker, or per proxy when batched.
    loops: Vec<JoinHandle<()>>,
    /// Simulated workers, whichever way they report.
    workers: usize,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("settings", &self.shared.settings)
            .field("loops", &self.loops.len())
            .field("workers", &self.workers)
            .finish()
    }
}

impl Driver {
    /// A driver whose workers all stop by `stop_at` at the latest.
    pub fn new(settings: SyncSettings, stop_at: Instant) -> Self {
        let request_head = request_head(if settings.batched { SYNC_BATCH_PATH } else { SYNC_PATH }, &settings.token);
        let connection_slots = settings.connections.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            shared: Rc::new(Shared {
                settings,
                templates: report_templates(),
                request_head,
                connect_permits: Semaphore::new(CONNECTS_IN_FLIGHT),
                connection_slots: Semaphore::new(connection_slots),
                idle: RefCell::new(Vec::new()),
                opened: Cell::new(0),
                totals: Totals::default(),
                window: RefCell::new(None),
                stop_at,
            }),
            loops: Vec::new(),
            workers: 0,
        }
    }

    /// Starts `workers_per_proxy` workers for each of `proxies` proxies
    /// numbered from `first_proxy`, their phases spread over `spread` from
    /// `start` ([`fleet`]): a sync loop per worker, or per proxy when
    /// batched ([`proxy_fleet`]). Must run inside a `LocalSet`.
    pub fn spawn_fleet(
        &mut self,
        first_proxy: usize,
        proxies: usize,
        workers_per_proxy: usize,
        start: Instant,
        spread: Duration,
    ) {
        if self.shared.settings.batched {
            for proxy in proxy_fleet(first_proxy, proxies, workers_per_proxy, start, spread) {
                self.workers += proxy.workers.len();
                let workers = proxy.workers.into_iter().map(WorkerState::new).collect();
                self.loops.push(tokio::task::spawn_local(run_sync_loop(
                    Rc::clone(&self.shared),
                    workers,
                    proxy.start_at,
                )));
            }
        } else {
            for spec in fleet(first_proxy, proxies, workers_per_proxy, start, spread) {
                self.workers += 1;
                let start_at = spec.start_at;
                let workers = vec![WorkerState::new(spec)];
                self.loops.push(tokio::task::spawn_local(run_sync_loop(Rc::clone(&self.shared), workers, start_at)));
            }
        }
    }

    /// Simulated workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Sync loops, each with at most one exchange in flight: the workers, or
    /// the proxies when batched.
    pub fn sync_loops(&self) -> usize {
        self.loops.len()
    }

    /// Open connections.
    pub fn connected(&self) -> u64 {
        self.shared.totals.connected.get()
    }

    /// Workers that have had a sync acknowledged.
    pub fn synced_workers(&self) -> u64 {
        self.shared.totals.synced_workers.get()
    }

    /// Acknowledged worker reports and failed exchanges since the start.
    pub fn totals(&self) -> (u64, u64) {
        (self.shared.totals.acks.get(), self.shared.totals.failures.get())
    }

    /// Acknowledged HTTP exchanges since the start.
    pub fn exchanges(&self) -> u64 {
        self.shared.totals.exchanges.get()
    }

    /// Starts recording a window from now.
    pub fn start_window(&self) {
        *self.shared.window.borrow_mut() = Some(WindowStats::new(Instant::now()));
    }

    /// Ends the window and returns what it recorded.
    pub fn end_window(&self) -> Option<WindowStats> {
        let mut window = self.shared.window.borrow_mut().take()?;
        window.ended = Some(Instant::now());
        Some(window)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        for sync_loop in &self.loops {
            sync_loop.abort();
        }
    }
}

/// One simulated worker's reporting state, as the filter keeps it.
#[derive(Debug)]
struct WorkerState {
    spec: WorkerSpec,
    /// The last seq cut (0 before the first report).
    seq: u64,
    /// The weights version the counts accumulating now are routed under.
    counts_weights_version: u64,
}

impl WorkerState {
    fn new(spec: WorkerSpec) -> Self {
        Self { spec, seq: 0, counts_weights_version: 0 }
    }

    /// Cuts the next report: the next seq, the weights applied now, and the
    /// version the counts cut now were routed under (the weights in force
    /// while they accumulated), as the filter does.
    fn cut(&mut self, templates: &[[VersionDelta; 2]], applied_version: u64, max_hold_ms: u32) -> Report {
        self.seq += 1;
        let header = ReportHeader {
            proxy_id: self.spec.proxy_id.to_string(),
            worker_id: self.spec.worker_id,
            seq: self.seq,
            weights_version: applied_version,
            counts_weights_version: self.counts_weights_version,
            max_hold_ms,
        };
        self.counts_weights_version = applied_version;
        Report { header, versions: templates[self.spec.template].clone() }
    }
}

/// An exchange cut and not yet acknowledged: re-sent with the same bytes
/// until it is.
#[derive(Debug)]
struct Pending {
    /// The weights version its reports say is applied.
    reported_version: u64,
    /// (worker id, seq) of each report, in request order.
    sent: Vec<(u64, u64)>,
    /// The whole HTTP request.
    request: Vec<u8>,
}

impl Pending {
    /// Every worker's next report: one report alone, or all of them in one
    /// batch.
    fn cut(shared: &Shared, workers: &mut [WorkerState], applied_version: u64) -> Pending {
        let settings = &shared.settings;
        let reports: Vec<Report> = workers
            .iter_mut()
            .map(|worker| worker.cut(&shared.templates, applied_version, settings.max_hold_ms))
            .collect();
        let sent = reports.iter().map(|report| (report.header.worker_id, report.header.seq)).collect();
        let request = match reports.as_slice() {
            [report] if !settings.batched => request_bytes(&shared.request_head, report),
            _ => batch_request_bytes(&shared.request_head, settings.max_hold_ms, &reports),
        };
        Pending { reported_version: applied_version, sent, request }
    }

    /// The weights of an answer that acknowledges every report sent.
    fn check(&self, batched: bool, body: &[u8]) -> Result<Weights, (FailureKind, String)> {
        let bad = |error: canary_protocol::DecodeError| (FailureKind::BadResponse, error.to_string());
        if batched {
            let ack = BatchAck::decode(body).map_err(bad)?;
            check_batch_ack(&self.sent, &ack.acks).map_err(|error| (FailureKind::WrongAck, error))?;
            Ok(ack.weights)
        } else {
            let response = SyncResponse::decode(body).map_err(bad)?;
            let sent_seq = self.sent.first().map_or(0, |&(_, seq)| seq);
            if response.acked_seq != sent_seq {
                let error = format!("sent seq {sent_seq}, the analyzer acknowledged {}", response.acked_seq);
                return Err((FailureKind::WrongAck, error));
            }
            Ok(response.weights)
        }
    }
}

/// `Ok` when `acks` acknowledges each `(worker id, seq)` of `sent`, in that
/// order and nothing else; else what is wrong, naming the first report at
/// fault.
pub fn check_batch_ack(sent: &[(u64, u64)], acks: &[WorkerAck]) -> Result<(), String> {
    for (index, &(worker_id, seq)) in sent.iter().enumerate() {
        match acks.get(index) {
            None => {
                return Err(format!(
                    "report {index} (worker {worker_id:#x}, seq {seq}) not acknowledged: {} acks for {} reports",
                    acks.len(),
                    sent.len()
                ));
            }
            Some(ack) if ack.worker_id != worker_id => {
                return Err(format!(
                    "report {index}: sent worker {worker_id:#x} seq {seq}, the analyzer acknowledged worker {:#x} \
                     seq {}",
                    ack.worker_id, ack.acked_seq
                ));
            }
            Some(ack) if ack.acked_seq != seq => {
                return Err(format!(
                    "report {index}: worker {worker_id:#x} sent seq {seq}, the analyzer acknowledged {}",
                    ack.acked_seq
                ));
            }
            Some(_) => {}
        }
    }
    if acks.len() > sent.len() {
        return Err(format!("{} acks for {} reports", acks.len(), sent.len()));
    }
    Ok(())
}

/// One sync loop: a worker alone, or a proxy's workers batched; see the
/// module docs.
async fn run_sync_loop(shared: Rc<Shared>, mut workers: Vec<WorkerState>, start_at: Instant) {
    let settings = &shared.settings;
    let interval = settings.report_interval;
    let backoff = interval.clamp(Duration::from_millis(100), Duration::from_secs(1));
    let sync_timeout = Duration::from_millis(u64::from(settings.max_hold_ms)) + SYNC_TIMEOUT_SLACK;
    let mut applied = Weights { weights_version: 0, canary_weight: canary_protocol::CanaryWeight::ZERO };
    // The reports cut and not yet acknowledged.
    let mut unacked: Option<Pending> = None;
    let mut synced_once = false;
    let mut next_due = start_at;
    loop {
        let now = Instant::now();
        if now >= shared.stop_at {
            break;
        }
        if next_due > now {
            tokio::time::sleep_until(next_due.min(shared.stop_at).into()).await;
            continue;
        }
        let pending = unacked.get_or_insert_with(|| Pending::cut(&shared, &mut workers, applied.weights_version));
        // A connection slot: free at once while every loop has its own.
        let wait_started = Instant::now();
        let Ok(_slot) = shared.connection_slots.acquire().await else { break };
        let waited = wait_started.elapsed();
        if waited >= Duration::from_millis(1) {
            shared.record_connection_wait(waited);
        }
        let idle = shared.idle.borrow_mut().pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => match connect(&shared).await {
                Ok(stream) => {
                    shared.totals.connected.set(shared.totals.connected.get() + 1);
                    Connection::new(stream)
                }
                Err((kind, error)) => {
                    shared.record_failure(kind, &error);
                    next_due = Instant::now() + backoff;
                    continue;
                }
            },
        };
        let sent_at = Instant::now();
        let outcome = tokio::time::timeout(sync_timeout, connection.exchange(&pending.request)).await;
        let answered_at = Instant::now();
        // The failure's kind, its message, and whether the connection is
        // done for.
        let failure = match outcome {
            Ok(Ok(body)) => match pending.check(settings.batched, body) {
                Ok(weights) => {
                    shared.idle.borrow_mut().push(connection);
                    let held = weights.weights_version == pending.reported_version;
                    shared.record_ack(sent_at, answered_at, held, pending.sent.len() as u64);
                    unacked = None;
                    if !synced_once {
                        synced_once = true;
                        shared.totals.synced_workers.set(shared.totals.synced_workers.get() + workers.len() as u64);
                    }
                    let changed = weights != applied;
                    applied = weights;
                    next_due = if changed { answered_at } else { sent_at + interval };
                    continue;
                }
                Err((kind, error)) => (kind, error, false),
            },
            Ok(Err(ExchangeError::Status { status, body, keep_alive })) => {
                (FailureKind::Status(status), format!("HTTP {status}: {body}"), !keep_alive)
            }
            Ok(Err(ExchangeError::Transport(error))) => (FailureKind::Transport, error.to_string(), true),
            Ok(Err(ExchangeError::BadResponse(error))) => (FailureKind::BadResponse, error, true),
            Err(_) => (FailureKind::Timeout, format!("no answer within {sync_timeout:?}"), true),
        };
        let (kind, error, drop_connection) = failure;
        shared.record_failure(kind, &error);
        if drop_connection {
            drop(connection);
            shared.connection_closed();
        } else {
            shared.idle.borrow_mut().push(connection);
        }
        next_due = answered_at + backoff;
    }
}

/// A new connection from the next source address in turn.
async fn connect(shared: &Shared) -> Result<TcpStream, (FailureKind, String)> {
    // The semaphore is never closed, so acquiring only waits.
    let _permit = shared.connect_permits.acquire().await.map_err(|error| (FailureKind::Connect, error.to_string()))?;
    let source_ip = SOURCE_IPS[shared.opened.get() % SOURCE_IPS.len()];
    shared.opened.set(shared.opened.get() + 1);
    let attempt = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source_ip.into(), 0))?;
        let stream = socket.connect(shared.settings.analyzer).await?;
        // Envoy's upstream connections do the same; a request is one write.
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err((FailureKind::Connect, format!("from {source_ip}: {error}"))),
        Err(_) => Err((FailureKind::Connect, format!("from {source_ip}: no connection within {CONNECT_TIMEOUT:?}"))),
    }
}

/// The request line and fixed headers of every sync to `path`, up to
/// `content-length: `.
pub fn request_head(path: &str, token: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: canary-analyzer\r\ncontent-type: application/octet-stream\r\n\
         authorization: Bearer {token}\r\ncontent-length: "
    )
    .into_bytes()
}

/// The whole HTTP request for a batch of `reports` (at most
/// [`MAX_BATCH_REPORTS`]): head, `content-length`, the batch.
pub fn batch_request_bytes(head: &[u8], max_hold_ms: u32, reports: &[Report]) -> Vec<u8> {
    debug_assert!(!reports.is_empty() && reports.len() <= MAX_BATCH_REPORTS, "{} reports", reports.len());
    let encoded: Vec<Vec<u8>> = reports
        .iter()
        .map(|report| {
            let mut bytes = Vec::with_capacity(320);
            report.encode(&mut bytes);
            bytes
        })
        .collect();
    let mut body = Vec::with_capacity(8 + encoded.iter().map(|report| report.len() + 2).sum::<usize>());
    encode_batch(max_hold_ms, encoded.iter().map(Vec::as_slice), &mut body);
    with_head(head, &body)
}

/// `head`, the body's length, and the body.
fn with_head(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut request = Vec::with_capacity(head.len() + 8 + body.len());
    request.extend_from_slice(head);
    request.extend_from_slice(body.len().to_string().as_bytes());
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
    request
}

/// The whole HTTP request for `report`: head, `content-length`, body.
pub fn request_bytes(head: &[u8], report: &Report) -> Vec<u8> {
    let mut body = Vec::with_capacity(320);
    report.encode(&mut body);
    with_head(head, &body)
}

#[derive(Debug)]
enum ExchangeError {
    Transport(std::io::Error),
    Status { status: u16, body: String, keep_alive: bool },
    BadResponse(String),
}

impl From<std::io::Error> for ExchangeError {
    fn from(error: std::io::Error) -> Self {
        ExchangeError::Transport(error)
    }
}

/// One keep-alive connection to the analyzer.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    fn new(stream: TcpStream) -> Self {
        Self { stream, buffer: Vec::with_capacity(512) }
    }

    /// Sends one request and reads its whole answer: the body of a 200.
    async fn exchange(&mut self, request: &[u8]) -> Result<&[u8], ExchangeError> {
        self.stream.write_all(request).await?;
        self.buffer.clear();
        loop {
            if self.buffer.len() >= MAX_RESPONSE_BYTES {
                return Err(ExchangeError::BadResponse(format!("answer longer than {MAX_RESPONSE_BYTES} bytes")));
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(ExchangeError::Transport(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let Some(parsed) = parse_response(&self.buffer).map_err(ExchangeError::BadResponse)? else { continue };
            let body_start = parsed.body_start;
            if parsed.status != 200 {
                let body = &self.buffer[body_start..];
                return Err(ExchangeError::Status {
                    status: parsed.status,
                    body: String::from_utf8_lossy(body).chars().take(300).collect(),
                    keep_alive: parsed.keep_alive,
                });
            }
            if !parsed.keep_alive {
                return Err(ExchangeError::BadResponse("the analyzer closes the connection".to_owned()));
            }
            return Ok(&self.buffer[body_start..]);
        }
    }
}

/// A complete HTTP/1.1 answer in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedResponse {
    pub status: u16,
    pub body_start: usize,
    pub keep_alive: bool,
}

/// `Ok(None)` while the answer is incomplete. Only `content-length` bodies
/// are understood (the analyzer sends nothing else); bytes past the body are
/// an error, since the client never pipelines.
pub fn parse_response(bytes: &[u8]) -> Result<Option<ParsedResponse>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut response = httparse::Response::new(&mut headers);
    let header_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(format!("unparseable HTTP answer: {error}")),
    };
    let status = response.code.ok_or("an HTTP answer without a status")?;
    let mut content_length = None;
    let mut keep_alive = response.version == Some(1);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(header.value).ok().and_then(|value| value.trim().parse::<usize>().ok());
            content_length = Some(length.ok_or("a content-length that is not a number")?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a chunked answer; only content-length is supported".to_owned());
        } else if header.name.eq_ignore_ascii_case("connection") {
            keep_alive = !header.value.eq_ignore_ascii_case(b"close");
        }
    }
    let content_length = content_length.ok_or("an answer without content-length")?;
    let end = header_len + content_length;
    match bytes.len().cmp(&end) {
        std::cmp::Ordering::Less => Ok(None),
        std::cmp::Ordering::Equal => Ok(Some(ParsedResponse { status, body_start: header_len, keep_alive })),
        std::cmp::Ordering::Greater => Err(format!("{} unexpected bytes after the answer", bytes.len() - end)),
    }
}

#[cfg(test)]
mod tests {
    use canary_protocol::CanaryWeight;

    use super::*;

    #[test]
    fn templates_are_valid_reports_with_about_twenty_buckets() {
        let templates = report_templates();
        assert_eq!(templates.len(), TEMPLATE_COUNT);
        for (index, versions) in templates.iter().enumerate() {
            for (delta, requests) in versions.iter().zip([STABLE_REQUESTS_PER_REPORT, CANARY_REQUESTS_PER_REPORT]) {
                assert_eq!(delta.requests, requests, "template {index}");
                assert_eq!(delta.latency_us.buckets.len(), BUCKETS_PER_VERSION, "template {index}");
                assert!(delta.status.status_5xx > 0 && delta.status.status_4xx > 0);
            }
            let report = Report {
                header: ReportHeader {
                    proxy_id: istio_proxy_id(index),
                    worker_id: splitmix64(index as u64),
                    seq: 7,
                    weights_version: 3,
                    counts_weights_version: 2,
                    max_hold_ms: 1_000,
                },
                versions: versions.clone(),
            };
            let mut bytes = Vec::new();
            report.encode(&mut bytes);
            // What the analyzer runs on every body: it must accept these.
            assert_eq!(Report::decode(&bytes), Ok(report.clone()));
            assert!((150..400).contains(&bytes.len()), "a report is a few hundred bytes, got {}", bytes.len());
        }
        assert_ne!(templates[0], templates[1], "templates differ");
    }

    #[test]
    fn proxy_ids_look_like_istio_sidecars_and_are_distinct() {
        let id = istio_proxy_id(70_000);
        assert!(id.starts_with("sidecar~10.2.17.112~"), "{id}");
        assert!(id.ends_with(".svc.cluster.local"), "{id}");
        assert_eq!(id.split('~').count(), 4, "{id}");
        let ids: std::collections::BTreeSet<String> = (0..20_000).map(istio_proxy_id).collect();
        assert_eq!(ids.len(), 20_000);
        assert!(ids.iter().all(|id| id.len() <= canary_protocol::report::MAX_PROXY_ID_LEN && id.len() > 60));
    }

    #[test]
    fn fleet_spreads_workers_over_ids_and_time() {
        let start = Instant::now();
        let specs = fleet(5, 100, 4, start, Duration::from_secs(2));
        assert_eq!(specs.len(), 400);
        let worker_ids: std::collections::BTreeSet<u64> = specs.iter().map(|spec| spec.worker_id).collect();
        assert_eq!(worker_ids.len(), 400);
        let proxies: std::collections::BTreeSet<&str> = specs.iter().map(|spec| &*spec.proxy_id).collect();
        assert_eq!(proxies.len(), 100);
        let first_half = specs.iter().filter(|spec| spec.start_at < start + Duration::from_secs(1)).count();
        assert!((170..230).contains(&first_half), "phases are spread evenly: {first_half} of 400 in the first half");
        assert!(specs.iter().all(|spec| spec.start_at < start + Duration::from_secs(2)));
    }

    #[test]
    fn request_is_one_http_message_with_the_report() {
        let head = b"POST /v1/filter/sync HTTP/1.1\r\ncontent-length: ";
        let report = Report {
            header: ReportHeader {
                proxy_id: "p".into(),
                worker_id: 1,
                seq: 1,
                weights_version: 0,
                counts_weights_version: 0,
                max_hold_ms: 1_000,
            },
            versions: report_templates()[0].clone(),
        };
        let request = request_bytes(head, &report);
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut parsed = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(body_start)) = parsed.parse(&request) else { panic!("a complete request") };
        let length: usize = std::str::from_utf8(parsed.headers[0].value).expect("ascii").parse().expect("number");
        assert_eq!(request.len() - body_start, length);
        assert_eq!(Report::decode(&request[body_start..]), Ok(report));
    }

    #[test]
    fn proxy_fleet_groups_the_fleets_workers_by_proxy() {
        let start = Instant::now();
        let workers = fleet(5, 100, 4, start, Duration::from_secs(2));
        let proxies = proxy_fleet(5, 100, 4, start, Duration::from_secs(2));
        assert_eq!(proxies.len(), 100);
        for (proxy, workers) in proxies.iter().zip(workers.chunks(4)) {
            let ids =
                |specs: &[WorkerSpec]| specs.iter().map(|spec| (spec.worker_id, spec.template)).collect::<Vec<_>>();
            assert_eq!(ids(&proxy.workers), ids(workers), "the same workers as the per-worker fleet");
            assert!(proxy.workers.iter().all(|spec| spec.proxy_id == proxy.workers[0].proxy_id), "one proxy id each");
        }
        let first_half = proxies.iter().filter(|proxy| proxy.start_at < start + Duration::from_secs(1)).count();
        assert!((35..65).contains(&first_half), "phases are spread evenly: {first_half} of 100 in the first half");
    }

    /// A driver's shared state for cutting requests; no runtime needed.
    fn driver(batched: bool, max_hold_ms: u32) -> Driver {
        let settings = SyncSettings {
            analyzer: SocketAddr::from(([127, 0, 0, 1], 1)),
            token: "t0k3n".to_owned(),
            report_interval: Duration::from_secs(1),
            max_hold_ms,
            connections: 1,
            batched,
        };
        Driver::new(settings, Instant::now())
    }

    /// The body of a complete request to `path` with the filter token.
    fn request_body<'r>(request: &'r [u8], path: &str) -> &'r [u8] {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(body_start)) = parsed.parse(request) else { panic!("a complete request") };
        assert_eq!((parsed.method, parsed.path), (Some("POST"), Some(path)));
        let header = |name: &str| {
            let header = parsed.headers.iter().find(|header| header.name == name).expect("the header is there");
            std::str::from_utf8(header.value).expect("ascii")
        };
        assert_eq!(header("authorization"), "Bearer t0k3n");
        let length: usize = header("content-length").parse().expect("a number");
        assert_eq!(request.len() - body_start, length, "one HTTP message, nothing after it");
        &request[body_start..]
    }

    #[test]
    fn a_proxy_sends_its_workers_reports_as_one_batch_each_with_its_seq() {
        let driver = driver(true, 750);
        let spec = proxy_fleet(3, 1, 4, Instant::now(), Duration::ZERO).remove(0);
        let ids: Vec<u64> = spec.workers.iter().map(|worker| worker.worker_id).collect();
        let mut workers: Vec<WorkerState> = spec.workers.into_iter().map(WorkerState::new).collect();
        // One worker is a report ahead, as after a restart of its VM.
        workers[2].seq = 6;
        let pending = Pending::cut(&driver.shared, &mut workers, 2);
        let body = request_body(&pending.request, SYNC_BATCH_PATH);
        let batch = canary_protocol::ReportBatch::decode(body).expect("a valid batch");
        assert_eq!(batch.max_hold_ms, 750, "the batch's hold is the workers'");
        let sent: Vec<(u64, u64)> = batch.reports.iter().map(|r| (r.header.worker_id, r.header.seq)).collect();
        assert_eq!(sent, [(ids[0], 1), (ids[1], 1), (ids[2], 7), (ids[3], 1)]);
        assert_eq!(pending.sent, sent);
        assert_eq!(pending.reported_version, 2);
        for report in &batch.reports {
            assert_eq!(report.header.proxy_id, istio_proxy_id(3));
            assert_eq!((report.header.weights_version, report.header.counts_weights_version), (2, 0));
        }
        // The next cut: every worker's next seq, the counts now under the
        // weights applied at the previous cut.
        let next = Pending::cut(&driver.shared, &mut workers, 3);
        let batch = canary_protocol::ReportBatch::decode(request_body(&next.request, SYNC_BATCH_PATH)).expect("valid");
        let seqs: Vec<u64> = batch.reports.iter().map(|report| report.header.seq).collect();
        assert_eq!(seqs, [2, 2, 8, 2]);
        assert!(batch.reports.iter().all(|report| report.header.counts_weights_version == 2));
    }

    #[test]
    fn a_worker_alone_sends_the_same_bytes_as_before_batching() {
        let driver = driver(false, 1_000);
        let spec = fleet(0, 1, 1, Instant::now(), Duration::ZERO).remove(0);
        let mut workers = vec![WorkerState::new(spec.clone())];
        let pending = Pending::cut(&driver.shared, &mut workers, 0);
        let report = Report {
            header: ReportHeader {
                proxy_id: spec.proxy_id.to_string(),
                worker_id: spec.worker_id,
                seq: 1,
                weights_version: 0,
                counts_weights_version: 0,
                max_hold_ms: 1_000,
            },
            versions: report_templates()[spec.template].clone(),
        };
        let head =
            b"POST /v1/filter/sync HTTP/1.1\r\nhost: canary-analyzer\r\ncontent-type: application/octet-stream\r\n\
                     authorization: Bearer t0k3n\r\ncontent-length: ";
        assert_eq!(pending.request, request_bytes(head, &report));
        assert_eq!(pending.sent, [(spec.worker_id, 1)]);
        assert_eq!(Report::decode(request_body(&pending.request, SYNC_PATH)), Ok(report));
    }

    #[test]
    fn a_batch_ack_must_acknowledge_every_worker_with_its_seq() {
        let sent = [(7, 3), (9, 1), (4, 12)];
        let acks = |pairs: &[(u64, u64)]| -> Vec<WorkerAck> {
            pairs.iter().map(|&(worker_id, acked_seq)| WorkerAck { worker_id, acked_seq }).collect()
        };
        assert_eq!(check_batch_ack(&sent, &acks(&sent)), Ok(()));
        let error = |pairs: &[(u64, u64)]| check_batch_ack(&sent, &acks(pairs)).expect_err("must be rejected");
        assert_eq!(error(&[(7, 3), (9, 1)]), "report 2 (worker 0x4, seq 12) not acknowledged: 2 acks for 3 reports");
        assert_eq!(error(&[(7, 3), (9, 0), (4, 12)]), "report 1: worker 0x9 sent seq 1, the analyzer acknowledged 0");
        assert_eq!(
            error(&[(7, 3), (4, 12), (9, 1)]),
            "report 1: sent worker 0x9 seq 1, the analyzer acknowledged worker 0x4 seq 12"
        );
        assert_eq!(error(&[(7, 3), (9, 1), (4, 12), (5, 1)]), "4 acks for 3 reports");
        assert!(check_batch_ack(&sent, &[]).is_err());

        // Through the whole answer, as the sync loop checks it.
        let pending = Pending { reported_version: 1, sent: sent.to_vec(), request: Vec::new() };
        let weights = Weights { weights_version: 4, canary_weight: CanaryWeight::from_bp(2_500).expect("valid") };
        let answer = |pairs: &[(u64, u64)]| BatchAck { weights, acks: acks(pairs) }.to_bytes();
        assert_eq!(pending.check(true, &answer(&sent)), Ok(weights));
        let kind = |body: &[u8]| pending.check(true, body).expect_err("must be rejected").0;
        assert_eq!(kind(&answer(&[(7, 3), (9, 1)])), FailureKind::WrongAck, "a missing worker");
        assert_eq!(kind(&answer(&[(7, 3), (9, 2), (4, 12)])), FailureKind::WrongAck, "a wrong seq");
        let single = SyncResponse { acked_seq: 3, weights }.to_bytes();
        assert_eq!(kind(&single), FailureKind::BadResponse, "a single answer to a batch");
        assert_eq!(kind(b""), FailureKind::BadResponse);

        let alone = Pending { reported_version: 1, sent: vec![(7, 3)], request: Vec::new() };
        assert_eq!(alone.check(false, &single), Ok(weights));
        let stale = SyncResponse { acked_seq: 2, weights }.to_bytes();
        assert_eq!(
            alone.check(false, &stale),
            Err((FailureKind::WrongAck, "sent seq 3, the analyzer acknowledged 2".to_owned()))
        );
    }

    #[test]
    fn parses_answers_whole_or_in_pieces() {
        let body = SyncResponse {
            acked_seq: 9,
            weights: Weights { weights_version: 2, canary_weight: CanaryWeight::from_bp(1_000).expect("valid") },
        }
        .to_bytes();
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\ndate: x\r\n\r\n",
            body.len()
        )
        .into_bytes();
        let body_start = answer.len();
        answer.extend_from_slice(&body);
        for cut in [0, 10, body_start - 1, body_start, answer.len() - 1] {
            assert_eq!(parse_response(&answer[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_response(&answer), Ok(Some(ParsedResponse { status: 200, body_start, keep_alive: true })));
        let mut extra = answer.clone();
        extra.push(b'x');
        assert!(parse_response(&extra).is_err());

        let error = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        assert_eq!(
            parse_response(error),
            Ok(Some(ParsedResponse { status: 503, body_start: error.len() - 2, keep_alive: false }))
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no content-length");
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
