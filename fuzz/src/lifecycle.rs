//! The `lifecycle` target: a whole scenario built from the fuzz input.
//!
//! The input picks 1-3 small original devices, one storage device, module
//! parameters, a scheduler, and up to [`MAX_STEPS`] steps (ioctls, IO on
//! originals and images, workloads, two-branch concurrent groups, waits).
//! Every step expects `Any`: the scenario only drives the system, and the
//! verdict belongs to the simulator's own checkers (oops, WARN, lockdep,
//! the point-in-time oracle, resources after unload, liveness). No quirk is
//! switched on, so the fixed engine must pass every input.
//!
//! The generator and the judge live in the simulator
//! ([`blksnap_sim::swarm`]), shared with `blksnap-sim swarm`; the fuzz
//! target reads its input with [`Features::ALL`] (every kind of step, but
//! no power cuts or storage tails, which read more input), so the
//! committed corpus keeps its meaning.
//! [`lifecycle_everything`](mod@crate::lifecycle_everything) is this
//! target with those two on.
//!
//! The target runs at [`Scale::Farm`]: small devices, and the scenario
//! ends once its user IO passes `FARM_IO_SECTORS` (or before a step that
//! alone would add more than twice that, or twice the largest original),
//! already sanitized, so
//! one input is one short run (a fuzz farm's executions per second). It is
//! the start of the [`Scale::Full`] scenario of the same bytes (what
//! `blksnap-sim swarm` runs; `replay random lifecycle --scale full` too).

use blksnap_sim::scenario::Scenario;

pub use blksnap_sim::swarm::gen::{Features, Scale, FARM_IO_SECTORS, MAX_STEPS};
pub use blksnap_sim::swarm::inputs::judge_fast;
pub use blksnap_sim::swarm::judge::{failures_text, judge, report, sanitize};

/// The body of the `lifecycle` fuzz target: panics with a readable report
/// if the simulator's checkers fail on the scenario the input describes.
pub fn lifecycle(data: &[u8]) {
    if let Err(report) = check(data) {
        panic!("{report}");
    }
}

/// The body the cargo-fuzz wrapper runs: [`lifecycle`], with the quirks
/// that `FUZZ_QUIRKS` names (comma-separated, read once) switched on.
/// Unset, as every documented command and ClusterFuzzLite run it, it is
/// [`lifecycle`]; set, a crash is a find, which measures how fast a build
/// and its libFuzzer options find a known bug, with the same binary.
pub fn lifecycle_env(data: &[u8]) {
    env_with(data, Features::ALL);
}

/// [`lifecycle_env`] with other generator `features` (the body of
/// `lifecycle_everything`'s wrapper).
pub fn env_with(data: &[u8], features: Features) {
    static QUIRKS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let quirks = QUIRKS.get_or_init(|| env_quirks(std::env::var("FUZZ_QUIRKS").ok()));
    if let Err(report) = check_with(data, features, Scale::Farm, quirks) {
        panic!("{report}");
    }
}

/// The generator features a lifecycle-like target reads its input with,
/// by target name: `lifecycle`'s and `lifecycle_everything`'s.
pub fn features_of(target: &str) -> Option<Features> {
    match target {
        "lifecycle" => Some(Features::ALL),
        "lifecycle_everything" => Some(Features::EVERYTHING),
        _ => None,
    }
}

