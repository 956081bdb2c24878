//! The scheduler and virtual time: the tasks, the run queue, the wake
//! queue, the timers, the clock, and the policy that picks the next task.
//!
//! Virtual time moves by `POLL_COST_NS` per poll and jumps to the next
//! timer when nothing can run. Every pick draws from the `sched` stream of
//! the seed (Random), or follows seeded fixed priorities with a few seeded
//! change points that demote the running task (PCT, `Priority`).
//!
//! Fault model: the scheduler injects no faults; it *is* the adversary of
//! interleavings. A hang (no runnable task, no timer, a process left) or a
//! livelock (past `Bounds`) ends the run; the executor reports it.
//!
//! This file knows nothing of the `Sim`: timer actions are an opaque type
//! `A` the owner chooses (the `Sim` uses closures over itself).

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::task::Waker;

use blksnap_core::kernel::{Bio, BioResult, Completer, LocalBoxFuture, TaskName};

use super::task::{Task, TaskId, TaskTable, TaskWaker, WakeQueue, NO_SLOT};
use crate::rng::SimRng;
use crate::runqueue::RunQueue;

/// Virtual time one poll of a task costs: CPU work is not free.
pub const POLL_COST_NS: u64 = 200;

/// The most room a `current->bio_list` opens with (a chunk's bios).
const MAX_BIO_LIST_ROOM: usize = 1024;

/// A `current->bio_list`: the bios queued and who waits for each.
type BioList = Vec<(Bio, Completer<BioResult>)>;

/// Limits that turn a hang or a livelock into a failure.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_polls: u64,
    pub max_virtual_ns: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_polls: 20_000_000,
            max_virtual_ns: 3_600_000_000_000,
        }
    }
}

/// Scheduling policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedPolicy {
    /// Uniformly random among the runnable tasks.
    Random,
    /// PCT-style: random fixed priorities, the highest runnable runs, and a
    /// few seeded change points demote the running task.
    Priority { change_points: u32 },
}

#[derive(Default)]
pub(crate) struct RunState {
    tasks: TaskTable,
    runnable: RunQueue,
    /// Live scenario processes by name: the run ends when none is left,
    /// and `Kill` finds its sibling here (without a scan of all tasks).
    processes: BTreeSet<(String, TaskId)>,
    /// The table slot of the task last polled (of `current` while it runs).
    current_slot: usize,
    /// The run-queue slot of the task `pick` chose last (`NO_SLOT` if the
    /// policy did not say): its poll puts it to sleep with no search.
    picked_slot: usize,
    /// The run-queue slot of the running task, as its poll began with
    /// it (`NO_SLOT` if the policy did not say): a preemption point run in
    /// place wakes it there.
    running_rq_slot: usize,
    polls: u64,
    change_at: BTreeSet<u64>,
}

impl RunState {
    /// The running task `current` and its run queue slot, if `waker` is
    /// its own.
    #[inline(always)]
    fn running_task_of(
        &mut self,
        current: Option<TaskId>,
        waker: &Waker,
    ) -> Option<(TaskId, usize)> {
        let id = current?;
        let task = self.tasks.at_mut(self.current_slot, id)?;
        if !task.waker.will_wake(waker) {
            return None;
        }
        Some((id, self.running_rq_slot))
    }
}

/// The timer queue: a heap of (due time, key, slot) over a slab of
/// actions. Keys are unique and grow, so timers fire in (due, key) order,
/// the order a sorted map of them would give; the heap and the slab keep
/// their buffers, so a timer costs no allocation once the run is warm.
///
/// A heap entry is one `u128`: the due time in the high 64 bits, then the
/// timer's insertion number, then its slot. Insertion numbers grow as the
/// keys do (every key comes from `Scheduler::at`, in order), so the
/// integer order is the (due, key) order, and an entry moves and compares
/// as two words, where a (u64, u64, usize) tuple took three and a
/// three-way compare (the heap holds 10^5 bios in flight in a 1 PiB run).
struct Timers<A> {
    heap: BinaryHeap<Reverse<u128>>,
    slots: Vec<Option<A>>,
    free: Vec<usize>,
    /// Timers inserted so far.
    inserted: u64,
}

/// Bits of a heap entry that hold the slot (2^28 timers pending at once),
/// under the insertion number (2^36 timers in a run: days of CPU time).
const SLOT_BITS: u32 = 28;

impl<A> Default for Timers<A> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            inserted: 0,
        }
    }
}

impl<A> Timers<A> {
    #[inline(always)]
    fn insert(&mut self, at: u64, action: A) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(action);
                slot
            }
            None => {
                self.slots.push(Some(action));
                self.slots.len() - 1
            }
        };
        let seq = self.inserted;
        self.inserted += 1;
        assert!(
            slot >> SLOT_BITS == 0 && seq >> (64 - SLOT_BITS) == 0,
            "timer queue limits: {slot} timers pending, {seq} inserted"
        );
        let low = (seq << SLOT_BITS) | slot as u64;
        let entry = (u128::from(at) << 64) | u128::from(low);
        self.heap.push(Reverse(entry));
    }

    fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(entry)| due(*entry))
    }

    /// The earliest timer if it is due by `now`.
    #[inline(always)]
    fn pop_due(&mut self, now: u64) -> Option<A> {
        let Reverse(entry) = *self.heap.peek()?;
        if due(entry) > now {
            return None;
        }
        self.heap.pop();
        let slot = slot_of(entry);
        self.free.push(slot);
        self.slots[slot].take()
    }

    /// Every action, in firing order; the queue is left empty.
    fn drain(&mut self) -> Vec<A> {
        let mut order = std::mem::take(&mut self.heap).into_sorted_vec();
        order.reverse();
        let mut slots = std::mem::take(&mut self.slots);
        self.free.clear();
        order
            .into_iter()
            .filter_map(|Reverse(entry)| slots[slot_of(entry)].take())
            .collect()
    }
}

