//! The `ioctl_args` target: the v2 ioctls with hostile arguments.
//!
//! The scenario runner always hands the engine well-formed argument
//! structs, so this target builds its own small system from the sim's
//! public pieces (a `Sim`, its `SimKernel`, a `Module`, a `UserSpace`) and
//! calls `ctrl::ioctl` directly with arguments built from the input: known
//! and made-up snapshot ids and device numbers, counts that do not match
//! their arrays, NULL, unmapped and truncated pointers, and raw bytes with
//! any command number. One or two user processes issue the calls, with
//! user writes and sleeps in between; at the end the module is unloaded.
//!
//! The engine may answer anything with an errno; what must never happen is
//! a panic in the engine (an oops), a WARN, a lock-order or noio violation,
//! a hang, or a resource left behind after unload.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::rc::Rc;

use arbitrary::{Result, Unstructured};
use blksnap_core::kernel::{completion, Bio, DevT, Stamp};
use blksnap_core::uapi::*;
use blksnap_core::{ctrl, module, Module, Params, Quirks};
use blksnap_sim::block;
use blksnap_sim::check::resources;
use blksnap_sim::device::{Device, Fill};
use blksnap_sim::kernel::sim_kernel::SimKernel;
use blksnap_sim::kernel::Sim;
use blksnap_sim::user::UserSpace;

/// Upper bound on operations per input.
pub const MAX_OPS: usize = 48;
/// Virtual time the system may take to settle after unload.
const SETTLE_NS: u64 = 10_000_000_000;
/// The devices: (name, sectors, fill). The last one is meant as storage.
const DEVICES: [(&str, u64, Fill); 3] = [
    ("d0", 16384, Fill::Pattern),
    ("d1", 4096, Fill::Zero),
    ("store", 131072, Fill::Zero),
];
/// The index of the storage device in [`DEVICES`].
const STORAGE: u8 = 2;
/// Largest WAIT_EVENT timeout: far below the simulator's liveness bound.
const MAX_TIMEOUT_MS: u32 = 2000;
/// Offset of `timeout_ms` in `blk_snap_snapshot_event`.
const EVENT_TIMEOUT_OFFSET: usize = 16;
/// Lines of the call log a failure report shows (the last ones).
const MAX_LOG_LINES: usize = 80;
/// An address no mapping ever has.
const WILD_ADDR: u64 = 0xdead_0000_0000;

/// A snapshot id: one the engine handed out earlier, or made up.
#[derive(Clone, Debug)]
pub enum IdRef {
    /// The n-th id seen so far (modulo their number; zero if none).
    Known(u8),
    /// The id seen last (zero if none).
    Latest,
    Zero,
    Raw([u8; 16]),
}

/// A device number.
#[derive(Clone, Debug)]
pub enum DevRef {
    /// One of the declared devices (d0, d1, store), by index.
    Declared(u8),
    /// The n-th image device seen so far (modulo; 0:0 if none).
    Image(u8),
    Raw(u32, u32),
}

/// A user pointer inside an argument struct.
#[derive(Clone, Debug)]
pub enum Ptr {
    Null,
    /// An unmapped address.
    Wild,
    /// A mapping of this many zero bytes (an output array).
    Out(usize),
    /// An array of device ids.
    Devs(Vec<DevRef>),
    /// An array of block ranges (sector, count).
    Ranges(Vec<(u64, u64)>),
}

/// One ioctl, by its argument struct.
#[derive(Clone, Debug)]
pub enum Call {
    Version,
    TrackerRemove {
        dev: DevRef,
    },
    TrackerCollect {
        count: u32,
        array: Ptr,
    },
    ReadCbtMap {
        dev: DevRef,
        offset: u32,
        length: u32,
        buff: Ptr,
    },
    MarkDirtyBlocks {
        dev: DevRef,
        count: u32,
        ranges: Ptr,
    },
    Create {
        count: u32,
        devs: Ptr,
    },
    Destroy {
        id: IdRef,
    },
    Append {
        id: IdRef,
        dev: DevRef,
        count: u32,
        ranges: Ptr,
    },
    Take {
        id: IdRef,
    },
    Collect {
        count: u32,
        ids: Ptr,
    },
    CollectImages {
        id: IdRef,
        count: u32,
        array: Ptr,
    },
    WaitEvent {
        id: IdRef,
        timeout_ms: u32,
    },
    /// Any command number with raw argument bytes.
    Raw {
        cmd: u32,
        bytes: Vec<u8>,
    },
}

