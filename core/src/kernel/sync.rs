//! Sleeping locks of the kernel, as the engine uses them.
//!
//! Every acquisition starts with a preemption point and reports to the
//! kernel ([`Kernel::lock_event`]) so the host can check lock order and tell
//! who waits for whom. Waiters queue in FIFO order and a release hands the
//! lock straight to the next waiter, as the kernel's rwsem and semaphore do.
//! The data a lock protects lives in a `RefCell` next to it; no borrow of it
//! is held across an await unless the lock is held (then nobody else can
//! reach it).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::{preempt, Errno, Kernel, LockId, LockMode, LockOp};

/// One queued waiter: granted by the releaser, or cancelled by a signal.
struct Waiter {
    mode: LockMode,
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// The shared state of a lock: who holds it and who waits.
#[derive(Default)]
struct LockState {
    readers: u32,
    writer: bool,
    waiters: VecDeque<Rc<Waiter>>,
}

impl LockState {
    fn can_enter(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Read => !self.writer && self.waiters.is_empty(),
            LockMode::Write => !self.writer && self.readers == 0,
        }
    }

    fn enter(&mut self, mode: LockMode) {
        match mode {
            LockMode::Read => self.readers += 1,
            LockMode::Write => {
                assert!(!self.writer && self.readers == 0);
                self.writer = true;
            }
        }
    }

    fn leave(&mut self, mode: LockMode) {
        match mode {
            LockMode::Read => {
                assert!(self.readers > 0, "read unlock of a lock not read-held");
                self.readers -= 1;
            }
            LockMode::Write => {
                assert!(self.writer, "write unlock of a lock not write-held");
                self.writer = false;
            }
        }
    }

