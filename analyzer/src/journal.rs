//! The commit journal (`journal.<generation>.bin` in `--state-dir`): what
//! makes a group commit cost the size of the batch, not of the fleet.
//!
//! Every group commit appends ONE record (`write` + `fdatasync`) and only
//! then acknowledges the reports in it. A record holds the absolute weights,
//! per-version totals and since-change counts (a few hundred bytes whatever
//! the fleet size) and the dedupe entries of the workers whose state changed
//! since the previous commit. Absolute counters rather than deltas make
//! replay idempotent and keep a weight change (which resets the since-change
//! counts) inside a batch trivially correct; only the worker table, which is
//! what grows with the fleet, is written as a delta.
//!
//! A worker's key (proxy id and worker id) is written in full the first time
//! it appears in a journal file, and as a `u32` index into that file's list
//! of keys afterwards.
//!
//! The state file (`state.json`) becomes a snapshot taken every few seconds
//! or when the journal grows past a size, off the commit path. The snapshot
//! names the journal generation it was taken at (`journal_generation`): at
//! that moment the persister started that generation's file, so its records
//! hold only changes after the snapshot. Older files are deleted once the
//! snapshot is durable. Recovery loads the snapshot and replays, in order,
//! the files from its generation on (normally one; two or three after a crash
//! during a snapshot or after a failed append, which also starts a new file).
//!
//! Why a hand-written binary layout: the record is a handful of integers and
//! strings, the crate has no binary format dependency, and recovery needs a
//! fixed framing whose torn tail can be told from corruption, which a
//! general serialisation format does not give by itself. Why CRC-32: the same
//! checksum as the weights file; it detects torn and rotten records, it is no
//! defence against a forger, and nothing on disk needs to be.
//!
//! File layout, little-endian:
//! - header (20 bytes): magic `CNJ1`, 4 zero bytes, generation (u64),
//!   CRC-32 of bytes 0..16. Files are created whole (tmp + rename), so a
//!   header that does not check out is corruption, never a torn write.
//! - records, followed by zeros written ahead in 1 MiB chunks (see
//!   `PREALLOCATE_BYTES`): payload length (u32), CRC-32 of the payload (u32), CRC-32 of
//!   those 8 bytes (u32), payload. The frame has its own checksum so that a
//!   corrupted length cannot pass for a record cut short at the end. The
//!   payload starts with the record's number in the file (u64, from 0).
//!
//! Reading: the first record that does not check out (bad frame, bad
//! payload checksum, or cut short) ends the journal when no valid record
//! follows it anywhere in the file: it is the torn tail of a write that was
//! never acknowledged. When a valid record does follow, the file is corrupt
//! and recovery stops with an error naming the file and offset: dropping it
//! would drop acknowledged counts. A record that checks out but does not
//! decode (an unknown worker index, a bucket past the layout) is always an
//! error.
//!
//! Encode, decode, scan, choosing which files to replay and applying a
//! record are pure and tested without a filesystem; [`JournalDir`] and
//! [`JournalWriter`] are the I/O around them.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use canary_protocol::latency::BUCKET_COUNT;
use canary_protocol::{CanaryWeight, LatencyHistogram, SparseLatency, StatusCounts, Weights};

use crate::aggregate::{Aggregate, DurableParts, VersionCounts, WeightsRecord, WorkerKey, WorkerState};
use crate::store::write_atomically;
use crate::weights_file::crc32;

