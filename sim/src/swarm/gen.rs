//! The configuration generator that `blksnap-sim swarm` and the
//! `lifecycle` fuzz target share: bytes in (an `arbitrary::Unstructured`),
//! a scenario out. The input picks 1-3 small original devices, one storage
//! device, module parameters, a scheduler, and up to [`MAX_STEPS`] steps
//! (ioctls, IO on originals and images, workloads, two-branch concurrent
//! groups, waits). Every step expects `Any`: the scenario only drives the
//! system, and the verdict belongs to the simulator's own checkers.
//!
//! [`Features`] switch parts of the generator off (swarm testing): a kind
//! of step that is off is replaced by an enabled kind chosen by the same
//! draw, so with every feature on ([`Features::ALL`], what the fuzz target
//! uses) the bytes are read exactly as before and the committed fuzz
//! corpus still decodes to the same scenarios.
//!
//! Two features read more input where they are on, so [`Features::ALL`]
//! leaves them off (the fuzz corpus decodes as before); the swarm and the
//! `lifecycle_everything` fuzz target ([`Features::EVERYTHING`]) draw
//! them: `power` gives devices volatile write caches and journaling
//! filesystems, and cuts the power after a write (committed by a Sync on
//! a filesystem), sometimes while COW writers, commits, FLUSHes or a TAKE
//! run, then loads the module again and verifies the original (the
//! durability checker judges the cut); `tails` gives some recipes storage
//! ranges that are not a multiple of the chunk size, written far enough
//! for the first low-free-space event to be due, then read by WAIT_EVENTs
//! (the events checker's rule 4 judges when it came); `cbt` adds the CBT
//! ioctls (TRACKER_COLLECT, READ_CBT_MAP, MARK_DIRTY_BLOCKS, also in
//! concurrent branches) and originals that grow, and has some recipes read
//! the map after their TAKE, then mark blocks dirty or grow the device and
//! write past its old end (the cbt checker judges every map read); `space`
//! has some recipes run their storage out: COW up to the first
//! low-free-space event after the creation's, APPEND too little to re-arm
//! it, overflow, APPEND again after the overflow and write on (the events
//! checker's rules 8 and 9 and the storage checker judge what follows).
//!
//! What the generator deliberately never does, because the *user* would be
//! at fault and the checkers would rightly fail the run:
//! - write to the storage device, or append ranges of an original device,
//!   or snapshot the storage device (COW data would land on user data);
//! - read the storage device (the oracle judges every read of a declared
//!   device against the user's writes, and the engine writes there too);
//! - write past the end of an original, or verify a device that does not
//!   exist (VerifyOriginal rereads every sector ever written, and the
//!   filesystem's writeback fails on sectors past the end);
//! - append a storage range that overlaps an earlier one (ranges are handed
//!   out from a bump cursor, so two snapshots never share storage);
//! - freeze without thaw, remove devices, or wait longer than the
//!   simulator's liveness bound;
//! - use module parameters the fixed module refuses (the loader would).

use arbitrary::{Result, Unstructured};
use blksnap_core::Params;
use serde::Serialize;

use crate::device::Fill;
use crate::scenario::model::{DeviceSpec, Expect, Scheduler, Step, Target, Workload};
use crate::scenario::Scenario;

use super::steps;

/// Upper bound on top-level steps (a concurrent group counts as one).
pub const MAX_STEPS: usize = 40;
/// At [`Scale::Farm`], the scenario ends after the top-level step whose
/// user IO (sectors written, read or verified, as [`io_sectors`] counts
/// them) brings the total past this. It ends before a top-level step that
/// alone would add more than twice this or twice the largest original
/// device, whichever is more (`farm_step_io_bound`).
pub const FARM_IO_SECTORS: u64 = 8192;
/// At [`Scale::Farm`] with neither `power` nor `tails`, the scenario also
/// ends before a top-level step that would bring its steps past this many (a recipe's steps count one by
/// one, a concurrent group as one). A grown corpus's inputs are the
/// longest scenarios the bytes allow, and a run costs about its trace
/// events; the cap measured best against the deepest bugs known (fuzz
/// README, "Shorter farm scenarios (session 24)").
pub const FARM_MAX_STEPS: usize = 23;
/// Original device sizes at [`Scale::Full`], indexed by the drawn byte
/// modulo 4 (what `choose` does with a 4-entry table).
const FULL_SECTORS: [u64; 4] = [2048, 4096, 16384, 65536];
/// Original device sizes at [`Scale::Farm`], indexed by the whole drawn
/// byte: a 256-entry table reads the same one byte as [`FULL_SECTORS`], so
/// the input stays aligned with Full. Full's size when it is 2048 or 4096,
/// and for two bytes (1 in 128: 16384 and 65536) also when larger, so
/// that big devices still come up; 4096 otherwise.
const FARM_SECTORS: [u64; 256] = farm_sectors();

const fn farm_sectors() -> [u64; 256] {
    let mut table = [0; 256];
    let mut byte = 0;
    while byte < 256 {
        let full = FULL_SECTORS[byte % 4];
        table[byte] = if byte < 4 || full <= 4096 { full } else { 4096 };
        byte += 1;
    }
    table
}

/// How big the generated scenario is. Both read the input alike (a Farm
/// scenario is the start of the Full one of the same bytes, on smaller
/// devices), so a finding of a fuzz farm replays, longer, at Full scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// What `blksnap-sim swarm` runs: devices up to 65536 sectors and up
    /// to [`MAX_STEPS`] steps (its digests depend on it).
    Full,
    /// What the fuzz targets run, for executions per second: devices from
    /// [`FARM_SECTORS`], and the scenario ends once its user IO passes
    /// [`FARM_IO_SECTORS`], or before one step that would add far more or
    /// bring its steps past [`FARM_MAX_STEPS`].
    Farm,
}
/// Upper bound on the steps of one concurrent branch.
const MAX_BRANCH_STEPS: usize = 4;
/// Snapshot names the steps use.
const SNAPSHOTS: [&str; 2] = ["a", "b"];
/// Original devices, by scenario name.
const ORIGINALS: [&str; 3] = ["d0", "d1", "d2"];
/// The storage device.
const STORE: &str = "store";
/// A device number that no device has.
const MISSING: &str = "9:9";
/// Sectors per page: storage ranges must be page-aligned.
const PAGE_SECTORS: u64 = 8;
/// The top of the first draw of `chunk_minimum_shift` (256 KiB chunks);
/// `Generator::chunk_shift` may go beyond it.
const CHUNK_SHIFT_TOP: u32 = 18;
/// Most power cuts in one scenario (each is followed by a reread of the
/// original it wrote).
const MAX_POWER_CUTS: u32 = 3;
/// Most ranges before the big one in a recipe with tails (`tailed_ranges`).
const MAX_TAILED_RANGES: u64 = 128;
/// No Resize grows an original past this (128 MiB), so a seed's devices
/// stay small.
const MAX_GROWN_SECTORS: u64 = 262_144;

