//! The group-commit thread: the one writer of a log.
//!
//! It drains every queued append into one batch (bounded by the batch buffer),
//! encodes the records into the ring's aligned buffer, writes them with several
//! writes in flight, and answers the appenders only after a later fdatasync.
//! Batches are pipelined one deep: batch K is written while the barrier of
//! batch K-1 runs, and batch K's barrier starts only after K-1's completed, so:
//! - when batch K+1's writes are issued, batch K-1 is durable. Recovery relies on
//!   this: valid records of two batches later than a failing record prove it was
//!   durable (corruption), fewer may be a torn tail;
//! - a segment is fully durable before the next one is created (the pipeline is
//!   drained at rollover), so only the newest segment can have a torn tail.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::record::{self, Placement, BLOCK_BYTES, HEADER_BYTES};
use super::ring::Ring;
use super::segment::{self, SegmentHeader};
use super::{AppendRequest, Run, SegmentState, Shared, StagingError};

/// Appends taken off the channel but not yet answered.
const APPENDS_PENDING_MAX: usize = 4096;

pub struct Start {
    pub sequence_next: u64,
    pub segment_next: u64,
}

struct Pending {
    request: AppendRequest,
    /// Bodies encoded so far (durable once the batch holding them completed).
    encoded: usize,
    sequence_first: u64,
}

impl Pending {
    /// Bodies still to encode (an empty append counts until it has its sequence).
    fn has_unencoded(&self) -> bool {
        self.encoded < self.request.bodies.len() || self.sequence_first == 0
    }

    fn is_durable(&self, sequence_durable_end: u64) -> bool {
        let count = self.request.bodies.len() as u64;
        !self.has_unencoded() && self.sequence_first + count <= sequence_durable_end
    }
}

struct Active {
    number: u64,
    file: Arc<File>,
    segment_bytes: u64,
    /// Where the next batch goes: block aligned, everything before it durable.
    offset: u64,
}

/// A batch written whose barrier is outstanding.
struct Unsettled {
    segment: u64,
    run: Run,
    record_bytes: u64,
}

struct Batch {
    len: usize,
    sequence_first: u64,
    sequence_end: u64,
    record_bytes: u64,
    rollover: bool,
}

struct Writer {
    shared: Arc<Shared>,
    ring: Ring,
    receiver: mpsc::Receiver<AppendRequest>,
    pending: VecDeque<Pending>,
    active: Option<Active>,
    unsettled: Option<Unsettled>,
    sequence_next: u64,
    /// One past the last durable sequence.
    sequence_durable_end: u64,
    segment_next: u64,
}

pub fn spawn(
    shared: Arc<Shared>,
    ring: Ring,
    receiver: mpsc::Receiver<AppendRequest>,
    start: Start,
) -> Result<JoinHandle<()>, StagingError> {
    let group = shared.config.group;
    let writer = Writer {
        shared,
        ring,
        receiver,
        pending: VecDeque::new(),
        active: None,
        unsettled: None,
        sequence_next: start.sequence_next,
        sequence_durable_end: start.sequence_next,
        segment_next: start.segment_next,
    };
    std::thread::Builder::new()
        .name(format!("staging-{group}"))
        .spawn(move || writer.run())
        .map_err(|e| StagingError::Config(format!("cannot spawn the staging writer thread: {e}")))
}

impl Writer {
    fn run(mut self) {
        loop {
            while self.pending.len() < APPENDS_PENDING_MAX {
                match self.receiver.try_recv() {
                    Ok(request) => self.accept(request),
                    Err(_) => break,
                }
            }
            let result = if self.pending.iter().any(Pending::has_unencoded) {
                self.step()
            } else if self.unsettled.is_some() {
                self.settle()
            } else {
                match self.receiver.blocking_recv() {
                    Some(request) => {
                        self.accept(request);
                        Ok(())
                    }
                    None => return,
                }
            };
            if let Err(error) = result {
                self.fail(error);
                return;
            }
        }
    }

    fn accept(&mut self, request: AppendRequest) {
        self.pending.push_back(Pending {
            request,
            encoded: 0,
            sequence_first: 0,
        });
    }

