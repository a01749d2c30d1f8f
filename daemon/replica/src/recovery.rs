//! Recovery on the target appliance: NBD exports of recovery points, test
//! failover, failover, cancel and commit, with each group's state kept in
//! the catalog (`drgw_catalog::RecoveryState`).
//!
//! - `export`: a read-only (or scratch-writable) disk at any point; ready as
//!   soon as the point's index overlay is built, whatever the disk size.
//! - test failover: writable disks of the whole group at one point, writes
//!   kept in durable overlays on the retention volume; replication goes on.
//!   Cleanup throws the overlays away and records the drill.
//! - failover: new batches are refused, what was received is applied, and
//!   the disks at the point are served writable (durable overlays) under the
//!   disks' own names. Failing over changes nothing on the replicas, so a
//!   cancel only throws the overlays away and takes batches again.
//! - commit: the replicas are rolled to the point (from the undo log), the
//!   overlays merged in, and the journal released; the exports then serve
//!   the replicas directly. Redone at restart if interrupted.

use super::export::PointDisk;
use super::overlay::Overlay;
use super::{open_changes, PointSpec, RecoveryPoint, TargetError, TargetGroup, TargetRegistry};
use drgw_catalog::{Catalog, Drill, RecoveryState};
use drgw_dirtymap::DirtyMap;
use drgw_nbd::{Export, NbdServer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest wait for what was received to be applied before a failover.
const APPLY_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    Export,
    TestFailover,
    Failover,
}

/// One recovery export, as `drgw export` and `drgw status` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExportInfo {
    pub name: String,
    /// `nbd://ADDRESS:PORT/NAME`.
    pub uri: String,
    pub group: String,
    pub disk: String,
    pub point: RecoveryPoint,
    pub writable: bool,
    pub purpose: Purpose,
    pub size_bytes: u64,
    pub created_unix_ms: u64,
    /// Bytes written to it (kept in its overlay until cleanup or commit).
    pub written_bytes: u64,
    /// A committed failover disk: bytes that may differ from the original
    /// site's disk (rolled back at the commit, written here since the
    /// failover point). What reprotect sends back.
    #[serde(default)]
    pub changed_bytes: u64,
}

/// A group's recovery state for `drgw status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupRecoveryStatus {
    pub group: String,
    #[serde(flatten)]
    pub state: RecoveryState,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryStatus {
    /// Where recovery exports are served, if the listener is up.
    pub listen: Option<String>,
    /// Why there is no listener.
    pub problem: Option<String>,
    pub exports: Vec<ExportInfo>,
    pub groups: Vec<GroupRecoveryStatus>,
}

/// What a transition answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryOutcome {
    pub group: String,
    pub state: String,
    pub point: Option<RecoveryPoint>,
    pub exports: Vec<ExportInfo>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
}

struct Exported {
    info: ExportInfo,
    disk: PointDisk,
}

pub struct Recovery {
    targets: Arc<TargetRegistry>,
    catalog: Arc<Catalog>,
    nbd: Arc<NbdServer>,
    listen: Result<SocketAddr, String>,
    exports: Mutex<BTreeMap<String, Exported>>,
    /// One transition at a time.
    busy: tokio::sync::Mutex<()>,
}

/// A disk of a committed group: its replica and the disk as served.
pub type CommittedDisk = (super::ReplicaDisk, PointDisk);

fn catalog_error(error: drgw_catalog::CatalogError) -> TargetError {
    TargetError::Protocol(format!("catalog: {error}"))
}

fn key_of(group: &TargetGroup) -> String {
    let (peer, id) = group.key();
    format!("{peer}.{id}")
}

