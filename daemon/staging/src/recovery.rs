//! Open-time scan: finds every valid record, cuts a torn tail, reports corruption.
//!
//! Rules (docs/formats/staging.md, "Recovery"):
//! - A segment other than the newest must hold every sequence from its header's
//!   `sequence_first` up to the next segment's `sequence_first`; anything failing
//!   inside that range is corruption. Bytes after that range are the dead tail of
//!   an earlier open and are ignored.
//! - In the newest segment, the first failing record ends the log unless valid
//!   records of two later batches follow it (the writer issues batch K+1 only
//!   after batch K-1's barrier, so those prove the failing one was durable):
//!   then it is corruption. Otherwise it is a torn tail and is cut.
//! - Records of another segment number (a recycled file's earlier contents) are
//!   never valid here; in a recycled segment the torn bytes counted stop at them.
//! - Spare files are kept (up to SPARES_MAX, of the configured size, within
//!   capacity) or removed; their contents are never read.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use super::crypto::Sealer;
use super::record::{self, Kind, BLOCK_BYTES, HEADER_BYTES, RECORD_ALIGN, RECORD_MAGIC};
use super::segment::{self, SegmentHeader};
use super::{CorruptionPolicy, Run, SegmentState, StagingConfig, StagingError, SPARES_MAX};

/// The writer issues batch K+1 only after batch K-1's barrier completed: a valid
/// record of the second batch after a failing one proves the failing one durable.
const PIPELINE_PROOF_BATCHES: usize = 2;

/// A record (or segment header) that failed verification with valid data after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord {
    pub segment: u64,
    /// Byte offset in the segment file.
    pub offset: u64,
    /// The sequence that was expected there (the first one lost).
    pub sequence_expected: u64,
    pub reason: String,
}

/// What open found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub records: u64,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
    /// Bytes after the last valid record of the newest segment that were not zero.
    pub torn_tail_bytes_cut: u64,
    pub corrupt: Vec<CorruptRecord>,
}

pub(super) struct Recovered {
    pub segments: BTreeMap<u64, SegmentState>,
    pub spares: Vec<u64>,
    pub sealer: Option<Sealer>,
    pub log_id: u64,
    pub sequence_next: u64,
    pub sequence_first_on_disk: u64,
    pub segment_next: u64,
    pub report: RecoveryReport,
}

pub(super) fn recover(
    config: &StagingConfig,
    policy: CorruptionPolicy,
) -> Result<Recovered, StagingError> {
    let directory = &config.directory;
    let mut numbers = segment::list(directory)?;
    let spare_numbers = segment::list_spares(directory)?;
    // Never reuse a number, not even one whose file is skipped as corrupt or kept
    // as a spare: the number is part of every record's nonce.
    let segment_next = numbers
        .last()
        .max(spare_numbers.last())
        .map_or(0, |n| n + 1);
    let mut report = RecoveryReport::default();
    let headers = read_headers(config, &mut numbers, &mut report)?;
    let log_id = match headers.values().next() {
        Some(header) => header.log_id,
        None => new_log_id()?,
    };
    let sealer = config
        .encryption_key
        .as_ref()
        .map(|key| Sealer::for_log(key, config.group, log_id));
    for (&number, header) in &headers {
        check_header(config, header, number, log_id, sealer.as_ref())?;
    }
    let mut segments = BTreeMap::new();
    let listed: Vec<u64> = headers.keys().copied().collect();
    for (index, &number) in listed.iter().enumerate() {
        let header = headers[&number];
        let next = listed.get(index + 1).map(|n| headers[n].sequence_first);
        if index > 0 && listed[index - 1] + 1 != number {
            report
                .corrupt
                .push(missing(listed[index - 1] + 1, header.sequence_first));
        }
        let bytes = read_segment(config, number, header.segment_bytes)?;
        let scan = scan(&bytes, &header, next);
        report.torn_tail_bytes_cut += scan.torn_bytes;
        report.corrupt.extend(scan.corrupt);
        let file = Arc::new(segment::open_read(directory, number)?);
        segments.insert(
            number,
            SegmentState {
                header,
                file,
                runs: scan.runs,
            },
        );
    }
    if let Some(newest) = segments.values().next_back() {
        // Records the last writer wrote but never flushed become durable before any
        // newer segment can exist (else a later open would call their loss corruption).
        newest
            .file
            .sync_data()
            .map_err(|e| StagingError::io(directory, e))?;
    }
    let recovered = finish(config, policy, segments, sealer, log_id, report)?;
    let segments_bytes = recovered
        .segments
        .values()
        .map(|s| s.header.segment_bytes)
        .sum();
    let spares = keep_spares(config, spare_numbers, segments_bytes)?;
    Ok(Recovered {
        segment_next,
        spares,
        ..recovered
    })
}

