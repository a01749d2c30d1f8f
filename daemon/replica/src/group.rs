//! One consistency group at the target: its redo journal (received batches,
//! durable before the ACK), the applier that brings the replicas forward and
//! saves what it overwrites in the undo log, the index over that undo log,
//! and retention.

use super::disk_io::{self, Span};
use super::index::{GroupIndex, IndexEntry};
use super::intervals::{IntervalMap, Source};
use super::state::{GroupState, ReplicaDisk, STATE_FORMAT};
use super::undo::{UndoBlob, UndoBuilder};
use super::{RecoveryPoint, TargetError, TargetPolicy, ZERO_DATA};
use drgw_batch as payload;
use drgw_io::uring::{Uring, WriteAt};
use drgw_staging::{CorruptionPolicy, RecordBody, StagedRecord, StagingConfig, StagingLog};
use drgw_wire::{self as wire, Batch, Frame, GroupInfo};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Redo records read per applier step.
const APPLY_READ_BYTES: usize = 16 << 20;
/// The replicas are fsynced and the state stored at least this often while applying.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Largest data piece of one undo entry.
const UNDO_PIECE_BYTES: u64 = 8 << 20;
/// zstd level of undo blobs.
const UNDO_LEVEL: i32 = 1;
/// Replica writes in flight per batch.
const RING_DEPTH: u32 = 32;
/// Undo blobs kept decoded for point reads.
const BLOB_CACHE: usize = 8;

/// Live figures of a target group, for `drgw status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetGroupStatus {
    pub peer: String,
    pub group: u32,
    pub name: String,
    pub disks: Vec<ReplicaDisk>,
    pub received_through: u64,
    pub applied_through: u64,
    /// Seconds since the newest recovery point received (durable here) was taken.
    pub rpo_s: Option<f64>,
    pub rpo_threshold_s: u64,
    pub rpo_exceeded: bool,
    pub newest_point_unix_ms: Option<u64>,
    pub oldest_point_unix_ms: Option<u64>,
    pub points: usize,
    pub journal_bytes: u64,
    pub journal_cap_bytes: u64,
    pub index_memory_bytes: u64,
    pub batches_received: u64,
    pub duplicates_dropped: u64,
    pub bytes_received: u64,
    pub problem: Option<String>,
}

pub struct TargetGroup {
    pub directory: PathBuf,
    policy: TargetPolicy,
    state: Mutex<GroupState>,
    redo: Arc<StagingLog>,
    undo: Arc<StagingLog>,
    replicas: RwLock<BTreeMap<u32, Arc<File>>>,
    pub(super) index: RwLock<GroupIndex>,
    received_through: AtomicU64,
    newest_point: Mutex<Option<RecoveryPoint>>,
    /// Bumped when redo arrives; the applier waits on it.
    arrived: tokio::sync::Notify,
    /// The applied sequence, for point readers waiting on it.
    applied: tokio::sync::watch::Sender<u64>,
    problem: Mutex<Option<String>>,
    counters: Mutex<Counters>,
    blob_cache: Mutex<VecDeque<(u64, Arc<UndoBlob>)>>,
    /// The applier's io_uring for replica writes (made at the first batch).
    ring: Mutex<Option<Uring>>,
    rpo_exceeded: std::sync::atomic::AtomicBool,
    /// Points held by exports: retention keeps what they need.
    pins: Mutex<BTreeMap<u64, u64>>,
    next_pin: AtomicU64,
    /// Set while the group is failed over (or committed): new batches are
    /// refused with this reason, so nothing more is applied.
    hold: Mutex<Option<String>>,
    /// Batches made durable in redo and not yet applied, kept as received
    /// (checked and decompressed), so that the applier need not read them
    /// back from the journal and decompress them a second time.
    recent: Mutex<RecentBatches>,
}

/// Most bytes of records `recent` holds; beyond, the applier reads redo.
const RECENT_BYTES_MAX: usize = 64 << 20;

#[derive(Default)]
struct RecentBatches {
    /// In redo order, each with its redo sequence.
    batches: VecDeque<RecentBatch>,
    bytes: usize,
}

struct RecentBatch {
    redo: u64,
    first: u64,
    last: u64,
    records: Vec<StagedRecord>,
    bytes: usize,
}

/// Keeps the undo a point needs from retention while it lives.
pub struct PointPin {
    group: Arc<TargetGroup>,
    id: u64,
}

