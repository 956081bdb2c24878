//! blksnap-sim: a deterministic simulated kernel that hosts the blksnap
//! engine, the scenario runner, the checkers and the CLI.
//!
//! Architecture invariants (see ARCHITECTURE.md):
//! - One thread, one seed: all randomness comes from [`rng::SimRng`]; no
//!   `HashMap` iteration, no wall clock, no threads, no OS entropy.
//! - Checkers are black boxes: they judge what the engine returned against
//!   the sim's own records, never engine internals, never quirks.
//! - Same seed, same trace digest.

#![forbid(unsafe_code)]

pub mod bench;
pub mod block;
pub mod cache;
pub mod check;
pub mod cli;
pub mod console;
pub mod ctl;
pub mod data_faults;
pub mod device;
pub mod disk_faults;
pub mod fault_select;
pub mod faults;
pub mod fs;
pub mod kernel;
pub mod lockdep;
pub mod panics;
pub mod power;
pub mod rng;
mod runqueue;
pub mod scenario;
pub mod series;
pub mod shrink;
pub mod suite;
pub mod swarm;
pub mod trace;
pub mod user;