impl Recovery {
    pub fn new(
        targets: Arc<TargetRegistry>,
        catalog: Arc<Catalog>,
        nbd: Arc<NbdServer>,
        listen: Result<SocketAddr, String>,
    ) -> Recovery {
        Recovery {
            targets,
            catalog,
            nbd,
            listen,
            exports: Mutex::new(BTreeMap::new()),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    fn lock_exports(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Exported>> {
        self.exports.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn uri(&self, name: &str) -> String {
        match &self.listen {
            Ok(address) => format!("nbd://{address}/{name}"),
            Err(_) => format!("nbd://(no listener)/{name}"),
        }
    }

    fn require_listener(&self) -> Result<(), TargetError> {
        match &self.listen {
            Ok(_) => Ok(()),
            Err(problem) => Err(TargetError::Protocol(format!(
                "recovery exports cannot be served: {problem} (see [recovery] in the config)"
            ))),
        }
    }

    /// A committed group and its disks as served (reprotect replicates
    /// them back to the original site). `group` as for `find`.
    pub fn committed_disks(
        &self,
        group: &str,
    ) -> Result<(Arc<TargetGroup>, Vec<CommittedDisk>), TargetError> {
        let target = self.targets.find(group)?;
        let state = self.state_of(&key_of(&target))?;
        if !matches!(state, RecoveryState::Committed { .. }) {
            return Err(TargetError::NotYet(format!(
                "group {} is {} here: reprotect follows a failover committed here (`drgw failover`, then `drgw commit`)",
                target.name(),
                state.label()
            )));
        }
        let exports = self.lock_exports();
        let mut disks = Vec::new();
        for replica in target.disks() {
            let name = format!("{}-{}", target.name(), replica.name);
            let disk = exports
                .get(&name)
                .map(|e| e.disk.backend_handle())
                .ok_or_else(|| {
                    TargetError::Protocol(format!("the committed disk {name} is not served"))
                })?;
            disks.push((replica, disk));
        }
        Ok((target, disks))
    }

    /// Failback, first step: the committed disks of `group` stop being
    /// served (their connections end; the VM there must be off), but stay
    /// open for the last of the delta. Returns how many were served.
    pub fn unserve(&self, group: &str) -> Result<usize, TargetError> {
        let (target, disks) = self.committed_disks(group)?;
        for (replica, _) in &disks {
            self.nbd
                .remove_export(&format!("{}-{}", target.name(), replica.name));
        }
        Ok(disks.len())
    }

    /// Failback, last step: the group is this appliance's to protect again
    /// (the original site replicates it here once more, continuing its
    /// sequence): the committed disks are closed, the hold is lifted and
    /// the state is `protected`. Returns the sequence the replicas hold.
    pub async fn return_to_protected(&self, group: &str, note: &str) -> Result<u64, TargetError> {
        let _busy = self.busy.lock().await;
        let (target, _) = self.committed_disks(group)?;
        let name = target.name();
        for (_, overlay) in self.withdraw(|e| e.group == name) {
            discard(overlay).await;
        }
        let key = key_of(&target);
        self.catalog
            .set_recovery(&key, &name, RecoveryState::Protected, note, None)
            .map_err(catalog_error)?;
        let changed = target.directory.join("changed");
        if let Err(error) = tokio::fs::remove_dir_all(&changed).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                return Err(TargetError::io(&changed, error));
            }
        }
        target.set_hold(None);
        Ok(target.received_through())
    }

    /// Records `note` in a group's history, its state unchanged.
    pub fn note(&self, target: &TargetGroup, note: &str) -> Result<(), TargetError> {
        let key = key_of(target);
        let state = self.state_of(&key)?;
        self.catalog
            .set_recovery(&key, &target.name(), state, note, None)
            .map(|_| ())
            .map_err(catalog_error)
    }

    /// The state of group `key` (protected when never recorded).
    fn state_of(&self, key: &str) -> Result<RecoveryState, TargetError> {
        Ok(self
            .catalog
            .recovery(key)
            .map_err(catalog_error)?
            .map_or(RecoveryState::Protected, |r| r.state))
    }

    fn publish(&self, info: ExportInfo, disk: PointDisk) -> Result<ExportInfo, TargetError> {
        let export = Export {
            name: info.name.clone(),
            description: format!(
                "{} disk {} at sequence {} ({})",
                info.group,
                info.disk,
                info.point.sequence,
                super::format_utc(info.point.unix_ms)
            ),
            backend: disk.backend(),
        };
        if !self.nbd.add_export(export) {
            disk.close();
            return Err(TargetError::Protocol(format!(
                "an export named {} exists already",
                info.name
            )));
        }
        tracing::info!(export = %info.name, group = %info.group, disk = %info.disk,
            sequence = info.point.sequence, writable = info.writable, "recovery export up");
        self.lock_exports().insert(
            info.name.clone(),
            Exported {
                info: info.clone(),
                disk,
            },
        );
        Ok(info)
    }

    /// Ends exports matching `which`; returns them with their overlays.
    fn withdraw(&self, which: impl Fn(&ExportInfo) -> bool) -> Vec<(ExportInfo, Option<Overlay>)> {
        let names: Vec<String> = self
            .lock_exports()
            .values()
            .filter(|e| which(&e.info))
            .map(|e| e.info.name.clone())
            .collect();
        let mut ended = Vec::new();
        for name in names {
            self.nbd.remove_export(&name);
            if let Some(exported) = self.lock_exports().remove(&name) {
                let mut info = exported.info;
                info.written_bytes = exported.disk.overlay_bytes();
                info.changed_bytes = exported.disk.changed_bytes();
                ended.push((info, exported.disk.close()));
            }
        }
        ended
    }

    pub fn list(&self) -> Vec<ExportInfo> {
        self.lock_exports()
            .values()
            .map(|e| {
                let mut info = e.info.clone();
                info.written_bytes = e.disk.overlay_bytes();
                info.changed_bytes = e.disk.changed_bytes();
                info
            })
            .collect()
    }

    pub fn status(&self) -> RecoveryStatus {
        let groups = self
            .catalog
            .recoveries()
            .unwrap_or_default()
            .into_iter()
            .map(|(_, record)| GroupRecoveryStatus {
                group: record.group,
                state: record.state,
            })
            .collect();
        RecoveryStatus {
            listen: self.listen.as_ref().ok().map(ToString::to_string),
            problem: self.listen.as_ref().err().cloned(),
            exports: self.list(),
            groups,
        }
    }

    /// The group's disks to act on: all, or the one named.
    fn pick_disks(
        target: &TargetGroup,
        disk: Option<&str>,
    ) -> Result<Vec<super::ReplicaDisk>, TargetError> {
        let disks = target.disks();
        match disk {
            None if disks.is_empty() => Err(TargetError::Unknown(format!(
                "group {} has no disks yet",
                target.name()
            ))),
            None => Ok(disks),
            Some(name) => disks
                .into_iter()
                .find(|d| d.name == name)
                .map(|d| vec![d])
                .ok_or_else(|| {
                    TargetError::Unknown(format!("group {} has no disk {name}", target.name()))
                }),
        }
    }

    async fn open_disk(
        target: &Arc<TargetGroup>,
        disk: &super::ReplicaDisk,
        point: &RecoveryPoint,
        overlay: Option<(PathBuf, bool)>,
    ) -> Result<PointDisk, TargetError> {
        let overlay = match overlay {
            None => None,
            Some((directory, reopen)) => {
                let size = disk.size_bytes;
                let made = tokio::task::spawn_blocking(move || {
                    if reopen && directory.join("map").exists() {
                        Overlay::open(&directory, size)
                    } else {
                        let _ = std::fs::remove_dir_all(&directory);
                        Overlay::create(&directory, size, true)
                    }
                    .map_err(|e| TargetError::io(&directory, e))
                })
                .await
                .map_err(|_| TargetError::Protocol("overlay setup panicked".into()))??;
                Some(made)
            }
        };
        PointDisk::open(target.clone(), disk.id, point.sequence, overlay).await
    }

    /// `drgw export`: disks of a group at a point, read-only or writable
    /// into a scratch overlay thrown away when the export ends.
    pub async fn export(
        &self,
        group: &str,
        point: &str,
        disk: Option<&str>,
        writable: bool,
    ) -> Result<Vec<ExportInfo>, TargetError> {
        self.require_listener()?;
        let _busy = self.busy.lock().await;
        let target = self.targets.find(group)?;
        let resolved = target.resolve(&PointSpec::parse(point)?)?;
        let disks = Self::pick_disks(&target, disk)?;
        let mut made = Vec::new();
        for replica in disks {
            let suffix = if writable { "-rw" } else { "" };
            let name = format!(
                "{}-{}-seq{}{suffix}",
                target.name(),
                replica.name,
                resolved.sequence
            );
            if let Some(existing) = self.lock_exports().get(&name) {
                if writable {
                    return Err(TargetError::Protocol(format!(
                        "{name} is exported writable already; end it first with `drgw unexport {name}`"
                    )));
                }
                made.push(existing.info.clone());
                continue;
            }
            let overlay = writable.then(|| (target.directory.join("exports").join(&name), false));
            let opened = Self::open_disk(&target, &replica, &resolved, overlay).await?;
            let info = ExportInfo {
                uri: self.uri(&name),
                name,
                group: target.name(),
                disk: replica.name.clone(),
                point: resolved.clone(),
                writable,
                purpose: Purpose::Export,
                size_bytes: replica.size_bytes,
                created_unix_ms: drgw_io::clock::unix_millis(),
                written_bytes: 0,
                changed_bytes: 0,
            };
            made.push(self.publish(info, opened)?);
        }
        Ok(made)
    }

    /// Ends an export made by `drgw export` (a writable one's writes are lost).
    pub async fn unexport(&self, name: &str) -> Result<ExportInfo, TargetError> {
        let _busy = self.busy.lock().await;
        let purpose = self
            .lock_exports()
            .get(name)
            .map(|e| e.info.purpose)
            .ok_or_else(|| TargetError::Unknown(format!("no export named {name}")))?;
        match purpose {
            Purpose::Export => {}
            Purpose::TestFailover => {
                return Err(TargetError::Protocol(format!(
                    "{name} belongs to a test failover: end it with `drgw test-failover GROUP --cleanup`"
                )))
            }
            Purpose::Failover => {
                return Err(TargetError::Protocol(format!(
                    "{name} is a failed-over disk: `drgw failover GROUP --cancel` or `drgw commit GROUP`"
                )))
            }
        }
        let (info, overlay) = self
            .withdraw(|e| e.name == name)
            .pop()
            .ok_or_else(|| TargetError::Unknown(format!("no export named {name}")))?;
        discard(overlay).await;
        Ok(info)
    }

    fn refuse(target: &TargetGroup, state: &RecoveryState, action: &str) -> TargetError {
        let name = target.name();
        let how = match state {
            RecoveryState::Protected => String::new(),
            RecoveryState::TestFailover { .. } => {
                format!("; end the drill first: `drgw test-failover {name} --cleanup`")
            }
            RecoveryState::FailedOver { .. } => format!(
                "; `drgw failover {name} --cancel` undoes it, `drgw commit {name}` makes it final"
            ),
            RecoveryState::Committing { .. } => "; the commit is finishing".into(),
            RecoveryState::Committed { .. } => {
                "; the replicas are the primaries now (reprotect replicates them back)".into()
            }
        };
        let at = state
            .point()
            .map(|p| {
                format!(
                    " at sequence {} ({})",
                    p.sequence,
                    super::format_utc(p.unix_ms)
                )
            })
            .unwrap_or_default();
        TargetError::Protocol(format!(
            "{action} refused: group {name} is {}{at}{how}",
            state.label()
        ))
    }

    fn check_healthy(target: &TargetGroup, action: &str) -> Result<(), TargetError> {
        match target.problem() {
            Some(problem) => Err(TargetError::Protocol(format!(
                "{action} refused: group {} has a problem: {problem}",
                target.name()
            ))),
            None => Ok(()),
        }
    }

    /// `drgw test-failover GROUP --point P`.
    pub async fn test_failover(
        &self,
        group: &str,
        point: &str,
    ) -> Result<RecoveryOutcome, TargetError> {
        self.require_listener()?;
        let _busy = self.busy.lock().await;
        let target = self.targets.find(group)?;
        let key = key_of(&target);
        let state = self.state_of(&key)?;
        if state != RecoveryState::Protected {
            return Err(Self::refuse(&target, &state, "test failover"));
        }
        Self::check_healthy(&target, "test failover")?;
        let resolved = target.resolve(&PointSpec::parse(point)?)?;
        let exports = self
            .open_group(&target, &resolved, Purpose::TestFailover, false)
            .await?;
        let since = drgw_io::clock::unix_millis();
        let next = RecoveryState::TestFailover {
            point: resolved.clone(),
            since_unix_ms: since,
        };
        let note = format!("drill at sequence {}", resolved.sequence);
        if let Err(error) = self
            .catalog
            .set_recovery(&key, &target.name(), next, &note, None)
        {
            self.end_group(&target.name(), Purpose::TestFailover).await;
            return Err(catalog_error(error));
        }
        Ok(RecoveryOutcome {
            group: target.name(),
            state: "test-failover".into(),
            point: Some(resolved),
            exports,
            message: "test failover up: writes go to throwaway overlays; replication goes on"
                .into(),
            drill: None,
        })
    }

    /// `drgw test-failover GROUP --cleanup`: throws the drill's writes away
    /// and records it.
    pub async fn test_failover_cleanup(
        &self,
        group: &str,
        result: Option<&str>,
        note: &str,
    ) -> Result<RecoveryOutcome, TargetError> {
        let _busy = self.busy.lock().await;
        let target = self.targets.find(group)?;
        let key = key_of(&target);
        let state = self.state_of(&key)?;
        let RecoveryState::TestFailover {
            point,
            since_unix_ms,
        } = state.clone()
        else {
            return Err(TargetError::Protocol(format!(
                "group {} has no test failover to clean up (it is {})",
                target.name(),
                state.label()
            )));
        };
        let result = match result {
            None => "not-reported",
            Some(r @ ("passed" | "failed")) => r,
            Some(other) => {
                return Err(TargetError::Protocol(format!(
                    "result must be passed or failed, not {other:?}"
                )))
            }
        };
        let written_bytes = self.end_group(&target.name(), Purpose::TestFailover).await;
        let _ = tokio::fs::remove_dir_all(target.directory.join("test-failover")).await;
        let drill = Drill {
            group: target.name(),
            point: point.clone(),
            started_unix_ms: since_unix_ms,
            ended_unix_ms: drgw_io::clock::unix_millis(),
            result: result.to_string(),
            note: note.to_string(),
            written_bytes,
        };
        let message = format!(
            "test failover cleaned up: {written_bytes} bytes written during the drill thrown away; drill recorded ({result})"
        );
        self.catalog
            .set_recovery(
                &key,
                &target.name(),
                RecoveryState::Protected,
                &message,
                Some(&drill),
            )
            .map_err(catalog_error)?;
        Ok(RecoveryOutcome {
            group: target.name(),
            state: "protected".into(),
            point: Some(point),
            exports: Vec::new(),
            message,
            drill: Some(drill),
        })
    }

    /// Drills recorded for a group.
    pub fn drills(&self, group: &str) -> Result<Vec<Drill>, TargetError> {
        let target = self.targets.find(group)?;
        self.catalog.drills(&key_of(&target)).map_err(catalog_error)
    }

    /// Transitions recorded for a group.
    pub fn history(&self, group: &str) -> Result<drgw_catalog::GroupRecovery, TargetError> {
        let target = self.targets.find(group)?;
        Ok(self
            .catalog
            .recovery(&key_of(&target))
            .map_err(catalog_error)?
            .unwrap_or(drgw_catalog::GroupRecovery {
                group: target.name(),
                state: RecoveryState::Protected,
                transitions: Vec::new(),
            }))
    }

    /// Exports every disk of the group at `point` with a durable overlay.
    async fn open_group(
        &self,
        target: &Arc<TargetGroup>,
        point: &RecoveryPoint,
        purpose: Purpose,
        reopen: bool,
    ) -> Result<Vec<ExportInfo>, TargetError> {
        let disks = Self::pick_disks(target, None)?;
        let (folder, suffix) = match purpose {
            Purpose::TestFailover => ("test-failover", "-test"),
            _ => ("failover", ""),
        };
        let mut made = Vec::new();
        for replica in disks {
            let name = format!("{}-{}{suffix}", target.name(), replica.name);
            let overlay = (target.directory.join(folder).join(&replica.name), reopen);
            let opened = Self::open_disk(target, &replica, point, Some(overlay)).await;
            let published = opened.and_then(|disk| {
                self.publish(
                    ExportInfo {
                        uri: self.uri(&name),
                        name,
                        group: target.name(),
                        disk: replica.name.clone(),
                        point: point.clone(),
                        writable: true,
                        purpose,
                        size_bytes: replica.size_bytes,
                        created_unix_ms: drgw_io::clock::unix_millis(),
                        written_bytes: 0,
                        changed_bytes: 0,
                    },
                    disk,
                )
            });
            match published {
                Ok(info) => made.push(info),
                Err(error) => {
                    self.end_group(&target.name(), purpose).await;
                    return Err(error);
                }
            }
        }
        Ok(made)
    }

    /// Ends a group's exports of `purpose`, discarding overlays; returns
    /// the bytes that had been written to them.
    async fn end_group(&self, group: &str, purpose: Purpose) -> u64 {
        let ended = self.withdraw(|e| e.group == group && e.purpose == purpose);
        let mut written = 0;
        for (info, overlay) in ended {
            written += info.written_bytes;
            discard(overlay).await;
        }
        written
    }

    /// `drgw failover GROUP --point P`.
    pub async fn failover(&self, group: &str, point: &str) -> Result<RecoveryOutcome, TargetError> {
        self.require_listener()?;
        let _busy = self.busy.lock().await;
        let target = self.targets.find(group)?;
        let key = key_of(&target);
        let state = self.state_of(&key)?;
        if state != RecoveryState::Protected {
            return Err(Self::refuse(&target, &state, "failover"));
        }
        Self::check_healthy(&target, "failover")?;
        let spec = PointSpec::parse(point)?;
        target.set_hold(Some(format!(
            "group {} is failing over on this appliance",
            target.name()
        )));
        let prepared = async {
            target.wait_applied(APPLY_WAIT).await?;
            let resolved = target.resolve(&spec)?;
            let exports = self
                .open_group(&target, &resolved, Purpose::Failover, false)
                .await?;
            Ok::<_, TargetError>((resolved, exports))
        }
        .await;
        let (resolved, exports) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                target.set_hold(None);
                return Err(error);
            }
        };
        let next = RecoveryState::FailedOver {
            point: resolved.clone(),
            since_unix_ms: drgw_io::clock::unix_millis(),
        };
        let note = format!("failover to sequence {}", resolved.sequence);
        if let Err(error) = self
            .catalog
            .set_recovery(&key, &target.name(), next, &note, None)
        {
            self.end_group(&target.name(), Purpose::Failover).await;
            target.set_hold(None);
            return Err(catalog_error(error));
        }
        target.set_hold(Some(failed_over_reason(&target.name(), &resolved)));
        tracing::warn!(group = %target.name(), sequence = resolved.sequence, "failed over");
        Ok(RecoveryOutcome {
            group: target.name(),
            state: "failed-over".into(),
            point: Some(resolved),
            exports,
            message: format!(
                "failed over: the disks are served writable; new batches from the source are refused. \
                 `drgw commit {0}` makes it final, `drgw failover {0} --cancel` undoes it",
                target.name()
            ),
            drill: None,
        })
    }

