//! Load a scenario file of the suite and run it at a seed: the loop the
//! tests that judge real scenario files share (determinism.rs,
//! sleep_points.rs, data_faults.rs, fs_consistency.rs). Each test keeps its
//! own assertions; this only loads, runs and hands the outcome over.
//!
//! Included with `#[path]` by each of those tests, which use different
//! parts of it, hence the allowance below.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use blksnap_sim::scenario::{load, run, Outcome, RunOptions, Scenario};

/// The workspace root (the scenario paths are relative to it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Load a scenario file; a load error fails the test with its
/// `FILE:LINE:COL` message.
pub fn load_file(path: &Path) -> Scenario {
    load(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Run a loaded scenario at `seed` (None: the file's own seed).
pub fn run_at(scenario: &Scenario, seed: Option<u64>) -> Outcome {
    let options = RunOptions {
        seed,
        ..RunOptions::default()
    };
    run(scenario, &options)
}

/// Load `path` once and run it at each seed, handing each outcome to
/// `check` (which holds the test's assertions).
pub fn each_seed(
    path: &Path,
    seeds: impl IntoIterator<Item = u64>,
    mut check: impl FnMut(u64, Outcome),
) {
    let scenario = load_file(path);
    for seed in seeds {
        check(seed, run_at(&scenario, Some(seed)));
    }
}
