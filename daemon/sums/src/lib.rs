//! Block checksums for resync (docs/ARCHITECTURE.md, "Resync"): the
//! XXH3-128 of every block, seeded per resync, read through io_uring with
//! several reads in flight (O_DIRECT when the file takes it). The tap sums
//! its primary disk, the target its replica, with this same code.

use drgw_io::aligned::{AlignedBuffer, DIRECT_ALIGNMENT};
use drgw_io::uring::Uring;
use drgw_wire::SumSpan;
use io_uring::{opcode, types};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use xxhash_rust::xxh3::Xxh3;

/// Bytes of one read.
const READ_BYTES: u64 = 1 << 20;
/// Reads in flight (one round).
const DEPTH: usize = 8;

/// What to sum: a file (opened O_DIRECT when `direct`) holding a disk of
/// `size_bytes`. A block running past the end is summed over the bytes it
/// has (none: the sum of nothing).
pub struct SumSource<'a> {
    pub file: &'a File,
    pub direct: bool,
    pub size_bytes: u64,
}

/// The checksum of one block as a whole.
pub fn block_sum(data: &[u8], seed: u64) -> u128 {
    xxhash_rust::xxh3::xxh3_128_with_seed(data, seed)
}

/// One read: `length` bytes at `offset`, holding blocks `block..=last_block`
/// (indices into the answer): whole blocks that follow each other on the
/// disk, or one piece of a block larger than a read.
struct Piece {
    block: usize,
    last_block: usize,
    offset: u64,
    length: u64,
}

/// The bytes `start..end` of every block of `spans`, in order, clipped to
/// the disk (`start == end` for a block wholly past its end).
fn block_ranges(size_bytes: u64, block_bytes: u32, spans: &[SumSpan]) -> Vec<(u64, u64)> {
    let block_bytes = u64::from(block_bytes);
    spans
        .iter()
        .flat_map(|span| {
            (0..u64::from(span.blocks)).map(move |index| {
                let start = (span.offset + index * block_bytes).min(size_bytes);
                (start, (start + block_bytes).min(size_bytes))
            })
        })
        .collect()
}

/// The reads for `blocks`: consecutive blocks that follow each other on the
/// disk share reads of up to `READ_BYTES` (16 blocks of 64 KiB a read, not
/// 16 reads: a round of reads costs its slowest read, whatever its size);
/// a block larger than a read takes several.
fn plan(blocks: &[(u64, u64)]) -> Vec<Piece> {
    let mut pieces: Vec<Piece> = Vec::new();
    for (index, &(start, end)) in blocks.iter().enumerate() {
        let mut at = start;
        while at < end {
            let length = (end - at).min(READ_BYTES);
            match pieces.last_mut() {
                Some(last)
                    if at == start
                        && last.last_block + 1 == index
                        && last.offset + last.length == start
                        && last.length + length <= READ_BYTES =>
                {
                    last.last_block = index;
                    last.length += length;
                }
                _ => pieces.push(Piece {
                    block: index,
                    last_block: index,
                    offset: at,
                    length,
                }),
            }
            at += length;
        }
    }
    pieces
}

/// Feeds the bytes `data` read for `piece` to the hashers of its blocks,
/// and finishes the sum of each block whose last byte it holds.
fn absorb(
    piece: &Piece,
    data: &[u8],
    blocks: &[(u64, u64)],
    hashers: &mut [Option<Xxh3>],
    sums: &mut [u128],
    seed: u64,
) {
    debug_assert_eq!(data.len() as u64, piece.length);
    let piece_end = piece.offset + piece.length;
    let (mut block, mut at) = (piece.block, piece.offset);
    while at < piece_end {
        let (start, end) = blocks[block];
        assert!(
            start <= at && at < end && block <= piece.last_block,
            "a read holds only its own blocks"
        );
        let upto = end.min(piece_end);
        let bytes = &data[(at - piece.offset) as usize..(upto - piece.offset) as usize];
        hashers[block]
            .get_or_insert_with(|| Xxh3::with_seed(seed))
            .update(bytes);
        if upto == end {
            sums[block] = hashers[block].take().expect("updated above").digest128();
            block += 1;
        }
        at = upto;
    }
}

