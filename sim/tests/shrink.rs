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

/// The processes a PowerLoss runs while the power goes are shrunk like a
/// Concurrent group's branches: the failing step stays, alone.
#[test]
fn a_power_cut_s_branches_are_shrunk() {
    let text = r#"Scenario(
        name: "shrink-power-loss",
        devices: [(name: "a", sectors: 8192, write_cache: true)],
        steps: [
            Write(target: Original("a"), sector: 0, sectors: 8),
            PowerLoss(
                during: [
                    [
                        Write(target: Original("a"), sector: 8, sectors: 8),
                        Write(target: Original("a"), sector: 16, sectors: 8),
                        Collect(expect_snapshots: ["nope"]),
                    ],
                    [Write(target: Original("a"), sector: 64, sectors: 8, repeat: 8, stride: 8)],
                ],
                after_us: 1000,
            ),
        ],
    )"#;
    let scenario = parse(Path::new("power.ron"), text).expect("loads");
    let shrunk = blksnap_sim::shrink::shrink(&scenario, 1, "expect", 200).expect("shrinks");
    let during = shrunk
        .scenario
        .steps
        .iter()
        .find_map(|step| match step {
            blksnap_sim::scenario::model::Step::PowerLoss { during, .. } => Some(during.clone()),
            _ => None,
        })
        .expect("the cut stays");
    assert_eq!(during.len(), 1, "{during:?}");
    assert_eq!(during[0].len(), 1, "{during:?}");
    assert!(
        matches!(
            during[0][0],
            blksnap_sim::scenario::model::Step::Collect { .. }
        ),
        "{during:?}"
    );
}
