//! The durability checker: what the originals may hold after power loss,
//! what a FLUSH promises, and that a completed write can be read back.
//!
//! Black box. It learns user writes, FUA, FLUSH (and REQ_PREFLUSH) and
//! their completions at the user boundary (`block.rs`), the engine's own
//! writes at the device boundary (`Kernel::submit_bio`), and reads the
//! device's durable media (the media under the volatile cache) only at a
//! FLUSH completion and at power loss. It never looks at the engine.
//!
//! The rules, per sector `s` of a device:
//! - A write W is *durable* once it completed and either it was FUA, or a
//!   FLUSH submitted after W completed has completed.
//! - W *supersedes* a write V when W was submitted after V completed.
//! - Allowed durable values: every write not superseded by a durable
//!   write, and the content before any write (the fill, or the content
//!   found after the last power loss) while no write is durable. Nothing
//!   else: never data nobody wrote.
//! - Flush rule: when a FLUSH completes, every write that completed before
//!   it was submitted must be durable: the media holds an allowed value,
//!   with those writes counted as durable.
//! - Power-loss rule: after the cut, the media holds an allowed value.
//! - Read rule: with no injected fault on the device since the last power
//!   loss, a read returns the last completed write (any of those that
//!   overlapped), or a write in flight during the read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::{Index, RangeBounds};

use blksnap_core::kernel::{Bio, BioOp, BioResult, DevT, Run, Stamp, Stamps};

use super::sector_map::SectorMap;
use crate::device::{pattern_stamp, Fill};

/// One write to a device, as seen at the user boundary (user writes) or
/// the device boundary (the engine's writes, never completed here). With
/// no FLUSH every write stays in the log for the whole run, so it is kept
/// in one cache line (64 bytes, was 88: fewer fresh lines stored per
/// write, issue 10).
#[derive(Clone, Debug)]
struct Write {
    sector: u64,
    data: Data,
    submitted: u64,
    /// When it completed; `IN_FLIGHT` until then, and for ever if it
    /// failed or is the engine's (see `completed`).
    done: u64,
    dev: DevT,
    fua: bool,
    user: bool,
}

/// `Write::done` of a write that has not completed.
const IN_FLIGHT: u64 = u64::MAX;

impl Write {
    fn stamp(&self, sector: u64) -> Stamp {
        self.data.get(sector - self.sector)
    }

    fn end(&self) -> u64 {
        self.sector + self.data.len()
    }

    /// When the write completed, if it did.
    fn completed(&self) -> Option<u64> {
        (self.done != IN_FLIGHT).then_some(self.done)
    }
}

/// A write's data: nearly always one run (a user write, a chunk store of
/// a never-written range) held in place; other data on the heap.
#[derive(Clone, Debug)]
enum Data {
    Run(Run),
    Stamps(Box<Stamps>),
}

impl Data {
    fn new(data: Stamps) -> Data {
        match data.single_run() {
            Some(run) => Data::Run(run),
            None => Data::Stamps(Box::new(data)),
        }
    }

    /// `new` of a copy of `data`, copied only if it is not one run.
    fn of(data: &Stamps) -> Data {
        match data.single_run() {
            Some(run) => Data::Run(run),
            None => Data::Stamps(Box::new(data.clone())),
        }
    }

    fn get(&self, i: u64) -> Stamp {
        match self {
            Data::Run(run) => run.at(i),
            Data::Stamps(data) => data.get(i),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Data::Run(run) => run.len,
            Data::Stamps(data) => data.len(),
        }
    }

    /// Append `more` after the data's last sector. A run that `more`
    /// continues (the next stamps of the same run) grows in place.
    fn append(&mut self, more: &Stamps) {
        match self {
            Data::Run(run) => match more.single_run() {
                Some(next)
                    if next.first == run.at(run.len)
                        && (next.step == run.step || next.len == 1) =>
                {
                    run.len += next.len;
                }
                _ => {
                    let mut data = Stamps::run(run.first, run.step, run.len);
                    data.append(more);
                    *self = Data::Stamps(Box::new(data));
                }
            },
            Data::Stamps(data) => data.append(more),
        }
    }
}

/// Writes by id. Ids are handed out in increasing order and writes leave
/// only at power loss or when folded, so slots from the oldest live id
/// find a write in O(1) where a map would search. A removed write leaves
/// a hole until every older one is gone too (another device's writes, or
/// the newest durable write of a sector, may still be live). The slots
/// are in chunks allocated once at their full size: a log that grows
/// (with no FLUSH nothing is folded) never copies what it holds, where a
/// deque doubled and copied it (about 150 instructions a write, issue 10).
#[derive(Clone, Default)]
struct WriteLog {
    /// The id of the first slot of the first chunk.
    base: u64,
    /// The oldest id that may be live: every slot before it is empty.
    first: u64,
    chunks: VecDeque<Vec<Option<Write>>>,
}

/// Slots per chunk of the log.
const CHUNK: usize = 256;

impl WriteLog {
    /// The id the next write must have.
    fn next(&self) -> u64 {
        match self.chunks.back() {
            None => self.first,
            Some(last) => self.base + ((self.chunks.len() - 1) * CHUNK + last.len()) as u64,
        }
    }

    fn insert(&mut self, id: u64, write: Write) {
        if self.chunks.is_empty() {
            self.base = id;
            self.first = id;
        }
        assert_eq!(id, self.next(), "ids in order");
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push(Some(write)),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(Some(write));
                self.chunks.push_back(chunk);
            }
        }
    }

    fn slot(&self, id: u64) -> Option<&Option<Write>> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    fn slot_mut(&mut self, id: u64) -> Option<&mut Option<Write>> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    fn get(&self, id: &u64) -> Option<&Write> {
        self.slot(*id)?.as_ref()
    }

    fn get_mut(&mut self, id: &u64) -> Option<&mut Write> {
        self.slot_mut(*id)?.as_mut()
    }

    /// Empties the slot of `id`, then drops the empty slots (and chunks)
    /// before the oldest live write.
    fn remove(&mut self, id: &u64) {
        if let Some(slot) = self.slot_mut(*id) {
            *slot = None;
        }
        let next = self.next();
        while self.first < next && self.slot(self.first).is_some_and(|w| w.is_none()) {
            self.first += 1;
            if self.first - self.base == CHUNK as u64 {
                self.chunks.pop_front();
                self.base += CHUNK as u64;
            }
        }
        if self.first == next {
            self.chunks.clear();
            self.base = next;
        }
    }

    /// Writes held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.chunks.iter().flatten().flatten().count()
    }
}

