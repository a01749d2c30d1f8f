//! The in-memory index of versions of one target group: for each disk, one
//! 32-byte entry per undo entry (which bytes a write overwrote, and where
//! their old contents are), in sequence order; and the recovery points.
//! Rebuilt at open from the undo log. Cost: docs/ARCHITECTURE.md.

use super::RecoveryPoint;
use std::collections::{BTreeMap, VecDeque};

/// One saved pre-image: 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub sequence: u64,
    pub offset: u64,
    pub length: u32,
    /// Where the old data starts inside the undo blob.
    pub data_at: u32,
    /// The undo log record (its sequence in the undo log) holding the blob.
    pub undo: u64,
}

const CHUNK_ENTRIES: usize = 16_384;

/// Entries in sequence order, in fixed-size chunks (memory grows by one chunk,
/// never doubles), addressed by an absolute position that trimming the front
/// does not change.
#[derive(Debug, Default)]
pub struct EntryList {
    chunks: VecDeque<Vec<IndexEntry>>,
    /// Absolute position of `chunks[0][0]`.
    base: u64,
    /// Entries logically dropped from the front of `chunks[0]`.
    skipped: usize,
}

impl EntryList {
    pub fn push(&mut self, entry: IndexEntry) {
        if self.chunks.back().is_none_or(|c| c.len() == CHUNK_ENTRIES) {
            self.chunks.push_back(Vec::with_capacity(CHUNK_ENTRIES));
        }
        self.chunks.back_mut().expect("pushed").push(entry);
    }

    /// Absolute position one past the last entry.
    pub fn end(&self) -> u64 {
        self.base + self.chunks.iter().map(Vec::len).sum::<usize>() as u64
    }

    /// Absolute position of the first live entry.
    pub fn start(&self) -> u64 {
        self.base + self.skipped as u64
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.end() - self.start()
    }

    pub fn get(&self, position: u64) -> Option<&IndexEntry> {
        if position < self.start() {
            return None;
        }
        let relative = (position - self.base) as usize;
        self.chunks
            .get(relative / CHUNK_ENTRIES)?
            .get(relative % CHUNK_ENTRIES)
    }

    /// First position whose entry has sequence > `sequence` (entries are sorted).
    pub fn first_after(&self, sequence: u64) -> u64 {
        let (mut low, mut high) = (self.start(), self.end());
        while low < high {
            let middle = low + (high - low) / 2;
            if self.get(middle).expect("in range").sequence <= sequence {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// Drops entries with sequence > `sequence` (rolled back, to be redone).
    pub fn truncate_after(&mut self, sequence: u64) {
        let keep = self.first_after(sequence);
        while self.end() > keep {
            let chunks = self.chunks.len();
            let back_len = self.chunks.back().map_or(0, Vec::len) as u64;
            let chunk_start = self.end() - back_len;
            if chunk_start >= keep && chunks > 1 {
                self.chunks.pop_back();
            } else {
                let relative = (keep - chunk_start) as usize;
                let floor = if chunks == 1 { self.skipped } else { 0 };
                self.chunks
                    .back_mut()
                    .expect("non-empty")
                    .truncate(relative.max(floor));
                break;
            }
        }
    }

    /// Drops entries held in undo records up to `undo` (released).
    pub fn drop_through_undo(&mut self, undo: u64) {
        loop {
            let start = self.start();
            match self.get(start) {
                Some(entry) if entry.undo <= undo => {}
                _ => break,
            }
            self.skipped += 1;
            if self.skipped == self.chunks.front().map_or(0, Vec::len)
                && self.skipped == CHUNK_ENTRIES
            {
                self.chunks.pop_front();
                self.base += CHUNK_ENTRIES as u64;
                self.skipped = 0;
            }
        }
    }

    /// Bytes of memory the entries take (allocated chunks).
    pub fn memory_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| (c.capacity() * std::mem::size_of::<IndexEntry>()) as u64)
            .sum()
    }

    pub fn iter_from(&self, position: u64) -> impl Iterator<Item = (u64, &IndexEntry)> {
        (position.max(self.start())..self.end()).map(move |p| (p, self.get(p).expect("in range")))
    }
}

/// One undo log record: which sequences its blob covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UndoRecordSpan {
    pub undo: u64,
    pub sequence_first: u64,
    pub sequence_last: u64,
}

