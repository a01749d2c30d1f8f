//! Resyncs of protected groups (source side): what each one compares, how
//! far it got, and how it ended. Table `resyncs`: group name → JSON of
//! [`ResyncRecord`]. A running resync is saved after every chunk whose
//! differing blocks are staged, so a restart resumes it there.

use super::{Catalog, CatalogError, RESYNCS};
use redb::{ReadableDatabase, ReadableTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResyncPhase {
    Running,
    Done,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResyncRecord {
    pub group: String,
    pub group_id: u32,
    /// The disks compared, in order.
    pub disks: Vec<String>,
    /// Bytes per compared block.
    pub block_bytes: u32,
    /// Bytes per block of the second comparison inside a differing block
    /// (equal to `block_bytes`: none).
    pub fine_bytes: u32,
    /// Seed of the block sums, random per resync.
    pub seed: u64,
    /// Why it runs: `operator`, or what triggered it.
    pub reason: String,
    pub phase: ResyncPhase,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    /// The group sequence of its start marker, once staged.
    pub start_sequence: Option<u64>,
    /// The disk being compared (index into `disks`) and its next byte.
    pub disk_index: usize,
    pub next_offset: u64,
    /// Bytes of all its disks, and how many are compared so far.
    pub total_bytes: u64,
    pub compared_bytes: u64,
    /// Bytes found different and sent again.
    pub differing_bytes: u64,
    /// Times it was resumed after a restart or a lost link.
    pub resumes: u32,
    pub error: Option<String>,
}

impl Catalog {
    pub fn resync(&self, group: &str) -> Result<Option<ResyncRecord>, CatalogError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|e| self.database_error(e))?;
        let table = transaction
            .open_table(RESYNCS)
            .map_err(|e| self.database_error(e))?;
        let value = table.get(group).map_err(|e| self.database_error(e))?;
        value
            .map(|v| self.decode(&format!("resyncs/{group}"), v.value()))
            .transpose()
    }

    pub fn resyncs(&self) -> Result<Vec<ResyncRecord>, CatalogError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|e| self.database_error(e))?;
        let table = transaction
            .open_table(RESYNCS)
            .map_err(|e| self.database_error(e))?;
        let mut records = Vec::new();
        for entry in table.iter().map_err(|e| self.database_error(e))? {
            let (key, value) = entry.map_err(|e| self.database_error(e))?;
            records.push(self.decode(&format!("resyncs/{}", key.value()), value.value())?);
        }
        Ok(records)
    }

    pub fn put_resync(&self, record: &ResyncRecord) -> Result<(), CatalogError> {
        let transaction = self
            .database
            .begin_write()
            .map_err(|e| self.database_error(e))?;
        {
            let mut table = transaction
                .open_table(RESYNCS)
                .map_err(|e| self.database_error(e))?;
            let bytes = serde_json::to_vec(record).expect("serializable");
            table
                .insert(record.group.as_str(), bytes.as_slice())
                .map_err(|e| self.database_error(e))?;
        }
        transaction.commit().map_err(|e| self.database_error(e))
    }
}
