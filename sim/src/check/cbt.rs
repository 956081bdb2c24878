//! The `cbt` checker: CBT soundness, as a backup tool relies on it.
//!
//! Rule: every READ_CBT_MAP result marks every block that a user changed
//! after a TAKE with a snapshot number newer than that TAKE's, as long as
//! the change completed before the TAKE whose frozen copy is read began.
//! A change in flight while a TAKE ran may be on either side of it. Within
//! one generation only: a new tracker, a reset at TAKE (the device was
//! resized, or the map corrupted by a write past it) and the 255th TAKE
//! start a new generation, and the map then says nothing of older takes
//! (spec 4.4). Precision: a block the map marks must have been touched
//! in its generation by a write (completed, failed, or still in flight at
//! the read) or a MARK_DIRTY (also a failed one, which may have marked
//! its first ranges); a READ_CBT_MAP that shows any other block marked
//! fails (`cbt_blocks_overreported` counts them). Over-marking loses no
//! data, but it grows every incremental backup and says the engine marks
//! what it was not asked to (a block range off by one, a read map raised
//! to the wrong number). While a MARK_DIRTY is in flight anywhere,
//! precision is not judged. TRACKER_COLLECT must report
//! the block size of the spec 4.2 rule (fixed), the snapshot number this
//! model expects, and a generation id never seen before after a change of
//! generation.
//!
//! What it sees, as a black box: completed user writes (device, sectors,
//! submit and end times, result), the ioctl arguments and results (CREATE
//! lists, TAKE windows, MARK_DIRTY ranges, the bytes READ_CBT_MAP copied,
//! TRACKER_COLLECT entries, COLLECT_IMAGES pairs), the module parameters
//! (public in sysfs), device capacities and which device has a block-layer
//! filter attached (the sim's own records). It never reads the CBT map.
//!
//! Block geometry comes from the spec 4.2 rule (the fixed one) applied to
//! the capacity and parameters at tracker creation or reset, not from what
//! the engine reports: a checker that adopted the engine's block size
//! would adopt a wrong one silently. TRACKER_COLLECT is checked against it.
//!
//! MARK_DIRTY refuses (EINVAL) only a range out of the map's bounds or a
//! corrupted map (spec 4.5). So a MARK_DIRTY of an original whose ranges
//! all lie inside the device as the map was sized (at the tracker's
//! creation or its last reset), while no write has reached past the map
//! and nothing (a TAKE, another tracker) could have reset or replaced the
//! map during the call, must not fail with EINVAL.
//!
//! A corrupted map reads as EFAULT (spec 4.6): a user write that ended OK
//! went through the filter, which marks its blocks (spec 3.4), and one
//! past the map's last block corrupts the map until the next TAKE resets
//! it (spec 4.4). So once such a write, submitted after the generation's
//! last TAKE ended (and with no TAKE running), has completed, a
//! READ_CBT_MAP that begins later and no TAKE since must fail. (A
//! MARK_DIRTY past the map is refused and corrupts nothing.)
//!
//! When the model cannot know the numbers any more (a TAKE that failed near
//! the wrap, two TAKEs of one device at once, a failed TAKE that may have
//! reset the map, an unexpected generation id), it stops judging that
//! tracker; reads it could not judge are counted (`cbt_maps_unjudged`).

use std::collections::{BTreeMap, BTreeSet};
use std::rc::{Rc, Weak};

use bitvec::prelude::*;
use blksnap_core::kernel::{BdevFilter, Bio, BioOp, DevT, Errno, UserMemory};
use blksnap_core::uapi::*;
use blksnap_core::Params;

use crate::kernel::Sim;

// --- sparse block sets --------------------------------------------------------------

const PAGE_BITS: u64 = 4096;
type Page = BitArr!(for 4096, in u64, Lsb0);

/// A set of block indices in pages of 4096 bits: a 1 PiB device costs only
/// the pages its writes touch.
#[derive(Clone, Default)]
pub struct BlockSet {
    pages: BTreeMap<u64, Box<Page>>,
}

impl BlockSet {
    /// Add blocks `first..=last`. Inline, with the walk out of line: most
    /// writes touch one block, and the call and the walk's frame cost
    /// about as much as the OR into its word.
    #[inline]
    pub fn insert_range(&mut self, first: u64, last: u64) {
        if first == last {
            self.insert(first);
        } else {
            self.insert_span(first, last);
        }
    }

    /// Add blocks `first..=last`, page by page.
    #[inline(never)]
    fn insert_span(&mut self, first: u64, last: u64) {
        let mut block = first;
        while block <= last {
            let page = block / PAGE_BITS;
            let lo = (block % PAGE_BITS) as usize;
            let hi = (last.min(page * PAGE_BITS + PAGE_BITS - 1) % PAGE_BITS) as usize;
            let bits = self
                .pages
                .entry(page)
                .or_insert_with(|| Box::new(BitArray::ZERO));
            bits[lo..=hi].fill(true);
            block = page * PAGE_BITS + hi as u64 + 1;
        }
    }

    /// Add one block (most writes touch one): an OR into its word, where
    /// bitvec's checked `set` and the range walk cost about half of the
    /// 100 instructions an insert took (issue 10). Lsb0 in `u64`s: bit
    /// `i` of a page is bit `i % 64` of word `i / 64`.
    #[inline]
    fn insert(&mut self, block: u64) {
        let bits = self
            .pages
            .entry(block / PAGE_BITS)
            .or_insert_with(|| Box::new(BitArray::ZERO));
        let i = block % PAGE_BITS;
        bits.as_raw_mut_slice()[(i / 64) as usize] |= 1 << (i % 64);
    }

    pub fn contains(&self, block: u64) -> bool {
        self.pages
            .get(&(block / PAGE_BITS))
            .is_some_and(|bits| bits[(block % PAGE_BITS) as usize])
    }

    /// The blocks in `from..to`, in order.
    pub fn iter_range(&self, from: u64, to: u64) -> impl Iterator<Item = u64> + '_ {
        let pages = if from < to {
            self.pages.range(from / PAGE_BITS..=(to - 1) / PAGE_BITS)
        } else {
            self.pages.range(1..1)
        };
        pages
            .flat_map(|(page, bits)| bits.iter_ones().map(move |i| page * PAGE_BITS + i as u64))
            .filter(move |b| *b >= from && *b < to)
    }
}

// --- the model ----------------------------------------------------------------------

/// One successful TAKE of the device in a generation (index 0: the point
/// where the generation began), and the blocks changed after it that
/// settled before the next TAKE began.
struct Take {
    start: u64,
    end: u64,
    /// The snapshot number a consumer compares with (`previous`).
    number: u8,
    changed: BlockSet,
}

/// A change that was in flight while a TAKE ran: required only in copies
/// made by TAKEs that began after it completed.
struct Late {
    after: usize,
    first: u64,
    last: u64,
    completed: u64,
}

/// Block geometry by the spec 4.2 rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub shift: u32,
    pub count: u64,
    pub capacity: u64,
}

impl Geometry {
    /// The fixed rule: grow the shift by one until the count fits, up to
    /// the maximum shift.
    pub fn of(capacity: u64, params: &Params) -> Geometry {
        let blocks = |shift: u32| capacity.div_ceil(1u64 << shift.saturating_sub(9).min(63));
        let mut shift = params.tracking_block_minimum_shift;
        while blocks(shift) > params.tracking_block_maximum_count
            && shift < params.tracking_block_maximum_shift
        {
            shift += 1;
        }
        Geometry {
            shift,
            count: blocks(shift),
            capacity,
        }
    }

    /// The blocks a sector range touches.
    fn blocks(&self, sector: u64, sectors: u64) -> (u64, u64) {
        let shift = self.shift.saturating_sub(9).min(63);
        let last = sector.saturating_add(sectors.max(1) - 1);
        (sector >> shift, last >> shift)
    }
}

/// One generation of one tracker's map.
struct Gen {
    geometry: Geometry,
    takes: Vec<Take>,
    late: Vec<Late>,
    /// Every block any write (or MARK_DIRTY) touched, for over-reporting.
    touched: BlockSet,
    /// TAKEs that failed: each may have advanced the numbers by one.
    slack: u8,
    /// A write reached past the map: the next TAKE may reset it.
    maybe_corrupt: bool,
    /// A write that surely marked past the map (it ended OK, submitted
    /// after the last TAKE): its first sector and completion time.
    corrupted_by: Option<(u64, u64)>,
}

