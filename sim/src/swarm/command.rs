//! `blksnap-sim swarm`: run a campaign, print the groups, write the
//! output folder (one shrunk `.ron` per failure group and `summary.json`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::console::{say_line, warn};

use super::campaign::{
    group, run_seeds, shrink_groups, Group, Partition, Plan, Progress, SeedRun, Seeds, Verdict,
    SCHEMA_VERSION,
};

/// The command line's choices (`blksnap-sim swarm`), checked by [`plan`].
#[derive(clap::Args, Debug)]
pub struct SwarmArgs {
    /// Seeds A..B (B excluded) [default: none; give this or
    /// --seconds].
    #[arg(long)]
    pub seeds: Option<String>,
    /// Run seeds from --from on for this many seconds of wall time
    /// [default: none; give this or --seeds].
    #[arg(long)]
    pub seconds: Option<u64>,
    /// First seed of a --seconds campaign.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Worker threads; results do not depend on it.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Run only shard K of N (K in 1..=N): every N-th seed, e.g. 2/3
    /// [default: all seeds].
    #[arg(long)]
    pub partition: Option<String>,
    /// Force this v2 bug on in every configuration (repeatable; ids
    /// from `blksnap-sim quirks`) [default: none forced].
    #[arg(long = "quirk")]
    pub quirks: Vec<String>,
    /// Output folder: shrunk failures and summary.json.
    #[arg(long, default_value = "swarm-out")]
    pub out: PathBuf,
    /// At most this many runs to shrink one failure group.
    #[arg(long, default_value_t = 200)]
    pub shrink_budget: u32,
}

/// `A..B` (B excluded).
pub fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--seeds '{text}': expected A..B with A < B (e.g. 0..500)");
    let (a, b) = text.split_once("..").ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if a >= b {
        return Err(bad());
    }
    Ok((a, b))
}

fn plan(args: &SwarmArgs) -> Result<Plan, String> {
    let seeds = match (&args.seeds, args.seconds) {
        (Some(_), Some(_)) => return Err("give --seeds or --seconds, not both".into()),
        (None, None) => return Err("give --seeds A..B or --seconds N".into()),
        (Some(range), None) => {
            let (from, to) = parse_range(range)?;
            Seeds::Range { from, to }
        }
        (None, Some(0)) => return Err("--seconds 0 runs nothing".into()),
        (None, Some(seconds)) => Seeds::For {
            from: args.from,
            seconds,
        },
    };
    let partition = match &args.partition {
        Some(text) => Partition::parse(text)?,
        None => Partition::WHOLE,
    };
    if args.jobs == 0 {
        return Err("--jobs 0 runs nothing: at least 1".into());
    }
    for id in &args.quirks {
        blksnap_core::Quirks::default().enable(id).map_err(|_| {
            format!("--quirk '{id}': unknown quirk (`blksnap-sim quirks` lists them)")
        })?;
    }
    Ok(Plan {
        seeds,
        partition,
        jobs: args.jobs,
        quirks: args.quirks.clone(),
        shrink_budget: args.shrink_budget,
    })
}

/// The progress bar: on stderr when it is a terminal, else hidden.
struct Bar {
    bar: ProgressBar,
    started: Instant,
    seconds: Option<u64>,
    done: AtomicU64,
    failed: AtomicU64,
}

