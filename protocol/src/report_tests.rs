#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;

fn sample_stats(seed: u64, requests: u64) -> VersionStats {
    let mut stats = VersionStats::default();
    let mut rng = crate::split::SplitRng::new(seed);
    for _ in 0..requests {
        let class = match rng.next_u64() % 100 {
            0 => StatusClass::NoResponse,
            1..=3 => StatusClass::ServerError,
            4..=8 => StatusClass::ClientError,
            9 => StatusClass::Redirect,
            _ => StatusClass::Success,
        };
        stats.record(class, rng.next_u64() % 2_000_000);
    }
    stats
}

fn sample_header() -> ReportHeader {
    ReportHeader {
        proxy_id: "envoy-7f9c".to_owned(),
        worker_id: 0xdead_beef,
        seq: 42,
        weights_version: 3,
        counts_weights_version: 2,
        max_hold_ms: 1_000,
    }
}

fn encoded(stable: &VersionStats, canary: &VersionStats) -> Vec<u8> {
    let mut out = Vec::new();
    encode_report(&sample_header(), stable, canary, &mut out);
    out
}

#[test]
fn dense_encoding_round_trips_through_decode() {
    let stable = sample_stats(1, 900);
    let canary = sample_stats(2, 100);
    let bytes = encoded(&stable, &canary);
    let report = Report::decode(&bytes).expect("valid report");
    assert_eq!(report.header, sample_header());
    assert_eq!(report.version(Version::Stable), &stable.to_delta());
    assert_eq!(report.version(Version::Canary), &canary.to_delta());
    let mut again = Vec::new();
    report.encode(&mut again);
    assert_eq!(again, bytes, "sparse and dense encoders agree");
}

#[test]
fn empty_report_is_small() {
    let bytes = encoded(&VersionStats::default(), &VersionStats::default());
    assert!(bytes.len() <= 48, "{} bytes", bytes.len());
    let report = Report::decode(&bytes).expect("valid");
    assert_eq!(report.versions[0].requests, 0);
}

#[test]
fn thousand_requests_fit_in_a_few_hundred_bytes() {
    let bytes = encoded(&sample_stats(1, 900), &sample_stats(2, 100));
    assert!(bytes.len() < 4_000, "{} bytes", bytes.len());
}

/// Decodes `bytes` and checks the error message, so every message stays
/// specific about what was wrong.
fn check_rejected(bytes: &[u8], message: &str) {
    match Report::decode(bytes) {
        Ok(report) => panic!("accepted a bad report: {report:?}"),
        Err(error) => assert_eq!(error.to_string(), message),
    }
}

/// A valid report with `edit` applied to the decoded form, then re-encoded.
fn edited(edit: impl FnOnce(&mut Report)) -> Vec<u8> {
    let mut report = Report::decode(&encoded(&sample_stats(1, 50), &sample_stats(2, 5))).expect("valid");
    edit(&mut report);
    let mut out = Vec::new();
    report.encode(&mut out);
    out
}

#[test]
fn rejects_bad_reports_naming_what_was_wrong() {
    let good = encoded(&sample_stats(1, 50), &sample_stats(2, 5));
    check_rejected(&good[..good.len() - 1], "report: truncated while reading canary.bucket count value");
    check_rejected(&good[..4], "report: truncated while reading histogram max value power");
    let mut trailing = good.clone();
    trailing.push(0);
    check_rejected(&trailing, "report: 1 unexpected bytes after the end of the message");
    let mut magic = good.clone();
    magic[0] = b'X';
    check_rejected(&magic, "report: starts with [58, 52], not the magic bytes [43, 52]");
    let mut format = good.clone();
    format[2] = 9;
    check_rejected(&format, "report: format version 9 is not supported (this build speaks version 1)");
    let mut layout = good.clone();
    layout[3] = 5;
    check_rejected(&layout, "report: histogram layout is (grouping 5, max power 32), expected (7, 32)");

    check_rejected(
        &edited(|r| r.versions[1].requests += 1),
        "report: canary status counts sum to 5, but its request count is 6",
    );
    check_rejected(
        &edited(|r| {
            r.versions[0].requests += 1;
            r.versions[0].status.status_2xx += 1;
        }),
        "report: stable latency bucket counts sum to 50, but its request count is 51",
    );
    check_rejected(&edited(|r| r.header.seq = 0), "report: seq is 0, must start at 1");
    check_rejected(&edited(|r| r.header.proxy_id.clear()), "report: proxy id length is 0, must be 1..=255 bytes");
    check_rejected(
        &edited(|r| {
            r.versions[1].latency_us.buckets = vec![(5_000, 5)];
        }),
        "report: canary.bucket index is 5000, is past the layout's last bucket (3327)",
    );
    check_rejected(
        &edited(|r| {
            let total = r.versions[1].requests;
            r.versions[1].latency_us.buckets = vec![(1, 0), (2, total)];
        }),
        "report: canary.bucket count value is 0, must be non-zero",
    );
}