impl Gen {
    fn new(geometry: Geometry, start: u64, end: u64, number: u8) -> Gen {
        Gen {
            geometry,
            takes: vec![Take {
                start,
                end,
                number,
                changed: BlockSet::default(),
            }],
            late: Vec::new(),
            touched: BlockSet::default(),
            slack: 0,
            maybe_corrupt: false,
            corrupted_by: None,
        }
    }

    fn last(&self) -> &Take {
        self.takes
            .last()
            .expect("a generation starts with its base")
    }

    /// The TAKE a change submitted at `t` came after, if inside this
    /// generation.
    fn after(&self, t: u64) -> Option<usize> {
        self.takes.iter().rposition(|take| take.end <= t)
    }
}

/// Which frozen copy READ_CBT_MAP reads.
#[derive(Clone, Copy)]
enum Copy {
    Current(usize),
    /// After the 255th TAKE the read map keeps the copy of the 254th.
    Stale(usize),
}

/// What the checker knows of one device's tracker.
#[derive(Default)]
struct Device {
    /// The attached filter this model is about.
    tracker: Option<usize>,
    /// None: no tracker, or one whose numbers the model lost.
    gen: Option<Gen>,
    /// The model lost this tracker's numbers: it is not judged again.
    lost: bool,
    stale: Option<Gen>,
    copy: Option<Copy>,
    /// MARK_DIRTY since the copy raised the read map to `raised_to`.
    raised: BlockSet,
    raised_to: u8,
    /// The number TRACKER_COLLECT should report (`previous`).
    reported: u8,
    /// TAKEs of this device in flight.
    taking: u32,
    generation: Option<[u8; 16]>,
    old_generations: BTreeSet<[u8; 16]>,
    /// Bumped by whatever may replace or reset the map the model follows
    /// (another tracker, a lost model, a new generation, a TAKE's begin
    /// and end): a MARK_DIRTY is judged only if it stayed the same.
    epoch: u64,
}

impl Device {
    /// The device has `tracker` now: another one than before means the
    /// old map is gone with its tracker.
    fn tracker_is(&mut self, tracker: Option<usize>) {
        if self.tracker != tracker {
            self.epoch += 1;
            self.lose();
            self.lost = false;
            self.tracker = tracker;
            self.generation = None;
            self.old_generations.clear();
        }
    }

    /// A user write ended: file it in the current generation, if any.
    fn write(&mut self, change: &Change) {
        let taking = self.taking > 0;
        if let Some(gen) = self.gen.as_mut() {
            record_change(gen, change, taking);
            if !taking && gen.corrupted_by.is_none() && corrupts(gen, change) {
                gen.corrupted_by = Some((change.sector, change.completed));
            }
        }
    }

    fn lose(&mut self) {
        self.epoch += 1;
        self.lost = true;
        self.gen = None;
        self.stale = None;
        self.copy = None;
    }
}

/// A change of a device the checker learns of.
pub struct Change {
    pub sector: u64,
    pub sectors: u64,
    pub submitted: u64,
    pub completed: u64,
    pub ok: bool,
}

/// A READ_CBT_MAP result.
pub struct MapRead<'a> {
    pub offset: u64,
    /// The length the user asked for.
    pub length: u64,
    pub bytes: &'a [u8],
    pub start: u64,
    pub end: u64,
    /// The model's epoch of the device when the call began, if the user's
    /// whole buffer was writable then: the copy cannot fault, so it must
    /// fill all it can (see `short_of_the_map`).
    pub full: Option<u64>,
}

/// A TRACKER_COLLECT entry.
pub struct Info {
    pub blk_size: u32,
    pub blk_count: u32,
    pub generation: [u8; 16],
    pub snap_number: u8,
}

#[derive(Default)]
pub struct CbtChecker {
    devices: BTreeMap<DevT, Device>,
    /// Snapshot id -> its devices, from CREATE.
    snapshots: BTreeMap<[u8; 16], Vec<DevT>>,
    /// Image -> original, from COLLECT_IMAGES.
    images: BTreeMap<DevT, DevT>,
    /// Filters seen, by address, kept weakly so that a new one never
    /// reuses an old address. Looked up, never iterated: an order by
    /// address would differ between runs and must not reach a verdict.
    filters: BTreeMap<usize, Weak<dyn BdevFilter>>,
    /// The filter the last lookup met (it is in `filters`).
    last_filter: Option<usize>,
    /// The last lookup: its device, the block layer's filters version
    /// then, and the token it found. While the version stays, the same
    /// device has the same filter, with no search (issue 10).
    last_lookup: Option<(DevT, u64, Option<usize>)>,
    pub blocks_judged: u64,
    pub maps_judged: u64,
    pub maps_unjudged: u64,
    pub blocks_overreported: u64,
    /// MARK_DIRTY ioctls in flight: precision is not judged meanwhile.
    marks_in_flight: u32,
    /// User writes submitted and not ended, of every device (one the
    /// model follows only from a CREATE to come may be marked by then):
    /// (device, sector, sectors, submitted). The engine marks a write as
    /// it passes the filter; the model hears of it when it ends, so a map
    /// read in between may show its blocks.
    in_flight: Vec<(DevT, u64, u64, u64)>,
}

impl CbtChecker {
    /// The tracker of `dev` is now `tracker` (None: no filter). A tracker
    /// the model did not see created is not judged.
    pub fn tracker_is(&mut self, dev: DevT, tracker: Option<usize>) {
        self.devices.entry(dev).or_default().tracker_is(tracker);
    }

    /// CREATE ran in [start, end] and `dev` has `tracker` after it: if the
    /// model has none for it, it was created inside that window.
    pub fn created(
        &mut self,
        dev: DevT,
        tracker: Option<usize>,
        geometry: Geometry,
        (start, end): (u64, u64),
    ) {
        self.tracker_is(dev, tracker);
        let device = self.devices.entry(dev).or_default();
        if tracker.is_some() && device.gen.is_none() && !device.lost {
            device.epoch += 1;
            device.gen = Some(Gen::new(geometry, start, end, 0));
            device.reported = 0;
        }
    }

    pub fn snapshot_created(&mut self, id: [u8; 16], devs: Vec<DevT>) {
        self.snapshots.insert(id, devs);
    }

    pub fn image_of(&mut self, image: DevT, orig: DevT) {
        self.images.insert(image, orig);
    }

    fn snapshot_devices(&self, id: &[u8; 16]) -> Vec<DevT> {
        self.snapshots.get(id).cloned().unwrap_or_default()
    }

    pub fn take_begin(&mut self, id: &[u8; 16]) {
        for dev in self.snapshot_devices(id) {
            let device = self.devices.entry(dev).or_default();
            device.epoch += 1;
            device.taking += 1;
            if device.taking > 1 {
                device.lose();
            }
        }
    }

    /// TAKE of snapshot `id` ended; `geometry(dev)` is the rule applied to
    /// the device as it is now (a reset uses it).
    pub fn take_end(
        &mut self,
        id: &[u8; 16],
        window: (u64, u64),
        ok: bool,
        geometry: impl Fn(DevT) -> Geometry,
    ) {
        for dev in self.snapshot_devices(id) {
            let device = self.devices.entry(dev).or_default();
            device.epoch += 1;
            device.taking = device.taking.saturating_sub(1);
            let now = geometry(dev);
            if ok {
                take_succeeded(device, window, now);
            } else {
                take_failed(device, now);
            }
        }
    }

    /// `dev` was resized while a CREATE or TAKE of it ran: the engine read
    /// its capacity at some point of the call, so the size its map was
    /// made or reset with is unknown; the model stops judging that map.
    pub fn resized_during_call(&mut self, dev: DevT) {
        if let Some(device) = self.devices.get_mut(&dev) {
            device.lose();
        }
    }

    pub fn tracker_removed(&mut self, dev: DevT) {
        self.tracker_is(dev, None);
    }

    /// A user write to `dev` ended.
    pub fn write(&mut self, dev: DevT, change: &Change) {
        if let Some(device) = self.devices.get_mut(&dev) {
            device.write(change);
        }
    }

    /// MARK_DIRTY of `dev` (an original or an image) succeeded with these
    /// sector ranges in [start, end].
    pub fn marked_dirty(&mut self, dev: DevT, ranges: &[(u64, u64)], (start, end): (u64, u64)) {
        let dev = self.images.get(&dev).copied().unwrap_or(dev);
        let Some(device) = self.devices.get_mut(&dev) else {
            return;
        };
        let taking = device.taking > 0;
        let Some(gen) = device.gen.as_mut() else {
            return;
        };
        for &(sector, sectors) in ranges.iter().filter(|r| r.1 > 0) {
            let change = Change {
                sector,
                sectors,
                submitted: start,
                completed: end,
                ok: true,
            };
            record_change(gen, &change, taking);
            if !taking && device.copy.is_some() {
                let (first, last) = gen.geometry.blocks(sector, sectors);
                device
                    .raised
                    .insert_range(first, last.min(gen.geometry.count.saturating_sub(1)));
            }
        }
    }

