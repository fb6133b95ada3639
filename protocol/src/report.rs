//! Filter → analyzer report: one worker's per-version counts since its last
//! acknowledged report.
//!
//! # Wire format, version 1
//!
//! All integers are unsigned LEB128 varints unless a size is given.
//!
//! | field | encoding |
//! |---|---|
//! | magic | 2 bytes, `"CR"` |
//! | format version | 1 byte, `1` |
//! | histogram layout | 1 byte grouping power, 1 byte max value power (`7`, `32`) |
//! | proxy id | varint length (1..=255), then UTF-8 bytes |
//! | worker id, seq, weights version, counts weights version, max hold ms | 5 varints |
//! | stable section, then canary section | see below |
//!
//! A version section is its request count; the counts of responses with
//! status 1xx/2xx, 3xx, 4xx, 5xx and of requests with no upstream response
//! (resets, timeouts, local replies); the number of non-zero latency buckets;
//! then that many (index gap, count) pairs, where the first gap is the index
//! and each next one is `index - previous_index - 1`.
//!
//! The decoder rejects, naming the field: a wrong magic, version or layout;
//! truncation; trailing bytes; bucket indices past the layout or not
//! increasing; zero bucket counts; and counts that do not add up (status
//! counts and histogram total must each equal the request count).

use crate::latency::{BUCKET_COUNT, GROUPING_POWER, LatencyHistogram, MAX_VALUE_POWER, SparseLatency};
use crate::split::Version;
use crate::wire::{DecodeError, Reader, put_varint};

pub const REPORT_MAGIC: [u8; 2] = *b"CR";
pub const REPORT_FORMAT_VERSION: u8 = 1;
/// Longest proxy id a report may carry, in bytes.
pub const MAX_PROXY_ID_LEN: usize = 255;

/// The class of a request's outcome, as counted in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 1xx and 2xx.
    Success,
    Redirect,
    ClientError,
    ServerError,
    /// No upstream response: reset, timeout or a reply Envoy made itself.
    NoResponse,
}

impl StatusClass {
    /// The class of an upstream HTTP status code.
    pub fn from_status(status: u16) -> Self {
        match status {
            0..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirect,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }
}

/// Request counts by outcome class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub no_response: u64,
}

impl StatusCounts {
    #[inline]
    pub fn record(&mut self, class: StatusClass) {
        let slot = match class {
            StatusClass::Success => &mut self.status_2xx,
            StatusClass::Redirect => &mut self.status_3xx,
            StatusClass::ClientError => &mut self.status_4xx,
            StatusClass::ServerError => &mut self.status_5xx,
            StatusClass::NoResponse => &mut self.no_response,
        };
        *slot = slot.saturating_add(1);
    }

    pub fn merge(&mut self, other: &StatusCounts) {
        for (mine, theirs) in self.slots_mut().into_iter().zip(other.as_array()) {
            *mine = mine.saturating_add(theirs);
        }
    }

    /// Requests that count against a version: 5xx and no response.
    pub fn errors(&self) -> u64 {
        self.status_5xx.saturating_add(self.no_response)
    }

    /// Sum over all classes, `None` on overflow.
    pub fn checked_total(&self) -> Option<u64> {
        self.as_array().into_iter().try_fold(0u64, u64::checked_add)
    }

    /// Counts in wire order: 2xx, 3xx, 4xx, 5xx, no response.
    pub fn as_array(&self) -> [u64; 5] {
        [self.status_2xx, self.status_3xx, self.status_4xx, self.status_5xx, self.no_response]
    }

    fn slots_mut(&mut self) -> [&mut u64; 5] {
        [&mut self.status_2xx, &mut self.status_3xx, &mut self.status_4xx, &mut self.status_5xx, &mut self.no_response]
    }
}

/// One version's counts as the filter accumulates them: a dense histogram,
/// updated in place on every request.
#[derive(Debug, Clone, Default)]
pub struct VersionStats {
    pub requests: u64,
    pub status: StatusCounts,
    pub latency_us: LatencyHistogram,
}

impl VersionStats {
    /// Counts one completed request.
    #[inline]
    pub fn record(&mut self, class: StatusClass, latency_us: u64) {
        self.requests = self.requests.saturating_add(1);
        self.status.record(class);
        self.latency_us.record_us(latency_us);
    }

