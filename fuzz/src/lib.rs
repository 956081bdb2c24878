//! blksnap-fuzz: the bodies of the cargo-fuzz targets, as plain functions.
//!
//! The `fuzz_target!` wrappers live in the separate crate `cargo-fuzz/`
//! (outside the workspace, so that `libfuzzer-sys` and nightly stay out of
//! the normal build). Here every target is a `fn(&[u8])` that panics with a
//! readable report on failure, plus a `check` twin that returns the report
//! instead, so `cargo test` can replay the committed corpus on stable Rust
//! and the `replay` binary can rerun a crash file.
//!
//! Targets:
//! - [`lifecycle`](mod@lifecycle): a small scenario built from the input,
//!   judged by the simulator's own checkers with no quirk on (the fixed
//!   engine must pass).
//! - [`lifecycle_everything`](mod@lifecycle_everything): the same with
//!   power cuts and storage tails too (its own corpus).
//! - [`scenario_parse`](mod@scenario_parse): the scenario loader on
//!   arbitrary text.
//! - [`ioctl_args`](mod@ioctl_args): the ioctls with hostile argument
//!   structs and pointers.
//! - [`scenario_run`](mod@scenario_run): scenario files with hostile
//!   numbers, loaded and run under a small work budget.
//!
//! Tools: [`minimize`] shrinks failing inputs, [`inputs`] makes
//! deterministic pseudo-random ones, [`steps`] builds scenario steps,
//! [`to_ron`](mod@to_ron) turns an input into a regression scenario.
//! Invariants: a body is deterministic (same input, same run, same
//! verdict), and fails only on a checker's verdict or a broken property of
//! the target itself, never on an errno the engine may legitimately give.

#![forbid(unsafe_code)]

pub mod inputs;
pub mod ioctl_args;
pub mod lifecycle;
pub mod lifecycle_everything;
pub mod minimize;
pub mod scenario_parse;
pub mod scenario_run;
pub mod steps;
pub mod to_ron;

pub use ioctl_args::ioctl_args;
pub use lifecycle::lifecycle;
pub use lifecycle_everything::lifecycle_everything;
pub use scenario_parse::scenario_parse;
pub use scenario_run::scenario_run;

/// A target's non-panicking body: `Err` carries the failure report.
pub type Check = fn(&[u8]) -> Result<(), String>;

/// Every target, by the name cargo-fuzz and the corpus directories use.
pub const TARGETS: [(&str, Check); 5] = [
    ("lifecycle", lifecycle::check),
    ("lifecycle_everything", lifecycle_everything::check),
    ("scenario_parse", scenario_parse::check),
    ("ioctl_args", ioctl_args::check),
    ("scenario_run", scenario_run::check),
];

/// The `check` function of a target, by name.
pub fn target(name: &str) -> Option<Check> {
    TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .map(|(_, check)| *check)
}
