//! A qcow2 (version 3) image written in one pass, the product's own writer.
//! Layout (docs/formats/materialize.md): 64 KiB clusters; cluster 0 the
//! header; the L1 table from cluster 1; then L2 tables and data clusters in
//! the order the copy meets them (allocation is sequential, so every
//! cluster below `allocated` is in use); at the end the refcount blocks
//! (16-bit refcounts, all 1) and the refcount table. Only non-zero clusters
//! are allocated. The header is written last: until then cluster 0 is
//! zeroes and nothing takes the file for a finished image.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const CLUSTER_BYTES: u64 = 64 << 10;
const CLUSTER_BITS: u32 = 16;
const L2_ENTRIES: u64 = CLUSTER_BYTES / 8;
/// Disk bytes one L2 table maps (512 MiB).
pub const L2_SPAN_BYTES: u64 = CLUSTER_BYTES * L2_ENTRIES;
/// Refcount is 1 and the cluster may be written in place.
const COPIED: u64 = 1 << 63;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER_BYTES / 2;
const HEADER_BYTES: usize = 104;

/// Disk bytes at `disk_offset` go to the file at `file_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub disk_offset: u64,
    pub file_offset: u64,
    pub length: u64,
}

struct L2Table {
    entries: Vec<u64>,
    dirty: bool,
}

pub struct Qcow2Layout {
    size_bytes: u64,
    /// Host offset of each L2 table, 0 when none.
    l1: Vec<u64>,
    l2: BTreeMap<usize, L2Table>,
    allocated: u64,
    l1_dirty: bool,
}

fn div_ceil(value: u64, by: u64) -> u64 {
    value.div_ceil(by)
}

impl Qcow2Layout {
    pub fn new(size_bytes: u64) -> Qcow2Layout {
        let l1_entries = div_ceil(size_bytes, L2_SPAN_BYTES) as usize;
        let l1_clusters = div_ceil(l1_entries as u64 * 8, CLUSTER_BYTES).max(1);
        Qcow2Layout {
            size_bytes,
            l1: vec![0; l1_entries],
            l2: BTreeMap::new(),
            allocated: CLUSTER_BYTES * (1 + l1_clusters),
            l1_dirty: true,
        }
    }

    /// File bytes in use: every cluster below is allocated.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Allocates the clusters of `start..end` (cluster-aligned disk range,
    /// all non-zero) and says where their bytes go.
    pub fn place(&mut self, start: u64, end: u64) -> Vec<Extent> {
        assert!(
            start % CLUSTER_BYTES == 0 && start < end,
            "cluster range {start}..{end}"
        );
        let mut extents: Vec<Extent> = Vec::new();
        let mut cluster = start;
        while cluster < end {
            let table = (cluster / L2_SPAN_BYTES) as usize;
            if self.l1[table] == 0 {
                self.l1[table] = self.allocated;
                self.allocated += CLUSTER_BYTES;
                self.l1_dirty = true;
                let entries = vec![0; L2_ENTRIES as usize];
                self.l2.insert(
                    table,
                    L2Table {
                        entries,
                        dirty: true,
                    },
                );
            }
            let host = self.allocated;
            self.allocated += CLUSTER_BYTES;
            let l2 = self.l2.get_mut(&table).expect("allocated above");
            let slot = ((cluster % L2_SPAN_BYTES) / CLUSTER_BYTES) as usize;
            debug_assert_eq!(l2.entries[slot], 0, "cluster {cluster} placed twice");
            l2.entries[slot] = host | COPIED;
            l2.dirty = true;
            match extents.last_mut() {
                Some(last)
                    if last.disk_offset + last.length == cluster
                        && last.file_offset + last.length == host =>
                {
                    last.length += CLUSTER_BYTES
                }
                _ => extents.push(Extent {
                    disk_offset: cluster,
                    file_offset: host,
                    length: CLUSTER_BYTES,
                }),
            }
            cluster += CLUSTER_BYTES;
        }
        extents
    }

    /// Writes the L2 tables changed since the last call, and the L1 table.
    pub fn write_tables(&mut self, file: &File) -> io::Result<()> {
        for (table, l2) in self.l2.iter_mut().filter(|(_, l2)| l2.dirty) {
            let bytes: Vec<u8> = l2.entries.iter().flat_map(|e| e.to_be_bytes()).collect();
            file.write_all_at(&bytes, self.l1[*table])?;
            l2.dirty = false;
        }
        if self.l1_dirty {
            let bytes: Vec<u8> = self
                .l1
                .iter()
                .flat_map(|&offset| match offset {
                    0 => 0u64.to_be_bytes(),
                    offset => (offset | COPIED).to_be_bytes(),
                })
                .collect();
            file.write_all_at(&bytes, CLUSTER_BYTES)?;
            self.l1_dirty = false;
        }
        Ok(())
    }

