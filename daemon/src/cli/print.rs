//! Human-readable output. `--json` prints the daemon's answer as is.

use crate::control::PairInfo;
use crate::status::{PeerStatus, Status, VolumeStatus};
use drgw_io::clock;

pub fn status(status: &Status) {
    println!(
        "drgw {}  {}  (appliance {})",
        status.version, status.name, status.appliance_id
    );
    println!(
        "up {}, replication listener {}",
        duration(status.uptime_s),
        status.listen_address
    );
    println!("fingerprint {}", status.fingerprint);
    println!("pairing code {}", status.pairing_code);
    println!();
    println!("PEERS");
    peers(&status.peers);
    println!();
    println!("VOLUMES");
    volumes(&status.volumes);
    println!();
    println!("PROTECTED DISKS");
    if status.protected_disks.is_empty() {
        println!("  none (see `drgw protect`)");
    } else {
        let rows: Vec<[String; 7]> = status
            .protected_disks
            .iter()
            .map(|disk| {
                [
                    disk.name.clone(),
                    disk.group.clone(),
                    disk.tap.clone(),
                    bytes(disk.size_bytes),
                    if disk.attached { "attached" } else { "-" }.into(),
                    format!("{:.0}", disk.writes_per_second),
                    format!("{}/s", bytes(disk.bytes_per_second as u64)),
                ]
            })
            .collect();
        let header = [
            "NAME",
            "GROUP",
            "TAP",
            "SIZE",
            "TAP LINK",
            "WRITES/S",
            "THROUGHPUT",
        ]
        .map(String::from);
        table(&header, &rows);
    }
    if !status.groups.is_empty() {
        println!();
        println!("CONSISTENCY GROUPS (staging)");
        let rows: Vec<[String; 5]> = status
            .groups
            .iter()
            .map(|group| {
                let state = match (&group.problem, group.full) {
                    (Some(problem), _) => format!("UNUSABLE: {problem}"),
                    (None, true) => "full: taps held back".into(),
                    (None, false) => "ok".into(),
                };
                [
                    group.name.clone(),
                    format!(
                        "{} / {}",
                        bytes(group.bytes_on_disk),
                        bytes(group.capacity_bytes)
                    ),
                    group.records_unreleased.to_string(),
                    group.oldest_unshipped_age_s.map_or("-".into(), duration),
                    state,
                ]
            })
            .collect();
        let header = ["GROUP", "STAGED", "RECORDS", "OLDEST UNSHIPPED", "STATE"].map(String::from);
        table(&header, &rows);
    }
    if !status.shipping.is_empty() {
        println!();
        let limit = status
            .bandwidth_limit_bytes_per_second
            .map_or("unlimited".to_string(), |limit| {
                format!("{}/s", bytes(limit))
            });
        println!("SHIPPING (source side; bandwidth limit now: {limit})");
        let rows: Vec<[String; 6]> = status
            .shipping
            .iter()
            .map(|ship| {
                let ratio = if ship.wire_bytes_sent > 0 {
                    format!(
                        "{:.2}",
                        ship.raw_bytes_sent as f64 / ship.wire_bytes_sent as f64
                    )
                } else {
                    "-".into()
                };
                [
                    ship.group.clone(),
                    ship.peer.clone(),
                    ship.acknowledged_through.to_string(),
                    bytes(ship.wire_bytes_sent),
                    format!("{ratio} (zstd {})", ship.zstd_level),
                    ship.last_ack_latency_ms
                        .map_or("-".into(), |ms| format!("{ms} ms")),
                ]
            })
            .collect();
        let header = [
            "GROUP",
            "TARGET",
            "ACKED THROUGH",
            "SENT",
            "COMPRESSION",
            "ACK LATENCY",
        ]
        .map(String::from);
        table(&header, &rows);
    }
    if !status.resyncs.is_empty() {
        println!();
        println!("RESYNCS (source side)");
        let rows: Vec<[String; 5]> = status
            .resyncs
            .iter()
            .map(|view| {
                let record = &view.record;
                let percent =
                    record.compared_bytes as f64 * 100.0 / record.total_bytes.max(1) as f64;
                [
                    record.group.clone(),
                    format!(
                        "{} of {} ({percent:.0} %)",
                        bytes(record.compared_bytes),
                        bytes(record.total_bytes)
                    ),
                    bytes(record.differing_bytes),
                    format!(
                        "{}/s, ETA {}",
                        bytes(view.bytes_per_second as u64),
                        view.eta_s.map_or("-".into(), |s| format!("{s:.0} s"))
                    ),
                    view.waiting.clone().unwrap_or_else(|| "comparing".into()),
                ]
            })
            .collect();
        let header = ["GROUP", "COMPARED", "DIFFERING", "RATE", "STATE"].map(String::from);
        table(&header, &rows);
    }
    if !status.reprotects.is_empty() {
        println!();
        println!("REPLICATED BACK (reprotect, from this failed-over site)");
        let rows: Vec<[String; 4]> = status
            .reprotects
            .iter()
            .map(|delta| {
                let state = match (&delta.error, delta.running) {
                    (Some(error), _) => format!("retrying: {error}"),
                    (None, true) => "sending the delta".into(),
                    (None, false) => "delta sent; writes replicate".into(),
                };
                [
                    delta.group.clone(),
                    delta.peer.clone(),
                    format!(
                        "{} of {}",
                        bytes(delta.sent_bytes),
                        bytes(delta.total_bytes)
                    ),
                    state,
                ]
            })
            .collect();
        let header = ["GROUP", "TO", "DELTA", "STATE"].map(String::from);
        table(&header, &rows);
    }
    for reversed in &status.reversed {
        println!();
        println!(
            "group {} is reprotected: {} replicates it back here since {} (`drgw failback {}` takes it back)",
            reversed.group,
            reversed.peer,
            drgw_replica::format_utc(reversed.since_unix_ms),
            reversed.group
        );
    }
    if !status.target_groups.is_empty() || !status.target_problems.is_empty() {
        println!();
        println!("REPLICATED HERE (target side)");
        let rows: Vec<[String; 7]> = status
            .target_groups
            .iter()
            .map(|group| {
                let state = match (&group.problem, group.rpo_exceeded) {
                    (Some(problem), _) => format!("STOPPED: {problem}"),
                    (None, true) => format!("RPO above {} s", group.rpo_threshold_s),
                    (None, false) => "ok".into(),
                };
                let window = match (group.oldest_point_unix_ms, group.newest_point_unix_ms) {
                    (Some(oldest), Some(newest)) => duration(newest.saturating_sub(oldest) / 1000),
                    _ => "-".into(),
                };
                [
                    format!("{}/{}", group.peer, group.name),
                    group.rpo_s.map_or("-".into(), |rpo| format!("{rpo:.1} s")),
                    group.points.to_string(),
                    window,
                    format!(
                        "{} / {}",
                        bytes(group.journal_bytes),
                        bytes(group.journal_cap_bytes)
                    ),
                    format!("{} / {}", group.applied_through, group.received_through),
                    state,
                ]
            })
            .collect();
        let header = [
            "GROUP",
            "RPO",
            "POINTS",
            "WINDOW",
            "JOURNAL",
            "APPLIED / RECEIVED",
            "STATE",
        ]
        .map(String::from);
        table(&header, &rows);
        for (directory, problem) in &status.target_problems {
            println!("  UNUSABLE {directory}: {problem}");
        }
    }
    if !status.refusals.is_empty() {
        println!();
        println!("REFUSED CONNECTIONS (most recent last)");
        for refusal in &status.refusals {
            let age = clock::unix_seconds().saturating_sub(refusal.at_unix_s);
            println!(
                "  {} ago  {}  {}",
                duration(age),
                refusal.remote_address,
                refusal.reason
            );
        }
    }
}

