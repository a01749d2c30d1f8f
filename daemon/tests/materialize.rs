//! `drgw materialize` end to end: raw and qcow2 images of a bookmark equal
//! what the disks held (qemu-img check / compare); a materialize cancelled,
//! or cut by `kill -9` of the target daemon, resumes to an identical image;
//! bad requests are refused with a clear reason.

mod common;

use common::pair::{Pair, TwoDiskTap};
use common::{sha256_hex, BINARY};
use drgw::control::Request;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WORKLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workloads/pit.py");
const SIZE: u64 = 64 << 20;
/// Test hook: the target's reader sleeps this long per 4 MiB chunk.
const DELAY_ENV: &str = "DRGW_TEST_MATERIALIZE_CHUNK_DELAY_MS";

/// Writes three rounds of random 1 MiB blocks to both disks, with a
/// bookmark after each; returns the bookmarks' references.
fn write_rounds(pair: &Pair, tap: &TwoDiskTap) -> Vec<serde_json::Value> {
    let output = Command::new("/usr/bin/python3")
        .arg(WORKLOAD)
        .args([
            "rounds",
            "--uri-a",
            &tap.uri("disk-a"),
            "--uri-b",
            &tap.uri("disk-b"),
        ])
        .args(["--size", &SIZE.to_string(), "--rounds", "3"])
        .args([
            "--round-bytes",
            &(12u64 << 20).to_string(),
            "--drgw",
            BINARY,
        ])
        .args([
            "--socket",
            pair.source.socket.to_str().unwrap(),
            "--group",
            "group-1",
        ])
        .output()
        .expect("python3 with libnbd (scripts/install-deps)");
    assert!(
        output.status.success(),
        "{}",
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

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (scripts/install-deps installs qemu-utils)")
}

fn materialize_args<'a>(point: &'a str, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "materialize",
        "group-1",
        "--point",
        point,
        "--disk",
        "disk-a",
    ];
    args.extend(["--out", out.to_str().unwrap(), "--json"]);
    args.extend(extra);
    args
}

fn refused(pair: &Pair, args: &[&str], expected: &str) {
    let output = pair.target.cli(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{args:?} was not refused: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "{args:?}: {stderr:?} lacks {expected:?}"
    );
}

fn request(pair: &Pair, request: Request) -> Result<serde_json::Value, String> {
    let runtime = common::runtime();
    runtime
        .block_on(drgw::control::request(&pair.target.socket, request))
        .map_err(|e| e.to_string())
}

#[test]
fn raw_and_qcow2_images_equal_the_bookmark() {
    let pair = Pair::start("");
    let tap = TwoDiskTap::start(&pair.source, SIZE);
    let references = write_rounds(&pair, &tap);
    let work = tempfile::tempdir().unwrap();
    // The first bookmark: its bytes come from the undo log, the rest of the
    // disk from the replica; holes must stay holes.
    let first = &references[0];
    let point = format!("bookmark:{}", first["bookmark"].as_str().unwrap());
    let raw = work.path().join("a.raw");
    let answer = pair.target.cli_ok(&materialize_args(&point, &raw, &[]));
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["point"]["sequence"], first["sequence"], "{answer:#}");
    assert_eq!(
        sha256_hex(&fs::read(&raw).unwrap()),
        first["sha256_a"].as_str().unwrap()
    );
    let allocated = fs::metadata(&raw).unwrap().blocks() * 512;
    assert!(
        allocated < SIZE * 3 / 4,
        "raw image not sparse: {allocated} bytes allocated"
    );
    assert!(!Path::new(&format!("{}.drgw-materialize", raw.display())).exists());

    let qcow2 = work.path().join("a.qcow2");
    pair.target
        .cli_ok(&materialize_args(&point, &qcow2, &["--format", "qcow2"]));
    let check = qemu_img(&["check", "-f", "qcow2", qcow2.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let compare = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        qcow2.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );
    let qcow2_bytes = fs::metadata(&qcow2).unwrap().len();
    assert!(
        qcow2_bytes < SIZE * 3 / 4,
        "qcow2 allocated zero clusters: {qcow2_bytes} bytes"
    );

    // Refusals, each with its reason.
    refused(&pair, &materialize_args(&point, &raw, &[]), "--force");
    pair.target
        .cli_ok(&materialize_args(&point, &raw, &["--force"]));
    refused(
        &pair,
        &materialize_args(&point, &raw, &["--resume"]),
        "nothing to resume",
    );
    refused(
        &pair,
        &materialize_args("bookmark:nope", &work.path().join("n.raw"), &[]),
        "no recovery point",
    );
    let missing = work.path().join("no-such-dir/x.raw");
    refused(
        &pair,
        &materialize_args(&point, &missing, &[]),
        "does not exist",
    );
    let other = work.path().join("d.raw");
    let mut args = materialize_args(&point, &other, &[]);
    args[1] = "group-9";
    refused(&pair, &args, "no group");
    args = materialize_args(&point, &other, &[]);
    args[5] = "disk-z";
    refused(&pair, &args, "has no disk disk-z");
    let relative = request(
        &pair,
        Request::MaterializeStart {
            group: "group-1".into(),
            point: point.clone(),
            disk: "disk-a".into(),
            out: "relative.raw".into(),
            format: Default::default(),
            resume: false,
            force: false,
        },
    );
    assert!(relative.unwrap_err().contains("absolute"));
    full_file_system_is_named(&pair, &point);
}