/// How the argument struct itself is passed.
#[derive(Clone, Debug)]
pub enum ArgMap {
    Full,
    /// Only the first n bytes are mapped: the copy runs off the end.
    Truncated(usize),
    Null,
    Wild,
}

#[derive(Clone, Debug)]
pub enum Op {
    Ioctl {
        call: Call,
        arg: ArgMap,
    },
    /// A user write through the block layer (and the filter).
    Write {
        dev: DevRef,
        sector: u64,
        sectors: u64,
    },
    Sleep {
        ms: u64,
    },
}

/// What an input describes.
#[derive(Clone, Debug)]
pub struct Program {
    pub seed: u64,
    pub params: Params,
    /// Each process runs its operations in order, concurrently with the
    /// others.
    pub processes: Vec<Vec<Op>>,
}

impl fmt::Display for Program {
    /// The seed, the parameters, then one operation per line, by process.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed: {}", self.seed)?;
        writeln!(f, "params: {:?}", self.params)?;
        for (p, ops) in self.processes.iter().enumerate() {
            writeln!(f, "process {p}:")?;
            for op in ops {
                writeln!(f, "  {op:?}")?;
            }
        }
        Ok(())
    }
}

/// The body of the `ioctl_args` fuzz target.
pub fn ioctl_args(data: &[u8]) {
    if let Err(report) = check(data) {
        panic!("{report}");
    }
}

/// Run the program of `data`; `Err` carries the failure report.
pub fn check(data: &[u8]) -> std::result::Result<(), String> {
    let Ok(program) = program(&mut Unstructured::new(data)) else {
        return Ok(());
    };
    run(&program)
}

/// Decode the input into a program.
pub fn program(u: &mut Unstructured) -> Result<Program> {
    let seed = u.arbitrary()?;
    let params = Params {
        diff_storage_minimum: *u.choose(&[4096, 65536, 262144])?,
        chunk_minimum_shift: u.int_in_range(12..=18)?,
        tracking_block_minimum_shift: *u.choose(&[12, 16])?,
        ..Params::default()
    };
    let process_count = if u.ratio(1, 3)? { 2 } else { 1 };
    let mut processes = vec![Vec::new(); process_count];
    let count = u.int_in_range(1..=MAX_OPS)?;
    for _ in 0..count {
        if u.is_empty() {
            break;
        }
        let process = u.int_in_range(0..=process_count - 1)?;
        if u.ratio(1, 8)? {
            processes[process].extend(life(u)?);
        } else {
            processes[process].push(op(u)?);
        }
    }
    Ok(Program {
        seed,
        params,
        processes,
    })
}

/// A well-formed CREATE, APPEND_STORAGE and TAKE of one snapshot, so
/// that the calls around them meet taken snapshots, images and CBT maps.
fn life(u: &mut Unstructured) -> Result<Vec<Op>> {
    let devs = match u.int_in_range(0..=2)? {
        0 => vec![DevRef::Declared(0)],
        1 => vec![DevRef::Declared(1)],
        _ => vec![DevRef::Declared(0), DevRef::Declared(1)],
    };
    let sector = *u.choose(&[0, 16384, 65536])?;
    let count = *u.choose(&[4096, 16384])?;
    let full = |call| Op::Ioctl {
        call,
        arg: ArgMap::Full,
    };
    Ok(vec![
        full(Call::Create {
            count: devs.len() as u32,
            devs: Ptr::Devs(devs),
        }),
        full(Call::Append {
            id: IdRef::Latest,
            dev: DevRef::Declared(STORAGE),
            count: 1,
            ranges: Ptr::Ranges(vec![(sector, count)]),
        }),
        full(Call::Take { id: IdRef::Latest }),
    ])
}

fn op(u: &mut Unstructured) -> Result<Op> {
    Ok(match u.int_in_range(0..=15)? {
        0 | 1 => Op::Write {
            dev: dev_ref(u)?,
            sector: *u.choose(&[0, 1, 8, 4095, 4096, 16376, 16384])?,
            sectors: *u.choose(&[1, 8, 64])?,
        },
        2 => Op::Sleep {
            ms: *u.choose(&[0, 1, 10, 100])?,
        },
        _ => Op::Ioctl {
            call: call(u)?,
            arg: match u.int_in_range(0..=15)? {
                0 => ArgMap::Null,
                1 => ArgMap::Wild,
                2 => ArgMap::Truncated(u.int_in_range(0..=64)?),
                _ => ArgMap::Full,
            },
        },
    })
}

