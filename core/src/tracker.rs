//! The tracker: the filter attached to an original device (v2 `tracker.c`,
//! spec 3). It marks the CBT on every write and, while a snapshot is taken,
//! holds each write back until the chunks it touches are copied.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::cbt_map::CbtMap;
use crate::diff_area::DiffArea;
use crate::kernel::{
    BdevFilter, BioHeader, DevT, Errno, FilterVerdict, Gfp, LocalBoxFuture, NoioScope,
};
use crate::module::Module;

pub struct Tracker {
    module: Rc<Module>,
    pub dev_id: DevT,
    /// The filter kref: one for the attachment, one per owner.
    refs: Cell<u64>,
    pub snapshot_is_taken: Cell<bool>,
    /// Set while a listed snapshot owns the tracker (the v4 ownership rule).
    pub in_snapshot: Cell<bool>,
    pub cbt_map: Rc<CbtMap>,
    /// Owned reference, set at TAKE and put at release.
    pub diff_area: RefCell<Option<Rc<DiffArea>>>,
}

impl Tracker {
    /// `tracker_create_or_get` (spec 3.3). Returns a reference for the caller.
    pub async fn create_or_get(module: &Rc<Module>, dev: DevT) -> Result<Rc<Tracker>, Errno> {
        let k = module.k();
        let handle = k.bdev_open(dev)?;
        let result = Self::get_or_attach(module, dev).await;
        k.bdev_close(handle);
        result
    }

    async fn get_or_attach(module: &Rc<Module>, dev: DevT) -> Result<Rc<Tracker>, Errno> {
        if let Some(tracker) = Self::get_by_dev(module, dev) {
            return Ok(tracker);
        }
        let k = module.k();
        let alloc = k.kmalloc("tracker", 128, Gfp::Kernel)?;
        k.kfree(alloc);
        let cbt_map = CbtMap::new(module, k.bdev_nr_sectors(dev))?;
        let tracker = Rc::new(Tracker {
            module: module.clone(),
            dev_id: dev,
            refs: Cell::new(1),
            snapshot_is_taken: Cell::new(false),
            in_snapshot: Cell::new(false),
            cbt_map,
            diff_area: RefCell::new(None),
        });
        // Attach with the file system frozen, so it is synced first.
        let frozen = k.freeze_bdev(dev).await;
        if let Err(e) = frozen {
            k.log(&format!("failed to freeze {dev}: {e}"));
        }
        let attached = k.filter_attach(dev, tracker.clone()).await;
        if frozen.is_ok() {
            let _ = k.thaw_bdev(dev).await;
        }
        if let Err(e) = attached {
            tracker.cbt_map.destroy();
            return Err(e);
        }
        module.trackers_alive.set(module.trackers_alive.get() + 1);
        module.tracker_register(&tracker);
        tracker.get();
        module.tracked_devices.with(|list| list.push(dev));
        Ok(tracker)
    }

    /// The tracker attached to a device, with a new reference.
    pub fn get_by_dev(module: &Rc<Module>, dev: DevT) -> Option<Rc<Tracker>> {
        module.k().filter_get(dev)?;
        let tracker = module.tracker_lookup(dev)?;
        tracker.get();
        Some(tracker)
    }

    pub fn get(&self) {
        assert!(self.refs.get() > 0, "tracker get after the last put");
        self.refs.set(self.refs.get() + 1);
    }

    /// Drop a reference; the last frees the tracker (the release worker).
    pub fn put(&self) {
        let refs = self.refs.get();
        if refs == 0 {
            self.module
                .k()
                .warn("refcount_t: underflow; use-after-free (tracker)");
            return;
        }
        self.refs.set(refs - 1);
        if refs == 1 {
            self.free();
        }
    }

    fn free(&self) {
        let module = &self.module;
        if let Some(area) = self.diff_area.borrow_mut().take() {
            // The tracker held a reference: give it back on a work item.
            module.k().spawn(
                crate::kernel::TaskKind::Work,
                format!("tracker_free {}", self.dev_id),
                Box::pin(async move { area.put().await }),
            );
        }
        self.cbt_map.destroy();
        module.forget_tracker(self);
        module.trackers_alive.set(module.trackers_alive.get() - 1);
    }

    pub fn refs(&self) -> u64 {
        self.refs.get()
    }

    /// TRACKER_REMOVE (spec 3.6): detach with the file system frozen.
    pub async fn remove(module: &Rc<Module>, dev: DevT) -> Result<(), Errno> {
        let k = module.k();
        let handle = k.bdev_open(dev)?;
        let result = Self::detach(module, dev).await;
        k.bdev_close(handle);
        result
    }

