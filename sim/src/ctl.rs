//! The control device as user processes reach it: every ioctl goes through
//! here, so the checkers learn what users told the engine (the storage
//! ranges of APPEND_STORAGE) from the arguments alone, as a black box.

use std::rc::Rc;

use blksnap_core::ctrl::{self, IoctlResult};
use blksnap_core::kernel::{DevT, Errno, UserMemory};
use blksnap_core::uapi::{
    BlkSnapBlockRange, BlkSnapEventCorrupted, BlkSnapSnapshotAppendStorage, BlkSnapSnapshotCollect,
    BlkSnapSnapshotCreate, BlkSnapSnapshotEvent, IoctlNr, UapiStruct, EVENT_CORRUPTED,
    IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE,
};
use blksnap_core::Module;

use crate::check::events::Wait;
use crate::check::lifecycle::Call;
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
    let nr = IoctlNr::ALL.iter().copied().find(|nr| nr.cmd() == cmd);
    let id = nr.and_then(|nr| named_id(nr, arg, user));
    let append = nr == Some(IoctlNr::SnapshotAppendStorage);
    let valid_before = append && append_is_valid(sim, arg, user);
    let token = sim.lifecycle.borrow_mut().begin();
    let began = sim.now();
    let wait = id
        .filter(|_| nr == Some(IoctlNr::SnapshotWaitEvent))
        .map(|id| sim.lifecycle.borrow().events.wait_begins(id, began));
    let cbt = crate::check::cbt::ioctl_begin(sim, cmd, arg, user);
    let take = id.filter(|_| nr == Some(IoctlNr::SnapshotTake));
    if let Some(id) = take {
        sim.series.borrow_mut().take_begin(sim.now(), id);
    }
    let result = ctrl::ioctl(module, cmd, arg, user).await;
    if let Some(id) = take {
        sim.series.borrow_mut().take_end(sim.now(), id);
    }
    crate::check::cbt::ioctl_end(sim, &module.params(), cbt, arg, result, user);
    let value = match result {
        Ok(v) => v,
        Err(e) => -i64::from(e.0),
    };
    sim.record(TraceEvent::Ioctl { cmd, result: value });
    let created = nr.and_then(|nr| created_id(nr, result, arg, user));
    if let Some(created) = created {
        sim.lifecycle.borrow_mut().events.created(created, began);
    }
    let call = nr.map(|nr| Call {
        nr,
        id,
        result,
        listed: listed_ids(nr, result, arg, user),
        created,
        alloc_fault: enomem_injected(sim, result, began, sim.now()),
        // Valid when it began and when it ended: a device resized in
        // between may have made a range invalid.
        append_valid: valid_before && append_is_valid(sim, arg, user),
    });
    let verdict = match call {
        Some(call) => sim.lifecycle.borrow_mut().end(token, &call),
        None => sim.lifecycle.borrow_mut().end(token, &unknown_call(result)),
    };
    if let Err(message) = verdict {
        sim.fail("lifecycle", message);
    }
    if let (Some(IoctlNr::SnapshotDestroy), Some(id), Ok(_)) = (nr, id, result) {
        sim.storage.borrow_mut().destroyed(id);
    }
    if let (Some(wait), Ok(_)) = (wait, result) {
        check_event(sim, &wait, arg, user);
    }
    result
}

/// The call failed with ENOMEM and the sim failed an allocation (any site)
/// in [began, ended]: the failure is the declared fault's, not the engine's.
/// The lifecycle checker and the runner's COLLECT_IMAGES retry both ask this.
pub fn enomem_injected(sim: &Sim, result: IoctlResult, began: u64, ended: u64) -> bool {
    // Only ENOMEM is ever excused: skip the scan of the fault record otherwise.
    result == Err(Errno::ENOMEM) && sim.injected.borrow().alloc_failed(None, began, ended)
}