    /// One batch: encode what fits and write it, then wait for the previous batch's
    /// barrier (answering its appenders) and start this batch's barrier.
    fn step(&mut self) -> Result<(), StagingError> {
        if self.active.is_none() {
            self.settle()?;
            self.rollover()?;
        }
        let batch = self.encode_batch();
        if batch.len > 0 {
            let run = self.write(&batch)?;
            self.settle()?;
            let active = self.active.as_ref().expect("active segment");
            self.ring
                .barrier_start(&active.file)
                .map_err(|e| self.io_error(active.number, e))?;
            self.unsettled = Some(Unsettled {
                segment: active.number,
                run,
                record_bytes: batch.record_bytes,
            });
        } else {
            self.answer_completed();
        }
        if batch.rollover {
            self.settle()?;
            self.active = None;
        }
        Ok(())
    }

    /// Waits for the outstanding barrier, publishes its batch, answers the appends it completed.
    fn settle(&mut self) -> Result<(), StagingError> {
        if let Some(unsettled) = self.unsettled.take() {
            self.ring
                .barrier_wait()
                .map_err(|e| self.io_error(unsettled.segment, e))?;
            self.publish(&unsettled);
        }
        self.answer_completed();
        Ok(())
    }

    fn io_error(&self, segment: u64, error: std::io::Error) -> StagingError {
        StagingError::io(
            segment::segment_path(&self.shared.config.directory, segment),
            error,
        )
    }

