//! The backup workflow, as a backup tool drives blksnap: a full backup
//! copies a taken image onto a backup device; an incremental one reads the
//! CBT map and copies only the blocks changed since the last backup; a
//! compare checks that the backup now equals the image.
//!
//! Everything goes through the user paths: TRACKER_COLLECT and
//! READ_CBT_MAP through the real ioctls, image reads and backup writes
//! through the block layer (so the oracle judges every one of them).
//!
//! Like a real tool, the backup keeps its own metadata with the data: the
//! last sectors of the backup device hold the original it copies, the CBT
//! generation and the snapshot number of the last backup. An incremental
//! backup whose metadata is missing, names another original or another
//! generation does a full copy instead (spec 4.4: a new generation says
//! nothing of older snapshots).

use std::collections::BTreeMap;

use blksnap_core::kernel::{Bio, DevT, Stamp};
use blksnap_core::uapi::*;

use super::ioctl_steps::{blk_dev, dev_t};
use super::model::Target;
use super::runner::{io_failed, Run};
use super::{Cause, IoOp, StepError};
use crate::block;

/// Sectors per image read or backup write.
const COPY_SECTORS: u64 = 1024;
/// A backup that outgrew the run's work budget (the run fails "liveness").
const SPENT: &str = "backup stopped: the run's work budget is spent";
/// Largest image a backup copies (2 GiB), so a run stays short.
const MAX_BACKUP_SECTORS: u64 = 1 << 22;
/// The metadata record: magic, original, generation (two stamps), number.
const META_SECTORS: u64 = 5;
/// "BKSPMETA": no write stamp or pattern stamp has this value.
const META_MAGIC: Stamp = 0x424b_5350_4d45_5441;

/// What the last backup on a device was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    orig: DevT,
    generation: [u8; 16],
    /// The number a consumer compares CBT bytes with.
    base: u8,
}

impl Meta {
    fn stamps(&self) -> Vec<Stamp> {
        let (lo, hi) = self.generation.split_at(8);
        vec![
            META_MAGIC,
            u64::from(self.orig.0),
            u64::from_le_bytes(lo.try_into().unwrap_or_default()),
            u64::from_le_bytes(hi.try_into().unwrap_or_default()),
            u64::from(self.base),
        ]
    }

    fn parse(stamps: &[Stamp]) -> Option<Meta> {
        let [magic, orig, lo, hi, base] = stamps else {
            return None;
        };
        if *magic != META_MAGIC {
            return None;
        }
        let mut generation = [0u8; 16];
        generation[..8].copy_from_slice(&lo.to_le_bytes());
        generation[8..].copy_from_slice(&hi.to_le_bytes());
        Some(Meta {
            orig: DevT(u32::try_from(*orig).ok()?),
            generation,
            base: u8::try_from(*base).ok()?,
        })
    }
}

/// When the tool last copied each sector of each backup device: the
/// submission of that copy's write. A device fault on a backup sector
/// before its copy was overwritten by the copy, so only a fault since then
/// can explain a backup that differs from the image.
#[derive(Default)]
pub struct BackupCopies {
    /// Per device, disjoint runs: start -> (end, copy submitted at).
    runs: BTreeMap<DevT, BTreeMap<u64, (u64, u64)>>,
}

impl BackupCopies {
    /// The tool's write of [start, start + count) was submitted at `at`.
    fn copied(&mut self, dev: DevT, start: u64, count: u64, at: u64) {
        let end = start.saturating_add(count);
        if start >= end {
            return;
        }
        let runs = self.runs.entry(dev).or_default();
        // Runs that overlap [start, end) keep only their parts outside it.
        let first = runs
            .range(..start)
            .next_back()
            .filter(|(_, (e, _))| *e > start)
            .map_or(start, |(s, _)| *s);
        let overlapping: Vec<(u64, (u64, u64))> =
            runs.range(first..end).map(|(s, v)| (*s, *v)).collect();
        for (s, (e, t)) in overlapping {
            runs.remove(&s);
            if s < start {
                runs.insert(s, (start, t));
            }
            if e > end {
                runs.insert(end, (e, t));
            }
        }
        runs.insert(start, (end, at));
    }

    /// When the copy now on `dev`'s `sector` was submitted, if the tool
    /// ever copied that sector.
    fn copied_at(&self, dev: DevT, sector: u64) -> Option<u64> {
        let (_, (end, at)) = self.runs.get(&dev)?.range(..=sector).next_back()?;
        (sector < *end).then_some(*at)
    }
}

/// A snapshot number as the base of the next incremental: after the 255th
/// TAKE the new generation marks changes from 1, so 255 counts as 0.
fn base_of(snap_number: u8) -> u8 {
    if snap_number == 255 {
        0
    } else {
        snap_number
    }
}

