//! Reprotect: after a failover committed at the target, the group
//! replicates back to the original site (docs/ARCHITECTURE.md,
//! "Reprotect").
//!
//! Run on the original site A (`drgw reprotect GROUP --disk NAME=PATH`): it
//! knows where its disks are and must have stopped its tap. A gathers what
//! it staged that the failed-over site B never acknowledged (written here
//! after the failover point), refuses to overwrite it unless told to
//! (`--discard-local`), and asks B over the link (REPROTECT). B marks those
//! ranges in its change maps, protects the group's disks with its committed
//! disks as their tap (each write is staged once it is written), and sends
//! the delta: every range of the change maps, read from its disks, between
//! resync markers. A's target opens the reverse group with A's own disks as
//! the replicas. From then on it is normal replication: zstd, the bandwidth
//! schedule, resume after a cut, points and RPO at A.

use crate::appliance::Appliance;
use drgw_catalog::FAILOVER_TAP;
use drgw_catalog::{ProtectedDisk, ReversedGroup};
use drgw_replica::{Capture, PointDisk};
use drgw_wire::{Reprotect, ReprotectDisk, Reprotected, REPROTECT_RANGES_MAX};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Largest piece of the delta read and staged at once.
const DELTA_PIECE_BYTES: u64 = 1 << 20;
/// The change map is saved after this many bytes of the delta are staged,
/// so a restart resends at most that much again.
const DELTA_SAVE_BYTES: u64 = 16 << 20;
/// Wait before a failed delta is tried again.
const DELTA_RETRY: Duration = Duration::from_secs(5);

/// What `drgw reprotect` answers (original site).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReprotectOutcome {
    pub group: String,
    /// The appliance the group now replicates from.
    pub peer: String,
    /// The peer's group number for the reverse direction.
    pub peer_group: u32,
    /// Bytes the peer sends back to start with (its change maps plus the
    /// ranges this site gave up).
    pub delta_bytes: u64,
    /// Bytes this site had staged and the peer never acknowledged,
    /// overwritten by the peer's data.
    pub discarded_bytes: u64,
    pub replicas: BTreeMap<String, PathBuf>,
    pub message: String,
}

/// Progress of a delta being sent back (failed-over site), for status.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeltaProgress {
    pub group: String,
    pub peer: String,
    /// Bytes of the change maps when the current pass began.
    pub total_bytes: u64,
    pub sent_bytes: u64,
    /// Passes completed (a pass ends with the done marker staged).
    pub passes: u32,
    pub running: bool,
    pub error: Option<String>,
}

fn board() -> &'static Mutex<BTreeMap<String, DeltaProgress>> {
    static BOARD: OnceLock<Mutex<BTreeMap<String, DeltaProgress>>> = OnceLock::new();
    BOARD.get_or_init(|| Mutex::new(BTreeMap::new()))
}

fn update(group: &str, change: impl FnOnce(&mut DeltaProgress)) {
    let mut board = board().lock().unwrap_or_else(|p| p.into_inner());
    change(board.entry(group.to_string()).or_default());
}

/// The deltas of reprotected groups on this appliance, for `drgw status`.
pub fn progress() -> Vec<DeltaProgress> {
    board()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect()
}

/// The delta senders running, by group: their wake and their stop.
type Senders = HashMap<String, (Arc<tokio::sync::Notify>, CancellationToken)>;

fn senders() -> &'static Mutex<Senders> {
    static SENDERS: OnceLock<Mutex<Senders>> = OnceLock::new();
    SENDERS.get_or_init(|| Mutex::new(HashMap::new()))
}

// ---------------------------------------------------------------------------
// Original site: `drgw reprotect`.

/// Writes this site staged for a group that its target never acknowledged.
#[derive(Debug, Default)]
struct Unshipped {
    ranges: BTreeMap<String, Vec<(u64, u64)>>,
    bytes: u64,
    records: u64,
    first: Option<u64>,
    last: u64,
}

