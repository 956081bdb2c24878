//! Replay fuzz inputs on stable Rust.
//!
//! ```text
//! replay <target> <file-or-dir>...           run each input; exit 1 if any fails
//! replay show <target> <file>                print what the input decodes to
//! replay minimize [target] <file>             shrink a failing lifecycle (or
//!                                             lifecycle_everything) scenario
//!                                             (or ioctl_args program)
//! replay stats <count>                        ioctl results over random ioctl_args inputs
//! replay metrics [target] <file-or-dir>...    what each lifecycle (or
//!                                             lifecycle_everything) input's run did
//! replay shrink <target> <file> <out>         shrink a failing input's bytes into out
//! replay random <target> <count> [seed [dir]] [--scale farm|full] [--quirk Q]...
//!                                             run pseudo-random inputs, report
//!                                             failures, inputs per CPU second and the
//!                                             time per input (and save failing and the
//!                                             3 slowest in dir); the lifecycle targets
//!                                             at farm scale unless told full, quirks on
//! replay to-ron <target> <file> [--out PATH]  the input as a RON regression scenario
//! ```
//!
//! Output goes through the simulator's console writer, line by line: a
//! report quotes names and messages a fuzz input chose, and those must
//! not forge a line (`ok ...`) or drive the terminal.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use arbitrary::Unstructured;
use blksnap_fuzz::lifecycle::Scale;

/// The cargo-fuzz wrappers' allocator (mimalloc; see blksnap-alloc), so
/// that a rate or profile taken here is one of the fuzz target's runs.
#[global_allocator]
static ALLOCATOR: blksnap_alloc::SimAllocator = blksnap_alloc::SimAllocator;
use blksnap_fuzz::{inputs, ioctl_args, lifecycle, scenario_parse, target, TARGETS};
use blksnap_sim::bench::CpuClock;

const USAGE: &str = "usage:
  replay <target> <file-or-dir>...         run each input; exit 1 if any fails
  replay show <target> <file>              print what the input decodes to
  replay minimize [target] <file>          shrink a failing lifecycle (or
                                           lifecycle_everything) scenario
                                           (or ioctl_args program)
  replay stats <count>                     ioctl results over random ioctl_args inputs
  replay metrics [target] <file-or-dir>... what each lifecycle (or lifecycle_everything)
                                           input's run did
  replay shrink <target> <file> <out>      shrink a failing input's bytes into out
  replay random <target> <count> [seed [dir]] [--scale farm|full] [--quirk Q]...
                                           run pseudo-random inputs, report failures,
                                           inputs and failures per CPU second, and the
                                           time per input (mean, median, p90, p99, max);
                                           save each failing input, and the 3 slowest
                                           as slow-*, in dir. lifecycle(_everything): at farm scale
                                           (what the fuzz target runs) unless
                                           --scale full (the swarm's); each --quirk Q
                                           switched on (then a failure is a find)
  replay to-ron <target> <file> [--out PATH]
                                           write the scenario the input runs as RON
                                           (the lifecycle targets, scenario_run), checked to
                                           replay with the same digest";

/// Print text through the console writer of `blksnap-sim`, each line
/// escaped (control characters, bidi overrides); a closed pipe ends the
/// process quietly.
macro_rules! say {
    ($($arg:tt)*) => {
        for line in format!($($arg)*).split('\n') {
            blksnap_sim::cli::say_line(line);
        }
    };
}

fn main() -> ExitCode {
    // Engine panics are caught by the simulator and reported as oopses;
    // their default messages and backtraces would only bury the reports.
    std::panic::set_hook(Box::new(|_| {}));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("show") if args.len() == 3 => show(&args[1], Path::new(&args[2])),
        Some("minimize") if args.len() == 2 => minimize("lifecycle", Path::new(&args[1])),
        Some("minimize") if args.len() == 3 => minimize(&args[1], Path::new(&args[2])),
        Some("stats") if args.len() == 2 => stats(&args[1]),
        Some("metrics") if args.len() >= 2 => metrics(&args[1..]),
        Some("shrink") if args.len() == 4 => {
            shrink(&args[1], Path::new(&args[2]), Path::new(&args[3]))
        }
        Some("random") if args.len() >= 3 => random(&args[1..]),
        Some("to-ron") if args.len() == 3 || args.len() == 5 => to_ron(&args[1..]),
        Some(name)
            if args.len() >= 2
                && ![
                    "show", "random", "minimize", "stats", "shrink", "metrics", "to-ron",
                ]
                .contains(&name) =>
        {
            replay(name, &args[1..])
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            for line in message.split('\n') {
                blksnap_sim::cli::warn(line);
            }
            ExitCode::from(2)
        }
    }
}

