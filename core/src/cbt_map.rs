//! Change block tracking map (v2 `cbt_map.c`, spec section 4).
//!
//! Two byte tables per tracked device: `write_map`, marked by every write
//! with the active snapshot number, and `read_map`, the frozen copy the
//! consumer reads, refreshed at each TAKE. All fields sit under one spinlock
//! (`locker`), as upstream.

use std::rc::Rc;

use crate::kernel::sync::SpinLock;
use crate::kernel::{AllocId, Errno, Gfp, SECTOR_SHIFT};
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
}

pub struct CbtMap {
    module: Rc<Module>,
    pub state: SpinLock<CbtState>,
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
    /// `cbt_map_create` for the device's current capacity.
    pub fn new(module: &Rc<Module>, capacity: u64) -> Result<Rc<CbtMap>, Errno> {
        let (shift, count) = block_geometry(module, capacity);
        let tables = alloc_tables(module, count)?;
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
        };
        Ok(Rc::new(CbtMap {
            module: module.clone(),
            state: SpinLock::new(state),
        }))
    }

    /// `cbt_map_reset`, used at TAKE when the map is corrupted or the device
    /// was resized: new size, new generation, counters back to 0/1.
    pub fn reset(&self, capacity: u64) -> Result<(), Errno> {
        let module = &self.module;
        let (shift, count) = block_geometry(module, capacity);
        if module.quirks.cbt_3 {
            // v2 frees the old tables first: a failed allocation leaves a
            // map with no tables that is not flagged corrupted (B-CBT-3).
            self.free_tables();
            self.state.with(|s| s.is_corrupted = false);
        }
        // The fix builds the new tables before dropping the old ones.
        let tables = alloc_tables(module, count)?;
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
            s.tables.take()
        });
        if let Some((read, write)) = tables {
            self.module.k().kfree(read);
            self.module.k().kfree(write);
        }
    }

    /// Free the tables when the last reference goes (`cbt_map_destroy`).
    pub fn destroy(&self) {
        self.free_tables();
    }

    /// `cbt_map_switch`: freeze the write map into the read map and start
    /// the next snapshot number. At 256 the number wraps to 1 with a new
    /// generation, and the read map keeps the previous copy (B-CBT-4, which
    /// is design behaviour, so no quirk).
    pub fn switch(&self) {
        let generation = self.module.k().uuid_v4();
        self.state.with(|s| {
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

/// Both tables with vmalloc in NOIO mode; a zero-sized map fails as in C.
fn alloc_tables(module: &Module, count: u64) -> Result<(AllocId, AllocId), Errno> {
    if count == 0 {
        return Err(Errno::ENOMEM);
    }
    let k = module.k();
    let read = k.kmalloc("cbt_map.read_map", count, Gfp::Noio)?;
    match k.kmalloc("cbt_map.write_map", count, Gfp::Noio) {
        Ok(write) => Ok((read, write)),
        Err(e) => {
            k.kfree(read);
            Err(e)
        }
    }
}