/// The sums of every block of `spans`, in order. `round` is called before
/// each round of reads and its guard dropped once they completed: the
/// target holds its applier off there, so no block is read half-written.
pub fn sums<G>(
    source: &SumSource<'_>,
    block_bytes: u32,
    seed: u64,
    spans: &[SumSpan],
    mut round: impl FnMut() -> G,
) -> io::Result<Vec<u128>> {
    let blocks = block_ranges(source.size_bytes, block_bytes, spans);
    let pieces = plan(&blocks);
    let mut hashers: Vec<Option<Xxh3>> = (0..blocks.len()).map(|_| None).collect();
    // A block wholly past the end of the disk gets no piece: the sum of nothing.
    let mut sums = vec![block_sum(&[], seed); blocks.len()];
    let mut ring = Uring::new(DEPTH as u32).ok();
    let mut buffers: Vec<AlignedBuffer> = (0..DEPTH.min(pieces.len()))
        .map(|_| AlignedBuffer::zeroed(READ_BYTES as usize))
        .collect();
    for batch in pieces.chunks(DEPTH) {
        let guard = round();
        let lengths = match ring.as_mut() {
            Some(ring) => read_round(ring, source, batch, &mut buffers)?,
            None => batch
                .iter()
                .zip(buffers.iter_mut())
                .map(|(piece, buffer)| read_piece(source, piece, buffer))
                .collect::<io::Result<Vec<usize>>>()?,
        };
        drop(guard);
        for ((piece, buffer), length) in batch.iter().zip(&buffers).zip(lengths) {
            if length < piece.length as usize {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "short read at {}: {length} of {} bytes",
                        piece.offset, piece.length
                    ),
                ));
            }
            let data = &buffer.as_slice()[..piece.length as usize];
            absorb(piece, data, &blocks, &mut hashers, &mut sums, seed);
        }
    }
    Ok(sums)
}

/// Bytes the read of `piece` asks for: rounded up for O_DIRECT (the file
/// ends the read short at its end).
fn read_length(source: &SumSource<'_>, piece: &Piece) -> usize {
    if source.direct {
        (piece.length as usize).next_multiple_of(DIRECT_ALIGNMENT)
    } else {
        piece.length as usize
    }
}