impl Bar {
    fn new(plan: &Plan) -> Bar {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let (length, seconds, template) = match (plan.seed_count(), plan.seeds) {
            (Some(len), _) => (
                len,
                None,
                "{elapsed_precise} [{bar:30}] {pos}/{len} seeds, {per_sec}, ETA {eta} {msg}",
            ),
            (None, Seeds::For { seconds, .. }) => (
                seconds,
                Some(seconds),
                "{elapsed_precise} [{bar:30}] {pos}/{len} s, ETA {eta} {msg}",
            ),
            (None, Seeds::Range { .. }) => (0, None, "{msg}"),
        };
        let bar = ProgressBar::with_draw_target(Some(length), target);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar {
            bar,
            started: Instant::now(),
            seconds,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl Progress for Bar {
    fn seed_done(&self, run: &SeedRun) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let failed = self.failed.load(Ordering::Relaxed) + u64::from(run.verdict != Verdict::Pass);
        self.failed.store(failed, Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        if let Some(seconds) = self.seconds {
            self.bar.set_position((elapsed as u64).min(seconds));
            let rate = done as f64 / elapsed.max(1e-3);
            self.bar
                .set_message(format!("{done} seeds, {rate:.1} seeds/s, {failed} failed"));
        } else {
            self.bar.inc(1);
            self.bar.set_message(format!("{failed} failed"));
        }
    }
}

/// The JSON summary of a campaign.
#[derive(Serialize)]
struct Summary<'a> {
    schema_version: u32,
    kind: &'static str,
    tool_version: &'static str,
    seeds: String,
    partition: String,
    quirks: &'a [String],
    ran: usize,
    passed: usize,
    failed: usize,
    errors: usize,
    /// Wall time and rate: the only fields that vary between runs.
    wall_seconds: f64,
    seeds_per_second: f64,
    groups: &'a [Group],
    runs: &'a [SeedRun],
}

fn seeds_text(seeds: Seeds, runs: &[SeedRun]) -> String {
    match seeds {
        Seeds::Range { from, to } => format!("{from}..{to}"),
        Seeds::For { from, seconds } => {
            let last = runs.last().map_or(from, |r| r.seed + 1);
            format!("{from}..{last} ({seconds} s)")
        }
    }
}

/// Exit codes: 0 no failure, 1 failures, 2 bad input, a bench error, or
/// an output that cannot be written.
pub fn swarm_command(args: &SwarmArgs) -> i32 {
    let plan = match plan(args) {
        Ok(plan) => plan,
        Err(e) => {
            warn(&format!("error: {e}"));
            return 2;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        warn(&format!("error: cannot create {}: {e}", args.out.display()));
        return 2;
    }
    let started = Instant::now();
    let bar = Bar::new(&plan);
    let runs = run_seeds(&plan, &bar);
    bar.bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let mut groups = group(&runs);
    shrink_groups(&mut groups, &runs, &args.out, &plan);
    print_groups(&groups);
    let count = |v: Verdict| runs.iter().filter(|r| r.verdict == v).count();
    let summary = Summary {
        schema_version: SCHEMA_VERSION,
        kind: "swarm",
        tool_version: env!("CARGO_PKG_VERSION"),
        seeds: seeds_text(plan.seeds, &runs),
        partition: plan.partition.to_string(),
        quirks: &plan.quirks,
        ran: runs.len(),
        passed: count(Verdict::Pass),
        failed: count(Verdict::Fail),
        errors: count(Verdict::Error),
        wall_seconds: wall,
        seeds_per_second: runs.len() as f64 / wall.max(1e-9),
        groups: &groups,
        runs: &runs,
    };
    let written = write_summary(&args.out.join("summary.json"), &summary);
    say_line(&format!(
        "swarm: {} seeds in {wall:.1} s ({:.1} seeds/s), {} failure group(s); summary in {}",
        summary.ran,
        summary.seeds_per_second,
        groups.len(),
        args.out.join("summary.json").display()
    ));
    say_line(&format!(
        "{} passed, {} failed",
        summary.passed,
        summary.failed + summary.errors
    ));
    if !written || summary.errors > 0 {
        2
    } else {
        i32::from(summary.failed > 0)
    }
}

fn print_groups(groups: &[Group]) {
    for (index, group) in groups.iter().enumerate() {
        say_line(&format!(
            "group {}: {} seed(s) [{}] {}",
            index + 1,
            group.count,
            group.checker,
            group.message
        ));
        let seeds: Vec<String> = group.seeds.iter().map(u64::to_string).collect();
        say_line(&format!("      seeds {}", seeds.join(" ")));
        match (&group.replay, &group.shrink_error) {
            (Some(replay), _) => say_line(&format!(
                "      shrunk {} -> {} steps; replay: {replay}",
                group.steps_before.unwrap_or(0),
                group.steps_after.unwrap_or(0)
            )),
            (None, Some(e)) => say_line(&format!("      not shrunk: {e}")),
            (None, None) => {}
        }
    }
}

fn write_summary(path: &Path, summary: &Summary) -> bool {
    let text = match serde_json::to_string_pretty(summary) {
        Ok(text) => text,
        Err(e) => {
            warn(&format!("error: summary: {e}"));
            return false;
        }
    };
    match std::fs::write(path, text + "\n") {
        Ok(()) => true,
        Err(e) => {
            warn(&format!("error: cannot write {}: {e}", path.display()));
            false
        }
    }
}
