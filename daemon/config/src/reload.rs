//! Which fields SIGHUP can apply to a running daemon, and which need a restart.
//!
//! Every field not listed in [`RESTART_FIELDS`] is reloadable. The appliance
//! name is listed although the schema brief left it open: it is the identity
//! the paired appliance and the certificate know us by, so it changes with a
//! restart, never under live sessions. `[staging]` lays out the staging logs
//! already on the cache volume, so it too changes only with a restart.
//! `[bandwidth]` is reloadable, all of it: SIGHUP hands the new schedule to
//! the running `crate::throttle::Throttle`, which applies it at once.

use super::Config;

type Changed = fn(&Config, &Config) -> bool;

/// Dotted names of the fields a running daemon cannot change, each with how
/// to tell that it changed.
pub(super) const RESTART_FIELDS: &[(&str, Changed)] = &[
    ("appliance.name", |old, new| {
        old.appliance.name != new.appliance.name
    }),
    ("appliance.state_dir", |old, new| {
        old.appliance.state_dir != new.appliance.state_dir
    }),
    ("replication.address", |old, new| {
        old.replication.address != new.replication.address
    }),
    ("replication.port", |old, new| {
        old.replication.port != new.replication.port
    }),
    ("replication.max_frame_bytes", |old, new| {
        old.replication.max_frame_bytes != new.replication.max_frame_bytes
    }),
    ("replication.point_interval_ms", |old, new| {
        old.replication.point_interval_ms != new.replication.point_interval_ms
    }),
    ("replication.zstd_level", |old, new| {
        old.replication.zstd_level != new.replication.zstd_level
    }),
    ("retention.window_hours", |old, new| {
        old.retention.window_hours != new.retention.window_hours
    }),
    ("retention.cap_bytes", |old, new| {
        old.retention.cap_bytes != new.retention.cap_bytes
    }),
    ("retention.segment_bytes", |old, new| {
        old.retention.segment_bytes != new.retention.segment_bytes
    }),
    ("retention.rpo_threshold_s", |old, new| {
        old.retention.rpo_threshold_s != new.retention.rpo_threshold_s
    }),
    ("retention.encrypt", |old, new| {
        old.retention.encrypt != new.retention.encrypt
    }),
    ("recovery.address", |old, new| {
        old.recovery.address != new.recovery.address
    }),
    ("recovery.port", |old, new| {
        old.recovery.port != new.recovery.port
    }),
    ("control.socket", |old, new| {
        old.control.socket != new.control.socket
    }),
    ("staging.capacity_bytes", |old, new| {
        old.staging.capacity_bytes != new.staging.capacity_bytes
    }),
    ("staging.segment_bytes", |old, new| {
        old.staging.segment_bytes != new.staging.segment_bytes
    }),
    ("staging.encrypt", |old, new| {
        old.staging.encrypt != new.staging.encrypt
    }),
    ("volumes.require_mounted", |old, new| {
        old.volumes.require_mounted != new.volumes.require_mounted
    }),
];

pub(super) fn changes_needing_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    RESTART_FIELDS
        .iter()
        .filter(|(_, changed)| changed(old, new))
        .map(|(name, _)| *name)
        .collect()
}
