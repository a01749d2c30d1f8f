//! Segment files: naming, the 4096-byte segment header, creation, listing, and
//! spares (released segment files kept to be overwritten by a later segment).

use drgw_io::le;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::StagingError;
use super::record::BLOCK_BYTES;

pub const SEGMENT_MAGIC: [u8; 8] = *b"drgwSTG\0";
/// Version 2 added spare files and the `recycled` flag; version 1 segments (never
/// recycled) are read as well.
pub const FORMAT_VERSION: u16 = 2;
const FORMAT_VERSION_OLDEST_READ: u16 = 1;
const CHECKSUM_AT: usize = 60;
const SUFFIX: &str = ".segment";
const SPARE_SUFFIX: &str = ".spare";
const FLAG_ENCRYPTED: u16 = 1;
const FLAG_RECYCLED: u16 = 2;

/// The first block of every segment file. Records start at offset BLOCK_BYTES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub encrypted: bool,
    /// The file held an earlier segment: bytes after this segment's last record may
    /// be records of that earlier segment (they carry its number and are rejected).
    pub recycled: bool,
    pub group: u32,
    pub segment: u64,
    /// The sequence of the first record this segment holds (or would hold).
    pub sequence_first: u64,
    pub log_id: u64,
    pub segment_bytes: u64,
    /// Key-check value when encrypted (see crypto.rs), zero otherwise.
    pub key_check: u64,
}

impl SegmentHeader {
    pub fn encode(&self, block: &mut [u8]) {
        assert!(block.len() >= BLOCK_BYTES);
        block[..BLOCK_BYTES].fill(0);
        block[0..8].copy_from_slice(&SEGMENT_MAGIC);
        block[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.encrypted { FLAG_ENCRYPTED } else { 0 }
            | if self.recycled { FLAG_RECYCLED } else { 0 };
        block[10..12].copy_from_slice(&flags.to_le_bytes());
        block[12..16].copy_from_slice(&self.group.to_le_bytes());
        block[16..24].copy_from_slice(&self.segment.to_le_bytes());
        block[24..32].copy_from_slice(&self.sequence_first.to_le_bytes());
        block[32..40].copy_from_slice(&self.log_id.to_le_bytes());
        block[40..48].copy_from_slice(&self.segment_bytes.to_le_bytes());
        block[48..56].copy_from_slice(&self.key_check.to_le_bytes());
        let checksum = crc32c::crc32c(&block[..CHECKSUM_AT]);
        block[CHECKSUM_AT..64].copy_from_slice(&checksum.to_le_bytes());
    }

    /// Decodes and verifies a header block; the error says why it is not one.
    pub fn decode(block: &[u8]) -> Result<SegmentHeader, String> {
        if block.len() < BLOCK_BYTES {
            return Err(format!(
                "segment shorter than its header ({} bytes)",
                block.len()
            ));
        }
        let u64_at = |at: usize| le::u64_at(block, at);
        if block[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic".into());
        }
        let stored = le::u32_at(block, CHECKSUM_AT);
        if crc32c::crc32c(&block[..CHECKSUM_AT]) != stored {
            return Err("segment header CRC32C mismatch".into());
        }
        let version = le::u16_at(block, 8);
        if !(FORMAT_VERSION_OLDEST_READ..=FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "segment format version {version}, this build reads \
                 {FORMAT_VERSION_OLDEST_READ}..={FORMAT_VERSION}"
            ));
        }
        let flags = le::u16_at(block, 10);
        let known = if version == 1 {
            FLAG_ENCRYPTED
        } else {
            FLAG_ENCRYPTED | FLAG_RECYCLED
        };
        if flags & !known != 0 {
            return Err(format!("segment flags {flags:#x} unknown"));
        }
        let segment_bytes = u64_at(40);
        if segment_bytes % BLOCK_BYTES as u64 != 0 || segment_bytes < 2 * BLOCK_BYTES as u64 {
            return Err(format!("segment size {segment_bytes} invalid"));
        }
        Ok(SegmentHeader {
            encrypted: flags & FLAG_ENCRYPTED != 0,
            recycled: flags & FLAG_RECYCLED != 0,
            group: le::u32_at(block, 12),
            segment: u64_at(16),
            sequence_first: u64_at(24),
            log_id: u64_at(32),
            segment_bytes,
            key_check: u64_at(48),
        })
    }
}

pub fn segment_path(directory: &Path, segment: u64) -> PathBuf {
    directory.join(format!("{segment:020}{SUFFIX}"))
}