fn check_of(name: &str) -> Result<blksnap_fuzz::Check, String> {
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    target(name).ok_or_else(|| format!("unknown target '{name}': expected one of {names:?}"))
}

/// Every file named, directories expanded one level, sorted.
fn files(paths: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for path in paths.iter().map(PathBuf::from) {
        if path.is_dir() {
            let entries =
                std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            for entry in entries {
                let file = entry
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .path();
                if file.is_file() {
                    out.push(file);
                }
            }
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn replay(name: &str, paths: &[String]) -> Result<bool, String> {
    let check = check_of(name)?;
    let mut failed = 0;
    let files = files(paths)?;
    for file in &files {
        let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let start = Instant::now();
        let result = check(&data);
        let ms = start.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(()) => say!("ok    {} ({ms:.1} ms)", file.display()),
            Err(report) => {
                failed += 1;
                say!("FAIL  {} ({ms:.1} ms)\n{report}", file.display());
            }
        }
    }
    say!("{} input(s), {failed} failed", files.len());
    Ok(failed == 0)
}

fn show(name: &str, file: &Path) -> Result<bool, String> {
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    match name {
        lifecycle_target if lifecycle::features_of(lifecycle_target).is_some() => {
            match build(name, &data) {
                Some((scenario, seed)) => say!("seed: {seed}\n{scenario:#?}"),
                None => say!("(no scenario)"),
            }
        }
        "ioctl_args" => match ioctl_args::program(&mut Unstructured::new(&data)) {
            Ok(program) => say!("{program:#?}"),
            Err(e) => say!("(no program: {e})"),
        },
        "scenario_parse" => {
            let text = String::from_utf8_lossy(&data);
            match blksnap_sim::scenario::parse(Path::new(scenario_parse::FILE), &text) {
                Ok(scenario) => say!(
                    "parses: '{}', {} device(s), {} step(s)",
                    scenario.name,
                    scenario.devices.len(),
                    scenario.steps.len()
                ),
                Err(error) => say!("{error}"),
            }
        }
        "scenario_run" => say!("{}", blksnap_fuzz::scenario_run::text_of(&data)),
        other => return Err(format!("unknown target '{other}'")),
    }
    Ok(true)
}

/// The farm scenario and seed of a lifecycle target's input (`None` for
/// another target, or an input that decodes to none).
fn build(target: &str, data: &[u8]) -> Option<(blksnap_sim::scenario::Scenario, u64)> {
    lifecycle::build_with(data, lifecycle::features_of(target)?, Scale::Farm)
}

/// What `replay random` runs: the positional arguments, and for
/// `lifecycle` the scale and the quirks to switch on.
struct RandomArgs {
    positional: Vec<String>,
    scale: Scale,
    quirks: Vec<String>,
}

fn random_args(args: &[String]) -> Result<RandomArgs, String> {
    let mut out = RandomArgs {
        positional: Vec::new(),
        scale: Scale::Farm,
        quirks: Vec::new(),
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--scale" => {
                out.scale = match rest.next().map(String::as_str) {
                    Some("farm") => Scale::Farm,
                    Some("full") => Scale::Full,
                    other => return Err(format!("--scale: farm or full, not {other:?}")),
                }
            }
            "--quirk" => {
                let id = rest.next().ok_or("--quirk: which quirk?")?;
                // A misspelt id would silently find nothing.
                blksnap_core::Quirks::default().enable(id).map_err(|_| {
                    format!("--quirk '{id}': unknown quirk (`blksnap-sim quirks` lists them)")
                })?;
                out.quirks.push(id.clone());
            }
            _ => out.positional.push(arg.clone()),
        }
    }
    if !(2..=4).contains(&out.positional.len()) {
        return Err(USAGE.to_string());
    }
    let options = out.scale != Scale::Farm || !out.quirks.is_empty();
    if options && lifecycle::features_of(&out.positional[0]).is_none() {
        return Err("--scale and --quirk are for the lifecycle targets".to_string());
    }
    Ok(out)
}

