//! The events checker: what WAIT_EVENT hands out, judged from the ioctls
//! alone (`ctl.rs` tells it when each CREATE and WAIT_EVENT began and ended,
//! and what the event said).
//!
//! Rules, per snapshot id:
//! 1. a corrupted event comes at most once per device;
//! 2. an event's `time_label` is no earlier than the start of the CREATE
//!    that made the id (the queue is born inside it) and no later than the
//!    return of the WAIT_EVENT that took it;
//! 3. labels never go back: the queue is FIFO (spec 7), and the engine
//!    reads the clock and queues the event with no sleeping point between
//!    (`event_gen`: `ktime_get`, then `list_add_tail` under the spinlock;
//!    the allocation that may sleep comes before both), so on the sim's one
//!    CPU the queue is in label order. A WAIT_EVENT that began after another
//!    one of the same snapshot returned took its event later, so its label
//!    is not older. Two waits that overlapped may have returned in either
//!    order and are not compared. (On SMP hardware two CPUs could read the
//!    clock and then race for the spinlock, a few ns out of order; the sim
//!    has no such window.)
//! 4. the first low-free-space event after the creation's comes no later
//!    than it must (spec 6.3, 6.5; see `LowSpace`);
//! 5. a WAIT_EVENT that returns ENOENT does so no earlier than its start
//!    plus the timeout it was given: ENOENT means the queue stayed empty
//!    until the timeout (spec 7), and the engine starts its clock after
//!    the call began. (The return has no upper bound: the call may wait
//!    for the snapshot list's lock before its clock starts, and for the
//!    CPU and the last put after; rule 6 bounds the wait itself.)
//! 6. the wait of a WAIT_EVENT that returns ENOENT runs out no later than
//!    the timeout, rounded up to whole jiffies, after its first timed
//!    sleep began. The kernel sees every timed sleep the engine asks for
//!    in the call (`ctl.rs` collects them for the caller's task; the
//!    allocator's reclaim is the kernel's own time, not counted). v2's
//!    `wait_event_interruptible_timeout` reads the clock once, before it
//!    first sleeps, and every sleep is the time left, so every sleep ends
//!    by that clock start plus the timeout, which is no later than the
//!    first sleep's start plus it. The slack is v2's rounding:
//!    `msecs_to_jiffies` rounds up, and `schedule_timeout` of n jiffies
//!    ends within n ticks (HZ = 250, 4 ms). Only the wait's own sleeps are
//!    judged: they run up to the first one the next did not cut short (an
//!    event another waiter took wakes a sleeper early, and it sleeps the
//!    rest); sleeps after it are the last put's (a DESTROY during the wait
//!    frees the snapshot there). A timeout of 0 is a poll that never
//!    sleeps, so any sleep is the put's: not judged.
//!
//! Rules 7 to 9 (`check::low_space`, kept in `Events::requests`): a
//! low-free-space event asks for the diff_storage_minimum of its time; after
//! the creation's, at most one per APPEND that could re-arm it, plus one; none
//! raised after the user saw the snapshot overflow.

use std::collections::BTreeMap;

use blksnap_core::kernel::DevT;

use super::low_space::Requests;

type Id = [u8; 16];

#[derive(Default)]
pub struct Events {
    snapshots: BTreeMap<Id, Snapshot>,
    /// Rule 6: the timed sleeps (start, length) of each task that is in a
    /// WAIT_EVENT, by task id.
    sleeps: BTreeMap<u64, Vec<(u64, u64)>>,
    /// Rules 7 to 9.
    pub requests: Requests,
}

#[derive(Default)]
struct Snapshot {
    /// When the CREATE that made this id began.
    created: Option<u64>,
    /// The newest event a finished WAIT_EVENT returned.
    newest: Option<Returned>,
    /// Devices reported corrupted (dev_t packed as the engine packs it).
    corrupted: Vec<u32>,
    /// Rule 4's model, while it is sure of itself.
    low_space: Option<LowSpace>,
    /// WAIT_EVENTs of this id in flight.
    waiting: u32,
    /// `check::storage` watches R's sectors for rule 4.
    watched: bool,
}