impl Drop for PointPin {
    fn drop(&mut self) {
        self.group
            .pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

#[derive(Default)]
struct Counters {
    batches_received: u64,
    duplicates_dropped: u64,
    bytes_received: u64,
}

fn log_config(
    directory: PathBuf,
    group: u32,
    capacity: u64,
    policy: &TargetPolicy,
) -> StagingConfig {
    let mut config = StagingConfig::new(directory, group, capacity);
    config.segment_bytes = policy.segment_bytes;
    config.encryption_key = policy.encryption_key;
    config
}

impl TargetGroup {
    /// Opens (or creates, from `info`) the group in `directory`: recovers both
    /// logs, rebuilds the index, rolls the replicas back to the last
    /// checkpoint (undoing a half-applied batch), and finds how far redo goes.
    /// `placement`: where new disks' replicas go, by disk name (reprotect:
    /// the original site's own disks); others get a file in `directory`.
    pub fn open(
        directory: &Path,
        peer: &str,
        info: Option<&GroupInfo>,
        policy: TargetPolicy,
        placement: &BTreeMap<String, PathBuf>,
    ) -> Result<TargetGroup, TargetError> {
        std::fs::create_dir_all(directory).map_err(|e| TargetError::io(directory, e))?;
        let mut state = match GroupState::load(directory)? {
            Some(state) => state,
            None => {
                let info =
                    info.ok_or_else(|| TargetError::Unknown(directory.display().to_string()))?;
                GroupState {
                    format: STATE_FORMAT,
                    peer: peer.to_string(),
                    group: info.group,
                    name: info.name.clone(),
                    disks: Vec::new(),
                    applied_through: 0,
                    redo_applied: 0,
                    created_unix_s: drgw_io::clock::unix_seconds(),
                }
            }
        };
        if let Some(info) = info {
            merge_disks(&mut state, info, directory, placement)?;
        }
        state.store(directory)?;
        let group = state.group;
        let redo_capacity = (policy.cap_bytes / 4).max(2 * policy.segment_bytes);
        let (redo, _) = StagingLog::open_with_policy(
            log_config(directory.join("redo"), group, redo_capacity, &policy),
            CorruptionPolicy::Refuse,
        )?;
        let undo_capacity = policy.cap_bytes.max(2 * policy.segment_bytes);
        let (undo, _) = StagingLog::open_with_policy(
            log_config(directory.join("undo"), group, undo_capacity, &policy),
            CorruptionPolicy::Refuse,
        )?;
        let mut replicas = BTreeMap::new();
        for disk in &state.disks {
            replicas.insert(disk.id, Arc::new(open_replica(disk)?));
        }
        let group = TargetGroup {
            directory: directory.to_path_buf(),
            policy,
            received_through: AtomicU64::new(state.applied_through),
            state: Mutex::new(state),
            redo: Arc::new(redo),
            undo: Arc::new(undo),
            replicas: RwLock::new(replicas),
            index: RwLock::new(GroupIndex::default()),
            newest_point: Mutex::new(None),
            arrived: tokio::sync::Notify::new(),
            applied: tokio::sync::watch::Sender::new(0),
            problem: Mutex::new(None),
            counters: Mutex::new(Counters::default()),
            blob_cache: Mutex::new(VecDeque::new()),
            ring: Mutex::new(None),
            rpo_exceeded: std::sync::atomic::AtomicBool::new(false),
            pins: Mutex::new(BTreeMap::new()),
            next_pin: AtomicU64::new(1),
            hold: Mutex::new(None),
            recent: Mutex::new(RecentBatches::default()),
        };
        group.rebuild()?;
        Ok(group)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> String {
        self.lock_state().name.clone()
    }

    pub fn key(&self) -> (String, u32) {
        let state = self.lock_state();
        (state.peer.clone(), state.group)
    }

    pub fn disks(&self) -> Vec<ReplicaDisk> {
        self.lock_state().disks.clone()
    }

    /// Reads the whole undo log into the index, rolls back what lies past the
    /// checkpoint, and scans redo for the last received sequence.
    fn rebuild(&self) -> Result<(), TargetError> {
        let applied_through = self.lock_state().applied_through;
        let mut index = GroupIndex::default();
        let mut next = self.undo.usage().sequence_first_unreleased.max(1);
        let mut first = true;
        loop {
            let records = self.undo.read_from_blocking(next, 64 << 20)?;
            let Some(last) = records.last() else { break };
            next = last.sequence + 1;
            for record in records {
                let RecordBody::Blob { data } = &record.body else {
                    return Err(TargetError::Corrupt(format!(
                        "undo record {} is not a blob",
                        record.sequence
                    )));
                };
                let blob =
                    UndoBlob::decode(data).map_err(|e| TargetError::Corrupt(e.to_string()))?;
                if first {
                    // Older undo was released: points before this are gone.
                    index.recoverable_from = blob.sequence_first.saturating_sub(1);
                    first = false;
                }
                index.add_blob(record.sequence, &blob);
            }
        }
        if first {
            index.recoverable_from = applied_through;
        }
        // Roll back what was applied after the last checkpoint, newest first.
        let mut doomed: Vec<(u32, IndexEntry)> = Vec::new();
        for (disk, list) in &index.disks {
            let from = list.first_after(applied_through);
            doomed.extend(list.iter_from(from).map(|(_, entry)| (*disk, *entry)));
        }
        doomed.sort_by_key(|entry| std::cmp::Reverse(entry.1.sequence));
        if !doomed.is_empty() {
            tracing::warn!(group = %self.name(), entries = doomed.len(), applied_through,
                "target: rolling replicas back to the last checkpoint (a batch was half applied)");
            for (disk, entry) in &doomed {
                self.restore(*disk, entry)?;
            }
            self.sync_replicas()?;
        }
        index.truncate_after(applied_through);
        index.applied_through = applied_through;
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = index;
        self.applied.send_replace(applied_through);
        // Redo beyond the checkpoint: the received sequence, and the newest point.
        let mut received = applied_through;
        let mut next = self.lock_state().redo_applied + 1;
        loop {
            let records = self.redo.read_from_blocking(next, 64 << 20)?;
            let Some(last) = records.last() else { break };
            next = last.sequence + 1;
            for record in &records {
                let batch = decode_redo(record)?;
                received = received.max(batch.sequence_last);
                if let Ok(opened) = payload::open_batch(&batch) {
                    self.note_points(&opened);
                }
            }
        }
        self.received_through.store(received, Ordering::SeqCst);
        if self
            .newest_point
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            let newest = self
                .index
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .points
                .back()
                .cloned();
            *self.newest_point.lock().unwrap_or_else(|p| p.into_inner()) = newest;
        }
        Ok(())
    }

    /// Writes an index entry's saved bytes back to its replica.
    fn restore(&self, disk: u32, entry: &IndexEntry) -> Result<(), TargetError> {
        let file = self.replica(disk)?;
        if entry.data_at == ZERO_DATA {
            disk_io::discard(&file, entry.offset, u64::from(entry.length))
                .map_err(|e| TargetError::io(&self.directory, e))?;
            return Ok(());
        }
        let blob = self.blob(entry.undo)?;
        let start = entry.data_at as usize;
        let data = &blob.data[start..start + entry.length as usize];
        file.write_all_at(data, entry.offset)
            .map_err(|e| TargetError::io(&self.directory, e))
    }

    pub(super) fn replica(&self, disk: u32) -> Result<Arc<File>, TargetError> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&disk)
            .cloned()
            .ok_or_else(|| TargetError::Corrupt(format!("no replica for disk {disk}")))
    }

