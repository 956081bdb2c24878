//! The block layer's state: the scenario's devices, the image disks the
//! engine added, the filters attached to devices, the engine's opens, and
//! the bios in flight.
//!
//! Models `blkdev_get/put`, `add_disk`/`del_gendisk`, the `bdev_filter`
//! slot of each device with the count of filter callbacks running (the
//! queue freeze of attach/detach waits for it), and the latency draw that
//! sets the completion order of concurrent bios (the `disk` stream).
//! The bio path that moves data is `bio.rs`; the user side with the filter
//! callback is `crate::block`.
//!
//! Fault model (applied on the bio path, recorded as injected): EIO from
//! the fault plan, bad sectors and error windows of a device, IO to a
//! removed device, IO past the end; a resize or a removal of a device at
//! any time; `add_disk` failing with ENOMEM.

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::collections::BTreeMap;
use std::rc::Rc;

use blksnap_core::kernel::{BdevFilter, BdevHandle, Bio, DevT, Errno, GenDisk};

use crate::device::Device;
use crate::rng::SimRng;

/// The dynamic major the sim hands out for image disks.
pub const IMAGE_MAJOR: u32 = 252;

pub(crate) type Disk = (Rc<dyn GenDisk>, u64);

/// The scenario's devices, sorted by `dev`: a run has a handful, and
/// every bio looks its device up twice (at submission and at its end),
/// where a map's search and node walk cost more than a short scan.
#[derive(Default)]
pub struct Devices(Vec<Device>);

/// Up to this many devices a linear scan beats a binary search.
const SCAN_MAX: usize = 8;

impl Devices {
    fn position(&self, dev: DevT) -> Result<usize, usize> {
        if self.0.len() <= SCAN_MAX {
            match self.0.iter().position(|d| d.dev >= dev) {
                Some(i) if self.0[i].dev == dev => Ok(i),
                Some(i) => Err(i),
                None => Err(self.0.len()),
            }
        } else {
            self.0.binary_search_by_key(&dev, |d| d.dev)
        }
    }

    pub fn get(&self, dev: &DevT) -> Option<&Device> {
        self.position(*dev).ok().map(|i| &self.0[i])
    }

    pub fn get_mut(&mut self, dev: &DevT) -> Option<&mut Device> {
        self.position(*dev).ok().map(|i| &mut self.0[i])
    }

    /// Add a device, or replace the one with the same `dev`.
    pub fn insert(&mut self, device: Device) {
        match self.position(device.dev) {
            Ok(i) => self.0[i] = device,
            Err(i) => self.0.insert(i, device),
        }
    }

    /// The devices' numbers, in order.
    pub fn keys(&self) -> impl Iterator<Item = &DevT> {
        self.0.iter().map(|d| &d.dev)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Device> {
        self.0.iter_mut()
    }
}

/// One bit per major (12 bits of them): set once a disk of that major is
/// added, so a bio to a device, whose major has none, needs no search of
/// the disks. A bit may outlive its disks (a stale bit costs a search).
struct Majors([Cell<u64>; 64]);

impl Majors {
    fn new() -> Majors {
        Majors(std::array::from_fn(|_| Cell::new(0)))
    }

    fn slot(&self, dev: DevT) -> (&Cell<u64>, u64) {
        let major = dev.major() as usize;
        (&self.0[major / 64], 1 << (major % 64))
    }

    fn add(&self, dev: DevT) {
        let (word, bit) = self.slot(dev);
        word.set(word.get() | bit);
    }

    fn has(&self, dev: DevT) -> bool {
        let (word, bit) = self.slot(dev);
        word.get() & bit != 0
    }

