//! Frame bodies: size, encoding and decoding of each frame kind.
//!
//! Encoding checks the same limits and invariants as decoding, so whatever
//! encodes also decodes, to an equal frame.

use super::cursor::Reader;
use super::error::{DecodeError, EncodeError};
use super::frame::{
    Ack, Attach, Batch, Bookmark, ErrorCode, ErrorFrame, Flush, Frame, FrameKind, GroupDisk,
    GroupInfo, Heartbeat, Hello, Role, Trim, WriteBatch, WriteRecord,
};
use super::reprotect;
use super::resync;
use super::{
    ATTACH_NAME_BYTES_MAX, BATCH_FIXED_BYTES, BOOKMARK_NAME_BYTES_MAX, ERROR_MESSAGE_BYTES_MAX,
    GROUP_DISKS_MAX, GROUP_NAME_BYTES_MAX, HELLO_NAME_BYTES_MAX, HELLO_SOFTWARE_BYTES_MAX,
    WRITE_RECORD_HEADER_BYTES,
};

const HELLO_FIXED_BYTES: usize = 2 + 2 + 1 + 16;
const STRING_LENGTH_BYTES: usize = 2;

/// Encoded body size; saturates rather than overflows.
pub(crate) fn body_bytes(frame: &Frame) -> usize {
    let string = |text: &str| STRING_LENGTH_BYTES.saturating_add(text.len());
    match frame {
        Frame::Hello(hello) => HELLO_FIXED_BYTES
            .saturating_add(string(&hello.name))
            .saturating_add(string(&hello.software)),
        Frame::Write(batch) => batch.writes.iter().fold(4, |total: usize, record| {
            total
                .saturating_add(WRITE_RECORD_HEADER_BYTES)
                .saturating_add(record.data.len())
        }),
        Frame::Flush(_) => 4 + 8,
        Frame::Trim(_) => 4 + 8 + 8 + 8,
        Frame::Bookmark(bookmark) => (4 + 8usize).saturating_add(string(&bookmark.name)),
        Frame::Ack(_) => 4 + 8,
        Frame::Heartbeat(_) => 8 + 8,
        Frame::Error(error) => 2usize.saturating_add(string(&error.message)),
        Frame::Attach(attach) => (4 + 8usize).saturating_add(string(&attach.name)),
        Frame::Group(group) => group.disks.iter().fold(
            (4 + 2usize).saturating_add(string(&group.name)),
            |total, disk| total.saturating_add(12).saturating_add(string(&disk.name)),
        ),
        Frame::Batch(batch) => BATCH_FIXED_BYTES.saturating_add(batch.payload.len()),
        Frame::SumRequest(request) => resync::sum_request_bytes(request),
        Frame::Sums(sums) => resync::sums_bytes(sums),
        Frame::Resync(ranges) => resync::resync_bytes(ranges),
        Frame::ResyncMark(_) => 4 + 8 + 1,
        Frame::Reprotect(reprotect) => reprotect::reprotect_bytes(reprotect),
        Frame::Reprotected(reprotected) => reprotect::reprotected_bytes(reprotected),
        Frame::Failback(failback) => reprotect::failback_bytes(failback),
        Frame::FailedBack(answer) => reprotect::failed_back_bytes(answer),
    }
}

