//! The simulated kernel: one seeded, single-threaded host for the engine.
//!
//! It implements `blksnap_core::kernel::Kernel`. Kernel threads, work items
//! and scenario processes are all tasks here (futures polled by
//! [`Sim::run`]); at every await point of any task the scheduler draws the
//! next task to run from the seed. Virtual time moves by a small cost per
//! poll and jumps to the next timer when nothing can run.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use blksnap_core::kernel::{
    completion, AllocId, BdevFilter, BdevHandle, Bio, BioResult, Completer, Completion, DevT,
    Errno, GenDisk, Gfp, Kernel, LocalBoxFuture, LockId, LockMode, LockOp, TaskKind,
};

use crate::check::injected::FaultKind;
use crate::check::Oracle;
use crate::device::Device;
use crate::faults::FaultPlan;
use crate::fs::FsModel;
use crate::lockdep::Lockdep;
use crate::panics;
use crate::rng::SimRng;
use crate::runqueue::RunQueue;
use crate::trace::{Trace, TraceEvent};

thread_local! {
    /// Set while a task is polled: a panic there is a failure the sim
    /// reports (an oops, or a bench error; see `panics.rs`).
    static IN_POLL: Cell<bool> = const { Cell::new(false) };
}

/// True while the executor polls a task (for a panic hook that stays quiet
/// about oopses but reports panics of the simulator itself).
pub fn in_task_poll() -> bool {
    IN_POLL.with(Cell::get)
}

/// The checker name of a panic outside engine code: the bench's own
/// fault. A run with one is an error (exit 2), whatever else it shows.
pub const BENCH_CHECKER: &str = "bench";

/// The largest single engine allocation the sim grants (1 GiB).
pub const MAX_ALLOCATION: u64 = 1 << 30;

/// Virtual time one poll of a task costs: CPU work is not free.
pub const POLL_COST_NS: u64 = 200;
/// The dynamic major the sim hands out for image disks.
pub const IMAGE_MAJOR: u32 = 252;

pub type TaskId = u64;

/// One failure of the run: which checker saw what, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub checker: String,
    pub message: String,
    pub at_ns: u64,
}

struct Task {
    name: String,
    future: Option<LocalBoxFuture<'static, ()>>,
    /// `memalloc_noio` in effect (a kthread with PF_MEMALLOC_NOIO, or a scope).
    noio: bool,
    bio_list: Option<Vec<(Bio, Completer<BioResult>)>>,
    fatal_signal: bool,
    /// Scenario processes; the run ends when all of them are done.
    is_process: bool,
    /// Made once: a poll clones it (a reference count), never allocates.
    waker: Waker,
}

struct WakeQueue {
    woken: Mutex<Vec<TaskId>>,
}

struct TaskWaker {
    id: TaskId,
    queue: Arc<WakeQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Ok(mut woken) = self.queue.woken.lock() {
            woken.push(self.id);
        }
    }
}

type TimerAction = Box<dyn FnOnce(&Rc<Sim>)>;
type Disk = (Rc<dyn GenDisk>, u64);

/// Limits that turn a hang or a livelock into a failure.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_polls: u64,
    pub max_virtual_ns: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_polls: 20_000_000,
            max_virtual_ns: 3_600_000_000_000,
        }
    }
}

/// Scheduling policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedPolicy {
    /// Uniformly random among the runnable tasks.
    Random,
    /// PCT-style: random fixed priorities, the highest runnable runs, and a
    /// few seeded change points demote the running task.
    Priority { change_points: u32 },
}

#[derive(Default)]
struct Sched {
    now: u64,
    next_id: u64,
    tasks: BTreeMap<TaskId, Task>,
    runnable: RunQueue,
    /// Live scenario processes by name: the run ends when none is left,
    /// and `Kill` finds its sibling here (without a scan of all tasks).
    processes: BTreeSet<(String, TaskId)>,
    current: Option<TaskId>,
    polls: u64,
    change_at: BTreeSet<u64>,
}

/// Accounting of one allocation.
struct Allocation {
    site: &'static str,
    bytes: u64,
}

