//! The `lifecycle_everything` target: [`lifecycle`](mod@crate::lifecycle)
//! with every generator feature on ([`Features::EVERYTHING`]), the two
//! that `lifecycle` leaves off too. `power` gives devices volatile write
//! caches and journaling filesystems and cuts the power (sometimes during
//! COW writers, commits, FLUSHes or a TAKE), then loads the module again
//! and rereads the original, which the durability checker judges;
//! `tails` gives recipes storage ranges that are not whole chunks, filled
//! up to the low-free-space event, which the events checker judges. So
//! this target can find what only shows after a power cut (a FLUSH the
//! engine's filter completes itself instead of passing it on to the
//! device's cache) or in the storage accounting of tails, which
//! `lifecycle` never generates.
//!
//! Those features read more input, so the same bytes make another
//! scenario than under `lifecycle`: the target has its own corpus
//! (`corpus/lifecycle_everything`). Scale, sanitizing, judging and
//! `FUZZ_QUIRKS` are `lifecycle`'s.

use blksnap_sim::scenario::Scenario;

use crate::lifecycle::{self, Features, Scale};

/// The generator features of this target.
pub const FEATURES: Features = Features::EVERYTHING;

/// The body of the target: panics with a readable report if the
/// simulator's checkers fail on the scenario the input describes.
pub fn lifecycle_everything(data: &[u8]) {
    if let Err(report) = check(data) {
        panic!("{report}");
    }
}

/// The body the cargo-fuzz wrapper runs, quirks from `FUZZ_QUIRKS` as
/// [`lifecycle::lifecycle_env`] reads them.
pub fn lifecycle_everything_env(data: &[u8]) {
    lifecycle::env_with(data, FEATURES);
}

/// Build and run the scenario of `data`; `Err` carries the failure report.
pub fn check(data: &[u8]) -> std::result::Result<(), String> {
    lifecycle::check_with(data, FEATURES, Scale::Farm, &[])
}

/// The scenario and seed an input describes, as the target runs it.
pub fn build(data: &[u8]) -> Option<(Scenario, u64)> {
    lifecycle::build_with(data, FEATURES, Scale::Farm)
}
