//! One seed, one configuration: features, fault plan and scenario, all
//! drawn from child streams of the seed (so a new draw in one part does
//! not shift the others), never from anything else.
//!
//! Fault model: what a scenario file can say, and nothing more, so a
//! shrunk failure replays from its file: allocations that fail at named
//! engine sites (the Nth call, every call from the Nth, or a rate),
//! random EIO on device bios, and a failing add_disk. The sim records
//! each fault it injects (`check::injected`), so the checkers excuse
//! exactly what a fault explains.

use arbitrary::Unstructured;
use blksnap_core::module::ALLOC_SITES;

use crate::faults::AllocFault;
use crate::rng::SimRng;
use crate::scenario::model::Faults;
use crate::scenario::Scenario;

use super::gen::{Features, Generator, Kind};

/// Bytes the generator reads: far more than the longest scenario needs,
/// so no configuration is cut short by running out of input.
const GENERATOR_BYTES: usize = 16 * 1024;

/// A whole configuration, as one seed draws it.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub features: Features,
    /// Whether the fault plan is on.
    pub faults: bool,
    pub scenario: Scenario,
}

/// The configuration of `seed`, with `quirks` forced on.
pub fn configuration(seed: u64, quirks: &[String]) -> Config {
    let (features, faults) = features(seed);
    configure(seed, quirks, features, faults)
}

/// The configuration `seed` drew before power cuts, storage tails and CBT
/// were features (the same draws with all three off): tests that name a
/// seed for what its scenario showed then still run that scenario.
#[cfg(test)]
pub(crate) fn configuration_before_power_and_tails(seed: u64) -> Config {
    let (mut features, faults) = features(seed);
    features.power = false;
    features.tails = false;
    features.cbt = false;
    features.space = false;
    configure(seed, &[], features, faults)
}

fn configure(seed: u64, quirks: &[String], features: Features, faults: bool) -> Config {
    let mut bytes = vec![0u8; GENERATOR_BYTES];
    SimRng::child(seed, "swarm/generator").fill_bytes(&mut bytes);
    let mut u = Unstructured::new(&bytes);
    let mut scenario = match Generator::new(&mut u, features).scenario() {
        Ok(scenario) => scenario,
        // The generator answers every input, even an empty one.
        Err(e) => unreachable!("the generator gave up on seed {seed}: {e}"),
    };
    scenario.name = format!("swarm-{seed}");
    scenario.description = describe(&features, faults);
    scenario.seed = seed;
    scenario.quirks = quirks.to_vec();
    if faults {
        scenario.faults = fault_plan(&mut SimRng::child(seed, "swarm/faults"));
    }
    Config {
        seed,
        features,
        faults,
        scenario,
    }
}

/// Each kind of step on with probability 1/2, except the recipe (create,
/// storage, take) that keeps most configurations reaching a snapshot.
/// Power cuts (with write caches and journals), storage tails, CBT and
/// storage that runs out, each in one seed in four, are drawn last, so every other draw of a seed is as
/// before; a seed with none of them generates the scenario it always did.
fn features(seed: u64) -> (Features, bool) {
    let mut rng = SimRng::child(seed, "swarm/features");
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|kind| *kind == Kind::Recipe || rng.chance(1, 2))
        .collect();
    let fs = rng.chance(1, 2);
    let faults = rng.chance(1, 3);
    let mut features = Features::with_kinds(&kinds, fs);
    features.power = rng.chance(1, 4);
    features.tails = rng.chance(1, 4);
    features.cbt = rng.chance(1, 4);
    features.space = rng.chance(1, 4);
    (features, faults)
}