fn id_ref(u: &mut Unstructured) -> Result<IdRef> {
    Ok(match u.int_in_range(0..=7)? {
        0 => IdRef::Zero,
        1 => IdRef::Raw(u.arbitrary()?),
        2 | 3 => IdRef::Latest,
        _ => IdRef::Known(u.arbitrary()?),
    })
}

fn dev_ref(u: &mut Unstructured) -> Result<DevRef> {
    Ok(match u.int_in_range(0..=7)? {
        0 => DevRef::Image(u.arbitrary()?),
        1 => DevRef::Raw(
            *u.choose(&[0, 7, 9, 252, 4095, u32::MAX])?,
            *u.choose(&[0, 1, 9, 1 << 20, u32::MAX])?,
        ),
        _ => DevRef::Declared(u.int_in_range(0..=DEVICES.len() as u8 - 1)?),
    })
}

/// An array count: mostly the number of elements given, sometimes not.
fn count(u: &mut Unstructured, elements: usize) -> Result<u32> {
    Ok(match u.int_in_range(0..=9)? {
        0 => 0,
        1 => elements as u32 + 1,
        2 => *u.choose(&[1 << 20, (1 << 20) + 1, u32::MAX])?,
        _ => elements as u32,
    })
}

/// A pointer to an array: usually a real one, sometimes NULL or wild.
fn array(u: &mut Unstructured, real: Ptr) -> Result<Ptr> {
    Ok(match u.int_in_range(0..=9)? {
        0 => Ptr::Null,
        1 => Ptr::Wild,
        _ => real,
    })
}

/// Block ranges: two times in three, page-aligned ranges that fit the
/// storage device (what a careful caller passes); otherwise anything.
fn ranges(u: &mut Unstructured) -> Result<Vec<(u64, u64)>> {
    if u.ratio(2, 3)? {
        let n = u.int_in_range(1..=2)?;
        return (0..n)
            .map(|_| {
                let sector = *u.choose(&[0, 8192, 32768, 65536])?;
                let count = *u.choose(&[8, 4096, 16384, 32768])?;
                Ok((sector, count))
            })
            .collect();
    }
    let n = u.int_in_range(0..=4)?;
    (0..n)
        .map(|_| {
            let sector = *u.choose(&[0, 1, 8, 4096, 16376, 131064, 1 << 40, u64::MAX - 7])?;
            let count = *u.choose(&[0, 1, 8, 64, 4096, 65536, 131072, u64::MAX])?;
            Ok((sector, count))
        })
        .collect()
}