/// Appends the body of `frame`. On error, `out` may hold part of the body:
/// the caller truncates.
pub(crate) fn write_body(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match frame {
        Frame::Hello(hello) => put_hello(hello, out)?,
        Frame::Write(batch) => put_write_batch(batch, out)?,
        Frame::Flush(flush) => {
            out.extend_from_slice(&flush.disk.to_le_bytes());
            out.extend_from_slice(&flush.sequence.to_le_bytes());
        }
        Frame::Trim(trim) => {
            check_range_encode(trim.offset, trim.length)?;
            out.extend_from_slice(&trim.disk.to_le_bytes());
            out.extend_from_slice(&trim.sequence.to_le_bytes());
            out.extend_from_slice(&trim.offset.to_le_bytes());
            out.extend_from_slice(&trim.length.to_le_bytes());
        }
        Frame::Bookmark(bookmark) => {
            out.extend_from_slice(&bookmark.group.to_le_bytes());
            out.extend_from_slice(&bookmark.sequence.to_le_bytes());
            put_string(
                out,
                "bookmark.name",
                &bookmark.name,
                BOOKMARK_NAME_BYTES_MAX,
            )?;
        }
        Frame::Ack(ack) => {
            out.extend_from_slice(&ack.group.to_le_bytes());
            out.extend_from_slice(&ack.sequence_durable.to_le_bytes());
        }
        Frame::Heartbeat(heartbeat) => {
            out.extend_from_slice(&heartbeat.sent_unix_ns.to_le_bytes());
            out.extend_from_slice(&heartbeat.echo_unix_ns.to_le_bytes());
        }
        Frame::Error(error) => {
            if !error.code.is_canonical() {
                let code = error.code.code();
                return Err(EncodeError::ErrorCodeNotCanonical { code });
            }
            out.extend_from_slice(&error.code.code().to_le_bytes());
            put_string(
                out,
                "error.message",
                &error.message,
                ERROR_MESSAGE_BYTES_MAX,
            )?;
        }
        Frame::Attach(attach) => {
            if attach.name.is_empty() {
                return Err(EncodeError::EmptyName {
                    field: "attach.name",
                });
            }
            out.extend_from_slice(&attach.disk.to_le_bytes());
            out.extend_from_slice(&attach.size_bytes.to_le_bytes());
            put_string(out, "attach.name", &attach.name, ATTACH_NAME_BYTES_MAX)?;
        }
        Frame::Group(group) => put_group(group, out)?,
        Frame::Batch(batch) => {
            if batch.records == 0 {
                return Err(EncodeError::EmptyWriteBatch);
            }
            if batch.sequence_first > batch.sequence_last {
                return Err(EncodeError::SequenceNotIncreasing {
                    previous: batch.sequence_first,
                    found: batch.sequence_last,
                });
            }
            out.extend_from_slice(&batch.group.to_le_bytes());
            out.extend_from_slice(&batch.sequence_first.to_le_bytes());
            out.extend_from_slice(&batch.sequence_last.to_le_bytes());
            out.extend_from_slice(&batch.records.to_le_bytes());
            out.push(batch.codec);
            out.extend_from_slice(&batch.raw_bytes.to_le_bytes());
            out.extend_from_slice(&batch.raw_crc32c.to_le_bytes());
            out.extend_from_slice(&batch.payload);
        }
        Frame::SumRequest(request) => resync::put_sum_request(request, out)?,
        Frame::Sums(sums) => resync::put_sums(sums, out)?,
        Frame::Resync(ranges) => resync::put_resync(ranges, out)?,
        Frame::ResyncMark(mark) => resync::put_resync_mark(mark, out),
        Frame::Reprotect(reprotect) => reprotect::put_reprotect(reprotect, out)?,
        Frame::Reprotected(reprotected) => reprotect::put_reprotected(reprotected, out)?,
        Frame::Failback(failback) => reprotect::put_failback(failback, out)?,
        Frame::FailedBack(answer) => reprotect::put_failed_back(answer, out)?,
    }
    Ok(())
}

fn put_group(group: &GroupInfo, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if group.name.is_empty() {
        return Err(EncodeError::EmptyName {
            field: "group.name",
        });
    }
    if group.disks.len() > GROUP_DISKS_MAX {
        return Err(EncodeError::BodyTooLarge {
            length: group.disks.len(),
            max: GROUP_DISKS_MAX as u32,
        });
    }
    out.extend_from_slice(&group.group.to_le_bytes());
    put_string(out, "group.name", &group.name, GROUP_NAME_BYTES_MAX)?;
    out.extend_from_slice(&(group.disks.len() as u16).to_le_bytes());
    for disk in &group.disks {
        if disk.name.is_empty() {
            return Err(EncodeError::EmptyName {
                field: "group.disk.name",
            });
        }
        out.extend_from_slice(&disk.disk.to_le_bytes());
        out.extend_from_slice(&disk.size_bytes.to_le_bytes());
        put_string(out, "group.disk.name", &disk.name, ATTACH_NAME_BYTES_MAX)?;
    }
    Ok(())
}

