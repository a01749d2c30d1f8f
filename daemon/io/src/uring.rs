//! The io_uring of drgw: one wrapper that every user of a ring goes
//! through (the staging log, the replica writes, block checksums,
//! materialize). It counts what is in flight, retries `io_uring_enter` when
//! the kernel asks to (EINTR, EAGAIN, EBUSY), and holds the one rule that
//! keeps the `unsafe` sound: memory a submission points at stays valid until
//! its completion is reaped. When `io_uring_enter` fails with submissions in
//! flight, nobody can know when the kernel is done with their memory: the
//! callers that would free it on return abort instead (`enter_or_abort`).

use io_uring::{opcode, squeue, types, IoUring};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// A ring with its count of submissions in flight.
pub struct Uring {
    ring: IoUring,
    entries: usize,
    in_flight: usize,
}

impl Uring {
    /// A ring of `entries` submission entries (the completion queue is
    /// twice as deep, so `entries` in flight never overflow it).
    pub fn new(entries: u32) -> io::Result<Uring> {
        Ok(Uring {
            ring: IoUring::new(entries)?,
            entries: entries as usize,
            in_flight: 0,
        })
    }

    /// Submission entries of the ring: the most a caller keeps in flight.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Submissions pushed whose completions were not reaped yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Registers buffers for fixed reads and writes (`ReadFixed`,
    /// `WriteFixed` with the buffer's index).
    ///
    /// # Safety
    /// Each iovec must stay valid until the ring is dropped.
    pub unsafe fn register_buffers(&mut self, buffers: &[libc::iovec]) -> io::Result<()> {
        // SAFETY: the caller keeps the buffers valid for the ring's life.
        unsafe { self.ring.submitter().register_buffers(buffers) }
    }