fn call(u: &mut Unstructured) -> Result<Call> {
    Ok(match u.int_in_range(0..=13)? {
        0 => Call::Version,
        1 => Call::TrackerRemove { dev: dev_ref(u)? },
        2 => {
            let n = u.int_in_range(0..=4)?;
            Call::TrackerCollect {
                count: count(u, n)?,
                array: array(u, Ptr::Out(n * BlkSnapCbtInfo::SIZE))?,
            }
        }
        3 => {
            let length = *u.choose(&[0, 1, 16, 16, 64, 4096, u32::MAX])?;
            let buffer = (length as usize).min(4096);
            Call::ReadCbtMap {
                dev: dev_ref(u)?,
                offset: *u.choose(&[0, 0, 0, 1, 8, 1 << 20, u32::MAX])?,
                length,
                buff: array(u, Ptr::Out(buffer))?,
            }
        }
        4 => {
            let ranges = ranges(u)?;
            Call::MarkDirtyBlocks {
                dev: dev_ref(u)?,
                count: count(u, ranges.len())?,
                ranges: array(u, Ptr::Ranges(ranges))?,
            }
        }
        5 | 6 => {
            let n = u.int_in_range(0..=3)?;
            let devs = (0..n).map(|_| dev_ref(u)).collect::<Result<Vec<_>>>()?;
            Call::Create {
                count: count(u, n)?,
                devs: array(u, Ptr::Devs(devs))?,
            }
        }
        7 => Call::Destroy { id: id_ref(u)? },
        8 | 9 => {
            let ranges = ranges(u)?;
            Call::Append {
                id: id_ref(u)?,
                dev: if u.ratio(2, 3)? {
                    DevRef::Declared(STORAGE)
                } else {
                    dev_ref(u)?
                },
                count: count(u, ranges.len())?,
                ranges: array(u, Ptr::Ranges(ranges))?,
            }
        }
        10 => Call::Take { id: id_ref(u)? },
        11 => {
            let n = u.int_in_range(0..=3)?;
            Call::Collect {
                count: count(u, n)?,
                ids: array(u, Ptr::Out(n * BlkSnapUuid::SIZE))?,
            }
        }
        12 => {
            if u.ratio(1, 2)? {
                let n = u.int_in_range(0..=3)?;
                Call::CollectImages {
                    id: id_ref(u)?,
                    count: count(u, n)?,
                    array: array(u, Ptr::Out(n * BlkSnapImageInfo::SIZE))?,
                }
            } else {
                Call::WaitEvent {
                    id: id_ref(u)?,
                    timeout_ms: *u.choose(&[0, 1, 100, MAX_TIMEOUT_MS])?,
                }
            }
        }
        _ => {
            let cmd = match u.int_in_range(0..=3)? {
                0 => u.arbitrary()?,
                1 => iow(BLK_SNAP, 12, 0),
                _ => u.choose(&IoctlNr::ALL)?.cmd(),
            };
            let len = u.int_in_range(0..=128)?;
            let bytes = (0..len)
                .map(|_| u.arbitrary())
                .collect::<Result<Vec<u8>>>()?;
            Call::Raw { cmd, bytes }
        }
    })
}

/// The live system a program runs against.
struct System {
    sim: Rc<Sim>,
    module: Rc<Module>,
    user: UserSpace,
    devices: Vec<DevT>,
    /// Snapshot ids and image devices the engine reported, in order.
    ids: RefCell<Vec<[u8; 16]>>,
    images: RefCell<Vec<DevT>>,
    next_stamp: Cell<Stamp>,
    stats: RefCell<Stats>,
    /// What each operation returned, for the failure report.
    log: RefCell<Vec<String>>,
}

/// Run a program; `Err` carries the failures and the program.
pub fn run(program: &Program) -> std::result::Result<(), String> {
    run_with_stats(program).0
}

/// Successful and failed calls, by ioctl name (`raw` for unknown numbers).
pub type Stats = BTreeMap<&'static str, (u64, u64)>;

/// [`run`], also counting the results of the calls (to tune the generator).
pub fn run_with_stats(program: &Program) -> (std::result::Result<(), String>, Stats) {
    let sim = Sim::new(program.seed);
    let mut devices = Vec::new();
    for (index, (name, sectors, fill)) in DEVICES.iter().enumerate() {
        let index = index as u32;
        let dev = DevT::new(7, index);
        sim.add_device(Device::new(
            (*name).to_string(),
            dev,
            index,
            *sectors,
            *fill,
        ));
        sim.oracle.borrow_mut().add_device(dev, index, *fill);
        devices.push(dev);
    }
    let kernel = Rc::new(SimKernel(sim.clone()));
    let module = Module::init(kernel, program.params.clone(), Quirks::default())
        .expect("module init has no fault here");
    let system = Rc::new(System {
        sim: sim.clone(),
        module,
        user: UserSpace::default(),
        devices,
        ids: RefCell::new(Vec::new()),
        images: RefCell::new(Vec::new()),
        next_stamp: Cell::new(1),
        stats: RefCell::new(Stats::new()),
        log: RefCell::new(Vec::new()),
    });
    let main = system.clone();
    let processes = program.processes.clone();
    sim.spawn_process(
        "ioctl_args".to_string(),
        Box::pin(async move {
            let mut done = Vec::new();
            for (p, ops) in processes.into_iter().enumerate() {
                let (finished, finish) = completion();
                let system = main.clone();
                main.sim.spawn_process(
                    format!("caller {p}"),
                    Box::pin(async move {
                        for op in &ops {
                            system.op(p, op).await;
                        }
                        finish.complete(());
                    }),
                );
                done.push(finished);
            }
            for finished in done {
                finished.await;
            }
            main.log("unload".to_string());
            module::exit(&main.module).await;
        }),
    );
    if !sim.run() {
        sim.fail(
            "liveness",
            format!("hang: processes {:?} did not finish", sim.live_processes()),
        );
    }
    if !sim.has_failed() {
        sim.settle(SETTLE_NS);
        resources::check_after_unload(&sim);
    }
    let failures = sim.failures();
    let stats = system.stats.take();
    if failures.is_empty() {
        return (Ok(()), stats);
    }
    let mut text = String::new();
    let _ = writeln!(text, "ioctl_args: run failed (seed {})", program.seed);
    crate::lifecycle::failures_text(&mut text, &failures);
    let log = system.log.take();
    let _ = writeln!(text, "calls (virtual ns, process, call, result):");
    for line in log.iter().skip(log.len().saturating_sub(MAX_LOG_LINES)) {
        let _ = writeln!(text, "  {line}");
    }
    let _ = write!(text, "program:\n{program}");
    (Err(text), stats)
}

