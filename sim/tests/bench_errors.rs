//! A panic outside engine code is the bench's fault, reported as `bench`
//! with its location; a panic in `core` is still an oops.

use std::path::Path;

use blksnap_sim::kernel::{Sim, BENCH_CHECKER};
use blksnap_sim::scenario::{self, RunOptions};

/// Run one process whose body panics in this file (bench code).
fn run_panicking(body: fn()) -> Vec<blksnap_sim::kernel::Failure> {
    let sim = Sim::new(1);
    sim.spawn_process("runner", Box::pin(async move { body() }));
    sim.run();
    sim.failures()
}

#[test]
fn a_panic_in_bench_code_is_a_bench_error_with_its_location() {
    let line = line!() + 3;
    let failures = run_panicking(|| {
        let pause: u64 = std::hint::black_box(u64::MAX);
        std::hint::black_box(pause.checked_mul(1000).expect("runner overflow"));
    });
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure = &failures[0];
    assert_eq!(failure.checker, BENCH_CHECKER, "{failure:?}");
    let at = format!("sim/tests/bench_errors.rs:{line}:");
    assert!(failure.message.contains(&at), "{failure:?} lacks {at}");
    assert!(failure.message.contains("runner overflow"), "{failure:?}");
    assert!(failure.message.contains("task 'runner'"), "{failure:?}");
}

#[test]
fn a_panic_inside_std_called_by_the_bench_is_blamed_on_the_caller() {
    // The capacity overflow panics in `alloc`, not here: the backtrace
    // names this file as the first frame of ours.
    let failures = run_panicking(|| {
        let n = std::hint::black_box(usize::MAX);
        std::hint::black_box(Vec::<u64>::with_capacity(n));
    });
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].checker, BENCH_CHECKER, "{failures:?}");
    assert!(
        failures[0].message.contains("sim/tests/bench_errors.rs:"),
        "{failures:?}"
    );
}

#[test]
fn an_engine_panic_is_still_an_oops() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/bugs/snap-2.ron");
    let outcome = scenario::run_file(&path, &RunOptions::default()).expect("loads");
    assert!(outcome.passed(), "{:?}", outcome.failures);
    let caught = outcome.caught_by.expect("caught");
    assert_eq!(caught.checker, "oops");
    assert!(
        outcome.failures.iter().all(|f| f.checker != BENCH_CHECKER),
        "{:?}",
        outcome.failures
    );
}