pub struct Sim {
    pub seed: u64,
    sched: RefCell<Sched>,
    timer_actions: RefCell<BTreeMap<(u64, u64), TimerAction>>,
    queue: Arc<WakeQueue>,
    sched_rng: RefCell<SimRng>,
    disk_rng: RefCell<SimRng>,
    fault_rng: RefCell<SimRng>,
    uuid_rng: RefCell<SimRng>,
    pub policy: Cell<SchedPolicy>,
    pub bounds: Cell<Bounds>,
    pub trace: RefCell<Trace>,
    failures: RefCell<Vec<Failure>>,
    pub devices: RefCell<BTreeMap<DevT, Device>>,
    pub fs: RefCell<BTreeMap<DevT, FsModel>>,
    /// Image disks the engine added, with their capacity.
    disks: RefCell<BTreeMap<DevT, Disk>>,
    filters: RefCell<BTreeMap<DevT, Rc<dyn BdevFilter>>>,
    /// Filter callbacks running per device (the queue freeze waits for them).
    filter_calls: RefCell<BTreeMap<DevT, u64>>,
    allocs: RefCell<BTreeMap<u64, Allocation>>,
    alloc_seq: Cell<u64>,
    pub peak_alloc_bytes: Cell<u64>,
    live_alloc_bytes: Cell<u64>,
    opens: RefCell<BTreeMap<u64, DevT>>,
    open_seq: Cell<u64>,
    bio_seq: Cell<u64>,
    /// Bios handed to devices and not yet ended.
    pub bios_in_flight: Cell<u64>,
    pub lockdep: RefCell<Lockdep>,
    pub faults: RefCell<FaultPlan>,
    pub oracle: RefCell<Oracle>,
    pub lifecycle: RefCell<crate::check::lifecycle::Lifecycle>,
    log: RefCell<Vec<(u64, String)>>,
    /// Fail the run when live engine allocations exceed this (bytes).
    pub memory_limit: Cell<Option<u64>>,
    /// IO errors the fault plan injected (for the oracle's judgement).
    pub injected_io_errors: Cell<u64>,
    /// The CBT soundness checker.
    pub cbt: RefCell<crate::check::cbt::CbtChecker>,
    /// The fs_consistency checker of TAKE.
    pub fs_take: RefCell<crate::check::fs_take::FsTake>,
    /// Every fault the sim injected, for the oracle's excuses.
    pub injected: RefCell<crate::check::injected::InjectedFaults>,
    /// The storage checker (engine writes to the diff storage).
    pub storage: RefCell<crate::check::storage::StorageCheck>,
    /// Sleeping points the engine reached (`might_sleep` sites), with how
    /// often: the inventory test compares them with ARCHITECTURE.md.
    pub sleep_sites: RefCell<BTreeMap<&'static str, u64>>,
}

impl Sim {
    pub fn new(seed: u64) -> Rc<Sim> {
        Rc::new(Sim {
            seed,
            sched: RefCell::new(Sched::default()),
            timer_actions: RefCell::new(BTreeMap::new()),
            queue: Arc::new(WakeQueue {
                woken: Mutex::new(Vec::new()),
            }),
            sched_rng: RefCell::new(SimRng::child(seed, "sched")),
            disk_rng: RefCell::new(SimRng::child(seed, "disk")),
            fault_rng: RefCell::new(SimRng::child(seed, "fault")),
            uuid_rng: RefCell::new(SimRng::child(seed, "uuid")),
            policy: Cell::new(SchedPolicy::Random),
            bounds: Cell::new(Bounds::default()),
            trace: RefCell::new(Trace::default()),
            failures: RefCell::new(Vec::new()),
            devices: RefCell::new(BTreeMap::new()),
            fs: RefCell::new(BTreeMap::new()),
            disks: RefCell::new(BTreeMap::new()),
            filters: RefCell::new(BTreeMap::new()),
            filter_calls: RefCell::new(BTreeMap::new()),
            allocs: RefCell::new(BTreeMap::new()),
            alloc_seq: Cell::new(0),
            peak_alloc_bytes: Cell::new(0),
            live_alloc_bytes: Cell::new(0),
            opens: RefCell::new(BTreeMap::new()),
            open_seq: Cell::new(0),
            bio_seq: Cell::new(0),
            bios_in_flight: Cell::new(0),
            lockdep: RefCell::new(Lockdep::default()),
            faults: RefCell::new(FaultPlan::default()),
            oracle: RefCell::new(Oracle::default()),
            lifecycle: RefCell::new(Default::default()),
            log: RefCell::new(Vec::new()),
            memory_limit: Cell::new(None),
            injected_io_errors: Cell::new(0),
            cbt: RefCell::new(Default::default()),
            fs_take: RefCell::new(Default::default()),
            injected: RefCell::new(Default::default()),
            storage: RefCell::new(Default::default()),
            sleep_sites: RefCell::new(BTreeMap::new()),
        })
    }

    // --- trace and verdicts ------------------------------------------------------

    pub fn now(&self) -> u64 {
        self.sched.borrow().now
    }

    pub fn record(&self, event: TraceEvent) {
        let now = self.now();
        self.trace.borrow_mut().record(now, event);
    }

    /// A failed check: recorded with the time, and in the trace.
    pub fn fail(&self, checker: &str, message: impl Into<String>) {
        let message = message.into();
        self.record(TraceEvent::Failure {
            checker: checker.to_string(),
            msg: message.clone(),
        });
        self.failures.borrow_mut().push(Failure {
            checker: checker.to_string(),
            message,
            at_ns: self.now(),
        });
    }

    pub fn failures(&self) -> Vec<Failure> {
        self.failures.borrow().clone()
    }

    pub fn has_failed(&self) -> bool {
        !self.failures.borrow().is_empty()
    }

    pub fn log_lines(&self) -> Vec<(u64, String)> {
        self.log.borrow().clone()
    }

