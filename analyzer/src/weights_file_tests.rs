//! The record format is tested on bytes alone; the file tests use a
//! temporary directory and damage the file the way a crash or a bad disk
//! would.

use super::*;

fn record(weights_version: u64, bp: u64) -> WeightsRecord {
    WeightsRecord {
        weights: Weights { weights_version, canary_weight: CanaryWeight::from_bp(bp).expect("valid") },
        changed_at_unix_ms: 1_764_130_000_000_u64.saturating_add(weights_version),
    }
}

#[test]
fn crc32_matches_the_standard_check_value() {
    // The check value of CRC-32/ISO-HDLC, as zlib computes it.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn records_round_trip_and_have_the_documented_layout() {
    for original in [record(1, 0), record(2, 1_000), record(u64::MAX, 10_000)] {
        let bytes = encode(&original);
        assert_eq!(decode(&bytes), Slot::Valid(original));
        assert_eq!(&bytes[..4], b"CWR1");
        assert_eq!(bytes[4..12], original.weights.weights_version.to_le_bytes());
        assert_eq!(bytes[22..28], [0; 6]);
    }
    // Trailing bytes (the rest of the slot's page) are ignored.
    let mut page = vec![0u8; SLOT_SPACING_BYTES];
    page[..RECORD_BYTES].copy_from_slice(&encode(&record(7, 50)));
    assert_eq!(decode(&page), Slot::Valid(record(7, 50)));
}

#[test]
fn every_damaged_record_is_invalid_never_a_default() {
    let good = encode(&record(5, 1_000));
    assert_eq!(decode(&[0u8; RECORD_BYTES]), Slot::Empty, "never written");
    assert!(matches!(decode(&good[..20]), Slot::Invalid(_)), "cut short");

    // A torn write: the first sector-sized part of the new record landed,
    // the rest is still the old one. Try every split point.
    let old = encode(&record(3, 0));
    for split in 1..RECORD_BYTES {
        let mut torn = old;
        torn[..split].copy_from_slice(&good[..split]);
        if torn == good || torn == old {
            continue;
        }
        assert!(matches!(decode(&torn), Slot::Invalid(_)), "torn at byte {split}");
    }
    // Every single-bit flip is caught by the checksum.
    for bit in 0..RECORD_BYTES * 8 {
        let mut flipped = good;
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(matches!(decode(&flipped), Slot::Invalid(_)), "bit {bit} flipped");
    }

    // Checksummed but meaningless: refused by the field checks.
    let reseal = |mut bytes: [u8; RECORD_BYTES]| {
        let crc = crc32(&bytes[..CRC_AT]);
        bytes[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        bytes
    };
    let mut wrong_magic = good;
    wrong_magic[3] = b'2';
    let mut weight_too_high = good;
    weight_too_high[WEIGHT_AT..PADDING_AT].copy_from_slice(&10_001u16.to_le_bytes());
    let mut version_zero = good;
    version_zero[VERSION_AT..CHANGED_AT].copy_from_slice(&0u64.to_le_bytes());
    let mut padding = good;
    padding[PADDING_AT] = 1;
    for (bytes, reason) in [
        (wrong_magic, "not a weights record"),
        (weight_too_high, "above 10000"),
        (version_zero, "version 0"),
        (padding, "reserved"),
    ] {
        match decode(&reseal(bytes)) {
            Slot::Invalid(message) => assert!(message.contains(reason), "{message} should mention {reason}"),
            other => panic!("{reason}: decoded as {other:?}"),
        }
    }
}

#[test]
fn the_newest_valid_record_wins() {
    let (v2, v3) = (Slot::Valid(record(2, 1_000)), Slot::Valid(record(3, 0)));
    let torn = Slot::Invalid("checksum mismatch");
    // (slot 0, slot 1, expected (version, slot))
    let table = [
        ([v2, v3], Some((3, 1))),
        ([v3, v2], Some((3, 0))),
        ([v3, Slot::Empty], Some((3, 0))),
        ([Slot::Empty, v2], Some((2, 1))),
        // The newest write was torn: the previous record, in the other slot.
        ([v2, torn], Some((2, 0))),
        ([torn, v3], Some((3, 1))),
        ([torn, torn], None),
        ([Slot::Empty, Slot::Empty], None),
        ([torn, Slot::Empty], None),
    ];
    for (slots, expected) in table {
        let got = newest(&slots).map(|newest| (newest.record.weights.weights_version, newest.slot));
        assert_eq!(got, expected, "{slots:?}");
    }
    // Two records of one version (only a damaged or edited file has them):
    // the lower canary weight, whichever slot it is in.
    let same_version = [Slot::Valid(record(4, 2_000)), Slot::Valid(record(4, 500))];
    assert_eq!(newest(&same_version).map(|newest| newest.slot), Some(1));
    let same_version = [Slot::Valid(record(4, 500)), Slot::Valid(record(4, 2_000))];
    assert_eq!(newest(&same_version).map(|newest| newest.slot), Some(0));
}

#[test]
fn slots_of_a_short_file_are_invalid() {
    let image = new_file_image(&record(1, 0));
    assert_eq!(decode_slots(&image), [Slot::Valid(record(1, 0)), Slot::Empty]);
    let [first, second] = decode_slots(&image[..SLOT_SPACING_BYTES]);
    assert_eq!(first, Slot::Valid(record(1, 0)));
    assert!(matches!(second, Slot::Invalid(_)));
    assert!(decode_slots(&[]).iter().all(|slot| matches!(slot, Slot::Invalid(_))));
}

fn slot_of(dir: &Path, slot: usize) -> Slot {
    let content = std::fs::read(dir.join(WEIGHTS_FILE_NAME)).expect("read");
    decode_slots(&content)[slot]
}

/// Overwrites part of a slot with garbage, as a write torn by a crash would.
fn tear(dir: &Path, slot: usize) {
    let path = dir.join(WEIGHTS_FILE_NAME);
    let mut content = std::fs::read(&path).expect("read");
    let at = slot * SLOT_SPACING_BYTES;
    content[at + 8..at + 16].copy_from_slice(&[0xA5; 8]);
    std::fs::write(&path, content).expect("write");
}

#[test]
fn writes_alternate_slots_and_a_reopen_reads_the_last() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(WeightsFile::open(dir.path()).expect("no file yet").is_none());
    let mut file = WeightsFile::create(dir.path(), &record(1, 0)).expect("create");
    assert_eq!(std::fs::metadata(file.path()).expect("stat").len(), FILE_BYTES as u64, "preallocated");
    for version in 2..=5 {
        file.write(&record(version, version * 100)).expect("write");
        let (_, newest) = WeightsFile::open(dir.path()).expect("open").expect("a file");
        assert_eq!(newest, record(version, version * 100));
        assert_eq!(std::fs::metadata(file.path()).expect("stat").len(), FILE_BYTES as u64, "written in place");
    }
    // Version 5 went to slot 0 (1: slot 0, 2: slot 1, 3: 0, 4: 1, 5: 0).
    assert_eq!(
        (slot_of(dir.path(), 0), slot_of(dir.path(), 1)),
        (Slot::Valid(record(5, 500)), Slot::Valid(record(4, 400)))
    );
    assert!(!dir.path().join(format!("{WEIGHTS_FILE_NAME}.tmp")).exists(), "renamed into place");
}

