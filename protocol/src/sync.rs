//! Analyzer → filter sync response: the acknowledgement of the report the
//! filter sent, and the weights it must apply.
//!
//! # Wire format, version 1
//!
//! `"CW"` (2 bytes), format version `1` (1 byte), then three LEB128 varints:
//! acknowledged seq, weights version, canary weight in basis points
//! (0..=10000). Nothing may follow.

use crate::weights::{CanaryWeight, FULL_BP, Weights};
use crate::wire::{DecodeError, Reader, put_varint};

pub const SYNC_MAGIC: [u8; 2] = *b"CW";
pub const SYNC_FORMAT_VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncResponse {
    /// Seq of the report this response acknowledges: the analyzer has made
    /// its counts durable, so the filter may drop them.
    pub acked_seq: u64,
    pub weights: Weights,
}

impl SyncResponse {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&SYNC_MAGIC);
        out.push(SYNC_FORMAT_VERSION);
        put_varint(out, self.acked_seq);
        put_varint(out, self.weights.weights_version);
        put_varint(out, u64::from(self.weights.canary_weight.bp()));
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        self.encode(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SyncResponse, DecodeError> {
        let mut reader = Reader::new("sync response", bytes);
        reader.header(SYNC_MAGIC, SYNC_FORMAT_VERSION)?;
        let acked_seq = reader.varint("acked seq")?;
        let weights = decode_weights(&mut reader)?;
        reader.finish()?;
        Ok(SyncResponse { acked_seq, weights })
    }
}

/// The weights version and canary weight, as both response formats carry
/// them.
pub(crate) fn decode_weights(reader: &mut Reader<'_>) -> Result<Weights, DecodeError> {
    let weights_version = reader.varint("weights version")?;
    let canary_weight_bp = reader.varint_at_most("canary weight bp", u64::from(FULL_BP), "must be 0..=10000")?;
    // In range by the check above.
    let canary_weight = CanaryWeight::from_bp(canary_weight_bp).unwrap_or(CanaryWeight::ZERO);
    Ok(Weights { weights_version, canary_weight })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn round_trip_and_exact_bytes() {
        let response = SyncResponse {
            acked_seq: 300,
            weights: Weights { weights_version: 7, canary_weight: CanaryWeight::from_bp(1_234).expect("valid") },
        };
        let bytes = response.to_bytes();
        assert_eq!(bytes, [b'C', b'W', 1, 0xac, 0x02, 7, 0xd2, 0x09]);
        assert_eq!(SyncResponse::decode(&bytes), Ok(response));
    }

    #[test]
    fn rejects_bad_input_naming_the_field() {
        let check = |bytes: &[u8], message: &str| {
            let error = SyncResponse::decode(bytes).expect_err("must be rejected").to_string();
            assert_eq!(error, message);
        };
        check(b"", "sync response: truncated while reading magic");
        check(b"XX\x01", "sync response: starts with [58, 58], not the magic bytes [43, 57]");
        check(b"CW\x02", "sync response: format version 2 is not supported (this build speaks version 1)");
        check(b"CW\x01\x01\x01", "sync response: truncated while reading canary weight bp");
        check(b"CW\x01\x01\x01\x91\x4e", "sync response: canary weight bp is 10001, must be 0..=10000");
        check(b"CW\x01\x01\x01\x00\x00", "sync response: 1 unexpected bytes after the end of the message");
    }
}
