//! The target gateway: groups replicated to this appliance by a paired
//! source. Per group, under `<retention>/groups/<peer>.<group>/`:
//!
//! - `redo/`: the journal of received batches (staging segment format, one
//!   Blob record per BATCH frame, kept compressed as received). A batch is
//!   acknowledged once durable here.
//! - `undo/`: one Blob record per applied batch, holding what the batch
//!   overwrote on the replicas (compressed). This is the history that
//!   recovery points are served from; retention releases it oldest first.
//! - `disk-<id>.img`: the replicas, kept at the latest applied state.
//! - `state.json`: the group, its disks, and the checkpoint.
//!
//! Formats: docs/formats/journal.md. Design and costs: docs/ARCHITECTURE.md.

mod changes;
mod disk_io;
mod export;
mod group;
mod index;
mod intervals;
mod overlay;
mod point;
mod recovery;
mod state;
mod undo;

pub use changes::{changes_path, open_changes, CHANGE_GRAIN_BYTES};
pub use disk_io::discard;
pub use export::{Capture, PointDisk};
pub use group::{PointPin, TargetGroup, TargetGroupStatus};
pub use index::resync_open_at;
pub use point::PointView;
pub use recovery::{
    ExportInfo, GroupRecoveryStatus, Purpose, Recovery, RecoveryOutcome, RecoveryStatus,
};
pub use state::{GroupState, ReplicaDisk};

use drgw_staging::StagingError;
use drgw_wire::GroupInfo;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `data_at` of an undo entry whose old contents were zeroes (a hole).
pub const ZERO_DATA: u32 = u32::MAX;

/// A recovery point: a cut of the group's sequence (kept by the catalog in
/// the state of a recovery, so defined beneath it).
pub use drgw_catalog::RecoveryPoint;

/// Where a resync of a group began (`done` false) or finished, in its
/// sequence: the points between a start and its done are not
/// crash-consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResyncMarker {
    pub sequence: u64,
    pub unix_ms: u64,
    pub done: bool,
    /// Which resync: a disk id (the tap's pass over its lost grains), or
    /// `staging::RESYNC_GROUP` (`drgw resync`).
    #[serde(default)]
    pub owner: u32,
}

/// Retention and RPO of the groups this appliance is target for.
#[derive(Debug, Clone)]
pub struct TargetPolicy {
    /// Points older than this are released.
    pub window: Duration,
    /// Most bytes of journal (redo + undo) per group; the oldest points go first.
    pub cap_bytes: u64,
    pub segment_bytes: u64,
    pub rpo_threshold: Duration,
    pub encryption_key: Option<[u8; 32]>,
    /// The retention volume must be a mount point of its own
    /// (`[volumes] require_mounted`): no new group is made elsewhere.
    pub require_mounted: bool,
}

impl TargetPolicy {
    /// Retention and RPO policy of groups replicated to this appliance,
    /// from the config (`key`: the journal key, used when `[retention]
    /// encrypt` is set).
    pub fn from_config(config: &drgw_config::Config, key: Option<[u8; 32]>) -> TargetPolicy {
        let retention = &config.retention;
        TargetPolicy {
            window: Duration::from_secs(u64::from(retention.window_hours) * 3600),
            cap_bytes: retention.cap_bytes,
            segment_bytes: retention.segment_bytes,
            rpo_threshold: Duration::from_secs(u64::from(retention.rpo_threshold_s)),
            encryption_key: if retention.encrypt { key } else { None },
            require_mounted: config.volumes.require_mounted,
        }
    }
}