    /// `drgw failover GROUP --cancel`: throws the failover's writes away and
    /// takes batches again.
    pub async fn failover_cancel(&self, group: &str) -> Result<RecoveryOutcome, TargetError> {
        let _busy = self.busy.lock().await;
        let target = self.targets.find(group)?;
        let key = key_of(&target);
        let state = self.state_of(&key)?;
        let RecoveryState::FailedOver { point, .. } = state.clone() else {
            return Err(TargetError::Protocol(format!(
                "group {} is not failed over (it is {}): nothing to cancel",
                target.name(),
                state.label()
            )));
        };
        let written = self.end_group(&target.name(), Purpose::Failover).await;
        let _ = tokio::fs::remove_dir_all(target.directory.join("failover")).await;
        let message = format!(
            "failover cancelled: {written} bytes written while failed over thrown away; replication resumes"
        );
        self.catalog
            .set_recovery(
                &key,
                &target.name(),
                RecoveryState::Protected,
                &message,
                None,
            )
            .map_err(catalog_error)?;
        target.set_hold(None);
        Ok(RecoveryOutcome {
            group: target.name(),
            state: "protected".into(),
            point: Some(point),
            exports: Vec::new(),
            message,
            drill: None,
        })
    }

    /// `drgw commit GROUP`.
    pub async fn commit(&self, group: &str) -> Result<RecoveryOutcome, TargetError> {
        let _busy = self.busy.lock().await;
        let target = self.targets.find(group)?;
        let key = key_of(&target);
        let state = self.state_of(&key)?;
        let point = match &state {
            RecoveryState::FailedOver { point, .. } | RecoveryState::Committing { point, .. } => {
                point.clone()
            }
            other => {
                return Err(TargetError::Protocol(format!(
                    "commit refused: group {} is {}, not failed over",
                    target.name(),
                    other.label()
                )))
            }
        };
        let committing = RecoveryState::Committing {
            point: point.clone(),
            since_unix_ms: drgw_io::clock::unix_millis(),
        };
        self.catalog
            .set_recovery(&key, &target.name(), committing, "commit started", None)
            .map_err(catalog_error)?;
        self.finish_commit(&target, &key, &point).await
    }

