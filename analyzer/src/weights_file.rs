//! The weights file (`weights.bin` in `--state-dir`): the canary weights,
//! persisted apart from the state file so that a weight change, above all a
//! rollback, is durable in a fraction of a millisecond instead of waiting for
//! a whole-state rewrite.
//!
//! Why a separate file: the state file holds the totals, histograms and the
//! worker table, is replaced atomically (write, fsync, rename, fsync the
//! directory) and has one writer that also serves the reports' group commit.
//! A weight change that went through it paid ~1 ms typically and, queued
//! behind a commit in flight or a slow disk flush, up to ~100 ms. Here a
//! change is one 32-byte `pwrite` into a block that already exists, then
//! `fdatasync`: no new file, no rename, no directory entry, no change of
//! size, so no journal commit, and never behind a report commit.
//!
//! Layout: two fixed slots, at byte 0 and at byte 4096, in a file of 8 KiB
//! created whole (so its blocks are allocated before the first change). A
//! change always overwrites the slot that does *not* hold the newest record,
//! so a crash in the middle of a write (a torn write) can only damage the
//! record being written; the previous one stays intact in the other slot.
//! The slots sit 4 KiB apart so that they never share a page or a
//! filesystem block: the kernel writes back whole pages, and a torn page
//! write could otherwise damage both. Each record carries a CRC-32, which is
//! what tells a torn or rotten record from a good one.
//!
//! Reading at startup: the newest valid record (highest weights version)
//! wins; an invalid slot is ignored with a warning, in favour of the other.
//! A file where neither slot is valid is an error, never a silent default:
//! the lost record may have been a rollback, and the state file's weights may
//! be older and still send canary traffic. The file is created atomically
//! with a valid first record, so that only happens through corruption.
//!
//! Why two slots and not an append-only log: the slot pair never fills up,
//! so it needs no compaction; reading it is two records; and a torn page
//! write in a log could take earlier records of the same page with it, while
//! here the previous record is in a page that is not being written.
//!
//! The record format (encode, decode, choose the newest) is pure and tested
//! without a filesystem; [`WeightsFile`] is the I/O around it.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use canary_protocol::{CanaryWeight, Weights};

use crate::aggregate::WeightsRecord;
use crate::store::{StoreError, write_atomically};

/// Name of the weights file inside the state directory.
pub const WEIGHTS_FILE_NAME: &str = "weights.bin";
/// Bytes of one record.
pub const RECORD_BYTES: usize = 32;
/// Distance between the two slots: a page and an ext4 block, so that the
/// slots never share either.
pub const SLOT_SPACING_BYTES: usize = 4096;
/// Size of the whole file: two slots.
pub const FILE_BYTES: usize = 2 * SLOT_SPACING_BYTES;
/// Starts every record; the digit is the record format's version.
const MAGIC: [u8; 4] = *b"CWR1";

// Record layout, little-endian:
//   0..4   magic `CWR1`
//   4..12  weights_version (u64, ≥ 1)
//  12..20  changed_at_unix_ms (u64)
//  20..22  canary_weight_bp (u16, 0..=10000)
//  22..28  zero
//  28..32  CRC-32 (IEEE) of bytes 0..28
const VERSION_AT: usize = 4;
const CHANGED_AT: usize = 12;
const WEIGHT_AT: usize = 20;
const PADDING_AT: usize = 22;
const CRC_AT: usize = 28;

