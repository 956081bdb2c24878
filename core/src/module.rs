//! The loaded module: its parameters, quirks and global state (v2 `main.c`
//! plus the globals of `tracker.c`, `snapshot.c` and `snapimage.c`).
//!
//! Upstream keeps these as C globals; here they live in one object so that
//! a host can load the module, unload it and load it again in one process.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use crate::cbt_map::CbtMap;
use crate::kernel::sync::{RwSem, SpinLock};
use crate::kernel::{AllocId, DevT, Errno, Gfp, Kernel};
use crate::params::Params;
use crate::quirks::Quirks;
use crate::snapshot::Snapshot;
use crate::tracker::Tracker;

/// Shared by every engine object.
pub struct Module {
    pub kernel: Rc<dyn Kernel>,
    /// Read at each use, so a scenario may change them at run time.
    pub params: RefCell<Params>,
    pub quirks: Quirks,
    /// `tracker_submit_lock`: read side around every filtered bio, write side
    /// around the CBT switch of TAKE and the release of a snapshot.
    pub tracker_submit_lock: RwSem,
    /// `tracked_device_list`: every device ever attached, in order.
    pub tracked_devices: SpinLock<Vec<crate::tracker::TrackedDevice>>,
    /// `snapshots_lock` and the `snapshots` list.
    pub snapshots_lock: RwSem,
    pub snapshots: RefCell<Vec<Rc<Snapshot>>>,
    /// Snapshots that B-SNAP-1 made unreachable; they keep their references.
    pub lost_snapshots: RefCell<Vec<Rc<Snapshot>>>,
    /// Live trackers (v2 `trackers_counter` minus its initial 1).
    pub trackers_alive: Cell<u64>,
    /// Set when module exit has destroyed the bio set (B-TRK-9 ordering).
    pub bioset_destroyed: Cell<bool>,
    /// What module init allocated (the bio set, the control device), given
    /// back at exit.
    init_allocs: RefCell<Vec<AllocId>>,
    /// The image minor IDA.
    image_minors: RefCell<BTreeSet<u32>>,
}

/// Every allocation site of the engine, as fault plans name them.
pub const ALLOC_SITES: &[&str] = &[
    "snapshot",
    "diff_storage",
    "tracker",
    "cbt_map.read_map",
    "cbt_map.write_map",
    "diff_area",
    "diff_buffer",
    "diff_io",
    "diff_region",
    "event",
    "module.bioset",
    "module.ctrl_device",
    "storage_bdev",
    "storage_block",
    "collect_images",
    "wait_event",
    "snapimage",
];

/// The largest image minor (`IDA` over [0, 2^20 - 1]).
pub const IMAGE_MINOR_MAX: u32 = (1 << 20) - 1;

impl Module {
    /// `blksnap_init`.
    pub fn new(kernel: Rc<dyn Kernel>, params: Params, quirks: Quirks) -> Rc<Module> {
        let tracker_submit_lock = RwSem::new(&*kernel, "tracker_submit_lock");
        let snapshots_lock = RwSem::new(&*kernel, "snapshots_lock");
        Rc::new(Module {
            kernel,
            params: RefCell::new(params),
            quirks,
            tracker_submit_lock,
            tracked_devices: SpinLock::new(Vec::new()),
            snapshots_lock,
            snapshots: RefCell::new(Vec::new()),
            lost_snapshots: RefCell::new(Vec::new()),
            trackers_alive: Cell::new(0),
            bioset_destroyed: Cell::new(false),
            init_allocs: RefCell::new(Vec::new()),
            image_minors: RefCell::new(BTreeSet::new()),
        })
    }

    /// `blksnap_init`, with what can fail in it: the diff_io bio set and
    /// the control device. v2 does not undo the first when the second
    /// fails (B-INIT-1); the fix gives it back.
    pub fn init(
        kernel: Rc<dyn Kernel>,
        params: Params,
        quirks: Quirks,
    ) -> Result<Rc<Module>, Errno> {
        let module = Module::new(kernel, params, quirks);
        for site in ["module.bioset", "module.ctrl_device"] {
            match module.k().kmalloc(site, 4096, Gfp::Kernel) {
                Ok(alloc) => module.init_allocs.borrow_mut().push(alloc),
                Err(e) => {
                    if !quirks.init_1 {
                        module.free_init_allocs();
                    }
                    return Err(e);
                }
            }
        }
        Ok(module)
    }

