//! Generated scenarios as files: the generators may name a snapshot no
//! step creates (the runner then passes a zero id, which the engine must
//! refuse), but a scenario file may not: the loader rejects it, and so
//! would every candidate the shrinker tries. Such names are declared by a
//! Create inside a `Repeat(times: 0)` after the last step: it never runs,
//! so the run fails the same way, but its step record is in the trace, so
//! the digest differs from the generated scenario's.

use crate::scenario::model::{Scenario, Step};

use super::campaign::mask_numbers;
use super::judge::{blames_engine, judge};
use super::steps;

/// Most snapshot names a scenario may use without creating them (the
/// generators use "a" and "b"; a few more leave room for hand edits).
const MAX_DECLARED: usize = 8;

/// The scenario with every snapshot it uses declared, and the names it
/// had to declare (none when it loaded as it was).
pub fn loadable(scenario: &Scenario) -> Result<(Scenario, Vec<String>), String> {
    let mut file = scenario.clone();
    let mut declared = Vec::new();
    loop {
        let error = match crate::shrink::to_text(&file) {
            Ok(_) => return Ok((file, declared)),
            Err(error) => error,
        };
        let name = never_created(&error)
            .filter(|_| declared.len() < MAX_DECLARED)
            .ok_or_else(|| format!("the scenario cannot be written as a file: {error}"))?;
        file.steps.push(Step::Repeat {
            times: 0,
            steps: vec![steps::create(name.clone(), Vec::new())],
        });
        declared.push(name);
    }
}

/// The name in the loader's "snapshot 'NAME' is never created" error.
fn never_created(error: &str) -> Option<String> {
    let (_, rest) = error.split_once("snapshot '")?;
    let (name, rest) = rest.split_once('\'')?;
    rest.starts_with(" is never created")
        .then(|| name.to_string())
}

/// Shrink a generated scenario that fails at `seed` as its group does (the
/// judge still blames the engine for a `checker` failure whose first line,
/// numbers masked, is `message`): declared first (see the module comment),
/// so that it and the shrinker's candidates load. Declarations the smaller
/// scenario no longer needs are dropped by the shrinker like any other
/// step.
///
/// Any failure of the checker would not do: swarm seed 45017 (an
/// `expect` failure) shrank to a CREATE and a `VerifyImage` of an image
/// never taken, an `expect` failure of another kind that the judge
/// forgives, so the file replayed something else than its group's bug.
pub fn shrink(
    scenario: &Scenario,
    seed: u64,
    checker: &str,
    message: &str,
    budget: u32,
) -> Result<crate::shrink::Shrunk, String> {
    let (file, _) = loadable(scenario)?;
    crate::shrink::shrink_while(&file, budget, &|candidate| {
        fails_as(candidate, seed, checker, message)
    })
    .ok_or_else(|| {
        format!(
            "the scenario does not fail at seed {seed} as its group does: [{checker}] {message}"
        )
    })?
}

/// Whether the judge blames the engine for a `checker` failure of
/// `scenario` at `seed` whose masked first line is `message`.
pub fn fails_as(scenario: &Scenario, seed: u64, checker: &str, message: &str) -> bool {
    let Some((run, outcome)) = judge(scenario, seed) else {
        return false;
    };
    outcome.failures.iter().any(|f| {
        blames_engine(f, &run) && f.checker == checker && mask_numbers(&f.message) == message
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// B-IMG-1 on, a snapshot taken and its image read wrongly, plus two
    /// TAKEs of "ghost", which no step creates (as a generator may write):
    /// dropping one step leaves the other, so no candidate of the plain
    /// shrinker loads.
    fn img1_with_ghost() -> Scenario {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/bugs/img-1.ron");
        let mut scenario = crate::scenario::load(&root).expect("img-1 loads");
        scenario.expect_failure = None;
        scenario.steps.insert(0, steps::take("ghost".into()));
        scenario.steps.push(steps::take("ghost".into()));
        scenario
    }

    #[test]
    fn a_scenario_naming_an_uncreated_snapshot_shrinks() {
        let scenario = img1_with_ghost();
        let seed = scenario.seed;
        // The control: the plain shrinker cannot write it, nor any candidate.
        let plain = crate::shrink::shrink(&scenario, seed, "point_in_time", 50);
        let error = plain.err().expect("the plain shrinker refuses it");
        assert!(error.contains("'ghost' is never created"), "{error}");

        let (file, declared) = loadable(&scenario).expect("declarable");
        assert_eq!(declared, ["ghost"]);
        assert_eq!(file.steps.len(), scenario.steps.len() + 1);

        let key = "image N:N of N:N sector N: read N, expected one of {N} (content at TAKE plus \
                   the image's own writes)";
        assert!(fails_as(&scenario, seed, "point_in_time", key));
        let shrunk = shrink(&scenario, seed, "point_in_time", key, 200).expect("shrinks");
        assert!(
            shrunk.steps_after < shrunk.steps_before,
            "{} -> {}",
            shrunk.steps_before,
            shrunk.steps_after
        );
        // What it wrote loads as a file and still fails the same way.
        let again = crate::scenario::parse(Path::new("shrunk.ron"), &shrunk.text).expect("loads");
        assert!(fails_as(&again, seed, "point_in_time", key));
        // Another message of the same checker is another bug.
        assert!(!fails_as(
            &again,
            seed,
            "point_in_time",
            "image N:N of N:N failed a read"
        ));
    }

    /// What swarm seed 45017 shrank to while any `expect` failure would
    /// do: a VerifyImage of an image never taken. The run fails with
    /// `expect`, but the judge forgives it (the scenario's doing), so it is
    /// no longer the group's bug and the shrinker must not keep it.
    #[test]
    fn a_failure_the_judge_forgives_is_not_the_groups_bug() {
        let scenario = crate::scenario::parse(
            Path::new("45017.ron"),
            r#"Scenario(name: "s", devices: [(name: "d1", sectors: 4096)], steps: [
                Create(snapshot: "a", devices: ["d1"]),
                VerifyImage(snapshot: "a", device: "d1"),
            ])"#,
        )
        .expect("loads");
        let seed = 45017;
        let outcome = crate::scenario::run(
            &scenario,
            &crate::scenario::RunOptions {
                seed: Some(seed),
                ..Default::default()
            },
        );
        let first = outcome.failures.first().expect("the plain run fails");
        assert_eq!(first.checker, "expect");
        assert!(
            first.message.contains("no image of d1"),
            "{}",
            first.message
        );
        let collect = "step N (Take): COLLECT_IMAGES after a successful TAKE: expected success, \
                       got ENOMEM (N attempts, each failed by the sim)";
        assert!(!fails_as(&scenario, seed, "expect", collect));
        assert!(!fails_as(
            &scenario,
            seed,
            "expect",
            &mask_numbers(&first.message)
        ));
    }

    #[test]
    fn a_loadable_scenario_is_left_as_it_is() {
        let mut scenario = img1_with_ghost();
        scenario.steps.remove(0);
        scenario.steps.pop();
        let (file, declared) = loadable(&scenario).expect("loads");
        assert!(declared.is_empty());
        assert_eq!(file.steps.len(), scenario.steps.len());
    }
}
