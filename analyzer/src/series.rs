//! The dashboard's time series: the last 15 minutes of per-version samples
//! (weight, request rate, error rate, p95) and the data plane's convergence,
//! one sample every [`SAMPLE_INTERVAL_MS`].
//!
//! The aggregate keeps cumulative totals only (and a sliding window of a
//! minute), so the sampler reads the totals every interval and a sample is
//! the difference between two readings: rates are exact over the interval,
//! and the p95 comes from the difference of the two latency histograms.
//! [`Series`] is pure (times are arguments); [`sample`] is the task around
//! it, and `GET /v1/series` ([`get_series`]) reads it.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use canary_protocol::LatencyHistogram;
use canary_protocol::latency::bucket_bounds;
use serde::Serialize;
use tokio::sync::watch;

use crate::aggregate::VersionCounts;
use crate::api::ApiError;
use crate::state::{AppState, unix_now_ms};

/// How often the sampler reads the totals.
pub const SAMPLE_INTERVAL_MS: u64 = 2_000;
/// How far back the series reaches.
pub const SPAN_MS: u64 = 15 * 60 * 1_000;
/// Samples kept at most: the span at the sampling interval, plus one so that
/// both ends of the span are in. Bounds memory if the clock jumps.
pub const MAX_SAMPLES: usize = (SPAN_MS / SAMPLE_INTERVAL_MS) as usize + 1;

/// Cumulative counts at one instant: what the sampler reads from the state.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at_unix_ms: u64,
    pub weights_version: u64,
    pub canary_weight_bp: u16,
    /// Stable, then canary: totals since the state was created.
    pub totals: [VersionCounts; 2],
    pub live_workers: usize,
    /// Live workers that have applied `weights_version`.
    pub converged_workers: usize,
}

/// One point of the series, as `GET /v1/series` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub at_unix_ms: u64,
    pub weights_version: u64,
    pub live_workers: usize,
    pub converged_workers: usize,
    pub stable: VersionSample,
    pub canary: VersionSample,
}

/// One version over the interval that ends at the sample. Rates are `null`
/// for the first sample after a start (no earlier reading to subtract), and
/// the error ratio and p95 are `null` for an interval without requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionSample {
    pub weight_percent: f64,
    pub requests_per_second: Option<f64>,
    pub error_ratio: Option<f64>,
    pub p95_ms: Option<f64>,
}

/// The bounded ring of samples and the reading the next one is measured
/// from.
#[derive(Debug, Default)]
pub struct Series {
    samples: VecDeque<Sample>,
    previous: Option<Reading>,
}

impl Series {
    pub fn new() -> Series {
        Series::default()
    }

    /// Turns `reading` into a sample (the difference from the previous
    /// reading) and drops samples older than [`SPAN_MS`] before it. A
    /// reading that is not later than the previous one (the wall clock went
    /// back) restarts the series rather than producing negative intervals.
    pub fn record(&mut self, reading: Reading) {
        let previous = self.previous.take().filter(|previous| previous.at_unix_ms < reading.at_unix_ms);
        if previous.is_none() {
            self.samples.clear();
        }
        let canary_percent = f64::from(reading.canary_weight_bp) / 100.0;
        let [stable_now, canary_now] = &reading.totals;
        let (stable, canary) = match &previous {
            Some(previous) => {
                let seconds = (reading.at_unix_ms - previous.at_unix_ms) as f64 / 1_000.0;
                let [stable_before, canary_before] = &previous.totals;
                (
                    interval(100.0 - canary_percent, stable_before, stable_now, seconds),
                    interval(canary_percent, canary_before, canary_now, seconds),
                )
            }
            None => (no_interval(100.0 - canary_percent), no_interval(canary_percent)),
        };
        let oldest_kept_unix_ms = reading.at_unix_ms.saturating_sub(SPAN_MS);
        while self.samples.front().is_some_and(|sample| sample.at_unix_ms < oldest_kept_unix_ms)
            || self.samples.len() >= MAX_SAMPLES
        {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_unix_ms: reading.at_unix_ms,
            weights_version: reading.weights_version,
            live_workers: reading.live_workers,
            converged_workers: reading.converged_workers,
            stable,
            canary,
        });
        self.previous = Some(reading);
    }

    /// Samples taken after `after_unix_ms` (all of them for `None`), oldest
    /// first.
    pub fn samples_after(&self, after_unix_ms: Option<u64>) -> Vec<Sample> {
        // Samples are in time order: skip the old ones from the front.
        let first_new = match after_unix_ms {
            Some(after) => self.samples.partition_point(|sample| sample.at_unix_ms <= after),
            None => 0,
        };
        self.samples.range(first_new..).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// A [`Series`] shared between the sampler and the API.
#[derive(Debug, Default)]
pub struct SeriesCell(Mutex<Series>);

impl SeriesCell {
    pub fn record(&self, reading: Reading) {
        self.lock().record(reading);
    }

    pub fn samples_after(&self, after_unix_ms: Option<u64>) -> Vec<Sample> {
        self.lock().samples_after(after_unix_ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        // A panic under this lock cannot leave a half-written sample that
        // matters more than a missing chart.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sampler: reads the state every [`SAMPLE_INTERVAL_MS`] until shutdown.
pub async fn sample(state: AppState, mut shutdown_rx: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(SAMPLE_INTERVAL_MS));
    // After a stall, one sample over the longer interval rather than a burst
    // of samples over nearly empty ones.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let reading = state.series_reading(unix_now_ms());
                state.series().record(reading);
            }
            _ = shutdown_rx.wait_for(|stopping| *stopping) => return,
        }
    }
}