impl TargetPolicy {
    pub const WINDOW_DEFAULT: Duration = Duration::from_secs(24 * 3600);
    pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Staging(#[from] StagingError),
    #[error("{0}")]
    State(#[from] state::StateError),
    #[error("corrupt journal: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Protocol(String),
    #[error("no such group or disk: {0}")]
    Unknown(String),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    NotYet(String),
    #[error("{0}")]
    BadPoint(String),
    /// The group takes no new batches (failed over or committed).
    #[error("{0}")]
    Held(String),
    /// The retention volume is not mounted (`[volumes] require_mounted`).
    #[error("{0}")]
    VolumeMissing(String),
}

impl TargetError {
    pub fn io(path: &Path, source: std::io::Error) -> TargetError {
        TargetError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Something an operator must hear about: logged, kept for the control API,
/// and handed to the configured hook command.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The RPO crossed the threshold (`exceeded`), or came back under it.
    Rpo {
        group: String,
        exceeded: bool,
        rpo_s: f64,
        threshold_s: f64,
    },
    /// The journal reached its space cap: points older than
    /// `oldest_point_unix_ms` were released early.
    RetentionTrimmed {
        group: String,
        cap_bytes: u64,
        oldest_point_unix_ms: u64,
    },
    /// A resync of a protected group ended (source side): `outcome` is
    /// `done`, `failed` or `cancelled`.
    Resync {
        group: String,
        outcome: String,
        compared_bytes: u64,
        differing_bytes: u64,
        seconds: f64,
        error: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventRecord {
    pub unix_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

const EVENTS_KEPT: usize = 256;

struct EventLog {
    recent: VecDeque<EventRecord>,
    hook: Option<PathBuf>,
}

fn events() -> &'static Mutex<EventLog> {
    static EVENTS: OnceLock<Mutex<EventLog>> = OnceLock::new();
    EVENTS.get_or_init(|| {
        Mutex::new(EventLog {
            recent: VecDeque::new(),
            hook: None,
        })
    })
}

/// Sets the command run for each event (its JSON on stdin), or none.
pub fn set_event_hook(hook: Option<PathBuf>) {
    events().lock().unwrap_or_else(|p| p.into_inner()).hook = hook;
}

/// Raises an event.
pub fn raise(event: Event) {
    let record = EventRecord {
        unix_ms: drgw_io::clock::unix_millis(),
        event,
    };
    let json = serde_json::to_string(&record).expect("events serialise");
    tracing::warn!(event = %json, "event");
    let hook = {
        let mut log = events().lock().unwrap_or_else(|p| p.into_inner());
        if log.recent.len() >= EVENTS_KEPT {
            log.recent.pop_front();
        }
        log.recent.push_back(record);
        log.hook.clone()
    };
    if let Some(hook) = hook {
        std::thread::spawn(move || run_hook(&hook, &json));
    }
}

fn run_hook(hook: &Path, json: &str) {
    use std::io::Write;
    let child = std::process::Command::new(hook)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(mut child) => {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(json.as_bytes());
                let _ = stdin.write_all(b"\n");
            }
            match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => tracing::warn!(hook = %hook.display(), %status, "event hook failed"),
                Err(error) => tracing::warn!(hook = %hook.display(), %error, "event hook failed"),
            }
        }
        Err(error) => tracing::warn!(hook = %hook.display(), %error, "event hook did not start"),
    }
}

/// The most recent events, oldest first.
pub fn recent_events() -> Vec<EventRecord> {
    events()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .recent
        .iter()
        .cloned()
        .collect()
}

/// Every target group of this appliance.
pub struct TargetRegistry {
    root: PathBuf,
    policy: TargetPolicy,
    groups: Mutex<BTreeMap<(String, u32), Arc<TargetGroup>>>,
    /// (peer, group name) → disk name → replica path, for a group not yet
    /// here whose replicas must be given disks (reprotect).
    placements: Mutex<BTreeMap<(String, String), BTreeMap<String, PathBuf>>>,
    /// Each open group's applier, to stop it when the group is retired.
    appliers: Mutex<BTreeMap<(String, u32), CancellationToken>>,
    /// Groups that failed to open, and why.
    problems: Mutex<BTreeMap<String, String>>,
    cancel: CancellationToken,
}

impl TargetRegistry {
    pub fn new(
        retention: &Path,
        policy: TargetPolicy,
        cancel: CancellationToken,
    ) -> TargetRegistry {
        TargetRegistry {
            root: retention.join("groups"),
            policy,
            groups: Mutex::new(BTreeMap::new()),
            placements: Mutex::new(BTreeMap::new()),
            appliers: Mutex::new(BTreeMap::new()),
            problems: Mutex::new(BTreeMap::new()),
            cancel,
        }
    }

    /// The replicas of `group` from `peer`, when it first arrives, are the
    /// given paths (by disk name).
    pub fn place(&self, peer: &str, group: &str, replicas: BTreeMap<String, PathBuf>) {
        self.placements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((peer.to_string(), group.to_string()), replicas);
    }

    pub fn unplace(&self, peer: &str, group: &str) {
        self.placements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(peer.to_string(), group.to_string()));
    }

    /// Failback: the group replicated back here from `peer` ends. Its
    /// applier stops and its journal and state are deleted; its replicas
    /// (this site's own disks) stay.
    pub fn retire(&self, peer: &str, group: u32) -> Result<(), TargetError> {
        let key = (peer.to_string(), group);
        if let Some(applier) = self
            .appliers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
        {
            applier.cancel();
        }
        let removed = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        if let Some(group) = &removed {
            group.sync_replicas()?;
        }
        let directory = self.directory(peer, group);
        for part in ["redo", "undo", "changed", "failover", "test-failover"] {
            let path = directory.join(part);
            match std::fs::remove_dir_all(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(TargetError::io(&path, error))
                }
                _ => {}
            }
        }
        let state = directory.join(state::STATE_FILE);
        match std::fs::remove_file(&state) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(TargetError::io(&state, error))
            }
            _ => {}
        }
        // Empty unless a replica lives inside it.
        let _ = std::fs::remove_dir(&directory);
        Ok(())
    }

    fn directory(&self, peer: &str, group: u32) -> PathBuf {
        self.root.join(format!("{peer}.{group}"))
    }

    /// Opens every group found on the retention volume (at startup).
    pub fn open_existing(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some((peer, group)) = name.rsplit_once('.') else {
                continue;
            };
            let Ok(group) = group.parse::<u32>() else {
                continue;
            };
            if let Err(error) = self.open(peer, group, None) {
                tracing::error!(directory = %entry.path().display(), %error, "target group unusable");
                self.problems
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, error.to_string());
            }
        }
    }

    fn open(
        &self,
        peer: &str,
        group: u32,
        info: Option<&GroupInfo>,
    ) -> Result<Arc<TargetGroup>, TargetError> {
        let key = (peer.to_string(), group);
        if let Some(existing) = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if let Some(info) = info {
                existing.update(info)?;
            }
            return Ok(existing.clone());
        }
        let directory = self.directory(peer, group);
        let placement = info
            .and_then(|info| {
                self.placements
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&(peer.to_string(), info.name.clone()))
                    .cloned()
            })
            .unwrap_or_default();
        let opened = Arc::new(TargetGroup::open(
            &directory,
            peer,
            info,
            self.policy.clone(),
            &placement,
        )?);
        tracing::info!(peer, group = %opened.name(), received_through = opened.received_through(),
            applied_through = opened.applied_through(), "target group open");
        let runtime = tokio::runtime::Handle::current();
        let applier = self.cancel.child_token();
        self.appliers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), applier.clone());
        runtime.spawn(opened.clone().run_applier(applier));
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, opened.clone());
        Ok(opened)
    }

    /// The source announced a group: open or create it; returns it.
    pub async fn announce(
        self: &Arc<Self>,
        peer: &str,
        info: GroupInfo,
    ) -> Result<Arc<TargetGroup>, TargetError> {
        let registry = self.clone();
        let peer = peer.to_string();
        let runtime = tokio::runtime::Handle::current();
        let directory = format!("{peer}.{}", info.group);
        if self.policy.require_mounted {
            let volume = self.root.parent().unwrap_or(&self.root);
            if let Some(problem) = drgw_io::fsutil::mount_point_problem(volume, "retention") {
                let error = TargetError::VolumeMissing(problem);
                let mut problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
                problems.insert(directory, error.to_string());
                return Err(error);
            }
        }
        let opened = tokio::task::spawn_blocking(move || {
            let _guard = runtime.enter();
            registry.open(&peer, info.group, Some(&info))
        })
        .await
        .map_err(|_| TargetError::Corrupt("opening the group panicked".into()))?;
        let opened = opened.and_then(|group| match group.held() {
            Some(reason) => Err(TargetError::Held(reason)),
            None => Ok(group),
        });
        let mut problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        match &opened {
            Err(TargetError::Held(_)) => None,
            Ok(_) => problems.remove(&directory),
            Err(error) => problems.insert(directory, error.to_string()),
        };
        opened
    }

    pub fn get(&self, peer: &str, group: u32) -> Option<Arc<TargetGroup>> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(peer.to_string(), group))
            .cloned()
    }

    /// A group by name (`name`, or `peer/name` when names clash).
    pub fn find(&self, name: &str) -> Result<Arc<TargetGroup>, TargetError> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let (peer, name) = match name.split_once('/') {
            Some((peer, name)) => (Some(peer), name),
            None => (None, name),
        };
        let matches: Vec<&Arc<TargetGroup>> = groups
            .iter()
            .filter(|((p, _), g)| peer.is_none_or(|peer| peer == p) && g.name() == name)
            .map(|(_, g)| g)
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(TargetError::Unknown(format!(
                "no group {name:?} is replicated to this appliance"
            ))),
            _ => Err(TargetError::Unknown(format!(
                "several peers replicate a group named {name:?}: say PEER/{name}"
            ))),
        }
    }

    pub fn all(&self) -> Vec<Arc<TargetGroup>> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn problems(&self) -> BTreeMap<String, String> {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks every group's RPO (called every second).
    pub fn check_rpo(&self) {
        for group in self.all() {
            group.check_rpo();
        }
    }
}