/// The due time of a heap entry.
fn due(entry: u128) -> u64 {
    (entry >> 64) as u64
}

/// The slot of a heap entry.
fn slot_of(entry: u128) -> usize {
    (entry as u64 & ((1 << SLOT_BITS) - 1)) as usize
}

pub struct Scheduler<A> {
    /// Virtual time: a `Cell` of its own, not a field of `state`, so that
    /// reading it (several times per bio and per trace event) takes no
    /// borrow.
    now: Cell<u64>,
    /// Live tasks with `current->bio_list` open: while none is, a bio is
    /// submitted with no look at the running task (`current_bio_list_open`).
    open_bio_lists: Cell<usize>,
    /// The length of the last list closed: the room the next one opens
    /// with. A COW read queues a chunk's hundreds of bios on one list,
    /// which grown from empty copied them (96 bytes each) eight times.
    bio_list_room: Cell<usize>,
    /// One counter for task ids and timer keys (lockdep stamps with it),
    /// and the running task: `Cell`s of their own, not fields of `state`,
    /// so that reading them (every lock event reads both) and counting a
    /// timer take no borrow (issue 10).
    next_id: Cell<u64>,
    current: Cell<Option<TaskId>>,
    /// The running task's `noio` flag (None: no task runs), held here
    /// while it runs (`begin_poll` reads it from its table entry,
    /// `put_back` writes it there if it changed, `entry_noio`), and its
    /// `current->bio_list` once this poll reached it (`take_list` moves it
    /// from the entry, if the entry has one: `entry_has_list`). The engine
    /// saves and restores the one and opens and closes the other on every
    /// write, each time a borrow of `state` and a look at the table before
    /// (issue 10).
    running_noio: Cell<Option<bool>>,
    entry_noio: Cell<bool>,
    running_bio_list: Cell<Option<BioList>>,
    entry_has_list: Cell<bool>,
    state: RefCell<RunState>,
    /// The task a preemption point run in place picked when it was not
    /// its own (`repoll_in_place`): the executor's loop polls it next,
    /// with no second draw.
    prepicked: Cell<Option<TaskId>>,
    /// The checks of the executor loop that runs (`run`'s bounds, or None
    /// for `settle`'s, which has none), if one runs: its preemption points
    /// run in place (`repoll_in_place`). Plain data a preemption point
    /// reads with no borrow (`enter_loop`, `leave_loop`).
    in_loop: Cell<Option<Option<Bounds>>>,
    /// The waker of the task polled last, kept from its poll to the next
    /// (`begin_poll`, `keep_waker`): a process's polls follow one another,
    /// and each cloned the task's waker and dropped it after (two atomic
    /// operations a poll).
    polled_waker: Cell<Option<(TaskId, Waker)>>,
    /// Tests: preemption points take the plain path (return and re-poll),
    /// to compare a run with the one made in place.
    #[cfg(test)]
    pub(crate) plain_preemption: Cell<bool>,
    /// Tests: preemption points run in place that went on with the same
    /// task, and that picked another.
    #[cfg(test)]
    pub(crate) in_place_picks: Cell<(u64, u64)>,
    timers: RefCell<Timers<A>>,
    queue: Arc<WakeQueue>,
    rng: RefCell<SimRng>,
    pub policy: Cell<SchedPolicy>,
    pub bounds: Cell<Bounds>,
    /// Sleeping points the engine reached (`might_sleep` sites), with how
    /// often: the inventory test compares them with ARCHITECTURE.md.
    pub sleep_sites: RefCell<SleepSites>,
    /// Futures of tasks that died of an oops: kept, not dropped, so the
    /// dead task's state stays as it was until power-off frees it.
    zombies: RefCell<Vec<LocalBoxFuture<'static, ()>>>,
}

/// Everything the scheduler holds that can hold the `Sim` back, taken out
/// at power-off (see `power_off.rs`).
pub(crate) struct Remains<A> {
    pub tasks: BTreeMap<TaskId, Task>,
    pub zombies: Vec<LocalBoxFuture<'static, ()>>,
    /// Pending timer actions, in firing order.
    pub timers: Vec<A>,
}

impl<A> Scheduler<A> {
    pub fn new(seed: u64) -> Scheduler<A> {
        Scheduler {
            now: Cell::new(0),
            open_bio_lists: Cell::new(0),
            bio_list_room: Cell::new(0),
            next_id: Cell::new(0),
            current: Cell::new(None),
            running_noio: Cell::new(None),
            running_bio_list: Cell::new(None),
            entry_has_list: Cell::new(false),
            entry_noio: Cell::new(false),
            state: RefCell::new(RunState::default()),
            prepicked: Cell::new(None),
            in_loop: Cell::new(None),
            polled_waker: Cell::new(None),
            #[cfg(test)]
            plain_preemption: Cell::new(false),
            #[cfg(test)]
            in_place_picks: Cell::new((0, 0)),
            timers: RefCell::new(Timers::default()),
            queue: Arc::new(WakeQueue::new()),
            rng: RefCell::new(SimRng::child(seed, "sched")),
            policy: Cell::new(SchedPolicy::Random),
            bounds: Cell::new(Bounds::default()),
            sleep_sites: RefCell::new(SleepSites::default()),
            zombies: RefCell::new(Vec::new()),
        }
    }

