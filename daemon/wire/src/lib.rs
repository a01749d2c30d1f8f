//! Replication wire protocol: the frames exchanged on TCP 9443 (inside TLS)
//! between a tap and its source gateway and between paired appliances.
//!
//! A frame is a 16-byte header followed by a body; every integer is
//! little-endian and every frame carries a CRC32C over header and body. The
//! format is specified in `docs/wire-protocol.md`; this module is its only
//! implementation.
//!
//! - [`Frame`]: one variant, and one struct, per frame kind.
//! - [`encode`] / [`decode`]: buffer codec; [`decode`] never panics and never
//!   allocates more than a constant factor of a body length it has already
//!   checked against the caller's limit.
//! - [`read_frame`] / [`write_frame`]: one frame at a time over any tokio
//!   stream (TLS in production, a duplex in tests).

mod body;
mod codec;
mod cursor;
mod error;
mod frame;
mod header;
mod io;
mod reprotect;
mod resync;

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod proptests;

pub use codec::{decode, encode};
pub use error::{DecodeError, EncodeError, ReadError, WriteError};
pub use frame::{
    Ack, Attach, Batch, Bookmark, ErrorCode, ErrorFrame, Flush, Frame, FrameKind, GroupDisk,
    GroupInfo, Heartbeat, Hello, Role, Trim, WriteBatch, WriteRecord,
};
pub use io::{read_frame, write_frame};
pub use reprotect::{
    Failback, FailedBack, Reprotect, ReprotectDisk, Reprotected, FAILBACK_QUIESCE, FAILBACK_RETURN,
    REPROTECT_DISKS_MAX, REPROTECT_RANGES_MAX,
};
pub use resync::{
    Resync, ResyncMark, ResyncRange, SumRequest, SumSpan, Sums, RESYNC_RANGES_MAX, SUM_BLOCKS_MAX,
    SUM_BLOCK_BYTES_MAX, SUM_BLOCK_BYTES_MIN, SUM_BYTES,
};

/// The first four bytes of every frame: ASCII `DRGW`, so a hex dump of a
/// stream shows where frames start.
pub const MAGIC_BYTES: [u8; 4] = *b"DRGW";
/// [`MAGIC_BYTES`] read as a little-endian `u32` (0x5747_5244).
pub const MAGIC: u32 = u32::from_le_bytes(MAGIC_BYTES);
/// Version of the frame format (header layout, checksum, body encodings).
/// Any other value in a header is rejected.
pub const FORMAT_VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const HEADER_BYTES: usize = 16;
/// Hard ceiling on a body, whatever the configured limit.
pub const BODY_BYTES_LIMIT: u32 = 64 << 20;
/// Default configured limit on a received body.
pub const BODY_BYTES_DEFAULT: u32 = 16 << 20;
/// Lowest protocol version this build speaks (negotiated in HELLO).
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// Highest protocol version this build speaks (negotiated in HELLO).
pub const PROTOCOL_VERSION_MAX: u16 = 1;

/// Fixed part of one record in a WRITE body (disk, sequence, offset,
/// length); the data follows it.
pub const WRITE_RECORD_HEADER_BYTES: usize = 24;
/// Longest HELLO name (appliance or tap host name), in bytes of UTF-8.
pub const HELLO_NAME_BYTES_MAX: usize = 255;
/// Longest HELLO software string (e.g. `drgw 0.1.0`), in bytes of UTF-8.
pub const HELLO_SOFTWARE_BYTES_MAX: usize = 64;
/// Longest BOOKMARK name, in bytes of UTF-8.
pub const BOOKMARK_NAME_BYTES_MAX: usize = 255;
/// Longest ATTACH disk name, in bytes of UTF-8.
pub const ATTACH_NAME_BYTES_MAX: usize = 255;
/// Longest GROUP name, in bytes of UTF-8.
pub const GROUP_NAME_BYTES_MAX: usize = 255;
/// Most disks one GROUP frame lists.
pub const GROUP_DISKS_MAX: usize = 255;
/// `sequence_durable` of the ACK answering a GROUP the target refuses (its
/// journal of that group is unusable): the source stops shipping the group
/// and offers it again later; the link and other groups go on.
pub const GROUP_REFUSED: u64 = u64::MAX;
/// Fixed part of a BATCH body before its payload.
pub const BATCH_FIXED_BYTES: usize = 4 + 8 + 8 + 4 + 1 + 4 + 4;
/// Longest ERROR message, in bytes of UTF-8.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

// Body lengths are u32 on the wire and are used as `usize` in memory.
const _: () = assert!(usize::BITS >= 32);
const _: () = assert!(BODY_BYTES_DEFAULT <= BODY_BYTES_LIMIT);
const _: () = assert!(PROTOCOL_VERSION_MIN <= PROTOCOL_VERSION_MAX);
