//! Benchmarks of the canary product, run against the real stack that the
//! integration harness (`canary-tests`) starts: Envoy 1.40 with the wasm
//! filter, the analyzer sidecar and two demo backends on loopback.
//!
//! Benchmarks are not tests: they assert nothing about absolute times. Each
//! one measures a quantity a user cares about, keeps every raw sample, and
//! writes them with a description of the machine (see [`machine`]) under
//! `bench/results/`, so two runs can be compared side by side. Summaries are
//! nearest-rank quantiles ([`quantiles`]) and ratios between the
//! configurations of one run, which survive a change of machine far better
//! than absolute milliseconds. Where the product logs the parts of a measured
//! time, [`analyzer_log`] reads them back so outliers can be explained.
//!
//! Each benchmark is a module with an options type, an async `run` that
//! returns a serializable result, and a Markdown rendering; the
//! `canary-bench` binary is the thin shell that parses flags and writes the
//! files ([`results`]).

pub mod analyzer_log;
pub mod detection;
pub mod footprint;
pub mod loadgen;
pub mod machine;
pub mod overhead;
pub mod plots;
pub mod procfs;
pub mod propagation;
pub mod quantiles;
pub mod report;
pub mod results;
pub mod scale;
pub mod summary;
