//! The `fs_consistency` checker: filesystem consistency of TAKE.
//!
//! Rule: for an original with the filesystem model, each image sector must
//! hold a write the filesystem had accepted (its `fs_write` returned)
//! before the freeze began, since the freeze syncs the page cache: the
//! allowed values are the last write accepted before the TAKE ioctl
//! started, plus every write accepted between that start and the moment
//! the filesystem was frozen (or the end of TAKE, if nobody froze it).
//! Being merely on the device at TAKE is not enough: that is the
//! point-in-time oracle's block-level rule, and a TAKE that forgets to
//! freeze passes it.
//!
//! What it learns, and from where: accepted writes, freezes and data lost
//! to injected writeback errors from the filesystem model's own record
//! (`fs::FsRecord`); TAKE windows from the Take step; image reads and
//! writes from the block layer. Never from the engine.
//!
//! Not judged, because nothing is guaranteed there: sectors the fs never
//! accepted a write for before the freeze; a TAKE during which the fs
//! ignored a freeze (`fs_ignores_freeze`: the fs record shows no sync) or
//! during which the device refused to freeze (`freeze_fails`); sectors
//! whose writeback failed with an injected error; sectors written below
//! the filesystem (raw block writes, recognised by stamps the fs never
//! accepted); and image sectors the image itself was written at.
//!
//! Device faults: a wrong sector that a silent data fault the sim injected
//! explains (the oracle's damage record: a lost, corrupted or misdirected
//! write of that sector's copy since the TAKE) is undetected corruption
//! caused by a device fault, reported as such (`device_faults.rs`); any
//! other wrong sector of the same read still fails as the engine's.

use std::collections::{BTreeMap, BTreeSet};

use blksnap_core::kernel::{Bio, BioOp, BioResult, DevT, Stamp, Stamps};

use crate::fs::{Accepted, FsRecord};
use crate::kernel::Sim;

/// An image whose original has a filesystem, as the Take step bound it.
#[derive(Clone, Copy, Debug)]
struct Binding {
    orig: DevT,
    take_start: u64,
    take_end: u64,
}

#[derive(Default)]
pub struct FsTake {
    images: BTreeMap<DevT, Binding>,
    /// Image sectors the image itself was written at.
    image_written: Ranges,
    /// Original sectors written below the filesystem.
    raw_written: Ranges,
    /// Image sectors judged against the filesystem's record (coverage).
    pub sectors_judged: u64,
}

/// How one TAKE window is judged, from the filesystem's record.
#[derive(Debug, PartialEq)]
enum Window {
    /// Values accepted up to this time (the freeze began, or TAKE ended).
    Until(u64),
    /// The filesystem gave no guarantee.
    NotJudged,
}

impl FsTake {
    /// A successful TAKE ran in [start, end]: `pairs` are (original, image).
    pub fn taken(&mut self, pairs: &[(DevT, DevT)], start: u64, end: u64) {
        for &(orig, image) in pairs {
            // A new image may reuse the number of one that is gone.
            self.image_written.forget(image);
            self.images.insert(
                image,
                Binding {
                    orig,
                    take_start: start,
                    take_end: end,
                },
            );
        }
    }

    /// A user write starts: note writes to images and below a filesystem.
    fn write_submitted(&mut self, bio: &Bio, fs: Option<&FsRecord>) {
        if self.images.contains_key(&bio.dev) {
            let end = bio.sector.saturating_add(bio.sectors);
            self.image_written.insert(bio.dev, bio.sector, end);
            return;
        }
        let Some(record) = fs else { return };
        // One walk over the bio's span in the record's ranges (a search
        // per sector was a third of this checker's cost, issue 10), a
        // stretch of one range at a time.
        let end = bio.sector + bio.data.len();
        let mut accepted = Walk::new(record.accepted_from(bio.sector));
        let mut sector = bio.sector;
        while sector < end {
            let (held, edge) = accepted.edge(sector);
            let to = edge.min(end);
            let data = bio.data.slice(sector - bio.sector, to - bio.sector);
            match held {
                Some((start, range)) => self.note_unknown(bio.dev, sector, &data, range, start),
                None => self.raw_written.insert(bio.dev, sector, to),
            }
            sector = to;
        }
    }

