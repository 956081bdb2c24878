//! Lock-order checking, lockdep style, and who holds what.
//!
//! Each lock belongs to a class (its name). When a task that holds class A
//! starts waiting for class B, the edge A -> B is recorded; an edge that
//! closes a cycle is an inversion and fails the run, even if this seed did
//! not deadlock. The chunk lock is a semaphore released by another task,
//! so it is tracked for "who holds it" but not for ordering, as in Linux.
//!
//! The noio rule for such a lock: who holds it changes hands (the task
//! that took it submits IO; a work item spawned for that IO finishes the
//! job and releases it), so a may-IO allocation under it is judged when
//! the lock is released, when the hand-off is known. A task surely held
//! the lock at its allocation if it took the lock and either released it
//! itself or allocated before anything new existed (no task, no timer, so
//! no work item and no IO to hand the lock to: the marks are equal); or
//! if it released the lock and was spawned after the lock was taken (a
//! task made to finish that lock's work). Any other case is not judged:
//! it may come after a hand-off (a REQ_NOWAIT writer that started a COW
//! and returned still "holds" the lock its COW workers will release).

use std::collections::{BTreeMap, BTreeSet};

use blksnap_core::kernel::{LockId, LockMode, LockOp};

use crate::kernel::task::TaskId;

/// Classes whose release may come from another task.
const CROSS_RELEASE: &[&str] = &["chunk.lock"];
/// Locks on the IO path: a GFP_KERNEL allocation under them may deadlock.
const IO_PATH: &[&str] = &["tracker_submit_lock", "chunk.lock"];

/// A lock's id carries its class's two properties, found once when the
/// lock is made (`new_lock`), as Linux's `lockdep_map` caches its class:
/// an event tests a bit where it compared the class name with each name
/// of the lists above (a lock's class never changes). The counter keeps
/// the low bits, so ids stay unique and equal only for the same lock.
const CROSS_BIT: u64 = 1 << 63;
const IO_PATH_BIT: u64 = 1 << 62;

/// The property bits of a lock of `class`.
fn class_bits(class: &'static str) -> u64 {
    let cross = if CROSS_RELEASE.contains(&class) {
        CROSS_BIT
    } else {
        0
    };
    let io_path = if IO_PATH.contains(&class) {
        IO_PATH_BIT
    } else {
        0
    };
    cross | io_path
}

/// A lock of a cross-release class (its release may come from another task).
#[inline(always)]
fn is_cross(id: LockId) -> bool {
    id.0 & CROSS_BIT != 0
}

/// A lock on the IO path.
fn is_io_path(id: LockId) -> bool {
    id.0 & IO_PATH_BIT != 0
}

/// One hold of a lock: who took it, and at which mark. The may-IO
/// allocations that may have been made under a cross-release one are kept
/// apart (`Lockdep::suspects`), as few locks have any: an entry is a few
/// plain words, pushed and popped for nothing on each lock taken.
#[derive(Clone, Copy)]
struct Held {
    task: TaskId,
    id: LockId,
    class: &'static str,
    /// The sim's id counter when it was taken.
    mark: u64,
    /// The hold a cross-release lock's release is judged by: its latest.
    /// A cross-release lock taken again before a release seen here (one
    /// made with no task current reaches no one) passes it on, and the
    /// older hold's suspects are dropped, as a map keyed by lock did.
    cross: bool,
}

/// A GFP_KERNEL allocation outside a noio scope while a cross-release lock
/// was held by someone.
struct Suspect {
    task: TaskId,
    /// The sim's id counter at the allocation.
    mark: u64,
    what: String,
}

/// A class name's address and length: two names that are equal as keys
/// are the same text (the converse may fail, which only costs a cache miss).
type NameKey = (usize, usize);

fn name_key(name: &'static str) -> NameKey {
    (name.as_ptr() as usize, name.len())
}

/// The key of an ordered pair of classes in the `judged` cache.
fn pair(before: &'static str, class: &'static str) -> (NameKey, NameKey) {
    (name_key(before), name_key(class))
}

