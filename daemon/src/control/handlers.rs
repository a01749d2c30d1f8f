use super::materialize::{self, MaterializeRequest};
use super::protocol::{PairInfo, Request};
use crate::appliance::Appliance;
use crate::status;
use drgw_catalog::ProtectedDisk;
use drgw_io::clock;
use drgw_tls::{Fingerprint, PeerKind, PinnedPeer};
use std::sync::Arc;

/// Runs one request. Catalog work is blocking I/O: it runs off the runtime.
pub async fn handle(
    request: Request,
    appliance: &Arc<Appliance>,
) -> Result<serde_json::Value, String> {
    let appliance = appliance.clone();
    let outcome = tokio::task::spawn_blocking(move || match request {
        Request::Status => to_value(status::collect(&appliance)),
        Request::PairShow => to_value(pair_info(&appliance)),
        Request::PairAdd {
            name,
            kind,
            address,
            fingerprint,
        } => pair_add(&appliance, name, kind, address, fingerprint).map(to_value)?,
        Request::PairRemove { name } => pair_remove(&appliance, &name).map(to_value)?,
        Request::Protect {
            disk,
            group,
            tap,
            size_bytes,
            peer,
        } => protect(&appliance, &disk, &group, &tap, size_bytes, peer.as_deref()).map(to_value)?,
        Request::Unprotect { disk } => unprotect(&appliance, &disk).map(to_value)?,
        Request::Points { group } => super::recovery::points(&appliance, &group).map(to_value)?,
        Request::Bookmark { group, name } => {
            super::recovery::bookmark(&appliance, &group, &name).map(to_value)?
        }
        Request::Materialize {
            group,
            point,
            disk,
            out,
            format,
            resume,
            force,
        } => {
            let request = MaterializeRequest {
                group,
                point,
                disk,
                out,
                format,
                resume,
                force,
            };
            materialize::blocking(&appliance, request)
        }
        Request::MaterializeStart {
            group,
            point,
            disk,
            out,
            format,
            resume,
            force,
        } => {
            let request = MaterializeRequest {
                group,
                point,
                disk,
                out,
                format,
                resume,
                force,
            };
            materialize::start(&appliance, request).map(|job| serde_json::json!({ "job": job }))
        }
        Request::Job { id } => appliance.jobs.report(id).map(to_value)?,
        Request::JobCancel { id } => appliance.jobs.cancel(id).map(to_value)?,
        Request::Events => to_value(drgw_replica::recent_events()),
        Request::Exports => to_value(appliance.recovery.list()),
        Request::Recovery { group } => {
            super::recovery::history(&appliance, &group).map(to_value)?
        }
        Request::Resync {
            group,
            disk,
            block_bytes,
            fine_bytes,
            not_before_unix_ms,
        } => {
            let options = crate::resync::ResyncOptions {
                disk,
                block_bytes: block_bytes.unwrap_or(crate::resync::BLOCK_BYTES_DEFAULT),
                fine_bytes: fine_bytes.unwrap_or(crate::resync::FINE_BYTES_DEFAULT),
                not_before_unix_ms,
                reason: "operator".into(),
            };
            crate::resync::start(&appliance, &group, options).map(to_value)?
        }
        Request::ResyncStatus { group } => {
            crate::resync::status(&appliance, &group).map(to_value)?
        }
        Request::ResyncCancel { group } => {
            crate::resync::cancel(&appliance, &group).map(to_value)?
        }
        Request::Resize { disk, size_bytes } => {
            crate::resync::resize(&appliance, &disk, size_bytes).map(to_value)?
        }
        Request::Reprotect {
            group,
            disks,
            discard_local,
        } => tokio::runtime::Handle::current()
            .block_on(crate::reprotect::reprotect(
                &appliance,
                &group,
                disks,
                discard_local,
            ))
            .map(to_value)?,
        Request::Failback { group } => tokio::runtime::Handle::current()
            .block_on(crate::reprotect::failback(&appliance, &group))
            .map(to_value)?,
        request => super::recovery::transition(&appliance, request).and_then(to_value),
    })
    .await;
    outcome.map_err(|error| format!("request handler failed: {error}"))?
}

fn to_value<T: serde::Serialize>(value: T) -> Result<serde_json::Value, String> {
    serde_json::to_value(value).map_err(|error| format!("cannot encode the response: {error}"))
}

fn pair_info(appliance: &Appliance) -> PairInfo {
    let fingerprint = appliance.identity.fingerprint();
    PairInfo {
        name: appliance.name.clone(),
        appliance_id: appliance.id.to_string(),
        fingerprint,
        pairing_code: fingerprint.pairing_code(),
        certificate_path: appliance.identity.certificate_path().display().to_string(),
        listen_address: appliance.listen_address.to_string(),
    }
}

