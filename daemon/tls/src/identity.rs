use super::{Fingerprint, TlsError};
use drgw_io::fsutil;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The appliance's own TLS identity: a self-signed certificate and its key,
/// generated at first start under `<state_dir>/identity/`.
#[derive(Debug)]
pub struct Identity {
    certificate: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
    fingerprint: Fingerprint,
    certificate_path: PathBuf,
}

const CERTIFICATE_FILE: &str = "certificate.pem";
const KEY_FILE: &str = "key.pem";

impl Identity {
    /// Loads the identity from `<state_dir>/identity`, generating it when
    /// neither file exists. A half-present identity (one file without the
    /// other) is an error, never silently replaced: peers pinned the old one.
    pub fn load_or_create(state_dir: &Path, subject_name: &str) -> Result<Identity, TlsError> {
        let directory = state_dir.join("identity");
        let certificate_path = directory.join(CERTIFICATE_FILE);
        let key_path = directory.join(KEY_FILE);
        if !certificate_path.exists() && !key_path.exists() {
            fsutil::create_private_dir(&directory, 0o700).map_err(|source| TlsError::Io {
                action: "create",
                path: directory.clone(),
                source,
            })?;
            generate(&certificate_path, &key_path, subject_name)?;
        }
        load(&certificate_path, &key_path)
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn certificate(&self) -> CertificateDer<'static> {
        self.certificate.clone()
    }

    pub fn certificate_path(&self) -> &Path {
        &self.certificate_path
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

fn generate(certificate_path: &Path, key_path: &Path, subject_name: &str) -> Result<(), TlsError> {
    let certified = rcgen::generate_simple_self_signed(vec![subject_name.to_string()])?;
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io {
            action: "write",
            path,
            source,
        }
    };
    // Key first: a crash between the two writes leaves a key without a
    // certificate, which load() reports instead of regenerating.
    fsutil::write_atomic(
        key_path,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )
    .map_err(io_error(key_path))?;
    fsutil::write_atomic(certificate_path, certified.cert.pem().as_bytes(), 0o644)
        .map_err(io_error(certificate_path))?;
    tracing::info!(certificate = %certificate_path.display(), "generated the appliance identity");
    Ok(())
}

fn load(certificate_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|source| TlsError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })
    };
    let key_mode = fs::metadata(key_path)
        .map_err(|source| TlsError::Io {
            action: "stat",
            path: key_path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if key_mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: key_path.to_path_buf(),
            mode: key_mode & 0o777,
        });
    }
    let certificate =
        CertificateDer::from_pem_slice(&read(certificate_path)?).map_err(|_| TlsError::BadPem {
            path: certificate_path.to_path_buf(),
            what: "certificate",
        })?;
    let key =
        PrivatePkcs8KeyDer::from_pem_slice(&read(key_path)?).map_err(|_| TlsError::BadPem {
            path: key_path.to_path_buf(),
            what: "PKCS#8 private key",
        })?;
    let fingerprint = Fingerprint::of_certificate(&certificate);
    Ok(Identity {
        certificate,
        key_pkcs8: key.secret_pkcs8_der().to_vec(),
        fingerprint,
        certificate_path: certificate_path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reloaded() {
        let state = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(state.path(), "drgw-test").unwrap();
        let second = Identity::load_or_create(state.path(), "drgw-test").unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        let key_mode = fs::metadata(state.path().join("identity/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
    }

    #[test]
    fn loose_key_permissions_refused() {
        let state = tempfile::tempdir().unwrap();
        Identity::load_or_create(state.path(), "drgw-test").unwrap();
        let key = state.path().join("identity/key.pem");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let error = Identity::load_or_create(state.path(), "drgw-test").unwrap_err();
        assert!(
            matches!(error, TlsError::KeyPermissions { mode: 0o644, .. }),
            "{error}"
        );
    }

    #[test]
    fn missing_certificate_is_not_regenerated() {
        let state = tempfile::tempdir().unwrap();
        Identity::load_or_create(state.path(), "drgw-test").unwrap();
        fs::remove_file(state.path().join("identity/certificate.pem")).unwrap();
        let error = Identity::load_or_create(state.path(), "drgw-test").unwrap_err();
        assert!(
            matches!(error, TlsError::Io { action: "read", .. }),
            "{error}"
        );
    }

    #[test]
    fn corrupt_certificate_reported() {
        let state = tempfile::tempdir().unwrap();
        Identity::load_or_create(state.path(), "drgw-test").unwrap();
        fs::write(state.path().join("identity/certificate.pem"), b"garbage").unwrap();
        let error = Identity::load_or_create(state.path(), "drgw-test").unwrap_err();
        assert!(matches!(error, TlsError::BadPem { .. }), "{error}");
    }
}
