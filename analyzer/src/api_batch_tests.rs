//! `POST /v1/filter/sync-batch`: several workers' reports in one call.

use canary_protocol::batch::encode_batch;
use canary_protocol::{BatchAck, WorkerAck};

use super::*;

fn batch(max_hold_ms: u32, reports: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_batch(max_hold_ms, reports.iter().map(Vec::as_slice), &mut out);
    out
}

fn batch_request(bytes: Vec<u8>, authorization: Option<&str>) -> Request<Body> {
    let mut builder =
        Request::builder().method("POST").uri(SYNC_BATCH_PATH).header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    builder.body(Body::from(bytes)).expect("request")
}

fn bearer() -> Option<&'static str> {
    Some("Bearer test-token")
}

impl Harness {
    async fn sync_batch(&self, bytes: Vec<u8>) -> BatchAck {
        let (status, body) = self.send(batch_request(bytes, bearer())).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        BatchAck::decode(&body).expect("a valid batch ack")
    }
}

fn acks(pairs: &[(u64, u64)]) -> Vec<WorkerAck> {
    pairs.iter().map(|&(worker_id, acked_seq)| WorkerAck { worker_id, acked_seq }).collect()
}

#[tokio::test]
async fn a_batch_ingests_and_acks_each_worker_in_order_as_single_reports_would() {
    let harness = Harness::new();
    // Worker 2's seq 1 came alone before; in the batch it is a re-send.
    harness.sync(report(2, 1, 1, 0, 4, false)).await;
    let ack = harness
        .sync_batch(batch(
            0,
            &[report(3, 1, 1, 0, 5, true), report(2, 1, 1, 0, 4, false), report(1, 7, 1, 0, 6, false)],
        ))
        .await;
    assert_eq!(ack.acks, acks(&[(3, 1), (2, 1), (1, 7)]));
    assert_eq!(ack.weights.weights_version, 1);

    let rollout = harness.rollout().await;
    assert_eq!(*total_requests(&rollout, "stable"), 4 + 5 + 6, "the re-send is not counted twice");
    assert_eq!(*total_requests(&rollout, "canary"), 1);
    assert_eq!(rollout["data_plane"]["live_workers"], 3);
    let mut seqs: Vec<(String, u64)> = harness.workers("").await["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|worker| (worker["worker_id"].as_str().expect("id").to_owned(), worker["last_seq"].as_u64().expect("seq")))
        .collect();
    seqs.sort();
    let want = [("0000000000000001", 7), ("0000000000000002", 1), ("0000000000000003", 1)];
    assert_eq!(seqs, want.map(|(id, seq)| (id.to_owned(), seq)));
    let metrics = harness.metrics().await;
    for line in ["canary_reports_received_total 4", "canary_reports_duplicate_total 1", "canary_report_batches_total 1"]
    {
        assert!(metrics.lines().any(|got| got == line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_batch_holds_only_while_every_worker_has_the_published_weights() {
    let harness = Harness::new();
    // Every worker has applied version 1: held for the batch's hold, and the
    // reports' own holds (0 here) do not count.
    let started = Instant::now();
    harness.sync_batch(batch(100, &[report(1, 1, 1, 0, 1, false), report(2, 1, 1, 0, 1, false)])).await;
    assert!(started.elapsed() >= Duration::from_millis(100), "held for the batch's max_hold_ms");

    // One worker is behind: answered at once despite a 20 s hold.
    let started = Instant::now();
    let ack = harness.sync_batch(batch(20_000, &[report(1, 2, 1, 0, 1, false), report(2, 2, 0, 0, 1, false)])).await;
    assert!(started.elapsed() < Duration::from_secs(5), "not held: a worker is behind");
    assert_eq!(ack.weights.weights_version, 1);

    // Held, then released by new weights.
    let held = {
        let app = harness.app.clone();
        let bytes = batch(20_000, &[report(1, 3, 1, 0, 0, false), report(2, 3, 1, 0, 0, false)]);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = app.oneshot(batch_request(bytes, bearer())).await.expect("infallible");
            let body = to_bytes(response.into_body(), usize::MAX).await.expect("body");
            (started.elapsed(), BatchAck::decode(&body).expect("batch ack"))
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = harness.json("PUT", "/v1/rollout/weight", r#"{"canary_percent": 5}"#).await;
    assert_eq!(status, StatusCode::OK);
    let (held_for, ack) = held.await.expect("joins");
    assert!(held_for < Duration::from_secs(10), "released by the change, not the 20 s hold: {held_for:?}");
    assert_eq!((ack.weights.weights_version, ack.weights.canary_weight.bp()), (2, 500));
    assert_eq!(ack.acks, acks(&[(1, 3), (2, 3)]));
}

#[tokio::test]
async fn acknowledged_batches_survive_a_restart_and_a_re_sent_batch_counts_nothing() {
    let first = Harness::new();
    let sent = batch(0, &[report(1, 1, 1, 0, 3, false), report(2, 1, 1, 0, 4, true)]);
    first.sync_batch(sent.clone()).await;
    // No shutdown, as after `kill -9`.
    let Harness { dir, state: _first_state, app: _ } = first;
    let second = Harness::open(dir, |_| {});
    assert_eq!(*total_requests(&second.rollout().await, "stable"), 7);
    // The reporter never got the ack and re-sends to the new process.
    let ack = second.sync_batch(sent).await;
    assert_eq!(ack.acks, acks(&[(1, 1), (2, 1)]));
    let rollout = second.rollout().await;
    assert_eq!(*total_requests(&rollout, "stable"), 7);
    assert_eq!(*total_requests(&rollout, "canary"), 1);
}

#[tokio::test]
async fn a_bad_batch_is_refused_whole_naming_the_report_and_field() {
    let harness = Harness::new();
    let good = report(1, 1, 1, 0, 2, false);
    let mut seq_zero = Vec::new();
    let mut decoded = Report::decode(&good).expect("valid report");
    decoded.header.seq = 0;
    decoded.header.worker_id = 2;
    decoded.encode(&mut seq_zero);
    let mut not_a_report = good.clone();
    not_a_report[0] = b'X';
    // (body, words the message must contain, field)
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (Vec::new(), "batch: truncated while reading magic", "magic"),
        (good.clone(), "batch: starts with", "magic"),
        (b"CB\x01\x00\x00".to_vec(), "report count is 0", "report count"),
        (batch(0, &[good.clone(), seq_zero]), "batch report 1: report: seq is 0", "reports[1].seq"),
        (batch(0, &[not_a_report, good.clone()]), "batch report 0: report: starts with", "reports[0].magic"),
    ];
    for (bytes, words, field) in cases {
        let (status, body) = harness.send(batch_request(bytes, bearer())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{words}");
        let error: Value = serde_json::from_slice(&body).expect("json error");
        assert!(error["error"].as_str().is_some_and(|message| message.contains(words)), "{error} lacks {words:?}");
        assert_eq!(error["field"], field);
    }
    let (status, _) = harness.send(batch_request(batch(0, std::slice::from_ref(&good)), Some("Bearer wrong"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = harness.send(batch_request(vec![0; MAX_BATCH_BYTES + 1], bearer())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let wrong_method = Request::builder().method("PUT").uri(SYNC_BATCH_PATH).body(Body::empty()).expect("request");
    assert_eq!(harness.send(wrong_method).await.0, StatusCode::METHOD_NOT_ALLOWED);
    let query = Request::builder()
        .method("POST")
        .uri(format!("{SYNC_BATCH_PATH}?x=1"))
        .header(header::AUTHORIZATION, "Bearer test-token")
        .body(Body::from(batch(0, &[good])))
        .expect("request");
    assert_eq!(harness.send(query).await.0, StatusCode::BAD_REQUEST);

    let rollout = harness.rollout().await;
    assert_eq!(*total_requests(&rollout, "stable"), 0, "the good report of a bad batch is not ingested");
    assert_eq!(rollout["data_plane"]["workers_total"], 0);
    assert_eq!(harness.workers("").await["workers"], json!([]));
    let metrics = harness.metrics().await;
    for line in [
        "canary_report_batches_total 0",
        "canary_reports_rejected_total{reason=\"malformed\"} 6",
        "canary_reports_rejected_total{reason=\"unauthorized\"} 1",
        "canary_reports_rejected_total{reason=\"too_large\"} 1",
    ] {
        assert!(metrics.lines().any(|got| got == line), "missing {line:?} in\n{metrics}");
    }
}