    /// The model's epoch of `dev` (see `Device::epoch`), if it follows it.
    fn epoch(&self, dev: DevT) -> Option<u64> {
        self.devices.get(&dev).map(|d| d.epoch)
    }

    /// A MARK_DIRTY of `dev` that began at model epoch `epoch` failed with
    /// EINVAL: wrong if every range lay inside the map and the map could
    /// not be corrupted, reset or replaced (see the header).
    pub fn mark_refused(&self, dev: DevT, epoch: u64, ranges: &[(u64, u64)]) -> Result<(), String> {
        let Some(device) = self.devices.get(&dev) else {
            return Ok(());
        };
        let Some(gen) = device.gen.as_ref() else {
            return Ok(());
        };
        let capacity = gen.geometry.capacity;
        let inside = |&(sector, sectors): &(u64, u64)| {
            sectors > 0
                && sector
                    .checked_add(sectors)
                    .is_some_and(|end| end <= capacity)
        };
        let unsure = device.epoch != epoch
            || device.taking > 0
            || gen.maybe_corrupt
            || self.writes_past_map_in_flight(dev, &gen.geometry);
        if unsure || ranges.is_empty() || !ranges.iter().all(inside) {
            return Ok(());
        }
        let shown: Vec<String> = ranges
            .iter()
            .take(4)
            .map(|(s, n)| format!("({s}, {n})"))
            .collect();
        Err(format!(
            "MARK_DIRTY_BLOCKS of {dev} failed with EINVAL, but its {} range(s) [{}{}] all lie \
             inside the {capacity} sectors its CBT map was sized for (at the tracker's creation \
             or last reset), no write reached past the map, and no TAKE or other tracker could \
             reset or replace it meanwhile: spec 4.5 refuses only a range out of bounds or a \
             corrupted map",
            ranges.len(),
            shown.join(", "),
            if ranges.len() > 4 { ", ..." } else { "" }
        ))
    }

    /// A user write of `dev` still in flight reaches past the map: the
    /// engine may have marked it (and so corrupted the map) already.
    fn writes_past_map_in_flight(&self, dev: DevT, geometry: &Geometry) -> bool {
        self.in_flight.iter().any(|&(d, sector, sectors, _)| {
            d == dev && sectors > 0 && geometry.blocks(sector, sectors).1 >= geometry.count
        })
    }

    /// A MARK_DIRTY of `dev` failed: it may have marked some of these
    /// ranges, so their blocks are touched (not raised: nothing says the
    /// read map has them).
    pub fn maybe_marked(&mut self, dev: DevT, ranges: &[(u64, u64)]) {
        let dev = self.images.get(&dev).copied().unwrap_or(dev);
        let Some(gen) = self.devices.get_mut(&dev).and_then(|d| d.gen.as_mut()) else {
            return;
        };
        let count = gen.geometry.count;
        for &(sector, sectors) in ranges.iter().filter(|r| r.1 > 0) {
            let (first, last) = gen.geometry.blocks(sector, sectors);
            if first < count {
                gen.touched.insert_range(first, last.min(count - 1));
            }
        }
    }

    /// Judge a READ_CBT_MAP result of `dev`.
    pub fn map_read(&mut self, dev: DevT, read: &MapRead) -> Result<(), String> {
        let Some(device) = self.devices.get(&dev) else {
            self.unjudged(read);
            return Ok(());
        };
        if let Some(gen) = device.gen.as_ref().filter(|_| device.taking == 0) {
            past_the_map(gen.geometry.count, dev, read)?;
            read_though_corrupted(gen, dev, read)?;
            if read.full == Some(device.epoch) {
                short_of_the_map(gen.geometry.count, dev, read)?;
            }
        }
        let (gen, index) = match device.copy {
            Some(Copy::Current(i)) => (device.gen.as_ref(), i),
            Some(Copy::Stale(i)) => (device.stale.as_ref(), i),
            None => (None, 0),
        };
        let overlapped = device.taking > 0
            || device
                .gen
                .as_ref()
                .is_some_and(|g| g.last().end > read.start);
        let Some(gen) = gen.filter(|_| !overlapped) else {
            self.unjudged(read);
            return Ok(());
        };
        let verdict = judge(gen, index, device, dev, read).and_then(|judged| {
            numbered_past_the_copy(gen, index, dev, read)?;
            Ok(judged)
        });
        let over = overreported(gen, device, read, in_flight_to(&self.in_flight, dev));
        self.maps_judged += 1;
        self.blocks_overreported += over.count;
        let judged = verdict?;
        self.blocks_judged += judged;
        match over.first {
            Some((block, byte)) if self.marks_in_flight == 0 => Err(format!(
                "READ_CBT_MAP of {dev} marks block {block} with {byte}, but no write or \
                 MARK_DIRTY touched it in this map's generation ({} such blocks in [{}, {}))",
                over.count,
                read.offset,
                read.offset + read.bytes.len() as u64
            )),
            _ => Ok(()),
        }
    }

    /// Coverage: what the checker judged, and what it could not.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        [
            ("cbt_blocks_judged", self.blocks_judged),
            ("cbt_maps_judged", self.maps_judged),
            ("cbt_maps_unjudged", self.maps_unjudged),
            ("cbt_blocks_overreported", self.blocks_overreported),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value as f64))
        .collect()
    }

    fn unjudged(&mut self, read: &MapRead) {
        if !read.bytes.is_empty() {
            self.maps_unjudged += 1;
        }
    }

    /// Judge a TRACKER_COLLECT entry of `dev`.
    pub fn info(&mut self, dev: DevT, info: &Info, start: u64) -> Result<(), String> {
        let Some(device) = self.devices.get_mut(&dev) else {
            return Ok(());
        };
        let Some(gen) = device.gen.as_ref() else {
            return Ok(());
        };
        if device.taking > 0 || gen.last().end > start {
            return Ok(());
        }
        let g = gen.geometry;
        let size = 1u32.wrapping_shl(g.shift);
        if info.blk_size != size || u64::from(info.blk_count) != g.count {
            return Err(format!(
                "TRACKER_COLLECT reports blk_size {} and blk_count {} for {dev}; the block-size \
                 rule (spec 4.2) gives {size} and {} for {} sectors",
                info.blk_size, info.blk_count, g.count, g.capacity
            ));
        }
        let low = device.reported;
        let high = low.saturating_add(gen.slack);
        if info.snap_number < low || info.snap_number > high {
            return Err(format!(
                "TRACKER_COLLECT reports snap_number {} for {dev}; after the TAKEs seen it must \
                 be {}",
                info.snap_number,
                range_text(low, high)
            ));
        }
        check_generation(device, dev, info.generation)
    }
}

fn range_text(low: u8, high: u8) -> String {
    if low == high {
        low.to_string()
    } else {
        format!("{low}..={high}")
    }
}

/// The first generation id seen after a change of generation must be new;
/// one that changes without a reason the model knows ends the judging.
fn check_generation(device: &mut Device, dev: DevT, id: [u8; 16]) -> Result<(), String> {
    match device.generation {
        Some(known) if known == id => Ok(()),
        Some(_) => {
            device.lose();
            Ok(())
        }
        None if device.old_generations.contains(&id) => Err(format!(
            "TRACKER_COLLECT reports an old generation id for {dev} after a change of generation \
             (spec 4.4: a consumer would take a stale map for a current one)"
        )),
        None => {
            device.generation = Some(id);
            Ok(())
        }
    }
}

/// A new generation began: the id learned so far is old.
fn new_generation(device: &mut Device) {
    if let Some(id) = device.generation.take() {
        device.old_generations.insert(id);
    }
}