    #[inline(always)]
    pub fn now(&self) -> u64 {
        self.now.get()
    }

    /// The id counter (lockdep orders its reports by it).
    pub fn next_id(&self) -> u64 {
        self.next_id.get()
    }

    // --- tasks ---------------------------------------------------------------------

    /// A new runnable task with a seeded priority.
    pub(crate) fn add_task(
        &self,
        name: TaskName,
        future: LocalBoxFuture<'static, ()>,
        noio: bool,
        is_process: bool,
    ) -> TaskId {
        let id = {
            let mut sched = self.state.borrow_mut();
            let id = self.next_id.get() + 1;
            self.next_id.set(id);
            // `runnable.add` below gives this slot: no task is added between.
            let slot = sched.runnable.next_slot();
            if is_process {
                sched.processes.insert((name.to_string(), id));
            }
            sched.tasks.insert(
                id,
                Task {
                    name,
                    future: Some(future),
                    noio,
                    bio_list: None,
                    fatal_signal: false,
                    is_process,
                    waker: Waker::from(Arc::new(TaskWaker {
                        id,
                        slot,
                        queue: self.queue.clone(),
                    })),
                },
            );
            id
        };
        let priority = self.rng.borrow_mut().next_u64();
        {
            let mut sched = self.state.borrow_mut();
            sched.runnable.add(id, priority);
            sched.runnable.wake(id);
        }
        id
    }

    pub fn current_task(&self) -> Option<TaskId> {
        self.current.get()
    }

    /// The running task and the id counter (every lock event reads both).
    pub fn current_and_next_id(&self) -> (Option<TaskId>, u64) {
        (self.current.get(), self.next_id.get())
    }

    pub fn task_name(&self, id: TaskId) -> String {
        self.state
            .borrow()
            .tasks
            .get(id)
            .map(|t| t.name.to_string())
            .unwrap_or_default()
    }

    /// Deliver SIGKILL to a task: killable waits give up.
    pub fn kill(&self, id: TaskId) {
        if let Some(task) = self.state.borrow_mut().tasks.get_mut(id) {
            task.fatal_signal = true;
        }
        self.queue.push(id, NO_SLOT);
    }

    pub(crate) fn with_current<R>(&self, f: impl FnOnce(&mut Task) -> R) -> Option<R> {
        let id = self.current.get()?;
        let mut sched = self.state.borrow_mut();
        // `current` is only set by `begin_poll`, with its slot (checked
        // against the id: a task gone from the table is not found).
        let slot = sched.current_slot;
        sched.tasks.at_mut(slot, id).map(f)
    }

    /// True if some live task has `current->bio_list` open (then
    /// `queue_bio` looks at the running task's).
    #[inline(always)]
    pub(crate) fn any_bio_list_open(&self) -> bool {
        self.open_bio_lists.get() > 0
    }

    /// Queues a bio on the running task's `current->bio_list` if it is
    /// open, with one look at the task; else hands the bio back. Inlined
    /// into its one caller (half the bios of a COW come through here).
    #[inline(always)]
    pub(crate) fn queue_bio(
        &self,
        item: (Bio, Completer<BioResult>),
    ) -> Result<(), (Bio, Completer<BioResult>)> {
        let Some(mut list) = self.take_list() else {
            return Err(item);
        };
        list.push(item);
        self.running_bio_list.set(Some(list));
        Ok(())
    }

    /// Opens the running task's `current->bio_list`: whether it was open
    /// already, or None if no task runs.
    pub(crate) fn open_bio_list(&self) -> Option<bool> {
        self.running_noio.get()?;
        let list = self.take_list();
        let was_open = list.is_some();
        let room = self.bio_list_room.get();
        let list = list.unwrap_or_else(|| Vec::with_capacity(room));
        self.running_bio_list.set(Some(list));
        if !was_open {
            self.open_bio_lists.set(self.open_bio_lists.get() + 1);
        }
        Some(was_open)
    }

    /// Closes the running task's `current->bio_list`: what it queued
    /// (nothing if it was not open).
    pub(crate) fn close_bio_list(&self) -> Vec<(Bio, Completer<BioResult>)> {
        let list = self.take_list();
        if let Some(list) = &list {
            self.open_bio_lists.set(self.open_bio_lists.get() - 1);
            self.bio_list_room.set(list.len().min(MAX_BIO_LIST_ROOM));
        }
        list.unwrap_or_default()
    }

    /// Processes still running.
    pub fn live_processes(&self) -> Vec<String> {
        self.state
            .borrow()
            .tasks
            .values()
            .filter(|t| t.is_process)
            .map(|t| t.name.to_string())
            .collect()
    }

    /// True if the running task got SIGKILL.
    pub fn current_killed(&self) -> bool {
        self.with_current(|t| t.fatal_signal).unwrap_or(false)
    }

    /// The per-task `noio` flag of the current task.
    pub fn current_noio(&self) -> bool {
        self.running_noio.get().unwrap_or(false)
    }

    /// `memalloc_noio_save`: the running task's `noio` before, now set
    /// (false, and nothing set, if no task runs).
    pub fn noio_save(&self) -> bool {
        let Some(previous) = self.running_noio.get() else {
            return false;
        };
        self.running_noio.set(Some(true));
        previous
    }

    /// `memalloc_noio_restore` (nothing if no task runs).
    pub fn noio_restore(&self, previous: bool) {
        if self.running_noio.get().is_some() {
            self.running_noio.set(Some(previous));
        }
    }

