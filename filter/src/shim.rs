//! proxy-wasm glue: root context per worker VM, one HTTP context per request.
//!
//! Host calls go through `proxy_wasm::hostcalls`, whose functions return
//! `Result`, rather than the trait helpers, which `unwrap()` and would trap
//! the VM on a host error.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use canary_protocol::{BatchAck, StatusClass, SyncResponse, Version, cookie_value};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::config::{DEFAULT_ROUTE_HEADER, FilterConfig, StickyKey, VersionOverride};
use crate::mailbox::{Adopted, FinalReports, MAILBOX_QUEUE};
use crate::reporter::{
    BatchKind, Handed, LEASE_KEY, Lease, LeaseAction, REPORT_MESSAGE_TAG, ReportMessage, Reporter, WEIGHTS_ONLY_SEQ,
    lease_action, lease_duration_ms, must_hand_over_again,
};
use crate::ticks::{Waiting, period_change};
use crate::worker::{SyncFailure, SyncOutcome, Worker};

const SYNC_PATH: &str = "/v1/filter/sync";
const SYNC_BATCH_PATH: &str = "/v1/filter/sync-batch";
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
    /// The tick period set, 0 before the first (`crate::ticks`).
    tick_period_ms: u64,
    /// Batched mode (`batch_reports`); `None` sends this worker's own syncs.
    batched: Option<Batched>,
    /// The final-reports queue (`crate::mailbox`), in both modes; `None`
    /// until configured, or if Envoy would not register it.
    mailbox: Option<Mailbox>,
}

/// A VM's side of the final-reports queue: where it leaves its own last
/// reports when torn down, and the reports of gone VMs it adopted.
struct Mailbox {
    /// The same token in every VM with this `vm_id`.
    queue_id: u32,
    adopted: Adopted,
    /// The batch call carrying adopted reports, while open.
    call: Option<u32>,
    /// Scratch for messages and batch bodies, kept to reuse its capacity.
    scratch: Vec<u8>,
}

/// A VM's part in batched reporting (see `crate::reporter`).
struct Batched {
    /// This VM's shared queue: acknowledgements arrive here, and reports
    /// while this VM is the reporter.
    queue_id: u32,
    role: Role,
    reporter: Reporter,
    /// The batch calls in flight, if this VM sent them: the held one and
    /// the quick one (`crate::reporter::BatchKind`).
    held_call: Option<u32>,
    quick_call: Option<u32>,
    /// This worker's sync in flight went directly (no reporter yet), so
    /// Envoy's call timeout ends it, not [`CanaryRoot::expire_batched_sync`].
    direct_in_flight: bool,
    /// Where this worker's report in flight was handed, while it waits
    /// for the reporter's acknowledgement.
    handed: Option<Handed>,
    /// Scratch for messages and batch bodies, kept to reuse its capacity.
    scratch: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Holds the lease: collects reports and sends the batches.
    Reporter,
    /// Sends its reports to the reporter's queue.
    Worker { reporter_queue: u32 },
    /// Could not read or take the lease yet; reports wait for the next tick.
    Unknown,
}

impl Role {
    /// Where a report handed over now would go; `None`: directly.
    fn hand_to(self) -> Option<Handed> {
        match self {
            Role::Reporter => Some(Handed::Own),
            Role::Worker { reporter_queue } => Some(Handed::Queue(reporter_queue)),
            Role::Unknown => None,
        }
    }
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
            tick_period_ms: 0,
            batched: None,
            mailbox: None,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts this worker's next sync: through the reporter in batched mode,
    /// else (and always while shutting down) as its own HTTP call.
    fn start_sync(&mut self) {
        if self.batched.is_some() && !self.shutting_down {
            self.start_batched_sync();
        } else {
            self.start_direct_sync();
        }
    }

