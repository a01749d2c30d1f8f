//! Record format: an 80-byte header, then the payload, padded to 8 bytes.
//! See docs/formats/staging.md. Pure functions: no I/O here.

use super::crypto::Sealer;
use super::RecordBody;
use drgw_io::le;

pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"dREC");
pub const HEADER_BYTES: usize = 80;
/// Records start on this alignment inside a batch (padding bytes are zero).
pub const RECORD_ALIGN: usize = 8;
/// Batches start on, and are padded to, this alignment (O_DIRECT).
pub const BLOCK_BYTES: usize = 4096;
pub const TAG_BYTES: usize = 16;
const CHECKSUM_AT: usize = 76;
pub const FLAG_ENCRYPTED: u8 = 1;

/// Record kinds on disk. Never renumber: the value is the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Write = 1,
    Trim = 2,
    Flush = 3,
    Bookmark = 4,
    Padding = 5,
    Point = 6,
    Blob = 7,
    ResyncStart = 8,
    ResyncDone = 9,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Write,
            2 => Kind::Trim,
            3 => Kind::Flush,
            4 => Kind::Bookmark,
            5 => Kind::Padding,
            6 => Kind::Point,
            7 => Kind::Blob,
            8 => Kind::ResyncStart,
            9 => Kind::ResyncDone,
            _ => return None,
        })
    }
}

/// The decoded fixed header of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u8,
    pub sequence: u64,
    pub batch_sequence_first: u64,
    pub segment: u64,
    pub disk_offset: u64,
    pub length: u64,
    pub disk: u32,
    pub payload_bytes: u32,
    pub nonce: [u8; 12],
}

impl Header {
    /// Bytes the record occupies on disk, header and alignment padding included.
    pub fn record_bytes(&self) -> usize {
        record_bytes(self.payload_bytes as usize)
    }
}

pub fn record_bytes(payload_bytes: usize) -> usize {
    align_up(HEADER_BYTES + payload_bytes, RECORD_ALIGN)
}

pub fn align_up(value: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    (value + align - 1) & !(align - 1)
}

/// Records never start in the last HEADER_BYTES of a block (a header never straddles
/// a block boundary by less than its length): the writer zero-fills that gap and
/// every reader skips it.
pub fn skip_short_gap(position: usize) -> usize {
    let in_block = position % BLOCK_BYTES;
    if in_block != 0 && BLOCK_BYTES - in_block < HEADER_BYTES {
        align_up(position, BLOCK_BYTES)
    } else {
        position
    }
}

/// Plaintext payload bytes a body carries.
pub fn body_payload_bytes(body: &RecordBody) -> usize {
    match body {
        RecordBody::Write { data, .. } => data.len(),
        RecordBody::Bookmark { name, .. } => name.len(),
        RecordBody::Blob { data } => data.len(),
        RecordBody::Trim { .. }
        | RecordBody::Flush { .. }
        | RecordBody::Point { .. }
        | RecordBody::Resync { .. } => 0,
    }
}

/// Bytes on disk of a body's record, with or without encryption.
pub fn body_record_bytes(body: &RecordBody, encrypted: bool) -> usize {
    record_bytes(body_payload_bytes(body) + if encrypted { TAG_BYTES } else { 0 })
}

/// The nonce of a record: segment number (low 32 bits) then sequence. See staging.md.
pub fn nonce_for(segment: u64, sequence: u64) -> [u8; 12] {
    assert!(
        segment < u64::from(u32::MAX),
        "segment number exhausts the nonce space"
    );
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&(segment as u32).to_le_bytes());
    nonce[4..].copy_from_slice(&sequence.to_le_bytes());
    nonce
}

fn write_header(out: &mut [u8], header: &Header) {
    out[..HEADER_BYTES].fill(0);
    out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    out[4] = header.kind as u8;
    out[5] = header.flags;
    out[8..16].copy_from_slice(&header.sequence.to_le_bytes());
    out[16..24].copy_from_slice(&header.batch_sequence_first.to_le_bytes());
    out[24..32].copy_from_slice(&header.segment.to_le_bytes());
    out[32..40].copy_from_slice(&header.disk_offset.to_le_bytes());
    out[40..48].copy_from_slice(&header.length.to_le_bytes());
    out[48..52].copy_from_slice(&header.disk.to_le_bytes());
    out[52..56].copy_from_slice(&header.payload_bytes.to_le_bytes());
    out[56..68].copy_from_slice(&header.nonce);
}

