//! Shrinking a failing `lifecycle` scenario (or `ioctl_args` program) to
//! the steps that matter, for findings reports (`replay minimize`).
//!
//! The seed stays fixed; steps are removed one at a time (concurrent
//! groups are also tried flattened into their branches, and each branch
//! alone), keeping every change after which the run still fails with the
//! same signature: the first failure's checker and the words of its
//! message, numbers left out.

use blksnap_sim::scenario::model::Step;
use blksnap_sim::scenario::{Outcome, Scenario};

use crate::{ioctl_args, lifecycle};

/// Bound on scenario runs one minimization may spend.
const MAX_RUNS: usize = 1000;

/// What identifies a failure across runs: the checker, and the message
/// without its numbers (times, sectors, devices and ids change as steps go).
pub fn signature(outcome: &Outcome) -> Option<String> {
    let failure = outcome
        .failures
        .iter()
        .find(|f| f.checker != "expect")
        .or_else(|| outcome.failures.first())?;
    Some(format!(
        "[{}] {}",
        failure.checker,
        without_digits(&failure.message)
    ))
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

/// The signature of a failure report (any target), in the form of
/// [`signature`]: its first failure line that is not an `expect` failure
/// (else its first failure line), without time, repeat count or numbers.
pub fn report_signature(report: &str) -> String {
    let failures: Vec<&str> = report
        .lines()
        .filter_map(|l| l.strip_prefix("  ["))
        .collect();
    let Some(line) = failures
        .iter()
        .find(|l| !l.starts_with("expect]"))
        .or(failures.first())
    else {
        return without_digits(report.lines().next().unwrap_or(""));
    };
    let (checker, rest) = line.split_once(']').unwrap_or(("", line));
    let message = rest.split_once(" ns: ").map_or(rest, |(_, m)| m);
    let message = message
        .rsplit_once(" (x")
        .filter(|(_, tail)| tail.ends_with(')'))
        .map_or(message, |(m, _)| m);
    format!("[{checker}] {}", without_digits(message))
}

fn without_digits(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// The smallest `ioctl_args` program found that fails like `program`.
pub fn minimize_program(program: &ioctl_args::Program) -> Option<(ioctl_args::Program, String)> {
    let report = ioctl_args::run(program).err()?;
    let wanted = report_signature(&report);
    let mut best = (program.clone(), report);
    let mut runs = 0;
    loop {
        let mut progress = false;
        for p in 0..best.0.processes.len() {
            let mut index = 0;
            while index < best.0.processes[p].len() && runs < MAX_RUNS {
                let mut candidate = best.0.clone();
                candidate.processes[p].remove(index);
                runs += 1;
                match ioctl_args::run(&candidate) {
                    Err(report) if report_signature(&report) == wanted => {
                        best = (candidate, report);
                        progress = true;
                    }
                    _ => index += 1,
                }
            }
        }
        if !progress || runs >= MAX_RUNS {
            best.0.processes.retain(|ops| !ops.is_empty());
            return Some(best);
        }
    }
}

/// Shrink a failing input byte by byte, keeping its failure signature:
/// cut the tail, remove chunks, then zero bytes (the smallest choice).
/// Bounded by `MAX_RUNS` runs of `check`.
pub fn shrink_bytes(check: crate::Check, data: &[u8]) -> Vec<u8> {
    let Err(report) = check(data) else {
        return data.to_vec();
    };
    let wanted = report_signature(&report);
    let mut best = data.to_vec();
    let mut runs = 0;
    let mut fails = |candidate: &[u8]| {
        runs += 1;
        runs <= MAX_RUNS
            && matches!(check(candidate), Err(report) if report_signature(&report) == wanted)
    };
    let mut chunk = best.len() / 2;
    while chunk > 0 {
        let mut at = 0;
        while at < best.len() {
            let end = (at + chunk).min(best.len());
            let candidate: Vec<u8> = best[..at].iter().chain(&best[end..]).copied().collect();
            if fails(&candidate) {
                best = candidate;
            } else {
                at += chunk;
            }
        }
        chunk /= 2;
    }
    for at in 0..best.len() {
        if best[at] != 0 {
            let mut candidate = best.clone();
            candidate[at] = 0;
            if fails(&candidate) {
                best = candidate;
            }
        }
    }
    best
}