/// The bytes of one record.
pub fn encode(record: &WeightsRecord) -> [u8; RECORD_BYTES] {
    let mut bytes = [0u8; RECORD_BYTES];
    bytes[..VERSION_AT].copy_from_slice(&MAGIC);
    bytes[VERSION_AT..CHANGED_AT].copy_from_slice(&record.weights.weights_version.to_le_bytes());
    bytes[CHANGED_AT..WEIGHT_AT].copy_from_slice(&record.changed_at_unix_ms.to_le_bytes());
    bytes[WEIGHT_AT..PADDING_AT].copy_from_slice(&record.weights.canary_weight.bp().to_le_bytes());
    let crc = crc32(&bytes[..CRC_AT]);
    bytes[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// What one slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Never written: all zeros, as the file was created.
    Empty,
    Valid(WeightsRecord),
    /// Torn, corrupt, or not a record of this format; the reason says which
    /// check failed.
    Invalid(&'static str),
}

/// Reads one slot's bytes (the record's length or more; the rest is
/// ignored). Never fails: anything that is not a whole, checksummed, valid
/// record is [`Slot::Invalid`] or, when all zero, [`Slot::Empty`].
pub fn decode(bytes: &[u8]) -> Slot {
    let Some(bytes) = bytes.get(..RECORD_BYTES) else { return Slot::Invalid("the file ends inside the record") };
    if bytes.iter().all(|&byte| byte == 0) {
        return Slot::Empty;
    }
    let crc = u32::from_le_bytes([bytes[CRC_AT], bytes[CRC_AT + 1], bytes[CRC_AT + 2], bytes[CRC_AT + 3]]);
    if crc32(&bytes[..CRC_AT]) != crc {
        return Slot::Invalid("checksum mismatch (a torn write or corruption)");
    }
    if bytes[..VERSION_AT] != MAGIC {
        return Slot::Invalid("not a weights record of format 1");
    }
    if bytes[PADDING_AT..CRC_AT].iter().any(|&byte| byte != 0) {
        return Slot::Invalid("reserved bytes are not zero");
    }
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let weights_version = u64_at(VERSION_AT);
    if weights_version == 0 {
        // The analyzer's versions start at 1; 0 is what a filter reports
        // before it has heard from the analyzer.
        return Slot::Invalid("weights version 0");
    }
    let bp = u16::from_le_bytes([bytes[WEIGHT_AT], bytes[WEIGHT_AT + 1]]);
    let Ok(canary_weight) = CanaryWeight::from_bp(u64::from(bp)) else {
        return Slot::Invalid("canary weight above 10000 bp");
    };
    Slot::Valid(WeightsRecord {
        weights: Weights { weights_version, canary_weight },
        changed_at_unix_ms: u64_at(CHANGED_AT),
    })
}

/// Both slots of a file's content; a file cut short leaves the missing
/// slots [`Slot::Invalid`].
pub fn decode_slots(content: &[u8]) -> [Slot; 2] {
    [0, 1].map(|slot| content.get(slot * SLOT_SPACING_BYTES..).map_or(Slot::Invalid("the file ends before it"), decode))
}

/// The newest valid record and the slot it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Newest {
    pub record: WeightsRecord,
    pub slot: usize,
}

/// The valid record with the highest weights version, or `None` when no slot
/// is valid. Two valid records of the same version cannot come from normal
/// operation (every write is a new version); should it happen, the lower
/// canary weight wins, so a damaged file can only ever take canary traffic
/// away.
pub fn newest(slots: &[Slot; 2]) -> Option<Newest> {
    let mut best: Option<Newest> = None;
    for (slot, content) in slots.iter().enumerate() {
        let Slot::Valid(record) = *content else { continue };
        let better = best.is_none_or(|best| {
            let (version, best_version) = (record.weights.weights_version, best.record.weights.weights_version);
            version > best_version
                || (version == best_version
                    && record.weights.canary_weight.bp() < best.record.weights.canary_weight.bp())
        });
        if better {
            best = Some(Newest { record, slot });
        }
    }
    best
}

/// The whole content of a new file: `record` in slot 0, slot 1 empty.
pub fn new_file_image(record: &WeightsRecord) -> Vec<u8> {
    let mut image = vec![0u8; FILE_BYTES];
    image[..RECORD_BYTES].copy_from_slice(&encode(record));
    image
}

/// CRC-32 (IEEE 802.3, as zlib and `cksum -a crc32b`), the checksum of the
/// weights file's records and of the journal's.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The open weights file. Blocking; one writer at a time (the caller
/// serialises weight changes).
#[derive(Debug)]
pub struct WeightsFile {
    file: File,
    path: PathBuf,
    /// The slot the next write goes to: the one not holding the newest
    /// record. It flips only after a write succeeded, so a failed write is
    /// retried in the same slot and never touches the newest good record.
    next_slot: usize,
}

impl WeightsFile {
    /// Opens the file in `dir` and reads its newest valid record, or `None`
    /// when there is no file yet. A file without any valid record is an
    /// error (see the module docs). A file of the wrong size whose records
    /// are readable is rewritten whole, so that writes stay in place.
    pub fn open(dir: &Path) -> Result<Option<(WeightsFile, WeightsRecord)>, StoreError> {
        let path = dir.join(WEIGHTS_FILE_NAME);
        let io_error = |action: &'static str| {
            let path = path.clone();
            move |source| StoreError::WeightsIo { path, action, source }
        };
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error("cannot open it")(source)),
        };
        // One byte more than the file should have, to notice a longer one
        // without reading an arbitrarily large file.
        let mut content = Vec::with_capacity(FILE_BYTES + 1);
        (&file).take(FILE_BYTES as u64 + 1).read_to_end(&mut content).map_err(io_error("cannot read it"))?;
        let slots = decode_slots(&content);
        let Some(newest) = newest(&slots) else {
            return Err(StoreError::WeightsCorrupt {
                path,
                message: format!(
                    "no valid record in either slot (slot 0: {}; slot 1: {})",
                    describe(slots[0]),
                    describe(slots[1])
                ),
            });
        };
        for (slot, content) in slots.iter().enumerate() {
            if let Slot::Invalid(reason) = content {
                tracing::warn!(path = %path.display(), slot, reason, "weights file: a torn or corrupt record is ignored");
            }
        }
        if content.len() != FILE_BYTES {
            tracing::warn!(path = %path.display(), bytes = content.len(), "weights file has the wrong size; rewriting it");
            drop(file);
            return WeightsFile::create(dir, &newest.record).map(|file| Some((file, newest.record)));
        }
        Ok(Some((WeightsFile { file, path, next_slot: 1 - newest.slot }, newest.record)))
    }

    /// Creates (or replaces) the file atomically with `record` as its only
    /// record, so a crash leaves the old file or a whole new one.
    pub fn create(dir: &Path, record: &WeightsRecord) -> Result<WeightsFile, StoreError> {
        let path = dir.join(WEIGHTS_FILE_NAME);
        let tmp_path = dir.join(format!("{WEIGHTS_FILE_NAME}.tmp"));
        write_atomically(dir, &path, &tmp_path, &new_file_image(record)).map_err(|source| StoreError::WeightsIo {
            path: path.clone(),
            action: "cannot create it",
            source,
        })?;
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|source| StoreError::WeightsIo {
            path: path.clone(),
            action: "cannot open it",
            source,
        })?;
        Ok(WeightsFile { file, path, next_slot: 1 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `record` the newest durable record: one `pwrite` into the slot
    /// not holding the newest, then `fdatasync`. Blocking. On error, the
    /// previous record is still intact and the next call writes the same
    /// slot again (rewriting the data, not only re-syncing it: after a
    /// failed fsync the kernel may have dropped the dirty page).
    pub fn write(&mut self, record: &WeightsRecord) -> std::io::Result<()> {
        let slot = self.next_slot;
        self.file.write_all_at(&encode(record), (slot * SLOT_SPACING_BYTES) as u64)?;
        self.file.sync_data()?;
        self.next_slot = 1 - slot;
        Ok(())
    }
}

fn describe(slot: Slot) -> &'static str {
    match slot {
        Slot::Empty => "empty",
        Slot::Valid(_) => "valid",
        Slot::Invalid(reason) => reason,
    }
}

#[cfg(test)]
#[path = "weights_file_tests.rs"]
mod tests;