    async fn detach(module: &Rc<Module>, dev: DevT) -> Result<(), Errno> {
        let k = module.k();
        let tracker = Self::get_by_dev(module, dev).ok_or(Errno::ENODATA)?;
        // v2 lets a created-but-untaken snapshot lose its tracker (B-TRK-5);
        // the fix keeps a tracker owned by a snapshot until that one goes.
        let owned = tracker.in_snapshot.get() && !module.quirks.trk_5;
        if tracker.snapshot_is_taken.get() || owned {
            tracker.put();
            return Err(Errno::EBUSY);
        }
        let frozen = k.freeze_bdev(dev).await;
        let detached = k.filter_detach(dev).await;
        if frozen.is_ok() {
            let _ = k.thaw_bdev(dev).await;
        }
        tracker.put();
        if let Err(e) = detached {
            k.log(&format!("failed to detach from {dev}: {e}"));
            return Err(e);
        }
        let first_only = module.quirks.trk_7;
        module
            .tracked_devices
            .with(|list| forget_device(list, dev, first_only));
        Ok(())
    }

    /// MARK_DIRTY_BLOCKS on an original device: both maps, range by range,
    /// stopping at the first error (earlier ranges stay marked).
    pub fn mark_dirty(module: &Rc<Module>, dev: DevT, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        let handle = module.k().bdev_open(dev)?;
        module.k().bdev_close(handle);
        let tracker = Self::get_by_dev(module, dev).ok_or(Errno::ENODEV)?;
        let result = tracker.cbt_map.set_both(ranges);
        tracker.put();
        result
    }

    /// `tracker_take_snapshot`, with the write side of the submit lock held:
    /// reset the CBT if it is corrupted or the device was resized, then
    /// switch it.
    pub fn take_snapshot(&self) -> Result<(), Errno> {
        let capacity = self.module.k().bdev_nr_sectors(self.dev_id);
        if self.cbt_map.is_corrupted() || capacity != self.cbt_map.device_capacity() {
            self.cbt_map.reset(capacity)?;
        }
        self.cbt_map.switch();
        self.snapshot_is_taken.set(true);
        Ok(())
    }

    /// `tracker_release_snapshot`.
    pub fn release_snapshot(&self) {
        self.snapshot_is_taken.set(false);
    }

    /// The body of `submit_bio_cb` after the read lock is taken (spec 3.4).
    async fn filter_write(self: Rc<Self>, bio: BioHeader) -> FilterVerdict {
        if !bio.op.is_write() || bio.sectors == 0 {
            return FilterVerdict::Pass;
        }
        let k = self.module.k();
        let marked = {
            let _noio = NoioScope::enter(k);
            self.cbt_map.set(bio.sector, bio.sectors)
        };
        if marked.is_err() && self.module.quirks.trk_4 {
            return FilterVerdict::Pass;
        }
        if !self.snapshot_is_taken.get() {
            return FilterVerdict::Pass;
        }
        let Some(area) = self.diff_area.borrow().clone() else {
            return FilterVerdict::Pass;
        };
        if area.is_corrupted() {
            return FilterVerdict::Pass;
        }
        let nowait = bio.flags.nowait;
        // v2 waits for chunk locks killably, and a fatal signal then lets
        // the write through without its COW (B-DA-4); the fix does not give
        // up a copy half-way.
        let killable = self.module.quirks.da_4;
        let copied = {
            let _noio = NoioScope::enter(k);
            k.bio_list_begin();
            let copied = area.copy(bio.sector, bio.sectors, nowait, killable).await;
            let queued = k.bio_list_end();
            self.submit_queued(queued, copied.is_ok());
            copied
        };
        let result = match copied {
            Ok(()) => area.wait(bio.sector, bio.sectors, nowait, killable).await,
            // The write is let through after an error; first wait for the
            // copies already started, or the write could overtake them.
            Err(e) if e != Errno::EAGAIN && !self.module.quirks.trk_3 => {
                let _ = area.wait(bio.sector, bio.sectors, false, false).await;
                Err(e)
            }
            Err(e) => Err(e),
        };
        self.verdict(result)
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

/// Drop a device from `tracked_device_list`. v2 drops the first entry only,
/// so a duplicate of a re-plugged device stays (B-TRK-7); the fix drops all.
fn forget_device(list: &mut Vec<DevT>, dev: DevT, first_only: bool) {
    if first_only {
        if let Some(i) = list.iter().position(|d| *d == dev) {
            list.remove(i);
        }
    } else {
        list.retain(|d| *d != dev);
    }
}

impl BdevFilter for Tracker {
    fn submit_bio_cb(self: Rc<Self>, bio: BioHeader) -> LocalBoxFuture<'static, FilterVerdict> {
        Box::pin(async move {
            let module = self.module.clone();
            let k = module.k();
            let lock = &module.tracker_submit_lock;
            if bio.flags.nowait {
                if !lock.down_read_trylock(k) {
                    return self.would_block();
                }
            } else {
                lock.down_read(k).await;
            }
            let verdict = self.clone().filter_write(bio).await;
            lock.up_read(k);
            verdict
        })
    }

    fn release(self: Rc<Self>) {
        self.put();
    }
}