pub async fn reprotect(
    appliance: &Arc<Appliance>,
    group: &str,
    replicas: Vec<(String, PathBuf)>,
    discard_local: bool,
) -> Result<ReprotectOutcome, String> {
    let text = |e: drgw_catalog::CatalogError| e.to_string();
    let disks: Vec<ProtectedDisk> = appliance
        .catalog
        .disks()
        .map_err(text)?
        .into_iter()
        .filter(|d| d.group == group)
        .collect();
    if disks.is_empty() {
        if let Some(reversed) = appliance
            .catalog
            .reversed()
            .map_err(text)?
            .into_iter()
            .find(|r| r.group == group)
        {
            return Err(format!(
                "group {group} is already reprotected: it replicates from {} since {}",
                reversed.peer,
                drgw_replica::format_utc(reversed.since_unix_ms)
            ));
        }
        return Err(format!("no group {group} is protected on this appliance"));
    }
    if disks.iter().any(|d| d.tap == FAILOVER_TAP) {
        return Err(format!(
            "group {group} replicates this site's failed-over disks to {}: reprotect is run on the original site",
            disks[0].peer.clone().unwrap_or_default()
        ));
    }
    let peer = disks[0]
        .peer
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            format!("group {group} has no target appliance: nothing to reprotect from")
        })?;
    let attached: Vec<String> = disks
        .iter()
        .filter(|d| appliance.ingest.disk_figures(&d.name).attached)
        .map(|d| format!("{} (tap {})", d.name, d.tap))
        .collect();
    if !attached.is_empty() {
        return Err(format!(
            "a tap still serves {}: stop it first (and the VM using it); its disks become the replicas of {peer}'s group",
            attached.join(", ")
        ));
    }
    let mut placement = BTreeMap::new();
    for (name, path) in replicas {
        if !disks.iter().any(|d| d.name == name) {
            return Err(format!("group {group} has no disk {name}"));
        }
        placement.insert(name, path);
    }
    for disk in &disks {
        let path = placement.get(&disk.name).ok_or_else(|| {
            format!(
                "say where disk {0} is on this site: --disk {0}=PATH (its primary: a file or block device)",
                disk.name
            )
        })?;
        check_replica(path, disk.size_bytes)?;
    }
    let unshipped = unshipped(appliance, &disks).await?;
    if unshipped.bytes > 0 && !discard_local {
        return Err(format!(
            "this site staged {} bytes in {} writes (sequences {} to {}) that {peer} never acknowledged: written here after the failover point. Reprotect overwrites them with {peer}'s data; pass --discard-local to accept losing them",
            unshipped.bytes,
            unshipped.records,
            unshipped.first.unwrap_or(0),
            unshipped.last
        ));
    }
    appliance.targets.place(&peer, group, placement.clone());
    let request = Reprotect {
        request: appliance.calls.request_id(),
        group: group.to_string(),
        disks: disks
            .iter()
            .map(|d| ReprotectDisk {
                name: d.name.clone(),
                ranges: unshipped.ranges.get(&d.name).cloned().unwrap_or_default(),
            })
            .collect(),
    };
    let answer = appliance.calls.reprotect(&peer, request).await;
    let answer = match answer {
        Ok(answer) if answer.error.is_empty() => answer,
        Ok(answer) => {
            appliance.targets.unplace(&peer, group);
            return Err(format!("{peer} refused: {}", answer.error));
        }
        Err(error) => {
            appliance.targets.unplace(&peer, group);
            return Err(error);
        }
    };
    let record = ReversedGroup {
        group: group.to_string(),
        peer: peer.clone(),
        disks: disks.clone(),
        replicas: placement.clone(),
        peer_group: answer.group,
        since_unix_ms: drgw_io::clock::unix_millis(),
        discarded_bytes: unshipped.bytes,
    };
    appliance.catalog.reverse_group(&record).map_err(text)?;
    appliance.refresh_disks().map_err(text)?;
    let group_id = disks[0].group_id;
    if let Err(error) = appliance.ingest.discard_group(group_id).await {
        tracing::warn!(group, %error, "the group's old staging could not be removed");
    }
    let message = format!(
        "reprotected: {peer} replicates group {group} back here, starting with {} bytes that differ{}",
        answer.delta_bytes,
        if unshipped.bytes > 0 {
            format!(
                "; {} bytes written here after the failover point were given up",
                unshipped.bytes
            )
        } else {
            String::new()
        }
    );
    tracing::warn!(group, peer = %peer, delta = answer.delta_bytes, "{message}");
    Ok(ReprotectOutcome {
        group: group.to_string(),
        peer,
        peer_group: answer.group,
        delta_bytes: answer.delta_bytes,
        discarded_bytes: unshipped.bytes,
        replicas: placement,
        message,
    })
}

