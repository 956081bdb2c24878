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