    /// The running task's `noio`, read from its table entry (at
    /// `current_slot`, where `begin_poll` found it) and held until
    /// `put_back`. Nothing if the entry is not the task's (then no task's
    /// flags are reachable, as before).
    fn take_out(&self, sched: &mut RunState, id: TaskId) {
        if let Some(task) = sched.tasks.at_mut(sched.current_slot, id) {
            self.load(task);
        }
    }

    /// Hold `task`'s `noio` while it runs.
    #[inline(always)]
    fn load(&self, task: &Task) {
        self.running_noio.set(Some(task.noio));
        self.entry_noio.set(task.noio);
        self.entry_has_list.set(task.bio_list.is_some());
    }

    /// The running task's list (None: closed, or no task runs), taken:
    /// from `running_bio_list` if this poll reached it already, else from
    /// the task's entry. The caller puts it in `running_bio_list`.
    fn take_list(&self) -> Option<BioList> {
        self.running_bio_list.take().or_else(|| {
            // Nearly always none: a list open across a sleep (a COW).
            if !self.entry_has_list.replace(false) {
                return None;
            }
            self.running_noio.get()?;
            let id = self.current.get()?;
            let mut sched = self.state.borrow_mut();
            let slot = sched.current_slot;
            sched.tasks.at_mut(slot, id)?.bio_list.take()
        })
    }

    /// The running task `id` stops running (its poll ends, another poll
    /// begins inside it, or no task is to be current): its `noio` and list
    /// back into its table entry.
    fn put_back(&self, sched: &mut RunState, id: TaskId) {
        let Some(noio) = self.running_noio.take() else {
            return;
        };
        // A list this poll reached is out of the entry (which holds None
        // then); one it did not reach is still there.
        let list = self.running_bio_list.take();
        if list.is_none() && noio == self.entry_noio.get() {
            return;
        }
        if let Some(task) = sched.tasks.at_mut(sched.current_slot, id) {
            task.noio = noio;
            if list.is_some() {
                task.bio_list = list;
            }
        }
    }

    /// The id of a live process with this name (the first one started).
    pub fn process_named(&self, name: &str) -> Option<TaskId> {
        let sched = self.state.borrow();
        let first = sched.processes.range((name.to_string(), 0)..).next();
        first.filter(|(n, _)| n == name).map(|(_, id)| *id)
    }

    /// True while a scenario process runs.
    pub fn has_live_processes(&self) -> bool {
        !self.state.borrow().processes.is_empty()
    }

    /// A task ends (done, or dead of an oops): out of every index.
    pub(crate) fn remove_task(&self, id: TaskId) -> Option<Task> {
        let mut sched = self.state.borrow_mut();
        if self.current.get() == Some(id) {
            self.put_back(&mut sched, id);
            self.current.set(None);
        }
        sched.runnable.forget(id);
        let task = sched.tasks.remove(id)?;
        if task.bio_list.is_some() {
            self.open_bio_lists.set(self.open_bio_lists.get() - 1);
        }
        if task.is_process {
            sched.processes.remove(&(task.name.to_string(), id));
        }
        Some(task)
    }

    /// Power loss (`crate::power`): every task but the running one out of
    /// every index, and every timer out of the queue, handed back to be
    /// dropped.
    pub(crate) fn remove_all_but_current(&self) -> (Vec<Task>, Vec<A>) {
        let keep = self.current_task();
        let ids: Vec<TaskId> = self.state.borrow().tasks.ids();
        let tasks = ids
            .into_iter()
            .filter(|id| Some(*id) != keep)
            .filter_map(|id| self.remove_task(id))
            .collect();
        let timers = self.timers.borrow_mut().drain();
        (tasks, timers)
    }

    /// Run `f` with no task current (what it does reaches no task).
    pub(crate) fn without_current(&self, f: impl FnOnce()) {
        let keep = {
            let mut sched = self.state.borrow_mut();
            let keep = self.current.take();
            if let Some(id) = keep {
                self.put_back(&mut sched, id);
            }
            keep
        };
        f();
        let mut sched = self.state.borrow_mut();
        self.current.set(keep);
        if let Some(id) = keep {
            self.take_out(&mut sched, id);
        }
    }

    /// Every task still alive, by name (for hang reports).
    pub fn live_tasks(&self) -> Vec<String> {
        self.state
            .borrow()
            .tasks
            .values()
            .map(|t| t.name.to_string())
            .collect()
    }

    pub fn polls(&self) -> u64 {
        self.state.borrow().polls
    }

    /// Count a sleeping point the engine reached.
    pub fn might_sleep(&self, site: &'static str) {
        self.sleep_sites.borrow_mut().count(site);
    }

    // --- timers --------------------------------------------------------------------

    /// Run `action` at virtual time `at` (never in the past). Inlined:
    /// the action (a bio's, 96 bytes) is built in the caller and moved
    /// once, into its slot, not once more through a call.
    #[inline(always)]
    pub fn at(&self, at: u64, action: A) {
        // The key orders timers through their insertion number.
        self.next_id.set(self.next_id.get() + 1);
        let at = at.max(self.now());
        self.timers.borrow_mut().insert(at, action);
    }

    /// The earliest timer that is due now, out of the queue. Inlined into
    /// the executor's loop: the action is moved out of its slot once.
    #[inline(always)]
    pub fn take_due_timer(&self) -> Option<A> {
        let now = self.now();
        self.timers.borrow_mut().pop_due(now)
    }

    /// When the next timer fires, if any.
    pub fn next_timer_at(&self) -> Option<u64> {
        self.timers.borrow().next_at()
    }

