//! The user-space ABI of blksnap v2 (`include/uapi/linux/blksnap.h`), spec §1.
//!
//! Everything here describes bytes as an x86-64 user program lays them out:
//! the simulator never shares memory with a caller, it copies argument
//! structures in and out of a simulated user address space. The crate forbids
//! `unsafe`, so instead of transmuting, every structure implements
//! [`UapiStruct`], which decodes and encodes it field by field, little-endian,
//! at the offsets the compiler gives the `#[repr(C)]` Rust type.
//!
//! The Rust types use plain fields only. `#[repr(C)]` inserts the same
//! implicit padding as gcc does for the C header, provided user pointers are
//! 8-byte integers (`u64`, a user virtual address). Offsets and sizes are
//! therefore never written down here; they are read back from the types with
//! `size_of`, `align_of` and `offset_of!` ([`struct_layouts`]), and the tests
//! compare them with the spec's table.

#![forbid(unsafe_code)]

use core::fmt;
use core::mem::{align_of, offset_of, size_of};

// ---------------------------------------------------------------------------
// 1.1 Constants
// ---------------------------------------------------------------------------

/// Path of the control node, as the v2 kernel header spells it. (The
/// user-space tree of the same period calls it `blksnap-control`, spec §0.)
pub const BLK_SNAP_CTL: &str = "/dev/blksnap";

/// Name prefix of image disks and of their worker threads; the disk of
/// minor `m` is `blksnap-image<m>`.
pub const BLK_SNAP_IMAGE_NAME: &str = "blksnap-image";

/// The ioctl magic ("type" byte of every command number).
pub const BLK_SNAP: u8 = b'V';

/// The version VERSION reports in v2 (spec §1.5); v3 and later report 2.0.0.0.
pub const MODULE_VERSION: BlkSnapVersion = BlkSnapVersion {
    major: 1,
    minor: 0,
    revision: 0,
    build: 0,
};

/// Event code: the diff storage is running low (payload [`BlkSnapEventLowFreeSpace`]).
pub const EVENT_LOW_FREE_SPACE: u32 = 0;

/// Event code: a device's diff area became corrupted (payload [`BlkSnapEventCorrupted`]).
pub const EVENT_CORRUPTED: u32 = 1;

/// Room for an event payload: the event structure is one 4096-byte page and
/// its header takes 32 bytes.
pub const EVENT_DATA_SIZE: usize = 4096 - 32;

// ---------------------------------------------------------------------------
// ioctl number encoding (asm-generic/ioctl.h, which x86-64 uses)
// ---------------------------------------------------------------------------

/// Bits 0..7: command number within the magic.
pub const IOC_NRSHIFT: u32 = 0;
/// Bits 8..15: magic ("type").
pub const IOC_TYPESHIFT: u32 = 8;
/// Bits 16..29: argument size in bytes.
pub const IOC_SIZESHIFT: u32 = 16;
/// Bits 30..31: direction.
pub const IOC_DIRSHIFT: u32 = 30;

const IOC_NRMASK: u32 = 0xff;
const IOC_TYPEMASK: u32 = 0xff;
const IOC_SIZEMASK: u32 = (1 << 14) - 1;
const IOC_DIRMASK: u32 = 0x3;

