//! The control device as user processes reach it: every ioctl goes through
//! here, so the checkers learn what users told the engine (the storage
//! ranges of APPEND_STORAGE) from the arguments alone, as a black box.

use std::rc::Rc;

use blksnap_core::ctrl::{self, IoctlResult};
use blksnap_core::kernel::{DevT, Errno, UserMemory};
use blksnap_core::params::Params;
use blksnap_core::uapi::{
    BlkSnapBlockRange, BlkSnapDev, BlkSnapEventCorrupted, BlkSnapEventLowFreeSpace,
    BlkSnapSnapshotAppendStorage, BlkSnapSnapshotCollect, BlkSnapSnapshotCreate,
    BlkSnapSnapshotEvent, IoctlNr, UapiStruct, EVENT_CORRUPTED, EVENT_LOW_FREE_SPACE,
    IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE,
};
use blksnap_core::Module;

use crate::check::cbt::{decode, decode_array};
use crate::check::events::{Events, Outcome, Wait};
use crate::check::lifecycle::Call;
use crate::check::low_space::AppendToken;
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
        .map(|id| {
            let timeout = wait_timeout_ns(arg, user);
            let mut lifecycle = sim.lifecycle.borrow_mut();
            if let Some(task) = sim.current_task() {
                lifecycle.events.watch_sleeps(task);
            }
            lifecycle.events.wait_begins(id, began, timeout)
        });
    let geometry =
        (nr == Some(IoctlNr::SnapshotCreate)).then(|| create_geometry(sim, module, arg, user));
    let append_token = requests_begin(sim, module, nr, id, arg, user);
    low_space_begin(
        sim,
        module,
        nr,
        id,
        valid_before.then(|| read_append(arg, user)).flatten(),
    );
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
        let mut lifecycle = sim.lifecycle.borrow_mut();
        lifecycle.events.created(created, began);
        lifecycle.events.requests.created(created, began, sim.now());
        // The geometry the engine read lies between the CREATE's start and end.
        if let Some((minimum, chunk)) =
            geometry.filter(|&g| g == create_geometry(sim, module, arg, user))
        {
            lifecycle
                .events
                .low_space_model(created, began, minimum, chunk);
        }
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
    if let Some(token) = append_token {
        let mut lifecycle = sim.lifecycle.borrow_mut();
        lifecycle.events.requests.append_ends(token, sim.now());
    }
    let append_ok = result.is_ok() && valid_before && append_is_valid(sim, arg, user);
    low_space_end(sim, module, nr, id, append_ok);
    if let Some(wait) = wait {
        let sleeps = sim
            .current_task()
            .map(|task| sim.lifecycle.borrow_mut().events.sleeps_of(task))
            .unwrap_or_default();
        if result == Err(Errno::ENOENT) {
            let verdict = Events::empty_returned(&wait, sim.now())
                .and_then(|()| Events::wait_ran_out(&wait, &sleeps));
            if let Err(message) = verdict {
                sim.fail("events", message);
            }
        }
        let event = result.ok().and_then(|_| check_event(sim, &wait, arg, user));
        low_space_wait_end(sim, &wait, result, event);
    }
    result
}

/// Events rules 7 to 9 before the engine runs an ioctl: the minimum a
/// CREATE starts with, the sectors an APPEND offers (its token comes back at
/// its end), a WAIT_EVENT's look at an overflow seen before.
fn requests_begin(
    sim: &Sim,
    module: &Module,
    nr: Option<IoctlNr>,
    id: Option<[u8; 16]>,
    arg: u64,
    user: &dyn UserMemory,
) -> Option<AppendToken> {
    let mut lifecycle = sim.lifecycle.borrow_mut();
    let requests = &mut lifecycle.events.requests;
    let now = sim.now();
    match (nr?, id) {
        (IoctlNr::SnapshotCreate, _) => {
            requests.minimum(now, module.params().diff_storage_minimum);
            None
        }
        (IoctlNr::SnapshotAppendStorage, Some(id)) => {
            let sectors = read_append(arg, user).map_or(0, |a| {
                a.ranges
                    .iter()
                    .fold(0u64, |sum, &(_, count)| sum.saturating_add(count))
            });
            requests.append_begins(id, now, sectors)
        }
        (IoctlNr::SnapshotWaitEvent, Some(id)) => {
            requests.look(id, now, || may_still_raise(sim));
            None
        }
        _ => None,
    }
}

/// Whether an allocation that may still raise a low-free-space event after
/// an overflow is in reclaim: an event's, or a region descriptor's (rule 9).
fn may_still_raise(sim: &Sim) -> bool {
    sim.reclaiming("event") || sim.reclaiming("diff_region")
}

