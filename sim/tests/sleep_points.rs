//! The inventory of sleeping points in ARCHITECTURE.md is what the engine
//! does: every site listed there is reached by the suite (so an await that
//! disappears, or stops reporting its site, fails this test), and every site
//! the engine reaches is listed (so a new await is documented).
//!
//! The walk is the whole `scenarios/` suite at each file's own seed: it
//! drives every ioctl, the COW, image and eviction paths, and the failure
//! paths the bug scenarios open.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

#[path = "common/runs.rs"]
mod runs;

const SECTION: &str = "## Sleeping points inventory";

use runs::root;

/// The `site` column (the last one; each name in backquotes) of the
/// inventory table.
fn listed_sites() -> BTreeSet<String> {
    let text = fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let start = text.find(SECTION).expect("the inventory section");
    let section = &text[start + SECTION.len()..];
    let end = section.find("\n## ").unwrap_or(section.len());
    let mut sites = BTreeSet::new();
    for line in section[..end].lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        let Some(last) = cells.last().map(|c| c.trim()) else {
            continue;
        };
        if cells.len() < 3 || !last.starts_with('`') {
            continue;
        }
        // Odd pieces between backquotes are the site names.
        for site in last.split('`').skip(1).step_by(2) {
            sites.insert(site.to_string());
        }
    }
    sites
}

fn scenario_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .expect("scenario dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            scenario_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "ron") {
            out.push(path);
        }
    }
}

/// Sites reached over the suite, with how many scenarios reached each.
fn reached_sites() -> BTreeMap<String, u64> {
    let mut files = Vec::new();
    scenario_files(&root().join("scenarios"), &mut files);
    assert!(files.len() > 50, "the suite was not found: {files:?}");
    let mut reached = BTreeMap::new();
    for file in files {
        let outcome = runs::run_at(&runs::load_file(&file), None);
        for site in outcome.sleep_sites.keys() {
            *reached.entry(site.clone()).or_insert(0) += 1;
        }
    }
    reached
}

#[test]
fn every_listed_sleeping_point_is_reached_and_every_reached_one_is_listed() {
    let listed = listed_sites();
    assert!(
        listed.len() >= 5,
        "the inventory lists too few sites: {listed:?}"
    );
    let reached = reached_sites();
    let missing: Vec<&String> = listed
        .iter()
        .filter(|s| !reached.contains_key(*s))
        .collect();
    let unlisted: Vec<&String> = reached.keys().filter(|s| !listed.contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "sleeping points listed in ARCHITECTURE.md that no scenario reached \
         (an await was removed?): {missing:?}; reached: {reached:?}"
    );
    assert!(
        unlisted.is_empty(),
        "sleeping points reached but not in the ARCHITECTURE.md inventory: {unlisted:?}"
    );
}

/// The bio submissions of work items and of the image kthread (no bio
/// list is open there, so `submit_bio_noacct` may sleep) are sleeping
/// points the race scenarios written for them reach, at each of seeds
/// 0..10 under the random scheduler and under PCT:
/// - the eviction work's store (`cache_release.submit_bio`), in
///   `races/cow-vs-eviction`: the one-chunk write cache sends every dirty
///   image chunk through the eviction work;
/// - the store the COW's load-completion work starts
///   (`notify_load.submit_bio`), in `races/cow-store-submit-vs-image`;
/// - the image worker's synchronous chunk load, from the diff storage and
///   from the original (`image_load_diff.submit_bio`,
///   `image_load_orig.submit_bio`), in `races/image-load-vs-cow`.
#[test]
fn work_item_and_image_worker_submissions_are_reached_by_their_races() {
    let cases = [
        ("cow-vs-eviction", "cache_release.submit_bio"),
        ("cow-store-submit-vs-image", "notify_load.submit_bio"),
        ("image-load-vs-cow", "image_load_diff.submit_bio"),
        ("image-load-vs-cow", "image_load_orig.submit_bio"),
    ];
    for (race, site) in cases {
        for name in [format!("{race}.ron"), format!("{race}-pct.ron")] {
            let file = root().join("scenarios/races").join(&name);
            runs::each_seed(&file, 0..10, |seed, outcome| {
                assert!(
                    outcome.passed(),
                    "{name} seed {seed}: {:?}",
                    outcome.failures
                );
                let reached = outcome.sleep_sites.get(site).copied().unwrap_or(0);
                assert!(
                    reached > 0,
                    "{name} seed {seed}: never slept at {site}; sites: {:?}",
                    outcome.sleep_sites
                );
            });
        }
    }
}