fn body_header(body: &RecordBody) -> (Kind, u32, u64, u64, &[u8]) {
    match body {
        RecordBody::Write { disk, offset, data } => {
            (Kind::Write, *disk, *offset, data.len() as u64, data)
        }
        RecordBody::Trim {
            disk,
            offset,
            length,
        } => (Kind::Trim, *disk, *offset, *length, &[]),
        RecordBody::Flush { disk } => (Kind::Flush, *disk, 0, 0, &[]),
        RecordBody::Bookmark { name, unix_ms } => (
            Kind::Bookmark,
            0,
            *unix_ms,
            name.len() as u64,
            name.as_bytes(),
        ),
        RecordBody::Point { unix_ms } => (Kind::Point, 0, *unix_ms, 0, &[]),
        RecordBody::Resync {
            unix_ms,
            done: false,
            owner,
        } => (Kind::ResyncStart, *owner, *unix_ms, 0, &[]),
        RecordBody::Resync {
            unix_ms,
            done: true,
            owner,
        } => (Kind::ResyncDone, *owner, *unix_ms, 0, &[]),
        RecordBody::Blob { data } => (Kind::Blob, 0, 0, data.len() as u64, data),
    }
}

/// Where a record goes: its sequence, its batch and its segment.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub sequence: u64,
    pub batch_sequence_first: u64,
    pub segment: u64,
}

/// Encodes one record into `out` (which must hold `body_record_bytes`), returns the bytes used.
pub fn encode(out: &mut [u8], body: &RecordBody, at: Placement, sealer: Option<&Sealer>) -> usize {
    let (kind, disk, disk_offset, length, plain) = body_header(body);
    let tag_bytes = if sealer.is_some() { TAG_BYTES } else { 0 };
    let payload_bytes = plain.len() + tag_bytes;
    let total = record_bytes(payload_bytes);
    assert!(out.len() >= total, "encode buffer too small");
    let header = Header {
        kind,
        flags: if sealer.is_some() { FLAG_ENCRYPTED } else { 0 },
        sequence: at.sequence,
        batch_sequence_first: at.batch_sequence_first,
        segment: at.segment,
        disk_offset,
        length,
        disk,
        payload_bytes: u32::try_from(payload_bytes).expect("payload fits u32"),
        nonce: if sealer.is_some() {
            nonce_for(at.segment, at.sequence)
        } else {
            [0; 12]
        },
    };
    write_header(out, &header);
    let (head, rest) = out.split_at_mut(HEADER_BYTES);
    rest[..plain.len()].copy_from_slice(plain);
    if let Some(sealer) = sealer {
        let tag = sealer.seal(
            &header.nonce,
            &head[..CHECKSUM_AT],
            &mut rest[..plain.len()],
        );
        rest[plain.len()..payload_bytes].copy_from_slice(&tag);
    }
    rest[payload_bytes..total - HEADER_BYTES].fill(0);
    seal_checksum(out, payload_bytes);
    debug_assert!(decode_header(&out[..total], at.segment).is_ok());
    total
}

/// Encodes a padding record that fills exactly `fill` bytes (>= HEADER_BYTES, multiple of 8).
pub fn encode_padding(out: &mut [u8], fill: usize, batch_sequence_first: u64, segment: u64) {
    assert!(fill >= HEADER_BYTES && fill % RECORD_ALIGN == 0 && out.len() >= fill);
    let header = Header {
        kind: Kind::Padding,
        flags: 0,
        sequence: 0,
        batch_sequence_first,
        segment,
        disk_offset: 0,
        length: 0,
        disk: 0,
        payload_bytes: (fill - HEADER_BYTES) as u32,
        nonce: [0; 12],
    };
    write_header(out, &header);
    out[HEADER_BYTES..fill].fill(0);
    seal_checksum(out, fill - HEADER_BYTES);
}

