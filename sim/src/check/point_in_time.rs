//! The point-in-time oracle (design section 4).
//!
//! It keeps its own history of every user write to every device (originals
//! and images), with the virtual times at which each was submitted and
//! completed. A snapshot image must read, for each sector, the original's
//! content at TAKE plus the image's own writes, and nothing else; an
//! original must read what users wrote to it. Where IO overlapped in time,
//! any of the overlapping values is allowed, and nothing more. An image
//! read that fails is allowed only once the engine has reported the
//! snapshot corrupted for that device.

use std::collections::{BTreeMap, BTreeSet};

use blksnap_core::kernel::{Bio, BioOp, BioResult, DevT, Stamp};

use crate::device::{pattern_stamp, Fill};

/// One user write as the oracle saw it.
#[derive(Clone, Debug)]
struct WriteOp {
    sector: u64,
    data: Vec<Stamp>,
    submitted: u64,
    /// None while in flight, and for ever if it failed.
    completed: Option<u64>,
}

impl WriteOp {
    fn stamp(&self, sector: u64) -> Stamp {
        self.data[(sector - self.sector) as usize]
    }
}

/// What the oracle knows of one image.
struct ImageRecord {
    orig: DevT,
    capacity: u64,
    /// The TAKE ioctl's window: the switch happened somewhere inside.
    take_start: u64,
    take_end: u64,
    bound: bool,
    /// When the user started removing it (DESTROY, unload): from then on
    /// its IO may fail.
    going_since: Option<u64>,
}

#[derive(Default)]
pub struct Oracle {
    /// Originals: their fill, for sectors never written.
    devices: BTreeMap<DevT, (u32, Fill)>,
    images: BTreeMap<DevT, ImageRecord>,
    writes: BTreeMap<u64, WriteOp>,
    /// Write ids per (device, sector), in submission order.
    by_sector: BTreeMap<(DevT, u64), Vec<u64>>,
    /// Reads in flight: id -> submission time.
    reads: BTreeMap<u64, u64>,
    next_op: u64,
    /// Image reads that failed: (original, time). Judged at the end.
    failed_image_reads: Vec<(DevT, u64)>,
    /// Originals whose snapshot the engine reported corrupted, and when.
    corrupted: BTreeMap<DevT, u64>,
    /// Diff storage ranges users appended: the engine writes there, so
    /// user reads of them are not judged.
    storage: BTreeMap<DevT, Vec<(u64, u64)>>,
    pub image_reads_checked: u64,
    pub sectors_checked: u64,
}

impl Oracle {
    pub fn add_device(&mut self, dev: DevT, index: u32, fill: Fill) {
        self.devices.insert(dev, (index, fill));
    }

    /// The engine registered an image disk; it is bound to its original
    /// once the scenario learns the pair (COLLECT_IMAGES).
    pub fn image_added(&mut self, image: DevT, capacity: u64) {
        // A new image may reuse the number of one that is gone: its writes
        // are not this image's.
        self.by_sector.retain(|(dev, _), _| *dev != image);
        self.images.insert(
            image,
            ImageRecord {
                orig: DevT(0),
                capacity,
                take_start: 0,
                take_end: 0,
                bound: false,
                going_since: None,
            },
        );
    }

    pub fn image_capacity(&self, image: DevT) -> Option<u64> {
        self.images.get(&image).map(|i| i.capacity)
    }

    /// The image shows `orig` as of the TAKE that ran in [start, end].
    pub fn bind_image(&mut self, image: DevT, orig: DevT, take_start: u64, take_end: u64) {
        if let Some(record) = self.images.get_mut(&image) {
            record.orig = orig;
            record.take_start = take_start;
            record.take_end = take_end;
            record.bound = true;
        }
    }

    /// A range the user gave the engine as diff storage.
    pub fn storage_appended(&mut self, dev: DevT, sector: u64, count: u64) {
        self.storage.entry(dev).or_default().push((sector, count));
    }

    fn is_storage(&self, dev: DevT, sector: u64) -> bool {
        self.storage
            .get(&dev)
            .is_some_and(|ranges| ranges.iter().any(|&(s, c)| sector >= s && sector - s < c))
    }

