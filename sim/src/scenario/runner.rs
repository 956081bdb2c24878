//! Running one scenario in a fresh simulated kernel, then judging it.
//!
//! The steps run in a scenario process (plus one process per branch of a
//! `Concurrent` step). Ioctls go through the v2 numbers and the `repr(C)`
//! argument structs in a simulated user address space, as a user program
//! would call them (`ioctl_steps.rs`); user IO goes through the block layer
//! where the oracle sees it (`io_steps.rs`). After the steps, the teardown
//! destroys what is left and unloads the module, and the resource checks
//! run.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::{Rc, Weak};

use blksnap_core::kernel::{DevT, Errno, LocalBoxFuture, Stamp};
use blksnap_core::{Module, Quirks};

use super::model::{DeviceFaultCorruption, Expect, Scenario, Scheduler, Step};
use crate::check::verdict::Category;
use crate::check::{resources, Oracle};
use crate::device::Device;
use crate::fs::{self, FsModel};
use crate::kernel::sim_kernel::SimKernel;
use crate::kernel::{Bounds, Failure, SchedPolicy, Sim, BENCH_CHECKER};
use crate::rng::SimRng;
use crate::scenario::{Cause, IoOp, StepError, StepFailure};
use crate::trace::TraceEvent;
use crate::user::UserSpace;

use super::load::limits::{MAX_STEPS, MAX_WORK_SECTORS};
/// How long background work may take to settle after the teardown.
const SETTLE_NS: u64 = 10_000_000_000;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Run with no quirk switched on, whatever the scenario says (the
    /// fixed engine on a bug's trigger).
    pub without_quirks: bool,
    /// A smaller work budget than the default (fuzzing, tests).
    pub budget: Option<WorkBudget>,
    /// Build only what a verdict reads: the outcome's failures, verdict,
    /// steps, time and event count. Its digest is empty (the trace is not
    /// even hashed), and its metrics,
    /// recent trace, log, sleep sites and series are left empty (a fuzz
    /// target judges millions of runs and reports none that passes; it
    /// reruns a failing one in full for its report). The run itself is
    /// the same.
    pub verdict_only: bool,
}

/// The virtual work one run may do before it is stopped and failed
/// ("liveness"): the host's time and memory stay bounded whatever the
/// scenario asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkBudget {
    /// Steps taken plus waits of loops inside a step (Stretch).
    pub steps: u64,
    /// Sectors of user IO written (the sim keeps a stamp per sector).
    pub written_sectors: u64,
    /// Sectors of user IO read.
    pub read_sectors: u64,
    /// Scheduler polls (the liveness bound on a livelock).
    pub polls: u64,
    /// Bytes of ioctl arguments mapped over the run (each is built,
    /// copied and read back: time, even when unmapped at once).
    pub mapped_bytes: u64,
}

/// Sectors: twice the planned bound for writes (a backup copies a whole
/// device, unplanned), 16 times for reads (they cost time, not memory).
impl Default for WorkBudget {
    fn default() -> Self {
        WorkBudget {
            steps: MAX_STEPS,
            written_sectors: 2 * MAX_WORK_SECTORS,
            read_sectors: 16 * MAX_WORK_SECTORS,
            polls: Bounds::default().max_polls,
            mapped_bytes: 4 << 30,
        }
    }
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub name: String,
    pub seed: u64,
    pub digest: String,
    /// Every failure the checkers reported.
    pub failures: Vec<Failure>,
    /// The verdict: no failures, or (for a bug scenario) the expected one.
    pub passed: bool,
    /// Why a bug scenario did not count as passed.
    pub verdict_note: Option<String>,
    /// For a bug scenario that passed: the failure that caught the bug.
    pub caught_by: Option<Failure>,
    pub virtual_ns: u64,
    pub steps: u64,
    pub trace_events: u64,
    pub metrics: BTreeMap<String, f64>,
    /// The last trace events with their times, for a failure report (as
    /// values: a report picks and renders them, see `recent_line`).
    pub recent_trace: Vec<(u64, TraceEvent)>,
    /// The engine's log (`pr_*` lines), last ones first kept.
    pub log: Vec<String>,
    /// The engine's sleeping points reached (`Kernel::might_sleep` sites),
    /// with how many times each was reached.
    pub sleep_sites: BTreeMap<String, u64>,
    /// Counters sampled over virtual time (`crate::series`), for the report.
    pub series: blksnap_reports::TimeSeries,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.passed
    }
}

/// What the scenario knows of a snapshot it created.
#[derive(Clone, Default)]
pub(super) struct SnapRecord {
    pub id: [u8; 16],
    /// original -> image
    pub images: BTreeMap<DevT, DevT>,
    pub destroyed: bool,
    /// A DESTROY step of this snapshot has begun (and not failed): from
    /// then on its images may vanish, and a TAKE that overlapped it may
    /// find nothing to collect.
    pub destroying: bool,
}

pub(super) struct Run {
    pub sim: Rc<Sim>,
    module: RefCell<Option<Rc<Module>>>,
    params: blksnap_core::Params,
    quirks: Quirks,
    pub user: UserSpace,
    devices: BTreeMap<String, DevT>,
    snapshots: RefCell<BTreeMap<String, SnapRecord>>,
    pub generations: RefCell<BTreeMap<String, [u8; 16]>>,
    pub cbt_maps: RefCell<BTreeMap<String, Vec<u8>>>,
    next_stamp: Cell<Stamp>,
    pub workload_rng: RefCell<SimRng>,
    steps_run: Cell<u64>,
    /// Work charged to the run's budget besides steps: waits of a loop
    /// inside one step (Stretch), and sectors of user IO moved.
    budget: WorkBudget,
    waits: Cell<u64>,
    sectors_read: Cell<u64>,
    sectors_written: Cell<u64>,
    over_budget: Cell<bool>,
    /// Every module instance loaded, for power-off (see `power_off`).
    loaded: RefCell<Vec<Weak<Module>>>,
    /// When the backup steps last copied each sector of a backup device.
    pub backup_copies: RefCell<super::backup_steps::BackupCopies>,
}

