//! Per-device disk faults of the fault plan (`faults:` of a device).
//!
//! Fault model, one kind per variant of [`DiskFault`], each aimed by the
//! selector's fields (`fault_select.rs`: a sector range, bios spared and
//! counted, the Nth matching bio, or a probability per million):
//! - `LatencySpike`: a bio takes `extra_us` longer, as dm-delay or a disk
//!   doing internal recovery does. The data is untouched.
//! - `FlakyRead`: a read fails with EIO, and so do the next reads of the
//!   same sectors until `failures` reads failed; then the sectors heal and
//!   read their true content (a marginal sector the drive's retry recovers).
//! - `TornWrite`: at power loss, a write still in the volatile cache that
//!   the aim picks is torn at a sector boundary (without it the seed alone
//!   decides keep, drop or tear; see `cache.rs`).
//!
//! Device removal with bios in flight is the `RemoveDevice` step; it is
//! recorded here too (`RemovalInFlight`), since the bios it ends with EIO
//! are a device fault.
//!
//! Every decision draws from the device's own fault stream, and only when
//! the device has faults declared, so other runs keep their digests.

use std::collections::BTreeMap;

use blksnap_core::kernel::BioOp;
use serde::{Deserialize, Serialize};

use crate::cache::TearPolicy;
use crate::fault_select::{Select, Selector};
use crate::rng::SimRng;

