//! The `blksnap-sim` command line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use blksnap_reports::{self as reports, RunReport, ScenarioRun, Verdict};
use clap::{Parser, Subcommand};

use crate::kernel::BENCH_CHECKER;
use crate::scenario::{self, Outcome, RunOptions};

/// Print one console line. Everything in it that a file or a file name
/// chose (names, messages, paths) is escaped, so no scenario can print a
/// line of its own (a forged `PASS`) or drive the terminal.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::say_line(&format!($($arg)*))
    };
}

/// A line on stderr, escaped as `say!` escapes.
macro_rules! esay {
    ($($arg:tt)*) => {
        $crate::cli::warn(&format!($($arg)*))
    };
}

/// A control character (a newline, ESC, a bidi override) as `\n`,
/// `\u{1b}`, ...; other text unchanged.
pub fn console_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that reorder the text around them on a terminal.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// Write a line to stdout, escaped; see [`write_stdout`] for errors.
pub fn say_line(line: &str) {
    let mut text = console_escape(line);
    text.push('\n');
    write_stdout(&text);
}

/// Write trusted text (the ABI table) as it is. A reader that went away
/// (`| head`) ends the process quietly, as SIGPIPE ends a C tool; any
/// other write error (a full disk) ends it with a message and exit 2.
pub fn write_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let result = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        warn(&format!("error: cannot write to stdout: {e}"));
        std::process::exit(2);
    }
}

/// A line on stderr, escaped; nothing more can be done if that fails.
pub fn warn(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{}", console_escape(line));
}

#[derive(Parser, Debug)]
#[command(
    name = "blksnap-sim",
    version,
    about = "Deterministic simulator and test bench for the blksnap v2 snapshot engine",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every .ron scenario under the given paths (default: scenarios).
    #[command(after_help = EXIT_CODES)]
    Run {
        /// Scenario files, or directories searched for .ron files
        /// (default: scenarios).
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
    /// Run scenarios with many seeds; print each failing seed.
    #[command(after_help = EXIT_CODES)]
    Sweep {
        /// Scenario files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many consecutive seeds to run.
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Worker threads; results do not depend on it.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Take every n-th (file, seed) run: shard k of n (e.g. 2/3).
        #[arg(long)]
        partition: Option<String>,
        /// Write the runs as a JSON run report (for `merge`, `--baseline`).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Combine the JSON run reports of shards into one; compare it with a
    /// baseline.
    Merge {
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        junit: Option<PathBuf>,
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Compare with an earlier JSON report; a regression exits 1.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// Shrink a failing scenario: drop steps and lower counts while the
    /// same checker still fails; write the smallest one.
    #[command(after_help = EXIT_CODES)]
    Shrink {
        /// The failing scenario file.
        path: PathBuf,
        /// The seed that fails (default: the scenario's own seed).
        #[arg(long)]
        seed: Option<u64>,
        /// The checker that must keep failing (default: the first failure's).
        #[arg(long)]
        checker: Option<String>,
        /// Where to write the result (default: STEM.min.ron in the current
        /// directory, STEM being the scenario file name without .ron).
        #[arg(long)]
        out: Option<PathBuf>,
        /// At most this many runs.
        #[arg(long, default_value_t = 500)]
        budget: u32,
    },
    /// Swarm testing: each seed draws a whole configuration (devices,
    /// fs model, parameters, scheduler, faults, workload), runs it with
    /// every checker on; failures are shrunk and grouped.
    Swarm {
        /// Seeds A..B (B excluded).
        #[arg(long)]
        seeds: Option<String>,
        /// Run seeds from --from on for this many seconds of wall time.
        #[arg(long)]
        seconds: Option<u64>,
        /// First seed of a --seconds campaign.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Worker threads; results do not depend on it.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Take every n-th seed: shard k of n (e.g. 2/3).
        #[arg(long)]
        partition: Option<String>,
        /// Force this v2 bug on in every configuration (repeatable).
        #[arg(long = "quirk")]
        quirks: Vec<String>,
        /// Output folder: shrunk failures and summary.json.
        #[arg(long, default_value = "swarm-out")]
        out: PathBuf,
        /// At most this many runs to shrink one failure group.
        #[arg(long, default_value_t = 200)]
        shrink_budget: u32,
    },
    /// Print the ioctl numbers and struct layouts of the v2 ABI.
    Abi,
    /// List the v2 bugs that scenarios can switch on.
    Quirks,
    /// Measure the speed figures (issue 10) beside the host's memcpy.
    Bench {
        /// Only the figure with this key (seeds, non-cow, cow, oracle,
        /// campaign, 1pib).
        #[arg(long)]
        only: Option<String>,
    },
}

/// A load error: its `FILE:LINE:COL: message` line, then the source line
/// and caret, each line escaped on its own.
pub(crate) fn say_load_error(e: &scenario::LoadError) {
    let shown = format!("{e:#}");
    let mut lines = shown.lines();
    say!("ERROR {}", lines.next().unwrap_or_default());
    for line in lines {
        say!("{line}");
    }
}

/// Shown under every `--help`, so the exit codes are documented where the
/// user looks.
const EXIT_CODES: &str = "Exit codes:
  0    every scenario passed (a bug scenario passes when its checker catches the bug)
  1    a scenario failed, `--baseline` found a regression, or `shrink` found
       nothing to shrink
  2    bad input (a scenario that does not load, a bad option), a bench error,
       or an output file that cannot be written
  141  stdout was closed early (e.g. piped into `head`)";

/// Exit codes: 0 all passed, 1 a scenario failed, 2 bad input, a bench
/// error (a panic outside engine code) or an output that cannot be written.
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
        Command::Sweep {
            paths,
            from,
            count,
            jobs,
            partition,
            json,
        } => crate::swarm::sweep::sweep_command(&crate::swarm::sweep::SweepArgs {
            paths,
            from,
            count,
            jobs,
            partition,
            json,
        }),
        Command::Merge {
            inputs,
            json,
            junit,
            markdown,
            baseline,
        } => crate::swarm::merge::merge_command(&crate::swarm::merge::MergeArgs {
            inputs,
            json,
            junit,
            markdown,
            baseline,
        }),
        Command::Shrink {
            path,
            seed,
            checker,
            out,
            budget,
        } => shrink_command(&path, seed, checker, out, budget),
        Command::Swarm {
            seeds,
            seconds,
            from,
            jobs,
            partition,
            quirks,
            out,
            shrink_budget,
        } => crate::swarm::command::swarm_command(&crate::swarm::command::SwarmArgs {
            seeds,
            seconds,
            from,
            jobs,
            partition,
            quirks,
            out,
            shrink_budget,
        }),
        Command::Abi => {
            write_stdout(&blksnap_core::uapi::render_abi());
            0
        }
        Command::Bench { only } => crate::bench::bench_command(only.as_deref()),
        Command::Quirks => {
            for (id, what) in blksnap_core::Quirks::ALL {
                say!("{id:<12} {what}");
            }
            0
        }
    }
}

