//! A filesystem model on a device: a page cache of dirty sectors, written
//! back by a flusher, synced on freeze; writers wait while it is frozen.
//!
//! freeze/thaw nest per device (`bd_fsfreeze_count`), with 6.1 semantics:
//! a freeze at depth >= 1 succeeds without touching the file system, a
//! failed freeze puts the count back, a thaw at 0 is -EINVAL and does
//! nothing. A user's `Freeze` step is a third party's freeze_bdev (as dm
//! or another snapshot tool would call it), counted with the engine's.
//!
//! Fault model: a filesystem that ignores the bdev freeze (no sync, writers
//! not held); a filesystem whose freeze fails for the engine's freeze from
//! depth 0 (`freeze_fails`). Writeback errors come from the block layer's
//! fault plan.
//!
//! A journaling variant (`journal` region set) ends every writeback
//! (flusher, fsync/Sync, freeze) the way jbd2 commits: the data bios first,
//! all completed, then a commit record written with REQ_PREFLUSH|REQ_FUA
//! into the journal region, so a write cache under it gets its FLUSH and
//! FUA without the scenario spelling them out.
//!
//! Power loss empties the page cache: what was only there is gone, and
//! the record forgets every accepted write (nothing accepted before the
//! cut may be demanded after it).
//!
//! The model keeps its own record (`FsRecord`) of what it accepted and
//! when, of its freezes, and of data lost to injected writeback errors: the
//! `fs_consistency` checker judges TAKE against it, never the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use blksnap_core::kernel::{completion, Bio, Completer, DevT, Errno, Stamp, Stamps};

use crate::block;
use crate::kernel::Sim;
use crate::trace::TraceEvent;

/// Dirty data is written back this long after it was first dirtied.
const WRITEBACK_DELAY_NS: u64 = 5_000_000;
/// Largest bio the flusher builds, in sectors.
const WRITEBACK_MAX_SECTORS: u64 = 256;

#[derive(Default)]
pub struct FsModel {
    /// The page cache: disjoint ranges of dirty sectors by start, each
    /// with its data (a write costs a few range operations, not a map
    /// entry per sector: issue 10).
    dirty: BTreeMap<u64, Stamps>,
    frozen: bool,
    flush_scheduled: bool,
    thaw_waiters: Vec<Completer<()>>,
    /// Writeback bios not yet ended, and who waits for none to be left: a
    /// sync waits for pages already under writeback, as a real one does.
    writeback_in_flight: u64,
    idle_waiters: Vec<Completer<()>>,
    /// Adversarial: the filesystem does not implement freeze.
    pub ignores_freeze: bool,
    pub record: FsRecord,
    /// The journal region (start, sectors): commits go there, in turn.
    pub journal: Option<(u64, u64)>,
    commits: u64,
}

/// What the filesystem itself knows it did, with virtual times.
#[derive(Default)]
pub struct FsRecord {
    /// The writes it accepted (fs_write returned), by disjoint ranges of
    /// sectors that every write covers whole or not at all: a write of N
    /// sectors costs a few range operations, not N map entries and N
    /// lists (issue 10). Ranges are cut where a write starts or ends.
    accepted: BTreeMap<u64, Accepted>,
    /// Each freeze from unfrozen: when it began, whether the fs honoured it
    /// (synced and held writers), when the last thaw ended it.
    pub freezes: Vec<FreezeRecord>,
    /// Sectors whose writeback failed with an error the fault plan
    /// injected: their page-cache data never reached the device.
    pub lost: BTreeSet<u64>,
}

/// The writes accepted over one range of sectors, oldest first, each
/// with the time it was accepted and the range's data.
#[derive(Clone, Debug)]
pub struct Accepted {
    len: u64,
    writes: Vec<(u64, Stamps)>,
}

impl Accepted {
    /// (time, data) of each write, oldest first: times never go down.
    pub fn writes(&self) -> &[(u64, Stamps)] {
        &self.writes
    }
}