    pub fn merge(&mut self, other: &VersionStats) {
        self.requests = self.requests.saturating_add(other.requests);
        self.status.merge(&other.status);
        self.latency_us.merge(&other.latency_us);
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    pub fn reset(&mut self) {
        self.requests = 0;
        self.status = StatusCounts::default();
        self.latency_us.reset();
    }

    /// The sparse form carried in a decoded report.
    pub fn to_delta(&self) -> VersionDelta {
        VersionDelta { requests: self.requests, status: self.status, latency_us: self.latency_us.to_sparse() }
    }
}

/// One version's counts as carried on the wire and decoded by the analyzer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionDelta {
    pub requests: u64,
    pub status: StatusCounts,
    pub latency_us: SparseLatency,
}

/// Everything in a report except the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportHeader {
    /// The Envoy instance, e.g. its node id.
    pub proxy_id: String,
    /// Random per worker VM, chosen when the VM starts.
    pub worker_id: u64,
    /// 1 for a VM's first report, +1 for each next one. A report is re-sent
    /// with the same seq until it is acknowledged.
    pub seq: u64,
    /// Weights version this worker has applied now: the analyzer's
    /// convergence view and `?wait=true` read it.
    pub weights_version: u64,
    /// Weights version the counts in this report were routed under. It
    /// differs from `weights_version` in the first report after new weights
    /// are applied, which carries the requests split under the old ones, so
    /// per-step statistics never mix two steps.
    pub counts_weights_version: u64,
    /// How long the analyzer may hold the response waiting for new weights.
    pub max_hold_ms: u32,
}

/// A decoded report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub header: ReportHeader,
    /// Indexed by [`Version::index`]: stable, then canary.
    pub versions: [VersionDelta; 2],
}

impl Report {
    pub fn version(&self, version: Version) -> &VersionDelta {
        &self.versions[version.index()]
    }

    /// Encodes a decoded (sparse) report, as simulated proxies and tests do.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_header(&self.header, out);
        for delta in &self.versions {
            encode_section(delta.requests, &delta.status, delta.latency_us.buckets.iter().copied(), out);
        }
    }

    /// Decodes and validates a report.
    pub fn decode(bytes: &[u8]) -> Result<Report, DecodeError> {
        let mut reader = Reader::new("report", bytes);
        reader.header(REPORT_MAGIC, REPORT_FORMAT_VERSION)?;
        let got_grouping = reader.byte("histogram grouping power")?;
        let got_max = reader.byte("histogram max value power")?;
        if (got_grouping, got_max) != (GROUPING_POWER, MAX_VALUE_POWER) {
            return Err(DecodeError::LayoutMismatch {
                got_grouping,
                got_max,
                want_grouping: GROUPING_POWER,
                want_max: MAX_VALUE_POWER,
            });
        }
        let proxy_id_len = reader.varint("proxy id length")?;
        if proxy_id_len == 0 || proxy_id_len > MAX_PROXY_ID_LEN as u64 {
            return Err(DecodeError::Invalid {
                what: "report",
                field: "proxy id length",
                got: proxy_id_len,
                rule: "must be 1..=255 bytes",
            });
        }
        let proxy_id_bytes = reader.bytes_exact(proxy_id_len as usize, "proxy id")?;
        let proxy_id = std::str::from_utf8(proxy_id_bytes).map_err(|_| DecodeError::ProxyIdNotUtf8)?.to_owned();
        let worker_id = reader.varint("worker id")?;
        let seq = reader.varint("seq")?;
        if seq == 0 {
            return Err(DecodeError::Invalid { what: "report", field: "seq", got: 0, rule: "must start at 1" });
        }
        let weights_version = reader.varint("weights version")?;
        let counts_weights_version = reader.varint("counts weights version")?;
        let max_hold_ms = reader.varint_at_most("max hold ms", u64::from(u32::MAX), "must fit in 32 bits")? as u32;
        let stable = decode_section(&mut reader, Version::Stable)?;
        let canary = decode_section(&mut reader, Version::Canary)?;
        reader.finish()?;
        Ok(Report {
            header: ReportHeader { proxy_id, worker_id, seq, weights_version, counts_weights_version, max_hold_ms },
            versions: [stable, canary],
        })
    }
}

/// Encodes a report straight from the filter's dense accumulators, without
/// building the sparse form first.
pub fn encode_report(header: &ReportHeader, stable: &VersionStats, canary: &VersionStats, out: &mut Vec<u8>) {
    encode_header(header, out);
    for stats in [stable, canary] {
        encode_section(stats.requests, &stats.status, stats.latency_us.nonzero_buckets(), out);
    }
}