/// Direction: no data.
pub const IOC_NONE: u32 = 0;
/// Direction: user space writes, the kernel reads (`copy_from_user`).
pub const IOC_WRITE: u32 = 1;
/// Direction: the kernel writes back to user space (`copy_to_user`).
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`. A size that does not fit in 14 bits is a
/// compile-time error when used in a constant, as in C.
pub const fn ioc(dir: u32, ty: u8, nr: u32, size: usize) -> u32 {
    assert!(dir <= IOC_DIRMASK && nr <= IOC_NRMASK && size <= IOC_SIZEMASK as usize);
    (dir << IOC_DIRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
}

/// `_IOW(type, nr, T)` with `size = size_of::<T>()`.
pub const fn iow(ty: u8, nr: u32, size: usize) -> u32 {
    ioc(IOC_WRITE, ty, nr, size)
}

/// `_IOR(type, nr, T)` with `size = size_of::<T>()`.
pub const fn ior(ty: u8, nr: u32, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}

/// `_IOC_NR(cmd)`: the only part of a command the v2 dispatcher looks at
/// (spec §1.6).
pub const fn ioc_nr(cmd: u32) -> u32 {
    (cmd >> IOC_NRSHIFT) & IOC_NRMASK
}

/// `_IOC_TYPE(cmd)`: the magic. Ignored by the v2 dispatcher.
pub const fn ioc_type(cmd: u32) -> u32 {
    (cmd >> IOC_TYPESHIFT) & IOC_TYPEMASK
}

/// `_IOC_SIZE(cmd)`: the declared argument size. Ignored by the v2 dispatcher.
pub const fn ioc_size(cmd: u32) -> u32 {
    (cmd >> IOC_SIZESHIFT) & IOC_SIZEMASK
}

/// `_IOC_DIR(cmd)`: the declared direction. Ignored by the v2 dispatcher.
pub const fn ioc_dir(cmd: u32) -> u32 {
    (cmd >> IOC_DIRSHIFT) & IOC_DIRMASK
}

// ---------------------------------------------------------------------------
// 1.2 ioctl numbers
// ---------------------------------------------------------------------------

/// `enum blk_snap_ioctl`: the `nr` field of each command, and the index into
/// the kernel's handler table.
///
/// There are 12 entries, but the v2 dispatcher only rejects `nr > 12`, so a
/// command with `nr == 12` reads past the table (B-CTRL-1). [`IoctlNr::from_nr`]
/// returns `None` for 12 like for any other unknown number; modelling the
/// bug is the dispatcher's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum IoctlNr {
    /// Report the module version.
    Version = 0,
    /// Stop tracking a device.
    TrackerRemove = 1,
    /// List tracked devices and their CBT state.
    TrackerCollect = 2,
    /// Copy part of a device's CBT map to user space.
    TrackerReadCbtMap = 3,
    /// Mark sector ranges as changed in a CBT map.
    TrackerMarkDirtyBlocks = 4,
    /// Create a snapshot over a set of devices.
    SnapshotCreate = 5,
    /// Release and destroy a snapshot.
    SnapshotDestroy = 6,
    /// Give the snapshot more difference-storage ranges.
    SnapshotAppendStorage = 7,
    /// Take the snapshot: start COW and create the images.
    SnapshotTake = 8,
    /// List snapshot ids.
    SnapshotCollect = 9,
    /// List (original, image) device pairs of a snapshot.
    SnapshotCollectImages = 10,
    /// Fetch the oldest event of a snapshot.
    SnapshotWaitEvent = 11,
}

impl IoctlNr {
    /// All numbers, in enum (and spec) order.
    pub const ALL: [IoctlNr; 12] = [
        IoctlNr::Version,
        IoctlNr::TrackerRemove,
        IoctlNr::TrackerCollect,
        IoctlNr::TrackerReadCbtMap,
        IoctlNr::TrackerMarkDirtyBlocks,
        IoctlNr::SnapshotCreate,
        IoctlNr::SnapshotDestroy,
        IoctlNr::SnapshotAppendStorage,
        IoctlNr::SnapshotTake,
        IoctlNr::SnapshotCollect,
        IoctlNr::SnapshotCollectImages,
        IoctlNr::SnapshotWaitEvent,
    ];

    /// The entry for a handler-table index, or `None` if there is none.
    pub const fn from_nr(nr: u32) -> Option<IoctlNr> {
        if nr < Self::ALL.len() as u32 {
            Some(Self::ALL[nr as usize])
        } else {
            None
        }
    }

    /// The full command number the header defines for this entry.
    pub const fn cmd(self) -> u32 {
        IOCTLS[self as usize].1
    }

    /// The header's macro name, e.g. `IOCTL_BLK_SNAP_VERSION`.
    pub const fn name(self) -> &'static str {
        IOCTLS[self as usize].0
    }
}

// The directions below are what the header declares, not what the data does
// (B-CTRL-5). By the Linux convention `_IOW` means "the kernel reads the
// argument" and `_IOR` means "the kernel writes it back". VERSION only writes
// yet is `_IOW`; DESTROY, TAKE, READ_CBT_MAP and MARK_DIRTY_BLOCKS only read
// their structure yet are `_IOR`. The kernel never checks direction, magic or
// size (spec §1.6), so all that matters is reproducing these exact values;
// only tools that decode the bits (strace and the like) are misled.

/// Get the module version (declared `_IOW` although it writes to user space).
pub const IOCTL_BLK_SNAP_VERSION: u32 = iow(
    BLK_SNAP,
    IoctlNr::Version as u32,
    size_of::<BlkSnapVersion>(),
);
/// Remove a device from tracking.
pub const IOCTL_BLK_SNAP_TRACKER_REMOVE: u32 = iow(
    BLK_SNAP,
    IoctlNr::TrackerRemove as u32,
    size_of::<BlkSnapTrackerRemove>(),
);
/// Collect the tracked devices.
pub const IOCTL_BLK_SNAP_TRACKER_COLLECT: u32 = iow(
    BLK_SNAP,
    IoctlNr::TrackerCollect as u32,
    size_of::<BlkSnapTrackerCollect>(),
);
/// Read a CBT map (declared `_IOR` although the structure is only read; the
/// map goes out through `buff`, which the number does not describe).
pub const IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP: u32 = ior(
    BLK_SNAP,
    IoctlNr::TrackerReadCbtMap as u32,
    size_of::<BlkSnapTrackerReadCbtBitmap>(),
);
/// Mark dirty blocks (declared `_IOR` although it only reads user memory).
pub const IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS: u32 = ior(
    BLK_SNAP,
    IoctlNr::TrackerMarkDirtyBlocks as u32,
    size_of::<BlkSnapTrackerMarkDirtyBlocks>(),
);
/// Create a snapshot.
pub const IOCTL_BLK_SNAP_SNAPSHOT_CREATE: u32 = iow(
    BLK_SNAP,
    IoctlNr::SnapshotCreate as u32,
    size_of::<BlkSnapSnapshotCreate>(),
);
/// Destroy a snapshot (declared `_IOR` although it only reads the id).
pub const IOCTL_BLK_SNAP_SNAPSHOT_DESTROY: u32 = ior(
    BLK_SNAP,
    IoctlNr::SnapshotDestroy as u32,
    size_of::<BlkSnapSnapshotDestroy>(),
);
/// Append difference storage.
pub const IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE: u32 = iow(
    BLK_SNAP,
    IoctlNr::SnapshotAppendStorage as u32,
    size_of::<BlkSnapSnapshotAppendStorage>(),
);
/// Take a snapshot (declared `_IOR` although it only reads the id).
pub const IOCTL_BLK_SNAP_SNAPSHOT_TAKE: u32 = ior(
    BLK_SNAP,
    IoctlNr::SnapshotTake as u32,
    size_of::<BlkSnapSnapshotTake>(),
);
/// Collect snapshot ids.
pub const IOCTL_BLK_SNAP_SNAPSHOT_COLLECT: u32 = iow(
    BLK_SNAP,
    IoctlNr::SnapshotCollect as u32,
    size_of::<BlkSnapSnapshotCollect>(),
);
/// Collect a snapshot's images.
pub const IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES: u32 = iow(
    BLK_SNAP,
    IoctlNr::SnapshotCollectImages as u32,
    size_of::<BlkSnapSnapshotCollectImages>(),
);
/// Wait for an event (`_IOW`, although on success the whole page is also
/// written back).
pub const IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT: u32 = iow(
    BLK_SNAP,
    IoctlNr::SnapshotWaitEvent as u32,
    size_of::<BlkSnapSnapshotEvent>(),
);

/// Every command as (header macro name, value), indexed by [`IoctlNr`].
pub const IOCTLS: [(&str, u32); 12] = [
    ("IOCTL_BLK_SNAP_VERSION", IOCTL_BLK_SNAP_VERSION),
    (
        "IOCTL_BLK_SNAP_TRACKER_REMOVE",
        IOCTL_BLK_SNAP_TRACKER_REMOVE,
    ),
    (
        "IOCTL_BLK_SNAP_TRACKER_COLLECT",
        IOCTL_BLK_SNAP_TRACKER_COLLECT,
    ),
    (
        "IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP",
        IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP,
    ),
    (
        "IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS",
        IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS,
    ),
    (
        "IOCTL_BLK_SNAP_SNAPSHOT_CREATE",
        IOCTL_BLK_SNAP_SNAPSHOT_CREATE,
    ),
    (
        "IOCTL_BLK_SNAP_SNAPSHOT_DESTROY",
        IOCTL_BLK_SNAP_SNAPSHOT_DESTROY,
    ),
    (
        "IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE",
        IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE,
    ),
    ("IOCTL_BLK_SNAP_SNAPSHOT_TAKE", IOCTL_BLK_SNAP_SNAPSHOT_TAKE),
    (
        "IOCTL_BLK_SNAP_SNAPSHOT_COLLECT",
        IOCTL_BLK_SNAP_SNAPSHOT_COLLECT,
    ),
    (
        "IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES",
        IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES,
    ),
    (
        "IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT",
        IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT,
    ),
];

// ---------------------------------------------------------------------------
// 1.3 Argument structures
// ---------------------------------------------------------------------------

/// `struct blk_snap_version`: the VERSION result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Revision.
    pub revision: u16,
    /// Always zero.
    pub build: u16,
}

impl fmt::Display for BlkSnapVersion {
    /// Dotted form, e.g. `1.0.0.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            major,
            minor,
            revision,
            build,
        } = self;
        write!(f, "{major}.{minor}.{revision}.{build}")
    }
}

