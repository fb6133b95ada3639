//! A small HTTP/1.1 upstream that plays "stable" or "canary" in tests and in
//! the demo.
//!
//! Every request except the control endpoints is answered with a body and an
//! `x-served-by: NAME` header, so a client behind Envoy can tell which version
//! served it. Errors are injected deterministically: after `n` counted
//! requests exactly `floor(n * error_rate)` of them have been answered with a
//! 500, so tests can compare error counts exactly instead of statistically.
//!
//! Control endpoints (not counted): `GET /__stats` returns
//! `{"name": .., "served": n, "errors": m}` and `POST /__reset` zeroes both.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use canary_protocol::SplitRng;
use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug, Parser)]
#[command(about = "Test upstream for the canary demo: names itself, injects errors and latency")]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stderr).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Name returned in `x-served-by` and in the body.
    #[arg(long, default_value = "backend")]
    name: String,
    /// Share of counted requests answered with 500, in 0..=1.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fixed delay added to every counted request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Extra uniform delay in 0..=N ms on top of `--latency-ms`.
    #[arg(long, default_value_t = 0)]
    latency_jitter_ms: u64,
    /// Seed of the jitter draws, so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug)]
struct Backend {
    name: String,
    error_rate: f64,
    latency_ms: u64,
    latency_jitter_ms: u64,
    seed: u64,
    /// Index of the next counted request; drives the deterministic error
    /// pattern and the jitter draws.
    next_index: AtomicU64,
    served: AtomicU64,
    errors: AtomicU64,
}

// One thread: a request is accepted, delayed and answered on the thread that
// woke up for it. With a multi-threaded runtime every request hops between
// threads, and a backend with little traffic (a 10% canary) pays for waking
// them up far more often than a busy one: on a small machine that made an
// identical canary measurably slower than stable (p95 about 2 ms higher).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!((0.0..=1.0).contains(&args.error_rate), "--error-rate must be in 0..=1, got {}", args.error_rate);
    let backend = Arc::new(Backend {
        name: args.name,
        error_rate: args.error_rate,
        latency_ms: args.latency_ms,
        latency_jitter_ms: args.latency_jitter_ms,
        seed: args.seed,
        next_index: AtomicU64::new(0),
        served: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("bind {}", args.listen))?;
    let local_addr = listener.local_addr()?;
    // The harness waits for exactly this line to learn the real port.
    eprintln!("demo-backend listening on {local_addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Running out of file descriptors is transient; keep serving.
                eprintln!("demo-backend: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let backend = Arc::clone(&backend);
                async move { Ok::<_, Infallible>(backend.handle(request).await) }
            });
            // Connection errors (client resets) are normal under load tests.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

impl Backend {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/__stats") => {
                let body = serde_json::json!({
                    "name": self.name,
                    "served": self.served.load(Ordering::SeqCst),
                    "errors": self.errors.load(Ordering::SeqCst),
                });
                return self.respond(StatusCode::OK, "application/json", body.to_string(), None);
            }
            (&Method::POST, "/__reset") => {
                self.next_index.store(0, Ordering::SeqCst);
                self.served.store(0, Ordering::SeqCst);
                self.errors.store(0, Ordering::SeqCst);
                return self.respond(StatusCode::OK, "application/json", "{}".to_owned(), None);
            }
            _ => {}
        }
        let index = self.next_index.fetch_add(1, Ordering::SeqCst);
        let delay_ms = self.latency_ms + self.jitter_ms(index);
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let status = if self.is_error(index) { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
        // Count before answering, so a client that has its response can rely
        // on /__stats including it.
        self.served.fetch_add(1, Ordering::SeqCst);
        if status.is_server_error() {
            self.errors.fetch_add(1, Ordering::SeqCst);
        }
        let seen_route =
            request.headers().get("x-canary-version").and_then(|value| value.to_str().ok()).map(str::to_owned);
        let body = format!("served by {} ({})\n", self.name, status.as_u16());
        self.respond(status, "text/plain", body, seen_route)
    }

    /// Request `index` is an error iff it crosses the next multiple of
    /// `1 / error_rate`, which spreads errors evenly and makes the count
    /// after `n` requests exactly `floor(n * error_rate)`.
    fn is_error(&self, index: u64) -> bool {
        let before = (index as f64 * self.error_rate).floor();
        let after = ((index + 1) as f64 * self.error_rate).floor();
        after > before
    }

    fn jitter_ms(&self, index: u64) -> u64 {
        if self.latency_jitter_ms == 0 {
            return 0;
        }
        SplitRng::new(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64() % (self.latency_jitter_ms + 1)
    }

    fn respond(
        &self,
        status: StatusCode,
        content_type: &str,
        body: String,
        seen_route: Option<String>,
    ) -> Response<Full<Bytes>> {
        let mut builder = Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("x-served-by", self.name.as_str());
        if let Some(seen_route) = seen_route {
            // Echoes the route header Envoy forwarded, to debug spoofing.
            builder = builder.header("x-seen-canary-version", seen_route);
        }
        builder.body(Full::new(Bytes::from(body))).unwrap_or_else(|_| {
            let mut fallback = Response::new(Full::new(Bytes::from_static(b"bad response\n")));
            *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
    }
}
