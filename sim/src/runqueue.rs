//! The runnable tasks, kept so that each scheduling decision costs
//! O(log n) in the number of tasks, not O(n): a `Concurrent` step of 10^5
//! branches is 10^5 tasks, and the scheduler picks once per poll.
//!
//! The two picks are the ones the policies define:
//! - `nth(i)`: the runnable task with the i-th smallest id (the uniform
//!   pick draws `i`). Ids grow with creation, so a task's creation order
//!   (its slot) sorts like its id; a Fenwick tree over the slots counts the
//!   runnable ones and finds the i-th in O(log n).
//! - `highest()`: the runnable task of the highest priority, the larger id
//!   among equals (as a max over ids in ascending order picks).
//!
//! While at most `WORD_SLOTS` tasks were ever created (most runs), the
//! runnable slots are bits of a few words instead of the tree: a wake or
//! a sleep flips a bit, and the i-th runnable task is found by counting
//! the bits of at most `WORD_SLOTS / 64` words, then clearing the lowest
//! bits of one, with no loop over the tree's levels.
//!
//! On the bitmap, `highest()` looks at each runnable slot's priority (a
//! few slots per pick). Past it, an ordered set of the runnable tasks
//! answers, at a set insert and remove per poll: it is built on the
//! first `highest()` there and kept from then on, so a run under the
//! uniform policy (most runs) never pays for it.
//!
//! A wake and a sleep per poll: each may name the task's slot, which the
//! waker learned when the task was added and the pick found, so that
//! neither searches the live map (`wake_slot`, `sleep_slot`; a slot that
//! does not hold the id falls back to the search). A slot keeps its
//! task's priority too, so that the slot paths update the ordered set
//! with no search either.

use std::collections::{BTreeMap, BTreeSet};

use crate::kernel::task::TaskId;

/// Slots the bitmap holds; the tree replaces it past them (where
/// counting the words would cost more than the tree's levels).
const WORD_SLOTS: usize = 1024;

#[derive(Default)]
pub(crate) struct RunQueue {
    /// Live tasks: their slot (creation order).
    live: BTreeMap<TaskId, usize>,
    /// The task of each slot ever handed out.
    id_at: Vec<TaskId>,
    /// The priority of the task of each slot.
    priority_at: Vec<u64>,
    /// Whether the task of a slot is runnable.
    runnable: Vec<bool>,
    /// Whether the task of a slot is live (added, not forgotten).
    alive: Vec<bool>,
    /// Fenwick tree over the slots, 1-based; its size is a power of two.
    /// Empty while the slots fit in `words`.
    tree: Vec<usize>,
    /// Bit `slot % 64` of word `slot / 64` set if that slot's task is
    /// runnable, while `tree` is empty.
    words: Vec<u64>,
    len: usize,
    /// The runnable tasks by priority, once the slots have outgrown the
    /// bitmap: None until `highest()` first asks then (on the bitmap it
    /// looks at the runnable slots instead).
    by_priority: Option<BTreeSet<(u64, TaskId)>>,
}

impl RunQueue {
    /// A new task, not yet runnable. Ids must grow with each call.
    pub fn add(&mut self, id: TaskId, priority: u64) {
        debug_assert!(self.id_at.last().is_none_or(|last| *last < id));
        let slot = self.id_at.len();
        self.id_at.push(id);
        self.priority_at.push(priority);
        self.runnable.push(false);
        self.alive.push(true);
        let size = self.tree.len().saturating_sub(1);
        if slot >= WORD_SLOTS && slot >= size {
            self.rebuild((size * 2).max(2 * WORD_SLOTS));
        } else if self.tree.is_empty() && slot / 64 == self.words.len() {
            self.words.push(0);
        }
        self.live.insert(id, slot);
    }

    /// The task is gone: never runnable again.
    pub fn forget(&mut self, id: TaskId) {
        if let Some(slot) = self.live.remove(&id) {
            self.sleep_at(slot, id);
            self.alive[slot] = false;
        }
    }

    /// The slot the next `add` gives its task.
    pub fn next_slot(&self) -> usize {
        self.id_at.len()
    }

    /// Whether `slot` is the slot of task `id`.
    fn holds(&self, slot: usize, id: TaskId) -> bool {
        self.id_at.get(slot) == Some(&id)
    }

