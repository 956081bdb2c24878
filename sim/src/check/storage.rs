//! The storage checker: the diff storage holds copies, and copies do not
//! overlap.
//!
//! Rules (spec 6.2, 6.3), judged on every write the engine issues itself
//! to a device that is not an image:
//! 1. The write lies inside ONE range the user appended (APPEND_STORAGE
//!    arguments, seen in `ctl.rs`). A region is carved from one range and a
//!    range's tail too small for a chunk is wasted, so a write that runs
//!    from one range into the next is a bug even when the two ranges are
//!    adjacent.
//! 2. A storage sector keeps the copy of one original sector while its
//!    range is in use: overwriting it with another sector's data means two
//!    regions overlap. Rewriting it with newer data of the same sector (a
//!    dirty image chunk stored back into its region) is legal. The copy is
//!    released when the owning snapshot is destroyed, and forgotten when
//!    its range is appended again (reuse).
//!
//! 3. After an overflow no region is taken: once a WAIT_EVENT returned a
//!    snapshot's corrupted event with ENOSPC, its storage overflowed, and
//!    every later region request of the snapshot fails at once (spec 6.3
//!    step 1, 6.5; the flag is never cleared, B-DS-3). So a range the
//!    user appends to it after that return is never written: the engine
//!    may finish copies to regions it took before, never one from a range
//!    it did not have then. One excuse: a request that passed the
//!    overflow check before the overflow and sleeps in reclaim (its
//!    descriptor's GFP_NOIO allocation) takes its region after it, and
//!    may take it from a range appended meanwhile; if such an allocation
//!    is in reclaim when the APPEND begins, the snapshot is not judged by
//!    this rule any more.
//!
//! What a sector holds is learned from the data alone: pattern stamps name
//! their device and sector, and user-write stamps are unique per run, so
//! the first user write of a stamp names where it belongs (an image sector
//! stands for the same sector of its original). Zero stamps carry no
//! identity; inside one write they take the identity their neighbours
//! imply (a region is a run of consecutive sectors of one chunk). Sectors
//! offered twice (overlapping appended ranges, a user error the engine
//! does not detect, spec 6.2) are not judged by rule 2.
//!
//! Not judged: whether the range belongs to the snapshot of the data's
//! original. Ranges carry their snapshot, but a device that once served
//! as storage holds copies of another device's data, and its own COW
//! would then look like that other device's: a false positive to avoid.
//!
//! Not a separate rule: "an image read returns the chunk's own copy". The
//! point-in-time oracle already requires every image sector to hold its
//! content at TAKE (or the image's own writes); stamps are unique, so data
//! of another chunk fails there, and zeros carry no identity to tell apart.

use std::collections::BTreeMap;

use blksnap_core::kernel::{DevT, Run, Stamp, Stamps};

use super::events::Watches;

/// Where a sector's content came from: (original device, sector).
type Origin = (DevT, u64);

/// A run of storage sectors that hold consecutive original sectors:
/// storage sector `start + i` holds the copy of `(orig.0, orig.1 + i)`.
/// Copies are kept as runs, so a 512 MiB chunk costs one entry, not a
/// million.
#[derive(Clone, Copy, Debug)]
struct Extent {
    len: u64,
    orig: Origin,
}

/// A known run of stamps: its length and the origin of its first stamp.
type Known = (u64, Option<Origin>);

/// The known stamp runs by first stamp (disjoint). Fresh stamps (every new
/// user write) count up from every stamp seen before, so most runs arrive
/// past the last one: those are pushed on `fresh` (no search, where a map
/// insert searches; issue 10). Every key of `fresh` is above every key of
/// `older`; a run that lands anywhere else, and any cutting, first moves
/// `fresh` into `older` (each run moves once).
#[derive(Default)]
struct StampRuns {
    older: BTreeMap<Stamp, Known>,
    fresh: FreshRuns,
}

/// Runs in key order, in chunks of a fixed size: a push never moves the
/// runs already held, where a Vec that doubled copied them all (about 66
/// instructions a user write on a 20,000-write run).
#[derive(Default)]
struct FreshRuns {
    /// Full but for the last; only a lone first chunk may be empty (kept,
    /// with its room, after a drain).
    chunks: Vec<Vec<(Stamp, Known)>>,
}

/// Runs per chunk of `FreshRuns`.
const FRESH_CHUNK: usize = 256;

impl FreshRuns {
    fn last(&self) -> Option<(Stamp, Known)> {
        self.chunks.last()?.last().copied()
    }

    fn push(&mut self, run: (Stamp, Known)) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < FRESH_CHUNK => chunk.push(run),
            _ => {
                let mut chunk = Vec::with_capacity(FRESH_CHUNK);
                chunk.push(run);
                self.chunks.push(chunk);
            }
        }
    }

    /// The last run starting at or before `stamp`.
    fn at_or_before(&self, stamp: Stamp) -> Option<(Stamp, Known)> {
        let i = self
            .chunks
            .partition_point(|c| c.first().is_some_and(|(s, _)| *s <= stamp));
        let chunk = self.chunks.get(i.checked_sub(1)?)?;
        let j = chunk.partition_point(|(s, _)| *s <= stamp);
        chunk.get(j.checked_sub(1)?).copied()
    }

    /// The first stamp of the first run starting at or after `stamp`.
    fn first_at_or_after(&self, stamp: Stamp) -> Option<Stamp> {
        let i = self
            .chunks
            .partition_point(|c| c.last().is_none_or(|(s, _)| *s < stamp));
        let chunk = self.chunks.get(i)?;
        let j = chunk.partition_point(|(s, _)| *s < stamp);
        chunk.get(j).map(|(s, _)| *s)
    }

    /// Every run, in order, out (the first chunk keeps its room).
    fn drain_into(&mut self, older: &mut BTreeMap<Stamp, Known>) {
        for chunk in &mut self.chunks {
            for (first, known) in chunk.drain(..) {
                older.insert(first, known);
            }
        }
        self.chunks.truncate(1);
    }
}

impl StampRuns {
    /// The run with the highest first stamp.
    fn last(&self) -> Option<(Stamp, Known)> {
        let older = || self.older.last_key_value().map(|(s, v)| (*s, *v));
        self.fresh.last().or_else(older)
    }

    /// The last run starting at or before `stamp` (it may end before it).
    fn at_or_before(&self, stamp: Stamp) -> Option<(Stamp, Known)> {
        if let Some(run) = self.fresh.at_or_before(stamp) {
            return Some(run);
        }
        self.older
            .range(..=stamp)
            .next_back()
            .map(|(s, v)| (*s, *v))
    }

    /// The first stamp of the first run starting at or after `stamp`.
    fn first_at_or_after(&self, stamp: Stamp) -> Option<Stamp> {
        if let Some((s, _)) = self.older.range(stamp..).next() {
            return Some(*s);
        }
        self.fresh.first_at_or_after(stamp)
    }

