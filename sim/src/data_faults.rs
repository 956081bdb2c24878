//! Silent data faults of a block device: writes the device acknowledges
//! with success but does not store as asked.
//!
//! Fault model (the `data_faults` rules of a device in a scenario; only
//! `Write` bios with data are hit, never reads, flushes or discards):
//! - `LostWrite`: the bio completes OK and nothing reaches the media; the
//!   sectors keep their old content (dm-flakey `drop_writes`).
//! - `CorruptedWrite(first, sectors)`: the bio completes OK and is stored,
//!   but its sectors `[first, first + sectors)`, counted from the bio's
//!   first sector and clipped to the bio, hold garbage (dm-flakey
//!   `corrupt_bio_byte`). Garbage stamps are unique, never a user's or a
//!   pattern's, so they name no sector.
//! - `MisdirectedWrite(offset)`: the bio completes OK, but its data lands
//!   `offset` sectors away (wrapping inside the device); the sectors it was
//!   meant for keep their old content, and the ones it lands on lose theirs
//!   (TigerBeetle's storage simulator).
//!
//! Which writes: the selector's fields (`fault_select.rs`: `range`,
//! `after`, `count`, `nth`, `per_million`, drawn from the `data_faults`
//! stream). So `after: 2, count: Some(1)` hits the third write, and
//! `per_million: Some(10000)` about one write in a hundred.
//!
//! Every hit is recorded twice: in `check/injected.rs` (what the device
//! did) and in the oracle's record of damaged copies
//! (`check/device_faults.rs`), so a wrong value the fault explains is
//! classified as caused by the fault, never blamed on the engine.

use std::collections::BTreeMap;

use blksnap_core::kernel::{Bio, BioOp, DevT, Stamp, Stamps};
use serde::{Deserialize, Serialize};

use crate::check::device_faults::Location;
use crate::check::injected::FaultKind;
use crate::device::Device;
use crate::fault_select::{Select, Selector};
use crate::kernel::Sim;
use crate::rng::SimRng;

/// What the device does to a write it hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DataFaultKind {
    /// Acknowledged, never stored.
    LostWrite,
    /// Stored with garbage in `sectors` sectors from `first` (offsets into
    /// the bio).
    CorruptedWrite { first: u64, sectors: u64 },
    /// Stored `offset` sectors away (negative: before), wrapping inside the
    /// device.
    MisdirectedWrite { offset: i64 },
}

/// One rule of a device's `data_faults`: what it does, and which writes
/// it hits (the selector's fields, `fault_select.rs`). The fields are
/// spelled out here and in `faults.rs`'s `IoErrors`, not a flattened
/// `Select`: serde's `flatten` does not work with `deny_unknown_fields`,
/// and an unknown field must stay a load error at the field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFault {
    pub kind: DataFaultKind,
    #[serde(default)]
    pub range: Option<(u64, u64)>,
    #[serde(default)]
    pub after: u64,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub per_million: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nth: Option<u64>,
}

impl DataFault {
    /// The selecting fields (validated by the loader, see `Select::validate`).
    pub fn select(&self) -> Select {
        Select {
            range: self.range,
            after: self.after,
            count: self.count,
            nth: self.nth,
            per_million: self.per_million,
        }
    }

    /// What is wrong with the kind, if anything (the selector's fields are
    /// `Select::validate`'s).
    pub fn validate_kind(&self) -> Result<(), String> {
        match self.kind {
            DataFaultKind::CorruptedWrite { sectors: 0, .. } => {
                Err("CorruptedWrite needs sectors of at least 1".into())
            }
            DataFaultKind::MisdirectedWrite { offset: 0 } => {
                Err("MisdirectedWrite needs a non-zero offset".into())
            }
            _ => Ok(()),
        }
    }
}

/// A rule with its selector.
#[derive(Clone, Debug)]
struct Rule {
    kind: DataFaultKind,
    selector: Selector,
}

/// Garbage stamps: bit 62 set (user stamps are small counters, pattern
/// stamps have bit 63), then a serial, so each is unique in the run.
const GARBAGE: Stamp = 1 << 62;

/// The data fault rules of every device, and their random stream.
pub struct DataFaultPlan {
    rules: BTreeMap<DevT, Vec<Rule>>,
    rng: SimRng,
    garbage_seq: u64,
}

impl DataFaultPlan {
    pub fn new(seed: u64) -> DataFaultPlan {
        DataFaultPlan {
            rules: BTreeMap::new(),
            rng: SimRng::child(seed, "data_faults"),
            garbage_seq: 0,
        }
    }

    pub fn add(&mut self, dev: DevT, spec: DataFault) {
        let rule = Rule {
            kind: spec.kind,
            selector: Selector::new(spec.select()),
        };
        self.rules.entry(dev).or_default().push(rule);
    }

    /// Whether `dev` has rules (each of which counts every write).
    #[inline(always)]
    fn has_rules(&self, dev: DevT) -> bool {
        !self.rules.is_empty() && self.rules.contains_key(&dev)
    }

    /// The fault that hits this write, if any: every rule counts the
    /// write, the first that hits decides.
    fn decide(&mut self, bio: &Bio) -> Option<DataFaultKind> {
        let rules = self.rules.get_mut(&bio.dev)?;
        let mut hit = None;
        for rule in rules {
            if rule.selector.hits(bio.sector, bio.sectors, &mut self.rng) && hit.is_none() {
                hit = Some(rule.kind);
            }
        }
        hit
    }

    fn garbage(&mut self) -> Stamp {
        self.garbage_seq += 1;
        GARBAGE | self.garbage_seq
    }
}

