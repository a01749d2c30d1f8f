//! Undo blobs: what the applier saves before it overwrites a replica. One
//! blob per applied batch, stored as a Blob record in the group's undo log
//! (docs/formats/journal.md, "Undo blob").

use super::{RecoveryPoint, ResyncMarker, ZERO_DATA};
use drgw_io::le::{self, LeReader, Truncated};

const MAGIC: u32 = u32::from_le_bytes(*b"dUND");
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 4 + 2 + 1 + 1 + 8 + 8 + 4 + 4;
const CODEC_ZSTD: u8 = 1;
const KIND_POINT: u8 = 1;
const KIND_BOOKMARK: u8 = 2;
const KIND_RESYNC_START: u8 = 3;
const KIND_RESYNC_DONE: u8 = 4;

/// The bytes `offset..offset + length` of `disk` held before write `sequence`:
/// at `data_at` in the blob's data, or zeroes when `data_at` is `ZERO_DATA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoEntry {
    pub sequence: u64,
    pub disk: u32,
    pub offset: u64,
    pub length: u32,
    /// Where the old data starts in the decoded blob's `data`.
    pub data_at: u32,
}

/// A decoded blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoBlob {
    /// The batch's sequence range (every record of it is applied with this blob).
    pub sequence_first: u64,
    pub sequence_last: u64,
    pub entries: Vec<UndoEntry>,
    pub points: Vec<RecoveryPoint>,
    /// Resyncs that began or finished in the batch.
    pub markers: Vec<ResyncMarker>,
    /// Old data of every entry, back to back.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UndoError {
    #[error("undo blob: {0}")]
    Invalid(String),
}

fn invalid(why: impl Into<String>) -> UndoError {
    UndoError::Invalid(why.into())
}

impl From<Truncated> for UndoError {
    fn from(short: Truncated) -> UndoError {
        invalid(short.to_string())
    }
}

/// Builds blobs entry by entry.
#[derive(Debug, Default)]
pub struct UndoBuilder {
    entries: Vec<UndoEntry>,
    points: Vec<RecoveryPoint>,
    markers: Vec<ResyncMarker>,
    data: Vec<u8>,
}

impl UndoBuilder {
    /// Adds an entry; `old` is the data it restores. Returns its `data_at`.
    pub fn add(&mut self, sequence: u64, disk: u32, offset: u64, old: &[u8]) -> u32 {
        let data_at = u32::try_from(self.data.len()).expect("an undo blob stays under 4 GiB");
        self.entries.push(UndoEntry {
            sequence,
            disk,
            offset,
            length: u32::try_from(old.len()).expect("undo entries are cut under 4 GiB"),
            data_at,
        });
        self.data.extend_from_slice(old);
        data_at
    }

    pub fn point(&mut self, point: RecoveryPoint) {
        self.points.push(point);
    }

    pub fn marker(&mut self, marker: ResyncMarker) {
        self.markers.push(marker);
    }

    pub fn finish(self, sequence_first: u64, sequence_last: u64) -> UndoBlob {
        UndoBlob {
            sequence_first,
            sequence_last,
            entries: self.entries,
            points: self.points,
            markers: self.markers,
            data: self.data,
        }
    }
}

impl UndoBlob {
    /// Encodes and compresses (zstd `level`).
    pub fn encode(&self, level: i32) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.data.len() + self.entries.len() * 24 + 64);
        raw.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        raw.extend_from_slice(&((self.points.len() + self.markers.len()) as u32).to_le_bytes());
        for entry in &self.entries {
            raw.extend_from_slice(&entry.sequence.to_le_bytes());
            raw.extend_from_slice(&entry.disk.to_le_bytes());
            raw.extend_from_slice(&entry.offset.to_le_bytes());
            raw.extend_from_slice(&entry.length.to_le_bytes());
            raw.extend_from_slice(&entry.data_at.to_le_bytes());
        }
        for point in &self.points {
            raw.extend_from_slice(&point.sequence.to_le_bytes());
            raw.push(if point.bookmark.is_some() {
                KIND_BOOKMARK
            } else {
                KIND_POINT
            });
            raw.extend_from_slice(&point.unix_ms.to_le_bytes());
            let name = point.bookmark.as_deref().unwrap_or("");
            raw.extend_from_slice(&(name.len() as u16).to_le_bytes());
            raw.extend_from_slice(name.as_bytes());
        }
        for marker in &self.markers {
            raw.extend_from_slice(&marker.sequence.to_le_bytes());
            raw.push(if marker.done {
                KIND_RESYNC_DONE
            } else {
                KIND_RESYNC_START
            });
            raw.extend_from_slice(&marker.unix_ms.to_le_bytes());
            raw.extend_from_slice(&4u16.to_le_bytes());
            raw.extend_from_slice(&marker.owner.to_le_bytes());
        }
        raw.extend_from_slice(&self.data);
        let compressed = zstd::bulk::compress(&raw, level).expect("zstd compresses in memory");
        let mut out = Vec::with_capacity(HEADER_BYTES + compressed.len());
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(CODEC_ZSTD);
        out.push(0);
        out.extend_from_slice(&self.sequence_first.to_le_bytes());
        out.extend_from_slice(&self.sequence_last.to_le_bytes());
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&raw).to_le_bytes());
        out.extend_from_slice(&compressed);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<UndoBlob, UndoError> {
        if bytes.len() < HEADER_BYTES {
            return Err(invalid("shorter than its header"));
        }
        let u16_at = |at: usize| le::u16_at(bytes, at);
        let u32_at = |at: usize| le::u32_at(bytes, at);
        let u64_at = |at: usize| le::u64_at(bytes, at);
        if u32_at(0) != MAGIC {
            return Err(invalid("bad magic"));
        }
        if u16_at(4) != VERSION {
            return Err(invalid(format!("unsupported version {}", u16_at(4))));
        }
        if bytes[6] != CODEC_ZSTD || bytes[7] != 0 {
            return Err(invalid(format!("unknown codec {}", bytes[6])));
        }
        let sequence_first = u64_at(8);
        let sequence_last = u64_at(16);
        let raw_bytes = u32_at(24) as usize;
        let crc = u32_at(28);
        let raw = zstd::bulk::decompress(&bytes[HEADER_BYTES..], raw_bytes)
            .map_err(|error| invalid(format!("decompression: {error}")))?;
        if raw.len() != raw_bytes || crc32c::crc32c(&raw) != crc {
            return Err(invalid("checksum or length mismatch after decompression"));
        }
        decode_raw(&raw, sequence_first, sequence_last)
    }
}

