//! Requests this gateway sends the paired appliance on the link and waits
//! for an answer to: SUM_REQUEST, answered by SUMS (resync), and REPROTECT,
//! answered by REPROTECTED. Each appliance session registers a channel
//! here; a request goes to the session of its peer, which keeps the
//! answer's sender until the answer comes back. A session that ends drops
//! its senders, so a waiting request fails at once.

use crate::wire::{Failback, FailedBack, Reprotect, Reprotected, SumRequest, Sums};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the peer may take to answer one SUM_REQUEST.
pub const SUMS_TIMEOUT: Duration = Duration::from_secs(120);
const QUEUE: usize = 16;

/// How long the peer may take to answer REPROTECT (it marks its change
/// maps and protects the group before answering).
pub const REPROTECT_TIMEOUT: Duration = Duration::from_secs(120);

pub enum PeerCall {
    Sums {
        request: SumRequest,
        answer: oneshot::Sender<Sums>,
    },
    Reprotect {
        request: Reprotect,
        answer: oneshot::Sender<Reprotected>,
    },
    Failback {
        request: Failback,
        answer: oneshot::Sender<FailedBack>,
    },
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

    fn sender(&self, peer: &str) -> Result<mpsc::Sender<PeerCall>, String> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .map(|(_, sender)| sender.clone())
            .ok_or_else(|| format!("no link to {peer}"))
    }

    /// Asks `peer` to replicate a group back here; the error says why it
    /// did not answer (a refusal is an answer, with its `error`).
    pub async fn reprotect(&self, peer: &str, request: Reprotect) -> Result<Reprotected, String> {
        let sender = self.sender(peer)?;
        let (answer, answered) = oneshot::channel();
        sender
            .send(PeerCall::Reprotect { request, answer })
            .await
            .map_err(|_| format!("the link to {peer} closed"))?;
        match tokio::time::timeout(REPROTECT_TIMEOUT, answered).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(format!("the link to {peer} closed before it answered")),
            Err(_) => Err(format!(
                "{peer} did not answer within {} s",
                REPROTECT_TIMEOUT.as_secs()
            )),
        }
    }

    /// Sends a failback step to `peer`; the answer's sequence, or why not.
    pub async fn failback(&self, peer: &str, request: Failback) -> Result<u64, String> {
        let sender = self.sender(peer)?;
        let (answer, answered) = oneshot::channel();
        sender
            .send(PeerCall::Failback { request, answer })
            .await
            .map_err(|_| format!("the link to {peer} closed"))?;
        match tokio::time::timeout(REPROTECT_TIMEOUT, answered).await {
            Ok(Ok(answer)) if answer.error.is_empty() => Ok(answer.sequence),
            Ok(Ok(answer)) => Err(format!("{peer} refused: {}", answer.error)),
            Ok(Err(_)) => Err(format!("the link to {peer} closed before it answered")),
            Err(_) => Err(format!(
                "{peer} did not answer within {} s",
                REPROTECT_TIMEOUT.as_secs()
            )),
        }
    }

    /// Asks `peer` for block sums; the error says why there are none.
    pub async fn sums(&self, peer: &str, request: SumRequest) -> Result<Vec<u128>, String> {
        let sender = self.sender(peer)?;
        let expected = request.blocks() as usize;
        let (answer, answered) = oneshot::channel();
        sender
            .send(PeerCall::Sums { request, answer })
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
