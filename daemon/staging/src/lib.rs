//! The source gateway's staging log: one `StagingLog` per consistency group.
//!
//! Writes from taps are appended here and acknowledged only once durable on the
//! cache volume; the transceiver reads them back in order and releases them when
//! the target has them. Format and cost sketch: docs/formats/staging.md.
//!
//! Files by concern: `record` and `segment` (the on-disk format, pure),
//! `crypto` (AES-256-GCM), `ring` (io_uring and aligned buffers: the only unsafe),
//! `writer` (the group-commit thread), `recovery` (open-time scan), `reader`.

mod crypto;
mod error;
mod reader;
mod record;
mod recovery;
mod ring;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

pub use error::StagingError;
pub use record::body_payload_bytes;
pub use recovery::{CorruptRecord, RecoveryReport};

use crypto::Sealer;
use segment::SegmentHeader;

/// Appends waiting for the writer thread; beyond this `append` waits (backpressure).
const APPENDS_QUEUED_MAX: usize = 1024;
/// Record bytes queued or in flight, in batches: bounds the memory appends hold.
const QUEUED_BYTES_IN_BATCHES: usize = 8;
/// Records in one `append` call.
pub const RECORDS_PER_APPEND_MAX: usize = 65_536;
/// Records returned by one `read_from` call.
pub const RECORDS_PER_READ_MAX: usize = 65_536;
/// Released segment files kept as spares, to be overwritten by later segments
/// (their blocks are written already, so writes into them need no extent conversion).
const SPARES_MAX: usize = 4;

/// How one consistency group's log is laid out and bounded.
#[derive(Debug, Clone)]
pub struct StagingConfig {
    /// The log's own directory on the cache volume (created if missing).
    pub directory: PathBuf,
    pub group: u32,
    /// Size of each preallocated segment file; default 64 MiB.
    pub segment_bytes: u64,
    /// Most bytes of segment files this log may keep on disk; appends wait beyond it.
    pub capacity_bytes: u64,
    /// io_uring entries in flight; default 32.
    pub queue_depth: u32,
    /// Largest group-commit batch; default 8 MiB. Also bounds one record.
    pub batch_bytes_max: usize,
    pub encryption_key: Option<[u8; 32]>,
    /// The first sequence of a log that holds no segment yet (default 1):
    /// a group protected again after failback continues the sequence its
    /// target holds. Kept by the first segment's header once written.
    pub sequence_floor: u64,
}

impl StagingConfig {
    pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
    pub const QUEUE_DEPTH_DEFAULT: u32 = 32;
    pub const BATCH_BYTES_DEFAULT: usize = 8 << 20;

    /// A config with the defaults above.
    pub fn new(directory: impl Into<PathBuf>, group: u32, capacity_bytes: u64) -> StagingConfig {
        StagingConfig {
            directory: directory.into(),
            group,
            segment_bytes: Self::SEGMENT_BYTES_DEFAULT,
            capacity_bytes,
            queue_depth: Self::QUEUE_DEPTH_DEFAULT,
            batch_bytes_max: Self::BATCH_BYTES_DEFAULT,
            encryption_key: None,
            sequence_floor: 1,
        }
    }

    /// Largest encoded record (header + payload + tag): one batch less one block of padding room.
    pub fn record_bytes_max(&self) -> usize {
        self.batch_capacity() - record::BLOCK_BYTES
    }

    fn batch_capacity(&self) -> usize {
        record::align_up(self.batch_bytes_max, record::BLOCK_BYTES)
    }

    fn validate(&self) -> Result<(), StagingError> {
        let block = record::BLOCK_BYTES as u64;
        let fail = |why: String| Err(StagingError::Config(why));
        if self.batch_bytes_max < 64 * 1024 || self.batch_bytes_max > 256 << 20 {
            return fail(format!(
                "batch_bytes_max {} outside 64 KiB..256 MiB",
                self.batch_bytes_max
            ));
        }
        if self.segment_bytes % block != 0
            || self.segment_bytes < self.batch_capacity() as u64 + block
        {
            return fail(format!(
                "segment_bytes {} must be a multiple of 4096 and hold a batch ({}) plus its header",
                self.segment_bytes,
                self.batch_capacity()
            ));
        }
        if self.capacity_bytes < 2 * self.segment_bytes {
            return fail(format!(
                "capacity_bytes {} below two segments",
                self.capacity_bytes
            ));
        }
        if !(2..=4096).contains(&self.queue_depth) {
            return fail(format!("queue_depth {} outside 2..=4096", self.queue_depth));
        }
        Ok(())
    }
}