/// File names: `journal.<generation>.bin`.
const FILE_PREFIX: &str = "journal.";
const FILE_SUFFIX: &str = ".bin";
/// Starts every file; the digit is the layout's version.
const MAGIC: [u8; 4] = *b"CNJ1";
/// Bytes of the file header.
pub const HEADER_BYTES: usize = 20;
/// Bytes of a record's frame before its payload.
pub const FRAME_BYTES: usize = 12;
/// The file grows by whole chunks of zeros written ahead of the records, so
/// that most appends overwrite blocks that already exist: `fdatasync` then
/// flushes data only, with no change of size or allocation, so no filesystem
/// journal commit (which on ext4 would also flush every other file's pending
/// data, and made commits wait behind unrelated writers).
const PREALLOCATE_BYTES: u64 = 1024 * 1024;
/// Largest payload accepted: far above a batch of every worker of a large
/// fleet with their full keys, and small enough that a wild length is no
/// allocation hazard.
const MAX_PAYLOAD_BYTES: usize = 1 << 30;

/// The effect of one group commit.
#[derive(Debug, Clone)]
pub struct CommitRecord {
    pub weights: WeightsRecord,
    pub totals: [RecordCounts; 2],
    pub since_weights_change: [RecordCounts; 2],
    /// Workers whose state changed since the previous commit, with their
    /// state now.
    pub workers: Vec<(WorkerKey, WorkerState)>,
}

impl CommitRecord {
    /// The record for the aggregate now, with the entries of the workers in
    /// `changed` (a worker forgotten since is left out: the aggregate no
    /// longer has it either).
    pub fn capture<'a>(aggregate: &Aggregate, changed: impl IntoIterator<Item = &'a WorkerKey>) -> CommitRecord {
        CommitRecord {
            weights: aggregate.weights(),
            totals: aggregate.totals().each_ref().map(RecordCounts::from),
            since_weights_change: aggregate.since_weights_change().each_ref().map(RecordCounts::from),
            workers: changed
                .into_iter()
                .filter_map(|key| aggregate.worker(key).map(|worker| (key.clone(), *worker)))
                .collect(),
        }
    }
}

/// One version's counts as a record holds them: the latency histogram as its
/// non-zero buckets. A commit captures these under the aggregate's lock, so
/// it copies the few buckets in use rather than four dense histograms of
/// [`BUCKET_COUNT`] counters each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordCounts {
    pub requests: u64,
    pub status: StatusCounts,
    pub latency_us: SparseLatency,
}

impl From<&VersionCounts> for RecordCounts {
    fn from(counts: &VersionCounts) -> Self {
        RecordCounts { requests: counts.requests, status: counts.status, latency_us: counts.latency_us.to_sparse() }
    }
}

impl From<RecordCounts> for VersionCounts {
    fn from(counts: RecordCounts) -> Self {
        let mut latency_us = LatencyHistogram::new();
        latency_us.merge_sparse(&counts.latency_us);
        VersionCounts { requests: counts.requests, status: counts.status, latency_us }
    }
}

/// The durable state being rebuilt by replay: the state file's parts with
/// the worker table keyed for upserts.
#[derive(Debug, Clone)]
pub struct ReplayState {
    pub weights: WeightsRecord,
    pub totals: [VersionCounts; 2],
    pub since_weights_change: [VersionCounts; 2],
    pub workers: BTreeMap<WorkerKey, WorkerState>,
}

impl From<DurableParts> for ReplayState {
    fn from(parts: DurableParts) -> Self {
        ReplayState {
            weights: parts.weights,
            totals: parts.totals,
            since_weights_change: parts.since_weights_change,
            workers: parts.workers.into_iter().collect(),
        }
    }
}

impl From<ReplayState> for DurableParts {
    fn from(state: ReplayState) -> Self {
        DurableParts {
            weights: state.weights,
            totals: state.totals,
            since_weights_change: state.since_weights_change,
            workers: state.workers.into_iter().collect(),
        }
    }
}

impl ReplayState {
    /// Applies one record: the counters are absolute, the workers upserted.
    pub fn apply(&mut self, record: CommitRecord) {
        self.weights = record.weights;
        self.totals = record.totals.map(VersionCounts::from);
        self.since_weights_change = record.since_weights_change.map(VersionCounts::from);
        self.workers.extend(record.workers);
    }
}

