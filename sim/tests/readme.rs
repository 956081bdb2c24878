//! The examples in scenarios/README.md are real: every step example parses.

use std::path::Path;

use blksnap_sim::scenario::model::Step;

fn ron_blocks() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/README.md");
    let text = std::fs::read_to_string(path).expect("README readable");
    text.split("```ron\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_file_example_parses() {
    let blocks = ron_blocks();
    let file = blocks[0].replace("steps: [ ... ],", "steps: [],");
    blksnap_sim::scenario::parse(Path::new("README.md"), &file).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_step_example_parses() {
    let blocks = ron_blocks();
    let steps = &blocks[1];
    let scenario = format!(
        "Scenario(name: \"readme\", devices: [(name: \"d\", sectors: 8388608), (name: \"e\", sectors: 65536), \
         (name: \"fsdev\", sectors: 65536, fs: true), (name: \"store\", sectors: 4194304)], steps: [\n{steps}\n])"
    );
    let parsed = blksnap_sim::scenario::parse(Path::new("README.md"), &scenario)
        .unwrap_or_else(|e| panic!("{e}"));
    // One example for every kind of step (36 kinds today).
    let mut kinds = std::collections::BTreeSet::new();
    collect_kinds(&parsed.steps, &mut kinds);
    assert_eq!(kinds.len(), 36, "step kinds shown: {kinds:?}");
}

fn collect_kinds(steps: &[Step], kinds: &mut std::collections::BTreeSet<&'static str>) {
    for step in steps {
        kinds.insert(step.kind());
        match step {
            Step::Concurrent(branches) => branches.iter().for_each(|b| collect_kinds(b, kinds)),
            Step::Repeat { steps, .. } | Step::Timed { steps, .. } => collect_kinds(steps, kinds),
            _ => {}
        }
    }
}
