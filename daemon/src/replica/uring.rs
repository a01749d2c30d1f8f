//! Positioned writes to replicas through io_uring, several in flight. The
//! caller passes non-overlapping writes (their order does not matter).

use io_uring::{opcode, types, IoUring};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

pub struct WriteOp<'a> {
    pub file: &'a std::fs::File,
    pub offset: u64,
    pub data: &'a [u8],
}

pub struct ReplicaRing {
    ring: IoUring,
    depth: usize,
}

impl ReplicaRing {
    pub fn new(depth: u32) -> io::Result<ReplicaRing> {
        Ok(ReplicaRing {
            ring: IoUring::new(depth)?,
            depth: depth as usize,
        })
    }

    /// Writes every op, up to the ring's depth in flight, and returns once
    /// all completed; a short write is finished with `pwrite`. The first
    /// error is returned after everything in flight completed.
    pub fn write_all(&mut self, ops: &[WriteOp<'_>]) -> io::Result<()> {
        let mut next = 0;
        let mut in_flight = 0;
        let mut first_error: Option<io::Error> = None;
        while next < ops.len() || in_flight > 0 {
            while next < ops.len() && in_flight < self.depth {
                let op = &ops[next];
                let length = u32::try_from(op.data.len()).unwrap_or(u32::MAX);
                let entry =
                    opcode::Write::new(types::Fd(op.file.as_raw_fd()), op.data.as_ptr(), length)
                        .offset(op.offset)
                        .build()
                        .user_data(next as u64);
                // SAFETY: `op.data` and `op.file` are borrowed for this whole
                // call, and the call returns only after every submitted entry
                // completed (or aborts the process when that cannot be known).
                unsafe { self.ring.submission().push(&entry) }.expect("room below depth");
                next += 1;
                in_flight += 1;
            }
            self.submit_and_wait(1);
            let completions: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|entry| (entry.user_data(), entry.result()))
                .collect();
            for (index, result) in completions {
                in_flight -= 1;
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
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn submit_and_wait(&mut self, want: usize) {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return,
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) => {}
                Err(error) => {
                    // Buffers the kernel may still write from would be freed
                    // on return: stopping is the only safe answer.
                    tracing::error!(%error, "io_uring_enter failed with replica writes in flight; aborting");
                    std::process::abort();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_where_asked() {
        let directory = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(directory.path().join("r.img"))
            .unwrap();
        let blocks: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 4096]).collect();
        let ops: Vec<WriteOp> = blocks
            .iter()
            .enumerate()
            .map(|(i, data)| WriteOp {
                file: &file,
                offset: (99 - i as u64) * 4096,
                data,
            })
            .collect();
        let mut ring = ReplicaRing::new(8).unwrap();
        ring.write_all(&ops).unwrap();
        let mut check = vec![0u8; 4096];
        for i in 0..100u64 {
            file.read_exact_at(&mut check, (99 - i) * 4096).unwrap();
            assert!(check.iter().all(|&b| b == i as u8));
        }
    }
}
