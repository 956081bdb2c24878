//! Memory: the engine's allocations, by site, with the live and peak
//! totals and the scenario's memory limit.
//!
//! Models `kmalloc`/`kvmalloc`/`kfree` accounting only (no contents). The
//! GFP class and the reclaim context are judged on the allocation path
//! (`alloc.rs`), which also asks the fault plan.
//!
//! Fault model: an allocation fails with ENOMEM when the fault plan says so
//! (per site, `SITE/nowait` for would-block allocations) or when it is over
//! `MAX_ALLOCATION`; over the scenario's limit the run fails ("memory").
//! A `kfree` of an unknown id is a double free ("memory").

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};

use blksnap_core::kernel::AllocId;

/// The largest single engine allocation the sim grants (1 GiB).
pub const MAX_ALLOCATION: u64 = 1 << 30;

/// Accounting of one allocation.
struct Allocation {
    site: &'static str,
    bytes: u64,
}

/// How many of the latest ids `AllocTable` keeps in its window.
const WINDOW: usize = 1024;

/// The live allocations by id. Ids are handed out one by one in increasing
/// order, and most allocations are freed soon: the recent ones sit in a
/// window indexed by `id - first` (a push and an index, where a
/// `BTreeMap` insert and remove were about 300 instructions each, 3 % of a
/// fuzz run, issue 10). One still live when the window moves past it goes
/// to `old`, so the window never holds more than `WINDOW` entries.
#[derive(Default)]
struct AllocTable {
    /// The id of `window[0]`.
    first: u64,
    /// `None`: freed.
    window: VecDeque<Option<Allocation>>,
    old: BTreeMap<u64, Allocation>,
}

impl AllocTable {
    /// `id` is the next id: one more than the last inserted.
    fn insert(&mut self, id: u64, alloc: Allocation) {
        if self.window.is_empty() {
            self.first = id;
        }
        debug_assert_eq!(id, self.first + self.window.len() as u64);
        self.window.push_back(Some(alloc));
        if self.window.len() > WINDOW {
            if let Some(Some(alloc)) = self.window.pop_front() {
                self.old.insert(self.first, alloc);
            }
            self.first += 1;
            self.trim();
        }
    }

    /// The allocation, out of the table; `None` if it is not live.
    fn remove(&mut self, id: u64) -> Option<Allocation> {
        let Some(index) = id.checked_sub(self.first) else {
            return self.old.remove(&id);
        };
        let alloc = self.window.get_mut(usize::try_from(index).ok()?)?.take();
        self.trim();
        alloc
    }

    /// Drop the freed entries at the window's front.
    fn trim(&mut self) {
        while let Some(None) = self.window.front() {
            self.window.pop_front();
            self.first += 1;
        }
    }

    fn values(&self) -> impl Iterator<Item = &Allocation> {
        self.old.values().chain(self.window.iter().flatten())
    }

    fn clear(&mut self) {
        self.window.clear();
        self.old.clear();
    }
}

#[derive(Default)]
pub struct Memory {
    allocs: RefCell<AllocTable>,
    alloc_seq: Cell<u64>,
    pub peak_alloc_bytes: Cell<u64>,
    live_alloc_bytes: Cell<u64>,
    /// Fail the run when live engine allocations exceed this (bytes).
    pub memory_limit: Cell<Option<u64>>,
    /// Allocations in reclaim (begun, not yet returned): (task, site).
    reclaiming: RefCell<Vec<(u64, &'static str)>>,
}

impl Memory {
    /// Account a live allocation. Past the scenario's limit, the message
    /// of the failure (once: the limit is then lifted).
    pub fn account(&self, site: &'static str, bytes: u64) -> (AllocId, Option<String>) {
        self.alloc_seq.set(self.alloc_seq.get() + 1);
        let id = self.alloc_seq.get();
        self.allocs
            .borrow_mut()
            .insert(id, Allocation { site, bytes });
        let live = self.live_alloc_bytes.get() + bytes;
        self.live_alloc_bytes.set(live);
        self.peak_alloc_bytes
            .set(self.peak_alloc_bytes.get().max(live));
        let mut over = None;
        if let Some(limit) = self.memory_limit.get().filter(|l| live > *l) {
            self.memory_limit.set(None);
            over = Some(format!(
                "engine memory reached {live} bytes, over the limit of {limit}"
            ));
        }
        (AllocId(id), over)
    }

