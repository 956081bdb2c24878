//! The allocation path: what `kmalloc`/`kvmalloc` with a GFP class does in
//! the sim, across memory (`mm.rs`), lockdep (the reclaim context) and the
//! fault plan.
//!
//! Fault model: ENOMEM when the fault plan fails the site (`SITE/nowait`
//! aims at the would-block allocations alone) or past `MAX_ALLOCATION`;
//! each one recorded as injected. A GFP_KERNEL allocation outside a noio
//! scope while an IO-path lock is held fails the run ("memalloc_noio").

use blksnap_core::kernel::{AllocId, Errno, Gfp};

use super::mm::MAX_ALLOCATION;
use super::Sim;
use crate::check::injected::FaultKind;
use crate::trace::TraceEvent;

impl Sim {
    /// Whether an allocation that may sleep reclaims first, and for how
    /// long (`reclaim.rs`). GFP_KERNEL inside a noio scope reclaims as
    /// GFP_NOIO.
    pub(crate) fn alloc_slowpath(&self, gfp: Gfp) -> Option<u64> {
        let gfp = match gfp {
            Gfp::Kernel if self.sched.current_noio() => Gfp::Noio,
            other => other,
        };
        let (live, limit) = (self.mm.live_bytes(), self.mm.memory_limit.get());
        self.reclaim.borrow_mut().slowpath(gfp, live, limit)
    }

    pub(crate) fn kmalloc(
        &self,
        site: &'static str,
        bytes: u64,
        gfp: Gfp,
    ) -> Result<AllocId, Errno> {
        self.check_reclaim_context(site, gfp);
        // One allocation past this is refused as vmalloc would refuse it:
        // the host must not try (a table for a device of 2^60 sectors).
        let fails = bytes > MAX_ALLOCATION || self.alloc_fault(site, gfp);
        if self.mm.any_reclaiming() {
            if let Some(task) = self.current_task() {
                self.mm.returned(task);
            }
        }
        self.record_with(|| TraceEvent::Alloc { site, ok: !fails });
        if fails {
            let site = site.to_string();
            self.record_fault(FaultKind::Alloc { site, gfp });
            return Err(Errno::ENOMEM);
        }
        self.tell_oracle_allocated(site);
        Ok(self.account_alloc(site, bytes))
    }

    /// An allocation at `site` begins to reclaim: the oracle times the
    /// corrupted event from here (the engine raised the corrupt flag before
    /// it allocated the event).
    pub(crate) fn reclaim_began(&self, site: &'static str) {
        if let Some(task) = self.current_task() {
            let now = self.now();
            self.mm.reclaim_began(task, site);
            self.oracle.borrow_mut().reclaim_began(site, task, now);
        }
    }

    /// Whether an allocation at `site` is in reclaim now: it has begun and
    /// not returned (the user's last look at an event queue may come
    /// before such an event is queued).
    pub fn reclaiming(&self, site: &str) -> bool {
        self.mm.reclaiming(site)
    }

    fn tell_oracle_allocated(&self, site: &'static str) {
        if let Some(task) = self.current_task() {
            let now = self.now();
            self.oracle.borrow_mut().allocated(site, task, now);
        }
    }

    pub(crate) fn kfree(&self, id: AllocId) {
        if !self.mm.free(id) {
            self.fail(
                "memory",
                format!("kfree of {id:?}: double free or bad pointer"),
            );
        }
    }

    /// memalloc_noio: outside a noio scope, an allocation that may start IO
    /// while the task holds a lock on the IO path can deadlock in reclaim.
    fn check_reclaim_context(&self, site: &str, gfp: Gfp) {
        if gfp != Gfp::Kernel || self.sched.current_noio() {
            return;
        }
        if let Some(id) = self.current_task() {
            // The description is built only when it may be kept (a format
            // per GFP_KERNEL allocation was most of this check's cost).
            if self.lockdep.borrow().cross_held() {
                let what = format!(
                    "GFP_KERNEL allocation at {site} by '{}'",
                    self.task_name(id)
                );
                let mut lockdep = self.lockdep.borrow_mut();
                lockdep.mark = self.sched.next_id();
                lockdep.may_io_allocation(id, what);
            }
        }
        let held = self
            .current_task()
            .and_then(|id| self.lockdep.borrow().io_locks_held(id));
        if let Some(class) = held {
            self.fail(
                "memalloc_noio",
                format!(
                    "GFP_KERNEL allocation at {site} while holding {class} outside a noio scope"
                ),
            );
        }
    }

    /// Does the fault plan fail this allocation? A plan can aim at the
    /// would-block allocations alone with the site name `SITE/nowait`.
    /// Only a would-block allocation builds a name: every other one asks
    /// with the literal (a `String` per kmalloc was a malloc and a free on
    /// the hottest path, issue 10).
    fn alloc_fault(&self, site: &str, gfp: Gfp) -> bool {
        let mut rng = self.fault_rng.borrow_mut();
        let nowait = gfp == Gfp::NoioNowait;
        self.faults.borrow_mut().alloc_fails(site, nowait, &mut rng)
    }

    /// Account a live allocation; past the scenario's limit, fail the run.
    fn account_alloc(&self, site: &'static str, bytes: u64) -> AllocId {
        let (id, over_limit) = self.mm.account(site, bytes);
        if let Some(message) = over_limit {
            self.fail("memory", message);
        }
        id
    }
}