    /// Block sums of a replica for a resync (blocking: run off the
    /// runtime). Each round of reads holds the applier off, so no block is
    /// summed half-written.
    pub fn sums(&self, request: &drgw_wire::SumRequest) -> Result<Vec<u128>, String> {
        if let Some(reason) = self.held() {
            return Err(format!("the group takes no replication here: {reason}"));
        }
        let disk = self
            .disks()
            .into_iter()
            .find(|d| d.id == request.disk)
            .ok_or_else(|| format!("group {} has no disk {} here", self.name(), request.disk))?;
        if disk.size_bytes != request.disk_bytes {
            return Err(format!(
                "the replica of {} is {} bytes here, the source says {} (a resize reaches the target with the group's next announcement)",
                disk.name, disk.size_bytes, request.disk_bytes
            ));
        }
        let (file, direct) = drgw_sums::open_for_sums(&disk.path)
            .map_err(|e| format!("{}: {e}", disk.path.display()))?;
        let source = drgw_sums::SumSource {
            file: &file,
            direct,
            size_bytes: disk.size_bytes,
        };
        drgw_sums::sums(
            &source,
            request.block_bytes,
            request.seed,
            &request.spans,
            || self.index.read().unwrap_or_else(|p| p.into_inner()),
        )
        .map_err(|e| format!("reading {}: {e}", disk.path.display()))
    }

