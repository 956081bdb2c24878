//! Power-off: the end of a simulated machine's life, when every object of
//! the run goes away as RAM does when a real machine is switched off.
//!
//! Why it is needed: the sim holds its tasks, timers, filters and image
//! disks, and each of those holds the sim back (`Rc<Sim>` in a future, an
//! engine object's `Rc<dyn Kernel>`). A run that ends with work still
//! alive (a hang, an oops that killed a task with its locks held, a
//! snapshot never destroyed) is a reference cycle that `Rc` never frees,
//! so a sweep or a fuzzer retained every such run whole. Power-off takes
//! those tables apart after the verdict, so it cannot change a digest.
//!
//! Fault model: none. Nothing here is injected or judged; the drops run
//! no engine path (a dropped lock guard releases with no current task, so
//! lockdep is not told), and the trace of a powered-off sim is never read.
//!
//! [`live_sims`] counts the `Sim`s of this thread that are not freed yet:
//! the memory tests assert that it drops back after a run.

use std::cell::Cell;

use blksnap_core::module::Module;

use super::Sim;

thread_local! {
    /// `Sim`s created on this thread and not dropped yet.
    static LIVE_SIMS: Cell<u64> = const { Cell::new(0) };
}

/// How many `Sim`s of this thread are still allocated.
pub fn live_sims() -> u64 {
    LIVE_SIMS.with(Cell::get)
}

/// A `Sim` is born (called by `Sim::new`).
pub(super) fn sim_born() {
    LIVE_SIMS.with(|n| n.set(n.get() + 1));
}

impl Drop for Sim {
    fn drop(&mut self) {
        LIVE_SIMS.with(|n| n.set(n.get() - 1));
    }
}

/// The other cycle a run can leave: a module's snapshot lists hold
/// snapshots that hold the module (and through it the sim). Module exit
/// empties the list, but a run may end before it, and B-SNAP-1's lost
/// snapshots are never freed at all. The host calls this at power-off for
/// each module instance it loaded.
pub fn free_module_globals(module: &Module) {
    let listed = module.snapshots.take();
    let lost = module.lost_snapshots.take();
    drop((listed, lost));
}

/// Dropping one table can, in principle, hand work to another (a lock
/// guard wakes a waiter); a few rounds empty everything.
const MAX_ROUNDS: usize = 8;

impl Sim {
    /// Switch the machine off: drop every task (live or dead of an oops),
    /// timer, filter and image disk, so that nothing the run made keeps
    /// the sim alive. Call it once the verdict is taken; the sim must not
    /// run again. Idempotent.
    pub fn power_off(&self) {
        assert!(
            self.current_task().is_none(),
            "power_off from inside a task"
        );
        for _ in 0..MAX_ROUNDS {
            if self.drop_world() == 0 {
                return;
            }
        }
    }

    /// One round: take each table out of its cell first, so that a drop
    /// that calls back into the sim finds no borrow held. Returns how
    /// many objects it dropped.
    fn drop_world(&self) -> usize {
        let remains = self.sched.take_remains();
        let filters = std::mem::take(&mut *self.blk.filters_mut());
        let disks = std::mem::take(&mut *self.blk.disks.borrow_mut());
        let dropped = remains.tasks.len()
            + remains.zombies.len()
            + remains.timers.len()
            + filters.len()
            + disks.len();
        // Futures first: they hold completions the timers would complete.
        drop(remains.tasks);
        drop(remains.zombies);
        drop(remains.timers);
        drop(filters);
        drop(disks);
        dropped
    }
}
