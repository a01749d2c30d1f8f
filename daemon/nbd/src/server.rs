//! [`NbdServer`]: a TCP listener serving a set of named exports, one task
//! per connection (handshake, then transmission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::NbdError;
use super::export::{Export, Limits};
use super::handshake::negotiate;
use super::transmission::{transmit, Session};

/// Time a client has to finish the handshake (all options).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of descriptors, say) before retrying.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Serves a set of exports over NBD (fixed newstyle). Exports can be added
/// and removed while it runs; removing one ends its connections.
pub struct NbdServer {
    exports: std::sync::RwLock<Vec<Served>>,
    limits: Limits,
    connections: Arc<Semaphore>,
    counters: Counters,
}

struct Served {
    export: Export,
    /// Cancelled when the export is removed: its connections end.
    removed: CancellationToken,
}

/// Connection counters since the server was made (for status and tests).
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// A snapshot of the server's connection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted by [`NbdServer::serve`] and given a task.
    pub connections_accepted: u64,
    /// Connections closed at accept because `connections_max` were open.
    pub connections_refused: u64,
    /// Connections being served now.
    pub connections_open: usize,
}

impl NbdServer {
    /// `limits` are normalized (see [`Limits::normalized`]). Of exports
    /// with the same name only the first is served (config validation is
    /// expected to refuse duplicates before this).
    pub fn new(exports: Vec<Export>, limits: Limits) -> NbdServer {
        let limits = limits.normalized();
        let mut unique: Vec<Served> = Vec::with_capacity(exports.len());
        for export in exports {
            if unique.iter().any(|kept| kept.export.name == export.name) {
                tracing::warn!(name = %export.name, "duplicate nbd export name ignored");
                continue;
            }
            unique.push(Served {
                export,
                removed: CancellationToken::new(),
            });
        }
        NbdServer {
            exports: std::sync::RwLock::new(unique),
            limits,
            connections: Arc::new(Semaphore::new(limits.connections_max)),
            counters: Counters::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The exports served now.
    pub fn exports(&self) -> Vec<Export> {
        self.lock_exports()
            .iter()
            .map(|served| served.export.clone())
            .collect()
    }

    fn lock_exports(&self) -> std::sync::RwLockReadGuard<'_, Vec<Served>> {
        self.exports.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `export` to new connections; false (and nothing changes) when
    /// an export of that name exists.
    pub fn add_export(&self, export: Export) -> bool {
        let mut exports = self.exports.write().unwrap_or_else(|p| p.into_inner());
        if exports
            .iter()
            .any(|served| served.export.name == export.name)
        {
            return false;
        }
        exports.push(Served {
            export,
            removed: CancellationToken::new(),
        });
        true
    }

    /// Stops serving the export `name` and ends its connections (requests in
    /// flight finish first); returns it, or `None` if there is none.
    pub fn remove_export(&self, name: &str) -> Option<Export> {
        let mut exports = self.exports.write().unwrap_or_else(|p| p.into_inner());
        let position = exports.iter().position(|s| s.export.name == name)?;
        let served = exports.remove(position);
        served.removed.cancel();
        Some(served.export)
    }

    pub fn stats(&self) -> ServerStats {
        ServerStats {
            connections_accepted: self.counters.accepted.load(Ordering::Relaxed),
            connections_refused: self.counters.refused.load(Ordering::Relaxed),
            connections_open: self.limits.connections_max - self.connections.available_permits(),
        }
    }

    /// Serves connections until `cancel`; each connection in a task of
    /// `tracker`. Beyond `connections_max` a new connection is closed at
    /// once. On cancel, connections stop reading requests, finish the
    /// ones in flight, and close.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!("nbd accept failed: {error}");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                let limit = self.limits.connections_max;
                tracing::warn!(%peer, limit, "nbd connection refused: too many connections");
                continue;
            };
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%peer, "nbd TCP_NODELAY not set: {error}");
            }
            let server = Arc::clone(&self);
            let cancel = cancel.child_token();
            tracker.spawn(async move {
                let _permit = permit;
                match server.serve_until(stream, cancel).await {
                    Ok(()) => tracing::debug!(%peer, "nbd connection closed"),
                    Err(error) => tracing::info!(%peer, "nbd connection ended: {error}"),
                }
            });
        }
    }

    /// One already-accepted connection (any AsyncRead+AsyncWrite), for
    /// tests and for TLS later. Not counted against `connections_max`.
    pub async fn serve_connection<S>(self: Arc<Self>, stream: S) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_until(stream, CancellationToken::new()).await
    }

    async fn serve_until<S>(
        self: Arc<Self>,
        mut stream: S,
        cancel: CancellationToken,
    ) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let exports = self.exports();
        let handshake = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            negotiate(&mut stream, &exports, &self.limits),
        );
        let negotiated = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            negotiated = handshake => negotiated.map_err(|_| NbdError::HandshakeTimeout {
                seconds: HANDSHAKE_TIMEOUT.as_secs(),
            })??,
        };
        let Some(negotiated) = negotiated else {
            return Ok(());
        };
        let removed = self
            .lock_exports()
            .iter()
            .find(|served| served.export.name == negotiated.export.name)
            .map(|served| served.removed.clone());
        let Some(removed) = removed else {
            // Removed during the handshake.
            return Ok(());
        };
        let cancel = {
            let both = cancel.child_token();
            let child = both.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = removed.cancelled() => child.cancel(),
                    _ = child.cancelled() => {}
                }
            });
            both
        };
        tracing::debug!(export = %negotiated.export.name, "nbd transmission started");
        let result = transmit(
            stream,
            Session::new(negotiated, self.limits),
            cancel.clone(),
        )
        .await;
        cancel.cancel();
        result
    }
}