/// Run a loaded scenario.
pub fn run(scenario: &Scenario, options: &RunOptions) -> Outcome {
    let seed = options.seed.unwrap_or(scenario.seed);
    let sim = Sim::new(seed);
    if options.verdict_only {
        sim.trace.borrow_mut().count_only();
    }
    sim.sched.policy.set(match scenario.scheduler {
        Scheduler::Random => SchedPolicy::Random,
        Scheduler::Priority(n) => SchedPolicy::Priority { change_points: n },
    });
    // The budget's polls are the executor's liveness bound.
    let budget = options.budget.unwrap_or_default();
    sim.sched.bounds.set(Bounds {
        max_polls: budget.polls,
        ..sim.sched.bounds.get()
    });
    let devices = add_devices(&sim, scenario, seed);
    apply_faults(&sim, scenario);
    let mut quirks = Quirks::default();
    if !options.without_quirks {
        for id in &scenario.quirks {
            // The loader checked every id already.
            let _ = quirks.enable(id);
        }
    }
    let run = Rc::new(Run {
        sim: sim.clone(),
        module: RefCell::new(None),
        params: scenario.params.clone(),
        quirks,
        user: UserSpace::default(),
        devices,
        snapshots: RefCell::new(BTreeMap::new()),
        generations: RefCell::new(BTreeMap::new()),
        cbt_maps: RefCell::new(BTreeMap::new()),
        next_stamp: Cell::new(1),
        workload_rng: RefCell::new(SimRng::child(seed, "workload")),
        steps_run: Cell::new(0),
        budget,
        waits: Cell::new(0),
        sectors_read: Cell::new(0),
        sectors_written: Cell::new(0),
        over_budget: Cell::new(false),
        loaded: RefCell::new(Vec::new()),
        backup_copies: RefCell::default(),
    });
    run.load_module();
    let steps = scenario.steps.clone();
    let teardown = scenario.teardown;
    let main = run.clone();
    sim.spawn_process(
        format!("scenario {}", scenario.name),
        Box::pin(async move {
            main.steps(&steps, "", &[]).await;
            // Without a teardown no DESTROY drains the event queues: read
            // those that failed image reads are judged by (rule 7), so the
            // oracle sees whether the engine queued a corrupted event.
            let judged = match (teardown, main.module()) {
                (false, Some(_)) => main
                    .sim
                    .oracle
                    .borrow()
                    .snapshots_judged_by_events(&main.sim.injected.borrow()),
                _ => Default::default(),
            };
            let live: Vec<String> = main
                .snapshots
                .borrow()
                .iter()
                .filter(|(_, r)| !r.destroyed && judged.contains(&r.id))
                .map(|(name, _)| name.clone())
                .collect();
            for name in live {
                main.drain_events(&name).await;
            }
            if teardown {
                main.teardown().await;
            }
        }),
    );
    if !sim.run() {
        report_hang(&sim);
    }
    if teardown && !sim.has_failed() {
        sim.settle(SETTLE_NS);
        resources::check_after_unload(&sim);
    }
    let unexplained = sim
        .oracle
        .borrow_mut()
        .unexplained_image_errors(&sim.injected.borrow());
    for message in unexplained {
        sim.fail("point_in_time", message);
    }
    let undetected = sim.oracle.borrow().device_damage.undetected().to_vec();
    for read in undetected {
        sim.fail_by_fault("point_in_time", read.message(), read.read_at);
    }
    let outcome = outcome(scenario, seed, &run, options);
    run.power_off();
    outcome
}

/// A step's place (`1.0.2`: `prefix` and its index), written without
/// `fmt`'s machinery (a string per step was a percent of a fuzz input's
/// cost, and `write!` of the index most of it).
fn step_place(prefix: &str, index: usize) -> String {
    let mut at = String::with_capacity(prefix.len() + 3);
    at.push_str(prefix);
    push_decimal(&mut at, index);
    at
}