/// A disk fault as a scenario declares it: what it does, and which bios
/// it hits (the selector's fields, `fault_select.rs`; with neither `nth`
/// nor `per_million`, every bio its window leaves).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DiskFault {
    LatencySpike {
        #[serde(default)]
        range: Option<(u64, u64)>,
        #[serde(default, skip_serializing_if = "is_zero")]
        after: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        #[serde(default)]
        nth: Option<u64>,
        #[serde(default)]
        per_million: Option<u64>,
        extra_us: u64,
    },
    FlakyRead {
        #[serde(default)]
        range: Option<(u64, u64)>,
        #[serde(default, skip_serializing_if = "is_zero")]
        after: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        #[serde(default)]
        nth: Option<u64>,
        #[serde(default)]
        per_million: Option<u64>,
        #[serde(default = "one")]
        failures: u32,
    },
    TornWrite {
        #[serde(default)]
        range: Option<(u64, u64)>,
        #[serde(default, skip_serializing_if = "is_zero")]
        after: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        #[serde(default)]
        nth: Option<u64>,
        #[serde(default)]
        per_million: Option<u64>,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn one() -> u32 {
    1
}

/// The valid kinds, for messages.
pub const KINDS: &[&str] = &["LatencySpike", "FlakyRead", "TornWrite"];

/// Longest latency spike a scenario may ask for (10 s).
pub const MAX_SPIKE_US: u64 = 10_000_000;

impl DiskFault {
    /// The selecting fields (validated by the loader, see `Select::validate`).
    pub fn select(&self) -> Select {
        let (range, after, count, nth, per_million) = match self {
            DiskFault::LatencySpike {
                range,
                after,
                count,
                nth,
                per_million,
                ..
            }
            | DiskFault::FlakyRead {
                range,
                after,
                count,
                nth,
                per_million,
                ..
            }
            | DiskFault::TornWrite {
                range,
                after,
                count,
                nth,
                per_million,
            } => (*range, *after, *count, *nth, *per_million),
        };
        Select {
            range,
            after,
            count,
            nth,
            per_million,
        }
    }

    /// What is wrong with the kind's own fields, as (field, message); the
    /// loader places the message at the field.
    pub fn validate_kind(&self) -> Result<(), (&'static str, String)> {
        match self {
            DiskFault::LatencySpike { extra_us, .. } if *extra_us > MAX_SPIKE_US => Err((
                "extra_us",
                format!("extra_us is at most {MAX_SPIKE_US} (10 s)"),
            )),
            DiskFault::FlakyRead { failures: 0, .. } => {
                Err(("failures", "failures must be at least 1".into()))
            }
            _ => Ok(()),
        }
    }
}

/// Count a bio against a fault's selector. Flushes never get here; a bio
/// of no sectors would count as touching its first sector.
fn fires(selector: &mut Selector, sector: u64, sectors: u64, rng: &mut SimRng) -> bool {
    selector.hits(sector, sectors.max(1), rng)
}

/// The faults of one device, ready to fire.
#[derive(Default)]
pub struct DiskFaults {
    rng: Option<SimRng>,
    spikes: Vec<(Selector, u64)>,
    flaky: Vec<(Selector, u32)>,
    tears: Vec<Selector>,
    /// Sectors a flaky read weakened: reads left to fail before they heal.
    weak: BTreeMap<u64, u32>,
}

impl DiskFaults {
    pub fn new(seed: u64, device: &str, faults: &[DiskFault]) -> DiskFaults {
        let mut out = DiskFaults::default();
        if faults.is_empty() {
            return out;
        }
        out.rng = Some(SimRng::child(seed, &format!("disk-faults/{device}")));
        for fault in faults {
            let aim = Selector::new(fault.select());
            match fault {
                DiskFault::LatencySpike { extra_us, .. } => out.spikes.push((aim, *extra_us)),
                DiskFault::FlakyRead { failures, .. } => out.flaky.push((aim, *failures)),
                DiskFault::TornWrite { .. } => out.tears.push(aim),
            }
        }
        out
    }

    /// Extra latency for a bio, in ns, if a spike hits it.
    pub fn spike_ns(&mut self, op: BioOp, sector: u64, sectors: u64) -> Option<u64> {
        let rng = self.rng.as_mut()?;
        if op == BioOp::Flush {
            return None;
        }
        let mut extra = 0;
        for (aim, us) in &mut self.spikes {
            if fires(aim, sector, sectors, rng) {
                extra += us.saturating_mul(1000);
            }
        }
        (extra > 0).then_some(extra)
    }

    /// Does this read fail (a flaky sector not yet healed)? Inlined: a
    /// device with no disk faults (nearly every one) answers with one
    /// test, where the call cost about 30 instructions per read.
    #[inline(always)]
    pub fn read_fails(&mut self, sector: u64, sectors: u64) -> bool {
        self.rng.is_some() && self.flaky_read_fails(sector, sectors)
    }

    #[inline(never)]
    fn flaky_read_fails(&mut self, sector: u64, sectors: u64) -> bool {
        let Some(rng) = self.rng.as_mut() else {
            return false;
        };
        let end = sector.saturating_add(sectors);
        let weakened = self.weak.range(sector..end).next().is_some();
        if !weakened {
            for (aim, failures) in &mut self.flaky {
                if fires(aim, sector, sectors, rng) {
                    for s in sector..end {
                        self.weak.insert(s, *failures);
                    }
                }
            }
        }
        let touched: Vec<u64> = self.weak.range(sector..end).map(|(s, _)| *s).collect();
        for s in &touched {
            if let Some(left) = self.weak.get_mut(s) {
                *left -= 1;
                if *left == 0 {
                    self.weak.remove(s);
                }
            }
        }
        !touched.is_empty()
    }
}

impl TearPolicy for DiskFaults {
    fn must_tear(&mut self, sector: u64, sectors: u64) -> bool {
        let Some(rng) = self.rng.as_mut() else {
            return false;
        };
        let mut tear = false;
        for aim in &mut self.tears {
            tear |= fires(aim, sector, sectors, rng);
        }
        tear
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(list: &[DiskFault]) -> DiskFaults {
        DiskFaults::new(1, "d", list)
    }

    #[test]
    fn a_flaky_read_fails_then_heals() {
        let mut f = faults(&[DiskFault::FlakyRead {
            range: Some((100, 8)),
            after: 0,
            count: None,
            nth: Some(2),
            per_million: None,
            failures: 2,
        }]);
        assert!(!f.read_fails(0, 8), "outside the range");
        assert!(
            !f.read_fails(100, 8),
            "the first matching read is not the 2nd"
        );
        assert!(f.read_fails(100, 8), "the 2nd fails");
        assert!(f.read_fails(104, 1), "a retry of a weak sector fails too");
        assert!(
            f.read_fails(100, 4),
            "sectors 100..104 have one failure left"
        );
        assert!(f.read_fails(100, 8), "105..108 had one failure left");
        assert!(!f.read_fails(100, 8), "healed");
        assert!(!f.read_fails(100, 8));
    }

    #[test]
    fn spikes_hit_the_nth_bio_or_every_one() {
        let mut f = faults(&[
            DiskFault::LatencySpike {
                range: None,
                after: 0,
                count: None,
                nth: Some(3),
                per_million: None,
                extra_us: 5,
            },
            DiskFault::LatencySpike {
                range: Some((50, 1)),
                after: 0,
                count: None,
                nth: None,
                per_million: None,
                extra_us: 1,
            },
        ]);
        let got: Vec<Option<u64>> = [0, 50, 0, 50]
            .iter()
            .map(|&s| f.spike_ns(BioOp::Write, s, 1))
            .collect();
        assert_eq!(got, vec![None, Some(1000), Some(5000), Some(1000)]);
        assert_eq!(f.spike_ns(BioOp::Flush, 50, 0), None);
        assert_eq!(faults(&[]).spike_ns(BioOp::Read, 0, 1), None);
    }

    /// A scenario naming an unknown fault kind fails to load with its
    /// place and the valid kinds; a bad selector field is placed at the
    /// field, its message prefixed by the list's name.
    #[test]
    fn a_load_error_names_an_unknown_fault_kind_and_the_valid_ones() {
        let text = |fault: &str| {
            format!(
                "Scenario(name: \"x\", devices: [(name: \"d\", sectors: 64,\n faults: [{fault}])], steps: [])"
            )
        };
        let path = std::path::Path::new("x.ron");
        let err = crate::scenario::parse(path, &text("TornWrites(nth: 1)"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.ron:2:11: unknown variant `TornWrites`"),
            "{err}"
        );
        for kind in KINDS {
            assert!(err.contains(&format!("`{kind}`")), "{err}");
        }
        let err = crate::scenario::parse(path, &text("TornWrite(nth: 0)"))
            .unwrap_err()
            .to_string();
        // ` faults: [TornWrite(nth: 0)]`: the 0 is at column 26.
        assert!(
            err.starts_with("x.ron:2:26: faults: `nth` counts from 1"),
            "{err}"
        );
        assert!(crate::scenario::parse(path, &text("FlakyRead(range: (0, 8))")).is_ok());
    }

    #[test]
    fn kinds_are_validated_and_every_variant_gives_its_selector() {
        let parse = |t: &str| ron::from_str::<DiskFault>(t).unwrap();
        let spike = parse("LatencySpike(after: 2, count: Some(1), extra_us: 20000000)");
        assert_eq!(spike.validate_kind().unwrap_err().0, "extra_us");
        assert_eq!((spike.select().after, spike.select().count), (2, Some(1)));
        let flaky = parse("FlakyRead(range: Some((0, 8)), failures: 0)");
        assert_eq!(flaky.validate_kind().unwrap_err().0, "failures");
        assert_eq!(flaky.select().range, Some((0, 8)));
        let tear = parse("TornWrite(nth: Some(2))");
        assert!(tear.validate_kind().is_ok());
        assert_eq!(tear.select().nth, Some(2));
        let err = ron::from_str::<DiskFault>("TornWrit(nth: Some(2))")
            .unwrap_err()
            .to_string();
        assert!(err.contains("TornWrite"), "{err}");
    }
}
