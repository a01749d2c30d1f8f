//! The reprotect frames (docs/wire-protocol.md, "REPROTECT",
//! "REPROTECTED"): the original site asks the site a group was failed over
//! to (and committed at) to replicate it back, giving the ranges it wrote
//! itself that the other site never received; the answer says whether it
//! does and how much it will send.

use super::body::put_string;
use super::cursor::Reader;
use super::error::{DecodeError, EncodeError};
use super::{ATTACH_NAME_BYTES_MAX, ERROR_MESSAGE_BYTES_MAX, GROUP_NAME_BYTES_MAX};

/// Most disks in one REPROTECT (as in GROUP).
pub const REPROTECT_DISKS_MAX: usize = super::GROUP_DISKS_MAX;
/// Most ranges in one REPROTECT, all disks together (16 bytes each: 1 MiB,
/// under the smallest frame limit a peer may configure). A site with more
/// coalesces them to a coarser grain: it only ever sends more, never less.
pub const REPROTECT_RANGES_MAX: usize = 65_536;

/// Original site → failed-over site: become the source of `group` and
/// replicate it back here, sending (besides what changed there since the
/// failover point) the listed ranges of each disk, which this site wrote
/// after the failover point and the other site never acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reprotect {
    pub request: u64,
    pub group: String,
    pub disks: Vec<ReprotectDisk>,
}

/// A disk by name, and its ranges: sorted, not overlapping, not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReprotectDisk {
    pub name: String,
    pub ranges: Vec<(u64, u64)>,
}

/// The answer to REPROTECT `request`: accepted (empty `error`) with the
/// group number the group is now replicated under from the answering site
/// and the bytes the initial delta holds, or refused with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reprotected {
    pub request: u64,
    pub group: u32,
    pub delta_bytes: u64,
    pub error: String,
}

type Problem = (&'static str, &'static str);

fn check_reprotect(reprotect: &Reprotect) -> Result<(), Problem> {
    if reprotect.group.is_empty() {
        return Err(("reprotect.group", "empty"));
    }
    if reprotect.disks.is_empty() || reprotect.disks.len() > REPROTECT_DISKS_MAX {
        return Err(("reprotect.disks", "not 1 to 255 disks"));
    }
    let mut total = 0usize;
    for disk in &reprotect.disks {
        if disk.name.is_empty() {
            return Err(("reprotect.disk.name", "empty"));
        }
        total += disk.ranges.len();
        let mut end_previous = 0u64;
        for &(offset, length) in &disk.ranges {
            if length == 0 {
                return Err(("reprotect.range.length", "zero"));
            }
            if offset < end_previous {
                return Err(("reprotect.range.offset", "ranges overlap or are not sorted"));
            }
            end_previous = offset
                .checked_add(length)
                .ok_or(("reprotect.range", "offset + length overflows u64"))?;
        }
    }
    if total > REPROTECT_RANGES_MAX {
        return Err(("reprotect.ranges", "more than 65536 ranges"));
    }
    Ok(())
}

pub(crate) fn reprotect_bytes(reprotect: &Reprotect) -> usize {
    reprotect.disks.iter().fold(
        (8 + 2 + 2usize).saturating_add(reprotect.group.len()),
        |total, disk| {
            total
                .saturating_add(2 + 4)
                .saturating_add(disk.name.len())
                .saturating_add(disk.ranges.len().saturating_mul(16))
        },
    )
}

pub(crate) fn reprotected_bytes(reprotected: &Reprotected) -> usize {
    (8 + 4 + 8 + 2usize).saturating_add(reprotected.error.len())
}

pub(crate) fn put_reprotect(reprotect: &Reprotect, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_reprotect(reprotect).map_err(|(field, reason)| EncodeError::Invalid { field, reason })?;
    out.extend_from_slice(&reprotect.request.to_le_bytes());
    put_string(
        out,
        "reprotect.group",
        &reprotect.group,
        GROUP_NAME_BYTES_MAX,
    )?;
    out.extend_from_slice(&(reprotect.disks.len() as u16).to_le_bytes());
    for disk in &reprotect.disks {
        put_string(
            out,
            "reprotect.disk.name",
            &disk.name,
            ATTACH_NAME_BYTES_MAX,
        )?;
        out.extend_from_slice(&(disk.ranges.len() as u32).to_le_bytes());
        for &(offset, length) in &disk.ranges {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&length.to_le_bytes());
        }
    }
    Ok(())
}

pub(crate) fn put_reprotected(
    reprotected: &Reprotected,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.extend_from_slice(&reprotected.request.to_le_bytes());
    out.extend_from_slice(&reprotected.group.to_le_bytes());
    out.extend_from_slice(&reprotected.delta_bytes.to_le_bytes());
    put_string(
        out,
        "reprotected.error",
        &reprotected.error,
        ERROR_MESSAGE_BYTES_MAX,
    )
}

