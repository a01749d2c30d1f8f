use super::pinning::{PinnedClientVerifier, PinnedServerVerifier};
use super::{Fingerprint, Identity, PinStore, TlsError};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};
use std::sync::Arc;

/// The name a client puts in SNI. Certificates are pinned, not matched by
/// name, so it is fixed and carries no meaning.
pub const SERVER_NAME: &str = "drgw";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's configuration: TLS 1.3 only, a client certificate is
/// mandatory and must be pinned in `pins` (consulted at each handshake).
pub fn server_config(
    identity: &Identity,
    pins: Arc<PinStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedClientVerifier {
        pins,
        provider: provider.clone(),
    });
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.certificate()], identity.private_key())?;
    Ok(Arc::new(config))
}

/// A dialer's configuration for one peer: TLS 1.3 only, presents our
/// certificate, and accepts only the server certificate pinned for that peer.
pub fn client_config(
    identity: &Identity,
    expected: Fingerprint,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier {
        expected,
        provider: provider.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.certificate()], identity.private_key())?;
    Ok(Arc::new(config))
}