    fn start_direct_sync(&mut self) {
        let Some(configured) = self.configured.clone() else { return };
        let now_ms = self.now_ms();
        let config = &configured.config;
        let mut worker = configured.worker.borrow_mut();
        let headers = configured.call_headers(SYNC_PATH);
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
        let batch_failures = self.batched.as_ref().map_or(0, |batched| batched.reporter.batches_failed_total());
        let failures = worker.sync_failures_total() + batch_failures;
        // Totals only grow; saturating keeps a slip from wrapping into a
        // huge increment.
        let delta = failures.saturating_sub(self.flushed_sync_failures);
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

    /// Sets the tick period this VM's state wants (`crate::ticks`): short
    /// while something waits on a tick, long while the open call drives the
    /// reports. `at_tick`: called at the end of a tick.
    fn update_tick_period(&mut self, at_tick: bool) {
        let Some(configured) = &self.configured else { return };
        let waiting = Waiting {
            sync_not_open: !configured.worker.borrow().sync_in_flight(),
            no_reporter: self.batched.as_ref().is_some_and(|batched| batched.role == Role::Unknown),
            reports_waiting: self
                .batched
                .as_ref()
                .is_some_and(|batched| batched.role == Role::Reporter && batched.reporter.has_waiting()),
            adopted_waiting: self.mailbox.as_ref().is_some_and(|mailbox| !mailbox.adopted.is_empty()),
        };
        let wanted_ms = waiting.period_ms(at_tick, u64::from(configured.config.report_interval_ms));
        if let Some(period_ms) = period_change(self.tick_period_ms, wanted_ms, at_tick)
            && hostcalls::set_tick_period(Duration::from_millis(period_ms)).is_ok()
        {
            self.tick_period_ms = period_ms;
        }
    }
}

impl Context for CanaryRoot {
    /// Envoy is tearing the VM down (the listener or filter config that
    /// owns it was removed or replaced, or Envoy is shutting down). Counts
    /// the analyzer has not acknowledged would die with the VM, so the VM
    /// leaves them in the final-reports queue for another VM to send
    /// (`crate::mailbox`: Envoy 1.40 destroys a replaced VM as soon as this
    /// returns), and also asks Envoy to wait (returns false) while it sends
    /// them in a final sync, calling `done()` when that ends (see
    /// `continue_shutdown`). The analyzer counts whichever copy comes first.
    fn on_done(&mut self) -> bool {
        let Some(configured) = self.configured.clone() else { return true };
        self.shutting_down = true;
        if let Some(batched) = &self.batched {
            // Hand the reporter's role over at once rather than after the
            // lease expires, and send this worker's report itself: the
            // final sync goes direct (see `start_sync`). A direct sync
            // already in flight ends the shutdown with its answer, as in
            // per-worker mode.
            let direct_in_flight = batched.direct_in_flight;
            self.release_lease();
            if !direct_in_flight {
                configured.worker.borrow_mut().abandon_sync();
            }
        }
        configured.worker.borrow_mut().stop_holding();
        let (in_report, accumulating) = configured.worker.borrow().unacknowledged_requests();
        let at_stake = in_report + accumulating > 0;
        // Envoy may destroy this VM as soon as this returns (it does when
        // it replaces the VM), so the last counts go into the mailbox
        // first, which outlives the VM; the final sync below is a second
        // copy, for the teardowns Envoy waits for. Adopted reports not yet
        // acknowledged go back for another VM.
        let mailed = at_stake && self.mail_final_reports(&configured);
        self.put_back_adopted();
        let (in_flight, unreported) = {
            let worker = configured.worker.borrow();
            (worker.sync_in_flight(), worker.has_unreported_counts())
        };
        // The numbers make a loss at shutdown measurable from Envoy's log.
        log(
            LogLevel::Info,
            &format!(
                "VM shutting down with requests not yet acknowledged by the analyzer: {in_report} in the report \
                 in flight, {accumulating} accumulating{}{}",
                if mailed { "; left in the final-reports queue" } else { "" },
                if at_stake { "; sending them in a final sync" } else { "" }
            ),
        );
        // Now too, not only when the final sync ends: a VM Envoy replaces
        // never gets there, and its Envoy counters would miss the requests
        // since the last tick.
        self.flush_metrics();
        if !at_stake {
            // An open long-poll carrying an empty report loses nothing.
            return true;
        }
        if in_flight {
            // Its answer continues the shutdown.
            return false;
        }
        if !unreported {
            return true;
        }
        self.start_sync();
        let in_flight = configured.worker.borrow().sync_in_flight();
        if !in_flight {
            self.flush_metrics();
        }
        !in_flight
    }

    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if self.mailbox.as_ref().is_some_and(|mailbox| mailbox.call == Some(token_id)) {
            self.finish_adopted_call(num_headers, body_size);
            return;
        }
        let batch = self.batched.as_ref().and_then(|batched| {
            if batched.held_call == Some(token_id) {
                Some(BatchKind::Held)
            } else if batched.quick_call == Some(token_id) {
                Some(BatchKind::Quick)
            } else {
                None
            }
        });
        if let Some(kind) = batch {
            self.finish_batch_call(kind, num_headers, body_size);
            return;
        }
        let Some(configured) = self.configured.clone() else { return };
        if let Some(batched) = self.batched.as_mut() {
            batched.direct_in_flight = false;
        }
        let now_ms = self.now_ms();
        let result = read_sync_response(num_headers, body_size);
        let failure = result.as_ref().err().cloned();
        let outcome = configured.worker.borrow_mut().finish_sync(now_ms, result);
        self.after_sync(&configured, outcome, failure);
    }
}