impl System {
    fn log(&self, line: String) {
        self.log
            .borrow_mut()
            .push(format!("{:>12} {line}", self.sim.now()));
    }

    async fn op(&self, process: usize, op: &Op) {
        match op {
            Op::Ioctl { call, arg } => {
                let (name, result) = self.ioctl(call, arg).await;
                let shown = match result {
                    Ok(value) => format!("= {value}"),
                    Err(errno) => format!("= {errno}"),
                };
                self.log(format!("p{process} {name} {shown}"));
            }
            Op::Write {
                dev,
                sector,
                sectors,
            } => {
                let first = self.next_stamp.get();
                self.next_stamp.set(first + sectors);
                let data: Vec<Stamp> = (first..first + sectors).collect();
                let dev = self.dev(dev);
                let bio = Bio::write(dev, *sector, data);
                let result = block::user_bio(&self.sim, bio).await;
                self.log(format!(
                    "p{process} write {dev} {sector}+{sectors} = {:?}",
                    result.map(|_| ())
                ));
            }
            Op::Sleep { ms } => self.sim.sleep(ms * 1_000_000).await,
        }
    }

    fn id(&self, id: &IdRef) -> BlkSnapUuid {
        let b = match id {
            IdRef::Zero => [0; 16],
            IdRef::Raw(b) => *b,
            IdRef::Latest => self.ids.borrow().last().copied().unwrap_or([0; 16]),
            IdRef::Known(n) => {
                let ids = self.ids.borrow();
                if ids.is_empty() {
                    [0; 16]
                } else {
                    ids[usize::from(*n) % ids.len()]
                }
            }
        };
        BlkSnapUuid { b }
    }

    fn dev(&self, dev: &DevRef) -> DevT {
        match dev {
            DevRef::Declared(n) => self.devices[usize::from(*n) % self.devices.len()],
            DevRef::Image(n) => {
                let images = self.images.borrow();
                if images.is_empty() {
                    DevT(0)
                } else {
                    images[usize::from(*n) % images.len()]
                }
            }
            DevRef::Raw(major, minor) => DevT::new(*major, *minor),
        }
    }

    fn blk_dev(&self, dev: &DevRef) -> BlkSnapDev {
        let dev = self.dev(dev);
        BlkSnapDev {
            mj: dev.major(),
            mn: dev.minor(),
        }
    }

    /// Map what a pointer points at; its user address.
    fn ptr(&self, ptr: &Ptr) -> u64 {
        match ptr {
            Ptr::Null => 0,
            Ptr::Wild => WILD_ADDR,
            Ptr::Out(len) => self.map(vec![0; *len]),
            Ptr::Devs(devs) => {
                self.map(devs.iter().flat_map(|d| self.blk_dev(d).encode()).collect())
            }
            Ptr::Ranges(ranges) => self.map(
                ranges
                    .iter()
                    .flat_map(|&(sector_offset, sector_count)| {
                        BlkSnapBlockRange {
                            sector_offset,
                            sector_count,
                        }
                        .encode()
                    })
                    .collect(),
            ),
        }
    }

    /// Map bytes; an empty mapping still gets an address.
    fn map(&self, bytes: Vec<u8>) -> u64 {
        if bytes.is_empty() {
            return self.user.map(vec![0; 1]);
        }
        self.user.map(bytes)
    }

