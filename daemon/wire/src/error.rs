//! Errors of the wire codec and of frame I/O.

use std::io;

use super::frame::ErrorCode;

/// Why bytes are not a valid frame. Every variant but `Incomplete` means the
/// stream is broken: answer with an ERROR frame carrying
/// [`DecodeError::error_code`] and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("incomplete frame: at least {needed} more bytes needed")]
    Incomplete { needed: usize },
    #[error("bad magic {found:#010x} (expected \"DRGW\")")]
    BadMagic { found: u32 },
    #[error("unsupported frame format version {found} (this build speaks {supported})")]
    UnsupportedFormatVersion { found: u8, supported: u8 },
    #[error("reserved header flags set: {found:#06x}")]
    ReservedFlags { found: u16 },
    #[error("body of {length} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { length: u32, max: u32 },
    #[error("checksum mismatch: header says {expected:#010x}, computed {computed:#010x}")]
    Checksum { expected: u32, computed: u32 },
    #[error("unknown frame type {code}")]
    UnknownFrameType { code: u8 },
    #[error("unknown role {code} in HELLO")]
    UnknownRole { code: u8 },
    #[error("HELLO version range is inverted: min {min} > max {max}")]
    VersionRange { min: u16, max: u16 },
    #[error("body ends inside {field}: {needed} bytes needed, {remaining} left")]
    Truncated {
        field: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("{field} is {length} bytes long, the limit is {max}")]
    StringTooLong {
        field: &'static str,
        length: usize,
        max: usize,
    },
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("WRITE batch has no records")]
    EmptyWriteBatch,
    #[error("WRITE batch declares {count} records, the body has room for at most {max}")]
    RecordCountTooLarge { count: u32, max: usize },
    #[error("sequence {found} does not follow {previous} (must strictly increase)")]
    SequenceNotIncreasing { previous: u64, found: u64 },
    #[error("offset {offset} + length {length} overflows u64")]
    OffsetOverflow { offset: u64, length: u64 },
    #[error("{field} is empty")]
    EmptyName { field: &'static str },
    #[error("{count} trailing bytes after the body")]
    TrailingBytes { count: usize },
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl DecodeError {
    /// The code to send back in the ERROR frame before closing.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::UnsupportedFormatVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::BodyTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

/// Why a frame cannot be encoded: it would break a protocol limit or
/// invariant, so the peer would reject it. Nothing is appended on error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("body of {length} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { length: usize, max: u32 },
    #[error("{field} is {length} bytes long, the limit is {max}")]
    StringTooLong {
        field: &'static str,
        length: usize,
        max: usize,
    },
    #[error("HELLO version range is inverted: min {min} > max {max}")]
    VersionRange { min: u16, max: u16 },
    #[error("WRITE batch has no records")]
    EmptyWriteBatch,
    #[error("sequence {found} does not follow {previous} (must strictly increase)")]
    SequenceNotIncreasing { previous: u64, found: u64 },
    #[error("offset {offset} + length {length} overflows u64")]
    OffsetOverflow { offset: u64, length: u64 },
    #[error("{field} is empty")]
    EmptyName { field: &'static str },
    #[error("ErrorCode::Unknown({code}) names a known code; use its named variant")]
    ErrorCodeNotCanonical { code: u16 },
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// Why [`super::read_frame`] returned no frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("peer closed the connection mid-frame: {received} of {expected} bytes received")]
    ConnectionClosed { received: usize, expected: usize },
    #[error("reading a frame: {0}")]
    Io(#[from] io::Error),
    #[error("decoding a frame: {0}")]
    Decode(#[from] DecodeError),
}

impl ReadError {
    /// The code to send in an ERROR frame, when the connection can still
    /// carry one (a decode error); `None` after an I/O error or a close.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            ReadError::Decode(error) => Some(error.error_code()),
            ReadError::ConnectionClosed { .. } | ReadError::Io(_) => None,
        }
    }
}

/// Why [`super::write_frame`] did not send a frame.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("encoding a frame: {0}")]
    Encode(#[from] EncodeError),
    #[error("writing a frame: {0}")]
    Io(#[from] io::Error),
}
