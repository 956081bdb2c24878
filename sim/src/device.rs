//! Virtual block devices: 512-byte sectors, sparse media, seeded latency.
//!
//! Media is a map of extents: each covers a run of written sectors, and a
//! run whose stamps count up (a user write, a copy of the pattern) or
//! repeat (zeros) is held as its first stamp and a length, so a chunk
//! copy costs the same memory whatever its size. A sector never written
//! reads as the device's fill, computed, so a 1 PiB device costs memory
//! only for what was written. Writes reach the media when the bio
//! completes, and the completion time of each bio is drawn from the disk
//! stream, so concurrent bios complete in a seeded order.
//!
//! Fault model: this file injects nothing by itself. A device fails the IO
//! the scenario asks it to fail: `bad_sectors` (EIO for every bio that
//! touches them), `io_errors` windows (EIO for the bios they count), and
//! `removed` (EIO for everything). The media never loses or tears a write
//! that completed.

use std::cell::Cell;
use std::collections::BTreeMap;

use blksnap_core::kernel::{BioOp, DevT, Run, Stamp, Stamps};
use serde::{Deserialize, Serialize};

use crate::cache::WriteCache;
use crate::disk_faults::DiskFaults;
use crate::faults::IoWindow;

/// The most runs one media extent joins (see `Device::write`).
const MAX_EXTENT_RUNS: usize = 64;

/// A write that continues the extent before it joins it, so a chunk
/// stored in many bios is one extent; capped in runs, so cutting an
/// extent later stays cheap. False if it does not fit. Inlined: a call
/// per bio that cost as much as its test.
#[inline(always)]
fn join(extent: &mut Stamps, data: &Stamps) -> bool {
    let fits = extent.runs() + data.runs() <= MAX_EXTENT_RUNS;
    if fits {
        extent.append(data);
    }
    fits
}

/// What a never-written sector holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Fill {
    /// Zeros (stamp 0).
    #[default]
    Zero,
    /// A stamp unique to (device, sector), like upstream's test pattern.
    Pattern,
}

/// A stamp of the initial pattern: top bit set, device index, sector.
pub fn pattern_stamp(index: u32, sector: u64) -> Stamp {
    (1 << 63) | (u64::from(index) << 48) | (sector & ((1 << 48) - 1))
}

/// Latency model of one device, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Latency {
    pub min_ns: u64,
    pub max_ns: u64,
    /// Added per sector transferred.
    pub per_sector_ns: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            min_ns: 20_000,
            max_ns: 400_000,
            per_sector_ns: 100,
        }
    }
}

/// Where an extent sits in [`Media`]: its block, and its index there.
/// Valid until the next insert or remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    block: usize,
    i: usize,
}

/// Extents per block of [`Media`] before it splits in two.
const BLOCK_MAX: usize = 64;

/// A block of [`Media`]: (start, extent) in order, never empty.
type Block = Vec<(u64, Box<Stamps>)>;

/// Written extents by first sector, in order: a sorted map cut into
/// blocks of at most [`BLOCK_MAX`], with the first start of each block
/// kept apart for the search. It replaced a `BTreeMap`: a chunk copy
/// writes its pieces in any order, and each write looked up its
/// neighbours (a range, about 150 instructions), and one in two
/// removed or inserted a piece (about 280 each), with a search of its
/// own. Here a search is two binary searches over flat arrays, and the
/// write works at the position it found: the neighbours are the indexes
/// around it, and a remove or insert moves at most a block's 16-byte
/// slots (a chunk copy's pieces sit in the last blocks: a copy appends
/// to the store).
#[derive(Default)]
struct Media {
    /// `blocks[b][0].0`, for each block.
    firsts: Vec<u64>,
    blocks: Vec<Block>,
}

impl Media {
    /// The extent with the last start that `before(start)` holds for.
    #[inline]
    fn last_where(&self, before: impl Fn(u64) -> bool) -> Option<Pos> {
        let block = self.firsts.partition_point(|&f| before(f)).checked_sub(1)?;
        let i = self.blocks[block].partition_point(|&(s, _)| before(s)) - 1;
        Some(Pos { block, i })
    }