    /// `wake` of task `id`, known to be in `slot` (else searched).
    pub fn wake_slot(&mut self, id: TaskId, slot: usize) {
        if !self.holds(slot, id) {
            return self.wake(id);
        }
        if self.alive[slot] {
            self.wake_at(slot, id);
        }
    }

    /// `sleep` of task `id`, known to be in `slot` (else searched). A
    /// runnable slot is live (a task is put to sleep before it is
    /// forgotten), so no liveness check.
    pub fn sleep_slot(&mut self, id: TaskId, slot: usize) {
        if !self.holds(slot, id) {
            return self.sleep(id);
        }
        self.sleep_at(slot, id);
    }

    /// Make a live task runnable (nothing for a dead one).
    pub fn wake(&mut self, id: TaskId) {
        if let Some(&slot) = self.live.get(&id) {
            self.wake_at(slot, id);
        }
    }

    /// The task is being polled (or is gone): not runnable.
    pub fn sleep(&mut self, id: TaskId) {
        if let Some(&slot) = self.live.get(&id) {
            self.sleep_at(slot, id);
        }
    }

    /// `wake` of the live task `id` in `slot`.
    #[inline]
    fn wake_at(&mut self, slot: usize, id: TaskId) {
        if !self.runnable[slot] {
            self.runnable[slot] = true;
            self.update(slot, true);
            if let Some(set) = self.by_priority.as_mut() {
                set.insert((self.priority_at[slot], id));
            }
        }
    }

    /// `sleep` of task `id` in `slot`.
    #[inline]
    fn sleep_at(&mut self, slot: usize, id: TaskId) {
        if self.runnable[slot] {
            self.runnable[slot] = false;
            self.update(slot, false);
            if let Some(set) = self.by_priority.as_mut() {
                set.remove(&(self.priority_at[slot], id));
            }
        }
    }

