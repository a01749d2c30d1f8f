//! Control requests about recovery points: list them, take a bookmark.
//! Run on a blocking thread. Writing a point to an image: materialize.rs.

use crate::appliance::Appliance;
use crate::target::RecoveryPoint;

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
