//! The examples of scenarios/README.md, shared by the tests that hold the
//! README to the format (readme.rs, strict_format.rs).

use std::path::Path;

/// The ```ron blocks of scenarios/README.md, in order: the file example
/// first, then the step examples.
pub fn readme_blocks() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/README.md");
    let text = std::fs::read_to_string(path).expect("README readable");
    text.split("```ron\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default().to_string())
        .collect()
}

/// The file example, with its steps left empty.
pub fn file_example() -> String {
    readme_blocks()[0].replace("steps: [ ... ],", "steps: [],")
}

/// The devices every step example names.
const DEVICES: &str = "devices: [(name: \"d\", sectors: 8388608), (name: \"e\", sectors: 65536), \
     (name: \"fsdev\", sectors: 65536, fs: true), (name: \"store\", sectors: 4194304)]";

/// The step examples in a scenario; the steps start on line 2.
pub fn steps_example() -> String {
    let steps = &readme_blocks()[1];
    format!("Scenario(name: \"readme\", {DEVICES}, steps: [\n{steps}\n])")
}