/// `struct blk_snap_dev`: a device number split into its parts, because the
/// user-space and kernel `dev_t` encodings differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(C)]
pub struct BlkSnapDev {
    /// Major number.
    pub mj: u32,
    /// Minor number.
    pub mn: u32,
}

/// `struct blk_snap_tracker_remove`: the TRACKER_REMOVE argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapTrackerRemove {
    /// Device to stop tracking.
    pub dev_id: BlkSnapDev,
}

/// `struct blk_snap_uuid`: a 16-byte opaque id (snapshot id, CBT generation).
/// Byte-aligned, so it packs tightly after smaller fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(C)]
pub struct BlkSnapUuid {
    /// The 16 bytes.
    pub b: [u8; 16],
}

/// `struct blk_snap_cbt_info`: one TRACKER_COLLECT output entry. The byte
/// uuid at 28 and the `u8` at 44 leave 3 bytes of tail padding (48 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapCbtInfo {
    /// Tracked device.
    pub dev_id: BlkSnapDev,
    /// CBT block size in bytes.
    pub blk_size: u32,
    /// Device capacity in bytes.
    pub device_capacity: u64,
    /// Number of CBT blocks.
    pub blk_count: u32,
    /// Identifies the CBT generation; changes when the map is reset.
    pub generation_id: BlkSnapUuid,
    /// Current change number.
    pub snap_number: u8,
}

/// `struct blk_snap_tracker_collect`: the TRACKER_COLLECT argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapTrackerCollect {
    /// Capacity of the array in entries (in), number of trackers (out).
    pub count: u32,
    /// User address of a `blk_snap_cbt_info` array, or 0.
    pub cbt_info_array: u64,
}

/// `struct blk_snap_tracker_read_cbt_bitmap`: the TRACKER_READ_CBT_MAP argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapTrackerReadCbtBitmap {
    /// Device whose map is read.
    pub dev_id: BlkSnapDev,
    /// Byte offset into the map.
    pub offset: u32,
    /// Bytes to copy.
    pub length: u32,
    /// User address of the output buffer.
    pub buff: u64,
}

/// `struct blk_snap_block_range`: a sector range (dirty blocks, storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapBlockRange {
    /// First sector.
    pub sector_offset: u64,
    /// Number of sectors.
    pub sector_count: u64,
}

/// `struct blk_snap_tracker_mark_dirty_blocks`: the MARK_DIRTY_BLOCKS argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapTrackerMarkDirtyBlocks {
    /// Device whose map is marked (or an image device, spec §1.7).
    pub dev_id: BlkSnapDev,
    /// Entries in the range array.
    pub count: u32,
    /// User address of a `blk_snap_block_range` array.
    pub dirty_blocks_array: u64,
}

/// `struct blk_snap_snapshot_create`: the SNAPSHOT_CREATE argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapSnapshotCreate {
    /// Entries in the device array.
    pub count: u32,
    /// User address of a `blk_snap_dev` array.
    pub dev_id_array: u64,
    /// Output: id of the new snapshot.
    pub id: BlkSnapUuid,
}

/// `struct blk_snap_snapshot_destroy`: the SNAPSHOT_DESTROY argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapSnapshotDestroy {
    /// Snapshot to destroy.
    pub id: BlkSnapUuid,
}

