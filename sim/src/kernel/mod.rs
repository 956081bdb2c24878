//! The simulated kernel: one seeded, single-threaded host for the engine.
//!
//! `Sim` composes the subsystems, each in its own file with its own state
//! and fault model: the scheduler and virtual time (`sched.rs`, tasks in
//! `task.rs`, the executor in `exec.rs`), memory (`mm.rs`, the allocation
//! path in `alloc.rs`), the block layer (`blk.rs`, the device bio path in
//! `bio.rs`), the filesystem models (`crate::fs`), lockdep
//! (`crate::lockdep`), the fault plan (`crate::faults`) and the trace
//! (`crate::trace`). `SimKernel` (`sim_kernel.rs`) is the engine's view:
//! it routes each `Kernel` call to the subsystem that owns it.
//!
//! Kernel threads, work items and scenario processes are all tasks (futures
//! polled by [`Sim::run`]); at every await point of any task the scheduler
//! draws the next task to run from the seed.
//!
//! Fault model: none of its own. Each subsystem file states its faults;
//! every fault injected anywhere is recorded here (`record_fault`) so the
//! checkers know it, and every failed check lands here (`fail`).
//!
//! This file holds the per-run state and the verdicts (failures, the log);
//! the subsystem files below it never import the `Sim` except the glue
//! files (`exec.rs`, `alloc.rs`, `bio.rs`, `sim_kernel.rs`), which exist
//! to cross subsystems and which this file does not import.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use blksnap_core::kernel::{Bio, BioResult, Completer, DevT};

use crate::check::injected::FaultKind;
use crate::check::Oracle;
use crate::faults::FaultPlan;
use crate::fs::FsModel;
use crate::lockdep::Lockdep;
use crate::rng::SimRng;
use crate::trace::{Trace, TraceEvent};

mod alloc;
mod bio;
pub mod blk;
mod exec;
pub mod mm;
mod power_off;
pub mod reclaim;
pub mod sched;
pub mod sim_kernel;
pub mod task;

pub use blk::IMAGE_MAJOR;
pub use mm::MAX_ALLOCATION;
pub use power_off::{free_module_globals, live_sims};
pub use sched::{Bounds, SchedPolicy, POLL_COST_NS};
pub use task::TaskId;

/// The checker name of a panic outside engine code: the bench's own
/// fault. A run with one is an error (exit 2), whatever else it shows.
pub const BENCH_CHECKER: &str = "bench";

/// One failure of the run: which checker saw what, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub checker: String,
    pub message: String,
    pub at_ns: u64,
    /// Who is to blame (set by the checker, and by the verdict for a bug
    /// scenario's expected failure).
    pub category: crate::check::verdict::Category,
    /// For a scenario step's failure (the runner's `expect`): which step
    /// failed and why, as types. `None` for every checker's failure.
    pub step: Option<crate::scenario::StepFailure>,
}

/// A timer's action that needs the whole `Sim`.
pub type TimerCall = Box<dyn FnOnce(&Rc<Sim>)>;

/// What a timer does when it fires. The two a bio and a sleep arm are
/// plain data (no allocation, no indirect call); anything else is a
/// closure with the whole `Sim`.
pub enum TimerAction {
    /// A device bio ends (`bio.rs`): its id, the bio, and who waits.
    EndBio(u64, Bio, Completer<BioResult>),
    /// A sleep is over.
    Wake(Completer<()>),
    Call(TimerCall),
}

impl TimerAction {
    /// Inlined into the executor's loop, as the timer pop is: out of
    /// line, the call saved registers and moved the action once more.
    #[inline(always)]
    fn fire(self, sim: &Rc<Sim>) {
        match self {
            TimerAction::EndBio(id, bio, done) => sim.end_device_bio(id, bio, done),
            TimerAction::Wake(done) => done.complete(()),
            TimerAction::Call(action) => action(sim),
        }
    }
}

pub struct Sim {
    pub seed: u64,
    /// Tasks, run queue, timers, virtual time, policy.
    pub sched: sched::Scheduler<TimerAction>,
    /// The engine's allocations.
    pub mm: mm::Memory,
    /// Devices, image disks, filters, opens, bios in flight.
    pub blk: blk::BlockLayer,
    fault_rng: RefCell<SimRng>,
    uuid_rng: RefCell<SimRng>,
    pub trace: RefCell<Trace>,
    failures: RefCell<Vec<Failure>>,
    pub fs: RefCell<BTreeMap<DevT, FsModel>>,
    pub lockdep: RefCell<Lockdep>,
    pub faults: RefCell<FaultPlan>,
    pub oracle: RefCell<Oracle>,
    pub lifecycle: RefCell<crate::check::lifecycle::Lifecycle>,
    log: RefCell<Vec<(u64, String)>>,
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
    /// When an allocation that may sleep reclaims first (`kernel/reclaim.rs`).
    pub reclaim: RefCell<reclaim::Reclaim>,
    /// The durability checker (write cache, FLUSH/FUA, power loss).
    pub durability: RefCell<crate::check::durability::Durability>,
    /// Lost, corrupted and misdirected writes (`data_faults.rs`).
    pub data_faults: RefCell<crate::data_faults::DataFaultPlan>,
    /// Counters sampled over virtual time for the report (`series.rs`); observes only.
    pub series: RefCell<crate::series::Sampler>,
}