/// A spare keeps the number of the segment it last held as its name (unique).
pub fn spare_path(directory: &Path, number: u64) -> PathBuf {
    directory.join(format!("{number:020}{SPARE_SUFFIX}"))
}

/// Segment numbers present in the directory, ascending. Other files are ignored.
pub fn list(directory: &Path) -> Result<Vec<u64>, StagingError> {
    list_suffix(directory, SUFFIX)
}

/// Spare file numbers present in the directory, ascending.
pub fn list_spares(directory: &Path) -> Result<Vec<u64>, StagingError> {
    list_suffix(directory, SPARE_SUFFIX)
}

fn list_suffix(directory: &Path, suffix: &str) -> Result<Vec<u64>, StagingError> {
    let mut numbers = Vec::new();
    let entries = std::fs::read_dir(directory).map_err(|e| StagingError::io(directory, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StagingError::io(directory, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            numbers.push(stem.parse::<u64>().expect("20 digits fit u64 here"));
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Creates a segment file for direct I/O, preallocated to `segment_bytes`.
/// The caller writes the header through the ring and makes it durable.
pub fn create(directory: &Path, segment: u64, segment_bytes: u64) -> Result<File, StagingError> {
    let path = segment_path(directory, segment);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| direct_error(&path, e))?;
    nix::fcntl::fallocate(
        &file,
        nix::fcntl::FallocateFlags::empty(),
        0,
        segment_bytes as i64,
    )
    .map_err(|e| StagingError::io(&path, e.into()))?;
    Ok(file)
}

/// Opens a spare file for direct I/O, to be overwritten by segment records. The caller
/// writes the new header through the ring, makes it durable, then calls `install`.
pub fn open_spare(directory: &Path, spare: u64) -> Result<File, StagingError> {
    let path = spare_path(directory, spare);
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| direct_error(&path, e))
}

/// Renames a spare (whose new header is durable) to segment `segment`. The caller
/// syncs the directory.
pub fn install(directory: &Path, spare: u64, segment: u64) -> Result<(), StagingError> {
    let path = spare_path(directory, spare);
    std::fs::rename(&path, segment_path(directory, segment)).map_err(|e| StagingError::io(&path, e))
}

/// Renames a released segment to a spare. The caller syncs the directory.
pub fn retire(directory: &Path, segment: u64) -> Result<(), StagingError> {
    let path = segment_path(directory, segment);
    std::fs::rename(&path, spare_path(directory, segment)).map_err(|e| StagingError::io(&path, e))
}

/// Opens an existing segment for a sequential scan (recovery).
pub fn open_scan(directory: &Path, segment: u64) -> Result<File, StagingError> {
    let path = segment_path(directory, segment);
    File::open(&path).map_err(|e| StagingError::io(&path, e))
}

/// Opens a segment for the readers: buffered, with readahead off. Readers touch only
/// durable batches, whole blocks each; readahead could cache blocks the writer is
/// about to fill with direct I/O, and a read racing that write could keep stale
/// pages (the checksums would catch it, but the read would fail). In a recycled file,
/// pages cached from its earlier segment are dropped by the direct writes over them.
pub fn open_read(directory: &Path, segment: u64) -> Result<File, StagingError> {
    let path = segment_path(directory, segment);
    let file = File::open(&path).map_err(|e| StagingError::io(&path, e))?;
    nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
    )
    .map_err(|e| StagingError::io(&path, e.into()))?;
    Ok(file)
}

pub fn direct_error(path: &Path, error: std::io::Error) -> StagingError {
    if error.raw_os_error() == Some(libc::EINVAL) {
        StagingError::DirectIoUnsupported {
            path: path.to_path_buf(),
            source: error,
        }
    } else {
        StagingError::io(path, error)
    }
}

/// Makes directory entries (created or removed segments) durable.
pub fn sync_directory(directory: &Path) -> Result<(), StagingError> {
    File::open(directory)
        .and_then(|d| d.sync_all())
        .map_err(|e| StagingError::io(directory, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_flip() {
        let header = SegmentHeader {
            encrypted: true,
            recycled: true,
            group: 4,
            segment: 9,
            sequence_first: 1234,
            log_id: 0xdead_beef,
            segment_bytes: 1 << 20,
            key_check: 77,
        };
        let mut block = vec![0u8; BLOCK_BYTES];
        header.encode(&mut block);
        assert_eq!(SegmentHeader::decode(&block).unwrap(), header);
        block[20] ^= 1;
        assert!(SegmentHeader::decode(&block).is_err());
    }
}