pub(crate) struct Outputs {
    pub(crate) junit: Option<PathBuf>,
    pub(crate) json: Option<PathBuf>,
    pub(crate) markdown: Option<PathBuf>,
    pub(crate) html: Option<PathBuf>,
    pub(crate) baseline: Option<PathBuf>,
}

/// The one command that replays a run, for where the user is: this binary
/// (by name when it is the one on PATH, else by its full path) and the
/// scenario path exactly as the user gave it, both quoted for a POSIX shell.
pub fn replay_command(path: &Path, seed: u64) -> String {
    format!(
        "{} run {} --seed {seed}",
        shell_quote(&this_program()),
        shell_quote(&path.display().to_string())
    )
}

/// `blksnap-sim` when PATH finds this very binary under that name (an
/// installed one); otherwise the running binary's path.
fn this_program() -> String {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "blksnap-sim".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .filter_map(|dir| std::fs::canonicalize(dir.join("blksnap-sim")).ok())
            .next()
            .is_some_and(|found| found == exe)
    });
    if on_path {
        "blksnap-sim".into()
    } else {
        exe.display().to_string()
    }
}

/// A word the shell reads back unchanged: bare when it is plain, else in
/// single quotes (a quote inside written as '\'').
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=@%+-,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
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
pub(crate) type Loaded = (PathBuf, Result<scenario::Scenario, scenario::LoadError>);

/// Load every file; a scenario name used before in the run is an error
/// for the later file, naming both (reports and baselines key on names).
pub(crate) fn load_all(files: &[PathBuf]) -> Vec<Loaded> {
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
            esay!("error: no .ron scenario under {paths:?}");
            return 2;
        }
        Ok(files) => files,
        Err(e) => {
            esay!("error: {e}");
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
    let bench = report
        .runs
        .iter()
        .filter(|r| r.failures.iter().any(|f| f.checker == BENCH_CHECKER))
        .count();
    if bench > 0 {
        say!(
            "{} passed, {failed} failed ({bench} with a bench error: a fault of the simulator, not the engine)",
            report.passed()
        );
    } else {
        say!("{} passed, {failed} failed", report.passed());
    }
    exit_code(bad_input || bench > 0 || code == 2, failed > 0 || code == 1)
}

