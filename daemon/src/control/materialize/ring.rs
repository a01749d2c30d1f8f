//! The io_uring of one materialize job: positioned writes from buffers the
//! caller keeps alive until their completion comes back. The only `unsafe`
//! of materialize.

use io_uring::{opcode, types, IoUring};
use std::io;
use std::os::fd::RawFd;

/// Submission queue entries; the completion queue is twice as deep, and
/// callers keep at most this many writes in flight, so it never overflows.
pub const ENTRIES: usize = 128;

pub struct ImageRing {
    ring: IoUring,
    in_flight: usize,
}

impl ImageRing {
    pub fn new() -> io::Result<ImageRing> {
        Ok(ImageRing {
            ring: IoUring::new(ENTRIES as u32)?,
            in_flight: 0,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a write of `length` bytes at `data` to `fd` at `offset`.
    ///
    /// # Safety
    /// `data..data + length` must stay valid and unchanged, and `fd` open,
    /// until the completion tagged `tag` has been returned by `wait`.
    pub unsafe fn push_write(
        &mut self,
        fd: RawFd,
        data: *const u8,
        length: u32,
        offset: u64,
        tag: u64,
    ) {
        assert!(self.in_flight < ENTRIES, "ring over its depth");
        let entry = opcode::Write::new(types::Fd(fd), data, length)
            .offset(offset)
            .build()
            .user_data(tag);
        if self.ring.submission().is_full() {
            self.submit(0);
        }
        // SAFETY: the caller guarantees the buffer and descriptor outlive the
        // completion; the queue has room (submitted above when full).
        unsafe { self.ring.submission().push(&entry) }.expect("room in the queue");
        self.in_flight += 1;
    }

    /// Submits what is queued and waits for at least one completion (when
    /// anything is in flight); returns `(tag, result)` of those that came.
    pub fn wait(&mut self) -> Vec<(u64, i32)> {
        if self.in_flight == 0 {
            return Vec::new();
        }
        self.submit(1);
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|entry| (entry.user_data(), entry.result()))
            .collect();
        self.in_flight -= done.len();
        done
    }

    fn submit(&mut self, want: usize) {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return,
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) => {}
                Err(error) => {
                    // The kernel may still read buffers that returning would
                    // let the caller free: stopping is the only safe answer.
                    tracing::error!(%error, "io_uring_enter failed with image writes in flight; aborting");
                    std::process::abort();
                }
            }
        }
    }
}