pub fn peers(peers: &[PeerStatus]) {
    if peers.is_empty() {
        println!("  none paired (see `drgw pair show` and `drgw pair add`)");
        return;
    }
    let rows: Vec<[String; 7]> = peers.iter().map(peer_row).collect();
    let header = [
        "NAME",
        "KIND",
        "STATE",
        "SINCE",
        "ADDRESS",
        "RTT",
        "LAST ERROR",
    ]
    .map(String::from);
    table(&header, &rows);
}

fn peer_row(peer: &PeerStatus) -> [String; 7] {
    let link = &peer.link;
    let state = serde_json::to_value(link.state)
        .ok()
        .and_then(|value| value.as_str().map(String::from))
        .unwrap_or_default();
    let since = clock::unix_seconds().saturating_sub(link.since_unix_s);
    let address = link
        .remote_address
        .clone()
        .or_else(|| peer.address.clone())
        .unwrap_or_else(|| "-".into());
    let round_trip = link
        .round_trip_us
        .map(|micros| format!("{:.1} ms", micros as f64 / 1000.0))
        .unwrap_or_else(|| "-".into());
    [
        peer.name.clone(),
        peer.kind.as_str().into(),
        state,
        format!("{} ago", duration(since)),
        address,
        round_trip,
        link.last_error.clone().unwrap_or_else(|| "-".into()),
    ]
}

