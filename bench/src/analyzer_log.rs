//! Timings read back from the analyzer's log, to split a measured time into
//! its parts.
//!
//! The analyzer logs `weights changed` when a weight change is accepted and
//! `weights published to filters` once the new version is on disk (its slot
//! of the weights file written and fdatasynced; before that file existed,
//! the whole state file replaced) and handed to the held filter syncs. The
//! gap between the two lines of one `weights_version` is the persistence
//! part of `propagation_ms`; the rest is the push to the filter VMs and
//! their confirmations. The log is the analyzer's, not an API, so this is
//! best effort: lines it does not recognise are skipped, and a version
//! without both lines simply has no entry.

use std::collections::BTreeMap;

const CHANGED: &str = "weights changed";
const PUBLISHED: &str = "weights published to filters";

/// Milliseconds from `weights changed` to `weights published to filters`,
/// by weights version.
pub fn persist_ms_by_version(log: &str) -> BTreeMap<u64, f64> {
    let mut changed_at_s = BTreeMap::new();
    let mut persist_ms = BTreeMap::new();
    for line in log.lines() {
        let Some((at_s, version, is_published)) = parse_line(line) else { continue };
        if !is_published {
            changed_at_s.insert(version, at_s);
        } else if let Some(changed_s) = changed_at_s.get(&version) {
            // Time of day only: a change that spans midnight UTC wraps.
            let gap_s = (at_s - changed_s).rem_euclid(86_400.0);
            persist_ms.insert(version, (gap_s * 1_000_000.0).round() / 1_000.0);
        }
    }
    persist_ms
}

/// `(seconds since midnight UTC, weights_version, published?)` of a
/// `tracing` line such as
/// `2026-11-26T04:45:26.782668Z  INFO canary_analyzer::state: weights changed weights_version=2 ...`.
fn parse_line(line: &str) -> Option<(f64, u64, bool)> {
    let is_published = if line.contains(PUBLISHED) {
        true
    } else if line.contains(CHANGED) {
        false
    } else {
        return None;
    };
    let timestamp = line.split_whitespace().next()?;
    let time_of_day = timestamp.split_once('T')?.1.strip_suffix('Z')?;
    let mut fields = time_of_day.split(':');
    let hours: f64 = fields.next()?.parse().ok()?;
    let minutes: f64 = fields.next()?.parse().ok()?;
    let seconds: f64 = fields.next()?.parse().ok()?;
    let version_digits: String =
        line.split_once("weights_version=")?.1.chars().take_while(char::is_ascii_digit).collect();
    Some((hours * 3_600.0 + minutes * 60.0 + seconds, version_digits.parse().ok()?, is_published))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_changed_and_published_lines_by_version() {
        let log = "\
2026-11-26T04:45:25.417809Z  INFO canary_analyzer::state: state loaded path=/tmp/x fresh=true weights_version=1
canary-analyzer listening on 127.0.0.1:43885
2026-11-26T04:45:26.782668Z  INFO canary_analyzer::state: weights changed weights_version=2 canary_weight=10.00%
2026-11-26T04:45:26.787045Z  INFO canary_analyzer::state: weights published to filters weights_version=2 canary_weight=10.00%
2026-11-26T04:45:26.944714Z  INFO canary_analyzer::state: weights changed weights_version=3 canary_weight=0.00%
2026-11-26T04:45:26.954867Z  WARN canary_analyzer::api: rollback: canary weight set to 0 weights_version=3
2026-11-26T23:59:59.999000Z  INFO canary_analyzer::state: weights changed weights_version=4 canary_weight=10.00%
2026-11-27T00:00:00.002500Z  INFO canary_analyzer::state: weights published to filters weights_version=4 canary_weight=10.00%
2026-11-27T00:00:01.000000Z  INFO canary_analyzer::state: weights published to filters weights_version=9 canary_weight=10.00%
";
        let persist_ms = persist_ms_by_version(log);
        // Version 3 was never published in this excerpt; version 9 has no
        // `changed` line.
        assert_eq!(persist_ms, BTreeMap::from([(2, 4.377), (4, 3.5)]));
    }
}
