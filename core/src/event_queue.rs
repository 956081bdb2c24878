//! The per-snapshot event queue (v2 `event_queue.c`, spec 1.4 and 6.6).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::kernel::{completion, kmalloc, AllocId, Completer, Completion, Errno, Gfp};
use crate::module::Module;

pub const EVENT_LOW_FREE_SPACE: u32 = 0;
pub const EVENT_CORRUPTED: u32 = 1;
/// The payload room of `blk_snap_snapshot_event`.
pub const EVENT_DATA_MAX: usize = 4064;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub code: u32,
    /// `ktime_get` at generation, nanoseconds.
    pub time_label: i64,
    pub data: Vec<u8>,
}

pub struct EventQueue {
    module: Rc<Module>,
    /// Under `event_queue.lock` (a spinlock: never held across an await).
    /// Each queued event owns its allocation until it is taken or the
    /// queue is torn down.
    list: RefCell<VecDeque<(Event, AllocId)>>,
    waiters: RefCell<Vec<Completer<()>>>,
}

impl EventQueue {
    pub fn new(module: &Rc<Module>) -> EventQueue {
        EventQueue {
            module: module.clone(),
            list: RefCell::new(VecDeque::new()),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// `event_gen` (event_queue.c:34): the event is a GFP_NOIO allocation
    /// (it may sleep in reclaim) that lives while it is queued. An
    /// allocation failure drops the event silently, as upstream does.
    pub async fn generate(&self, code: u32, data: Vec<u8>) {
        let k = self.module.k();
        let Ok(alloc) = kmalloc(k, "event", 32 + data.len() as u64, Gfp::Noio).await else {
            k.log("event dropped: allocation failed");
            return;
        };
        let event = Event {
            code,
            time_label: k.now_ns() as i64,
            data,
        };
        self.list.borrow_mut().push_back((event, alloc));
        for waiter in self.waiters.borrow_mut().drain(..) {
            if !waiter.is_orphan() {
                waiter.complete(());
            }
        }
    }

    /// `event_wait`: the oldest event, waiting up to `timeout_ns` of virtual
    /// time; -ENOENT when none came, -EINTR on a fatal signal. The loop is
    /// `wait_event_interruptible_timeout`: the condition (list not empty)
    /// is checked first and again after every wake-up, so a waiter woken
    /// for an event another one took goes back to sleep.
    pub async fn wait(&self, timeout_ns: u64) -> Result<Event, Errno> {
        let k = self.module.k();
        let deadline = k.now_ns().saturating_add(timeout_ns);
        loop {
            if !self.list.borrow().is_empty() {
                if self.module.quirks.evt_1 {
                    return self.take_head_unchecked().await;
                }
                // The fix takes the head under the lock only if one is there.
                let taken = self.list.borrow_mut().pop_front();
                if let Some((event, alloc)) = taken {
                    // WAIT_EVENT copies it out and frees it (`event_free`).
                    k.kfree(alloc);
                    return Ok(event);
                }
            }
            let now = k.now_ns();
            if now >= deadline {
                return Err(Errno::ENOENT);
            }
            if k.fatal_signal_pending() {
                return Err(Errno::EINTR);
            }
            let (event_came, waker) = completion();
            self.waiters.borrow_mut().push(waker);
            first_of(event_came, k.sleep(deadline - now)).await;
        }
    }

    /// v2 after the condition held: spin_lock, then `list_first_entry`
    /// without checking the list again (B-EVT-1). Between the condition and
    /// the lock another CPU's waiter can take the event; the task loses the
    /// CPU for a scheduler tick there, so the race shows on one simulated
    /// CPU, with a timeout of 0 (B-CTRL-2) as with any other.
    async fn take_head_unchecked(&self) -> Result<Event, Errno> {
        self.module.k().sleep(crate::tracker::PREEMPTED_NS).await;
        let taken = self.list.borrow_mut().pop_front();
        match taken {
            Some((event, alloc)) => {
                self.module.k().kfree(alloc);
                Ok(event)
            }
            None => {
                panic!("list_del corruption: WAIT_EVENT took the list head as an event (B-EVT-1)")
            }
        }
    }

    /// Events still queued (freed with the queue when the snapshot goes).
    pub fn pending(&self) -> usize {
        self.list.borrow().len()
    }

    /// `event_queue_done`: free the events nobody took.
    pub fn done(&self) {
        let left = std::mem::take(&mut *self.list.borrow_mut());
        for (_, alloc) in left {
            self.module.k().kfree(alloc);
        }
    }
}

/// Waits for whichever of two completions ends first.
fn first_of(a: Completion<()>, b: Completion<()>) -> FirstOf {
    FirstOf { a, b }
}

struct FirstOf {
    a: Completion<()>,
    b: Completion<()>,
}

impl Future for FirstOf {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Pin::new(&mut self.a).poll(cx).is_ready() || Pin::new(&mut self.b).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testing::{load, run, TestKernel};
    use crate::kernel::{Kernel, TaskKind};
    use crate::params::Params;
    use crate::quirks::Quirks;

    fn setup() -> (Rc<TestKernel>, Rc<EventQueue>) {
        let k = TestKernel::new();
        let m = load(&k, Params::default(), Quirks::default());
        (k, Rc::new(EventQueue::new(&m)))
    }

    #[test]
    fn events_come_out_in_fifo_order_with_their_time() {
        let (k, queue) = setup();
        run(&k, queue.generate(EVENT_LOW_FREE_SPACE, vec![1]));
        let start = k.now();
        run(&k, k.sleep(5));
        run(&k, queue.generate(EVENT_CORRUPTED, vec![2, 3]));
        assert_eq!(queue.pending(), 2);
        let (a, b, c) = run(&k, async {
            (
                queue.wait(0).await,
                queue.wait(0).await,
                queue.wait(0).await,
            )
        });
        assert_eq!(
            a,
            Ok(Event {
                code: EVENT_LOW_FREE_SPACE,
                time_label: start as i64,
                data: vec![1]
            })
        );
        assert_eq!(
            b,
            Ok(Event {
                code: EVENT_CORRUPTED,
                time_label: start as i64 + 5,
                data: vec![2, 3]
            })
        );
        assert_eq!(c, Err(Errno::ENOENT));
        assert_eq!(queue.pending(), 0);
    }

    #[test]
    fn wait_times_out_with_enoent_after_the_virtual_time() {
        let (k, queue) = setup();
        run(&k, k.sleep(1000));
        let result = run(&k, queue.wait(5_000_000));
        assert_eq!(result, Err(Errno::ENOENT));
        assert_eq!(k.now(), 1000 + 5_000_000);
        // Timeout 0 is a poll: no time passes.
        assert_eq!(run(&k, queue.wait(0)), Err(Errno::ENOENT));
        assert_eq!(k.now(), 1000 + 5_000_000);
    }

    #[test]
    fn a_generated_event_wakes_a_waiter() {
        let (k, queue) = setup();
        let (k2, q2) = (k.clone(), queue.clone());
        k.spawn(
            TaskKind::Work,
            "producer".into(),
            Box::pin(async move {
                k2.sleep(1_000_000).await;
                q2.generate(EVENT_CORRUPTED, vec![7]).await;
            }),
        );
        let event = run(&k, queue.wait(1_000_000_000)).unwrap();
        assert_eq!(event.code, EVENT_CORRUPTED);
        assert_eq!(event.time_label, 1_000_000);
        assert_eq!(k.now(), 1_000_000, "woken at once, not at the timeout");
    }

    #[test]
    fn a_fatal_signal_ends_the_wait_with_eintr() {
        let (k, queue) = setup();
        k.kill("main");
        assert_eq!(run(&k, queue.wait(1_000_000)), Err(Errno::EINTR));
    }

    #[test]
    fn an_event_allocation_failure_drops_the_event() {
        let (k, queue) = setup();
        k.fail_site_times("event", 1);
        run(&k, queue.generate(EVENT_CORRUPTED, vec![1]));
        assert_eq!(queue.pending(), 0);
        assert!(k.logs().iter().any(|l| l.contains("event dropped")));
        run(&k, queue.generate(EVENT_CORRUPTED, vec![1]));
        run(&k, queue.generate(EVENT_CORRUPTED, vec![2]));
        assert_eq!(queue.pending(), 2);
        assert_eq!(k.live_allocs().len(), 2, "a queued event holds its memory");
        run(&k, queue.wait(0)).unwrap();
        assert_eq!(k.live_allocs().len(), 1, "a taken event is freed");
        queue.done();
        assert!(k.live_allocs().is_empty(), "the queue frees what is left");
    }

    fn setup_quirks(ids: &[&str]) -> (Rc<TestKernel>, Rc<EventQueue>) {
        let k = TestKernel::new();
        let m = load(&k, Params::default(), crate::kernel::testing::quirks(ids));
        (k, Rc::new(EventQueue::new(&m)))
    }

    /// Two pollers (timeout 0, as B-CTRL-2 makes every WAIT_EVENT) and one
    /// event: both see the list non-empty, and the second takes the list
    /// head with B-EVT-1; the fix gives the event to one, -ENOENT to the
    /// other.
    fn two_pollers_one_event(ids: &[&str]) -> Vec<Result<u32, Errno>> {
        let (k, queue) = setup_quirks(ids);
        run(&k, queue.generate(EVENT_CORRUPTED, vec![7]));
        let results = Rc::new(RefCell::new(Vec::new()));
        for name in ["first", "second"] {
            let (q, r) = (queue.clone(), results.clone());
            k.spawn(
                TaskKind::Work,
                name.into(),
                Box::pin(async move {
                    let got = q.wait(0).await.map(|e| e.code);
                    r.borrow_mut().push(got);
                }),
            );
        }
        run(&k, k.sleep(10_000_000));
        let got = results.borrow().clone();
        got
    }

    #[test]
    fn two_pollers_one_event_the_fix_gives_it_once() {
        let mut got = two_pollers_one_event(&[]);
        got.sort_by_key(|r| r.is_err());
        assert_eq!(got, vec![Ok(EVENT_CORRUPTED), Err(Errno::ENOENT)]);
    }

    #[test]
    #[should_panic(expected = "B-EVT-1")]
    fn quirk_evt_1_two_pollers_one_event_take_the_list_head() {
        two_pollers_one_event(&["B-EVT-1", "B-CTRL-2"]);
    }

    /// The C re-checks the condition inside the wait macro: a waiter woken
    /// for an event that was gone before it ran sleeps again (here until
    /// its timeout), even with B-EVT-1; only the window after a successful
    /// check is unprotected.
    #[test]
    fn quirk_evt_1_a_woken_waiter_that_finds_the_list_empty_sleeps_again() {
        let (k, queue) = setup_quirks(&["B-EVT-1"]);
        let (k2, q2) = (k.clone(), queue.clone());
        k.spawn(
            TaskKind::Work,
            "producer".into(),
            Box::pin(async move {
                k2.sleep(1_000_000).await;
                q2.generate(EVENT_CORRUPTED, vec![7]).await;
                // Taken on another CPU before the woken waiter runs.
                q2.list.borrow_mut().pop_front().expect("queued");
            }),
        );
        assert_eq!(run(&k, queue.wait(5_000_000)), Err(Errno::ENOENT));
        assert_eq!(k.now(), 5_000_000, "slept again until the timeout");
    }
}
