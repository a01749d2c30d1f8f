//! `drgw status`: what the appliance is, whom it is linked to, and the room
//! left on its volumes.

use crate::appliance::Appliance;
use crate::link::{self, LinkStatus, Refusal};
use drgw_tls::{Fingerprint, PeerKind};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub appliance_id: String,
    pub name: String,
    pub version: String,
    pub uptime_s: u64,
    pub started_unix_s: u64,
    pub listen_address: String,
    pub fingerprint: Fingerprint,
    pub pairing_code: String,
    pub peers: Vec<PeerStatus>,
    pub refusals: Vec<Refusal>,
    pub volumes: Vec<VolumeStatus>,
    pub protected_disks: Vec<ProtectedDiskStatus>,
    /// Consistency groups with their staging (source side).
    pub groups: Vec<drgw_ingest::GroupStaging>,
    /// Shipping of those groups to their targets (source side).
    pub shipping: Vec<crate::ship::ShipStatus>,
    /// Bandwidth limit in force for shipping, bytes per second (none: unlimited).
    pub bandwidth_limit_bytes_per_second: Option<u64>,
    /// Groups replicated to this appliance (target side).
    pub target_groups: Vec<drgw_replica::TargetGroupStatus>,
    /// Target groups that could not be opened, by directory, and why.
    pub target_problems: std::collections::BTreeMap<String, String>,
    /// Recovery exports and each target group's recovery state.
    #[serde(default)]
    pub recovery: Option<drgw_replica::RecoveryStatus>,
    /// Resyncs running on the groups this appliance protects (source side).
    #[serde(default)]
    pub resyncs: Vec<crate::resync::ResyncView>,
    /// Groups replicated back from this site's committed failover disks
    /// (reprotect): the delta being sent.
    #[serde(default)]
    pub reprotects: Vec<crate::reprotect::DeltaProgress>,
    /// Groups replicated back to this (original) site.
    #[serde(default)]
    pub reversed: Vec<drgw_catalog::ReversedGroup>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub kind: PeerKind,
    pub address: Option<String>,
    pub fingerprint: Fingerprint,
    /// Whether this side dials the peer (otherwise it waits to be dialed).
    pub dials: bool,
    pub link: LinkStatus,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VolumeStatus {
    pub role: String,
    pub path: PathBuf,
    pub mount_point: Option<PathBuf>,
    pub file_system: Option<String>,
    pub total_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    /// Why the figures are missing, when they are.
    pub problem: Option<String>,
}

impl VolumeStatus {
    fn unknown(role: &str, path: &Path, problem: String) -> VolumeStatus {
        VolumeStatus {
            role: role.to_string(),
            path: path.to_path_buf(),
            mount_point: None,
            file_system: None,
            total_bytes: None,
            available_bytes: None,
            problem: Some(problem),
        }
    }
}

/// A disk under protection at this (source) appliance.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProtectedDiskStatus {
    pub name: String,
    pub group: String,
    pub tap: String,
    pub size_bytes: u64,
    /// Whether its tap has it attached right now.
    pub attached: bool,
    pub writes_per_second: f64,
    pub bytes_per_second: f64,
    pub records_total: u64,
    pub bytes_total: u64,
}

/// Gathers the status. Reads the mount table: call off the runtime.
pub fn collect(appliance: &Appliance) -> Status {
    let settings = appliance.settings();
    let own = appliance.identity.fingerprint();
    let peers = appliance
        .pins
        .all()
        .into_iter()
        .map(|peer| PeerStatus {
            dials: link::dials(own, &peer),
            link: appliance
                .links
                .status(&peer.name)
                .unwrap_or_else(|| LinkStatus::waiting_since(appliance.started_unix_s)),
            name: peer.name,
            kind: peer.kind,
            address: peer.address,
            fingerprint: peer.fingerprint,
        })
        .collect();
    let disks = sysinfo::Disks::new_with_refreshed_list();
    let volumes = [
        ("cache", &settings.cache_volume),
        ("retention", &settings.retention_volume),
    ]
    .into_iter()
    .map(|(role, path)| match &disks {
        Ok(disks) => {
            let mut status = volume_status(disks, role, path);
            if settings.volumes_require_mounted {
                require_mounted(&mut status, role);
            }
            status
        }
        Err(error) => {
            VolumeStatus::unknown(role, path, format!("cannot read the mount table: {error}"))
        }
    })
    .collect();
    Status {
        appliance_id: appliance.id.to_string(),
        name: appliance.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: appliance.started.elapsed().as_secs(),
        started_unix_s: appliance.started_unix_s,
        listen_address: appliance.listen_address.to_string(),
        fingerprint: own,
        pairing_code: own.pairing_code(),
        peers,
        refusals: appliance.refusals.snapshot(),
        volumes,
        protected_disks: protected_disks(appliance),
        groups: appliance.ingest.groups_blocking(),
        shipping: appliance.ship_board.all(),
        bandwidth_limit_bytes_per_second: appliance.throttle.current_limit_bytes_per_second(),
        resyncs: appliance.resyncs.running(),
        reprotects: crate::reprotect::progress(),
        reversed: appliance.catalog.reversed().unwrap_or_default(),
        target_groups: appliance.targets.all().iter().map(|g| g.status()).collect(),
        target_problems: appliance.targets.problems(),
        recovery: Some(appliance.recovery.status()),
    }
}