    // --- tasks ---------------------------------------------------------------------

    fn new_task(
        &self,
        name: String,
        future: LocalBoxFuture<'static, ()>,
        noio: bool,
        is_process: bool,
    ) -> TaskId {
        let id = {
            let mut sched = self.sched.borrow_mut();
            sched.next_id += 1;
            let id = sched.next_id;
            sched.tasks.insert(
                id,
                Task {
                    name: name.clone(),
                    future: Some(future),
                    noio,
                    bio_list: None,
                    fatal_signal: false,
                    is_process,
                    waker: Waker::from(Arc::new(TaskWaker {
                        id,
                        queue: self.queue.clone(),
                    })),
                },
            );
            if is_process {
                sched.processes.insert((name.clone(), id));
            }
            id
        };
        let priority = self.sched_rng.borrow_mut().next_u64();
        {
            let mut sched = self.sched.borrow_mut();
            sched.runnable.add(id, priority);
            sched.runnable.wake(id);
        }
        self.record(TraceEvent::TaskSpawn { task: id, name });
        id
    }

    /// Start a scenario process (a user task the run waits for).
    pub fn spawn_process(&self, name: String, future: LocalBoxFuture<'static, ()>) -> TaskId {
        self.new_task(name, future, false, true)
    }

    /// Start a sim-side background task (a flusher, a helper).
    pub fn spawn_background(&self, name: String, future: LocalBoxFuture<'static, ()>) -> TaskId {
        self.new_task(name, future, false, false)
    }

    pub fn current_task(&self) -> Option<TaskId> {
        self.sched.borrow().current
    }

    pub fn task_name(&self, id: TaskId) -> String {
        self.sched
            .borrow()
            .tasks
            .get(&id)
            .map(|t| t.name.clone())
            .unwrap_or_default()
    }

    /// Deliver SIGKILL to a task: killable waits give up.
    pub fn kill(&self, id: TaskId) {
        if let Some(task) = self.sched.borrow_mut().tasks.get_mut(&id) {
            task.fatal_signal = true;
        }
        self.queue.woken.lock().map(|mut w| w.push(id)).ok();
    }

    fn with_current<R>(&self, f: impl FnOnce(&mut Task) -> R) -> Option<R> {
        let mut sched = self.sched.borrow_mut();
        let id = sched.current?;
        sched.tasks.get_mut(&id).map(f)
    }

    /// Processes still running.
    pub fn live_processes(&self) -> Vec<String> {
        self.sched
            .borrow()
            .tasks
            .values()
            .filter(|t| t.is_process)
            .map(|t| t.name.clone())
            .collect()
    }

    /// True if the running task got SIGKILL.
    pub fn current_killed(&self) -> bool {
        self.with_current(|t| t.fatal_signal).unwrap_or(false)
    }

    /// The id of a live process with this name (the first one started).
    pub fn process_named(&self, name: &str) -> Option<TaskId> {
        let sched = self.sched.borrow();
        let first = sched.processes.range((name.to_string(), 0)..).next();
        first.filter(|(n, _)| n == name).map(|(_, id)| *id)
    }

    /// True while a scenario process runs.
    fn has_live_processes(&self) -> bool {
        !self.sched.borrow().processes.is_empty()
    }

    /// A task ends (done, or dead of an oops): out of every index.
    fn remove_task(&self, id: TaskId) -> Option<Task> {
        let mut sched = self.sched.borrow_mut();
        sched.runnable.forget(id);
        let task = sched.tasks.remove(&id)?;
        if task.is_process {
            sched.processes.remove(&(task.name.clone(), id));
        }
        Some(task)
    }

    /// Every task still alive, by name (for hang reports).
    pub fn live_tasks(&self) -> Vec<String> {
        self.sched
            .borrow()
            .tasks
            .values()
            .map(|t| t.name.clone())
            .collect()
    }

    pub fn polls(&self) -> u64 {
        self.sched.borrow().polls
    }

    // --- timers --------------------------------------------------------------------

    /// Run `action` at virtual time `at`.
    pub fn at(&self, at: u64, action: TimerAction) {
        let key = {
            let mut sched = self.sched.borrow_mut();
            sched.next_id += 1;
            (at.max(sched.now), sched.next_id)
        };
        self.timer_actions.borrow_mut().insert(key, action);
    }

    fn fire_due_timers(self: &Rc<Self>) {
        loop {
            let now = self.now();
            let due = {
                let mut timers = self.timer_actions.borrow_mut();
                match timers.keys().next().copied() {
                    Some(key) if key.0 <= now => timers.remove(&key),
                    _ => None,
                }
            };
            let Some(action) = due else { return };
            action(self);
        }
    }

    /// Jump to the next timer; false if there is none.
    fn advance_to_next_timer(&self) -> bool {
        let next = self.timer_actions.borrow().keys().next().map(|k| k.0);
        let Some(at) = next else { return false };
        let mut sched = self.sched.borrow_mut();
        if at > sched.now {
            sched.now = at;
        }
        true
    }