    /// The layout of an interrupted image: its tables as of the sidecar's
    /// checkpoint. Mappings at or past `done_bytes` of the disk, and
    /// anything at or past `allocated` in the file, are dropped (they may
    /// be half written); the file is cut to `allocated`.
    pub fn resume(
        file: &File,
        size_bytes: u64,
        done_bytes: u64,
        allocated: u64,
    ) -> io::Result<Qcow2Layout> {
        let mut layout = Qcow2Layout::new(size_bytes);
        if allocated < layout.allocated || allocated % CLUSTER_BYTES != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("allocation mark {allocated} is not a cluster past the L1 table"),
            ));
        }
        let mut l1_bytes = vec![0u8; layout.l1.len() * 8];
        file.read_exact_at(&mut l1_bytes, CLUSTER_BYTES)?;
        for (table, raw) in l1_bytes.chunks_exact(8).enumerate() {
            let offset = u64::from_be_bytes(raw.try_into().expect("8 bytes")) & OFFSET_MASK;
            if offset == 0 || offset >= allocated {
                continue;
            }
            let mut bytes = vec![0u8; CLUSTER_BYTES as usize];
            file.read_exact_at(&mut bytes, offset)?;
            let mut entries: Vec<u64> = bytes
                .chunks_exact(8)
                .map(|raw| u64::from_be_bytes(raw.try_into().expect("8 bytes")))
                .collect();
            for (slot, entry) in entries.iter_mut().enumerate() {
                let disk = table as u64 * L2_SPAN_BYTES + slot as u64 * CLUSTER_BYTES;
                if disk >= done_bytes || *entry & OFFSET_MASK >= allocated {
                    *entry = 0;
                }
            }
            layout.l1[table] = offset;
            layout.l2.insert(
                table,
                L2Table {
                    entries,
                    dirty: true,
                },
            );
        }
        layout.allocated = allocated;
        file.set_len(allocated)?;
        Ok(layout)
    }

    /// Writes the tables, the refcounts and, last, the header. Returns the
    /// file's length. The caller fsyncs.
    pub fn finish(&mut self, file: &File) -> io::Result<u64> {
        self.write_tables(file)?;
        let used = self.allocated / CLUSTER_BYTES;
        let (blocks, table_clusters) = refcount_plan(used);
        let total = used + blocks + table_clusters;
        let blocks_at = self.allocated;
        let table_at = blocks_at + blocks * CLUSTER_BYTES;
        for block in 0..blocks {
            let first = block * REFCOUNTS_PER_BLOCK;
            let counted = total.saturating_sub(first).min(REFCOUNTS_PER_BLOCK) as usize;
            let mut bytes = vec![0u8; CLUSTER_BYTES as usize];
            for entry in bytes.chunks_exact_mut(2).take(counted) {
                entry.copy_from_slice(&1u16.to_be_bytes());
            }
            file.write_all_at(&bytes, blocks_at + block * CLUSTER_BYTES)?;
        }
        let mut table = vec![0u8; (table_clusters * CLUSTER_BYTES) as usize];
        for block in 0..blocks {
            let offset = blocks_at + block * CLUSTER_BYTES;
            table[block as usize * 8..][..8].copy_from_slice(&offset.to_be_bytes());
        }
        file.write_all_at(&table, table_at)?;
        let length = total * CLUSTER_BYTES;
        file.set_len(length)?;
        // Everything the header points to must be durable before it.
        file.sync_data()?;
        file.write_all_at(&self.header(table_at, table_clusters), 0)?;
        Ok(length)
    }

    fn header(&self, refcount_table_at: u64, refcount_table_clusters: u64) -> Vec<u8> {
        let mut header = Vec::with_capacity(HEADER_BYTES + 8);
        header.extend_from_slice(b"QFI\xfb");
        header.extend_from_slice(&3u32.to_be_bytes()); // version
        header.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
        header.extend_from_slice(&0u32.to_be_bytes()); // backing file size
        header.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
        header.extend_from_slice(&self.size_bytes.to_be_bytes());
        header.extend_from_slice(&0u32.to_be_bytes()); // no encryption
        header.extend_from_slice(&(self.l1.len() as u32).to_be_bytes());
        header.extend_from_slice(&CLUSTER_BYTES.to_be_bytes()); // L1 table offset
        header.extend_from_slice(&refcount_table_at.to_be_bytes());
        header.extend_from_slice(&(refcount_table_clusters as u32).to_be_bytes());
        header.extend_from_slice(&0u32.to_be_bytes()); // snapshots
        header.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
        header.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
        header.extend_from_slice(&0u64.to_be_bytes()); // compatible features
        header.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
        header.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
        header.extend_from_slice(&(HEADER_BYTES as u32).to_be_bytes());
        assert_eq!(header.len(), HEADER_BYTES);
        header.extend_from_slice(&[0u8; 8]); // end of header extensions
        header
    }
}

