//! The snapshot: a set of devices, their diff storage and images (v2
//! `snapshot.c`, spec 8). This is the object of the seed patch.
//!
//! Lifecycle: CREATE lists it (trackers attached, CBT running, no COW);
//! TAKE builds a diff_area per device, switches the trackers with every
//! device frozen and the submit lock write-held, then creates the images;
//! DESTROY unlists it and the last reference releases everything.
//!
//! Locks: `snapshots_lock` (module) guards the list; `take_lock` (here)
//! serializes TAKE on one snapshot, as v3's `rw_lock` does (v2 has none:
//! B-SNAP-9).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::diff_area::DiffArea;
use crate::diff_storage::DiffStorage;
use crate::event_queue::Event;
use crate::kernel::sync::Mutex;
use crate::kernel::{kmalloc, sleep_point, AllocId, DevT, Errno, Gfp, Kref, NoioScope};
use crate::module::Module;
use crate::snapimage::SnapImage;
use crate::tracker::Tracker;

pub type SnapshotId = [u8; 16];

/// Virtual time the wrapped duplicate check of B-SNAP-3 burns: about 4.3e9
/// empty iterations.
const EMPTY_CHECK_STALL_NS: u64 = 2_000_000_000;

/// Whether a snapshot is taken (asserted on each transition).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SnapshotState {
    /// Trackers attached, no COW.
    Created,
    /// COW is on and the images exist.
    Taken,
}

pub struct Snapshot {
    module: Rc<Module>,
    pub id: SnapshotId,
    refs: Kref,
    state: Cell<SnapshotState>,
    /// In the module's list (DESTROY clears it).
    listed: Cell<bool>,
    take_lock: Mutex<()>,
    pub diff_storage: Rc<DiffStorage>,
    pub trackers: Vec<Rc<Tracker>>,
    pub images: RefCell<Vec<Option<Rc<SnapImage>>>>,
    /// The struct and its arrays, given back when the snapshot is freed.
    alloc: AllocId,
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

    /// A state change. v2's unserialized TAKE (B-SNAP-9) may take a taken
    /// snapshot again; otherwise each transition must change the state.
    fn set_state(&self, next: SnapshotState) {
        let now = self.state.get();
        assert!(
            now != next || self.module.quirks.snap_9,
            "snapshot state {now:?} -> {next:?}"
        );
        self.state.set(next);
    }

    pub fn count(&self) -> usize {
        self.trackers.len()
    }

    pub fn is_listed(&self) -> bool {
        self.listed.get()
    }

    pub fn mark_unlisted(&self) {
        self.listed.set(false);
    }

    // --- references --------------------------------------------------------------

    pub fn get(&self) {
        self.refs.get();
    }

    /// Drop a reference; the last one releases the snapshot.
    pub async fn put(self: &Rc<Self>) {
        if self.refs.put(self.module.k()) {
            self.release().await;
        }
    }

    // --- CREATE --------------------------------------------------------------------

