//! Change block tracking map (v2 `cbt_map.c`, spec section 4).
//!
//! Two byte tables per tracked device: `write_map`, marked by every write
//! with the active snapshot number, and `read_map`, the frozen copy the
//! consumer reads, refreshed at each TAKE. All fields sit under one spinlock
//! (`locker`), as upstream.

use std::rc::Rc;

use std::cell::Cell;

use crate::kernel::sync::SpinLock;
use crate::kernel::{kmalloc, AllocId, Errno, Gfp, Kref, SECTOR_SHIFT};
use crate::module::Module;

/// Everything under `cbt_map.locker`.
pub struct CbtState {
    pub blk_size_shift: u32,
    pub blk_count: u64,
    /// In sectors.
    pub device_capacity: u64,
    pub read_map: Vec<u8>,
    pub write_map: Vec<u8>,
    pub snap_number_active: u64,
    pub snap_number_previous: u64,
    pub generation_id: [u8; 16],
    pub is_corrupted: bool,
    /// The two table allocations; None after a failed reset (B-CBT-3).
    tables: Option<(AllocId, AllocId)>,
    /// Bumped each time the tables are freed: a reader that slept across
    /// a change was reading freed memory.
    tables_epoch: u64,
}

pub struct CbtMap {
    module: Rc<Module>,
    pub state: SpinLock<CbtState>,
    /// `cbt_map.kref`: the tracker holds one, each image another
    /// (snapimage.c:221-222), so the tables outlive whichever goes first.
    refs: Kref,
    /// The `struct cbt_map` allocation (GFP_KERNEL), given back at the
    /// last put.
    alloc: Cell<Option<AllocId>>,
}

/// What TRACKER_COLLECT reports for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CbtInfo {
    pub blk_size: u32,
    pub device_capacity_bytes: u64,
    pub blk_count: u32,
    pub generation_id: [u8; 16],
    pub snap_number: u8,
}

impl CbtMap {
    /// `cbt_map_create` for the device's current capacity: the struct
    /// (GFP_KERNEL) and the tables (vmalloc GFP_NOIO) may each sleep.
    pub async fn new(module: &Rc<Module>, capacity: u64) -> Result<Rc<CbtMap>, Errno> {
        let k = module.k();
        let alloc = kmalloc(k, "cbt_map", 256, Gfp::Kernel).await?;
        let (shift, count) = block_geometry(module, capacity);
        let tables = match alloc_tables(module, count).await {
            Ok(tables) => tables,
            Err(e) => {
                k.kfree(alloc);
                return Err(e);
            }
        };
        let state = CbtState {
            blk_size_shift: shift,
            blk_count: count,
            device_capacity: capacity,
            read_map: vec![0; count as usize],
            write_map: vec![0; count as usize],
            snap_number_active: 1,
            snap_number_previous: 0,
            generation_id: module.k().uuid_v4(),
            is_corrupted: false,
            tables: Some(tables),
            tables_epoch: 0,
        };
        Ok(Rc::new(CbtMap {
            module: module.clone(),
            state: SpinLock::new(state),
            refs: Kref::new("cbt_map"),
            alloc: Cell::new(Some(alloc)),
        }))
    }

    /// `cbt_map_get`.
    pub fn get(&self) {
        self.refs.get();
    }

    /// `cbt_map_put`: the last reference destroys the map.
    pub fn put(&self) {
        if self.refs.put(self.module.k()) {
            self.destroy();
        }
    }

    /// `cbt_map_reset`, used at TAKE when the map is corrupted or the device
    /// was resized: new size, new generation, counters back to 0/1.
    pub async fn reset(&self, capacity: u64) -> Result<(), Errno> {
        let module = &self.module;
        let (shift, count) = block_geometry(module, capacity);
        if module.quirks.cbt_3 {
            // v2 frees the old tables first and stores the new geometry
            // before it allocates: a failed allocation leaves a map with no
            // tables, not flagged corrupted, that already claims the new
            // capacity, so the next TAKE sees no resize and skips the reset
            // (B-CBT-3).
            self.free_tables();
            self.state.with(|s| {
                s.is_corrupted = false;
                s.blk_size_shift = shift;
                s.blk_count = count;
                s.device_capacity = capacity;
            });
        }
        // The fix builds the new tables before dropping the old ones.
        let tables = alloc_tables(module, count).await?;
        self.free_tables();
        let generation = module.k().uuid_v4();
        self.state.with(|s| {
            s.is_corrupted = false;
            s.blk_size_shift = shift;
            s.blk_count = count;
            s.device_capacity = capacity;
            s.read_map = vec![0; count as usize];
            s.write_map = vec![0; count as usize];
            s.snap_number_active = 1;
            s.snap_number_previous = 0;
            s.generation_id = generation;
            s.tables = Some(tables);
        });
        Ok(())
    }

