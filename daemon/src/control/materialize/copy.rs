//! The copy: a reader thread reads the point (replica and undo) a chunk at
//! a time into a bounded pool of aligned buffers, skipping holes without
//! reading them and marking all-zero grains; the job's thread places the
//! non-zero grains in the image and writes them through io_uring, several
//! chunks in flight, so reads and writes overlap. Every CHECKPOINT the
//! image is fsynced and the sidecar records how far it is complete.
//!
//! Cost sketch, per GiB of disk: data read once (holes not at all), written
//! once (zeroes not at all); memory POOL × CHUNK_BYTES (32 MiB) per job;
//! CPU: one pass over the data to find zero grains (a few ms per GiB of
//! data, exits at the first non-zero byte), one memcpy of undo data.

use super::image::{ImageFiles, Layout, GRAIN_BYTES};
use super::qcow2::Extent;
use super::sidecar::Sidecar;
use crate::control::jobs::JobContext;
use drgw_io::aligned::AlignedBuffer;
use drgw_io::uring::Uring;
use drgw_replica::PointView;
use io_uring::{opcode, types};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

/// Bytes of the disk read per step: a multiple of GRAIN_BYTES and of the
/// qcow2 L2 span's divisors, so no chunk crosses an L2 table.
pub const CHUNK_BYTES: u64 = 4 << 20;
/// Buffers between reader and writer (read-ahead plus writes in flight).
const POOL: usize = 8;
/// Submission entries of the ring; a chunk has at most 64 extents, and at
/// most this many writes are in flight.
const ENTRIES: usize = 128;
const CHECKPOINT: Duration = Duration::from_secs(2);

/// A chunk read: the disk's bytes at `offset`, and its non-zero grain runs.
struct Chunk {
    offset: u64,
    buffer: AlignedBuffer,
    /// Disk ranges (grain-aligned starts) holding non-zero bytes.
    runs: Vec<(u64, u64)>,
}

/// Why a copy stopped early.
pub enum Stop {
    Cancelled,
    Failed(String),
}

pub struct CopyOutcome {
    pub data_bytes: u64,
}

/// What the writer keeps per chunk until its writes completed.
struct InFlight {
    end: u64,
    allocated_after: u64,
    pending: usize,
    /// A write of this chunk failed: the image is not complete through it.
    failed: bool,
    buffer: AlignedBuffer,
    extents: Vec<Extent>,
    base: u64,
}

pub struct Copy<'a> {
    pub files: &'a ImageFiles,
    pub layout: &'a mut Layout,
    pub sidecar: &'a mut Sidecar,
    pub sidecar_path: &'a Path,
    pub out: &'a Path,
    pub context: &'a JobContext,
}