    fn insert(&mut self, first: Stamp, known: Known) {
        if self.last().is_none_or(|(s, _)| s < first) {
            self.fresh.push((first, known));
        } else {
            self.settled().insert(first, known);
        }
    }

    /// Every run in one map, to cut and replace runs anywhere.
    fn settled(&mut self) -> &mut BTreeMap<Stamp, Known> {
        self.fresh.drain_into(&mut self.older);
        &mut self.older
    }
}

/// The open copy: `ext` at `start` of `dev`, and where the next known copy
/// of `dev` starts (`limit`, `u64::MAX` if none): the copy may grow up to
/// it without meeting another. Nothing else changes the copies while it
/// is open, so `limit` stays true.
#[derive(Clone, Copy, Debug)]
struct Open {
    dev: DevT,
    start: u64,
    ext: Extent,
    limit: u64,
}

impl Extent {
    /// The origin of the sector `offset` sectors into the run.
    fn at(&self, offset: u64) -> Origin {
        (self.orig.0, self.orig.1.wrapping_add(offset))
    }
}

/// One range the user appended.
#[derive(Clone, Debug)]
struct AppendedRange {
    dev: DevT,
    start: u64,
    count: u64,
    snapshot: [u8; 16],
    /// Its snapshot was destroyed: the copies in it are not live.
    released: bool,
    /// Appended after the user saw its snapshot overflow (at this time):
    /// rule 3 wants it never written.
    after_overflow: Option<u64>,
}

impl AppendedRange {
    fn end(&self) -> u64 {
        self.start.saturating_add(self.count)
    }

    fn holds(&self, dev: DevT, sector: u64) -> bool {
        self.dev == dev && sector >= self.start && sector < self.end()
    }
}

/// Storage sectors [start, end) of `dev` the events checker watches for
/// snapshot `id`, and when the first engine write that met them was
/// submitted.
struct Watch {
    id: [u8; 16],
    dev: DevT,
    start: u64,
    end: u64,
    met: Option<u64>,
}

#[derive(Default)]
pub struct StorageCheck {
    ranges: Vec<AppendedRange>,
    /// Runs of stamps -> the sectors their first user write went to, held
    /// as runs: first stamp -> (length, origin of the first stamp), where
    /// stamp `first + i` names `origin + i`. None once a stamp of the run
    /// was written elsewhere too (copied data has no identity).
    stamps: StampRuns,
    /// Device index -> device, for pattern stamps.
    by_index: BTreeMap<u32, DevT>,
    /// Image -> its original.
    images: BTreeMap<DevT, DevT>,
    /// (storage device, first sector) -> the copies a run of sectors holds;
    /// runs never overlap.
    copies: BTreeMap<(DevT, u64), Extent>,
    /// The copy being stored, bio after bio, held outside `copies` so that
    /// each bio continuing it costs no search (issue 10): part of the
    /// copies like any other, and put in the map (`settle`) before
    /// anything else reads or changes them.
    open: Option<Open>,
    /// Where the last engine write's data stopped in its stretch of stamps
    /// (`origin_stretch`): the next stamp, how many stamps from it still
    /// count on with the same rule, and its origin. The next bio of a chunk
    /// starts there: its origin needs no lookup. Cleared whenever what the
    /// stamps name changes (user writes, devices, images).
    stretch: Option<(Stamp, u64, Origin)>,
    /// Engine writes judged by rule 1.
    pub writes_judged: u64,
    /// Storage sectors judged by rule 2 (a known copy met known data).
    pub sectors_judged: u64,
    /// The live copy the last rule 2 failure overwrote, and the storage
    /// sector: a device fault that damaged it may explain the failure
    /// (`device_faults.rs`).
    pub last_overwritten: Option<(Origin, u64)>,
    /// Storage sectors the events checker waits to see written, by
    /// snapshot (the block layer gives each engine write's submission
    /// time).
    watches: Vec<Watch>,
    /// Rule 3: snapshots whose overflow the user saw, and when (the return
    /// of the WAIT_EVENT that took the corrupted event).
    overflowed: BTreeMap<[u8; 16], u64>,
}

impl StorageCheck {
    pub fn add_device(&mut self, dev: DevT, index: u32) {
        self.stretch = None;
        self.by_index.insert(index, dev);
    }

    pub fn bind_image(&mut self, image: DevT, orig: DevT) {
        self.stretch = None;
        self.images.insert(image, orig);
    }

    /// A user write: each stamp now names its sector, run by run.
    pub fn user_write(&mut self, dev: DevT, sector: u64, data: &Stamps) {
        self.stretch = None;
        for (offset, run) in data.iter_runs() {
            let here = (dev, sector + offset);
            if run.step == 1 || run.len == 1 {
                self.name_stamps(run.first, run.len, here);
            } else {
                // One stamp on several sectors names none of them.
                self.name_stamps(run.first, 1, here);
                self.name_stamps(run.first, 1, (dev, u64::MAX));
            }
        }
    }

    /// Stamps [first, first + len) were written at `here` onwards: a stamp
    /// seen nowhere else names its sector; one seen elsewhere names none.
    fn name_stamps(&mut self, first: Stamp, len: u64, here: Origin) {
        let end = first.saturating_add(len);
        // Fresh stamps (every new user write) meet no known run: runs are
        // disjoint, so only the last one starting before `end` can meet
        // them. One lookup, no cutting, nothing collected.
        // Fresh stamps count up from every stamp seen before: the map's
        // last entry is then the last one before `end`, at no search.
        let last_before_end = match self.stamps.last() {
            Some((s, v)) if s < end => Some((s, v)),
            None => None,
            Some(_) => end.checked_sub(1).and_then(|e| self.stamps.at_or_before(e)),
        };
        let meets = last_before_end.is_some_and(|(s, (known_len, _))| s + known_len > first);
        if !meets {
            if end > first {
                self.stamps.insert(first, (end - first, Some(here)));
            }
            return;
        }
        let at = |stamp: Stamp| Some((here.0, here.1.wrapping_add(stamp - first)));
        let mut pieces: Vec<(Stamp, u64, Option<Origin>)> = Vec::new();
        let mut next = first;
        for (start, known_len, known) in self.stamp_runs(first, end) {
            if start > next {
                pieces.push((next, start - next, at(next)));
            }
            // Known runs count like the new one: equal at the start means
            // equal all along.
            let same = known.is_some() && known == at(start);
            pieces.push((start, known_len, if same { known } else { None }));
            next = start + known_len;
        }
        if end > next {
            pieces.push((next, end - next, at(next)));
        }
        let runs = self.stamps.settled();
        for (start, len, origin) in pieces {
            runs.insert(start, (len, origin));
        }
    }

