//! Per-device disk faults of the fault plan (`faults:` of a device).
//!
//! Fault model, one kind per variant of [`DiskFault`], each aimed by a
//! sector range, the Nth matching bio, or a probability per million:
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
use crate::rng::SimRng;

/// A disk fault as a scenario declares it. With neither `nth` nor
/// `per_million`, every bio that matches the range is hit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DiskFault {
    LatencySpike {
        #[serde(default)]
        range: Option<(u64, u64)>,
        #[serde(default)]
        nth: Option<u64>,
        #[serde(default)]
        per_million: Option<u64>,
        extra_us: u64,
    },
    FlakyRead {
        #[serde(default)]
        range: Option<(u64, u64)>,
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
        #[serde(default)]
        nth: Option<u64>,
        #[serde(default)]
        per_million: Option<u64>,
    },
}

fn one() -> u32 {
    1
}

/// The valid kinds, for messages.
pub const KINDS: &[&str] = &["LatencySpike", "FlakyRead", "TornWrite"];

/// Longest latency spike a scenario may ask for (10 s).
pub const MAX_SPIKE_US: u64 = 10_000_000;

impl DiskFault {
    fn aim(&self) -> Aim {
        let (range, nth, per_million) = match self {
            DiskFault::LatencySpike {
                range,
                nth,
                per_million,
                ..
            }
            | DiskFault::FlakyRead {
                range,
                nth,
                per_million,
                ..
            }
            | DiskFault::TornWrite {
                range,
                nth,
                per_million,
            } => (*range, *nth, *per_million),
        };
        Aim {
            range,
            nth,
            per_million,
            seen: 0,
        }
    }

    /// What is wrong with the declaration, if anything (the loader places
    /// the message at the fault).
    pub fn validate(&self) -> Result<(), String> {
        let aim = self.aim();
        if aim.nth.is_some() && aim.per_million.is_some() {
            return Err("give `nth` or `per_million`, not both".into());
        }
        if aim.nth == Some(0) {
            return Err("`nth` counts from 1".into());
        }
        if aim.per_million.is_some_and(|p| p > 1_000_000) {
            return Err("`per_million` is at most 1000000".into());
        }
        if let Some((start, len)) = aim.range {
            if len == 0 || start.checked_add(len).is_none() {
                return Err(format!("range ({start}, {len}) is empty or overflows"));
            }
        }
        match self {
            DiskFault::LatencySpike { extra_us, .. } if *extra_us > MAX_SPIKE_US => {
                Err(format!("extra_us is at most {MAX_SPIKE_US} (10 s)"))
            }
            DiskFault::FlakyRead { failures: 0, .. } => Err("failures must be at least 1".into()),
            _ => Ok(()),
        }
    }
}

/// Which bios a fault hits, with the count of those it has seen.
#[derive(Clone, Debug)]
struct Aim {
    range: Option<(u64, u64)>,
    nth: Option<u64>,
    per_million: Option<u64>,
    seen: u64,
}

impl Aim {
    fn fires(&mut self, sector: u64, sectors: u64, rng: &mut SimRng) -> bool {
        let touches = self.range.is_none_or(|(start, len)| {
            sector < start.saturating_add(len) && start < sector.saturating_add(sectors.max(1))
        });
        if !touches {
            return false;
        }
        self.seen += 1;
        match (self.nth, self.per_million) {
            (Some(n), _) => self.seen == n,
            (None, Some(p)) => rng.below(1_000_000) < p,
            (None, None) => true,
        }
    }
}

/// The faults of one device, ready to fire.
#[derive(Default)]
pub struct DiskFaults {
    rng: Option<SimRng>,
    spikes: Vec<(Aim, u64)>,
    flaky: Vec<(Aim, u32)>,
    tears: Vec<Aim>,
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
            let aim = fault.aim();
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
            if aim.fires(sector, sectors, rng) {
                extra += us.saturating_mul(1000);
            }
        }
        (extra > 0).then_some(extra)
    }

    /// Does this read fail (a flaky sector not yet healed)?
    pub fn read_fails(&mut self, sector: u64, sectors: u64) -> bool {
        let Some(rng) = self.rng.as_mut() else {
            return false;
        };
        let end = sector.saturating_add(sectors);
        let weakened = self.weak.range(sector..end).next().is_some();
        if !weakened {
            for (aim, failures) in &mut self.flaky {
                if aim.fires(sector, sectors, rng) {
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
            tear |= aim.fires(sector, sectors, rng);
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
                nth: Some(3),
                per_million: None,
                extra_us: 5,
            },
            DiskFault::LatencySpike {
                range: Some((50, 1)),
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
    /// place and the valid kinds; a bad aim is placed at the fault.
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
        assert!(
            err.contains("x.ron:2:11") && err.contains("counts from 1"),
            "{err}"
        );
        assert!(crate::scenario::parse(path, &text("FlakyRead(range: (0, 8))")).is_ok());
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = DiskFault::TornWrite {
            range: None,
            nth: Some(1),
            per_million: Some(5),
        };
        assert!(bad.validate().unwrap_err().contains("not both"));
        let bad = DiskFault::FlakyRead {
            range: Some((0, 0)),
            nth: None,
            per_million: None,
            failures: 1,
        };
        assert!(bad.validate().unwrap_err().contains("empty"));
        let parse = |t: &str| ron::from_str::<DiskFault>(t);
        assert!(parse("TornWrite(nth: Some(2))").is_ok());
        let err = parse("TornWrit(nth: Some(2))").unwrap_err().to_string();
        assert!(err.contains("TornWrite"), "{err}");
    }
}
