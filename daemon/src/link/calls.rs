//! Requests this gateway sends the paired appliance on the link and waits
//! for an answer to: SUM_REQUEST, answered by SUMS (resync), and REPROTECT,
//! answered by REPROTECTED. Each appliance session registers a channel
//! here; a request goes to the session of its peer, which keeps the
//! answer's sender until the answer comes back. A session that ends drops
//! its senders, so a waiting request fails at once.

use drgw_wire::{Failback, FailedBack, Reprotect, Reprotected, SumRequest, Sums};
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

    /// Sends the call `make` builds to `peer`'s session and waits up to
    /// `limit` for the answer; the error says why there is none.
    async fn ask<T>(
        &self,
        peer: &str,
        what: &str,
        limit: Duration,
        make: impl FnOnce(oneshot::Sender<T>) -> PeerCall,
    ) -> Result<T, String> {
        let sender = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .map(|(_, sender)| sender.clone())
            .ok_or_else(|| format!("no link to {peer}"))?;
        let (answer, answered) = oneshot::channel();
        sender
            .send(make(answer))
            .await
            .map_err(|_| format!("the link to {peer} closed"))?;
        match tokio::time::timeout(limit, answered).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(format!(
                "the link to {peer} closed before it answered {what}"
            )),
            Err(_) => Err(format!(
                "{peer} did not answer {what} within {} s",
                limit.as_secs()
            )),
        }
    }

    /// Asks `peer` to replicate a group back here; the error says why it
    /// did not answer (a refusal is an answer, with its `error`).
    pub async fn reprotect(&self, peer: &str, request: Reprotect) -> Result<Reprotected, String> {
        self.ask(peer, "REPROTECT", REPROTECT_TIMEOUT, |answer| {
            PeerCall::Reprotect { request, answer }
        })
        .await
    }

    /// Sends a failback step to `peer`; the answer's sequence, or why not.
    pub async fn failback(&self, peer: &str, request: Failback) -> Result<u64, String> {
        let answer = self
            .ask(peer, "FAILBACK", REPROTECT_TIMEOUT, |answer| {
                PeerCall::Failback { request, answer }
            })
            .await?;
        if !answer.error.is_empty() {
            return Err(format!("{peer} refused: {}", answer.error));
        }
        Ok(answer.sequence)
    }

    /// Asks `peer` for block sums; the error says why there are none.
    pub async fn sums(&self, peer: &str, request: SumRequest) -> Result<Vec<u128>, String> {
        let expected = request.blocks() as usize;
        let sums = self
            .ask(peer, "block sums", SUMS_TIMEOUT, |answer| PeerCall::Sums {
                request,
                answer,
            })
            .await?;
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
