//! The gateway's staging under faults and options: a corrupt byte is found
//! at restart and reported, encryption at rest hides the data, sync mode
//! acknowledges only what is staged.

mod common;

use common::{pseudo_random, sha256_hex, Daemon, Tap};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

const DISK_BYTES: u64 = 32 << 20;

fn write_through(tap: &Tap, data: &[u8]) {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source.img");
    std::fs::write(&source, data).unwrap();
    let output = Command::new("nbdcopy")
        .args([source.to_str().unwrap(), &tap.uri()])
        .output()
        .expect("nbdcopy is installed by scripts/install-deps");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn staging_directory(gateway: &Daemon, group_id: u64) -> std::path::PathBuf {
    gateway
        .directory
        .path()
        .join(format!("cache/staging/group-{group_id}"))
}

fn segment_files(directory: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == "segment"))
        .collect();
    files.sort();
    files
}

fn replay(gateway: &Daemon, group_id: u64, key: Option<&std::path::Path>) -> std::process::Output {
    let out = gateway.directory.path().join("replayed.img");
    let mut command = Command::new(common::BINARY);
    command
        .args(["staging", "replay"])
        .arg(staging_directory(gateway, group_id))
        .arg("--out")
        .arg(&out)
        .args(["--size", &DISK_BYTES.to_string(), "--json"]);
    if let Some(key) = key {
        command.arg("--key-file").arg(key);
    }
    let output = command.output().unwrap();
    if output.status.success() {
        let image = std::fs::read(&out).unwrap();
        let mut output = output;
        // Keep the replay report for messages; the first line is the hash.
        let report = String::from_utf8_lossy(&output.stdout).to_string();
        output.stdout = format!("{}\n{report}", sha256_hex(&image)).into_bytes();
        return output;
    }
    output
}

#[test]
fn corrupt_staged_byte_is_detected_at_restart_and_reported() {
    let mut gateway = Daemon::start("source");
    let mut tap = Tap::start(&gateway, "disk-1", DISK_BYTES, "async");
    write_through(&tap, &pseudo_random(3, DISK_BYTES as usize));
    tap.wait_settled(Duration::from_secs(60));
    tap.kill();
    let (exit, _) = gateway.terminate();
    assert!(exit.success());
    // Flip one byte inside the first record's payload (after the 4 KiB
    // segment header and the 80-byte record header).
    let segment = segment_files(&staging_directory(&gateway, tap.group_id))[0].clone();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 4096 + 80 + 1000).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], 4096 + 80 + 1000)
        .unwrap();
    drop(file);

    gateway.spawn();
    let status = gateway.status();
    let problem = status["groups"][0]["problem"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(problem.contains("corrupt"), "{status:#}");
    assert!(
        gateway.log().contains("staging unusable"),
        "{}",
        gateway.log()
    );
    let text = gateway.cli_ok(&["status"]);
    assert!(text.contains("UNUSABLE"), "{text}");
    // The offline replay refuses it too, naming the place.
    gateway.terminate();
    let output = replay(&gateway, tap.group_id, None);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("corrupt"));
}

#[test]
fn encrypted_staging_hides_the_data_and_replays_with_the_key() {
    let mut gateway = Daemon::start_with_sections("source", "[staging]\nencrypt = true\n");
    let mut tap = Tap::start(&gateway, "disk-1", DISK_BYTES, "async");
    // A recognisable plaintext: the same 64-byte line repeated.
    let line = b"drgw-plaintext-marker-0123456789-abcdefghijklmnopqrstuvwxyz-ABCD";
    let data: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(DISK_BYTES as usize)
        .collect();
    write_through(&tap, &data);
    tap.wait_settled(Duration::from_secs(60));
    tap.kill();
    let (exit, _) = gateway.terminate();
    assert!(exit.success());
    let key = gateway.state_dir().join("staging.key");
    assert_eq!(common::path_mode(&key), 0o600);
    for segment in segment_files(&staging_directory(&gateway, tap.group_id)) {
        let bytes = std::fs::read(&segment).unwrap();
        assert!(
            !bytes.windows(line.len()).any(|window| window == line),
            "plaintext in {}",
            segment.display()
        );
    }
    let without_key = replay(&gateway, tap.group_id, None);
    assert!(
        !without_key.status.success(),
        "replay without the key must fail"
    );
    let with_key = replay(&gateway, tap.group_id, Some(&key));
    assert!(
        with_key.status.success(),
        "{}",
        String::from_utf8_lossy(&with_key.stderr)
    );
    let text = String::from_utf8(with_key.stdout).unwrap();
    if text.lines().next() != Some(sha256_hex(&data).as_str()) {
        let image = std::fs::read(gateway.directory.path().join("replayed.img")).unwrap();
        let primary = std::fs::read(&tap.primary).unwrap();
        panic!(
            "replay differs from the data: {}; primary vs data: {}; replay: {text}\ngateway log:\n{}",
            common::describe_difference(&image, &data),
            common::describe_difference(&primary, &data),
            gateway.log()
        );
    }
}

#[test]
fn sync_mode_acknowledges_only_staged_writes() {
    let gateway = Daemon::start("source");
    let tap = Tap::start(&gateway, "disk-1", DISK_BYTES, "sync");
    write_through(&tap, &pseudo_random(5, DISK_BYTES as usize));
    // No waiting: once nbdcopy has its replies, the gateway has staged it all.
    let disk = &gateway.status()["protected_disks"][0];
    assert!(
        disk["bytes_total"].as_u64().unwrap() >= DISK_BYTES,
        "{disk:#}"
    );
}

#[test]
fn full_staging_holds_taps_back_and_loses_nothing() {
    // 64 MiB of staging, no transceiver yet to release it: 96 MiB of writes
    // fill it. The NBD client is not blocked (async mode): what the gateway
    // cannot take yet stays in the tap's dirty map.
    let sections = "[staging]\ncapacity_bytes = 67108864\nsegment_bytes = 16777216\n";
    let gateway = Daemon::start_with_sections("source", sections);
    let tap = Tap::start(&gateway, "disk-1", 96 << 20, "async");
    let data = pseudo_random(9, 96 << 20);
    write_through(&tap, &data);
    assert_eq!(
        sha256_hex(&std::fs::read(&tap.primary).unwrap()),
        sha256_hex(&data)
    );
    gateway.wait_for("staging full", Duration::from_secs(30), |status| {
        status["groups"][0]["full"] == true
    });
    gateway.wait_for_log("staging full", Duration::from_secs(10));
    tap.wait_status(
        "writes the gateway could not take kept dirty",
        Duration::from_secs(30),
        |status| status["disks"][0]["dirty_bytes"].as_u64().unwrap_or(0) > 0,
    );
    let group = &gateway.status()["groups"][0];
    assert!(
        group["bytes_on_disk"].as_u64().unwrap() <= 64 << 20,
        "{group:#}"
    );
    assert!(group["problem"].is_null(), "{group:#}");
}