/// What to do with corrupt records found at open (torn tails are always cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorruptionPolicy {
    /// Open fails with `StagingError::Corrupt` listing every corrupt record.
    Refuse,
    /// Open succeeds; corrupt records are skipped and listed in the report. The
    /// sequences they held are a gap: `read_from` steps over it, and the caller
    /// must resynchronise the disks those records touched.
    Skip,
}

/// One staged record's content.
/// `owner` of the resync markers of `drgw resync` (every disk of a group).
pub const RESYNC_GROUP: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    Write {
        disk: u32,
        offset: u64,
        /// Shared, not copied, between staging, the records kept in memory
        /// for shipping, and the batch being built.
        data: bytes::Bytes,
    },
    Trim {
        disk: u32,
        offset: u64,
        length: u64,
    },
    Flush {
        disk: u32,
    },
    /// An app-consistent point: everything staged before it, named.
    Bookmark {
        name: String,
        /// When the source gateway took it (milliseconds since the epoch).
        unix_ms: u64,
    },
    /// A crash-consistent point: a cut of the group's sequence, taken by the
    /// source gateway at `unix_ms`.
    Point {
        unix_ms: u64,
    },
    /// A resync began (`done` false) or finished (`done` true) here in the
    /// group's sequence, at `unix_ms` on the source gateway: points while
    /// any resync is open are not crash-consistent (resent blocks arrive in
    /// disk order, not in the order they were written). `owner` tells
    /// resyncs apart: a disk's id for the tap's pass over its lost grains,
    /// [`RESYNC_GROUP`] for `drgw resync`.
    Resync {
        unix_ms: u64,
        done: bool,
        owner: u32,
    },
    /// An opaque payload (the target's journal and undo logs use the same
    /// segment format with these records).
    Blob {
        data: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRecord {
    pub sequence: u64,
    pub body: RecordBody,
}

/// Counters and fill level of one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagingUsage {
    /// Segment and spare files.
    pub bytes_on_disk: u64,
    pub capacity_bytes: u64,
    pub sequence_first_unreleased: u64,
    /// Zero when nothing was ever appended (sequences start at 1).
    pub sequence_last_durable: u64,
    pub records_unreleased: u64,
    /// An append is waiting for `release_through` to free a segment.
    pub full: bool,
    pub appends_total: u64,
    pub bytes_appended_total: u64,
    pub barriers_total: u64,
}

/// A contiguous run of sequences stored back to back from `offset` (one batch, or
/// a stretch found at recovery). Readers start at a run, never mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    sequence_first: u64,
    sequence_end: u64,
    offset: u64,
}

struct SegmentState {
    header: SegmentHeader,
    file: Arc<File>,
    runs: Vec<Run>,
}

impl SegmentState {
    fn sequence_end(&self) -> u64 {
        self.runs
            .last()
            .map_or(self.header.sequence_first, |run| run.sequence_end)
    }
}

struct State {
    segments: BTreeMap<u64, SegmentState>,
    /// Spare files (by name number, ascending), each `spare_bytes` long.
    spares: Vec<u64>,
    /// Released segments being renamed to spares (counted on disk meanwhile).
    spares_retiring: usize,
    spare_bytes: u64,
    sequence_first_unreleased: u64,
    sequence_last_durable: u64,
    full: bool,
    closing: bool,
    failure: Option<String>,
    appends_total: u64,
    bytes_appended_total: u64,
    barriers_total: u64,
}

impl State {
    fn bytes_on_disk(&self) -> u64 {
        let spares = (self.spares.len() + self.spares_retiring) as u64 * self.spare_bytes;
        spares
            + self
                .segments
                .values()
                .map(|s| s.header.segment_bytes)
                .sum::<u64>()
    }
}

/// What the writer thread and the handles share.
struct Shared {
    config: StagingConfig,
    sealer: Option<Sealer>,
    log_id: u64,
    state: Mutex<State>,
    /// Signalled when segments are released or the log closes.
    space: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct AppendRequest {
    bodies: Vec<RecordBody>,
    reply: oneshot::Sender<Result<Range<u64>, StagingError>>,
}

/// One consistency group's staging log. Dropping it stops the writer thread
/// (appends still queued are answered with an error).
pub struct StagingLog {
    shared: Arc<Shared>,
    /// One permit per record byte queued or in flight (QUEUED_BYTES_IN_BATCHES batches).
    queued_bytes: Arc<tokio::sync::Semaphore>,
    sender: Option<mpsc::Sender<AppendRequest>>,
    writer: Option<JoinHandle<()>>,
}

impl StagingLog {
    /// Opens or creates the log, refusing corruption (see `open_with_policy`).
    pub fn open(config: StagingConfig) -> Result<(StagingLog, RecoveryReport), StagingError> {
        Self::open_with_policy(config, CorruptionPolicy::Refuse)
    }

