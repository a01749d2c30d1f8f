//! Frame types: what a frame means, independent of its encoding.

use std::fmt;

use super::{body, HEADER_BYTES, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Write(WriteBatch),
    Flush(Flush),
    Trim(Trim),
    Bookmark(Bookmark),
    Ack(Ack),
    Heartbeat(Heartbeat),
    Error(ErrorFrame),
    Attach(Attach),
    Group(GroupInfo),
    Batch(Batch),
    SumRequest(super::SumRequest),
    Sums(super::Sums),
    Resync(super::Resync),
    ResyncMark(super::ResyncMark),
    Reprotect(super::Reprotect),
    Reprotected(super::Reprotected),
    Failback(super::Failback),
    FailedBack(super::FailedBack),
}

impl Frame {
    /// The frame type carried in the header.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Write(_) => FrameKind::Write,
            Frame::Flush(_) => FrameKind::Flush,
            Frame::Trim(_) => FrameKind::Trim,
            Frame::Bookmark(_) => FrameKind::Bookmark,
            Frame::Ack(_) => FrameKind::Ack,
            Frame::Heartbeat(_) => FrameKind::Heartbeat,
            Frame::Error(_) => FrameKind::Error,
            Frame::Attach(_) => FrameKind::Attach,
            Frame::Group(_) => FrameKind::Group,
            Frame::Batch(_) => FrameKind::Batch,
            Frame::SumRequest(_) => FrameKind::SumRequest,
            Frame::Sums(_) => FrameKind::Sums,
            Frame::Resync(_) => FrameKind::Resync,
            Frame::ResyncMark(_) => FrameKind::ResyncMark,
            Frame::Reprotect(_) => FrameKind::Reprotect,
            Frame::Reprotected(_) => FrameKind::Reprotected,
            Frame::Failback(_) => FrameKind::Failback,
            Frame::FailedBack(_) => FrameKind::FailedBack,
        }
    }

    /// Bytes [`super::encode`] appends for this frame (header + body), for
    /// batching writes under a peer's body limit. Saturates instead of
    /// overflowing; encoding fails anyway above [`super::BODY_BYTES_LIMIT`].
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES.saturating_add(body::body_bytes(self))
    }
}

/// Frame type codes, as carried in header byte 5. Code 0 is never used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    Write = 2,
    Flush = 3,
    Trim = 4,
    Bookmark = 5,
    Ack = 6,
    Heartbeat = 7,
    Error = 8,
    Attach = 9,
    Group = 10,
    Batch = 11,
    SumRequest = 12,
    Sums = 13,
    Resync = 14,
    ResyncMark = 15,
    Reprotect = 16,
    Reprotected = 17,
    Failback = 18,
    FailedBack = 19,
}

impl FrameKind {
    pub const ALL: [FrameKind; 19] = [
        FrameKind::Hello,
        FrameKind::Write,
        FrameKind::Flush,
        FrameKind::Trim,
        FrameKind::Bookmark,
        FrameKind::Ack,
        FrameKind::Heartbeat,
        FrameKind::Error,
        FrameKind::Attach,
        FrameKind::Group,
        FrameKind::Batch,
        FrameKind::SumRequest,
        FrameKind::Sums,
        FrameKind::Resync,
        FrameKind::ResyncMark,
        FrameKind::Reprotect,
        FrameKind::Reprotected,
        FrameKind::Failback,
        FrameKind::FailedBack,
    ];

    pub const fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<FrameKind> {
        FrameKind::ALL.into_iter().find(|kind| kind.code() == code)
    }

    /// Upper-case name used in logs and in the protocol doc.
    pub const fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "HELLO",
            FrameKind::Write => "WRITE",
            FrameKind::Flush => "FLUSH",
            FrameKind::Trim => "TRIM",
            FrameKind::Bookmark => "BOOKMARK",
            FrameKind::Ack => "ACK",
            FrameKind::Heartbeat => "HEARTBEAT",
            FrameKind::Error => "ERROR",
            FrameKind::Attach => "ATTACH",
            FrameKind::Group => "GROUP",
            FrameKind::Batch => "BATCH",
            FrameKind::SumRequest => "SUM_REQUEST",
            FrameKind::Sums => "SUMS",
            FrameKind::Resync => "RESYNC",
            FrameKind::ResyncMark => "RESYNC_MARK",
            FrameKind::Reprotect => "REPROTECT",
            FrameKind::Reprotected => "REPROTECTED",
            FrameKind::Failback => "FAILBACK",
            FrameKind::FailedBack => "FAILED_BACK",
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// First frame each side sends. The connecting side offers the range of
/// protocol versions it speaks; the accepting side answers with a HELLO whose
/// `version_min == version_max ==` the chosen version, or with an ERROR
/// `UnsupportedVersion` and closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version_min: u16,
    pub version_max: u16,
    pub role: Role,
    pub appliance_id: [u8; 16],
    pub name: String,
    pub software: String,
}

impl Hello {
    /// The highest protocol version both this build and the peer's offered
    /// range speak, or `None` when the ranges do not overlap.
    pub fn negotiate(&self) -> Option<u16> {
        let version_low = self.version_min.max(PROTOCOL_VERSION_MIN);
        let version_high = self.version_max.min(PROTOCOL_VERSION_MAX);
        (version_low <= version_high).then_some(version_high)
    }
}

