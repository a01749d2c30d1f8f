//! The 9443 listener: TLS 1.3 with a mandatory, pinned client certificate.
//! Every refused attempt is logged with its reason and kept for `status`.

use super::registry::Direction;
use super::session::{self, SessionContext};
use crate::appliance::Appliance;
use drgw_tls as tls;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections held open at once (sessions and handshakes together).
pub const CONNECTIONS_MAX: usize = 256;
/// Time allowed for the TLS handshake of an incoming connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Accepts connections until `cancel`; each runs in a task of `tracker`.
pub async fn run_listener(
    listener: TcpListener,
    appliance: Arc<Appliance>,
    tls_config: Arc<rustls::ServerConfig>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls_config);
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refuse(
                &appliance,
                remote,
                format!("too many connections ({CONNECTIONS_MAX})"),
            );
            continue;
        };
        let connection = Connection {
            appliance: appliance.clone(),
            acceptor: acceptor.clone(),
            cancel: cancel.child_token(),
            _permit: permit,
        };
        tracker.spawn(connection.serve(tcp, remote));
    }
    tracing::info!("listener stopped accepting");
}

fn refuse(appliance: &Appliance, remote: SocketAddr, reason: String) {
    tracing::warn!(%remote, %reason, "refused connection");
    appliance.refusals.record(remote.to_string(), reason);
}

struct Connection {
    appliance: Arc<Appliance>,
    acceptor: TlsAcceptor,
    cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(self, tcp: TcpStream, remote: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let handshake = tokio::select! {
            _ = self.cancel.cancelled() => return,
            result = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)) => result,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return refuse(
                    &self.appliance,
                    remote,
                    tls::describe_handshake_error(&error),
                )
            }
            Err(_) => return refuse(&self.appliance, remote, "TLS handshake timed out".into()),
        };
        let fingerprint = tls::peer_fingerprint(stream.get_ref().1);
        // The verifier admitted the certificate; it may have been unpaired
        // since, so look it up again.
        let Some(peer) = fingerprint.and_then(|found| self.appliance.pins.lookup(&found)) else {
            return refuse(
                &self.appliance,
                remote,
                "peer was unpaired during the handshake".into(),
            );
        };
        tracing::debug!(%remote, peer = %peer.name, "TLS handshake done");
        let context = SessionContext {
            appliance: self.appliance.clone(),
            peer,
            direction: Direction::Inbound,
            remote_address: remote.to_string(),
            cancel: self.cancel.clone(),
        };
        let _ = session::run(stream, context).await;
    }
}
