//! Virtual block devices: 512-byte sectors, sparse media, seeded latency.
//!
//! Media is a map from sector to stamp; a sector never written reads as the
//! device's fill, computed, so a 1 PiB device costs memory only for what
//! was written. Writes reach the media when the bio completes, and the
//! completion time of each bio is drawn from the disk stream, so
//! concurrent bios complete in a seeded order.

use std::collections::BTreeMap;

use blksnap_core::kernel::{BioOp, DevT, Stamp};
use serde::{Deserialize, Serialize};

use crate::cache::WriteCache;
use crate::disk_faults::DiskFaults;
use crate::faults::IoWindow;

/// What a never-written sector holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Fill {
    /// Zeros (stamp 0).
    #[default]
    Zero,
    /// A stamp unique to (device, sector), like upstream's test pattern.
    Pattern,
}

/// A stamp of the initial pattern: top bit set, device index, sector.
pub fn pattern_stamp(index: u32, sector: u64) -> Stamp {
    (1 << 63) | (u64::from(index) << 48) | (sector & ((1 << 48) - 1))
}

/// Latency model of one device, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Latency {
    pub min_ns: u64,
    pub max_ns: u64,
    /// Added per sector transferred.
    pub per_sector_ns: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            min_ns: 20_000,
            max_ns: 400_000,
            per_sector_ns: 100,
        }
    }
}

pub struct Device {
    pub name: String,
    pub dev: DevT,
    /// Index among the scenario's devices (for pattern stamps).
    pub index: u32,
    pub capacity: u64,
    pub io_min: u32,
    pub fill: Fill,
    pub latency: Latency,
    media: BTreeMap<u64, Stamp>,
    /// Sectors that fail with EIO (fault injection).
    pub bad_sectors: BTreeMap<u64, u64>,
    pub removed: bool,
    /// Adversarial: freeze_bdev from the engine fails.
    pub freeze_fails: bool,
    pub freeze_count: u32,
    pub open_count: u64,
    /// Windows of injected EIO (fault injection, counted per bio).
    pub io_errors: Vec<IoWindow>,
    /// The volatile write cache (off unless the scenario turns it on).
    pub cache: WriteCache,
    /// Latency spikes, flaky reads, forced tears (`disk_faults.rs`).
    pub disk_faults: DiskFaults,
    /// Bios handed to this device and not yet ended.
    pub in_flight: u64,
}

impl Device {
    pub fn new(name: String, dev: DevT, index: u32, capacity: u64, fill: Fill) -> Device {
        Device {
            name,
            dev,
            index,
            capacity,
            io_min: 512,
            fill,
            latency: Latency::default(),
            media: BTreeMap::new(),
            bad_sectors: BTreeMap::new(),
            removed: false,
            freeze_fails: false,
            freeze_count: 0,
            open_count: 0,
            io_errors: Vec::new(),
            cache: WriteCache::default(),
            disk_faults: DiskFaults::default(),
            in_flight: 0,
        }
    }

    pub fn fill_stamp(&self, sector: u64) -> Stamp {
        match self.fill {
            Fill::Zero => 0,
            Fill::Pattern => pattern_stamp(self.index, sector),
        }
    }

    pub fn read(&self, sector: u64, count: u64) -> Vec<Stamp> {
        (sector..sector + count)
            .map(|s| {
                self.media
                    .get(&s)
                    .copied()
                    .unwrap_or_else(|| self.fill_stamp(s))
            })
            .collect()
    }

    pub fn write(&mut self, sector: u64, data: &[Stamp]) {
        for (i, stamp) in data.iter().enumerate() {
            self.media.insert(sector + i as u64, *stamp);
        }
    }

    /// Count a bio against every error window; true if one fails it.
    pub fn window_fails(&mut self, op: BioOp, sector: u64, count: u64) -> bool {
        let mut fails = false;
        for window in &mut self.io_errors {
            fails |= window.fails(op, sector, count);
        }
        fails
    }

    /// True if the range touches an injected bad sector range.
    pub fn hits_bad_sector(&self, sector: u64, count: u64) -> bool {
        let end = sector + count;
        self.bad_sectors
            .range(..end)
            .any(|(&start, &len)| start + len > sector)
    }

    /// Sectors held in memory (for the memory report).
    pub fn written_sectors(&self) -> usize {
        self.media.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_media_reads_fill_and_written_data() {
        let mut d = Device::new("a".into(), DevT::new(8, 0), 3, 1 << 41, Fill::Pattern);
        assert_eq!(d.read(5, 1), vec![pattern_stamp(3, 5)]);
        d.write((1 << 41) - 2, &[7, 8]);
        assert_eq!(
            d.read((1 << 41) - 3, 3),
            vec![pattern_stamp(3, (1 << 41) - 3), 7, 8]
        );
        assert_eq!(d.written_sectors(), 2);
    }

    #[test]
    fn bad_sector_ranges_overlap() {
        let mut d = Device::new("a".into(), DevT::new(8, 0), 0, 100, Fill::Zero);
        d.bad_sectors.insert(10, 5);
        assert!(d.hits_bad_sector(14, 1));
        assert!(d.hits_bad_sector(0, 11));
        assert!(!d.hits_bad_sector(15, 10));
        assert!(!d.hits_bad_sector(0, 10));
    }
}
