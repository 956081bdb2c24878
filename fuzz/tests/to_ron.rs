//! `replay to-ron`: a fuzz input becomes a RON scenario that runs exactly
//! as the fuzzer's run did (same trace digest, same failures), checked
//! here independently of the self-check inside `to_ron`.

use std::path::{Path, PathBuf};

use blksnap_fuzz::to_ron::{to_ron, write_scenario, Header};
use blksnap_fuzz::{lifecycle, scenario_run};
use blksnap_sim::scenario::{self, Outcome, RunOptions};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).expect("readable");
            (path.display().to_string(), data)
        })
        .collect()
}

/// Load the written text as the CLI would, and run it.
fn run_text(text: &str) -> Outcome {
    let parsed = scenario::parse(Path::new("written.ron"), text)
        .unwrap_or_else(|e| panic!("written text does not load: {e}\n{text}"));
    scenario::run(&parsed, &RunOptions::default())
}

#[test]
fn every_lifecycle_seed_round_trips() {
    seeds_round_trip("lifecycle");
}

/// Power cuts and tails too: a PowerLoss with its branches, Load, Flush
/// and strided writes are written as the fuzzer ran them.
#[test]
fn every_lifecycle_everything_seed_round_trips() {
    seeds_round_trip("lifecycle_everything");
}

/// Every committed seed of a lifecycle target converts, and its file runs
/// as the fuzz target ran it.
fn seeds_round_trip(target: &str) {
    let inputs = corpus(target);
    assert!(inputs.len() >= 10, "{} {target} seeds", inputs.len());
    let features = lifecycle::features_of(target).expect("a lifecycle target");
    let mut exact = 0;
    for (label, data) in &inputs {
        let converted = to_ron(target, data, label).expect("converts");
        let from = format!("// Regression scenario from a `{target}`");
        assert!(converted.text.starts_with(&from));
        assert!(
            converted.text.contains(label.as_str()),
            "header names the input"
        );
        assert!(converted.text.contains("// Replay: "));
        // What the fuzz target ran: the input's scenario under its seed.
        let (scenario, seed) =
            lifecycle::build_with(data, features, lifecycle::Scale::Farm).expect("decodes");
        let fuzzed = scenario::run(
            &scenario,
            &RunOptions {
                seed: Some(seed),
                ..RunOptions::default()
            },
        );
        let written = run_text(&converted.text);
        assert_eq!(written.digest, converted.outcome.digest, "{label}");
        if converted.declared.is_empty() {
            assert_eq!(written.digest, fuzzed.digest, "{label}");
            assert_eq!(written.failures, fuzzed.failures, "{label}");
            exact += 1;
        } else {
            assert_eq!(verdicts(&written), verdicts(&fuzzed), "{label}");
            assert!(converted.text.contains("Repeat(\n"), "{label}");
            assert!(converted.text.contains("it never creates"), "{label}");
        }
    }
    // Most inputs create what they use: their files are exact copies.
    assert!(
        exact * 2 >= inputs.len(),
        "{exact} of {} exact",
        inputs.len()
    );
}

fn verdicts(outcome: &Outcome) -> Vec<(String, String)> {
    outcome
        .failures
        .iter()
        .map(|f| (f.checker.clone(), f.message.clone()))
        .collect()
}

/// Generated inputs that load (the committed ones are hostile numbers
/// that the loader refuses or that run long under the CLI's default
/// budget, which a scenario file cannot lower), and one that is refused.
#[test]
fn scenario_run_inputs_round_trip() {
    let mut converted_count = 0;
    for index in 0..40 {
        let data = blksnap_fuzz::inputs::random_input(7, index, 256);
        let text = scenario_run::text_of(&data);
        let Ok(loaded) = scenario::parse(Path::new(scenario_run::FILE), &text) else {
            continue;
        };
        let label = format!("input {index}");
        let converted = to_ron("scenario_run", &data, &label).expect("converts");
        let fuzzed = scenario::run(
            &loaded,
            &RunOptions {
                without_quirks: true,
                ..RunOptions::default()
            },
        );
        let written = run_text(&converted.text);
        assert_eq!(written.digest, fuzzed.digest, "{label}");
        assert_eq!(written.failures, fuzzed.failures, "{label}");
        converted_count += 1;
        if converted_count == 3 {
            break;
        }
    }
    assert_eq!(converted_count, 3, "too few generated inputs load");
    let refused_input = fuzz_dir().join("corpus/scenario_run/regress-fault-nth-0.ron");
    let data = std::fs::read(refused_input).expect("readable");
    let refused = to_ron("scenario_run", &data, "x").err().expect("refused");
    assert!(refused.contains("does not load"), "{refused}");
}

/// A run that fails keeps failing the same way from the written file, and
/// the header says how. (The fixed engine passes every committed input,
/// so the failing run here is a v2 bug scenario with its quirk on.)
#[test]
fn a_failing_run_round_trips_with_its_failures() {
    let path = fuzz_dir().join("../scenarios/bugs/trk-3.ron");
    let mut scenario = scenario::load(&path).expect("loads");
    scenario.expect_failure = None;
    let header = Header {
        target: "lifecycle",
        source: "crash-\u{1b}[31m\nforged",
        bytes: 7,
        how: "test",
    };
    let converted = write_scenario(&scenario, &header).expect("converts");
    let direct = scenario::run(&scenario, &RunOptions::default());
    assert!(!direct.failures.is_empty(), "trk-3 with its quirk fails");
    let written = run_text(&converted.text);
    assert_eq!(written.failures, direct.failures);
    assert_eq!(written.digest, direct.digest);
    let first = &direct.failures[0];
    assert!(
        converted
            .text
            .contains(&format!("//   [{}] ", first.checker)),
        "{}",
        converted.text
    );
    // A hostile file name stays inside its comment line.
    assert!(converted.text.contains("crash-\\u{1b}[31m\\nforged"));
    assert!(!converted.text.contains("\nforged"));
}

#[test]
fn targets_without_a_scenario_are_refused_with_the_reason() {
    for target in ["ioctl_args", "scenario_parse"] {
        let error = to_ron(target, b"anything", "x").err().expect("refused");
        assert!(
            error.contains(&format!("fuzz/corpus/{target}/regress-")),
            "{error}"
        );
    }
    let error = to_ron("nope", b"", "x").err().expect("refused");
    assert!(error.contains("unknown target 'nope'"), "{error}");
}
