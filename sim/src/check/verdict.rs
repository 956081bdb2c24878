//! Verdict categories: who is to blame for a failure.
//!
//! Every failure a run reports carries one, so a reader (and a report)
//! tells an engine bug from the consequence of a fault the scenario
//! declared, from the bug a `scenarios/bugs/` file exists to show, and
//! from a breakage of the bench itself. The type is the reports crate's:
//! the sim sets it and every rendering reads it, with no translation
//! between two copies that could drift apart.

pub use blksnap_reports::Category;
