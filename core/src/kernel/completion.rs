//! One-shot completions: the only way the engine waits for the world.
//!
//! The kernel side holds a [`Completer`] and fills it in later (a bio ends, a
//! timer fires, a freeze finishes); the engine side awaits the [`Completion`].
//! A completer dropped without a value leaves its completion pending for ever:
//! that is deliberate, it is how a leaked bio shows up as a hang in the sim.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// Set once the value has been handed to the awaiting side.
    taken: bool,
}

/// The awaiting half.
pub struct Completion<T> {
    slot: Rc<RefCell<Slot<T>>>,
}

/// The completing half.
pub struct Completer<T> {
    slot: Rc<RefCell<Slot<T>>>,
}

/// A linked completion/completer pair.
pub fn completion<T>() -> (Completion<T>, Completer<T>) {
    let slot = Rc::new(RefCell::new(Slot {
        value: None,
        waker: None,
        taken: false,
    }));
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
        self.slot.borrow().value.is_some()
    }
}

impl<T> Completer<T> {
    /// Hand the value over and wake the waiter. Completing twice is a bug of
    /// the caller (a double `bio_endio`), so it is asserted.
    pub fn complete(self, value: T) {
        let waker = {
            let mut slot = self.slot.borrow_mut();
            assert!(
                slot.value.is_none() && !slot.taken,
                "completion completed twice"
            );
            slot.value = Some(value);
            slot.waker.take()
        };
        if let Some(waker) = waker {
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
        let mut slot = self.slot.borrow_mut();
        match slot.value.take() {
            Some(value) => {
                slot.taken = true;
                Poll::Ready(value)
            }
            None => {
                assert!(!slot.taken, "completion polled after it was taken");
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A future that yields once to the scheduler: a preemption point.
#[derive(Default)]
pub struct Yield {
    yielded: bool,
}

impl Future for Yield {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A preemption point: the seeded scheduler decides who runs next.
pub fn preempt() -> Yield {
    Yield::default()
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

    #[test]
    fn preempt_yields_exactly_once() {
        let mut point = preempt();
        assert_eq!(poll_once(&mut point), Poll::Pending);
        assert_eq!(poll_once(&mut point), Poll::Ready(()));
    }
}
