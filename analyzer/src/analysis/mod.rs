//! The analysis engine: compares canary with stable every tick and decides
//! whether to roll back, and whether a step may be promoted.
//!
//! Pure code: (state, tick, time) → (state, assessment). No clock, no I/O,
//! no randomness; the whole state serialises so that the rollout controller
//! can persist it and resume after a crash. The statistics, with formulas and
//! validity arguments, are in `docs/statistics.md`; in short:
//!
//! - Error rate: a one-sided Lindon–Malek Bayes factor on which arm each
//!   error fell in, with ρ the canary share of requests, run as an e-process
//!   whose per-step factors are multiplied across steps ([`mixture`]).
//! - Latency: the same test on the requests above stable's p50/p95/p99, the
//!   factors averaged, plus a time-uniform band on the two latency CDFs as a
//!   catch-all (`band.rs`).
//! - Both count tests divide their counts by an estimated overdispersion of
//!   the split between the arms, which can only lower the e-values.
//! - α (default 0.01) is split over the three, so the chance of any false
//!   rollback over the whole rollout, however often it is checked, is at most
//!   α when canary and stable behave the same.
//! - Absolute guards (the brief's rollback thresholds, sustained over time)
//!   and step gates (the brief's promotion thresholds, over the step).
//!
//! [`simulation`] validates all of it, and the baselines it replaces, on
//! simulated rollouts (`cargo xtask simulate`).

mod band;
mod engine;
mod histogram;
pub mod mixture;
mod report;
mod settings;
pub mod simulation;
mod window;

pub use engine::Analysis;
pub use report::{
    AlphaSplit, ArmEvidence, Assessment, BandEvidence, ErrorTestEvidence, Evidence, Gate, GateReport, GateStatus,
    GuardEvidence, LatencyTestEvidence, RULE_ERROR_E_VALUE, RULE_LATENCY_BAND, RULE_LATENCY_E_VALUE, RecentEvidence,
    ThresholdEvidence, Verdict,
};
pub use settings::{AnalysisSettings, ArmTick, Gates, Guards, HostHealth, SettingsError, Tick};
