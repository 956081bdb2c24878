//! Regenerate the seed corpus of `lifecycle`, `lifecycle_everything` and
//! `ioctl_args`.
//!
//! `cargo run -p blksnap-fuzz --bin gen-corpus [-- FUZZ_DIR]`
//!
//! Seeds are picked, not written by hand: pseudo-random inputs from a fixed
//! stream are decoded, and of the first few inputs that show each wanted
//! feature and pass, the shortest is kept. (A seed must pass: the corpus is
//! replayed by `cargo test`. Failing matches are counted and skipped; to
//! keep one, shrink it with `replay shrink` and file it under `findings/`.)
//! The output is deterministic; `scenario_parse` seeds are hand-written
//! text and are not touched.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use arbitrary::Unstructured;
use blksnap_fuzz::ioctl_args::{self, ArgMap, Call, Op, Program};
use blksnap_fuzz::{inputs, lifecycle, lifecycle_everything};
use blksnap_sim::cli::{say_line, warn};
use blksnap_sim::scenario::model::{Step, Target};
use blksnap_sim::scenario::{RunOptions, Scenario};

/// Inputs tried per feature before giving up on it.
const TRIES: u64 = 20_000;
/// Among matching inputs, the shortest of this many first matches is kept.
const CANDIDATES: usize = 4;
const SEED: u64 = 0x5eed_c0de;

