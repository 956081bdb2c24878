//! The snapshot: a set of devices, their diff storage and images (v2
//! `snapshot.c`, spec 8). This is the object of the seed patch.
//!
//! Lifecycle: CREATE lists it (trackers attached, CBT running, no COW);
//! TAKE builds a diff_area per device, switches the trackers with every
//! device frozen and the submit lock write-held, then creates the images;
//! DESTROY unlists it and the last reference releases everything.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::diff_area::DiffArea;
use crate::diff_storage::DiffStorage;
use crate::event_queue::Event;
use crate::kernel::{DevT, Errno, Gfp, NoioScope};
use crate::module::Module;
use crate::snapimage::SnapImage;
use crate::tracker::Tracker;

pub type SnapshotId = [u8; 16];

/// State of a snapshot (asserted on each transition).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SnapshotState {
    /// Listed, trackers attached, not taken.
    Created,
    /// Taken: COW is on and images exist (or some do, after a late failure).
    Taken,
    /// Unlisted; alive only while an ioctl still holds a reference.
    Destroyed,
}

pub struct Snapshot {
    module: Rc<Module>,
    pub id: SnapshotId,
    refs: Cell<u64>,
    state: Cell<SnapshotState>,
    pub diff_storage: Rc<DiffStorage>,
    pub trackers: Vec<Rc<Tracker>>,
    pub images: RefCell<Vec<Option<Rc<SnapImage>>>>,
}

/// One `{original, image}` pair of COLLECT_IMAGES.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub orig_dev_id: DevT,
    pub image_dev_id: DevT,
}

impl Snapshot {
    pub fn state(&self) -> SnapshotState {
        self.state.get()
    }

    pub fn is_taken(&self) -> bool {
        self.state.get() == SnapshotState::Taken
    }

    fn set_state(&self, next: SnapshotState) {
        use SnapshotState::*;
        let now = self.state.get();
        let allowed = matches!(
            (now, next),
            (Created, Taken) | (Taken, Created) | (Created, Destroyed) | (Taken, Destroyed)
        );
        assert!(allowed, "snapshot state {now:?} -> {next:?}");
        self.state.set(next);
    }

    pub fn count(&self) -> usize {
        self.trackers.len()
    }

    // --- references --------------------------------------------------------------

    pub fn get(&self) {
        assert!(self.refs.get() > 0, "snapshot_get after the last put");
        self.refs.set(self.refs.get() + 1);
    }

    /// Drop a reference; the last one releases the snapshot.
    pub async fn put(self: &Rc<Self>) {
        let refs = self.refs.get();
        if refs == 0 {
            self.module
                .k()
                .warn("refcount_t: underflow; use-after-free (snapshot)");
            return;
        }
        self.refs.set(refs - 1);
        if refs == 1 {
            self.release().await;
        }
    }

    // --- CREATE --------------------------------------------------------------------

    /// `snapshot_create` (spec 8.2).
    pub async fn create(module: &Rc<Module>, devs: &[DevT]) -> Result<SnapshotId, Errno> {
        if has_duplicates(devs) {
            return Err(Errno::EINVAL);
        }
        let k = module.k();
        let alloc = k.kmalloc("snapshot", 128 + 16 * devs.len() as u64, Gfp::Kernel)?;
        k.kfree(alloc);
        let diff_storage = DiffStorage::new(module)?;
        let id = k.uuid_v4();
        let trackers = match gather_trackers(module, devs).await {
            Ok(trackers) => trackers,
            Err(e) => {
                diff_storage.free();
                return Err(e);
            }
        };
        for tracker in &trackers {
            tracker.in_snapshot.set(true);
        }
        let snapshot = Rc::new(Snapshot {
            module: module.clone(),
            id,
            refs: Cell::new(1),
            state: Cell::new(SnapshotState::Created),
            diff_storage,
            images: RefCell::new(vec![None; trackers.len()]),
            trackers,
        });
        module.snapshots_lock.down_write(k).await;
        module.list_add(snapshot);
        module.snapshots_lock.up_write(k);
        Ok(id)
    }

    // --- lookup ---------------------------------------------------------------------

    /// `snapshot_get_by_id`: a new reference, or None.
    pub async fn get_by_id(module: &Rc<Module>, id: &SnapshotId) -> Option<Rc<Snapshot>> {
        let k = module.k();
        module.snapshots_lock.down_read(k).await;
        let found = module
            .snapshots
            .borrow()
            .iter()
            .find(|s| s.id == *id)
            .cloned();
        if let Some(snapshot) = &found {
            snapshot.get();
        }
        module.snapshots_lock.up_read(k);
        found
    }

