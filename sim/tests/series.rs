//! The time series sampled over virtual time (`sim/src/series.rs`): they record what happened
//! (a run that sampled nothing fails here), agree with the checkers' own counts, stay bounded,
//! are the same for the same seed, and reach the JSON and HTML reports.

use std::path::{Path, PathBuf};
use std::process::Command;

use blksnap_reports::series::MAX_POINTS;
use blksnap_reports::{Plot, RunReport, TimeSeries};
use blksnap_sim::scenario::{load, run, Outcome, RunOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn outcome(rel: &str) -> Outcome {
    let scenario = load(&root().join(rel)).unwrap_or_else(|e| panic!("{e:#}"));
    run(&scenario, &RunOptions::default())
}

/// The last value of every line of `plot` named `name`, summed over devices.
fn total(series: &TimeSeries, plot: Plot, name: &str) -> f64 {
    series
        .plot(plot)
        .filter(|l| l.name == name)
        .map(|l| l.points.last().map_or(0.0, |p| p.1))
        .sum()
}

fn assert_bounded(series: &TimeSeries) {
    for line in &series.lines {
        assert!(
            line.points.len() <= MAX_POINTS,
            "{} on {}: {} points",
            line.name,
            line.device,
            line.points.len()
        );
        assert!(
            line.points.windows(2).all(|w| w[0].0 < w[1].0),
            "{} on {}: points out of time order",
            line.name,
            line.device
        );
        assert!(line.points.iter().all(|p| p.0 <= series.end_ns));
    }
}

/// A COW scenario: every write the storage checker judged is on the COW line, over time.
#[test]
fn cow_scenario_samples_its_copies() {
    let out = outcome("scenarios/spec/cow-5.9.ron");
    assert!(out.passed(), "{:?}", out.failures);
    let series = &out.series;
    let cow_points: usize = series.plot(Plot::Cow).map(|l| l.points.len()).sum();
    assert!(cow_points > 1, "COW sampled {cow_points} points");
    let judged = out.metrics["storage_writes_judged"];
    assert!(judged > 0.0);
    assert_eq!(total(series, Plot::Cow, "writes"), judged);
    // Filled counts distinct appended sectors written: never more than was appended.
    let (filled, appended) = (
        total(series, Plot::Storage, "filled"),
        total(series, Plot::Storage, "appended"),
    );
    assert!(
        0.0 < filled && filled <= appended,
        "filled {filled}, appended {appended}"
    );
    assert!(total(series, Plot::ImageIo, "reads") > 0.0, "image reads");
    assert!(series.windows.iter().any(|w| w.kind == "take"));
    assert!(series.windows.iter().any(|w| w.kind == "freeze"));
    assert_bounded(series);
}

/// The storage-events scenario: low-space events are marks at the times WAIT_EVENT returned
/// them, and the filled line is at the low-space level at the second one.
#[test]
fn storage_events_scenario_marks_low_space() {
    let out = outcome("scenarios/spec/events-6.7.ron");
    assert!(out.passed(), "{:?}", out.failures);
    let series = &out.series;
    let low: Vec<u64> = series
        .marks
        .iter()
        .filter(|m| m.kind == "low_space")
        .map(|m| m.at_ns)
        .collect();
    assert!(low.len() >= 2, "low-space marks: {:?}", series.marks);
    assert!(low.windows(2).all(|w| w[0] <= w[1]), "in time order");
    let level = series
        .plot(Plot::Storage)
        .find(|l| l.name == "low-space level")
        .expect("a low-space level line");
    let filled = series
        .plot(Plot::Storage)
        .find(|l| l.name == "filled" && l.device == level.device)
        .expect("a filled line on the same device");
    // At the second event (the first comes at creation) the filled count has reached the
    // level appended at that time, give or take the region the engine allocated (and counted)
    // but had not yet written: the sim counts a sector when the engine writes it.
    let at = |line: &blksnap_reports::Line, t: u64| {
        line.points
            .iter()
            .take_while(|p| p.0 <= t)
            .last()
            .map_or(0.0, |p| p.1)
    };
    assert!(
        at(filled, low[1]) >= 0.99 * at(level, low[1]),
        "filled {} below the level {} at the second low-space event",
        at(filled, low[1]),
        at(level, low[1])
    );
    assert_bounded(series);
}

/// Long runs stay bounded; the same seed gives the same series.
#[test]
fn bounded_and_deterministic() {
    let a = outcome("scenarios/upstream/2000-stretch.ron");
    let b = outcome("scenarios/upstream/2000-stretch.ron");
    assert_eq!(a.series, b.series);
    assert_eq!(a.digest, b.digest);
    assert!(a.series.samples() > 0);
    assert_bounded(&a.series);
}

/// The series reach the JSON report (and read back), and the HTML report plots them.
#[test]
fn series_reach_json_and_html() {
    let dir = std::env::temp_dir().join(format!("blksnap-series-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blksnap-sim"))
        .current_dir(root())
        .args(["run", "scenarios/spec/cow-5.9.ron", "--json"])
        .arg(dir.join("run.json"))
        .arg("--html")
        .arg(dir.join("run.html"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json = std::fs::read_to_string(dir.join("run.json")).unwrap();
    let report = RunReport::from_json(&json).unwrap();
    let series = report.runs[0].series.as_ref().expect("series in the JSON");
    assert!(series.samples() > 0);
    let html = std::fs::read_to_string(dir.join("run.html")).unwrap();
    for title in [
        Plot::Storage.title(),
        Plot::Cow.title(),
        Plot::ImageIo.title(),
    ] {
        assert!(html.contains(title), "no plot {title:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
