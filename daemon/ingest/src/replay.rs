//! `drgw staging replay`: applies a group's staged records, in sequence
//! order, to an image file. For tests and forensics: it shows exactly what
//! the gateway holds for a disk. Run it with the gateway stopped (opening a
//! log cuts a torn tail, as the gateway itself would at start).

use drgw_staging::{CorruptionPolicy, RecordBody, StagingConfig, StagingError, StagingLog};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    pub records: u64,
    pub writes: u64,
    pub trims: u64,
    pub flushes: u64,
    pub bookmarks: u64,
    pub bytes_written: u64,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
    pub torn_tail_bytes_cut: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0} does not end in group-<number>")]
    Directory(String),
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error("image {path}: {source}")]
    Image {
        path: String,
        source: std::io::Error,
    },
    #[error("record {sequence} reaches {end}, past the image size {size}")]
    OutOfRange { sequence: u64, end: u64, size: u64 },
}

/// Replays the records of `disk` (every disk when `None`) into `out`, which
/// is created or resized to `size_bytes`.
pub fn replay(
    directory: &Path,
    disk: Option<u32>,
    size_bytes: u64,
    out: &Path,
    key: Option<[u8; 32]>,
) -> Result<ReplayReport, ReplayError> {
    let group = directory
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("group-"))
        .and_then(|number| number.parse::<u32>().ok())
        .ok_or_else(|| ReplayError::Directory(directory.display().to_string()))?;
    let mut config = StagingConfig::new(directory, group, u64::MAX / 4);
    config.encryption_key = key;
    let (log, opened) = StagingLog::open_with_policy(config, CorruptionPolicy::Refuse)?;
    let image_error = |source| ReplayError::Image {
        path: out.display().to_string(),
        source,
    };
    let image = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(out)
        .map_err(image_error)?;
    image.set_len(size_bytes).map_err(image_error)?;
    let mut report = ReplayReport {
        torn_tail_bytes_cut: opened.torn_tail_bytes_cut,
        ..ReplayReport::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(image_error)?;
    let mut next = opened.first_sequence.unwrap_or(1);
    loop {
        let records = runtime.block_on(log.read_from(next, 64 << 20))?;
        let Some(last) = records.last() else { break };
        next = last.sequence + 1;
        for record in records {
            report.records += 1;
            report.first_sequence.get_or_insert(record.sequence);
            report.last_sequence = Some(record.sequence);
            apply(
                &image,
                &record.body,
                record.sequence,
                disk,
                size_bytes,
                &mut report,
            )
            .map_err(|e| match e {
                ApplyError::Io(source) => image_error(source),
                ApplyError::Range(error) => error,
            })?;
        }
    }
    image.sync_all().map_err(image_error)?;
    Ok(report)
}

enum ApplyError {
    Io(std::io::Error),
    Range(ReplayError),
}

fn apply(
    image: &std::fs::File,
    body: &RecordBody,
    sequence: u64,
    only: Option<u32>,
    size: u64,
    report: &mut ReplayReport,
) -> Result<(), ApplyError> {
    let wanted = |disk: &u32| only.is_none_or(|only| only == *disk);
    let check = |offset: u64, length: u64| {
        let end = offset.saturating_add(length);
        if end > size {
            return Err(ApplyError::Range(ReplayError::OutOfRange {
                sequence,
                end,
                size,
            }));
        }
        Ok(())
    };
    match body {
        RecordBody::Write { disk, offset, data } if wanted(disk) => {
            check(*offset, data.len() as u64)?;
            image.write_all_at(data, *offset).map_err(ApplyError::Io)?;
            report.writes += 1;
            report.bytes_written += data.len() as u64;
        }
        RecordBody::Trim {
            disk,
            offset,
            length,
        } if wanted(disk) => {
            check(*offset, *length)?;
            // A trimmed range reads back as zeroes from a file primary.
            let zeroes = vec![0u8; (*length).min(1 << 20) as usize];
            let mut position = *offset;
            while position < offset + length {
                let chunk = (offset + length - position).min(zeroes.len() as u64) as usize;
                image
                    .write_all_at(&zeroes[..chunk], position)
                    .map_err(ApplyError::Io)?;
                position += chunk as u64;
            }
            report.trims += 1;
        }
        RecordBody::Flush { disk } if wanted(disk) => report.flushes += 1,
        RecordBody::Bookmark { .. } => report.bookmarks += 1,
        _ => {}
    }
    Ok(())
}
