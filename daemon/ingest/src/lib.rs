//! The source gateway's I/O receiver: what arrives from taps (WRITE, FLUSH,
//! TRIM for attached disks) is staged durably in the consistency group's
//! staging log before the tap gets its ACK.
//!
//! One staging log per group, under `<volumes.cache>/staging/group-<id>/`,
//! opened on first use. The group's sequence is assigned by the log as it
//! stages, so disks of a group share one order.

mod rate;
mod replay;

pub use rate::RateWindow;
pub use replay::{replay, ReplayError, ReplayReport};

use drgw_catalog::ProtectedDisk;
use drgw_staging::{RecordBody, StagedRecord, StagingConfig, StagingError, StagingLog};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("staging of group {group}: {source}")]
    Staging { group: String, source: StagingError },
    #[error("opening the staging of group {group} panicked or was cancelled")]
    Open { group: String },
    #[error("staging of group {group} is unusable: {problem}")]
    Unusable { group: String, problem: String },
}

/// How long an append may wait before a full staging is reported.
const FULL_REPORT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Live per-disk figures for `drgw status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiskIngest {
    pub records_total: u64,
    pub bytes_total: u64,
    pub writes_per_second: f64,
    pub bytes_per_second: f64,
    pub attached: bool,
}

struct GroupLog {
    name: String,
    log: Arc<StagingLog>,
    /// When the oldest record still staged (not yet shipped) arrived.
    oldest_unshipped: Mutex<Option<Instant>>,
    /// Tap appends not yet acknowledged by the target: (last sequence, when staged).
    unshipped: Mutex<std::collections::VecDeque<(u64, Instant)>>,
    /// Replication lag of recent appends, staged → durable at the target, in µs.
    lags_us: Mutex<std::collections::VecDeque<u64>>,
    /// The most recently staged records (durable), kept in memory so the
    /// transceiver need not read them back from the cache volume.
    recent: Mutex<Recent>,
}

/// Payload bytes of staged records kept in memory per group.
const RECENT_BYTES_MAX: usize = 64 << 20;

#[derive(Default)]
struct Recent {
    records: std::collections::VecDeque<StagedRecord>,
    bytes: usize,
}

impl GroupLog {
    /// Appends, then keeps a copy of the records among the recent ones.
    async fn append_remembered(
        &self,
        bodies: Vec<RecordBody>,
    ) -> Result<std::ops::Range<u64>, drgw_staging::StagingError> {
        let copies = bodies.clone();
        let range = self.log.append(bodies).await?;
        self.remember(range.clone(), copies);
        Ok(range)
    }

    fn remember(&self, range: std::ops::Range<u64>, bodies: Vec<RecordBody>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for (sequence, body) in range.zip(bodies) {
            recent.bytes += drgw_staging::body_payload_bytes(&body);
            // Appends may finish out of order: keep the records sorted.
            let at = recent
                .records
                .iter()
                .rposition(|r| r.sequence < sequence)
                .map_or(0, |p| p + 1);
            recent.records.insert(at, StagedRecord { sequence, body });
        }
        while recent.bytes > RECENT_BYTES_MAX {
            let Some(dropped) = recent.records.pop_front() else {
                break;
            };
            recent.bytes -= drgw_staging::body_payload_bytes(&dropped.body);
        }
    }
}

/// Lag samples kept per group for the percentiles in `drgw status`.
const LAG_SAMPLES_KEPT: usize = 20_000;

/// How every group's staging is set up (from `[staging]` in the config).
#[derive(Debug, Clone)]
pub struct StagingPlan {
    pub cache_directory: PathBuf,
    pub capacity_bytes: u64,
    pub segment_bytes: u64,
    pub encryption_key: Option<[u8; 32]>,
    /// The cache volume must be a mount point of its own (`[volumes]
    /// require_mounted`): no staging is made elsewhere.
    pub require_mounted: bool,
}

