use std::path::PathBuf;

/// Errors of the TLS identity and configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid PEM {what}")]
    BadPem { path: PathBuf, what: &'static str },
    #[error("{path} has mode {mode:o}; a private key must not be readable by group or others (expected 0600)")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("cannot generate the appliance certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("rustls rejected the configuration: {0}")]
    Rustls(#[from] rustls::Error),
}