fn put_hello(hello: &Hello, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if hello.version_min > hello.version_max {
        return Err(EncodeError::VersionRange {
            min: hello.version_min,
            max: hello.version_max,
        });
    }
    out.extend_from_slice(&hello.version_min.to_le_bytes());
    out.extend_from_slice(&hello.version_max.to_le_bytes());
    out.push(hello.role.code());
    out.extend_from_slice(&hello.appliance_id);
    put_string(out, "hello.name", &hello.name, HELLO_NAME_BYTES_MAX)?;
    put_string(
        out,
        "hello.software",
        &hello.software,
        HELLO_SOFTWARE_BYTES_MAX,
    )
}

fn put_write_batch(batch: &WriteBatch, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let too_large = |length: usize| EncodeError::BodyTooLarge {
        length,
        max: super::BODY_BYTES_LIMIT,
    };
    if batch.writes.is_empty() {
        return Err(EncodeError::EmptyWriteBatch);
    }
    let count = u32::try_from(batch.writes.len()).map_err(|_| too_large(usize::MAX))?;
    out.extend_from_slice(&count.to_le_bytes());
    let mut previous: Option<u64> = None;
    for record in &batch.writes {
        if let Some(previous) = previous.filter(|previous| record.sequence <= *previous) {
            let found = record.sequence;
            return Err(EncodeError::SequenceNotIncreasing { previous, found });
        }
        let length = u32::try_from(record.data.len()).map_err(|_| too_large(record.data.len()))?;
        check_range_encode(record.offset, u64::from(length))?;
        out.extend_from_slice(&record.disk.to_le_bytes());
        out.extend_from_slice(&record.sequence.to_le_bytes());
        out.extend_from_slice(&record.offset.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&record.data);
        previous = Some(record.sequence);
    }
    Ok(())
}

