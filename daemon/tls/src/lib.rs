//! TLS for the replication listener: the appliance's own identity, peer
//! pinning by certificate fingerprint, the rustls configurations, and
//! dialing a pinned peer with backoff (`dial`, `Backoff`).
//!
//! Only TLS 1.3 is offered and accepted, both sides present a certificate,
//! and a certificate is trusted when, and only when, its SHA-256 fingerprint
//! is pinned. There is no certificate authority: pairing is an operator
//! comparing two fingerprints.

mod dial;
mod error;
mod fingerprint;
mod identity;
mod pinning;
mod refusal;
mod setup;

pub use dial::{dial, Backoff, DialError, CONNECT_TIMEOUT};
pub use error::TlsError;
pub use fingerprint::{Fingerprint, FingerprintParseError};
pub use identity::Identity;
pub use pinning::{PeerKind, PinStore, PinnedPeer};
pub use refusal::{describe_handshake_error, peer_fingerprint};
pub use setup::{client_config, server_config, SERVER_NAME};
