//! Events rules 7 to 9 (`check::low_space`): histories of ioctls fed to
//! the checker that must fail and ones that must pass (each failing test
//! here fails if its rule judged nothing), and the two coverage scenarios
//! passing on the fixed engine at every seed.

use std::path::Path;

use blksnap_sim::check::low_space::Requests;
use blksnap_sim::scenario::{load, run, RunOptions};

const S: [u8; 16] = [0x5a; 16];
/// diff_storage_minimum in these histories (T = 8).
const M: u64 = 16;

/// A snapshot created over [100, 200] ns with M = 16, its creation's event
/// taken (labelled 150), and one APPEND of 16 sectors over [300, 400].
fn history() -> Requests {
    let mut r = Requests::default();
    r.minimum(100, M);
    r.created(S, 100, 200);
    r.low_space(S, 150, M).unwrap();
    append(&mut r, 300, 400, M);
    r
}

fn append(r: &mut Requests, began: u64, ended: u64, sectors: u64) {
    let token = r.append_begins(S, began, sectors).expect("created");
    r.append_ends(token, ended);
}

/// Rule 7: an event asking for a running total fails, with the values the
/// parameter held; the value it held, or one the user set before the
/// label, passes; one set after the label does not count.
#[test]
fn a_request_that_is_not_the_minimum_fails() {
    let mut r = history();
    assert_eq!(
        r.low_space(S, 1_000, 2 * M).unwrap_err(),
        "a WAIT_EVENT returned a low-free-space event labelled 1000 ns \
         asking for 32 sectors, but diff_storage_minimum was [16] from the start of the \
         snapshot's CREATE (100 ns) to then: every low-free-space event asks for the \
         parameter's value, not a running total"
    );
    let mut r = history();
    r.minimum(2_000, 64);
    r.low_space(S, 1_000, M).unwrap();
    assert!(r.low_space(S, 1_500, 64).is_err(), "64 was set after 1500");
    let mut r = history();
    r.minimum(500, 64);
    r.low_space(S, 1_000, 64).unwrap();
    // The creation's event of a snapshot made before the change asked for 16.
    let mut fresh = Requests::default();
    fresh.minimum(100, M);
    fresh.created(S, 100, 200);
    fresh.minimum(150, 64);
    fresh.low_space(S, 160, M).unwrap();
}

/// Rule 8: a second event after the creation's with no APPEND that could
/// re-arm it fails; an APPEND that brings the capacity to 2M by the label
/// allows one more, a smaller one or one begun after the label does not.
#[test]
fn a_second_event_without_a_rearming_append_fails() {
    let mut r = history();
    r.low_space(S, 1_000, M).unwrap();
    assert_eq!(
        r.low_space(S, 2_000, M).unwrap_err(),
        "a WAIT_EVENT returned a low-free-space event labelled 2000 ns, \
         which makes 2 after the creation's labelled by then, but at most 0 APPEND_STORAGE \
         call(s) could have re-armed the event by then (the k-th re-arming APPEND must bring \
         the capacity up to what the engine then requested, (k+1)·16 sectors): the engine \
         raises one, then another only after an APPEND re-arms it"
    );
    // Capacity 16 + 8 < 32: no re-arm.
    let mut r = history();
    append(&mut r, 1_100, 1_200, 8);
    r.low_space(S, 1_000, M).unwrap();
    assert!(r.low_space(S, 2_000, M).is_err());
    // Capacity 16 + 16 = 32: one re-arm, so two events; a third fails.
    let mut r = history();
    append(&mut r, 1_100, 1_200, M);
    r.low_space(S, 1_000, M).unwrap();
    r.low_space(S, 2_000, M).unwrap();
    assert!(r.low_space(S, 3_000, M).is_err());
    // The APPEND began after the event's label: it cannot have re-armed it.
    let mut r = history();
    append(&mut r, 2_100, 2_200, M);
    r.low_space(S, 1_000, M).unwrap();
    assert!(r.low_space(S, 2_000, M).is_err());
    // In flight at the label: it may have cleared the flag already.
    let mut r = history();
    let token = r.append_begins(S, 1_900, M).unwrap();
    r.low_space(S, 1_000, M).unwrap();
    r.low_space(S, 2_000, M).unwrap();
    r.append_ends(token, 2_500);
}

