//! blksnap-core: the copy-on-write snapshot engine of the blksnap v2 Linux
//! module (Dec 2022 patch series), ported to Rust.
//!
//! One file per upstream object, named as upstream names it. The engine
//! reaches the world only through [`kernel::Kernel`]; it has no IO, clock,
//! randomness or threads of its own. Where v2 is wrong the engine follows
//! the later fix, and [`quirks`] switches each v2 bug back on by its spec id.
//!
//! Architecture invariants (see ARCHITECTURE.md):
//! - `core` never depends on the simulator.
//! - No `unsafe`, no `HashMap`, no wall clock, no OS randomness.
//! - White-box invariants (chunk state transitions, reference counts) are
//!   asserts here; black-box judgement belongs to the host.

#![forbid(unsafe_code)]

pub mod cbt_map;
pub mod chunk;
pub mod ctrl;
pub mod diff_area;
pub mod diff_buffer;
pub mod diff_io;
pub mod diff_storage;
pub mod event_queue;
pub mod kernel;
pub mod module;
pub mod params;
pub mod quirks;
pub mod snapimage;
pub mod snapshot;
pub mod tracker;
pub mod uapi;

pub use module::Module;
pub use params::Params;
pub use quirks::Quirks;