    /// The known stamp runs that meet [first, end), cut to it (cutting
    /// the map's entries at the edges), with their origins.
    fn stamp_runs(&mut self, first: Stamp, end: Stamp) -> Vec<(Stamp, u64, Option<Origin>)> {
        let shift = |o: Option<Origin>, by: u64| o.map(|(d, s)| (d, s.wrapping_add(by)));
        let stamps = self.stamps.settled();
        let before = stamps
            .range(..first)
            .next_back()
            .filter(|(s, (len, _))| *s + *len > first)
            .map(|(s, v)| (*s, *v));
        if let Some((start, (len, origin))) = before {
            stamps.insert(start, (first - start, origin));
            stamps.insert(first, (start + len - first, shift(origin, first - start)));
        }
        let last = stamps
            .range(first..end)
            .next_back()
            .filter(|(s, (len, _))| *s + *len > end)
            .map(|(s, v)| (*s, *v));
        if let Some((start, (len, origin))) = last {
            stamps.insert(start, (end - start, origin));
            stamps.insert(end, (start + len - end, shift(origin, end - start)));
        }
        stamps
            .range(first..end)
            .map(|(s, (len, o))| (*s, *len, *o))
            .collect()
    }

    /// APPEND_STORAGE offered a range to a snapshot. Ranges it reuses from
    /// destroyed snapshots are forgotten with their copies.
    pub fn appended(&mut self, snapshot: [u8; 16], dev: DevT, start: u64, count: u64) {
        let new = AppendedRange {
            dev,
            start,
            count,
            snapshot,
            released: false,
            after_overflow: self.overflowed.get(&snapshot).copied(),
        };
        let reused = |r: &AppendedRange| {
            r.released && r.dev == dev && r.start < new.end() && start < r.end()
        };
        let old: Vec<(u64, u64)> = self
            .ranges
            .iter()
            .filter(|r| reused(r))
            .map(|r| (r.start, r.end()))
            .collect();
        for (start, end) in old {
            self.forget(dev, start, end);
        }
        self.ranges.retain(|r| !reused(r));
        self.ranges.push(new);
    }

    /// Rule 3: a WAIT_EVENT that returned at `at` took `snapshot`'s
    /// corrupted event with ENOSPC: its storage overflowed.
    pub fn overflow_seen(&mut self, snapshot: [u8; 16], at: u64) {
        self.overflowed.entry(snapshot).or_insert(at);
    }

    /// Rule 3's excuse: an APPEND of `snapshot` begins while a region
    /// request may have passed the overflow check before the overflow and
    /// not yet taken its region: judge the snapshot no more.
    pub fn overflow_unsure(&mut self, snapshot: [u8; 16]) {
        self.overflowed.remove(&snapshot);
        for range in self.ranges.iter_mut().filter(|r| r.snapshot == snapshot) {
            range.after_overflow = None;
        }
    }

    /// DESTROY of a snapshot succeeded: its copies are no longer live.
    pub fn destroyed(&mut self, snapshot: [u8; 16]) {
        for range in self.ranges.iter_mut().filter(|r| r.snapshot == snapshot) {
            range.released = true;
        }
    }

    /// The origin a stamp names, if any.
    fn origin(&self, stamp: Stamp) -> Option<Origin> {
        self.origin_after(stamp, self.known_before(stamp))
    }

    /// The last known stamp run starting at or before `stamp` (it may end
    /// before it). Fresh and pattern stamps lie past every known run: the
    /// map's last entry answers for them without a range search.
    fn known_before(&self, stamp: Stamp) -> Option<(Stamp, Known)> {
        match self.stamps.last() {
            Some((s, v)) if s <= stamp => Some((s, v)),
            None => None,
            Some(_) => self.stamps.at_or_before(stamp),
        }
    }

    /// The origin `stamp` names, given the last known run at or before it.
    fn origin_after(
        &self,
        stamp: Stamp,
        before: Option<(Stamp, (u64, Option<Origin>))>,
    ) -> Option<Origin> {
        let known = before.filter(|(s, (len, _))| stamp - *s < *len);
        let (dev, sector) = match known {
            Some((s, (_, seen))) => seen.map(|(d, first)| (d, first.wrapping_add(stamp - s)))?,
            None if stamp >> 63 == 1 => {
                let index = ((stamp >> 48) & 0x7fff) as u32;
                (*self.by_index.get(&index)?, stamp & ((1 << 48) - 1))
            }
            None => return None,
        };
        Some((self.images.get(&dev).copied().unwrap_or(dev), sector))
    }

    /// A run of data as pieces whose origins count up with the sectors:
    /// (offset into the run, length, origin of the first), None where the
    /// stamps name nothing. A counting run costs one piece per known stamp
    /// run it crosses, not one per sector.
    fn run_origins(&self, run: Run, out: &mut Vec<(u64, u64, Option<Origin>)>) {
        let mut push = |offset: u64, len: u64, origin: Option<Origin>| match out.last_mut() {
            Some((o, l, prev))
                if *o + *l == offset
                    && match (*prev, origin) {
                        (None, None) => true,
                        (Some(p), Some(n)) => p.0 == n.0 && p.1.wrapping_add(*l) == n.1,
                        _ => false,
                    } =>
            {
                *l += len
            }
            _ => out.push((offset, len, origin)),
        };
        if run.step == 0 || run.len == 1 {
            // One stamp again and again: the origin cannot count up.
            match self.origin(run.first) {
                None => push(0, run.len, None),
                Some(origin) => (0..run.len).for_each(|i| push(i, 1, Some(origin))),
            }
            return;
        }
        let mut i = 0;
        while i < run.len {
            let stamp = run.at(i);
            let (len, origin) = self.origin_stretch(stamp, run.len - i);
            push(i, len, origin);
            i += len;
        }
    }

    /// From `stamp`, how many counting stamps (at most `max`) share one
    /// rule for their origin, and the origin of the first.
    fn origin_stretch(&self, stamp: Stamp, max: u64) -> (u64, Option<Origin>) {
        let before = self.known_before(stamp);
        let origin = self.origin_after(stamp, before);
        if let Some((s, (len, _))) = before.filter(|(s, (len, _))| stamp - *s < *len) {
            return ((s + len - stamp).min(max), origin);
        }
        // Up to the next known run, and, for the pattern, to the end of
        // the device index's stamp space.
        let next_known = match self.stamps.last() {
            Some((last, _)) if last > stamp => {
                self.stamps.first_at_or_after(stamp).unwrap_or(u64::MAX)
            }
            _ => u64::MAX,
        };
        let mut len = next_known.saturating_sub(stamp).min(max);
        if stamp >> 63 == 1 {
            let space_end = (stamp | ((1 << 48) - 1)).saturating_add(1);
            len = len.min(space_end.wrapping_sub(stamp).max(1));
        } else {
            len = len.min(((1 << 63) - stamp).max(1));
        }
        (len.max(1), origin)
    }

