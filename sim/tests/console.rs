//! The console as a hostile file or a full disk meets it: names cannot
//! forge lines, and a stdout that cannot be written ends the run with a
//! message and exit 2 (not a panic), in every subcommand.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blksnap-sim"));
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    cmd
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blksnap-console-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn a_name_with_a_newline_cannot_forge_a_pass_line() {
    let path = temp("forge.ron");
    // A failing scenario whose name tries to print a PASS line of its own
    // and to colour the terminal.
    let text = r#"Scenario(name: "evil\nPASS  forged                                   seed=1\u{1b}[2K",
        devices: [(name: "d", sectors: 65536)],
        steps: [Read(target: Original("d"), sector: 0, sectors: 1, expect: Err("EIO"))])"#;
    std::fs::write(&path, text).expect("write");
    let out = bin().arg("run").arg(&path).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.iter().all(|l| !l.starts_with("PASS")), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "{stdout}");
    assert!(
        lines[0].starts_with(r"FAIL  evil\nPASS  forged") && lines[0].contains(r"\u{1b}[2K"),
        "{stdout}"
    );
}

/// Run with stdout on /dev/full: exit 2, the cause on stderr, no panic.
fn to_full_device(args: &[&str]) {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = bin()
        .args(args)
        .stdout(Stdio::from(full))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains("cannot write to stdout") && !stderr.contains("panicked"),
        "{args:?}: {stderr}"
    );
}

#[test]
fn a_full_stdout_is_exit_2_in_every_subcommand() {
    to_full_device(&["run", "scenarios/basic/errno-paths.ron"]);
    to_full_device(&["sweep", "scenarios/basic/errno-paths.ron", "--count", "1"]);
    to_full_device(&["abi"]);
    to_full_device(&["quirks"]);
    to_full_device(&["--help"]);
    let out = temp("snap-2.min.ron");
    let out = out.to_str().expect("utf-8 path");
    to_full_device(&[
        "shrink",
        "scenarios/bugs/snap-2.ron",
        "--budget",
        "3",
        "--out",
        out,
    ]);
}

#[test]
fn a_closed_pipe_stays_quiet() {
    let mut child = bin()
        .args(["run", "scenarios/basic"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    // Close the reading end at once: every line the bench prints fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