/// Rule 4: when the first low-free-space event after the creation's must
/// come. Storage is handed out first fit in append order, one chunk `c` of
/// the COWing device at a time, and a range's tail too small for a chunk
/// is counted as filled when the next region goes to the next range
/// (spec 6.3). So the region at offset `o` of the j-th appended range
/// leaves `filled` = (sectors of the ranges before j) + o + c, from its
/// position alone. Until the first crossing the engine asks for M (the
/// diff_storage_minimum at CREATE), and the allocation that raises the
/// event is the first one with `M - filled` in [0, T], T = (M/2) & !7.
/// The task that allocated that region R queues the event before it
/// submits R's copy, so once R's copy was submitted (at `written_by`,
/// which `check::storage` reports), the second low-free-space event of the queue (the first
/// is the creation's) is labelled no later than that, and a WAIT_EVENT that
/// begins after it cannot find the queue empty before that event was
/// taken. Only this "too late" direction is exact (an early event cannot be
/// told from one of a region whose copy is not written yet). The model is
/// dropped (nothing judged for the snapshot) wherever it is unsure.
struct LowSpace {
    minimum: u64,
    chunk: u64,
    /// When the CREATE began (injected failures of the event allocation
    /// are looked for from there).
    since: u64,
    /// Ranges in the order the engine appended them: (device, start, count).
    ranges: Vec<(DevT, u64, u64)>,
    appending: bool,
    /// R: (device, first sector), once the ranges reach it.
    region: Option<(DevT, u64)>,
    /// When the first engine write to R was submitted.
    written_by: Option<u64>,
    /// Low-free-space events the WAIT_EVENTs returned.
    low_space_events: u32,
}

impl LowSpace {
    /// R, if the ranges so far reach the crossing; `Err` if no allocation
    /// can raise the event (filled jumps past M: the engine asks nothing).
    fn crossing(&self) -> Result<Option<(DevT, u64)>, ()> {
        let threshold = (self.minimum / 2) & !7;
        let floor = self.minimum - threshold;
        let mut before = 0u64;
        for &(dev, start, count) in &self.ranges {
            let fits = count / self.chunk;
            // The first region of this range that ends at or past the floor.
            let need = floor.saturating_sub(before).div_ceil(self.chunk).max(1);
            if need <= fits {
                let offset = (need - 1) * self.chunk;
                let filled = before.saturating_add(offset + self.chunk);
                return if filled <= self.minimum {
                    Ok(Some((dev, start.saturating_add(offset))))
                } else {
                    Err(())
                };
            }
            before = before.saturating_add(count);
        }
        Ok(None)
    }
}

/// What the engine's writes to storage tell rule 4, and what rule 4 wants
/// to know of them (`check::storage` keeps the watches).
pub trait Watches {
    /// Watch `count` sectors from `sector` of storage device `dev` for `id`
    /// (in place of any watch `id` had).
    fn watch(&mut self, id: Id, dev: DevT, sector: u64, count: u64);
    /// When the first engine write that met the watched sectors of `id`
    /// was submitted, if one did.
    fn seen(&self, id: Id) -> Option<u64>;
    /// Stop watching for `id`.
    fn unwatch(&mut self, id: Id);
    /// Whether the sectors were offered to the engine once only (by one
    /// range of one APPEND).
    fn offered_once(&self, dev: DevT, sector: u64, count: u64) -> bool;
}

/// How a WAIT_EVENT ended, as far as rule 4 cares.
pub enum Outcome {
    /// It returned an event: its code and label.
    Event(u32, i64),
    /// ENOENT: the queue stayed empty until the timeout.
    Empty,
    /// Anything else (it may have taken an event nobody saw).
    Other,
}

/// An event a WAIT_EVENT returned: its label and when the call returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Returned {
    label: i64,
    at: u64,
}

/// What a WAIT_EVENT's start fixed: the bounds its event must respect.
pub struct Wait {
    id: Id,
    began: u64,
    /// The timeout the caller asked for, if its argument could be read.
    timeout_ns: Option<u64>,
    created: Option<u64>,
    floor: Option<Returned>,
}

impl Wait {
    /// The snapshot the WAIT_EVENT named.
    pub fn id(&self) -> Id {
        self.id
    }
}

impl Events {
    /// A CREATE that began at `began` made `id`.
    pub fn created(&mut self, id: Id, began: u64) {
        self.snapshots.insert(
            id,
            Snapshot {
                created: Some(began),
                ..Snapshot::default()
            },
        );
    }

    /// A WAIT_EVENT of `id` begins at `now`, asking to wait up to
    /// `timeout_ns`.
    pub fn wait_begins(&self, id: Id, now: u64, timeout_ns: Option<u64>) -> Wait {
        let snapshot = self.snapshots.get(&id);
        Wait {
            id,
            began: now,
            timeout_ns,
            created: snapshot.and_then(|s| s.created),
            floor: snapshot.and_then(|s| s.newest),
        }
    }

    /// Task `task` enters a WAIT_EVENT: its timed sleeps count (rule 6).
    pub fn watch_sleeps(&mut self, task: u64) {
        self.sleeps.insert(task, Vec::new());
    }

    /// The engine, in task `task`, asked the kernel at `now` to sleep `ns`.
    pub fn timed_sleep(&mut self, task: u64, now: u64, ns: u64) {
        if let Some(sleeps) = self.sleeps.get_mut(&task) {
            sleeps.push((now, ns));
        }
    }

    /// Task `task`'s WAIT_EVENT returned: the sleeps it took, in order.
    pub fn sleeps_of(&mut self, task: u64) -> Vec<(u64, u64)> {
        self.sleeps.remove(&task).unwrap_or_default()
    }