    /// Note as raw the sectors of `data`, written at `sector` inside the
    /// accepted range that starts at `start`, that hold none of its writes.
    fn note_unknown(
        &mut self,
        dev: DevT,
        sector: u64,
        data: &Stamps,
        range: &Accepted,
        start: u64,
    ) {
        let offset = sector - start;
        let len = data.len();
        // A writeback carries one write whole, usually the newest: one
        // comparison of runs, and no sector to look at.
        let mut writes = range.writes().iter().rev();
        if writes.any(|(_, write)| write.slice(offset, offset + len) == *data) {
            return;
        }
        for (i, stamp) in (0..len).zip(data.iter()) {
            if !has_stamp(range, offset + i, stamp) {
                self.raw_written.insert(dev, sector + i, sector + i + 1);
            }
        }
    }

    /// Judge one successful image read against the original's fs record.
    /// `record_of` gives an original's fs record and whether its device
    /// refuses to freeze (`None`: no filesystem); only the bound original's
    /// is asked for, so no map of every device is built per read (issue 10).
    /// `device_fault` names the injected data fault that explains a wrong
    /// image sector, if one does; those are collected in `by_fault`.
    fn judge_read<'r>(
        &mut self,
        bio: &Bio,
        data: &Stamps,
        record_of: impl FnOnce(DevT) -> Option<(&'r FsRecord, bool)>,
        device_fault: &dyn Fn(DevT, u64) -> Option<String>,
        by_fault: &mut Vec<String>,
    ) -> Result<(), String> {
        let Some(binding) = self.images.get(&bio.dev).copied() else {
            return Ok(());
        };
        let Some((record, freeze_fails)) = record_of(binding.orig) else {
            return Ok(());
        };
        if freeze_fails {
            return Ok(());
        }
        let Window::Until(until) = window(record, binding.take_start, binding.take_end) else {
            return Ok(());
        };
        // The read's sectors count up, so each record is walked once over
        // the read's range, in step with them, instead of searched per
        // sector (issue 10: this loop was most of an fs run's checking),
        // and judged by stretches over which no record changes.
        // Open-ended: the walks are lazy and stop where the data does.
        let mut image_written = Walk::new(self.image_written.from(bio.dev, bio.sector));
        let mut raw_written = Walk::new(self.raw_written.from(binding.orig, bio.sector));
        let mut lost = Walk::new(record.lost.range(bio.sector..).map(|&s| (s, s + 1, ())));
        let mut accepted = Walk::new(record.accepted_from(bio.sector));
        let end = bio.sector + data.len();
        let mut sector = bio.sector;
        while sector < end {
            let skips = [
                image_written.edge(sector),
                raw_written.edge(sector),
                lost.edge(sector),
            ];
            // Written on the image, below the fs, or lost: not judged.
            if let Some(past) = skips
                .iter()
                .filter(|(on, _)| on.is_some())
                .map(|e| e.1)
                .max()
            {
                sector = past.min(end);
                continue;
            }
            let (held, edge) = accepted.edge(sector);
            let to = skips.iter().map(|e| e.1).fold(edge, u64::min).min(end);
            if let Some((start, range)) = held {
                let stretch = Stretch {
                    image: bio.dev,
                    sector,
                    got: data.slice(sector - bio.sector, to - bio.sector),
                    range,
                    offset: sector - start,
                };
                let judged = &mut self.sectors_judged;
                judge_stretch(
                    &stretch,
                    record,
                    binding,
                    until,
                    device_fault,
                    by_fault,
                    judged,
                )?;
            }
            sector = to;
        }
        Ok(())
    }
}

/// A stretch of an image read inside one accepted range of its original,
/// that nothing else cuts.
struct Stretch<'r> {
    image: DevT,
    /// The stretch's first sector, and what the read returned there.
    sector: u64,
    got: Stamps,
    /// The range, and the offset of the stretch's first sector in it.
    range: &'r Accepted,
    offset: u64,
}

