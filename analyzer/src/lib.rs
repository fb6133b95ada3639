//! The canary analyzer: the sidecar every canary filter syncs with.
//!
//! It owns the control side of progressive delivery. Filters in every Envoy
//! worker send per-version counts and latency histograms over a long-poll
//! (`POST /v1/filter/sync`); the analyzer deduplicates and aggregates them
//! ([`aggregate`]), persists weights, totals and the deduplication table so
//! that a `kill -9` loses nothing acknowledged ([`store`], [`weights_file`]),
//! and answers each long-poll with the weights to apply, so a weight change
//! or rollback reaches every worker within milliseconds. SREs read and steer
//! it through a JSON API and Prometheus metrics ([`api`], [`metrics`]).
//!
//! The wire formats and the weight type come from `canary_protocol`; this
//! crate only decides what to do with them.
//!
//! Module map:
//! - [`config`]: flags, TOML file and environment, validated into a `Config`.
//! - [`aggregate`]: pure (time is an argument). Totals, sliding window,
//!   since-change aggregate, worker table with deduplication, liveness and
//!   convergence, the `GET /v1/rollout` view (a data-plane summary of
//!   bounded size) and the pages of `GET /v1/workers`.
//! - [`store`]: the state file (atomic JSON writes) and the group-commit
//!   generation counters.
//! - [`weights_file`]: the weights, persisted apart in two checksummed
//!   fixed-size slots (one `pwrite` + `fdatasync` per change), so a weight
//!   change never waits for the state file; the record format is pure.
//! - [`state`]: `AppState`, the shell around the aggregate: lock, published
//!   weights (`ArcSwap` + `watch`), convergence notifications and the one
//!   persister task.
//! - [`api`]: `app(state) -> Router`, the [`Api`] service that serves it
//!   with the sync endpoint in front of it, and the JSON error type.
//! - [`auth`]: bearer tokens by role (filter, SRE, read), 401 versus 403.
//! - [`tls`]: optional HTTPS (rustls) on the same listener.
//! - [`metrics`]: the Prometheus exposition, computed at scrape time.
//! - [`rollout`]: pure. The rollout spec (YAML/JSON, validated into resolved
//!   steps) and the rollout state machine: (state, tick or command, time) →
//!   (state, actions).
//! - [`controller`]: the shell around [`rollout`] and [`analysis`]: the
//!   once-a-second tick, rollout persistence (`rollout.json`,
//!   `rollout-history.json`), weight enforcement, commands from the API.
//! - [`notify`]: webhook payloads (Slack, PagerDuty Events v2, JSON) and
//!   their non-blocking, retrying delivery.
//! - [`hosts`]: canary host health from Envoy's admin `/clusters`.
//! - [`http_client`]: outbound HTTP(S) with deadlines and size caps.
//! - [`dashboard`]: the web dashboard at `/`, assets compiled in.
//! - [`series`]: the dashboard's 15-minute per-version time series
//!   (`GET /v1/series`), sampled from the totals; the ring is pure.

pub mod aggregate;
pub mod analysis;
pub mod api;
pub mod auth;
pub mod config;
pub mod controller;
pub mod dashboard;
pub mod hosts;
pub mod http_client;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod rollout;
pub mod series;
pub mod state;
pub mod store;
pub mod tls;
pub mod weights_file;

pub use api::{Api, app};
pub use config::{Cli, Config};
pub use state::AppState;