/// `GET /v1/series` answer.
#[derive(Debug, Serialize)]
struct SeriesBody {
    interval_ms: u64,
    span_ms: u64,
    samples: Vec<Sample>,
}

/// `GET /v1/series[?after_unix_ms=N]`: the samples, or only those newer than
/// `N`, so that a dashboard polling every few seconds fetches one or two.
pub async fn get_series(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let after_unix_ms = parse_after(query.as_deref())?;
    let samples = state.series().samples_after(after_unix_ms);
    Ok(axum::Json(SeriesBody { interval_ms: SAMPLE_INTERVAL_MS, span_ms: SPAN_MS, samples }).into_response())
}

/// Parses the one optional query parameter, `after_unix_ms`.
fn parse_after(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut after_unix_ms = None;
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let field = Some(key.to_owned());
        if key != "after_unix_ms" {
            let message = format!("unknown query parameter {key:?}; expected after_unix_ms");
            return Err(ApiError::BadRequest { message, field });
        }
        if after_unix_ms.is_some() {
            return Err(ApiError::BadRequest { message: "after_unix_ms is given twice".to_owned(), field });
        }
        let parsed = value.parse::<u64>().map_err(|_| ApiError::BadRequest {
            message: format!("after_unix_ms is {value:?}, must be milliseconds since the Unix epoch"),
            field: field.clone(),
        })?;
        after_unix_ms = Some(parsed);
    }
    Ok(after_unix_ms)
}

fn no_interval(weight_percent: f64) -> VersionSample {
    VersionSample { weight_percent, requests_per_second: None, error_ratio: None, p95_ms: None }
}

/// One version between two readings `seconds` apart. Totals only grow; a
/// counter that went down (a state directory replaced under a running
/// analyzer) counts as no traffic rather than as a wrapped huge number.
fn interval(weight_percent: f64, before: &VersionCounts, now: &VersionCounts, seconds: f64) -> VersionSample {
    let requests = now.requests.saturating_sub(before.requests);
    let errors = now.errors().saturating_sub(before.errors());
    VersionSample {
        weight_percent,
        requests_per_second: Some(requests as f64 / seconds),
        error_ratio: (requests > 0).then(|| errors.min(requests) as f64 / requests as f64),
        p95_ms: p95_ms_between(&before.latency_us, &now.latency_us),
    }
}

/// The p95 of the latencies recorded between two cumulative histograms, by
/// the protocol's quantile code on their difference.
fn p95_ms_between(before: &LatencyHistogram, now: &LatencyHistogram) -> Option<f64> {
    let mut difference = LatencyHistogram::new();
    let bounds = bucket_bounds();
    for (index, (&count_now, &count_before)) in now.counts().iter().zip(before.counts()).enumerate() {
        let added = count_now.saturating_sub(count_before);
        if added > 0
            && let Some(&(lower_us, _)) = bounds.get(index)
        {
            difference.record_n_us(lower_us, added);
        }
    }
    let [p95_us] = difference.quantiles_us([0.95])?;
    Some(p95_us as f64 / 1_000.0)
}

#[cfg(test)]
#[path = "series_tests.rs"]
mod tests;