/// A kind of step the generator draws. [`Features`] switch kinds off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Kind {
    /// VERSION or TRACKER_REMOVE.
    Misc,
    Create,
    Append,
    Take,
    Destroy,
    /// COLLECT or COLLECT_IMAGES.
    Collect,
    WaitEvent,
    Write,
    Read,
    VerifyImage,
    /// Sync or VerifyOriginal.
    Original,
    Workload,
    Sleep,
    /// Create, append, take, maybe use the image.
    Recipe,
    Concurrent,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::Misc,
        Kind::Create,
        Kind::Append,
        Kind::Take,
        Kind::Destroy,
        Kind::Collect,
        Kind::WaitEvent,
        Kind::Write,
        Kind::Read,
        Kind::VerifyImage,
        Kind::Original,
        Kind::Workload,
        Kind::Sleep,
        Kind::Recipe,
        Kind::Concurrent,
    ];

    /// The kind of the generator's draw `n` (`0..=KINDS_TOP`); the fuzz
    /// corpus depends on this table, so it only ever grows at the end.
    fn of_draw(n: u32) -> Kind {
        match n {
            0 => Kind::Misc,
            1 | 2 => Kind::Create,
            3 | 4 => Kind::Append,
            5 | 6 => Kind::Take,
            7 => Kind::Destroy,
            8 => Kind::Collect,
            9 => Kind::WaitEvent,
            10 | 11 => Kind::Write,
            12 | 13 => Kind::Read,
            14 => Kind::VerifyImage,
            15 => Kind::Original,
            16 => Kind::Workload,
            17 => Kind::Sleep,
            18..=20 => Kind::Recipe,
            _ => Kind::Concurrent,
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// The highest draw at the top level, and inside a concurrent branch
/// (where recipes and nested groups are not drawn).
const KINDS_TOP: u32 = 21;
const KINDS_BRANCH: u32 = 17;
/// The draw used when no enabled kind is left (a sleep never hurts).
const SLEEP_DRAW: u32 = 17;

/// Which parts of the generator a configuration uses. Swarm testing
/// (Groce et al.) switches features off per seed, so that each run
/// stresses fewer things harder and rare combinations come up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    kinds: u16,
    /// Originals may carry the filesystem model.
    pub fs: bool,
    /// Write caches, journals and power cuts (reads more input).
    pub power: bool,
    /// Recipes with storage ranges that leave tails (reads more input).
    pub tails: bool,
    /// CBT ioctls (TRACKER_COLLECT, READ_CBT_MAP, MARK_DIRTY_BLOCKS) and
    /// originals that grow after a TAKE (reads more input).
    pub cbt: bool,
    /// Recipes whose storage runs out: small APPENDs after a low-free-space
    /// event, an overflow, an APPEND after it (reads more input).
    pub space: bool,
}

impl Features {
    /// Every kind of step and the filesystem model: the generator reads
    /// its input as it always did, so neither `power` nor `tails`.
    pub const ALL: Features = Features {
        kinds: u16::MAX,
        fs: true,
        power: false,
        tails: false,
        cbt: false,
        space: false,
    };

    /// Every feature, `power`, `tails`, `cbt` and `space` too: what the
    /// swarm draws at most, and what the `lifecycle_everything` fuzz target
    /// reads its input with (its own corpus, so [`Features::ALL`]'s keeps
    /// decoding).
    pub const EVERYTHING: Features = Features {
        power: true,
        tails: true,
        cbt: true,
        space: true,
        ..Features::ALL
    };

    /// Only these kinds of step.
    pub fn with_kinds(kinds: &[Kind], fs: bool) -> Features {
        Features {
            kinds: kinds.iter().fold(0, |mask, k| mask | k.bit()),
            fs,
            power: false,
            tails: false,
            cbt: false,
            space: false,
        }
    }

    pub fn has(&self, kind: Kind) -> bool {
        self.kinds & kind.bit() != 0
    }

    /// The kinds that are on, in declaration order.
    pub fn kinds(&self) -> Vec<Kind> {
        Kind::ALL.into_iter().filter(|k| self.has(*k)).collect()
    }

    /// The draw to use for `drawn`: itself if its kind is on, else one of
    /// the enabled draws picked by `drawn` (no extra input is read, so the
    /// byte stream stays aligned with [`Features::ALL`]).
    fn remap(&self, drawn: u32, top: u32) -> u32 {
        if self.has(Kind::of_draw(drawn)) {
            return drawn;
        }
        let enabled: Vec<u32> = (0..=top).filter(|n| self.has(Kind::of_draw(*n))).collect();
        if enabled.is_empty() {
            return SLEEP_DRAW;
        }
        enabled[drawn as usize % enabled.len()]
    }
}

/// How a `space` recipe runs its storage out ([`Generator::space_plan`]).
struct SpacePlan {
    /// The sectors of the recipe's one storage range.
    capacity: u64,
    /// Chunks to COW for the first low-free-space event after the
    /// creation's, if the original has room for the whole plan.
    to_event: Option<u64>,
    /// The chunks each small APPEND after that event adds.
    trickle: Vec<u64>,
    /// Chunks COWed past the capacity.
    past: u64,
}

/// One original device as the generator declared it.
#[derive(Clone)]
struct Original {
    name: String,
    /// The sectors user IO may touch: the device's, less its journal.
    sectors: u64,
    fs: bool,
    /// A journal at the end of the device (past `sectors`).
    journal: bool,
}

/// Turns fuzz bytes into a scenario. Every choice is a small integer drawn
/// from the input; when the input runs out, `arbitrary` answers with the
/// smallest choice, so every input (even an empty one) is a scenario.
pub struct Generator<'a, 'b> {
    u: &'b mut Unstructured<'a>,
    features: Features,
    scale: Scale,
    originals: Vec<Original>,
    store_sectors: u64,
    /// Next storage sector no range has used yet.
    store_cursor: u64,
    /// The chunk size of every original (all are small enough that it is
    /// `chunk_minimum_shift`'s, spec 5.1), in sectors.
    chunk_sectors: u64,
    diff_storage_minimum: u64,
    power_cuts: u32,
}

impl<'a, 'b> Generator<'a, 'b> {
    pub fn new(u: &'b mut Unstructured<'a>, features: Features) -> Self {
        Generator {
            u,
            features,
            scale: Scale::Full,
            originals: Vec::new(),
            store_sectors: 0,
            store_cursor: 0,
            chunk_sectors: 0,
            diff_storage_minimum: 0,
            power_cuts: 0,
        }
    }

    /// The same generator at another scale.
    pub fn at_scale(mut self, scale: Scale) -> Self {
        self.scale = scale;
        self
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Result<T> {
        Ok(*self.u.choose(items)?)
    }

    /// True with probability `numerator / denominator`.
    fn chance(&mut self, numerator: u8, denominator: u8) -> Result<bool> {
        self.u.ratio(numerator, denominator)
    }

    pub fn scenario(mut self) -> Result<Scenario> {
        let mut template = template();
        let device_template = template.devices[0].clone();
        let count = self.u.int_in_range(1..=ORIGINALS.len())?;
        let mut devices = Vec::with_capacity(count + 1);
        for name in &ORIGINALS[..count] {
            let sectors = match self.scale {
                Scale::Full => self.pick(&FULL_SECTORS)?,
                Scale::Farm => self.pick(&FARM_SECTORS)?,
            };
            let fill = if self.chance(1, 2)? {
                Fill::Pattern
            } else {
                Fill::Zero
            };
            // Drawn even when off, to keep the input aligned.
            let fs = self.chance(1, 3)? && self.features.fs;
            let fs_ignores_freeze = fs && self.chance(1, 8)?;
            let write_cache = self.write_cache()?;
            let journal = self.journal(fs, sectors)?;
            devices.push(DeviceSpec {
                name: (*name).to_string(),
                sectors,
                fill,
                fs,
                fs_ignores_freeze,
                write_cache,
                journal,
                ..device_template.clone()
            });
            self.originals.push(Original {
                name: (*name).to_string(),
                sectors: journal.map_or(sectors, |(start, _)| start),
                fs,
                journal: journal.is_some(),
            });
        }
        self.store_sectors = self.pick(&[32768, 131072, 524288])?;
        devices.push(DeviceSpec {
            name: STORE.to_string(),
            sectors: self.store_sectors,
            fill: Fill::Zero,
            fs: false,
            fs_ignores_freeze: false,
            write_cache: self.write_cache()?,
            ..device_template
        });
        template.devices = devices;
        template.params = self.params()?;
        self.chunk_sectors = 1 << (template.params.chunk_minimum_shift - 9);
        self.diff_storage_minimum = template.params.diff_storage_minimum;
        template.scheduler = if self.chance(1, 4)? {
            Scheduler::Priority(self.u.int_in_range(0..=4)?)
        } else {
            Scheduler::Random
        };
        template.quirks = Vec::new();
        template.steps = self.steps()?;
        Ok(template)
    }

    /// With `power`, half the devices have a volatile write cache.
    fn write_cache(&mut self) -> Result<bool> {
        Ok(self.features.power && self.chance(1, 2)?)
    }

    /// With `power`, most filesystems journal their commits (PREFLUSH+FUA)
    /// into the last sectors of the device, which user IO then leaves
    /// alone (a filesystem never hands its journal out as file data).
    fn journal(&mut self, fs: bool, sectors: u64) -> Result<Option<(u64, u64)>> {
        if !(self.features.power && fs && self.chance(3, 4)?) {
            return Ok(None);
        }
        let len = self.pick(&[8, 64, 256])?;
        Ok(Some((sectors - len, len)))
    }

    fn params(&mut self) -> Result<Params> {
        Ok(Params {
            diff_storage_minimum: self.storage_minimum()?,
            chunk_minimum_shift: self.chunk_shift()?,
            tracking_block_minimum_shift: self.pick(&[12, 16])?,
            chunk_maximum_in_cache: self.pick(&[1, 4, 32])?,
            free_diff_buffer_pool_size: self.pick(&[1, 4, 128])?,
            ..Params::default()
        })
    }

    /// `diff_storage_minimum`: with `space`, sometimes a few KiB (as a
    /// user may set it), so that storage runs out within a small device.
    fn storage_minimum(&mut self) -> Result<u64> {
        if self.features.space && self.chance(1, 2)? {
            return self.pick(&[16, 64, 256]);
        }
        self.pick(&[4096, 65536, 262144])
    }

    /// 4 KiB to 256 KiB chunks; when that draw gives the top, a second one
    /// may go up to 2 MiB. A chunk over one bio (1 MiB, BIO_MAX_VECS pages)
    /// is read and stored in several bios, which smaller chunks never are.
    /// The second draw reads one more byte, so only seeds (and fuzz
    /// inputs) whose first draw gave the top read the rest of their input
    /// differently; it is drawn here, not after the steps, because a farm
    /// scenario must keep the parameters of the full one of its bytes.
    fn chunk_shift(&mut self) -> Result<u32> {
        let shift = self.u.int_in_range(12..=CHUNK_SHIFT_TOP)?;
        if shift < CHUNK_SHIFT_TOP {
            return Ok(shift);
        }
        self.pick(&[18, 18, 19, 20, 21, 21])
    }

    fn steps(&mut self) -> Result<Vec<Step>> {
        let count = self.u.int_in_range(1..=MAX_STEPS)?;
        let mut steps = Vec::with_capacity(count);
        let mut io = 0;
        for _ in 0..count {
            if self.u.is_empty() && !steps.is_empty() {
                break;
            }
            let first = steps.len();
            self.step(&mut steps, true)?;
            if self.scale == Scale::Farm {
                let added = self.io_sectors(&steps[first..]);
                if added > self.farm_step_io_bound() || steps.len() > self.farm_max_steps() {
                    steps.truncate(first);
                    break;
                }
                io += added;
                if io > FARM_IO_SECTORS {
                    break;
                }
            }
        }
        Ok(steps)
    }

    /// The most steps at [`Scale::Farm`]: [`FARM_MAX_STEPS`], measured for
    /// `lifecycle` ([`Features::ALL`]). The features that read more input
    /// build long recipes (a power cut after writes and a commit, storage
    /// filled up to the low-space event) whose point comes late; a cap would
    /// often cut them off, so `lifecycle_everything` keeps no step cap.
    fn farm_max_steps(&self) -> usize {
        if self.features.power || self.features.tails {
            return usize::MAX;
        }
        FARM_MAX_STEPS
    }

    /// The most user IO one top-level step may add at [`Scale::Farm`]:
    /// the total bound alone let one last step (a concurrent group of
    /// whole-device reads and verifies) move many times that, the slowest
    /// farm inputs (fuzz/README.md, "Long inputs"). Twice the largest
    /// device still lets a step verify any original, or a group read one
    /// whole while verifying it.
    fn farm_step_io_bound(&self) -> u64 {
        let largest = self.originals.iter().map(|o| o.sectors).max();
        2 * largest.unwrap_or(0).max(FARM_IO_SECTORS)
    }

    /// Append one generated step (a recipe may append several).
    fn step(&mut self, out: &mut Vec<Step>, top_level: bool) -> Result<()> {
        let top = if top_level { KINDS_TOP } else { KINDS_BRANCH };
        let drawn = self.u.int_in_range(0..=top)?;
        match self.features.remap(drawn, top) {
            0 => {
                if self.features.cbt && self.chance(1, 2)? {
                    self.cbt_step(out, top_level)?;
                } else if self.chance(1, 2)? {
                    out.push(steps::version());
                } else {
                    out.push(steps::tracker_remove(self.original_or_missing()?));
                }
            }
            1 | 2 => self.create(out)?,
            3 | 4 => out.push(self.append()?),
            5 | 6 => out.push(steps::take(self.snapshot()?)),
            7 => out.push(steps::destroy(self.snapshot()?)),
            8 => {
                if self.chance(1, 2)? {
                    out.push(steps::collect());
                } else {
                    out.push(steps::collect_images(self.snapshot()?));
                }
            }
            9 => {
                let snapshot = self.snapshot()?;
                let timeout_ms = self.pick(&[0, 1, 10, 100, 1000])?;
                out.push(steps::wait_event(snapshot, timeout_ms));
            }
            10 | 11 => out.push(self.write()?),
            12 | 13 => out.push(self.read()?),
            14 => out.push(Step::VerifyImage {
                snapshot: self.snapshot()?,
                device: self.original_or_missing()?,
                expect: Expect::Ok,
            }),
            15 => {
                if self.chance(1, 3)? {
                    out.push(Step::Sync {
                        device: self.original()?.name,
                    });
                } else {
                    out.push(Step::VerifyOriginal {
                        device: self.original()?.name,
                    });
                }
                if top_level && self.power_cut_drawn(1, 2)? {
                    self.power_cut(out, None)?;
                }
            }
            16 => out.push(self.workload()?),
            17 => out.push(Step::Sleep {
                ms: self.pick(&[0, 1, 5, 20, 100])?,
            }),
            18..=20 => self.recipe(out)?,
            _ => out.push(self.concurrent()?),
        }
        Ok(())
    }

    /// The usual life of a snapshot, so that most inputs reach TAKE:
    /// create, give it enough storage, take, then perhaps use the image.
    fn recipe(&mut self, out: &mut Vec<Step>) -> Result<()> {
        let snapshot = self.snapshot()?;
        let devices = self.create_devices()?;
        self.unname(out, &snapshot);
        out.push(steps::create(snapshot.clone(), devices.clone()));
        let size = self.pick(&[4096, 16384, 65536])?;
        let first = devices
            .first()
            .and_then(|name| self.originals.iter().find(|o| o.name == *name))
            .cloned();
        let space = match &first {
            Some(original) if self.features.space && self.chance(1, 2)? => {
                self.space_plan(original)?
            }
            _ => None,
        };
        let mut ranges = Vec::new();
        let due = if space.is_none() && self.features.tails && self.chance(1, 2)? {
            self.tailed_ranges(&mut ranges)?
        } else {
            None
        };
        let capacity = space.as_ref().map_or(size, |plan| plan.capacity);
        ranges.push(self.fresh_range(capacity));
        out.push(steps::append(snapshot.clone(), STORE.to_string(), ranges));
        out.push(steps::take(snapshot.clone()));
        if let (Some(plan), Some(original)) = (space, &first) {
            self.run_out_of_space(out, &snapshot, original, plan)?;
        } else if let (Some(regions), Some(original)) = (due, &first) {
            self.fill_to_low_space(out, &snapshot, original, regions)?;
        }
        if self.chance(3, 4)? {
            let device = devices
                .first()
                .cloned()
                .unwrap_or_else(|| MISSING.to_string());
            out.push(steps::write(Target::Original(device.clone()), 0, 8, false));
            out.push(Step::VerifyImage {
                snapshot,
                device,
                expect: Expect::Ok,
            });
        }
        if let Some(original) = &first {
            if self.features.cbt && self.chance(1, 2)? {
                self.cbt_after_take(out, original)?;
            }
        }
        if self.power_cut_drawn(1, 3)? {
            self.power_cut(out, first)?;
        }
        Ok(())
    }

    /// One CBT ioctl on a random device, or (at the top level only, where
    /// no step of this scenario runs beside it) an original that grows.
    /// In a concurrent branch these race TAKEs, writes and removals.
    fn cbt_step(&mut self, out: &mut Vec<Step>, top_level: bool) -> Result<()> {
        match self.u.int_in_range(0..=3)? {
            0 => out.push(steps::tracker_collect()),
            1 => {
                let device = self.original_or_missing()?;
                let (offset, length) = self.cbt_window()?;
                out.push(steps::read_cbt_map(device, offset, length));
            }
            2 => {
                let original = self.original()?;
                let device = if self.chance(1, 16)? {
                    MISSING.to_string()
                } else {
                    original.name.clone()
                };
                let ranges = self.dirty_ranges(&original)?;
                out.push(steps::mark_dirty(device, ranges));
            }
            _ => {
                let original = self.original()?;
                if top_level {
                    self.grow(out, &original)?;
                } else {
                    out.push(steps::tracker_collect());
                }
            }
        }
        Ok(())
    }

    /// What a backup tool does after a TAKE, on the snapshot's first
    /// original: read the CBT map, then mark blocks dirty (sequentially, or
    /// both racing writes to the device) or grow the device and write past
    /// its old end, after which the map reads as corrupted (EFAULT) until
    /// the next TAKE (spec 4.4 and 4.6; the cbt checker's rule); then read
    /// the map again.
    fn cbt_after_take(&mut self, out: &mut Vec<Step>, original: &Original) -> Result<()> {
        // As it is now: an earlier step may have grown it.
        let Some(original) = self.current(&original.name).cloned() else {
            return Ok(());
        };
        let (offset, length) = self.cbt_window()?;
        let read = steps::read_cbt_map(original.name.clone(), offset, length);
        match self.u.int_in_range(0..=2)? {
            0 => self.cbt_race(out, &original, read)?,
            1 => {
                out.push(read);
                let ranges = self.dirty_ranges(&original)?;
                out.push(steps::mark_dirty(original.name.clone(), ranges));
            }
            _ => {
                out.push(read);
                self.write_past_old_end(out, &original)?;
            }
        }
        out.push(steps::read_cbt_map(original.name.clone(), 0, length));
        Ok(())
    }

    /// A map read then a MARK_DIRTY, racing one to three writes to the
    /// same device.
    fn cbt_race(&mut self, out: &mut Vec<Step>, original: &Original, read: Step) -> Result<()> {
        let ranges = self.dirty_ranges(original)?;
        let mark = steps::mark_dirty(original.name.clone(), ranges);
        let mut writes = Vec::new();
        for _ in 0..self.u.int_in_range(1..=3)? {
            let (sector, sectors) = self.extent(original.sectors, false)?;
            let target = Target::Original(original.name.clone());
            writes.push(steps::write(target, sector, sectors, false));
        }
        out.push(Step::Concurrent(vec![vec![read, mark], writes]));
        Ok(())
    }

    /// Grow `original`, then (mostly) write somewhere past its old end. A
    /// device that grew with no such write keeps its map until a TAKE
    /// resets it to the new size (spec 4.4).
    fn write_past_old_end(&mut self, out: &mut Vec<Step>, original: &Original) -> Result<()> {
        let Some(old) = self.grow(out, original)? else {
            return Ok(());
        };
        if self.chance(1, 4)? {
            return Ok(());
        }
        let sectors = self.pick(&[1, 8, 64])?;
        let grown = self.current(&original.name).map_or(old, |o| o.sectors);
        let last = grown.saturating_sub(sectors).max(old);
        let sector = self.u.int_in_range(old..=last)?;
        let target = Target::Original(original.name.clone());
        out.push(steps::write(
            target,
            sector,
            sectors.min(grown - sector),
            false,
        ));
        Ok(())
    }

    /// READ_CBT_MAP's window: mostly from the start, now and then from
    /// inside or past the map (a 65536-sector device has 8192 blocks of
    /// 4 KiB at most).
    fn cbt_window(&mut self) -> Result<(u32, u32)> {
        let offset = self.pick(&[0, 0, 0, 1, 100, 8192])?;
        let length = self.pick(&[1, 16, 512, 4096, 16384])?;
        Ok((offset, length))
    }

    /// One to three MARK_DIRTY_BLOCKS ranges of `original`, now and then
    /// one that reaches past its end (refused, spec 4.5).
    fn dirty_ranges(&mut self, original: &Original) -> Result<Vec<(u64, u64)>> {
        let count = self.u.int_in_range(1..=3)?;
        let mut ranges = Vec::with_capacity(count);
        for _ in 0..count {
            let sectors = self.pick(&[1, 8, 64, 1024])?;
            let (sector, sectors) = self.extent_of(original.sectors, sectors)?;
            ranges.push((sector, sectors));
        }
        Ok(ranges)
    }

    /// An extent of about `sectors` inside a device of `capacity`, or one
    /// time in eight across its end.
    fn extent_of(&mut self, capacity: u64, sectors: u64) -> Result<(u64, u64)> {
        if self.chance(1, 8)? {
            return Ok((capacity - 1, sectors));
        }
        let sectors = sectors.min(capacity);
        Ok((self.u.int_in_range(0..=capacity - sectors)?, sectors))
    }

    /// Grow `original` (a Resize step, as a volume manager does) by a
    /// page, a chunk or its size, unless it has a journal at its end or is
    /// already large; its old size if it grew.
    fn grow(&mut self, out: &mut Vec<Step>, original: &Original) -> Result<Option<u64>> {
        let add = self.pick(&[PAGE_SECTORS, self.chunk_sectors, 0])?;
        let Some(current) = self.current(&original.name).cloned() else {
            return Ok(None);
        };
        let add = if add == 0 { current.sectors } else { add };
        let sectors = current.sectors + add;
        if current.journal || sectors > MAX_GROWN_SECTORS {
            return Ok(None);
        }
        out.push(Step::Resize {
            device: current.name.clone(),
            sectors,
        });
        if let Some(o) = self.originals.iter_mut().find(|o| o.name == current.name) {
            o.sectors = sectors;
        }
        Ok(Some(current.sectors))
    }

    /// The original named `name` as it is now (a Resize may have grown it).
    fn current(&self, name: &str) -> Option<&Original> {
        self.originals.iter().find(|o| o.name == name)
    }

    /// Ranges of one chunk and a tail each (into `ranges`), to go before a
    /// recipe's big range, and how many regions the COW must then allocate for the
    /// first low-free-space event after the creation's to be due (each
    /// tail counts as filled once the next region moves on, spec 6.3), if
    /// the crossing lies among them. An engine that forgot the tails would
    /// raise it a region or more later, which the events checker's rule 4
    /// catches; with ranges that are multiples of the chunk (all the
    /// others), the tails move nothing.
    fn tailed_ranges(&mut self, ranges: &mut Vec<(u64, u64)>) -> Result<Option<u64>> {
        let chunk = self.chunk_sectors;
        let tail = self.pick(&[chunk / 2, chunk - PAGE_SECTORS, chunk / 4])? & !(PAGE_SECTORS - 1);
        if tail == 0 {
            // 4 KiB chunks: a page-aligned range has no tail.
            return Ok(None);
        }
        let minimum = self.diff_storage_minimum;
        let floor = minimum - ((minimum / 2) & !(PAGE_SECTORS - 1));
        // Region k (in range k) leaves (k - 1) * (chunk + tail) + chunk filled.
        let due = floor.saturating_sub(chunk).div_ceil(chunk + tail) + 1;
        let (count, due) = if due <= MAX_TAILED_RANGES {
            (due + self.pick(&[0, 1, 2])?, Some(due))
        } else {
            (self.pick(&[2, 3, 4])?, None)
        };
        ranges.extend((0..count).map(|_| self.fresh_range(chunk + tail)));
        Ok(due)
    }

    /// COW `regions` chunks of `original` (written back at once on a
    /// filesystem), give the stores a moment, then read the events: the
    /// creation's, the low-free-space one now due, and an empty queue.
    fn fill_to_low_space(
        &mut self,
        out: &mut Vec<Step>,
        snapshot: &str,
        original: &Original,
        regions: u64,
    ) -> Result<()> {
        let chunks = original.sectors / self.chunk_sectors;
        let writes = (regions + self.pick(&[0, 0, 1])?).min(chunks);
        if writes == 0 {
            return Ok(());
        }
        let target = Target::Original(original.name.clone());
        out.push(steps::write_strided(
            target,
            0,
            1,
            writes,
            self.chunk_sectors,
        ));
        self.settle_and_look(out, snapshot, original, 3)
    }

    /// How a `space` recipe runs its storage out on `original`, if the
    /// original has the chunks for it. The first low-free-space event after
    /// the creation's comes at the region that brings `requested - filled`
    /// (requested M) down to T = M/2 (spec 6.3), and then asks for 2M. With
    /// room, the storage holds the regions up to that event and a few more,
    /// and small APPENDs follow the event: together they bring the capacity
    /// past 2M - T, where an engine that re-armed the event raises the next
    /// one, but short of 2M, so none of them re-arms it (spec 6.2 step 4).
    /// Else the storage holds a few chunks. Either way the COW then goes
    /// one to three chunks past the capacity: an overflow.
    fn space_plan(&mut self, original: &Original) -> Result<Option<SpacePlan>> {
        let chunk = self.chunk_sectors;
        let chunks = original.sectors / chunk;
        let minimum = self.diff_storage_minimum;
        let threshold = (minimum / 2) & !(PAGE_SECTORS - 1);
        let to_event = (minimum - threshold).div_ceil(chunk);
        let extra = self.pick(&[0, 1, 2])?;
        let past = self.pick(&[1, 2, 3])?;
        // The capacity after the small APPENDs, in chunks: past 2M - T, below 2M.
        let (low, high) = (
            (2 * minimum - threshold).div_ceil(chunk),
            (2 * minimum - 1) / chunk,
        );
        let start = to_event + extra;
        let plan = if start < low && low <= high && high + past <= chunks {
            let target = low + self.u.int_in_range(0..=high - low)?;
            SpacePlan {
                capacity: start * chunk,
                to_event: Some(to_event),
                trickle: self.split(target - start)?,
                past,
            }
        } else {
            SpacePlan {
                capacity: self.pick(&[1, 2, 4])? * chunk,
                to_event: None,
                trickle: Vec::new(),
                past,
            }
        };
        let written = plan.capacity / chunk + plan.trickle.iter().sum::<u64>() + plan.past;
        Ok((written <= chunks).then_some(plan))
    }

    /// `total` chunks in one to three parts of at least one chunk each.
    fn split(&mut self, total: u64) -> Result<Vec<u64>> {
        let parts = self.pick(&[1, 2, 3])?.min(total);
        let mut left = total;
        let mut out = Vec::new();
        for part in (1..=parts).rev() {
            let take = if part == 1 { left } else { left / part };
            out.push(take);
            left -= take;
        }
        Ok(out)
    }

    /// A `space` recipe after its TAKE: COW chunk by chunk (one sector
    /// each, written back on a filesystem) up to the low-free-space event,
    /// each small APPEND followed by the COW that fills it, then the
    /// overflow, then an APPEND that brings the capacity past anything
    /// requested and more COW; WAIT_EVENTs look after each part. No event
    /// may come from the small APPENDs (rule 8) or after the overflow was
    /// seen (rule 9).
    fn run_out_of_space(
        &mut self,
        out: &mut Vec<Step>,
        snapshot: &str,
        original: &Original,
        plan: SpacePlan,
    ) -> Result<()> {
        let chunk = self.chunk_sectors;
        let mut next = 0;
        if let Some(to_event) = plan.to_event {
            self.cow_chunks(out, snapshot, original, &mut next, to_event)?;
            for &part in &plan.trickle {
                let range = self.fresh_range(part * chunk);
                out.push(steps::append(
                    snapshot.to_string(),
                    STORE.to_string(),
                    vec![range],
                ));
                self.cow_chunks(out, snapshot, original, &mut next, part)?;
            }
        }
        let stored = plan.capacity / chunk + plan.trickle.iter().sum::<u64>();
        let overflow = stored - next + plan.past;
        self.cow_chunks(out, snapshot, original, &mut next, overflow)?;
        let range = self.fresh_range(2 * self.diff_storage_minimum);
        out.push(steps::append(
            snapshot.to_string(),
            STORE.to_string(),
            vec![range],
        ));
        let after = self.pick(&[1, 2])?.min(original.sectors / chunk - next);
        if after > 0 {
            self.cow_chunks(out, snapshot, original, &mut next, after)?;
        }
        Ok(())
    }

    /// One sector written into each of `count` chunks of `original` from
    /// chunk `*next` on (a COW each), then a look at the events.
    fn cow_chunks(
        &mut self,
        out: &mut Vec<Step>,
        snapshot: &str,
        original: &Original,
        next: &mut u64,
        count: u64,
    ) -> Result<()> {
        let chunk = self.chunk_sectors;
        let target = Target::Original(original.name.clone());
        out.push(steps::write_strided(target, *next * chunk, 1, count, chunk));
        *next += count;
        self.settle_and_look(out, snapshot, original, 2)
    }

    /// After COW writes: written back (on a filesystem), a moment for the
    /// stores, then `looks` looks at the events.
    fn settle_and_look(
        &mut self,
        out: &mut Vec<Step>,
        snapshot: &str,
        original: &Original,
        looks: usize,
    ) -> Result<()> {
        if original.fs {
            out.push(Step::Sync {
                device: original.name.clone(),
            });
        }
        out.push(Step::Sleep {
            ms: self.pick(&[1, 10])?,
        });
        for _ in 0..looks {
            out.push(steps::wait_event(snapshot.to_string(), 0));
        }
        Ok(())
    }

    /// Whether to cut the power here: never without `power` (and then no
    /// input is read), nor past [`MAX_POWER_CUTS`].
    fn power_cut_drawn(&mut self, numerator: u8, denominator: u8) -> Result<bool> {
        Ok(self.features.power
            && self.power_cuts < MAX_POWER_CUTS
            && self.chance(numerator, denominator)?)
    }

    /// A power cut with something for the durability checker to judge: a
    /// write to an original just before (committed by a Sync on a
    /// filesystem, so a journal's FUA record must survive the cut with no
    /// FLUSH after it), sometimes while COW writers (the first on `cow`, a
    /// device of a snapshot just taken), commits, FLUSHes or a TAKE run;
    /// then the module loads again and the written original is read back.
    fn power_cut(&mut self, out: &mut Vec<Step>, cow: Option<Original>) -> Result<()> {
        self.power_cuts += 1;
        let original = self.original()?;
        let (sector, sectors) = self.extent(original.sectors, false)?;
        let target = Target::Original(original.name.clone());
        out.push(steps::write(target, sector, sectors, false));
        if original.fs {
            out.push(Step::Sync {
                device: original.name.clone(),
            });
        }
        out.extend(SNAPSHOTS.iter().map(|name| drain_events(name)));
        let during = self.power_branches(cow)?;
        out.push(Step::PowerLoss {
            during,
            after_us: self.pick(&[0, 100, 1000, 5000])?,
            jitter_us: self.pick(&[0, 1000, 5000])?,
        });
        out.push(Step::Load);
        out.push(Step::VerifyOriginal {
            device: original.name,
        });
        Ok(())
    }

    /// The processes a power cut kills where they stand: none to three.
    fn power_branches(&mut self, cow: Option<Original>) -> Result<Vec<Vec<Step>>> {
        let count = self.pick(&[0, 1, 2, 3])?;
        let mut branches = Vec::with_capacity(count);
        for index in 0..count {
            let branch = match &cow {
                Some(original) if index == 0 => self.power_writer(original.clone())?,
                _ => self.power_branch()?,
            };
            branches.push(branch);
        }
        Ok(branches)
    }

    /// A writer, a FLUSH loop or a TAKE.
    fn power_branch(&mut self) -> Result<Vec<Step>> {
        let original = self.original()?;
        Ok(match self.u.int_in_range(0..=3)? {
            0 | 1 => self.power_writer(original)?,
            2 => vec![Step::Repeat {
                times: self.pick(&[5, 20])?,
                steps: vec![steps::flush(original.name), Step::Sleep { ms: 1 }],
            }],
            _ => vec![steps::take(self.snapshot()?)],
        })
    }

    /// A workload, or writes each committed by a Sync (a journal commit
    /// on a filesystem), on `original`.
    fn power_writer(&mut self, original: Original) -> Result<Vec<Step>> {
        if self.chance(1, 2)? {
            return Ok(vec![self.workload_on(original)?]);
        }
        let (sector, sectors) = self.extent(original.sectors, false)?;
        let target = Target::Original(original.name.clone());
        Ok(vec![Step::Repeat {
            times: self.pick(&[2, 5, 10])?,
            steps: vec![
                steps::write(target, sector, sectors, false),
                Step::Sync {
                    device: original.name,
                },
            ],
        }])
    }

    /// The user IO of `steps`, in sectors: what the simulator moves and the
    /// oracle judges, so what a run's time mostly grows with. A verify
    /// counts the whole device, a workload its largest possible IO.
    fn io_sectors(&self, steps: &[Step]) -> u64 {
        steps.iter().map(|step| self.step_io(step)).sum()
    }

    fn step_io(&self, step: &Step) -> u64 {
        let capacity = |device: &str| {
            self.originals
                .iter()
                .find(|o| o.name == device)
                .map_or(0, |o| o.sectors)
        };
        match step {
            Step::Write { sectors, .. } | Step::Read { sectors, .. } => *sectors,
            Step::VerifyImage { device, .. } | Step::VerifyOriginal { device } => capacity(device),
            Step::Workload(w) => u64::from(w.ops) * w.max_sectors,
            Step::Concurrent(branches) => branches.iter().map(|b| self.io_sectors(b)).sum(),
            _ => 0,
        }
    }

    fn concurrent(&mut self) -> Result<Step> {
        let mut branches = Vec::with_capacity(2);
        for _ in 0..2 {
            let count = self.u.int_in_range(1..=MAX_BRANCH_STEPS)?;
            let mut branch = Vec::with_capacity(count);
            for _ in 0..count {
                self.step(&mut branch, false)?;
            }
            branches.push(branch);
        }
        Ok(Step::Concurrent(branches))
    }

    fn snapshot(&mut self) -> Result<String> {
        Ok(self.pick(&SNAPSHOTS)?.to_string())
    }

    fn original(&mut self) -> Result<Original> {
        Ok(self.u.choose(&self.originals)?.clone())
    }

    /// A declared original, or now and then a device that does not exist.
    fn original_or_missing(&mut self) -> Result<String> {
        if self.chance(1, 16)? {
            return Ok(MISSING.to_string());
        }
        Ok(self.original()?.name)
    }

    /// CREATE's device list: usually distinct declared originals; one time
    /// in five something a careful caller would not pass (an empty list, a
    /// duplicate, a device that does not exist).
    fn create_devices(&mut self) -> Result<Vec<String>> {
        let mut devices: Vec<String> = Vec::new();
        for original in self.originals.clone() {
            if devices.is_empty() || self.chance(1, 2)? {
                devices.push(original.name);
            }
        }
        if devices.len() > 1 && self.chance(1, 2)? {
            devices.remove(0);
        }
        if self.chance(1, 5)? {
            match self.u.int_in_range(0..=2)? {
                0 => devices.clear(),
                1 => devices.push(devices[0].clone()),
                _ => devices.push(MISSING.to_string()),
            }
        }
        Ok(devices)
    }

    fn create(&mut self, out: &mut Vec<Step>) -> Result<()> {
        let snapshot = self.snapshot()?;
        let devices = self.create_devices()?;
        self.unname(out, &snapshot);
        out.push(steps::create(snapshot, devices));
        Ok(())
    }

    /// With `power`, a DESTROY of `snapshot` before each CREATE of the
    /// name. A CREATE of a live name hides the old snapshot from the steps
    /// (the runner keeps it under a name none can use), so the drains
    /// before a cut could not read its corrupted event, which dies with
    /// the module, and the oracle could not excuse the image reads it
    /// fails (swarm seeds 16380, 16797). The runner drains a snapshot's
    /// events before its DESTROY.
    fn unname(&self, out: &mut Vec<Step>, snapshot: &str) {
        if self.features.power {
            out.push(steps::destroy(snapshot.to_string()));
        }
    }

    /// APPEND_STORAGE with 0-3 ranges, good or bad.
    fn append(&mut self) -> Result<Step> {
        let device = if self.chance(1, 16)? {
            MISSING.to_string()
        } else {
            STORE.to_string()
        };
        let count = self.pick(&[1, 1, 1, 2, 3, 0])?;
        let mut ranges = Vec::with_capacity(count);
        for _ in 0..count {
            ranges.push(self.storage_range()?);
        }
        Ok(steps::append(self.snapshot()?, device, ranges))
    }

    /// One storage range. Good ranges come from the bump cursor; bad ones
    /// (unaligned, zero, out of range, overflowing) are rejected by the
    /// fixed engine, and those that lie inside the device still take fresh
    /// space, so no two ranges can ever overlap even if one were accepted.
    fn storage_range(&mut self) -> Result<(u64, u64)> {
        let size = self.pick(&[8, 64, 512, 4096, 16384, 65536])?;
        Ok(match self.u.int_in_range(0..=9)? {
            0 => {
                let (sector, count) = self.fresh_range(size + PAGE_SECTORS);
                (sector + 1, count - PAGE_SECTORS)
            }
            1 => {
                let (sector, count) = self.fresh_range(size + PAGE_SECTORS);
                (sector, count - PAGE_SECTORS + 3)
            }
            2 => (self.store_cursor.next_multiple_of(PAGE_SECTORS), 0),
            3 => (self.store_sectors - PAGE_SECTORS, size + PAGE_SECTORS),
            4 => (u64::MAX - PAGE_SECTORS + 1, size),
            _ => self.fresh_range(size),
        })
    }

    /// `size` sectors nobody has had yet (page-aligned); past the end of
    /// the device once the storage is used up, which the engine refuses.
    fn fresh_range(&mut self, size: u64) -> (u64, u64) {
        let sector = self.store_cursor.next_multiple_of(PAGE_SECTORS);
        self.store_cursor = sector + size;
        (sector, size)
    }

    /// Where IO goes: an original or an image of one, never storage.
    fn io_target(&mut self) -> Result<(Target, u64)> {
        let original = self.original()?;
        let device = if self.chance(1, 16)? {
            MISSING.to_string()
        } else {
            original.name
        };
        if self.chance(2, 5)? {
            Ok((Target::Image(self.snapshot()?, device), original.sectors))
        } else {
            Ok((Target::Original(device), original.sectors))
        }
    }

    /// An IO extent: mostly inside the device; if `may_overrun`, sometimes
    /// across its end or far beyond it.
    fn extent(&mut self, capacity: u64, may_overrun: bool) -> Result<(u64, u64)> {
        let sectors = self.pick(&[1, 1, 7, 8, 8, 16, 64, 256])?;
        let overrun = if may_overrun {
            self.u.int_in_range(0..=15)?
        } else {
            15
        };
        let sector = match overrun {
            0 => capacity - 1,
            1 => capacity + self.u.int_in_range(0..=1024)?,
            _ => {
                let last = capacity.saturating_sub(sectors);
                let sector = self.u.int_in_range(0..=last)?;
                if self.chance(1, 2)? {
                    sector & !(PAGE_SECTORS - 1)
                } else {
                    sector
                }
            }
        };
        Ok((sector, sectors.min(capacity.max(1))))
    }

    /// A write. Only image writes may run past the end: an original's
    /// written sectors are read back by VerifyOriginal and by the
    /// filesystem's writeback, which would rightly fail on them.
    fn write(&mut self) -> Result<Step> {
        let (target, capacity) = self.io_target()?;
        let may_overrun = matches!(target, Target::Image(..));
        let (sector, sectors) = self.extent(capacity, may_overrun)?;
        Ok(steps::write(target, sector, sectors, self.chance(1, 8)?))
    }

    /// A read, anywhere on an original or an image (never the storage
    /// device: the engine writes there, and the oracle judges every read
    /// of a declared device against user writes only).
    fn read(&mut self) -> Result<Step> {
        let (target, capacity) = self.io_target()?;
        let (sector, sectors) = if self.chance(1, 8)? {
            (0, capacity)
        } else {
            self.extent(capacity, true)?
        };
        Ok(steps::read(target, sector, sectors))
    }

    /// A small seeded workload on an original (an image may not exist,
    /// and a workload on a missing target fails the run).
    fn workload(&mut self) -> Result<Step> {
        let original = self.original()?;
        self.workload_on(original)
    }

    /// A workload on `original`, kept off its journal.
    fn workload_on(&mut self, original: Original) -> Result<Step> {
        let align = self.pick(&[1, 8])?;
        let region = if self.chance(1, 3)? {
            let count = self.pick(&[8, 64, 1024])?.min(original.sectors);
            let start = self.u.int_in_range(0..=original.sectors - count)?;
            Some((start, count))
        } else if original.journal {
            Some((0, original.sectors))
        } else {
            None
        };
        Ok(Step::Workload(Workload {
            target: Target::Original(original.name),
            ops: self.u.int_in_range(1..=12)?,
            max_sectors: self.pick(&[1, 8, 64, 256])?,
            align,
            read_percent: self.pick(&[0, 30, 100])?,
            region,
            nowait: self.chance(1, 8)?,
        }))
    }
}

/// Read `snapshot`'s events until its queue is empty, as a user would
/// before a power cut: a corrupted event still queued at the cut dies with
/// the module, and the oracle then has nothing to excuse the failed image
/// reads it explains (the run's last look, `scenario::runner`, never
/// comes for a snapshot the cut destroyed). A queue holds the creation's
/// low-free-space event, one per later crossing and one corrupted event
/// per device: a few.
fn drain_events(snapshot: &str) -> Step {
    Step::Repeat {
        times: 4,
        steps: vec![steps::wait_event(snapshot.to_string(), 0)],
    }
}

/// The text of the base scenario [`template`] builds: the loader's
/// defaults for every field it leaves out.
#[cfg(test)]
const TEMPLATE_TEXT: &str = r#"Scenario(
        name: "fuzz-lifecycle",
        devices: [(name: "template", sectors: 8)],
        steps: [],
    )"#;

/// A scenario with every default the loader gives, as the base that the
/// generator fills in: what `scenario::parse` makes of [`TEMPLATE_TEXT`]
/// (test `template_is_the_parsed_text`; a field added later must be
/// written here, and the test checks it gets the loader's default). Built
/// in code, not parsed: parsing pulled ron's deserializer into the fuzz
/// binary, about 9,000 of its 57,500 coverage counters, which libFuzzer
/// clears and scans on every execution although only the first one ran
/// them.
fn template() -> Scenario {
    Scenario {
        name: "fuzz-lifecycle".to_string(),
        description: String::new(),
        seed: 1,
        params: Params::default(),
        quirks: Vec::new(),
        devices: vec![template_device()],
        faults: Default::default(),
        scheduler: Scheduler::default(),
        teardown: true,
        memory_limit: None,
        expect_failure: None,
        device_fault_corruption: Default::default(),
        steps: Vec::new(),
    }
}

/// The device of [`TEMPLATE_TEXT`] with the loader's defaults.
fn template_device() -> DeviceSpec {
    DeviceSpec {
        name: "template".to_string(),
        major: None,
        minor: None,
        sectors: 8,
        fill: Fill::default(),
        fs: false,
        fs_ignores_freeze: false,
        io_min: 512,
        latency: Default::default(),
        bad_sectors: Vec::new(),
        freeze_fails: false,
        io_errors: Vec::new(),
        write_cache: false,
        faults: Vec::new(),
        journal: None,
        data_faults: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::inputs::random_input;
    use crate::swarm::steps::all_steps;

    /// The template built in code is the loader's reading of its text, so
    /// generated scenarios (and the swarm's digests) are as when it was
    /// parsed.
    #[test]
    fn template_is_the_parsed_text() {
        let parsed = crate::scenario::parse(std::path::Path::new("t.ron"), TEMPLATE_TEXT)
            .expect("the template text parses");
        assert_eq!(format!("{:?}", template()), format!("{parsed:?}"));
    }

    fn generate(data: &[u8], scale: Scale) -> Scenario {
        let mut u = Unstructured::new(data);
        Generator::new(&mut u, Features::ALL)
            .at_scale(scale)
            .scenario()
            .expect("a scenario")
    }

    /// A step with the numbers that depend on device sizes (IO offsets and
    /// lengths, workload regions) zeroed: what else it is, is decided by
    /// the same input bytes at every scale.
    fn shape(step: &Step) -> String {
        let mut step = step.clone();
        match &mut step {
            Step::Write {
                sector, sectors, ..
            }
            | Step::Read {
                sector, sectors, ..
            } => (*sector, *sectors) = (0, 0),
            Step::Workload(w) => w.region = None,
            Step::Concurrent(branches) => {
                let shapes: Vec<Vec<String>> = branches
                    .iter()
                    .map(|b| b.iter().map(shape).collect())
                    .collect();
                return format!("Concurrent({shapes:?})");
            }
            _ => {}
        }
        format!("{step:?}")
    }

    /// A farm scenario is the start of the full one of the same bytes: the
    /// same devices (no larger), parameters and scheduler, and its steps
    /// are the first of Full's. Over many inputs it keeps at least 45 % of
    /// them (52 % with `FARM_MAX_STEPS` = 23 and `FARM_IO_SECTORS` = 8192,
    /// 55 % without the step cap; 28 % at 1024 sectors, which fails).
    #[test]
    fn farm_scale_keeps_the_steps_of_full() {
        let (mut kept, mut total) = (0, 0);
        for index in 0..400 {
            let data = random_input(11, index, 512);
            let (full, farm) = (generate(&data, Scale::Full), generate(&data, Scale::Farm));
            assert_eq!(full.devices.len(), farm.devices.len());
            for (f, s) in full.devices.iter().zip(&farm.devices) {
                assert_eq!((&f.name, f.fill, f.fs), (&s.name, s.fill, s.fs));
                assert!(s.sectors <= f.sectors && s.sectors >= 2048, "input {index}");
            }
            assert_eq!(format!("{:?}", full.params), format!("{:?}", farm.params));
            assert_eq!(
                format!("{:?}", full.scheduler),
                format!("{:?}", farm.scheduler)
            );
            let shapes = |s: &Scenario| s.steps.iter().map(shape).collect::<Vec<_>>();
            let (full_shapes, farm_shapes) = (shapes(&full), shapes(&farm));
            assert!(farm_shapes.len() <= full_shapes.len(), "input {index}");
            assert_eq!(
                farm_shapes,
                full_shapes[..farm_shapes.len()],
                "input {index}"
            );
            kept += farm_shapes.len();
            total += full_shapes.len();
        }
        eprintln!("farm scale kept {kept} of {total} steps");
        assert!(
            kept * 20 >= total * 9,
            "farm kept only {kept} of {total} steps"
        );
    }

    /// Chunk shifts stay in 12..=21 (the loader takes 12..=30), and
    /// 2 MiB chunks, over one bio, come up (about 1 input in 20).
    #[test]
    fn chunks_over_one_bio_come_up() {
        let mut over_one_bio = 0;
        for index in 0..400 {
            let shift = generate(&random_input(5, index, 512), Scale::Full)
                .params
                .chunk_minimum_shift;
            assert!((12..=21).contains(&shift), "input {index}: {shift}");
            over_one_bio += usize::from(shift == 21);
        }
        assert!((8..=40).contains(&over_one_bio), "{over_one_bio} of 400");
    }

    /// [`Features::ALL`] (the fuzz targets') draws none of what `power`
    /// and `tails` add: no caches, journals, cuts, FLUSHes or strided
    /// writes; with them on, those come up.
    #[test]
    fn power_and_tails_only_where_switched_on() {
        let added = |scenario: &Scenario| {
            let devices = scenario.devices.iter();
            let cached = devices.clone().filter(|d| d.write_cache).count();
            let journals = devices.filter(|d| d.journal.is_some()).count();
            let steps = all_steps(&scenario.steps).into_iter().filter(|s| {
                matches!(
                    s,
                    Step::PowerLoss { .. }
                        | Step::Load
                        | Step::Flush { .. }
                        | Step::Write {
                            stride: Some(_),
                            ..
                        }
                )
            });
            cached + journals + steps.count()
        };
        let mut on = 0;
        for index in 0..200 {
            let data = random_input(17, index, 4096);
            assert_eq!(added(&generate(&data, Scale::Full)), 0, "input {index}");
            let mut u = Unstructured::new(&data);
            let scenario = Generator::new(&mut u, Features::EVERYTHING)
                .scenario()
                .expect("a scenario");
            on += added(&scenario);
        }
        assert!(on >= 200, "only {on} of it in 200 inputs");
    }

    /// A journal is the end of its device, and no user write or workload
    /// of the generator goes there: a filesystem never hands its journal
    /// out as file data, and a commit record over a user's data would fail
    /// the fs_consistency checker through no fault of the engine.
    #[test]
    fn journals_stay_clear_of_user_writes() {
        let mut journaled = 0;
        for index in 0..300 {
            let data = random_input(23, index, 4096);
            let mut u = Unstructured::new(&data);
            let scenario = Generator::new(&mut u, Features::EVERYTHING)
                .scenario()
                .expect("a scenario");
            for device in &scenario.devices {
                let Some((start, len)) = device.journal else {
                    continue;
                };
                journaled += 1;
                assert_eq!(start + len, device.sectors, "input {index}");
                for step in all_steps(&scenario.steps) {
                    let end = match step {
                        Step::Write {
                            target: Target::Original(d),
                            sector,
                            sectors,
                            repeat,
                            stride,
                            ..
                        } if *d == device.name => {
                            sector + (repeat - 1) * stride.unwrap_or(0) + sectors
                        }
                        Step::Workload(w) if w.target == Target::Original(device.name.clone()) => {
                            w.region.map_or(device.sectors, |(s, n)| s + n)
                        }
                        _ => 0,
                    };
                    assert!(end <= start, "input {index}: {step:?} reaches the journal");
                }
            }
        }
        assert!(journaled >= 30, "only {journaled} journals");
    }

    /// Every size of the farm table reads the input as Full's does: large
    /// enough that every offset drawn on it takes two bytes, as on Full's
    /// smallest device (an IO of up to 256 sectors, a workload region of
    /// up to 1024), and no larger than Full's size for the same byte.
    #[test]
    fn farm_sizes_read_the_input_like_full() {
        for (byte, sectors) in FARM_SECTORS.iter().enumerate() {
            assert!(*sectors >= 1024 + 256, "byte {byte}");
            assert!(*sectors <= FULL_SECTORS[byte % 4], "byte {byte}");
        }
        assert!(FARM_SECTORS.contains(&65536), "big devices never come up");
    }
}
