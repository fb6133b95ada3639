//! Byte-level helpers for the two wire formats: LEB128 varints and a reader
//! whose every failure names the message and the field it was reading.
//!
//! Written by hand rather than with a serde format because the formats are a
//! handful of integers, and a decoder that says "report: truncated while
//! reading canary.status_5xx" is worth more to an operator than a generic
//! "unexpected end of input".

/// Why a message could not be decoded. Every variant names the message
/// (`what`) and, where there is one, the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what}: truncated while reading {field}")]
    Truncated { what: &'static str, field: &'static str },
    #[error("{what}: starts with {got:02x?}, not the magic bytes {want:02x?}")]
    BadMagic { what: &'static str, got: [u8; 2], want: [u8; 2] },
    #[error("{what}: format version {got} is not supported (this build speaks version {want})")]
    UnsupportedFormat { what: &'static str, got: u8, want: u8 },
    #[error("{what}: {field} is not a valid varint (longer than 64 bits)")]
    VarintOverflow { what: &'static str, field: &'static str },
    #[error("{what}: {field} is {got}, {rule}")]
    Invalid { what: &'static str, field: &'static str, got: u64, rule: &'static str },
    #[error(
        "report: histogram layout is (grouping {got_grouping}, max power {got_max}), expected ({want_grouping}, {want_max})"
    )]
    LayoutMismatch { got_grouping: u8, got_max: u8, want_grouping: u8, want_max: u8 },
    #[error("report: proxy id is not valid UTF-8")]
    ProxyIdNotUtf8,
    #[error("report: {version} {what_sum} sum to {got}, but its request count is {requests}")]
    CountMismatch { version: &'static str, what_sum: &'static str, got: u64, requests: u64 },
    #[error("{what}: {count} unexpected bytes after the end of the message")]
    TrailingBytes { what: &'static str, count: usize },
}

/// Appends `value` as an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A cursor over a message being decoded.
pub(crate) struct Reader<'b> {
    what: &'static str,
    bytes: &'b [u8],
}

impl<'b> Reader<'b> {
    pub(crate) fn new(what: &'static str, bytes: &'b [u8]) -> Self {
        Self { what, bytes }
    }

    pub(crate) fn what(&self) -> &'static str {
        self.what
    }

    pub(crate) fn header(&mut self, magic: [u8; 2], format_version: u8) -> Result<(), DecodeError> {
        let got = self.bytes_exact(2, "magic")?;
        if got != magic {
            return Err(DecodeError::BadMagic { what: self.what, got: [got[0], got[1]], want: magic });
        }
        let got_version = self.byte("format version")?;
        if got_version != format_version {
            return Err(DecodeError::UnsupportedFormat { what: self.what, got: got_version, want: format_version });
        }
        Ok(())
    }

    pub(crate) fn byte(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.bytes_exact(1, field)?[0])
    }

    pub(crate) fn bytes_exact(&mut self, len: usize, field: &'static str) -> Result<&'b [u8], DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated { what: self.what, field });
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte(field)?;
            let payload = u64::from(byte & 0x7f);
            // The tenth byte may only carry the single top bit.
            if shift == 63 && payload > 1 {
                return Err(DecodeError::VarintOverflow { what: self.what, field });
            }
            value |= payload << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow { what: self.what, field })
    }

    /// A varint that must be at most `max`.
    pub(crate) fn varint_at_most(
        &mut self,
        field: &'static str,
        max: u64,
        rule: &'static str,
    ) -> Result<u64, DecodeError> {
        let value = self.varint(field)?;
        if value > max {
            return Err(DecodeError::Invalid { what: self.what, field, got: value, rule });
        }
        Ok(value)
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { what: self.what, count: self.bytes.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn varint_round_trip_and_encoding_table() {
        let check = |value: u64, bytes: &[u8]| {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, bytes, "encoding of {value}");
            assert_eq!(Reader::new("t", &out).varint("v"), Ok(value));
        };
        check(0, &[0]);
        check(127, &[0x7f]);
        check(128, &[0x80, 0x01]);
        check(300, &[0xac, 0x02]);
        check(u64::MAX, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    }

    #[test]
    fn varint_rejects_overflow_and_truncation() {
        let too_long = [0xff; 11];
        assert_eq!(Reader::new("t", &too_long).varint("v"), Err(DecodeError::VarintOverflow { what: "t", field: "v" }));
        let top_bits = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(matches!(Reader::new("t", &top_bits).varint("v"), Err(DecodeError::VarintOverflow { .. })));
        assert_eq!(Reader::new("t", &[0x80]).varint("v"), Err(DecodeError::Truncated { what: "t", field: "v" }));
    }
}
