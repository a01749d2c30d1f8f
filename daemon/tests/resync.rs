//! Resync by block checksums (`drgw resync`): blocks of the primary changed
//! behind the tap's back (writes the tap never saw) are found by comparing
//! sums with the target's replica and sent again, and only those; points
//! taken during the resync are refused; a resync killed on either gateway
//! resumes and the replica ends equal to the primary.

mod common;

use common::pair::Pair;
use common::{pseudo_random, sha256_hex, Tap};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const SIZE: u64 = 64 << 20;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Fills the disk with pseudo-random data through the tap (nbdcopy).
fn fill(tap: &Tap, seed: u64) {
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("fill.img");
    fs::write(&image, pseudo_random(seed, SIZE as usize)).unwrap();
    let status = Command::new("nbdcopy")
        .arg(&image)
        .arg(tap.uri())
        .status()
        .expect("nbdcopy (libnbd-bin, scripts/install-deps)");
    assert!(status.success());
}

/// Waits until the tap has everything staged, then until the target
/// applied all the source staged.
fn settle(pair: &Pair, tap: &Tap) {
    tap.wait_settled(Duration::from_secs(60));
    let staged = pair.source.status()["groups"][0]["sequence_last_durable"]
        .as_u64()
        .unwrap();
    pair.wait_applied(staged, Duration::from_secs(120));
}

fn replica(pair: &Pair) -> PathBuf {
    PathBuf::from(
        pair.target_group()["disks"][0]["path"]
            .as_str()
            .expect("the replica's path"),
    )
}

fn sha_of(path: &PathBuf) -> String {
    sha256_hex(&fs::read(path).unwrap())
}

/// Writes `count` random 4 KiB blocks straight to the primary while the tap
/// is down: writes it never forwarded. Returns their offsets.
fn diverge(tap: &mut Tap, seed: u64, count: usize) -> BTreeSet<u64> {
    tap.kill();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&tap.primary)
        .unwrap();
    let mut offsets = BTreeSet::new();
    let mut state = seed;
    while offsets.len() < count {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let block = (state >> 33) % (SIZE / 4096);
        if offsets.insert(block * 4096) {
            file.write_all_at(&pseudo_random(state, 4096), block * 4096)
                .unwrap();
        }
    }
    file.sync_all().unwrap();
    tap.spawn();
    offsets
}

fn wait_attached(pair: &Pair) {
    pair.source
        .wait_for("the tap to attach", Duration::from_secs(30), |status| {
            status["protected_disks"][0]["attached"] == true
        });
}

