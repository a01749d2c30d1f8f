use super::materialize::ImageFormat;
use drgw_tls::{Fingerprint, PeerKind};

/// Version of the control protocol; a request with another is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;

/// One request. On the wire: `{"version":1,"command":"pair-add",...}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    PairShow,
    PairAdd {
        name: String,
        kind: PeerKind,
        address: Option<String>,
        fingerprint: Fingerprint,
    },
    PairRemove {
        name: String,
    },
    /// Protect a disk: the named tap may attach it and its writes are staged
    /// in the group's sequence.
    Protect {
        disk: String,
        group: String,
        tap: String,
        size_bytes: u64,
        /// The paired appliance to replicate to; default: the only one.
        #[serde(default)]
        peer: Option<String>,
    },
    Unprotect {
        disk: String,
    },
    /// Recovery points of a group replicated to this appliance.
    Points {
        group: String,
    },
    /// Stage an app-consistent bookmark in a group protected here.
    Bookmark {
        group: String,
        name: String,
    },
    /// Write a disk as it was at a point to an image file; answers when
    /// the image is complete (the job of `materialize-start`, waited for).
    Materialize {
        group: String,
        point: String,
        disk: String,
        out: String,
        #[serde(default)]
        format: ImageFormat,
        #[serde(default)]
        resume: bool,
        #[serde(default)]
        force: bool,
    },
    /// Start writing a disk as it was at a point to an image file; answers
    /// `{job}` at once (follow it with `job`).
    MaterializeStart {
        group: String,
        point: String,
        disk: String,
        out: String,
        #[serde(default)]
        format: ImageFormat,
        #[serde(default)]
        resume: bool,
        #[serde(default)]
        force: bool,
    },
    /// Progress of a job.
    Job {
        id: u64,
    },
    /// Stop a running job (materialize: the image stays resumable).
    JobCancel {
        id: u64,
    },
    /// Recent events (RPO crossings, retention trims).
    Events,
    /// Serve disks of a group at a point over NBD (target side).
    Export {
        group: String,
        point: String,
        #[serde(default)]
        disk: Option<String>,
        #[serde(default)]
        writable: bool,
    },
    /// End an export made by `Export`.
    Unexport {
        name: String,
    },
    /// Recovery exports served now.
    Exports,
    /// Writable disks of the whole group at a point, replication going on.
    TestFailover {
        group: String,
        point: String,
    },
    /// End the test failover: throw its writes away, record the drill.
    TestFailoverCleanup {
        group: String,
        /// "passed" or "failed", as the operator judged the drill.
        #[serde(default)]
        result: Option<String>,
        #[serde(default)]
        note: String,
    },
    /// Serve the group's disks at a point as the primaries; refuse new batches.
    Failover {
        group: String,
        point: String,
    },
    /// Undo a failover not yet committed.
    FailoverCancel {
        group: String,
    },
    /// Make a failover final.
    Commit {
        group: String,
    },
    /// A group's recovery state, transitions and drills.
    Recovery {
        group: String,
    },
    /// Starts a resync of a protected group (source side).
    Resync {
        group: String,
        #[serde(default)]
        disk: Option<String>,
        #[serde(default)]
        block_bytes: Option<u32>,
        #[serde(default)]
        fine_bytes: Option<u32>,
        #[serde(default)]
        not_before_unix_ms: Option<u64>,
    },
    ResyncStatus {
        group: String,
    },
    ResyncCancel {
        group: String,
    },
    /// Grows a protected disk, then resyncs it (source side).
    Resize {
        disk: String,
        size_bytes: u64,
    },
    /// After a failover committed at the group's target: replicate it back
    /// here (original site), onto these disks.
    Reprotect {
        group: String,
        /// (disk name, the disk on this site).
        disks: Vec<(String, std::path::PathBuf)>,
        #[serde(default)]
        discard_local: bool,
    },
    /// Take a reprotected group back to this (original) site.
    Failback {
        group: String,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// One response: `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `drgw pair show` prints: what the other site's operator needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairInfo {
    pub name: String,
    pub appliance_id: String,
    pub fingerprint: Fingerprint,
    pub pairing_code: String,
    pub certificate_path: String,
    pub listen_address: String,
}