    // --- the run loop ------------------------------------------------------------------

    fn collect_woken(&self) {
        let woken: Vec<TaskId> = match self.queue.woken.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(_) => Vec::new(),
        };
        let mut sched = self.sched.borrow_mut();
        for id in woken {
            sched.runnable.wake(id);
        }
    }

    fn pick(&self) -> Option<TaskId> {
        let policy = self.policy.get();
        let sched = self.sched.borrow();
        if sched.runnable.is_empty() {
            return None;
        }
        match policy {
            SchedPolicy::Random => {
                let n = sched.runnable.len() as u64;
                let i = self.sched_rng.borrow_mut().below(n) as usize;
                sched.runnable.nth(i)
            }
            SchedPolicy::Priority { .. } => sched.runnable.highest(),
        }
    }

    /// PCT change points: at a few seeded poll counts, demote the task.
    fn maybe_demote(&self, id: TaskId) {
        let SchedPolicy::Priority { change_points } = self.policy.get() else {
            return;
        };
        let mut sched = self.sched.borrow_mut();
        if sched.change_at.is_empty() && change_points > 0 && sched.polls == 0 {
            let mut rng = self.sched_rng.borrow_mut();
            for _ in 0..change_points {
                sched.change_at.insert(rng.below(100_000));
            }
        }
        let polls = sched.polls;
        if sched.change_at.remove(&polls) {
            sched.runnable.set_priority(id, 0);
        }
    }

    /// A task died of a panic: an oops if engine code panicked, else a
    /// fault of the bench itself (never blamed on the engine).
    fn report_panic(&self, task: &str, message: &str, site: &panics::PanicSite) {
        match panics::blame(site) {
            panics::Blame::Engine => self.fail("oops", format!("task '{task}' died: {message}")),
            panics::Blame::Bench(at) => self.fail(
                BENCH_CHECKER,
                format!("bench error: panic at {at} in task '{task}': {message}"),
            ),
        }
    }

    /// Poll one task once. A panic inside it kills the task with its locks
    /// held (its future is leaked, not dropped) and fails the run.
    fn poll_task(self: &Rc<Self>, id: TaskId) {
        let future = {
            let mut sched = self.sched.borrow_mut();
            sched.runnable.sleep(id);
            sched.current = Some(id);
            sched.polls += 1;
            sched.now += POLL_COST_NS;
            sched
                .tasks
                .get_mut(&id)
                .and_then(|t| Some((t.future.take()?, t.waker.clone())))
        };
        let Some((mut future, waker)) = future else {
            return;
        };
        self.maybe_demote(id);
        self.record(TraceEvent::Poll { task: id });
        let mut cx = Context::from_waker(&waker);
        panics::install_hook();
        IN_POLL.with(|p| p.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        IN_POLL.with(|p| p.set(false));
        self.sched.borrow_mut().current = None;
        match outcome {
            Ok(Poll::Pending) => {
                if let Some(task) = self.sched.borrow_mut().tasks.get_mut(&id) {
                    task.future = Some(future);
                }
            }
            Ok(Poll::Ready(())) => self.task_exit(id),
            Err(payload) => {
                let name = self.task_name(id);
                let message = panic_message(&*payload);
                std::mem::forget(future);
                self.remove_task(id);
                self.report_panic(&name, &message, &panics::take_site());
            }
        }
    }

    fn task_exit(&self, id: TaskId) {
        if let Some(task) = self.remove_task(id) {
            if task.bio_list.is_some() {
                self.fail(
                    "kernel",
                    format!("task '{}' exited with a bio list open", task.name),
                );
            }
        }
        self.record(TraceEvent::TaskExit { task: id });
    }

    /// Run until every process is done, the bounds are hit, or nothing can
    /// run. Returns false if processes remain (a hang: a deadlock, or a
    /// livelock past the bounds).
    pub fn run(self: &Rc<Self>) -> bool {
        let bounds = self.bounds.get();
        loop {
            self.collect_woken();
            self.fire_due_timers();
            self.collect_woken();
            if !self.has_live_processes() {
                return true;
            }
            if self.polls() > bounds.max_polls || self.now() > bounds.max_virtual_ns {
                return false;
            }
            match self.pick() {
                Some(id) => self.poll_task(id),
                None => {
                    if !self.advance_to_next_timer() {
                        return false;
                    }
                    let now = self.now();
                    self.record(TraceEvent::TimeAdvance { now });
                }
            }
        }
    }

    /// Let background work settle (timers, workers) for up to `ns`.
    pub fn settle(self: &Rc<Self>, ns: u64) {
        let deadline = self.now() + ns;
        loop {
            self.collect_woken();
            self.fire_due_timers();
            self.collect_woken();
            if let Some(id) = self.pick() {
                self.poll_task(id);
                continue;
            }
            let next = self.timer_actions.borrow().keys().next().map(|k| k.0);
            match next {
                Some(at) if at <= deadline => {
                    self.advance_to_next_timer();
                }
                _ => return,
            }
        }
    }

    // --- block devices -------------------------------------------------------------------

    pub fn add_device(&self, device: Device) {
        self.devices.borrow_mut().insert(device.dev, device);
    }

    pub fn next_bio_id(&self) -> u64 {
        self.bio_seq.set(self.bio_seq.get() + 1);
        self.bio_seq.get()
    }

    /// Hand a bio to a device or an image disk; no filter on this path.
    pub fn submit_to_device(self: &Rc<Self>, bio: Bio, done: Completer<BioResult>) {
        let disk = self.disks.borrow().get(&bio.dev).cloned();
        if let Some((disk, capacity)) = disk {
            // bio_check_eod: the block layer refuses IO past the end.
            if bio
                .sector
                .checked_add(bio.sectors)
                .is_none_or(|end| end > capacity)
            {
                done.complete(Err(Errno::EIO));
                return;
            }
            disk.submit_bio(bio, done);
            return;
        }
        let id = self.next_bio_id();
        self.record(TraceEvent::BioSubmit {
            id,
            dev: bio.dev.0,
            op: bio.op as u8,
            sector: bio.sector,
            sectors: bio.sectors,
        });
        let check = self.device_check(&bio);
        let latency = match check {
            Ok(latency) => latency,
            Err(e) => {
                self.record(TraceEvent::BioEnd { id, ok: false });
                done.complete(Err(e));
                return;
            }
        };
        self.bios_in_flight.set(self.bios_in_flight.get() + 1);
        let at = self.now() + latency;
        self.at(at, Box::new(move |sim| sim.end_device_bio(id, bio, done)));
    }

    /// Refuse a bio the device cannot take; otherwise draw its latency.
    fn device_check(&self, bio: &Bio) -> Result<u64, Errno> {
        let devices = self.devices.borrow();
        let device = devices.get(&bio.dev).ok_or(Errno::EIO)?;
        if device.removed {
            return Err(Errno::EIO);
        }
        let end = bio.sector.checked_add(bio.sectors).ok_or(Errno::EIO)?;
        if end > device.capacity {
            return Err(Errno::EIO);
        }
        if bio.op.is_write() && bio.op == blksnap_core::kernel::BioOp::Write {
            assert_eq!(
                bio.data.len() as u64,
                bio.sectors,
                "write bio with wrong payload"
            );
        }
        let lat = device.latency;
        let spread = lat.max_ns.saturating_sub(lat.min_ns);
        let jitter = self.disk_rng.borrow_mut().range(0, spread);
        Ok(lat.min_ns + jitter + lat.per_sector_ns * bio.sectors)
    }

    fn end_device_bio(self: &Rc<Self>, id: u64, bio: Bio, done: Completer<BioResult>) {
        self.bios_in_flight.set(self.bios_in_flight.get() - 1);
        let result = self.apply_bio(&bio);
        self.record(TraceEvent::BioEnd {
            id,
            ok: result.is_ok(),
        });
        done.complete(result);
    }

    fn apply_bio(&self, bio: &Bio) -> BioResult {
        use blksnap_core::kernel::BioOp;
        let injected = self
            .faults
            .borrow_mut()
            .bio_error(bio, &mut self.fault_rng.borrow_mut());
        let mut devices = self.devices.borrow_mut();
        let device = devices.get_mut(&bio.dev).ok_or(Errno::EIO)?;
        let windowed = device.window_fails(bio.op, bio.sector, bio.sectors);
        if injected || windowed || device.hits_bad_sector(bio.sector, bio.sectors) {
            self.injected_io_errors
                .set(self.injected_io_errors.get() + 1);
            self.record_fault(bio_fault(bio));
            return Err(Errno::EIO);
        }
        if device.removed {
            return Err(Errno::EIO);
        }
        match bio.op {
            BioOp::Read => Ok(device.read(bio.sector, bio.sectors)),
            BioOp::Write => {
                device.write(bio.sector, &bio.data);
                Ok(Vec::new())
            }
            BioOp::Discard | BioOp::WriteZeroes => {
                device.write(bio.sector, &vec![0; bio.sectors as usize]);
                Ok(Vec::new())
            }
            BioOp::Flush => Ok(Vec::new()),
        }
    }

    /// Keep a fault the sim injected, with the time, for the oracle.
    pub fn record_fault(&self, kind: FaultKind) {
        let now = self.now();
        self.injected.borrow_mut().record(now, kind);
    }

    pub fn filter_of(&self, dev: DevT) -> Option<Rc<dyn BdevFilter>> {
        self.filters.borrow().get(&dev).cloned()
    }

    pub fn filter_call_begin(&self, dev: DevT) {
        *self.filter_calls.borrow_mut().entry(dev).or_insert(0) += 1;
    }

    pub fn filter_call_end(&self, dev: DevT) {
        if let Some(n) = self.filter_calls.borrow_mut().get_mut(&dev) {
            *n -= 1;
        }
    }

    fn filter_calls_on(&self, dev: DevT) -> u64 {
        self.filter_calls.borrow().get(&dev).copied().unwrap_or(0)
    }

    pub fn is_image(&self, dev: DevT) -> bool {
        self.disks.borrow().contains_key(&dev)
    }

    /// Change a device's capacity (a resized loop device).
    pub fn resize_device(&self, dev: DevT, sectors: u64) {
        if let Some(device) = self.devices.borrow_mut().get_mut(&dev) {
            let old = std::mem::replace(&mut device.capacity, sectors);
            self.record_fault(FaultKind::Resize {
                dev,
                old,
                new: sectors,
            });
        }
    }

    /// Device removal (`modprobe -r`, hot unplug): IO fails, the filter is
    /// detached as bdev eviction does.
    pub fn remove_device(&self, dev: DevT) {
        if let Some(device) = self.devices.borrow_mut().get_mut(&dev) {
            device.removed = true;
            self.record_fault(FaultKind::Removal { dev });
        }
        let filter = self.filters.borrow_mut().remove(&dev);
        if let Some(filter) = filter {
            filter.release();
        }
    }

    // --- resources ---------------------------------------------------------------------------

    /// Allocations still live, by site.
    pub fn live_allocations(&self) -> BTreeMap<&'static str, (u64, u64)> {
        let mut by_site: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        for alloc in self.allocs.borrow().values() {
            let entry = by_site.entry(alloc.site).or_default();
            entry.0 += 1;
            entry.1 += alloc.bytes;
        }
        by_site
    }

    /// Devices opened by the engine and not closed.
    pub fn open_bdevs(&self) -> Vec<DevT> {
        self.opens.borrow().values().copied().collect()
    }

    pub fn attached_filters(&self) -> Vec<DevT> {
        self.filters.borrow().keys().copied().collect()
    }

    pub fn disks(&self) -> Vec<DevT> {
        self.disks.borrow().keys().copied().collect()
    }

    /// memalloc_noio: outside a noio scope, an allocation that may start IO
    /// while the task holds a lock on the IO path can deadlock in reclaim.
    fn check_reclaim_context(&self, site: &str, gfp: Gfp) {
        if gfp != Gfp::Kernel || self.current_noio() {
            return;
        }
        if let Some(id) = self.current_task() {
            let what = format!(
                "GFP_KERNEL allocation at {site} by '{}'",
                self.task_name(id)
            );
            let mut lockdep = self.lockdep.borrow_mut();
            lockdep.mark = self.sched.borrow().next_id;
            lockdep.may_io_allocation(id, what);
        }
        let held = self
            .current_task()
            .and_then(|id| self.lockdep.borrow().io_locks_held(id));
        if let Some(class) = held {
            self.fail(
                "memalloc_noio",
                format!(
                    "GFP_KERNEL allocation at {site} while holding {class} outside a noio scope"
                ),
            );
        }
    }

    /// Does the fault plan fail this allocation? A plan can aim at the
    /// would-block allocations alone with the site name `SITE/nowait`.
    fn alloc_fault(&self, site: &str, gfp: Gfp) -> bool {
        let fault_site = if gfp == Gfp::NoioNowait {
            format!("{site}/nowait")
        } else {
            site.to_string()
        };
        let mut rng = self.fault_rng.borrow_mut();
        self.faults.borrow_mut().alloc_fails(&fault_site, &mut rng)
    }

    /// Account a live allocation; past the scenario's limit, fail the run.
    fn account_alloc(&self, site: &'static str, bytes: u64) -> AllocId {
        self.alloc_seq.set(self.alloc_seq.get() + 1);
        let id = self.alloc_seq.get();
        self.allocs
            .borrow_mut()
            .insert(id, Allocation { site, bytes });
        let live = self.live_alloc_bytes.get() + bytes;
        self.live_alloc_bytes.set(live);
        self.peak_alloc_bytes
            .set(self.peak_alloc_bytes.get().max(live));
        if let Some(limit) = self.memory_limit.get().filter(|l| live > *l) {
            self.memory_limit.set(None);
            self.fail(
                "memory",
                format!("engine memory reached {live} bytes, over the limit of {limit}"),
            );
        }
        AllocId(id)
    }

    /// The engine's own writes go to the diff storage, and only there.
    fn check_engine_bio(&self, bio: &Bio) {
        if !bio.op.is_write() || self.is_image(bio.dev) {
            return;
        }
        let verdict =
            self.storage
                .borrow_mut()
                .engine_write(bio.dev, bio.sector, &bio.data, bio.sectors);
        if let Err(message) = verdict {
            self.fail("storage", message);
        }
    }

    /// The per-task `noio` flag of the current task.
    fn current_noio(&self) -> bool {
        self.with_current(|t| t.noio).unwrap_or(false)
    }

    fn wait_for_quiesce(self: &Rc<Self>, dev: DevT) -> LocalBoxFuture<'static, ()> {
        let sim = self.clone();
        Box::pin(async move {
            while sim.filter_calls_on(dev) > 0 {
                sim.sleep(10_000).await;
            }
        })
    }

    /// Spawn a sim-side helper task that completes `done` with its result.
    fn helper<T: 'static>(
        self: &Rc<Self>,
        name: &str,
        body: LocalBoxFuture<'static, T>,
    ) -> Completion<T> {
        let (completion, done) = completion();
        self.new_task(
            name.to_string(),
            Box::pin(async move { done.complete(body.await) }),
            false,
            false,
        );
        completion
    }
}