    /// Opens or creates the log: scans every segment, cuts a torn tail (an
    /// incomplete or failing record at the end of the last segment with no later
    /// batch after it), and handles corrupt records (a failing record followed by
    /// valid later batches) as `policy` says.
    pub fn open_with_policy(
        config: StagingConfig,
        policy: CorruptionPolicy,
    ) -> Result<(StagingLog, RecoveryReport), StagingError> {
        config.validate()?;
        std::fs::create_dir_all(&config.directory)
            .map_err(|e| StagingError::io(&config.directory, e))?;
        let recovered = recovery::recover(&config, policy)?;
        let ring =
            ring::Ring::new(config.queue_depth, config.batch_capacity()).map_err(|source| {
                StagingError::RingSetup {
                    queue_depth: config.queue_depth,
                    source,
                }
            })?;
        let state = State {
            sequence_first_unreleased: recovered.sequence_first_on_disk,
            sequence_last_durable: recovered.sequence_next - 1,
            segments: recovered.segments,
            spares: recovered.spares,
            spares_retiring: 0,
            spare_bytes: config.segment_bytes,
            full: false,
            closing: false,
            failure: None,
            appends_total: 0,
            bytes_appended_total: 0,
            barriers_total: 0,
        };
        let shared = Arc::new(Shared {
            config,
            sealer: recovered.sealer,
            log_id: recovered.log_id,
            state: Mutex::new(state),
            space: Condvar::new(),
        });
        let (sender, receiver) = mpsc::channel(APPENDS_QUEUED_MAX);
        let start = writer::Start {
            sequence_next: recovered.sequence_next,
            segment_next: recovered.segment_next,
        };
        let writer = writer::spawn(shared.clone(), ring, receiver, start)?;
        let queued_bytes = shared.config.batch_capacity() * QUEUED_BYTES_IN_BATCHES;
        let log = StagingLog {
            shared,
            queued_bytes: Arc::new(tokio::sync::Semaphore::new(queued_bytes)),
            sender: Some(sender),
            writer: Some(writer),
        };
        Ok((log, recovered.report))
    }

    /// Appends `bodies` in order under consecutive sequences and resolves once they
    /// are durable. Waits while the queue or the log is full; never drops a record.
    pub async fn append(&self, bodies: Vec<RecordBody>) -> Result<Range<u64>, StagingError> {
        let record_bytes = self.check_append(&bodies)?;
        let limit = self.shared.config.batch_capacity() * QUEUED_BYTES_IN_BATCHES;
        let permits = u32::try_from(record_bytes.min(limit)).expect("limit fits u32");
        // Held until the answer: bounds the bytes appends hold in memory.
        let _permit = self
            .queued_bytes
            .acquire_many(permits)
            .await
            .expect("semaphore never closed");
        let (reply, answer) = oneshot::channel();
        let sender = self.sender.as_ref().expect("sender lives until drop");
        sender
            .send(AppendRequest { bodies, reply })
            .await
            .map_err(|_| self.writer_failed())?;
        answer.await.map_err(|_| self.writer_failed())?
    }

    /// Checks the limits; returns the bytes the records take on disk.
    fn check_append(&self, bodies: &[RecordBody]) -> Result<usize, StagingError> {
        if bodies.len() > RECORDS_PER_APPEND_MAX {
            return Err(StagingError::AppendTooLarge {
                count: bodies.len(),
                limit: RECORDS_PER_APPEND_MAX,
            });
        }
        let limit_bytes = self.shared.config.record_bytes_max();
        let encrypted = self.shared.sealer.is_some();
        let mut total = 0usize;
        for body in bodies {
            let record_bytes = record::body_record_bytes(body, encrypted);
            if record_bytes > limit_bytes {
                return Err(StagingError::RecordTooLarge {
                    record_bytes: record_bytes as u64,
                    limit_bytes: limit_bytes as u64,
                });
            }
            total += record_bytes;
        }
        Ok(total)
    }

    fn writer_failed(&self) -> StagingError {
        let failure = self.shared.lock().failure.clone();
        StagingError::WriterFailed(failure.unwrap_or_else(|| "writer stopped".into()))
    }

