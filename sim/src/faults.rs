//! Fault injection, declared per scenario.
//!
//! The fault model: allocations fail at a named site (the Nth call, or with
//! a probability), bios fail with EIO on a device range (see `device`), and
//! `add_disk` fails. Every decision comes from the sim's fault stream.

use std::collections::BTreeMap;

use blksnap_core::kernel::Bio;
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
}
