//! The canary split filter: a proxy-wasm HTTP filter that Envoy runs in every
//! worker thread.
//!
//! Per request it decides stable or canary from the weights the worker last
//! applied, writes the route header Envoy routes on (overwriting anything the
//! client sent), and on completion counts the outcome and latency into the
//! worker's per-version accumulators. Off the request path, each worker keeps
//! one sync call open to the analyzer: it carries the worker's report up and
//! brings new weights down, so a weight change reaches every worker in about
//! one round trip.
//!
//! This file is the only place that knows the proxy-wasm ABI. It turns host
//! callbacks into calls on [`worker::Worker`] and [`config::FilterConfig`],
//! which are plain logic tested natively. It fails safe: with no valid
//! configuration every request is routed to stable, and when the analyzer is
//! unreachable a worker keeps the last weights it applied.

pub mod config;
pub mod mailbox;
pub mod reporter;
pub mod ticks;
pub mod worker;

#[cfg(target_arch = "wasm32")]
mod shim;
