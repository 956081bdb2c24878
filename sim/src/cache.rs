//! A volatile write cache in front of a device's media (design section 3).
//!
//! Fault model (what this layer makes happen, all drawn from the device's
//! own cache stream so that one device's draws never shift another's):
//! - A write completes into the cache, not onto the media. The cache
//!   destages its writes to the media in an order drawn from the seed: a
//!   seeded share of writes is destaged early, on its own, one at a time.
//! - FLUSH (`BioOp::Flush`, or `REQ_PREFLUSH` on a write) destages every
//!   write the cache holds before the bio's own data goes in; FUA puts the
//!   bio's own data on the media at its completion.
//! - Power loss: every write still in the cache is, by the seed, kept
//!   (destaged in full), dropped, or torn at a 512-byte sector boundary
//!   (a prefix or a suffix of its sectors reaches the media). A sector is
//!   never torn inside: a stamp is one sector.
//! - A newer write to a sector masks the cached older one, as a disk's
//!   cache keeps one copy per block: an older write is never destaged over
//!   a newer one, so the media only ever holds values users wrote.
//!
//! With the cache off (the default) every call goes straight to the media
//! and draws nothing, so runs without a cache keep their trace digests.
//! The media is reached only through `Device::read` and `Device::write`.

use std::collections::BTreeMap;

use blksnap_core::kernel::{Bio, BioOp, Stamp, Stamps};

use crate::device::Device;
use crate::rng::SimRng;

/// One in this many cached writes triggers an early destage of one entry.
const EARLY_DESTAGE_ONE_IN: u64 = 4;

/// A write the cache holds: its first sector and, per sector, the stamp
/// if no newer write masked it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    sector: u64,
    data: Vec<Option<Stamp>>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.data.iter().all(Option::is_none)
    }
}

/// What power loss did to one cached write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossOutcome {
    Kept,
    Dropped,
    /// Only sectors `[from, from + len)` of the write reached the media.
    Torn {
        from: u64,
        len: u64,
    },
}

/// One cached write and its fate at power loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    pub sector: u64,
    pub sectors: u64,
    pub outcome: LossOutcome,
}

/// How power loss treats a write (the `TornWrite` fault kind forces a tear).
pub trait TearPolicy {
    fn must_tear(&mut self, sector: u64, sectors: u64) -> bool;
}

/// No forced tears: the seed alone decides.
pub struct SeedOnly;

impl TearPolicy for SeedOnly {
    fn must_tear(&mut self, _sector: u64, _sectors: u64) -> bool {
        false
    }
}

#[derive(Default)]
pub struct WriteCache {
    enabled: bool,
    rng: Option<SimRng>,
    next_seq: u64,
    /// Cached writes by arrival order.
    entries: BTreeMap<u64, Entry>,
    /// The entry that holds each cached sector.
    owner: BTreeMap<u64, u64>,
    /// Writes destaged early, flushes, and writes power loss cut (metrics).
    pub destaged_early: u64,
    pub flushes: u64,
}

