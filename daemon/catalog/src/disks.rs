use super::{Catalog, CatalogError, DISKS, GROUPS, META};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

/// The tap name of a disk replicated back from this site's committed
/// failover disk (reprotect; not a pinnable name: pinned names cannot hold
/// `@`).
pub const FAILOVER_TAP: &str = "@failover";

/// A disk under protection on this (source) appliance, and the tap allowed
/// to forward its writes. Disks of one group share one sequence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProtectedDisk {
    pub name: String,
    pub id: u32,
    pub group: String,
    pub group_id: u32,
    /// Name of the pinned tap that may attach this disk.
    pub tap: String,
    pub size_bytes: u64,
    pub added_unix_s: u64,
    /// The paired appliance the group replicates to (absent in records from
    /// before targets were named: then the only paired appliance).
    #[serde(default)]
    pub peer: Option<String>,
}

impl Catalog {
    pub fn disks(&self) -> Result<Vec<ProtectedDisk>, CatalogError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|e| self.database_error(e))?;
        let table = transaction
            .open_table(DISKS)
            .map_err(|e| self.database_error(e))?;
        let mut disks = Vec::new();
        for entry in table.iter().map_err(|e| self.database_error(e))? {
            let (key, value) = entry.map_err(|e| self.database_error(e))?;
            disks.push(self.decode_disk(key.value(), value.value())?);
        }
        Ok(disks)
    }

    fn decode_disk(&self, name: &str, bytes: &[u8]) -> Result<ProtectedDisk, CatalogError> {
        serde_json::from_slice(bytes).map_err(|error| CatalogError::Corrupt {
            path: self.path.clone(),
            key: format!("disks/{name}"),
            reason: error.to_string(),
        })
    }

    /// Protects a disk in a group (created on first use). Disk and group
    /// numbers come from counters in `meta` and are never reused, so the
    /// staging of a removed group can never be mistaken for a new one's.
    pub fn protect_disk(
        &self,
        name: &str,
        group: &str,
        tap: &str,
        size_bytes: u64,
        peer: Option<&str>,
    ) -> Result<ProtectedDisk, CatalogError> {
        let transaction = self
            .database
            .begin_write()
            .map_err(|e| self.database_error(e))?;
        let disk = {
            let mut disks = transaction
                .open_table(DISKS)
                .map_err(|e| self.database_error(e))?;
            if let Some(existing) = disks.get(name).map_err(|e| self.database_error(e))? {
                let existing = self.decode_disk(name, existing.value())?;
                return Err(CatalogError::DiskProtected {
                    name: name.into(),
                    group: existing.group,
                    tap: existing.tap,
                });
            }
            let group_id = self.group_id(&transaction, group)?;
            let disk = ProtectedDisk {
                name: name.into(),
                id: self.next_counter(&transaction, "next_disk_id")?,
                group: group.into(),
                group_id,
                tap: tap.into(),
                size_bytes,
                added_unix_s: drgw_io::clock::unix_seconds(),
                peer: peer.map(str::to_string),
            };
            let encoded = serde_json::to_vec(&disk).expect("a ProtectedDisk always serialises");
            disks
                .insert(name, encoded.as_slice())
                .map_err(|e| self.database_error(e))?;
            disk
        };
        transaction.commit().map_err(|e| self.database_error(e))?;
        Ok(disk)
    }

    /// Sets a protected disk's size (the caller checked it may); returns
    /// the disk as it was.
    pub fn resize_disk(&self, name: &str, size_bytes: u64) -> Result<ProtectedDisk, CatalogError> {
        let transaction = self
            .database
            .begin_write()
            .map_err(|e| self.database_error(e))?;
        let before = {
            let mut disks = transaction
                .open_table(DISKS)
                .map_err(|e| self.database_error(e))?;
            let existing = disks
                .get(name)
                .map_err(|e| self.database_error(e))?
                .map(|value| value.value().to_vec());
            let Some(bytes) = existing else {
                return Err(CatalogError::NoSuchDisk { name: name.into() });
            };
            let before = self.decode_disk(name, &bytes)?;
            let after = ProtectedDisk {
                size_bytes,
                ..before.clone()
            };
            let encoded = serde_json::to_vec(&after).expect("a ProtectedDisk always serialises");
            disks
                .insert(name, encoded.as_slice())
                .map_err(|e| self.database_error(e))?;
            before
        };
        transaction.commit().map_err(|e| self.database_error(e))?;
        Ok(before)
    }

    pub fn unprotect_disk(&self, name: &str) -> Result<ProtectedDisk, CatalogError> {
        let transaction = self
            .database
            .begin_write()
            .map_err(|e| self.database_error(e))?;
        let removed = {
            let mut disks = transaction
                .open_table(DISKS)
                .map_err(|e| self.database_error(e))?;
            let removed = disks.remove(name).map_err(|e| self.database_error(e))?;
            removed.map(|value| value.value().to_vec())
        };
        let Some(bytes) = removed else {
            return Err(CatalogError::NoSuchDisk { name: name.into() });
        };
        transaction.commit().map_err(|e| self.database_error(e))?;
        self.decode_disk(name, &bytes)
    }

    fn group_id(&self, transaction: &WriteTransaction, group: &str) -> Result<u32, CatalogError> {
        let mut groups = transaction
            .open_table(GROUPS)
            .map_err(|e| self.database_error(e))?;
        if let Some(id) = groups.get(group).map_err(|e| self.database_error(e))? {
            return Ok(id.value());
        }
        let id = self.next_counter(transaction, "next_group_id")?;
        groups
            .insert(group, id)
            .map_err(|e| self.database_error(e))?;
        Ok(id)
    }

    /// Returns the counter's value (starting at 1) and advances it.
    fn next_counter(&self, transaction: &WriteTransaction, key: &str) -> Result<u32, CatalogError> {
        let mut meta = transaction
            .open_table(META)
            .map_err(|e| self.database_error(e))?;
        let current = match meta.get(key).map_err(|e| self.database_error(e))? {
            Some(value) => value
                .value()
                .parse::<u32>()
                .map_err(|error| CatalogError::Corrupt {
                    path: self.path.clone(),
                    key: format!("meta/{key}"),
                    reason: error.to_string(),
                })?,
            None => 1,
        };
        let next = (current + 1).to_string();
        meta.insert(key, next.as_str())
            .map_err(|e| self.database_error(e))?;
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_get_stable_unique_numbers() {
        let state = tempfile::tempdir().unwrap();
        {
            let catalog = Catalog::open(state.path()).unwrap();
            let web = catalog
                .protect_disk("web-root", "shop", "tap-1", 1 << 30, None)
                .unwrap();
            let db = catalog
                .protect_disk("db-data", "shop", "tap-2", 2 << 30, None)
                .unwrap();
            let other = catalog
                .protect_disk("mail", "mail", "tap-1", 1 << 20, None)
                .unwrap();
            assert_eq!((web.id, db.id, other.id), (1, 2, 3));
            assert_eq!(web.group_id, db.group_id, "one group, one number");
            assert_ne!(web.group_id, other.group_id);
            let again = catalog
                .protect_disk("web-root", "x", "tap-9", 1, None)
                .unwrap_err();
            assert!(
                matches!(again, CatalogError::DiskProtected { .. }),
                "{again}"
            );
            catalog.unprotect_disk("mail").unwrap();
        }
        let catalog = Catalog::open(state.path()).unwrap();
        let names: Vec<String> = catalog
            .disks()
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["db-data", "web-root"]);
        let next = catalog
            .protect_disk("mail-2", "mail-2", "tap-1", 1, None)
            .unwrap();
        assert_eq!(next.id, 4, "numbers are never reused");
        assert!(matches!(
            catalog.unprotect_disk("mail").unwrap_err(),
            CatalogError::NoSuchDisk { .. }
        ));
    }
}
