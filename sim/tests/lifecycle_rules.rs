//! The lifecycle checker's two TAKE rules catch what they are about, and
//! their scenarios reach the window they judge:
//! - image disks: none from a TAKE that got its snapshot's lock after a
//!   DESTROY unlisted it (`races/take-vs-destroy*.ron`);
//! - a TAKE that returns 0 had no corrupted diff area when it checked
//!   (`faults/take-corrupted-during-take.ron`).
//!
//! Each rule is fed a synthetic violation (and the near misses it must let
//! pass), and each scenario is run where the engine misbehaves (a quirk)
//! or shown to reach the window on the fixed engine.

use std::path::Path;

use blksnap_core::kernel::{DevT, Errno};
use blksnap_core::uapi::IoctlNr;
use blksnap_sim::check::lifecycle::{Call, Lifecycle};
use blksnap_sim::scenario::{parse, run, Outcome, RunOptions};

const S: [u8; 16] = [1; 16];

fn call(nr: IoctlNr, result: Result<i64, Errno>) -> Call {
    Call {
        nr,
        id: Some(S),
        result,
        listed: None,
        created: None,
        alloc_fault: false,
        append_valid: false,
    }
}

/// A checker with snapshot S created (as `ctl.rs` tells it, at 0 ns).
fn with_snapshot() -> Lifecycle {
    let mut l = Lifecycle::default();
    let token = l.begin();
    let create = Call {
        id: None,
        created: Some(S),
        ..call(IoctlNr::SnapshotCreate, Ok(0))
    };
    l.end(token, &create).unwrap();
    l.events.created(S, 0);
    l
}

/// Two TAKEs of S and its DESTROY in flight; the DESTROY returns, then the
/// first TAKE returns `first`; an image disk appears (`early`: before that
/// return); the second TAKE returns 0. The verdict of that last return.
fn take_take_destroy(first: Result<i64, Errno>, early: bool) -> Result<(), String> {
    let mut l = with_snapshot();
    let (t1, t2, d) = (l.begin(), l.begin(), l.begin());
    l.end(d, &call(IoctlNr::SnapshotDestroy, Ok(0)))?;
    if early {
        l.image_added(DevT::new(252, 0), 500)?;
    }
    l.end(t1, &call(IoctlNr::SnapshotTake, first))?;
    if !early {
        l.image_added(DevT::new(252, 0), 500)?;
    }
    l.end(t2, &call(IoctlNr::SnapshotTake, Ok(0)))
}

#[test]
fn an_image_of_a_take_that_got_the_lock_after_destroy_is_caught() {
    let err = take_take_destroy(Err(Errno::ENOMEM), false).unwrap_err();
    assert!(
        err.contains("image disk 252:0 was added at 500 ns by a TAKE of a snapshot whose DESTROY had returned")
            && err.contains("returned (ENOMEM)"),
        "{err}"
    );
    // Any result that needs the lock seals the snapshot.
    assert!(take_take_destroy(Ok(0), false).is_err());
    assert!(take_take_destroy(Err(Errno::EALREADY), false).is_err());
}

#[test]
fn images_v2_allows_after_destroy_pass() {
    // The image came before the sealing TAKE returned: the TAKE that made
    // it may have held the lock before the unlist (spec 8.4).
    take_take_destroy(Err(Errno::ENOMEM), true).unwrap();
    // ESRCH and ENODATA come before the lock: they tell nothing.
    take_take_destroy(Err(Errno::ESRCH), false).unwrap();
    take_take_destroy(Err(Errno::ENODATA), false).unwrap();
    // A TAKE of another snapshot in flight may have made it.
    let mut l = with_snapshot();
    let (t1, t2, other, d) = (l.begin(), l.begin(), l.begin(), l.begin());
    l.end(d, &call(IoctlNr::SnapshotDestroy, Ok(0))).unwrap();
    l.end(t1, &call(IoctlNr::SnapshotTake, Err(Errno::ENOMEM)))
        .unwrap();
    l.image_added(DevT::new(252, 0), 500).unwrap();
    l.end(t2, &call(IoctlNr::SnapshotTake, Ok(0))).unwrap();
    let other_take = Call {
        id: Some([2; 16]),
        ..call(IoctlNr::SnapshotTake, Ok(0))
    };
    l.end(other, &other_take).unwrap();
}

