//! The source half of the data path end to end: an NBD client writes through
//! `drgw tap`; the primary, the export and the gateway's staged records all
//! agree.

mod common;

use common::{pseudo_random, replay_staging, sha256_hex, Daemon, Tap};
use std::process::Command;
use std::time::Duration;

/// The issue asks for 1 GiB of random data through the tap.
const DISK_BYTES: u64 = 1 << 30;

fn nbdcopy(source: &str, destination: &str) {
    let output = Command::new("nbdcopy")
        .args([source, destination])
        .output()
        .expect("nbdcopy is installed by scripts/install-deps");
    assert!(
        output.status.success(),
        "nbdcopy {source} {destination}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn nbdcopy_through_the_tap_reaches_primary_export_and_staging() {
    let mut gateway = Daemon::start("source");
    let mut tap = Tap::start(&gateway, "disk-1", DISK_BYTES, "async");
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source.img");
    let data = pseudo_random(42, DISK_BYTES as usize);
    std::fs::write(&source, &data).unwrap();
    nbdcopy(source.to_str().unwrap(), &tap.uri());

    let read_back = work.path().join("read-back.img");
    nbdcopy(&tap.uri(), read_back.to_str().unwrap());
    let expected = sha256_hex(&data);
    assert_eq!(
        sha256_hex(&std::fs::read(&read_back).unwrap()),
        expected,
        "export"
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&tap.primary).unwrap()),
        expected,
        "primary"
    );

    tap.wait_settled(Duration::from_secs(60));
    let disk = &gateway.status()["protected_disks"][0];
    assert!(
        disk["bytes_total"].as_u64().unwrap() >= DISK_BYTES,
        "{disk:#}"
    );
    assert!(tap.terminate().success());
    let (exit, _) = gateway.terminate();
    assert!(exit.success());
    let replayed = replay_staging(&gateway, tap.group_id, DISK_BYTES);
    assert_eq!(sha256_hex(&replayed), expected, "staged records replayed");
}

#[test]
fn writes_while_the_gateway_is_away_are_resynchronised() {
    let mut gateway = Daemon::start("source");
    let tap = Tap::start(&gateway, "disk-1", 64 << 20, "async");
    let (exit, _) = gateway.terminate();
    assert!(exit.success());
    // The gateway is down: writes go to the primary and the dirty map only.
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source.img");
    let data = pseudo_random(7, 64 << 20);
    std::fs::write(&source, &data).unwrap();
    nbdcopy(source.to_str().unwrap(), &tap.uri());
    tap.wait_status(
        "dirty regions while the gateway is away",
        Duration::from_secs(10),
        |status| status["disks"][0]["dirty_bytes"].as_u64().unwrap_or(0) >= 64 << 20,
    );
    // The gateway comes back: the tap reconnects and resends only what is dirty.
    gateway.spawn();
    tap.wait_settled(Duration::from_secs(60));
    let resynced = tap.status()["resynced_bytes"].as_u64().unwrap();
    assert!(
        (64 << 20..=2 * (64 << 20)).contains(&resynced),
        "resynced {resynced}"
    );
    let (exit, _) = gateway.terminate();
    assert!(exit.success());
    let replayed = replay_staging(&gateway, tap.group_id, 64 << 20);
    assert_eq!(sha256_hex(&replayed), sha256_hex(&data));
}

#[test]
fn a_disk_protected_with_another_size_is_refused_at_attach() {
    let gateway = Daemon::start("source");
    let mut tap = Tap::start(&gateway, "disk-1", 1 << 20, "async");
    tap.kill();
    gateway.cli_ok(&["unprotect", "disk-1"]);
    gateway.cli_ok(&[
        "protect", "disk-1", "--group", "g", "--tap", "tap-1", "--size", "2M",
    ]);
    tap.spawn();
    gateway.wait_for_log("resize needs a resync", Duration::from_secs(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !tap.log().contains("disk not protected") {
        assert!(
            std::time::Instant::now() < deadline,
            "tap log lacks the refusal:\n{}",
            tap.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let disk = &gateway.status()["protected_disks"][0];
    assert_eq!(disk["attached"], false, "{disk:#}");
}
