//! In-process API tests: requests go straight into `app(state)` with
//! `tower::ServiceExt::oneshot`; only the state directory is real.

use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use canary_protocol::{Report, ReportHeader, StatusClass, SyncResponse, VersionStats};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

use super::*;
use crate::config::Config;

const TOKEN: &str = "test-token";
const PROXY_ID: &str = "envoy-test";

struct Harness {
    // Kept for its Drop: the state directory lives as long as the harness.
    dir: TempDir,
    state: AppState,
    app: Api,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(|_| {})
    }

    fn with(adjust: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        Harness::open(dir, adjust)
    }

    /// Opens an analyzer on an existing state directory, as a restart does.
    fn open(dir: TempDir, adjust: impl FnOnce(&mut Config)) -> Harness {
        let mut config = Config::with_state_dir(dir.path().join("state"));
        config.filter_token = Some(TOKEN.to_owned());
        adjust(&mut config);
        let state = AppState::open(config).expect("state opens");
        let app = Api::new(state.clone());
        Harness { dir, state, app }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, body.to_vec())
    }

    async fn json(&self, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .expect("request");
        let (status, bytes) = self.send(request).await;
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    async fn rollout(&self) -> Value {
        let (status, value) = self.json("GET", "/v1/rollout", "").await;
        assert_eq!(status, StatusCode::OK);
        value
    }

    /// `GET /v1/workers` with `query` (`""` or `?...`), which must answer 200.
    async fn workers(&self, query: &str) -> Value {
        let (status, value) = self.json("GET", &format!("/v1/workers{query}"), "").await;
        assert_eq!(status, StatusCode::OK, "{query}: {value}");
        value
    }

    /// Syncs as a filter would and decodes the acknowledgement.
    async fn sync(&self, bytes: Vec<u8>) -> SyncResponse {
        let (status, body) = self.send(sync_request(bytes, Some(&format!("Bearer {TOKEN}")))).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        SyncResponse::decode(&body).expect("a valid sync response")
    }

    async fn metrics(&self) -> String {
        let request = Request::builder().uri("/metrics").body(Body::empty()).expect("request");
        let (status, body) = self.send(request).await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(body).expect("utf-8")
    }
}

fn sync_request(bytes: Vec<u8>, authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method("POST")
        .uri("/v1/filter/sync")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    builder.body(Body::from(bytes)).expect("request")
}

/// A worker's report: `stable_ok` fast successes on stable, one slow 5xx on
/// canary if `canary_error`.
fn report(
    worker_id: u64,
    seq: u64,
    weights_version: u64,
    max_hold_ms: u32,
    stable_ok: u64,
    canary_error: bool,
) -> Vec<u8> {
    let mut stable = VersionStats::default();
    for _ in 0..stable_ok {
        stable.record(StatusClass::Success, 200);
    }
    let mut canary = VersionStats::default();
    if canary_error {
        canary.record(StatusClass::ServerError, 40_000);
    }
    let report = Report {
        header: ReportHeader {
            proxy_id: PROXY_ID.into(),
            worker_id,
            seq,
            weights_version,
            counts_weights_version: weights_version,
            max_hold_ms,
        },
        versions: [stable.to_delta(), canary.to_delta()],
    };
    let mut bytes = Vec::new();
    report.encode(&mut bytes);
    bytes
}

fn total_requests<'a>(rollout: &'a Value, version: &str) -> &'a Value {
    &rollout["versions"][version]["total"]["requests"]
}

#[tokio::test]
async fn sync_ingests_counts_and_acks_with_the_weights_to_apply() {
    let harness = Harness::new();
    // A new filter has applied version 0; the analyzer starts at version 1,
    // so the answer is immediate even with a long hold.
    let started = Instant::now();
    let ack = harness.sync(report(0xdead_beef, 1, 0, 10_000, 3, true)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "not held: the versions differ");
    assert_eq!(ack.acked_seq, 1);
    assert_eq!(ack.weights.weights_version, 1);
    assert_eq!(ack.weights.canary_weight.bp(), 0);

    let request = sync_request(report(0xdead_beef, 2, 1, 0, 0, false), Some(&format!("bearer {TOKEN}")));
    let response = harness.app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK, "the scheme is case-insensitive");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/octet-stream");

    let rollout = harness.rollout().await;
    assert_eq!(*total_requests(&rollout, "stable"), 3);
    assert_eq!(rollout["versions"]["canary"]["total"]["errors"], 1);
    assert_eq!(rollout["versions"]["canary"]["window"]["status"]["5xx"], 1);
    let page = harness.workers("").await;
    assert_eq!((page["total"].as_u64(), &page["next"]), (Some(1), &Value::Null));
    let worker = &page["workers"][0];
    assert_eq!(worker["worker_id"], "00000000deadbeef");
    assert_eq!(worker["proxy_id"], PROXY_ID);
    assert_eq!(worker["last_seq"], 2);
    assert_eq!(worker["applied_weights_version"], 1);
    assert_eq!(worker["live"], true);
    assert_eq!(rollout["data_plane"]["converged"], true);
    assert_eq!(rollout["data_plane"]["live_proxies"], 1);
    assert_eq!(rollout["data_plane"]["lagging"], json!([]));
}