/// Keeps the spares of the configured size, up to SPARES_MAX and within capacity;
/// removes the others. Returns the numbers kept.
fn keep_spares(
    config: &StagingConfig,
    numbers: Vec<u64>,
    segments_bytes: u64,
) -> Result<Vec<u64>, StagingError> {
    let (mut kept, mut removed) = (Vec::new(), 0usize);
    for number in numbers {
        let path = segment::spare_path(&config.directory, number);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| StagingError::io(&path, e))?
            .len();
        let fits = segments_bytes + (kept.len() as u64 + 1) * config.segment_bytes
            <= config.capacity_bytes;
        if bytes == config.segment_bytes && kept.len() < SPARES_MAX && fits {
            kept.push(number);
        } else {
            std::fs::remove_file(&path).map_err(|e| StagingError::io(&path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        segment::sync_directory(&config.directory)?;
    }
    Ok(kept)
}

fn finish(
    config: &StagingConfig,
    policy: CorruptionPolicy,
    segments: BTreeMap<u64, SegmentState>,
    sealer: Option<Sealer>,
    log_id: u64,
    mut report: RecoveryReport,
) -> Result<Recovered, StagingError> {
    if !report.corrupt.is_empty() && policy == CorruptionPolicy::Refuse {
        return Err(StagingError::Corrupt {
            directory: config.directory.clone(),
            corrupt: report.corrupt,
        });
    }
    let runs = || segments.values().flat_map(|s| s.runs.iter());
    report.records = runs()
        .map(|run| run.sequence_end - run.sequence_first)
        .sum();
    report.first_sequence = runs().next().map(|run| run.sequence_first);
    report.last_sequence = runs().last().map(|run| run.sequence_end - 1);
    let sequence_next = segments
        .values()
        .next_back()
        .map_or(config.sequence_floor.max(1), |s| s.sequence_end());
    let sequence_first_on_disk = segments
        .values()
        .next()
        .map_or(sequence_next, |s| s.header.sequence_first);
    let segment_next = segments.keys().next_back().map_or(0, |n| n + 1);
    if report.torn_tail_bytes_cut > 0 || !report.corrupt.is_empty() {
        tracing::warn!(
            group = config.group,
            torn_tail_bytes_cut = report.torn_tail_bytes_cut,
            corrupt = report.corrupt.len(),
            "staging: recovery cut or skipped records"
        );
    }
    Ok(Recovered {
        segments,
        spares: Vec::new(),
        sealer,
        log_id,
        sequence_next,
        sequence_first_on_disk,
        segment_next,
        report,
    })
}

fn missing(segment: u64, sequence_expected: u64) -> CorruptRecord {
    CorruptRecord {
        segment,
        offset: 0,
        sequence_expected,
        reason: "segment file missing".into(),
    }
}

/// Reads every segment header. The newest segment may have been torn while being
/// created (no record is written before its header is durable): it is removed.
fn read_headers(
    config: &StagingConfig,
    numbers: &mut Vec<u64>,
    report: &mut RecoveryReport,
) -> Result<BTreeMap<u64, SegmentHeader>, StagingError> {
    let mut headers = BTreeMap::new();
    let newest = numbers.last().copied();
    for &number in numbers.iter() {
        let mut block = vec![0u8; BLOCK_BYTES];
        let path = segment::segment_path(&config.directory, number);
        let read = segment::open_scan(&config.directory, number)?
            .take(BLOCK_BYTES as u64)
            .read(&mut block)
            .map_err(|e| StagingError::io(&path, e))?;
        match SegmentHeader::decode(&block[..read]) {
            Ok(header) if header.segment == number => {
                headers.insert(number, header);
            }
            Ok(header) => report.corrupt.push(CorruptRecord {
                segment: number,
                offset: 0,
                sequence_expected: header.sequence_first,
                reason: format!("header names segment {}", header.segment),
            }),
            Err(_) if Some(number) == newest && !holds_records(config, number)? => {
                tracing::warn!(
                    segment = number,
                    "staging: removing a segment torn while being created"
                );
                std::fs::remove_file(&path).map_err(|e| StagingError::io(&path, e))?;
                segment::sync_directory(&config.directory)?;
            }
            Err(reason) => report.corrupt.push(CorruptRecord {
                segment: number,
                offset: 0,
                sequence_expected: 0,
                reason,
            }),
        }
    }
    numbers.retain(|n| headers.contains_key(n));
    Ok(headers)
}

fn holds_records(config: &StagingConfig, number: u64) -> Result<bool, StagingError> {
    let bytes = read_segment(config, number, u64::MAX)?;
    let found = bytes.len() > BLOCK_BYTES
        && find_later(&bytes[BLOCK_BYTES..], 0, number, |_| true).is_some();
    Ok(found)
}

fn check_header(
    config: &StagingConfig,
    header: &SegmentHeader,
    number: u64,
    log_id: u64,
    sealer: Option<&Sealer>,
) -> Result<(), StagingError> {
    if header.group != config.group {
        return Err(StagingError::GroupMismatch {
            segment: number,
            expected: config.group,
            found: header.group,
        });
    }
    if header.log_id != log_id {
        return Err(StagingError::LogIdMismatch {
            segment: number,
            expected: log_id,
            found: header.log_id,
        });
    }
    if header.encrypted != sealer.is_some() {
        return Err(StagingError::EncryptionMismatch {
            segment: number,
            encrypted: header.encrypted,
            key_given: sealer.is_some(),
        });
    }
    if sealer.is_some_and(|s| s.key_check() != header.key_check) {
        return Err(StagingError::WrongKey { segment: number });
    }
    Ok(())
}

fn read_segment(config: &StagingConfig, number: u64, limit: u64) -> Result<Vec<u8>, StagingError> {
    let path = segment::segment_path(&config.directory, number);
    let mut bytes = Vec::new();
    segment::open_scan(&config.directory, number)?
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| StagingError::io(&path, e))?;
    Ok(bytes)
}

fn new_log_id() -> Result<u64, StagingError> {
    let mut id = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(|e| StagingError::io("/dev/urandom", e))?;
    Ok(u64::from_le_bytes(id))
}

/// The outcome of scanning one segment's bytes.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub runs: Vec<Run>,
    pub corrupt: Vec<CorruptRecord>,
    pub torn_bytes: u64,
}