/// A full file system fails the job with an error naming the file (root:
/// mounts a small tmpfs; CI runs as root).
fn full_file_system_is_named(pair: &Pair, point: &str) {
    if !common::is_root() {
        eprintln!("not root: the full file system check needs a tmpfs mount and runs in CI");
        return;
    }
    let small = tempfile::tempdir().unwrap();
    let mount = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .status()
            .unwrap()
            .success()
    };
    let directory = small.path().to_str().unwrap();
    assert!(mount(&[
        "mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", directory
    ]));
    let out = small.path().join("full.raw");
    let output = pair.target.cli(&materialize_args(point, &out, &[]));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(mount(&["umount", directory]));
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(out.to_str().unwrap()) && stderr.contains("no space left"),
        "{stderr}"
    );
}

fn start_job(pair: &Pair, point: &str, out: &Path, resume: bool) -> u64 {
    let answer = request(
        pair,
        Request::MaterializeStart {
            group: "group-1".into(),
            point: point.into(),
            disk: "disk-a".into(),
            out: out.display().to_string(),
            format: drgw::control::materialize::ImageFormat::Qcow2,
            resume,
            force: false,
        },
    )
    .unwrap();
    answer["job"].as_u64().unwrap()
}

fn wait_job(pair: &Pair, id: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = request(pair, Request::Job { id }).unwrap();
        if report["state"] != "running" {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} still running: {report}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Done bytes recorded in the sidecar of `out` (0 when none yet).
fn sidecar_done(out: &Path) -> u64 {
    fs::read_to_string(format!("{}.drgw-materialize", out.display()))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text.lines().next()?).ok())
        .and_then(|value| value["done_bytes"].as_u64())
        .unwrap_or(0)
}

#[test]
fn cancelled_and_killed_materializes_resume_to_identical_images() {
    let mut pair = Pair::start("");
    let tap = TwoDiskTap::start(&pair.source, SIZE);
    let references = write_rounds(&pair, &tap);
    let point = format!("seq:{}", references[1]["sequence"]);
    let work = tempfile::tempdir().unwrap();
    let whole = work.path().join("whole.qcow2");
    pair.target
        .cli_ok(&materialize_args(&point, &whole, &["--format", "qcow2"]));
    drop(tap);

    // Slow the copy down (test hook) so it can be cut halfway.
    pair.target.terminate();
    pair.target.set_env(DELAY_ENV, "250");
    pair.target.spawn();

    // Ctrl-C of the CLI cancels the job and says how to go on.
    let interrupted = work.path().join("interrupted.raw");
    let child = Command::new(BINARY)
        .arg("--socket")
        .arg(&pair.target.socket)
        .args(materialize_args(&point, &interrupted, &[]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cancelled") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert!(Path::new(&format!("{}.drgw-materialize", interrupted.display())).exists());

    // Cancelled: the job says so, the sidecar stays, and resume finishes it.
    let cut = work.path().join("cut.qcow2");
    let id = start_job(&pair, &point, &cut, false);
    std::thread::sleep(Duration::from_millis(600));
    request(&pair, Request::JobCancel { id }).unwrap();
    let report = wait_job(&pair, id);
    assert_eq!(report["state"], "failed", "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("--resume"),
        "{report}"
    );
    refused(
        &pair,
        &materialize_args(&point, &cut, &["--format", "qcow2"]),
        "--resume",
    );
    refused(
        &pair,
        &materialize_args("latest", &cut, &["--format", "qcow2", "--resume"]),
        "sequence",
    );
    refused(
        &pair,
        &materialize_args(&point, &cut, &["--resume"]),
        "format qcow2",
    );

    // Killed mid-job once the sidecar recorded progress; resumed after restart.
    let cancelled_at = sidecar_done(&cut);
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = start_job(&pair, &point, &cut, true);
    while sidecar_done(&cut) <= cancelled_at
        || request(&pair, Request::Job { id }).unwrap()["state"] != "running"
    {
        assert!(
            Instant::now() < deadline,
            "no checkpoint before the job ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = sidecar_done(&cut);
    assert!(done < SIZE, "the job finished before the kill");
    pair.target.kill9();
    pair.target.spawn();
    let answer = pair.target.cli_ok(&materialize_args(
        &point,
        &cut,
        &["--format", "qcow2", "--resume"],
    ));
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert!(
        answer["resumed_from_bytes"].as_u64().unwrap() >= done,
        "{answer:#}"
    );
    let check = qemu_img(&["check", "-f", "qcow2", cut.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let compare = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        cut.to_str().unwrap(),
        whole.to_str().unwrap(),
    ]);
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );
    let raw = work.path().join("whole.raw");
    pair.target.cli_ok(&materialize_args(&point, &raw, &[]));
    assert_eq!(
        sha256_hex(&fs::read(&raw).unwrap()),
        references[1]["sha256_a"].as_str().unwrap()
    );
}