    async fn finish_commit(
        &self,
        target: &Arc<TargetGroup>,
        key: &str,
        point: &RecoveryPoint,
    ) -> Result<RecoveryOutcome, TargetError> {
        let started = std::time::Instant::now();
        let disks: Vec<(PathBuf, Arc<std::fs::File>, String, Arc<DirtyMap>)> = target
            .disks()
            .into_iter()
            .map(|d| {
                let changes = open_changes(&target.directory, d.id, d.size_bytes, false)
                    .map_err(|e| TargetError::Protocol(format!("change map: {e}")))?;
                Ok((
                    d.path.clone(),
                    target.replica(d.id)?,
                    d.name,
                    Arc::new(changes),
                ))
            })
            .collect::<Result<_, TargetError>>()?;
        let mut overlays = Vec::new();
        for (path, file, disk, changes) in disks {
            let name = format!("{}-{disk}", target.name());
            let exported = self
                .lock_exports()
                .get(&name)
                .map(|e| e.disk.backend_handle());
            let Some(handle) = exported else {
                return Err(TargetError::Protocol(format!(
                    "the failover export {name} is missing"
                )));
            };
            let overlay =
                tokio::task::spawn_blocking(move || handle.become_replica(&file, &path, changes))
                    .await
                    .map_err(|_| TargetError::Protocol("commit panicked".into()))??;
            overlays.extend(overlay);
        }
        let committed = RecoveryState::Committed {
            point: point.clone(),
            since_unix_ms: drgw_io::clock::unix_millis(),
        };
        let message = format!(
            "committed: the replicas hold sequence {} plus the writes made since the failover, and are the primaries; the journal was released",
            point.sequence
        );
        self.catalog
            .set_recovery(key, &target.name(), committed, &message, None)
            .map_err(catalog_error)?;
        for overlay in overlays {
            discard(Some(overlay)).await;
        }
        let _ = tokio::fs::remove_dir_all(target.directory.join("failover")).await;
        let group = target.clone();
        tokio::task::spawn_blocking(move || group.discard_history())
            .await
            .map_err(|_| TargetError::Protocol("releasing the journal panicked".into()))??;
        target.set_hold(Some(committed_reason(&target.name(), point)));
        tracing::warn!(group = %target.name(), sequence = point.sequence,
            seconds = started.elapsed().as_secs_f64(), "failover committed");
        let exports = self
            .list()
            .into_iter()
            .filter(|e| e.group == target.name())
            .collect();
        Ok(RecoveryOutcome {
            group: target.name(),
            state: "committed".into(),
            point: Some(point.clone()),
            exports,
            message,
            drill: None,
        })
    }