    /// The extent with the last start at or before `key`.
    #[inline]
    fn last_at_or_before(&self, key: u64) -> Option<Pos> {
        self.last_where(|s| s <= key)
    }

    /// The extent with the last start before `key`.
    #[inline]
    fn last_before(&self, key: u64) -> Option<Pos> {
        self.last_where(|s| s < key)
    }

    /// The extent with the first start at or after `key`.
    fn first_at_or_after(&self, key: u64) -> Option<Pos> {
        match self.last_before(key) {
            Some(p) => self.next(p),
            None => (!self.blocks.is_empty()).then_some(Pos { block: 0, i: 0 }),
        }
    }

    /// Where an extent goes right after `p` (None: first of all).
    #[inline]
    fn after(p: Option<Pos>) -> Pos {
        p.map_or(Pos { block: 0, i: 0 }, |p| Pos {
            block: p.block,
            i: p.i + 1,
        })
    }

    #[inline]
    fn next(&self, p: Pos) -> Option<Pos> {
        if p.i + 1 < self.blocks[p.block].len() {
            Some(Pos {
                block: p.block,
                i: p.i + 1,
            })
        } else if p.block + 1 < self.blocks.len() {
            Some(Pos {
                block: p.block + 1,
                i: 0,
            })
        } else {
            None
        }
    }

    #[inline]
    fn prev(&self, p: Pos) -> Option<Pos> {
        if p.i > 0 {
            Some(Pos {
                block: p.block,
                i: p.i - 1,
            })
        } else {
            let block = p.block.checked_sub(1)?;
            Some(Pos {
                block,
                i: self.blocks[block].len() - 1,
            })
        }
    }

    #[inline]
    fn start(&self, p: Pos) -> u64 {
        self.blocks[p.block][p.i].0
    }

    #[inline]
    fn extent(&self, p: Pos) -> &Stamps {
        &self.blocks[p.block][p.i].1
    }

    #[inline]
    fn extent_mut(&mut self, p: Pos) -> &mut Stamps {
        &mut self.blocks[p.block][p.i].1
    }

    /// The extent at `p` now starts at `start`, and holds `extent`: the
    /// order must not change (no extent starts between the two starts).
    fn replace(&mut self, p: Pos, start: u64, extent: Box<Stamps>) {
        self.blocks[p.block][p.i] = (start, extent);
        if p.i == 0 {
            self.firsts[p.block] = start;
        }
    }

    /// The extent at `a`, to change, and the one at `b`, after it.
    fn pair_mut(&mut self, a: Pos, b: Pos) -> (&mut Stamps, &Stamps) {
        if a.block == b.block {
            let (left, right) = self.blocks[a.block].split_at_mut(b.i);
            (&mut left[a.i].1, &right[0].1)
        } else {
            let (left, right) = self.blocks.split_at_mut(b.block);
            (&mut left[a.block][a.i].1, &right[0][b.i].1)
        }
    }

    /// Out of the map. A block left small joins a neighbour, so blocks
    /// stay full enough whatever the order of removes.
    fn remove(&mut self, p: Pos) -> Box<Stamps> {
        let block = &mut self.blocks[p.block];
        let (_, extent) = block.remove(p.i);
        let len = block.len();
        if len == 0 {
            self.blocks.remove(p.block);
            self.firsts.remove(p.block);
        } else {
            self.firsts[p.block] = block[0].0;
            if len < BLOCK_MAX / 8 {
                self.merge_small(p.block);
            }
        }
        extent
    }

    /// Block `b`, small, joins the block after it or the one before.
    fn merge_small(&mut self, b: usize) {
        let fits = |other: &Block| self.blocks[b].len() + other.len() <= BLOCK_MAX;
        let into = match (self.blocks.get(b + 1), b.checked_sub(1)) {
            (Some(next), _) if fits(next) => b,
            (_, Some(before)) if fits(&self.blocks[before]) => before,
            _ => return,
        };
        let gone = self.blocks.remove(into + 1);
        self.firsts.remove(into + 1);
        self.blocks[into].extend(gone);
    }

