//! How often a worker VM ticks.
//!
//! Why it varies: each tick wakes the worker thread and enters the VM, and
//! on the bench host that costs an idle Envoy about 0.2 ms of CPU per tick,
//! whatever the tick then does (`bench/results/2026-11-27-vm-4/candidates/`). Most
//! ticks find nothing to do. While a worker's report is in flight, the
//! analyzer's answer starts the next one, not a tick (the long-poll), and
//! new weights arrive on that open call. So a VM ticks every
//! [`BUSY_TICK_MS`] only while something waits on a tick, and otherwise at
//! [`idle_tick_ms`], as rarely as the lease allows.

use crate::reporter::lease_duration_ms;

/// The period while something waits on a tick: a sync due after a backoff,
/// reports the reporter is gathering, no reporter known yet, adopted final
/// reports to send.
pub const BUSY_TICK_MS: u64 = 200;

/// The longest idle period. What only a tick does then waits at most this
/// long: renewing the lease, flushing Envoy's counters, adopting the final
/// reports of a gone VM, noticing that a report handed to a reporter was
/// lost.
pub const MAX_IDLE_TICK_MS: u64 = 1_000;

/// The idle period at a report interval: a third of the lease, so that a
/// reporter renews it at least twice before it would lapse, within
/// [`BUSY_TICK_MS`]..=[`MAX_IDLE_TICK_MS`].
pub fn idle_tick_ms(report_interval_ms: u64) -> u64 {
    (lease_duration_ms(report_interval_ms) / 3).clamp(BUSY_TICK_MS, MAX_IDLE_TICK_MS)
}

/// What a VM waits for that only a tick brings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waiting {
    /// The worker has no sync open: its next one starts at a tick, after a
    /// backoff or the rest of the report interval.
    pub sync_not_open: bool,
    /// Batched mode with no reporter known: the lease is read at ticks.
    pub no_reporter: bool,
    /// The reporter holds reports that no open batch carries: it is
    /// gathering the other workers' reports, or backing off after a
    /// failure, and sends them at a tick.
    pub reports_waiting: bool,
    /// Final reports adopted from gone VMs wait to be sent.
    pub adopted_waiting: bool,
}

impl Waiting {
    /// The period this VM wants. `at_tick`: judged at the end of a tick.
    /// Away from a tick, reports the reporter holds do not count: in
    /// batched mode every answer leaves the reporter holding its own
    /// worker's next report for the milliseconds until the other workers'
    /// arrive, and shortening the period for that would add a tick to every
    /// report cycle. A tick that still finds reports waiting shortens it.
    pub fn period_ms(self, at_tick: bool, report_interval_ms: u64) -> u64 {
        let busy = self.sync_not_open || self.no_reporter || self.adopted_waiting || (at_tick && self.reports_waiting);
        if busy { BUSY_TICK_MS } else { idle_tick_ms(report_interval_ms) }
    }
}

/// The period to set now, if it should change from `current_ms` (0: none
/// set yet). Setting a period restarts Envoy's tick timer, so away from a
/// tick the period only ever shortens: lengthened between ticks, again and
/// again, it would keep postponing the next tick, and a reporter's lease
/// could lapse. At a tick the timer has just fired, so any change is safe.
pub fn period_change(current_ms: u64, wanted_ms: u64, at_tick: bool) -> Option<u64> {
    let change = current_ms == 0 || (wanted_ms != current_ms && (at_tick || wanted_ms < current_ms));
    change.then_some(wanted_ms)
}