    /// The command and the encoded argument struct of a call.
    fn encode(&self, call: &Call) -> (u32, Vec<u8>) {
        match call {
            Call::Version => (IOCTL_BLK_SNAP_VERSION, BlkSnapVersion::default().encode()),
            Call::TrackerRemove { dev } => (
                IOCTL_BLK_SNAP_TRACKER_REMOVE,
                BlkSnapTrackerRemove {
                    dev_id: self.blk_dev(dev),
                }
                .encode(),
            ),
            Call::TrackerCollect { count, array } => (
                IOCTL_BLK_SNAP_TRACKER_COLLECT,
                BlkSnapTrackerCollect {
                    count: *count,
                    cbt_info_array: self.ptr(array),
                }
                .encode(),
            ),
            Call::ReadCbtMap {
                dev,
                offset,
                length,
                buff,
            } => (
                IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP,
                BlkSnapTrackerReadCbtBitmap {
                    dev_id: self.blk_dev(dev),
                    offset: *offset,
                    length: *length,
                    buff: self.ptr(buff),
                }
                .encode(),
            ),
            Call::MarkDirtyBlocks { dev, count, ranges } => (
                IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS,
                BlkSnapTrackerMarkDirtyBlocks {
                    dev_id: self.blk_dev(dev),
                    count: *count,
                    dirty_blocks_array: self.ptr(ranges),
                }
                .encode(),
            ),
            Call::Create { count, devs } => (
                IOCTL_BLK_SNAP_SNAPSHOT_CREATE,
                BlkSnapSnapshotCreate {
                    count: *count,
                    dev_id_array: self.ptr(devs),
                    ..Default::default()
                }
                .encode(),
            ),
            Call::Destroy { id } => (
                IOCTL_BLK_SNAP_SNAPSHOT_DESTROY,
                BlkSnapSnapshotDestroy { id: self.id(id) }.encode(),
            ),
            Call::Append {
                id,
                dev,
                count,
                ranges,
            } => (
                IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE,
                BlkSnapSnapshotAppendStorage {
                    id: self.id(id),
                    dev_id: self.blk_dev(dev),
                    count: *count,
                    ranges: self.ptr(ranges),
                }
                .encode(),
            ),
            Call::Take { id } => (
                IOCTL_BLK_SNAP_SNAPSHOT_TAKE,
                BlkSnapSnapshotTake { id: self.id(id) }.encode(),
            ),
            Call::Collect { count, ids } => (
                IOCTL_BLK_SNAP_SNAPSHOT_COLLECT,
                BlkSnapSnapshotCollect {
                    count: *count,
                    ids: self.ptr(ids),
                }
                .encode(),
            ),
            Call::CollectImages { id, count, array } => (
                IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES,
                BlkSnapSnapshotCollectImages {
                    id: self.id(id),
                    count: *count,
                    image_info_array: self.ptr(array),
                }
                .encode(),
            ),
            Call::WaitEvent { id, timeout_ms } => (
                IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT,
                BlkSnapSnapshotEvent {
                    id: self.id(id),
                    timeout_ms: (*timeout_ms).min(MAX_TIMEOUT_MS),
                    ..Default::default()
                }
                .encode(),
            ),
            Call::Raw { cmd, bytes } => {
                let mut bytes = bytes.clone();
                if *cmd == IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT {
                    clamp_timeout(&mut bytes);
                }
                (*cmd, bytes)
            }
        }
    }