    /// Hand the lock to the waiters at the head of the queue that fit.
    fn grant_waiters(&mut self) {
        while let Some(head) = self.waiters.front() {
            let fits = match head.mode {
                LockMode::Read => !self.writer,
                LockMode::Write => !self.writer && self.readers == 0,
            };
            if !fits {
                break;
            }
            let head = self.waiters.pop_front().expect("head exists");
            self.enter(head.mode);
            head.granted.set(true);
            let waker = head.waker.borrow_mut().take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// Waits in the queue until granted; a killable wait gives up on a fatal signal.
struct Acquire<'a> {
    state: &'a RefCell<LockState>,
    waiter: Rc<Waiter>,
    kernel: &'a dyn Kernel,
    killable: bool,
}

impl Future for Acquire<'_> {
    type Output = Result<(), Errno>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.waiter.granted.get() {
            return Poll::Ready(Ok(()));
        }
        if self.killable && self.kernel.fatal_signal_pending() {
            let mut state = self.state.borrow_mut();
            state.waiters.retain(|w| !Rc::ptr_eq(w, &self.waiter));
            // Leaving the queue may unblock readers queued behind a writer.
            state.grant_waiters();
            return Poll::Ready(Err(Errno::EINTR));
        }
        *self.waiter.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The core shared by all sleeping lock kinds.
struct RawLock {
    id: LockId,
    class: &'static str,
    state: RefCell<LockState>,
}

impl RawLock {
    fn new(kernel: &dyn Kernel, class: &'static str) -> Self {
        RawLock {
            id: kernel.lock_new(class),
            class,
            state: RefCell::new(LockState::default()),
        }
    }

    async fn acquire(
        &self,
        kernel: &dyn Kernel,
        mode: LockMode,
        killable: bool,
    ) -> Result<(), Errno> {
        preempt().await;
        kernel.lock_event(self.id, self.class, LockOp::Acquire, mode);
        if self.try_enter(mode) {
            kernel.lock_event(self.id, self.class, LockOp::Acquired, mode);
            return Ok(());
        }
        kernel.lock_event(self.id, self.class, LockOp::Contended, mode);
        let waiter = Rc::new(Waiter {
            mode,
            granted: Cell::new(false),
            waker: RefCell::new(None),
        });
        self.state.borrow_mut().waiters.push_back(waiter.clone());
        let result = Acquire {
            state: &self.state,
            waiter,
            kernel,
            killable,
        }
        .await;
        let op = if result.is_ok() {
            LockOp::Acquired
        } else {
            LockOp::Abandoned
        };
        kernel.lock_event(self.id, self.class, op, mode);
        result
    }

    fn try_enter(&self, mode: LockMode) -> bool {
        let mut state = self.state.borrow_mut();
        if !state.can_enter(mode) {
            return false;
        }
        state.enter(mode);
        true
    }

    fn release(&self, kernel: &dyn Kernel, mode: LockMode) {
        kernel.lock_event(self.id, self.class, LockOp::Release, mode);
        let mut state = self.state.borrow_mut();
        state.leave(mode);
        state.grant_waiters();
    }
}

/// A read-write semaphore (`rw_semaphore`, and `percpu_rw_semaphore`, whose
/// writer also waits for readers and blocks new ones).
pub struct RwSem {
    raw: RawLock,
}

impl RwSem {
    pub fn new(kernel: &dyn Kernel, class: &'static str) -> Self {
        RwSem {
            raw: RawLock::new(kernel, class),
        }
    }

    pub async fn down_read(&self, kernel: &dyn Kernel) {
        let result = self.raw.acquire(kernel, LockMode::Read, false).await;
        assert!(result.is_ok(), "uninterruptible wait was interrupted");
    }

    /// The `REQ_NOWAIT` path: never sleeps.
    pub fn down_read_trylock(&self, kernel: &dyn Kernel) -> bool {
        let ok = self.raw.try_enter(LockMode::Read);
        if ok {
            kernel.lock_event(
                self.raw.id,
                self.raw.class,
                LockOp::Acquired,
                LockMode::Read,
            );
        }
        ok
    }

    pub fn up_read(&self, kernel: &dyn Kernel) {
        self.raw.release(kernel, LockMode::Read);
    }

    pub async fn down_write(&self, kernel: &dyn Kernel) {
        let result = self.raw.acquire(kernel, LockMode::Write, false).await;
        assert!(result.is_ok(), "uninterruptible wait was interrupted");
    }

    pub fn up_write(&self, kernel: &dyn Kernel) {
        self.raw.release(kernel, LockMode::Write);
    }
}

/// A binary semaphore: unlike a mutex it may be released by another task
/// than the one that took it. The chunk lock is one, released by the IO
/// completion worker.
pub struct Semaphore {
    raw: RawLock,
}

impl Semaphore {
    pub fn new(kernel: &dyn Kernel, class: &'static str) -> Self {
        Semaphore {
            raw: RawLock::new(kernel, class),
        }
    }

    pub async fn down(&self, kernel: &dyn Kernel) {
        let result = self.raw.acquire(kernel, LockMode::Write, false).await;
        assert!(result.is_ok(), "uninterruptible wait was interrupted");
    }

    /// `down_killable`: -EINTR when a fatal signal arrives while waiting.
    pub async fn down_killable(&self, kernel: &dyn Kernel) -> Result<(), Errno> {
        self.raw.acquire(kernel, LockMode::Write, true).await
    }

    pub fn down_trylock(&self, kernel: &dyn Kernel) -> bool {
        let ok = self.raw.try_enter(LockMode::Write);
        if ok {
            kernel.lock_event(
                self.raw.id,
                self.raw.class,
                LockOp::Acquired,
                LockMode::Write,
            );
        }
        ok
    }

    pub fn up(&self, kernel: &dyn Kernel) {
        self.raw.release(kernel, LockMode::Write);
    }

    pub fn is_locked(&self) -> bool {
        self.raw.state.borrow().writer
    }
}

/// A sleeping mutex around data.
pub struct Mutex<T> {
    raw: RawLock,
    data: RefCell<T>,
}

impl<T> Mutex<T> {
    pub fn new(kernel: &dyn Kernel, class: &'static str, data: T) -> Self {
        Mutex {
            raw: RawLock::new(kernel, class),
            data: RefCell::new(data),
        }
    }

    pub async fn lock<'a>(&'a self, kernel: &'a dyn Kernel) -> MutexGuard<'a, T> {
        let result = self.raw.acquire(kernel, LockMode::Write, false).await;
        assert!(result.is_ok(), "uninterruptible wait was interrupted");
        MutexGuard {
            mutex: self,
            kernel,
        }
    }
}

/// Held mutex; releases on drop.
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
    kernel: &'a dyn Kernel,
}

impl<T> MutexGuard<'_, T> {
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.mutex.data.borrow_mut())
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.raw.release(self.kernel, LockMode::Write);
    }
}

/// A spinlock: the critical section is a closure, so it cannot sleep (await)
/// by construction, which is the rule a spinlock enforces in C.
pub struct SpinLock<T> {
    data: RefCell<T>,
}