impl Index<&u64> for WriteLog {
    type Output = Write;

    fn index(&self, id: &u64) -> &Write {
        self.get(id).expect("a live write")
    }
}

/// The most sectors joined engine writes cover (1 GiB): it bounds how far
/// back a sector's writes can start.
const MAX_JOINED: u64 = 1 << 21;

/// Room for the ids of a sector's later writes, made when it has one.
const IDS_ROOM: usize = 16;

/// The ids of the writes that start at one sector, oldest first. Most
/// sectors start one write: that one is held inline, so recording a write
/// allocates nothing (issue 10).
#[derive(Clone, Debug)]
struct Ids {
    first: u64,
    more: Vec<u64>,
}

impl Ids {
    fn iter(&self) -> impl Iterator<Item = &u64> {
        std::iter::once(&self.first).chain(&self.more)
    }

    /// Forgets `id`; false when no id is left.
    fn remove(&mut self, id: u64) -> bool {
        if self.first == id {
            if self.more.is_empty() {
                return false;
            }
            self.first = self.more.remove(0);
        } else {
            self.more.retain(|i| *i != id);
        }
        true
    }
}

/// One device's writes since its last power loss, by first sector, and the
/// longest of them: the writes over a sector start at most that far before
/// it. One entry per write, not one per sector it covers. Per device, so a
/// search compares sectors only; recording a write finds its sector in
/// O(1) (`SectorMap`, issue 10).
#[derive(Clone, Default)]
struct Starts {
    ids: SectorMap<Ids>,
    longest: u64,
}

impl Starts {
    fn add(&mut self, sector: u64, id: u64) {
        let mut fresh = false;
        let ids = self.ids.get_or_insert_with(sector, || {
            fresh = true;
            Ids {
                first: id,
                more: Vec::new(),
            }
        });
        if !fresh {
            if ids.more.capacity() == 0 {
                // A sector written twice is often written again: room for
                // 16 at once, not growth through 4 and 8 (two copies).
                ids.more.reserve_exact(IDS_ROOM);
            }
            ids.more.push(id);
        }
    }

    /// Forgets write `id`, which starts at `sector`.
    fn forget(&mut self, sector: u64, id: u64) {
        if let Some(ids) = self.ids.get_mut(sector) {
            if !ids.remove(id) {
                self.ids.remove(sector);
            }
        }
    }

    /// The ids of the writes that start in `range`, in sector then id order.
    fn in_range(&self, range: impl RangeBounds<u64>) -> impl Iterator<Item = (u64, &u64)> {
        self.ids
            .range(range)
            .flat_map(|(s, ids)| ids.iter().map(move |id| (s, id)))
    }
}

/// The user FLUSHes (and REQ_PREFLUSHes) of a device that completed since
/// its last power loss, sorted by completion time, with the latest
/// submission among each prefix: "did a FLUSH submitted at or after `done`
/// complete by `t`?" is then one binary search (the prefix completed by
/// `t`) and one look at its latest submission, where a scan of every
/// FLUSH made runs with many FLUSHes quadratic (issue 10).
#[derive(Clone, Default)]
struct Flushes {
    /// Completion times, non-decreasing.
    ends: Vec<u64>,
    /// `latest[i]`: the latest submission among the FLUSHes `0..=i`.
    latest: Vec<u64>,
}

impl Flushes {
    /// A FLUSH submitted at `sub` completed at `end`. The simulator's
    /// clock only moves forward, so this appends; an out-of-order `end`
    /// still lands in its place (and the maxima after it are redone).
    fn push(&mut self, sub: u64, end: u64) {
        let at = self.ends.partition_point(|e| *e <= end);
        self.ends.insert(at, end);
        self.latest.insert(at, sub);
        for i in at..self.latest.len() {
            let before = if i == 0 { 0 } else { self.latest[i - 1] };
            let own = if i == at { sub } else { self.latest[i] };
            self.latest[i] = own.max(before);
        }
    }

    /// Whether a FLUSH submitted at or after `done` completed by `t`.
    fn any_between(&self, done: u64, t: u64) -> bool {
        let completed = self.ends.partition_point(|e| *e <= t);
        completed > 0 && self.latest[completed - 1] >= done
    }
}

/// A user bio the checker follows: its id (writes) and submission time.
#[derive(Clone, Copy, Debug)]
pub struct Token {
    id: Option<u64>,
    submitted: u64,
    /// A read of this followed device: in flight until it ends.
    read_of: Option<DevT>,
}

/// Writes a device may hold before the first fold (then twice what the
/// last fold kept): folding scans the device's writes, so it runs once per
/// doubling and costs O(1) per write, amortized.
const FOLD_MIN: u64 = 64;

#[derive(Default)]
pub struct Durability {
    fills: BTreeMap<DevT, (u32, Fill)>,
    writes: WriteLog,
    /// Writes since the last power loss, per device.
    starts: BTreeMap<DevT, Starts>,
    /// The last engine write per device (later ones may join it).
    last_engine: BTreeMap<DevT, u64>,
    flushes: BTreeMap<DevT, Flushes>,
    /// Completed user writes no FLUSH has judged yet, per device, in the
    /// order they completed (a FLUSH judges them in id order).
    unflushed: BTreeMap<DevT, Vec<u64>>,
    /// Content found after the last power loss, and when it happened.
    baseline: BTreeMap<(DevT, u64), Stamp>,
    epoch: BTreeMap<DevT, u64>,
    /// User reads in flight, by (device, submission time): a fold keeps
    /// what they may still be judged against.
    reading: BTreeMap<(DevT, u64), u32>,
    /// Writes held (all devices), and the count at which a FLUSH next
    /// folds its device (0: `FOLD_MIN`).
    held: u64,
    fold_at: u64,
    /// Never fold (the tests compare a folding checker with this one).
    keep_all: bool,
    next_id: u64,
    pub power_sectors_judged: u64,
    pub flush_sectors_judged: u64,
    pub read_sectors_judged: u64,
    pub flushes_judged: u64,
}

