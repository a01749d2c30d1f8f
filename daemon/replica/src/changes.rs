//! The change map of a failed-over disk: which 4 KiB blocks of the replica
//! may differ from what the original site's disk holds. It is what
//! reprotect sends back without comparing checksums.
//!
//! At commit it takes every range the commit rolled back (written at the
//! original site after the failover point and received here) and every
//! block the failover overlay held (written here before the commit); after
//! the commit, every write to the disk marks its blocks, durably, before
//! the write is done. It is the tap's persistent bitmap format
//! (docs/formats/dirty-map.md) at a 4 KiB grain, under the group's
//! `changed/` directory. A map that is missing at start (lost with its
//! file system) is taken as all changed: the error is towards sending
//! more, never less.

use drgw_dirtymap::{DirtyMap, DirtyMapError};
use std::path::{Path, PathBuf};

pub const CHANGE_GRAIN_BYTES: u64 = 4096;

pub fn changes_path(group_directory: &Path, disk: u32) -> PathBuf {
    group_directory
        .join("changed")
        .join(format!("disk-{disk}.map"))
}

/// Opens (or creates) the change map of `disk`. `expect_existing`: the
/// disk was committed before, so a map created now means the old one was
/// lost, and every block counts as changed.
pub fn open_changes(
    group_directory: &Path,
    disk: u32,
    size_bytes: u64,
    expect_existing: bool,
) -> Result<DirtyMap, DirtyMapError> {
    let path = changes_path(group_directory, disk);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DirtyMapError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let (map, report) = DirtyMap::open(&path, size_bytes, CHANGE_GRAIN_BYTES)?;
    if (report.created && expect_existing) || report.geometry_changed {
        tracing::warn!(path = %path.display(),
            "the change map of a committed disk was missing or did not fit the disk: every block counts as changed");
        map.mark(0, size_bytes)?;
    }
    if report.pages_torn > 0 {
        tracing::warn!(path = %path.display(), pages = report.pages_torn,
            "change map pages failed their checksum: taken as changed");
    }
    Ok(map)
}

/// Bytes the map holds as changed.
pub fn changed_bytes(map: &DirtyMap) -> u64 {
    map.dirty_bytes()
}
