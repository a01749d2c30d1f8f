//! `drgw demo` as a newcomer runs it: the whole path ends with a passing
//! verification and a summary; Ctrl-C at any moment leaves no process and
//! no workspace behind.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn demo(args: &[&str]) -> Command {
    let mut command = Command::new(common::BINARY);
    command
        .arg("demo")
        .args(args)
        .env_remove("DRGW_CONFIG")
        .env_remove("DRGW_SOCKET");
    command
}

/// The workspace named on the demo's first line.
fn workspace_of(first_line: &str) -> PathBuf {
    let path = first_line
        .split("working in ")
        .nth(1)
        .unwrap_or_else(|| panic!("no workspace in {first_line:?}"));
    PathBuf::from(path.trim())
}

/// Processes (pid, command line) whose command line mentions `path`.
fn processes_mentioning(path: &Path) -> Vec<(u32, String)> {
    let needle = path.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            line.contains(&needle).then_some((pid, line))
        })
        .collect()
}

/// Children of `parent`, from /proc/PID/stat.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the ")" closing the command: state, then the parent's pid.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

#[test]
fn demo_runs_the_whole_path_and_verifies() {
    let output = demo(&["--json"]).output().unwrap();
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{progress}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));

    assert_eq!(summary["passed"], true, "{summary:#}");
    assert!(summary["failure"].is_null());
    let verification = summary["verification"].as_array().unwrap();
    assert_eq!(verification.len(), 2, "{summary:#}");
    for verdict in verification {
        assert_eq!(verdict["passed"], true, "{verdict:#}");
        assert_eq!(verdict["blocks_mismatched"], 0);
        assert!(
            verdict["blocks_written"].as_u64().unwrap() > 0,
            "{verdict:#}"
        );
        assert!(verdict["read_from"]
            .as_str()
            .unwrap()
            .contains("bookmark:demo-bookmark"));
    }
    for verdict in summary["primaries"].as_array().unwrap() {
        assert_eq!(verdict["passed"], true, "{verdict:#}");
    }
    // Writes went on after the bookmark: the recovered images hold less
    // than the primaries at the end.
    assert!(
        summary["bookmark"]["bytes_before"].as_u64().unwrap()
            < summary["workload"]["bytes"].as_u64().unwrap(),
        "{summary:#}"
    );
    assert!(summary["bookmark"]["sequence"].as_u64().unwrap() > 0);
    assert!(summary["workload"]["throughput_mb_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        summary["replication"]["lag_p99_ms"].as_f64().is_some(),
        "{summary:#}"
    );
    assert!(
        summary["replication"]["rpo_max_s"].as_f64().is_some(),
        "{summary:#}"
    );
    assert!(
        summary["points"]["total"].as_u64().unwrap() >= 2,
        "{summary:#}"
    );
    assert_eq!(summary["points"]["bookmarks"], 1);
    for step in ["test_failover", "failover"] {
        assert_eq!(summary[step]["outcome"], "verified", "{step}: {summary:#}");
        let verdicts = summary[step]["verdicts"].as_array().unwrap();
        assert_eq!(verdicts.len(), 2, "{step}: {summary:#}");
        for verdict in verdicts {
            assert_eq!(verdict["passed"], true, "{step}: {verdict:#}");
            assert!(
                verdict["read_from"].as_str().unwrap().starts_with("nbd://"),
                "{verdict:#}"
            );
        }
    }

    // Progress went to stderr, step by step; the workspace is gone.
    for step in 1..=11 {
        assert!(progress.contains(&format!("[{step}] ")), "{progress}");
    }
    assert!(progress.contains("is not pinned"), "{progress}");
    let workspace = workspace_of(progress.lines().next().unwrap());
    assert!(!workspace.exists(), "{} left behind", workspace.display());
    assert!(summary["workspace"].is_null());
}

#[test]
fn demo_interrupted_stops_its_children_and_removes_its_workspace() {
    let mut child = demo(&[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    // Read progress up to the workload: every child is running then.
    while !line.starts_with("[4]") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the demo ended early:\n{seen}"
        );
        seen.push_str(&line);
    }
    std::thread::sleep(Duration::from_millis(1500)); // writes in flight
    let workspace = workspace_of(seen.lines().next().unwrap());
    let children = children_of(pid);
    assert_eq!(
        children.len(),
        3,
        "site-a, site-b and the tap: {children:?}"
    );
    assert!(workspace.exists());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the demo ignored SIGINT for 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();

    assert_eq!(status.code(), Some(1), "{seen}{rest}\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!workspace.exists(), "{} left behind", workspace.display());
    let left = processes_mentioning(&workspace);
    assert!(left.is_empty(), "processes left: {left:?}");
    for child in children {
        // Gone, or its pid reused by a process that is not one of ours.
        let command = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        let command = String::from_utf8_lossy(&command);
        assert!(
            !command.contains(&workspace.display().to_string()),
            "child {child} is still running: {command}"
        );
    }
}
