//! The `scenarios/fs` suite judges something: every scenario passes, and
//! its fs_consistency checker judged image sectors against the
//! filesystem's record (a checker that judged none would pass a TAKE that
//! forgets to freeze as readily as a correct one).

#[path = "common/runs.rs"]
mod runs;

#[test]
fn fs_scenarios_pass_and_judge_sectors() {
    let dir = runs::root().join("scenarios/fs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenarios/fs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ron"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "scenarios/fs has {} files", files.len());
    for file in &files {
        runs::each_seed(file, 0..10, |seed, outcome| {
            let judged = outcome.metrics["fs_sectors_judged"];
            assert!(
                outcome.passed(),
                "{} seed {seed}: {:?}",
                file.display(),
                outcome.failures
            );
            assert!(
                judged >= 100.0,
                "{} seed {seed}: fs_consistency judged only {judged} sectors",
                file.display()
            );
        });
    }
}