/// A disk that is to become a replica: a file or block device, at least as
/// large as the disk.
fn check_replica(path: &Path, size_bytes: u64) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let length = if metadata.file_type().is_file() {
        metadata.len()
    } else {
        drgw_io::fsutil::block_device_size(&file).map_err(|e| {
            format!(
                "{}: neither a file nor a block device ({e})",
                path.display()
            )
        })?
    };
    if length < size_bytes {
        return Err(format!(
            "{} is {length} bytes, smaller than the disk ({size_bytes} bytes)",
            path.display()
        ));
    }
    Ok(())
}

/// The ranges of every write and trim still staged for the group past what
/// its target acknowledged (a few acknowledged ones may be included: more
/// is sent back, never less).
async fn unshipped(
    appliance: &Arc<Appliance>,
    disks: &[ProtectedDisk],
) -> Result<Unshipped, String> {
    let (group_id, group) = (disks[0].group_id, disks[0].group.clone());
    let log = appliance
        .ingest
        .shipping_log(group_id, &group)
        .await
        .map_err(|e| e.to_string())?;
    let acknowledged = appliance
        .ship_board
        .all()
        .into_iter()
        .find(|s| s.group == group)
        .map_or(0, |s| s.acknowledged_through);
    let usage = log.usage();
    let mut from = usage.sequence_first_unreleased.max(acknowledged + 1).max(1);
    let names: HashMap<u32, &str> = disks.iter().map(|d| (d.id, d.name.as_str())).collect();
    let mut found = Unshipped::default();
    while from <= usage.sequence_last_durable {
        let records = log
            .read_from(from, 64 << 20)
            .await
            .map_err(|e| format!("reading the group's staging: {e}"))?;
        let Some(last) = records.last() else { break };
        from = last.sequence + 1;
        for record in records {
            let (disk, offset, length) = match &record.body {
                drgw_staging::RecordBody::Write { disk, offset, data } => {
                    (*disk, *offset, data.len() as u64)
                }
                drgw_staging::RecordBody::Trim {
                    disk,
                    offset,
                    length,
                } => (*disk, *offset, *length),
                _ => continue,
            };
            let Some(name) = names.get(&disk) else {
                continue;
            };
            found
                .ranges
                .entry(name.to_string())
                .or_default()
                .push((offset, length));
            found.bytes += length;
            found.records += 1;
            found.first.get_or_insert(record.sequence);
            found.last = record.sequence;
        }
    }
    let total: usize = found.ranges.values().map(Vec::len).sum();
    let mut grain = 4096u64;
    loop {
        for ranges in found.ranges.values_mut() {
            *ranges = coalesce(ranges, grain);
        }
        let count: usize = found.ranges.values().map(Vec::len).sum();
        if count <= REPROTECT_RANGES_MAX {
            break;
        }
        grain *= 2;
    }
    if total > 0 {
        tracing::info!(group = %group, records = found.records, bytes = found.bytes, grain,
            "writes staged here and never acknowledged by the target");
    }
    Ok(found)
}

