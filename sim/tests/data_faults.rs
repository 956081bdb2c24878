//! Silent data faults (lost, corrupted, misdirected writes) and the
//! classification of what they cause: loading, and the scenarios of
//! `scenarios/faults/` that use them (the full 200-seed range is
//! `blksnap-sim sweep`; here a few seeds, in the debug profile).

use std::path::{Path, PathBuf};

use blksnap_sim::check::verdict::Category;
use blksnap_sim::scenario::parse;

#[path = "common/runs.rs"]
mod runs;

fn faults_file(name: &str) -> PathBuf {
    runs::root().join("scenarios/faults").join(name)
}

#[test]
fn an_unknown_fault_kind_is_a_load_error_naming_the_valid_ones() {
    let text = r#"Scenario(
        name: "x",
        devices: [(name: "s", sectors: 64, data_faults: [(kind: TornWrite)])],
        steps: [],
    )"#;
    let err = parse(Path::new("x.ron"), text).unwrap_err().to_string();
    assert!(err.starts_with("x.ron:3:"), "{err}");
    for kind in [
        "TornWrite",
        "LostWrite",
        "CorruptedWrite",
        "MisdirectedWrite",
    ] {
        assert!(err.contains(kind), "{err}");
    }
}

/// Each scenario passes, and the ones that expect undetected corruption
/// show it as caused by a declared fault, never as an engine failure.
#[test]
fn fault_scenarios_classify_the_corruption_they_cause() {
    let files = [
        ("lost-write-storage.ron", true),
        ("corrupted-write-storage.ron", true),
        ("misdirected-write-storage.ron", true),
        ("data-faults-random.ron", false),
    ];
    for (file, expected) in files {
        runs::each_seed(&faults_file(file), 0..5, |seed, outcome| {
            assert!(
                outcome.passed(),
                "{file} seed {seed}: {:?} {:?}",
                outcome.verdict_note,
                outcome.failures
            );
            assert!(outcome
                .failures
                .iter()
                .all(|f| f.category == Category::DeclaredFault));
            let explained = outcome.metrics["device_fault_sectors_explained"];
            assert!(!expected || explained > 0.0, "{file} seed {seed}");
        });
    }
}

/// One validator for the three fault lists of a device: a bad selector
/// field is a load error at that field (`FILE:LINE:COL`), its message
/// prefixed by the list's name; `per_million: 0` is one everywhere.
#[test]
fn a_bad_selector_field_is_placed_at_the_field_in_every_list() {
    let cases = [
        (
            "faults: [TornWrite(nth: 1, per_million: 5)]",
            "per_million: 5",
            "faults: give `nth` or `per_million`",
        ),
        (
            "faults: [LatencySpike(per_million: 0, extra_us: 1)]",
            "per_million: 0",
            "faults: per_million is 1 to 1000000",
        ),
        (
            "data_faults: [(kind: LostWrite, count: 0)]",
            "count: 0",
            "data_faults: count must be at least 1",
        ),
        (
            "data_faults: [(kind: LostWrite, per_million: 0)]",
            "per_million: 0",
            "data_faults: per_million is 1 to 1000000",
        ),
        (
            "data_faults: [(kind: MisdirectedWrite(offset: 0))]",
            "kind: ",
            "data_faults: MisdirectedWrite needs",
        ),
        (
            "io_errors: [(op: Write, range: (8, 0))]",
            "range: (8",
            "io_errors: range (8, 0) is empty",
        ),
        (
            "io_errors: [(op: Read, nth: 0)]",
            "nth: 0",
            "io_errors: `nth` counts from 1",
        ),
        (
            "io_errors: [(op: Read, per_million: 0)]",
            "per_million: 0",
            "io_errors: per_million is 1 to 1000000",
        ),
    ];
    for (list, field, message) in cases {
        let text = format!(
            "Scenario(\n    name: \"x\",\n    devices: [(name: \"s\", sectors: 64,\n        {list})],\n    steps: [],\n)"
        );
        let err = parse(Path::new("x.ron"), &text).unwrap_err().to_string();
        // The value of the field, on line 4 (columns count from 1).
        let col = list.find(field).expect("field in the case") + field.find(' ').unwrap() + 2 + 8;
        let want = format!("x.ron:4:{col}: {message}");
        assert!(err.starts_with(&want), "{list}: got {err}, want {want}");
    }
}
