//! Canary host health from Envoy's admin API, the input of the brief's
//! "health check failures > 50% of canary hosts" guard and of blue-green
//! pre-checks.
//!
//! Once a second the poller reads `GET {admin}/clusters?format=json` from
//! every configured Envoy and counts the hosts of the canary cluster. A host
//! is unhealthy when Envoy flags it `failed_active_health_check` or
//! `failed_outlier_check`, or EDS reports it `UNHEALTHY`. Several Envoys'
//! counts are added: each health-checks the hosts on its own, so a host that
//! one of them cannot reach counts once as unhealthy there. Envoys that do
//! not answer are left out; when none answers for [`STALE_AFTER_MS`], health
//! is unknown (`None`), which the engine treats as "insufficient" rather than
//! healthy.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::http_client::HttpClient;
use crate::rollout::HostCounts;

/// Host health older than this is no longer used.
pub const STALE_AFTER_MS: u64 = 5_000;
/// Deadline of one admin read; below the poll period so polls never pile up.
const ADMIN_TIMEOUT: Duration = Duration::from_millis(800);
const POLL_PERIOD: Duration = Duration::from_secs(1);

/// Counts the hosts of `cluster` in an Envoy `/clusters?format=json`
/// document; `Ok(None)` when Envoy does not know the cluster.
pub fn parse_clusters(body: &[u8], cluster: &str) -> Result<Option<HostCounts>, String> {
    let document: Value = serde_json::from_slice(body).map_err(|error| format!("not JSON: {error}"))?;
    let statuses = document
        .get("cluster_statuses")
        .and_then(Value::as_array)
        .ok_or_else(|| "no cluster_statuses array".to_owned())?;
    let Some(status) = statuses.iter().find(|status| status.get("name").and_then(Value::as_str) == Some(cluster))
    else {
        return Ok(None);
    };
    let hosts = status.get("host_statuses").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut counts = HostCounts { healthy: 0, total: 0 };
    for host in hosts {
        counts.total += 1;
        let health = host.get("health_status");
        let flag = |name: &str| health.and_then(|health| health.get(name)).and_then(Value::as_bool) == Some(true);
        let eds_unhealthy =
            health.and_then(|health| health.get("eds_health_status")).and_then(Value::as_str) == Some("UNHEALTHY");
        if !(flag("failed_active_health_check") || flag("failed_outlier_check") || eds_unhealthy) {
            counts.healthy += 1;
        }
    }
    Ok(Some(counts))
}

/// The latest host health, shared between the poller and the controller.
#[derive(Debug, Clone, Default)]
pub struct HostHealthCell {
    latest: Arc<Mutex<Option<(HostCounts, u64)>>>,
}

impl HostHealthCell {
    /// The latest counts, unless older than [`STALE_AFTER_MS`].
    pub fn current(&self, now_unix_ms: u64) -> Option<HostCounts> {
        let latest = *self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        latest.filter(|(_, at)| now_unix_ms.saturating_sub(*at) <= STALE_AFTER_MS).map(|(counts, _)| counts)
    }

    pub fn set(&self, counts: HostCounts, now_unix_ms: u64) {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some((counts, now_unix_ms));
    }
}

/// Polls every admin URL once a second until shutdown.
pub async fn poll(
    admin_urls: Vec<String>,
    cluster: String,
    cell: HostHealthCell,
    client: HttpClient,
    mut shutdown_rx: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(POLL_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown_rx.wait_for(|stopping| *stopping) => return,
        }
        let mut sum: Option<HostCounts> = None;
        for admin_url in &admin_urls {
            let url = format!("{admin_url}/clusters?format=json");
            let counts = match client.get(&url, ADMIN_TIMEOUT).await {
                Ok((status, body)) if status.is_success() => parse_clusters(&body, &cluster),
                Ok((status, _)) => Err(format!("{url}: status {status}")),
                Err(error) => Err(error),
            };
            match counts {
                Ok(Some(counts)) => {
                    let total = sum.get_or_insert(HostCounts { healthy: 0, total: 0 });
                    total.healthy += counts.healthy;
                    total.total += counts.total;
                }
                // Envoy answered but has no such cluster: zero hosts, which
                // never passes a pre-check.
                Ok(None) => {
                    sum.get_or_insert(HostCounts { healthy: 0, total: 0 });
                    tracing::debug!(%url, %cluster, "envoy has no such cluster");
                }
                Err(error) => tracing::debug!(%error, "cannot read canary host health"),
            }
        }
        if let Some(counts) = sum {
            cell.set(counts, crate::state::unix_now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Envoy 1.40 answers (trimmed): flags are absent when false.
    const ENVOY_CLUSTERS: &str = r#"{"cluster_statuses": [
        {"name": "stable", "host_statuses": [{"address": {}, "health_status": {"eds_health_status": "HEALTHY"}}]},
        {"name": "canary", "host_statuses": [
            {"address": {}, "health_status": {"failed_active_health_check": true, "eds_health_status": "HEALTHY"}},
            {"address": {}, "health_status": {"eds_health_status": "HEALTHY"}},
            {"address": {}, "health_status": {"failed_outlier_check": true, "eds_health_status": "HEALTHY"}},
            {"address": {}, "health_status": {"eds_health_status": "UNHEALTHY"}},
            {"address": {}, "health_status": {"eds_health_status": "HEALTHY"}}
        ]}
    ]}"#;

    #[test]
    fn counts_hosts_by_envoys_health_flags() {
        assert_eq!(parse_clusters(ENVOY_CLUSTERS.as_bytes(), "canary"), Ok(Some(HostCounts { healthy: 2, total: 5 })));
        assert_eq!(parse_clusters(ENVOY_CLUSTERS.as_bytes(), "stable"), Ok(Some(HostCounts { healthy: 1, total: 1 })));
        assert_eq!(parse_clusters(ENVOY_CLUSTERS.as_bytes(), "other"), Ok(None));
        assert!(parse_clusters(b"<html>", "canary").is_err());
        assert!(parse_clusters(b"{}", "canary").is_err());
    }

    #[test]
    fn stale_health_is_unknown() {
        let cell = HostHealthCell::default();
        assert_eq!(cell.current(1_000), None);
        cell.set(HostCounts { healthy: 1, total: 2 }, 1_000);
        assert_eq!(cell.current(1_000 + STALE_AFTER_MS), Some(HostCounts { healthy: 1, total: 2 }));
        assert_eq!(cell.current(1_001 + STALE_AFTER_MS), None);
    }
}