impl Copy<'_> {
    /// Copies the disk from `sidecar.done_bytes` to its end.
    pub fn run(mut self, view: PointView) -> Result<CopyOutcome, Stop> {
        let start = self.sidecar.done_bytes;
        let size = self.sidecar.disk_size_bytes;
        let (free_tx, free_rx) = sync_channel::<AlignedBuffer>(POOL);
        for _ in 0..POOL {
            free_tx
                .send(AlignedBuffer::zeroed(CHUNK_BYTES as usize))
                .expect("room for the pool");
        }
        let (filled_tx, filled_rx) = sync_channel::<Result<Chunk, String>>(POOL);
        let cancel = self.context.cancel.clone();
        let reader = std::thread::Builder::new()
            .name("drgw-materialize-read".into())
            .spawn(move || read_chunks(view, start, size, free_rx, filled_tx, cancel))
            .map_err(|e| Stop::Failed(format!("cannot start the reader thread: {e}")))?;
        let outcome = self.write_chunks(filled_rx, free_tx);
        let _ = reader.join();
        outcome
    }

    fn write_chunks(
        &mut self,
        filled: Receiver<Result<Chunk, String>>,
        free: SyncSender<AlignedBuffer>,
    ) -> Result<CopyOutcome, Stop> {
        let mut ring = Uring::new(ENTRIES as u32)
            .map_err(|e| Stop::Failed(format!("cannot set up io_uring: {e}")))?;
        let mut flights: VecDeque<(u64, InFlight)> = VecDeque::new();
        let mut next_tag = 0u64;
        let mut data_bytes = 0u64;
        let mut watermark = (self.sidecar.done_bytes, self.layout.allocated());
        let mut checkpointed = Instant::now();
        let mut stop: Option<Stop> = None;
        let mut reader_done = false;
        let mut frozen = false;
        loop {
            if stop.is_none() && self.context.cancel.is_cancelled() {
                stop = Some(Stop::Cancelled);
            }
            // Take chunks while the ring has room for their writes.
            while stop.is_none() && !reader_done && flights.len() < POOL {
                let received = if ring.in_flight() == 0 {
                    filled.recv().map_err(|_| TryRecvError::Disconnected)
                } else {
                    filled.try_recv()
                };
                let chunk = match received {
                    Ok(Ok(chunk)) => chunk,
                    Ok(Err(error)) => {
                        stop = Some(Stop::Failed(error));
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        reader_done = true;
                        break;
                    }
                };
                let flight = self.place(chunk);
                data_bytes += flight.extents.iter().map(|e| e.length).sum::<u64>();
                // Wait for room first (a chunk has at most 64 extents).
                while ring.in_flight() + flight.extents.len() > ENTRIES {
                    self.reap(&mut ring, &mut flights, &mut stop);
                }
                let tag = next_tag;
                next_tag += 1;
                flights.push_back((tag, flight));
                let flight = &mut flights.back_mut().expect("pushed").1;
                if let Err(error) = self.submit(&mut ring, tag, flight) {
                    flight.failed = true;
                    stop = Some(Stop::Failed(error));
                }
            }
            if ring.in_flight() > 0 {
                self.reap(&mut ring, &mut flights, &mut stop);
            }
            while flights.front().is_some_and(|(_, f)| f.pending == 0) {
                let (_, flight) = flights.pop_front().expect("checked");
                // Complete in order up to the first chunk that failed.
                frozen |= flight.failed;
                if !frozen {
                    watermark = (flight.end, flight.allocated_after);
                }
                let _ = free.send(flight.buffer);
            }
            self.context.progress.set_done(watermark.0);
            let idle = ring.in_flight() == 0 && flights.is_empty();
            let finished = idle && (reader_done || stop.is_some());
            if (finished || checkpointed.elapsed() >= CHECKPOINT)
                && watermark.0 > self.sidecar.done_bytes
            {
                if let Err(error) = self.checkpoint(watermark) {
                    stop.get_or_insert(Stop::Failed(error));
                }
                checkpointed = Instant::now();
            }
            if finished {
                break;
            }
        }
        match stop {
            Some(stop) => Err(stop),
            // The reader saw the cancel first and stopped early.
            None if self.sidecar.done_bytes < self.sidecar.disk_size_bytes
                && self.context.cancel.is_cancelled() =>
            {
                Err(Stop::Cancelled)
            }
            None if self.sidecar.done_bytes < self.sidecar.disk_size_bytes => Err(Stop::Failed(
                "the reader stopped before the end of the disk".into(),
            )),
            None => Ok(CopyOutcome { data_bytes }),
        }
    }

    fn place(&mut self, chunk: Chunk) -> InFlight {
        let mut extents = Vec::new();
        for &(start, end) in &chunk.runs {
            extents.extend(self.layout.place(start, end));
        }
        let length = (self.sidecar.disk_size_bytes - chunk.offset).min(CHUNK_BYTES);
        InFlight {
            end: chunk.offset + length,
            allocated_after: self.layout.allocated(),
            pending: 0,
            failed: false,
            buffer: chunk.buffer,
            extents,
            base: chunk.offset,
        }
    }

    /// Queues the chunk's writes; an unaligned piece (a raw image's tail)
    /// is written at once through the buffered descriptor.
    fn submit(&self, ring: &mut Uring, tag: u64, flight: &mut InFlight) -> Result<(), String> {
        for (index, extent) in flight.extents.iter().enumerate() {
            let at = (extent.disk_offset - flight.base) as usize;
            let data = &flight.buffer.as_slice()[at..at + extent.length as usize];
            if !self.files.direct_fits(extent.file_offset, extent.length) {
                self.files
                    .plain
                    .write_all_at(data, extent.file_offset)
                    .map_err(|e| self.io_error(e))?;
                continue;
            }
            let length = u32::try_from(extent.length).expect("extents fit a chunk");
            // SAFETY: the buffer lives in `flight`, which stays in `flights`
            // (and the descriptor in `self.files`) until `pending` is back to
            // zero, i.e. every completion of this chunk came back; the copy
            // never returns with writes in flight.
            let entry = opcode::Write::new(
                types::Fd(self.files.direct.as_raw_fd()),
                data.as_ptr(),
                length,
            )
            .offset(extent.file_offset)
            .build()
            .user_data(tag << 8 | index as u64);
            unsafe { ring.push_or_abort(&entry, "image writes") };
            flight.pending += 1;
        }
        Ok(())
    }

    fn reap(
        &self,
        ring: &mut Uring,
        flights: &mut VecDeque<(u64, InFlight)>,
        stop: &mut Option<Stop>,
    ) {
        if ring.in_flight() == 0 {
            return;
        }
        ring.enter_or_abort(1, "image writes");
        let mut done = Vec::new();
        ring.reap(|tag, result| done.push((tag, result)));
        for (tag, result) in done {
            let (chunk_tag, index) = (tag >> 8, (tag & 0xff) as usize);
            let flight = &mut flights
                .iter_mut()
                .find(|(t, _)| *t == chunk_tag)
                .expect("a completion belongs to a chunk in flight")
                .1;
            flight.pending -= 1;
            let extent = flight.extents[index];
            let failed = &mut flight.failed;
            let outcome = if result < 0 {
                Err(std::io::Error::from_raw_os_error(-result))
            } else if (result as u64) < extent.length {
                // Short write: finish it through the buffered descriptor.
                let done = result as u64;
                let at = (extent.disk_offset - flight.base + done) as usize;
                let rest = &flight.buffer.as_slice()[at..at + (extent.length - done) as usize];
                self.files
                    .plain
                    .write_all_at(rest, extent.file_offset + done)
            } else {
                Ok(())
            };
            if let Err(error) = outcome {
                *failed = true;
                stop.get_or_insert(Stop::Failed(self.io_error(error)));
            }
        }
    }

    /// Makes the image durable through `watermark` and records it.
    fn checkpoint(&mut self, (done_bytes, allocated): (u64, u64)) -> Result<(), String> {
        self.layout
            .write_tables(&self.files.plain)
            .map_err(|e| self.io_error(e))?;
        self.files.plain.sync_data().map_err(|e| self.io_error(e))?;
        self.sidecar.done_bytes = done_bytes;
        self.sidecar.allocated_bytes = allocated;
        self.sidecar.updated_unix_s = drgw_io::clock::unix_seconds();
        self.sidecar.store(self.sidecar_path).map_err(|e| match &e {
            super::sidecar::SidecarError::Io { source, .. }
                if source.raw_os_error() == Some(libc::ENOSPC) =>
            {
                format!(
                    "{}: no space left on the file system",
                    self.sidecar_path.display()
                )
            }
            _ => e.to_string(),
        })
    }

    fn io_error(&self, error: std::io::Error) -> String {
        io_error_text(self.out, &error)
    }
}

