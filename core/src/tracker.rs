//! The tracker: the filter attached to an original device (v2 `tracker.c`,
//! spec 3). It marks the CBT on every write and, while a snapshot is taken,
//! holds each write back until the chunks it touches are copied.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use crate::cbt_map::CbtMap;
use crate::diff_area::{ChunkWalk, DiffArea};
use crate::kernel::sync::LockWait;
use crate::kernel::{
    blkdev_get, blkdev_put, kmalloc, sleep_point, AllocId, BdevFilter, BioHeader, DevT, Errno,
    FilterVerdict, Gfp, Kernel, Kref, LocalBoxFuture, NoioScope, TaskKind, TaskName,
};
use crate::module::Module;

/// How long a task preempted inside an unlocked window stays off the CPU
/// in the race quirks: one scheduler tick.
pub const PREEMPTED_NS: u64 = 4_000_000;

pub struct Tracker {
    module: Rc<Module>,
    pub dev_id: DevT,
    /// The filter kref: one for the attachment, one per owner.
    refs: Kref,
    pub snapshot_is_taken: Cell<bool>,
    /// How many snapshots own the tracker: at most one with the v4 rule,
    /// more under B-SNAP-6.
    pub(crate) owners: Cell<u32>,
    /// TRACKER_REMOVE is detaching it: a CREATE must not take it now.
    pub detaching: Cell<bool>,
    /// A TRACKER_REMOVE detached its filter: it only waits for its last
    /// reference, and no snapshot may take it. `detaching` is lowered when
    /// that REMOVE ends, but a CREATE that looked the tracker up before the
    /// REMOVE began and slept through all of it (in `blkdev_put`) still
    /// holds it, and would own a tracker no write passes through (B-TRK-5's
    /// symptom, from a race the fix of B-TRK-5 alone leaves open).
    pub detached: Cell<bool>,
    /// CREATE is still attaching it (`tracker_new` up to its return): a
    /// TRACKER_REMOVE must not detach it now (B-TRK-12's fix).
    attaching: Cell<bool>,
    /// One reference of the map's kref; an image holds another.
    pub cbt_map: Rc<CbtMap>,
    /// Owned reference, set at TAKE and put at release.
    pub diff_area: RefCell<Option<Rc<DiffArea>>>,
    /// The `struct tracker` allocation (GFP_KERNEL), given back by the
    /// release work.
    alloc: AllocId,
}

/// An entry of `tracked_device_list` (tracker.c:443): its own GFP_KERNEL
/// allocation, made before the tracker and given back when the entry
/// leaves the list (or at unload, `tracker_done`).
pub struct TrackedDevice {
    pub dev_id: DevT,
    alloc: AllocId,
}

impl TrackedDevice {
    /// Give the entry's memory back.
    pub fn free(self, k: &dyn Kernel) {
        k.kfree(self.alloc);
    }
}

impl Tracker {
    /// `tracker_create_or_get` (spec 3.3). Returns a reference for the caller.
    pub async fn create_or_get(module: &Rc<Module>, dev: DevT) -> Result<Rc<Tracker>, Errno> {
        let k = module.k();
        let handle = blkdev_get(k, "tracker_create.blkdev_get", dev).await?;
        let result = Self::get_or_attach(module, dev).await;
        blkdev_put(k, "tracker_create.blkdev_put", handle).await;
        result
    }

    async fn get_or_attach(module: &Rc<Module>, dev: DevT) -> Result<Rc<Tracker>, Errno> {
        if let Some(tracker) = Self::get_by_dev(module, dev).await {
            return Ok(tracker);
        }
        let k = module.k();
        let entry = kmalloc(k, "tracked_device", 32, Gfp::Kernel).await?;
        match Self::new(module, dev).await {
            Ok(tracker) => {
                if module.quirks.trk_12 {
                    // `bdev_filter_get` after `tracker_new` returned: a
                    // TRACKER_REMOVE during its thaw found the attached
                    // filter, detached it and put the last reference.
                    if tracker.refs() == 0 {
                        panic!("BUG: use-after-free: tracker released by TRACKER_REMOVE before CREATE took its reference (B-TRK-12)");
                    }
                    tracker.get();
                }
                tracker.attaching.set(false);
                let entry = TrackedDevice {
                    dev_id: dev,
                    alloc: entry,
                };
                module.tracked_devices.with(|list| list.push(entry));
                Ok(tracker)
            }
            Err(e) => {
                k.kfree(entry);
                Err(e)
            }
        }
    }

    /// `tracker_new`: the struct, its CBT, and the filter attached with the
    /// file system frozen. A failed attach drops the only reference, so
    /// the release work frees what was built, as in C.
    async fn new(module: &Rc<Module>, dev: DevT) -> Result<Rc<Tracker>, Errno> {
        let k = module.k();
        let alloc = kmalloc(k, "tracker", 128, Gfp::Kernel).await?;
        let cbt_map = match CbtMap::new(module, k.bdev_nr_sectors(dev)).await {
            Ok(cbt_map) => cbt_map,
            Err(e) => {
                k.kfree(alloc);
                return Err(e);
            }
        };
        module.trackers_alive.set(module.trackers_alive.get() + 1);
        let tracker = Rc::new(Tracker {
            module: module.clone(),
            dev_id: dev,
            refs: Kref::new("tracker"),
            snapshot_is_taken: Cell::new(false),
            owners: Cell::new(0),
            detaching: Cell::new(false),
            detached: Cell::new(false),
            attaching: Cell::new(false),
            cbt_map,
            diff_area: RefCell::new(None),
            alloc,
        });
        if !module.quirks.trk_12 {
            // The caller's reference and the mark before the filter can be
            // found: v2 takes its reference only after the thaw (B-TRK-12).
            tracker.get();
            tracker.attaching.set(true);
        }
        // Attach with the file system frozen, so it is synced first.
        let frozen = k.freeze_bdev(dev).await;
        if let Err(e) = frozen {
            k.log(&format!("failed to freeze {dev}: {e}"));
        }
        let attached = k.filter_attach(dev, tracker.clone()).await;
        if module.quirks.trk_12 && attached.is_ok() {
            // The window v2 leaves open, widened as the race quirks do:
            // `thaw_bdev` can lose the CPU (`thaw_super` takes `s_umount`)
            // for a scheduler tick with the filter findable.
            k.sleep(PREEMPTED_NS).await;
        }
        if frozen.is_ok() {
            sleep_point(k, "tracker_create.thaw_bdev").await;
            let _ = k.thaw_bdev(dev).await;
        }
        if let Err(e) = attached {
            if !module.quirks.trk_12 {
                tracker.attaching.set(false);
                tracker.put();
            }
            tracker.put();
            return Err(e);
        }
        Ok(tracker)
    }