    // --- DESTROY ------------------------------------------------------------------------

    /// `snapshot_destroy`: unlist and drop the list's reference.
    pub async fn destroy(module: &Rc<Module>, id: &SnapshotId) -> Result<(), Errno> {
        let k = module.k();
        module.snapshots_lock.down_write(k).await;
        let found = module.list_remove(id);
        module.snapshots_lock.up_write(k);
        let snapshot = found.ok_or(Errno::ENODEV)?;
        snapshot.set_state(SnapshotState::Destroyed);
        snapshot.put().await;
        Ok(())
    }

    // --- TAKE -------------------------------------------------------------------------

    /// `snapshot_take` (spec 8.3).
    pub async fn take(module: &Rc<Module>, id: &SnapshotId) -> Result<(), Errno> {
        let snapshot = Self::get_by_id(module, id).await.ok_or(Errno::ESRCH)?;
        let result = snapshot.take_locked().await;
        snapshot.put().await;
        result
    }

    async fn take_locked(self: &Rc<Self>) -> Result<(), Errno> {
        if self.is_taken() {
            return Err(Errno::EALREADY);
        }
        if self.state() == SnapshotState::Destroyed {
            return Err(Errno::ESRCH);
        }
        if self.trackers.is_empty() {
            return Err(Errno::ENODEV);
        }
        let early = match self.build_diff_areas() {
            Ok(()) => self.take_trackers().await,
            Err(e) => Err(e),
        };
        let early = early.and_then(|()| self.check_not_corrupted());
        if let Err(e) = early {
            self.take_failed().await;
            return Err(e);
        }
        self.create_images()
    }

    /// A diff_area per device; an older pointer on a shared tracker is put.
    fn build_diff_areas(&self) -> Result<(), Errno> {
        for tracker in &self.trackers {
            let area = DiffArea::new(&self.module, tracker.dev_id, &self.diff_storage)?;
            let old = tracker.diff_area.borrow_mut().replace(area);
            if let Some(old) = old {
                self.module.k().warn(&format!(
                    "diff_area of {} overwritten while still set",
                    tracker.dev_id
                ));
                drop(old);
            }
        }
        Ok(())
    }

    /// `snapshot_take_trackers`: freeze, switch under the write lock, thaw.
    async fn take_trackers(&self) -> Result<(), Errno> {
        let k = self.module.k();
        let frozen = self.freeze_all(|_| true).await;
        let result = {
            let _noio = NoioScope::enter(k);
            self.module.tracker_submit_lock.down_write(k).await;
            let result = self.switch_trackers();
            self.module.tracker_submit_lock.up_write(k);
            result
        };
        self.thaw(&frozen).await;
        result
    }

    fn switch_trackers(&self) -> Result<(), Errno> {
        for (i, tracker) in self.trackers.iter().enumerate() {
            if let Err(e) = tracker.take_snapshot() {
                for earlier in self.trackers[..i].iter().rev() {
                    earlier.release_snapshot();
                }
                return Err(e);
            }
        }
        self.set_state(SnapshotState::Taken);
        Ok(())
    }

    /// A COW may already have failed between the switch and here.
    fn check_not_corrupted(&self) -> Result<(), Errno> {
        let corrupted = self.trackers.iter().any(|t| {
            t.diff_area
                .borrow()
                .as_ref()
                .is_some_and(|area| area.is_corrupted())
        });
        if corrupted {
            return Err(Errno::EFAULT);
        }
        Ok(())
    }

    /// Images in device order. A failure leaves the snapshot taken with the
    /// images made so far; only DESTROY recovers it (B-SNAP-5, kept by v3).
    fn create_images(&self) -> Result<(), Errno> {
        for (i, tracker) in self.trackers.iter().enumerate() {
            let area = tracker.diff_area.borrow().clone().ok_or(Errno::EFAULT)?;
            let image = SnapImage::create(&self.module, &area, &tracker.cbt_map)?;
            self.images.borrow_mut()[i] = Some(image);
        }
        Ok(())
    }

    /// The failure path before images exist. v2 unlists and destroys the
    /// snapshot (B-SNAP-10); the fix releases the trackers and keeps it.
    async fn take_failed(self: &Rc<Self>) {
        if self.module.quirks.snap_10 {
            let k = self.module.k();
            self.module.snapshots_lock.down_write(k).await;
            let listed = self.module.list_remove(&self.id);
            self.module.snapshots_lock.up_write(k);
            if listed.is_some() {
                self.set_state(SnapshotState::Destroyed);
            }
            self.put().await;
            return;
        }
        self.release_trackers().await;
        if self.is_taken() {
            self.set_state(SnapshotState::Created);
        }
    }