/// The record of a device bio the sim failed.
fn bio_fault(bio: &Bio) -> FaultKind {
    FaultKind::BioError {
        dev: bio.dev,
        op: bio.op,
        sector: bio.sector,
        sectors: bio.sectors,
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        return (*s).to_string();
    }
    if let Some(s) = payload.downcast_ref::<String>() {
        return s.clone();
    }
    "panic".to_string()
}

/// The engine's view of the sim. It is `Rc<Sim>` behind a newtype so the
/// engine gets a `Rc<dyn Kernel>` while the sim keeps its own handle.
pub struct SimKernel(pub Rc<Sim>);

impl Kernel for SimKernel {
    fn now_ns(&self) -> u64 {
        self.0.now()
    }

    fn sleep(&self, ns: u64) -> Completion<()> {
        self.0.sleep(ns)
    }

    fn spawn(&self, kind: TaskKind, name: String, task: LocalBoxFuture<'static, ()>) {
        let noio = matches!(kind, TaskKind::Kthread { noio: true });
        self.0.new_task(name, task, noio, false);
    }

    fn fatal_signal_pending(&self) -> bool {
        self.0.with_current(|t| t.fatal_signal).unwrap_or(false)
    }

    fn uuid_v4(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        self.0.uuid_rng.borrow_mut().fill_bytes(&mut bytes);
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        bytes
    }