/// `report` from another proxy.
fn report_from(proxy_id: &str, worker_id: u64, weights_version: u64) -> Vec<u8> {
    let mut decoded = Report::decode(&report(worker_id, 1, weights_version, 0, 1, false)).expect("valid");
    decoded.header.proxy_id = proxy_id.to_owned();
    let mut bytes = Vec::new();
    decoded.encode(&mut bytes);
    bytes
}

/// A query value as a client writes it: everything but unreserved
/// characters percent-encoded.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// (proxy id, worker id) of every worker a page lists.
fn listed(page: &Value) -> Vec<(String, String)> {
    page["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| (w["proxy_id"].as_str().expect("proxy").to_owned(), w["worker_id"].as_str().expect("id").to_owned()))
        .collect()
}

#[tokio::test]
async fn workers_are_paged_in_proxy_order_and_the_rollout_summarises_them() {
    let harness = Harness::new();
    // Proxy ids a URL must escape, and worker ids against the proxy order.
    let proxies = ["envoy-b", "envoy a&b=c/d", "envoy-c"];
    let mut expected = Vec::new();
    for (index, proxy) in proxies.iter().enumerate() {
        for worker in 0..4u64 {
            let worker_id = 100 - index as u64 * 10 - worker;
            harness.sync(report_from(proxy, worker_id, 1)).await;
            expected.push((proxy.to_string(), format!("{worker_id:016x}")));
        }
    }
    expected.sort();

    let mut seen = Vec::new();
    let mut query = "?limit=5".to_owned();
    loop {
        let page = harness.workers(&query).await;
        assert_eq!(page["total"], 12, "{page}");
        assert!(listed(&page).len() <= 5);
        seen.extend(listed(&page));
        let Some(next) = page["next"].as_str() else { break };
        query = format!("?limit=5&after={}", query_value(next));
    }
    assert_eq!(seen, expected, "every worker once, by proxy then worker");
    assert_eq!(listed(&harness.workers("").await), expected, "the default limit takes them all");

    let only = harness.workers(&format!("?proxy={}&limit=3", query_value("envoy a&b=c/d"))).await;
    assert_eq!(listed(&only), expected[..3]);
    assert_eq!(only["total"], 4);
    assert_eq!(only["next"], format!("envoy a&b=c/d/{}", expected[2].1));
    let past_the_end = harness.workers(&format!("?after={}", query_value("envoy-c/ffffffffffffffff"))).await;
    assert_eq!((listed(&past_the_end), &past_the_end["next"]), (vec![], &Value::Null));
    assert_eq!(past_the_end["total"], 12);

    // A weight change: every worker lags until it reports the new version.
    harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 5}"#).await;
    harness.sync(report_from("envoy-c", 80, 2)).await;
    let plane = harness.rollout().await["data_plane"].clone();
    assert_eq!(
        (&plane["live_workers"], &plane["live_proxies"], &plane["workers_total"]),
        (&json!(12), &json!(3), &json!(12))
    );
    assert_eq!(
        (&plane["converged_workers"], &plane["converged"], &plane["lagging_total"]),
        (&json!(1), &json!(false), &json!(11))
    );
    let lagging: Vec<(String, String)> = plane["lagging"]
        .as_array()
        .expect("lagging")
        .iter()
        .map(|w| (w["proxy_id"].as_str().expect("proxy").to_owned(), w["worker_id"].as_str().expect("id").to_owned()))
        .collect();
    let behind: Vec<(String, String)> =
        expected.iter().filter(|(proxy, id)| !(proxy == "envoy-c" && id == "0000000000000050")).cloned().collect();
    assert_eq!(lagging, behind, "all on version 1: by proxy then worker");
}

