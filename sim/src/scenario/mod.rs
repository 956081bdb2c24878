//! Scenarios: the file format, loading with precise errors, and the runner.

mod backup_steps;
mod io_steps;
mod ioctl_steps;
pub mod load;
pub mod model;
mod power_steps;
pub mod runner;
mod spans;

pub use load::{load, parse, LoadError};
pub use model::Scenario;
pub use runner::{run, run_file, Outcome, RunOptions};