impl Durability {
    pub fn add_device(&mut self, dev: DevT, index: u32, fill: Fill) {
        self.fills.insert(dev, (index, fill));
    }

    fn base(&self, dev: DevT, sector: u64) -> Stamp {
        if let Some(stamp) = self.baseline.get(&(dev, sector)) {
            return *stamp;
        }
        match self.fills.get(&dev) {
            Some((index, Fill::Pattern)) => pattern_stamp(*index, sector),
            _ => 0,
        }
    }

    fn add_write(&mut self, write: Write) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let add = |starts: &mut Starts| {
            starts.add(write.sector, id);
            starts.longest = starts.longest.max(write.data.len());
        };
        // Found, nearly always: `entry` took the search and an out-of-line
        // `or_default` per write (issue 10).
        match self.starts.get_mut(&write.dev) {
            Some(starts) => add(starts),
            None => add(self.starts.entry(write.dev).or_default()),
        }
        self.held += 1;
        self.writes.insert(id, write);
        id
    }

    /// A user bio starts.
    pub fn submit(&mut self, now: u64, bio: &Bio) -> Token {
        let data = match bio.op {
            // A write's data is read in place, not cloned (`Data::of`).
            BioOp::Write => None,
            BioOp::Discard | BioOp::WriteZeroes => Some(Stamps::repeat(0, bio.sectors)),
            _ => Some(Stamps::new()),
        };
        let sectors = data.as_ref().map_or(bio.data.len(), Stamps::len);
        let id = (self.fills.contains_key(&bio.dev) && sectors > 0).then(|| {
            self.add_write(Write {
                dev: bio.dev,
                sector: bio.sector,
                data: data.map_or_else(|| Data::of(&bio.data), Data::new),
                submitted: now,
                done: IN_FLIGHT,
                fua: bio.flags.fua,
                user: true,
            })
        });
        let read_of = (bio.op == BioOp::Read && self.fills.contains_key(&bio.dev)).then(|| {
            *self.reading.entry((bio.dev, now)).or_default() += 1;
            bio.dev
        });
        Token {
            id,
            submitted: now,
            read_of,
        }
    }

    /// The engine wrote to a device: its data may be there from now on.
    pub fn engine_write(&mut self, now: u64, bio: &Bio) {
        if bio.op != BioOp::Write {
            return;
        }
        // A device with a last engine write has a fill (fills are never
        // dropped): the usual engine write, one that continues the last,
        // costs no fill lookup (issue 10).
        if self.join_engine_write(bio) || !self.fills.contains_key(&bio.dev) {
            return;
        }
        self.add_engine_write(now, bio);
    }

    /// An engine write that joins none: a write of its own, the device's
    /// last (kept out of line: it is rare, and its frame is large).
    #[inline(never)]
    fn add_engine_write(&mut self, now: u64, bio: &Bio) {
        let id = self.add_write(Write {
            dev: bio.dev,
            sector: bio.sector,
            data: Data::new(bio.data.clone()),
            submitted: now,
            done: IN_FLIGHT,
            fua: false,
            user: false,
        });
        self.last_engine.insert(bio.dev, id);
    }

    /// An engine write that continues the device's last engine write joins
    /// it (up to `MAX_JOINED` sectors): a chunk stored in many bios is then
    /// one write. Equivalent for every rule: engine writes never complete,
    /// are never user writes, and are judged only at times after they
    /// were all submitted, so only their data and place matter.
    fn join_engine_write(&mut self, bio: &Bio) -> bool {
        let Some(&id) = self.last_engine.get(&bio.dev) else {
            return false;
        };
        let Some(last) = self.writes.get_mut(&id) else {
            return false;
        };
        if last.end() != bio.sector || last.data.len() + bio.data.len() > MAX_JOINED {
            return false;
        }
        last.data.append(&bio.data);
        let len = last.data.len();
        // The device has its starts (its last engine write is one of
        // them): a search, not an entry.
        match self.starts.get_mut(&bio.dev) {
            Some(starts) => starts.longest = starts.longest.max(len),
            None => self.starts.entry(bio.dev).or_default().longest = len,
        }
        true
    }

    /// A user bio ended: a read leaves the reads in flight; a write is
    /// complete (if it succeeded) and awaits a FLUSH.
    pub fn write_ended(&mut self, now: u64, token: Token, ok: bool) {
        if let Some(dev) = token.read_of {
            self.read_done(dev, token.submitted);
        }
        let Some(id) = token.id else { return };
        let Some(write) = self.writes.get_mut(&id) else {
            return;
        };
        if ok {
            write.done = now;
            match self.unflushed.get_mut(&write.dev) {
                Some(ids) => ids.push(id),
                None => self.unflushed.entry(write.dev).or_default().push(id),
            }
        }
    }

    /// Is a flush (or preflush) bio?
    pub fn is_flush(bio: &Bio) -> bool {
        bio.op == BioOp::Flush || bio.flags.preflush
    }

    /// A user FLUSH completed: judge every write that completed before it
    /// was submitted against the durable media. Returns sectors judged.
    pub fn flush_ended(
        &mut self,
        dev: DevT,
        token: Token,
        now: u64,
        media: &dyn Fn(u64) -> Stamp,
    ) -> Result<u64, String> {
        if !self.fills.contains_key(&dev) {
            return Ok(0);
        }
        self.flushes
            .entry(dev)
            .or_default()
            .push(token.submitted, now);
        let mut covered: Vec<u64> = self
            .unflushed
            .get(&dev)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| {
                self.writes[id]
                    .completed()
                    .is_some_and(|c| c <= token.submitted)
            })
            .collect();
        covered.sort_unstable();
        let mut judged = 0;
        for (i, id) in covered.iter().enumerate() {
            let write = &self.writes[id];
            for s in write.sector..write.end() {
                let got = media(s);
                let allowed = self.allowed(dev, s, now);
                judged += 1;
                if !allowed.contains(&got) {
                    let message = format!(
                        "FLUSH of {dev} submitted at {} ns completed at {now} ns, but sector {s} \
                         written by a write completed at {} ns is not durable: the media holds \
                         {got:#x}, expected one of {}",
                        token.submitted,
                        write.completed().unwrap_or(0),
                        show(&allowed)
                    );
                    // Judged (and dropped) so far: the ones up to this.
                    self.drop_unflushed(dev, &covered[..=i]);
                    return Err(message);
                }
            }
        }
        self.drop_unflushed(dev, &covered);
        self.fold(dev, now);
        self.flushes_judged += 1;
        self.flush_sectors_judged += judged;
        Ok(judged)
    }

    /// A read of `dev` submitted at `submitted` ended.
    fn read_done(&mut self, dev: DevT, submitted: u64) {
        if let Some(n) = self.reading.get_mut(&(dev, submitted)) {
            *n -= 1;
            if *n == 0 {
                self.reading.remove(&(dev, submitted));
            }
        }
    }

    /// Drop the user writes of `dev` no rule can need any more, so that
    /// the log stays bounded between power losses (issue 10). A completed
    /// user write V goes once, on each of its sectors, a user write D that
    /// is durable now was submitted after V completed, and D completed
    /// before every read in flight on the device began. Then, on each
    /// sector, for every judgement from now on: V is superseded by a
    /// durable write (not allowed after power loss, and D keeps the base
    /// out); V is neither the last completed write nor in flight for any
    /// read (D completed after V and before the read began). The newest
    /// durable write of a sector is never dropped, so the sets each rule
    /// builds are unchanged. Writes a FLUSH has still to judge stay.
    fn fold(&mut self, dev: DevT, now: u64) {
        if self.keep_all || self.held < self.fold_at.max(FOLD_MIN) {
            return;
        }
        let reads = self.reading.range((dev, 0)..=(dev, u64::MAX)).next();
        let horizon = reads.map_or(now, |((_, from), _)| (*from).min(now));
        let pending: BTreeSet<u64> = self
            .unflushed
            .get(&dev)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut gone = Vec::new();
        let starts = self.starts.get(&dev).into_iter();
        for (start, &id) in starts.flat_map(|s| s.in_range(..)) {
            if !pending.contains(&id) && self.superseded_everywhere(&self.writes[&id], now, horizon)
            {
                gone.push((start, id));
            }
        }
        for &(start, id) in &gone {
            if let Some(starts) = self.starts.get_mut(&dev) {
                starts.forget(start, id);
            }
            self.writes.remove(&id);
        }
        self.held -= gone.len() as u64;
        self.fold_at = 2 * self.held;
    }

    /// Whether every sector of the completed user write `v` has a user
    /// write durable at `now`, submitted after `v` completed and completed
    /// by `horizon`.
    fn superseded_everywhere(&self, v: &Write, now: u64, horizon: u64) -> bool {
        let Some(done) = v.completed().filter(|_| v.user) else {
            return false;
        };
        let mut spans: Vec<(u64, u64)> = self
            .range_writes(v.dev, v.sector, v.end())
            .into_iter()
            .filter(|d| d.user && d.submitted > done)
            .filter(|d| d.completed().is_some_and(|c| c <= horizon) && self.durable(d, now))
            .map(|d| (d.sector.max(v.sector), d.end().min(v.end())))
            .collect();
        spans.sort_unstable();
        let mut reach = v.sector;
        for (start, end) in spans {
            if start > reach {
                return false;
            }
            reach = reach.max(end);
        }
        reach >= v.end()
    }

    /// User writes held (what the memory grows with).
    #[cfg(test)]
    fn writes_held(&self) -> usize {
        self.writes.len()
    }

    /// Forget the writes a FLUSH judged (`judged` sorted by id).
    fn drop_unflushed(&mut self, dev: DevT, judged: &[u64]) {
        if let Some(ids) = self.unflushed.get_mut(&dev) {
            ids.retain(|id| judged.binary_search(id).is_err());
        }
    }

    /// The writes to `sector` since the last power loss.
    fn sector_writes(&self, dev: DevT, sector: u64) -> impl Iterator<Item = &Write> {
        let starts = self.starts.get(&dev);
        let longest = starts.map_or(0, |s| s.longest);
        let from = (sector + 1).saturating_sub(longest).min(sector);
        starts
            .into_iter()
            .flat_map(move |s| s.in_range(from..=sector))
            .filter_map(|(_, id)| self.writes.get(id))
            .filter(move |w| w.end() > sector)
    }

    /// Every sector written on `dev` since the last power loss, in order.
    fn written_sectors(&self, dev: DevT) -> Vec<u64> {
        let mut spans: Vec<(u64, u64)> = Vec::new();
        let starts = self.starts.get(&dev).into_iter().flat_map(|s| s.ids.iter());
        for (start, ids) in starts {
            let end = ids
                .iter()
                .map(|id| self.writes[id].end())
                .max()
                .unwrap_or(start);
            match spans.last_mut() {
                Some((_, e)) if start <= *e => *e = (*e).max(end),
                _ => spans.push((start, end)),
            }
        }
        spans.into_iter().flat_map(|(s, e)| s..e).collect()
    }

    /// Is `w` durable at `t`?
    fn durable(&self, w: &Write, t: u64) -> bool {
        let Some(done) = w.completed().filter(|c| *c <= t) else {
            return false;
        };
        if w.fua {
            return true;
        }
        self.flushes
            .get(&w.dev)
            .is_some_and(|f| f.any_between(done, t))
    }

    /// Values the durable media may hold for `sector` at `t`.
    fn allowed(&self, dev: DevT, sector: u64, t: u64) -> BTreeSet<Stamp> {
        let durable: Vec<&Write> = self
            .sector_writes(dev, sector)
            .filter(|w| w.user && self.durable(w, t))
            .collect();
        let superseded = |v: &Write| {
            v.completed()
                .is_some_and(|c| durable.iter().any(|d| d.submitted > c))
        };
        let mut allowed: BTreeSet<Stamp> = self
            .sector_writes(dev, sector)
            .filter(|v| v.submitted <= t && !superseded(v))
            .map(|v| v.stamp(sector))
            .collect();
        if durable.is_empty() {
            allowed.insert(self.base(dev, sector));
        }
        allowed
    }

    /// A user read of a device ended: judge it, unless a fault on the
    /// device since the last power loss explains anything (`faulted`).
    pub fn read_ended(
        &mut self,
        bio: &Bio,
        from: u64,
        to: u64,
        result: &BioResult,
        faulted: bool,
    ) -> Result<u64, String> {
        let (Ok(data), true) = (result, self.fills.contains_key(&bio.dev)) else {
            return Ok(0);
        };
        if faulted || bio.op != BioOp::Read {
            return Ok(0);
        }
        // One search finds every write that meets the read; each sector
        // then picks its own from those (a read judges every sector).
        let meeting: Vec<&Write> = self.range_writes(bio.dev, bio.sector, bio.sector + data.len());
        let mut judged = 0;
        for (i, got) in data.iter().enumerate() {
            let s = bio.sector + i as u64;
            judged += 1;
            let here = meeting
                .iter()
                .copied()
                .filter(|w| w.sector <= s && w.end() > s);
            if !self.may_read(here, bio.dev, s, (from, to), got) {
                let allowed = self.readable(bio.dev, s, from, to);
                return Err(format!(
                    "{} sector {s}: read {got:#x} at {from}..{to} ns, but with no fault \
                     injected on the device a completed write must read back: expected one of {}",
                    bio.dev,
                    show(&allowed)
                ));
            }
        }
        self.read_sectors_judged += judged;
        Ok(judged)
    }

    /// The writes since the last power loss that meet [from, to).
    fn range_writes(&self, dev: DevT, from: u64, to: u64) -> Vec<&Write> {
        let starts = self.starts.get(&dev);
        let longest = starts.map_or(0, |s| s.longest);
        let first = (from + 1).saturating_sub(longest).min(from);
        starts
            .into_iter()
            .flat_map(|s| s.in_range(first..to.max(from)))
            .filter_map(|(_, id)| self.writes.get(id))
            .filter(|w| w.end() > from)
            .collect()
    }

    /// Whether `readable` holds `got`, without building the set: `here`
    /// are the writes over `sector` (as `sector_writes` gives them), and
    /// the read ran over [from, to].
    fn may_read<'a>(
        &self,
        here: impl Iterator<Item = &'a Write> + Clone,
        dev: DevT,
        sector: u64,
        (from, to): (u64, u64),
        got: Stamp,
    ) -> bool {
        let done = |w: &&Write| w.user && w.completed().is_some_and(|c| c <= from);
        let latest = here.clone().filter(done).map(|w| w.submitted).max();
        let last = match latest {
            Some(latest) => here
                .clone()
                .filter(done)
                .filter(|w| w.completed().is_some_and(|c| c >= latest))
                .any(|w| w.stamp(sector) == got),
            None => self.base(dev, sector) == got,
        };
        last || here
            .filter(|w| w.submitted <= to && w.completed().is_none_or(|c| c > from))
            .any(|w| w.stamp(sector) == got)
    }

    /// What a read over [from, to] may return: the last completed writes
    /// (those that overlapped each other), else the base; plus writes in
    /// flight during the read.
    fn readable(&self, dev: DevT, sector: u64, from: u64, to: u64) -> BTreeSet<Stamp> {
        let done: Vec<&Write> = self
            .sector_writes(dev, sector)
            .filter(|w| w.user && w.completed().is_some_and(|c| c <= from))
            .collect();
        let mut allowed: BTreeSet<Stamp> = match done.iter().map(|w| w.submitted).max() {
            Some(latest) => done
                .iter()
                .filter(|w| w.completed().is_some_and(|c| c >= latest))
                .map(|w| w.stamp(sector))
                .collect(),
            None => [self.base(dev, sector)].into(),
        };
        allowed.extend(
            self.sector_writes(dev, sector)
                .filter(|w| w.submitted <= to && w.completed().is_none_or(|c| c > from))
                .map(|w| w.stamp(sector)),
        );
        allowed
    }

    /// Power was cut at `t`: judge every sector written since the last
    /// cut against what `media` holds now, then start a new epoch from it.
    /// After a clean shutdown (`clean`) nothing may be lost: the media
    /// holds what a read would return. Returns the sectors judged, and the
    /// first violation.
    pub fn power_loss(
        &mut self,
        dev: DevT,
        t: u64,
        clean: bool,
        media: &dyn Fn(u64) -> Stamp,
    ) -> (u64, Result<(), String>) {
        let sectors = self.written_sectors(dev);
        let mut judged = 0;
        let mut verdict = Ok(());
        let mut found = Vec::new();
        for &s in &sectors {
            let got = media(s);
            let allowed = if clean {
                self.readable(dev, s, t, t)
            } else {
                self.allowed(dev, s, t)
            };
            judged += 1;
            if verdict.is_ok() && !allowed.contains(&got) {
                let what = if clean {
                    "after a clean shutdown: the last completed write"
                } else {
                    "after power loss: the last durable write, or a later write that was in the cache"
                };
                verdict = Err(format!(
                    "at {t} ns, {dev} sector {s} holds {got:#x}: expected one of {} ({what})",
                    show(&allowed)
                ));
            }
            found.push((s, got));
        }
        self.new_epoch(dev, t, found);
        self.power_sectors_judged += judged;
        (judged, verdict)
    }

    fn new_epoch(&mut self, dev: DevT, t: u64, found: Vec<(u64, Stamp)>) {
        for (s, stamp) in found {
            self.baseline.insert((dev, s), stamp);
        }
        for (_, &id) in self.starts.remove(&dev).unwrap_or_default().in_range(..) {
            self.writes.remove(&id);
            self.held -= 1;
        }
        // Reads in flight at the cut never end (the power loss ended their
        // bios with their tasks); left here they would pin every later fold.
        self.reading.retain(|&(d, _), _| d != dev);
        self.last_engine.remove(&dev);
        self.unflushed.remove(&dev);
        self.flushes.remove(&dev);
        self.epoch.insert(dev, t);
    }

    /// When the device last lost power (0 if never).
    pub fn epoch(&self, dev: DevT) -> u64 {
        self.epoch.get(&dev).copied().unwrap_or(0)
    }

    pub fn metrics(&self) -> [(String, f64); 4] {
        [
            (
                "durability_power_sectors_judged".into(),
                self.power_sectors_judged as f64,
            ),
            (
                "durability_flush_sectors_judged".into(),
                self.flush_sectors_judged as f64,
            ),
            (
                "durability_flushes_judged".into(),
                self.flushes_judged as f64,
            ),
            (
                "durability_read_sectors_judged".into(),
                self.read_sectors_judged as f64,
            ),
        ]
    }
}

