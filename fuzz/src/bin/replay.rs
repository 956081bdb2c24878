//! Replay fuzz inputs on stable Rust.
//!
//! ```text
//! replay <target> <file-or-dir>...           run each input; exit 1 if any fails
//! replay show <target> <file>                print what the input decodes to
//! replay minimize [target] <file>             shrink a failing lifecycle scenario
//!                                             (or ioctl_args program)
//! replay stats <count>                        ioctl results over random ioctl_args inputs
//! replay metrics <file-or-dir>...             what each lifecycle input's run did
//! replay shrink <target> <file> <out>         shrink a failing input's bytes into out
//! replay random <target> <count> [seed [dir]]  run pseudo-random inputs, report
//!                                             failures (and save them in dir)
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use arbitrary::Unstructured;
use blksnap_fuzz::{inputs, ioctl_args, lifecycle, scenario_parse, target, TARGETS};

const USAGE: &str = "usage:
  replay <target> <file-or-dir>...         run each input; exit 1 if any fails
  replay show <target> <file>              print what the input decodes to
  replay minimize [target] <file>          shrink a failing lifecycle scenario
                                           (or ioctl_args program)
  replay stats <count>                     ioctl results over random ioctl_args inputs
  replay metrics <file-or-dir>...          what each lifecycle input's run did
  replay shrink <target> <file> <out>      shrink a failing input's bytes into out
  replay random <target> <count> [seed [dir]]
                                           run pseudo-random inputs, report failures
                                           (and save each failing input in dir)";

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
        Some("random") if (3..=5).contains(&args.len()) => random(&args[1..]),
        Some(name)
            if args.len() >= 2
                && !["show", "random", "minimize", "stats", "shrink", "metrics"]
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
            eprintln!("{message}");
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
            Ok(()) => println!("ok    {} ({ms:.1} ms)", file.display()),
            Err(report) => {
                failed += 1;
                println!("FAIL  {} ({ms:.1} ms)\n{report}", file.display());
            }
        }
    }
    println!("{} input(s), {failed} failed", files.len());
    Ok(failed == 0)
}

fn show(name: &str, file: &Path) -> Result<bool, String> {
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    match name {
        "lifecycle" => match lifecycle::build(&data) {
            Some((scenario, seed)) => println!("seed: {seed}\n{scenario:#?}"),
            None => println!("(no scenario)"),
        },
        "ioctl_args" => match ioctl_args::program(&mut Unstructured::new(&data)) {
            Ok(program) => println!("{program:#?}"),
            Err(e) => println!("(no program: {e})"),
        },
        "scenario_parse" => {
            let text = String::from_utf8_lossy(&data);
            match blksnap_sim::scenario::parse(Path::new(scenario_parse::FILE), &text) {
                Ok(scenario) => println!(
                    "parses: '{}', {} device(s), {} step(s)",
                    scenario.name,
                    scenario.devices.len(),
                    scenario.steps.len()
                ),
                Err(error) => println!("{error}"),
            }
        }
        "scenario_run" => println!("{}", blksnap_fuzz::scenario_run::text_of(&data)),
        other => return Err(format!("unknown target '{other}'")),
    }
    Ok(true)
}

fn random(args: &[String]) -> Result<bool, String> {
    let check = check_of(&args[0])?;
    let count: u64 = args[1].parse().map_err(|e| format!("count: {e}"))?;
    let seed: u64 = match args.get(2) {
        Some(s) => s.parse().map_err(|e| format!("seed: {e}"))?,
        None => 0,
    };
    let start = Instant::now();
    let mut failed = 0;
    let mut slowest = (0.0, 0);
    for index in 0..count {
        let data = inputs::random_input(seed, index, 512);
        let one = Instant::now();
        let result = check(&data);
        let ms = one.elapsed().as_secs_f64() * 1e3;
        if ms > slowest.0 {
            slowest = (ms, index);
        }
        if let Err(report) = result {
            failed += 1;
            if let Some(dir) = args.get(3) {
                let path = Path::new(dir).join(format!("{}-{seed}-{index}.bin", args[0]));
                std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
                std::fs::write(&path, &data).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let head: String = report.lines().take(12).collect::<Vec<_>>().join("\n");
            println!("FAIL  input {index} (seed {seed})\n{head}\n");
        }
    }
    let total = start.elapsed().as_secs_f64();
    println!(
        "{count} input(s), {failed} failed, {total:.2} s total, {:.1} ms mean, slowest {:.1} ms (input {})",
        total * 1e3 / count.max(1) as f64,
        slowest.0,
        slowest.1
    );
    Ok(failed == 0)
}

fn minimize(target: &str, file: &Path) -> Result<bool, String> {
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if target == "ioctl_args" {
        let program = ioctl_args::program(&mut Unstructured::new(&data))
            .map_err(|e| format!("the input decodes to no program: {e}"))?;
        return Ok(match blksnap_fuzz::minimize::minimize_program(&program) {
            None => {
                println!("{}: passes, nothing to minimize", file.display());
                true
            }
            Some((_, report)) => {
                println!("{report}");
                false
            }
        });
    }
    if target != "lifecycle" {
        return Err(format!(
            "minimize: only lifecycle and ioctl_args, not '{target}'"
        ));
    }
    let (scenario, seed) = lifecycle::build(&data).ok_or("the input decodes to no scenario")?;
    match blksnap_fuzz::minimize::minimize(&scenario, seed) {
        None => {
            println!("{}: passes, nothing to minimize", file.display());
            Ok(true)
        }
        Some((small, outcome)) => {
            println!(
                "{}: {} top-level step(s) -> {}",
                file.display(),
                scenario.steps.len(),
                small.steps.len()
            );
            println!("{}", lifecycle::report(&small, &outcome));
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
        println!("{name:<42} ok {ok:>6}  err {err:>6}");
    }
    Ok(true)
}

fn shrink(name: &str, file: &Path, out: &Path) -> Result<bool, String> {
    let check = check_of(name)?;
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let small = blksnap_fuzz::minimize::shrink_bytes(check, &data);
    std::fs::write(out, &small).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "{} bytes -> {} bytes: {}",
        data.len(),
        small.len(),
        out.display()
    );
    match check(&small) {
        Ok(()) => println!("(passes: nothing failed)"),
        Err(report) => println!("{}", blksnap_fuzz::minimize::report_signature(&report)),
    }
    Ok(true)
}

fn metrics(paths: &[String]) -> Result<bool, String> {
    for file in files(paths)? {
        let data = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let Some((scenario, seed)) = lifecycle::build(&data) else {
            continue;
        };
        let options = blksnap_sim::scenario::RunOptions {
            seed: Some(seed),
            ..Default::default()
        };
        let outcome = blksnap_sim::scenario::run(&scenario, &options);
        let metric = |name: &str| outcome.metrics.get(name).copied().unwrap_or(0.0);
        println!(
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