    /// Bytes the engine holds now.
    pub fn live_bytes(&self) -> u64 {
        self.live_alloc_bytes.get()
    }

    /// Forget an allocation; false if it was not live (a double free).
    pub fn free(&self, id: AllocId) -> bool {
        match self.allocs.borrow_mut().remove(id.0) {
            Some(alloc) => {
                self.live_alloc_bytes
                    .set(self.live_alloc_bytes.get() - alloc.bytes);
                true
            }
            None => false,
        }
    }

    /// Power loss: the machine's memory is gone, nothing of it leaked.
    pub fn forget_all(&self) {
        self.allocs.borrow_mut().clear();
        self.live_alloc_bytes.set(0);
        self.reclaiming.borrow_mut().clear();
    }

    /// `task`'s allocation at `site` went to reclaim (it sleeps before it
    /// returns).
    pub fn reclaim_began(&self, task: u64, site: &'static str) {
        let mut reclaiming = self.reclaiming.borrow_mut();
        reclaiming.retain(|(t, _)| *t != task);
        reclaiming.push((task, site));
    }

    /// `task`'s allocation returned (memory or ENOMEM).
    pub fn returned(&self, task: u64) {
        self.reclaiming.borrow_mut().retain(|(t, _)| *t != task);
    }

    /// Whether `task`'s allocation is in reclaim.
    pub fn task_reclaiming(&self, task: u64) -> bool {
        self.reclaiming.borrow().iter().any(|(t, _)| *t == task)
    }

    /// Whether any allocation is in reclaim (most of the time none is).
    pub fn any_reclaiming(&self) -> bool {
        !self.reclaiming.borrow().is_empty()
    }

    /// Whether an allocation at `site` is in reclaim now.
    pub fn reclaiming(&self, site: &str) -> bool {
        self.reclaiming.borrow().iter().any(|(_, s)| *s == site)
    }

    /// Allocations still live, by site.
    pub fn live_allocations(&self) -> BTreeMap<&'static str, (u64, u64)> {
        let mut by_site: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        for alloc in self.allocs.borrow().values() {
            let entry = by_site.entry(alloc.site).or_default();
            entry.0 += 1;
            entry.1 += alloc.bytes;
        }
        by_site
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table answers as a map from id to allocation would, for
    /// allocations freed in every order and some kept past the window.
    #[test]
    fn alloc_table_is_a_map() {
        let mut table = AllocTable::default();
        let mut model = BTreeMap::new();
        let mut x = 7u64;
        for id in 1..=5 * WINDOW as u64 {
            table.insert(
                id,
                Allocation {
                    site: "s",
                    bytes: id,
                },
            );
            model.insert(id, id);
            // A fixed pseudo-random walk: frees of recent, old and
            // already freed ids, and of ids never handed out.
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let victim = (x >> 33) % (id + 3);
            let got = table.remove(victim).map(|a| a.bytes);
            assert_eq!(got, model.remove(&victim), "free of {victim} after {id}");
            assert!(table.window.len() <= WINDOW);
        }
        let mut live: Vec<u64> = table.values().map(|a| a.bytes).collect();
        live.sort_unstable();
        assert_eq!(live, model.keys().copied().collect::<Vec<_>>());
        assert!(
            !table.old.is_empty(),
            "the walk must keep some past the window"
        );
        table.clear();
        assert_eq!(table.values().count(), 0);
    }

    /// An allocation is in reclaim from its slow path until it returns,
    /// whatever it returned; power loss forgets every one.
    #[test]
    fn reclaims_are_kept_until_their_allocation_returns() {
        let mm = Memory::default();
        assert!(!mm.any_reclaiming());
        mm.reclaim_began(1, "event");
        mm.reclaim_began(2, "diff_buffer");
        assert!(mm.reclaiming("event") && mm.reclaiming("diff_buffer"));
        assert!(!mm.reclaiming("wait_event"));
        mm.returned(3);
        assert!(mm.reclaiming("event"), "another task's return ends nothing");
        mm.returned(1);
        assert!(!mm.reclaiming("event") && mm.any_reclaiming());
        // A task has one allocation at a time: a new slow path replaces it.
        mm.reclaim_began(2, "event");
        assert!(mm.reclaiming("event") && !mm.reclaiming("diff_buffer"));
        mm.forget_all();
        assert!(!mm.any_reclaiming());
    }
}