fn take_succeeded(device: &mut Device, (start, end): (u64, u64), now: Geometry) {
    if device.taking > 0 {
        device.lose();
        return;
    }
    let Some(gen) = device.gen.as_mut() else {
        return;
    };
    device.raised = BlockSet::default();
    let resized = gen.geometry.capacity != now.capacity;
    if resized || gen.maybe_corrupt {
        if !resized {
            // A write past the map may or may not have reached it.
            device.lose();
            return;
        }
        // Reset then switch: number 1, an empty copy.
        device.gen = Some(Gen::new(now, start, end, 1));
        device.stale = None;
        device.copy = Some(Copy::Current(0));
        device.raised_to = 1;
        device.reported = 1;
        new_generation(device);
        return;
    }
    let last = gen.last().number;
    if last.saturating_add(gen.slack) < 254 {
        gen.takes.push(Take {
            start,
            end,
            number: last + 1,
            changed: BlockSet::default(),
        });
        device.copy = Some(Copy::Current(gen.takes.len() - 1));
        device.raised_to = last + 1;
        device.reported = last + 1;
        return;
    }
    if gen.slack > 0 {
        device.lose();
        return;
    }
    // The 255th TAKE: numbers wrap, the read map keeps the 254th copy.
    let geometry = gen.geometry;
    let old = device.gen.replace(Gen::new(geometry, start, end, 0));
    let index = old.as_ref().map_or(0, |g| g.takes.len() - 1);
    device.stale = old;
    device.copy = Some(Copy::Stale(index));
    device.raised_to = 255;
    device.reported = 255;
    new_generation(device);
}

fn take_failed(device: &mut Device, now: Geometry) {
    let Some(gen) = device.gen.as_mut() else {
        return;
    };
    if gen.maybe_corrupt || gen.geometry.capacity != now.capacity {
        // It may have reset the map before failing.
        device.lose();
        return;
    }
    gen.slack = gen.slack.saturating_add(1);
}

/// File a completed change under the TAKE it came after.
fn record_change(gen: &mut Gen, change: &Change, taking: bool) {
    // An empty bio marks nothing (spec 3.4 step 2).
    if change.sectors == 0 {
        return;
    }
    let (first, last) = gen.geometry.blocks(change.sector, change.sectors);
    let count = gen.geometry.count;
    if last >= count {
        gen.maybe_corrupt = true;
    }
    if first >= count {
        return;
    }
    let last = last.min(count - 1);
    gen.touched.insert_range(first, last);
    if !change.ok {
        return;
    }
    let Some(after) = gen.after(change.submitted) else {
        return;
    };
    if after + 1 == gen.takes.len() && !taking {
        gen.takes[after].changed.insert_range(first, last);
    } else {
        gen.late.push(Late {
            after,
            first,
            last,
            completed: change.completed,
        });
    }
}

/// Check the bytes against the copy made by take `index` of `gen`.
/// Returns how many block requirements were checked.
fn judge(
    gen: &Gen,
    index: usize,
    device: &Device,
    dev: DevT,
    read: &MapRead,
) -> Result<u64, String> {
    let from = read.offset;
    let to = from + read.bytes.len() as u64;
    let copy = &gen.takes[index];
    let mut judged = 0;
    let fail = |block: u64, above: u8, why: String| {
        let got = read.bytes[(block - from) as usize];
        format!(
            "CBT map of {dev} read at {} ns: block {block} is {got}, must be > {above}: {why} \
             (the map is the copy made by the TAKE at {} ns, snapshot number {})",
            read.start, copy.start, copy.number
        )
    };
    let low = |block: u64, above: u8| read.bytes[(block - from) as usize] <= above;
    for take in &gen.takes[..index] {
        judged += take.changed.iter_range(from, to).count() as u64;
        if let Some(block) = take
            .changed
            .iter_range(from, to)
            .find(|&b| low(b, take.number))
        {
            let why = format!(
                "it was written after the TAKE that ended at {} ns",
                take.end
            );
            return Err(fail(block, take.number, why));
        }
    }
    for late in gen
        .late
        .iter()
        .filter(|l| l.after < index && l.completed < copy.start)
    {
        let above = gen.takes[late.after].number;
        let blocks = late.first.max(from)..(late.last + 1).min(to);
        judged += blocks.clone().count() as u64;
        if let Some(block) = blocks.clone().find(|&b| low(b, above)) {
            let why = format!("a write that completed at {} ns changed it", late.completed);
            return Err(fail(block, above, why));
        }
    }
    if let Some(above) = device.raised_to.checked_sub(1) {
        judged += device.raised.iter_range(from, to).count() as u64;
        if let Some(block) = device.raised.iter_range(from, to).find(|&b| low(b, above)) {
            let why = "MARK_DIRTY raised it after the copy".to_string();
            return Err(fail(block, above, why));
        }
    }
    Ok(judged)
}

/// READ_CBT_MAP copies at most the map from the offset on (a longer copy
/// reads past the table: B-CBT-2's out-of-bounds read). The geometry of a
/// reset to come is the same until the next TAKE, so the current one holds.
fn past_the_map(count: u64, dev: DevT, read: &MapRead) -> Result<(), String> {
    let most = count.saturating_sub(read.offset).min(read.length);
    let copied = read.bytes.len() as u64;
    if copied <= most {
        return Ok(());
    }
    Err(format!(
        "READ_CBT_MAP of {dev} at offset {} with length {} copied {copied} bytes; the map has \
         {count} blocks, so at most {most}",
        read.offset, read.length
    ))
}

/// READ_CBT_MAP copies min(length, blocks - offset) bytes (spec 4.6) unless
/// copy_to_user faults; into a buffer that was writable throughout, with
/// the same map since the call began, it cannot copy fewer. A map left at
/// its old size after the device grew and a TAKE (which must reset it)
/// copies fewer.
fn short_of_the_map(count: u64, dev: DevT, read: &MapRead) -> Result<(), String> {
    let due = count.saturating_sub(read.offset).min(read.length);
    let copied = read.bytes.len() as u64;
    if copied >= due {
        return Ok(());
    }
    Err(format!(
        "READ_CBT_MAP of {dev} at offset {} with length {} copied {copied} bytes into a \
         writable buffer; the map has {count} blocks (spec 4.2 on the capacity at its creation \
         or last reset), so it must copy {due}",
        read.offset, read.length
    ))
}

/// A user write that surely marked a block past the map: it ended OK
/// (so the filter marked it), submitted after the generation's last TAKE
/// ended (so no TAKE's reset came between).
fn corrupts(gen: &Gen, change: &Change) -> bool {
    let (_, last) = gen.geometry.blocks(change.sector, change.sectors);
    change.ok
        && change.sectors > 0
        && last >= gen.geometry.count
        && gen.after(change.submitted) == Some(gen.takes.len() - 1)
}

/// A READ_CBT_MAP that succeeded after a write corrupted the map.
fn read_though_corrupted(gen: &Gen, dev: DevT, read: &MapRead) -> Result<(), String> {
    match gen.corrupted_by {
        Some((sector, completed)) if completed <= read.start => Err(format!(
            "READ_CBT_MAP of {dev} that began at {} ns returned the map, but a write at \
             sector {sector} that completed at {completed} ns reached past the map's {} \
             blocks after the last TAKE: the map is corrupted and must read as EFAULT until \
             the next TAKE resets it",
            read.start, gen.geometry.count
        )),
        _ => Ok(()),
    }
}

/// No block of the copy made by TAKE `index` can be newer than that TAKE:
/// writes before it were marked with its number, and a MARK_DIRTY after
/// it raises the copy to that number, not to the one the next TAKE will
/// have. Each TAKE that failed may have advanced the numbers by one
/// (`slack`).
fn numbered_past_the_copy(
    gen: &Gen,
    index: usize,
    dev: DevT,
    read: &MapRead,
) -> Result<(), String> {
    let copy = &gen.takes[index];
    let most = copy.number.saturating_add(gen.slack);
    let Some(i) = read.bytes.iter().position(|&byte| byte > most) else {
        return Ok(());
    };
    Err(format!(
        "CBT map of {dev} read at {} ns: block {} is {}, newer than the copy it reads (made by \
         the TAKE at {} ns, snapshot number {}{})",
        read.start,
        read.offset + i as u64,
        read.bytes[i],
        copy.start,
        copy.number,
        if gen.slack > 0 {
            format!(", or up to {most} after failed TAKEs")
        } else {
            String::new()
        }
    ))
}

/// Blocks a map read marks that nothing this model saw touched.
struct Overreported {
    count: u64,
    /// The first of them, and its byte.
    first: Option<(u64, u8)>,
}

/// Blocks marked that no change this model saw touched, nor a write in
/// flight.
fn overreported<'a>(
    gen: &Gen,
    device: &Device,
    read: &MapRead,
    in_flight: impl Iterator<Item = (u64, u64)> + Clone + 'a,
) -> Overreported {
    let mut over = Overreported {
        count: 0,
        first: None,
    };
    for (i, &byte) in read.bytes.iter().enumerate() {
        if byte == 0 {
            continue;
        }
        let block = read.offset + i as u64;
        let explained = gen.touched.contains(block)
            || device.raised.contains(block)
            || in_flight_over(gen, in_flight.clone(), block);
        if !explained {
            over.count += 1;
            over.first.get_or_insert((block, byte));
        }
    }
    over
}

