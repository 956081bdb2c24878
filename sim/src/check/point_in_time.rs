//! The point-in-time oracle (design section 4).
//!
//! It keeps its own history of every user write to every device (originals
//! and images), with the virtual times at which each was submitted and
//! completed. A snapshot image must read, for each sector, the original's
//! content at TAKE plus the image's own writes, and nothing else; an
//! original must read what users wrote to it. Where IO overlapped in time,
//! any of the overlapping values is allowed, and nothing more. Writes that
//! overlapped each other may have been applied in either order: each of
//! them may be the last until a write submitted after its completion
//! supersedes it, and once a read saw one of them with no write in flight,
//! later reads must see the same. An image read that fails is allowed only
//! when something the user can see explains it: the engine reported the
//! snapshot corrupted for that device first, or a fault the sim recorded
//! (`injected.rs`) explains that read by device, sectors and time.
//!
//! The rules are per sector, but the state is kept per range of sectors
//! (`extents.rs`): the history of a range is one list of writes, each
//! holding its bio's data once, and a range is cut only where a bio starts
//! or ends inside it. A read is judged stretch by stretch (where its
//! device's history, the original's and the pins stay the same): what is
//! allowed is worked out once per stretch and each sector compared with it.
//!
//! Repeatable reads have one exception, on images: a value may change to
//! the data of a write to the original that was in flight at the TAKE and
//! landed after the read that pinned it began (`Landing`: v2 does not wait
//! for such a write, only a freeze drains it).

mod extents;

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use blksnap_core::kernel::{Bio, BioOp, BioResult, DevT, Errno, Run, Stamp, Stamps};

use self::extents::{Extents, Piece, Store};
use super::injected::{FaultKind, InjectedFaults};
use super::sector_map::SectorMap;
use crate::device::{pattern_stamp, Fill};

type SnapId = [u8; 16];

/// What one user write carried. Most writes are one run of stamps, held
/// in place; other data is shared by every range the write covers.
#[derive(Clone)]
enum Written {
    Run(Run),
    Runs(Rc<Stamps>),
}

impl Written {
    /// Inlined (it runs once per user write): the call and the copy out
    /// of its result cost more than its body.
    #[inline(always)]
    fn new(data: &Stamps) -> Written {
        match data.single_run() {
            Some(run) => Written::Run(run),
            None => Written::Runs(Rc::new(data.clone())),
        }
    }

    /// The stamp of the write's `i`th sector.
    fn get(&self, i: u64) -> Stamp {
        match self {
            Written::Run(run) => run.at(i),
            Written::Runs(data) => data.get(i),
        }
    }
}

/// One user write as the sectors of one range saw it.
#[derive(Clone)]
struct SectorWrite {
    id: u64,
    /// The write's first sector and its data.
    first: u64,
    written: Written,
    submitted: u64,
    /// None while in flight, and for ever if it failed.
    completed: Option<u64>,
    /// When a write submitted after this one completed itself completed:
    /// from then on this one can no longer be the sector's last value.
    superseded: Option<u64>,
}

impl SectorWrite {
    /// What the write put in `sector` (one of its own).
    fn stamp(&self, sector: u64) -> Stamp {
        self.written.get(sector - self.first)
    }

    /// In flight at some moment of [from, to].
    fn in_flight(&self, from: u64, to: u64) -> bool {
        self.submitted <= to && self.completed.is_none_or(|c| c > from)
    }

    /// Whether a judgement can still need it (`SectorHistory::prune`).
    #[inline(always)]
    fn kept(&self, horizon: u64, windows: &Windows) -> bool {
        match self.superseded {
            Some(s) => s > horizon || windows.need(self.submitted, s),
            None => true,
        }
    }

    /// The same write in the same state (the data follows from the id).
    fn same(&self, other: &SectorWrite) -> bool {
        (self.id, self.submitted, self.completed, self.superseded)
            == (other.id, other.submitted, other.completed, other.superseded)
    }
}

/// The writes to the sectors of one range that a judgement can still
/// need, in submission order, and what pruning must not forget. Every
/// sector of the range has this same history.
#[derive(Clone, Default)]
struct SectorHistory {
    writes: Vec<SectorWrite>,
    /// The latest submission ever (a pin holds until a newer write).
    last_submitted: Option<u64>,
    /// A user write to it completed once (the final media check).
    ever_completed: bool,
}

impl Piece for SectorHistory {
    fn cut(&mut self, _at: u64) -> SectorHistory {
        self.clone()
    }

    fn join(&mut self, next: &SectorHistory) -> bool {
        self.last_submitted == next.last_submitted
            && self.ever_completed == next.ever_completed
            && self.writes.len() == next.writes.len()
            && self.writes.iter().zip(&next.writes).all(|(a, b)| a.same(b))
    }
}

/// A device's history, by range: a `SectorMap` finds the range a write
/// starts at in O(1), at its submission and at its completion (issue 10).
/// The pins stay on a B-tree: every read sets and drops them, and the
/// hashed store's dearer inserts and removes made judgements about 1 %
/// dearer there.
type History = Extents<SectorHistory, SectorMap<(u64, SectorHistory)>>;

/// Values reads saw with no write in flight, and when the read that saw
/// them started and ended: until a write to those sectors is submitted
/// after that start, every read must see them again, except a read that
/// began before the pinning one ended while a write to them was in flight
/// (it may have read before that write landed: see `excused`).
struct Pin {
    since: u64,
    ended: u64,
    seen: Stamps,
}

impl Pin {
    /// Whether a read over [from, ..] may differ from the pin: it began
    /// before the pinning read ended, so nothing orders the two, and a
    /// write was in flight in between, so the two may have read either
    /// side of it. (The pinning read saw no write in flight, so such a
    /// write landed before it began.)
    fn excused(&self, from: u64, writes: &[SectorWrite]) -> bool {
        from < self.ended && writes.iter().any(|w| w.in_flight(from, self.ended))
    }
}

impl Piece for Pin {
    fn cut(&mut self, at: u64) -> Pin {
        let tail = self.seen.slice(at, self.seen.len());
        self.seen = self.seen.slice(0, at);
        Pin {
            since: self.since,
            ended: self.ended,
            seen: tail,
        }
    }

    fn join(&mut self, next: &Pin) -> bool {
        if (self.since, self.ended) != (next.since, next.ended) {
            return false;
        }
        self.seen.append(&next.seen);
        true
    }
}

/// Which writes of one history a window [from, to] allows: those that may
/// be the last at `from`, and those in flight during the window.
#[derive(Clone, Copy)]
struct Rule {
    from: u64,
    to: u64,
    /// The latest submission among the writes completed by `from` (None:
    /// nothing completed by then, the sector holds what came before).
    latest_start: Option<u64>,
}

impl Rule {
    fn new(writes: &[SectorWrite], from: u64, to: u64) -> Rule {
        let latest_start = writes
            .iter()
            .filter(|w| w.completed.is_some_and(|c| c <= from))
            .map(|w| w.submitted)
            .max();
        Rule {
            from,
            to,
            latest_start,
        }
    }

    /// A write completed by `from` may have been applied last unless a
    /// write submitted after its completion (and completed by `from`)
    /// supersedes it; a write in flight may have landed or not.
    fn allows(&self, w: &SectorWrite) -> bool {
        let last = match (self.latest_start, w.completed) {
            (Some(latest), Some(c)) => c <= self.from && c >= latest,
            _ => false,
        };
        last || w.in_flight(self.from, self.to)
    }
}

/// What a never-written sector of a device holds.
#[derive(Clone, Copy)]
enum Initial {
    Zero,
    Pattern(u32),
}

impl Initial {
    fn stamp(self, sector: u64) -> Stamp {
        match self {
            Initial::Zero => 0,
            Initial::Pattern(index) => pattern_stamp(index, sector),
        }
    }
}

/// What the sectors of one stretch may read: the writes its own history
/// allows, else (none completed by the window's start) what came before
/// them: for an image, the original as the TAKE window allows it, and
/// the original's initial fill before that.
struct Allowed<'a> {
    own: (&'a [SectorWrite], Rule),
    orig: Option<(&'a [SectorWrite], Rule)>,
    initial: Initial,
}

impl Allowed<'_> {
    /// Whether `f` holds for one of the values allowed at `sector`.
    fn any(&self, sector: u64, mut f: impl FnMut(Stamp) -> bool) -> bool {
        for (writes, rule) in std::iter::once(self.own).chain(self.orig) {
            if writes.iter().any(|w| rule.allows(w) && f(w.stamp(sector))) {
                return true;
            }
            if rule.latest_start.is_some() {
                return false;
            }
        }
        f(self.initial.stamp(sector))
    }

    /// What `any` walks, worked out once for a whole stretch: the writes
    /// the rules allow, in the same order, and the initial fill when no
    /// rule stops before it. A stretch judges many sectors with one set of
    /// writes, so each sector then costs only its comparisons (issue 10).
    fn sources(&self) -> Sources<'_> {
        let mut writes = Vec::new();
        for (list, rule) in std::iter::once(self.own).chain(self.orig) {
            writes.extend(list.iter().filter(|w| rule.allows(w)));
            if rule.latest_start.is_some() {
                return Sources {
                    writes,
                    initial: None,
                };
            }
        }
        Sources {
            writes,
            initial: Some(self.initial),
        }
    }

    /// The values allowed at `sector`, sorted, each once.
    fn list(&self, sector: u64) -> Vec<Stamp> {
        let mut values = Vec::new();
        self.any(sector, |v| {
            values.push(v);
            false
        });
        values.sort_unstable();
        values.dedup();
        values
    }
}

/// Where the values one stretch allows come from (`Allowed::sources`).
struct Sources<'a> {
    writes: Vec<&'a SectorWrite>,
    initial: Option<Initial>,
}

impl Sources<'_> {
    /// Whether `got` is one of the values allowed at `sector` (one the
    /// `Allowed` these come from would find with `any`).
    fn contains(&self, sector: u64, got: Stamp) -> bool {
        self.writes.iter().any(|w| w.stamp(sector) == got)
            || self.initial.is_some_and(|i| i.stamp(sector) == got)
    }
}

impl SectorHistory {
    /// A write of this sector completed at `now`: it supersedes every
    /// write that had completed before it was submitted. Then `prune`,
    /// in the same pass (each write's fate depends only on itself).
    /// False (nothing but the pruning) when the write is not in this
    /// history.
    fn completed_then_pruned(
        &mut self,
        id: u64,
        now: u64,
        horizon: u64,
        windows: &Windows,
    ) -> bool {
        let Some(index) = self.writes.iter().rposition(|w| w.id == id) else {
            self.prune(horizon, windows);
            return false;
        };
        self.writes[index].completed = Some(now);
        self.ever_completed = true;
        let submitted = self.writes[index].submitted;
        self.writes.retain_mut(|w| {
            if w.superseded.is_none() && w.completed.is_some_and(|c| c < submitted) {
                w.superseded = Some(now);
            }
            w.kept(horizon, windows)
        });
        true
    }

    /// `completed_then_pruned` before the pruning, in a pass of its own:
    /// the tests' model, which the oracle's one pass must match.
    #[cfg(test)]
    fn completed(&mut self, id: u64, now: u64) {
        let Some(index) = self.writes.iter().rposition(|w| w.id == id) else {
            return;
        };
        self.writes[index].completed = Some(now);
        self.ever_completed = true;
        let submitted = self.writes[index].submitted;
        for w in &mut self.writes {
            if w.superseded.is_none() && w.completed.is_some_and(|c| c < submitted) {
                w.superseded = Some(now);
            }
        }
    }

    /// Forget the writes no judgement can need any more: superseded by
    /// `horizon` (every later query starts at or after it), and outside
    /// every fixed window (TAKE windows of images of this device).
    fn prune(&mut self, horizon: u64, windows: &Windows) {
        self.writes.retain(|w| w.kept(horizon, windows));
    }
}

/// User bios in flight by op id, each with what its end needs. Ids grow,
/// so pushing keeps them sorted; the bios in flight are few (one per user
/// task, plus writeback), so a Vec is cheaper than a map (issue 10).
struct InFlight<T> {
    ops: Vec<(u64, T)>,
}