    /// The WAIT_EVENT `wait` returned, at `now`, an event labelled `label`
    /// (rules 2 and 3).
    pub fn returned(&mut self, wait: &Wait, now: u64, label: i64) -> Result<(), String> {
        let verdict = judge(wait, now, label);
        let snapshot = self.snapshots.entry(wait.id).or_default();
        if snapshot.newest.is_none_or(|n| n.label <= label) {
            snapshot.newest = Some(Returned { label, at: now });
        }
        verdict
    }

    /// The WAIT_EVENT `wait` returned ENOENT at `now` (rule 5).
    pub fn empty_returned(wait: &Wait, now: u64) -> Result<(), String> {
        let Some(timeout) = wait.timeout_ns else {
            return Ok(());
        };
        let due = wait.began.saturating_add(timeout);
        if now < due {
            return Err(format!(
                "a WAIT_EVENT that began at {} ns with a timeout of {} ms returned ENOENT \
                 (no event) at {now} ns, before its timeout ran out at {due} ns",
                wait.began,
                timeout / 1_000_000
            ));
        }
        Ok(())
    }

    /// Rule 6: the WAIT_EVENT `wait` returned ENOENT, and `sleeps` are
    /// the timed sleeps (start, length in ns) the engine asked the kernel
    /// for in the call, in order, the allocator's reclaim left out.
    pub fn wait_ran_out(wait: &Wait, sleeps: &[(u64, u64)]) -> Result<(), String> {
        let Some(timeout) = wait.timeout_ns.filter(|&t| t > 0) else {
            return Ok(());
        };
        let Some(&(first, _)) = sleeps.first() else {
            return Ok(());
        };
        let due = first.saturating_add(timeout.div_ceil(JIFFY_NS).saturating_mul(JIFFY_NS));
        for (i, &(start, length)) in sleeps.iter().enumerate() {
            let end = start.saturating_add(length);
            if end > due {
                return Err(format!(
                    "a WAIT_EVENT that began at {} ns with a timeout of {} ms returned ENOENT \
                     (no event), but the engine's wait slept from {start} ns to {end} ns: its \
                     first sleep began at {first} ns, so the wait had to run out by {due} ns \
                     (the timeout rounded up to whole {} ms jiffies)",
                    wait.began,
                    timeout / 1_000_000,
                    JIFFY_NS / 1_000_000
                ));
            }
            // The wait ends with the first sleep the next one did not cut short.
            if sleeps.get(i + 1).is_none_or(|&(next, _)| next >= end) {
                break;
            }
        }
        Ok(())
    }

    /// A WAIT_EVENT returned `id`'s low-free-space event labelled `label`
    /// asking for `requested` sectors (rules 7 to 9).
    pub fn low_space_event(&mut self, id: Id, label: i64, requested: u64) -> Result<(), String> {
        let verdict = self.requests.low_space(id, label, requested);
        verdict.map_err(|message| format!("{}: {message}", snapshot_name(&id)))
    }

    /// A corrupted event for device `dev` (mj << 32 | mn, packed) of
    /// snapshot `id`: the engine reports each device at most once (rule 1).
    pub fn corrupted(&mut self, id: Id, dev: u32) -> Result<(), String> {
        let seen = &mut self.snapshots.entry(id).or_default().corrupted;
        if seen.contains(&dev) {
            return Err(format!(
                "a second corrupted event for device {:#x} of one snapshot",
                dev
            ));
        }
        seen.push(dev);
        Ok(())
    }
}

/// Rule 4's hooks, called by `ctl.rs`.
impl Events {
    /// The CREATE that made `id` (it began at `since`) read minimum `M`
    /// and gave its devices chunks of `chunk` sectors (None: several
    /// sizes, or M is no positive sector count: not judged).
    pub fn low_space_model(&mut self, id: Id, since: u64, minimum: u64, chunk: Option<u64>) {
        let sane = i64::try_from(minimum).is_ok_and(|m| m > 0);
        let model = chunk.filter(|&c| c > 0 && sane).map(|chunk| LowSpace {
            minimum,
            chunk,
            since,
            ranges: Vec::new(),
            appending: false,
            region: None,
            written_by: None,
            low_space_events: 0,
        });
        if let Some(s) = self.snapshots.get_mut(&id) {
            s.low_space = model;
        }
    }

    /// The module went: every snapshot and its queue with it.
    pub fn unloaded(&mut self) {
        for s in self.snapshots.values_mut() {
            s.low_space = None;
        }
    }

    /// The snapshot stops being judged by rule 4.
    pub fn low_space_unsure(&mut self, id: Id) {
        if let Some(s) = self.snapshots.get_mut(&id) {
            s.low_space = None;
        }
    }

