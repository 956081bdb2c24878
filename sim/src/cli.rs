//! The `blksnap-sim` command line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use blksnap_reports::{self as reports, RunReport, ScenarioRun, Verdict};
use clap::{Parser, Subcommand};

// Re-exported: the fuzz crate and the tests name them through `cli`.
pub use crate::console::{console_escape, replay_command, say_line, warn, write_stdout};
pub use crate::suite::collect_files;

use crate::console::{say_load_error, write_file};
use crate::kernel::BENCH_CHECKER;
use crate::scenario::{self, Outcome, RunOptions};
use crate::suite::{
    bench_crash, bench_error, exit_code, load_all, to_report, write_outputs, Outputs,
};

/// Print one console line. Everything in it that a file or a file name
/// chose (names, messages, paths) is escaped, so no scenario can print a
/// line of its own (a forged `PASS`) or drive the terminal.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::say_line(&format!($($arg)*))
    };
}

/// A line on stderr, escaped as `say!` escapes.
macro_rules! esay {
    ($($arg:tt)*) => {
        $crate::console::warn(&format!($($arg)*))
    };
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
    /// Run every .ron scenario under the given paths, each with its own
    /// seed (or --seed), and judge it with every checker.
    #[command(after_help = EXIT_CODES)]
    Run {
        /// Scenario files, or directories searched recursively for .ron
        /// files, run in sorted path order [default: scenarios].
        paths: Vec<PathBuf>,
        /// Run every scenario with this seed instead of its own `seed:`
        /// [default: each scenario's own].
        #[arg(long)]
        seed: Option<u64>,
        /// Write JUnit XML to this file, one testcase per scenario
        /// [default: not written].
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Write the run as a JSON run report to this file; usable later
        /// as --baseline [default: not written].
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a Markdown summary to this file [default: not written].
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Write a self-contained HTML report to this file [default: not
        /// written].
        #[arg(long)]
        html: Option<PathBuf>,
        /// Compare with an earlier --json run report and list the changes;
        /// a regression exits 1 [default: no comparison].
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Print the kernel log and the last trace events of each failing
        /// scenario [default: off].
        #[arg(long, short)]
        verbose: bool,
    },
    /// Run scenarios with many consecutive seeds; print each failing seed
    /// with its replay command.
    #[command(after_help = EXIT_CODES)]
    Sweep {
        /// Scenario files, or directories searched recursively for .ron
        /// files (at least one).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many consecutive seeds to run per file.
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Worker threads; the results do not depend on it.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Run only shard K of N (K in 1..=N): every N-th (file, seed) run,
        /// e.g. 2/3 [default: all runs].
        #[arg(long)]
        partition: Option<String>,
        /// Write the runs as a JSON run report to this file, for `merge`
        /// or --baseline [default: not written].
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Combine the JSON run reports of sweep or run shards into one report;
    /// optionally compare it with a baseline.
    #[command(after_help = EXIT_CODES)]
    Merge {
        /// The JSON run reports to combine (at least one), e.g. the
        /// --json files of `sweep --partition K/N`.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write the merged JSON run report to this file [default: not
        /// written].
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the merged report as JUnit XML to this file [default: not
        /// written].
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Write the merged report as Markdown to this file [default: not
        /// written].
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Compare with an earlier JSON run report; a regression exits 1
        /// [default: no comparison].
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// Shrink a failing scenario: drop steps and lower counts while the
    /// same checker still fails; write the smallest one.
    #[command(after_help = EXIT_CODES)]
    Shrink {
        /// The failing scenario file.
        path: PathBuf,
        /// The seed that fails [default: the scenario's own seed].
        #[arg(long)]
        seed: Option<u64>,
        /// The checker that must keep failing [default: the checker of the
        /// run's first failure].
        #[arg(long)]
        checker: Option<String>,
        /// Where to write the result [default: STEM.min.ron in the current
        /// directory, STEM being the scenario file name without .ron].
        #[arg(long)]
        out: Option<PathBuf>,
        /// At most this many runs.
        #[arg(long, default_value_t = 500)]
        budget: u32,
    },
    /// Swarm testing: each seed draws a whole configuration (devices,
    /// fs model, parameters, scheduler, faults, workload), runs it with
    /// every checker on; failures are shrunk and grouped.
    #[command(after_help = EXIT_CODES)]
    Swarm(crate::swarm::command::SwarmArgs),
    /// Print the ioctl numbers and struct layouts of the v2 ABI (no
    /// arguments).
    #[command(after_help = EXIT_CODES)]
    Abi,
    /// List the v2 bugs that scenarios (`quirks: [...]`) and `swarm
    /// --quirk` can switch on (no arguments).
    #[command(after_help = EXIT_CODES)]
    Quirks,
    /// Measure the speed figures (issue 10) beside the host's memcpy.
    #[command(after_help = EXIT_CODES)]
    Bench {
        /// Only the figure with this key: seeds, non-cow, cow, oracle,
        /// campaign, 1pib or fuzz [default: every figure].
        #[arg(long)]
        only: Option<String>,
        /// Runs of each CPU-time figure; the median is reported, with every
        /// run's number beside it (a shared host varies by a fifth).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        repeat: u32,
    },
}

/// Shown under every `--help`, so the exit codes are documented where the
/// user looks.
const EXIT_CODES: &str = "Exit codes:
  0    success: every scenario, seed or merged run passed (a bug scenario
       passes when its checker catches the bug); abi, quirks and bench printed
  1    a scenario, seed or swarm configuration failed, `--baseline` found a
       regression, or `shrink` found nothing to shrink
  2    bad input (a scenario that does not load, a bad option or argument), a
       bench error (a panic outside engine code, a bench figure that could not
       be measured), or an output file that cannot be written
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
        Command::Swarm(args) => crate::swarm::command::swarm_command(&args),
        Command::Abi => {
            write_stdout(&blksnap_core::uapi::render_abi());
            0
        }
        Command::Bench { only, repeat } => crate::bench::bench_command(only.as_deref(), repeat),
        Command::Quirks => {
            for (id, what) in blksnap_core::Quirks::ALL {
                say!("{id:<12} {what}");
            }
            0
        }
    }
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
        for line in outcome
            .recent_trace
            .iter()
            .map(scenario::runner::recent_line)
        {
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
        sim.spawn_process("runner", Box::pin(body));
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