/// The quirk names of a `FUZZ_QUIRKS` value.
fn env_quirks(value: Option<String>) -> Vec<String> {
    value
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// Build and run the scenario of `data`; `Err` carries the failure report.
pub fn check(data: &[u8]) -> std::result::Result<(), String> {
    check_at(data, Scale::Farm, &[])
}

/// [`check`] at another scale, with `quirks` switched on (to measure what
/// a scale finds: with a quirk on, a failure is a find).
pub fn check_at(data: &[u8], scale: Scale, quirks: &[String]) -> std::result::Result<(), String> {
    check_with(data, Features::ALL, scale, quirks)
}

/// [`check_at`] with other generator `features`.
pub fn check_with(
    data: &[u8],
    features: Features,
    scale: Scale,
    quirks: &[String],
) -> std::result::Result<(), String> {
    let Some((mut scenario, seed)) = build_with(data, features, scale) else {
        return Ok(());
    };
    scenario.quirks = quirks.to_vec();
    verdict(&scenario, seed)
}

/// The scenario and seed an input describes, as the target runs it (`None`
/// only if `arbitrary` gives up, which a well-formed generator never makes
/// it do).
pub fn build(data: &[u8]) -> Option<(Scenario, u64)> {
    build_at(data, Scale::Farm)
}

/// [`build`] at another scale.
pub fn build_at(data: &[u8], scale: Scale) -> Option<(Scenario, u64)> {
    build_with(data, Features::ALL, scale)
}

/// [`build_at`] with other generator `features`.
pub fn build_with(data: &[u8], features: Features, scale: Scale) -> Option<(Scenario, u64)> {
    blksnap_sim::swarm::inputs::lifecycle_scenario_with(data, features, scale)
}

/// Run, and judge the outcome as described in the module comment. A
/// passing run builds only its verdict; a failing one runs again in full
/// for its report ([`judge_fast`]).
fn verdict(scenario: &Scenario, seed: u64) -> std::result::Result<(), String> {
    match judge_fast(scenario, seed) {
        None => Ok(()),
        Some((scenario, outcome)) => Err(report(&scenario, &outcome)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs;
    use blksnap_sim::scenario::model::Step;
    use blksnap_sim::scenario::{self, RunOptions};
    use blksnap_sim::swarm::judge::image_io_snapshot;

    /// `FUZZ_QUIRKS` names quirks by comma; unset or empty names none.
    #[test]
    fn env_quirks_split_on_commas() {
        assert!(env_quirks(None).is_empty());
        assert!(env_quirks(Some(" ".into())).is_empty());
        let both = env_quirks(Some("B-EVT-1, B-CBT-1,".into()));
        assert_eq!(both, ["B-EVT-1", "B-CBT-1"]);
    }

    /// Every generated parameter set is one the fixed module accepts (the
    /// loader refuses the others, so a scenario file could not have them).
    #[test]
    fn generated_params_are_valid() {
        for index in 0..500 {
            let data = inputs::random_input(1, index, 64);
            let (scenario, _) = build(&data).expect("a scenario");
            assert_eq!(scenario.params.validate(), Ok(()), "input {index}");
        }
    }

    /// Whatever the input, the scenario stays small.
    #[test]
    fn scenarios_are_bounded() {
        for index in 0..500 {
            let data = inputs::random_input(2, index, 4096);
            let (scenario, _) = build(&data).expect("a scenario");
            assert!(scenario.steps.len() <= MAX_STEPS * 5, "input {index}");
            assert!((2..=4).contains(&scenario.devices.len()), "input {index}");
            assert!(scenario.quirks.is_empty());
        }
    }

    /// Most inputs reach a taken snapshot whose image the oracle checks.
    /// (If the engine or the step model drifts so that TAKE mostly fails,
    /// the fuzzer would silently test much less.)
    #[test]
    fn inputs_reach_checked_image_reads() {
        let mut with_reads = 0;
        for index in 0..100 {
            let data = inputs::random_input(4, index, 400);
            let (scenario, seed) = build(&data).expect("a scenario");
            let options = RunOptions {
                seed: Some(seed),
                ..RunOptions::default()
            };
            let outcome = scenario::run(&scenario, &options);
            if outcome
                .metrics
                .get("image_reads_checked")
                .copied()
                .unwrap_or(0.0)
                > 0.0
            {
                with_reads += 1;
            }
        }
        eprintln!("{with_reads} of 100 inputs read an image");
        assert!(
            with_reads >= 30,
            "only {with_reads} of 100 inputs read an image"
        );
    }

    /// A sanitized scenario has no `VerifyImage` and no image IO after a
    /// DESTROY of its snapshot, and sanitizing it again changes nothing.
    #[test]
    fn sanitize_is_thorough_and_idempotent() {
        fn count(steps: &[Step], wanted: &dyn Fn(&Step) -> bool) -> usize {
            steps
                .iter()
                .map(|step| match step {
                    Step::Concurrent(branches) => {
                        branches.iter().map(|b| count(b, wanted)).sum::<usize>()
                    }
                    other => usize::from(wanted(other)),
                })
                .sum()
        }
        for index in 0..300 {
            let data = inputs::random_input(3, index, 512);
            let (scenario, _) = build(&data).expect("a scenario");
            let once = sanitize(&scenario);
            let twice = sanitize(&once);
            let verify = |s: &Step| matches!(s, Step::VerifyImage { .. });
            assert_eq!(count(&once.steps, &verify), 0, "input {index}");
            let image_io = |s: &Step| image_io_snapshot(s).is_some();
            assert_eq!(
                count(&once.steps, &image_io),
                count(&twice.steps, &image_io),
                "input {index}"
            );
        }
    }
}