/// `struct blk_snap_snapshot_append_storage`: the APPEND_STORAGE argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapSnapshotAppendStorage {
    /// Snapshot to extend.
    pub id: BlkSnapUuid,
    /// Device holding the storage ranges.
    pub dev_id: BlkSnapDev,
    /// Entries in the range array.
    pub count: u32,
    /// User address of a `blk_snap_block_range` array.
    pub ranges: u64,
}

/// `struct blk_snap_snapshot_take`: the SNAPSHOT_TAKE argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapSnapshotTake {
    /// Snapshot to take.
    pub id: BlkSnapUuid,
}

/// `struct blk_snap_snapshot_collect`: the SNAPSHOT_COLLECT argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapSnapshotCollect {
    /// Capacity of the id array (in), number of snapshots (out).
    pub count: u32,
    /// User address of a `blk_snap_uuid` array, or 0.
    pub ids: u64,
}

/// `struct blk_snap_image_info`: one SNAPSHOT_COLLECT_IMAGES output entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapImageInfo {
    /// The original device.
    pub orig_dev_id: BlkSnapDev,
    /// Its snapshot image.
    pub image_dev_id: BlkSnapDev,
}

/// `struct blk_snap_snapshot_collect_images`: the COLLECT_IMAGES argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapSnapshotCollectImages {
    /// Snapshot whose images are listed.
    pub id: BlkSnapUuid,
    /// Capacity of the array (in), number of images (out).
    pub count: u32,
    /// User address of a `blk_snap_image_info` array, or 0.
    pub image_info_array: u64,
}

/// `struct blk_snap_snapshot_event`: the WAIT_EVENT argument, one page.
///
/// In v2 the kernel copies in only `id`; `timeout_ms` is never read and is
/// overwritten with 0 on success (B-CTRL-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct BlkSnapSnapshotEvent {
    /// Snapshot to poll.
    pub id: BlkSnapUuid,
    /// Wait time; never read by the v2 kernel and zeroed on success.
    pub timeout_ms: u32,
    /// [`EVENT_LOW_FREE_SPACE`] or [`EVENT_CORRUPTED`].
    pub code: u32,
    /// Monotonic time of the event, in nanoseconds.
    pub time_label: i64,
    /// Payload: an encoded [`BlkSnapEventLowFreeSpace`] or [`BlkSnapEventCorrupted`].
    pub data: [u8; EVENT_DATA_SIZE],
}

impl Default for BlkSnapSnapshotEvent {
    /// All zero. Written by hand: `Default` is not derived for arrays this long.
    fn default() -> Self {
        Self {
            id: BlkSnapUuid::default(),
            timeout_ms: 0,
            code: 0,
            time_label: 0,
            data: [0; EVENT_DATA_SIZE],
        }
    }
}

impl BlkSnapSnapshotEvent {
    /// The encoding of an event with these fields and `data` at the start of
    /// its payload (the rest zero): `encode` of that struct, without
    /// building and zeroing the page-sized struct first and copying its
    /// whole payload (WAIT_EVENT's answer, issue 10). `None` if `data` does
    /// not fit.
    pub fn encode_with(
        id: BlkSnapUuid,
        timeout_ms: u32,
        code: u32,
        time_label: i64,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        let mut buf = vec![0; Self::SIZE];
        let payload = offset_of!(Self, data);
        buf.get_mut(payload..payload + data.len())?
            .copy_from_slice(data);
        id.write(&mut buf, offset_of!(Self, id));
        timeout_ms.write(&mut buf, offset_of!(Self, timeout_ms));
        code.write(&mut buf, offset_of!(Self, code));
        time_label.write(&mut buf, offset_of!(Self, time_label));
        Some(buf)
    }
}

/// `struct blk_snap_event_low_free_space`: payload of event code 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapEventLowFreeSpace {
    /// The current `diff_storage_minimum`, in sectors (not cumulative).
    pub requested_nr_sect: u64,
}

/// `struct blk_snap_event_corrupted`: payload of event code 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct BlkSnapEventCorrupted {
    /// The original device whose diff area failed.
    pub orig_dev_id: BlkSnapDev,
    /// Positive errno.
    pub err_code: i32,
}

// The header asserts the page size of the event; the CBT entry size is the
// other easy-to-miss one. Either failing means the host's layout rules are
// not x86-64's, and every offset below would be wrong.
const _: () = assert!(size_of::<BlkSnapSnapshotEvent>() == 4096);
const _: () = assert!(size_of::<BlkSnapCbtInfo>() == 48);
// Both payloads fit in `data`, which is why the -ENOSPC overflow path of
// WAIT_EVENT (B-CTRL-3) cannot be reached.
const _: () = assert!(size_of::<BlkSnapEventLowFreeSpace>() <= EVENT_DATA_SIZE);
const _: () = assert!(size_of::<BlkSnapEventCorrupted>() <= EVENT_DATA_SIZE);

// ---------------------------------------------------------------------------
// Encoding without unsafe
// ---------------------------------------------------------------------------

/// One C structure of the uapi: its name, size, and a safe byte codec.
pub trait UapiStruct: Sized {
    /// The C tag, e.g. `blk_snap_cbt_info`.
    const NAME: &'static str;
    /// `sizeof` the C structure, padding included.
    const SIZE: usize = size_of::<Self>();

    /// Reads the structure from the first [`Self::SIZE`] bytes (little-endian,
    /// padding ignored). `None` if fewer bytes are given.
    fn decode(bytes: &[u8]) -> Option<Self>;

    /// Exactly [`Self::SIZE`] bytes, with every padding byte zero.
    fn encode(&self) -> Vec<u8>;

    /// Size, alignment and field offsets, as the compiler laid them out.
    fn layout() -> StructLayout;
}