    /// The tracker attached to a device, with a new reference.
    ///
    /// v2 reads `bd_filter` and takes the reference with no lock held
    /// (B-TRK-11): a detach on another CPU can drop the last reference in
    /// between. The quirk opens that window for a scheduler tick; the
    /// fix takes the reference at once (attach and detach quiesce the
    /// queue, so a filter seen is a filter alive).
    pub async fn get_by_dev(module: &Rc<Module>, dev: DevT) -> Option<Rc<Tracker>> {
        let tracker = module.tracker_lookup(dev)?;
        if module.quirks.trk_11 {
            // Preempted for a scheduler tick between the two steps.
            module.k().sleep(PREEMPTED_NS).await;
            if tracker.refs() == 0 {
                panic!("BUG: use-after-free: tracker freed between the bd_filter lookup and kref_get (B-TRK-11)");
            }
        }
        tracker.get();
        Some(tracker)
    }

    pub fn get(&self) {
        self.refs.get();
    }

    /// Drop a reference. The last one is `tracker_release_cb`: it may run
    /// where sleeping is not allowed, so it only queues the tracker for the
    /// release work (tracker.c:163-192), which frees it later.
    pub fn put(self: &Rc<Self>) {
        if self.refs.put(self.module.k()) {
            let tracker = self.clone();
            self.module.k().spawn(
                TaskKind::Work,
                TaskName::Device("tracker_release ", self.dev_id),
                Box::pin(async move { tracker.free().await }),
            );
        }
    }

    /// `tracker_free`, on the release work: the diff_area reference (its
    /// free may wait for IO), the CBT reference, the struct.
    async fn free(&self) {
        let module = &self.module;
        let k = module.k();
        sleep_point(k, "tracker_free").await;
        let area = self.diff_area.borrow_mut().take();
        if let Some(area) = area {
            area.put().await;
        }
        self.cbt_map.put();
        k.kfree(self.alloc);
        module.trackers_alive.set(module.trackers_alive.get() - 1);
    }

    /// A snapshot takes the tracker (CREATE).
    pub fn claim(&self) {
        self.owners.set(self.owners.get() + 1);
    }

    /// The snapshot lets it go (release, or a failed CREATE).
    pub fn unclaim(&self) {
        assert!(
            self.owners.get() > 0,
            "tracker released by a snapshot that did not own it"
        );
        self.owners.set(self.owners.get() - 1);
    }

    /// Owned by a snapshot.
    pub fn in_snapshot(&self) -> bool {
        self.owners.get() > 0
    }

    pub fn refs(&self) -> u64 {
        self.refs.count()
    }

    /// TRACKER_REMOVE (spec 3.6): detach with the file system frozen.
    pub async fn remove(module: &Rc<Module>, dev: DevT) -> Result<(), Errno> {
        let k = module.k();
        let handle = blkdev_get(k, "tracker_remove.blkdev_get", dev).await?;
        let result = Self::detach(module, dev).await;
        blkdev_put(k, "tracker_remove.blkdev_put", handle).await;
        result
    }

    async fn detach(module: &Rc<Module>, dev: DevT) -> Result<(), Errno> {
        let k = module.k();
        let tracker = Self::get_by_dev(module, dev).await.ok_or(Errno::ENODATA)?;
        // v2 lets a created-but-untaken snapshot lose its tracker (B-TRK-5);
        // the fix keeps a tracker owned by a snapshot until that one goes.
        let owned = tracker.in_snapshot() && !module.quirks.trk_5;
        if tracker.snapshot_is_taken.get() || owned || tracker.attaching.get() {
            tracker.put();
            return Err(Errno::EBUSY);
        }
        // A second REMOVE racing one that is detaching this tracker stops
        // here. Going on as in v2, it would sleep in the freeze and then
        // detach whatever filter the device has by then: once the first
        // REMOVE has detached ours, that may be the filter of a new tracker
        // a CREATE attached meanwhile, and the CREATE's snapshot would
        // copy nothing (regress/tracker-remove-vs-remove-vs-create.ron).
        // It fails as v2's second REMOVE does when no CREATE comes between:
        // the filter is (about to be) gone, -ENOENT, logged.
        if tracker.detaching.get() {
            tracker.put();
            k.log(&format!("failed to detach from {dev}: {}", Errno::ENOENT));
            return Err(Errno::ENOENT);
        }
        // From here a CREATE must not take the tracker: the freeze below
        // sleeps, and the check above would be stale by the detach.
        tracker.detaching.set(!module.quirks.trk_5);
        let frozen = k.freeze_bdev(dev).await;
        let detached = k.filter_detach(dev).await;
        if frozen.is_ok() {
            sleep_point(k, "tracker_remove.thaw_bdev").await;
            let _ = k.thaw_bdev(dev).await;
        }
        tracker.detaching.set(false);
        if detached.is_ok() {
            tracker.detached.set(!module.quirks.trk_5);
        }
        tracker.put();
        if let Err(e) = detached {
            k.log(&format!("failed to detach from {dev}: {e}"));
            return Err(e);
        }
        if module.quirks.trk_7 {
            // v2 drops one list entry here, and none when a device goes
            // away, so entries of unplugged devices stay (B-TRK-7).
            forget_device(module, dev);
        }
        Ok(())
    }

    /// MARK_DIRTY_BLOCKS on an original device: both maps, range by range,
    /// stopping at the first error (earlier ranges stay marked).
    pub async fn mark_dirty(
        module: &Rc<Module>,
        dev: DevT,
        ranges: &[(u64, u64)],
    ) -> Result<(), Errno> {
        let handle = blkdev_get(module.k(), "mark_dirty.blkdev_get", dev).await?;
        blkdev_put(module.k(), "mark_dirty.blkdev_put", handle).await;
        let tracker = Self::get_by_dev(module, dev).await.ok_or(Errno::ENODEV)?;
        let result = tracker.cbt_map.set_both(ranges);
        tracker.put();
        result
    }

