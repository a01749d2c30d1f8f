//! Accessors for the target side's settings (retention, RPO, events) and the
//! transceiver's (points, compression).

use super::Config;
use std::path::PathBuf;
use std::time::Duration;

impl Config {
    /// How often the source stages a crash-consistent recovery point.
    pub fn point_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.replication.point_interval_ms))
    }

    /// zstd level of shipped batches; `None` = adaptive.
    pub fn zstd_level(&self) -> Option<i32> {
        match self.replication.zstd_level {
            0 => None,
            level => Some(level as i32),
        }
    }

    /// Command run with each event's JSON on stdin.
    pub fn events_command(&self) -> Option<PathBuf> {
        (!self.events.command.is_empty()).then(|| PathBuf::from(&self.events.command))
    }

    /// Retention and RPO policy of groups replicated to this appliance.
    pub fn target_policy(&self, key: Option<[u8; 32]>) -> crate::target::TargetPolicy {
        let retention = &self.retention;
        crate::target::TargetPolicy {
            window: Duration::from_secs(u64::from(retention.window_hours) * 3600),
            cap_bytes: retention.cap_bytes,
            segment_bytes: retention.segment_bytes,
            rpo_threshold: Duration::from_secs(u64::from(retention.rpo_threshold_s)),
            encryption_key: if retention.encrypt { key } else { None },
            require_mounted: self.volumes.require_mounted,
        }
    }
}
