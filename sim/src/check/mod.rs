//! Checkers: the engine reports, the sim judges.
//!
//! Every checker is a black box: it sees the operations the scenario ran,
//! the results the engine returned (errnos, data, events) and the sim's own
//! record of what was written where. None reads engine internals and none
//! knows which quirks are on.

pub mod cbt;
pub mod device_faults;
pub mod durability;
pub mod events;
pub mod fs_take;
pub mod injected;
pub mod lifecycle;
pub mod low_space;
pub mod point_in_time;
pub mod resources;
mod sector_map;
pub mod storage;
pub mod verdict;

pub use point_in_time::Oracle;

/// Every checker that can fail a run, as `expect_failure` names them.
pub const CHECKERS: &[&str] = &[
    "point_in_time",
    "storage",
    "lifecycle",
    "events",
    "expect",
    "coverage",
    "oops",
    "kernel_warn",
    "kernel",
    "bio",
    "lockdep",
    "memalloc_noio",
    "memory",
    "latency",
    "liveness",
    "resources",
    "fs",
    "cbt",
    "fs_consistency",
    "durability",
];
