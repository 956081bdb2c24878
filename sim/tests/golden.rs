//! Behaviour pinned across commits with insta golden files: each suite
//! scenario's digest, verdict and metrics (host timings left out), the JUnit
//! and Markdown renderings of a fixed run, and the `--help` texts. A change
//! in behaviour shows as a diff to review; accept an intended one with
//! `cargo insta review` (or `INSTA_UPDATE=always cargo test -p blksnap-sim
//! --test golden` and read `git diff`). CI runs this test with
//! `INSTA_UPDATE=no` (`.ci/run`, tests phase): a changed golden file fails
//! insta's assertion, and insta writes nothing; cargo-insta is not needed.
//!
//! The set of golden files is checked both ways, on file names alone (so
//! it holds whatever `INSTA_UPDATE` says): a new scenario, subcommand or
//! rendering without its golden file fails, and so does any file in
//! `tests/snapshots` that no test here writes (a golden file whose
//! scenario is gone, a stray or misnamed `.snap`, a left-over `.snap.new`),
//! so nothing slips in unpinned or stays pinned after removal. (This is
//! what `cargo insta test --unreferenced=reject` checked.)

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use blksnap_sim::scenario::{load, run, RunOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Metrics measured on the host, not in virtual time: they differ per run.
fn host_timing(name: &str) -> bool {
    name.starts_with("wall")
}

/// One scenario's pinned behaviour as plain lines, so a diff reads well.
fn pinned(rel: &str) -> String {
    let scenario = load(&root().join(rel)).unwrap_or_else(|e| panic!("{e:#}"));
    let outcome = run(&scenario, &RunOptions::default());
    let mut out = String::new();
    let _ = writeln!(out, "scenario: {}", outcome.name);
    let _ = writeln!(out, "seed: {}", outcome.seed);
    let _ = writeln!(out, "digest: {}", outcome.digest);
    let _ = writeln!(out, "passed: {}", outcome.passed());
    if let Some(c) = &outcome.caught_by {
        let _ = writeln!(out, "caught_by: [{}] {}", c.checker, c.message);
    }
    let _ = writeln!(out, "virtual_ns: {}", outcome.virtual_ns);
    let _ = writeln!(out, "steps: {}", outcome.steps);
    let _ = writeln!(out, "trace_events: {}", outcome.trace_events);
    out.push_str("metrics:\n");
    for (name, value) in outcome.metrics.iter().filter(|(n, _)| !host_timing(n)) {
        let _ = writeln!(out, "  {name}: {value}");
    }
    out.push_str("failures:\n");
    for f in &outcome.failures {
        let _ = writeln!(out, "  [{}] {}", f.checker, f.message);
    }
    out
}

/// Every suite file by its path under the root, with its golden file's
/// snapshot name (the path below `scenarios/`, `/` written `__`).
fn suite() -> Vec<(String, String)> {
    let files = blksnap_sim::cli::collect_files(&[root().join("scenarios")]).expect("suite");
    let named: Vec<_> = files
        .iter()
        .map(|file| {
            let rel = file
                .strip_prefix(root())
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            let name = rel
                .trim_start_matches("scenarios/")
                .trim_end_matches(".ron")
                .replace('/', "__");
            (rel, format!("suite__{name}"))
        })
        .collect();
    // A walk that found nothing would pin nothing.
    assert!(named.len() > 50, "only {} scenarios found", named.len());
    named
}

/// Every scenario of the suite, one golden file each (named by its path),
/// so a change names the scenarios it moved.
#[test]
fn suite_digests_and_metrics() {
    for (rel, name) in suite() {
        insta::assert_snapshot!(name, pinned(&rel));
    }
}

/// Every file name in `tests/snapshots`.
fn committed_files() -> std::collections::BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("dir entry");
            entry.file_name().to_string_lossy().into_owned()
        })
        .collect()
}

/// The file name of the golden file of the snapshot `name` of this test.
fn golden_file(name: &str) -> String {
    format!("golden__{name}.snap")
}

/// Every golden file the tests of this file write: one per suite file,
/// the fixed run's two renderings, and one `--help` per subcommand.
fn wanted_files() -> std::collections::BTreeSet<String> {
    let mut wanted: std::collections::BTreeSet<String> = suite()
        .into_iter()
        .map(|(_, name)| golden_file(&name))
        .collect();
    for name in ["fixed_run_junit", "fixed_run_markdown"] {
        wanted.insert(golden_file(name));
    }
    wanted.insert(golden_file("help__top"));
    for sub in subcommands() {
        wanted.insert(golden_file(&format!("help__{sub}")));
    }
    wanted
}

