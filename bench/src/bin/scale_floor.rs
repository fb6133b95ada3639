//! `bench-scale-floor`: the floor of the scale benchmark. It answers
//! `POST /v1/filter/sync` through the same hyper server as the analyzer,
//! and like the analyzer's `Api` without axum's router in the way, and
//! decodes each report (to acknowledge its seq), but keeps no state, writes
//! nothing to disk and never holds: what one HTTP exchange per report costs
//! on this machine before the analyzer does any work of its own.
//!
//! `POST /v1/filter/sync-batch` (`canary-bench scale --batched`) is the same
//! for a batch: it decodes the batch and every report in it and answers a
//! `BatchAck` with each report's (worker id, seq) in request order and the
//! default weights, so the batched analyzer is compared with one exchange per
//! batch. A body that does not decode is a 400 on either path.
//!
//! It takes the analyzer's command line (`--listen ADDR`, the rest ignored)
//! and prints the same "listening" line, so the benchmark starts it the way
//! it starts the analyzer.

use std::net::SocketAddr;

use std::convert::Infallible;

use anyhow::Context as _;
use axum::Router;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use canary_protocol::batch::{BatchAck, ReportBatch, WorkerAck};
use canary_protocol::report::Report;
use canary_protocol::sync::SyncResponse;
use canary_protocol::weights::Weights;
use http_body_util::BodyExt as _;
use tower::Service as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:0".parse().context("default address")?;
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            let value = args.next().context("--listen needs an address")?;
            listen = value.parse().with_context(|| format!("--listen {value:?} is not an address"))?;
        }
    }
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/rollout", get(|| async { "{}" }))
        .route("/metrics", get(|| async { "" }));
    let app = tower::service_fn(move |request: Request| {
        let mut router = router.clone();
        async move {
            if request.method() == Method::POST {
                match request.uri().path() {
                    "/v1/filter/sync" => return Ok::<_, Infallible>(answer(request, sync_answer).await),
                    "/v1/filter/sync-batch" => return Ok(answer(request, batch_answer).await),
                    _ => {}
                }
            }
            router.call(request).await
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("canary-analyzer listening on {}", listener.local_addr().context("bound address")?);
    axum::serve(listener, tower::make::Shared::new(app)).await.context("server failed")
}

/// Reads the whole body and answers `decide(body)`: 200 with its bytes, or
/// 400 with its error.
async fn answer(request: Request, decide: fn(&[u8]) -> Result<Vec<u8>, String>) -> Response {
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    match decide(&body) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, error).into_response(),
    }
}

/// One report: its seq acknowledged, default weights.
fn sync_answer(body: &[u8]) -> Result<Vec<u8>, String> {
    let report = Report::decode(body).map_err(|error| error.to_string())?;
    Ok(SyncResponse { acked_seq: report.header.seq, weights: Weights::default() }.to_bytes())
}

/// A batch: every report's (worker id, seq) in request order, default
/// weights. The error names the bad report's index, as the analyzer's does.
fn batch_answer(body: &[u8]) -> Result<Vec<u8>, String> {
    let batch = ReportBatch::decode(body).map_err(|error| error.to_string())?;
    let acks = batch
        .reports
        .iter()
        .map(|report| WorkerAck { worker_id: report.header.worker_id, acked_seq: report.header.seq })
        .collect();
    Ok(BatchAck { weights: Weights::default(), acks }.to_bytes())
}

#[cfg(test)]
mod tests {
    use canary_protocol::batch::encode_batch;
    use canary_protocol::report::{ReportHeader, StatusClass, VersionStats, encode_report};

    use super::*;

    fn report_bytes(worker_id: u64, seq: u64) -> Vec<u8> {
        let header = ReportHeader {
            proxy_id: "sidecar~10.0.0.1~p.ns~ns.svc.cluster.local".to_owned(),
            worker_id,
            seq,
            weights_version: 0,
            counts_weights_version: 0,
            max_hold_ms: 1_000,
        };
        let mut stable = VersionStats::default();
        stable.record(StatusClass::Success, 2_000);
        let mut out = Vec::new();
        encode_report(&header, &stable, &VersionStats::default(), &mut out);
        out
    }

    #[test]
    fn a_batch_is_acknowledged_report_by_report_in_order() {
        let reports = [report_bytes(9, 3), report_bytes(4, 1), report_bytes(7, 12)];
        let mut body = Vec::new();
        encode_batch(1_000, reports.iter().map(Vec::as_slice), &mut body);
        let ack = BatchAck::decode(&batch_answer(&body).expect("a valid batch")).expect("a valid ack");
        assert_eq!(ack.weights, Weights::default());
        let acks: Vec<(u64, u64)> = ack.acks.iter().map(|ack| (ack.worker_id, ack.acked_seq)).collect();
        assert_eq!(acks, [(9, 3), (4, 1), (7, 12)]);
    }

    #[test]
    fn bad_bodies_are_rejected_naming_the_fault() {
        let mut body = Vec::new();
        encode_batch(0, [report_bytes(1, 1), report_bytes(2, 0)].iter().map(Vec::as_slice), &mut body);
        assert_eq!(batch_answer(&body), Err("batch report 1: report: seq is 0, must start at 1".to_owned()));
        assert!(batch_answer(b"").is_err());
        assert!(batch_answer(&report_bytes(1, 1)).is_err(), "a single report is not a batch");
        assert!(sync_answer(&body).is_err(), "a batch is not a single report");
        let single = SyncResponse::decode(&sync_answer(&report_bytes(5, 8)).expect("valid")).expect("a response");
        assert_eq!(single.acked_seq, 8);
    }
}
