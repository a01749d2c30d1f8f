//! The BATCH payload: staged records of one group, encoded back to back and
//! compressed (docs/wire-protocol.md, "BATCH payload"). The target stores the
//! BATCH body as received (compressed) in its journal, so this is also part
//! of the journal format (docs/formats/journal.md).

use bytes::Bytes;
use drgw_io::le::{LeReader, Truncated};
use drgw_staging::{RecordBody, StagedRecord};
use drgw_wire::Batch;

pub const CODEC_NONE: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;

/// Largest decompressed payload a receiver accepts (a batch is cut well below).
pub const RAW_BYTES_MAX: usize = 64 << 20;

const KIND_WRITE: u8 = 1;
const KIND_TRIM: u8 = 2;
const KIND_FLUSH: u8 = 3;
const KIND_BOOKMARK: u8 = 4;
const KIND_POINT: u8 = 6;
const KIND_RESYNC_START: u8 = 7;
const KIND_RESYNC_DONE: u8 = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("unknown codec {0}")]
    Codec(u8),
    #[error("payload declares {0} bytes decompressed, more than the limit")]
    TooLarge(u32),
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("decompressed to {found} bytes, header says {expected}")]
    RawLength { expected: u32, found: usize },
    #[error(
        "CRC32C of the decompressed payload is {computed:#010x}, header says {expected:#010x}"
    )]
    Checksum { expected: u32, computed: u32 },
    #[error("payload ends inside a record ({0})")]
    Truncated(&'static str),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("record sequence {found} outside {first}..={last} or not increasing")]
    Sequence { found: u64, first: u64, last: u64 },
    #[error("{found} records, header says {expected}")]
    Count { expected: u32, found: usize },
    #[error("bookmark name is not UTF-8")]
    Utf8,
    #[error("record of kind {0} cannot be shipped")]
    NotShippable(&'static str),
    #[error("offset {offset} + length {length} overflows")]
    Overflow { offset: u64, length: u64 },
}

/// Bytes `record` takes in the raw payload.
pub fn encoded_bytes(record: &StagedRecord) -> usize {
    1 + 8
        + match &record.body {
            RecordBody::Write { data, .. } => 4 + 8 + 4 + data.len(),
            RecordBody::Trim { .. } => 4 + 8 + 8,
            RecordBody::Flush { .. } => 4,
            RecordBody::Bookmark { name, .. } => 8 + 2 + name.len(),
            RecordBody::Point { .. } => 8,
            RecordBody::Resync { .. } => 4 + 8,
            RecordBody::Blob { .. } => 0,
        }
}

/// Appends the raw encoding of `records`.
pub fn encode_records(records: &[StagedRecord], out: &mut Vec<u8>) -> Result<(), PayloadError> {
    for record in records {
        let put_u32 = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
        let put_u64 = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
        match &record.body {
            RecordBody::Write { disk, offset, data } => {
                out.push(KIND_WRITE);
                put_u64(out, record.sequence);
                put_u32(out, *disk);
                put_u64(out, *offset);
                put_u32(
                    out,
                    u32::try_from(data.len()).map_err(|_| PayloadError::TooLarge(u32::MAX))?,
                );
                out.extend_from_slice(data);
            }
            RecordBody::Trim {
                disk,
                offset,
                length,
            } => {
                out.push(KIND_TRIM);
                put_u64(out, record.sequence);
                put_u32(out, *disk);
                put_u64(out, *offset);
                put_u64(out, *length);
            }
            RecordBody::Flush { disk } => {
                out.push(KIND_FLUSH);
                put_u64(out, record.sequence);
                put_u32(out, *disk);
            }
            RecordBody::Bookmark { name, unix_ms } => {
                out.push(KIND_BOOKMARK);
                put_u64(out, record.sequence);
                put_u64(out, *unix_ms);
                let length = u16::try_from(name.len()).map_err(|_| PayloadError::Utf8)?;
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
            RecordBody::Point { unix_ms } => {
                out.push(KIND_POINT);
                put_u64(out, record.sequence);
                put_u64(out, *unix_ms);
            }
            RecordBody::Resync {
                unix_ms,
                done,
                owner,
            } => {
                out.push(if *done {
                    KIND_RESYNC_DONE
                } else {
                    KIND_RESYNC_START
                });
                put_u64(out, record.sequence);
                put_u32(out, *owner);
                put_u64(out, *unix_ms);
            }
            RecordBody::Blob { .. } => return Err(PayloadError::NotShippable("blob")),
        }
    }
    Ok(())
}

impl From<Truncated> for PayloadError {
    fn from(short: Truncated) -> PayloadError {
        PayloadError::Truncated(short.field)
    }
}

/// Decodes a raw payload; sequences must increase and lie in `first..=last`.
/// The records' data are slices of `raw`, not copies.
pub fn decode_records(
    raw: &Bytes,
    first: u64,
    last: u64,
    count: u32,
) -> Result<Vec<StagedRecord>, PayloadError> {
    let mut cursor = LeReader::new(raw);
    let at = |cursor: &LeReader| raw.len() - cursor.remaining();
    // Each record takes at least 13 bytes: a forged count allocates nothing.
    let mut records = Vec::with_capacity((count as usize).min(raw.len() / 13));
    let mut previous: Option<u64> = None;
    while cursor.remaining() > 0 {
        let kind = cursor.u8("kind")?;
        let sequence = cursor.u64("sequence")?;
        let in_order = previous.is_none_or(|p| sequence > p);
        if !in_order || sequence < first || sequence > last {
            return Err(PayloadError::Sequence {
                found: sequence,
                first,
                last,
            });
        }
        previous = Some(sequence);
        let body = match kind {
            KIND_WRITE => {
                let disk = cursor.u32("write.disk")?;
                let offset = cursor.u64("write.offset")?;
                let length = cursor.u32("write.length")?;
                if offset.checked_add(u64::from(length)).is_none() {
                    return Err(PayloadError::Overflow {
                        offset,
                        length: u64::from(length),
                    });
                }
                let start = at(&cursor);
                cursor.bytes("write.data", length as usize)?;
                let data = raw.slice(start..at(&cursor));
                RecordBody::Write { disk, offset, data }
            }
            KIND_TRIM => {
                let disk = cursor.u32("trim.disk")?;
                let offset = cursor.u64("trim.offset")?;
                let length = cursor.u64("trim.length")?;
                if offset.checked_add(length).is_none() {
                    return Err(PayloadError::Overflow { offset, length });
                }
                RecordBody::Trim {
                    disk,
                    offset,
                    length,
                }
            }
            KIND_FLUSH => RecordBody::Flush {
                disk: cursor.u32("flush.disk")?,
            },
            KIND_BOOKMARK => {
                let unix_ms = cursor.u64("bookmark.unix_ms")?;
                let length = cursor.u16("bookmark.length")?;
                let name = cursor.bytes("bookmark.name", usize::from(length))?;
                let name = String::from_utf8(name.to_vec()).map_err(|_| PayloadError::Utf8)?;
                RecordBody::Bookmark { name, unix_ms }
            }
            KIND_POINT => RecordBody::Point {
                unix_ms: cursor.u64("point.unix_ms")?,
            },
            KIND_RESYNC_START | KIND_RESYNC_DONE => {
                let owner = cursor.u32("resync.owner")?;
                RecordBody::Resync {
                    unix_ms: cursor.u64("resync.unix_ms")?,
                    done: kind == KIND_RESYNC_DONE,
                    owner,
                }
            }
            other => return Err(PayloadError::Kind(other)),
        };
        records.push(StagedRecord { sequence, body });
    }
    if records.len() != count as usize {
        return Err(PayloadError::Count {
            expected: count,
            found: records.len(),
        });
    }
    Ok(records)
}

/// Builds the BATCH of `records` (non-empty, increasing sequences) of `group`,
/// compressed with zstd at `level` (0 = stored uncompressed).
pub fn build_batch(
    group: u32,
    records: &[StagedRecord],
    level: i32,
) -> Result<Batch, PayloadError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(PayloadError::Count {
            expected: 1,
            found: 0,
        });
    };
    let mut raw = Vec::with_capacity(records.iter().map(encoded_bytes).sum());
    encode_records(records, &mut raw)?;
    let raw_bytes = u32::try_from(raw.len()).map_err(|_| PayloadError::TooLarge(u32::MAX))?;
    let raw_crc32c = crc32c::crc32c(&raw);
    let (codec, payload) = if level == 0 {
        (CODEC_NONE, raw)
    } else {
        let compressed = zstd::bulk::compress(&raw, level)
            .map_err(|error| PayloadError::Decompress(error.to_string()))?;
        if compressed.len() < raw.len() {
            (CODEC_ZSTD, compressed)
        } else {
            (CODEC_NONE, raw)
        }
    };
    Ok(Batch {
        group,
        sequence_first: first.sequence,
        sequence_last: last.sequence,
        records: records.len() as u32,
        codec,
        raw_bytes,
        raw_crc32c,
        payload,
    })
}

