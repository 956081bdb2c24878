//! `SimKernel`: the engine's view of the sim, the `Kernel` impl. It is a
//! thin facade: each boundary call goes to the subsystem that owns it
//! (scheduler, memory, lockdep, block layer, filesystem), or to the glue
//! that crosses subsystems.
//!
//! Fault model: none of its own; each call carries the fault model of the
//! subsystem it reaches. A `warn` is a failed run ("kernel_warn"); misuse
//! of the block layer (closing what is not open, removing a disk that is
//! not one, opening `current->bio_list` twice) fails the run ("kernel").

use std::rc::Rc;
use std::task::Waker;

use blksnap_core::kernel::{
    AllocId, BdevFilter, BdevHandle, Bio, BioResult, Completer, Completion, DevT, Errno, GenDisk,
    Gfp, Kernel, LocalBoxFuture, LockId, LockMode, LockOp, TaskKind, TaskName,
};

use super::blk::IMAGE_MAJOR;
use super::task::TaskId;
use super::Sim;
use crate::trace::TraceEvent;

/// The engine's view of the sim. It is `Rc<Sim>` behind a newtype so the
/// engine gets a `Rc<dyn Kernel>` while the sim keeps its own handle.
pub struct SimKernel(pub Rc<Sim>);

impl Kernel for SimKernel {
    fn now_ns(&self) -> u64 {
        self.0.now()
    }

    fn sleep(&self, ns: u64) -> Completion<()> {
        self.0.engine_sleeps(ns);
        self.0.sleep(ns)
    }

    fn spawn(&self, kind: TaskKind, name: TaskName, task: LocalBoxFuture<'static, ()>) {
        let noio = matches!(kind, TaskKind::Kthread { noio: true });
        self.0.new_task(name, task, noio, false);
    }

    fn preempt(&self, waker: &Waker) -> bool {
        self.0.preempt_in_place(waker)
    }

    fn fatal_signal_pending(&self) -> bool {
        self.0.sched.current_killed()
    }

    fn uuid_v4(&self) -> [u8; 16] {
        // Drawn from the sim's own stream so ids repeat with the seed; the
        // builder sets the version-4 and variant bits.
        let mut bytes = [0u8; 16];
        self.0.uuid_rng.borrow_mut().fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .into_bytes()
    }

    fn warn(&self, msg: &str) {
        self.0.record(TraceEvent::Warn {
            msg: msg.to_string(),
        });
        self.0.fail("kernel_warn", format!("WARN: {msg}"));
    }

    fn log(&self, msg: &str) {
        self.0.log(msg.to_string());
    }

    fn might_sleep(&self, site: &'static str) {
        self.0.sched.might_sleep(site);
    }

    fn alloc_slowpath(&self, site: &'static str, gfp: Gfp) -> Option<u64> {
        let reclaim = self.0.alloc_slowpath(gfp);
        if reclaim.is_some() {
            self.0.reclaim_began(site);
        }
        reclaim
    }

    fn kmalloc(&self, site: &'static str, bytes: u64, gfp: Gfp) -> Result<AllocId, Errno> {
        self.0.kmalloc(site, bytes, gfp)
    }

    fn kfree(&self, id: AllocId) {
        self.0.kfree(id)
    }

    fn memalloc_noio_save(&self) -> bool {
        self.0.sched.noio_save()
    }

    fn memalloc_noio_restore(&self, previous: bool) {
        self.0.sched.noio_restore(previous);
    }

    fn lock_new(&self, class: &'static str) -> LockId {
        self.0.lockdep.borrow_mut().new_lock(class)
    }

    /// An uncontended take and a release are judged in place (a push, a
    /// pop: they can report nothing); anything else goes the full way.
    fn lock_event(&self, id: LockId, class: &'static str, op: LockOp, mode: LockMode) {
        let sim = &self.0;
        let (Some(task), mark) = sim.sched.current_and_next_id() else {
            return;
        };
        let mut lockdep = sim.lockdep.borrow_mut();
        lockdep.mark = mark;
        if !lockdep.quiet_event(task, id, class, op) {
            drop(lockdep);
            lock_event_judged(sim, task, id, class, op, mode);
        }
    }

    fn bdev_open(&self, dev: DevT) -> Result<BdevHandle, Errno> {
        self.0.blk.open(dev)
    }

    fn bdev_close(&self, handle: BdevHandle) {
        if !self.0.blk.close(handle) {
            self.0.fail(
                "kernel",
                format!("blkdev_put of {} that is not open", handle.dev),
            );
        }
    }

