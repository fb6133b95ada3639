//! The tick period: fast while something waits on a tick, slow otherwise,
//! and never lengthened between ticks.

use canary_filter::reporter::lease_duration_ms;
use canary_filter::ticks::{BUSY_TICK_MS, MAX_IDLE_TICK_MS, Waiting, idle_tick_ms, period_change};

#[test]
fn the_idle_tick_renews_a_lease_at_least_twice_before_it_lapses() {
    assert_eq!(idle_tick_ms(1_000), MAX_IDLE_TICK_MS, "the default interval: one tick a second");
    assert_eq!(idle_tick_ms(60_000), MAX_IDLE_TICK_MS);
    assert_eq!(idle_tick_ms(250), 333, "a 1 s lease: a third of it");
    assert_eq!(idle_tick_ms(100), 333);
    for interval_ms in [100, 250, 333, 334, 500, 999, 1_000, 5_000, 60_000] {
        let idle_ms = idle_tick_ms(interval_ms);
        assert!((BUSY_TICK_MS..=MAX_IDLE_TICK_MS).contains(&idle_ms), "{interval_ms}: {idle_ms}");
        assert!(2 * idle_ms < lease_duration_ms(interval_ms), "{interval_ms}: {idle_ms}");
    }
}

#[test]
fn anything_that_waits_on_a_tick_makes_it_busy() {
    let idle = Waiting::default();
    assert_eq!(idle.period_ms(true, 1_000), 1_000, "an open call drives the reports");
    assert_eq!(idle.period_ms(false, 1_000), 1_000);
    let each = [
        Waiting { sync_not_open: true, ..idle },
        Waiting { no_reporter: true, ..idle },
        Waiting { adopted_waiting: true, ..idle },
    ];
    for waiting in each {
        assert_eq!(waiting.period_ms(true, 1_000), BUSY_TICK_MS, "{waiting:?}");
        assert_eq!(waiting.period_ms(false, 1_000), BUSY_TICK_MS, "{waiting:?}");
    }
}

#[test]
fn reports_the_reporter_holds_count_only_at_a_tick() {
    let gathering = Waiting { reports_waiting: true, ..Waiting::default() };
    assert_eq!(gathering.period_ms(true, 1_000), BUSY_TICK_MS, "a tick found them waiting");
    assert_eq!(
        gathering.period_ms(false, 1_000),
        1_000,
        "every answer leaves the reporter holding reports for a few ms; no extra tick per cycle"
    );
}

#[test]
fn the_period_only_shortens_between_ticks() {
    assert_eq!(period_change(0, 1_000, false), Some(1_000), "the first period is always set");
    assert_eq!(period_change(1_000, 1_000, true), None, "no host call when nothing changes");
    assert_eq!(period_change(200, 200, false), None);
    assert_eq!(period_change(1_000, 200, false), Some(200), "a failed sync must not wait a whole second");
    assert_eq!(period_change(200, 1_000, false), None, "lengthening restarts the timer: only at a tick");
    assert_eq!(period_change(200, 1_000, true), Some(1_000));
    assert_eq!(period_change(1_000, 200, true), Some(200));
}
