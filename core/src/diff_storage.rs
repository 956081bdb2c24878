//! The difference storage of a snapshot (v2 `diff_storage.c`, spec 6).
//!
//! Ranges appended by user space are handed out first-fit, in append order,
//! one whole chunk at a time; a block tail too small for a chunk is wasted
//! and space is never returned. The low-free-space event follows the
//! `requested` arithmetic of v2 exactly (B-DS-2 is design behaviour).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::event_queue::{EventQueue, EVENT_LOW_FREE_SPACE};
use crate::kernel::{
    blkdev_get, blkdev_put, kmalloc, AllocId, BdevHandle, DevT, Errno, Gfp, PAGE_SECTORS,
};
use crate::module::Module;

/// A range of a storage device, in sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageBlock {
    pub dev: DevT,
    pub sector: u64,
    pub count: u64,
    pub used: u64,
}

/// Where one chunk's copy lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffRegion {
    pub dev: DevT,
    pub sector: u64,
    pub count: u64,
    /// The `struct diff_region` (GFP_NOIO): it lives with its chunk, until
    /// the chunk fails or is freed (`diff_storage_free_region`).
    pub alloc: AllocId,
}

/// Everything under `diff_storage.lock`.
#[derive(Default)]
struct StorageState {
    bdevs: Vec<BdevHandle>,
    /// The `storage_bdev` and `storage_block` structs APPEND allocated;
    /// they live until `diff_storage_free`.
    allocs: Vec<AllocId>,
    empty_blocks: std::collections::VecDeque<StorageBlock>,
    filled_blocks: Vec<StorageBlock>,
    capacity: u64,
    filled: u64,
}

pub struct DiffStorage {
    module: Rc<Module>,
    /// The `struct diff_storage` (GFP_KERNEL), given back by `free`.
    alloc: Cell<Option<AllocId>>,
    state: RefCell<StorageState>,
    /// Changed outside the lock in v2; single-threaded here, so a Cell.
    requested: Cell<u64>,
    low_space_flag: Cell<u64>,
    overflow_flag: Cell<u64>,
    pub event_queue: EventQueue,
}

/// A snapshot of the counters, for checks and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageCounters {
    pub capacity: u64,
    pub filled: u64,
    pub requested: u64,
    pub overflow: bool,
}

impl DiffStorage {
    /// `diff_storage_new`: a GFP_KERNEL allocation (may sleep); queues the
    /// first low-free-space event at once.
    pub async fn new(module: &Rc<Module>) -> Result<Rc<DiffStorage>, Errno> {
        let alloc = kmalloc(module.k(), "diff_storage", 256, Gfp::Kernel).await?;
        let storage = Rc::new(DiffStorage {
            module: module.clone(),
            alloc: Cell::new(Some(alloc)),
            state: RefCell::new(StorageState::default()),
            requested: Cell::new(0),
            low_space_flag: Cell::new(0),
            overflow_flag: Cell::new(0),
            event_queue: EventQueue::new(module),
        });
        let minimum = module.params().diff_storage_minimum;
        storage.requested.set(minimum);
        storage.queue_low_space_event(minimum).await;
        Ok(storage)
    }

    async fn queue_low_space_event(&self, requested_nr_sect: u64) {
        let payload = requested_nr_sect.to_le_bytes().to_vec();
        self.event_queue
            .generate(EVENT_LOW_FREE_SPACE, payload)
            .await;
    }

    /// Find or open the storage device (`diff_storage_bdev_by_id`).
    fn bdev_for(&self, dev: DevT) -> Result<(), Errno> {
        if self.state.borrow().bdevs.iter().any(|b| b.dev == dev) {
            return Ok(());
        }
        let handle = self.module.k().bdev_open(dev)?;
        self.state.borrow_mut().bdevs.push(handle);
        Ok(())
    }

