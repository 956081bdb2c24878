//! Lock-order checking, lockdep style, and who holds what.
//!
//! Each lock belongs to a class (its name). When a task that holds class A
//! starts waiting for class B, the edge A -> B is recorded; an edge that
//! closes a cycle is an inversion and fails the run, even if this seed did
//! not deadlock. The chunk lock is a semaphore released by another task,
//! so it is tracked for "who holds it" but not for ordering, as in Linux.

use std::collections::{BTreeMap, BTreeSet};

use blksnap_core::kernel::{LockId, LockMode, LockOp};

use crate::kernel::TaskId;

/// Classes whose release may come from another task.
const CROSS_RELEASE: &[&str] = &["chunk.lock"];
/// Locks on the IO path: a GFP_KERNEL allocation under them may deadlock.
const IO_PATH: &[&str] = &["tracker_submit_lock", "chunk.lock"];

#[derive(Default)]
pub struct Lockdep {
    next_id: u64,
    /// Locks each task holds, in acquisition order.
    held: BTreeMap<TaskId, Vec<(LockId, &'static str, LockMode)>>,
    /// Ordering edges between classes.
    edges: BTreeMap<&'static str, BTreeSet<&'static str>>,
    /// Holders of cross-release locks, by lock.
    cross_holders: BTreeMap<LockId, TaskId>,
    reported: BTreeSet<(&'static str, &'static str)>,
    /// Tasks waiting for a lock.
    pub waiting: BTreeMap<TaskId, (&'static str, LockMode)>,
}

impl Lockdep {
    pub fn new_lock(&mut self, _class: &'static str) -> LockId {
        self.next_id += 1;
        LockId(self.next_id)
    }

    /// One lock event of a task; Some(report) on an order inversion.
    pub fn event(
        &mut self,
        task: TaskId,
        id: LockId,
        class: &'static str,
        op: LockOp,
        mode: LockMode,
    ) -> Option<String> {
        match op {
            LockOp::Acquire => return self.check_order(task, class),
            LockOp::Contended => {
                self.waiting.insert(task, (class, mode));
            }
            LockOp::Abandoned => {
                self.waiting.remove(&task);
            }
            LockOp::Acquired => {
                self.waiting.remove(&task);
                self.held.entry(task).or_default().push((id, class, mode));
                if CROSS_RELEASE.contains(&class) {
                    self.cross_holders.insert(id, task);
                }
            }
            LockOp::Release => self.release(task, id, class),
        }
        None
    }

    fn release(&mut self, task: TaskId, id: LockId, class: &'static str) {
        let owner = if CROSS_RELEASE.contains(&class) {
            self.cross_holders.remove(&id).unwrap_or(task)
        } else {
            task
        };
        if let Some(list) = self.held.get_mut(&owner) {
            if let Some(i) = list.iter().rposition(|(l, _, _)| *l == id) {
                list.remove(i);
            }
        }
    }

    fn check_order(&mut self, task: TaskId, class: &'static str) -> Option<String> {
        if CROSS_RELEASE.contains(&class) {
            return None;
        }
        let held: Vec<&'static str> = self
            .held
            .get(&task)
            .map(|l| l.iter().map(|(_, c, _)| *c).collect())
            .unwrap_or_default();
        let mut report = None;
        for before in held {
            if before == class || CROSS_RELEASE.contains(&before) {
                continue;
            }
            if self.reaches(class, before) && self.reported.insert((before, class)) {
                report = Some(format!(
                    "possible circular locking: {before} -> {class}, but {class} -> ... -> {before} was seen"
                ));
            }
            self.edges.entry(before).or_default().insert(class);
        }
        report
    }

    /// Is there a path of recorded edges from `from` to `to`?
    fn reaches(&self, from: &'static str, to: &'static str) -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(c) = stack.pop() {
            if c == to {
                return true;
            }
            if seen.insert(c) {
                if let Some(next) = self.edges.get(c) {
                    stack.extend(next.iter().copied());
                }
            }
        }
        false
    }

    /// An IO-path lock the task holds, if any. A cross-release lock (the
    /// chunk semaphore) belongs to the IO in flight, not to the task that
    /// took it, so it does not count, as lockdep does not track it.
    pub fn io_locks_held(&self, task: TaskId) -> Option<&'static str> {
        self.held
            .get(&task)?
            .iter()
            .map(|(_, c, _)| *c)
            .find(|c| IO_PATH.contains(c) && !CROSS_RELEASE.contains(c))
    }

    /// Locks still held, as "task holds class" lines.
    pub fn held_report(&self) -> Vec<(TaskId, &'static str)> {
        self.held
            .iter()
            .flat_map(|(t, l)| l.iter().map(move |(_, c, _)| (*t, *c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(l: &mut Lockdep, t: TaskId, id: u64, c: &'static str) -> Option<String> {
        let r = l.event(t, LockId(id), c, LockOp::Acquire, LockMode::Write);
        l.event(t, LockId(id), c, LockOp::Acquired, LockMode::Write);
        r
    }

    #[test]
    fn inversion_is_reported_once() {
        let mut l = Lockdep::default();
        assert!(take(&mut l, 1, 1, "a").is_none());
        assert!(take(&mut l, 1, 2, "b").is_none());
        l.event(1, LockId(2), "b", LockOp::Release, LockMode::Write);
        l.event(1, LockId(1), "a", LockOp::Release, LockMode::Write);
        assert!(take(&mut l, 2, 2, "b").is_none());
        assert!(take(&mut l, 2, 1, "a").is_some());
        assert!(l.held_report().len() == 2);
    }

    #[test]
    fn cross_release_is_tracked_by_owner() {
        let mut l = Lockdep::default();
        take(&mut l, 1, 9, "chunk.lock");
        assert_eq!(l.held_report(), vec![(1, "chunk.lock")]);
        assert_eq!(l.io_locks_held(1), None);
        l.event(2, LockId(9), "chunk.lock", LockOp::Release, LockMode::Write);
        assert!(l.held_report().is_empty());
        take(&mut l, 1, 3, "tracker_submit_lock");
        assert_eq!(l.io_locks_held(1), Some("tracker_submit_lock"));
    }
}