/// Rule 4 of the events checker before the engine runs an ioctl: what an
/// APPEND offers (all its ranges, read and valid, or None), a WAIT_EVENT in
/// flight, a DESTROY (its queue goes); then a look at the storage writes.
fn low_space_begin(
    sim: &Rc<Sim>,
    module: &Module,
    nr: Option<IoctlNr>,
    id: Option<[u8; 16]>,
    append: Option<AppendArg>,
) {
    let mut lifecycle = sim.lifecycle.borrow_mut();
    let events = &mut lifecycle.events;
    match (nr, id) {
        (Some(IoctlNr::SnapshotAppendStorage), Some(id)) => {
            let dev = append.as_ref().map_or(DevT(0), |a| a.dev);
            let ranges = append
                .as_ref()
                .filter(|a| a.id == id)
                .map(|a| a.ranges.as_slice());
            events.append_begins(id, dev, ranges);
        }
        (Some(IoctlNr::SnapshotWaitEvent), Some(id)) => events.low_space_wait_begins(id),
        (Some(IoctlNr::SnapshotDestroy), Some(id)) => events.low_space_unsure(id),
        _ => {}
    }
    let minimum = module.params().diff_storage_minimum;
    low_space_poll(sim, events, minimum);
}

/// Rule 4's look at the storage writes (the storage checker timed them:
/// the block layer hands it each engine write's submission time).
fn low_space_poll(sim: &Rc<Sim>, events: &mut Events, minimum: u64) {
    let mut storage = sim.storage.borrow_mut();
    events.low_space_poll(minimum, &mut *storage);
}

/// Rule 4 when an ioctl returns: the storage writes, then the end of an
/// APPEND (`ok`: it succeeded and its ranges were still valid).
fn low_space_end(
    sim: &Rc<Sim>,
    module: &Module,
    nr: Option<IoctlNr>,
    id: Option<[u8; 16]>,
    ok: bool,
) {
    let mut lifecycle = sim.lifecycle.borrow_mut();
    let events = &mut lifecycle.events;
    if let (Some(IoctlNr::SnapshotAppendStorage), Some(id)) = (nr, id) {
        events.append_ends(id, ok);
    }
    let minimum = module.params().diff_storage_minimum;
    low_space_poll(sim, events, minimum);
}

/// Rule 4 when a WAIT_EVENT returns, with the event it copied out (code,
/// label) if it could be read.
fn low_space_wait_end(sim: &Sim, wait: &Wait, result: IoctlResult, event: Option<(u32, i64)>) {
    let outcome = match (result, event) {
        (Ok(_), Some((code, label))) => Outcome::Event(code, label),
        (Err(Errno::ENOENT), _) => Outcome::Empty,
        _ => Outcome::Other,
    };
    let now = sim.now();
    // An event allocation that failed (injected) dropped an event.
    let dropped = |since| {
        sim.injected
            .borrow()
            .alloc_failed(Some("event"), since, now)
    };
    let verdict = sim
        .lifecycle
        .borrow_mut()
        .events
        .low_space_wait_ends(wait, now, outcome, dropped);
    if let Err(message) = verdict {
        sim.fail("events", message);
    }
}

/// What CREATE's engine reads for rule 4: diff_storage_minimum, and the
/// chunk size (spec 5.1) its devices share (None if they differ or the
/// argument cannot be read).
fn create_geometry(
    sim: &Sim,
    module: &Module,
    arg: u64,
    user: &dyn UserMemory,
) -> (u64, Option<u64>) {
    let params = module.params();
    let chunk = || -> Option<u64> {
        let create = decode::<BlkSnapSnapshotCreate>(user, arg)?;
        let count = u64::from(create.count).min(MAX_DEVICES);
        let devs = decode_array::<BlkSnapDev>(user, create.dev_id_array, count);
        // An unreadable device ends the array early: judge nothing then.
        if devs.len() as u64 != count {
            return None;
        }
        let mut sizes = devs
            .iter()
            .map(|d| chunk_sectors(sim, &params, DevT::new(d.mj, d.mn)));
        let first = sizes.next()??;
        sizes.all(|s| s == Some(first)).then_some(first)
    };
    (params.diff_storage_minimum, chunk())
}

/// Most devices a CREATE is read for by rule 4.
const MAX_DEVICES: u64 = 64;

