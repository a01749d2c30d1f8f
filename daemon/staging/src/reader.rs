//! Reading durable records back in order (for the transceiver).
//!
//! Runs on a blocking thread (`spawn_blocking`): positional reads on a buffered
//! descriptor of each segment. Every record is verified again on the way out:
//! CRC32C, sequence, and the AES-GCM tag when encrypted.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::record::{self, HEADER_BYTES};
use super::{Run, Shared, StagedRecord, StagingError, RECORDS_PER_READ_MAX};

/// Where to read next: a run (or its tail) of one segment.
struct Cursor {
    segment: u64,
    file: Arc<File>,
    run: Run,
}

pub(super) fn read_from(
    shared: &Shared,
    from: u64,
    max_bytes: usize,
) -> Result<Vec<StagedRecord>, StagingError> {
    let mut records = Vec::new();
    let (mut next, mut payload_bytes) = (from, 0usize);
    while let Some(cursor) = locate(shared, next)? {
        let mut offset = cursor.run.offset;
        for sequence in cursor.run.sequence_first..cursor.run.sequence_end {
            let (staged, bytes) =
                read_record(shared, &cursor, offset, sequence).map_err(|error| {
                    released_meanwhile(shared, cursor.segment, sequence).unwrap_or(error)
                })?;
            offset = record::skip_short_gap(offset as usize + bytes) as u64;
            if sequence < next {
                continue;
            }
            payload_bytes += record::body_payload_bytes(&staged.body);
            records.push(staged);
            next = sequence + 1;
            if payload_bytes >= max_bytes || records.len() >= RECORDS_PER_READ_MAX {
                return Ok(records);
            }
        }
        next = next.max(cursor.run.sequence_end);
    }
    Ok(records)
}

/// The run holding `next` (or the first run after a gap), if `next` is durable.
fn locate(shared: &Shared, next: u64) -> Result<Option<Cursor>, StagingError> {
    let state = shared.lock();
    if next > state.sequence_last_durable {
        return Ok(None);
    }
    let first_on_disk = state
        .segments
        .values()
        .next()
        .map_or(next, |s| s.header.sequence_first);
    if next < first_on_disk {
        return Err(StagingError::SequenceReleased {
            sequence: next,
            first_on_disk,
        });
    }
    // Segments are few (capacity / segment size); runs are many: binary search them.
    let holding = state.segments.iter().find(|(_, segment)| {
        segment
            .runs
            .last()
            .is_some_and(|run| run.sequence_end > next)
    });
    Ok(holding.map(|(&number, segment)| {
        let index = segment.runs.partition_point(|run| run.sequence_end <= next);
        Cursor {
            segment: number,
            file: segment.file.clone(),
            run: segment.runs[index],
        }
    }))
}

/// A segment released while it was being read may already hold a newer segment's
/// records (its file is recycled): report the release, not corruption.
pub(super) fn released_meanwhile(
    shared: &Shared,
    segment: u64,
    sequence: u64,
) -> Option<StagingError> {
    let state = shared.lock();
    if state.segments.contains_key(&segment) {
        return None;
    }
    let first_on_disk = state
        .segments
        .values()
        .next()
        .map_or(sequence + 1, |s| s.header.sequence_first);
    Some(StagingError::SequenceReleased {
        sequence,
        first_on_disk,
    })
}

/// Reads and verifies the record at `offset`, which must hold `sequence`.
fn read_record(
    shared: &Shared,
    cursor: &Cursor,
    offset: u64,
    sequence: u64,
) -> Result<(StagedRecord, usize), StagingError> {
    let corrupt = |reason: String| StagingError::CorruptOnRead {
        sequence,
        segment: cursor.segment,
        offset,
        reason,
    };
    let io = |e| {
        StagingError::io(
            super::segment::segment_path(&shared.config.directory, cursor.segment),
            e,
        )
    };
    let mut bytes = vec![0u8; HEADER_BYTES];
    cursor.file.read_exact_at(&mut bytes, offset).map_err(io)?;
    let header =
        record::parse_header(&bytes, cursor.segment).map_err(|e| corrupt(e.to_string()))?;
    let total = header.record_bytes();
    if total
        > shared
            .config
            .record_bytes_max()
            .max(record::record_bytes(0))
            + record::BLOCK_BYTES
    {
        return Err(corrupt(format!(
            "record of {total} bytes exceeds the limit"
        )));
    }
    bytes.resize(total, 0);
    cursor
        .file
        .read_exact_at(&mut bytes[HEADER_BYTES..], offset + HEADER_BYTES as u64)
        .map_err(io)?;
    let header =
        record::decode_header(&bytes, cursor.segment).map_err(|e| corrupt(e.to_string()))?;
    if header.sequence != sequence {
        return Err(corrupt(format!("found sequence {}", header.sequence)));
    }
    let body = record::decode_body(&bytes, &header, shared.sealer.as_ref())
        .map_err(|e| corrupt(e.to_string()))?;
    Ok((StagedRecord { sequence, body }, total))
}

/// The segment and run holding `sequence` (tests locate records on disk with it).
#[cfg(test)]
pub(super) fn locate_for_tests(shared: &Shared, sequence: u64) -> (u64, Run) {
    let cursor = locate(shared, sequence).unwrap().expect("durable sequence");
    (cursor.segment, cursor.run)
}