/// A lifecycle feature: name, test on the scenario, and whether the run
/// must also have read an image (proof that a TAKE worked).
type LifecycleFeature = (&'static str, fn(&Scenario) -> bool, bool);
type IoctlFeature = (&'static str, fn(&Program) -> bool);

fn main() -> ExitCode {
    // Engine panics are caught and reported by the simulator; keep quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let mut missing = 0;
    let lifecycle_features = lifecycle_matchers(LIFECYCLE, lifecycle::build);
    missing += generate(&dir, "lifecycle", &lifecycle_features, 300);
    let everything_features = lifecycle_matchers(EVERYTHING, lifecycle_everything::build);
    missing += generate(&dir, "lifecycle_everything", &everything_features, 300);
    let ioctl_features: Vec<Matcher> = IOCTL_ARGS
        .iter()
        .map(|&(name, wanted)| {
            let matches = move |data: &[u8]| {
                ioctl_args::program(&mut Unstructured::new(data)).is_ok_and(|p| wanted(&p))
            };
            (name, Box::new(matches) as Box<dyn Fn(&[u8]) -> bool>)
        })
        .collect();
    missing += generate(&dir, "ioctl_args", &ioctl_features, 200);
    if missing > 0 {
        warn(&format!("{missing} feature(s) found no input"));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The matchers of a lifecycle target's features, on the scenarios its
/// `build` makes of an input.
fn lifecycle_matchers(
    features: &'static [LifecycleFeature],
    build: fn(&[u8]) -> Option<(Scenario, u64)>,
) -> Vec<Matcher<'static>> {
    features
        .iter()
        .map(|&(name, wanted, needs_image_reads)| {
            let matches = move |data: &[u8]| {
                build(data).is_some_and(|(scenario, seed)| {
                    wanted(&scenario)
                        && creates_what_it_uses(&scenario)
                        && (!needs_image_reads || image_reads(&scenario, seed) > 0.0)
                })
            };
            (name, Box::new(matches) as Box<dyn Fn(&[u8]) -> bool>)
        })
        .collect()
}

/// Every snapshot a step names is created by a step: the seed's `to-ron`
/// file is then an exact copy of what the target ran (`tests/to_ron.rs`).
fn creates_what_it_uses(scenario: &Scenario) -> bool {
    blksnap_sim::swarm::declare::loadable(scenario).is_ok_and(|(_, declared)| declared.is_empty())
}

/// Image reads the oracle checked when the scenario ran: a TAKE worked
/// and its images were read.
fn image_reads(scenario: &Scenario, seed: u64) -> f64 {
    let options = RunOptions {
        seed: Some(seed),
        ..RunOptions::default()
    };
    let outcome = blksnap_sim::scenario::run(scenario, &options);
    outcome
        .metrics
        .get("image_reads_checked")
        .copied()
        .unwrap_or(0.0)
}

/// A named predicate on inputs.
type Matcher<'a> = (&'a str, Box<dyn Fn(&[u8]) -> bool>);

/// Find, check and write one seed per feature; returns how many features
/// found no input at all.
fn generate(dir: &Path, target: &str, features: &[Matcher], max_len: usize) -> usize {
    let check = blksnap_fuzz::target(target).expect("a known target");
    let corpus = dir.join("corpus").join(target);
    let mut missing = 0;
    for (index, (name, wanted)) in features.iter().enumerate() {
        let stream = SEED ^ (index as u64) << 32;
        let mut failing = 0;
        let mut candidates: Vec<Vec<u8>> = (0..TRIES)
            .map(|i| inputs::random_input(stream, i, max_len))
            .filter(|data| wanted(data))
            .filter(|data| {
                let passes = check(data).is_ok();
                failing += usize::from(!passes);
                passes
            })
            .take(CANDIDATES)
            .collect();
        candidates.sort_by_key(Vec::len);
        let Some(data) = candidates.into_iter().next() else {
            warn(&format!(
                "{target}/{name}: no passing input found ({failing} failing)"
            ));
            missing += 1;
            continue;
        };
        let file = format!("seed-{name}.bin");
        write(&corpus.join(&file), &data);
        say_line(&format!(
            "{target}/{file}: {} bytes ({failing} failing match(es) skipped)",
            data.len()
        ));
    }
    missing
}

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = std::fs::write(path, data) {
        warn(&format!("{}: {e}", path.display()));
    }
}

// --- lifecycle features -----------------------------------------------------------------------

/// Every step, concurrent branches flattened, with its branch number
/// (None at top level) and its position.
fn flat(steps: &[Step]) -> Vec<(Option<usize>, &Step)> {
    let mut out = Vec::new();
    for step in steps {
        if let Step::Concurrent(branches) = step {
            for (b, branch) in branches.iter().enumerate() {
                out.extend(branch.iter().map(|s| (Some(b), s)));
            }
        } else {
            out.push((None, step));
        }
    }
    out
}

fn position(s: &Scenario, wanted: impl Fn(&Step) -> bool) -> Option<usize> {
    flat(&s.steps).iter().position(|(_, step)| wanted(step))
}

fn is_take(step: &Step) -> bool {
    matches!(step, Step::Take { .. })
}

fn is_image_io(step: &Step) -> bool {
    matches!(
        step,
        Step::Read {
            target: Target::Image(..),
            ..
        } | Step::Write {
            target: Target::Image(..),
            ..
        } | Step::VerifyImage { .. }
    )
}

/// An image read: the lifecycle target's scenarios come sanitized, so a
/// `VerifyImage` arrives as plain image reads.
fn is_image_read(step: &Step) -> bool {
    matches!(
        step,
        Step::Read {
            target: Target::Image(..),
            ..
        } | Step::VerifyImage { .. }
    )
}

fn is_original_write(step: &Step) -> bool {
    matches!(
        step,
        Step::Write {
            target: Target::Original(_),
            ..
        } | Step::Workload(_)
    )
}

fn is_io(step: &Step) -> bool {
    is_image_io(step)
        || is_original_write(step)
        || matches!(step, Step::Read { .. } | Step::VerifyOriginal { .. })
}

fn count(s: &Scenario, wanted: impl Fn(&Step) -> bool) -> usize {
    flat(&s.steps)
        .iter()
        .filter(|(_, step)| wanted(step))
        .count()
}

/// A take, then a write to the original, then image IO.
fn take_write_image(s: &Scenario) -> bool {
    let steps = flat(&s.steps);
    let Some(take) = steps.iter().position(|(_, st)| is_take(st)) else {
        return false;
    };
    let Some(write) = steps[take..]
        .iter()
        .position(|(_, st)| is_original_write(st))
    else {
        return false;
    };
    steps[take + write..].iter().any(|(_, st)| is_image_io(st))
}

/// A concurrent group with a destroy in one branch and IO in the other.
fn concurrent_with(s: &Scenario, first: fn(&Step) -> bool, second: fn(&Step) -> bool) -> bool {
    s.steps.iter().any(|step| match step {
        Step::Concurrent(branches) if branches.len() == 2 => {
            let has = |b: &Vec<Step>, f: fn(&Step) -> bool| b.iter().any(f);
            (has(&branches[0], first) && has(&branches[1], second))
                || (has(&branches[1], first) && has(&branches[0], second))
        }
        _ => false,
    })
}

fn destroy_during_io(s: &Scenario) -> bool {
    s.devices.len() >= 2
        && position(s, is_take).is_some()
        && concurrent_with(s, |st| matches!(st, Step::Destroy { .. }), is_io)
}

fn take_during_writes(s: &Scenario) -> bool {
    concurrent_with(s, is_take, is_original_write)
}

fn image_read_during_writes(s: &Scenario) -> bool {
    position(s, is_take).is_some() && concurrent_with(s, is_image_io, is_original_write)
}

fn two_snapshots(s: &Scenario) -> bool {
    let takes_of = |name: &str| {
        count(
            s,
            |st| matches!(st, Step::Take { snapshot, .. } if snapshot == name),
        )
    };
    takes_of("a") > 0 && takes_of("b") > 0 && count(s, is_image_io) > 0
}

fn fs_take(s: &Scenario) -> bool {
    s.devices.iter().any(|d| d.fs) && take_write_image(s)
}

fn small_storage_many_writes(s: &Scenario) -> bool {
    s.params.diff_storage_minimum == 4096
        && s.params.chunk_minimum_shift <= 13
        && position(s, is_take).is_some()
        && count(s, is_original_write) >= 4
        && count(s, |st| matches!(st, Step::WaitEvent { .. })) > 0
}

fn bad_ranges(s: &Scenario) -> bool {
    let bad = |st: &Step| match st {
        Step::Append { ranges, .. } => ranges
            .iter()
            .any(|&(sector, count)| count == 0 || sector % 8 != 0 || count % 8 != 0),
        _ => false,
    };
    count(s, bad) >= 2 && position(s, is_take).is_some()
}

fn missing_devices(s: &Scenario) -> bool {
    let missing = |st: &Step| match st {
        Step::Create { devices, .. } => devices.iter().any(|d| d == "9:9"),
        Step::Append { device, .. } => device == "9:9",
        _ => false,
    };
    count(s, missing) >= 2
}

fn destroy_then_image_io(s: &Scenario) -> bool {
    let steps = flat(&s.steps);
    let Some(take) = steps.iter().position(|(b, st)| b.is_none() && is_take(st)) else {
        return false;
    };
    let rest = &steps[take..];
    let Some(destroy) = rest
        .iter()
        .position(|(b, st)| b.is_none() && matches!(st, Step::Destroy { .. }))
    else {
        return false;
    };
    rest[destroy..].iter().any(|(_, st)| is_image_io(st))
}

fn priority_scheduler(s: &Scenario) -> bool {
    matches!(s.scheduler, blksnap_sim::scenario::model::Scheduler::Priority(n) if n > 0)
        && take_write_image(s)
}

fn image_writes(s: &Scenario) -> bool {
    position(s, is_take).is_some()
        && count(s, |st| {
            matches!(
                st,
                Step::Write {
                    target: Target::Image(..),
                    ..
                }
            )
        }) >= 2
        && count(s, is_image_read) > 0
}

fn collect_and_events(s: &Scenario) -> bool {
    count(s, |st| matches!(st, Step::Collect { .. })) > 0
        && count(s, |st| matches!(st, Step::CollectImages { .. })) > 0
        && count(s, |st| matches!(st, Step::WaitEvent { .. })) > 0
        && position(s, is_take).is_some()
}

fn three_devices(s: &Scenario) -> bool {
    s.devices.len() == 4
        && count(
            s,
            |st| matches!(st, Step::Create { devices, .. } if devices.len() >= 2),
        ) > 0
        && take_write_image(s)
}

fn recreate(s: &Scenario) -> bool {
    count(
        s,
        |st| matches!(st, Step::Create { snapshot, .. } if snapshot == "a"),
    ) >= 2
        && count(
            s,
            |st| matches!(st, Step::Destroy { snapshot, .. } if snapshot == "a"),
        ) >= 1
        && count(s, is_take) >= 2
}

fn long(s: &Scenario) -> bool {
    flat(&s.steps).len() >= 35 && position(s, is_take).is_some()
}

fn nowait_writes(s: &Scenario) -> bool {
    count(s, |st| matches!(st, Step::Write { nowait: true, .. })) >= 1 && take_write_image(s)
}

fn out_of_range_io(s: &Scenario) -> bool {
    let capacity = |name: &str| s.devices.iter().find(|d| d.name == name).map(|d| d.sectors);
    let beyond = |st: &Step| match st {
        Step::Write {
            target: Target::Original(d) | Target::Image(_, d),
            sector,
            sectors,
            ..
        }
        | Step::Read {
            target: Target::Original(d) | Target::Image(_, d),
            sector,
            sectors,
            ..
        } => capacity(d).is_some_and(|c| sector + sectors > c),
        _ => false,
    };
    count(s, beyond) >= 2 && position(s, is_take).is_some()
}

const LIFECYCLE: &[LifecycleFeature] = &[
    ("take-write-image", take_write_image, true),
    ("destroy-during-io", destroy_during_io, true),
    ("take-during-writes", take_during_writes, true),
    ("image-read-during-writes", image_read_during_writes, true),
    ("two-snapshots", two_snapshots, true),
    ("fs-take", fs_take, true),
    ("small-storage-many-writes", small_storage_many_writes, true),
    ("bad-ranges", bad_ranges, true),
    ("missing-devices", missing_devices, false),
    ("destroy-then-image-io", destroy_then_image_io, true),
    ("priority-scheduler", priority_scheduler, true),
    ("image-writes", image_writes, true),
    ("collect-and-events", collect_and_events, true),
    ("three-devices", three_devices, true),
    ("recreate", recreate, true),
    ("long", long, true),
    ("nowait-writes", nowait_writes, true),
    ("out-of-range-io", out_of_range_io, true),
];

// --- lifecycle_everything features: power cuts, storage tails, CBT, storage that runs out ---------

/// The `during` branches of every power cut, in order.
fn power_cuts(s: &Scenario) -> Vec<&Vec<Vec<Step>>> {
    s.steps
        .iter()
        .filter_map(|step| match step {
            Step::PowerLoss { during, .. } => Some(during),
            _ => None,
        })
        .collect()
}

/// Every step of `steps`, repeats and concurrent branches flattened.
fn all(steps: &[Step]) -> Vec<&Step> {
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Concurrent(branches) => branches.iter().for_each(|b| out.extend(all(b))),
            Step::Repeat { steps, .. } => out.extend(all(steps)),
            other => out.push(other),
        }
    }
    out
}

