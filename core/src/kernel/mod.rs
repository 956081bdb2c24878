//! The kernel boundary: everything the engine needs from "Linux".
//!
//! The engine never does IO, reads a clock, draws a random number or starts
//! a thread by itself. It asks the host through [`Kernel`]. The host in this
//! repository is the simulated kernel of `blksnap-sim`; another host (a real
//! kernel shim, a userspace block device) could run the same engine.
//!
//! Concurrency model: engine code is `async`. Every place where the C code
//! can sleep is an `.await` on a future defined here ([`Completion`],
//! [`preempt`], the locks of [`sync`]). The host polls the engine's tasks on
//! a single thread and decides at each of those points who runs next. Work
//! items and kthreads are tasks the engine spawns through [`Kernel::spawn`].

mod completion;
mod kref;
mod stamps;
pub mod sync;
#[cfg(test)]
pub mod testing;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Waker;

pub use completion::{completion, preempt, Completer, Completion, Yield};
pub use kref::Kref;
pub use stamps::{Run, Stamps};

/// A boxed, single-threaded future, as tasks and filter callbacks return.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A kernel errno, positive. Engine functions return `Result<T, Errno>` and
/// the ioctl layer turns it into the negative value user space sees.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(1);
    pub const ENOENT: Errno = Errno(2);
    pub const ESRCH: Errno = Errno(3);
    pub const EINTR: Errno = Errno(4);
    pub const EIO: Errno = Errno(5);
    pub const ENXIO: Errno = Errno(6);
    pub const EAGAIN: Errno = Errno(11);
    pub const ENOMEM: Errno = Errno(12);
    pub const EFAULT: Errno = Errno(14);
    pub const EBUSY: Errno = Errno(16);
    pub const ENODEV: Errno = Errno(19);
    pub const EINVAL: Errno = Errno(22);
    pub const ENOTTY: Errno = Errno(25);
    pub const ENOSPC: Errno = Errno(28);
    pub const ENODATA: Errno = Errno(61);
    pub const EOPNOTSUPP: Errno = Errno(95);
    pub const ENOBUFS: Errno = Errno(105);
    pub const EALREADY: Errno = Errno(114);

    /// The symbolic name, for traces and messages.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            3 => "ESRCH",
            4 => "EINTR",
            5 => "EIO",
            6 => "ENXIO",
            11 => "EAGAIN",
            12 => "ENOMEM",
            14 => "EFAULT",
            16 => "EBUSY",
            19 => "ENODEV",
            22 => "EINVAL",
            25 => "ENOTTY",
            28 => "ENOSPC",
            61 => "ENODATA",
            95 => "EOPNOTSUPP",
            105 => "ENOBUFS",
            114 => "EALREADY",
            _ => "E?",
        }
    }

    /// Look an errno up by its symbolic name (scenario files use names).
    pub fn from_name(name: &str) -> Option<Errno> {
        (1..=200).map(Errno).find(|e| e.name() == name)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

/// A device number in the kernel encoding: major << 20 | minor.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct DevT(pub u32);

impl DevT {
    pub const MINOR_BITS: u32 = 20;

    /// `MKDEV`: no mask, as the kernel macro. A minor of 2^20 or more
    /// spills into the major; major bits past 12 are shifted out.
    pub fn new(major: u32, minor: u32) -> DevT {
        DevT(major.wrapping_shl(Self::MINOR_BITS) | minor)
    }

    pub fn major(self) -> u32 {
        self.0 >> Self::MINOR_BITS
    }

    pub fn minor(self) -> u32 {
        self.0 & ((1 << Self::MINOR_BITS) - 1)
    }
}

impl fmt::Display for DevT {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major(), self.minor())
    }
}

/// The content of one 512-byte sector, modelled as a 64-bit stamp.
///
/// The engine only moves sector contents around (COW copies, image reads),
/// it never looks inside, so a stamp that names "which write put this here"
/// is as good as 512 bytes for every check and costs 64 times less. 0 is a
/// sector that was never written (it reads as zeros).
pub type Stamp = u64;