/// `n` in decimal, as `{n}` writes it.
fn push_decimal(out: &mut String, n: usize) {
    if n >= 10 {
        push_decimal(out, n / 10);
    }
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// A step's trace text: its place and its kind.
fn step_text(at: &str, step: &Step) -> String {
    use std::fmt::Write;
    let mut what = String::with_capacity(at.len() + 16);
    what.push_str(at);
    let _ = write!(what, " {:?}", step.kind());
    what
}

fn add_devices(sim: &Rc<Sim>, scenario: &Scenario, seed: u64) -> BTreeMap<String, DevT> {
    let mut map = BTreeMap::new();
    for (index, spec) in scenario.devices.iter().enumerate() {
        let index = index as u32;
        let dev = DevT::new(spec.major.unwrap_or(7), spec.minor.unwrap_or(index));
        let mut device = Device::new(spec.name.clone(), dev, index, spec.sectors, spec.fill);
        device.io_min = spec.io_min;
        device.latency = spec.latency;
        for &(start, len) in &spec.bad_sectors {
            device.bad_sectors.insert(start, len);
        }
        device.freeze_fails = spec.freeze_fails;
        device.io_errors = io_windows(seed, spec);
        if spec.write_cache {
            device.cache = crate::cache::WriteCache::enabled(seed, &spec.name);
        }
        device.disk_faults = crate::disk_faults::DiskFaults::new(seed, &spec.name, &spec.faults);
        for rule in &spec.data_faults {
            sim.data_faults.borrow_mut().add(dev, rule.clone());
        }
        sim.add_device(device);
        sim.oracle.borrow_mut().add_device(dev, index, spec.fill);
        sim.durability
            .borrow_mut()
            .add_device(dev, index, spec.fill);
        sim.storage.borrow_mut().add_device(dev, index);
        if spec.fs {
            let mut model = FsModel::new(spec.fs_ignores_freeze);
            model.journal = spec.journal;
            sim.fs.borrow_mut().insert(dev, model);
        }
        map.insert(spec.name.clone(), dev);
    }
    map
}

fn apply_faults(sim: &Rc<Sim>, scenario: &Scenario) {
    let mut plan = sim.faults.borrow_mut();
    for (site, how) in &scenario.faults.alloc {
        plan.fail_alloc(site.clone(), how.clone());
    }
    plan.bio_error_ppm = scenario.faults.bio_error_ppm;
    plan.add_disk_fail = scenario.faults.add_disk_fail;
    sim.mm.memory_limit.set(scenario.memory_limit);
}

fn report_hang(sim: &Rc<Sim>) {
    let bounds: Bounds = sim.sched.bounds.get();
    let lockdep = sim.lockdep.borrow();
    let waiting: Vec<String> = lockdep
        .waiting
        .iter()
        .map(|(task, (class, mode))| {
            format!("'{}' waits for {class} ({mode:?})", sim.task_name(*task))
        })
        .collect();
    // Group holders: a lock class held many times by one task is one line;
    // a holder that exited (a leaked semaphore) is named by its id.
    let mut held: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for (task, class) in lockdep.held_report() {
        let name = sim.task_name(task);
        let name = if name.is_empty() {
            format!("exited task #{task}")
        } else {
            format!("'{name}'")
        };
        *held.entry((name, class)).or_default() += 1;
    }
    let held: Vec<String> = held
        .into_iter()
        .map(|((name, class), n)| match n {
            1 => format!("{name} holds {class}"),
            n => format!("{name} holds {n} x {class}"),
        })
        .collect();
    drop(lockdep);
    let none = |list: Vec<String>, empty: &str| {
        if list.is_empty() {
            empty.to_string()
        } else {
            list.join(", ")
        }
    };
    sim.fail(
        "liveness",
        format!(
            "hang: processes {:?} did not finish (at {} ns, {} polls; bounds {} ns, {} polls); {}; {}",
            sim.live_processes(),
            sim.now(),
            sim.polls(),
            bounds.max_virtual_ns,
            bounds.max_polls,
            none(waiting, "no lock waits"),
            none(held, "no locks held"),
        ),
    );
}

/// The verdict. A bug scenario (`expect_failure`) passes when the run
/// failed and the named checker is among the failures; that failure is the
/// expected outcome. Otherwise engine failures fail the run, and
/// undetected corruption caused by a declared device fault fails it or
/// not as `device_fault_corruption` says. Sets each failure's category.
fn verdict(
    scenario: &Scenario,
    failures: &mut [Failure],
    options: &RunOptions,
) -> (bool, Option<String>, Option<Failure>) {
    if let Some(bench) = failures.iter_mut().find(|f| f.checker == BENCH_CHECKER) {
        // The bench broke: whatever the engine did, this run proves nothing.
        bench.category = Category::BenchError;
        return (false, Some(bench.message.clone()), None);
    }
    let expected = scenario
        .expect_failure
        .as_ref()
        .filter(|_| !options.without_quirks);
    let Some(expected) = expected else {
        return fault_verdict(scenario.device_fault_corruption, failures);
    };
    // A failure a declared fault explains proves nothing about the quirk.
    let caught = failures.iter_mut().find(|f| {
        f.category != Category::DeclaredFault
            && f.checker == expected.checker
            && f.message.contains(&expected.contains)
    });
    match caught {
        Some(failure) => {
            failure.category = Category::Expected;
            (true, None, Some(failure.clone()))
        }
        None => {
            let note = format!(
                "expected the '{}' checker to fail this run (message containing {:?}); it did not",
                expected.checker, expected.contains
            );
            (false, Some(note), None)
        }
    }
}

/// A scenario with no expected bug: engine failures fail it; failures a
/// declared fault caused are judged by `device_fault_corruption`.
fn fault_verdict(
    policy: DeviceFaultCorruption,
    failures: &[Failure],
) -> (bool, Option<String>, Option<Failure>) {
    let engine = failures.iter().any(|f| f.category == Category::Engine);
    let by_fault = failures
        .iter()
        .filter(|f| f.category == Category::DeclaredFault)
        .count();
    let note = match (engine, by_fault, policy) {
        (true, _, _) => return (false, None, None),
        (false, 0, DeviceFaultCorruption::Expected) => {
            "expected undetected corruption caused by a device fault \
             (device_fault_corruption: Expected); no read returned wrong data"
                .to_string()
        }
        (false, n, DeviceFaultCorruption::Fails) if n > 0 => format!(
            "{n} reads returned undetected corruption caused by a device fault; the scenario \
             does not allow it (device_fault_corruption: Fails)"
        ),
        _ => return (true, None, None),
    };
    (false, Some(note), None)
}

fn outcome(scenario: &Scenario, seed: u64, run: &Rc<Run>, options: &RunOptions) -> Outcome {
    let sim = &run.sim;
    let mut failures = sim.failures();
    let (passed, verdict_note, caught_by) = verdict(scenario, &mut failures, options);
    let verdict = Outcome {
        name: scenario.name.clone(),
        seed,
        digest: String::new(),
        failures,
        passed,
        verdict_note,
        caught_by,
        virtual_ns: sim.now(),
        steps: run.steps_run.get(),
        trace_events: sim.trace.borrow().count(),
        metrics: BTreeMap::new(),
        recent_trace: Vec::new(),
        log: Vec::new(),
        sleep_sites: BTreeMap::new(),
        series: Default::default(),
    };
    if options.verdict_only {
        return verdict;
    }
    with_report(verdict, run)
}

/// `outcome` with what only a report reads: the trace's digest and last
/// events, the metrics, the engine's log, the sleep sites and the series.
fn with_report(verdict: Outcome, run: &Rc<Run>) -> Outcome {
    let sim = &run.sim;
    let trace = sim.trace.borrow();
    Outcome {
        digest: trace.digest(),
        metrics: metrics(run),
        recent_trace: trace.recent().cloned().collect(),
        log: engine_log(sim),
        sleep_sites: sim
            .sched
            .sleep_sites
            .borrow()
            .iter()
            .map(|(site, n)| (site.to_string(), *n))
            .collect(),
        series: sim.series.borrow().finish(
            sim.now(),
            &series_names(run),
            run.params.low_space_threshold(),
        ),
        ..verdict
    }
}

/// What the run and its checkers counted, by name.
fn metrics(run: &Run) -> BTreeMap<String, f64> {
    let sim = &run.sim;
    let oracle = sim.oracle.borrow();
    let mut metrics = BTreeMap::new();
    metrics.insert("polls".to_string(), sim.polls() as f64);
    metrics.insert(
        "peak_engine_bytes".to_string(),
        sim.mm.peak_alloc_bytes.get() as f64,
    );
    metrics.insert(
        "reclaim_slowpaths".to_string(),
        sim.reclaim.borrow().slowpaths as f64,
    );
    metrics.insert(
        "image_reads_checked".to_string(),
        oracle.image_reads_checked as f64,
    );
    metrics.insert(
        "image_sectors_checked".to_string(),
        oracle.sectors_checked as f64,
    );
    metrics.extend(sim.cbt.borrow().metrics());
    metrics.insert(
        "fs_sectors_judged".to_string(),
        sim.fs_take.borrow().sectors_judged as f64,
    );
    coverage_metrics(&mut metrics, sim, &oracle);
    metrics.extend(sim.storage.borrow().metrics());
    metrics.extend(sim.durability.borrow().metrics());
    metrics.insert(
        "user_mapped_peak_bytes".to_string(),
        run.user.peak_bytes() as f64,
    );
    metrics
}

/// Devices, image disks and snapshots as the scenario names them, for the plots.
fn series_names(run: &Run) -> crate::series::Names {
    let mut names = crate::series::Names::default();
    for (name, dev) in &run.devices {
        names.devices.insert(*dev, name.clone());
    }
    for (name, snap) in run.snapshots.borrow().iter() {
        names.snapshots.insert(snap.id, name.clone());
        for (orig, image) in &snap.images {
            let orig = names.devices.get(orig).cloned().unwrap_or(orig.to_string());
            names
                .devices
                .insert(*image, format!("image of {orig} ({name})"));
        }
    }
    names
}

/// The checkers' coverage counts: how much each one judged, so a run
/// that passes having checked nothing shows it.
fn coverage_metrics(metrics: &mut BTreeMap<String, f64>, sim: &Sim, oracle: &Oracle) {
    let counts = [
        ("original_sectors_checked", oracle.original_sectors_checked),
        ("original_reads_checked", oracle.original_reads_checked),
        ("image_errors_excused", oracle.image_errors_excused),
        ("ioctls_judged", sim.lifecycle.borrow().judged),
        ("faults_injected", sim.injected.borrow().count() as u64),
        (
            "device_damage_recorded",
            oracle.device_damage.damaged() as u64,
        ),
        (
            "device_fault_sectors_explained",
            oracle.device_damage.sectors_explained,
        ),
    ];
    for (name, count) in counts {
        metrics.insert(name.to_string(), count as f64);
    }
}

/// The last lines of the engine's log, with their times.
fn engine_log(sim: &Sim) -> Vec<String> {
    let lines = sim.log_lines();
    let skip = lines.len().saturating_sub(100);
    lines
        .into_iter()
        .skip(skip)
        .map(|(t, line)| format!("{t:>14} {line}"))
        .collect()
}

/// A device's `io_errors` windows, each with its own fault stream (drawn
/// from only by a window with `per_million`, so others draw nothing).
fn io_windows(seed: u64, spec: &super::model::DeviceSpec) -> Vec<crate::faults::IoWindow> {
    let windows = spec.io_errors.iter().enumerate();
    windows
        .map(|(i, window)| {
            let stream = SimRng::child(seed, &format!("io-errors/{}/{i}", spec.name));
            crate::faults::IoWindow::new(window.clone(), stream)
        })
        .collect()
}

/// One recent trace event as a report line: its time, right-aligned, then
/// the event.
pub fn recent_line((time, event): &(u64, TraceEvent)) -> String {
    format!("{time:>14} {event}")
}

/// A step's result against its expectation.
pub(super) fn check_expect(expect: &Expect, result: Result<i64, Errno>) -> Result<(), StepError> {
    let message = match (expect, result) {
        (Expect::Any, _) | (Expect::Ok, Ok(_)) => return Ok(()),
        (Expect::Ok, Err(e)) => format!("expected success, got {e}"),
        (Expect::Err(name), Err(e)) if e.name() == name => return Ok(()),
        (Expect::Err(name), Err(e)) => format!("expected {name}, got {e}"),
        (Expect::Err(name), Ok(v)) => format!("expected {name}, got success ({v})"),
    };
    let cause = Cause::Unexpected {
        expected: expect.clone(),
        got: result,
    };
    Err(StepError::new(cause, message))
}

/// A user IO of a step failed: `what: E`.
pub(super) fn io_failed(op: IoOp, got: Errno, what: impl std::fmt::Display) -> StepError {
    StepError::new(Cause::Io { op, got }, format!("{what}: {got}"))
}

impl Run {
    /// `insmod`: a fresh module instance on the sim's kernel.
    /// `insmod`. A failed init leaves no control device: ioctls then get
    /// -ENODEV, and the resource checks see whatever init did not undo.
    fn load_module(&self) {
        let kernel = Rc::new(SimKernel(self.sim.clone()));
        match Module::init(kernel, self.params.clone(), self.quirks) {
            Ok(module) => {
                self.loaded.borrow_mut().push(Rc::downgrade(&module));
                *self.module.borrow_mut() = Some(module);
            }
            Err(e) => {
                self.sim.record(TraceEvent::Warn {
                    msg: format!("insmod blksnap failed: {e}"),
                });
                *self.module.borrow_mut() = None;
            }
        }
    }

    /// The end of the run, after the verdict: the sim drops its tasks,
    /// timers, filters and disks, and each module that is still alive (not
    /// unloaded, or unloaded with snapshots B-SNAP-1 lost) lets go of its
    /// snapshot lists, which point back at it. Without this every such run
    /// stayed allocated for the life of the process.
    fn power_off(&self) {
        self.sim.power_off();
        *self.module.borrow_mut() = None;
        for module in self.loaded.take().iter().filter_map(Weak::upgrade) {
            crate::kernel::free_module_globals(&module);
        }
    }

    pub(super) fn module(&self) -> Option<Rc<Module>> {
        self.module.borrow().clone()
    }

    /// Run `steps`, each at `prefix` and its index (the `1.0.2` of the
    /// trace and the messages); `parent` is the same path as numbers.
    pub(super) fn steps<'a>(
        self: &'a Rc<Self>,
        steps: &'a [Step],
        prefix: &'a str,
        parent: &'a [usize],
    ) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            let mut path = parent.to_vec();
            path.push(0);
            for (i, step) in steps.iter().enumerate() {
                if let Some(last) = path.last_mut() {
                    *last = i;
                }
                if self.sim.current_killed() {
                    // A process that got SIGKILL runs no further steps.
                    return;
                }
                if self.out_of_budget() {
                    return;
                }
                let at = step_place(prefix, i);
                // Only a full run's trace reads the text.
                self.sim.record_with(|| TraceEvent::Step {
                    index: self.steps_run.get(),
                    what: step_text(&at, step),
                });
                self.steps_run.set(self.steps_run.get() + 1);
                let result = self.step(step, &at, &path).await;
                self.unmap_step_memory();
                if let Err(error) = result {
                    self.step_failed(step, &at, &path, error);
                }
            }
        })
    }

    /// Record a step's failure, with what failed as types.
    fn step_failed(&self, step: &Step, at: &str, path: &[usize], error: StepError) {
        let message = format!("step {at} ({}): {}", step.kind(), error.message);
        let failure = StepFailure {
            path: path.to_vec(),
            step: step.kind(),
            cause: error.cause,
        };
        self.sim.fail_step("expect", message, failure);
    }

    /// True once the run spent its work budget (steps, waits inside a
    /// step, sectors of user IO): the first time, the run fails
    /// ("liveness") and every process stops taking steps, so a hostile
    /// scenario costs the host a bounded time and memory. Inlined (a
    /// workload asks before each op); the failure is out of line.
    #[inline(always)]
    pub(super) fn out_of_budget(&self) -> bool {
        if self.over_budget.get() {
            return true;
        }
        let steps = self.steps_run.get().saturating_add(self.waits.get());
        let (read, written) = (self.sectors_read.get(), self.sectors_written.get());
        let b = self.budget;
        let mapped = self.user.total_bytes();
        if steps < b.steps
            && read < b.read_sectors
            && written < b.written_sectors
            && mapped < b.mapped_bytes
        {
            return false;
        }
        self.budget_spent(steps, read, written, mapped)
    }

    /// `out_of_budget` the first time: the run fails.
    #[cold]
    #[inline(never)]
    fn budget_spent(&self, steps: u64, read: u64, written: u64, mapped: u64) -> bool {
        let b = self.budget;
        self.over_budget.set(true);
        self.sim.fail(
            "liveness",
            format!(
                "work budget spent: {steps} steps and waits (budget {}), {read} sectors read \
                 (budget {}), {written} sectors written (budget {}), {mapped} bytes of ioctl \
                 arguments mapped (budget {}): the run is stopped",
                b.steps, b.read_sectors, b.written_sectors, b.mapped_bytes
            ),
        );
        true
    }

    /// Charge one wait of a loop that runs inside one step.
    pub(super) fn charge_wait(&self) {
        self.waits.set(self.waits.get().saturating_add(1));
    }

    /// Charge sectors of user IO (verification reads too: a Repeat of
    /// VerifyImage on a large image reads billions of sectors).
    pub(super) fn charge_sectors(&self, sectors: u64, write: bool) {
        let counter = if write {
            &self.sectors_written
        } else {
            &self.sectors_read
        };
        counter.set(counter.get().saturating_add(sectors));
    }

    /// Map an ioctl argument for the current process; it is unmapped when
    /// the step ends (`unmap_step_memory`).
    pub(super) fn map_user(&self, bytes: Vec<u8>) -> u64 {
        let owner = self.sim.current_task().unwrap_or(0);
        self.user.map_owned(owner, bytes, false)
    }

    pub(super) fn map_user_read_only(&self, bytes: Vec<u8>) -> u64 {
        let owner = self.sim.current_task().unwrap_or(0);
        self.user.map_owned(owner, bytes, true)
    }

    /// Unmap what the current process mapped for its last step: a run of
    /// millions of ioctls then holds one step's arguments at a time.
    pub(super) fn unmap_step_memory(&self) {
        let owner = self.sim.current_task().unwrap_or(0);
        self.user.unmap_owned_by(owner);
    }

    pub(super) fn dev(&self, name: &str) -> DevT {
        if let Some(dev) = self.devices.get(name) {
            return *dev;
        }
        let (major, minor) = super::load::parse_dev_number(name).unwrap_or((0, 0));
        DevT::new(major, minor)
    }

    pub(super) fn record(&self, snapshot: &str) -> SnapRecord {
        self.snapshots
            .borrow()
            .get(snapshot)
            .cloned()
            .unwrap_or_default()
    }

    /// The image of `orig` in the snapshot named `snapshot`, looked up in
    /// place (no copy of the record).
    pub(super) fn image_of(&self, snapshot: &str, orig: DevT) -> Option<DevT> {
        let snapshots = self.snapshots.borrow();
        snapshots.get(snapshot)?.images.get(&orig).copied()
    }

    /// A CREATE named `snapshot`. A live snapshot of the same name is kept
    /// under a hidden name, so the teardown still drains and destroys it.
    pub(super) fn created(&self, snapshot: &str, id: [u8; 16]) {
        let record = SnapRecord {
            id,
            ..Default::default()
        };
        let mut snapshots = self.snapshots.borrow_mut();
        let Some(old) = snapshots.insert(snapshot.to_string(), record) else {
            return;
        };
        if old.destroyed {
            return;
        }
        let hidden = (1..)
            .map(|n| format!("{snapshot}#{n}"))
            .find(|k| !snapshots.contains_key(k));
        if let Some(hidden) = hidden {
            snapshots.insert(hidden, old);
        }
    }

    /// The snapshot with this id is gone, under whatever name the
    /// scenario knows it now (a CREATE of its name during the DESTROY
    /// moved it to a hidden one; finding f13c).
    pub(super) fn destroyed(&self, id: [u8; 16]) {
        self.update_record_of(id, |record| record.destroyed = true);
    }

    /// A DESTROY of the snapshot with this id begins (`true`) or failed
    /// (`false`).
    pub(super) fn destroying(&self, id: [u8; 16], begun: bool) {
        self.update_record_of(id, |record| record.destroying = begun);
    }

    /// Change the record of the snapshot with this id, if the scenario
    /// created one. A never-created name has the all-zero id, which no
    /// record holds.
    fn update_record_of(&self, id: [u8; 16], change: impl FnOnce(&mut SnapRecord)) {
        let mut snapshots = self.snapshots.borrow_mut();
        if let Some(record) = snapshots.values_mut().find(|r| r.id == id) {
            change(record);
        }
    }

    /// After a TAKE: tell the oracle which image shows which original.
    pub(super) fn bind_images(&self, id: [u8; 16], pairs: Vec<(DevT, DevT)>, start: u64, end: u64) {
        let destroying = self.destroying_id(id);
        let now = self.sim.now();
        let mut oracle = self.sim.oracle.borrow_mut();
        for &(orig, image) in &pairs {
            oracle.bind_image(image, orig, (start, end), id);
            if destroying {
                // A DESTROY under way since before the images were known.
                oracle.image_going(image, now);
            }
            let capacity = oracle.image_capacity(image).unwrap_or(0);
            oracle.set_chunk_bound(image, self.chunk_sectors(orig, capacity));
            self.sim.storage.borrow_mut().bind_image(image, orig);
        }
        drop(oracle);
        self.update_record_of(id, |record| record.images = pairs.into_iter().collect());
    }

    /// Whether a DESTROY of the snapshot with this id is under way, under
    /// whatever name the scenario knows it now.
    pub(super) fn destroying_id(&self, id: [u8; 16]) -> bool {
        let snapshots = self.snapshots.borrow();
        snapshots.values().any(|r| r.id == id && r.destroying)
    }

    /// The chunk size the spec's sizing rule (5.1) gives for an original
    /// of `capacity` sectors, from the module parameters the scenario set:
    /// user-visible knobs, not engine state. A SetParam step that changes
    /// them later is not followed.
    fn chunk_sectors(&self, orig: DevT, capacity: u64) -> u64 {
        let io_min = self
            .sim
            .blk
            .devices
            .borrow()
            .get(&orig)
            .map_or(512, |d| u64::from(d.io_min));
        let mut shift = self.params.chunk_minimum_shift.clamp(9, 62);
        while shift < 62
            && (capacity.div_ceil(1 << (shift - 9)) > self.params.chunk_maximum_count
                || (1u64 << (shift - 9)) < io_min / 512)
        {
            shift += 1;
        }
        1 << (shift - 9)
    }

    pub(super) fn snapshot_name(&self, id: &[u8]) -> String {
        self.snapshots
            .borrow()
            .iter()
            .find(|(_, r)| r.id[..] == *id)
            .map_or_else(
                // An id the scenario never named: the standard hyphenated form.
                || match uuid::Uuid::from_slice(id) {
                    Ok(u) => u.hyphenated().to_string(),
                    Err(_) => format!("{id:02x?}"),
                },
                |(name, _)| name.clone(),
            )
    }

    /// `count` stamps never used before, counting up: one run, so a block
    /// write carries them with no `Vec` built, collected and cut into runs
    /// (issue 10: ~150-200 instructions per write).
    pub(super) fn fresh_stamps(&self, count: u64) -> blksnap_core::kernel::Stamps {
        let first = self.next_stamp.get();
        self.next_stamp.set(first + count);
        blksnap_core::kernel::Stamps::counting(first, count)
    }

    async fn step(self: &Rc<Self>, step: &Step, at: &str, path: &[usize]) -> Result<(), StepError> {
        match step {
            Step::Version { fault, expect } => self.version(fault.as_ref(), expect).await,
            Step::Create {
                snapshot,
                devices,
                fault,
                expect,
            } => self.create(snapshot, devices, fault.as_ref(), expect).await,
            Step::Append {
                snapshot,
                device,
                ranges,
                fault,
                expect,
            } => {
                self.append(snapshot, device, ranges, fault.as_ref(), expect)
                    .await
            }
            Step::Take {
                snapshot,
                fault,
                expect,
            } => self.take(snapshot, fault.as_ref(), expect).await,
            Step::Destroy {
                snapshot,
                fault,
                expect,
            } => self.destroy(snapshot, fault.as_ref(), expect).await,
            Step::Collect {
                expect_snapshots,
                expect_count,
                fault,
                expect,
            } => {
                self.collect(
                    expect_snapshots.as_deref(),
                    *expect_count,
                    fault.as_ref(),
                    expect,
                )
                .await
            }
            Step::CollectImages {
                snapshot,
                expect_count,
                fault,
                expect,
            } => self
                .collect_images(snapshot, *expect_count, fault.as_ref(), expect)
                .await
                .map(|_| ()),
            Step::WaitEvent {
                snapshot,
                timeout_ms,
                fault,
                expect,
            } => {
                self.wait_event(snapshot, *timeout_ms, fault.as_ref(), expect)
                    .await
            }
            Step::Ioctl { cmd, arg, expect } => self.raw_ioctl(*cmd, arg, expect).await,
            Step::TrackerRemove {
                device,
                fault,
                expect,
            } => self.tracker_remove(device, fault.as_ref(), expect).await,
            Step::TrackerCollect {
                expect_count,
                expect_entries,
                fault,
                expect,
            } => {
                self.tracker_collect(
                    *expect_count,
                    expect_entries.as_deref(),
                    fault.as_ref(),
                    expect,
                )
                .await
            }
            Step::ReadCbtMap {
                device,
                offset,
                length,
                save,
                same_as,
                expect_bytes,
                expect_len,
                fault,
                expect,
            } => {
                self.read_cbt_map(
                    device,
                    *offset,
                    *length,
                    save.as_deref(),
                    same_as.as_deref(),
                    expect_bytes,
                    *expect_len,
                    fault.as_ref(),
                    expect,
                )
                .await
            }
            Step::MarkDirty {
                target,
                ranges,
                fault,
                expect,
            } => {
                self.mark_dirty(target, ranges, fault.as_ref(), expect)
                    .await
            }
            // Here, not in other_step: a workload's every op is polled
            // through one future less (issue 10).
            Step::Workload(workload) => self.workload(workload).await,
            _ => self.other_step(step, at, path).await,
        }
    }

    /// Steps that are not ioctls.
    async fn other_step(
        self: &Rc<Self>,
        step: &Step,
        at: &str,
        path: &[usize],
    ) -> Result<(), StepError> {
        match step {
            Step::Write {
                target,
                sector,
                sectors,
                repeat,
                stride,
                pause_us,
                nowait,
                expect,
            } => {
                let stride = stride.unwrap_or(*sectors);
                for i in 0..*repeat {
                    if self.out_of_budget() {
                        break;
                    }
                    let at_sector = sector.saturating_add(i.saturating_mul(stride));
                    let result = self.write(target, at_sector, *sectors, *nowait).await;
                    check_expect(expect, result.map(|()| 0))
                        .map_err(|e| e.prefixed(format_args!("write at {at_sector}: ")))?;
                    if *pause_us > 0 {
                        self.sim.sleep(pause_us.saturating_mul(1000)).await;
                    }
                }
                Ok(())
            }
            Step::Read {
                target,
                sector,
                sectors,
                expect,
            } => self.read_step(target, *sector, *sectors, expect).await,
            Step::VerifyImage {
                snapshot,
                device,
                expect,
            } => self.verify_image(snapshot, device, expect).await,
            Step::VerifyOriginal { device } => self.verify_original(device).await,
            Step::Concurrent(branches) => {
                self.concurrent(branches, at, path).await;
                Ok(())
            }
            Step::Sleep { ms } => {
                self.sim.sleep(ms.saturating_mul(1_000_000)).await;
                Ok(())
            }
            Step::Sync { device } => {
                fs::writeback(&self.sim, self.dev(device)).await;
                Ok(())
            }
            Step::Freeze { device } => fs::freeze_bdev(&self.sim, self.dev(device), false)
                .await
                .map_err(|e| io_failed(IoOp::Freeze, e, "freeze failed")),
            Step::Thaw { device } => fs::thaw_bdev(&self.sim, self.dev(device))
                .map_err(|e| io_failed(IoOp::Thaw, e, "thaw failed")),
            Step::RemoveDevice { device } => {
                self.sim.remove_device(self.dev(device));
                Ok(())
            }
            Step::SetParam {
                name,
                value,
                expect,
            } => self.set_param(name, *value, expect),
            Step::Resize { device, sectors } => {
                self.sim.resize_device(self.dev(device), *sectors);
                Ok(())
            }
            Step::Timed { max_ms, steps } => {
                let start = self.sim.now();
                self.steps(steps, &format!("{at}."), path).await;
                let took = self.sim.now().saturating_sub(start);
                if took > max_ms.saturating_mul(1_000_000) {
                    self.sim.fail(
                        "latency",
                        format!(
                            "steps {at}.* took {} ms, more than {max_ms} ms",
                            took / 1_000_000
                        ),
                    );
                }
                Ok(())
            }
            Step::Kill { sibling } => {
                // This step runs in branch `P.b` of the Concurrent step `P`
                // (its path is `P.b.i`); the sibling is `P.sibling`.
                let parent = at.rsplitn(3, '.').nth(2).unwrap_or("");
                let name = format!("branch {parent}.{sibling}");
                match self.sim.process_named(&name) {
                    Some(task) => {
                        self.sim.kill(task);
                        Ok(())
                    }
                    None => Err(format!("no running process '{name}'").into()),
                }
            }
            Step::Repeat { times, steps } => {
                let mut rounds = path.to_vec();
                rounds.push(0);
                for round in 0..*times {
                    if let Some(last) = rounds.last_mut() {
                        *last = round as usize;
                    }
                    self.steps(steps, &format!("{at}.r{round}."), &rounds).await;
                }
                Ok(())
            }
            Step::ExpectMedia {
                device,
                sector,
                sectors,
                content,
            } => self
                .expect_media(device, *sector, *sectors, content)
                .map_err(StepError::from),
            Step::Stretch { .. } => self.stretch_step(step).await,
            Step::Unload => {
                self.unload().await;
                Ok(())
            }
            Step::Load => {
                if self.module().is_some() {
                    return Err("insmod: the module is already loaded (EEXIST)".into());
                }
                self.load_module();
                Ok(())
            }
            Step::FullBackup {
                snapshot,
                device,
                backup,
            } => self.full_backup(snapshot, device, backup).await,
            Step::IncrementalBackup {
                snapshot,
                device,
                backup,
                expect_full,
            } => {
                self.incremental_backup(snapshot, device, backup, *expect_full)
                    .await
            }
            Step::CompareBackup {
                snapshot,
                device,
                backup,
            } => self.compare_backup(snapshot, device, backup).await,
            Step::PowerLoss {
                during,
                after_us,
                jitter_us,
            } => {
                self.power_loss(during, *after_us, *jitter_us, at, path)
                    .await;
                Ok(())
            }
            Step::Reboot => {
                self.reboot().await;
                Ok(())
            }
            Step::Flush { device, expect } => self.flush(device, expect).await,
            _ => unreachable!("ioctl and workload steps are dispatched in step()"),
        }
    }

    fn expect_media(
        &self,
        device: &str,
        sector: u64,
        sectors: u64,
        content: &super::model::Media,
    ) -> Result<(), String> {
        let dev = self.dev(device);
        // The loader bounds both; checked again, as a bench error, so no
        // file can make the runner overflow or read without end.
        let end = sector
            .checked_add(sectors)
            .filter(|_| sectors <= super::load::limits::MAX_IO_SECTORS)
            .ok_or(format!(
                "ExpectMedia range {sector}+{sectors} out of bounds"
            ))?;
        let got = self
            .sim
            .blk
            .devices
            .borrow()
            .get(&dev)
            .map(|d| d.read(sector, sectors).to_vec())
            .ok_or(format!("no device {device}"))?;
        if self.media_matches(&got, content) {
            return Ok(());
        }
        Err(format!(
            "{device} sectors {sector}..{end} do not hold {content:?} (first stamp {:#x})",
            got.first().copied().unwrap_or(0)
        ))
    }

    fn media_matches(&self, got: &[Stamp], content: &super::model::Media) -> bool {
        use super::model::Media;
        match content {
            Media::Zero => got.iter().all(|s| *s == 0),
            Media::Pattern(device, from) => {
                let index = self
                    .sim
                    .blk
                    .devices
                    .borrow()
                    .get(&self.dev(device))
                    .map(|d| d.index);
                index.is_some_and(|index| {
                    got.iter().enumerate().all(|(i, s)| {
                        let sector = from.saturating_add(i as u64);
                        *s == crate::device::pattern_stamp(index, sector)
                    })
                })
            }
            Media::OneOf(list) => list.iter().any(|m| self.media_matches(got, m)),
        }
    }

    fn set_param(&self, name: &str, value: i64, expect: &Expect) -> Result<(), StepError> {
        let module = self.module().ok_or("the module is not loaded")?;
        let validate = !module.quirks.param_1;
        let result = module.params.borrow_mut().set(name, value, validate);
        // Events rule 7 knows each value the low-free-space events may ask for.
        let minimum = module.params().diff_storage_minimum;
        let now = self.sim.now();
        self.sim
            .lifecycle
            .borrow_mut()
            .events
            .requests
            .minimum(now, minimum);
        check_expect(expect, result.map(|()| 0))
    }

    async fn concurrent(self: &Rc<Self>, branches: &[Vec<Step>], at: &str, path: &[usize]) {
        let mut done = Vec::new();
        for (b, branch) in branches.iter().enumerate() {
            let (finished, finish) = blksnap_core::kernel::completion();
            let run = self.clone();
            let steps = branch.clone();
            let prefix = format!("{at}.{b}.");
            let parent = [path, &[b]].concat();
            self.sim.spawn_process(
                format!("branch {at}.{b}"),
                Box::pin(async move {
                    run.steps(&steps, &prefix, &parent).await;
                    finish.complete(());
                }),
            );
            done.push(finished);
        }
        for finished in done {
            finished.await;
        }
    }

    /// `rmmod`: the module's exit path, then no module.
    pub(super) async fn unload(&self) {
        if let Some(module) = self.module() {
            let now = self.sim.now();
            self.sim.oracle.borrow_mut().all_images_going(now);
            blksnap_core::module::exit(&module).await;
            self.sim.lifecycle.borrow_mut().unloaded();
        }
        // The exit freed every snapshot left, with its unread events.
        self.forget_module();
    }

    /// No module (power went away, or it was unloaded), and every
    /// snapshot is gone with it. Their unread events went too: the oracle
    /// stops judging failed image reads that only those events could
    /// excuse.
    pub(super) fn forget_module(&self) {
        *self.module.borrow_mut() = None;
        let mut snapshots = self.snapshots.borrow_mut();
        let mut storage = self.sim.storage.borrow_mut();
        let mut lost = Vec::new();
        for record in snapshots.values_mut().filter(|r| !r.destroyed) {
            record.destroyed = true;
            storage.destroyed(record.id);
            lost.push(record.id);
        }
        let now = self.sim.now();
        self.sim.oracle.borrow_mut().events_lost(lost, now);
    }

    /// Destroy what the scenario left, then unload the module.
    async fn teardown(&self) {
        let live: Vec<String> = self
            .snapshots
            .borrow()
            .iter()
            .filter(|(_, r)| !r.destroyed)
            .map(|(name, _)| name.clone())
            .collect();
        for name in live {
            let _ = self.destroy(&name, None, &Expect::Any).await;
        }
        self.unload().await;
    }
}

