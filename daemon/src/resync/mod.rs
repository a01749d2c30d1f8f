//! Resync of a protected group, source side (docs/ARCHITECTURE.md,
//! "Resync").
//!
//! Every disk of the group is compared with its replica at the target by
//! block sums computed on both sides at once (the tap reads the primary,
//! the target its replica, both through io_uring, `drgw_sums`). A block
//! that differs is compared again at the fine grain (4 KiB by default), and
//! the tap sends again only the fine blocks that differ, read from the
//! primary like writes, through the normal path: staging, shipping (under
//! the bandwidth schedule), the journal. Nothing acknowledged is skipped.
//!
//! Consistency: resent blocks arrive in disk order, not in the order the
//! guest wrote them, so the target's points between the start marker and
//! the end marker (`RecordBody::Resync`) are not crash-consistent; the
//! target refuses to recover them and names the newest point before. The
//! first point after the end marker is consistent again.
//!
//! Resumable: progress is saved in the catalog after every chunk whose
//! differing blocks are staged; a restart of the source resumes there, a
//! lost link or tap makes it wait and retry the chunk.

use crate::appliance::Appliance;
use drgw_catalog::{ProtectedDisk, ResyncPhase, ResyncRecord};
use drgw_ingest::TapRequest;
use drgw_wire::{ResyncRange, SumRequest, SumSpan, RESYNC_RANGES_MAX, SUM_BLOCKS_MAX};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Chunks compared at once (sums asked of both sides ahead of the resend).
const PIPELINE: usize = 3;
/// Wait before retrying after a lost link, tap or answer.
const RETRY_WAIT: Duration = Duration::from_secs(2);
/// How long the tap may take to stage the blocks of one chunk.
const STAGED_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest range in a RESYNC (the tap reads and forwards it in pieces).
const RANGE_BYTES_MAX: u64 = 16 << 20;

pub const BLOCK_BYTES_DEFAULT: u32 = 64 << 10;
pub const FINE_BYTES_DEFAULT: u32 = 4 << 10;

/// What `drgw resync` asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResyncOptions {
    pub disk: Option<String>,
    pub block_bytes: u32,
    pub fine_bytes: u32,
    /// Not before this time (ms since the epoch): a resync scheduled
    /// outside office hours.
    pub not_before_unix_ms: Option<u64>,
    pub reason: String,
}

/// A resync as `drgw status` and `drgw resync --status` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResyncView {
    #[serde(flatten)]
    pub record: ResyncRecord,
    /// Over this run (since the start or the last resume).
    pub bytes_per_second: f64,
    pub eta_s: Option<f64>,
    /// Why it is not progressing now, when it is not.
    pub waiting: Option<String>,
    pub not_before_unix_ms: Option<u64>,
}

struct Live {
    record: ResyncRecord,
    waiting: Option<String>,
    not_before_unix_ms: Option<u64>,
    run_started: Instant,
    compared_at_run_start: u64,
}

impl Live {
    fn view(&self) -> ResyncView {
        let seconds = self.run_started.elapsed().as_secs_f64();
        let done = self
            .record
            .compared_bytes
            .saturating_sub(self.compared_at_run_start);
        let rate = if seconds > 0.5 {
            done as f64 / seconds
        } else {
            0.0
        };
        let left = self
            .record
            .total_bytes
            .saturating_sub(self.record.compared_bytes);
        ResyncView {
            record: self.record.clone(),
            bytes_per_second: rate,
            eta_s: (rate > 0.0 && self.record.phase == ResyncPhase::Running)
                .then(|| left as f64 / rate),
            waiting: self.waiting.clone(),
            not_before_unix_ms: self.not_before_unix_ms,
        }
    }
}

struct Running {
    cancel: CancellationToken,
    live: Arc<Mutex<Live>>,
}