    /// `tracker_take_snapshot`, with the write side of the submit lock held:
    /// reset the CBT if it is corrupted or the device was resized, then
    /// switch it.
    pub async fn take_snapshot(&self) -> Result<(), Errno> {
        // v2 reads the capacity through `diff_area->orig_bdev`.
        if self.diff_area.borrow().is_none() {
            self.null_diff_area_oops("tracker_take_snapshot");
        }
        let capacity = self.module.k().bdev_nr_sectors(self.dev_id);
        if self.cbt_map.is_corrupted() || capacity != self.cbt_map.device_capacity() {
            self.cbt_map.reset(capacity).await?;
        }
        self.cbt_map.switch();
        self.snapshot_is_taken.set(true);
        Ok(())
    }

    /// v2 reaches `tracker->diff_area` without a NULL test in the write
    /// path, TAKE and image creation; a release of another snapshot sharing
    /// the tracker (B-SNAP-6) can NULL it meanwhile. With B-SNAP-11 that is
    /// the oops it is in C; the fix's callers skip or fail instead.
    pub fn null_diff_area_oops(&self, site: &str) {
        if self.module.quirks.snap_11 {
            panic!(
                "BUG: kernel NULL pointer dereference: tracker->diff_area of {} in {site} (B-SNAP-11)",
                self.dev_id
            );
        }
    }

    /// `tracker_release_snapshot`.
    pub fn release_snapshot(&self) {
        self.snapshot_is_taken.set(false);
    }

    /// The start of `submit_bio_cb` after the read lock is taken (spec
    /// 3.4), up to its first sleep: the area to copy into, or Err when
    /// the write passes without a COW.
    #[inline(always)]
    fn filter_start(&self, bio: &BioHeader) -> Result<Rc<DiffArea>, ()> {
        if !bio.op.is_write() || bio.sectors == 0 {
            return Err(());
        }
        let k = self.module.k();
        let marked = {
            let _noio = NoioScope::enter(k);
            self.cbt_map.set(bio.sector, bio.sectors)
        };
        if marked.is_err() && self.module.quirks.trk_4 {
            return Err(());
        }
        if !self.snapshot_is_taken.get() {
            return Err(());
        }
        let Some(area) = self.diff_area.borrow().clone() else {
            // Taken yet no diff_area: a release of a snapshot sharing this
            // tracker NULLed it. v2 dereferences it (B-SNAP-11).
            self.null_diff_area_oops("tracker_submit_bio_cb");
            return Err(());
        };
        if area.is_corrupted() {
            return Err(());
        }
        Ok(area)
    }

    /// Whether a failed copy lets the write through without waiting for the
    /// copies in flight, as v2 does for every error (B-TRK-3 drops its
    /// queued bios too). With only B-DA-4 on, the -EINTR of a writer killed
    /// while it waited for a chunk lock passes at once, as in the C: the
    /// write can overtake the other writer's copy of that chunk. Its own
    /// earlier chunks' bios are still submitted there (the B-TRK-3 fix), so
    /// with a multi-chunk write the write may overtake those as well, where
    /// v2 never submits them; the bug scenario uses one-chunk writes.
    fn passes_at_once(&self, e: Errno) -> bool {
        let quirks = &self.module.quirks;
        quirks.trk_3 || (quirks.da_4 && e == Errno::EINTR)
    }

    /// Send the COW bios queued during `diff_area_copy`. After an error v2
    /// drops them (B-TRK-3): their chunks stay locked for ever.
    fn submit_queued(
        &self,
        queued: Vec<(
            crate::kernel::Bio,
            crate::kernel::Completer<crate::kernel::BioResult>,
        )>,
        copy_ok: bool,
    ) {
        if !copy_ok && self.module.quirks.trk_3 {
            self.module
                .k()
                .log("COW bios dropped after an error (B-TRK-3)");
            drop(queued);
            return;
        }
        // The usual write queues nothing: no iterator made and dropped.
        if queued.is_empty() {
            return;
        }
        for (mut bio, done) in queued {
            bio.flags.filtered = true;
            self.module.k().submit_bio(bio, done);
        }
    }

    /// Map the COW result to what happens to the write.
    fn verdict(&self, result: Result<(), Errno>) -> FilterVerdict {
        match result {
            Ok(()) => FilterVerdict::Pass,
            Err(Errno::EAGAIN) => self.would_block(),
            Err(e) => {
                self.module
                    .k()
                    .log(&format!("COW failed on {}: {e}", self.dev_id));
                FilterVerdict::Pass
            }
        }
    }

    /// v2 ends the bio with `bio_wouldblock_error` and returns false, so the
    /// block core ends it again (B-TRK-2); the fix ends it once.
    fn would_block(&self) -> FilterVerdict {
        if self.module.quirks.trk_2 {
            FilterVerdict::CompletedTwice(Errno::EAGAIN)
        } else {
            FilterVerdict::Complete(Errno::EAGAIN)
        }
    }
}

/// Drop one entry of a device from `tracked_device_list` and free it.
fn forget_device(module: &Module, dev: DevT) {
    let entry = module.tracked_devices.with(|list| take_entry(list, dev));
    if let Some(entry) = entry {
        entry.free(module.k());
    }
}

/// Unlink the first entry of `dev`.
fn take_entry(list: &mut Vec<TrackedDevice>, dev: DevT) -> Option<TrackedDevice> {
    let i = list.iter().position(|d| d.dev_id == dev)?;
    Some(list.remove(i))
}

impl BdevFilter for Tracker {
    fn into_any(self: Rc<Self>) -> Rc<dyn std::any::Any> {
        self
    }

    fn submit_bio_cb(self: Rc<Self>, bio: BioHeader) -> LocalBoxFuture<'static, FilterVerdict> {
        Box::pin(WriteFilter::new(self, bio))
    }

    /// The attachment is gone (detach, or the device went away): the fix
    /// drops the device's list entry at that moment, so the list holds one
    /// entry per attachment and no stale ones.
    fn release(self: Rc<Self>) {
        if !self.module.quirks.trk_7 {
            forget_device(&self.module, self.dev_id);
        }
        self.put();
    }
}