    /// Jump to the next timer; false if there is none.
    pub fn advance_to_next_timer(&self) -> bool {
        let next = self.next_timer_at();
        let Some(at) = next else { return false };
        if at > self.now() {
            self.now.set(at);
        }
        true
    }

    // --- picking and polling -------------------------------------------------------

    /// Drained in place: the queue keeps its buffer, so a wake never
    /// allocates once the run is warm (waking touches no waker, so the
    /// lock is not taken again meanwhile).
    pub fn collect_woken(&self) {
        if !self.queue.may_hold() {
            return;
        }
        self.collect_woken_in(&mut self.state.borrow_mut());
    }

    /// `collect_woken`, with the state borrowed already.
    #[inline(always)]
    fn collect_woken_in(&self, sched: &mut RunState) {
        if self.queue.may_hold() {
            self.queue
                .drain(|id, slot| sched.runnable.wake_slot(id, slot));
        }
    }

    /// Inlined into the executor's loops: once per iteration, and nearly
    /// always an empty run queue in a run of bios (a few instructions,
    /// where the call cost about 15 more). A pick a preemption point run
    /// in place drew already (`prepicked`, a runnable task: the queue is
    /// not empty) is taken with no second draw.
    #[inline(always)]
    pub fn pick(&self) -> Option<TaskId> {
        self.pick_in(&mut self.state.borrow_mut())
    }

    /// `pick`, with the state borrowed already.
    #[inline(always)]
    fn pick_in(&self, sched: &mut RunState) -> Option<TaskId> {
        let policy = self.policy.get();
        if sched.runnable.is_empty() {
            return None;
        }
        if let Some(id) = self.prepicked.take() {
            return Some(id);
        }
        match policy {
            SchedPolicy::Random => {
                let n = sched.runnable.len() as u64;
                let i = self.rng.borrow_mut().below_inlined(n) as usize;
                let (id, slot) = sched.runnable.nth_slot(i)?;
                sched.picked_slot = slot;
                Some(id)
            }
            SchedPolicy::Priority { .. } => {
                sched.picked_slot = NO_SLOT;
                sched.runnable.highest()
            }
        }
    }

    /// An executor loop starts: its preemption points run in place until
    /// `leave_loop` hands back what this returns (the loop that ran
    /// before, if any). `bounds`: `run`'s checks; None for `settle`.
    pub(crate) fn enter_loop(&self, bounds: Option<Bounds>) -> Option<Option<Bounds>> {
        self.in_loop.replace(Some(bounds))
    }

    /// An executor loop ends: `previous` (from `enter_loop`) is back.
    pub(crate) fn leave_loop(&self, previous: Option<Option<Bounds>>) {
        self.in_loop.set(previous);
    }

    /// A running task's preemption point: its self-wake through `waker`,
    /// then what the executor's loop does up to its next poll, done while
    /// the task is still being polled, as long as that is exactly the same:
    /// - an executor loop must run (`enter_loop`), and `waker` must be the
    ///   running task's own (else it is only woken, and the wake was not a
    ///   return to this executor). The wake is made on the run queue at
    ///   once, not through the wake queue: the runnable set the loop's
    ///   collection builds does not depend on the order of the wakes;
    /// - no timer may be due (firing one runs sim code that expects no
    ///   task to run; the loop does it);
    /// - the wakes are collected, then the loop's checks (`run`'s bounds;
    ///   none for `settle`) must pass;
    /// - the pick is drawn. The same task: its poll is charged as
    ///   `begin_poll` charges it, and its id returned (the caller demotes
    ///   and records the poll, as `poll_task` does). Another task: kept
    ///   for the loop's next `pick`, and None.
    ///
    /// After None the task returns `Pending` with no effect on the way
    /// out (its futures are state machines that only pass it up), so the
    /// loop finds the state this left. The state is borrowed once for all
    /// of it (a borrow per step cost a flag check and a write-back each).
    pub(crate) fn repoll_in_place(&self, waker: &Waker) -> Option<TaskId> {
        let Some(bounds) = self.in_loop.get() else {
            waker.wake_by_ref();
            return None;
        };
        #[cfg(test)]
        if self.plain_preemption.get() {
            waker.wake_by_ref();
            return None;
        }
        let mut state = self.state.borrow_mut();
        let Some((id, rq_slot)) = state.running_task_of(self.current.get(), waker) else {
            // Not this executor's task: its waker may reach anything.
            drop(state);
            waker.wake_by_ref();
            return None;
        };
        // From here the task is runnable, as its self-wake makes it: its
        // bit is set on every way out but the pick of the same task, which
        // counts it in the draw instead (`pick_counting`).
        let now = self.now();
        if self.timers.borrow().next_at().is_some_and(|at| at <= now) {
            state.runnable.wake_slot(id, rq_slot);
            return None;
        }
        self.collect_woken_in(&mut state);
        if let Some(bounds) = bounds {
            let ends = state.processes.is_empty()
                || state.polls > bounds.max_polls
                || now > bounds.max_virtual_ns;
            if ends {
                state.runnable.wake_slot(id, rq_slot);
                return None;
            }
        }
        let picked = self.pick_counting(&mut state, id, rq_slot)?;
        #[cfg(test)]
        {
            let (same, other) = self.in_place_picks.get();
            let same_again = picked == id;
            let counts = (same + u64::from(same_again), other + u64::from(!same_again));
            self.in_place_picks.set(counts);
        }
        if picked != id {
            self.prepicked.set(Some(picked));
            return None;
        }
        state.polls += 1;
        self.now.set(now + POLL_COST_NS);
        Some(id)
    }

