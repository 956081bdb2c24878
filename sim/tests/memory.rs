//! No memory survives a run: once `run` returns, the `Sim` it made is
//! freed, whatever the run left behind (a hang with tasks asleep, an oops
//! that killed a task with its locks held, snapshots never destroyed,
//! snapshots a v2 bug made unreachable). The count is per thread
//! (`kernel::live_sims`), so tests running in parallel do not disturb it.

use std::path::{Path, PathBuf};

use blksnap_sim::kernel::{live_sims, Sim};
use blksnap_sim::scenario::{load, run, RunOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.ron` file under `dir`, sorted.
fn scenario_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "ron") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Run `path` and return how many `Sim`s are still allocated after it.
fn sims_left_by(path: &Path, options: &RunOptions) -> u64 {
    let before = live_sims();
    let scenario = load(path).expect("committed scenarios load");
    let outcome = run(&scenario, options);
    drop(outcome);
    live_sims() - before
}

/// The counter counts: a `Sim` in hand is one, a dropped one is none.
/// (Without this, a counter nobody increments would pass every test.)
#[test]
fn the_counter_sees_a_live_sim() {
    let before = live_sims();
    let sim = Sim::new(1);
    assert_eq!(live_sims(), before + 1);
    sim.power_off();
    drop(sim);
    assert_eq!(live_sims(), before);
}

#[test]
fn every_scenario_frees_its_sim() {
    let files = scenario_files(&root().join("scenarios"));
    assert!(files.len() >= 80, "only {} scenarios found", files.len());
    let mut leaks = Vec::new();
    for path in &files {
        let left = sims_left_by(path, &RunOptions::default());
        if left > 0 {
            leaks.push(format!("{} left {left} Sim(s)", path.display()));
        }
    }
    assert!(
        leaks.is_empty(),
        "{} of {} scenarios leak: {leaks:#?}",
        leaks.len(),
        files.len()
    );
}

/// The bug scenarios again with the fixed engine (no quirk): other paths,
/// other objects left at the end.
#[test]
fn every_bug_scenario_frees_its_sim_without_quirks() {
    let files = scenario_files(&root().join("scenarios/bugs"));
    assert!(files.len() >= 20, "only {} bug scenarios", files.len());
    let options = RunOptions {
        without_quirks: true,
        ..RunOptions::default()
    };
    let leaks: Vec<String> = files
        .iter()
        .filter(|path| sims_left_by(path, &options) > 0)
        .map(|path| path.display().to_string())
        .collect();
    assert!(leaks.is_empty(), "leak without quirks: {leaks:#?}");
}