impl<T: Copy> InFlight<T> {
    fn push(&mut self, id: u64, value: T) {
        debug_assert!(self.ops.last().is_none_or(|&(last, _)| last < id));
        self.ops.push((id, value));
    }

    /// The op's value, no longer in flight (None: not in flight).
    fn take(&mut self, id: u64) -> Option<T> {
        // The newest op, nearly always (one bio in flight): a pop, not a
        // search and a `remove` that calls memmove for nothing.
        if self.ops.last().is_some_and(|&(last, _)| last == id) {
            return self.ops.pop().map(|(_, value)| value);
        }
        let at = self.ops.binary_search_by_key(&id, |&(op, _)| op).ok()?;
        Some(self.ops.remove(at).1)
    }

    fn values(&self) -> impl Iterator<Item = T> + '_ {
        self.ops.iter().map(|&(_, value)| value)
    }
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight { ops: Vec::new() }
    }
}

/// The query windows [from, to] that stay fixed while the run goes on:
/// the TAKE windows of bound images, per original. A write that was live
/// [submitted, superseded) in one of them stays.
#[derive(Default)]
struct Windows {
    by_start: BTreeMap<(u64, u64), u32>,
    longest: u64,
    /// The latest end of a window held (0: none). A write submitted after
    /// it is needed by none, with no search: most writes of a run come
    /// after the last TAKE (issue 10).
    latest_end: u64,
}

/// The windows of an original no image is bound to: a constant, where
/// one built and dropped per completed write cost about 20 instructions.
static NO_WINDOWS: Windows = Windows {
    by_start: BTreeMap::new(),
    longest: 0,
    latest_end: 0,
};

impl Windows {
    fn add(&mut self, from: u64, to: u64) {
        *self.by_start.entry((from, to)).or_default() += 1;
        self.longest = self.longest.max(to - from);
        self.latest_end = self.latest_end.max(to);
    }

    fn remove(&mut self, from: u64, to: u64) {
        if let Some(n) = self.by_start.get_mut(&(from, to)) {
            *n -= 1;
            if *n == 0 {
                self.by_start.remove(&(from, to));
                self.latest_end = self.by_start.keys().map(|&(_, to)| to).max().unwrap_or(0);
            }
        }
    }

    /// A query (from, to) needs a write live over [submitted, superseded)
    /// iff from < superseded and to >= submitted.
    fn need(&self, submitted: u64, superseded: u64) -> bool {
        if self.by_start.is_empty() || self.latest_end < submitted {
            return false;
        }
        self.by_start
            .range(..(superseded, 0))
            .rev()
            .take_while(|((from, _), _)| from.saturating_add(self.longest) >= submitted)
            .any(|((_, to), _)| *to >= submitted)
    }
}

/// While alive, the oracle keeps every write live at or after `start`: a
/// TAKE ran from `start`, and its window is known only when its images
/// are bound.
pub struct HistoryHold {
    sim: std::rc::Rc<crate::kernel::Sim>,
    start: u64,
}

impl HistoryHold {
    pub fn new(sim: &std::rc::Rc<crate::kernel::Sim>, start: u64) -> HistoryHold {
        sim.oracle.borrow_mut().hold(start);
        HistoryHold {
            sim: sim.clone(),
            start,
        }
    }
}

impl Drop for HistoryHold {
    fn drop(&mut self) {
        self.sim.oracle.borrow_mut().release(self.start);
    }
}

/// What the oracle knows of one image.
struct ImageRecord {
    orig: DevT,
    capacity: u64,
    /// The TAKE ioctl's window: the switch happened somewhere inside.
    take_start: u64,
    take_end: u64,
    bound: bool,
    /// The snapshot it belongs to (its storage devices come from APPEND).
    snapshot: SnapId,
    /// The largest chunk the engine may use for it, in sectors (from the
    /// user-set module parameters): a fault on the original explains an
    /// image read only within this distance.
    chunk_bound: u64,
    /// When the user started removing it (DESTROY, unload): from then on
    /// its IO may fail.
    going_since: Option<u64>,
}

/// An image read that failed, judged at the end of the run (the corrupted
/// event that explains it may be read after the IO).
#[derive(Clone, Debug)]
struct FailedRead {
    image: DevT,
    orig: DevT,
    /// The image's snapshot, TAKE start and chunk bound at the time (a
    /// later image may reuse the number).
    snapshot: SnapId,
    take_start: u64,
    chunk_bound: u64,
    sector: u64,
    sectors: u64,
    from: u64,
    to: u64,
    errno: Errno,
}

/// A corrupted event the scenario read. v2 raises the corrupt flag first
/// and only then allocates the event (GFP_NOIO, which may sleep in
/// reclaim) and stamps it (`diff_area_set_corrupted` -> `event_gen`:
/// kzalloc, then ktime_get), so image IO may fail from `began`, before the
/// time label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CorruptedEvent {
    label: u64,
    began: u64,
}

/// One WAIT_EVENT's window and outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WaitEventResult {
    from: u64,
    to: u64,
    error: Option<Errno>,
}

/// Rule 7's excuse: the snapshot's queue may hold the corrupted event.
const UNREAD_EVENT: &str =
    "a fault corrupted the snapshot, and its events were not all read after it";

/// Rule 7 cannot judge: the queue that would tell went with the module.
const EVENTS_LOST: &str =
    "the snapshot went with its module (power cut, reboot, unload) before its events were read";

/// The allocation site of an event (`event_gen`'s kzalloc).
const EVENT_SITE: &str = "event";

/// Allocations on the copy-on-write path whose failure corrupts the
/// snapshot (spec 5.7: a chunk that cannot be copied or stored is lost):
/// the chunk's buffer, its IO context and its storage region.
const CORRUPTING_ALLOC_SITES: [&str; 3] = ["diff_buffer", "diff_io", "diff_region"];

/// What the oracle did with one read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    /// Sectors whose content the oracle compared.
    pub sectors: u64,
    /// The read failed and the oracle allowed it, or will judge at the end
    /// whether a fault or a corrupted event explains it.
    pub failure_judged: bool,
}

#[derive(Default)]
pub struct Oracle {
    /// Originals: their fill, for sectors never written.
    devices: BTreeMap<DevT, (u32, Fill)>,
    images: BTreeMap<DevT, ImageRecord>,
    /// What each written sector's judgements can still need, per device,
    /// by ranges of sectors with the same history.
    history: BTreeMap<DevT, History>,
    /// Writes in flight: (device, first sector, sectors).
    writing: InFlight<(DevT, u64, u64)>,
    /// Reads in flight: their submission times (the oldest bounds what a
    /// judgement can ask).
    reads: InFlight<u64>,
    /// TAKEs in progress by start time (see [`HistoryHold`]).
    holds: BTreeMap<u64, u32>,
    /// TAKE windows of bound images, per original.
    windows: BTreeMap<DevT, Windows>,
    next_op: u64,
    /// Image reads that failed. Judged at the end.
    failed_image_reads: Vec<FailedRead>,
    /// Values reads saw with no write in flight, per device, by ranges.
    /// Until a new write to a sector, every read must see its value again.
    pins: BTreeMap<DevT, Extents<Pin>>,
    /// The read being judged set or dropped a pin: its neighbours may join
    /// now. Otherwise the pins are as joined as before it (most reads of
    /// quiet sectors find their pins and keep them).
    pins_unjoined: bool,
    /// A failed read left pins unjoined: every read joins around itself.
    pins_stay_unjoined: bool,
    /// The first corrupted event the scenario read for each (snapshot,
    /// original).
    corrupted: BTreeMap<(SnapId, DevT), CorruptedEvent>,
    /// Allocations at `event` whose reclaim has begun and which have not
    /// returned yet: (task, when the reclaim began).
    event_reclaims: Vec<(u64, u64)>,
    /// `event` allocations that reclaimed first: when each returned, and
    /// when it began (the latest begin of those returning at that time).
    event_alloc_began: BTreeMap<u64, u64>,
    /// When the last `event` allocation returned: an event was queued then.
    last_event_queued: Option<u64>,
    /// Each snapshot's last WAIT_EVENT: when it began and ended, and its
    /// error if it failed.
    last_wait_event: BTreeMap<SnapId, WaitEventResult>,
    /// Snapshots that went with their module (a power cut, a reboot or an
    /// unload), and when: their queued events were never read and never
    /// will be.
    events_lost: BTreeMap<SnapId, u64>,
    /// Diff storage ranges users appended: the engine writes there, so
    /// user reads of them are not judged.
    storage: BTreeMap<DevT, Vec<(u64, u64)>>,
    /// Storage devices each snapshot was given (from APPEND arguments).
    storage_of: BTreeMap<SnapId, BTreeSet<DevT>>,
    pub image_reads_checked: u64,
    pub sectors_checked: u64,
    pub original_sectors_checked: u64,
    pub original_reads_checked: u64,
    /// Failed image reads excused (at once, or at the end by a fault or an
    /// event).
    pub image_errors_excused: u64,
    /// Silent data faults and the wrong values they explain.
    pub device_damage: super::device_faults::DeviceDamage,
}

impl Oracle {
    pub fn add_device(&mut self, dev: DevT, index: u32, fill: Fill) {
        self.devices.insert(dev, (index, fill));
    }

    /// The engine registered an image disk; it is bound to its original
    /// once the scenario learns the pair (COLLECT_IMAGES).
    pub fn image_added(&mut self, image: DevT, capacity: u64) {
        // A new image may reuse the number of one that is gone: its writes
        // are not this image's.
        self.history.remove(&image);
        self.pins.remove(&image);
        self.forget_window(image);
        self.images.insert(
            image,
            ImageRecord {
                orig: DevT(0),
                capacity,
                take_start: 0,
                take_end: 0,
                bound: false,
                snapshot: [0; 16],
                chunk_bound: 1,
                going_since: None,
            },
        );
    }

    pub fn image_capacity(&self, image: DevT) -> Option<u64> {
        self.images.get(&image).map(|i| i.capacity)
    }

    /// The image shows `orig` as of the TAKE that ran in [start, end].
    pub fn bind_image(&mut self, image: DevT, orig: DevT, take: (u64, u64), snapshot: SnapId) {
        self.forget_window(image);
        if let Some(record) = self.images.get_mut(&image) {
            record.orig = orig;
            (record.take_start, record.take_end) = take;
            record.bound = true;
            record.snapshot = snapshot;
            self.windows.entry(orig).or_default().add(take.0, take.1);
        }
    }

    /// The image's TAKE window no longer needs its original's history.
    fn forget_window(&mut self, image: DevT) {
        if let Some(record) = self.images.get(&image).filter(|r| r.bound) {
            if let Some(windows) = self.windows.get_mut(&record.orig) {
                windows.remove(record.take_start, record.take_end);
            }
        }
    }

    /// The largest chunk the engine may use for this image, in sectors.
    pub fn set_chunk_bound(&mut self, image: DevT, sectors: u64) {
        if let Some(record) = self.images.get_mut(&image) {
            record.chunk_bound = sectors.max(1);
        }
    }

    /// A range the user gave snapshot `snapshot` as diff storage.
    pub fn storage_appended(&mut self, snapshot: SnapId, dev: DevT, sector: u64, count: u64) {
        self.storage.entry(dev).or_default().push((sector, count));
        self.storage_of.entry(snapshot).or_default().insert(dev);
    }

    /// From `sector`, the stretch below `limit` that is all inside the
    /// storage ranges of `dev` or all outside them: its end, and which.
    fn storage_piece(&self, dev: DevT, sector: u64, limit: u64) -> (u64, bool) {
        let Some(ranges) = self.storage.get(&dev) else {
            return (limit, false);
        };
        let inside = ranges.iter().any(|&(s, c)| sector >= s && sector - s < c);
        let end = ranges
            .iter()
            .flat_map(|&(s, c)| [s, s.saturating_add(c)])
            .filter(|&edge| edge > sector)
            .fold(limit, u64::min);
        (end, inside)
    }

    /// The user is removing the image (DESTROY of its snapshot, unload).
    pub fn image_going(&mut self, image: DevT, now: u64) {
        if let Some(record) = self.images.get_mut(&image) {
            record.going_since.get_or_insert(now);
        }
    }