    fn free_init_allocs(&self) {
        for alloc in self.init_allocs.borrow_mut().drain(..) {
            self.k().kfree(alloc);
        }
    }

    pub fn k(&self) -> &dyn Kernel {
        &*self.kernel
    }

    pub fn params(&self) -> Params {
        self.params.borrow().clone()
    }

    /// The tracker attached to `dev`, with no new reference: v2's
    /// `container_of(bdev->bd_filter, struct tracker, flt)`. The filter is
    /// the only record, so a released tracker whose free work is still
    /// queued is never found (f17 came from a second, typed map).
    pub fn tracker_lookup(&self, dev: DevT) -> Option<Rc<Tracker>> {
        Rc::downcast::<Tracker>(self.k().filter_get(dev)?.into_any()).ok()
    }

    /// Add a snapshot to the list, with the snapshots lock write-held. v2
    /// swaps the arguments of `list_add_tail` (B-SNAP-1): the list then
    /// holds only the new snapshot and the others are unreachable, yet never
    /// freed, so they move to `lost_snapshots`.
    pub fn list_add(&self, snapshot: Rc<Snapshot>) {
        let mut list = self.snapshots.borrow_mut();
        if self.quirks.snap_1 {
            self.lost_snapshots.borrow_mut().append(&mut list);
        }
        list.push(snapshot);
    }

    /// Unlist a snapshot by id, with the snapshots lock write-held.
    pub fn list_remove(&self, id: &[u8; 16]) -> Option<Rc<Snapshot>> {
        let mut list = self.snapshots.borrow_mut();
        let index = list.iter().position(|s| s.id == *id)?;
        let snapshot = list.remove(index);
        snapshot.mark_unlisted();
        Some(snapshot)
    }

    /// The ids of the listed snapshots, in list order.
    pub async fn snapshot_ids(&self) -> Vec<[u8; 16]> {
        self.snapshots_lock.down_read(self.k()).await;
        let ids = self.snapshots.borrow().iter().map(|s| s.id).collect();
        self.snapshots_lock.up_read(self.k());
        ids
    }

    /// MARK_DIRTY_BLOCKS on an image device: find the image among the listed
    /// snapshots and mark the CBT it shares with its tracker. v2 reads every
    /// slot without a NULL test, an oops with `snapshots_lock` held, and
    /// returns 0 for an empty list (B-SNAP-2); the fix skips empty slots and
    /// answers -ENODEV when no image matches.
    pub async fn mark_dirty_image(&self, dev: DevT, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        self.snapshots_lock.down_read(self.k()).await;
        let v2 = self.quirks.snap_2;
        if v2 && self.snapshots.borrow().is_empty() {
            self.snapshots_lock.up_read(self.k());
            return Ok(());
        }
        let cbt = if v2 {
            self.image_cbt_v2(dev)
        } else {
            self.snapshots.borrow().iter().find_map(|snapshot| {
                let images = snapshot.images.borrow();
                let slot = images
                    .iter()
                    .position(|image| image.as_ref().is_some_and(|i| i.image_dev_id == dev))?;
                Some(snapshot.trackers[slot].cbt_map.clone())
            })
        };
        let result = match cbt {
            Some(cbt) => cbt.set_both(ranges),
            None => Err(Errno::ENODEV),
        };
        self.snapshots_lock.up_read(self.k());
        result
    }

    /// The v2 image lookup (B-SNAP-2): the `break` leaves only the slot
    /// loop, so every listed snapshot is scanned, a later match replaces an
    /// earlier one, and any NULL slot met on the way is dereferenced, also
    /// after a match.
    fn image_cbt_v2(&self, dev: DevT) -> Option<Rc<CbtMap>> {
        let mut found = None;
        for snapshot in self.snapshots.borrow().iter() {
            for (slot, image) in snapshot.images.borrow().iter().enumerate() {
                let image = image.as_ref().expect(
                    "BUG: kernel NULL pointer dereference in snapshot_mark_dirty_blocks (B-SNAP-2)",
                );
                if image.image_dev_id == dev {
                    found = Some(snapshot.trackers[slot].cbt_map.clone());
                    break;
                }
            }
        }
        found
    }

