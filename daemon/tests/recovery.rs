//! Recovery at the target, as an operator drives it with real NBD clients
//! (nbdinfo, nbdcopy, qemu-io): point-in-time exports, a test failover that
//! changes nothing on the replicas or the journal while replication goes on,
//! and failover → cancel → failover → kill -9 → commit.

mod common;

use common::clients::{export_sha, json, qemu_io, uri_of};
use common::pair::{Pair, TwoDiskTap};
use common::{sha256_hex, BINARY};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WORKLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workloads/pit.py");
const SIZE: u64 = 32 << 20;

/// Runs `rounds` rounds of pit.py from `start`; returns one reference per round.
fn rounds(pair: &Pair, tap: &TwoDiskTap, start: u32, count: u32) -> Vec<serde_json::Value> {
    let output = Command::new("/usr/bin/python3")
        .arg(WORKLOAD)
        .args([
            "rounds",
            "--uri-a",
            &tap.uri("disk-a"),
            "--uri-b",
            &tap.uri("disk-b"),
        ])
        .args(["--size", &SIZE.to_string(), "--rounds", &count.to_string()])
        .args(["--round-bytes", &(4u64 << 20).to_string(), "--drgw", BINARY])
        .args([
            "--socket",
            pair.source.socket.to_str().unwrap(),
            "--group",
            "group-1",
        ])
        .args(["--start-round", &start.to_string()])
        .output()
        .expect("python3 with libnbd (scripts/install-deps)");
    assert!(
        output.status.success(),
        "pit.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let references: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let last = references.last().unwrap()["sequence"].as_u64().unwrap();
    pair.wait_applied(last, Duration::from_secs(60));
    references
}

fn group_directory(pair: &Pair) -> PathBuf {
    let groups = pair.target.directory.path().join("retention/groups");
    fs::read_dir(&groups)
        .unwrap()
        .next()
        .expect("one target group")
        .unwrap()
        .path()
}

/// sha256 of the replicas and every journal file (redo and undo).
fn replicas_and_journal(directory: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for sub in ["", "redo", "undo"] {
        let mut entries: Vec<PathBuf> = fs::read_dir(directory.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.is_file() && (!sub.is_empty() || p.extension().is_some_and(|e| e == "img"))
            })
            .collect();
        entries.sort();
        for path in entries {
            files.push((
                path.display().to_string(),
                sha256_hex(&fs::read(&path).unwrap()),
            ));
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    files
}

#[test]
fn exports_and_a_test_failover_leave_replicas_and_journal_untouched() {
    let pair = Pair::start("");
    let tap = TwoDiskTap::start(&pair.source, SIZE);
    let references = rounds(&pair, &tap, 0, 3);
    let scratch = tempfile::tempdir().unwrap();

    // Bad requests are refused with the reason, and change nothing.
    for (args, needle) in [
        (&["export", "nosuch", "--point", "latest"][..], "no group"),
        (
            &["export", "group-1", "--point", "bookmark:nope"][..],
            "nope",
        ),
        (
            &["export", "group-1", "--point", "latest", "--disk", "disk-z"][..],
            "disk-z",
        ),
        (&["commit", "group-1"][..], "not failed over"),
        (
            &["test-failover", "group-1", "--cleanup"][..],
            "no test failover",
        ),
        (&["failover", "group-1", "--cancel"][..], "not failed over"),
        (&["unexport", "nosuch"][..], "no export"),
    ] {
        let output = pair.target.cli(args);
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text}");
    }
    let usage = pair.target.cli(&["test-failover", "group-1"]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "a point or --cleanup is required"
    );

    // A read-only export of each bookmark serves exactly what the disks held.
    for reference in &references {
        let point = format!("bookmark:{}", reference["bookmark"].as_str().unwrap());
        let exports = json(
            &pair
                .target
                .cli_ok(&["export", "group-1", "--point", &point, "--json"]),
        );
        assert_eq!(exports.as_array().unwrap().len(), 2, "{exports:#}");
        for (disk, key) in [("disk-a", "sha256_a"), ("disk-b", "sha256_b")] {
            let uri = uri_of(&exports, disk);
            assert_eq!(
                export_sha(&uri, scratch.path()),
                reference[key].as_str().unwrap(),
                "{disk} at {point}"
            );
        }
        let info = Command::new("nbdinfo")
            .args(["--json", &uri_of(&exports, "disk-a")])
            .output()
            .unwrap();
        let info = json(&String::from_utf8_lossy(&info.stdout));
        assert_eq!(info["exports"][0]["export-size"], SIZE);
        assert_eq!(info["exports"][0]["is_read_only"], true, "{info:#}");
    }
    let listed = json(&pair.target.cli_ok(&["exports", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 6);
    // A read-only export refuses writes.
    let first = uri_of(&listed, "disk-a");
    let refused = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &first])
        .output()
        .unwrap();
    assert!(
        !refused.status.success() || String::from_utf8_lossy(&refused.stdout).contains("failed")
    );

    // A writable export takes writes into a scratch overlay.
    let rw = json(&pair.target.cli_ok(&[
        "export",
        "group-1",
        "--point",
        "bookmark:round-0",
        "--disk",
        "disk-a",
        "--writable",
        "--json",
    ]));
    let rw_uri = uri_of(&rw, "disk-a");
    qemu_io(&rw_uri, "write -P 0x5a 1000 70000");
    qemu_io(&rw_uri, "read -P 0x5a 1000 70000");
    let name = rw[0]["name"].as_str().unwrap();
    assert!(pair.target.cli(&["unexport", "nonexistent"]).status.code() == Some(1));
    pair.target.cli_ok(&["unexport", name]);
    assert!(Command::new("nbdinfo")
        .arg(&rw_uri)
        .output()
        .map(|o| !o.status.success())
        .unwrap());

    // Test failover at round-1: writes to its disks change nothing on the
    // replicas or in the journal.
    // The source is stopped while the files are compared (it stages a
    // crash-consistent point every 200 ms, which the target journals), and
    // started again below to show replication going on during the drill.
    let directory = group_directory(&pair);
    let mut pair = pair;
    pair.source.terminate();
    std::thread::sleep(Duration::from_millis(1500));
    let before = replicas_and_journal(&directory);
    let drill = json(&pair.target.cli_ok(&[
        "test-failover",
        "group-1",
        "--point",
        "bookmark:round-1",
        "--json",
    ]));
    assert_eq!(drill["state"], "test-failover");
    let test_a = uri_of(&drill["exports"], "disk-a");
    assert_eq!(
        export_sha(&test_a, scratch.path()),
        references[1]["sha256_a"].as_str().unwrap()
    );
    qemu_io(&test_a, "write -P 0x11 0 8M");
    qemu_io(&uri_of(&drill["exports"], "disk-b"), "write -z 4096 1M");
    qemu_io(&test_a, "read -P 0x11 0 8M");
    assert_eq!(
        replicas_and_journal(&directory),
        before,
        "the drill wrote to the replicas or the journal"
    );
    // A failover while the drill runs is refused, with the way out.
    let refused = pair
        .target
        .cli(&["failover", "group-1", "--point", "latest"]);
    let text = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(
        text.contains("test-failover") && text.contains("--cleanup"),
        "{text}"
    );

    // Replication goes on during the drill, and the drill's disks stay at their point.
    pair.source.spawn();
    // Both peers of the source: the tap (bookmarks go through it) and the target.
    pair.source.wait_for(
        "the links to the tap and the target",
        Duration::from_secs(20),
        |status| {
            status["peers"].as_array().is_some_and(|peers| {
                peers.len() == 2 && peers.iter().all(|p| p["link"]["state"] == "connected")
            })
        },
    );
    let more = rounds(&pair, &tap, 3, 1);
    let status = pair.target_group();
    assert!(
        status["rpo_s"].as_f64().unwrap() < status["rpo_threshold_s"].as_f64().unwrap(),
        "{status:#}"
    );
    qemu_io(&test_a, "read -P 0x11 0 8M");
    pair.target.cli_ok(&[
        "test-failover",
        "group-1",
        "--cleanup",
        "--result",
        "passed",
        "--note",
        "app started",
    ]);
    assert!(!directory.join("test-failover").exists());
    let history = json(&pair.target.cli_ok(&["recovery", "group-1", "--json"]));
    assert_eq!(history["state"]["state"], "protected");
    let drills = history["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 1, "{history:#}");
    assert_eq!(drills[0]["result"], "passed");
    assert_eq!(drills[0]["point"]["bookmark"], "round-1");
    assert!(drills[0]["written_bytes"].as_u64().unwrap() >= 8 << 20);
    let out = scratch.path().join("latest-a.img");
    pair.materialize("latest", "disk-a", &out);
    assert_eq!(
        sha256_hex(&fs::read(&out).unwrap()),
        more[0]["sha256_a"].as_str().unwrap()
    );
}

#[test]
fn failover_cancel_and_commit_survive_a_kill() {
    let mut pair = Pair::start("");
    let tap = TwoDiskTap::start(&pair.source, SIZE);
    let references = rounds(&pair, &tap, 0, 2);
    let scratch = tempfile::tempdir().unwrap();

    // Fail over to round-0: the disks serve what they held then, writable.
    let failed = json(&pair.target.cli_ok(&[
        "failover",
        "group-1",
        "--point",
        "bookmark:round-0",
        "--json",
    ]));
    assert_eq!(failed["state"], "failed-over", "{failed:#}");
    let a = uri_of(&failed["exports"], "disk-a");
    assert!(a.ends_with("/group-1-disk-a"), "{a}");
    assert_eq!(
        export_sha(&a, scratch.path()),
        references[0]["sha256_a"].as_str().unwrap()
    );
    qemu_io(&a, "write -P 0x77 0 1M");
    // The source's new writes are refused while failed over: it says why.
    let tap_writes = tap.uri("disk-a");
    qemu_io(&tap_writes, "write -P 0x33 2M 1M");
    pair.source.wait_for(
        "the source to see the refusal",
        Duration::from_secs(30),
        |s| {
            s["shipping"][0]["problem"]
                .as_str()
                .is_some_and(|p| p.contains("refused"))
        },
    );
    let twice = pair
        .target
        .cli(&["failover", "group-1", "--point", "latest"]);
    assert!(String::from_utf8_lossy(&twice.stderr).contains("--cancel"));

    // Cancel: the writes are thrown away, replication resumes and catches up.
    pair.target.cli_ok(&["failover", "group-1", "--cancel"]);
    let after = rounds(&pair, &tap, 2, 1);
    let out = scratch.path().join("latest-a.img");
    pair.materialize("latest", "disk-a", &out);
    assert_eq!(
        sha256_hex(&fs::read(&out).unwrap()),
        after[0]["sha256_a"].as_str().unwrap()
    );

    // Fail over to latest, write, kill -9 the target: the flushed writes are there after restart.
    let failed = json(
        &pair
            .target
            .cli_ok(&["failover", "group-1", "--point", "latest", "--json"]),
    );
    let a = uri_of(&failed["exports"], "disk-a");
    qemu_io(&a, "write -P 0x42 4M 3M");
    qemu_io(&a, "flush");
    pair.target.kill9();
    pair.target.spawn();
    let status = pair.target.status();
    assert_eq!(
        status["recovery"]["groups"][0]["state"], "failed-over",
        "{status:#}"
    );
    qemu_io(&a, "read -P 0x42 4M 3M");
    let mut expected = fs::read(&out).unwrap();
    expected[4 << 20..7 << 20].fill(0x42);
    assert_eq!(export_sha(&a, scratch.path()), sha256_hex(&expected));

    // Commit: the replica becomes the disk (latest + the writes), the journal is released.
    let committed = json(&pair.target.cli_ok(&["commit", "group-1", "--json"]));
    assert_eq!(committed["state"], "committed", "{committed:#}");
    let disk_a = status["target_groups"][0]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "disk-a")
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let replica = PathBuf::from(disk_a);
    assert_eq!(
        sha256_hex(&fs::read(&replica).unwrap()),
        sha256_hex(&expected),
        "{}",
        replica.display()
    );
    assert_eq!(export_sha(&a, scratch.path()), sha256_hex(&expected));
    // The change map (what reprotect sends back): the failover's 3 MiB
    // (nothing was rolled back: the point was the latest), then every
    // write since the commit.
    assert_eq!(changed_bytes(&pair, "disk-a"), 3 << 20);
    assert_eq!(changed_bytes(&pair, "disk-b"), 0);
    qemu_io(&a, "write -P 0x43 0 4k");
    qemu_io(&a, "read -P 0x43 0 4k");
    assert_eq!(changed_bytes(&pair, "disk-a"), (3 << 20) + 4096);
    let points = json(&pair.target.cli_ok(&["points", "group-1", "--json"]));
    assert!(
        points["points"].as_array().unwrap().is_empty(),
        "{points:#}"
    );
    let cancel = pair.target.cli(&["failover", "group-1", "--cancel"]);
    assert!(String::from_utf8_lossy(&cancel.stderr).contains("committed"));
    // Committed survives a restart: the export serves the replica.
    pair.target.kill9();
    pair.target.spawn();
    qemu_io(&a, "read -P 0x43 0 4k");
    qemu_io(&a, "read -P 0x42 4M 3M");
    assert_eq!(changed_bytes(&pair, "disk-a"), (3 << 20) + 4096);
}

/// A committed disk's changed bytes, from `drgw status --json`.
fn changed_bytes(pair: &Pair, disk: &str) -> u64 {
    let status = pair.target.status();
    status["recovery"]["exports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["disk"] == disk)
        .unwrap_or_else(|| panic!("no export of {disk}: {status:#}"))["changed_bytes"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_taken_recovery_port_is_reported_and_replication_goes_on() {
    let mut daemon = common::Daemon::start("target");
    daemon.terminate();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", daemon.nbd_port)).unwrap();
    daemon.spawn();
    let status = daemon.status();
    let problem = status["recovery"]["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("cannot listen"), "{status:#}");
    let output = daemon.cli(&["export", "group-1", "--point", "latest"]);
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text.contains("recovery exports cannot be served") && text.contains("[recovery]"),
        "{text}"
    );
}

/// The change map of a committed disk (docs/formats/dirty-map.md, 4 KiB
/// grains): the set bits.
fn change_map_bits(path: &Path, blocks: usize) -> Vec<bool> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"DRGWDMAP");
    assert_eq!(u64::from_le_bytes(bytes[12..20].try_into().unwrap()), 4096);
    let bitmap: Vec<u8> = bytes[4096..]
        .chunks(4096)
        .flat_map(|page| page[..4092].to_vec())
        .collect();
    (0..blocks)
        .map(|block| bitmap[block / 8] & (1 << (block % 8)) != 0)
        .collect()
}

#[test]
fn the_change_map_covers_every_block_where_replica_and_primary_differ() {
    // Fail over to an older point while the source keeps writing, write at
    // the failed-over site, commit, write again: every 4 KiB block where the
    // replica now differs from the original primary must be in the change
    // map (reprotect sends exactly the map), and the map must not be much
    // larger than what was written after the point.
    let pair = Pair::start("");
    let tap = TwoDiskTap::start(&pair.source, SIZE);
    let references = rounds(&pair, &tap, 0, 3);
    let failed = json(&pair.target.cli_ok(&[
        "failover",
        "group-1",
        "--point",
        "bookmark:round-0",
        "--json",
    ]));
    let a = uri_of(&failed["exports"], "disk-a");
    qemu_io(&a, "write -P 0x51 1M 256k");
    // The source writes on after the failover: never received here.
    qemu_io(&tap.uri("disk-a"), "write -P 0x52 8M 512k");
    pair.target.cli_ok(&["commit", "group-1"]);
    qemu_io(&a, "write -P 0x53 20M 128k");
    qemu_io(&a, "flush");

    let directory = group_directory(&pair);
    let status = pair.target.status();
    let disks = status["target_groups"][0]["disks"]
        .as_array()
        .unwrap()
        .clone();
    let blocks = (SIZE / 4096) as usize;
    for disk in &disks {
        let name = disk["name"].as_str().unwrap();
        let replica = fs::read(disk["path"].as_str().unwrap()).unwrap();
        let primary = fs::read(tap.directory.path().join(format!("{name}.img"))).unwrap();
        let map = directory.join(format!("changed/disk-{}.map", disk["id"]));
        let bits = change_map_bits(&map, blocks);
        let mut differing = 0;
        for (block, marked) in bits.iter().enumerate() {
            let range = block * 4096..(block + 1) * 4096;
            // What the source wrote after the failover never came here: the
            // original site knows it from its own staging (not this map).
            let source_after = name == "disk-a" && (2048..2176).contains(&block);
            if replica[range.clone()] != primary[range] && !source_after {
                differing += 1;
                assert!(
                    *marked,
                    "{name}: block {block} differs but is not in the change map"
                );
            }
        }
        let marked = bits.iter().filter(|b| **b).count();
        // Rounds 1 and 2 wrote at most 8 MiB per disk after the point; the
        // map holds what they wrote (rolled back) plus the writes here.
        let written_after = 2 * (4 << 20) / 4096 + 3 * 64 + 256;
        assert!(
            marked <= written_after,
            "{name}: {marked} blocks marked, {differing} differ"
        );
        assert!(
            differing > 0,
            "{name}: nothing differs: the test proves nothing"
        );
    }
    assert!(references.len() == 3);
}
