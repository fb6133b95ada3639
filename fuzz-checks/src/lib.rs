//! The invariants of the fuzz targets, one `check_<target>(data)` per target.
//!
//! Each function feeds arbitrary bytes to the code under test and panics when
//! an invariant breaks; a panic is what libFuzzer reports as a crash. The
//! functions live here, in a normal workspace crate, rather than in the
//! cargo-fuzz project so that `tests/corpus.rs` can replay the committed
//! corpus (seeds and crash reproducers) on stable Rust in `cargo test`, and
//! so that CI covers them even where nightly is unavailable.
//!
//! See `fuzz/README.md` for the targets, the invariants and how to run them.

mod batch;
mod filter_config;
mod histogram;
mod report;
mod rollout_spec;
mod weights;

pub use batch::check_batch_decode;
pub use filter_config::check_filter_config;
pub use histogram::{HistogramInput, check_histogram};
pub use report::check_report_decode;
pub use rollout_spec::check_rollout_spec;
pub use weights::check_weights_decode;

/// A target's invariant check: panics when the input breaks one.
pub type Check = fn(&[u8]);

/// Every target: its name (the directory under `fuzz/corpus/` and the
/// cargo-fuzz binary) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("report_decode", check_report_decode),
    ("weights_decode", check_weights_decode),
    ("filter_config", check_filter_config),
    ("rollout_spec", check_rollout_spec),
    ("histogram", check_histogram),
    ("batch_decode", check_batch_decode),
];
