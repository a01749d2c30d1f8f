//! The staging log's io_uring (a `drgw_io::uring::Uring`) and the only `unsafe`
//! of the staging log.
//!
//! `Ring` owns its two aligned buffers (the batch buffer and a one-block header
//! buffer). Callers fill them through `&mut` borrows and then ask the ring to
//! write them durably; every call waits for all of its completions before it
//! returns, so no submission outlives the call, and the buffers outlive the
//! ring itself (fields drop in declaration order: the ring first).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use drgw_io::aligned::AlignedBuffer;
use drgw_io::uring::Uring;
use io_uring::{opcode, types};

use super::record::BLOCK_BYTES;

const CHUNK_BYTES_MIN: usize = 64 * 1024;
const CHUNK_BYTES_MAX: usize = 1024 * 1024;
const BATCH_BUFFER: u16 = 0;
const BLOCK_BUFFER: u16 = 1;
const BARRIER_TAG: u64 = u64::MAX;

/// Counters of the ring, for usage and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct RingCounters {
    pub writes_total: u64,
    pub barriers_total: u64,
}

pub struct Ring {
    // Declared first so it drops first: the kernel lets go of the registered
    // buffers before they are freed.
    ring: Uring,
    batch: AlignedBuffer,
    block: AlignedBuffer,
    registered: bool,
    queue_depth: u32,
    /// Set when a call returned with submissions possibly outstanding; the ring is then unusable.
    broken: bool,
    /// The file of the outstanding barrier (kept open until it completes).
    barrier_file: Option<Arc<File>>,
    barrier_result: Option<i32>,
    pub counters: RingCounters,
}

impl Ring {
    /// Sets up the ring and its buffers; registers the buffers when the kernel allows it.
    pub fn new(queue_depth: u32, batch_capacity: usize) -> io::Result<Ring> {
        assert!(queue_depth >= 2, "queue depth below 2");
        // One entry more than the writes in flight: the barrier's.
        let mut ring = Uring::new(queue_depth + 1)?;
        let mut batch = AlignedBuffer::zeroed(batch_capacity);
        let mut block = AlignedBuffer::zeroed(BLOCK_BYTES);
        let iovecs = [iovec(&mut batch), iovec(&mut block)];
        // SAFETY: both buffers are owned by the Ring built below and are freed only after
        // `ring` is dropped (field order), which unregisters them.
        let registered = unsafe { ring.register_buffers(&iovecs) }.is_ok();
        if !registered {
            tracing::info!(
                "staging: io_uring buffer registration refused (memlock?); using plain writes"
            );
        }
        Ok(Ring {
            ring,
            batch,
            block,
            registered,
            queue_depth,
            broken: false,
            barrier_file: None,
            barrier_result: None,
            counters: RingCounters::default(),
        })
    }

    pub fn batch_mut(&mut self) -> &mut [u8] {
        self.batch.as_mut_slice()
    }

    pub fn batch_capacity(&self) -> usize {
        self.batch.capacity()
    }

    pub fn block_mut(&mut self) -> &mut [u8] {
        self.block.as_mut_slice()
    }

    /// Writes `batch[..len]` at `file_offset` with up to queue-depth writes in flight
    /// and returns once all completed (written, not yet durable). A barrier started
    /// earlier may complete meanwhile; its result is kept for `barrier_wait`.
    pub fn write_batch(&mut self, file: &File, file_offset: u64, len: usize) -> io::Result<()> {
        self.guarded(|ring| ring.write_and_reap(BATCH_BUFFER, file, file_offset, len))
    }

    /// Writes the one-block buffer at `file_offset` and makes it durable. No barrier
    /// may be outstanding.
    pub fn write_block_durable(&mut self, file: &Arc<File>, file_offset: u64) -> io::Result<()> {
        assert!(
            !self.barrier_outstanding(),
            "block write while a barrier is outstanding"
        );
        self.guarded(|ring| ring.write_and_reap(BLOCK_BUFFER, file, file_offset, BLOCK_BYTES))?;
        self.barrier_start(file)?;
        self.barrier_wait()
    }

    /// Starts an fdatasync of `file` covering every write completed so far, without
    /// waiting. The ring keeps the file open until the barrier completes.
    pub fn barrier_start(&mut self, file: &Arc<File>) -> io::Result<()> {
        assert!(!self.barrier_outstanding(), "one barrier at a time");
        let entry = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(BARRIER_TAG);
        self.barrier_file = Some(file.clone());
        self.guarded(|ring| {
            // SAFETY: fsync references no memory; the descriptor stays open because the
            // ring holds `file` until the completion is reaped.
            unsafe { ring.ring.push(&entry) }.map_err(Failure::Enter)?;
            ring.ring.enter(0).map_err(Failure::Enter)
        })
    }

    pub fn barrier_outstanding(&self) -> bool {
        self.barrier_file.is_some()
    }

    /// Waits for the outstanding barrier, if any; Ok means everything written before
    /// it started is durable.
    pub fn barrier_wait(&mut self) -> io::Result<()> {
        if !self.barrier_outstanding() {
            return Ok(());
        }
        self.guarded(|ring| {
            while ring.barrier_result.is_none() {
                ring.ring.enter(1).map_err(Failure::Enter)?;
                ring.reap(|_, _| unreachable!("no write is in flight while waiting for a barrier"));
            }
            Ok(())
        })?;
        let result = self.barrier_result.take().expect("barrier completed");
        self.barrier_file = None;
        self.counters.barriers_total += 1;
        if result < 0 {
            return Err(io::Error::from_raw_os_error(-result));
        }
        Ok(())
    }

