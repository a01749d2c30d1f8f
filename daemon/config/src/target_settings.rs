//! Accessors for the target side's settings (events) and the transceiver's
//! (points, compression).

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
}
