//! One protected disk at the tap, and the NBD backend that serves it: every
//! write goes to the primary and is forwarded to the gateway, with the
//! dirty map marked first (docs/ARCHITECTURE.md, "The tap").

use super::forwarder::{Forwarder, Item, Payload};
use super::range_lock::RangeLock;
use super::tracker::DiskTracker;
use drgw_nbd::{BlockBackend, BoxFuture, FileBackend};
use std::io;
use std::sync::{Arc, Weak};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Acknowledge once the write is on the primary and in the dirty map.
    Async,
    /// Also wait for the gateway's ACK while the link is up.
    Sync,
}

pub struct TapDisk {
    pub name: String,
    pub size_bytes: u64,
    pub mode: Mode,
    pub primary: Arc<FileBackend>,
    pub tracker: Arc<DiskTracker>,
    pub ranges: RangeLock,
}

/// The NBD face of a [`TapDisk`].
pub struct TapBackend {
    pub number: u32,
    pub disk: Arc<TapDisk>,
    pub forwarder: Weak<Forwarder>,
}

/// Largest zero run forwarded as one record.
const ZERO_RECORD_BYTES_MAX: u64 = 4 << 20;

impl TapBackend {
    /// Marks the range dirty, durably. The caller has counted it pending.
    async fn mark(&self, offset: u64, length: u64) -> io::Result<()> {
        if self.disk.tracker.is_durably_marked(offset, length) {
            return Ok(());
        }
        let tracker = self.disk.tracker.clone();
        tokio::task::spawn_blocking(move || tracker.mark(offset, length))
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::other)
    }

    /// Queues a forward (counted pending and covered by the dirty map);
    /// returns the waiter in sync mode.
    fn forward(&self, payload: Payload) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        let (offset, length) = match &payload {
            Payload::Write { offset, data } => (*offset, data.len() as u64),
            Payload::Trim { offset, length } => (*offset, *length),
            Payload::Flush | Payload::Barrier { .. } | Payload::Marker { .. } => (0, 0),
        };
        let (waiter, receiver) = match self.disk.mode {
            Mode::Sync => {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                (Some(sender), Some(receiver))
            }
            Mode::Async => (None, None),
        };
        let item = Item {
            disk: self.number,
            payload,
            waiter,
        };
        let Some(forwarder) = self.forwarder.upgrade() else {
            self.disk.tracker.lost(offset, length);
            return None;
        };
        match forwarder.offer(item) {
            Ok(()) => receiver,
            Err(_) => {
                self.disk.tracker.lost(offset, length);
                forwarder.note_loss(self.number);
                None
            }
        }
    }

    /// Sync mode: wait for the gateway while the link is up. If the forward
    /// is lost, the write is still safe in the dirty map.
    async fn settle(receiver: Option<tokio::sync::oneshot::Receiver<bool>>) {
        if let Some(receiver) = receiver {
            let _ = receiver.await;
        }
    }

    /// Counts the range pending, then marks it: from here until the
    /// forward is acknowledged nothing clears its grains. On failure the
    /// range is counted lost (resynchronised later).
    async fn begin(&self, offset: u64, length: u64) -> io::Result<()> {
        self.begin_chunks(offset, length, length).await
    }

    /// `begin` for a range forwarded in records of `chunk` bytes, each
    /// acknowledged on its own: each record is counted pending.
    async fn begin_chunks(&self, offset: u64, length: u64, chunk: u64) -> io::Result<()> {
        let chunks = chunk_ranges(offset, length, chunk);
        for &(position, size) in &chunks {
            self.disk.tracker.queued(position, size, false);
        }
        let marked = self.mark(offset, length).await;
        if marked.is_err() {
            self.disk.tracker.lost_each(&chunks);
        }
        marked
    }

    /// Runs a primary operation for a range already begun; a failure loses
    /// the range (it may be partly written: resync will send what is there).
    async fn on_primary(&self, offset: u64, length: u64, result: io::Result<()>) -> io::Result<()> {
        if result.is_err() {
            self.disk.tracker.lost(offset, length);
            if let Some(forwarder) = self.forwarder.upgrade() {
                forwarder.note_loss(self.number);
            }
        }
        result
    }

    async fn write_forwarded(&self, offset: u64, data: Vec<u8>, fua: bool) -> io::Result<()> {
        let length = data.len() as u64;
        self.begin(offset, length).await?;
        let receiver = {
            let _guard = self.disk.ranges.lock(offset, offset + length).await;
            let (data, written) = match self.disk.primary.write_owned(offset, data, fua).await {
                Ok((data, written)) => (data, written),
                Err(failed) => (Vec::new(), Err(failed)),
            };
            self.on_primary(offset, length, written).await?;
            self.forward(Payload::Write {
                offset,
                data: data.into(),
            })
        };
        Self::settle(receiver).await;
        Ok(())
    }
}

impl BlockBackend for TapBackend {
    fn size_bytes(&self) -> u64 {
        self.disk.size_bytes
    }

    fn read_only(&self) -> bool {
        false
    }

    fn can_trim(&self) -> bool {
        self.disk.primary.can_trim()
    }

    fn can_write_zeroes(&self) -> bool {
        true
    }

    fn can_multi_conn(&self) -> bool {
        self.disk.primary.can_multi_conn()
    }

    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        self.disk.primary.read(offset, length)
    }

    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.write_forwarded(offset, data, fua))
    }

    fn flush(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.disk.primary.flush().await?;
            let receiver = self.forward(Payload::Flush);
            Self::settle(receiver).await;
            Ok(())
        })
    }

    fn trim(&self, offset: u64, length: u32, fua: bool) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let length64 = u64::from(length);
            self.begin(offset, length64).await?;
            let receiver = {
                let _guard = self.disk.ranges.lock(offset, offset + length64).await;
                let trimmed = self.disk.primary.trim(offset, length, fua).await;
                self.on_primary(offset, length64, trimmed).await?;
                self.forward(Payload::Trim {
                    offset,
                    length: length64,
                })
            };
            Self::settle(receiver).await;
            Ok(())
        })
    }

    /// Zeroes are forwarded as writes of zeroes (a trim would leave the
    /// replica's contents undefined), in records of at most 4 MiB.
    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
        may_trim: bool,
    ) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let length64 = u64::from(length);
            self.begin_chunks(offset, length64, ZERO_RECORD_BYTES_MAX)
                .await?;
            let mut receivers = Vec::new();
            {
                let _guard = self.disk.ranges.lock(offset, offset + length64).await;
                let written = self
                    .disk
                    .primary
                    .write_zeroes(offset, length, fua, may_trim)
                    .await;
                if written.is_err() {
                    self.disk.tracker.lost_each(&chunk_ranges(
                        offset,
                        length64,
                        ZERO_RECORD_BYTES_MAX,
                    ));
                    if let Some(forwarder) = self.forwarder.upgrade() {
                        forwarder.note_loss(self.number);
                    }
                    written?;
                }
                for (position, chunk) in chunk_ranges(offset, length64, ZERO_RECORD_BYTES_MAX) {
                    receivers.push(self.forward(Payload::Write {
                        offset: position,
                        data: vec![0u8; chunk as usize].into(),
                    }));
                }
            }
            for receiver in receivers {
                Self::settle(receiver).await;
            }
            Ok(())
        })
    }
}

/// `offset..offset+length` cut in pieces of at most `chunk` bytes.
fn chunk_ranges(offset: u64, length: u64, chunk: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    let mut position = offset;
    while position < offset + length {
        let size = chunk.min(offset + length - position);
        ranges.push((position, size));
        position += size;
    }
    ranges
}
