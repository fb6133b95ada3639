//! `report_decode`: the analyzer's decoder of filter reports, which reads
//! bytes from any process that can reach the analyzer's port.

use canary_protocol::latency::BUCKET_COUNT;
use canary_protocol::report::{MAX_PROXY_ID_LEN, encode_report};
use canary_protocol::{LatencyHistogram, Report, VersionStats};

/// Never panics; an accepted report has consistent counts, and encoding it
/// (both from the sparse form and from dense accumulators, as the filter
/// does) and decoding again gives the same report.
pub fn check_report_decode(data: &[u8]) {
    let Ok(report) = Report::decode(data) else { return };

    let proxy_id_bytes = report.header.proxy_id.len();
    assert!((1..=MAX_PROXY_ID_LEN).contains(&proxy_id_bytes), "accepted a proxy id of {proxy_id_bytes} bytes");
    assert!(report.header.seq >= 1, "accepted seq 0");
    for delta in &report.versions {
        assert_eq!(delta.status.checked_total(), Some(delta.requests), "status counts do not add up: {delta:?}");
        let mut histogram_total = 0u64;
        let mut previous_index: Option<u32> = None;
        for &(index, count) in &delta.latency_us.buckets {
            assert!((index as usize) < BUCKET_COUNT, "bucket index {index} past the layout");
            assert!(previous_index.is_none_or(|previous| index > previous), "bucket indices not increasing");
            assert_ne!(count, 0, "zero bucket count accepted");
            histogram_total = histogram_total.checked_add(count).unwrap_or_else(|| panic!("histogram total overflows"));
            previous_index = Some(index);
        }
        assert_eq!(histogram_total, delta.requests, "bucket counts do not add up");
    }

    let mut encoded = Vec::new();
    report.encode(&mut encoded);
    // The decoder accepts non-minimal varints, so the input may be longer
    // than the canonical encoding, never shorter.
    assert!(encoded.len() <= data.len(), "re-encoding grew the report");
    assert_eq!(Report::decode(&encoded).as_ref(), Ok(&report), "encode → decode does not round-trip");

    // The filter encodes straight from dense accumulators; the bytes must be
    // the same as from the sparse form.
    let dense = report.versions.clone().map(|delta| {
        let mut latency_us = LatencyHistogram::new();
        latency_us.merge_sparse(&delta.latency_us);
        VersionStats { requests: delta.requests, status: delta.status, latency_us }
    });
    let mut from_dense = Vec::new();
    encode_report(&report.header, &dense[0], &dense[1], &mut from_dense);
    assert_eq!(from_dense, encoded, "dense and sparse encoders disagree");
}
