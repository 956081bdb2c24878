//! Fault injection, declared per scenario.
//!
//! The fault model: allocations fail at a named site (the Nth call, or with
//! a probability), bios fail with EIO (`io_errors` windows, aimed by the
//! selector of `fault_select.rs`, each with its own stream; see `device`),
//! and `add_disk` fails. Every other decision comes from the sim's fault
//! stream.

use std::collections::BTreeMap;

use blksnap_core::kernel::{Bio, BioOp};
use serde::{Deserialize, Serialize};

use crate::fault_select::{Select, Selector};
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
/// `op`, the selector's fields (`fault_select.rs`) pick those that fail;
/// e.g. `after: 1, count: 2` fails the second and third bio that touch the
/// range, and every later one if `count` is absent. Counting bios rather
/// than time aims the fault at an engine step (the first COW store, the
/// third load) whatever the seed's timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoErrors {
    pub op: IoOp,
    #[serde(default)]
    pub range: Option<(u64, u64)>,
    #[serde(default)]
    pub after: u64,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nth: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_million: Option<u64>,
}

impl IoErrors {
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

    fn applies_to(&self, op: BioOp) -> bool {
        match self.op {
            IoOp::Any => op != BioOp::Flush,
            IoOp::Read => op == BioOp::Read,
            IoOp::Write => op.is_write() && op != BioOp::Flush,
        }
    }
}

/// An `IoErrors` window with its selector and its own fault stream
/// (drawn from only by a window with `per_million`).
pub struct IoWindow {
    pub spec: IoErrors,
    selector: Selector,
    rng: SimRng,
}

impl IoWindow {
    pub fn new(spec: IoErrors, rng: SimRng) -> IoWindow {
        let selector = Selector::new(spec.select());
        IoWindow {
            spec,
            selector,
            rng,
        }
    }

    /// Count a bio; true if it falls inside the failing window.
    pub fn fails(&mut self, op: BioOp, sector: u64, sectors: u64) -> bool {
        self.spec.applies_to(op) && self.selector.hits(sector, sectors, &mut self.rng)
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

    /// Whether this call at `site` fails. `nowait` (GFP_NOWAIT) names the
    /// site `SITE/nowait`, so a plan can aim at the would-block calls alone.
    pub fn alloc_fails(&mut self, site: &str, nowait: bool, rng: &mut SimRng) -> bool {
        if self.alloc.is_empty() {
            // Most plans fail no allocation: no key is built or searched.
            return false;
        }
        let nowait_site;
        let site = if nowait {
            nowait_site = format!("{site}/nowait");
            nowait_site.as_str()
        } else {
            site
        };
        let Some(how) = self.alloc.get(site) else {
            return false;
        };
        let calls = match self.calls.get_mut(site) {
            Some(calls) => calls,
            None => self.calls.entry(site.to_string()).or_insert(0),
        };
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
        let a: Vec<bool> = (0..3)
            .map(|_| plan.alloc_fails("a", false, &mut rng))
            .collect();
        let b: Vec<bool> = (0..3)
            .map(|_| plan.alloc_fails("b", false, &mut rng))
            .collect();
        assert_eq!(a, vec![false, true, false]);
        assert_eq!(b, vec![false, true, true]);
        assert!(!plan.alloc_fails("c", false, &mut rng));
    }

    /// A GFP_NOWAIT call counts as `SITE/nowait`, apart from the site's
    /// other calls, and only a rule for that name fails it.
    #[test]
    fn nowait_calls_have_their_own_name() {
        let mut rng = SimRng::new(0);
        let mut plan = FaultPlan::default();
        plan.fail_alloc("a/nowait".into(), AllocFault::Nth(2));
        let calls = [true, false, true, true];
        let fails: Vec<bool> = calls
            .iter()
            .map(|&nowait| plan.alloc_fails("a", nowait, &mut rng))
            .collect();
        assert_eq!(fails, vec![false, false, true, false]);
    }

    fn window(op: IoOp, range: Option<(u64, u64)>, after: u64, count: Option<u64>) -> IoWindow {
        let spec = IoErrors {
            op,
            range,
            after,
            count,
            nth: None,
            per_million: None,
        };
        IoWindow::new(spec, SimRng::new(0))
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
        let mut writes = window(IoOp::Write, None, 0, None);
        assert!(
            !writes.fails(BioOp::Flush, 0, 0),
            "a flush is never counted"
        );
    }

    #[test]
    fn io_errors_parse_the_selector_fields() {
        let parse = |text: &str| ron::from_str::<IoErrors>(text);
        let spec = parse("(op: Write, after: 2, count: Some(1))").unwrap();
        assert_eq!((spec.after, spec.count, spec.nth), (2, Some(1), None));
        let spec = parse("(op: Read, nth: Some(3), range: Some((0, 8)))").unwrap();
        assert_eq!(spec.select().nth, Some(3));
        assert!(parse("(op: Read, per_million: Some(5))").is_ok());
        assert!(parse("(op: Read, aftr: 1)").is_err());
    }
}