    /// A write's data as pieces of counting origins (see `run_origins`).
    fn pieces(&self, data: &Stamps) -> Vec<(u64, u64, Option<Origin>)> {
        let mut out: Vec<(u64, u64, Option<Origin>)> = Vec::new();
        for (offset, run) in data.iter_runs() {
            let mut part = Vec::new();
            self.run_origins(run, &mut part);
            for (o, len, origin) in part {
                let continues = out.last().is_some_and(|(po, pl, prev)| {
                    po + pl == offset + o
                        && match (*prev, origin) {
                            (None, None) => true,
                            (Some(p), Some(n)) => p.0 == n.0 && p.1.wrapping_add(*pl) == n.1,
                            _ => false,
                        }
                });
                match out.last_mut() {
                    Some(last) if continues => last.1 += len,
                    _ => out.push((offset + o, len, origin)),
                }
            }
        }
        out
    }

    /// A write's data as runs of consecutive original sectors:
    /// (offset into the write, length, origin of the first sector).
    /// Sectors without identity are in no run.
    fn runs(&self, data: &Stamps) -> Vec<(u64, u64, Origin)> {
        self.origins(data)
            .into_iter()
            .filter_map(|(offset, len, origin)| Some((offset, len, origin?)))
            .collect()
    }

    /// What each sector of `data` is a copy of, as far as the data says
    /// (for the classification of device faults, `device_faults.rs`).
    pub fn identify(&self, data: &Stamps) -> Vec<Option<Origin>> {
        let mut out = Vec::with_capacity(data.len() as usize);
        for (_, len, origin) in self.origins(data) {
            out.extend((0..len).map(|i| origin.map(|(d, s)| (d, s.wrapping_add(i)))));
        }
        out
    }

    /// Origins of a write's sectors as counting pieces; sectors without
    /// identity take the one their neighbours agree on.
    fn origins(&self, data: &Stamps) -> Vec<(u64, u64, Option<Origin>)> {
        let known = self.pieces(data);
        let mut bases = known
            .iter()
            .filter_map(|(i, _, o)| o.map(|(d, s)| (d, s.wrapping_sub(*i))));
        let Some(base) = bases.next() else {
            return known;
        };
        if bases.any(|b| b != base) {
            return known;
        }
        vec![(0, data.len(), Some(base))]
    }

    /// One write the engine issued: rules 1 and 2.
    pub fn engine_write(
        &mut self,
        now: u64,
        dev: DevT,
        sector: u64,
        data: &Stamps,
        count: u64,
    ) -> Result<(), String> {
        self.writes_judged += 1;
        if !self.watches.is_empty() {
            self.meet_watches(now, dev, sector, count);
        }
        self.check_inside(dev, sector, count)?;
        let judged = self.offered_once(dev, sector, count);
        if judged && !self.overflowed.is_empty() {
            self.check_no_region_after_overflow(dev, sector, count)?;
        }
        if let Some(orig) = self.one_origin(data) {
            let run = Extent {
                len: data.len(),
                orig,
            };
            return self.store(dev, sector, run, judged);
        }
        for (offset, len, orig) in self.runs(data) {
            self.store(dev, sector + offset, Extent { len, orig }, judged)?;
        }
        Ok(())
    }

    /// The origin of the first sector when the whole of `data` is one
    /// counting run whose stamps name consecutive sectors (a chunk of the
    /// pattern or of one user write: most engine writes). `origins` would
    /// give the same single piece; this finds it with one search and no
    /// allocation; none when it continues the last write's stretch.
    fn one_origin(&mut self, data: &Stamps) -> Option<Origin> {
        let mut runs = data.iter_runs();
        let (_, run) = runs.next()?;
        if runs.next().is_some() || (run.step != 1 && run.len != 1) {
            return None;
        }
        let (len, origin) = match self.stretch {
            Some((next, left, origin)) if next == run.first => (left, Some(origin)),
            _ => self.origin_stretch(run.first, u64::MAX),
        };
        let origin = origin.filter(|_| len >= run.len)?;
        let next = run.first.checked_add(run.len);
        self.stretch = next.map(|next| {
            let after = (origin.0, origin.1.wrapping_add(run.len));
            (next, len - run.len, after)
        });
        self.stretch = self.stretch.filter(|(_, left, _)| *left > 0);
        Some(origin)
    }

    /// Rule 2 for one run of a write (when judged), then the run replaces
    /// what was known of its sectors.
    fn store(&mut self, dev: DevT, start: u64, run: Extent, judged: bool) -> Result<(), String> {
        if self.extend_open(dev, start, run) {
            return Ok(());
        }
        self.settle();
        if self.store_fresh(dev, start, run) {
            return Ok(());
        }
        if judged {
            self.judge_run(dev, start, run)?;
        }
        self.forget(dev, start, start + run.len);
        self.insert_copy(dev, start, run);
        Ok(())
    }

    /// The run continues the open copy and ends before the next known copy
    /// starts: it meets no copy, and store_fresh would join it to the open
    /// one. Grow it, at no search.
    fn extend_open(&mut self, dev: DevT, start: u64, run: Extent) -> bool {
        let Some(open) = self.open.as_mut() else {
            return false;
        };
        let continues = open.dev == dev
            && open.start + open.ext.len == start
            && open.ext.at(open.ext.len) == run.orig;
        if !continues || start + run.len > open.limit {
            return false;
        }
        open.ext.len += run.len;
        true
    }

    /// Put the open copy, if any, in the map with the others.
    fn settle(&mut self) {
        if let Some(open) = self.open.take() {
            self.copies.insert((open.dev, open.start), open.ext);
        }
    }

    /// Store a run that meets no known copy, if it does not (the usual
    /// case: a chunk stored into fresh space, bio after bio): nothing to
    /// judge or forget, and one search finds the copy it may continue.
    /// False, with nothing changed, when it meets a known copy.
    fn store_fresh(&mut self, dev: DevT, start: u64, run: Extent) -> bool {
        let end = start + run.len;
        // Copies never overlap: only the last one starting before `end`
        // can reach past `start` without one starting inside the run.
        let last = self.copies.range_mut(..(dev, end)).next_back();
        let last = last.filter(|((d, _), _)| *d == dev);
        match last {
            Some((s, old)) if s.1 + old.len > start => false,
            Some((s, old)) if s.1 + old.len == start && old.at(old.len) == run.orig => {
                old.len += run.len;
                true
            }
            _ => {
                // A new copy: it stays open while the next bios continue
                // it (a chunk is stored in many bios).
                let limit = self.copies.range((dev, end)..).next();
                let limit = limit.filter(|((d, _), _)| *d == dev);
                self.open = Some(Open {
                    dev,
                    start,
                    ext: run,
                    limit: limit.map_or(u64::MAX, |((_, s), _)| *s),
                });
                true
            }
        }
    }