    /// An APPEND of `id` begins with these ranges of `dev` (all of them
    /// read and valid, or `None`). Two APPENDs at once may interleave
    /// their ranges: unsure.
    pub fn append_begins(&mut self, id: Id, dev: DevT, ranges: Option<&[(u64, u64)]>) {
        let Some(model) = self
            .snapshots
            .get_mut(&id)
            .and_then(|s| s.low_space.as_mut())
        else {
            return;
        };
        match ranges {
            Some(ranges) if !model.appending => {
                model.appending = true;
                model
                    .ranges
                    .extend(ranges.iter().map(|&(start, count)| (dev, start, count)));
            }
            _ => self.low_space_unsure(id),
        }
    }

    /// The APPEND of `id` ended; a failed one may have added only some of
    /// its ranges.
    pub fn append_ends(&mut self, id: Id, ok: bool) {
        match self
            .snapshots
            .get_mut(&id)
            .and_then(|s| s.low_space.as_mut())
        {
            Some(model) if ok => model.appending = false,
            Some(_) => self.low_space_unsure(id),
            None => {}
        }
    }

    /// At an ioctl boundary, with diff_storage_minimum now `minimum`: find
    /// R where the ranges reach it and have it watched, and note when its
    /// copy was first submitted.
    pub fn low_space_poll(&mut self, minimum: u64, storage: &mut dyn Watches) {
        for (id, s) in self.snapshots.iter_mut() {
            let sure = s
                .low_space
                .as_mut()
                .is_some_and(|model| poll_one(*id, model, minimum, storage));
            if !sure {
                s.low_space = None;
            }
            let watching = s
                .low_space
                .as_ref()
                .is_some_and(|m| m.region.is_some() && m.written_by.is_none());
            if s.watched && !watching {
                storage.unwatch(*id);
            }
            s.watched = watching;
        }
    }

    /// A WAIT_EVENT of `wait.id()` begins: one in flight already may pop
    /// the event this one is judged on.
    pub fn low_space_wait_begins(&mut self, id: Id) {
        let Some(s) = self.snapshots.get_mut(&id) else {
            return;
        };
        s.waiting += 1;
        if s.waiting > 1 {
            s.low_space = None;
        }
    }

    /// The WAIT_EVENT `wait` ended at `now` with `outcome`; `dropped`: an
    /// event allocation failed (injected) since the CREATE began.
    pub fn low_space_wait_ends(
        &mut self,
        wait: &Wait,
        now: u64,
        outcome: Outcome,
        dropped: impl Fn(u64) -> bool,
    ) -> Result<(), String> {
        let Some(s) = self.snapshots.get_mut(&wait.id) else {
            return Ok(());
        };
        s.waiting = s.waiting.saturating_sub(1);
        let Some(model) = s.low_space.as_mut() else {
            return Ok(());
        };
        if dropped(model.since) {
            s.low_space = None;
            return Ok(());
        }
        let verdict = match outcome {
            Outcome::Event(code, label) if code == EVENT_LOW_FREE_SPACE => {
                model.low_space_events += 1;
                judge_late(wait, model, now, label)
            }
            Outcome::Event(..) => Ok(()),
            Outcome::Empty => judge_missing(wait, model, now),
            Outcome::Other => {
                s.low_space = None;
                return Ok(());
            }
        };
        if verdict.is_err() || model.low_space_events >= 2 {
            // Judged once: later events depend on APPENDs racing COWs.
            s.low_space = None;
        }
        verdict
    }
}

/// `EVENT_LOW_FREE_SPACE` (uapi).
const EVENT_LOW_FREE_SPACE: u32 = 0;

/// One jiffy of the kernel v2 shipped with (HZ = 250): rule 6's slack.
const JIFFY_NS: u64 = 4_000_000;

/// One snapshot's poll; false when the model must be dropped.
fn poll_one(id: Id, model: &mut LowSpace, minimum: u64, storage: &mut dyn Watches) -> bool {
    if minimum != model.minimum {
        return false;
    }
    if model.region.is_none() {
        match model.crossing() {
            Err(()) => return false,
            Ok(None) => return true,
            Ok(Some((dev, sector))) => {
                if !storage.offered_once(dev, sector, model.chunk) {
                    return false;
                }
                storage.watch(id, dev, sector, model.chunk);
                model.region = Some((dev, sector));
            }
        }
    }
    let Some(written) = model
        .written_by
        .is_none()
        .then(|| storage.seen(id))
        .flatten()
    else {
        return true;
    };
    // Another snapshot offered these sectors since: whose write was it?
    let (dev, sector) = model.region.expect("watched");
    model.written_by = Some(written);
    storage.offered_once(dev, sector, model.chunk)
}

