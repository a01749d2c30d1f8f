//! The resync frames (docs/wire-protocol.md, "SUM_REQUEST", "SUMS",
//! "RESYNC"): block checksums asked for and answered, and the regions a tap
//! is asked to send again from its primary disk.

use super::cursor::Reader;
use super::error::{DecodeError, EncodeError};
use super::ERROR_MESSAGE_BYTES_MAX;

/// Bytes of one block checksum (XXH3-128, little-endian).
pub const SUM_BYTES: usize = 16;
/// Most blocks one SUM_REQUEST asks for (the answer stays under 33 KiB,
/// below the smallest frame limit a peer may configure).
pub const SUM_BLOCKS_MAX: u32 = 2048;
/// Smallest and largest checksum block.
pub const SUM_BLOCK_BYTES_MIN: u32 = 512;
pub const SUM_BLOCK_BYTES_MAX: u32 = 64 << 20;
/// Most ranges in one RESYNC.
pub const RESYNC_RANGES_MAX: usize = 4096;

/// Asks for the checksum of every `block_bytes` block of the listed spans
/// of one disk, each seeded with `seed` (chosen at random per resync, so no
/// data can be crafted to collide). `group` is the source's group number on
/// an appliance link and 0 on a tap link; `disk` is the group's disk number,
/// or the tap's ATTACH number on a tap link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumRequest {
    pub request: u64,
    pub group: u32,
    pub disk: u32,
    /// The disk's size as the asker knows it: an answerer whose disk has
    /// another size refuses (a resize not seen on both sides yet).
    pub disk_bytes: u64,
    pub block_bytes: u32,
    pub seed: u64,
    pub spans: Vec<SumSpan>,
}

/// `blocks` blocks from `offset` (a multiple of the block size). A block
/// that runs past the end of the disk is summed over the bytes it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SumSpan {
    pub offset: u64,
    pub blocks: u32,
}

impl SumRequest {
    pub fn blocks(&self) -> u64 {
        self.spans.iter().map(|span| u64::from(span.blocks)).sum()
    }
}

/// The answer to SUM_REQUEST `request`: one checksum per block asked for,
/// in order, or an error (then no sums) saying why it cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sums {
    pub request: u64,
    pub error: String,
    pub sums: Vec<u128>,
}

/// Source gateway → tap: read these ranges of the disk from the primary and
/// forward them like writes, then send BOOKMARK `request` (a barrier) in
/// the stream after them. Ranges are sorted and do not overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    pub request: u64,
    pub disk: u32,
    pub ranges: Vec<ResyncRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncRange {
    pub offset: u64,
    pub length: u32,
}

/// Tap → source gateway, in its stream: the tap starts (`done` false) or
/// ends sending a disk's lost grains again from its primary. Staged as a
/// resync marker of the disk: the points between are not crash-consistent.
/// Carries a tap sequence like FLUSH (acknowledged with the records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncMark {
    pub disk: u32,
    pub sequence: u64,
    pub done: bool,
}

type Problem = (&'static str, &'static str);

fn check_sum_request(request: &SumRequest) -> Result<(), Problem> {
    let block = request.block_bytes;
    if !block.is_power_of_two() || !(SUM_BLOCK_BYTES_MIN..=SUM_BLOCK_BYTES_MAX).contains(&block) {
        return Err((
            "sum_request.block_bytes",
            "not a power of two from 512 B to 64 MiB",
        ));
    }
    if request.spans.is_empty() {
        return Err(("sum_request.spans", "no spans"));
    }
    let mut total = 0u64;
    let mut end_previous = 0u64;
    for span in &request.spans {
        if span.blocks == 0 {
            return Err(("sum_request.span.blocks", "zero blocks"));
        }
        if span.offset % u64::from(block) != 0 {
            return Err(("sum_request.span.offset", "not a multiple of block_bytes"));
        }
        let end = u64::from(span.blocks)
            .checked_mul(u64::from(block))
            .and_then(|bytes| span.offset.checked_add(bytes))
            .ok_or(("sum_request.span", "offset + length overflows u64"))?;
        if span.offset < end_previous {
            return Err(("sum_request.span.offset", "spans overlap or are not sorted"));
        }
        end_previous = end;
        total += u64::from(span.blocks);
    }
    if total > u64::from(SUM_BLOCKS_MAX) {
        return Err(("sum_request.spans", "more than 2048 blocks"));
    }
    Ok(())
}

