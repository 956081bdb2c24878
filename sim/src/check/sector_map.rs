//! A map keyed by sector whose exact lookups cost O(1): the checkers'
//! hot path (every user write) asks for the entry at one sector, where a
//! B-tree over a device's thousands of keys paid about 150 instructions a
//! search (issue 10). The values sit in a hash table; the keys are kept
//! in order beside them for the range queries the rules make, so nothing
//! ever depends on the table's order (determinism).

use std::collections::{btree_set, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::RangeBounds;

/// A fixed (so deterministic) hash of one `u64`: a multiply, then the
/// well-mixed high bits rotated down, since the table indexes by the low
/// bits and sectors are often aligned (their low bits all zero).
#[derive(Clone, Copy, Default)]
pub struct SectorHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for SectorHasher {
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(MULTIPLIER);
    }
}

type Table<V> = HashMap<u64, V, BuildHasherDefault<SectorHasher>>;

/// Sectors in order, each with a value.
#[derive(Clone)]
pub struct SectorMap<V> {
    values: Table<V>,
    keys: BTreeSet<u64>,
}

impl<V> Default for SectorMap<V> {
    fn default() -> Self {
        SectorMap {
            values: Table::default(),
            keys: BTreeSet::new(),
        }
    }
}

impl<V> SectorMap<V> {
    pub fn get(&self, key: u64) -> Option<&V> {
        self.values.get(&key)
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.values.get_mut(&key)
    }

    /// Walk the adjacent keys in `range`, in order, and stop at the first
    /// pair for which `f(first value, second key, second value)` holds:
    /// returns its second key.
    pub fn find_pair(
        &mut self,
        range: impl RangeBounds<u64>,
        mut f: impl FnMut(&mut V, u64, &V) -> bool,
    ) -> Option<u64> {
        let mut keys = self.keys.range(range);
        let mut prev = *keys.next()?;
        for &next in keys {
            if let [Some(a), Some(b)] = self.values.get_disjoint_mut([&prev, &next]) {
                if f(a, next, b) {
                    return Some(next);
                }
            }
            prev = next;
        }
        None
    }

    /// The value at `key`, made by `fresh` if there is none.
    pub fn get_or_insert_with(&mut self, key: u64, fresh: impl FnOnce() -> V) -> &mut V {
        let keys = &mut self.keys;
        self.values.entry(key).or_insert_with(|| {
            keys.insert(key);
            fresh()
        })
    }

    pub fn insert(&mut self, key: u64, value: V) {
        if self.values.insert(key, value).is_none() {
            self.keys.insert(key);
        }
    }

    pub fn remove(&mut self, key: u64) -> Option<V> {
        let value = self.values.remove(&key)?;
        self.keys.remove(&key);
        Some(value)
    }

    /// The keys in `range`, in order.
    pub fn keys(&self, range: impl RangeBounds<u64>) -> btree_set::Range<'_, u64> {
        self.keys.range(range)
    }

    /// The entries whose keys are in `range`, in key order.
    pub fn range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> impl DoubleEndedIterator<Item = (u64, &V)> + '_ {
        self.keys.range(range).map(|k| (*k, &self.values[k]))
    }

    /// Change the value of every key in `range`, in key order.
    pub fn for_each_mut(&mut self, range: impl RangeBounds<u64>, mut f: impl FnMut(u64, &mut V)) {
        for k in self.keys.range(range) {
            if let Some(value) = self.values.get_mut(k) {
                f(*k, value);
            }
        }
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &V)> + '_ {
        self.range(..)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A fixed walk of inserts, removals and lookups, checked step by step
    /// against a `BTreeMap` (the structure it replaces).
    #[test]
    fn a_sector_map_is_an_ordered_map() {
        let mut map = SectorMap::default();
        let mut model = BTreeMap::new();
        let mut x: u64 = 12345;
        for step in 0..5000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let key = (x >> 33) % 300 * 8;
            match step % 5 {
                0 | 1 => {
                    map.insert(key, step);
                    model.insert(key, step);
                }
                2 => assert_eq!(map.remove(key), model.remove(&key)),
                3 => {
                    *map.get_or_insert_with(key, || 0) += 1;
                    *model.entry(key).or_insert(0) += 1;
                }
                _ => {
                    // The first adjacent pair from `key` whose values sum
                    // to an even number: the second gives its value to
                    // the first.
                    let found = map.find_pair(key.., |a, _, b| {
                        let even = (*a + *b) % 2 == 0;
                        if even {
                            *a = *b;
                        }
                        even
                    });
                    let pairs: Vec<(u64, u64)> = model.range(key..).map(|(k, v)| (*k, *v)).collect();
                    let want = pairs.windows(2).find(|p| (p[0].1 + p[1].1) % 2 == 0);
                    assert_eq!(found, want.map(|p| p[1].0));
                    if let Some(p) = want {
                        model.insert(p[0].0, p[1].1);
                    }
                }
            }
            assert_eq!(map.get(key), model.get(&key));
            assert_eq!(map.len(), model.len());
            let lo = key.saturating_sub(64);
            let got: Vec<(u64, u64)> = map.range(lo..key + 64).map(|(k, v)| (k, *v)).collect();
            let want: Vec<(u64, u64)> = model.range(lo..key + 64).map(|(k, v)| (*k, *v)).collect();
            assert_eq!(got, want);
        }
        let all: Vec<(u64, u64)> = map.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
    }
}