#[test]
fn rejects_non_utf8_proxy_id() {
    let mut bytes = encoded(&VersionStats::default(), &VersionStats::default());
    // Header is 5 bytes, then the proxy id length, then its bytes.
    bytes[6] = 0xff;
    check_rejected(&bytes, "report: proxy id is not valid UTF-8");
}

#[test]
fn status_classes() {
    let check = |status: u16, class: StatusClass| assert_eq!(StatusClass::from_status(status), class, "{status}");
    check(101, StatusClass::Success);
    check(200, StatusClass::Success);
    check(299, StatusClass::Success);
    check(304, StatusClass::Redirect);
    check(404, StatusClass::ClientError);
    check(503, StatusClass::ServerError);
    check(999, StatusClass::ServerError);
}

#[test]
fn merge_conserves_counts() {
    let mut left = sample_stats(1, 300);
    let right = sample_stats(2, 200);
    left.merge(&right);
    assert_eq!(left.requests, 500);
    assert_eq!(left.status.checked_total(), Some(500));
    assert_eq!(left.latency_us.total_count(), 500);
    left.reset();
    assert!(left.is_empty() && left.latency_us.is_empty());
}

/// The bytes of `sample_header()` alone, without the two version sections.
fn header_bytes() -> Vec<u8> {
    let empty = encoded(&VersionStats::default(), &VersionStats::default());
    // Each empty section is seven zero varints: requests, five status
    // classes, bucket count.
    empty[..empty.len() - 14].to_vec()
}

fn varint(value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    crate::wire::put_varint(&mut out, value);
    out
}

#[test]
fn rejects_impossible_counts_and_sizes_naming_what_was_wrong() {
    let empty_section = [0u8; 7];
    // A proxy id longer than any the encoder writes.
    let mut long_proxy_id = encoded(&VersionStats::default(), &VersionStats::default());
    assert_eq!(long_proxy_id[5], 10, "the sample proxy id's length");
    long_proxy_id.splice(5..6, varint(256));
    check_rejected(&long_proxy_id, "report: proxy id length is 256, must be 1..=255 bytes");

    // More buckets than the layout has, up to a count no memory could hold:
    // refused before anything is reserved for them.
    for claimed in [3_329, u64::MAX] {
        let mut bytes = header_bytes();
        bytes.extend_from_slice(&[0; 6]);
        bytes.extend(varint(claimed));
        check_rejected(
            &bytes,
            &format!("report: stable.bucket count is {claimed}, more than the layout's 3328 buckets"),
        );
    }

    // Status counts whose sum does not fit in 64 bits.
    let mut bytes = header_bytes();
    bytes.extend(varint(1));
    bytes.extend(varint(u64::MAX));
    bytes.extend(varint(1));
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(&empty_section);
    check_rejected(&bytes, &format!("report: stable.status_2xx is {}, status counts overflow when summed", u64::MAX));

    // Latency buckets whose total does not fit in 64 bits.
    let mut bytes = header_bytes();
    bytes.extend_from_slice(&empty_section);
    bytes.extend(varint(1));
    bytes.extend_from_slice(&[1, 0, 0, 0, 0]);
    bytes.extend(varint(2));
    bytes.extend(varint(0));
    bytes.extend(varint(u64::MAX));
    bytes.extend(varint(0));
    bytes.extend(varint(1));
    check_rejected(&bytes, "report: canary.bucket count value is 1, overflows the histogram total");

    // A varint longer than 64 bits.
    let mut bytes = header_bytes()[..5 + 1 + 10].to_vec();
    bytes.extend_from_slice(&[0xff; 11]);
    check_rejected(&bytes, "report: worker id is not a valid varint (longer than 64 bits)");
}
