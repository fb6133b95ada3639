//! Pure logic shared by the wasm filter and the native analyzer.
//!
//! This crate owns everything both sides must agree on bit for bit: the
//! canary weight and its 0.01% resolution, the split decision (random and
//! sticky), the latency histogram layout, and the binary wire formats
//! (filter → analyzer reports, alone or batched; analyzer → filter sync
//! responses and batch acknowledgements).
//!
//! It does no I/O, reads no clock and builds for native targets and for
//! `wasm32`. Its tests run on both so that the analyzer can answer "which
//! version does this user get?" exactly as the filter would.

pub mod batch;
pub mod latency;
pub mod report;
pub mod split;
pub mod sync;
pub mod weights;
mod wire;

pub use batch::{BatchAck, BatchDecodeError, ReportBatch, WorkerAck};
pub use latency::{LatencyHistogram, SparseLatency};
pub use report::{Report, ReportHeader, StatusClass, StatusCounts, VersionDelta, VersionStats};
pub use split::{SplitRng, Version, cookie_value, sticky_bucket, sticky_version, version_for_bucket};
pub use sync::SyncResponse;
pub use weights::{CanaryWeight, WeightError, Weights};
pub use wire::DecodeError;
