//! Failures on the source → target path: a network cut, the retention cap,
//! the target killed while applying.

mod common;

use common::pair::{Pair, TwoDiskTap};
use common::proxy::Proxy;
use common::{pseudo_random, sha256_hex, Daemon};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn nbdcopy(source: &Path, uri: &str) {
    let output = Command::new("nbdcopy")
        .arg(source)
        .arg(uri)
        .output()
        .expect("nbdcopy (scripts/install-deps)");
    assert!(
        output.status.success(),
        "nbdcopy: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn bookmark(source: &Daemon, name: &str) -> u64 {
    let taken: serde_json::Value =
        serde_json::from_str(&source.cli_ok(&["bookmark", "group-1", "--name", name, "--json"]))
            .unwrap();
    taken["sequence"].as_u64().unwrap()
}

fn file_sha256(path: &Path) -> String {
    sha256_hex(&fs::read(path).unwrap())
}

/// Materialises `point` of `disk` and returns its sha256.
fn point_sha256(pair: &Pair, point: &str, disk: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("point.img");
    pair.materialize(point, disk, &out);
    file_sha256(&out)
}

fn cut_seconds() -> u64 {
    std::env::var("DRGW_CUT_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

#[test]
fn a_cut_link_resumes_from_the_last_ack() {
    let proxies: Mutex<Vec<Proxy>> = Mutex::default();
    let pair = Pair::start_with("", |here, there| {
        let proxy = Proxy::start(there.address());
        here.pin_at(there, &proxy.address());
        proxies.lock().unwrap().push(proxy);
    });
    let proxies = proxies.into_inner().unwrap();
    // A cut re-sends what was unacknowledged: at most the 8 MiB window plus
    // the batch that crossed it (about 12 MiB of incompressible data). Four
    // copies of 384 MiB keep that under 1 % of what is shipped whatever the
    // moment of the cut (at 256 MiB a copy, a cut with the window full
    // would re-send 1.2 %).
    let size: u64 = 384 << 20;
    let tap = TwoDiskTap::start(&pair.source, size);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data.img");
    fs::write(&data, pseudo_random(1, size as usize)).unwrap();
    nbdcopy(&data, &tap.uri("disk-a"));
    let first = bookmark(&pair.source, "before-cut");
    pair.wait_applied(first, Duration::from_secs(60));

    // Cut while the next copy is being shipped.
    fs::write(&data, pseudo_random(2, size as usize)).unwrap();
    let uri = tap.uri("disk-b");
    let copy = {
        let data = data.clone();
        std::thread::spawn(move || nbdcopy(&data, &uri))
    };
    std::thread::sleep(Duration::from_millis(700));
    let cut_at = Instant::now();
    for proxy in &proxies {
        proxy.cut();
    }
    pair.source
        .wait_for("the link to drop", Duration::from_secs(20), |status| {
            status["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|peer| peer["name"] == "target" && peer["link"]["state"] != "connected")
        });
    copy.join().unwrap();
    // Writes go on while the link is down: staged at the source.
    fs::write(&data, pseudo_random(3, size as usize)).unwrap();
    nbdcopy(&data, &tap.uri("disk-a"));
    fs::write(&data, pseudo_random(4, size as usize)).unwrap();
    nbdcopy(&data, &tap.uri("disk-b"));
    let last = bookmark(&pair.source, "after-cut");
    let remaining = Duration::from_secs(cut_seconds()).saturating_sub(cut_at.elapsed());
    std::thread::sleep(remaining);
    let applied_during_cut = pair.target_group()["applied_through"].as_u64().unwrap();
    assert!(
        applied_during_cut < last,
        "the cut did not stop replication"
    );
    for proxy in &proxies {
        proxy.restore();
    }
    pair.wait_applied(last, Duration::from_secs(120));

    let shipping = &pair.source.status()["shipping"][0];
    let resent = shipping["resent_bytes"].as_u64().unwrap();
    let sent = shipping["wire_bytes_sent"].as_u64().unwrap();
    println!(
        "link cut {} s: {sent} bytes shipped, {resent} re-sent ({:.3} %)",
        cut_seconds(),
        resent as f64 * 100.0 / sent as f64
    );
    assert!(sent >= 4 * size, "{shipping:#}");
    assert!(resent * 100 < sent, "re-sent {resent} of {sent} bytes");
    let log = fs::read_to_string(&pair.source.log_path).unwrap();
    let resumes: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("shipping") && line.contains("resume_after"))
        .collect();
    assert!(resumes.len() >= 2, "{resumes:?}");
    assert!(
        !resumes.last().unwrap().contains("resume_after=0"),
        "resumed from zero: {resumes:?}"
    );
    // Both disks at the last bookmark equal their primaries.
    for disk in ["disk-a", "disk-b"] {
        let primary = tap.directory.path().join(format!("{disk}.img"));
        assert_eq!(
            point_sha256(&pair, "bookmark:after-cut", disk),
            file_sha256(&primary),
            "{disk}"
        );
    }
}

#[test]
fn the_retention_cap_trims_the_oldest_points_with_an_event() {
    // 320 MiB of journal; each pass below overwrites 64 MiB of data, whose
    // old contents (random, incompressible) go to the undo log. Nine passes
    // hold 512 MiB of undo, so the oldest points must go; 320 MiB leaves room
    // for the two newest points even when a loaded machine's applier still
    // holds two passes of redo when the cap is enforced (seen in CI with
    // 256 MiB: only the newest point was left).
    let pair = Pair::start("cap_bytes = 335544320");
    let size: u64 = 64 << 20;
    let tap = TwoDiskTap::start(&pair.source, size);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data.img");
    let primary = tap.directory.path().join("disk-a.img");
    let mut references = Vec::new();
    for pass in 0..9u64 {
        fs::write(&data, pseudo_random(100 + pass, size as usize)).unwrap();
        nbdcopy(&data, &tap.uri("disk-a"));
        let name = format!("pass-{pass}");
        let sequence = bookmark(&pair.source, &name);
        references.push((name, sequence, file_sha256(&primary)));
        pair.wait_applied(sequence, Duration::from_secs(60));
        // Applied is reported before the checkpoint that releases the
        // pass's redo (every 500 ms): let it pass, or the next pass finds
        // two passes of redo in the journal and the cap trims one point more
        // than this test counts on (seen on a loaded CI machine).
        std::thread::sleep(Duration::from_millis(1500));
    }
    let group = pair.target_group();
    let journal = group["journal_bytes"].as_u64().unwrap();
    assert!(journal <= 320 << 20, "{group:#}");
    let events: serde_json::Value =
        serde_json::from_str(&pair.target.cli_ok(&["events", "--json"])).unwrap();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "retention-trimmed"),
        "{events:#}"
    );
    let points: serde_json::Value =
        serde_json::from_str(&pair.target.cli_ok(&["points", "group-1", "--json"])).unwrap();
    let kept: Vec<&str> = points["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["bookmark"].as_str())
        .collect();
    assert!(
        !kept.contains(&"pass-0"),
        "the oldest point was kept: {kept:?}"
    );
    let (name, _, _) = &references[0];
    let refused = pair.target.cli(&[
        "materialize",
        "group-1",
        "--point",
        &format!("bookmark:{name}"),
        "--disk",
        "disk-a",
        "--out",
        work.path().join("x.img").to_str().unwrap(),
    ]);
    assert!(!refused.status.success(), "a trimmed point was served");
    // The newest points still verify.
    for (name, _, sha) in references.iter().rev().take(2) {
        assert!(
            kept.contains(&name.as_str()),
            "{name} was trimmed: {kept:?}"
        );
        assert_eq!(
            &point_sha256(&pair, &format!("bookmark:{name}"), "disk-a"),
            sha,
            "{name}"
        );
    }
}

#[test]
fn a_target_killed_while_applying_rolls_back_and_converges() {
    let mut pair = Pair::start("");
    let size: u64 = 128 << 20;
    let tap = TwoDiskTap::start(&pair.source, size);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data.img");
    let primary = tap.directory.path().join("disk-a.img");
    fs::write(&data, pseudo_random(7, size as usize)).unwrap();
    nbdcopy(&data, &tap.uri("disk-a"));
    let first = bookmark(&pair.source, "first");
    let first_sha = file_sha256(&primary);
    pair.wait_applied(first, Duration::from_secs(60));
    for round in 0..4u64 {
        fs::write(&data, pseudo_random(20 + round, size as usize)).unwrap();
        let uri = tap.uri("disk-a");
        let copy = {
            let data = data.clone();
            std::thread::spawn(move || nbdcopy(&data, &uri))
        };
        std::thread::sleep(Duration::from_millis(300 + 350 * round));
        pair.target.kill9();
        pair.target.spawn();
        copy.join().unwrap();
        let sequence = bookmark(&pair.source, &format!("round-{round}"));
        pair.wait_applied(sequence, Duration::from_secs(120));
        assert_eq!(
            point_sha256(&pair, "latest", "disk-a"),
            file_sha256(&primary),
            "round {round}"
        );
    }
    // History from before the kills still recovers exactly.
    assert_eq!(point_sha256(&pair, "bookmark:first", "disk-a"), first_sha);
    let log = fs::read_to_string(&pair.target.log_path).unwrap();
    println!(
        "target killed 4 times: {} restarts rolled back a half-applied batch",
        log.matches("rolling replicas back").count()
    );
}

#[test]
fn a_corrupt_journal_record_is_reported_not_served() {
    let mut pair = Pair::start("");
    let size: u64 = 32 << 20;
    let tap = TwoDiskTap::start(&pair.source, size);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data.img");
    for pass in 0..2u64 {
        fs::write(&data, pseudo_random(50 + pass, size as usize)).unwrap();
        nbdcopy(&data, &tap.uri("disk-a"));
    }
    let sequence = bookmark(&pair.source, "done");
    pair.wait_applied(sequence, Duration::from_secs(60));
    let (exit, _) = pair.target.terminate();
    assert!(exit.success());
    // Flip one byte inside the payload of the first undo record (the old
    // contents saved when the second pass overwrote the first).
    let groups = pair.target.directory.path().join("retention/groups");
    let group = fs::read_dir(&groups)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let undo = group.join("undo");
    let mut segments: Vec<_> = fs::read_dir(&undo)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "segment"))
        .collect();
    segments.sort();
    let segment = &segments[0];
    let mut bytes = fs::read(segment).unwrap();
    bytes[4096 + 80 + 100] ^= 0x20;
    fs::write(segment, bytes).unwrap();
    pair.target.spawn();
    let status = pair.target.status();
    let problems = status["target_problems"].as_object().unwrap();
    assert_eq!(problems.len(), 1, "{status:#}");
    let problem = problems.values().next().unwrap().as_str().unwrap();
    assert!(
        problem.contains("corrupt") || problem.contains("CRC"),
        "{problem}"
    );
    // Nothing is served from it.
    let refused = pair.target.cli(&["points", "group-1"]);
    assert!(!refused.status.success());
    // The source is told: that group alone stops shipping, the link stays up.
    pair.source
        .wait_for("the refusal", Duration::from_secs(30), |status| {
            status["shipping"][0]["problem"]
                .as_str()
                .is_some_and(|p| p.contains("refused"))
        });
    std::thread::sleep(Duration::from_secs(3));
    let target_link = pair.source.peer("target").unwrap();
    assert_eq!(target_link["link"]["state"], "connected", "{target_link:#}");
}