/// What the sender of a HELLO is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// A drgw gateway (source or target side of a pair).
    Appliance = 1,
    /// A tap forwarding writes of protected disks.
    Tap = 2,
}

impl Role {
    pub const fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Role> {
        match code {
            1 => Some(Role::Appliance),
            2 => Some(Role::Tap),
            _ => None,
        }
    }
}

/// Writes in sequence order. Never empty; sequences strictly increase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    pub writes: Vec<WriteRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    pub disk: u32,
    pub sequence: u64,
    /// Byte offset on the disk; `offset + data.len()` fits in a u64.
    pub offset: u64,
    pub data: bytes::Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flush {
    pub disk: u32,
    pub sequence: u64,
}

/// Discard of `length` bytes at `offset`; `offset + length` fits in a u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    pub disk: u32,
    pub sequence: u64,
    pub offset: u64,
    pub length: u64,
}

/// An app-consistent point of a consistency group at `sequence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bookmark {
    pub group: u32,
    pub sequence: u64,
    pub name: String,
}

/// Everything of `group` up to and including `sequence_durable` is durable
/// at the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub group: u32,
    pub sequence_durable: u64,
}

/// Liveness and round-trip time. `echo_unix_ns` is the `sent_unix_ns` of the
/// last HEARTBEAT received from the peer (0 before any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub sent_unix_ns: u64,
    pub echo_unix_ns: u64,
}

/// A tap names a protected disk it forwards and the number it will use for
/// it in WRITE, FLUSH and TRIM frames on this connection; the gateway answers
/// with the same ATTACH once it accepts, or ERROR `NotProtected` and closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    pub disk: u32,
    pub size_bytes: u64,
    /// 1 to 255 bytes of UTF-8: the disk's name in the gateway's catalog.
    pub name: String,
}

/// Source gateway → target gateway: a consistency group this side protects
/// and replicates to the peer, with its disks. The target answers with an
/// ACK carrying the last sequence it holds durably (0 for a new group): the
/// source resumes shipping after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub group: u32,
    /// 1 to 255 bytes of UTF-8.
    pub name: String,
    /// 0 to 255 disks.
    pub disks: Vec<GroupDisk>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDisk {
    pub disk: u32,
    pub size_bytes: u64,
    /// 1 to 255 bytes of UTF-8.
    pub name: String,
}

/// Source gateway → target gateway: staged records `sequence_first..=
/// sequence_last` of a group (gaps allowed), encoded as in
/// docs/wire-protocol.md ("BATCH payload") and compressed with `codec`.
/// The target answers with an ACK once the batch is durable in its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub group: u32,
    pub sequence_first: u64,
    pub sequence_last: u64,
    pub records: u32,
    /// 0 = none, 1 = zstd. Others are refused by the receiver, not the codec.
    pub codec: u8,
    /// Bytes of the payload once decompressed.
    pub raw_bytes: u32,
    /// CRC32C of the decompressed payload (end to end, beyond the frame CRC).
    pub raw_crc32c: u32,
    pub payload: Vec<u8>,
}

/// Sent before closing a connection because of `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

/// ERROR frame codes (u16 on the wire). Codes this build does not know
/// decode as `Unknown(code)`, so a newer peer's codes still get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Malformed,
    UnsupportedVersion,
    FrameTooLarge,
    UnexpectedFrame,
    NotPaired,
    Internal,
    ShuttingDown,
    /// A tap attached a disk this gateway does not protect for it.
    NotProtected,
    /// A code outside 1..=8. Encoding `Unknown(n)` for a named `n` fails,
    /// so every code has exactly one representation.
    Unknown(u16),
}

impl ErrorCode {
    pub const fn code(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::UnsupportedVersion => 2,
            ErrorCode::FrameTooLarge => 3,
            ErrorCode::UnexpectedFrame => 4,
            ErrorCode::NotPaired => 5,
            ErrorCode::Internal => 6,
            ErrorCode::ShuttingDown => 7,
            ErrorCode::NotProtected => 8,
            ErrorCode::Unknown(code) => code,
        }
    }

    pub const fn from_code(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::FrameTooLarge,
            4 => ErrorCode::UnexpectedFrame,
            5 => ErrorCode::NotPaired,
            6 => ErrorCode::Internal,
            7 => ErrorCode::ShuttingDown,
            8 => ErrorCode::NotProtected,
            code => ErrorCode::Unknown(code),
        }
    }

    /// Whether `self` is the one representation of its code.
    pub(crate) fn is_canonical(self) -> bool {
        ErrorCode::from_code(self.code()) == self
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Malformed => formatter.write_str("malformed frame"),
            ErrorCode::UnsupportedVersion => formatter.write_str("unsupported version"),
            ErrorCode::FrameTooLarge => formatter.write_str("frame too large"),
            ErrorCode::UnexpectedFrame => formatter.write_str("unexpected frame"),
            ErrorCode::NotPaired => formatter.write_str("not paired"),
            ErrorCode::Internal => formatter.write_str("internal error"),
            ErrorCode::ShuttingDown => formatter.write_str("shutting down"),
            ErrorCode::NotProtected => formatter.write_str("disk not protected"),
            ErrorCode::Unknown(code) => write!(formatter, "unknown error code {code}"),
        }
    }
}
