//! Groups this appliance protected and that now replicate back to it after
//! a failover committed at their target (`drgw reprotect`, original site).
//! Table `reversed`: group name → JSON of [`ReversedGroup`]. The record
//! keeps the disks as they were protected (for failback to protect them
//! again) and where each disk is, now that it is the replica of the other
//! site's group.

use super::{Catalog, CatalogError, ProtectedDisk, REVERSED};
use redb::{ReadableDatabase, ReadableTable};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReversedGroup {
    pub group: String,
    /// The appliance the group replicates from now (its old target).
    pub peer: String,
    /// The disks as they were protected here, with their taps.
    pub disks: Vec<ProtectedDisk>,
    /// Disk name → the disk itself (file or block device), the replica of
    /// the reverse replication.
    pub replicas: BTreeMap<String, PathBuf>,
    /// The peer's group number for the reverse direction (0 until it
    /// answered).
    pub peer_group: u32,
    pub since_unix_ms: u64,
    /// Bytes this site had staged and the peer never acknowledged, given up
    /// (`--discard-local`): overwritten by the peer's data.
    pub discarded_bytes: u64,
}

impl Catalog {
    pub fn reversed(&self) -> Result<Vec<ReversedGroup>, CatalogError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|e| self.database_error(e))?;
        let table = transaction
            .open_table(REVERSED)
            .map_err(|e| self.database_error(e))?;
        let mut records = Vec::new();
        for entry in table.iter().map_err(|e| self.database_error(e))? {
            let (key, value) = entry.map_err(|e| self.database_error(e))?;
            records.push(self.decode(&format!("reversed/{}", key.value()), value.value())?);
        }
        Ok(records)
    }

    /// Records the reversal and removes the group's disks from protection,
    /// in one transaction.
    pub fn reverse_group(&self, record: &ReversedGroup) -> Result<(), CatalogError> {
        let transaction = self
            .database
            .begin_write()
            .map_err(|e| self.database_error(e))?;
        {
            let mut table = transaction
                .open_table(REVERSED)
                .map_err(|e| self.database_error(e))?;
            let bytes = serde_json::to_vec(record).expect("serializable");
            table
                .insert(record.group.as_str(), bytes.as_slice())
                .map_err(|e| self.database_error(e))?;
            let mut disks = transaction
                .open_table(super::DISKS)
                .map_err(|e| self.database_error(e))?;
            for disk in &record.disks {
                disks
                    .remove(disk.name.as_str())
                    .map_err(|e| self.database_error(e))?;
            }
        }
        transaction.commit().map_err(|e| self.database_error(e))
    }

    /// Failback: the group's disks are protected again as they were (same
    /// numbers, taps and target), and the reversal is forgotten, in one
    /// transaction.
    pub fn unreverse_group(&self, record: &ReversedGroup) -> Result<(), CatalogError> {
        let transaction = self
            .database
            .begin_write()
            .map_err(|e| self.database_error(e))?;
        {
            let mut disks = transaction
                .open_table(super::DISKS)
                .map_err(|e| self.database_error(e))?;
            for disk in &record.disks {
                let bytes = serde_json::to_vec(disk).expect("serializable");
                disks
                    .insert(disk.name.as_str(), bytes.as_slice())
                    .map_err(|e| self.database_error(e))?;
            }
            let mut table = transaction
                .open_table(REVERSED)
                .map_err(|e| self.database_error(e))?;
            table
                .remove(record.group.as_str())
                .map_err(|e| self.database_error(e))?;
        }
        transaction.commit().map_err(|e| self.database_error(e))
    }
}
