//! Errors of the staging log: one enum, each variant says what failed and with which value.

use std::path::PathBuf;

use super::recovery::CorruptRecord;

/// Why a staging operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("staging config invalid: {0}")]
    Config(String),
    #[error("staging I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("file system of {path} refuses O_DIRECT (staging needs direct I/O): {source}")]
    DirectIoUnsupported {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("io_uring setup failed (queue depth {queue_depth}): {source}")]
    RingSetup {
        queue_depth: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("staging log in {directory} has {} corrupt record(s), first: segment {} offset {}: {}; open with CorruptionPolicy::Skip to skip them", .corrupt.len(), .corrupt[0].segment, .corrupt[0].offset, .corrupt[0].reason)]
    Corrupt {
        directory: PathBuf,
        corrupt: Vec<CorruptRecord>,
    },
    #[error("record of sequence {sequence} at segment {segment} offset {offset} failed verification on read: {reason}")]
    CorruptOnRead {
        sequence: u64,
        segment: u64,
        offset: u64,
        reason: String,
    },
    #[error("segment {segment} belongs to group {found}, this log is group {expected}")]
    GroupMismatch {
        segment: u64,
        expected: u32,
        found: u32,
    },
    #[error("segment {segment} belongs to log id {found:#x}, expected {expected:#x}")]
    LogIdMismatch {
        segment: u64,
        expected: u64,
        found: u64,
    },
    #[error("segment {segment}: log encrypted={encrypted} but a key was given={key_given}")]
    EncryptionMismatch {
        segment: u64,
        encrypted: bool,
        key_given: bool,
    },
    #[error(
        "segment {segment}: the encryption key does not match the one the log was written with"
    )]
    WrongKey { segment: u64 },
    #[error("record of {record_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    RecordTooLarge { record_bytes: u64, limit_bytes: u64 },
    #[error("append of {count} records exceeds the limit of {limit} per append")]
    AppendTooLarge { count: usize, limit: usize },
    #[error("sequence {sequence} is no longer on disk (first on disk is {first_on_disk})")]
    SequenceReleased { sequence: u64, first_on_disk: u64 },
    #[error("release through {sequence} is beyond the last durable sequence {last_durable}")]
    ReleaseBeyondDurable { sequence: u64, last_durable: u64 },
    #[error("the staging writer failed and the log is closed: {0}")]
    WriterFailed(String),
}

impl StagingError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> StagingError {
        StagingError::Io {
            path: path.into(),
            source,
        }
    }
}
