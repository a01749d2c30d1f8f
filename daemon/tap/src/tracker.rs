//! What the tap knows about each grain of one disk: dirty on disk (the
//! map), queued or in flight to the gateway (pending counts), or lost (a
//! forward that was dropped or never acknowledged: only a resync, which
//! re-reads the primary, can clean it). A grain's bit is cleared only when
//! nothing is pending on it and it is not lost.
//!
//! Marking is by activity extent (as DRBD's activity log): a write to a
//! clean region durably marks every grain of its extent (4 MiB by default),
//! so the next writes anywhere in that extent wait for no I/O. An extent
//! stays marked while it is hot; once nothing in it is pending and it saw
//! no activity for `SETTLED_CLEAR_AFTER`, or when more than
//! `HOT_EXTENTS_BYTES_MAX` of extents are hot (the least recently used go
//! first), its grains are cleared, except the lost ones. The fine grains
//! keep what a resync after a disconnect re-reads small; the extents bound
//! what a crash costs: every hot extent is read again, at most
//! `HOT_EXTENTS_BYTES_MAX` per disk plus what was pending.

use drgw_dirtymap::{DirtyMap, DirtyMapError};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an extent with nothing pending stays marked after its last
/// activity.
pub const SETTLED_CLEAR_AFTER: Duration = Duration::from_secs(2);

/// Bytes of disk marked at once (rounded up to the grain).
pub const EXTENT_BYTES_DEFAULT: u64 = drgw_config::TapDisk::EXTENT_BYTES_DEFAULT;

/// Most bytes of hot extents kept marked per disk: what a crash may cost in
/// resync reads beyond the writes in flight.
pub const HOT_EXTENTS_BYTES_MAX: u64 = 4 << 30;

/// How far past a sequential write its mark reaches (see `DiskTracker::mark`).
pub const MARK_AHEAD_BYTES: u64 = 32 << 20;

/// Ends of the latest writes, to tell a sequential stream from scattered
/// writes.
const RECENT_ENDS: usize = 16;

struct State {
    pending: HashMap<u64, u32>,
    lost: BTreeSet<u64>,
    /// Marked extents and their last activity (mark, queue, acknowledgement).
    hot: HashMap<u64, Instant>,
    recent_ends: [u64; RECENT_ENDS],
    recent_next: usize,
}

pub struct DiskTracker {
    map: DirtyMap,
    grain_bytes: u64,
    extent_bytes: u64,
    hot_extents_max: usize,
    disk_bytes: u64,
    state: Mutex<State>,
}

impl DiskTracker {
    /// Every grain dirty at startup is lost: the gateway may not have it.
    pub fn new(map: DirtyMap, disk_bytes: u64) -> DiskTracker {
        Self::with_extents(map, disk_bytes, EXTENT_BYTES_DEFAULT, HOT_EXTENTS_BYTES_MAX)
    }

    /// `new` with other extent figures: `extent_bytes` is rounded up to a
    /// power of two of at least a grain (a grain: marking grain by grain).
    pub fn with_extents(
        map: DirtyMap,
        disk_bytes: u64,
        extent_bytes: u64,
        hot_bytes_max: u64,
    ) -> DiskTracker {
        let grain_bytes = map.grain_bytes();
        let extent_bytes = extent_bytes.max(grain_bytes).next_power_of_two();
        let mut lost = BTreeSet::new();
        for (offset, length) in map.dirty_ranges() {
            lost.extend(offset / grain_bytes..(offset + length).div_ceil(grain_bytes));
        }
        DiskTracker {
            map,
            grain_bytes,
            extent_bytes,
            hot_extents_max: (hot_bytes_max / extent_bytes).max(1) as usize,
            disk_bytes,
            state: Mutex::new(State {
                pending: HashMap::new(),
                lost,
                hot: HashMap::new(),
                recent_ends: [u64::MAX; RECENT_ENDS],
                recent_next: 0,
            }),
        }
    }

    fn grains(&self, offset: u64, length: u64) -> std::ops::Range<u64> {
        if length == 0 {
            return 0..0;
        }
        offset / self.grain_bytes..(offset.saturating_add(length)).div_ceil(self.grain_bytes)
    }

    fn extents(&self, offset: u64, length: u64) -> std::ops::Range<u64> {
        if length == 0 {
            return 0..0;
        }
        offset / self.extent_bytes..(offset.saturating_add(length)).div_ceil(self.extent_bytes)
    }

    fn touch(&self, state: &mut State, offset: u64, length: u64, now: Instant) {
        for extent in self.extents(offset, length) {
            state.hot.insert(extent, now);
        }
    }

