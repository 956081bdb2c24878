//! The one source of randomness: a seeded ChaCha8 stream with bounded
//! helpers. Each subsystem takes its own child stream, derived from the
//! seed and the subsystem's name, so that a new draw in one subsystem does
//! not shift the others.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

pub struct SimRng {
    inner: ChaCha8Rng,
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An independent stream for one subsystem, named for stability.
    pub fn child(seed: u64, name: &str) -> SimRng {
        let mut key = [0u8; 32];
        let hash = blake3::hash(format!("{seed}/{name}").as_bytes());
        key.copy_from_slice(hash.as_bytes());
        SimRng {
            inner: ChaCha8Rng::from_seed(key),
        }
    }

    // The draws below are inlined into their callers: each is a few
    // instructions around the stream's buffer read, and as calls they
    // paid about 20 more in register saves (1 PiB run: 205k bio
    // latencies through `range`). Same code, same values.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in [0, bound), without modulo bias. `bound` must be > 0.
    #[inline]
    pub fn below(&mut self, bound: u64) -> u64 {
        self.draw_below(bound)
    }

    /// `below`, always inlined, for the scheduler's pick (once per poll),
    /// where `below` stayed a call that saved and restored registers
    /// around a few instructions. A pick among one task (a preemption
    /// point with nothing else runnable) skips both divisions and makes
    /// the same draw: every value but `u64::MAX` is in the zone of 1, and
    /// is 0 modulo 1.
    #[inline(always)]
    pub fn below_inlined(&mut self, bound: u64) -> u64 {
        if bound == 1 {
            while self.next_u64() == u64::MAX {}
            return 0;
        }
        self.draw_below(bound)
    }

    /// `below`'s draw: values past the last whole multiple of `bound`
    /// are drawn again (no modulo bias).
    #[inline(always)]
    fn draw_below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0)");
        if bound.is_power_of_two() {
            return self.draw_below_power_of_two(bound);
        }
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % bound;
            }
        }
    }

    /// `draw_below` for a power of two (a workload's block count, a pick
    /// among one task), the same draws and values with no division (two
    /// per draw, some 25 cycles each): `u64::MAX % bound` is `bound - 1`,
    /// so the zone is `2^64 - bound`, and `x % bound` is `x & (bound - 1)`.
    #[inline(always)]
    fn draw_below_power_of_two(&mut self, bound: u64) -> u64 {
        let zone = bound.wrapping_neg();
        loop {
            let x = self.next_u64();
            if x < zone {
                return x & (bound - 1);
            }
        }
    }

    /// Uniform in [low, high]. Always inlined: a plain hint left it a
    /// call in `device_accept`, once per bio.
    #[inline(always)]
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "range({low}, {high})");
        if high - low == u64::MAX {
            return self.next_u64();
        }
        low + self.below(high - low + 1)
    }

    /// True with probability `numerator / denominator`.
    #[inline]
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }

    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        self.inner.fill_bytes(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the stream: if this changes, every recorded digest changes.
    #[test]
    fn golden_stream() {
        let mut rng = SimRng::new(42);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        let mut again = SimRng::new(42);
        let same: Vec<u64> = (0..3).map(|_| again.next_u64()).collect();
        assert_eq!(got, same);
        assert_eq!(got, GOLDEN);
    }

    const GOLDEN: [u64; 3] = [
        12578764544318200737,
        17529487244874322312,
        7886285670807131020,
    ];

    /// The power-of-two path draws as the division does: the same
    /// values and the same number of draws (the next one agrees too),
    /// up to the largest bound, whose zone rejects half of all draws.
    #[test]
    fn power_of_two_bounds_draw_as_the_division_does() {
        fn by_division(rng: &mut SimRng, bound: u64) -> u64 {
            let zone = u64::MAX - (u64::MAX % bound);
            loop {
                let x = rng.next_u64();
                if x < zone {
                    return x % bound;
                }
            }
        }
        for shift in 0..64 {
            let bound = 1u64 << shift;
            let (mut fast, mut slow) = (SimRng::new(shift), SimRng::new(shift));
            for _ in 0..200 {
                assert_eq!(fast.below(bound), by_division(&mut slow, bound));
            }
            assert_eq!(fast.next_u64(), slow.next_u64(), "bound {bound}");
        }
    }

    #[test]
    fn children_are_independent_and_stable() {
        let mut a = SimRng::child(7, "disk");
        let mut b = SimRng::child(7, "sched");
        let mut a2 = SimRng::child(7, "disk");
        assert_ne!(a.next_u64(), b.next_u64());
        let _ = a2.next_u64();
        assert_eq!(a.next_u64(), a2.next_u64());
    }

    #[test]
    fn bounded_helpers_stay_in_bounds() {
        let mut rng = SimRng::new(1);
        for _ in 0..10_000 {
            assert!(rng.below(7) < 7);
            let r = rng.range(3, 5);
            assert!((3..=5).contains(&r));
        }
        assert_eq!(rng.range(9, 9), 9);
        let mut inlined = SimRng::new(1);
        let mut plain = SimRng::new(1);
        // Bound 1 between the others: the same values, the stream kept in step.
        let bounds = (2..2_000).chain([u64::MAX / 3 + 1, u64::MAX]);
        for bound in bounds.flat_map(|b| [1, b]) {
            assert_eq!(inlined.below_inlined(bound), plain.below(bound));
        }
        assert!(!rng.chance(0, 10));
        assert!(rng.chance(10, 10));
    }
}
