//! Fixed vectors that pin the shared logic. This file runs natively under
//! `cargo test` and compiled to `wasm32-unknown-unknown` under Node with
//! `wasm-bindgen-test` (see `cargo xtask test`), so a difference between the
//! filter's target and the analyzer's fails one of the two runs.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use canary_protocol::report::encode_report;
use canary_protocol::{
    CanaryWeight, Report, ReportHeader, SplitRng, StatusClass, SyncResponse, Version, VersionStats, Weights,
    sticky_bucket, sticky_version,
};

/// (key, sticky bucket). Buckets were computed once and frozen: changing the
/// hash would silently move users between versions mid-rollout.
const BUCKETS: &[(&str, u16)] = &[
    ("", 1758),
    ("a", 9014),
    ("user-1", 4861),
    ("user-42", 3163),
    ("alice@example.com", 4645),
    ("session-9f8e7d", 2997),
    ("🦀", 2193),
    ("x-very-long-key-0123456789abcdefghijklmnopqrstuvwxyz", 4625),
];

/// (key, canary weight in bp, version), including both sides of each edge.
const ASSIGNMENTS: &[(&str, u16, Version)] = &[
    ("", 0, Version::Stable),
    ("", 1758, Version::Stable),
    ("", 1759, Version::Canary),
    ("a", 9014, Version::Stable),
    ("a", 9015, Version::Canary),
    ("a", 10_000, Version::Canary),
    ("user-1", 1, Version::Stable),
    ("user-1", 1_000, Version::Stable),
    ("user-1", 5_000, Version::Canary),
    ("user-42", 2_500, Version::Stable),
    ("user-42", 5_000, Version::Canary),
    ("🦀", 2_500, Version::Canary),
    ("🦀", 1_000, Version::Stable),
];

#[test]
fn xxh3_matches_the_published_reference() {
    // XXH3_64bits("") from the xxHash specification's test vectors.
    assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2D06_8005_38D3_94C2);
}

#[test]
fn sticky_buckets_are_frozen() {
    for &(key, bucket) in BUCKETS {
        assert_eq!(sticky_bucket(key.as_bytes()), bucket, "key {key:?}");
    }
}

#[test]
fn sticky_assignments_are_frozen() {
    for &(key, bp, version) in ASSIGNMENTS {
        let weight = CanaryWeight::from_bp(u64::from(bp)).expect("valid weight");
        assert_eq!(sticky_version(key.as_bytes(), weight), version, "key {key:?} at {bp} bp");
    }
}

#[test]
fn random_stream_is_frozen() {
    let mut rng = SplitRng::new(2026);
    let draws: Vec<u16> = (0..8).map(|_| rng.next_bucket()).collect();
    assert_eq!(draws, [8578, 4716, 6673, 3847, 7916, 7264, 9530, 8045]);
}

#[test]
fn report_bytes_are_frozen() {
    let mut stable = VersionStats::default();
    stable.record(StatusClass::Success, 120);
    stable.record(StatusClass::Success, 1_500);
    stable.record(StatusClass::ServerError, 250_000);
    let mut canary = VersionStats::default();
    canary.record(StatusClass::NoResponse, 5_000_000);
    let header = ReportHeader {
        proxy_id: "p1".into(),
        worker_id: 0xab_cdef,
        seq: 3,
        weights_version: 2,
        counts_weights_version: 1,
        max_hold_ms: 1_000,
    };
    let mut bytes = Vec::new();
    encode_report(&header, &stable, &canary, &mut bytes);
    let expected: &[u8] = &[
        67, 82, 1, 7, 32, 2, 112, 49, 239, 155, 175, 5, 3, 2, 1, 232, 7, 3, 2, 0, 0, 1, 0, 3, 120, 1, 194, 3, 1, 184,
        7, 1, 1, 0, 0, 0, 0, 1, 1, 152, 16, 1,
    ];
    assert_eq!(bytes, expected);
    let report = Report::decode(&bytes).expect("valid");
    assert_eq!(report.version(Version::Stable).latency_us.quantiles_us([0.5, 1.0]), Some([1_503, 250_879]));
    assert_eq!(report.version(Version::Canary).status.no_response, 1);
}

#[test]
fn sync_bytes_are_frozen() {
    let response = SyncResponse {
        acked_seq: 1,
        weights: Weights { weights_version: 129, canary_weight: CanaryWeight::from_bp(1).expect("valid") },
    };
    assert_eq!(response.to_bytes(), [b'C', b'W', 1, 1, 0x81, 0x01, 1]);
}
