//! The state one running appliance shares between its tasks: who it is,
//! whom it trusts, its links, and the settings a SIGHUP can change.

use crate::link::{LinkRegistry, RefusalLog};
use drgw_catalog::Catalog;
use drgw_config::Config;
use drgw_ingest::Ingest;
use drgw_tls::{Identity, PinStore};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// The settings that apply without a restart (see docs/config.md).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub peer_timeout: Duration,
    pub connect_retry_max: Duration,
    pub drain_timeout: Duration,
    pub cache_volume: PathBuf,
    pub retention_volume: PathBuf,
    /// `[volumes] require_mounted`: a volume not mounted is a problem.
    pub volumes_require_mounted: bool,
    /// zstd level of shipped batches; `None` = adaptive.
    pub zstd_level: Option<i32>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let millis = |value: u64| Duration::from_millis(value);
        Settings {
            heartbeat_interval: millis(u64::from(config.replication.heartbeat_interval_ms)),
            peer_timeout: millis(u64::from(config.replication.peer_timeout_ms)),
            connect_retry_max: millis(u64::from(config.replication.connect_retry_ms_max)),
            drain_timeout: millis(u64::from(config.shutdown.drain_timeout_ms)),
            cache_volume: config.volumes.cache.clone(),
            retention_volume: config.volumes.retention.clone(),
            volumes_require_mounted: config.volumes.require_mounted,
            zstd_level: config.zstd_level(),
        }
    }
}

pub struct Appliance {
    pub id: Uuid,
    pub name: String,
    pub identity: Identity,
    pub catalog: Arc<Catalog>,
    pub pins: Arc<PinStore>,
    pub links: LinkRegistry,
    pub refusals: RefusalLog,
    /// The I/O receiver: stages what taps forward.
    pub ingest: Arc<Ingest>,
    /// Groups replicated to this appliance (target side).
    pub targets: Arc<drgw_replica::TargetRegistry>,
    /// Recovery exports, test failover and failover (target side).
    pub recovery: Arc<drgw_replica::Recovery>,
    /// Shipping figures of the groups this appliance replicates (source side).
    pub ship_board: Arc<crate::ship::ShipBoard>,
    /// Bandwidth limit of shipping, on its schedule.
    pub throttle: Arc<crate::throttle::Throttle>,
    pub listen_address: SocketAddr,
    pub max_frame_bytes: u32,
    pub started: Instant,
    pub started_unix_s: u64,
    /// Live settings; tasks read the current value each time they need it.
    pub settings: watch::Sender<Settings>,
    /// Bumped whenever the pinned set changes, so dialers follow it.
    pub pins_version: watch::Sender<u64>,
    /// Long control operations (materialize) running or recently finished.
    pub jobs: crate::control::JobRegistry,
    /// Requests sent to paired appliances awaiting answers (resync sums).
    pub calls: crate::link::PeerCalls,
    /// Resyncs of the groups this appliance protects (source side).
    pub resyncs: crate::resync::ResyncBoard,
}

impl Appliance {
    pub fn settings(&self) -> Settings {
        self.settings.borrow().clone()
    }

    /// Re-reads the protected disks from the catalog into the ingest view.
    pub fn refresh_disks(&self) -> Result<(), drgw_catalog::CatalogError> {
        self.ingest.replace_disks(self.catalog.disks()?);
        Ok(())
    }

    /// Re-reads the pinned peers from the catalog into the handshake view.
    pub fn refresh_pins(&self) -> Result<(), drgw_catalog::CatalogError> {
        self.pins.replace_all(self.catalog.peers()?);
        self.pins_version.send_modify(|version| *version += 1);
        Ok(())
    }
}
