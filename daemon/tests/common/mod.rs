//! A real `drgw serve` process per test appliance, on loopback, with its own
//! state directory, port and control socket.

#![allow(dead_code)]

pub mod clients;
pub mod pair;
pub mod proxy;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_drgw");

pub struct Daemon {
    pub name: String,
    pub directory: tempfile::TempDir,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    pub log_path: PathBuf,
    child: Option<Child>,
    extra_env: Vec<(String, String)>,
    /// Config text appended after the generated tables.
    pub extra_sections: String,
    /// Port of the recovery NBD listener.
    pub nbd_port: u16,
}

/// A port free at the moment of asking (the daemon binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    pub fn start(name: &str) -> Daemon {
        Daemon::start_with(name, &[], "")
    }

    /// Starts a daemon whose config ends with `sections` (whole tables).
    pub fn start_with_sections(name: &str, sections: &str) -> Daemon {
        let directory = tempfile::tempdir().unwrap();
        let mut daemon = Daemon {
            name: name.to_string(),
            config_path: directory.path().join("drgw.toml"),
            socket: directory.path().join("control.sock"),
            port: free_port(),
            log_path: directory.path().join("drgw.log"),
            directory,
            child: None,
            extra_env: Vec::new(),
            extra_sections: sections.to_string(),
            nbd_port: free_port(),
        };
        daemon.write_config("", 200, 2000);
        daemon.spawn();
        daemon
    }

    /// Starts a daemon with extra environment and extra config text
    /// appended to the [replication] table.
    pub fn start_with(name: &str, env: &[(&str, &str)], replication_extra: &str) -> Daemon {
        let directory = tempfile::tempdir().unwrap();
        let mut daemon = Daemon {
            name: name.to_string(),
            config_path: directory.path().join("drgw.toml"),
            socket: directory.path().join("control.sock"),
            port: free_port(),
            log_path: directory.path().join("drgw.log"),
            directory,
            child: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            extra_sections: String::new(),
            nbd_port: free_port(),
        };
        daemon.write_config(replication_extra, 200, 2000);
        daemon.spawn();
        daemon
    }

    pub fn write_config(&self, replication_extra: &str, heartbeat_ms: u32, timeout_ms: u32) {
        let root = self.directory.path().display();
        let text = format!(
            "[appliance]\nname = \"{name}\"\nstate_dir = \"{root}/state\"\n\n\
             [replication]\naddress = \"127.0.0.1\"\nport = {port}\n\
             heartbeat_interval_ms = {heartbeat_ms}\npeer_timeout_ms = {timeout_ms}\n\
             connect_retry_ms_max = 1000\n{replication_extra}\n\n\
             [control]\nsocket = \"{socket}\"\n\n\
             [volumes]\ncache = \"{root}/cache\"\nretention = \"{root}/retention\"\n\n\
             [recovery]\naddress = \"127.0.0.1\"\nport = {nbd_port}\n\n\
             [log]\nlevel = \"debug\"\n\n{extra}\n",
            extra = self.extra_sections,
            nbd_port = self.nbd_port,
            name = self.name,
            port = self.port,
            socket = self.socket.display(),
        );
        fs::write(&self.config_path, text).unwrap();
    }

    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut command = Command::new(BINARY);
        command
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("DRGW_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in &self.extra_env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.cli(&["status", "--json"]).status.success() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited at startup ({status}):\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not answer on its control socket:\n{}",
            self.name,
            self.log()
        );
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Sends SIGTERM and waits for the exit; returns it and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("{} ignored SIGTERM for 30 s:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sets an environment variable for the next `spawn`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Pins `other` here as an appliance reached at `address`.
    pub fn pin_at(&self, other: &Daemon, address: &str) {
        self.cli_ok(&[
            "pair",
            "add",
            "--name",
            &other.name,
            "--address",
            address,
            "--fingerprint",
            &other.fingerprint(),
        ]);
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BINARY)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("DRGW_CONFIG")
            .output()
            .unwrap()
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "drgw {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8(output.stdout).unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(&["status", "--json"])).unwrap()
    }

    pub fn fingerprint(&self) -> String {
        let info: serde_json::Value =
            serde_json::from_str(&self.cli_ok(&["pair", "show", "--json"])).unwrap();
        info["fingerprint"].as_str().unwrap().to_string()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pins `other` here as an appliance peer.
    pub fn pin(&self, other: &Daemon) {
        self.cli_ok(&[
            "pair",
            "add",
            "--name",
            &other.name,
            "--address",
            &other.address(),
            "--fingerprint",
            &other.fingerprint(),
        ]);
    }

    pub fn peer(&self, name: &str) -> Option<serde_json::Value> {
        let status = self.status();
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|peer| peer["name"] == name)
            .cloned()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.directory.path().join("state")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Polls until `condition` holds on the status, or panics after `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status();
            if condition(&status) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: waited {limit:?} for {what}; status:\n{status:#}\nlog:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(needle) {
            if Instant::now() > deadline {
                panic!(
                    "{}: no log line with {needle:?} within {limit:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn link_state(peer: &serde_json::Value) -> &str {
    peer["link"]["state"].as_str().unwrap_or("")
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn path_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A hand-driven TLS client with an identity of its own, for tests that
/// need to speak (or misspeak) the protocol to a daemon.
pub struct TestClient {
    pub state: tempfile::TempDir,
    pub identity: drgw_tls::Identity,
}

impl TestClient {
    pub fn new() -> TestClient {
        let state = tempfile::tempdir().unwrap();
        let identity =
            drgw_tls::Identity::load_or_create(state.path(), "drgw-test-client").unwrap();
        TestClient { state, identity }
    }

    pub fn fingerprint(&self) -> String {
        self.identity.fingerprint().to_string()
    }

    /// TCP + TLS 1.3 to `address`, expecting the server certificate `expected`.
    pub async fn connect(
        &self,
        address: &str,
        expected: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let config = drgw_tls::client_config(&self.identity, expected.parse().unwrap()).unwrap();
        let tcp = tokio::net::TcpStream::connect(address).await?;
        let name = rustls::pki_types::ServerName::try_from(drgw_tls::SERVER_NAME).unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }

    pub fn hello(&self, role: drgw_wire::Role) -> drgw_wire::Frame {
        drgw_wire::Frame::Hello(drgw_wire::Hello {
            version_min: drgw_wire::PROTOCOL_VERSION_MIN,
            version_max: drgw_wire::PROTOCOL_VERSION_MAX,
            role,
            appliance_id: [7; 16],
            name: "test-client".into(),
            software: "drgw-tests".into(),
        })
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Deterministic incompressible bytes (xorshift64*), for test payloads.
pub fn pseudo_random(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `drgw tap` process serving one primary file, paired with and
/// protected on `gateway`.
pub struct Tap {
    pub directory: tempfile::TempDir,
    pub config_path: PathBuf,
    pub primary: PathBuf,
    pub port: u16,
    pub disk: String,
    pub log_path: PathBuf,
    pub group_id: u64,
    child: Option<Child>,
}

impl Tap {
    pub fn start(gateway: &Daemon, disk: &str, size_bytes: u64, mode: &str) -> Tap {
        let directory = tempfile::tempdir().unwrap();
        let primary = directory.path().join("primary.img");
        fs::File::create(&primary)
            .unwrap()
            .set_len(size_bytes)
            .unwrap();
        let port = free_port();
        let config_path = directory.path().join("tap.toml");
        let text = format!(
            "[tap]\nname = \"tap-1\"\nstate_dir = \"{state}\"\n\n\
             [gateway]\naddress = \"{gateway}\"\nfingerprint = \"{fingerprint}\"\n\n\
             [nbd]\naddress = \"127.0.0.1\"\nport = {port}\n\n\
             [log]\nlevel = \"debug\"\n\n\
             [[disk]]\nname = \"{disk}\"\npath = \"{primary}\"\nmode = \"{mode}\"\ngrain_bytes = 65536\n",
            state = directory.path().join("state").display(),
            gateway = gateway.address(),
            fingerprint = gateway.fingerprint(),
            primary = primary.display(),
        );
        fs::write(&config_path, text).unwrap();
        pair_tap(gateway, &config_path);
        let protected = gateway.cli_ok(&[
            "protect",
            disk,
            "--group",
            "group-1",
            "--tap",
            "tap-1",
            "--size",
            &size_bytes.to_string(),
            "--json",
        ]);
        let protected: serde_json::Value = serde_json::from_str(&protected).unwrap();
        let mut tap = Tap {
            log_path: directory.path().join("tap.log"),
            directory,
            config_path,
            primary,
            port,
            disk: disk.to_string(),
            group_id: protected["group_id"].as_u64().unwrap(),
            child: None,
        };
        tap.spawn();
        let name = disk.to_string();
        gateway.wait_for("the tap to attach", Duration::from_secs(20), |status| {
            status["protected_disks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["name"] == name.as_str() && d["attached"] == true)
        });
        tap
    }

    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(BINARY)
            .arg("--config")
            .arg(&self.config_path)
            .arg("tap")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tap did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, self.disk)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn status(&self) -> serde_json::Value {
        let path = self.directory.path().join("state/status.json");
        fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Polls the tap's status file until `condition` holds.
    pub fn wait_status(
        &self,
        what: &str,
        limit: Duration,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status();
            if condition(&status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tap: waited {limit:?} for {what}: {status:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every forward is acknowledged and the dirty map is clean,
    /// as shown by a status written after this call began (an older one may
    /// predate the writes just made).
    pub fn wait_settled(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let called_ms = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()) as u64;
        loop {
            let status = self.status();
            let fresh = status["updated_unix_ms"].as_u64().unwrap_or(0) > called_ms;
            let settled = fresh
                && status["gateway_connected"] == true
                && status["pending_bytes"] == 0
                && status["disks"].as_array().is_some_and(|disks| {
                    disks
                        .iter()
                        .all(|d| d["dirty_bytes"] == 0 && d["lost_bytes"] == 0)
                });
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tap not settled: {status:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Replays a group's staging log into a zeroed image of `size_bytes`
/// (the gateway must be stopped). Returns the image.
/// Pins the tap of `tap_config` on `gateway` as `tap-1`.
pub fn pair_tap(gateway: &Daemon, tap_config: &Path) {
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(tap_config)
        .args(["tap", "--print-fingerprint"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let fingerprint = text
        .lines()
        .find_map(|line| line.strip_prefix("fingerprint"))
        .unwrap()
        .trim()
        .to_string();
    gateway.cli_ok(&[
        "pair",
        "add",
        "--name",
        "tap-1",
        "--tap",
        "--fingerprint",
        &fingerprint,
    ]);
}

pub fn replay_staging(gateway: &Daemon, group_id: u64, size_bytes: u64) -> Vec<u8> {
    use drgw_staging::{RecordBody, StagingConfig, StagingLog};
    let directory = gateway
        .directory
        .path()
        .join(format!("cache/staging/group-{group_id}"));
    let config = StagingConfig::new(&directory, group_id as u32, 1 << 40);
    let (log, _report) = StagingLog::open(config).unwrap();
    let mut image = vec![0u8; size_bytes as usize];
    let runtime = runtime();
    let mut next = 1u64;
    loop {
        let records = runtime.block_on(log.read_from(next, 64 << 20)).unwrap();
        let Some(last) = records.last() else {
            return image;
        };
        next = last.sequence + 1;
        for record in records {
            match record.body {
                RecordBody::Write { offset, data, .. } => {
                    image[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                }
                RecordBody::Trim { offset, length, .. } => {
                    image[offset as usize..(offset + length) as usize].fill(0);
                }
                _ => {}
            }
        }
    }
}

/// Where two images differ, in 64 KiB blocks, for assertion messages.
pub fn describe_difference(left: &[u8], right: &[u8]) -> String {
    if left.len() != right.len() {
        return format!("lengths differ: {} vs {}", left.len(), right.len());
    }
    let blocks: Vec<usize> = left
        .chunks(65536)
        .zip(right.chunks(65536))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(index, _)| index)
        .collect();
    let shown: Vec<String> = blocks
        .iter()
        .take(16)
        .map(|b| format!("{:#x}", b * 65536))
        .collect();
    format!(
        "{} of {} 64 KiB blocks differ, first at {}",
        blocks.len(),
        left.len() / 65536,
        shown.join(", ")
    )
}
