//! The tap's persistent dirty map: one bit per grain of a protected disk,
//! set durably BEFORE a write is acknowledged to the NBD client and cleared
//! once the source gateway has the write durably. After a crash or a long
//! disconnect the tap resynchronises only the grains whose bit is set.
//!
//! Format (docs/formats/dirty-map.md): a 4 KiB header block, then 4 KiB
//! pages each holding `PAGE_BITMAP_BYTES` of bitmap and a CRC32C. A page that
//! fails its checksum (a torn write) is taken as all dirty: the error is
//! always towards resynchronising more, never less.

use drgw_io::le;
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

pub const MAGIC: &[u8; 8] = b"DRGWDMAP";
pub const FORMAT_VERSION: u32 = 1;
pub const BLOCK_BYTES: usize = 4096;
/// Bitmap bytes per page; the last 4 bytes of a page are its CRC32C.
pub const PAGE_BITMAP_BYTES: usize = BLOCK_BYTES - 4;
pub const GRAIN_BYTES_MIN: u64 = 4096;
pub const GRAIN_BYTES_MAX: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DirtyMapError {
    #[error("dirty map {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("dirty map grain {grain_bytes} must be a power of two in {GRAIN_BYTES_MIN}..={GRAIN_BYTES_MAX}")]
    Grain { grain_bytes: u64 },
    #[error("dirty map {path} is not a drgw dirty map or has format version {version} (this build: {FORMAT_VERSION})")]
    Foreign { path: PathBuf, version: u32 },
}

/// What opening found, for the tap's log and its resync decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub created: bool,
    /// Pages whose checksum failed, taken as all dirty.
    pub pages_torn: u64,
    /// The disk size or grain changed since the map was written: all dirty.
    /// (Not for a disk that grew: see `grown_from`.)
    pub geometry_changed: bool,
    /// The disk grew from this size since the map was written: the old
    /// bits are kept, the new grains start clean (the gateway's resync after
    /// `drgw resize` compares the grown part; sending it all from here
    /// would stage every byte of it, zeros included).
    pub grown_from: Option<u64>,
    pub dirty_grains: u64,
}

struct State {
    bits: Vec<u8>,
    /// Pages changed in memory by `clear` and not yet written.
    pages_unwritten: Vec<bool>,
    /// Pages with newly set bits waiting for the next durable write, and
    /// the generation that write will carry (group commit).
    pages_marking: BTreeSet<usize>,
    generation_open: u64,
    generation_durable: u64,
    /// A mark write failed: generations up to this one report the error.
    generation_failed: u64,
    failure: Option<String>,
    writing: bool,
}

pub struct DirtyMap {
    path: PathBuf,
    file: File,
    grain_bytes: u64,
    disk_bytes: u64,
    grains: u64,
    state: Mutex<State>,
    durable: Condvar,
}

fn page_count(grains: u64) -> usize {
    let bitmap_bytes = grains.div_ceil(8) as usize;
    bitmap_bytes.div_ceil(PAGE_BITMAP_BYTES).max(1)
}

fn header_bytes(grain_bytes: u64, disk_bytes: u64) -> Vec<u8> {
    let mut header = vec![0u8; BLOCK_BYTES];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&grain_bytes.to_le_bytes());
    header[20..28].copy_from_slice(&disk_bytes.to_le_bytes());
    let checksum = crc32c::crc32c(&header[..28]);
    header[28..32].copy_from_slice(&checksum.to_le_bytes());
    header
}

