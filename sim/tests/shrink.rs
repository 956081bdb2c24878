//! Shrinking keeps the failure and makes the scenario smaller.

use std::path::Path;

use blksnap_sim::scenario::{load, parse, run, RunOptions};

#[test]
fn shrinking_a_bug_scenario_keeps_its_failure() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/bugs/snap-1.ron");
    let scenario = load(&path).expect("loads");
    let shrunk = blksnap_sim::shrink::shrink(&scenario, 1, "expect", 200).expect("shrinks");
    assert!(
        shrunk.steps_after < shrunk.steps_before,
        "{} -> {}",
        shrunk.steps_before,
        shrunk.steps_after
    );
    let again = parse(Path::new("min.ron"), &shrunk.text).expect("the result loads");
    let outcome = run(&again, &RunOptions::default());
    assert!(
        outcome.failures.iter().any(|f| f.checker == "expect"),
        "{:?}",
        outcome.failures
    );
}

#[test]
fn a_passing_scenario_is_not_shrunk() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/basic/errno-paths.ron");
    let scenario = load(&path).expect("loads");
    assert!(blksnap_sim::shrink::shrink(&scenario, 1, "expect", 10).is_err());
}
