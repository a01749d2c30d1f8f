//! The command line as an operator meets it.

mod common;

use std::process::Command;

fn drgw(args: &[&str]) -> std::process::Output {
    Command::new(common::BINARY)
        .args(args)
        .env_remove("DRGW_CONFIG")
        .env_remove("DRGW_SOCKET")
        .output()
        .unwrap()
}

#[test]
fn help_lists_the_subcommands() {
    let output = drgw(&["--help"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for command in ["serve", "config", "status", "pair"] {
        assert!(text.contains(command), "--help lacks {command}:\n{text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(drgw(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(drgw(&["pair", "add", "--name", "x"]).status.code(), Some(2));
}

#[test]
fn config_check_reports_each_problem_with_its_line() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("drgw.toml");
    std::fs::write(
        &path,
        "[appliance]\nnmae = \"site-a\"\n\n[replication]\nport = 70000\n\n[log]\nlevel = 3\n",
    )
    .unwrap();
    let output = drgw(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stderr);
    let file = path.display().to_string();
    assert!(
        text.contains(&format!("{file}:2:")) && text.contains("nmae"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{file}:5:")) && text.contains("70000"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{file}:8:")) && text.contains("log.level"),
        "{text}"
    );

    let json = drgw(&["config", "check", "--json", path.to_str().unwrap()]);
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let lines: Vec<u64> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 5, 8]);
}

#[test]
fn example_config_is_valid() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("example.toml");
    let example = drgw(&["config", "example"]);
    assert!(example.status.success());
    std::fs::write(&path, &example.stdout).unwrap();
    let output = drgw(&["config", "check", path.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn operator_command_without_a_daemon_says_so() {
    let output = drgw(&["--socket", "/nonexistent/drgw.sock", "status"]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("cannot reach drgw at /nonexistent/drgw.sock"),
        "{text}"
    );
}