/// Load and run a file (for tests and the CLI).
pub fn run_file(path: &Path, options: &RunOptions) -> Result<Outcome, super::load::LoadError> {
    let scenario = super::load::load(path)?;
    Ok(run(&scenario, options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::model::ExpectedFailure;

    fn failure(checker: &str) -> Failure {
        Failure {
            checker: checker.into(),
            message: format!("{checker} message"),
            at_ns: 0,
            category: Category::Engine,
            step: None,
        }
    }

    /// A step's place is the prefix and the index as `format!` writes it.
    #[test]
    fn step_places_are_written_as_format_writes_them() {
        for index in [0, 7, 9, 10, 99, 100, 1234, usize::MAX] {
            assert_eq!(step_place("1.r2.", index), format!("1.r2.{index}"));
        }
    }

    /// A bench error fails the run even when the expected bug was caught.
    #[test]
    fn a_bench_error_is_never_a_pass() {
        let mut scenario: Scenario =
            ron::from_str("Scenario(name: \"b\", devices: [], steps: [])").expect("parses");
        scenario.expect_failure = Some(ExpectedFailure {
            checker: "oops".into(),
            contains: String::new(),
        });
        let options = RunOptions::default();
        let caught = verdict(&scenario, &mut [failure("oops")], &options);
        assert!(caught.0, "the control: the bug alone is a pass");
        let mut both = [failure("oops"), failure(BENCH_CHECKER)];
        let (passed, note, _) = verdict(&scenario, &mut both, &options);
        assert!(!passed);
        assert_eq!(note.as_deref(), Some("bench message"));
        assert_eq!(
            both[1].category,
            Category::BenchError,
            "no verdict on the engine"
        );
    }

    fn by_fault(checker: &str) -> Failure {
        Failure {
            category: Category::DeclaredFault,
            ..failure(checker)
        }
    }

    /// Failures a declared fault caused pass or fail as the scenario says;
    /// an engine failure always fails.
    #[test]
    fn device_fault_corruption_decides_the_fault_caused_failures_only() {
        use DeviceFaultCorruption::*;
        let cases = [
            (Fails, vec![], true),
            (Fails, vec![by_fault("point_in_time")], false),
            (Allowed, vec![by_fault("point_in_time")], true),
            (Allowed, vec![], true),
            (Expected, vec![by_fault("storage")], true),
            (Expected, vec![], false),
            (
                Allowed,
                vec![by_fault("point_in_time"), failure("lifecycle")],
                false,
            ),
            (
                Expected,
                vec![by_fault("point_in_time"), failure("lifecycle")],
                false,
            ),
        ];
        for (policy, failures, passes) in cases {
            let (passed, note, _) = fault_verdict(policy, &failures);
            assert_eq!(passed, passes, "{policy:?} {failures:?} {note:?}");
        }
        let (_, note, _) = fault_verdict(Fails, &[by_fault("point_in_time")]);
        assert!(note.unwrap().contains("caused by a device fault"));
    }

    /// A bug scenario's expected failure becomes the expected outcome; a
    /// failure a declared fault caused cannot stand in for it.
    #[test]
    fn only_an_engine_failure_catches_a_quirk() {
        let mut scenario: Scenario =
            ron::from_str("Scenario(name: \"b\", devices: [], steps: [])").expect("parses");
        scenario.expect_failure = Some(ExpectedFailure {
            checker: "point_in_time".into(),
            contains: String::new(),
        });
        let options = RunOptions::default();
        let mut failures = [by_fault("point_in_time")];
        assert!(!verdict(&scenario, &mut failures, &options).0);
        let mut failures = [by_fault("point_in_time"), failure("point_in_time")];
        let (passed, _, caught) = verdict(&scenario, &mut failures, &options);
        assert!(passed);
        assert_eq!(caught.unwrap().category, Category::Expected);
        assert_eq!(failures[0].category, Category::DeclaredFault);
        assert_eq!(failures[1].category, Category::Expected);
    }
}
