//! The `blksnap-sim` command line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use blksnap_reports::{self as reports, RunReport, ScenarioRun, Verdict};
use clap::{Parser, Subcommand};

use crate::scenario::{self, Outcome, RunOptions};

#[derive(Parser, Debug)]
#[command(
    name = "blksnap-sim",
    version,
    about = "Deterministic simulator and test bench for the blksnap v2 snapshot engine"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every .ron scenario under the given paths (default: scenarios).
    Run {
        paths: Vec<PathBuf>,
        /// Override every scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Write JUnit XML, one testcase per scenario.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Write the run as JSON (usable later as --baseline).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a Markdown summary.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Write a self-contained HTML report with plots.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Compare with an earlier --json run and show regressions.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Print the last trace events of each failing scenario.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Run one scenario with many seeds; print each failing seed.
    Sweep {
        path: PathBuf,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        count: u64,
    },
    /// Shrink a failing scenario: drop steps and lower counts while the
    /// same checker still fails; write the smallest one.
    Shrink {
        path: PathBuf,
        #[arg(long)]
        seed: Option<u64>,
        /// The checker that must keep failing (default: the first failure's).
        #[arg(long)]
        checker: Option<String>,
        /// Where to write the result (default: PATH with .min.ron).
        #[arg(long)]
        out: Option<PathBuf>,
        /// At most this many runs.
        #[arg(long, default_value_t = 500)]
        budget: u32,
    },
    /// Print the ioctl numbers and struct layouts of the v2 ABI.
    Abi,
    /// List the v2 bugs that scenarios can switch on.
    Quirks,
}

/// Exit codes: 0 all passed, 1 a scenario failed, 2 bad input.
pub fn main_with(cli: Cli) -> i32 {
    match cli.command {
        Command::Run {
            paths,
            seed,
            junit,
            json,
            markdown,
            html,
            baseline,
            verbose,
        } => {
            let outputs = Outputs {
                junit,
                json,
                markdown,
                html,
                baseline,
            };
            run_command(&paths, seed, &outputs, verbose)
        }
        Command::Sweep { path, from, count } => sweep(&path, from, count),
        Command::Shrink {
            path,
            seed,
            checker,
            out,
            budget,
        } => shrink_command(&path, seed, checker, out, budget),
        Command::Abi => {
            print!("{}", blksnap_core::uapi::render_abi());
            0
        }
        Command::Quirks => {
            for (id, what) in blksnap_core::Quirks::ALL {
                println!("{id:<12} {what}");
            }
            0
        }
    }
}

struct Outputs {
    junit: Option<PathBuf>,
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
    html: Option<PathBuf>,
    baseline: Option<PathBuf>,
}

/// The one command that replays a run.
pub fn replay_command(path: &Path, seed: u64) -> String {
    format!(
        "cargo run --release -p blksnap-sim -- run {} --seed {seed}",
        path.display()
    )
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
type Loaded = (PathBuf, Result<scenario::Scenario, scenario::LoadError>);

/// Load every file; a scenario name used before in the run is an error
/// for the later file, naming both (reports and baselines key on names).
fn load_all(files: &[PathBuf]) -> Vec<Loaded> {
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

fn run_command(paths: &[PathBuf], seed: Option<u64>, outputs: &Outputs, verbose: bool) -> i32 {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        paths.to_vec()
    };
    let files = match collect_files(&paths) {
        Ok(files) if files.is_empty() => {
            eprintln!("error: no .ron scenario under {paths:?}");
            return 2;
        }
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let suite = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut report = RunReport::new(env!("CARGO_PKG_VERSION"), suite);
    let mut bad_input = false;
    for (file, loaded) in load_all(&files) {
        let run = run_one(&file, loaded, seed, verbose, &mut bad_input);
        report.runs.push(run);
    }
    let code = write_outputs(&report, outputs);
    let failed = report.runs.len() - report.passed();
    println!("{} passed, {} failed", report.passed(), failed);
    // 2: bad input; 1: a failure, or a regression against the baseline.
    if bad_input || code == 2 {
        2
    } else if failed > 0 || code == 1 {
        1
    } else {
        0
    }
}

fn run_one(
    file: &Path,
    loaded: Result<scenario::Scenario, scenario::LoadError>,
    seed: Option<u64>,
    verbose: bool,
    bad_input: &mut bool,
) -> ScenarioRun {
    let scenario = match loaded {
        Ok(scenario) => scenario,
        Err(e) => {
            *bad_input = true;
            println!("ERROR {e}");
            let mut run =
                ScenarioRun::new(file.display().to_string(), file.display().to_string(), 0);
            run.verdict = Verdict::Error;
            run.failures.push(reports::Failure {
                checker: "load".into(),
                message: e.to_string(),
                at_ns: None,
            });
            return run;
        }
    };
    let started = Instant::now();
    let outcome = scenario::run(
        &scenario,
        &RunOptions {
            seed,
            ..RunOptions::default()
        },
    );
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    print_outcome(file, &outcome, wall_ms, verbose);
    to_report(file, &outcome, wall_ms)
}

fn print_outcome(file: &Path, outcome: &Outcome, wall_ms: f64, verbose: bool) {
    let verdict = if outcome.passed() { "PASS" } else { "FAIL" };
    println!(
        "{verdict}  {:<40} seed={:<6} digest={}  ({:.1} ms virtual, {:.0} ms)",
        outcome.name,
        outcome.seed,
        outcome.digest,
        outcome.virtual_ns as f64 / 1e6,
        wall_ms
    );
    if outcome.passed() {
        if let Some(caught) = &outcome.caught_by {
            println!(
                "      (expected failure caught by [{}]: {})",
                caught.checker, caught.message
            );
        }
        return;
    }
    if let Some(note) = &outcome.verdict_note {
        println!("      {note}");
    }
    const SHOWN: usize = 10;
    for failure in outcome.failures.iter().take(SHOWN) {
        println!(
            "      [{}] at {} ns: {}",
            failure.checker, failure.at_ns, failure.message
        );
    }
    if outcome.failures.len() > SHOWN {
        let more = outcome.failures.len() - SHOWN;
        println!("      ... and {more} more (all of them in --json and --junit)");
    }
    if verbose {
        for line in &outcome.log {
            println!("      log {line}");
        }
        for line in &outcome.recent {
            println!("      | {line}");
        }
    }
    println!(
        "      seed {}; replay: {}",
        outcome.seed,
        replay_command(file, outcome.seed)
    );
}

fn to_report(file: &Path, outcome: &Outcome, wall_ms: f64) -> ScenarioRun {
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
    run.verdict = if outcome.passed() {
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
        })
        .collect();
    run
}

fn write_file(path: &Path, text: &str) -> bool {
    match std::fs::write(path, text) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            false
        }
    }
}

