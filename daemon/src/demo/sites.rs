//! One demo appliance: a `drgw serve` child process with its own config,
//! state, port and control socket under the demo's temporary directory.
//! Both appliances get the same settings: roles are per group, so site-a
//! is the source of the demo's group because the tap forwards to it, and
//! site-b its target because site-a replicates to it.

use super::process::ChildProcess;
use crate::control::{self, PairInfo, Request};
use crate::status::Status;
use anyhow::{bail, Context};
use drgw_tls::{self as tls, Fingerprint, Identity, PeerKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Recovery points every second (default 5 s), so a short demo has many.
const POINT_INTERVAL_MS: u64 = 1000;

pub struct Site {
    pub name: String,
    pub address: String,
    pub socket: PathBuf,
    pub fingerprint: Fingerprint,
    pub process: ChildProcess,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The appliance's config: loopback, short heartbeats, a staging and a
/// journal sized for a demo (segments of 32 and 16 MiB), points every second.
fn config_text(
    directory: &Path,
    name: &str,
    port: u16,
    socket: &Path,
    recovery_port: u16,
) -> String {
    format!(
        "[appliance]\nname = \"{name}\"\nstate_dir = \"{state}\"\n\n\
         [replication]\naddress = \"127.0.0.1\"\nport = {port}\nheartbeat_interval_ms = 200\n\
         peer_timeout_ms = 2000\nconnect_retry_ms_max = 1000\npoint_interval_ms = {POINT_INTERVAL_MS}\n\n\
         [control]\nsocket = \"{socket}\"\n\n\
         [volumes]\ncache = \"{cache}\"\nretention = \"{retention}\"\n\n\
         [staging]\ncapacity_bytes = 1073741824\nsegment_bytes = 33554432\n\n\
         [retention]\nsegment_bytes = 16777216\n\n\
         [recovery]\naddress = \"127.0.0.1\"\nport = {recovery_port}\n\n\
         [log]\nlevel = \"info\"\n",
        state = directory.join("state").display(),
        socket = socket.display(),
        cache = directory.join("cache").display(),
        retention = directory.join("retention").display(),
    )
}

impl Site {
    pub async fn start(root: &Path, name: &str) -> anyhow::Result<Site> {
        let directory = root.join(name);
        std::fs::create_dir_all(&directory)?;
        let port = free_port()?;
        let socket = directory.join("control.sock");
        let config_path = directory.join("drgw.toml");
        let recovery_port = free_port()?;
        std::fs::write(
            &config_path,
            config_text(&directory, name, port, &socket, recovery_port),
        )?;
        let process = ChildProcess::spawn(
            &format!("gateway {name}"),
            [
                "serve".as_ref(),
                "--config".as_ref(),
                config_path.as_os_str(),
            ],
            &directory.join("drgw.log"),
        )?;
        let mut site = Site {
            name: name.to_string(),
            address: format!("127.0.0.1:{port}"),
            socket,
            fingerprint: Fingerprint::of_certificate(b""),
            process,
        };
        site.fingerprint = site.wait_ready().await?.fingerprint;
        Ok(site)
    }

    /// Sends a control request; the error names this site.
    pub async fn request(&self, request: Request) -> anyhow::Result<serde_json::Value> {
        control::request(&self.socket, request)
            .await
            .with_context(|| format!("asking {}", self.name))
    }

    pub async fn status(&self) -> anyhow::Result<Status> {
        let value = self.request(Request::Status).await?;
        serde_json::from_value(value).with_context(|| format!("reading {}'s status", self.name))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<PairInfo> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(value) = control::request(&self.socket, Request::PairShow).await {
                return Ok(serde_json::from_value(value)?);
            }
            self.process.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not start within 15 s; see {}",
                    self.name,
                    self.process.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn pin(&self, other: &Site) -> anyhow::Result<()> {
        let request = Request::PairAdd {
            name: other.name.clone(),
            kind: PeerKind::Appliance,
            address: Some(other.address.clone()),
            fingerprint: other.fingerprint,
        };
        self.request(request).await?;
        Ok(())
    }

    /// Waits until the link to `peer` is up and has carried two heartbeats.
    pub async fn wait_for_link(&self, peer: &str) -> anyhow::Result<Status> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status().await?;
            let up = status.peers.iter().any(|p| {
                p.name == peer
                    && p.link.state == crate::link::LinkState::Connected
                    && p.link.heartbeats_received >= 2
            });
            if up {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} has no link to {peer} after 20 s; see {}",
                    self.name,
                    self.process.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connects with a certificate nobody pinned; returns the refusal reason
    /// the appliance recorded.
    pub async fn knock_unpaired(&self, root: &Path) -> anyhow::Result<String> {
        let stranger = Identity::load_or_create(&root.join("stranger"), "stranger")?;
        let config = tls::client_config(&stranger, self.fingerprint)?;
        let tcp = tokio::net::TcpStream::connect(&self.address).await?;
        let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME)?;
        if let Ok(mut stream) = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            // TLS 1.3: the verdict on our certificate arrives on the first read.
            let _ = drgw_wire::read_frame(&mut stream, drgw_wire::BODY_BYTES_DEFAULT).await;
        }
        let wanted = stranger.fingerprint().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = self.status().await?;
            if let Some(refusal) = status.refusals.iter().find(|r| r.reason.contains(&wanted)) {
                return Ok(refusal.reason.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not record the refusal of an unpaired client",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
