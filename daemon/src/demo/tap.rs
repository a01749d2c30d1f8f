//! The demo's tap: a `drgw tap` child serving file-backed disks of one
//! consistency group over NBD on loopback, paired with and protected on
//! the source appliance exactly as an operator would (`tap
//! --print-fingerprint`, `pair add --tap`, `protect`).

use super::process::ChildProcess;
use super::sites::{free_port, Site};
use crate::control::Request;
use anyhow::{bail, Context};
use drgw_tls::PeerKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The tap's name, as pinned on the source.
const TAP_NAME: &str = "demo-tap";
/// How long the tap may take to attach its disks.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

pub struct DemoDisk {
    pub name: String,
    pub size_bytes: u64,
    /// The primary disk: a sparse file in the workspace.
    pub primary: PathBuf,
}

pub struct DemoTap {
    /// `127.0.0.1:PORT` of its NBD exports, one per disk, named after it.
    pub nbd_address: String,
    pub disks: Vec<DemoDisk>,
    pub process: ChildProcess,
}

impl DemoTap {
    /// Creates the primaries, pairs the tap on `source`, protects each disk
    /// in `group`, starts the tap and waits until every disk is attached.
    pub async fn start(
        root: &Path,
        source: &Site,
        group: &str,
        disk_names: &[&str],
        size_bytes: u64,
    ) -> anyhow::Result<DemoTap> {
        let directory = root.join("tap");
        std::fs::create_dir_all(&directory)?;
        let disks = create_primaries(&directory, disk_names, size_bytes)?;
        let port = free_port()?;
        let config_path = directory.join("tap.toml");
        std::fs::write(&config_path, config_text(&directory, source, port, &disks))?;
        let fingerprint = tap_fingerprint(&config_path)?;
        source
            .request(Request::PairAdd {
                name: TAP_NAME.to_string(),
                kind: PeerKind::Tap,
                address: None,
                fingerprint: fingerprint.parse()?,
            })
            .await?;
        for disk in &disks {
            source
                .request(Request::Protect {
                    disk: disk.name.clone(),
                    group: group.to_string(),
                    tap: TAP_NAME.to_string(),
                    size_bytes,
                    peer: None,
                })
                .await?;
        }
        let process = ChildProcess::spawn(
            "tap",
            ["--config".as_ref(), config_path.as_os_str(), "tap".as_ref()],
            &directory.join("tap.log"),
        )?;
        let mut tap = DemoTap {
            nbd_address: format!("127.0.0.1:{port}"),
            disks,
            process,
        };
        tap.wait_attached(source).await?;
        Ok(tap)
    }

    /// Waits until the source shows every disk attached and the tap's NBD
    /// listener accepts connections.
    async fn wait_attached(&mut self, source: &Site) -> anyhow::Result<()> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            self.process.check_running()?;
            let status = source.status().await?;
            let attached = status
                .protected_disks
                .iter()
                .filter(|disk| disk.attached)
                .count();
            let listening = tokio::net::TcpStream::connect(&self.nbd_address)
                .await
                .is_ok();
            if attached == self.disks.len() && listening {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the tap attached {attached} of {} disks in {} s; see {}",
                    self.disks.len(),
                    ATTACH_TIMEOUT.as_secs(),
                    self.process.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn create_primaries(
    directory: &Path,
    names: &[&str],
    size_bytes: u64,
) -> anyhow::Result<Vec<DemoDisk>> {
    names
        .iter()
        .map(|name| {
            let primary = directory.join(format!("{name}.img"));
            std::fs::File::create(&primary)
                .and_then(|file| file.set_len(size_bytes))
                .with_context(|| format!("creating {}", primary.display()))?;
            Ok(DemoDisk {
                name: name.to_string(),
                size_bytes,
                primary,
            })
        })
        .collect()
}

/// The tap's config (docs/tap-config.md): async disks, NBD on loopback.
fn config_text(directory: &Path, source: &Site, port: u16, disks: &[DemoDisk]) -> String {
    let mut text = format!(
        "[tap]\nname = \"{TAP_NAME}\"\nstate_dir = \"{state}\"\n\n\
         [gateway]\naddress = \"{gateway}\"\nfingerprint = \"{fingerprint}\"\n\n\
         [nbd]\naddress = \"127.0.0.1\"\nport = {port}\n\n[log]\nlevel = \"info\"\n",
        state = directory.join("state").display(),
        gateway = source.address,
        fingerprint = source.fingerprint,
    );
    for disk in disks {
        text.push_str(&format!(
            "\n[[disk]]\nname = \"{}\"\npath = \"{}\"\nmode = \"async\"\n",
            disk.name,
            disk.primary.display()
        ));
    }
    text
}

/// `drgw tap --print-fingerprint`: creates the tap's identity, prints it.
fn tap_fingerprint(config_path: &Path) -> anyhow::Result<String> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(config_path)
        .args(["tap", "--print-fingerprint"])
        .env_remove("DRGW_CONFIG")
        .output()
        .context("running drgw tap --print-fingerprint")?;
    if !output.status.success() {
        bail!(
            "drgw tap --print-fingerprint failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("fingerprint"))
        .map(|rest| rest.trim().to_string())
        .context("drgw tap --print-fingerprint printed no fingerprint")
}