/// Refcount blocks and refcount table clusters needed to count `used`
/// clusters plus themselves.
fn refcount_plan(used: u64) -> (u64, u64) {
    let (mut blocks, mut table) = (0, 0);
    loop {
        let total = used + blocks + table;
        let blocks_needed = div_ceil(total, REFCOUNTS_PER_BLOCK);
        let table_needed = div_ceil(blocks_needed * 8, CLUSTER_BYTES);
        if (blocks_needed, table_needed) == (blocks, table) {
            return (blocks, table);
        }
        (blocks, table) = (blocks_needed, table_needed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn refcounts_cover_themselves() {
        assert_eq!(refcount_plan(3), (1, 1));
        assert_eq!(refcount_plan(REFCOUNTS_PER_BLOCK - 2), (1, 1));
        assert_eq!(refcount_plan(REFCOUNTS_PER_BLOCK - 1), (2, 1));
    }

    #[test]
    fn placements_are_sequential_and_tables_come_first() {
        let mut layout = Qcow2Layout::new(2 * L2_SPAN_BYTES);
        let first = layout.allocated();
        let extents = layout.place(0, 2 * CLUSTER_BYTES);
        assert_eq!(
            extents,
            vec![Extent {
                disk_offset: 0,
                file_offset: first + CLUSTER_BYTES,
                length: 2 * CLUSTER_BYTES
            }]
        );
        let extents = layout.place(L2_SPAN_BYTES, L2_SPAN_BYTES + CLUSTER_BYTES);
        assert_eq!(extents[0].file_offset, first + 4 * CLUSTER_BYTES);
        assert_eq!(layout.allocated(), first + 5 * CLUSTER_BYTES);
    }

    /// The image reads back with qemu-img as written (skipped without it).
    #[test]
    fn qemu_img_reads_what_was_written() {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("qemu-img not installed: skipped");
            return;
        }
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("t.qcow2");
        let size = L2_SPAN_BYTES + 3 * CLUSTER_BYTES + 512;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut layout = Qcow2Layout::new(size);
        let mut expected = vec![0u8; size as usize];
        for (start, fill) in [(0u64, 7u8), (5 * CLUSTER_BYTES, 9), (L2_SPAN_BYTES, 3)] {
            for extent in layout.place(start, start + CLUSTER_BYTES) {
                let data = vec![fill; extent.length as usize];
                file.write_all_at(&data, extent.file_offset).unwrap();
                let at = extent.disk_offset as usize;
                let end = (at + data.len()).min(size as usize);
                expected[at..end].fill(fill);
            }
        }
        layout.write_tables(&file).unwrap();
        // Resume from a checkpoint that had only the first cluster.
        let allocated_after_first = Qcow2Layout::new(size).allocated() + 2 * CLUSTER_BYTES;
        let mut layout =
            Qcow2Layout::resume(&file, size, CLUSTER_BYTES, allocated_after_first).unwrap();
        expected[CLUSTER_BYTES as usize..].fill(0);
        let data = vec![5u8; CLUSTER_BYTES as usize];
        for extent in layout.place(L2_SPAN_BYTES, L2_SPAN_BYTES + CLUSTER_BYTES) {
            file.write_all_at(&data, extent.file_offset).unwrap();
        }
        expected[L2_SPAN_BYTES as usize..][..CLUSTER_BYTES as usize].fill(5);
        layout.finish(&file).unwrap();
        drop(file);
        let check = Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let raw = directory.path().join("t.raw");
        std::fs::write(&raw, &expected).unwrap();
        let compare = Command::new("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(&path)
            .arg(&raw)
            .output()
            .unwrap();
        assert!(
            compare.status.success(),
            "{}{}",
            String::from_utf8_lossy(&compare.stdout),
            String::from_utf8_lossy(&compare.stderr)
        );
    }
}