impl Sim {
    pub fn new(seed: u64) -> Rc<Sim> {
        power_off::sim_born();
        Rc::new(Sim {
            seed,
            sched: sched::Scheduler::new(seed),
            mm: mm::Memory::default(),
            blk: blk::BlockLayer::new(seed),
            fault_rng: RefCell::new(SimRng::child(seed, "fault")),
            uuid_rng: RefCell::new(SimRng::child(seed, "uuid")),
            trace: RefCell::new(Trace::default()),
            failures: RefCell::new(Vec::new()),
            fs: RefCell::new(BTreeMap::new()),
            lockdep: RefCell::new(Lockdep::default()),
            faults: RefCell::new(FaultPlan::default()),
            oracle: RefCell::new(Oracle::default()),
            lifecycle: RefCell::new(Default::default()),
            log: RefCell::new(Vec::new()),
            injected_io_errors: Cell::new(0),
            cbt: RefCell::new(Default::default()),
            fs_take: RefCell::new(Default::default()),
            injected: RefCell::new(Default::default()),
            storage: RefCell::new(Default::default()),
            reclaim: RefCell::new(reclaim::Reclaim::new(seed)),
            durability: RefCell::new(Default::default()),
            data_faults: RefCell::new(crate::data_faults::DataFaultPlan::new(seed)),
            series: RefCell::new(Default::default()),
        })
    }

    // --- trace and verdicts ------------------------------------------------------

    pub fn now(&self) -> u64 {
        self.sched.now()
    }

    pub fn record(&self, event: TraceEvent) {
        self.record_inline(event)
    }

    /// The events of every bio, poll and jump of time (most events of a
    /// run) each have their own recorder: the caller passes a few words,
    /// and the trace writes them (`Trace::record_poll` and the others)
    /// with no `TraceEvent` built, matched, moved or dropped. The poll's
    /// is out of line: inlined into `poll_task`, it made it save more
    /// registers and cost more than it saved. The others are inlined into
    /// the executor's loop and the bio path, which save their registers
    /// once per run or per bio anyway.
    #[inline(always)]
    pub(crate) fn record_time_advance(&self, now: u64) {
        let at = self.now();
        self.trace.borrow_mut().record_time_advance(at, now);
    }

    #[inline(always)]
    pub(crate) fn record_bio_submit(&self, id: u64, bio: &Bio) {
        let now = self.now();
        let range = (bio.sector, bio.sectors);
        self.trace
            .borrow_mut()
            .record_bio_submit(now, id, bio.dev.0, bio.op as u8, range);
    }

    /// Every poll of a task (most events of a run without bios). Inlined
    /// into its two callers (a poll, a preemption point run in place):
    /// three times per non-COW write, where the call cost about ten
    /// instructions each.
    #[inline(always)]
    pub(crate) fn record_poll(&self, task: u64) {
        let now = self.now();
        self.trace.borrow_mut().record_poll(now, task);
    }

    #[inline(always)]
    pub(crate) fn record_bio_end(&self, id: u64, ok: bool) {
        let now = self.now();
        self.trace.borrow_mut().record_bio_end(now, id, ok);
    }

    /// A filter's `Pass` (one per user bio on a tracked device), as
    /// `record(TraceEvent::Filter { dev, sector, verdict: Pass })`: the
    /// block layer calls it with the two fields, where an event built,
    /// moved through `record`'s call and matched cost about 120
    /// instructions per user bio more.
    #[inline(always)]
    pub(crate) fn record_filter_pass(&self, dev: u32, sector: u64) {
        let now = self.now();
        self.trace.borrow_mut().record_filter_pass(now, dev, sector);
    }

    /// As `record(build())`, for the events of every spawn, exit,
    /// allocation and step: a count-only trace (a verdict-only run) counts
    /// the event and never builds it, so no name or step text is made for
    /// it. Not for a freeze or a thaw, which the series must see.
    #[inline(always)]
    pub(crate) fn record_with(&self, build: impl FnOnce() -> TraceEvent) {
        if self.trace.borrow().is_count_only() {
            return self.trace.borrow_mut().count_one();
        }
        let event = build();
        debug_assert!(!matches!(
            event,
            TraceEvent::Freeze { .. } | TraceEvent::Thaw { .. }
        ));
        self.trace.borrow_mut().record(self.now(), event);
    }

