//! End-to-end tests of the events rule 6 (a WAIT_EVENT's wait runs out by
//! its timeout) and of the storage rule 3 (no new region after an
//! overflow): each shown to fail on an engine that breaks it.

use std::path::Path;

use blksnap_sim::scenario::{run, Outcome, RunOptions};

/// Run `text` with its quirks (`fixed`: without them).
fn run_text(text: &str, fixed: bool) -> Outcome {
    let s = blksnap_sim::scenario::parse(Path::new("t.ron"), text).expect("parses");
    run(
        &s,
        &RunOptions {
            without_quirks: fixed,
            ..RunOptions::default()
        },
    )
}

fn messages<'a>(o: &'a Outcome, checker: &str) -> Vec<&'a str> {
    o.failures
        .iter()
        .filter(|f| f.checker == checker)
        .map(|f| f.message.as_str())
        .collect()
}

/// Events rule 6 end to end: B-EVT-2 waits its 100 ms as 100 jiffies
/// (400 ms). The sim must see the engine's timed sleep (if it recorded
/// none the rule would judge nothing, and this fails), and the fixed
/// engine, which sleeps the 100 ms, passes.
#[test]
fn a_wait_past_its_timeout_fails_events() {
    let text = r#"Scenario(
        name: "wait",
        quirks: ["B-EVT-2"],
        devices: [(name: "a", sectors: 65536)],
        steps: [
            Create(snapshot: "s", devices: ["a"]),
            WaitEvent(snapshot: "s", expect: LowFreeSpace(2097152)),
            WaitEvent(snapshot: "s", timeout_ms: 100, expect: None),
            Destroy(snapshot: "s"),
        ],
    )"#;
    let v2 = run_text(text, false);
    let late = messages(&v2, "events");
    assert!(
        matches!(late.as_slice(), [m] if m.contains("timeout of 100 ms returned ENOENT (no event), but the engine's wait slept from")
            && m.contains("to 403")),
        "{late:?}"
    );
    let fixed = run_text(text, true);
    assert!(fixed.passed(), "{:?}", fixed.failures);
}

/// Storage rule 3 on the fixed engine: after the overflow e's COW fails at
/// once, so the range appended after the corrupted event stays unwritten,
/// at every seed (the schedule moves the COWs and events around). The
/// rule's teeth are shown by its unit test, the wiring's in `ctl.rs`, and
/// the break `is_overflow` -> false fails this file at every seed.
#[test]
fn a_range_appended_after_an_overflow_stays_unwritten() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/coverage/overflow-then-append.ron");
    let s = blksnap_sim::scenario::load(&path).expect("loads");
    for seed in 0..50 {
        let o = run(
            &s,
            &RunOptions {
                seed: Some(seed),
                ..RunOptions::default()
            },
        );
        assert!(o.passed(), "seed {seed}: {:?}", o.failures);
    }
}