#[tokio::test]
async fn a_re_sent_report_is_acked_but_not_counted_twice() {
    let harness = Harness::new();
    let bytes = report(7, 1, 1, 0, 5, false);
    assert_eq!(harness.sync(bytes.clone()).await.acked_seq, 1);
    assert_eq!(harness.sync(bytes).await.acked_seq, 1, "the re-send is acknowledged so the filter can drop it");
    let rollout = harness.rollout().await;
    assert_eq!(*total_requests(&rollout, "stable"), 5);
    assert_eq!(rollout["versions"]["stable"]["window"]["requests"], 5);
    let metrics = harness.metrics().await;
    assert!(metrics.contains("canary_reports_received_total 2"), "{metrics}");
    assert!(metrics.contains("canary_reports_duplicate_total 1"), "{metrics}");
    assert!(metrics.contains("canary_requests_total{version=\"stable\"} 5"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workers_with_re_sends_lose_and_double_count_nothing() {
    let harness = Harness::new();
    let workers: Vec<_> = (0..8u64)
        .map(|worker_id| {
            let app = harness.app.clone();
            tokio::spawn(async move {
                for seq in 1..=25u64 {
                    let bytes = report(worker_id, seq, 1, 0, worker_id + 1, seq.is_multiple_of(5));
                    // Every third report is sent twice, as after a lost ack.
                    let sends = if seq.is_multiple_of(3) { 2 } else { 1 };
                    for _ in 0..sends {
                        let request = sync_request(bytes.clone(), Some(&format!("Bearer {TOKEN}")));
                        let response = app.clone().oneshot(request).await.expect("infallible");
                        assert_eq!(response.status(), StatusCode::OK);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker task");
    }
    let rollout = harness.rollout().await;
    // Worker w sends w + 1 stable requests per report, 25 reports each.
    let expected_stable: u64 = (0..8u64).map(|worker_id| (worker_id + 1) * 25).sum();
    assert_eq!(*total_requests(&rollout, "stable"), expected_stable);
    assert_eq!(*total_requests(&rollout, "canary"), 8 * 5);
    assert_eq!(rollout["data_plane"]["live_workers"], 8);
    let metrics = harness.metrics().await;
    assert!(metrics.contains(&format!("canary_reports_duplicate_total {}", 8 * 8)), "{metrics}");
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_401_and_changes_nothing() {
    let harness = Harness::new();
    for authorization in
        [None, Some("Bearer wrong-token"), Some("Bearer test-toke"), Some("Basic dGVzdC10b2tlbg=="), Some(TOKEN)]
    {
        let (status, body) = harness.send(sync_request(report(1, 1, 1, 0, 4, false), authorization)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        let error: Value = serde_json::from_slice(&body).expect("json error");
        assert!(error["error"].as_str().is_some_and(|message| message.contains("token")), "{error}");
    }
    let rollout = harness.rollout().await;
    assert_eq!(*total_requests(&rollout, "stable"), 0);
    assert_eq!(rollout["data_plane"]["workers_total"], 0);
    assert_eq!(harness.workers("").await["workers"], json!([]));
    assert!(harness.metrics().await.contains("canary_reports_rejected_total{reason=\"unauthorized\"} 5"));
}

#[tokio::test]
async fn without_a_configured_token_any_filter_may_sync() {
    let harness = Harness::with(|config| config.filter_token = None);
    let (status, body) = harness.send(sync_request(report(1, 1, 1, 0, 1, false), None)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn a_corrupt_report_is_400_naming_the_problem_and_changes_nothing() {
    let harness = Harness::new();
    let valid = report(1, 1, 1, 0, 2, true);
    let mut wrong_magic = valid.clone();
    wrong_magic[0] = b'X';
    let mut trailing = valid.clone();
    trailing.push(0);
    let mut seq_zero = Vec::new();
    Report::decode(&valid)
        .map(|mut decoded| {
            decoded.header.seq = 0;
            decoded.encode(&mut seq_zero);
        })
        .expect("valid report decodes");
    // (body, words the message must contain, field)
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (Vec::new(), "truncated while reading magic", "magic"),
        (wrong_magic, "magic", "magic"),
        (
            valid[..valid.len() - 1].to_vec(),
            "truncated while reading canary.bucket count value",
            "canary.bucket count value",
        ),
        (trailing, "unexpected bytes", "end of message"),
        (seq_zero, "seq is 0", "seq"),
    ];
    for (bytes, words, field) in cases {
        let (status, body) = harness.send(sync_request(bytes, Some(&format!("Bearer {TOKEN}")))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{words}");
        let error: Value = serde_json::from_slice(&body).expect("json error");
        assert!(error["error"].as_str().is_some_and(|message| message.contains(words)), "{error} lacks {words:?}");
        assert_eq!(error["field"], field);
    }
    let rollout = harness.rollout().await;
    assert_eq!(*total_requests(&rollout, "stable"), 0);
    assert_eq!(rollout["data_plane"]["workers_total"], 0, "a rejected report does not register a worker");
    assert_eq!(harness.workers("").await["workers"], json!([]));
    assert!(harness.metrics().await.contains("canary_reports_rejected_total{reason=\"malformed\"} 5"));
}

#[tokio::test]
async fn an_oversized_report_is_413() {
    let harness = Harness::new();
    let (status, body) =
        harness.send(sync_request(vec![0; MAX_REPORT_BYTES + 1], Some(&format!("Bearer {TOKEN}")))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let error: Value = serde_json::from_slice(&body).expect("json error");
    assert!(error["error"].as_str().is_some_and(|message| message.contains("larger than")), "{error}");
}

#[tokio::test]
async fn put_weight_accepts_two_decimals_and_rejects_bad_bodies_naming_the_field() {
    let harness = Harness::new();
    let (status, body) = harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 12.34}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"weights_version": 2, "canary_weight_percent": 12.34, "canary_weight_bp": 1234, "changed": true})
    );

    let (status, body) = harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 12.34}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["changed"], false, "the same weight is not a new version");
    assert_eq!(body["weights_version"], 2);

    // (body, field named in the error; Null when the body as a whole is wrong)
    let bad_bodies: &[(&str, Value)] = &[
        (r#"{"canary_percent": 12.345}"#, json!("canary_percent")),
        (r#"{"canary_percent": -1}"#, json!("canary_percent")),
        (r#"{"canary_percent": 101}"#, json!("canary_percent")),
        (r#"{"canary_percent": "x"}"#, json!("canary_percent")),
        (r#"{"canary_percent": null}"#, json!("canary_percent")),
        (r#"{"canary_percent": 5, "canary_pct": 5}"#, json!("canary_pct")),
        (r#"{}"#, json!("canary_percent")),
        ("", json!("canary_percent")),
        ("canary_percent=5", Value::Null),
        ("[5]", Value::Null),
        (r#"{"canary_percent": 5"#, Value::Null),
    ];
    for (body, field) in bad_bodies {
        let (status, error) = harness.json("PUT", "/v1/rollout/weight", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error["field"], *field, "{body}: {error}");
        assert!(error["error"].as_str().is_some_and(|message| !message.is_empty()), "{body}: {error}");
    }
    let (status, error) = harness.json("PUT", "/v1/rollout/weight?timeout_ms=0", r#"{"canary_percent": 50}"#).await;
    assert_eq!((status, &error["field"]), (StatusCode::BAD_REQUEST, &json!("timeout_ms")));

    let rollout = harness.rollout().await;
    assert_eq!(rollout["canary_weight_bp"], 1234, "bad input changed nothing");
    assert_eq!(rollout["canary_weight_percent"], 12.34);
    assert_eq!(rollout["weights_version"], 2);
}

#[tokio::test]
async fn a_held_sync_answers_as_soon_as_the_weights_change() {
    let harness = Harness::new();
    harness.sync(report(1, 1, 1, 0, 0, false)).await;

    // Up to date and no change: held for max_hold_ms, then the same weights.
    let started = Instant::now();
    let ack = harness.sync(report(1, 2, 1, 100, 0, false)).await;
    assert!(started.elapsed() >= Duration::from_millis(100), "held for max_hold_ms");
    assert_eq!(ack.weights.weights_version, 1);

    let held = {
        let app = harness.app.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let request = sync_request(report(1, 3, 1, 20_000, 0, false), Some(&format!("Bearer {TOKEN}")));
            let response = app.oneshot(request).await.expect("infallible");
            let body = to_bytes(response.into_body(), usize::MAX).await.expect("body");
            (started.elapsed(), SyncResponse::decode(&body).expect("sync response"))
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 5}"#).await;
    assert_eq!(status, StatusCode::OK);
    let (held_for, ack) = held.await.expect("joins");
    assert_eq!(ack.acked_seq, 3);
    assert_eq!(ack.weights.weights_version, 2);
    assert_eq!(ack.weights.canary_weight.bp(), 500);
    assert!(held_for < Duration::from_secs(10), "released by the change, not the 20 s hold: {held_for:?}");
}

/// Counts the records in every journal file of a state directory.
fn journal_records(state_dir: &std::path::Path) -> usize {
    let journal_dir = crate::journal::JournalDir::new(state_dir);
    let generations = journal_dir.generations().expect("journal files");
    generations
        .into_iter()
        .map(|generation| {
            let bytes = std::fs::read(journal_dir.path(generation)).expect("read journal");
            crate::journal::scan(&bytes).expect("valid journal").records.len()
        })
        .sum()
}

fn spawn_sync(harness: &Harness, bytes: Vec<u8>) -> tokio::task::JoinHandle<SyncResponse> {
    let app = harness.app.clone();
    tokio::spawn(async move {
        let response = app.oneshot(sync_request(bytes, Some(&format!("Bearer {TOKEN}")))).await.expect("infallible");
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        SyncResponse::decode(&body).expect("sync response")
    })
}

// Multi-threaded, as the analyzer runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_reports_share_a_lazy_commit_and_are_durable_when_acknowledged() {
    const WORKERS: u64 = 40;
    let harness = Harness::new();
    let state_dir = harness.dir.path().join("state");
    let records_before = journal_records(&state_dir);
    // Forty workers' reports over a few milliseconds, each held 300 ms:
    // with a commit per request this was several fdatasyncs.
    let mut syncs = Vec::new();
    for worker_id in 1..=WORKERS {
        syncs.push(spawn_sync(&harness, report(worker_id, 1, 1, 300, 2, false)));
        if worker_id % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for sync in syncs {
        assert_eq!(sync.await.expect("joins").acked_seq, 1);
    }
    let commits = journal_records(&state_dir) - records_before;
    assert!((1..=3).contains(&commits), "{WORKERS} held reports took {commits} commits");

    // As after `kill -9`: everything acknowledged is on disk.
    let Harness { dir, state: _first_state, app: _ } = harness;
    let second = Harness::open(dir, |_| {});
    assert_eq!(*total_requests(&second.rollout().await, "stable"), 2 * WORKERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_cut_short_by_new_weights_acknowledges_only_durable_counts() {
    let harness = Harness::new();
    harness.sync(report(1, 1, 1, 0, 1, false)).await;
    let held = spawn_sync(&harness, report(1, 2, 1, 20_000, 7, false));
    // Sooner than the lazy commit: the ack must ask for its own.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (status, _) = harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 5}"#).await;
    assert_eq!(status, StatusCode::OK);
    let ack = tokio::time::timeout(Duration::from_secs(5), held).await.expect("released").expect("joins");
    assert_eq!((ack.acked_seq, ack.weights.weights_version), (2, 2));

    let Harness { dir, state: _first_state, app: _ } = harness;
    let second = Harness::open(dir, |_| {});
    let rollout = second.rollout().await;
    assert_eq!(*total_requests(&rollout, "stable"), 8);
    assert_eq!(rollout["weights_version"], 2);
}

#[tokio::test]
async fn rollback_with_wait_is_confirmed_when_the_worker_applies_it() {
    let harness = Harness::new();
    let (status, _) = harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 10}"#).await;
    assert_eq!(status, StatusCode::OK);
    harness.sync(report(9, 1, 2, 0, 1, false)).await;

    let rollback = {
        let app = harness.app.clone();
        tokio::spawn(async move {
            let request = Request::builder()
                .method("POST")
                .uri("/v1/rollout/rollback?wait=true&timeout_ms=10000")
                .body(Body::empty())
                .expect("request");
            let response = app.oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = to_bytes(response.into_body(), usize::MAX).await.expect("body");
            (status, serde_json::from_slice::<Value>(&body).expect("json"))
        })
    };
    // The simulated worker's long-poll, still on version 2, receives the
    // rollback; it applies it and confirms at once, as the filter does.
    let ack = harness.sync(report(9, 2, 2, 10_000, 0, false)).await;
    assert_eq!((ack.weights.weights_version, ack.weights.canary_weight.bp()), (3, 0));
    let confirming = {
        let app = harness.app.clone();
        tokio::spawn(async move {
            let request = sync_request(report(9, 3, 3, 100, 0, false), Some(&format!("Bearer {TOKEN}")));
            app.oneshot(request).await.expect("infallible").status()
        })
    };
    let (status, body) = rollback.await.expect("joins");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["weights_version"], 3);
    assert_eq!(body["canary_weight_bp"], 0);
    assert_eq!(body["canary_weight_percent"], 0.0);
    assert_eq!(body["changed"], true);
    let wait = &body["wait"];
    assert_eq!(wait["confirmed"], true);
    assert_eq!(wait["workers_total"], 1);
    assert_eq!(wait["workers_confirmed"], 1);
    assert_eq!(wait["unconfirmed"], json!([]));
    let propagation_ms = wait["propagation_ms"].as_f64().expect("a number");
    assert!(propagation_ms > 0.0 && propagation_ms < 10_000.0, "{propagation_ms}");
    assert_eq!(confirming.await.expect("joins"), StatusCode::OK);
    assert_eq!(harness.rollout().await["data_plane"]["converged_workers"], 1);
}

#[tokio::test]
async fn rollback_wait_times_out_with_504_listing_unconfirmed_workers() {
    let harness = Harness::new();
    harness.sync(report(0xabc, 1, 1, 0, 1, false)).await;
    harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 50}"#).await;

    let started = Instant::now();
    let (status, body) = harness.json("POST", "/v1/rollout/rollback?wait=true&timeout_ms=150", "{}").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(body["wait"]["confirmed"], false);
    assert_eq!(body["wait"]["workers_total"], 1);
    assert_eq!(body["wait"]["unconfirmed"], json!([{"proxy_id": PROXY_ID, "worker_id": "0000000000000abc"}]));
    assert!(body["error"].as_str().is_some_and(|message| message.contains("did not confirm")), "{body}");
    // The rollback itself stays applied.
    let rollout = harness.rollout().await;
    assert_eq!(rollout["canary_weight_bp"], 0);
    assert_eq!(rollout["weights_version"], 3);
    assert_eq!(rollout["data_plane"]["converged"], false);
}

#[tokio::test]
async fn a_worker_that_goes_stale_stops_holding_a_rollback_wait() {
    let harness = Harness::with(|config| config.worker_stale_after_ms = 200);
    harness.sync(report(1, 1, 1, 0, 1, false)).await;
    harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 1}"#).await;
    let (status, body) = harness.json("POST", "/v1/rollout/rollback?wait=true&timeout_ms=5000", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["wait"]["workers_total"], 0);
    let propagation_ms = body["wait"]["propagation_ms"].as_f64().expect("a number");
    assert!(propagation_ms < 4_000.0, "woken when the worker went stale, not at the timeout: {propagation_ms}");
}

#[tokio::test]
async fn rollback_without_wait_and_its_bad_inputs() {
    let harness = Harness::new();
    harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 20}"#).await;
    for (uri, body, field) in [
        ("/v1/rollout/rollback", r#"{"force": true}"#, "force"),
        ("/v1/rollout/rollback?wait=maybe", "", "wait"),
        ("/v1/rollout/rollback?timeout_ms=abc", "", "timeout_ms"),
        ("/v1/rollout/rollback?dry_run=1", "", "dry_run"),
    ] {
        let (status, error) = harness.json("POST", uri, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}");
        assert_eq!(error["field"], field, "{uri} {body}: {error}");
    }
    assert_eq!(harness.rollout().await["canary_weight_bp"], 2000, "refused rollbacks changed nothing");

    let (status, body) = harness.json("POST", "/v1/rollout/rollback", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"weights_version": 3, "canary_weight_percent": 0.0, "canary_weight_bp": 0, "changed": true})
    );
    let (_, body) = harness.json("POST", "/v1/rollout/rollback", "{}").await;
    assert_eq!((&body["changed"], &body["weights_version"]), (&json!(false), &json!(3)), "already rolled back");
}

#[tokio::test]
async fn a_restart_keeps_weights_totals_and_the_dedupe_table() {
    let first = Harness::new();
    first.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 25}"#).await;
    first.sync(report(5, 1, 2, 0, 4, true)).await;
    let resent = report(5, 2, 2, 0, 6, false);
    first.sync(resent.clone()).await;
    let before = first.rollout().await;
    // No shutdown: what was acknowledged must already be on disk, as after
    // `kill -9`.
    let Harness { dir, state: _first_state, app: _ } = first;

    let second = Harness::open(dir, |_| {});
    let after = second.rollout().await;
    for pointer in [
        "/weights_version",
        "/canary_weight_bp",
        "/weights_changed_at_unix_ms",
        "/versions/stable/total",
        "/versions/canary/total",
        "/versions/canary/since_weights_change",
    ] {
        assert_eq!(after.pointer(pointer), before.pointer(pointer), "{pointer}");
    }
    assert_eq!(after["weights_version"], 2);
    assert_eq!(*total_requests(&after, "stable"), 10);
    assert_eq!(after["versions"]["stable"]["window"]["requests"], 0, "the window is not persisted");
    // The filter never got the ack for seq 2 and re-sends it to the new
    // process: it must not be counted again.
    let ack = second.sync(resent).await;
    assert_eq!(ack.acked_seq, 2);
    assert_eq!((ack.weights.weights_version, ack.weights.canary_weight.bp()), (2, 2500));
    assert_eq!(*total_requests(&second.rollout().await, "stable"), 10);
}

fn saved_weights_version(state_dir: &std::path::Path) -> Value {
    let saved = std::fs::read(state_dir.join(crate::store::STATE_FILE_NAME)).expect("state file");
    serde_json::from_slice::<Value>(&saved).expect("json")["weights"]["weights_version"].clone()
}

// Multi-threaded, as the analyzer runs: the weights file is written in
// place there (the other tests' runtimes use the blocking pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_does_not_wait_for_the_state_file_and_survives_a_restart() {
    let first = Harness::new();
    // Counts under version 1, durable in the state file (the ack waits).
    first.sync(report(5, 1, 1, 0, 4, false)).await;
    let state_dir = first.dir.path().join("state");
    assert_eq!(saved_weights_version(&state_dir), 1);
    // From now on every state file write fails: its temporary file cannot be
    // created. A change that waited for it would answer 503 after 5 s.
    let obstacle = state_dir.join(format!("{}.tmp", crate::store::STATE_FILE_NAME));
    std::fs::create_dir(&obstacle).expect("mkdir");

    let started = Instant::now();
    let (status, body) = first.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 25}"#).await;
    assert_eq!((status, &body["weights_version"]), (StatusCode::OK, &json!(2)), "{body}");
    assert!(
        started.elapsed() < crate::state::DURABILITY_TIMEOUT / 2,
        "answered without the state file: {:?}",
        started.elapsed()
    );
    assert_eq!(first.state.weights().weights.weights_version, 2, "published");
    assert_eq!(saved_weights_version(&state_dir), 1, "the state file is behind");
    let before = first.rollout().await;
    assert_eq!(before["versions"]["stable"]["since_weights_change"]["requests"], 0);
    // As after `kill -9`: no shutdown.
    let Harness { dir, state: _first_state, app: _ } = first;

    let second = Harness::open(dir, |_| {});
    let after = second.rollout().await;
    for pointer in ["/weights_version", "/canary_weight_bp", "/weights_changed_at_unix_ms", "/versions/stable/total"] {
        assert_eq!(after.pointer(pointer), before.pointer(pointer), "{pointer}");
    }
    assert_eq!(
        after["versions"]["stable"]["since_weights_change"]["requests"], 0,
        "counts from before the change are not counted as after it"
    );
    // The state file catches up once it can be written again.
    std::fs::remove_dir(&obstacle).expect("rmdir");
    let deadline = Instant::now() + Duration::from_secs(5);
    while saved_weights_version(&state_dir) != 2 {
        assert!(Instant::now() < deadline, "the state file never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_torn_weights_record_at_restart_falls_back_to_the_previous_one() {
    use crate::weights_file::{SLOT_SPACING_BYTES, WEIGHTS_FILE_NAME};

    let first = Harness::new();
    first.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 25}"#).await;
    first.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 40}"#).await;
    // Versions 1, 2, 3 went to slots 0, 1, 0. Tear version 3, as a crash in
    // the middle of its write would (before it could be published).
    let path = first.dir.path().join("state").join(WEIGHTS_FILE_NAME);
    let mut content = std::fs::read(&path).expect("read");
    assert_eq!(content.len(), 2 * SLOT_SPACING_BYTES);
    content[10] ^= 0xFF;
    std::fs::write(&path, content).expect("write");
    let Harness { dir, state: _first_state, app: _ } = first;

    let second = Harness::open(dir, |_| {});
    let weights = second.state.weights().weights;
    assert_eq!((weights.weights_version, weights.canary_weight.bp()), (2, 2_500), "the previous valid record");
    // The next change is durable again, over the torn slot.
    let (status, body) = second.json("POST", "/v1/rollout/rollback", "").await;
    assert_eq!((status, &body["weights_version"]), (StatusCode::OK, &json!(3)), "{body}");
    let Harness { dir, state: _second_state, app: _ } = second;
    let third = Harness::open(dir, |_| {});
    assert_eq!(third.state.weights().weights.weights_version, 3);
    assert_eq!(third.state.weights().weights.canary_weight, CanaryWeight::ZERO);
}

#[tokio::test]
async fn a_weights_file_without_a_valid_record_stops_startup() {
    let first = Harness::new();
    first.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 25}"#).await;
    let path = first.dir.path().join("state").join(crate::weights_file::WEIGHTS_FILE_NAME);
    std::fs::write(&path, vec![0xA5; crate::weights_file::FILE_BYTES]).expect("write");
    let Harness { dir, state: _first_state, app: _ } = first;
    let error = AppState::open(Config::with_state_dir(dir.path().join("state"))).expect_err("refuses to start");
    assert!(error.to_string().contains("weights.bin"), "{error}");
}

#[tokio::test]
async fn a_corrupt_state_file_stops_startup_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).expect("mkdir");
    std::fs::write(state_dir.join(crate::store::STATE_FILE_NAME), b"{not json").expect("write");
    let error = AppState::open(Config::with_state_dir(&state_dir)).expect_err("refuses to start");
    assert!(error.to_string().contains("state.json"), "{error}");
}

#[tokio::test]
async fn shutdown_flushes_and_releases_held_syncs() {
    let harness = Harness::new();
    harness.sync(report(1, 1, 1, 0, 1, false)).await;
    let held = {
        let app = harness.app.clone();
        tokio::spawn(async move {
            let request = sync_request(report(1, 2, 1, 30_000, 2, false), Some(&format!("Bearer {TOKEN}")));
            app.oneshot(request).await.expect("infallible").status()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::time::timeout(Duration::from_secs(5), harness.state.shutdown()).await.expect("shutdown is prompt");
    let status = tokio::time::timeout(Duration::from_secs(5), held).await.expect("released").expect("joins");
    assert_eq!(status, StatusCode::OK);
    let saved = std::fs::read_to_string(harness.dir.path().join("state").join(crate::store::STATE_FILE_NAME))
        .expect("state file");
    let saved: Value = serde_json::from_str(&saved).expect("json");
    assert_eq!(saved["totals"]["stable"]["requests"], 3);
}

#[tokio::test]
async fn metrics_health_and_unknown_routes() {
    let harness = Harness::new();
    harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 12.5}"#).await;
    harness.sync(report(1, 1, 2, 0, 2, true)).await;
    let metrics = harness.metrics().await;
    for line in [
        "canary_weight_ratio 0.125",
        "canary_weights_version 2",
        "canary_live_workers 1",
        "canary_converged_workers 1",
        "canary_request_errors_total{version=\"canary\"} 1",
        "canary_request_duration_seconds_bucket{version=\"canary\",le=\"0.05\"} 1",
    ] {
        assert!(metrics.lines().any(|got| got == line), "missing {line:?} in\n{metrics}");
    }
    let (status, body) = harness.json("GET", "/healthz", "").await;
    assert_eq!((status, body), (StatusCode::OK, json!("ok")));
    let (status, body) = harness.json("GET", "/v1/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["field"], Value::Null);
    assert!(body["error"].as_str().is_some_and(|message| message.contains("/v1/nope")));
}

#[test]
fn wait_query_table() {
    let check = |query: Option<&str>, expected: Result<(bool, u64), &str>| {
        let got = WaitQuery::parse(query, 2_000)
            .map(|q| (q.wait, q.timeout_ms))
            .map_err(|error| error.field().unwrap_or("").to_owned());
        assert_eq!(got, expected.map_err(str::to_owned), "{query:?}");
    };
    check(None, Ok((false, 2_000)));
    check(Some(""), Ok((false, 2_000)));
    check(Some("wait=true"), Ok((true, 2_000)));
    check(Some("wait"), Ok((true, 2_000)));
    check(Some("wait=false&timeout_ms=50"), Ok((false, 50)));
    check(Some("wait=1&timeout_ms=600000"), Ok((true, 600_000)));
    check(Some("wait=yes"), Err("wait"));
    check(Some("timeout_ms=-1"), Err("timeout_ms"));
    check(Some("timeout_ms=600001"), Err("timeout_ms"));
    check(Some("timeout=5"), Err("timeout"));
}

#[tokio::test]
async fn acknowledged_counts_come_back_from_the_journal_and_a_torn_tail_is_dropped() {
    use crate::journal::JournalDir;

    let first = Harness::new();
    first.sync(report(5, 1, 1, 0, 4, false)).await;
    first.sync(report(6, 1, 1, 0, 3, true)).await;
    let before = first.rollout().await;
    let state_dir = first.dir.path().join("state");
    let journal_dir = JournalDir::new(&state_dir);
    assert_eq!(journal_dir.generations().expect("list"), vec![1]);
    let saved: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join(crate::store::STATE_FILE_NAME)).expect("read"))
            .expect("json");
    assert_eq!(saved["totals"]["stable"]["requests"], 0, "the commits went to the journal, not the snapshot");
    // As after `kill -9` in the middle of the next append.
    let journal_path = journal_dir.path(1);
    let journal = std::fs::read(&journal_path).expect("read");
    let mut torn = journal.clone();
    // The start of a record where the next one goes: a whole frame, part of
    // the payload.
    let end = crate::journal::scan(&journal).expect("valid").valid_bytes;
    torn[end..end + 30].copy_from_slice(&journal[crate::journal::HEADER_BYTES..crate::journal::HEADER_BYTES + 30]);
    std::fs::write(&journal_path, &torn).expect("write");
    let Harness { dir, state: _first_state, app: _ } = first;

    let second = Harness::open(dir, |_| {});
    let after = second.rollout().await;
    for pointer in ["/versions/stable/total", "/versions/canary/total", "/versions/stable/since_weights_change"] {
        assert_eq!(after.pointer(pointer), before.pointer(pointer), "{pointer}");
    }
    assert_eq!(*total_requests(&after, "stable"), 7);
    // The re-send of an acknowledged report is a duplicate after the restart.
    second.sync(report(6, 1, 1, 0, 3, true)).await;
    assert_eq!(*total_requests(&second.rollout().await, "stable"), 7);
    // The startup snapshot holds everything, so the old generation is gone.
    let journal_dir = JournalDir::new(&second.dir.path().join("state"));
    assert_eq!(journal_dir.generations().expect("list"), vec![2]);
}

#[tokio::test]
async fn a_damaged_journal_record_before_a_valid_one_stops_startup_naming_file_and_offset() {
    use crate::journal::{HEADER_BYTES, JournalDir};

    let first = Harness::new();
    first.sync(report(5, 1, 1, 0, 4, false)).await;
    first.sync(report(5, 2, 1, 0, 4, false)).await;
    let state_dir = first.dir.path().join("state");
    let journal_path = JournalDir::new(&state_dir).path(1);
    let mut journal = std::fs::read(&journal_path).expect("read");
    // The first record's payload (after its 12-byte frame): a valid record
    // follows it, so this cannot be a torn write.
    journal[HEADER_BYTES + 20] ^= 0x40;
    std::fs::write(&journal_path, &journal).expect("write");
    let Harness { dir, state: _first_state, app: _ } = first;
    let error = AppState::open(Config::with_state_dir(dir.path().join("state"))).expect_err("refuses to start");
    let message = error.to_string();
    assert!(message.contains(&journal_path.display().to_string()), "{message}");
    assert!(message.contains(&format!("at byte {HEADER_BYTES}")), "{message}");
}

#[path = "api_batch_tests.rs"]
mod batch;
