//! Integration harness for the canary product: real Envoy 1.40 running the
//! wasm filter, the analyzer sidecar, and two `demo-backend` upstreams.
//!
//! [`Stack`] starts the whole thing on loopback with free ports, waits for
//! it to be ready, and kills it on drop (see [`stack`]). [`Load`] drives
//! bounded concurrent traffic through Envoy. [`eventually!`] polls a
//! condition with a patience set by `CANARY_TEST_PATIENCE_MS`. [`rollout`]
//! adds progressive rollouts: start one from a spec, act on it as an
//! operator, wait for a phase, and keep traffic flowing meanwhile.
//!
//! The same harness runs the demo (`src/bin/canary-demo.rs`), so what the
//! demo shows is what the tests check.

pub mod analyzer;
pub mod backend;
pub mod envoy;
pub mod http;
pub mod istio;
pub mod load;
pub mod paths;
pub mod process;
pub mod rollout;
pub mod soak;
pub mod stack;
pub mod stats;

use std::time::Duration;

pub use analyzer::StopMode;
pub use backend::{BackendOpts, BackendStats};
pub use load::{Load, LoadReport, Outcome};
pub use paths::Binaries;
pub use rollout::BackgroundLoad;
pub use stack::{HungAnalyzer, Ports, Stack, StackBuilder};

/// Re-exported for [`eventually!`], so callers need no direct dependency.
pub use anyhow;

/// Environment variable setting how long [`eventually!`] and readiness
/// waits keep trying, in milliseconds.
pub const PATIENCE_ENV: &str = "CANARY_TEST_PATIENCE_MS";

/// Default patience: generous for a loaded 2-core CI machine, yet short
/// enough that a real hang fails the test in reasonable time.
pub const DEFAULT_PATIENCE_MS: u64 = 20_000;

/// How long to keep polling before giving up.
pub fn patience() -> Duration {
    let patience_ms =
        std::env::var(PATIENCE_ENV).ok().and_then(|value| value.parse().ok()).unwrap_or(DEFAULT_PATIENCE_MS);
    Duration::from_millis(patience_ms)
}

/// Retries an `anyhow::Result` expression (which may `.await` and use `?`)
/// every 50 ms until it is `Ok`, and yields the value. Panics with the last
/// error once [`patience`] has passed.
///
/// ```no_run
/// # async fn example(stack: &canary_tests::Stack) {
/// let served = canary_tests::eventually!("backends served 10 requests", {
///     let [stable, canary] = stack.served().await?;
///     canary_tests::anyhow::ensure!(stable.served + canary.served == 10, "served {stable:?} {canary:?}");
///     Ok(stable.served)
/// });
/// # }
/// ```
#[macro_export]
macro_rules! eventually {
    ($what:expr, $body:expr) => {{
        let patience = $crate::patience();
        let started = ::std::time::Instant::now();
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let result: $crate::anyhow::Result<_> = async { $body }.await;
            match result {
                Ok(value) => break value,
                Err(error) if started.elapsed() >= patience => {
                    panic!(
                        "eventually {}: still failing after {:?} and {} attempts: {:#}",
                        $what, patience, attempts, error
                    )
                }
                Err(_) => ::tokio::time::sleep(::std::time::Duration::from_millis(50)).await,
            }
        }
    }};
}
