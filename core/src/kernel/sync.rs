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

use super::{Errno, Kernel, LockId, LockMode, LockOp};

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

/// Where an acquisition stands.
enum Stage {
    /// Not polled yet: the preemption point comes first.
    Start,
    /// Yielded once; the next poll reports and tries the lock.
    Yielded,
    /// Queued as this waiter until granted (or killed).
    Queued(Rc<Waiter>),
    /// Ready was returned.
    Done,
}

/// One acquisition, as the kernel's `down`/`down_read` run it: a
/// preemption point, the `Acquire` report, then the lock at once or a
/// FIFO wait (`Contended` first) until a release grants it; a killable
/// wait gives up on a fatal signal. It is the state machine an `async fn`
/// with a `preempt().await` and a queue wait would be, written out: every
/// lock taken in the write path is polled through it, and the generated
/// one cost a resume per nesting level on each poll.
pub struct Acquisition<'a> {
    lock: &'a RawLock,
    kernel: &'a dyn Kernel,
    wait: LockWait,
}

impl Future for Acquisition<'_> {
    type Output = Result<(), Errno>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.wait.poll_on(this.lock, this.kernel, cx)
    }
}

/// The state of one acquisition, without a borrow of the lock: a
/// hand-written future that owns (an `Rc` of) the lock's owner keeps this
/// and hands the lock in at each poll (`RwSem::poll_wait`,
/// `Semaphore::poll_wait`), where an [`Acquisition`] would borrow from the
/// future itself. Polled on one lock only, from first poll to Ready.
pub struct LockWait {
    mode: LockMode,
    killable: bool,
    stage: Stage,
}

impl LockWait {
    fn new(mode: LockMode, killable: bool) -> Self {
        LockWait {
            mode,
            killable,
            stage: Stage::Start,
        }
    }

    /// A placeholder for a future's field between acquisitions: it holds
    /// nothing, and polling it panics.
    pub fn done() -> Self {
        LockWait {
            mode: LockMode::Write,
            killable: false,
            stage: Stage::Done,
        }
    }

    #[inline(always)]
    fn poll_on(
        &mut self,
        lock: &RawLock,
        kernel: &dyn Kernel,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Errno>> {
        match &self.stage {
            Stage::Start => {
                // `preempt()`: yield once, so the scheduler picks who runs.
                // A host that picks this task again at once lets it go on
                // here, with the same schedule as a return and a re-poll
                // (`Kernel::preempt`).
                self.stage = Stage::Yielded;
                if kernel.preempt(cx.waker()) {
                    return self.report_and_try(lock, kernel, cx);
                }
                Poll::Pending
            }
            Stage::Yielded => self.report_and_try(lock, kernel, cx),
            Stage::Queued(_) => self.poll_queued(lock, kernel, cx),
            Stage::Done => panic!("lock acquisition polled after it completed"),
        }
    }

    fn event(&self, lock: &RawLock, kernel: &dyn Kernel, op: LockOp) {
        kernel.lock_event(lock.id, lock.class, op, self.mode);
    }

    /// After the preemption point: take the lock, or queue and wait. The
    /// lock's state is tried before the `Acquire` report: the report does
    /// not touch the lock and the try does not reach the kernel, so the
    /// order is the same to both, and a free lock is reported once
    /// (`Taken`, the `Acquire`/`Acquired` pair).
    ///
    /// Inlined: nearly every lock the write path takes is free, and as a
    /// call this paid register saves around the try; the queueing is
    /// out of line (`queue_and_wait`), so the inlined part stays small.
    #[inline(always)]
    fn report_and_try(
        &mut self,
        lock: &RawLock,
        kernel: &dyn Kernel,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Errno>> {
        if lock.try_enter(self.mode) {
            self.event(lock, kernel, LockOp::Taken);
            self.stage = Stage::Done;
            return Poll::Ready(Ok(()));
        }
        self.queue_and_wait(lock, kernel, cx)
    }

    /// The lock is held: the `Acquire` and `Contended` reports, then a
    /// place at the tail of the queue, and the first look at it.
    #[inline(never)]
    fn queue_and_wait(
        &mut self,
        lock: &RawLock,
        kernel: &dyn Kernel,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Errno>> {
        self.event(lock, kernel, LockOp::Acquire);
        self.event(lock, kernel, LockOp::Contended);
        let waiter = Rc::new(Waiter {
            mode: self.mode,
            granted: Cell::new(false),
            waker: RefCell::new(None),
        });
        lock.state.borrow_mut().waiters.push_back(waiter.clone());
        self.stage = Stage::Queued(waiter);
        self.poll_queued(lock, kernel, cx)
    }

    /// Queued: granted by a releaser, or cancelled by a fatal signal.
    fn poll_queued(
        &mut self,
        lock: &RawLock,
        kernel: &dyn Kernel,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Errno>> {
        let Stage::Queued(waiter) = &self.stage else {
            unreachable!("only a queued acquisition waits");
        };
        let result = if waiter.granted.get() {
            Ok(())
        } else if self.killable && kernel.fatal_signal_pending() {
            let mut state = lock.state.borrow_mut();
            state.waiters.retain(|w| !Rc::ptr_eq(w, waiter));
            // Leaving the queue may unblock readers queued behind a writer.
            state.grant_waiters();
            Err(Errno::EINTR)
        } else {
            *waiter.waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        };
        self.stage = Stage::Done;
        let op = if result.is_ok() {
            LockOp::Acquired
        } else {
            LockOp::Abandoned
        };
        self.event(lock, kernel, op);
        Poll::Ready(result)
    }
}

/// An acquisition that cannot be interrupted (`down`, `down_read`,
/// `down_write`, `mutex_lock`): its result is always Ok, and asserted.
pub struct Uninterruptible<'a>(Acquisition<'a>);

impl Future for Uninterruptible<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Ready(result) => {
                assert!(result.is_ok(), "uninterruptible wait was interrupted");
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
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

    fn acquire<'a>(
        &'a self,
        kernel: &'a dyn Kernel,
        mode: LockMode,
        killable: bool,
    ) -> Acquisition<'a> {
        Acquisition {
            lock: self,
            kernel,
            wait: LockWait::new(mode, killable),
        }
    }

    fn acquire_uninterruptible<'a>(
        &'a self,
        kernel: &'a dyn Kernel,
        mode: LockMode,
    ) -> Uninterruptible<'a> {
        Uninterruptible(self.acquire(kernel, mode, false))
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
        // Most releases have nobody queued: no call for them.
        if !state.waiters.is_empty() {
            state.grant_waiters();
        }
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