#[test]
fn an_image_while_no_take_runs_is_caught() {
    let mut l = with_snapshot();
    let err = l.image_added(DevT::new(252, 3), 7).unwrap_err();
    assert!(
        err.contains("while no SNAPSHOT_TAKE was in flight"),
        "{err}"
    );
    let token = l.begin();
    l.image_added(DevT::new(252, 3), 8).unwrap();
    let collect = Call {
        id: None,
        listed: Some(vec![S]),
        ..call(IoctlNr::SnapshotCollect, Ok(0))
    };
    let err = l.end(token, &collect).unwrap_err();
    assert!(
        err.contains("252:3 was added at 8 ns while no SNAPSHOT_TAKE"),
        "{err}"
    );
}

/// A TAKE of S that ran alone (unless `overlapped`), froze at 100 ns,
/// thawed at 200 ns and returned `result`; then a WAIT_EVENT hands out a
/// corrupted event of S labelled `label`. The verdict on that event.
fn corrupted_at(label: i64, result: Result<i64, Errno>, overlapped: bool) -> Result<(), String> {
    let mut l = with_snapshot();
    let token = l.begin();
    l.engine_freeze(false, 100);
    let other = overlapped.then(|| l.begin());
    l.engine_freeze(true, 200);
    if let Some(other) = other {
        l.end(
            other,
            &call(IoctlNr::SnapshotCollectImages, Err(Errno::ENODEV)),
        )?;
    }
    l.end(token, &call(IoctlNr::SnapshotTake, result))?;
    let wait = l.events.wait_begins(S, 300, None);
    l.events.returned(&wait, 310, label)?;
    l.events.corrupted(S, 0x70_0000)?;
    l.corrupted_reported(S, label)
}

#[test]
fn a_take_that_returned_0_on_a_corrupted_snapshot_is_caught() {
    let err = corrupted_at(150, Ok(0), false).unwrap_err();
    assert!(
        err.contains(
            "reported corrupted at 150 ns, after the TAKE's first freeze (100 ns) and before \
             its last thaw (200 ns)"
        ),
        "{err}"
    );
    assert!(corrupted_at(199, Ok(0), false).is_err());
}

#[test]
fn corruptions_a_take_may_not_see_pass() {
    // After the check (while the images are made), or before the switch.
    corrupted_at(200, Ok(0), false).unwrap();
    corrupted_at(250, Ok(0), false).unwrap();
    corrupted_at(100, Ok(0), false).unwrap();
    // The TAKE failed, as it must; another ioctl overlapped it (whose
    // freezes and thaws are not known to be the TAKE's).
    corrupted_at(150, Err(Errno::EFAULT), false).unwrap();
    corrupted_at(150, Ok(0), true).unwrap();
}

fn scenario_text(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(file);
    std::fs::read_to_string(path).unwrap()
}

fn run_text(text: &str, seed: u64) -> Outcome {
    let scenario = parse(Path::new("test.ron"), text).unwrap_or_else(|e| panic!("{e}"));
    let options = RunOptions {
        seed: Some(seed),
        ..RunOptions::default()
    };
    run(&scenario, &options)
}

/// With B-SNAP-9 (v2: no lock around the check, so a TAKE goes on with a
/// snapshot a DESTROY unlisted) the race file fails the image-disk rule;
/// the fixed engine passes it.
#[test]
fn take_vs_destroy_catches_a_take_that_goes_on_after_destroy() {
    for file in ["races/take-vs-destroy.ron", "races/take-vs-destroy-pct.ron"] {
        let text = scenario_text(file);
        let with_quirk = text.replacen(
            "    devices:",
            "    quirks: [\"B-SNAP-9\"],\n    devices:",
            1,
        );
        let caught = (0..8)
            .filter(|&seed| {
                run_text(&with_quirk, seed).failures.iter().any(|f| {
                    f.checker == "lifecycle" && f.message.contains("whose DESTROY had returned")
                })
            })
            .count();
        assert!(caught >= 4, "{file}: caught at {caught} of 8 seeds");
        for seed in 0..4 {
            let outcome = run_text(&text, seed);
            assert!(outcome.passed, "{file} seed {seed}: {:?}", outcome.failures);
        }
    }
}

/// The fault lands inside TAKE: on the fixed engine a TAKE of the file
/// fails with EFAULT (its check saw the corruption) at the suite's seed.
#[test]
fn take_corrupted_during_take_reaches_the_check() {
    let file = "faults/take-corrupted-during-take.ron";
    let text = scenario_text(file);
    let strict = text.replace(
        "[Take(snapshot: \"s\", expect: Any)]",
        "[Take(snapshot: \"s\")]",
    );
    assert_ne!(strict, text);
    let outcome = run_text(&strict, 1);
    assert!(
        outcome
            .failures
            .iter()
            .any(|f| f.message.contains("(Take): expected success, got EFAULT")),
        "{:?}",
        outcome.failures
    );
    assert!(run_text(&text, 1).passed);
}