    /// Record a copy; one that continues the copy before it joins it, so
    /// a chunk stored in many bios is one entry.
    fn insert_copy(&mut self, dev: DevT, start: u64, run: Extent) {
        debug_assert!(self.open.is_none(), "settled before changing the copies");
        let before = self.copies.range_mut(..(dev, start)).next_back();
        if let Some(((d, s), old)) = before {
            if *d == dev && s + old.len == start && old.at(old.len) == run.orig {
                old.len += run.len;
                return;
            }
        }
        self.copies.insert((dev, start), run);
    }

    /// Rule 2 for one run: where it meets known copies, they must be
    /// copies of the same sectors. The first mismatch (lowest sector) is
    /// reported.
    fn judge_run(&mut self, dev: DevT, start: u64, run: Extent) -> Result<(), String> {
        let end = start + run.len;
        let mut judged = 0;
        let mut wrong = None;
        for (old_start, old) in self.overlapping(dev, start, end) {
            let lo = start.max(old_start);
            let hi = end.min(old_start + old.len);
            judged += hi - lo;
            // Both sides advance one sector per sector: equal at `lo`
            // means equal over the whole overlap.
            let (held, new) = (old.at(lo - old_start), run.at(lo - start));
            if held != new {
                wrong = Some((lo, held, new));
                break;
            }
        }
        self.sectors_judged += judged;
        let Some((lo, held, new)) = wrong else {
            return Ok(());
        };
        self.last_overwritten = Some((held, lo));
        Err(format!(
            "the engine overwrote {dev}:{lo}, the live copy of {} sector {}, \
             with data of {} sector {} (overlapping regions)",
            held.0, held.1, new.0, new.1
        ))
    }

    /// Known copies that meet [start, end), with their first sector, in
    /// order (an iterator: nothing collected).
    fn overlapping(
        &self,
        dev: DevT,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, Extent)> + '_ {
        debug_assert!(self.open.is_none(), "settled before reading the copies");
        let before = self
            .copies
            .range(..(dev, start))
            .next_back()
            .filter(|((d, s), e)| *d == dev && s + e.len > start);
        let inside = self.copies.range((dev, start)..(dev, end));
        before.into_iter().chain(inside).map(|((_, s), e)| (*s, *e))
    }

    /// The last known copy that starts before `end` and reaches past
    /// `start`: copies never overlap, so those that meet [start, end) are
    /// found from the last down, one search each.
    fn last_meeting(&self, dev: DevT, start: u64, end: u64) -> Option<(u64, Extent)> {
        debug_assert!(self.open.is_none(), "settled before reading the copies");
        self.copies
            .range(..(dev, end))
            .next_back()
            .filter(|((d, s), e)| *d == dev && s + e.len > start)
            .map(|((_, s), e)| (*s, *e))
    }

    /// Drop what is known of [start, end), keeping the parts of runs
    /// outside it. The part of a run before `start` is put back where it
    /// was and no longer meets [start, end); the part after `end` starts
    /// at `end`: neither is found again.
    fn forget(&mut self, dev: DevT, start: u64, end: u64) {
        self.settle();
        while let Some((old_start, old)) = self.last_meeting(dev, start, end) {
            if old_start < start {
                let len = start - old_start;
                self.copies.insert((dev, old_start), Extent { len, ..old });
            } else {
                self.copies.remove(&(dev, old_start));
            }
            let old_end = old_start + old.len;
            if old_end > end {
                let right = Extent {
                    len: old_end - end,
                    orig: old.at(end - old_start),
                };
                self.copies.insert((dev, end), right);
            }
        }
    }

    /// True if no other appended range (live or released) shares a sector
    /// with this write: sectors offered twice are the user's doing.
    pub fn offered_once(&self, dev: DevT, sector: u64, count: u64) -> bool {
        let end = sector.saturating_add(count);
        let meets = |r: &&AppendedRange| r.dev == dev && r.start < end && sector < r.end();
        self.ranges.iter().filter(meets).count() == 1
    }

    /// Mark the watches an engine write of `count` sectors at `sector`,
    /// submitted at `now`, meets.
    fn meet_watches(&mut self, now: u64, dev: DevT, sector: u64, count: u64) {
        let end = sector.saturating_add(count);
        for watch in &mut self.watches {
            if watch.met.is_none() && watch.dev == dev && watch.start < end && sector < watch.end {
                watch.met = Some(now);
            }
        }
    }

    /// Coverage counts for reports.
    pub fn metrics(&self) -> [(String, f64); 2] {
        [
            ("storage_writes_judged".into(), self.writes_judged as f64),
            ("storage_sectors_judged".into(), self.sectors_judged as f64),
        ]
    }

    /// Rule 3: not inside a range appended after its snapshot overflowed
    /// (the write lies inside one range offered once: rule 1 and the
    /// caller checked).
    fn check_no_region_after_overflow(
        &self,
        dev: DevT,
        sector: u64,
        count: u64,
    ) -> Result<(), String> {
        let Some(range) = self.ranges.iter().find(|r| r.holds(dev, sector)) else {
            return Ok(());
        };
        let Some(seen) = range.after_overflow.filter(|_| !range.released) else {
            return Ok(());
        };
        Err(format!(
            "{}: the engine wrote {count} sectors at {dev}:{sector}, in the range \
             ({}, {}) appended after a WAIT_EVENT returned the snapshot's corrupted event with \
             ENOSPC at {seen} ns: after an overflow every region request fails at once, so no \
             region comes from a range appended later",
            super::events::snapshot_name(&range.snapshot),
            range.start,
            range.count
        ))
    }

    /// Rule 1: inside one appended range.
    fn check_inside(&self, dev: DevT, sector: u64, count: u64) -> Result<(), String> {
        let end = sector.saturating_add(count);
        let on_dev = || self.ranges.iter().filter(|r| r.dev == dev);
        if on_dev().any(|r| sector >= r.start && end <= r.end()) {
            return Ok(());
        }
        let what = format!("the engine wrote {count} sectors at {dev}:{sector}");
        match on_dev().find(|r| r.holds(dev, sector)) {
            Some(r) => Err(format!(
                "{what}, running past the end of the appended range ({}, {}) \
                 (a region must lie inside one range)",
                r.start, r.count
            )),
            None => Err(format!("{what}, outside every appended storage range")),
        }
    }
}

/// What the events checker learns of the engine's storage writes.
impl Watches for StorageCheck {
    fn watch(&mut self, id: [u8; 16], dev: DevT, sector: u64, count: u64) {
        self.unwatch(id);
        let end = sector.saturating_add(count);
        self.watches.push(Watch {
            id,
            dev,
            start: sector,
            end,
            met: None,
        });
    }

    fn seen(&self, id: [u8; 16]) -> Option<u64> {
        self.watches.iter().find(|w| w.id == id).and_then(|w| w.met)
    }

    fn unwatch(&mut self, id: [u8; 16]) {
        self.watches.retain(|w| w.id != id);
    }

