//! Deterministic pseudo-random fuzz inputs: the stream the fuzz crate's
//! tests, its corpus generator and `replay random` draw from, and the one
//! `blksnap-sim bench` times the `lifecycle` target on (so both measure the
//! same inputs). No RNG crate: splitmix64 is enough for input bytes.

use arbitrary::Unstructured;

use super::gen::{Features, Generator, Scale};
use super::judge::{self, sanitize_owned};
use crate::scenario::{self, Outcome, RunOptions, Scenario};

/// The splitmix64 stream.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// Input number `index` of the stream `seed`: 16 to `max_len` random bytes.
pub fn random_input(seed: u64, index: u64, max_len: usize) -> Vec<u8> {
    let mut rng = SplitMix::new(seed ^ index.wrapping_mul(0xa076_1d64_78bd_642f));
    let len = 16 + rng.below(max_len.saturating_sub(16) as u64 + 1) as usize;
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// The scenario and run seed a `lifecycle` fuzz input describes: the first
/// 8 bytes are the seed, the rest drive the generator with
/// [`Features::ALL`], at `scale` ([`lifecycle_scenario_with`] with it). A
/// [`Scale::Farm`] scenario comes [`judge::sanitize`]d, so the judge runs
/// it once: the rerun it would do for a `VerifyImage` of an
/// image a failed TAKE never made is the run of the sanitized scenario,
/// which the oracle judges as strictly (every image read, byte by byte).
/// `None` only if `arbitrary` gives up, which the generator never makes it
/// do.
pub fn lifecycle_scenario(data: &[u8], scale: Scale) -> Option<(Scenario, u64)> {
    lifecycle_scenario_with(data, Features::ALL, scale)
}

/// [`lifecycle_scenario`] with other generator `features` (the
/// `lifecycle_everything` target's: [`Features::EVERYTHING`]).
pub fn lifecycle_scenario_with(
    data: &[u8],
    features: Features,
    scale: Scale,
) -> Option<(Scenario, u64)> {
    let mut u = Unstructured::new(data);
    let seed: u64 = u.arbitrary().ok()?;
    let scenario = Generator::new(&mut u, features)
        .at_scale(scale)
        .scenario()
        .ok()?;
    match scale {
        Scale::Full => Some((scenario, seed)),
        Scale::Farm => Some((sanitize_owned(scenario), seed)),
    }
}

/// [`judge::judge`], for runs that mostly pass (the fuzz target, the
/// bench's fuzz figure): the first run builds only its verdict
/// (`RunOptions::verdict_only`: no digest, metrics, trace, log, sleep
/// sites or series, which a passing run's caller discards). If every
/// failure is one the judge forgives, `judge` would return `None` from
/// that same first run (a run does not depend on what its outcome keeps);
/// otherwise this is `judge` itself, which runs the scenario again and
/// returns the same failing run in full, for its report.
pub fn judge_fast(scenario: &Scenario, seed: u64) -> Option<(Scenario, Outcome)> {
    let options = RunOptions {
        seed: Some(seed),
        verdict_only: true,
        ..RunOptions::default()
    };
    let first = scenario::run(scenario, &options);
    let blamed = |f: &crate::kernel::Failure| judge::blames_engine(f, scenario);
    if !first.failures.iter().any(blamed) {
        return None;
    }
    judge::judge(scenario, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::model::Step;

    fn has_verify_image(steps: &[Step]) -> bool {
        steps.iter().any(|step| match step {
            Step::Concurrent(branches) => branches.iter().any(|b| has_verify_image(b)),
            other => matches!(other, Step::VerifyImage { .. }),
        })
    }

    /// What a failure report shows of a judged run.
    fn shown(judged: Option<(Scenario, Outcome)>) -> Option<(String, Vec<String>, String)> {
        judged.map(|(scenario, outcome)| {
            let failures = outcome
                .failures
                .iter()
                .map(|f| format!("[{}] {:?} {}", f.checker, f.category, f.message))
                .collect();
            (format!("{scenario:?}"), failures, outcome.digest)
        })
    }

    /// `judge_fast` gives `judge`'s verdict and failing run, with quirks
    /// on that fail many inputs (so both of its ways are taken), and a
    /// verdict-only run the same failures and verdict as a whole one.
    #[test]
    fn judge_fast_is_judge() {
        let mut failing = 0;
        for (index, quirk) in (0..120).zip(["B-SNAP-1", "B-DA-1", "B-TRK-2"].iter().cycle()) {
            let data = random_input(21, index, 512);
            let (mut scenario, seed) = lifecycle_scenario(&data, Scale::Farm).expect("a scenario");
            scenario.quirks = vec![quirk.to_string()];
            let full = judge::judge(&scenario, seed);
            failing += usize::from(full.is_some());
            assert_eq!(
                shown(judge_fast(&scenario, seed)),
                shown(full),
                "input {index}"
            );
            let options = |verdict_only| RunOptions {
                seed: Some(seed),
                verdict_only,
                ..RunOptions::default()
            };
            let whole = scenario::run(&scenario, &options(false));
            let lean = scenario::run(&scenario, &options(true));
            assert_eq!(
                format!("{:?}", lean.failures),
                format!("{:?}", whole.failures)
            );
            assert_eq!(lean.passed, whole.passed, "input {index}");
            assert_eq!(
                (lean.steps, lean.virtual_ns),
                (whole.steps, whole.virtual_ns)
            );
            assert!(lean.digest.is_empty() && lean.metrics.is_empty());
        }
        assert!(
            failing > 10,
            "only {failing} of 120 inputs failed: test the quirks"
        );
    }

    /// A farm scenario comes sanitized: no `VerifyImage` is left (a missing
    /// image, the judge's reason to run again, cannot happen), and
    /// sanitizing it again changes nothing, so a rerun would repeat the
    /// same run. Full scenarios keep theirs (the swarm's digests).
    #[test]
    fn farm_scenarios_need_no_rerun() {
        let mut full_verifies = 0;
        for index in 0..300 {
            let data = random_input(12, index, 512);
            let (farm, _) = lifecycle_scenario(&data, Scale::Farm).expect("a scenario");
            assert!(!has_verify_image(&farm.steps), "input {index}");
            let again = judge::sanitize(&farm);
            assert_eq!(format!("{again:?}"), format!("{farm:?}"), "input {index}");
            let (full, _) = lifecycle_scenario(&data, Scale::Full).expect("a scenario");
            full_verifies += usize::from(has_verify_image(&full.steps));
            // The same with power cuts and tails (`lifecycle_everything`).
            let everything = Features::EVERYTHING;
            let (farm, _) =
                lifecycle_scenario_with(&data, everything, Scale::Farm).expect("a scenario");
            assert!(!has_verify_image(&farm.steps), "input {index}");
            let again = judge::sanitize(&farm);
            assert_eq!(format!("{again:?}"), format!("{farm:?}"), "input {index}");
        }
        assert!(full_verifies > 0, "no full scenario verified an image");
    }
}