/// A consistency group's staging, for `drgw status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupStaging {
    pub id: u32,
    pub name: String,
    pub bytes_on_disk: u64,
    pub capacity_bytes: u64,
    pub records_unreleased: u64,
    pub sequence_last_durable: u64,
    /// Ingest waits for room: taps of this group are being held back.
    pub full: bool,
    /// Seconds since the oldest record not yet shipped was staged.
    pub oldest_unshipped_age_s: Option<u64>,
    /// Replication lag (staged here → durable at the target) of the last
    /// appends (up to 20,000), in milliseconds: median, 99th percentile, max.
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    pub lag_max_ms: Option<f64>,
    pub lag_samples: usize,
    /// Why this group's staging cannot be used, when it cannot.
    pub problem: Option<String>,
}

/// A tap session that can confirm bookmark barriers, and the groups of the
/// disks it has attached.
struct BarrierRoute {
    tap: String,
    groups: Vec<u32>,
    requests: tokio::sync::mpsc::UnboundedSender<TapRequest>,
}

/// What a gateway asks of a tap session.
pub enum TapRequest {
    /// Send back, in order after everything acknowledged so far, a marker;
    /// `done` is answered once the records before it are staged.
    Barrier {
        id: u64,
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Block sums of the primary of `disk` (a SUM_REQUEST; the session
    /// sets the tap's disk number).
    Sums {
        disk: String,
        request: drgw_wire::SumRequest,
        answer: tokio::sync::oneshot::Sender<drgw_wire::Sums>,
    },
    /// Forward these ranges of `disk` again from the primary; `done` is
    /// answered once they are staged (the tap follows them with barrier `id`).
    Resync {
        disk: String,
        id: u64,
        ranges: Vec<drgw_wire::ResyncRange>,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

/// How long a bookmark waits for the taps of its group to confirm.
const BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Ingest {
    plan: StagingPlan,
    barriers: Mutex<HashMap<u64, BarrierRoute>>,
    barrier_counter: std::sync::atomic::AtomicU64,
    /// Protected disks by name, mirrored from the catalog.
    disks: RwLock<HashMap<String, ProtectedDisk>>,
    logs: tokio::sync::Mutex<HashMap<u32, Arc<GroupLog>>>,
    /// Groups whose staging failed to open, and why (until a restart).
    problems: Mutex<HashMap<u32, (String, String)>>,
    counters: Mutex<HashMap<String, (RateWindow, u32)>>,
    /// First sequences of groups whose staging is created anew (failback).
    floors: Mutex<HashMap<u32, u64>>,
}

impl Ingest {
    pub fn new(plan: StagingPlan, disks: Vec<ProtectedDisk>) -> Ingest {
        let ingest = Ingest {
            plan,
            barriers: Mutex::new(HashMap::new()),
            barrier_counter: std::sync::atomic::AtomicU64::new(1),
            disks: RwLock::new(HashMap::new()),
            logs: tokio::sync::Mutex::new(HashMap::new()),
            problems: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            floors: Mutex::new(HashMap::new()),
        };
        ingest.replace_disks(disks);
        ingest
    }

    pub fn replace_disks(&self, disks: Vec<ProtectedDisk>) {
        let map = disks
            .into_iter()
            .map(|disk| (disk.name.clone(), disk))
            .collect();
        *self.disks.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    pub fn disk(&self, name: &str) -> Option<ProtectedDisk> {
        self.disks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn disks(&self) -> Vec<ProtectedDisk> {
        let mut list: Vec<ProtectedDisk> = self
            .disks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        list.sort_by(|left, right| left.name.cmp(&right.name));
        list
    }

    /// Opens the staging of every protected group at startup, so that a
    /// corrupt or unreadable staging is reported at once, not at the first
    /// write. Failures are logged and kept for `drgw status`.
    pub async fn open_all(&self) {
        let mut groups: Vec<(u32, String)> = self
            .disks()
            .into_iter()
            .map(|d| (d.group_id, d.group))
            .collect();
        groups.sort();
        groups.dedup();
        for (id, name) in groups {
            if let Err(error) = self.log(id, &name).await {
                tracing::error!(group = %name, %error, "staging unusable; taps of this group are refused");
            }
        }
    }

    /// The staging log of a group, opened (and recovered) on first use.
    async fn log(&self, group_id: u32, group: &str) -> Result<Arc<GroupLog>, IngestError> {
        let mut logs = self.logs.lock().await;
        if let Some(log) = logs.get(&group_id) {
            return Ok(log.clone());
        }
        if let Some((name, problem)) = self
            .problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group_id)
        {
            return Err(IngestError::Unusable {
                group: name.clone(),
                problem: problem.clone(),
            });
        }
        if self.plan.require_mounted {
            let volume = &self.plan.cache_directory;
            if let Some(problem) = drgw_io::fsutil::mount_point_problem(volume, "cache") {
                return Err(IngestError::Unusable {
                    group: group.to_string(),
                    problem,
                });
            }
        }
        let directory = self
            .plan
            .cache_directory
            .join("staging")
            .join(format!("group-{group_id}"));
        let mut config = StagingConfig::new(directory, group_id, self.plan.capacity_bytes);
        config.segment_bytes = self.plan.segment_bytes;
        config.encryption_key = self.plan.encryption_key;
        if let Some(floor) = self
            .floors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group_id)
        {
            config.sequence_floor = *floor;
        }
        let name = group.to_string();
        let opened = tokio::task::spawn_blocking(move || StagingLog::open(config))
            .await
            .map_err(|_| IngestError::Open {
                group: name.clone(),
            })?;
        let (log, report) = match opened {
            Ok(opened) => opened,
            Err(source) => {
                let problems = &mut self.problems.lock().unwrap_or_else(|p| p.into_inner());
                problems.insert(group_id, (name.clone(), source.to_string()));
                return Err(IngestError::Staging {
                    group: name,
                    source,
                });
            }
        };
        if report.torn_tail_bytes_cut > 0 {
            tracing::warn!(group = %name, bytes = report.torn_tail_bytes_cut,
                "staging had a torn tail (a write cut by a crash, never acknowledged): cut");
        }
        tracing::info!(group = %name, records = report.records, "staging opened");
        let oldest = (report.records > 0).then(Instant::now);
        let entry = Arc::new(GroupLog {
            name,
            log: Arc::new(log),
            oldest_unshipped: Mutex::new(oldest),
            unshipped: Mutex::new(std::collections::VecDeque::new()),
            lags_us: Mutex::new(std::collections::VecDeque::new()),
            recent: Mutex::new(Recent::default()),
        });
        logs.insert(group_id, entry.clone());
        Ok(entry)
    }

    /// Stages the records of one or more groups; resolves when all are
    /// durable. Records of a group are staged in the order given.
    pub async fn stage(&self, batches: Vec<StageBatch>) -> Result<(), IngestError> {
        for batch in batches {
            let log = self.log(batch.group_id, &batch.group).await?;
            let staged = Self::append_reporting_full(&log, batch.bodies).await?;
            let now = Instant::now();
            if staged.end > staged.start {
                log.unshipped
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back((staged.end - 1, now));
            }
            log.oldest_unshipped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(now);
            let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            for (disk, records, bytes) in batch.per_disk {
                let entry = counters
                    .entry(disk)
                    .or_insert_with(|| (RateWindow::new(now), 0));
                entry.0.add(now, records, bytes);
            }
        }
        Ok(())
    }

    /// A group's staging, when created anew, starts at `sequence` (failback:
    /// the target holds the group through `sequence - 1`).
    pub fn set_sequence_floor(&self, group_id: u32, sequence: u64) {
        self.floors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group_id, sequence);
    }

    /// A group's staging starts again at `sequence`: the old one (which
    /// restarted below what the target holds) is deleted, and the next
    /// append creates the new one. Writes staged meanwhile into the old one
    /// are on their primaries: the caller resyncs the group.
    pub async fn restart_group(
        &self,
        group_id: u32,
        group: &str,
        sequence: u64,
    ) -> Result<(), IngestError> {
        self.set_sequence_floor(group_id, sequence);
        self.discard_group(group_id)
            .await
            .map_err(|source| IngestError::Unusable {
                group: group.to_string(),
                problem: format!("deleting the old staging: {source}"),
            })?;
        tracing::warn!(group, sequence, "staging restarted after a journal gap");
        self.log(group_id, group).await.map(|_| ())
    }

    /// Forgets a group's staging and deletes it from the cache volume (its
    /// disks are no longer protected here: reprotect made them replicas).
    pub async fn discard_group(&self, group_id: u32) -> std::io::Result<()> {
        self.logs.lock().await.remove(&group_id);
        let directory = self
            .plan
            .cache_directory
            .join("staging")
            .join(format!("group-{group_id}"));
        match tokio::fs::remove_dir_all(&directory).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// The staging log of a group, for the transceiver.
    pub async fn shipping_log(
        &self,
        group_id: u32,
        group: &str,
    ) -> Result<Arc<StagingLog>, IngestError> {
        Ok(self.log(group_id, group).await?.log.clone())
    }

    /// Staged records from `next` on, while they are in memory and
    /// consecutive (up to about `max_bytes` of payload); `None` when `next`
    /// is not in memory (read it from the staging log).
    pub fn recent_from(
        &self,
        group_id: u32,
        next: u64,
        max_bytes: usize,
    ) -> Option<Vec<StagedRecord>> {
        let logs = self.logs.try_lock().ok()?;
        let log = logs.get(&group_id)?;
        let recent = log.recent.lock().unwrap_or_else(|p| p.into_inner());
        let first = recent.records.front()?.sequence;
        if next < first {
            return None;
        }
        let start = usize::try_from(next - first).ok()?;
        let mut taken = Vec::new();
        let mut bytes = 0;
        for (expected, record) in (next..).zip(recent.records.iter().skip(start)) {
            if record.sequence != expected || bytes >= max_bytes {
                break;
            }
            bytes += drgw_staging::body_payload_bytes(&record.body);
            taken.push(record.clone());
        }
        (!taken.is_empty()).then_some(taken)
    }

    /// The target holds a group's records through `sequence`.
    pub fn shipped(&self, group_id: u32, sequence: u64) {
        let Ok(logs) = self.logs.try_lock() else {
            return;
        };
        if let Some(log) = logs.get(&group_id) {
            {
                let mut recent = log.recent.lock().unwrap_or_else(|p| p.into_inner());
                while recent
                    .records
                    .front()
                    .is_some_and(|r| r.sequence <= sequence)
                {
                    let dropped = recent.records.pop_front().expect("checked");
                    recent.bytes -= drgw_staging::body_payload_bytes(&dropped.body);
                }
            }
            let now = Instant::now();
            let mut unshipped = log.unshipped.lock().unwrap_or_else(|p| p.into_inner());
            let mut lags = log.lags_us.lock().unwrap_or_else(|p| p.into_inner());
            while unshipped.front().is_some_and(|(last, _)| *last <= sequence) {
                let (_, staged) = unshipped.pop_front().expect("checked");
                if lags.len() >= LAG_SAMPLES_KEPT {
                    lags.pop_front();
                }
                lags.push_back(now.duration_since(staged).as_micros() as u64);
            }
            let mut oldest = log
                .oldest_unshipped
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *oldest = unshipped.front().map(|(_, at)| *at);
            if oldest.is_none() && sequence < log.log.usage().sequence_last_durable {
                // Points and bookmarks staged since: not tap writes, but unshipped.
                *oldest = Some(now);
            }
        }
    }

    /// Stages a crash-consistent recovery point in every group whose staging
    /// is open (every `point_interval`, by the daemon).
    pub async fn take_points(&self) {
        let logs: Vec<Arc<GroupLog>> = self.logs.lock().await.values().cloned().collect();
        let unix_ms = drgw_io::clock::unix_millis();
        for log in logs {
            if let Err(error) = log
                .append_remembered(vec![RecordBody::Point { unix_ms }])
                .await
            {
                tracing::error!(group = %log.name, %error, "staging a recovery point failed");
            }
        }
    }

    /// A tap session announces itself (returns its route number) and the
    /// channel it takes barrier requests on.
    pub fn register_barriers(
        &self,
        tap: &str,
        requests: tokio::sync::mpsc::UnboundedSender<TapRequest>,
    ) -> u64 {
        let route = self
            .barrier_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.barriers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                route,
                BarrierRoute {
                    tap: tap.to_string(),
                    groups: Vec::new(),
                    requests,
                },
            );
        route
    }

    pub fn barrier_groups(&self, route: u64, groups: Vec<u32>) {
        if let Some(entry) = self
            .barriers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&route)
        {
            entry.groups = groups;
        }
    }

    pub fn unregister_barriers(&self, route: u64) {
        self.barriers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&route);
    }

    /// A number for a request to a tap, unique in this process.
    pub fn request_id(&self) -> u64 {
        self.barrier_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands `request` to the newest session of `tap`; gives it back when
    /// that tap has no session.
    pub fn tap_request(&self, tap: &str, request: TapRequest) -> Result<(), TapRequest> {
        let routes = self.barriers.lock().unwrap_or_else(|p| p.into_inner());
        let newest = routes
            .iter()
            .filter(|(_, route)| route.tap == tap)
            .max_by_key(|(number, _)| **number)
            .map(|(_, route)| route);
        match newest {
            Some(route) => route.requests.send(request).map_err(|e| e.0),
            None => Err(request),
        }
    }

    /// Waits until every tap of the group has staged everything it
    /// acknowledged before now. Refused when a disk of the group has no tap
    /// attached (its latest writes may be only in that tap's dirty map).
    async fn barrier(&self, group_id: u32, group: &str) -> Result<(), IngestError> {
        let refuse = |problem: String| IngestError::Unusable {
            group: group.to_string(),
            problem,
        };
        let detached: Vec<String> = self
            .disks()
            .into_iter()
            .filter(|d| {
                // A reprotected disk stages each write before it is
                // acknowledged: nothing of it can be missing here.
                d.group_id == group_id
                    && d.tap != drgw_catalog::FAILOVER_TAP
                    && !self.disk_figures(&d.name).attached
            })
            .map(|d| d.name)
            .collect();
        if !detached.is_empty() {
            return Err(refuse(format!(
                "no tap has {} attached: writes acknowledged there may not be here yet, so a bookmark now would not be consistent",
                detached.join(", ")
            )));
        }
        let mut answers = Vec::new();
        for route in self
            .barriers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|route| route.groups.contains(&group_id))
        {
            let (done, answer) = tokio::sync::oneshot::channel();
            let id = self
                .barrier_counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if route
                .requests
                .send(TapRequest::Barrier { id, done })
                .is_ok()
            {
                answers.push((route.tap.clone(), answer));
            }
        }
        for (tap, answer) in answers {
            match tokio::time::timeout(BARRIER_TIMEOUT, answer).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(refuse(format!(
                        "tap {tap} did not confirm within {} s that its acknowledged writes are staged (link down, or lost writes still resyncing)",
                        BARRIER_TIMEOUT.as_secs()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Stages an app-consistent bookmark in a group: every write acknowledged
    /// to a tap of the group before this call is before it in the sequence
    /// (each tap confirms through a barrier in its stream). Returns its
    /// sequence and time.
    pub async fn bookmark(&self, group: &str, name: &str) -> Result<(u64, u64), IngestError> {
        let group_id = self
            .disks()
            .into_iter()
            .find(|d| d.group == group)
            .map(|d| d.group_id)
            .ok_or_else(|| IngestError::Unusable {
                group: group.to_string(),
                problem: "no such protected group on this appliance".into(),
            })?;
        self.barrier(group_id, group).await?;
        let log = self.log(group_id, group).await?;
        let unix_ms = drgw_io::clock::unix_millis();
        let body = RecordBody::Bookmark {
            name: name.to_string(),
            unix_ms,
        };
        let range =
            log.append_remembered(vec![body])
                .await
                .map_err(|source| IngestError::Staging {
                    group: group.to_string(),
                    source,
                })?;
        Ok((range.start, unix_ms))
    }

    /// Stages the start (`done` false) or end marker of `drgw resync` in a
    /// group; returns its sequence.
    pub async fn resync_marker(&self, group: &str, done: bool) -> Result<u64, IngestError> {
        let group_id = self
            .disks()
            .into_iter()
            .find(|d| d.group == group)
            .map(|d| d.group_id)
            .ok_or_else(|| IngestError::Unusable {
                group: group.to_string(),
                problem: "no such protected group on this appliance".into(),
            })?;
        let log = self.log(group_id, group).await?;
        let body = RecordBody::Resync {
            unix_ms: drgw_io::clock::unix_millis(),
            done,
            owner: drgw_staging::RESYNC_GROUP,
        };
        let range =
            log.append_remembered(vec![body])
                .await
                .map_err(|source| IngestError::Staging {
                    group: group.to_string(),
                    source,
                })?;
        Ok(range.start)
    }

    /// Why a group's staging cannot take writes, if it cannot.
    pub fn group_problem(&self, group_id: u32) -> Option<String> {
        let problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        problems.get(&group_id).map(|(_, problem)| problem.clone())
    }

    /// Appends, and says so in the log when the append waits because the
    /// group's staging is full (taps are held back until it has room).
    async fn append_reporting_full(
        log: &GroupLog,
        bodies: Vec<RecordBody>,
    ) -> Result<std::ops::Range<u64>, IngestError> {
        let failed = |source| IngestError::Staging {
            group: log.name.clone(),
            source,
        };
        let append = log.append_remembered(bodies);
        tokio::pin!(append);
        let waited = tokio::select! {
            result = &mut append => return result.map_err(failed),
            _ = tokio::time::sleep(FULL_REPORT_AFTER) => log.log.usage().full,
        };
        if waited {
            let usage = log.log.usage();
            tracing::warn!(group = %log.name, bytes_on_disk = usage.bytes_on_disk, capacity_bytes = usage.capacity_bytes,
                "staging full: taps of this group are held back until shipped records are released");
        }
        let result = append.await.map_err(failed);
        if waited {
            tracing::info!(group = %log.name, "staging has room again");
        }
        result
    }

    pub fn attached(&self, disk: &str, delta: i32) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counters
            .entry(disk.to_string())
            .or_insert_with(|| (RateWindow::new(Instant::now()), 0));
        entry.1 = entry.1.saturating_add_signed(delta);
    }

    pub fn disk_figures(&self, disk: &str) -> DiskIngest {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        match counters.get(disk) {
            None => DiskIngest {
                records_total: 0,
                bytes_total: 0,
                writes_per_second: 0.0,
                bytes_per_second: 0.0,
                attached: false,
            },
            Some((window, attached)) => {
                let (writes_per_second, bytes_per_second) = window.rates(Instant::now());
                DiskIngest {
                    records_total: window.records_total,
                    bytes_total: window.bytes_total,
                    writes_per_second,
                    bytes_per_second,
                    attached: *attached > 0,
                }
            }
        }
    }

    /// Every group's staging figures (blocking: call off the runtime).
    pub fn groups_blocking(&self) -> Vec<GroupStaging> {
        let mut groups: Vec<(u32, String)> = self
            .disks()
            .into_iter()
            .map(|d| (d.group_id, d.group))
            .collect();
        groups.sort();
        groups.dedup();
        let logs = self.logs.blocking_lock();
        let problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .into_iter()
            .map(|(id, name)| {
                let mut group = GroupStaging {
                    id,
                    name,
                    bytes_on_disk: 0,
                    capacity_bytes: self.plan.capacity_bytes,
                    records_unreleased: 0,
                    sequence_last_durable: 0,
                    full: false,
                    oldest_unshipped_age_s: None,
                    lag_p50_ms: None,
                    lag_p99_ms: None,
                    lag_max_ms: None,
                    lag_samples: 0,
                    problem: problems.get(&id).map(|(_, problem)| problem.clone()),
                };
                if let Some(log) = logs.get(&id) {
                    let usage = log.log.usage();
                    group.bytes_on_disk = usage.bytes_on_disk;
                    group.records_unreleased = usage.records_unreleased;
                    group.sequence_last_durable = usage.sequence_last_durable;
                    group.full = usage.full;
                    let oldest = *log
                        .oldest_unshipped
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    group.oldest_unshipped_age_s = oldest.map(|at| at.elapsed().as_secs());
                    let mut lags: Vec<u64> = log
                        .lags_us
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .copied()
                        .collect();
                    lags.sort_unstable();
                    let at = |q: f64| {
                        let index = ((lags.len() as f64 - 1.0) * q).round() as usize;
                        lags.get(index).map(|us| *us as f64 / 1000.0)
                    };
                    group.lag_p50_ms = at(0.5);
                    group.lag_p99_ms = at(0.99);
                    group.lag_max_ms = lags.last().map(|us| *us as f64 / 1000.0);
                    group.lag_samples = lags.len();
                }
                group
            })
            .collect()
    }
}

/// Records of one group to stage, and what they count for per disk.
pub struct StageBatch {
    pub group_id: u32,
    pub group: String,
    pub bodies: Vec<RecordBody>,
    /// (disk name, records, bytes).
    pub per_disk: Vec<(String, u64, u64)>,
}
