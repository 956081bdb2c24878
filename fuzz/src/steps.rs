//! The scenario step constructors now live in the simulator, shared with
//! `blksnap-sim swarm`; re-exported here for the fuzz targets.

pub use blksnap_sim::swarm::steps::*;
