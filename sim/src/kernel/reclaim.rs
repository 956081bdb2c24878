//! Memory reclaim: whether an allocation that may sleep has to wait, and
//! for how long.
//!
//! Fault model. An allocation of class GFP_KERNEL or GFP_NOIO takes the
//! fast path (free memory at hand: no sleep, as in the C allocator) or
//! the slow path: direct reclaim, which sleeps before the allocation is
//! tried. The choice is drawn from the seed (its own `reclaim` stream), one
//! draw per allocation, with probability `SLOWPATH_ONE_IN`; when the
//! engine's live memory is within a quarter of the scenario's memory limit
//! every allocation reclaims. Reclaim takes virtual time: GFP_NOIO reclaim
//! may not start IO, so it only drops clean memory (a short sleep);
//! GFP_KERNEL reclaim may also write back dirty memory and wait for it (up
//! to ten times longer). A GFP_KERNEL allocation from a task inside a
//! `memalloc_noio` scope reclaims as GFP_NOIO. NOWAIT allocations never
//! come here. Whether the allocation then fails is the fault plan's
//! decision (`faults.rs`), drawn independently.

use blksnap_core::kernel::Gfp;

use crate::rng::SimRng;

/// One allocation in this many takes the slow path.
pub const SLOWPATH_ONE_IN: u64 = 4;
/// GFP_NOIO reclaim: dropping clean pages and slab, no IO.
pub const NOIO_RECLAIM_NS: (u64, u64) = (5_000, 200_000);
/// GFP_KERNEL reclaim: may also write back and wait for the IO.
pub const KERNEL_RECLAIM_NS: (u64, u64) = (5_000, 2_000_000);

pub struct Reclaim {
    rng: SimRng,
    /// Slow paths taken (a metric: a run where none was taken explored
    /// no reclaim window).
    pub slowpaths: u64,
}

impl Reclaim {
    pub fn new(seed: u64) -> Reclaim {
        Reclaim {
            rng: SimRng::child(seed, "reclaim"),
            slowpaths: 0,
        }
    }

    /// The reclaim time of an allocation of effective class `gfp`, or None
    /// for the fast path. `live` and `limit` are the engine's live bytes
    /// and the scenario's memory limit, if any.
    pub fn slowpath(&mut self, gfp: Gfp, live: u64, limit: Option<u64>) -> Option<u64> {
        let pressure = limit.is_some_and(|l| live.saturating_mul(4) >= l.saturating_mul(3));
        let (low, high) = match gfp {
            Gfp::NoioNowait => return None,
            Gfp::Noio => NOIO_RECLAIM_NS,
            Gfp::Kernel => KERNEL_RECLAIM_NS,
        };
        // Always draw, so the stream does not depend on the pressure.
        let slow = self.rng.chance(1, SLOWPATH_ONE_IN);
        let ns = self.rng.range(low, high);
        if !(slow || pressure) {
            return None;
        }
        self.slowpaths += 1;
        Some(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nowait_never_reclaims_and_noio_reclaims_briefly() {
        let mut r = Reclaim::new(1);
        let mut slow = 0;
        for _ in 0..400 {
            assert_eq!(r.slowpath(Gfp::NoioNowait, 0, None), None);
            if let Some(ns) = r.slowpath(Gfp::Noio, 0, None) {
                assert!((NOIO_RECLAIM_NS.0..=NOIO_RECLAIM_NS.1).contains(&ns));
                slow += 1;
            }
        }
        assert!((50..150).contains(&slow), "{slow} of 400");
        assert_eq!(r.slowpaths, slow);
    }

    #[test]
    fn pressure_makes_every_allocation_reclaim() {
        let mut r = Reclaim::new(2);
        for _ in 0..50 {
            assert!(r.slowpath(Gfp::Kernel, 80, Some(100)).is_some());
        }
    }

    #[test]
    fn same_seed_same_decisions() {
        let draw = |seed| {
            let mut r = Reclaim::new(seed);
            (0..64)
                .map(|_| r.slowpath(Gfp::Kernel, 0, None))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }
}
