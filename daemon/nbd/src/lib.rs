//! NBD server: serves block devices and files to standard NBD clients
//! (qemu, libnbd, nbd-client) over the Network Block Device protocol.
//!
//! The tap serves each protected disk as an export; recovery exports use it
//! too. What subset of the protocol is implemented, the flags advertised,
//! the limits and the error mapping are in `docs/nbd.md`.
//!
//! - [`protocol`]: wire values, parsers (never panic) and encoders.
//! - `handshake`: fixed newstyle option haggling.
//! - `transmission`: the request loop, concurrent requests, one writer.
//! - [`BlockBackend`] / [`FileBackend`]: what an export reads and writes.
//! - [`NbdServer`]: the listener serving a set of [`Export`]s.
//! - [`client`]: a small client (one request at a time), to write and
//!   read any export without external tools (`drgw demo`).

mod backend;
pub mod client;
mod error;
mod export;
mod file_backend;
mod handshake;
pub mod protocol;
mod server;
mod transmission;

#[cfg(test)]
mod proptests;

pub use backend::{BlockBackend, BoxFuture};
pub use error::{NbdError, ParseError};
pub use export::{Export, Limits, REQUEST_BYTES_LIMIT};
pub use file_backend::FileBackend;
pub use handshake::{OPTIONS_MAX, OPTION_DATA_BYTES_MAX};
pub use server::{NbdServer, ServerStats, HANDSHAKE_TIMEOUT};