/// Each golden file a test writes is committed, and each committed file
/// in `tests/snapshots` is one a test writes. Checked on the file names
/// alone, so it holds whatever `INSTA_UPDATE` says (insta would write a
/// missing snapshot as new).
#[test]
fn every_golden_file_is_wanted_and_every_wanted_one_is_committed() {
    let committed = committed_files();
    let wanted = wanted_files();
    let missing: Vec<_> = wanted.difference(&committed).collect();
    let unreferenced: Vec<_> = committed.difference(&wanted).collect();
    assert!(
        missing.is_empty() && unreferenced.is_empty(),
        "golden files missing in sim/tests/snapshots (run `INSTA_UPDATE=always cargo test \
         -p blksnap-sim --test golden` and read `git diff`): {missing:?}; \
         files in sim/tests/snapshots that no test writes (a scenario gone, a stray or \
         misnamed file, a left-over .snap.new: delete them): {unreferenced:?}"
    );
    // Every suite directory is in it, the bug, fault, power and race files too.
    for dir in ["basic", "bugs", "faults", "power", "races"] {
        let prefix = format!("golden__suite__{dir}__");
        let n = committed.iter().filter(|c| c.starts_with(&prefix)).count();
        assert!(n > 0, "no golden file for scenarios/{dir}/");
    }
}

fn sim(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_blksnap-sim"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("blksnap-sim runs")
}

/// A fixed run: one plain pass, one bug caught as expected, and the same bug
/// without `expect_failure` (a failure). Host timings and the binary's path
/// are redacted so the rendering depends only on behaviour.
fn fixed_run() -> blksnap_reports::RunReport {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-fixed-run");
    std::fs::create_dir_all(dir.join("bugs")).unwrap();
    let bug = std::fs::read_to_string(root().join("scenarios/bugs/img-1.ron")).unwrap();
    let unexpected: String = bug
        .lines()
        .filter(|l| !l.contains("expect_failure"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("name: \"B-IMG-1\"", "name: \"B-IMG-1-unexpected\"");
    assert_ne!(unexpected, bug, "img-1.ron has an expect_failure line");
    std::fs::write(dir.join("bugs/img-1.ron"), &bug).unwrap();
    std::fs::write(dir.join("img-1-unexpected.ron"), unexpected).unwrap();
    std::fs::copy(
        root().join("scenarios/basic/writers-during-take.ron"),
        dir.join("writers-during-take.ron"),
    )
    .unwrap();
    let out = sim(
        &[
            "run",
            "writers-during-take.ron",
            "bugs/img-1.ron",
            "img-1-unexpected.ron",
            "--json",
            "run.json",
        ],
        &dir,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json = std::fs::read_to_string(dir.join("run.json")).unwrap();
    let mut report = blksnap_reports::RunReport::from_json(&json).unwrap();
    for run in &mut report.runs {
        run.metrics.retain(|name, _| !host_timing(name));
        run.replay = format!("blksnap-sim run {} --seed {}", run.path, run.seed);
    }
    report.tool_version = "[version]".into();
    report
}

#[test]
fn junit_and_markdown_of_a_fixed_run() {
    let report = fixed_run();
    assert_eq!(report.runs.len(), 3);
    insta::assert_snapshot!("fixed_run_junit", blksnap_reports::render_junit(&report));
    insta::assert_snapshot!(
        "fixed_run_markdown",
        blksnap_reports::render_markdown(&report, None)
    );
}

/// The subcommands, from the command line's own definition, so a new
/// one gets a golden `--help` without anyone listing it here.
fn subcommands() -> Vec<String> {
    use clap::CommandFactory;
    let names: Vec<String> = blksnap_sim::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .filter(|name| name != "help")
        .collect();
    assert!(names.len() >= 8, "subcommands: {names:?}");
    names
}

#[test]
fn help_texts() {
    let mut subs: Vec<Option<String>> = vec![None];
    subs.extend(subcommands().into_iter().map(Some));
    for sub in subs {
        let mut args: Vec<&str> = sub.iter().map(String::as_str).collect();
        args.push("--help");
        let out = sim(&args, &root());
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("Exit codes:\n  0 "),
            "{sub:?} --help lists no exit codes"
        );
        let name = sub.as_deref().unwrap_or("top");
        insta::assert_snapshot!(format!("help__{name}"), text);
    }
}

/// Every argument of every subcommand has a help line, and that line
/// gives its default: clap's `[default: ...]` from the definition, or the
/// same words in the help text for a default that is not a value (an
/// absent output file, the scenario's own seed). Required arguments have
/// none.
#[test]
fn every_argument_has_help_with_its_default() {
    use clap::CommandFactory;
    let cli = blksnap_sim::cli::Cli::command();
    let mut judged = 0;
    let mut missing = Vec::new();
    for sub in cli.get_subcommands().filter(|c| c.get_name() != "help") {
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            judged += 1;
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let has_default = !arg.get_default_values().is_empty()
                || help.contains("[default:")
                || arg.is_required_set();
            if help.is_empty() || !has_default {
                missing.push(format!("{} --{id}: {help:?}", sub.get_name()));
            }
        }
    }
    assert!(judged > 30, "judged only {judged} arguments");
    assert!(
        missing.is_empty(),
        "arguments without help or default: {missing:#?}"
    );
}
