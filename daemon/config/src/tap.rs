//! The tap's configuration (`drgw tap --config FILE`, `/etc/drgw/tap.toml`):
//! which disks it serves over NBD and which source gateway it forwards their
//! writes to.
//!
//! Read and reported like the daemon's [`super::Config`]: the serde structs
//! below are the schema, unknown tables and fields are errors, and every
//! problem comes with its line and dotted field. Unlike it, `[gateway]` and at
//! least one `[[disk]]` are required, so there is no `Default`: a required
//! key deserializes to an empty sentinel (never valid when written) and
//! `validate::tap_missing` reports it at its table's header. Reference:
//! `docs/tap-config.md`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::validate::{self, Missing, Relation};
use super::{diagnostics, hostname_or, ConfigError, LogConfig};

/// The commented example tap config: every optional key at its default, the
/// required ones with sample values.
pub const TAP_EXAMPLE: &str = include_str!("tap.example.toml");

/// Where `drgw tap` reads its config unless told otherwise.
pub const TAP_DEFAULT_PATH: &str = "/etc/drgw/tap.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TapConfig {
    #[serde(default)]
    pub tap: TapSection,
    /// Required.
    #[serde(default = "GatewaySection::absent")]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub nbd: NbdSection,
    #[serde(default)]
    pub forwarding: ForwardingSection,
    #[serde(default)]
    pub log: LogConfig,
    /// `[[disk]]`, at least one; names and paths unique.
    #[serde(default, rename = "disk")]
    pub disks: Vec<TapDisk>,
}

/// `[tap]`: who this tap is and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TapSection {
    /// 1..=63 of `[A-Za-z0-9._-]`. Default: the hostname, or `drgw-tap` if
    /// the hostname is not a valid name.
    #[serde(deserialize_with = "validate::name")]
    pub name: String,
    /// Absolute; holds the tap's identity (key, certificate) and dirty maps.
    #[serde(deserialize_with = "validate::absolute_path")]
    pub state_dir: PathBuf,
}

/// `[gateway]`: the source gateway this tap forwards writes to. Required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Required. `HOST:PORT`, an IPv6 host in brackets; port 1..=65535.
    #[serde(default, deserialize_with = "validate::host_port")]
    pub address: String,
    /// Required. The SHA-256 fingerprint of the gateway's certificate: 64 hex
    /// digits, `:` between them optional; kept as written.
    #[serde(default, deserialize_with = "validate::fingerprint")]
    pub fingerprint: String,
}

/// `[nbd]`: where the tap serves its disks over NBD.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NbdSection {
    #[serde(deserialize_with = "validate::ip_address")]
    pub address: IpAddr,
    /// 1..=65535.
    #[serde(deserialize_with = "validate::port")]
    pub port: u16,
}

/// `[forwarding]`: how much the tap holds in flight towards the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardingSection {
    /// Forwarded bytes awaiting the gateway's ACK, 1 MiB..=1 GiB; beyond it,
    /// writes are only recorded in the dirty map.
    #[serde(deserialize_with = "validate::queue_bytes_max")]
    pub queue_bytes_max: u64,
    /// Bytes per WRITE frame, 64 KiB..=16 MiB, at most `queue_bytes_max`.
    #[serde(deserialize_with = "validate::batch_bytes_max")]
    pub batch_bytes_max: u64,
}

/// One `[[disk]]`: a primary disk the tap serves and protects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TapDisk {
    /// Required, unique. 1..=63 of `[A-Za-z0-9._-]`: the disk's name as
    /// protected on the gateway.
    #[serde(default, deserialize_with = "validate::name")]
    pub name: String,
    /// Required, unique, absolute: the primary disk (file or block device).
    /// Absent for a `mirror` disk, which has no primary (then empty).
    #[serde(
        default,
        deserialize_with = "validate::absolute_path",
        skip_serializing_if = "is_empty_path"
    )]
    pub path: PathBuf,
    #[serde(default)]
    pub mode: ForwardMode,
    /// Only for a `mirror` disk, and required there: its size in bytes, a
    /// positive multiple of 512 (the other modes take the primary's size).
    /// 0 is unset (so that a serialized config parses back).
    #[serde(default, deserialize_with = "size_bytes")]
    pub size_bytes: u64,
    /// Bytes of disk per dirty-map bit: a power of two, 4 KiB..=64 MiB.
    #[serde(
        default = "TapDisk::grain_bytes_default",
        deserialize_with = "validate::grain_bytes"
    )]
    pub grain_bytes: u64,
    /// Bytes of disk marked dirty at once by a write to a clean region (the
    /// activity extent): a power of two, 4 KiB..=64 MiB; below
    /// `grain_bytes` it is taken as `grain_bytes`. Larger: fewer synchronous
    /// dirty-map writes; smaller: less read again after a crash.
    #[serde(
        default = "TapDisk::extent_bytes_default",
        deserialize_with = "validate::extent_bytes"
    )]
    pub extent_bytes: u64,
}

