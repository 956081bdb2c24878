//! Scenario files in, reports out: what `run`, `sweep` and `merge` share.
//! Finding and loading the files, turning an outcome into a report run,
//! writing the requested reports, and the exit code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use blksnap_reports::{self as reports, RunReport, ScenarioRun, Verdict};

use crate::console::{replay_command, say_line, warn, write_file};
use crate::kernel::BENCH_CHECKER;
use crate::scenario::runner::recent_line;
use crate::scenario::{self, Outcome};
use crate::trace::TraceEvent;

/// The reports a command writes, each when its path is given.
pub struct Outputs {
    pub junit: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub baseline: Option<PathBuf>,
}

/// Every .ron file under the paths, sorted, so runs are in a stable order.
/// Each file is listed once, however many links lead to it, and a
/// directory reached again through a link (a loop) is not walked again.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut walk = Walk::default();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("{}: no such file or directory", path.display())
            }
            _ => format!("{}: {e}", path.display()),
        })?;
        if meta.is_dir() {
            walk.dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        } else {
            // Named on the command line: whatever it is, the loader says
            // what is wrong with it (a FIFO is refused, not read).
            walk.file(path);
        }
    }
    walk.files.sort();
    Ok(walk.files)
}

/// Files and directories seen, by their canonical path.
#[derive(Default)]
struct Walk {
    files: Vec<PathBuf>,
    seen_files: BTreeSet<PathBuf>,
    seen_dirs: BTreeSet<PathBuf>,
}

impl Walk {
    fn dir(&mut self, dir: &Path) -> std::io::Result<()> {
        if !self.seen_dirs.insert(std::fs::canonicalize(dir)?) {
            return Ok(());
        }
        let mut entries = std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?;
        // The first path to a file or directory is the one shown.
        entries.sort();
        for path in entries {
            if path.is_dir() {
                self.dir(&path)?;
            } else if path.extension().is_some_and(|e| e == "ron") {
                self.file(&path);
            }
        }
        Ok(())
    }

    /// A broken link has no canonical path: it is listed, and fails to load.
    fn file(&mut self, path: &Path) {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.seen_files.insert(key) {
            self.files.push(path.to_path_buf());
        }
    }
}

/// A scenario file, loaded or not.
pub type Loaded = (PathBuf, Result<scenario::Scenario, scenario::LoadError>);

/// Load every file; a scenario name used before in the run is an error
/// for the later file, naming both (reports and baselines key on names).
pub fn load_all(files: &[PathBuf]) -> Vec<Loaded> {
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut loaded = Vec::new();
    for file in files {
        let mut result = scenario::load(file);
        if let Ok(s) = &result {
            if let Some(first) = names.get(&s.name) {
                result = Err(scenario::load::duplicate_name(file, &s.name, first));
            } else {
                names.insert(s.name.clone(), file.clone());
            }
        }
        loaded.push((file.clone(), result));
    }
    loaded
}

/// 2: bad input, a bench error or an output not written; 1: a failure,
/// or a regression against the baseline; else 0.
pub fn exit_code(error: bool, failed: bool) -> i32 {
    if error {
        2
    } else {
        i32::from(failed)
    }
}

/// The run panicked outside any task: an error of the bench, reported
/// like a bench error of a task (exit 2), and the next scenario runs.
pub fn bench_crash(file: &Path, name: &str, message: String) -> ScenarioRun {
    say_line(&format!("ERROR {name}: {message}"));
    bench_error_run(file, name, 0, message)
}

/// A run the bench could not finish (`run`'s crash, `sweep`'s panic at a
/// seed): verdict Error, one bench failure with no time. The one place
/// such a run is built, so every report shows it alike.
pub fn bench_error_run(file: &Path, name: &str, seed: u64, message: String) -> ScenarioRun {
    let mut run = ScenarioRun::new(name.to_string(), file.display().to_string(), seed);
    run.verdict = Verdict::Error;
    run.failures.push(reports::Failure {
        checker: BENCH_CHECKER.into(),
        message,
        at_ns: None,
        category: reports::Category::BenchError,
    });
    run
}

/// The bench itself failed (a panic outside engine code): the run is an
/// error of the tool, not a verdict on the engine.
pub fn bench_error(outcome: &Outcome) -> bool {
    outcome.failures.iter().any(|f| f.checker == BENCH_CHECKER)
}

pub fn to_report(file: &Path, outcome: &Outcome, wall_ms: f64) -> ScenarioRun {
    let mut run = ScenarioRun::new(
        outcome.name.clone(),
        file.display().to_string(),
        outcome.seed,
    );
    run.digest = outcome.digest.clone();
    run.replay = replay_command(file, outcome.seed);
    run.virtual_ns = outcome.virtual_ns;
    run.steps = outcome.steps;
    run.events = outcome.trace_events;
    run.metrics = outcome.metrics.clone();
    run.metrics.insert("wall_ms".into(), wall_ms);
    run.series = Some(outcome.series.clone());
    if !outcome.passed() {
        run.recent_events = trace_that_matters(&outcome.recent_trace);
    }
    run.verdict = if bench_error(outcome) {
        Verdict::Error
    } else if outcome.passed() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    run.failures = outcome
        .failures
        .iter()
        .map(|f| reports::Failure {
            checker: f.checker.clone(),
            message: f.message.clone(),
            at_ns: Some(f.at_ns),
            category: f.category,
        })
        .collect();
    run.caught_by = outcome.caught_by.as_ref().map(|f| reports::Failure {
        checker: f.checker.clone(),
        message: f.message.clone(),
        at_ns: Some(f.at_ns),
        category: f.category,
    });
    run
}

