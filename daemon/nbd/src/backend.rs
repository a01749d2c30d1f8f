//! What an export is backed by: the [`BlockBackend`] trait.
//!
//! The server checks every request against the export's size, flags and
//! limits before calling a backend, so a backend sees only in-range,
//! permitted requests of at most `request_bytes_max` payload bytes (TRIM
//! and WRITE_ZEROES may be longer: they carry no payload).

use std::future::Future;
use std::io;
use std::pin::Pin;

/// A boxed, sendable future: keeps [`BlockBackend`] dyn-compatible.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Storage behind one NBD export. Servers hold it as
/// `Arc<dyn BlockBackend>`; several connections call it concurrently.
pub trait BlockBackend: Send + Sync + 'static {
    /// Size of the export, fixed for the life of the backend.
    fn size_bytes(&self) -> u64;
    fn read_only(&self) -> bool;
    fn can_trim(&self) -> bool;
    fn can_write_zeroes(&self) -> bool;
    /// True only if writes from one connection are visible to reads from
    /// another once replied and FLUSH on any connection covers all
    /// (NBD_FLAG_CAN_MULTI_CONN).
    fn can_multi_conn(&self) -> bool;
    fn read(&self, offset: u64, length: u32) -> BoxFuture<'_, io::Result<Vec<u8>>>;
    /// `fua`: persist the data before completing.
    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> BoxFuture<'_, io::Result<()>>;
    /// Persist every write completed so far.
    fn flush(&self) -> BoxFuture<'_, io::Result<()>>;
    /// A hint that the range is no longer needed; may do nothing.
    fn trim(&self, offset: u64, length: u32, fua: bool) -> BoxFuture<'_, io::Result<()>>;
    /// The range must read back as zeroes; `may_trim` allows a hole.
    fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
        may_trim: bool,
    ) -> BoxFuture<'_, io::Result<()>>;
}
