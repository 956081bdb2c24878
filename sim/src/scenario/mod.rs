//! Scenarios: the file format, loading with precise errors, and the runner.

mod backup_steps;
mod io_steps;
mod ioctl_steps;
pub mod load;
pub mod model;
mod power_steps;
pub mod runner;
mod spans;

use blksnap_core::kernel::Errno;

pub use load::{load, parse, LoadError};
pub use model::Scenario;
pub use runner::{run, run_file, Outcome, RunOptions};

use model::Expect;
pub use model::StepKind;

/// What failed when a step failed, recorded with the failure
/// (`Failure::step`) where the runner records it, so a judge of the run
/// (`swarm::judge`) decides by these types and never reads the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFailure {
    /// The step's path as the runner walks it (the `1.0.2` of its
    /// message): the top-level index, then inside a `Concurrent` or
    /// `PowerLoss` step the branch and the index in it, inside a `Repeat`
    /// the round and the index, inside a `Timed` the index.
    pub path: Vec<usize>,
    pub step: StepKind,
    pub cause: Cause,
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The step's call (an ioctl, a user IO, a parameter) returned what
    /// the step did not expect.
    Unexpected {
        expected: Expect,
        got: Result<i64, Errno>,
    },
    /// The runner's own COLLECT_IMAGES after a successful TAKE failed.
    CollectAfterTake { got: Errno },
    /// The image the step works on does not exist: its snapshot was never
    /// taken (or its TAKE failed).
    NoImage,
    /// A user IO the step issued on its own (not an `expect` of the
    /// step) failed.
    Io { op: IoOp, got: Errno },
    /// The step's own check of what it got (data, counts, events, a
    /// backup's plan) failed.
    Check,
}

/// The user IO of [`Cause::Io`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    /// A filesystem freeze (it writes back what the filesystem holds).
    Freeze,
    Thaw,
}

/// A step's failure, as the step code returns it to the runner: the
/// message (as the failure shows it) and the cause. A plain message is a
/// [`Cause::Check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StepError {
    pub message: String,
    pub cause: Cause,
}

impl StepError {
    pub fn new(cause: Cause, message: String) -> Self {
        StepError { message, cause }
    }

    /// The same failure with `prefix` before its message.
    pub fn prefixed(mut self, prefix: std::fmt::Arguments) -> Self {
        self.message = format!("{prefix}{}", self.message);
        self
    }
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        StepError::new(Cause::Check, message)
    }
}

impl From<&str> for StepError {
    fn from(message: &str) -> Self {
        StepError::new(Cause::Check, message.to_string())
    }
}
