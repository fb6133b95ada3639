//! Fault injection with real Envoy: a hung analyzer, an analyzer port closed
//! for 30 s, a filter that panics, and an Envoy hot restart. Each test
//! asserts the outcome the product promises: no request lost or failed by
//! the proxy, the split kept, and every request counted exactly once.
//!
//! The analyzer `kill -9` and restart under load is
//! `conservation::split_survives_an_analyzer_crash_and_counts_recover_exactly`.
//!
//! "Proxy-made" errors are responses without the demo backend's
//! `x-served-by` header (Envoy's local replies: no upstream, a failed
//! filter) and requests that failed below HTTP; every backend response
//! carries the header.

use std::time::{Duration, Instant};

use canary_protocol::Version;
use canary_tests::envoy::prometheus_value;
use canary_tests::paths::filter_panic_wasm;
use canary_tests::stats::{Z_99_9, binomial_interval};
use canary_tests::{Load, LoadReport, Stack, StopMode, anyhow, eventually};

use super::conservation::assert_counts_converge;
use super::{assert_all_answered, assert_confirmed, total};

/// Environment variable shortening the port-closed outage (seconds) for a
/// quick local run; the issue asks for 30 s, the default.
const OUTAGE_ENV: &str = "CANARY_TEST_OUTAGE_S";

/// A paced load: `rate` requests per second on `connections` connections
/// for at most `duration`, every outcome recorded.
fn paced(rate: f64, duration: Duration) -> Load {
    Load::requests((rate * duration.as_secs_f64()).ceil() as u64)
        .rate_per_second(rate)
        .concurrency(8)
        .max_duration(duration + Duration::from_secs(15))
        .record_each()
}

/// A load that runs until stopped (bounded at `max_duration`).
fn until_stopped(rate: f64, max_duration: Duration) -> Load {
    Load::requests(u64::MAX).rate_per_second(rate).concurrency(8).max_duration(max_duration).record_each()
}

/// Asserts no request failed in the proxy: every one got a 200 from a backend.
fn assert_no_proxy_errors(report: &LoadReport, what: &str) {
    assert_all_answered(report, &[200]);
    assert_eq!(report.proxy_replies(), 0, "{what}: Envoy answered itself: {:?}", report.served_by);
    assert!(report.sent > 0, "{what}: nothing sent");
}

/// Asserts the canary share of `report` is within the 99.9% binomial
/// interval of `weight` (a fraction).
fn assert_share(report: &LoadReport, weight: f64, what: &str) {
    let answered = report.served_by("stable") + report.served_by("canary");
    let share = report.served_by("canary") as f64 / answered as f64;
    let (low, high) = binomial_interval(weight, answered, Z_99_9);
    eprintln!(
        "{what}: canary share {:.2}% of {answered} (99.9% interval {:.2}%..{:.2}%)",
        share * 100.0,
        low * 100.0,
        high * 100.0
    );
    assert!((low..=high).contains(&share), "{what}: canary share {share} outside [{low}, {high}]");
}

async fn envoy_metric(stack: &Stack, name: &str) -> f64 {
    let text = stack.envoy_prometheus().await.expect("envoy stats");
    prometheus_value(&text, name).unwrap_or(0.0)
}

