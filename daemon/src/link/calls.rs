//! Requests this gateway sends the paired appliance on the link and waits
//! for an answer to: SUM_REQUEST, answered by SUMS (resync). Each appliance
//! session registers a channel here; a request goes to the session of its
//! peer, which keeps the answer's sender until the SUMS comes back. A
//! session that ends drops its senders, so a waiting request fails at once.

use crate::wire::{SumRequest, Sums};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the peer may take to answer one SUM_REQUEST.
pub const SUMS_TIMEOUT: Duration = Duration::from_secs(120);
const QUEUE: usize = 16;

pub struct PeerCall {
    pub request: SumRequest,
    pub answer: oneshot::Sender<Sums>,
}

#[derive(Default)]
pub struct PeerCalls {
    sessions: Mutex<HashMap<String, (u64, mpsc::Sender<PeerCall>)>>,
    counter: AtomicU64,
}

impl PeerCalls {
    /// A session with `peer` starts taking requests.
    pub fn register(&self, peer: &str) -> (u64, mpsc::Receiver<PeerCall>) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let number = self.counter.fetch_add(1, Ordering::Relaxed);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.to_string(), (number, sender));
        (number, receiver)
    }

    /// Session `number` with `peer` ended (a newer one stays registered).
    pub fn unregister(&self, peer: &str, number: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.get(peer).is_some_and(|(n, _)| *n == number) {
            sessions.remove(peer);
        }
    }

    /// A number for a request, unique in this process.
    pub fn request_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Asks `peer` for block sums; the error says why there are none.
    pub async fn sums(&self, peer: &str, request: SumRequest) -> Result<Vec<u128>, String> {
        let sender = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .map(|(_, sender)| sender.clone())
            .ok_or_else(|| format!("no link to {peer}"))?;
        let expected = request.blocks() as usize;
        let (answer, answered) = oneshot::channel();
        sender
            .send(PeerCall { request, answer })
            .await
            .map_err(|_| format!("the link to {peer} closed"))?;
        let sums = match tokio::time::timeout(SUMS_TIMEOUT, answered).await {
            Ok(Ok(sums)) => sums,
            Ok(Err(_)) => return Err(format!("the link to {peer} closed")),
            Err(_) => {
                return Err(format!(
                    "{peer} did not answer block sums within {} s",
                    SUMS_TIMEOUT.as_secs()
                ))
            }
        };
        if !sums.error.is_empty() {
            return Err(format!("{peer}: {}", sums.error));
        }
        if sums.sums.len() != expected {
            return Err(format!(
                "{peer} answered {} sums for {expected} blocks",
                sums.sums.len()
            ));
        }
        Ok(sums.sums)
    }
}