pub(crate) fn read_reprotect(reader: &mut Reader<'_>) -> Result<Reprotect, DecodeError> {
    let request = reader.u64("reprotect.request")?;
    let group = reader.string("reprotect.group", GROUP_NAME_BYTES_MAX)?;
    let disks_count = usize::from(reader.u16("reprotect.disks")?);
    // Each disk takes at least 6 bytes (name length and range count).
    if disks_count > REPROTECT_DISKS_MAX.min(reader.remaining() / 6) {
        return Err(DecodeError::RecordCountTooLarge {
            count: disks_count as u32,
            max: REPROTECT_DISKS_MAX.min(reader.remaining() / 6),
        });
    }
    let mut disks = Vec::with_capacity(disks_count);
    for _ in 0..disks_count {
        let name = reader.string("reprotect.disk.name", ATTACH_NAME_BYTES_MAX)?;
        let count = reader.u32("reprotect.disk.ranges")? as usize;
        let room = reader.remaining() / 16;
        if count > REPROTECT_RANGES_MAX.min(room) {
            return Err(DecodeError::RecordCountTooLarge {
                count: count as u32,
                max: REPROTECT_RANGES_MAX.min(room),
            });
        }
        let mut ranges = Vec::with_capacity(count);
        for _ in 0..count {
            let offset = reader.u64("reprotect.range.offset")?;
            let length = reader.u64("reprotect.range.length")?;
            ranges.push((offset, length));
        }
        disks.push(ReprotectDisk { name, ranges });
    }
    let reprotect = Reprotect {
        request,
        group,
        disks,
    };
    check_reprotect(&reprotect)
        .map_err(|(field, reason)| DecodeError::Invalid { field, reason })?;
    Ok(reprotect)
}

pub(crate) fn read_reprotected(reader: &mut Reader<'_>) -> Result<Reprotected, DecodeError> {
    Ok(Reprotected {
        request: reader.u64("reprotected.request")?,
        group: reader.u32("reprotected.group")?,
        delta_bytes: reader.u64("reprotected.delta_bytes")?,
        error: reader.string("reprotected.error", ERROR_MESSAGE_BYTES_MAX)?,
    })
}

/// Original site → failed-over site, during `drgw failback`. Step
/// [`FAILBACK_QUIESCE`]: stop serving the group's disks, finish the delta,
/// and stage a last bookmark (answered with its sequence). Step
/// [`FAILBACK_RETURN`]: stop replicating the group back and take it as its
/// target again (answered with the sequence its replicas hold through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failback {
    pub request: u64,
    pub group: String,
    pub step: u8,
}

pub const FAILBACK_QUIESCE: u8 = 1;
pub const FAILBACK_RETURN: u8 = 2;

/// The answer to FAILBACK `request`: a sequence (see [`Failback`]), or the
/// reason it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedBack {
    pub request: u64,
    pub sequence: u64,
    pub error: String,
}

pub(crate) fn failback_bytes(failback: &Failback) -> usize {
    (8 + 2 + 1usize).saturating_add(failback.group.len())
}

pub(crate) fn failed_back_bytes(answer: &FailedBack) -> usize {
    (8 + 8 + 2usize).saturating_add(answer.error.len())
}

fn check_failback(failback: &Failback) -> Result<(), Problem> {
    if failback.group.is_empty() {
        return Err(("failback.group", "empty"));
    }
    if !matches!(failback.step, FAILBACK_QUIESCE | FAILBACK_RETURN) {
        return Err(("failback.step", "neither 1 (quiesce) nor 2 (return)"));
    }
    Ok(())
}

pub(crate) fn put_failback(failback: &Failback, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_failback(failback).map_err(|(field, reason)| EncodeError::Invalid { field, reason })?;
    out.extend_from_slice(&failback.request.to_le_bytes());
    put_string(out, "failback.group", &failback.group, GROUP_NAME_BYTES_MAX)?;
    out.push(failback.step);
    Ok(())
}

pub(crate) fn put_failed_back(answer: &FailedBack, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.extend_from_slice(&answer.request.to_le_bytes());
    out.extend_from_slice(&answer.sequence.to_le_bytes());
    put_string(
        out,
        "failed_back.error",
        &answer.error,
        ERROR_MESSAGE_BYTES_MAX,
    )
}

pub(crate) fn read_failback(reader: &mut Reader<'_>) -> Result<Failback, DecodeError> {
    let failback = Failback {
        request: reader.u64("failback.request")?,
        group: reader.string("failback.group", GROUP_NAME_BYTES_MAX)?,
        step: reader.u8("failback.step")?,
    };
    check_failback(&failback).map_err(|(field, reason)| DecodeError::Invalid { field, reason })?;
    Ok(failback)
}

pub(crate) fn read_failed_back(reader: &mut Reader<'_>) -> Result<FailedBack, DecodeError> {
    Ok(FailedBack {
        request: reader.u64("failed_back.request")?,
        sequence: reader.u64("failed_back.sequence")?,
        error: reader.string("failed_back.error", ERROR_MESSAGE_BYTES_MAX)?,
    })
}
