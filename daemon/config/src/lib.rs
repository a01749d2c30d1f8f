//! The daemon's configuration: one typed tree, read from TOML
//! (`/etc/drgw/drgw.toml`) and validated once at load.
//!
//! The serde structs below are the schema: every table and field is optional
//! (defaults are those of [`Config::default`], written out in [`EXAMPLE`]),
//! unknown tables and fields are errors, and single-field checks run inside
//! deserialization (`validate`). A bad file yields [`ConfigError::Invalid`]
//! with every problem found, each with its line, column and dotted field
//! (`diagnostics`), not just the first one serde trips on. Which fields a
//! SIGHUP can apply is in `reload`. Reference: `docs/config.md`.
//!
//! `[bandwidth]` (`bandwidth`) is the schedule of limits on replication
//! traffic that the transceiver's throttle enforces.
//!
//! The tap process has a config file of its own, [`TapConfig`] (`tap`),
//! read by the same machinery. Reference: `docs/tap-config.md`.

mod bandwidth;
mod diagnostics;
mod error;
mod reload;
mod tap;
mod target_settings;
mod tree;
mod validate;

use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use bandwidth::{
    BandwidthConfig, BandwidthWindow, BitRate, ScheduleTimeZone, TimeOfDay, Weekday,
};
pub use error::{ConfigError, Problem};
pub use tap::{
    ForwardMode, ForwardingSection, GatewaySection, NbdSection, TapConfig, TapDisk, TapSection,
    TAP_DEFAULT_PATH, TAP_EXAMPLE,
};

/// The commented example config: every field at its default. Parses to
/// [`Config::default`].
pub const EXAMPLE: &str = include_str!("drgw.example.toml");

/// Where `drgw serve` reads its config unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/drgw/drgw.toml";

/// Largest config file `load` reads; a config is a few hundred bytes.
pub const FILE_BYTES_MAX: u64 = 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub appliance: ApplianceConfig,
    pub replication: ReplicationConfig,
    pub control: ControlConfig,
    pub volumes: VolumesConfig,
    pub staging: StagingSettings,
    pub bandwidth: BandwidthConfig,
    pub retention: RetentionSettings,
    pub events: EventsConfig,
    pub recovery: RecoveryConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
}

/// `[appliance]`: who this appliance is and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApplianceConfig {
    /// 1..=63 of `[A-Za-z0-9._-]`. Default: the hostname, or `drgw` if the
    /// hostname is not a valid name. Needs restart.
    #[serde(deserialize_with = "validate::name")]
    pub name: String,
    /// Absolute; holds the identity key and certificate and the catalog.
    /// Needs restart.
    #[serde(deserialize_with = "validate::absolute_path")]
    pub state_dir: PathBuf,
}

/// `[replication]`: the 9443 listener, for taps and the paired appliance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Needs restart.
    #[serde(deserialize_with = "validate::ip_address")]
    pub address: IpAddr,
    /// 1..=65535. Needs restart.
    #[serde(deserialize_with = "validate::port")]
    pub port: u16,
    /// 65536..=67108864. Needs restart.
    #[serde(deserialize_with = "validate::max_frame_bytes")]
    pub max_frame_bytes: u32,
    /// 100..=60000. Reloadable.
    #[serde(deserialize_with = "validate::heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u32,
    /// At least 2 × `heartbeat_interval_ms`, at most 600000. Reloadable.
    #[serde(deserialize_with = "validate::peer_timeout_ms")]
    pub peer_timeout_ms: u32,
    /// Backoff ceiling when dialing a peer, 1000..=600000. Reloadable.
    #[serde(deserialize_with = "validate::connect_retry_ms_max")]
    pub connect_retry_ms_max: u32,
    /// How often the source stages a crash-consistent recovery point in each
    /// group, 100..=300000. Needs restart.
    #[serde(deserialize_with = "validate::point_interval_ms")]
    pub point_interval_ms: u32,
    /// zstd level of shipped batches, 1..=19; 0 = adaptive. Needs restart.
    #[serde(deserialize_with = "validate::zstd_level")]
    pub zstd_level: u32,
}

/// `[retention]`: the journal of groups replicated to this appliance
/// (target role). All need restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// How far back recovery points reach, 1..=720 hours (30 days).
    #[serde(deserialize_with = "validate::window_hours")]
    pub window_hours: u32,
    /// Most bytes of journal per group (the oldest points go first), 256 MiB..=1 PiB.
    #[serde(deserialize_with = "validate::retention_cap_bytes")]
    pub cap_bytes: u64,
    /// Journal segment files, 4 MiB..=1 GiB, a multiple of 4096, at most cap_bytes / 8.
    #[serde(deserialize_with = "validate::staging_segment_bytes")]
    pub segment_bytes: u64,
    /// RPO above this raises an event, 1..=86400 s.
    #[serde(deserialize_with = "validate::rpo_threshold_s")]
    pub rpo_threshold_s: u32,
    /// Encrypt the journal at rest with the key `<state_dir>/staging.key`.
    pub encrypt: bool,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            window_hours: 24,
            cap_bytes: 64 << 30,
            segment_bytes: 64 << 20,
            rpo_threshold_s: 60,
            encrypt: false,
        }
    }
}

/// `[events]`: where events (RPO crossings, retention trimmed) go besides
/// the log and `drgw events`. Reloadable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Absolute path of a command run with each event's JSON on stdin; empty: none.
    #[serde(deserialize_with = "validate::optional_absolute_path")]
    pub command: String,
}