impl FsRecord {
    /// The filesystem accepted `data` at `sector` at time `time` (not
    /// before any write it accepted already).
    pub fn accept(&mut self, sector: u64, time: u64, data: &Stamps) {
        let end = sector + data.len();
        if sector == end {
            return;
        }
        let fresh = |from: u64, to: u64| Accepted {
            len: to - from,
            writes: vec![(time, data.slice(from - sector, to - sector))],
        };
        // Most writes go where none went before: one range, one search.
        if !overlaps(&self.accepted, sector, end) {
            self.accepted.insert(sector, fresh(sector, end));
            return;
        }
        cut_at(&mut self.accepted, sector);
        cut_at(&mut self.accepted, end);
        let mut gaps = Vec::new();
        let mut cursor = sector;
        for (&start, range) in self.accepted.range_mut(sector..end) {
            if start > cursor {
                gaps.push((cursor, start));
            }
            let from = start - sector;
            debug_assert!(range.writes.last().is_none_or(|(t, _)| *t <= time));
            range
                .writes
                .push((time, data.slice(from, from + range.len)));
            cursor = start + range.len;
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        for (from, to) in gaps {
            self.accepted.insert(from, fresh(from, to));
        }
    }

    /// The accepted ranges that end past `sector`, in order: the one that
    /// holds it (if any) first. Each as (start, end, writes).
    pub fn accepted_from(&self, sector: u64) -> impl Iterator<Item = (u64, u64, &Accepted)> {
        let holding = self
            .accepted
            .range(..sector)
            .next_back()
            .filter(|(&start, range)| start + range.len > sector);
        holding
            .into_iter()
            .chain(self.accepted.range(sector..))
            .map(|(&start, range)| (start, start + range.len, range))
    }

    /// The range holding `sector` and the sector's offset in it.
    pub fn accepted_at(&self, sector: u64) -> Option<(u64, &Accepted)> {
        let (start, end, range) = self.accepted_from(sector).next()?;
        (start <= sector && sector < end).then(|| (sector - start, range))
    }
}

/// A value held for a range of sectors, that can be cut in two.
trait Cut {
    fn sectors(&self) -> u64;
    /// Keep sectors [0, at) in `self`; return [at, sectors).
    fn cut(&mut self, at: u64) -> Self;
}

impl Cut for Stamps {
    fn sectors(&self) -> u64 {
        self.len()
    }

    fn cut(&mut self, at: u64) -> Stamps {
        let tail = self.slice(at, self.len());
        *self = self.slice(0, at);
        tail
    }
}

impl Cut for Accepted {
    fn sectors(&self) -> u64 {
        self.len
    }

