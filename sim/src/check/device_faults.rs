//! Undetected corruption caused by a device fault: which wrong values a
//! silent data fault (lost, corrupted or misdirected write) explains.
//!
//! v2 keeps no checksums: when the diff storage acknowledges a write and
//! does not store it, the image later returns wrong data with success.
//! That is a property of the design, not an engine bug, and the report
//! must say so; but a wrong value the fault does NOT explain is still the
//! engine's. The rule, from what the sim saw at the device boundary only:
//!
//! A wrong value read at sector S of device D (an original, or an image
//! of original O, whose sector S stands for O's sector S) during [from, to]
//! is caused by a device fault when a damage record covers it:
//! 1. a data fault hit a location whose data (what the write was meant to
//!    store there, or what a misdirected write destroyed there) was a copy
//!    of O's sector S, at a time in [since, to]; copies are known by their
//!    stamps (`StorageCheck::identify`), so this covers the diff storage;
//! 2. or a data fault hit D's (for an image: O's) sector S itself at a
//!    time in [since, to].
//!
//! The storage checker's rule 2 (a live copy overwritten by another
//! sector's data) is the same fault seen later: the engine loaded a damaged
//! copy and stored it back, so a failure there is the fault's when a
//! damage record covers the copy it overwrote and the data written is what
//! the device holds at that sector (`storage_failure`).
//!
//! `since` is given by the oracle: the start of the image's TAKE, or the
//! submission of the last user write to the sector completed before the
//! read; a damage older than that was overwritten by good data.

use blksnap_core::kernel::{Bio, DevT};

use crate::kernel::Sim;

/// Sectors of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub dev: DevT,
    pub sector: u64,
    pub sectors: u64,
}

impl Location {
    fn holds(&self, dev: DevT, sector: u64) -> bool {
        self.dev == dev && sector >= self.sector && sector - self.sector < self.sectors
    }
}

/// One location a data fault damaged, and whose data was there.
#[derive(Clone, Debug)]
struct Damage {
    at: u64,
    what: &'static str,
    location: Location,
    /// Per sector of the location: the original sector whose copy it held
    /// or was meant to hold, if the data names one.
    origins: Vec<Option<(DevT, u64)>>,
}

impl Damage {
    /// The sector of the location that holds (a copy of) `dev`'s `sector`.
    fn covers(&self, dev: DevT, sector: u64) -> Option<u64> {
        if self.location.holds(dev, sector) {
            return Some(sector);
        }
        let i = self
            .origins
            .iter()
            .position(|o| *o == Some((dev, sector)))?;
        Some(self.location.sector + i as u64)
    }
}

/// A read that returned wrong data a device fault explains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undetected {
    pub image: DevT,
    pub orig: DevT,
    pub first: u64,
    pub sectors: u64,
    pub read_at: u64,
    pub cause: String,
}

impl Undetected {
    pub fn message(&self) -> String {
        let what = if self.image == self.orig {
            format!("original {}", self.orig)
        } else {
            format!("image {} of {}", self.image, self.orig)
        };
        format!(
            "undetected corruption caused by a device fault: {what} sectors {}..{} read at {} ns \
             returned wrong data with success; {} (v2 keeps no checksums, so it cannot detect this)",
            self.first,
            self.first + self.sectors,
            self.read_at,
            self.cause
        )
    }
}

#[derive(Default)]
pub struct DeviceDamage {
    damage: Vec<Damage>,
    undetected: Vec<Undetected>,
    /// Sectors whose wrong value a damage record explained.
    pub sectors_explained: u64,
}

impl DeviceDamage {
    /// A data fault hit `location` at `at`; `origins` are, per sector, the
    /// original sector whose copy it held or was meant to hold.
    pub fn record(
        &mut self,
        at: u64,
        what: &'static str,
        location: Location,
        origins: Vec<Option<(DevT, u64)>>,
    ) {
        self.damage.push(Damage {
            at,
            what,
            location,
            origins,
        });
    }

    /// Why a wrong value of `dev`'s `sector` read before `to` is the
    /// device's doing, if a damage in [since, to] explains it.
    pub fn explains(&self, dev: DevT, sector: u64, since: u64, to: u64) -> Option<String> {
        self.damage
            .iter()
            .filter(|d| d.at >= since && d.at <= to)
            .find_map(|d| {
                let hit = d.covers(dev, sector)?;
                Some(format!(
                    "the sim injected a {} at {}:{hit} at {} ns, which held {dev} sector {sector}",
                    d.what, d.location.dev, d.at
                ))
            })
    }

