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
fn features(seed: u64) -> (Features, bool) {
    let mut rng = SimRng::child(seed, "swarm/features");
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|kind| *kind == Kind::Recipe || rng.chance(1, 2))
        .collect();
    let fs = rng.chance(1, 2);
    let faults = rng.chance(1, 3);
    (Features::with_kinds(&kinds, fs), faults)
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
    format!(
        "swarm configuration: steps {}; fs model {}; faults {}",
        kinds.join(","),
        if features.fs { "on" } else { "off" },
        if faults { "on" } else { "off" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A kind that is off never shows up in the steps.
    #[test]
    fn switched_off_kinds_are_not_drawn() {
        use crate::scenario::model::Step;
        fn has_destroy(steps: &[Step]) -> bool {
            steps.iter().any(|s| match s {
                Step::Destroy { .. } => true,
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
