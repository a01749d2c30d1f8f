//! The write overlay of a writable recovery export (test failover, failover,
//! `drgw export --writable`): writes land in a sparse data file of the
//! disk's size, at their own offsets, in 4 KiB blocks; a bitmap says which
//! blocks the overlay holds. Blocks it does not hold read from the point.
//!
//! A durable overlay (test failover and failover, which survive a restart)
//! also keeps a map log: after the data is fsynced at a FLUSH (or a FUA
//! write), one 16-byte record per run of newly written blocks is appended
//! and fsynced. A restart replays the log; a torn last record is cut off
//! (those blocks were never flushed). Format: docs/formats/overlay.md.

use drgw_io::le;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const BLOCK_BYTES: u64 = 4096;
const MAP_MAGIC: &[u8; 4] = b"dOVM";
const MAP_FORMAT: u16 = 1;
const MAP_HEADER_BYTES: usize = 24;
const MAP_RECORD_BYTES: usize = 16;
const DATA_FILE: &str = "data";
const MAP_FILE: &str = "map";

struct Blocks {
    present: Vec<u64>,
    /// Runs written since the last flush, not yet in the map log.
    pending: Vec<(u64, u32)>,
    count: u64,
}

impl Blocks {
    fn has(&self, block: u64) -> bool {
        self.present[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    fn set(&mut self, first: u64, count: u64) {
        for block in first..first + count {
            let word = &mut self.present[(block / 64) as usize];
            let bit = 1 << (block % 64);
            if *word & bit == 0 {
                *word |= bit;
                self.count += 1;
            }
        }
    }
}

pub struct Overlay {
    directory: PathBuf,
    data: File,
    map: Option<Mutex<File>>,
    blocks: Mutex<Blocks>,
    /// Serializes writes (a partial block is read, merged and written whole).
    writing: Mutex<()>,
    size_bytes: u64,
}

/// Where a piece of a read comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Overlay { start: u64, end: u64 },
    Point { start: u64, end: u64 },
}

impl Overlay {
    /// Creates a new, empty overlay in `directory` (which must not hold one).
    pub fn create(directory: &Path, size_bytes: u64, durable: bool) -> std::io::Result<Overlay> {
        std::fs::create_dir_all(directory)?;
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(directory.join(DATA_FILE))?;
        data.set_len(size_bytes)?;
        let map = if durable {
            let mut map = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(directory.join(MAP_FILE))?;
            map.write_all(&map_header(size_bytes))?;
            map.sync_all()?;
            File::open(directory)?.sync_all()?;
            Some(Mutex::new(map))
        } else {
            None
        };
        Ok(Overlay {
            directory: directory.to_path_buf(),
            data,
            map,
            blocks: Mutex::new(empty_blocks(size_bytes)),
            writing: Mutex::new(()),
            size_bytes,
        })
    }

    /// Opens a durable overlay after a restart: replays its map log.
    pub fn open(directory: &Path, size_bytes: u64) -> std::io::Result<Overlay> {
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(directory.join(DATA_FILE))?;
        let path = directory.join(MAP_FILE);
        let mut map = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut bytes = Vec::new();
        map.read_to_end(&mut bytes)?;
        let invalid = |why: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {why}", path.display()),
            )
        };
        if bytes.len() < MAP_HEADER_BYTES || bytes[..MAP_HEADER_BYTES] != map_header(size_bytes) {
            return Err(invalid(format!(
                "not an overlay map of a {size_bytes}-byte disk (format {MAP_FORMAT})"
            )));
        }
        let mut blocks = empty_blocks(size_bytes);
        let total = size_bytes.div_ceil(BLOCK_BYTES);
        let mut at = MAP_HEADER_BYTES;
        while at + MAP_RECORD_BYTES <= bytes.len() {
            let record = &bytes[at..at + MAP_RECORD_BYTES];
            let first = le::u64_at(record, 0);
            let count = le::u32_at(record, 8);
            let crc = le::u32_at(record, 12);
            if crc32c::crc32c(&record[..12]) != crc {
                break;
            }
            if first + u64::from(count) > total {
                return Err(invalid(format!(
                    "record at byte {at} names blocks past the disk"
                )));
            }
            blocks.set(first, u64::from(count));
            at += MAP_RECORD_BYTES;
        }
        if at != bytes.len() {
            tracing::warn!(map = %path.display(), kept = at, length = bytes.len(),
                "overlay map: torn or corrupt tail cut off (writes never flushed)");
            map.set_len(at as u64)?;
            map.sync_all()?;
        }
        map.seek(SeekFrom::End(0))?;
        Ok(Overlay {
            directory: directory.to_path_buf(),
            data,
            map: Some(Mutex::new(map)),
            blocks: Mutex::new(blocks),
            writing: Mutex::new(()),
            size_bytes,
        })
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Bytes the overlay holds (whole blocks).
    pub fn bytes(&self) -> u64 {
        self.lock_blocks().count * BLOCK_BYTES
    }

