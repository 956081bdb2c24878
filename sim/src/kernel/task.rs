//! A task of the simulated kernel: a kernel thread, a work item or a
//! scenario process, each one a future the executor polls.
//!
//! Models: the per-task flags the engine can see (`PF_MEMALLOC_NOIO`, a
//! pending SIGKILL, `current->bio_list`) and the waker that puts a task
//! back on the run queue.
//!
//! Fault model: none injected here. A task can die of a panic (see
//! `exec.rs`); it then leaves every index with its locks held.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use blksnap_core::kernel::{Bio, BioResult, Completer, LocalBoxFuture};

pub type TaskId = u64;

pub(crate) struct Task {
    pub(crate) name: String,
    pub(crate) future: Option<LocalBoxFuture<'static, ()>>,
    /// `memalloc_noio` in effect (a kthread with PF_MEMALLOC_NOIO, or a scope).
    pub(crate) noio: bool,
    pub(crate) bio_list: Option<Vec<(Bio, Completer<BioResult>)>>,
    pub(crate) fatal_signal: bool,
    /// Scenario processes; the run ends when all of them are done.
    pub(crate) is_process: bool,
    /// Made once: a poll clones it (a reference count), never allocates.
    pub(crate) waker: Waker,
}

/// Tasks woken since the executor last looked, each with its run-queue
/// slot (`NO_SLOT` if the waker does not know it). A `Mutex` only because
/// `Waker` must be `Send + Sync`; the sim has one thread.
pub(crate) struct WakeQueue {
    woken: Mutex<Vec<(TaskId, usize)>>,
    /// Set when `woken` may hold a task: the executor looks twice per
    /// poll, and mostly finds none, so it reads this instead of locking.
    any: AtomicBool,
}

impl WakeQueue {
    pub(crate) fn new() -> WakeQueue {
        WakeQueue {
            woken: Mutex::new(Vec::new()),
            any: AtomicBool::new(false),
        }
    }

    pub(crate) fn push(&self, id: TaskId, slot: usize) {
        if let Ok(mut woken) = self.woken.lock() {
            woken.push((id, slot));
            self.any.store(true, Ordering::Release);
        }
    }

    /// Whether a task may have been woken since the last `drain`.
    pub(crate) fn may_hold(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// The woken tasks, in wake order, handed to `f`; the queue keeps
    /// its buffer.
    pub(crate) fn drain(&self, mut f: impl FnMut(TaskId, usize)) {
        if let Ok(mut woken) = self.woken.lock() {
            self.any.store(false, Ordering::Release);
            woken.drain(..).for_each(|(id, slot)| f(id, slot));
        }
    }
}

/// A slot no task has: the run queue searches for the task instead.
pub(crate) const NO_SLOT: usize = usize::MAX;

pub(crate) struct TaskWaker {
    pub(crate) id: TaskId,
    /// The task's run-queue slot: a wake needs no search for it.
    pub(crate) slot: usize,
    pub(crate) queue: Arc<WakeQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.push(self.id, self.slot);
    }
}
