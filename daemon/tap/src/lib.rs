//! The tap (`drgw tap`): the I/O intercept in front of protected disks. It
//! serves each disk over NBD, writes to the primary, and forwards every
//! write, trim and flush to the source gateway over 9443 (TLS 1.3, pinned).
//! A write is acknowledged once it is on the primary and its grains are
//! durably marked in the dirty map (async mode), or also acknowledged by the
//! gateway (sync mode, while the link is up). Grains are cleared as the
//! gateway acknowledges; whatever was not acknowledged is resynchronised
//! from the primary after a reconnect or a restart.

pub mod disk;
pub mod forwarder;
pub mod mirror;
pub mod range_lock;
pub mod tracker;

use disk::{Mode, TapBackend, TapDisk};
use drgw_config::{ConfigError, ForwardMode, TapConfig};
use drgw_dirtymap::{DirtyMap, DirtyMapError};
use drgw_io::fsutil;
use drgw_nbd::{BlockBackend, Export, FileBackend, Limits, NbdServer};
use drgw_process::logging;
use drgw_process::notify;
use drgw_process::signals::{self, SignalEvent};
use drgw_process::state_lock::{LockError, StateLock};
use drgw_tls::{Fingerprint, FingerprintParseError, Identity, TlsError};
use forwarder::{Forwarder, GatewayTarget};
use mirror::{MirrorBackend, MirrorDisk};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracker::DiskTracker;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("gateway fingerprint: {0}")]
    Fingerprint(#[from] FingerprintParseError),
    #[error("cannot open the primary disk {path}: {source}")]
    Primary {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    DirtyMap(#[from] DirtyMapError),
    #[error("cannot listen for NBD on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("cannot start the runtime or the signal thread: {0}")]
    Runtime(std::io::Error),
}

/// How long SIGTERM waits for queued forwards to reach the gateway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// Prints the tap's certificate fingerprint (creating its identity on first
/// use), for `drgw pair add --tap` on the gateway.
pub fn print_identity(config_path: &Path) -> Result<(), TapError> {
    let config = TapConfig::load(config_path)?;
    let identity = open_identity(&config)?;
    let fingerprint = identity.fingerprint();
    println!("tap          {}", config.tap.name);
    println!("fingerprint  {fingerprint}");
    println!("pairing code {}", fingerprint.pairing_code());
    println!();
    println!("On the source gateway, run:");
    println!(
        "  drgw pair add --name {} --tap --fingerprint {fingerprint}",
        config.tap.name
    );
    Ok(())
}

fn open_identity(config: &TapConfig) -> Result<Identity, TapError> {
    let state_dir = &config.tap.state_dir;
    fsutil::create_private_dir(state_dir, 0o700).map_err(|source| TapError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    Ok(Identity::load_or_create(
        state_dir,
        &format!("drgw-tap-{}", config.tap.name),
    )?)
}

/// Runs the tap until SIGTERM/SIGINT.
pub fn run(config_path: &Path) -> Result<(), TapError> {
    let config = TapConfig::load(config_path)?;
    let _log = logging::init(config.log.level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("drgw-tap")
        .build()
        .map_err(TapError::Runtime)?;
    runtime.block_on(serve(config))
}

fn open_disks(config: &TapConfig) -> Result<Vec<Arc<TapDisk>>, TapError> {
    let maps = config.tap.state_dir.join("dirty");
    fsutil::create_private_dir(&maps, 0o700).map_err(|source| TapError::StateDir {
        path: maps.clone(),
        source,
    })?;
    let mut disks = Vec::new();
    for disk in config.disks.iter().filter(|disk| !disk.is_mirror()) {
        let primary = FileBackend::open(&disk.path, false).map_err(|source| TapError::Primary {
            path: disk.path.clone(),
            source,
        })?;
        let size_bytes = primary.size_bytes();
        let (map, report) = DirtyMap::open(
            &maps.join(format!("{}.map", disk.name)),
            size_bytes,
            disk.grain_bytes,
        )?;
        if let Some(from) = report.grown_from {
            tracing::info!(disk = %disk.name, from, to = size_bytes,
                "primary grew: its new part is resynced by the gateway after `drgw resize`");
        }
        if report.pages_torn > 0 || report.geometry_changed || report.dirty_grains > 0 {
            tracing::warn!(disk = %disk.name, dirty_grains = report.dirty_grains, pages_torn = report.pages_torn,
                geometry_changed = report.geometry_changed, "dirty regions to resynchronise");
        }
        disks.push(Arc::new(TapDisk {
            name: disk.name.clone(),
            size_bytes,
            mode: match disk.mode {
                ForwardMode::Async => Mode::Async,
                ForwardMode::Sync | ForwardMode::Mirror => Mode::Sync,
            },
            primary: Arc::new(primary),
            tracker: Arc::new(DiskTracker::with_extents(
                map,
                size_bytes,
                disk.extent_bytes,
                tracker::HOT_EXTENTS_BYTES_MAX,
            )),
            ranges: Default::default(),
        }));
    }
    Ok(disks)
}

/// Mirror-target disks: no primary, no dirty map (see `mirror`).
fn mirror_disks(config: &TapConfig) -> Vec<Arc<MirrorDisk>> {
    let mirrors = config.disks.iter().filter(|disk| disk.is_mirror());
    mirrors
        .map(|disk| {
            Arc::new(MirrorDisk {
                name: disk.name.clone(),
                size_bytes: disk.size_bytes,
                ..MirrorDisk::default()
            })
        })
        .collect()
}

async fn serve(config: TapConfig) -> Result<(), TapError> {
    let mut signals = signals::listen().map_err(TapError::Runtime)?;
    let identity = Arc::new(open_identity(&config)?);
    let _lock = StateLock::acquire(&config.tap.state_dir)?;
    let disks = open_disks(&config)?;
    let mirrors = mirror_disks(&config);
    let forwarder = Arc::new(
        Forwarder::new(
            disks.clone(),
            config.forwarding.queue_bytes_max as usize,
            config.forwarding.batch_bytes_max as usize,
        )
        .with_mirrors(mirrors.clone()),
    );
    let mut exports: Vec<Export> = disks
        .iter()
        .enumerate()
        .map(|(number, disk)| Export {
            name: disk.name.clone(),
            description: format!("drgw protected disk {}", disk.name),
            backend: Arc::new(TapBackend {
                number: number as u32,
                disk: disk.clone(),
                forwarder: Arc::downgrade(&forwarder),
            }) as Arc<dyn BlockBackend>,
        })
        .collect();
    exports.extend(mirrors.iter().enumerate().map(|(index, disk)| Export {
        name: disk.name.clone(),
        description: format!("drgw mirror target {}", disk.name),
        backend: Arc::new(MirrorBackend {
            number: (disks.len() + index) as u32,
            disk: disk.clone(),
            forwarder: Arc::downgrade(&forwarder),
            link_wait: mirror::LINK_WAIT,
        }) as Arc<dyn BlockBackend>,
    }));
    let address = config.nbd_listen_addr();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| TapError::Listen {
            address: address.to_string(),
            source,
        })?;
    let target = GatewayTarget {
        address: config.gateway.address.clone(),
        fingerprint: config.gateway.fingerprint.parse::<Fingerprint>()?,
        tap_name: config.tap.name.clone(),
    };
    let nbd = Arc::new(NbdServer::new(exports, Limits::default()));
    let tasks = TaskTracker::new();
    let nbd_cancel = CancellationToken::new();
    let link_cancel = CancellationToken::new();
    tasks.spawn(
        forwarder
            .clone()
            .run(target, identity.clone(), link_cancel.clone()),
    );
    tasks.spawn(nbd.serve(listener, tasks.clone(), nbd_cancel.clone()));
    tasks.spawn(persist_loop(
        forwarder.clone(),
        config.tap.state_dir.clone(),
        link_cancel.clone(),
    ));
    tracing::info!(tap = %config.tap.name, nbd = %address, gateway = %config.gateway.address,
        disks = disks.len(), mirrors = mirrors.len(), fingerprint = %identity.fingerprint(), "drgw tap serving");
    notify::ready(&format!("serving NBD on {address}"));
    while let Some(SignalEvent::Reload) = signals.recv().await {
        tracing::info!("SIGHUP: the tap has nothing to reload; restart to apply config changes");
    }
    notify::stopping();
    nbd_cancel.cancel();
    drain(&forwarder).await;
    link_cancel.cancel();
    tasks.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait()).await;
    persist(&disks).await;
    write_status(&forwarder, &config.tap.state_dir).await;
    tracing::info!("tap stopped");
    Ok(())
}

/// Gives queued forwards a chance to reach the gateway before exit; what
/// does not make it stays dirty on disk and is resynchronised next time.
async fn drain(forwarder: &Forwarder) {
    let started = Instant::now();
    while started.elapsed() < DRAIN_TIMEOUT
        && forwarder.connected()
        && forwarder.pending_bytes() > 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn persist(disks: &[Arc<TapDisk>]) {
    for disk in disks {
        let tracker = disk.tracker.clone();
        let name = disk.name.clone();
        let result = tokio::task::spawn_blocking(move || tracker.persist()).await;
        if let Ok(Err(error)) = result {
            tracing::warn!(disk = %name, %error, "cannot write the dirty map's cleared pages");
        }
    }
}

/// Writes cleared dirty-map pages once a second, off the write path, and
/// the tap's status file beside them.
async fn persist_loop(forwarder: Arc<Forwarder>, state_dir: PathBuf, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {
                for disk in forwarder.disks() {
                    disk.tracker.sweep(tracker::SETTLED_CLEAR_AFTER);
                }
                persist(forwarder.disks()).await;
                write_status(&forwarder, &state_dir).await;
            }
        }
    }
}

/// `<state_dir>/status.json`: the tap's figures for operators and tests,
/// replaced atomically each second (docs/ARCHITECTURE.md, "The tap").
async fn write_status(forwarder: &Forwarder, state_dir: &Path) {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = &forwarder.counters;
    let mut disks: Vec<serde_json::Value> = forwarder
        .disks()
        .iter()
        .map(|disk| {
            serde_json::json!({
                "name": disk.name,
                "size_bytes": disk.size_bytes,
                "dirty_bytes": disk.tracker.dirty_bytes(),
                "lost_bytes": disk.tracker.lost_bytes(),
            })
        })
        .collect();
    // A mirror disk owes nothing after a reply (it has no dirty map): its
    // dirty and lost bytes are always 0.
    disks.extend(forwarder.mirrors().iter().map(|disk| {
        serde_json::json!({
            "name": disk.name,
            "size_bytes": disk.size_bytes,
            "mode": "mirror",
            "dirty_bytes": 0,
            "lost_bytes": 0,
            "staged_bytes": disk.staged_bytes.load(Relaxed),
            "failed_requests": disk.failed_requests.load(Relaxed),
            "retried_forwards": disk.retried_forwards.load(Relaxed),
            "refused_reads": disk.refused_reads.load(Relaxed),
        })
    }));
    let status = serde_json::json!({
        "updated_unix_s": drgw_io::clock::unix_seconds(),
        "updated_unix_ms": drgw_io::clock::unix_nanos() / 1_000_000,
        "gateway_connected": forwarder.connected(),
        "pending_bytes": forwarder.pending_bytes(),
        "forwarded_records": counters.forwarded_records.load(Relaxed),
        "acknowledged_records": counters.acknowledged_records.load(Relaxed),
        "dropped_records": counters.dropped_records.load(Relaxed),
        "resynced_bytes": counters.resynced_bytes.load(Relaxed),
        "resync_requests": counters.resync_requests.load(Relaxed),
        "connections": counters.connections.load(Relaxed),
        "disks": disks,
    });
    let path = state_dir.join("status.json");
    let bytes = serde_json::to_vec_pretty(&status).unwrap_or_default();
    let _ = tokio::task::spawn_blocking(move || fsutil::write_atomic(&path, &bytes, 0o600)).await;
}
