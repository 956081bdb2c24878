//! Many concurrent branches: each runs, and the bound is enforced at load.
//! (The cost per branch is measured with the CLI, not timed here.)

use std::path::Path;

use blksnap_sim::scenario::{self, RunOptions};

fn branches(n: usize) -> String {
    let list = vec!["[Version()]"; n].join(",\n");
    format!(
        "Scenario(name: \"branches\", devices: [(name: \"d\", sectors: 65536)],\n\
         steps: [Concurrent([\n{list}\n])])\n"
    )
}

#[test]
fn ten_thousand_branches_all_run() {
    let path = Path::new("branches.ron");
    let scenario = scenario::parse(path, &branches(10_000)).expect("loads");
    let outcome = scenario::run(&scenario, &RunOptions::default());
    assert!(outcome.passed(), "{:?}", outcome.failures);
    // The Concurrent step itself and one Version per branch.
    assert_eq!(outcome.steps, 10_001);
}

#[test]
fn too_many_branches_are_refused_at_the_first_one_over() {
    let path = Path::new("branches.ron");
    let err = scenario::parse(path, &branches(100_001))
        .expect_err("over the bound")
        .to_string();
    // Line 1 and 2 are the header: branch 100000 (from 0) is on line 100003.
    assert_eq!(
        err,
        "branches.ron:100003:1: a Concurrent has at most 100000 branches"
    );
    assert!(scenario::parse(path, &branches(100_000)).is_ok());
}