/// The (sector, sectors) of each write to `dev` in flight.
fn in_flight_to(
    in_flight: &[(DevT, u64, u64, u64)],
    dev: DevT,
) -> impl Iterator<Item = (u64, u64)> + Clone + '_ {
    in_flight
        .iter()
        .filter(move |w| w.0 == dev)
        .map(|&(_, sector, sectors, _)| (sector, sectors))
}

/// One of these writes in flight covers `block`.
fn in_flight_over(gen: &Gen, mut in_flight: impl Iterator<Item = (u64, u64)>, block: u64) -> bool {
    in_flight.any(|(sector, sectors)| {
        let (first, last) = gen.geometry.blocks(sector, sectors.max(1));
        (first..=last).contains(&block)
    })
}

// --- hooks: what the sim shows the checker ------------------------------------------

/// The identity of the filter attached to `dev`, if any (the block layer's
/// own record). Kept alive weakly so that its address is never reused.
fn tracker_token(sim: &Sim, dev: DevT) -> Option<usize> {
    let version = sim.blk.filters_version();
    if let Some((last, seen, token)) = sim.cbt.borrow().last_lookup {
        if (last, seen) == (dev, version) {
            return token;
        }
    }
    let token = look_up_token(sim, dev);
    sim.cbt.borrow_mut().last_lookup = Some((dev, version, token));
    token
}

/// `tracker_token` from the block layer's filters.
fn look_up_token(sim: &Sim, dev: DevT) -> Option<usize> {
    // Borrowed, not cloned: no reference count moves per write.
    let filters = sim.blk.filters();
    let filter: &Rc<dyn BdevFilter> = filters.get(&dev)?;
    let token = Rc::as_ptr(filter) as *const () as usize;
    // Every filter seen is held weakly, so its allocation (and address)
    // outlives it: a token in the map names that filter and no other.
    // One lookup per write, however many filters the run attached.
    // Most writes meet the filter the last one met: no lookup then.
    let mut checker = sim.cbt.borrow_mut();
    if checker.last_filter != Some(token) {
        checker
            .filters
            .entry(token)
            .or_insert_with(|| Rc::downgrade(filter));
        checker.last_filter = Some(token);
    }
    Some(token)
}

fn capacity(sim: &Sim, dev: DevT) -> u64 {
    sim.blk.devices.borrow().get(&dev).map_or(0, |d| d.capacity)
}

/// A user write ended (block layer hook).
pub fn user_write(sim: &Sim, dev: DevT, change: &Change) {
    let token = tracker_token(sim, dev);
    let mut checker = sim.cbt.borrow_mut();
    // One lookup: `tracker_is` then `write` on the device, when followed.
    let key = (dev, change.sector, change.sectors, change.submitted);
    if let Some(i) = checker.in_flight.iter().position(|&w| w == key) {
        checker.in_flight.swap_remove(i);
    }
    if let Some(device) = checker.devices.get_mut(&dev) {
        device.tracker_is(token);
        device.write(change);
    }
}

/// A user bio was submitted (block layer hook): a write is in flight
/// until `user_bio_ended`.
pub fn user_bio_submitted(sim: &Sim, bio: &Bio, submitted: u64) {
    if bio.op != BioOp::Write {
        return;
    }
    let write = (bio.dev, bio.sector, bio.sectors, submitted);
    sim.cbt.borrow_mut().in_flight.push(write);
}

/// What an ioctl hook remembers between its start and its end.
pub struct IoctlStart {
    cmd: u32,
    start: u64,
    id: Option<[u8; 16]>,
    /// MARK_DIRTY: its device and the model's epoch of it at the start.
    mark: Option<(DevT, u64)>,
    /// READ_CBT_MAP into a buffer writable at the start: the epoch then.
    full: Option<u64>,
    /// CREATE and TAKE: the capacity of each of their devices at the start.
    sizes: Vec<(DevT, u64)>,
}

/// Before the engine runs an ioctl.
pub fn ioctl_begin(sim: &Sim, cmd: u32, arg: u64, user: &dyn UserMemory) -> IoctlStart {
    let mut id = None;
    let mut mark = None;
    if cmd == IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS {
        let mut checker = sim.cbt.borrow_mut();
        checker.marks_in_flight += 1;
        mark = decode::<BlkSnapTrackerMarkDirtyBlocks>(user, arg).and_then(|m| {
            let dev = DevT::new(m.dev_id.mj, m.dev_id.mn);
            Some((dev, checker.epoch(dev)?))
        });
    }
    if cmd == IOCTL_BLK_SNAP_SNAPSHOT_TAKE {
        id = decode::<BlkSnapSnapshotTake>(user, arg).map(|t| t.id.b);
        if let Some(id) = &id {
            sim.cbt.borrow_mut().take_begin(id);
        }
    }
    let full = if cmd == IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP {
        writable_epoch(sim, arg, user)
    } else {
        None
    };
    let devs = match cmd {
        IOCTL_BLK_SNAP_SNAPSHOT_CREATE => create_devices(user, arg),
        _ => id
            .map(|id| sim.cbt.borrow().snapshot_devices(&id))
            .unwrap_or_default(),
    };
    IoctlStart {
        cmd,
        start: sim.now(),
        id,
        mark,
        full,
        sizes: devs.into_iter().map(|d| (d, capacity(sim, d))).collect(),
    }
}

/// Whether `dev` may have changed size while the call that began with
/// `begun` ran: its capacity differs from the start's, or a Resize of it
/// came after the start (one at the very start may have come first).
fn resized_in_call(sim: &Sim, begun: &IoctlStart, dev: DevT, (from, to): (u64, u64)) -> bool {
    let before = begun.sizes.iter().find(|(d, _)| *d == dev).map(|(_, c)| *c);
    before != Some(capacity(sim, dev)) || sim.injected.borrow().resized_within(dev, (from + 1, to))
}

/// The devices a CREATE's argument lists.
fn create_devices(user: &dyn UserMemory, arg: u64) -> Vec<DevT> {
    let Some(create) = decode::<BlkSnapSnapshotCreate>(user, arg) else {
        return Vec::new();
    };
    decode_array::<BlkSnapDev>(user, create.dev_id_array, create.count.into())
        .iter()
        .map(|d| DevT::new(d.mj, d.mn))
        .collect()
}

/// The model's epoch of a READ_CBT_MAP's device if the user's whole
/// buffer is writable (mapped and not read-only): the user knows its own
/// buffer. Probed by writing back what is there, which changes nothing.
/// Lengths past the loader's bound are not probed.
fn writable_epoch(sim: &Sim, arg: u64, user: &dyn UserMemory) -> Option<u64> {
    let read = decode::<BlkSnapTrackerReadCbtBitmap>(user, arg)?;
    let length = usize::try_from(read.length)
        .ok()
        .filter(|l| *l <= 1 << 24)?;
    let bytes = user.copy_from_user(read.buff, length).ok()?;
    user.copy_to_user(read.buff, &bytes).ok()?;
    sim.cbt
        .borrow()
        .epoch(DevT::new(read.dev_id.mj, read.dev_id.mn))
}

pub(crate) fn decode<T: UapiStruct>(user: &dyn UserMemory, addr: u64) -> Option<T> {
    T::decode(&user.copy_from_user(addr, T::SIZE).ok()?)
}

pub(crate) fn decode_array<T: UapiStruct>(user: &dyn UserMemory, addr: u64, count: u64) -> Vec<T> {
    (0..count.min(1 << 16))
        .map_while(|i| decode::<T>(user, addr.wrapping_add(i * T::SIZE as u64)))
        .collect()
}