    // --- other entry points ------------------------------------------------------------

    /// `snapshot_collect_images` (spec 8.6): pairs in device order; a slot
    /// without an image is `{0, 0}`.
    pub fn image_infos(&self) -> Vec<ImageInfo> {
        let images = self.images.borrow();
        self.trackers
            .iter()
            .zip(images.iter())
            .map(|(tracker, image)| match image {
                Some(image) => ImageInfo {
                    orig_dev_id: tracker.dev_id,
                    image_dev_id: image.image_dev_id,
                },
                None => ImageInfo {
                    orig_dev_id: DevT(0),
                    image_dev_id: DevT(0),
                },
            })
            .collect()
    }

    /// `snapshot_wait_event`.
    pub async fn wait_event(&self, timeout_ns: u64) -> Result<Event, Errno> {
        self.diff_storage.event_queue.wait(timeout_ns).await
    }

    // --- release ----------------------------------------------------------------------

    /// `snapshot_release` (spec 8.8): images, trackers, diff areas, storage.
    async fn release(self: &Rc<Self>) {
        let images: Vec<_> = self
            .images
            .borrow_mut()
            .iter_mut()
            .map(Option::take)
            .collect();
        for image in images.into_iter().flatten() {
            image.free().await;
        }
        self.release_trackers().await;
        for tracker in &self.trackers {
            tracker.in_snapshot.set(false);
            tracker.put();
        }
        self.diff_storage.free();
    }

    /// Stop COW on this snapshot's trackers and put their diff areas.
    async fn release_trackers(&self) {
        let k = self.module.k();
        let frozen = self.freeze_all(|t| t.diff_area.borrow().is_some()).await;
        {
            let _noio = NoioScope::enter(k);
            self.module.tracker_submit_lock.down_write(k).await;
            for tracker in &self.trackers {
                tracker.release_snapshot();
            }
            self.module.tracker_submit_lock.up_write(k);
        }
        self.thaw(&frozen).await;
        for tracker in &self.trackers {
            let area = tracker.diff_area.borrow_mut().take();
            if let Some(area) = area {
                area.put().await;
            }
        }
    }

    /// Freeze the devices of the trackers `which` selects; a failure is only
    /// logged, as upstream does. Returns the devices frozen.
    async fn freeze_all(&self, which: impl Fn(&Tracker) -> bool) -> Vec<DevT> {
        let k = self.module.k();
        let mut frozen = Vec::new();
        for tracker in self.trackers.iter().filter(|t| which(t)) {
            match k.freeze_bdev(tracker.dev_id).await {
                Ok(()) => frozen.push(tracker.dev_id),
                Err(e) => k.log(&format!("failed to freeze {}: {e}", tracker.dev_id)),
            }
        }
        frozen
    }

    /// Thaw what this snapshot froze, and only that (the fix of B-TRK-10).
    async fn thaw(&self, frozen: &[DevT]) {
        let k = self.module.k();
        for dev in frozen {
            if let Err(e) = k.thaw_bdev(*dev).await {
                k.log(&format!("failed to thaw {dev}: {e}"));
            }
        }
    }
}

fn has_duplicates(devs: &[DevT]) -> bool {
    devs.iter()
        .enumerate()
        .any(|(i, dev)| devs[i + 1..].contains(dev))
}

/// Attach to (or reuse) the tracker of each device. A device already in a
/// listed snapshot is -EBUSY, as v4 fixed (v2 shared it: B-SNAP-6). On a
/// failure, only the references taken here are dropped (v2 released the
/// trackers in full, including other snapshots' COW: B-SNAP-7).
async fn gather_trackers(module: &Rc<Module>, devs: &[DevT]) -> Result<Vec<Rc<Tracker>>, Errno> {
    let mut trackers: Vec<Rc<Tracker>> = Vec::with_capacity(devs.len());
    for &dev in devs {
        let result = match Tracker::create_or_get(module, dev).await {
            Ok(tracker) if tracker.in_snapshot.get() => {
                tracker.put();
                Err(Errno::EBUSY)
            }
            other => other,
        };
        match result {
            Ok(tracker) => trackers.push(tracker),
            Err(e) => {
                for tracker in trackers {
                    tracker.put();
                }
                return Err(e);
            }
        }
    }
    Ok(trackers)
}