fn decode_raw(raw: &[u8], sequence_first: u64, sequence_last: u64) -> Result<UndoBlob, UndoError> {
    let mut reader = LeReader::new(raw);
    let entries_count = reader.u32("entries")? as usize;
    let points_count = reader.u32("points")? as usize;
    if entries_count > raw.len() / 28 || points_count > raw.len() / 19 {
        return Err(invalid("counts exceed the blob"));
    }
    let mut entries = Vec::with_capacity(entries_count);
    let mut data_bytes = 0u64;
    for _ in 0..entries_count {
        let sequence = reader.u64("entry.sequence")?;
        let disk = reader.u32("entry.disk")?;
        let offset = reader.u64("entry.offset")?;
        let length = reader.u32("entry.length")?;
        let data_at = reader.u32("entry.data_at")?;
        if sequence < sequence_first || sequence > sequence_last {
            return Err(invalid(format!(
                "entry sequence {sequence} outside the blob"
            )));
        }
        if data_at != ZERO_DATA {
            data_bytes = data_bytes.max(u64::from(data_at) + u64::from(length));
        }
        entries.push(UndoEntry {
            sequence,
            disk,
            offset,
            length,
            data_at,
        });
    }
    let mut points = Vec::with_capacity(points_count);
    let mut markers = Vec::new();
    for _ in 0..points_count {
        let sequence = reader.u64("point.sequence")?;
        let kind = reader.u8("point.kind")?;
        let unix_ms = reader.u64("point.unix_ms")?;
        let name_bytes = usize::from(reader.u16("point.name_length")?);
        let name = reader.bytes("point.name", name_bytes)?;
        if matches!(kind, KIND_RESYNC_START | KIND_RESYNC_DONE) {
            let owner = <[u8; 4]>::try_from(name)
                .map_err(|_| invalid("resync marker without its 4-byte owner"))?;
            markers.push(ResyncMarker {
                sequence,
                unix_ms,
                done: kind == KIND_RESYNC_DONE,
                owner: u32::from_le_bytes(owner),
            });
            continue;
        }
        let name =
            String::from_utf8(name.to_vec()).map_err(|_| invalid("bookmark name not UTF-8"))?;
        let bookmark = match kind {
            KIND_POINT => None,
            KIND_BOOKMARK => Some(name),
            other => return Err(invalid(format!("unknown point kind {other}"))),
        };
        points.push(RecoveryPoint {
            sequence,
            unix_ms,
            bookmark,
        });
    }
    let data = reader.rest().to_vec();
    if (data.len() as u64) < data_bytes {
        return Err(invalid("entries point past the data"));
    }
    Ok(UndoBlob {
        sequence_first,
        sequence_last,
        entries,
        points,
        markers,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_damage_is_caught() {
        let mut builder = UndoBuilder::default();
        builder.add(10, 1, 4096, &[1; 4096]);
        builder.add(11, 2, 0, &[2; 512]);
        let blob_zero = UndoEntry {
            sequence: 11,
            disk: 2,
            offset: 1 << 20,
            length: 1 << 30,
            data_at: ZERO_DATA,
        };
        builder.point(RecoveryPoint {
            sequence: 12,
            unix_ms: 99,
            bookmark: None,
        });
        builder.point(RecoveryPoint {
            sequence: 13,
            unix_ms: 100,
            bookmark: Some("pre-upgrade".into()),
        });
        builder.marker(ResyncMarker {
            sequence: 14,
            unix_ms: 101,
            done: false,
            owner: 3,
        });
        let mut blob = builder.finish(10, 14);
        blob.entries.push(blob_zero);
        let bytes = blob.encode(1);
        assert_eq!(UndoBlob::decode(&bytes).unwrap(), blob);
        assert_eq!(blob.entries[1].data_at, 4096);
        for at in [0, 5, 9, 25, 29, bytes.len() - 2] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            let decoded = UndoBlob::decode(&damaged);
            // The sequence range is not checksummed here (the log record's CRC covers it).
            assert!(
                decoded.is_err() || (8..24).contains(&at),
                "flip at {at} undetected"
            );
        }
    }
}