fn show(set: &BTreeSet<Stamp>) -> String {
    let list: Vec<String> = set.iter().take(8).map(|s| format!("{s:#x}")).collect();
    format!("{{{}}}", list.join(", "))
}

/// Hooks for the block layer and the kernel: they feed the checker and
/// fail the run on a violation.
pub mod hooks {
    use super::*;
    use crate::kernel::Sim;

    pub fn submitted(sim: &Sim, bio: &Bio) -> Token {
        sim.durability.borrow_mut().submit(sim.now(), bio)
    }

    /// A user bio ended: record a write, judge a FLUSH or a read.
    /// Inlined into the block layer's hook (once per user bio); the
    /// judgements are out of line.
    #[inline(always)]
    pub fn ended(sim: &Sim, bio: &Bio, token: Token, result: &BioResult) {
        let now = sim.now();
        let ok = result.is_ok();
        sim.durability.borrow_mut().write_ended(now, token, ok);
        if ok && Durability::is_flush(bio) {
            flush_ended(sim, bio, token, now);
        } else if bio.op == BioOp::Read {
            read_ended(sim, bio, token, now, result);
        }
    }

    /// A user FLUSH (or REQ_PREFLUSH) completed: judge it.
    #[inline(never)]
    fn flush_ended(sim: &Sim, bio: &Bio, token: Token, now: u64) {
        let devices = sim.blk.devices.borrow();
        let Some(device) = devices.get(&bio.dev) else {
            return;
        };
        let media = |s: u64| device.read(s, 1).get(0);
        let verdict = sim
            .durability
            .borrow_mut()
            .flush_ended(bio.dev, token, now, &media);
        drop(devices);
        if let Err(message) = verdict {
            sim.fail("durability", message);
        }
    }

