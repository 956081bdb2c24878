//! Shrinking a failing `lifecycle` scenario to the steps that matter, for
//! findings reports (the `replay minimize` command).
//!
//! The seed stays fixed; steps are removed one at a time (concurrent
//! groups are also tried flattened into their branches, and each branch
//! alone), keeping every change after which the run still fails with the
//! same signature: the first failure's checker and the words of its
//! message, numbers left out.

use blksnap_sim::scenario::model::Step;
use blksnap_sim::scenario::{Outcome, Scenario};

use crate::lifecycle;

/// Bound on scenario runs one minimization may spend.
const MAX_RUNS: usize = 2000;

/// What identifies a failure across runs: the checker, and the message
/// without its numbers (times, sectors, devices and ids change as steps go).
pub fn signature(outcome: &Outcome) -> Option<String> {
    let failure = outcome
        .failures
        .iter()
        .find(|f| f.checker != "expect")
        .or_else(|| outcome.failures.first())?;
    let words: String = failure
        .message
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    Some(format!("[{}] {}", failure.checker, words))
}

/// The smallest scenario found that fails like `scenario` does under
/// `seed`, with its failing outcome; `None` if it does not fail at all.
pub fn minimize(scenario: &Scenario, seed: u64) -> Option<(Scenario, Outcome)> {
    let (_, outcome) = lifecycle::judge(scenario, seed)?;
    let wanted = signature(&outcome)?;
    let mut best = (scenario.clone(), outcome);
    let runs = std::cell::Cell::new(0);
    let still_fails = |candidate: &Scenario| -> Option<Outcome> {
        runs.set(runs.get() + 1);
        if runs.get() > MAX_RUNS {
            return None;
        }
        let (_, outcome) = lifecycle::judge(candidate, seed)?;
        (signature(&outcome).as_deref() == Some(wanted.as_str())).then_some(outcome)
    };
    loop {
        let mut progress = false;
        let mut index = 0;
        while index < best.0.steps.len() {
            let mut changed = false;
            for replacement in alternatives(&best.0.steps[index]) {
                let mut candidate = best.0.clone();
                candidate.steps.splice(index..=index, replacement);
                if let Some(outcome) = still_fails(&candidate) {
                    best = (candidate, outcome);
                    changed = true;
                    progress = true;
                    break;
                }
            }
            if !changed {
                index += 1;
            }
        }
        if !progress || runs.get() > MAX_RUNS {
            return Some(best);
        }
    }
}

/// What a step may shrink to, smallest first: nothing; for a concurrent
/// group, each branch alone and the branches one after the other, then
/// the group with one step fewer in some branch.
fn alternatives(step: &Step) -> Vec<Vec<Step>> {
    let mut out = vec![Vec::new()];
    if let Step::Concurrent(branches) = step {
        for branch in branches {
            out.push(branch.clone());
        }
        out.push(branches.iter().flatten().cloned().collect());
        for (b, branch) in branches.iter().enumerate() {
            for i in 0..branch.len() {
                let mut smaller = branches.clone();
                smaller[b].remove(i);
                smaller.retain(|branch| !branch.is_empty());
                out.push(vec![Step::Concurrent(smaller)]);
            }
        }
    }
    out
}
