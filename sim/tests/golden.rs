//! Behaviour pinned across commits with insta golden files: each suite
//! scenario's digest, verdict and metrics (host timings left out), the JUnit
//! and Markdown renderings of a fixed run, and the `--help` texts. A change
//! in behaviour shows as a diff to review; accept an intended one with
//! `cargo insta review` (or `INSTA_UPDATE=always cargo test -p blksnap-sim
//! --test golden` and read `git diff`).

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

/// Every scenario of the suite, one golden file each (named by its path),
/// so a change names the scenarios it moved.
#[test]
fn suite_digests_and_metrics() {
    let files = blksnap_sim::cli::collect_files(&[root().join("scenarios")]).expect("suite");
    let mut judged = 0;
    for file in &files {
        let rel = file
            .strip_prefix(root())
            .expect("under the root")
            .to_string_lossy()
            .replace('\\', "/");
        let name = rel
            .trim_start_matches("scenarios/")
            .trim_end_matches(".ron")
            .replace('/', "__");
        insta::assert_snapshot!(format!("suite__{name}"), pinned(&rel));
        judged += 1;
    }
    // A walk that found nothing would pin nothing.
    assert!(judged > 50, "only {judged} scenarios found");
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

#[test]
fn help_texts() {
    for sub in [
        &[][..],
        &["run"],
        &["sweep"],
        &["shrink"],
        &["abi"],
        &["quirks"],
    ] {
        let mut args: Vec<&str> = sub.to_vec();
        args.push("--help");
        let out = sim(&args, &root());
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let name = if sub.is_empty() { "top" } else { sub[0] };
        insta::assert_snapshot!(
            format!("help__{name}"),
            String::from_utf8(out.stdout).unwrap()
        );
    }
}