fn check_sums(sums: &Sums) -> Result<(), Problem> {
    if sums.sums.len() > SUM_BLOCKS_MAX as usize {
        return Err(("sums.count", "more than 2048 sums"));
    }
    if !sums.error.is_empty() && !sums.sums.is_empty() {
        return Err(("sums.count", "sums with an error"));
    }
    Ok(())
}

fn check_resync(resync: &Resync) -> Result<(), Problem> {
    if resync.ranges.is_empty() || resync.ranges.len() > RESYNC_RANGES_MAX {
        return Err(("resync.count", "not 1 to 4096 ranges"));
    }
    let mut end_previous = 0u64;
    for range in &resync.ranges {
        if range.length == 0 {
            return Err(("resync.range.length", "zero"));
        }
        if range.offset < end_previous {
            return Err(("resync.range.offset", "ranges overlap or are not sorted"));
        }
        end_previous = range
            .offset
            .checked_add(u64::from(range.length))
            .ok_or(("resync.range", "offset + length overflows u64"))?;
    }
    Ok(())
}

fn encode_problem((field, reason): Problem) -> EncodeError {
    EncodeError::Invalid { field, reason }
}

fn decode_problem((field, reason): Problem) -> DecodeError {
    DecodeError::Invalid { field, reason }
}

pub(crate) fn sum_request_bytes(request: &SumRequest) -> usize {
    40usize.saturating_add(request.spans.len().saturating_mul(12))
}

pub(crate) fn sums_bytes(sums: &Sums) -> usize {
    (8 + 2 + 4usize)
        .saturating_add(sums.error.len())
        .saturating_add(sums.sums.len().saturating_mul(SUM_BYTES))
}

pub(crate) fn resync_bytes(resync: &Resync) -> usize {
    16usize.saturating_add(resync.ranges.len().saturating_mul(12))
}

pub(crate) fn put_sum_request(request: &SumRequest, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_sum_request(request).map_err(encode_problem)?;
    out.extend_from_slice(&request.request.to_le_bytes());
    out.extend_from_slice(&request.group.to_le_bytes());
    out.extend_from_slice(&request.disk.to_le_bytes());
    out.extend_from_slice(&request.disk_bytes.to_le_bytes());
    out.extend_from_slice(&request.block_bytes.to_le_bytes());
    out.extend_from_slice(&request.seed.to_le_bytes());
    out.extend_from_slice(&(request.spans.len() as u32).to_le_bytes());
    for span in &request.spans {
        out.extend_from_slice(&span.offset.to_le_bytes());
        out.extend_from_slice(&span.blocks.to_le_bytes());
    }
    Ok(())
}

pub(crate) fn put_sums(sums: &Sums, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_sums(sums).map_err(encode_problem)?;
    let length = sums.error.len();
    if length > ERROR_MESSAGE_BYTES_MAX {
        return Err(EncodeError::StringTooLong {
            field: "sums.error",
            length,
            max: ERROR_MESSAGE_BYTES_MAX,
        });
    }
    out.extend_from_slice(&sums.request.to_le_bytes());
    out.extend_from_slice(&(length as u16).to_le_bytes());
    out.extend_from_slice(sums.error.as_bytes());
    out.extend_from_slice(&(sums.sums.len() as u32).to_le_bytes());
    for sum in &sums.sums {
        out.extend_from_slice(&sum.to_le_bytes());
    }
    Ok(())
}

pub(crate) fn put_resync(resync: &Resync, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_resync(resync).map_err(encode_problem)?;
    out.extend_from_slice(&resync.request.to_le_bytes());
    out.extend_from_slice(&resync.disk.to_le_bytes());
    out.extend_from_slice(&(resync.ranges.len() as u32).to_le_bytes());
    for range in &resync.ranges {
        out.extend_from_slice(&range.offset.to_le_bytes());
        out.extend_from_slice(&range.length.to_le_bytes());
    }
    Ok(())
}

