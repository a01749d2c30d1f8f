//! What the tap knows about each grain of one disk: dirty on disk (the
//! map), queued or in flight to the gateway (pending counts), or lost (a
//! forward that was dropped or never acknowledged: only a resync, which
//! re-reads the primary, can clean it). A grain's bit is cleared only when
//! nothing is pending on it and it is not lost.

use super::dirty_map::{DirtyMap, DirtyMapError};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a settled grain stays dirty before it is cleared.
pub const SETTLED_CLEAR_AFTER: Duration = Duration::from_secs(2);

struct State {
    pending: HashMap<u64, u32>,
    lost: BTreeSet<u64>,
    /// Grains with nothing pending and nothing lost, and since when: they
    /// are cleared once cold, so that hot grains stay dirty and their next
    /// writes need no synchronous dirty-map write.
    settled: HashMap<u64, Instant>,
}

pub struct DiskTracker {
    map: DirtyMap,
    grain_bytes: u64,
    disk_bytes: u64,
    state: Mutex<State>,
}

impl DiskTracker {
    /// Every grain dirty at startup is lost: the gateway may not have it.
    pub fn new(map: DirtyMap, disk_bytes: u64) -> DiskTracker {
        let grain_bytes = map.grain_bytes();
        let mut lost = BTreeSet::new();
        for (offset, length) in map.dirty_ranges() {
            lost.extend(offset / grain_bytes..(offset + length).div_ceil(grain_bytes));
        }
        DiskTracker {
            map,
            grain_bytes,
            disk_bytes,
            state: Mutex::new(State {
                pending: HashMap::new(),
                lost,
                settled: HashMap::new(),
            }),
        }
    }

    fn grains(&self, offset: u64, length: u64) -> std::ops::Range<u64> {
        if length == 0 {
            return 0..0;
        }
        offset / self.grain_bytes..(offset.saturating_add(length)).div_ceil(self.grain_bytes)
    }

    /// Durably marks a range dirty (blocking I/O on first touch of a grain).
    /// Call `queued` first, so that no acknowledgement can clear the grains
    /// between the mark and the forward.
    pub fn mark(&self, offset: u64, length: u64) -> Result<(), DirtyMapError> {
        self.map.mark(offset, length)
    }

    /// Marks several ranges ahead of their forwards (the blocks of one
    /// RESYNC), with one durable write for all. Each forward still calls
    /// `queued` then `mark`, which costs nothing then, unless a sweep
    /// cleared a grain in between: the invariant is theirs, this only
    /// spares one `fdatasync` per range.
    pub fn mark_ranges(&self, ranges: &[(u64, u64)]) -> Result<(), DirtyMapError> {
        self.map.mark_ranges(ranges)
    }

    /// Whether `mark` would return at once (bits set and durable).
    pub fn is_durably_marked(&self, offset: u64, length: u64) -> bool {
        self.map.is_durably_marked(offset, length)
    }

    /// A forward of the range is about to be queued. `resync` is true for a
    /// resync read, which carries every byte of its grains as the primary
    /// holds them: it settles what was lost (and if it is lost in turn,
    /// `lost` puts the grains back).
    pub fn queued(&self, offset: u64, length: u64, resync: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for grain in self.grains(offset, length) {
            if resync {
                state.lost.remove(&grain);
            }
            state.settled.remove(&grain);
            *state.pending.entry(grain).or_insert(0) += 1;
        }
    }

    /// The gateway acknowledged a queued forward.
    pub fn acknowledged(&self, offset: u64, length: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for grain in self.grains(offset, length) {
            let count = state.pending.entry(grain).or_insert(1);
            *count -= 1;
            if *count == 0 {
                state.pending.remove(&grain);
                if !state.lost.contains(&grain) {
                    state.settled.insert(grain, Instant::now());
                }
            }
        }
    }