    fn clear(&self) {
        self.0.iter().for_each(|word| word.set(0));
    }
}

pub struct BlockLayer {
    pub devices: RefCell<Devices>,
    /// Image disks the engine added, with their capacity.
    pub(crate) disks: RefCell<BTreeMap<DevT, Disk>>,
    /// The majors of `disks`.
    disk_majors: Majors,
    filters: RefCell<BTreeMap<DevT, Rc<dyn BdevFilter>>>,
    /// Bumped by every change of `filters` (`filters_mut`): a checker
    /// that looked a device's filter up keeps its answer while this stays.
    filters_version: Cell<u64>,
    /// Filter callbacks running per device (the queue freeze waits for
    /// them): a device's entry stays once made. A short list, as
    /// `devices`: two updates per user bio.
    filter_calls: RefCell<Vec<(DevT, u64)>>,
    opens: RefCell<BTreeMap<u64, DevT>>,
    open_seq: Cell<u64>,
    bio_seq: Cell<u64>,
    /// Bios handed to devices and not yet ended.
    pub bios_in_flight: Cell<u64>,
    rng: RefCell<SimRng>,
}

impl BlockLayer {
    pub fn new(seed: u64) -> BlockLayer {
        BlockLayer {
            devices: RefCell::new(Devices::default()),
            disks: RefCell::new(BTreeMap::new()),
            disk_majors: Majors::new(),
            filters: RefCell::new(BTreeMap::new()),
            filters_version: Cell::new(0),
            filter_calls: RefCell::new(Vec::new()),
            opens: RefCell::new(BTreeMap::new()),
            open_seq: Cell::new(0),
            bio_seq: Cell::new(0),
            bios_in_flight: Cell::new(0),
            rng: RefCell::new(SimRng::child(seed, "disk")),
        }
    }

    pub fn add_device(&self, device: Device) {
        self.devices.borrow_mut().insert(device);
    }

    pub fn next_bio_id(&self) -> u64 {
        self.bio_seq.set(self.bio_seq.get() + 1);
        self.bio_seq.get()
    }

    // --- opens -------------------------------------------------------------------------

    /// `blkdev_get_by_dev`: ENXIO for a missing or removed device.
    pub fn open(&self, dev: DevT) -> Result<BdevHandle, Errno> {
        let mut devices = self.devices.borrow_mut();
        let device = devices
            .get_mut(&dev)
            .filter(|d| !d.removed)
            .ok_or(Errno::ENXIO)?;
        device.open_count += 1;
        self.open_seq.set(self.open_seq.get() + 1);
        let id = self.open_seq.get();
        self.opens.borrow_mut().insert(id, dev);
        Ok(BdevHandle { id, dev })
    }

    /// `blkdev_put`; false if the handle is not open.
    pub fn close(&self, handle: BdevHandle) -> bool {
        if self.opens.borrow_mut().remove(&handle.id).is_none() {
            return false;
        }
        if let Some(device) = self.devices.borrow_mut().get_mut(&handle.dev) {
            device.open_count -= 1;
        }
        true
    }

    /// Devices opened by the engine and not closed.
    pub fn open_bdevs(&self) -> Vec<DevT> {
        self.opens.borrow().values().copied().collect()
    }

    pub fn nr_sectors(&self, dev: DevT) -> u64 {
        self.devices
            .borrow()
            .get(&dev)
            .filter(|d| !d.removed)
            .map_or(0, |d| d.capacity)
    }

    pub fn io_min(&self, dev: DevT) -> u32 {
        self.devices.borrow().get(&dev).map_or(512, |d| d.io_min)
    }

    pub fn freeze_fails(&self, dev: DevT) -> bool {
        self.devices
            .borrow()
            .get(&dev)
            .is_some_and(|d| d.freeze_fails)
    }

    // --- device bios -------------------------------------------------------------------

    /// Refuse a bio the device cannot take; otherwise count it in flight
    /// and draw its latency, with a latency spike of the device's disk
    /// faults if one hits it (one device lookup for all of it). Inlined
    /// into the bio path (its one caller), which saves the registers
    /// once: as a call, that and the result through memory cost about 25
    /// instructions per bio.
    #[inline(always)]
    pub fn device_accept(&self, bio: &Bio) -> Result<(u64, Option<u64>), Errno> {
        let mut devices = self.devices.borrow_mut();
        let device = devices.get_mut(&bio.dev).ok_or(Errno::EIO)?;
        if device.removed {
            return Err(Errno::EIO);
        }
        let end = bio.sector.checked_add(bio.sectors).ok_or(Errno::EIO)?;
        if end > device.capacity {
            return Err(Errno::EIO);
        }
        if bio.op.is_write() && bio.op == blksnap_core::kernel::BioOp::Write {
            assert_eq!(bio.data.len(), bio.sectors, "write bio with wrong payload");
        }
        let lat = device.latency;
        let spread = lat.max_ns.saturating_sub(lat.min_ns);
        let jitter = self.rng.borrow_mut().range(0, spread);
        let spike = device.disk_faults.spike_ns(bio.op, bio.sector, bio.sectors);
        let latency = lat.min_ns + jitter + lat.per_sector_ns * bio.sectors;
        device.in_flight += 1;
        self.bios_in_flight.set(self.bios_in_flight.get() + 1);
        Ok((latency + spike.unwrap_or(0), spike))
    }

