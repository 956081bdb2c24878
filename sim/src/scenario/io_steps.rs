//! IO steps: reads and writes on originals and images, verification,
//! workloads. Every user IO goes through `block::user_bio`, where the
//! oracle records and judges it.

use blksnap_core::kernel::{Bio, DevT, Errno, Stamp};

use super::model::{Expect, Target, Workload};
use super::runner::{check_expect, io_failed, Run};
use super::{Cause, IoOp, StepError};
use crate::block;
use crate::fs;
use crate::trace::TraceEvent;

/// Largest image read in full by VerifyImage (2 GiB); larger images are
/// checked where they were written, plus random samples.
const VERIFY_FULL_LIMIT: u64 = 1 << 22;
const VERIFY_BIO_SECTORS: u64 = 1024;
const VERIFY_SAMPLES: u64 = 64;

/// What a write sends: a bio, or on a device with the filesystem model
/// (and without REQ_NOWAIT) the data `fs::fs_write` writes.
enum WriteOp {
    Bio(Bio),
    Fs(Vec<Stamp>),
}

impl Run {
    /// The block device a target names, or why there is none.
    pub(super) fn target_dev(&self, target: &Target) -> Result<DevT, Errno> {
        match target {
            Target::Original(device) => Ok(self.dev(device)),
            // Not `record`: it clones the snapshot's record (its map of
            // images), which every op of an image workload paid.
            Target::Image(snapshot, device) => self
                .image_of(snapshot, self.dev(device))
                .ok_or(Errno::ENXIO),
        }
    }

    pub(super) fn has_fs(&self, dev: DevT) -> bool {
        self.sim.fs.borrow().contains_key(&dev)
    }

    pub(super) async fn write(
        &self,
        target: &Target,
        sector: u64,
        sectors: u64,
        nowait: bool,
    ) -> Result<(), Errno> {
        let dev = self.target_dev(target)?;
        self.write_dev(dev, sector, sectors, nowait).await
    }

    /// `write` to a device already looked up.
    async fn write_dev(
        &self,
        dev: DevT,
        sector: u64,
        sectors: u64,
        nowait: bool,
    ) -> Result<(), Errno> {
        match self.prepare_write(dev, sector, sectors, nowait) {
            WriteOp::Fs(data) => fs::fs_write(&self.sim, dev, sector, &data).await,
            // user_bio_judged, not user_bio: one future less to go through
            // on each of the op's polls (issue 10).
            WriteOp::Bio(bio) => block::user_bio_judged(&self.sim, bio).await.0.map(|_| ()),
        }
    }

    /// A write's work before it sleeps: its sectors charged, its fresh
    /// stamps drawn, and what carries them. Inlined: its result (a bio)
    /// was built in its frame and copied out, once per write.
    #[inline(always)]
    fn prepare_write(&self, dev: DevT, sector: u64, sectors: u64, nowait: bool) -> WriteOp {
        self.charge_sectors(sectors, true);
        let data = self.fresh_stamps(sectors);
        if self.has_fs(dev) && !nowait {
            return WriteOp::Fs(data.to_vec());
        }
        let mut bio = Bio::write(dev, sector, data);
        bio.flags.nowait = nowait;
        WriteOp::Bio(bio)
    }

    pub(super) async fn read(
        &self,
        target: &Target,
        sector: u64,
        sectors: u64,
    ) -> Result<(), Errno> {
        let dev = self.target_dev(target)?;
        self.charge_sectors(sectors, false);
        if self.has_fs(dev) {
            return fs::fs_read(&self.sim, dev, sector, sectors)
                .await
                .map(|_| ());
        }
        // The oracle judged the data; the callers need only the outcome.
        block::user_bio_judged(&self.sim, Bio::read(dev, sector, sectors))
            .await
            .0
            .map(|_| ())
    }

    /// Read the image and let the oracle judge it. An empty check fails:
    /// with `expect: Ok` the oracle must have compared at least one
    /// sector; with `Err("EIO")` at least one read must fail with EIO (the
    /// oracle then judges at the end whether a fault or a corrupted event
    /// explains each failure).
    pub(super) async fn verify_image(
        &self,
        snapshot: &str,
        device: &str,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let orig = self.dev(device);
        let target = Target::Image(snapshot.to_string(), device.to_string());
        let image = self.target_dev(&target).map_err(|_| {
            StepError::new(
                Cause::NoImage,
                format!("no image of {device} in {snapshot}"),
            )
        })?;
        let capacity = self.sim.disk_capacity(image).unwrap_or(0);
        let (mut judged, mut eio, mut other) = (0u64, 0u64, None);
        for (sector, count) in self.verify_ranges(orig, capacity) {
            if self.out_of_budget() {
                break;
            }
            self.charge_sectors(count, false);
            let bio = Bio::read(image, sector, count);
            let (result, seen) = block::user_bio_judged(&self.sim, bio).await;
            judged += seen.sectors;
            match result {
                Ok(_) => {}
                Err(Errno::EIO) => eio += 1,
                Err(e) => {
                    other.get_or_insert((sector, e));
                }
            }
            if let Err(e) = result {
                self.sim.record(TraceEvent::Warn {
                    msg: format!("image read at {sector} failed: {e}"),
                });
            }
        }
        self.verify_verdict(
            &format!("image of {device} in {snapshot}"),
            expect,
            judged,
            eio,
            other,
        )
    }

