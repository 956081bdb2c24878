//! The control device's ioctl dispatch (v2 `ctrl.c`, spec 1.6-1.7).
//!
//! Each handler copies its argument in through [`UserMemory`], calls the
//! engine and copies results out. Bad user input (unknown numbers, bad
//! pointers, short arrays) always ends in an errno, never a panic.

use std::rc::Rc;

use crate::kernel::{blkdev_get, blkdev_put, kmalloc, sleep_point, DevT, Errno, Gfp, UserMemory};
use crate::module::Module;
use crate::snapshot::{Snapshot, SnapshotId};
use crate::tracker::Tracker;
use crate::uapi::*;

/// `KMALLOC_MAX_SIZE` on x86-64 in 6.1: a larger `kcalloc` is -ENOMEM.
const KMALLOC_MAX_SIZE: usize = 4 << 20;
/// Jiffies per second in the kernel v2 shipped with (B-EVT-2 uses it).
pub const HZ: u64 = 250;
/// One jiffy (4 ms): the step of the C's `schedule_timeout_*(1)` polls.
pub const JIFFY_NS: u64 = 1_000_000_000 / HZ;

/// The result of an ioctl: a value, or an errno.
pub type IoctlResult = Result<i64, Errno>;

/// `ctrl_unlocked_ioctl`: dispatch on the full command value. v2 looks
/// only at the number and accepts 12 (B-CTRL-1); the fix is 6.15's switch.
pub async fn ioctl(module: &Rc<Module>, cmd: u32, arg: u64, user: &dyn UserMemory) -> IoctlResult {
    let nr = if module.quirks.ctrl_1 {
        dispatch_v2(cmd)?
    } else {
        IoctlNr::ALL
            .iter()
            .copied()
            .find(|nr| nr.cmd() == cmd)
            .ok_or(Errno::ENOTTY)?
    };
    let ctrl = Ctrl { module, arg, user };
    match nr {
        IoctlNr::Version => ctrl.version(),
        IoctlNr::TrackerRemove => ctrl.tracker_remove().await,
        IoctlNr::TrackerCollect => ctrl.tracker_collect().await,
        IoctlNr::TrackerReadCbtMap => ctrl.read_cbt_map().await,
        IoctlNr::TrackerMarkDirtyBlocks => ctrl.mark_dirty_blocks().await,
        IoctlNr::SnapshotCreate => ctrl.snapshot_create().await,
        IoctlNr::SnapshotDestroy => ctrl.snapshot_destroy().await,
        IoctlNr::SnapshotAppendStorage => ctrl.append_storage().await,
        IoctlNr::SnapshotTake => ctrl.snapshot_take().await,
        IoctlNr::SnapshotCollect => ctrl.snapshot_collect().await,
        IoctlNr::SnapshotCollectImages => ctrl.collect_images().await,
        IoctlNr::SnapshotWaitEvent => ctrl.wait_event().await,
    }
}

/// v2 dispatch (B-CTRL-1): only `_IOC_NR` counts, whatever the magic,
/// direction and size, and the bound check lets 12 through: the 8 bytes
/// after the table are called as a handler.
fn dispatch_v2(cmd: u32) -> Result<IoctlNr, Errno> {
    let nr = ioc_nr(cmd);
    if nr > 12 {
        return Err(Errno::ENOTTY);
    }
    match IoctlNr::from_nr(nr) {
        Some(nr) => Ok(nr),
        None => panic!("BUG: unable to handle page fault: ioctl nr 12 called past the handler table (B-CTRL-1)"),
    }
}

/// v2 copies arrays in with `kcalloc`, which fails past KMALLOC_MAX_SIZE.
fn kcalloc_fits<T: UapiStruct>(count: u32) -> Result<(), Errno> {
    if (count as usize).saturating_mul(T::SIZE) > KMALLOC_MAX_SIZE {
        return Err(Errno::ENOMEM);
    }
    Ok(())
}

struct Ctrl<'a> {
    module: &'a Rc<Module>,
    arg: u64,
    user: &'a dyn UserMemory,
}

/// `MKDEV(mj, mn)` as the C has it: `mj << 20 | mn`, no mask, so a minor
/// of 2^20 or more spills into the major (8:1048576 is 9:0) and bits of a
/// major past 12 bits are lost. Masking instead would make a hostile CREATE
/// fail where v2 tracks another device.
fn dev_t(dev: BlkSnapDev) -> DevT {
    DevT::new(dev.mj, dev.mn)
}

/// `check_same_devices`: v2 compares the raw `{mj, mn}` pairs the user
/// passed, before any MKDEV, so two spellings of one device (a spilled
/// minor) are not duplicates here; gathering the trackers then meets the
/// same device twice (-EBUSY in the fix, shared with B-SNAP-6).
fn has_same_devices(devs: &[BlkSnapDev]) -> bool {
    devs.iter()
        .enumerate()
        .any(|(i, a)| devs[i + 1..].iter().any(|b| (a.mj, a.mn) == (b.mj, b.mn)))
}

fn blk_dev(dev: DevT) -> BlkSnapDev {
    BlkSnapDev {
        mj: dev.major(),
        mn: dev.minor(),
    }
}

