//! The scenario file format (RON), as data. See `scenarios/README.md`.
//!
//! Every struct and enum denies unknown fields (on `Step` this covers the
//! fields of every struct variant), so a misspelled field or step is an
//! error with its file, line and column, never a silent default;
//! `sim/tests/strict_format.rs` misspells each one in turn.

use serde::{Deserialize, Serialize};

use blksnap_core::Params;

use crate::device::{Fill, Latency};
use crate::faults::AllocFault;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The default seed; `--seed` overrides it.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Module parameters; any left out keep their defaults.
    #[serde(default)]
    pub params: Params,
    /// v2 bugs to switch on, by spec id (e.g. "B-SNAP-1").
    #[serde(default)]
    pub quirks: Vec<String>,
    pub devices: Vec<DeviceSpec>,
    #[serde(default)]
    pub faults: Faults,
    #[serde(default)]
    pub scheduler: Scheduler,
    /// After the steps: destroy what is left, unload the module and check
    /// that nothing leaked. On by default.
    #[serde(default = "default_true")]
    pub teardown: bool,
    /// Fail the run ("memory" checker) if the engine's live allocations
    /// ever exceed this many bytes.
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// For `scenarios/bugs/`: the run must fail, and this checker must be
    /// among those that fail it. The scenario then counts as passed: it
    /// proves the bench catches the bug.
    #[serde(default)]
    pub expect_failure: Option<ExpectedFailure>,
    /// Wrong data that a silent data fault the scenario declared
    /// (`data_faults` of a device) explains: "undetected corruption caused
    /// by a device fault". `Fails` (the default) fails the run with that
    /// category; `Allowed` lets the run pass with or without it;
    /// `Expected` requires at least one such read.
    #[serde(default)]
    pub device_fault_corruption: DeviceFaultCorruption,
    pub steps: Vec<Step>,
}

/// What a run may show of undetected corruption caused by a device fault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub enum DeviceFaultCorruption {
    #[default]
    Fails,
    Allowed,
    Expected,
}

fn default_seed() -> u64 {
    1
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedFailure {
    /// The checker that must fail the run ("point_in_time", "oops", ...).
    pub checker: String,
    /// Text its message must contain.
    #[serde(default)]
    pub contains: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub name: String,
    /// Device number; by default major 7 (loop) and the next free minor.
    #[serde(default)]
    pub major: Option<u32>,
    #[serde(default)]
    pub minor: Option<u32>,
    pub sectors: u64,
    #[serde(default)]
    pub fill: Fill,
    /// A filesystem model on top: writes go through its page cache.
    #[serde(default)]
    pub fs: bool,
    /// Adversarial: the filesystem does not honour a bdev freeze.
    #[serde(default)]
    pub fs_ignores_freeze: bool,
    #[serde(default = "default_io_min")]
    pub io_min: u32,
    #[serde(default)]
    pub latency: Latency,
    /// Ranges (start, count) that fail with EIO.
    #[serde(default)]
    pub bad_sectors: Vec<(u64, u64)>,
    /// Adversarial: freeze_bdev from the engine fails on this device.
    #[serde(default)]
    pub freeze_fails: bool,
    /// Windows of bios that fail with EIO, by op, range and bio count.
    #[serde(default)]
    pub io_errors: Vec<crate::faults::IoErrors>,
    /// A volatile write cache: writes complete into it; FLUSH and FUA make
    /// them durable; power loss keeps, drops or tears what it holds.
    #[serde(default)]
    pub write_cache: bool,
    /// Disk faults: latency spikes, flaky reads, forced torn writes.
    #[serde(default)]
    pub faults: Vec<crate::disk_faults::DiskFault>,
    /// With `fs`: a journaling filesystem whose commits (PREFLUSH+FUA) go
    /// to this region (start, sectors).
    #[serde(default)]
    pub journal: Option<(u64, u64)>,
    /// Silent data faults: lost, corrupted and misdirected writes, by
    /// range, bio count or probability (`data_faults.rs`).
    #[serde(default)]
    pub data_faults: Vec<crate::data_faults::DataFault>,
}

fn default_io_min() -> u32 {
    512
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Allocation sites that fail (site names as the engine gives them).
    #[serde(default)]
    pub alloc: Vec<(String, AllocFault)>,
    /// Probability, per million, that any device bio fails with EIO.
    #[serde(default)]
    pub bio_error_ppm: u64,
    #[serde(default)]
    pub add_disk_fail: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub enum Scheduler {
    #[default]
    Random,
    /// PCT-style priorities with this many change points.
    Priority(u32),
}

/// What an ioctl step expects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub enum Expect {
    #[default]
    Ok,
    /// Fails with this errno, by name ("ESRCH").
    Err(String),
    /// Any result is fine (the step only drives the system).
    Any,
}

/// What a WAIT_EVENT step expects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub enum EventExpect {
    /// Any event, or none.
    #[default]
    Any,
    /// -ENOENT: no event within the timeout.
    None,
    /// `low_free_space` asking for this many sectors.
    LowFreeSpace(u64),
    /// `corrupted` for this device with this errno name.
    Corrupted(String, String),
    /// The ioctl fails with this errno.
    Err(String),
}