    /// Queues `entry`; when the submission queue is full, what is queued is
    /// submitted first.
    ///
    /// # Safety
    /// Whatever `entry` points at (buffers, and the file descriptor) must
    /// stay valid, and a buffer the kernel writes must not be read or
    /// written otherwise, until its completion comes back from `reap`.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        assert!(
            self.in_flight < self.entries,
            "io_uring over its depth: {} in flight of {}",
            self.in_flight,
            self.entries
        );
        if self.ring.submission().is_full() {
            self.enter(0)?;
        }
        // SAFETY: the caller keeps what the entry points at valid until its
        // completion is reaped; the queue has room (submitted above).
        unsafe { self.ring.submission().push(entry) }
            .expect("room in the submission queue after submitting");
        self.in_flight += 1;
        Ok(())
    }

    /// `push`, for callers whose buffers would be freed on return: a failed
    /// submission (of a full queue) aborts the process, as `enter_or_abort`.
    ///
    /// # Safety
    /// As `push`.
    pub unsafe fn push_or_abort(&mut self, entry: &squeue::Entry, what: &str) {
        // SAFETY: the caller's guarantee, passed on.
        if let Err(error) = unsafe { self.push(entry) } {
            self.abort(&error, what);
        }
    }

    /// Submits what is queued and waits for `want` completions, retrying
    /// when the kernel asks to. An error means submissions may still be in
    /// flight: the caller must not free their memory (see `enter_or_abort`).
    pub fn enter(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// `enter`, for callers whose buffers would be freed on return: a
    /// failure aborts the process (`what` names the work in the log), the
    /// only answer that never lets the kernel write into freed memory.
    pub fn enter_or_abort(&mut self, want: usize, what: &str) {
        if let Err(error) = self.enter(want) {
            self.abort(&error, what);
        }
    }

    /// Hands every completion that has come to `on_completion` (its tag and
    /// result); returns how many came.
    pub fn reap(&mut self, mut on_completion: impl FnMut(u64, i32)) -> usize {
        let mut count = 0;
        for entry in self.ring.completion() {
            on_completion(entry.user_data(), entry.result());
            count += 1;
        }
        assert!(count <= self.in_flight, "more completions than submissions");
        self.in_flight -= count;
        count
    }

    /// Writes every op, up to the ring's depth in flight, and returns once
    /// all completed; a short write is finished with `pwrite`. The first
    /// error is returned after everything in flight completed. The ops must
    /// not overlap (their order is not kept).
    pub fn write_all_at(&mut self, ops: &[WriteAt<'_>]) -> io::Result<()> {
        assert_eq!(self.in_flight, 0, "write_all_at on a busy ring");
        let mut next = 0;
        let mut first_error: Option<io::Error> = None;
        while next < ops.len() || self.in_flight > 0 {
            while next < ops.len() && self.in_flight < self.entries {
                let op = &ops[next];
                let length = u32::try_from(op.data.len()).unwrap_or(u32::MAX);
                let entry =
                    opcode::Write::new(types::Fd(op.file.as_raw_fd()), op.data.as_ptr(), length)
                        .offset(op.offset)
                        .build()
                        .user_data(next as u64);
                // SAFETY: `op.data` and `op.file` are borrowed for this whole
                // call, which returns only after every completion was reaped
                // (or aborts the process when that cannot be known).
                unsafe { self.push_or_abort(&entry, "positioned writes") };
                next += 1;
            }
            self.enter_or_abort(1, "positioned writes");
            self.reap(|index, result| {
                let op = &ops[index as usize];
                let outcome = if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else if (result as usize) < op.data.len() {
                    let done = result as usize;
                    op.file
                        .write_all_at(&op.data[done..], op.offset + done as u64)
                } else {
                    Ok(())
                };
                if let Err(error) = outcome {
                    first_error.get_or_insert(error);
                }
            });
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn abort(&self, error: &io::Error, what: &str) -> ! {
        tracing::error!(%error, in_flight = self.in_flight, "io_uring_enter failed with {what} in flight; aborting");
        std::process::abort();
    }
}

/// A positioned write for `Uring::write_all_at`.
pub struct WriteAt<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub data: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(directory: &tempfile::TempDir) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(directory.path().join("r.img"))
            .unwrap()
    }

    #[test]
    fn writes_land_where_asked_beyond_the_depth() {
        let directory = tempfile::tempdir().unwrap();
        let file = scratch(&directory);
        let blocks: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 4096]).collect();
        let ops: Vec<WriteAt> = blocks
            .iter()
            .enumerate()
            .map(|(i, data)| WriteAt {
                file: &file,
                offset: (99 - i as u64) * 4096,
                data,
            })
            .collect();
        let mut ring = Uring::new(8).unwrap();
        ring.write_all_at(&ops).unwrap();
        assert_eq!(ring.in_flight(), 0);
        let mut block = vec![0u8; 4096];
        for i in 0..100u64 {
            file.read_exact_at(&mut block, (99 - i) * 4096).unwrap();
            assert!(block.iter().all(|byte| u64::from(*byte) == i));
        }
    }

    #[test]
    fn a_failed_write_is_reported_after_the_rest() {
        let directory = tempfile::tempdir().unwrap();
        let file = scratch(&directory);
        let read_only = std::fs::File::open(directory.path().join("r.img")).unwrap();
        let data = vec![7u8; 4096];
        let ops = [
            WriteAt {
                file: &file,
                offset: 0,
                data: &data,
            },
            WriteAt {
                file: &read_only,
                offset: 4096,
                data: &data,
            },
            WriteAt {
                file: &file,
                offset: 8192,
                data: &data,
            },
        ];
        let mut ring = Uring::new(4).unwrap();
        let error = ring.write_all_at(&ops).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EBADF));
        assert_eq!(ring.in_flight(), 0);
        let mut block = vec![0u8; 4096];
        file.read_exact_at(&mut block, 8192).unwrap();
        assert_eq!(block, data, "the write after the failed one still landed");
    }

    #[test]
    fn reap_counts_down_what_is_in_flight() {
        let directory = tempfile::tempdir().unwrap();
        let file = scratch(&directory);
        let data = vec![1u8; 512];
        let mut ring = Uring::new(4).unwrap();
        for tag in 0..3u64 {
            let entry = opcode::Write::new(types::Fd(file.as_raw_fd()), data.as_ptr(), 512)
                .offset(tag * 512)
                .build()
                .user_data(tag);
            // SAFETY: `data` and `file` outlive the reaping below.
            unsafe { ring.push(&entry) }.unwrap();
        }
        assert_eq!(ring.in_flight(), 3);
        let mut tags = Vec::new();
        while ring.in_flight() > 0 {
            ring.enter_or_abort(1, "test writes");
            ring.reap(|tag, result| {
                assert_eq!(result, 512);
                tags.push(tag);
            });
        }
        tags.sort_unstable();
        assert_eq!(tags, vec![0, 1, 2]);
    }
}
