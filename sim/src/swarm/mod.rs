//! Swarm testing: each seed draws a whole configuration (devices, sizes,
//! filesystem model, module parameters, scheduler, fault plan, and a
//! workload of ioctls, IO and concurrency), runs it with every checker on,
//! and judges it; failures are shrunk and grouped by checker and message.
//!
//! - [`gen`]: the configuration generator (shared with the fuzz crate);
//! - [`inputs`]: pseudo-random fuzz inputs, and the `lifecycle` target's
//!   reading of one;
//! - [`steps`]: step constructors the generators use;
//! - [`judge`]: which failures are the engine's;
//! - [`config`]: seed -> configuration (features, faults, quirks);
//! - [`declare`]: generated scenarios as loadable files (for shrinking);
//! - [`campaign`]: many seeds over worker threads, grouping, shrinking.

pub mod campaign;
pub mod command;
pub mod config;
pub mod declare;
pub mod gen;
pub mod inputs;
pub mod judge;
pub mod merge;
pub mod steps;
pub mod sweep;
