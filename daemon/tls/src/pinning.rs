use super::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What a pinned peer is: another appliance (dialed when it has an address)
/// or a tap (only ever accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    Appliance,
    Tap,
}

impl PeerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            PeerKind::Appliance => "appliance",
            PeerKind::Tap => "tap",
        }
    }
}

/// One pinned certificate and what the operator said about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinnedPeer {
    pub name: String,
    pub kind: PeerKind,
    /// `HOST:PORT` of the peer's replication listener; none for taps.
    pub address: Option<String>,
    pub fingerprint: Fingerprint,
    pub added_unix_s: u64,
}

/// The in-memory set of pinned certificates consulted by every handshake.
/// The catalog is the durable copy; this is replaced whenever it changes, so
/// a new pairing takes effect for the next handshake without a restart.
#[derive(Debug, Default)]
pub struct PinStore {
    peers: RwLock<HashMap<Fingerprint, PinnedPeer>>,
}

impl PinStore {
    pub fn new(peers: Vec<PinnedPeer>) -> PinStore {
        let store = PinStore::default();
        store.replace_all(peers);
        store
    }

    pub fn replace_all(&self, peers: Vec<PinnedPeer>) {
        let map = peers
            .into_iter()
            .map(|peer| (peer.fingerprint, peer))
            .collect();
        *self
            .peers
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = map;
    }

    pub fn lookup(&self, fingerprint: &Fingerprint) -> Option<PinnedPeer> {
        let peers = self
            .peers
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        peers.get(fingerprint).cloned()
    }

    pub fn all(&self) -> Vec<PinnedPeer> {
        let peers = self
            .peers
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut list: Vec<PinnedPeer> = peers.values().cloned().collect();
        list.sort_by(|left, right| left.name.cmp(&right.name));
        list
    }
}

/// Why a certificate was refused; carried inside the rustls error so that the
/// log line of the refused handshake names the fingerprint.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("certificate {found} is not pinned (pair it with `drgw pair add`)")]
    NotPinned { found: Fingerprint },
    #[error("certificate {found} is not the one pinned for this peer ({expected})")]
    WrongPeer {
        found: Fingerprint,
        expected: Fingerprint,
    },
}

fn refuse(error: PinError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Server side: a client is admitted when its certificate is pinned.
#[derive(Debug)]
pub(super) struct PinnedClientVerifier {
    pub(super) pins: Arc<PinStore>,
    pub(super) provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let found = Fingerprint::of_certificate(end_entity);
        match self.pins.lookup(&found) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(refuse(PinError::NotPinned { found })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, certificate, signature, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, certificate, signature, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client side: the server must present exactly the certificate pinned for
/// the peer being dialed; any other pinned certificate is refused too.
#[derive(Debug)]
pub(super) struct PinnedServerVerifier {
    pub(super) expected: Fingerprint,
    pub(super) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = Fingerprint::of_certificate(end_entity);
        if found == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(refuse(PinError::WrongPeer {
                found,
                expected: self.expected,
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, certificate, signature, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, certificate, signature, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
