use super::Fingerprint;
use rustls::{
    AlertDescription, CertificateError, CommonState, Error, InvalidMessage, OtherError,
    PeerIncompatible,
};
use std::io;

/// The fingerprint of the certificate the other side presented, once the
/// handshake has completed.
pub fn peer_fingerprint(state: &CommonState) -> Option<Fingerprint> {
    let certificates = state.peer_certificates()?;
    certificates
        .first()
        .map(|der| Fingerprint::of_certificate(der))
}

/// Turns a failed handshake into the reason an operator reads in the log:
/// plain TCP, an old TLS version, a missing or unpinned certificate.
pub fn describe_handshake_error(error: &io::Error) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof => "connection closed during the TLS handshake".into(),
            io::ErrorKind::TimedOut => "TLS handshake timed out".into(),
            _ => format!("TLS handshake failed: {error}"),
        };
    };
    match tls {
        Error::InvalidMessage(InvalidMessage::InvalidContentType)
        | Error::InvalidMessage(InvalidMessage::UnknownProtocolVersion) => {
            "not a TLS client (plain TCP or another protocol)".into()
        }
        Error::PeerIncompatible(PeerIncompatible::SupportedVersionsExtensionRequired)
        | Error::PeerIncompatible(PeerIncompatible::Tls13RequiredForQuic)
        | Error::PeerIncompatible(PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig) => {
            format!("peer does not offer TLS 1.3, the only version accepted ({tls})")
        }
        Error::NoCertificatesPresented => {
            "peer presented no certificate (mutual TLS is required)".into()
        }
        Error::InvalidCertificate(CertificateError::Other(OtherError(reason))) => {
            format!("certificate refused: {reason}")
        }
        Error::InvalidCertificate(reason) => format!("certificate refused: {reason:?}"),
        Error::AlertReceived(AlertDescription::BadCertificate)
        | Error::AlertReceived(AlertDescription::CertificateUnknown)
        | Error::AlertReceived(AlertDescription::UnknownCA) => {
            "the other side refused our certificate (are we paired there?)".into()
        }
        Error::AlertReceived(AlertDescription::ProtocolVersion) => {
            "the other side does not speak TLS 1.3".into()
        }
        other => format!("TLS handshake failed: {other}"),
    }
}