    /// Durably marks a range dirty (blocking I/O on first touch of an
    /// extent). Call `queued` first, so that no acknowledgement can clear
    /// the grains between the mark and the forward.
    ///
    /// Marks whole extents. A write that continues one of the latest writes
    /// (a sequential stream) marks `MARK_AHEAD_BYTES` past its end as well,
    /// in the same page write and `fdatasync`: the stream's next writes
    /// then wait for no I/O either. Extents marked and not reached go cold
    /// and are cleared like any other.
    pub fn mark(&self, offset: u64, length: u64) -> Result<(), DirtyMapError> {
        if length == 0 || self.map.is_durably_marked(offset, length) {
            return Ok(());
        }
        let end = offset.saturating_add(length).min(self.disk_bytes);
        let start = offset / self.extent_bytes * self.extent_bytes;
        let mut marked_end = end
            .div_ceil(self.extent_bytes)
            .saturating_mul(self.extent_bytes);
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.recent_ends.contains(&offset) {
                marked_end = marked_end.saturating_add(MARK_AHEAD_BYTES);
            }
            marked_end = marked_end.min(self.disk_bytes);
            self.touch(&mut state, start, marked_end - start, Instant::now());
        }
        self.map.mark(start, marked_end - start)
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
            *state.pending.entry(grain).or_insert(0) += 1;
        }
        if !resync {
            let next = state.recent_next;
            state.recent_ends[next] = offset.saturating_add(length);
            state.recent_next = (next + 1) % RECENT_ENDS;
        }
        self.touch(&mut state, offset, length, Instant::now());
    }

    /// The gateway acknowledged a queued forward.
    pub fn acknowledged(&self, offset: u64, length: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for grain in self.grains(offset, length) {
            if let Some(count) = state.pending.get_mut(&grain) {
                *count -= 1;
                if *count == 0 {
                    state.pending.remove(&grain);
                }
            }
        }
        self.touch(&mut state, offset, length, Instant::now());
    }

    /// Clears the extents cold for at least `age`, and the least recently
    /// active ones beyond the hot cap, except their pending and lost grains
    /// (an extent with a pending grain stays hot); returns how many grains
    /// were cleared.
    pub fn sweep(&self, age: Duration) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_age: Vec<(Instant, u64)> = state
            .hot
            .iter()
            .map(|(&extent, &last)| (last, extent))
            .collect();
        let mut over_cap = by_age.len().saturating_sub(self.hot_extents_max);
        // Only the cap needs the least recent first; idle extents go in any order.
        let sorted = over_cap > 0;
        if sorted {
            by_age.sort_unstable();
        }
        let grains_per_extent = self.extent_bytes / self.grain_bytes;
        let mut cleared = 0;
        for (last, extent) in by_age {
            if over_cap == 0 && last.elapsed() < age {
                // Sorted, every extent after this one is younger still.
                if sorted {
                    break;
                }
                continue;
            }
            let grains = extent * grains_per_extent..(extent + 1) * grains_per_extent;
            if grains
                .clone()
                .any(|grain| state.pending.contains_key(&grain))
            {
                continue;
            }
            state.hot.remove(&extent);
            over_cap = over_cap.saturating_sub(1);
            // Clear the extent's grains in runs between its lost grains, which stay.
            let mut from = grains.start;
            for &lost in state.lost.range(grains.clone()) {
                if lost > from {
                    cleared += self
                        .map
                        .clear(from * self.grain_bytes, (lost - from) * self.grain_bytes);
                }
                from = lost + 1;
            }
            if grains.end > from {
                cleared += self.map.clear(
                    from * self.grain_bytes,
                    (grains.end - from) * self.grain_bytes,
                );
            }
        }
        cleared
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

    /// Marking grain by grain (extents of one grain).
    fn tracker(directory: &tempfile::TempDir) -> DiskTracker {
        tracker_with(directory, GRAIN, 1 << 30)
    }

    /// A 1 MiB disk of 4 KiB grains.
    fn tracker_with(directory: &tempfile::TempDir, extent: u64, hot_max: u64) -> DiskTracker {
        let (map, _) = DirtyMap::open(&directory.path().join("d.map"), 1 << 20, GRAIN).unwrap();
        DiskTracker::with_extents(map, 1 << 20, extent, hot_max)
    }

    /// Queues and marks a write, as the tap does.
    fn write(tracker: &DiskTracker, offset: u64, length: u64) {
        tracker.queued(offset, length, false);
        tracker.mark(offset, length).unwrap();
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
    fn a_write_marks_its_extent_and_the_extent_clears_when_cold() {
        let directory = tempfile::tempdir().unwrap();
        let extent = 4 * GRAIN;
        let tracker = tracker_with(&directory, extent, 1 << 30);
        write(&tracker, 5 * GRAIN + 100, 10);
        assert_eq!(tracker.dirty_bytes(), extent, "grains 4..8");
        assert!(
            tracker.is_durably_marked(4 * GRAIN, extent),
            "the extent's next writes need no I/O"
        );
        write(&tracker, 7 * GRAIN, GRAIN);
        tracker.acknowledged(5 * GRAIN + 100, 10);
        assert_eq!(
            tracker.sweep(Duration::ZERO),
            0,
            "a pending grain keeps its whole extent"
        );
        assert_eq!(tracker.sweep(Duration::from_secs(60)), 0);
        tracker.acknowledged(7 * GRAIN, GRAIN);
        assert_eq!(tracker.sweep(Duration::from_secs(60)), 0, "still hot");
        assert_eq!(tracker.sweep(Duration::ZERO), 4);
        assert_eq!(tracker.dirty_bytes(), 0);
    }

    #[test]
    fn lost_grains_outlive_their_extent() {
        let directory = tempfile::tempdir().unwrap();
        let tracker = tracker_with(&directory, 4 * GRAIN, 1 << 30);
        write(&tracker, 0, GRAIN);
        write(&tracker, 2 * GRAIN, GRAIN);
        tracker.lost(0, GRAIN);
        tracker.acknowledged(2 * GRAIN, GRAIN);
        // In the next extent a lost grain sits between cleared ones.
        write(&tracker, 5 * GRAIN, GRAIN);
        write(&tracker, 6 * GRAIN, GRAIN);
        tracker.lost(5 * GRAIN, GRAIN);
        tracker.acknowledged(6 * GRAIN, GRAIN);
        assert_eq!(tracker.sweep(Duration::ZERO), 6);
        assert_eq!(
            tracker.dirty_bytes(),
            2 * GRAIN,
            "only the lost grains are owed"
        );
        assert_eq!(
            tracker.lost_ranges(16),
            vec![(0, GRAIN), (5 * GRAIN, GRAIN)]
        );
    }

    #[test]
    fn beyond_the_hot_cap_the_least_recent_extents_go_first() {
        let directory = tempfile::tempdir().unwrap();
        let extent = 4 * GRAIN;
        let tracker = tracker_with(&directory, extent, 2 * extent);
        for index in [0, 5, 9] {
            write(&tracker, index * extent, GRAIN);
            tracker.acknowledged(index * extent, GRAIN);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(tracker.dirty_bytes(), 3 * extent);
        // None is cold yet, but three are over a cap of two: the oldest goes.
        assert_eq!(tracker.sweep(Duration::from_secs(60)), 4);
        assert!(!tracker.is_durably_marked(0, GRAIN));
        assert!(tracker.is_durably_marked(5 * extent, extent));
        assert!(tracker.is_durably_marked(9 * extent, extent));
    }

    #[test]
    fn a_sequential_stream_marks_ahead_and_unreached_extents_go_cold() {
        let directory = tempfile::tempdir().unwrap();
        let extent = 4 * GRAIN;
        let (map, _) = DirtyMap::open(&directory.path().join("d.map"), 64 << 20, GRAIN).unwrap();
        let tracker = DiskTracker::with_extents(map, 64 << 20, extent, 1 << 30);
        write(&tracker, 0, 2 * GRAIN);
        assert_eq!(
            tracker.dirty_bytes(),
            extent,
            "a first write: its extent only"
        );
        // The next write continues it: the mark reaches MARK_AHEAD_BYTES on.
        write(&tracker, 2 * GRAIN, 4 * GRAIN);
        assert_eq!(tracker.dirty_bytes(), 2 * extent + MARK_AHEAD_BYTES);
        assert!(tracker.is_durably_marked(6 * GRAIN, MARK_AHEAD_BYTES));
        // A write elsewhere that continues nothing marks its extent only.
        write(&tracker, 48 << 20, GRAIN);
        assert_eq!(tracker.dirty_bytes(), 3 * extent + MARK_AHEAD_BYTES);
        tracker.acknowledged(0, 2 * GRAIN);
        tracker.acknowledged(2 * GRAIN, 4 * GRAIN);
        tracker.acknowledged(48 << 20, GRAIN);
        tracker.sweep(Duration::ZERO);
        assert_eq!(
            tracker.dirty_bytes(),
            0,
            "what the stream did not reach is cleared"
        );
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