#[test]
fn a_torn_newest_record_falls_back_to_the_previous_one_and_is_overwritten_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = WeightsFile::create(dir.path(), &record(1, 0)).expect("create");
    file.write(&record(2, 1_000)).expect("write");
    file.write(&record(3, 0)).expect("write");
    drop(file);
    // Version 3 is in slot 0; tear it as a crash in mid-write would.
    tear(dir.path(), 0);

    let (mut file, newest) = WeightsFile::open(dir.path()).expect("the other slot is good").expect("a file");
    assert_eq!(newest, record(2, 1_000), "the previous valid record, never a default");
    // The next write goes over the torn slot, not over the good record.
    file.write(&record(3, 0)).expect("write");
    assert_eq!(slot_of(dir.path(), 0), Slot::Valid(record(3, 0)));
    assert_eq!(slot_of(dir.path(), 1), Slot::Valid(record(2, 1_000)));
    let (_, newest) = WeightsFile::open(dir.path()).expect("open").expect("a file");
    assert_eq!(newest, record(3, 0));
}

#[test]
fn a_file_without_a_valid_record_stops_startup_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = WeightsFile::create(dir.path(), &record(1, 0)).expect("create");
    file.write(&record(2, 0)).expect("write");
    tear(dir.path(), 0);
    tear(dir.path(), 1);
    let message = WeightsFile::open(dir.path()).expect_err("refused").to_string();
    assert!(message.contains(&file.path().display().to_string()), "{message}");
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(message.contains("state.json"), "says how to fall back: {message}");

    std::fs::write(file.path(), b"").expect("truncate");
    assert!(WeightsFile::open(dir.path()).is_err(), "an empty file is not a missing one");
}

#[test]
fn a_file_of_the_wrong_size_is_rewritten_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(WEIGHTS_FILE_NAME);
    // Only the first slot survived, e.g. a copy cut short.
    std::fs::write(&path, &new_file_image(&record(6, 250))[..RECORD_BYTES]).expect("write");
    let (mut file, newest) = WeightsFile::open(dir.path()).expect("open").expect("a file");
    assert_eq!(newest, record(6, 250));
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), FILE_BYTES as u64);
    file.write(&record(7, 0)).expect("write");
    let (_, newest) = WeightsFile::open(dir.path()).expect("open").expect("a file");
    assert_eq!(newest, record(7, 0));
}
