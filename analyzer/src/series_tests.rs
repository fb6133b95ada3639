use canary_protocol::{LatencyHistogram, StatusCounts};

use super::*;

/// Cumulative counts of one version: `ok` 2xx and `failed` 5xx requests,
/// with `latencies_ms` recorded (each latency once per given count).
fn counts(ok: u64, failed: u64, latencies_ms: &[(u64, u64)]) -> VersionCounts {
    let mut latency_us = LatencyHistogram::new();
    for &(latency_ms, count) in latencies_ms {
        latency_us.record_n_us(latency_ms * 1_000, count);
    }
    VersionCounts {
        requests: ok + failed,
        status: StatusCounts { status_2xx: ok, status_5xx: failed, ..StatusCounts::default() },
        latency_us,
    }
}

fn reading(at_unix_ms: u64, canary_weight_bp: u16, stable: VersionCounts, canary: VersionCounts) -> Reading {
    Reading {
        at_unix_ms,
        weights_version: 7,
        canary_weight_bp,
        totals: [stable, canary],
        live_workers: 4,
        converged_workers: 3,
    }
}

/// Whether `got` is within the histogram layout's 1/128 relative bucket
/// width above `want` (quantiles are reported as a bucket's upper bound).
fn near(got: Option<f64>, want: f64) -> bool {
    got.is_some_and(|got| got >= want && got <= want * (1.0 + 1.0 / 128.0) + 1e-9)
}

#[test]
fn first_reading_has_weights_and_workers_but_no_rates() {
    let mut series = Series::new();
    series.record(reading(10_000, 2_500, counts(900, 0, &[(5, 900)]), counts(100, 0, &[(5, 100)])));
    let samples = series.samples_after(None);
    assert_eq!(samples.len(), 1);
    let sample = &samples[0];
    assert_eq!((sample.weights_version, sample.live_workers, sample.converged_workers), (7, 4, 3));
    assert_eq!(sample.canary.weight_percent, 25.0);
    assert_eq!(sample.stable.weight_percent, 75.0);
    // Totals since the state began say nothing about the last interval.
    assert_eq!(sample.canary.requests_per_second, None);
    assert_eq!(sample.canary.error_ratio, None);
    assert_eq!(sample.canary.p95_ms, None);
}

#[test]
fn rates_error_ratio_and_p95_come_from_the_interval_only() {
    let mut series = Series::new();
    // Before: slow, failing history that must not leak into the interval.
    series.record(reading(10_000, 1_000, counts(1_000, 0, &[(900, 1_000)]), counts(50, 50, &[(900, 100)])));
    // 2 s later: stable +400 ok at 10 ms; canary +90 ok at 20 ms and +10
    // errors at 40 ms (so 10% errors and a p95 of 40 ms).
    series.record(reading(
        12_000,
        1_000,
        counts(1_400, 0, &[(900, 1_000), (10, 400)]),
        counts(140, 60, &[(900, 100), (20, 90), (40, 10)]),
    ));
    let samples = series.samples_after(None);
    let last = samples.last().expect("two samples");
    assert_eq!(last.stable.requests_per_second, Some(200.0));
    assert_eq!(last.canary.requests_per_second, Some(50.0));
    assert_eq!(last.stable.error_ratio, Some(0.0));
    assert_eq!(last.canary.error_ratio, Some(0.1));
    assert!(near(last.stable.p95_ms, 10.0), "stable p95 {:?}", last.stable.p95_ms);
    assert!(near(last.canary.p95_ms, 40.0), "canary p95 {:?}", last.canary.p95_ms);
}

#[test]
fn an_interval_without_requests_has_no_ratio_or_p95() {
    let mut series = Series::new();
    let quiet = || counts(10, 0, &[(5, 10)]);
    series.record(reading(0, 0, quiet(), VersionCounts::default()));
    series.record(reading(2_000, 0, quiet(), VersionCounts::default()));
    let last = series.samples_after(None).pop().expect("a sample");
    assert_eq!(last.stable.requests_per_second, Some(0.0));
    assert_eq!(last.canary.requests_per_second, Some(0.0));
    assert_eq!((last.stable.error_ratio, last.stable.p95_ms), (None, None));
    assert_eq!(last.canary.weight_percent, 0.0);
    assert_eq!(last.stable.weight_percent, 100.0);
}

#[test]
fn counters_that_go_down_count_as_no_traffic() {
    let mut series = Series::new();
    series.record(reading(0, 5_000, counts(500, 5, &[(5, 505)]), counts(500, 5, &[(5, 505)])));
    series.record(reading(2_000, 5_000, counts(10, 0, &[(5, 10)]), counts(10, 0, &[(5, 10)])));
    let last = series.samples_after(None).pop().expect("a sample");
    assert_eq!(last.canary.requests_per_second, Some(0.0));
    assert_eq!(last.canary.p95_ms, None);
}

