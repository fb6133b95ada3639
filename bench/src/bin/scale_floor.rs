//! `bench-scale-floor`: the floor of the scale benchmark. It answers
//! `POST /v1/filter/sync` through the same hyper server as the analyzer,
//! and like the analyzer's `Api` without axum's router in the way, and
//! decodes each report (to acknowledge its seq), but keeps no state, writes
//! nothing to disk and never holds: what one HTTP exchange per report costs
//! on this machine before the analyzer does any work of its own.
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
            if request.method() == Method::POST && request.uri().path() == "/v1/filter/sync" {
                return Ok::<_, Infallible>(sync(request).await);
            }
            router.call(request).await
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("canary-analyzer listening on {}", listener.local_addr().context("bound address")?);
    axum::serve(listener, tower::make::Shared::new(app)).await.context("server failed")
}

async fn sync(request: Request) -> Response {
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    match Report::decode(&body) {
        Ok(report) => {
            let response = SyncResponse { acked_seq: report.header.seq, weights: Weights::default() };
            ([(header::CONTENT_TYPE, "application/octet-stream")], response.to_bytes()).into_response()
        }
        Err(error) => (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    }
}