/// The chunk size rule of spec 5.1, from the module parameters and the
/// device's capacity and minimal IO size: the shift grows from
/// chunk_minimum_shift until the chunk count fits and a chunk is at least
/// the minimal IO.
fn chunk_sectors(sim: &Sim, params: &Params, dev: DevT) -> Option<u64> {
    let (capacity, io_min) = sim
        .blk
        .devices
        .borrow()
        .get(&dev)
        .map(|d| (d.capacity, u64::from(d.io_min) / 512))?;
    let mut shift = params.chunk_minimum_shift.checked_sub(9)?;
    while shift < 64 {
        let sectors = 1u64 << shift;
        if capacity.div_ceil(sectors) <= params.chunk_maximum_count && sectors >= io_min {
            return Some(sectors);
        }
        shift += 1;
    }
    None
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
fn check_event(sim: &Sim, wait: &Wait, arg: u64, user: &dyn UserMemory) -> Option<(u32, i64)> {
    let event = user
        .copy_from_user(arg, BlkSnapSnapshotEvent::SIZE)
        .ok()
        .and_then(|b| BlkSnapSnapshotEvent::decode(&b))?;
    let mut lifecycle = sim.lifecycle.borrow_mut();
    let events = &mut lifecycle.events;
    let order = events.returned(wait, sim.now(), event.time_label);
    let payload = (event.code == EVENT_CORRUPTED)
        .then(|| BlkSnapEventCorrupted::decode(&event.data))
        .flatten();
    // Only an overflow corrupts with ENOSPC (storage rule 3).
    let overflow = payload
        .as_ref()
        .is_some_and(|p| p.err_code == Errno::ENOSPC.0);
    let corrupted = payload.is_some();
    if overflow {
        let requests = &mut events.requests;
        requests.overflow_seen(wait.id(), sim.now(), || may_still_raise(sim));
    }
    let requested = (event.code == EVENT_LOW_FREE_SPACE)
        .then(|| BlkSnapEventLowFreeSpace::decode(&event.data))
        .flatten();
    let request = requested.map_or(Ok(()), |p| {
        events.low_space_event(wait.id(), event.time_label, p.requested_nr_sect)
    });
    let once = payload.map_or(Ok(()), |payload| {
        let dev = DevT::new(payload.orig_dev_id.mj, payload.orig_dev_id.mn).0;
        events.corrupted(wait.id(), dev)
    });
    // A corrupted event against a TAKE that returned 0 (lifecycle's TAKE
    // rule 2).
    let take = if corrupted {
        lifecycle.corrupted_reported(wait.id(), event.time_label)
    } else {
        Ok(())
    };
    drop(lifecycle);
    if overflow {
        sim.storage.borrow_mut().overflow_seen(wait.id(), sim.now());
    }
    let verdict = order.and(once).and(request);
    if let Err(message) = verdict {
        sim.fail("events", message);
    }
    if let Err(message) = take {
        sim.fail("lifecycle", message);
    }
    Some((event.code, event.time_label))
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

/// The timeout a WAIT_EVENT's argument asks for (`timeout_ms`, after the
/// 16-byte id), in ns; None if the argument cannot be read.
fn wait_timeout_ns(arg: u64, user: &dyn UserMemory) -> Option<u64> {
    let bytes = user.copy_from_user(arg, 20).ok()?;
    let ms = u32::from_le_bytes(bytes.get(16..20)?.try_into().ok()?);
    Some(u64::from(ms) * 1_000_000)
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
    if sim.reclaiming("diff_region") {
        // A region request may have passed the overflow check before the
        // overflow: it may take its region from these ranges (storage rule 3).
        sim.storage.borrow_mut().overflow_unsure(append.id);
    }
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
        sim.spawn_process("clock", Box::pin(async move { k.sleep(1_000).await }));
        assert!(sim.run());
        let user = UserSpace::default();
        let take = |label| {
            let wait = sim
                .lifecycle
                .borrow()
                .events
                .wait_begins(id, sim.now(), None);
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

    /// Storage rule 3's wiring: a corrupted event with ENOSPC that a
    /// WAIT_EVENT returned tells the storage checker the snapshot
    /// overflowed, so a range appended after it must stay unwritten; one
    /// with EIO does not.
    #[test]
    fn a_corrupted_enospc_event_seals_later_ranges() {
        use blksnap_core::kernel::Stamps;
        use blksnap_core::uapi::BlkSnapDev;
        let store = DevT::new(7, 1);
        for (err, sealed) in [(Errno::ENOSPC, true), (Errno::EIO, false)] {
            let sim = Sim::new(0);
            let id = [5; 16];
            let user = UserSpace::default();
            let wait = sim
                .lifecycle
                .borrow()
                .events
                .wait_begins(id, sim.now(), None);
            let payload = BlkSnapEventCorrupted {
                orig_dev_id: BlkSnapDev { mj: 7, mn: 0 },
                err_code: err.0,
            };
            let event = BlkSnapSnapshotEvent::encode_with(
                BlkSnapUuid { b: id },
                0,
                EVENT_CORRUPTED,
                0,
                &payload.encode(),
            );
            check_event(&sim, &wait, user.map(event.expect("fits")), &user);
            let mut storage = sim.storage.borrow_mut();
            storage.appended(id, store, 0, 64);
            let written = storage.engine_write(0, store, 0, &Stamps::from_slice(&[1; 8]), 8);
            assert_eq!(written.is_err(), sealed, "{err:?}: {written:?}");
        }
    }
}