/// Rule 8 when the parameter changed since the CREATE: any APPEND counts,
/// the one of 8 sectors too.
#[test]
fn a_changed_minimum_counts_every_append() {
    let mut r = history();
    r.minimum(500, 8);
    append(&mut r, 600, 700, 8);
    r.low_space(S, 1_000, 8).unwrap();
    r.low_space(S, 2_000, 8).unwrap();
    r.low_space(S, 3_000, 8).unwrap();
    let err = r.low_space(S, 4_000, 8).unwrap_err();
    assert!(
        err.contains("makes 4 after") && err.contains("at most 2"),
        "{err}"
    );
    assert!(err.contains("diff_storage_minimum changed"), "{err}");
}

/// Rule 9: after the user saw corrupted(ENOSPC) at a moment with no event
/// or region descriptor allocation in reclaim, an event labelled later
/// fails; one labelled before passes. While such an allocation reclaims,
/// the window stays open until a later look finds none.
#[test]
fn a_low_space_event_after_the_overflow_fails() {
    let mut r = history();
    r.overflow_seen(S, 5_000, || false);
    r.low_space(S, 4_000, M).unwrap();
    assert_eq!(
        r.low_space(S, 6_000, M).unwrap_err(),
        "a WAIT_EVENT returned a low-free-space event labelled 6000 ns, \
         but a WAIT_EVENT had returned the snapshot's corrupted event with ENOSPC, and at 5000 \
         ns no allocation of an event or a region descriptor was in reclaim: after an overflow \
         every region request fails at once, so no low-free-space event is raised later"
    );
    let mut r = history();
    append(&mut r, 1_100, 1_200, 10 * M);
    r.overflow_seen(S, 5_000, || true);
    r.low_space(S, 6_000, M).unwrap();
    r.look(S, 7_000, || false);
    r.overflow_seen(S, 9_000, || false);
    let err = r.low_space(S, 8_000, M).unwrap_err();
    assert!(err.contains("at 7000 ns no allocation"), "{err}");
    // A look before any overflow was seen closes nothing.
    let mut r = history();
    r.look(S, 5_000, || false);
    r.low_space(S, 6_000, M).unwrap();
}

/// Rule 7 end to end: the user sets diff_storage_minimum to 32 after the
/// CREATE, and the next event asks for 32 (T is 16 now: the first region
/// leaves 8 of the 16 requested). The runner tells the checker of the new
/// value; if it did not, rule 7 would fail this run.
#[test]
fn an_event_asks_for_the_minimum_the_user_set() {
    let text = r#"Scenario(
        name: "set-minimum",
        params: (chunk_minimum_shift: 12, diff_storage_minimum: 16),
        devices: [(name: "d", sectors: 2048, fill: Pattern), (name: "store", sectors: 4096)],
        steps: [
            Create(snapshot: "s", devices: ["d"]),
            WaitEvent(snapshot: "s", expect: LowFreeSpace(16)),
            Append(snapshot: "s", device: "store", ranges: [(0, 64)]),
            Take(snapshot: "s"),
            SetParam(name: "diff_storage_minimum", value: 32),
            Write(target: Original("d"), sector: 0, sectors: 1),
            WaitEvent(snapshot: "s", timeout_ms: 100, expect: LowFreeSpace(32)),
            Destroy(snapshot: "s"),
        ],
    )"#;
    let s = blksnap_sim::scenario::parse(Path::new("t.ron"), text).expect("parses");
    for seed in 0..20 {
        let options = RunOptions {
            seed: Some(seed),
            ..RunOptions::default()
        };
        let o = run(&s, &options);
        assert!(o.passed(), "seed {seed}: {:?}", o.failures);
    }
}

/// The coverage scenarios reach rules 8 and 9 and pass on the fixed engine
/// at every seed (the one-line breaks of the report fail them at every
/// seed).
#[test]
fn the_low_space_scenarios_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/coverage");
    for file in ["low-space-after-overflow.ron", "low-space-rearm.ron"] {
        let s = load(&root.join(file)).expect("loads");
        for seed in 0..50 {
            let options = RunOptions {
                seed: Some(seed),
                ..RunOptions::default()
            };
            let o = run(&s, &options);
            assert!(o.passed(), "{file} seed {seed}: {:?}", o.failures);
        }
    }
}
