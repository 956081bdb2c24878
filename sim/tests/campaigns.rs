//! Campaigns through the binary: `swarm` (same per-seed digests whatever
//! --jobs; a forced quirk is found, shrunk and grouped), `sweep` over
//! several files in shards, and `merge` of the shards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blksnap-sim"));
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    cmd
}

/// A fresh folder for one test.
fn fresh(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("blksnap-sim-campaigns-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn run(args: &[&str]) -> (Output, String) {
    let out = bin().args(args).output().expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("JSON")
}

/// (seed, digest, verdict) of every seed of a swarm summary.
fn per_seed(summary: &Value) -> Vec<(u64, String, String)> {
    summary["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["seed"].as_u64().expect("seed"),
                r["digest"].as_str().expect("digest").to_string(),
                r["verdict"].as_str().expect("verdict").to_string(),
            )
        })
        .collect()
}

#[test]
fn swarm_digests_do_not_depend_on_jobs() {
    let one = fresh("jobs1");
    let two = fresh("jobs2");
    for (dir, jobs) in [(&one, "1"), (&two, "2")] {
        let (out, text) = run(&[
            "swarm",
            "--seeds",
            "100..112",
            "--jobs",
            jobs,
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("12 passed, 0 failed"), "{text}");
    }
    let (a, b) = (
        json(&one.join("summary.json")),
        json(&two.join("summary.json")),
    );
    assert_eq!(a["schema_version"], 1);
    let (a, b) = (per_seed(&a), per_seed(&b));
    assert_eq!(a.len(), 12, "every seed judged");
    assert!(a.iter().all(|(_, digest, _)| digest.len() >= 16), "{a:?}");
    assert_eq!(a, b);
    // Different seeds are different configurations.
    let digests: std::collections::BTreeSet<_> = a.iter().map(|r| &r.1).collect();
    assert_eq!(digests.len(), 12);
}

/// A partition takes every n-th seed; the shards together are the range.
#[test]
fn swarm_partitions_cover_the_range_once() {
    let mut seeds = Vec::new();
    for k in 1..=3 {
        let dir = fresh(&format!("part{k}"));
        let part = format!("{k}/3");
        let (out, text) = run(&[
            "swarm",
            "--seeds",
            "200..207",
            "--partition",
            &part,
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{text}");
        seeds.extend(
            per_seed(&json(&dir.join("summary.json")))
                .into_iter()
                .map(|r| r.0),
        );
    }
    seeds.sort_unstable();
    assert_eq!(seeds, (200..207).collect::<Vec<_>>());
}

/// With B-IMG-1 forced on, the swarm finds the bug, groups its seeds,
/// and writes a shrunk scenario whose replay fails the same way.
#[test]
fn swarm_finds_shrinks_and_groups_a_forced_quirk() {
    let dir = fresh("quirk");
    let (out, text) = run(&[
        "swarm",
        "--seeds",
        "60..64",
        "--jobs",
        "2",
        "--quirk",
        "B-IMG-1",
        "--shrink-budget",
        "120",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let summary = json(&dir.join("summary.json"));
    let groups = summary["groups"].as_array().expect("groups");
    let group = groups
        .iter()
        .find(|g| g["checker"] == "point_in_time")
        .unwrap_or_else(|| panic!("no point_in_time group: {text}"));
    assert!(group["count"].as_u64() >= Some(1));
    let file = group["file"].as_str().expect("a shrunk file");
    let seed = group["seeds"][0].as_u64().expect("a seed").to_string();
    let before = group["steps_before"].as_u64().expect("steps before");
    let after = group["steps_after"].as_u64().expect("steps after");
    assert!(after < before, "{before} -> {after}");
    let (replay, replay_text) = run(&["run", file, "--seed", &seed]);
    assert_eq!(replay.status.code(), Some(1), "{replay_text}");
    assert!(replay_text.contains("[point_in_time"), "{replay_text}");
    // The fixed engine passes the shrunk trigger.
    let shrunk = std::fs::read_to_string(file).expect("shrunk file");
    let fixed = dir.join("fixed.ron");
    std::fs::write(
        &fixed,
        shrunk
            .replace("\"B-IMG-1\",", "")
            .replace("\"B-IMG-1\"", ""),
    )
    .expect("write");
    let (fixed_run, fixed_text) = run(&["run", fixed.to_str().unwrap(), "--seed", &seed]);
    assert_eq!(fixed_run.status.code(), Some(0), "{fixed_text}");
}

#[test]
fn swarm_refuses_bad_arguments() {
    for (args, wanted) in [
        (vec!["swarm", "--seeds", "5..5"], "expected A..B with A < B"),
        (
            vec!["swarm", "--seeds", "0..4", "--quirk", "B-NOPE-1"],
            "unknown quirk",
        ),
        (
            vec!["swarm", "--seeds", "0..4", "--partition", "4/3"],
            "expected k/n",
        ),
        (vec!["swarm"], "give --seeds A..B or --seconds N"),
        (vec!["swarm", "--seeds", "0..4", "--jobs", "0"], "--jobs 0"),
    ] {
        let (out, text) = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(wanted), "{args:?}: {text}");
    }
}

/// Three shards of a sweep over two folders, merged, equal the unsharded
/// sweep run for run; a baseline comparison of the two finds no change.
#[test]
fn sweep_shards_merge_into_the_whole_run() {
    let dir = fresh("sweep");
    let whole = dir.join("whole.json");
    let paths = ["scenarios/basic", "scenarios/spec"];
    let mut args = vec!["sweep"];
    args.extend(paths);
    args.extend([
        "--count",
        "3",
        "--jobs",
        "2",
        "--json",
        whole.to_str().unwrap(),
    ]);
    let (out, text) = run(&args);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let mut shards = Vec::new();
    for k in 1..=3 {
        let shard = dir.join(format!("shard{k}.json"));
        let part = format!("{k}/3");
        let mut args = vec!["sweep"];
        args.extend(paths);
        args.extend([
            "--count",
            "3",
            "--partition",
            &part,
            "--json",
            shard.to_str().unwrap(),
        ]);
        let (out, text) = run(&args);
        assert_eq!(out.status.code(), Some(0), "{text}");
        shards.push(shard);
    }
    let merged = dir.join("merged.json");
    let mut args = vec!["merge"];
    args.extend(shards.iter().map(|s| s.to_str().unwrap()));
    args.extend([
        "--json",
        merged.to_str().unwrap(),
        "--baseline",
        whole.to_str().unwrap(),
    ]);
    let (out, text) = run(&args);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("baseline: no change"), "{text}");
    let key = |v: &Value| -> Vec<(String, u64, String)> {
        v["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| {
                (
                    r["path"].as_str().unwrap().to_string(),
                    r["seed"].as_u64().unwrap(),
                    r["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (whole, merged) = (key(&json(&whole)), key(&json(&merged)));
    let files: usize = paths
        .iter()
        .map(|dir| {
            std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir))
                .expect("suite dir")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension() == Some("ron".as_ref()))
                })
                .count()
        })
        .sum();
    assert!(files >= 10, "only {files} files in {paths:?}");
    assert_eq!(whole.len(), files * 3, "{files} files x 3 seeds");
    assert_eq!(whole, merged);
    // A shard given twice overlaps: refused.
    let (out, text) = run(&[
        "merge",
        shards[0].to_str().unwrap(),
        shards[0].to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("already in an earlier shard"), "{text}");
    // A shard whose digests are of another hash (an older tool's) cannot
    // join: refused, not mixed into one report.
    let mut old = json(&shards[1]);
    old.as_object_mut().unwrap().remove("digest_hash");
    let old_path = dir.join("old.json");
    std::fs::write(&old_path, old.to_string()).unwrap();
    let (out, text) = run(&[
        "merge",
        shards[0].to_str().unwrap(),
        old_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("its digests are blake3, the first shard's xxh3-64"),
        "{text}"
    );
}

/// A report from a newer tool is refused, not misread.
#[test]
fn merge_refuses_a_newer_schema() {
    let dir = fresh("schema");
    let file = dir.join("new.json");
    std::fs::write(
        &file,
        r#"{"schema_version": 99, "tool_version": "9", "suite": "s", "runs": []}"#,
    )
    .expect("write");
    let (out, text) = run(&["merge", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("schema_version 99 is newer"), "{text}");
}

/// The single-file form keeps working and its output format.
#[test]
fn sweep_of_one_file_keeps_its_output() {
    let (out, text) = run(&[
        "sweep",
        "scenarios/bugs/img-1.ron",
        "--from",
        "0",
        "--count",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.lines().last(), Some("2 passed, 0 failed"), "{text}");
}
