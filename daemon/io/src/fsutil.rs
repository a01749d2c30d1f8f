//! Durable file replacement: what every small state file (identity, keys)
//! is written with, so a crash leaves either the old or the new file, never a
//! torn one; and the size of a block device.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` atomically with the given mode: a temporary file
/// beside it is written and fsynced, renamed over `path`, and the directory
/// fsynced so the rename itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let directory = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut temporary_name = file_name.to_os_string();
    temporary_name.push(format!(".tmp.{}", std::process::id()));
    let temporary = directory.join(temporary_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temporary)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Why `path` is not a file system of its own mounted there (the volume
/// `role`'s disk is missing or did not mount), or `None` when it is: it
/// exists and sits on another device than its parent directory.
pub fn mount_point_problem(path: &Path, role: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let missing = || {
        Some(format!(
            "no file system is mounted at {}: the {role} disk is missing or did not mount",
            path.display()
        ))
    };
    let Ok(own) = fs::metadata(path) else {
        return missing();
    };
    let parent = path.parent().unwrap_or(path);
    match fs::metadata(parent) {
        Ok(above) if above.dev() != own.dev() => None,
        _ => missing(),
    }
}

/// Creates `path` and its parents if missing, and sets the leaf's mode.
pub fn create_private_dir(path: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// `_IOR(0x12, 114, size_t)`: size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// The size of the block device open as `file`.
pub fn block_device_size(file: &File) -> io::Result<u64> {
    use std::os::unix::io::AsRawFd;
    let mut size_bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // to a live, writable u64; the descriptor is open for the whole call.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size_bytes) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents_and_sets_mode() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("key.pem");
        write_atomic(&path, b"first", 0o600).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(directory.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn failure_leaves_no_temporary() {
        let directory = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails.
        let path = directory.path().join("occupied");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_atomic(&path, b"data", 0o600).is_err());
        let names: Vec<_> = fs::read_dir(directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("occupied")]);
    }
}
