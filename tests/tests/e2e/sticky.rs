//! Sticky routing: a user keeps their version, weight changes move users in
//! one direction only, and the filter agrees bit for bit with
//! `canary_protocol::sticky_version`, which is what the analyzer (and an SRE
//! asking "which version does user X get?") relies on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use canary_protocol::{CanaryWeight, Version, sticky_bucket, sticky_version};
use canary_tests::{Load, Stack};
use serde_json::json;

use super::{assert_all_answered, assert_confirmed};

const STICKY_HEADER: &str = "x-user-id";
/// Each key is sent this many times per phase; all must agree.
const SENDS_PER_KEY: u64 = 3;

/// Sets the weight, sends every key `SENDS_PER_KEY` times, and returns the
/// version each key was served by, failing if a key saw both.
async fn versions_at(stack: &Stack, keys: &Arc<Vec<String>>, canary_percent: f64) -> BTreeMap<String, Version> {
    let answer = stack.set_weight(canary_percent).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let keys_for_load = Arc::clone(keys);
    let report = stack
        .load(
            Load::requests(keys.len() as u64 * SENDS_PER_KEY)
                .headers_for(move |index| {
                    let key = &keys_for_load[(index % keys_for_load.len() as u64) as usize];
                    vec![(STICKY_HEADER.to_owned(), key.clone())]
                })
                .record_each(),
        )
        .await;
    assert_all_answered(&report, &[200]);
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for outcome in &report.outcomes {
        let key = &keys[(outcome.index % keys.len() as u64) as usize];
        served.entry(key.clone()).or_default().insert(outcome.served_by.clone().unwrap_or_default());
    }
    let weight = CanaryWeight::from_percent(canary_percent).expect("valid weight");
    let mut versions = BTreeMap::new();
    let mut mismatches = Vec::new();
    for key in keys.iter() {
        let backends = &served[key];
        assert_eq!(backends.len(), 1, "key {key} was served by {backends:?} at {canary_percent}%");
        let version = if backends.contains("canary") { Version::Canary } else { Version::Stable };
        let expected = sticky_version(key.as_bytes(), weight);
        if version != expected {
            mismatches
                .push(format!("{key} (bucket {}): got {version}, expected {expected}", sticky_bucket(key.as_bytes())));
        }
        versions.insert(key.clone(), version);
    }
    assert!(mismatches.is_empty(), "at {canary_percent}% the filter disagrees with sticky_version: {mismatches:?}");
    let canary = versions.values().filter(|version| **version == Version::Canary).count();
    eprintln!(
        "sticky at {canary_percent}%: {canary}/{} keys on canary, each sent {SENDS_PER_KEY}x, all consistent",
        keys.len()
    );
    versions
}

fn canary_keys(versions: &BTreeMap<String, Version>) -> BTreeSet<&String> {
    versions.iter().filter(|(_, version)| **version == Version::Canary).map(|(key, _)| key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_keep_their_version_and_move_monotonically() {
    let stack = super::stack()
        .filter_config(json!({ "sticky": { "header": STICKY_HEADER } }))
        .start()
        .await
        .expect("stack starts");

    // Ordinary users, plus users whose bucket is 0: the only ones a 0.01%
    // canary may take. About 1 key in 10,000 has bucket 0.
    let mut keys: Vec<String> = (0..600).map(|index| format!("user-{index}")).collect();
    let bucket_zero: Vec<String> = (0..2_000_000)
        .map(|index| format!("probe-{index}"))
        .filter(|key| sticky_bucket(key.as_bytes()) == 0)
        .take(3)
        .collect();
    assert_eq!(bucket_zero.len(), 3, "bucket-0 keys exist in the first 2M probes");
    keys.extend(bucket_zero.iter().cloned());
    let keys = Arc::new(keys);

    let at_finest = versions_at(&stack, &keys, 0.01).await;
    let expected_finest: BTreeSet<&String> = bucket_zero.iter().collect();
    assert_eq!(canary_keys(&at_finest), expected_finest, "at 0.01% exactly the bucket-0 keys are canary");

    let at_10 = versions_at(&stack, &keys, 10.0).await;
    let at_50 = versions_at(&stack, &keys, 50.0).await;
    let moved_back: Vec<_> = canary_keys(&at_10).difference(&canary_keys(&at_50)).cloned().collect();
    assert!(moved_back.is_empty(), "raising 10% -> 50% moved canary keys back to stable: {moved_back:?}");

    let at_10_again = versions_at(&stack, &keys, 10.0).await;
    let gained: Vec<_> = canary_keys(&at_10_again).difference(&canary_keys(&at_50)).cloned().collect();
    assert!(gained.is_empty(), "lowering 50% -> 10% moved stable keys to canary: {gained:?}");
    assert_eq!(at_10_again, at_10, "the same weight gives every key the same version again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_picks_the_version_from_its_value() {
    let stack = super::stack()
        .filter_config(json!({ "sticky": { "cookie": "canary_user" } }))
        .start()
        .await
        .expect("stack starts");
    let answer = stack.set_weight(30.0).await.expect("set weight");
    assert_confirmed(&answer, stack.concurrency() as u64);
    let weight = CanaryWeight::from_percent(30.0).expect("valid weight");

    // The cookie sits between others, as browsers send it.
    let keys: Arc<Vec<String>> = Arc::new((0..300).map(|index| format!("session-{index}")).collect());
    let keys_for_load = Arc::clone(&keys);
    let report = stack
        .load(
            Load::requests(keys.len() as u64 * 2)
                .headers_for(move |index| {
                    let key = &keys_for_load[(index % keys_for_load.len() as u64) as usize];
                    vec![("cookie".to_owned(), format!("theme=dark; canary_user={key}; lang=en"))]
                })
                .record_each(),
        )
        .await;
    assert_all_answered(&report, &[200]);
    let mismatches: Vec<String> = report
        .outcomes
        .iter()
        .filter_map(|outcome| {
            let key = &keys[(outcome.index % keys.len() as u64) as usize];
            let expected = sticky_version(key.as_bytes(), weight).as_str();
            (outcome.served_by.as_deref() != Some(expected))
                .then(|| format!("{key}: {:?}, expected {expected}", outcome.served_by))
        })
        .collect();
    assert!(mismatches.is_empty(), "cookie-sticky routing disagrees with sticky_version: {mismatches:?}");
    eprintln!(
        "sticky cookie at 30%: {} of {} requests on canary, all as sticky_version predicts",
        report.served_by("canary"),
        report.sent
    );
}
