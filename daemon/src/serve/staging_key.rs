//! The key that encrypts staged data at rest (`staging.encrypt = true`):
//! 32 random bytes in `<state_dir>/staging.key`, mode 0600, generated at
//! first start and never replaced (records staged under it need it).

use super::ServeError;
use aes_gcm::aead::{KeyInit, OsRng};
use drgw_io::fsutil;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn load_or_create(state_dir: &Path) -> Result<[u8; 32], ServeError> {
    let path = state_dir.join("staging.key");
    let failure = |reason: String| ServeError::StagingKey {
        path: path.clone(),
        reason,
    };
    if !path.exists() {
        let key = aes_gcm::Aes256Gcm::generate_key(OsRng);
        fsutil::write_atomic(&path, key.as_slice(), 0o600).map_err(|e| failure(e.to_string()))?;
        tracing::info!(path = %path.display(), "generated the staging encryption key");
    }
    let mode = std::fs::metadata(&path)
        .map_err(|e| failure(e.to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(failure(format!(
            "mode {:o}: must not be readable by group or others (0600)",
            mode & 0o777
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| failure(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| failure(format!("{} bytes; a key is 32", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_and_checked() {
        let state = tempfile::tempdir().unwrap();
        let first = load_or_create(state.path()).unwrap();
        assert_eq!(load_or_create(state.path()).unwrap(), first);
        assert_ne!(first, [0u8; 32]);
        let path = state.path().join("staging.key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create(state.path()).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert!(load_or_create(state.path())
            .unwrap_err()
            .to_string()
            .contains("5 bytes"));
    }
}
