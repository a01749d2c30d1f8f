//! `drgw serve`: the daemon. Startup opens the state (lock, catalog,
//! identity), binds the 9443 listener and the control socket, then runs
//! until SIGTERM/SIGINT, when it stops accepting, closes links with an
//! ERROR(ShuttingDown), lets in-flight requests finish (bounded by
//! `shutdown.drain_timeout_ms`) and exits 0.

mod staging_key;

use crate::appliance::{Appliance, Settings};
use crate::control::{self, ControlError};
use crate::link;
use drgw_catalog::{Catalog, CatalogError};
use drgw_config::{Config, ConfigError};
use drgw_ingest::{Ingest, StagingPlan};
use drgw_io::{clock, fsutil};
use drgw_process::logging::{self, LogControl};
use drgw_process::notify;
use drgw_process::signals::{self, SignalEvent};
use drgw_process::state_lock::{LockError, StateLock};
use drgw_tls::{self as tls, Identity, PinStore, TlsError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
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
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("staging encryption key {path}: {reason}")]
    StagingKey { path: PathBuf, reason: String },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot start the runtime or the signal thread: {0}")]
    Runtime(std::io::Error),
}

/// Runs the daemon with the config at `config_path` until a terminate signal.
pub fn run(config_path: &Path) -> Result<(), ServeError> {
    let config = Config::load(config_path)?;
    let log = logging::init(config.log.level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("drgw")
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(serve(config_path, config, log))
}

async fn serve(config_path: &Path, config: Config, log: LogControl) -> Result<(), ServeError> {
    let mut signals = signals::listen().map_err(ServeError::Runtime)?;
    let state_dir = &config.appliance.state_dir;
    fsutil::create_private_dir(state_dir, 0o700).map_err(|source| ServeError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let _lock = StateLock::acquire(state_dir)?;
    let catalog = Arc::new(Catalog::open(state_dir)?);
    let id = catalog.appliance_id()?;
    let identity = Identity::load_or_create(state_dir, &format!("drgw-{id}"))?;
    let pins = Arc::new(PinStore::new(catalog.peers()?));
    let address = config.replication_listen_addr();
    let listener = link::bind(address)
        .await
        .map_err(|source| ServeError::Listen {
            address: address.to_string(),
            source,
        })?;
    let listen_address = listener.local_addr().unwrap_or(address);
    let control_listener = control::bind(&config.control.socket).await?;
    let tls_config = tls::server_config(&identity, pins.clone())?;
    let key = match config.staging.encrypt || config.retention.encrypt {
        true => Some(staging_key::load_or_create(state_dir)?),
        false => None,
    };
    let plan = StagingPlan {
        cache_directory: config.volumes.cache.clone(),
        capacity_bytes: config.staging.capacity_bytes,
        segment_bytes: config.staging.segment_bytes,
        encryption_key: key.filter(|_| config.staging.encrypt),
        require_mounted: config.volumes.require_mounted,
    };
    let journal_key = key;
    let ingest = Arc::new(Ingest::new(plan, catalog.disks()?));
    ingest.open_all().await;
    let cancel = CancellationToken::new();
    let targets = Arc::new(drgw_replica::TargetRegistry::new(
        &config.volumes.retention,
        target_policy(&config, journal_key),
        cancel.clone(),
    ));
    targets.open_existing();
    let recovery_nbd = Arc::new(drgw_nbd::NbdServer::new(
        Vec::new(),
        drgw_nbd::Limits::default(),
    ));
    let recovery_address = std::net::SocketAddr::new(config.recovery.address, config.recovery.port);
    let recovery_listener = match tokio::net::TcpListener::bind(recovery_address).await {
        Ok(listener) => Ok(listener),
        Err(error) => {
            // Not fatal: replication goes on; exports say why they cannot be served.
            tracing::error!(address = %recovery_address, %error, "recovery NBD listener not up");
            Err(format!("cannot listen on {recovery_address}: {error}"))
        }
    };
    let recovery = Arc::new(drgw_replica::Recovery::new(
        targets.clone(),
        catalog.clone(),
        recovery_nbd.clone(),
        recovery_listener
            .as_ref()
            .map(|l| l.local_addr().unwrap_or(recovery_address))
            .map_err(Clone::clone),
    ));
    recovery.restore().await;
    drgw_replica::set_event_hook(config.events_command());
    let tracker = TaskTracker::new();
    let appliance = Arc::new(Appliance {
        id,
        name: config.appliance.name.clone(),
        identity,
        catalog,
        pins,
        links: Default::default(),
        refusals: Default::default(),
        ingest,
        targets,
        recovery,
        ship_board: Default::default(),
        throttle: Arc::new(crate::throttle::Throttle::new(
            crate::throttle::BandwidthSchedule::from(&config.bandwidth),
        )),
        listen_address,
        max_frame_bytes: config.replication.max_frame_bytes,
        started: Instant::now(),
        started_unix_s: clock::unix_seconds(),
        settings: watch::Sender::new(Settings::from_config(&config)),
        pins_version: watch::Sender::new(0),
        jobs: crate::control::JobRegistry::new(cancel.child_token(), tracker.clone()),
        calls: Default::default(),
        resyncs: crate::resync::ResyncBoard::new(cancel.child_token(), tracker.clone()),
    });
    crate::resync::resume_all(&appliance);
    crate::reprotect::resume_all(&appliance).await;
    tracker.spawn(link::run_listener(
        listener,
        appliance.clone(),
        tls_config,
        tracker.clone(),
        cancel.clone(),
    ));
    tracker.spawn(link::run_dialers(
        appliance.clone(),
        tracker.clone(),
        cancel.clone(),
    ));
    tracker.spawn(control::run_control(
        control_listener,
        appliance.clone(),
        tracker.clone(),
        cancel.clone(),
    ));
    if let Ok(listener) = recovery_listener {
        tracker.spawn(recovery_nbd.serve(listener, tracker.clone(), cancel.clone()));
    }
    tracker.spawn(notify::watchdog(cancel.clone()));
    tracker.spawn(take_points(
        appliance.clone(),
        config.point_interval(),
        cancel.clone(),
    ));
    tracing::info!(
        name = %appliance.name, id = %appliance.id, fingerprint = %appliance.identity.fingerprint(),
        listen = %listen_address, control = %config.control.socket.display(), log = log.destination,
        "drgw {} serving", env!("CARGO_PKG_VERSION")
    );
    notify::ready(&format!("serving on {listen_address}"));
    let reason = loop {
        match signals.recv().await {
            Some(SignalEvent::Reload) => reload(config_path, &config, &appliance, &log),
            Some(SignalEvent::Terminate(name)) => break name,
            None => break "signal thread ended",
        }
    };
    drain(reason, &appliance, &tracker, &cancel, &mut signals).await;
    appliance.recovery.flush_all();
    let _ = std::fs::remove_file(&config.control.socket);
    Ok(())
}

/// Every `interval`: a crash-consistent point in each protected group
/// (source side), and the RPO check of each replicated group (target side).
async fn take_points(appliance: Arc<Appliance>, interval: Duration, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rpo_checked = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        appliance.ingest.take_points().await;
        if rpo_checked.elapsed() >= Duration::from_secs(1) {
            rpo_checked = Instant::now();
            appliance.targets.check_rpo();
        }
    }
}

/// Retention and RPO policy of replicated groups, from the config.
fn target_policy(config: &Config, key: Option<[u8; 32]>) -> drgw_replica::TargetPolicy {
    drgw_replica::TargetPolicy::from_config(config, key)
}

/// Stops accepting, closes links, and waits for in-flight work; a second
/// terminate signal stops the wait.
async fn drain(
    reason: &str,
    appliance: &Appliance,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    signals: &mut tokio::sync::mpsc::Receiver<SignalEvent>,
) {
    let timeout = appliance.settings().drain_timeout;
    tracing::info!(
        signal = reason,
        timeout_ms = timeout.as_millis() as u64,
        "draining"
    );
    notify::stopping();
    cancel.cancel();
    tracker.close();
    let second_signal = async {
        while let Some(event) = signals.recv().await {
            if matches!(event, SignalEvent::Terminate(_)) {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tracker.wait() => tracing::info!("drained; exiting"),
        _ = tokio::time::sleep(timeout) => {
            tracing::warn!(tasks = tracker.len(), "drain timed out; exiting with work abandoned")
        }
        _ = second_signal => tracing::warn!("second terminate signal; exiting without waiting"),
    }
}

/// SIGHUP: re-reads the config. Applies the reloadable settings and the log
/// level; names what needs a restart; keeps everything on a bad file.
/// `started` is the config the process started with: restart-only fields
/// keep its values until a restart, so changes are judged against it.
fn reload(config_path: &Path, started: &Config, appliance: &Appliance, log: &LogControl) {
    notify::reloading();
    match Config::load(config_path) {
        Err(error) => {
            tracing::error!("SIGHUP: config not reloaded, keeping the running one:\n{error}");
        }
        Ok(new) => {
            let restart = started.changes_needing_restart(&new);
            log.set_level(new.log.level);
            appliance.settings.send_replace(Settings::from_config(&new));
            appliance
                .throttle
                .set_schedule(crate::throttle::BandwidthSchedule::from(&new.bandwidth));
            drgw_replica::set_event_hook(new.events_command());
            if restart.is_empty() {
                tracing::info!("SIGHUP: config reloaded");
            } else {
                tracing::warn!(
                    needs_restart = %restart.join(", "),
                    "SIGHUP: config reloaded; these changes take effect only after a restart"
                );
            }
        }
    }
    notify::ready("serving");
}
