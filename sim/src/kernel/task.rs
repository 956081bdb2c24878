//! A task of the simulated kernel: a kernel thread, a work item or a
//! scenario process, each one a future the executor polls.
//!
//! Models: the per-task flags the engine can see (`PF_MEMALLOC_NOIO`, a
//! pending SIGKILL, `current->bio_list`) and the waker that puts a task
//! back on the run queue.
//!
//! Fault model: none injected here. A task can die of a panic (see
//! `exec.rs`); it then leaves every index with its locks held.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use blksnap_core::kernel::{Bio, BioResult, Completer, LocalBoxFuture, TaskName};

pub type TaskId = u64;

pub(crate) struct Task {
    /// Formatted only where it is read (messages, listings, a full run's
    /// trace): most runs never read it.
    pub(crate) name: TaskName,
    pub(crate) future: Option<LocalBoxFuture<'static, ()>>,
    /// `memalloc_noio` in effect (a kthread with PF_MEMALLOC_NOIO, or a scope).
    pub(crate) noio: bool,
    pub(crate) bio_list: Option<Vec<(Bio, Completer<BioResult>)>>,
    pub(crate) fatal_signal: bool,
    /// Scenario processes; the run ends when all of them are done.
    pub(crate) is_process: bool,
    /// Made once: a poll clones it (a reference count), never allocates.
    pub(crate) waker: Waker,
}

/// Tasks woken since the executor last looked, each with its run-queue
/// slot (`NO_SLOT` if the waker does not know it), in wake order.
/// Atomics and a `Mutex` only because `Waker` must be `Send + Sync`: the
/// sim has one thread, so plain loads and stores are enough.
///
/// Most drains find one task: the first one woken is kept in `first_*`
/// with no lock, and only the ones after it go to the locked `later`.
pub(crate) struct WakeQueue {
    first_id: AtomicU64,
    first_slot: AtomicUsize,
    /// Set while `first_*` holds a task.
    has_first: AtomicBool,
    /// Tasks woken after the first, in order.
    later: Mutex<Vec<(TaskId, usize)>>,
    /// Set while `later` may hold a task (else `drain` takes no lock).
    /// Never without `has_first`: a wake fills `first_*` before `later`,
    /// and `drain` empties both, so `has_first` says whether the queue
    /// holds any task.
    has_later: AtomicBool,
}

impl WakeQueue {
    pub(crate) fn new() -> WakeQueue {
        WakeQueue {
            first_id: AtomicU64::new(0),
            first_slot: AtomicUsize::new(NO_SLOT),
            has_first: AtomicBool::new(false),
            later: Mutex::new(Vec::new()),
            has_later: AtomicBool::new(false),
        }
    }

    pub(crate) fn push(&self, id: TaskId, slot: usize) {
        if !self.has_first.load(Ordering::Acquire) {
            self.first_id.store(id, Ordering::Relaxed);
            self.first_slot.store(slot, Ordering::Relaxed);
            self.has_first.store(true, Ordering::Release);
        } else if let Ok(mut later) = self.later.lock() {
            later.push((id, slot));
            self.has_later.store(true, Ordering::Release);
        }
    }

    /// Whether a task may have been woken since the last `drain`.
    pub(crate) fn may_hold(&self) -> bool {
        // The executor looks twice per poll and mostly finds none.
        self.has_first.load(Ordering::Acquire)
    }

    /// The woken tasks, in wake order, handed to `f` (which wakes no
    /// task); the queue keeps its buffer.
    pub(crate) fn drain(&self, mut f: impl FnMut(TaskId, usize)) {
        // A load, then a store: with one thread nothing comes between, and
        // each `swap` was a locked exchange (some 20 cycles, per write).
        if self.has_first.load(Ordering::Acquire) {
            self.has_first.store(false, Ordering::Release);
            let id = self.first_id.load(Ordering::Relaxed);
            f(id, self.first_slot.load(Ordering::Relaxed));
        }
        if self.has_later.load(Ordering::Acquire) {
            self.has_later.store(false, Ordering::Release);
            if let Ok(mut later) = self.later.lock() {
                later.drain(..).for_each(|(id, slot)| f(id, slot));
            }
        }
    }
}

/// A slot no task has: the run queue searches for the task instead.
pub(crate) const NO_SLOT: usize = usize::MAX;

pub(crate) struct TaskWaker {
    pub(crate) id: TaskId,
    /// The task's run-queue slot: a wake needs no search for it.
    pub(crate) slot: usize,
    pub(crate) queue: Arc<WakeQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.push(self.id, self.slot);
    }
}

/// The live tasks: a slab (a slot freed by an exit is reused) with an
/// index by id. The running task is reached by its slot (`at_mut`), with
/// no search: the engine asks for `current` several times a poll (noio
/// scopes, `current->bio_list`, SIGKILL), and a map keyed by id searched
/// each time. Listings go through the index, in id order, as the map did.
#[derive(Default)]
pub(crate) struct TaskTable {
    slab: Vec<Option<(TaskId, Task)>>,
    free: Vec<usize>,
    index: BTreeMap<TaskId, usize>,
}

