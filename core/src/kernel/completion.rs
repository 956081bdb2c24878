//! One-shot completions: the only way the engine waits for the world.
//!
//! The kernel side holds a [`Completer`] and fills it in later (a bio ends, a
//! timer fires, a freeze finishes); the engine side awaits the [`Completion`].
//! A completer dropped without a value leaves its completion pending for ever:
//! that is deliberate, it is how a leaked bio shows up as a hang in the sim.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::Kernel;

/// Cells rather than one `RefCell`: every bio makes, completes and polls a
/// slot, and no access needs a borrow that outlives one statement, so the
/// borrow flag was pure cost.
struct Slot<T> {
    value: Cell<Option<T>>,
    waker: Cell<Option<Waker>>,
    /// Set once the value is there, so `is_done` need not take it out.
    done: Cell<bool>,
    /// Set once the value has been handed to the awaiting side.
    taken: Cell<bool>,
}

/// The awaiting half.
pub struct Completion<T> {
    slot: Rc<Slot<T>>,
}

/// The completing half.
pub struct Completer<T> {
    slot: Rc<Slot<T>>,
}

/// A linked completion/completer pair.
pub fn completion<T>() -> (Completion<T>, Completer<T>) {
    let slot = Rc::new(Slot {
        value: Cell::new(None),
        waker: Cell::new(None),
        done: Cell::new(false),
        taken: Cell::new(false),
    });
    (Completion { slot: slot.clone() }, Completer { slot })
}

impl<T> Completion<T> {
    /// A completion that is already done, for paths that finish at once.
    pub fn ready(value: T) -> Self {
        let (completion, completer) = completion();
        completer.complete(value);
        completion
    }

    /// True once the value is there (and not yet taken).
    pub fn is_done(&self) -> bool {
        self.slot.done.get() && !self.slot.taken.get()
    }
}

impl<T> Completer<T> {
    /// Hand the value over and wake the waiter. Completing twice is a bug of
    /// the caller (a double `bio_endio`), so it is asserted.
    pub fn complete(self, value: T) {
        let slot = &self.slot;
        assert!(!slot.done.get(), "completion completed twice");
        slot.done.set(true);
        slot.value.set(Some(value));
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }

    /// True if nobody can observe the value any more.
    pub fn is_orphan(&self) -> bool {
        Rc::strong_count(&self.slot) == 1
    }
}

impl<T> Future for Completion<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let slot = &self.slot;
        match slot.value.take() {
            Some(value) => {
                slot.taken.set(true);
                Poll::Ready(value)
            }
            None => {
                assert!(!slot.taken.get(), "completion polled after it was taken");
                slot.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

/// A future that yields once to the scheduler: a preemption point. The
/// host may run it in place (`Kernel::preempt`): if it picks this task
/// again at once, the task goes on in the same poll.
pub struct Yield<'a> {
    kernel: &'a dyn Kernel,
    yielded: bool,
}

impl Future for Yield<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        if self.kernel.preempt(cx.waker()) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// A preemption point: the seeded scheduler decides who runs next.
pub fn preempt(kernel: &dyn Kernel) -> Yield<'_> {
    Yield {
        kernel,
        yielded: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testing::{run, TestKernel};
    use crate::kernel::{Kernel, TaskKind};
    use std::sync::Arc;
    use std::task::Wake;

    struct Noop;

    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let waker = Waker::from(Arc::new(Noop));
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn ready_is_done_at_once() {
        let k = TestKernel::new();
        let ready = Completion::ready(5);
        assert!(ready.is_done());
        assert_eq!(run(&k, ready), 5);
    }

    #[test]
    fn pending_until_completed_by_another_task() {
        let k = TestKernel::new();
        let (mut waiting, done) = completion::<u32>();
        assert!(!waiting.is_done());
        assert_eq!(poll_once(&mut waiting), Poll::Pending);
        let k2 = k.clone();
        k.spawn(
            TaskKind::Work,
            "completer".into(),
            Box::pin(async move {
                k2.sleep(10).await;
                done.complete(7);
            }),
        );
        assert_eq!(run(&k, waiting), 7);
        assert_eq!(k.now(), 10);
    }

    #[test]
    #[should_panic(expected = "completion completed twice")]
    fn completing_twice_panics() {
        let (_waiting, done) = completion::<u32>();
        let twin = Completer {
            slot: done.slot.clone(),
        };
        done.complete(1);
        twin.complete(2);
    }

    #[test]
    #[should_panic(expected = "completion completed twice")]
    fn completing_after_the_value_was_taken_panics() {
        let (mut waiting, done) = completion::<u32>();
        let twin = Completer {
            slot: done.slot.clone(),
        };
        done.complete(1);
        assert_eq!(poll_once(&mut waiting), Poll::Ready(1));
        twin.complete(2);
    }

    #[test]
    fn a_completer_without_its_completion_is_an_orphan() {
        let (waiting, done) = completion::<u32>();
        assert!(!done.is_orphan());
        drop(waiting);
        assert!(done.is_orphan());
        done.complete(1); // nobody sees it; no panic
    }

    /// With a host that runs no preemption point in place (the default
    /// `Kernel::preempt`), a yield is one `Pending` and one wake.
    #[test]
    fn preempt_yields_exactly_once() {
        let k = TestKernel::new();
        let wakes = Arc::new(Count::default());
        let waker = Waker::from(wakes.clone());
        let mut point = preempt(&*k);
        let mut cx = Context::from_waker(&waker);
        assert_eq!(Pin::new(&mut point).poll(&mut cx), Poll::Pending);
        assert_eq!(wakes.get(), 1);
        assert_eq!(Pin::new(&mut point).poll(&mut cx), Poll::Ready(()));
        assert_eq!(wakes.get(), 1);
    }

    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicU32);

    impl Count {
        fn get(&self) -> u32 {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