#[derive(Debug, Default)]
pub struct GroupIndex {
    pub disks: BTreeMap<u32, EntryList>,
    pub points: VecDeque<RecoveryPoint>,
    /// Resync starts and ends, oldest first; the newest one at or before
    /// `recoverable_from` is kept (it says whether the oldest points were
    /// taken during a resync).
    pub markers: VecDeque<super::ResyncMarker>,
    pub undo_records: VecDeque<UndoRecordSpan>,
    /// Every record through this sequence is on the replicas.
    pub applied_through: u64,
    /// Points at or after this sequence can be rebuilt (older undo was released).
    pub recoverable_from: u64,
}

impl GroupIndex {
    /// Adds what one undo blob says (in undo log order). A blob whose range
    /// starts at or below sequences already indexed replaces them: it was
    /// made again after a rollback at open.
    pub fn add_blob(&mut self, undo: u64, blob: &super::undo::UndoBlob) {
        if blob.sequence_first <= self.applied_through {
            self.truncate_after(blob.sequence_first.saturating_sub(1));
        }
        for entry in &blob.entries {
            self.disks.entry(entry.disk).or_default().push(IndexEntry {
                sequence: entry.sequence,
                offset: entry.offset,
                length: entry.length,
                data_at: entry.data_at,
                undo,
            });
        }
        self.points.extend(blob.points.iter().cloned());
        self.markers.extend(blob.markers.iter().copied());
        self.undo_records.push_back(UndoRecordSpan {
            undo,
            sequence_first: blob.sequence_first,
            sequence_last: blob.sequence_last,
        });
        self.applied_through = self.applied_through.max(blob.sequence_last);
    }

    /// Forgets everything above `sequence`.
    pub fn truncate_after(&mut self, sequence: u64) {
        for list in self.disks.values_mut() {
            list.truncate_after(sequence);
        }
        while self.points.back().is_some_and(|p| p.sequence > sequence) {
            self.points.pop_back();
        }
        while self.markers.back().is_some_and(|m| m.sequence > sequence) {
            self.markers.pop_back();
        }
        while self
            .undo_records
            .back()
            .is_some_and(|r| r.sequence_first > sequence)
        {
            self.undo_records.pop_back();
        }
        self.applied_through = self.applied_through.min(sequence);
    }

    /// Forgets the undo records through `undo` and the points they were
    /// needed for.
    pub fn drop_through_undo(&mut self, undo: u64) {
        let mut last_dropped = None;
        while self.undo_records.front().is_some_and(|r| r.undo <= undo) {
            last_dropped = self.undo_records.pop_front();
        }
        let Some(last) = last_dropped else {
            return;
        };
        for list in self.disks.values_mut() {
            list.drop_through_undo(undo);
        }
        self.recoverable_from = self.recoverable_from.max(last.sequence_last);
        while self
            .points
            .front()
            .is_some_and(|p| p.sequence < self.recoverable_from)
        {
            self.points.pop_front();
        }
        // Forget the oldest markers once no resync they opened is still
        // open at the oldest point left.
        let mut open = std::collections::BTreeSet::new();
        let mut cut = 0;
        for (position, marker) in self.markers.iter().enumerate() {
            if marker.sequence >= self.recoverable_from {
                break;
            }
            if marker.done {
                open.remove(&marker.owner);
            } else {
                open.insert(marker.owner);
            }
            if open.is_empty() {
                cut = position + 1;
            }
        }
        self.markers.drain(..cut);
    }

    pub fn memory_bytes(&self) -> u64 {
        self.disks
            .values()
            .map(EntryList::memory_bytes)
            .sum::<u64>()
            + (self.points.capacity() * std::mem::size_of::<RecoveryPoint>()) as u64
            + (self.undo_records.capacity() * std::mem::size_of::<UndoRecordSpan>()) as u64
    }
}

/// Among `markers` (in sequence order), the oldest start of a resync still
/// open at `sequence` (started at or before it, not done by then), if any:
/// a point there is not crash-consistent.
pub fn resync_open_at<'a>(
    markers: impl IntoIterator<Item = &'a super::ResyncMarker>,
    sequence: u64,
) -> Option<super::ResyncMarker> {
    let mut open: Vec<super::ResyncMarker> = Vec::new();
    for marker in markers {
        if marker.sequence > sequence {
            break;
        }
        if marker.done {
            open.retain(|m| m.owner != marker.owner);
        } else if !open.iter().any(|m| m.owner == marker.owner) {
            open.push(*marker);
        }
    }
    open.first().copied()
}