    /// Reads durable records with sequence >= `from`, in order, until `max_bytes` of
    /// payload (at least one record when any is there). Gaps left by skipped
    /// corruption are stepped over.
    pub async fn read_from(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<StagedRecord>, StagingError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || reader::read_from(&shared, from, max_bytes))
            .await
            .expect("staging reader task panicked")
    }

    /// `read_from` for callers already on a blocking thread.
    pub fn read_from_blocking(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<StagedRecord>, StagingError> {
        reader::read_from(&self.shared, from, max_bytes)
    }

    /// The target has everything through `sequence`: delete the segments wholly at
    /// or below it (never the newest segment, which keeps the log's numbering), or
    /// keep their files as spares for later segments (up to SPARES_MAX).
    pub fn release_through(&self, sequence: u64) -> Result<(), StagingError> {
        let (doomed, kept) = {
            let mut state = self.shared.lock();
            if sequence > state.sequence_last_durable {
                return Err(StagingError::ReleaseBeyondDurable {
                    sequence,
                    last_durable: state.sequence_last_durable,
                });
            }
            state.sequence_first_unreleased = state.sequence_first_unreleased.max(sequence + 1);
            let doomed = take_released(&mut state, sequence);
            let room = SPARES_MAX.saturating_sub(state.spares.len() + state.spares_retiring);
            let kept = doomed
                .iter()
                .take_while(|(_, bytes)| *bytes == state.spare_bytes)
                .count()
                .min(room);
            state.spares_retiring += kept;
            (doomed, kept)
        };
        let mut retiring = kept;
        let result = self.remove_released(&doomed, &mut retiring);
        // After a failure the spares not renamed are no longer counted on disk.
        self.shared.lock().spares_retiring -= retiring;
        result?;
        if !doomed.is_empty() {
            tracing::debug!(
                group = self.shared.config.group,
                segments = doomed.len(),
                "staging: released"
            );
            self.shared.space.notify_all();
        }
        Ok(())
    }

    /// Renames the first `retiring` of `doomed` to spares and unlinks the rest, oldest
    /// first; decrements `retiring` as spares become usable.
    fn remove_released(
        &self,
        doomed: &[(u64, u64)],
        retiring: &mut usize,
    ) -> Result<(), StagingError> {
        let directory = &self.shared.config.directory;
        for (number, _) in doomed {
            let keep = *retiring > 0;
            if keep {
                segment::retire(directory, *number)?;
            } else {
                let path = segment::segment_path(directory, *number);
                std::fs::remove_file(&path).map_err(|e| StagingError::io(&path, e))?;
            }
            // Ascending removals, each made durable: a crash never leaves a gap in numbering.
            segment::sync_directory(directory)?;
            if keep {
                *retiring -= 1;
                let mut state = self.shared.lock();
                state.spares_retiring -= 1;
                let at = state.spares.partition_point(|n| n < number);
                state.spares.insert(at, *number);
            }
        }
        Ok(())
    }

    pub fn usage(&self) -> StagingUsage {
        let state = self.shared.lock();
        StagingUsage {
            bytes_on_disk: state.bytes_on_disk(),
            capacity_bytes: self.shared.config.capacity_bytes,
            sequence_first_unreleased: state.sequence_first_unreleased,
            sequence_last_durable: state.sequence_last_durable,
            records_unreleased: (state.sequence_last_durable + 1)
                .saturating_sub(state.sequence_first_unreleased),
            full: state.full,
            appends_total: state.appends_total,
            bytes_appended_total: state.bytes_appended_total,
            barriers_total: state.barriers_total,
        }
    }
}

/// Removes from `state` the segments wholly at or below `sequence`, oldest first,
/// stopping at the first one still needed; returns their numbers and sizes.
fn take_released(state: &mut State, sequence: u64) -> Vec<(u64, u64)> {
    let newest = state.segments.keys().next_back().copied();
    let mut doomed = Vec::new();
    while let Some((&number, segment)) = state.segments.iter().next() {
        if Some(number) == newest || segment.sequence_end() > sequence + 1 {
            break;
        }
        let bytes = segment.header.segment_bytes;
        state.segments.remove(&number);
        doomed.push((number, bytes));
    }
    doomed
}

impl Drop for StagingLog {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.space.notify_all();
        drop(self.sender.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(
                    group = self.shared.config.group,
                    "staging writer thread panicked"
                );
            }
        }
    }
}
