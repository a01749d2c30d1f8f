//! The catalog: the appliance's durable state (identity facts, pinned peers,
//! and, as the product grows, protected disks, groups and drills) in redb,
//! an embedded ACID key-value store. Every change is one committed
//! transaction: a crash leaves the catalog before or after it, never between.
//!
//! Layout (format version 1): table `meta` (text → text) holds
//! `format_version`, `appliance_id`, `created_unix_s`; table `peers`
//! (peer name → JSON of [`drgw_tls::PinnedPeer`]); table `disks` (disk
//! name → JSON of [`ProtectedDisk`]); tables `recovery` and `drills` (target
//! groups' recovery state and test failover drills, see [`recovery`]);
//! table `resyncs` (resyncs of protected groups, see [`resyncs`]); table
//! `reversed` (groups replicated back here after reprotect, see
//! [`reversed`]). See
//! docs/formats/catalog.md.

mod disks;
mod peers;
mod recovery;
mod resyncs;
mod reversed;

pub use disks::{ProtectedDisk, FAILOVER_TAP};
pub use recovery::{Drill, GroupRecovery, RecoveryPoint, RecoveryState, Transition};
pub use resyncs::{ResyncPhase, ResyncRecord};
pub use reversed::ReversedGroup;

use drgw_tls::Fingerprint;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use uuid::Uuid;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
const DISKS: TableDefinition<&str, &[u8]> = TableDefinition::new("disks");
const GROUPS: TableDefinition<&str, u32> = TableDefinition::new("groups");
const RECOVERY: TableDefinition<&str, &[u8]> = TableDefinition::new("recovery");
const DRILLS: TableDefinition<&str, &[u8]> = TableDefinition::new("drills");
const RESYNCS: TableDefinition<&str, &[u8]> = TableDefinition::new("resyncs");
const REVERSED: TableDefinition<&str, &[u8]> = TableDefinition::new("reversed");

/// The catalog format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}: {source}")]
    Database { path: PathBuf, source: redb::Error },
    #[error("catalog {path} is in use by another process (is another drgw running with the same state_dir?)")]
    InUse { path: PathBuf },
    #[error("catalog {path} has format version {found}; this drgw reads version {FORMAT_VERSION}")]
    UnsupportedVersion { path: PathBuf, found: String },
    #[error("catalog {path}: record {key} is corrupt: {reason}")]
    Corrupt {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error(
        "a peer named {name} is already paired (remove it first with `drgw pair remove {name}`)"
    )]
    DuplicateName { name: String },
    #[error("fingerprint {fingerprint} is already paired as {name}")]
    DuplicateFingerprint {
        fingerprint: Fingerprint,
        name: String,
    },
    #[error("no peer named {name} is paired")]
    NoSuchPeer { name: String },
    #[error("disk {name} is already protected (group {group}, tap {tap})")]
    DiskProtected {
        name: String,
        group: String,
        tap: String,
    },
    #[error("no protected disk named {name}")]
    NoSuchDisk { name: String },
}

pub struct Catalog {
    database: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

impl Catalog {
    /// Opens (or creates) `<state_dir>/catalog.redb` and checks its version.
    pub fn open(state_dir: &Path) -> Result<Catalog, CatalogError> {
        let path = state_dir.join("catalog.redb");
        let database = Database::create(&path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => CatalogError::InUse { path: path.clone() },
            other => CatalogError::Database {
                path: path.clone(),
                source: other.into(),
            },
        })?;
        let catalog = Catalog { database, path };
        catalog.initialise()?;
        Ok(catalog)
    }

    fn database_error(&self, error: impl Into<redb::Error>) -> CatalogError {
        CatalogError::Database {
            path: self.path.clone(),
            source: error.into(),
        }
    }

