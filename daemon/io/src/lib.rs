//! drgw's I/O layer, beneath every other crate: the io_uring every ring of
//! drgw goes through (`uring`), the aligned buffer of O_DIRECT, durable-file
//! helpers, little-endian decoding (`le`), the clock, and figures for
//! people (`units`).

pub mod aligned;
pub mod clock;
pub mod fsutil;
pub mod le;
pub mod units;
pub mod uring;