fn encode_header(header: &ReportHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(&REPORT_MAGIC);
    out.push(REPORT_FORMAT_VERSION);
    out.push(GROUPING_POWER);
    out.push(MAX_VALUE_POWER);
    // Proxy ids are validated at configuration time; truncating here keeps
    // the encoder total even if a caller did not.
    let proxy_id = truncate_to_char_boundary(&header.proxy_id, MAX_PROXY_ID_LEN);
    put_varint(out, proxy_id.len() as u64);
    out.extend_from_slice(proxy_id.as_bytes());
    put_varint(out, header.worker_id);
    put_varint(out, header.seq);
    put_varint(out, header.weights_version);
    put_varint(out, header.counts_weights_version);
    put_varint(out, u64::from(header.max_hold_ms));
}

fn encode_section(requests: u64, status: &StatusCounts, buckets: impl Iterator<Item = (u32, u64)>, out: &mut Vec<u8>) {
    put_varint(out, requests);
    for count in status.as_array() {
        put_varint(out, count);
    }
    // The bucket count comes first, so collect the pairs into a small
    // scratch area; a second of traffic touches a few dozen buckets.
    let buckets: Vec<(u32, u64)> = buckets.collect();
    put_varint(out, buckets.len() as u64);
    let mut next_index = 0u32;
    for (index, count) in buckets {
        put_varint(out, u64::from(index - next_index));
        put_varint(out, count);
        next_index = index + 1;
    }
}

fn decode_section(reader: &mut Reader<'_>, version: Version) -> Result<VersionDelta, DecodeError> {
    let (f_requests, f_status, f_buckets, f_gap, f_count) = match version {
        Version::Stable => (
            "stable.requests",
            ["stable.status_2xx", "stable.status_3xx", "stable.status_4xx", "stable.status_5xx", "stable.no_response"],
            "stable.bucket count",
            "stable.bucket index",
            "stable.bucket count value",
        ),
        Version::Canary => (
            "canary.requests",
            ["canary.status_2xx", "canary.status_3xx", "canary.status_4xx", "canary.status_5xx", "canary.no_response"],
            "canary.bucket count",
            "canary.bucket index",
            "canary.bucket count value",
        ),
    };
    let requests = reader.varint(f_requests)?;
    let mut status_values = [0u64; 5];
    for (value, field) in status_values.iter_mut().zip(f_status) {
        *value = reader.varint(field)?;
    }
    let [status_2xx, status_3xx, status_4xx, status_5xx, no_response] = status_values;
    let status = StatusCounts { status_2xx, status_3xx, status_4xx, status_5xx, no_response };
    let bucket_count = reader.varint_at_most(f_buckets, BUCKET_COUNT as u64, "more than the layout's 3328 buckets")?;
    let mut buckets = Vec::with_capacity(bucket_count as usize);
    let mut next_index = 0u64;
    let mut histogram_total = 0u64;
    for _ in 0..bucket_count {
        let gap = reader.varint(f_gap)?;
        let index =
            next_index.checked_add(gap).filter(|index| *index < BUCKET_COUNT as u64).ok_or(DecodeError::Invalid {
                what: reader.what(),
                field: f_gap,
                got: next_index.saturating_add(gap),
                rule: "is past the layout's last bucket (3327)",
            })?;
        let count = reader.varint(f_count)?;
        if count == 0 {
            return Err(DecodeError::Invalid { what: reader.what(), field: f_count, got: 0, rule: "must be non-zero" });
        }
        histogram_total = histogram_total.checked_add(count).ok_or(DecodeError::Invalid {
            what: reader.what(),
            field: f_count,
            got: count,
            rule: "overflows the histogram total",
        })?;
        buckets.push((index as u32, count));
        next_index = index + 1;
    }
    let status_total = status.checked_total().ok_or(DecodeError::Invalid {
        what: reader.what(),
        field: f_status[0],
        got: status_2xx,
        rule: "status counts overflow when summed",
    })?;
    if status_total != requests {
        return Err(DecodeError::CountMismatch {
            version: version.as_str(),
            what_sum: "status counts",
            got: status_total,
            requests,
        });
    }
    if histogram_total != requests {
        return Err(DecodeError::CountMismatch {
            version: version.as_str(),
            what_sum: "latency bucket counts",
            got: histogram_total,
            requests,
        });
    }
    Ok(VersionDelta { requests, status, latency_us: SparseLatency { buckets } })
}

fn truncate_to_char_boundary(text: &str, max_len: usize) -> &str {
    if text.len() <= max_len {
        return text;
    }
    let mut end = max_len;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