    /// `ida_alloc_max`: the lowest free minor.
    pub fn image_minor_alloc(&self) -> Result<u32, Errno> {
        let mut used = self.image_minors.borrow_mut();
        let minor = (0..=IMAGE_MINOR_MAX)
            .find(|m| !used.contains(m))
            .ok_or(Errno::ENOSPC)?;
        used.insert(minor);
        Ok(minor)
    }

    pub fn image_minor_free(&self, minor: u32) {
        let removed = self.image_minors.borrow_mut().remove(&minor);
        assert!(removed, "image minor {minor} freed twice");
    }
}

/// Module exit polls the tracker count once a second (the C sleeps `HZ`
/// jiffies per round).
const EXIT_POLL_NS: u64 = 1_000_000_000;
/// A warning round ends when strictly more than this has passed since the
/// last one (the C compares `jiffies_64 > start + 10*HZ`, so with 1 s polls
/// a round is 11 polls).
const EXIT_ROUND_NS: u64 = 10_000_000_000;
/// Rounds that only log before v2 WARNs (and the fix gives up).
const EXIT_QUIET_ROUNDS: u32 = 12;
/// When the fix gives up: the 13th round ends after 13 x 11 polls.
#[cfg(test)]
const EXIT_WAIT_NS: u64 = 13 * 11 * EXIT_POLL_NS;

/// `blksnap_exit`: destroy the listed snapshots, detach every tracker and
/// wait for them to be freed.
pub async fn exit(module: &Rc<Module>) {
    let k = module.k();
    if module.quirks.trk_9 {
        // v2 tears the bio set down before the snapshots (B-TRK-9).
        module.bioset_destroyed.set(true);
    }
    let ids: Vec<[u8; 16]> = module.snapshot_ids().await;
    for id in ids {
        let _ = Snapshot::destroy(module, &id).await;
    }
    let devs: Vec<DevT> = module
        .tracked_devices
        .with(|list| list.iter().map(|e| e.dev_id).collect());
    for dev in devs {
        if let Err(e) = Tracker::remove(module, dev).await {
            k.log(&format!("unload: cannot remove tracker of {dev}: {e}"));
        }
    }
    // `tracker_done` frees every entry still listed (stale ones too).
    let left = module.tracked_devices.with(std::mem::take);
    for entry in left {
        entry.free(k);
    }
    wait_for_trackers(module).await;
    module.bioset_destroyed.set(true);
    module.free_init_allocs();
}