/// 2: bad input, a bench error or an output not written; 1: a failure,
/// or a regression against the baseline; else 0.
pub(crate) fn exit_code(error: bool, failed: bool) -> i32 {
    if error {
        2
    } else {
        i32::from(failed)
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
            say_load_error(&e);
            let mut run =
                ScenarioRun::new(file.display().to_string(), file.display().to_string(), 0);
            run.verdict = Verdict::Error;
            run.failures.push(reports::Failure {
                checker: "load".into(),
                message: e.to_string(),
                at_ns: None,
                category: reports::Category::BenchError,
            });
            return run;
        }
    };
    let started = Instant::now();
    let options = RunOptions {
        seed,
        ..RunOptions::default()
    };
    let outcome = match crate::panics::guard(|| scenario::run(&scenario, &options)) {
        Ok(outcome) => outcome,
        Err(message) => return bench_crash(file, &scenario.name, message),
    };
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    print_outcome(file, &outcome, wall_ms, verbose);
    to_report(file, &outcome, wall_ms)
}

/// The run panicked outside any task: an error of the bench, reported
/// like a bench error of a task (exit 2), and the next scenario runs.
pub(crate) fn bench_crash(file: &Path, name: &str, message: String) -> ScenarioRun {
    say!("ERROR {name}: {message}");
    let mut run = ScenarioRun::new(name.to_string(), file.display().to_string(), 0);
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
pub(crate) fn bench_error(outcome: &Outcome) -> bool {
    outcome.failures.iter().any(|f| f.checker == BENCH_CHECKER)
}

fn print_outcome(file: &Path, outcome: &Outcome, wall_ms: f64, verbose: bool) {
    let verdict = if bench_error(outcome) {
        "ERROR"
    } else if outcome.passed() {
        "PASS"
    } else {
        "FAIL"
    };
    say!(
        "{verdict}  {:<40} seed={:<6} digest={}  ({:.1} ms virtual, {:.0} ms)",
        outcome.name,
        outcome.seed,
        outcome.digest,
        outcome.virtual_ns as f64 / 1e6,
        wall_ms
    );
    if outcome.passed() {
        if let Some(caught) = &outcome.caught_by {
            say!(
                "      (expected failure caught by [{}, {}]: {})",
                caught.checker,
                caught.category.as_str(),
                caught.message
            );
        }
        print_fault_caused(outcome);
        return;
    }
    if let Some(note) = &outcome.verdict_note {
        say!("      {note}");
    }
    const SHOWN: usize = 10;
    for failure in outcome.failures.iter().take(SHOWN) {
        say!(
            "      [{}, {}] at {} ns: {}",
            failure.checker,
            failure.category.as_str(),
            failure.at_ns,
            failure.message
        );
    }
    if outcome.failures.len() > SHOWN {
        let more = outcome.failures.len() - SHOWN;
        say!("      ... and {more} more (all of them in --json and --junit)");
    }
    if verbose {
        for line in &outcome.log {
            say!("      log {line}");
        }
        for line in &outcome.recent {
            say!("      | {line}");
        }
    }
    say!(
        "      seed {}; replay: {}",
        outcome.seed,
        replay_command(file, outcome.seed)
    );
}

/// A passing run may still show failures a declared fault caused (the
/// scenario allows undetected corruption): say so, with the first one.
fn print_fault_caused(outcome: &Outcome) {
    use crate::check::verdict::Category;
    let caused: Vec<_> = outcome
        .failures
        .iter()
        .filter(|f| f.category == Category::DeclaredFault)
        .collect();
    if let Some(first) = caused.first() {
        say!(
            "      ({} failures {}, as the scenario allows (device_fault_corruption); first [{}]: {})",
            caused.len(),
            Category::DeclaredFault.as_str(),
            first.checker,
            first.message
        );
    }
}

pub(crate) fn to_report(file: &Path, outcome: &Outcome, wall_ms: f64) -> ScenarioRun {
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
        run.recent_events = trace_that_matters(&outcome.recent);
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
            category: report_category(f),
        })
        .collect();
    run
}

/// The last trace lines worth reading in a failure report: scheduler polls, clock advances,
/// allocations and bio completions that succeeded say nothing about what went wrong.
fn trace_that_matters(recent: &[String]) -> Vec<String> {
    const SHOWN: usize = 40;
    let matters = |line: &&String| {
        let event = line.split_whitespace().nth(1).unwrap_or_default();
        let routine = matches!(event, "Poll" | "TimeAdvance" | "TaskSpawn" | "TaskExit")
            || (matches!(event, "Alloc" | "BioEnd") && line.contains("ok: true"));
        !routine
    };
    let kept: Vec<String> = recent.iter().filter(matters).cloned().collect();
    let skip = kept.len().saturating_sub(SHOWN);
    kept.into_iter().skip(skip).collect()
}