/// Assigns worker indexes while encoding one file's records.
#[derive(Debug, Default)]
pub struct RecordEncoder {
    indexes: HashMap<WorkerKey, u32>,
    /// Records encoded so far in this file: each record carries its
    /// position, so that a stray copy of an older record (which would turn
    /// the absolute counters back) cannot pass for the next one.
    records: u64,
}

impl RecordEncoder {
    /// The framed bytes of `record`. Workers first seen in this file get the
    /// next indexes, in the order they are written.
    pub fn encode(&mut self, record: &CommitRecord) -> Vec<u8> {
        let mut payload = Vec::with_capacity(256 + record.workers.len() * 40);
        put_u64(&mut payload, self.records);
        self.records += 1;
        put_u64(&mut payload, record.weights.weights.weights_version);
        put_u64(&mut payload, record.weights.changed_at_unix_ms);
        payload.extend_from_slice(&record.weights.weights.canary_weight.bp().to_le_bytes());
        for counts in record.totals.iter().chain(&record.since_weights_change) {
            put_counts(&mut payload, counts);
        }
        let (new, known): (Vec<_>, Vec<_>) =
            record.workers.iter().partition(|(key, _)| !self.indexes.contains_key(key));
        put_u32(&mut payload, len_u32(new.len()));
        for (key, worker) in new {
            let next_index = len_u32(self.indexes.len());
            self.indexes.insert(key.clone(), next_index);
            // Proxy ids are validated short by the API; a longer one is cut
            // at a char boundary rather than written with a wrong length.
            let mut proxy_id = key.proxy_id.as_str();
            while proxy_id.len() > usize::from(u16::MAX) {
                let mut end = usize::from(u16::MAX);
                while !proxy_id.is_char_boundary(end) {
                    end -= 1;
                }
                proxy_id = &proxy_id[..end];
            }
            payload.extend_from_slice(&(proxy_id.len() as u16).to_le_bytes());
            payload.extend_from_slice(proxy_id.as_bytes());
            put_u64(&mut payload, key.worker_id);
            put_worker(&mut payload, worker);
        }
        put_u32(&mut payload, len_u32(known.len()));
        for (key, worker) in known {
            put_u32(&mut payload, self.indexes.get(key).copied().unwrap_or(u32::MAX));
            put_worker(&mut payload, worker);
        }
        frame(&payload)
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_worker(out: &mut Vec<u8>, worker: &WorkerState) {
    put_u64(out, worker.last_seq);
    put_u64(out, worker.applied_weights_version);
    put_u64(out, worker.last_seen_unix_ms);
}

fn put_counts(out: &mut Vec<u8>, counts: &RecordCounts) {
    let status = counts.status;
    for value in [
        counts.requests,
        status.status_2xx,
        status.status_3xx,
        status.status_4xx,
        status.status_5xx,
        status.no_response,
    ] {
        put_u64(out, value);
    }
    let count_at = out.len();
    put_u32(out, 0);
    let mut buckets = 0u32;
    for &(index, count) in &counts.latency_us.buckets {
        put_u32(out, index);
        put_u64(out, count);
        buckets += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&buckets.to_le_bytes());
}

/// Frame + payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(FRAME_BYTES + payload.len());
    put_u32(&mut bytes, len_u32(payload.len()));
    put_u32(&mut bytes, crc32(payload));
    let frame_crc = crc32(&bytes);
    put_u32(&mut bytes, frame_crc);
    bytes.extend_from_slice(payload);
    bytes
}

/// The header of generation `generation`'s file.
pub fn header(generation: u64) -> [u8; HEADER_BYTES] {
    let mut bytes = [0u8; HEADER_BYTES];
    bytes[..4].copy_from_slice(&MAGIC);
    bytes[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32(&bytes[..16]);
    bytes[16..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Why a journal file cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    pub offset: usize,
    pub message: String,
}

/// A file's valid content.
#[derive(Debug, Clone)]
pub struct Scan {
    pub generation: u64,
    pub records: Vec<CommitRecord>,
    /// Bytes of header and valid records; less than the file when a torn
    /// tail was discarded.
    pub valid_bytes: usize,
}

/// Reads a whole journal file (see the module docs for torn tails).
pub fn scan(bytes: &[u8]) -> Result<Scan, Corrupt> {
    let corrupt = |offset: usize, message: String| Corrupt { offset, message };
    let Some(head) = bytes.get(..HEADER_BYTES) else {
        return Err(corrupt(0, format!("{} bytes, shorter than the {HEADER_BYTES}-byte header", bytes.len())));
    };
    if head[..4] != MAGIC || crc32(&head[..16]) != read_u32(&head[16..]) {
        return Err(corrupt(0, "not a journal header (wrong magic or checksum)".into()));
    }
    let generation = read_u64(&head[8..16]);
    let mut keys = Vec::new();
    let mut records = Vec::new();
    let mut offset = HEADER_BYTES;
    while offset < bytes.len() {
        let Some(payload) = valid_record_at(bytes, offset) else {
            // The first invalid record: the end when only the zeros written
            // ahead follow, a torn tail only if nothing valid follows it.
            if bytes[offset..].iter().all(|&byte| byte == 0) {
                break;
            }
            if let Some(next) = (offset + 1..bytes.len()).find(|&at| valid_record_at(bytes, at).is_some()) {
                return Err(corrupt(
                    offset,
                    format!(
                        "a damaged record is followed by a valid one at byte {next}: acknowledged counts would be lost"
                    ),
                ));
            }
            break;
        };
        let record = decode(payload, records.len() as u64, &mut keys).map_err(|message| corrupt(offset, message))?;
        records.push(record);
        offset += FRAME_BYTES + payload.len();
    }
    Ok(Scan { generation, records, valid_bytes: offset })
}

/// The payload of the record at `offset`, when its frame and payload check
/// out.
fn valid_record_at(bytes: &[u8], offset: usize) -> Option<&[u8]> {
    let frame = bytes.get(offset..offset.checked_add(FRAME_BYTES)?)?;
    if crc32(&frame[..8]) != read_u32(&frame[8..]) {
        return None;
    }
    let len = read_u32(&frame[..4]) as usize;
    if len > MAX_PAYLOAD_BYTES {
        return None;
    }
    let start = offset + FRAME_BYTES;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    (crc32(payload) == read_u32(&frame[4..8])).then_some(payload)
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(array)
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(array)
}

/// A cursor over a payload whose reads fail past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(len).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("record ends early (wanted {len} bytes at payload byte {})", self.at));
        };
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u16(&mut self) -> Result<u16, String> {
        self.take(2).map(|bytes| u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.take(4).map(read_u32)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.take(8).map(read_u64)
    }

    fn worker(&mut self) -> Result<WorkerState, String> {
        Ok(WorkerState { last_seq: self.u64()?, applied_weights_version: self.u64()?, last_seen_unix_ms: self.u64()? })
    }

    fn counts(&mut self) -> Result<RecordCounts, String> {
        let requests = self.u64()?;
        let status = StatusCounts {
            status_2xx: self.u64()?,
            status_3xx: self.u64()?,
            status_4xx: self.u64()?,
            status_5xx: self.u64()?,
            no_response: self.u64()?,
        };
        let bucket_count = self.u32()? as usize;
        if bucket_count > BUCKET_COUNT {
            return Err(format!("{bucket_count} latency buckets, the layout has {BUCKET_COUNT}"));
        }
        let mut buckets = Vec::with_capacity(bucket_count);
        for _ in 0..bucket_count {
            let index = self.u32()?;
            let count = self.u64()?;
            let in_order = buckets.last().is_none_or(|&(previous, _)| index > previous);
            if index as usize >= BUCKET_COUNT || !in_order {
                return Err(format!("latency bucket index {index} is past the layout or out of order"));
            }
            buckets.push((index, count));
        }
        Ok(RecordCounts { requests, status, latency_us: SparseLatency { buckets } })
    }
}

/// Decodes one payload; `keys` is the file's key list so far, which the
/// record's new workers extend.
fn decode(payload: &[u8], position: u64, keys: &mut Vec<WorkerKey>) -> Result<CommitRecord, String> {
    let mut reader = Reader { bytes: payload, at: 0 };
    let written_position = reader.u64()?;
    if written_position != position {
        return Err(format!("record number {written_position} where number {position} belongs"));
    }
    let weights_version = reader.u64()?;
    let changed_at_unix_ms = reader.u64()?;
    let canary_weight =
        CanaryWeight::from_bp(u64::from(reader.u16()?)).map_err(|error| format!("canary weight: {error}"))?;
    let weights = WeightsRecord { weights: Weights { weights_version, canary_weight }, changed_at_unix_ms };
    let totals = [reader.counts()?, reader.counts()?];
    let since_weights_change = [reader.counts()?, reader.counts()?];
    let new_count = reader.u32()? as usize;
    // Every entry takes at least 34 bytes, which bounds the allocation by
    // the payload's size whatever the count says.
    let mut workers = Vec::with_capacity(new_count.min(payload.len() / 34));
    for _ in 0..new_count {
        let proxy_len = usize::from(reader.u16()?);
        let proxy_id =
            std::str::from_utf8(reader.take(proxy_len)?).map_err(|_| "a proxy id is not UTF-8".to_owned())?.to_owned();
        let key = WorkerKey { proxy_id, worker_id: reader.u64()? };
        let worker = reader.worker()?;
        keys.push(key.clone());
        workers.push((key, worker));
    }
    let known_count = reader.u32()? as usize;
    workers.reserve(known_count.min(payload.len() / 28));
    for _ in 0..known_count {
        let index = reader.u32()?;
        let Some(key) = keys.get(index as usize) else {
            return Err(format!("worker index {index}, but only {} workers are named so far", keys.len()));
        };
        workers.push((key.clone(), reader.worker()?));
    }
    if reader.at != payload.len() {
        return Err(format!("{} unexpected bytes after the record", payload.len() - reader.at));
    }
    Ok(CommitRecord { weights, totals, since_weights_change, workers })
}

/// Which generations to replay after a snapshot taken at
/// `snapshot_generation` (`None`: no state file, or one written before the
/// journal existed), given the generations of the files present. Files
/// before the snapshot's are stale. The rest must be consecutive; the
/// snapshot's own file must be there, since it is created before the
/// snapshot that names it.
pub fn plan_replay(snapshot_generation: Option<u64>, present: &[u64]) -> Result<Vec<u64>, String> {
    let first = snapshot_generation.unwrap_or(1);
    let mut wanted: Vec<u64> = present.iter().copied().filter(|&generation| generation >= first).collect();
    wanted.sort_unstable();
    wanted.dedup();
    match (snapshot_generation, wanted.first()) {
        (_, Some(&lowest)) if lowest != first => {
            return Err(format!("journal generation {first} is missing (the oldest present is {lowest})"));
        }
        (Some(generation), None) => {
            return Err(format!("journal generation {generation}, which the state file names, is missing"));
        }
        _ => {}
    }
    if let Some(pair) = wanted.windows(2).find(|pair| pair[1] != pair[0] + 1) {
        return Err(format!("journal generation {} is missing (between {} and {})", pair[0] + 1, pair[0], pair[1]));
    }
    Ok(wanted)
}

/// The journal files of a state directory.
#[derive(Debug, Clone)]
pub struct JournalDir {
    dir: PathBuf,
}

impl JournalDir {
    pub fn new(dir: &Path) -> JournalDir {
        JournalDir { dir: dir.to_owned() }
    }

    pub fn path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{FILE_PREFIX}{generation:020}{FILE_SUFFIX}"))
    }

    /// Generations of the journal files present.
    pub fn generations(&self) -> std::io::Result<Vec<u64>> {
        let mut generations = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(generation) = name
                .strip_prefix(FILE_PREFIX)
                .and_then(|rest| rest.strip_suffix(FILE_SUFFIX))
                .and_then(|digits| digits.parse::<u64>().ok())
            {
                generations.push(generation);
            }
        }
        generations.sort_unstable();
        Ok(generations)
    }