    /// The decoded undo blob of undo record `undo` (cached).
    pub(super) fn blob(&self, undo: u64) -> Result<Arc<UndoBlob>, TargetError> {
        if let Some((_, blob)) = self
            .blob_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(number, _)| *number == undo)
        {
            return Ok(blob.clone());
        }
        let records = self.undo.read_from_blocking(undo, 1)?;
        let Some(record) = records.first().filter(|r| r.sequence == undo) else {
            return Err(TargetError::Expired(format!(
                "undo record {undo} was released"
            )));
        };
        let RecordBody::Blob { data } = &record.body else {
            return Err(TargetError::Corrupt(format!(
                "undo record {undo} is not a blob"
            )));
        };
        let blob =
            Arc::new(UndoBlob::decode(data).map_err(|e| TargetError::Corrupt(e.to_string()))?);
        let mut cache = self.blob_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= BLOB_CACHE {
            cache.pop_front();
        }
        cache.push_back((undo, blob.clone()));
        Ok(blob)
    }

    /// The source's number of the group.
    pub fn group_id(&self) -> u32 {
        self.lock_state().group
    }

    /// The last sequence durable here: where the source resumes.
    pub fn received_through(&self) -> u64 {
        self.received_through.load(Ordering::SeqCst)
    }

    pub fn applied_through(&self) -> u64 {
        *self.applied.borrow()
    }

    pub fn subscribe_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Updates the disk list from a new GROUP frame of the source.
    pub fn update(&self, info: &GroupInfo) -> Result<(), TargetError> {
        let mut state = self.lock_state();
        merge_disks(&mut state, info, &self.directory, &BTreeMap::new())?;
        state.name = info.name.clone();
        state.store(&self.directory)?;
        let mut replicas = self.replicas.write().unwrap_or_else(|p| p.into_inner());
        for disk in &state.disks {
            match replicas.entry(disk.id) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(Arc::new(open_replica(disk)?));
                }
                // Grown: a file is extended (sparse); a block device must
                // already be large enough.
                std::collections::btree_map::Entry::Occupied(file) => {
                    grow_replica(file.get(), disk)?;
                }
            }
        }
        Ok(())
    }

    /// Keeps the history of `sequence` from retention until the pin drops.
    /// Over the journal cap, pinned history is still kept (the cap is
    /// exceeded, with a warning) rather than a drill or failover losing its point.
    pub fn pin(self: &Arc<Self>, sequence: u64) -> PointPin {
        let id = self.next_pin.fetch_add(1, Ordering::SeqCst);
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, sequence);
        PointPin {
            group: self.clone(),
            id,
        }
    }

    /// The oldest pinned sequence.
    fn pinned_from(&self) -> Option<u64> {
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .min()
            .copied()
    }

    /// Refuses new batches from now on (`Some(reason)`), or takes them again.
    pub fn set_hold(&self, reason: Option<String>) {
        *self.hold.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.arrived.notify_one();
    }

    /// Why new batches are refused, if they are.
    pub fn held(&self) -> Option<String> {
        self.hold.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until everything received is applied (`timeout` at most).
    pub async fn wait_applied(&self, timeout: Duration) -> Result<u64, TargetError> {
        let target = self.received_through();
        let mut applied = self.subscribe_applied();
        let reached = tokio::time::timeout(timeout, applied.wait_for(|a| *a >= target)).await;
        match reached {
            Ok(Ok(_)) => Ok(target),
            _ => Err(TargetError::NotYet(format!(
                "applied through {} of {target} received after {} s{}",
                self.applied_through(),
                timeout.as_secs(),
                self.problem().map_or(String::new(), |p| format!(": {p}"))
            ))),
        }
    }

    /// Releases the whole journal: after a commit, the replicas are the
    /// disks and no older point can be rebuilt from them.
    pub fn discard_history(&self) -> Result<(), TargetError> {
        self.sync_replicas()?;
        let last_undo = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            index.undo_records.back().map(|r| r.undo)
        };
        if let Some(undo) = last_undo {
            self.release_undo(undo);
        }
        let applied = self.applied_through();
        {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            index.points.clear();
            index.recoverable_from = applied + 1;
        }
        *self.newest_point.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.recent.lock().unwrap_or_else(|p| p.into_inner()) = RecentBatches::default();
        let redo_last = self.redo.usage().sequence_last_durable;
        self.redo.release_through(redo_last)?;
        Ok(())
    }

    /// Checks a batch, makes it durable in the redo journal, and returns the
    /// sequence to acknowledge. A batch already held is acknowledged again
    /// and dropped.
    pub async fn receive(&self, batch: Batch) -> Result<u64, TargetError> {
        if let Some(reason) = self.held() {
            return Err(TargetError::Held(reason));
        }
        let received = self.received_through();
        if batch.sequence_last <= received {
            self.counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .duplicates_dropped += 1;
            return Ok(received);
        }
        if batch.sequence_first <= received {
            return Err(TargetError::Protocol(format!(
                "batch {}..={} overlaps what is held (through {received})",
                batch.sequence_first, batch.sequence_last
            )));
        }
        let records =
            payload::open_batch(&batch).map_err(|e| TargetError::Protocol(e.to_string()))?;
        self.check_ranges(&records)?;
        let mut bytes = Vec::with_capacity(batch.payload.len() + 64);
        let frame = Frame::Batch(batch);
        wire::encode(&frame, &mut bytes).map_err(|e| TargetError::Protocol(e.to_string()))?;
        let Frame::Batch(batch) = frame else {
            unreachable!()
        };
        let redo = self
            .redo
            .append(vec![RecordBody::Blob { data: bytes }])
            .await?;
        self.received_through
            .store(batch.sequence_last, Ordering::SeqCst);
        self.note_points(&records);
        self.remember(redo.start, &batch, records);
        {
            let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            counters.batches_received += 1;
            counters.bytes_received += batch.payload.len() as u64;
        }
        self.arrived.notify_one();
        Ok(batch.sequence_last)
    }

    /// Keeps a received batch for the applier while there is room.
    fn remember(&self, redo: u64, batch: &Batch, records: Vec<StagedRecord>) {
        let bytes = batch.raw_bytes as usize;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.bytes + bytes > RECENT_BYTES_MAX {
            return;
        }
        recent.bytes += bytes;
        recent.batches.push_back(RecentBatch {
            redo,
            first: batch.sequence_first,
            last: batch.sequence_last,
            records,
            bytes,
        });
    }

    /// The kept batch at redo sequence `next`, if it is kept; older ones
    /// (applied from redo meanwhile) are dropped.
    fn take_recent(&self, next: u64) -> Option<RecentBatch> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(front) = recent.batches.front() {
            if front.redo > next {
                return None;
            }
            let front = recent.batches.pop_front().expect("a front");
            recent.bytes -= front.bytes;
            if front.redo == next {
                return Some(front);
            }
        }
        None
    }

    fn check_ranges(&self, records: &[StagedRecord]) -> Result<(), TargetError> {
        let state = self.lock_state();
        for record in records {
            let (disk, end) = match &record.body {
                RecordBody::Write { disk, offset, data } => (*disk, offset + data.len() as u64),
                RecordBody::Trim {
                    disk,
                    offset,
                    length,
                } => (*disk, offset + length),
                RecordBody::Flush { disk } => (*disk, 0),
                _ => continue,
            };
            let Some(known) = state.disks.iter().find(|d| d.id == disk) else {
                return Err(TargetError::Protocol(format!(
                    "record {} names disk {disk}, not in group {}",
                    record.sequence, state.name
                )));
            };
            if end > known.size_bytes {
                return Err(TargetError::Protocol(format!(
                    "record {} ends at {end}, past disk {} ({} bytes)",
                    record.sequence, known.name, known.size_bytes
                )));
            }
        }
        Ok(())
    }

    fn note_points(&self, records: &[StagedRecord]) {
        let newest = records.iter().rev().find_map(point_of);
        if let Some(point) = newest {
            *self.newest_point.lock().unwrap_or_else(|p| p.into_inner()) = Some(point);
        }
    }

    /// The applier: applies redo in order until `cancel`. Runs until the end
    /// of the daemon; a failure stops it and is reported as the group's problem.
    pub async fn run_applier(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let mut last_checkpoint = Instant::now();
        let mut unsynced = false;
        loop {
            let next = self.lock_state().redo_applied + 1;
            let group = self.clone();
            let step = tokio::task::spawn_blocking(move || group.apply_from(next)).await;
            let applied = match step {
                Ok(Ok(applied)) => applied,
                Ok(Err(error)) => {
                    self.fail(format!("applier stopped: {error}"));
                    return;
                }
                Err(_) => {
                    self.fail("applier panicked".into());
                    return;
                }
            };
            unsynced |= applied;
            let due = last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL;
            if unsynced && (due || !applied) {
                let group = self.clone();
                let result = tokio::task::spawn_blocking(move || group.checkpoint()).await;
                if let Ok(Err(error)) | Err(error) =
                    result.map_err(|_| TargetError::Corrupt("checkpoint panicked".into()))
                {
                    self.fail(format!("checkpoint failed: {error}"));
                    return;
                }
                unsynced = false;
                last_checkpoint = Instant::now();
            }
            if applied {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.arrived.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn fail(&self, problem: String) {
        tracing::error!(group = %self.name(), %problem, "target group stopped");
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem);
    }

    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies the redo records from `next` that are there; false when none.
    fn apply_from(&self, next: u64) -> Result<bool, TargetError> {
        if let Some(kept) = self.take_recent(next) {
            if kept.last > self.applied_through() {
                self.apply_batch(kept.first, kept.last, &kept.records)?;
            }
            self.lock_state().redo_applied = kept.redo;
            return Ok(true);
        }
        let records = self.redo.read_from_blocking(next, APPLY_READ_BYTES)?;
        if records.is_empty() {
            return Ok(false);
        }
        for record in &records {
            let batch = decode_redo(record)?;
            let applied_through = self.applied_through();
            if batch.sequence_last > applied_through {
                let staged = payload::open_batch(&batch).map_err(|e| {
                    TargetError::Corrupt(format!("redo record {}: {e}", record.sequence))
                })?;
                self.apply_batch(batch.sequence_first, batch.sequence_last, &staged)?;
            }
            self.lock_state().redo_applied = record.sequence;
        }
        Ok(true)
    }

    /// Saves the pre-images of a batch in the undo log (durable), then writes
    /// the batch to the replicas and indexes the undo entries.
    fn apply_batch(
        &self,
        first: u64,
        last: u64,
        records: &[StagedRecord],
    ) -> Result<(), TargetError> {
        let mut builder = UndoBuilder::default();
        let mut zero_entries: Vec<(u64, u32, u64, u64)> = Vec::new();
        // In-batch overlay: earlier records of this batch, per disk (last wins).
        let mut overlays: HashMap<u32, IntervalMap> = HashMap::new();
        for (position, record) in records.iter().enumerate() {
            let (disk, offset, length) = match &record.body {
                RecordBody::Write { disk, offset, data } => (*disk, *offset, data.len() as u64),
                RecordBody::Trim {
                    disk,
                    offset,
                    length,
                } => (*disk, *offset, *length),
                RecordBody::Resync {
                    unix_ms,
                    done,
                    owner,
                } => {
                    builder.marker(super::ResyncMarker {
                        sequence: record.sequence,
                        unix_ms: *unix_ms,
                        done: *done,
                        owner: *owner,
                    });
                    continue;
                }
                _ => {
                    if let Some(point) = point_of(record) {
                        builder.point(point);
                    }
                    continue;
                }
            };
            let file = self.replica(disk)?;
            let overlay = overlays.entry(disk).or_default();
            for piece in overlay.lookup(offset, offset + length) {
                match piece.source {
                    Some(source) => {
                        // Earlier in this batch: its data (or zeroes for a trim).
                        match &records[source.id as usize].body {
                            RecordBody::Write { data, .. } => {
                                let at = source.position_of(piece.start) as usize;
                                let old = &data[at..at + (piece.end - piece.start) as usize];
                                builder.add(record.sequence, disk, piece.start, old);
                            }
                            _ => zero_entries.push((
                                record.sequence,
                                disk,
                                piece.start,
                                piece.end - piece.start,
                            )),
                        }
                    }
                    None => {
                        let spans = disk_io::read_spans(
                            &file,
                            piece.start,
                            piece.end - piece.start,
                            UNDO_PIECE_BYTES,
                        )
                        .map_err(|e| TargetError::io(&self.directory, e))?;
                        for span in spans {
                            match span {
                                Span::Zero { offset, length } => {
                                    zero_entries.push((record.sequence, disk, offset, length))
                                }
                                Span::Data { offset, data } => {
                                    builder.add(record.sequence, disk, offset, &data);
                                }
                            }
                        }
                    }
                }
            }
            overlay.overwrite(
                offset,
                offset + length,
                Source {
                    id: position as u64,
                    at: 0,
                    origin: offset,
                },
            );
        }
        let mut blob = builder.finish(first, last);
        // Zero pre-images carry no data: they go in as entries of length with
        // no bytes, marked by ZERO_DATA in the index (see journal.md).
        blob.entries.extend(
            zero_entries
                .iter()
                .flat_map(|&(sequence, disk, offset, length)| {
                    split_zero(sequence, disk, offset, length)
                }),
        );
        blob.entries.sort_by_key(|e| e.sequence);
        let encoded = blob.encode(UNDO_LEVEL);
        self.make_room(encoded.len() as u64)?;
        let handle = tokio::runtime::Handle::current();
        let range = handle.block_on(self.undo.append(vec![RecordBody::Blob { data: encoded }]))?;
        let undo_number = range.start;
        // The undo is durable: now the replicas may change. The overlays say
        // which record has the last word on each byte: those pieces do not
        // overlap, so they go out together, in any order.
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        let mut files = Vec::new();
        for disk in overlays.keys() {
            files.push((*disk, self.replica(*disk)?));
        }
        let mut writes = Vec::new();
        for (disk, overlay) in &overlays {
            let file = &files.iter().find(|(d, _)| d == disk).expect("listed").1;
            for (start, end, source) in overlay.ranges() {
                match &records[source.id as usize].body {
                    RecordBody::Write { data, .. } => {
                        let at = source.position_of(start) as usize;
                        writes.push(WriteAt {
                            file,
                            offset: start,
                            data: &data[at..at + (end - start) as usize],
                        });
                    }
                    _ => disk_io::discard(file, start, end - start)
                        .map_err(|e| TargetError::io(&self.directory, e))?,
                }
            }
        }
        self.write_replicas(&writes)?;
        index.add_blob(undo_number, &blob);
        drop(index);
        self.applied.send_replace(last);
        Ok(())
    }

    /// Writes through io_uring (pwrite if a ring cannot be set up).
    fn write_replicas(&self, writes: &[WriteAt<'_>]) -> Result<(), TargetError> {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.is_none() {
            match Uring::new(RING_DEPTH) {
                Ok(created) => *ring = Some(created),
                Err(error) => {
                    tracing::warn!(%error, "target: io_uring unavailable for replicas; using pwrite");
                }
            }
        }
        let result = match ring.as_mut() {
            Some(ring) => ring.write_all_at(writes),
            None => writes
                .iter()
                .try_for_each(|w| w.file.write_all_at(w.data, w.offset)),
        };
        result.map_err(|e| TargetError::io(&self.directory, e))
    }

    /// fsyncs the replicas, stores the state, releases applied redo, and
    /// applies retention.
    fn checkpoint(&self) -> Result<(), TargetError> {
        self.sync_replicas()?;
        let (redo_applied, state) = {
            let mut state = self.lock_state();
            state.applied_through = self.applied_through();
            (state.redo_applied, state.clone())
        };
        state.store(&self.directory)?;
        self.redo.release_through(redo_applied)?;
        self.apply_retention()?;
        Ok(())
    }

    pub(crate) fn sync_replicas(&self) -> Result<(), TargetError> {
        for file in self
            .replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            file.sync_data()
                .map_err(|e| TargetError::io(&self.directory, e))?;
        }
        Ok(())
    }

    pub fn journal_bytes(&self) -> u64 {
        self.redo.usage().bytes_on_disk + self.undo.usage().bytes_on_disk
    }

    /// Releases undo older than the retention window.
    fn apply_retention(&self) -> Result<(), TargetError> {
        let cutoff =
            drgw_io::clock::unix_millis().saturating_sub(self.policy.window.as_millis() as u64);
        let release = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            // The oldest point to keep: the first inside the window (or the newest).
            let keep = index
                .points
                .iter()
                .find(|p| p.unix_ms >= cutoff)
                .or(index.points.back())
                .map(|p| p.sequence);
            let keep = match (keep, self.pinned_from()) {
                (Some(keep), Some(pinned)) => Some(keep.min(pinned)),
                (keep, _) => keep,
            };
            keep.and_then(|keep| {
                index
                    .undo_records
                    .iter()
                    .take_while(|r| r.sequence_last <= keep)
                    .last()
                    .map(|r| r.undo)
            })
        };
        if let Some(undo) = release {
            self.release_undo(undo);
        }
        Ok(())
    }

    fn release_undo(&self, undo: u64) {
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drop_through_undo(undo);
        self.blob_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _)| *n > undo);
        if let Err(error) = self.undo.release_through(undo) {
            tracing::error!(group = %self.name(), %error, "target: releasing undo failed");
        }
    }

    /// Before appending `bytes` of undo: when the journal would pass its cap,
    /// the oldest points go first (with an event); never the newest.
    fn make_room(&self, bytes: u64) -> Result<(), TargetError> {
        let cap = self.policy.cap_bytes;
        let margin = 2 * self.policy.segment_bytes;
        let mut trimmed_before = None;
        while self.journal_bytes() + bytes + margin > cap {
            let victim = {
                let index = self.index.read().unwrap_or_else(|p| p.into_inner());
                let count = index.undo_records.len();
                let pinned = self.pinned_from().unwrap_or(u64::MAX);
                if count <= 1 {
                    None
                } else {
                    // An eighth of what is kept (at least one record), oldest
                    // first; never what a pinned point needs.
                    index
                        .undo_records
                        .get((count / 8).max(1) - 1)
                        .filter(|r| r.sequence_last <= pinned)
                        .map(|r| r.undo)
                }
            };
            let Some(undo) = victim else {
                if self.pinned_from().is_some() {
                    tracing::warn!(group = %self.name(), journal_bytes = self.journal_bytes(), cap,
                        "target: journal over its cap: an export, test failover or failover holds its point");
                }
                break;
            };
            self.release_undo(undo);
            trimmed_before = self
                .index
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .points
                .front()
                .map(|p| p.unix_ms);
        }
        if let Some(oldest) = trimmed_before {
            let event = super::Event::RetentionTrimmed {
                group: self.name(),
                cap_bytes: cap,
                oldest_point_unix_ms: oldest,
            };
            super::raise(event);
        }
        Ok(())
    }

    /// Status figures (blocking only on in-memory locks).
    pub fn status(&self) -> TargetGroupStatus {
        let state = self.lock_state().clone();
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let newest = self
            .newest_point
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = drgw_io::clock::unix_millis();
        let rpo_s = newest
            .as_ref()
            .map(|p| now.saturating_sub(p.unix_ms) as f64 / 1000.0);
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        TargetGroupStatus {
            peer: state.peer.clone(),
            group: state.group,
            name: state.name.clone(),
            disks: state.disks.clone(),
            received_through: self.received_through(),
            applied_through: index.applied_through,
            rpo_s,
            rpo_threshold_s: self.policy.rpo_threshold.as_secs(),
            rpo_exceeded: self.rpo_exceeded.load(Ordering::SeqCst),
            newest_point_unix_ms: newest.map(|p| p.unix_ms),
            oldest_point_unix_ms: index.points.front().map(|p| p.unix_ms),
            points: index.points.len(),
            journal_bytes: self.journal_bytes(),
            journal_cap_bytes: self.policy.cap_bytes,
            index_memory_bytes: index.memory_bytes(),
            batches_received: counters.batches_received,
            duplicates_dropped: counters.duplicates_dropped,
            bytes_received: counters.bytes_received,
            problem: self.problem(),
        }
    }

    /// Checks the RPO against the threshold; raises an event on each crossing.
    pub fn check_rpo(&self) {
        let Some(rpo) = self.status().rpo_s else {
            return;
        };
        let threshold = self.policy.rpo_threshold.as_secs_f64();
        let exceeded = rpo > threshold;
        if self.rpo_exceeded.swap(exceeded, Ordering::SeqCst) != exceeded {
            super::raise(super::Event::Rpo {
                group: self.name(),
                exceeded,
                rpo_s: rpo,
                threshold_s: threshold,
            });
        }
    }

    /// Recovery points, oldest first.
    pub fn points(&self) -> Vec<RecoveryPoint> {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .points
            .iter()
            .cloned()
            .collect()
    }

    /// Resolves a point name to a point that can be recovered: one taken
    /// during a resync is refused, naming the newest one before it.
    pub fn resolve(&self, spec: &super::PointSpec) -> Result<RecoveryPoint, TargetError> {
        let points = self.points();
        let point = spec.resolve(&points)?;
        let markers = self.markers();
        let Some(open) = super::index::resync_open_at(&markers, point.sequence) else {
            return Ok(point);
        };
        let finished = super::index::resyncs_closed_after(&markers, point.sequence);
        let before = points
            .iter()
            .rev()
            .filter(|p| p.sequence < open.sequence)
            .find(|p| super::index::resync_open_at(&markers, p.sequence).is_none())
            .map(|p| format!("seq:{} ({})", p.sequence, super::format_utc(p.unix_ms)))
            .unwrap_or_else(|| "none left in the window".into());
        let when = super::format_utc(open.unix_ms);
        Err(TargetError::BadPoint(match finished {
            Some(done) => format!(
                "point seq:{} was taken during the resync of {when} (seq:{} to seq:{done}): it is not crash-consistent; the newest consistent point before it is {before}, and points after seq:{done} are consistent",
                point.sequence, open.sequence
            ),
            None => format!(
                "point seq:{} was taken during a resync still in progress (since {when}, seq:{}): it is not crash-consistent; the newest consistent point before it is {before}, or wait for the resync to finish",
                point.sequence, open.sequence
            ),
        }))
    }

    /// Resync starts and ends still in the window, oldest first.
    pub fn markers(&self) -> Vec<super::ResyncMarker> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        index.markers.iter().copied().collect()
    }

    pub fn recoverable(&self) -> (u64, u64) {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        (index.recoverable_from, index.applied_through)
    }
}