#[derive(Default)]
pub struct Lockdep {
    next_id: u64,
    /// Every lock held now, of every task, in the order taken (Linux keeps
    /// `held_locks` in each task; here one list serves all, a task's holds
    /// in their order). A few at a time, so a scan from the end finds a
    /// task's holds, and taking an uncontended lock and releasing it is a
    /// push and a pop that keep the buffer. Task ids share the counter
    /// with timers and reach 10^5, so no table is indexed by task.
    held: Vec<Held>,
    /// Ordering edges between classes.
    edges: BTreeMap<&'static str, BTreeSet<&'static str>>,
    /// The suspects of each held cross-release lock that has some, in the
    /// order they came; empty nearly always, so a release checks only that.
    suspects: Vec<(LockId, Vec<Suspect>)>,
    /// The sim's id counter now: task ids above it are created later.
    pub mark: u64,
    /// Reports of the noio rule, for the `memalloc_noio` checker.
    noio_reports: Vec<String>,
    reported: BTreeSet<(&'static str, &'static str)>,
    /// Tasks waiting for a lock.
    pub waiting: BTreeMap<TaskId, (&'static str, LockMode)>,
    /// Ordered pairs (held, wanted) already judged against the current
    /// edges: judging one again would find the same path, report nothing
    /// new and add no edge, so it is skipped. Cleared when an edge is new.
    /// Keyed by the names' addresses: a cache needs no string compares,
    /// and a class whose name lives at two addresses is only judged again.
    /// Looked up, never iterated: address order must not reach the trace.
    judged: BTreeSet<(NameKey, NameKey)>,
}

impl Lockdep {
    /// A new lock of `class`: its id, with the class's property bits.
    pub fn new_lock(&mut self, class: &'static str) -> LockId {
        self.next_id += 1;
        LockId(self.next_id | class_bits(class))
    }

    /// `Taken` when it surely reports nothing: nobody waits (so none
    /// stops waiting), and the lock is cross-release or the task holds no
    /// lock (no order to judge). Then the lock is held and true; else
    /// nothing changed and false (`event` takes it).
    #[inline(always)]
    fn taken_quietly(&mut self, task: TaskId, id: LockId, class: &'static str) -> bool {
        let quiet = self.waiting.is_empty() && (is_cross(id) || !self.holds_any(task));
        if quiet {
            self.acquired(task, id, class);
        }
        quiet
    }

    /// `Release` when it surely reports nothing: a lock that is not
    /// cross-release (only those have suspects to judge), or one whose
    /// hold has no suspects. Then it is released and true; else nothing
    /// changed and false (`event` takes it).
    #[inline(always)]
    fn released_quietly(&mut self, task: TaskId, id: LockId) -> bool {
        let quiet = self.suspects.is_empty() || !is_cross(id);
        if quiet {
            self.release(task, id);
        }
        quiet
    }

    /// An event that surely reports nothing, handled in place: an
    /// uncontended take or a release (`taken_quietly`,
    /// `released_quietly`). False if it was not one: `event` takes it.
    #[inline(always)]
    pub fn quiet_event(
        &mut self,
        task: TaskId,
        id: LockId,
        class: &'static str,
        op: LockOp,
    ) -> bool {
        match op {
            LockOp::Taken => self.taken_quietly(task, id, class),
            LockOp::Release => self.released_quietly(task, id),
            _ => false,
        }
    }

    /// One lock event of a task; Some(report) on an order inversion.
    /// Inlined into `lock_event`: each op's common case is a few compares
    /// and stores, cheaper than a call that saves six registers and
    /// dispatches through a jump table; the rare work is out of line.
    #[inline(always)]
    pub fn event(
        &mut self,
        task: TaskId,
        id: LockId,
        class: &'static str,
        op: LockOp,
        mode: LockMode,
    ) -> Option<String> {
        match op {
            LockOp::Acquire => return self.check_order(task, id, class),
            LockOp::Contended => self.start_waiting(task, class, mode),
            LockOp::Abandoned => self.stop_waiting(task),
            LockOp::Acquired => self.acquired(task, id, class),
            // The pair with nothing between: the order is judged against
            // the locks held before this one, then it is held.
            LockOp::Taken => {
                let report = self.check_order(task, id, class);
                self.acquired(task, id, class);
                return report;
            }
            LockOp::Release => self.release(task, id),
        }
        None
    }