    fn lock_blocks(&self) -> std::sync::MutexGuard<'_, Blocks> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Splits `start..end` into pieces held by the overlay and pieces to
    /// read from the point.
    pub fn pieces(&self, start: u64, end: u64) -> Vec<Piece> {
        let blocks = self.lock_blocks();
        let mut pieces: Vec<Piece> = Vec::new();
        let mut at = start;
        while at < end {
            let block = at / BLOCK_BYTES;
            let stop = ((block + 1) * BLOCK_BYTES).min(end);
            let held = blocks.has(block);
            match pieces.last_mut() {
                Some(Piece::Overlay { end, .. }) if held => *end = stop,
                Some(Piece::Point { end, .. }) if !held => *end = stop,
                _ if held => pieces.push(Piece::Overlay {
                    start: at,
                    end: stop,
                }),
                _ => pieces.push(Piece::Point {
                    start: at,
                    end: stop,
                }),
            }
            at = stop;
        }
        pieces
    }

    /// Reads bytes the overlay holds.
    pub fn read_at(&self, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.data.read_exact_at(buffer, offset)
    }

    /// Writes `data` at `offset`. `point` fills a partly written block the
    /// overlay does not hold yet with the point's bytes.
    pub fn write(
        &self,
        offset: u64,
        data: &[u8],
        point: &mut dyn FnMut(&mut [u8], u64) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let end = offset + data.len() as u64;
        if end > self.size_bytes {
            return Err(std::io::Error::other("write past the end of the disk"));
        }
        if data.is_empty() {
            return Ok(());
        }
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let first = offset / BLOCK_BYTES;
        let last = (end - 1) / BLOCK_BYTES;
        let aligned_start = first * BLOCK_BYTES;
        let aligned_end = ((last + 1) * BLOCK_BYTES).min(self.size_bytes);
        let mut whole;
        let bytes: &[u8] = if aligned_start == offset && aligned_end == end {
            data
        } else {
            whole = vec![0u8; (aligned_end - aligned_start) as usize];
            for block in [first, last] {
                let block_start = block * BLOCK_BYTES;
                let block_end = (block_start + BLOCK_BYTES).min(self.size_bytes);
                let covered = offset <= block_start && end >= block_end;
                if covered {
                    continue;
                }
                let slice = &mut whole
                    [(block_start - aligned_start) as usize..(block_end - aligned_start) as usize];
                if self.lock_blocks().has(block) {
                    self.data.read_exact_at(slice, block_start)?;
                } else {
                    point(slice, block_start)?;
                }
            }
            whole[(offset - aligned_start) as usize..(end - aligned_start) as usize]
                .copy_from_slice(data);
            &whole
        };
        self.data.write_all_at(bytes, aligned_start)?;
        let count = last - first + 1;
        let mut blocks = self.lock_blocks();
        blocks.set(first, count);
        if self.map.is_some() {
            let mut remaining = count;
            let mut at = first;
            while remaining > 0 {
                let run = remaining.min(u64::from(u32::MAX)) as u32;
                blocks.pending.push((at, run));
                at += u64::from(run);
                remaining -= u64::from(run);
            }
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> std::io::Result<()> {
        self.data.sync_data()?;
        let Some(map) = &self.map else {
            return Ok(());
        };
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut self.lock_blocks().pending);
        if pending.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(pending.len() * MAP_RECORD_BYTES);
        for (first, count) in pending {
            let start = bytes.len();
            bytes.extend_from_slice(&first.to_le_bytes());
            bytes.extend_from_slice(&count.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[start..]);
            bytes.extend_from_slice(&crc.to_le_bytes());
        }
        map.write_all(&bytes)?;
        map.sync_data()
    }

    /// Runs of blocks the overlay holds: `(offset, length)` in bytes.
    pub fn held_ranges(&self) -> Vec<(u64, u64)> {
        let blocks = self.lock_blocks();
        let total = self.size_bytes.div_ceil(BLOCK_BYTES);
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut block = 0;
        while block < total {
            if blocks.present[(block / 64) as usize] == 0 {
                block = (block / 64 + 1) * 64;
                continue;
            }
            if blocks.has(block) {
                let start = block * BLOCK_BYTES;
                let end = ((block + 1) * BLOCK_BYTES).min(self.size_bytes);
                match ranges.last_mut() {
                    Some((offset, length)) if *offset + *length == start => *length = end - *offset,
                    _ => ranges.push((start, end - start)),
                }
            }
            block += 1;
        }
        ranges
    }

    /// Deletes the overlay's files.
    pub fn discard(self) -> std::io::Result<()> {
        let directory = self.directory.clone();
        drop(self);
        match std::fs::remove_dir_all(&directory) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

fn empty_blocks(size_bytes: u64) -> Blocks {
    let total = size_bytes.div_ceil(BLOCK_BYTES);
    Blocks {
        present: vec![0; total.div_ceil(64) as usize],
        pending: Vec::new(),
        count: 0,
    }
}

fn map_header(size_bytes: u64) -> [u8; MAP_HEADER_BYTES] {
    let mut header = [0u8; MAP_HEADER_BYTES];
    header[..4].copy_from_slice(MAP_MAGIC);
    header[4..6].copy_from_slice(&MAP_FORMAT.to_le_bytes());
    header[8..12].copy_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
    header[12..20].copy_from_slice(&size_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&header[..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point_pattern(buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
        for (i, byte) in buffer.iter_mut().enumerate() {
            *byte = ((offset + i as u64) % 251) as u8;
        }
        Ok(())
    }

    fn read(overlay: &Overlay, offset: u64, length: usize) -> Vec<u8> {
        let mut out = vec![0u8; length];
        for piece in overlay.pieces(offset, offset + length as u64) {
            let (start, end, held) = match piece {
                Piece::Overlay { start, end } => (start, end, true),
                Piece::Point { start, end } => (start, end, false),
            };
            let slice = &mut out[(start - offset) as usize..(end - offset) as usize];
            if held {
                overlay.read_at(slice, start).unwrap();
            } else {
                point_pattern(slice, start).unwrap();
            }
        }
        out
    }

    #[test]
    fn partial_writes_merge_with_the_point_and_survive_a_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let mut model = vec![0u8; size as usize];
        point_pattern(&mut model, 0).unwrap();
        let overlay = Overlay::create(&dir.path().join("o"), size, true).unwrap();
        let writes: [(u64, usize, u8); 4] = [
            (100, 10, 1),
            (4090, 20, 2),
            (8192, 8192, 3),
            (size - 5, 5, 4),
        ];
        for (offset, length, value) in writes {
            let data = vec![value; length];
            overlay.write(offset, &data, &mut point_pattern).unwrap();
            model[offset as usize..offset as usize + length].copy_from_slice(&data);
        }
        assert_eq!(read(&overlay, 0, size as usize), model);
        overlay.flush().unwrap();
        // Written after the flush: lost at reopen (never flushed).
        overlay
            .write(65536, &[9; 4096], &mut point_pattern)
            .unwrap();
        drop(overlay);
        let reopened = Overlay::open(&dir.path().join("o"), size).unwrap();
        assert_eq!(read(&reopened, 0, size as usize), model);
        // Blocks 0 to 3 and the last one.
        assert_eq!(reopened.bytes(), 5 * BLOCK_BYTES);
        assert_eq!(
            reopened.held_ranges(),
            vec![(0, 4 * BLOCK_BYTES), (size - BLOCK_BYTES, BLOCK_BYTES)]
        );
    }

    #[test]
    fn a_torn_map_record_is_cut_off_and_a_bad_header_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        let overlay = Overlay::create(&path, 1 << 20, true).unwrap();
        overlay.write(0, &[1; 4096], &mut point_pattern).unwrap();
        overlay.flush().unwrap();
        overlay.write(8192, &[2; 4096], &mut point_pattern).unwrap();
        overlay.flush().unwrap();
        drop(overlay);
        let map = path.join(MAP_FILE);
        let length = std::fs::metadata(&map).unwrap().len();
        // Tear the second record.
        let file = OpenOptions::new().write(true).open(&map).unwrap();
        file.set_len(length - 3).unwrap();
        let reopened = Overlay::open(&path, 1 << 20).unwrap();
        assert_eq!(reopened.bytes(), BLOCK_BYTES);
        drop(reopened);
        assert_eq!(
            std::fs::metadata(&map).unwrap().len(),
            (MAP_HEADER_BYTES + MAP_RECORD_BYTES) as u64
        );
        assert!(
            Overlay::open(&path, 2 << 20).is_err(),
            "size mismatch refused"
        );
        let file = OpenOptions::new().write(true).open(&map).unwrap();
        file.write_all_at(b"X", 0).unwrap();
        let error = Overlay::open(&path, 1 << 20).err().unwrap();
        assert!(error.to_string().contains("not an overlay map"), "{error}");
    }
}