fn fault_plan(rng: &mut SimRng) -> Faults {
    let mut faults = Faults::default();
    for _ in 0..rng.range(0, 2) {
        let site = ALLOC_SITES[rng.below(ALLOC_SITES.len() as u64) as usize];
        let site = if rng.chance(1, 4) {
            format!("{site}/nowait")
        } else {
            site.to_string()
        };
        let how = match rng.below(6) {
            0..=2 => AllocFault::Nth(rng.range(1, 20)),
            3 => AllocFault::From(rng.range(1, 50)),
            _ => AllocFault::PerMillion(rng.range(1_000, 100_000)),
        };
        faults.alloc.push((site, how));
    }
    if rng.chance(1, 3) {
        faults.bio_error_ppm = rng.range(100, 20_000);
    }
    faults.add_disk_fail = rng.chance(1, 10);
    faults
}

/// The scenario's description: which features the seed switched on.
fn describe(features: &Features, faults: bool) -> String {
    let kinds: Vec<String> = features.kinds().iter().map(|k| format!("{k:?}")).collect();
    let mut text = format!(
        "swarm configuration: steps {}; fs model {}; faults {}",
        kinds.join(","),
        if features.fs { "on" } else { "off" },
        if faults { "on" } else { "off" }
    );
    // Named only when on: the other seeds keep the description they had.
    if features.power {
        text.push_str("; power cuts on");
    }
    if features.tails {
        text.push_str("; storage tails on");
    }
    if features.cbt {
        text.push_str("; cbt on");
    }
    if features.space {
        text.push_str("; storage runs out");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::model::{Step, Target};
    use crate::swarm::steps::all_steps;

    /// The Repeat(WaitEvent) drains between a cut's write (or Sync) and
    /// the cut, one per snapshot name.
    const SNAPSHOTS_DRAINED: usize = 2;

    /// A seed is a configuration: the same one every time; different seeds
    /// switch different features.
    #[test]
    fn a_seed_draws_one_configuration() {
        let quirks = vec!["B-IMG-1".to_string()];
        let a = configuration(7, &quirks);
        let b = configuration(7, &quirks);
        assert_eq!(format!("{:?}", a.scenario), format!("{:?}", b.scenario));
        assert_eq!(a.scenario.quirks, quirks);
        let masks: std::collections::BTreeSet<String> = (0..50)
            .map(|seed| configuration(seed, &[]).scenario.description)
            .collect();
        assert!(
            masks.len() > 40,
            "only {} distinct feature sets",
            masks.len()
        );
    }

    /// Configurations load as a scenario file would (fault sites, params,
    /// references), so a shrunk failure replays from its file. The one
    /// thing the loader refuses and a swarm may draw: a step naming a
    /// snapshot that no step creates (the shrinker drops such steps).
    #[test]
    fn configurations_are_loadable_scenarios() {
        let (mut with_faults, mut loaded) = (0, 0);
        for seed in 0..200 {
            let config = configuration(seed, &[]);
            with_faults += usize::from(config.faults);
            match crate::shrink::to_text(&config.scenario) {
                Ok(text) => {
                    loaded += 1;
                    assert!(text.contains(&format!("swarm-{seed}")));
                }
                Err(e) => assert!(e.contains("is never created"), "seed {seed}: {e}"),
            }
        }
        assert!(
            (30..=110).contains(&with_faults),
            "{with_faults} of 200 with faults"
        );
        assert!(loaded >= 100, "only {loaded} of 200 load");
    }

    /// The original a power cut at `index` rereads, after checking what
    /// surrounds the cut: a write to it just before (the drains and a
    /// Sync between), Load and its VerifyOriginal just after.
    fn cut_original(steps: &[Step], index: usize) -> String {
        assert!(
            matches!(steps[index + 1], Step::Load),
            "{:?}",
            steps[index + 1]
        );
        let Step::VerifyOriginal { device } = &steps[index + 2] else {
            panic!("no VerifyOriginal after the cut: {:?}", steps[index + 2]);
        };
        let write = steps[..index]
            .iter()
            .rev()
            .find(|s| !matches!(s, Step::Repeat { .. } | Step::Sync { .. }));
        let Some(Step::Write {
            target: Target::Original(written),
            ..
        }) = write
        else {
            panic!("no write before the cut: {write:?}");
        };
        assert_eq!(written, device);
        device.clone()
    }

    /// Whether each CREATE (in groups too) comes right after a DESTROY of
    /// its name, so no live snapshot is ever left without a name.
    fn creates_are_unnamed_first(steps: &[Step]) -> bool {
        let unnamed = steps.iter().enumerate().all(|(i, step)| match step {
            Step::Create { snapshot, .. } => {
                i > 0
                    && matches!(
                        &steps[i - 1],
                        Step::Destroy { snapshot: s, .. } if s == snapshot
                    )
            }
            _ => true,
        });
        unnamed
            && steps.iter().all(|step| match step {
                Step::Concurrent(branches)
                | Step::PowerLoss {
                    during: branches, ..
                } => branches.iter().all(|b| creates_are_unnamed_first(b)),
                _ => true,
            })
    }

    /// Power cuts come up in a fair share of seeds, and only with the
    /// `power` feature (like write caches and journals): always at the top
    /// level, after a write (so the durability checker has something to
    /// judge; a cut that judged nothing fails the run), followed by Load
    /// and a reread of what was written, in seeds that never hide a live
    /// snapshot by creating its name again. Some cut right after a journal
    /// commit (a Sync of a journaling filesystem): what catches a device
    /// that ignores FUA.
    #[test]
    fn power_cuts_come_up_after_writes_and_commits() {
        let (mut with_power, mut cut, mut cached, mut journaled, mut after_commit) =
            (0, 0, 0, 0, 0);
        for seed in 0..400 {
            let config = configuration(seed, &[]);
            let (devices, steps) = (&config.scenario.devices, &config.scenario.steps);
            let is_cut = |s: &&Step| matches!(s, Step::PowerLoss { .. });
            let nested = all_steps(steps).into_iter().filter(is_cut).count();
            let cuts: Vec<usize> = (0..steps.len()).filter(|i| is_cut(&&steps[*i])).collect();
            let has_cache = devices.iter().any(|d| d.write_cache);
            let journals: Vec<&str> = devices
                .iter()
                .filter(|d| d.journal.is_some())
                .map(|d| d.name.as_str())
                .collect();
            if !config.features.power {
                assert!(
                    nested == 0 && !has_cache && journals.is_empty(),
                    "seed {seed}"
                );
                continue;
            }
            assert_eq!(nested, cuts.len(), "seed {seed}: a cut inside a group");
            assert!(creates_are_unnamed_first(steps), "seed {seed}");
            with_power += 1;
            cut += usize::from(!cuts.is_empty());
            cached += usize::from(has_cache);
            journaled += usize::from(!journals.is_empty());
            let committed = cuts.iter().any(|&i| {
                let device = cut_original(steps, i);
                journals.contains(&device.as_str())
                    && matches!(&steps[i - SNAPSHOTS_DRAINED - 1], Step::Sync { device: d } if *d == device)
            });
            after_commit += usize::from(committed);
        }
        eprintln!(
            "{with_power} seeds with power: {cut} cut, {cached} cached, {journaled} journaled, \
             {after_commit} cut after a commit"
        );
        assert!(
            (60..=140).contains(&with_power),
            "{with_power} of 400 with power"
        );
        assert!(
            cut * 2 >= with_power,
            "only {cut} of {with_power} cut the power"
        );
        assert!(
            cached * 3 >= with_power * 2,
            "only {cached} of {with_power} cache"
        );
        assert!(journaled >= 10, "only {journaled} of {with_power} journal");
        assert!(after_commit >= 5, "only {after_commit} cut after a commit");
    }

    /// The regions a recipe's tailed ranges (`count` ranges of `chunk`
    /// plus a tail, each holding one region) need before the first
    /// low-free-space event after the creation's is due, counting the
    /// tails as filled (as spec 6.3 does) or not, if among them.
    fn crossing(minimum: u64, chunk: u64, range: u64, count: usize, tails: bool) -> Option<u64> {
        let floor = minimum - ((minimum / 2) & !7);
        let step = if tails { range } else { chunk };
        (1..=count as u64).find(|k| (k - 1) * step + chunk >= floor)
    }

    /// Storage tails come up, and only with the `tails` feature: recipes
    /// whose ranges leave tails and whose writes then reach the region
    /// where the first low-free-space event is due, a region at which an
    /// engine that forgot the tails would not raise it (so the events
    /// checker's rule 4 judges what the swarm could not catch before).
    #[test]
    fn storage_tails_move_the_low_space_crossing() {
        let (mut with_tails, mut moved) = (0, 0);
        for seed in 0..400 {
            let config = configuration(seed, &[]);
            let params = &config.scenario.params;
            let chunk = 1u64 << (params.chunk_minimum_shift - 9);
            let steps = &config.scenario.steps;
            let strided = |s: &Step| {
                matches!(
                    s,
                    Step::Write {
                        stride: Some(_),
                        ..
                    }
                )
            };
            if !config.features.tails {
                // Strided writes come from tails, or from storage that runs out.
                let strided_without = all_steps(steps).into_iter().any(strided);
                assert!(!strided_without || config.features.space, "seed {seed}");
                continue;
            }
            with_tails += 1;
            let mut seed_moved = false;
            for (i, step) in steps.iter().enumerate() {
                let Step::Append { ranges, .. } = step else {
                    continue;
                };
                let tailed = &ranges[..ranges.len().saturating_sub(1)];
                let Some(&(_, range)) = tailed.first() else {
                    continue;
                };
                if range <= chunk || range >= 2 * chunk || tailed.iter().any(|r| r.1 != range) {
                    continue;
                }
                let Some(Step::Write {
                    repeat,
                    stride: Some(stride),
                    ..
                }) = steps.get(i + 2)
                else {
                    continue;
                };
                assert_eq!(*stride, chunk, "seed {seed}");
                let minimum = params.diff_storage_minimum;
                let due = crossing(minimum, chunk, range, tailed.len(), true);
                let untailed = crossing(minimum, chunk, range, tailed.len(), false);
                // The writes stop at the device's last chunk.
                seed_moved |= due.is_some_and(|d| d <= *repeat) && due != untailed;
            }
            moved += usize::from(seed_moved);
        }
        eprintln!("{with_tails} seeds with tails, {moved} move the crossing");
        assert!(
            (60..=140).contains(&with_tails),
            "{with_tails} of 400 with tails"
        );
        assert!(moved >= 8, "only {moved} of {with_tails} move the crossing");
    }

    /// Storage runs out, and only with the `space` feature: after the
    /// events were read, small APPENDs each followed by the COW that fills
    /// them (they cannot re-arm the low-free-space event), and an APPEND
    /// of 2M after the overflow, followed by more COW.
    #[test]
    fn storage_runs_out_with_space() {
        let (mut with_space, mut trickles, mut after_overflow, mut small) = (0, 0, 0, 0);
        for seed in 0..400 {
            let config = configuration(seed, &[]);
            let params = &config.scenario.params;
            let chunk = 1u64 << (params.chunk_minimum_shift - 9);
            let minimum = params.diff_storage_minimum;
            // An APPEND after a look at the events, then the COW that fills it.
            let appended = |w: &[Step]| match w {
                [Step::WaitEvent { .. }, Step::Append { ranges, .. }, Step::Write {
                    stride: Some(stride),
                    sectors: 1,
                    repeat,
                    ..
                }] if ranges.len() == 1 && *stride == chunk => Some((ranges[0].1, *repeat)),
                _ => None,
            };
            let steps = &config.scenario.steps;
            let trickle = steps
                .windows(3)
                .filter_map(appended)
                .any(|(size, repeat)| size < 2 * minimum && size == repeat * chunk);
            let after = steps
                .windows(3)
                .filter_map(appended)
                .any(|(size, _)| size == 2 * minimum);
            if !config.features.space {
                assert!(
                    !after,
                    "seed {seed}: an APPEND after an overflow without space"
                );
                assert!(
                    minimum >= 4096,
                    "seed {seed}: a small minimum without space"
                );
                continue;
            }
            with_space += 1;
            trickles += usize::from(trickle);
            after_overflow += usize::from(after);
            small += usize::from(minimum < 4096);
        }
        eprintln!(
            "{with_space} seeds with space: {small} with a small minimum, {trickles} with small \
             APPENDs after the event, {after_overflow} append after the overflow"
        );
        assert!(
            (60..=140).contains(&with_space),
            "{with_space} of 400 with space"
        );
        assert!(
            trickles >= 15,
            "only {trickles} with small APPENDs after the event"
        );
        assert!(
            after_overflow >= 30,
            "only {after_overflow} append after the overflow"
        );
    }

    /// CBT ioctls and growing originals come up, and only with the `cbt`
    /// feature: READ_CBT_MAP, MARK_DIRTY and TRACKER_COLLECT, also in
    /// concurrent branches (racing TAKEs and writes), Resize only at the
    /// top level, and a write past the grown device's old end followed by
    /// a map read (the cbt checker's corrupted-map rule).
    #[test]
    fn cbt_ioctls_and_growth_come_up() {
        fn is_cbt(s: &Step) -> bool {
            matches!(
                s,
                Step::ReadCbtMap { .. }
                    | Step::MarkDirty { .. }
                    | Step::TrackerCollect { .. }
                    | Step::Resize { .. }
            )
        }
        let (mut with_cbt, mut in_branch, mut past_old_end) = (0, 0, 0);
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..400 {
            let config = configuration(seed, &[]);
            let steps = &config.scenario.steps;
            let all = all_steps(steps);
            if !config.features.cbt {
                assert!(!all.iter().any(|s| is_cbt(s)), "seed {seed}");
                continue;
            }
            with_cbt += 1;
            kinds.extend(
                all.iter()
                    .filter(|s| is_cbt(s))
                    .map(|s| format!("{:?}", s.kind())),
            );
            let nested = all.iter().filter(|s| is_cbt(s)).count();
            let top = steps.iter().filter(|s| is_cbt(s)).count();
            in_branch += usize::from(nested > top);
            let resize = |s: &Step| matches!(s, Step::Resize { .. });
            assert_eq!(
                all.iter().filter(|s| resize(s)).count(),
                steps.iter().filter(|s| resize(s)).count(),
                "seed {seed}: a Resize inside a group"
            );
            past_old_end += usize::from(steps.windows(3).any(|w| match w {
                [Step::Resize { device, sectors }, Step::Write {
                    target: Target::Original(d),
                    sector,
                    ..
                }, Step::ReadCbtMap { .. }] => d == device && sector < sectors,
                _ => false,
            }));
        }
        eprintln!("{with_cbt} seeds with cbt: {in_branch} with one in a branch, {past_old_end} write past a grown end; kinds {kinds:?}");
        assert!((60..=140).contains(&with_cbt), "{with_cbt} of 400 with cbt");
        assert_eq!(kinds.len(), 4, "{kinds:?}");
        assert!(
            in_branch >= 20,
            "only {in_branch} with a CBT ioctl in a branch"
        );
        assert!(
            past_old_end >= 5,
            "only {past_old_end} write past a grown end"
        );
    }

    /// A kind that is off never shows up in the steps (a DESTROY that
    /// frees the name of the CREATE after it, with `power`, is that
    /// CREATE's).
    #[test]
    fn switched_off_kinds_are_not_drawn() {
        fn has_destroy(steps: &[Step]) -> bool {
            steps.iter().enumerate().any(|(i, s)| match s {
                Step::Destroy { snapshot, .. } => !matches!(
                    steps.get(i + 1),
                    Some(Step::Create { snapshot: c, .. }) if c == snapshot
                ),
                Step::Concurrent(branches) => branches.iter().any(|b| has_destroy(b)),
                _ => false,
            })
        }
        let mut checked = 0;
        for seed in 0..200 {
            let config = configuration(seed, &[]);
            if !config.features.has(Kind::Destroy) {
                checked += 1;
                assert!(!has_destroy(&config.scenario.steps), "seed {seed}");
            }
        }
        assert!(checked > 50, "{checked}");
    }
}