    /// The storage check: the engine writes only inside ranges the user
    /// appended as diff storage.
    pub fn check_engine_write(&self, dev: DevT, sector: u64, count: u64) -> Result<(), String> {
        let inside = self.storage.get(&dev).is_some_and(|ranges| {
            ranges
                .iter()
                .any(|&(s, c)| sector >= s && sector.saturating_add(count) <= s.saturating_add(c))
        });
        if inside {
            return Ok(());
        }
        Err(format!(
            "the engine wrote {count} sectors at {dev}:{sector}, outside every appended storage range"
        ))
    }

    /// The user is removing the image (DESTROY of its snapshot, unload).
    pub fn image_going(&mut self, image: DevT, now: u64) {
        if let Some(record) = self.images.get_mut(&image) {
            record.going_since.get_or_insert(now);
        }
    }

    /// A removal that failed: the image stays, and its IO must work.
    pub fn image_staying(&mut self, image: DevT) {
        if let Some(record) = self.images.get_mut(&image) {
            record.going_since = None;
        }
    }

    /// Every image the user is removing (unload).
    pub fn all_images_going(&mut self, now: u64) {
        for record in self.images.values_mut() {
            record.going_since.get_or_insert(now);
        }
    }

    /// A corrupted event for `orig`, generated at `time`.
    pub fn corrupted_event(&mut self, orig: DevT, time: u64) {
        self.corrupted.entry(orig).or_insert(time);
    }

    /// A user bio starts. Returns its op id.
    pub fn submit(&mut self, now: u64, bio: &Bio) -> u64 {
        self.next_op += 1;
        let id = self.next_op;
        match bio.op {
            BioOp::Write => {
                for sector in bio.sector..bio.sector + bio.sectors {
                    self.by_sector
                        .entry((bio.dev, sector))
                        .or_default()
                        .push(id);
                }
                let op = WriteOp {
                    sector: bio.sector,
                    data: bio.data.clone(),
                    submitted: now,
                    completed: None,
                };
                self.writes.insert(id, op);
            }
            BioOp::Read => {
                self.reads.insert(id, now);
            }
            _ => {}
        }
        id
    }

    /// A user bio ended: record a write, or judge a read.
    pub fn complete(
        &mut self,
        now: u64,
        id: u64,
        bio: &Bio,
        result: &BioResult,
    ) -> Result<(), String> {
        match bio.op {
            BioOp::Write => {
                if let (Ok(_), Some(op)) = (result, self.writes.get_mut(&id)) {
                    op.completed = Some(now);
                }
                Ok(())
            }
            BioOp::Read => {
                let submitted = self.reads.remove(&id).unwrap_or(now);
                self.judge_read(submitted, now, bio, result)
            }
            _ => Ok(()),
        }
    }

    fn judge_read(
        &mut self,
        from: u64,
        to: u64,
        bio: &Bio,
        result: &BioResult,
    ) -> Result<(), String> {
        if self.images.contains_key(&bio.dev) {
            return self.judge_image_read(from, to, bio, result);
        }
        let (Ok(data), true) = (result, self.devices.contains_key(&bio.dev)) else {
            return Ok(());
        };
        for (i, got) in data.iter().enumerate() {
            let sector = bio.sector + i as u64;
            if self.is_storage(bio.dev, sector) {
                continue;
            }
            let allowed = self.original_values(bio.dev, sector, from, to);
            if !allowed.contains(got) {
                return Err(format!(
                    "original {} sector {sector}: read {got:#x}, expected one of {}",
                    bio.dev,
                    show(&allowed)
                ));
            }
        }
        Ok(())
    }

    fn judge_image_read(
        &mut self,
        from: u64,
        to: u64,
        bio: &Bio,
        result: &BioResult,
    ) -> Result<(), String> {
        let image = &self.images[&bio.dev];
        if !image.bound {
            return Ok(());
        }
        let orig = image.orig;
        let inside = bio
            .sector
            .checked_add(bio.sectors)
            .is_some_and(|end| end <= image.capacity);
        let data = match result {
            Ok(data) => data,
            // Past the end the block layer refuses the bio: not the engine's.
            Err(_) if !inside => return Ok(()),
            // An image being removed may fail its IO.
            Err(_) if image.going_since.is_some_and(|t| t <= to) => return Ok(()),
            Err(_) => {
                self.failed_image_reads.push((orig, to));
                return Ok(());
            }
        };
        self.image_reads_checked += 1;
        for (i, got) in data.iter().enumerate() {
            let sector = bio.sector + i as u64;
            let allowed = self.image_values(bio.dev, sector, from, to);
            self.sectors_checked += 1;
            if !allowed.contains(got) {
                return Err(format!(
                    "image {} of {orig} sector {sector}: read {got:#x}, expected one of {} \
                     (content at TAKE plus the image's own writes)",
                    bio.dev,
                    show(&allowed)
                ));
            }
        }
        Ok(())
    }