/// `tracker_wait_for_release`: poll every second; each 10 s round logs, and
/// the 13th round WARNs once. v2 then loops for ever (B-TRK-8); the fix
/// gives up at that same point, leaving the leak for the resource checks
/// to report.
async fn wait_for_trackers(module: &Rc<Module>) {
    let k = module.k();
    let mut round_start = k.now_ns();
    let mut rounds = 0u32;
    while module.trackers_alive.get() > 0 {
        k.sleep(EXIT_POLL_NS).await;
        if k.now_ns() <= round_start + EXIT_ROUND_NS {
            continue;
        }
        round_start = k.now_ns();
        rounds = rounds.saturating_add(1);
        if rounds <= EXIT_QUIET_ROUNDS {
            k.log("unload: waiting for trackers release");
        } else if !module.quirks.trk_8 {
            k.warn(&format!(
                "unload: {} tracker(s) were never released",
                module.trackers_alive.get()
            ));
            return;
        } else if rounds == EXIT_QUIET_ROUNDS + 1 {
            // WARN_ONCE, and v2 keeps waiting.
            k.warn("Failed to release trackers (B-TRK-8)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testing::{dev, load, quirks, run, Ctl, TestKernel, IMAGE_MAJOR};

    const MIB: u64 = 2048; // sectors

    fn setup(quirk_ids: &[&str]) -> (Rc<TestKernel>, Ctl) {
        let k = TestKernel::new();
        for d in [dev(0), dev(1)] {
            k.add_device(d, 64 * MIB);
        }
        k.add_device(dev(16), 256 * MIB);
        let module = load(&k, Params::default(), quirks(quirk_ids));
        (k, Ctl::new(&module))
    }

    #[test]
    fn image_minors_are_the_lowest_free() {
        let (_k, ctl) = setup(&[]);
        let m = &ctl.module;
        assert_eq!(m.image_minor_alloc(), Ok(0));
        assert_eq!(m.image_minor_alloc(), Ok(1));
        assert_eq!(m.image_minor_alloc(), Ok(2));
        m.image_minor_free(1);
        assert_eq!(m.image_minor_alloc(), Ok(1));
        assert_eq!(m.image_minor_alloc(), Ok(3));
        m.image_minor_free(0);
        m.image_minor_free(3);
        assert_eq!(m.image_minor_alloc(), Ok(0));
        assert_eq!(m.image_minor_alloc(), Ok(3));
    }

    #[test]
    #[should_panic(expected = "image minor 4 freed twice")]
    fn freeing_a_minor_twice_panics() {
        let (_k, ctl) = setup(&[]);
        for _ in 0..5 {
            ctl.module.image_minor_alloc().unwrap();
        }
        ctl.module.image_minor_free(4);
        ctl.module.image_minor_free(4);
    }

    #[test]
    fn every_create_is_listed_in_order() {
        let (k, ctl) = setup(&[]);
        let ids = run(&k, async {
            let a = ctl.create(&[dev(0)]).await.unwrap();
            let b = ctl.create(&[dev(1)]).await.unwrap();
            vec![a, b]
        });
        assert_eq!(run(&k, ctl.module.snapshot_ids()), ids);
        assert!(ctl.module.lost_snapshots.borrow().is_empty());
        let removed = ctl.module.list_remove(&ids[0]).unwrap();
        assert!(!removed.is_listed());
        assert!(ctl.module.list_remove(&ids[0]).is_none());
        assert_eq!(run(&k, ctl.module.snapshot_ids()), vec![ids[1]]);
    }

    #[test]
    fn quirk_snap_1_list_add_keeps_only_the_newest() {
        let (k, ctl) = setup(&["B-SNAP-1"]);
        let (a, b) = run(&k, async {
            (
                ctl.create(&[dev(0)]).await.unwrap(),
                ctl.create(&[dev(1)]).await.unwrap(),
            )
        });
        assert_eq!(run(&k, ctl.module.snapshot_ids()), vec![b]);
        let lost: Vec<_> = ctl
            .module
            .lost_snapshots
            .borrow()
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(lost, vec![a]);
    }

    #[test]
    fn trackers_are_found_by_device() {
        let (k, ctl) = setup(&[]);
        assert!(ctl.module.tracker_lookup(dev(0)).is_none());
        run(&k, ctl.create(&[dev(0)])).unwrap();
        let tracker = ctl.module.tracker_lookup(dev(0)).unwrap();
        assert_eq!(tracker.dev_id, dev(0));
        assert!(ctl.module.tracker_lookup(dev(1)).is_none());
    }

    #[test]
    fn image_mark_dirty_without_snapshots_is_enodev() {
        let (k, ctl) = setup(&[]);
        let image = DevT::new(IMAGE_MAJOR, 0);
        assert_eq!(
            run(&k, ctl.module.mark_dirty_image(image, &[(0, 8)])),
            Err(Errno::ENODEV)
        );
        // A created, untaken snapshot has no image: skipped, not an oops.
        run(&k, ctl.create(&[dev(0)])).unwrap();
        assert_eq!(
            run(&k, ctl.module.mark_dirty_image(image, &[(0, 8)])),
            Err(Errno::ENODEV)
        );
    }

    #[test]
    fn quirk_snap_2_empty_list_is_a_silent_success() {
        let (k, ctl) = setup(&["B-SNAP-2"]);
        let image = DevT::new(IMAGE_MAJOR, 0);
        assert_eq!(
            run(&k, ctl.module.mark_dirty_image(image, &[(0, 8)])),
            Ok(())
        );
    }

    #[test]
    #[should_panic(expected = "B-SNAP-2")]
    fn quirk_snap_2_an_untaken_snapshot_oopses() {
        let (k, ctl) = setup(&["B-SNAP-2"]);
        run(&k, ctl.create(&[dev(0)])).unwrap();
        let _ = run(
            &k,
            ctl.module
                .mark_dirty_image(DevT::new(IMAGE_MAJOR, 0), &[(0, 8)]),
        );
    }

    /// B-SNAP-2 as the C scans: a match in the first snapshot does not
    /// stop the walk, so the untaken snapshot listed after it (NULL slots)
    /// still oopses. The fix finds the image and marks it.
    #[test]
    fn quirk_snap_2_keeps_scanning_after_a_match() {
        let scan = |ids: &[&str]| {
            let (k, ctl) = setup(ids);
            let image = DevT::new(IMAGE_MAJOR, 0);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&k, async {
                    let id = ctl.create(&[dev(0)]).await.unwrap();
                    ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
                    ctl.take(&id).await.unwrap();
                    ctl.create(&[dev(1)]).await.unwrap();
                    ctl.module.mark_dirty_image(image, &[(0, 8)]).await
                })
            }))
        };
        assert_eq!(scan(&[]).expect("the fix does not oops"), Ok(()));
        let oops = scan(&["B-SNAP-2"]).expect_err("v2 reads the next snapshot's NULL slot");
        let text = oops
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| oops.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(text.contains("B-SNAP-2"), "{text}");
    }

    #[test]
    fn exit_destroys_snapshots_and_detaches_trackers() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0), dev(1)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            k.user_write(dev(0), 0, vec![5; 8]).await.unwrap();
            ctl.create(&[]).await.unwrap();
            exit(&ctl.module).await;
            k.settle().await;
        });
        let m = &ctl.module;
        assert!(m.snapshots.borrow().is_empty());
        assert_eq!(m.trackers_alive.get(), 0);
        assert!(m.tracked_devices.with(|l| l.is_empty()));
        assert!(m.bioset_destroyed.get());
        assert!(!k.has_filter(dev(0)) && !k.has_filter(dev(1)));
        assert!(k.disk_devs().is_empty());
        assert!(k.open_bdevs().is_empty(), "{:?}", k.open_bdevs());
        assert!(k.live_allocs().is_empty(), "{:?}", k.live_allocs());
        assert!(k.task_names().is_empty(), "{:?}", k.task_names());
        assert!(k.warns().is_empty(), "{:?}", k.warns());
    }

    #[test]
    fn exit_gives_up_on_a_lost_tracker_with_a_warning() {
        // B-SNAP-1 loses a taken snapshot: its tracker is never freed.
        let (k, ctl) = setup(&["B-SNAP-1"]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            ctl.create(&[dev(1)]).await.unwrap();
            exit(&ctl.module).await;
        });
        assert_eq!(ctl.module.trackers_alive.get(), 1);
        assert_eq!(k.warns(), vec!["unload: 1 tracker(s) were never released"]);
        assert!(k.now() >= EXIT_WAIT_NS);
    }

    #[test]
    #[should_panic(expected = "TestKernel::run: hang")]
    fn quirk_trk_8_exit_waits_for_ever() {
        let (k, ctl) = setup(&["B-SNAP-1", "B-TRK-8"]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            ctl.create(&[dev(1)]).await.unwrap();
            exit(&ctl.module).await;
        });
    }

    /// B-TRK-8 as the C has it: the WARN_ONCE at the 13th round, once,
    /// and the wait goes on (the exit future has not ended 10 minutes on).
    #[test]
    fn quirk_trk_8_warns_once_then_keeps_waiting() {
        let (k, ctl) = setup(&["B-SNAP-1", "B-TRK-8"]);
        let done = Rc::new(Cell::new(false));
        let flag = done.clone();
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            ctl.create(&[dev(1)]).await.unwrap();
            let module = ctl.module.clone();
            k.spawn(
                crate::kernel::TaskKind::Kthread { noio: false },
                "rmmod".into(),
                Box::pin(async move {
                    exit(&module).await;
                    flag.set(true);
                }),
            );
            k.sleep(600 * EXIT_POLL_NS).await;
        });
        assert!(!done.get(), "v2 never returns from the wait");
        assert_eq!(k.warns(), vec!["Failed to release trackers (B-TRK-8)"]);
        assert_eq!(ctl.module.trackers_alive.get(), 1);
    }

    #[test]
    #[should_panic(expected = "B-TRK-9")]
    fn quirk_trk_9_exit_with_cow_in_flight_uses_the_destroyed_bio_set() {
        let (k, ctl) = setup(&["B-TRK-9"]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            // Exit starts: the bio set goes first; a write still COWs.
            ctl.module.bioset_destroyed.set(true);
            k.user_write(dev(0), 0, vec![5; 8]).await.unwrap();
        });
    }
}
