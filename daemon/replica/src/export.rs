//! [`PointDisk`]: a disk of a target group at a recovery point, as an NBD
//! backend. Reads come from a [`PointView`] (the replica, plus the undo of
//! what changed after the point); a writable one puts writes in an
//! [`Overlay`] and reads them back from it. Nothing here writes the replica
//! or the journal, until a failover commit turns the disk into the replica
//! itself ([`PointDisk::become_replica`]).

use super::overlay::{Overlay, Piece};
use super::{PointPin, PointView, TargetError, TargetGroup};
use drgw_dirtymap::DirtyMap;
use drgw_nbd::{BlockBackend, BoxFuture, FileBackend};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

pub struct PointDisk {
    inner: Arc<Inner>,
}

struct Inner {
    size_bytes: u64,
    writable: bool,
    mode: RwLock<Mode>,
    /// Committed disk replicated back (reprotect): each write is staged
    /// for the original site after it is written here.
    capture: RwLock<Option<Arc<Capture>>>,
    /// Orders a committed disk's writes with their staging and with the
    /// reprotect delta's reads, so the staged stream is the disk's order.
    order: tokio::sync::Mutex<()>,
}

/// Where a reprotected disk's writes are staged: the local group that
/// replicates it back to the original site.
pub struct Capture {
    pub ingest: Arc<drgw_ingest::Ingest>,
    pub group_id: u32,
    pub group: String,
    pub disk_id: u32,
    pub disk: String,
    /// Woken when a write could not be staged (its blocks were marked in
    /// the change map instead): the delta sender runs again.
    pub wake: Arc<tokio::sync::Notify>,
}

/// Largest record a captured write is staged in.
const CAPTURE_RECORD_BYTES: usize = 1 << 20;

impl Capture {
    /// Stages `data` at `offset` of the disk; resolves once durable.
    pub async fn stage(&self, offset: u64, data: &[u8]) -> Result<(), drgw_ingest::IngestError> {
        let mut bodies = Vec::new();
        for (index, piece) in data.chunks(CAPTURE_RECORD_BYTES).enumerate() {
            bodies.push(drgw_staging::RecordBody::Write {
                disk: self.disk_id,
                offset: offset + (index * CAPTURE_RECORD_BYTES) as u64,
                data: bytes::Bytes::copy_from_slice(piece),
            });
        }
        let records = bodies.len() as u64;
        self.ingest
            .stage(vec![drgw_ingest::StageBatch {
                group_id: self.group_id,
                group: self.group.clone(),
                bodies,
                per_disk: vec![(self.disk.clone(), records, data.len() as u64)],
            }])
            .await
    }
}

enum Mode {
    Point {
        view: Box<Mutex<PointView>>,
        overlay: Option<Overlay>,
        _pin: PointPin,
    },
    /// After a commit: the replica is the disk; every write marks the
    /// change map first (target/changes.rs).
    Replica {
        backend: FileBackend,
        changes: Arc<DirtyMap>,
    },
    /// Ended (`drgw test-failover --cleanup`, an export removed).
    Closed,
}

fn to_io(error: TargetError) -> io::Error {
    io::Error::other(error.to_string())
}