/// A power cut with a branch running that `wanted` finds a step of.
fn cut_during(s: &Scenario, wanted: fn(&Step) -> bool) -> bool {
    power_cuts(s).iter().any(|during| {
        during
            .iter()
            .any(|branch| all(branch).into_iter().any(wanted))
    })
}

/// The top-level position of the first power cut.
fn first_cut(s: &Scenario) -> Option<usize> {
    s.steps
        .iter()
        .position(|st| matches!(st, Step::PowerLoss { .. }))
}

/// A journaling filesystem commits (a Sync) and the power goes right
/// after: its FUA commit record must be on the media.
fn cut_after_commit(s: &Scenario) -> bool {
    let Some(cut) = first_cut(s) else {
        return false;
    };
    s.devices.iter().any(|d| d.journal.is_some())
        && s.steps[..cut]
            .iter()
            .any(|st| matches!(st, Step::Sync { .. }))
        && position(s, is_take).is_some_and(|take| take < cut)
}

/// A write cache, a snapshot taken, and a cut: what the cache held
/// without a FLUSH may go, what a FLUSH or FUA promised may not.
fn cached_cut(s: &Scenario) -> bool {
    s.devices.iter().any(|d| d.write_cache)
        && first_cut(s).is_some()
        && position(s, is_take).is_some()
}