/// The image, the original and the backup device of one backup step.
struct Plan {
    orig: DevT,
    image: DevT,
    backup: DevT,
    sectors: u64,
    meta_at: u64,
}

impl Run {
    fn backup_plan(&self, snapshot: &str, device: &str, backup: &str) -> Result<Plan, StepError> {
        let orig = self.dev(device);
        let target = Target::Image(snapshot.to_string(), device.to_string());
        let image = self.target_dev(&target).map_err(|_| {
            let message = format!("backup: no image of {device} in {snapshot}");
            StepError::new(Cause::NoImage, message)
        })?;
        let sectors = self.sim.disk_capacity(image).unwrap_or(0);
        if sectors == 0 || sectors > MAX_BACKUP_SECTORS {
            return Err(format!(
                "backup: the image of {device} has {sectors} sectors; backups copy 1 to {MAX_BACKUP_SECTORS}"
            ).into());
        }
        let backup_dev = self.dev(backup);
        let room = self
            .sim
            .blk
            .devices
            .borrow()
            .get(&backup_dev)
            .map_or(0, |d| d.capacity);
        if room < sectors + META_SECTORS {
            return Err(format!(
                "backup: {backup} has {room} sectors, needs {} (the image and {META_SECTORS} of metadata)",
                sectors + META_SECTORS
            ).into());
        }
        Ok(Plan {
            orig,
            image,
            backup: backup_dev,
            sectors,
            meta_at: room - META_SECTORS,
        })
    }

    /// FullBackup: copy every sector, then record the metadata.
    pub(super) async fn full_backup(
        &self,
        snapshot: &str,
        device: &str,
        backup: &str,
    ) -> Result<(), StepError> {
        let plan = self.backup_plan(snapshot, device, backup)?;
        let info = self.cbt_info(plan.orig).await?;
        self.copy_full(&plan).await?;
        self.write_meta(&plan, &info).await
    }

    /// IncrementalBackup: the blocks marked newer than the last backup's
    /// number, or everything when the last backup is of another generation.
    pub(super) async fn incremental_backup(
        &self,
        snapshot: &str,
        device: &str,
        backup: &str,
        expect_full: Option<bool>,
    ) -> Result<(), StepError> {
        let plan = self.backup_plan(snapshot, device, backup)?;
        let info = self.cbt_info(plan.orig).await?;
        let last = self.read_meta(&plan).await?;
        let base = last
            .filter(|m| m.orig == plan.orig && m.generation == info.generation_id.b)
            .map(|m| m.base);
        if let Some(want) = expect_full.filter(|w| *w != base.is_none()) {
            return Err(format!(
                "IncrementalBackup of {device} did {} backup, expected {}",
                if base.is_none() {
                    "a full"
                } else {
                    "an incremental"
                },
                if want {
                    "a full one"
                } else {
                    "an incremental one"
                }
            )
            .into());
        }
        match base {
            None => self.copy_full(&plan).await?,
            Some(base) => self.copy_changed(&plan, &info, base).await?,
        }
        self.write_meta(&plan, &info).await
    }

    /// CompareBackup: the backup equals the image, and what the oracle
    /// allows for the image, sector for sector.
    pub(super) async fn compare_backup(
        &self,
        snapshot: &str,
        device: &str,
        backup: &str,
    ) -> Result<(), StepError> {
        let plan = self.backup_plan(snapshot, device, backup)?;
        let mut judged = 0;
        let mut by_fault = Vec::new();
        for sector in (0..plan.sectors).step_by(COPY_SECTORS as usize) {
            if self.out_of_budget() {
                return Err(SPENT.into());
            }
            let count = COPY_SECTORS.min(plan.sectors - sector);
            let image = self.user_read(plan.image, sector, count).await?;
            let saved = self.user_read(plan.backup, sector, count).await?;
            let now = self.sim.now();
            for (i, (got, want)) in saved.iter().zip(&image).enumerate() {
                let at = sector + i as u64;
                let allowed = self.sim.oracle.borrow().image_allowed(plan.image, at, now);
                if got != want || !allowed.contains(got) {
                    let message = format!(
                        "backup {backup} differs from the image of {device} in {snapshot} at \
                         sector {at}: backup {got:#x}, image {want:#x}, allowed at TAKE {allowed:x?}"
                    );
                    match self.device_fault_cause(&plan, at, got == want, now) {
                        Some(cause) => by_fault.push(format!(
                            "undetected corruption caused by a device fault: {message}; {cause}"
                        )),
                        None => return Err(message.into()),
                    }
                }
                judged += 1;
            }
        }
        if judged == 0 {
            return Err(format!("CompareBackup of {device} judged no sector").into());
        }
        // What injected data faults explain is reported as theirs, once
        // per step with its first sector.
        if let Some(first) = by_fault.first() {
            let message = match by_fault.len() - 1 {
                0 => first.clone(),
                n => format!("{first} (and {n} more sectors)"),
            };
            self.sim.fail_by_fault(
                "expect",
                format!("CompareBackup: {message}"),
                self.sim.now(),
            );
        }
        Ok(())
    }