/// Judge a stretch of an image read; `judged` counts its judged sectors.
/// Most stretches read one allowed write whole: one comparison of runs;
/// any other is judged sector by sector.
fn judge_stretch(
    stretch: &Stretch,
    record: &FsRecord,
    binding: Binding,
    until: u64,
    device_fault: &dyn Fn(DevT, u64) -> Option<String>,
    by_fault: &mut Vec<String>,
    judged: &mut u64,
) -> Result<(), String> {
    let Stretch {
        image,
        sector: first,
        ref got,
        range,
        offset,
    } = *stretch;
    let writes = &range.writes()[window_writes(range, binding.take_start, until)];
    if writes.is_empty() {
        return Ok(());
    }
    let len = got.len();
    let mut whole = writes
        .iter()
        .map(|(_, write)| write.slice(offset, offset + len));
    if whole.any(|write| write == *got) {
        *judged += len;
        return Ok(());
    }
    for (i, got) in (0..len).zip(got.iter()) {
        let sector = first + i;
        *judged += 1;
        if !writes.iter().any(|(_, write)| write.get(offset + i) == got) {
            let allowed = allowed(record, sector, binding.take_start, until);
            let message = format!(
                "image {} of {} sector {sector}: read {got:#x}, but the filesystem had \
                     accepted {} before the freeze (TAKE {}..{} ns, synced up to {until} ns)",
                image,
                binding.orig,
                show(&allowed),
                binding.take_start,
                binding.take_end,
            );
            match device_fault(image, sector) {
                Some(cause) => by_fault.push(format!(
                    "undetected corruption caused by a device fault: {message}; {cause}"
                )),
                None => return Err(message),
            }
        }
    }
    Ok(())
}

/// How the filesystem stood during the TAKE window [start, end]: a freeze
/// that was on at some point in it bounds the accepted writes at its
/// beginning; one the fs ignored guarantees nothing; none at all (the
/// engine never froze) leaves every write accepted before the end.
fn window(record: &FsRecord, start: u64, end: u64) -> Window {
    // An iterator, walked twice, not a Vec: this runs for every judged read.
    let mut overlapping = record
        .freezes
        .iter()
        .filter(|f| f.begun <= end && f.thawed.is_none_or(|t| t >= start));
    if overlapping.clone().any(|f| !f.honoured) {
        return Window::NotJudged;
    }
    match overlapping.next() {
        Some(freeze) => Window::Until(freeze.begun.max(start)),
        None => Window::Until(end),
    }
}

/// The values sector may hold: the last write accepted at or before
/// `start`, plus every one accepted in (start, until]. Empty if the fs
/// accepted none by `until`.
fn allowed(record: &FsRecord, sector: u64, start: u64, until: u64) -> BTreeSet<Stamp> {
    let Some((offset, range)) = record.accepted_at(sector) else {
        return BTreeSet::new();
    };
    let writes = &range.writes()[window_writes(range, start, until)];
    writes.iter().map(|(_, data)| data.get(offset)).collect()
}

/// Whether `got` is one of the values [`allowed`] gives (the same rule,
/// with no set built); `None` when it gives none, so the sector is not
/// judged.
#[cfg(test)]
fn admits(record: &FsRecord, sector: u64, start: u64, until: u64, got: Stamp) -> Option<bool> {
    let (offset, range) = record.accepted_at(sector)?;
    let writes = &range.writes()[window_writes(range, start, until)];
    let mut values = writes.iter().map(|(_, data)| data.get(offset));
    (!writes.is_empty()).then(|| values.any(|s| s == got))
}

/// The writes of a range that [`allowed`] takes, by index: times never go
/// down, so the last one at or before `start` and those in (start, until]
/// are one stretch.
fn window_writes(range: &Accepted, start: u64, until: u64) -> std::ops::Range<usize> {
    let writes = range.writes();
    let by_start = writes.partition_point(|(t, _)| *t <= start);
    let by_until = writes.partition_point(|(t, _)| *t <= until);
    by_start.saturating_sub(1)..by_until.max(by_start)
}