/// After the engine ran an ioctl: learn from it, and judge what it returned.
pub fn ioctl_end(
    sim: &Sim,
    params: &Params,
    begun: IoctlStart,
    arg: u64,
    result: Result<i64, blksnap_core::kernel::Errno>,
    user: &dyn UserMemory,
) {
    let window = (begun.start, sim.now());
    let verdict = match begun.cmd {
        IOCTL_BLK_SNAP_SNAPSHOT_CREATE => {
            created(sim, params, &begun, arg, window, result.is_ok(), user);
            Ok(())
        }
        IOCTL_BLK_SNAP_SNAPSHOT_TAKE => {
            if let Some(id) = begun.id {
                let geometry = |dev| Geometry::of(capacity(sim, dev), params);
                let mut checker = sim.cbt.borrow_mut();
                checker.take_end(&id, window, result.is_ok(), geometry);
                for dev in checker.snapshot_devices(&id) {
                    if resized_in_call(sim, &begun, dev, window) {
                        checker.resized_during_call(dev);
                    }
                }
            }
            Ok(())
        }
        IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES if result.is_ok() => {
            images_collected(sim, arg, user);
            Ok(())
        }
        IOCTL_BLK_SNAP_TRACKER_REMOVE if result.is_ok() => {
            if let Some(remove) = decode::<BlkSnapTrackerRemove>(user, arg) {
                let dev = DevT::new(remove.dev_id.mj, remove.dev_id.mn);
                sim.cbt.borrow_mut().tracker_removed(dev);
            }
            Ok(())
        }
        IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS => {
            let mut checker = sim.cbt.borrow_mut();
            checker.marks_in_flight = checker.marks_in_flight.saturating_sub(1);
            drop(checker);
            let ranges = marked_dirty(sim, arg, window, result.is_ok(), user);
            match (begun.mark, result) {
                (Some((dev, epoch)), Err(e)) if e == Errno::EINVAL => {
                    sim.cbt.borrow().mark_refused(dev, epoch, &ranges)
                }
                _ => Ok(()),
            }
        }
        IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP => match result {
            Ok(copied) => map_read(sim, arg, copied, window, begun.full, user),
            Err(_) => Ok(()),
        },
        IOCTL_BLK_SNAP_TRACKER_COLLECT if result.is_ok() => collected(sim, arg, begun.start, user),
        _ => Ok(()),
    };
    if let Err(message) = verdict {
        sim.fail("cbt", message);
    }
}

fn created(
    sim: &Sim,
    params: &Params,
    begun: &IoctlStart,
    arg: u64,
    window: (u64, u64),
    ok: bool,
    user: &dyn UserMemory,
) {
    let Some(create) = decode::<BlkSnapSnapshotCreate>(user, arg) else {
        return;
    };
    let devs = create_devices(user, arg);
    for &dev in &devs {
        let token = tracker_token(sim, dev);
        let geometry = Geometry::of(capacity(sim, dev), params);
        let mut checker = sim.cbt.borrow_mut();
        checker.created(dev, token, geometry, window);
        if resized_in_call(sim, begun, dev, window) {
            checker.resized_during_call(dev);
        }
    }
    if ok {
        sim.cbt.borrow_mut().snapshot_created(create.id.b, devs);
    }
}

fn images_collected(sim: &Sim, arg: u64, user: &dyn UserMemory) {
    let Some(collect) = decode::<BlkSnapSnapshotCollectImages>(user, arg) else {
        return;
    };
    if collect.image_info_array == 0 {
        return;
    }
    let infos =
        decode_array::<BlkSnapImageInfo>(user, collect.image_info_array, collect.count.into());
    let mut checker = sim.cbt.borrow_mut();
    for info in infos {
        let image = DevT::new(info.image_dev_id.mj, info.image_dev_id.mn);
        let orig = DevT::new(info.orig_dev_id.mj, info.orig_dev_id.mn);
        checker.image_of(image, orig);
    }
}

/// File a MARK_DIRTY's ranges (returned) as marked, or maybe marked.
fn marked_dirty(
    sim: &Sim,
    arg: u64,
    window: (u64, u64),
    ok: bool,
    user: &dyn UserMemory,
) -> Vec<(u64, u64)> {
    let Some(mark) = decode::<BlkSnapTrackerMarkDirtyBlocks>(user, arg) else {
        return Vec::new();
    };
    let ranges: Vec<(u64, u64)> =
        decode_array::<BlkSnapBlockRange>(user, mark.dirty_blocks_array, mark.count.into())
            .iter()
            .map(|r| (r.sector_offset, r.sector_count))
            .collect();
    let dev = DevT::new(mark.dev_id.mj, mark.dev_id.mn);
    let mut checker = sim.cbt.borrow_mut();
    if ok {
        checker.marked_dirty(dev, &ranges, window);
    } else {
        // It stops at its first bad range; the ones before stay marked.
        checker.maybe_marked(dev, &ranges);
    }
    ranges
}

fn map_read(
    sim: &Sim,
    arg: u64,
    copied: i64,
    (start, end): (u64, u64),
    full: Option<u64>,
    user: &dyn UserMemory,
) -> Result<(), String> {
    let Some(read) = decode::<BlkSnapTrackerReadCbtBitmap>(user, arg) else {
        return Ok(());
    };
    let dev = DevT::new(read.dev_id.mj, read.dev_id.mn);
    let len = usize::try_from(copied).unwrap_or(0);
    let bytes = user.copy_from_user(read.buff, len).unwrap_or_default();
    let token = tracker_token(sim, dev);
    let mut checker = sim.cbt.borrow_mut();
    checker.tracker_is(dev, token);
    let read = MapRead {
        offset: read.offset.into(),
        length: read.length.into(),
        bytes: &bytes,
        start,
        end,
        full,
    };
    checker.map_read(dev, &read)
}

fn collected(sim: &Sim, arg: u64, start: u64, user: &dyn UserMemory) -> Result<(), String> {
    let Some(collect) = decode::<BlkSnapTrackerCollect>(user, arg) else {
        return Ok(());
    };
    if collect.cbt_info_array == 0 {
        return Ok(());
    }
    let infos = decode_array::<BlkSnapCbtInfo>(user, collect.cbt_info_array, collect.count.into());
    for entry in infos {
        let dev = DevT::new(entry.dev_id.mj, entry.dev_id.mn);
        let token = tracker_token(sim, dev);
        let mut checker = sim.cbt.borrow_mut();
        checker.tracker_is(dev, token);
        let info = Info {
            blk_size: entry.blk_size,
            blk_count: entry.blk_count,
            generation: entry.generation_id.b,
            snap_number: entry.snap_number,
        };
        checker.info(dev, &info, start)?;
    }
    Ok(())
}