    /// Clears the grains settled for at least `age`; returns how many.
    pub fn sweep(&self, age: Duration) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let cold: Vec<u64> = state
            .settled
            .iter()
            .filter(|(_, since)| since.elapsed() >= age)
            .map(|(&grain, _)| grain)
            .collect();
        for grain in &cold {
            state.settled.remove(grain);
            self.map.clear(grain * self.grain_bytes, self.grain_bytes);
        }
        cold.len()
    }

    /// A queued forward will never be acknowledged (the link broke).
    pub fn lost(&self, offset: u64, length: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for grain in self.grains(offset, length) {
            if let Some(count) = state.pending.get_mut(&grain) {
                *count -= 1;
                if *count == 0 {
                    state.pending.remove(&grain);
                }
            }
            state.settled.remove(&grain);
            state.lost.insert(grain);
        }
    }

    /// `lost` for each range.
    pub fn lost_each(&self, ranges: &[(u64, u64)]) {
        for &(offset, length) in ranges {
            self.lost(offset, length);
        }
    }

    /// A forward was never queued (no link, or the queue was full).
    pub fn dropped(&self, offset: u64, length: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for grain in self.grains(offset, length) {
            state.settled.remove(&grain);
            state.lost.insert(grain);
        }
    }

    /// The lost grains as coalesced byte ranges (clipped to the disk),
    /// at most `ranges_max` of them: what a resync pass re-reads.
    pub fn lost_ranges(&self, ranges_max: usize) -> Vec<(u64, u64)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &grain in &state.lost {
            let start = grain * self.grain_bytes;
            let end = (start + self.grain_bytes).min(self.disk_bytes);
            if start >= end {
                continue;
            }
            let full = ranges.len() == ranges_max;
            match ranges.last_mut() {
                Some((offset, length)) if *offset + *length == start => *length = end - *offset,
                _ if full => break,
                _ => ranges.push((start, end - start)),
            }
        }
        ranges
    }

    pub fn lost_bytes(&self) -> u64 {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.lost.len() as u64 * self.grain_bytes
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.map.dirty_grains() * self.grain_bytes
    }

    pub fn grain_bytes(&self) -> u64 {
        self.grain_bytes
    }

    /// Writes cleared pages of the map (lazily, off the write path).
    pub fn persist(&self) -> Result<usize, DirtyMapError> {
        self.map.persist()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRAIN: u64 = 4096;

    fn tracker(directory: &tempfile::TempDir) -> DiskTracker {
        let (map, _) = DirtyMap::open(&directory.path().join("d.map"), 1 << 20, GRAIN).unwrap();
        DiskTracker::new(map, 1 << 20)
    }

    #[test]
    fn bit_clears_only_when_last_pending_write_is_acknowledged() {
        let directory = tempfile::tempdir().unwrap();
        let tracker = tracker(&directory);
        tracker.mark(0, 100).unwrap();
        tracker.queued(0, 100, false);
        tracker.mark(50, 10).unwrap();
        tracker.queued(50, 10, false);
        tracker.acknowledged(0, 100);
        tracker.sweep(Duration::ZERO);
        assert_eq!(tracker.dirty_bytes(), GRAIN, "second write still pending");
        tracker.acknowledged(50, 10);
        assert_eq!(
            tracker.sweep(Duration::from_secs(60)),
            0,
            "hot grains stay dirty"
        );
        assert_eq!(tracker.dirty_bytes(), GRAIN);
        assert_eq!(tracker.sweep(Duration::ZERO), 1);
        assert_eq!(tracker.dirty_bytes(), 0);
    }

    #[test]
    fn a_lost_forward_keeps_the_grain_dirty_until_a_resync_covers_it() {
        let directory = tempfile::tempdir().unwrap();
        let tracker = tracker(&directory);
        tracker.mark(0, 10).unwrap();
        tracker.queued(0, 10, false);
        tracker.mark(100, 10).unwrap();
        tracker.queued(100, 10, false);
        tracker.lost(0, 10); // the first write never reached the gateway
        tracker.acknowledged(100, 10); // a later write to the same grain did
        assert_eq!(
            tracker.dirty_bytes(),
            GRAIN,
            "the lost bytes are still owed"
        );
        assert_eq!(tracker.lost_ranges(16), vec![(0, GRAIN)]);
        tracker.queued(0, GRAIN, true); // resync of the whole grain
        assert!(
            tracker.lost_ranges(16).is_empty(),
            "in flight, no longer lost"
        );
        tracker.acknowledged(0, GRAIN);
        tracker.sweep(Duration::ZERO);
        assert_eq!(tracker.dirty_bytes(), 0);
        assert!(tracker.lost_ranges(16).is_empty());
    }

    #[test]
    fn a_lost_resync_puts_the_grain_back() {
        let directory = tempfile::tempdir().unwrap();
        let tracker = tracker(&directory);
        tracker.mark(0, GRAIN).unwrap();
        tracker.dropped(0, GRAIN);
        tracker.queued(0, GRAIN, true);
        tracker.lost(0, GRAIN);
        assert_eq!(tracker.lost_ranges(16), vec![(0, GRAIN)]);
        assert_eq!(tracker.dirty_bytes(), GRAIN);
    }

    #[test]
    fn dirty_at_startup_means_lost() {
        let directory = tempfile::tempdir().unwrap();
        {
            let tracker = tracker(&directory);
            tracker.mark(3 * GRAIN, 2 * GRAIN).unwrap();
        }
        let tracker = tracker(&directory);
        assert_eq!(tracker.lost_ranges(16), vec![(3 * GRAIN, 2 * GRAIN)]);
        tracker.dropped(10 * GRAIN, 1);
        assert_eq!(tracker.lost_ranges(1), vec![(3 * GRAIN, 2 * GRAIN)]);
        assert_eq!(tracker.lost_bytes(), 3 * GRAIN);
    }
}