    fn initial(&self, dev: DevT, sector: u64) -> Stamp {
        match self.devices.get(&dev) {
            Some((index, Fill::Pattern)) => pattern_stamp(*index, sector),
            _ => 0,
        }
    }

    /// The writes to one sector, in submission order.
    fn sector_writes(&self, dev: DevT, sector: u64) -> impl Iterator<Item = &WriteOp> {
        self.by_sector
            .get(&(dev, sector))
            .into_iter()
            .flatten()
            .filter_map(|id| self.writes.get(id))
    }

    /// The stamp of the last write completed at or before `t`.
    fn last_completed(&self, dev: DevT, sector: u64, t: u64) -> Option<Stamp> {
        self.sector_writes(dev, sector)
            .filter_map(|op| {
                op.completed
                    .filter(|c| *c <= t)
                    .map(|c| (c, op.stamp(sector)))
            })
            .max_by_key(|(c, _)| *c)
            .map(|(_, stamp)| stamp)
    }

    /// Stamps of writes to `sector` that were in flight during [from, to].
    fn overlapping(&self, dev: DevT, sector: u64, from: u64, to: u64) -> Vec<Stamp> {
        self.sector_writes(dev, sector)
            .filter(|op| op.submitted <= to && op.completed.is_none_or(|c| c > from))
            .map(|op| op.stamp(sector))
            .collect()
    }

    /// What the original may read for `sector` in the window [from, to].
    fn original_values(&self, dev: DevT, sector: u64, from: u64, to: u64) -> BTreeSet<Stamp> {
        let base = self
            .last_completed(dev, sector, from)
            .unwrap_or_else(|| self.initial(dev, sector));
        let mut allowed = BTreeSet::from([base]);
        allowed.extend(self.overlapping(dev, sector, from, to));
        allowed
    }

    /// What the image may read for `sector` in the window [from, to]: its
    /// own last write if any, else the original as of the TAKE window.
    fn image_values(&self, image: DevT, sector: u64, from: u64, to: u64) -> BTreeSet<Stamp> {
        let record = &self.images[&image];
        let mut allowed = match self.last_completed(image, sector, from) {
            Some(stamp) => BTreeSet::from([stamp]),
            None => self.original_values(record.orig, sector, record.take_start, record.take_end),
        };
        allowed.extend(self.overlapping(image, sector, from, to));
        allowed
    }

    /// Failed image reads not explained by an earlier corrupted event
    /// (judged at the end, since the event may be read after the IO). When
    /// the fault plan made devices fail IO, an image read may fail too.
    pub fn unexplained_image_errors(&self, io_errors_injected: bool) -> Vec<String> {
        if io_errors_injected {
            return Vec::new();
        }
        self.failed_image_reads
            .iter()
            .filter(|(orig, at)| self.corrupted.get(orig).is_none_or(|t| t > at))
            .map(|(orig, at)| {
                format!("image of {orig} failed a read at {at} ns, and no corrupted event came before it")
            })
            .collect()
    }

    /// What the original should hold now, for the final media check.
    pub fn expected_now(&self, dev: DevT, sector: u64, now: u64) -> BTreeSet<Stamp> {
        self.original_values(dev, sector, now, now)
    }

    /// Sectors of `dev` that a user write completed on.
    pub fn written_sectors(&self, dev: DevT) -> Vec<u64> {
        self.by_sector
            .range((dev, 0)..=(dev, u64::MAX))
            .filter(|(_, ids)| {
                ids.iter()
                    .any(|id| self.writes.get(id).is_some_and(|w| w.completed.is_some()))
            })
            .map(|((_, sector), _)| *sector)
            .collect()
    }

    /// What an image may hold at `sector` now (the backup compare): the
    /// original's content at TAKE plus the image's own writes.
    pub fn image_allowed(&self, image: DevT, sector: u64, now: u64) -> BTreeSet<Stamp> {
        if !self.images.contains_key(&image) {
            return BTreeSet::new();
        }
        self.image_values(image, sector, now, now)
    }
}