    /// A user read completed: judge what it returned.
    #[inline(never)]
    fn read_ended(sim: &Sim, bio: &Bio, token: Token, now: u64, result: &BioResult) {
        let epoch = sim.durability.borrow().epoch(bio.dev);
        let faulted = sim.injected.borrow().data_fault_on(bio.dev, epoch + 1, now);
        let verdict =
            sim.durability
                .borrow_mut()
                .read_ended(bio, token.submitted, now, result, faulted);
        if let Err(message) = verdict {
            sim.fail("durability", message);
        }
    }

    pub fn engine_write(sim: &Sim, bio: &Bio) {
        sim.durability.borrow_mut().engine_write(sim.now(), bio);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blksnap_core::kernel::BioFlags;

    const D: DevT = DevT(7 << 20);

    /// A held write (the slot of the log) fits one cache line.
    #[test]
    fn a_held_write_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Option<Write>>(), 64);
    }

    /// Data built by appends holds, sector by sector, what `Stamps` built
    /// by the same appends holds: runs that continue, that do not, lone
    /// stamps and zeros.
    #[test]
    fn appended_data_reads_as_the_stamps_do() {
        let mut rng = crate::rng::SimRng::new(3);
        let part = |rng: &mut crate::rng::SimRng, last: Stamp| {
            let len = 1 + rng.below(4);
            match rng.below(5) {
                0 => Stamps::run(last, 1, len),
                1 => Stamps::run(last, 0, len),
                2 => Stamps::run(rng.below(8), rng.below(2), len),
                3 => Stamps::run(last - 1, 0, len),
                _ => Stamps::from(vec![rng.below(8), last, rng.below(8)]),
            }
        };
        for _ in 0..500 {
            let first = part(&mut rng, 5);
            let (mut data, mut want) = (Data::new(first.clone()), first);
            for _ in 0..rng.below(5) {
                let more = part(&mut rng, data.get(data.len() - 1) + 1);
                data.append(&more);
                want.append(&more);
            }
            assert_eq!(data.len(), want.len());
            for i in 0..want.len() {
                assert_eq!(data.get(i), want.get(i), "sector {i}");
            }
        }
    }

    fn checker() -> Durability {
        let mut c = Durability::default();
        c.add_device(D, 0, Fill::Zero);
        c
    }

    fn bio(op: BioOp, sector: u64, data: Vec<Stamp>, fua: bool) -> Bio {
        let mut b = Bio::write(D, sector, data);
        b.op = op;
        b.flags = BioFlags {
            fua,
            ..BioFlags::default()
        };
        b
    }

    /// A write of `stamp` to sector 0 from `at` to `done`.
    fn write(c: &mut Durability, stamp: Stamp, at: u64, done: u64, fua: bool) {
        let t = c.submit(at, &bio(BioOp::Write, 0, vec![stamp], fua));
        c.write_ended(done, t, true);
    }

    fn flush(c: &mut Durability, at: u64, done: u64, media: Stamp) -> Result<u64, String> {
        let t = c.submit(at, &bio(BioOp::Flush, 0, vec![], false));
        c.flush_ended(D, t, done, &|_| media)
    }

    #[test]
    fn a_flush_that_left_an_earlier_write_volatile_fails() {
        let mut c = checker();
        write(&mut c, 5, 10, 20, false);
        // The FLUSH came after the write completed, yet the media still
        // holds the old content: the flush promised more than it did.
        let err = flush(&mut c, 30, 40, 0).unwrap_err();
        assert!(err.contains("is not durable"), "{err}");
        // The control: the media holds the write.
        let mut c = checker();
        write(&mut c, 5, 10, 20, false);
        assert_eq!(flush(&mut c, 30, 40, 5), Ok(1));
        // A write still in flight when the FLUSH was submitted is not covered.
        let mut c = checker();
        write(&mut c, 5, 10, 35, false);
        assert_eq!(flush(&mut c, 30, 40, 0), Ok(0));
    }

    #[test]
    fn power_loss_allows_the_durable_write_and_later_cached_ones_only() {
        let mut c = checker();
        write(&mut c, 1, 0, 10, false);
        flush(&mut c, 20, 30, 1).expect("durable");
        write(&mut c, 2, 40, 50, false);
        // 1 (durable) or 2 (cached after it); never 0, never 9.
        for (media, ok) in [(1, true), (2, true), (0, false), (9, false)] {
            let mut c = c.clone_for_test();
            let (judged, verdict) = c.power_loss(D, 60, false, &|_| media);
            assert_eq!(judged, 1);
            assert_eq!(verdict.is_ok(), ok, "media {media}: {verdict:?}");
        }
    }

    #[test]
    fn fua_is_durable_at_completion_and_supersedes_older_writes() {
        let mut c = checker();
        write(&mut c, 1, 0, 10, false);
        write(&mut c, 2, 20, 30, true);
        let mut lost = c.clone_for_test();
        let err = lost.power_loss(D, 40, false, &|_| 1).1.unwrap_err();
        assert!(err.contains("after power loss"), "{err}");
        assert_eq!(c.power_loss(D, 40, false, &|_| 2), (1, Ok(())));
        // The next epoch starts from what was found.
        let t = c.submit(50, &bio(BioOp::Read, 0, vec![], false));
        assert_eq!(
            c.read_ended(
                &Bio::read(D, 0, 1),
                t.submitted,
                60,
                &Ok(Stamps::from_slice(&[2])),
                false
            ),
            Ok(1)
        );
    }

    #[test]
    fn a_completed_write_must_read_back_unless_a_fault_explains_it() {
        let mut c = checker();
        write(&mut c, 7, 0, 10, false);
        let read = Bio::read(D, 0, 1);
        let err = c
            .read_ended(&read, 20, 30, &Ok(Stamps::from_slice(&[0])), false)
            .unwrap_err();
        assert!(err.contains("must read back"), "{err}");
        assert_eq!(
            c.read_ended(&read, 20, 30, &Ok(Stamps::from_slice(&[0])), true),
            Ok(0)
        );
        assert_eq!(
            c.read_ended(&read, 20, 30, &Ok(Stamps::from_slice(&[7])), false),
            Ok(1)
        );
        // A write in flight during the read may be seen.
        let t = c.submit(25, &bio(BioOp::Write, 0, vec![8], false));
        assert_eq!(
            c.read_ended(&read, 20, 30, &Ok(Stamps::from_slice(&[8])), false),
            Ok(1)
        );
        c.write_ended(40, t, true);
    }

    #[test]
    fn a_clean_shutdown_loses_nothing() {
        let mut c = checker();
        write(&mut c, 1, 0, 10, false);
        write(&mut c, 2, 20, 30, false);
        // Power loss may drop the unflushed writes; a clean shutdown may not.
        assert_eq!(
            c.clone_for_test().power_loss(D, 40, false, &|_| 0).1,
            Ok(())
        );
        let err = c
            .clone_for_test()
            .power_loss(D, 40, true, &|_| 1)
            .1
            .unwrap_err();
        assert!(err.contains("clean shutdown"), "{err}");
        assert_eq!(c.power_loss(D, 40, true, &|_| 2), (1, Ok(())));
    }

    /// What the media or a read shows of sector `s`: mostly the last
    /// write, sometimes any value the sector ever held.
    fn shown(
        rng: &mut crate::rng::SimRng,
        (history, last): (&[Vec<Stamp>], &[Stamp]),
        noise: u64,
        s: u64,
    ) -> Stamp {
        let held = &history[s as usize];
        match rng.below(noise) {
            0 => held[rng.below(held.len() as u64) as usize],
            _ => last[s as usize],
        }
    }

    /// A long random run of writes (some FUA), reads, FLUSHes and power
    /// losses, with bios overlapping in time and media that mostly hold
    /// the last write: a folding checker gives exactly the verdicts of one
    /// that keeps every write, and holds a bounded number of writes.
    #[test]
    fn folding_keeps_the_verdicts_and_bounds_the_writes_held() {
        let (mut kept_most, mut most_held) = (0, 0);
        // Reads failed and passed, FLUSHes failed and passed.
        let mut outcomes = [0; 4];
        for seed in 0..6 {
            let mut rng = crate::rng::SimRng::new(seed);
            let mut fold = checker();
            let mut keep = checker();
            keep.keep_all = true;
            let (mut history, mut last): (Vec<Vec<Stamp>>, Vec<Stamp>) =
                (vec![vec![0]; 64], vec![0; 64]);
            let mut pending: Vec<(Bio, Token, Token)> = Vec::new();
            for t in 1..6000u64 {
                if pending.len() < 6 && rng.below(2) == 0 {
                    let (sector, len) = (rng.below(56), 1 + rng.below(8));
                    let b = match rng.below(8) {
                        0..=3 => {
                            let data: Vec<Stamp> = (0..len).map(|i| t * 16 + i).collect();
                            bio(BioOp::Write, sector, data, rng.below(8) == 0)
                        }
                        4..=6 => Bio::read(D, sector, len),
                        _ => bio(BioOp::Flush, 0, vec![], false),
                    };
                    let (a, k) = (fold.submit(t, &b), keep.submit(t, &b));
                    pending.push((b, a, k));
                    continue;
                }
                if pending.is_empty() {
                    continue;
                }
                let (b, a, k) = pending.remove(rng.below(pending.len() as u64) as usize);
                let ok = rng.below(16) != 0;
                fold.write_ended(t, a, ok);
                keep.write_ended(t, k, ok);
                match b.op {
                    BioOp::Write if ok => {
                        for (i, stamp) in b.data.iter().enumerate() {
                            let s = b.sector as usize + i;
                            history[s].push(stamp);
                            last[s] = stamp;
                        }
                    }
                    BioOp::Read => {
                        let data: Vec<Stamp> = (b.sector..b.sector + b.sectors)
                            .map(|s| shown(&mut rng, (&history[..], &last[..]), 10, s))
                            .collect();
                        let result = Ok(Stamps::from_slice(&data));
                        let got = fold.read_ended(&b, a.submitted, t, &result, false);
                        outcomes[got.is_ok() as usize] += 1;
                        assert_eq!(got, keep.read_ended(&b, k.submitted, t, &result, false));
                    }
                    BioOp::Flush if ok => {
                        let media: Vec<Stamp> = (0..64)
                            .map(|s| shown(&mut rng, (&history[..], &last[..]), 2000, s))
                            .collect();
                        let media = |s: u64| media[s as usize];
                        let got = fold.flush_ended(D, a, t, &media);
                        outcomes[2 + got.is_ok() as usize] += 1;
                        assert_eq!(got, keep.flush_ended(D, k, t, &media), "seed {seed} at {t}");
                    }
                    _ => {}
                }
                if rng.below(3000) == 0 {
                    let media: Vec<Stamp> = (0..64)
                        .map(|s| shown(&mut rng, (&history[..], &last[..]), 2000, s))
                        .collect();
                    let media = |s: u64| media[s as usize];
                    let got = fold.power_loss(D, t, false, &media);
                    assert_eq!(got, keep.power_loss(D, t, false, &media));
                }
                most_held = most_held.max(fold.writes_held());
                kept_most = kept_most.max(keep.writes_held());
            }
        }
        eprintln!("most held {most_held}, without folding {kept_most}, {outcomes:?}");
        assert!(outcomes.iter().all(|n| *n > 10), "{outcomes:?}");
        // Bounded: 64 sectors hold at most 64 newest durable writes, plus
        // what came since the last fold (at most twice what it kept).
        assert!(
            most_held <= 3 * 64 + FOLD_MIN as usize,
            "{most_held} writes held"
        );
        assert!(kept_most > 800, "the run kept only {kept_most} writes");
    }

    /// Writes held after 2,000 write+FLUSH pairs that follow a power loss,
    /// with or without a read in flight at the cut.
    fn held_after_power_loss(read_in_flight: bool) -> u64 {
        let mut c = checker();
        if read_in_flight {
            // Its bio dies with the power loss: it never ends.
            let _lost = c.submit(1, &Bio::read(D, 0, 1));
        }
        let _ = c.power_loss(D, 2, false, &|_| 0);
        for i in 0..2000u64 {
            let t = 10 + i * 10;
            let tok = c.submit(t, &bio(BioOp::Write, 0, vec![t], false));
            c.write_ended(t + 1, tok, true);
            let ft = c.submit(t + 2, &bio(BioOp::Flush, 0, vec![], false));
            c.write_ended(t + 3, ft, true);
            assert!(c.flush_ended(D, ft, t + 3, &|_| t).is_ok());
        }
        c.writes_held() as u64
    }

    #[test]
    fn a_read_lost_at_power_loss_does_not_stop_the_fold() {
        let without = held_after_power_loss(false);
        let with = held_after_power_loss(true);
        assert!(without < 100, "the fold kept {without} of 2000 writes");
        assert_eq!(
            with, without,
            "a read that died at the power loss pins the fold"
        );
    }

    /// The rule as written, by a scan of every FLUSH: what
    /// `Flushes::any_between` must answer.
    fn any_between_by_scan(all: &[(u64, u64)], done: u64, t: u64) -> bool {
        all.iter().any(|&(sub, end)| sub >= done && end <= t)
    }

    /// Random FLUSH histories (overlapping FLUSHes, equal times, now and
    /// then one completing out of order) and random questions: the binary
    /// search answers exactly as the scan.
    #[test]
    fn the_flush_search_answers_as_the_scan_of_every_flush() {
        let mut answers = [0; 2];
        for seed in 0..20 {
            let mut rng = crate::rng::SimRng::new(seed);
            let (mut fast, mut all) = (Flushes::default(), Vec::new());
            let mut now = 0;
            for _ in 0..300 {
                now += rng.below(4);
                let sub = now.saturating_sub(rng.below(40));
                let end = match rng.below(20) {
                    0 => now.saturating_sub(rng.below(30)),
                    _ => now,
                };
                let sub = sub.min(end);
                fast.push(sub, end);
                all.push((sub, end));
                let (done, t) = (rng.below(now + 10), rng.below(now + 10));
                let want = any_between_by_scan(&all, done, t);
                assert_eq!(fast.any_between(done, t), want, "seed {seed}: {done}..{t}");
                answers[want as usize] += 1;
            }
        }
        assert!(answers.iter().all(|n| *n > 500), "{answers:?}");
    }

    impl Durability {
        fn clone_for_test(&self) -> Durability {
            Durability {
                fills: self.fills.clone(),
                writes: self.writes.clone(),
                starts: self.starts.clone(),
                flushes: self.flushes.clone(),
                unflushed: self.unflushed.clone(),
                baseline: self.baseline.clone(),
                epoch: self.epoch.clone(),
                held: self.held,
                next_id: self.next_id,
                ..Durability::default()
            }
        }
    }
}
