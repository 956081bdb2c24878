//! Generated scenarios as files: the generators may name a snapshot no
//! step creates (the runner then passes a zero id, which the engine must
//! refuse), but a scenario file may not: the loader rejects it, and so
//! would every candidate the shrinker tries. Such names are declared by a
//! Create inside a `Repeat(times: 0)` after the last step: it never runs,
//! so the run fails the same way, but its step record is in the trace, so
//! the digest differs from the generated scenario's.

use crate::scenario::model::{Scenario, Step};

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

/// Shrink a generated scenario that fails with `checker` at `seed`:
/// declared first (see the module comment), so that it and the shrinker's
/// candidates load. Declarations the smaller scenario no longer needs are
/// dropped by the shrinker like any other step.
pub fn shrink(
    scenario: &Scenario,
    seed: u64,
    checker: &str,
    budget: u32,
) -> Result<crate::shrink::Shrunk, String> {
    let (file, _) = loadable(scenario)?;
    crate::shrink::shrink(&file, seed, checker, budget)
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

        let shrunk = shrink(&scenario, seed, "point_in_time", 200).expect("shrinks");
        assert!(
            shrunk.steps_after < shrunk.steps_before,
            "{} -> {}",
            shrunk.steps_before,
            shrunk.steps_after
        );
        // What it wrote loads as a file and still fails the same way.
        let again = crate::scenario::parse(Path::new("shrunk.ron"), &shrunk.text).expect("loads");
        let outcome = crate::scenario::run(
            &again,
            &crate::scenario::RunOptions {
                seed: Some(seed),
                ..Default::default()
            },
        );
        assert!(
            outcome
                .failures
                .iter()
                .any(|f| f.checker == "point_in_time"),
            "{:?}",
            outcome.failures
        );
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