impl PointDisk {
    /// `disk` of `group` at `sequence`; `overlay` makes it writable.
    pub async fn open(
        group: Arc<TargetGroup>,
        disk: u32,
        sequence: u64,
        overlay: Option<Overlay>,
    ) -> Result<PointDisk, TargetError> {
        let pin = group.pin(sequence);
        let view = PointView::open(group, disk, sequence).await?;
        Ok(PointDisk {
            inner: Arc::new(Inner {
                size_bytes: view.size_bytes,
                writable: overlay.is_some(),
                mode: RwLock::new(Mode::Point {
                    view: Box::new(Mutex::new(view)),
                    overlay,
                    _pin: pin,
                }),
                capture: RwLock::new(None),
                order: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The replica itself (a committed failover after a restart), its
    /// writes marked in `changes`.
    pub fn replica(path: &Path, changes: Arc<DirtyMap>) -> io::Result<PointDisk> {
        let backend = FileBackend::open(path, false)?;
        Ok(PointDisk {
            inner: Arc::new(Inner {
                size_bytes: backend.size_bytes(),
                writable: true,
                mode: RwLock::new(Mode::Replica { backend, changes }),
                capture: RwLock::new(None),
                order: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The change map of a committed disk.
    pub fn changes(&self) -> Option<Arc<DirtyMap>> {
        self.inner.replica().map(|(_, changes)| changes)
    }

    /// From now on, stages every write of this committed disk (or stops).
    /// Waits for writes in progress.
    pub async fn set_capture(&self, capture: Option<Arc<Capture>>) {
        let _order = self.inner.order.lock().await;
        *self
            .inner
            .capture
            .write()
            .unwrap_or_else(|p| p.into_inner()) = capture;
    }

    /// Reprotect's delta: reads `offset..offset+length` of the committed
    /// disk, stages it, and clears it in the change map (in memory: the
    /// caller persists), all in order with the disk's writes (a write that
    /// fails to stage marks its blocks after this). Fails when the disk is
    /// not committed or not captured.
    pub async fn resend(&self, offset: u64, length: u32) -> io::Result<()> {
        let _order = self.inner.order.lock().await;
        let Some((replica, changes)) = self.inner.replica() else {
            return Err(Inner::closed());
        };
        let capture = self
            .inner
            .capture()
            .ok_or_else(|| io::Error::other("the disk is not replicated back (no reprotect)"))?;
        let data = replica.read(offset, length).await?;
        capture
            .stage(offset, &data)
            .await
            .map_err(io::Error::other)?;
        changes.clear(offset, u64::from(length));
        Ok(())
    }

    /// Bytes of a committed disk that may differ from the original site's
    /// disk (its change map); 0 before a commit.
    pub fn changed_bytes(&self) -> u64 {
        match &*self.inner.read_mode() {
            Mode::Replica { changes, .. } => super::changes::changed_bytes(changes),
            _ => 0,
        }
    }

    pub fn backend(&self) -> Arc<dyn BlockBackend> {
        Arc::new(PointDisk {
            inner: self.inner.clone(),
        })
    }

    /// Another handle on the same disk.
    pub fn backend_handle(&self) -> PointDisk {
        PointDisk {
            inner: self.inner.clone(),
        }
    }

    /// Makes the overlay's completed writes durable.
    pub fn flush_overlay(&self) -> io::Result<()> {
        match &*self.inner.read_mode() {
            Mode::Point {
                overlay: Some(overlay),
                ..
            } => overlay.flush(),
            _ => Ok(()),
        }
    }

    /// Bytes written to the overlay.
    pub fn overlay_bytes(&self) -> u64 {
        match &*self.inner.read_mode() {
            Mode::Point {
                overlay: Some(overlay),
                ..
            } => overlay.bytes(),
            _ => 0,
        }
    }

    /// Ends the disk: later requests fail; returns the overlay, if any, for
    /// the caller to discard.
    pub fn close(&self) -> Option<Overlay> {
        let mut mode = self.inner.mode.write().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *mode, Mode::Closed) {
            Mode::Point { overlay, .. } => overlay,
            _ => None,
        }
    }

    /// Failover commit: marks in `changes` what the commit rolls back and
    /// what the overlay holds, writes the point, then the overlay, into the
    /// replica `file` (at `path`), and from then on serves the replica
    /// itself. Blocking; requests wait meanwhile. Idempotent. Returns the
    /// overlay, for the caller to discard once the commit is recorded.
    pub fn become_replica(
        &self,
        file: &std::fs::File,
        path: &Path,
        changes: Arc<DirtyMap>,
    ) -> Result<Option<Overlay>, TargetError> {
        let mut mode = self.inner.mode.write().unwrap_or_else(|p| p.into_inner());
        let io_error = |e: io::Error| TargetError::io(path, e);
        let map_error =
            |e: drgw_dirtymap::DirtyMapError| TargetError::Protocol(format!("change map: {e}"));
        match &*mode {
            Mode::Point { overlay, view, .. } => {
                let mut view = view.lock().unwrap_or_else(|p| p.into_inner());
                let mut changed: Vec<(u64, u64)> = view
                    .changed_ranges()?
                    .into_iter()
                    .map(|(start, end)| (start, end - start))
                    .collect();
                if let Some(overlay) = overlay {
                    changed.extend(overlay.held_ranges());
                }
                changes.mark_ranges(&changed).map_err(map_error)?;
                roll_replica_to(&mut view, file, path)?;
                if let Some(overlay) = overlay {
                    copy_overlay(overlay, file).map_err(io_error)?;
                }
                file.sync_all().map_err(io_error)?;
            }
            Mode::Replica { .. } => {}
            Mode::Closed => return Err(TargetError::Protocol("the export was closed".into())),
        }
        let backend = FileBackend::open(path, false).map_err(io_error)?;
        Ok(
            match std::mem::replace(&mut *mode, Mode::Replica { backend, changes }) {
                Mode::Point { overlay, .. } => overlay,
                _ => None,
            },
        )
    }
}

/// Writes the disk's bytes at the view's point into the replica wherever a
/// later write changed them. Idempotent (the bytes come from the undo log,
/// not the replica), so a commit interrupted by a crash is simply redone.
pub fn roll_replica_to(
    view: &mut PointView,
    file: &std::fs::File,
    path: &Path,
) -> Result<u64, TargetError> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 8 << 20;
    let mut buffer = Vec::new();
    let mut bytes = 0;
    for (start, end) in view.changed_ranges()? {
        let mut at = start;
        while at < end {
            let length = (end - at).min(CHUNK);
            buffer.resize(length as usize, 0);
            view.read_at(&mut buffer, at)?;
            file.write_all_at(&buffer, at)
                .map_err(|e| TargetError::io(path, e))?;
            at += length;
            bytes += length;
        }
    }
    Ok(bytes)
}

/// Copies the blocks an overlay holds into `file` at their offsets.
fn copy_overlay(overlay: &Overlay, file: &std::fs::File) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 8 << 20;
    let mut buffer = Vec::new();
    let mut bytes = 0;
    for (start, length) in overlay.held_ranges() {
        let end = start + length;
        let mut at = start;
        while at < end {
            let piece = (end - at).min(CHUNK);
            buffer.resize(piece as usize, 0);
            overlay.read_at(&mut buffer, at)?;
            file.write_all_at(&buffer, at)?;
            at += piece;
            bytes += piece;
        }
    }
    Ok(bytes)
}

impl Inner {
    fn read_mode(&self) -> std::sync::RwLockReadGuard<'_, Mode> {
        self.mode.read().unwrap_or_else(|p| p.into_inner())
    }

    fn closed() -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, "the export was ended")
    }

    fn capture(&self) -> Option<Arc<Capture>> {
        self.capture
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A committed disk's write: marked in the change map (or, when the
    /// disk is replicated back, staged after it is written; a write that
    /// cannot be staged is marked instead, for the delta sender).
    async fn write_replica(
        &self,
        replica: FileBackend,
        changes: Arc<DirtyMap>,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    ) -> io::Result<()> {
        let _order = self.order.lock().await;
        let length = data.len() as u64;
        let capture = self.capture();
        if capture.is_none() {
            mark_changed(changes.clone(), offset, length).await?;
        }
        let staged = capture.as_ref().map(|_| data.clone());
        replica.write(offset, data, fua).await?;
        if let (Some(capture), Some(data)) = (capture, staged) {
            if let Err(error) = capture.stage(offset, &data).await {
                tracing::warn!(disk = %capture.disk, %error,
                    "a write to a reprotected disk could not be staged: marked for the delta");
                mark_changed(changes, offset, length).await?;
                capture.wake.notify_one();
            }
        }
        Ok(())
    }

    /// The replica backend once committed (requests go straight to it),
    /// and its change map.
    fn replica(&self) -> Option<(FileBackend, Arc<DirtyMap>)> {
        match &*self.read_mode() {
            Mode::Replica { backend, changes } => Some((backend.clone(), changes.clone())),
            _ => None,
        }
    }

    fn read(&self, offset: u64, length: u32) -> io::Result<Vec<u8>> {
        let mut buffer = vec![0u8; length as usize];
        let end = offset + u64::from(length);
        let mode = self.read_mode();
        let Mode::Point { view, overlay, .. } = &*mode else {
            return Err(Self::closed());
        };
        let pieces = match overlay {
            Some(overlay) => overlay.pieces(offset, end),
            None => vec![Piece::Point { start: offset, end }],
        };
        for piece in pieces {
            let (start, stop, held) = match piece {
                Piece::Overlay { start, end } => (start, end, true),
                Piece::Point { start, end } => (start, end, false),
            };
            let slice = &mut buffer[(start - offset) as usize..(stop - offset) as usize];
            if held {
                overlay.as_ref().expect("held").read_at(slice, start)?;
            } else {
                view.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read_at(slice, start)
                    .map_err(to_io)?;
            }
        }
        Ok(buffer)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let mode = self.read_mode();
        let Mode::Point {
            view,
            overlay: Some(overlay),
            ..
        } = &*mode
        else {
            return Err(Self::closed());
        };
        let mut point = |buffer: &mut [u8], at: u64| {
            view.lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_at(buffer, at)
                .map_err(to_io)
        };
        overlay.write(offset, data, &mut point)?;
        if fua {
            overlay.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        match &*self.read_mode() {
            Mode::Point {
                overlay: Some(overlay),
                ..
            } => overlay.flush(),
            Mode::Point { .. } => Ok(()),
            _ => Err(Self::closed()),
        }
    }
}

/// Marks a committed disk's blocks changed, durably, before they are
/// written (a mark of blocks already marked costs no I/O).
async fn mark_changed(changes: Arc<DirtyMap>, offset: u64, length: u64) -> io::Result<()> {
    if length == 0 || changes.is_durably_marked(offset, length) {
        return Ok(());
    }
    blocking(move || changes.mark(offset, length).map_err(io::Error::other)).await
}

async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|_| io::Error::other("export worker panicked"))?
}

/// Zeroes are written in pieces of this size.
const ZERO_CHUNK: u64 = 1 << 20;

impl BlockBackend for PointDisk {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes
    }

    fn read_only(&self) -> bool {
        !self.inner.writable
    }

    fn can_trim(&self) -> bool {
        false
    }

    fn can_write_zeroes(&self) -> bool {
        self.inner.writable
    }

    fn can_multi_conn(&self) -> bool {
        // Writes are visible to every connection once replied, and FLUSH
        // covers the whole overlay (or the replica).
        true
    }

    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some((replica, _)) = inner.replica() {
                return replica.read(offset, length).await;
            }
            blocking(move || inner.read(offset, length)).await
        })
    }

    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> BoxFuture<'_, io::Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some((replica, changes)) = inner.replica() {
                return inner
                    .write_replica(replica, changes, offset, data, fua)
                    .await;
            }
            blocking(move || inner.write(offset, &data, fua)).await
        })
    }

    fn flush(&self) -> BoxFuture<'_, io::Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some((replica, _)) = inner.replica() {
                return replica.flush().await;
            }
            blocking(move || inner.flush()).await
        })
    }

    fn trim(&self, _offset: u64, _length: u32, _fua: bool) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
        may_trim: bool,
    ) -> BoxFuture<'_, io::Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Some((replica, changes)) = inner.replica() {
                // Written as zeroes (never a hole), so the replica and what
                // is staged for the original site are the same bytes.
                let _ = may_trim;
                let end = offset + u64::from(length);
                let mut at = offset;
                while at < end {
                    let piece = (end - at).min(ZERO_CHUNK) as usize;
                    let zeroes = vec![0u8; piece];
                    let last = at + piece as u64 == end;
                    inner
                        .write_replica(replica.clone(), changes.clone(), at, zeroes, fua && last)
                        .await?;
                    at += piece as u64;
                }
                return Ok(());
            }
            blocking(move || {
                let end = offset + u64::from(length);
                let mut at = offset;
                let zeroes = vec![0u8; ZERO_CHUNK.min(u64::from(length)) as usize];
                while at < end {
                    let piece = (end - at).min(ZERO_CHUNK) as usize;
                    inner.write(at, &zeroes[..piece], false)?;
                    at += piece as u64;
                }
                if fua {
                    inner.flush()?;
                }
                Ok(())
            })
            .await
        })
    }
}