impl CanaryRoot {
    /// What follows every finished sync, whether its answer came as this
    /// worker's own HTTP response or through the reporter: logs, gauges,
    /// the shutdown's next step, and the next sync when it is due at once.
    fn after_sync(&mut self, configured: &Configured, outcome: SyncOutcome, failure: Option<SyncFailure>) {
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
        // A failed sync, or one answered early, waits on a tick.
        self.update_tick_period(false);
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

/// Batched reporting (`batch_reports`): the lease, the worker's side and the
/// reporter's side. The rules are in `crate::reporter`; this moves bytes.
impl CanaryRoot {
    /// Turns batched mode on or off, as the configuration says.
    fn set_batched(&mut self, on: bool) {
        let Some(configured) = self.configured.clone() else { return };
        if !on {
            configured.worker.borrow_mut().set_batched(false);
            self.release_lease();
            if self.batched.take().is_some() {
                // A report waiting on the reporter would otherwise wait for
                // ever: direct syncs get their timeout from Envoy.
                configured.worker.borrow_mut().abandon_sync();
            }
            return;
        }
        if self.batched.is_some() {
            return;
        }
        let worker_id = configured.worker.borrow().worker_id();
        match hostcalls::register_shared_queue(&format!("canary_split/{worker_id:016x}")) {
            Ok(queue_id) => {
                self.batched = Some(Batched {
                    queue_id,
                    role: Role::Unknown,
                    reporter: Reporter::new(configured.config.report_interval_ms),
                    held_call: None,
                    quick_call: None,
                    direct_in_flight: false,
                    handed: None,
                    scratch: Vec::new(),
                });
                configured.worker.borrow_mut().set_batched(true);
                self.refresh_lease(false);
            }
            Err(status) => log(
                LogLevel::Warn,
                &format!("batch_reports: cannot register a shared queue ({status:?}); this worker syncs directly"),
            ),
        }
    }

    /// Reads the lease, then renews or follows it, and takes it when
    /// `may_take`. Only a tick may take it: Envoy configures a base VM on
    /// the main thread that never ticks, and whose queue's messages reach
    /// the main thread's root context instead, so a VM that took the lease
    /// before its first tick could be one that never sends a batch.
    fn refresh_lease(&mut self, may_take: bool) {
        let Some(configured) = self.configured.clone() else { return };
        let Some(batched) = self.batched.as_mut() else { return };
        let worker_id = configured.worker.borrow().worker_id();
        let interval_ms = u64::from(configured.config.report_interval_ms);
        let now_unix_ms = unix_now_ms();
        let role = match hostcalls::get_shared_data(LEASE_KEY) {
            Err(_) => Role::Unknown,
            Ok((value, cas)) => {
                match lease_action(value.as_deref().and_then(Lease::from_bytes), worker_id, now_unix_ms) {
                    LeaseAction::Follow { queue_token } => Role::Worker { reporter_queue: queue_token },
                    LeaseAction::Take if !may_take => Role::Unknown,
                    LeaseAction::Renew | LeaseAction::Take => {
                        let lease = Lease {
                            owner_worker_id: worker_id,
                            queue_token: batched.queue_id,
                            expires_at_unix_ms: now_unix_ms + lease_duration_ms(interval_ms),
                        };
                        // A CAS mismatch means another VM wrote first; the next
                        // read says who holds it. (An absent key has no CAS, so
                        // two VMs can both take it; for one tick both send
                        // batches, which the analyzer deduplicates.)
                        match hostcalls::set_shared_data(LEASE_KEY, Some(&lease.to_bytes()), cas) {
                            Ok(()) => Role::Reporter,
                            Err(_) => Role::Unknown,
                        }
                    }
                }
            }
        };
        if role != batched.role {
            if batched.role == Role::Reporter {
                // Reports held here are re-sent by their workers after their
                // sync timeout, to the new reporter.
                batched.reporter.forget_workers();
                log(LogLevel::Info, "batch_reports: another VM took over as this Envoy's reporter");
            } else if role == Role::Reporter {
                log(LogLevel::Info, "batch_reports: this VM is now this Envoy's reporter");
            }
            batched.role = role;
        }
    }

    /// Gives the lease up if this VM holds it, so another takes over at its
    /// next tick.
    fn release_lease(&mut self) {
        let Some(configured) = self.configured.clone() else { return };
        let Some(batched) = self.batched.as_mut() else { return };
        if batched.role != Role::Reporter {
            return;
        }
        let worker_id = configured.worker.borrow().worker_id();
        if let Ok((Some(value), cas)) = hostcalls::get_shared_data(LEASE_KEY)
            && Lease::from_bytes(&value).is_some_and(|lease| lease.owner_worker_id == worker_id)
        {
            let expired = Lease { owner_worker_id: worker_id, queue_token: batched.queue_id, expires_at_unix_ms: 0 };
            let _ = hostcalls::set_shared_data(LEASE_KEY, Some(&expired.to_bytes()), cas);
        }
        batched.role = Role::Unknown;
    }

    /// The worker's side: hands the report to the reporter (this VM's own
    /// table when it is the reporter, else the reporter's queue). With no
    /// reporter yet (the first report after configuration, or no VM has
    /// ticked since the lease expired) the report goes directly, as in
    /// per-worker mode, so the first weights never wait for an election.
    fn start_batched_sync(&mut self) {
        let Some(configured) = self.configured.clone() else { return };
        if self.batched.as_ref().is_some_and(|batched| batched.role == Role::Unknown) {
            self.refresh_lease(false);
        }
        if self.batched.as_ref().is_some_and(|batched| batched.role == Role::Unknown) {
            self.start_direct_sync();
            // Only a call Envoy took is ended by Envoy's timeout; a failed
            // dispatch has already been counted and backs off.
            let in_flight = configured.worker.borrow().sync_in_flight();
            if let Some(batched) = self.batched.as_mut() {
                batched.direct_in_flight = in_flight;
                batched.handed = None;
            }
            return;
        }
        let now_ms = self.now_ms();
        let Some(batched) = self.batched.as_mut() else { return };
        batched.direct_in_flight = false;
        batched.handed = batched.role.hand_to();
        let failure = {
            let mut worker = configured.worker.borrow_mut();
            worker.begin_sync(now_ms);
            let worker_id = worker.worker_id();
            let Some((seq, weights_version, report)) = worker.unacked_report() else { return };
            let message = ReportMessage { queue_token: batched.queue_id, worker_id, seq, weights_version, report };
            match batched.role {
                Role::Reporter => {
                    batched.reporter.receive(message, now_ms);
                    None
                }
                Role::Worker { reporter_queue } => {
                    batched.scratch.clear();
                    message.encode(&mut batched.scratch);
                    hostcalls::enqueue_shared_queue(reporter_queue, Some(&batched.scratch))
                        .err()
                        .map(|_| SyncFailure::NoReporter)
                }
                Role::Unknown => Some(SyncFailure::NoReporter),
            }
        };
        if let Some(failure) = failure {
            if let Some(batched) = self.batched.as_mut() {
                batched.handed = None;
            }
            let outcome = configured.worker.borrow_mut().finish_sync(now_ms, Err(failure.clone()));
            self.after_sync(&configured, outcome, Some(failure));
            return;
        }
        self.send_batch_if_due(false);
    }

    /// A report handed to a reporter that no longer holds the lease is
    /// handed over again at once (see `crate::reporter::must_hand_over_again`):
    /// the old reporter's VM or root context is being torn down, and waiting
    /// for the sync timeout would stall this worker's reports, and a new
    /// VM's first weights, for seconds. The report keeps its seq.
    fn hand_over_again_if_reporter_moved(&mut self) {
        let Some(configured) = self.configured.clone() else { return };
        let Some(batched) = self.batched.as_mut() else { return };
        let Some(handed) = batched.handed else { return };
        if batched.direct_in_flight || !configured.worker.borrow().sync_in_flight() {
            return;
        }
        if !must_hand_over_again(handed, batched.role.hand_to()) {
            return;
        }
        batched.handed = None;
        configured.worker.borrow_mut().abandon_sync();
        // A tick-rate event only when the lease moves.
        log(LogLevel::Info, "batch_reports: the reporter changed; handing the report in flight to the new one");
    }

    /// A report the reporter never acknowledged within the sync timeout
    /// fails, so that it is re-sent (Envoy's call timeout does this for a
    /// worker's own call).
    fn expire_batched_sync(&mut self) {
        let Some(configured) = self.configured.clone() else { return };
        if self.batched.as_ref().is_some_and(|batched| batched.direct_in_flight) {
            return;
        }
        let now_ms = self.now_ms();
        let (outcome, failure) = {
            let mut worker = configured.worker.borrow_mut();
            if !worker.sync_timed_out(now_ms) {
                return;
            }
            let failure = SyncFailure::Timeout { open_ms: worker.sync_open_ms(now_ms) };
            (worker.finish_sync(now_ms, Err(failure.clone())), failure)
        };
        self.after_sync(&configured, outcome, Some(failure));
    }

    /// The worker's side: an acknowledgement from the reporter, or weights
    /// it pushed ([`WEIGHTS_ONLY_SEQ`]). An acknowledgement for a seq this
    /// worker is not waiting on (a late answer to a report it has re-sent
    /// since) is dropped.
    fn on_ack(&mut self, response: SyncResponse) {
        // A VM shutting down sends its report directly; that answer ends it.
        if self.shutting_down {
            return;
        }
        let Some(configured) = self.configured.clone() else { return };
        if response.acked_seq == WEIGHTS_ONLY_SEQ {
            let changed = configured.worker.borrow_mut().apply_pushed_weights(response.weights);
            if let Some((old, new)) = changed {
                log(
                    LogLevel::Info,
                    &format!(
                        "applied weights v{} (canary {}), was v{} (canary {}), pushed by the reporter",
                        new.weights_version, new.canary_weight, old.weights_version, old.canary_weight
                    ),
                );
                self.record_weight_gauges();
            }
            return;
        }
        let now_ms = self.now_ms();
        let outcome = {
            let mut worker = configured.worker.borrow_mut();
            if worker.unacked_seq() != Some(response.acked_seq) {
                return;
            }
            worker.finish_sync(now_ms, Ok(response))
        };
        self.after_sync(&configured, outcome, None);
    }

    /// The reporter's side: sends the batches that are due (the held one
    /// first; a quick one may follow at once).
    fn send_batch_if_due(&mut self, at_tick: bool) {
        for _ in 0..2 {
            if !self.send_one_batch_if_due(at_tick) {
                return;
            }
        }
    }

    /// Sends one batch if one is due; whether it did.
    fn send_one_batch_if_due(&mut self, at_tick: bool) -> bool {
        let Some(configured) = self.configured.clone() else { return false };
        let now_ms = self.now_ms();
        let shutting_down = self.shutting_down;
        let Some(batched) = self.batched.as_mut() else { return false };
        if batched.role != Role::Reporter || shutting_down {
            return false;
        }
        let Some(kind) = batched.reporter.send_due(now_ms, at_tick) else { return false };
        let config = &configured.config;
        let headers = configured.call_headers(SYNC_BATCH_PATH);
        // The held batch is the long-poll; a quick one asks for no hold.
        let max_hold_ms = match kind {
            BatchKind::Held => config.report_interval_ms,
            BatchKind::Quick => 0,
        };
        batched.scratch.clear();
        batched.reporter.begin_batch(kind, max_hold_ms, now_ms, &mut batched.scratch);
        let timeout = Duration::from_millis(batched.reporter.batch_timeout_ms());
        match hostcalls::dispatch_http_call(&config.analyzer_cluster, headers, Some(&batched.scratch), vec![], timeout)
        {
            Ok(token) => {
                match kind {
                    BatchKind::Held => batched.held_call = Some(token),
                    BatchKind::Quick => batched.quick_call = Some(token),
                }
                true
            }
            Err(_) => {
                batched.reporter.finish_batch(kind, now_ms, None);
                log_batch_failure(&batched.reporter, &SyncFailure::Dispatch, config);
                false
            }
        }
    }

    /// The reporter's side: the analyzer answered a batch (or the call
    /// failed). Each worker's acknowledgement goes to its queue, this VM's
    /// own straight to its worker.
    fn finish_batch_call(&mut self, kind: BatchKind, num_headers: usize, body_size: usize) {
        let Some(configured) = self.configured.clone() else { return };
        let now_ms = self.now_ms();
        let Some(batched) = self.batched.as_mut() else { return };
        match kind {
            BatchKind::Held => batched.held_call = None,
            BatchKind::Quick => batched.quick_call = None,
        }
        let deliveries = match read_call_body(num_headers, body_size)
            .and_then(|body| BatchAck::decode(&body).map_err(|error| SyncFailure::BadBody(error.to_string())))
        {
            Ok(ack) => batched.reporter.finish_batch(kind, now_ms, Some(ack)),
            Err(failure) => {
                batched.reporter.finish_batch(kind, now_ms, None);
                log_batch_failure(&batched.reporter, &failure, &configured.config);
                Vec::new()
            }
        };
        let mut own = None;
        for delivery in deliveries {
            if delivery.queue_token == batched.queue_id {
                own = Some(delivery.response);
                continue;
            }
            batched.scratch.clear();
            delivery.response.encode(&mut batched.scratch);
            // A worker whose VM is gone has no queue any more; nothing to do.
            let _ = hostcalls::enqueue_shared_queue(delivery.queue_token, Some(&batched.scratch));
        }
        if let Some(response) = own {
            self.on_ack(response);
        }
        self.send_batch_if_due(false);
    }
}

/// The final-reports queue (`crate::mailbox`): leaving this VM's last
/// reports for another VM, and sending those of gone VMs.
impl CanaryRoot {
    fn register_mailbox(&mut self, report_interval_ms: u32) {
        match hostcalls::register_shared_queue(MAILBOX_QUEUE) {
            Ok(queue_id) => {
                self.mailbox = Some(Mailbox {
                    queue_id,
                    adopted: Adopted::new(report_interval_ms),
                    call: None,
                    scratch: Vec::new(),
                })
            }
            Err(status) => log(
                LogLevel::Warn,
                &format!(
                    "cannot register the final-reports queue ({status:?}); if Envoy replaces this VM, the counts \
                     it has not reported by then are lost"
                ),
            ),
        }
    }

    /// Enqueues the worker's final reports (all its unacknowledged counts,
    /// see `Worker::final_reports`); whether they are in the mailbox.
    fn mail_final_reports(&mut self, configured: &Configured) -> bool {
        let Some(mailbox) = self.mailbox.as_mut() else { return false };
        let (worker_id, reports) = {
            let mut worker = configured.worker.borrow_mut();
            (worker.worker_id(), worker.final_reports())
        };
        if reports.is_empty() {
            return false;
        }
        mailbox.scratch.clear();
        FinalReports { worker_id, reports }.encode(&mut mailbox.scratch);
        hostcalls::enqueue_shared_queue(mailbox.queue_id, Some(&mailbox.scratch)).is_ok()
    }

    /// Returns the adopted reports not yet acknowledged to the mailbox.
    fn put_back_adopted(&mut self) {
        let Some(mailbox) = self.mailbox.as_mut() else { return };
        mailbox.call = None;
        for message in mailbox.adopted.put_back() {
            mailbox.scratch.clear();
            message.encode(&mut mailbox.scratch);
            if hostcalls::enqueue_shared_queue(mailbox.queue_id, Some(&mailbox.scratch)).is_err() {
                log(
                    LogLevel::Warn,
                    &format!(
                        "could not put {} adopted final reports back into the final-reports queue",
                        message.reports.len()
                    ),
                );
            }
        }
    }

    /// Adopts whatever gone VMs left in the mailbox (one dequeue that finds
    /// it empty per tick, never per request) and sends the adopted reports
    /// when due.
    fn drain_mailbox(&mut self) {
        if self.shutting_down || self.configured.is_none() {
            return;
        }
        let Some(mailbox) = self.mailbox.as_mut() else { return };
        while let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(mailbox.queue_id) {
            match FinalReports::decode(&bytes) {
                Ok(message) => {
                    log(
                        LogLevel::Info,
                        &format!(
                            "adopted {} final reports of worker {:016x}, whose VM was torn down",
                            message.reports.len(),
                            message.worker_id
                        ),
                    );
                    mailbox.adopted.adopt(message);
                }
                Err(error) => log(LogLevel::Warn, &format!("dropped a bad final-reports message: {error}")),
            }
        }
        self.send_adopted_if_due();
    }

    fn send_adopted_if_due(&mut self) {
        let Some(configured) = self.configured.clone() else { return };
        let now_ms = self.now_ms();
        let Some(mailbox) = self.mailbox.as_mut() else { return };
        if !mailbox.adopted.send_due(now_ms) {
            return;
        }
        let config = &configured.config;
        let headers = configured.call_headers(SYNC_BATCH_PATH);
        mailbox.scratch.clear();
        mailbox.adopted.begin_batch(&mut mailbox.scratch);
        let timeout = Duration::from_millis(mailbox.adopted.batch_timeout_ms());
        match hostcalls::dispatch_http_call(&config.analyzer_cluster, headers, Some(&mailbox.scratch), vec![], timeout)
        {
            Ok(token) => mailbox.call = Some(token),
            Err(_) => {
                mailbox.adopted.finish_batch(now_ms, None);
                log_adopted_failure(&mailbox.adopted, &SyncFailure::Dispatch, config);
            }
        }
    }

    fn finish_adopted_call(&mut self, num_headers: usize, body_size: usize) {
        let Some(configured) = self.configured.clone() else { return };
        let now_ms = self.now_ms();
        let Some(mailbox) = self.mailbox.as_mut() else { return };
        mailbox.call = None;
        match read_call_body(num_headers, body_size)
            .and_then(|body| BatchAck::decode(&body).map_err(|error| SyncFailure::BadBody(error.to_string())))
        {
            Ok(ack) => {
                let acked = mailbox.adopted.finish_batch(now_ms, Some(&ack));
                log(LogLevel::Info, &format!("the analyzer acknowledged {acked} adopted final reports"));
            }
            Err(failure) => {
                mailbox.adopted.finish_batch(now_ms, None);
                log_adopted_failure(&mailbox.adopted, &failure, &configured.config);
            }
        }
        if !self.shutting_down {
            self.send_adopted_if_due();
        }
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
            let batch_reports = config.batch_reports;
            self.configured = Some(Rc::new(configured(config, worker)));
            self.set_batched(batch_reports);
            self.update_tick_period(false);
            return true;
        }
        let proxy_id = config.proxy_id.clone().unwrap_or_else(node_id);
        let worker_id = getrandom::u64().unwrap_or_else(|_| fallback_entropy());
        let rng_seed = getrandom::u64().unwrap_or_else(|_| fallback_entropy() ^ worker_id.rotate_left(17));
        let worker =
            Worker::new(proxy_id, worker_id, rng_seed, config.report_interval_ms, config.initial_canary_weight);
        let batch_reports = config.batch_reports;
        let report_interval_ms = config.report_interval_ms;
        self.configured = Some(Rc::new(configured(config, worker)));
        self.set_batched(batch_reports);
        self.register_mailbox(report_interval_ms);
        self.metrics = define_metrics();
        self.record_weight_gauges();
        // Fetch the weights now rather than at the first tick.
        self.start_sync();
        self.update_tick_period(false);
        true
    }

    fn on_tick(&mut self) {
        self.flush_metrics();
        if self.shutting_down {
            // Syncs continue only through `continue_shutdown`.
            return;
        }
        if self.batched.is_some() {
            self.refresh_lease(true);
            self.hand_over_again_if_reporter_moved();
            self.expire_batched_sync();
        }
        let due = self.configured.as_ref().is_some_and(|c| c.worker.borrow().sync_due(self.now_ms()));
        if due {
            self.start_sync();
        }
        self.send_batch_if_due(true);
        self.drain_mailbox();
        self.update_tick_period(true);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(mailbox) = &self.mailbox
            && mailbox.queue_id == queue_id
        {
            // Final reports are taken only at a tick: Envoy configures a
            // base VM on the main thread that never ticks, and a queue's
            // wake-ups go to its last registrant, which may be that one. A
            // tick proves the VM runs; the reports wait at most one.
            return;
        }
        let mut acks = Vec::new();
        let now_ms = self.now_ms();
        while let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(queue_id) {
            if bytes.first() == Some(&REPORT_MESSAGE_TAG) {
                // A report for the reporter. One that reaches a VM that lost
                // the lease is dropped: its worker re-sends it after its
                // sync timeout, to the reporter of that time.
                if let Some(batched) = self.batched.as_mut().filter(|batched| batched.role == Role::Reporter)
                    && let Ok(message) = ReportMessage::decode(&bytes)
                {
                    batched.reporter.receive(message, now_ms);
                }
            } else if let Ok(response) = SyncResponse::decode(&bytes) {
                acks.push(response);
            }
        }
        for response in acks {
            self.on_ack(response);
        }
        self.send_batch_if_due(false);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CanaryRequest { configured: self.configured.clone(), decision: None }))
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
}