/// `tracker_submit_bio_cb`'s future (spec 3.4), written out by hand: the
/// read lock of `tracker_submit_lock`, the CBT mark, then for a write
/// under a snapshot `diff_area_copy` (in the writer's NOIO scope and bio
/// list) and `diff_area_wait`. Every write is polled through it once per
/// sleep; as nested `async fn`s each poll resumed every level, and the
/// boxed future held all of them. It sleeps exactly where they did: the
/// locks' own preemption points and waits, and the boxed rare parts.
struct WriteFilter {
    tracker: Rc<Tracker>,
    bio: BioHeader,
    step: FilterStep,
    /// The acquisition of `tracker_submit_lock` (`FilterStep::SubmitLock`).
    submit_lock: LockWait,
    /// The chunks of the write: copied, then waited for.
    walk: Option<ChunkWalk>,
    /// The NOIO state to restore when the copy ends (`FilterStep::Copy`).
    noio: bool,
    /// After a failed copy: the wait for the copies in flight (boxed, an
    /// error path), and the error the write gets after it.
    started: Option<(LocalBoxFuture<'static, ()>, Errno)>,
}

/// Where the filter stands; what it holds is in `WriteFilter`'s fields,
/// so moving between steps drops nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FilterStep {
    /// Not polled yet.
    Start,
    /// Waiting for `tracker_submit_lock`, read.
    SubmitLock,
    /// In `diff_area_copy`, inside the NOIO scope and the bio list.
    Copy,
    /// In `diff_area_wait`.
    Wait,
    /// In the wait after a failed copy.
    WaitStarted,
    /// Ready was returned.
    Done,
}

impl WriteFilter {
    fn new(tracker: Rc<Tracker>, bio: BioHeader) -> Self {
        WriteFilter {
            tracker,
            bio,
            step: FilterStep::Start,
            submit_lock: LockWait::done(),
            walk: None,
            noio: false,
            started: None,
        }
    }

    /// Poll the current step: Some with the write's COW result when it is
    /// over (the read lock still held), None to go on with the next step.
    #[inline(always)]
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<(), Errno>>> {
        let module = &self.tracker.module;
        let (k, lock) = (module.k(), &module.tracker_submit_lock);
        Poll::Ready(match self.step {
            FilterStep::Start => {
                self.submit_lock = lock.read_wait();
                self.step = FilterStep::SubmitLock;
                None
            }
            FilterStep::SubmitLock => {
                let taken = ready!(lock.poll_wait(k, &mut self.submit_lock, cx));
                assert!(taken.is_ok(), "uninterruptible wait was interrupted");
                self.locked()
            }
            FilterStep::Copy => {
                let walk = self.walk.as_mut().expect("a copy has its walk");
                let copied = ready!(walk.poll_copy(cx));
                self.copied(copied)
            }
            FilterStep::Wait => {
                let walk = self.walk.as_mut().expect("a wait has its walk");
                Some(ready!(walk.poll_wait(cx)))
            }
            FilterStep::WaitStarted => {
                let (waiting, e) = self.started.as_mut().expect("a wait is running");
                ready!(waiting.as_mut().poll(cx));
                Some(Err(*e))
            }
            FilterStep::Done => panic!("submit_bio_cb polled after it completed"),
        })
    }

    /// The read lock is held: mark the CBT, and start the COW if needed.
    /// Some(Ok) when the write passes at once.
    #[inline(always)]
    fn locked(&mut self) -> Option<Result<(), Errno>> {
        let area = match self.tracker.filter_start(&self.bio) {
            Ok(area) => area,
            Err(()) => return Some(Ok(())),
        };
        let k = self.tracker.module.k();
        // v2 waits for chunk locks killably, and a fatal signal then lets
        // the write through without its COW (B-DA-4); the fix does not
        // give up a copy half-way.
        let killable = self.tracker.module.quirks.da_4;
        self.noio = k.memalloc_noio_save();
        k.bio_list_begin();
        let bio = &self.bio;
        self.walk = Some(area.walk(bio.sector, bio.sectors, bio.flags.nowait, killable));
        self.step = FilterStep::Copy;
        None
    }

    /// `diff_area_copy` returned: submit its bios, leave the NOIO scope,
    /// then wait for the chunks; or the write's result at once.
    #[inline(always)]
    fn copied(&mut self, copied: Result<(), Errno>) -> Option<Result<(), Errno>> {
        let k = self.tracker.module.k();
        self.step = FilterStep::Done;
        let queued = k.bio_list_end();
        self.tracker.submit_queued(queued, copied.is_ok());
        k.memalloc_noio_restore(self.noio);
        let bio = &self.bio;
        let walk = self.walk.as_mut().expect("a copy has its walk");
        match copied {
            Ok(()) => {
                walk.rewind(bio.sector, bio.sectors);
                self.step = FilterStep::Wait;
            }
            // The write is let through after an error; first wait for the
            // copies already started, or the write could overtake them.
            Err(e) if e != Errno::EAGAIN && !self.tracker.passes_at_once(e) => {
                let (area, sector, count) = (walk.area().clone(), bio.sector, bio.sectors);
                let waiting = Box::pin(async move { area.wait_started(sector, count).await });
                self.started = Some((waiting, e));
                self.step = FilterStep::WaitStarted;
            }
            Err(e) => return Some(Err(e)),
        }
        None
    }
}

impl Future for WriteFilter {
    type Output = FilterVerdict;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FilterVerdict> {
        let this = self.get_mut();
        if this.step == FilterStep::Start && this.bio.flags.nowait {
            // REQ_NOWAIT: only the trylock, no preemption point.
            let module = &this.tracker.module;
            if !module.tracker_submit_lock.down_read_trylock(module.k()) {
                this.step = FilterStep::Done;
                return Poll::Ready(this.tracker.would_block());
            }
            if let Some(result) = this.locked() {
                return Poll::Ready(this.finish(result));
            }
        }
        loop {
            if let Some(result) = ready!(this.poll_step(cx)) {
                return Poll::Ready(this.finish(result));
            }
        }
    }
}

