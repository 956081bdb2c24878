//! One test per scenario file (`harness = false`, libtest-mimic), so that
//! `cargo nextest run --partition hash:k/n` spreads the suite over shards
//! and a failing file is named by its test.
//!
//! Each file runs as `blksnap-sim run` runs it (its own seed; a bug file
//! passes when its checker catches the bug). A bug file (one that sets
//! `expect_failure`) is also checked at seeds 0..199 both ways: with its
//! quirk the named checker catches the v2 symptom at every seed, not by
//! luck, and with no quirk the fixed engine runs the same trigger cleanly.
//!
//! Cost, measured in the debug profile (opt-level 1): the bug files at 200
//! seeds both ways take about 55 s of CPU, the rest a few seconds.

use std::ops::Range;
use std::path::{Path, PathBuf};

use blksnap_sim::scenario::{load, run, RunOptions, Scenario};
use libtest_mimic::{Arguments, Failed, Trial};

/// Seeds each bug scenario is checked at, both ways.
const BUG_SEEDS: Range<u64> = 0..200;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn main() {
    let args = Arguments::from_args();
    let dir = scenarios_dir();
    let files = blksnap_sim::cli::collect_files(std::slice::from_ref(&dir))
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    assert!(!files.is_empty(), "no scenario under {}", dir.display());
    let trials = files
        .into_iter()
        .map(|file| {
            let name = file
                .strip_prefix(&dir)
                .unwrap_or(&file)
                .display()
                .to_string();
            Trial::test(name, move || check_file(&file))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn check_file(file: &Path) -> Result<(), Failed> {
    let scenario = load(file).map_err(|e| e.to_string())?;
    let outcome = run(&scenario, &RunOptions::default());
    if !outcome.passed() {
        return Err(format!(
            "{} fails at its seed {}: {:?} {:?}\nreplay: cargo run --release -p blksnap-sim -- run {} --seed {}",
            scenario.name,
            outcome.seed,
            outcome.verdict_note,
            outcome.failures,
            file.display(),
            outcome.seed
        )
        .into());
    }
    if scenario.expect_failure.is_some() {
        caught_and_fixed(&scenario, BUG_SEEDS)?;
    }
    Ok(())
}

/// The v2 symptom is caught, and the fix survives the trigger, at every
/// seed of `seeds`. Every wrong seed is reported, not only the first.
fn caught_and_fixed(s: &Scenario, seeds: Range<u64>) -> Result<(), Failed> {
    let expected = s
        .expect_failure
        .clone()
        .ok_or("a bug scenario names its checker")?;
    let mut wrong = Vec::new();
    let runs = seeds.end.saturating_sub(seeds.start);
    for seed in seeds {
        let with_quirks = RunOptions {
            seed: Some(seed),
            ..RunOptions::default()
        };
        let v2 = run(s, &with_quirks);
        if !v2.passed() || !v2.failures.iter().any(|f| f.checker == expected.checker) {
            wrong.push(format!(
                "seed {seed}: the {} checker did not catch the bug: {:?} {:?}",
                expected.checker, v2.verdict_note, v2.failures
            ));
        }
        let fixed = run(
            s,
            &RunOptions {
                without_quirks: true,
                ..with_quirks
            },
        );
        if !fixed.passed() || !fixed.failures.is_empty() {
            wrong.push(format!("seed {seed} without quirks: {:?}", fixed.failures));
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}: {} wrong of {runs} seeds:\n{}",
        s.name,
        wrong.len(),
        wrong.join("\n")
    )
    .into())
}