    fn bdev_nr_sectors(&self, dev: DevT) -> u64 {
        self.0.blk.nr_sectors(dev)
    }

    fn bdev_io_min(&self, dev: DevT) -> u32 {
        self.0.blk.io_min(dev)
    }

    fn submit_bio(&self, bio: Bio, done: Completer<BioResult>) {
        let sim = &self.0;
        // Asked first, so the bio is not moved into an `Option` and back
        // out on the usual path (no list open anywhere).
        if sim.sched.any_bio_list_open() {
            return queue_or_submit(sim, bio, done);
        }
        submit_now(sim, bio, done);
    }

    fn bio_list_begin(&self) {
        if self.0.sched.open_bio_list() == Some(true) {
            self.0.fail("kernel", "current->bio_list opened twice");
        }
    }

    fn bio_list_end(&self) -> Vec<(Bio, Completer<BioResult>)> {
        self.0.sched.close_bio_list()
    }

    fn freeze_bdev(&self, dev: DevT) -> Completion<Result<(), Errno>> {
        let now = self.0.now();
        self.0.lifecycle.borrow_mut().engine_freeze(false, now);
        let fails = self.0.blk.freeze_fails(dev);
        let sim = self.0.clone();
        let body = Box::pin(async move { crate::fs::freeze_bdev(&sim, dev, fails).await });
        self.0.helper("freeze_bdev", body)
    }

    fn thaw_bdev(&self, dev: DevT) -> Completion<Result<(), Errno>> {
        let now = self.0.now();
        self.0.lifecycle.borrow_mut().engine_freeze(true, now);
        Completion::ready(crate::fs::thaw_bdev(&self.0, dev))
    }

    fn filter_attach(
        &self,
        dev: DevT,
        filter: Rc<dyn BdevFilter>,
    ) -> Completion<Result<(), Errno>> {
        let sim = self.0.clone();
        let quiesce = self.0.wait_for_quiesce(dev);
        let body = Box::pin(async move {
            quiesce.await;
            let mut filters = sim.blk.filters_mut();
            if filters.contains_key(&dev) {
                return Err(Errno::EALREADY);
            }
            filters.insert(dev, filter);
            Ok(())
        });
        self.0.helper("bdev_filter_attach", body)
    }

    fn filter_detach(&self, dev: DevT) -> Completion<Result<(), Errno>> {
        let sim = self.0.clone();
        let quiesce = self.0.wait_for_quiesce(dev);
        let body = Box::pin(async move {
            quiesce.await;
            let filter = sim.blk.filters_mut().remove(&dev);
            match filter {
                Some(filter) => {
                    filter.release();
                    Ok(())
                }
                None => Err(Errno::ENOENT),
            }
        });
        self.0.helper("bdev_filter_detach", body)
    }

    fn filter_get(&self, dev: DevT) -> Option<Rc<dyn BdevFilter>> {
        self.0.filter_of(dev)
    }

    fn image_major(&self) -> u32 {
        IMAGE_MAJOR
    }

    fn add_disk(
        &self,
        dev: DevT,
        name: String,
        capacity: u64,
        disk: Rc<dyn GenDisk>,
    ) -> Result<(), Errno> {
        let sim = &self.0;
        if sim
            .faults
            .borrow_mut()
            .add_disk_fails(&mut sim.fault_rng.borrow_mut())
        {
            return Err(Errno::ENOMEM);
        }
        sim.blk.add_disk(dev, disk, capacity);
        sim.oracle.borrow_mut().image_added(dev, capacity);
        sim.log(format!("add_disk {name} {dev} {capacity}"));
        let verdict = sim.lifecycle.borrow_mut().image_added(dev, sim.now());
        if let Err(message) = verdict {
            sim.fail("lifecycle", message);
        }
        Ok(())
    }

    fn del_gendisk(&self, dev: DevT) {
        if !self.0.blk.del_disk(dev) {
            self.0
                .fail("kernel", format!("del_gendisk of {dev} that is not a disk"));
        }
    }
}

/// A lock event that may report: lockdep's full path, then its reports.
#[inline(never)]
fn lock_event_judged(
    sim: &Sim,
    task: TaskId,
    id: LockId,
    class: &'static str,
    op: LockOp,
    mode: LockMode,
) {
    let (report, noio) = {
        let mut lockdep = sim.lockdep.borrow_mut();
        let report = lockdep.event(task, id, class, op, mode);
        // Nearly always none: no vector is moved out and dropped.
        let noio = lockdep.has_noio_reports();
        (report, noio)
    };
    if report.is_some() || noio {
        lock_reports(sim, report, noio);
    }
}