    /// Make one call; its name and result.
    async fn ioctl(&self, call: &Call, how: &ArgMap) -> (&'static str, ctrl::IoctlResult) {
        let (cmd, mut bytes) = self.encode(call);
        let addr = match how {
            ArgMap::Null => 0,
            ArgMap::Wild => WILD_ADDR,
            ArgMap::Full => self.map(bytes),
            ArgMap::Truncated(len) => {
                bytes.truncate(*len);
                self.map(bytes)
            }
        };
        let result = blksnap_sim::ctl::ioctl(&self.sim, &self.module, cmd, addr, &self.user).await;
        let name = IoctlNr::ALL
            .iter()
            .find(|nr| nr.cmd() == cmd)
            .map_or("raw", |nr| nr.name().trim_start_matches("IOCTL_BLK_SNAP_"));
        let mut stats = self.stats.borrow_mut();
        let entry = stats.entry(name).or_default();
        if result.is_ok() {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        drop(stats);
        if result.is_ok() && matches!(how, ArgMap::Full) {
            self.harvest(cmd, addr);
        }
        (name, result)
    }

    /// Remember the ids and image devices a successful call reported.
    fn harvest(&self, cmd: u32, addr: u64) {
        let read = |addr: u64, len: usize| self.user.read(addr, len);
        if cmd == IOCTL_BLK_SNAP_SNAPSHOT_CREATE {
            if let Some(arg) = read(addr, BlkSnapSnapshotCreate::SIZE)
                .and_then(|b| BlkSnapSnapshotCreate::decode(&b))
            {
                self.ids.borrow_mut().push(arg.id.b);
            }
        } else if cmd == IOCTL_BLK_SNAP_SNAPSHOT_COLLECT {
            let Some(arg) = read(addr, BlkSnapSnapshotCollect::SIZE)
                .and_then(|b| BlkSnapSnapshotCollect::decode(&b))
            else {
                return;
            };
            for i in 0..u64::from(arg.count.min(8)) {
                let at = arg.ids.wrapping_add(i * BlkSnapUuid::SIZE as u64);
                if let Some(id) = read(at, BlkSnapUuid::SIZE).and_then(|b| BlkSnapUuid::decode(&b))
                {
                    let mut ids = self.ids.borrow_mut();
                    if !ids.contains(&id.b) {
                        ids.push(id.b);
                    }
                }
            }
        } else if cmd == IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES {
            let Some(arg) = read(addr, BlkSnapSnapshotCollectImages::SIZE)
                .and_then(|b| BlkSnapSnapshotCollectImages::decode(&b))
            else {
                return;
            };
            let size = BlkSnapImageInfo::SIZE as u64;
            for i in 0..u64::from(arg.count.min(8)) {
                let at = arg.image_info_array.wrapping_add(i * size);
                if let Some(info) =
                    read(at, size as usize).and_then(|b| BlkSnapImageInfo::decode(&b))
                {
                    let dev = DevT::new(info.image_dev_id.mj, info.image_dev_id.mn);
                    let mut images = self.images.borrow_mut();
                    if !images.contains(&dev) {
                        images.push(dev);
                    }
                }
            }
        }
    }
}

/// Keep a raw WAIT_EVENT's timeout below the liveness bound: a caller
/// that waits for 49 days is not a bug.
fn clamp_timeout(bytes: &mut [u8]) {
    let field = EVENT_TIMEOUT_OFFSET..EVENT_TIMEOUT_OFFSET + 4;
    if let Some(raw) = bytes.get_mut(field) {
        let timeout = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        raw.copy_from_slice(&timeout.min(MAX_TIMEOUT_MS).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs;

    #[test]
    fn raw_wait_event_timeouts_are_capped() {
        let mut bytes = BlkSnapSnapshotEvent {
            timeout_ms: u32::MAX,
            ..Default::default()
        }
        .encode();
        clamp_timeout(&mut bytes);
        let event = BlkSnapSnapshotEvent::decode(&bytes).expect("a whole event");
        assert_eq!(event.timeout_ms, MAX_TIMEOUT_MS);
        let mut short = vec![0xff; EVENT_TIMEOUT_OFFSET + 2];
        clamp_timeout(&mut short);
        assert_eq!(short, vec![0xff; EVENT_TIMEOUT_OFFSET + 2]);
    }

    /// The generator reaches the interesting states: snapshots get taken,
    /// CBT maps read, images listed. (If the engine or the model drifts so
    /// that they no longer do, the fuzzer would silently test much less.)
    #[test]
    fn programs_reach_taken_snapshots() {
        let mut total = Stats::new();
        for index in 0..300 {
            let data = inputs::random_input(5, index, 400);
            let program = program(&mut Unstructured::new(&data)).expect("a program");
            for (name, (ok, _)) in run_with_stats(&program).1 {
                total.entry(name).or_default().0 += ok;
            }
        }
        for name in [
            "SNAPSHOT_CREATE",
            "SNAPSHOT_APPEND_STORAGE",
            "SNAPSHOT_TAKE",
            "SNAPSHOT_COLLECT_IMAGES",
            "TRACKER_READ_CBT_MAP",
            "SNAPSHOT_DESTROY",
        ] {
            let ok = total.get(name).map_or(0, |c| c.0);
            assert!(ok >= 5, "{name} succeeded only {ok} times: {total:?}");
        }
    }
}