/// The events checker (`check::events`) on the event a WAIT_EVENT returned:
/// its time label against the call's window and the snapshot's earlier
/// events, and a corrupted event's device.
fn check_event(sim: &Sim, wait: &Wait, arg: u64, user: &dyn UserMemory) {
    let Some(event) = user
        .copy_from_user(arg, BlkSnapSnapshotEvent::SIZE)
        .ok()
        .and_then(|b| BlkSnapSnapshotEvent::decode(&b))
    else {
        return;
    };
    let mut lifecycle = sim.lifecycle.borrow_mut();
    let events = &mut lifecycle.events;
    let order = events.returned(wait, sim.now(), event.time_label);
    let payload = (event.code == EVENT_CORRUPTED)
        .then(|| BlkSnapEventCorrupted::decode(&event.data))
        .flatten();
    let once = payload.map_or(Ok(()), |payload| {
        let dev = DevT::new(payload.orig_dev_id.mj, payload.orig_dev_id.mn).0;
        events.corrupted(wait.id(), dev)
    });
    drop(lifecycle);
    let verdict = order.and(once);
    if let Err(message) = verdict {
        sim.fail("events", message);
    }
}

/// A command that is no v2 ioctl still counts for the quiet test.
fn unknown_call(result: IoctlResult) -> Call {
    Call {
        nr: IoctlNr::Version,
        id: None,
        result,
        listed: None,
        created: None,
        alloc_fault: false,
        append_valid: false,
    }
}

/// The snapshot id an ioctl names (the first 16 bytes of its argument).
fn named_id(nr: IoctlNr, arg: u64, user: &dyn UserMemory) -> Option<[u8; 16]> {
    let names_one = matches!(
        nr,
        IoctlNr::SnapshotDestroy
            | IoctlNr::SnapshotTake
            | IoctlNr::SnapshotAppendStorage
            | IoctlNr::SnapshotCollectImages
            | IoctlNr::SnapshotWaitEvent
    );
    if !names_one {
        return None;
    }
    let bytes = user.copy_from_user(arg, 16).ok()?;
    bytes.try_into().ok()
}

/// The id a successful CREATE wrote back.
fn created_id(
    nr: IoctlNr,
    result: IoctlResult,
    arg: u64,
    user: &dyn UserMemory,
) -> Option<[u8; 16]> {
    if nr != IoctlNr::SnapshotCreate || result.is_err() {
        return None;
    }
    let bytes = user.copy_from_user(arg, BlkSnapSnapshotCreate::SIZE).ok()?;
    Some(BlkSnapSnapshotCreate::decode(&bytes)?.id.b)
}

/// The ids a successful SNAPSHOT_COLLECT with an array listed.
fn listed_ids(
    nr: IoctlNr,
    result: IoctlResult,
    arg: u64,
    user: &dyn UserMemory,
) -> Option<Vec<[u8; 16]>> {
    if nr != IoctlNr::SnapshotCollect || result.is_err() {
        return None;
    }
    let bytes = user
        .copy_from_user(arg, BlkSnapSnapshotCollect::SIZE)
        .ok()?;
    let collect = BlkSnapSnapshotCollect::decode(&bytes)?;
    if collect.ids == 0 {
        return None;
    }
    (0..u64::from(collect.count))
        .map(|i| {
            let bytes = user
                .copy_from_user(collect.ids.wrapping_add(16 * i), 16)
                .ok()?;
            bytes.try_into().ok()
        })
        .collect()
}

/// An APPEND_STORAGE's argument as the engine reads it: the struct, then
/// its ranges one at a time (at most `MAX_RANGES`), up to the first one
/// that cannot be read (`complete` false then).
struct AppendArg {
    id: [u8; 16],
    dev: DevT,
    ranges: Vec<(u64, u64)>,
    complete: bool,
}

