//! The demo's workload, written through the tap's NBD exports, and its
//! model: what every disk must contain at any instant.
//!
//! The model keeps, per 4 KiB block, the version of the last write that
//! covered it (0: never written, so zeroes). A block's bytes are a pure
//! function of (disk, block, version), so the expected image at any
//! instant is a copy of the versions (4 bytes per block: 256 KiB for a
//! 256 MiB disk), not of the data. Half of each block is pseudo-random and
//! half a repeated tag, so the data compresses about 2:1, like real disks.
//!
//! Writes: one connection per disk, one request at a time, the disks in
//! parallel; extents of 4 KiB to 1 MiB, half continuing a sequential
//! stream, half at random places. A write enters the model when the tap
//! has replied to it, which is what the tap acknowledged.

use super::tap::DemoTap;
use drgw_nbd::client::{ClientError, NbdClient};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BLOCK_BYTES: usize = 4096;
/// Largest write, in blocks (1 MiB).
const EXTENT_BLOCKS_MAX: u64 = 256;

/// What one disk must contain.
#[derive(Debug, Clone)]
pub struct DiskModel {
    pub name: String,
    disk_index: u32,
    versions: Vec<u32>,
}

impl DiskModel {
    pub fn new(name: &str, disk_index: u32, size_bytes: u64) -> DiskModel {
        assert_eq!(size_bytes % BLOCK_BYTES as u64, 0, "disk size in blocks");
        DiskModel {
            name: name.to_string(),
            disk_index,
            versions: vec![0; (size_bytes / BLOCK_BYTES as u64) as usize],
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.versions.len() as u64 * BLOCK_BYTES as u64
    }

    pub fn blocks(&self) -> u64 {
        self.versions.len() as u64
    }

    /// Blocks written at least once.
    pub fn blocks_written(&self) -> u64 {
        self.versions.iter().filter(|&&v| v != 0).count() as u64
    }

    /// The bytes block `block` must hold.
    pub fn expected_block(&self, block: u64, out: &mut [u8]) {
        match self.versions[block as usize] {
            0 => out.fill(0),
            version => block_content(self.disk_index, block, version, out),
        }
    }

    fn record(&mut self, first_block: u64, count: u64, version: u32) {
        let range = first_block as usize..(first_block + count) as usize;
        self.versions[range].fill(version);
    }
}

/// The content of a block at a version: 2 KiB of xorshift64* output
/// seeded by (disk, block, version), then a 16-byte tag repeated.
pub fn block_content(disk_index: u32, block: u64, version: u32, out: &mut [u8]) {
    debug_assert_eq!(out.len(), BLOCK_BYTES);
    debug_assert_ne!(version, 0, "version 0 is the never-written block");
    let mut state = splitmix64(((disk_index as u64) << 40) ^ block ^ splitmix64(version as u64));
    let (random, tagged) = out.split_at_mut(BLOCK_BYTES / 2);
    for word in random.chunks_exact_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    let mut tag = [0u8; 16];
    tag[0..4].copy_from_slice(&disk_index.to_le_bytes());
    tag[4..8].copy_from_slice(&version.to_le_bytes());
    tag[8..16].copy_from_slice(&block.to_le_bytes());
    for piece in tagged.chunks_exact_mut(16) {
        piece.copy_from_slice(&tag);
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes to one disk and keeps its model.
struct DiskWriter {
    model: DiskModel,
    client: NbdClient,
    random: u64,
    /// Where the sequential stream continues, in blocks.
    cursor: u64,
    version_last: u32,
    buffer: Vec<u8>,
}

impl DiskWriter {
    /// One write: picks an extent, fills it, sends it, records it.
    async fn write_one(&mut self) -> Result<u64, ClientError> {
        let blocks = self.model.blocks();
        let count = if self.next_random() % 4 == 0 {
            64 + self.next_random() % (EXTENT_BLOCKS_MAX - 63)
        } else {
            1 + self.next_random() % 32
        };
        let first = if self.next_random() % 2 == 0 {
            self.cursor
        } else {
            self.next_random() % blocks
        };
        let count = count.min(blocks - first);
        self.cursor = (first + count) % blocks;
        self.version_last += 1;
        let version = self.version_last;
        let length = count as usize * BLOCK_BYTES;
        self.buffer.resize(length, 0);
        for (index, out) in self.buffer.chunks_exact_mut(BLOCK_BYTES).enumerate() {
            block_content(self.model.disk_index, first + index as u64, version, out);
        }
        let offset = first * BLOCK_BYTES as u64;
        self.client.write(offset, &self.buffer).await?;
        self.model.record(first, count, version);
        Ok(length as u64)
    }

    fn next_random(&mut self) -> u64 {
        self.random = splitmix64(self.random);
        self.random
    }

    /// Writes until `deadline` or `bytes_max`; returns (writes, bytes).
    async fn run(
        &mut self,
        deadline: Instant,
        bytes_max: u64,
        counter: &AtomicU64,
    ) -> Result<(u64, u64), ClientError> {
        let (mut writes, mut bytes) = (0u64, 0u64);
        while bytes < bytes_max && Instant::now() < deadline {
            let written = self.write_one().await?;
            writes += 1;
            bytes += written;
            counter.fetch_add(written, Ordering::Relaxed);
        }
        Ok((writes, bytes))
    }
}

/// Figures of the workload so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkloadFigures {
    pub writes: u64,
    pub bytes: u64,
    /// Wall time spent writing (phases only, not the pauses between).
    pub writing: Duration,
}

/// Every disk's writer; phases of writing with pauses between them.
pub struct Workload {
    writers: Vec<DiskWriter>,
    /// Bytes acknowledged by the tap so far, for the live figures.
    pub bytes_counter: Arc<AtomicU64>,
    pub figures: WorkloadFigures,
}

impl Workload {
    /// Connects to each disk's export on the tap.
    pub async fn connect(tap: &DemoTap) -> Result<Workload, ClientError> {
        let mut writers = Vec::new();
        for (index, disk) in tap.disks.iter().enumerate() {
            let client = NbdClient::connect(&tap.nbd_address, &disk.name).await?;
            let model = DiskModel::new(&disk.name, index as u32, client.size_bytes());
            writers.push(DiskWriter {
                model,
                client,
                random: splitmix64(0xD56 + index as u64),
                cursor: 0,
                version_last: 0,
                buffer: Vec::with_capacity(EXTENT_BLOCKS_MAX as usize * BLOCK_BYTES),
            });
        }
        Ok(Workload {
            writers,
            bytes_counter: Arc::new(AtomicU64::new(0)),
            figures: WorkloadFigures::default(),
        })
    }

    /// Writes on every disk at once for `duration` at most, and
    /// `bytes_max` at most in all (shared equally). Returns when every
    /// write of the phase has been acknowledged.
    pub async fn run_phase(&mut self, duration: Duration, bytes_max: u64) -> anyhow::Result<()> {
        let started = Instant::now();
        let deadline = started + duration;
        let share = bytes_max / self.writers.len().max(1) as u64;
        let mut tasks = tokio::task::JoinSet::new();
        for (index, mut writer) in self.writers.drain(..).enumerate() {
            let counter = self.bytes_counter.clone();
            tasks.spawn(async move {
                let result = writer.run(deadline, share, &counter).await;
                (index, writer, result)
            });
        }
        let mut finished = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            finished.push(joined?);
        }
        finished.sort_by_key(|(index, _, _)| *index);
        for (_, writer, result) in finished {
            let (writes, bytes) = result?;
            self.figures.writes += writes;
            self.figures.bytes += bytes;
            self.writers.push(writer);
        }
        self.figures.writing += started.elapsed();
        Ok(())
    }

    /// NBD FLUSH on every disk: what an app freeze (`fsfreeze`) does
    /// before a bookmark.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        for writer in &mut self.writers {
            writer.client.flush().await?;
        }
        Ok(())
    }

    /// The expected contents of every disk now (nothing is in flight
    /// between phases).
    pub fn models(&self) -> Vec<DiskModel> {
        self.writers.iter().map(|w| w.model.clone()).collect()
    }

    /// Closes the connections cleanly.
    pub async fn disconnect(self) -> Result<(), ClientError> {
        for writer in self.writers {
            writer.client.disconnect().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_depends_on_disk_block_and_version() {
        let mut a = vec![0u8; BLOCK_BYTES];
        let mut b = vec![0u8; BLOCK_BYTES];
        block_content(0, 7, 1, &mut a);
        block_content(0, 7, 1, &mut b);
        assert_eq!(a, b);
        for (disk, block, version) in [(1, 7, 1), (0, 8, 1), (0, 7, 2)] {
            block_content(disk, block, version, &mut b);
            assert_ne!(a, b, "({disk}, {block}, {version})");
        }
    }

    #[test]
    fn model_expects_zeroes_until_written() {
        let mut model = DiskModel::new("d", 0, 16 * BLOCK_BYTES as u64);
        let mut block = vec![1u8; BLOCK_BYTES];
        model.expected_block(3, &mut block);
        assert!(block.iter().all(|&b| b == 0));
        model.record(2, 3, 9);
        assert_eq!(model.blocks_written(), 3);
        model.expected_block(3, &mut block);
        let mut wanted = vec![0u8; BLOCK_BYTES];
        block_content(0, 3, 9, &mut wanted);
        assert_eq!(block, wanted);
    }
}