fn read_piece(
    source: &SumSource<'_>,
    piece: &Piece,
    buffer: &mut AlignedBuffer,
) -> io::Result<usize> {
    let wanted = read_length(source, piece);
    let slice = &mut buffer.as_mut_slice()[..wanted];
    let mut done = 0;
    while done < piece.length as usize {
        match source
            .file
            .read_at(&mut slice[done..], piece.offset + done as u64)
        {
            Ok(0) => break,
            Ok(count) => done += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(done)
}

/// Reads every piece of `batch` at once through the ring; returns the
/// bytes each read got (a short one is finished with `pread`).
fn read_round(
    ring: &mut Uring,
    source: &SumSource<'_>,
    batch: &[Piece],
    buffers: &mut [AlignedBuffer],
) -> io::Result<Vec<usize>> {
    let fd = types::Fd(source.file.as_raw_fd());
    for (index, (piece, buffer)) in batch.iter().zip(buffers.iter_mut()).enumerate() {
        let length = read_length(source, piece) as u32;
        let entry = opcode::Read::new(fd, buffer.as_mut_slice().as_mut_ptr(), length)
            .offset(piece.offset)
            .build()
            .user_data(index as u64);
        // SAFETY: each buffer is at least `length` bytes and stays alive
        // and untouched until this function has reaped every completion
        // (it returns only after all of them, or aborts the process).
        unsafe { ring.push_or_abort(&entry, "block checksum reads") };
    }
    let mut results: Vec<Option<i32>> = vec![None; batch.len()];
    while ring.in_flight() > 0 {
        ring.enter_or_abort(1, "block checksum reads");
        ring.reap(|index, result| results[index as usize] = Some(result));
    }
    let mut lengths = Vec::with_capacity(batch.len());
    for ((piece, buffer), result) in batch.iter().zip(buffers.iter_mut()).zip(results) {
        let result = result.expect("every read completed");
        if result < 0 {
            return Err(io::Error::from_raw_os_error(-result));
        }
        let got = result as usize;
        if got >= piece.length as usize || source.direct {
            // O_DIRECT reads are short only at the end of the file.
            lengths.push(got.min(piece.length as usize));
            continue;
        }
        let rest = Piece {
            block: piece.block,
            last_block: piece.last_block,
            offset: piece.offset + got as u64,
            length: piece.length - got as u64,
        };
        let mut tail =
            AlignedBuffer::zeroed((rest.length as usize).next_multiple_of(DIRECT_ALIGNMENT));
        let more = read_piece(source, &rest, &mut tail)?;
        buffer.as_mut_slice()[got..got + more].copy_from_slice(&tail.as_slice()[..more]);
        lengths.push(got + more);
    }
    Ok(lengths)
}

/// Opens `path` for summing: O_DIRECT when the file system takes it (so a
/// resync does not push the page cache out), else buffered.
pub fn open_for_sums(path: &std::path::Path) -> io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path);
    match direct {
        Ok(file) => Ok((file, true)),
        Err(_) => Ok((std::fs::File::open(path)?, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(directory: &tempfile::TempDir, size: usize) -> (std::path::PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let path = directory.path().join("disk.img");
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }

    #[test]
    fn sums_match_whole_block_hashes_through_every_path() {
        let directory = tempfile::tempdir().unwrap();
        // 5 MiB + 512: the last 64 KiB block is short, blocks of 2 MiB
        // take two reads each.
        let size = (5 << 20) + 512;
        let (path, data) = disk(&directory, size);
        for block_bytes in [4096u32, 65536, 2 << 20] {
            let block = block_bytes as usize;
            let spans = [
                SumSpan {
                    offset: 0,
                    blocks: 2,
                },
                SumSpan {
                    offset: (size as u64 / block_bytes as u64) * block_bytes as u64,
                    blocks: 3,
                },
            ];
            let expected: Vec<u128> = spans
                .iter()
                .flat_map(|span| {
                    (0..span.blocks as usize).map(move |i| span.offset as usize + i * block)
                })
                .map(|start| {
                    let end = (start + block).min(size).max(start.min(size));
                    block_sum(&data[start.min(size)..end], 42)
                })
                .collect();
            for direct in [true, false] {
                let (file, is_direct) = if direct {
                    open_for_sums(&path).unwrap()
                } else {
                    (File::open(&path).unwrap(), false)
                };
                let source = SumSource {
                    file: &file,
                    direct: is_direct,
                    size_bytes: size as u64,
                };
                let mut rounds = 0;
                let got = sums(&source, block_bytes, 42, &spans, || rounds += 1).unwrap();
                assert_eq!(got, expected, "block {block_bytes}, direct {is_direct}");
                assert!(rounds >= 1);
            }
        }
    }

    #[test]
    fn contiguous_blocks_share_reads_of_a_mebibyte() {
        // The default grain: 2048 blocks of 64 KiB are 128 reads, not 2048.
        let spans = [SumSpan {
            offset: 128 << 20,
            blocks: 2048,
        }];
        let pieces = plan(&block_ranges(1 << 30, 65536, &spans));
        assert_eq!(pieces.len(), 128);
        assert!(pieces
            .iter()
            .all(|p| p.length == READ_BYTES && p.last_block - p.block == 15));
        // Fine blocks of differing coarse blocks: one read per coarse block
        // unless they touch; a block past the end stops the run.
        let spans = [
            SumSpan {
                offset: 0,
                blocks: 16,
            },
            SumSpan {
                offset: 65536,
                blocks: 16,
            },
            SumSpan {
                offset: 1 << 20,
                blocks: 16,
            },
        ];
        let pieces = plan(&block_ranges(u64::MAX, 4096, &spans));
        let reads: Vec<(u64, u64, usize, usize)> = pieces
            .iter()
            .map(|p| (p.offset, p.length, p.block, p.last_block))
            .collect();
        assert_eq!(reads, vec![(0, 131072, 0, 31), (1 << 20, 65536, 32, 47)]);
        let ranges = block_ranges(
            8192 + 100,
            4096,
            &[SumSpan {
                offset: 0,
                blocks: 4,
            }],
        );
        assert_eq!(
            ranges,
            vec![(0, 4096), (4096, 8192), (8192, 8292), (8292, 8292)]
        );
        assert_eq!(plan(&ranges).len(), 1);
    }

    #[test]
    fn sums_hold_for_spans_in_any_order_or_overlapping() {
        let directory = tempfile::tempdir().unwrap();
        let size = 3 << 20;
        let (path, data) = disk(&directory, size);
        let file = File::open(&path).unwrap();
        let source = SumSource {
            file: &file,
            direct: false,
            size_bytes: size as u64,
        };
        let at = |offset: u64, blocks: u32| SumSpan { offset, blocks };
        // Adjacent, repeated, backwards, past the end and back: each block
        // is summed alone, whatever its neighbours in the request.
        let spans = [
            at(65536, 3),
            at(0, 2),
            at(0, 1),
            at((3 << 20) - 65536, 2),
            at(131072, 20),
        ];
        let expected: Vec<u128> = block_ranges(size as u64, 65536, &spans)
            .iter()
            .map(|&(start, end)| block_sum(&data[start as usize..end as usize], 9))
            .collect();
        assert_eq!(expected.len(), 28);
        assert_eq!(sums(&source, 65536, 9, &spans, || ()).unwrap(), expected);
    }

    #[test]
    fn the_seed_changes_every_sum() {
        assert_ne!(block_sum(&[0; 4096], 1), block_sum(&[0; 4096], 2));
        assert_ne!(block_sum(&[0; 4096], 1), block_sum(&[0; 4095], 1));
    }
}
