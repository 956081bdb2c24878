//! Sector ranges of one device, each with a value: the oracle's history
//! and its pins.
//!
//! The oracle's state only changes at the edges of the bios users issue,
//! so it is held per range of sectors whose state is the same, not per
//! sector: a write of N sectors costs a few range operations, not N map
//! entries. A range is cut where an operation starts or ends inside it,
//! and neighbours whose values became equal again are joined, so the map
//! stays as fine as the state it holds and no finer.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use crate::check::sector_map::SectorMap;

/// A value that covers a range of sectors, can be cut in two at an offset,
/// and can absorb the value of the range that follows it.
pub trait Piece: Sized {
    /// Keep sectors [0, at) of the range in `self`; return [at, len).
    fn cut(&mut self, at: u64) -> Self;
    /// Absorb `next`, the value of the range right after this one, when
    /// the two read as one; false (nothing changed) when they do not.
    fn join(&mut self, next: &Self) -> bool;
}

/// Where `Extents` keeps its ranges, by start: a `BTreeMap` (cheapest to
/// change: the pins, set and dropped by every read) or a `SectorMap` (the
/// range a bio starts at found in O(1), where a B-tree search over a
/// device's ranges cost about 165 instructions: the history, looked up at
/// every write's submission and completion; issue 10).
pub trait Store<T>: Default {
    /// The entries with starts in `range`, in order.
    fn range<'a>(
        &'a self,
        range: impl RangeBounds<u64> + 'a,
    ) -> impl DoubleEndedIterator<Item = (u64, &'a T)> + 'a
    where
        T: 'a;
    fn get_mut(&mut self, key: u64) -> Option<&mut T>;
    fn insert(&mut self, key: u64, value: T);
    fn remove(&mut self, key: u64) -> Option<T>;
    /// The last entry in `range`, to change.
    fn last_mut(&mut self, range: impl RangeBounds<u64>) -> Option<(u64, &mut T)>;
    /// Change every entry in `range`, in order.
    fn for_each_mut(&mut self, range: impl RangeBounds<u64>, f: impl FnMut(u64, &mut T));
    /// The first adjacent pair in `range` for which `f(first, second key,
    /// second)` holds: its second key.
    fn find_pair(
        &mut self,
        range: impl RangeBounds<u64>,
        f: impl FnMut(&mut T, u64, &T) -> bool,
    ) -> Option<u64>;
    #[cfg(test)]
    fn len(&self) -> usize;
}

impl<T> Store<T> for BTreeMap<u64, T> {
    fn range<'a>(
        &'a self,
        range: impl RangeBounds<u64> + 'a,
    ) -> impl DoubleEndedIterator<Item = (u64, &'a T)> + 'a
    where
        T: 'a,
    {
        BTreeMap::range(self, range).map(|(k, v)| (*k, v))
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        BTreeMap::get_mut(self, &key)
    }

    fn insert(&mut self, key: u64, value: T) {
        BTreeMap::insert(self, key, value);
    }

    fn remove(&mut self, key: u64) -> Option<T> {
        BTreeMap::remove(self, &key)
    }

    fn last_mut(&mut self, range: impl RangeBounds<u64>) -> Option<(u64, &mut T)> {
        self.range_mut(range).next_back().map(|(k, v)| (*k, v))
    }

    fn for_each_mut(&mut self, range: impl RangeBounds<u64>, mut f: impl FnMut(u64, &mut T)) {
        for (k, v) in self.range_mut(range) {
            f(*k, v);
        }
    }

    fn find_pair(
        &mut self,
        range: impl RangeBounds<u64>,
        mut f: impl FnMut(&mut T, u64, &T) -> bool,
    ) -> Option<u64> {
        let mut entries = self.range_mut(range);
        let (_, mut prev) = entries.next()?;
        for (&next, value) in entries {
            if f(prev, next, value) {
                return Some(next);
            }
            prev = value;
        }
        None
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        BTreeMap::len(self)
    }
}

impl<T> Store<T> for SectorMap<T> {
    fn range<'a>(
        &'a self,
        range: impl RangeBounds<u64> + 'a,
    ) -> impl DoubleEndedIterator<Item = (u64, &'a T)> + 'a
    where
        T: 'a,
    {
        SectorMap::range(self, range)
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        SectorMap::get_mut(self, key)
    }

    fn insert(&mut self, key: u64, value: T) {
        SectorMap::insert(self, key, value);
    }

    fn remove(&mut self, key: u64) -> Option<T> {
        SectorMap::remove(self, key)
    }

    fn last_mut(&mut self, range: impl RangeBounds<u64>) -> Option<(u64, &mut T)> {
        SectorMap::last_mut(self, range)
    }

    fn for_each_mut(&mut self, range: impl RangeBounds<u64>, f: impl FnMut(u64, &mut T)) {
        SectorMap::for_each_mut(self, range, f);
    }

    fn find_pair(
        &mut self,
        range: impl RangeBounds<u64>,
        f: impl FnMut(&mut T, u64, &T) -> bool,
    ) -> Option<u64> {
        SectorMap::find_pair(self, range, f)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        SectorMap::len(self)
    }
}