fn seal_checksum(out: &mut [u8], payload_bytes: usize) {
    let checksum = checksum(
        &out[..CHECKSUM_AT],
        &out[HEADER_BYTES..HEADER_BYTES + payload_bytes],
    );
    out[CHECKSUM_AT..HEADER_BYTES].copy_from_slice(&checksum.to_le_bytes());
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), payload)
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    Truncated,
    Magic,
    Kind(u8),
    Reserved,
    Segment(u64),
    PayloadLength(u32),
    Checksum,
    Authentication,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Truncated => write!(f, "record runs past the end of the segment"),
            Invalid::Magic => write!(f, "bad record magic"),
            Invalid::Kind(kind) => write!(f, "unknown record kind {kind}"),
            Invalid::Reserved => write!(f, "reserved header bytes not zero"),
            Invalid::Segment(found) => {
                write!(f, "record claims segment {found} (misdirected or stale)")
            }
            Invalid::PayloadLength(bytes) => write!(f, "payload length {bytes} inconsistent"),
            Invalid::Checksum => write!(f, "CRC32C mismatch"),
            Invalid::Authentication => write!(f, "AES-GCM authentication failed"),
        }
    }
}

/// Parses the header at the start of `bytes`; checks everything but the checksum.
pub fn parse_header(bytes: &[u8], segment: u64) -> Result<Header, Invalid> {
    if bytes.len() < HEADER_BYTES {
        return Err(Invalid::Truncated);
    }
    let u32_at = |at: usize| le::u32_at(bytes, at);
    let u64_at = |at: usize| le::u64_at(bytes, at);
    if u32_at(0) != RECORD_MAGIC {
        return Err(Invalid::Magic);
    }
    let kind = Kind::from_u8(bytes[4]).ok_or(Invalid::Kind(bytes[4]))?;
    if bytes[6..8] != [0, 0] || bytes[68..76] != [0; 8] || bytes[5] & !FLAG_ENCRYPTED != 0 {
        return Err(Invalid::Reserved);
    }
    let header = Header {
        kind,
        flags: bytes[5],
        sequence: u64_at(8),
        batch_sequence_first: u64_at(16),
        segment: u64_at(24),
        disk_offset: u64_at(32),
        length: u64_at(40),
        disk: u32_at(48),
        payload_bytes: u32_at(52),
        nonce: bytes[56..68].try_into().unwrap(),
    };
    if header.segment != segment {
        return Err(Invalid::Segment(header.segment));
    }
    check_lengths(&header)?;
    Ok(header)
}

fn check_lengths(header: &Header) -> Result<(), Invalid> {
    let tag = if header.flags & FLAG_ENCRYPTED != 0 {
        TAG_BYTES as u64
    } else {
        0
    };
    let payload = u64::from(header.payload_bytes);
    let consistent = match header.kind {
        Kind::Write | Kind::Bookmark | Kind::Blob => payload == header.length + tag,
        Kind::Trim | Kind::Flush | Kind::Point | Kind::ResyncStart | Kind::ResyncDone => {
            payload == tag
        }
        Kind::Padding => true,
    };
    if !consistent {
        return Err(Invalid::PayloadLength(header.payload_bytes));
    }
    Ok(())
}

/// Parses and checksums the record at the start of `bytes` (which may extend past it).
pub fn decode_header(bytes: &[u8], segment: u64) -> Result<Header, Invalid> {
    let header = parse_header(bytes, segment)?;
    let end = HEADER_BYTES + header.payload_bytes as usize;
    if bytes.len() < end {
        return Err(Invalid::Truncated);
    }
    let stored = le::u32_at(bytes, CHECKSUM_AT);
    if checksum(&bytes[..CHECKSUM_AT], &bytes[HEADER_BYTES..end]) != stored {
        return Err(Invalid::Checksum);
    }
    Ok(header)
}