/// Checks a declared count against the bytes left before allocating.
fn count(
    reader: &mut Reader<'_>,
    field: &'static str,
    each: usize,
    max: usize,
) -> Result<usize, DecodeError> {
    let count = reader.u32(field)?;
    let room = reader.remaining() / each;
    if count as usize > max.min(room) {
        return Err(DecodeError::RecordCountTooLarge {
            count,
            max: max.min(room),
        });
    }
    Ok(count as usize)
}

pub(crate) fn read_sum_request(reader: &mut Reader<'_>) -> Result<SumRequest, DecodeError> {
    let request = reader.u64("sum_request.request")?;
    let group = reader.u32("sum_request.group")?;
    let disk = reader.u32("sum_request.disk")?;
    let disk_bytes = reader.u64("sum_request.disk_bytes")?;
    let block_bytes = reader.u32("sum_request.block_bytes")?;
    let seed = reader.u64("sum_request.seed")?;
    let spans_count = count(reader, "sum_request.spans", 12, SUM_BLOCKS_MAX as usize)?;
    let mut spans = Vec::with_capacity(spans_count);
    for _ in 0..spans_count {
        spans.push(SumSpan {
            offset: reader.u64("sum_request.span.offset")?,
            blocks: reader.u32("sum_request.span.blocks")?,
        });
    }
    let request = SumRequest {
        request,
        group,
        disk,
        disk_bytes,
        block_bytes,
        seed,
        spans,
    };
    check_sum_request(&request).map_err(decode_problem)?;
    Ok(request)
}

pub(crate) fn read_sums(reader: &mut Reader<'_>) -> Result<Sums, DecodeError> {
    let request = reader.u64("sums.request")?;
    let error = reader.string("sums.error", ERROR_MESSAGE_BYTES_MAX)?;
    let sums_count = count(reader, "sums.count", SUM_BYTES, SUM_BLOCKS_MAX as usize)?;
    let mut sums = Vec::with_capacity(sums_count);
    for _ in 0..sums_count {
        let bytes = reader.array::<SUM_BYTES>("sums.sum")?;
        sums.push(u128::from_le_bytes(bytes));
    }
    let sums = Sums {
        request,
        error,
        sums,
    };
    check_sums(&sums).map_err(decode_problem)?;
    Ok(sums)
}

pub(crate) fn read_resync(reader: &mut Reader<'_>) -> Result<Resync, DecodeError> {
    let request = reader.u64("resync.request")?;
    let disk = reader.u32("resync.disk")?;
    let ranges_count = count(reader, "resync.count", 12, RESYNC_RANGES_MAX)?;
    let mut ranges = Vec::with_capacity(ranges_count);
    for _ in 0..ranges_count {
        ranges.push(ResyncRange {
            offset: reader.u64("resync.range.offset")?,
            length: reader.u32("resync.range.length")?,
        });
    }
    let resync = Resync {
        request,
        disk,
        ranges,
    };
    check_resync(&resync).map_err(decode_problem)?;
    Ok(resync)
}

pub(crate) fn put_resync_mark(mark: &ResyncMark, out: &mut Vec<u8>) {
    out.extend_from_slice(&mark.disk.to_le_bytes());
    out.extend_from_slice(&mark.sequence.to_le_bytes());
    out.push(u8::from(mark.done));
}

pub(crate) fn read_resync_mark(reader: &mut Reader<'_>) -> Result<ResyncMark, DecodeError> {
    let disk = reader.u32("resync_mark.disk")?;
    let sequence = reader.u64("resync_mark.sequence")?;
    let done = match reader.u8("resync_mark.done")? {
        0 => false,
        1 => true,
        _ => {
            return Err(DecodeError::Invalid {
                field: "resync_mark.done",
                reason: "neither 0 nor 1",
            })
        }
    };
    Ok(ResyncMark {
        disk,
        sequence,
        done,
    })
}