    /// Judge a VerifyImage by what the oracle judged.
    fn verify_verdict(
        &self,
        what: &str,
        expect: &Expect,
        judged: u64,
        eio: u64,
        other: Option<(u64, Errno)>,
    ) -> Result<(), StepError> {
        match expect {
            Expect::Err(_) => {
                if let Some((sector, e)) = other {
                    return Err(format!(
                        "expected the {what} to fail with EIO, a read at {sector} failed with {e}"
                    )
                    .into());
                }
                if eio == 0 {
                    return Err(format!(
                        "expected the {what} to be unreadable (EIO), every read succeeded \
                         ({judged} sectors judged)"
                    )
                    .into());
                }
                Ok(())
            }
            _ if judged == 0 => {
                self.sim.fail(
                    "coverage",
                    format!(
                        "VerifyImage of the {what} judged no sector ({eio} reads failed with EIO); \
                         say expect: Err(\"EIO\") if the image is expected to be unreadable"
                    ),
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// What VerifyImage reads: everything for small devices; for large ones,
    /// each written sector's neighbourhood plus random samples.
    pub(super) fn verify_ranges(&self, orig: DevT, capacity: u64) -> Vec<(u64, u64)> {
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

    /// Read back every sector users wrote; the oracle must judge at least
    /// one of them (a device nobody wrote, or one written only inside
    /// storage ranges, verifies nothing).
    pub(super) async fn verify_original(&self, device: &str) -> Result<(), StepError> {
        let dev = self.dev(device);
        let sectors = self.sim.oracle.borrow().written_sectors(dev);
        let mut judged = 0;
        for sector in sectors {
            if self.out_of_budget() {
                break;
            }
            self.charge_sectors(1, false);
            let bio = Bio::read(dev, sector, 1);
            let (result, seen) = block::user_bio_judged(&self.sim, bio).await;
            result.map_err(|e| {
                io_failed(
                    IoOp::Read,
                    e,
                    format_args!("read of {device} sector {sector} failed"),
                )
            })?;
            judged += seen.sectors;
        }
        if judged == 0 {
            self.sim.fail(
                "coverage",
                format!("VerifyOriginal of {device} judged no sector: no user write to check"),
            );
        }
        Ok(())
    }

    /// A Read step. One that expects success on a device without the
    /// filesystem model must have its data judged by the oracle (a read of
    /// an image nobody bound, or of storage ranges only, checks nothing).
    pub(super) async fn read_step(
        &self,
        target: &Target,
        sector: u64,
        sectors: u64,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let dev = self.target_dev(target).ok();
        let Some(dev) = dev.filter(|d| !self.has_fs(*d) && *expect == Expect::Ok) else {
            let result = self.read(target, sector, sectors).await;
            return check_expect(expect, result.map(|_| 0));
        };
        self.charge_sectors(sectors, false);
        let (result, judged) =
            block::user_bio_judged(&self.sim, Bio::read(dev, sector, sectors)).await;
        check_expect(expect, result.map(|_| 0))?;
        if judged.sectors == 0 {
            self.sim.fail(
                "coverage",
                format!(
                    "Read of {dev} sectors {sector}..{} judged no sector",
                    sector + sectors
                ),
            );
        }
        Ok(())
    }

    pub(super) async fn workload(&self, w: &Workload) -> Result<(), StepError> {
        let dev = self
            .target_dev(&w.target)
            .map_err(|e| format!("workload target: {e}"))?;
        let capacity = match w.target {
            Target::Original(_) => self
                .sim
                .blk
                .devices
                .borrow()
                .get(&dev)
                .map_or(0, |d| d.capacity),
            Target::Image(..) => self.sim.disk_capacity(dev).unwrap_or(0),
        };
        let (start, count) = w.region.unwrap_or((0, capacity));
        // An original's device number is fixed for the run (`devices` is
        // built at load): looked up once, not by name on every op. An
        // image's is looked up per op, as the image may go away.
        let original = match &w.target {
            Target::Original(_) => Some(dev),
            Target::Image(..) => None,
        };
        let align = w.align.max(1);
        if count < align {
            return Err("workload region smaller than one aligned IO".into());
        }
        // Fixed for the workload: worked out once, not with two divisions
        // per op.
        let units = (count / align).max(1);
        let max_units = (w.max_sectors / align).clamp(1, units);
        for _ in 0..w.ops {
            if self.out_of_budget() {
                break;
            }
            let (sector, sectors, is_read) = {
                let mut rng = self.workload_rng.borrow_mut();
                let len_units = rng.range(1, max_units);
                let first = rng.below(units - len_units + 1);
                let is_read = rng.below(100) < u64::from(w.read_percent);
                // first * align < count: no overflow; the sum is bounded by
                // the loader (region end at most 2^48), saturating anyway.
                (
                    start.saturating_add(first * align),
                    len_units * align,
                    is_read,
                )
            };
            if is_read {
                let _ = self.read(&w.target, sector, sectors).await;
            } else if let Some(dev) = original {
                // `write_dev`'s body, awaited here: every poll of the op
                // goes through one future less (issue 10).
                match self.prepare_write(dev, sector, sectors, w.nowait) {
                    WriteOp::Fs(data) => {
                        let _ = fs::fs_write(&self.sim, dev, sector, &data).await;
                    }
                    WriteOp::Bio(bio) => {
                        let _ = block::user_bio_judged(&self.sim, bio).await;
                    }
                }
            } else {
                let _ = self.write(&w.target, sector, sectors, w.nowait).await;
            }
        }
        Ok(())
    }
}
