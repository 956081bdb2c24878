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

/// Events rule 5 end to end: the sim reads the timeout a WAIT_EVENT asks
/// for from the caller's argument, so an engine that answers ENOENT before
/// it ran out (B-CTRL-2 never reads it) fails `events`, and the fixed one,
/// which waits it out, does not.
#[test]
fn enoent_before_the_timeout_fails_events() {
    let text = r#"Scenario(
        name: "wait",
        quirks: ["B-CTRL-2"],
        devices: [(name: "a", sectors: 65536)],
        steps: [
            Create(snapshot: "s", devices: ["a"]),
            WaitEvent(snapshot: "s", expect: LowFreeSpace(2097152)),
            WaitEvent(snapshot: "s", timeout_ms: 100, expect: None),
            Destroy(snapshot: "s"),
        ],
    )"#;
    let s = blksnap_sim::scenario::parse(Path::new("wait.ron"), text).expect("parses");
    let v2 = run(&s, &RunOptions::default());
    let early = v2
        .failures
        .iter()
        .find(|f| f.checker == "events")
        .unwrap_or_else(|| panic!("no events failure: {:?}", v2.failures));
    assert!(
        early.message.contains("timeout of 100 ms returned ENOENT"),
        "{}",
        early.message
    );
    let fixed = run(
        &s,
        &RunOptions {
            without_quirks: true,
            ..RunOptions::default()
        },
    );
    assert!(fixed.passed(), "{:?}", fixed.failures);
}

fn bug_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/bugs")
        .join(name)
}

/// Run a scenario text at `seed`, with its quirks.
fn run_text(name: &str, text: &str, seed: u64) -> blksnap_sim::scenario::Outcome {
    let s = blksnap_sim::scenario::parse(Path::new(name), text).expect("parses");
    run(
        &s,
        &RunOptions {
            seed: Some(seed),
            ..RunOptions::default()
        },
    )
}

fn checkers(o: &blksnap_sim::scenario::Outcome) -> Vec<&str> {
    o.failures.iter().map(|f| f.checker.as_str()).collect()
}

/// B-CBT-3 as the C has it: the failed reset already stored the new
/// geometry, so TRACKER_COLLECT reports the resized device (1024 blocks of
/// 64 KiB) before the next TAKE oopses; the fix still reports the old one.
#[test]
fn b_cbt_3_collect_reports_the_new_geometry() {
    let text = |quirks: &str, blocks: u32, bytes: u64| {
        format!(
            r#"Scenario(
        name: "cbt-3-geometry",
        quirks: [{quirks}],
        faults: (alloc: [("cbt_map.read_map", Nth(2))]),
        devices: [(name: "a", sectors: 65536), (name: "store", sectors: 262144)],
        steps: [
            Create(snapshot: "s", devices: ["a"]),
            Append(snapshot: "s", device: "store", ranges: [(0, 262144)]),
            Resize(device: "a", sectors: 131072),
            Take(snapshot: "s", expect: Err("ENOMEM")),
            TrackerCollect(expect_count: 1, expect_entries: [
                (device: "a", blk_size: 65536, blk_count: {blocks}, device_capacity: {bytes}),
            ]),
            Destroy(snapshot: "s"),
        ],
    )"#
        )
    };
    for seed in 0..5 {
        let v2 = run_text("v2.ron", &text("\"B-CBT-3\"", 1024, 131072 * 512), seed);
        assert!(v2.passed() && v2.failures.is_empty(), "{:?}", v2.failures);
        let fixed = run_text("fix.ron", &text("", 512, 65536 * 512), seed);
        assert!(
            fixed.passed() && fixed.failures.is_empty(),
            "{:?}",
            fixed.failures
        );
    }
}

/// The NULL diff_area of review finding 3: with B-SNAP-6 alone the port
/// used to let the write through silently (no oops); B-SNAP-11 makes it the
/// oops v2 has. Both at seeds 0..20.
#[test]
fn b_snap_11_is_what_turns_the_silent_pass_into_the_oops() {
    let text = std::fs::read_to_string(bug_file("snap-11.ron")).unwrap();
    let without = text.replace(
        r#"quirks: ["B-SNAP-6", "B-SNAP-11"]"#,
        r#"quirks: ["B-SNAP-6"]"#,
    );
    assert_ne!(text, without);
    for seed in 0..20 {
        let v2 = run_text("snap-11.ron", &text, seed);
        assert!(
            checkers(&v2).contains(&"oops"),
            "seed {seed}: {:?}",
            v2.failures
        );
        let silent = run_text("snap-11-silent.ron", &without, seed);
        assert!(
            !checkers(&silent).contains(&"oops"),
            "seed {seed}: {:?}",
            silent.failures
        );
    }
}