impl WriteCache {
    /// A cache with its own stream, drawn from the run's seed.
    pub fn enabled(seed: u64, device: &str) -> WriteCache {
        WriteCache {
            enabled: true,
            rng: Some(SimRng::child(seed, &format!("cache/{device}"))),
            ..WriteCache::default()
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Sectors held in the cache and not on the media.
    pub fn dirty_sectors(&self) -> usize {
        self.owner.len()
    }

    fn draw(&mut self, bound: u64) -> u64 {
        self.rng.as_mut().map_or(0, |rng| rng.below(bound))
    }

    /// Take sectors out of older entries (a newer write owns them now).
    fn mask(&mut self, sector: u64, count: u64) {
        let owners: Vec<(u64, u64)> = self
            .owner
            .range(sector..sector + count)
            .map(|(s, seq)| (*s, *seq))
            .collect();
        for (s, seq) in owners {
            self.owner.remove(&s);
            let Some(entry) = self.entries.get_mut(&seq) else {
                continue;
            };
            entry.data[(s - entry.sector) as usize] = None;
            if entry.is_empty() {
                self.entries.remove(&seq);
            }
        }
    }

    fn insert(&mut self, sector: u64, data: &Stamps) {
        self.mask(sector, data.len());
        self.next_seq += 1;
        let seq = self.next_seq;
        for s in sector..sector + data.len() {
            self.owner.insert(s, seq);
        }
        let data = data.iter().map(Some).collect();
        self.entries.insert(seq, Entry { sector, data });
    }

    /// Put one entry's live sectors (or a part of them) on the media, each
    /// stretch of live sectors as one write.
    fn destage(media: &mut Device, entry: &Entry, part: (u64, u64)) {
        let (from, len) = part;
        let mut live = Stamps::new();
        let mut live_from = from;
        for i in from..from + len {
            match entry.data[i as usize] {
                Some(stamp) => live.push(stamp),
                None => {
                    media.write(entry.sector + live_from, &std::mem::take(&mut live));
                    live_from = i + 1;
                }
            }
        }
        media.write(entry.sector + live_from, &live);
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        for (i, stamp) in entry.data.iter().enumerate() {
            if stamp.is_some() {
                self.owner.remove(&(entry.sector + i as u64));
            }
        }
        Some(entry)
    }

    /// The disk writes one cached entry back on its own, chosen by the seed.
    fn maybe_destage_early(&mut self, media: &mut Device) {
        if self.entries.is_empty() || self.draw(EARLY_DESTAGE_ONE_IN) != 0 {
            return;
        }
        let nth = self.draw(self.entries.len() as u64) as usize;
        let Some(seq) = self.entries.keys().nth(nth).copied() else {
            return;
        };
        if let Some(entry) = self.remove(seq) {
            let len = entry.data.len() as u64;
            Self::destage(media, &entry, (0, len));
            self.destaged_early += 1;
        }
    }

    /// Destage everything, in an order drawn from the seed. Entries never
    /// share a sector, so the order shows only if the cut comes inside it;
    /// it is drawn anyway so the stream is the same whatever the entries.
    fn flush_all(&mut self, media: &mut Device) {
        self.flushes += 1;
        let mut seqs: Vec<u64> = self.entries.keys().copied().collect();
        for i in (1..seqs.len()).rev() {
            let j = self.draw(i as u64 + 1) as usize;
            seqs.swap(i, j);
        }
        for seq in seqs {
            if let Some(entry) = self.remove(seq) {
                let len = entry.data.len() as u64;
                Self::destage(media, &entry, (0, len));
            }
        }
    }

    /// Power is cut: each cached write is kept, dropped or torn by the
    /// seed (or torn because `policy` says so); the cache is empty after.
    pub fn power_loss(&mut self, media: &mut Device, policy: &mut dyn TearPolicy) -> Vec<Lost> {
        let mut lost = Vec::new();
        let seqs: Vec<u64> = self.entries.keys().copied().collect();
        for seq in seqs {
            let Some(entry) = self.remove(seq) else {
                continue;
            };
            let sectors = entry.data.len() as u64;
            let forced = policy.must_tear(entry.sector, sectors);
            let choice = if forced { 2 } else { self.draw(3) };
            let outcome = match choice {
                0 => LossOutcome::Kept,
                1 => LossOutcome::Dropped,
                _ => self.tear(sectors),
            };
            let part = match outcome {
                LossOutcome::Kept => (0, sectors),
                LossOutcome::Dropped => (0, 0),
                LossOutcome::Torn { from, len } => (from, len),
            };
            Self::destage(media, &entry, part);
            lost.push(Lost {
                sector: entry.sector,
                sectors,
                outcome,
            });
        }
        lost
    }

    /// Where a write of `sectors` tears: a prefix or a suffix, cut at a
    /// sector boundary strictly inside it (a one-sector write cannot tear:
    /// it is dropped).
    fn tear(&mut self, sectors: u64) -> LossOutcome {
        if sectors < 2 {
            return LossOutcome::Dropped;
        }
        let cut = 1 + self.draw(sectors - 1);
        if self.draw(2) == 0 {
            LossOutcome::Torn { from: 0, len: cut }
        } else {
            LossOutcome::Torn {
                from: cut,
                len: sectors - cut,
            }
        }
    }
}

/// Read through the cache: the media, with cached sectors over it.
/// Inlined into the bio path: nearly always (a cache off holds nothing)
/// it is the media's read, and a call of its own cost about 30
/// instructions per read bio.
#[inline(always)]
pub fn read(device: &Device, sector: u64, count: u64) -> Stamps {
    let media = device.read(sector, count);
    if device.cache.owner.is_empty() {
        return media;
    }
    overlay(device, sector, count, media)
}

/// `media`, the media's sectors [sector, sector + count), with the
/// cached ones over it.
#[inline(never)]
fn overlay(device: &Device, sector: u64, count: u64, media: Stamps) -> Stamps {
    let cache = &device.cache;
    let mut cached = cache.owner.range(sector..sector + count).peekable();
    if cached.peek().is_none() {
        return media;
    }
    let mut data = media.to_vec();
    for (s, seq) in cached {
        let entry = &cache.entries[seq];
        if let Some(stamp) = entry.data[(s - entry.sector) as usize] {
            data[(s - sector) as usize] = stamp;
        }
    }
    Stamps::from_vec(data)
}

/// A write (or discard, write-zeroes, flush) bio reaches the device and
/// completes: apply it through the cache.
pub fn write_bio(device: &mut Device, bio: &Bio) {
    if !device.cache.enabled {
        // Straight to the media, without a copy of the payload.
        match bio.op {
            BioOp::Write => device.write(bio.sector, &bio.data),
            BioOp::Discard | BioOp::WriteZeroes => {
                device.write(bio.sector, &Stamps::repeat(0, bio.sectors))
            }
            BioOp::Flush | BioOp::Read => {}
        }
        return;
    }
    let data = match bio.op {
        BioOp::Write => bio.data.clone(),
        BioOp::Discard | BioOp::WriteZeroes => Stamps::repeat(0, bio.sectors),
        BioOp::Flush | BioOp::Read => Stamps::new(),
    };
    let mut cache = std::mem::take(&mut device.cache);
    if !cache.enabled {
        if !data.is_empty() {
            device.write(bio.sector, &data);
        }
        device.cache = cache;
        return;
    }
    if bio.flags.preflush || bio.op == BioOp::Flush {
        cache.flush_all(device);
    }
    if !data.is_empty() {
        if bio.flags.fua {
            cache.mask(bio.sector, data.len());
            device.write(bio.sector, &data);
        } else {
            cache.insert(bio.sector, &data);
            cache.maybe_destage_early(device);
        }
    }
    device.cache = cache;
}

/// Power loss on one device: what happened to each cached write.
pub fn power_loss(device: &mut Device, policy: &mut dyn TearPolicy) -> Vec<Lost> {
    let mut cache = std::mem::take(&mut device.cache);
    let lost = cache.power_loss(device, policy);
    device.cache = cache;
    lost
}

/// A clean shutdown: the cache is written back in full.
pub fn flush(device: &mut Device) {
    let mut cache = std::mem::take(&mut device.cache);
    if cache.enabled {
        cache.flush_all(device);
    }
    device.cache = cache;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Fill;
    use blksnap_core::kernel::{BioFlags, DevT};

    fn device(seed: u64) -> Device {
        let mut d = Device::new("d".into(), DevT::new(7, 0), 0, 1024, Fill::Zero);
        d.cache = WriteCache::enabled(seed, "d");
        d
    }

    fn write(d: &mut Device, sector: u64, data: Vec<Stamp>, fua: bool, preflush: bool) {
        let mut bio = Bio::write(d.dev, sector, data);
        bio.flags = BioFlags {
            fua,
            preflush,
            ..BioFlags::default()
        };
        write_bio(d, &bio);
    }

    fn flush_bio(d: &mut Device) {
        let mut bio = Bio::write(d.dev, 0, Vec::new());
        bio.op = BioOp::Flush;
        write_bio(d, &bio);
    }

    /// Media only (what survives power loss once the cache is gone).
    fn media(d: &Device, sector: u64, count: u64) -> Vec<Stamp> {
        d.read(sector, count).to_vec()
    }

    #[test]
    fn flushed_data_survives_power_loss() {
        for seed in 0..50 {
            let mut d = device(seed);
            write(&mut d, 10, vec![1, 2, 3], false, false);
            flush_bio(&mut d);
            assert_eq!(d.cache.dirty_sectors(), 0);
            let lost = power_loss(&mut d, &mut SeedOnly);
            assert!(lost.is_empty());
            assert_eq!(media(&d, 10, 3), vec![1, 2, 3]);
        }
    }

    #[test]
    fn fua_is_durable_at_completion() {
        for seed in 0..50 {
            let mut d = device(seed);
            write(&mut d, 5, vec![7, 8], false, false);
            write(&mut d, 6, vec![9], true, false);
            // The FUA sector is on the media now, whatever happens to the
            // older cached write that it masked.
            assert_eq!(media(&d, 6, 1), vec![9]);
            power_loss(&mut d, &mut SeedOnly);
            assert_eq!(media(&d, 6, 1), vec![9], "seed {seed}");
            assert!([0, 7].contains(&media(&d, 5, 1)[0]));
        }
    }

    #[test]
    fn preflush_makes_earlier_writes_durable_but_not_its_own_data() {
        let mut seen_lost = false;
        for seed in 0..50 {
            let mut d = device(seed);
            write(&mut d, 0, vec![1; 4], false, false);
            write(&mut d, 100, vec![2; 4], false, true);
            assert_eq!(media(&d, 0, 4), vec![1; 4]);
            power_loss(&mut d, &mut SeedOnly);
            seen_lost |= media(&d, 100, 4) != vec![2; 4];
        }
        assert!(seen_lost, "the preflush write's own data is not durable");
    }

    #[test]
    fn reads_see_the_cache_over_the_media() {
        let mut d = device(3);
        write(&mut d, 0, vec![1, 1], false, false);
        write(&mut d, 1, vec![2, 2], false, false);
        assert_eq!(read(&d, 0, 4), vec![1, 2, 2, 0]);
    }

    /// Unflushed writes are kept, dropped or torn at a sector boundary, as
    /// the seed says: over many seeds all three happen, a torn write holds
    /// a prefix or a suffix of whole sectors, and the media never holds a
    /// value that was not written.
    #[test]
    fn unflushed_writes_are_kept_dropped_or_torn_by_the_seed() {
        let (mut kept, mut dropped, mut torn) = (0, 0, 0);
        for seed in 0..200 {
            let mut d = device(seed);
            d.write(0, &Stamps::repeat(50, 8));
            write(&mut d, 0, (1..=8).collect(), false, false);
            let before = d.cache.destaged_early;
            let lost = power_loss(&mut d, &mut SeedOnly);
            let got = media(&d, 0, 8);
            if before > 0 || lost.is_empty() {
                assert_eq!(got, (1..=8).collect::<Vec<_>>());
                continue;
            }
            match lost[0].outcome {
                LossOutcome::Kept => {
                    kept += 1;
                    assert_eq!(got, (1..=8).collect::<Vec<_>>());
                }
                LossOutcome::Dropped => {
                    dropped += 1;
                    assert_eq!(got, vec![50; 8]);
                }
                LossOutcome::Torn { from, len } => {
                    torn += 1;
                    assert!(len > 0 && len < 8 && (from == 0 || from + len == 8));
                    for (i, s) in got.iter().enumerate() {
                        let i = i as u64;
                        let new = i >= from && i < from + len;
                        assert_eq!(*s, if new { i + 1 } else { 50 }, "seed {seed}");
                    }
                }
            }
        }
        assert!(
            kept > 10 && dropped > 10 && torn > 10,
            "{kept} {dropped} {torn}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_outcome() {
        let outcome = |seed| {
            let mut d = device(seed);
            for i in 0..20 {
                write(&mut d, i * 3, vec![i + 1; 5], false, false);
            }
            let lost = power_loss(&mut d, &mut SeedOnly);
            (lost, media(&d, 0, 70))
        };
        assert_eq!(outcome(9), outcome(9));
        assert_ne!(outcome(9), outcome(10));
    }

    #[test]
    fn an_older_write_never_lands_over_a_newer_one() {
        for seed in 0..100 {
            let mut d = device(seed);
            write(&mut d, 0, vec![1; 4], false, false);
            if d.cache.destaged_early > 0 {
                // On the media before the newer write came: it may stay.
                continue;
            }
            write(&mut d, 2, vec![2; 4], false, false);
            power_loss(&mut d, &mut SeedOnly);
            let got = media(&d, 0, 6);
            // Sectors 2 and 3 hold the newer write or nothing, never the
            // older one that was still in the cache under it.
            assert!(got[2..4].iter().all(|s| *s != 1), "seed {seed}: {got:?}");
        }
    }

    #[test]
    fn off_by_default_writes_go_to_the_media() {
        let mut d = Device::new("d".into(), DevT::new(7, 0), 0, 64, Fill::Zero);
        write(&mut d, 3, vec![4], false, false);
        assert_eq!(media(&d, 3, 1), vec![4]);
        assert!(power_loss(&mut d, &mut SeedOnly).is_empty());
    }
}
