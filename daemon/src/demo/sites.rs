//! One demo appliance: a `drgw serve` child process with its own config,
//! state, port and control socket under the demo's temporary directory.

use crate::control::{self, PairInfo, Request};
use crate::tls::{self, Fingerprint, Identity, PeerKind};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Site {
    pub name: String,
    pub address: String,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    pub fingerprint: Fingerprint,
    child: Option<Child>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Site {
    pub async fn start(root: &Path, name: &str) -> anyhow::Result<Site> {
        let directory = root.join(name);
        std::fs::create_dir_all(&directory)?;
        let port = free_port()?;
        let socket = directory.join("control.sock");
        let config = format!(
            "[appliance]\nname = \"{name}\"\nstate_dir = \"{state}\"\n\n\
             [replication]\naddress = \"127.0.0.1\"\nport = {port}\nheartbeat_interval_ms = 200\n\
             peer_timeout_ms = 2000\nconnect_retry_ms_max = 1000\n\n\
             [control]\nsocket = \"{socket}\"\n\n\
             [volumes]\ncache = \"{cache}\"\nretention = \"{retention}\"\n",
            state = directory.join("state").display(),
            socket = socket.display(),
            cache = directory.join("cache").display(),
            retention = directory.join("retention").display(),
        );
        let config_path = directory.join("drgw.toml");
        std::fs::write(&config_path, config)?;
        let log_path = directory.join("drgw.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(std::env::current_exe()?)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting drgw serve")?;
        let mut site = Site {
            name: name.to_string(),
            address: format!("127.0.0.1:{port}"),
            socket,
            log_path,
            fingerprint: Fingerprint::of_certificate(b""),
            child: Some(child),
        };
        site.fingerprint = site.wait_ready().await?.fingerprint;
        Ok(site)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<PairInfo> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(value) = control::request(&self.socket, Request::PairShow).await {
                return Ok(serde_json::from_value(value)?);
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited at startup ({status}); see {}",
                    self.name,
                    self.log_path.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not start within 15 s; see {}",
                    self.name,
                    self.log_path.display()
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
        control::request(&self.socket, request).await?;
        Ok(())
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
            let _ = crate::wire::read_frame(&mut stream, crate::wire::BODY_BYTES_DEFAULT).await;
        }
        let wanted = stranger.fingerprint().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let value = control::request(&self.socket, Request::Status).await?;
            let status: crate::status::Status = serde_json::from_value(value)?;
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

    /// SIGTERM, then waits for exit 0.
    pub fn stop(&mut self) -> anyhow::Result<Duration> {
        let mut child = self.child.take().context("already stopped")?;
        let started = Instant::now();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "{} exited with {status}; see {}",
                        self.name,
                        self.log_path.display()
                    );
                }
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                bail!("{} did not exit within 10 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