    fn encode_batch(&mut self) -> Batch {
        let active = self.active.as_ref().expect("active segment");
        let (segment, segment_room) = (
            active.number,
            (active.segment_bytes - active.offset) as usize,
        );
        let limit = segment_room.min(self.ring.batch_capacity());
        let sealer = self.shared.sealer.as_ref();
        let buffer = self.ring.batch_mut();
        let sequence_first = self.sequence_next;
        let (mut position, mut record_bytes, mut rollover) = (0usize, 0u64, false);
        'appends: for pending in self.pending.iter_mut() {
            if pending.sequence_first == 0 {
                pending.sequence_first = self.sequence_next;
            }
            while let Some(body) = pending.request.bodies.get(pending.encoded) {
                let start = record::skip_short_gap(position);
                let need = record::body_record_bytes(body, sealer.is_some());
                if start + need > limit {
                    rollover = start + need > segment_room;
                    break 'appends;
                }
                buffer[position..start].fill(0);
                position = start;
                let at = Placement {
                    sequence: self.sequence_next,
                    batch_sequence_first: sequence_first,
                    segment,
                };
                let used = record::encode(&mut buffer[position..], body, at, sealer);
                debug_assert_eq!(used, need);
                position += used;
                record_bytes += used as u64;
                pending.encoded += 1;
                self.sequence_next += 1;
            }
        }
        let len = pad_to_block(&mut buffer[..limit], position, sequence_first, segment);
        Batch {
            len,
            sequence_first,
            sequence_end: self.sequence_next,
            record_bytes,
            rollover,
        }
    }

    /// Writes a batch at the segment's next offset (written, not yet durable).
    fn write(&mut self, batch: &Batch) -> Result<Run, StagingError> {
        let active = self.active.as_mut().expect("active segment");
        let offset = active.offset;
        assert!(offset % BLOCK_BYTES as u64 == 0);
        assert!(offset + batch.len as u64 <= active.segment_bytes);
        let (number, file) = (active.number, active.file.clone());
        active.offset += batch.len as u64;
        self.ring
            .write_batch(&file, offset, batch.len)
            .map_err(|e| self.io_error(number, e))?;
        Ok(Run {
            sequence_first: batch.sequence_first,
            sequence_end: batch.sequence_end,
            offset,
        })
    }

    fn publish(&mut self, unsettled: &Unsettled) {
        let run = unsettled.run;
        assert_eq!(
            self.sequence_durable_end, run.sequence_first,
            "sequence continuity"
        );
        self.sequence_durable_end = run.sequence_end;
        let mut state = self.shared.lock();
        assert_eq!(state.sequence_last_durable + 1, run.sequence_first);
        state.sequence_last_durable = run.sequence_end - 1;
        state.bytes_appended_total += unsettled.record_bytes;
        state.barriers_total = self.ring.counters.barriers_total;
        let segment = state
            .segments
            .get_mut(&unsettled.segment)
            .expect("segment of an unsettled batch is listed");
        segment.runs.push(run);
    }

    /// Answers, in order, the appends whose records are all durable.
    fn answer_completed(&mut self) {
        let durable_end = self.sequence_durable_end;
        let completed = self
            .pending
            .iter()
            .take_while(|p| p.is_durable(durable_end))
            .count();
        // Counted before answering, so an appender that reads usage() sees itself.
        self.shared.lock().appends_total += completed as u64;
        for pending in self.pending.drain(..completed) {
            let count = pending.request.bodies.len() as u64;
            let range: Range<u64> = pending.sequence_first..pending.sequence_first + count;
            // The appender may have given up waiting; its records are durable regardless.
            let _ = pending.request.reply.send(Ok(range));
        }
    }

    /// Starts the next segment, waiting for room: in a spare file when there is one
    /// (renamed only once its new header is durable), else in a new preallocated file.
    fn rollover(&mut self) -> Result<(), StagingError> {
        let spare = self.wait_for_room()?;
        let config = &self.shared.config;
        let number = self.segment_next;
        let file = Arc::new(match spare {
            Some(spare) => segment::open_spare(&config.directory, spare)?,
            None => segment::create(&config.directory, number, config.segment_bytes)?,
        });
        let header = SegmentHeader {
            encrypted: self.shared.sealer.is_some(),
            recycled: spare.is_some(),
            group: config.group,
            segment: number,
            sequence_first: self.sequence_next,
            log_id: self.shared.log_id,
            segment_bytes: config.segment_bytes,
            key_check: self.shared.sealer.as_ref().map_or(0, |s| s.key_check()),
        };
        header.encode(self.ring.block_mut());
        let path = match spare {
            Some(spare) => segment::spare_path(&config.directory, spare),
            None => segment::segment_path(&config.directory, number),
        };
        self.ring
            .write_block_durable(&file, 0)
            .map_err(|e| segment::direct_error(&path, e))?;
        if let Some(spare) = spare {
            segment::install(&config.directory, spare, number)?;
        }
        segment::sync_directory(&config.directory)?;
        let read_file = Arc::new(segment::open_read(&config.directory, number)?);
        self.segment_next += 1;
        let state = SegmentState {
            header,
            file: read_file,
            runs: Vec::new(),
        };
        {
            let mut shared = self.shared.lock();
            shared.spares.retain(|n| Some(*n) != spare);
            shared.segments.insert(number, state);
        }
        self.active = Some(Active {
            number,
            file,
            segment_bytes: config.segment_bytes,
            offset: BLOCK_BYTES as u64,
        });
        tracing::debug!(
            group = config.group,
            segment = number,
            sequence_first = header.sequence_first,
            recycled = header.recycled,
            "staging: new segment"
        );
        Ok(())
    }

    /// Waits until a spare exists or a new segment fits; returns the spare to use.
    fn wait_for_room(&mut self) -> Result<Option<u64>, StagingError> {
        let config = &self.shared.config;
        let mut state = self.shared.lock();
        while state.spares.is_empty()
            && state.bytes_on_disk() + config.segment_bytes > config.capacity_bytes
            && !state.closing
        {
            if !state.full {
                tracing::info!(
                    group = config.group,
                    capacity_bytes = config.capacity_bytes,
                    "staging: log full, appends wait for release"
                );
            }
            state.full = true;
            state = self
                .shared
                .space
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.full = false;
        if state.closing {
            return Err(StagingError::WriterFailed(
                "log closed while waiting for room".into(),
            ));
        }
        Ok(state.spares.first().copied())
    }

    /// A write or barrier failed: the log stops (a failed fdatasync cannot be retried
    /// safely). Every waiting appender gets the error.
    fn fail(mut self, error: StagingError) {
        tracing::error!(group = self.shared.config.group, %error, "staging writer stopped");
        self.shared.lock().failure = Some(error.to_string());
        self.receiver.close();
        while let Ok(request) = self.receiver.try_recv() {
            self.accept(request);
        }
        for pending in self.pending.drain(..) {
            let _ = pending
                .request
                .reply
                .send(Err(StagingError::WriterFailed(error.to_string())));
        }
    }
}

/// Pads a batch to the next block: a padding record when the gap holds a header,
/// zeroes otherwise (recovery skips a gap shorter than a header). Returns the length.
fn pad_to_block(
    buffer: &mut [u8],
    position: usize,
    batch_sequence_first: u64,
    segment: u64,
) -> usize {
    let len = record::align_up(position, BLOCK_BYTES);
    let fill = len - position;
    if fill >= HEADER_BYTES {
        record::encode_padding(
            &mut buffer[position..len],
            fill,
            batch_sequence_first,
            segment,
        );
    } else {
        buffer[position..len].fill(0);
    }
    len
}