/// The second low-free-space event (the first after the creation's) came
/// labelled after R's copy was submitted.
fn judge_late(wait: &Wait, model: &LowSpace, now: u64, label: i64) -> Result<(), String> {
    let (Some(written), Some((dev, sector))) = (model.written_by, model.region) else {
        return Ok(());
    };
    if model.low_space_events != 2 || i128::from(label) <= i128::from(written) {
        return Ok(());
    }
    Err(format!(
        "{}: a WAIT_EVENT that began at {} ns and returned at {now} ns returned the first \
         low-free-space event after the creation's labelled {label} ns, but the region at \
         sector {sector} of storage device {dev} (the allocation after which at most {} of \
         the {} requested sectors are left) had its copy submitted at {written} ns: \
         the event came too late",
        snapshot_name(&wait.id),
        wait.began,
        (model.minimum / 2) & !7,
        model.minimum
    ))
}

/// The queue was empty for a WAIT_EVENT that began after R's copy was
/// submitted, before the event R raised was taken.
fn judge_missing(wait: &Wait, model: &LowSpace, now: u64) -> Result<(), String> {
    let (Some(written), Some((dev, sector))) = (model.written_by, model.region) else {
        return Ok(());
    };
    if model.low_space_events >= 2 || written > wait.began {
        return Ok(());
    }
    Err(format!(
        "{}: a WAIT_EVENT that began at {} ns found no event until {now} ns, but the \
         region at sector {sector} of storage device {dev} (the allocation after \
         which at most {} of the {} requested sectors are left) had its copy submitted at \
         {written} ns and its low-free-space event was not taken yet",
        snapshot_name(&wait.id),
        wait.began,
        (model.minimum / 2) & !7,
        model.minimum
    ))
}

fn judge(wait: &Wait, now: u64, label: i64) -> Result<(), String> {
    let name = snapshot_name(&wait.id);
    let when = format!(
        "a WAIT_EVENT that began at {} ns and returned at {now} ns",
        wait.began
    );
    if i128::from(label) > i128::from(now) {
        return Err(format!(
            "{name}: {when} returned an event labelled {label} ns, later than its return"
        ));
    }
    if let Some(created) = wait.created.filter(|&c| i128::from(label) < i128::from(c)) {
        return Err(format!(
            "{name}: {when} returned an event labelled {label} ns, before the CREATE \
             that made the snapshot began ({created} ns)"
        ));
    }
    if let Some(floor) = wait.floor.filter(|f| label < f.label) {
        return Err(format!(
            "{name}: {when} returned an event labelled {label} ns, older than the one \
             labelled {} ns that a WAIT_EVENT returned at {} ns, before this one began: \
             events came out of the order they were queued",
            floor.label, floor.at
        ));
    }
    Ok(())
}