/// Where a misdirected write of `sectors` at `sector` lands: `offset`
/// away, wrapped so that it fits inside the device.
fn destination(sector: u64, sectors: u64, offset: i64, capacity: u64) -> u64 {
    let slots = i128::from(capacity.saturating_sub(sectors)) + 1;
    (i128::from(sector) + i128::from(offset)).rem_euclid(slots) as u64
}

/// Store `data` at `sector` as `bio` would (its PREFLUSH and FUA flags),
/// through the device's write cache; no data is a bare flush.
fn put(device: &mut Device, bio: &Bio, sector: u64, data: &Stamps) {
    let mut stored = bio.clone();
    stored.sector = sector;
    stored.sectors = data.len();
    stored.data = data.clone();
    if data.is_empty() {
        stored.op = BioOp::Flush;
    }
    crate::cache::write_bio(device, &stored);
}

/// Store a write bio's data on `device`, as the data fault plan says.
/// Called by the device write path with the device borrowed; it borrows
/// the plan, the storage checker (to know whose copies a write damages)
/// and the oracle's damage record, never the devices.
///
/// Inlined into the bio path: nearly always there is no rule to count
/// the write and no cache to hold it (where `cache::write_bio` ignores
/// the flags), so it goes straight to the media, with no call of its own,
/// no search of the plan and no dispatch of the cache.
#[inline(always)]
pub fn store(sim: &Sim, device: &mut Device, bio: &Bio) {
    debug_assert_eq!(bio.op, BioOp::Write);
    if !device.cache.is_enabled() && !sim.data_faults.borrow().has_rules(bio.dev) {
        device.write(bio.sector, &bio.data);
        return;
    }
    store_decided(sim, device, bio);
}

/// `store` when a rule or the cache may change what is stored.
#[inline(never)]
fn store_decided(sim: &Sim, device: &mut Device, bio: &Bio) {
    let kind = sim.data_faults.borrow_mut().decide(bio);
    let Some(kind) = kind else {
        crate::cache::write_bio(device, bio);
        return;
    };
    let (sector, sectors) = (bio.sector, bio.sectors);
    let meant = Location {
        dev: bio.dev,
        sector,
        sectors,
    };
    match kind {
        DataFaultKind::LostWrite => {
            sim.record_fault(FaultKind::LostWrite {
                dev: bio.dev,
                sector,
                sectors,
            });
            damaged(sim, "lost write", meant, &bio.data);
            if bio.flags.preflush {
                // The data is lost; the flush before it still happens.
                put(device, bio, sector, &Stamps::new());
            }
        }
        DataFaultKind::CorruptedWrite { first, sectors: n } => {
            let first = first.min(sectors - 1);
            let n = n.min(sectors - first);
            let garbage: Stamps = (0..n)
                .map(|_| sim.data_faults.borrow_mut().garbage())
                .collect();
            let mut data = bio.data.clone();
            data.overwrite(first, &garbage);
            put(device, bio, sector, &data);
            sim.record_fault(FaultKind::CorruptedWrite {
                dev: bio.dev,
                sector: sector + first,
                sectors: n,
            });
            let hit = Location {
                sector: sector + first,
                sectors: n,
                ..meant
            };
            let meant_there = bio.data.slice(first, first + n);
            damaged(sim, "corrupted write", hit, &meant_there);
        }
        DataFaultKind::MisdirectedWrite { offset } => {
            let actual = destination(sector, sectors, offset, device.capacity);
            sim.record_fault(FaultKind::MisdirectedWrite {
                dev: bio.dev,
                sector,
                actual,
                sectors,
            });
            damaged(sim, "misdirected write (not stored here)", meant, &bio.data);
            let landed = Location {
                sector: actual,
                ..meant
            };
            let held = crate::cache::read(device, actual, sectors);
            damaged(sim, "misdirected write (landed here)", landed, &held);
            put(device, bio, actual, &bio.data);
        }
    }
}

/// Tell the oracle what a fault damaged: the location, and whose data it
/// held or was meant to hold there, as the storage checker knows it from
/// the data (copies on the diff storage name their original sectors).
fn damaged(sim: &Sim, what: &'static str, at: Location, data: &Stamps) {
    let origins = sim.storage.borrow().identify(data);
    let now = sim.now();
    sim.oracle
        .borrow_mut()
        .device_damage
        .record(now, what, at, origins);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misdirected_writes_wrap_inside_the_device() {
        assert_eq!(destination(10, 8, 64, 1000), 74);
        assert_eq!(destination(10, 8, -20, 1000), 983);
        assert_eq!(destination(990, 8, 4, 1000), 1);
    }

    #[test]
    fn rules_parse_and_their_kind_is_validated() {
        let parse = |text: &str| ron::from_str::<DataFault>(text);
        let rule = parse("(kind: LostWrite, after: 2, count: Some(1))").unwrap();
        assert_eq!((rule.select().after, rule.select().count), (2, Some(1)));
        let rule = parse("(kind: MisdirectedWrite(offset: -64), nth: Some(5))").unwrap();
        assert_eq!(rule.select().nth, Some(5));
        let kind = |text: &str| parse(text).unwrap().validate_kind();
        assert!(kind("(kind: CorruptedWrite(first: 1, sectors: 2))").is_ok());
        assert!(kind("(kind: MisdirectedWrite(offset: 0))")
            .unwrap_err()
            .contains("non-zero"));
        assert!(kind("(kind: CorruptedWrite(first: 0, sectors: 0))")
            .unwrap_err()
            .contains("at least 1"));
        let unknown = parse("(kind: TornWrite)").unwrap_err().to_string();
        assert!(unknown.contains("LostWrite"), "{unknown}");
        assert!(unknown.contains("MisdirectedWrite"), "{unknown}");
    }
}