    fn free_tables(&self) {
        let tables = self.state.with(|s| {
            s.read_map = Vec::new();
            s.write_map = Vec::new();
            s.tables_epoch += 1;
            s.tables.take()
        });
        if let Some((read, write)) = tables {
            self.module.k().kfree(read);
            self.module.k().kfree(write);
        }
    }

    /// Free the tables and the struct when the last reference goes
    /// (`cbt_map_destroy`).
    fn destroy(&self) {
        self.free_tables();
        if let Some(alloc) = self.alloc.take() {
            self.module.k().kfree(alloc);
        }
    }

    /// `cbt_map_switch`: freeze the write map into the read map and start
    /// the next snapshot number. At 256 the number wraps to 1 with a new
    /// generation, and the read map keeps the previous copy (B-CBT-4, which
    /// is design behaviour, so no quirk).
    pub fn switch(&self) {
        let generation = self.module.k().uuid_v4();
        self.state.with(|s| {
            // Only a failed v2 reset leaves a live map without tables
            // (B-CBT-3); the memcpy (or the memset at the wrap) then
            // writes through NULL. A zero-length copy would not fault.
            assert!(
                s.tables.is_some() || s.blk_count == 0,
                "BUG: kernel NULL pointer dereference in cbt_map_switch (B-CBT-3)"
            );
            s.snap_number_previous = s.snap_number_active;
            s.snap_number_active += 1;
            if s.snap_number_active == 256 {
                s.snap_number_active = 1;
                s.write_map.fill(0);
                s.generation_id = generation;
            } else {
                let (read, write) = (&mut s.read_map, &s.write_map);
                read.copy_from_slice(write);
            }
        });
    }

    /// `cbt_map_set`: the write path. A block beyond the map corrupts it.
    pub fn set(&self, start: u64, count: u64) -> Result<(), Errno> {
        self.state.with(|s| {
            if s.is_corrupted {
                return Err(Errno::EINVAL);
            }
            assert!(s.tables.is_some(), "cbt_map_set on a map without tables");
            let active = s.snap_number_active as u8;
            for block in block_range(s, start, count) {
                if block >= s.blk_count {
                    s.is_corrupted = true;
                    return Err(Errno::EINVAL);
                }
                let byte = &mut s.write_map[block as usize];
                *byte = (*byte).max(active);
            }
            Ok(())
        })
    }

    /// `cbt_map_set_both`: MARK_DIRTY raises both maps. The fix checks
    /// every range before it marks anything; v2 (B-CBT-6) walks the write
    /// map first, wraps a zero count at sector 0 into "every block", and
    /// touches the read map only if the write walk got through.
    pub fn set_both(&self, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        if self.module.quirks.cbt_6 {
            return ranges
                .iter()
                .try_for_each(|&(start, count)| self.set_both_v2(start, count));
        }
        self.state.with(|s| {
            let valid = !s.is_corrupted
                && ranges.iter().all(|&(start, count)| {
                    count > 0
                        && start
                            .checked_add(count)
                            .is_some_and(|end| end <= s.device_capacity)
                });
            if !valid {
                return Err(Errno::EINVAL);
            }
            for &(start, count) in ranges {
                raise_both(s, block_range(s, start, count));
            }
            Ok(())
        })
    }

    /// One range as v2 marks it.
    fn set_both_v2(&self, start: u64, count: u64) -> Result<(), Errno> {
        self.state.with(|s| {
            if s.is_corrupted {
                return Err(Errno::EINVAL);
            }
            let active = s.snap_number_active as u8;
            for block in block_range(s, start, count) {
                if block >= s.blk_count {
                    return Err(Errno::EINVAL);
                }
                let byte = &mut s.write_map[block as usize];
                *byte = (*byte).max(active);
            }
            let previous = s.snap_number_previous as u8;
            for block in block_range(s, start, count) {
                let byte = &mut s.read_map[block as usize];
                *byte = (*byte).max(previous);
            }
            Ok(())
        })
    }