pub(super) fn put_string(
    out: &mut Vec<u8>,
    field: &'static str,
    text: &str,
    max: usize,
) -> Result<(), EncodeError> {
    let length = text.len();
    let too_long = EncodeError::StringTooLong { field, length, max };
    if length > max {
        return Err(too_long);
    }
    let length = u16::try_from(length).map_err(|_| too_long)?;
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn check_range_encode(offset: u64, length: u64) -> Result<(), EncodeError> {
    match offset.checked_add(length) {
        Some(_) => Ok(()),
        None => Err(EncodeError::OffsetOverflow { offset, length }),
    }
}

/// Decodes a whole body of `kind`; every byte must be used. WRITE data
/// are copied out of `body`, or sliced from `shared` (the same bytes) when
/// it is given.
pub(crate) fn read_body(
    kind: FrameKind,
    body: &[u8],
    shared: Option<&bytes::Bytes>,
) -> Result<Frame, DecodeError> {
    let mut reader = shared.map_or_else(|| Reader::new(body), Reader::over_shared);
    let frame = match kind {
        FrameKind::Hello => Frame::Hello(read_hello(&mut reader)?),
        FrameKind::Write => Frame::Write(read_write_batch(&mut reader)?),
        FrameKind::Flush => Frame::Flush(Flush {
            disk: reader.u32("flush.disk")?,
            sequence: reader.u64("flush.sequence")?,
        }),
        FrameKind::Trim => Frame::Trim(read_trim(&mut reader)?),
        FrameKind::Bookmark => Frame::Bookmark(Bookmark {
            group: reader.u32("bookmark.group")?,
            sequence: reader.u64("bookmark.sequence")?,
            name: reader.string("bookmark.name", BOOKMARK_NAME_BYTES_MAX)?,
        }),
        FrameKind::Ack => Frame::Ack(Ack {
            group: reader.u32("ack.group")?,
            sequence_durable: reader.u64("ack.sequence_durable")?,
        }),
        FrameKind::Heartbeat => Frame::Heartbeat(Heartbeat {
            sent_unix_ns: reader.u64("heartbeat.sent_unix_ns")?,
            echo_unix_ns: reader.u64("heartbeat.echo_unix_ns")?,
        }),
        FrameKind::Error => Frame::Error(ErrorFrame {
            code: ErrorCode::from_code(reader.u16("error.code")?),
            message: reader.string("error.message", ERROR_MESSAGE_BYTES_MAX)?,
        }),
        FrameKind::Attach => Frame::Attach(read_attach(&mut reader)?),
        FrameKind::Group => Frame::Group(read_group(&mut reader)?),
        FrameKind::Batch => Frame::Batch(read_batch(&mut reader)?),
        FrameKind::SumRequest => Frame::SumRequest(resync::read_sum_request(&mut reader)?),
        FrameKind::Sums => Frame::Sums(resync::read_sums(&mut reader)?),
        FrameKind::Resync => Frame::Resync(resync::read_resync(&mut reader)?),
        FrameKind::ResyncMark => Frame::ResyncMark(resync::read_resync_mark(&mut reader)?),
        FrameKind::Reprotect => Frame::Reprotect(reprotect::read_reprotect(&mut reader)?),
        FrameKind::Reprotected => Frame::Reprotected(reprotect::read_reprotected(&mut reader)?),
        FrameKind::Failback => Frame::Failback(reprotect::read_failback(&mut reader)?),
        FrameKind::FailedBack => Frame::FailedBack(reprotect::read_failed_back(&mut reader)?),
    };
    reader.finish()?;
    Ok(frame)
}

fn read_attach(reader: &mut Reader<'_>) -> Result<Attach, DecodeError> {
    let attach = Attach {
        disk: reader.u32("attach.disk")?,
        size_bytes: reader.u64("attach.size_bytes")?,
        name: reader.string("attach.name", ATTACH_NAME_BYTES_MAX)?,
    };
    if attach.name.is_empty() {
        return Err(DecodeError::EmptyName {
            field: "attach.name",
        });
    }
    Ok(attach)
}

fn read_group(reader: &mut Reader<'_>) -> Result<GroupInfo, DecodeError> {
    let group = reader.u32("group.group")?;
    let name = reader.string("group.name", GROUP_NAME_BYTES_MAX)?;
    if name.is_empty() {
        return Err(DecodeError::EmptyName {
            field: "group.name",
        });
    }
    let count = usize::from(reader.u16("group.disks")?);
    if count > GROUP_DISKS_MAX || count > reader.remaining() / 14 {
        return Err(DecodeError::RecordCountTooLarge {
            count: count as u32,
            max: GROUP_DISKS_MAX.min(reader.remaining() / 14),
        });
    }
    let mut disks = Vec::with_capacity(count);
    for _ in 0..count {
        let disk = GroupDisk {
            disk: reader.u32("group.disk.disk")?,
            size_bytes: reader.u64("group.disk.size_bytes")?,
            name: reader.string("group.disk.name", ATTACH_NAME_BYTES_MAX)?,
        };
        if disk.name.is_empty() {
            return Err(DecodeError::EmptyName {
                field: "group.disk.name",
            });
        }
        disks.push(disk);
    }
    Ok(GroupInfo { group, name, disks })
}

fn read_batch(reader: &mut Reader<'_>) -> Result<Batch, DecodeError> {
    let group = reader.u32("batch.group")?;
    let sequence_first = reader.u64("batch.sequence_first")?;
    let sequence_last = reader.u64("batch.sequence_last")?;
    let records = reader.u32("batch.records")?;
    if records == 0 {
        return Err(DecodeError::EmptyWriteBatch);
    }
    if sequence_last < sequence_first {
        return Err(DecodeError::SequenceNotIncreasing {
            previous: sequence_first,
            found: sequence_last,
        });
    }
    let codec = reader.u8("batch.codec")?;
    let raw_bytes = reader.u32("batch.raw_bytes")?;
    let raw_crc32c = reader.u32("batch.raw_crc32c")?;
    let payload = reader.bytes("batch.payload", reader.remaining())?.to_vec();
    Ok(Batch {
        group,
        sequence_first,
        sequence_last,
        records,
        codec,
        raw_bytes,
        raw_crc32c,
        payload,
    })
}

fn read_hello(reader: &mut Reader<'_>) -> Result<Hello, DecodeError> {
    let version_min = reader.u16("hello.version_min")?;
    let version_max = reader.u16("hello.version_max")?;
    if version_min > version_max {
        return Err(DecodeError::VersionRange {
            min: version_min,
            max: version_max,
        });
    }
    let role_code = reader.u8("hello.role")?;
    let role = Role::from_code(role_code).ok_or(DecodeError::UnknownRole { code: role_code })?;
    Ok(Hello {
        version_min,
        version_max,
        role,
        appliance_id: reader.array("hello.appliance_id")?,
        name: reader.string("hello.name", HELLO_NAME_BYTES_MAX)?,
        software: reader.string("hello.software", HELLO_SOFTWARE_BYTES_MAX)?,
    })
}

fn read_trim(reader: &mut Reader<'_>) -> Result<Trim, DecodeError> {
    let trim = Trim {
        disk: reader.u32("trim.disk")?,
        sequence: reader.u64("trim.sequence")?,
        offset: reader.u64("trim.offset")?,
        length: reader.u64("trim.length")?,
    };
    check_range_decode(trim.offset, trim.length)?;
    Ok(trim)
}

/// The record count is checked against the room left in the body before
/// anything is allocated, so a forged count costs nothing.
fn read_write_batch(reader: &mut Reader<'_>) -> Result<WriteBatch, DecodeError> {
    let count = reader.u32("write.count")?;
    if count == 0 {
        return Err(DecodeError::EmptyWriteBatch);
    }
    let count_max = reader.remaining() / WRITE_RECORD_HEADER_BYTES;
    let count_usize = usize::try_from(count)
        .ok()
        .filter(|count| *count <= count_max)
        .ok_or(DecodeError::RecordCountTooLarge {
            count,
            max: count_max,
        })?;
    let mut writes: Vec<WriteRecord> = Vec::with_capacity(count_usize);
    let mut previous: Option<u64> = None;
    for _ in 0..count_usize {
        let record = read_write_record(reader)?;
        if let Some(previous) = previous.filter(|previous| record.sequence <= *previous) {
            let found = record.sequence;
            return Err(DecodeError::SequenceNotIncreasing { previous, found });
        }
        previous = Some(record.sequence);
        writes.push(record);
    }
    Ok(WriteBatch { writes })
}

fn read_write_record(reader: &mut Reader<'_>) -> Result<WriteRecord, DecodeError> {
    let disk = reader.u32("write.disk")?;
    let sequence = reader.u64("write.sequence")?;
    let offset = reader.u64("write.offset")?;
    let length = reader.u32("write.length")?;
    check_range_decode(offset, u64::from(length))?;
    // Lossless: usize has at least 32 bits (asserted in mod.rs).
    let data = reader.shared_bytes("write.data", length as usize)?;
    Ok(WriteRecord {
        disk,
        sequence,
        offset,
        data,
    })
}

fn check_range_decode(offset: u64, length: u64) -> Result<(), DecodeError> {
    match offset.checked_add(length) {
        Some(_) => Ok(()),
        None => Err(DecodeError::OffsetOverflow { offset, length }),
    }
}
