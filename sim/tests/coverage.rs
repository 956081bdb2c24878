//! No empty checks: a verifying step that judged nothing fails the run, an
//! image expected unreadable must really fail and be excused, and the
//! coverage counts of a run show what the checkers judged.

use std::path::Path;

use blksnap_sim::scenario::{parse, run, Outcome, RunOptions};

fn run_text(text: &str) -> Outcome {
    let scenario = parse(Path::new("test.ron"), text).unwrap_or_else(|e| panic!("{e}"));
    run(&scenario, &RunOptions::default())
}

/// A snapshot whose storage overflows: its image is unreadable.
fn overflowed(verify: &str) -> String {
    format!(
        r#"Scenario(
    name: "overflow",
    params: (diff_storage_minimum: 1024),
    devices: [(name: "a", sectors: 65536, fill: Pattern), (name: "store", sectors: 262144)],
    steps: [
        Create(snapshot: "s", devices: ["a"]),
        Append(snapshot: "s", device: "store", ranges: [(0, 1024)]),
        Take(snapshot: "s"),
        Write(target: Original("a"), sector: 0, sectors: 8, repeat: 4, stride: 4096),
        {verify}
        Destroy(snapshot: "s"),
    ],
)"#
    )
}

fn checkers(outcome: &Outcome) -> Vec<&str> {
    outcome
        .failures
        .iter()
        .map(|f| f.checker.as_str())
        .collect()
}

#[test]
fn verify_image_judging_nothing_fails() {
    let outcome = run_text(&overflowed(r#"VerifyImage(snapshot: "s", device: "a"),"#));
    assert_eq!(checkers(&outcome), ["coverage"], "{:?}", outcome.failures);
    assert!(outcome.failures[0].message.contains("judged no sector"));
}

#[test]
fn verify_image_expecting_eio_passes_only_when_excused() {
    let text = overflowed(r#"VerifyImage(snapshot: "s", device: "a", expect: Err("EIO")),"#);
    let outcome = run_text(&text);
    assert!(outcome.passed(), "{:?}", outcome.failures);
    assert!(outcome.metrics["image_errors_excused"] > 0.0);
    assert_eq!(outcome.metrics["image_sectors_checked"], 0.0);
    // The same failures with the corrupted event lost to an injected
    // allocation failure: the recorded fault explains them (the unit tests
    // of point_in_time.rs show the same failures refused without it).
    let lost = text.replace(
        r#"params: (diff_storage_minimum: 1024),"#,
        r#"params: (diff_storage_minimum: 1024), faults: (alloc: [("event", From(1))]),"#,
    );
    let outcome = run_text(&lost);
    assert!(outcome.passed(), "{:?}", outcome.failures);
    assert!(outcome.metrics["faults_injected"] > 0.0);
}

#[test]
fn verify_image_expecting_eio_of_a_readable_image_fails() {
    let text = overflowed(r#"VerifyImage(snapshot: "s", device: "a", expect: Err("EIO")),"#)
        .replace("repeat: 4", "repeat: 1");
    let outcome = run_text(&text);
    assert_eq!(checkers(&outcome), ["expect"], "{:?}", outcome.failures);
    assert!(outcome.failures[0].message.contains("every read succeeded"));
}

#[test]
fn verify_original_and_reads_judging_nothing_fail() {
    let outcome = run_text(
        r#"Scenario(
    name: "empty",
    devices: [(name: "a", sectors: 4096), (name: "store", sectors: 65536)],
    steps: [
        Create(snapshot: "s", devices: ["a"]),
        Append(snapshot: "s", device: "store", ranges: [(0, 4096)]),
        Take(snapshot: "s"),
        VerifyOriginal(device: "a"),
        Read(target: Original("store"), sector: 0, sectors: 8),
        Destroy(snapshot: "s"),
    ],
)"#,
    );
    assert_eq!(
        checkers(&outcome),
        ["coverage", "coverage"],
        "{:?}",
        outcome.failures
    );
}

#[test]
fn coverage_counts_are_in_the_metrics() {
    let outcome = run_text(
        r#"Scenario(
    name: "counts",
    devices: [(name: "a", sectors: 4096, fill: Pattern), (name: "store", sectors: 65536)],
    steps: [
        Create(snapshot: "s", devices: ["a"]),
        Append(snapshot: "s", device: "store", ranges: [(0, 4096)]),
        Take(snapshot: "s"),
        Write(target: Original("a"), sector: 0, sectors: 8),
        VerifyImage(snapshot: "s", device: "a"),
        VerifyOriginal(device: "a"),
        Destroy(snapshot: "s"),
    ],
)"#,
    );
    assert!(outcome.passed(), "{:?}", outcome.failures);
    let m = &outcome.metrics;
    assert_eq!(m["image_sectors_checked"], 4096.0);
    assert_eq!(m["original_sectors_checked"], 8.0);
    assert!(m["ioctls_judged"] >= 4.0, "{m:?}");
    assert_eq!(m["faults_injected"], 0.0);
}
