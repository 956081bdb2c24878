//! Which bios a fault rule hits: one selector for the three per-device
//! fault lists, `faults:` (disk faults, `disk_faults.rs`), `data_faults:`
//! (`data_faults.rs`) and `io_errors:` (`faults.rs`). Each list filters the
//! bios its faults apply to first (reads, writes, writes with data); of
//! those, the selector decides, from the fields every rule of every list
//! may give:
//! - `range: (start, sectors)`: only bios that touch it count (default: the
//!   whole device);
//! - `after: N`: the first N counted bios are spared (default 0);
//! - `count: M`: at most M bios are hit (default: no limit);
//! - `nth: K`: only the K-th counted bio after the spared ones is hit;
//! - `per_million: P`: each bio the other fields leave is hit with
//!   probability P / 10^6, drawn from the list's fault stream.
//!
//! A rule without `nth` or `per_million` hits every bio its window leaves.
//! The stream is drawn from only for a rule with `per_million`, and only
//! for a bio the other fields leave, so a rule without one, or a run
//! without such rules, draws nothing (the digests of runs without it do
//! not depend on this module).

use crate::rng::SimRng;

/// The selecting fields of one fault rule, as declared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Select {
    pub range: Option<(u64, u64)>,
    pub after: u64,
    pub count: Option<u64>,
    pub nth: Option<u64>,
    pub per_million: Option<u64>,
}

/// Largest `per_million`: every bio.
const MILLION: u64 = 1_000_000;

impl Select {
    /// What is wrong with the fields, as (field, message); the loader
    /// prefixes the list's name and places the message at the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some((start, len)) = self.range {
            if len == 0 || start.checked_add(len).is_none() {
                let message = format!("range ({start}, {len}) is empty or overflows");
                return Err(("range", message));
            }
        }
        if self.count == Some(0) {
            let message = "count must be at least 1 (leave it out: no limit)";
            return Err(("count", message.into()));
        }
        if self.nth == Some(0) {
            return Err(("nth", "`nth` counts from 1".into()));
        }
        if self.per_million.is_some_and(|p| p == 0 || p > MILLION) {
            let message = "per_million is 1 to 1000000 (leave it out: every bio)";
            return Err(("per_million", message.into()));
        }
        if self.nth.is_some() && self.per_million.is_some() {
            let message = "give `nth` or `per_million`, not both";
            return Err(("per_million", message.into()));
        }
        if self.nth.is_some() && self.count.is_some() {
            let message = "`nth` hits one bio: leave `count` out";
            return Err(("count", message.into()));
        }
        Ok(())
    }

    /// The bio [sector, sector + sectors) touches the range.
    fn touches(&self, sector: u64, sectors: u64) -> bool {
        self.range.is_none_or(|(start, len)| {
            sector < start.saturating_add(len) && start < sector.saturating_add(sectors)
        })
    }
}

/// A rule's `Select` with its counts: bios counted (touching the range)
/// and bios hit.
#[derive(Clone, Debug)]
pub struct Selector {
    pub select: Select,
    seen: u64,
    hit: u64,
}

impl Selector {
    pub fn new(select: Select) -> Selector {
        Selector {
            select,
            seen: 0,
            hit: 0,
        }
    }

    /// Count a bio the list applies to; true if the rule hits it.
    pub fn hits(&mut self, sector: u64, sectors: u64, rng: &mut SimRng) -> bool {
        let s = &self.select;
        if !s.touches(sector, sectors) {
            return false;
        }
        self.seen += 1;
        if self.seen <= s.after || s.count.is_some_and(|c| self.hit >= c) {
            return false;
        }
        if s.nth.is_some_and(|n| self.seen - s.after != n) {
            return false;
        }
        if s.per_million.is_some_and(|p| rng.below(MILLION) >= p) {
            return false;
        }
        self.hit += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(select: Select, bios: &[(u64, u64)]) -> Vec<bool> {
        let mut rng = SimRng::new(0);
        let mut selector = Selector::new(select);
        bios.iter()
            .map(|&(sector, sectors)| selector.hits(sector, sectors, &mut rng))
            .collect()
    }

    #[test]
    fn only_bios_touching_the_range_count() {
        let select = Select {
            range: Some((100, 10)),
            ..Select::default()
        };
        let bios = [(90, 10), (90, 11), (109, 1), (110, 4), (0, 1000)];
        assert_eq!(hits(select, &bios), [false, true, true, false, true]);
    }

    #[test]
    fn after_spares_the_first_and_count_bounds_the_hits() {
        let select = Select {
            after: 2,
            count: Some(2),
            ..Select::default()
        };
        let got = hits(select, &[(0, 1); 6]);
        assert_eq!(got, [false, false, true, true, false, false]);
    }

    #[test]
    fn nth_hits_one_bio_counted_after_the_spared_ones() {
        let select = Select {
            after: 1,
            nth: Some(2),
            ..Select::default()
        };
        let got = hits(select, &[(0, 1); 5]);
        assert_eq!(got, [false, false, true, false, false]);
    }

    #[test]
    fn per_million_hits_about_that_often_and_draws_only_when_given() {
        let select = Select {
            per_million: Some(250_000),
            ..Select::default()
        };
        let n = hits(select, &[(0, 1); 4000]).iter().filter(|h| **h).count();
        assert!((800..1200).contains(&n), "{n}");
        let mut rng = SimRng::new(7);
        let mut untouched = SimRng::new(7);
        let mut every = Selector::new(Select::default());
        assert!((0..10).all(|_| every.hits(0, 1, &mut rng)));
        assert_eq!(rng.below(MILLION), untouched.below(MILLION));
    }

    #[test]
    fn per_million_draws_only_for_bios_the_window_leaves() {
        let mut rng = SimRng::new(3);
        let mut twin = SimRng::new(3);
        let select = Select {
            after: 5,
            per_million: Some(MILLION),
            count: Some(1),
            ..Select::default()
        };
        let mut selector = Selector::new(select);
        let got: Vec<bool> = (0..8).map(|_| selector.hits(0, 1, &mut rng)).collect();
        assert_eq!(got, [false, false, false, false, false, true, false, false]);
        // One draw: the sixth bio's.
        twin.below(MILLION);
        assert_eq!(rng.below(MILLION), twin.below(MILLION));
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |select: Select| select.validate().unwrap_err().0;
        let base = Select::default();
        assert!(base.validate().is_ok());
        let range = Some((5, 0));
        assert_eq!(bad(Select { range, ..base }), "range");
        assert_eq!(
            bad(Select {
                count: Some(0),
                ..base
            }),
            "count"
        );
        assert_eq!(
            bad(Select {
                nth: Some(0),
                ..base
            }),
            "nth"
        );
        for p in [0, MILLION + 1] {
            let per_million = Some(p);
            assert_eq!(
                bad(Select {
                    per_million,
                    ..base
                }),
                "per_million"
            );
        }
        let nth = Some(1);
        let both = Select {
            nth,
            per_million: Some(5),
            ..base
        };
        assert_eq!(bad(both), "per_million");
        assert_eq!(
            bad(Select {
                nth,
                count: Some(1),
                ..base
            }),
            "count"
        );
        let fine = Select {
            nth,
            after: 3,
            range: Some((0, 1)),
            ..base
        };
        assert!(fine.validate().is_ok());
    }
}
