//! `blksnap-sim sweep`: scenario files times seeds, on worker threads,
//! sharded with `--partition k/n`, written as a run report (`--json`)
//! that `blksnap-sim merge` combines across shards.
//!
//! Fault model: none of its own; each run is one whole simulation, and
//! the order of the results is the order of the (file, seed) list,
//! whatever the number of workers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use blksnap_reports::{RunReport, ScenarioRun};

use crate::console::{replay_command, say_line, warn};
use crate::scenario::{self, Outcome, RunOptions, Scenario};
use crate::suite::{bench_error, collect_files, load_all, to_report};

use super::campaign::Partition;

pub struct SweepArgs {
    pub paths: Vec<PathBuf>,
    pub from: u64,
    pub count: u64,
    pub jobs: usize,
    pub partition: Option<String>,
    pub json: Option<PathBuf>,
}

/// One (file, seed) of the sweep and what it gave.
struct Job {
    file: usize,
    seed: u64,
}

type Ran = Result<(Outcome, f64), String>;

fn seeds(from: u64, count: u64) -> Result<std::ops::RangeInclusive<u64>, String> {
    if count == 0 {
        return Err("--count 0 runs nothing".into());
    }
    // Seeds are u64: the last one is --from + --count - 1, at most 2^64 - 1.
    let last = from.checked_add(count - 1).ok_or_else(|| {
        let most = u64::MAX - from + 1;
        format!(
            "--from {from} --count {count} passes the last seed {}: --count is at most {most} from there",
            u64::MAX
        )
    })?;
    Ok(from..=last)
}

/// Load every file; `None` (after printing each error) if one fails.
fn load(paths: &[PathBuf]) -> Option<Vec<(PathBuf, Scenario)>> {
    let files = match collect_files(paths) {
        Ok(files) if files.is_empty() => {
            warn(&format!("error: no .ron scenario under {paths:?}"));
            return None;
        }
        Ok(files) => files,
        Err(e) => {
            warn(&format!("error: {e}"));
            return None;
        }
    };
    let mut loaded = Vec::new();
    let mut ok = true;
    for (file, result) in load_all(&files) {
        match result {
            Ok(s) => loaded.push((file, s)),
            Err(e) => {
                crate::console::say_load_error(&e);
                ok = false;
            }
        }
    }
    ok.then_some(loaded)
}

pub fn sweep_command(args: &SweepArgs) -> i32 {
    let seeds = match seeds(args.from, args.count) {
        Ok(seeds) => seeds,
        Err(e) => {
            warn(&format!("error: {e}"));
            return 2;
        }
    };
    let partition = match args.partition.as_deref().map(Partition::parse) {
        None => Partition::WHOLE,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            warn(&format!("error: {e}"));
            return 2;
        }
    };
    if args.jobs == 0 {
        warn("error: --jobs 0 runs nothing: at least 1");
        return 2;
    }
    let Some(scenarios) = load(&args.paths) else {
        return 2;
    };
    let jobs: Vec<Job> = (0..scenarios.len())
        .flat_map(|file| seeds.clone().map(move |seed| Job { file, seed }))
        .enumerate()
        .filter(|(i, _)| partition.takes(*i as u64))
        .map(|(_, job)| job)
        .collect();
    let results = run_jobs(&scenarios, &jobs, args.jobs);
    report(&scenarios, &jobs, results, args)
}

/// Run the jobs on `workers` threads; results in job order.
fn run_jobs(scenarios: &[(PathBuf, Scenario)], jobs: &[Job], workers: usize) -> Vec<Ran> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(jobs.len()));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(index) else {
                    break;
                };
                let options = RunOptions {
                    seed: Some(job.seed),
                    ..RunOptions::default()
                };
                let started = Instant::now();
                let ran = crate::panics::guard(|| scenario::run(&scenarios[job.file].1, &options))
                    .map(|o| (o, started.elapsed().as_secs_f64() * 1000.0));
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((index, ran));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, ran)| ran).collect()
}

fn report(
    scenarios: &[(PathBuf, Scenario)],
    jobs: &[Job],
    results: Vec<Ran>,
    args: &SweepArgs,
) -> i32 {
    let several = scenarios.len() > 1;
    let suite = args
        .paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut report = RunReport::new(env!("CARGO_PKG_VERSION"), format!("sweep {suite}"));
    let (mut failed, mut bench) = (0usize, 0usize);
    for (job, ran) in jobs.iter().zip(results) {
        let (path, scenario) = &scenarios[job.file];
        let shown = if several {
            format!("{} ", path.display())
        } else {
            String::new()
        };
        let run = match ran {
            Err(message) => {
                failed += 1;
                bench += 1;
                say_line(&format!("ERROR {shown}seed={} {message}", job.seed));
                crash_run(path, scenario, job.seed, message)
            }
            Ok((outcome, wall_ms)) => {
                if !outcome.passed() {
                    failed += 1;
                    bench += usize::from(bench_error(&outcome));
                    say_line(&format!("FAIL {shown}seed={} {}", job.seed, why(&outcome)));
                    say_line(&format!("      replay: {}", replay_command(path, job.seed)));
                }
                to_report(path, &outcome, wall_ms)
            }
        };
        report.runs.push(run);
    }
    let mut code = if bench > 0 { 2 } else { i32::from(failed > 0) };
    if let Some(path) = &args.json {
        match report.to_json() {
            Ok(json) if crate::console::write_file(path, &json) => {}
            Ok(_) => code = 2,
            Err(e) => {
                warn(&format!("error: {e}"));
                code = 2;
            }
        }
    }
    let passed = jobs.len() - failed;
    if bench > 0 {
        say_line(&format!(
            "{passed} passed, {failed} failed ({bench} with a bench error: a fault of the simulator, not the engine)"
        ));
    } else {
        say_line(&format!("{passed} passed, {failed} failed"));
    }
    code
}

fn why(outcome: &Outcome) -> String {
    match (&outcome.verdict_note, outcome.failures.first()) {
        (Some(note), _) => note.clone(),
        (None, Some(first)) => format!(
            "[{}, {}] {}",
            first.checker,
            first.category.as_str(),
            first.message
        ),
        (None, None) => "failed".to_string(),
    }
}

fn crash_run(path: &Path, scenario: &Scenario, seed: u64, message: String) -> ScenarioRun {
    let mut run = crate::suite::bench_error_run(path, &scenario.name, seed, message);
    run.replay = replay_command(path, seed);
    run
}
