//! The storage checker and the fault windows are not silent: the scenarios
//! that exercise them pass, judge storage writes, and (for the regions
//! stored twice) compare a live copy with new data; the fault scenarios
//! inject the errors they are about.

use std::path::Path;

use blksnap_sim::scenario::{load, run, RunOptions};

fn metric(file: &str, name: &str) -> f64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(file);
    let scenario = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let outcome = run(&scenario, &RunOptions::default());
    assert!(outcome.passed(), "{file}: {:?}", outcome.failures);
    outcome.metrics.get(name).copied().unwrap_or(0.0)
}

#[test]
fn odd_ranges_judge_writes_and_rewritten_copies() {
    let file = "coverage/storage-odd-ranges.ron";
    assert!(metric(file, "storage_writes_judged") > 50.0);
    assert!(metric(file, "storage_sectors_judged") > 0.0);
}

#[test]
fn small_caches_rewrite_regions_under_the_checker() {
    let file = "coverage/cache-small-concurrent.ron";
    assert!(metric(file, "storage_sectors_judged") > 0.0);
}

#[test]
fn fault_scenarios_store_before_the_fault() {
    for file in [
        "faults/cow-write-errors.ron",
        "faults/eviction-write-errors.ron",
        "faults/load-read-errors.ron",
    ] {
        assert!(metric(file, "storage_writes_judged") > 0.0, "{file}");
    }
}
