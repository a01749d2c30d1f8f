//! The daemon's life: signals, systemd notification, one daemon per state
//! directory, the root-only control socket.

mod common;

use common::{is_root, link_state, path_mode, Daemon};
use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn sigterm_during_traffic_exits_zero_within_5s_and_loses_nothing() {
    let mut site_a = Daemon::start("site-a");
    let site_b = Daemon::start("site-b");
    site_a.pin(&site_b);
    site_b.pin(&site_a);
    site_a.wait_for("link up", Duration::from_secs(20), |status| {
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| link_state(p) == "connected")
    });
    // Traffic: heartbeats on the link, and catalog writes from two clients.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let socket = site_a.socket.clone();
            let stop = stop.clone();
            let acknowledged = acknowledged.clone();
            std::thread::spawn(move || {
                for index in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let name = format!("load-{writer}-{index}");
                    let fingerprint = format!("{:064x}", writer * 1_000_000 + index + 1);
                    let output = std::process::Command::new(common::BINARY)
                        .arg("--socket")
                        .arg(&socket)
                        .args([
                            "pair",
                            "add",
                            "--name",
                            &name,
                            "--address",
                            "127.0.0.1:9",
                            "--fingerprint",
                            &fingerprint,
                        ])
                        .output()
                        .unwrap();
                    if output.status.success() {
                        acknowledged.lock().unwrap().push(name);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let (exit, took) = site_a.terminate();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    assert!(exit.success(), "exit status {exit}:\n{}", site_a.log());
    assert!(took < Duration::from_secs(5), "took {took:?} to exit");
    assert!(!site_a.socket.exists(), "control socket removed on exit");
    let log = site_a.log();
    assert!(
        log.contains("draining") && log.contains("drained; exiting"),
        "{log}"
    );

    // Restart on the same state: every acknowledged pairing is there, whole.
    site_a.spawn();
    let status = site_a.status();
    let names: Vec<&str> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let acknowledged = acknowledged.lock().unwrap();
    assert!(
        acknowledged.len() > 3,
        "the load did too little: {}",
        acknowledged.len()
    );
    for name in acknowledged.iter() {
        assert!(
            names.contains(&name.as_str()),
            "acknowledged {name} lost after SIGTERM"
        );
    }
    // The peer saw the link close in order (ERROR ShuttingDown), not a timeout.
    site_b.wait_for_log("ShuttingDown", Duration::from_secs(5));
}

#[test]
fn sighup_reloads_and_names_what_needs_a_restart() {
    let daemon = Daemon::start("site-a");
    daemon.write_config("", 300, 3000);
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    let moved = text.replace(
        &format!("port = {}", daemon.port),
        &format!("port = {}", common::free_port()),
    );
    std::fs::write(&daemon.config_path, moved).unwrap();
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("take effect only after a restart", Duration::from_secs(5));
    assert!(
        daemon.log().contains("replication.port"),
        "{}",
        daemon.log()
    );
    // Still serving on the old port.
    assert!(std::net::TcpStream::connect(daemon.address()).is_ok());
    // A broken file on SIGHUP keeps the running config.
    std::fs::write(&daemon.config_path, "[replication]\nport = \"x\"\n").unwrap();
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("config not reloaded", Duration::from_secs(5));
    daemon.status();
}

#[test]
fn systemd_notification_ready_and_watchdog() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let path_text = path.display().to_string();
    let mut daemon = Daemon::start_with(
        "site-a",
        &[
            ("NOTIFY_SOCKET", path_text.as_str()),
            ("WATCHDOG_USEC", "200000"),
        ],
        "",
    );
    let mut messages = String::new();
    let mut buffer = [0u8; 4096];
    while !(messages.contains("READY=1") && messages.contains("WATCHDOG=1")) {
        let length = socket
            .recv(&mut buffer)
            .expect("a notification within 15 s");
        messages.push_str(&String::from_utf8_lossy(&buffer[..length]));
    }
    let (exit, _) = daemon.terminate();
    assert!(exit.success());
    let length = socket.recv(&mut buffer).unwrap();
    messages.push_str(&String::from_utf8_lossy(&buffer[..length]));
    while let Ok(length) = {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        socket.recv(&mut buffer)
    } {
        messages.push_str(&String::from_utf8_lossy(&buffer[..length]));
    }
    assert!(messages.contains("STOPPING=1"), "{messages}");
}

#[test]
fn one_daemon_per_state_directory() {
    let daemon = Daemon::start("site-a");
    let second = std::process::Command::new(common::BINARY)
        .args(["serve", "--config"])
        .arg(&daemon.config_path)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("one daemon per state_dir"), "{stderr}");
    daemon.status();
}

#[test]
fn state_and_control_socket_are_private() {
    let daemon = Daemon::start("site-a");
    assert_eq!(path_mode(&daemon.socket), 0o600);
    assert_eq!(path_mode(&daemon.state_dir()), 0o700);
    assert_eq!(
        path_mode(&daemon.state_dir().join("identity/key.pem")),
        0o600
    );
    if !is_root() {
        eprintln!("not root: the check that another user is refused needs root and runs in CI");
        return;
    }
    use std::os::unix::process::CommandExt;
    let output = std::process::Command::new(common::BINARY)
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("status")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach drgw") || stderr.contains("may not use"),
        "{stderr}"
    );
}