    /// A removal that failed: the image stays, and its IO must work.
    pub fn image_staying(&mut self, image: DevT) {
        if let Some(record) = self.images.get_mut(&image) {
            record.going_since = None;
        }
    }

    /// Every image the user is removing (unload).
    pub fn all_images_going(&mut self, now: u64) {
        for record in self.images.values_mut() {
            record.going_since.get_or_insert(now);
        }
    }

    /// `snapshots` went with their module at `now` (a power cut, a reboot
    /// or an unload, with no DESTROY): nobody can read their queues any
    /// more.
    pub fn events_lost(&mut self, snapshots: impl IntoIterator<Item = SnapId>, now: u64) {
        for snapshot in snapshots {
            self.events_lost.entry(snapshot).or_insert(now);
        }
    }

    /// Power was cut at `now` (`power.rs`): what `dev` holds now is where
    /// its history starts again, and writes cut in flight never complete.
    pub fn power_cycled(&mut self, dev: DevT, now: u64, media: &dyn Fn(u64) -> Stamp) {
        let Some(map) = self.history.get_mut(&dev) else {
            return;
        };
        let (next_op, pins) = (&mut self.next_op, self.pins.get_mut(&dev));
        let mut cut = Vec::new();
        map.for_each_mut(|start, end, history| {
            *next_op += 1;
            let mut seen = Stamps::new();
            for sector in start..end {
                seen.push(media(sector));
            }
            let found = SectorWrite {
                id: *next_op,
                first: start,
                written: Written::new(&seen),
                submitted: now,
                completed: Some(now),
                superseded: None,
            };
            *history = SectorHistory {
                writes: vec![found],
                last_submitted: Some(now),
                ever_completed: true,
            };
            cut.push((start, end));
        });
        if let Some(pins) = pins {
            for (start, end) in cut {
                pins.remove(start, end);
            }
        }
    }

    /// The scenario read a corrupted event of `snapshot` for `orig`, with
    /// time label `label`.
    pub fn corrupted_event(&mut self, snapshot: SnapId, orig: DevT, label: u64) {
        let began = self.event_alloc_began.get(&label).copied().unwrap_or(label);
        self.corrupted
            .entry((snapshot, orig))
            .or_insert(CorruptedEvent { label, began });
    }

    /// An allocation at `site` by `task` begins to reclaim at `now` (the
    /// kernel's slow path; it sleeps before it returns).
    pub fn reclaim_began(&mut self, site: &str, task: u64, now: u64) {
        if site == EVENT_SITE {
            self.event_reclaims.retain(|(t, _)| *t != task);
            self.event_reclaims.push((task, now));
        }
    }

    /// An allocation at `site` by `task` returned memory at `now`.
    pub fn allocated(&mut self, site: &str, task: u64, now: u64) {
        if site != EVENT_SITE {
            return;
        }
        self.last_event_queued = Some(now);
        let Some(i) = self.event_reclaims.iter().position(|(t, _)| *t == task) else {
            return;
        };
        let (_, began) = self.event_reclaims.swap_remove(i);
        let latest = self.event_alloc_began.entry(now).or_insert(began);
        *latest = (*latest).max(began);
    }

    /// A WAIT_EVENT on `snapshot` ran from `from` to `to` (`error` if it
    /// failed).
    pub fn wait_event_result(
        &mut self,
        snapshot: SnapId,
        from: u64,
        to: u64,
        error: Option<Errno>,
    ) {
        let result = WaitEventResult { from, to, error };
        self.last_wait_event.insert(snapshot, result);
    }

    /// A user bio starts. Returns its op id.
    pub fn submit(&mut self, now: u64, bio: &Bio) -> u64 {
        self.next_op += 1;
        let id = self.next_op;
        match bio.op {
            BioOp::Write => {
                let write = SectorWrite {
                    id,
                    first: bio.sector,
                    written: Written::new(&bio.data),
                    submitted: now,
                    completed: None,
                    superseded: None,
                };
                // A range the write cuts keeps its history on both sides.
                let end = bio.sector.wrapping_add(bio.sectors);
                let record = |map: &mut History| {
                    map.fill(
                        bio.sector,
                        end,
                        |history| {
                            history.writes.push(write.clone());
                            history.last_submitted = Some(now);
                        },
                        |_, _| SectorHistory {
                            writes: vec![write.clone()],
                            last_submitted: Some(now),
                            ever_completed: false,
                        },
                    )
                };
                // The device's map is there but for its first write: found
                // with no `entry` and no out-of-line `or_default`.
                match self.history.get_mut(&bio.dev) {
                    Some(map) => record(map),
                    None => record(self.history.entry(bio.dev).or_default()),
                }
                self.writing.push(id, (bio.dev, bio.sector, bio.sectors));
            }
            BioOp::Read => self.reads.push(id, now),
            _ => {}
        }
        id
    }

    /// A user bio ended: record a write, or judge a read.
    pub fn complete(
        &mut self,
        now: u64,
        id: u64,
        bio: &Bio,
        result: &BioResult,
    ) -> Result<Judged, String> {
        match bio.op {
            BioOp::Write => {
                if let (Some(range), Ok(_)) = (self.writing.take(id), result) {
                    self.write_completed(now, id, range);
                }
                Ok(Judged::default())
            }
            BioOp::Read => {
                let submitted = self.reads.take(id).unwrap_or(now);
                self.judge_read(submitted, now, bio, result)
            }
            _ => Ok(Judged::default()),
        }
    }

    /// A write completed: it supersedes older ones, and what no judgement
    /// can need any more is forgotten.
    fn write_completed(&mut self, now: u64, id: u64, (dev, sector, sectors): (DevT, u64, u64)) {
        let horizon = self.horizon(now);
        let windows = self.windows.get(&dev).unwrap_or(&NO_WINDOWS);
        let Some(map) = self.history.get_mut(&dev) else {
            return;
        };
        let end = sector.wrapping_add(sectors);
        if sector >= end {
            return;
        }
        let mut everywhere = true;
        let one_range = map.update(sector, end, |history| {
            everywhere &= history.completed_then_pruned(id, now, horizon, windows);
        });
        // Pruning may have left neighbours with the same history. Where
        // every range of the write still holds it (its own completion
        // never prunes it), none can join a range outside the write, which
        // never held it: only the edges inside the write need a look, and
        // one range has none.
        if everywhere {
            if !one_range {
                map.join_inside(sector, end);
            }
        } else {
            map.join_around(sector, end);
        }
    }

    fn hold(&mut self, start: u64) {
        *self.holds.entry(start).or_default() += 1;
    }

    fn release(&mut self, start: u64) {
        if let Some(n) = self.holds.get_mut(&start) {
            *n -= 1;
            if *n == 0 {
                self.holds.remove(&start);
            }
        }
    }

    /// Writes the oracle still keeps (what its memory grows with).
    pub fn writes_kept(&self) -> usize {
        self.history
            .values()
            .flat_map(|map| map.iter())
            .map(|(_, _, h)| h.writes.len())
            .sum()
    }

    /// No judgement from now on asks about a time before this, other than
    /// the fixed TAKE windows: reads in flight started at or after it,
    /// and so did every TAKE still in progress.
    fn horizon(&self, now: u64) -> u64 {
        let oldest_read = self.reads.values().min();
        [oldest_read, self.holds.keys().next().copied()]
            .into_iter()
            .flatten()
            .fold(now, u64::min)
    }

    fn judge_read(
        &mut self,
        from: u64,
        to: u64,
        bio: &Bio,
        result: &BioResult,
    ) -> Result<Judged, String> {
        if self.images.contains_key(&bio.dev) {
            return self.judge_image_read(from, to, bio, result);
        }
        let (Ok(data), true) = (result, self.devices.contains_key(&bio.dev)) else {
            return Ok(Judged::default());
        };
        let mut judged = Judged::default();
        let read = Read {
            dev: bio.dev,
            orig: None,
            from,
            to,
            first: bio.sector,
            data,
        };
        self.judge_sectors(&read, &mut judged.sectors)?;
        self.original_sectors_checked += judged.sectors;
        self.original_reads_checked += u64::from(judged.sectors > 0);
        Ok(judged)
    }

    /// Judge every sector of a read, stretch by stretch: where the read's
    /// history, the original's (for an image) and the pins stay the same,
    /// what is allowed is worked out once and each sector compared with
    /// it. `counted` grows by each sector compared, the failing one too.
    /// A wrong value that a device fault explains is noted and passes.
    fn judge_sectors(&mut self, read: &Read, counted: &mut u64) -> Result<(), String> {
        let end = read.first + read.data.len();
        let judged = self.judge_stretches(read, end, counted);
        let unjoined = std::mem::take(&mut self.pins_unjoined);
        if judged.is_err() {
            // A failing read leaves its pins as they are, unjoined (as it
            // always did): from then on every read joins around itself,
            // so that the ranges stay what they were before the flag.
            self.pins_stay_unjoined |= unjoined;
            return judged;
        }
        if unjoined || self.pins_stay_unjoined {
            if let Some(pins) = self.pins.get_mut(&read.dev) {
                pins.join_around(read.first, end);
            }
        }
        Ok(())
    }

    /// [`Self::judge_sectors`]' walk over [read.first, end), stretch by
    /// stretch, up to the first wrong value no device fault explains.
    fn judge_stretches(&mut self, read: &Read, end: u64, counted: &mut u64) -> Result<(), String> {
        let mut sector = read.first;
        while sector < end {
            if read.orig.is_none() {
                // The engine writes the storage ranges: not judged.
                let (stop, storage) = self.storage_piece(read.dev, sector, end);
                if storage {
                    sector = stop;
                    continue;
                }
                let stretch = self.judge_stretch(read, sector, stop);
                sector = self.apply(read, sector, stretch, counted)?;
            } else {
                let stretch = self.judge_stretch(read, sector, end);
                sector = self.apply(read, sector, stretch, counted)?;
            }
        }
        Ok(())
    }

    /// Compare the sectors from `sector` on, up to `limit` or the end of
    /// the stretch where everything the judgement reads is the same, or
    /// the first wrong one.
    fn judge_stretch(&self, read: &Read, sector: u64, limit: u64) -> Stretch {
        let (mut stop, own) = piece(self.history.get(&read.dev), sector, limit);
        let orig = read.orig.map(|(orig, take)| {
            let (end, history) = piece(self.history.get(&orig), sector, stop);
            stop = end;
            (history, take)
        });
        let (end, pin) = piece(self.pins.get(&read.dev), sector, stop);
        stop = end;
        let writes = writes_of(own);
        let allowed = Allowed {
            own: (writes, Rule::new(writes, read.from, read.to)),
            orig: orig.map(|(history, (take_start, take_end))| {
                let writes = writes_of(history);
                (writes, Rule::new(writes, take_start, take_end))
            }),
            initial: self.initial(read.orig.map_or(read.dev, |(orig, _)| orig)),
        };
        // A pin holds until a write submitted after the read that set it.
        let newer = |since: u64| {
            own.and_then(|(_, h)| h.last_submitted)
                .is_some_and(|last| last > since)
        };
        let held = pin.filter(|(_, pin)| !newer(pin.since));
        // A read unordered with the pinning one, across a write, neither
        // obeys nor moves the pin: reads that begin later still must.
        let excused = held.is_some_and(|(_, pin)| pin.excused(read.from, writes));
        let kept = held.filter(|_| !excused);
        let quiet = !writes.iter().any(|w| w.in_flight(read.from, read.to));
        let landing = Landing::new(&allowed, kept);
        let (failure, moved) = self.first_wrong(read, sector, stop, &allowed, kept, landing);
        // A late landing moved the pin: what this read saw replaces it.
        let fresh = !excused && (kept.is_none() || moved);
        Stretch {
            stop,
            failure,
            stale_pin: pin.is_some() && fresh,
            pin: quiet && fresh,
            last_write: allowed.own.1.latest_start.unwrap_or(0),
        }
    }