/// `[[disk]] mode`: when the tap acknowledges a write to its NBD client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// Once the primary has it and the dirty map records it.
    #[default]
    Async,
    /// Once the gateway has staged it as well.
    Sync,
    /// No primary: the disk is a QEMU `blockdev-mirror` target. A write is
    /// acknowledged once the gateway has staged it, and fails (EIO) when
    /// the gateway cannot be reached; reads fail.
    Mirror,
}

impl ForwardMode {
    pub const ALL: [ForwardMode; 3] = [Self::Async, Self::Sync, Self::Mirror];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::Sync => "sync",
            Self::Mirror => "mirror",
        }
    }
}

/// By hand rather than derived, as for `LogLevel`: a wrong type reads
/// "expected a string" and a wrong name lists the allowed ones.
impl<'de> Deserialize<'de> for ForwardMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let found = Self::ALL.into_iter().find(|mode| mode.as_str() == name);
        found.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown mode `{name}`, expected async, sync or mirror"
            ))
        })
    }
}

impl Default for TapSection {
    fn default() -> Self {
        Self {
            name: hostname_or("drgw-tap"),
            state_dir: PathBuf::from("/var/lib/drgw-tap"),
        }
    }
}

impl GatewaySection {
    /// The sentinel of a missing `[gateway]`: both keys unset.
    fn absent() -> Self {
        Self {
            address: String::new(),
            fingerprint: String::new(),
        }
    }
}

impl Default for NbdSection {
    fn default() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 10809,
        }
    }
}

impl Default for ForwardingSection {
    fn default() -> Self {
        Self {
            queue_bytes_max: 64 << 20,
            batch_bytes_max: 4 << 20,
        }
    }
}

impl TapDisk {
    pub const GRAIN_BYTES_DEFAULT: u64 = 64 << 10;

    fn grain_bytes_default() -> u64 {
        Self::GRAIN_BYTES_DEFAULT
    }

    /// Size of an extent of the dirty map's hot set (4 MiB).
    pub const EXTENT_BYTES_DEFAULT: u64 = 4 << 20;

    fn extent_bytes_default() -> u64 {
        Self::EXTENT_BYTES_DEFAULT
    }

    /// A mirror-target disk: no primary, no dirty map.
    pub fn is_mirror(&self) -> bool {
        self.mode == ForwardMode::Mirror
    }
}

fn is_empty_path(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

/// `[[disk]] size_bytes`: a multiple of 512, at most 2^60 (1 EiB); 0 is
/// unset.
fn size_bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let bytes = i64::deserialize(deserializer)?;
    let problem = if bytes < 0 {
        Some(format!("size_bytes {bytes} must not be negative"))
    } else if bytes % 512 != 0 {
        Some(format!("size_bytes {bytes} is not a multiple of 512"))
    } else if bytes > 1 << 60 {
        Some(format!("size_bytes {bytes} is out of range: at most 2^60"))
    } else {
        None
    };
    match problem {
        Some(message) => Err(serde::de::Error::custom(message)),
        None => Ok(bytes as u64),
    }
}

impl TapConfig {
    /// Reads and parses the tap config file at `path`.
    pub fn load(path: &Path) -> Result<TapConfig, ConfigError> {
        super::load_file(path)
    }

    /// Parses tap config text; `origin` only names the file in problems.
    pub fn parse(text: &str, origin: &Path) -> Result<TapConfig, ConfigError> {
        super::parse_file(text, origin)
    }

    /// Where the NBD server binds.
    pub fn nbd_listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.nbd.address, self.nbd.port)
    }
}

/// Mirror disks turn the rules about `path` and `size_bytes` around: the
/// path is absent and the size required.
impl diagnostics::Schema for TapConfig {
    fn missing(&self) -> Vec<Missing> {
        let mut missing = validate::tap_missing(self);
        for (index, disk) in self.disks.iter().enumerate() {
            if disk.is_mirror() {
                let path = format!("disk[{index}].path");
                missing.retain(|m| m.field != path);
                if disk.size_bytes == 0 {
                    missing.push(Missing {
                        field: format!("disk[{index}].size_bytes"),
                        message: "required key `size_bytes` is missing (or 0): a mirror disk has \
                                  no primary to take its size from"
                            .to_owned(),
                    });
                }
            }
        }
        missing
    }

    fn relations(&self) -> Vec<Relation> {
        let mut broken = validate::tap_relations(self);
        for (index, disk) in self.disks.iter().enumerate() {
            if disk.is_mirror() && !disk.path.as_os_str().is_empty() {
                broken.push(Relation {
                    fields: vec![format!("disk[{index}].path"), format!("disk[{index}].mode")],
                    message: "a mirror disk has no primary: remove `path`, or choose mode \
                              async or sync"
                        .to_owned(),
                });
            }
            if !disk.is_mirror() && disk.size_bytes != 0 {
                broken.push(Relation {
                    fields: vec![format!("disk[{index}].size_bytes")],
                    message: "size_bytes is only for mode = \"mirror\": a disk with a primary \
                              has the primary's size"
                        .to_owned(),
                });
            }
        }
        broken
    }
}