    /// The injected data fault that explains a wrong sector `at` of the
    /// comparison, if one does: the image's own value (the backup equals
    /// it) through the oracle's damage record since TAKE; a backup that
    /// differs from the image, through a fault on the backup device's
    /// sector itself since the tool's copy of that sector was submitted
    /// (an older fault was overwritten by the copy; a sector the tool
    /// never copied has no fault to blame).
    fn device_fault_cause(&self, plan: &Plan, at: u64, same: bool, now: u64) -> Option<String> {
        let oracle = self.sim.oracle.borrow();
        if same {
            return oracle.image_damage_cause(plan.image, at, now);
        }
        let backup_sector = at;
        let since = self
            .backup_copies
            .borrow()
            .copied_at(plan.backup, backup_sector)?;
        oracle
            .device_damage
            .explains(plan.backup, backup_sector, since, now)
    }

    // --- the tool's pieces --------------------------------------------------------------

    async fn user_read(&self, dev: DevT, sector: u64, count: u64) -> Result<Vec<Stamp>, StepError> {
        self.charge_sectors(count, false);
        block::user_bio(&self.sim, Bio::read(dev, sector, count))
            .await
            .map(|data| data.to_vec())
            .map_err(|e| {
                io_failed(
                    IoOp::Read,
                    e,
                    format_args!("backup: read of {dev} at {sector} failed"),
                )
            })
    }

    async fn user_write(&self, dev: DevT, sector: u64, data: Vec<Stamp>) -> Result<(), StepError> {
        self.charge_sectors(data.len() as u64, true);
        block::user_bio(&self.sim, Bio::write(dev, sector, data))
            .await
            .map(|_| ())
            .map_err(|e| {
                io_failed(
                    IoOp::Write,
                    e,
                    format_args!("backup: write of {dev} at {sector} failed"),
                )
            })
    }

    async fn copy(&self, plan: &Plan, sector: u64, count: u64) -> Result<(), StepError> {
        let data = self.user_read(plan.image, sector, count).await?;
        let submitted = self.sim.now();
        self.user_write(plan.backup, sector, data).await?;
        self.backup_copies
            .borrow_mut()
            .copied(plan.backup, sector, count, submitted);
        Ok(())
    }

    async fn copy_full(&self, plan: &Plan) -> Result<(), StepError> {
        for sector in (0..plan.sectors).step_by(COPY_SECTORS as usize) {
            if self.out_of_budget() {
                return Err(SPENT.into());
            }
            self.copy(plan, sector, COPY_SECTORS.min(plan.sectors - sector))
                .await?;
        }
        Ok(())
    }

    /// Copy the blocks whose CBT byte is newer than `base`.
    async fn copy_changed(
        &self,
        plan: &Plan,
        info: &BlkSnapCbtInfo,
        base: u8,
    ) -> Result<(), StepError> {
        let block_sectors = u64::from(info.blk_size / 512);
        if block_sectors == 0 {
            return Err(format!(
                "backup: TRACKER_COLLECT reports blk_size {}, not a whole number of sectors",
                info.blk_size
            )
            .into());
        }
        let map = self.read_map(plan.orig, info.blk_count).await?;
        for (block, _) in map.iter().enumerate().filter(|(_, b)| **b > base) {
            let sector = block as u64 * block_sectors;
            if sector < plan.sectors {
                let count = block_sectors.min(plan.sectors - sector);
                for part in (sector..sector + count).step_by(COPY_SECTORS as usize) {
                    if self.out_of_budget() {
                        return Err(SPENT.into());
                    }
                    let n = COPY_SECTORS.min(sector + count - part);
                    self.copy(plan, part, n).await?;
                }
            }
        }
        Ok(())
    }

