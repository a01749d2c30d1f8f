//! Keeps one outbound link to each paired appliance this side dials, with
//! capped exponential backoff, following pair add/remove as they happen.

use super::registry::{Direction, LinkState};
use super::session::{self, SessionContext};
use crate::appliance::Appliance;
use drgw_tls::{self as tls, Backoff, DialError, Fingerprint, PeerKind, PinnedPeer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const BACKOFF_MIN: Duration = Duration::from_millis(250);

/// Whether this side dials `peer` (see the module doc of `link`).
pub fn dials(own: Fingerprint, peer: &PinnedPeer) -> bool {
    peer.kind == PeerKind::Appliance && peer.address.is_some() && own < peer.fingerprint
}

/// Reconciles the set of dialers with the pinned peers until `cancel`.
pub async fn run_dialers(
    appliance: Arc<Appliance>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let mut pins_version = appliance.pins_version.subscribe();
    let mut running: HashMap<String, (PinnedPeer, CancellationToken)> = HashMap::new();
    loop {
        let own = appliance.identity.fingerprint();
        let pinned = appliance.pins.all();
        running.retain(|name, (peer, token)| {
            let keep = pinned
                .iter()
                .any(|current| current == peer && dials(own, current));
            if !keep {
                tracing::debug!(peer = %name, "dialer stopped");
                token.cancel();
            }
            keep
        });
        for peer in pinned {
            if !dials(own, &peer) {
                if appliance.links.status(&peer.name).is_none() {
                    appliance
                        .links
                        .set_state(&peer.name, LinkState::Waiting, None);
                }
                continue;
            }
            if running.contains_key(&peer.name) {
                continue;
            }
            let token = cancel.child_token();
            tracker.spawn(dial_loop(appliance.clone(), peer.clone(), token.clone()));
            running.insert(peer.name.clone(), (peer, token));
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = pins_version.changed() => if changed.is_err() { break },
        }
    }
}

async fn dial_loop(appliance: Arc<Appliance>, peer: PinnedPeer, cancel: CancellationToken) {
    let mut backoff = Backoff::new(BACKOFF_MIN);
    let mut last_error = String::new();
    loop {
        appliance
            .links
            .set_state(&peer.name, LinkState::Connecting, None);
        let address = peer.address.clone().unwrap_or_default();
        match tls::dial(&address, &appliance.identity, peer.fingerprint).await {
            Ok((stream, remote)) => {
                backoff.reset();
                last_error.clear();
                let context = SessionContext {
                    appliance: appliance.clone(),
                    peer: peer.clone(),
                    direction: Direction::Outbound,
                    remote_address: remote,
                    cancel: cancel.child_token(),
                };
                if let Err(error) = session::run(stream, context).await {
                    // In TLS 1.3 the server judges our certificate after our
                    // side of the handshake is done: its refusal arrives as
                    // an alert on the first read.
                    let (state, text) = classify(&error);
                    if text != last_error {
                        tracing::warn!(peer = %peer.name, reason = %text, "link to peer failed");
                        last_error = text.clone();
                    }
                    appliance.links.set_state(&peer.name, state, Some(text));
                }
            }
            Err(error) => {
                let text = error.to_string();
                let state = match error {
                    DialError::Refused(_) => LinkState::Refused,
                    _ => LinkState::Disconnected,
                };
                if text != last_error {
                    tracing::warn!(peer = %peer.name, reason = %text, "cannot link to peer; retrying");
                    last_error = text.clone();
                }
                appliance.links.set_state(&peer.name, state, Some(text));
            }
        }
        let wait = backoff.next_wait(appliance.settings().connect_retry_max);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn classify(error: &session::SessionError) -> (LinkState, String) {
    use drgw_wire::ReadError;
    if let session::SessionError::Read(ReadError::Io(io)) = error {
        let is_tls = io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if is_tls {
            return (LinkState::Refused, tls::describe_handshake_error(io));
        }
    }
    (LinkState::Disconnected, error.to_string())
}
