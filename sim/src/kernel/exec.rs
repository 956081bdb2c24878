//! The executor: spawns tasks, polls the one the scheduler picks, fires
//! timers, and runs until the scenario's processes are done.
//!
//! Glue over `sched.rs` (which holds the state) and the `Sim` (a timer
//! action and a failed task need the whole of it).
//!
//! Fault model: a panic in a task kills it with its locks held (its future
//! is leaked, not dropped): an oops if engine code panicked, else a bench
//! error (`crate::panics`). A task that exits with `current->bio_list`
//! open fails the run ("kernel").

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use blksnap_core::kernel::{completion, Completion, LocalBoxFuture, TaskName};

use super::sched::Bounds;
use super::task::TaskId;
use super::{Sim, BENCH_CHECKER};
use crate::panics;
use crate::trace::TraceEvent;

impl Sim {
    pub(crate) fn new_task(
        &self,
        name: TaskName,
        future: LocalBoxFuture<'static, ()>,
        noio: bool,
        is_process: bool,
    ) -> TaskId {
        let id = self.sched.add_task(name, future, noio, is_process);
        // A full run formats the name for its trace; a verdict-only run never.
        self.record_with(|| TraceEvent::TaskSpawn {
            task: id,
            name: self.sched.task_name(id),
        });
        id
    }

    /// Start a scenario process (a user task the run waits for).
    pub fn spawn_process(
        &self,
        name: impl Into<TaskName>,
        future: LocalBoxFuture<'static, ()>,
    ) -> TaskId {
        self.new_task(name.into(), future, false, true)
    }

    /// Start a sim-side background task (a flusher, a helper).
    pub fn spawn_background(
        &self,
        name: impl Into<TaskName>,
        future: LocalBoxFuture<'static, ()>,
    ) -> TaskId {
        self.new_task(name.into(), future, false, false)
    }

    /// Spawn a sim-side helper task that completes `done` with its result.
    pub(crate) fn helper<T: 'static>(
        self: &Rc<Self>,
        name: &'static str,
        body: LocalBoxFuture<'static, T>,
    ) -> Completion<T> {
        let (completion, done) = completion();
        self.new_task(
            TaskName::Fixed(name),
            Box::pin(async move { done.complete(body.await) }),
            false,
            false,
        );
        completion
    }

    pub fn sleep(&self, ns: u64) -> Completion<()> {
        let (completion, done) = completion();
        let at = self.now() + ns;
        self.sched.at(at, super::TimerAction::Wake(done));
        completion
    }

    /// The engine asks for a timed sleep of `ns`: the events checker
    /// counts it for a task in a WAIT_EVENT (rule 6). The allocator's
    /// reclaim sleeps too, but that time is the kernel's, not the engine's.
    /// Nothing is traced or drawn.
    pub fn engine_sleeps(&self, ns: u64) {
        let Some(task) = self.current_task() else {
            return;
        };
        if !self.mm.task_reclaiming(task) {
            let now = self.now();
            self.lifecycle
                .borrow_mut()
                .events
                .timed_sleep(task, now, ns);
        }
    }

    /// Inlined into the executor's loops: a call per iteration saved and
    /// restored as many registers as a bio's end costs in instructions.
    #[inline(always)]
    fn fire_due_timers(self: &Rc<Self>) {
        while let Some(action) = self.sched.take_due_timer() {
            action.fire(self);
        }
    }

    /// A task died of a panic: an oops if engine code panicked, else a
    /// fault of the bench itself (never blamed on the engine).
    fn report_panic(&self, task: &str, message: &str, site: &panics::PanicSite) {
        match panics::blame(site) {
            panics::Blame::Engine => self.fail("oops", format!("task '{task}' died: {message}")),
            panics::Blame::Bench(at) => self.fail(
                BENCH_CHECKER,
                format!("bench error: panic at {at} in task '{task}': {message}"),
            ),
        }
    }

    /// Poll one task once. A panic inside it kills the task with its locks
    /// held (its future is kept as a zombie, not dropped, until power-off)
    /// and fails the run.
    fn poll_task(self: &Rc<Self>, id: TaskId) {
        let Some((mut future, waker)) = self.sched.begin_poll(id) else {
            return;
        };
        self.sched.maybe_demote(id);
        self.record_poll(id);
        let mut cx = Context::from_waker(&waker);
        panics::install_hook();
        panics::set_in_poll(true);
        let outcome = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        panics::set_in_poll(false);
        self.sched.end_poll();
        self.sched.keep_waker(id, waker);
        match outcome {
            Ok(Poll::Pending) => self.sched.park(id, future),
            Ok(Poll::Ready(())) => self.task_exit(id),
            Err(payload) => {
                let name = self.task_name(id);
                let message = panics::panic_message(&*payload);
                self.sched.bury(future);
                self.sched.remove_task(id);
                self.report_panic(&name, &message, &panics::take_site());
            }
        }
    }

    fn task_exit(&self, id: TaskId) {
        if let Some(task) = self.sched.remove_task(id) {
            if task.bio_list.is_some() {
                self.fail(
                    "kernel",
                    format!("task '{}' exited with a bio list open", task.name),
                );
            }
        }
        self.record_with(|| TraceEvent::TaskExit { task: id });
    }

    /// Run until every process is done, the bounds are hit, or nothing can
    /// run. Returns false if processes remain (a hang: a deadlock, or a
    /// livelock past the bounds).
    pub fn run(self: &Rc<Self>) -> bool {
        let bounds = self.sched.bounds.get();
        let _in_place = InPlace::enter(self, Some(bounds));
        loop {
            self.sched.collect_woken();
            self.fire_due_timers();
            self.sched.collect_woken();
            if !self.sched.has_live_processes() {
                return true;
            }
            if self.polls() > bounds.max_polls || self.now() > bounds.max_virtual_ns {
                return false;
            }
            match self.sched.pick() {
                Some(id) => self.poll_task(id),
                None => {
                    if !self.sched.advance_to_next_timer() {
                        return false;
                    }
                    self.record_time_advance(self.now());
                }
            }
        }
    }

    /// Let background work settle (timers, workers) for up to `ns`.
    pub fn settle(self: &Rc<Self>, ns: u64) {
        let deadline = self.now() + ns;
        let _in_place = InPlace::enter(self, None);
        loop {
            self.sched.collect_woken();
            self.fire_due_timers();
            self.sched.collect_woken();
            if let Some(id) = self.sched.pick() {
                self.poll_task(id);
                continue;
            }
            match self.sched.next_timer_at() {
                Some(at) if at <= deadline => {
                    self.sched.advance_to_next_timer();
                }
                _ => return,
            }
        }
    }
}

