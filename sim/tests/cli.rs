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

/// A small scenario that passes quickly.
fn tiny(name: &str) -> String {
    format!("Scenario(name: \"{name}\", devices: [(name: \"d\", sectors: 64)], steps: [Sleep(ms: 1)])\n")
}

/// A fresh directory of its own for one test.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = temp(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[test]
fn symlink_loops_are_walked_once_and_each_file_runs_once() {
    let dir = fresh_dir("loop");
    std::fs::create_dir_all(dir.join("sub")).expect("dir");
    std::fs::write(dir.join("sub/one.ron"), tiny("one")).expect("write");
    // Two links to `.` made the walk exponential; a link to the parent loops.
    std::os::unix::fs::symlink(".", dir.join("sub/self-a")).expect("link");
    std::os::unix::fs::symlink(".", dir.join("sub/self-b")).expect("link");
    std::os::unix::fs::symlink("..", dir.join("sub/up")).expect("link");
    std::os::unix::fs::symlink("sub/one.ron", dir.join("alias.ron")).expect("link");
    let out = bin().args(["run"]).arg(&dir).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.lines().last(), Some("1 passed, 0 failed"), "{text}");
}

#[test]
fn a_fifo_is_refused_not_read() {
    let dir = fresh_dir("fifo");
    let fifo = dir.join("x.ron");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    std::fs::write(dir.join("ok.ron"), tiny("ok")).expect("write");
    // Were the FIFO opened, the run would wait for a writer for ever.
    let out = bin().args(["run"]).arg(&dir).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let expected = format!("{}: not a regular file", fifo.display());
    assert!(text.contains(&expected), "{text}");
    assert_eq!(text.lines().last(), Some("1 passed, 1 failed"), "{text}");
}

#[test]
fn a_file_over_4_mib_is_refused_with_the_bound() {
    let dir = fresh_dir("big");
    let mut big = tiny("big");
    big.push_str(&" ".repeat(4 << 20));
    std::fs::write(dir.join("big.ron"), big).expect("write");
    let out = bin().args(["run"]).arg(&dir).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("at most 4194304 bytes (4 MiB)"), "{text}");
}

#[test]
fn encoding_errors_are_placed() {
    let dir = fresh_dir("encoding");
    let mut latin1 = tiny("caf\u{e9}").replace('\u{e9}', "?").into_bytes();
    let at = latin1.iter().position(|&b| b == b'?').expect("marker");
    latin1[at] = 0xe9;
    std::fs::write(dir.join("latin1.ron"), latin1).expect("write");
    std::fs::write(dir.join("bom.ron"), format!("\u{feff}{}", tiny("bom"))).expect("write");
    let out = bin().args(["run"]).arg(&dir).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let latin1 = format!(
        "{}:1:{}: invalid UTF-8 (byte 0xe9",
        dir.join("latin1.ron").display(),
        at + 1
    );
    assert!(text.contains(&latin1), "{text}");
    let bom = format!("{}:1:1: a byte order mark", dir.join("bom.ron").display());
    assert!(text.contains(&bom), "{text}");
}

#[test]
fn two_scenarios_with_one_name_are_an_error_naming_both() {
    let dir = fresh_dir("dup-names");
    std::fs::write(dir.join("a.ron"), tiny("same")).expect("write");
    std::fs::write(dir.join("b.ron"), tiny("same")).expect("write");
    let out = bin().args(["run"]).arg(&dir).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let expected = format!(
        "{}:1:16: scenario name 'same' is also the name of {}",
        dir.join("b.ron").display(),
        dir.join("a.ron").display()
    );
    assert!(text.contains(&expected), "{text}");
}