    /// The pick of `repoll_in_place`, with the running task `id` (in run
    /// queue slot `rq_slot`) counted as runnable. Under the uniform policy
    /// on the bitmap it is counted in the draw, which is the same draw
    /// (`below(n)` over the same n) naming the same task: picked again, it
    /// stays as it is, where the wake and the sleep of its bit cost about
    /// 75 instructions per preemption point; another task picked, it is
    /// woken then. Otherwise (the priority policy, the tree, a pick made
    /// already, or the task woken meanwhile) it is woken and `pick` runs.
    /// The same task: the run queue is left as the loop's `begin_poll`
    /// would leave it, and `running_rq_slot` stays right.
    #[inline(always)]
    fn pick_counting(&self, state: &mut RunState, id: TaskId, rq_slot: usize) -> Option<TaskId> {
        let uniform = matches!(self.policy.get(), SchedPolicy::Random);
        let rank = match uniform && self.prepicked.get().is_none() {
            true => state.runnable.rank_if_woken(id, rq_slot),
            false => None,
        };
        let Some(rank) = rank else {
            state.runnable.wake_slot(id, rq_slot);
            let picked = self.pick_in(state)?;
            if picked == id {
                let slot = std::mem::replace(&mut state.picked_slot, NO_SLOT);
                state.runnable.sleep_slot(id, slot);
                state.running_rq_slot = slot;
            }
            return Some(picked);
        };
        let n = state.runnable.len() as u64 + 1;
        let i = self.rng.borrow_mut().below_inlined(n) as usize;
        if i == rank {
            return Some(id);
        }
        let (picked, slot) = state.runnable.nth_slot(i - usize::from(i > rank))?;
        state.runnable.wake_slot(id, rq_slot);
        state.picked_slot = slot;
        Some(picked)
    }

    /// PCT change points: at a few seeded poll counts, demote the task.
    /// Inlined: most runs are under the uniform policy (nothing to do).
    #[inline(always)]
    pub fn maybe_demote(&self, id: TaskId) {
        let SchedPolicy::Priority { change_points } = self.policy.get() else {
            return;
        };
        self.demote_at_change_point(id, change_points);
    }

    fn demote_at_change_point(&self, id: TaskId, change_points: u32) {
        let mut sched = self.state.borrow_mut();
        if sched.change_at.is_empty() && change_points > 0 && sched.polls == 0 {
            let mut rng = self.rng.borrow_mut();
            for _ in 0..change_points {
                sched.change_at.insert(rng.below(100_000));
            }
        }
        let polls = sched.polls;
        if sched.change_at.remove(&polls) {
            sched.runnable.set_priority(id, 0);
        }
    }

    /// Make `id` the running task, charge the poll, and take its future
    /// (None if the task is gone or already being polled).
    /// The task's future and its waker, for one poll.
    pub(crate) fn begin_poll(&self, id: TaskId) -> Option<(LocalBoxFuture<'static, ()>, Waker)> {
        let mut sched = self.state.borrow_mut();
        // A poll inside another's (a loop run by a step): the outer task's
        // flags go back to its entry, where the original left them.
        if let Some(outer) = self.current.get() {
            self.put_back(&mut sched, outer);
        }
        let slot = std::mem::replace(&mut sched.picked_slot, NO_SLOT);
        sched.runnable.sleep_slot(id, slot);
        sched.running_rq_slot = slot;
        self.current.set(Some(id));
        sched.polls += 1;
        self.now.set(self.now() + POLL_COST_NS);
        // The task polled last, nearly always in a run of bios: its slot
        // is still `current_slot` (checked by the id), with no search.
        let last = sched.current_slot;
        let slot = match sched.tasks.at_mut(last, id) {
            Some(_) => last,
            None => sched.tasks.slot_of(id).unwrap_or(NO_SLOT),
        };
        sched.current_slot = slot;
        let task = sched.tasks.at_mut(slot, id)?;
        self.load(task);
        let future = task.future.take()?;
        let waker = match self.polled_waker.take() {
            Some((last, waker)) if last == id => waker,
            _ => task.waker.clone(),
        };
        Some((future, waker))
    }

    /// The waker `begin_poll` gave for the poll of `id` that ended, kept
    /// for the next poll.
    pub(crate) fn keep_waker(&self, id: TaskId, waker: Waker) {
        self.polled_waker.set(Some((id, waker)));
    }

    pub(crate) fn end_poll(&self) {
        let mut sched = self.state.borrow_mut();
        if let Some(id) = self.current.take() {
            self.put_back(&mut sched, id);
        }
    }

    /// Keep the future of a task that died of an oops until power-off.
    pub(crate) fn bury(&self, future: LocalBoxFuture<'static, ()>) {
        self.zombies.borrow_mut().push(future);
    }

    /// Power-off: every task, zombie and timer, out of the scheduler (the
    /// caller drops them once no borrow is held), and no wake-up pending.
    pub(crate) fn take_remains(&self) -> Remains<A> {
        let tasks = {
            let mut sched = self.state.borrow_mut();
            sched.processes.clear();
            sched.runnable = RunQueue::default();
            if let Some(id) = self.current.take() {
                self.put_back(&mut sched, id);
            }
            self.open_bio_lists.set(0);
            sched.tasks.take_all()
        };
        self.queue.drain(|_, _| {});
        Remains {
            tasks,
            zombies: std::mem::take(&mut *self.zombies.borrow_mut()),
            timers: self.timers.borrow_mut().drain(),
        }
    }