/// A field type that knows its own little-endian bytes. Private: the set of
/// field types is closed.
trait Wire: Sized {
    /// `None` if `bytes` ends before the field does.
    fn read(bytes: &[u8], off: usize) -> Option<Self>;
    /// `buf` must cover the field (the callers allocate `SIZE` bytes).
    fn write(&self, buf: &mut [u8], off: usize);
}

macro_rules! wire_int {
    ($($t:ty),+) => {$(
        impl Wire for $t {
            fn read(bytes: &[u8], off: usize) -> Option<Self> {
                let raw = bytes.get(off..off + size_of::<Self>())?;
                Some(Self::from_le_bytes(raw.try_into().ok()?))
            }

            fn write(&self, buf: &mut [u8], off: usize) {
                buf[off..off + size_of::<Self>()].copy_from_slice(&self.to_le_bytes());
            }
        }
    )+};
}

wire_int!(u8, u16, u32, u64, i32, i64);

impl<const N: usize> Wire for [u8; N] {
    fn read(bytes: &[u8], off: usize) -> Option<Self> {
        bytes.get(off..off + N)?.try_into().ok()
    }

    fn write(&self, buf: &mut [u8], off: usize) {
        buf[off..off + N].copy_from_slice(self);
    }
}

/// Structures used as fields of other structures reuse their own codec.
macro_rules! wire_nested {
    ($($t:ty),+) => {$(
        impl Wire for $t {
            fn read(bytes: &[u8], off: usize) -> Option<Self> {
                Self::decode(bytes.get(off..)?)
            }

            fn write(&self, buf: &mut [u8], off: usize) {
                buf[off..off + Self::SIZE].copy_from_slice(&self.encode());
            }
        }
    )+};
}

wire_nested!(BlkSnapDev, BlkSnapUuid);

/// Size of the field a projection closure points at, without needing a value.
fn field_size<S, F>(_project: impl Fn(&S) -> &F) -> usize {
    size_of::<F>()
}

/// Implements [`UapiStruct`] from a field list. `decode` builds the struct
/// with a literal, so a field missing from the list does not compile.
macro_rules! uapi_struct {
    ($t:ident, $cname:literal, [$($field:ident),+ $(,)?]) => {
        impl UapiStruct for $t {
            const NAME: &'static str = $cname;

            fn decode(bytes: &[u8]) -> Option<Self> {
                if bytes.len() < Self::SIZE {
                    return None;
                }
                Some(Self {
                    $($field: Wire::read(bytes, offset_of!($t, $field))?,)+
                })
            }

            fn encode(&self) -> Vec<u8> {
                let mut buf = vec![0; Self::SIZE];
                $(self.$field.write(&mut buf, offset_of!($t, $field));)+
                buf
            }

            fn layout() -> StructLayout {
                StructLayout {
                    name: Self::NAME,
                    size: Self::SIZE,
                    align: align_of::<Self>(),
                    fields: vec![$(FieldLayout {
                        name: stringify!($field),
                        offset: offset_of!($t, $field),
                        size: field_size(|s: &$t| &s.$field),
                    },)+],
                }
            }
        }
    };
}

uapi_struct!(
    BlkSnapVersion,
    "blk_snap_version",
    [major, minor, revision, build]
);
uapi_struct!(BlkSnapDev, "blk_snap_dev", [mj, mn]);
uapi_struct!(BlkSnapTrackerRemove, "blk_snap_tracker_remove", [dev_id]);
uapi_struct!(BlkSnapUuid, "blk_snap_uuid", [b]);
uapi_struct!(
    BlkSnapCbtInfo,
    "blk_snap_cbt_info",
    [
        dev_id,
        blk_size,
        device_capacity,
        blk_count,
        generation_id,
        snap_number
    ]
);
uapi_struct!(
    BlkSnapTrackerCollect,
    "blk_snap_tracker_collect",
    [count, cbt_info_array]
);
uapi_struct!(
    BlkSnapTrackerReadCbtBitmap,
    "blk_snap_tracker_read_cbt_bitmap",
    [dev_id, offset, length, buff]
);
uapi_struct!(
    BlkSnapBlockRange,
    "blk_snap_block_range",
    [sector_offset, sector_count]
);
uapi_struct!(
    BlkSnapTrackerMarkDirtyBlocks,
    "blk_snap_tracker_mark_dirty_blocks",
    [dev_id, count, dirty_blocks_array]
);
uapi_struct!(
    BlkSnapSnapshotCreate,
    "blk_snap_snapshot_create",
    [count, dev_id_array, id]
);
uapi_struct!(BlkSnapSnapshotDestroy, "blk_snap_snapshot_destroy", [id]);
uapi_struct!(
    BlkSnapSnapshotAppendStorage,
    "blk_snap_snapshot_append_storage",
    [id, dev_id, count, ranges]
);
uapi_struct!(BlkSnapSnapshotTake, "blk_snap_snapshot_take", [id]);
uapi_struct!(
    BlkSnapSnapshotCollect,
    "blk_snap_snapshot_collect",
    [count, ids]
);
uapi_struct!(
    BlkSnapImageInfo,
    "blk_snap_image_info",
    [orig_dev_id, image_dev_id]
);
uapi_struct!(
    BlkSnapSnapshotCollectImages,
    "blk_snap_snapshot_collect_images",
    [id, count, image_info_array]
);
uapi_struct!(
    BlkSnapSnapshotEvent,
    "blk_snap_snapshot_event",
    [id, timeout_ms, code, time_label, data]
);
uapi_struct!(
    BlkSnapEventLowFreeSpace,
    "blk_snap_event_low_free_space",
    [requested_nr_sect]
);
uapi_struct!(
    BlkSnapEventCorrupted,
    "blk_snap_event_corrupted",
    [orig_dev_id, err_code]
);

// ---------------------------------------------------------------------------
// Layout report (`blksnap-sim abi`)
// ---------------------------------------------------------------------------

