//! Little-endian decoding, written once for every format of drgw (wire
//! frames, batch payloads, staging records and segment headers, undo
//! blobs, dirty maps, overlays): a bounds-checked reader that names the field
//! it could not read, and fixed-offset reads for headers of a known size.

use std::fmt;

/// A field that did not fit in what was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    pub field: &'static str,
    pub needed: usize,
    pub remaining: usize,
}

impl fmt::Display for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "truncated at {}: needs {} bytes, {} left",
            self.field, self.needed, self.remaining
        )
    }
}

impl std::error::Error for Truncated {}

/// Reads little-endian fields in order; every read either returns the
/// value or `Truncated` naming the field, and consumes nothing then. Nothing
/// here can panic or read past the slice.
#[derive(Debug, Clone)]
pub struct LeReader<'a> {
    rest: &'a [u8],
}

impl<'a> LeReader<'a> {
    pub fn new(bytes: &'a [u8]) -> LeReader<'a> {
        LeReader { rest: bytes }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// What is not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    pub fn bytes(&mut self, field: &'static str, length: usize) -> Result<&'a [u8], Truncated> {
        let (head, tail) = self
            .rest
            .split_at_checked(length)
            .ok_or_else(|| self.truncated(field, length))?;
        self.rest = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Truncated> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated(field, N))?;
        self.rest = tail;
        Ok(*head)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, Truncated> {
        self.array::<1>(field).map(u8::from_le_bytes)
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, Truncated> {
        self.array::<2>(field).map(u16::from_le_bytes)
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, Truncated> {
        self.array::<4>(field).map(u32::from_le_bytes)
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, Truncated> {
        self.array::<8>(field).map(u64::from_le_bytes)
    }

    fn truncated(&self, field: &'static str, needed: usize) -> Truncated {
        Truncated {
            field,
            needed,
            remaining: self.rest.len(),
        }
    }
}

/// The u16 at `at` of a block of known size.
///
/// # Panics
/// When `bytes` is shorter than `at + 2`: the caller reads a header whose
/// length it checked.
pub fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(fixed(bytes, at))
}

/// The u32 at `at` of a block of known size (panics as `u16_at`).
pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(fixed(bytes, at))
}

/// The u64 at `at` of a block of known size (panics as `u16_at`).
pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(fixed(bytes, at))
}

fn fixed<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    match bytes.get(at..at + N) {
        Some(field) => field.try_into().expect("a slice of N bytes"),
        None => panic!("reading {N} bytes at {at} of a {}-byte block", bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_names_the_short_field() {
        let bytes = [1, 2, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0];
        let mut reader = LeReader::new(&bytes);
        assert_eq!(reader.u8("a"), Ok(1));
        assert_eq!(reader.u16("b"), Ok(2));
        assert_eq!(reader.u32("c"), Ok(3));
        assert_eq!(reader.remaining(), 7);
        let short = reader.u64("d").unwrap_err();
        let expected = Truncated {
            field: "d",
            needed: 8,
            remaining: 7,
        };
        assert_eq!(short, expected);
        assert_eq!(short.to_string(), "truncated at d: needs 8 bytes, 7 left");
        assert_eq!(reader.remaining(), 7, "a short read consumes nothing");
        assert_eq!(reader.bytes("e", 7).unwrap(), &[4, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reader.remaining(), 0);
        assert!(reader.bytes("f", 1).is_err());
    }

    #[test]
    fn fixed_offsets() {
        let block = [0xff, 1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(u16_at(&block, 1), 1);
        assert_eq!(u32_at(&block, 3), 2);
        assert_eq!(u64_at(&block, 7), 3);
    }

    #[test]
    #[should_panic(expected = "reading 8 bytes at 4 of a 10-byte block")]
    fn a_fixed_read_past_the_block_panics() {
        u64_at(&[0; 10], 4);
    }
}
