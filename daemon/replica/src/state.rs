//! `state.json` of a target group: who it belongs to, its disks, and how far
//! the replicas are durably applied. Written atomically; the file is the JSON
//! document, a newline, and the CRC32C of the document in hex.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_FORMAT: u32 = 1;
pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDisk {
    /// The disk's number in the source's group.
    pub id: u32,
    pub name: String,
    pub size_bytes: u64,
    /// The replica: a file (created sparse) or a block device.
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub format: u32,
    /// The pinned peer (source appliance) the group comes from.
    pub peer: String,
    pub group: u32,
    pub name: String,
    pub disks: Vec<ReplicaDisk>,
    /// Every record through this sequence is on the replicas, fsynced.
    pub applied_through: u64,
    /// Redo log records through this one are applied (and released).
    pub redo_applied: u64,
    pub created_unix_s: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl GroupState {
    pub fn load(directory: &Path) -> Result<Option<GroupState>, StateError> {
        let path = directory.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.clone(),
            reason,
        };
        let (document, crc) = text
            .trim_end()
            .rsplit_once('\n')
            .ok_or_else(|| corrupt("no checksum line".into()))?;
        let stored = u32::from_str_radix(crc.trim(), 16)
            .map_err(|_| corrupt(format!("bad checksum line {crc:?}")))?;
        let computed = crc32c::crc32c(document.as_bytes());
        if stored != computed {
            return Err(corrupt(format!(
                "CRC32C {computed:08x} does not match the stored {stored:08x}"
            )));
        }
        let state: GroupState =
            serde_json::from_str(document).map_err(|error| corrupt(error.to_string()))?;
        if state.format != STATE_FORMAT {
            return Err(corrupt(format!(
                "format {} (this build reads {STATE_FORMAT})",
                state.format
            )));
        }
        Ok(Some(state))
    }

    pub fn store(&self, directory: &Path) -> Result<(), StateError> {
        let path = directory.join(STATE_FILE);
        let document = serde_json::to_string_pretty(self).expect("state serialises");
        let text = format!("{document}\n{:08x}\n", crc32c::crc32c(document.as_bytes()));
        drgw_io::fsutil::write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|source| StateError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_damage_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        assert!(GroupState::load(directory.path()).unwrap().is_none());
        let state = GroupState {
            format: STATE_FORMAT,
            peer: "site-a".into(),
            group: 3,
            name: "shop".into(),
            disks: vec![ReplicaDisk {
                id: 1,
                name: "db".into(),
                size_bytes: 1 << 30,
                path: "/mnt/retention/x/disk-1.img".into(),
            }],
            applied_through: 77,
            redo_applied: 5,
            created_unix_s: 1,
        };
        state.store(directory.path()).unwrap();
        assert_eq!(GroupState::load(directory.path()).unwrap(), Some(state));
        let path = directory.path().join(STATE_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"applied_through\": 77", "\"applied_through\": 78"),
        )
        .unwrap();
        let error = GroupState::load(directory.path()).unwrap_err();
        assert!(error.to_string().contains("CRC32C"), "{error}");
    }
}
