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

use model::{Expect, Step};

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

/// A step's kind, as a type (the model's `Step::kind` is its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    Version,
    Create,
    Append,
    Take,
    Destroy,
    Collect,
    CollectImages,
    WaitEvent,
    Write,
    Read,
    VerifyImage,
    VerifyOriginal,
    Workload,
    Concurrent,
    Sleep,
    Sync,
    Freeze,
    Thaw,
    RemoveDevice,
    Ioctl,
    TrackerRemove,
    TrackerCollect,
    ReadCbtMap,
    MarkDirty,
    SetParam,
    Resize,
    Unload,
    Repeat,
    Timed,
    Kill,
    ExpectMedia,
    Stretch,
    Load,
    FullBackup,
    IncrementalBackup,
    CompareBackup,
    PowerLoss,
    Reboot,
    Flush,
}

impl StepKind {
    pub fn of(step: &Step) -> StepKind {
        use StepKind as K;
        match step {
            Step::Version { .. } => K::Version,
            Step::Create { .. } => K::Create,
            Step::Append { .. } => K::Append,
            Step::Take { .. } => K::Take,
            Step::Destroy { .. } => K::Destroy,
            Step::Collect { .. } => K::Collect,
            Step::CollectImages { .. } => K::CollectImages,
            Step::WaitEvent { .. } => K::WaitEvent,
            Step::Write { .. } => K::Write,
            Step::Read { .. } => K::Read,
            Step::VerifyImage { .. } => K::VerifyImage,
            Step::VerifyOriginal { .. } => K::VerifyOriginal,
            Step::Workload(_) => K::Workload,
            Step::Concurrent(_) => K::Concurrent,
            Step::Sleep { .. } => K::Sleep,
            Step::Sync { .. } => K::Sync,
            Step::Freeze { .. } => K::Freeze,
            Step::Thaw { .. } => K::Thaw,
            Step::RemoveDevice { .. } => K::RemoveDevice,
            Step::Ioctl { .. } => K::Ioctl,
            Step::TrackerRemove { .. } => K::TrackerRemove,
            Step::TrackerCollect { .. } => K::TrackerCollect,
            Step::ReadCbtMap { .. } => K::ReadCbtMap,
            Step::MarkDirty { .. } => K::MarkDirty,
            Step::SetParam { .. } => K::SetParam,
            Step::Resize { .. } => K::Resize,
            Step::Unload => K::Unload,
            Step::Repeat { .. } => K::Repeat,
            Step::Timed { .. } => K::Timed,
            Step::Kill { .. } => K::Kill,
            Step::ExpectMedia { .. } => K::ExpectMedia,
            Step::Stretch { .. } => K::Stretch,
            Step::Load => K::Load,
            Step::FullBackup { .. } => K::FullBackup,
            Step::IncrementalBackup { .. } => K::IncrementalBackup,
            Step::CompareBackup { .. } => K::CompareBackup,
            Step::PowerLoss { .. } => K::PowerLoss,
            Step::Reboot => K::Reboot,
            Step::Flush { .. } => K::Flush,
        }
    }
}
