//! A swarm campaign: many seeds over worker threads, each seed one whole
//! simulation (single-threaded, deterministic), results ordered by seed so
//! that nothing in them depends on the number of workers; failures grouped
//! by checker and first message, and each group's first seed shrunk.
//!
//! Fault model: none of its own. The wall clock only decides when a
//! `--seconds` campaign stops taking new seeds and paints the progress
//! bar; it never reaches a simulation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::kernel::BENCH_CHECKER;
use crate::scenario::Scenario;

use super::config::{configuration, Config};
use super::judge::{blames_engine, judge_run};
use crate::kernel::Failure;

/// Failures of one seed kept in the summary.
pub const FAILURES_KEPT: usize = 5;

/// Version of the JSON summary layout.
pub const SCHEMA_VERSION: u32 = 1;

/// Which seeds a campaign runs.
#[derive(Clone, Copy, Debug)]
pub enum Seeds {
    /// `from..to`.
    Range { from: u64, to: u64 },
    /// From `from` on, until this much wall time has passed.
    For { from: u64, seconds: u64 },
}

/// Shard `index` (0-based) of `count`: every `count`-th seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub index: u64,
    pub count: u64,
}

impl Partition {
    pub const WHOLE: Partition = Partition { index: 0, count: 1 };

    /// `k/n`, 1-based as nextest spells it.
    pub fn parse(text: &str) -> Result<Partition, String> {
        let bad = || format!("--partition '{text}': expected k/n with 1 <= k <= n (e.g. 2/3)");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let k: u64 = k.trim().parse().map_err(|_| bad())?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        if n == 0 || k == 0 || k > n {
            return Err(bad());
        }
        Ok(Partition {
            index: k - 1,
            count: n,
        })
    }

    pub fn takes(&self, position: u64) -> bool {
        position % self.count == self.index
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

/// What a campaign is asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seeds: Seeds,
    pub partition: Partition,
    pub jobs: usize,
    pub quirks: Vec<String>,
    /// Runs one shrink of a group may take.
    pub shrink_budget: u32,
}

impl Plan {
    /// The `i`-th seed of this shard, if the plan has one.
    fn seed_at(&self, i: u64) -> Option<u64> {
        let (from, to) = match self.seeds {
            Seeds::Range { from, to } => (from, to),
            Seeds::For { from, .. } => (from, u64::MAX),
        };
        let offset = i
            .checked_mul(self.partition.count)?
            .checked_add(self.partition.index)?;
        from.checked_add(offset).filter(|seed| *seed < to)
    }

    /// How many seeds the shard has, when that is known up front.
    pub fn seed_count(&self) -> Option<u64> {
        match self.seeds {
            Seeds::Range { from, to } => Some(count_in(from, to, self.partition)),
            Seeds::For { .. } => None,
        }
    }
}

/// Seeds of `from..to` that `partition` takes.
fn count_in(from: u64, to: u64, partition: Partition) -> u64 {
    let span = to.saturating_sub(from);
    if span <= partition.index {
        return 0;
    }
    (span - partition.index).div_ceil(partition.count)
}

/// The verdict on one seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// The bench failed (a panic outside engine code): not the engine.
    Error,
}

/// What one seed did. Plain data (no wall time): the same seed gives the
/// same record whatever the number of workers.
#[derive(Clone, Debug, Serialize)]
pub struct SeedRun {
    pub seed: u64,
    /// Trace digest of the first run of the configuration.
    pub digest: String,
    pub verdict: Verdict,
    pub features: String,
    /// First failure: checker and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Every failure the judge blames on the engine, `[checker] message`
    /// (the first [`FAILURES_KEPT`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// The failing scenario (sanitized if the judge reran it), kept for
    /// the shrinker; not in the JSON.
    #[serde(skip)]
    pub failing: Option<Scenario>,
}

fn run_seed(plan: &Plan, seed: u64) -> SeedRun {
    let config: Config = configuration(seed, &plan.quirks);
    let judged = crate::panics::guard(|| judge_run(&config.scenario, seed));
    let mut run = SeedRun {
        seed,
        digest: String::new(),
        verdict: Verdict::Pass,
        features: config.scenario.description.clone(),
        checker: None,
        message: None,
        failures: Vec::new(),
        failing: None,
    };
    match judged {
        Err(message) => {
            run.verdict = Verdict::Error;
            run.checker = Some(BENCH_CHECKER.to_string());
            run.message = Some(message);
        }
        Ok(judged) => {
            run.digest = judged.first_digest;
            if let Some((scenario, outcome)) = judged.failing {
                let blamed: Vec<&Failure> = outcome
                    .failures
                    .iter()
                    .filter(|f| blames_engine(f, &scenario))
                    .collect();
                run.failures = blamed
                    .iter()
                    .take(FAILURES_KEPT)
                    .map(|f| format!("[{}] {}", f.checker, f.message))
                    .collect();
                let first = blamed.first();
                let bench = outcome.failures.iter().any(|f| f.checker == BENCH_CHECKER);
                run.verdict = if bench { Verdict::Error } else { Verdict::Fail };
                run.checker = first.map(|f| f.checker.clone());
                run.message = first.map(|f| f.message.clone());
                run.failing = Some(scenario);
            }
        }
    }
    run
}

