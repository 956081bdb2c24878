//! Replays the committed corpus through the target bodies on stable Rust,
//! and runs the targets on deterministic pseudo-random inputs.
//!
//! `FUZZ_REPLAY=path [FUZZ_TARGET=name] cargo test -p blksnap-fuzz --test replay replay_env`
//! reruns one file (a cargo-fuzz crash artifact, say); the target defaults
//! to the name of the file's directory (`artifacts/lifecycle/crash-...`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use blksnap_fuzz::{inputs, target, Check, TARGETS};
use blksnap_sim::kernel::live_sims;

/// Pseudo-random inputs per target, and the stream they come from.
const RANDOM_LIFECYCLE: u64 = 600;
const RANDOM_EVERYTHING: u64 = 200;
const RANDOM_IOCTL_ARGS: u64 = 1000;
const RANDOM_PARSE: u64 = 2000;
const RANDOM_RUN: u64 = 300;
const RANDOM_SEED: u64 = 0x0062_6c6b_736e_6170;
/// Fewest seed inputs each committed corpus must hold.
const MIN_CORPUS: usize = 10;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Run every input; panic with every failure report at once.
fn replay_all(name: &str, check: Check, inputs: impl IntoIterator<Item = (String, Vec<u8>)>) {
    let start = Instant::now();
    let mut count = 0;
    let mut failures = Vec::new();
    for (label, data) in inputs {
        count += 1;
        let sims_before = live_sims();
        if let Err(report) = check(&data) {
            failures.push(format!("--- {name} {label}\n{report}"));
        }
        // A run must free its sim (power-off), or a fuzzer's process grows
        // with every input (LeakSanitizer reports it as a leak).
        let left = live_sims() - sims_before;
        if left > 0 {
            failures.push(format!(
                "--- {name} {label}\nleak: {left} Sim(s) still allocated after the run"
            ));
        }
    }
    eprintln!(
        "{name}: {count} input(s) in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} {name} input(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(name);
    files_in(&dir)
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.display().to_string(), data)
        })
        .collect()
}

fn replay_corpus(name: &str) {
    let check = target(name).expect("a known target");
    let inputs = corpus(name);
    assert!(
        inputs.len() >= MIN_CORPUS,
        "corpus/{name} holds {} input(s), expected at least {MIN_CORPUS}",
        inputs.len()
    );
    replay_all(name, check, inputs);
}

#[test]
fn corpus_lifecycle() {
    replay_corpus("lifecycle");
}

/// The lifecycle corpus at full scale too: its `regress-*` inputs were
/// found on full-size scenarios (the target runs farm-scale ones, which
/// end sooner on smaller devices), and keep guarding those bugs there.
#[test]
fn corpus_lifecycle_full_scale() {
    fn check_full(data: &[u8]) -> Result<(), String> {
        blksnap_fuzz::lifecycle::check_at(data, blksnap_fuzz::lifecycle::Scale::Full, &[])
    }
    replay_all("lifecycle", check_full, corpus("lifecycle"));
}

#[test]
fn corpus_lifecycle_everything() {
    replay_corpus("lifecycle_everything");
}

#[test]
fn corpus_scenario_parse() {
    replay_corpus("scenario_parse");
}

#[test]
fn corpus_ioctl_args() {
    replay_corpus("ioctl_args");
}

#[test]
fn corpus_scenario_run() {
    replay_corpus("scenario_run");
}

#[test]
fn random_scenario_run() {
    random("scenario_run", RANDOM_RUN, 200, false);
}

/// The generator must write scenarios that load and run, not only ones
/// the loader refuses: a target that only sees load errors tests nothing
/// of the runner.
#[test]
fn scenario_run_inputs_mostly_run() {
    let loads = (0..RANDOM_RUN)
        .map(|i| inputs::random_input(RANDOM_SEED, i, 200))
        .filter(|data| {
            let text = blksnap_fuzz::scenario_run::text_of(data);
            blksnap_sim::scenario::parse(Path::new("x.ron"), &text).is_ok()
        })
        .count() as u64;
    eprintln!("scenario_run: {loads} of {RANDOM_RUN} random inputs load");
    assert!(loads * 3 >= RANDOM_RUN, "{loads} of {RANDOM_RUN} load");
}

