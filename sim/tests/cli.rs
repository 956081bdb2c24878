//! The CLI as a user runs it: exit codes, the closing line, JUnit, errors.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blksnap-sim"));
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    cmd
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blksnap-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn run_prints_one_line_per_scenario_and_the_closing_line() {
    let out = bin()
        .args([
            "run",
            "scenarios/basic/errno-paths.ron",
            "scenarios/basic/chunk-boundary.ron",
        ])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"2 passed, 0 failed"), "{text}");
    assert!(lines.iter().filter(|l| l.starts_with("PASS")).count() == 2);
    assert!(text.contains("seed=1") && text.contains("digest="));
}

#[test]
fn same_seed_prints_same_digest() {
    let run = |seed: &str| {
        let out = bin()
            .args([
                "run",
                "scenarios/basic/writers-during-take.ron",
                "--seed",
                seed,
            ])
            .output()
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split("digest=")
            .nth(1)
            .map(|s| s[..16].to_string())
            .expect("digest")
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
}

#[test]
fn misspelled_step_exits_2_with_file_line_col() {
    let path = temp("bad.ron");
    std::fs::write(
        &path,
        "Scenario(\n  name: \"x\",\n  devices: [],\n  steps: [\n    Sleepp(ms: 1),\n  ],\n)\n",
    )
    .expect("write");
    let out = bin().args(["run"]).arg(&path).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let expected = format!("{}:5:", path.display());
    assert!(text.contains(&expected), "{text}");
    assert!(text.lines().last() == Some("0 passed, 1 failed"), "{text}");
}

#[test]
fn junit_has_one_testcase_per_scenario() {
    let path = temp("out.xml");
    let out = bin()
        .args([
            "run",
            "scenarios/basic/errno-paths.ron",
            "scenarios/basic/chunk-boundary.ron",
            "--junit",
        ])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let xml = std::fs::read_to_string(&path).expect("junit written");
    assert!(xml.starts_with("<?xml"));
    assert_eq!(xml.matches("<testcase ").count(), 2, "{xml}");
}

#[test]
fn abi_prints_every_ioctl_and_struct() {
    let out = bin().arg("abi").output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("IOCTL_BLK_SNAP_"))
            .count(),
        12
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("struct ")).count(),
        19
    );
    assert!(text.contains("IOCTL_BLK_SNAP_VERSION 0x40085600"));
    assert!(text.contains("struct blk_snap_cbt_info size=48 align=8"));
    assert!(text.contains("  generation_id off=28 size=16"));
}

#[test]
fn a_baseline_regression_fails_the_run() {
    let baseline = temp("baseline.json");
    let out = bin()
        .args([
            "run",
            "scenarios/basic/errno-paths.ron",
            "scenarios/basic/chunk-boundary.ron",
            "--json",
        ])
        .arg(&baseline)
        .output()
        .expect("runs");
    assert!(out.status.success());
    // Against itself: no change, exit 0.
    let same = bin()
        .args([
            "run",
            "scenarios/basic/errno-paths.ron",
            "scenarios/basic/chunk-boundary.ron",
            "--baseline",
        ])
        .arg(&baseline)
        .output()
        .expect("runs");
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
    assert!(String::from_utf8_lossy(&same.stdout).contains("baseline: no change"));
    // A scenario missing from this run is a regression: exit 1.
    let fewer = bin()
        .args(["run", "scenarios/basic/errno-paths.ron", "--baseline"])
        .arg(&baseline)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&fewer.stdout);
    assert_eq!(fewer.status.code(), Some(1), "{text}");
    assert!(text.contains("REGRESSION"), "{text}");
}

#[test]
fn a_path_without_scenarios_is_an_error() {
    let dir = temp("empty-dir");
    std::fs::create_dir_all(&dir).expect("dir");
    let out = bin().args(["run"]).arg(&dir).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let missing = bin().args(["run", "no/such/path"]).output().expect("runs");
    assert_eq!(missing.status.code(), Some(2));
}