/// Called after every seed, from the worker that ran it.
pub trait Progress: Sync {
    fn seed_done(&self, run: &SeedRun);
}

/// Run the plan's seeds on `plan.jobs` worker threads; the result is
/// ordered by seed.
pub fn run_seeds(plan: &Plan, progress: &dyn Progress) -> Vec<SeedRun> {
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let deadline = match plan.seeds {
        Seeds::For { seconds, .. } => Some(Duration::from_secs(seconds)),
        Seeds::Range { .. } => None,
    };
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..plan.jobs.max(1) {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| started.elapsed() >= d)
                {
                    break;
                }
                let Some(seed) = plan.seed_at(next.fetch_add(1, Ordering::Relaxed)) else {
                    stop.store(true, Ordering::Relaxed);
                    break;
                };
                let run = run_seed(plan, seed);
                progress.seed_done(&run);
                results.lock().unwrap_or_else(|p| p.into_inner()).push(run);
            });
        }
    });
    let mut runs = results.into_inner().unwrap_or_else(|p| p.into_inner());
    runs.sort_by_key(|r| r.seed);
    runs
}

/// Failures that read as one bug: same checker, same first message once
/// its numbers are masked.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    pub checker: String,
    /// The first message with every number as `N`.
    pub message: String,
    pub count: u64,
    /// The first seeds of the group (at most [`SEEDS_SHOWN`]).
    pub seeds: Vec<u64>,
    /// The shrunk scenario, and how to replay it.
    pub file: Option<String>,
    pub replay: Option<String>,
    pub steps_before: Option<usize>,
    pub steps_after: Option<usize>,
    /// Why no shrunk file was written, if none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shrink_error: Option<String>,
}

pub const SEEDS_SHOWN: usize = 20;

/// `text`'s first line with every word that holds a digit (a number, a
/// hex value, a device name like `d0`) replaced by `N`, so that sectors,
/// data and times do not split one bug into many.
pub fn mask_numbers(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    let mut out = String::with_capacity(line.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().any(|c| c.is_ascii_digit()) {
            out.push('N');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in line.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Group the failing seeds, largest group first (ties: lowest first seed).
pub fn group(runs: &[SeedRun]) -> Vec<Group> {
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.verdict != Verdict::Pass) {
        let checker = run.checker.clone().unwrap_or_else(|| "none".into());
        let message = mask_numbers(run.message.as_deref().unwrap_or(""));
        let group = groups
            .entry((checker.clone(), message.clone()))
            .or_insert_with(|| Group {
                checker,
                message,
                count: 0,
                seeds: Vec::new(),
                file: None,
                replay: None,
                steps_before: None,
                steps_after: None,
                shrink_error: None,
            });
        group.count += 1;
        if group.seeds.len() < SEEDS_SHOWN {
            group.seeds.push(run.seed);
        }
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by_key(|g| (std::cmp::Reverse(g.count), g.seeds[0]));
    groups
}

/// Shrink each group's first seed into `out/group-NN.ron`, on up to
/// `jobs` threads; the files and their order depend only on the groups.
pub fn shrink_groups(groups: &mut [Group], runs: &[SeedRun], out: &Path, plan: &Plan) {
    let by_seed: BTreeMap<u64, &SeedRun> = runs.iter().map(|r| (r.seed, r)).collect();
    let next = AtomicU64::new(0);
    let shrunk = Mutex::new(BTreeMap::new());
    let count = groups.len() as u64;
    let groups_ref = &*groups;
    std::thread::scope(|scope| {
        for _ in 0..plan.jobs.max(1) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                let group = &groups_ref[index as usize];
                let run = by_seed[&group.seeds[0]];
                let file = out.join(format!("group-{:02}-{}.ron", index + 1, group.checker));
                let result = shrink_one(run, group, &file, plan.shrink_budget);
                shrunk
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(index, (file, result));
            });
        }
    });
    let shrunk = shrunk.into_inner().unwrap_or_else(|p| p.into_inner());
    for (index, (file, result)) in shrunk {
        let group = &mut groups[index as usize];
        match result {
            Ok((before, after)) => {
                group.replay = Some(replay(&file, group.seeds[0]));
                group.file = Some(file.display().to_string());
                group.steps_before = Some(before);
                group.steps_after = Some(after);
            }
            Err(e) => group.shrink_error = Some(e),
        }
    }
}

/// The command that replays a shrunk file.
pub fn replay(file: &Path, seed: u64) -> String {
    let shown = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    format!(
        "cargo run --release -p blksnap-sim -- run {} --seed {seed}",
        shown.display()
    )
}

/// Shrink one failing seed and write it; the step counts before and after.
fn shrink_one(
    run: &SeedRun,
    group: &Group,
    file: &PathBuf,
    budget: u32,
) -> Result<(usize, usize), String> {
    let scenario = run
        .failing
        .as_ref()
        .ok_or_else(|| "the seed failed outside the scenario (a bench error)".to_string())?;
    let shrunk = crate::panics::guard(|| {
        super::declare::shrink(scenario, run.seed, &group.checker, &group.message, budget)
    })
    .and_then(|r| r)?;
    std::fs::write(file, &shrunk.text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((shrunk.steps_before, shrunk.steps_after))
}
