//! Same seed, same trace digest; a random workload under two seeds gives
//! two digests. Runs the real scenario files through the library.

#[path = "common/runs.rs"]
mod runs;

fn digest(path: &str, seed: u64) -> String {
    let outcome = runs::run_at(&runs::load_file(&runs::root().join(path)), Some(seed));
    assert!(
        outcome.passed(),
        "{path} seed {seed}: {:?}",
        outcome.failures
    );
    outcome.digest
}

#[test]
fn same_seed_same_digest() {
    let path = "scenarios/basic/writers-during-take.ron";
    assert_eq!(digest(path, 7), digest(path, 7));
}

#[test]
fn different_seeds_different_digests() {
    let path = "scenarios/basic/writers-during-take.ron";
    let digests: std::collections::BTreeSet<String> =
        (1..=4).map(|seed| digest(path, seed)).collect();
    assert_eq!(digests.len(), 4, "{digests:?}");
}
