//! Byte-range locks for one disk. A write holds its range across "write the
//! primary, queue it for the gateway", and resync holds a grain across "read
//! the primary, queue it", so that for any byte the order of the queue is the
//! order the primary saw. Non-overlapping ranges never wait for each other.

use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
pub struct RangeLock {
    held: Mutex<Vec<(u64, u64, u64)>>, // (start, end, ticket)
    released: Notify,
    tickets: std::sync::atomic::AtomicU64,
}

pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    ticket: u64,
}

impl RangeLock {
    /// Waits until no held range overlaps `start..end`, then holds it.
    pub async fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let ticket = self
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                if !held.iter().any(|&(s, e, _)| s < end && start < e) {
                    held.push((start, end, ticket));
                    return RangeGuard { lock: self, ticket };
                }
            }
            notified.await;
        }
    }

    pub fn held_count(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.lock.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|&(_, _, ticket)| ticket != self.ticket);
        drop(held);
        self.lock.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn overlapping_ranges_wait_disjoint_ones_do_not() {
        let lock = Arc::new(RangeLock::default());
        let first = lock.lock(0, 100).await;
        // Disjoint: immediate.
        let disjoint = tokio::time::timeout(Duration::from_millis(100), lock.lock(100, 200)).await;
        assert!(disjoint.is_ok());
        drop(disjoint);
        // Overlapping: waits until the first is released.
        let waiter = {
            let lock = lock.clone();
            tokio::spawn(async move {
                let _guard = lock.lock(50, 60).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lock.held_count(), 0);
    }
}
