//! A minimal deterministic test host for the engine's unit tests.
//!
//! [`TestKernel`] implements [`Kernel`] with a virtual clock, in-memory
//! sparse devices, a filter map, a disk map, accounted allocations whose
//! named sites can be made to fail, recorded warnings and logs, counter
//! based uuids, and per-task `memalloc_noio` and `current->bio_list`.
//!
//! [`run`] is a tiny single-threaded executor: every round it polls the main
//! future, then every spawned task, then completes the bios submitted to the
//! in-memory devices. When nothing moved it advances virtual time to the
//! next timer. Simplicity beats fidelity: every task is re-polled each round
//! (the waker only records that something woke), and bios complete in
//! submission order at the end of the round that submitted them.
//!
//! The second half of the file holds what the ioctl-level tests share: a
//! small [`UserMemory`] ([`TestUser`]) and [`Ctl`], which encodes the uapi
//! structures and calls [`crate::ctrl::ioctl`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use super::{
    completion, AllocId, BdevFilter, BdevHandle, Bio, BioFlags, BioHeader, BioOp, BioResult,
    Completer, Completion, DevT, Errno, FilterVerdict, GenDisk, Gfp, Kernel, LocalBoxFuture,
    LockId, LockMode, LockOp, Stamp, Stamps, TaskKind, TaskName, UserMemory,
};
use crate::ctrl::{self, IoctlResult};
use crate::module::Module;
use crate::params::Params;
use crate::quirks::Quirks;
use crate::uapi::*;

/// The dynamic major the test host hands out for images.
pub const IMAGE_MAJOR: u32 = 252;
/// Rounds of [`run`] before it declares a hang.
pub const MAX_ROUNDS: u64 = 2_000_000;
/// Virtual time after which [`run`] declares a hang (one hour).
pub const MAX_VIRTUAL_NS: u64 = 3_600_000_000_000;
/// The task id of the main future of [`run`].
pub const MAIN_TASK: u64 = 0;

/// An original or storage device: sparse stamps, 0 = never written.
struct Device {
    capacity: u64,
    io_min: u32,
    data: BTreeMap<u64, Stamp>,
    fail_io: bool,
    freeze_fails: bool,
}

/// Planned failures at one allocation site.
#[derive(Clone, Copy)]
struct FailPlan {
    /// Allocations that still succeed before the first failure.
    skip: u64,
    /// Failures left after that (None: for ever).
    left: Option<u64>,
}

/// One task: the main future (id 0, no future kept here) or a spawned one.
struct Task {
    name: String,
    future: Option<LocalBoxFuture<'static, ()>>,
    noio: bool,
    bio_list: Option<Vec<(Bio, Completer<BioResult>)>>,
    killed: bool,
}

impl Task {
    fn new(name: String, future: Option<LocalBoxFuture<'static, ()>>, noio: bool) -> Task {
        Task {
            name,
            future,
            noio,
            bio_list: None,
            killed: false,
        }
    }
}

/// A bio as it reached an in-memory device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BioRecord {
    pub dev: DevT,
    pub op: BioOp,
    pub sector: u64,
    pub sectors: u64,
    pub flags: BioFlags,
}

/// An image disk the engine added.
#[derive(Clone)]
pub struct DiskRecord {
    pub name: String,
    pub capacity: u64,
    pub disk: Rc<dyn GenDisk>,
}