/// Builds the body of a verified record; decrypts (and authenticates) when encrypted.
pub fn decode_body(
    bytes: &[u8],
    header: &Header,
    sealer: Option<&Sealer>,
) -> Result<RecordBody, Invalid> {
    let payload = &bytes[HEADER_BYTES..HEADER_BYTES + header.payload_bytes as usize];
    let plain = match (header.flags & FLAG_ENCRYPTED != 0, sealer) {
        (true, Some(sealer)) => sealer
            .open(&header.nonce, &bytes[..CHECKSUM_AT], payload)
            .ok_or(Invalid::Authentication)?,
        (false, None) => payload.to_vec(),
        _ => return Err(Invalid::Authentication),
    };
    Ok(match header.kind {
        Kind::Write => RecordBody::Write {
            disk: header.disk,
            offset: header.disk_offset,
            data: plain.into(),
        },
        Kind::Trim => RecordBody::Trim {
            disk: header.disk,
            offset: header.disk_offset,
            length: header.length,
        },
        Kind::Flush => RecordBody::Flush { disk: header.disk },
        Kind::Bookmark => RecordBody::Bookmark {
            name: String::from_utf8(plain)
                .map_err(|_| Invalid::PayloadLength(header.payload_bytes))?,
            unix_ms: header.disk_offset,
        },
        Kind::Point => RecordBody::Point {
            unix_ms: header.disk_offset,
        },
        Kind::Blob => RecordBody::Blob { data: plain },
        Kind::ResyncStart | Kind::ResyncDone => RecordBody::Resync {
            unix_ms: header.disk_offset,
            done: header.kind == Kind::ResyncDone,
            owner: header.disk,
        },
        Kind::Padding => unreachable!("padding has no body"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: RecordBody, sealer: Option<&Sealer>) {
        let mut buf = vec![0u8; body_record_bytes(&body, sealer.is_some())];
        let at = Placement {
            sequence: 7,
            batch_sequence_first: 5,
            segment: 3,
        };
        let used = encode(&mut buf, &body, at, sealer);
        assert_eq!(used, buf.len());
        let header = decode_header(&buf, 3).unwrap();
        assert_eq!((header.sequence, header.batch_sequence_first), (7, 5));
        assert_eq!(decode_body(&buf, &header, sealer).unwrap(), body);
        assert_eq!(decode_header(&buf, 4), Err(Invalid::Segment(3)));
        for at in [0, 9, 60, buf.len() - 1] {
            let mut flipped = buf.clone();
            flipped[at] ^= 0x10;
            let header = decode_header(&flipped, 3);
            let body_ok = header
                .as_ref()
                .ok()
                .map(|h| decode_body(&flipped, h, sealer));
            // A flip in the alignment padding is outside the checksum: only there may it pass.
            let in_padding = at
                >= HEADER_BYTES
                    + body_payload_bytes(&body)
                    + if sealer.is_some() { TAG_BYTES } else { 0 };
            assert!(
                in_padding || header.is_err() || matches!(body_ok, Some(Err(_))),
                "flip at {at} undetected"
            );
        }
    }

    #[test]
    fn bodies_round_trip_and_flips_are_caught() {
        let sealer = Sealer::for_log(&[7u8; 32], 1, 99);
        for sealer in [None, Some(&sealer)] {
            round_trip(
                RecordBody::Write {
                    disk: 2,
                    offset: 4096,
                    data: vec![0xab; 1000].into(),
                },
                sealer,
            );
            round_trip(
                RecordBody::Trim {
                    disk: 1,
                    offset: 8192,
                    length: 1 << 20,
                },
                sealer,
            );
            round_trip(RecordBody::Flush { disk: 9 }, sealer);
            round_trip(
                RecordBody::Bookmark {
                    name: "pre-upgrade".into(),
                    unix_ms: 1_790_000_000_123,
                },
                sealer,
            );
            round_trip(
                RecordBody::Point {
                    unix_ms: 1_790_000_000_456,
                },
                sealer,
            );
            round_trip(RecordBody::Blob { data: vec![3; 777] }, sealer);
        }
    }

    #[test]
    fn padding_decodes() {
        let mut buf = vec![0u8; 200];
        encode_padding(&mut buf, 200, 11, 2);
        let header = decode_header(&buf, 2).unwrap();
        assert_eq!(header.kind, Kind::Padding);
        assert_eq!(header.record_bytes(), 200);
    }
}