/// The power goes while a writer COWs into a snapshot just taken.
fn cut_during_cow_writer(s: &Scenario) -> bool {
    position(s, is_take).is_some() && cut_during(s, is_original_write)
}

/// The power goes during a FLUSH loop.
fn cut_during_flushes(s: &Scenario) -> bool {
    cut_during(s, |st| matches!(st, Step::Flush { .. }))
}

/// The power goes during a TAKE.
fn cut_during_take(s: &Scenario) -> bool {
    cut_during(s, is_take)
}

/// Two power cuts, each followed by a load and a reread.
fn two_cuts(s: &Scenario) -> bool {
    power_cuts(s).len() >= 2
}

/// The strided write that fills a recipe's tailed ranges up to its
/// low-free-space event, and the WAIT_EVENTs after it.
fn fill_to_low_space(s: &Scenario) -> bool {
    let strided = |st: &Step| {
        matches!(
            st,
            Step::Write {
                stride: Some(_),
                ..
            }
        )
    };
    count(s, strided) > 0 && count(s, |st| matches!(st, Step::WaitEvent { .. })) >= 3
}

/// Storage ranges with tails crossing the low-space threshold.
fn tails_low_space(s: &Scenario) -> bool {
    fill_to_low_space(s) && !s.devices.iter().any(|d| d.fs)
}

