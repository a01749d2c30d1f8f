//! The output image: its format, where disk bytes go in the file, and the
//! two descriptors it is written through (O_DIRECT for aligned data where
//! the file system allows it, buffered for tables and an unaligned tail).

use super::qcow2::{Extent, Qcow2Layout, CLUSTER_BYTES};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// O_DIRECT needs offsets and lengths in multiples of this.
pub const DIRECT_ALIGN: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    #[default]
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// Where disk bytes go in the file.
pub enum Layout {
    /// Byte for byte; holes stay holes.
    Raw {
        size_bytes: u64,
    },
    Qcow2(Qcow2Layout),
}

impl Layout {
    /// Extents for the non-zero, cluster-aligned disk range `start..end`.
    pub fn place(&mut self, start: u64, end: u64) -> Vec<Extent> {
        match self {
            Layout::Raw { size_bytes } => vec![Extent {
                disk_offset: start,
                file_offset: start,
                length: end.min(*size_bytes) - start,
            }],
            Layout::Qcow2(layout) => layout.place(start, end),
        }
    }

    /// The allocation mark to record in the sidecar (qcow2), else 0.
    pub fn allocated(&self) -> u64 {
        match self {
            Layout::Raw { .. } => 0,
            Layout::Qcow2(layout) => layout.allocated(),
        }
    }

    /// Tables a checkpoint must make durable with the data (qcow2).
    pub fn write_tables(&mut self, file: &File) -> io::Result<()> {
        match self {
            Layout::Raw { .. } => Ok(()),
            Layout::Qcow2(layout) => layout.write_tables(file),
        }
    }

    /// Completes the image (qcow2: tables, refcounts, header); returns the
    /// file's length. The caller fsyncs.
    pub fn finish(&mut self, file: &File) -> io::Result<u64> {
        match self {
            Layout::Raw { size_bytes } => Ok(*size_bytes),
            Layout::Qcow2(layout) => layout.finish(file),
        }
    }
}

/// Zero detection and qcow2 allocation work in units of this.
pub const GRAIN_BYTES: u64 = CLUSTER_BYTES;

pub struct ImageFiles {
    /// Opened with O_DIRECT when the file system takes it.
    pub direct: File,
    pub plain: File,
    pub direct_io: bool,
}

impl ImageFiles {
    /// Opens `path` (which exists) for writing, both ways.
    pub fn open(path: &Path) -> io::Result<ImageFiles> {
        let plain = OpenOptions::new().read(true).write(true).open(path)?;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        match direct {
            Ok(direct) => Ok(ImageFiles {
                direct,
                plain,
                direct_io: true,
            }),
            // tmpfs and some others refuse O_DIRECT: write through the cache.
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok(ImageFiles {
                direct: plain.try_clone()?,
                plain,
                direct_io: false,
            }),
            Err(error) => Err(error),
        }
    }

    /// Whether a write of `length` at `offset` may go through `direct`.
    pub fn direct_fits(&self, offset: u64, length: u64) -> bool {
        offset % DIRECT_ALIGN == 0 && length % DIRECT_ALIGN == 0
    }
}