    fn offered_once(&self, dev: DevT, sector: u64, count: u64) -> bool {
        StorageCheck::offered_once(self, dev, sector, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::pattern_stamp;

    const ORIG: DevT = DevT(7 << 20);
    const STORE: DevT = DevT(7 << 20 | 1);
    const IMAGE: DevT = DevT(252 << 20);
    const S1: [u8; 16] = [1; 16];
    const S2: [u8; 16] = [2; 16];

    /// Chunked fresh runs answer as one sorted list would, across chunk
    /// edges and after drains (the first chunk kept, empty).
    #[test]
    fn fresh_runs_find_what_a_sorted_list_finds() {
        let mut fresh = FreshRuns::default();
        let mut model: Vec<Stamp> = Vec::new();
        let mut older = BTreeMap::new();
        let mut next = 10;
        for round in 0..3u64 {
            for i in 0..(FRESH_CHUNK as u64 * 2 + round * 7) {
                next += 1 + (i * 7 + round) % 5;
                fresh.push((next, (1, None)));
                model.push(next);
            }
            assert_eq!(fresh.last().map(|r| r.0), model.last().copied());
            for stamp in model[0] - 2..next + 3 {
                let before = model.iter().rev().find(|s| **s <= stamp).copied();
                let after = model.iter().find(|s| **s >= stamp).copied();
                assert_eq!(fresh.at_or_before(stamp).map(|r| r.0), before, "{stamp}");
                assert_eq!(fresh.first_at_or_after(stamp), after, "{stamp}");
            }
            fresh.drain_into(&mut older);
            assert!(older.keys().copied().eq(model.iter().copied()));
            assert_eq!(fresh.last(), None);
            assert_eq!(fresh.at_or_before(u64::MAX), None);
            assert_eq!(fresh.first_at_or_after(0), None);
            older.clear();
            model.clear();
        }
    }

    fn check() -> StorageCheck {
        let mut c = StorageCheck::default();
        c.add_device(ORIG, 0);
        c.add_device(STORE, 1);
        c
    }

    /// The pattern of original sectors [sector, sector + count).
    fn chunk(sector: u64, count: u64) -> Vec<Stamp> {
        (sector..sector + count)
            .map(|s| pattern_stamp(0, s))
            .collect()
    }

    fn write(c: &mut StorageCheck, at: u64, data: &[Stamp]) -> Result<(), String> {
        c.engine_write(0, STORE, at, &Stamps::from_slice(data), data.len() as u64)
    }

    /// Random engine writes (one chunk of the pattern, two chunks of
    /// unrelated sectors, or zeros) against a plain map of storage sector
    /// -> origin: the same verdicts, the same sector blamed, and the same
    /// copies held afterwards, sector by sector.
    #[test]
    fn copies_agree_with_a_map_of_sectors() {
        let mut rng = crate::rng::SimRng::new(6);
        for _ in 0..300 {
            let mut c = check();
            c.appended(S1, STORE, 0, 256);
            let mut model: BTreeMap<u64, Origin> = BTreeMap::new();
            let mut next = (0, 0);
            for _ in 0..40 {
                let at = rng.below(200);
                // Mostly one of two mappings of storage to original
                // sectors, so that rewrites of live copies often agree
                // and split the runs they meet; one write in four
                // continues the last (a chunk stored bio after bio: the
                // open copy grows).
                let (at, a) = match rng.below(4) {
                    0 if next.0 < 200 => next,
                    _ => match rng.below(3) {
                        0 => (at, rng.below(64)),
                        shift => (at, at + shift),
                    },
                };
                let n1 = 1 + rng.below(24);
                let mut data = chunk(a, n1);
                match rng.below(4) {
                    0 => data.extend(chunk(100 + rng.below(64), 1 + rng.below(24))),
                    1 => data = vec![0; n1 as usize],
                    _ => {}
                }
                let data = &data[..data.len().min(256 - at as usize)];
                next = (at + n1.min(data.len() as u64), a + n1);
                let expected = naive_write(&mut model, at, data);
                let got = write(&mut c, at, data);
                assert_eq!(got.is_err(), expected.is_some(), "{got:?} vs {expected:?}");
                if let Some(blamed) = expected {
                    assert_eq!(c.last_overwritten.map(|l| l.1), Some(blamed));
                }
                assert_eq!(held_sectors(&c), model);
            }
        }
    }

    /// The model of rule 2 and the copies: run by run (a run is a stretch
    /// of consecutive original sectors), a run whose sectors meet a known
    /// copy of another sector fails at the first such sector and is not
    /// stored; zeros name nothing and change nothing.
    fn naive_write(model: &mut BTreeMap<u64, Origin>, at: u64, data: &[Stamp]) -> Option<u64> {
        let origin = |s: Stamp| (s != 0).then_some((ORIG, s & ((1 << 48) - 1)));
        let mut i = 0;
        while i < data.len() {
            let Some(first) = origin(data[i]) else {
                i += 1;
                continue;
            };
            let len = (i..data.len())
                .take_while(|&j| origin(data[j]) == Some((ORIG, first.1 + (j - i) as u64)))
                .count();
            let sectors = at + i as u64..at + (i + len) as u64;
            let wrong = sectors.clone().find(|s| {
                model
                    .get(s)
                    .is_some_and(|o| *o != (ORIG, first.1 + s - at - i as u64))
            });
            if wrong.is_some() {
                return wrong;
            }
            for s in sectors {
                model.insert(s, (ORIG, first.1 + s - at - i as u64));
            }
            i += len;
        }
        None
    }

    /// The sectors the copies hold, the open one included; asserts that
    /// no two copies share a sector.
    fn held_sectors(c: &StorageCheck) -> BTreeMap<u64, Origin> {
        let open = c.open.map(|o| ((o.dev, o.start), o.ext));
        let copies = c.copies.iter().map(|(k, e)| (*k, *e)).chain(open);
        let held: Vec<(u64, Origin)> = copies
            .flat_map(|((_, s), e)| (0..e.len).map(move |i| (s + i, e.at(i))))
            .collect();
        let sectors = held.len();
        let held: BTreeMap<u64, Origin> = held.into_iter().collect();
        assert_eq!(held.len(), sectors, "copies overlap");
        held
    }

    /// Random user writes (fresh counting stamps past every stamp seen,
    /// counting runs over stamps seen before, one stamp on several
    /// sectors) against a plain map of stamp -> origin (the first place a
    /// stamp was written; none once written anywhere else): every stamp
    /// names the same origin, and `origin_stretch` never reaches past a
    /// stamp whose origin does not count on from the first.
    #[test]
    fn stamp_names_agree_with_a_map_of_stamps() {
        let mut rng = crate::rng::SimRng::new(9);
        let mut fresh_runs = 0;
        for _ in 0..100 {
            let mut c = check();
            let mut model: BTreeMap<Stamp, Option<Origin>> = BTreeMap::new();
            let mut top = 1;
            for _ in 0..40 {
                let sector = rng.below(64);
                let len = 1 + rng.below(12);
                let (first, step) = match rng.below(5) {
                    0 | 1 => (top, 1),
                    2 => (1 + rng.below(top), 0),
                    _ => (1 + rng.below(top), 1),
                };
                fresh_runs += u64::from(first == top);
                let stamps: Vec<Stamp> = (0..len).map(|i| first + i * step).collect();
                for (i, stamp) in stamps.iter().enumerate() {
                    let here = (ORIG, sector + i as u64);
                    let named = if step == 0 && len > 1 {
                        None
                    } else {
                        Some(here)
                    };
                    let seen = model.entry(*stamp).or_insert(named);
                    if *seen != named {
                        *seen = None;
                    }
                }
                top = top.max(first + len * step + 1);
                c.user_write(ORIG, sector, &Stamps::from_slice(&stamps));
                for stamp in 1..top + 2 {
                    let expected = model.get(&stamp).copied().flatten();
                    assert_eq!(c.origin(stamp), expected, "stamp {stamp}");
                    let (len, origin) = c.origin_stretch(stamp, 64);
                    assert_eq!(origin, expected, "stamp {stamp}");
                    for i in 1..len {
                        let counted = origin.map(|(d, s)| (d, s + i));
                        let named = model.get(&(stamp + i)).copied().flatten();
                        assert_eq!(
                            named,
                            counted,
                            "stamp {} in the stretch of {stamp}",
                            stamp + i
                        );
                    }
                }
            }
        }
        assert!(fresh_runs > 1000, "{fresh_runs} fresh runs");
    }

    /// `one_origin` (with the stretch it remembers from the last engine
    /// write) against the plain map of stamps, on engine writes that
    /// mostly continue the last one's stamps, between random user writes
    /// that change what the stamps name.
    #[test]
    fn one_origin_agrees_with_a_map_of_stamps() {
        let mut rng = crate::rng::SimRng::new(11);
        let (mut found, mut remembered) = (0, 0);
        for _ in 0..100 {
            let mut c = check();
            let mut model: BTreeMap<Stamp, Option<Origin>> = BTreeMap::new();
            let (mut top, mut next) = (1, 1);
            for _ in 0..60 {
                if rng.below(4) == 0 {
                    let sector = rng.below(64);
                    let first = if rng.below(2) == 0 {
                        top
                    } else {
                        1 + rng.below(top)
                    };
                    let len = 1 + rng.below(24);
                    for i in 0..len {
                        let named = Some((ORIG, sector + i));
                        let seen = model.entry(first + i).or_insert(named);
                        if *seen != named {
                            *seen = None;
                        }
                    }
                    top = top.max(first + len + 1);
                    let stamps: Vec<Stamp> = (first..first + len).collect();
                    c.user_write(ORIG, sector, &Stamps::from_slice(&stamps));
                    continue;
                }
                let first = if rng.below(4) == 0 {
                    1 + rng.below(top)
                } else {
                    next
                };
                let len = 1 + rng.below(4);
                let origin = model.get(&first).copied().flatten();
                let counts = (0..len).all(|i| {
                    let named = model.get(&(first + i)).copied().flatten();
                    named.is_some() && named == origin.map(|(d, s)| (d, s + i))
                });
                // What one search answers (runs cut apart may miss a
                // stamp range that counts on; engine_write then takes the
                // slow path): one_origin must answer the same.
                let searched = match c.origin_stretch(first, len) {
                    (l, Some(o)) if l == len => Some(o),
                    _ => None,
                };
                remembered += u64::from(c.stretch.is_some_and(|(n, _, _)| n == first));
                let stamps: Vec<Stamp> = (first..first + len).collect();
                let got = c.one_origin(&Stamps::from_slice(&stamps));
                assert_eq!(got, searched, "stamps {first}..{}", first + len);
                if got.is_some() {
                    assert!(counts && got == origin, "stamps {first}..{}", first + len);
                }
                found += u64::from(got.is_some());
                next = first + len;
            }
        }
        assert!(
            found > 500 && remembered > 500,
            "{found} found, {remembered} remembered"
        );
    }

    #[test]
    fn writes_inside_one_range_pass_and_outside_fail() {
        let mut c = check();
        c.appended(S1, STORE, 1024, 512);
        assert!(write(&mut c, 1024, &chunk(0, 512)).is_ok());
        let err = write(&mut c, 2048, &chunk(512, 8)).unwrap_err();
        assert!(err.contains("outside every appended"), "{err}");
        let err = c
            .engine_write(0, ORIG, 0, &Stamps::from_slice(&chunk(0, 8)), 8)
            .unwrap_err();
        assert!(err.contains("outside every appended"), "{err}");
        assert_eq!(c.writes_judged, 3);
    }

    #[test]
    fn a_write_straddling_into_the_next_adjacent_range_fails() {
        let mut c = check();
        c.appended(S1, STORE, 0, 1000);
        c.appended(S1, STORE, 1000, 1000);
        assert!(write(&mut c, 0, &chunk(0, 128)).is_ok());
        let err = write(&mut c, 896, &chunk(128, 128)).unwrap_err();
        assert!(
            err.contains("running past the end of the appended range (0, 1000)"),
            "{err}"
        );
    }

    #[test]
    fn overlapping_regions_fail() {
        let mut c = check();
        c.appended(S1, STORE, 0, 4096);
        assert!(write(&mut c, 0, &chunk(0, 128)).is_ok());
        let err = write(&mut c, 120, &chunk(128, 128)).unwrap_err();
        assert!(err.contains("live copy of 7:0 sector 120"), "{err}");
        assert!(err.contains("data of 7:0 sector 128"), "{err}");
        assert_eq!(c.sectors_judged, 8);
    }

    #[test]
    fn a_dirty_chunk_stored_back_into_its_region_passes() {
        let mut c = check();
        c.appended(S1, STORE, 0, 4096);
        c.bind_image(IMAGE, ORIG);
        assert!(write(&mut c, 0, &chunk(0, 8)).is_ok());
        // The user wrote the image (sectors 2 and 3), then eviction stores
        // the chunk again: same origin sectors, newer data.
        c.user_write(IMAGE, 2, &Stamps::from_slice(&[41, 42]));
        let mut newer = chunk(0, 8);
        newer[2] = 41;
        newer[3] = 42;
        assert!(write(&mut c, 0, &newer).is_ok());
        assert_eq!(c.sectors_judged, 8);
        // An image write of another sector stored here is an overlap.
        c.user_write(IMAGE, 100, &Stamps::from_slice(&[43]));
        newer[4] = 43;
        let err = write(&mut c, 0, &newer).unwrap_err();
        assert!(err.contains("data of 7:0 sector 100"), "{err}");
    }

    /// Rule 3: once the user saw S1 overflow, a range appended to it later
    /// must stay unwritten; ranges appended before, other snapshots'
    /// ranges, and the range after S1 is destroyed and reused are not
    /// judged, nor is S1 once a racing region request made it unsure.
    #[test]
    fn a_write_into_a_range_appended_after_the_overflow_fails() {
        let mut c = check();
        c.appended(S1, STORE, 0, 8);
        c.overflow_seen(S1, 5_000);
        c.appended(S1, STORE, 8, 64);
        c.appended(S2, STORE, 72, 64);
        assert!(write(&mut c, 0, &chunk(0, 8)).is_ok());
        assert!(write(&mut c, 72, &chunk(8, 8)).is_ok());
        let err = write(&mut c, 16, &chunk(16, 8)).unwrap_err();
        assert_eq!(
            err,
            "snapshot 01010101: the engine wrote 8 sectors at 7:1:16, in the range (8, 64) \
             appended after a WAIT_EVENT returned the snapshot's corrupted event with ENOSPC \
             at 5000 ns: after an overflow every region request fails at once, so no region \
             comes from a range appended later"
        );
        // Destroyed, the range is no longer S1's; appended again to S2 it is
        // forgotten and may be written.
        c.destroyed(S1);
        assert!(write(&mut c, 24, &chunk(24, 8)).is_ok());
        c.appended(S2, STORE, 8, 64);
        assert!(write(&mut c, 32, &chunk(32, 8)).is_ok());
        // A region request in reclaim when the APPEND began: unsure.
        let mut c = check();
        c.overflow_seen(S1, 5_000);
        c.appended(S1, STORE, 0, 64);
        c.overflow_unsure(S1);
        c.appended(S1, STORE, 64, 64);
        assert!(write(&mut c, 0, &chunk(0, 8)).is_ok());
        assert!(write(&mut c, 64, &chunk(8, 8)).is_ok());
    }

    #[test]
    fn zeros_take_the_identity_of_their_neighbours() {
        let mut c = check();
        c.appended(S1, STORE, 0, 4096);
        c.user_write(ORIG, 7, &Stamps::from_slice(&[5]));
        // A zero-filled original: only sector 7 was written by a user.
        let mut first = vec![0; 8];
        first[7] = 5;
        assert!(write(&mut c, 0, &first).is_ok());
        // Another chunk (sectors 8..16, user stamp at 8) lands on sector 7.
        c.user_write(ORIG, 8, &Stamps::from_slice(&[6]));
        let mut second = vec![0; 8];
        second[0] = 6;
        let err = write(&mut c, 7, &second).unwrap_err();
        assert!(err.contains("live copy of 7:0 sector 7"), "{err}");
        assert!(err.contains("data of 7:0 sector 8"), "{err}");
        // All zeros: no identity, nothing judged.
        assert!(write(&mut c, 0, &[0; 8]).is_ok());
    }

    #[test]
    fn overwrite_after_destroy_and_reappend_is_allowed() {
        let mut c = check();
        c.appended(S1, STORE, 0, 4096);
        assert!(write(&mut c, 0, &chunk(0, 128)).is_ok());
        // Still live: S2 may not take it, even appended elsewhere.
        c.destroyed(S2);
        assert!(write(&mut c, 0, &chunk(256, 128)).is_err());
        c.destroyed(S1);
        c.appended(S2, STORE, 0, 4096);
        assert!(write(&mut c, 0, &chunk(256, 128)).is_ok());
        assert!(write(&mut c, 64, &chunk(512, 8)).is_err());
    }

    #[test]
    fn runs_split_and_keep_what_lies_outside_a_rewrite() {
        let mut c = check();
        c.appended(S1, STORE, 0, 4096);
        assert!(write(&mut c, 0, &chunk(0, 128)).is_ok());
        assert!(write(&mut c, 32, &chunk(32, 8)).is_ok());
        assert_eq!(c.sectors_judged, 8);
        assert!(write(&mut c, 10, &chunk(10, 4)).is_ok());
        assert!(write(&mut c, 38, &chunk(38, 4)).is_ok());
        let err = write(&mut c, 100, &chunk(500, 4)).unwrap_err();
        assert!(
            err.contains("overwrote 7:1:100, the live copy of 7:0 sector 100"),
            "{err}"
        );
        let err = write(&mut c, 127, &chunk(1000, 2)).unwrap_err();
        assert!(err.contains("live copy of 7:0 sector 127"), "{err}");
        assert_eq!(c.sectors_judged, 8 + 4 + 4 + 4 + 1);
    }

    #[test]
    fn sectors_offered_twice_are_not_judged() {
        let mut c = check();
        c.appended(S1, STORE, 0, 4096);
        c.appended(S1, STORE, 0, 4096);
        assert!(write(&mut c, 0, &chunk(0, 128)).is_ok());
        assert!(write(&mut c, 0, &chunk(128, 128)).is_ok());
        assert_eq!(c.sectors_judged, 0);
    }

    #[test]
    fn copied_user_data_has_no_identity() {
        let mut c = check();
        c.appended(S1, STORE, 0, 4096);
        c.user_write(ORIG, 0, &Stamps::from_slice(&[9]));
        c.user_write(ORIG, 64, &Stamps::from_slice(&[9]));
        assert!(write(&mut c, 0, &[9]).is_ok());
        assert!(write(&mut c, 0, &[pattern_stamp(0, 500)]).is_ok());
        assert_eq!(c.sectors_judged, 0);
    }

    /// Rule 4's watches: the first engine write that meets the watched
    /// sectors gives its submission time; writes beside them, and writes
    /// before the watch began, do not.
    #[test]
    fn a_watch_reports_when_an_engine_write_met_it() {
        let id = [3; 16];
        let mut c = check();
        c.appended(id, STORE, 0, 4096);
        assert!(Watches::offered_once(&c, STORE, 512, 512));
        let write_at = |c: &mut StorageCheck, now: u64, at: u64, data: &[Stamp]| {
            c.engine_write(now, STORE, at, &Stamps::from_slice(data), data.len() as u64)
        };
        write_at(&mut c, 50, 512, &chunk(0, 8)).unwrap();
        c.watch(id, STORE, 512, 512);
        assert_eq!(c.seen(id), None, "written before the watch: not timed");
        write_at(&mut c, 100, 0, &chunk(8, 512)).unwrap();
        assert_eq!(c.seen(id), None, "ends where the watch begins");
        write_at(&mut c, 200, 1016, &chunk(600, 8)).unwrap();
        write_at(&mut c, 300, 520, &chunk(700, 8)).unwrap();
        assert_eq!(c.seen(id), Some(200));
        c.unwatch(id);
        assert_eq!(c.seen(id), None);
        c.appended([4; 16], STORE, 1000, 8);
        assert!(!Watches::offered_once(&c, STORE, 512, 512));
    }
}