    /// The first sector of [sector, stop) whose value is wrong, and the
    /// message that says why; and whether a sector before it differed
    /// from its pin as a late landing allows (the pin then moves).
    fn first_wrong(
        &self,
        read: &Read,
        sector: u64,
        stop: u64,
        allowed: &Allowed,
        kept: Option<(u64, &Pin)>,
        landing: Option<Landing>,
    ) -> (Option<(u64, String)>, bool) {
        let base = read.first;
        let sources = allowed.sources();
        let mut moved = false;
        for (at, run) in read.data.runs_in(sector - base, stop - base) {
            for i in 0..run.len {
                let (sector, got) = (base + at + i, run.at(i));
                if let Some((start, pin)) = kept {
                    let stamp = pin.seen.get(sector - start);
                    if got != stamp && landing.is_some_and(|l| l.allows(sector, got)) {
                        moved = true;
                    } else if got != stamp {
                        let message =
                            pin_broken(read.dev, sector, (got, stamp), pin.since, landing);
                        return (Some((sector, message)), moved);
                    }
                }
                if !sources.contains(sector, got) {
                    let message = self.wrong_value(read, sector, got, allowed);
                    return (Some((sector, message)), moved);
                }
            }
        }
        (None, moved)
    }

    fn wrong_value(&self, read: &Read, sector: u64, got: Stamp, allowed: &Allowed) -> String {
        let values = show(&allowed.list(sector));
        match read.orig {
            None => format!(
                "original {} sector {sector}: read {got:#x}, expected one of {values}",
                read.dev
            ),
            Some((orig, _)) => format!(
                "image {} of {orig} sector {sector}: read {got:#x}, expected one of {values} \
                 (content at TAKE plus the image's own writes)",
                read.dev
            ),
        }
    }

    /// Record what a stretch's judgement found: the pins it drops and
    /// sets, and a wrong value unless a device fault explains it. Returns
    /// where the judgement goes on.
    fn apply(
        &mut self,
        read: &Read,
        sector: u64,
        stretch: Stretch,
        counted: &mut u64,
    ) -> Result<u64, String> {
        // Sectors [sector, passed) read an allowed value.
        let passed = stretch.failure.as_ref().map_or(stretch.stop, |(k, _)| *k);
        let judged_to = stretch.failure.as_ref().map_or(passed, |_| passed + 1);
        *counted += judged_to - sector;
        if stretch.stale_pin || (stretch.pin && passed > sector) {
            self.pins_unjoined = true;
            let pins = self.pins.entry(read.dev).or_default();
            if stretch.stale_pin {
                pins.remove(sector, judged_to);
            }
            if stretch.pin && passed > sector {
                let seen = read.data.slice(sector - read.first, passed - read.first);
                let (since, ended) = (read.from, read.to);
                // No pin is left there: the stretch had none, or it was
                // just dropped.
                pins.insert_gap(sector, passed, Pin { since, ended, seen });
            }
        }
        let Some((wrong, message)) = stretch.failure else {
            return Ok(stretch.stop);
        };
        let (orig, since) = match read.orig {
            None => (read.dev, stretch.last_write),
            Some((orig, (take_start, _))) => (orig, take_start.max(stretch.last_write)),
        };
        if !self.damage_explains(read.dev, orig, wrong, since, (read.from, read.to)) {
            return Err(message);
        }
        Ok(wrong + 1)
    }

    fn judge_image_read(
        &mut self,
        from: u64,
        to: u64,
        bio: &Bio,
        result: &BioResult,
    ) -> Result<Judged, String> {
        let image = &self.images[&bio.dev];
        if !image.bound {
            return Ok(Judged::default());
        }
        let orig = image.orig;
        let inside = bio
            .sector
            .checked_add(bio.sectors)
            .is_some_and(|end| end <= image.capacity);
        let excused_now = !inside || image.going_since.is_some_and(|t| t <= to);
        let data = match result {
            Ok(data) => data,
            // Past the end the block layer refuses the bio, and an image
            // being removed may fail its IO: neither is the engine's fault.
            Err(_) if excused_now => {
                self.image_errors_excused += 1;
                return Ok(Judged {
                    sectors: 0,
                    failure_judged: true,
                });
            }
            Err(errno) => {
                let (snapshot, take_start, chunk_bound) =
                    (image.snapshot, image.take_start, image.chunk_bound);
                self.failed_image_reads.push(FailedRead {
                    image: bio.dev,
                    orig,
                    snapshot,
                    take_start,
                    chunk_bound,
                    sector: bio.sector,
                    sectors: bio.sectors,
                    from,
                    to,
                    errno: *errno,
                });
                return Ok(Judged {
                    sectors: 0,
                    failure_judged: true,
                });
            }
        };
        let read = Read {
            dev: bio.dev,
            orig: Some((orig, (image.take_start, image.take_end))),
            from,
            to,
            first: bio.sector,
            data,
        };
        self.image_reads_checked += 1;
        let mut judged = Judged::default();
        let verdict = self.judge_sectors(&read, &mut judged.sectors);
        self.sectors_checked += judged.sectors;
        verdict.map(|()| judged)
    }

    /// A wrong value of `orig`'s `sector` (read through `dev`, the
    /// original itself or its image) that a silent data fault in
    /// [since, read end] explains: noted as undetected corruption caused by
    /// a device fault, not failed (`device_faults.rs`).
    fn damage_explains(
        &mut self,
        dev: DevT,
        orig: DevT,
        sector: u64,
        since: u64,
        (from, to): (u64, u64),
    ) -> bool {
        let Some(cause) = self.device_damage.explains(orig, sector, since, to) else {
            return false;
        };
        self.device_damage.note(dev, orig, sector, from, cause);
        true
    }

    /// When the last user write to the sector that completed by `by` was
    /// submitted (0 if none): a device fault before it was overwritten.
    fn last_write_start(&self, dev: DevT, sector: u64, by: u64) -> u64 {
        Rule::new(self.sector_writes(dev, sector), by, by)
            .latest_start
            .unwrap_or(0)
    }

    fn initial(&self, dev: DevT) -> Initial {
        match self.devices.get(&dev) {
            Some((index, Fill::Pattern)) => Initial::Pattern(*index),
            _ => Initial::Zero,
        }
    }

    /// The writes to one sector a judgement can still need, in
    /// submission order.
    fn sector_writes(&self, dev: DevT, sector: u64) -> &[SectorWrite] {
        self.history
            .get(&dev)
            .and_then(|map| map.at(sector))
            .map_or(&[], |(_, _, h)| h.writes.as_slice())
    }

    /// What the original may read for `sector` in the window [from, to],
    /// sorted, each value once.
    fn original_values(&self, dev: DevT, sector: u64, from: u64, to: u64) -> Vec<Stamp> {
        let writes = self.sector_writes(dev, sector);
        let allowed = Allowed {
            own: (writes, Rule::new(writes, from, to)),
            orig: None,
            initial: self.initial(dev),
        };
        allowed.list(sector)
    }

    /// What the image may read for `sector` in the window [from, to]: its
    /// own last write if any, else the original as of the TAKE window.
    fn image_values(&self, image: DevT, sector: u64, from: u64, to: u64) -> Vec<Stamp> {
        let record = &self.images[&image];
        let writes = self.sector_writes(image, sector);
        let orig = self.sector_writes(record.orig, sector);
        let allowed = Allowed {
            own: (writes, Rule::new(writes, from, to)),
            orig: Some((orig, Rule::new(orig, record.take_start, record.take_end))),
            initial: self.initial(record.orig),
        };
        allowed.list(sector)
    }

    /// Failed image reads that nothing explains (judged at the end, since
    /// the corrupted event may be read after the IO). The rule is in
    /// ARCHITECTURE.md, "How the oracle decides".
    pub fn unexplained_image_errors(&mut self, faults: &InjectedFaults) -> Vec<String> {
        let mut unexplained = Vec::new();
        for read in &self.failed_image_reads {
            match self.excuse(read, faults) {
                Some(_) => self.image_errors_excused += 1,
                None => unexplained.push(format!(
                    "image {} of {} failed a read of sectors {}..{} with {} at {} ns; no corrupted \
                     event came before it and no injected fault explains it",
                    read.image,
                    read.orig,
                    read.sector,
                    read.sector + read.sectors,
                    read.errno,
                    read.to
                )),
            }
        }
        unexplained
    }

    /// Why a failed image read is allowed, if it is.
    fn excuse(&self, read: &FailedRead, faults: &InjectedFaults) -> Option<&'static str> {
        if self
            .corrupted
            .get(&(read.snapshot, read.orig))
            .is_some_and(|event| event.began <= read.to)
        {
            return Some("the snapshot was reported corrupted");
        }
        if faults.removed_at(read.orig).is_some_and(|t| t <= read.to) {
            return Some("the original was removed");
        }
        let storage_removed = self.storage_of.get(&read.snapshot).into_iter().flatten();
        if storage_removed
            .into_iter()
            .any(|dev| faults.removed_at(*dev).is_some_and(|t| t <= read.to))
        {
            return Some("a storage device of the snapshot was removed");
        }
        if let Some((_, new_end)) = faults.shrunk_by(read.orig, read.to) {
            // Chunks past the new end cannot be loaded from the original.
            let first_lost = new_end - new_end % read.chunk_bound;
            if read.sector + read.sectors > first_lost {
                return Some("the original shrank below these sectors");
            }
        }
        if read.errno == Errno::ENOMEM && faults.alloc_failed(None, read.from, read.to) {
            return Some("an allocation failed during the read (a failed load, B-DA-5)");
        }
        if read.errno == Errno::EIO && self.load_failed(read, faults) {
            return Some("a read the image load needed failed");
        }
        // The corruption happened, but its event was lost with its memory.
        if faults
            .first_alloc_failure(EVENT_SITE, read.take_start, read.to)
            .is_some()
        {
            return Some("the corrupted event's allocation failed");
        }
        if self.events_lost_unread(read) {
            return Some(EVENTS_LOST);
        }
        let corrupted_at = self.first_corrupting_fault(read, faults)?;
        (!self.queue_seen_empty_since(read.snapshot, corrupted_at)).then_some(UNREAD_EVENT)
    }

    /// Snapshots with a failed image read that only their event queue can
    /// judge: no rule excuses it but a corrupted event the user has not
    /// read (rules 1 and 7). A run without a teardown never drains their
    /// queues (DESTROY does), so rule 7 would excuse every such read, even
    /// of an engine that never queued the event; the runner reads these
    /// queues before the judgement, as a user would.
    pub fn snapshots_judged_by_events(&self, faults: &InjectedFaults) -> BTreeSet<SnapId> {
        self.failed_image_reads
            .iter()
            .filter(|read| matches!(self.excuse(read, faults), None | Some(UNREAD_EVENT)))
            .map(|read| read.snapshot)
            .collect()
    }

    /// The first fault after the read's snapshot was taken, by the read's
    /// end, that corrupts that snapshot (spec 5.7): a failed write to its
    /// storage, a failed read of its original (a copy-on-write load), or a
    /// failed allocation on the copy-on-write path.
    fn first_corrupting_fault(&self, read: &FailedRead, faults: &InjectedFaults) -> Option<u64> {
        let storage = self.storage_of.get(&read.snapshot);
        let on_storage = |dev: &DevT| storage.is_some_and(|s| s.contains(dev));
        faults
            .all()
            .iter()
            .filter(|f| f.at >= read.take_start && f.at <= read.to)
            .find(|f| match &f.kind {
                FaultKind::BioError { dev, op, .. } if op.is_write() => on_storage(dev),
                FaultKind::BioError { dev, .. } | FaultKind::TransientReadError { dev, .. } => {
                    *dev == read.orig
                }
                FaultKind::Alloc { site, .. } => CORRUPTING_ALLOC_SITES.contains(&site.as_str()),
                _ => false,
            })
            .map(|f| f.at)
    }

    /// Whether the user saw the snapshot's event queue empty after `since`:
    /// its last WAIT_EVENT began then or later and found no event (ENOENT),
    /// and no event was queued after that WAIT_EVENT began. Otherwise a
    /// corrupted event may be in the queue, unread: the last WAIT_EVENT
    /// came before the fault, returned an event (more may wait behind it),
    /// failed (WAIT_EVENT allocates before it dequeues, and the sim may
    /// fail that allocation), or an event was still being allocated (v2
    /// queues it only after its GFP_NOIO allocation, which may sleep).
    fn queue_seen_empty_since(&self, snapshot: SnapId, since: u64) -> bool {
        self.last_wait_event.get(&snapshot).is_some_and(|w| {
            w.from >= since
                && w.error == Some(Errno::ENOENT)
                && self.last_event_queued.is_none_or(|t| t < w.from)
        })
    }

    /// The read's snapshot went with its module after the read, and no
    /// WAIT_EVENT between the two found its queue empty: a corrupted event
    /// queued before the read may have been lost unread, so no verdict on
    /// it is sound. (A read failed by an engine that never queues the
    /// event escapes here; nothing the user could see would tell.)
    fn events_lost_unread(&self, read: &FailedRead) -> bool {
        self.events_lost
            .get(&read.snapshot)
            .is_some_and(|&lost| lost >= read.to)
            && !self.queue_seen_empty_since(read.snapshot, read.to)
    }

    /// An injected read error in the read's window, on a device the image
    /// loads from: the original (within one chunk of the read's sectors)
    /// or a storage device of the image's snapshot.
    fn load_failed(&self, read: &FailedRead, faults: &InjectedFaults) -> bool {
        let chunk = read.chunk_bound;
        let lo = read.sector - read.sector % chunk;
        let hi = (read.sector + read.sectors)
            .div_ceil(chunk)
            .saturating_mul(chunk);
        let on_orig = faults.all().iter().any(|f| {
            f.at >= read.from
                && f.at <= read.to
                && f.kind.read_error().is_some_and(|(dev, sector, sectors)| {
                    dev == read.orig && sector < hi && sector + sectors > lo
                })
        });
        let mut storage: Vec<DevT> = self
            .storage_of
            .get(&read.snapshot)
            .map(|devs| devs.iter().copied().collect())
            .unwrap_or_default();
        storage.push(read.image);
        on_orig || faults.bio_failed(&storage, false, read.from, read.to)
    }

    /// What the original should hold now, for the final media check.
    pub fn expected_now(&self, dev: DevT, sector: u64, now: u64) -> BTreeSet<Stamp> {
        self.original_values(dev, sector, now, now)
            .into_iter()
            .collect()
    }

    /// Sectors of `dev` that a user write completed on.
    pub fn written_sectors(&self, dev: DevT) -> Vec<u64> {
        self.history
            .get(&dev)
            .into_iter()
            .flat_map(|map| map.iter())
            .filter(|(_, _, history)| history.ever_completed)
            .flat_map(|(start, end, _)| start..end)
            .collect()
    }

    /// What an image may hold at `sector` now (the backup compare): the
    /// original's content at TAKE plus the image's own writes.
    /// Why a wrong value at `image`'s `sector`, seen at `now` by a checker
    /// that judges the image itself (fs_consistency, CompareBackup), is a
    /// device fault's doing: a damage since its TAKE (or the last user
    /// write to the sector) that held a copy of the original's sector.
    pub fn image_damage_cause(&self, image: DevT, sector: u64, now: u64) -> Option<String> {
        let record = self.images.get(&image)?;
        let since = record
            .take_start
            .max(self.last_write_start(image, sector, now));
        self.device_damage.explains(record.orig, sector, since, now)
    }

    pub fn image_allowed(&self, image: DevT, sector: u64, now: u64) -> BTreeSet<Stamp> {
        if !self.images.contains_key(&image) {
            return BTreeSet::new();
        }
        self.image_values(image, sector, now, now)
            .into_iter()
            .collect()
    }
}

