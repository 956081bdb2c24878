//! A process that runs bug scenarios over and over (a seed sweep, a
//! fuzzer) stays flat: its resident memory after hundreds of runs is what
//! it was after the first few. The scenarios are the ones that end with
//! work alive: a hang (trk-3), an oops (io-1), snapshots a v2 bug made
//! unreachable (snap-1). Before power-off, each such run stayed allocated
//! (a `Sim` with its devices, trace and oracle: ~170 KB for trk-3).
//!
//! Resident memory is per process, so this file holds a single test: no
//! other test of the same binary runs beside it.

use std::path::Path;

use blksnap_sim::kernel::live_sims;
use blksnap_sim::scenario::{load, run, RunOptions, Scenario};

const WARM_UP_ROUNDS: u64 = 20;
const ROUNDS: u64 = 500;
/// What the allocator may keep on top of the warm-up (fragmentation, a
/// longer trace of an unlucky seed): far below one run per round.
const SLACK_BYTES: u64 = 4 << 20;
const PAGE_BYTES: u64 = 4096;

/// Resident set size from `/proc/self/statm` (second field, in pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    pages * PAGE_BYTES
}

fn scenario(path: &str) -> Scenario {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    load(&root.join(path)).expect("scenario loads")
}

/// One round: each scenario under seed `seed`; each must still catch its
/// bug (else the loop would measure runs that end cleanly).
fn round(scenarios: &[Scenario], seed: u64) {
    for scenario in scenarios {
        let options = RunOptions {
            seed: Some(seed),
            ..RunOptions::default()
        };
        let outcome = run(scenario, &options);
        assert!(
            outcome.passed(),
            "{} seed {seed} did not catch its bug: {:?}",
            scenario.name,
            outcome.failures
        );
    }
}

#[test]
fn runs_that_end_with_work_alive_leave_nothing() {
    let scenarios = [
        scenario("scenarios/bugs/trk-3.ron"),
        scenario("scenarios/bugs/io-1.ron"),
        scenario("scenarios/bugs/snap-1.ron"),
    ];
    for seed in 0..WARM_UP_ROUNDS {
        round(&scenarios, seed);
    }
    let warm = resident_bytes();
    for seed in WARM_UP_ROUNDS..WARM_UP_ROUNDS + ROUNDS {
        round(&scenarios, seed);
    }
    let end = resident_bytes();
    let runs = ROUNDS * scenarios.len() as u64;
    let growth = end.saturating_sub(warm);
    eprintln!(
        "resident: {warm} bytes after warm-up, {end} after {runs} more runs ({} bytes/run)",
        growth / runs
    );
    assert!(
        growth <= SLACK_BYTES,
        "resident memory grew by {growth} bytes over {runs} runs ({} bytes/run)",
        growth / runs
    );
    assert_eq!(live_sims(), 0, "Sims still allocated after the runs");
}
