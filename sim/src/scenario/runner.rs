//! Running one scenario in a fresh simulated kernel, then judging it.
//!
//! The steps run in a scenario process (plus one process per branch of a
//! `Concurrent` step). Ioctls go through the v2 numbers and the `repr(C)`
//! argument structs in a simulated user address space, as a user program
//! would call them. After the steps, the teardown destroys what is left and
//! unloads the module, and the resource checks run.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use blksnap_core::kernel::{completion, Bio, DevT, Errno, LocalBoxFuture, Stamp};
use blksnap_core::uapi::*;
use blksnap_core::{ctrl, Module, Quirks};

use super::model::{EventExpect, Expect, Scenario, Step, Target, Workload};
use crate::block;
use crate::check::resources;
use crate::device::Device;
use crate::fs::{self, FsModel};
use crate::kernel::{Bounds, Failure, SchedPolicy, Sim, SimKernel};
use crate::rng::SimRng;
use crate::trace::TraceEvent;
use crate::user::UserSpace;

/// Largest image read in full by VerifyImage (2 GiB); larger images are
/// checked where they were written, plus random samples.
const VERIFY_FULL_LIMIT: u64 = 1 << 22;
const VERIFY_BIO_SECTORS: u64 = 1024;
const VERIFY_SAMPLES: u64 = 64;
/// How long background work may take to settle after the teardown.
const SETTLE_NS: u64 = 10_000_000_000;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub name: String,
    pub seed: u64,
    pub digest: String,
    pub failures: Vec<Failure>,
    pub virtual_ns: u64,
    pub steps: u64,
    pub trace_events: u64,
    pub metrics: BTreeMap<String, f64>,
    /// The last trace events, for a failure report.
    pub recent: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What the scenario knows of a snapshot it created.
#[derive(Clone, Default)]
struct SnapRecord {
    id: [u8; 16],
    /// original -> image
    images: BTreeMap<DevT, DevT>,
    destroyed: bool,
}

struct Run {
    sim: Rc<Sim>,
    module: Rc<Module>,
    user: UserSpace,
    devices: BTreeMap<String, DevT>,
    snapshots: RefCell<BTreeMap<String, SnapRecord>>,
    next_stamp: Cell<Stamp>,
    workload_rng: RefCell<SimRng>,
    steps_run: Cell<u64>,
}