    /// Into the map; no extent may start at `key` yet.
    fn insert(&mut self, key: u64, extent: Box<Stamps>) {
        let at = Media::after(self.last_before(key));
        self.insert_at(at, key, extent);
    }

    /// Into the map at `at` (from `after`), where `key` keeps the order.
    fn insert_at(&mut self, at: Pos, key: u64, extent: Box<Stamps>) {
        if self.blocks.is_empty() {
            self.firsts.push(key);
            self.blocks.push(vec![(key, extent)]);
            return;
        }
        let block = &mut self.blocks[at.block];
        debug_assert!(
            at.i == block.len() || block[at.i].0 > key,
            "{key} out of order"
        );
        block.insert(at.i, (key, extent));
        if at.i == 0 {
            self.firsts[at.block] = key;
        }
        if block.len() > BLOCK_MAX {
            let tail = block.split_off(BLOCK_MAX / 2);
            self.firsts.insert(at.block + 1, tail[0].0);
            self.blocks.insert(at.block + 1, tail);
        }
    }

    /// Every extent, in order.
    fn iter(&self) -> impl Iterator<Item = (u64, &Stamps)> {
        self.blocks
            .iter()
            .flatten()
            .map(|(start, extent)| (*start, &**extent))
    }

    /// The extents from `p` on, in order.
    fn iter_from(&self, p: Option<Pos>) -> impl Iterator<Item = (u64, &Stamps)> {
        std::iter::successors(p, |&p| self.next(p)).map(|p| (self.start(p), self.extent(p)))
    }

    fn len(&self) -> usize {
        self.blocks.iter().map(Vec::len).sum()
    }
}

pub struct Device {
    pub name: String,
    pub dev: DevT,
    /// Index among the scenario's devices (for pattern stamps).
    pub index: u32,
    pub capacity: u64,
    pub io_min: u32,
    pub fill: Fill,
    pub latency: Latency,
    /// Written extents by first sector; they never overlap. Boxed: an
    /// insert or remove in a block moves 8-byte slots, not 56-byte ones
    /// (a chunk copy joins and removes extents on every other write).
    media: Media,
    /// Sectors [from, to) known to hold no extent (empty if from == to):
    /// a read inside it is the fill, with no search of `media`. A chunk
    /// copy reads a large device's unwritten space in many bios; the
    /// first one that finds nothing learns the gap around it. A write
    /// into it empties it.
    gap: Cell<(u64, u64)>,
    /// Sectors that fail with EIO (fault injection).
    pub bad_sectors: BTreeMap<u64, u64>,
    pub removed: bool,
    /// Adversarial: freeze_bdev from the engine fails.
    pub freeze_fails: bool,
    pub freeze_count: u32,
    pub open_count: u64,
    /// Windows of injected EIO (fault injection, counted per bio).
    pub io_errors: Vec<IoWindow>,
    /// The volatile write cache (off unless the scenario turns it on).
    pub cache: WriteCache,
    /// Latency spikes, flaky reads, forced tears (`disk_faults.rs`).
    pub disk_faults: DiskFaults,
    /// Bios handed to this device and not yet ended.
    pub in_flight: u64,
}

impl Device {
    pub fn new(name: String, dev: DevT, index: u32, capacity: u64, fill: Fill) -> Device {
        Device {
            name,
            dev,
            index,
            capacity,
            io_min: 512,
            fill,
            latency: Latency::default(),
            media: Media::default(),
            gap: Cell::new((0, 0)),
            bad_sectors: BTreeMap::new(),
            removed: false,
            freeze_fails: false,
            freeze_count: 0,
            open_count: 0,
            io_errors: Vec::new(),
            cache: WriteCache::default(),
            disk_faults: DiskFaults::default(),
            in_flight: 0,
        }
    }

    pub fn fill_stamp(&self, sector: u64) -> Stamp {
        match self.fill {
            Fill::Zero => 0,
            Fill::Pattern => pattern_stamp(self.index, sector),
        }
    }