#[test]
fn rpo_crossing_the_threshold_raises_events_and_runs_the_hook() {
    let hook_dir = tempfile::tempdir().unwrap();
    let hook = hook_dir.path().join("hook.sh");
    let seen = hook_dir.path().join("events.jsonl");
    fs::write(&hook, format!("#!/bin/sh\ncat >> {}\n", seen.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let mut pair = Pair::start_with_target_sections(
        "rpo_threshold_s = 2",
        &format!("[events]\ncommand = \"{}\"\n", hook.display()),
    );
    let _tap = TwoDiskTap::start(&pair.source, 16 << 20);
    pair.target
        .wait_for("a first point", Duration::from_secs(20), |status| {
            status["target_groups"][0]["rpo_s"]
                .as_f64()
                .is_some_and(|rpo| rpo < 2.0)
        });
    // The source stops: no new points reach the target.
    let (exit, _) = pair.source.terminate();
    assert!(exit.success());
    pair.target
        .wait_for("the RPO event", Duration::from_secs(20), |status| {
            status["target_groups"][0]["rpo_exceeded"] == true
        });
    pair.source.spawn();
    pair.target
        .wait_for("the RPO back under", Duration::from_secs(30), |status| {
            status["target_groups"][0]["rpo_exceeded"] == false
        });
    let events: serde_json::Value =
        serde_json::from_str(&pair.target.cli_ok(&["events", "--json"])).unwrap();
    let crossings: Vec<bool> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "rpo")
        .map(|e| e["exceeded"].as_bool().unwrap())
        .collect();
    assert_eq!(crossings, [true, false], "{events:#}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(&seen)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the hook did not see both events"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_source_killed_while_shipping_resumes_without_loss() {
    let mut pair = Pair::start("");
    let size: u64 = 128 << 20;
    let tap = TwoDiskTap::start(&pair.source, size);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data.img");
    let primary = tap.directory.path().join("disk-a.img");
    for round in 0..3u64 {
        fs::write(&data, pseudo_random(40 + round, size as usize)).unwrap();
        nbdcopy(&data, &tap.uri("disk-a"));
        // Staged, perhaps not shipped: kill the source now.
        pair.source.kill9();
        pair.source.spawn();
        pair.source
            .wait_for("the tap back", Duration::from_secs(30), |status| {
                status["protected_disks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d["attached"] == true)
            });
        let sequence = bookmark(&pair.source, &format!("round-{round}"));
        pair.wait_applied(sequence, Duration::from_secs(120));
        assert_eq!(
            point_sha256(&pair, &format!("bookmark:round-{round}"), "disk-a"),
            file_sha256(&primary),
            "round {round}"
        );
    }
    let group = pair.target_group();
    println!(
        "source killed 3 times: target dropped {} duplicate batches",
        group["duplicates_dropped"]
    );
}

#[test]
fn the_bandwidth_limit_holds_and_a_reload_lifts_it() {
    let mut pair = Pair::start("");
    pair.source.extra_sections = "[bandwidth]\ndefault_mbit = 40\n".into();
    pair.source
        .write_config("point_interval_ms = 200", 200, 2000);
    pair.source.signal(nix::sys::signal::Signal::SIGHUP);
    pair.source
        .wait_for("the limit in force", Duration::from_secs(10), |status| {
            status["bandwidth_limit_bytes_per_second"] == 5_000_000
        });
    let size: u64 = 64 << 20;
    let tap = TwoDiskTap::start(&pair.source, size);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data.img");
    fs::write(&data, pseudo_random(9, size as usize)).unwrap();
    let started = Instant::now();
    nbdcopy(&data, &tap.uri("disk-a"));
    std::thread::sleep(Duration::from_secs(4).saturating_sub(started.elapsed()));
    let sent = pair.source.status()["shipping"][0]["wire_bytes_sent"]
        .as_u64()
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let rate = sent as f64 / elapsed;
    println!("limited to 5 MB/s: shipped {sent} bytes in {elapsed:.1} s ({rate:.0} B/s)");
    // The burst is a quarter second; allow the time the copy itself took.
    assert!(rate < 6_500_000.0, "{rate} B/s under a 5 MB/s limit");
    // Reload without the limit: the rest goes at once.
    pair.source.extra_sections.clear();
    pair.source
        .write_config("point_interval_ms = 200", 200, 2000);
    pair.source.signal(nix::sys::signal::Signal::SIGHUP);
    let last = bookmark(&pair.source, "all");
    let lifted = Instant::now();
    pair.wait_applied(last, Duration::from_secs(30));
    assert!(
        lifted.elapsed() < Duration::from_secs(8),
        "still limited after the reload: {:?}",
        lifted.elapsed()
    );
}