    fn warn(&self, msg: &str) {
        self.0.record(TraceEvent::Warn {
            msg: msg.to_string(),
        });
        self.0.fail("kernel_warn", format!("WARN: {msg}"));
    }

    fn log(&self, msg: &str) {
        let now = self.0.now();
        self.0.log.borrow_mut().push((now, msg.to_string()));
    }

    fn might_sleep(&self, site: &'static str) {
        *self.0.sleep_sites.borrow_mut().entry(site).or_insert(0) += 1;
    }

    fn kmalloc(&self, site: &'static str, bytes: u64, gfp: Gfp) -> Result<AllocId, Errno> {
        let sim = &self.0;
        sim.check_reclaim_context(site, gfp);
        // One allocation past this is refused as vmalloc would refuse it:
        // the host must not try (a table for a device of 2^60 sectors).
        let fails = bytes > MAX_ALLOCATION || sim.alloc_fault(site, gfp);
        sim.record(TraceEvent::Alloc { site, ok: !fails });
        if fails {
            let site = site.to_string();
            sim.record_fault(FaultKind::Alloc { site, gfp });
            return Err(Errno::ENOMEM);
        }
        Ok(sim.account_alloc(site, bytes))
    }

    fn kfree(&self, id: AllocId) {
        let sim = &self.0;
        match sim.allocs.borrow_mut().remove(&id.0) {
            Some(alloc) => sim
                .live_alloc_bytes
                .set(sim.live_alloc_bytes.get() - alloc.bytes),
            None => sim.fail(
                "memory",
                format!("kfree of {id:?}: double free or bad pointer"),
            ),
        }
    }

