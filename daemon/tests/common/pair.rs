//! Two gateways (source and target) paired both ways, and a tap with two
//! disks of one consistency group: the whole data path on one machine.

use super::{free_port, Daemon, BINARY};
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Target settings for the tests: small journal segments, and `extra`
/// (more `[retention]` keys).
fn target_sections(extra: &str) -> String {
    format!("[retention]\nsegment_bytes = 16777216\n{extra}\n")
}

/// A source and a target gateway, paired both ways.
pub struct Pair {
    pub source: Daemon,
    pub target: Daemon,
}

impl Pair {
    pub fn start(target_extra: &str) -> Pair {
        Pair::start_with(target_extra, |here, there| here.pin(there))
    }

    /// Like `start`, with whole sections added to the target's config.
    pub fn start_with_target_sections(target_extra: &str, sections: &str) -> Pair {
        Pair::start_full(target_extra, sections, |here, there| here.pin(there))
    }

    /// Like `start`, with `pin` pinning each side at the other (for proxies).
    pub fn start_with(target_extra: &str, pin: impl Fn(&Daemon, &Daemon)) -> Pair {
        Pair::start_full(target_extra, "", pin)
    }

    fn start_full(target_extra: &str, sections: &str, pin: impl Fn(&Daemon, &Daemon)) -> Pair {
        // Crash-consistent points every 200 ms.
        let source = Daemon::start_with("source", &[], "point_interval_ms = 200");
        let target = Daemon::start_with_sections(
            "target",
            &format!("{}{sections}", target_sections(target_extra)),
        );
        pin(&source, &target);
        pin(&target, &source);
        source.wait_for(
            "the link to the target",
            Duration::from_secs(20),
            |status| status["peers"][0]["link"]["state"] == "connected",
        );
        Pair { source, target }
    }

    /// Waits until the target has applied every sequence through `sequence`.
    pub fn wait_applied(&self, sequence: u64, limit: Duration) {
        self.target
            .wait_for("the target to apply", limit, |status| {
                status["target_groups"]
                    .as_array()
                    .and_then(|groups| groups.first())
                    .and_then(|group| group["applied_through"].as_u64())
                    .is_some_and(|applied| applied >= sequence)
            });
    }

    /// The target's status of the (only) replicated group.
    pub fn target_group(&self) -> serde_json::Value {
        self.target.status()["target_groups"][0].clone()
    }

    pub fn materialize(&self, point: &str, disk: &str, out: &Path) -> serde_json::Value {
        let text = self.target.cli_ok(&[
            "materialize",
            "group-1",
            "--point",
            point,
            "--disk",
            disk,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        serde_json::from_str(&text).unwrap()
    }
}

/// A tap serving two disks of group-1.
pub struct TwoDiskTap {
    pub directory: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl TwoDiskTap {
    pub fn start(gateway: &Daemon, size_bytes: u64) -> TwoDiskTap {
        let directory = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut disks = String::new();
        for disk in ["disk-a", "disk-b"] {
            let primary = directory.path().join(format!("{disk}.img"));
            fs::File::create(&primary)
                .unwrap()
                .set_len(size_bytes)
                .unwrap();
            disks.push_str(&format!(
                "[[disk]]\nname = \"{disk}\"\npath = \"{}\"\nmode = \"async\"\ngrain_bytes = 65536\n\n",
                primary.display()
            ));
        }
        let config = directory.path().join("tap.toml");
        fs::write(
            &config,
            format!(
                "[tap]\nname = \"tap-1\"\nstate_dir = \"{state}\"\n\n\
                 [gateway]\naddress = \"{gateway}\"\nfingerprint = \"{fingerprint}\"\n\n\
                 [nbd]\naddress = \"127.0.0.1\"\nport = {port}\n\n[log]\nlevel = \"info\"\n\n{disks}",
                state = directory.path().join("state").display(),
                gateway = gateway.address(),
                fingerprint = gateway.fingerprint(),
            ),
        )
        .unwrap();
        super::pair_tap(gateway, &config);
        for disk in ["disk-a", "disk-b"] {
            gateway.cli_ok(&[
                "protect",
                disk,
                "--group",
                "group-1",
                "--tap",
                "tap-1",
                "--size",
                &size_bytes.to_string(),
            ]);
        }
        let child = spawn_tap(&config, directory.path());
        wait_attached(gateway);
        TwoDiskTap {
            directory,
            port,
            child,
        }
    }

    /// Starts the tap again (after `stop`) and waits until both disks are
    /// attached to `gateway`.
    pub fn restart(&mut self, gateway: &Daemon) {
        self.child = spawn_tap(
            &self.directory.path().join("tap.toml"),
            self.directory.path(),
        );
        wait_attached(gateway);
    }

    pub fn uri(&self, disk: &str) -> String {
        format!("nbd://127.0.0.1:{}/{disk}", self.port)
    }

    /// Stops the tap (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn spawn_tap(config: &Path, directory: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(directory.join("tap.log"))
        .unwrap();
    Command::new(BINARY)
        .arg("--config")
        .arg(config)
        .arg("tap")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_attached(gateway: &Daemon) {
    gateway.wait_for("both disks attached", Duration::from_secs(20), |status| {
        status["protected_disks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["attached"] == true)
            .count()
            == 2
    });
}

impl Drop for TwoDiskTap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
