//! Dialing a pinned peer, written once for the link's dialer (appliance to
//! appliance) and the tap (tap to gateway): TCP with a timeout, then the
//! TLS handshake that accepts the peer only with its pinned fingerprint;
//! and the capped exponential backoff, with jitter, between tries.

use super::{client_config, describe_handshake_error, Fingerprint, Identity, SERVER_NAME};
use rustls::pki_types::ServerName;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long the TCP connect, and then the handshake, may each take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("peer address {address} is not HOST:PORT")]
    Address { address: String },
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("connecting to {address} timed out")]
    Timeout { address: String },
    /// The handshake failed: our certificate refused there, theirs not the
    /// pinned one, or no common TLS; the text says which.
    #[error("{0}")]
    Refused(String),
}

/// Connects to `address` and completes the TLS handshake with `identity`,
/// accepting only the certificate of `fingerprint`. Returns the stream and
/// the remote address it reached.
pub async fn dial(
    address: &str,
    identity: &Identity,
    fingerprint: Fingerprint,
) -> Result<(TlsStream<TcpStream>, String), DialError> {
    let address = address.to_string();
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) if source.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(DialError::Address { address })
        }
        Ok(Err(source)) => return Err(DialError::Connect { address, source }),
        Err(_) => return Err(DialError::Timeout { address }),
    };
    let _ = tcp.set_nodelay(true);
    let remote = tcp.peer_addr().map(|a| a.to_string()).unwrap_or(address);
    let config = client_config(identity, fingerprint)
        .map_err(|error| DialError::Refused(error.to_string()))?;
    let server_name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
    let handshake = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config).connect(server_name, tcp),
    )
    .await;
    match handshake {
        Ok(Ok(stream)) => Ok((stream, remote)),
        Ok(Err(error)) => Err(DialError::Refused(describe_handshake_error(&error))),
        Err(_) => Err(DialError::Timeout { address: remote }),
    }
}

/// The wait between tries: doubles from `min` after each failure up to a
/// ceiling, back to `min` after a success, spread by up to a quarter so
/// that many clients restarted together do not knock in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    delay: Duration,
}

impl Backoff {
    pub fn new(min: Duration) -> Backoff {
        Backoff { min, delay: min }
    }

    /// The last try worked: the next cut starts from the shortest wait.
    pub fn reset(&mut self) {
        self.delay = self.min;
    }

    /// The wait before the next try; the one after is twice as long, up to
    /// `ceiling` (taken each time: it may be reloaded; never below `min`).
    pub fn next_wait(&mut self, ceiling: Duration) -> Duration {
        let ceiling = ceiling.max(self.min);
        let delay = self.delay.min(ceiling);
        self.delay = (delay * 2).min(ceiling);
        jitter(delay)
    }
}

/// `delay` plus up to a quarter of it, at random.
fn jitter(delay: Duration) -> Duration {
    let spread = delay.as_millis() as u64 / 4;
    // A fresh RandomState is randomly keyed: its hash of nothing is noise.
    let noise = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    delay + Duration::from_millis(noise % (spread + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_ceiling_and_resets() {
        let min = Duration::from_millis(250);
        let mut backoff = Backoff::new(min);
        let ceiling = Duration::from_secs(2);
        let waits: Vec<Duration> = (0..6).map(|_| backoff.next_wait(ceiling)).collect();
        let bases = [250, 500, 1000, 2000, 2000, 2000];
        for (wait, base) in waits.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *wait >= base && *wait <= base + base / 4,
                "{wait:?} for {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_wait(ceiling) <= min + min / 4);
        // A ceiling below the minimum is the minimum.
        assert!(backoff.next_wait(Duration::ZERO) <= min + min / 4);
    }

    #[tokio::test]
    async fn a_closed_port_and_a_bad_address_say_so() {
        let directory = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(directory.path(), "test").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let fingerprint = identity.fingerprint();
        let refused = dial(&address, &identity, fingerprint).await.unwrap_err();
        assert!(matches!(refused, DialError::Connect { .. }), "{refused}");
        let bad = dial("no-port-here", &identity, fingerprint)
            .await
            .unwrap_err();
        assert!(matches!(bad, DialError::Address { .. }), "{bad}");
    }
}