/// `drgw resync --status` until it is no longer running.
fn wait_done(pair: &Pair, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let output = pair
            .source
            .cli(&["resync", "group-1", "--status", "--json"]);
        if output.status.success() {
            let view = json(&String::from_utf8_lossy(&output.stdout));
            if view["phase"] != "running" {
                return view;
            }
        }
        assert!(
            Instant::now() < deadline,
            "resync not done in {limit:?}:\n{}",
            pair.source.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn resync_sends_only_the_blocks_that_differ_and_marks_its_points() {
    let pair = Pair::start("");
    let mut tap = Tap::start(&pair.source, "disk-1", SIZE, "async");
    fill(&tap, 7);
    settle(&pair, &tap);
    assert_eq!(sha_of(&tap.primary), sha_of(&replica(&pair)));

    let changed = diverge(&mut tap, 11, 40);
    wait_attached(&pair);
    let expected = sha_of(&tap.primary);
    assert_ne!(expected, sha_of(&replica(&pair)), "the primary diverged");

    let done = json(&pair.source.cli_ok(&["resync", "group-1", "--json"]));
    assert_eq!(done["phase"], "done", "{done:#}");
    assert_eq!(done["compared_bytes"], SIZE, "{done:#}");
    assert_eq!(
        done["differing_bytes"].as_u64().unwrap(),
        changed.len() as u64 * 4096,
        "exactly the changed 4 KiB blocks are sent: {done:#}"
    );
    let start = done["start_sequence"].as_u64().unwrap();
    settle(&pair, &tap);
    assert_eq!(sha_of(&replica(&pair)), expected, "the replica converged");

    // The target knows where the resync began and ended.
    let points = json(&pair.target.cli_ok(&["points", "group-1", "--json"]));
    // The group-wide markers of `drgw resync` (the tap adds its own per disk).
    let markers: Vec<&serde_json::Value> = points["resyncs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["owner"] == u64::from(u32::MAX))
        .collect();
    assert_eq!(markers.len(), 2, "{points:#}");
    assert_eq!(markers[0]["sequence"], start);
    assert_eq!(markers[0]["done"], false);
    assert_eq!(markers[1]["done"], true);
    let end = markers[1]["sequence"].as_u64().unwrap();
    assert!(end > start + 1, "the resent blocks lie between the markers");
    // A cut inside the resync is refused, with the way out.
    let during = pair.target.cli(&[
        "export",
        "group-1",
        "--point",
        &format!("seq:{}", start + 1),
    ]);
    assert!(!during.status.success());
    let reason = String::from_utf8_lossy(&during.stderr);
    assert!(
        reason.contains("not crash-consistent") && reason.contains("resync"),
        "{reason}"
    );
    let text = pair.target.cli_ok(&["points", "group-1"]);
    if text.contains(&format!(" {} ", start + 1)) {
        assert!(text.contains("NOT consistent"), "{text}");
    }
    // After the end, points are whole again: latest is the primary.
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("latest.img");
    let result = pair.materialize(&format!("seq:{end}"), "disk-1", &out);
    assert_eq!(result["point"]["sequence"], end);
    assert_eq!(sha_of(&out), expected, "the point at the end marker");

    // Nothing differs any more: a second resync sends nothing.
    let again = json(&pair.source.cli_ok(&["resync", "group-1", "--json"]));
    assert_eq!(again["differing_bytes"], 0, "{again:#}");
    let events = json(&pair.source.cli_ok(&["events", "--json"]));
    let ended = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "resync" && e["outcome"] == "done")
        .count();
    assert_eq!(ended, 2, "{events:#}");
    let stats = tap.status();
    assert!(stats["resync_requests"].as_u64().unwrap() >= 1, "{stats:#}");
}

#[test]
fn a_resync_resumes_after_either_gateway_is_killed() {
    let mut pair = Pair::start("");
    let mut tap = Tap::start(&pair.source, "disk-1", SIZE, "async");
    fill(&tap, 21);
    settle(&pair, &tap);
    let changed = diverge(&mut tap, 23, 300);
    let expected = sha_of(&tap.primary);
    // Slow each 8 MiB chunk down so the kills land halfway.
    pair.source
        .set_env("DRGW_TEST_RESYNC_CHUNK_DELAY_MS", "400");
    pair.source.terminate();
    pair.source.spawn();
    wait_attached(&pair);

    let started = json(&pair.source.cli_ok(&[
        "resync",
        "group-1",
        "--grain",
        "4K",
        "--fine",
        "4K",
        "--no-wait",
        "--json",
    ]));
    assert_eq!(started["phase"], "running");
    let text = pair.source.cli_ok(&["status"]);
    assert!(
        text.contains("RESYNCS") && text.contains("group-1"),
        "{text}"
    );
    let twice = pair.source.cli(&["resync", "group-1"]);
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already running"));

    let compared = |pair: &Pair| {
        pair.source.status()["resyncs"][0]["compared_bytes"]
            .as_u64()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while compared(&pair) < 16 << 20 {
        assert!(Instant::now() < deadline, "{}", pair.source.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    pair.source.kill9();
    pair.source.spawn();
    // And the target, before the resumed resync can compare again: it
    // needs the target's sums for every chunk left.
    pair.target.kill9();
    // Resumed from the catalog where it stood, not from zero.
    let resumed = json(
        &pair
            .source
            .cli_ok(&["resync", "group-1", "--status", "--json"]),
    );
    assert_eq!(resumed["phase"], "running", "{resumed:#}");
    assert_eq!(resumed["resumes"], 1);
    assert!(
        resumed["compared_bytes"].as_u64().unwrap() >= 16 << 20,
        "{resumed:#}"
    );
    assert!(
        resumed["compared_bytes"].as_u64().unwrap() < SIZE,
        "{resumed:#}"
    );
    // The resync waits for the target, and says so.
    pair.source
        .wait_for("the resync to wait", Duration::from_secs(20), |status| {
            status["resyncs"][0]["waiting"].as_str().is_some()
        });
    std::thread::sleep(Duration::from_secs(1));
    pair.target.spawn();
    wait_attached(&pair);

    let done = wait_done(&pair, Duration::from_secs(120));
    assert_eq!(done["phase"], "done", "{done:#}");
    assert_eq!(done["compared_bytes"], SIZE);
    let differing = done["differing_bytes"].as_u64().unwrap();
    let minimum = changed.len() as u64 * 4096;
    assert!(
        differing >= minimum && differing <= 2 * minimum,
        "{differing} bytes sent for {minimum} changed: {done:#}"
    );
    settle(&pair, &tap);
    assert_eq!(sha_of(&replica(&pair)), expected, "the replica converged");
}

#[test]
fn resync_refusals_say_why() {
    let pair = Pair::start("");
    let _tap = Tap::start(&pair.source, "disk-1", SIZE, "async");
    let refused = |daemon: &common::Daemon, args: &[&str], needle: &str| {
        let output = daemon.cli(args);
        assert!(!output.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(text.contains(needle), "{args:?}: {text}");
    };
    refused(&pair.source, &["resync", "nope"], "no protected group nope");
    refused(&pair.target, &["resync", "group-1"], "source appliance");
    refused(
        &pair.source,
        &["resync", "group-1", "--disk", "disk-9"],
        "has no disk disk-9",
    );
    refused(
        &pair.source,
        &["resync", "group-1", "--grain", "3K"],
        "powers of two",
    );
    refused(
        &pair.source,
        &["resync", "group-1", "--grain", "4K", "--fine", "64K"],
        "fine grain",
    );
    refused(
        &pair.source,
        &["resync", "group-1", "--cancel"],
        "no resync of group-1 is running",
    );
    refused(
        &pair.source,
        &["resync", "group-1", "--status"],
        "no resync of group-1 on record",
    );
    refused(
        &pair.source,
        &["resync", "group-1", "--at", "25:00"],
        "HH:MM",
    );
    // Scheduled for later: it waits, and can be cancelled before it starts.
    let later = (chrono::Local::now() + chrono::Duration::hours(2))
        .format("%H:%M")
        .to_string();
    let scheduled =
        json(
            &pair
                .source
                .cli_ok(&["resync", "group-1", "--at", &later, "--no-wait", "--json"]),
        );
    assert_eq!(scheduled["phase"], "running");
    let waiting = json(
        &pair
            .source
            .cli_ok(&["resync", "group-1", "--status", "--json"]),
    );
    assert!(
        waiting["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("scheduled")),
        "{waiting:#}"
    );
    assert_eq!(waiting["start_sequence"], serde_json::Value::Null);
    pair.source.cli_ok(&["resync", "group-1", "--cancel"]);
    let cancelled = wait_done(&pair, Duration::from_secs(10));
    assert_eq!(cancelled["phase"], "cancelled");
}

#[test]
fn a_tap_killed_with_dirty_grains_marks_the_points_of_its_own_resync() {
    let pair = Pair::start("");
    let mut tap = Tap::start(&pair.source, "disk-1", SIZE, "async");
    fill(&tap, 31);
    settle(&pair, &tap);
    let before = pair
        .source
        .cli_ok(&["bookmark", "group-1", "--name", "before", "--json"]);
    let before = json(&before)["sequence"].as_u64().unwrap();
    // Rewrite the disk and kill the tap at once: its grains are still dirty
    // (cleared only 2 s after they settle), so the new tap sends them all
    // again from the primary, in disk order.
    fill(&tap, 32);
    tap.kill();
    tap.spawn();
    wait_attached(&pair);
    settle(&pair, &tap);
    let expected = sha_of(&tap.primary);
    assert_eq!(sha_of(&replica(&pair)), expected, "the replica converged");
    let disk_id = pair.target_group()["disks"][0]["id"].clone();

    let points = json(&pair.target.cli_ok(&["points", "group-1", "--json"]));
    let markers: Vec<&serde_json::Value> = points["resyncs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["owner"] == disk_id)
        .collect();
    let start = markers
        .iter()
        .find(|m| m["done"] == false)
        .unwrap_or_else(|| panic!("no start marker of the tap's resync: {points:#}"));
    let start = start["sequence"].as_u64().unwrap();
    let end = markers
        .iter()
        .find(|m| m["done"] == true && m["sequence"].as_u64().unwrap() > start)
        .unwrap_or_else(|| panic!("no end marker: {points:#}"))["sequence"]
        .as_u64()
        .unwrap();
    assert!(start > before && end > start + 1, "{points:#}");
    let during = pair.target.cli(&[
        "export",
        "group-1",
        "--point",
        &format!("seq:{}", start + 1),
    ]);
    assert!(!during.status.success(), "a point inside the tap's resync");
    assert!(String::from_utf8_lossy(&during.stderr).contains("not crash-consistent"));
    // The bookmark before it, and the end of it, are whole.
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("end.img");
    pair.materialize(&format!("seq:{end}"), "disk-1", &out);
    assert_eq!(sha_of(&out), expected);
    let out = scratch.path().join("before.img");
    pair.materialize("bookmark:before", "disk-1", &out);
    assert_eq!(
        sha_of(&out),
        sha256_hex(&pseudo_random(31, SIZE as usize)),
        "the bookmark before the kill"
    );
}

#[test]
fn a_grown_disk_is_resynced_once_the_tap_and_the_target_see_its_size() {
    let pair = Pair::start("");
    let mut tap = Tap::start(&pair.source, "disk-1", SIZE, "async");
    fill(&tap, 41);
    settle(&pair, &tap);
    // The primary grows by 16 MiB holding data the tap never saw (an
    // extended volume's old contents): 8 MiB of it not zero.
    tap.kill();
    let grown = SIZE + (16 << 20);
    {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&tap.primary)
            .unwrap();
        file.set_len(grown).unwrap();
        file.write_all_at(&pseudo_random(42, 8 << 20), SIZE + (4 << 20))
            .unwrap();
        file.sync_all().unwrap();
    }
    let refused = pair.source.cli(&["resize", "disk-1", "--size", "32M"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("can only grow"));

    let outcome =
        json(
            &pair
                .source
                .cli_ok(&["resize", "disk-1", "--size", &grown.to_string(), "--json"]),
        );
    assert_eq!(outcome["from_bytes"], SIZE);
    assert_eq!(outcome["resync"]["phase"], "running");
    // No tap: the resync waits for it, and says so.
    pair.source.wait_for(
        "the resync to wait for the tap",
        Duration::from_secs(20),
        |status| {
            status["resyncs"][0]["waiting"]
                .as_str()
                .is_some_and(|w| w.contains("tap"))
        },
    );
    tap.spawn();
    wait_attached(&pair);
    let done = wait_done(&pair, Duration::from_secs(120));
    assert_eq!(done["phase"], "done", "{done:#}");
    assert_eq!(done["compared_bytes"], grown, "{done:#}");
    assert_eq!(
        done["differing_bytes"].as_u64().unwrap(),
        8 << 20,
        "only the non-zero part of the new space is sent: {done:#}"
    );
    settle(&pair, &tap);
    assert_eq!(pair.target_group()["disks"][0]["size_bytes"], grown);
    assert_eq!(sha_of(&replica(&pair)), sha_of(&tap.primary));
}

#[test]
fn a_lost_staging_restarts_after_the_target_and_resyncs_the_group() {
    let mut pair = Pair::start("");
    let mut tap = Tap::start(&pair.source, "disk-1", SIZE, "async");
    fill(&tap, 51);
    settle(&pair, &tap);
    let held = pair.target_group()["received_through"].as_u64().unwrap();
    // The cache volume is replaced: the group's staging is gone, with
    // writes the tap had seen acknowledged (staged) and cleared from its
    // dirty map but the target never received.
    tap.wait_settled(Duration::from_secs(30));
    tap.kill();
    pair.source.terminate();
    let staging = pair
        .source
        .state_dir()
        .parent()
        .unwrap()
        .join(format!("cache/staging/group-{}", tap.group_id));
    assert!(staging.is_dir(), "{}", staging.display());
    fs::remove_dir_all(&staging).unwrap();
    // Writes the target never got, on the primary only (as if staged and
    // then lost with the volume).
    let lost = diverge(&mut tap, 9, 20);
    pair.source.spawn();
    wait_attached(&pair);
    fill(&tap, 52);
    // The gap is found, staging starts again after the target's sequence,
    // and a resync of the group sends what was lost.
    pair.source
        .wait_for("the gap's resync", Duration::from_secs(60), |status| {
            status["resyncs"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("journal gap"))
                || status["shipping"][0]["problem"]
                    .as_str()
                    .is_some_and(|p| p.contains("staging was lost"))
        });
    let view = wait_done(&pair, Duration::from_secs(120));
    assert_eq!(view["phase"], "done", "{view:#}");
    assert!(
        view["reason"].as_str().unwrap().contains("journal gap"),
        "{view:#}"
    );
    settle(&pair, &tap);
    assert!(pair.target_group()["received_through"].as_u64().unwrap() > held);
    assert_eq!(sha_of(&replica(&pair)), sha_of(&tap.primary));
    assert!(!lost.is_empty());
}
