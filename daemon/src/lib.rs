//! drgw: the disaster-recovery gateway library behind the `drgw` binary.
//!
//! Modules follow the data path; see docs/ARCHITECTURE.md.

pub mod appliance;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod fsutil;
pub mod ingest;
pub mod link;
pub mod logging;
pub mod nbd;
pub mod reprotect;
pub mod resync;
pub mod serve;
pub mod ship;
pub mod staging;
pub mod status;
pub mod sums;
pub mod tap;
pub mod target;
pub mod throttle;
pub mod tls;
pub mod wire;
