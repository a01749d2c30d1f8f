//! `[volumes] require_mounted` (the appliance's setting): a cache or
//! retention volume that is not a mounted file system of its own is
//! reported in `drgw status`, and nothing is staged or kept on the disk
//! beneath it in its place.

mod common;

use common::pair::{Pair, TwoDiskTap};
use common::{pseudo_random, Daemon};
use std::fs;
use std::time::Duration;

const NOT_MOUNTED: &str = "no file system is mounted at";

/// Stops `daemon`, sets `require_mounted = true` in its [volumes] table and
/// starts it again.
fn require_mounted(daemon: &mut Daemon) {
    let (exit, _) = daemon.terminate();
    assert!(exit.success());
    let text = fs::read_to_string(&daemon.config_path).unwrap();
    assert!(text.contains("[volumes]\n"));
    let text = text.replace("[volumes]\n", "[volumes]\nrequire_mounted = true\n");
    fs::write(&daemon.config_path, text).unwrap();
    daemon.spawn();
}

fn volume_problem(daemon: &Daemon, role: &str) -> Option<String> {
    let status = daemon.status();
    let volumes = status["volumes"].as_array().unwrap();
    let volume = volumes
        .iter()
        .find(|v| v["role"] == role)
        .unwrap_or_else(|| panic!("no {role} volume in {status:#}"));
    volume["problem"].as_str().map(str::to_string)
}

#[test]
fn an_unmounted_retention_volume_is_reported_and_not_written() {
    let mut pair = Pair::start("");
    require_mounted(&mut pair.target);
    let problem = volume_problem(&pair.target, "retention").expect("a retention problem");
    assert!(problem.contains(NOT_MOUNTED), "{problem}");
    pair.source
        .wait_for("the link", Duration::from_secs(20), |s| {
            s["peers"][0]["link"]["state"] == "connected"
        });
    let tap = TwoDiskTap::start(&pair.source, 4 << 20);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data.img");
    fs::write(&data, pseudo_random(7, 1 << 20)).unwrap();
    common::clients::nbdcopy(data.to_str().unwrap(), &tap.uri("disk-a"));
    // The target refuses the group with the reason; the source is told.
    pair.target
        .wait_for("the refused group", Duration::from_secs(30), |s| {
            s["target_problems"].as_object().is_some_and(|p| {
                p.values()
                    .any(|v| v.as_str().unwrap().contains(NOT_MOUNTED))
            })
        });
    // The source says which group and peer refused, and where to look.
    pair.source
        .wait_for("the refusal at the source", Duration::from_secs(30), |s| {
            let shipping = &s["shipping"][0];
            shipping["group"] == "group-1"
                && shipping["peer"] == "target"
                && shipping["problem"]
                    .as_str()
                    .is_some_and(|p| p.contains("refused"))
        });
    // Nothing was made on the disk beneath the volume.
    let groups = pair.target.directory.path().join("retention/groups");
    let made = fs::read_dir(&groups).map(|d| d.count()).unwrap_or(0);
    assert_eq!(made, 0, "a group was made under {}", groups.display());
    let text = pair.target.cli_ok(&["status"]);
    assert!(text.contains(NOT_MOUNTED), "{text}");
}

#[test]
fn an_unmounted_cache_volume_is_reported_and_the_tap_refused() {
    let mut gateway = Daemon::start("source");
    require_mounted(&mut gateway);
    let problem = volume_problem(&gateway, "cache").expect("a cache problem");
    assert!(problem.contains(NOT_MOUNTED), "{problem}");
    let json = gateway.cli_ok(&["status", "--json"]);
    assert!(json.contains(NOT_MOUNTED), "{json}");
    let mut tap = common::Tap::start(&gateway, "disk-1", 1 << 20, "async");
    // Staging is refused with the reason (the tap logs it and retries), and
    // no staging log is made on the disk beneath the volume.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !tap.log().contains(NOT_MOUNTED) {
        assert!(
            std::time::Instant::now() < deadline,
            "the tap was not told why: {}",
            tap.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let staging = gateway.directory.path().join("cache/staging");
    let made = fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(made, 0, "staging was made under {}", staging.display());
    tap.kill();
}