impl RandomArgs {
    /// Run one input as `replay random` runs it: the target's own body, or
    /// a lifecycle target's at the scale and with the quirks asked for.
    fn check(&self, target: blksnap_fuzz::Check, data: &[u8]) -> Result<(), String> {
        match lifecycle::features_of(&self.positional[0]) {
            Some(features) => lifecycle::check_with(data, features, self.scale, &self.quirks),
            None => target(data),
        }
    }
}

fn random(args: &[String]) -> Result<bool, String> {
    let args = random_args(args)?;
    let body = check_of(&args.positional[0])?;
    let target = &args.positional[0];
    let count: u64 = args.positional[1]
        .parse()
        .map_err(|e| format!("count: {e}"))?;
    let seed: u64 = match args.positional.get(2) {
        Some(s) => s.parse().map_err(|e| format!("seed: {e}"))?,
        None => 0,
    };
    let dir = args.positional.get(3);
    let cpu = CpuClock::start();
    let mut failed = 0;
    let mut times: Vec<(f64, u64)> = Vec::with_capacity(count as usize);
    for index in 0..count {
        let data = inputs::random_input(seed, index, 512);
        let one = Instant::now();
        let result = args.check(body, &data);
        times.push((one.elapsed().as_secs_f64() * 1e3, index));
        if let Err(report) = result {
            failed += 1;
            if let Some(dir) = dir {
                save(dir, &format!("{target}-{seed}-{index}.bin"), &data)?;
            }
            let head: String = report.lines().take(12).collect::<Vec<_>>().join("\n");
            say!("FAIL  input {index} (seed {seed})\n{head}\n");
        }
    }
    let seconds = cpu.seconds();
    say!(
        "{count} input(s), {failed} failed, {seconds:.2} CPU s: {}",
        rates(count, failed, seconds)
    );
    say_times(&mut times);
    for (ms, index) in times.iter().take(3) {
        say!("slow  input {index} (seed {seed}): {ms:.1} ms");
        if let Some(dir) = dir {
            let data = inputs::random_input(seed, *index, 512);
            save(dir, &format!("slow-{target}-{seed}-{index}.bin"), &data)?;
        }
    }
    Ok(failed == 0)
}

/// Inputs and failures per CPU second. The thread's CPU time is counted
/// in scheduler ticks, so a run shorter than [`MIN_RATE_SECONDS`] gets no
/// rate.
fn rates(count: u64, failed: u64, seconds: f64) -> String {
    if seconds < MIN_RATE_SECONDS {
        return "too short for a rate".to_string();
    }
    format!(
        "{:.0} inputs and {:.2} failures per CPU s",
        count as f64 / seconds,
        failed as f64 / seconds
    )
}

/// The shortest run `replay random` gives a rate for.
const MIN_RATE_SECONDS: f64 = 0.05;

/// The mean and the quantiles of the times per input (wall, ms), slowest
/// first afterwards: what rules a fuzzer's executions per second is the
/// tail, not the median.
fn say_times(times: &mut [(f64, u64)]) {
    times.sort_by(|a, b| b.0.total_cmp(&a.0));
    if times.is_empty() {
        return;
    }
    let total: f64 = times.iter().map(|t| t.0).sum();
    let at = |q: f64| times[((1.0 - q) * (times.len() - 1) as f64).round() as usize].0;
    let slow: f64 = times
        .iter()
        .take(times.len().div_ceil(10))
        .map(|t| t.0)
        .sum();
    say!(
        "per input (wall): mean {:.2} ms, median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms; the slowest 10% take {:.0}% of the time",
        total / times.len() as f64,
        at(0.5),
        at(0.9),
        at(0.99),
        times[0].0,
        slow / total.max(1e-9) * 100.0
    );
}

/// Write `data` as `dir/name`, creating `dir`.
fn save(dir: &str, name: &str, data: &[u8]) -> Result<(), String> {
    let path = Path::new(dir).join(name);
    std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))
}

fn minimize(target: &str, file: &Path) -> Result<bool, String> {
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if target == "ioctl_args" {
        let program = ioctl_args::program(&mut Unstructured::new(&data))
            .map_err(|e| format!("the input decodes to no program: {e}"))?;
        return Ok(match blksnap_fuzz::minimize::minimize_program(&program) {
            None => {
                say!("{}: passes, nothing to minimize", file.display());
                true
            }
            Some((_, report)) => {
                say!("{report}");
                false
            }
        });
    }
    if lifecycle::features_of(target).is_none() {
        return Err(format!(
            "minimize: only the lifecycle targets and ioctl_args, not '{target}'"
        ));
    }
    let (scenario, seed) = build(target, &data).ok_or("the input decodes to no scenario")?;
    match blksnap_fuzz::minimize::minimize(&scenario, seed) {
        None => {
            say!("{}: passes, nothing to minimize", file.display());
            Ok(true)
        }
        Some((small, outcome)) => {
            say!(
                "{}: {} top-level step(s) -> {}",
                file.display(),
                scenario.steps.len(),
                small.steps.len()
            );
            say!("{}", lifecycle::report(&small, &outcome));
            Ok(false)
        }
    }
}