impl TaskTable {
    pub(crate) fn insert(&mut self, id: TaskId, task: Task) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot] = Some((id, task));
                slot
            }
            None => {
                self.slab.push(Some((id, task)));
                self.slab.len() - 1
            }
        };
        self.index.insert(id, slot);
    }

    /// The slot of a live task.
    pub(crate) fn slot_of(&self, id: TaskId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    /// Task `id` if it is the one in `slot` (a slot outlives its task and
    /// may hold a newer one: the id says which).
    pub(crate) fn at_mut(&mut self, slot: usize, id: TaskId) -> Option<&mut Task> {
        match self.slab.get_mut(slot) {
            Some(Some((held, task))) if *held == id => Some(task),
            _ => None,
        }
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<&Task> {
        let slot = self.slot_of(id)?;
        self.slab[slot].as_ref().map(|(_, task)| task)
    }

    pub(crate) fn get_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        let slot = self.slot_of(id)?;
        self.at_mut(slot, id)
    }

    pub(crate) fn remove(&mut self, id: TaskId) -> Option<Task> {
        let slot = self.index.remove(&id)?;
        self.free.push(slot);
        self.slab[slot].take().map(|(_, task)| task)
    }

    /// Ids of the live tasks, ascending.
    pub(crate) fn ids(&self) -> Vec<TaskId> {
        self.index.keys().copied().collect()
    }

    /// The live tasks by id, ascending.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Task> {
        self.index
            .values()
            .filter_map(|&slot| self.slab[slot].as_ref().map(|(_, task)| task))
    }

    /// Every task, out of the table, by id.
    pub(crate) fn take_all(&mut self) -> BTreeMap<TaskId, Task> {
        let mut slab = std::mem::take(&mut self.slab);
        self.free.clear();
        std::mem::take(&mut self.index)
            .into_iter()
            .filter_map(|(id, slot)| slab[slot].take().map(|(_, task)| (id, task)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &'static str) -> Task {
        Task {
            name: name.into(),
            future: None,
            noio: false,
            bio_list: None,
            fatal_signal: false,
            is_process: false,
            waker: Waker::from(Arc::new(TaskWaker {
                id: 0,
                slot: NO_SLOT,
                queue: Arc::new(WakeQueue::new()),
            })),
        }
    }

    /// Wakes come out in wake order, the first one (no lock) before the
    /// later ones, and a drained queue starts over with a first one.
    #[test]
    fn wakes_drain_in_order() {
        let queue = WakeQueue::new();
        let mut out = Vec::new();
        queue.drain(|id, slot| out.push((id, slot)));
        assert!(out.is_empty() && !queue.may_hold());
        for round in 0..3u64 {
            for i in 0..round + 1 {
                queue.push(10 * round + i, i as usize);
            }
            assert!(queue.may_hold());
            queue.drain(|id, slot| out.push((id, slot)));
            assert!(!queue.may_hold());
        }
        assert_eq!(out, [(0, 0), (10, 0), (11, 1), (20, 0), (21, 1), (22, 2)]);
    }

    /// A freed slot is reused by a newer task: the old id no longer finds
    /// it through the slot, listings stay in id order, and `take_all`
    /// hands every task over by id.
    #[test]
    fn slots_are_reused_and_checked_by_id() {
        let mut table = TaskTable::default();
        for (id, name) in [(3, "a"), (5, "b"), (9, "c")] {
            table.insert(id, task(name));
        }
        let slot_b = table.slot_of(5).unwrap();
        let removed = table.remove(5).map(|t| t.name.to_string());
        assert_eq!(removed, Some("b".to_string()));
        assert!(table.remove(5).is_none());
        table.insert(12, task("d"));
        assert_eq!(table.slot_of(12), Some(slot_b), "the freed slot");
        assert!(table.at_mut(slot_b, 5).is_none(), "the old id");
        assert_eq!(
            table.at_mut(slot_b, 12).map(|t| t.name.to_string()),
            Some("d".into())
        );
        assert!(table.get(5).is_none() && table.get_mut(5).is_none());
        assert!(table.at_mut(usize::MAX, 12).is_none());
        let names: Vec<String> = table.values().map(|t| t.name.to_string()).collect();
        assert_eq!(names, ["a", "c", "d"]);
        assert_eq!(table.ids(), [3, 9, 12]);
        let all: Vec<(TaskId, String)> = table
            .take_all()
            .into_iter()
            .map(|(id, t)| (id, t.name.to_string()))
            .collect();
        assert_eq!(all, [(3, "a".into()), (9, "c".into()), (12, "d".into())]);
        assert!(table.values().next().is_none() && table.get(3).is_none());
    }
}