    pub fn set_priority(&mut self, id: TaskId, priority: u64) {
        let Some(&slot) = self.live.get(&id) else {
            return;
        };
        let old = std::mem::replace(&mut self.priority_at[slot], priority);
        if let Some(set) = self.by_priority.as_mut().filter(|_| self.runnable[slot]) {
            set.remove(&(old, id));
            set.insert((priority, id));
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The runnable task with the `i`-th smallest id (from 0).
    #[cfg(test)]
    pub fn nth(&self, i: usize) -> Option<TaskId> {
        self.nth_slot(i).map(|(id, _)| id)
    }

    /// The runnable task with the `i`-th smallest id (from 0), and its slot.
    #[inline]
    pub fn nth_slot(&self, i: usize) -> Option<(TaskId, usize)> {
        if i >= self.len {
            return None;
        }
        if self.tree.is_empty() {
            return self.nth_in_words(i);
        }
        // Binary lifting: the largest prefix of slots holding at most `i`
        // runnable tasks ends just before the one wanted.
        let size = self.tree.len() - 1;
        let mut pos = 0;
        let mut left = i + 1;
        let mut step = size;
        while step > 0 {
            let next = pos + step;
            if next <= size && self.tree[next] < left {
                pos = next;
                left -= self.tree[next];
            }
            step /= 2;
        }
        self.at_slot(pos)
    }

    /// The task of `slot` and the slot, if the slot was handed out.
    #[inline]
    fn at_slot(&self, slot: usize) -> Option<(TaskId, usize)> {
        self.id_at.get(slot).map(|&id| (id, slot))
    }

    /// `nth` on the bitmap: skip whole words by their counts, then clear
    /// the lowest bits of the word that holds the task.
    #[inline]
    fn nth_in_words(&self, mut i: usize) -> Option<(TaskId, usize)> {
        if let [mut word] = self.words[..] {
            // One word (at most 64 tasks ever, the usual run): no count.
            for _ in 0..i {
                word &= word - 1;
            }
            return self.at_slot(word.trailing_zeros() as usize);
        }
        for (w, &word) in self.words.iter().enumerate() {
            let count = word.count_ones() as usize;
            if i >= count {
                i -= count;
                continue;
            }
            let mut word = word;
            for _ in 0..i {
                word &= word - 1;
            }
            return self.at_slot(w * 64 + word.trailing_zeros() as usize);
        }
        None
    }

    /// The rank task `id` in `slot`, live and not runnable, would have
    /// among the runnable tasks if it were woken: how many runnable slots
    /// come before its own. A pick can then count it in its draw with no
    /// wake and no sleep of its bit (a preemption point that goes on with
    /// the same task). None off the bitmap (the tree), once the priority
    /// set is built, or if the slot does not hold that sleeping task:
    /// then it is woken for real.
    ///
    /// Inlined, with the usual answer first: a preemption point of a
    /// task that runs alone finds nothing runnable, so its rank is 0 (and
    /// it is not runnable itself); the count over the words is a call.
    #[inline(always)]
    pub fn rank_if_woken(&self, id: TaskId, slot: usize) -> Option<usize> {
        let countable = self.tree.is_empty() && self.by_priority.is_none();
        if !countable || !self.holds(slot, id) || !self.alive[slot] {
            return None;
        }
        if self.len == 0 {
            return Some(0);
        }
        self.rank_in_words(slot)
    }

    /// `rank_if_woken` of a live task in `slot` with tasks runnable (None
    /// if it is one of them).
    #[inline(never)]
    fn rank_in_words(&self, slot: usize) -> Option<usize> {
        if self.runnable[slot] {
            return None;
        }
        let (word, bit) = (slot / 64, slot % 64);
        let below = self.words[..word]
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>();
        Some(below + (self.words[word] & ((1 << bit) - 1)).count_ones() as usize)
    }

    /// The runnable task of the highest priority (the larger id on a tie).
    pub fn highest(&mut self) -> Option<TaskId> {
        if self.tree.is_empty() {
            return self.highest_in_words();
        }
        if self.by_priority.is_none() {
            let set = self
                .live
                .iter()
                .filter(|(_, &slot)| self.runnable[slot])
                .map(|(&id, &slot)| (self.priority_at[slot], id))
                .collect();
            self.by_priority = Some(set);
        }
        self.by_priority.as_ref()?.last().map(|&(_, id)| id)
    }

    /// `highest` on the bitmap: a look at each runnable slot (a few per
    /// pick), where the ordered set cost an insert and a remove per poll.
    fn highest_in_words(&self) -> Option<TaskId> {
        let mut best: Option<(u64, TaskId)> = None;
        for (w, &word) in self.words.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let slot = w * 64 + word.trailing_zeros() as usize;
                word &= word - 1;
                let key = (self.priority_at[slot], self.id_at[slot]);
                if best.is_none_or(|best| key > best) {
                    best = Some(key);
                }
            }
        }
        best.map(|(_, id)| id)
    }

    #[inline]
    fn update(&mut self, slot: usize, add: bool) {
        if add {
            self.len += 1;
        } else {
            self.len -= 1;
        }
        if self.tree.is_empty() {
            self.words[slot / 64] ^= 1 << (slot % 64);
            return;
        }
        let mut i = slot + 1;
        while i < self.tree.len() {
            if add {
                self.tree[i] += 1;
            } else {
                self.tree[i] -= 1;
            }
            i += i & i.wrapping_neg();
        }
    }