/// The last trace lines worth reading in a failure report (at most 40).
fn trace_that_matters(recent: &[(u64, TraceEvent)]) -> Vec<String> {
    const SHOWN: usize = 40;
    let kept: Vec<&(u64, TraceEvent)> = recent.iter().filter(|(_, e)| matters(e)).collect();
    let skip = kept.len().saturating_sub(SHOWN);
    kept.into_iter().skip(skip).map(recent_line).collect()
}

/// Whether an event says something about what went wrong: scheduler
/// polls, clock advances, task births and deaths, and allocations and bio
/// completions that succeeded do not. No catch-all arm: a new event kind
/// must be classified here.
pub fn matters(event: &TraceEvent) -> bool {
    match event {
        TraceEvent::Poll { .. }
        | TraceEvent::TimeAdvance { .. }
        | TraceEvent::TaskSpawn { .. }
        | TraceEvent::TaskExit { .. } => false,
        TraceEvent::Alloc { ok, .. } | TraceEvent::BioEnd { ok, .. } => !ok,
        TraceEvent::BioSubmit { .. }
        | TraceEvent::Filter { .. }
        | TraceEvent::Ioctl { .. }
        | TraceEvent::Event { .. }
        | TraceEvent::Freeze { .. }
        | TraceEvent::Thaw { .. }
        | TraceEvent::Step { .. }
        | TraceEvent::Warn { .. }
        | TraceEvent::Failure { .. } => true,
    }
}

/// Write the requested reports; 2 if an output or the baseline failed.
pub fn write_outputs(report: &RunReport, outputs: &Outputs) -> i32 {
    let mut ok = true;
    let comparison = match &outputs.baseline {
        Some(path) => match load_baseline(path) {
            Ok(baseline) => Some(reports::compare(
                report,
                &baseline,
                &reports::Tolerance::default(),
            )),
            Err(e) => {
                warn(&format!("error: baseline {}: {e}", path.display()));
                return 2;
            }
        },
        None => None,
    };
    if let Some(comparison) = &comparison {
        if let Some(note) = &comparison.digests_not_compared {
            say_line(&format!("baseline: {note}"));
        }
        if comparison.changes.is_empty() {
            say_line("baseline: no change");
        }
        for change in &comparison.changes {
            let mark = if change.is_regression() {
                "REGRESSION"
            } else {
                "change"
            };
            say_line(&format!("{mark}: {change}"));
        }
    }
    if let Some(path) = &outputs.junit {
        ok &= write_file(path, &reports::render_junit(report));
    }
    if let Some(path) = &outputs.json {
        match report.to_json() {
            Ok(json) => ok &= write_file(path, &json),
            Err(e) => {
                warn(&format!("error: {e}"));
                ok = false;
            }
        }
    }
    if let Some(path) = &outputs.markdown {
        ok &= write_file(path, &reports::render_markdown(report, comparison.as_ref()));
    }
    if let Some(path) = &outputs.html {
        ok &= write_file(path, &reports::render_html(report, comparison.as_ref()));
    }
    if !ok {
        return 2;
    }
    if comparison.is_some_and(|c| c.has_regressions()) {
        return 1;
    }
    0
}

fn load_baseline(path: &Path) -> Result<RunReport, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    RunReport::from_json(&text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routine events are dropped, failed allocations and bios and every
    /// ioctl are kept, and only the last 40 kept ones are shown, in order.
    #[test]
    fn the_trace_that_matters_drops_routine_events_and_keeps_the_last_forty() {
        let mut recent = vec![
            (1, TraceEvent::Poll { task: 1 }),
            (
                2,
                TraceEvent::Alloc {
                    site: "a",
                    ok: true,
                },
            ),
            (
                3,
                TraceEvent::Alloc {
                    site: "b",
                    ok: false,
                },
            ),
            (4, TraceEvent::BioEnd { id: 7, ok: true }),
            (5, TraceEvent::BioEnd { id: 8, ok: false }),
        ];
        let lines = trace_that_matters(&recent);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], recent_line(&recent[2]));
        assert_eq!(lines[1], recent_line(&recent[4]));
        recent.extend((0..50).map(|i| (10 + i, TraceEvent::Ioctl { cmd: 1, result: 0 })));
        let lines = trace_that_matters(&recent);
        assert_eq!(lines.len(), 40);
        assert_eq!(lines[39], recent_line(&recent[54]));
    }
}