    fn memalloc_noio_save(&self) -> bool {
        self.0
            .with_current(|t| std::mem::replace(&mut t.noio, true))
            .unwrap_or(false)
    }

    fn memalloc_noio_restore(&self, previous: bool) {
        self.0.with_current(|t| t.noio = previous);
    }

    fn lock_new(&self, class: &'static str) -> LockId {
        self.0.lockdep.borrow_mut().new_lock(class)
    }

    fn lock_event(&self, id: LockId, class: &'static str, op: LockOp, mode: LockMode) {
        let sim = &self.0;
        let Some(task) = sim.current_task() else {
            return;
        };
        sim.lockdep.borrow_mut().mark = sim.sched.borrow().next_id;
        let report = sim.lockdep.borrow_mut().event(task, id, class, op, mode);
        if let Some(report) = report {
            sim.fail("lockdep", report);
        }
        for report in sim.lockdep.borrow_mut().take_noio_reports() {
            sim.fail("memalloc_noio", report);
        }
    }

    fn bdev_open(&self, dev: DevT) -> Result<BdevHandle, Errno> {
        let sim = &self.0;
        let mut devices = sim.devices.borrow_mut();
        let device = devices
            .get_mut(&dev)
            .filter(|d| !d.removed)
            .ok_or(Errno::ENXIO)?;
        device.open_count += 1;
        sim.open_seq.set(sim.open_seq.get() + 1);
        let id = sim.open_seq.get();
        sim.opens.borrow_mut().insert(id, dev);
        Ok(BdevHandle { id, dev })
    }