impl<T> SpinLock<T> {
    pub fn new(data: T) -> Self {
        SpinLock {
            data: RefCell::new(data),
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.data.borrow_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testing::{run, TestKernel};
    use crate::kernel::TaskKind;

    type Log = Rc<RefCell<Vec<&'static str>>>;

    fn spawn(k: &Rc<TestKernel>, name: &str, task: impl Future<Output = ()> + 'static) {
        k.spawn(TaskKind::Work, name.to_string(), Box::pin(task));
    }

    #[test]
    fn uncontended_locks_are_taken_at_once() {
        let k = TestKernel::new();
        let sem = RwSem::new(&*k, "rw");
        let mutex = Mutex::new(&*k, "m", 1);
        run(&k, async {
            sem.down_read(&*k).await;
            sem.down_read(&*k).await;
            sem.up_read(&*k);
            sem.up_read(&*k);
            sem.down_write(&*k).await;
            sem.up_write(&*k);
            let guard = mutex.lock(&*k).await;
            guard.with(|v| *v += 1);
            drop(guard);
            assert_eq!(mutex.lock(&*k).await.with(|v| *v), 2);
        });
        assert_eq!(k.contended("rw") + k.contended("m"), 0);
    }

    #[test]
    fn a_writer_waits_for_the_readers() {
        let k = TestKernel::new();
        let sem = Rc::new(RwSem::new(&*k, "rw"));
        let log: Log = Rc::default();
        run(&k, async {
            sem.down_read(&*k).await;
            let (k2, sem2, log2) = (k.clone(), sem.clone(), log.clone());
            spawn(&k, "writer", async move {
                sem2.down_write(&*k2).await;
                log2.borrow_mut().push("writer in");
                sem2.up_write(&*k2);
            });
            k.settle().await;
            assert!(log.borrow().is_empty(), "the writer must wait");
            assert_eq!(k.contended("rw"), 1);
            assert!(
                !sem.down_read_trylock(&*k),
                "no new reader past a waiting writer"
            );
            log.borrow_mut().push("reader out");
            sem.up_read(&*k);
            k.settle().await;
        });
        assert_eq!(*log.borrow(), vec!["reader out", "writer in"]);
    }

    #[test]
    fn waiters_are_served_in_fifo_order() {
        let k = TestKernel::new();
        let sem = Rc::new(RwSem::new(&*k, "rw"));
        let log: Log = Rc::default();
        run(&k, async {
            sem.down_write(&*k).await;
            // A reader, a writer, then another reader queue behind the writer.
            for (name, write) in [("r1", false), ("w", true), ("r2", false)] {
                let (k2, sem2, log2) = (k.clone(), sem.clone(), log.clone());
                spawn(&k, name, async move {
                    if write {
                        sem2.down_write(&*k2).await;
                    } else {
                        sem2.down_read(&*k2).await;
                    }
                    log2.borrow_mut().push(name);
                    k2.sleep(10).await;
                    log2.borrow_mut().push(name);
                    if write {
                        sem2.up_write(&*k2);
                    } else {
                        sem2.up_read(&*k2);
                    }
                });
                k.settle().await;
            }
            sem.up_write(&*k);
            k.sleep(100).await;
        });
        // r1 alone (w waits for it), then w, then r2: no overtaking.
        assert_eq!(*log.borrow(), vec!["r1", "r1", "w", "w", "r2", "r2"]);
    }

    #[test]
    fn a_semaphore_can_be_released_by_another_task() {
        let k = TestKernel::new();
        let sem = Rc::new(Semaphore::new(&*k, "chunk.lock"));
        run(&k, async {
            sem.down(&*k).await;
            assert!(sem.is_locked());
            assert!(!sem.down_trylock(&*k));
            let (k2, sem2) = (k.clone(), sem.clone());
            spawn(&k, "completion worker", async move {
                k2.sleep(1000).await;
                sem2.up(&*k2);
            });
            sem.down(&*k).await;
            assert_eq!(k.now(), 1000);
            sem.up(&*k);
        });
        assert!(!sem.is_locked());
    }

    #[test]
    fn a_killable_wait_gives_up_with_eintr() {
        let k = TestKernel::new();
        let sem = Rc::new(Semaphore::new(&*k, "chunk.lock"));
        let result = Rc::new(RefCell::new(None));
        run(&k, async {
            sem.down(&*k).await;
            let (k2, sem2, result2) = (k.clone(), sem.clone(), result.clone());
            spawn(&k, "victim", async move {
                *result2.borrow_mut() = Some(sem2.down_killable(&*k2).await);
            });
            k.settle().await;
            assert!(result.borrow().is_none(), "still waiting");
            k.kill("victim");
            k.settle().await;
            assert_eq!(*result.borrow(), Some(Err(Errno::EINTR)));
            assert!(sem.is_locked(), "still ours");
            sem.up(&*k);
            // The abandoned waiter is out of the queue.
            assert!(sem.down_trylock(&*k));
            sem.up(&*k);
        });
    }

    #[test]
    fn a_mutex_serializes_and_releases_on_drop() {
        let k = TestKernel::new();
        let mutex = Rc::new(Mutex::new(&*k, "m", Vec::new()));
        run(&k, async {
            for name in ["a", "b"] {
                let (k2, mutex2) = (k.clone(), mutex.clone());
                spawn(&k, name, async move {
                    let guard = mutex2.lock(&*k2).await;
                    guard.with(|v| v.push(name));
                    k2.sleep(10).await;
                    guard.with(|v| v.push(name));
                });
            }
            k.sleep(100).await;
        });
        let guard = run(&k, mutex.lock(&*k));
        assert_eq!(guard.with(|v| v.clone()), vec!["a", "a", "b", "b"]);
    }

    #[test]
    #[should_panic(expected = "write unlock of a lock not write-held")]
    fn releasing_a_free_semaphore_panics() {
        let k = TestKernel::new();
        Semaphore::new(&*k, "s").up(&*k);
    }

    #[test]
    #[should_panic(expected = "read unlock of a lock not read-held")]
    fn read_unlock_without_readers_panics() {
        let k = TestKernel::new();
        RwSem::new(&*k, "rw").up_read(&*k);
    }

    #[test]
    fn a_spinlock_section_is_a_closure() {
        let lock = SpinLock::new(1);
        assert_eq!(
            lock.with(|v| {
                *v += 1;
                *v
            }),
            2
        );
    }
}