/// A deliberate fault in the user memory handed to an ioctl.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub enum ArgFault {
    /// The argument pointer points at nothing.
    StructUnmapped,
    /// The argument struct is mapped with only this many bytes.
    StructShort(usize),
    /// The struct can be read but not written back (copy_to_user faults).
    StructReadOnly,
    /// The array pointer is NULL.
    ArrayNull,
    /// The array pointer points at nothing.
    ArrayUnmapped,
    /// Only this many elements of the array are mapped.
    ArrayShort(u32),
    /// The array is mapped read-only (copy_to_user into it faults).
    ArrayReadOnly,
    /// The count field says this, whatever the array holds.
    Count(u32),
}

/// The argument of a raw ioctl.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub enum RawArg {
    /// A NULL pointer.
    Null,
    /// A pointer to nothing.
    Unmapped,
    /// These bytes, mapped.
    Bytes(Vec<u8>),
    /// This many zero bytes, mapped.
    Zeroed(usize),
}

/// Expected fields of one TRACKER_COLLECT entry (unset fields are not checked).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CbtExpect {
    pub device: String,
    #[serde(default)]
    pub blk_size: Option<u32>,
    #[serde(default)]
    pub blk_count: Option<u32>,
    /// In bytes.
    #[serde(default)]
    pub device_capacity: Option<u64>,
    #[serde(default)]
    pub snap_number: Option<u8>,
    /// A name for the generation id: the first use records it, later uses
    /// must see the same id; `new:NAME` asserts a different id than every
    /// generation named before.
    #[serde(default)]
    pub generation: Option<String>,
}

/// Where a workload or an IO step goes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub enum Target {
    /// The original device.
    Original(String),
    /// The image of `device` in `snapshot`.
    Image(String, String),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub target: Target,
    /// Number of IOs.
    pub ops: u32,
    /// Largest IO, in sectors.
    #[serde(default = "default_max_sectors")]
    pub max_sectors: u64,
    /// Offsets and sizes are multiples of this many sectors.
    #[serde(default = "default_align")]
    pub align: u64,
    /// Percent of reads; the rest are writes.
    #[serde(default)]
    pub read_percent: u8,
    /// Limit the IO to (start, count) sectors; the whole device otherwise.
    #[serde(default)]
    pub region: Option<(u64, u64)>,
    /// Mark writes REQ_NOWAIT.
    #[serde(default)]
    pub nowait: bool,
}

fn default_repeat() -> u64 {
    1
}

fn default_max_sectors() -> u64 {
    64
}

fn default_align() -> u64 {
    1
}