    fn cut(&mut self, at: u64) -> Accepted {
        let tail = Accepted {
            len: self.len - at,
            writes: self
                .writes
                .iter()
                .map(|(t, data)| (*t, data.slice(at, self.len)))
                .collect(),
        };
        for (_, data) in &mut self.writes {
            *data = data.slice(0, at);
        }
        self.len = at;
        tail
    }
}

/// Make `at` an edge between ranges: a range that holds it inside is cut
/// in two there.
fn cut_at<V: Cut>(map: &mut BTreeMap<u64, V>, at: u64) {
    if let Some((&start, value)) = map.range_mut(..at).next_back() {
        if start + value.sectors() > at {
            let tail = value.cut(at - start);
            map.insert(at, tail);
        }
    }
}

/// Whether a range of `map` holds any sector of [from, to).
fn overlaps<V: Cut>(map: &BTreeMap<u64, V>, from: u64, to: u64) -> bool {
    let last = map.range(..to).next_back();
    last.is_some_and(|(&start, value)| start + value.sectors() > from)
}

/// Put `data` at `sector` in the page cache, over what was dirty there.
fn dirty_write(dirty: &mut BTreeMap<u64, Stamps>, sector: u64, data: Stamps) {
    let end = sector + data.len();
    if !overlaps(dirty, sector, end) {
        dirty.insert(sector, data);
        return;
    }
    cut_at(dirty, sector);
    cut_at(dirty, end);
    while let Some((&start, _)) = dirty.range(sector..end).next() {
        dirty.remove(&start);
    }
    dirty.insert(sector, data);
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FreezeRecord {
    pub begun: u64,
    pub honoured: bool,
    pub thawed: Option<u64>,
}

impl FsModel {
    pub fn new(ignores_freeze: bool) -> FsModel {
        FsModel {
            ignores_freeze,
            ..FsModel::default()
        }
    }

    pub fn dirty_sectors(&self) -> usize {
        self.dirty.values().map(|data| data.len() as usize).sum()
    }

    /// Commit records written (a metric).
    pub fn commits(&self) -> u64 {
        self.commits
    }
}

/// Power was cut: the page cache and every waiter are gone with the
/// tasks that held them; what the fs accepted may no longer be demanded.
pub fn power_lost(sim: &Sim) {
    for fs in sim.fs.borrow_mut().values_mut() {
        fs.dirty.clear();
        fs.frozen = false;
        fs.flush_scheduled = false;
        fs.thaw_waiters.clear();
        fs.writeback_in_flight = 0;
        fs.idle_waiters.clear();
        fs.record.accepted.clear();
    }
}

/// The commit record of a journaling fs: a REQ_PREFLUSH|REQ_FUA write of
/// a fresh stamp into the next journal sector, after the data it commits.
async fn commit(sim: &Rc<Sim>, dev: DevT) {
    let slot = match sim.fs.borrow_mut().get_mut(&dev) {
        Some(fs) => match fs.journal {
            Some((start, len)) => {
                fs.commits += 1;
                Some((start + fs.commits % len, fs.commits))
            }
            None => None,
        },
        None => None,
    };
    let Some((sector, seq)) = slot else { return };
    // Stamps with bit 62 set are no user's and no pattern's.
    let stamp = (1 << 62) | (u64::from(dev.0) << 24) | (seq & 0xff_ffff);
    let mut bio = Bio::write(dev, sector, vec![stamp]);
    bio.flags.preflush = true;
    bio.flags.fua = true;
    bio.flags.sync = true;
    if let Err(e) = block::user_bio(sim, bio).await {
        sim.record(TraceEvent::Warn {
            msg: format!("fs: journal commit to {dev} at {sector} failed: {e}"),
        });
    }
}

/// `freeze_bdev` as Linux 5.11-6.5 have it: the count goes up first; at
/// depth > 1 the device is already frozen and the call succeeds at once.
/// Only the freeze from 0 freezes the file system, and when that fails
/// (`super_fails`: the adversarial `freeze_fails` for the engine's calls)
/// the count is put back and the error returned.
pub async fn freeze_bdev(sim: &Rc<Sim>, dev: DevT, super_fails: bool) -> Result<(), Errno> {
    let depth = {
        let mut devices = sim.blk.devices.borrow_mut();
        let device = devices.get_mut(&dev).ok_or(Errno::ENXIO)?;
        if device.freeze_count == 0 && super_fails {
            // Up to 1 and straight back: no trace, the count never moved
            // as far as anyone else can see (the C holds the mutex).
            return Err(Errno::EBUSY);
        }
        device.freeze_count += 1;
        device.freeze_count
    };
    sim.record(TraceEvent::Freeze { dev: dev.0, depth });
    if depth > 1 {
        return Ok(());
    }
    let now = sim.now();
    let honours = match sim.fs.borrow_mut().get_mut(&dev) {
        Some(fs) => {
            let honoured = !fs.ignores_freeze;
            fs.record.freezes.push(FreezeRecord {
                begun: now,
                honoured,
                thawed: None,
            });
            fs.frozen = honoured;
            honoured
        }
        None => false,
    };
    if honours {
        // sync_filesystem: write the dirty data back and wait for every
        // page under writeback, the flusher's too.
        writeback(sim, dev).await;
        wait_writeback_idle(sim, dev).await;
    }
    Ok(())
}

/// `thaw_bdev`: -EINVAL and nothing else if the count is 0; the last thaw
/// lets writers go.
pub fn thaw_bdev(sim: &Rc<Sim>, dev: DevT) -> Result<(), Errno> {
    let depth = {
        let mut devices = sim.blk.devices.borrow_mut();
        let device = devices.get_mut(&dev).ok_or(Errno::ENXIO)?;
        if device.freeze_count == 0 {
            return Err(Errno::EINVAL);
        }
        device.freeze_count -= 1;
        device.freeze_count
    };
    sim.record(TraceEvent::Thaw { dev: dev.0, depth });
    if depth == 0 {
        let now = sim.now();
        let waiters = match sim.fs.borrow_mut().get_mut(&dev) {
            Some(fs) => {
                fs.frozen = false;
                if let Some(freeze) = fs.record.freezes.last_mut() {
                    freeze.thawed.get_or_insert(now);
                }
                std::mem::take(&mut fs.thaw_waiters)
            }
            None => Vec::new(),
        };
        for waiter in waiters {
            waiter.complete(());
        }
    }
    Ok(())
}

/// A write through the filesystem: into the page cache once not frozen.
/// A filesystem never writes past its device: that is -EIO at once.
pub async fn fs_write(sim: &Rc<Sim>, dev: DevT, sector: u64, data: &[Stamp]) -> Result<(), Errno> {
    let capacity = sim.blk.devices.borrow().get(&dev).map_or(0, |d| d.capacity);
    if sector
        .checked_add(data.len() as u64)
        .is_none_or(|end| end > capacity)
    {
        return Err(Errno::EIO);
    }
    loop {
        let wait = {
            let mut fs = sim.fs.borrow_mut();
            let Some(fs) = fs.get_mut(&dev) else {
                return Ok(());
            };
            if !fs.frozen {
                if !data.is_empty() {
                    let data = Stamps::from_slice(data);
                    fs.record.accept(sector, sim.now(), &data);
                    dirty_write(&mut fs.dirty, sector, data);
                }
                None
            } else {
                let (wait, waiter) = completion();
                fs.thaw_waiters.push(waiter);
                Some(wait)
            }
        };
        match wait {
            Some(wait) => wait.await,
            None => break,
        }
    }
    schedule_flush(sim, dev);
    Ok(())
}

/// A read through the filesystem: the page cache over the device.
pub async fn fs_read(
    sim: &Rc<Sim>,
    dev: DevT,
    sector: u64,
    count: u64,
) -> Result<Vec<Stamp>, Errno> {
    let mut data = block::user_bio(sim, Bio::read(dev, sector, count))
        .await?
        .to_vec();
    if let Some(fs) = sim.fs.borrow().get(&dev) {
        overlay_dirty(&fs.dirty, sector, &mut data);
    }
    Ok(data)
}

/// Copy the page cache's dirty sectors over `data`, read at `sector`.
fn overlay_dirty(dirty: &BTreeMap<u64, Stamps>, sector: u64, data: &mut [Stamp]) {
    let end = sector + data.len() as u64;
    let holding = dirty
        .range(..sector)
        .next_back()
        .filter(|(&start, cached)| start + cached.len() > sector);
    for (&start, cached) in holding.into_iter().chain(dirty.range(sector..end)) {
        let from = start.max(sector);
        let to = end.min(start + cached.len());
        let out = &mut data[(from - sector) as usize..(to - sector) as usize];
        for (slot, stamp) in out
            .iter_mut()
            .zip(cached.slice(from - start, to - start).iter())
        {
            *slot = stamp;
        }
    }
}

fn schedule_flush(sim: &Rc<Sim>, dev: DevT) {
    let scheduled = match sim.fs.borrow_mut().get_mut(&dev) {
        Some(fs) => std::mem::replace(&mut fs.flush_scheduled, true),
        None => true,
    };
    if scheduled {
        return;
    }
    let flusher = sim.clone();
    let at = sim.now() + WRITEBACK_DELAY_NS;
    sim.at(
        at,
        Box::new(move |sim| {
            sim.spawn_background(
                blksnap_core::kernel::TaskName::Device("flush-", dev),
                Box::pin(async move { writeback(&flusher, dev).await }),
            );
        }),
    );
}

/// Write every dirty sector back, in runs of contiguous sectors. Pages
/// already under writeback are waited for first, so two writebacks of one
/// sector never race on the device.
pub async fn writeback(sim: &Rc<Sim>, dev: DevT) {
    wait_writeback_idle(sim, dev).await;
    let dirty = match sim.fs.borrow_mut().get_mut(&dev) {
        Some(fs) => {
            fs.flush_scheduled = false;
            std::mem::take(&mut fs.dirty)
        }
        None => return,
    };
    let mut pending = Vec::new();
    for (sector, data) in runs(&dirty) {
        let count = data.len() as u64;
        pending.push((sector, count, submit_writeback(sim, dev, sector, data)));
    }
    let wrote = !pending.is_empty();
    for (sector, count, done) in pending {
        let (result, injected_before) = done.await;
        if let Err(e) = result {
            writeback_failed(sim, dev, sector, count, e, injected_before);
        }
    }
    if wrote {
        commit(sim, dev).await;
    }
}

/// One writeback bio, counted in flight until it ends. The completion
/// carries the injected-error count seen when it was submitted.
fn submit_writeback(
    sim: &Rc<Sim>,
    dev: DevT,
    sector: u64,
    data: Vec<Stamp>,
) -> blksnap_core::kernel::Completion<(Result<(), Errno>, u64)> {
    if let Some(fs) = sim.fs.borrow_mut().get_mut(&dev) {
        fs.writeback_in_flight += 1;
    }
    let injected_before = sim.injected_io_errors.get();
    let (done, completer) = completion();
    let task_sim = sim.clone();
    sim.spawn_background(
        blksnap_core::kernel::TaskName::Device("writeback-", dev),
        Box::pin(async move {
            let result = block::user_bio(&task_sim, Bio::write(dev, sector, data)).await;
            writeback_ended(&task_sim, dev);
            completer.complete((result.map(|_| ()), injected_before));
        }),
    );
    done
}

fn writeback_ended(sim: &Rc<Sim>, dev: DevT) {
    let waiters = match sim.fs.borrow_mut().get_mut(&dev) {
        Some(fs) => {
            fs.writeback_in_flight -= 1;
            if fs.writeback_in_flight == 0 {
                std::mem::take(&mut fs.idle_waiters)
            } else {
                Vec::new()
            }
        }
        None => Vec::new(),
    };
    for waiter in waiters {
        waiter.complete(());
    }
}

/// Until no writeback bio of `dev` is in flight.
async fn wait_writeback_idle(sim: &Rc<Sim>, dev: DevT) {
    loop {
        let wait = match sim.fs.borrow_mut().get_mut(&dev) {
            Some(fs) if fs.writeback_in_flight > 0 => {
                let (wait, waiter) = completion();
                fs.idle_waiters.push(waiter);
                wait
            }
            _ => return,
        };
        wait.await;
    }
}

/// A writeback bio failed. A real filesystem logs it and marks the mapping
/// with the error; it is a simulator fault only when the fault plan cannot
/// explain it. The data is lost either way: nobody may demand it later.
fn writeback_failed(sim: &Rc<Sim>, dev: DevT, sector: u64, count: u64, e: Errno, before: u64) {
    if let Some(fs) = sim.fs.borrow_mut().get_mut(&dev) {
        fs.record.lost.extend(sector..sector + count);
    }
    if injected_error(sim, dev, sector, count, before) {
        sim.record(TraceEvent::Warn {
            msg: format!("fs: writeback to {dev} at {sector} (+{count}) lost: {e} (injected)"),
        });
        return;
    }
    sim.fail("fs", format!("writeback to {dev} failed: {e}"));
}

/// Could the fault plan have failed this bio? A bad-sector range of the
/// same device that the bio covers, or random bio errors with one injected
/// since the bio was submitted.
fn injected_error(sim: &Rc<Sim>, dev: DevT, sector: u64, count: u64, before: u64) -> bool {
    let bad_range = sim
        .blk
        .devices
        .borrow()
        .get(&dev)
        .is_some_and(|d| d.hits_bad_sector(sector, count));
    let random = sim.faults.borrow().bio_error_ppm > 0 && sim.injected_io_errors.get() > before;
    bad_range || random
}

/// Contiguous runs of the page cache's ranges, each at most the
/// flusher's bio size (cut from the start of each contiguous stretch).
fn runs(dirty: &BTreeMap<u64, Stamps>) -> Vec<(u64, Vec<Stamp>)> {
    let mut out = Vec::new();
    let mut ranges = dirty.iter().peekable();
    while let Some((&start, first)) = ranges.next() {
        // A contiguous stretch, a range at a time.
        let mut parts = vec![first];
        let mut end = start + first.len();
        while let Some((_, next)) = ranges.next_if(|(&s, _)| s == end) {
            parts.push(next);
            end += next.len();
        }
        // Its bios, each filled at its size (no growing by pushes).
        let mut stamps = parts.iter().flat_map(|part| part.iter());
        for at in (start..end).step_by(WRITEBACK_MAX_SECTORS as usize) {
            let len = (end - at).min(WRITEBACK_MAX_SECTORS);
            let mut data = Vec::with_capacity(len as usize);
            data.extend(stamps.by_ref().take(len as usize));
            out.push((at, data));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fault_plan_explains_a_writeback_error() {
        use crate::device::{Device, Fill};
        let sim = Sim::new(0);
        let dev = DevT::new(7, 0);
        let mut device = Device::new("d".into(), dev, 0, 1024, Fill::Zero);
        device.bad_sectors.insert(100, 8);
        sim.add_device(device);
        // Same device, a range that covers the bad sectors.
        assert!(injected_error(&sim, dev, 96, 8, 0));
        // Another range, another device, or no random errors: not injected.
        assert!(!injected_error(&sim, dev, 0, 8, 0));
        assert!(!injected_error(&sim, DevT::new(7, 1), 96, 8, 0));
        sim.injected_io_errors.set(1);
        assert!(!injected_error(&sim, dev, 0, 8, 0));
        // Random bio errors, and one was injected since the bio started.
        sim.faults.borrow_mut().bio_error_ppm = 10;
        assert!(injected_error(&sim, dev, 0, 8, 0));
        assert!(!injected_error(&sim, dev, 0, 8, 1));
    }

    #[test]
    fn runs_split_on_gaps_and_size() {
        let mut m = BTreeMap::new();
        dirty_write(&mut m, 0, Stamps::counting(0, 200));
        dirty_write(&mut m, 200, Stamps::counting(200, 100));
        dirty_write(&mut m, 400, Stamps::repeat(1, 1));
        let r = runs(&m);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].1.len(), 256);
        assert_eq!(r[1], (256, (256..300).collect()));
        assert_eq!(r[2], (400, vec![1]));
    }

    /// The page cache's and the record's ranges hold what a map per
    /// sector would, after random overlapping writes.
    #[test]
    fn ranges_hold_what_a_map_per_sector_holds() {
        let mut rng = crate::rng::SimRng::new(5);
        for round in 0..300 {
            let mut dirty = BTreeMap::new();
            let mut record = FsRecord::default();
            let mut model_dirty: BTreeMap<u64, Stamp> = BTreeMap::new();
            let mut model_accepted: BTreeMap<u64, Vec<(u64, Stamp)>> = BTreeMap::new();
            for time in 0..rng.below(12) {
                let sector = rng.below(40);
                let len = rng.range(1, 12);
                // Counting, repeated, or no rule at all.
                let data: Vec<Stamp> = match rng.below(3) {
                    0 => (0..len).map(|i| 1000 * time + i).collect(),
                    1 => vec![time; len as usize],
                    _ => (0..len).map(|_| rng.below(4)).collect(),
                };
                let stamps = Stamps::from_slice(&data);
                record.accept(sector, time, &stamps);
                dirty_write(&mut dirty, sector, stamps);
                for (s, &stamp) in (sector..).zip(&data) {
                    model_dirty.insert(s, stamp);
                    model_accepted.entry(s).or_default().push((time, stamp));
                }
            }
            for s in 0..60 {
                let got = record.accepted_at(s).map(|(offset, range)| {
                    let writes = range.writes().iter();
                    writes.map(|(t, data)| (*t, data.get(offset))).collect()
                });
                assert_eq!(got, model_accepted.get(&s).cloned(), "round {round} {s}");
            }
            let mut read = vec![7; 60];
            overlay_dirty(&dirty, 0, &mut read[..]);
            let mut want = vec![7; 60];
            for (&s, &stamp) in &model_dirty {
                want[s as usize] = stamp;
            }
            assert_eq!(read, want, "round {round}");
            let flat: Vec<(u64, Stamp)> = runs(&dirty)
                .into_iter()
                .flat_map(|(start, data)| (start..).zip(data))
                .collect();
            assert_eq!(flat, model_dirty.into_iter().collect::<Vec<_>>());
        }
    }
}