/// The same on a filesystem: the COWs come from its writeback.
fn tails_on_fs(s: &Scenario) -> bool {
    fill_to_low_space(s) && s.devices.iter().any(|d| d.fs)
}

/// Tails crossing the threshold, then a power cut.
fn tails_then_cut(s: &Scenario) -> bool {
    fill_to_low_space(s) && first_cut(s).is_some()
}

/// A cached device and a journal, a snapshot's life and a cut.
fn cache_and_journal(s: &Scenario) -> bool {
    s.devices.iter().any(|d| d.write_cache)
        && s.devices.iter().any(|d| d.journal.is_some())
        && first_cut(s).is_some()
        && take_write_image(s)
}

/// A device grows, is written past its old end, and its map is read (the
/// cbt checker's corrupted-map rule).
fn cbt_grow_past_end(s: &Scenario) -> bool {
    s.steps.windows(3).any(|w| {
        matches!(
            w,
            [
                Step::Resize { .. },
                Step::Write { .. },
                Step::ReadCbtMap { .. }
            ]
        )
    })
}

/// A map read and a MARK_DIRTY race writes in a concurrent group.
fn cbt_race(s: &Scenario) -> bool {
    s.steps.iter().any(|step| match step {
        Step::Concurrent(branches) => branches.iter().any(|b| {
            b.iter().any(|x| matches!(x, Step::MarkDirty { .. }))
                && b.iter().any(|x| matches!(x, Step::ReadCbtMap { .. }))
        }),
        _ => false,
    })
}

/// The sizes of the APPENDs that come right after a look at the events
/// and are followed by COW, as a `space` recipe makes them.
fn appends_after_looks(s: &Scenario) -> impl Iterator<Item = u64> + '_ {
    s.steps.windows(3).filter_map(|w| match w {
        [Step::WaitEvent { .. }, Step::Append { ranges, .. }, Step::Write {
            stride: Some(_), ..
        }] if ranges.len() == 1 => Some(ranges[0].1),
        _ => None,
    })
}

/// Storage runs out: small APPENDs after the low-free-space event, too
/// little to re-arm it (the events checker's rule 8).
fn space_small_appends(s: &Scenario) -> bool {
    let minimum = s.params.diff_storage_minimum;
    appends_after_looks(s)
        .filter(|&size| size < 2 * minimum)
        .count()
        >= 2
}

/// Storage runs out and an APPEND of 2M comes after the overflow (rule 9).
fn space_after_overflow(s: &Scenario) -> bool {
    let minimum = s.params.diff_storage_minimum;
    appends_after_looks(s).any(|size| size == 2 * minimum)
}

const EVERYTHING: &[LifecycleFeature] = &[
    ("cut-after-commit", cut_after_commit, true),
    ("cached-cut", cached_cut, true),
    ("cut-during-cow-writer", cut_during_cow_writer, true),
    ("cut-during-flushes", cut_during_flushes, false),
    ("cut-during-take", cut_during_take, false),
    ("two-cuts", two_cuts, true),
    ("tails-low-space", tails_low_space, true),
    ("tails-on-fs", tails_on_fs, true),
    ("tails-then-cut", tails_then_cut, true),
    ("cache-and-journal", cache_and_journal, true),
    ("take-write-image", take_write_image, true),
    ("destroy-during-io", destroy_during_io, true),
    ("cbt-grow-past-end", cbt_grow_past_end, false),
    ("cbt-race", cbt_race, false),
    ("space-small-appends", space_small_appends, false),
    ("space-after-overflow", space_after_overflow, false),
];

