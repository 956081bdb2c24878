//! Shrinking a failing scenario: remove steps and lower counts while the
//! same checker still fails, so a failure found by a sweep or a fuzzer
//! becomes the smallest scenario that shows it.
//!
//! Greedy and bounded: each round tries the candidates in order (drop a
//! step, drop a branch, halve a repeat count, recurse into groups:
//! Concurrent, Repeat, Timed and a PowerLoss's `during` processes), from
//! the one that last worked, and keeps the first that still fails the same
//! way; it stops when no candidate does or the run budget is spent.

use std::path::Path;

use crate::scenario::model::{Scenario, Step};
use crate::scenario::{self, RunOptions};

/// What a shrink found.
pub struct Shrunk {
    pub scenario: Scenario,
    /// The text of the smallest scenario, loadable as a file.
    pub text: String,
    pub runs: u32,
    pub steps_before: usize,
    pub steps_after: usize,
}

/// Does this scenario, at this seed, still fail with `checker`?
fn still_fails(candidate: &Scenario, seed: u64, checker: &str) -> bool {
    let options = RunOptions {
        seed: Some(seed),
        ..RunOptions::default()
    };
    scenario::run(candidate, &options)
        .failures
        .iter()
        .any(|f| f.checker == checker)
}

/// Shrink `original` while it fails with `checker` at `seed`, in at most
/// `budget` runs.
pub fn shrink(
    original: &Scenario,
    seed: u64,
    checker: &str,
    budget: u32,
) -> Result<Shrunk, String> {
    shrink_while(original, budget, &|candidate| {
        still_fails(candidate, seed, checker)
    })
    .ok_or_else(|| format!("the scenario does not fail with '{checker}' at seed {seed}"))?
}

/// Shrink `original` while `keeps` holds, in at most `budget` runs of it;
/// `None` if it does not hold for `original`. `keeps` says what "fails the
/// same way" means: the CLI's `shrink` wants any failure of one checker,
/// the swarm wants the judge to still blame its group's bug.
pub fn shrink_while(
    original: &Scenario,
    budget: u32,
    keeps: &dyn Fn(&Scenario) -> bool,
) -> Option<Result<Shrunk, String>> {
    if !keeps(original) {
        return None;
    }
    let mut best = original.clone();
    best.expect_failure = None;
    let mut runs = 1;
    // Each round goes on from the candidate that last worked, wrapping
    // round, instead of from the first: after dropping step i, dropping
    // step i again (the next one) is where to look, and the steps before
    // it were tried already. From the first, a long scenario paid i runs
    // per step dropped (a 139-step swarm failure kept 111 steps within
    // the swarm's 200-run budget).
    let mut start = 0;
    'rounds: while runs < budget {
        let all = candidates(&best.steps);
        let n = all.len();
        let mut order: Vec<(usize, Vec<Step>)> = all.into_iter().enumerate().collect();
        order.rotate_left(start.min(n));
        for (index, steps) in order {
            if runs >= budget {
                break 'rounds;
            }
            let mut candidate = best.clone();
            candidate.steps = steps;
            if to_text(&candidate).is_err() {
                continue;
            }
            runs += 1;
            if keeps(&candidate) {
                best = candidate;
                start = index;
                continue 'rounds;
            }
        }
        break;
    }
    Some(to_text(&best).map(|text| Shrunk {
        steps_before: count_steps(&original.steps),
        steps_after: count_steps(&best.steps),
        scenario: best,
        text,
        runs,
    }))
}

/// The scenario as RON that loads again (references checked).
pub fn to_text(scenario: &Scenario) -> Result<String, String> {
    let config = ron::ser::PrettyConfig::new().struct_names(true);
    let body = ron::ser::to_string_pretty(scenario, config).map_err(|e| e.to_string())?;
    let text = format!("// Shrunk by `blksnap-sim shrink`; every field is spelled out.\n{body}\n");
    scenario::parse(Path::new("shrunk.ron"), &text).map_err(|e| e.to_string())?;
    Ok(text)
}

fn count_steps(steps: &[Step]) -> usize {
    steps
        .iter()
        .map(|step| match step {
            Step::Concurrent(branches)
            | Step::PowerLoss {
                during: branches, ..
            } => 1 + branches.iter().map(|b| count_steps(b)).sum::<usize>(),
            Step::Repeat { steps, .. } | Step::Timed { steps, .. } => 1 + count_steps(steps),
            _ => 1,
        })
        .sum()
}

/// Smaller variants of a step list, most promising first.
fn candidates(steps: &[Step]) -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    for i in 0..steps.len() {
        let mut fewer = steps.to_vec();
        fewer.remove(i);
        out.push(fewer);
    }
    for (i, step) in steps.iter().enumerate() {
        for smaller in smaller_step(step) {
            let mut variant = steps.to_vec();
            variant[i] = smaller;
            out.push(variant);
        }
    }
    out
}

/// Smaller forms of a group's branches: one branch fewer, or one branch's
/// steps shrunk.
fn smaller_branches(branches: &[Vec<Step>]) -> Vec<Vec<Vec<Step>>> {
    let mut out = Vec::new();
    for i in 0..branches.len() {
        let mut fewer = branches.to_vec();
        fewer.remove(i);
        out.push(fewer);
    }
    for (i, branch) in branches.iter().enumerate() {
        for smaller in candidates(branch) {
            let mut variant = branches.to_vec();
            variant[i] = smaller;
            out.push(variant);
        }
    }
    out
}

/// Smaller forms of one step: fewer branches or repeats, a group's steps
/// shrunk, or the group replaced by its contents.
fn smaller_step(step: &Step) -> Vec<Step> {
    let mut out = Vec::new();
    match step {
        Step::Concurrent(branches) => {
            out.extend(smaller_branches(branches).into_iter().map(Step::Concurrent));
        }
        // The processes running while the power goes, as a group's branches.
        Step::PowerLoss {
            during,
            after_us,
            jitter_us,
        } => {
            out.extend(
                smaller_branches(during)
                    .into_iter()
                    .map(|during| Step::PowerLoss {
                        during,
                        after_us: *after_us,
                        jitter_us: *jitter_us,
                    }),
            );
        }
        Step::Timed { max_ms, steps } => {
            for smaller in candidates(steps) {
                out.push(Step::Timed {
                    max_ms: *max_ms,
                    steps: smaller,
                });
            }
        }
        Step::Repeat { times, steps } => {
            if *times > 1 {
                out.push(Step::Repeat {
                    times: times / 2,
                    steps: steps.clone(),
                });
            }
            for smaller in candidates(steps) {
                out.push(Step::Repeat {
                    times: *times,
                    steps: smaller,
                });
            }
        }
        Step::Write { repeat, .. } if *repeat > 1 => {
            let mut half = step.clone();
            if let Step::Write { repeat, .. } = &mut half {
                *repeat /= 2;
            }
            out.push(half);
        }
        Step::Workload(w) if w.ops > 1 => {
            let mut half = w.clone();
            half.ops /= 2;
            out.push(Step::Workload(half));
        }
        _ => {}
    }
    out
}
