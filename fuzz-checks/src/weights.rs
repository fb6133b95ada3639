//! `weights_decode`: the two decoders of weights, the sync response the
//! filter reads from the analyzer and the `weights.bin` slots the analyzer
//! reads at startup.

use canary_analyzer::weights_file::{self, FILE_BYTES, RECORD_BYTES, SLOT_SPACING_BYTES, Slot};
use canary_protocol::SyncResponse;

/// Never panics; accepted values round-trip; a valid slot re-encodes to the
/// exact bytes read; `newest` picks the highest valid version.
pub fn check_weights_decode(data: &[u8]) {
    if let Ok(response) = SyncResponse::decode(data) {
        let encoded = response.to_bytes();
        assert!(encoded.len() <= data.len(), "re-encoding grew the sync response");
        assert_eq!(SyncResponse::decode(&encoded), Ok(response), "sync response does not round-trip");
    }

    check_slot(data);
    check_slots(data);
    // A random mutation almost never keeps the CRC right, which would leave
    // the checks behind it (magic, padding, version, weight) unfuzzed; so
    // also decode the input with its CRC made to match.
    if data.len() >= RECORD_BYTES {
        let mut resealed = data[..RECORD_BYTES].to_vec();
        let crc = weights_file::crc32(&resealed[..RECORD_BYTES - 4]);
        resealed[RECORD_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        check_slot(&resealed);
    }
    // Inputs are mostly shorter than a slot spacing, so also lay the two
    // halves of the input out as a whole file, to reach the second slot and
    // the choice between two records.
    let (first, second) = data.split_at(data.len() / 2);
    let mut image = vec![0u8; FILE_BYTES];
    image[..first.len().min(SLOT_SPACING_BYTES)].copy_from_slice(&first[..first.len().min(SLOT_SPACING_BYTES)]);
    let second = &second[..second.len().min(SLOT_SPACING_BYTES)];
    image[SLOT_SPACING_BYTES..SLOT_SPACING_BYTES + second.len()].copy_from_slice(second);
    check_slots(&image);
}

fn check_slot(bytes: &[u8]) -> Slot {
    let slot = weights_file::decode(bytes);
    match slot {
        Slot::Valid(record) => {
            assert_eq!(weights_file::encode(&record)[..], bytes[..RECORD_BYTES], "a valid slot does not re-encode");
            assert!(record.weights.weights_version >= 1, "accepted weights version 0");
            assert!(record.weights.canary_weight.bp() <= 10_000, "accepted a weight above 100%");
        }
        Slot::Empty => assert!(bytes[..RECORD_BYTES].iter().all(|&byte| byte == 0), "non-zero slot read as empty"),
        Slot::Invalid(reason) => assert!(!reason.is_empty(), "an invalid slot must say why"),
    }
    slot
}

fn check_slots(content: &[u8]) {
    let slots = weights_file::decode_slots(content);
    for (index, slot) in slots.iter().enumerate() {
        if let Some(bytes) = content.get(index * SLOT_SPACING_BYTES..) {
            assert_eq!(*slot, check_slot(bytes), "decode_slots disagrees with decode for slot {index}");
        } else {
            assert!(matches!(slot, Slot::Invalid(_)), "a missing slot must be invalid");
        }
    }
    let valid: Vec<(usize, u64)> = slots
        .iter()
        .enumerate()
        .filter_map(|(index, slot)| match slot {
            Slot::Valid(record) => Some((index, record.weights.weights_version)),
            _ => None,
        })
        .collect();
    match weights_file::newest(&slots) {
        None => assert!(valid.is_empty(), "a valid slot was ignored"),
        Some(newest) => {
            let max_version = valid.iter().map(|(_, version)| *version).max();
            assert_eq!(Some(newest.record.weights.weights_version), max_version, "newest is not the highest version");
            assert_eq!(slots[newest.slot], Slot::Valid(newest.record), "newest names the wrong slot");
        }
    }
}