    /// TRACKER_COLLECT, as the tool calls it: count, then the entries.
    async fn cbt_info(&self, orig: DevT) -> Result<BlkSnapCbtInfo, StepError> {
        let failed = |e| format!("backup: TRACKER_COLLECT failed: {e}");
        let query = self.map_user(BlkSnapTrackerCollect::default().encode());
        self.ioctl_at(IOCTL_BLK_SNAP_TRACKER_COLLECT, query)
            .await
            .map_err(failed)?;
        let count = self
            .user
            .read(query, BlkSnapTrackerCollect::SIZE)
            .and_then(|b| BlkSnapTrackerCollect::decode(&b))
            .map_or(0, |c| c.count);
        let size = BlkSnapCbtInfo::SIZE;
        let items = super::ioctl_steps::array_items(count).max(1);
        let array = self.map_user(vec![0; size * items]);
        let arg = BlkSnapTrackerCollect {
            count,
            cbt_info_array: array,
        };
        let addr = self.map_user(arg.encode());
        self.ioctl_at(IOCTL_BLK_SNAP_TRACKER_COLLECT, addr)
            .await
            .map_err(failed)?;
        (0..items as u64)
            .filter_map(|i| {
                let bytes = self.user.read(array + i * size as u64, size)?;
                BlkSnapCbtInfo::decode(&bytes)
            })
            .find(|info| dev_t(info.dev_id) == orig)
            .ok_or_else(|| format!("backup: TRACKER_COLLECT does not list {orig}").into())
    }

    /// READ_CBT_MAP of the whole map in one call, as the library does.
    async fn read_map(&self, orig: DevT, blk_count: u32) -> Result<Vec<u8>, StepError> {
        let buff = self.map_user(vec![0; super::ioctl_steps::cbt_buffer_bytes(blk_count)]);
        let arg = BlkSnapTrackerReadCbtBitmap {
            dev_id: blk_dev(orig),
            offset: 0,
            length: blk_count,
            buff,
        };
        let addr = self.map_user(arg.encode());
        let copied = self
            .ioctl_at(IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP, addr)
            .await
            .map_err(|e| format!("backup: READ_CBT_MAP of {orig} failed: {e}"))?;
        if copied != i64::from(blk_count) {
            return Err(format!(
                "backup: READ_CBT_MAP of {orig} copied {copied} bytes of a {blk_count}-block map"
            )
            .into());
        }
        Ok(self.user.read(buff, blk_count as usize).unwrap_or_default())
    }

    async fn read_meta(&self, plan: &Plan) -> Result<Option<Meta>, StepError> {
        let stamps = self
            .user_read(plan.backup, plan.meta_at, META_SECTORS)
            .await?;
        Ok(Meta::parse(&stamps))
    }

    async fn write_meta(&self, plan: &Plan, info: &BlkSnapCbtInfo) -> Result<(), StepError> {
        let meta = Meta {
            orig: plan.orig,
            generation: info.generation_id.b,
            base: base_of(info.snap_number),
        };
        self.user_write(plan.backup, plan.meta_at, meta.stamps())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_rejects_other_data() {
        let meta = Meta {
            orig: DevT::new(7, 3),
            generation: [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6],
            base: 254,
        };
        assert_eq!(Meta::parse(&meta.stamps()), Some(meta));
        assert_eq!(Meta::parse(&[0; 5]), None);
        assert_eq!(Meta::parse(&[META_MAGIC, 1, 2]), None);
    }

    #[test]
    fn a_copy_replaces_the_times_of_the_sectors_it_overwrites() {
        let (d, e) = (DevT::new(7, 2), DevT::new(7, 3));
        let mut copies = BackupCopies::default();
        assert_eq!(copies.copied_at(d, 0), None, "never copied");
        copies.copied(d, 0, 1024, 10);
        copies.copied(d, 1024, 1024, 20);
        copies.copied(d, 512, 8, 30);
        copies.copied(d, 1000, 100, 40);
        let at = |copies: &BackupCopies, sectors: &[u64]| -> Vec<Option<u64>> {
            sectors.iter().map(|s| copies.copied_at(d, *s)).collect()
        };
        assert_eq!(
            at(&copies, &[0, 511, 512, 519, 520, 999]),
            [Some(10), Some(10), Some(30), Some(30), Some(10), Some(10)]
        );
        assert_eq!(
            at(&copies, &[1000, 1099, 1100, 2047]),
            [Some(40), Some(40), Some(20), Some(20)]
        );
        assert_eq!(at(&copies, &[2048]), [None], "past the last copy");
        assert_eq!(copies.copied_at(e, 0), None, "another device");
        copies.copied(d, 0, 4096, 50);
        assert_eq!(
            at(&copies, &[0, 1000, 4095, 4096]),
            [Some(50), Some(50), Some(50), None]
        );
    }

    #[test]
    fn the_wrap_number_is_the_base_zero_of_the_new_generation() {
        assert_eq!(base_of(255), 0);
        assert_eq!(base_of(254), 254);
        assert_eq!(base_of(1), 1);
    }
}