/// `[recovery]`: the NBD listener of recovery exports (point-in-time
/// exports, test failover, failover) on the target appliance. Needs restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoveryConfig {
    #[serde(deserialize_with = "validate::ip_address")]
    pub address: IpAddr,
    /// 1..=65535.
    #[serde(deserialize_with = "validate::port")]
    pub port: u16,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            address: IpAddr::from([127, 0, 0, 1]),
            port: 10809,
        }
    }
}

/// `[control]`: the root-only control socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Absolute. Needs restart.
    #[serde(deserialize_with = "validate::absolute_path")]
    pub socket: PathBuf,
}

/// `[volumes]`: shown with their free space in `drgw status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumesConfig {
    /// Absolute; the staging cache volume. Reloadable.
    #[serde(deserialize_with = "validate::absolute_path")]
    pub cache: PathBuf,
    /// Absolute; the retention volume. Reloadable.
    #[serde(deserialize_with = "validate::absolute_path")]
    pub retention: PathBuf,
    /// Each volume must be a file system of its own mounted at its path
    /// (the appliance image: a disk of its own). When it is not, drgw
    /// status says so and no staging or journal is created there, rather
    /// than on the disk that holds the path. Needs restart.
    pub require_mounted: bool,
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Reloadable.
    pub level: LogLevel,
}

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long SIGTERM waits for in-flight work, 100..=60000. Reloadable.
    #[serde(deserialize_with = "validate::drain_timeout_ms")]
    pub drain_timeout_ms: u32,
}

/// `[staging]`: how the source gateway stages each consistency group's
/// writes on the cache volume (`drgw_staging::StagingConfig` is built from
/// it). All need restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StagingSettings {
    /// Most bytes of staging one consistency group may hold, 64 MiB..=16 TiB.
    #[serde(deserialize_with = "validate::staging_capacity_bytes")]
    pub capacity_bytes: u64,
    /// Size of each segment file, 4 MiB..=1 GiB, a multiple of 4096, at
    /// most `capacity_bytes / 2`.
    #[serde(deserialize_with = "validate::staging_segment_bytes")]
    pub segment_bytes: u64,
    /// Encrypt staged data at rest (AES-256-GCM) with the key in
    /// `<state_dir>/staging.key`, generated (mode 0600) at first start.
    pub encrypt: bool,
}

impl Default for StagingSettings {
    fn default() -> Self {
        Self {
            capacity_bytes: 8 << 30,
            segment_bytes: 64 << 20,
            encrypt: false,
        }
    }
}

impl Default for ApplianceConfig {
    fn default() -> Self {
        Self {
            name: hostname_or("drgw"),
            state_dir: PathBuf::from("/var/lib/drgw"),
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 9443,
            max_frame_bytes: 16 * 1024 * 1024,
            heartbeat_interval_ms: 1_000,
            peer_timeout_ms: 5_000,
            connect_retry_ms_max: 30_000,
            point_interval_ms: 5_000,
            zstd_level: 0,
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/drgw/control.sock"),
        }
    }
}

impl Default for VolumesConfig {
    fn default() -> Self {
        Self {
            cache: PathBuf::from("/var/lib/drgw/cache"),
            retention: PathBuf::from("/mnt/retention"),
            require_mounted: false,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 4_000,
        }
    }
}

/// The machine's hostname if it is a valid name, else `fallback`.
fn hostname_or(fallback: &str) -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let hostname = hostname.trim();
    match validate::name_problem(hostname) {
        None => hostname.to_owned(),
        Some(_) => fallback.to_owned(),
    }
}

/// `[log] level`, least to most verbose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const ALL: [LogLevel; 5] = [
        Self::Error,
        Self::Warn,
        Self::Info,
        Self::Debug,
        Self::Trace,
    ];

    /// The name used in the config file, as `tracing` spells its levels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// By hand rather than derived, so that a wrong type reads "expected a
/// string" and a wrong name lists the allowed ones.
impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let found = Self::ALL.into_iter().find(|level| level.as_str() == name);
        found.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown log level `{name}`, expected one of error, warn, info, debug, trace"
            ))
        })
    }
}

impl Config {
    /// Reads and parses the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load_file(path)
    }

    /// Parses config text; `origin` only names the file in problems.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        parse_file(text, origin)
    }

    /// Where the replication listener binds.
    pub fn replication_listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.replication.address, self.replication.port)
    }

    /// Dotted names of the fields that differ between `self` (running) and
    /// `new` and that only a restart can apply, e.g. `replication.port`.
    /// Empty when SIGHUP can apply `new` whole.
    pub fn changes_needing_restart(&self, new: &Config) -> Vec<&'static str> {
        reload::changes_needing_restart(self, new)
    }
}

impl diagnostics::Schema for Config {
    fn missing(&self) -> Vec<validate::Missing> {
        validate::missing(self)
    }

    fn relations(&self) -> Vec<validate::Relation> {
        validate::relations(self)
    }
}

/// Reads a config file of any type, bounded in size.
fn load_file<T: diagnostics::Schema>(path: &Path) -> Result<T, ConfigError> {
    let io_error = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = read_bounded(path).map_err(io_error)?;
    parse_file(&text, path)
}

fn parse_file<T: diagnostics::Schema>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    diagnostics::parse(text).map_err(|problems| ConfigError::Invalid {
        path: origin.to_path_buf(),
        problems,
    })
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(FILE_BYTES_MAX + 1).read_to_string(&mut text)?;
    if text.len() as u64 > FILE_BYTES_MAX {
        let message = format!("larger than {FILE_BYTES_MAX} bytes; is this a config file?");
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            message,
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tap_tests;
#[cfg(test)]
mod tests;