impl Sim {
    /// A preemption point of the task `waker` wakes (`Kernel::preempt`),
    /// run in place (see `Scheduler::repoll_in_place`) if an executor loop
    /// polls it: on the same pick, the rest of what `poll_task` does
    /// before a poll, and true (the task goes on). Else the task is woken
    /// and false (it returns `Pending`).
    pub(crate) fn preempt_in_place(&self, waker: &Waker) -> bool {
        let Some(id) = self.sched.repoll_in_place(waker) else {
            return false;
        };
        self.sched.maybe_demote(id);
        self.record_poll(id);
        true
    }
}

/// An executor loop's preemption points run in place while this lives
/// (`Scheduler::enter_loop`); then the loop that ran before (if any) is
/// back, even if the loop unwinds.
#[must_use = "preemption points run in place only while this lives"]
struct InPlace<'a> {
    sim: &'a Sim,
    previous: Option<Option<Bounds>>,
}

impl InPlace<'_> {
    fn enter(sim: &Sim, bounds: Option<Bounds>) -> InPlace<'_> {
        InPlace {
            sim,
            previous: sim.sched.enter_loop(bounds),
        }
    }
}

impl Drop for InPlace<'_> {
    fn drop(&mut self) {
        self.sim.sched.leave_loop(self.previous);
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use blksnap_core::kernel::sync::{RwSem, Semaphore};
    use blksnap_core::kernel::Kernel;

    use crate::kernel::sim_kernel::SimKernel;
    use crate::kernel::{SchedPolicy, Sim};

    /// Processes and a background task contend for two locks, with sleeps
    /// and bare yields between; the run's trace digest, its polls and the
    /// in-place picks (same task, another task).
    fn contended_run(plain: bool, policy: SchedPolicy, seed: u64) -> (String, u64, (u64, u64)) {
        let sim = Sim::new(seed);
        sim.sched.policy.set(policy);
        sim.sched.plain_preemption.set(plain);
        let k: Rc<dyn Kernel> = Rc::new(SimKernel(sim.clone()));
        let outer = Rc::new(RwSem::new(&*k, "test.outer"));
        let inner = Rc::new(Semaphore::new(&*k, "test.inner"));
        for p in 0..4u64 {
            let (k, outer, inner) = (k.clone(), outer.clone(), inner.clone());
            sim.spawn_process(
                format!("p{p}"),
                Box::pin(async move {
                    for i in 0..30u64 {
                        outer.down_read(&*k).await;
                        inner.down(&*k).await;
                        if (i + p) % 4 == 0 {
                            k.sleep(300 * p).await;
                        }
                        inner.up(&*k);
                        outer.up_read(&*k);
                        if i % 5 == p {
                            blksnap_core::kernel::preempt(&*k).await;
                        }
                    }
                }),
            );
        }
        let (bk, bouter) = (k.clone(), outer.clone());
        sim.spawn_background(
            "writer",
            Box::pin(async move {
                for _ in 0..40 {
                    bouter.down_write(&*bk).await;
                    bouter.up_write(&*bk);
                    bk.sleep(700).await;
                }
            }),
        );
        assert!(sim.run(), "the processes end");
        // The writer goes on alone, under `settle`'s loop.
        sim.settle(40 * 700);
        assert!(!sim.has_failed(), "{:?}", sim.failures());
        let digest = sim.trace.borrow().digest();
        (digest, sim.polls(), sim.sched.in_place_picks.get())
    }

    /// A preemption point run in place gives the run a return and a
    /// re-poll give, event for event (the digest) and poll for poll, under
    /// both policies, and the in-place path was taken both ways (the same
    /// task went on; another task was picked and polled next).
    #[test]
    fn in_place_preemption_keeps_the_schedule() {
        let policies = [
            SchedPolicy::Random,
            SchedPolicy::Priority { change_points: 3 },
        ];
        for policy in policies {
            for seed in 0..6 {
                let (plain, plain_polls, none) = contended_run(true, policy, seed);
                let (fast, fast_polls, picks) = contended_run(false, policy, seed);
                assert_eq!(none, (0, 0));
                assert_eq!(
                    (fast, fast_polls),
                    (plain, plain_polls),
                    "{policy:?}, seed {seed}"
                );
                assert!(picks.0 > 0, "{policy:?}, seed {seed}: {picks:?}");
                if policy == SchedPolicy::Random {
                    assert!(picks.1 > 0, "seed {seed}: {picks:?}");
                }
            }
        }
    }
}