/// The analyzer accepts connections and never answers. The filters' sync
/// calls hang until their timeout (report interval 250 ms + 5 s slack);
/// requests never wait for a sync, so the split and the latency must not
/// change, and the timeouts are counted in `canary_split_sync_timeouts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_analyzer_keeps_weights_and_latency_and_counts_sync_timeouts() {
    let mut stack = super::stack().start().await.expect("stack starts");
    let answer = stack.set_weight(30.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let rate = 200.0;
    let window = Duration::from_millis(2_500);
    let quantiles = |report: &LoadReport| {
        let at = |quantile| report.latency_quantile(quantile).expect("latencies recorded");
        (at(0.50), at(0.99))
    };

    // Latency is compared window by window: two baseline windows (their
    // worst percentiles) against three windows while hung (their best). A
    // request path that waited on the hung analyzer would hold requests
    // for up to the 5.25 s sync timeout in every window, so even the best
    // one would show it. Scheduler noise on a shared 2-core machine hits
    // windows at random (measured here: p99 33 ms -> 98 ms in one window
    // with fuzzers and a soak running), so the best window is the fair
    // measure. The bound, max(2x, +20 ms), tolerates what such a machine
    // does to a loopback request anyway: a doubling of millisecond
    // percentiles, or two 10 ms scheduler slices.
    let mut baseline = (Duration::ZERO, Duration::ZERO);
    for _ in 0..2 {
        let before = stack.load(paced(rate, window)).await;
        assert_no_proxy_errors(&before, "before the hang");
        let (p50, p99) = quantiles(&before);
        baseline = (baseline.0.max(p50), baseline.1.max(p99));
    }
    let timeouts_before = envoy_metric(&stack, "canary_split_sync_timeouts").await;

    let hung = stack.hang_analyzer().await.expect("hang the analyzer");
    // Three windows: 7.5 s, longer than every open sync's 5.25 s timeout.
    let mut best = (Duration::MAX, Duration::MAX);
    let (mut canary, mut answered) = (0, 0);
    for _ in 0..3 {
        let during = stack.load(paced(rate, window)).await;
        assert_no_proxy_errors(&during, "analyzer hung");
        let (p50, p99) = quantiles(&during);
        eprintln!("analyzer hung: window p50 {p50:?} p99 {p99:?}");
        best = (best.0.min(p50), best.1.min(p99));
        canary += during.served_by("canary");
        answered += during.served_by("canary") + during.served_by("stable");
    }
    assert!(hung.accepted_connections() > 0, "no filter connected to the hung analyzer");
    let share = canary as f64 / answered as f64;
    let (low, high) = binomial_interval(0.30, answered, Z_99_9);
    eprintln!("analyzer hung: canary share {:.2}% of {answered} (99.9% interval {low:.4}..{high:.4})", share * 100.0);
    assert!((low..=high).contains(&share), "split while hung {share} outside [{low}, {high}]");
    assert_eq!(envoy_metric(&stack, "canary_split_weight_bp").await, 3_000.0, "weights kept");

    let ((p50_before, p99_before), (p50_during, p99_during)) = (baseline, best);
    eprintln!(
        "analyzer hung: latency p50 {p50_before:?} -> {p50_during:?}, p99 {p99_before:?} -> {p99_during:?} \
         at {rate} req/s; {} connections held",
        hung.accepted_connections()
    );
    let bound = |before: Duration| (before * 2).max(before + Duration::from_millis(20));
    assert!(p50_during <= bound(p50_before), "p50 rose from {p50_before:?} to {p50_during:?}");
    assert!(p99_during <= bound(p99_before), "p99 rose from {p99_before:?} to {p99_during:?}");

    let timeouts = eventually!("the filters count their sync timeouts", {
        let timeouts = envoy_metric(&stack, "canary_split_sync_timeouts").await;
        anyhow::ensure!(timeouts > timeouts_before, "canary_split_sync_timeouts = {timeouts}");
        Ok(timeouts)
    });
    eprintln!("analyzer hung: canary_split_sync_timeouts {timeouts_before} -> {timeouts}");

    hung.stop().await;
    stack.start_analyzer_again().await.expect("analyzer starts again on its port");
    assert_counts_converge(&stack).await;
}