/// The first marker after `sequence` at which no resync is open any more.
pub fn resyncs_closed_after<'a>(
    markers: impl IntoIterator<Item = &'a super::ResyncMarker>,
    sequence: u64,
) -> Option<u64> {
    let mut open = std::collections::BTreeSet::new();
    for marker in markers {
        if marker.done {
            open.remove(&marker.owner);
        } else {
            open.insert(marker.owner);
        }
        if marker.sequence > sequence && open.is_empty() {
            return Some(marker.sequence);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64, undo: u64) -> IndexEntry {
        IndexEntry {
            sequence,
            offset: sequence * 4096,
            length: 4096,
            data_at: 0,
            undo,
        }
    }

    fn marker(sequence: u64, owner: u32, done: bool) -> crate::ResyncMarker {
        crate::ResyncMarker {
            sequence,
            unix_ms: sequence,
            done,
            owner,
        }
    }

    #[test]
    fn a_point_is_inconsistent_while_any_owner_is_open() {
        let markers = [
            marker(10, 1, false),
            marker(20, 2, false),
            marker(30, 1, true),
            marker(40, 2, true),
            marker(50, 2, true), // a done with nothing open: no change
            marker(60, 3, false),
            marker(61, 3, false), // open twice: one resync
            marker(70, 3, true),
        ];
        let open = |sequence| resync_open_at(&markers, sequence).map(|m| m.sequence);
        assert_eq!(open(9), None);
        assert_eq!(open(10), Some(10));
        assert_eq!(open(35), Some(20), "disk 1 is done, disk 2 is not");
        assert_eq!(open(45), None);
        assert_eq!(open(65), Some(60));
        assert_eq!(open(70), None);
        assert_eq!(resyncs_closed_after(&markers, 15), Some(40));
        assert_eq!(resyncs_closed_after(&markers, 62), Some(70));
        assert_eq!(resyncs_closed_after(&markers[..6], 62), None);
    }

    #[test]
    fn retention_keeps_the_markers_still_open_at_the_oldest_point() {
        let mut index = GroupIndex::default();
        index.markers.extend([
            marker(10, 1, false),
            marker(20, 1, true),
            marker(30, 2, false),
            marker(40, 3, false),
            marker(50, 3, true),
        ]);
        index.undo_records.push_back(UndoRecordSpan {
            undo: 1,
            sequence_first: 1,
            sequence_last: 45,
        });
        index.drop_through_undo(1);
        assert_eq!(index.recoverable_from, 45);
        // Disk 2's start must stay: points after 45 are still inside it.
        let kept: Vec<u64> = index.markers.iter().map(|m| m.sequence).collect();
        assert_eq!(kept, [30, 40, 50]);
        assert_eq!(resync_open_at(&index.markers, 46).map(|m| m.owner), Some(2));
    }

    #[test]
    fn entries_are_32_bytes() {
        assert_eq!(std::mem::size_of::<IndexEntry>(), 32);
    }

    #[test]
    fn list_search_truncate_and_drop_across_chunks() {
        let mut list = EntryList::default();
        let total = CHUNK_ENTRIES as u64 * 3 + 100;
        for sequence in 1..=total {
            list.push(entry(sequence * 2, sequence / 1000));
        }
        assert_eq!(list.len(), total);
        assert_eq!(list.first_after(0), 0);
        assert_eq!(list.first_after(2), 1);
        assert_eq!(list.first_after(3), 1);
        assert_eq!(list.first_after(total * 2), total);
        list.truncate_after(CHUNK_ENTRIES as u64 * 4 + 1);
        assert_eq!(list.end(), CHUNK_ENTRIES as u64 * 2);
        list.drop_through_undo(20);
        assert_eq!(list.get(list.start()).unwrap().undo, 21);
        assert_eq!(list.first_after(0), list.start());
        let positions: Vec<u64> = list.iter_from(0).map(|(p, _)| p).take(1).collect();
        assert_eq!(positions, [list.start()]);
        list.drop_through_undo(u64::MAX);
        assert_eq!(list.len(), 0);
        list.push(entry(10_000_000, 99));
        assert_eq!(list.len(), 1);
    }
}
