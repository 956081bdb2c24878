//! The examples in scenarios/README.md are real: every step example parses.

use std::path::Path;

use blksnap_sim::scenario::model::Step;

mod common;

#[test]
fn the_file_example_parses() {
    let file = common::file_example();
    blksnap_sim::scenario::parse(Path::new("README.md"), &file).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_step_example_parses() {
    let scenario = common::steps_example();
    let parsed = blksnap_sim::scenario::parse(Path::new("README.md"), &scenario)
        .unwrap_or_else(|e| panic!("{e}"));
    // One example for every kind of step (39 kinds today).
    let mut kinds = std::collections::BTreeSet::new();
    collect_kinds(&parsed.steps, &mut kinds);
    assert_eq!(kinds.len(), 39, "step kinds shown: {kinds:?}");
}

/// The other examples (write cache and power loss, disk faults) are whole
/// scenarios: each parses.
#[test]
fn every_scenario_example_parses() {
    let blocks = common::readme_blocks();
    assert!(blocks.len() >= 4, "{} ron blocks", blocks.len());
    for block in &blocks[2..] {
        blksnap_sim::scenario::parse(Path::new("README.md"), block)
            .unwrap_or_else(|e| panic!("{e}\n{block}"));
    }
}

fn collect_kinds(steps: &[Step], kinds: &mut std::collections::BTreeSet<String>) {
    for step in steps {
        kinds.insert(step.kind().to_string());
        match step {
            Step::Concurrent(branches) => branches.iter().for_each(|b| collect_kinds(b, kinds)),
            Step::Repeat { steps, .. } | Step::Timed { steps, .. } => collect_kinds(steps, kinds),
            _ => {}
        }
    }
}