    /// Keep an explained wrong sector; consecutive sectors of one read
    /// make one entry.
    pub fn note(&mut self, image: DevT, orig: DevT, sector: u64, read_at: u64, cause: String) {
        self.sectors_explained += 1;
        if let Some(last) = self.undetected.last_mut() {
            if last.image == image && last.read_at == read_at && last.first + last.sectors == sector
            {
                last.sectors += 1;
                return;
            }
        }
        self.undetected.push(Undetected {
            image,
            orig,
            first: sector,
            sectors: 1,
            read_at,
            cause,
        });
    }

    /// The reads that returned wrong data because of a device fault.
    pub fn undetected(&self) -> &[Undetected] {
        &self.undetected
    }

    /// Locations damaged (a metric: how much the classification had to go
    /// on).
    pub fn damaged(&self) -> usize {
        self.damage.len()
    }
}

/// A storage checker failure (rule 2: a live copy overwritten with another
/// sector's data). When a data fault damaged that live copy, the engine may
/// have loaded the damage and stored it back (a dirty chunk stored back
/// into its region): then the data it writes over the copy is what the
/// device holds there now, and the fault is to blame. Data that differs
/// from the media did not come from the damaged region: the engine's.
pub fn storage_failure(sim: &Sim, bio: &Bio, message: String) {
    let overwritten = sim.storage.borrow_mut().last_overwritten.take();
    let now = sim.now();
    let cause = overwritten.and_then(|((dev, sector), at)| {
        let offset = at.checked_sub(bio.sector).filter(|o| *o < bio.data.len())?;
        let written = bio.data.get(offset);
        let held = sim.blk.devices.borrow().get(&bio.dev)?.read(at, 1);
        if held.get(0) != written {
            return None;
        }
        sim.oracle
            .borrow()
            .device_damage
            .explains(dev, sector, 0, now)
    });
    match cause {
        Some(cause) => sim.fail_by_fault(
            "storage",
            format!("{message}; it stores back what the device held there: {cause}"),
            now,
        ),
        None => sim.fail("storage", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blksnap_core::kernel::Stamps;

    const ORIG: DevT = DevT(7 << 20);
    const STORE: DevT = DevT(7 << 20 | 1);
    const IMAGE: DevT = DevT(252 << 20);

    fn copies(orig_first: u64, n: u64) -> Vec<Option<(DevT, u64)>> {
        (orig_first..orig_first + n)
            .map(|s| Some((ORIG, s)))
            .collect()
    }

    fn at(dev: DevT, sector: u64, sectors: u64) -> Location {
        Location {
            dev,
            sector,
            sectors,
        }
    }

    #[test]
    fn a_lost_copy_explains_its_sectors_only_and_in_its_time() {
        let mut d = DeviceDamage::default();
        d.record(100, "lost write", at(STORE, 4096, 8), copies(1024, 8));
        let why = d.explains(ORIG, 1027, 50, 200).expect("explained");
        assert!(why.contains("lost write at 7:1:4099"), "{why}");
        // Another sector, a damage after the read, a damage before `since`.
        assert!(d.explains(ORIG, 1032, 50, 200).is_none());
        assert!(d.explains(ORIG, 1027, 50, 99).is_none());
        assert!(d.explains(ORIG, 1027, 101, 200).is_none());
        // The storage location itself, read directly, is explained too.
        assert!(d.explains(STORE, 4100, 0, 200).is_some());
        assert!(d.explains(STORE, 4104, 0, 200).is_none());
    }

    #[test]
    fn a_misdirected_write_damages_what_it_landed_on() {
        let mut d = DeviceDamage::default();
        // Meant for 4096 (copy of 1024..1032), landed on 0, which held the
        // copy of 0..8.
        d.record(
            100,
            "misdirected (meant)",
            at(STORE, 4096, 8),
            copies(1024, 8),
        );
        d.record(100, "misdirected (landed)", at(STORE, 0, 8), copies(0, 8));
        assert!(d.explains(ORIG, 3, 0, 200).is_some());
        assert!(d.explains(ORIG, 1030, 0, 200).is_some());
        // Data without identity (zeros) explains nothing by origin.
        d.record(150, "lost write", at(STORE, 512, 2), vec![None, None]);
        assert!(d.explains(ORIG, 512, 0, 200).is_none());
        assert!(d.explains(ORIG, 8, 0, 200).is_none());
    }

    #[test]
    fn notes_merge_consecutive_sectors_of_one_read() {
        let mut d = DeviceDamage::default();
        for s in 8..12 {
            d.note(IMAGE, ORIG, s, 500, "why".into());
        }
        d.note(IMAGE, ORIG, 20, 500, "why".into());
        d.note(IMAGE, ORIG, 21, 600, "why".into());
        let got: Vec<(u64, u64)> = d
            .undetected()
            .iter()
            .map(|u| (u.first, u.sectors))
            .collect();
        assert_eq!(got, vec![(8, 4), (20, 1), (21, 1)]);
        assert_eq!(d.sectors_explained, 6);
        let m = d.undetected()[0].message();
        assert!(
            m.starts_with("undetected corruption caused by a device fault"),
            "{m}"
        );
        assert!(m.contains("image 252:0 of 7:0 sectors 8..12"), "{m}");
    }

    /// The oracle, through its public interface: a pattern original, its
    /// image taken at [20, 30], a copy of chunk [1024, 1032) stored at
    /// 4096 on the storage.
    fn oracle_with_image() -> crate::check::Oracle {
        use crate::device::Fill;
        let mut o = crate::check::Oracle::default();
        o.add_device(ORIG, 0, Fill::Pattern);
        o.add_device(STORE, 1, Fill::Zero);
        o.storage_appended([5; 16], STORE, 0, 8192);
        o.image_added(IMAGE, 16384);
        o.bind_image(IMAGE, ORIG, (20, 30), [5; 16]);
        o.set_chunk_bound(IMAGE, 8);
        o
    }

    fn image_read(o: &mut crate::check::Oracle, sector: u64, got: u64) -> Result<(), String> {
        use blksnap_core::kernel::Bio;
        let bio = Bio::read(IMAGE, sector, 1);
        let id = o.submit(500, &bio);
        o.complete(600, id, &bio, &Ok(Stamps::from_slice(&[got])))
            .map(|_| ())
    }

    #[test]
    fn the_oracle_notes_a_wrong_value_a_fault_explains_and_fails_any_other() {
        // No damage: a wrong value (zeros instead of the pattern) fails.
        let mut o = oracle_with_image();
        let err = image_read(&mut o, 1027, 0).unwrap_err();
        assert!(err.contains("content at TAKE"), "{err}");
        // The copy of 1024..1032 was lost at 100 (after TAKE, before the
        // read): the same wrong value is noted, not failed.
        let mut o = oracle_with_image();
        o.device_damage
            .record(100, "lost write", at(STORE, 4096, 8), copies(1024, 8));
        assert!(image_read(&mut o, 1027, 0).is_ok());
        assert_eq!(o.device_damage.undetected().len(), 1);
        assert_eq!(o.device_damage.sectors_explained, 1);
        // ...but not a wrong value of a sector whose copy was not there.
        let err = image_read(&mut o, 1032, 0).unwrap_err();
        assert!(err.contains("sector 1032"), "{err}");
        // A damage before TAKE (a copy of an earlier snapshot) or after the
        // read explains nothing.
        for when in [10, 700] {
            let mut o = oracle_with_image();
            o.device_damage
                .record(when, "lost write", at(STORE, 4096, 8), copies(1024, 8));
            assert!(image_read(&mut o, 1027, 0).is_err(), "damage at {when}");
        }
        // Damage on another original's copies explains nothing.
        let mut o = oracle_with_image();
        let other: Vec<_> = (1024..1032).map(|s| Some((STORE, s))).collect();
        o.device_damage
            .record(100, "lost write", at(STORE, 4096, 8), other);
        assert!(image_read(&mut o, 1027, 0).is_err());
        // A right value is never noted.
        let mut o = oracle_with_image();
        o.device_damage
            .record(100, "lost write", at(STORE, 4096, 8), copies(1024, 8));
        let right = crate::device::pattern_stamp(0, 1027);
        assert!(image_read(&mut o, 1027, right).is_ok());
        assert!(o.device_damage.undetected().is_empty());
    }

    #[test]
    fn a_user_write_after_the_damage_takes_the_excuse_away() {
        use blksnap_core::kernel::Bio;
        let mut o = oracle_with_image();
        o.device_damage
            .record(100, "lost write", at(STORE, 4096, 8), copies(1024, 8));
        // The image's own write of 1027, submitted after the damage.
        let bio = Bio::write(IMAGE, 1027, vec![77]);
        let id = o.submit(200, &bio);
        o.complete(210, id, &bio, &Ok(Stamps::new())).unwrap();
        assert!(image_read(&mut o, 1027, 0).is_err());
        assert!(image_read(&mut o, 1027, 77).is_ok());
        // The neighbour, not rewritten, is still excused.
        assert!(image_read(&mut o, 1026, 0).is_ok());
    }
}