/// One field: offset and size in bytes. A nested structure is one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLayout {
    /// Field name as in the C header.
    pub name: &'static str,
    /// Byte offset in the structure.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// One structure: C name, `sizeof`, `alignof`, and its fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructLayout {
    /// C structure tag.
    pub name: &'static str,
    /// `sizeof`, padding included.
    pub size: usize,
    /// `alignof`.
    pub align: usize,
    /// Fields in declaration order.
    pub fields: Vec<FieldLayout>,
}

impl fmt::Display for FieldLayout {
    /// `name off=N size=N`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} off={} size={}", self.name, self.offset, self.size)
    }
}

impl fmt::Display for StructLayout {
    /// A header line, then one line per field indented two spaces; every
    /// line ends with a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "struct {} size={} align={}",
            self.name, self.size, self.align
        )?;
        self.fields
            .iter()
            .try_for_each(|field| writeln!(f, "  {field}"))
    }
}

/// The layout of all 19 structures, in the order of spec §1.3.
pub fn struct_layouts() -> Vec<StructLayout> {
    vec![
        BlkSnapVersion::layout(),
        BlkSnapDev::layout(),
        BlkSnapTrackerRemove::layout(),
        BlkSnapUuid::layout(),
        BlkSnapCbtInfo::layout(),
        BlkSnapTrackerCollect::layout(),
        BlkSnapTrackerReadCbtBitmap::layout(),
        BlkSnapBlockRange::layout(),
        BlkSnapTrackerMarkDirtyBlocks::layout(),
        BlkSnapSnapshotCreate::layout(),
        BlkSnapSnapshotDestroy::layout(),
        BlkSnapSnapshotAppendStorage::layout(),
        BlkSnapSnapshotTake::layout(),
        BlkSnapSnapshotCollect::layout(),
        BlkSnapImageInfo::layout(),
        BlkSnapSnapshotCollectImages::layout(),
        BlkSnapSnapshotEvent::layout(),
        BlkSnapEventLowFreeSpace::layout(),
        BlkSnapEventCorrupted::layout(),
    ]
}