/// One read being judged.
struct Read<'a> {
    dev: DevT,
    /// For an image: its original and the TAKE window.
    orig: Option<(DevT, (u64, u64))>,
    from: u64,
    to: u64,
    first: u64,
    data: &'a Stamps,
}

/// What the judgement of one stretch of a read found.
struct Stretch {
    /// Where the stretch ends (exclusive).
    stop: u64,
    /// The first wrong sector and why.
    failure: Option<(u64, String)>,
    /// A pin on the stretch no longer holds (a newer write came).
    stale_pin: bool,
    /// No write in flight and no pin kept: what passed is pinned.
    pin: bool,
    /// When the last write completed by the read's start was submitted.
    last_write: u64,
}

/// The one change the repeatable-read rule allows an image: the data of
/// a write to its original that was in flight during the TAKE window and
/// landed after the pinned read began (or has not landed yet). v2's TAKE
/// waits only for the bios inside the filter: `tracker_submit_bio_cb`
/// drops `tracker_submit_lock` before `submit_bio_noacct_nocheck` sends
/// the bio on, and `snapshot_take_trackers` relies on `freeze_bdev` to
/// drain the rest. A write that passed the filter before the switch is
/// not copied; under a filesystem that ignores freeze (or from a raw
/// writer) it may reach an un-copied chunk after an image read of it.
#[derive(Clone, Copy)]
struct Landing<'a> {
    /// The original's writes and the TAKE window's rule.
    writes: &'a [SectorWrite],
    take: Rule,
    /// When the read that set the pin began.
    since: u64,
}

impl<'a> Landing<'a> {
    /// Only where the image reads its original (no own write completed
    /// by the read's start) and a pin holds.
    fn new(allowed: &Allowed<'a>, kept: Option<(u64, &Pin)>) -> Option<Landing<'a>> {
        let (writes, take) = allowed.orig?;
        let since = kept?.1.since;
        let reads_orig = allowed.own.1.latest_start.is_none();
        reads_orig.then_some(Landing {
            writes,
            take,
            since,
        })
    }

    /// The writes that may still have landed after the pinned read.
    fn late(self) -> impl Iterator<Item = &'a SectorWrite> {
        self.writes.iter().filter(move |w| {
            w.in_flight(self.take.from, self.take.to) && w.completed.is_none_or(|c| c > self.since)
        })
    }

    fn allows(self, sector: u64, got: Stamp) -> bool {
        self.late().any(|w| w.stamp(sector) == got)
    }
}

/// The repeatable-read rule's message: a read saw `got` where the pin set
/// by the read at `since` holds `seen`. Where a late landing could have
/// excused a change, it says to what.
fn pin_broken(
    dev: DevT,
    sector: u64,
    (got, seen): (Stamp, Stamp),
    since: u64,
    landing: Option<Landing>,
) -> String {
    let mut message = format!(
        "{dev} sector {sector}: read {got:#x}, but a read at {since} ns saw {seen:#x} and no \
         write to it came since"
    );
    let mut late: Vec<Stamp> = landing
        .into_iter()
        .flat_map(Landing::late)
        .map(|w| w.stamp(sector))
        .collect();
    if !late.is_empty() {
        late.sort_unstable();
        late.dedup();
        message.push_str(&format!(
            "; a write to the original in flight at the TAKE, landing after that read began, \
             may change it only to {}",
            show(&late)
        ));
    }
    message
}

/// From `sector`, the stretch below `limit` that one range (or one gap)
/// of `map` covers: its end, and the range's start and value.
fn writes_of(history: Option<(u64, &SectorHistory)>) -> &[SectorWrite] {
    history.map_or(&[], |(_, h)| h.writes.as_slice())
}

fn piece<V: Piece, S: Store<(u64, V)>>(
    map: Option<&Extents<V, S>>,
    sector: u64,
    limit: u64,
) -> (u64, Option<(u64, &V)>) {
    map.map_or((limit, None), |map| map.piece(sector, limit))
}