fn volumes(volumes: &[VolumeStatus]) {
    let rows: Vec<[String; 5]> = volumes
        .iter()
        .map(|volume| {
            let mount = volume
                .mount_point
                .as_ref()
                .map(|path| path.display().to_string())
                .unwrap_or_else(|| "-".into());
            let free = volume
                .available_bytes
                .map(bytes)
                .unwrap_or_else(|| "-".into());
            let total = volume.total_bytes.map(bytes).unwrap_or_else(|| "-".into());
            let mut path = volume.path.display().to_string();
            if let Some(problem) = &volume.problem {
                path = format!("{path} ({problem})");
            }
            [volume.role.clone(), path, mount, free, total]
        })
        .collect();
    table(
        &["ROLE", "PATH", "ON", "FREE", "TOTAL"].map(String::from),
        &rows,
    );
}

fn table<const N: usize>(header: &[String; N], rows: &[[String; N]]) {
    let mut widths = header.clone().map(|cell| cell.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("  {}", cells.join("  ").trim_end());
    }
}

pub fn pair_info(info: &PairInfo) {
    println!("appliance     {} ({})", info.name, info.appliance_id);
    println!("fingerprint   {}", info.fingerprint);
    println!("pairing code  {}", info.pairing_code);
    println!("listening on  {}", info.listen_address);
    println!("certificate   {}", info.certificate_path);
    println!();
    println!("On the other appliance, run:");
    println!(
        "  drgw pair add --name {} --address <THIS-HOST>:{} --fingerprint {}",
        info.name,
        info.listen_address.rsplit(':').next().unwrap_or("9443"),
        info.fingerprint
    );
}

pub fn protected(value: &serde_json::Value) {
    let name = value["name"].as_str().unwrap_or("?");
    let group = value["group"].as_str().unwrap_or("?");
    let tap = value["tap"].as_str().unwrap_or("?");
    println!("protected {name} in group {group}; tap {tap} may now attach it");
}

pub fn paired(value: &serde_json::Value) {
    let name = value["name"].as_str().unwrap_or("?");
    let kind = value["kind"].as_str().unwrap_or("?");
    let fingerprint = value["fingerprint"].as_str().unwrap_or("?");
    println!("paired {kind} {name} ({fingerprint})");
    println!("check the link with `drgw pair list`");
}

