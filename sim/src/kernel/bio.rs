//! The device bio path: a bio handed to a device or an image disk, its
//! completion at a seeded time, and what it does to the media.
//!
//! Glue over the block layer's state (`blk.rs`), the timers, the fault
//! plan and the storage checker.
//!
//! Fault model: EIO at completion when the fault plan, a bad sector range
//! or an error window of the device says so (each recorded as injected
//! and counted in `injected_io_errors`); EIO at submission past the end
//! or to a removed device; a device can be resized or removed at any time
//! (recorded as injected; removal releases its filter as bdev eviction
//! does); a write may complete OK and be lost, corrupted or misdirected
//! (silent data faults, `data_faults.rs`, recorded as injected).

use std::rc::Rc;

use blksnap_core::kernel::{Bio, BioResult, Completer, DevT, Errno, LocalBoxFuture, Stamps};

use super::blk::Disk;
use super::Sim;
use crate::check::injected::FaultKind;

impl Sim {
    /// Hand a bio to a device or an image disk; no filter on this path.
    pub fn submit_to_device(self: &Rc<Self>, bio: Bio, done: Completer<BioResult>) {
        let disk = self.blk.disk(bio.dev);
        self.submit_to(bio, done, disk);
    }

    /// `submit_to_device` with the image disk of `bio.dev` (None: a
    /// device) looked up by the caller, which needed it too.
    pub(super) fn submit_to(
        self: &Rc<Self>,
        bio: Bio,
        done: Completer<BioResult>,
        disk: Option<Disk>,
    ) {
        if let Some((disk, capacity)) = disk {
            let write = bio.op.is_write();
            self.series
                .borrow_mut()
                .image_io(self.now(), bio.dev, write);
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
        self.record_bio_submit(id, &bio);
        let check = self.blk.device_accept(&bio);
        let latency = match check {
            Ok((latency, spike)) => {
                if let Some(extra_ns) = spike {
                    self.record_fault(FaultKind::LatencySpike {
                        dev: bio.dev,
                        sector: bio.sector,
                        extra_ns,
                    });
                }
                latency
            }
            Err(e) => {
                self.record_bio_end(id, false);
                done.complete(Err(e));
                return;
            }
        };
        let at = self.now() + latency;
        self.sched.at(at, super::TimerAction::EndBio(id, bio, done));
    }

    /// Inlined into the timer's action, and so into the executor's loop.
    #[inline(always)]
    pub(super) fn end_device_bio(self: &Rc<Self>, id: u64, bio: Bio, done: Completer<BioResult>) {
        let in_flight = &self.blk.bios_in_flight;
        in_flight.set(in_flight.get() - 1);
        let result = self.apply_bio(&bio);
        self.record_bio_end(id, result.is_ok());
        done.complete(result);
    }

    /// What a bio does to the media, and its result. Inlined with the
    /// rest of a bio's end into the executor's loop.
    #[inline(always)]
    fn apply_bio(&self, bio: &Bio) -> BioResult {
        use blksnap_core::kernel::BioOp;
        // The random bio error's stream is borrowed only when it is on
        // (`bio_error` draws nothing with no rate).
        let injected = {
            let mut faults = self.faults.borrow_mut();
            faults.bio_error_ppm > 0 && faults.bio_error(bio, &mut self.fault_rng.borrow_mut())
        };
        let mut devices = self.blk.devices.borrow_mut();
        let device = devices.get_mut(&bio.dev).ok_or(Errno::EIO)?;
        // No longer in flight: ended here, whatever its result.
        device.in_flight = device.in_flight.saturating_sub(1);
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
        if bio.op == BioOp::Read && device.disk_faults.read_fails(bio.sector, bio.sectors) {
            drop(devices);
            self.record_fault(FaultKind::TransientReadError {
                dev: bio.dev,
                sector: bio.sector,
                sectors: bio.sectors,
            });
            return Err(Errno::EIO);
        }
        // Through the device's write cache (`crate::cache`; off: the media).
        match bio.op {
            BioOp::Read => Ok(crate::cache::read(device, bio.sector, bio.sectors)),
            // A silent data fault decides what is stored, then the cache
            // holds it like any other write.
            BioOp::Write => {
                crate::data_faults::store(self, device, bio);
                Ok(Stamps::new())
            }
            _ => {
                crate::cache::write_bio(device, bio);
                Ok(Stamps::new())
            }
        }
    }

    /// The engine's own writes go to the diff storage, and only there:
    /// a bio to a device, not to an image disk (the caller knows which).
    /// Inlined into `submit_bio` (its one caller).
    #[inline(always)]
    pub(crate) fn check_engine_bio(&self, bio: &Bio) {
        if !bio.op.is_write() {
            return;
        }
        let now = self.now();
        self.series
            .borrow_mut()
            .engine_write(now, bio.dev, bio.sector, bio.sectors);
        let verdict = self.storage.borrow_mut().engine_write(
            now,
            bio.dev,
            bio.sector,
            &bio.data,
            bio.sectors,
        );
        if let Err(message) = verdict {
            crate::check::device_faults::storage_failure(self, bio, message);
        }
    }

    /// Change a device's capacity (a resized loop device).
    pub fn resize_device(&self, dev: DevT, sectors: u64) {
        if let Some(device) = self.blk.devices.borrow_mut().get_mut(&dev) {
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
        let in_flight = self.blk.devices.borrow_mut().get_mut(&dev).map(|device| {
            device.removed = true;
            device.in_flight
        });
        if let Some(bios) = in_flight {
            self.record_fault(FaultKind::Removal { dev });
            if bios > 0 {
                self.record_fault(FaultKind::RemovalInFlight { dev, bios });
            }
        }
        let filter = self.blk.filters_mut().remove(&dev);
        if let Some(filter) = filter {
            filter.release();
        }
    }

    /// The queue freeze of filter attach/detach: wait until no filter
    /// callback runs on `dev`.
    pub(crate) fn wait_for_quiesce(self: &Rc<Self>, dev: DevT) -> LocalBoxFuture<'static, ()> {
        let sim = self.clone();
        Box::pin(async move {
            while sim.blk.filter_calls_on(dev) > 0 {
                sim.sleep(10_000).await;
            }
        })
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