/// Records that some waker fired since the start of the round.
#[derive(Default)]
struct WakeFlag(AtomicBool);

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct TestKernel {
    now: Cell<u64>,
    timer_seq: Cell<u64>,
    timers: RefCell<BTreeMap<(u64, u64), Completer<()>>>,
    tasks: RefCell<BTreeMap<u64, Task>>,
    task_seq: Cell<u64>,
    current: Cell<u64>,
    devices: RefCell<BTreeMap<DevT, Device>>,
    bio_queue: RefCell<VecDeque<(Bio, Completer<BioResult>)>>,
    bios: RefCell<Vec<BioRecord>>,
    filters: RefCell<BTreeMap<DevT, Rc<dyn BdevFilter>>>,
    disks: RefCell<BTreeMap<DevT, DiskRecord>>,
    allocs: RefCell<BTreeMap<u64, (&'static str, u64)>>,
    alloc_seq: Cell<u64>,
    failing: RefCell<BTreeMap<String, FailPlan>>,
    opens: RefCell<BTreeMap<u64, DevT>>,
    open_seq: Cell<u64>,
    uuid_seq: Cell<u64>,
    lock_seq: Cell<u64>,
    contended: RefCell<BTreeMap<&'static str, u64>>,
    warns: RefCell<Vec<String>>,
    logs: RefCell<Vec<String>>,
    events: RefCell<Vec<String>>,
    /// "sleep TASK SITE" at each sleeping point and "alloc TASK SITE" at
    /// each allocation, in order: shows where tasks interleaved.
    sched_log: RefCell<Vec<String>>,
    double_completions: Cell<u64>,
    woken: Arc<WakeFlag>,
}

impl TestKernel {
    pub fn new() -> Rc<TestKernel> {
        let kernel = TestKernel::default();
        kernel
            .tasks
            .borrow_mut()
            .insert(MAIN_TASK, Task::new("main".to_string(), None, false));
        kernel.task_seq.set(MAIN_TASK + 1);
        Rc::new(kernel)
    }

    /// As the engine holds it.
    pub fn dyn_kernel(self: &Rc<Self>) -> Rc<dyn Kernel> {
        self.clone()
    }

    // --- devices ---------------------------------------------------------------

    /// A device of `capacity` sectors with a 512-byte minimal IO size.
    pub fn add_device(&self, dev: DevT, capacity: u64) {
        self.add_device_io_min(dev, capacity, 512);
    }

    pub fn add_device_io_min(&self, dev: DevT, capacity: u64, io_min: u32) {
        self.devices.borrow_mut().insert(
            dev,
            Device {
                capacity,
                io_min,
                data: BTreeMap::new(),
                fail_io: false,
                freeze_fails: false,
            },
        );
    }

    pub fn resize_device(&self, dev: DevT, capacity: u64) {
        if let Some(device) = self.devices.borrow_mut().get_mut(&dev) {
            device.capacity = capacity;
        }
    }

    /// Make every later bio to `dev` end with -EIO (or stop doing so).
    pub fn set_fail_io(&self, dev: DevT, fail: bool) {
        if let Some(device) = self.devices.borrow_mut().get_mut(&dev) {
            device.fail_io = fail;
        }
    }

    pub fn set_freeze_fails(&self, dev: DevT, fails: bool) {
        if let Some(device) = self.devices.borrow_mut().get_mut(&dev) {
            device.freeze_fails = fails;
        }
    }

    /// Write stamps straight to the medium, bypassing every filter.
    pub fn poke(&self, dev: DevT, sector: u64, stamps: &[Stamp]) {
        let mut devices = self.devices.borrow_mut();
        let device = devices.get_mut(&dev).expect("poke: no such device");
        for (i, &stamp) in stamps.iter().enumerate() {
            put_stamp(&mut device.data, sector + i as u64, stamp);
        }
    }

    /// Fill a range with `f(sector)`, bypassing every filter.
    pub fn fill(&self, dev: DevT, sector: u64, count: u64, f: impl Fn(u64) -> Stamp) {
        let stamps: Vec<Stamp> = (sector..sector + count).map(f).collect();
        self.poke(dev, sector, &stamps);
    }

    /// The medium's stamps, 0 where never written.
    pub fn peek(&self, dev: DevT, sector: u64, count: u64) -> Vec<Stamp> {
        let devices = self.devices.borrow();
        let device = devices.get(&dev).expect("peek: no such device");
        (sector..sector + count)
            .map(|s| device.data.get(&s).copied().unwrap_or(0))
            .collect()
    }

    /// Every bio that reached an in-memory device, in completion order.
    pub fn bios(&self) -> Vec<BioRecord> {
        self.bios.borrow().clone()
    }

    pub fn clear_bios(&self) {
        self.bios.borrow_mut().clear();
    }

    /// Handles still open, by device.
    pub fn open_bdevs(&self) -> Vec<DevT> {
        self.opens.borrow().values().copied().collect()
    }

    pub fn has_filter(&self, dev: DevT) -> bool {
        self.filters.borrow().contains_key(&dev)
    }

    pub fn disk(&self, dev: DevT) -> Option<DiskRecord> {
        self.disks.borrow().get(&dev).cloned()
    }

    pub fn disk_devs(&self) -> Vec<DevT> {
        self.disks.borrow().keys().copied().collect()
    }

    // --- memory ------------------------------------------------------------------

    /// Every allocation at `site` fails with -ENOMEM until [`Self::unfail_site`].
    pub fn fail_site(&self, site: &str) {
        self.plan_failure(site, 0, None);
    }

    /// The next `times` allocations at `site` fail.
    pub fn fail_site_times(&self, site: &str, times: u64) {
        self.plan_failure(site, 0, Some(times));
    }

    /// The `n`-th next allocation at `site` (1 = the next one) fails, once.
    pub fn fail_site_nth(&self, site: &str, n: u64) {
        assert!(n >= 1, "allocations are counted from 1");
        self.plan_failure(site, n - 1, Some(1));
    }

    /// From the `n`-th next allocation at `site` on (1 = the next one),
    /// every allocation there fails.
    pub fn fail_site_from(&self, site: &str, n: u64) {
        assert!(n >= 1, "allocations are counted from 1");
        self.plan_failure(site, n - 1, None);
    }

    fn plan_failure(&self, site: &str, skip: u64, left: Option<u64>) {
        self.failing
            .borrow_mut()
            .insert(site.to_string(), FailPlan { skip, left });
    }

    pub fn unfail_site(&self, site: &str) {
        self.failing.borrow_mut().remove(site);
    }

    /// Count one allocation at `site` against its plan: true if it fails.
    fn take_failure(&self, site: &str) -> bool {
        let mut failing = self.failing.borrow_mut();
        let Some(plan) = failing.get_mut(site) else {
            return false;
        };
        if plan.skip > 0 {
            plan.skip -= 1;
            return false;
        }
        match plan.left.as_mut() {
            None => true,
            Some(left) => {
                *left -= 1;
                if *left == 0 {
                    failing.remove(site);
                }
                true
            }
        }
    }

    /// Live allocations as (site, bytes), in allocation order.
    pub fn live_allocs(&self) -> Vec<(&'static str, u64)> {
        self.allocs.borrow().values().copied().collect()
    }

    pub fn live_bytes(&self) -> u64 {
        self.allocs.borrow().values().map(|(_, bytes)| bytes).sum()
    }

    // --- records -----------------------------------------------------------------

    pub fn warns(&self) -> Vec<String> {
        self.warns.borrow().clone()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.borrow().clone()
    }

    /// freeze/thaw/attach/detach/add_disk/del_gendisk, in order.
    pub fn events(&self) -> Vec<String> {
        self.events.borrow().clone()
    }

    /// Sleeping points and allocations, in the order tasks reached them.
    pub fn sched_log(&self) -> Vec<String> {
        self.sched_log.borrow().clone()
    }

    fn log_sched(&self, what: &str, site: &str) {
        let task = self.with_current(|t| t.name.clone()).unwrap_or_default();
        self.sched_log
            .borrow_mut()
            .push(format!("{what} {task} {site}"));
    }

    /// How many times a lock class was found busy.
    pub fn contended(&self, class: &str) -> u64 {
        self.contended.borrow().get(class).copied().unwrap_or(0)
    }

    /// Bios a filter ended twice (v2 B-TRK-2), seen by [`Self::user_bio`].
    pub fn double_completions(&self) -> u64 {
        self.double_completions.get()
    }

    // --- tasks and time ------------------------------------------------------------

    pub fn now(&self) -> u64 {
        self.now.get()
    }

    /// Names of the spawned tasks that have not finished.
    pub fn task_names(&self) -> Vec<String> {
        self.tasks
            .borrow()
            .iter()
            .filter(|(id, _)| **id != MAIN_TASK)
            .map(|(_, t)| t.name.clone())
            .collect()
    }

    /// Send a fatal signal to every task called `name` ("main" for [`run`]'s).
    pub fn kill(&self, name: &str) {
        for task in self.tasks.borrow_mut().values_mut() {
            if task.name == name {
                task.killed = true;
            }
        }
    }

    /// The current task's `memalloc_noio` flag.
    pub fn current_noio(&self) -> bool {
        self.with_current(|t| t.noio).unwrap_or(false)
    }

    /// Let every runnable task run, then 1 ms of virtual time pass.
    pub fn settle(&self) -> Completion<()> {
        self.sleep(1_000_000)
    }

    fn with_current<R>(&self, f: impl FnOnce(&mut Task) -> R) -> Option<R> {
        self.tasks.borrow_mut().get_mut(&self.current.get()).map(f)
    }

    /// Poll every spawned task once; true if one finished.
    fn poll_tasks(&self, cx: &mut Context<'_>) -> bool {
        let ids: Vec<u64> = self
            .tasks
            .borrow()
            .keys()
            .copied()
            .filter(|id| *id != MAIN_TASK)
            .collect();
        let mut finished = false;
        for id in ids {
            let future = self
                .tasks
                .borrow_mut()
                .get_mut(&id)
                .and_then(|t| t.future.take());
            let Some(mut future) = future else {
                continue;
            };
            self.current.set(id);
            let ready = future.as_mut().poll(cx).is_ready();
            self.current.set(MAIN_TASK);
            let mut tasks = self.tasks.borrow_mut();
            if ready {
                let task = tasks.remove(&id).expect("polled task exists");
                if task.bio_list.is_some() {
                    self.warns
                        .borrow_mut()
                        .push(format!("task {} ended with bio_list open", task.name));
                }
                finished = true;
            } else if let Some(task) = tasks.get_mut(&id) {
                task.future = Some(future);
            }
        }
        finished
    }

    /// Complete every queued device bio; true if there was one.
    fn complete_bios(&self) -> bool {
        let mut any = false;
        loop {
            let next = self.bio_queue.borrow_mut().pop_front();
            let Some((bio, done)) = next else {
                return any;
            };
            any = true;
            let result = self.do_io(&bio);
            self.bios.borrow_mut().push(BioRecord {
                dev: bio.dev,
                op: bio.op,
                sector: bio.sector,
                sectors: bio.sectors,
                flags: bio.flags,
            });
            done.complete(result);
        }
    }

    fn do_io(&self, bio: &Bio) -> BioResult {
        let mut devices = self.devices.borrow_mut();
        let device = devices.get_mut(&bio.dev).ok_or(Errno::EIO)?;
        if device.fail_io {
            return Err(Errno::EIO);
        }
        let end = bio.sector.checked_add(bio.sectors).ok_or(Errno::EIO)?;
        if end > device.capacity {
            return Err(Errno::EIO);
        }
        match bio.op {
            BioOp::Read => Ok((bio.sector..end)
                .map(|s| device.data.get(&s).copied().unwrap_or(0))
                .collect::<Stamps>()),
            BioOp::Write => {
                assert_eq!(
                    bio.data.len(),
                    bio.sectors,
                    "write bio with a wrong data length"
                );
                for (i, stamp) in bio.data.iter().enumerate() {
                    put_stamp(&mut device.data, bio.sector + i as u64, stamp);
                }
                Ok(Stamps::new())
            }
            BioOp::Flush => Ok(Stamps::new()),
            BioOp::Discard | BioOp::WriteZeroes => {
                for s in bio.sector..end {
                    device.data.remove(&s);
                }
                Ok(Stamps::new())
            }
        }
    }

    /// Fire the earliest timer; false if there is none.
    fn fire_next_timer(&self) -> bool {
        let next = self.timers.borrow_mut().pop_first();
        match next {
            Some(((at, _), done)) => {
                self.now.set(self.now.get().max(at));
                done.complete(());
                true
            }
            None => false,
        }
    }

    fn describe(&self) -> String {
        format!(
            "t={} ns, tasks {:?}, timers {}, queued bios {}",
            self.now.get(),
            self.task_names(),
            self.timers.borrow().len(),
            self.bio_queue.borrow().len()
        )
    }

    // --- the block layer for user IO -------------------------------------------------

    /// A user bio: through the device's filter (unless the bio is already
    /// `BIO_FILTERED`), then to the device or image disk.
    pub async fn user_bio(self: &Rc<Self>, bio: Bio) -> BioResult {
        if !bio.flags.filtered {
            if let Some(filter) = self.filter_get(bio.dev) {
                let header = BioHeader {
                    op: bio.op,
                    sector: bio.sector,
                    sectors: bio.sectors,
                    flags: bio.flags,
                };
                match filter.submit_bio_cb(header).await {
                    FilterVerdict::Pass => {}
                    FilterVerdict::Complete(e) => return Err(e),
                    FilterVerdict::CompletedTwice(e) => {
                        self.double_completions
                            .set(self.double_completions.get() + 1);
                        return Err(e);
                    }
                }
            }
        }
        let (done, completer) = completion();
        self.submit_bio(bio, completer);
        done.await
    }

    pub async fn user_write(
        self: &Rc<Self>,
        dev: DevT,
        sector: u64,
        data: Vec<Stamp>,
    ) -> BioResult {
        self.user_bio(Bio::write(dev, sector, data)).await
    }

    /// A user read, its data as a plain list for the tests to compare.
    pub async fn user_read(
        self: &Rc<Self>,
        dev: DevT,
        sector: u64,
        count: u64,
    ) -> Result<Vec<Stamp>, Errno> {
        self.user_bio(Bio::read(dev, sector, count))
            .await
            .map(|data| data.to_vec())
    }
}

fn put_stamp(data: &mut BTreeMap<u64, Stamp>, sector: u64, stamp: Stamp) {
    if stamp == 0 {
        data.remove(&sector);
    } else {
        data.insert(sector, stamp);
    }
}

/// Run `future` to its end on `kernel`, with every task it spawns and every
/// bio it submits. Panics on a hang: nothing can run and no timer is left,
/// or the round or virtual-time bound is reached.
pub fn run<T>(kernel: &Rc<TestKernel>, future: impl Future<Output = T>) -> T {
    let mut main = pin!(future);
    let waker = Waker::from(kernel.woken.clone());
    let mut cx = Context::from_waker(&waker);
    for _ in 0..MAX_ROUNDS {
        kernel.woken.0.store(false, Ordering::Relaxed);
        kernel.current.set(MAIN_TASK);
        if let Poll::Ready(value) = main.as_mut().poll(&mut cx) {
            return value;
        }
        let finished = kernel.poll_tasks(&mut cx);
        let completed = kernel.complete_bios();
        if finished || completed || kernel.woken.0.load(Ordering::Relaxed) {
            continue;
        }
        if !kernel.fire_next_timer() {
            panic!(
                "TestKernel::run: hang: the main future waits, nothing can run and no timer is left ({})",
                kernel.describe()
            );
        }
        if kernel.now.get() > MAX_VIRTUAL_NS {
            panic!(
                "TestKernel::run: hang: virtual time passed {MAX_VIRTUAL_NS} ns ({})",
                kernel.describe()
            );
        }
    }
    panic!(
        "TestKernel::run: hang: no end after {MAX_ROUNDS} rounds ({})",
        kernel.describe()
    );
}

impl Kernel for TestKernel {
    fn now_ns(&self) -> u64 {
        self.now.get()
    }

    fn sleep(&self, ns: u64) -> Completion<()> {
        let (sleep, done) = completion();
        let seq = self.timer_seq.get();
        self.timer_seq.set(seq + 1);
        let at = self.now.get().saturating_add(ns);
        self.timers.borrow_mut().insert((at, seq), done);
        sleep
    }

    /// Formats the name at once: the tests read names by `kill` and
    /// `task_names`, and speed is no matter here.
    fn spawn(&self, kind: TaskKind, name: TaskName, task: LocalBoxFuture<'static, ()>) {
        let id = self.task_seq.get();
        self.task_seq.set(id + 1);
        let noio = matches!(kind, TaskKind::Kthread { noio: true });
        self.tasks
            .borrow_mut()
            .insert(id, Task::new(name.to_string(), Some(task), noio));
        self.woken.0.store(true, Ordering::Relaxed);
    }

    fn fatal_signal_pending(&self) -> bool {
        self.with_current(|t| t.killed).unwrap_or(false)
    }

    fn uuid_v4(&self) -> [u8; 16] {
        let n = self.uuid_seq.get() + 1;
        self.uuid_seq.set(n);
        let mut uuid = [0u8; 16];
        uuid[0..4].copy_from_slice(b"test");
        uuid[8..16].copy_from_slice(&n.to_be_bytes());
        uuid[6] = 0x40;
        uuid[8] = 0x80 | (uuid[8] & 0x3f);
        uuid
    }

    fn warn(&self, msg: &str) {
        self.warns.borrow_mut().push(msg.to_string());
    }

    fn log(&self, msg: &str) {
        self.logs.borrow_mut().push(msg.to_string());
    }

    fn might_sleep(&self, site: &'static str) {
        self.log_sched("sleep", site);
    }

    fn kmalloc(&self, site: &'static str, bytes: u64, _gfp: Gfp) -> Result<AllocId, Errno> {
        self.log_sched("alloc", site);
        if self.take_failure(site) {
            return Err(Errno::ENOMEM);
        }
        let id = self.alloc_seq.get() + 1;
        self.alloc_seq.set(id);
        self.allocs.borrow_mut().insert(id, (site, bytes));
        Ok(AllocId(id))
    }

    fn kfree(&self, id: AllocId) {
        let freed = self.allocs.borrow_mut().remove(&id.0);
        assert!(
            freed.is_some(),
            "kfree of {id:?}: double free or bad pointer"
        );
    }

    fn memalloc_noio_save(&self) -> bool {
        self.with_current(|t| std::mem::replace(&mut t.noio, true))
            .unwrap_or(false)
    }

    fn memalloc_noio_restore(&self, previous: bool) {
        self.with_current(|t| t.noio = previous);
    }

    fn lock_new(&self, _class: &'static str) -> LockId {
        let id = self.lock_seq.get() + 1;
        self.lock_seq.set(id);
        LockId(id)
    }

    fn lock_event(&self, _id: LockId, class: &'static str, op: LockOp, _mode: LockMode) {
        if op == LockOp::Contended {
            *self.contended.borrow_mut().entry(class).or_insert(0) += 1;
        }
    }

    fn bdev_open(&self, dev: DevT) -> Result<BdevHandle, Errno> {
        if !self.devices.borrow().contains_key(&dev) {
            return Err(Errno::ENXIO);
        }
        let id = self.open_seq.get() + 1;
        self.open_seq.set(id);
        self.opens.borrow_mut().insert(id, dev);
        Ok(BdevHandle { id, dev })
    }

    fn bdev_close(&self, handle: BdevHandle) {
        let closed = self.opens.borrow_mut().remove(&handle.id);
        assert_eq!(
            closed,
            Some(handle.dev),
            "bdev_close of {handle:?}: not open"
        );
    }

    fn bdev_nr_sectors(&self, dev: DevT) -> u64 {
        self.devices.borrow().get(&dev).map_or(0, |d| d.capacity)
    }

    fn bdev_io_min(&self, dev: DevT) -> u32 {
        self.devices.borrow().get(&dev).map_or(512, |d| d.io_min)
    }

    fn submit_bio(&self, bio: Bio, done: Completer<BioResult>) {
        let mut pending = Some((bio, done));
        self.with_current(|t| {
            if let Some(list) = t.bio_list.as_mut() {
                list.extend(pending.take());
            }
        });
        let Some((bio, done)) = pending else {
            return;
        };
        let disk = self.disks.borrow().get(&bio.dev).map(|d| d.disk.clone());
        match disk {
            Some(disk) => disk.submit_bio(bio, done),
            None => self.bio_queue.borrow_mut().push_back((bio, done)),
        }
    }

    fn bio_list_begin(&self) {
        let was_open = self.with_current(|t| {
            let was_open = t.bio_list.is_some();
            t.bio_list.get_or_insert_with(Vec::new);
            was_open
        });
        if was_open == Some(true) {
            self.warn("current->bio_list opened twice");
        }
    }

    fn bio_list_end(&self) -> Vec<(Bio, Completer<BioResult>)> {
        self.with_current(|t| t.bio_list.take().unwrap_or_default())
            .unwrap_or_default()
    }

    fn freeze_bdev(&self, dev: DevT) -> Completion<Result<(), Errno>> {
        let fails = self
            .devices
            .borrow()
            .get(&dev)
            .is_none_or(|d| d.freeze_fails);
        self.events.borrow_mut().push(format!("freeze {dev}"));
        Completion::ready(if fails { Err(Errno::EBUSY) } else { Ok(()) })
    }

    fn thaw_bdev(&self, dev: DevT) -> Completion<Result<(), Errno>> {
        self.events.borrow_mut().push(format!("thaw {dev}"));
        Completion::ready(Ok(()))
    }

    fn filter_attach(
        &self,
        dev: DevT,
        filter: Rc<dyn BdevFilter>,
    ) -> Completion<Result<(), Errno>> {
        let mut filters = self.filters.borrow_mut();
        if filters.contains_key(&dev) {
            return Completion::ready(Err(Errno::EALREADY));
        }
        filters.insert(dev, filter);
        self.events.borrow_mut().push(format!("attach {dev}"));
        Completion::ready(Ok(()))
    }

    fn filter_detach(&self, dev: DevT) -> Completion<Result<(), Errno>> {
        let filter = self.filters.borrow_mut().remove(&dev);
        match filter {
            Some(filter) => {
                self.events.borrow_mut().push(format!("detach {dev}"));
                filter.release();
                Completion::ready(Ok(()))
            }
            None => Completion::ready(Err(Errno::ENOENT)),
        }
    }

    fn filter_get(&self, dev: DevT) -> Option<Rc<dyn BdevFilter>> {
        self.filters.borrow().get(&dev).cloned()
    }

    fn image_major(&self) -> u32 {
        IMAGE_MAJOR
    }

    fn add_disk(
        &self,
        dev: DevT,
        name: String,
        capacity: u64,
        disk: Rc<dyn GenDisk>,
    ) -> Result<(), Errno> {
        if self.take_failure("add_disk") {
            return Err(Errno::ENOMEM);
        }
        let mut disks = self.disks.borrow_mut();
        if disks.contains_key(&dev) {
            self.warn(&format!("add_disk of {dev} twice"));
            return Err(Errno::EBUSY);
        }
        self.events
            .borrow_mut()
            .push(format!("add_disk {name} {dev} {capacity}"));
        disks.insert(
            dev,
            DiskRecord {
                name,
                capacity,
                disk,
            },
        );
        Ok(())
    }

    fn del_gendisk(&self, dev: DevT) {
        if self.disks.borrow_mut().remove(&dev).is_none() {
            self.warn(&format!("del_gendisk of {dev} that is not a disk"));
        }
        self.events.borrow_mut().push(format!("del_gendisk {dev}"));
    }
}

// -----------------------------------------------------------------------------
// Shared by the module and ioctl tests
// -----------------------------------------------------------------------------

/// A device number of the original devices in the tests.
pub fn dev(minor: u32) -> DevT {
    DevT::new(8, minor)
}

/// Quirks with the given spec ids on.
pub fn quirks(ids: &[&str]) -> Quirks {
    let mut quirks = Quirks::default();
    for id in ids {
        quirks.enable(id).expect("known quirk");
    }
    quirks
}

/// Sectors in a MiB.
pub const MIB: u64 = 2048;

/// The stamp of an original sector in the standard setup.
pub fn orig(sector: u64) -> Stamp {
    1_000_000 + sector
}

/// The standard setup: two 64 MiB originals (`dev(0)`, `dev(1)`, their
/// first 4 MiB filled with `orig`), a 256 MiB storage device (`dev(16)`),
/// and the module loaded with these quirks.
pub fn setup(quirk_ids: &[&str]) -> (Rc<TestKernel>, Ctl) {
    let k = TestKernel::new();
    for d in [dev(0), dev(1)] {
        k.add_device(d, 64 * MIB);
        k.fill(d, 0, 4 * MIB, orig);
    }
    k.add_device(dev(16), 256 * MIB);
    let module = load(&k, Params::default(), quirks(quirk_ids));
    (k, Ctl::new(&module))
}

/// Load the module on `kernel`.
pub fn load(kernel: &Rc<TestKernel>, params: Params, quirks: Quirks) -> Rc<Module> {
    Module::new(kernel.dyn_kernel(), params, quirks)
}

/// A user address space: mappings at chosen addresses, everything else faults.
#[derive(Default)]
pub struct TestUser {
    maps: RefCell<BTreeMap<u64, Vec<u8>>>,
}

/// Where the first mapping goes; low addresses stay unmapped.
const USER_BASE: u64 = 0x1000_0000;
const USER_GUARD: u64 = 0x1000;
/// An address that is never mapped.
pub const UNMAPPED: u64 = 0xdead_0000;

impl TestUser {
    /// Map `bytes` at a fresh address.
    pub fn map(&self, bytes: Vec<u8>) -> u64 {
        let mut maps = self.maps.borrow_mut();
        let addr = maps.iter().next_back().map_or(USER_BASE, |(a, b)| {
            (a + b.len() as u64 + USER_GUARD).next_multiple_of(USER_GUARD)
        });
        maps.insert(addr, bytes);
        addr
    }

    /// The bytes of a mapping (panics if they are not mapped).
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        self.copy_from_user(addr, len).expect("mapped")
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, usize)> {
        let maps = self.maps.borrow();
        let (start, bytes) = maps.range(..=addr).next_back()?;
        let offset = (addr - start) as usize;
        (offset + len <= bytes.len()).then_some((*start, offset))
    }
}

