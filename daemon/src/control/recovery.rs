//! Control requests about recovery points: list them, take a bookmark.
//! Run on a blocking thread. Writing a point to an image: materialize.rs.

use crate::appliance::Appliance;
use drgw_replica::RecoveryPoint;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PointList {
    pub group: String,
    pub peer: String,
    /// Points at or after this sequence can be recovered.
    pub recoverable_from: u64,
    pub applied_through: u64,
    pub points: Vec<RecoveryPoint>,
    /// Resync starts and ends in the window: points after a start and
    /// before its end are not crash-consistent and cannot be recovered.
    #[serde(default)]
    pub resyncs: Vec<drgw_replica::ResyncMarker>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BookmarkTaken {
    pub group: String,
    pub name: String,
    pub sequence: u64,
    pub unix_ms: u64,
}

/// A group's recovery state with its transitions and drills.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryHistory {
    #[serde(flatten)]
    pub record: drgw_catalog::GroupRecovery,
    pub drills: Vec<drgw_catalog::Drill>,
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
    let encode = |value: Result<serde_json::Value, drgw_replica::TargetError>| {
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
            other => Err(drgw_replica::TargetError::Protocol(format!(
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
        resyncs: target.markers(),
    })
}

pub fn bookmark(appliance: &Appliance, group: &str, name: &str) -> Result<BookmarkTaken, String> {
    if name.is_empty()
        || name.len() > drgw_wire::BOOKMARK_NAME_BYTES_MAX
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "bookmark name must be 1 to {} bytes without control characters",
            drgw_wire::BOOKMARK_NAME_BYTES_MAX
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