    /// Writes the meta records of a new catalog, or checks an existing one's.
    fn initialise(&self) -> Result<(), CatalogError> {
        let transaction = self
            .database
            .begin_write()
            .map_err(|e| self.database_error(e))?;
        {
            let mut meta = transaction
                .open_table(META)
                .map_err(|e| self.database_error(e))?;
            let existing = meta
                .get("format_version")
                .map_err(|e| self.database_error(e))?
                .map(|value| value.value().to_string());
            match existing {
                Some(version) if version != FORMAT_VERSION.to_string() => {
                    return Err(CatalogError::UnsupportedVersion {
                        path: self.path.clone(),
                        found: version,
                    });
                }
                Some(_) => {}
                None => {
                    let version = FORMAT_VERSION.to_string();
                    let identifier = Uuid::new_v4().to_string();
                    let created = drgw_io::clock::unix_seconds().to_string();
                    for (key, value) in [
                        ("format_version", version.as_str()),
                        ("appliance_id", identifier.as_str()),
                        ("created_unix_s", created.as_str()),
                    ] {
                        meta.insert(key, value)
                            .map_err(|e| self.database_error(e))?;
                    }
                }
            }
            transaction
                .open_table(PEERS)
                .map_err(|e| self.database_error(e))?;
            transaction
                .open_table(DISKS)
                .map_err(|e| self.database_error(e))?;
            transaction
                .open_table(GROUPS)
                .map_err(|e| self.database_error(e))?;
            transaction
                .open_table(RECOVERY)
                .map_err(|e| self.database_error(e))?;
            transaction
                .open_table(DRILLS)
                .map_err(|e| self.database_error(e))?;
            transaction
                .open_table(RESYNCS)
                .map_err(|e| self.database_error(e))?;
            transaction
                .open_table(REVERSED)
                .map_err(|e| self.database_error(e))?;
        }
        transaction.commit().map_err(|e| self.database_error(e))
    }

    /// The appliance's identifier, generated with the catalog.
    pub fn appliance_id(&self) -> Result<Uuid, CatalogError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|e| self.database_error(e))?;
        let meta = transaction
            .open_table(META)
            .map_err(|e| self.database_error(e))?;
        let value = meta
            .get("appliance_id")
            .map_err(|e| self.database_error(e))?;
        let text = value
            .map(|value| value.value().to_string())
            .unwrap_or_default();
        Uuid::parse_str(&text).map_err(|error| CatalogError::Corrupt {
            path: self.path.clone(),
            key: "meta/appliance_id".into(),
            reason: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drgw_tls::{PeerKind, PinnedPeer};

    fn peer(name: &str, seed: &[u8]) -> PinnedPeer {
        PinnedPeer {
            name: name.into(),
            kind: PeerKind::Appliance,
            address: Some("127.0.0.1:9443".into()),
            fingerprint: Fingerprint::of_certificate(seed),
            added_unix_s: 1,
        }
    }

    #[test]
    fn identifier_is_stable_across_opens() {
        let state = tempfile::tempdir().unwrap();
        let first = Catalog::open(state.path()).unwrap().appliance_id().unwrap();
        let second = Catalog::open(state.path()).unwrap().appliance_id().unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn peers_persist_and_stay_unique() {
        let state = tempfile::tempdir().unwrap();
        {
            let catalog = Catalog::open(state.path()).unwrap();
            catalog.add_peer(&peer("site-b", b"b")).unwrap();
            let duplicate_name = catalog.add_peer(&peer("site-b", b"c")).unwrap_err();
            assert!(matches!(duplicate_name, CatalogError::DuplicateName { .. }));
            let duplicate_key = catalog.add_peer(&peer("other", b"b")).unwrap_err();
            assert!(matches!(
                duplicate_key,
                CatalogError::DuplicateFingerprint { .. }
            ));
            catalog.add_peer(&peer("site-c", b"c")).unwrap();
        }
        let catalog = Catalog::open(state.path()).unwrap();
        let names: Vec<String> = catalog
            .peers()
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["site-b", "site-c"]);
        assert_eq!(catalog.remove_peer("site-b").unwrap().name, "site-b");
        assert!(matches!(
            catalog.remove_peer("site-b").unwrap_err(),
            CatalogError::NoSuchPeer { .. }
        ));
    }

    #[test]
    fn second_open_is_refused_while_in_use() {
        let state = tempfile::tempdir().unwrap();
        let _first = Catalog::open(state.path()).unwrap();
        let error = Catalog::open(state.path()).unwrap_err();
        assert!(matches!(error, CatalogError::InUse { .. }), "{error}");
    }

    #[test]
    fn garbage_file_is_reported_not_overwritten() {
        let state = tempfile::tempdir().unwrap();
        let path = state.path().join("catalog.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let error = Catalog::open(state.path()).unwrap_err();
        assert!(matches!(error, CatalogError::Database { .. }), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
    }
}
