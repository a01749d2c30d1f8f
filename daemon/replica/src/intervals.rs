//! A map from disjoint byte ranges to sources. A value says where the bytes of
//! a range come from by its `origin`: the disk offset at which the source's
//! data starts, so cutting a range never changes its value.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Which source (an undo log entry, a record of a batch...).
    pub id: u64,
    /// Position of the source's first byte inside that source.
    pub at: u64,
    /// Disk offset of the source's first byte.
    pub origin: u64,
}

impl Source {
    /// Position inside the source of the byte at disk offset `offset`.
    pub fn position_of(&self, offset: u64) -> u64 {
        self.at + (offset - self.origin)
    }
}

/// One piece of a lookup: `start..end`, and its source when mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub start: u64,
    pub end: u64,
    pub source: Option<Source>,
}

#[derive(Debug, Default, Clone)]
pub struct IntervalMap {
    /// start → (end, source); ranges never overlap and are never empty.
    ranges: BTreeMap<u64, (u64, Source)>,
}

impl IntervalMap {
    pub fn new() -> IntervalMap {
        IntervalMap::default()
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every mapped range, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64, Source)> + '_ {
        self.ranges
            .iter()
            .map(|(&start, &(end, source))| (start, end, source))
    }

    /// Maps `start..end` to `source`, replacing what was there (last wins).
    pub fn overwrite(&mut self, start: u64, end: u64, source: Source) {
        if start >= end {
            return;
        }
        self.cut(start, end);
        self.ranges.insert(start, (end, source));
    }

    /// Maps the parts of `start..end` not mapped yet to `source` (first wins).
    pub fn fill(&mut self, start: u64, end: u64, source: Source) {
        if start >= end {
            return;
        }
        let gaps: Vec<(u64, u64)> = self
            .lookup(start, end)
            .into_iter()
            .filter(|piece| piece.source.is_none())
            .map(|piece| (piece.start, piece.end))
            .collect();
        for (gap_start, gap_end) in gaps {
            self.ranges.insert(gap_start, (gap_end, source));
        }
    }

    /// The map that `fill` called on ranges `0..count` in order would build
    /// (first wins), where `range_of(i)` is range `i` as `(start, end,
    /// source)`. One sort and one sweep: O(n log n) comparisons of 16-byte
    /// keys and a bulk insert, where `fill` pays a lookup, two allocations
    /// and a random B-tree insert per range (a point's overlay is built from
    /// up to millions of index entries at once). Memory while building: 16
    /// bytes per range, plus the ranges made (48 bytes each).
    pub fn from_first_wins(count: usize, range_of: impl Fn(usize) -> (u64, u64, Source)) -> Self {
        assert!(u32::try_from(count).is_ok(), "{count} ranges at once");
        let mut order: Vec<(u64, u32)> = (0..count)
            .filter_map(|rank| {
                let (start, end, _) = range_of(rank);
                (start < end).then_some((start, rank as u32))
            })
            .collect();
        order.sort_unstable();
        let mut built: Vec<(u64, (u64, Source, u32))> = Vec::new();
        // Ranges begun at or before `cursor`, lowest rank (the winner) on
        // top; ranges that ended are dropped once they reach the top.
        let mut active: BinaryHeap<(Reverse<u32>, u64)> = BinaryHeap::new();
        let mut next = 0;
        let mut cursor = 0;
        loop {
            while active.peek().is_some_and(|&(_, end)| end <= cursor) {
                active.pop();
            }
            if active.is_empty() {
                let Some(&(start, _)) = order.get(next) else {
                    break;
                };
                cursor = start;
            }
            while let Some(&(start, rank)) = order.get(next).filter(|(start, _)| *start <= cursor) {
                debug_assert_eq!(
                    start, cursor,
                    "every range begun before the cursor is active"
                );
                active.push((Reverse(rank), range_of(rank as usize).1));
                next += 1;
            }
            let &(Reverse(winner), winner_end) = active.peek().expect("a range covers the cursor");
            let boundary = order
                .get(next)
                .map_or(winner_end, |&(start, _)| start.min(winner_end));
            debug_assert!(boundary > cursor);
            match built.last_mut() {
                Some((_, (end, _, rank))) if *end == cursor && *rank == winner => *end = boundary,
                _ => built.push((cursor, (boundary, range_of(winner as usize).2, winner))),
            }
            cursor = boundary;
        }
        IntervalMap {
            ranges: built
                .into_iter()
                .map(|(start, (end, source, _))| (start, (end, source)))
                .collect(),
        }
    }

    /// Removes every mapping inside `start..end`, splitting ranges at the edges.
    fn cut(&mut self, start: u64, end: u64) {
        // A range starting before `start` and reaching into it.
        if let Some((&left_start, &(left_end, source))) = self.ranges.range(..start).next_back() {
            if left_end > start {
                self.ranges.insert(left_start, (start, source));
                if left_end > end {
                    self.ranges.insert(end, (left_end, source));
                }
            }
        }
        let inside: Vec<u64> = self.ranges.range(start..end).map(|(&s, _)| s).collect();
        for range_start in inside {
            let (range_end, source) = self.ranges.remove(&range_start).expect("listed");
            if range_end > end {
                self.ranges.insert(end, (range_end, source));
            }
        }
    }

    /// The pieces of `start..end`, in order, mapped or not.
    pub fn lookup(&self, start: u64, end: u64) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut position = start;
        let first = self
            .ranges
            .range(..start)
            .next_back()
            .filter(|(_, (range_end, _))| *range_end > start)
            .map(|(&s, &v)| (s, v));
        let rest = self.ranges.range(start..end).map(|(&s, &v)| (s, v));
        for (range_start, (range_end, source)) in first.into_iter().chain(rest) {
            let piece_start = range_start.max(start);
            if piece_start > position {
                pieces.push(Piece {
                    start: position,
                    end: piece_start,
                    source: None,
                });
            }
            let piece_end = range_end.min(end);
            pieces.push(Piece {
                start: piece_start,
                end: piece_end,
                source: Some(source),
            });
            position = piece_end;
        }
        if position < end {
            pieces.push(Piece {
                start: position,
                end,
                source: None,
            });
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn source(id: u64, origin: u64) -> Source {
        Source { id, at: 0, origin }
    }

    /// A byte-per-offset model: which id covers each byte.
    fn model_apply(model: &mut [Option<u64>], start: u64, end: u64, id: u64, last_wins: bool) {
        for slot in &mut model[start as usize..end as usize] {
            if last_wins || slot.is_none() {
                *slot = Some(id);
            }
        }
    }

    proptest! {
        #[test]
        fn matches_a_byte_model(ops in proptest::collection::vec((0u64..200, 1u64..60, any::<bool>()), 1..40)) {
            let mut map = IntervalMap::new();
            let mut model = vec![None; 300];
            for (id, (start, length, last_wins)) in ops.into_iter().enumerate() {
                let id = id as u64;
                let end = start + length;
                if last_wins {
                    map.overwrite(start, end, source(id, start));
                } else {
                    map.fill(start, end, source(id, start));
                }
                model_apply(&mut model, start, end, id, last_wins);
            }
            let pieces = map.lookup(0, 300);
            let mut position = 0;
            for piece in pieces {
                prop_assert_eq!(piece.start, position);
                prop_assert!(piece.end > piece.start);
                for offset in piece.start..piece.end {
                    prop_assert_eq!(model[offset as usize], piece.source.map(|s| s.id));
                    if let Some(s) = piece.source {
                        prop_assert!(s.origin <= offset);
                    }
                }
                position = piece.end;
            }
            prop_assert_eq!(position, 300);
        }
    }

    proptest! {
        #[test]
        fn first_wins_build_matches_fill(ops in proptest::collection::vec((0u64..200, 0u64..60), 0..60)) {
            let range_of = |i: usize| (ops[i].0, ops[i].0 + ops[i].1, source(i as u64, ops[i].0));
            let mut filled = IntervalMap::new();
            for i in 0..ops.len() {
                let (start, end, source) = range_of(i);
                filled.fill(start, end, source);
            }
            let built = IntervalMap::from_first_wins(ops.len(), range_of);
            prop_assert_eq!(built.ranges().collect::<Vec<_>>(), filled.ranges().collect::<Vec<_>>());
        }
    }

    #[test]
    fn positions_survive_cuts() {
        let mut map = IntervalMap::new();
        map.overwrite(
            100,
            200,
            Source {
                id: 1,
                at: 5000,
                origin: 100,
            },
        );
        map.overwrite(120, 130, source(2, 120));
        let pieces = map.lookup(110, 140);
        assert_eq!(pieces.len(), 3);
        let right = pieces[2].source.unwrap();
        assert_eq!(right.position_of(130), 5030);
    }
}