    /// Give a pending task its future back: the task just polled, so
    /// found by the slot `begin_poll` kept (else searched).
    pub(crate) fn park(&self, id: TaskId, future: LocalBoxFuture<'static, ()>) {
        let mut sched = self.state.borrow_mut();
        let slot = sched.current_slot;
        let task = match sched.tasks.at_mut(slot, id) {
            Some(task) => Some(task),
            None => sched.tasks.get_mut(id),
        };
        if let Some(task) = task {
            task.future = Some(future);
        }
    }
}

/// The `might_sleep` counters. The hot path keys a site by the address and
/// length of its `&'static str` (two integer compares, where a name key
/// costs a string compare per lookup, each one recorded under libFuzzer's
/// compare tracing); one slot per distinct name, so two literals with the
/// same text count together, exactly as the by-name map did.
///
/// The keys sit in a small open-addressed table, not a `BTreeMap`: a run
/// reaches a few dozen sites, and the map's lookup cost about 230
/// instructions per `might_sleep` (2.3 % of the in-process fuzz loop),
/// the table's a multiply and a compare or two. The table's layout
/// depends on addresses, but nothing is read in its order: the counts and
/// the listing (sorted by name) are the same.
#[derive(Default)]
pub struct SleepSites {
    /// (address, length, slot + 1) of each site literal met, 0 in the
    /// third field for a free entry; a power of two long, at most half
    /// full (empty until the first count).
    table: Vec<(usize, usize, usize)>,
    /// Keys in `table`.
    keys: usize,
    /// One counter per distinct site name.
    slots: Vec<(&'static str, u64)>,
}

/// Entries of the first `SleepSites` table.
const SITE_TABLE_MIN: usize = 64;

impl SleepSites {
    /// Count one visit to `site`.
    pub fn count(&mut self, site: &'static str) {
        let key = (site.as_ptr() as usize, site.len());
        let slot = match self.find(key) {
            Ok(slot) => slot,
            Err(free) => self.new_key(key, site, free),
        };
        self.slots[slot].1 += 1;
    }

    /// The slot of `key`, or the free entry where it goes.
    #[inline]
    fn find(&self, key: (usize, usize)) -> Result<usize, usize> {
        let mask = self.table.len().wrapping_sub(1);
        if self.table.is_empty() {
            return Err(0);
        }
        // Fibonacci hashing: the product's high bits, masked.
        let mut i = (key.0 ^ key.1).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize) >> 40 & mask;
        loop {
            let (address, len, slot) = self.table[i];
            if slot == 0 {
                return Err(i);
            }
            if (address, len) == key {
                return Ok(slot - 1);
            }
            i = (i + 1) & mask;
        }
    }

    /// First visit through this literal: reuse the slot of an equal name
    /// reached through another literal, or open one; the key goes in
    /// entry `free` (from `find`), the table grown first if it would be
    /// more than half full.
    fn new_key(&mut self, key: (usize, usize), site: &'static str, free: usize) -> usize {
        let slot = match self.slots.iter().position(|(name, _)| *name == site) {
            Some(slot) => slot,
            None => {
                self.slots.push((site, 0));
                self.slots.len() - 1
            }
        };
        self.keys += 1;
        let free = if self.keys * 2 > self.table.len() {
            self.grow();
            self.find(key).expect_err("a new key")
        } else {
            free
        };
        self.table[free] = (key.0, key.1, slot + 1);
        slot
    }

    /// Twice the entries (or the first table), every key put back.
    #[cold]
    fn grow(&mut self) {
        let size = (self.table.len() * 2).max(SITE_TABLE_MIN);
        let old = std::mem::replace(&mut self.table, vec![(0, 0, 0); size]);
        for (address, len, slot) in old.into_iter().filter(|e| e.2 != 0) {
            let free = self.find((address, len)).expect_err("keys are unique");
            self.table[free] = (address, len, slot);
        }
    }

    /// The sites and their counts, sorted by name (the order the by-name
    /// map gave, so every listing stays byte-identical).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &u64)> {
        let mut sorted: Vec<(&'static str, &u64)> =
            self.slots.iter().map(|(name, n)| (*name, n)).collect();
        sorted.sort_unstable_by_key(|(name, _)| *name);
        sorted.into_iter()
    }
}

#[cfg(test)]
mod sleep_sites_tests {
    use super::SleepSites;

    /// Two literals with the same text at different addresses count as one
    /// site, and the listing is sorted by name, not by address.
    #[test]
    fn same_name_counts_together_and_lists_by_name() {
        let other_b: &'static str = Box::leak(String::from("b").into_boxed_str());
        let mut sites = SleepSites::default();
        for site in ["b", "a", other_b, "b", "c:b"] {
            sites.count(site);
        }
        let listed: Vec<(&str, u64)> = sites.iter().map(|(s, n)| (s, *n)).collect();
        assert_eq!(listed, vec![("a", 1), ("b", 3), ("c:b", 1)]);
    }

    /// Past the first table's size, through many literals (some of one
    /// name): every count lands on its name, as a by-name map counts.
    #[test]
    fn many_sites_grow_the_table_and_keep_their_counts() {
        let names: Vec<&'static str> = (0..300)
            .map(|i| &*Box::leak(format!("site{}", i % 170).into_boxed_str()))
            .collect();
        let mut sites = SleepSites::default();
        let mut model = std::collections::BTreeMap::new();
        for round in 0..5 {
            for name in names.iter().skip(round * 7) {
                sites.count(name);
                *model.entry(name.to_string()).or_insert(0u64) += 1;
            }
        }
        let listed: Vec<(String, u64)> = sites.iter().map(|(s, n)| (s.to_string(), *n)).collect();
        assert_eq!(listed, model.into_iter().collect::<Vec<_>>());
        assert!(sites.table.len() >= 512, "{} entries", sites.table.len());
    }
}