fn pair_add(
    appliance: &Appliance,
    name: String,
    kind: PeerKind,
    address: Option<String>,
    fingerprint: Fingerprint,
) -> Result<PinnedPeer, String> {
    validate_name(&name)?;
    match (kind, &address) {
        (PeerKind::Appliance, None) => {
            return Err("an appliance peer needs --address HOST:PORT (its 9443 listener)".into())
        }
        (PeerKind::Tap, Some(_)) => {
            return Err("a tap connects to us; it takes no --address".into())
        }
        (_, Some(address)) => validate_address(address)?,
        (PeerKind::Tap, None) => {}
    }
    if fingerprint == appliance.identity.fingerprint() {
        return Err(
            "that is this appliance's own fingerprint; use the other side's `drgw pair show`"
                .into(),
        );
    }
    let peer = PinnedPeer {
        name,
        kind,
        address,
        fingerprint,
        added_unix_s: clock::unix_seconds(),
    };
    appliance
        .catalog
        .add_peer(&peer)
        .map_err(|error| error.to_string())?;
    appliance
        .refresh_pins()
        .map_err(|error| error.to_string())?;
    tracing::info!(peer = %peer.name, kind = peer.kind.as_str(), fingerprint = %peer.fingerprint, "peer paired");
    Ok(peer)
}

fn pair_remove(appliance: &Appliance, name: &str) -> Result<PinnedPeer, String> {
    let removed = appliance
        .catalog
        .remove_peer(name)
        .map_err(|error| error.to_string())?;
    appliance
        .refresh_pins()
        .map_err(|error| error.to_string())?;
    appliance.links.forget(name);
    tracing::info!(peer = %name, "peer unpaired");
    Ok(removed)
}

fn protect(
    appliance: &Appliance,
    disk: &str,
    group: &str,
    tap: &str,
    size_bytes: u64,
    peer: Option<&str>,
) -> Result<ProtectedDisk, String> {
    validate_name(disk).map_err(|error| error.replace("peer name", "disk name"))?;
    validate_name(group).map_err(|error| error.replace("peer name", "group name"))?;
    match appliance
        .pins
        .all()
        .into_iter()
        .find(|peer| peer.name == tap)
    {
        Some(peer) if peer.kind == PeerKind::Tap => {}
        Some(_) => return Err(format!("{tap} is paired as an appliance, not a tap")),
        None => {
            return Err(format!(
                "no tap named {tap} is paired (see `drgw pair add --tap`)"
            ))
        }
    }
    if size_bytes == 0 || size_bytes % 512 != 0 {
        return Err(format!(
            "disk size {size_bytes} must be a positive multiple of 512 bytes"
        ));
    }
    let appliances: Vec<String> = appliance
        .pins
        .all()
        .into_iter()
        .filter(|p| p.kind == PeerKind::Appliance)
        .map(|p| p.name)
        .collect();
    let peer = match peer {
        Some(peer) if appliances.iter().any(|a| a == peer) => peer.to_string(),
        Some(peer) => {
            return Err(format!(
                "no appliance named {peer} is paired (see `drgw pair list`)"
            ))
        }
        None => match appliances.as_slice() {
            [only] => only.clone(),
            // Staged only until an appliance is paired; then it ships there.
            [] => String::new(),
            _ => {
                return Err(format!(
                    "several appliances are paired ({}): say which with --peer",
                    appliances.join(", ")
                ))
            }
        },
    };
    if let Some(other) = appliance
        .catalog
        .disks()
        .map_err(|error| error.to_string())?
        .into_iter()
        .find(|d| d.group == group && d.peer.as_deref().is_some_and(|p| p != peer))
    {
        return Err(format!(
            "group {group} already replicates to {} (disk {}); a group has one target",
            other.peer.unwrap_or_default(),
            other.name
        ));
    }
    let protected = appliance
        .catalog
        .protect_disk(
            disk,
            group,
            tap,
            size_bytes,
            Some(peer.as_str()).filter(|p| !p.is_empty()),
        )
        .map_err(|error| error.to_string())?;
    appliance
        .refresh_disks()
        .map_err(|error| error.to_string())?;
    tracing::info!(disk, group, tap, size_bytes, "disk protected");
    Ok(protected)
}

fn unprotect(appliance: &Appliance, disk: &str) -> Result<ProtectedDisk, String> {
    let removed = appliance
        .catalog
        .unprotect_disk(disk)
        .map_err(|error| error.to_string())?;
    appliance
        .refresh_disks()
        .map_err(|error| error.to_string())?;
    tracing::info!(disk, "disk unprotected");
    Ok(removed)
}

/// Peer names appear in logs, status and commands: keep them simple.
pub fn validate_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 63 || !name.chars().all(allowed) {
        return Err(format!(
            "peer name {name:?} must be 1 to 63 characters of A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

/// `HOST:PORT` or `[IPV6]:PORT`, with a port in 1..=65535.
pub fn validate_address(address: &str) -> Result<(), String> {
    let problem = || format!("address {address:?} must be HOST:PORT, e.g. 192.0.2.10:9443");
    let (host, port) = address.rsplit_once(':').ok_or_else(problem)?;
    let port: u16 = port.parse().map_err(|_| problem())?;
    if host.is_empty() || port == 0 {
        return Err(problem());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert!(validate_name("site-b.example_1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("has space").is_err());
        assert!(validate_name(&"x".repeat(64)).is_err());
        assert!(validate_address("127.0.0.1:9443").is_ok());
        assert!(validate_address("[::1]:9443").is_ok());
        assert!(validate_address("dr.example:9443").is_ok());
        assert!(validate_address("127.0.0.1").is_err());
        assert!(validate_address("127.0.0.1:0").is_err());
        assert!(validate_address("127.0.0.1:70000").is_err());
        assert!(validate_address(":9443").is_err());
    }
}