/// How messages name a snapshot: its id's first four bytes.
pub(crate) fn snapshot_name(id: &Id) -> String {
    let hex: String = id[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("snapshot {hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Id = [0xa1; 16];

    /// One WAIT_EVENT of `id` over [began, ended] that returned `label`.
    fn wait(e: &mut Events, id: Id, began: u64, ended: u64, label: i64) -> Result<(), String> {
        let w = e.wait_begins(id, began, None);
        e.returned(&w, ended, label)
    }

    /// Rule 5: ENOENT before the timeout ran out fails, naming both times;
    /// at or after it passes, and so does a wait whose timeout is unknown.
    #[test]
    fn enoent_before_the_timeout_fails() {
        let e = Events::default();
        let w = e.wait_begins(A, 1_000, Some(100_000_000));
        let early = Events::empty_returned(&w, 50_001_000).unwrap_err();
        assert!(early.contains("timeout of 100 ms"), "{early}");
        assert!(
            early.contains("before its timeout ran out at 100001000 ns"),
            "{early}"
        );
        assert!(Events::empty_returned(&w, 100_001_000).is_ok());
        assert!(Events::empty_returned(&w, 900_000_000).is_ok());
        let unknown = e.wait_begins(A, 1_000, None);
        assert!(Events::empty_returned(&unknown, 1_000).is_ok());
        // A zero timeout is a poll: ENOENT at once is right.
        let poll = e.wait_begins(A, 1_000, Some(0));
        assert!(Events::empty_returned(&poll, 1_000).is_ok());
    }

    /// Rule 6: the wait's sleeps end by the first one's start plus the
    /// timeout rounded up to jiffies; an extra jiffy or more fails, naming
    /// the sleep and the bound.
    #[test]
    fn a_wait_that_sleeps_past_its_timeout_fails() {
        let e = Events::default();
        // 10 ms rounds up to 3 jiffies: 12 ms.
        let w = e.wait_begins(A, 1_000, Some(10_000_000));
        assert!(Events::wait_ran_out(&w, &[(2_000, 12_000_000)]).is_ok());
        let late = Events::wait_ran_out(&w, &[(2_000, 12_000_001)]).unwrap_err();
        assert_eq!(
            late,
            "a WAIT_EVENT that began at 1000 ns with a timeout of 10 ms returned ENOENT \
             (no event), but the engine's wait slept from 2000 ns to 12002001 ns: its first \
             sleep began at 2000 ns, so the wait had to run out by 12002000 ns (the timeout \
             rounded up to whole 4 ms jiffies)"
        );
        // A whole timeout after the call began, but the clock started late
        // (a lock wait before it): passes, the wait is counted from its sleep.
        assert!(Events::wait_ran_out(&w, &[(9_000_000, 10_000_000)]).is_ok());
        // Woken early by an event another waiter took, it sleeps the rest:
        // fine to the same deadline, not past it.
        assert!(Events::wait_ran_out(&w, &[(2_000, 10_000_000), (5_000, 9_997_000)]).is_ok());
        let fresh = [(2_000, 10_000_000), (5_000_000, 10_000_000)];
        assert!(Events::wait_ran_out(&w, &fresh).is_err());
        // After a sleep that ran its length the wait is over: later sleeps
        // are the last put's (a DESTROY came meanwhile).
        let put = [(2_000, 10_000_000), (10_002_000, 100_000_000)];
        assert!(Events::wait_ran_out(&w, &put).is_ok());
        // A poll (timeout 0) never sleeps, an unknown timeout is not
        // judged, and a wait with no sleep seen has nothing to judge.
        for timeout in [Some(0), None] {
            let w = e.wait_begins(A, 1_000, timeout);
            assert!(Events::wait_ran_out(&w, &[(2_000, 4_000_000)]).is_ok());
        }
        assert!(Events::wait_ran_out(&w, &[]).is_ok());
    }

    /// The sleeps counted are the watched task's, from its WAIT_EVENT's
    /// start, and only until it returns.
    #[test]
    fn only_a_waiting_tasks_sleeps_count() {
        let mut e = Events::default();
        e.timed_sleep(3, 100, 5);
        e.watch_sleeps(3);
        e.timed_sleep(3, 200, 6);
        e.timed_sleep(4, 300, 7);
        assert_eq!(e.sleeps_of(3), vec![(200, 6)]);
        e.timed_sleep(3, 400, 8);
        assert_eq!(e.sleeps_of(3), vec![]);
    }

    /// Events taken newest first (a LIFO queue) fail, with the snapshot,
    /// both labels and when; FIFO passes, equal labels too.
    #[test]
    fn labels_that_go_back_fail() {
        let mut e = Events::default();
        e.created(A, 100);
        wait(&mut e, A, 1_000, 1_200, 900).unwrap();
        wait(&mut e, A, 1_300, 1_400, 900).unwrap();
        wait(&mut e, A, 1_500, 1_600, 1_000).unwrap();
        let err = wait(&mut e, A, 1_700, 1_800, 950).unwrap_err();
        assert_eq!(
            err,
            "snapshot a1a1a1a1: a WAIT_EVENT that began at 1700 ns and returned at 1800 ns \
             returned an event labelled 950 ns, older than the one labelled 1000 ns that a \
             WAIT_EVENT returned at 1600 ns, before this one began: events came out of the \
             order they were queued"
        );
        // The newest label stays the floor: a later one older than it fails too.
        assert!(wait(&mut e, A, 1_900, 2_000, 990).is_err());
        assert!(wait(&mut e, A, 2_100, 2_200, 1_000).is_ok());
    }

    /// Two waits that overlapped may return in either order: the one that
    /// returned first may hold the newer event.
    #[test]
    fn overlapping_waits_are_not_compared() {
        let mut e = Events::default();
        e.created(A, 0);
        let first = e.wait_begins(A, 1_000, None);
        let second = e.wait_begins(A, 1_100, None);
        e.returned(&second, 1_500, 1_050).unwrap();
        e.returned(&first, 1_600, 1_020).unwrap();
        // A wait that began after both returned sees the newest of them.
        assert!(wait(&mut e, A, 1_700, 1_800, 1_040).is_err());
    }

    #[test]
    fn a_label_lies_between_its_create_and_its_return() {
        let mut e = Events::default();
        e.created(A, 500);
        let late = wait(&mut e, A, 1_000, 1_200, 1_201).unwrap_err();
        assert!(
            late.contains("labelled 1201 ns, later than its return"),
            "{late}"
        );
        let early = wait(&mut e, A, 1_300, 1_400, 499).unwrap_err();
        assert!(
            early.contains(
                "labelled 499 ns, before the CREATE that made the snapshot began (500 ns)"
            ),
            "{early}"
        );
        assert!(wait(&mut e, A, 1_500, 1_600, -1).is_err());
        // A new CREATE of the id starts over.
        e.created(A, 2_000);
        assert!(wait(&mut e, A, 2_100, 2_200, 2_000).is_ok());
        assert!(wait(&mut e, A, 2_300, 2_400, 1_999).is_err());
        // An id no CREATE was seen for has no lower bound.
        assert!(wait(&mut e, [7; 16], 100, 200, 0).is_ok());
    }

    #[test]
    fn one_corrupted_event_per_device() {
        let mut e = Events::default();
        assert!(e.corrupted(A, 7).is_ok());
        assert!(e.corrupted(A, 8).is_ok());
        assert!(e.corrupted([2; 16], 7).is_ok());
        assert!(e.corrupted(A, 7).is_err());
    }

    /// Storage writes as rule 4 sees them: one watch per id, the time the
    /// test says R's copy was submitted, and sectors offered twice.
    #[derive(Default)]
    struct FakeStorage {
        watches: BTreeMap<Id, (DevT, u64, u64)>,
        submitted: Option<u64>,
        offered_twice: bool,
    }

    impl Watches for FakeStorage {
        fn watch(&mut self, id: Id, dev: DevT, sector: u64, count: u64) {
            self.watches.insert(id, (dev, sector, count));
        }
        fn seen(&self, id: Id) -> Option<u64> {
            self.watches.get(&id).and(self.submitted)
        }
        fn unwatch(&mut self, id: Id) {
            self.watches.remove(&id);
        }
        fn offered_once(&self, _: DevT, _: u64, _: u64) -> bool {
            !self.offered_twice
        }
    }

    const STORE: DevT = DevT(0x70_0001);
    const M: u64 = 4096;

    /// The shape of coverage/low-space-range-tails: M = 4096 (T = 2048),
    /// chunks of 512, six ranges of 768: with the tails counted the third
    /// region (sector 1536) leaves 2048 requested sectors, so it raises
    /// the event; R's copy is submitted at 5000 ns.
    fn tails() -> (Events, FakeStorage) {
        let mut e = Events::default();
        let mut st = FakeStorage::default();
        e.created(A, 100);
        e.low_space_model(A, 100, M, Some(512));
        let ranges: Vec<(u64, u64)> = (0..6).map(|i| (768 * i, 768)).collect();
        e.append_begins(A, STORE, Some(&ranges));
        e.low_space_poll(M, &mut st);
        e.append_ends(A, true);
        assert_eq!(st.watches.get(&A), Some(&(STORE, 1536, 512)));
        st.submitted = Some(5_000);
        e.low_space_poll(M, &mut st);
        (e, st)
    }

    /// One WAIT_EVENT of `id` over [began, ended] with `outcome`, judged by
    /// rule 4 (`dropped`: an event allocation failed).
    fn wait4(
        e: &mut Events,
        began: u64,
        ended: u64,
        outcome: Outcome,
        dropped: bool,
    ) -> Result<(), String> {
        let w = e.wait_begins(A, began, None);
        e.low_space_wait_begins(A);
        e.low_space_wait_ends(&w, ended, outcome, |_| dropped)
    }

    const LOW: u32 = EVENT_LOW_FREE_SPACE;

    /// The creation's event, then the first one after it, labelled `label`.
    fn first_after_creation(e: &mut Events, label: i64) -> Result<(), String> {
        wait4(e, 6_000, 6_100, Outcome::Event(LOW, 150), false)?;
        wait4(e, 6_200, 6_300, Outcome::Event(LOW, label), false)
    }

    /// The rule fires: an event labelled after R's copy was submitted is
    /// too late (bug 3: the wasted tails not counted); at it, it passes.
    #[test]
    fn a_low_space_event_after_its_regions_copy_fails() {
        let (mut e, _) = tails();
        assert!(first_after_creation(&mut e, 5_000).is_ok());
        let (mut e, _) = tails();
        let err = first_after_creation(&mut e, 5_001).unwrap_err();
        assert_eq!(
            err,
            "snapshot a1a1a1a1: a WAIT_EVENT that began at 6200 ns and returned at 6300 ns \
             returned the first low-free-space event after the creation's labelled 5001 ns, \
             but the region at sector 1536 of storage device 7:1 (the allocation after which \
             at most 2048 of the 4096 requested sectors are left) had its copy submitted at \
             5000 ns: the event came too late"
        );
        // Judged once: later events are not.
        assert!(wait4(&mut e, 7_000, 7_100, Outcome::Event(LOW, 9_000), false).is_ok());
        // A corrupted event between does not count as a low-space one.
        let (mut e, _) = tails();
        wait4(&mut e, 6_000, 6_100, Outcome::Event(LOW, 150), false).unwrap();
        wait4(&mut e, 6_100, 6_150, Outcome::Event(1, 4_000), false).unwrap();
        assert!(wait4(&mut e, 6_200, 6_300, Outcome::Event(LOW, 5_001), false).is_err());
    }

    /// The queue empty for a WAIT_EVENT that began after R's copy was
    /// submitted, before the event was taken.
    #[test]
    fn no_event_after_its_regions_copy_fails() {
        let (mut e, _) = tails();
        wait4(&mut e, 6_000, 6_100, Outcome::Event(LOW, 150), false).unwrap();
        let err = wait4(&mut e, 6_200, 6_300, Outcome::Empty, false).unwrap_err();
        assert_eq!(
            err,
            "snapshot a1a1a1a1: a WAIT_EVENT that began at 6200 ns found no event until 6300 ns, \
             but the region at sector 1536 of storage device 7:1 (the allocation after which at \
             most 2048 of the 4096 requested sectors are left) had its copy submitted at 5000 ns \
             and its low-free-space event was not taken yet"
        );
        // A wait that began before the copy was submitted may find none.
        let (mut e, _) = tails();
        assert!(wait4(&mut e, 4_000, 4_100, Outcome::Empty, false).is_ok());
    }

    /// Where R lies: tails counted; a range smaller than a chunk counts
    /// whole; none while the ranges fall short; none if filled jumps past M.
    #[test]
    fn the_crossing_region_follows_first_fit_with_tails_counted() {
        let model = |chunk, ranges: &[u64]| {
            let mut start = 0;
            let ranges = ranges
                .iter()
                .map(|&count| {
                    start += count;
                    (STORE, start - count, count)
                })
                .collect();
            LowSpace {
                minimum: M,
                chunk,
                since: 0,
                ranges,
                appending: false,
                region: None,
                written_by: None,
                low_space_events: 0,
            }
            .crossing()
        };
        assert_eq!(model(512, &[768; 6]), Ok(Some((STORE, 1536))));
        // 8 + 2040 = 2048 sectors before the third range: its first region.
        assert_eq!(model(512, &[8, 2040, 4096]), Ok(Some((STORE, 2048))));
        assert_eq!(model(512, &[1024]), Ok(None));
        // The region that ends at 2048 + 2560 > M: no event ever.
        assert_eq!(model(2560, &[2048, 4096]), Err(()));
        // The fourth region fills 2048 exactly.
        assert_eq!(model(512, &[2048, 4096]), Ok(Some((STORE, 1536))));
    }

    /// Every excuse drops the snapshot: nothing judged after it.
    #[test]
    fn unsure_models_judge_nothing() {
        let late = |e: &mut Events| first_after_creation(e, 9_000);
        type Excuse = fn(&mut Events, &mut FakeStorage);
        let excuses: [(&str, Excuse); 6] = [
            ("a failed APPEND", |e, st| {
                e.append_begins(A, STORE, Some(&[(1 << 20, 512)]));
                e.append_ends(A, false);
                e.low_space_poll(M, st);
            }),
            ("two APPENDs at once", |e, _| {
                e.append_begins(A, STORE, Some(&[(1 << 20, 512)]));
                e.append_begins(A, STORE, Some(&[(1 << 21, 512)]));
            }),
            ("an APPEND whose ranges are not all valid", |e, _| {
                e.append_begins(A, STORE, None);
            }),
            ("diff_storage_minimum changed", |e, st| {
                e.low_space_poll(M * 2, st)
            }),
            ("a DESTROY", |e, _| e.low_space_unsure(A)),
            ("an unload", |e, _| e.unloaded()),
        ];
        for (what, excuse) in excuses {
            let (mut e, mut st) = tails();
            excuse(&mut e, &mut st);
            assert!(late(&mut e).is_ok(), "{what}");
        }
        // An event allocation failed: the events after it are not known.
        let (mut e, _) = tails();
        wait4(&mut e, 6_000, 6_100, Outcome::Event(LOW, 150), false).unwrap();
        assert!(wait4(&mut e, 6_200, 6_300, Outcome::Event(LOW, 9_000), true).is_ok());
        // A WAIT_EVENT that failed may have taken an event nobody saw.
        let (mut e, _) = tails();
        wait4(&mut e, 5_500, 5_600, Outcome::Other, false).unwrap();
        assert!(late(&mut e).is_ok());
        // Two WAIT_EVENTs in flight: either may take the event.
        let (mut e, _) = tails();
        e.low_space_wait_begins(A);
        assert!(late(&mut e).is_ok());
        // R offered twice (another snapshot's range): whose write was it?
        let (mut e, mut st) = tails();
        st.offered_twice = true;
        e.low_space_model(A, 100, M, Some(512));
        e.append_begins(A, STORE, Some(&[(0, 4096)]));
        e.low_space_poll(M, &mut st);
        assert!(late(&mut e).is_ok());
        // Devices with chunks of different sizes, or a minimum that is no
        // positive sector count: no model.
        for (minimum, chunk) in [(M, None), (u64::MAX - 7, Some(512))] {
            let (mut e, mut st) = tails();
            e.low_space_model(A, 100, minimum, chunk);
            e.append_begins(A, STORE, Some(&[(0, 4096)]));
            st.submitted = Some(5_000);
            e.low_space_poll(M, &mut st);
            assert!(late(&mut e).is_ok());
        }
    }
}