#[cfg(test)]
mod timer_tests {
    use super::*;

    /// Timers fire by due time, and in insertion order at equal times,
    /// whatever slots they reuse; a drain hands them over in that order.
    #[test]
    fn timers_fire_by_due_time_then_insertion() {
        let mut timers = Timers::default();
        let mut expected = Vec::new();
        let mut fired = Vec::new();
        for round in 0..3u64 {
            for i in 0..50u64 {
                // Due times repeat (ties) and go back and forth.
                let at = 1000 * round + (i * 7919) % 13;
                timers.insert(at, (at, round, i));
                expected.push((at, round, i));
            }
            // Fire what is due by the middle of the round; slots freed
            // here are reused by the next round's timers.
            let now = 1000 * round + 6;
            while let Some(action) = timers.pop_due(now) {
                fired.push(action);
            }
            assert!(fired.iter().all(|(at, _, _)| *at <= now));
        }
        assert_eq!(timers.next_at(), Some(2007));
        fired.extend(timers.drain());
        // The order a sorted map keyed by (due, insertion) gives.
        expected.sort_by_key(|&(at, round, i)| (at, round, i));
        assert_eq!(fired, expected);
        assert_eq!(timers.next_at(), None);
    }
}

#[cfg(test)]
mod bio_list_tests {
    use super::*;
    use blksnap_core::kernel::{completion, DevT};

    fn bio() -> (Bio, Completer<BioResult>) {
        (Bio::read(DevT::new(8, 0), 0, 8), completion().1)
    }

    /// Runs `f` as task `id`'s poll (it is `current` meanwhile).
    fn as_task<R>(sched: &Scheduler<()>, id: TaskId, f: impl FnOnce() -> R) -> R {
        let (future, _waker) = sched.begin_poll(id).expect("a live task");
        let out = f();
        sched.end_poll();
        sched.park(id, future);
        out
    }

    /// The count that lets a bio skip the look at the running task
    /// follows every list: opened once however often it is opened, gone
    /// when it closes or its task is removed; a bio is queued only on the
    /// running task's own open list.
    #[test]
    fn open_bio_lists_are_counted_until_closed_or_their_task_goes() {
        let sched: Scheduler<()> = Scheduler::new(1);
        let a = sched.add_task("a".into(), Box::pin(async {}), false, false);
        let b = sched.add_task("b".into(), Box::pin(async {}), false, false);
        assert!(!sched.any_bio_list_open());
        assert!(sched.queue_bio(bio()).is_err(), "no task runs");
        as_task(&sched, a, || {
            assert_eq!(sched.open_bio_list(), Some(false));
            assert_eq!(sched.open_bio_list(), Some(true));
            assert!(sched.queue_bio(bio()).is_ok());
        });
        assert_eq!(sched.open_bio_lists.get(), 1);
        as_task(&sched, b, || {
            assert!(sched.queue_bio(bio()).is_err(), "b has no list open");
            assert!(sched.close_bio_list().is_empty());
            assert_eq!(sched.open_bio_list(), Some(false));
            assert!(sched.queue_bio(bio()).is_ok());
            assert!(sched.queue_bio(bio()).is_ok());
            assert_eq!(sched.close_bio_list().len(), 2);
        });
        assert_eq!(sched.open_bio_lists.get(), 1);
        // The next list opens with the room the last one needed.
        assert_eq!(sched.bio_list_room.get(), 2);
        let task = sched.remove_task(a).expect("a is live");
        assert_eq!(task.bio_list.map(|list| list.len()), Some(1));
        assert!(!sched.any_bio_list_open());
    }

    /// A task's `noio` and its list, held outside its entry while it
    /// runs, are its own across polls, and back in the entry whenever it
    /// does not run: after its poll, in a poll of another task inside its
    /// own (with no task's reachable then, as `current` is cleared), and
    /// while no task is current.
    #[test]
    fn noio_and_lists_stay_with_their_task() {
        let sched: Scheduler<()> = Scheduler::new(1);
        let a = sched.add_task("a".into(), Box::pin(async {}), false, false);
        let b = sched.add_task("b".into(), Box::pin(async {}), true, false);
        assert!(!sched.noio_save(), "no task runs");
        assert!(!sched.current_noio());
        as_task(&sched, a, || {
            assert!(!sched.noio_save());
            assert_eq!(sched.open_bio_list(), Some(false));
            assert!(sched.queue_bio(bio()).is_ok());
            as_task(&sched, b, || {
                assert!(sched.current_noio(), "b is a noio kthread");
                assert!(sched.queue_bio(bio()).is_err(), "a's list is a's");
            });
            assert!(!sched.current_noio(), "no task is current after b's poll");
            assert!(sched.close_bio_list().is_empty());
        });
        as_task(&sched, a, || {
            assert!(sched.current_noio(), "a saved noio and kept it");
            sched.without_current(|| assert!(!sched.current_noio()));
            assert!(sched.current_noio());
            sched.noio_restore(false);
            assert_eq!(sched.close_bio_list().len(), 1, "a's list, with its bio");
        });
        as_task(&sched, a, || assert!(!sched.current_noio()));
        assert!(!sched.any_bio_list_open());
        let task = sched.remove_task(a).expect("a is live");
        assert!(!task.noio && task.bio_list.is_none());
    }
}