    /// Power loss: no image disk, filter, open handle or bio is left;
    /// devices keep their media (`crate::power` handles their caches).
    pub fn power_cut(&self) {
        self.filters_mut().clear();
        self.disks.borrow_mut().clear();
        self.disk_majors.clear();
        self.filter_calls.borrow_mut().clear();
        self.opens.borrow_mut().clear();
        self.bios_in_flight.set(0);
        for device in self.devices.borrow_mut().values_mut() {
            device.open_count = 0;
            device.freeze_count = 0;
            device.in_flight = 0;
        }
    }

    // --- filters -----------------------------------------------------------------------

    /// The filters attached, by device.
    pub(crate) fn filters(&self) -> Ref<'_, BTreeMap<DevT, Rc<dyn BdevFilter>>> {
        self.filters.borrow()
    }

    /// The filters attached, to change: a new `filters_version`.
    pub(crate) fn filters_mut(&self) -> RefMut<'_, BTreeMap<DevT, Rc<dyn BdevFilter>>> {
        self.filters_version.set(self.filters_version.get() + 1);
        self.filters.borrow_mut()
    }

    /// Changes of the filters so far (see `filters_mut`).
    pub(crate) fn filters_version(&self) -> u64 {
        self.filters_version.get()
    }

    pub fn filter_of(&self, dev: DevT) -> Option<Rc<dyn BdevFilter>> {
        self.filters.borrow().get(&dev).cloned()
    }

    pub fn filter_call_begin(&self, dev: DevT) {
        let mut calls = self.filter_calls.borrow_mut();
        match calls.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, n)) => *n += 1,
            None => calls.push((dev, 1)),
        }
    }

    pub fn filter_call_end(&self, dev: DevT) {
        let mut calls = self.filter_calls.borrow_mut();
        if let Some((_, n)) = calls.iter_mut().find(|(d, _)| *d == dev) {
            *n -= 1;
        }
    }

    pub fn filter_calls_on(&self, dev: DevT) -> u64 {
        let calls = self.filter_calls.borrow();
        calls.iter().find(|(d, _)| *d == dev).map_or(0, |&(_, n)| n)
    }

    pub fn attached_filters(&self) -> Vec<DevT> {
        self.filters.borrow().keys().copied().collect()
    }

    // --- image disks -------------------------------------------------------------------

    /// The image disk `dev` is, if it is one. Inlined: on the usual path,
    /// a bio to a device, it is a bit test.
    #[inline]
    pub(crate) fn disk(&self, dev: DevT) -> Option<Disk> {
        if !self.disk_majors.has(dev) {
            return None;
        }
        self.disks.borrow().get(&dev).cloned()
    }

    pub fn is_image(&self, dev: DevT) -> bool {
        self.disks.borrow().contains_key(&dev)
    }

    pub fn disks(&self) -> Vec<DevT> {
        self.disks.borrow().keys().copied().collect()
    }

    pub fn add_disk(&self, dev: DevT, disk: Rc<dyn GenDisk>, capacity: u64) {
        self.disk_majors.add(dev);
        self.disks.borrow_mut().insert(dev, (disk, capacity));
    }

    /// False if `dev` is not a disk.
    pub fn del_disk(&self, dev: DevT) -> bool {
        self.disks.borrow_mut().remove(&dev).is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use blksnap_core::kernel::{completion, Bio, BioResult, Completer, DevT, GenDisk, Stamps};

    use crate::cache::WriteCache;
    use crate::data_faults::{DataFault, DataFaultKind};
    use crate::device::{Device, Fill};
    use crate::kernel::Sim;

    fn device(dev: DevT) -> Device {
        Device::new(format!("d{}", dev.0), dev, 0, 1024, Fill::Zero)
    }

    /// One bio through the device path, run to its end.
    fn io(sim: &Rc<Sim>, bio: Bio) -> BioResult {
        let (done, completer) = completion();
        sim.submit_to_device(bio, completer);
        let result = Rc::new(RefCell::new(None));
        let out = result.clone();
        let wait = async move { *out.borrow_mut() = Some(done.await) };
        sim.spawn_process("io", Box::pin(wait));
        assert!(sim.run());
        result.take().expect("the bio ended")
    }

    fn media(sim: &Sim, dev: DevT, sector: u64, count: u64) -> Vec<u64> {
        let devices = sim.blk.devices.borrow();
        devices.get(&dev).unwrap().read(sector, count).to_vec()
    }

    /// The store fast path must not bypass a device's data fault rules:
    /// the device with a lost-write rule keeps its old content, the
    /// other one, without rules, takes the write.
    #[test]
    fn a_device_with_data_fault_rules_still_has_its_writes_decided() {
        let sim = Sim::new(1);
        let (faulty, plain) = (DevT::new(8, 0), DevT::new(8, 16));
        sim.add_device(device(faulty));
        sim.add_device(device(plain));
        let rule = DataFault {
            kind: DataFaultKind::LostWrite,
            range: None,
            after: 0,
            count: None,
            per_million: None,
            nth: None,
        };
        sim.data_faults.borrow_mut().add(faulty, rule);
        assert!(io(&sim, Bio::write(faulty, 10, vec![7, 8, 9])).is_ok());
        assert!(io(&sim, Bio::write(plain, 10, vec![7, 8, 9])).is_ok());
        assert_eq!(media(&sim, faulty, 10, 3), [0, 0, 0]);
        assert_eq!(media(&sim, plain, 10, 3), [7, 8, 9]);
    }

    /// Nor the write cache: a write with the cache on is held there (not
    /// on the media), and a read sees it over the media.
    #[test]
    fn a_device_with_a_write_cache_holds_writes_and_reads_through_it() {
        let sim = Sim::new(1);
        let dev = DevT::new(8, 0);
        let mut cached = device(dev);
        cached.cache = WriteCache::enabled(1, "d");
        sim.add_device(cached);
        assert!(io(&sim, Bio::write(dev, 4, vec![5, 6])).is_ok());
        let dirty = sim
            .blk
            .devices
            .borrow()
            .get(&dev)
            .unwrap()
            .cache
            .dirty_sectors();
        assert_eq!(dirty, 2, "this seed destages nothing early");
        assert_eq!(media(&sim, dev, 4, 2), [0, 0]);
        let read = io(&sim, Bio::read(dev, 3, 4)).unwrap();
        assert_eq!(read.to_vec(), [0, 5, 6, 0]);
    }

    struct NoDisk;

    impl GenDisk for NoDisk {
        fn submit_bio(&self, _bio: Bio, done: Completer<BioResult>) {
            done.complete(Ok(Stamps::new()));
        }
    }

    /// The lookups that replaced maps: devices in a list (scanned while
    /// short, searched past 8), image disks behind a bit per major, and
    /// filter calls counted per device.
    #[test]
    fn devices_disks_and_filter_calls_are_found_by_number() {
        let sim = Sim::new(1);
        let blk = &sim.blk;
        let (short, long) = ([3, 1, 2], [9, 4, 12, 0, 7, 11, 5, 10, 6, 8, 13]);
        for minor in short.into_iter().chain(long) {
            blk.add_device(device(DevT::new(8, minor * 16)));
            let devices = blk.devices.borrow();
            for dev in devices.keys() {
                assert_eq!(devices.get(dev).map(|d| d.dev), Some(*dev));
            }
            assert!(devices.get(&DevT::new(8, minor * 16 + 1)).is_none());
            assert!(devices.keys().is_sorted());
        }
        let (image, other) = (
            DevT::new(super::IMAGE_MAJOR, 0),
            DevT::new(super::IMAGE_MAJOR, 1),
        );
        assert!(blk.disk(image).is_none());
        blk.add_disk(image, Rc::new(NoDisk), 64);
        blk.add_disk(other, Rc::new(NoDisk), 32);
        assert_eq!(blk.disk(image).map(|(_, c)| c), Some(64));
        assert!(blk.del_disk(other));
        assert!(blk.disk(other).is_none(), "a stale bit is only a search");
        assert!(blk.disk(DevT::new(8, 0)).is_none());
        blk.power_cut();
        assert!(blk.disk(image).is_none());
        let (a, b) = (DevT::new(8, 0), DevT::new(8, 16));
        blk.filter_call_begin(a);
        blk.filter_call_begin(b);
        blk.filter_call_begin(a);
        blk.filter_call_end(b);
        assert_eq!((blk.filter_calls_on(a), blk.filter_calls_on(b)), (2, 0));
        assert_eq!(blk.filter_calls_on(DevT::new(8, 32)), 0);
    }
}
