//! The 16-byte frame header and the frame checksum.
//!
//! ```text
//! 0..4 magic | 4 format version | 5 frame type | 6..8 flags | 8..12 body length | 12..16 CRC32C
//! ```

use super::cursor::Reader;
use super::error::DecodeError;
use super::frame::FrameKind;
use super::{BODY_BYTES_LIMIT, FORMAT_VERSION, HEADER_BYTES, MAGIC, MAGIC_BYTES};

/// Bytes of the header covered by the checksum (all but the checksum).
pub(crate) const CHECKSUMMED_HEADER_BYTES: usize = 12;
const _: () = assert!(CHECKSUMMED_HEADER_BYTES + 4 == HEADER_BYTES);

/// A header whose magic, format version, flags and body length are valid.
/// The frame type and the checksum are checked once the body is in hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) bytes: [u8; HEADER_BYTES],
    pub(crate) frame_type: u8,
    pub(crate) body_bytes: u32,
    pub(crate) checksum: u32,
}

impl Header {
    /// Checks everything that must hold before the body is read, the body
    /// length first among the costly ones: it bounds what the caller
    /// allocates. `max_body_bytes` is clamped to [`BODY_BYTES_LIMIT`].
    pub(crate) fn parse(
        bytes: &[u8; HEADER_BYTES],
        max_body_bytes: u32,
    ) -> Result<Header, DecodeError> {
        let mut reader = Reader::new(bytes);
        let magic = reader.u32("header.magic")?;
        let format_version = reader.u8("header.format_version")?;
        let frame_type = reader.u8("header.frame_type")?;
        let flags = reader.u16("header.flags")?;
        let body_bytes = reader.u32("header.body_length")?;
        let checksum = reader.u32("header.checksum")?;
        reader.finish()?;

        if magic != MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
        if format_version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedFormatVersion {
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        if flags != 0 {
            return Err(DecodeError::ReservedFlags { found: flags });
        }
        let max = max_body_bytes.min(BODY_BYTES_LIMIT);
        if body_bytes > max {
            return Err(DecodeError::BodyTooLarge {
                length: body_bytes,
                max,
            });
        }
        Ok(Header {
            bytes: *bytes,
            frame_type,
            body_bytes,
            checksum,
        })
    }

    /// Body length in memory; lossless since `usize` has at least 32 bits.
    pub(crate) fn body_len(&self) -> usize {
        self.body_bytes as usize
    }

    /// Header plus body length, which cannot overflow: the body is at most
    /// [`BODY_BYTES_LIMIT`].
    pub(crate) fn frame_len(&self) -> usize {
        HEADER_BYTES + self.body_len()
    }

    /// Checks the checksum against `body`, then the frame type.
    pub(crate) fn verify(&self, body: &[u8]) -> Result<FrameKind, DecodeError> {
        debug_assert_eq!(body.len(), self.body_len());
        let computed = checksum(&self.bytes, body);
        if computed != self.checksum {
            return Err(DecodeError::Checksum {
                expected: self.checksum,
                computed,
            });
        }
        FrameKind::from_code(self.frame_type).ok_or(DecodeError::UnknownFrameType {
            code: self.frame_type,
        })
    }
}

/// CRC32C (Castagnoli) of header bytes 0..12 followed by the body.
pub(crate) fn checksum(header: &[u8; HEADER_BYTES], body: &[u8]) -> u32 {
    checksum_parts(&header[..CHECKSUMMED_HEADER_BYTES], body)
}

fn checksum_parts(header_covered: &[u8], body: &[u8]) -> u32 {
    debug_assert_eq!(header_covered.len(), CHECKSUMMED_HEADER_BYTES);
    crc32c::crc32c_append(crc32c::crc32c(header_covered), body)
}

/// Appends a header with a zero checksum; [`seal`] fills it in.
pub(crate) fn put_header(out: &mut Vec<u8>, kind: FrameKind, body_bytes: u32) {
    out.extend_from_slice(&MAGIC_BYTES);
    out.push(FORMAT_VERSION);
    out.push(kind.code());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&body_bytes.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// Computes and stores the checksum of the frame that starts at `start` and
/// runs to the end of `out`. Panics if no whole header is there: a bug in
/// the encoder, never a property of input.
pub(crate) fn seal(out: &mut [u8], start: usize) {
    let (header, body) = out[start..].split_at_mut(HEADER_BYTES);
    let (header_covered, checksum_field) = header.split_at_mut(CHECKSUMMED_HEADER_BYTES);
    let value = checksum_parts(header_covered, body);
    checksum_field.copy_from_slice(&value.to_le_bytes());
}
