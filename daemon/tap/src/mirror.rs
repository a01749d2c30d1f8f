//! Mirror-target disks (`mode = "mirror"`): an NBD export with no primary
//! disk behind it, for QEMU's `blockdev-mirror` with `copy-mode:
//! write-blocking`. QEMU keeps the VM's own disk; every write it mirrors
//! here is forwarded to the gateway and replied to only once the gateway
//! has staged it. With no primary and no dirty map there is nothing to fall
//! back to: a request the gateway cannot take in time fails with EIO, and
//! QEMU's mirror job reports it (docs/tap-config.md, "Mirror disks").

use super::forwarder::{Forwarder, Item, Payload};
use drgw_nbd::{BlockBackend, BoxFuture};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long a request waits for the link to the gateway (at tap start, or
/// across a reconnect) before it fails with EIO.
pub const LINK_WAIT: Duration = Duration::from_secs(10);
const LINK_POLL: Duration = Duration::from_millis(20);
/// Largest zero run forwarded as one record (as for primary-backed disks).
const ZERO_RECORD_BYTES_MAX: u64 = 4 << 20;

/// One mirror-target disk: a name and size for ATTACH, and its figures.
#[derive(Debug, Default)]
pub struct MirrorDisk {
    pub name: String,
    pub size_bytes: u64,
    /// Bytes of WRITE and WRITE_ZEROES acknowledged by the gateway.
    pub staged_bytes: AtomicU64,
    /// Requests that failed with EIO (gateway unreachable for LINK_WAIT).
    pub failed_requests: AtomicU64,
    /// Forwards sent again after the link broke under them.
    pub retried_forwards: AtomicU64,
    /// READs answered with EIO (the tap holds no data to read).
    pub refused_reads: AtomicU64,
}

/// The NBD face of a [`MirrorDisk`].
pub struct MirrorBackend {
    /// The disk's number on the link (after the primary-backed disks).
    pub number: u32,
    pub disk: Arc<MirrorDisk>,
    pub forwarder: Weak<Forwarder>,
    /// How long a request waits for a link: [`LINK_WAIT`].
    pub link_wait: Duration,
}

fn unavailable(why: &str) -> io::Error {
    io::Error::other(format!("mirror target: {why}"))
}

impl MirrorBackend {
    /// Forwards one record and waits for the gateway's ACK. A forward lost
    /// to a broken link is sent again (the client has no reply yet, so a
    /// repeat cannot reorder anything it relies on) until `LINK_WAIT` has
    /// passed without a link (`link_wait`); then EIO.
    async fn forward(&self, payload: impl Fn() -> Payload) -> io::Result<()> {
        let mut deadline = Instant::now() + self.link_wait;
        let mut attempt = 0u32;
        loop {
            let forwarder = self
                .forwarder
                .upgrade()
                .ok_or_else(|| unavailable("the tap is stopping"))?;
            if forwarder.connected() {
                let (waiter, acknowledged) = tokio::sync::oneshot::channel();
                let item = Item {
                    disk: self.number,
                    payload: payload(),
                    waiter: Some(waiter),
                };
                if attempt > 0 {
                    self.disk.retried_forwards.fetch_add(1, Ordering::Relaxed);
                }
                attempt += 1;
                let queued = forwarder.push_waiting(item).await.is_ok();
                drop(forwarder);
                if queued && acknowledged.await == Ok(true) {
                    return Ok(());
                }
                // The link broke under it: wait for the next one from now.
                deadline = Instant::now() + self.link_wait;
            } else {
                drop(forwarder);
            }
            if Instant::now() >= deadline {
                self.disk.failed_requests.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(disk = %self.disk.name, "mirror target: gateway unreachable; failing the request with EIO");
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            tokio::time::sleep(LINK_POLL).await;
        }
    }
}

impl BlockBackend for MirrorBackend {
    fn size_bytes(&self) -> u64 {
        self.disk.size_bytes
    }

    fn read_only(&self) -> bool {
        false
    }

    fn can_trim(&self) -> bool {
        true
    }

    fn can_write_zeroes(&self) -> bool {
        true
    }

    /// Every reply waits for the gateway's ACK, which covers everything
    /// staged before it, so a FLUSH on any connection covers all.
    fn can_multi_conn(&self) -> bool {
        true
    }

    /// EIO: there is nothing to read. QEMU's mirror never reads its
    /// target (hwtests/test_vm_mirror.sh checks that none arrive).
    fn read(&self, _offset: u64, _length: u32) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        self.disk.refused_reads.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Err(io::Error::from_raw_os_error(libc::EIO)) })
    }

    fn write(&self, offset: u64, data: Vec<u8>, _fua: bool) -> BoxFuture<'_, io::Result<()>> {
        let data = bytes::Bytes::from(data);
        Box::pin(async move {
            let length = data.len() as u64;
            self.forward(|| Payload::Write {
                offset,
                data: data.clone(),
            })
            .await?;
            self.disk.staged_bytes.fetch_add(length, Ordering::Relaxed);
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.forward(|| Payload::Flush))
    }

    fn trim(&self, offset: u64, length: u32, _fua: bool) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.forward(move || Payload::Trim {
            offset,
            length: u64::from(length),
        }))
    }

    /// Writes of zeroes, at most 4 MiB a record, as for primary-backed
    /// disks (a trim would leave the replica's contents undefined).
    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        _fua: bool,
        _may_trim: bool,
    ) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let end = offset + u64::from(length);
            let mut position = offset;
            while position < end {
                let chunk = ZERO_RECORD_BYTES_MAX.min(end - position);
                self.forward(|| Payload::Write {
                    offset: position,
                    data: vec![0u8; chunk as usize].into(),
                })
                .await?;
                self.disk.staged_bytes.fetch_add(chunk, Ordering::Relaxed);
                position += chunk;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(forwarder: &Arc<Forwarder>, disk: &Arc<MirrorDisk>) -> MirrorBackend {
        MirrorBackend {
            number: 0,
            disk: disk.clone(),
            forwarder: Arc::downgrade(forwarder),
            link_wait: Duration::from_millis(100),
        }
    }

    fn mirror_disk() -> Arc<MirrorDisk> {
        Arc::new(MirrorDisk {
            name: "m".into(),
            size_bytes: 1 << 20,
            ..MirrorDisk::default()
        })
    }

    #[tokio::test]
    async fn without_a_gateway_requests_fail_with_eio_after_the_wait() {
        let disk = mirror_disk();
        let forwarder = Arc::new(
            Forwarder::new(Vec::new(), 1 << 20, 64 << 10).with_mirrors(vec![disk.clone()]),
        );
        let backend = backend(&forwarder, &disk);
        let started = Instant::now();
        let error = backend.write(0, vec![1; 4096], false).await.unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EIO));
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(
            backend.flush().await.unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        let zeroes = backend.write_zeroes(0, 8192, false, true).await;
        assert_eq!(zeroes.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(
            backend
                .trim(0, 4096, false)
                .await
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EIO)
        );
        assert_eq!(disk.failed_requests.load(Ordering::Relaxed), 4);
        assert_eq!(disk.staged_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(forwarder.pending_bytes(), 0, "nothing was queued");
    }

    #[tokio::test]
    async fn reads_fail_and_are_counted() {
        let disk = mirror_disk();
        let forwarder = Arc::new(Forwarder::new(Vec::new(), 1 << 20, 64 << 10));
        let backend = backend(&forwarder, &disk);
        let error = backend.read(0, 512).await.unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EIO));
        assert_eq!(disk.refused_reads.load(Ordering::Relaxed), 1);
        assert!(!backend.read_only() && backend.can_trim() && backend.can_write_zeroes());
        assert_eq!(backend.size_bytes(), 1 << 20);
    }

    #[tokio::test]
    async fn a_stopping_tap_fails_requests_at_once() {
        let disk = mirror_disk();
        let forwarder = Arc::new(Forwarder::new(Vec::new(), 1 << 20, 64 << 10));
        let backend = backend(&forwarder, &disk);
        drop(forwarder);
        let started = Instant::now();
        assert!(backend.write(0, vec![0; 512], false).await.is_err());
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