#[test]
fn every_target_has_a_corpus_and_a_wrapper() {
    for (name, _) in TARGETS {
        assert!(
            fuzz_dir().join("corpus").join(name).is_dir(),
            "corpus/{name}"
        );
        let wrapper = fuzz_dir()
            .join("cargo-fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(wrapper.is_file(), "{}", wrapper.display());
    }
}

/// `count` pseudo-random inputs; `text` makes them valid UTF-8.
fn random(name: &str, count: u64, max_len: usize, text: bool) {
    random_range(name, 0..count, max_len, text);
}

/// Inputs `range` of the stream (a long property test split in parts, so
/// that `cargo nextest run --partition` spreads them over shards).
fn random_range(name: &str, range: std::ops::Range<u64>, max_len: usize, text: bool) {
    let check = target(name).expect("a known target");
    let inputs = range.map(|i| {
        let data = inputs::random_input(RANDOM_SEED, i, max_len);
        let data = if text {
            String::from_utf8_lossy(&data).into_owned().into_bytes()
        } else {
            data
        };
        (
            format!("random input {i} (seed {RANDOM_SEED:#x}, max_len {max_len})"),
            data,
        )
    });
    replay_all(name, check, inputs);
}

/// The `RANDOM_LIFECYCLE` inputs, in `LIFECYCLE_PARTS` tests.
const LIFECYCLE_PARTS: u64 = 6;

fn random_lifecycle_part(part: u64) {
    let size = RANDOM_LIFECYCLE.div_ceil(LIFECYCLE_PARTS);
    let range = part * size..((part + 1) * size).min(RANDOM_LIFECYCLE);
    assert!(
        !range.is_empty(),
        "part {part} of {LIFECYCLE_PARTS} is empty"
    );
    random_range("lifecycle", range, 400, false);
}

#[test]
fn random_lifecycle_1_of_6() {
    random_lifecycle_part(0);
}

#[test]
fn random_lifecycle_2_of_6() {
    random_lifecycle_part(1);
}

#[test]
fn random_lifecycle_3_of_6() {
    random_lifecycle_part(2);
}

#[test]
fn random_lifecycle_4_of_6() {
    random_lifecycle_part(3);
}

#[test]
fn random_lifecycle_5_of_6() {
    random_lifecycle_part(4);
}

#[test]
fn random_lifecycle_6_of_6() {
    random_lifecycle_part(5);
}

/// `lifecycle_everything` on the same stream (its inputs make other
/// scenarios: power cuts and tails read more of them), in two parts.
#[test]
fn random_lifecycle_everything_1_of_2() {
    random_range("lifecycle_everything", 0..RANDOM_EVERYTHING / 2, 400, false);
}

#[test]
fn random_lifecycle_everything_2_of_2() {
    let range = RANDOM_EVERYTHING / 2..RANDOM_EVERYTHING;
    random_range("lifecycle_everything", range, 400, false);
}

#[test]
fn random_ioctl_args() {
    random("ioctl_args", RANDOM_IOCTL_ARGS, 400, false);
}

/// Random bytes, and the corpus texts with a few bytes changed.
#[test]
fn random_scenario_parse() {
    let check = target("scenario_parse").expect("a known target");
    random("scenario_parse", RANDOM_PARSE / 2, 256, true);
    let texts: Vec<Vec<u8>> = corpus("scenario_parse")
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let mut rng = inputs::SplitMix::new(RANDOM_SEED);
    let mutants = (0..RANDOM_PARSE / 2).map(|i| {
        let mut data = texts[i as usize % texts.len()].clone();
        for _ in 0..1 + rng.below(4) {
            if data.is_empty() {
                break;
            }
            let at = rng.below(data.len() as u64) as usize;
            match rng.below(3) {
                0 => data[at] = b"()[],:\"' 0aZ\n"[rng.below(13) as usize],
                1 => {
                    data.remove(at);
                }
                _ => data.truncate(at),
            }
        }
        (format!("mutant {i}"), data)
    });
    replay_all("scenario_parse", check, mutants);
}

/// The same input runs the same way: same verdict, same trace digest.
#[test]
fn lifecycle_is_deterministic() {
    for (label, data) in corpus("lifecycle").into_iter().take(3) {
        let (scenario, seed) = blksnap_fuzz::lifecycle::build(&data).expect("a scenario");
        let options = blksnap_sim::scenario::RunOptions {
            seed: Some(seed),
            ..Default::default()
        };
        let first = blksnap_sim::scenario::run(&scenario, &options);
        let second = blksnap_sim::scenario::run(&scenario, &options);
        assert_eq!(first.digest, second.digest, "{label}");
        assert_eq!(first.failures, second.failures, "{label}");
    }
}

/// `FUZZ_REPLAY=path [FUZZ_TARGET=name]`: replay one file; a no-op without.
#[test]
fn replay_env() {
    let Ok(path) = std::env::var("FUZZ_REPLAY") else {
        return;
    };
    // `cargo test` runs in fuzz/; a path given from the repository root works too.
    let path = PathBuf::from(path);
    let path = match fuzz_dir().parent() {
        Some(root) if !path.exists() && root.join(&path).exists() => root.join(&path),
        _ => path,
    };
    let name = std::env::var("FUZZ_TARGET").unwrap_or_else(|_| {
        path.parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let check = target(&name).unwrap_or_else(|| {
        let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
        panic!(
            "FUZZ_TARGET: unknown target '{name}' (set FUZZ_TARGET to one of {})",
            names.join(", ")
        )
    });
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    replay_all(&name, check, [(path.display().to_string(), data)]);
}