/// `ranges` widened to `grain` boundaries, sorted and merged.
fn coalesce(ranges: &[(u64, u64)], grain: u64) -> Vec<(u64, u64)> {
    let mut widened: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|(_, length)| *length > 0)
        .map(|&(offset, length)| {
            let start = offset / grain * grain;
            let end = (offset.saturating_add(length))
                .div_ceil(grain)
                .saturating_mul(grain);
            (start, end)
        })
        .collect();
    widened.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (start, end) in widened {
        match merged.last_mut() {
            Some((_, last_end)) if start <= *last_end => *last_end = (*last_end).max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
        .into_iter()
        .map(|(start, end)| (start, end - start))
        .collect()
}

// ---------------------------------------------------------------------------
// Failed-over site: REPROTECT from the original site.

/// Answers the original site's REPROTECT.
pub async fn accept(appliance: &Arc<Appliance>, peer: &str, request: Reprotect) -> Reprotected {
    let id = request.request;
    match accept_group(appliance, peer, &request).await {
        Ok((group, delta_bytes)) => Reprotected {
            request: id,
            group,
            delta_bytes,
            error: String::new(),
        },
        Err(error) => {
            tracing::warn!(peer, group = %request.group, %error, "reprotect refused");
            Reprotected {
                request: id,
                group: 0,
                delta_bytes: 0,
                error: crate::link::truncate(error, drgw_wire::ERROR_MESSAGE_BYTES_MAX),
            }
        }
    }
}

async fn accept_group(
    appliance: &Arc<Appliance>,
    peer: &str,
    request: &Reprotect,
) -> Result<(u32, u64), String> {
    let text = |e: drgw_catalog::CatalogError| e.to_string();
    let (target, disks) = appliance
        .recovery
        .committed_disks(&format!("{peer}/{}", request.group))
        .map_err(|e| e.to_string())?;
    let group = target.name();
    for asked in &request.disks {
        if !disks.iter().any(|(replica, _)| replica.name == asked.name) {
            return Err(format!("group {group} here has no disk {}", asked.name));
        }
    }
    for (replica, _) in &disks {
        if !request.disks.iter().any(|d| d.name == replica.name) {
            return Err(format!(
                "disk {} of group {group} was not named: every disk of the group goes back",
                replica.name
            ));
        }
    }
    let protected = appliance.catalog.disks().map_err(text)?;
    let ours = |d: &ProtectedDisk| {
        d.tap == FAILOVER_TAP && d.group == group && d.peer.as_deref() == Some(peer)
    };
    if let Some(clash) = protected
        .iter()
        .find(|d| !ours(d) && (d.group == group || disks.iter().any(|(r, _)| r.name == d.name)))
    {
        return Err(format!(
            "this appliance already protects disk {} in group {} (tap {}): the names of group {group} must be free here",
            clash.name, clash.group, clash.tap
        ));
    }
    // The original site's own writes after the failover point: durable in
    // the change maps before anything else, so a crash from here on still
    // sends them.
    for (replica, disk) in &disks {
        let changes = disk
            .changes()
            .ok_or_else(|| format!("disk {} is not committed", replica.name))?;
        let ranges = request
            .disks
            .iter()
            .find(|d| d.name == replica.name)
            .map(|d| d.ranges.clone())
            .unwrap_or_default();
        if ranges.is_empty() {
            continue;
        }
        tokio::task::spawn_blocking(move || changes.mark_ranges(&ranges))
            .await
            .map_err(|_| "marking the change map panicked".to_string())?
            .map_err(|e| e.to_string())?;
    }
    for (replica, _) in &disks {
        if protected.iter().any(|d| ours(d) && d.name == replica.name) {
            continue;
        }
        appliance
            .catalog
            .protect_disk(
                &replica.name,
                &group,
                FAILOVER_TAP,
                replica.size_bytes,
                Some(peer),
            )
            .map_err(text)?;
    }
    appliance.refresh_disks().map_err(text)?;
    let group_id = appliance
        .ingest
        .disks()
        .into_iter()
        .find(|d| d.group == group)
        .map(|d| d.group_id)
        .ok_or_else(|| format!("group {group} is not protected after all"))?;
    let delta = install(appliance, &group).await?;
    if let Err(error) = appliance.recovery.note(
        &target,
        &format!("reprotected: replicating back to {peer} as group {group_id}, {delta} bytes to send first"),
    ) {
        tracing::warn!(group = %group, %error, "could not record the reprotect in the history");
    }
    tracing::warn!(group = %group, peer, delta, "reprotected: replicating back");
    Ok((group_id, delta))
}

/// Stages every write of the group's committed disks and starts (or wakes)
/// the delta sender. Returns the bytes the change maps hold.
async fn install(appliance: &Arc<Appliance>, group: &str) -> Result<u64, String> {
    let protected: Vec<ProtectedDisk> = appliance
        .catalog
        .disks()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|d| d.group == group && d.tap == FAILOVER_TAP)
        .collect();
    let Some(peer) = protected.first().and_then(|d| d.peer.clone()) else {
        return Err(format!("group {group} is not replicated back"));
    };
    let (_, served) = appliance
        .recovery
        .committed_disks(&format!("{peer}/{group}"))
        .map_err(|e| e.to_string())?;
    let existing = senders()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(group)
        .map(|(wake, _)| wake.clone());
    let wake = existing
        .clone()
        .unwrap_or_else(|| Arc::new(tokio::sync::Notify::new()));
    let mut disks = Vec::new();
    for disk in &protected {
        let (_, served) = served
            .iter()
            .find(|(replica, _)| replica.name == disk.name)
            .ok_or_else(|| format!("disk {} is not served here", disk.name))?;
        let capture = Capture {
            ingest: appliance.ingest.clone(),
            group_id: disk.group_id,
            group: group.to_string(),
            disk_id: disk.id,
            disk: disk.name.clone(),
            wake: wake.clone(),
        };
        served.set_capture(Some(Arc::new(capture))).await;
        disks.push((disk.name.clone(), served.backend_handle()));
    }
    let delta: u64 = disks.iter().map(|(_, d)| d.changed_bytes()).sum();
    update(group, |p| {
        p.group = group.to_string();
        p.peer = peer.clone();
    });
    match existing {
        Some(wake) => wake.notify_one(),
        None => {
            let stop = CancellationToken::new();
            senders()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(group.to_string(), (wake.clone(), stop.clone()));
            tokio::spawn(run_delta(
                appliance.clone(),
                group.to_string(),
                disks,
                wake,
                stop,
            ));
        }
    }
    Ok(delta)
}

