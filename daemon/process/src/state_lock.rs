//! One daemon per state directory: an exclusive flock on `<state_dir>/lock`,
//! held for the life of the process and released by the kernel on any exit.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another drgw holds {path}: one daemon per state_dir")]
    Held { path: PathBuf },
}

pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| LockError::Held { path })?;
        Ok(StateLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_release() {
        let state = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(state.path()).unwrap();
        assert!(matches!(
            StateLock::acquire(state.path()),
            Err(LockError::Held { .. })
        ));
        drop(first);
        StateLock::acquire(state.path()).unwrap();
    }
}