/// Decompresses, checks and decodes a BATCH.
pub fn open_batch(batch: &Batch) -> Result<Vec<StagedRecord>, PayloadError> {
    if batch.raw_bytes as usize > RAW_BYTES_MAX {
        return Err(PayloadError::TooLarge(batch.raw_bytes));
    }
    let bytes = match batch.codec {
        CODEC_NONE => Bytes::copy_from_slice(&batch.payload),
        CODEC_ZSTD => zstd::bulk::decompress(&batch.payload, batch.raw_bytes as usize)
            .map_err(|error| PayloadError::Decompress(error.to_string()))?
            .into(),
        other => return Err(PayloadError::Codec(other)),
    };
    if bytes.len() != batch.raw_bytes as usize {
        return Err(PayloadError::RawLength {
            expected: batch.raw_bytes,
            found: bytes.len(),
        });
    }
    let computed = crc32c::crc32c(&bytes);
    if computed != batch.raw_crc32c {
        return Err(PayloadError::Checksum {
            expected: batch.raw_crc32c,
            computed,
        });
    }
    decode_records(
        &bytes,
        batch.sequence_first,
        batch.sequence_last,
        batch.records,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<StagedRecord> {
        let body = |sequence, body| StagedRecord { sequence, body };
        vec![
            body(
                5,
                RecordBody::Write {
                    disk: 1,
                    offset: 4096,
                    data: vec![7; 8192].into(),
                },
            ),
            body(
                6,
                RecordBody::Trim {
                    disk: 2,
                    offset: 0,
                    length: 1 << 20,
                },
            ),
            body(8, RecordBody::Flush { disk: 1 }),
            body(
                9,
                RecordBody::Bookmark {
                    name: "before-upgrade".into(),
                    unix_ms: 1_790_000_000_000,
                },
            ),
            body(
                10,
                RecordBody::Point {
                    unix_ms: 1_790_000_000_500,
                },
            ),
        ]
    }

    #[test]
    fn batches_round_trip_compressed_or_not() {
        for level in [0, 1, 3, -5] {
            let batch = build_batch(4, &sample(), level).unwrap();
            assert_eq!((batch.sequence_first, batch.sequence_last), (5, 10));
            assert_eq!(
                batch.codec,
                if level == 0 { CODEC_NONE } else { CODEC_ZSTD }
            );
            assert_eq!(open_batch(&batch).unwrap(), sample());
        }
    }

    #[test]
    fn damage_is_reported_not_decoded() {
        let good = build_batch(4, &sample(), 0).unwrap();
        let mut flipped = good.clone();
        flipped.payload[20] ^= 1;
        assert!(matches!(
            open_batch(&flipped),
            Err(PayloadError::Checksum { .. })
        ));
        let mut short = good.clone();
        short.raw_bytes -= 1;
        assert!(open_batch(&short).is_err());
        let mut codec = good.clone();
        codec.codec = 9;
        assert_eq!(open_batch(&codec), Err(PayloadError::Codec(9)));
        let mut range = good.clone();
        range.sequence_last = 9;
        assert!(matches!(
            open_batch(&range),
            Err(PayloadError::Sequence { .. })
        ));
        let mut count = good;
        count.records = 4;
        assert!(matches!(
            open_batch(&count),
            Err(PayloadError::Count { .. })
        ));
        let zstd = build_batch(4, &sample(), 1).unwrap();
        let mut broken = zstd.clone();
        let middle = broken.payload.len() / 2;
        broken.payload[middle] ^= 0xff;
        assert!(open_batch(&broken).is_err());
    }

    #[test]
    fn any_bytes_decode_or_fail_without_panic() {
        let mut raw = Vec::new();
        encode_records(&sample(), &mut raw).unwrap();
        for cut in 0..raw.len() {
            let _ = decode_records(&Bytes::copy_from_slice(&raw[..cut]), 0, u64::MAX, 5);
        }
        for at in 0..raw.len().min(200) {
            let mut bytes = raw.clone();
            bytes[at] ^= 0x55;
            let _ = decode_records(&bytes.into(), 0, u64::MAX, 5);
        }
    }
}
