//! Reprotect: after a failover committed at the target, the group
//! replicates back to the original site, which sends only what differs.
//! Driven as an operator would, with qemu-io and nbdcopy.

mod common;

use common::clients::{export_sha, json, nbdcopy, qemu_io, uri_of};
use common::pair::{Pair, TwoDiskTap};
use common::{pseudo_random, sha256_hex, Daemon};
use std::fs;
use std::process::Command;
use std::time::Duration;

const SIZE: u64 = 32 << 20;
const MIB: u64 = 1 << 20;

fn bookmark(gateway: &Daemon, name: &str) -> u64 {
    json(&gateway.cli_ok(&["bookmark", "group-1", "--name", name, "--json"]))["sequence"]
        .as_u64()
        .unwrap()
}

/// Waits until `gateway` (the original site, now a target) has applied
/// `sequence` of the group replicated back to it.
fn wait_applied_back(gateway: &Daemon, sequence: u64) {
    gateway.wait_for(
        "the original site to apply",
        Duration::from_secs(90),
        |status| {
            status["target_groups"]
                .as_array()
                .and_then(|groups| groups.iter().find(|g| g["name"] == "group-1"))
                .and_then(|group| group["applied_through"].as_u64())
                .is_some_and(|applied| applied >= sequence)
        },
    );
}

