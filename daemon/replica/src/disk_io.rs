//! Positioned I/O on replica disks: reading pre-images (holes read as zero
//! and are reported as such, so saving them costs nothing), writing, and
//! discarding ranges.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// Part of a pre-image: either zeroes (a hole of the replica) or data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    Zero { offset: u64, length: u64 },
    Data { offset: u64, data: Vec<u8> },
}

/// Reads `offset..offset + length` of `file`, as spans of holes and data.
/// Data spans are at most `piece_max` bytes.
pub fn read_spans(file: &File, offset: u64, length: u64, piece_max: u64) -> io::Result<Vec<Span>> {
    let end = offset + length;
    let mut spans = Vec::new();
    let mut position = offset;
    while position < end {
        let (data_start, data_end) = next_data(file, position, end)?;
        if data_start > position {
            spans.push(Span::Zero {
                offset: position,
                length: data_start - position,
            });
        }
        let mut at = data_start;
        while at < data_end {
            let piece = (data_end - at).min(piece_max);
            let mut data = vec![0u8; piece as usize];
            read_exact_or_zero(file, &mut data, at)?;
            spans.push(Span::Data { offset: at, data });
            at += piece;
        }
        position = data_end.max(data_start);
    }
    Ok(spans)
}

/// The data extents of `offset..end` (holes left out), in order.
pub fn data_extents(file: &File, offset: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut position = offset;
    while position < end {
        let (data_start, data_end) = next_data(file, position, end)?;
        if data_start >= end {
            break;
        }
        extents.push((data_start, data_end));
        position = data_end.max(data_start + 1);
    }
    Ok(extents)
}

/// The first data extent at or after `position`, clipped to `end`; when none,
/// `(end, end)`. Files systems without SEEK_DATA report everything as data.
fn next_data(file: &File, position: u64, end: u64) -> io::Result<(u64, u64)> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let data = unsafe { libc::lseek(fd, position as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            // No data after `position`: all hole up to the end of file.
            Some(libc::ENXIO) => Ok((end, end)),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok((position, end)),
            _ => Err(error),
        };
    }
    let data = (data as u64).max(position);
    if data >= end {
        return Ok((end, end));
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
    let hole = if hole < 0 {
        end
    } else {
        (hole as u64).min(end)
    };
    Ok((data, hole.max(data + 1).min(end)))
}

/// Reads `buffer.len()` bytes at `offset`; bytes past the end of file read as zero.
pub fn read_exact_or_zero(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], offset + done as u64) {
            Ok(0) => {
                buffer[done..].fill(0);
                return Ok(());
            }
            Ok(count) => done += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Makes `offset..offset + length` read as zeroes: punches a hole, or writes
/// zeroes where the file system cannot.
pub fn discard(file: &File, offset: u64, length: u64) -> io::Result<()> {
    if length == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let result = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            length as libc::off_t,
        )
    };
    if result == 0 {
        return Ok(());
    }
    let zeroes = vec![0u8; length.min(1 << 20) as usize];
    let mut at = offset;
    while at < offset + length {
        let piece = (offset + length - at).min(zeroes.len() as u64) as usize;
        file.write_all_at(&zeroes[..piece], at)?;
        at += piece as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_zero_spans_and_data_is_read() {
        let directory = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(directory.path().join("r.img"))
            .unwrap();
        file.set_len(16 << 20).unwrap();
        file.write_all_at(&[9u8; 8192], 4 << 20).unwrap();
        let spans = read_spans(&file, 0, 16 << 20, 1 << 20).unwrap();
        let mut rebuilt = vec![0u8; 16 << 20];
        let mut covered = 0;
        for span in &spans {
            match span {
                Span::Zero { length, .. } => covered += length,
                Span::Data { offset, data } => {
                    rebuilt[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
                    covered += data.len() as u64;
                }
            }
        }
        assert_eq!(covered, 16 << 20);
        assert!(rebuilt[4 << 20..(4 << 20) + 8192].iter().all(|&b| b == 9));
        let data_bytes: usize = spans
            .iter()
            .map(|s| match s {
                Span::Data { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert!(
            data_bytes < 1 << 20,
            "holes were read as data: {data_bytes}"
        );
        discard(&file, 4 << 20, 4096).unwrap();
        let mut check = vec![1u8; 8192];
        read_exact_or_zero(&file, &mut check, 4 << 20).unwrap();
        assert!(check[..4096].iter().all(|&b| b == 0));
        assert!(check[4096..].iter().all(|&b| b == 9));
    }
}