impl Context for CanaryRequest {}

/// Only the callbacks below run: `cargo xtask build` drops the exports of
/// the SDK's other per-request callbacks (`xtask/src/wasm_exports.rs`), so
/// that Envoy does not enter the VM for response headers, each body chunk
/// and trailers only to be told `Continue`. A callback added here must come
/// out of that list.
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

    fn on_log(&mut self) {
        let (Some(configured), Some((version, started))) = (&self.configured, self.decision) else { return };
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Read here rather than in a response-headers callback, which would
        // cost a VM entry per request: Envoy hands the access-log phase the
        // response headers sent, and none when no response was.
        let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse::<u16>().ok());
        let class = match status {
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

impl Configured {
    /// Headers of a call to the analyzer on `path`: both sync endpoints
    /// take the same ones.
    fn call_headers<'c>(&'c self, path: &'c str) -> Vec<(&'c str, &'c str)> {
        let mut headers = vec![
            (":method", "POST"),
            (":path", path),
            (":authority", self.config.analyzer_authority.as_str()),
            ("content-type", "application/octet-stream"),
        ];
        if !self.config.analyzer_token.is_empty() {
            headers.push(("authorization", self.authorization.as_str()));
        }
        headers
    }
}

fn configured(config: FilterConfig, worker: Worker) -> Configured {
    let authorization = format!("Bearer {}", config.analyzer_token);
    Configured { config, authorization, worker: RefCell::new(worker) }
}

