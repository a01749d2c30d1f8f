//! drgw's I/O layer, beneath every other crate: the aligned buffer of
//! O_DIRECT, durable-file helpers and the clock.

pub mod aligned;
pub mod clock;
pub mod fsutil;