/// Whether `stamp` is the data of one of a range's accepted writes at
/// `offset`, newest first: a writeback carries the newest one.
fn has_stamp(range: &Accepted, offset: u64, stamp: Stamp) -> bool {
    let writes = range.writes().iter().rev();
    writes.map(|(_, data)| data.get(offset)).any(|s| s == stamp)
}

/// Disjoint sector ranges per device, never adjacent: (device, start) ->
/// end. A bio's sectors are noted as one range, not one entry each.
#[derive(Default)]
struct Ranges(BTreeMap<(DevT, u64), u64>);

impl Ranges {
    /// Note [from, to) of `dev`, joined with the ranges it touches.
    fn insert(&mut self, dev: DevT, mut from: u64, mut to: u64) {
        if from >= to {
            return;
        }
        if let Some((&(d, start), &end)) = self.0.range(..(dev, from)).next_back() {
            if d == dev && end >= from {
                self.0.remove(&(d, start));
                from = start;
                to = to.max(end);
            }
        }
        while let Some((&key, &end)) = self.0.range((dev, from)..=(dev, to)).next() {
            self.0.remove(&key);
            to = to.max(end);
        }
        self.0.insert((dev, from), to);
    }

    /// Forget every range of `dev`.
    fn forget(&mut self, dev: DevT) {
        self.0.retain(|(d, _), _| *d != dev);
    }

    /// The ranges of `dev` that end past `sector`, in order, as a walk
    /// takes them.
    fn from(&self, dev: DevT, sector: u64) -> impl Iterator<Item = (u64, u64, ())> + '_ {
        let holding = self
            .0
            .range(..(dev, sector))
            .next_back()
            .filter(|(&(d, _), &end)| d == dev && end > sector);
        let rest = self.0.range((dev, sector)..=(dev, u64::MAX));
        holding
            .into_iter()
            .chain(rest)
            .map(|(&(_, start), &end)| (start, end, ()))
    }

    #[cfg(test)]
    fn contains(&self, dev: DevT, sector: u64) -> bool {
        self.from(dev, sector)
            .next()
            .is_some_and(|(s, _, _)| s <= sector)
    }
}

/// Sorted, disjoint (start, end, value) ranges looked up at sectors that
/// only grow: each range is passed once, so a read costs the ranges in
/// its span and not a search per sector.
struct Walk<V, I> {
    /// The first range not passed yet (None: none left), then the rest.
    head: Option<(u64, u64, V)>,
    rest: I,
}

impl<V: Copy, I: Iterator<Item = (u64, u64, V)>> Walk<V, I> {
    fn new(mut ranges: I) -> Self {
        Walk {
            head: ranges.next(),
            rest: ranges,
        }
    }

    /// The start and value of the range holding `sector`, if any, and
    /// where that answer changes: the range's end, or the next range's
    /// start (`u64::MAX`: none left). `sector` is not below the last one
    /// asked for.
    #[inline]
    fn edge(&mut self, sector: u64) -> (Option<(u64, V)>, u64) {
        while self.head.as_ref().is_some_and(|(_, end, _)| *end <= sector) {
            self.head = self.rest.next();
        }
        match self.head {
            Some((start, end, value)) if start <= sector => (Some((start, value)), end),
            Some((start, _, _)) => (None, start),
            None => (None, u64::MAX),
        }
    }
}

fn show(values: &BTreeSet<Stamp>) -> String {
    let list: Vec<String> = values.iter().take(4).map(|v| format!("{v:#x}")).collect();
    format!("{{{}}}", list.join(", "))
}

/// The Take step bound its images.
pub fn taken(sim: &Sim, pairs: &[(DevT, DevT)], start: u64, end: u64) {
    sim.fs_take.borrow_mut().taken(pairs, start, end);
}

/// Block layer hook: a user bio starts. Inline: it runs for every user
/// bio, and most need no more than its first tests.
#[inline]
pub fn submitted(sim: &Sim, bio: &Bio) {
    if bio.op != BioOp::Write {
        return;
    }
    let fs = sim.fs.borrow();
    let record = fs.get(&bio.dev).map(|m| &m.record);
    sim.fs_take.borrow_mut().write_submitted(bio, record);
}