    pub fn down_read<'a>(&'a self, kernel: &'a dyn Kernel) -> Uninterruptible<'a> {
        self.raw.acquire_uninterruptible(kernel, LockMode::Read)
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

    /// `down_read` as a [`LockWait`], for a hand-written future to poll
    /// with [`RwSem::poll_wait`]. Uninterruptible: its result is always Ok.
    pub fn read_wait(&self) -> LockWait {
        LockWait::new(LockMode::Read, false)
    }

    /// Poll an acquisition of this lock made by `read_wait`.
    #[inline]
    pub fn poll_wait(
        &self,
        kernel: &dyn Kernel,
        wait: &mut LockWait,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Errno>> {
        wait.poll_on(&self.raw, kernel, cx)
    }

    pub fn down_write<'a>(&'a self, kernel: &'a dyn Kernel) -> Uninterruptible<'a> {
        self.raw.acquire_uninterruptible(kernel, LockMode::Write)
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

    pub fn down<'a>(&'a self, kernel: &'a dyn Kernel) -> Uninterruptible<'a> {
        self.raw.acquire_uninterruptible(kernel, LockMode::Write)
    }

    /// `down_killable`: -EINTR when a fatal signal arrives while waiting.
    pub fn down_killable<'a>(&'a self, kernel: &'a dyn Kernel) -> Acquisition<'a> {
        self.raw.acquire(kernel, LockMode::Write, true)
    }

    /// `down_killable` when `killable`, else `down` (always Ok), as a
    /// [`LockWait`] for a hand-written future to poll with
    /// [`Semaphore::poll_wait`].
    pub fn wait(&self, killable: bool) -> LockWait {
        LockWait::new(LockMode::Write, killable)
    }

    /// Poll an acquisition of this lock made by `wait`.
    #[inline]
    pub fn poll_wait(
        &self,
        kernel: &dyn Kernel,
        wait: &mut LockWait,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Errno>> {
        wait.poll_on(&self.raw, kernel, cx)
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
        self.raw
            .acquire_uninterruptible(kernel, LockMode::Write)
            .await;
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

    fn spawn(k: &Rc<TestKernel>, name: &'static str, task: impl Future<Output = ()> + 'static) {
        k.spawn(TaskKind::Work, name.into(), Box::pin(task));
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

    /// Poll once with a waker that only counts its wakes.
    fn poll_counting<F: Future + Unpin>(future: &mut F, wakes: &Arc<Wakes>) -> Poll<F::Output> {
        let waker = Waker::from(wakes.clone());
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicU32);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    use std::sync::Arc;

    #[test]
    fn an_acquisition_yields_once_before_it_takes_the_lock() {
        let k = TestKernel::new();
        let sem = Semaphore::new(&*k, "chunk.lock");
        let wakes = Arc::new(Wakes::default());
        let mut down = sem.down(&*k);
        // The preemption point: woken at once, the lock not yet tried.
        assert_eq!(poll_counting(&mut down, &wakes), Poll::Pending);
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(!sem.is_locked());
        assert_eq!(poll_counting(&mut down, &wakes), Poll::Ready(()));
        assert!(sem.is_locked());
        // Held: the next one yields, then queues (Contended) until granted.
        let mut second = sem.down_killable(&*k);
        assert_eq!(poll_counting(&mut second, &wakes), Poll::Pending);
        assert_eq!(poll_counting(&mut second, &wakes), Poll::Pending);
        assert_eq!(k.contended("chunk.lock"), 1);
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 2);
        sem.up(&*k);
        assert_eq!(
            wakes.0.load(std::sync::atomic::Ordering::Relaxed),
            3,
            "granted"
        );
        assert!(sem.is_locked(), "handed straight to the waiter");
        assert_eq!(poll_counting(&mut second, &wakes), Poll::Ready(Ok(())));
        sem.up(&*k);
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