    /// Creates generation `generation`'s file, with its header only,
    /// atomically, and opens it for appending. Blocking.
    pub fn create(&self, generation: u64) -> std::io::Result<JournalWriter> {
        let path = self.path(generation);
        let tmp_path = self.dir.join(format!("{FILE_PREFIX}tmp"));
        write_atomically(&self.dir, &path, &tmp_path, &header(generation))?;
        let file = OpenOptions::new().write(true).open(&path)?;
        Ok(JournalWriter {
            file,
            path,
            generation,
            len_bytes: HEADER_BYTES as u64,
            allocated_bytes: HEADER_BYTES as u64,
            encoder: RecordEncoder::default(),
        })
    }

    /// Deletes the files before `generation`, which a durable snapshot
    /// covers. Blocking; a file that cannot be deleted is only stale.
    pub fn remove_before(&self, generation: u64) {
        let Ok(present) = self.generations() else { return };
        for old in present.into_iter().filter(|&old| old < generation) {
            let path = self.path(old);
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot delete a journal file the snapshot covers");
            }
        }
    }
}

/// The journal file being appended to. Blocking; the persister is its one
/// writer.
#[derive(Debug)]
pub struct JournalWriter {
    file: File,
    path: PathBuf,
    generation: u64,
    /// Where the next record goes: header and records, without the zeros
    /// written ahead.
    len_bytes: u64,
    /// The file's size: records and the zeros after them.
    allocated_bytes: u64,
    encoder: RecordEncoder,
}