/// One step. Devices are named by their scenario name, or as "major:minor"
/// for a number that need not exist.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub enum Step {
    Version {
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    Create {
        snapshot: String,
        devices: Vec<String>,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    Append {
        snapshot: String,
        device: String,
        ranges: Vec<(u64, u64)>,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    /// TAKE; on success the images are collected and bound, as the upstream
    /// library does.
    Take {
        snapshot: String,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    Destroy {
        snapshot: String,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    /// SNAPSHOT_COLLECT: the listed snapshots, by scenario name.
    Collect {
        #[serde(default)]
        expect_snapshots: Option<Vec<String>>,
        /// The count written back (with a fault, the count is not read
        /// from the engine first: `Count` gives it).
        #[serde(default)]
        expect_count: Option<u32>,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    CollectImages {
        snapshot: String,
        #[serde(default)]
        expect_count: Option<u32>,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    WaitEvent {
        snapshot: String,
        #[serde(default)]
        timeout_ms: u32,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: EventExpect,
    },
    /// Write fresh data; with `repeat`, that many writes `stride` sectors
    /// apart (default: back to back).
    Write {
        target: Target,
        sector: u64,
        sectors: u64,
        #[serde(default = "default_repeat")]
        repeat: u64,
        #[serde(default)]
        stride: Option<u64>,
        /// Pause after each write, in microseconds of virtual time.
        #[serde(default)]
        pause_us: u64,
        #[serde(default)]
        nowait: bool,
        #[serde(default)]
        expect: Expect,
    },
    Read {
        target: Target,
        sector: u64,
        sectors: u64,
        #[serde(default)]
        expect: Expect,
    },
    /// Read the whole image (or only what was ever written, plus samples,
    /// for devices too large to read) and let the oracle judge it.
    VerifyImage {
        snapshot: String,
        device: String,
        /// `Ok` (the default): the oracle must judge at least one sector.
        /// `Err("EIO")`: the image is expected to be unreadable; at least
        /// one read must fail with EIO, and the oracle must excuse every
        /// failure (a corrupted event or an injected fault explains it).
        #[serde(default)]
        expect: Expect,
    },
    /// Read what users wrote to the original and let the oracle judge it.
    VerifyOriginal {
        device: String,
    },
    Workload(Workload),
    /// Run each branch as its own process; wait for all.
    Concurrent(Vec<Vec<Step>>),
    Sleep {
        ms: u64,
    },
    /// Write the filesystem's dirty data back.
    Sync {
        device: String,
    },
    Freeze {
        device: String,
    },
    Thaw {
        device: String,
    },
    RemoveDevice {
        device: String,
    },
    /// Any command number with a raw argument: unknown numbers, bad pointers.
    Ioctl {
        cmd: u32,
        arg: RawArg,
        #[serde(default)]
        expect: Expect,
    },
    TrackerRemove {
        device: String,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    /// TRACKER_COLLECT in both modes; entries are checked in list order.
    TrackerCollect {
        #[serde(default)]
        expect_count: Option<u32>,
        #[serde(default)]
        expect_entries: Option<Vec<CbtExpect>>,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    /// TRACKER_READ_CBT_MAP; the result is the number of bytes copied.
    ReadCbtMap {
        device: String,
        #[serde(default)]
        offset: u32,
        length: u32,
        /// Keep the bytes under this name.
        #[serde(default)]
        save: Option<String>,
        /// The bytes must equal those saved under this name.
        #[serde(default)]
        same_as: Option<String>,
        /// (index, value) pairs the map must hold.
        #[serde(default)]
        expect_bytes: Vec<(u32, u8)>,
        /// The ioctl's return value.
        #[serde(default)]
        expect_len: Option<i64>,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    /// TRACKER_MARK_DIRTY_BLOCKS on an original or an image.
    MarkDirty {
        target: Target,
        ranges: Vec<(u64, u64)>,
        #[serde(default)]
        fault: Option<ArgFault>,
        #[serde(default)]
        expect: Expect,
    },
    /// Write a module parameter, as through /sys/module/blksnap/parameters.
    SetParam {
        name: String,
        value: i64,
        #[serde(default)]
        expect: Expect,
    },
    /// Change a device's capacity (a loop device resized).
    Resize {
        device: String,
        sectors: u64,
    },
    /// Unload the module (rmmod): destroy, detach, wait for trackers.
    Unload,
    /// Load the module again after an Unload.
    Load,
    /// The steps must finish within this much virtual time ("latency").
    Timed {
        max_ms: u64,
        steps: Vec<Step>,
    },
    /// Inside a Concurrent branch: SIGKILL the process of sibling branch
    /// number `sibling` of the same Concurrent step.
    Kill {
        sibling: usize,
    },
    /// Run the steps this many times.
    Repeat {
        times: u32,
        steps: Vec<Step>,
    },
    /// What a device's media holds, read from the sim's own record (not
    /// through the engine): e.g. where the diff storage put a chunk.
    ExpectMedia {
        device: String,
        sector: u64,
        sectors: u64,
        content: Media,
    },
    /// The library's event loop and the stretch tool: wait for events; on
    /// low_free_space append the requested sectors from `device` (taken in
    /// order from `from`), while less than `limit` sectors were appended;
    /// stop on corrupted or once the snapshot is gone.
    Stretch {
        snapshot: String,
        device: String,
        #[serde(default)]
        from: u64,
        limit: u64,
        #[serde(default = "default_poll_ms")]
        timeout_ms: u32,
        /// How many portions must have been appended when it stops.
        #[serde(default)]
        expect_portions: Option<u64>,
        /// Whether it must have seen a corrupted event.
        #[serde(default)]
        expect_corrupted: Option<bool>,
    },
    /// Cut the power after `after_us` (plus a seeded part of `jitter_us`)
    /// while the `during` branches run: they, the module and every
    /// snapshot are gone; device caches lose what they held. Then the
    /// scenario goes on (Load the module again). Only at the top level.
    PowerLoss {
        #[serde(default)]
        during: Vec<Vec<Step>>,
        #[serde(default)]
        after_us: u64,
        #[serde(default)]
        jitter_us: u64,
    },
    /// A FLUSH (an empty REQ_PREFLUSH write) to a device, as fsync of a
    /// block device sends it.
    Flush {
        device: String,
        #[serde(default)]
        expect: Expect,
    },
    /// A clean shutdown and restart: sync, unload, flush caches; nothing
    /// is lost. Only at the top level.
    Reboot,
    /// Copy every sector of the image of `device` in `snapshot` onto the
    /// device `backup` (user reads and writes), and keep the CBT generation
    /// and snapshot number in the backup's last sectors.
    FullBackup {
        snapshot: String,
        device: String,
        backup: String,
    },
    /// Read the CBT map and copy only the blocks marked newer than the last
    /// backup on `backup`; a full copy when that backup is of another CBT
    /// generation (or there is none). `expect_full` asserts which it did.
    IncrementalBackup {
        snapshot: String,
        device: String,
        backup: String,
        #[serde(default)]
        expect_full: Option<bool>,
    },
    /// The backup must equal the image, and the oracle's content of the
    /// image, sector for sector.
    CompareBackup {
        snapshot: String,
        device: String,
        backup: String,
    },
}

fn default_poll_ms() -> u32 {
    100
}

/// Expected media content.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub enum Media {
    /// Never written: zeros.
    Zero,
    /// The initial pattern of `device` from `sector` on (as a COW copy of
    /// data that was never overwritten before TAKE would be).
    Pattern(String, u64),
    /// Any one of these.
    OneOf(Vec<Media>),
}

impl Step {
    /// The step's kind, for traces and messages.
    pub fn kind(&self) -> StepKind {
        use StepKind as K;
        match self {
            Step::Version { .. } => K::Version,
            Step::Create { .. } => K::Create,
            Step::Append { .. } => K::Append,
            Step::Take { .. } => K::Take,
            Step::Destroy { .. } => K::Destroy,
            Step::Collect { .. } => K::Collect,
            Step::CollectImages { .. } => K::CollectImages,
            Step::WaitEvent { .. } => K::WaitEvent,
            Step::Write { .. } => K::Write,
            Step::Read { .. } => K::Read,
            Step::VerifyImage { .. } => K::VerifyImage,
            Step::VerifyOriginal { .. } => K::VerifyOriginal,
            Step::Workload(_) => K::Workload,
            Step::Concurrent(_) => K::Concurrent,
            Step::Sleep { .. } => K::Sleep,
            Step::Sync { .. } => K::Sync,
            Step::Freeze { .. } => K::Freeze,
            Step::Thaw { .. } => K::Thaw,
            Step::RemoveDevice { .. } => K::RemoveDevice,
            Step::Ioctl { .. } => K::Ioctl,
            Step::TrackerRemove { .. } => K::TrackerRemove,
            Step::TrackerCollect { .. } => K::TrackerCollect,
            Step::ReadCbtMap { .. } => K::ReadCbtMap,
            Step::MarkDirty { .. } => K::MarkDirty,
            Step::SetParam { .. } => K::SetParam,
            Step::Resize { .. } => K::Resize,
            Step::Unload => K::Unload,
            Step::Repeat { .. } => K::Repeat,
            Step::Timed { .. } => K::Timed,
            Step::Kill { .. } => K::Kill,
            Step::ExpectMedia { .. } => K::ExpectMedia,
            Step::Stretch { .. } => K::Stretch,
            Step::Load => K::Load,
            Step::FullBackup { .. } => K::FullBackup,
            Step::IncrementalBackup { .. } => K::IncrementalBackup,
            Step::CompareBackup { .. } => K::CompareBackup,
            Step::PowerLoss { .. } => K::PowerLoss,
            Step::Reboot => K::Reboot,
            Step::Flush { .. } => K::Flush,
        }
    }
}

/// A step's kind, as a type: traces and messages show its name, and a
/// judge of a run (`swarm::judge`) matches on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    Version,
    Create,
    Append,
    Take,
    Destroy,
    Collect,
    CollectImages,
    WaitEvent,
    Write,
    Read,
    VerifyImage,
    VerifyOriginal,
    Workload,
    Concurrent,
    Sleep,
    Sync,
    Freeze,
    Thaw,
    RemoveDevice,
    Ioctl,
    TrackerRemove,
    TrackerCollect,
    ReadCbtMap,
    MarkDirty,
    SetParam,
    Resize,
    Unload,
    Repeat,
    Timed,
    Kill,
    ExpectMedia,
    Stretch,
    Load,
    FullBackup,
    IncrementalBackup,
    CompareBackup,
    PowerLoss,
    Reboot,
    Flush,
}

/// The variant's name, as the scenario file spells the step.
impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}