impl UserMemory for TestUser {
    fn copy_from_user(&self, addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let (start, offset) = self.find(addr, len).ok_or(Errno::EFAULT)?;
        Ok(self.maps.borrow()[&start][offset..offset + len].to_vec())
    }

    fn copy_to_user(&self, addr: u64, data: &[u8]) -> Result<(), usize> {
        let (start, offset) = self.find(addr, data.len()).ok_or(0usize)?;
        let mut maps = self.maps.borrow_mut();
        let bytes = maps.get_mut(&start).ok_or(0usize)?;
        bytes[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// A user of the control device: each method encodes one ioctl argument in
/// [`TestUser`] memory, calls [`ctrl::ioctl`] and decodes the answer.
pub struct Ctl {
    pub module: Rc<Module>,
    pub user: TestUser,
}

fn block_ranges(ranges: &[(u64, u64)]) -> Vec<u8> {
    ranges
        .iter()
        .flat_map(|&(sector_offset, sector_count)| {
            BlkSnapBlockRange {
                sector_offset,
                sector_count,
            }
            .encode()
        })
        .collect()
}

fn blk_dev(dev: DevT) -> BlkSnapDev {
    BlkSnapDev {
        mj: dev.major(),
        mn: dev.minor(),
    }
}

fn dev_t(dev: BlkSnapDev) -> DevT {
    DevT::new(dev.mj, dev.mn)
}

impl Ctl {
    pub fn new(module: &Rc<Module>) -> Ctl {
        Ctl {
            module: module.clone(),
            user: TestUser::default(),
        }
    }

    pub async fn ioctl(&self, cmd: u32, arg: u64) -> IoctlResult {
        ctrl::ioctl(&self.module, cmd, arg, &self.user).await
    }

    /// Put a struct in user memory and run the ioctl on it; returns the
    /// result and the address (to read what was written back).
    async fn call<T: UapiStruct>(&self, cmd: u32, arg: &T) -> (IoctlResult, u64) {
        let addr = self.user.map(arg.encode());
        (self.ioctl(cmd, addr).await, addr)
    }

    fn back<T: UapiStruct>(&self, addr: u64) -> T {
        T::decode(&self.user.read(addr, T::SIZE)).expect("decodes")
    }

    pub async fn version(&self) -> Result<BlkSnapVersion, Errno> {
        let (result, addr) = self
            .call(IOCTL_BLK_SNAP_VERSION, &BlkSnapVersion::default())
            .await;
        result?;
        Ok(self.back(addr))
    }

    pub async fn create(&self, devs: &[DevT]) -> Result<[u8; 16], Errno> {
        let array: Vec<u8> = devs.iter().flat_map(|&d| blk_dev(d).encode()).collect();
        let arg = BlkSnapSnapshotCreate {
            count: devs.len() as u32,
            dev_id_array: self.user.map(array),
            id: BlkSnapUuid::default(),
        };
        let (result, addr) = self.call(IOCTL_BLK_SNAP_SNAPSHOT_CREATE, &arg).await;
        result?;
        Ok(self.back::<BlkSnapSnapshotCreate>(addr).id.b)
    }

    pub async fn append(
        &self,
        id: &[u8; 16],
        dev: DevT,
        ranges: &[(u64, u64)],
    ) -> Result<(), Errno> {
        let arg = BlkSnapSnapshotAppendStorage {
            id: BlkSnapUuid { b: *id },
            dev_id: blk_dev(dev),
            count: ranges.len() as u32,
            ranges: self.user.map(block_ranges(ranges)),
        };
        let (result, _) = self
            .call(IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE, &arg)
            .await;
        result.map(drop)
    }

    pub async fn take(&self, id: &[u8; 16]) -> Result<(), Errno> {
        let arg = BlkSnapSnapshotTake {
            id: BlkSnapUuid { b: *id },
        };
        let (result, _) = self.call(IOCTL_BLK_SNAP_SNAPSHOT_TAKE, &arg).await;
        result.map(drop)
    }

    pub async fn destroy(&self, id: &[u8; 16]) -> Result<(), Errno> {
        let arg = BlkSnapSnapshotDestroy {
            id: BlkSnapUuid { b: *id },
        };
        let (result, _) = self.call(IOCTL_BLK_SNAP_SNAPSHOT_DESTROY, &arg).await;
        result.map(drop)
    }

    /// SNAPSHOT_COLLECT with room for 16 ids.
    pub async fn collect(&self) -> Result<Vec<[u8; 16]>, Errno> {
        let arg = BlkSnapSnapshotCollect {
            count: 16,
            ids: self.user.map(vec![0; 16 * 16]),
        };
        let (result, addr) = self.call(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT, &arg).await;
        result?;
        let back: BlkSnapSnapshotCollect = self.back(addr);
        let bytes = self.user.read(arg.ids, 16 * back.count as usize);
        Ok(bytes
            .chunks_exact(16)
            .map(|c| c.try_into().expect("16 bytes"))
            .collect())
    }

    /// COLLECT_IMAGES with room for 8 pairs: (original, image).
    pub async fn collect_images(&self, id: &[u8; 16]) -> Result<Vec<(DevT, DevT)>, Errno> {
        let arg = BlkSnapSnapshotCollectImages {
            id: BlkSnapUuid { b: *id },
            count: 8,
            image_info_array: self.user.map(vec![0; 8 * BlkSnapImageInfo::SIZE]),
        };
        let (result, addr) = self
            .call(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES, &arg)
            .await;
        result?;
        let back: BlkSnapSnapshotCollectImages = self.back(addr);
        let bytes = self.user.read(
            arg.image_info_array,
            BlkSnapImageInfo::SIZE * back.count as usize,
        );
        Ok(bytes
            .chunks_exact(BlkSnapImageInfo::SIZE)
            .filter_map(BlkSnapImageInfo::decode)
            .map(|i| (dev_t(i.orig_dev_id), dev_t(i.image_dev_id)))
            .collect())
    }

    /// WAIT_EVENT: (code, time_label, the 4064 data bytes).
    pub async fn wait_event(
        &self,
        id: &[u8; 16],
        timeout_ms: u32,
    ) -> Result<(u32, i64, Vec<u8>), Errno> {
        let arg = BlkSnapSnapshotEvent {
            id: BlkSnapUuid { b: *id },
            timeout_ms,
            ..Default::default()
        };
        let (result, addr) = self.call(IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT, &arg).await;
        result?;
        let back: BlkSnapSnapshotEvent = self.back(addr);
        Ok((back.code, back.time_label, back.data.to_vec()))
    }

    /// TRACKER_COLLECT with room for 8 entries.
    pub async fn tracker_collect(&self) -> Result<Vec<BlkSnapCbtInfo>, Errno> {
        let arg = BlkSnapTrackerCollect {
            count: 8,
            cbt_info_array: self.user.map(vec![0; 8 * BlkSnapCbtInfo::SIZE]),
        };
        let (result, addr) = self.call(IOCTL_BLK_SNAP_TRACKER_COLLECT, &arg).await;
        result?;
        let back: BlkSnapTrackerCollect = self.back(addr);
        let bytes = self.user.read(
            arg.cbt_info_array,
            BlkSnapCbtInfo::SIZE * back.count as usize,
        );
        Ok(bytes
            .chunks_exact(BlkSnapCbtInfo::SIZE)
            .filter_map(BlkSnapCbtInfo::decode)
            .collect())
    }

    /// READ_CBT_MAP into a fresh buffer of `length` bytes; the bytes copied.
    pub async fn read_cbt(&self, dev: DevT, offset: u32, length: u32) -> Result<Vec<u8>, Errno> {
        let arg = BlkSnapTrackerReadCbtBitmap {
            dev_id: blk_dev(dev),
            offset,
            length,
            buff: self.user.map(vec![0; length as usize]),
        };
        let (result, _) = self.call(IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP, &arg).await;
        let copied = result?;
        Ok(self.user.read(arg.buff, copied as usize))
    }

    pub async fn mark_dirty(&self, dev: DevT, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        let arg = BlkSnapTrackerMarkDirtyBlocks {
            dev_id: blk_dev(dev),
            count: ranges.len() as u32,
            dirty_blocks_array: self.user.map(block_ranges(ranges)),
        };
        let (result, _) = self
            .call(IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS, &arg)
            .await;
        result.map(drop)
    }

    pub async fn tracker_remove(&self, dev: DevT) -> Result<(), Errno> {
        let arg = BlkSnapTrackerRemove {
            dev_id: blk_dev(dev),
        };
        let (result, _) = self.call(IOCTL_BLK_SNAP_TRACKER_REMOVE, &arg).await;
        result.map(drop)
    }
}

#[cfg(test)]
mod tests {
    //! The test host itself, and the small items of `kernel/mod.rs`.

    use super::*;
    use crate::kernel::{submit, NoioScope, PAGE_SECTORS, SECTOR_SIZE};

    #[test]
    fn devt_encoding_is_major_shl_20_or_minor() {
        let d = DevT::new(8, 16);
        assert_eq!(d.0, (8 << 20) | 16);
        assert_eq!((d.major(), d.minor()), (8, 16));
        assert_eq!(d.to_string(), "8:16");
        // The minor is cut to 20 bits.
        assert_eq!(DevT::new(1, 1 << 20).minor(), 0);
        assert_eq!((SECTOR_SIZE, PAGE_SECTORS), (512, 8));
    }

    /// Each kind of name formats as the string the engine built at the
    /// spawn before names were lazy (a full run's trace hashes it).
    #[test]
    fn task_names_format_as_the_strings_they_replace() {
        let dev = DevT::new(7, 3);
        let names = [
            (TaskName::Fixed("rmmod"), "rmmod".to_string()),
            (
                TaskName::Numbered("blksnap-image", 12),
                "blksnap-image12".into(),
            ),
            (
                TaskName::Device("tracker_release ", dev),
                format!("tracker_release {dev}"),
            ),
            (TaskName::Device("flush-", dev), format!("flush-{dev}")),
            (
                TaskName::Chunk("chunk_notify_load ", dev, 9),
                format!("chunk_notify_load {dev}#9"),
            ),
            (
                TaskName::from(String::from("branch 1.0")),
                "branch 1.0".into(),
            ),
        ];
        for (name, want) in names {
            assert_eq!(name.to_string(), want);
        }
    }

    #[test]
    fn errno_names_round_trip() {
        for e in [
            Errno::EPERM,
            Errno::ENOENT,
            Errno::ESRCH,
            Errno::EINTR,
            Errno::EIO,
            Errno::ENXIO,
            Errno::EAGAIN,
            Errno::ENOMEM,
            Errno::EFAULT,
            Errno::EBUSY,
            Errno::ENODEV,
            Errno::EINVAL,
            Errno::ENOTTY,
            Errno::ENOSPC,
            Errno::ENODATA,
            Errno::ENOBUFS,
            Errno::EALREADY,
        ] {
            assert_eq!(Errno::from_name(e.name()), Some(e));
        }
        assert_eq!(Errno::from_name("EWHAT"), None);
        assert_eq!(format!("{:?}", Errno::ENOSPC), "ENOSPC(28)");
        assert_eq!(Errno(999).name(), "E?");
    }

    #[test]
    fn bio_op_is_write() {
        assert!(!BioOp::Read.is_write());
        for op in [
            BioOp::Write,
            BioOp::Flush,
            BioOp::Discard,
            BioOp::WriteZeroes,
        ] {
            assert!(op.is_write(), "{op:?}");
        }
    }

    #[test]
    fn bios_apply_writes_and_read_zeros_where_unwritten() {
        let k = TestKernel::new();
        let d = dev(0);
        k.add_device(d, 64);
        let (w, r, past) = run(&k, async {
            let w = submit(&*k, Bio::write(d, 4, vec![7, 8])).await;
            let r = submit(&*k, Bio::read(d, 3, 4)).await;
            let past = submit(&*k, Bio::read(d, 60, 8)).await;
            (w, r, past)
        });
        assert_eq!(w, Ok(Stamps::new()));
        assert_eq!(r, Ok(Stamps::from_slice(&[0, 7, 8, 0])));
        assert_eq!(past, Err(Errno::EIO));
        assert_eq!(k.peek(d, 4, 2), vec![7, 8]);
        assert_eq!(k.bios().len(), 3);
    }

    #[test]
    fn time_jumps_to_the_next_timer_only_when_idle() {
        let k = TestKernel::new();
        let order = Rc::new(RefCell::new(Vec::new()));
        for (name, ns) in [("late", 30u64), ("early", 10)] {
            let (k2, order) = (k.clone(), order.clone());
            k.spawn(
                TaskKind::Work,
                name.into(),
                Box::pin(async move {
                    k2.sleep(ns).await;
                    order.borrow_mut().push((name, k2.now()));
                }),
            );
        }
        run(&k, k.sleep(100));
        assert_eq!(k.now(), 100);
        assert_eq!(*order.borrow(), vec![("early", 10), ("late", 30)]);
        assert!(k.task_names().is_empty());
    }

    #[test]
    #[should_panic(expected = "TestKernel::run: hang")]
    fn a_main_future_that_can_never_end_is_a_hang() {
        let k = TestKernel::new();
        let (never, _keep) = completion::<()>();
        run(&k, never);
    }

    #[test]
    fn allocation_sites_fail_on_demand_and_are_accounted() {
        let k = TestKernel::new();
        let a = k.kmalloc("x", 10, Gfp::Kernel).unwrap();
        k.fail_site_times("x", 2);
        assert_eq!(k.kmalloc("x", 1, Gfp::Noio), Err(Errno::ENOMEM));
        assert_eq!(k.kmalloc("x", 1, Gfp::Noio), Err(Errno::ENOMEM));
        let b = k.kmalloc("x", 5, Gfp::Noio).unwrap();
        k.fail_site_nth("z", 2);
        let c = k.kmalloc("z", 1, Gfp::Noio).unwrap();
        assert_eq!(k.kmalloc("z", 1, Gfp::Noio), Err(Errno::ENOMEM));
        let d = k.kmalloc("z", 1, Gfp::Noio).unwrap();
        k.kfree(c);
        k.kfree(d);
        k.fail_site("y");
        assert_eq!(k.kmalloc("y", 1, Gfp::Noio), Err(Errno::ENOMEM));
        k.unfail_site("y");
        assert!(k.kmalloc("y", 1, Gfp::Noio).is_ok());
        assert_eq!(k.live_allocs().len(), 3);
        k.kfree(a);
        k.kfree(b);
        assert_eq!(k.live_bytes(), 1);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let k = TestKernel::new();
        let a = k.kmalloc("x", 10, Gfp::Kernel).unwrap();
        k.kfree(a);
        k.kfree(a);
    }

    #[test]
    fn noio_scope_is_per_task_and_restored() {
        let k = TestKernel::new();
        run(&k, async {
            assert!(!k.current_noio());
            {
                let _outer = NoioScope::enter(&*k);
                assert!(k.current_noio());
                {
                    let _inner = NoioScope::enter(&*k);
                }
                assert!(k.current_noio(), "the inner scope restores 'on'");
            }
            assert!(!k.current_noio());
        });
        let seen = Rc::new(Cell::new(false));
        let (k2, seen2) = (k.clone(), seen.clone());
        k.spawn(
            TaskKind::Kthread { noio: true },
            "kthread".into(),
            Box::pin(async move { seen2.set(k2.current_noio()) }),
        );
        run(&k, k.settle());
        assert!(seen.get(), "a NOIO kthread starts with the flag set");
    }

    #[test]
    fn bio_list_queues_bios_of_the_current_task_only() {
        let k = TestKernel::new();
        let d = dev(0);
        k.add_device(d, 64);
        run(&k, async {
            k.bio_list_begin();
            let queued = submit(&*k, Bio::write(d, 0, vec![1]));
            let list = k.bio_list_end();
            assert_eq!(list.len(), 1);
            assert!(k.bios().is_empty(), "a queued bio is not sent");
            for (bio, done) in list {
                k.submit_bio(bio, done);
            }
            assert_eq!(queued.await, Ok(Stamps::new()));
        });
        assert_eq!(k.peek(d, 0, 1), vec![1]);
    }

    #[test]
    fn uuids_are_distinct_version_4() {
        let k = TestKernel::new();
        let (a, b) = (k.uuid_v4(), k.uuid_v4());
        assert_ne!(a, b);
        assert_eq!(a[6] >> 4, 4);
        assert_eq!(b[8] & 0xc0, 0x80);
    }

    #[test]
    fn user_memory_faults_outside_mappings() {
        let user = TestUser::default();
        let a = user.map(vec![1, 2, 3, 4]);
        assert_eq!(user.copy_from_user(a + 1, 2), Ok(vec![2, 3]));
        assert_eq!(user.copy_from_user(a + 2, 4), Err(Errno::EFAULT));
        assert_eq!(user.copy_from_user(UNMAPPED, 1), Err(Errno::EFAULT));
        assert_eq!(user.copy_to_user(a, &[9]), Ok(()));
        assert_eq!(user.copy_to_user(UNMAPPED, &[9]), Err(0));
        assert_eq!(user.read(a, 2), vec![9, 2]);
    }
}