    /// The task holds the lock now.
    #[inline(always)]
    fn acquired(&mut self, task: TaskId, id: LockId, class: &'static str) {
        self.stop_waiting(task);
        let cross = is_cross(id);
        if cross {
            self.retire_cross(id);
        }
        self.held.push(Held {
            task,
            id,
            class,
            mark: self.mark,
            cross,
        });
    }

    /// The task waits for a lock. Rare, so kept out of `event`'s body.
    #[inline(never)]
    fn start_waiting(&mut self, task: TaskId, class: &'static str, mode: LockMode) {
        self.waiting.insert(task, (class, mode));
    }

    /// The task no longer waits. Waiting is rare (only contended locks),
    /// so the map is nearly always empty and the lookup is skipped; the
    /// test is inlined into every take (it stayed a call, some 16
    /// instructions, three times per write), the removal is not.
    #[inline(always)]
    fn stop_waiting(&mut self, task: TaskId) {
        if !self.waiting.is_empty() {
            self.forget_waiting(task);
        }
    }

    #[inline(never)]
    fn forget_waiting(&mut self, task: TaskId) {
        self.waiting.remove(&task);
    }

    /// The hold a release of cross-release lock `id` is judged by, if any.
    #[inline(always)]
    fn cross_hold(&self, id: LockId) -> Option<usize> {
        self.held.iter().rposition(|h| h.cross && h.id == id)
    }

    /// Cross-release lock `id` is taken: an older hold of it (its release
    /// was not seen) no longer counts, and its suspects go with it.
    #[inline(always)]
    fn retire_cross(&mut self, id: LockId) {
        if let Some(at) = self.cross_hold(id) {
            self.held[at].cross = false;
            if !self.suspects.is_empty() {
                self.take_suspects(id);
            }
        }
    }

    /// The lock's suspects, taken out of `suspects`; empty if it has none.
    #[inline(never)]
    fn take_suspects(&mut self, id: LockId) -> Vec<Suspect> {
        match self.suspects.iter().position(|(l, _)| *l == id) {
            Some(i) => self.suspects.swap_remove(i).1,
            None => Vec::new(),
        }
    }

    /// Judges the released lock's suspects, if it has any. Rare: out of
    /// line, so the common release stays small.
    #[inline(never)]
    fn judge_suspects(&mut self, held: &Held, releaser: TaskId) {
        let suspects = self.take_suspects(held.id);
        self.judge_cross_release(held, &suspects, releaser);
    }

    /// The task's latest hold of `id`, if it has one.
    #[inline(always)]
    fn latest(&self, task: TaskId, id: LockId) -> Option<usize> {
        self.held.iter().rposition(|h| h.task == task && h.id == id)
    }

    /// A cross-release lock's release drops the hold it is judged by
    /// (whoever took it) and judges its suspects; any other release (or
    /// one with no such hold) drops the releaser's latest hold of it.
    #[inline(always)]
    fn release(&mut self, task: TaskId, id: LockId) {
        let at = match self.cross_hold_of(id) {
            Some(at) => {
                if !self.suspects.is_empty() {
                    let held = self.held[at];
                    self.judge_suspects(&held, task);
                }
                Some(at)
            }
            None => self.latest(task, id),
        };
        match at {
            // Locks are mostly released in reverse order: no shift.
            Some(at) if at + 1 == self.held.len() => {
                self.held.pop();
            }
            Some(at) => {
                self.held.remove(at);
            }
            None => {}
        }
    }

    /// `cross_hold`, for a cross-release lock only: any other release
    /// skips the scan (only such a lock has a hold marked `cross`).
    #[inline(always)]
    fn cross_hold_of(&self, id: LockId) -> Option<usize> {
        if is_cross(id) {
            self.cross_hold(id)
        } else {
            None
        }
    }

    /// Whether the task holds a lock.
    #[inline(always)]
    fn holds_any(&self, task: TaskId) -> bool {
        self.held.iter().any(|h| h.task == task)
    }

    /// The task's holds, in the order taken.
    fn holds_of(&self, task: TaskId) -> impl Iterator<Item = &Held> {
        self.held.iter().filter(move |h| h.task == task)
    }