/// B-TRK-10 on the 6.1 freeze model: a user freeze made BEFORE the TAKE is
/// not undone (the TAKE's freeze at depth 1 succeeds, so its thaw only
/// drops the count), even with the quirk and a device whose freeze fails
/// from 0. This is the old trk-10 trigger, which 6.1 cannot turn into a bug.
#[test]
fn b_trk_10_a_user_freeze_before_take_survives_on_6_1() {
    let text = r#"Scenario(
        name: "trk-10-before",
        quirks: ["B-TRK-10"],
        devices: [(name: "a", sectors: 65536, fs: true, freeze_fails: true), (name: "store", sectors: 262144)],
        steps: [
            Create(snapshot: "s", devices: ["a"]),
            Append(snapshot: "s", device: "store", ranges: [(0, 262144)]),
            Freeze(device: "a"),
            Take(snapshot: "s"),
            Thaw(device: "a"),
            Destroy(snapshot: "s"),
        ],
    )"#;
    // The user's Thaw fails ("thaw failed", the expect checker) if the
    // TAKE's thaw undid the user's freeze.
    for seed in 0..5 {
        let o = run_text("trk-10-before.ron", text, seed);
        let messages: Vec<&str> = o.failures.iter().map(|f| f.message.as_str()).collect();
        assert!(o.failures.is_empty(), "seed {seed}: {messages:?}");
    }
}

/// Class (c): of two concurrent TRACKER_REMOVEs (the first is held in its
/// freeze, syncing 10 ms of writeback), the second fails with -ENOENT and
/// logs it, as v2's does when its bdev_filter_detach finds no filter (was
/// -EBUSY). Since session 23 it fails before its freeze, where v2's goes on
/// and may detach a filter a CREATE attached meanwhile
/// (`regress/tracker-remove-vs-remove-vs-create.ron`).
#[test]
fn a_second_concurrent_tracker_remove_is_enoent() {
    let text = r#"Scenario(
        name: "remove-twice",
        devices: [(name: "d", sectors: 65536, fs: true,
                   latency: (min_ns: 10000000, max_ns: 12000000, per_sector_ns: 0))],
        steps: [
            Create(snapshot: "s", devices: ["d"]),
            Destroy(snapshot: "s"),
            Write(target: Original("d"), sector: 0, sectors: 8),
            Concurrent([
                [TrackerRemove(device: "d", expect: Any)],
                [TrackerRemove(device: "d", expect: Any)],
            ]),
        ],
    )"#;
    for seed in 0..20 {
        let o = run_text("remove-twice.ron", text, seed);
        assert!(o.failures.is_empty(), "seed {seed}: {:?}", o.failures);
        let enoent = o
            .log
            .iter()
            .filter(|l| l.contains("failed to detach") && l.contains("ENOENT"))
            .count();
        assert_eq!(enoent, 1, "seed {seed}: {:?}", o.log);
    }
}

/// B-DA-9 is its own v2 bug, not B-DA-7: in `bugs/da-9.ron` the stores
/// take 1 us, so the 6 s cap of B-DA-7 never fires and B-DA-7 alone frees
/// nothing under a store; B-DA-9 (no second wait after the flush) does,
/// and the oops names it. Seeds 0..20.
#[test]
fn b_da_9_frees_under_the_flushed_store_and_b_da_7_does_not() {
    let text = std::fs::read_to_string(bug_file("da-9.ron")).unwrap();
    let da_7 = text
        .replace(r#"quirks: ["B-DA-9"]"#, r#"quirks: ["B-DA-7"]"#)
        .replace("expect_failure:", "// expect_failure:");
    assert_ne!(text, da_7);
    for seed in 0..20 {
        let v2 = run_text("da-9.ron", &text, seed);
        let oops: Vec<&str> = v2
            .failures
            .iter()
            .filter(|f| f.checker == "oops")
            .map(|f| f.message.as_str())
            .collect();
        assert!(
            oops.iter()
                .any(|m| m.contains("pending_io_count of a freed diff_area (B-DA-9)")),
            "seed {seed}: {:?}",
            v2.failures
        );
        let other = run_text("da-9-as-da-7.ron", &da_7, seed);
        assert!(
            other.passed() && other.failures.is_empty(),
            "seed {seed}: {:?}",
            other.failures
        );
    }
}