/// Sector size in bytes; every count in the engine is in sectors.
pub const SECTOR_SIZE: u64 = 512;
pub const SECTOR_SHIFT: u32 = 9;
/// Sectors in a 4 KiB page.
pub const PAGE_SECTORS: u64 = 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BioOp {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl BioOp {
    /// `op_is_write`: everything that changes the medium.
    pub fn is_write(self) -> bool {
        !matches!(self, BioOp::Read)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BioFlags {
    pub sync: bool,
    pub fua: bool,
    pub preflush: bool,
    /// `REQ_NOWAIT`: the submitter must not be made to sleep.
    pub nowait: bool,
    /// `BIO_FILTERED`: the filter already saw it (or the engine issued it).
    pub filtered: bool,
}

/// A block IO request. `data` holds one stamp per sector for a write (as
/// runs, see [`Stamps`]) and is empty for a read; a read returns its stamps
/// in [`BioResult`].
#[derive(Clone, Debug)]
pub struct Bio {
    pub dev: DevT,
    pub op: BioOp,
    pub sector: u64,
    pub sectors: u64,
    pub data: Stamps,
    pub flags: BioFlags,
}

impl Bio {
    pub fn read(dev: DevT, sector: u64, sectors: u64) -> Bio {
        Bio {
            dev,
            op: BioOp::Read,
            sector,
            sectors,
            data: Stamps::new(),
            flags: BioFlags::default(),
        }
    }

    pub fn write(dev: DevT, sector: u64, data: impl Into<Stamps>) -> Bio {
        let data = data.into();
        Bio {
            dev,
            op: BioOp::Write,
            sector,
            sectors: data.len(),
            data,
            flags: BioFlags::default(),
        }
    }
}

/// What a bio ends with: the data read (empty for writes) or an error.
pub type BioResult = Result<Stamps, Errno>;

/// What the filter callback decides about a bio (v2 `submit_bio_cb`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FilterVerdict {
    /// Let the bio go on to the device.
    Pass,
    /// The filter ends the bio itself with this error (the later, fixed API).
    Complete(Errno),
    /// v2 (B-TRK-2): the filter already ended the bio with this error and
    /// returned false, so the block core ends it a second time with OK.
    CompletedTwice(Errno),
}

/// The header of a bio as the filter sees it.
#[derive(Clone, Copy, Debug)]
pub struct BioHeader {
    pub op: BioOp,
    pub sector: u64,
    pub sectors: u64,
    pub flags: BioFlags,
}

/// The `bdev_filter` ops table of patch 02/21.
pub trait BdevFilter {
    /// Runs in the submitter's task, for every bio not yet `BIO_FILTERED`.
    fn submit_bio_cb(self: Rc<Self>, bio: BioHeader) -> LocalBoxFuture<'static, FilterVerdict>;
    /// The block layer dropped the attachment (detach, or the device went away).
    fn release(self: Rc<Self>);
    /// The filter as `Any`, so its owner can get its own type back from
    /// `bd_filter` (v2's `container_of`).
    fn into_any(self: Rc<Self>) -> Rc<dyn std::any::Any>;
}

/// A block device the engine provides: the snapshot image.
pub trait GenDisk {
    /// `fops->submit_bio`: the disk owns the bio until it completes `done`.
    fn submit_bio(&self, bio: Bio, done: Completer<BioResult>);
}

/// Allocation context (`gfp_t`), as far as the engine distinguishes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Gfp {
    /// May sleep and may start IO to reclaim memory.
    Kernel,
    /// May sleep, must not start IO.
    Noio,
    /// Must not sleep and must not start IO (`GFP_NOIO | GFP_NOWAIT`).
    NoioNowait,
}

impl Gfp {
    /// Whether an allocation of this class may sleep in reclaim (and so is
    /// a scheduling point): GFP_KERNEL and GFP_NOIO may, NOWAIT never.
    pub fn may_sleep(self) -> bool {
        !matches!(self, Gfp::NoioNowait)
    }
}

/// Handle of one accounted allocation, given back with [`Kernel::kfree`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct AllocId(pub u64);

/// Handle of one opened block device, given back with [`Kernel::bdev_close`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct BdevHandle {
    pub id: u64,
    pub dev: DevT,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct LockId(pub u64);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LockMode {
    Read,
    Write,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LockOp {
    /// About to wait for the lock (lockdep checks order here).
    Acquire,
    /// The lock is busy; the task sleeps.
    Contended,
    Acquired,
    /// `Acquire` then `Acquired` with nothing between them: the lock was
    /// free. One report for the two, as every uncontended acquisition
    /// makes them (a call less per lock taken on the write path); the
    /// host handles it exactly as the pair.
    Taken,
    /// A killable wait gave up.
    Abandoned,
    Release,
}

/// Where a spawned task runs, which decides its inherited flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TaskKind {
    /// A work item on `system_wq`.
    Work,
    /// A kernel thread; `noio` is `PF_MEMALLOC_NOIO` for its whole life.
    Kthread { noio: bool },
}

/// A task's name, kept as its parts: formatted (`Display`) only where it
/// is read (a hang or failure message, a listing, a full run's trace).
/// Most runs read none, and a spawn is on the write path (a chunk's
/// notify work, the cache release work), so it costs no formatting and
/// no allocation. Each prefix carries its own separator.
#[derive(Clone, Debug)]
pub enum TaskName {
    /// The name itself.
    Fixed(&'static str),
    /// `{prefix}{n}`: `blksnap-image0`.
    Numbered(&'static str, u64),
    /// `{prefix}{dev}`: `tracker_release 7:0`.
    Device(&'static str, DevT),
    /// `{prefix}{dev}#{chunk}`: `chunk_notify_load 7:0#12`.
    Chunk(&'static str, DevT, u64),
    /// Formatted by its caller (a rare spawn).
    Owned(String),
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskName::Fixed(name) => f.write_str(name),
            TaskName::Numbered(prefix, n) => write!(f, "{prefix}{n}"),
            TaskName::Device(prefix, dev) => write!(f, "{prefix}{dev}"),
            TaskName::Chunk(prefix, dev, chunk) => write!(f, "{prefix}{dev}#{chunk}"),
            TaskName::Owned(name) => f.write_str(name),
        }
    }
}

impl From<&'static str> for TaskName {
    fn from(name: &'static str) -> TaskName {
        TaskName::Fixed(name)
    }
}

impl From<String> for TaskName {
    fn from(name: String) -> TaskName {
        TaskName::Owned(name)
    }
}

/// Everything the engine asks of its host.
pub trait Kernel {
    // --- time, tasks, randomness -------------------------------------------
    /// Monotonic virtual time (`ktime_get`), nanoseconds.
    fn now_ns(&self) -> u64;
    /// Sleep for a span of virtual time.
    fn sleep(&self, ns: u64) -> Completion<()>;
    /// Start a task: a work item or a kthread.
    fn spawn(&self, kind: TaskKind, name: TaskName, task: LocalBoxFuture<'static, ()>);
    /// `fatal_signal_pending(current)`.
    fn fatal_signal_pending(&self) -> bool;
    /// A random version-4 UUID (`uuid_gen`).
    fn uuid_v4(&self) -> [u8; 16];
    /// A preemption point of the task `waker` wakes ([`preempt`], a lock's
    /// first poll). True if the host picked that task again at once and
    /// charged its next poll: the caller goes on as that poll, with no
    /// return through its chain of futures and no re-poll. False if
    /// anything else is to happen first: the task was woken (as by
    /// `waker`) and the caller returns `Pending`. The default always
    /// takes that path.
    fn preempt(&self, waker: &Waker) -> bool {
        waker.wake_by_ref();
        false
    }

    // --- reporting -----------------------------------------------------------
    /// `WARN`: the host treats it as a failed run (panic_on_warn).
    fn warn(&self, msg: &str);
    /// The engine is at a point where the C code may sleep (`might_sleep`),
    /// named by `site`. The host may count the sites reached; the yield
    /// itself is [`sleep_point`]'s. The default ignores it.
    fn might_sleep(&self, _site: &'static str) {}
    /// An allocation of class `gfp` at `site` that may sleep is about to be
    /// made: does it find free memory at once (None, the fast path: no
    /// sleep, as in C), or must it reclaim first (Some(ns): the virtual
    /// time the reclaim takes)? The host decides; GFP_NOIO reclaim must not
    /// start IO, so a host charges it less. The default always reclaims in
    /// no time: every such allocation is then a plain yield, which is what
    /// unit tests want to interleave at.
    fn alloc_slowpath(&self, _site: &'static str, _gfp: Gfp) -> Option<u64> {
        Some(0)
    }
    /// `pr_*`: diagnostics only, never judged.
    fn log(&self, msg: &str);

    // --- memory --------------------------------------------------------------
    /// An accounted allocation; may fail by fault injection.
    fn kmalloc(&self, site: &'static str, bytes: u64, gfp: Gfp) -> Result<AllocId, Errno>;
    fn kfree(&self, id: AllocId);
    /// `memalloc_noio_save`: returns the previous flag to restore.
    fn memalloc_noio_save(&self) -> bool;
    fn memalloc_noio_restore(&self, previous: bool);

    // --- locks ---------------------------------------------------------------
    fn lock_new(&self, class: &'static str) -> LockId;
    fn lock_event(&self, id: LockId, class: &'static str, op: LockOp, mode: LockMode);

    // --- block devices ---------------------------------------------------------
    /// `blkdev_get_by_dev`: fails with -ENXIO for a device that is not there.
    fn bdev_open(&self, dev: DevT) -> Result<BdevHandle, Errno>;
    fn bdev_close(&self, handle: BdevHandle);
    /// `bdev_nr_sectors`: current capacity, 0 if the device is gone.
    fn bdev_nr_sectors(&self, dev: DevT) -> u64;
    /// `bdev_io_min` in bytes.
    fn bdev_io_min(&self, dev: DevT) -> u32;
    /// Submit a bio. If the current task has a bio list open (it is inside a
    /// filter callback), the bio is only queued there, as the block core does
    /// with `current->bio_list`.
    fn submit_bio(&self, bio: Bio, done: Completer<BioResult>);
    /// Open `current->bio_list`.
    fn bio_list_begin(&self);
    /// Close `current->bio_list` and hand back what was queued on it.
    fn bio_list_end(&self) -> Vec<(Bio, Completer<BioResult>)>;
    /// `freeze_bdev`: syncs and freezes the file system on the device.
    fn freeze_bdev(&self, dev: DevT) -> Completion<Result<(), Errno>>;
    fn thaw_bdev(&self, dev: DevT) -> Completion<Result<(), Errno>>;

    // --- the block filter (patch 02/21) ----------------------------------------
    /// Freeze and quiesce the queue, install the filter (-EALREADY if one is
    /// there), unfreeze. The initial reference belongs to the attachment.
    fn filter_attach(&self, dev: DevT, filter: Rc<dyn BdevFilter>)
        -> Completion<Result<(), Errno>>;
    /// Remove the filter (-ENOENT if none) and drop the attachment.
    fn filter_detach(&self, dev: DevT) -> Completion<Result<(), Errno>>;
    /// `bd_filter` of the device, if any.
    fn filter_get(&self, dev: DevT) -> Option<Rc<dyn BdevFilter>>;

    // --- disks the engine provides ----------------------------------------------
    /// `register_blkdev(0, ..)`: the dynamic major for images.
    fn image_major(&self) -> u32;
    /// `add_disk`: make `dev` a block device served by `disk`.
    fn add_disk(
        &self,
        dev: DevT,
        name: String,
        capacity: u64,
        disk: Rc<dyn GenDisk>,
    ) -> Result<(), Errno>;
    /// `del_gendisk`: later IO to `dev` fails.
    fn del_gendisk(&self, dev: DevT);
}

/// Submit a bio and get the future of its end.
pub fn submit(kernel: &dyn Kernel, bio: Bio) -> Completion<BioResult> {
    let (completion, completer) = completion();
    kernel.submit_bio(bio, completer);
    completion
}

/// A point where the C code sleeps (reclaim, `thaw_bdev`, `add_disk`,
/// `blkdev_get_by_dev`, ...) and the port has no other await: report the
/// site to the host and yield, so the seeded scheduler decides who runs.
pub async fn sleep_point(kernel: &dyn Kernel, site: &'static str) {
    kernel.might_sleep(site);
    preempt(kernel).await;
}

/// `kmalloc` as the C calls it. An allocation whose class may sleep is a
/// sleeping point (`might_sleep` is reported every time, as the allocator
/// does), but it yields only when the host says the fast path found no
/// memory: then reclaim runs first, a yield plus the reclaim's virtual
/// time, and the allocation is tried after it. One that may not sleep
/// (`GFP_NOWAIT`) never yields.
pub async fn kmalloc(
    kernel: &dyn Kernel,
    site: &'static str,
    bytes: u64,
    gfp: Gfp,
) -> Result<AllocId, Errno> {
    if gfp.may_sleep() {
        kernel.might_sleep(site);
        if let Some(reclaim_ns) = kernel.alloc_slowpath(site, gfp) {
            preempt(kernel).await;
            if reclaim_ns > 0 {
                kernel.sleep(reclaim_ns).await;
            }
        }
    }
    kernel.kmalloc(site, bytes, gfp)
}

/// `blkdev_get_by_dev`: opening a device sleeps (the disk's open mutex).
/// `site` names the caller, so each open is a sleeping point of its own.
pub async fn blkdev_get(
    kernel: &dyn Kernel,
    site: &'static str,
    dev: DevT,
) -> Result<BdevHandle, Errno> {
    sleep_point(kernel, site).await;
    kernel.bdev_open(dev)
}

/// `blkdev_put`: closing one sleeps too (the same mutex, a sync on last close).
pub async fn blkdev_put(kernel: &dyn Kernel, site: &'static str, handle: BdevHandle) {
    sleep_point(kernel, site).await;
    kernel.bdev_close(handle);
}

/// Scope guard for `memalloc_noio_save`/`restore`, restored in order.
pub struct NoioScope<'a> {
    kernel: &'a dyn Kernel,
    previous: bool,
}

impl<'a> NoioScope<'a> {
    pub fn enter(kernel: &'a dyn Kernel) -> Self {
        let previous = kernel.memalloc_noio_save();
        NoioScope { kernel, previous }
    }
}

impl Drop for NoioScope<'_> {
    fn drop(&mut self) {
        self.kernel.memalloc_noio_restore(self.previous);
    }
}

/// The calling process's address space, as `copy_{from,to}_user` see it.
pub trait UserMemory {
    /// All `len` bytes at `addr`, or -EFAULT if any of them is not mapped.
    fn copy_from_user(&self, addr: u64, len: usize) -> Result<Vec<u8>, Errno>;
    /// Copy `data` to `addr`; on a fault, the number of bytes copied before it.
    fn copy_to_user(&self, addr: u64, data: &[u8]) -> Result<(), usize>;
}