impl DirtyMap {
    /// Opens the map at `path`, creating it (all clean) if missing. A map
    /// written for another disk size or grain is rewritten all dirty.
    pub fn open(
        path: &Path,
        disk_bytes: u64,
        grain_bytes: u64,
    ) -> Result<(DirtyMap, OpenReport), DirtyMapError> {
        if !grain_bytes.is_power_of_two()
            || !(GRAIN_BYTES_MIN..=GRAIN_BYTES_MAX).contains(&grain_bytes)
        {
            return Err(DirtyMapError::Grain { grain_bytes });
        }
        let io_error = |source| DirtyMapError::Io {
            path: path.to_path_buf(),
            source,
        };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_error)?;
        let grains = disk_bytes.div_ceil(grain_bytes);
        let pages = page_count(grains);
        let map = DirtyMap {
            path: path.to_path_buf(),
            file,
            grain_bytes,
            disk_bytes,
            grains,
            state: Mutex::new(State {
                bits: vec![0u8; pages * PAGE_BITMAP_BYTES],
                pages_unwritten: vec![false; pages],
                pages_marking: BTreeSet::new(),
                generation_open: 1,
                generation_durable: 0,
                generation_failed: 0,
                failure: None,
                writing: false,
            }),
            durable: Condvar::new(),
        };
        let mut report = OpenReport {
            created: !existed,
            ..OpenReport::default()
        };
        if existed {
            map.load(&mut report)?;
        }
        if !existed || report.geometry_changed || report.grown_from.is_some() {
            map.rewrite_all()?;
        }
        report.dirty_grains = map.dirty_grains();
        Ok((map, report))
    }

    fn load(&self, report: &mut OpenReport) -> Result<(), DirtyMapError> {
        let io_error = |source| DirtyMapError::Io {
            path: self.path.clone(),
            source,
        };
        let mut header = vec![0u8; BLOCK_BYTES];
        let read = self.file.read_at(&mut header, 0).map_err(io_error)?;
        let version = le::u32_at(&header, 8);
        let stored = le::u32_at(&header, 28);
        if read < 32 || &header[0..8] != MAGIC || version != FORMAT_VERSION {
            if read == 0 {
                // Created but never written (crash during creation): all dirty.
                report.geometry_changed = true;
                self.set_all();
                return Ok(());
            }
            return Err(DirtyMapError::Foreign {
                path: self.path.clone(),
                version,
            });
        }
        let grain = le::u64_at(&header, 12);
        let size = le::u64_at(&header, 20);
        if stored != crc32c::crc32c(&header[..28])
            || grain != self.grain_bytes
            || size > self.disk_bytes
        {
            report.geometry_changed = true;
            self.set_all();
            return Ok(());
        }
        if size < self.disk_bytes {
            report.grown_from = Some(size);
        }
        // A grown disk's map has the old pages only; the rest stays clean.
        let pages_stored = page_count(size.div_ceil(grain));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut page = vec![0u8; BLOCK_BYTES];
        for index in 0..pages_stored.min(state.pages_unwritten.len()) {
            let offset = (BLOCK_BYTES * (index + 1)) as u64;
            page.fill(0);
            let got = self.file.read_at(&mut page, offset).map_err(io_error)?;
            let stored = le::u32_at(&page, PAGE_BITMAP_BYTES);
            let range = index * PAGE_BITMAP_BYTES..(index + 1) * PAGE_BITMAP_BYTES;
            if got == BLOCK_BYTES && stored == crc32c::crc32c(&page[..PAGE_BITMAP_BYTES]) {
                state.bits[range].copy_from_slice(&page[..PAGE_BITMAP_BYTES]);
            } else {
                report.pages_torn += 1;
                state.bits[range].fill(0xff);
                state.pages_unwritten[index] = true;
            }
        }
        drop(state);
        self.mask_tail();
        Ok(())
    }

    fn set_all(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.bits.fill(0xff);
        drop(state);
        self.mask_tail();
    }

    /// Bits past the last grain stay zero, so counts are exact.
    fn mask_tail(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let total_bits = state.bits.len() as u64 * 8;
        for bit in self.grains..total_bits {
            state.bits[(bit / 8) as usize] &= !(1 << (bit % 8));
        }
    }

    fn rewrite_all(&self) -> Result<(), DirtyMapError> {
        let io_error = |source| DirtyMapError::Io {
            path: self.path.clone(),
            source,
        };
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for index in 0..state.pages_unwritten.len() {
            self.write_page(&state, index).map_err(io_error)?;
        }
        drop(state);
        self.file
            .write_all_at(&header_bytes(self.grain_bytes, self.disk_bytes), 0)
            .map_err(io_error)?;
        self.file.sync_data().map_err(io_error)
    }

    fn page_image(&self, state: &State, index: usize) -> Vec<u8> {
        let mut page = vec![0u8; BLOCK_BYTES];
        let range = index * PAGE_BITMAP_BYTES..(index + 1) * PAGE_BITMAP_BYTES;
        page[..PAGE_BITMAP_BYTES].copy_from_slice(&state.bits[range]);
        let checksum = crc32c::crc32c(&page[..PAGE_BITMAP_BYTES]);
        page[PAGE_BITMAP_BYTES..].copy_from_slice(&checksum.to_le_bytes());
        page
    }

    fn write_page(&self, state: &State, index: usize) -> io::Result<()> {
        let page = self.page_image(state, index);
        self.file
            .write_all_at(&page, (BLOCK_BYTES * (index + 1)) as u64)
    }

    fn grain_range(&self, offset: u64, length: u64) -> std::ops::Range<u64> {
        if length == 0 {
            return 0..0;
        }
        let first = offset / self.grain_bytes;
        let last = (offset.saturating_add(length) - 1) / self.grain_bytes;
        first.min(self.grains)..(last + 1).min(self.grains)
    }

    /// Whether every grain of the range is set and already durable: the
    /// common case, answered without I/O or waiting.
    pub fn is_durably_marked(&self, offset: u64, length: u64) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.grain_range(offset, length).all(|grain| {
            let (byte, mask) = ((grain / 8) as usize, 1u8 << (grain % 8));
            state.bits[byte] & mask != 0
                && !state.pages_marking.contains(&(byte / PAGE_BITMAP_BYTES))
        })
    }

    /// Marks `offset..offset+length` dirty, durably: when this returns Ok the
    /// bits are on disk. Bits already durable cost nothing; concurrent marks
    /// share one page write per page and one `fdatasync` (group commit).
    pub fn mark(&self, offset: u64, length: u64) -> Result<(), DirtyMapError> {
        self.mark_ranges(&[(offset, length)])
    }

    /// `mark` for several ranges `(offset, length)` at once: one page write
    /// per page and one `fdatasync` for all of them.
    pub fn mark_ranges(&self, ranges: &[(u64, u64)]) -> Result<(), DirtyMapError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut needed = false;
        for &(offset, length) in ranges {
            for grain in self.grain_range(offset, length) {
                let (byte, mask) = ((grain / 8) as usize, 1u8 << (grain % 8));
                let page = byte / PAGE_BITMAP_BYTES;
                if state.bits[byte] & mask == 0 {
                    state.bits[byte] |= mask;
                    state.pages_marking.insert(page);
                    needed = true;
                } else if state.pages_marking.contains(&page) {
                    needed = true; // set by another mark, not yet durable
                }
            }
        }
        if !needed {
            return Ok(());
        }
        let generation = state.generation_open;
        loop {
            if state.generation_durable >= generation {
                return Ok(());
            }
            if state.generation_failed >= generation {
                let reason = state.failure.clone().unwrap_or_default();
                return Err(DirtyMapError::Io {
                    path: self.path.clone(),
                    source: io::Error::other(reason),
                });
            }
            if state.writing {
                state = self.durable.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state = self.write_marks(state);
        }
    }

    /// The group-commit leader: writes every page with pending marks (and
    /// their current bits, cleared ones included), then `fdatasync`.
    fn write_marks<'a>(
        &'a self,
        mut state: std::sync::MutexGuard<'a, State>,
    ) -> std::sync::MutexGuard<'a, State> {
        state.writing = true;
        let generation = state.generation_open;
        state.generation_open += 1;
        let pages: Vec<usize> = std::mem::take(&mut state.pages_marking)
            .into_iter()
            .collect();
        let images: Vec<(usize, Vec<u8>)> = pages
            .iter()
            .map(|&page| (page, self.page_image(&state, page)))
            .collect();
        for &page in &pages {
            state.pages_unwritten[page] = false;
        }
        drop(state);
        let result = images
            .iter()
            .try_for_each(|(page, image)| {
                self.file
                    .write_all_at(image, (BLOCK_BYTES * (page + 1)) as u64)
            })
            .and_then(|()| self.file.sync_data());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => state.generation_durable = generation,
            Err(error) => {
                state.generation_failed = generation;
                state.failure = Some(error.to_string());
                // Not durable: write these pages again with the next marks.
                state.pages_marking.extend(pages);
            }
        }
        state.writing = false;
        self.durable.notify_all();
        state
    }

    /// Clears the grains wholly inside `offset..offset+length` in memory;
    /// `persist` writes them later. A crash before that leaves them dirty,
    /// which costs a resync of those grains and nothing else.
    /// Returns how many were set.
    pub fn clear(&self, offset: u64, length: u64) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut cleared = 0;
        for grain in self.grain_range(offset, length) {
            let (byte, mask) = ((grain / 8) as usize, 1u8 << (grain % 8));
            if state.bits[byte] & mask != 0 {
                state.bits[byte] &= !mask;
                state.pages_unwritten[byte / PAGE_BITMAP_BYTES] = true;
                cleared += 1;
            }
        }
        cleared
    }

    /// Writes the pages changed by `clear` since the last call.
    pub fn persist(&self) -> Result<usize, DirtyMapError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let pages: Vec<usize> = (0..state.pages_unwritten.len())
            .filter(|&i| state.pages_unwritten[i])
            .collect();
        if pages.is_empty() {
            return Ok(0);
        }
        let io_error = |source| DirtyMapError::Io {
            path: self.path.clone(),
            source,
        };
        for &page in &pages {
            self.write_page(&state, page).map_err(io_error)?;
            state.pages_unwritten[page] = false;
        }
        self.file.sync_data().map_err(io_error)?;
        Ok(pages.len())
    }

    pub fn grain_bytes(&self) -> u64 {
        self.grain_bytes
    }

    pub fn dirty_grains(&self) -> u64 {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .bits
            .iter()
            .map(|byte| u64::from(byte.count_ones()))
            .sum()
    }

    /// Bytes of the disk in dirty grains (the last grain counted only up to
    /// the disk's end): a count of the bitmap's bits, not a walk.
    pub fn dirty_bytes(&self) -> u64 {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let grains: u64 = state
            .bits
            .iter()
            .map(|byte| u64::from(byte.count_ones()))
            .sum();
        let mut bytes = grains * self.grain_bytes;
        if let Some(last) = self.grains.checked_sub(1) {
            let set = state.bits[(last / 8) as usize] & (1 << (last % 8)) != 0;
            if set {
                bytes -= (last + 1) * self.grain_bytes - self.disk_bytes;
            }
        }
        bytes
    }

    /// The dirty regions as coalesced `(offset, length)` byte ranges,
    /// clipped to the disk size.
    pub fn dirty_ranges(&self) -> Vec<(u64, u64)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for grain in 0..self.grains {
            if state.bits[(grain / 8) as usize] & (1 << (grain % 8)) == 0 {
                continue;
            }
            let start = grain * self.grain_bytes;
            let end = (start + self.grain_bytes).min(self.disk_bytes);
            match ranges.last_mut() {
                Some((offset, length)) if *offset + *length == start => *length = end - *offset,
                _ => ranges.push((start, end - start)),
            }
        }
        ranges
    }
}

#[cfg(test)]
mod tests;
