//! The tap: the I/O intercept in front of each protected disk. It serves the
//! disk over NBD, writes to the primary, and forwards every write to the
//! source gateway; what it could not forward is remembered in the dirty map.
//!
//! Built so far: the persistent dirty map.

pub mod dirty_map;
