//! drgw: the disaster-recovery gateway library behind the `drgw` binary.
//!
//! Modules follow the data path; see docs/ARCHITECTURE.md.

pub mod appliance;
pub mod cli;
pub mod control;
pub mod demo;
pub mod link;
pub mod reprotect;
pub mod resync;
pub mod serve;
pub mod ship;
pub mod status;
pub mod throttle;