/// Run a loaded scenario.
pub fn run(scenario: &Scenario, options: &RunOptions) -> Outcome {
    let seed = options.seed.unwrap_or(scenario.seed);
    let sim = Sim::new(seed);
    sim.policy.set(match scenario.scheduler {
        super::model::Scheduler::Random => SchedPolicy::Random,
        super::model::Scheduler::Priority(n) => SchedPolicy::Priority { change_points: n },
    });
    let devices = add_devices(&sim, scenario);
    apply_faults(&sim, scenario);
    let mut quirks = Quirks::default();
    for id in &scenario.quirks {
        // The loader checked every id already.
        let _ = quirks.enable(id);
    }
    let kernel = Rc::new(SimKernel(sim.clone()));
    let module = Module::new(kernel, scenario.params.clone(), quirks);
    let run = Rc::new(Run {
        sim: sim.clone(),
        module,
        user: UserSpace::default(),
        devices,
        snapshots: RefCell::new(BTreeMap::new()),
        next_stamp: Cell::new(1),
        workload_rng: RefCell::new(SimRng::child(seed, "workload")),
        steps_run: Cell::new(0),
    });
    let steps = scenario.steps.clone();
    let teardown = scenario.teardown;
    let main = run.clone();
    sim.spawn_process(
        format!("scenario {}", scenario.name),
        Box::pin(async move {
            main.steps(&steps, "").await;
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
    for message in sim.oracle.borrow().unexplained_image_errors() {
        sim.fail("point_in_time", message);
    }
    outcome(scenario, seed, &run)
}

fn add_devices(sim: &Rc<Sim>, scenario: &Scenario) -> BTreeMap<String, DevT> {
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
        sim.add_device(device);
        sim.oracle.borrow_mut().add_device(dev, index, spec.fill);
        if spec.fs {
            let fs = FsModel::new(spec.fs_ignores_freeze);
            sim.fs.borrow_mut().insert(dev, fs);
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
}

fn report_hang(sim: &Rc<Sim>) {
    let bounds: Bounds = sim.bounds.get();
    let waiting: Vec<String> = sim
        .lockdep
        .borrow()
        .waiting
        .iter()
        .map(|(task, (class, mode))| {
            format!("'{}' waits for {class} ({mode:?})", sim.task_name(*task))
        })
        .collect();
    let held: Vec<String> = sim
        .lockdep
        .borrow()
        .held_report()
        .into_iter()
        .map(|(task, class)| format!("'{}' holds {class}", sim.task_name(task)))
        .collect();
    sim.fail(
        "liveness",
        format!(
            "hang: processes {:?} did not finish (at {} ns, {} polls; bounds {} ns, {} polls); {}; {}",
            sim.live_processes(),
            sim.now(),
            sim.polls(),
            bounds.max_virtual_ns,
            bounds.max_polls,
            if waiting.is_empty() { "no lock waits".to_string() } else { waiting.join(", ") },
            if held.is_empty() { "no locks held".to_string() } else { held.join(", ") },
        ),
    );
}

fn outcome(scenario: &Scenario, seed: u64, run: &Rc<Run>) -> Outcome {
    let sim = &run.sim;
    let trace = sim.trace.borrow();
    let oracle = sim.oracle.borrow();
    let mut metrics = BTreeMap::new();
    metrics.insert("polls".to_string(), sim.polls() as f64);
    metrics.insert(
        "peak_engine_bytes".to_string(),
        sim.peak_alloc_bytes.get() as f64,
    );
    metrics.insert(
        "image_reads_checked".to_string(),
        oracle.image_reads_checked as f64,
    );
    metrics.insert(
        "image_sectors_checked".to_string(),
        oracle.sectors_checked as f64,
    );
    Outcome {
        name: scenario.name.clone(),
        seed,
        digest: trace.digest(),
        failures: sim.failures(),
        virtual_ns: sim.now(),
        steps: run.steps_run.get(),
        trace_events: trace.count(),
        metrics,
        recent: trace
            .recent()
            .map(|(t, e)| format!("{t:>14} {e}"))
            .collect(),
    }
}

/// A step's result against its expectation.
fn check_expect(expect: &Expect, result: Result<i64, Errno>) -> Result<(), String> {
    match (expect, result) {
        (Expect::Any, _) | (Expect::Ok, Ok(_)) => Ok(()),
        (Expect::Ok, Err(e)) => Err(format!("expected success, got {e}")),
        (Expect::Err(name), Err(e)) if e.name() == name => Ok(()),
        (Expect::Err(name), Err(e)) => Err(format!("expected {name}, got {e}")),
        (Expect::Err(name), Ok(v)) => Err(format!("expected {name}, got success ({v})")),
    }
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

impl Run {
    fn steps<'a>(self: &'a Rc<Self>, steps: &'a [Step], prefix: &'a str) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            for (i, step) in steps.iter().enumerate() {
                let at = format!("{prefix}{i}");
                self.sim.record(TraceEvent::Step {
                    index: self.steps_run.get(),
                    what: format!("{at} {}", step.kind()),
                });
                self.steps_run.set(self.steps_run.get() + 1);
                if let Err(message) = self.step(step, &at).await {
                    self.sim
                        .fail("expect", format!("step {at} ({}): {message}", step.kind()));
                }
            }
        })
    }

    fn dev(&self, name: &str) -> DevT {
        if let Some(dev) = self.devices.get(name) {
            return *dev;
        }
        let (major, minor) = super::load::parse_dev_number(name).unwrap_or((0, 0));
        DevT::new(major, minor)
    }

    fn record(&self, snapshot: &str) -> SnapRecord {
        self.snapshots
            .borrow()
            .get(snapshot)
            .cloned()
            .unwrap_or_default()
    }

    fn fresh_stamps(&self, count: u64) -> Vec<Stamp> {
        let first = self.next_stamp.get();
        self.next_stamp.set(first + count);
        (first..first + count).collect()
    }

    /// Call an ioctl with `arg` mapped in user memory; returns the result
    /// and the address, to read what the engine wrote back.
    async fn ioctl<T: UapiStruct>(&self, cmd: u32, arg: &T) -> (Result<i64, Errno>, u64) {
        let addr = self.user.map(arg.encode());
        let result = ctrl::ioctl(&self.module, cmd, addr, &self.user).await;
        let value = match result {
            Ok(v) => v,
            Err(e) => -i64::from(e.0),
        };
        self.sim.record(TraceEvent::Ioctl { cmd, result: value });
        (result, addr)
    }

    fn read_back<T: UapiStruct>(&self, addr: u64) -> Option<T> {
        T::decode(&self.user.read(addr, T::SIZE)?)
    }

    fn map_array<T: UapiStruct>(&self, items: &[T]) -> u64 {
        if items.is_empty() {
            // A zero-length array still needs an address that is not NULL.
            return self.user.map(vec![0; 1]);
        }
        self.user
            .map(items.iter().flat_map(UapiStruct::encode).collect())
    }

    async fn step(self: &Rc<Self>, step: &Step, at: &str) -> Result<(), String> {
        match step {
            Step::Version { expect } => self.version(expect).await,
            Step::Create {
                snapshot,
                devices,
                expect,
            } => self.create(snapshot, devices, expect).await,
            Step::Append {
                snapshot,
                device,
                ranges,
                expect,
            } => self.append(snapshot, device, ranges, expect).await,
            Step::Take { snapshot, expect } => self.take(snapshot, expect).await,
            Step::Destroy { snapshot, expect } => self.destroy(snapshot, expect).await,
            Step::Collect {
                expect_snapshots,
                expect,
            } => self.collect(expect_snapshots.as_deref(), expect).await,
            Step::CollectImages {
                snapshot,
                expect_count,
                expect,
            } => self
                .collect_images(snapshot, *expect_count, expect)
                .await
                .map(|_| ()),
            Step::WaitEvent {
                snapshot,
                timeout_ms,
                expect,
            } => self.wait_event(snapshot, *timeout_ms, expect).await,
            Step::Write {
                target,
                sector,
                sectors,
                nowait,
                expect,
            } => {
                let result = self.write(target, *sector, *sectors, *nowait).await;
                check_expect(expect, result.map(|()| 0))
            }
            Step::Read {
                target,
                sector,
                sectors,
                expect,
            } => {
                let result = self.read(target, *sector, *sectors).await;
                check_expect(expect, result.map(|_| 0))
            }
            Step::VerifyImage { snapshot, device } => self.verify_image(snapshot, device).await,
            Step::VerifyOriginal { device } => self.verify_original(device).await,
            Step::Workload(workload) => self.workload(workload).await,
            Step::Concurrent(branches) => {
                self.concurrent(branches, at).await;
                Ok(())
            }
            Step::Sleep { ms } => {
                self.sim.sleep(ms * 1_000_000).await;
                Ok(())
            }
            Step::Sync { device } => {
                fs::writeback(&self.sim, self.dev(device)).await;
                Ok(())
            }
            Step::Freeze { device } => fs::freeze_bdev(&self.sim, self.dev(device))
                .await
                .map_err(|e| format!("freeze failed: {e}")),
            Step::Thaw { device } => {
                fs::thaw_bdev(&self.sim, self.dev(device)).map_err(|e| format!("thaw failed: {e}"))
            }
            Step::RemoveDevice { device } => {
                self.sim.remove_device(self.dev(device));
                Ok(())
            }
        }
    }

    // --- ioctl steps ---------------------------------------------------------------------

    async fn version(&self, expect: &Expect) -> Result<(), String> {
        let (result, addr) = self
            .ioctl(IOCTL_BLK_SNAP_VERSION, &BlkSnapVersion::default())
            .await;
        check_expect(expect, result)?;
        if result.is_ok() {
            let got: Option<BlkSnapVersion> = self.read_back(addr);
            if got != Some(MODULE_VERSION) {
                return Err(format!("VERSION returned {got:?}"));
            }
        }
        Ok(())
    }

    async fn create(
        &self,
        snapshot: &str,
        devices: &[String],
        expect: &Expect,
    ) -> Result<(), String> {
        let devs: Vec<BlkSnapDev> = devices.iter().map(|d| blk_dev(self.dev(d))).collect();
        let arg = BlkSnapSnapshotCreate {
            count: devs.len() as u32,
            dev_id_array: self.map_array(&devs),
            ..Default::default()
        };
        let (result, addr) = self.ioctl(IOCTL_BLK_SNAP_SNAPSHOT_CREATE, &arg).await;
        if result.is_ok() {
            let out: BlkSnapSnapshotCreate =
                self.read_back(addr).ok_or("CREATE: struct unreadable")?;
            let record = SnapRecord {
                id: out.id.b,
                ..Default::default()
            };
            self.snapshots
                .borrow_mut()
                .insert(snapshot.to_string(), record);
        }
        check_expect(expect, result)
    }

    async fn append(
        &self,
        snapshot: &str,
        device: &str,
        ranges: &[(u64, u64)],
        expect: &Expect,
    ) -> Result<(), String> {
        let ranges: Vec<BlkSnapBlockRange> = ranges
            .iter()
            .map(|&(sector_offset, sector_count)| BlkSnapBlockRange {
                sector_offset,
                sector_count,
            })
            .collect();
        let arg = BlkSnapSnapshotAppendStorage {
            id: BlkSnapUuid {
                b: self.record(snapshot).id,
            },
            dev_id: blk_dev(self.dev(device)),
            count: ranges.len() as u32,
            ranges: self.map_array(&ranges),
        };
        let (result, _) = self
            .ioctl(IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE, &arg)
            .await;
        check_expect(expect, result)
    }

    async fn take(&self, snapshot: &str, expect: &Expect) -> Result<(), String> {
        let arg = BlkSnapSnapshotTake {
            id: BlkSnapUuid {
                b: self.record(snapshot).id,
            },
        };
        let start = self.sim.now();
        let (result, _) = self.ioctl(IOCTL_BLK_SNAP_SNAPSHOT_TAKE, &arg).await;
        let end = self.sim.now();
        check_expect(expect, result)?;
        if result.is_ok() {
            let pairs = self.collect_images(snapshot, None, &Expect::Ok).await?;
            let mut oracle = self.sim.oracle.borrow_mut();
            for &(orig, image) in &pairs {
                oracle.bind_image(image, orig, start, end);
            }
            if let Some(record) = self.snapshots.borrow_mut().get_mut(snapshot) {
                record.images = pairs.into_iter().collect();
            }
        }
        Ok(())
    }

    async fn destroy(&self, snapshot: &str, expect: &Expect) -> Result<(), String> {
        self.drain_events(snapshot).await;
        let arg = BlkSnapSnapshotDestroy {
            id: BlkSnapUuid {
                b: self.record(snapshot).id,
            },
        };
        let (result, _) = self.ioctl(IOCTL_BLK_SNAP_SNAPSHOT_DESTROY, &arg).await;
        if result.is_ok() {
            if let Some(record) = self.snapshots.borrow_mut().get_mut(snapshot) {
                record.destroyed = true;
            }
        }
        check_expect(expect, result)
    }

    /// Read every queued event, as a watcher would, so the oracle learns of
    /// corruption before the snapshot (and its queue) goes.
    async fn drain_events(&self, snapshot: &str) {
        let id = self.record(snapshot).id;
        for _ in 0..1024 {
            if self.wait_event_raw(id, 0).await.is_err() {
                return;
            }
        }
    }

    async fn collect(
        &self,
        expect_snapshots: Option<&[String]>,
        expect: &Expect,
    ) -> Result<(), String> {
        let (result, addr) = self
            .ioctl(
                IOCTL_BLK_SNAP_SNAPSHOT_COLLECT,
                &BlkSnapSnapshotCollect::default(),
            )
            .await;
        check_expect(expect, result)?;
        let Some(count) = self
            .read_back::<BlkSnapSnapshotCollect>(addr)
            .map(|c| c.count)
        else {
            return Err("COLLECT: struct unreadable".into());
        };
        let ids = vec![BlkSnapUuid::default(); count as usize];
        let arg = BlkSnapSnapshotCollect {
            count,
            ids: self.map_array(&ids),
        };
        let (result, _) = self.ioctl(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT, &arg).await;
        check_expect(expect, result)?;
        let Some(expected) = expect_snapshots else {
            return Ok(());
        };
        let got: Vec<String> = (0..count as u64)
            .filter_map(|i| self.user.read(arg.ids + i * 16, 16))
            .map(|b| self.snapshot_name(&b))
            .collect();
        if got != expected {
            return Err(format!("COLLECT listed {got:?}, expected {expected:?}"));
        }
        Ok(())
    }

    fn snapshot_name(&self, id: &[u8]) -> String {
        self.snapshots
            .borrow()
            .iter()
            .find(|(_, r)| r.id[..] == *id)
            .map_or_else(|| format!("{id:02x?}"), |(name, _)| name.clone())
    }

    /// COLLECT_IMAGES twice, as the library does: count, then the array.
    async fn collect_images(
        &self,
        snapshot: &str,
        expect_count: Option<u32>,
        expect: &Expect,
    ) -> Result<Vec<(DevT, DevT)>, String> {
        let id = BlkSnapUuid {
            b: self.record(snapshot).id,
        };
        let arg = BlkSnapSnapshotCollectImages {
            id,
            ..Default::default()
        };
        let (result, addr) = self
            .ioctl(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES, &arg)
            .await;
        check_expect(expect, result)?;
        if result.is_err() {
            return Ok(Vec::new());
        }
        let count = self
            .read_back::<BlkSnapSnapshotCollectImages>(addr)
            .map_or(0, |c| c.count);
        if let Some(want) = expect_count {
            if want != count {
                return Err(format!("COLLECT_IMAGES counted {count}, expected {want}"));
            }
        }
        let infos = vec![BlkSnapImageInfo::default(); count as usize];
        let arg = BlkSnapSnapshotCollectImages {
            id,
            count,
            image_info_array: self.map_array(&infos),
        };
        let (result, _) = self
            .ioctl(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES, &arg)
            .await;
        check_expect(expect, result)?;
        let size = BlkSnapImageInfo::SIZE as u64;
        Ok((0..count as u64)
            .filter_map(|i| self.read_back::<BlkSnapImageInfo>(arg.image_info_array + i * size))
            .map(|info| (dev_t(info.orig_dev_id), dev_t(info.image_dev_id)))
            .collect())
    }

    async fn wait_event_raw(
        &self,
        id: [u8; 16],
        timeout_ms: u32,
    ) -> Result<BlkSnapSnapshotEvent, Errno> {
        let arg = BlkSnapSnapshotEvent {
            id: BlkSnapUuid { b: id },
            timeout_ms,
            ..Default::default()
        };
        let (result, addr) = self.ioctl(IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT, &arg).await;
        result?;
        let event: BlkSnapSnapshotEvent = self.read_back(addr).ok_or(Errno::EFAULT)?;
        self.sim.record(TraceEvent::Event {
            code: event.code,
            time_label: event.time_label,
        });
        if event.code == EVENT_CORRUPTED {
            if let Some(payload) = BlkSnapEventCorrupted::decode(&event.data) {
                let orig = dev_t(payload.orig_dev_id);
                self.sim
                    .oracle
                    .borrow_mut()
                    .corrupted_event(orig, event.time_label as u64);
            }
        }
        Ok(event)
    }

    async fn wait_event(
        &self,
        snapshot: &str,
        timeout_ms: u32,
        expect: &EventExpect,
    ) -> Result<(), String> {
        let result = self
            .wait_event_raw(self.record(snapshot).id, timeout_ms)
            .await;
        let got = describe_event(&result);
        let ok = match (expect, &result) {
            (EventExpect::Any, _) => true,
            (EventExpect::None, Err(e)) => *e == Errno::ENOENT,
            (EventExpect::Err(name), Err(e)) => e.name() == name,
            (EventExpect::LowFreeSpace(want), Ok(event)) => {
                event.code == EVENT_LOW_FREE_SPACE
                    && BlkSnapEventLowFreeSpace::decode(&event.data).map(|p| p.requested_nr_sect)
                        == Some(*want)
            }
            (EventExpect::Corrupted(device, errno), Ok(event)) => {
                let payload = BlkSnapEventCorrupted::decode(&event.data);
                event.code == EVENT_CORRUPTED
                    && payload.is_some_and(|p| {
                        dev_t(p.orig_dev_id) == self.dev(device)
                            && Errno::from_name(errno).is_some_and(|e| e.0 == p.err_code)
                    })
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected event {expect:?}, got {got}"))
        }
    }

    // --- IO steps --------------------------------------------------------------------------

    /// The block device a target names, or why there is none.
    fn target_dev(&self, target: &Target) -> Result<DevT, Errno> {
        match target {
            Target::Original(device) => Ok(self.dev(device)),
            Target::Image(snapshot, device) => {
                let record = self.record(snapshot);
                record
                    .images
                    .get(&self.dev(device))
                    .copied()
                    .ok_or(Errno::ENXIO)
            }
        }
    }

    fn has_fs(&self, dev: DevT) -> bool {
        self.sim.fs.borrow().contains_key(&dev)
    }

    async fn write(
        &self,
        target: &Target,
        sector: u64,
        sectors: u64,
        nowait: bool,
    ) -> Result<(), Errno> {
        let dev = self.target_dev(target)?;
        let data = self.fresh_stamps(sectors);
        if self.has_fs(dev) && !nowait {
            fs::fs_write(&self.sim, dev, sector, &data).await;
            return Ok(());
        }
        let mut bio = Bio::write(dev, sector, data);
        bio.flags.nowait = nowait;
        block::user_bio(&self.sim, bio).await.map(|_| ())
    }

    async fn read(&self, target: &Target, sector: u64, sectors: u64) -> Result<Vec<Stamp>, Errno> {
        let dev = self.target_dev(target)?;
        if self.has_fs(dev) {
            return fs::fs_read(&self.sim, dev, sector, sectors).await;
        }
        block::user_bio(&self.sim, Bio::read(dev, sector, sectors)).await
    }

    async fn verify_image(&self, snapshot: &str, device: &str) -> Result<(), String> {
        let orig = self.dev(device);
        let target = Target::Image(snapshot.to_string(), device.to_string());
        let image = self
            .target_dev(&target)
            .map_err(|_| format!("no image of {device} in {snapshot}"))?;
        let capacity = self.sim.disk_capacity(image).unwrap_or(0);
        for (sector, count) in self.verify_ranges(orig, capacity) {
            let bio = Bio::read(image, sector, count);
            if let Err(e) = block::user_bio(&self.sim, bio).await {
                self.sim.record(TraceEvent::Warn {
                    msg: format!("image read at {sector} failed: {e}"),
                });
            }
        }
        Ok(())
    }

    /// What VerifyImage reads: everything for small devices; for large ones,
    /// each written sector's neighbourhood plus random samples.
    fn verify_ranges(&self, orig: DevT, capacity: u64) -> Vec<(u64, u64)> {
        if capacity <= VERIFY_FULL_LIMIT {
            return (0..capacity)
                .step_by(VERIFY_BIO_SECTORS as usize)
                .map(|s| (s, VERIFY_BIO_SECTORS.min(capacity - s)))
                .collect();
        }
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for sector in self.sim.oracle.borrow().written_sectors(orig) {
            if sector < capacity && ranges.last().is_none_or(|(s, c)| s + c <= sector) {
                ranges.push((sector, 8.min(capacity - sector)));
            }
        }
        let mut rng = self.workload_rng.borrow_mut();
        for _ in 0..VERIFY_SAMPLES {
            let sector = rng.below(capacity);
            ranges.push((sector, 1));
        }
        ranges
    }

    async fn verify_original(&self, device: &str) -> Result<(), String> {
        let dev = self.dev(device);
        let sectors = self.sim.oracle.borrow().written_sectors(dev);
        for sector in sectors {
            let bio = Bio::read(dev, sector, 1);
            block::user_bio(&self.sim, bio)
                .await
                .map_err(|e| format!("read of {device} sector {sector} failed: {e}"))?;
        }
        Ok(())
    }

    async fn workload(&self, w: &Workload) -> Result<(), String> {
        let dev = self
            .target_dev(&w.target)
            .map_err(|e| format!("workload target: {e}"))?;
        let capacity = match w.target {
            Target::Original(_) => self
                .sim
                .devices
                .borrow()
                .get(&dev)
                .map_or(0, |d| d.capacity),
            Target::Image(..) => self.sim.disk_capacity(dev).unwrap_or(0),
        };
        let (start, count) = w.region.unwrap_or((0, capacity));
        let align = w.align.max(1);
        if count < align {
            return Err("workload region smaller than one aligned IO".into());
        }
        for _ in 0..w.ops {
            let (sector, sectors, is_read) = {
                let mut rng = self.workload_rng.borrow_mut();
                let units = (count / align).max(1);
                let max_units = (w.max_sectors / align).clamp(1, units);
                let len = rng.range(1, max_units) * align;
                let first = rng.below(units - len / align + 1);
                let is_read = rng.below(100) < u64::from(w.read_percent);
                (start + first * align, len, is_read)
            };
            if is_read {
                let _ = self.read(&w.target, sector, sectors).await;
            } else {
                let _ = self.write(&w.target, sector, sectors, w.nowait).await;
            }
        }
        Ok(())
    }

    async fn concurrent(self: &Rc<Self>, branches: &[Vec<Step>], at: &str) {
        let mut done = Vec::new();
        for (b, branch) in branches.iter().enumerate() {
            let (finished, finish) = completion();
            let run = self.clone();
            let steps = branch.clone();
            let prefix = format!("{at}.{b}.");
            self.sim.spawn_process(
                format!("branch {at}.{b}"),
                Box::pin(async move {
                    run.steps(&steps, &prefix).await;
                    finish.complete(());
                }),
            );
            done.push(finished);
        }
        for finished in done {
            finished.await;
        }
    }

    // --- teardown ----------------------------------------------------------------------------

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
            let _ = self.destroy(&name, &Expect::Any).await;
        }
        blksnap_core::module::exit(&self.module).await;
    }
}

fn describe_event(result: &Result<BlkSnapSnapshotEvent, Errno>) -> String {
    match result {
        Err(e) => format!("error {e}"),
        Ok(event) if event.code == EVENT_LOW_FREE_SPACE => {
            let payload = BlkSnapEventLowFreeSpace::decode(&event.data);
            format!("low_free_space({:?})", payload.map(|p| p.requested_nr_sect))
        }
        Ok(event) if event.code == EVENT_CORRUPTED => {
            let payload = BlkSnapEventCorrupted::decode(&event.data);
            format!(
                "corrupted({:?})",
                payload.map(|p| (dev_t(p.orig_dev_id).to_string(), p.err_code))
            )
        }
        Ok(event) => format!("event code {}", event.code),
    }
}

/// Load and run a file (for tests and the CLI).
pub fn run_file(path: &Path, options: &RunOptions) -> Result<Outcome, super::LoadError> {
    let scenario = super::load(path)?;
    Ok(run(&scenario, options))
}