    /// Runs `operation`; an io_uring_enter failure leaves the ring unusable.
    fn guarded(
        &mut self,
        operation: impl FnOnce(&mut Ring) -> Result<(), Failure>,
    ) -> io::Result<()> {
        assert!(!self.broken, "ring used after a failed submission");
        let result = operation(self);
        self.broken = matches!(&result, Err(Failure::Enter(_)));
        result.map_err(Failure::into_error)
    }

    /// Reaps every available completion: barrier results are kept, writes go to `on_write`.
    fn reap(&mut self, mut on_write: impl FnMut(u64, i32)) {
        let barrier = &mut self.barrier_result;
        self.ring.reap(|tag, result| {
            if tag == BARRIER_TAG {
                *barrier = Some(result);
            } else {
                on_write(tag, result);
            }
        });
    }

    fn write_and_reap(
        &mut self,
        buffer: u16,
        file: &File,
        file_offset: u64,
        len: usize,
    ) -> Result<(), Failure> {
        let (base, capacity) = match buffer {
            BATCH_BUFFER => (self.batch.as_ptr(), self.batch.capacity()),
            _ => (self.block.as_ptr(), self.block.capacity()),
        };
        assert!(
            len > 0 && len <= capacity,
            "write of {len} bytes from a {capacity}-byte buffer"
        );
        assert!(
            len % BLOCK_BYTES == 0 && file_offset % BLOCK_BYTES as u64 == 0,
            "unaligned direct write"
        );
        let chunk = chunk_bytes(len, self.queue_depth);
        let fd = types::Fd(file.as_raw_fd());
        let chunks = len.div_ceil(chunk);
        let (mut next, mut in_flight, mut first_error) = (0usize, 0u32, None::<io::Error>);
        while next < chunks || in_flight > 0 {
            while next < chunks && in_flight < self.queue_depth && first_error.is_none() {
                let start = next * chunk;
                let bytes = chunk.min(len - start) as u32;
                // SAFETY: `base + start .. + bytes` lies inside a buffer owned by self (len <=
                // capacity asserted); it stays allocated and unaliased for the whole call, and
                // this loop reaps every submission before returning.
                let address = unsafe { base.add(start) };
                let entry = if self.registered {
                    opcode::WriteFixed::new(fd, address, bytes, buffer)
                        .offset(file_offset + start as u64)
                        .build()
                } else {
                    opcode::Write::new(fd, address, bytes)
                        .offset(file_offset + start as u64)
                        .build()
                };
                // SAFETY: the entry points into memory valid until its completion is reaped below.
                unsafe { self.ring.push(&entry.user_data(u64::from(bytes))) }
                    .map_err(Failure::Enter)?;
                next += 1;
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            self.ring.enter(1).map_err(Failure::Enter)?;
            let mut writes = 0u64;
            self.reap(|expected, result| {
                in_flight -= 1;
                writes += 1;
                if first_error.is_none() && result != expected as i32 {
                    first_error = Some(write_error(result, expected as i32));
                }
            });
            self.counters.writes_total += writes;
        }
        match first_error {
            Some(error) => Err(Failure::Io(error)),
            None => Ok(()),
        }
    }
}

enum Failure {
    /// io_uring_enter failed: submissions may still be in flight.
    Enter(io::Error),
    /// An operation completed with an error; nothing is in flight.
    Io(io::Error),
}

impl Failure {
    fn into_error(self) -> io::Error {
        match self {
            Failure::Enter(error) | Failure::Io(error) => error,
        }
    }
}

fn write_error(result: i32, expected: i32) -> io::Error {
    if result < 0 {
        io::Error::from_raw_os_error(-result)
    } else {
        io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short direct write: {result} of {expected} bytes"),
        )
    }
}

/// Splits a write so that it fills the queue depth, in 64 KiB..1 MiB aligned pieces.
fn chunk_bytes(len: usize, queue_depth: u32) -> usize {
    let even = len
        .div_ceil(queue_depth as usize)
        .next_multiple_of(BLOCK_BYTES);
    even.clamp(CHUNK_BYTES_MIN, CHUNK_BYTES_MAX)
}

fn iovec(buffer: &mut AlignedBuffer) -> libc::iovec {
    libc::iovec {
        iov_base: buffer.as_mut_slice().as_mut_ptr().cast(),
        iov_len: buffer.capacity(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};

    #[test]
    fn writes_land_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .unwrap(),
        );
        let mut ring = Ring::new(4, 8 * BLOCK_BYTES * 64).unwrap();
        let len = ring.batch_capacity();
        for (i, byte) in ring.batch_mut().iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        ring.write_batch(&file, BLOCK_BYTES as u64, len).unwrap();
        ring.barrier_start(&file).unwrap();
        assert!(ring.barrier_outstanding());
        ring.barrier_wait().unwrap();
        assert!(!ring.barrier_outstanding());
        ring.block_mut().fill(9);
        ring.write_block_durable(&file, 0).unwrap();
        let mut back = vec![0u8; len + BLOCK_BYTES];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact_at(&mut back, 0)
            .unwrap();
        assert!(back[..BLOCK_BYTES].iter().all(|b| *b == 9));
        assert!(back[BLOCK_BYTES..]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8));
        assert_eq!(ring.counters.barriers_total, 2);
        assert!(ring.counters.writes_total >= 4);
    }

    #[test]
    fn chunks_are_aligned_and_bounded() {
        assert_eq!(chunk_bytes(8 << 20, 32), 256 * 1024);
        assert_eq!(chunk_bytes(4096, 32), CHUNK_BYTES_MIN);
        assert_eq!(chunk_bytes(64 << 20, 4), CHUNK_BYTES_MAX);
    }
}