impl WriteFilter {
    /// The COW is over: its verdict, after the read lock is released.
    /// The walk and the boxed wait are dropped with the future, right
    /// after: nothing of theirs is observable.
    #[inline(always)]
    fn finish(&mut self, result: Result<(), Errno>) -> FilterVerdict {
        self.step = FilterStep::Done;
        let verdict = self.tracker.verdict(result);
        let module = &self.tracker.module;
        module.tracker_submit_lock.up_read(module.k());
        verdict
    }
}

impl Drop for WriteFilter {
    /// Dropped inside the copy (a task the run leaves blocked): leave the
    /// NOIO scope, as the `NoioScope` guard of the `async fn` did.
    fn drop(&mut self) {
        if self.step == FilterStep::Copy {
            self.tracker.module.k().memalloc_noio_restore(self.noio);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff_storage::StorageCounters;
    use crate::event_queue::EVENT_CORRUPTED;
    use crate::kernel::testing::{dev, orig, run, setup, Ctl, TestKernel, MIB};
    use crate::kernel::{Bio, BioFlags, BioOp, Kernel};

    fn tracker(ctl: &Ctl, d: DevT) -> Rc<Tracker> {
        ctl.module.tracker_lookup(d).expect("tracked")
    }

    fn counters(ctl: &Ctl) -> StorageCounters {
        ctl.module.snapshots.borrow()[0].diff_storage.counters()
    }

    /// CREATE + APPEND + TAKE of one device; the snapshot id.
    async fn taken(ctl: &Ctl, d: DevT) -> [u8; 16] {
        let id = ctl.create(&[d]).await.unwrap();
        ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
        ctl.take(&id).await.unwrap();
        id
    }

    fn header(op: BioOp, sector: u64, sectors: u64, nowait: bool) -> BioHeader {
        BioHeader {
            op,
            sector,
            sectors,
            flags: BioFlags {
                nowait,
                ..BioFlags::default()
            },
        }
    }

    #[test]
    fn create_attaches_a_filter_with_the_file_system_frozen() {
        let (k, ctl) = setup(&[]);
        run(&k, ctl.create(&[dev(0)])).unwrap();
        assert_eq!(k.events(), vec!["freeze 8:0", "attach 8:0", "thaw 8:0"]);
        let t = tracker(&ctl, dev(0));
        assert_eq!(t.refs(), 2, "the attachment and the snapshot");
        assert!(t.in_snapshot() && !t.snapshot_is_taken.get());
        assert!(t.diff_area.borrow().is_none());
        assert_eq!(ctl.module.trackers_alive.get(), 1);
        let listed: Vec<DevT> = ctl
            .module
            .tracked_devices
            .with(|l| l.iter().map(|e| e.dev_id).collect());
        assert_eq!(listed, vec![dev(0)]);
        assert!(k.open_bdevs().is_empty(), "the temporary handle is closed");
    }

    #[test]
    fn an_existing_tracker_is_reused() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.destroy(&id).await.unwrap();
            assert_eq!(tracker(&ctl, dev(0)).refs(), 1, "only the attachment");
            ctl.create(&[dev(0)]).await.unwrap();
        });
        let attaches = k
            .events()
            .iter()
            .filter(|e| e.starts_with("attach"))
            .count();
        assert_eq!(attaches, 1);
        assert_eq!(tracker(&ctl, dev(0)).refs(), 2);
    }

    #[test]
    fn writes_before_take_mark_the_cbt_without_cow() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            ctl.create(&[dev(0)]).await.unwrap();
            k.user_write(dev(0), 1000, vec![5; 8]).await.unwrap();
            k.user_read(dev(0), 2560, 8).await.unwrap();
        });
        tracker(&ctl, dev(0)).cbt_map.state.with(|s| {
            assert_eq!(s.write_map[7], 1);
            assert_eq!(s.write_map[20], 0, "reads do not mark");
        });
        assert_eq!(k.peek(dev(0), 1000, 8), vec![5; 8]);
        assert_eq!(k.bios().len(), 2, "no COW IO");
    }

    #[test]
    fn a_write_while_taken_is_held_until_its_chunks_are_stored() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            taken(&ctl, dev(0)).await;
            k.clear_bios();
            k.user_write(dev(0), 1020, vec![5; 8]).await.unwrap();
        });
        // Two COW reads, two stores, then the write itself.
        let ios: Vec<_> = k.bios().iter().map(|b| (b.dev, b.op, b.sectors)).collect();
        assert_eq!(
            ios,
            vec![
                (dev(0), BioOp::Read, 512),
                (dev(0), BioOp::Read, 512),
                (dev(16), BioOp::Write, 512),
                (dev(16), BioOp::Write, 512),
                (dev(0), BioOp::Write, 8),
            ]
        );
        assert!(k.bios()[..4].iter().all(|b| b.flags.filtered));
        assert_eq!(counters(&ctl).filled, 1024);
        tracker(&ctl, dev(0)).cbt_map.state.with(|s| {
            assert_eq!((s.write_map[7], s.write_map[8]), (2, 2));
        });
        assert!(k.warns().is_empty(), "{:?}", k.warns());
    }

    #[test]
    fn a_chunk_is_copied_once() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            taken(&ctl, dev(0)).await;
            k.user_write(dev(0), 0, vec![5; 8]).await.unwrap();
            k.clear_bios();
            k.user_write(dev(0), 8, vec![6; 8]).await.unwrap();
            k.user_write(dev(0), 0, vec![7; 8]).await.unwrap();
        });
        assert_eq!(counters(&ctl).filled, 512);
        assert!(k
            .bios()
            .iter()
            .all(|b| b.dev == dev(0) && b.op == BioOp::Write));
    }

    #[test]
    fn reads_and_empty_writes_pass_without_cow() {
        let (k, ctl) = setup(&[]);
        let filter = run(&k, async {
            taken(&ctl, dev(0)).await;
            k.filter_get(dev(0)).unwrap()
        });
        for h in [
            header(BioOp::Read, 0, 8, false),
            header(BioOp::Write, 0, 0, false),
        ] {
            let verdict = run(&k, filter.clone().submit_bio_cb(h));
            assert_eq!(verdict, FilterVerdict::Pass);
        }
        assert_eq!(counters(&ctl).filled, 0);
        // A discard is a write: it is copied first.
        let verdict = run(
            &k,
            filter.submit_bio_cb(header(BioOp::Discard, 0, 8, false)),
        );
        assert_eq!(verdict, FilterVerdict::Pass);
        assert_eq!(counters(&ctl).filled, 512);
    }

    #[test]
    fn nowait_bios_during_take_or_release_would_block() {
        for (quirk, expected) in [
            (&[][..], FilterVerdict::Complete(Errno::EAGAIN)),
            (
                &["B-TRK-2"][..],
                FilterVerdict::CompletedTwice(Errno::EAGAIN),
            ),
        ] {
            let (k, ctl) = setup(quirk);
            let filter = run(&k, async {
                ctl.create(&[dev(0)]).await.unwrap();
                k.filter_get(dev(0)).unwrap()
            });
            let lock = &ctl.module.tracker_submit_lock;
            run(&k, lock.down_write(&*k));
            for op in [BioOp::Read, BioOp::Write] {
                let verdict = run(&k, filter.clone().submit_bio_cb(header(op, 0, 8, true)));
                assert_eq!(verdict, expected, "{op:?} with {quirk:?}");
            }
            lock.up_write(&*k);
            let verdict = run(
                &k,
                filter
                    .clone()
                    .submit_bio_cb(header(BioOp::Write, 0, 8, true)),
            );
            assert_eq!(verdict, FilterVerdict::Pass);
        }
    }

    #[test]
    fn a_blocking_bio_waits_for_the_take() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            ctl.create(&[dev(0)]).await.unwrap();
            let lock = &ctl.module.tracker_submit_lock;
            lock.down_write(&*k).await;
            let k2 = k.clone();
            k.spawn(
                crate::kernel::TaskKind::Work,
                "writer".into(),
                Box::pin(async move {
                    k2.user_write(dev(0), 0, vec![5; 8]).await.unwrap();
                }),
            );
            k.settle().await;
            assert_eq!(k.peek(dev(0), 0, 1), vec![orig(0)], "held back");
            assert_eq!(k.contended("tracker_submit_lock"), 1);
            lock.up_write(&*k);
            k.settle().await;
            assert_eq!(k.peek(dev(0), 0, 1), vec![5]);
        });
    }

    #[test]
    fn remove_is_ebusy_while_a_snapshot_owns_the_tracker() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            assert_eq!(ctl.tracker_remove(dev(0)).await, Err(Errno::EBUSY));
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            assert_eq!(ctl.tracker_remove(dev(0)).await, Err(Errno::EBUSY));
            ctl.destroy(&id).await.unwrap();
            ctl.tracker_remove(dev(0)).await.unwrap();
            assert_eq!(ctl.tracker_remove(dev(0)).await, Err(Errno::ENODATA));
            assert_eq!(ctl.tracker_remove(dev(9)).await, Err(Errno::ENXIO));
            k.settle().await;
        });
        assert!(!k.has_filter(dev(0)));
        assert!(ctl.module.tracked_devices.with(|l| l.is_empty()));
        assert_eq!(ctl.module.trackers_alive.get(), 0);
        assert!(ctl.module.tracker_lookup(dev(0)).is_none());
        assert!(k.live_allocs().is_empty(), "{:?}", k.live_allocs());
    }

    /// B-TRK-12's fix: while a CREATE is still attaching a tracker (in
    /// `tracker_new`'s thaw), a TRACKER_REMOVE leaves it alone. The suite
    /// cannot show this guard any more: without it, the `detached` mark
    /// makes the racing CREATE fail instead, and both outcomes are safe.
    #[test]
    fn remove_is_ebusy_while_a_create_is_attaching_the_tracker() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.destroy(&id).await.unwrap();
            let tracker = tracker(&ctl, dev(0));
            tracker.attaching.set(true);
            assert_eq!(ctl.tracker_remove(dev(0)).await, Err(Errno::EBUSY));
            assert!(k.has_filter(dev(0)) && !tracker.detached.get());
            tracker.attaching.set(false);
            ctl.tracker_remove(dev(0)).await.unwrap();
            assert!(
                tracker.detached.get(),
                "a REMOVE that detached marks the tracker"
            );
            drop(tracker);
            k.settle().await;
        });
        assert!(!k.has_filter(dev(0)));
    }

    #[test]
    fn quirk_trk_5_remove_detaches_a_tracker_of_an_untaken_snapshot() {
        let (k, ctl) = setup(&["B-TRK-5"]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.tracker_remove(dev(0)).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            // No filter: the write is not copied and the image shows it.
            k.user_write(dev(0), 0, vec![5; 8]).await.unwrap();
            let image = ctl.collect_images(&id).await.unwrap()[0].1;
            assert_eq!(k.user_read(image, 0, 8).await, Ok(vec![5; 8]));
        });
    }

    #[test]
    fn device_removal_releases_the_filter_and_frees_the_tracker() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.destroy(&id).await.unwrap();
            // What bdev eviction does.
            k.filter_detach(dev(0)).await.unwrap();
            k.settle().await;
        });
        assert_eq!(ctl.module.trackers_alive.get(), 0);
        assert!(k.live_allocs().is_empty(), "{:?}", k.live_allocs());
    }

    /// Take, grow the device, write past the old end, then write in range.
    fn grow_and_write(quirk_ids: &[&str]) -> (Rc<TestKernel>, Ctl, [u8; 16]) {
        let (k, ctl) = setup(quirk_ids);
        let id = run(&k, async {
            let id = taken(&ctl, dev(0)).await;
            ctl.wait_event(&id, 0).await.unwrap();
            k.resize_device(dev(0), 128 * MIB);
            k.user_write(dev(0), 64 * MIB, vec![5; 8]).await.unwrap();
            k.user_write(dev(0), 0, vec![6; 8]).await.unwrap();
            id
        });
        (k, ctl, id)
    }

    #[test]
    fn a_write_past_the_old_end_corrupts_the_snapshot_with_an_event() {
        let (k, ctl, id) = grow_and_write(&[]);
        assert!(tracker(&ctl, dev(0)).cbt_map.is_corrupted());
        let (code, _, data) = run(&k, ctl.wait_event(&id, 0)).unwrap();
        assert_eq!(code, EVENT_CORRUPTED);
        assert_eq!(&data[8..12], &22i32.to_le_bytes(), "EINVAL");
    }

    #[test]
    fn quirk_trk_4_a_cbt_failure_silently_disables_cow() {
        let (k, ctl, id) = grow_and_write(&["B-TRK-4"]);
        assert!(tracker(&ctl, dev(0)).cbt_map.is_corrupted());
        assert_eq!(
            run(&k, ctl.wait_event(&id, 0)),
            Err(Errno::ENOENT),
            "no event"
        );
        assert_eq!(counters(&ctl).filled, 0, "nothing was copied");
        let image = run(&k, ctl.collect_images(&id)).unwrap()[0].1;
        assert_eq!(run(&k, k.user_read(image, 0, 8)), Ok(vec![6; 8]));
    }

    #[test]
    fn take_resets_a_corrupted_cbt() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            let generation = ctl.tracker_collect().await.unwrap()[0].generation_id;
            k.user_write(dev(0), 64 * MIB, vec![1]).await.unwrap_err();
            assert!(tracker(&ctl, dev(0)).cbt_map.is_corrupted());
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            assert!(!tracker(&ctl, dev(0)).cbt_map.is_corrupted());
            let info = ctl.tracker_collect().await.unwrap()[0];
            assert_ne!(info.generation_id, generation);
            assert_eq!(info.snap_number, 1);
        });
    }

    /// Storage for one chunk, used up by chunk 5; chunk 1 buffered by an
    /// image read; then a write over chunks 0 (fresh) and 1 (buffered): the
    /// store of chunk 1 overflows after chunk 0's read was queued.
    fn overflow_mid_range(quirk_ids: &[&str]) -> (Rc<TestKernel>, Ctl) {
        let (k, ctl) = setup(quirk_ids);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 512)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            k.user_write(dev(0), 5 * 512, vec![1; 8]).await.unwrap();
            let image = ctl.collect_images(&id).await.unwrap()[0].1;
            k.user_read(image, 512, 8).await.unwrap();
            k.user_write(dev(0), 500, vec![2; 24]).await.unwrap();
            k.settle().await;
        });
        (k, ctl)
    }

    fn area(ctl: &Ctl) -> Rc<DiffArea> {
        tracker(ctl, dev(0)).diff_area.borrow().clone().unwrap()
    }

    /// Polls a `submit_bio_cb` future, and after each Pending notes
    /// whether chunk 0 is locked and the task is in a NOIO scope; drops
    /// the future unfinished after `stop_after` Pendings.
    struct Probe {
        filter: Option<LocalBoxFuture<'static, FilterVerdict>>,
        k: Rc<TestKernel>,
        chunk: Rc<crate::chunk::Chunk>,
        seen: Vec<(bool, bool)>,
        stop_after: usize,
    }

    impl Future for Probe {
        type Output = (Option<FilterVerdict>, Vec<(bool, bool)>);

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let filter = self.filter.as_mut().expect("polled after Ready");
            if let Poll::Ready(verdict) = filter.as_mut().poll(cx) {
                return Poll::Ready((Some(verdict), std::mem::take(&mut self.seen)));
            }
            let seen = (self.chunk.lock.is_locked(), self.k.current_noio());
            self.seen.push(seen);
            if self.seen.len() < self.stop_after {
                return Poll::Pending;
            }
            self.filter = None;
            Poll::Ready((None, std::mem::take(&mut self.seen)))
        }
    }

    /// Run one write of chunk 0 (copied already) through the filter.
    fn probe(nowait: bool, stop_after: usize) -> (Option<FilterVerdict>, Vec<(bool, bool)>) {
        let (k, ctl) = setup(&[]);
        let filter = run(&k, async {
            taken(&ctl, dev(0)).await;
            k.user_write(dev(0), 0, vec![5; 8]).await.unwrap();
            k.filter_get(dev(0)).unwrap()
        });
        let probe = Probe {
            filter: Some(filter.submit_bio_cb(header(BioOp::Write, 8, 8, nowait))),
            k: k.clone(),
            chunk: area(&ctl).chunk(0).unwrap(),
            seen: Vec::new(),
            stop_after,
        };
        let (verdict, seen) = run(&k, async {
            let result = probe.await;
            assert!(!k.current_noio(), "the NOIO scope is left");
            result
        });
        assert_eq!(counters(&ctl).filled, 512, "copied by the first write only");
        (verdict, seen)
    }

    #[test]
    fn a_write_to_a_copied_chunk_sleeps_at_the_three_lock_preemption_points() {
        // The submit lock's, then the chunk lock's in diff_area_copy (in
        // the NOIO scope), then in diff_area_wait; never holding the chunk.
        let (verdict, seen) = probe(false, usize::MAX);
        assert_eq!(verdict, Some(FilterVerdict::Pass));
        assert_eq!(seen, vec![(false, false), (false, true), (false, false)]);
        // REQ_NOWAIT only tries the locks: no sleep at all.
        assert_eq!(probe(true, usize::MAX), (Some(FilterVerdict::Pass), vec![]));
    }

    #[test]
    fn a_write_dropped_inside_the_copy_leaves_its_noio_scope() {
        let (verdict, seen) = probe(false, 2);
        assert_eq!(verdict, None);
        assert_eq!(seen, vec![(false, false), (false, true)]);
    }

    #[test]
    fn cow_bios_queued_before_an_error_are_still_submitted() {
        let (k, ctl) = overflow_mid_range(&[]);
        assert!(area(&ctl).is_corrupted());
        assert_eq!(area(&ctl).pending_io(), 0);
        assert_eq!(k.peek(dev(0), 500, 24), vec![2; 24]);
        run(&k, async {
            let id = ctl.collect().await.unwrap()[0];
            ctl.destroy(&id).await.unwrap();
        });
        assert!(k.warns().is_empty(), "{:?}", k.warns());
    }

    #[test]
    fn quirk_trk_3_cow_bios_queued_before_an_error_are_dropped() {
        let (k, ctl) = overflow_mid_range(&["B-TRK-3"]);
        assert!(area(&ctl).is_corrupted());
        assert_eq!(area(&ctl).pending_io(), 1, "chunk 0's read never ends");
        assert!(k.logs().iter().any(|l| l.contains("B-TRK-3")));
        assert!(k
            .task_names()
            .iter()
            .any(|n| n.starts_with("chunk_notify_load")));
    }

    #[test]
    fn quirk_da_4_a_killed_writer_passes_without_cow() {
        let (k, ctl) = setup(&["B-DA-4"]);
        run(&k, async {
            let id = taken(&ctl, dev(0)).await;
            // A first writer copies chunk 1; the victim, killed before it
            // starts, writes chunks 1 and 2 and gives up on chunk 1's lock.
            for (name, sector) in [("first", 512u64), ("victim", 1020)] {
                let k2 = k.clone();
                k.spawn(
                    crate::kernel::TaskKind::Work,
                    name.into(),
                    Box::pin(async move {
                        k2.user_write(dev(0), sector, vec![5; 8]).await.unwrap();
                    }),
                );
            }
            k.kill("victim");
            k.settle().await;
            let image = ctl.collect_images(&id).await.unwrap()[0].1;
            // Chunk 2 was never copied: the image shows the new data.
            assert_eq!(k.user_read(image, 1024, 4).await, Ok(vec![5; 4]));
            // The -EINTR came from the copy path (chunk 1's lock, held by
            // the first writer's copy): v2 passes the write at once, and it
            // overtook that copy's read, so chunk 1's "old" data is new.
            assert_eq!(k.user_read(image, 1020, 4).await, Ok(vec![5; 4]));
        });
        assert!(
            k.logs().iter().any(|l| l.contains("EINTR")),
            "{:?}",
            k.logs()
        );
    }

    /// B-DA-4 on the copy path, as the C has it: the victim, killed while
    /// `diff_area_copy` waits for the chunk lock the first writer's copy
    /// holds, gets -EINTR and its write passes at once: it is done before
    /// that copy is. The fix waits for the copy (uninterruptibly) first.
    #[test]
    fn quirk_da_4_copy_path_eintr_passes_before_the_copy_ends() {
        let state_when_victim_done = |ids: &[&str]| {
            let (k, ctl) = setup(ids);
            let seen = Rc::new(std::cell::Cell::new(None));
            run(&k, async {
                taken(&ctl, dev(0)).await;
                let area = area(&ctl);
                for (name, sector) in [("first", 512u64), ("victim", 520)] {
                    let (k2, area, seen) = (k.clone(), area.clone(), seen.clone());
                    k.spawn(
                        crate::kernel::TaskKind::Work,
                        name.into(),
                        Box::pin(async move {
                            k2.user_write(dev(0), sector, vec![5; 8]).await.unwrap();
                            if sector == 520 {
                                seen.set(Some(area.chunk(1).unwrap().state()));
                            }
                        }),
                    );
                }
                k.kill("victim");
                k.settle().await;
            });
            seen.get().expect("the victim's write ended")
        };
        let store_ready = crate::chunk::bits::STORE_READY;
        assert_eq!(state_when_victim_done(&[]) & store_ready, store_ready);
        assert_eq!(state_when_victim_done(&["B-DA-4"]) & store_ready, 0);
    }

    #[test]
    fn quirk_da_4_a_killed_writer_does_not_warn() {
        let (k, ctl) = setup(&["B-DA-4"]);
        run(&k, async {
            taken(&ctl, dev(0)).await;
            for (name, sector) in [("first", 512u64), ("victim", 1020)] {
                let k2 = k.clone();
                k.spawn(
                    crate::kernel::TaskKind::Work,
                    name.into(),
                    Box::pin(async move {
                        k2.user_write(dev(0), sector, vec![5; 8]).await.unwrap();
                    }),
                );
            }
            k.kill("victim");
            k.settle().await;
        });
        assert!(k.warns().is_empty(), "{:?}", k.warns());
    }

    #[test]
    fn the_last_put_frees_the_tracker_on_its_release_work() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.destroy(&id).await.unwrap();
            k.filter_detach(dev(0)).await.unwrap();
        });
        // The release callback only queued the work: nothing is freed yet.
        assert_eq!(ctl.module.trackers_alive.get(), 1);
        assert!(k
            .task_names()
            .iter()
            .any(|n| n.starts_with("tracker_release")));
        assert!(k.live_allocs().iter().any(|(s, _)| *s == "tracker"));
        run(&k, k.settle());
        assert_eq!(ctl.module.trackers_alive.get(), 0);
        assert!(k.live_allocs().is_empty(), "{:?}", k.live_allocs());
    }

    #[test]
    fn allocation_failures_of_a_new_tracker_are_enomem_and_leak_nothing() {
        for site in ["tracked_device", "tracker", "cbt_map", "cbt_map.write_map"] {
            let (k, ctl) = setup(&[]);
            k.fail_site(site);
            assert_eq!(run(&k, ctl.create(&[dev(0)])), Err(Errno::ENOMEM), "{site}");
            run(&k, k.settle());
            assert!(!k.has_filter(dev(0)), "{site}");
            assert_eq!(ctl.module.trackers_alive.get(), 0, "{site}");
            let left: Vec<&str> = k.live_allocs().iter().map(|(s, _)| *s).collect();
            assert!(left.is_empty(), "{site}: {left:?}");
        }
    }

    #[test]
    fn take_entry_unlinks_the_first_entry_of_a_device() {
        let entry = |d, a| TrackedDevice {
            dev_id: d,
            alloc: AllocId(a),
        };
        let mut list = vec![entry(dev(0), 1), entry(dev(1), 2), entry(dev(0), 3)];
        assert_eq!(
            take_entry(&mut list, dev(0)).map(|e| e.alloc),
            Some(AllocId(1))
        );
        assert!(take_entry(&mut list, dev(2)).is_none());
        let left: Vec<u64> = list.iter().map(|e| e.alloc.0).collect();
        assert_eq!(left, vec![2, 3]);
    }

    #[test]
    fn user_bio_helper_sees_the_filter() {
        // The write goes through Tracker::submit_bio_cb: the CBT marks it.
        let (k, ctl) = setup(&[]);
        run(&k, async {
            ctl.create(&[dev(0)]).await.unwrap();
            k.user_bio(Bio::write(dev(0), 128, vec![1])).await.unwrap();
        });
        tracker(&ctl, dev(0))
            .cbt_map
            .state
            .with(|s| assert_eq!(s.write_map[1], 1));
    }
}
