//! Verification: an image (a file written by `materialize`, or any NBD
//! export: the tap's primaries, and recovery exports once they exist)
//! compared block by block with a disk's model at some instant.

use super::workload::{DiskModel, BLOCK_BYTES};
use anyhow::Context;
use drgw_nbd::client::{ClientError, NbdClient};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes read and compared at a time.
const CHUNK_BYTES: usize = 4 << 20;

/// The outcome for one disk.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub disk: String,
    /// What was read: `materialize bookmark:NAME`, `nbd://HOST:PORT/NAME`.
    pub read_from: String,
    pub blocks: u64,
    /// Blocks the model expects data in (the others must read as zeroes).
    pub blocks_written: u64,
    pub blocks_mismatched: u64,
    pub first_mismatch_offset: Option<u64>,
    pub passed: bool,
}

impl Verdict {
    /// One line for the person watching.
    pub fn describe(&self) -> String {
        if self.passed {
            format!(
                "{}: OK, {} blocks of 4 KiB identical ({} written, the rest zero), read from {}",
                self.disk, self.blocks, self.blocks_written, self.read_from
            )
        } else {
            format!(
                "{}: MISMATCH, {} of {} blocks differ, the first at byte {}, read from {}",
                self.disk,
                self.blocks_mismatched,
                self.blocks,
                self.first_mismatch_offset.unwrap_or(0),
                self.read_from
            )
        }
    }
}

/// Compares chunks, in order, with the model.
struct Comparer<'a> {
    model: &'a DiskModel,
    expected: Vec<u8>,
    mismatched: u64,
    first_mismatch: Option<u64>,
}

impl<'a> Comparer<'a> {
    fn new(model: &'a DiskModel) -> Comparer<'a> {
        Comparer {
            model,
            expected: vec![0u8; BLOCK_BYTES],
            mismatched: 0,
            first_mismatch: None,
        }
    }

    fn compare(&mut self, offset: u64, chunk: &[u8]) {
        debug_assert_eq!(offset % BLOCK_BYTES as u64, 0);
        for (index, actual) in chunk.chunks(BLOCK_BYTES).enumerate() {
            let block = offset / BLOCK_BYTES as u64 + index as u64;
            self.model.expected_block(block, &mut self.expected);
            if actual != &self.expected[..actual.len()] {
                self.mismatched += 1;
                self.first_mismatch
                    .get_or_insert(block * BLOCK_BYTES as u64);
            }
        }
    }

    fn verdict(self, read_from: String) -> Verdict {
        Verdict {
            disk: self.model.name.clone(),
            read_from,
            blocks: self.model.blocks(),
            blocks_written: self.model.blocks_written(),
            blocks_mismatched: self.mismatched,
            first_mismatch_offset: self.first_mismatch,
            passed: self.mismatched == 0,
        }
    }
}

/// Compares an image file with `model` (blocking: run off the runtime).
/// A file of another size is a mismatch at its end.
pub fn verify_image_file(
    path: &Path,
    model: &DiskModel,
    read_from: String,
) -> anyhow::Result<Verdict> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let length = file.metadata()?.len();
    let mut comparer = Comparer::new(model);
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut offset = 0u64;
    let end = length.min(model.size_bytes());
    while offset < end {
        let chunk = &mut buffer[..(end - offset).min(CHUNK_BYTES as u64) as usize];
        file.read_exact_at(chunk, offset)
            .with_context(|| format!("reading {} at {offset}", path.display()))?;
        comparer.compare(offset, chunk);
        offset += chunk.len() as u64;
    }
    let mut verdict = comparer.verdict(read_from);
    if length != model.size_bytes() {
        verdict.passed = false;
        verdict.first_mismatch_offset.get_or_insert(end);
    }
    Ok(verdict)
}

/// Reads export `export` at `address` (`HOST:PORT`) whole and compares it
/// with `model`. For the tap's primaries today, for the exports of test
/// failover and failover when they exist.
pub async fn verify_export(
    address: &str,
    export: &str,
    model: &DiskModel,
) -> Result<Verdict, ClientError> {
    let mut client = NbdClient::connect(address, export).await?;
    let read_from = client.describe();
    let mut comparer = Comparer::new(model);
    let end = client.size_bytes().min(model.size_bytes());
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut offset = 0u64;
    while offset < end {
        let chunk = &mut buffer[..(end - offset).min(CHUNK_BYTES as u64) as usize];
        client.read(offset, chunk).await?;
        comparer.compare(offset, chunk);
        offset += chunk.len() as u64;
    }
    let size_bytes = client.size_bytes();
    client.disconnect().await?;
    let mut verdict = comparer.verdict(read_from);
    if size_bytes != model.size_bytes() {
        verdict.passed = false;
        verdict.first_mismatch_offset.get_or_insert(end);
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::workload::block_content;

    #[test]
    fn a_changed_byte_is_found_at_its_block() {
        let size = 64 * BLOCK_BYTES as u64;
        let model = DiskModel::new("d", 0, size);
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("d.img");
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        let clean = verify_image_file(&path, &model, "file".into()).unwrap();
        assert!(clean.passed, "{clean:?}");

        let mut block = vec![0u8; BLOCK_BYTES];
        block_content(0, 5, 1, &mut block);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&block[..100], 5 * BLOCK_BYTES as u64 + 7)
            .unwrap();
        let dirty = verify_image_file(&path, &model, "file".into()).unwrap();
        assert!(!dirty.passed);
        assert_eq!(dirty.blocks_mismatched, 1);
        assert_eq!(dirty.first_mismatch_offset, Some(5 * BLOCK_BYTES as u64));
    }
}