/// The text of `blksnap-sim abi`: one `NAME 0x%08x` line per ioctl, then
/// each structure as [`StructLayout`]'s `Display` prints it.
pub fn render_abi() -> String {
    let ioctls = IOCTLS
        .iter()
        .map(|(name, cmd)| format!("{name} {cmd:#010x}\n"));
    let structs = struct_layouts()
        .into_iter()
        .map(|layout| layout.to_string());
    ioctls.chain(structs).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §1.2: (name, nr, dir, size, value).
    #[rustfmt::skip]
    const SPEC_IOCTLS: [(&str, u32, u32, u32, u32); 12] = [
        ("IOCTL_BLK_SNAP_VERSION",                   0, IOC_WRITE,    8, 0x4008_5600),
        ("IOCTL_BLK_SNAP_TRACKER_REMOVE",            1, IOC_WRITE,    8, 0x4008_5601),
        ("IOCTL_BLK_SNAP_TRACKER_COLLECT",           2, IOC_WRITE,   16, 0x4010_5602),
        ("IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP",      3, IOC_READ,    24, 0x8018_5603),
        ("IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS", 4, IOC_READ,    24, 0x8018_5604),
        ("IOCTL_BLK_SNAP_SNAPSHOT_CREATE",           5, IOC_WRITE,   32, 0x4020_5605),
        ("IOCTL_BLK_SNAP_SNAPSHOT_DESTROY",          6, IOC_READ,    16, 0x8010_5606),
        ("IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE",   7, IOC_WRITE,   40, 0x4028_5607),
        ("IOCTL_BLK_SNAP_SNAPSHOT_TAKE",             8, IOC_READ,    16, 0x8010_5608),
        ("IOCTL_BLK_SNAP_SNAPSHOT_COLLECT",          9, IOC_WRITE,   16, 0x4010_5609),
        ("IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES",  10, IOC_WRITE,   32, 0x4020_560a),
        ("IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT",      11, IOC_WRITE, 4096, 0x5000_560b),
    ];

    type SpecStruct = (
        &'static str,
        usize,
        usize,
        &'static [(&'static str, usize, usize)],
    );

    /// Spec §1.3: (name, size, align, [(field, offset, size)]). Padding is
    /// not a field; it shows as gaps between offsets.
    #[rustfmt::skip]
    const SPEC_STRUCTS: [SpecStruct; 19] = [
        ("blk_snap_version", 8, 2,
            &[("major", 0, 2), ("minor", 2, 2), ("revision", 4, 2), ("build", 6, 2)]),
        ("blk_snap_dev", 8, 4,
            &[("mj", 0, 4), ("mn", 4, 4)]),
        ("blk_snap_tracker_remove", 8, 4,
            &[("dev_id", 0, 8)]),
        ("blk_snap_uuid", 16, 1,
            &[("b", 0, 16)]),
        ("blk_snap_cbt_info", 48, 8,
            &[("dev_id", 0, 8), ("blk_size", 8, 4), ("device_capacity", 16, 8),
              ("blk_count", 24, 4), ("generation_id", 28, 16), ("snap_number", 44, 1)]),
        ("blk_snap_tracker_collect", 16, 8,
            &[("count", 0, 4), ("cbt_info_array", 8, 8)]),
        ("blk_snap_tracker_read_cbt_bitmap", 24, 8,
            &[("dev_id", 0, 8), ("offset", 8, 4), ("length", 12, 4), ("buff", 16, 8)]),
        ("blk_snap_block_range", 16, 8,
            &[("sector_offset", 0, 8), ("sector_count", 8, 8)]),
        ("blk_snap_tracker_mark_dirty_blocks", 24, 8,
            &[("dev_id", 0, 8), ("count", 8, 4), ("dirty_blocks_array", 16, 8)]),
        ("blk_snap_snapshot_create", 32, 8,
            &[("count", 0, 4), ("dev_id_array", 8, 8), ("id", 16, 16)]),
        ("blk_snap_snapshot_destroy", 16, 1,
            &[("id", 0, 16)]),
        ("blk_snap_snapshot_append_storage", 40, 8,
            &[("id", 0, 16), ("dev_id", 16, 8), ("count", 24, 4), ("ranges", 32, 8)]),
        ("blk_snap_snapshot_take", 16, 1,
            &[("id", 0, 16)]),
        ("blk_snap_snapshot_collect", 16, 8,
            &[("count", 0, 4), ("ids", 8, 8)]),
        ("blk_snap_image_info", 16, 4,
            &[("orig_dev_id", 0, 8), ("image_dev_id", 8, 8)]),
        ("blk_snap_snapshot_collect_images", 32, 8,
            &[("id", 0, 16), ("count", 16, 4), ("image_info_array", 24, 8)]),
        ("blk_snap_snapshot_event", 4096, 8,
            &[("id", 0, 16), ("timeout_ms", 16, 4), ("code", 20, 4), ("time_label", 24, 8),
              ("data", 32, 4064)]),
        ("blk_snap_event_low_free_space", 8, 8,
            &[("requested_nr_sect", 0, 8)]),
        ("blk_snap_event_corrupted", 12, 4,
            &[("orig_dev_id", 0, 8), ("err_code", 8, 4)]),
    ];

    #[test]
    fn constants_match_spec() {
        assert_eq!(BLK_SNAP, 0x56);
        assert_eq!(BLK_SNAP_CTL, "/dev/blksnap");
        assert_eq!(BLK_SNAP_IMAGE_NAME, "blksnap-image");
        assert_eq!(MODULE_VERSION.to_string(), "1.0.0.0");
        assert_eq!((EVENT_LOW_FREE_SPACE, EVENT_CORRUPTED), (0, 1));
        assert_eq!(EVENT_DATA_SIZE, 4064);
    }

    #[test]
    fn struct_layouts_match_spec() {
        let layouts = struct_layouts();
        assert_eq!(layouts.len(), SPEC_STRUCTS.len());
        for (got, &(name, size, align, fields)) in layouts.iter().zip(&SPEC_STRUCTS) {
            assert_eq!(
                (got.name, got.size, got.align),
                (name, size, align),
                "{name}"
            );
            let got_fields: Vec<_> = got
                .fields
                .iter()
                .map(|f| (f.name, f.offset, f.size))
                .collect();
            assert_eq!(got_fields, fields, "{name}");
        }
    }

    #[test]
    fn ioctl_numbers_match_spec() {
        for (i, (&(name, cmd), &(spec_name, nr, dir, size, value))) in
            IOCTLS.iter().zip(&SPEC_IOCTLS).enumerate()
        {
            assert_eq!((name, cmd), (spec_name, value), "{name}");
            assert_eq!(ioc_nr(cmd), nr);
            assert_eq!(nr, i as u32);
            assert_eq!((ioc_dir(cmd), ioc_size(cmd)), (dir, size), "{name}");
            assert_eq!(ioc_type(cmd), u32::from(BLK_SNAP));
        }
    }

    #[test]
    fn ioctl_nr_enum_matches_table() {
        for (i, nr) in IoctlNr::ALL.into_iter().enumerate() {
            assert_eq!(nr as usize, i);
            assert_eq!(IoctlNr::from_nr(i as u32), Some(nr));
            assert_eq!(ioc_nr(nr.cmd()), i as u32);
            assert_eq!(nr.name(), IOCTLS[i].0);
        }
        assert_eq!(IoctlNr::from_nr(12), None);
        assert_eq!(IoctlNr::from_nr(u32::MAX), None);
    }

    #[test]
    fn ioc_nr_ignores_magic_and_direction() {
        assert_eq!(ioc_nr(ioc(IOC_NONE, b'X', 7, 0)), 7);
        assert_eq!(ioc_nr(0xffff_ff0b), 11);
    }

    /// Encodes, checks the size, and decodes back to the same value; also
    /// checks that one byte less is refused.
    fn round_trip<T: UapiStruct + PartialEq + fmt::Debug>(value: T) {
        let bytes = value.encode();
        assert_eq!(bytes.len(), T::SIZE, "{}", T::NAME);
        assert_eq!(T::decode(&bytes).as_ref(), Some(&value), "{}", T::NAME);
        assert!(T::decode(&bytes[..T::SIZE - 1]).is_none(), "{}", T::NAME);
        assert!(T::decode(&[]).is_none(), "{}", T::NAME);
    }

    fn dev(mj: u32, mn: u32) -> BlkSnapDev {
        BlkSnapDev { mj, mn }
    }

    fn uuid(seed: u8) -> BlkSnapUuid {
        BlkSnapUuid {
            b: core::array::from_fn(|i| seed.wrapping_add(i as u8)),
        }
    }

    #[test]
    fn round_trips() {
        round_trip(BlkSnapVersion {
            major: 1,
            minor: 0x0203,
            revision: 0x0405,
            build: 0xfffe,
        });
        round_trip(dev(8, 0x0010_0001));
        round_trip(BlkSnapTrackerRemove {
            dev_id: dev(253, 3),
        });
        round_trip(uuid(0xa0));
        round_trip(BlkSnapCbtInfo {
            dev_id: dev(8, 16),
            blk_size: 0x4_0000,
            device_capacity: 0x0123_4567_89ab_cdef,
            blk_count: 0xdead_beef,
            generation_id: uuid(0x10),
            snap_number: 0xfe,
        });
        round_trip(BlkSnapTrackerCollect {
            count: 3,
            cbt_info_array: 0x7fff_0000_1000,
        });
        round_trip(BlkSnapTrackerReadCbtBitmap {
            dev_id: dev(8, 1),
            offset: 4096,
            length: 512,
            buff: u64::MAX,
        });
        round_trip(BlkSnapBlockRange {
            sector_offset: 1 << 40,
            sector_count: 8,
        });
        round_trip(BlkSnapTrackerMarkDirtyBlocks {
            dev_id: dev(8, 2),
            count: u32::MAX,
            dirty_blocks_array: 0x1000,
        });
        round_trip(BlkSnapSnapshotCreate {
            count: 2,
            dev_id_array: 0x2000,
            id: uuid(1),
        });
        round_trip(BlkSnapSnapshotDestroy { id: uuid(2) });
        round_trip(BlkSnapSnapshotAppendStorage {
            id: uuid(3),
            dev_id: dev(7, 0),
            count: 4,
            ranges: 0x3000,
        });
        round_trip(BlkSnapSnapshotTake { id: uuid(4) });
        round_trip(BlkSnapSnapshotCollect {
            count: 5,
            ids: 0x4000,
        });
        round_trip(BlkSnapImageInfo {
            orig_dev_id: dev(8, 0),
            image_dev_id: dev(252, 0),
        });
        round_trip(BlkSnapSnapshotCollectImages {
            id: uuid(5),
            count: 1,
            image_info_array: 0x5000,
        });
        round_trip(BlkSnapSnapshotEvent {
            id: uuid(6),
            timeout_ms: 1000,
            code: EVENT_CORRUPTED,
            time_label: -2,
            data: core::array::from_fn(|i| (i % 251) as u8),
        });
        round_trip(BlkSnapEventLowFreeSpace {
            requested_nr_sect: 2 * 1024 * 1024,
        });
        round_trip(BlkSnapEventCorrupted {
            orig_dev_id: dev(8, 0),
            err_code: -5,
        });
    }

    #[test]
    fn encode_is_little_endian_with_zero_padding() {
        let info = BlkSnapCbtInfo {
            dev_id: dev(0x0102_0304, 5),
            blk_size: 0x1122_3344,
            device_capacity: 0x0102_0304_0506_0708,
            blk_count: 9,
            generation_id: uuid(0x80),
            snap_number: 0x77,
        };
        let bytes = info.encode();
        assert_eq!(bytes[0..4], [4, 3, 2, 1]);
        assert_eq!(bytes[8..12], [0x44, 0x33, 0x22, 0x11]);
        assert_eq!(bytes[12..16], [0; 4]);
        assert_eq!(bytes[16..24], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(bytes[28..44], uuid(0x80).b);
        assert_eq!(bytes[44], 0x77);
        assert_eq!(bytes[45..48], [0; 3]);
    }

    #[test]
    fn decode_ignores_padding_and_trailing_bytes() {
        let mut bytes = vec![0xff; BlkSnapTrackerCollect::SIZE + 8];
        bytes[..4].copy_from_slice(&7u32.to_le_bytes());
        let collect = BlkSnapTrackerCollect::decode(&bytes).unwrap();
        assert_eq!(
            collect,
            BlkSnapTrackerCollect {
                count: 7,
                cbt_info_array: u64::MAX
            }
        );
        assert_eq!(collect.encode()[4..8], [0; 4]);
    }

    #[test]
    fn event_payloads_fit_in_data() {
        let corrupted = BlkSnapEventCorrupted {
            orig_dev_id: dev(8, 0),
            err_code: 5,
        };
        let mut event = BlkSnapSnapshotEvent {
            code: EVENT_CORRUPTED,
            ..Default::default()
        };
        event.data[..BlkSnapEventCorrupted::SIZE].copy_from_slice(&corrupted.encode());
        assert_eq!(BlkSnapEventCorrupted::decode(&event.data), Some(corrupted));
    }

    /// `encode_with` is `encode` of the struct with the same fields, for
    /// payloads from empty to a full page, and refuses one byte more.
    #[test]
    fn event_encode_with_is_encode() {
        for len in [0, 1, 8, 12, 100, EVENT_DATA_SIZE] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251 + 1) as u8).collect();
            let mut event = BlkSnapSnapshotEvent {
                id: BlkSnapUuid { b: [7; 16] },
                timeout_ms: 9,
                code: EVENT_CORRUPTED,
                time_label: -3,
                ..Default::default()
            };
            event.data[..len].copy_from_slice(&data);
            let with = BlkSnapSnapshotEvent::encode_with(event.id, 9, EVENT_CORRUPTED, -3, &data);
            assert_eq!(with, Some(event.encode()), "payload of {len} bytes");
        }
        let over = vec![1; EVENT_DATA_SIZE + 1];
        let with = BlkSnapSnapshotEvent::encode_with(BlkSnapUuid::default(), 0, 0, 0, &over);
        assert_eq!(with, None);
    }

    #[test]
    fn render_abi_format() {
        let text = render_abi();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "IOCTL_BLK_SNAP_VERSION 0x40085600");
        assert_eq!(lines[11], "IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT 0x5000560b");
        assert_eq!(lines[12], "struct blk_snap_version size=8 align=2");
        assert_eq!(lines[13], "  major off=0 size=2");
        assert!(text.contains(
            "struct blk_snap_cbt_info size=48 align=8\n  dev_id off=0 size=8\n  blk_size off=8 size=4\n"
        ));
        assert!(text.contains("\n  generation_id off=28 size=16\n"));
        let field_lines: usize = SPEC_STRUCTS.iter().map(|s| s.3.len()).sum();
        assert_eq!(lines.len(), 12 + 19 + field_lines);
        assert!(text.ends_with("  err_code off=8 size=4\n"));
    }
}
