//! Deterministic pseudo-random fuzz inputs, for the stable-Rust tests and
//! the corpus generator. The stream lives in the simulator
//! ([`blksnap_sim::swarm::inputs`]) so that `blksnap-sim bench` times the
//! `lifecycle` target on the same inputs as `replay random`.

pub use blksnap_sim::swarm::inputs::{random_input, SplitMix};