/// The resyncs of this appliance's protected groups: running ones, and
/// the last one of each group (from the catalog).
pub struct ResyncBoard {
    running: Mutex<BTreeMap<String, Running>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ResyncBoard {
    pub fn new(shutdown: CancellationToken, tracker: TaskTracker) -> ResyncBoard {
        ResyncBoard {
            running: Mutex::new(BTreeMap::new()),
            shutdown,
            tracker,
        }
    }

    /// Running resyncs.
    pub fn running(&self) -> Vec<ResyncView> {
        lock(&self.running)
            .values()
            .map(|running| lock(&running.live).view())
            .collect()
    }

    pub fn view(&self, group: &str) -> Option<ResyncView> {
        lock(&self.running)
            .get(group)
            .map(|running| lock(&running.live).view())
    }
}

/// Starts a resync of `group` (refused while one runs).
pub fn start(
    appliance: &Arc<Appliance>,
    group: &str,
    options: ResyncOptions,
) -> Result<ResyncView, String> {
    check_sizes(options.block_bytes, options.fine_bytes)?;
    let mut disks: Vec<ProtectedDisk> = appliance
        .ingest
        .disks()
        .into_iter()
        .filter(|d| d.group == group)
        .collect();
    if disks.is_empty() {
        return Err(format!(
            "no protected group {group} on this appliance (a resync runs on the group's source appliance)"
        ));
    }
    disks.sort_by_key(|d| d.id);
    if let Some(name) = &options.disk {
        disks.retain(|d| &d.name == name);
        if disks.is_empty() {
            return Err(format!("group {group} has no disk {name}"));
        }
    }
    if crate::ship::target_of(appliance, &disks[0]).is_none() {
        return Err(format!(
            "group {group} has no target appliance to compare with (pair one, or protect with --peer)"
        ));
    }
    if let Some(view) = appliance.resyncs.view(group) {
        return Err(format!(
            "a resync of {group} is already running ({} of {} compared); `drgw resync {group} --cancel` stops it",
            drgw_io::units::Bytes(view.record.compared_bytes),
            drgw_io::units::Bytes(view.record.total_bytes)
        ));
    }
    let seed = u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let record = ResyncRecord {
        group: group.to_string(),
        group_id: disks[0].group_id,
        disks: disks.iter().map(|d| d.name.clone()).collect(),
        block_bytes: options.block_bytes,
        fine_bytes: options.fine_bytes,
        seed,
        reason: options.reason.clone(),
        phase: ResyncPhase::Running,
        started_unix_ms: drgw_io::clock::unix_millis(),
        finished_unix_ms: None,
        start_sequence: None,
        disk_index: 0,
        next_offset: 0,
        total_bytes: disks.iter().map(|d| d.size_bytes).sum(),
        compared_bytes: 0,
        differing_bytes: 0,
        resumes: 0,
        error: None,
    };
    appliance
        .catalog
        .put_resync(&record)
        .map_err(|e| e.to_string())?;
    tracing::info!(group, disks = ?record.disks, block_bytes = record.block_bytes,
        fine_bytes = record.fine_bytes, reason = %record.reason, "resync started");
    Ok(launch(appliance, record, options.not_before_unix_ms))
}

/// Grows a protected disk (`drgw resize`): the catalog takes the new size,
/// the tap's session is ended (it attaches again with the new size once
/// restarted on the grown primary), the group is announced again (the
/// target grows the replica), and a resync of the disk starts: the grown
/// part of the primary may hold anything, and only a comparison says what.
/// The resync waits until the tap and the target both see the new size.
pub fn resize(
    appliance: &Arc<Appliance>,
    disk: &str,
    size_bytes: u64,
) -> Result<ResizeOutcome, String> {
    let current = appliance
        .ingest
        .disk(disk)
        .ok_or_else(|| format!("no protected disk {disk} on this appliance"))?;
    if size_bytes == 0 || size_bytes % 512 != 0 {
        return Err(format!(
            "disk size {size_bytes} must be a positive multiple of 512 bytes"
        ));
    }
    if size_bytes < current.size_bytes {
        return Err(format!(
            "a protected disk can only grow ({disk} is {} bytes); to shrink it, unprotect it and protect it again",
            current.size_bytes
        ));
    }
    if size_bytes == current.size_bytes {
        return Err(format!("{disk} is already {size_bytes} bytes"));
    }
    if appliance.resyncs.view(&current.group).is_some() {
        return Err(format!(
            "a resync of {} is running: wait for it, or `drgw resync {} --cancel`, then resize",
            current.group, current.group
        ));
    }
    appliance
        .catalog
        .resize_disk(disk, size_bytes)
        .map_err(|e| e.to_string())?;
    appliance.refresh_disks().map_err(|e| e.to_string())?;
    appliance.links.end_session(&current.tap);
    tracing::info!(
        disk,
        from = current.size_bytes,
        to = size_bytes,
        "disk grown"
    );
    let options = ResyncOptions {
        disk: Some(disk.to_string()),
        block_bytes: BLOCK_BYTES_DEFAULT,
        fine_bytes: FINE_BYTES_DEFAULT,
        not_before_unix_ms: None,
        reason: format!(
            "{disk} grew from {} to {size_bytes} bytes",
            current.size_bytes
        ),
    };
    let resync = start(appliance, &current.group, options)?;
    Ok(ResizeOutcome {
        disk: disk.to_string(),
        group: current.group,
        from_bytes: current.size_bytes,
        size_bytes,
        resync,
    })
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResizeOutcome {
    pub disk: String,
    pub group: String,
    pub from_bytes: u64,
    pub size_bytes: u64,
    pub resync: ResyncView,
}

fn check_sizes(block_bytes: u32, fine_bytes: u32) -> Result<(), String> {
    let valid = |bytes: u32| {
        bytes.is_power_of_two() && (4096..=drgw_wire::SUM_BLOCK_BYTES_MAX).contains(&bytes)
    };
    if !valid(block_bytes) || !valid(fine_bytes) {
        return Err(
            "block sizes must be powers of two from 4 KiB to 64 MiB (e.g. --grain 64K --fine 4K)"
                .into(),
        );
    }
    if fine_bytes > block_bytes || block_bytes / fine_bytes > SUM_BLOCKS_MAX {
        return Err(format!(
            "the fine grain must be at most the grain and at least 1/{SUM_BLOCKS_MAX} of it"
        ));
    }
    Ok(())
}

fn launch(
    appliance: &Arc<Appliance>,
    record: ResyncRecord,
    not_before_unix_ms: Option<u64>,
) -> ResyncView {
    let board = &appliance.resyncs;
    let cancel = board.shutdown.child_token();
    let live = Arc::new(Mutex::new(Live {
        compared_at_run_start: record.compared_bytes,
        record: record.clone(),
        waiting: None,
        not_before_unix_ms,
        run_started: Instant::now(),
    }));
    let view = lock(&live).view();
    lock(&board.running).insert(
        record.group.clone(),
        Running {
            cancel: cancel.clone(),
            live: live.clone(),
        },
    );
    board.tracker.spawn(run(appliance.clone(), live, cancel));
    view
}

/// Resumes the resyncs that were running when the daemon stopped.
pub fn resume_all(appliance: &Arc<Appliance>) {
    let records = match appliance.catalog.resyncs() {
        Ok(records) => records,
        Err(error) => {
            tracing::error!(%error, "cannot read resyncs from the catalog");
            return;
        }
    };
    for mut record in records {
        if record.phase == ResyncPhase::Running {
            record.resumes += 1;
            tracing::info!(group = %record.group, disk_index = record.disk_index,
                next_offset = record.next_offset, "resync resumed after a restart");
            launch(appliance, record, None);
        }
    }
}

/// Cancels the running resync of `group`. Its points stay unusable from
/// its start until a later resync of the group completes.
pub fn cancel(appliance: &Arc<Appliance>, group: &str) -> Result<ResyncView, String> {
    let running = lock(&appliance.resyncs.running);
    let Some(entry) = running.get(group) else {
        return Err(format!("no resync of {group} is running"));
    };
    entry.cancel.cancel();
    let view = lock(&entry.live).view();
    Ok(view)
}

/// The running resync of `group`, or its last one from the catalog.
pub fn status(appliance: &Arc<Appliance>, group: &str) -> Result<ResyncView, String> {
    if let Some(view) = appliance.resyncs.view(group) {
        return Ok(view);
    }
    match appliance.catalog.resync(group).map_err(|e| e.to_string())? {
        Some(record) => Ok(ResyncView {
            record,
            bytes_per_second: 0.0,
            eta_s: None,
            waiting: None,
            not_before_unix_ms: None,
        }),
        None => Err(format!("no resync of {group} on record")),
    }
}

enum Stop {
    /// Try the chunk again after a wait (link, tap or target not ready).
    Retry(String),
    /// The resync cannot go on.
    Fatal(String),
    Cancelled,
}

async fn run(appliance: Arc<Appliance>, live: Arc<Mutex<Live>>, cancel: CancellationToken) {
    let group = lock(&live).record.group.clone();
    let not_before = lock(&live).not_before_unix_ms;
    let outcome = loop {
        if let Some(at) = not_before {
            let now = drgw_io::clock::unix_millis();
            if now < at {
                lock(&live).waiting =
                    Some(format!("scheduled for {}", drgw_replica::format_utc(at)));
                tokio::select! {
                    _ = cancel.cancelled() => break Stop::Cancelled,
                    _ = tokio::time::sleep(Duration::from_millis((at - now).min(1000))) => continue,
                }
            }
            lock(&live).not_before_unix_ms = None;
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => Err(Stop::Cancelled),
            result = pass(&appliance, &live) => result,
        };
        match result {
            Ok(()) => break Stop::Retry(String::new()),
            Err(Stop::Retry(reason)) => {
                tracing::warn!(group = %group, %reason, "resync waits and retries");
                lock(&live).waiting = Some(reason);
                tokio::select! {
                    _ = cancel.cancelled() => break Stop::Cancelled,
                    _ = tokio::time::sleep(RETRY_WAIT) => {}
                }
            }
            Err(stop) => break stop,
        }
    };
    let (phase, error) = match outcome {
        // A daemon shutdown leaves it running in the catalog: resumed at start.
        Stop::Cancelled if appliance.resyncs.shutdown.is_cancelled() => {
            lock(&appliance.resyncs.running).remove(&group);
            return;
        }
        Stop::Cancelled => (ResyncPhase::Cancelled, None),
        Stop::Fatal(error) => (ResyncPhase::Failed, Some(error)),
        Stop::Retry(_) => (ResyncPhase::Done, None),
    };
    let record = {
        let mut live = lock(&live);
        live.record.phase = phase;
        live.record.error = error.clone();
        live.record.finished_unix_ms = Some(drgw_io::clock::unix_millis());
        live.waiting = None;
        live.record.clone()
    };
    if let Err(error) = save(&appliance, &record).await {
        tracing::error!(group = %group, %error, "cannot record the end of the resync");
    }
    lock(&appliance.resyncs.running).remove(&group);
    let seconds = record
        .finished_unix_ms
        .unwrap_or(record.started_unix_ms)
        .saturating_sub(record.started_unix_ms) as f64
        / 1000.0;
    let outcome = match phase {
        ResyncPhase::Done => "done",
        ResyncPhase::Failed => "failed",
        _ => "cancelled",
    };
    tracing::info!(group = %group, outcome, compared_bytes = record.compared_bytes,
        differing_bytes = record.differing_bytes, seconds, error = ?record.error, "resync ended");
    drgw_replica::raise(drgw_replica::Event::Resync {
        group,
        outcome: outcome.into(),
        compared_bytes: record.compared_bytes,
        differing_bytes: record.differing_bytes,
        seconds,
        error: record.error.clone(),
    });
}

async fn save(appliance: &Arc<Appliance>, record: &ResyncRecord) -> Result<(), String> {
    let catalog = appliance.catalog.clone();
    let record = record.clone();
    tokio::task::spawn_blocking(move || catalog.put_resync(&record))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Aborts a comparison task when dropped (a retry or a cancel).
struct Comparing(tokio::task::JoinHandle<Result<Compared, String>>);

impl Drop for Comparing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Compared {
    start: u64,
    end: u64,
    ranges: Vec<ResyncRange>,
}

/// One pass from where the record stands to the end; a lost link or tap
/// ends it with `Retry`.
async fn pass(appliance: &Arc<Appliance>, live: &Arc<Mutex<Live>>) -> Result<(), Stop> {
    let record = lock(live).record.clone();
    if record.start_sequence.is_none() {
        let sequence = appliance
            .ingest
            .resync_marker(&record.group, false)
            .await
            .map_err(|e| Stop::Retry(e.to_string()))?;
        let record = {
            let mut live = lock(live);
            live.record.start_sequence = Some(sequence);
            live.record.clone()
        };
        save(appliance, &record).await.map_err(Stop::Retry)?;
    }
    let (first_disk, names) = (record.disk_index, record.disks.clone());
    for (index, name) in names.iter().enumerate().skip(first_disk) {
        let disk = appliance
            .ingest
            .disk(name)
            .ok_or_else(|| Stop::Fatal(format!("disk {name} is no longer protected")))?;
        let peer = crate::ship::target_of(appliance, &disk)
            .ok_or_else(|| Stop::Fatal(format!("disk {name} has no target appliance")))?;
        resync_disk(appliance, live, &disk, &peer).await?;
        let record = {
            let mut live = lock(live);
            live.record.disk_index = index + 1;
            live.record.next_offset = 0;
            live.record.clone()
        };
        save(appliance, &record).await.map_err(Stop::Retry)?;
    }
    appliance
        .ingest
        .resync_marker(&record.group, true)
        .await
        .map_err(|e| Stop::Retry(e.to_string()))?;
    Ok(())
}

async fn resync_disk(
    appliance: &Arc<Appliance>,
    live: &Arc<Mutex<Live>>,
    disk: &ProtectedDisk,
    peer: &str,
) -> Result<(), Stop> {
    let (block, fine, seed, mut next) = {
        let live = lock(live);
        let r = &live.record;
        (r.block_bytes, r.fine_bytes, r.seed, r.next_offset)
    };
    let chunk_bytes = u64::from(block) * u64::from(SUM_BLOCKS_MAX);
    let mut pending: VecDeque<Comparing> = VecDeque::new();
    while next < disk.size_bytes || !pending.is_empty() {
        while pending.len() < PIPELINE && next < disk.size_bytes {
            let start = next;
            let end = (start + chunk_bytes).min(disk.size_bytes);
            next = end;
            let (appliance, disk, peer) = (appliance.clone(), disk.clone(), peer.to_string());
            pending.push_back(Comparing(tokio::spawn(async move {
                compare(&appliance, &disk, &peer, start, end, block, fine, seed).await
            })));
        }
        let mut comparing = pending.pop_front().expect("one is pending");
        let compared = (&mut comparing.0)
            .await
            .map_err(|e| Stop::Retry(format!("comparison task: {e}")))?
            .map_err(Stop::Retry)?;
        resend(appliance, disk, &compared.ranges)
            .await
            .map_err(Stop::Retry)?;
        let differing: u64 = compared.ranges.iter().map(|r| u64::from(r.length)).sum();
        let record = {
            let mut live = lock(live);
            live.waiting = None;
            live.record.next_offset = compared.end;
            live.record.compared_bytes += compared.end - compared.start;
            live.record.differing_bytes += differing;
            live.record.clone()
        };
        save(appliance, &record).await.map_err(Stop::Retry)?;
        if let Some(delay) = test_delay() {
            tokio::time::sleep(delay).await;
        }
    }
    Ok(())
}

/// Tests slow a resync down to kill it halfway: `DRGW_TEST_RESYNC_CHUNK_DELAY_MS`.
fn test_delay() -> Option<Duration> {
    let millis = std::env::var("DRGW_TEST_RESYNC_CHUNK_DELAY_MS").ok()?;
    millis.parse().ok().map(Duration::from_millis)
}

/// Compares `start..end` of a disk: coarse blocks first, then the fine
/// blocks inside each coarse block that differs. Returns the ranges to
/// send again.
#[allow(clippy::too_many_arguments)]
async fn compare(
    appliance: &Arc<Appliance>,
    disk: &ProtectedDisk,
    peer: &str,
    start: u64,
    end: u64,
    block: u32,
    fine: u32,
    seed: u64,
) -> Result<Compared, String> {
    let blocks = (end - start).div_ceil(u64::from(block)) as u32;
    let coarse = vec![SumSpan {
        offset: start,
        blocks,
    }];
    let mut differing = differ(appliance, disk, peer, block, seed, coarse).await?;
    let mut unit = block;
    if fine < block && !differing.is_empty() {
        let per = block / fine;
        let mut fine_differing = Vec::new();
        for offsets in differing.chunks((SUM_BLOCKS_MAX / per) as usize) {
            let spans = offsets
                .iter()
                .map(|&offset| SumSpan {
                    offset,
                    blocks: per,
                })
                .collect();
            fine_differing.extend(differ(appliance, disk, peer, fine, seed, spans).await?);
        }
        differing = fine_differing;
        unit = fine;
    }
    Ok(Compared {
        start,
        end,
        ranges: ranges_of(&differing, u64::from(unit), disk.size_bytes),
    })
}

/// Offsets of the blocks of `spans` whose sums differ between the tap
/// (primary) and the target (replica), asked of both at once.
async fn differ(
    appliance: &Arc<Appliance>,
    disk: &ProtectedDisk,
    peer: &str,
    block: u32,
    seed: u64,
    spans: Vec<SumSpan>,
) -> Result<Vec<u64>, String> {
    let request = SumRequest {
        request: appliance.ingest.request_id(),
        group: disk.group_id,
        disk: disk.id,
        disk_bytes: disk.size_bytes,
        block_bytes: block,
        seed,
        spans,
    };
    let (primary, replica) = tokio::join!(
        tap_sums(appliance, disk, request.clone()),
        appliance.calls.sums(peer, request.clone())
    );
    let (primary, replica) = (primary?, replica?);
    let offsets = request.spans.iter().flat_map(|span| {
        (0..u64::from(span.blocks)).map(move |i| span.offset + i * u64::from(block))
    });
    Ok(offsets
        .zip(primary.iter().zip(&replica))
        .filter(|(_, (a, b))| a != b)
        .map(|(offset, _)| offset)
        .collect())
}

async fn tap_sums(
    appliance: &Arc<Appliance>,
    disk: &ProtectedDisk,
    request: SumRequest,
) -> Result<Vec<u128>, String> {
    let expected = request.blocks() as usize;
    let (answer, answered) = oneshot::channel();
    let ask = TapRequest::Sums {
        disk: disk.name.clone(),
        request,
        answer,
    };
    if appliance.ingest.tap_request(&disk.tap, ask).is_err() {
        return Err(format!("waiting for tap {} to connect", disk.tap));
    }
    let sums = match tokio::time::timeout(crate::link::SUMS_TIMEOUT, answered).await {
        Ok(Ok(sums)) => sums,
        Ok(Err(_)) => {
            return Err(format!(
                "waiting for tap {} to attach {} (its link closed, or the disk is not attached)",
                disk.tap, disk.name
            ))
        }
        Err(_) => return Err(format!("tap {} did not answer block sums", disk.tap)),
    };
    if !sums.error.is_empty() {
        return Err(format!("tap {}: {}", disk.tap, sums.error));
    }
    if sums.sums.len() != expected {
        return Err(format!(
            "tap {} answered {} sums for {expected} blocks",
            disk.tap,
            sums.sums.len()
        ));
    }
    Ok(sums.sums)
}

/// Has the tap send `ranges` again; returns once they are staged.
async fn resend(
    appliance: &Arc<Appliance>,
    disk: &ProtectedDisk,
    ranges: &[ResyncRange],
) -> Result<(), String> {
    let mut staged = Vec::new();
    for frame in ranges.chunks(RESYNC_RANGES_MAX) {
        let (done, answered) = oneshot::channel();
        let ask = TapRequest::Resync {
            disk: disk.name.clone(),
            id: appliance.ingest.request_id(),
            ranges: frame.to_vec(),
            done,
        };
        if appliance.ingest.tap_request(&disk.tap, ask).is_err() {
            return Err(format!("waiting for tap {} to connect", disk.tap));
        }
        staged.push(answered);
    }
    for answered in staged {
        match tokio::time::timeout(STAGED_TIMEOUT, answered).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(format!(
                    "the link to tap {} closed before the resent blocks were staged",
                    disk.tap
                ))
            }
            Err(_) => {
                return Err(format!(
                    "tap {} did not stage the resent blocks within {} s",
                    disk.tap,
                    STAGED_TIMEOUT.as_secs()
                ))
            }
        }
    }
    Ok(())
}

/// Coalesces block offsets (sorted) of `unit` bytes into ranges clipped to
/// the disk, none longer than `RANGE_BYTES_MAX`.
fn ranges_of(offsets: &[u64], unit: u64, size_bytes: u64) -> Vec<ResyncRange> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &offset in offsets {
        let end = (offset + unit).min(size_bytes);
        if offset >= end {
            continue;
        }
        match ranges.last_mut() {
            Some((start, last_end)) if *last_end == offset && end - *start <= RANGE_BYTES_MAX => {
                *last_end = end
            }
            _ => ranges.push((offset, end)),
        }
    }
    ranges
        .into_iter()
        .map(|(offset, end)| ResyncRange {
            offset,
            length: (end - offset) as u32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_coalesce_clip_and_stay_bounded() {
        let ranges = ranges_of(&[0, 4096, 12288, 16384, 20480], 4096, 22000);
        assert_eq!(
            ranges,
            vec![
                ResyncRange {
                    offset: 0,
                    length: 8192
                },
                ResyncRange {
                    offset: 12288,
                    length: 22000 - 12288
                },
            ]
        );
        let many: Vec<u64> = (0..(RANGE_BYTES_MAX / 4096 * 2 + 1))
            .map(|i| i * 4096)
            .collect();
        let ranges = ranges_of(&many, 4096, u64::MAX);
        assert_eq!(ranges.len(), 3);
        assert!(ranges
            .iter()
            .all(|r| u64::from(r.length) <= RANGE_BYTES_MAX));
        assert_eq!(
            ranges.iter().map(|r| u64::from(r.length)).sum::<u64>(),
            many.len() as u64 * 4096
        );
    }

    #[test]
    fn block_sizes_are_checked() {
        assert!(check_sizes(65536, 4096).is_ok());
        assert!(check_sizes(65536, 65536).is_ok());
        assert!(check_sizes(4096, 65536).is_err());
        assert!(check_sizes(65536, 1000).is_err());
        assert!(
            check_sizes(64 << 20, 4096).is_err(),
            "16384 fine blocks per block"
        );
        assert!(check_sizes(2048, 2048).is_err());
    }
}