/// Scans a segment. `sequence_end` is Some(next segment's first sequence) for all
/// but the newest segment. Pure: no I/O, so it is tested on byte vectors.
pub(super) fn scan(bytes: &[u8], header: &SegmentHeader, sequence_end: Option<u64>) -> Scan {
    let number = header.segment;
    let (mut position, mut expected) = (BLOCK_BYTES, header.sequence_first);
    let mut result = Scan::default();
    // After skipping a corrupt stretch the next record must start a run of its own:
    // readers walk a run from its offset and must not step onto the bad bytes.
    let mut resumed = false;
    loop {
        if sequence_end.is_some_and(|end| expected >= end) {
            break;
        }
        position = record::skip_short_gap(position);
        let reason = match record::decode_header(bytes.get(position..).unwrap_or(&[]), number) {
            Ok(found) if found.kind == Kind::Padding => {
                position += found.record_bytes();
                continue;
            }
            Ok(found) if found.sequence == expected => {
                let run_start = resumed || found.batch_sequence_first == expected;
                extend_runs(&mut result.runs, expected, position as u64, run_start);
                resumed = false;
                position += found.record_bytes();
                expected += 1;
                continue;
            }
            Ok(found) => format!("sequence {} where {expected} was expected", found.sequence),
            Err(invalid) => invalid.to_string(),
        };
        // The record at `position` fails. Corruption or torn tail?
        // Newest segment: valid records of PIPELINE_PROOF_BATCHES later batches prove
        // the failing bytes were durable (see writer.rs); fewer may be a torn tail.
        // Older segments were durable whole before the next one was created.
        let durable = match sequence_end {
            None => later_batches(bytes, position, number, expected) >= PIPELINE_PROOF_BATCHES,
            Some(_) => true,
        };
        if !durable {
            let end = if header.recycled {
                own_record_end(bytes, position, number)
            } else {
                nonzero_end(bytes, position)
            };
            result.torn_bytes = end.saturating_sub(position) as u64;
            break;
        }
        result.corrupt.push(CorruptRecord {
            segment: number,
            offset: position as u64,
            sequence_expected: expected,
            reason,
        });
        // Resume at the first valid record after the bad bytes, whatever its batch.
        let end = sequence_end.unwrap_or(u64::MAX);
        match find_later(bytes, position, number, |h| {
            h.sequence >= expected && h.sequence < end
        }) {
            Some((offset, sequence)) => (position, expected, resumed) = (offset, sequence, true),
            None => break,
        }
    }
    result
}