    /// Sectors [sector, sector + count): written extents and the fill
    /// between them, run by run.
    pub fn read(&self, sector: u64, count: u64) -> Stamps {
        let end = sector + count;
        let mut out = Stamps::new();
        let (from, to) = self.gap.get();
        if from <= sector && end <= to {
            out.push_run(self.fill_run(sector, end));
            return out;
        }
        let mut at = sector;
        for (start, extent) in self.extents_in(sector, end) {
            if start > at {
                out.push_run(self.fill_run(at, start));
                at = start;
            }
            let stop = end.min(start + extent.len());
            for (_, run) in extent.runs_in(at - start, stop - start) {
                out.push_run(run);
            }
            at = stop;
        }
        if at == sector && count > 0 {
            // Nothing written in [sector, end).
            self.learn_gap(sector, end);
        }
        out.push_run(self.fill_run(at, end));
        out
    }

    /// Keeps the unwritten span around [sector, end), which holds no
    /// extent: from the end of the extent before it to the start of the
    /// one after it.
    fn learn_gap(&self, sector: u64, end: u64) {
        let media = &self.media;
        let from = media
            .last_before(sector)
            .map_or(0, |p| media.start(p) + media.extent(p).len());
        let to = media
            .first_at_or_after(end)
            .map_or(u64::MAX, |p| media.start(p));
        self.gap.set((from, to));
    }

    pub fn write(&mut self, sector: u64, data: &Stamps) {
        if data.is_empty() {
            return;
        }
        let end = sector + data.len();
        let (from, to) = self.gap.get();
        if sector < to && from < end {
            self.gap.set((0, 0));
        }
        // One search finds the extent that starts at `end` (the write
        // continues into it) and the last one that starts before it:
        // nothing overlaps the write when that one ends by `sector`.
        let (last, next) = match self.media.last_at_or_before(end) {
            Some(p) if self.media.start(p) == end => (self.media.prev(p), Some(p)),
            other => (other, None),
        };
        let last = last.map(|p| (p, self.media.start(p), self.media.extent(p).len()));
        match last {
            Some((p, start, len)) if start + len <= sector => {
                let joined = start + len == sector && join(self.media.extent_mut(p), data);
                if joined {
                    // Bios of one copy complete in any order: joining the
                    // extent after too keeps a stored chunk one extent.
                    if let Some(next) = next {
                        let (extent, after) = self.media.pair_mut(p, next);
                        if join(extent, after) {
                            self.media.remove(next);
                        }
                    }
                    return;
                }
            }
            None => {}
            Some((p, start, len))
                if start <= sector
                    && end <= start + len
                    && self.media.extent(p).runs() + data.runs() + 2 <= MAX_EXTENT_RUNS =>
            {
                // Wholly inside one extent (an overwrite of written data,
                // the usual non-COW write): spliced in place, no extent
                // is cut, removed or inserted.
                self.media.extent_mut(p).overwrite(sector - start, data);
                return;
            }
            Some(_) => {
                self.cut(sector, end);
                if let Some(p) = self.media.last_before(sector) {
                    let start = self.media.start(p);
                    let extent = self.media.extent_mut(p);
                    if start + extent.len() == sector && join(extent, data) {
                        return;
                    }
                }
                self.media.insert(sector, Box::new(data.clone()));
                return;
            }
        }
        let mut fresh = Box::new(data.clone());
        match next {
            // The extent after joins the write, which takes its place:
            // nothing starts between them.
            Some(next) if join(&mut fresh, self.media.extent(next)) => {
                self.media.replace(next, sector, fresh);
            }
            _ => self
                .media
                .insert_at(Media::after(last.map(|(p, ..)| p)), sector, fresh),
        }
    }

    /// The extents that overlap [sector, end), in order: one search, for
    /// the last extent that starts by `sector`, then a walk.
    fn extents_in(&self, sector: u64, end: u64) -> impl Iterator<Item = (u64, &Stamps)> {
        let media = &self.media;
        let first = match media.last_at_or_before(sector) {
            Some(p) if media.start(p) + media.extent(p).len() > sector => Some(p),
            Some(p) => media.next(p),
            None => media.first_at_or_after(0),
        };
        media
            .iter_from(first)
            .take_while(move |&(start, _)| start < end)
    }