/// How an operator names a recovery point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointSpec {
    Latest,
    LatestApp,
    Sequence(u64),
    Bookmark(String),
    /// The newest point taken at or before this time.
    Time(u64),
}

impl PointSpec {
    /// `latest`, `latest-app`, `seq:N`, `bookmark:NAME`, `@UNIX_SECONDS`,
    /// `time:UNIX_MS`, or an RFC 3339 time such as `2026-11-25T19:40:00Z`.
    pub fn parse(text: &str) -> Result<PointSpec, TargetError> {
        let bad = || {
            TargetError::BadPoint(format!(
                "{text:?} is not a point: use latest, latest-app, seq:N, bookmark:NAME, @UNIX_SECONDS or YYYY-MM-DDTHH:MM:SSZ"
            ))
        };
        if text == "latest" {
            return Ok(PointSpec::Latest);
        }
        if text == "latest-app" {
            return Ok(PointSpec::LatestApp);
        }
        if let Some(n) = text.strip_prefix("seq:") {
            return n.parse().map(PointSpec::Sequence).map_err(|_| bad());
        }
        if let Some(name) = text.strip_prefix("bookmark:") {
            return Ok(PointSpec::Bookmark(name.to_string()));
        }
        if let Some(seconds) = text.strip_prefix('@') {
            let seconds: f64 = seconds.parse().map_err(|_| bad())?;
            return Ok(PointSpec::Time((seconds * 1000.0) as u64));
        }
        if let Some(ms) = text.strip_prefix("time:") {
            return ms.parse().map(PointSpec::Time).map_err(|_| bad());
        }
        parse_utc(text).map(PointSpec::Time).ok_or_else(bad)
    }