/// Disjoint ranges [start, end) of sectors, each with its value, by
/// start in a `Store` (a B-tree unless said).
pub struct Extents<V, S = BTreeMap<u64, (u64, V)>> {
    map: S,
    _values: std::marker::PhantomData<V>,
}

impl<V, S: Default> Default for Extents<V, S> {
    fn default() -> Self {
        Extents {
            map: S::default(),
            _values: std::marker::PhantomData,
        }
    }
}

impl<V: Piece, S: Store<(u64, V)>> Extents<V, S> {
    /// The starts of the ranges in `range`, in order.
    fn keys<'a>(
        &'a self,
        range: impl RangeBounds<u64> + 'a,
    ) -> impl DoubleEndedIterator<Item = u64> + 'a {
        self.map.range(range).map(|(k, _)| k)
    }

    /// The range holding `sector`: (start, end, value).
    pub fn at(&self, sector: u64) -> Option<(u64, u64, &V)> {
        let (start, (end, value)) = self.map.range(..=sector).next_back()?;
        (*end > sector).then_some((start, *end, value))
    }

    /// From `sector`, the longest stretch below `limit` that one range
    /// (or one gap) covers: its end, and the range's start and value.
    pub fn piece(&self, sector: u64, limit: u64) -> (u64, Option<(u64, &V)>) {
        if let Some((start, end, value)) = self.at(sector) {
            return (end.min(limit), Some((start, value)));
        }
        let next = self.keys(sector..).next();
        (next.map_or(limit, |n| n.min(limit)), None)
    }

    /// The range that is exactly [from, to), if there is one (the common
    /// case of a bio that meets the same sectors as the one before it).
    fn exact_mut(&mut self, from: u64, to: u64) -> Option<&mut V> {
        match self.map.get_mut(from) {
            Some((end, value)) if *end == to => Some(value),
            _ => None,
        }
    }

    /// No range meets [from, to): the last range starting before `to`
    /// ends by `from` (then so does every range before it). One search,
    /// where a gap otherwise costs two splits and a walk.
    fn is_gap(&self, from: u64, to: u64) -> bool {
        let last = self.map.range(..to).next_back();
        last.is_none_or(|(_, (end, _))| *end <= from)
    }

    /// Make `at` the edge of a range (cut the range that spans it).
    pub fn split(&mut self, at: u64) {
        let Some((start, (end, value))) = self.map.last_mut(..at) else {
            return;
        };
        if *end <= at {
            return;
        }
        let tail = value.cut(at - start);
        let tail_end = std::mem::replace(end, at);
        self.map.insert(at, (tail_end, tail));
    }

    /// Change every range inside [from, to), after cutting those that
    /// cross its edges (gaps stay gaps). True when one range was exactly
    /// [from, to) (no edge inside it to look at afterwards).
    pub fn update(&mut self, from: u64, to: u64, mut update: impl FnMut(&mut V)) -> bool {
        if let Some(value) = self.exact_mut(from, to) {
            update(value);
            return true;
        }
        self.split(from);
        self.split(to);
        self.map
            .for_each_mut(from..to, |_, (_, value)| update(value));
        false
    }

    /// Give every sector of [from, to) a value: `update` changes a range
    /// that exists, `fresh` makes the value of a gap [start, end).
    pub fn fill(
        &mut self,
        from: u64,
        to: u64,
        mut update: impl FnMut(&mut V),
        mut fresh: impl FnMut(u64, u64) -> V,
    ) {
        if from >= to {
            return;
        }
        if let Some(value) = self.exact_mut(from, to) {
            update(value);
            return;
        }
        if self.is_gap(from, to) {
            self.map.insert(from, (to, fresh(from, to)));
            return;
        }
        self.split(from);
        self.split(to);
        let mut cursor = from;
        while cursor < to {
            let next = self.keys(cursor..to).next();
            match next.filter(|start| *start == cursor) {
                Some(start) => {
                    let Some((end, value)) = self.map.get_mut(start) else {
                        break;
                    };
                    update(value);
                    cursor = *end;
                }
                None => {
                    let gap_end = next.unwrap_or(to);
                    self.map.insert(cursor, (gap_end, fresh(cursor, gap_end)));
                    cursor = gap_end;
                }
            }
        }
    }

    /// Set [from, to), a gap, to one value.
    pub fn insert_gap(&mut self, from: u64, to: u64, value: V) {
        debug_assert!(self.is_gap(from, to));
        if from < to {
            self.map.insert(from, (to, value));
        }
    }

    /// Forget every sector of [from, to).
    pub fn remove(&mut self, from: u64, to: u64) {
        if self.exact_mut(from, to).is_some() {
            self.map.remove(from);
            return;
        }
        self.split(from);
        self.split(to);
        loop {
            let Some(start) = self.keys(from..to).next() else {
                break;
            };
            self.map.remove(start);
        }
    }

    /// Join neighbours that read as one, among the ranges that touch
    /// [from, to] (the edges an operation over [from, to) may have cut).
    /// One walk from the range ending at `from` (or from `from` itself),
    /// and one more search per join made.
    pub fn join_around(&mut self, from: u64, to: u64) {
        let first = self
            .map
            .range(..from)
            .next_back()
            .filter(|(_, (end, _))| *end >= from)
            .map_or(from, |(start, _)| start);
        if first > to {
            return;
        }
        self.join_from(first, Bound::Included(to));
    }

    /// Join neighbours that read as one where their edge lies strictly
    /// inside (from, to): enough after an operation that changed only the
    /// ranges of [from, to) and left each of them unable to join a range
    /// outside it. One walk, and one more search per join made.
    pub fn join_inside(&mut self, from: u64, to: u64) {
        self.join_from(from, Bound::Excluded(to));
    }

    /// Join neighbours among the ranges that start from `from` up to
    /// `last`: walk them, join the first pair that reads as one, and walk
    /// again from the joined range.
    fn join_from(&mut self, from: u64, last: Bound<u64>) {
        let mut cursor = from;
        while let Some(joined) = self.first_join(cursor, last) {
            self.map.remove(joined);
            cursor = self.keys(..joined).next_back().unwrap_or(from);
        }
    }

    /// Walk the ranges that start from `cursor` up to `last`; join the
    /// first pair that reads as one and return the start of the range
    /// absorbed (to be removed).
    fn first_join(&mut self, cursor: u64, last: Bound<u64>) -> Option<u64> {
        let range = (Bound::Included(cursor), last);
        self.map
            .find_pair(range, |(end, value), next, (next_end, next_value)| {
                if next == *end && value.join(next_value) {
                    *end = *next_end;
                    return true;
                }
                false
            })
    }

    /// Every range in order: (start, end, value).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, &V)> + '_ {
        self.map
            .range(..)
            .map(|(start, (end, value))| (start, *end, value))
    }

    /// Change every value in place, in order (its range stays):
    /// `f(start, end, value)`.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(u64, u64, &mut V)) {
        self.map
            .for_each_mut(.., |start, (end, value)| f(start, *end, value));
    }

    /// Ranges held (what the memory grows with).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value that joins its neighbour when equal.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Same(u32);

    impl Piece for Same {
        fn cut(&mut self, _at: u64) -> Same {
            *self
        }

        fn join(&mut self, next: &Same) -> bool {
            self.0 == next.0
        }
    }

    fn ranges<S: Store<(u64, Same)>>(map: &Extents<Same, S>) -> Vec<(u64, u64, u32)> {
        map.iter().map(|(s, e, v)| (s, e, v.0)).collect()
    }

    /// Each case runs on both stores: they must behave as one.
    type Hashed = SectorMap<(u64, Same)>;

    #[test]
    fn join_around_joins_at_both_edges_and_nowhere_else() {
        join_around_case::<BTreeMap<u64, (u64, Same)>>();
        join_around_case::<Hashed>();
    }

    fn join_around_case<S: Store<(u64, Same)>>() {
        let mut map = Extents::<Same, S>::default();
        for (from, to) in [(0, 4), (4, 8), (8, 12), (20, 24)] {
            map.insert_gap(from, to, Same(1));
        }
        // [4, 8) touches [0, 4) at `from` and [8, 12) at `to`: both join;
        // [20, 24) is past `to` and not adjacent.
        map.join_around(4, 8);
        assert_eq!(ranges(&map), vec![(0, 12, 1), (20, 24, 1)]);
        map.insert_gap(12, 20, Same(1));
        map.join_around(12, 12);
        assert_eq!(ranges(&map), vec![(0, 20, 1), (20, 24, 1)]);
    }

    #[test]
    fn fill_gives_gaps_fresh_values_and_updates_ranges() {
        fill_case::<BTreeMap<u64, (u64, Same)>>();
        fill_case::<Hashed>();
    }

    fn fill_case<S: Store<(u64, Same)>>() {
        let mut map = Extents::<Same, S>::default();
        let fill = |map: &mut Extents<Same, S>, from, to| {
            map.fill(from, to, |v| v.0 += 10, |_, _| Same(1));
        };
        fill(&mut map, 4, 8); // a gap, in an empty map
        fill(&mut map, 10, 12); // a gap after a range that ends before it
        fill(&mut map, 0, 4); // a gap whose end meets a range
        fill(&mut map, 4, 8); // exactly one range
        assert_eq!(ranges(&map), vec![(0, 4, 1), (4, 8, 11), (10, 12, 1)]);
        fill(&mut map, 6, 11); // over a range's tail, a gap and a range's head
        let want = vec![
            (0, 4, 1),
            (4, 6, 11),
            (6, 8, 21),
            (8, 10, 1),
            (10, 11, 11),
            (11, 12, 1),
        ];
        assert_eq!(ranges(&map), want);
        // Over the last range, which ends inside [from, to): not a gap.
        fill(&mut map, 11, 14);
        assert_eq!(ranges(&map)[5..], [(11, 12, 11), (12, 14, 1)]);
    }
}