impl Ctrl<'_> {
    /// Copy the argument struct in; `fault` is the errno of a copy fault.
    fn read_arg<T: UapiStruct>(&self, fault: Errno) -> Result<T, Errno> {
        let bytes = self
            .user
            .copy_from_user(self.arg, T::SIZE)
            .map_err(|_| fault)?;
        T::decode(&bytes).ok_or(fault)
    }

    fn write_arg<T: UapiStruct>(&self, value: &T) -> Result<(), Errno> {
        self.user
            .copy_to_user(self.arg, &value.encode())
            .map_err(|_| Errno::ENODATA)
    }

    /// Copy an array of `count` structs in from `addr`.
    fn read_array<T: UapiStruct>(&self, addr: u64, count: u32) -> Result<Vec<T>, Errno> {
        kcalloc_fits::<T>(count)?;
        let bytes = self
            .user
            .copy_from_user(addr, T::SIZE * count as usize)
            .map_err(|_| Errno::ENODATA)?;
        Ok(bytes.chunks_exact(T::SIZE).filter_map(T::decode).collect())
    }

    fn write_array<T: UapiStruct>(&self, addr: u64, items: &[T]) -> Result<(), Errno> {
        let bytes: Vec<u8> = items.iter().flat_map(UapiStruct::encode).collect();
        self.user
            .copy_to_user(addr, &bytes)
            .map_err(|_| Errno::ENODATA)
    }

    fn version(&self) -> IoctlResult {
        self.write_arg(&MODULE_VERSION)?;
        Ok(0)
    }

    async fn tracker_remove(&self) -> IoctlResult {
        let arg: BlkSnapTrackerRemove = self.read_arg(Errno::ENODATA)?;
        Tracker::remove(self.module, dev_t(arg.dev_id)).await?;
        Ok(0)
    }

    /// TRACKER_COLLECT: the count, or the filled array. A short array is
    /// -ENOBUFS with the required count written back (v2 left it unwritten,
    /// B-TRK-7).
    async fn tracker_collect(&self) -> IoctlResult {
        let mut arg: BlkSnapTrackerCollect = self.read_arg(Errno::ENODATA)?;
        let devs: Vec<DevT> = self
            .module
            .tracked_devices
            .with(|list| list.iter().map(|e| e.dev_id).collect());
        if arg.cbt_info_array == 0 {
            arg.count = devs.len() as u32;
            self.write_arg(&arg)?;
            return Ok(0);
        }
        if (arg.count as usize) < devs.len() {
            // v2 returns without writing the count back (B-TRK-7).
            if !self.module.quirks.trk_7 {
                arg.count = devs.len() as u32;
                self.write_arg(&arg)?;
            }
            return Err(Errno::ENOBUFS);
        }
        kcalloc_fits::<BlkSnapCbtInfo>(arg.count)?;
        let mut infos: Vec<BlkSnapCbtInfo> = Vec::with_capacity(devs.len());
        for &dev in &devs {
            infos.push(self.cbt_info(dev).await);
        }
        self.write_array(arg.cbt_info_array, &infos)?;
        arg.count = infos.len() as u32;
        self.write_arg(&arg)?;
        Ok(0)
    }

    /// One entry; zero but for `dev_id` when the device has no tracker.
    async fn cbt_info(&self, dev: DevT) -> BlkSnapCbtInfo {
        let mut info = BlkSnapCbtInfo {
            dev_id: blk_dev(dev),
            ..Default::default()
        };
        let Some(tracker) = Tracker::get_by_dev(self.module, dev).await else {
            return info;
        };
        let cbt = tracker.cbt_map.info();
        tracker.put();
        info.blk_size = cbt.blk_size;
        info.device_capacity = cbt.device_capacity_bytes;
        info.blk_count = cbt.blk_count;
        info.generation_id = BlkSnapUuid {
            b: cbt.generation_id,
        };
        info.snap_number = cbt.snap_number;
        info
    }

    /// READ_CBT_MAP: the number of bytes copied. An untracked device is
    /// -ENODEV (v2 returned `PTR_ERR(NULL)`, which is 0: B-TRK-6).
    async fn read_cbt_map(&self) -> IoctlResult {
        let arg: BlkSnapTrackerReadCbtBitmap = self.read_arg(Errno::ENODATA)?;
        let dev = dev_t(arg.dev_id);
        let handle = blkdev_get(self.module.k(), "read_cbt_map.blkdev_get", dev).await?;
        blkdev_put(self.module.k(), "read_cbt_map.blkdev_put", handle).await;
        let Some(tracker) = Tracker::get_by_dev(self.module, dev).await else {
            return if self.module.quirks.trk_6 {
                Ok(0)
            } else {
                Err(Errno::ENODEV)
            };
        };
        let result = self.copy_cbt(&tracker, &arg).await;
        tracker.put();
        result
    }

    async fn copy_cbt(&self, tracker: &Tracker, arg: &BlkSnapTrackerReadCbtBitmap) -> IoctlResult {
        if !tracker.snapshot_is_taken.get() {
            return Err(Errno::EPERM);
        }
        if tracker.cbt_map.is_corrupted() {
            return Err(Errno::EFAULT);
        }
        let epoch = tracker.cbt_map.tables_epoch();
        let bytes = tracker.cbt_map.read(arg.offset, arg.length);
        if self.module.quirks.cbt_5 {
            // v2 copies straight from the table without the map's lock, and
            // copy_to_user can fault and sleep: a TAKE resetting a shared
            // tracker's map meanwhile frees the table being read (B-CBT-5).
            self.module.k().sleep(crate::tracker::PREEMPTED_NS).await;
            if tracker.cbt_map.tables_epoch() != epoch {
                panic!("BUG: use-after-free read of a freed CBT table in READ_CBT_MAP (B-CBT-5)");
            }
        }
        match self.user.copy_to_user(arg.buff, &bytes) {
            Ok(()) => Ok(bytes.len() as i64),
            Err(copied) => Ok(copied as i64),
        }
    }

    async fn mark_dirty_blocks(&self) -> IoctlResult {
        let arg: BlkSnapTrackerMarkDirtyBlocks = self.read_arg(Errno::ENODATA)?;
        let ranges: Vec<BlkSnapBlockRange> = self.read_array(arg.dirty_blocks_array, arg.count)?;
        let ranges: Vec<(u64, u64)> = ranges
            .iter()
            .map(|r| (r.sector_offset, r.sector_count))
            .collect();
        let dev = dev_t(arg.dev_id);
        if dev.major() == self.module.k().image_major() {
            self.module.mark_dirty_image(dev, &ranges).await?;
        } else {
            Tracker::mark_dirty(self.module, dev, &ranges).await?;
        }
        Ok(0)
    }

    async fn snapshot_create(&self) -> IoctlResult {
        let mut arg: BlkSnapSnapshotCreate = self.read_arg(Errno::ENODATA)?;
        let devs: Vec<BlkSnapDev> = self.read_array(arg.dev_id_array, arg.count)?;
        if has_same_devices(&devs) {
            return Err(Errno::EINVAL);
        }
        let devs: Vec<DevT> = devs.into_iter().map(dev_t).collect();
        let id = Snapshot::create(self.module, &devs).await?;
        arg.id = BlkSnapUuid { b: id };
        // A fault here loses the id of a snapshot that exists (B-CTRL-4).
        self.write_arg(&arg)?;
        Ok(0)
    }

    async fn snapshot_destroy(&self) -> IoctlResult {
        let arg: BlkSnapSnapshotDestroy = self.read_arg(Errno::ENODATA)?;
        Snapshot::destroy(self.module, &arg.id.b).await?;
        Ok(0)
    }

    /// APPEND_STORAGE: ranges are read one at a time; those added before a
    /// fault stay added.
    async fn append_storage(&self) -> IoctlResult {
        let arg: BlkSnapSnapshotAppendStorage = self.read_arg(Errno::EINVAL)?;
        let snapshot = self.lookup(&arg.id.b).await?;
        let result = self.append_ranges(&snapshot, &arg).await;
        snapshot.put().await;
        result.map(|()| 0)
    }

    async fn append_ranges(
        &self,
        snapshot: &Snapshot,
        arg: &BlkSnapSnapshotAppendStorage,
    ) -> Result<(), Errno> {
        let storage = &snapshot.diff_storage;
        let dev = dev_t(arg.dev_id);
        storage.append_open(dev).await?;
        let size = BlkSnapBlockRange::SIZE as u64;
        for i in 0..u64::from(arg.count) {
            let addr = arg.ranges.wrapping_add(i * size);
            // A fault returns at once: the ranges before it stay added and
            // the low-space flag is not re-armed (as v2).
            let bytes = self
                .user
                .copy_from_user(addr, size as usize)
                .map_err(|_| Errno::EINVAL)?;
            let range = BlkSnapBlockRange::decode(&bytes).ok_or(Errno::EINVAL)?;
            storage.check_range(dev, range.sector_offset, range.sector_count)?;
            storage
                .append_block(dev, range.sector_offset, range.sector_count)
                .await?;
        }
        storage.append_end();
        Ok(())
    }

    async fn snapshot_take(&self) -> IoctlResult {
        let arg: BlkSnapSnapshotTake = self.read_arg(Errno::ENODATA)?;
        Snapshot::take(self.module, &arg.id.b).await?;
        Ok(0)
    }

    /// SNAPSHOT_COLLECT. A short array is -ENODATA with the required count
    /// (v2 wrote the copied count, and returned 0 on a copy fault: B-SNAP-8).
    async fn snapshot_collect(&self) -> IoctlResult {
        let mut arg: BlkSnapSnapshotCollect = self.read_arg(Errno::ENODATA)?;
        // v2 copies the ids out with `snapshots_lock` held for read, and
        // copy_to_user may sleep (a page fault): CREATE and DESTROY wait.
        let k = self.module.k();
        self.module.snapshots_lock.down_read(k).await;
        let ids: Vec<SnapshotId> = self
            .module
            .snapshots
            .borrow()
            .iter()
            .map(|s| s.id)
            .collect();
        if arg.ids != 0 && !ids.is_empty() {
            sleep_point(k, "snapshot_collect.copy_to_user").await;
        }
        let result = self.copy_ids(&mut arg, &ids);
        self.module.snapshots_lock.up_read(k);
        self.write_arg(&arg)?;
        result.map(|()| 0)
    }

    fn copy_ids(&self, arg: &mut BlkSnapSnapshotCollect, ids: &[SnapshotId]) -> Result<(), Errno> {
        let required = ids.len() as u32;
        if arg.ids == 0 || ids.is_empty() {
            arg.count = if ids.is_empty() { 0 } else { required };
            return Ok(());
        }
        if self.module.quirks.snap_8 {
            return self.copy_ids_v2(arg, ids);
        }
        if arg.count < required {
            arg.count = required;
            return Err(Errno::ENODATA);
        }
        let uuids: Vec<BlkSnapUuid> = ids.iter().map(|&b| BlkSnapUuid { b }).collect();
        arg.count = required;
        self.write_array(arg.ids, &uuids)
    }

    /// v2 (B-SNAP-8): copy one id at a time; past the caller's count it is
    /// -ENODATA with the count copied, and a copy fault returns 0 with the
    /// count copied before it.
    fn copy_ids_v2(
        &self,
        arg: &mut BlkSnapSnapshotCollect,
        ids: &[SnapshotId],
    ) -> Result<(), Errno> {
        let given = arg.count;
        for (i, id) in ids.iter().enumerate() {
            if i as u32 >= given {
                arg.count = i as u32;
                return Err(Errno::ENODATA);
            }
            let addr = arg.ids.wrapping_add(16 * i as u64);
            if self.user.copy_to_user(addr, id).is_err() {
                arg.count = i as u32;
                return Ok(());
            }
        }
        arg.count = ids.len() as u32;
        Ok(())
    }

    /// COLLECT_IMAGES (spec 8.6); the struct is written back in every case.
    async fn collect_images(&self) -> IoctlResult {
        let mut arg: BlkSnapSnapshotCollectImages = self.read_arg(Errno::ENODATA)?;
        let result = match Snapshot::get_by_id(self.module, &arg.id.b).await {
            Some(snapshot) => {
                let result = self.copy_images(&snapshot, &mut arg).await;
                snapshot.put().await;
                result
            }
            None => Err(Errno::ESRCH),
        };
        self.write_arg(&arg)?;
        result.map(|()| 0)
    }

    async fn copy_images(
        &self,
        snapshot: &Snapshot,
        arg: &mut BlkSnapSnapshotCollectImages,
    ) -> Result<(), Errno> {
        let count = snapshot.count() as u32;
        let given = arg.count;
        arg.count = count;
        if !snapshot.is_taken() {
            return Err(Errno::ENODEV);
        }
        if arg.image_info_array == 0 {
            return Ok(());
        }
        if given < count {
            return Err(Errno::ENODATA);
        }
        // v2 builds the array in a kcalloc'd buffer (GFP_KERNEL): a
        // sleeping point, and -ENOMEM when it fails.
        let k = self.module.k();
        let bytes = u64::from(count) * BlkSnapImageInfo::SIZE as u64;
        let alloc = kmalloc(k, "collect_images", bytes, Gfp::Kernel).await?;
        let infos: Vec<BlkSnapImageInfo> = snapshot
            .image_infos()
            .into_iter()
            .map(|info| BlkSnapImageInfo {
                orig_dev_id: blk_dev(info.orig_dev_id),
                image_dev_id: blk_dev(info.image_dev_id),
            })
            .collect();
        let written = self.write_array(arg.image_info_array, &infos);
        k.kfree(alloc);
        written
    }

    /// WAIT_EVENT. The fix (v3) reads the id and the timeout; v2 reads only
    /// the 16-byte id, so the wait is a poll (B-CTRL-2).
    /// v2 first allocates the event it fills (GFP_KERNEL: a sleeping
    /// point; -ENOMEM before anything is read) and frees it on every exit.
    async fn wait_event(&self) -> IoctlResult {
        let k = self.module.k();
        let size = BlkSnapSnapshotEvent::SIZE as u64;
        let alloc = kmalloc(k, "wait_event", size, Gfp::Kernel).await?;
        let result = self.wait_event_into().await;
        k.kfree(alloc);
        result
    }

    async fn wait_event_into(&self) -> IoctlResult {
        let v2 = self.module.quirks.ctrl_2;
        let head = self
            .user
            .copy_from_user(self.arg, if v2 { 16 } else { 20 })
            .map_err(|_| Errno::EINVAL)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&head[..16]);
        let timeout_ms = if v2 {
            0
        } else {
            u32::from_le_bytes([head[16], head[17], head[18], head[19]])
        };
        let snapshot = self.lookup(&id).await?;
        let event = snapshot.wait_event(self.timeout_ns(timeout_ms)).await;
        snapshot.put().await;
        let event = event?;
        // timeout_ms goes back as 0 (B-CTRL-2); a payload past the page
        // does not fit.
        let out = BlkSnapSnapshotEvent::encode_with(
            BlkSnapUuid { b: id },
            0,
            event.code,
            event.time_label,
            &event.data,
        )
        .ok_or(Errno::ENOSPC)?;
        self.user
            .copy_to_user(self.arg, &out)
            .map_err(|_| Errno::EINVAL)?;
        Ok(0)
    }

    /// The wait in virtual time. v2 hands the milliseconds to a function
    /// that counts jiffies (B-EVT-2): at HZ=250 each "ms" lasts 4 ms.
    fn timeout_ns(&self, timeout_ms: u32) -> u64 {
        let ms = u64::from(timeout_ms);
        if self.module.quirks.evt_2 {
            ms * (1_000_000_000 / HZ)
        } else {
            ms * 1_000_000
        }
    }

    async fn lookup(&self, id: &SnapshotId) -> Result<Rc<Snapshot>, Errno> {
        Snapshot::get_by_id(self.module, id)
            .await
            .ok_or(Errno::ESRCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_queue::{EVENT_CORRUPTED, EVENT_LOW_FREE_SPACE};
    use crate::kernel::testing::{
        dev, orig, run, setup, Ctl, TestKernel, IMAGE_MAJOR, MIB, UNMAPPED,
    };
    use crate::kernel::Stamp;
    use crate::params::Params;

    #[test]
    fn version_writes_1_0_0_0() {
        let (k, ctl) = setup(&[]);
        let version = run(&k, ctl.version()).unwrap();
        assert_eq!(version, MODULE_VERSION);
        assert_eq!(version.to_string(), "1.0.0.0");
        let addr = ctl.user.map(vec![0xff; 8]);
        assert_eq!(run(&k, ctl.ioctl(IOCTL_BLK_SNAP_VERSION, addr)), Ok(0));
        assert_eq!(ctl.user.read(addr, 8), vec![1, 0, 0, 0, 0, 0, 0, 0]);
        let fault = run(&k, ctl.ioctl(IOCTL_BLK_SNAP_VERSION, UNMAPPED));
        assert_eq!(fault, Err(Errno::ENODATA));
    }

    #[test]
    fn unknown_commands_are_enotty() {
        let (k, ctl) = setup(&[]);
        let addr = ctl.user.map(vec![0; 4096]);
        for cmd in [
            0,
            0x1234,
            ioc(IOC_NONE, BLK_SNAP, 12, 0),
            iow(BLK_SNAP, 12, 8),
            // The right number with another magic, direction or size.
            iow(b'W', 0, 8),
            ior(BLK_SNAP, 0, 8),
            iow(BLK_SNAP, 0, 16),
        ] {
            assert_eq!(
                run(&k, ctl.ioctl(cmd, addr)),
                Err(Errno::ENOTTY),
                "{cmd:#x}"
            );
        }
    }

    #[test]
    fn quirk_ctrl_1_dispatches_on_the_number_alone() {
        let (k, ctl) = setup(&["B-CTRL-1"]);
        let addr = ctl.user.map(vec![0; 8]);
        assert_eq!(run(&k, ctl.ioctl(iow(b'W', 0, 2), addr)), Ok(0));
        assert_eq!(ctl.user.read(addr, 2), vec![1, 0], "VERSION ran");
        assert_eq!(
            run(&k, ctl.ioctl(iow(BLK_SNAP, 13, 8), addr)),
            Err(Errno::ENOTTY)
        );
    }

    #[test]
    #[should_panic(expected = "B-CTRL-1")]
    fn quirk_ctrl_1_nr_12_calls_past_the_table() {
        let (k, ctl) = setup(&["B-CTRL-1"]);
        let _ = run(&k, ctl.ioctl(ioc(IOC_NONE, BLK_SNAP, 12, 0), 0));
    }

    #[test]
    fn create_append_take_collect_images_destroy() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0), dev(1)]).await.unwrap();
            assert_eq!(ctl.collect().await, Ok(vec![id]));
            assert!(k.has_filter(dev(0)) && k.has_filter(dev(1)));
            assert_eq!(
                ctl.collect_images(&id).await,
                Err(Errno::ENODEV),
                "not taken"
            );
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            let images = ctl.collect_images(&id).await.unwrap();
            let image = |minor| DevT::new(IMAGE_MAJOR, minor);
            assert_eq!(images, vec![(dev(0), image(0)), (dev(1), image(1))]);
            assert_eq!(k.disk_devs(), vec![image(0), image(1)]);
            assert_eq!(k.disk(image(1)).unwrap().name, "blksnap-image1");
            assert_eq!(k.disk(image(1)).unwrap().capacity, 64 * MIB);
            assert_eq!(ctl.take(&id).await, Err(Errno::EALREADY));
            ctl.destroy(&id).await.unwrap();
            k.settle().await;
            assert!(k.disk_devs().is_empty());
            assert_eq!(ctl.collect().await, Ok(vec![]));
            assert_eq!(ctl.destroy(&id).await, Err(Errno::ENODEV));
            assert_eq!(ctl.take(&id).await, Err(Errno::ESRCH));
            assert_eq!(ctl.append(&id, dev(16), &[(0, 8)]).await, Err(Errno::ESRCH));
            assert_eq!(ctl.collect_images(&id).await, Err(Errno::ESRCH));
        });
        assert!(k.warns().is_empty(), "{:?}", k.warns());
        // The trackers stay attached after DESTROY; removing them frees all.
        run(&k, async {
            ctl.tracker_remove(dev(0)).await.unwrap();
            ctl.tracker_remove(dev(1)).await.unwrap();
            assert_eq!(ctl.tracker_remove(dev(1)).await, Err(Errno::ENODATA));
            k.settle().await;
        });
        assert!(!k.has_filter(dev(0)));
        assert_eq!(ctl.module.trackers_alive.get(), 0);
        assert!(k.open_bdevs().is_empty(), "{:?}", k.open_bdevs());
        assert!(k.live_allocs().is_empty(), "{:?}", k.live_allocs());
    }

    #[test]
    fn take_without_storage_is_efault_and_keeps_the_snapshot() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            assert_eq!(ctl.take(&id).await, Err(Errno::EFAULT));
            assert_eq!(ctl.collect().await, Ok(vec![id]));
            assert_eq!(ctl.collect_images(&id).await, Err(Errno::ENODEV));
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            assert_eq!(ctl.collect_images(&id).await.unwrap().len(), 1);
            ctl.destroy(&id).await.unwrap();
        });
        assert!(k.warns().is_empty(), "{:?}", k.warns());
    }

    #[test]
    fn quirk_snap_10_take_without_storage_destroys_the_snapshot() {
        let (k, ctl) = setup(&["B-SNAP-10"]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            assert_eq!(ctl.take(&id).await, Err(Errno::EFAULT));
            assert_eq!(ctl.collect().await, Ok(vec![]));
            assert_eq!(ctl.append(&id, dev(16), &[(0, 8)]).await, Err(Errno::ESRCH));
            assert_eq!(ctl.take(&id).await, Err(Errno::ESRCH));
            assert_eq!(ctl.destroy(&id).await, Err(Errno::ENODEV));
        });
    }

    #[test]
    fn a_write_after_take_leaves_the_image_with_the_old_data() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            let image = ctl.collect_images(&id).await.unwrap()[0].1;
            // Through the block layer: the tracker's filter runs first.
            k.user_write(dev(0), 1020, vec![5; 8]).await.unwrap();
            assert_eq!(k.peek(dev(0), 1020, 8), vec![5; 8]);
            let old: Vec<Stamp> = (1020..1028).map(orig).collect();
            assert_eq!(k.user_read(image, 1020, 8).await, Ok(old));
            assert_eq!(k.user_read(dev(0), 1020, 8).await, Ok(vec![5; 8]));
            ctl.destroy(&id).await.unwrap();
        });
    }

    /// COLLECT_IMAGES and WAIT_EVENT allocate as v2 does: -ENOMEM when
    /// the allocation fails, the event stays queued, nothing leaks.
    #[test]
    fn collect_images_and_wait_event_fail_with_enomem_and_leak_nothing() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            k.fail_site_times("collect_images", 1);
            assert_eq!(ctl.collect_images(&id).await, Err(Errno::ENOMEM));
            assert_eq!(ctl.collect_images(&id).await.map(|v| v.len()), Ok(1));
            k.fail_site_times("wait_event", 1);
            assert_eq!(ctl.wait_event(&id, 0).await, Err(Errno::ENOMEM));
            let (code, _, _) = ctl.wait_event(&id, 0).await.unwrap();
            assert_eq!(code, EVENT_LOW_FREE_SPACE);
            ctl.destroy(&id).await.unwrap();
            k.settle().await;
        });
        let live: Vec<&str> = k.live_allocs().into_iter().map(|(site, _)| site).collect();
        assert!(
            !live.contains(&"collect_images") && !live.contains(&"wait_event"),
            "{live:?}"
        );
    }

    #[test]
    fn wait_event_returns_the_creation_event_then_enoent() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            let (code, time, data) = ctl.wait_event(&id, 0).await.unwrap();
            assert_eq!((code, time), (EVENT_LOW_FREE_SPACE, 0));
            assert_eq!(
                &data[..8],
                &Params::default().diff_storage_minimum.to_le_bytes()
            );
            assert_eq!(ctl.wait_event(&id, 0).await, Err(Errno::ENOENT));
            // The timeout is read (the B-CTRL-2 fix): 20 ms of virtual time.
            let before = k.now();
            assert_eq!(ctl.wait_event(&id, 20).await, Err(Errno::ENOENT));
            assert_eq!(k.now() - before, 20_000_000);
            assert_eq!(ctl.wait_event(&[9; 16], 0).await, Err(Errno::ESRCH));
        });
    }

    #[test]
    fn quirk_ctrl_2_wait_event_is_a_poll() {
        let (k, ctl) = setup(&["B-CTRL-2"]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            assert!(ctl.wait_event(&id, 1000).await.is_ok());
            let before = k.now();
            assert_eq!(ctl.wait_event(&id, 1000).await, Err(Errno::ENOENT));
            assert_eq!(k.now(), before, "no time passes");
        });
    }

    #[test]
    fn storage_overflow_raises_a_corrupted_event() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            ctl.append(&id, dev(16), &[(0, 512)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            ctl.wait_event(&id, 0).await.unwrap();
            k.user_write(dev(0), 0, vec![5; 8]).await.unwrap();
            k.user_write(dev(0), 512, vec![6; 8]).await.unwrap();
            let (code, _, data) = ctl.wait_event(&id, 0).await.unwrap();
            assert_eq!(code, EVENT_CORRUPTED);
            let mut expected = 8u32.to_le_bytes().to_vec();
            expected.extend_from_slice(&0u32.to_le_bytes());
            expected.extend_from_slice(&28i32.to_le_bytes());
            assert_eq!(&data[..12], &expected[..]);
            // Both writes reached the original.
            assert_eq!(k.peek(dev(0), 512, 1), vec![6]);
        });
    }

    #[test]
    fn append_checks_its_ranges() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            let id = ctl.create(&[dev(0)]).await.unwrap();
            assert_eq!(
                ctl.append(&id, dev(16), &[(3, 8)]).await,
                Err(Errno::EINVAL)
            );
            assert_eq!(
                ctl.append(&id, dev(16), &[(256 * MIB, 8)]).await,
                Err(Errno::EINVAL)
            );
            assert_eq!(ctl.append(&id, dev(9), &[(0, 8)]).await, Err(Errno::ENXIO));
            assert_eq!(ctl.take(&id).await, Err(Errno::EFAULT), "nothing was added");
            // A bad argument pointer is -EINVAL for APPEND.
            let cmd = IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE;
            assert_eq!(ctl.ioctl(cmd, UNMAPPED).await, Err(Errno::EINVAL));
        });
    }

    #[test]
    fn create_errors() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            assert_eq!(ctl.create(&[dev(0), dev(0)]).await, Err(Errno::EINVAL));
            assert_eq!(ctl.create(&[dev(0), dev(7)]).await, Err(Errno::ENXIO));
            assert!(ctl.collect().await.unwrap().is_empty());
            let cmd = IOCTL_BLK_SNAP_SNAPSHOT_CREATE;
            assert_eq!(ctl.ioctl(cmd, UNMAPPED).await, Err(Errno::ENODATA));
            let id = ctl.create(&[dev(0)]).await.unwrap();
            assert_eq!(ctl.create(&[dev(1), dev(0)]).await, Err(Errno::EBUSY));
            assert_eq!(ctl.collect().await, Ok(vec![id]));
        });
    }

    #[test]
    fn tracker_collect_and_read_cbt_map() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            assert_eq!(ctl.tracker_collect().await, Ok(vec![]));
            let id = ctl.create(&[dev(0)]).await.unwrap();
            k.user_write(dev(0), 1000, vec![1; 8]).await.unwrap();
            assert_eq!(ctl.read_cbt(dev(0), 0, 16).await, Err(Errno::EPERM));
            assert_eq!(ctl.read_cbt(dev(1), 0, 16).await, Err(Errno::ENODEV));
            assert_eq!(ctl.read_cbt(dev(7), 0, 16).await, Err(Errno::ENXIO));
            let infos = ctl.tracker_collect().await.unwrap();
            assert_eq!(infos.len(), 1);
            assert_eq!((infos[0].dev_id.mj, infos[0].dev_id.mn), (8, 0));
            assert_eq!(infos[0].blk_size, 65_536);
            assert_eq!(infos[0].blk_count, 1024);
            assert_eq!(infos[0].device_capacity, 64 << 20);
            assert_eq!(infos[0].snap_number, 0);
            ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await.unwrap();
            ctl.take(&id).await.unwrap();
            let after = ctl.tracker_collect().await.unwrap();
            assert_eq!(after[0].snap_number, 1);
            assert_eq!(after[0].generation_id, infos[0].generation_id);
            let map = ctl.read_cbt(dev(0), 0, 1024).await.unwrap();
            assert_eq!(map.len(), 1024);
            assert_eq!(map[7], 1);
            assert_eq!(map.iter().filter(|&&b| b != 0).count(), 1);
            assert_eq!(ctl.read_cbt(dev(0), 4, 4).await, Ok(vec![0, 0, 0, 1]));
            // MARK_DIRTY raises both maps.
            ctl.mark_dirty(dev(0), &[(3840, 128)]).await.unwrap();
            assert_eq!(ctl.read_cbt(dev(0), 30, 1).await, Ok(vec![1]));
            assert_eq!(ctl.mark_dirty(dev(1), &[(0, 8)]).await, Err(Errno::ENODEV));
            let image = DevT::new(IMAGE_MAJOR, 0);
            ctl.mark_dirty(image, &[(0, 128)]).await.unwrap();
            assert_eq!(ctl.read_cbt(dev(0), 0, 1).await, Ok(vec![1]));
            let other = DevT::new(IMAGE_MAJOR, 5);
            assert_eq!(ctl.mark_dirty(other, &[(0, 8)]).await, Err(Errno::ENODEV));
        });
    }

    #[test]
    fn tracker_collect_short_array_is_enobufs_with_the_count() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            ctl.create(&[dev(0), dev(1)]).await.unwrap();
            let arg = BlkSnapTrackerCollect {
                count: 1,
                cbt_info_array: ctl.user.map(vec![0; BlkSnapCbtInfo::SIZE]),
            };
            let addr = ctl.user.map(arg.encode());
            let cmd = IOCTL_BLK_SNAP_TRACKER_COLLECT;
            assert_eq!(ctl.ioctl(cmd, addr).await, Err(Errno::ENOBUFS));
            let back = BlkSnapTrackerCollect::decode(&ctl.user.read(addr, 16)).unwrap();
            assert_eq!(back.count, 2);
            // Counting mode.
            let arg = BlkSnapTrackerCollect::default();
            let addr = ctl.user.map(arg.encode());
            assert_eq!(ctl.ioctl(cmd, addr).await, Ok(0));
            let back = BlkSnapTrackerCollect::decode(&ctl.user.read(addr, 16)).unwrap();
            assert_eq!(back.count, 2);
        });
    }

    #[test]
    fn snapshot_collect_short_array_is_enodata_with_the_required_count() {
        let (k, ctl) = setup(&[]);
        run(&k, async {
            ctl.create(&[dev(0)]).await.unwrap();
            ctl.create(&[dev(1)]).await.unwrap();
            assert_eq!(ctl.collect().await.unwrap().len(), 2);
            let arg = BlkSnapSnapshotCollect {
                count: 1,
                ids: ctl.user.map(vec![0; 16]),
            };
            let addr = ctl.user.map(arg.encode());
            let cmd = IOCTL_BLK_SNAP_SNAPSHOT_COLLECT;
            assert_eq!(ctl.ioctl(cmd, addr).await, Err(Errno::ENODATA));
            let back = BlkSnapSnapshotCollect::decode(&ctl.user.read(addr, 16)).unwrap();
            assert_eq!(back.count, 2);
        });
    }

    /// CREATE with raw `{mj, mn}` pairs, as user space passes them.
    async fn create_raw(ctl: &Ctl, pairs: &[(u32, u32)]) -> IoctlResult {
        let array: Vec<u8> = pairs
            .iter()
            .flat_map(|&(mj, mn)| BlkSnapDev { mj, mn }.encode())
            .collect();
        let arg = BlkSnapSnapshotCreate {
            count: pairs.len() as u32,
            dev_id_array: ctl.user.map(array),
            id: BlkSnapUuid::default(),
        };
        let addr = ctl.user.map(arg.encode());
        ctl.ioctl(IOCTL_BLK_SNAP_SNAPSHOT_CREATE, addr).await
    }

    /// Class (c) fix: v2 checks duplicates on the raw pairs and builds the
    /// device number with an unmasked MKDEV (an OR), so 8:2^20 is device
    /// 9:0 and 7:2^20 is 7:0 again.
    #[test]
    fn minor_numbers_spill_into_the_major_as_mkdev_does() {
        let (k, ctl) = setup(&[]);
        let spilled = DevT::new(9, 0);
        assert_eq!(DevT::new(8, 1 << 20), spilled);
        assert_eq!(DevT::new(7, 1 << 20), DevT::new(7, 0));
        k.add_device(spilled, 64 * MIB);
        run(&k, async {
            // Two spellings of 9:0 are not duplicates for v2's check; the
            // second finds the device already claimed by the first.
            assert_eq!(
                create_raw(&ctl, &[(8, 1 << 20), (9, 0)]).await,
                Err(Errno::EBUSY)
            );
            // The same raw pair twice is.
            assert_eq!(
                create_raw(&ctl, &[(8, 1 << 20), (8, 1 << 20)]).await,
                Err(Errno::EINVAL)
            );
            // Alone, the spilled minor tracks 9:0 (a mask would make it 8:0,
            // which does not exist).
            assert_eq!(create_raw(&ctl, &[(8, 1 << 20)]).await, Ok(0));
        });
        assert!(k.has_filter(spilled));
        assert!(ctl
            .module
            .tracked_devices
            .with(|list| list.iter().any(|t| t.dev_id == spilled)));
    }

    /// One whole life: CREATE, APPEND, TAKE, writes, image IO, DESTROY.
    async fn lifecycle(k: &Rc<TestKernel>, ctl: &Ctl) {
        let Ok(id) = ctl.create(&[dev(0), dev(1)]).await else {
            return;
        };
        let _ = ctl.append(&id, dev(16), &[(0, 128 * MIB)]).await;
        let _ = ctl.take(&id).await;
        let _ = k.user_write(dev(0), 1020, vec![5; 8]).await;
        let _ = k.user_write(dev(1), 0, vec![5; 8]).await;
        for (_, image) in ctl.collect_images(&id).await.unwrap_or_default() {
            if image != DevT(0) {
                let _ = k.user_read(image, 1000, 40).await;
                let _ = k.user_write(image, 4000, vec![1; 8]).await;
            }
        }
        let _ = ctl.destroy(&id).await;
    }

    #[test]
    fn every_allocation_failure_ends_in_an_errno_without_leaks() {
        let sites = [
            "tracker",
            "cbt_map.read_map",
            "cbt_map.write_map",
            "diff_storage",
            "snapshot",
            "diff_area",
            "diff_buffer",
            "diff_io",
            "diff_region",
            "event",
            "add_disk",
        ];
        for persistent in [false, true] {
            for site in sites {
                for n in 1..=6 {
                    let (k, ctl) = setup(&[]);
                    if persistent {
                        k.fail_site_from(site, n);
                    } else {
                        k.fail_site_nth(site, n);
                    }
                    run(&k, async {
                        lifecycle(&k, &ctl).await;
                        k.unfail_site(site);
                        for d in [dev(0), dev(1)] {
                            let _ = ctl.tracker_remove(d).await;
                        }
                        k.settle().await;
                    });
                    let case = format!("site {site}, n {n}, persistent {persistent}");
                    assert!(k.warns().is_empty(), "{case}: {:?}", k.warns());
                    assert!(k.live_allocs().is_empty(), "{case}: {:?}", k.live_allocs());
                    assert!(k.open_bdevs().is_empty(), "{case}: {:?}", k.open_bdevs());
                    assert!(k.task_names().is_empty(), "{case}: {:?}", k.task_names());
                    assert_eq!(ctl.module.trackers_alive.get(), 0, "{case}");
                }
            }
        }
    }
}
