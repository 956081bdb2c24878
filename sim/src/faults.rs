//! Fault injection, declared per scenario.
//!
//! The fault model: allocations fail at a named site (the Nth call, or with
//! a probability), bios fail with EIO on a device range (see `device`), and
//! `add_disk` fails. Every decision comes from the sim's fault stream.

use std::collections::BTreeMap;

use blksnap_core::kernel::{Bio, BioOp};
use serde::{Deserialize, Serialize};

use crate::rng::SimRng;

/// How an allocation site fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum AllocFault {
    /// The Nth call at the site (1-based) fails, once.
    Nth(u64),
    /// Every call from the Nth on fails.
    From(u64),
    /// Each call fails with this probability, in parts per million.
    PerMillion(u64),
}

/// Which bios an IO error window fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoOp {
    Read,
    /// Writes, discards and write-zeroes.
    Write,
    Any,
}

/// A window of EIO on one device (`io_errors` of a device): of the bios of
/// `op` that touch `range` (the whole device by default), the first
/// `after` succeed, then `count` of them fail (every later one if absent).
/// Counting bios rather than time aims the fault at an engine step (the
/// first COW store, the third load) whatever the seed's timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawIoErrors", into = "RawIoErrors")]
pub struct IoErrors {
    pub op: IoOp,
    pub range: Option<(u64, u64)>,
    pub after: u64,
    pub count: Option<u64>,
}

/// `IoErrors` as written; validated into `IoErrors`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename = "IoErrors")]
struct RawIoErrors {
    op: IoOp,
    #[serde(default)]
    range: Option<(u64, u64)>,
    #[serde(default)]
    after: u64,
    #[serde(default)]
    count: Option<u64>,
}

impl TryFrom<RawIoErrors> for IoErrors {
    type Error = String;

    fn try_from(raw: RawIoErrors) -> Result<Self, String> {
        if raw.count == Some(0) {
            return Err(
                "io_errors: count must be at least 1 (leave it out to fail every later bio)".into(),
            );
        }
        if let Some((start, len)) = raw.range {
            if len == 0 || start.checked_add(len).is_none() {
                return Err(format!(
                    "io_errors: range ({start}, {len}) is empty or overflows"
                ));
            }
        }
        Ok(IoErrors {
            op: raw.op,
            range: raw.range,
            after: raw.after,
            count: raw.count,
        })
    }
}

impl From<IoErrors> for RawIoErrors {
    fn from(e: IoErrors) -> Self {
        RawIoErrors {
            op: e.op,
            range: e.range,
            after: e.after,
            count: e.count,
        }
    }
}

/// An `IoErrors` window with the count of bios it has seen.
#[derive(Clone, Debug)]
pub struct IoWindow {
    pub spec: IoErrors,
    seen: u64,
}

impl IoWindow {
    pub fn new(spec: IoErrors) -> IoWindow {
        IoWindow { spec, seen: 0 }
    }

    /// Count a bio; true if it falls inside the failing window.
    pub fn fails(&mut self, op: BioOp, sector: u64, sectors: u64) -> bool {
        let op_matches = match self.spec.op {
            IoOp::Any => op != BioOp::Flush,
            IoOp::Read => op == BioOp::Read,
            IoOp::Write => op.is_write() && op != BioOp::Flush,
        };
        let touches = self.spec.range.is_none_or(|(start, len)| {
            sector < start.saturating_add(len) && start < sector.saturating_add(sectors)
        });
        if !op_matches || !touches {
            return false;
        }
        self.seen += 1;
        let after = self.spec.after;
        self.seen > after && self.spec.count.is_none_or(|c| self.seen - after <= c)
    }
}

#[derive(Default)]
pub struct FaultPlan {
    alloc: BTreeMap<String, AllocFault>,
    calls: BTreeMap<String, u64>,
    /// Probability (per million) that any device bio fails.
    pub bio_error_ppm: u64,
    pub add_disk_fail: bool,
}

impl FaultPlan {
    pub fn fail_alloc(&mut self, site: String, how: AllocFault) {
        self.alloc.insert(site, how);
    }

    pub fn alloc_fails(&mut self, site: &str, rng: &mut SimRng) -> bool {
        let Some(how) = self.alloc.get(site) else {
            return false;
        };
        let calls = self.calls.entry(site.to_string()).or_insert(0);
        *calls += 1;
        match how {
            AllocFault::Nth(n) => *calls == *n,
            AllocFault::From(n) => *calls >= *n,
            AllocFault::PerMillion(p) => rng.below(1_000_000) < *p,
        }
    }

    pub fn bio_error(&mut self, _bio: &Bio, rng: &mut SimRng) -> bool {
        self.bio_error_ppm > 0 && rng.below(1_000_000) < self.bio_error_ppm
    }

    pub fn add_disk_fails(&mut self, _rng: &mut SimRng) -> bool {
        self.add_disk_fail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_and_from() {
        let mut rng = SimRng::new(0);
        let mut plan = FaultPlan::default();
        plan.fail_alloc("a".into(), AllocFault::Nth(2));
        plan.fail_alloc("b".into(), AllocFault::From(2));
        let a: Vec<bool> = (0..3).map(|_| plan.alloc_fails("a", &mut rng)).collect();
        let b: Vec<bool> = (0..3).map(|_| plan.alloc_fails("b", &mut rng)).collect();
        assert_eq!(a, vec![false, true, false]);
        assert_eq!(b, vec![false, true, true]);
        assert!(!plan.alloc_fails("c", &mut rng));
    }

    fn window(op: IoOp, range: Option<(u64, u64)>, after: u64, count: Option<u64>) -> IoWindow {
        IoWindow::new(IoErrors {
            op,
            range,
            after,
            count,
        })
    }

    #[test]
    fn io_window_counts_matching_bios_only() {
        let mut w = window(IoOp::Write, Some((100, 10)), 1, Some(2));
        let got: Vec<bool> = [
            (BioOp::Write, 100),
            (BioOp::Read, 100),
            (BioOp::Write, 0),
            (BioOp::Write, 105),
            (BioOp::Write, 109),
            (BioOp::Write, 100),
        ]
        .iter()
        .map(|&(op, sector)| w.fails(op, sector, 1))
        .collect();
        assert_eq!(got, vec![false, false, false, true, true, false]);
        let mut every = window(IoOp::Read, None, 0, None);
        assert!(every.fails(BioOp::Read, 7, 8) && every.fails(BioOp::Read, 0, 1));
        assert!(!every.fails(BioOp::Write, 0, 1));
    }

    #[test]
    fn io_errors_are_validated_when_loaded() {
        let parse = |text: &str| ron::from_str::<IoErrors>(text);
        assert!(parse("(op: Write, after: 2, count: Some(1))").is_ok());
        let err = parse("(op: Write, count: Some(0))")
            .unwrap_err()
            .to_string();
        assert!(err.contains("count must be at least 1"), "{err}");
        let err = parse("(op: Read, range: Some((5, 0)))")
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty or overflows"), "{err}");
        assert!(parse("(op: Read, aftr: 1)").is_err());
    }
}