    /// Which allocation of the tables is live (see `tables_epoch`).
    pub fn tables_epoch(&self) -> u64 {
        self.state.with(|s| s.tables_epoch)
    }

    pub fn is_corrupted(&self) -> bool {
        self.state.with(|s| s.is_corrupted)
    }

    pub fn device_capacity(&self) -> u64 {
        self.state.with(|s| s.device_capacity)
    }

    /// The bytes READ_CBT_MAP copies: up to `length` bytes from `offset`.
    /// v2 (B-CBT-2) copies from the start of the map whatever the offset,
    /// and with `offset > blk_count` the unsigned length wraps so it reads
    /// past the table: the bytes beyond it stand for whatever kernel memory
    /// follows (zeros here). The fix reads from the offset and stops at the
    /// end of the map.
    pub fn read(&self, offset: u32, length: u32) -> Vec<u8> {
        let v2 = self.module.quirks.cbt_2;
        self.state.with(|s| {
            let count = s.blk_count as u32;
            if v2 {
                let real = count.wrapping_sub(offset).min(length) as usize;
                let mut bytes = s.read_map[..real.min(s.read_map.len())].to_vec();
                bytes.resize(real, 0);
                return bytes;
            }
            let begin = (offset as usize).min(s.read_map.len());
            let end = begin.saturating_add(length as usize).min(s.read_map.len());
            s.read_map[begin..end].to_vec()
        })
    }

    /// What TRACKER_COLLECT reports. `blk_size` is a C int shift: with
    /// B-CBT-1 the shift can reach 32, where x86 masks the count and 1 is
    /// what user space most likely sees.
    pub fn info(&self) -> CbtInfo {
        self.state.with(|s| CbtInfo {
            blk_size: 1u32.wrapping_shl(s.blk_size_shift),
            device_capacity_bytes: s.device_capacity << SECTOR_SHIFT,
            blk_count: s.blk_count as u32,
            generation_id: s.generation_id,
            snap_number: s.snap_number_previous as u8,
        })
    }
}

/// Raise both maps over a block range (the range is known to be valid).
fn raise_both(s: &mut CbtState, blocks: std::ops::RangeInclusive<u64>) {
    let active = s.snap_number_active as u8;
    let previous = s.snap_number_previous as u8;
    for block in blocks {
        let i = block as usize;
        s.write_map[i] = s.write_map[i].max(active);
        s.read_map[i] = s.read_map[i].max(previous);
    }
}

/// The block indices a sector range touches. A zero count at sector 0 wraps
/// the last index in C and covers every block (B-CBT-6), reproduced by the
/// wrapping arithmetic.
fn block_range(s: &CbtState, start: u64, count: u64) -> std::ops::RangeInclusive<u64> {
    let shift = s.blk_size_shift - SECTOR_SHIFT;
    let first = start >> shift;
    let last = start.wrapping_add(count).wrapping_sub(1) >> shift;
    first..=last.min(s.blk_count.max(first))
}

/// The block-size rule (spec 4.2): grow the block until the count fits.
/// v2 doubles the shift (B-CBT-1); the fix adds one, up to a maximum shift.
fn block_geometry(module: &Module, capacity: u64) -> (u32, u64) {
    let params = module.params();
    let doubling = module.quirks.cbt_1;
    let mut shift = params.tracking_block_minimum_shift;
    let mut count = blocks_for(capacity, shift);
    while count > params.tracking_block_maximum_count {
        if doubling {
            shift *= 2;
        } else if shift >= params.tracking_block_maximum_shift {
            break;
        } else {
            shift += 1;
        }
        count = blocks_for(capacity, shift);
    }
    (shift, count)
}

fn blocks_for(capacity: u64, shift: u32) -> u64 {
    let block_sectors_shift = shift.saturating_sub(SECTOR_SHIFT).min(63);
    capacity.div_ceil(1u64 << block_sectors_shift)
}