    /// `snapshot_create` (spec 8.2).
    /// The same device twice is refused by the caller on the raw numbers
    /// (ctrl `has_same_devices`), as v2 checks before MKDEV.
    pub async fn create(module: &Rc<Module>, devs: &[DevT]) -> Result<SnapshotId, Errno> {
        let k = module.k();
        if devs.is_empty() && module.quirks.snap_3 {
            // `count - 1` wraps: the duplicate check spins 2^32 times.
            k.sleep(EMPTY_CHECK_STALL_NS).await;
        }
        // The struct and its two arrays (snapshot.c:122-140), one
        // accounted allocation that lives until the snapshot is freed.
        let alloc = kmalloc(k, "snapshot", 128 + 16 * devs.len() as u64, Gfp::Kernel).await?;
        let diff_storage = match DiffStorage::new(module).await {
            Ok(storage) => storage,
            Err(e) => {
                k.kfree(alloc);
                return Err(e);
            }
        };
        let id = k.uuid_v4();
        let trackers = match gather_trackers(module, devs).await {
            Ok(trackers) => trackers,
            Err(e) => {
                diff_storage.free();
                k.kfree(alloc);
                return Err(e);
            }
        };
        let snapshot = Rc::new(Snapshot {
            module: module.clone(),
            id,
            refs: Kref::new("snapshot"),
            state: Cell::new(SnapshotState::Created),
            listed: Cell::new(true),
            take_lock: Mutex::new(k, "snapshot.rw_lock", ()),
            diff_storage,
            images: RefCell::new(vec![None; trackers.len()]),
            trackers,
            alloc,
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
        snapshot.put().await;
        Ok(())
    }

    // --- TAKE -------------------------------------------------------------------------

    /// `snapshot_take` (spec 8.3).
    pub async fn take(module: &Rc<Module>, id: &SnapshotId) -> Result<(), Errno> {
        let snapshot = Self::get_by_id(module, id).await.ok_or(Errno::ESRCH)?;
        let result = if module.quirks.snap_9 {
            snapshot.take_checked().await
        } else {
            let guard = snapshot.take_lock.lock(module.k()).await;
            let result = snapshot.take_checked().await;
            drop(guard);
            result
        };
        snapshot.put().await;
        result
    }

    async fn take_checked(self: &Rc<Self>) -> Result<(), Errno> {
        // A DESTROY that ran while this TAKE waited for the lock (the fix;
        // v2 goes on and takes an unlisted snapshot).
        if !self.is_listed() && !self.module.quirks.snap_9 {
            return Err(Errno::ESRCH);
        }
        if self.is_taken() {
            return Err(Errno::EALREADY);
        }
        if self.trackers.is_empty() {
            return Err(Errno::ENODEV);
        }
        let early = match self.build_diff_areas().await {
            Ok(()) => self.take_trackers().await,
            Err(e) => Err(e),
        };
        let early = early.and_then(|()| self.check_not_corrupted());
        if let Err(e) = early {
            self.take_failed().await;
            return Err(e);
        }
        match self.create_images().await {
            Ok(()) => Ok(()),
            // v2 leaves the snapshot taken with the images made so far, COW
            // on, until DESTROY (B-SNAP-5); the fix undoes the TAKE.
            Err(e) if self.module.quirks.snap_5 => Err(e),
            Err(e) => {
                self.free_images().await;
                self.release_trackers().await;
                self.set_state(SnapshotState::Created);
                Err(e)
            }
        }
    }

    /// A diff_area per device. A tracker still holding one is shared with
    /// another snapshot (B-SNAP-6) or taken twice at once (B-SNAP-9): v2
    /// overwrites the pointer and leaks the old area; the fix never gets
    /// here, so it is an engine bug there.
    async fn build_diff_areas(&self) -> Result<(), Errno> {
        for tracker in &self.trackers {
            let area = DiffArea::new(&self.module, tracker.dev_id, &self.diff_storage).await?;
            let old = tracker.diff_area.borrow_mut().replace(area);
            let shared = self.module.quirks.snap_6 || self.module.quirks.snap_9;
            if old.is_some() && !shared {
                self.module
                    .k()
                    .warn(&format!("diff_area of {} overwritten", tracker.dev_id));
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
            let result = self.switch_trackers().await;
            self.module.tracker_submit_lock.up_write(k);
            result
        };
        // v2 thaws every device, also those whose freeze failed, which can
        // undo a freeze the user made (B-TRK-10).
        if self.module.quirks.trk_10 {
            let all: Vec<DevT> = self.trackers.iter().map(|t| t.dev_id).collect();
            self.thaw(&all).await;
        } else {
            self.thaw(&frozen).await;
        }
        result
    }

    async fn switch_trackers(&self) -> Result<(), Errno> {
        for (i, tracker) in self.trackers.iter().enumerate() {
            if let Err(e) = tracker.take_snapshot().await {
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
            let area = t.diff_area.borrow().clone();
            if area.is_none() {
                t.null_diff_area_oops("snapshot_take");
            }
            area.is_some_and(|area| area.is_corrupted())
        });
        if corrupted {
            return Err(Errno::EFAULT);
        }
        Ok(())
    }

    /// Images in device order; stops at the first failure.
    async fn create_images(&self) -> Result<(), Errno> {
        for (i, tracker) in self.trackers.iter().enumerate() {
            let area = tracker.diff_area.borrow().clone();
            if area.is_none() {
                tracker.null_diff_area_oops("snapimage_create");
            }
            let area = area.ok_or(Errno::EFAULT)?;
            let image = SnapImage::create(&self.module, &area, &tracker.cbt_map).await?;
            self.images.borrow_mut()[i] = Some(image);
        }
        Ok(())
    }

    /// The failure path before images exist. v2 unlists the snapshot and
    /// drops the list's reference, destroying it (B-SNAP-10), even when a
    /// DESTROY already unlisted it (B-SNAP-4: list_del of poisoned pointers
    /// and one put too many). The fix releases the trackers and keeps it.
    async fn take_failed(self: &Rc<Self>) {
        let quirks = self.module.quirks;
        if quirks.snap_10 || quirks.snap_4 {
            let k = self.module.k();
            self.module.snapshots_lock.down_write(k).await;
            let listed = self.module.list_remove(&self.id).is_some();
            self.module.snapshots_lock.up_write(k);
            if !listed && quirks.snap_4 {
                self.module
                    .k()
                    .warn("list_del corruption: snapshot already unlisted (B-SNAP-4)");
                self.put().await;
                return;
            }
            if listed {
                self.put().await;
            }
            return;
        }
        self.release_trackers().await;
        if self.is_taken() {
            self.set_state(SnapshotState::Created);
        }
    }

    // --- other entry points ------------------------------------------------------------

    /// `snapshot_collect_images` (spec 8.6): pairs in device order; a slot
    /// without an image keeps the original and reports image 0:0.
    pub fn image_infos(&self) -> Vec<ImageInfo> {
        let images = self.images.borrow();
        self.trackers
            .iter()
            .zip(images.iter())
            .map(|(tracker, image)| ImageInfo {
                orig_dev_id: tracker.dev_id,
                image_dev_id: image.as_ref().map_or(DevT(0), |i| i.image_dev_id),
            })
            .collect()
    }

    /// `snapshot_wait_event`.
    pub async fn wait_event(&self, timeout_ns: u64) -> Result<Event, Errno> {
        self.diff_storage.event_queue.wait(timeout_ns).await
    }

    // --- release ----------------------------------------------------------------------

    /// `snapshot_release` (spec 8.8): images, the COW switch-off, then per
    /// tracker its diff_area and the tracker itself (snapshot.c:79-90),
    /// then the storage.
    async fn release(self: &Rc<Self>) {
        self.free_images().await;
        self.release_trackers().await;
        for tracker in &self.trackers {
            put_diff_area(tracker).await;
            tracker.unclaim();
            tracker.put();
        }
        self.diff_storage.free();
        self.module.k().kfree(self.alloc);
    }

    async fn free_images(&self) {
        let images: Vec<_> = self
            .images
            .borrow_mut()
            .iter_mut()
            .map(Option::take)
            .collect();
        for image in images.into_iter().flatten() {
            image.free().await;
        }
    }

    /// Stop COW on this snapshot's trackers and put their diff areas (the
    /// TAKE failure paths, which keep the trackers).
    async fn release_trackers(&self) {
        release_trackers(&self.module, &self.trackers).await;
        for tracker in &self.trackers {
            put_diff_area(tracker).await;
        }
    }

    /// Freeze the devices of the trackers `which` selects; a failure is only
    /// logged, as upstream does. Returns the devices frozen.
    async fn freeze_all(&self, which: impl Fn(&Tracker) -> bool) -> Vec<DevT> {
        freeze_all(&self.module, &self.trackers, which).await
    }

    async fn thaw(&self, devs: &[DevT]) {
        thaw(&self.module, devs).await;
    }
}

/// `snapshot_release_trackers` (snapshot.c:17-61): freeze the devices
/// with a diff_area, clear `snapshot_is_taken` on the trackers `which`
/// selects under the write side of `tracker_submit_lock` (a barrier: it
/// waits for every bio in flight on every tracked device, and NOWAIT bios
/// meanwhile would block), thaw.
async fn release_trackers_where(
    module: &Rc<Module>,
    trackers: &[Rc<Tracker>],
    which: impl Fn(&Tracker) -> bool,
) {
    let k = module.k();
    let frozen = freeze_all(module, trackers, |t| t.diff_area.borrow().is_some()).await;
    {
        let _noio = NoioScope::enter(k);
        module.tracker_submit_lock.down_write(k).await;
        for tracker in trackers.iter().filter(|t| which(t)) {
            tracker.release_snapshot();
        }
        module.tracker_submit_lock.up_write(k);
    }
    thaw(module, &frozen).await;
}

async fn release_trackers(module: &Rc<Module>, trackers: &[Rc<Tracker>]) {
    release_trackers_where(module, trackers, |_| true).await;
}

/// `diff_area_put(tracker->diff_area); tracker->diff_area = NULL`.
async fn put_diff_area(tracker: &Tracker) {
    let area = tracker.diff_area.borrow_mut().take();
    if let Some(area) = area {
        area.put().await;
    }
}

async fn freeze_all(
    module: &Rc<Module>,
    trackers: &[Rc<Tracker>],
    which: impl Fn(&Tracker) -> bool,
) -> Vec<DevT> {
    let k = module.k();
    let mut frozen = Vec::new();
    for tracker in trackers.iter().filter(|t| which(t)) {
        match k.freeze_bdev(tracker.dev_id).await {
            Ok(()) => frozen.push(tracker.dev_id),
            Err(e) => k.log(&format!("failed to freeze {}: {e}", tracker.dev_id)),
        }
    }
    frozen
}

async fn thaw(module: &Rc<Module>, devs: &[DevT]) {
    let k = module.k();
    for dev in devs {
        // thaw_bdev sleeps (bd_fsfreeze_mutex, the file system's unfreeze):
        // writers blocked on the freeze may run from here on.
        sleep_point(k, "snapshot_take.thaw_bdev").await;
        if let Err(e) = k.thaw_bdev(*dev).await {
            k.log(&format!("failed to thaw {dev}: {e}"));
        }
    }
}

/// Attach to (or reuse) the tracker of each device. A device already in a
/// listed snapshot is -EBUSY, as v4 fixed (v2 shared it: B-SNAP-6); the
/// claim is made at once, so two CREATEs cannot both win a device.
async fn gather_trackers(module: &Rc<Module>, devs: &[DevT]) -> Result<Vec<Rc<Tracker>>, Errno> {
    let mut trackers: Vec<Rc<Tracker>> = Vec::with_capacity(devs.len());
    for &dev in devs {
        let result = match Tracker::create_or_get(module, dev).await {
            Ok(tracker)
                if (tracker.in_snapshot() && !module.quirks.snap_6)
                    || tracker.detaching.get()
                    || tracker.detached.get() =>
            {
                tracker.put();
                Err(Errno::EBUSY)
            }
            other => other,
        };
        match result {
            Ok(tracker) => {
                tracker.claim();
                trackers.push(tracker);
            }
            Err(e) => {
                drop_gathered(module, trackers).await;
                return Err(e);
            }
        }
    }
    Ok(trackers)
}

/// Undo a half-built CREATE. Every failed CREATE runs v2's release path
/// (snapshot.c:253-257 -> 17-90), with its global barrier on
/// `tracker_submit_lock`. v2 also stops COW on trackers another snapshot
/// took and puts that snapshot's diff areas (B-SNAP-7); the fix touches
/// only the trackers no other snapshot owns.
async fn drop_gathered(module: &Rc<Module>, trackers: Vec<Rc<Tracker>>) {
    let all = module.quirks.snap_7;
    release_trackers_where(module, &trackers, |t| all || t.owners.get() == 1).await;
    for tracker in trackers {
        if all {
            put_diff_area(&tracker).await;
        }
        tracker.unclaim();
        tracker.put();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testing::{dev, run, setup, Ctl, TestKernel, IMAGE_MAJOR, MIB};
    use crate::kernel::{Kernel, TaskKind};

    use crate::uapi::{BlkSnapSnapshotCollect, UapiStruct, IOCTL_BLK_SNAP_SNAPSHOT_COLLECT};

    fn snapshot(ctl: &Ctl, id: &SnapshotId) -> Rc<Snapshot> {
        let found = ctl
            .module
            .snapshots
            .borrow()
            .iter()
            .find(|s| s.id == *id)
            .cloned();
        found.expect("listed")
    }

    #[test]
    fn create_lists_a_snapshot_with_its_trackers_and_no_cow() {
        let (k, ctl) = setup(&[]);
        let id = run(&k, ctl.create(&[dev(0), dev(1)])).unwrap();
        let s = snapshot(&ctl, &id);
        assert_eq!(s.state(), SnapshotState::Created);
        assert!(s.is_listed() && !s.is_taken());
        assert_eq!(s.count(), 2);
        assert_eq!(s.trackers[1].dev_id, dev(1));
        assert_eq!(s.image_infos()[0].image_dev_id, DevT(0));
        assert_eq!(s.diff_storage.counters().requested, 2_097_152);
        assert_eq!(s.diff_storage.event_queue.pending(), 1);
    }

    #[test]
    fn duplicates_are_einval_and_a_failed_create_undoes_its_trackers() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            assert_eq!(
                ctl.create(&[dev(0), dev(1), dev(0)]).await,
                Err(Errno::EINVAL)
            );
            assert_eq!(ctl.create(&[dev(0), dev(9)]).await, Err(Errno::ENXIO));
            k.settle().await;
        });
        // dev(0) was attached and stays tracked, owned by nobody.
        let t = ctl.module.tracker_lookup(dev(0)).unwrap();
        assert_eq!(t.refs(), 1);
        assert!(!t.in_snapshot());
        assert!(k.open_bdevs().is_empty());
        assert!(ctl.module.snapshots.borrow().is_empty());
    }

    #[test]
    fn an_empty_snapshot_cannot_be_taken() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 8)]).await.unwrap();
            assert_eq!(ctl.take(&id).await, Err(Errno::ENODEV));
            ctl.destroy(&id).await.unwrap();
        });
        assert_eq!(k.now(), 0);
    }

    #[test]
    fn quirk_snap_3_an_empty_create_spins() {
        let (k, ctl) = setup(&["B-SNAP-3"]);
        run(&k, ctl.create(&[])).unwrap();
        assert_eq!(k.now(), 2_000_000_000);
    }

    #[test]
    fn take_switches_the_trackers_with_the_devices_frozen() {
        let (k, ctl) = setup(&[]);
        let id = run(&k, async {
            let id = ctl.create(&[dev(0), dev(1)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            id
        });
        let before = k.events().len();
        run(&k, ctl.take(&id)).unwrap();
        assert_eq!(
            k.events()[before..],
            [
                "freeze 8:0",
                "freeze 8:1",
                "thaw 8:0",
                "thaw 8:1",
                "add_disk blksnap-image0 252:0 131072",
                "add_disk blksnap-image1 252:1 131072",
            ]
        );
        let s = snapshot(&ctl, &id);
        assert_eq!(s.state(), SnapshotState::Taken);
        for t in &s.trackers {
            assert!(t.snapshot_is_taken.get());
            assert!(t.diff_area.borrow().is_some());
            t.cbt_map
                .state
                .with(|c| assert_eq!(c.snap_number_previous, 1));
        }
        assert!(!k.current_noio(), "the noio scope is closed again");
        assert_eq!(k.contended("tracker_submit_lock"), 0);
    }

    #[test]
    fn a_failed_freeze_is_not_thawed_unless_b_trk_10() {
        for (quirk, thawed) in [(&[][..], false), (&["B-TRK-10"][..], true)] {
            let (k, ctl) = setup(quirk);
            k.set_freeze_fails(dev(0), true);
            run(&k, async {
                let id = ctl.create(&[dev(0)]).await.unwrap();
                ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
                let before = k.events().len();
                ctl.take(&id).await.unwrap();
                let events = k.events()[before..].to_vec();
                assert_eq!(
                    events.contains(&"thaw 8:0".to_string()),
                    thawed,
                    "{quirk:?}"
                );
            });
        }
    }

    #[test]
    fn concurrent_takes_are_serialized() {
        let (k, ctl) = setup(&[]);
        let ctl = Rc::new(ctl);
        let id = run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            id
        });
        let other = Rc::new(std::cell::RefCell::new(None));
        let (ctl2, other2) = (ctl.clone(), other.clone());
        k.spawn(
            TaskKind::Work,
            "second TAKE".into(),
            Box::pin(async move {
                *other2.borrow_mut() = Some(ctl2.take(&id).await);
            }),
        );
        let mine = run(&k, async {
            let mine = ctl.take(&id).await;
            k.settle().await;
            mine
        });
        let mut results = vec![mine, other.borrow().unwrap()];
        results.sort();
        assert_eq!(results, vec![Ok(()), Err(Errno::EALREADY)]);
        assert_eq!(k.disk_devs().len(), 1);
        assert!(k.warns().is_empty(), "{:?}", k.warns());
    }

    #[test]
    fn a_failed_image_creation_undoes_the_take() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0), dev(1)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            k.fail_site_times("add_disk", 1);
            assert_eq!(ctl.take(&id).await, Err(Errno::ENOMEM));
            let s = snapshot(&ctl, &id);
            assert_eq!(s.state(), SnapshotState::Created);
            assert!(s.trackers.iter().all(|t| !t.snapshot_is_taken.get()));
            assert!(s.trackers.iter().all(|t| t.diff_area.borrow().is_none()));
            assert!(k.disk_devs().is_empty());
            assert_eq!(ctl.collect_images(&id).await, Err(Errno::ENODEV));
            // A second try works, and gets the minors from 0 again.
            ctl.take(&id).await.unwrap();
            let images = ctl.collect_images(&id).await.unwrap();
            assert_eq!(images[0].1, DevT::new(IMAGE_MAJOR, 0));
        });
        assert!(k.warns().is_empty(), "{:?}", k.warns());
    }

    #[test]
    fn quirk_snap_5_a_failed_image_creation_leaves_a_half_taken_snapshot() {
        let (k, ctl) = setup(&["B-SNAP-5"]);
        run(&k, async {
            let id = ctl.create(&[dev(0), dev(1)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            // The first image is made, the second fails.
            k.fail_site_nth("add_disk", 2);
            assert_eq!(ctl.take(&id).await, Err(Errno::ENOMEM));
            assert!(snapshot(&ctl, &id).is_taken());
            let images = ctl.collect_images(&id).await.unwrap();
            let image0 = DevT::new(IMAGE_MAJOR, 0);
            assert_eq!(images, vec![(dev(0), image0), (dev(1), DevT(0))]);
            assert_eq!(k.disk_devs(), vec![image0]);
            assert_eq!(ctl.take(&id).await, Err(Errno::EALREADY));
            ctl.destroy(&id).await.unwrap();
        });
    }

    #[test]
    fn a_device_belongs_to_one_snapshot() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let first = ctl.create(&[dev(0)]).await.unwrap();
            assert_eq!(ctl.create(&[dev(0)]).await, Err(Errno::EBUSY));
            ctl.destroy(&first).await.unwrap();
            ctl.create(&[dev(0)]).await.unwrap();
        });
    }

    #[test]
    fn destroy_releases_images_diff_areas_and_storage() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0), dev(1)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            k.user_write(dev(0), 0, vec![5; 8]).await.unwrap();
            let s = snapshot(&ctl, &id);
            ctl.destroy(&id).await.unwrap();
            k.settle().await;
            assert!(!s.is_listed());
            assert!(s.images.borrow().iter().all(Option::is_none));
            for t in &s.trackers {
                assert!(!t.snapshot_is_taken.get() && !t.in_snapshot());
                assert!(t.diff_area.borrow().is_none());
                assert_eq!(t.refs(), 1, "only the attachment is left");
            }
        });
        assert!(k.disk_devs().is_empty());
        assert!(k.open_bdevs().is_empty(), "{:?}", k.open_bdevs());
        // What stays is the trackers (still attached), their CBT and list
        // entries.
        let sites: Vec<&str> = k.live_allocs().iter().map(|(s, _)| *s).collect();
        let attached = |s: &&str| s.starts_with("cbt_map") || s.starts_with("tracke");
        assert!(sites.iter().all(attached), "{sites:?}");
        assert!(k.task_names().is_empty(), "{:?}", k.task_names());
        // After DESTROY the write is not copied any more.
        run(&k, k.user_write(dev(0), 512, vec![6; 8])).unwrap();
        assert!(k.warns().is_empty(), "{:?}", k.warns());
    }

    #[test]
    fn a_destroy_waits_for_an_ioctl_holding_a_reference() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            let held = Snapshot::get_by_id(&ctl.module, &id).await.unwrap();
            ctl.destroy(&id).await.unwrap();
            assert!(held.trackers[0].in_snapshot(), "not released yet");
            held.put().await;
            assert!(!held.trackers[0].in_snapshot());
        });
    }

    /// A TAKE held at the tracker switch (the submit lock is write-held by
    /// the test) while DESTROY runs; `fail` makes the switch fail once it
    /// goes on (the device grew, and the CBT reset cannot allocate).
    fn take_racing_destroy(
        quirk_ids: &[&str],
        fail: bool,
    ) -> (Rc<TestKernel>, Ctl, Option<Result<(), Errno>>) {
        let (k, ctl) = setup(quirk_ids);
        let ctl = Rc::new(ctl);
        let result = Rc::new(std::cell::RefCell::new(None));
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            let lock = &ctl.module.tracker_submit_lock;
            lock.down_write(&*k).await;
            let (ctl2, result2) = (ctl.clone(), result.clone());
            k.spawn(
                TaskKind::Work,
                "TAKE".into(),
                Box::pin(async move {
                    *result2.borrow_mut() = Some(ctl2.take(&id).await);
                }),
            );
            k.settle().await;
            assert_eq!(
                k.contended("tracker_submit_lock"),
                1,
                "TAKE waits at the switch"
            );
            ctl.destroy(&id).await.unwrap();
            if fail {
                k.resize_device(dev(0), 65 * MIB);
                k.fail_site("cbt_map.read_map");
            }
            lock.up_write(&*k);
            k.settle().await;
        });
        let result = *result.borrow();
        let ctl = Rc::try_unwrap(ctl).ok().expect("the TAKE task is done");
        (k, ctl, result)
    }

    #[test]
    fn a_take_that_destroy_overtook_leaves_nothing_behind() {
        let (k, ctl, result) = take_racing_destroy(&[], false);
        assert_eq!(result, Some(Ok(())));
        assert!(ctl.module.snapshots.borrow().is_empty());
        assert!(
            k.disk_devs().is_empty(),
            "the images went with the last reference"
        );
        assert_eq!(k.open_bdevs(), Vec::<DevT>::new());
        assert!(k.task_names().is_empty(), "{:?}", k.task_names());
        assert!(k.warns().is_empty(), "{:?}", k.warns());
    }

    #[test]
    fn a_failing_take_after_a_destroy_does_not_unlist_twice() {
        let (k, ctl, result) = take_racing_destroy(&[], true);
        assert_eq!(result, Some(Err(Errno::ENOMEM)));
        assert!(k.warns().is_empty(), "{:?}", k.warns());
        let t = ctl.module.tracker_lookup(dev(0)).unwrap();
        assert_eq!(t.refs(), 1);
        assert!(!t.snapshot_is_taken.get() && t.diff_area.borrow().is_none());
        assert_eq!(k.open_bdevs(), Vec::<DevT>::new());
    }

    #[test]
    fn quirk_snap_4_a_failing_take_after_a_destroy_puts_once_too_often() {
        let (k, _ctl, result) = take_racing_destroy(&["B-SNAP-4"], true);
        assert_eq!(result, Some(Err(Errno::ENOMEM)));
        let warns = k.warns();
        assert!(
            warns.iter().any(|w| w.contains("list_del corruption")),
            "{warns:?}"
        );
        assert!(warns.iter().any(|w| w.contains("underflow")), "{warns:?}");
    }

    #[test]
    fn quirk_snap_6_a_failed_create_leaves_no_owner() {
        let (k, ctl) = setup(&["B-SNAP-6"]);
        run(&k, async {
            assert_eq!(ctl.create(&[dev(0), dev(9)]).await, Err(Errno::ENXIO));
            // No snapshot owns dev(0): v2 and the fix both let it go.
            assert_eq!(ctl.tracker_remove(dev(0)).await, Ok(()));
        });
    }

    #[test]
    fn quirk_snap_1_a_second_create_loses_the_first() {
        let (k, ctl) = setup(&["B-SNAP-1"]);
        run(&k, async {
            let first = ctl.create(&[dev(0)]).await.unwrap();
            let second = ctl.create(&[dev(1)]).await.unwrap();
            assert_eq!(ctl.collect().await, Ok(vec![second]));
            assert_eq!(ctl.take(&first).await, Err(Errno::ESRCH));
            assert_eq!(ctl.destroy(&first).await, Err(Errno::ENODEV));
        });
        assert_eq!(ctl.module.lost_snapshots.borrow().len(), 1);
    }

    #[test]
    fn quirk_snap_8_collect_reports_the_copied_count() {
        let (k, ctl) = setup(&["B-SNAP-8"]);
        run(&k, async {
            ctl.create(&[dev(0)]).await.unwrap();
            ctl.create(&[dev(1)]).await.unwrap();
            let arg = BlkSnapSnapshotCollect {
                count: 1,
                ids: ctl.user.map(vec![0; 16]),
            };
            let addr = ctl.user.map(arg.encode());
            let cmd = IOCTL_BLK_SNAP_SNAPSHOT_COLLECT;
            assert_eq!(ctl.ioctl(cmd, addr).await, Err(Errno::ENODATA));
            let back = BlkSnapSnapshotCollect::decode(&ctl.user.read(addr, 16)).unwrap();
            assert_eq!(back.count, 1, "the number copied, not the number needed");
        });
    }
}