fn split_zero(sequence: u64, disk: u32, offset: u64, length: u64) -> Vec<super::undo::UndoEntry> {
    let mut entries = Vec::new();
    let mut at = offset;
    while at < offset + length {
        let piece = (offset + length - at).min(1 << 30);
        entries.push(super::undo::UndoEntry {
            sequence,
            disk,
            offset: at,
            length: piece as u32,
            data_at: ZERO_DATA,
        });
        at += piece;
    }
    entries
}

fn point_of(record: &StagedRecord) -> Option<RecoveryPoint> {
    match &record.body {
        RecordBody::Point { unix_ms } => Some(RecoveryPoint {
            sequence: record.sequence,
            unix_ms: *unix_ms,
            bookmark: None,
        }),
        RecordBody::Bookmark { name, unix_ms } => Some(RecoveryPoint {
            sequence: record.sequence,
            unix_ms: *unix_ms,
            bookmark: Some(name.clone()),
        }),
        _ => None,
    }
}

fn decode_redo(record: &StagedRecord) -> Result<Batch, TargetError> {
    let RecordBody::Blob { data } = &record.body else {
        return Err(TargetError::Corrupt(format!(
            "redo record {} is not a blob",
            record.sequence
        )));
    };
    match wire::decode(data, wire::BODY_BYTES_LIMIT) {
        Ok((Frame::Batch(batch), used)) if used == data.len() => Ok(batch),
        Ok(_) => Err(TargetError::Corrupt(format!(
            "redo record {} is not one BATCH",
            record.sequence
        ))),
        Err(error) => Err(TargetError::Corrupt(format!(
            "redo record {}: {error}",
            record.sequence
        ))),
    }
}