#[test]
fn reprotect_sends_back_only_what_differs_and_replicates_on() {
    let pair = Pair::start("");
    let (a, b) = (&pair.source, &pair.target);
    let mut tap = TwoDiskTap::start(a, SIZE);
    let scratch = tempfile::tempdir().unwrap();
    // Protect and write: both disks full of data.
    for (disk, seed) in [("disk-a", 1), ("disk-b", 2)] {
        let data = scratch.path().join(format!("{disk}.data"));
        fs::write(&data, pseudo_random(seed, SIZE as usize)).unwrap();
        nbdcopy(data.to_str().unwrap(), &tap.uri(disk));
    }
    let before = bookmark(a, "before");
    pair.wait_applied(before, Duration::from_secs(60));

    // Fail over at B; the original site writes on (1 MiB, never shipped:
    // B refuses it), B writes through its failover disks, commits, writes.
    let failed = json(&b.cli_ok(&[
        "failover",
        "group-1",
        "--point",
        "bookmark:before",
        "--json",
    ]));
    qemu_io(&tap.uri("disk-a"), "write -P 0x61 4M 1M");
    bookmark(a, "local");
    let (b_a, b_b) = (
        uri_of(&failed["exports"], "disk-a"),
        uri_of(&failed["exports"], "disk-b"),
    );
    qemu_io(&b_a, "write -P 0x62 8M 2M");
    qemu_io(&b_b, "write -P 0x63 0 512k");
    b.cli_ok(&["commit", "group-1"]);
    qemu_io(&b_b, "write -P 0x64 16M 1M");

    // Reprotect at the original site: refused while the tap serves the
    // disks, then without --discard-local (it would lose 1 MiB), then done.
    let replicas: Vec<String> = ["disk-a", "disk-b"]
        .iter()
        .map(|d| {
            format!(
                "{d}={}",
                tap.directory.path().join(format!("{d}.img")).display()
            )
        })
        .collect();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["reprotect".to_string(), "group-1".to_string()];
        for replica in &replicas {
            args.push("--disk".into());
            args.push(replica.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |extra: &[&str]| {
        let args = args(extra);
        a.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let refused = run(&[]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(why.contains("tap still serves"), "{why}");
    tap.stop();
    a.wait_for("the tap to detach", Duration::from_secs(20), |status| {
        status["protected_disks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["attached"] == false)
    });
    let refused = run(&[]);
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success());
    assert!(
        why.contains("1048576 bytes") && why.contains("--discard-local"),
        "{why}"
    );
    let done = run(&["--discard-local", "--json"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let outcome = json(&String::from_utf8_lossy(&done.stdout));
    // B's change maps: 2 MiB + 512 KiB written at failover, 1 MiB since the
    // commit, plus the original site's unshipped 1 MiB.
    assert_eq!(
        outcome["delta_bytes"].as_u64().unwrap(),
        4 * MIB + MIB / 2,
        "{outcome:#}"
    );
    assert_eq!(outcome["discarded_bytes"].as_u64().unwrap(), MIB);
    // The original site no longer takes its tap's writes for the group.
    let status = a.status();
    assert!(
        status["protected_disks"].as_array().unwrap().is_empty(),
        "{status:#}"
    );
    assert_eq!(status["reversed"][0]["group"], "group-1", "{status:#}");

    // Replication runs back: B writes on; a bookmark at B reaches A.
    qemu_io(&b_a, "write -P 0x65 20M 1M");
    let after = bookmark(b, "after");
    wait_applied_back(a, after);
    for (disk, uri) in [("disk-a", &b_a), ("disk-b", &b_b)] {
        let primary = tap.directory.path().join(format!("{disk}.img"));
        assert_eq!(
            sha256_hex(&fs::read(&primary).unwrap()),
            export_sha(uri, scratch.path()),
            "{disk}: the original disk differs from the failed-over one"
        );
    }
    // What B shipped is within 2x of what changed (4.5 MiB + 1 MiB).
    let shipped: u64 = b.status()["shipping"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["group"] == "group-1")
        .map(|s| s["raw_bytes_sent"].as_u64().unwrap())
        .sum();
    let changed = 5 * MIB + MIB / 2;
    assert!(
        shipped >= changed && shipped <= 2 * changed,
        "shipped {shipped} for {changed} changed"
    );
    // Points at the original site: the bookmark taken at B is there.
    let points = json(&a.cli_ok(&["points", "group-1", "--json"]));
    assert!(
        points["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["bookmark"] == "after"),
        "{points:#}"
    );

    // Failback: B's last writes come home, then the original direction
    // again, continuing the sequence B's replicas hold.
    qemu_io(&b_b, "write -P 0x66 24M 1M");
    let back = json(&a.cli_ok(&["failback", "group-1", "--json"]));
    assert!(
        back["resumes_at"].as_u64().unwrap() > back["final_sequence"].as_u64().unwrap() / 2,
        "{back:#}"
    );
    let b_status = b.status();
    let replicas: Vec<(String, String)> = b_status["target_groups"][0]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        b_status["recovery"]["groups"][0]["state"], "protected",
        "{b_status:#}"
    );
    assert!(
        b_status["protected_disks"].as_array().unwrap().is_empty(),
        "{b_status:#}"
    );
    for (disk, replica) in &replicas {
        let primary = tap.directory.path().join(format!("{disk}.img"));
        assert_eq!(
            sha256_hex(&fs::read(&primary).unwrap()),
            sha256_hex(&fs::read(replica).unwrap()),
            "{disk}: after failback the original disk and B's replica differ"
        );
    }
    // The failed-over disks are no longer served at B.
    let gone = Command::new("nbdinfo").arg(&b_a).output().unwrap();
    assert!(!gone.status.success(), "{b_a} is still served");
    // The tap at the original site writes again, replicated to B.
    tap.restart(a);
    qemu_io(&tap.uri("disk-a"), "write -P 0x67 28M 1M");
    let home = bookmark(a, "home");
    pair.wait_applied(home, Duration::from_secs(60));
    for (disk, replica) in &replicas {
        let primary = tap.directory.path().join(format!("{disk}.img"));
        assert_eq!(
            sha256_hex(&fs::read(&primary).unwrap()),
            sha256_hex(&fs::read(replica).unwrap()),
            "{disk}: B's replica does not follow the original disk again"
        );
    }
    assert!(a.status()["target_groups"].as_array().unwrap().is_empty());
}

#[test]
fn a_gateway_killed_during_the_delta_resumes_it() {
    let mut pair = Pair::start("");
    let mut tap = TwoDiskTap::start(&pair.source, SIZE);
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("a.data");
    fs::write(&data, pseudo_random(3, SIZE as usize)).unwrap();
    nbdcopy(data.to_str().unwrap(), &tap.uri("disk-a"));
    let before = bookmark(&pair.source, "before");
    pair.wait_applied(before, Duration::from_secs(60));
    pair.target
        .cli_ok(&["failover", "group-1", "--point", "latest"]);
    pair.target.cli_ok(&["commit", "group-1"]);
    // B's delta goes out slowly (one 1 MiB piece every 300 ms).
    // The link to the peer named "target" (the tap is a peer too).
    let target_link = |status: &serde_json::Value| {
        let peers = status["peers"].as_array().cloned().unwrap_or_default();
        let link = peers
            .iter()
            .find(|p| p["name"] == "target")
            .map(|p| p["link"].clone())
            .unwrap_or_default();
        let up = link["state"] == "connected";
        (up, link["since_unix_s"].as_u64().unwrap_or(0))
    };
    let (_, old_link) = target_link(&pair.source.status());
    pair.target.terminate();
    pair.target.set_env("DRGW_TEST_DELTA_PIECE_DELAY_MS", "300");
    pair.target.spawn();
    // A new link, not the old one the source has not yet seen go down.
    pair.source
        .wait_for("the link again", Duration::from_secs(30), |status| {
            let (up, since) = target_link(status);
            up && since > old_link
        });
    let b_a = format!("nbd://127.0.0.1:{}/group-1-disk-a", pair.target.nbd_port);
    qemu_io(&b_a, "write -P 0x71 0 12M");
    tap.stop();
    pair.source
        .wait_for("the tap to detach", Duration::from_secs(20), |s| {
            s["protected_disks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["attached"] == false)
        });
    let mut args = vec!["reprotect".to_string(), "group-1".to_string()];
    for disk in ["disk-a", "disk-b"] {
        args.push("--disk".into());
        args.push(format!(
            "{disk}={}",
            tap.directory.path().join(format!("{disk}.img")).display()
        ));
    }
    pair.source
        .cli_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Kill -9 the failed-over site halfway through its delta: it resumes.
    pair.target
        .wait_for("the delta to start", Duration::from_secs(30), |s| {
            s["reprotects"][0]["sent_bytes"].as_u64().unwrap_or(0) >= 2 * MIB
        });
    pair.target.kill9();
    pair.target.spawn();
    // Then the original site (now the target), while the delta goes on.
    pair.target
        .wait_for("the delta to resume", Duration::from_secs(30), |s| {
            s["reprotects"][0]["sent_bytes"].as_u64().unwrap_or(0) >= MIB
        });
    pair.source.kill9();
    pair.source.spawn();
    pair.target
        .wait_for("the delta to finish", Duration::from_secs(60), |s| {
            s["reprotects"][0]["passes"].as_u64().unwrap_or(0) >= 1
        });
    let after = bookmark(&pair.target, "after");
    wait_applied_back(&pair.source, after);
    let primary = tap.directory.path().join("disk-a.img");
    assert_eq!(
        sha256_hex(&fs::read(&primary).unwrap()),
        export_sha(&b_a, scratch.path()),
        "the original disk differs from the failed-over one after the kills"
    );
    let mut expected = pseudo_random(3, SIZE as usize);
    expected[..12 << 20].fill(0x71);
    assert_eq!(
        sha256_hex(&fs::read(&primary).unwrap()),
        sha256_hex(&expected)
    );
}
