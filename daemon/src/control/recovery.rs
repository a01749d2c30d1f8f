//! Control requests about recovery points: list them, take a bookmark,
//! write a point of a disk to an image. Run on a blocking thread.

use crate::appliance::Appliance;
use crate::target::{PointSpec, PointView, RecoveryPoint};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PointList {
    pub group: String,
    pub peer: String,
    /// Points at or after this sequence can be recovered.
    pub recoverable_from: u64,
    pub applied_through: u64,
    pub points: Vec<RecoveryPoint>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BookmarkTaken {
    pub group: String,
    pub name: String,
    pub sequence: u64,
    pub unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Materialized {
    pub group: String,
    pub disk: String,
    pub point: RecoveryPoint,
    pub out: String,
    pub size_bytes: u64,
    /// Bytes written (all-zero chunks are left as holes).
    pub data_bytes: u64,
    pub seconds: f64,
}

/// A group's recovery state with its transitions and drills.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryHistory {
    #[serde(flatten)]
    pub record: crate::catalog::GroupRecovery,
    pub drills: Vec<crate::catalog::Drill>,
}

pub fn history(appliance: &Appliance, group: &str) -> Result<RecoveryHistory, String> {
    let record = appliance
        .recovery
        .history(group)
        .map_err(|e| e.to_string())?;
    let drills = appliance
        .recovery
        .drills(group)
        .map_err(|e| e.to_string())?;
    Ok(RecoveryHistory { record, drills })
}

/// Export, test failover, failover, cancel, commit: run on the runtime (they
/// wait for the applier and open point views).
pub fn transition(
    appliance: &Appliance,
    request: crate::control::Request,
) -> Result<serde_json::Value, String> {
    use crate::control::Request;
    let recovery = appliance.recovery.clone();
    let runtime = tokio::runtime::Handle::current();
    let encode = |value: Result<serde_json::Value, crate::target::TargetError>| {
        value.map_err(|e| e.to_string())
    };
    runtime.block_on(async move {
        encode(match request {
            Request::Export {
                group,
                point,
                disk,
                writable,
            } => recovery
                .export(&group, &point, disk.as_deref(), writable)
                .await
                .map(to_json),
            Request::Unexport { name } => recovery.unexport(&name).await.map(to_json),
            Request::TestFailover { group, point } => {
                recovery.test_failover(&group, &point).await.map(to_json)
            }
            Request::TestFailoverCleanup {
                group,
                result,
                note,
            } => recovery
                .test_failover_cleanup(&group, result.as_deref(), &note)
                .await
                .map(to_json),
            Request::Failover { group, point } => {
                recovery.failover(&group, &point).await.map(to_json)
            }
            Request::FailoverCancel { group } => {
                recovery.failover_cancel(&group).await.map(to_json)
            }
            Request::Commit { group } => recovery.commit(&group).await.map(to_json),
            other => Err(crate::target::TargetError::Protocol(format!(
                "not a recovery request: {other:?}"
            ))),
        })
    })
}

fn to_json<T: serde::Serialize>(value: T) -> serde_json::Value {
    serde_json::to_value(value).expect("recovery answers serialize")
}

pub fn points(appliance: &Appliance, group: &str) -> Result<PointList, String> {
    let target = appliance.targets.find(group).map_err(|e| e.to_string())?;
    let (recoverable_from, applied_through) = target.recoverable();
    let (peer, _) = target.key();
    Ok(PointList {
        group: target.name(),
        peer,
        recoverable_from,
        applied_through,
        points: target.points(),
    })
}

pub fn bookmark(appliance: &Appliance, group: &str, name: &str) -> Result<BookmarkTaken, String> {
    if name.is_empty()
        || name.len() > crate::wire::BOOKMARK_NAME_BYTES_MAX
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "bookmark name must be 1 to {} bytes without control characters",
            crate::wire::BOOKMARK_NAME_BYTES_MAX
        ));
    }
    let runtime = tokio::runtime::Handle::current();
    let (sequence, unix_ms) = runtime
        .block_on(appliance.ingest.bookmark(group, name))
        .map_err(|e| e.to_string())?;
    tracing::info!(group, bookmark = name, sequence, "bookmark staged");
    Ok(BookmarkTaken {
        group: group.to_string(),
        name: name.to_string(),
        sequence,
        unix_ms,
    })
}

/// Chunk of a materialize pass.
const CHUNK_BYTES: usize = 4 << 20;

pub fn materialize(
    appliance: &Appliance,
    group: &str,
    point: &str,
    disk: &str,
    out: &str,
) -> Result<Materialized, String> {
    let target = appliance.targets.find(group).map_err(|e| e.to_string())?;
    let spec = PointSpec::parse(point).map_err(|e| e.to_string())?;
    let resolved = spec.resolve(&target.points()).map_err(|e| e.to_string())?;
    let replica = target
        .disks()
        .into_iter()
        .find(|d| d.name == disk)
        .ok_or_else(|| format!("group {group} has no disk {disk}"))?;
    let runtime = tokio::runtime::Handle::current();
    let mut view = runtime
        .block_on(PointView::open(
            target.clone(),
            replica.id,
            resolved.sequence,
        ))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| format!("{out}: {e}"))?;
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut data_bytes = 0u64;
    let mut offset = 0u64;
    while offset < replica.size_bytes {
        let length = (replica.size_bytes - offset).min(CHUNK_BYTES as u64) as usize;
        let chunk = &mut buffer[..length];
        view.read_at(chunk, offset).map_err(|e| e.to_string())?;
        if chunk.iter().any(|&b| b != 0) {
            file.write_all_at(chunk, offset)
                .map_err(|e| format!("{out}: {e}"))?;
            data_bytes += length as u64;
        }
        offset += length as u64;
    }
    file.set_len(replica.size_bytes)
        .map_err(|e| format!("{out}: {e}"))?;
    file.flush().map_err(|e| format!("{out}: {e}"))?;
    file.sync_all().map_err(|e| format!("{out}: {e}"))?;
    Ok(Materialized {
        group: target.name(),
        disk: disk.to_string(),
        point: resolved,
        out: out.to_string(),
        size_bytes: replica.size_bytes,
        data_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}