fn stats(count: &str) -> Result<bool, String> {
    let count: u64 = count.parse().map_err(|e| format!("count: {e}"))?;
    let mut total = ioctl_args::Stats::new();
    for index in 0..count {
        let data = inputs::random_input(0, index, 400);
        let Ok(program) = ioctl_args::program(&mut Unstructured::new(&data)) else {
            continue;
        };
        for (name, (ok, err)) in ioctl_args::run_with_stats(&program).1 {
            let entry = total.entry(name).or_default();
            entry.0 += ok;
            entry.1 += err;
        }
    }
    for (name, (ok, err)) in total {
        say!("{name:<42} ok {ok:>6}  err {err:>6}");
    }
    Ok(true)
}

fn shrink(name: &str, file: &Path, out: &Path) -> Result<bool, String> {
    let check = check_of(name)?;
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let small = blksnap_fuzz::minimize::shrink_bytes(check, &data);
    std::fs::write(out, &small).map_err(|e| format!("{}: {e}", out.display()))?;
    say!(
        "{} bytes -> {} bytes: {}",
        data.len(),
        small.len(),
        out.display()
    );
    match check(&small) {
        Ok(()) => say!("(passes: nothing failed)"),
        Err(report) => say!("{}", blksnap_fuzz::minimize::report_signature(&report)),
    }
    Ok(true)
}

/// `metrics [target] <file-or-dir>...`: the target is `lifecycle` unless
/// the first argument names a lifecycle target (and no file).
fn metrics(args: &[String]) -> Result<bool, String> {
    let named = lifecycle::features_of(&args[0]).is_some() && !Path::new(&args[0]).exists();
    let (target, paths) = if named {
        (args[0].as_str(), &args[1..])
    } else {
        ("lifecycle", args)
    };
    if paths.is_empty() {
        return Err(USAGE.to_string());
    }
    for file in files(paths)? {
        let data = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let Some((scenario, seed)) = build(target, &data) else {
            continue;
        };
        let options = blksnap_sim::scenario::RunOptions {
            seed: Some(seed),
            ..Default::default()
        };
        let outcome = blksnap_sim::scenario::run(&scenario, &options);
        let metric = |name: &str| outcome.metrics.get(name).copied().unwrap_or(0.0);
        say!(
            "{}: {} steps, {} trace events, {:.1} ms virtual, {} image reads ({} sectors) checked, {} failure(s)",
            file.display(),
            outcome.steps,
            outcome.trace_events,
            outcome.virtual_ns as f64 / 1e6,
            metric("image_reads_checked"),
            metric("image_sectors_checked"),
            outcome.failures.len()
        );
    }
    Ok(true)
}

/// `to-ron <target> <file> [--out PATH]`: the scenario on stdout, or in
/// PATH (created, or replaced) with a line saying how its run ends.
fn to_ron(args: &[String]) -> Result<bool, String> {
    let (target, file) = (&args[0], Path::new(&args[1]));
    let out = match args.get(2).map(String::as_str) {
        None => None,
        Some("--out") => Some(Path::new(&args[3])),
        Some(other) => return Err(format!("to-ron: unknown option '{other}'\n{USAGE}")),
    };
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let converted = blksnap_fuzz::to_ron::to_ron(target, &data, &file.display().to_string())?;
    let Some(out) = out else {
        say!("{}", converted.text.trim_end());
        return Ok(true);
    };
    std::fs::write(out, &converted.text).map_err(|e| format!("{}: {e}", out.display()))?;
    let outcome = &converted.outcome;
    match outcome.failures.first() {
        None => say!(
            "{}: written; its run passes (digest {})",
            out.display(),
            outcome.digest
        ),
        Some(first) => say!(
            "{}: written; its run fails (digest {}): [{}] {}",
            out.display(),
            outcome.digest,
            first.checker,
            first.message
        ),
    }
    say!(
        "replay: cargo run --release -p blksnap-sim -- run {}",
        out.display()
    );
    Ok(true)
}