/// At startup: every reprotected group of this appliance stages its writes
/// again and sends what its change maps still hold.
pub async fn resume_all(appliance: &Arc<Appliance>) {
    let Ok(disks) = appliance.catalog.disks() else {
        return;
    };
    let mut groups: Vec<String> = disks
        .into_iter()
        .filter(|d| d.tap == FAILOVER_TAP)
        .map(|d| d.group)
        .collect();
    groups.sort();
    groups.dedup();
    for group in groups {
        if let Err(error) = install(appliance, &group).await {
            tracing::error!(group = %group, %error, "a reprotected group could not resume");
        }
    }
    if let Ok(reversed) = appliance.catalog.reversed() {
        for record in reversed {
            appliance
                .targets
                .place(&record.peer, &record.group, record.replicas.clone());
        }
    }
}

/// Sends the change maps' ranges whenever they hold any: at the start, and
/// again if a write could not be staged.
async fn run_delta(
    appliance: Arc<Appliance>,
    group: String,
    disks: Vec<(String, PointDisk)>,
    wake: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let pending: u64 = disks.iter().map(|(_, d)| d.changed_bytes()).sum();
        if pending > 0 {
            update(&group, |p| {
                p.total_bytes = pending;
                p.sent_bytes = 0;
                p.running = true;
                p.error = None;
            });
            match send_delta(&appliance, &group, &disks).await {
                Ok(()) => update(&group, |p| {
                    p.running = false;
                    p.passes += 1;
                }),
                Err(error) => {
                    tracing::warn!(group = %group, %error, "reprotect delta failed; tried again");
                    update(&group, |p| {
                        p.running = false;
                        p.error = Some(error);
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(DELTA_RETRY) => {}
                        _ = stop.cancelled() => return,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn send_delta(
    appliance: &Arc<Appliance>,
    group: &str,
    disks: &[(String, PointDisk)],
) -> Result<(), String> {
    let started = std::time::Instant::now();
    appliance
        .ingest
        .resync_marker(group, false)
        .await
        .map_err(|e| e.to_string())?;
    let mut sent = 0u64;
    // Tests slow the delta down to kill a gateway in the middle of it.
    let delay = std::env::var("DRGW_TEST_DELTA_PIECE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    for (name, disk) in disks {
        let changes = disk
            .changes()
            .ok_or_else(|| format!("disk {name} is not committed"))?;
        let mut unsaved = 0u64;
        for (offset, length) in changes.dirty_ranges() {
            let end = offset + length;
            let mut at = offset;
            while at < end {
                let piece = (end - at).min(DELTA_PIECE_BYTES);
                disk.resend(at, piece as u32)
                    .await
                    .map_err(|e| format!("disk {name} at {at}: {e}"))?;
                at += piece;
                sent += piece;
                unsaved += piece;
                update(group, |p| p.sent_bytes = sent);
                if unsaved >= DELTA_SAVE_BYTES {
                    persist(&changes).await?;
                    unsaved = 0;
                }
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
            }
        }
        persist(&changes).await?;
    }
    appliance
        .ingest
        .resync_marker(group, true)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        group,
        bytes = sent,
        seconds = started.elapsed().as_secs_f64(),
        "reprotect delta staged"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Failback: the original site takes the group back.

/// How long failback waits for the last of the data to be applied here.
const FAILBACK_APPLY_LIMIT: Duration = Duration::from_secs(1800);
/// How long the failed-over site waits for its delta to be staged.
const FAILBACK_DELTA_LIMIT: Duration = Duration::from_secs(600);

/// What `drgw failback` answers (original site).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailbackOutcome {
    pub group: String,
    pub peer: String,
    /// The sequence of the peer's last bookmark (`failback`), applied here.
    pub final_sequence: u64,
    /// Where this site's sequence of the group continues.
    pub resumes_at: u64,
    pub message: String,
}

/// `drgw failback GROUP`, on the original site: the failed-over site stops
/// its disks and sends the last of its writes, this site applies them, and
/// the group is protected here again, replicating to the other site, which
/// takes it as its target once more (its replicas hold the same data).
pub async fn failback(appliance: &Arc<Appliance>, group: &str) -> Result<FailbackOutcome, String> {
    let text = |e: drgw_catalog::CatalogError| e.to_string();
    let record = appliance
        .catalog
        .reversed()
        .map_err(text)?
        .into_iter()
        .find(|r| r.group == group)
        .ok_or_else(|| {
            format!(
                "group {group} is not replicated back to this appliance: failback follows `drgw reprotect` (run here)"
            )
        })?;
    let peer = record.peer.clone();
    let step = |step: u8| drgw_wire::Failback {
        request: appliance.calls.request_id(),
        group: group.to_string(),
        step,
    };
    // 1. The other site stops its disks and stages a last bookmark.
    let last = appliance
        .calls
        .failback(&peer, step(drgw_wire::FAILBACK_QUIESCE))
        .await?;
    // 2. Everything through it is applied here. (0: the other site had
    // given the group back already, in a failback cut short here.)
    let target = appliance.targets.find(&format!("{peer}/{group}")).ok();
    match &target {
        Some(target) => {
            let mut applied = target.subscribe_applied();
            let waited = tokio::time::timeout(FAILBACK_APPLY_LIMIT, async {
                while *applied.borrow_and_update() < last {
                    if applied.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
            if waited.is_err() || target.applied_through() < last {
                return Err(format!(
                    "sequence {last} from {peer} was not applied here within {} s (applied through {}): run failback again",
                    FAILBACK_APPLY_LIMIT.as_secs(),
                    target.applied_through()
                ));
            }
        }
        None if last == 0 => {}
        None => {
            return Err(format!(
                "group {group} from {peer} is not open here: see `drgw status` (target problems)"
            ))
        }
    }
    // 3. The other site takes the group as its target again.
    let held = appliance
        .calls
        .failback(&peer, step(drgw_wire::FAILBACK_RETURN))
        .await?;
    // 4. The group is protected here again, its sequence continuing after
    // what the other site holds.
    if let Some(target) = target {
        appliance
            .targets
            .retire(&peer, target.group_id())
            .map_err(|e| e.to_string())?;
    }
    appliance.catalog.unreverse_group(&record).map_err(text)?;
    let (group_id, name) = (record.disks[0].group_id, record.disks[0].group.clone());
    appliance.ingest.set_sequence_floor(group_id, held + 1);
    appliance.refresh_disks().map_err(text)?;
    appliance
        .ingest
        .stage(vec![drgw_ingest::StageBatch {
            group_id,
            group: name,
            bodies: vec![drgw_staging::RecordBody::Bookmark {
                name: "failback".into(),
                unix_ms: drgw_io::clock::unix_millis(),
            }],
            per_disk: Vec::new(),
        }])
        .await
        .map_err(|e| e.to_string())?;
    appliance.targets.unplace(&peer, group);
    let message = format!(
        "failed back: this site's disks hold {peer}'s last state (its sequence {last}); group {group} is protected here again and replicates to {peer} from sequence {}: start this site's tap",
        held + 1
    );
    tracing::warn!(group, peer = %peer, "{message}");
    Ok(FailbackOutcome {
        group: group.to_string(),
        peer,
        final_sequence: last,
        resumes_at: held + 1,
        message,
    })
}

/// Answers a FAILBACK step from the original site.
pub async fn answer_failback(
    appliance: &Arc<Appliance>,
    peer: &str,
    request: drgw_wire::Failback,
) -> drgw_wire::FailedBack {
    let result = match request.step {
        drgw_wire::FAILBACK_QUIESCE => quiesce(appliance, peer, &request.group).await,
        _ => give_back(appliance, peer, &request.group).await,
    };
    match result {
        Ok(sequence) => drgw_wire::FailedBack {
            request: request.request,
            sequence,
            error: String::new(),
        },
        Err(error) => {
            tracing::warn!(peer, group = %request.group, %error, "failback step refused");
            drgw_wire::FailedBack {
                request: request.request,
                sequence: 0,
                error: crate::link::truncate(error, drgw_wire::ERROR_MESSAGE_BYTES_MAX),
            }
        }
    }
}

/// The reverse group's disks here, checked.
fn reversed_here(
    appliance: &Arc<Appliance>,
    peer: &str,
    group: &str,
) -> Result<Vec<ProtectedDisk>, String> {
    let disks: Vec<ProtectedDisk> = appliance
        .catalog
        .disks()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|d| d.group == group && d.tap == FAILOVER_TAP && d.peer.as_deref() == Some(peer))
        .collect();
    if disks.is_empty() {
        return Err(format!(
            "group {group} is not replicated back from here to {peer}"
        ));
    }
    Ok(disks)
}

/// When a failback already gave the group back (the original site asks
/// again after a crash between the steps): the sequence the replicas hold.
fn given_back(appliance: &Arc<Appliance>, peer: &str, group: &str) -> Option<u64> {
    if reversed_here(appliance, peer, group).is_ok() {
        return None;
    }
    let history = appliance
        .recovery
        .history(&format!("{peer}/{group}"))
        .ok()?;
    let back = history.state == drgw_catalog::RecoveryState::Protected
        && history
            .transitions
            .last()
            .is_some_and(|t| t.note.starts_with("failed back"));
    back.then(|| {
        appliance
            .targets
            .find(&format!("{peer}/{group}"))
            .map(|t| t.received_through())
            .unwrap_or(0)
    })
}

/// Failback step 1 (failed-over site): stop serving the disks, let the
/// delta finish, stage the last bookmark; returns its sequence (0 when the
/// group was given back already: all of it was applied there before).
async fn quiesce(appliance: &Arc<Appliance>, peer: &str, group: &str) -> Result<u64, String> {
    if given_back(appliance, peer, group).is_some() {
        return Ok(0);
    }
    reversed_here(appliance, peer, group)?;
    let served = appliance
        .recovery
        .unserve(&format!("{peer}/{group}"))
        .map_err(|e| e.to_string())?;
    tracing::warn!(
        group,
        peer,
        disks = served,
        "failback: the disks are no longer served here"
    );
    let (_, disks) = appliance
        .recovery
        .committed_disks(&format!("{peer}/{group}"))
        .map_err(|e| e.to_string())?;
    let wake = senders()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(group)
        .map(|(wake, _)| wake.clone());
    let started = std::time::Instant::now();
    loop {
        let pending: u64 = disks.iter().map(|(_, d)| d.changed_bytes()).sum();
        let running = progress().iter().any(|p| p.group == group && p.running);
        if pending == 0 && !running {
            break;
        }
        if started.elapsed() > FAILBACK_DELTA_LIMIT {
            return Err(format!(
                "the delta still holds {pending} bytes after {} s",
                FAILBACK_DELTA_LIMIT.as_secs()
            ));
        }
        if let Some(wake) = &wake {
            wake.notify_one();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sequence, _) = appliance
        .ingest
        .bookmark(group, "failback")
        .await
        .map_err(|e| e.to_string())?;
    Ok(sequence)
}

/// Failback step 2 (failed-over site): stop replicating the group back and
/// take it as this appliance's target again; returns the sequence its
/// replicas hold through.
async fn give_back(appliance: &Arc<Appliance>, peer: &str, group: &str) -> Result<u64, String> {
    if let Some(held) = given_back(appliance, peer, group) {
        return Ok(held);
    }
    let disks = reversed_here(appliance, peer, group)?;
    if let Some((_, stop)) = senders()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(group)
    {
        stop.cancel();
    }
    board()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(group);
    for disk in &disks {
        appliance
            .catalog
            .unprotect_disk(&disk.name)
            .map_err(|e| e.to_string())?;
    }
    appliance.refresh_disks().map_err(|e| e.to_string())?;
    if let Err(error) = appliance.ingest.discard_group(disks[0].group_id).await {
        tracing::warn!(group, %error, "the reverse group's staging could not be removed");
    }
    let held = appliance
        .recovery
        .return_to_protected(
            &format!("{peer}/{group}"),
            &format!("failed back to {peer}: it protects the group again and replicates it here"),
        )
        .await
        .map_err(|e| e.to_string())?;
    tracing::warn!(
        group,
        peer,
        held,
        "failed back: the group is replicated here again"
    );
    Ok(held)
}

/// Writes the change map's cleared pages.
async fn persist(changes: &Arc<drgw_dirtymap::DirtyMap>) -> Result<(), String> {
    let changes = changes.clone();
    tokio::task::spawn_blocking(move || changes.persist())
        .await
        .map_err(|_| "writing the change map panicked".to_string())?
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn ranges_widen_to_the_grain_and_merge() {
        assert_eq!(
            coalesce(&[(8192, 100), (0, 4096), (4000, 200), (1 << 20, 0)], 4096),
            vec![(0, 12288)]
        );
        assert_eq!(
            coalesce(&[(0, 1), (65536, 1)], 4096),
            vec![(0, 4096), (65536, 4096)]
        );
        assert_eq!(coalesce(&[(0, 1), (65536, 1)], 131072), vec![(0, 131072)]);
        assert!(coalesce(&[], 4096).is_empty());
    }
}