    /// At startup: brings back what the catalog says each group is in
    /// (drill and failover disks with their overlays, held groups, an
    /// unfinished commit).
    pub async fn restore(&self) {
        let records = match self.catalog.recoveries() {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "recovery state unreadable");
                return;
            }
        };
        for (key, record) in records {
            let Some(target) = self.targets.all().into_iter().find(|t| key_of(t) == key) else {
                if record.state != RecoveryState::Protected {
                    tracing::error!(group = %record.group, state = record.state.label(),
                        "recovery state of a group whose journal is not open");
                }
                continue;
            };
            let restored = self.restore_group(&target, &key, &record.state).await;
            if let Err(error) = restored {
                tracing::error!(group = %record.group, state = record.state.label(), %error,
                    "could not restore the group's recovery state");
            }
        }
    }

    async fn restore_group(
        &self,
        target: &Arc<TargetGroup>,
        key: &str,
        state: &RecoveryState,
    ) -> Result<(), TargetError> {
        match state {
            RecoveryState::Protected => Ok(()),
            RecoveryState::TestFailover { point, .. } => self
                .open_group(target, point, Purpose::TestFailover, true)
                .await
                .map(|_| ()),
            RecoveryState::FailedOver { point, .. } => {
                target.set_hold(Some(failed_over_reason(&target.name(), point)));
                self.open_group(target, point, Purpose::Failover, true)
                    .await
                    .map(|_| ())
            }
            RecoveryState::Committing { point, .. } => {
                target.set_hold(Some(failed_over_reason(&target.name(), point)));
                self.open_group(target, point, Purpose::Failover, true)
                    .await?;
                tracing::warn!(group = %target.name(), "finishing an interrupted commit");
                self.finish_commit(target, key, point).await.map(|_| ())
            }
            RecoveryState::Committed { point, .. } => {
                target.set_hold(Some(committed_reason(&target.name(), point)));
                for replica in target.disks() {
                    let name = format!("{}-{}", target.name(), replica.name);
                    let changes =
                        open_changes(&target.directory, replica.id, replica.size_bytes, true)
                            .map_err(|e| TargetError::Protocol(format!("change map: {e}")))?;
                    let disk = PointDisk::replica(&replica.path, Arc::new(changes))
                        .map_err(|e| TargetError::io(&replica.path, e))?;
                    self.publish(
                        ExportInfo {
                            uri: self.uri(&name),
                            name,
                            group: target.name(),
                            disk: replica.name.clone(),
                            point: point.clone(),
                            writable: true,
                            purpose: Purpose::Failover,
                            size_bytes: replica.size_bytes,
                            created_unix_ms: drgw_io::clock::unix_millis(),
                            written_bytes: 0,
                            changed_bytes: 0,
                        },
                        disk,
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Flushes every writable overlay (at shutdown).
    pub fn flush_all(&self) {
        for exported in self.lock_exports().values() {
            if let Err(error) = exported.disk.flush_overlay() {
                tracing::warn!(export = %exported.info.name, %error, "flushing an overlay failed");
            }
        }
    }
}

fn failed_over_reason(group: &str, point: &RecoveryPoint) -> String {
    format!(
        "group {group} is failed over on the target (to sequence {}, {}): `drgw failover {group} --cancel` there resumes replication",
        point.sequence,
        super::format_utc(point.unix_ms)
    )
}

fn committed_reason(group: &str, point: &RecoveryPoint) -> String {
    format!(
        "group {group} was failed over and committed on the target (sequence {}): its replicas are the primaries now",
        point.sequence
    )
}

async fn discard(overlay: Option<Overlay>) {
    if let Some(overlay) = overlay {
        let directory = overlay.directory().to_path_buf();
        let result = tokio::task::spawn_blocking(move || overlay.discard()).await;
        if let Ok(Err(error)) = result {
            tracing::warn!(overlay = %directory.display(), %error, "removing an overlay failed");
        }
    }
}