/// A user bio ended (block layer hook): writes change blocks.
pub fn user_bio_ended(sim: &Sim, bio: &Bio, submitted: u64, completed: u64, ok: bool) {
    if bio.op != BioOp::Write {
        return;
    }
    let change = Change {
        sector: bio.sector,
        sectors: bio.sectors,
        submitted,
        completed,
        ok,
    };
    user_write(sim, bio.dev, &change);
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: DevT = DevT(7 << 20);
    const SNAP: [u8; 16] = [1; 16];
    /// 100 blocks of 128 sectors (64 KiB, the default rule).
    const CAPACITY: u64 = 12800;

    fn geometry(capacity: u64) -> Geometry {
        Geometry::of(capacity, &Params::default())
    }

    fn checker() -> CbtChecker {
        let mut c = CbtChecker::default();
        c.created(D, Some(1), geometry(CAPACITY), (0, 10));
        c.snapshot_created(SNAP, vec![D]);
        c
    }

    fn take(c: &mut CbtChecker, start: u64, end: u64) {
        take_sized(c, start, end, CAPACITY);
    }

    fn take_sized(c: &mut CbtChecker, start: u64, end: u64, capacity: u64) {
        c.take_begin(&SNAP);
        c.take_end(&SNAP, (start, end), true, |_| geometry(capacity));
    }

    fn write(c: &mut CbtChecker, sector: u64, sectors: u64, submitted: u64, completed: u64) {
        let change = Change {
            sector,
            sectors,
            submitted,
            completed,
            ok: true,
        };
        c.write(D, &change);
    }

    fn read(c: &mut CbtChecker, at: u64, marks: &[(usize, u8)]) -> Result<(), String> {
        let mut bytes = vec![0u8; 100];
        for &(i, v) in marks {
            bytes[i] = v;
        }
        let read = MapRead {
            offset: 0,
            length: bytes.len() as u64,
            bytes: &bytes,
            start: at,
            end: at + 1,
            full: None,
        };
        c.map_read(D, &read)
    }

    fn info(number: u8, generation: u8) -> Info {
        Info {
            blk_size: 65536,
            blk_count: 100,
            generation: [generation; 16],
            snap_number: number,
        }
    }

    #[test]
    fn a_missing_block_fails_and_a_marked_one_passes() {
        let mut c = checker();
        take(&mut c, 20, 30);
        write(&mut c, 5 * 128, 8, 40, 50);
        take(&mut c, 60, 70);
        let err = read(&mut c, 80, &[]).unwrap_err();
        assert!(err.contains("block 5 is 0, must be > 1"), "{err}");
        assert!(read(&mut c, 80, &[(5, 2)]).is_ok());
        assert!(c.blocks_judged >= 1);
    }

    #[test]
    fn a_number_not_newer_than_the_take_before_the_change_fails() {
        let mut c = checker();
        take(&mut c, 20, 30);
        write(&mut c, 5 * 128, 8, 40, 50);
        take(&mut c, 60, 70);
        let err = read(&mut c, 80, &[(5, 1)]).unwrap_err();
        assert!(err.contains("block 5 is 1, must be > 1"), "{err}");
    }

    #[test]
    fn a_write_straddling_blocks_needs_every_block() {
        let mut c = checker();
        take(&mut c, 20, 30);
        // Sectors 250..260: blocks 1 and 2.
        write(&mut c, 250, 10, 40, 50);
        take(&mut c, 60, 70);
        let err = read(&mut c, 80, &[(1, 2)]).unwrap_err();
        assert!(err.contains("block 2 is 0"), "{err}");
        assert!(read(&mut c, 80, &[(1, 2), (2, 2)]).is_ok());
    }

    #[test]
    fn writes_before_the_copy_take_only_are_required() {
        let mut c = checker();
        take(&mut c, 20, 30);
        // Written after the copy: the frozen map need not show it.
        write(&mut c, 0, 8, 40, 50);
        assert!(read(&mut c, 60, &[]).is_ok());
        assert_eq!(c.blocks_judged, 0);
    }

    #[test]
    fn writes_in_flight_during_a_take_go_either_way_there_and_count_later() {
        let mut c = checker();
        take(&mut c, 20, 30);
        c.take_begin(&SNAP);
        write(&mut c, 0, 8, 55, 65); // in flight at the start of the take
        write(&mut c, 128, 8, 62, 68); // submitted inside the take
        c.take_end(&SNAP, (60, 70), true, |_| geometry(CAPACITY));
        assert!(read(&mut c, 80, &[]).is_ok());
        assert!(read(&mut c, 80, &[(0, 2), (1, 2)]).is_ok());
        take(&mut c, 100, 110);
        let err = read(&mut c, 120, &[(1, 2)]).unwrap_err();
        assert!(err.contains("block 0 is 0, must be > 1"), "{err}");
        let err = read(&mut c, 120, &[(0, 2)]).unwrap_err();
        assert!(err.contains("block 1 is 0, must be > 1"), "{err}");
        assert!(read(&mut c, 120, &[(0, 2), (1, 2)]).is_ok());
    }

    #[test]
    fn a_read_overlapping_a_take_is_not_judged_but_counted() {
        let mut c = checker();
        take(&mut c, 20, 30);
        write(&mut c, 0, 8, 40, 50);
        take(&mut c, 60, 70);
        assert!(read(&mut c, 65, &[]).is_ok());
        assert_eq!(c.maps_unjudged, 1);
        assert_eq!(c.maps_judged, 0);
    }

    #[test]
    fn the_255th_take_wraps_and_the_stale_copy_is_judged_as_the_254th() {
        let mut c = checker();
        let mut t = 20;
        for _ in 0..253 {
            take(&mut c, t, t + 5);
            t += 10;
        }
        // After the 253rd take: a change it must show once the 254th ran.
        write(&mut c, 3 * 128, 8, t, t + 2);
        take(&mut c, t + 5, t + 8); // 254th
        write(&mut c, 4 * 128, 8, t + 10, t + 12); // lost by the wrap
        assert!(c.info(D, &info(254, 1), t + 9).is_ok());
        take(&mut c, t + 20, t + 25); // 255th: the read map stays the 254th copy
        let err = read(&mut c, t + 30, &[]).unwrap_err();
        assert!(err.contains("block 3 is 0, must be > 253"), "{err}");
        assert!(read(&mut c, t + 30, &[(3, 254)]).is_ok());
        // A consumer must see a new generation, numbered 255.
        let err = c.info(D, &info(255, 1), t + 31).unwrap_err();
        assert!(err.contains("old generation"), "{err}");
        assert!(c.info(D, &info(255, 2), t + 31).is_ok());
        // The new generation: changes after the wrap count from 0.
        write(&mut c, 6 * 128, 8, t + 40, t + 42);
        take(&mut c, t + 50, t + 55); // 256th: number 1
        let err = read(&mut c, t + 60, &[]).unwrap_err();
        assert!(err.contains("block 6 is 0, must be > 0"), "{err}");
        assert!(read(&mut c, t + 60, &[(6, 1)]).is_ok());
        let err = c.info(D, &info(2, 2), t + 61).unwrap_err();
        assert!(err.contains("must be 1"), "{err}");
    }

    #[test]
    fn a_resize_resets_the_generation_and_forgets_older_changes() {
        let mut c = checker();
        take(&mut c, 20, 30);
        assert!(c.info(D, &info(1, 1), 31).is_ok());
        write(&mut c, 0, 8, 40, 50);
        take_sized(&mut c, 60, 70, CAPACITY * 2);
        // The reset map is empty: nothing older is required.
        assert!(read(&mut c, 80, &[]).is_ok());
        let mut wide = info(1, 1);
        wide.blk_count = 200;
        let err = c.info(D, &wide, 81).unwrap_err();
        assert!(err.contains("old generation"), "{err}");
        wide.generation = [3; 16];
        assert!(c.info(D, &wide, 81).is_ok());
        write(&mut c, 150 * 128, 8, 90, 95);
        take_sized(&mut c, 100, 110, CAPACITY * 2);
        let err = read_wide(&mut c, 120).unwrap_err();
        assert!(err.contains("block 150 is 0, must be > 1"), "{err}");
    }

    /// A write past the map after the last TAKE corrupts it: a read that
    /// began after the write completed must not succeed, until a TAKE
    /// resets the map; a read that began before, a failed write, a
    /// MARK_DIRTY past the map, or a write submitted before the last TAKE
    /// ended corrupt nothing the checker can be sure of.
    #[test]
    fn a_map_read_after_a_write_past_it_fails() {
        let mut c = checker();
        take(&mut c, 20, 30);
        write(&mut c, 0, 8, 40, 45);
        // The device grew: sector 12800 is block 100, past the map.
        write(&mut c, CAPACITY, 8, 50, 60);
        assert!(read(&mut c, 59, &[(0, 1)]).is_ok());
        let err = read(&mut c, 60, &[(0, 1)]).unwrap_err();
        assert_eq!(
            err,
            "READ_CBT_MAP of 7:0 that began at 60 ns returned the map, but a write at sector \
             12800 that completed at 60 ns reached past the map's 100 blocks after the last \
             TAKE: the map is corrupted and must read as EFAULT until the next TAKE resets it"
        );
        // The next TAKE resets it to the new size; reads pass again.
        take_sized(&mut c, 70, 80, CAPACITY * 2);
        assert!(read_wide(&mut c, 90).is_ok());
        let mut c = checker();
        take(&mut c, 20, 30);
        let failed = Change {
            sector: CAPACITY,
            sectors: 8,
            submitted: 40,
            completed: 50,
            ok: false,
        };
        c.write(D, &failed);
        c.marked_dirty(D, &[(CAPACITY, 8)], (40, 50));
        // Submitted before the TAKE ended: the TAKE may have reset it.
        write(&mut c, CAPACITY, 8, 25, 35);
        assert!(read(&mut c, 60, &[]).is_ok());
    }

    fn read_wide(c: &mut CbtChecker, at: u64) -> Result<(), String> {
        let bytes = vec![0u8; 200];
        let read = MapRead {
            offset: 0,
            length: bytes.len() as u64,
            bytes: &bytes,
            start: at,
            end: at + 1,
            full: None,
        };
        c.map_read(D, &read)
    }

    #[test]
    fn a_wrong_block_size_fails_tracker_collect() {
        let mut c = checker();
        take(&mut c, 20, 30);
        let mut bad = info(1, 1);
        bad.blk_size = 1;
        let err = c.info(D, &bad, 31).unwrap_err();
        assert!(err.contains("spec 4.2"), "{err}");
    }

    #[test]
    fn an_unknown_tracker_is_counted_not_judged() {
        let mut c = CbtChecker::default();
        assert!(read(&mut c, 10, &[(0, 9)]).is_ok());
        assert_eq!((c.maps_judged, c.maps_unjudged), (0, 1));
    }

    /// Block 9 marked, though only block 0 was written.
    fn over_marked() -> CbtChecker {
        let mut c = checker();
        take(&mut c, 20, 30);
        write(&mut c, 0, 8, 40, 50);
        take(&mut c, 60, 70);
        c
    }

    #[test]
    fn over_reporting_fails_and_is_counted() {
        let mut c = over_marked();
        let err = read(&mut c, 80, &[(0, 2), (9, 2), (11, 1)]).unwrap_err();
        assert!(
            err.contains("marks block 9 with 2, but no write or MARK_DIRTY"),
            "{err}"
        );
        assert!(err.contains("(2 such blocks"), "{err}");
        assert_eq!(c.blocks_overreported, 2);
    }

    /// The engine marks a write as it passes the filter; the model hears
    /// of it when it ends.
    #[test]
    fn a_write_in_flight_explains_its_blocks_on_its_device_only() {
        let mut c = over_marked();
        let other = DevT(8 << 20);
        c.in_flight.push((other, 9 * 128, 8, 75));
        assert!(read(&mut c, 80, &[(0, 2), (9, 2)]).is_err());
        c.in_flight.push((D, 9 * 128 + 120, 16, 75)); // blocks 9 and 10
        assert!(read(&mut c, 80, &[(0, 2), (9, 2), (10, 2)]).is_ok());
        assert!(read(&mut c, 80, &[(0, 2), (9, 2), (11, 2)]).is_err());
    }

    #[test]
    fn a_failed_mark_dirty_explains_its_ranges() {
        let mut c = over_marked();
        c.maybe_marked(D, &[(9 * 128, 1), (50 * 128, 0)]);
        assert!(read(&mut c, 80, &[(0, 2), (9, 2)]).is_ok());
        assert!(read(&mut c, 80, &[(0, 2), (50, 2)]).is_err());
    }

    #[test]
    fn precision_waits_while_a_mark_dirty_is_in_flight() {
        let mut c = over_marked();
        c.marks_in_flight = 1;
        assert!(read(&mut c, 80, &[(0, 2), (9, 2)]).is_ok());
        assert_eq!(c.blocks_overreported, 1);
        c.marks_in_flight = 0;
        assert!(read(&mut c, 80, &[(0, 2), (9, 2)]).is_err());
    }

    /// The copy of TAKE number 2 holds nothing newer than 2; a failed
    /// TAKE may have advanced the numbers by one.
    #[test]
    fn a_block_newer_than_its_copy_fails() {
        let mut c = over_marked();
        let err = read(&mut c, 80, &[(0, 3)]).unwrap_err();
        assert!(err.contains("block 0 is 3, newer than the copy"), "{err}");
        c.take_begin(&SNAP);
        c.take_end(&SNAP, (90, 95), false, |_| geometry(CAPACITY));
        assert!(read(&mut c, 100, &[(0, 3)]).is_ok());
        let err = read(&mut c, 100, &[(0, 4)]).unwrap_err();
        assert!(err.contains("or up to 3 after failed TAKEs"), "{err}");
    }

    /// A MARK_DIRTY refused with EINVAL though every range lay inside the
    /// map fails; one with a range past the map, an empty range, after a
    /// write past the map (ended or in flight), or while something may
    /// have reset or replaced the map, is not judged.
    #[test]
    fn an_in_bounds_mark_dirty_must_not_be_refused() {
        let mut c = checker();
        take(&mut c, 20, 30);
        let epoch = c.epoch(D).expect("followed");
        let to_the_end = [(0, 8), (CAPACITY - 1, 1)];
        let err = c.mark_refused(D, epoch, &to_the_end).unwrap_err();
        assert!(
            err.starts_with("MARK_DIRTY_BLOCKS of 7:0 failed with EINVAL, but its 2 range(s) [(0, 8), (12799, 1)] all lie inside the 12800 sectors"),
            "{err}"
        );
        assert!(c
            .mark_refused(D, epoch, &[(0, 8), (CAPACITY - 1, 2)])
            .is_ok());
        assert!(c.mark_refused(D, epoch, &[(8, 0)]).is_ok());
        assert!(c.mark_refused(D, epoch, &[]).is_ok());
        assert!(c.mark_refused(DevT(8 << 20), epoch, &to_the_end).is_ok());
        // A TAKE began (or ended) during the call: it may have reset the map.
        c.take_begin(&SNAP);
        assert!(c.mark_refused(D, epoch, &to_the_end).is_ok());
        c.take_end(&SNAP, (40, 50), true, |_| geometry(CAPACITY));
        let epoch = c.epoch(D).expect("followed");
        assert!(c.mark_refused(D, epoch, &to_the_end).is_err());
        // A write past the map, in flight or ended, may have corrupted it.
        c.in_flight.push((D, CAPACITY, 8, 60));
        assert!(c.mark_refused(D, epoch, &to_the_end).is_ok());
        c.in_flight.clear();
        assert!(c.mark_refused(D, epoch, &to_the_end).is_err());
        write(&mut c, CAPACITY, 8, 60, 70);
        assert!(c.mark_refused(D, epoch, &to_the_end).is_ok());
        // Another tracker: another map.
        let mut c = checker();
        let epoch = c.epoch(D).expect("followed");
        c.tracker_is(D, Some(2));
        assert!(c.mark_refused(D, epoch, &to_the_end).is_ok());
    }

    #[test]
    fn mark_dirty_raises_the_current_copy() {
        let mut c = checker();
        take(&mut c, 20, 30);
        take(&mut c, 40, 50);
        c.marked_dirty(D, &[(128, 8)], (60, 61));
        let err = read(&mut c, 70, &[]).unwrap_err();
        assert!(err.contains("block 1 is 0, must be > 1"), "{err}");
        assert!(read(&mut c, 70, &[(1, 2)]).is_ok());
    }

    #[test]
    fn a_failed_take_near_the_wrap_stops_the_judging() {
        let mut c = checker();
        let mut t = 20;
        for _ in 0..250 {
            take(&mut c, t, t + 5);
            t += 10;
        }
        for _ in 0..5 {
            c.take_begin(&SNAP);
            c.take_end(&SNAP, (t, t + 5), false, |_| geometry(CAPACITY));
            t += 10;
        }
        take(&mut c, t, t + 5);
        assert!(read(&mut c, t + 10, &[]).is_ok());
        assert_eq!(c.maps_unjudged, 1);
    }

    /// Into a buffer writable from the start, with the same map, a copy
    /// must fill min(length, blocks - offset); not judged when the buffer
    /// may fault or the map may have changed (another epoch).
    #[test]
    fn a_short_copy_into_a_writable_buffer_fails() {
        let mut c = checker();
        take(&mut c, 20, 30);
        let epoch = c.epoch(D);
        let bytes = vec![0u8; 40];
        let short = |full| MapRead {
            offset: 50,
            length: 60,
            bytes: &bytes,
            start: 40,
            end: 41,
            full,
        };
        let err = c.map_read(D, &short(epoch)).unwrap_err();
        assert!(
            err.starts_with("READ_CBT_MAP of 7:0 at offset 50 with length 60 copied 40 bytes into a writable buffer; the map has 100 blocks"),
            "{err}"
        );
        assert!(err.ends_with("so it must copy 50"), "{err}");
        assert!(c.map_read(D, &short(None)).is_ok());
        assert!(c.map_read(D, &short(epoch.map(|e| e + 1))).is_ok());
    }

    #[test]
    fn a_copy_past_the_end_of_the_map_fails() {
        let mut c = checker();
        take(&mut c, 20, 30);
        let bytes = vec![0u8; 60];
        let read = MapRead {
            offset: 50,
            length: 60,
            bytes: &bytes,
            start: 40,
            end: 41,
            full: None,
        };
        let err = c.map_read(D, &read).unwrap_err();
        assert!(err.contains("at most 50"), "{err}");
    }

    #[test]
    fn block_sets_are_sparse_and_exact() {
        let mut set = BlockSet::default();
        set.insert_range(4090, 4100);
        set.insert_range(1 << 40, (1 << 40) + 1);
        assert_eq!(set.pages.len(), 3);
        assert!(set.contains(4095) && set.contains(4096) && !set.contains(4101));
        let got: Vec<u64> = set.iter_range(4099, (1 << 40) + 1).collect();
        assert_eq!(got, vec![4099, 4100, 1 << 40]);
    }

    /// Blocks added one at a time (an OR into a raw word) are the bits
    /// bitvec reads back (`contains`, `iter_range`), and no others.
    #[test]
    fn single_blocks_land_on_their_own_bits() {
        let mut set = BlockSet::default();
        let mut model = BTreeSet::new();
        for k in 0..300u64 {
            let block = (k * 7919) % 10_000;
            set.insert_range(block, block);
            model.insert(block);
        }
        for b in 0..10_000 {
            assert_eq!(set.contains(b), model.contains(&b), "block {b}");
        }
        let got: Vec<u64> = set.iter_range(0, 10_000).collect();
        assert_eq!(got, model.into_iter().collect::<Vec<_>>());
    }
}