// --- ioctl_args features ----------------------------------------------------------------------

fn calls(p: &Program) -> impl Iterator<Item = (&Call, &ArgMap)> {
    p.processes.iter().flatten().filter_map(|op| match op {
        Op::Ioctl { call, arg } => Some((call, arg)),
        _ => None,
    })
}

fn has(p: &Program, wanted: fn(&Call) -> bool) -> bool {
    calls(p).any(|(call, arg)| matches!(arg, ArgMap::Full) && wanted(call))
}

fn full_life(p: &Program) -> bool {
    has(p, |c| matches!(c, Call::Create { .. }))
        && has(p, |c| matches!(c, Call::Append { .. }))
        && has(p, |c| matches!(c, Call::Take { .. }))
        && p.processes
            .iter()
            .flatten()
            .any(|op| matches!(op, Op::Write { .. }))
}

fn two_callers(p: &Program) -> bool {
    p.processes.len() == 2 && p.processes.iter().all(|ops| ops.len() >= 3) && full_life(p)
}

fn bad_pointers(p: &Program) -> bool {
    calls(p)
        .filter(|(_, arg)| matches!(arg, ArgMap::Null | ArgMap::Wild | ArgMap::Truncated(_)))
        .count()
        >= 3
}

fn raw_commands(p: &Program) -> bool {
    calls(p)
        .filter(|(c, _)| matches!(c, Call::Raw { .. }))
        .count()
        >= 3
}

fn cbt(p: &Program) -> bool {
    has(p, |c| matches!(c, Call::ReadCbtMap { .. }))
        && has(p, |c| matches!(c, Call::MarkDirtyBlocks { .. }))
        && has(p, |c| matches!(c, Call::TrackerCollect { .. }))
}

fn collect(p: &Program) -> bool {
    has(p, |c| matches!(c, Call::Collect { .. }))
        && has(p, |c| matches!(c, Call::CollectImages { .. }))
        && has(p, |c| matches!(c, Call::Create { .. }))
}

fn huge_counts(p: &Program) -> bool {
    calls(p)
        .filter(|(c, _)| match c {
            Call::Create { count, .. }
            | Call::Append { count, .. }
            | Call::Collect { count, .. }
            | Call::MarkDirtyBlocks { count, .. } => *count >= 1 << 20,
            _ => false,
        })
        .count()
        >= 2
}

fn tracker_remove(p: &Program) -> bool {
    has(p, |c| matches!(c, Call::TrackerRemove { .. })) && full_life(p)
}

fn destroy_twice(p: &Program) -> bool {
    calls(p)
        .filter(|(c, _)| matches!(c, Call::Destroy { .. }))
        .count()
        >= 2
        && full_life(p)
}

fn wait_events(p: &Program) -> bool {
    calls(p)
        .filter(|(c, _)| matches!(c, Call::WaitEvent { timeout_ms, .. } if *timeout_ms > 0))
        .count()
        >= 1
        && has(p, |c| matches!(c, Call::Create { .. }))
}

fn long_program(p: &Program) -> bool {
    p.processes.iter().map(Vec::len).sum::<usize>() >= 30
}

fn empty_arrays(p: &Program) -> bool {
    calls(p)
        .filter(|(c, _)| match c {
            Call::Create { count, .. } | Call::Append { count, .. } => *count == 0,
            _ => false,
        })
        .count()
        >= 2
}

const IOCTL_ARGS: &[IoctlFeature] = &[
    ("full-life", full_life),
    ("two-callers", two_callers),
    ("bad-pointers", bad_pointers),
    ("raw-commands", raw_commands),
    ("cbt", cbt),
    ("collect", collect),
    ("huge-counts", huge_counts),
    ("tracker-remove", tracker_remove),
    ("destroy-twice", destroy_twice),
    ("wait-events", wait_events),
    ("long-program", long_program),
    ("empty-arrays", empty_arrays),
];