    /// A tree for `size` slots (a power of two), built in O(size).
    fn rebuild(&mut self, size: usize) {
        let mut tree = vec![0; size + 1];
        for i in 1..=size {
            tree[i] += usize::from(self.runnable.get(i - 1).copied().unwrap_or(false));
            let parent = i + (i & i.wrapping_neg());
            if parent <= size {
                tree[parent] += tree[i];
            }
        }
        self.tree = tree;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SimRng;

    /// Against the plain definition (a sorted set), through random
    /// adds, wakes, sleeps, priority changes and exits.
    #[test]
    fn picks_match_a_sorted_set() {
        picks_match_from(0);
    }

    /// The bitmap serves the first `WORD_SLOTS` tasks, the tree from the
    /// next one on, and the picks do not change across the switch.
    #[test]
    fn the_bitmap_hands_over_to_the_tree() {
        let mut queue = RunQueue::default();
        let n = WORD_SLOTS as u64;
        for id in 1..=n {
            queue.add(id * 10, 0);
            if id % 3 != 0 {
                queue.wake(id * 10);
            }
        }
        let expected: Vec<_> = (1..=n)
            .filter(|id| id % 3 != 0)
            .map(|id| Some(id * 10))
            .collect();
        assert!(queue.tree.is_empty(), "the bitmap while the slots fit");
        let before: Vec<_> = (0..queue.len()).map(|i| queue.nth(i)).collect();
        assert_eq!(before, expected);
        queue.add(100_000, 0);
        assert!(!queue.tree.is_empty(), "the tree past them");
        let after: Vec<_> = (0..queue.len()).map(|i| queue.nth(i)).collect();
        assert_eq!(after, expected);
    }

    /// The priority order built late, from a queue that lived without it.
    #[test]
    fn priority_order_built_late_matches() {
        picks_match_from(5_000);
    }

    /// Random operations, checking `highest()` from operation `first_highest` on.
    fn picks_match_from(first_highest: usize) {
        let mut rng = SimRng::child(7, "test");
        let mut queue = RunQueue::default();
        let mut live: BTreeMap<TaskId, u64> = BTreeMap::new();
        let mut runnable: BTreeSet<TaskId> = BTreeSet::new();
        // The slot of every task ever added, as its waker knows it.
        let mut slots: BTreeMap<TaskId, usize> = BTreeMap::new();
        let mut next = 0;
        let mut ranks = 0;
        for step in 0..20_000 {
            match rng.below(6) {
                0 | 1 => {
                    next += 1 + rng.below(3);
                    let priority = rng.below(8);
                    slots.insert(next, queue.next_slot());
                    queue.add(next, priority);
                    live.insert(next, priority);
                    queue.wake(next);
                    runnable.insert(next);
                }
                2 if next > 0 => {
                    let id = 1 + rng.below(next);
                    match slot_hint(&mut rng, &slots, id) {
                        Some(slot) => queue.wake_slot(id, slot),
                        None => queue.wake(id),
                    }
                    if live.contains_key(&id) {
                        runnable.insert(id);
                    }
                }
                3 if next > 0 => {
                    let id = 1 + rng.below(next);
                    match slot_hint(&mut rng, &slots, id) {
                        Some(slot) => queue.sleep_slot(id, slot),
                        None => queue.sleep(id),
                    }
                    runnable.remove(&id);
                }
                4 if next > 0 => {
                    let id = 1 + rng.below(next);
                    let priority = rng.below(8);
                    queue.set_priority(id, priority);
                    if let Some(p) = live.get_mut(&id) {
                        *p = priority;
                    }
                }
                _ if next > 0 => {
                    let id = 1 + rng.below(next);
                    queue.forget(id);
                    live.remove(&id);
                    runnable.remove(&id);
                }
                _ => {}
            }
            assert_eq!(queue.len(), runnable.len());
            for i in [0, runnable.len() / 2, runnable.len().saturating_sub(1)] {
                assert_eq!(queue.nth(i), runnable.iter().nth(i).copied());
            }
            assert_eq!(queue.nth(runnable.len()), None);
            if next > 0 {
                // A sleeping live task counted in a pick without its wake.
                let id = 1 + rng.below(next);
                let counted =
                    slot_hint(&mut rng, &slots, id).and_then(|s| queue.rank_if_woken(id, s));
                if let Some(rank) = counted {
                    assert!(live.contains_key(&id) && !runnable.contains(&id));
                    assert_eq!(rank, runnable.range(..id).count(), "step {step}");
                    ranks += 1;
                }
            }
            if step >= first_highest {
                let highest = runnable.iter().max_by_key(|id| live[id]).copied();
                assert_eq!(queue.highest(), highest);
            }
        }
        assert!(next > 1000, "the test grew the tree several times");
        if first_highest > 0 {
            assert!(ranks > 50, "only {ranks} ranks taken on the bitmap");
        }
    }

    /// For a wake or a sleep: no slot (the search), the task's own slot
    /// (dead or alive), or a slot of another task, or one never handed out.
    fn slot_hint(rng: &mut SimRng, slots: &BTreeMap<TaskId, usize>, id: TaskId) -> Option<usize> {
        match rng.below(4) {
            0 => None,
            1 => Some(rng.below(slots.len() as u64 + 2) as usize),
            _ => Some(slots.get(&id).copied().unwrap_or(usize::MAX)),
        }
    }
}