fn read_append(arg: u64, user: &dyn UserMemory) -> Option<AppendArg> {
    let append = user
        .copy_from_user(arg, BlkSnapSnapshotAppendStorage::SIZE)
        .ok()
        .and_then(|b| BlkSnapSnapshotAppendStorage::decode(&b))?;
    let range_size = BlkSnapBlockRange::SIZE as u64;
    let count = u64::from(append.count);
    let mut ranges = Vec::new();
    for i in 0..count.min(MAX_RANGES) {
        let addr = append.ranges.wrapping_add(i * range_size);
        let Some(range) = user
            .copy_from_user(addr, range_size as usize)
            .ok()
            .and_then(|b| BlkSnapBlockRange::decode(&b))
        else {
            break;
        };
        ranges.push((range.sector_offset, range.sector_count));
    }
    Some(AppendArg {
        id: append.id.b,
        dev: DevT::new(append.dev_id.mj, append.dev_id.mn),
        complete: ranges.len() as u64 == count,
        ranges,
    })
}

/// Sectors per page: storage ranges are handed to the engine in pages.
const PAGE_SECTORS: u64 = 8;

/// An APPEND_STORAGE whose argument and every range can be read, to a
/// device that exists, with every range non-empty, page-aligned and inside
/// that device (spec 6.2 with B-DS-1's fix): nothing in it may fail but an
/// allocation. The engine must then append it (the lifecycle checker).
fn append_is_valid(sim: &Sim, arg: u64, user: &dyn UserMemory) -> bool {
    let Some(append) = read_append(arg, user).filter(|a| a.complete) else {
        return false;
    };
    let Some(capacity) = sim
        .blk
        .devices
        .borrow()
        .get(&append.dev)
        .map(|d| d.capacity)
    else {
        return false;
    };
    append.ranges.iter().all(|&(sector, count)| {
        let end = sector.checked_add(count);
        count > 0
            && sector % PAGE_SECTORS == 0
            && count % PAGE_SECTORS == 0
            && end.is_some_and(|end| end <= capacity)
    })
}

/// Tell the oracle which ranges the user offers as diff storage (even a
/// failing APPEND may add its first ranges, so every readable one counts).
fn note_storage_ranges(sim: &Sim, arg: u64, user: &dyn UserMemory) {
    let Some(append) = read_append(arg, user) else {
        return;
    };
    for &(start, count) in &append.ranges {
        let (id, dev) = (append.id, append.dev);
        sim.oracle
            .borrow_mut()
            .storage_appended(id, dev, start, count);
        sim.series.borrow_mut().appended(sim.now(), id, dev, count);
        sim.storage.borrow_mut().appended(id, dev, start, count);
    }
}

#[cfg(test)]
mod tests {
    use blksnap_core::kernel::Kernel;
    use blksnap_core::uapi::{BlkSnapUuid, EVENT_LOW_FREE_SPACE};

    use super::*;
    use crate::kernel::sim_kernel::SimKernel;
    use crate::user::UserSpace;

    /// What WAIT_EVENT wrote back reaches the events checker: events of one
    /// snapshot in queue order pass; one older than an event an earlier
    /// WAIT_EVENT returned fails the run with `events`.
    #[test]
    fn an_event_older_than_one_taken_before_fails_the_run() {
        let sim = Sim::new(0);
        let id = [5; 16];
        sim.lifecycle.borrow_mut().events.created(id, sim.now());
        let k: Rc<dyn Kernel> = Rc::new(SimKernel(sim.clone()));
        sim.spawn_process(
            "clock".into(),
            Box::pin(async move { k.sleep(1_000).await }),
        );
        assert!(sim.run());
        let user = UserSpace::default();
        let take = |label| {
            let wait = sim.lifecycle.borrow().events.wait_begins(id, sim.now());
            let event = BlkSnapSnapshotEvent::encode_with(
                BlkSnapUuid { b: id },
                0,
                EVENT_LOW_FREE_SPACE,
                label,
                &[],
            );
            check_event(&sim, &wait, user.map(event.expect("fits")), &user);
        };
        take(900);
        take(1_000);
        assert!(!sim.has_failed(), "{:?}", sim.failures());
        take(950);
        let failures = sim.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].checker, "events");
        assert!(
            failures[0]
                .message
                .contains("labelled 950 ns, older than the one labelled 1000 ns"),
            "{}",
            failures[0].message
        );
    }
}