    /// Validate one range (the fix for B-DS-1): page-aligned and inside the
    /// device, with a non-zero length.
    pub fn check_range(&self, dev: DevT, sector: u64, count: u64) -> Result<(), Errno> {
        if self.module.quirks.ds_1 {
            return Ok(());
        }
        let capacity = self.module.k().bdev_nr_sectors(dev);
        let aligned = sector.is_multiple_of(PAGE_SECTORS) && count.is_multiple_of(PAGE_SECTORS);
        let inside = sector.checked_add(count).is_some_and(|end| end <= capacity);
        if count == 0 || !aligned || !inside {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// `diff_storage_bdev_by_id` as APPEND runs it: open the device
    /// (sleeps) and allocate its `storage_bdev` (GFP_KERNEL, sleeps); on
    /// -ENOMEM the device is put back.
    pub async fn append_open(&self, dev: DevT) -> Result<(), Errno> {
        if self.state.borrow().bdevs.iter().any(|b| b.dev == dev) {
            return Ok(());
        }
        let k = self.module.k();
        let handle = blkdev_get(k, "append.blkdev_get", dev).await?;
        match kmalloc(k, "storage_bdev", 64, Gfp::Kernel).await {
            Ok(alloc) => {
                let mut state = self.state.borrow_mut();
                state.bdevs.push(handle);
                state.allocs.push(alloc);
                Ok(())
            }
            Err(e) => {
                blkdev_put(k, "append.blkdev_put", handle).await;
                Err(e)
            }
        }
    }

    /// One range of APPEND with its `storage_block` (GFP_KERNEL, a
    /// sleeping point: COWs may take regions between two ranges). -ENOMEM
    /// keeps the ranges added before, as v2 does.
    pub async fn append_block(&self, dev: DevT, sector: u64, count: u64) -> Result<(), Errno> {
        let alloc = kmalloc(self.module.k(), "storage_block", 64, Gfp::Kernel).await?;
        self.state.borrow_mut().allocs.push(alloc);
        self.append_range(dev, sector, count);
        Ok(())
    }

    /// Open the device of an APPEND_STORAGE (before its ranges are read).
    pub fn append_begin(&self, dev: DevT) -> Result<(), Errno> {
        self.bdev_for(dev)
    }

    /// Add one range to the tail of the empty list.
    pub fn append_range(&self, dev: DevT, sector: u64, count: u64) {
        let mut state = self.state.borrow_mut();
        state.empty_blocks.push_back(StorageBlock {
            dev,
            sector,
            count,
            used: 0,
        });
        state.capacity += count;
    }

    /// The end of an APPEND: re-arm the low-space event once the user gave
    /// at least what was requested.
    pub fn append_end(&self) {
        let capacity = self.state.borrow().capacity;
        if self.low_space_flag.get() != 0 && capacity >= self.requested.get() {
            self.low_space_flag.set(0);
        }
    }

    pub fn capacity(&self) -> u64 {
        self.state.borrow().capacity
    }

    pub fn is_overflow(&self) -> bool {
        self.overflow_flag.get() != 0
    }

    pub fn counters(&self) -> StorageCounters {
        let state = self.state.borrow();
        StorageCounters {
            capacity: state.capacity,
            filled: state.filled,
            requested: self.requested.get(),
            overflow: self.is_overflow(),
        }
    }

    /// `diff_storage_new_region`: first fit in append order.
    /// The region struct is a GFP_NOIO allocation: a sleeping point, so a
    /// concurrent APPEND or another COW may run before the first fit.
    pub async fn new_region(&self, count: u64) -> Result<DiffRegion, Errno> {
        if self.is_overflow() {
            return Err(Errno::ENOSPC);
        }
        let k = self.module.k();
        let alloc = kmalloc(k, "diff_region", 32, Gfp::Noio).await?;
        let region = match self.take_first_fit(count, alloc) {
            Ok(region) => region,
            Err(e) => {
                k.kfree(alloc);
                return Err(e);
            }
        };
        self.check_low_space().await;
        Ok(region)
    }

    /// `diff_storage_free_region`: the struct goes; the space does not
    /// come back (spec 6.3).
    pub fn free_region(&self, region: DiffRegion) {
        self.module.k().kfree(region.alloc);
    }

    fn take_first_fit(&self, count: u64, alloc: AllocId) -> Result<DiffRegion, Errno> {
        let mut state = self.state.borrow_mut();
        loop {
            let Some(block) = state.empty_blocks.front_mut() else {
                self.overflow_flag.set(self.overflow_flag.get() + 1);
                return Err(Errno::ENOSPC);
            };
            if block.count - block.used >= count {
                let region = DiffRegion {
                    dev: block.dev,
                    sector: block.sector + block.used,
                    count,
                    alloc,
                };
                block.used += count;
                state.filled += count;
                return Ok(region);
            }
            // The tail is too small for a chunk: it is wasted, but counted.
            let block = state.empty_blocks.pop_front().expect("front exists");
            state.filled += block.count - block.used;
            state.filled_blocks.push(block);
        }
    }

    /// The low-space rule of spec 6.3 step 4-5: unsigned `requested - filled`.
    async fn check_low_space(&self) {
        let params = self.module.params();
        let filled = self.state.borrow().filled;
        let left = self.requested.get().wrapping_sub(filled);
        if left > params.low_space_threshold() {
            return;
        }
        self.low_space_flag.set(self.low_space_flag.get() + 1);
        if self.low_space_flag.get() == 1 {
            let minimum = params.diff_storage_minimum;
            // sector_t += int: a negative minimum wraps (B-PARAM-1).
            self.requested
                .set(self.requested.get().wrapping_add(minimum));
            self.queue_low_space_event(minimum).await;
        }
    }

    /// `diff_storage_free`: close the devices, free the events nobody
    /// took, then the struct.
    pub fn free(&self) {
        let bdevs = std::mem::take(&mut self.state.borrow_mut().bdevs);
        for handle in bdevs {
            self.module.k().bdev_close(handle);
        }
        let allocs = std::mem::take(&mut self.state.borrow_mut().allocs);
        for alloc in allocs {
            self.module.k().kfree(alloc);
        }
        self.event_queue.done();
        if let Some(alloc) = self.alloc.take() {
            self.module.k().kfree(alloc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_queue::EVENT_LOW_FREE_SPACE;
    use crate::kernel::testing::{dev, load, quirks, run, TestKernel};
    use crate::params::Params;
    use crate::quirks::Quirks;

    /// Spec 6.7: M = 262 144 sectors, so T = 131 072; chunks of 512 sectors.
    const M: u64 = 262_144;
    const CHUNK: u64 = 512;

    fn setup(quirk_ids: &[&str]) -> (Rc<TestKernel>, Rc<DiffStorage>, DevT) {
        let k = TestKernel::new();
        let store = dev(16);
        k.add_device(store, 4 * M);
        let params = Params {
            diff_storage_minimum: M,
            ..Params::default()
        };
        let m = load(&k, params, quirks(quirk_ids));
        let storage = run(&k, DiffStorage::new(&m)).unwrap();
        (k, storage, store)
    }

    fn append(storage: &DiffStorage, dev: DevT, ranges: &[(u64, u64)]) {
        storage.append_begin(dev).unwrap();
        for &(sector, count) in ranges {
            storage.check_range(dev, sector, count).unwrap();
            storage.append_range(dev, sector, count);
        }
        storage.append_end();
    }

    /// The payloads of the queued events, oldest first, draining the queue.
    fn drain_events(k: &Rc<TestKernel>, storage: &DiffStorage) -> Vec<(u32, Vec<u8>)> {
        run(k, async {
            let mut events = Vec::new();
            while let Ok(event) = storage.event_queue.wait(0).await {
                events.push((event.code, event.data));
            }
            events
        })
    }

    fn low_space(requested: u64) -> (u32, Vec<u8>) {
        (EVENT_LOW_FREE_SPACE, requested.to_le_bytes().to_vec())
    }

    #[test]
    fn creation_requests_the_minimum_at_once() {
        let (k, storage, _) = setup(&[]);
        assert_eq!(
            storage.counters(),
            StorageCounters {
                capacity: 0,
                filled: 0,
                requested: M,
                overflow: false
            }
        );
        assert_eq!(drain_events(&k, &storage), vec![low_space(M)]);
    }

    #[test]
    fn regions_are_first_fit_in_append_order_and_wasted_tails_count_as_filled() {
        let (k, storage, store) = setup(&[]);
        append(&storage, store, &[(0, 1000), (2048, 1024), (8192, 512)]);
        assert_eq!(storage.capacity(), 2536);
        let region = |sector| (store, sector, CHUNK);
        let new_region = || run(&k, storage.new_region(CHUNK)).map(|r| (r.dev, r.sector, r.count));
        assert_eq!(new_region(), Ok(region(0)));
        assert_eq!(storage.counters().filled, 512);
        // 488 sectors left in the first block: wasted, counted, next block.
        assert_eq!(new_region(), Ok(region(2048)));
        assert_eq!(storage.counters().filled, 512 + 488 + 512);
        assert_eq!(new_region(), Ok(region(2560)));
        assert_eq!(new_region(), Ok(region(8192)));
        assert_eq!(storage.counters().filled, 2536);
        assert_eq!(run(&k, storage.new_region(CHUNK)), Err(Errno::ENOSPC));
        assert!(storage.is_overflow());
    }

    #[test]
    fn low_space_event_at_the_256th_allocation_then_overflow_at_513() {
        let (k, storage, store) = setup(&[]);
        append(&storage, store, &[(0, M)]);
        assert_eq!(drain_events(&k, &storage), vec![low_space(M)]);
        for n in 1..=255u64 {
            run(&k, storage.new_region(CHUNK)).unwrap();
            assert_eq!(storage.event_queue.pending(), 0, "allocation {n}");
        }
        // Allocation 256: left = 262144 - 131072 <= T.
        run(&k, storage.new_region(CHUNK)).unwrap();
        assert_eq!(storage.counters().requested, 2 * M);
        assert_eq!(drain_events(&k, &storage), vec![low_space(M)]);
        for _ in 257..=512 {
            run(&k, storage.new_region(CHUNK)).unwrap();
        }
        assert_eq!(storage.event_queue.pending(), 0, "one event per arming");
        assert_eq!(storage.counters().filled, M);
        assert_eq!(run(&k, storage.new_region(CHUNK)), Err(Errno::ENOSPC));
        let counters = storage.counters();
        assert!(counters.overflow);
        assert_eq!((counters.capacity, counters.filled), (M, M));
    }

    #[test]
    fn appending_what_was_requested_rearms_the_event() {
        let (k, storage, store) = setup(&[]);
        append(&storage, store, &[(0, M)]);
        for _ in 0..256 {
            run(&k, storage.new_region(CHUNK)).unwrap();
        }
        assert_eq!(drain_events(&k, &storage).len(), 2);
        // Spec 6.7 step 5: capacity 524 288 >= requested clears the flag.
        append(&storage, store, &[(M, M)]);
        for n in 257..=767u64 {
            run(&k, storage.new_region(CHUNK)).unwrap();
            assert_eq!(storage.event_queue.pending(), 0, "allocation {n}");
        }
        run(&k, storage.new_region(CHUNK)).unwrap(); // 768
        assert_eq!(drain_events(&k, &storage), vec![low_space(M)]);
        assert_eq!(storage.counters().requested, 3 * M);
    }

    #[test]
    fn appending_less_than_requested_does_not_rearm() {
        let (k, storage, store) = setup(&[]);
        append(&storage, store, &[(0, M)]);
        for _ in 0..256 {
            run(&k, storage.new_region(CHUNK)).unwrap();
        }
        drain_events(&k, &storage);
        append(&storage, store, &[(M, M / 2)]); // capacity 393 216 < 524 288
        for _ in 257..=768 {
            run(&k, storage.new_region(CHUNK)).unwrap();
        }
        assert_eq!(storage.event_queue.pending(), 0);
    }

    #[test]
    fn overflow_is_permanent() {
        let (k, storage, store) = setup(&[]);
        append(&storage, store, &[(0, CHUNK)]);
        run(&k, storage.new_region(CHUNK)).unwrap();
        assert_eq!(run(&k, storage.new_region(CHUNK)), Err(Errno::ENOSPC));
        append(&storage, store, &[(CHUNK, M)]);
        assert_eq!(run(&k, storage.new_region(CHUNK)), Err(Errno::ENOSPC));
        assert_eq!(storage.counters().filled, CHUNK, "nothing allocated after");
    }

    #[test]
    fn region_descriptor_allocation_failure_is_enomem_not_overflow() {
        let (k, storage, store) = setup(&[]);
        append(&storage, store, &[(0, M)]);
        k.fail_site_times("diff_region", 1);
        assert_eq!(run(&k, storage.new_region(CHUNK)), Err(Errno::ENOMEM));
        assert!(!storage.is_overflow());
        assert_eq!(storage.counters().filled, 0);
        assert!(run(&k, storage.new_region(CHUNK)).is_ok());
    }

    #[test]
    fn check_range_rejects_unaligned_empty_and_out_of_range() {
        let (_k, storage, store) = setup(&[]);
        let capacity = 4 * M;
        assert_eq!(storage.check_range(store, 0, capacity), Ok(()));
        assert_eq!(storage.check_range(store, 8, 8), Ok(()));
        for (sector, count) in [
            (1, 8),
            (0, 7),
            (0, 0),
            (capacity - 8, 16),
            (capacity, 8),
            (u64::MAX - 7, 8),
        ] {
            assert_eq!(
                storage.check_range(store, sector, count),
                Err(Errno::EINVAL),
                "({sector}, {count})"
            );
        }
        // An unknown device has no capacity.
        assert_eq!(storage.check_range(dev(99), 0, 8), Err(Errno::EINVAL));
    }

    #[test]
    fn quirk_ds_1_accepts_any_range() {
        let (_k, storage, store) = setup(&["B-DS-1"]);
        for (sector, count) in [(1, 8), (0, 7), (0, 0), (4 * M, 8), (u64::MAX - 7, 8)] {
            assert_eq!(storage.check_range(store, sector, count), Ok(()));
        }
    }

    #[test]
    fn storage_devices_are_opened_once_and_closed_by_free() {
        let (k, storage, store) = setup(&[]);
        assert_eq!(storage.append_begin(dev(99)), Err(Errno::ENXIO));
        append(&storage, store, &[(0, 8)]);
        append(&storage, store, &[(8, 8)]);
        assert_eq!(k.open_bdevs(), vec![store]);
        storage.free();
        assert!(k.open_bdevs().is_empty());
        assert!(k.live_allocs().is_empty(), "{:?}", k.live_allocs());
    }

    #[test]
    fn creation_fails_with_enomem() {
        let k = TestKernel::new();
        let m = load(&k, Params::default(), Quirks::default());
        k.fail_site("diff_storage");
        assert_eq!(run(&k, DiffStorage::new(&m)).err(), Some(Errno::ENOMEM));
    }
}
