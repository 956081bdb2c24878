//! The per-snapshot event queue (v2 `event_queue.c`, spec 1.4 and 6.6).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::kernel::{completion, Completer, Completion, Errno, Gfp};
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
    list: RefCell<VecDeque<Event>>,
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

    /// `event_gen`: queue an event and wake the waiters. An allocation
    /// failure drops the event silently, as upstream does.
    pub fn generate(&self, code: u32, data: Vec<u8>) {
        let k = self.module.k();
        let Ok(alloc) = k.kmalloc("event", 32 + data.len() as u64, Gfp::Noio) else {
            k.log("event dropped: allocation failed");
            return;
        };
        // Event memory is accounted while queued and given back at once:
        // the queue owns the bytes from here on.
        k.kfree(alloc);
        let event = Event {
            code,
            time_label: k.now_ns() as i64,
            data,
        };
        self.list.borrow_mut().push_back(event);
        for waiter in self.waiters.borrow_mut().drain(..) {
            if !waiter.is_orphan() {
                waiter.complete(());
            }
        }
    }

    /// `event_wait`: the oldest event, waiting up to `timeout_ns` of virtual
    /// time; -ENOENT when none came, -EINTR on a fatal signal.
    pub async fn wait(&self, timeout_ns: u64) -> Result<Event, Errno> {
        let k = self.module.k();
        let deadline = k.now_ns().saturating_add(timeout_ns);
        let mut woken = false;
        loop {
            if let Some(event) = self.list.borrow_mut().pop_front() {
                return Ok(event);
            }
            if woken && self.module.quirks.evt_1 {
                // v2 takes the head after a wake-up without checking again
                // that the list is not empty: another waiter took the event
                // and the list head itself is returned and freed (B-EVT-1).
                panic!("list_del corruption: WAIT_EVENT took the list head as an event (B-EVT-1)");
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
            woken = !self.list.borrow().is_empty() || k.now_ns() < deadline;
        }
    }

    /// Events still queued (dropped with the queue when the snapshot goes).
    pub fn pending(&self) -> usize {
        self.list.borrow().len()
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