fn show(values: &BTreeSet<Stamp>) -> String {
    let list: Vec<String> = values.iter().take(4).map(|v| format!("{v:#x}")).collect();
    format!("{{{}}}", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIG: DevT = DevT(8 << 20);
    const IMAGE: DevT = DevT(252 << 20);

    fn oracle() -> Oracle {
        let mut o = Oracle::default();
        o.add_device(ORIG, 0, Fill::Zero);
        o
    }

    fn write(o: &mut Oracle, dev: DevT, sector: u64, stamp: Stamp, at: u64, done: u64) {
        let bio = Bio::write(dev, sector, vec![stamp]);
        let id = o.submit(at, &bio);
        o.complete(done, id, &bio, &Ok(Vec::new())).unwrap();
    }

    fn read(
        o: &mut Oracle,
        dev: DevT,
        sector: u64,
        got: Stamp,
        at: u64,
        done: u64,
    ) -> Result<(), String> {
        let bio = Bio::read(dev, sector, 1);
        let id = o.submit(at, &bio);
        o.complete(done, id, &bio, &Ok(vec![got]))
    }

    fn taken_at(o: &mut Oracle, start: u64, end: u64) {
        o.image_added(IMAGE, 100);
        o.bind_image(IMAGE, ORIG, start, end);
    }

    #[test]
    fn image_keeps_data_of_take_and_fails_on_new_data() {
        let mut o = oracle();
        write(&mut o, ORIG, 5, 11, 0, 10);
        taken_at(&mut o, 20, 30);
        write(&mut o, ORIG, 5, 22, 40, 50);
        assert!(read(&mut o, IMAGE, 5, 11, 60, 70).is_ok());
        let err = read(&mut o, IMAGE, 5, 22, 80, 90).unwrap_err();
        assert!(err.contains("sector 5"), "{err}");
        assert!(read(&mut o, ORIG, 5, 22, 60, 70).is_ok());
        assert!(read(&mut o, ORIG, 5, 11, 60, 70).is_err());
    }

    #[test]
    fn write_in_flight_during_take_allows_both_values() {
        let mut o = oracle();
        write(&mut o, ORIG, 1, 7, 15, 35);
        taken_at(&mut o, 20, 30);
        assert!(read(&mut o, IMAGE, 1, 7, 60, 70).is_ok());
        assert!(read(&mut o, IMAGE, 1, 0, 60, 70).is_ok());
        assert!(read(&mut o, IMAGE, 1, 9, 60, 70).is_err());
    }

    #[test]
    fn image_writes_are_seen_by_image_reads_only() {
        let mut o = oracle();
        taken_at(&mut o, 20, 30);
        write(&mut o, IMAGE, 3, 99, 40, 50);
        assert!(read(&mut o, IMAGE, 3, 99, 60, 70).is_ok());
        assert!(read(&mut o, IMAGE, 3, 0, 60, 70).is_err());
        assert!(read(&mut o, ORIG, 3, 0, 60, 70).is_ok());
        assert!(read(&mut o, ORIG, 3, 99, 60, 70).is_err());
    }

    #[test]
    fn engine_writes_must_stay_inside_appended_storage() {
        let mut o = oracle();
        let store = DevT(8 << 20 | 1);
        o.storage_appended(store, 1024, 512);
        assert!(o.check_engine_write(store, 1024, 512).is_ok());
        assert!(o.check_engine_write(store, 1536, 8).is_err());
        assert!(o.check_engine_write(store, 1020, 8).is_err());
        assert!(o.check_engine_write(ORIG, 0, 8).is_err());
    }

    #[test]
    fn image_errors_need_a_corrupted_event_before_them() {
        let mut o = oracle();
        taken_at(&mut o, 20, 30);
        let bio = Bio::read(IMAGE, 0, 1);
        let id = o.submit(40, &bio);
        o.complete(50, id, &bio, &Err(blksnap_core::kernel::Errno::EIO))
            .unwrap();
        assert_eq!(o.unexplained_image_errors(false).len(), 1);
        assert!(o.unexplained_image_errors(true).is_empty());
        o.corrupted_event(ORIG, 45);
        assert!(o.unexplained_image_errors(false).is_empty());
    }
}