    /// The sequence this names among `points` (oldest first).
    pub fn resolve(&self, points: &[RecoveryPoint]) -> Result<RecoveryPoint, TargetError> {
        let none = |what: String| TargetError::BadPoint(format!("no recovery point {what}"));
        match self {
            PointSpec::Latest => points.last().cloned().ok_or_else(|| none("yet".into())),
            PointSpec::LatestApp => points
                .iter()
                .rev()
                .find(|p| p.bookmark.is_some())
                .cloned()
                .ok_or_else(|| none("with a bookmark".into())),
            PointSpec::Sequence(sequence) => {
                let first = points.first().ok_or_else(|| none("yet".into()))?;
                if *sequence < first.sequence {
                    return Err(TargetError::Expired(format!(
                        "sequence {sequence} is older than the oldest point ({})",
                        first.sequence
                    )));
                }
                // Any cut of the sequence is crash-consistent; name it after
                // the point at or before it.
                let at = points.partition_point(|p| p.sequence <= *sequence);
                let before = &points[at - 1];
                Ok(RecoveryPoint {
                    sequence: *sequence,
                    unix_ms: before.unix_ms,
                    bookmark: None,
                })
            }
            PointSpec::Bookmark(name) => points
                .iter()
                .rev()
                .find(|p| p.bookmark.as_deref() == Some(name))
                .cloned()
                .ok_or_else(|| none(format!("with bookmark {name:?}"))),
            PointSpec::Time(unix_ms) => {
                let at = points.partition_point(|p| p.unix_ms <= *unix_ms);
                if at == 0 {
                    return Err(TargetError::Expired(format!(
                        "no point at or before {} (oldest: {})",
                        format_utc(*unix_ms),
                        points
                            .first()
                            .map_or("none".into(), |p| format_utc(p.unix_ms))
                    )));
                }
                Ok(points[at - 1].clone())
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` → milliseconds since the epoch.
fn parse_utc(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>());
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (time, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut time = time.split(':').map(|p| p.parse::<i64>());
    let (hour, minute, second) = (time.next()?.ok()?, time.next()?.ok()?, time.next()?.ok()?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let millis: i64 = format!("{:0<3}", &fraction[..fraction.len().min(3)])
        .parse()
        .ok()?;
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(seconds * 1000 + millis).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Milliseconds since the epoch → `YYYY-MM-DDTHH:MM:SS.fffZ`.
pub fn format_utc(unix_ms: u64) -> String {
    let seconds = (unix_ms / 1000) as i64;
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(sequence: u64, unix_ms: u64, bookmark: Option<&str>) -> RecoveryPoint {
        RecoveryPoint {
            sequence,
            unix_ms,
            bookmark: bookmark.map(str::to_string),
        }
    }

    #[test]
    fn times_format_and_parse() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        let ms = parse_utc("2026-11-25T19:40:05.250Z").unwrap();
        assert_eq!(format_utc(ms), "2026-11-25T19:40:05.250Z");
        assert_eq!(
            parse_utc("2024-02-29T00:00:00Z").unwrap(),
            1_709_164_800_000
        );
        assert!(parse_utc("2026-13-01T00:00:00Z").is_none());
    }

    #[test]
    fn points_resolve_by_every_name() {
        let points = vec![
            point(10, 1000, None),
            point(20, 2000, Some("pre")),
            point(30, 3000, None),
        ];
        let resolve = |text: &str| PointSpec::parse(text).unwrap().resolve(&points);
        assert_eq!(resolve("latest").unwrap().sequence, 30);
        assert_eq!(resolve("latest-app").unwrap().sequence, 20);
        assert_eq!(resolve("bookmark:pre").unwrap().sequence, 20);
        assert_eq!(resolve("seq:25").unwrap().sequence, 25);
        assert_eq!(resolve("@2.5").unwrap().sequence, 20);
        assert!(matches!(resolve("seq:5"), Err(TargetError::Expired(_))));
        assert!(matches!(resolve("@0.5"), Err(TargetError::Expired(_))));
        assert!(resolve("bookmark:nope").is_err());
        assert!(PointSpec::parse("yesterday").is_err());
    }
}