/// Up to four allowed values (sorted), for a message.
fn show(values: &[Stamp]) -> String {
    let list: Vec<String> = values.iter().take(4).map(|v| format!("{v:#x}")).collect();
    format!("{{{}}}", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::injected::FaultKind;
    use blksnap_core::kernel::Stamps;

    const ORIG: DevT = DevT(8 << 20);
    const IMAGE: DevT = DevT(252 << 20);
    const STORE: DevT = DevT(8 << 20 | 1);
    const OTHER: DevT = DevT(8 << 20 | 2);
    const SNAP: SnapId = [5; 16];

    fn oracle() -> Oracle {
        let mut o = Oracle::default();
        o.add_device(ORIG, 0, Fill::Zero);
        o
    }

    fn write(o: &mut Oracle, dev: DevT, sector: u64, stamp: Stamp, at: u64, done: u64) {
        let bio = Bio::write(dev, sector, vec![stamp]);
        let id = o.submit(at, &bio);
        o.complete(done, id, &bio, &Ok(Stamps::new())).unwrap();
    }

    fn read(
        o: &mut Oracle,
        dev: DevT,
        sector: u64,
        got: Stamp,
        at: u64,
        done: u64,
    ) -> Result<Judged, String> {
        let bio = Bio::read(dev, sector, 1);
        let id = o.submit(at, &bio);
        o.complete(done, id, &bio, &Ok(Stamps::from_slice(&[got])))
    }

    fn taken_at(o: &mut Oracle, start: u64, end: u64) {
        o.image_added(IMAGE, 100);
        o.bind_image(IMAGE, ORIG, (start, end), SNAP);
        o.set_chunk_bound(IMAGE, 8);
    }

    fn read_err(o: &mut Oracle, sector: u64, errno: Errno, at: u64, done: u64) {
        let bio = Bio::read(IMAGE, sector, 1);
        let id = o.submit(at, &bio);
        let judged = o.complete(done, id, &bio, &Err(errno)).unwrap();
        assert_eq!(judged.sectors, 0);
    }

    fn bio_fault(dev: DevT, op: BioOp, sector: u64) -> FaultKind {
        FaultKind::BioError {
            dev,
            op,
            sector,
            sectors: 1,
        }
    }

    #[test]
    fn image_keeps_data_of_take_and_fails_on_new_data() {
        let mut o = oracle();
        write(&mut o, ORIG, 5, 11, 0, 10);
        taken_at(&mut o, 20, 30);
        write(&mut o, ORIG, 5, 22, 40, 50);
        assert!(read(&mut o, IMAGE, 5, 11, 60, 70).is_ok());
        let err = read(&mut o, IMAGE, 5, 22, 80, 90).unwrap_err();
        assert!(err.contains("sector 5"), "{err}");
        assert!(read(&mut o, ORIG, 5, 22, 60, 70).is_ok());
        assert!(read(&mut o, ORIG, 5, 11, 60, 70).is_err());
    }

    #[test]
    fn write_in_flight_during_take_allows_both_values() {
        for (seen, other) in [(7, 0), (0, 7)] {
            let mut o = oracle();
            write(&mut o, ORIG, 1, 7, 15, 35);
            taken_at(&mut o, 20, 30);
            assert!(read(&mut o, IMAGE, 1, 9, 60, 70).is_err());
            assert!(read(&mut o, IMAGE, 1, seen, 60, 70).is_ok());
            // The image is fixed: once a read saw one, the other is wrong.
            assert!(read(&mut o, IMAGE, 1, other, 80, 90).is_err());
        }
    }

    /// f13b: a write that passed the filter before the switch lands on
    /// an un-copied chunk after an image read of it; the image then reads
    /// its data, once, and stays there.
    #[test]
    fn a_write_in_flight_at_take_may_land_after_an_image_read() {
        let mut o = oracle();
        let w = Bio::write(ORIG, 1, vec![7]);
        let id = o.submit(15, &w);
        taken_at(&mut o, 20, 30);
        assert!(read(&mut o, IMAGE, 1, 0, 32, 34).is_ok());
        o.complete(40, id, &w, &Ok(Stamps::new())).unwrap();
        assert!(read(&mut o, IMAGE, 1, 7, 50, 60).is_ok());
        assert!(read(&mut o, IMAGE, 1, 7, 62, 64).is_ok());
        // Back to the old data: the write landed before the read that
        // moved the pin, so nothing explains that.
        let err = read(&mut o, IMAGE, 1, 0, 70, 80).unwrap_err();
        assert!(err.contains("no write to it came since"), "{err}");
        assert!(!err.contains("may change"), "{err}");
    }

    /// The exception is only for a write in flight at the TAKE, to that
    /// sector, landing after the pinned read began, and only to its data.
    #[test]
    fn a_late_landing_excuses_only_its_own_sector_time_and_data() {
        // Landed before the pinned read began: the image was fixed.
        let mut o = oracle();
        write(&mut o, ORIG, 1, 7, 15, 31);
        taken_at(&mut o, 20, 30);
        assert!(read(&mut o, IMAGE, 1, 0, 32, 34).is_ok());
        assert!(read(&mut o, IMAGE, 1, 7, 50, 60).is_err());
        // In flight at the TAKE and landing late, but another sector's.
        let mut o = oracle();
        overlap_before(&mut o, 1);
        let w = Bio::write(ORIG, 2, vec![7]);
        let id = o.submit(15, &w);
        taken_at(&mut o, 20, 30);
        assert!(read(&mut o, IMAGE, 1, 10, 32, 34).is_ok());
        o.complete(40, id, &w, &Ok(Stamps::new())).unwrap();
        let err = read(&mut o, IMAGE, 1, 20, 50, 60).unwrap_err();
        assert!(!err.contains("may change"), "{err}");
        // A write to that sector in flight between the reads, not at the
        // TAKE (it starts the COW; the image keeps what it was).
        let mut o = oracle();
        overlap_before(&mut o, 1);
        taken_at(&mut o, 20, 30);
        assert!(read(&mut o, IMAGE, 1, 10, 32, 34).is_ok());
        write(&mut o, ORIG, 1, 30, 36, 40);
        assert!(read(&mut o, IMAGE, 1, 20, 50, 60).is_err());
        // Even one whose data is an allowed value (20, as the other
        // write before the TAKE): it was not in flight at the TAKE.
        let mut o = oracle();
        overlap_before(&mut o, 1);
        taken_at(&mut o, 20, 30);
        assert!(read(&mut o, IMAGE, 1, 10, 32, 34).is_ok());
        write(&mut o, ORIG, 1, 20, 36, 40);
        assert!(read(&mut o, IMAGE, 1, 20, 50, 60).is_err());
        // In flight at the TAKE, landing late, but the read saw other data.
        let mut o = oracle();
        overlap_before(&mut o, 1);
        let w = Bio::write(ORIG, 1, vec![7]);
        let id = o.submit(15, &w);
        taken_at(&mut o, 20, 30);
        assert!(read(&mut o, IMAGE, 1, 10, 32, 34).is_ok());
        o.complete(40, id, &w, &Ok(Stamps::new())).unwrap();
        let err = read(&mut o, IMAGE, 1, 20, 50, 60).unwrap_err();
        assert!(err.contains("may change it only to {0x7}"), "{err}");
    }

    /// Two writes of `sector` (10, then 20) that overlapped and completed
    /// before the TAKE: either may be last, a read pins one.
    fn overlap_before(o: &mut Oracle, sector: u64) {
        let a = Bio::write(ORIG, sector, vec![10]);
        let b = Bio::write(ORIG, sector, vec![20]);
        let ia = o.submit(1, &a);
        let ib = o.submit(2, &b);
        o.complete(4, ib, &b, &Ok(Stamps::new())).unwrap();
        o.complete(5, ia, &a, &Ok(Stamps::new())).unwrap();
    }

    #[test]
    fn image_writes_are_seen_by_image_reads_only() {
        let mut o = oracle();
        taken_at(&mut o, 20, 30);
        write(&mut o, IMAGE, 3, 99, 40, 50);
        assert!(read(&mut o, IMAGE, 3, 99, 60, 70).is_ok());
        assert!(read(&mut o, IMAGE, 3, 0, 60, 70).is_err());
        assert!(read(&mut o, ORIG, 3, 0, 60, 70).is_ok());
        assert!(read(&mut o, ORIG, 3, 99, 60, 70).is_err());
    }

    #[test]
    fn image_errors_need_a_corrupted_event_before_them() {
        let mut o = oracle();
        taken_at(&mut o, 20, 30);
        read_err(&mut o, 0, Errno::EIO, 40, 50);
        let none = InjectedFaults::default();
        assert_eq!(o.unexplained_image_errors(&none).len(), 1);
        o.corrupted_event(SNAP, ORIG, 45);
        assert!(o.unexplained_image_errors(&none).is_empty());
    }

    #[test]
    fn a_corrupted_event_excuses_reads_from_when_its_allocation_began() {
        // A read fails at 40..50; task 7 begins an allocation at `site` at
        // `began`, `task` gets it at 60, and an event of `snapshot` stamped
        // 60 is read. How many failed reads are unexplained?
        let unexplained = |site: &str, began: u64, task: u64, snapshot: SnapId| {
            let mut o = oracle();
            taken_at(&mut o, 20, 30);
            read_err(&mut o, 0, Errno::EIO, 40, 50);
            o.reclaim_began(site, 7, began);
            o.allocated(site, task, 60);
            o.corrupted_event(snapshot, ORIG, 60);
            o.unexplained_image_errors(&InjectedFaults::default()).len()
        };
        // The flag was raised at 45, before the read failed.
        assert_eq!(unexplained("event", 45, 7, SNAP), 0);
        // Reclaim began after the read ended.
        assert_eq!(unexplained("event", 52, 7, SNAP), 1);
        // Another task's allocation, another site, another snapshot's event.
        assert_eq!(unexplained("event", 45, 8, SNAP), 1);
        assert_eq!(unexplained("snapshot", 45, 7, SNAP), 1);
        assert_eq!(unexplained("event", 45, 7, [6; 16]), 1);
    }

    /// A read failed at 40..50 with no fault to blame (an overflow): only
    /// the snapshot's events could excuse it. When its module went (a
    /// power cut at `lost`) before anyone read them, no verdict is sound;
    /// but a WAIT_EVENT that found the queue empty after the read, or a
    /// cut before the read ended, leaves the read unexplained.
    #[test]
    fn events_lost_with_the_module_excuse_only_reads_before_the_loss() {
        let judge = |waits: &[(u64, u64, Option<Errno>)], lost: Option<(SnapId, u64)>| {
            let mut o = oracle();
            taken_at(&mut o, 20, 30);
            read_err(&mut o, 0, Errno::EIO, 40, 50);
            for &(from, to, error) in waits {
                o.wait_event_result(SNAP, from, to, error);
            }
            if let Some((snapshot, at)) = lost {
                o.events_lost([snapshot], at);
            }
            o.unexplained_image_errors(&InjectedFaults::default()).len()
        };
        let enoent = Some(Errno::ENOENT);
        assert_eq!(judge(&[], None), 1, "no loss: judged as ever");
        assert_eq!(judge(&[], Some((SNAP, 60))), 0);
        assert_eq!(judge(&[], Some((SNAP, 50))), 0);
        assert_eq!(judge(&[(31, 35, enoent)], Some((SNAP, 60))), 0);
        assert_eq!(judge(&[(52, 55, None)], Some((SNAP, 60))), 0);
        assert_eq!(judge(&[(52, 55, enoent)], Some((SNAP, 60))), 1);
        assert_eq!(judge(&[], Some((SNAP, 45))), 1);
        assert_eq!(judge(&[], Some(([6; 16], 60))), 1);
    }

    #[test]
    fn an_unread_event_excuses_reads_only_after_a_corrupting_fault() {
        let lost = |site: &str| FaultKind::Alloc {
            site: site.into(),
            gfp: blksnap_core::kernel::Gfp::Noio,
        };
        let store_write = bio_fault(STORE, BioOp::Write, 3);
        // The read failed at 40..50 after a TAKE at 20..30. `waits`: the
        // WAIT_EVENTs (from, to, error); `queued`: when an event was
        // allocated. Is the read excused?
        let judge = |cause: &FaultKind,
                     at: u64,
                     waits: &[(u64, u64, Option<Errno>)],
                     queued: Option<u64>| {
            let mut o = oracle();
            o.add_device(STORE, 1, Fill::Zero);
            o.storage_appended(SNAP, STORE, 0, 64);
            taken_at(&mut o, 20, 30);
            read_err(&mut o, 0, Errno::EIO, 40, 50);
            for &(from, to, error) in waits {
                o.wait_event_result(SNAP, from, to, error);
            }
            if let Some(t) = queued {
                o.allocated("event", 3, t);
            }
            let mut f = InjectedFaults::default();
            f.record(at, cause.clone());
            o.unexplained_image_errors(&f).is_empty()
        };
        let (enoent, enomem) = (Some(Errno::ENOENT), Some(Errno::ENOMEM));
        // Never looked, looked before the fault, got an event (more may
        // wait), or the last look failed: the event may be unread.
        assert!(judge(&store_write, 35, &[], None));
        assert!(judge(&store_write, 35, &[(31, 32, enoent)], None));
        assert!(judge(
            &store_write,
            35,
            &[(100, 110, enoent), (120, 130, None)],
            None
        ));
        assert!(judge(
            &store_write,
            35,
            &[(100, 110, enoent), (120, 130, enomem)],
            None
        ));
        // Seen empty after the fault: the event was due and never came.
        assert!(!judge(
            &store_write,
            35,
            &[(120, 130, enomem), (100, 110, enoent)],
            None
        ));
        assert!(!judge(&store_write, 35, &[(35, 40, enoent)], Some(34)));
        // ... unless an event was queued after that look began.
        assert!(judge(&store_write, 35, &[(100, 110, enoent)], Some(100)));
        assert!(judge(&store_write, 35, &[(100, 110, enoent)], Some(140)));
        // Faults that corrupt the snapshot, and faults that do not.
        let unread: &[(u64, u64, Option<Errno>)] = &[];
        assert!(judge(&bio_fault(ORIG, BioOp::Read, 60), 35, unread, None));
        assert!(judge(&lost("diff_buffer"), 35, unread, None));
        assert!(judge(&lost("diff_region"), 45, unread, None));
        assert!(judge(&lost("diff_io"), 50, unread, None));
        assert!(!judge(&store_write, 15, unread, None));
        assert!(!judge(&store_write, 55, unread, None));
        assert!(!judge(&bio_fault(STORE, BioOp::Read, 3), 35, unread, None));
        assert!(!judge(&bio_fault(OTHER, BioOp::Write, 3), 35, unread, None));
        assert!(!judge(&bio_fault(OTHER, BioOp::Read, 3), 35, unread, None));
        assert!(!judge(&lost("snapshot"), 35, unread, None));
        assert!(!judge(&lost("wait_event"), 35, unread, None));
    }

    /// The snapshots the runner drains at the end of a run with no
    /// teardown: those with a failed read that only an event can judge
    /// (rule 7, or nothing yet), not those a read event or a fault excuses.
    /// After the drain saw the queue empty, rule 7 no longer excuses.
    #[test]
    fn only_reads_an_event_can_judge_ask_for_their_queue() {
        let store_write = bio_fault(STORE, BioOp::Write, 3);
        let setup = || {
            let mut o = oracle();
            o.add_device(STORE, 1, Fill::Zero);
            o.storage_appended(SNAP, STORE, 0, 64);
            taken_at(&mut o, 20, 30);
            read_err(&mut o, 0, Errno::EIO, 40, 50);
            o
        };
        let faults = |at: u64, kind: &FaultKind| {
            let mut f = InjectedFaults::default();
            f.record(at, kind.clone());
            f
        };
        let asked = |o: &Oracle, f: &InjectedFaults| o.snapshots_judged_by_events(f);
        let want: BTreeSet<SnapId> = [SNAP].into();
        // Rule 7 excuses it: the queue was never read after the fault.
        let corrupting = faults(35, &store_write);
        let mut o = setup();
        assert_eq!(asked(&o, &corrupting), want);
        // The drain found the queue empty: the read is unexplained.
        o.wait_event_result(SNAP, 60, 61, Some(Errno::ENOENT));
        assert!(
            asked(&o, &corrupting) == want && !o.unexplained_image_errors(&corrupting).is_empty()
        );
        // Nothing excuses it (no fault): only an unread event can.
        let none = InjectedFaults::default();
        assert_eq!(asked(&setup(), &none), want);
        // The drain read the corrupted event: excused, and not asked again.
        let mut o = setup();
        o.corrupted_event(SNAP, ORIG, 45);
        assert!(asked(&o, &none).is_empty() && o.unexplained_image_errors(&none).is_empty());
        // A fault that explains the read by itself needs no queue.
        let read_error = faults(45, &bio_fault(ORIG, BioOp::Read, 0));
        assert!(asked(&setup(), &read_error).is_empty());
    }

    #[test]
    fn an_injected_eio_excuses_only_its_device_range_and_time() {
        let mut o = oracle();
        o.add_device(STORE, 1, Fill::Zero);
        o.storage_appended(SNAP, STORE, 0, 64);
        taken_at(&mut o, 20, 30);
        read_err(&mut o, 16, Errno::EIO, 40, 50);
        // The teardown's WAIT_EVENT found the queue empty.
        o.wait_event_result(SNAP, 100, 110, Some(Errno::ENOENT));
        let judge = |o: &mut Oracle, kind: FaultKind, at: u64| {
            let mut f = InjectedFaults::default();
            f.record(at, kind);
            o.unexplained_image_errors(&f).is_empty()
        };
        // Read errors during the read on what the load reads: excused.
        assert!(judge(&mut o, bio_fault(ORIG, BioOp::Read, 17), 45));
        assert!(judge(&mut o, bio_fault(STORE, BioOp::Read, 3), 45));
        // Another device, other sectors, another time: not excused.
        assert!(!judge(&mut o, bio_fault(OTHER, BioOp::Read, 16), 45));
        assert!(!judge(&mut o, bio_fault(ORIG, BioOp::Read, 40), 45));
        assert!(!judge(&mut o, bio_fault(ORIG, BioOp::Read, 16), 39));
        assert!(!judge(&mut o, bio_fault(ORIG, BioOp::Read, 16), 51));
        // A failed store corrupts the snapshot: the event is required,
        // and the queue held none.
        assert!(!judge(&mut o, bio_fault(STORE, BioOp::Write, 3), 35));
        // ENOMEM is not explained by an IO error, nor EIO by an allocation.
        let alloc = FaultKind::Alloc {
            site: "diff_buffer".into(),
            gfp: blksnap_core::kernel::Gfp::Noio,
        };
        assert!(!judge(&mut o, alloc.clone(), 45));
        let mut o = oracle();
        taken_at(&mut o, 20, 30);
        read_err(&mut o, 16, Errno::ENOMEM, 40, 50);
        assert!(judge(&mut o, alloc.clone(), 45));
        assert!(!judge(&mut o, alloc, 55));
    }

    #[test]
    fn removal_shrink_and_a_lost_event_excuse_only_their_image() {
        let mut o = oracle();
        taken_at(&mut o, 20, 30);
        read_err(&mut o, 90, Errno::EIO, 40, 50);
        let judge = |o: &mut Oracle, kind: FaultKind, at: u64| {
            let mut f = InjectedFaults::default();
            f.record(at, kind);
            o.unexplained_image_errors(&f).is_empty()
        };
        assert!(judge(&mut o, FaultKind::Removal { dev: ORIG }, 45));
        assert!(!judge(&mut o, FaultKind::Removal { dev: ORIG }, 55));
        assert!(!judge(&mut o, FaultKind::Removal { dev: OTHER }, 45));
        let shrink = |new| FaultKind::Resize {
            dev: ORIG,
            old: 100,
            new,
        };
        assert!(judge(&mut o, shrink(50), 45));
        // Sector 90 is still inside the device after this shrink.
        assert!(!judge(&mut o, shrink(96), 45));
        let lost = |site: &str| FaultKind::Alloc {
            site: site.into(),
            gfp: blksnap_core::kernel::Gfp::Noio,
        };
        assert!(judge(&mut o, lost("event"), 35));
        assert!(!judge(&mut o, lost("event"), 10));
        assert!(!judge(&mut o, lost("event"), 55));
    }

    #[test]
    fn concurrent_writers_may_land_in_either_order_then_reads_agree() {
        let mut o = oracle();
        let overlap = |o: &mut Oracle| {
            let a = Bio::write(ORIG, 2, vec![10]);
            let b = Bio::write(ORIG, 2, vec![20]);
            let ia = o.submit(100, &a);
            let ib = o.submit(110, &b);
            o.complete(130, ib, &b, &Ok(Stamps::new())).unwrap();
            o.complete(140, ia, &a, &Ok(Stamps::new())).unwrap();
        };
        overlap(&mut o);
        // Either may have been applied last: the first read pins one.
        assert!(read(&mut o, ORIG, 2, 20, 150, 160).is_ok());
        assert!(read(&mut o, ORIG, 2, 20, 170, 180).is_ok());
        let err = read(&mut o, ORIG, 2, 10, 190, 200).unwrap_err();
        assert!(err.contains("no write to it came since"), "{err}");
        assert!(read(&mut o, ORIG, 2, 0, 210, 220).is_err());
        // A write submitted after both completed supersedes them.
        write(&mut o, ORIG, 2, 30, 230, 240);
        assert!(read(&mut o, ORIG, 2, 20, 250, 260).is_err());
        assert!(read(&mut o, ORIG, 2, 30, 250, 260).is_ok());
        // The same on an image.
        taken_at(&mut o, 300, 310);
        let a = Bio::write(IMAGE, 4, vec![40]);
        let b = Bio::write(IMAGE, 4, vec![50]);
        let ia = o.submit(400, &a);
        let ib = o.submit(405, &b);
        o.complete(420, ia, &a, &Ok(Stamps::new())).unwrap();
        o.complete(430, ib, &b, &Ok(Stamps::new())).unwrap();
        assert!(read(&mut o, IMAGE, 4, 40, 440, 450).is_ok());
        assert!(read(&mut o, IMAGE, 4, 50, 460, 470).is_err());
        assert!(read(&mut o, IMAGE, 4, 0, 460, 470).is_err());
    }

    /// Finding f18 (fuzz, session 13): an image read that began before an
    /// image write, and ended after a later read had pinned that write's
    /// data, saw the old data. Nothing orders the two reads, so the older
    /// one may have read the sector before the write landed.
    #[test]
    fn a_read_begun_before_a_write_may_end_after_a_pin_of_its_data() {
        let mut o = oracle();
        let slow = Bio::read(ORIG, 2, 1);
        let id = o.submit(50, &slow);
        write(&mut o, ORIG, 2, 7, 100, 200);
        assert!(read(&mut o, ORIG, 2, 7, 250, 300).is_ok());
        let old = Ok(Stamps::from_slice(&[0]));
        assert!(o.complete(400, id, &slow, &old).is_ok());
        // The pin still holds for reads that begin after it was set...
        let err = read(&mut o, ORIG, 2, 0, 410, 420).unwrap_err();
        assert!(err.contains("no write to it came since"), "{err}");
        // ...and for one that overlaps the pinning read with no write in
        // flight since it began: both read the same settled sector.
        write(&mut o, ORIG, 3, 5, 500, 510);
        let late = Bio::read(ORIG, 3, 1);
        let id = o.submit(515, &late);
        assert!(read(&mut o, ORIG, 3, 5, 520, 530).is_ok());
        let err = o.complete(540, id, &late, &old).unwrap_err();
        assert!(
            err.contains("expected one of") || err.contains("no write"),
            "{err}"
        );
        // Two unordered reads, each across the write, that disagree.
        let (a, b) = (Bio::read(ORIG, 4, 1), Bio::read(ORIG, 4, 1));
        let (ia, ib) = (o.submit(600, &a), o.submit(605, &b));
        write(&mut o, ORIG, 4, 9, 610, 620);
        assert!(read(&mut o, ORIG, 4, 9, 630, 640).is_ok());
        assert!(o.complete(650, ia, &a, &old).is_ok());
        assert!(o
            .complete(660, ib, &b, &Ok(Stamps::from_slice(&[9])))
            .is_ok());
        assert!(read(&mut o, ORIG, 4, 0, 670, 680).is_err());
    }

    #[test]
    fn history_stays_bounded_and_take_windows_keep_what_they_need() {
        let mut o = oracle();
        write(&mut o, ORIG, 5, 11, 0, 10);
        taken_at(&mut o, 20, 30);
        for i in 0..10_000 {
            write(&mut o, ORIG, 5, 100 + i, 40 + 20 * i, 50 + 20 * i);
        }
        // The value at TAKE, the one that followed it, the last one.
        assert!(o.writes_kept() <= 3, "{} writes kept", o.writes_kept());
        assert!(read(&mut o, IMAGE, 5, 11, 300_000, 300_010).is_ok());
        assert!(read(&mut o, ORIG, 5, 100 + 9_999, 300_000, 300_010).is_ok());
        assert!(read(&mut o, ORIG, 5, 100 + 9_998, 300_020, 300_030).is_err());
    }

    #[test]
    fn a_take_in_progress_holds_the_history_of_its_start() {
        for held in [true, false] {
            let mut o = oracle();
            write(&mut o, ORIG, 5, 11, 0, 10);
            if held {
                o.hold(20);
            }
            // Superseded during the TAKE, before its images are bound.
            write(&mut o, ORIG, 5, 22, 22, 25);
            taken_at(&mut o, 20, 30);
            o.release(20);
            // A write in flight during the TAKE: either value is allowed.
            let verdict = read(&mut o, IMAGE, 5, 11, 60, 70);
            assert_eq!(verdict.is_ok(), held, "held {held}: {verdict:?}");
        }
    }

    #[test]
    fn a_read_in_flight_keeps_the_values_it_may_see() {
        let mut o = oracle();
        write(&mut o, ORIG, 2, 10, 0, 10);
        let slow = Bio::read(ORIG, 2, 1);
        let id = o.submit(15, &slow);
        write(&mut o, ORIG, 2, 20, 20, 30);
        write(&mut o, ORIG, 2, 30, 40, 50);
        // Overlapping writes and the value at its start are all allowed.
        assert!(o
            .complete(60, id, &slow, &Ok(Stamps::from_slice(&[10])))
            .is_ok());
        write(&mut o, ORIG, 2, 40, 70, 80);
        assert!(o.writes_kept() <= 2, "{} writes kept", o.writes_kept());
    }

    #[test]
    fn a_read_judges_its_sectors_and_a_failed_one_judges_none() {
        let mut o = oracle();
        taken_at(&mut o, 20, 30);
        let bio = Bio::read(IMAGE, 0, 4);
        let id = o.submit(40, &bio);
        let judged = o
            .complete(50, id, &bio, &Ok(Stamps::from_slice(&[0; 4])))
            .unwrap();
        assert_eq!(judged.sectors, 4);
        let id = o.submit(60, &bio);
        let judged = o.complete(70, id, &bio, &Err(Errno::EIO)).unwrap();
        assert_eq!(judged.sectors, 0);
        assert!(judged.failure_judged);
    }

    fn write_many(o: &mut Oracle, sector: u64, stamps: &[Stamp], at: u64, done: u64) {
        let bio = Bio::write(ORIG, sector, stamps.to_vec());
        let id = o.submit(at, &bio);
        o.complete(done, id, &bio, &Ok(Stamps::new())).unwrap();
    }

    fn read_many(o: &mut Oracle, sector: u64, got: &[Stamp], at: u64) -> Result<Judged, String> {
        let bio = Bio::read(ORIG, sector, got.len() as u64);
        let id = o.submit(at, &bio);
        o.complete(at + 5, id, &bio, &Ok(Stamps::from_slice(got)))
    }

    fn ranges(o: &Oracle) -> usize {
        o.history.get(&ORIG).map_or(0, |map| map.len())
    }

    #[test]
    fn a_write_straddling_two_earlier_writes_cuts_them_at_its_edges() {
        let mut o = oracle();
        write_many(&mut o, 0, &[1, 2, 3, 4], 0, 10);
        write_many(&mut o, 4, &[5, 6, 7, 8], 20, 30);
        // Over the second half of the first and the first half of the second.
        let slow = Bio::write(ORIG, 2, vec![30, 40, 50, 60]);
        let id = o.submit(40, &slow);
        // In flight: both values of sectors 2..6 are allowed, and nothing
        // else; sectors 0, 1, 6, 7 keep their one value.
        assert!(read_many(&mut o, 2, &[3, 40, 5, 60], 42).is_ok());
        let err = read_many(&mut o, 0, &[1, 9, 3, 4, 5, 6, 7, 8], 44).unwrap_err();
        assert!(
            err.contains("sector 1: read 0x9, expected one of {0x2}"),
            "{err}"
        );
        let err = read_many(&mut o, 6, &[60, 8], 46).unwrap_err();
        assert!(
            err.contains("sector 6: read 0x3c, expected one of {0x7}"),
            "{err}"
        );
        o.complete(50, id, &slow, &Ok(Stamps::new())).unwrap();
        // Cut at 2 and 6; 2..4 and 4..6 hold the same history once the
        // older writes are pruned, and are joined.
        assert_eq!(ranges(&o), 3);
        let err = read_many(&mut o, 0, &[1, 2, 30, 40, 5, 60, 7, 8], 60).unwrap_err();
        assert!(
            err.contains("original 8:0 sector 4: read 0x5, expected one of {0x32}"),
            "{err}"
        );
        assert!(read_many(&mut o, 0, &[1, 2, 30, 40, 50, 60, 7, 8], 70).is_ok());
        assert_eq!(o.written_sectors(ORIG), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_read_straddling_pinned_and_unpinned_ranges_is_held_where_pinned() {
        let mut o = oracle();
        // Two writes of sectors 0..4 overlapping in time: either may be last.
        let a = Bio::write(ORIG, 0, vec![10, 11, 12, 13]);
        let b = Bio::write(ORIG, 0, vec![20, 21, 22, 23]);
        let ia = o.submit(100, &a);
        let ib = o.submit(110, &b);
        o.complete(130, ib, &b, &Ok(Stamps::new())).unwrap();
        o.complete(140, ia, &a, &Ok(Stamps::new())).unwrap();
        // A read of sectors 0..2 sees the second write there: pinned.
        assert!(read_many(&mut o, 0, &[20, 21], 150).is_ok());
        // Across the pinned and the unpinned sectors: the pinned ones must
        // show the pinned value; the others may still show either.
        let err = read_many(&mut o, 0, &[20, 11, 12, 13], 160).unwrap_err();
        assert!(
            err.contains("8:0 sector 1: read 0xb, but a read at 150 ns saw 0x15"),
            "{err}"
        );
        let judged = read_many(&mut o, 0, &[20, 21, 12, 13], 170).unwrap();
        assert_eq!(judged.sectors, 4);
        // That read pinned sectors 2..4 to the first write's values.
        let err = read_many(&mut o, 1, &[21, 12, 23], 180).unwrap_err();
        assert!(
            err.contains("8:0 sector 3: read 0x17, but a read at 170 ns saw 0xd"),
            "{err}"
        );
        assert!(read_many(&mut o, 0, &[20, 21, 12, 13], 190).is_ok());
        // A new write to sector 1 only frees sector 1.
        write_many(&mut o, 1, &[31], 200, 210);
        assert!(read_many(&mut o, 0, &[20, 31, 12, 13], 220).is_ok());
        assert!(read_many(&mut o, 0, &[10, 31, 12, 13], 230).is_err());
    }

    #[test]
    fn pruning_forgets_only_the_superseded_part_of_a_range() {
        let mut o = oracle();
        write_many(&mut o, 0, &[1, 2, 3, 4, 5, 6, 7, 8], 0, 10);
        // Overwrite sectors 0..4 many times: the first write stays needed
        // for 4..8 only.
        for i in 0..1000 {
            let at = 20 + 20 * i;
            write_many(&mut o, 0, &[100 + i; 4], at, at + 10);
        }
        assert_eq!(ranges(&o), 2);
        assert_eq!(o.writes_kept(), 2, "one write on each side");
        assert!(read_many(&mut o, 0, &[1099, 1099, 1099, 1099, 5, 6, 7, 8], 30_000).is_ok());
        assert!(read_many(&mut o, 3, &[4], 30_010).is_err());
        assert!(read_many(&mut o, 0, &[1098], 30_020).is_err());
        // Superseded on the other side too, by one write over both: the
        // two ranges hold the same history again and are joined.
        write_many(&mut o, 0, &[9; 8], 40_000, 40_010);
        assert_eq!(ranges(&o), 1);
        assert_eq!(o.writes_kept(), 1);
        assert!(read_many(&mut o, 0, &[9; 8], 40_020).is_ok());
    }

    /// Every sector's history in the oracle's ranges, none where unwritten.
    fn per_sector(o: &Oracle, sectors: u64) -> Vec<Option<SectorHistory>> {
        let map = o.history.get(&ORIG).expect("written");
        (0..sectors)
            .map(|s| map.at(s).map(|(_, _, h)| h.clone()))
            .collect()
    }

    fn same_history(a: &Option<SectorHistory>, b: &Option<SectorHistory>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => a.clone().join(b),
            (a, b) => a.is_none() && b.is_none(),
        }
    }

    /// A random run of overlapping writes (completed in any order, some
    /// aligned so a write meets exactly one range) and reads that hold
    /// the horizon back: after every completion each sector's history is
    /// what a naive per-sector model holds, and the ranges are maximal
    /// (no two touching ranges with the same history).
    #[test]
    fn ranges_match_a_per_sector_model_and_stay_maximal() {
        const SECTORS: u64 = 64;
        let mut joined = 0;
        for seed in 0..8 {
            let mut rng = crate::rng::SimRng::new(seed);
            let mut o = oracle();
            let mut model: Vec<Option<SectorHistory>> = vec![None; SECTORS as usize];
            let mut pending: Vec<(Bio, u64)> = Vec::new();
            for t in 1..3000u64 {
                if pending.len() < 5 && rng.chance(1, 2) {
                    let (sector, len) = match rng.chance(1, 2) {
                        true => (4 * rng.below(SECTORS / 4), 4),
                        false => (rng.below(SECTORS - 8), 1 + rng.below(8)),
                    };
                    let bio = match rng.below(5) {
                        0 => Bio::read(ORIG, sector, len),
                        _ => Bio::write(
                            ORIG,
                            sector,
                            (0..len).map(|i| t * 16 + i).collect::<Vec<Stamp>>(),
                        ),
                    };
                    let id = o.submit(t, &bio);
                    if bio.op == BioOp::Write {
                        let write = o.history[&ORIG]
                            .at(sector)
                            .unwrap_or_else(|| {
                                panic!(
                                    "{sector} {len} {:?}",
                                    o.history[&ORIG]
                                        .iter()
                                        .map(|(a, b, _)| (a, b))
                                        .collect::<Vec<_>>()
                                )
                            })
                            .2;
                        let write = write.writes.last().expect("pushed").clone();
                        for s in sector..sector + len {
                            let h = model[s as usize].get_or_insert_with(Default::default);
                            h.writes.push(write.clone());
                            h.last_submitted = Some(t);
                        }
                    }
                    pending.push((bio, id));
                    continue;
                }
                if pending.is_empty() {
                    continue;
                }
                let (bio, id) = pending.swap_remove(rng.below(pending.len() as u64) as usize);
                if bio.op == BioOp::Read {
                    let data = Stamps::from_slice(&vec![0; bio.sectors as usize]);
                    let _ = o.complete(t, id, &bio, &Ok(data));
                    continue;
                }
                let horizon = o.horizon(t);
                let ranges_before = ranges(&o);
                o.complete(t, id, &bio, &Ok(Stamps::new())).unwrap();
                for s in bio.sector..bio.sector + bio.sectors {
                    let h = model[s as usize].as_mut().expect("submitted");
                    h.completed(id, t);
                    h.prune(horizon, &Windows::default());
                }
                let held = per_sector(&o, SECTORS);
                for s in 0..SECTORS as usize {
                    assert!(
                        same_history(&held[s], &model[s]),
                        "seed {seed} t {t} sector {s}"
                    );
                }
                let map = &o.history[&ORIG];
                for ((_, end, a), (next, _, b)) in map.iter().zip(map.iter().skip(1)) {
                    assert!(end <= next, "seed {seed} t {t}: ranges overlap at {next}");
                    let maximal = end != next || !a.clone().join(b);
                    assert!(
                        maximal,
                        "seed {seed} t {t}: ranges meet at {next} with one history"
                    );
                }
                joined += usize::from(ranges(&o) < ranges_before);
            }
        }
        // The joins the ranges' maximality depends on did happen.
        assert!(joined > 100, "{joined}");
    }

    /// `Windows::need` (with its `latest_end` shortcut) says what a scan of
    /// every window held says, as windows come and go.
    #[test]
    fn windows_need_agrees_with_a_scan_of_every_window() {
        let mut rejected = 0;
        for seed in 0..20 {
            let mut rng = crate::rng::SimRng::new(seed);
            let mut windows = Windows::default();
            let mut held: Vec<(u64, u64)> = Vec::new();
            for _ in 0..300 {
                if held.is_empty() || rng.chance(1, 2) {
                    let from = rng.below(1000);
                    let window = (from, from + rng.below(100));
                    windows.add(window.0, window.1);
                    held.push(window);
                } else {
                    let (from, to) = held.swap_remove(rng.below(held.len() as u64) as usize);
                    windows.remove(from, to);
                }
                for _ in 0..10 {
                    let submitted = rng.below(1200);
                    let superseded = submitted + 1 + rng.below(200);
                    let scan = held
                        .iter()
                        .any(|&(from, to)| from < superseded && to >= submitted);
                    assert_eq!(
                        windows.need(submitted, superseded),
                        scan,
                        "seed {seed}: [{submitted}, {superseded}) with {held:?}"
                    );
                    rejected += u64::from(windows.latest_end < submitted);
                }
            }
        }
        assert!(rejected > 1000, "the shortcut ran {rejected} times");
    }

    /// What `Allowed::sources` lets a stretch compare is what `any` finds,
    /// sector by sector, for histories with writes completed, superseded
    /// and in flight, with and without an original behind.
    #[test]
    fn sources_allow_what_any_allows() {
        let mut rng = crate::rng::SimRng::new(7);
        fn writes_of(rng: &mut crate::rng::SimRng) -> Vec<SectorWrite> {
            (0..rng.below(4))
                .map(|i| {
                    let submitted = rng.below(100);
                    SectorWrite {
                        id: i,
                        first: rng.below(4),
                        written: Written::Run(Run {
                            first: 1 + rng.below(6),
                            step: rng.below(2),
                            len: 8,
                        }),
                        submitted,
                        completed: rng.chance(3, 4).then(|| submitted + rng.below(50)),
                        superseded: None,
                    }
                })
                .collect()
        }
        let mut compared = 0;
        for _ in 0..2000 {
            let own = writes_of(&mut rng);
            let orig = writes_of(&mut rng);
            let (from, to) = (rng.below(120), rng.below(120));
            let allowed = Allowed {
                own: (&own, Rule::new(&own, from, to)),
                orig: rng
                    .chance(1, 2)
                    .then(|| (orig.as_slice(), Rule::new(&orig, to / 2, to))),
                initial: Initial::Pattern(1),
            };
            let sources = allowed.sources();
            for sector in 4..8 {
                for got in (0..12).chain([Initial::Pattern(1).stamp(sector)]) {
                    let any = allowed.any(sector, |v| v == got);
                    assert_eq!(sources.contains(sector, got), any, "sector {sector} {got}");
                    compared += u64::from(any);
                }
            }
        }
        assert!(compared > 1000, "{compared} allowed values met");
    }

    /// Bios in flight are found by id whatever order they end in, and
    /// only once.
    #[test]
    fn in_flight_ops_end_in_any_order() {
        let mut ops = InFlight::default();
        for id in [3, 5, 8, 9] {
            ops.push(id, id * 10);
        }
        assert_eq!(ops.take(8), Some(80));
        assert_eq!(ops.take(8), None);
        assert_eq!(ops.take(4), None);
        assert_eq!(ops.take(3), Some(30));
        ops.push(12, 120);
        assert_eq!(ops.values().collect::<Vec<_>>(), [50, 90, 120]);
        assert_eq!(
            (ops.take(12), ops.take(5), ops.take(9)),
            (Some(120), Some(50), Some(90))
        );
        assert_eq!(ops.values().count(), 0);
    }
}