    /// The fill of never-written sectors [from, to): one run.
    fn fill_run(&self, from: u64, to: u64) -> Run {
        match self.fill {
            Fill::Zero => Run {
                first: 0,
                step: 0,
                len: to - from,
            },
            Fill::Pattern => Run {
                first: pattern_stamp(self.index, from),
                step: 1,
                len: to - from,
            },
        }
    }

    /// Forget what the media holds in [sector, end): extents inside go,
    /// extents across an edge keep their part outside.
    fn cut(&mut self, sector: u64, end: u64) {
        let starts: Vec<u64> = self.extents_in(sector, end).map(|(s, _)| s).collect();
        for start in starts {
            let at = self.media.last_at_or_before(start);
            let at = at
                .filter(|&p| self.media.start(p) == start)
                .expect("listed above");
            let extent = self.media.remove(at);
            let len = extent.len();
            if start < sector {
                self.media
                    .insert(start, Box::new(extent.slice(0, sector - start)));
            }
            if start + len > end {
                self.media
                    .insert(end, Box::new(extent.slice(end - start, len)));
            }
        }
    }
    /// Count a bio against every error window; true if one fails it.
    #[inline(always)]
    pub fn window_fails(&mut self, op: BioOp, sector: u64, count: u64) -> bool {
        // Nearly always none: no loop set up per bio.
        if self.io_errors.is_empty() {
            return false;
        }
        let mut fails = false;
        for window in &mut self.io_errors {
            fails |= window.fails(op, sector, count);
        }
        fails
    }

    /// True if the range touches an injected bad sector range. Nearly
    /// always there is none: inlined, that is one test per bio, where the
    /// call cost 20 instructions (an empty map's range still costs a call
    /// and a walk, so that is out of line).
    #[inline(always)]
    pub fn hits_bad_sector(&self, sector: u64, count: u64) -> bool {
        !self.bad_sectors.is_empty() && self.bad_sector_in(sector, count)
    }

    #[inline(never)]
    fn bad_sector_in(&self, sector: u64, count: u64) -> bool {
        let end = sector + count;
        self.bad_sectors
            .range(..end)
            .any(|(&start, &len)| start + len > sector)
    }

    /// Sectors ever written (for the memory report).
    pub fn written_sectors(&self) -> usize {
        self.media.iter().map(|(_, e)| e.len() as usize).sum()
    }