fn merge_disks(
    state: &mut GroupState,
    info: &GroupInfo,
    directory: &Path,
    placement: &BTreeMap<String, PathBuf>,
) -> Result<(), TargetError> {
    for disk in &info.disks {
        match state.disks.iter_mut().find(|d| d.id == disk.disk) {
            Some(known) if known.size_bytes > disk.size_bytes => {
                return Err(TargetError::Protocol(format!(
                    "disk {} shrank from {} to {} bytes: a protected disk can only grow (unprotect it and protect it again)",
                    disk.name, known.size_bytes, disk.size_bytes
                )));
            }
            Some(known) if known.size_bytes < disk.size_bytes => {
                tracing::info!(disk = %disk.name, from = known.size_bytes, to = disk.size_bytes, "replica grows");
                known.size_bytes = disk.size_bytes;
                known.name = disk.name.clone();
            }
            Some(known) => known.name = disk.name.clone(),
            None => state.disks.push(ReplicaDisk {
                id: disk.disk,
                name: disk.name.clone(),
                size_bytes: disk.size_bytes,
                path: placement
                    .get(&disk.name)
                    .cloned()
                    .unwrap_or_else(|| directory.join(format!("disk-{}.img", disk.disk))),
            }),
        }
    }
    Ok(())
}

fn grow_replica(file: &File, disk: &ReplicaDisk) -> Result<(), TargetError> {
    let metadata = file
        .metadata()
        .map_err(|e| TargetError::io(&disk.path, e))?;
    if metadata.file_type().is_file() {
        if metadata.len() < disk.size_bytes {
            file.set_len(disk.size_bytes)
                .map_err(|e| TargetError::io(&disk.path, e))?;
        }
        return Ok(());
    }
    let size =
        drgw_io::fsutil::block_device_size(file).map_err(|e| TargetError::io(&disk.path, e))?;
    if size < disk.size_bytes {
        return Err(TargetError::Protocol(format!(
            "{} is {size} bytes, smaller than disk {} ({} bytes): grow the replica device first",
            disk.path.display(),
            disk.name,
            disk.size_bytes
        )));
    }
    Ok(())
}

fn open_replica(disk: &ReplicaDisk) -> Result<File, TargetError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&disk.path)
        .map_err(|e| TargetError::io(&disk.path, e))?;
    let length = file
        .metadata()
        .map_err(|e| TargetError::io(&disk.path, e))?
        .len();
    if length < disk.size_bytes
        && file
            .metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false)
    {
        file.set_len(disk.size_bytes)
            .map_err(|e| TargetError::io(&disk.path, e))?;
    }
    Ok(file)
}
