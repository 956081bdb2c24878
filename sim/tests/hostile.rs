//! Hostile numbers (issue 7): every class of scenario that crashed, hung
//! or exhausted the bench is refused at load with the field and its bound,
//! or runs to a verdict within its work budget. Cheap enough for CI: the
//! runs use a small budget.

use std::path::Path;
use std::process::Command;

use blksnap_sim::scenario::runner::WorkBudget;
use blksnap_sim::scenario::{parse, run, Outcome, RunOptions};

const BASE: &str = r#"Scenario(
    name: "hostile",
    SCENARIO
    devices: [(name: "a", sectors: 65536, fill: Pattern), (name: "store", sectors: 262144)],
    steps: [
        Create(snapshot: "s", devices: ["a"]),
        Append(snapshot: "s", device: "store", ranges: [(0, 262144)]),
        Take(snapshot: "s"),
        STEP
    ],
)"#;

fn text(scenario: &str, step: &str) -> String {
    BASE.replace("SCENARIO", scenario).replace("STEP", step)
}

/// Line and column (1-based, in characters) of the first `marker`.
fn where_is(text: &str, marker: &str) -> (usize, usize) {
    let offset = text.find(marker).expect("marker in the text");
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[..offset].matches('\n').count() + 1;
    (line, text[line_start..offset].chars().count() + 1)
}

/// The text is refused at the marker, with a message naming `want` (the
/// field or the bound).
fn refused(scenario: &str, step: &str, marker: &str, want: &[&str]) {
    let text = text(scenario, step);
    let e = parse(Path::new("h.ron"), &text).expect_err(step);
    for w in want {
        assert!(e.message.contains(w), "{step}: want {w:?} in: {e}");
    }
    assert_eq!((e.line, e.col), where_is(&text, marker), "{step}: {e}");
}

fn small_budget() -> WorkBudget {
    WorkBudget {
        steps: 20_000,
        written_sectors: 1 << 18,
        read_sectors: 1 << 20,
        polls: 2_000_000,
        mapped_bytes: 1 << 28,
    }
}

fn run_text(scenario: &str, step: &str) -> Outcome {
    let text = text(scenario, step);
    let loaded = parse(Path::new("h.ron"), &text).unwrap_or_else(|e| panic!("{e}"));
    run(
        &loaded,
        &RunOptions {
            budget: Some(small_budget()),
            ..RunOptions::default()
        },
    )
}

fn assert_no_oops(outcome: &Outcome) {
    let oops: Vec<_> = outcome
        .failures
        .iter()
        .filter(|f| f.checker == "oops")
        .collect();
    assert!(oops.is_empty(), "{oops:?}");
}

#[test]
fn overflowing_numbers_in_steps_are_refused_at_the_field() {
    let max = "18446744073709551615";
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "Write(target: Original(\"a\"), sector: 0, sectors: 8, pause_us: 18446744073709551615),",
            max,
            &["pause_us", "600000000 us"],
        ),
        (
            "ExpectMedia(device: \"a\", sector: 0, sectors: 18446744073709551615, content: Zero),",
            max,
            &["65536 sectors"],
        ),
        (
            "ExpectMedia(device: \"a\", sector: 18446744073709551615, sectors: 8, content: Zero),",
            max,
            &["281474976710656"],
        ),
        (
            "ExpectMedia(device: \"a\", sector: 0, sectors: 8, content: Pattern(\"a\", 18446744073709551615)),",
            max,
            &["Pattern", "281474976710656"],
        ),
        (
            "Stretch(snapshot: \"s\", device: \"store\", from: 18446744073709551615, limit: 8),",
            max,
            &["from", "281474976710656"],
        ),
        (
            "Workload((target: Original(\"a\"), ops: 10, align: 18446744073709551615)),",
            max,
            &["align 1 to 65536"],
        ),
        (
            "Workload((target: Original(\"a\"), ops: 10, region: (18446744073709551615, 18446744073709551615))),",
            "(18446744073709551615, 1",
            &["region"],
        ),
        (
            "Ioctl(cmd: 1, arg: Zeroed(18446744073709551615)),",
            max,
            &["Zeroed", "1048576 bytes"],
        ),
        (
            "Ioctl(cmd: 1, arg: Zeroed(100000000000)),",
            "100000000000",
            &["Zeroed", "1048576 bytes"],
        ),
        (
            "ReadCbtMap(device: \"a\", length: 4294967295),",
            "4294967295",
            &["length", "16777216"],
        ),
        (
            "Collect(fault: ArrayShort(4294967295)),",
            "4294967295",
            &["ArrayShort", "4096 elements"],
        ),
    ];
    for (step, marker, want) in cases {
        refused("", step, marker, want);
    }
}

#[test]
fn work_past_the_budget_is_refused_where_it_adds_up() {
    let cases: &[(&str, &str, &[&str])] = &[
        // A 65536-sector write repeated 10^6 times.
        (
            "Write(target: Original(\"a\"), sector: 0, sectors: 65536, stride: 0, repeat: 1000000),",
            "Write(",
            &["work budget", "2097152 sectors"],
        ),
        // A 10^6-op workload of 64k-sector IOs.
        (
            "Workload((target: Original(\"a\"), ops: 1000000, max_sectors: 65536)),",
            "Workload(",
            &["work budget"],
        ),
        // 3x10^6 WAIT_EVENT steps.
        (
            "Repeat(times: 3, steps: [Repeat(times: 1000000, steps: [WaitEvent(snapshot: \"s\", expect: Any)])]),",
            "Repeat(",
            &["work budget", "1000000 steps"],
        ),
        // Nested Repeat to the old 10^7-step cap.
        (
            "Repeat(times: 1000, steps: [Repeat(times: 1000, steps: [Repeat(times: 10, steps: [Sleep(ms: 0)])])]),",
            "Repeat(",
            &["work budget"],
        ),
    ];
    for (step, marker, want) in cases {
        refused("", step, marker, want);
    }
    // One step under the bound still loads.
    let text = text("", "Repeat(times: 999000, steps: [Sleep(ms: 0)]),");
    parse(Path::new("h.ron"), &text).expect("999004 steps fit the budget");
}