    /// Extents the media holds (what its memory grows with).
    pub fn extents(&self) -> usize {
        self.media.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(d: &mut Device, sector: u64, data: &[Stamp]) {
        d.write(sector, &Stamps::from_slice(data));
    }

    #[test]
    fn sparse_media_reads_fill_and_written_data() {
        let mut d = Device::new("a".into(), DevT::new(8, 0), 3, 1 << 41, Fill::Pattern);
        assert_eq!(d.read(5, 1), vec![pattern_stamp(3, 5)]);
        w(&mut d, (1 << 41) - 2, &[7, 8]);
        assert_eq!(
            d.read((1 << 41) - 3, 3),
            vec![pattern_stamp(3, (1 << 41) - 3), 7, 8]
        );
        assert_eq!(d.written_sectors(), 2);
    }

    /// The media against a plain per-sector model, over overlapping writes
    /// of runs, zeros and stamps with no rule.
    #[test]
    fn extents_read_back_what_a_sector_map_would() {
        let mut d = Device::new("a".into(), DevT::new(8, 0), 1, 4096, Fill::Pattern);
        let mut model: BTreeMap<u64, Stamp> = BTreeMap::new();
        let mut rng = crate::rng::SimRng::new(7);
        for round in 0..400u64 {
            let sector = rng.below(4000);
            let len = 1 + rng.below(90);
            let data: Vec<Stamp> = match round % 4 {
                0 => (0..len).map(|i| 1000 * round + i).collect(),
                1 => vec![0; len as usize],
                2 => (0..len).map(|_| rng.below(5)).collect(),
                _ => (0..len)
                    .map(|i| if i % 7 < 5 { round + i } else { 3 })
                    .collect(),
            };
            w(&mut d, sector, &data);
            for (i, stamp) in data.iter().enumerate() {
                model.insert(sector + i as u64, *stamp);
            }
            let (from, count) = (rng.below(4000), 1 + rng.below(96));
            let expected: Vec<Stamp> = (from..from + count)
                .map(|s| model.get(&s).copied().unwrap_or(pattern_stamp(1, s)))
                .collect();
            assert_eq!(d.read(from, count), expected, "round {round}");
        }
        let all: Vec<Stamp> = (0..4096)
            .map(|s| model.get(&s).copied().unwrap_or(pattern_stamp(1, s)))
            .collect();
        assert_eq!(d.read(0, 4096), all);
        assert_eq!(d.written_sectors(), model.len());
    }

    #[test]
    fn a_counting_run_costs_one_extent_whatever_its_length() {
        let mut d = Device::new("a".into(), DevT::new(8, 0), 0, 1 << 41, Fill::Zero);
        let chunk: Vec<Stamp> = (0..1 << 20).map(|i| pattern_stamp(2, i)).collect();
        w(&mut d, 1 << 40, &chunk);
        w(&mut d, 5, &[0; 4096]);
        assert_eq!(d.extents(), 2);
        w(&mut d, (1 << 40) + 10, &[1, 2]);
        // An overwrite wholly inside an extent is spliced into it.
        assert_eq!(d.extents(), 2);
        assert_eq!(d.read((1 << 40) + 9, 4), vec![chunk[9], 1, 2, chunk[12]]);
        // One across the end of an extent cuts it and joins the part
        // before it: still one extent there.
        w(&mut d, 4096 + 4, &[3, 3]);
        assert_eq!(d.extents(), 2);
        assert_eq!(d.read(4096 + 3, 4), vec![0, 3, 3, 0]);
    }

    /// The bios of one copy complete in any order; the pieces still end
    /// as one extent, and read back as written.
    #[test]
    fn pieces_written_out_of_order_join_into_one_extent() {
        let mut d = Device::new("a".into(), DevT::new(8, 0), 0, 1 << 20, Fill::Zero);
        let chunk = Stamps::counting(pattern_stamp(1, 0), 64 * 16);
        for piece in [3u64, 1, 0, 2, 15, 7, 4, 5, 6, 9, 8, 11, 10, 13, 12, 14] {
            d.write(1000 + piece * 64, &chunk.slice(piece * 64, piece * 64 + 64));
        }
        assert_eq!(d.extents(), 1);
        assert_eq!(d.read(1000, 64 * 16), chunk);
        assert_eq!(d.read(999, 2), vec![0, chunk.get(0)]);
    }

    /// A read of unwritten space learns the gap around it; writes into
    /// the gap, at its edges or elsewhere, are read back all the same.
    #[test]
    fn reads_in_a_learned_gap_see_later_writes() {
        let mut d = Device::new("a".into(), DevT::new(8, 0), 2, 1 << 30, Fill::Pattern);
        w(&mut d, 100, &[1, 2]);
        w(&mut d, 1000, &[3]);
        let fill = |s: u64| pattern_stamp(2, s);
        assert_eq!(d.read(500, 2), vec![fill(500), fill(501)]);
        assert_eq!(d.gap.get(), (102, 1000));
        // Inside the gap: served from it.
        assert_eq!(d.read(102, 3), vec![fill(102), fill(103), fill(104)]);
        // A write elsewhere keeps it; one into it, even at its edge, ends it.
        w(&mut d, 5000, &[9]);
        assert_eq!(d.gap.get(), (102, 1000));
        w(&mut d, 999, &[7]);
        assert_eq!(d.gap.get(), (0, 0));
        assert_eq!(d.read(998, 3), vec![fill(998), 7, 3]);
        assert_eq!(d.read(700, 1), vec![fill(700)]);
        w(&mut d, 102, &[8]);
        assert_eq!(d.read(101, 3), vec![2, 8, fill(103)]);
        // Past the last extent, the gap runs to the end of the address space.
        assert_eq!(d.read(6000, 1), vec![fill(6000)]);
        assert_eq!(d.gap.get(), (5001, u64::MAX));
    }

    /// As above, over a device wide enough for thousands of extents (the
    /// media's blocks split and merge), with pieces of chunks written in
    /// any order next to scattered overwrites.
    #[test]
    fn many_extents_read_back_what_a_sector_map_would() {
        let mut d = Device::new("a".into(), DevT::new(8, 0), 1, 1 << 16, Fill::Pattern);
        let mut model: BTreeMap<u64, Stamp> = BTreeMap::new();
        let mut rng = crate::rng::SimRng::new(5);
        for round in 0..6000u64 {
            let (sector, len) = if round % 3 == 0 {
                (rng.below(65_000), 1 + rng.below(12))
            } else {
                // A piece of a 16-piece chunk, in a random order.
                (1024 * rng.below(60) + 8 * rng.below(16), 8)
            };
            let data: Vec<Stamp> = (0..len).map(|i| (sector + i) * 3 + round % 2).collect();
            w(&mut d, sector, &data);
            for (i, stamp) in data.iter().enumerate() {
                model.insert(sector + i as u64, *stamp);
            }
            let (from, count) = (rng.below(65_000), 1 + rng.below(300));
            let expected: Vec<Stamp> = (from..from + count)
                .map(|s| model.get(&s).copied().unwrap_or(pattern_stamp(1, s)))
                .collect();
            assert_eq!(d.read(from, count), expected, "round {round}");
        }
        assert!(d.media.blocks.len() > 4, "{} blocks", d.media.blocks.len());
        let all: Vec<Stamp> = (0..1 << 16)
            .map(|s| model.get(&s).copied().unwrap_or(pattern_stamp(1, s)))
            .collect();
        assert_eq!(d.read(0, 1 << 16), all);
        assert_eq!(d.written_sectors(), model.len());
    }

    /// The blocked map against a `BTreeMap`, through enough inserts and
    /// removes (in a random order, over a narrow key space) that blocks
    /// split, empty and merge: every search agrees, and so does the walk.
    #[test]
    fn media_blocks_keep_a_sorted_maps_answers() {
        let mut media = Media::default();
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut rng = crate::rng::SimRng::new(11);
        let mut most_blocks = 0;
        for round in 0..20_000u64 {
            let key = rng.below(3000);
            // Inserts win early (blocks split), removes later (they merge).
            let insert = rng.below(20_000) > round;
            match media
                .last_at_or_before(key)
                .filter(|&p| media.start(p) == key)
            {
                Some(p) if !insert => {
                    assert_eq!(media.remove(p).len(), model.remove(&key).unwrap());
                }
                None if insert => {
                    media.insert(key, Box::new(Stamps::repeat(1, round + 1)));
                    model.insert(key, round + 1);
                }
                _ => {}
            }
            most_blocks = most_blocks.max(media.blocks.len());
            let probe = rng.below(3100);
            let start = |p: Option<Pos>| p.map(|p| media.start(p));
            assert_eq!(
                start(media.last_at_or_before(probe)),
                model.range(..=probe).next_back().map(|(&k, _)| k)
            );
            assert_eq!(
                start(media.last_before(probe)),
                model.range(..probe).next_back().map(|(&k, _)| k)
            );
            assert_eq!(
                start(media.first_at_or_after(probe)),
                model.range(probe..).next().map(|(&k, _)| k)
            );
            for (block, &first) in media.blocks.iter().zip(&media.firsts) {
                assert!(!block.is_empty() && block.len() <= BLOCK_MAX);
                assert_eq!(block[0].0, first);
            }
        }
        assert!(most_blocks > 10, "blocks never split: {most_blocks}");
        let all: Vec<(u64, u64)> = media.iter().map(|(k, e)| (k, e.len())).collect();
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        assert_eq!(media.len(), all.len());
        assert!(
            media.blocks.len() < all.len().div_ceil(BLOCK_MAX / 8) + 2,
            "{} blocks for {}",
            media.blocks.len(),
            all.len()
        );
    }

    #[test]
    fn bad_sector_ranges_overlap() {
        let mut d = Device::new("a".into(), DevT::new(8, 0), 0, 100, Fill::Zero);
        d.bad_sectors.insert(10, 5);
        assert!(d.hits_bad_sector(14, 1));
        assert!(d.hits_bad_sector(0, 11));
        assert!(!d.hits_bad_sector(15, 10));
        assert!(!d.hits_bad_sector(0, 10));
    }
}
