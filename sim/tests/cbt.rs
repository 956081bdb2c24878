//! The CBT checker and the backup workflow are not vacuous: each backup and
//! CBT coverage scenario passes, its cbt checker judged blocks and left no
//! map unjudged.

use std::path::Path;

use blksnap_sim::scenario::{run_file, RunOptions};

fn judged(file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(file);
    let outcome = run_file(&path, &RunOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.passed(), "{file}: {:?}", outcome.failures);
    let metric = |name: &str| outcome.metrics.get(name).copied().unwrap_or(-1.0);
    assert!(
        metric("cbt_blocks_judged") > 0.0,
        "{file}: no CBT block judged"
    );
    assert!(metric("cbt_maps_judged") > 0.0, "{file}: no CBT map judged");
    assert_eq!(
        metric("cbt_maps_unjudged"),
        0.0,
        "{file}: maps left unjudged"
    );
}

#[test]
fn backup_chain_is_judged() {
    judged("backup/full-and-incrementals.ron");
}

#[test]
fn backup_through_the_wrap_is_judged() {
    judged("backup/wrap-255.ron");
}

#[test]
fn backup_across_a_resize_is_judged() {
    judged("backup/generation-resize.ron");
}

#[test]
fn backup_across_a_tracker_remove_is_judged() {
    judged("backup/generation-tracker-remove.ron");
}

#[test]
fn straddling_writes_are_judged() {
    judged("coverage/cbt-straddle.ron");
}