/// Both tables with vmalloc in NOIO mode (each may sleep in reclaim); a
/// zero-sized map fails as in C.
async fn alloc_tables(module: &Module, count: u64) -> Result<(AllocId, AllocId), Errno> {
    if count == 0 {
        return Err(Errno::ENOMEM);
    }
    let k = module.k();
    let read = kmalloc(k, "cbt_map.read_map", count, Gfp::Noio).await?;
    match kmalloc(k, "cbt_map.write_map", count, Gfp::Noio).await {
        Ok(write) => Ok((read, write)),
        Err(e) => {
            k.kfree(read);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testing::{load, quirks, run, TestKernel};
    use crate::params::Params;
    use crate::quirks::Quirks;

    const GIB: u64 = 2 * 1024 * 1024; // sectors

    fn module(quirk_ids: &[&str]) -> Rc<Module> {
        load(&TestKernel::new(), Params::default(), quirks(quirk_ids))
    }

    /// Run one engine call to its end (its allocations yield).
    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        run(&TestKernel::new(), f)
    }

    fn geometry(cbt: &CbtMap) -> (u32, u64) {
        cbt.state.with(|s| (s.blk_size_shift, s.blk_count))
    }

    #[test]
    fn four_gib_device_has_64_kib_blocks() {
        // Spec 4.9: 8 388 608 sectors, shift 16, 65 536 blocks of 128 sectors.
        let cbt = now(CbtMap::new(&module(&[]), 4 * GIB)).unwrap();
        assert_eq!(geometry(&cbt), (16, 65_536));
        let info = cbt.info();
        assert_eq!(info.blk_size, 65_536);
        assert_eq!(info.blk_count, 65_536);
        assert_eq!(info.device_capacity_bytes, 4 << 30);
        assert_eq!(info.snap_number, 0);
        cbt.state.with(|s| {
            assert_eq!((s.snap_number_previous, s.snap_number_active), (0, 1));
            assert!(s.read_map.iter().chain(&s.write_map).all(|&b| b == 0));
        });
    }

    #[test]
    fn fixed_rule_grows_the_shift_by_one() {
        let m = module(&[]);
        // 128 GiB is the largest device with 64 KiB blocks (2^21 of them).
        let cbt = now(CbtMap::new(&m, 128 * GIB)).unwrap();
        assert_eq!(geometry(&cbt), (16, 2_097_152));
        // 200 GiB: 3 276 800 blocks at shift 16 is too many, shift 17 fits.
        let cbt = now(CbtMap::new(&m, 200 * GIB)).unwrap();
        assert_eq!(geometry(&cbt), (17, 1_638_400));
        assert_eq!(cbt.info().blk_size, 128 * 1024);
    }

    #[test]
    fn fixed_rule_stops_at_the_maximum_shift() {
        let k = TestKernel::new();
        let params = Params {
            tracking_block_maximum_count: 16,
            ..Params::default()
        };
        let m = load(&k, params, Quirks::default());
        // 512 GiB = 2^30 sectors; at shift 26 (2^17 sectors) still 8192 blocks.
        let cbt = now(CbtMap::new(&m, 512 * GIB)).unwrap();
        assert_eq!(geometry(&cbt), (26, 8192));
    }

    #[test]
    fn quirk_cbt_1_doubles_the_shift_and_reports_blk_size_1() {
        // Spec 4.2 / B-CBT-1: a 200 GiB disk gets 50 blocks of 4 GiB.
        let cbt = now(CbtMap::new(&module(&["B-CBT-1"]), 200 * GIB)).unwrap();
        assert_eq!(geometry(&cbt), (32, 50));
        assert_eq!(cbt.info().blk_size, 1, "(int)1 << 32 on x86");
        // Up to 128 GiB nothing changes.
        let cbt = now(CbtMap::new(&module(&["B-CBT-1"]), 128 * GIB)).unwrap();
        assert_eq!(geometry(&cbt), (16, 2_097_152));
    }

    #[test]
    fn zero_capacity_fails_with_enomem() {
        assert_eq!(now(CbtMap::new(&module(&[]), 0)).err(), Some(Errno::ENOMEM));
    }

    #[test]
    fn the_map_lives_until_its_last_reference() {
        let k = TestKernel::new();
        let m = load(&k, Params::default(), Quirks::default());
        let cbt = now(CbtMap::new(&m, 4 * GIB)).unwrap();
        cbt.get(); // an image's reference
        cbt.put(); // the tracker goes first
        assert_eq!(k.live_allocs().len(), 3, "the image still reads it");
        cbt.put();
        assert!(k.live_allocs().is_empty());
    }

    #[test]
    fn table_allocation_failure_is_enomem_and_leaks_nothing() {
        let k = TestKernel::new();
        let m = load(&k, Params::default(), Quirks::default());
        k.fail_site("cbt_map.write_map");
        assert_eq!(now(CbtMap::new(&m, 4 * GIB)).err(), Some(Errno::ENOMEM));
        assert!(k.live_allocs().is_empty(), "{:?}", k.live_allocs());
        k.unfail_site("cbt_map.write_map");
        let cbt = now(CbtMap::new(&m, 4 * GIB)).unwrap();
        assert_eq!(k.live_allocs().len(), 3, "the struct and two tables");
        cbt.put();
        assert!(k.live_allocs().is_empty());
    }

    #[test]
    fn set_marks_the_write_map_with_active() {
        let cbt = now(CbtMap::new(&module(&[]), 4 * GIB)).unwrap();
        // Spec 4.9 step 2: sectors 1000..1007 are in block 7.
        cbt.set(1000, 8).unwrap();
        // 1020..1035 spans blocks 7 and 8.
        cbt.set(1020, 16).unwrap();
        cbt.state.with(|s| {
            assert_eq!(&s.write_map[6..10], &[0, 1, 1, 0]);
            assert!(s.read_map.iter().all(|&b| b == 0));
        });
    }

    #[test]
    fn switch_copies_the_write_map_and_advances_the_numbers() {
        let cbt = now(CbtMap::new(&module(&[]), 4 * GIB)).unwrap();
        cbt.set(1000, 8).unwrap();
        cbt.switch();
        cbt.state.with(|s| {
            assert_eq!((s.snap_number_previous, s.snap_number_active), (1, 2));
            assert_eq!(s.read_map[7], 1);
        });
        assert_eq!(cbt.info().snap_number, 1);
        // Spec 4.9 step 4: blocks 20 and 21 get 2; the read map is frozen.
        cbt.set(2560, 256).unwrap();
        cbt.state.with(|s| {
            assert_eq!(&s.write_map[20..22], &[2, 2]);
            assert_eq!(&s.read_map[20..22], &[0, 0]);
        });
        let generation = cbt.info().generation_id;
        cbt.switch();
        cbt.state.with(|s| {
            assert_eq!((s.snap_number_previous, s.snap_number_active), (2, 3));
            assert_eq!((s.read_map[7], s.read_map[20], s.read_map[21]), (1, 2, 2));
        });
        assert_eq!(cbt.info().generation_id, generation, "no new generation");
        // A second write to a block marked earlier raises it to active.
        cbt.set(1000, 1).unwrap();
        cbt.state.with(|s| assert_eq!(s.write_map[7], 3));
    }

    #[test]
    fn the_255th_switch_wraps_with_a_new_generation_and_a_stale_read_map() {
        let cbt = now(CbtMap::new(&module(&[]), 4 * GIB)).unwrap();
        let first_generation = cbt.info().generation_id;
        cbt.set(0, 1).unwrap(); // block 0 = 1
        for _ in 0..254 {
            cbt.switch();
        }
        cbt.state.with(|s| {
            assert_eq!((s.snap_number_previous, s.snap_number_active), (254, 255));
            assert_eq!(s.read_map[0], 1);
        });
        // Written during the 255th period.
        cbt.set(128, 1).unwrap();
        cbt.state.with(|s| assert_eq!(s.write_map[1], 255));
        cbt.switch(); // the 255th
        cbt.state.with(|s| {
            assert_eq!((s.snap_number_previous, s.snap_number_active), (255, 1));
            assert!(s.write_map.iter().all(|&b| b == 0), "write map zeroed");
            assert_eq!(s.read_map[0], 1, "read map kept from the 254th switch");
            assert_eq!(s.read_map[1], 0, "changes of the 255th period are lost");
        });
        let info = cbt.info();
        assert_eq!(info.snap_number, 255);
        assert_ne!(info.generation_id, first_generation);
        cbt.set(256, 1).unwrap(); // block 2 = 1
        cbt.switch(); // the 256th
        cbt.state.with(|s| {
            assert_eq!((s.snap_number_previous, s.snap_number_active), (1, 2));
            assert_eq!(
                &s.read_map[0..3],
                &[0, 0, 1],
                "a copy of the write map again"
            );
        });
        assert_eq!(cbt.info().generation_id, info.generation_id);
    }

    #[test]
    fn set_beyond_the_map_corrupts_it() {
        // 1024 sectors: 8 blocks of 128 sectors.
        let cbt = now(CbtMap::new(&module(&[]), 1024)).unwrap();
        assert_eq!(geometry(&cbt), (16, 8));
        // 1000..1099 touches blocks 7 and 8; 8 is past the end.
        assert_eq!(cbt.set(1000, 100), Err(Errno::EINVAL));
        assert!(cbt.is_corrupted());
        cbt.state
            .with(|s| assert_eq!(s.write_map[7], 1, "block 7 stays marked"));
        // Every later set fails, even in range.
        assert_eq!(cbt.set(0, 8), Err(Errno::EINVAL));
        cbt.state.with(|s| assert_eq!(s.write_map[0], 0));
    }

    #[test]
    fn reset_gives_a_new_size_generation_and_numbers() {
        let cbt = now(CbtMap::new(&module(&[]), 1024)).unwrap();
        let generation = cbt.info().generation_id;
        let _ = cbt.set(2048, 8);
        cbt.switch();
        assert!(cbt.is_corrupted());
        now(cbt.reset(4096)).unwrap();
        assert!(!cbt.is_corrupted());
        assert_eq!(geometry(&cbt), (16, 32));
        assert_eq!(cbt.device_capacity(), 4096);
        cbt.state.with(|s| {
            assert_eq!((s.snap_number_previous, s.snap_number_active), (0, 1));
            assert!(s.write_map.iter().chain(&s.read_map).all(|&b| b == 0));
        });
        assert_ne!(cbt.info().generation_id, generation);
        cbt.set(2048, 8).unwrap();
    }

    #[test]
    fn failed_reset_keeps_the_old_tables_unless_b_cbt_3() {
        let k = TestKernel::new();
        let m = load(&k, Params::default(), Quirks::default());
        let cbt = now(CbtMap::new(&m, 1024)).unwrap();
        k.fail_site("cbt_map.read_map");
        assert_eq!(now(cbt.reset(4096)), Err(Errno::ENOMEM));
        k.unfail_site("cbt_map.read_map");
        assert_eq!(geometry(&cbt), (16, 8));
        cbt.set(0, 8).unwrap();

        let k = TestKernel::new();
        let m = load(&k, Params::default(), quirks(&["B-CBT-3"]));
        let cbt = now(CbtMap::new(&m, 1024)).unwrap();
        k.fail_site("cbt_map.read_map");
        assert_eq!(now(cbt.reset(4096)), Err(Errno::ENOMEM));
        assert!(!cbt.is_corrupted(), "v2: no tables, yet not corrupted");
        let oops = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cbt.set(0, 8)));
        assert!(
            oops.is_err(),
            "the next set dereferences the missing tables"
        );
    }

    /// B-CBT-3 as the C has it: the new geometry is stored before the
    /// allocation fails, so TRACKER_COLLECT reports it, the capacity matches
    /// the device (a TAKE skips the reset), and the switch writes through
    /// NULL.
    #[test]
    fn b_cbt_3_failed_reset_keeps_the_new_geometry_and_switch_oopses() {
        let k = TestKernel::new();
        let m = load(&k, Params::default(), quirks(&["B-CBT-3"]));
        let cbt = now(CbtMap::new(&m, 1024)).unwrap();
        k.fail_site("cbt_map.read_map");
        assert_eq!(now(cbt.reset(4096)), Err(Errno::ENOMEM));
        k.unfail_site("cbt_map.read_map");
        assert_eq!(geometry(&cbt), (16, 32), "the new geometry, as C stores it");
        assert_eq!(cbt.device_capacity(), 4096);
        assert_eq!(cbt.info().device_capacity_bytes, 4096 << SECTOR_SHIFT);
        assert_eq!(cbt.info().blk_count, 32);
        let oops = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cbt.switch()));
        let text = oops.unwrap_err();
        let text = text
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| text.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        assert!(text.contains("cbt_map_switch"), "{text}");
    }

    #[test]
    fn set_both_raises_both_maps() {
        let cbt = now(CbtMap::new(&module(&[]), 4 * GIB)).unwrap();
        cbt.switch();
        cbt.switch(); // previous 2, active 3
                      // Spec 4.9 step 6: sector 3840, 128 sectors is block 30.
        cbt.set_both(&[(3840, 128)]).unwrap();
        cbt.state.with(|s| {
            assert_eq!((s.write_map[30], s.read_map[30]), (3, 2));
            assert_eq!((s.write_map[31], s.read_map[31]), (0, 0));
        });
    }

    #[test]
    fn set_both_validates_every_range_first() {
        let cbt = now(CbtMap::new(&module(&[]), 1024)).unwrap();
        cbt.switch();
        // A good range followed by one past the end: nothing is marked.
        assert_eq!(cbt.set_both(&[(0, 128), (1000, 100)]), Err(Errno::EINVAL));
        // A zero count is refused.
        assert_eq!(cbt.set_both(&[(0, 0)]), Err(Errno::EINVAL));
        cbt.state.with(|s| {
            assert!(s.write_map.iter().chain(&s.read_map).all(|&b| b == 0));
        });
        assert!(!cbt.is_corrupted(), "set_both never corrupts the map");
        cbt.set_both(&[(0, 128), (1016, 8)]).unwrap();
        cbt.state.with(|s| {
            assert_eq!((s.write_map[0], s.read_map[0]), (2, 1));
            assert_eq!((s.write_map[7], s.read_map[7]), (2, 1));
        });
    }

    #[test]
    fn quirk_cbt_6_zero_count_at_sector_0_marks_every_block() {
        let cbt = now(CbtMap::new(&module(&["B-CBT-6"]), 1024)).unwrap();
        cbt.switch(); // previous 1, active 2
        assert_eq!(cbt.set_both(&[(0, 0)]), Err(Errno::EINVAL));
        cbt.state.with(|s| {
            assert!(s.write_map.iter().all(|&b| b == 2), "{:?}", s.write_map);
            // As upstream's cbt_map_set_both: the read map is walked only
            // after the write walk succeeded (spec B-CBT-6 says both).
            assert!(s.read_map.iter().all(|&b| b == 0), "{:?}", s.read_map);
        });
        assert!(!cbt.is_corrupted());
    }

    #[test]
    fn quirk_cbt_6_applies_ranges_before_the_bad_one() {
        let cbt = now(CbtMap::new(&module(&["B-CBT-6"]), 1024)).unwrap();
        cbt.switch();
        assert_eq!(cbt.set_both(&[(0, 128), (1000, 100)]), Err(Errno::EINVAL));
        cbt.state.with(|s| {
            assert_eq!(
                (s.write_map[0], s.read_map[0]),
                (2, 1),
                "first range applied"
            );
            assert_eq!(s.write_map[7], 2, "in-range part of the bad range");
            assert_eq!(s.read_map[7], 0);
        });
    }

    /// A map of 8 blocks whose read map holds 1..=8.
    fn numbered(quirk_ids: &[&str]) -> Rc<CbtMap> {
        let cbt = now(CbtMap::new(&module(quirk_ids), 1024)).unwrap();
        cbt.state.with(|s| {
            for (i, byte) in s.read_map.iter_mut().enumerate() {
                *byte = i as u8 + 1;
            }
        });
        cbt
    }

    #[test]
    fn read_honours_the_offset() {
        let cbt = numbered(&[]);
        assert_eq!(cbt.read(0, 3), vec![1, 2, 3]);
        assert_eq!(cbt.read(4, 3), vec![5, 6, 7]);
        assert_eq!(cbt.read(6, 100), vec![7, 8], "stops at the end of the map");
        assert_eq!(cbt.read(8, 4), Vec::<u8>::new());
        assert_eq!(cbt.read(100, 4), Vec::<u8>::new());
    }

    #[test]
    fn quirk_cbt_2_read_ignores_the_offset_and_runs_past_the_map() {
        let cbt = numbered(&["B-CBT-2"]);
        assert_eq!(cbt.read(4, 3), vec![1, 2, 3], "copied from the start");
        assert_eq!(cbt.read(6, 100), vec![1, 2], "real = blk_count - offset");
        // offset > blk_count: the length wraps to `length`, past the table.
        let bytes = cbt.read(100, 12);
        assert_eq!(bytes.len(), 12);
        assert_eq!(&bytes[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