/// An error writing the image, for the operator.
pub fn io_error_text(out: &Path, error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => format!(
            "{}: no space left on the file system ({error}); free space and continue with --resume",
            out.display()
        ),
        _ => format!("{}: {error}", out.display()),
    }
}

/// The reader thread: fills buffers from the pool, in disk order.
fn read_chunks(
    mut view: PointView,
    start: u64,
    size: u64,
    free: Receiver<AlignedBuffer>,
    filled: SyncSender<Result<Chunk, String>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut offset = start;
    let delay = test_delay();
    while offset < size && !cancel.is_cancelled() {
        let Ok(mut buffer) = free.recv() else {
            return;
        };
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let chunk = read_chunk(&mut view, offset, size, &mut buffer).map(|runs| Chunk {
            offset,
            buffer,
            runs,
        });
        let failed = chunk.is_err();
        if filled.send(chunk).is_err() || failed {
            return;
        }
        offset += CHUNK_BYTES.min(size - offset);
    }
}

/// Tests slow the copy down to cut it halfway: `DRGW_TEST_MATERIALIZE_CHUNK_DELAY_MS`.
fn test_delay() -> Option<Duration> {
    let millis = std::env::var("DRGW_TEST_MATERIALIZE_CHUNK_DELAY_MS").ok()?;
    millis.parse().ok().map(Duration::from_millis)
}

/// Reads the chunk at `offset` into `buffer` (zero past the disk's end, up
/// to a whole grain) and returns its runs of non-zero grains.
fn read_chunk(
    view: &mut PointView,
    offset: u64,
    size: u64,
    buffer: &mut AlignedBuffer,
) -> Result<Vec<(u64, u64)>, String> {
    let length = (size - offset).min(CHUNK_BYTES);
    let grains_end = length.div_ceil(GRAIN_BYTES) * GRAIN_BYTES;
    let ranges = view
        .data_ranges(offset, offset + length)
        .map_err(|e| e.to_string())?;
    let bytes = &mut buffer.as_mut_slice()[..grains_end as usize];
    let mut position = offset;
    for &(start, end) in &ranges {
        bytes[(position - offset) as usize..(start - offset) as usize].fill(0);
        view.read_at(
            &mut bytes[(start - offset) as usize..(end - offset) as usize],
            start,
        )
        .map_err(|e| e.to_string())?;
        position = end;
    }
    bytes[(position - offset) as usize..].fill(0);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut ranges = ranges.iter().peekable();
    for (index, grain) in bytes.chunks(GRAIN_BYTES as usize).enumerate() {
        let grain_start = offset + index as u64 * GRAIN_BYTES;
        let grain_end = grain_start + GRAIN_BYTES;
        while ranges.peek().is_some_and(|r| r.1 <= grain_start) {
            ranges.next();
        }
        let touched = ranges.peek().is_some_and(|r| r.0 < grain_end);
        if !touched || is_zero(grain) {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.1 == grain_start => last.1 = grain_end,
            _ => runs.push((grain_start, grain_end)),
        }
    }
    Ok(runs)
}

fn is_zero(bytes: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets
    // the aligned middle of the slice.
    let (head, middle, tail) = unsafe { bytes.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && middle.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection() {
        let mut bytes = vec![0u8; 65536 + 3];
        assert!(is_zero(&bytes[1..]));
        bytes[65536 + 2] = 1;
        assert!(!is_zero(&bytes[1..]));
    }
}