    #[inline(always)]
    fn record_inline(&self, event: TraceEvent) {
        let now = self.now();
        match &event {
            TraceEvent::Freeze { dev, depth } => {
                self.series.borrow_mut().freeze(now, DevT(*dev), *depth)
            }
            TraceEvent::Thaw { dev, depth } => {
                self.series.borrow_mut().thaw(now, DevT(*dev), *depth)
            }
            _ => {}
        }
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
            category: Default::default(),
            step: None,
        });
    }

    /// A scenario step's failure: [`Sim::fail`], with what failed as types.
    pub fn fail_step(&self, checker: &str, message: String, step: crate::scenario::StepFailure) {
        self.fail(checker, message);
        if let Some(last) = self.failures.borrow_mut().last_mut() {
            last.step = Some(step);
        }
    }

    /// A failed check that a fault the scenario declared explains, seen by
    /// the checker at `at_ns`.
    pub fn fail_by_fault(&self, checker: &str, message: String, at_ns: u64) {
        self.fail(checker, message);
        if let Some(last) = self.failures.borrow_mut().last_mut() {
            last.at_ns = at_ns;
            last.category = crate::check::verdict::Category::DeclaredFault;
        }
    }

    pub fn failures(&self) -> Vec<Failure> {
        self.failures.borrow().clone()
    }

    pub fn has_failed(&self) -> bool {
        !self.failures.borrow().is_empty()
    }

    /// A line of the kernel log (`pr_info` and friends), with the time.
    pub fn log(&self, msg: String) {
        let now = self.now();
        self.log.borrow_mut().push((now, msg));
    }

    pub fn log_lines(&self) -> Vec<(u64, String)> {
        self.log.borrow().clone()
    }

    /// Keep a fault the sim injected, with the time, for the oracle.
    pub fn record_fault(&self, kind: FaultKind) {
        let now = self.now();
        self.injected.borrow_mut().record(now, kind);
    }

    // --- views the runner and the checkers use (same names as before the split) ------

    pub fn current_task(&self) -> Option<TaskId> {
        self.sched.current_task()
    }

    pub fn task_name(&self, id: TaskId) -> String {
        self.sched.task_name(id)
    }

    /// Deliver SIGKILL to a task: killable waits give up.
    pub fn kill(&self, id: TaskId) {
        self.sched.kill(id)
    }

    /// Processes still running.
    pub fn live_processes(&self) -> Vec<String> {
        self.sched.live_processes()
    }

    /// True if the running task got SIGKILL.
    pub fn current_killed(&self) -> bool {
        self.sched.current_killed()
    }

    /// The id of a live process with this name (the first one started).
    pub fn process_named(&self, name: &str) -> Option<TaskId> {
        self.sched.process_named(name)
    }

    /// Every task still alive, by name (for hang reports).
    pub fn live_tasks(&self) -> Vec<String> {
        self.sched.live_tasks()
    }

    pub fn polls(&self) -> u64 {
        self.sched.polls()
    }

    /// Run `action` at virtual time `at`.
    pub fn at(&self, at: u64, action: TimerCall) {
        self.sched.at(at, TimerAction::Call(action))
    }

    pub fn add_device(&self, device: crate::device::Device) {
        self.blk.add_device(device)
    }

    pub fn next_bio_id(&self) -> u64 {
        self.blk.next_bio_id()
    }

    pub fn filter_of(&self, dev: DevT) -> Option<Rc<dyn blksnap_core::kernel::BdevFilter>> {
        self.blk.filter_of(dev)
    }

    pub fn filter_call_begin(&self, dev: DevT) {
        self.blk.filter_call_begin(dev)
    }

    pub fn filter_call_end(&self, dev: DevT) {
        self.blk.filter_call_end(dev)
    }

    pub fn is_image(&self, dev: DevT) -> bool {
        self.blk.is_image(dev)
    }

    /// Allocations still live, by site.
    pub fn live_allocations(&self) -> BTreeMap<&'static str, (u64, u64)> {
        self.mm.live_allocations()
    }

    /// Devices opened by the engine and not closed.
    pub fn open_bdevs(&self) -> Vec<DevT> {
        self.blk.open_bdevs()
    }

    pub fn attached_filters(&self) -> Vec<DevT> {
        self.blk.attached_filters()
    }

    pub fn disks(&self) -> Vec<DevT> {
        self.blk.disks()
    }

    /// The image capacity as the engine registered it.
    pub fn disk_capacity(&self, dev: DevT) -> Option<u64> {
        self.oracle.borrow().image_capacity(dev)
    }
}