/// Nothing listens on the analyzer's port for 30 s (override with
/// `CANARY_TEST_OUTAGE_S`), under steady load: the filters keep their
/// weights (fail-static) and no request fails; then the analyzer comes back
/// on the same port and state, the reports resume and every request is
/// counted exactly once. This is the long test of the suite (~35 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyzer_port_closed_for_30_s_is_fail_static_then_recovers() {
    let outage = Duration::from_secs(std::env::var(OUTAGE_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(30));
    let mut stack = super::stack().start().await.expect("stack starts");
    let answer = stack.set_weight(30.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let weights_version = answer["weights_version"].clone();
    let failures_before = envoy_metric(&stack, "canary_split_sync_failures").await;

    let load = stack.start_background_load(until_stopped(150.0, outage + Duration::from_secs(40)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.stop_analyzer(StopMode::Terminate).await.expect("stop the analyzer");
    let closed_at = Instant::now();
    assert!(
        tokio::net::TcpStream::connect(stack.analyzer_address()).await.is_err(),
        "something still listens on the analyzer's port"
    );
    tokio::time::sleep(outage).await;
    let failures_during = envoy_metric(&stack, "canary_split_sync_failures").await;
    stack.start_analyzer_again().await.expect("analyzer starts again on its port");
    eprintln!("analyzer port closed for {:?}", closed_at.elapsed());
    // Reports resume: every VM syncs again and applies the same weights.
    let view = stack
        .wait_for_data_plane(stack.concurrency() + 1, Instant::now() + canary_tests::patience())
        .await
        .expect("filters report again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;

    assert_no_proxy_errors(&report, "analyzer port closed");
    assert_share(&report, 0.30, "analyzer port closed");
    assert!(failures_during > failures_before, "sync failures not counted: {failures_before} -> {failures_during}");
    assert_eq!(view["weights_version"], weights_version, "weights version kept: {view}");
    assert_eq!(view["canary_weight_bp"], 3_000, "weight kept: {view}");
    assert_eq!(envoy_metric(&stack, "canary_split_weight_bp").await, 3_000.0, "filters kept the weight");
    eprintln!("analyzer port closed: {} requests, sync failures {failures_before} -> {failures_during}", report.sent);
    assert!(stack.envoy_log().contains("reporting resumed"), "recovery is logged");
    assert_counts_converge(&stack).await;
}

/// A filter that panics (the `test-panic` build; a request carrying
/// `x-canary-test-panic` makes it panic). With the bootstrap's
/// `failure_policy: FAIL_OPEN`, Envoy answers the panicking request with a
/// local 503 and skips the failed filter afterwards; the early header
/// mutation has already removed any client route header, so the route table
/// sends everything to stable, even at a 100% canary weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_filter_fails_open_to_stable() {
    let mut binaries = super::binaries();
    binaries.filter_wasm = filter_panic_wasm().expect("test-panic filter build");
    let stack = super::stack().binaries(binaries).start().await.expect("stack starts");
    let answer = stack.set_weight(100.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let healthy = stack.load(Load::requests(200)).await;
    assert_all_answered(&healthy, &[200]);
    assert_eq!(healthy.served_by("canary"), 200, "the test build splits like the real one");

    // 16 connections: both workers get panicking requests.
    let panicking = stack.load(Load::requests(400).header("x-canary-test-panic", "1")).await;
    let workers = stack.concurrency() as u64;
    eprintln!("panicking filter: {:?} {:?}", panicking.status, panicking.served_by);
    assert_eq!(panicking.transport_errors, 0, "{:?}", panicking.first_error);
    assert_eq!(panicking.served_by("canary"), 0, "a failed filter must never route to canary");
    // Only the request during which a worker's VM panicked gets Envoy's
    // 503; each worker's VM can panic once.
    assert!(
        (1..=workers).contains(&panicking.proxy_replies()),
        "expected 1..={workers} local replies, got {:?} {:?}",
        panicking.status,
        panicking.served_by
    );
    assert_eq!(panicking.status.get(&503).copied().unwrap_or(0), panicking.proxy_replies());
    assert_eq!(panicking.served_by("stable") + panicking.proxy_replies(), 400);

    let after = stack.load(Load::requests(1_000)).await;
    assert_all_answered(&after, &[200]);
    assert_eq!(after.served_by("stable"), 1_000, "fail-open: all stable at 100% canary: {:?}", after.served_by);

    // The SDK's panic hook logs `panicked at FILE:LINE:COL:` and the
    // message on the next line; Envoy then logs the trap.
    let log = stack.envoy_log();
    let lines: Vec<&str> = log.lines().collect();
    let panics = lines
        .windows(2)
        .filter(|pair| pair[0].contains("[critical][wasm]") && pair[0].contains("panicked at"))
        .filter(|pair| pair[1].contains("test-panic build: request carried x-canary-test-panic"))
        .count();
    let traps = lines
        .iter()
        .filter(|line| line.contains("Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"))
        .count();
    eprintln!("panicking filter: {panics} panics and {traps} traps in Envoy's log");
    assert!((1..=workers as usize).contains(&panics), "panic lines in Envoy's log:\n{}", stack.describe_logs());
    assert_eq!(traps, panics, "every panic traps the VM");
    // Envoy 1.40 has no stat for a trapped VM under FAIL_OPEN (measured:
    // `wasm.canary_split.vm_reload*` only move under FAIL_RELOAD, and
    // `wasm.envoy.wasm.runtime.v8.active` does not drop), so the log above
    // is where the panic is visible.
}

/// Envoy hot restart under load: epoch 1 takes over the listen sockets, the
/// parent drains and exits. The new workers' VMs start at the initial
/// weight (0%) and must apply the analyzer's weight (here 100%, so a request
/// routed before that shows up at stable) within 1 s; no request fails, and
/// every request is counted exactly once, the parent's included.
///
/// What conservation needs from Envoy 1.40, measured: Envoy calls the
/// filter's `proxy_on_done` only after the parent's main dispatch loop has
/// exited and ends the process a few ms later without waiting for
/// `proxy_done`, so the final sync the filter starts there never completes.
/// The parent's counts are conserved only if it stops serving a report
/// interval or more before it exits: with Envoy's default drain (600 s,
/// gradual) the parent kept serving the clients' keep-alive connections
/// until `--parent-shutdown-time-s`, and lost up to 87 requests per restart
/// here (what its VMs served since their last acknowledged report; the
/// filter logs the number at shutdown). The harness therefore starts both
/// epochs with `--drain-strategy immediate --drain-time-s 1`: every
/// connection is closed after its next response, the parent is idle within
/// milliseconds, its VMs report everything in the next 3 s, and this test
/// asserts exact conservation and zero unacknowledged requests in the
/// parent's shutdown lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_hot_restart_reacquires_weights_within_1_s_and_conserves_counts() {
    const PARENT_SHUTDOWN_TIME_S: u32 = 3;
    let mut stack = super::stack().hot_restartable().start().await.expect("stack starts");
    let answer = stack.set_weight(100.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let vms_per_envoy = stack.concurrency() as u64 + 1;

    let load = stack.start_background_load(until_stopped(300.0, Duration::from_secs(40)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart_started = Instant::now();
    stack.hot_restart_envoy(PARENT_SHUTDOWN_TIME_S).await.expect("hot restart");
    let child_ready = Instant::now();
    // Weights re-acquired: the analyzer sees the new epoch's VMs next to
    // the parent's, all on the current weights.
    let reacquired_after = loop {
        let view = stack.rollout().await.expect("rollout");
        let plane = &view["data_plane"];
        if plane["live_workers"].as_u64() >= Some(2 * vms_per_envoy) && plane["converged"] == true {
            break child_ready.elapsed();
        }
        assert!(child_ready.elapsed() < Duration::from_secs(5), "new VMs never converged: {plane}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let parent_exit_due = child_ready + Duration::from_secs(PARENT_SHUTDOWN_TIME_S.into());
    tokio::time::sleep_until((parent_exit_due + Duration::from_secs(1)).into()).await;
    let report = load.stop().await;
    let statuses = stack.wait_for_retired_envoys(Duration::from_secs(15)).await.expect("the parent exits");
    eprintln!(
        "hot restart: epoch 1 ready {:?} after it was started, all its VMs on the weights {reacquired_after:?} \
         after that; parent exited {statuses:?}",
        child_ready - restart_started
    );
    assert!(reacquired_after <= Duration::from_secs(1), "weights re-acquired after {reacquired_after:?}");

    // At 100%, only a VM that has not applied the weights routes to stable.
    let unsynced: Vec<Duration> = report
        .outcomes
        .iter()
        .filter(|outcome| outcome.served_by.as_deref() == Some("stable"))
        .filter_map(|outcome| outcome.sent_at.map(|at| at.saturating_duration_since(child_ready)))
        .collect();
    eprintln!("hot restart: {} of {} requests routed without the weights: {unsynced:?}", unsynced.len(), report.sent);
    assert!(
        unsynced.iter().all(|after_ready| *after_ready <= Duration::from_secs(1)),
        "requests routed without the weights more than 1 s after epoch 1 was ready: {unsynced:?}"
    );
    assert_no_proxy_errors(&report, "hot restart");

    let (in_report, accumulating) = parent_shutdown_counts(&stack.retired_envoy_logs().join("\n"));
    eprintln!(
        "hot restart: the parent's VMs had {in_report:?} requests in flight and {accumulating:?} accumulating at exit"
    );
    assert_eq!(in_report.len() as u64, vms_per_envoy, "one shutdown line per parent VM");
    assert!(
        in_report.iter().chain(&accumulating).all(|requests| *requests == 0),
        "the parent still had unacknowledged requests when it exited"
    );
    // The analyzer's counts only: Envoy's own `canary_split_requests_*`
    // counters are not comparable across a hot restart, because the parent
    // hands its stats to the child periodically and its last deltas are
    // dropped when it exits (measured: 16 to 44 short of the backends).
    let [stable, canary] = stack.served().await.expect("backend stats");
    eventually!("the analyzer counted every request of both epochs", {
        let rollout = stack.rollout().await?;
        for (version, served) in [(Version::Stable, stable), (Version::Canary, canary)] {
            let counted = (total(&rollout, version, "requests"), total(&rollout, version, "errors"));
            anyhow::ensure!(
                counted == (Some(served.served), Some(served.errors)),
                "{version}: analyzer (requests, errors) {counted:?}, backend served {served:?}"
            );
        }
        Ok(())
    });
    eprintln!("hot restart: conserved exactly: stable {stable:?}, canary {canary:?}");
}

/// The `(in_report, accumulating)` numbers of each filter VM's shutdown
/// line in an Envoy log.
fn parent_shutdown_counts(log: &str) -> (Vec<u64>, Vec<u64>) {
    let number_before = |line: &str, suffix: &str| -> Option<u64> {
        let end = line.find(suffix)?;
        line[..end].rsplit(' ').next()?.parse().ok()
    };
    log.lines()
        .filter(|line| line.contains("VM shutting down with requests not yet acknowledged"))
        .filter_map(|line| {
            Some((number_before(line, " in the report in flight")?, number_before(line, " accumulating")?))
        })
        .unzip()
}