/// Block layer hook: a user bio ended; successful image reads are judged.
/// Inline: every user bio passes its first tests, few go further.
#[inline]
pub fn completed(sim: &Sim, bio: &Bio, result: &BioResult) {
    let (BioOp::Read, Ok(data)) = (bio.op, result) else {
        return;
    };
    // Only reads of an image bound to a filesystem model are judged: any
    // other read returns before the records and the data are gathered.
    if !sim.fs_take.borrow().images.contains_key(&bio.dev) {
        return;
    }
    judge_completed(sim, bio, data);
}

/// Judge a successful read of an image bound to a filesystem model (out
/// of line: its frame is large, and [`completed`] is inlined).
#[inline(never)]
fn judge_completed(sim: &Sim, bio: &Bio, data: &Stamps) {
    let mut by_fault = Vec::new();
    let verdict = {
        let fs = sim.fs.borrow();
        if fs.is_empty() {
            return;
        }
        let devices = sim.blk.devices.borrow();
        let record_of = |orig: DevT| {
            let fails = devices.get(&orig).is_some_and(|d| d.freeze_fails);
            fs.get(&orig).map(|m| (&m.record, fails))
        };
        let now = sim.now();
        let oracle = sim.oracle.borrow();
        let device_fault = |image: DevT, sector: u64| oracle.image_damage_cause(image, sector, now);
        let verdict =
            sim.fs_take
                .borrow_mut()
                .judge_read(bio, data, record_of, &device_fault, &mut by_fault);
        verdict
    };
    // One report per read for what the faults explain: its first sector.
    if let Some(first) = by_fault.first() {
        let more = by_fault.len() - 1;
        let message = match more {
            0 => first.clone(),
            n => format!("{first} (and {n} more sectors of this read)"),
        };
        sim.fail_by_fault("fs_consistency", message, sim.now());
    }
    if let Err(message) = verdict {
        sim.fail("fs_consistency", message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FreezeRecord;

    const ORIG: DevT = DevT(7 << 20);
    const IMAGE: DevT = DevT(252 << 20);

    fn record(accepted: &[(u64, u64, Stamp)], freezes: &[FreezeRecord]) -> FsRecord {
        let mut r = FsRecord::default();
        for &(sector, t, stamp) in accepted {
            r.accept(sector, t, &Stamps::from_slice(&[stamp]));
        }
        r.freezes = freezes.to_vec();
        r
    }

    fn freeze(begun: u64, honoured: bool, thawed: u64) -> FreezeRecord {
        FreezeRecord {
            begun,
            honoured,
            thawed: Some(thawed),
        }
    }

    fn judge(checker: &mut FsTake, r: &FsRecord, sector: u64, got: Stamp) -> Result<(), String> {
        let mut by_fault = Vec::new();
        let verdict = checker.judge_read(
            &Bio::read(IMAGE, sector, 1),
            &Stamps::from_slice(&[got]),
            |dev| (dev == ORIG).then_some((r, false)),
            &|_, _| None,
            &mut by_fault,
        );
        assert!(by_fault.is_empty());
        verdict
    }

    fn taken(start: u64, end: u64) -> FsTake {
        let mut c = FsTake::default();
        c.taken(&[(ORIG, IMAGE)], start, end);
        c
    }

    #[test]
    fn page_cache_data_from_before_take_is_demanded() {
        // Accepted at 10 and 50 (still in the page cache), TAKE 100..200,
        // frozen at 120: the image must show 0x50, not the device's 0x10.
        let r = record(&[(3, 10, 0x10), (3, 50, 0x50)], &[freeze(120, true, 150)]);
        let mut c = taken(100, 200);
        let err = judge(&mut c, &r, 3, 0x10).unwrap_err();
        assert!(err.contains("sector 3") && err.contains("0x50"), "{err}");
        assert!(judge(&mut c, &r, 3, 0x50).is_ok());
        assert_eq!(c.sectors_judged, 2);
    }

    #[test]
    fn a_take_that_never_froze_is_judged_up_to_its_end() {
        let r = record(&[(3, 50, 0x50), (3, 150, 0x150), (3, 300, 0x300)], &[]);
        let mut c = taken(100, 200);
        assert!(judge(&mut c, &r, 3, 0x50).is_ok());
        assert!(judge(&mut c, &r, 3, 0x150).is_ok());
        assert!(judge(&mut c, &r, 3, 0x300).is_err());
        assert!(judge(&mut c, &r, 3, 0).is_err());
    }

    #[test]
    fn writes_accepted_after_the_freeze_began_are_not_allowed() {
        let r = record(
            &[(3, 50, 0x50), (3, 110, 0x110), (3, 130, 0x130)],
            &[freeze(120, true, 150)],
        );
        let mut c = taken(100, 200);
        assert!(judge(&mut c, &r, 3, 0x110).is_ok());
        assert!(judge(&mut c, &r, 3, 0x130).is_err());
    }

    #[test]
    fn a_user_freeze_before_take_bounds_at_take_start() {
        let r = record(&[(3, 50, 0x50)], &[freeze(60, true, 400)]);
        let mut c = taken(100, 200);
        assert!(judge(&mut c, &r, 3, 0x50).is_ok());
        assert!(judge(&mut c, &r, 3, 0).is_err());
    }

    #[test]
    fn an_ignored_freeze_guarantees_nothing() {
        let r = record(&[(3, 50, 0x50)], &[freeze(120, false, 150)]);
        let mut c = taken(100, 200);
        assert!(judge(&mut c, &r, 3, 0).is_ok());
        assert_eq!(c.sectors_judged, 0);
    }

    #[test]
    fn lost_image_and_raw_sectors_are_not_judged() {
        let mut r = record(&[(3, 50, 0x50), (4, 50, 0x51), (5, 50, 0x52)], &[]);
        r.lost.insert(3);
        let mut c = taken(100, 200);
        c.write_submitted(&Bio::write(IMAGE, 4, vec![0x99]), None);
        c.write_submitted(&Bio::write(ORIG, 5, vec![0x77]), Some(&r));
        for sector in 3..6 {
            assert!(judge(&mut c, &r, sector, 0).is_ok());
        }
        assert_eq!(c.sectors_judged, 0);
        // A writeback of what the fs accepted is not a raw write.
        c.write_submitted(&Bio::write(ORIG, 3, vec![0x50]), Some(&r));
        assert!(!c.raw_written.contains(ORIG, 3));
        assert!(c.raw_written.contains(ORIG, 5));
    }

    #[test]
    fn a_wrong_sector_a_device_fault_explains_is_the_faults_and_the_rest_the_engines() {
        let r = record(&[(3, 50, 0x50), (4, 50, 0x51)], &[]);
        let mut c = taken(100, 200);
        let records = |dev| (dev == ORIG).then_some((&r, false));
        let fault = |_: DevT, sector: u64| (sector == 3).then(|| "a lost write".to_string());
        let mut by_fault = Vec::new();
        // Sector 3 wrong and explained, sector 4 right: no engine failure.
        let read = Bio::read(IMAGE, 3, 2);
        assert!(c
            .judge_read(
                &read,
                &Stamps::from_slice(&[0, 0x51]),
                records,
                &fault,
                &mut by_fault
            )
            .is_ok());
        assert_eq!(by_fault.len(), 1);
        assert!(
            by_fault[0].contains("caused by a device fault")
                && by_fault[0].contains("a lost write")
        );
        // Sector 4 wrong too: the fault does not explain it.
        by_fault.clear();
        let err = c
            .judge_read(
                &read,
                &Stamps::from_slice(&[0, 0]),
                records,
                &fault,
                &mut by_fault,
            )
            .unwrap_err();
        assert!(err.contains("sector 4"), "{err}");
        assert_eq!(by_fault.len(), 1);
        assert_eq!(c.sectors_judged, 4);
    }

    #[test]
    fn sectors_the_fs_never_wrote_are_left_to_the_oracle() {
        let r = record(&[(3, 50, 0x50)], &[]);
        let mut c = taken(100, 200);
        assert!(judge(&mut c, &r, 9, 0x1234).is_ok());
        assert_eq!(c.sectors_judged, 0);
    }

    /// A walk answers as a lookup in the map would, for sectors asked in
    /// increasing order with gaps (as the judged sectors of a read skip
    /// the image's own writes).
    #[test]
    fn a_walk_finds_what_a_lookup_finds() {
        let mut rng = crate::rng::SimRng::new(11);
        for _ in 0..500 {
            let map: BTreeMap<u64, u64> = (0..rng.below(12))
                .map(|_| (rng.below(40), rng.below(1000)))
                .collect();
            let from = rng.below(20);
            let mut walk = Walk::new(map.range(from..).map(|(&s, &v)| (s, s + 1, v)));
            let mut sector = from;
            while sector < 50 {
                let (held, edge) = walk.edge(sector);
                assert_eq!(
                    held.map(|(_, v)| v),
                    map.get(&sector).copied(),
                    "{map:?} {sector}"
                );
                // The answer holds up to the edge and not at it.
                let next = map.range(sector + 1..).next().map_or(u64::MAX, |(&s, _)| s);
                let want = if held.is_some() { sector + 1 } else { next };
                assert_eq!(edge, want, "{map:?} {sector}");
                sector += 1 + rng.below(3);
            }
        }
    }

    /// Noted ranges answer as a set of sectors would, walked or asked.
    #[test]
    fn ranges_hold_what_a_set_of_sectors_holds() {
        let mut rng = crate::rng::SimRng::new(13);
        for _ in 0..500 {
            let mut ranges = Ranges::default();
            let mut model = BTreeSet::new();
            for _ in 0..rng.below(8) {
                let dev = [ORIG, IMAGE][rng.below(2) as usize];
                let from = rng.below(40);
                let to = from + rng.below(6);
                ranges.insert(dev, from, to);
                model.extend((from..to).map(|s| (dev, s)));
            }
            let from = rng.below(20);
            let mut walk = Walk::new(ranges.from(ORIG, from));
            for sector in from..50 {
                let want = model.contains(&(ORIG, sector));
                assert_eq!(ranges.contains(ORIG, sector), want, "{model:?} {sector}");
                assert_eq!(walk.edge(sector).0.is_some(), want, "{model:?} {sector}");
            }
        }
    }

    /// The rule on one sector's list of accepted writes, as the record
    /// held them before it held ranges: the model `allowed` must match.
    fn model_allowed(list: &[(u64, Stamp)], start: u64, until: u64) -> BTreeSet<Stamp> {
        let mut out = BTreeSet::new();
        if let Some(&(_, stamp)) = list.iter().rev().find(|(t, _)| *t <= start) {
            out.insert(stamp);
        }
        let window = list.iter().filter(|(t, _)| *t > start && *t <= until);
        out.extend(window.map(|&(_, s)| s));
        out
    }

    /// A read is judged, stretch by stretch, as the rule judges each of
    /// its sectors on per-sector lists: the same sectors judged, the same
    /// first wrong sector; with image writes, raw writes and lost sectors
    /// cutting the stretches.
    #[test]
    fn a_read_is_judged_as_its_sectors_are() {
        let mut rng = crate::rng::SimRng::new(17);
        for _ in 0..3000 {
            let mut r = FsRecord::default();
            let mut model: BTreeMap<u64, Vec<(u64, Stamp)>> = BTreeMap::new();
            let mut t = 0;
            for _ in 0..rng.below(6) {
                t += rng.below(30);
                let sector = rng.below(12);
                let len = rng.range(1, 6);
                let first = rng.below(4) * 100;
                let data: Vec<Stamp> = (0..len).map(|i| first + i + rng.below(2)).collect();
                r.accept(sector, t, &Stamps::from_slice(&data));
                for (s, &stamp) in (sector..).zip(&data) {
                    model.entry(s).or_default().push((t, stamp));
                }
            }
            let lost: BTreeSet<u64> = (0..rng.below(3)).map(|_| rng.below(16)).collect();
            r.lost.extend(&lost);
            let start = rng.below(100);
            let mut c = taken(start, start + rng.below(60));
            let until = c.images[&IMAGE].take_end;
            let mut skipped = lost;
            for _ in 0..rng.below(3) {
                let sector = rng.below(16);
                if rng.below(2) == 0 {
                    c.write_submitted(&Bio::write(IMAGE, sector, vec![1, 2]), None);
                    skipped.extend([sector, sector + 1]);
                } else {
                    let stamp = 100 + rng.below(8);
                    c.write_submitted(&Bio::write(ORIG, sector, vec![stamp]), Some(&r));
                    let list = model.get(&sector).map_or(&[][..], |l| &l[..]);
                    if !list.iter().any(|&(_, s)| s == stamp) {
                        skipped.insert(sector);
                    }
                }
            }
            // The newest allowed value of each sector (so stretches read
            // one write whole), now and then another.
            let read_at = rng.below(8);
            let data: Vec<Stamp> = (read_at..read_at + rng.range(1, 12))
                .map(|s| {
                    let list = model.get(&s).map_or(&[][..], |l| &l[..]);
                    let newest = list.iter().rev().find(|(t, _)| *t <= until).map(|w| w.1);
                    match rng.below(10) {
                        0 => rng.below(8) + 100,
                        _ => newest.unwrap_or(0),
                    }
                })
                .collect();
            let mut judged = 0;
            let mut want = Ok(());
            for (s, &got) in (read_at..).zip(&data) {
                let list = model.get(&s).map_or(&[][..], |l| &l[..]);
                let set = model_allowed(list, start, until);
                if skipped.contains(&s) || set.is_empty() {
                    continue;
                }
                judged += 1;
                if !set.contains(&got) {
                    want = Err(format!("sector {s}:"));
                    break;
                }
            }
            let mut by_fault = Vec::new();
            let got = c.judge_read(
                &Bio::read(IMAGE, read_at, data.len() as u64),
                &Stamps::from_slice(&data),
                |dev| (dev == ORIG).then_some((&r, false)),
                &|_, _| None,
                &mut by_fault,
            );
            let context = format!("{model:?} {skipped:?} {start} {until} {read_at} {data:?}");
            assert_eq!(c.sectors_judged, judged, "{context}");
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(w)) => assert!(e.contains(&w), "{e} / {w} {context}"),
                (g, w) => panic!("{g:?} / {w:?} {context}"),
            }
        }
    }

    /// `allowed` and `admits` decide as the rule on a per-sector list of
    /// accepted writes does, on random histories of overlapping writes:
    /// the same sectors judged, the same values allowed, the same reads
    /// admitted; and a writeback of any accepted value is no raw write.
    #[test]
    fn admits_agrees_with_the_allowed_set() {
        let mut rng = crate::rng::SimRng::new(7);
        for _ in 0..2000 {
            let mut r = FsRecord::default();
            let mut model: BTreeMap<u64, Vec<(u64, Stamp)>> = BTreeMap::new();
            let mut t = 0;
            for _ in 0..rng.below(6) {
                t += rng.below(40);
                let sector = rng.below(6);
                let data: Vec<Stamp> = (0..rng.range(1, 4)).map(|_| rng.below(4)).collect();
                r.accept(sector, t, &Stamps::from_slice(&data));
                for (s, &stamp) in (sector..).zip(&data) {
                    model.entry(s).or_default().push((t, stamp));
                }
            }
            let start = rng.below(120);
            let until = start + rng.below(60);
            let got = rng.below(5);
            for sector in 0..10 {
                let list = model.get(&sector).map_or(&[][..], |l| &l[..]);
                let set = model_allowed(list, start, until);
                let want = (!set.is_empty()).then(|| set.contains(&got));
                let context = format!("{list:?} {start} {until} {got}");
                assert_eq!(allowed(&r, sector, start, until), set, "{context}");
                assert_eq!(admits(&r, sector, start, until, got), want, "{context}");
                let mut c = taken(0, 0);
                c.write_submitted(&Bio::write(ORIG, sector, vec![got]), Some(&r));
                let accepted = list.iter().any(|&(_, s)| s == got);
                assert_eq!(c.raw_written.contains(ORIG, sector), !accepted, "{context}");
            }
        }
    }
}
