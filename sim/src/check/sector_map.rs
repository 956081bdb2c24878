//! A map keyed by sector whose exact lookups cost O(1): the checkers'
//! hot path (every user write) asks for the entry at one sector, where a
//! B-tree over a device's thousands of keys paid about 150 instructions a
//! search (issue 10). The values sit in a slab; a hash table finds a
//! key's slot, and the keys are kept in order with their slots for the
//! range queries the rules make (which then cost what the B-tree alone
//! did: no hashing). Nothing ever depends on the table's order
//! (determinism).

use std::collections::{BTreeMap, HashMap};
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

type Table = HashMap<u64, usize, BuildHasherDefault<SectorHasher>>;

/// Sectors in order, each with a value.
#[derive(Clone)]
pub struct SectorMap<V> {
    /// Values by slot; a removed value's slot is free for the next.
    slots: Vec<Option<V>>,
    free: Vec<usize>,
    /// Key -> slot, for exact lookups.
    index: Table,
    /// Key -> slot, in key order, for range queries.
    order: BTreeMap<u64, usize>,
}

impl<V> Default for SectorMap<V> {
    fn default() -> Self {
        SectorMap {
            slots: Vec::new(),
            free: Vec::new(),
            index: Table::default(),
            order: BTreeMap::new(),
        }
    }
}

impl<V> SectorMap<V> {
    fn value(&self, slot: usize) -> &V {
        self.slots[slot].as_ref().expect("a live slot")
    }

    #[cfg(test)]
    pub fn get(&self, key: u64) -> Option<&V> {
        let slot = *self.index.get(&key)?;
        self.slots[slot].as_ref()
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        let slot = *self.index.get(&key)?;
        self.slots[slot].as_mut()
    }

    /// A free slot holding `value`.
    fn place(&mut self, value: V) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        }
    }

    /// The value at `key`, made by `fresh` if there is none.
    pub fn get_or_insert_with(&mut self, key: u64, fresh: impl FnOnce() -> V) -> &mut V {
        let slot = match self.index.get(&key) {
            Some(&slot) => slot,
            None => {
                let slot = self.place(fresh());
                self.index.insert(key, slot);
                self.order.insert(key, slot);
                slot
            }
        };
        self.slots[slot].as_mut().expect("a live slot")
    }

    pub fn insert(&mut self, key: u64, value: V) {
        match self.index.get(&key) {
            Some(&slot) => self.slots[slot] = Some(value),
            None => {
                let slot = self.place(value);
                self.index.insert(key, slot);
                self.order.insert(key, slot);
            }
        }
    }

    pub fn remove(&mut self, key: u64) -> Option<V> {
        let slot = self.index.remove(&key)?;
        self.order.remove(&key);
        self.free.push(slot);
        self.slots[slot].take()
    }

    /// The entries whose keys are in `range`, in key order.
    pub fn range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> impl DoubleEndedIterator<Item = (u64, &V)> + '_ {
        self.order
            .range(range)
            .map(|(k, slot)| (*k, self.value(*slot)))
    }

    /// The last entry in `range`, to change.
    pub fn last_mut(&mut self, range: impl RangeBounds<u64>) -> Option<(u64, &mut V)> {
        let (&key, &slot) = self.order.range(range).next_back()?;
        Some((key, self.slots[slot].as_mut()?))
    }

    /// Change the value of every key in `range`, in key order.
    pub fn for_each_mut(&mut self, range: impl RangeBounds<u64>, mut f: impl FnMut(u64, &mut V)) {
        for (k, slot) in self.order.range(range) {
            if let Some(value) = self.slots[*slot].as_mut() {
                f(*k, value);
            }
        }
    }

    /// Walk the adjacent keys in `range`, in order, and stop at the first
    /// pair for which `f(first value, second key, second value)` holds:
    /// returns its second key.
    pub fn find_pair(
        &mut self,
        range: impl RangeBounds<u64>,
        mut f: impl FnMut(&mut V, u64, &V) -> bool,
    ) -> Option<u64> {
        let mut entries = self.order.range(range);
        let (_, &mut_slot) = entries.next()?;
        let mut prev = mut_slot;
        for (&next, &slot) in entries {
            if let [Some(a), Some(b)] = self.slots.get_disjoint_mut([prev, slot]).ok()? {
                if f(a, next, b) {
                    return Some(next);
                }
            }
            prev = slot;
        }
        None
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &V)> + '_ {
        self.range(..)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
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
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
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
                    let pairs: Vec<(u64, u64)> =
                        model.range(key..).map(|(k, v)| (*k, *v)).collect();
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
