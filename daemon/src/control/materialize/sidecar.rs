//! The sidecar of an image being materialized: `<out>.drgw-materialize`,
//! beside the output. It says what is being written (group, point, disk,
//! format) and how far the image is durable, so an interrupted materialize
//! can go on. Format (docs/formats/materialize.md): a JSON document, a
//! newline, its CRC32C as 8 hex digits and a newline; replaced atomically.
//! It exists exactly while the image is incomplete.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const FORMAT: u32 = 1;
const SUFFIX: &str = ".drgw-materialize";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    pub format: u32,
    /// The group as `PEER/NAME`.
    pub group: String,
    pub point_sequence: u64,
    pub disk: String,
    pub disk_size_bytes: u64,
    /// `raw` or `qcow2`.
    pub image_format: String,
    /// Every byte of the disk below this is in the image and fsynced.
    pub done_bytes: u64,
    /// qcow2: clusters below this file offset are in use (allocation is
    /// sequential); raw: 0.
    pub allocated_bytes: u64,
    /// The output file, so a replaced file is noticed.
    pub file_device: u64,
    pub file_inode: u64,
    pub updated_unix_s: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({reason}); start over with --force")]
    Damaged { path: PathBuf, reason: String },
}

pub fn path_of(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_os_string();
    name.push(SUFFIX);
    PathBuf::from(name)
}

/// The file's identity (device, inode).
pub fn identity(file: &std::fs::File) -> std::io::Result<(u64, u64)> {
    let metadata = file.metadata()?;
    Ok((metadata.dev(), metadata.ino()))
}

impl Sidecar {
    pub fn load(path: &Path) -> Result<Option<Sidecar>, SidecarError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SidecarError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        Sidecar::decode(&text)
            .map(Some)
            .map_err(|reason| SidecarError::Damaged {
                path: path.into(),
                reason,
            })
    }

    fn decode(text: &str) -> Result<Sidecar, String> {
        let (document, crc) = text
            .trim_end_matches('\n')
            .rsplit_once('\n')
            .ok_or("no checksum line")?;
        let stored = u32::from_str_radix(crc.trim(), 16).map_err(|_| "bad checksum line")?;
        if stored != crc32c::crc32c(document.as_bytes()) {
            return Err("checksum mismatch".into());
        }
        let sidecar: Sidecar =
            serde_json::from_str(document).map_err(|error| format!("unreadable: {error}"))?;
        if sidecar.format != FORMAT {
            return Err(format!("format {} is not {FORMAT}", sidecar.format));
        }
        Ok(sidecar)
    }

    pub fn encode(&self) -> String {
        assert!(
            self.done_bytes <= self.disk_size_bytes,
            "sidecar past the disk"
        );
        let document = serde_json::to_string(self).expect("sidecars serialise");
        format!("{document}\n{:08x}\n", crc32c::crc32c(document.as_bytes()))
    }

    /// Replaces the sidecar atomically (temporary, fsync, rename, fsync dir).
    pub fn store(&self, path: &Path) -> Result<(), SidecarError> {
        drgw_io::fsutil::write_atomic(path, self.encode().as_bytes(), 0o600).map_err(|source| {
            SidecarError::Io {
                path: path.into(),
                source,
            }
        })
    }

    /// Why this sidecar does not describe `wanted` (same fields but
    /// progress), or None when it does.
    pub fn mismatch(&self, wanted: &Sidecar) -> Option<String> {
        let differs = |what: &str, have: &dyn std::fmt::Display, want: &dyn std::fmt::Display| {
            Some(format!(
                "the interrupted materialize was of {what} {have}, this one is of {want}"
            ))
        };
        if self.group != wanted.group {
            return differs("group", &self.group, &wanted.group);
        }
        if self.disk != wanted.disk {
            return differs("disk", &self.disk, &wanted.disk);
        }
        if self.point_sequence != wanted.point_sequence {
            return Some(format!(
                "the interrupted materialize was of sequence {}, this one is of sequence {} \
                 (resume it with --point seq:{})",
                self.point_sequence, wanted.point_sequence, self.point_sequence
            ));
        }
        if self.image_format != wanted.image_format {
            return differs("format", &self.image_format, &wanted.image_format);
        }
        if self.disk_size_bytes != wanted.disk_size_bytes {
            return differs("disk size", &self.disk_size_bytes, &wanted.disk_size_bytes);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sidecar {
        Sidecar {
            format: FORMAT,
            group: "site-a/group-1".into(),
            point_sequence: 42,
            disk: "disk-a".into(),
            disk_size_bytes: 1 << 30,
            image_format: "qcow2".into(),
            done_bytes: 64 << 20,
            allocated_bytes: 3 << 16,
            file_device: 1,
            file_inode: 2,
            updated_unix_s: 3,
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let directory = tempfile::tempdir().unwrap();
        let path = path_of(&directory.path().join("disk.qcow2"));
        assert!(path
            .to_str()
            .unwrap()
            .ends_with("disk.qcow2.drgw-materialize"));
        assert_eq!(Sidecar::load(&path).unwrap(), None);
        sample().store(&path).unwrap();
        assert_eq!(Sidecar::load(&path).unwrap(), Some(sample()));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("disk-a", "disk-b")).unwrap();
        assert!(matches!(
            Sidecar::load(&path),
            Err(SidecarError::Damaged { .. })
        ));
    }

    #[test]
    fn mismatches_are_named() {
        let mut other = sample();
        assert_eq!(sample().mismatch(&other), None);
        other.point_sequence = 43;
        assert!(sample()
            .mismatch(&other)
            .unwrap()
            .contains("--point seq:42"));
        other = sample();
        other.image_format = "raw".into();
        assert!(sample().mismatch(&other).unwrap().contains("format qcow2"));
    }
}