/// Write the requested reports; 2 if an output or the baseline failed.
fn write_outputs(report: &RunReport, outputs: &Outputs) -> i32 {
    let mut ok = true;
    let comparison = match &outputs.baseline {
        Some(path) => match load_baseline(path) {
            Ok(baseline) => Some(reports::compare(
                report,
                &baseline,
                &reports::Tolerance::default(),
            )),
            Err(e) => {
                eprintln!("error: baseline {}: {e}", path.display());
                return 2;
            }
        },
        None => None,
    };
    if let Some(comparison) = &comparison {
        if comparison.changes.is_empty() {
            println!("baseline: no change");
        }
        for change in &comparison.changes {
            let mark = if change.is_regression() {
                "REGRESSION"
            } else {
                "change"
            };
            println!("{mark}: {change}");
        }
    }
    if let Some(path) = &outputs.junit {
        ok &= write_file(path, &reports::render_junit(report));
    }
    if let Some(path) = &outputs.json {
        match report.to_json() {
            Ok(json) => ok &= write_file(path, &json),
            Err(e) => {
                eprintln!("error: {e}");
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

fn sweep(path: &Path, from: u64, count: u64) -> i32 {
    let scenario = match scenario::load(path) {
        Ok(s) => s,
        Err(e) => {
            println!("ERROR {e}");
            return 2;
        }
    };
    let mut failed = 0u64;
    if count == 0 {
        eprintln!("error: --count 0 runs nothing");
        return 2;
    }
    // Seeds are u64: the last one is --from + --count - 1, at most 2^64 - 1.
    let Some(last) = from.checked_add(count - 1) else {
        let most = u64::MAX - from + 1;
        eprintln!("error: --from {from} --count {count} passes the last seed {}: --count is at most {most} from there", u64::MAX);
        return 2;
    };
    for seed in from..=last {
        let outcome = scenario::run(
            &scenario,
            &RunOptions {
                seed: Some(seed),
                ..RunOptions::default()
            },
        );
        if !outcome.passed() {
            failed += 1;
            let why = match (&outcome.verdict_note, outcome.failures.first()) {
                (Some(note), _) => note.clone(),
                (None, Some(first)) => format!("[{}] {}", first.checker, first.message),
                (None, None) => "failed".to_string(),
            };
            println!("FAIL seed={seed} {why}");
            println!("      replay: {}", replay_command(path, seed));
        }
    }
    println!("{} passed, {} failed", count - failed, failed);
    i32::from(failed > 0)
}

fn shrink_command(
    path: &Path,
    seed: Option<u64>,
    checker: Option<String>,
    out: Option<PathBuf>,
    budget: u32,
) -> i32 {
    let scenario = match scenario::load(path) {
        Ok(s) => s,
        Err(e) => {
            println!("ERROR {e}");
            return 2;
        }
    };
    let seed = seed.unwrap_or(scenario.seed);
    let expected = scenario.expect_failure.as_ref().map(|e| e.checker.clone());
    let checker = match checker.or(expected) {
        Some(checker) if !crate::check::CHECKERS.contains(&checker.as_str()) => {
            eprintln!(
                "error: unknown checker '{checker}': expected one of {:?}",
                crate::check::CHECKERS
            );
            return 2;
        }
        Some(checker) => checker,
        None => {
            let outcome = scenario::run(
                &scenario,
                &RunOptions {
                    seed: Some(seed),
                    ..RunOptions::default()
                },
            );
            match outcome.failures.first() {
                Some(first) => first.checker.clone(),
                None => {
                    println!(
                        "{} passes at seed {seed}: nothing to shrink",
                        path.display()
                    );
                    return 1;
                }
            }
        }
    };
    match crate::shrink::shrink(&scenario, seed, &checker, budget) {
        Ok(shrunk) => {
            // Beside the current directory, not in the suite it came from.
            let stem = path
                .file_stem()
                .map_or("scenario".into(), |s| s.to_string_lossy().into_owned());
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{stem}.min.ron")));
            if !write_file(&out, &shrunk.text) {
                return 2;
            }
            println!(
                "shrunk {} steps to {} in {} runs; still fails [{checker}] at seed {seed}",
                shrunk.steps_before, shrunk.steps_after, shrunk.runs
            );
            let absolute = std::path::absolute(&out).unwrap_or(out.clone());
            println!(
                "wrote {}; replay: {}",
                out.display(),
                replay_command(&absolute, seed)
            );
            0
        }
        Err(e) => {
            println!("{e}");
            1
        }
    }
}