/// Appends `sequence` at `offset` to the last run, or starts a run (at each batch start).
fn extend_runs(runs: &mut Vec<Run>, sequence: u64, offset: u64, run_start: bool) {
    match runs.last_mut() {
        Some(run) if !run_start && run.sequence_end == sequence => run.sequence_end += 1,
        _ => runs.push(Run {
            sequence_first: sequence,
            sequence_end: sequence + 1,
            offset,
        }),
    }
}

/// Valid (checksummed) non-padding records at RECORD_ALIGN offsets after `position`.
fn valid_after(
    bytes: &[u8],
    position: usize,
    segment: u64,
) -> impl Iterator<Item = (usize, record::Header)> + '_ {
    let magic = RECORD_MAGIC.to_le_bytes();
    let start = record::align_up(position + 1, RECORD_ALIGN);
    let end = bytes.len().saturating_sub(HEADER_BYTES);
    (start..end)
        .step_by(RECORD_ALIGN)
        .filter_map(move |offset| {
            if bytes[offset..offset + 4] != magic {
                return None;
            }
            let header = record::decode_header(&bytes[offset..], segment).ok()?;
            (header.kind != Kind::Padding).then_some((offset, header))
        })
}

/// The first valid record after `position` matching `accept`: (offset, sequence).
fn find_later(
    bytes: &[u8],
    position: usize,
    segment: u64,
    accept: impl Fn(&record::Header) -> bool,
) -> Option<(usize, u64)> {
    valid_after(bytes, position, segment)
        .find(|(_, header)| accept(header))
        .map(|(offset, header)| (offset, header.sequence))
}

/// How many batches later than the failing bytes at `position` left a valid record
/// (counted up to PIPELINE_PROOF_BATCHES). A batch is later when it starts after
/// `expected`, or when it holds record `expected` itself (the failing bytes were
/// then the padding of an earlier batch).
fn later_batches(bytes: &[u8], position: usize, segment: u64, expected: u64) -> usize {
    let mut batches: Vec<u64> = Vec::with_capacity(PIPELINE_PROOF_BATCHES);
    for (_, header) in valid_after(bytes, position, segment) {
        let later = header.batch_sequence_first > expected || header.sequence == expected;
        if later && header.sequence >= expected && !batches.contains(&header.batch_sequence_first) {
            batches.push(header.batch_sequence_first);
            if batches.len() == PIPELINE_PROOF_BATCHES {
                break;
            }
        }
    }
    batches.len()
}

/// In a recycled segment the bytes after the cut hold the file's earlier contents:
/// the torn bytes end with the last record header (checksummed or not) naming this
/// segment at or after `position`, counted with the length it claims.
fn own_record_end(bytes: &[u8], position: usize, segment: u64) -> usize {
    let magic = RECORD_MAGIC.to_le_bytes();
    let end = bytes.len().saturating_sub(HEADER_BYTES);
    (position..end)
        .step_by(RECORD_ALIGN)
        .rev()
        .filter(|&offset| bytes[offset..offset + 4] == magic)
        .find_map(|offset| {
            let header = record::parse_header(&bytes[offset..], segment).ok()?;
            Some((offset + header.record_bytes()).min(bytes.len()))
        })
        .unwrap_or(position)
}

fn nonzero_end(bytes: &[u8], position: usize) -> usize {
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(position, |last| (last + 1).max(position))
}