fn read_sync_response(num_headers: usize, body_size: usize) -> Result<SyncResponse, SyncFailure> {
    let body = read_call_body(num_headers, body_size)?;
    SyncResponse::decode(&body).map_err(|error| SyncFailure::BadBody(error.to_string()))
}

/// The body of a 200 answer to a call to the analyzer.
fn read_call_body(num_headers: usize, body_size: usize) -> Result<Vec<u8>, SyncFailure> {
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
    Ok(hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default())
}

/// Envoy's wall clock in Unix milliseconds: the same in every VM, so the
/// lease's expiry means the same to all of them.
fn unix_now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
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

/// Logged at the first failure of a run of batch failures, as a worker's
/// own sync failures are.
fn log_batch_failure(reporter: &Reporter, failure: &SyncFailure, config: &FilterConfig) {
    if reporter.is_first_failure() {
        log(
            LogLevel::Warn,
            &format!(
                "batched sync with analyzer cluster {:?} failed: {failure}; keeping every worker's report \
                 until it answers",
                config.analyzer_cluster
            ),
        );
    }
}

/// Logged at the first failure of a run, as a worker's own sync failures
/// are.
fn log_adopted_failure(adopted: &Adopted, failure: &SyncFailure, config: &FilterConfig) {
    if adopted.is_first_failure() {
        log(
            LogLevel::Warn,
            &format!(
                "sending adopted final reports to analyzer cluster {:?} failed: {failure}; keeping them until it \
                 answers",
                config.analyzer_cluster
            ),
        );
    }
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}