#[test]
fn waits_stay_below_the_liveness_bound() {
    refused(
        "",
        "Sleep(ms: 3600000),",
        "3600000",
        &["Sleep ms", "600000 ms"],
    );
    refused(
        "",
        "WaitEvent(snapshot: \"s\", timeout_ms: 4294967295),",
        "4294967295",
        &["timeout_ms", "600000 ms"],
    );
    refused(
        "",
        "Stretch(snapshot: \"s\", device: \"store\", limit: 8, timeout_ms: 0),",
        "0),",
        &["timeout_ms is 1 to 600000"],
    );
}

#[test]
fn groups_nest_and_branch_within_bounds() {
    let deep = format!(
        "{}Sleep(ms: 1){},",
        "Repeat(times: 1, steps: [".repeat(17),
        "])".repeat(17)
    );
    let text = text("", &deep);
    let e = parse(Path::new("h.ron"), &text).unwrap_err();
    assert!(e.message.contains("at most 16 deep"), "{e}");
    let wide = format!("Concurrent([{}]),", "[Sleep(ms: 1)], ".repeat(100_001));
    let e = parse(Path::new("h.ron"), &self::text("", &wide)).unwrap_err();
    assert!(e.message.contains("at most 100000 branches"), "{e}");
    refused(
        "scheduler: Priority(4294967295),",
        "Sleep(ms: 1),",
        "4294967295",
        &["10000 change points"],
    );
}

#[test]
fn fault_rules_that_would_do_nothing_or_hide_another_are_refused() {
    refused(
        "faults: (alloc: [(\"event\", From(1)), (\"event\", Nth(2))]),",
        "Sleep(ms: 1),",
        "\"event\", Nth",
        &["'event' has a fault already"],
    );
    refused(
        "faults: (alloc: [(\"event\", Nth(0))]),",
        "Sleep(ms: 1),",
        "0))",
        &["Nth(0) would never fail"],
    );
    refused(
        "faults: (alloc: [(\"event\", PerMillion(1000001))]),",
        "Sleep(ms: 1),",
        "1000001",
        &["PerMillion is at most 1000000"],
    );
}

#[test]
fn parameters_that_spin_inside_one_step_are_refused() {
    refused(
        "quirks: [\"B-PARAM-1\"], params: (chunk_maximum_count: 0),",
        "Sleep(ms: 1),",
        "0),",
        &["chunk_maximum_count = 0", "at least 1"],
    );
    refused(
        "quirks: [\"B-PARAM-1\"],",
        "SetParam(name: \"tracking_block_maximum_count\", value: 4294967296),",
        "4294967296",
        &["tracking_block_maximum_count = 0"],
    );
}

#[test]
fn a_lying_count_does_not_size_the_runner_s_buffer() {
    // Count(2^32 - 1) once asked the runner for a 64 GiB array.
    for step in [
        "Collect(fault: Count(4294967295), expect: Any),",
        "CollectImages(snapshot: \"s\", fault: Count(4294967295), expect: Any),",
        "TrackerCollect(fault: Count(4294967295), expect: Any),",
        "Ioctl(cmd: 3221771008, arg: Zeroed(1048576), expect: Any),",
    ] {
        let outcome = run_text("", step);
        assert_no_oops(&outcome);
        assert!(outcome.steps >= 4, "{step}: {:?}", outcome.failures);
    }
}

#[test]
fn a_loop_inside_one_step_hits_the_work_budget() {
    // Stretch waits 10^6 times when no event comes: charged to the budget.
    let outcome = run_text(
        "",
        "Repeat(times: 3, steps: [Stretch(snapshot: \"s\", device: \"store\", limit: 0, timeout_ms: 1)]),",
    );
    let budget = outcome
        .failures
        .iter()
        .find(|f| f.checker == "liveness")
        .unwrap_or_else(|| panic!("no liveness failure: {:?}", outcome.failures));
    assert!(
        budget
            .message
            .contains("work budget spent: 20000 steps and waits"),
        "{budget:?}"
    );
    assert_no_oops(&outcome);
}

#[test]
fn a_run_of_many_ioctls_keeps_one_step_s_memory() {
    // Each ioctl's argument memory is unmapped when its step ends; before,
    // 3x10^6 WAIT_EVENT steps ran the host out of memory. The budget stops
    // this run at 20000 steps: the step count proves the steps ran.
    let outcome = run_text(
        "",
        "Repeat(times: 30000, steps: [WaitEvent(snapshot: \"s\", timeout_ms: 0, expect: Any)]),",
    );
    assert!(outcome.steps >= 19_000, "{}", outcome.steps);
    assert_no_oops(&outcome);
    // One WAIT_EVENT maps a 4 KiB event struct; 20000 of them kept
    // mapped would be 80 MiB.
    let peak = outcome.metrics["user_mapped_peak_bytes"];
    assert!(peak > 0.0 && peak < 65536.0, "{peak}");
}

#[test]
fn sweep_seeds_past_2_64_are_an_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = root.join("scenarios/basic/simple-two-devices.ron");
    let out = Command::new(env!("CARGO_BIN_EXE_blksnap-sim"))
        .args(["sweep", file.to_str().unwrap()])
        .args(["--from", "18446744073709551615", "--count", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--count is at most 1"), "{stderr}");
}
