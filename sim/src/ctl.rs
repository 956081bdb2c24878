//! The control device as user processes reach it: every ioctl goes through
//! here, so the checkers learn what users told the engine (the storage
//! ranges of APPEND_STORAGE) from the arguments alone, as a black box.

use std::rc::Rc;

use blksnap_core::ctrl::{self, IoctlResult};
use blksnap_core::kernel::{DevT, UserMemory};
use blksnap_core::uapi::{
    BlkSnapBlockRange, BlkSnapSnapshotAppendStorage, UapiStruct,
    IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE,
};
use blksnap_core::Module;

use crate::kernel::Sim;
use crate::trace::TraceEvent;

/// Most ranges one APPEND is read for (the rest would fail in the engine).
const MAX_RANGES: u64 = 1 << 16;

/// `ioctl(fd, cmd, arg)` on /dev/blksnap.
pub async fn ioctl(
    sim: &Rc<Sim>,
    module: &Rc<Module>,
    cmd: u32,
    arg: u64,
    user: &dyn UserMemory,
) -> IoctlResult {
    if cmd == IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE {
        note_storage_ranges(sim, arg, user);
    }
    let result = ctrl::ioctl(module, cmd, arg, user).await;
    let value = match result {
        Ok(v) => v,
        Err(e) => -i64::from(e.0),
    };
    sim.record(TraceEvent::Ioctl { cmd, result: value });
    result
}

/// Tell the oracle which ranges the user offers as diff storage (even a
/// failing APPEND may add its first ranges, so every readable one counts).
fn note_storage_ranges(sim: &Sim, arg: u64, user: &dyn UserMemory) {
    let size = BlkSnapSnapshotAppendStorage::SIZE;
    let Some(append) = user
        .copy_from_user(arg, size)
        .ok()
        .and_then(|b| BlkSnapSnapshotAppendStorage::decode(&b))
    else {
        return;
    };
    let dev = DevT::new(append.dev_id.mj, append.dev_id.mn);
    let range_size = BlkSnapBlockRange::SIZE as u64;
    for i in 0..u64::from(append.count).min(MAX_RANGES) {
        let addr = append.ranges.wrapping_add(i * range_size);
        let Some(range) = user
            .copy_from_user(addr, range_size as usize)
            .ok()
            .and_then(|b| BlkSnapBlockRange::decode(&b))
        else {
            return;
        };
        sim.oracle
            .borrow_mut()
            .storage_appended(dev, range.sector_offset, range.sector_count);
    }
}