/// A failure's category as reports name it; the bench's own failures
/// are no verdict on the engine.
fn report_category(f: &crate::kernel::Failure) -> reports::Category {
    use crate::check::verdict::Category;
    match f.category {
        _ if f.checker == BENCH_CHECKER => reports::Category::BenchError,
        Category::Engine => reports::Category::Engine,
        Category::DeclaredFault => reports::Category::DeclaredFault,
        Category::Expected => reports::Category::Expected,
    }
}

pub(crate) fn write_file(path: &Path, text: &str) -> bool {
    match std::fs::write(path, text) {
        Ok(()) => true,
        Err(e) => {
            esay!("error: cannot write {}: {e}", path.display());
            false
        }
    }
}

/// Write the requested reports; 2 if an output or the baseline failed.
pub(crate) fn write_outputs(report: &RunReport, outputs: &Outputs) -> i32 {
    let mut ok = true;
    let comparison = match &outputs.baseline {
        Some(path) => match load_baseline(path) {
            Ok(baseline) => Some(reports::compare(
                report,
                &baseline,
                &reports::Tolerance::default(),
            )),
            Err(e) => {
                esay!("error: baseline {}: {e}", path.display());
                return 2;
            }
        },
        None => None,
    };
    if let Some(comparison) = &comparison {
        if comparison.changes.is_empty() {
            say!("baseline: no change");
        }
        for change in &comparison.changes {
            let mark = if change.is_regression() {
                "REGRESSION"
            } else {
                "change"
            };
            say!("{mark}: {change}");
        }
    }
    if let Some(path) = &outputs.junit {
        ok &= write_file(path, &reports::render_junit(report));
    }
    if let Some(path) = &outputs.json {
        match report.to_json() {
            Ok(json) => ok &= write_file(path, &json),
            Err(e) => {
                esay!("error: {e}");
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
            say_load_error(&e);
            return 2;
        }
    };
    let seed = seed.unwrap_or(scenario.seed);
    let expected = scenario.expect_failure.as_ref().map(|e| e.checker.clone());
    let checker = match checker.or(expected) {
        Some(checker) if !crate::check::CHECKERS.contains(&checker.as_str()) => {
            esay!(
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
                Some(first) if first.checker == BENCH_CHECKER => {
                    esay!("error: {}", first.message);
                    return 2;
                }
                Some(first) => first.checker.clone(),
                None => {
                    say!(
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
            say!(
                "shrunk {} steps to {} in {} runs; still fails [{checker}] at seed {seed}",
                shrunk.steps_before,
                shrunk.steps_after,
                shrunk.runs
            );
            let absolute = std::path::absolute(&out).unwrap_or(out.clone());
            say!(
                "wrote {}; replay: {}",
                out.display(),
                replay_command(&absolute, seed)
            );
            0
        }
        Err(e) => {
            say!("{e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Sim;

    #[test]
    fn escapes_what_could_forge_a_line_or_drive_the_terminal() {
        assert_eq!(
            console_escape("a\nPASS  b\r\t\u{1b}[31m\u{7f}\u{202e}é"),
            "a\\nPASS  b\\r\\t\\u{1b}[31m\\u{7f}\\u{202e}é"
        );
        assert_eq!(console_escape("plain – text"), "plain – text");
    }

    /// A real bench error (a panic in this file, polled by the executor)
    /// makes the report an error and the exit code 2.
    #[test]
    fn a_bench_error_is_an_error_verdict_and_exit_2() {
        let sim = Sim::new(1);
        let body = async { panic!("a checker broke") };
        sim.spawn_process("runner".into(), Box::pin(body));
        sim.run();
        let scenario = crate::scenario::parse(
            Path::new("b.ron"),
            "Scenario(name: \"b\", devices: [], steps: [])",
        )
        .expect("parses");
        let mut outcome = crate::scenario::run(&scenario, &RunOptions::default());
        assert!(
            outcome.passed() && !bench_error(&outcome),
            "the control passes"
        );
        outcome.failures = sim.failures();
        assert!(bench_error(&outcome), "{:?}", outcome.failures);
        let run = to_report(Path::new("b.ron"), &outcome, 0.0);
        assert_eq!(run.verdict, Verdict::Error);
        assert_eq!(exit_code(true, true), 2);
        assert_eq!(exit_code(false, true), 1);
        assert_eq!(exit_code(false, false), 0);
    }
}
