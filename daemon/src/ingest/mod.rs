//! The source gateway's I/O receiver: what arrives from taps (WRITE, FLUSH,
//! TRIM for attached disks) is staged durably in the consistency group's
//! staging log before the tap gets its ACK.
//!
//! One staging log per group, under `<volumes.cache>/staging/group-<id>/`,
//! opened on first use. The group's sequence is assigned by the log as it
//! stages, so disks of a group share one order.

mod rate;

pub use rate::RateWindow;

use crate::catalog::ProtectedDisk;
use crate::staging::{RecordBody, StagingConfig, StagingError, StagingLog, StagingUsage};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("staging of group {group}: {source}")]
    Staging { group: String, source: StagingError },
    #[error("opening the staging of group {group} panicked or was cancelled")]
    Open { group: String },
}

/// Live per-disk figures for `drgw status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiskIngest {
    pub records_total: u64,
    pub bytes_total: u64,
    pub writes_per_second: f64,
    pub bytes_per_second: f64,
    pub attached: bool,
}

struct GroupLog {
    name: String,
    log: Arc<StagingLog>,
}

pub struct Ingest {
    cache_directory: PathBuf,
    staging_capacity_bytes: u64,
    /// Protected disks by name, mirrored from the catalog.
    disks: RwLock<HashMap<String, ProtectedDisk>>,
    logs: tokio::sync::Mutex<HashMap<u32, Arc<GroupLog>>>,
    counters: Mutex<HashMap<String, (RateWindow, u32)>>,
}

impl Ingest {
    pub fn new(
        cache_directory: PathBuf,
        staging_capacity_bytes: u64,
        disks: Vec<ProtectedDisk>,
    ) -> Ingest {
        let ingest = Ingest {
            cache_directory,
            staging_capacity_bytes,
            disks: RwLock::new(HashMap::new()),
            logs: tokio::sync::Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
        };
        ingest.replace_disks(disks);
        ingest
    }

    pub fn replace_disks(&self, disks: Vec<ProtectedDisk>) {
        let map = disks
            .into_iter()
            .map(|disk| (disk.name.clone(), disk))
            .collect();
        *self.disks.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    pub fn disk(&self, name: &str) -> Option<ProtectedDisk> {
        self.disks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn disks(&self) -> Vec<ProtectedDisk> {
        let mut list: Vec<ProtectedDisk> = self
            .disks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        list.sort_by(|left, right| left.name.cmp(&right.name));
        list
    }

    /// The staging log of a group, opened (and recovered) on first use.
    async fn log(&self, group_id: u32, group: &str) -> Result<Arc<GroupLog>, IngestError> {
        let mut logs = self.logs.lock().await;
        if let Some(log) = logs.get(&group_id) {
            return Ok(log.clone());
        }
        let directory = self
            .cache_directory
            .join("staging")
            .join(format!("group-{group_id}"));
        let config = StagingConfig::new(directory, group_id, self.staging_capacity_bytes);
        let name = group.to_string();
        let opened = tokio::task::spawn_blocking(move || StagingLog::open(config))
            .await
            .map_err(|_| IngestError::Open {
                group: name.clone(),
            })?
            .map_err(|source| IngestError::Staging {
                group: name.clone(),
                source,
            })?;
        let (log, report) = opened;
        tracing::info!(group = %name, records = report.records, torn_tail_bytes_cut = report.torn_tail_bytes_cut,
            "staging opened");
        let entry = Arc::new(GroupLog {
            name,
            log: Arc::new(log),
        });
        logs.insert(group_id, entry.clone());
        Ok(entry)
    }

    /// Stages the records of one or more groups; resolves when all are
    /// durable. Records of a group are staged in the order given.
    pub async fn stage(&self, batches: Vec<StageBatch>) -> Result<(), IngestError> {
        for batch in batches {
            let log = self.log(batch.group_id, &batch.group).await?;
            log.log
                .append(batch.bodies)
                .await
                .map_err(|source| IngestError::Staging {
                    group: log.name.clone(),
                    source,
                })?;
            let now = Instant::now();
            let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            for (disk, records, bytes) in batch.per_disk {
                let entry = counters
                    .entry(disk)
                    .or_insert_with(|| (RateWindow::new(now), 0));
                entry.0.add(now, records, bytes);
            }
        }
        Ok(())
    }

    pub fn attached(&self, disk: &str, delta: i32) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counters
            .entry(disk.to_string())
            .or_insert_with(|| (RateWindow::new(Instant::now()), 0));
        entry.1 = entry.1.saturating_add_signed(delta);
    }

    pub fn disk_figures(&self, disk: &str) -> DiskIngest {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        match counters.get(disk) {
            None => DiskIngest {
                records_total: 0,
                bytes_total: 0,
                writes_per_second: 0.0,
                bytes_per_second: 0.0,
                attached: false,
            },
            Some((window, attached)) => {
                let (writes_per_second, bytes_per_second) = window.rates(Instant::now());
                DiskIngest {
                    records_total: window.records_total,
                    bytes_total: window.bytes_total,
                    writes_per_second,
                    bytes_per_second,
                    attached: *attached > 0,
                }
            }
        }
    }

    /// Usage of a group's staging, if it has been opened.
    pub async fn group_usage(&self, group_id: u32) -> Option<StagingUsage> {
        let logs = self.logs.lock().await;
        logs.get(&group_id).map(|log| log.log.usage())
    }
}

/// Records of one group to stage, and what they count for per disk.
pub struct StageBatch {
    pub group_id: u32,
    pub group: String,
    pub bodies: Vec<RecordBody>,
    /// (disk name, records, bytes).
    pub per_disk: Vec<(String, u64, u64)>,
}