#[test]
fn keeps_fifteen_minutes_and_no_more_than_the_cap() {
    let mut series = Series::new();
    let steps = 2 * MAX_SAMPLES as u64;
    for step in 0..steps {
        series.record(reading(step * SAMPLE_INTERVAL_MS, 0, counts(step, 0, &[]), counts(0, 0, &[])));
    }
    let samples = series.samples_after(None);
    assert_eq!(samples.len(), MAX_SAMPLES);
    let newest = samples.last().expect("samples").at_unix_ms;
    let oldest = samples.first().expect("samples").at_unix_ms;
    assert_eq!(newest, (steps - 1) * SAMPLE_INTERVAL_MS);
    assert_eq!(newest - oldest, SPAN_MS);
    // A gap longer than the span (the analyzer was stalled) drops them all
    // but the new one.
    series.record(reading(newest + SPAN_MS + 1, 0, counts(steps, 0, &[]), counts(0, 0, &[])));
    assert_eq!(series.len(), 1);
}

#[test]
fn a_clock_going_back_restarts_the_series() {
    let mut series = Series::new();
    series.record(reading(10_000, 0, counts(1, 0, &[]), counts(0, 0, &[])));
    series.record(reading(12_000, 0, counts(3, 0, &[]), counts(0, 0, &[])));
    series.record(reading(11_000, 0, counts(5, 0, &[]), counts(0, 0, &[])));
    let samples = series.samples_after(None);
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].at_unix_ms, 11_000);
    assert_eq!(samples[0].stable.requests_per_second, None);
}

#[test]
fn samples_after_returns_only_newer_samples() {
    let mut series = Series::new();
    for at_unix_ms in [1_000, 3_000, 5_000, 7_000] {
        series.record(reading(at_unix_ms, 0, counts(0, 0, &[]), counts(0, 0, &[])));
    }
    let times = |after| series.samples_after(after).iter().map(|sample| sample.at_unix_ms).collect::<Vec<_>>();
    assert_eq!(times(None), [1_000, 3_000, 5_000, 7_000]);
    assert_eq!(times(Some(3_000)), [5_000, 7_000]);
    assert_eq!(times(Some(4_000)), [5_000, 7_000]);
    assert_eq!(times(Some(7_000)), Vec::<u64>::new());
    assert_eq!(times(Some(0)), [1_000, 3_000, 5_000, 7_000]);
}

#[test]
fn parses_the_query() {
    let check = |query: Option<&str>, expected: Result<Option<u64>, &str>| {
        let got = parse_after(query).map_err(|error| error.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "query {query:?}");
    };
    check(None, Ok(None));
    check(Some(""), Ok(None));
    check(Some("after_unix_ms=1234"), Ok(Some(1_234)));
    check(Some("after_unix_ms=-1"), Err("after_unix_ms is \"-1\", must be milliseconds since the Unix epoch"));
    check(Some("after_unix_ms=1&after_unix_ms=2"), Err("after_unix_ms is given twice"));
    check(Some("since=1"), Err("unknown query parameter \"since\"; expected after_unix_ms"));
}

/// Through the whole router: the page is open, the series is a read route
/// (behind the read token here), and the sampler fills it from the start.
#[tokio::test]
async fn the_series_route_is_read_gated_and_filled_by_the_sampler() {
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;

    use crate::config::{Config, ReadAccess};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::with_state_dir(dir.path().join("state"));
    config.filter_token = Some("filter-secret".into());
    config.sre_token = Some("sre-secret".into());
    config.read_token = Some("read-secret".into());
    config.read_access = ReadAccess::Token;
    let state = AppState::open(config).expect("state opens");
    let app = crate::Api::new(state.clone());
    let get = |uri: &str, token: Option<&str>| {
        let mut request = Request::get(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::empty()).expect("request");
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = to_bytes(response.into_body(), usize::MAX).await.expect("body");
            (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default())
        }
    };
    assert_eq!(get("/", None).await.0, StatusCode::OK, "the page holds no data and needs no token");
    assert_eq!(get("/v1/series", None).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = get("/v1/series?since=1", Some("read-secret")).await;
    assert_eq!((status, &body["field"]), (StatusCode::BAD_REQUEST, &serde_json::json!("since")), "{body}");
    // The sampler's first tick is immediate; give the spawned task a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, body) = get("/v1/series", Some("read-secret")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["interval_ms"], SAMPLE_INTERVAL_MS);
        assert_eq!(body["span_ms"], SPAN_MS);
        if let Some(first) = body["samples"].as_array().and_then(|samples| samples.first()) {
            assert_eq!(first["canary"]["weight_percent"], 0.0, "{body}");
            assert_eq!(first["stable"]["weight_percent"], 100.0, "{body}");
            assert_eq!(first["live_workers"], 0, "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no sample after 5 s: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    state.shutdown().await;
}