/// Fails the run for lockdep's reports: an order inversion, then the noio
/// rule's reports if `noio`. Rare, so kept out of `lock_event`'s body.
#[cold]
#[inline(never)]
fn lock_reports(sim: &Sim, report: Option<String>, noio: bool) {
    if let Some(report) = report {
        sim.fail("lockdep", report);
    }
    if noio {
        let reports = sim.lockdep.borrow_mut().take_noio_reports();
        for report in reports {
            sim.fail("memalloc_noio", report);
        }
    }
}

/// A bio submitted while some task has `current->bio_list` open: queued
/// on the running task's list if it is that task (submitted when the
/// list closes), else submitted. Out of line: the usual path has no list.
#[inline(never)]
fn queue_or_submit(sim: &Rc<Sim>, bio: Bio, done: Completer<BioResult>) {
    if let Err((bio, done)) = sim.sched.queue_bio((bio, done)) {
        submit_now(sim, bio, done);
    }
}

/// The bio goes to the checkers, then to the device or image disk (looked
/// up once for both: the checkers see the engine's IO to devices).
#[inline(always)]
fn submit_now(sim: &Rc<Sim>, bio: Bio, done: Completer<BioResult>) {
    let disk = sim.blk.disk(bio.dev);
    if disk.is_none() {
        sim.check_engine_bio(&bio);
    }
    crate::check::durability::hooks::engine_write(sim, &bio);
    sim.submit_to(bio, done, disk);
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use blksnap_core::kernel::sync::{RwSem, Semaphore};
    use blksnap_core::kernel::{Gfp, Kernel};

    use super::SimKernel;
    use crate::kernel::Sim;

    /// Lockdep through the engine's locks and `lock_event`, not its own
    /// calls: a lockdep whose held locks were never filled (or emptied on
    /// the wrong release) would pass every run while checking nothing.
    /// Two processes take two locks in opposite orders (one after the
    /// other, so nothing deadlocks); the second order is reported. While
    /// a process sleeps holding locks, they are listed, and a GFP_KERNEL
    /// allocation under the IO-path one is reported; after the run none
    /// is held.
    #[test]
    fn lock_events_reach_lockdep() {
        let sim = Sim::new(1);
        let k: Rc<dyn Kernel> = Rc::new(SimKernel(sim.clone()));
        let a = Rc::new(RwSem::new(&*k, "test.a"));
        let io = Rc::new(RwSem::new(&*k, "tracker_submit_lock"));
        let chunk = Rc::new(Semaphore::new(&*k, "chunk.lock"));
        let (k1, a1, io1, chunk1) = (k.clone(), a.clone(), io.clone(), chunk.clone());
        sim.spawn_process(
            "first",
            Box::pin(async move {
                a1.down_write(&*k1).await;
                io1.down_read(&*k1).await;
                chunk1.down(&*k1).await;
                k1.sleep(100_000).await;
                chunk1.up(&*k1);
                io1.up_read(&*k1);
                a1.up_write(&*k1);
            }),
        );
        let (k2, a2, io2) = (k.clone(), a.clone(), io.clone());
        sim.spawn_process(
            "second",
            Box::pin(async move {
                k2.sleep(200_000).await;
                io2.down_read(&*k2).await;
                a2.down_write(&*k2).await;
                let alloc = blksnap_core::kernel::kmalloc(&*k2, "test", 8, Gfp::Kernel).await;
                k2.kfree(alloc.expect("no fault is planned"));
                a2.up_write(&*k2);
                io2.up_read(&*k2);
            }),
        );
        let sim2 = sim.clone();
        sim.at(
            50_000,
            Box::new(move |_| {
                let held = sim2.lockdep.borrow().held_report();
                let classes: Vec<&str> = held.iter().map(|(_, c)| *c).collect();
                assert_eq!(classes, ["test.a", "tracker_submit_lock", "chunk.lock"]);
            }),
        );
        assert!(sim.run(), "both processes end");
        let failures = sim.failures();
        let by = |checker: &str| failures.iter().filter(|f| f.checker == checker).count();
        assert_eq!(by("lockdep"), 1, "{failures:?}");
        assert!(failures[0]
            .message
            .contains("tracker_submit_lock -> test.a"));
        assert_eq!(by("memalloc_noio"), 1, "{failures:?}");
        assert!(sim.lockdep.borrow().held_report().is_empty());
    }
}