    /// The uncontended common case first: a cross-release class, or a
    /// task that holds no lock, orders nothing (no edge, no report).
    #[inline(always)]
    fn check_order(&mut self, task: TaskId, id: LockId, class: &'static str) -> Option<String> {
        if is_cross(id) || !self.holds_any(task) {
            return None;
        }
        self.check_held_order(task, class)
    }

    /// The task holds locks: judge `class` after those not judged before it.
    #[inline(never)]
    fn check_held_order(&mut self, task: TaskId, class: &'static str) -> Option<String> {
        if self.all_judged(task, class) {
            return None;
        }
        self.judge_order(task, class)
    }

    /// Judges `class` after each lock the task holds that was not judged
    /// before it: rare once a run has seen its lock orders, so kept out
    /// of `event`'s body (its registers and stack cost every event).
    #[inline(never)]
    fn judge_order(&mut self, task: TaskId, class: &'static str) -> Option<String> {
        let held: Vec<Held> = self.holds_of(task).copied().collect();
        let mut report = None;
        for before in held {
            if Self::unordered(&before, class) || self.judged.contains(&pair(before.class, class)) {
                continue;
            }
            let before = before.class;
            if self.reaches(class, before) && self.reported.insert((before, class)) {
                report = Some(format!(
                    "possible circular locking: {before} -> {class}, but {class} -> ... -> {before} was seen"
                ));
            }
            if self.edges.entry(before).or_default().insert(class) {
                self.judged.clear();
            }
            // The new edge leaves from `before`, so it cannot lie on a
            // path from `class` back to `before`: this verdict still holds.
            self.judged.insert(pair(before, class));
        }
        report
    }

    /// A pair lockdep does not order: the same class, or a cross-release
    /// one held.
    fn unordered(before: &Held, class: &'static str) -> bool {
        before.class == class || is_cross(before.id)
    }

    /// Whether every lock the task holds was already judged before `class`
    /// (the usual case once a run has seen its lock orders): no allocation.
    fn all_judged(&self, task: TaskId, class: &'static str) -> bool {
        self.holds_of(task).all(|before| {
            Self::unordered(before, class) || self.judged.contains(&pair(before.class, class))
        })
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
        self.holds_of(task)
            .find(|h| is_io_path(h.id) && !is_cross(h.id))
            .map(|h| h.class)
    }

    /// Whether any cross-release lock is held: else no allocation can be
    /// a suspect, and its description need not be built.
    pub fn cross_held(&self) -> bool {
        self.held.iter().any(|h| h.cross)
    }

    /// A GFP_KERNEL allocation outside a noio scope by `task`: kept as a
    /// suspect under each cross-release lock the task may hold.
    pub fn may_io_allocation(&mut self, task: TaskId, what: String) {
        let mark = self.mark;
        for held in self.held.iter().filter(|h| h.cross) {
            if held.task == task || task > held.mark {
                let suspect = Suspect {
                    task,
                    mark,
                    what: what.clone(),
                };
                match self.suspects.iter_mut().find(|(l, _)| *l == held.id) {
                    Some((_, list)) => list.push(suspect),
                    None => self.suspects.push((held.id, vec![suspect])),
                }
            }
        }
    }

    /// The lock `held` is released by `releaser`: report each suspect that
    /// surely allocated while holding it. Rare: not in `event`'s body.
    #[inline(never)]
    fn judge_cross_release(&mut self, held: &Held, suspects: &[Suspect], releaser: TaskId) {
        for suspect in suspects {
            let by_taker =
                suspect.task == held.task && (releaser == held.task || suspect.mark == held.mark);
            let by_releaser =
                suspect.task == releaser && releaser != held.task && releaser > held.mark;
            if by_taker || by_releaser {
                self.noio_reports.push(format!(
                    "{} while holding {} (taken by task #{}, released by task #{}) outside a noio scope",
                    suspect.what, held.class, held.task, releaser
                ));
            }
        }
    }

    /// Reports of the noio rule since the last call.
    pub fn take_noio_reports(&mut self) -> Vec<String> {
        std::mem::take(&mut self.noio_reports)
    }