    fn bdev_close(&self, handle: BdevHandle) {
        let sim = &self.0;
        if sim.opens.borrow_mut().remove(&handle.id).is_none() {
            sim.fail(
                "kernel",
                format!("blkdev_put of {} that is not open", handle.dev),
            );
            return;
        }
        if let Some(device) = sim.devices.borrow_mut().get_mut(&handle.dev) {
            device.open_count -= 1;
        }
    }

    fn bdev_nr_sectors(&self, dev: DevT) -> u64 {
        self.0
            .devices
            .borrow()
            .get(&dev)
            .filter(|d| !d.removed)
            .map_or(0, |d| d.capacity)
    }

    fn bdev_io_min(&self, dev: DevT) -> u32 {
        self.0.devices.borrow().get(&dev).map_or(512, |d| d.io_min)
    }

    fn submit_bio(&self, bio: Bio, done: Completer<BioResult>) {
        let sim = &self.0;
        let mut pending = Some((bio, done));
        sim.with_current(|t| {
            if let Some(list) = t.bio_list.as_mut() {
                list.extend(pending.take());
            }
        });
        if let Some((bio, done)) = pending {
            sim.check_engine_bio(&bio);
            sim.submit_to_device(bio, done);
        }
    }

    fn bio_list_begin(&self) {
        let opened = self.0.with_current(|t| {
            let was_open = t.bio_list.is_some();
            t.bio_list.get_or_insert_with(Vec::new);
            was_open
        });
        if opened == Some(true) {
            self.0.fail("kernel", "current->bio_list opened twice");
        }
    }

    fn bio_list_end(&self) -> Vec<(Bio, Completer<BioResult>)> {
        self.0
            .with_current(|t| t.bio_list.take().unwrap_or_default())
            .unwrap_or_default()
    }

    fn freeze_bdev(&self, dev: DevT) -> Completion<Result<(), Errno>> {
        let fails = self
            .0
            .devices
            .borrow()
            .get(&dev)
            .is_some_and(|d| d.freeze_fails);
        if fails {
            return Completion::ready(Err(Errno::EBUSY));
        }
        let sim = self.0.clone();
        let body = Box::pin(async move { crate::fs::freeze_bdev(&sim, dev).await });
        self.0.helper("freeze_bdev", body)
    }

    fn thaw_bdev(&self, dev: DevT) -> Completion<Result<(), Errno>> {
        Completion::ready(crate::fs::thaw_bdev(&self.0, dev))
    }

    fn filter_attach(
        &self,
        dev: DevT,
        filter: Rc<dyn BdevFilter>,
    ) -> Completion<Result<(), Errno>> {
        let sim = self.0.clone();
        let quiesce = self.0.wait_for_quiesce(dev);
        let body = Box::pin(async move {
            quiesce.await;
            let mut filters = sim.filters.borrow_mut();
            if filters.contains_key(&dev) {
                return Err(Errno::EALREADY);
            }
            filters.insert(dev, filter);
            Ok(())
        });
        self.0.helper("bdev_filter_attach", body)
    }

    fn filter_detach(&self, dev: DevT) -> Completion<Result<(), Errno>> {
        let sim = self.0.clone();
        let quiesce = self.0.wait_for_quiesce(dev);
        let body = Box::pin(async move {
            quiesce.await;
            let filter = sim.filters.borrow_mut().remove(&dev);
            match filter {
                Some(filter) => {
                    filter.release();
                    Ok(())
                }
                None => Err(Errno::ENOENT),
            }
        });
        self.0.helper("bdev_filter_detach", body)
    }

    fn filter_get(&self, dev: DevT) -> Option<Rc<dyn BdevFilter>> {
        self.0.filter_of(dev)
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
        let sim = &self.0;
        if sim
            .faults
            .borrow_mut()
            .add_disk_fails(&mut sim.fault_rng.borrow_mut())
        {
            return Err(Errno::ENOMEM);
        }
        sim.disks.borrow_mut().insert(dev, (disk, capacity));
        sim.oracle.borrow_mut().image_added(dev, capacity);
        sim.log
            .borrow_mut()
            .push((sim.now(), format!("add_disk {name} {dev} {capacity}")));
        Ok(())
    }

    fn del_gendisk(&self, dev: DevT) {
        if self.0.disks.borrow_mut().remove(&dev).is_none() {
            self.0
                .fail("kernel", format!("del_gendisk of {dev} that is not a disk"));
        }
    }
}

impl Sim {
    pub fn sleep(&self, ns: u64) -> Completion<()> {
        let (completion, done) = completion();
        let at = self.now() + ns;
        self.at(at, Box::new(move |_| done.complete(())));
        completion
    }

    /// The image capacity as the engine registered it.
    pub fn disk_capacity(&self, dev: DevT) -> Option<u64> {
        self.oracle.borrow().image_capacity(dev)
    }
}