pub fn duration(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..=86399 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

pub fn bytes(count: u64) -> String {
    drgw_io::units::Bytes(count).to_string()
}

pub fn points(value: &serde_json::Value) {
    let points = value["points"].as_array().cloned().unwrap_or_default();
    println!(
        "{} from {}: {} points (recoverable from sequence {}, applied through {})",
        value["group"].as_str().unwrap_or_default(),
        value["peer"].as_str().unwrap_or_default(),
        points.len(),
        value["recoverable_from"],
        value["applied_through"]
    );
    let markers: Vec<drgw_replica::ResyncMarker> =
        serde_json::from_value(value["resyncs"].clone()).unwrap_or_default();
    let rows: Vec<[String; 3]> = points
        .iter()
        .map(|point| {
            let sequence = point["sequence"].as_u64().unwrap_or(0);
            let kind = match point["bookmark"].as_str() {
                Some(name) => format!("bookmark {name}"),
                None => "crash-consistent".into(),
            };
            let kind = match drgw_replica::resync_open_at(&markers, sequence) {
                Some(_) => format!("{kind}, during a resync: NOT consistent"),
                None => kind,
            };
            [
                drgw_replica::format_utc(point["unix_ms"].as_u64().unwrap_or(0)),
                kind,
                point["sequence"].to_string(),
            ]
        })
        .collect();
    table(&["TIME (UTC)", "KIND", "SEQUENCE"].map(String::from), &rows);
}

pub fn resync(value: &serde_json::Value) {
    let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
    let number = |key: &str| value[key].as_u64().unwrap_or(0);
    let total = number("total_bytes");
    let compared = number("compared_bytes");
    let percent = compared as f64 * 100.0 / total.max(1) as f64;
    println!(
        "resync of {} ({}): {}, {} of {} compared ({percent:.0} %), {} differed and were sent again",
        text("group"),
        value["disks"]
            .as_array()
            .map(|d| d.iter().filter_map(|n| n.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        text("phase"),
        bytes(compared),
        bytes(total),
        bytes(number("differing_bytes")),
    );
    let started = number("started_unix_ms");
    match value["finished_unix_ms"].as_u64() {
        Some(finished) => println!(
            "started {}, ended {} ({:.1} s); grain {} compared again at {}; resumed {} times",
            drgw_replica::format_utc(started),
            drgw_replica::format_utc(finished),
            finished.saturating_sub(started) as f64 / 1000.0,
            bytes(number("block_bytes")),
            bytes(number("fine_bytes")),
            number("resumes")
        ),
        None => println!(
            "started {}, {}/s, ETA {}; grain {} compared again at {}",
            drgw_replica::format_utc(started),
            bytes(value["bytes_per_second"].as_f64().unwrap_or(0.0) as u64),
            value["eta_s"]
                .as_f64()
                .map(|s| format!("{s:.0} s"))
                .unwrap_or_else(|| "unknown".into()),
            bytes(number("block_bytes")),
            bytes(number("fine_bytes"))
        ),
    }
    if let Some(waiting) = value["waiting"].as_str() {
        println!("waiting: {waiting}");
    }
    if let Some(error) = value["error"].as_str() {
        println!("error: {error}");
    }
    if let Some(sequence) = value["start_sequence"].as_u64() {
        if value["phase"] != "done" {
            println!(
                "points from sequence {sequence} on are not crash-consistent until a resync of {} completes",
                text("group")
            );
        }
    }
}

pub fn materialized(value: &serde_json::Value) {
    let seconds = value["seconds"].as_f64().unwrap_or(0.0);
    let size = value["size_bytes"].as_u64().unwrap_or(0);
    let resumed = value["resumed_from_bytes"].as_u64().unwrap_or(0);
    println!(
        "{} of {} at sequence {} ({}) written to {} ({}): {} ({} of data) in {:.1} s ({}/s){}",
        value["disk"].as_str().unwrap_or_default(),
        value["group"].as_str().unwrap_or_default(),
        value["point"]["sequence"],
        drgw_replica::format_utc(value["point"]["unix_ms"].as_u64().unwrap_or(0)),
        value["out"].as_str().unwrap_or_default(),
        value["format"].as_str().unwrap_or("raw"),
        bytes(size),
        bytes(value["data_bytes"].as_u64().unwrap_or(0)),
        seconds,
        bytes(((size - resumed.min(size)) as f64 / seconds.max(1e-9)) as u64),
        match resumed {
            0 => String::new(),
            from => format!(", resumed at {}", bytes(from)),
        },
    );
}

pub fn exports(value: &serde_json::Value) {
    let exports = value.as_array().cloned().unwrap_or_default();
    if exports.is_empty() {
        println!("no recovery exports");
        return;
    }
    let rows: Vec<[String; 6]> = exports
        .iter()
        .map(|export| {
            let point = &export["point"];
            let at = match point["bookmark"].as_str() {
                Some(name) => format!("bookmark {name}"),
                None => drgw_replica::format_utc(point["unix_ms"].as_u64().unwrap_or(0)),
            };
            [
                export["uri"].as_str().unwrap_or_default().to_string(),
                export["disk"].as_str().unwrap_or_default().to_string(),
                format!("seq {} ({at})", point["sequence"]),
                if export["writable"].as_bool().unwrap_or(false) {
                    "rw".into()
                } else {
                    "ro".into()
                },
                export["purpose"].as_str().unwrap_or_default().to_string(),
                match export["changed_bytes"].as_u64().unwrap_or(0) {
                    0 => bytes(export["written_bytes"].as_u64().unwrap_or(0)),
                    changed => format!("{} changed", bytes(changed)),
                },
            ]
        })
        .collect();
    table(
        &["EXPORT", "DISK", "POINT", "MODE", "PURPOSE", "WRITTEN"].map(String::from),
        &rows,
    );
}

pub fn outcome(value: &serde_json::Value) {
    println!(
        "{}: {}",
        value["group"].as_str().unwrap_or_default(),
        value["message"].as_str().unwrap_or_default()
    );
    if let Some(point) = value.get("point").filter(|p| !p.is_null()) {
        let kind = match point["bookmark"].as_str() {
            Some(name) => format!(", bookmark {name}"),
            None => String::new(),
        };
        println!(
            "point: sequence {} ({}{kind})",
            point["sequence"],
            drgw_replica::format_utc(point["unix_ms"].as_u64().unwrap_or(0))
        );
    }
    if value["exports"].as_array().is_some_and(|e| !e.is_empty()) {
        exports(&value["exports"]);
    }
}

pub fn recovery(value: &serde_json::Value) {
    let state = value["state"]["state"].as_str().unwrap_or("protected");
    println!("{}: {state}", value["group"].as_str().unwrap_or_default());
    let transitions = value["transitions"].as_array().cloned().unwrap_or_default();
    let rows: Vec<[String; 3]> = transitions
        .iter()
        .map(|t| {
            [
                drgw_replica::format_utc(t["unix_ms"].as_u64().unwrap_or(0)),
                format!(
                    "{} -> {}",
                    t["from"].as_str().unwrap_or_default(),
                    t["to"].as_str().unwrap_or_default()
                ),
                t["note"].as_str().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(
            &["TIME (UTC)", "TRANSITION", "NOTE"].map(String::from),
            &rows,
        );
    }
    let drills = value["drills"].as_array().cloned().unwrap_or_default();
    if !drills.is_empty() {
        println!("test failover drills:");
        let rows: Vec<[String; 4]> = drills
            .iter()
            .map(|d| {
                [
                    drgw_replica::format_utc(d["started_unix_ms"].as_u64().unwrap_or(0)),
                    format!("seq {}", d["point"]["sequence"]),
                    d["result"].as_str().unwrap_or_default().to_string(),
                    d["note"].as_str().unwrap_or_default().to_string(),
                ]
            })
            .collect();
        table(
            &["STARTED (UTC)", "POINT", "RESULT", "NOTE"].map(String::from),
            &rows,
        );
    }
}

pub fn events(value: &serde_json::Value) {
    let events = value.as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        println!("no events since the daemon started");
    }
    for event in events {
        println!(
            "{}  {}",
            drgw_replica::format_utc(event["unix_ms"].as_u64().unwrap_or(0)),
            event
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(80 << 30), "80.0 GiB");
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(303), "5m03s");
        assert_eq!(duration(7260), "2h01m");
        assert_eq!(duration(90000), "1d01h");
    }
}