fn protected_disks(appliance: &Appliance) -> Vec<ProtectedDiskStatus> {
    appliance
        .ingest
        .disks()
        .into_iter()
        .map(|disk| {
            let figures = appliance.ingest.disk_figures(&disk.name);
            ProtectedDiskStatus {
                name: disk.name,
                group: disk.group,
                tap: disk.tap,
                size_bytes: disk.size_bytes,
                attached: figures.attached,
                writes_per_second: figures.writes_per_second,
                bytes_per_second: figures.bytes_per_second,
                records_total: figures.records_total,
                bytes_total: figures.bytes_total,
            }
        })
        .collect()
}

/// With `[volumes] require_mounted`, a volume whose path is not itself a
/// mount point is missing: its figures would be those of the disk above it.
fn require_mounted(status: &mut VolumeStatus, role: &str) {
    if let Some(problem) = drgw_io::fsutil::mount_point_problem(&status.path, role) {
        status.problem = Some(problem);
        status.mount_point = None;
        status.file_system = None;
        status.total_bytes = None;
        status.available_bytes = None;
    }
}

/// The file system holding `path` is the mounted disk with the longest
/// mount point that is a prefix of it (or of its nearest existing parent).
fn volume_status(disks: &sysinfo::Disks, role: &str, path: &Path) -> VolumeStatus {
    let mut status = VolumeStatus::unknown(role, path, String::new());
    status.problem = None;
    let resolved = match path.canonicalize() {
        Ok(resolved) => resolved,
        Err(_) => {
            status.problem = Some("does not exist yet".into());
            match path
                .ancestors()
                .skip(1)
                .find_map(|parent| parent.canonicalize().ok())
            {
                Some(parent) => parent,
                None => return status,
            }
        }
    };
    let holder = disks
        .iter()
        .filter(|disk| resolved.starts_with(disk.mount_point()))
        .max_by_key(|disk| disk.mount_point().as_os_str().len());
    match holder {
        Some(disk) => {
            status.mount_point = Some(disk.mount_point().to_path_buf());
            status.file_system = Some(disk.file_system().to_string_lossy().into_owned());
            status.total_bytes = Some(disk.total_space());
            status.available_bytes = Some(disk.available_space());
        }
        None => status.problem = Some("no mounted file system found for it".into()),
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_that_must_be_mounted_and_is_not_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retention");
        std::fs::create_dir(&path).unwrap();
        let disks = sysinfo::Disks::new_with_refreshed_list().unwrap();
        let mut status = volume_status(&disks, "retention", &path);
        require_mounted(&mut status, "retention");
        let problem = status.problem.unwrap();
        assert!(
            problem.contains("the retention disk is missing"),
            "{problem}"
        );
        assert_eq!(status.available_bytes, None);
        // A mount point (/proc is one) passes.
        assert_eq!(
            drgw_io::fsutil::mount_point_problem(Path::new("/proc"), "cache"),
            None
        );
    }

    #[test]
    fn root_volume_is_found() {
        let disks = sysinfo::Disks::new_with_refreshed_list().unwrap();
        let status = volume_status(&disks, "cache", Path::new("/tmp/drgw-no-such/dir"));
        assert_eq!(status.problem.as_deref(), Some("does not exist yet"));
        if !disks.is_empty() {
            assert!(status.mount_point.is_some(), "{status:?}");
            assert!(status.total_bytes.unwrap() > 0);
        }
    }
}