    /// Whether there are reports of the noio rule to take (rarely).
    pub fn has_noio_reports(&self) -> bool {
        !self.noio_reports.is_empty()
    }

    /// Locks still held, as "task holds class" lines: by task (ascending),
    /// then in the order taken (the sort is stable).
    pub fn held_report(&self) -> Vec<(TaskId, &'static str)> {
        let mut held: Vec<(TaskId, &'static str)> =
            self.held.iter().map(|h| (h.task, h.class)).collect();
        held.sort_by_key(|(task, _)| *task);
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id `new_lock` gives the `n`th lock if its class is `class`.
    fn lid(n: u64, class: &'static str) -> LockId {
        LockId(n | class_bits(class))
    }

    fn take(l: &mut Lockdep, t: TaskId, id: u64, c: &'static str) -> Option<String> {
        let r = l.event(t, lid(id, c), c, LockOp::Acquire, LockMode::Write);
        l.event(t, lid(id, c), c, LockOp::Acquired, LockMode::Write);
        r
    }

    #[test]
    fn inversion_is_reported_once() {
        let mut l = Lockdep::default();
        assert!(take(&mut l, 1, 1, "a").is_none());
        assert!(take(&mut l, 1, 2, "b").is_none());
        l.event(1, lid(2, "b"), "b", LockOp::Release, LockMode::Write);
        l.event(1, lid(1, "a"), "a", LockOp::Release, LockMode::Write);
        assert!(take(&mut l, 2, 2, "b").is_none());
        assert!(take(&mut l, 2, 1, "a").is_some());
        assert!(l.held_report().len() == 2);
    }

    /// A judged pair is judged again once a new edge may close a cycle
    /// through it, and each inversion is still reported once.
    #[test]
    fn judged_pairs_are_judged_again_after_a_new_edge() {
        fn hold(l: &mut Lockdep, t: TaskId, pair: [(u64, &'static str); 2]) -> Option<String> {
            let first = take(l, t, pair[0].0, pair[0].1);
            let second = take(l, t, pair[1].0, pair[1].1);
            l.event(
                t,
                lid(pair[1].0, pair[1].1),
                pair[1].1,
                LockOp::Release,
                LockMode::Write,
            );
            l.event(
                t,
                lid(pair[0].0, pair[0].1),
                pair[0].1,
                LockOp::Release,
                LockMode::Write,
            );
            first.or(second)
        }
        let mut l = Lockdep::default();
        assert!(hold(&mut l, 1, [(1, "a"), (2, "b")]).is_none());
        assert!(hold(&mut l, 1, [(1, "a"), (2, "b")]).is_none(), "judged");
        assert!(hold(&mut l, 2, [(2, "b"), (3, "c")]).is_none());
        // c -> a closes a -> b -> c -> a: found although a -> b was judged.
        let report = hold(&mut l, 3, [(3, "c"), (1, "a")]).expect("inversion");
        assert!(report.contains("c -> a"), "{report}");
        assert!(hold(&mut l, 3, [(3, "c"), (1, "a")]).is_none(), "once");
        let again = hold(&mut l, 1, [(1, "a"), (2, "b")]);
        assert!(
            again.unwrap().contains("a -> b"),
            "a -> b now closes a cycle too"
        );
        assert!(hold(&mut l, 1, [(1, "a"), (2, "b")]).is_none(), "once");
    }

    /// `held_report` lists tasks by id and each task's locks in the order
    /// taken, however tasks came and went and locks were released.
    #[test]
    fn held_locks_are_listed_by_task_then_order_taken() {
        let mut l = Lockdep::default();
        take(&mut l, 9, 1, "a");
        take(&mut l, 3, 2, "b");
        take(&mut l, 9, 3, "c");
        take(&mut l, 9, 4, "d");
        take(&mut l, 5, 5, "e");
        // Not the last taken: the others keep their order.
        l.event(9, lid(3, "c"), "c", LockOp::Release, LockMode::Write);
        assert_eq!(
            l.held_report(),
            vec![(3, "b"), (5, "e"), (9, "a"), (9, "d")]
        );
        // Task 3 leaves the table, then comes back with a reused list.
        l.event(3, lid(2, "b"), "b", LockOp::Release, LockMode::Write);
        assert_eq!(l.io_locks_held(3), None);
        take(&mut l, 7, 6, "tracker_submit_lock");
        take(&mut l, 3, 7, "f");
        assert_eq!(
            l.held_report(),
            vec![
                (3, "f"),
                (5, "e"),
                (7, "tracker_submit_lock"),
                (9, "a"),
                (9, "d")
            ]
        );
        assert_eq!(l.io_locks_held(7), Some("tracker_submit_lock"));
        // A release of a lock the task does not hold changes nothing.
        l.event(5, lid(4, "d"), "d", LockOp::Release, LockMode::Write);
        assert_eq!(l.held_report().len(), 5);
    }

    /// `Taken` is the `Acquire`/`Acquired` pair: the same reports, the
    /// same held locks and the same noio verdicts, through an inversion,
    /// a lock held by a task that waited, and a cross-release hand-off.
    #[test]
    fn taken_is_the_acquire_acquired_pair() {
        fn script(taken: bool) -> Vec<String> {
            let mut l = Lockdep {
                mark: 5,
                ..Lockdep::default()
            };
            let mut out = Vec::new();
            let mut take = |l: &mut Lockdep, t: TaskId, id: u64, c: &'static str| {
                let r = if taken {
                    l.event(t, lid(id, c), c, LockOp::Taken, LockMode::Write)
                } else {
                    let r = l.event(t, lid(id, c), c, LockOp::Acquire, LockMode::Write);
                    l.event(t, lid(id, c), c, LockOp::Acquired, LockMode::Write);
                    r
                };
                out.push(format!("{t} {c}: {r:?} {:?}", l.held_report()));
            };
            take(&mut l, 1, 1, "a");
            take(&mut l, 1, 2, "b");
            l.event(1, lid(2, "b"), "b", LockOp::Release, LockMode::Write);
            l.event(1, lid(1, "a"), "a", LockOp::Release, LockMode::Write);
            l.event(2, lid(3, "c"), "c", LockOp::Contended, LockMode::Write);
            take(&mut l, 2, 2, "b");
            take(&mut l, 2, 1, "a");
            take(&mut l, 2, 9, "chunk.lock");
            l.may_io_allocation(2, "z".into());
            release(&mut l, 7, 9);
            take(&mut l, 3, 10, "chunk.lock");
            l.mark = 8;
            l.may_io_allocation(6, "y".into());
            release(&mut l, 6, 10);
            out.extend(l.take_noio_reports());
            out.push(format!("{:?}", l.waiting));
            out
        }
        let pair = script(false);
        assert!(pair.iter().any(|r| r.contains("circular")), "{pair:?}");
        assert!(pair.iter().any(|r| r.contains("while holding")), "{pair:?}");
        assert_eq!(script(true), pair);
    }

    /// The quiet paths (`quiet_event`, then `event` if it declines, as
    /// `lock_event` calls them) judge as `event` alone: the same reports,
    /// held locks, noio verdicts and waiters over a long seeded mix of
    /// events, tasks, cross-release and IO-path locks, and allocations.
    #[test]
    fn quiet_events_judge_as_the_full_path() {
        const CLASSES: [&str; 5] = ["a", "b", "tracker_submit_lock", "chunk.lock", "c"];
        const OPS: [LockOp; 6] = [
            LockOp::Taken,
            LockOp::Release,
            LockOp::Acquire,
            LockOp::Acquired,
            LockOp::Contended,
            LockOp::Abandoned,
        ];
        fn script(quiet: bool) -> Vec<String> {
            let mut l = Lockdep::default();
            let mut out = Vec::new();
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            for step in 0..4000u64 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = state >> 33;
                let task = 1 + r % 4;
                let n = 1 + (r >> 3) % 6;
                let class = CLASSES[(n as usize) % CLASSES.len()];
                let id = lid(n, class);
                l.mark = step / 7;
                if r.is_multiple_of(23) {
                    l.may_io_allocation(task, format!("alloc {step}"));
                    continue;
                }
                // Takes and releases most, as the write path makes them.
                let k = ((r >> 8) % 10) as usize;
                let op = if k < 8 {
                    OPS[k % 2]
                } else {
                    OPS[2 + ((r >> 12) % 4) as usize]
                };
                let handled = quiet && l.quiet_event(task, id, class, op);
                let report = if handled {
                    None
                } else {
                    l.event(task, id, class, op, LockMode::Write)
                };
                out.push(format!(
                    "{step} {report:?} {:?} {:?} {:?} {:?}",
                    l.held_report(),
                    l.take_noio_reports(),
                    l.waiting,
                    l.io_locks_held(task)
                ));
            }
            out
        }
        let full = script(false);
        let all = full.join("\n");
        for seen in ["circular", "while holding", "tracker_submit_lock\")"] {
            assert!(all.contains(seen), "the mix never showed {seen}");
        }
        let quiet = script(true);
        let first = quiet.iter().zip(&full).position(|(q, f)| q != f);
        assert_eq!(first.map(|at| (&quiet[at], &full[at])), None);
        assert_eq!(quiet.len(), full.len());
    }

    #[test]
    fn cross_release_is_tracked_by_owner() {
        let mut l = Lockdep::default();
        take(&mut l, 1, 9, "chunk.lock");
        assert_eq!(l.held_report(), vec![(1, "chunk.lock")]);
        assert_eq!(l.io_locks_held(1), None);
        l.event(
            2,
            lid(9, "chunk.lock"),
            "chunk.lock",
            LockOp::Release,
            LockMode::Write,
        );
        assert!(l.held_report().is_empty());
        take(&mut l, 1, 3, "tracker_submit_lock");
        assert_eq!(l.io_locks_held(1), Some("tracker_submit_lock"));
    }

    fn release(l: &mut Lockdep, t: TaskId, id: u64) {
        l.event(
            t,
            lid(id, "chunk.lock"),
            "chunk.lock",
            LockOp::Release,
            LockMode::Write,
        );
    }

    #[test]
    fn may_io_allocation_by_the_taker_before_any_hand_off_is_reported() {
        // Task 1 takes the lock at mark 5 and allocates with nothing new
        // created; then a work item (id 7) releases it.
        let mut l = Lockdep {
            mark: 5,
            ..Lockdep::default()
        };
        take(&mut l, 1, 9, "chunk.lock");
        l.may_io_allocation(1, "GFP_KERNEL allocation at diff_region".into());
        assert!(l.take_noio_reports().is_empty());
        release(&mut l, 7, 9);
        let reports = l.take_noio_reports();
        assert_eq!(reports.len(), 1);
        assert!(
            reports[0].contains("diff_region while holding chunk.lock"),
            "{reports:?}"
        );
        // The taker releasing it itself: reported too.
        take(&mut l, 1, 10, "chunk.lock");
        l.may_io_allocation(1, "x".into());
        release(&mut l, 1, 10);
        assert_eq!(l.take_noio_reports().len(), 1);
    }

    #[test]
    fn may_io_allocation_by_the_work_item_that_releases_is_reported() {
        let mut l = Lockdep {
            mark: 5,
            ..Lockdep::default()
        };
        take(&mut l, 1, 9, "chunk.lock");
        l.mark = 8;
        // Task 6 was created after the lock was taken and releases it.
        l.may_io_allocation(6, "y".into());
        release(&mut l, 6, 9);
        assert_eq!(l.take_noio_reports().len(), 1);
    }

    #[test]
    fn allocations_after_a_possible_hand_off_are_not_reported() {
        let mut l = Lockdep {
            mark: 5,
            ..Lockdep::default()
        };
        take(&mut l, 1, 9, "chunk.lock");
        l.mark = 6;
        // The taker allocates after task 6 was created, which may have
        // handed the lock on to task 7: the lock may belong to their IO.
        l.may_io_allocation(1, "a".into());
        l.mark = 8;
        // A task older than the lock allocates: it never held it.
        l.may_io_allocation(3, "b".into());
        // A task created later allocates, but does not release it.
        l.may_io_allocation(6, "c".into());
        release(&mut l, 7, 9);
        assert!(l.take_noio_reports().is_empty());
    }
}