impl JournalWriter {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Appends `record` and makes it durable. After an error the file may
    /// end in a partial record, so the caller must not append to it again
    /// (it starts the next generation instead).
    pub fn append(&mut self, record: &CommitRecord) -> std::io::Result<()> {
        let bytes = self.encoder.encode(record);
        let end_bytes = self.len_bytes + bytes.len() as u64;
        let write = || -> std::io::Result<u64> {
            let mut allocated_bytes = self.allocated_bytes;
            if end_bytes > allocated_bytes {
                // Zeros up to the next chunk boundary past the record; the
                // record then overwrites its part of them.
                let new_allocated_bytes = end_bytes.div_ceil(PREALLOCATE_BYTES) * PREALLOCATE_BYTES;
                // In page-sized writes: one large write makes one large page
                // cache folio, and then every small record dirties (and each
                // `fdatasync` writes) the whole of it, measured at 1 MiB per
                // commit on Linux 6.18.
                const PAGE_BYTES: u64 = 4096;
                let zeros = [0u8; PAGE_BYTES as usize];
                let mut at = allocated_bytes;
                while at < new_allocated_bytes {
                    let len = (new_allocated_bytes - at).min(PAGE_BYTES) as usize;
                    self.file.write_all_at(&zeros[..len], at)?;
                    at += len as u64;
                }
                allocated_bytes = new_allocated_bytes;
            }
            self.file.write_all_at(&bytes, self.len_bytes)?;
            self.file.sync_data()?;
            Ok(allocated_bytes)
        };
        let allocated_bytes =
            write().map_err(|error| std::io::Error::new(error.kind(), format!("{}: {error}", self.path.display())))?;
        self.allocated_bytes = allocated_bytes;
        self.len_bytes = end_bytes;
        Ok(())
    }
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
