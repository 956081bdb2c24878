//! The bug scenarios as a set: every quirk has one. Each bug file itself
//! (caught with its quirk, clean without, at seeds 0..199) is a test of
//! its own in `scenario_files.rs`, one per file, so that shards of
//! `cargo nextest run --partition` spread them.

use std::collections::BTreeSet;
use std::path::Path;

use blksnap_sim::scenario::{load, run, RunOptions};

/// Every quirk but B-IMG-3 (tested below) is switched on by a file in
/// `scenarios/bugs/` that expects its checker to catch it; and there are
/// as many bug files as the checks below count (none judged is a failure).
#[test]
fn every_quirk_has_a_bug_scenario() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/bugs");
    let files = blksnap_sim::cli::collect_files(&[dir]).expect("scenarios/bugs");
    let mut covered = BTreeSet::new();
    for file in &files {
        let s = load(file).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            s.expect_failure.is_some(),
            "{}: a bug scenario names its checker",
            file.display()
        );
        covered.extend(s.quirks);
    }
    assert!(files.len() >= 40, "only {} bug files", files.len());
    for (id, _) in blksnap_core::Quirks::ALL {
        if *id != "B-IMG-3" {
            assert!(covered.contains(*id), "no bug scenario switches on {id}");
        }
    }
}

/// B-IMG-3 is inefficiency, not a wrong result: the idle image worker
/// wakes every 10 ms. Its symptom is work: an idle snapshot costs about
/// 100 wake-ups a second with the quirk and none without.
#[test]
fn b_img_3_idle_worker_polls() {
    let text = r#"Scenario(
        name: "idle",
        quirks: ["B-IMG-3"],
        devices: [(name: "a", sectors: 65536), (name: "store", sectors: 65536)],
        steps: [
            Create(snapshot: "s", devices: ["a"]),
            Append(snapshot: "s", device: "store", ranges: [(0, 65536)]),
            Take(snapshot: "s"),
            Sleep(ms: 2000),
            Destroy(snapshot: "s"),
        ],
    )"#;
    let s = blksnap_sim::scenario::parse(Path::new("idle.ron"), text).expect("parses");
    let v2 = run(&s, &RunOptions::default());
    let fixed = run(
        &s,
        &RunOptions {
            without_quirks: true,
            ..RunOptions::default()
        },
    );
    assert!(v2.passed() && fixed.passed());
    let polls = |o: &blksnap_sim::scenario::Outcome| o.metrics["polls"];
    assert!(
        polls(&v2) >= polls(&fixed) + 150.0,
        "{} vs {}",
        polls(&v2),
        polls(&fixed)
    );
}
