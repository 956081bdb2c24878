//! The copy-on-write area of one device for one snapshot (v2 `diff_area.c`,
//! spec 5). It owns the chunks, their caches, the buffer pool, and the
//! eviction work; chunks move through the state machine of `chunk`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use crate::chunk::{bits, Chunk};
use crate::diff_buffer::DiffBuffer;
use crate::diff_io;
use crate::diff_storage::DiffStorage;
use crate::event_queue::EVENT_CORRUPTED;
use crate::kernel::sync::LockWait;
use crate::kernel::{
    blkdev_get, completion, kmalloc, preempt, sleep_point, AllocId, BdevHandle, BioResult,
    Completer, DevT, Errno, Gfp, Kref, LocalBoxFuture, NoioScope, Stamps, TaskKind, TaskName,
    SECTOR_SHIFT,
};
use crate::module::Module;

/// Bytes of one `struct chunk`, for the up-front allocation v2 makes.
const CHUNK_STRUCT_BYTES: u64 = 128;
/// How long `diff_area_free` waits for IO in flight (about 6 s in v2).
const FREE_WAIT_NS: u64 = 6_000_000_000;

/// Which per-device cache a chunk with a buffer waits in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    Read,
    Write,
}

pub struct DiffArea {
    module: Rc<Module>,
    pub orig_dev: DevT,
    orig: Cell<Option<BdevHandle>>,
    storage: Rc<DiffStorage>,
    chunk_shift: u32,
    chunk_count: u64,
    capacity: u64,
    struct_alloc: Cell<Option<AllocId>>,
    /// Chunk structs, made on first touch; v2 allocates them all up front,
    /// which `struct_alloc` accounts for.
    chunks: RefCell<ChunkTable>,
    read_cache: RefCell<VecDeque<Rc<Chunk>>>,
    write_cache: RefCell<VecDeque<Rc<Chunk>>>,
    eviction_queued: Cell<bool>,
    /// `flush_work` callers, woken when the eviction work returns.
    eviction_flushers: RefCell<Vec<Completer<()>>>,
    /// Set when `free` starts: v2 marks the area corrupted there, which
    /// stops the eviction loop and its queueing whatever B-DA-8 says.
    freeing: Cell<bool>,
    /// The quirk under which `free` stopped waiting for IO still pending
    /// (B-DA-7: the 6 s cap; B-DA-9: no wait after the flush), named in
    /// the use-after-free a late completion then hits.
    skipped_wait: Cell<Option<&'static str>>,
    free_buffers: RefCell<Vec<DiffBuffer>>,
    corrupt_flag: Cell<u64>,
    pending_io: Cell<u64>,
    refs: Kref,
    /// Set once `free` ran: a completion arriving later is a use after free.
    freed: Cell<bool>,
}

/// The chunk size rule (spec 5.1 step 2): grow until the count fits and a
/// chunk is at least the device's minimal IO size.
pub fn chunk_geometry(module: &Module, capacity: u64, io_min: u32) -> (u32, u64) {
    let params = module.params();
    let io_min_sectors = u64::from(io_min) >> SECTOR_SHIFT;
    let mut shift = params.chunk_minimum_shift;
    loop {
        let sectors = 1u64 << (shift - SECTOR_SHIFT).min(63);
        let count = capacity.div_ceil(sectors);
        if count <= params.chunk_maximum_count && sectors >= io_min_sectors {
            return (shift, count);
        }
        shift += 1;
    }
}

/// Which completion handler a chunk IO work item runs.
#[derive(Clone, Copy)]
enum Notify {
    Load,
    Store,
}

/// Largest chunk count kept in a flat table (512 KiB of slots at most).
const FLAT_CHUNKS_MAX: u64 = 65_536;

/// The chunks made so far, by number. Up to `FLAT_CHUNKS_MAX` chunks a flat
/// vector indexed by number (an index, where a map walks nodes on every
/// I/O); above, a map, so a huge device does not pay for slots it never
/// touches. Both list their chunks in ascending number.
enum ChunkTable {
    Flat(Vec<Option<Rc<Chunk>>>),
    Map(BTreeMap<u64, Rc<Chunk>>),
}

impl ChunkTable {
    fn new(chunk_count: u64) -> ChunkTable {
        if chunk_count <= FLAT_CHUNKS_MAX {
            ChunkTable::Flat(Vec::new())
        } else {
            ChunkTable::Map(BTreeMap::new())
        }
    }

    /// The chunk `number`, made by `make` on first use.
    fn get_or_insert_with(&mut self, number: u64, make: impl FnOnce() -> Rc<Chunk>) -> &Rc<Chunk> {
        match self {
            ChunkTable::Flat(slots) => {
                let index = number as usize;
                if index >= slots.len() {
                    slots.resize(index + 1, None);
                }
                slots[index].get_or_insert_with(make)
            }
            ChunkTable::Map(map) => map.entry(number).or_insert_with(make),
        }
    }

    /// The chunks made so far, in ascending number.
    fn values(&self) -> Box<dyn Iterator<Item = &Rc<Chunk>> + '_> {
        match self {
            ChunkTable::Flat(slots) => Box::new(slots.iter().flatten()),
            ChunkTable::Map(map) => Box::new(map.values()),
        }
    }
}

impl DiffArea {
    /// `diff_area_new`, at TAKE. The returned area holds one reference,
    /// owned by the tracker.
    /// It sleeps where v2 does: the open of the original and the
    /// GFP_KERNEL allocation of the struct and its chunks.
    pub async fn new(
        module: &Rc<Module>,
        dev: DevT,
        storage: &Rc<DiffStorage>,
    ) -> Result<Rc<DiffArea>, Errno> {
        let k = module.k();
        let orig = blkdev_get(k, "diff_area_new.blkdev_get", dev).await?;
        let capacity = k.bdev_nr_sectors(dev);
        let (chunk_shift, chunk_count) = chunk_geometry(module, capacity, k.bdev_io_min(dev));
        let bytes = 512 + chunk_count * CHUNK_STRUCT_BYTES;
        let struct_alloc = match kmalloc(k, "diff_area", bytes, Gfp::Kernel).await {
            Ok(alloc) => alloc,
            Err(e) => {
                k.bdev_close(orig);
                return Err(e);
            }
        };
        if storage.capacity() == 0 {
            // v2 returns here with the device open and the struct allocated
            // (B-DA-1); the fix gives both back.
            if !module.quirks.da_1 {
                k.kfree(struct_alloc);
                k.bdev_close(orig);
            }
            return Err(Errno::EFAULT);
        }
        Ok(Rc::new(DiffArea {
            module: module.clone(),
            orig_dev: dev,
            orig: Cell::new(Some(orig)),
            storage: storage.clone(),
            chunk_shift,
            chunk_count,
            capacity,
            struct_alloc: Cell::new(Some(struct_alloc)),
            chunks: RefCell::new(ChunkTable::new(chunk_count)),
            read_cache: RefCell::new(VecDeque::new()),
            write_cache: RefCell::new(VecDeque::new()),
            eviction_queued: Cell::new(false),
            eviction_flushers: RefCell::new(Vec::new()),
            freeing: Cell::new(false),
            skipped_wait: Cell::new(None),
            free_buffers: RefCell::new(Vec::new()),
            corrupt_flag: Cell::new(0),
            pending_io: Cell::new(0),
            refs: Kref::new("diff_area"),
            freed: Cell::new(false),
        }))
    }

    /// Sectors in one (full) chunk.
    pub fn chunk_sectors(&self) -> u64 {
        1 << (self.chunk_shift - SECTOR_SHIFT)
    }

    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn is_corrupted(&self) -> bool {
        self.corrupt_flag.get() != 0
    }

    pub fn pending_io(&self) -> u64 {
        self.pending_io.get()
    }

    /// The chunk with this number, or None past the end of the device.
    pub(crate) fn chunk(&self, number: u64) -> Option<Rc<Chunk>> {
        if number >= self.chunk_count {
            return None;
        }
        let mut chunks = self.chunks.borrow_mut();
        let chunk = chunks.get_or_insert_with(number, || {
            let sectors = self.chunk_sectors();
            let start = number * sectors;
            let count = sectors.min(self.capacity - start);
            Rc::new(Chunk::new(self.module.k(), number, count))
        });
        Some(chunk.clone())
    }

    /// The chunk numbers a sector range touches, in ascending order.
    #[inline(always)]
    fn chunk_numbers(&self, sector: u64, count: u64) -> std::ops::RangeInclusive<u64> {
        let shift = self.chunk_shift - SECTOR_SHIFT;
        (sector >> shift)..=((sector + count.max(1) - 1) >> shift)
    }

    // --- references ----------------------------------------------------------

    pub fn get(&self) {
        self.refs.get();
    }

    /// Drop a reference; the last one frees the area (which may sleep).
    pub async fn put(self: &Rc<Self>) {
        if self.refs.put(self.module.k()) {
            self.free().await;
        }
    }

    // --- corruption ------------------------------------------------------------

    /// `diff_area_set_corrupted`: only the first call raises the event,
    /// whose allocation may sleep (the flag is set before it).
    pub async fn set_corrupted(&self, err: Errno) {
        let first = self.corrupt_flag.get() == 0;
        self.corrupt_flag.set(self.corrupt_flag.get() + 1);
        if !first {
            return;
        }
        let k = self.module.k();
        k.log(&format!("diff_area {} corrupted: {err}", self.orig_dev));
        let mut payload = Vec::with_capacity(12);
        payload.extend_from_slice(&self.orig_dev.major().to_le_bytes());
        payload.extend_from_slice(&self.orig_dev.minor().to_le_bytes());
        payload.extend_from_slice(&err.0.to_le_bytes());
        self.storage
            .event_queue
            .generate(EVENT_CORRUPTED, payload)
            .await;
    }

    // --- buffers ----------------------------------------------------------------

    async fn take_buffer(&self, nowait: bool) -> Result<DiffBuffer, Errno> {
        if let Some(buffer) = self.free_buffers.borrow_mut().pop() {
            return Ok(buffer);
        }
        DiffBuffer::new(self.module.k(), self.chunk_sectors(), nowait).await
    }

    /// Back to the pool, unless the pool already holds more than its size.
    fn give_buffer(&self, buffer: DiffBuffer) {
        // A signed compare, as the C int parameter is (B-PARAM-1: -1 frees
        // every buffer).
        let limit = self.module.params().pool_limit();
        let mut pool = self.free_buffers.borrow_mut();
        if pool.len() as i64 > limit {
            buffer.free(self.module.k());
        } else {
            pool.push(buffer);
        }
    }

    /// Drop the chunk's buffer and its BUFFER_READY bit.
    fn release_buffer(&self, chunk: &Chunk) {
        chunk.clear(bits::BUFFER_READY);
        if let Some(buffer) = chunk.buffer.borrow_mut().take() {
            self.give_buffer(buffer);
        }
    }

    // --- caches -----------------------------------------------------------------

    fn cache(&self, which: Cache) -> &RefCell<VecDeque<Rc<Chunk>>> {
        match which {
            Cache::Read => &self.read_cache,
            Cache::Write => &self.write_cache,
        }
    }

    fn cache_remove(&self, chunk: &Rc<Chunk>) {
        for which in [Cache::Read, Cache::Write] {
            self.cache(which)
                .borrow_mut()
                .retain(|c| !Rc::ptr_eq(c, chunk));
        }
    }

    /// Put a chunk at the tail of its cache, release its lock, and queue
    /// eviction if that cache is now over its limit.
    fn cache_and_unlock(self: &Rc<Self>, chunk: &Rc<Chunk>) {
        let which = if chunk.has(bits::DIRTY) {
            Cache::Write
        } else {
            Cache::Read
        };
        let len = {
            let mut cache = self.cache(which).borrow_mut();
            cache.push_back(chunk.clone());
            cache.len() as i64
        };
        chunk.lock.up(self.module.k());
        if len > self.module.params().cache_limit() {
            self.maybe_queue_eviction();
        }
    }

    /// Caches over their limit, read cache first, each judged when the
    /// iterator reaches it: no vector per call. (Judging the write cache
    /// after the read cache's trylocks is the same: they leave it as is.)
    fn over_limit(&self) -> impl Iterator<Item = Cache> + '_ {
        // Signed, as the C int parameter (B-PARAM-1: -1 always evicts).
        let max = self.module.params().cache_limit();
        [Cache::Read, Cache::Write]
            .into_iter()
            .filter(move |&which| self.cache(which).borrow().len() as i64 > max)
    }

    /// Eviction stops for good on a corrupted area in v2, so image IO grows
    /// the caches without bound (B-DA-8); the fix keeps trimming them.
    fn eviction_stopped(&self) -> bool {
        self.freeing.get() || (self.is_corrupted() && self.module.quirks.da_8)
    }

    fn maybe_queue_eviction(self: &Rc<Self>) {
        if self.eviction_stopped()
            || self.eviction_queued.get()
            || self.over_limit().next().is_none()
        {
            return;
        }
        // Like v2's work item, it holds no reference: free flushes it.
        self.eviction_queued.set(true);
        let area = self.clone();
        self.module.k().spawn(
            TaskKind::Work,
            TaskName::Device("blksnap_cache_release ", self.orig_dev),
            Box::pin(async move {
                area.evict().await;
                area.eviction_queued.set(false);
                // flush_work returns as the work ends, not at a later poll:
                // the store it may have just started is still in flight.
                for flusher in area.eviction_flushers.take() {
                    flusher.complete(());
                }
            }),
        );
    }

    /// The eviction work: trim each cache back to its limit.
    /// It sleeps where the C work does: the region and bio allocations of
    /// the store (GFP_NOIO), and the store's bio allocation and submission
    /// (`diff_io_do`: bio_alloc_bioset from a GFP_NOIO mempool, then
    /// submit_bio_noacct, which waits for a request tag or a throttle; no
    /// bio list is open in a work item, so the bio goes down at once), all
    /// with the chunk lock held.
    async fn evict(self: &Rc<Self>) {
        while !self.eviction_stopped() && !self.freed.get() {
            let Some(chunk) = self.pick_for_eviction() else {
                return;
            };
            if !chunk.has(bits::BUFFER_READY) {
                self.module.k().warn("cached chunk without a ready buffer");
                chunk.lock.up(self.module.k());
            } else if chunk.has(bits::DIRTY) {
                match self.schedule_storing(&chunk, false).await {
                    // Counted as pending before the submission, as the C
                    // counts it before diff_io_do (chunk.c:251-253).
                    Ok(()) => sleep_point(self.module.k(), "cache_release.submit_bio").await,
                    Err(e) => self.store_failed(&chunk, Some(e)).await,
                }
            } else {
                self.release_buffer(&chunk);
                chunk.lock.up(self.module.k());
            }
        }
    }

    /// The first chunk whose lock can be taken without waiting, from the
    /// read cache if it is over its limit, else from the write cache.
    fn pick_for_eviction(&self) -> Option<Rc<Chunk>> {
        let k = self.module.k();
        self.over_limit().find_map(|which| {
            let mut cache = self.cache(which).borrow_mut();
            let index = cache.iter().position(|c| c.lock.down_trylock(k))?;
            cache.remove(index)
        })
    }

    // --- the state machine of spec 5.3 -------------------------------------------

    /// `chunk_store_failed`: the chunk is lost for good; its storage space
    /// is not given back. `err` None means "no new event" (v2 passes 0).
    async fn store_failed(&self, chunk: &Rc<Chunk>, err: Option<Errno>) {
        chunk.set(bits::FAILED);
        self.release_buffer(chunk);
        self.free_region(chunk);
        chunk.lock.up(self.module.k());
        if let Some(err) = err {
            self.set_corrupted(err).await;
        }
    }

    /// `diff_storage_free_region` of the chunk's region, if it has one.
    fn free_region(&self, chunk: &Chunk) {
        if let Some(region) = chunk.region.take() {
            self.storage.free_region(region);
        }
    }

    /// Write the chunk's buffer to its region (allocated on first store).
    /// The chunk lock stays held until the store completes.
    async fn schedule_storing(
        self: &Rc<Self>,
        chunk: &Rc<Chunk>,
        nowait: bool,
    ) -> Result<(), Errno> {
        let region = match chunk.region.get() {
            Some(region) => region,
            None => {
                let region = self.storage.new_region(self.chunk_sectors()).await?;
                chunk.region.set(Some(region));
                region
            }
        };
        let data = match chunk.buffer.borrow().as_ref() {
            Some(buffer) => buffer.data.clone(),
            None => return Err(Errno::EFAULT),
        };
        let io = diff_io::write(&self.module, region.dev, region.sector, data, nowait).await?;
        chunk.set(bits::STORING);
        self.spawn_notify("chunk_notify_store ", chunk, io, Notify::Store);
        Ok(())
    }

    /// Run `notify` in a work item once `io` ends, counting it as pending.
    /// Like v2, IO in flight holds no reference: `free` waits for it.
    fn spawn_notify(
        self: &Rc<Self>,
        what: &'static str,
        chunk: &Rc<Chunk>,
        io: diff_io::DiffIo,
        notify: Notify,
    ) {
        self.pending_io.set(self.pending_io.get() + 1);
        let (area, chunk) = (self.clone(), chunk.clone());
        let name = TaskName::Chunk(what, self.orig_dev, chunk.number);
        self.module.k().spawn(
            TaskKind::Work,
            name,
            Box::pin(async move {
                let result = io.await;
                if area.freed.get() {
                    panic!(
                        "BUG: use-after-free: IO completed on a freed diff_area ({})",
                        area.skipped_wait.get().unwrap_or("no quirk")
                    );
                }
                match notify {
                    Notify::Load => area.notify_load(&chunk, result).await,
                    Notify::Store => area.notify_store(&chunk, result).await,
                }
                // The worker can be preempted once the chunk is unlocked,
                // before its last touch of the area. That only matters once
                // the free is past its IO wait: a free that does not wait
                // again (B-DA-9, or B-DA-7 after its cap) runs to the end
                // meanwhile. So from there the worker is kept off the CPU
                // for a tick, with or without a quirk: the quirks change
                // what the free does, never where the worker sleeps.
                if area.freeing.get() {
                    area.module.k().sleep(crate::tracker::PREEMPTED_NS).await;
                } else {
                    preempt(area.module.k()).await;
                }
                if area.freed.get() {
                    panic!(
                        "BUG: use-after-free: pending_io_count of a freed diff_area ({})",
                        area.skipped_wait.get().unwrap_or("no quirk")
                    );
                }
                area.pending_io.set(area.pending_io.get() - 1);
            }),
        );
    }

    /// Completion of the COW read of the original, in a work item
    /// (`chunk_notify_load`, chunk.c:106-146, queued by diff_io.c:41).
    /// The store it starts sleeps where the eviction's does: its GFP_NOIO
    /// allocations, then `diff_io_do` (chunk.c:135 → 253; diff_io.c:125
    /// bio_alloc_bioset, 157 submit_bio_noacct), counted as pending first
    /// (chunk.c:251). No bio list is open in a work item, so the bio goes
    /// down at once and the submission may wait for a tag, chunk lock held.
    async fn notify_load(self: &Rc<Self>, chunk: &Rc<Chunk>, result: BioResult) {
        let data = match result {
            Ok(data) => data,
            Err(_) => return self.store_failed(chunk, Some(Errno::EIO)).await,
        };
        if chunk.has(bits::FAILED) {
            chunk.lock.up(self.module.k());
            return;
        }
        assert!(
            chunk.has(bits::LOADING),
            "load completed on a chunk not loading"
        );
        if let Some(buffer) = chunk.buffer.borrow_mut().as_mut() {
            buffer.data.overwrite(0, &data);
        }
        chunk.clear(bits::LOADING);
        chunk.set(bits::BUFFER_READY);
        let _noio = NoioScope::enter(self.module.k());
        match self.schedule_storing(chunk, false).await {
            Ok(()) => sleep_point(self.module.k(), "notify_load.submit_bio").await,
            Err(e) => self.store_failed(chunk, Some(e)).await,
        }
    }

    /// Completion of the write to the diff storage.
    async fn notify_store(self: &Rc<Self>, chunk: &Rc<Chunk>, result: BioResult) {
        if result.is_err() {
            return self.store_failed(chunk, Some(Errno::EIO)).await;
        }
        if chunk.has(bits::FAILED) {
            return self.store_failed(chunk, None).await;
        }
        assert!(
            chunk.has(bits::STORING),
            "store completed on a chunk not storing"
        );
        chunk.clear(bits::STORING);
        chunk.set(bits::STORE_READY);
        if chunk.has(bits::DIRTY) {
            chunk.clear(bits::DIRTY);
            self.release_buffer(chunk);
            chunk.lock.up(self.module.k());
        } else {
            self.cache_and_unlock(chunk);
        }
    }

    /// Start the COW read of a fresh chunk into a new buffer.
    async fn schedule_loading(
        self: &Rc<Self>,
        chunk: &Rc<Chunk>,
        nowait: bool,
    ) -> Result<(), Errno> {
        let buffer = self.take_buffer(nowait).await?;
        self.drop_lost_buffer(chunk);
        *chunk.buffer.borrow_mut() = Some(buffer);
        let start = chunk.number * self.chunk_sectors();
        let io = match diff_io::read(
            &self.module,
            self.orig_dev,
            start,
            chunk.sector_count,
            nowait,
        )
        .await
        {
            Ok(io) => io,
            Err(e) => {
                // Undo the buffer, so a chunk left alone is a clean chunk.
                if let Some(buffer) = chunk.buffer.borrow_mut().take() {
                    self.give_buffer(buffer);
                }
                return Err(e);
            }
        };
        chunk.set(bits::LOADING);
        self.spawn_notify("chunk_notify_load ", chunk, io, Notify::Load);
        Ok(())
    }

    /// `diff_area_copy`: start the COW of every chunk a write touches, in
    /// ascending order. Bios go to the writer's `bio_list`; the caller
    /// submits them once the whole range is scheduled.
    #[inline(always)]
    pub fn copy(
        self: &Rc<Self>,
        sector: u64,
        count: u64,
        nowait: bool,
        killable: bool,
    ) -> CopyRange {
        CopyRange(self.walk(sector, count, nowait, killable))
    }

    /// `diff_area_wait`: block until no chunk of the range is being copied.
    #[inline(always)]
    pub fn wait(
        self: &Rc<Self>,
        sector: u64,
        count: u64,
        nowait: bool,
        killable: bool,
    ) -> WaitRange {
        WaitRange(self.walk(sector, count, nowait, killable))
    }

    /// The walk of `copy` and `wait`, for a future that runs both.
    #[inline(always)]
    pub(crate) fn walk(
        self: &Rc<Self>,
        sector: u64,
        count: u64,
        nowait: bool,
        killable: bool,
    ) -> ChunkWalk {
        ChunkWalk::new(self.clone(), sector, count, nowait, killable)
    }

    /// The COW decision for one locked chunk (spec 5.3, first block), when
    /// the chunk needs nothing: it is unlocked and true is returned. Else
    /// the copy is to be started by `start_copy`.
    #[inline(always)]
    fn copied_already(&self, chunk: &Chunk) -> bool {
        if chunk.has(bits::FAILED | bits::DIRTY | bits::STORE_READY) {
            chunk.lock.up(self.module.k());
            return true;
        }
        false
    }

    /// The rest of the COW decision for one locked chunk: start its copy.
    /// Boxed by the caller as a whole (it owns its arguments), so the
    /// per-write future holds none of these state machines inline.
    async fn start_copy(self: Rc<Self>, chunk: Rc<Chunk>, nowait: bool) -> Result<(), Errno> {
        let k = self.module.k();
        if chunk.has(bits::LOADING | bits::STORING) {
            // IO in flight would hold the lock: a stale bit is a broken chunk.
            self.store_failed(&chunk, Some(Errno::EFAULT)).await;
            return Err(Errno::EFAULT);
        }
        let started = if chunk.has(bits::BUFFER_READY) {
            self.cache_remove(&chunk);
            self.schedule_storing(&chunk, nowait).await
        } else {
            self.schedule_loading(&chunk, nowait).await
        };
        match started {
            Ok(()) => Ok(()),
            // "Would block" is not a broken chunk: leave it as it was and
            // let the writer retry. v2 fails the chunk and corrupts the
            // whole snapshot (B-DA-3).
            Err(Errno::EAGAIN) if !self.module.quirks.da_3 => {
                if chunk.has(bits::BUFFER_READY) {
                    self.cache_and_unlock(&chunk);
                } else {
                    chunk.lock.up(k);
                }
                Err(Errno::EAGAIN)
            }
            Err(e) => {
                self.store_failed(&chunk, Some(e)).await;
                Err(e)
            }
        }
    }

    /// `diff_area_wait`'s check of one locked chunk: unlock it, and the
    /// error the write gets if the copy failed.
    #[inline(always)]
    fn check_copied(&self, chunk: &Chunk) -> Result<(), Errno> {
        let k = self.module.k();
        let state = chunk.state();
        chunk.lock.up(k);
        if state & bits::FAILED != 0 {
            return Err(Errno::EFAULT);
        }
        if state & (bits::BUFFER_READY | bits::DIRTY | bits::STORE_READY) == 0 {
            // Unreachable in v2 too (B-DA-6), where the lock would leak.
            k.warn("diff_area_wait: chunk in no ready state");
        }
        Ok(())
    }

    /// A chunk number past the end: the area is corrupted (-EINVAL).
    /// Boxed: rare, and inline it would grow every write's future.
    fn corrupt_past_end(self: Rc<Self>) -> LocalBoxFuture<'static, Result<(), Errno>> {
        Box::pin(async move {
            self.set_corrupted(Errno::EINVAL).await;
            Err(Errno::EINVAL)
        })
    }

    /// After a failed `copy`: wait until no copy of the range is in flight,
    /// so the write that is let through cannot overtake one. Unlike `wait`,
    /// a chunk the copy never reached (no state bit) is not an error.
    pub async fn wait_started(&self, sector: u64, count: u64) {
        let k = self.module.k();
        for number in self.chunk_numbers(sector, count) {
            let Some(chunk) = self.chunk(number) else {
                return;
            };
            chunk.lock.down(k).await;
            chunk.lock.up(k);
        }
    }

    // --- image IO ------------------------------------------------------------------

    /// Read or write the image view of one chunk, from `offset` sectors into
    /// it. Writes change the buffer only (never the original).
    pub async fn image_io(
        self: &Rc<Self>,
        number: u64,
        offset: u64,
        count: u64,
        write: Option<&Stamps>,
    ) -> Result<Stamps, Errno> {
        let k = self.module.k();
        let chunk = self.chunk(number).ok_or(Errno::EIO)?;
        chunk.lock.down_killable(k).await?;
        if chunk.has(bits::FAILED) {
            chunk.lock.up(k);
            return Err(Errno::EIO);
        }
        if chunk.has(bits::BUFFER_READY) {
            self.cache_remove(&chunk);
        } else if let Err(e) = self.load_for_image(&chunk).await {
            chunk.lock.up(k);
            return Err(e);
        }
        let data = {
            let mut buffer = chunk.buffer.borrow_mut();
            let buffer = buffer.as_mut().expect("BUFFER_READY has a buffer");
            if let Some(stamps) = write {
                buffer.data.overwrite(offset, stamps);
            }
            buffer.data.slice(offset, offset + count)
        };
        if write.is_some() {
            chunk.set(bits::DIRTY);
        }
        self.cache_and_unlock(&chunk);
        Ok(data)
    }

    /// A buffer on a chunk without BUFFER_READY was left by a failed image
    /// load (B-DA-5): v2 WARNs, on the COW path as on the image path, and
    /// overwrites the pointer, so the old buffer leaks (never freed here).
    fn drop_lost_buffer(&self, chunk: &Chunk) {
        if chunk.buffer.borrow().is_some() {
            self.module.k().warn("chunk buffer has been lost");
            chunk.buffer.borrow_mut().take();
        }
    }

    /// Synchronous load for the image: from the storage region if the chunk
    /// was stored, else from the original (safe: a write to the original
    /// would have copied the chunk first, and we hold its lock).
    /// The image kthread submits the bio itself, with no bio list open
    /// (diff_area.c:543 → 488 `chunk_load_diff`, chunk.c:338, or 490
    /// `chunk_load_orig`, chunk.c:317; then diff_io.c:125 bio_alloc_bioset
    /// and 157 submit_bio_noacct), so it may sleep in the submission, chunk
    /// lock held, before it waits for the completion (diff_io.c:160).
    async fn load_for_image(self: &Rc<Self>, chunk: &Rc<Chunk>) -> Result<(), Errno> {
        self.drop_lost_buffer(chunk);
        let buffer = self.take_buffer(false).await?;
        let (io, site) = match chunk.region.get().filter(|_| chunk.has(bits::STORE_READY)) {
            Some(region) => (
                diff_io::read(&self.module, region.dev, region.sector, region.count, false).await,
                "image_load_diff.submit_bio",
            ),
            None => {
                let start = chunk.number * self.chunk_sectors();
                let io = diff_io::read(
                    &self.module,
                    self.orig_dev,
                    start,
                    chunk.sector_count,
                    false,
                )
                .await;
                (io, "image_load_orig.submit_bio")
            }
        };
        let loaded = match io {
            Ok(io) => {
                sleep_point(self.module.k(), site).await;
                io.await
            }
            Err(e) => Err(e),
        };
        let mut buffer = buffer;
        match loaded {
            Ok(data) => {
                let n = data.len().min(buffer.data.len());
                buffer.data.overwrite(0, &data.slice(0, n));
                *chunk.buffer.borrow_mut() = Some(buffer);
                chunk.set(bits::BUFFER_READY);
                Ok(())
            }
            // v2 leaves the buffer attached to the chunk (B-DA-5).
            Err(e) if self.module.quirks.da_5 => {
                *chunk.buffer.borrow_mut() = Some(buffer);
                Err(e)
            }
            Err(e) => {
                self.give_buffer(buffer);
                Err(e)
            }
        }
    }

    // --- teardown ----------------------------------------------------------------------

    /// `diff_area_free`: wait for IO in flight, then fail and free every
    /// chunk, close the original and drop the pooled buffers. v2 stops
    /// waiting after about 6 s and frees anyway (B-DA-7); the fix waits.
    async fn free(self: &Rc<Self>) {
        let k = self.module.k();
        let deadline = k.now_ns() + FREE_WAIT_NS;
        while self.pending_io.get() > 0 {
            if self.module.quirks.da_7 && k.now_ns() >= deadline {
                self.skipped_wait.set(Some("B-DA-7"));
                break;
            }
            // One jiffy per poll, as the C's schedule_timeout_interruptible(1).
            k.sleep(crate::ctrl::JIFFY_NS).await;
        }
        // Corrupted (no event): nothing queues eviction any more and the
        // running work stops at its next chunk; then flush it.
        self.corrupt_flag.set(self.corrupt_flag.get() + 1);
        self.freeing.set(true);
        self.flush_eviction().await;
        self.wait_for_stores_of_the_flushed_work().await;
        let chunks: Vec<Rc<Chunk>> = self.chunks.borrow().values().cloned().collect();
        for chunk in chunks {
            chunk.lock.down(k).await;
            self.release_buffer(&chunk);
            self.free_region(&chunk);
            chunk.set(bits::FAILED);
            chunk.lock.up(k);
        }
        self.read_cache.borrow_mut().clear();
        self.write_cache.borrow_mut().clear();
        for buffer in self.free_buffers.borrow_mut().drain(..) {
            buffer.free(k);
        }
        if let Some(orig) = self.orig.take() {
            k.bdev_close(orig);
        }
        if let Some(alloc) = self.struct_alloc.take() {
            k.kfree(alloc);
        }
        self.freed.set(true);
    }

    /// `flush_work(&cache_release_work)`: back once the work has returned.
    async fn flush_eviction(&self) {
        while self.eviction_queued.get() {
            let (done, flusher) = completion();
            self.eviction_flushers.borrow_mut().push(flusher);
            done.await;
        }
    }

    /// The eviction work flushed just now may have been asleep in a
    /// GFP_NOIO allocation of its store while the IO wait above ended, and
    /// started that store after it. v2 frees under it, and the store's
    /// completion then writes `pending_io_count` of freed memory (B-DA-9,
    /// found by the bench in scenarios/bugs/snap-11.ron on the fixed
    /// engine). The fix waits for that IO too.
    async fn wait_for_stores_of_the_flushed_work(&self) {
        let k = self.module.k();
        if self.module.quirks.da_9 {
            if self.pending_io.get() > 0 && self.skipped_wait.get().is_none() {
                self.skipped_wait.set(Some("B-DA-9"));
            }
            return;
        }
        // B-DA-7 gave up on the first wait; the second one keeps to it.
        if self.skipped_wait.get().is_some() {
            return;
        }
        while self.pending_io.get() > 0 {
            k.sleep(crate::ctrl::JIFFY_NS).await;
        }
    }
}

/// The walk of `copy` and `wait` over the chunks of a range, in ascending
/// order, each one locked in turn: a `REQ_NOWAIT` writer only tries the
/// lock (-EAGAIN when held); others wait, killably with `killable`.
/// Written out by hand rather than as `async fn`s: every write polls it
/// twice per chunk, and the generated machines cost a resume per nesting
/// level (filter, copy, lock) on each poll. The awaits are the same: the
/// lock's yield and wait, and the boxed parts that may sleep.
pub(crate) struct ChunkWalk {
    area: Rc<DiffArea>,
    numbers: std::ops::RangeInclusive<u64>,
    nowait: bool,
    killable: bool,
    step: WalkStep,
    /// The chunk being locked (`WalkStep::Locking`), then the one locked.
    /// Kept after: the table never drops a chunk, so a later visit to the
    /// same number (the writer's wait after its copy) needs no lookup.
    chunk: Option<Rc<Chunk>>,
    wait: LockWait,
    /// The part being run in `WalkStep::Boxed`.
    part: Option<LocalBoxFuture<'static, Result<(), Errno>>>,
}

/// Where the walk stands; what it holds is in `ChunkWalk`'s fields, so
/// moving between steps drops nothing.
#[derive(Clone, Copy)]
enum WalkStep {
    /// Go on with the next chunk of the range.
    Next,
    /// Waiting for the lock of `chunk`.
    Locking,
    /// A part that may sleep (a copy being started, or the corruption of
    /// the area): Ok goes on with the next chunk.
    Boxed,
    /// Ready was returned.
    Done,
}

impl ChunkWalk {
    #[inline(always)]
    fn new(area: Rc<DiffArea>, sector: u64, count: u64, nowait: bool, killable: bool) -> Self {
        ChunkWalk {
            numbers: area.chunk_numbers(sector, count),
            area,
            nowait,
            killable,
            step: WalkStep::Next,
            chunk: None,
            wait: LockWait::done(),
            part: None,
        }
    }

    /// Lock the next chunk (then in `chunk`): Some(Ok) when it is locked,
    /// None past the range; an error ends the walk.
    #[inline(always)]
    fn poll_locked(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<(), Errno>>> {
        loop {
            match self.step {
                WalkStep::Next => {
                    let Some(number) = self.numbers.next() else {
                        self.step = WalkStep::Done;
                        return Poll::Ready(None);
                    };
                    if !self.visit(number) {
                        self.start_part(self.area.clone().corrupt_past_end());
                        continue;
                    }
                    let chunk = self.locked_chunk();
                    if self.nowait {
                        // REQ_NOWAIT: only the trylock, no preemption point.
                        let taken = chunk.lock.down_trylock(self.area.module.k());
                        return self.end_on_error(if taken { Ok(()) } else { Err(Errno::EAGAIN) });
                    }
                    self.wait = chunk.lock.wait(self.killable);
                    self.step = WalkStep::Locking;
                }
                WalkStep::Locking => {
                    let k = self.area.module.k();
                    let chunk = self.chunk.as_ref().expect("a chunk is being locked");
                    let locked = ready!(chunk.lock.poll_wait(k, &mut self.wait, cx));
                    self.step = WalkStep::Next;
                    return self.end_on_error(locked);
                }
                WalkStep::Boxed => {
                    let part = self.part.as_mut().expect("a part is running");
                    let result = ready!(part.as_mut().poll(cx));
                    self.part = None;
                    self.step = WalkStep::Next;
                    if let Err(e) = result {
                        return self.end_on_error(Err(e));
                    }
                }
                WalkStep::Done => panic!("chunk walk polled after it completed"),
            }
        }
    }

    /// Make chunk `number` the walk's `chunk`, looked up unless it is it
    /// already; false past the end of the device.
    #[inline(always)]
    fn visit(&mut self, number: u64) -> bool {
        if let Some(chunk) = &self.chunk {
            if chunk.number == number {
                return true;
            }
        }
        self.chunk = self.area.chunk(number);
        self.chunk.is_some()
    }

    /// The chunk last visited.
    #[inline(always)]
    fn locked_chunk(&self) -> &Rc<Chunk> {
        self.chunk.as_ref().expect("a chunk was visited")
    }

    fn start_part(&mut self, part: LocalBoxFuture<'static, Result<(), Errno>>) {
        self.part = Some(part);
        self.step = WalkStep::Boxed;
    }

    #[inline(always)]
    fn end_on_error(&mut self, result: Result<(), Errno>) -> Poll<Option<Result<(), Errno>>> {
        if result.is_err() {
            self.step = WalkStep::Done;
        }
        Poll::Ready(Some(result))
    }
}

impl ChunkWalk {
    /// `diff_area_copy` over the walk: start the COW of each chunk.
    #[inline(always)]
    pub(crate) fn poll_copy(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Errno>> {
        loop {
            let Some(locked) = ready!(self.poll_locked(cx)) else {
                return Poll::Ready(Ok(()));
            };
            locked?;
            let chunk = self.locked_chunk();
            if !self.area.copied_already(chunk) {
                let start = self.area.clone().start_copy(chunk.clone(), self.nowait);
                self.start_part(Box::pin(start));
            }
        }
    }

    /// `diff_area_wait` over the walk: wait for each chunk's copy.
    #[inline(always)]
    pub(crate) fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Errno>> {
        loop {
            let Some(locked) = ready!(self.poll_locked(cx)) else {
                return Poll::Ready(Ok(()));
            };
            locked?;
            if let Err(e) = self.area.check_copied(self.locked_chunk()) {
                self.step = WalkStep::Done;
                return Poll::Ready(Err(e));
            }
        }
    }

    /// Walk the same range again from its first chunk (the writer's
    /// `diff_area_wait` after its `diff_area_copy`).
    #[inline(always)]
    pub(crate) fn rewind(&mut self, sector: u64, count: u64) {
        self.numbers = self.area.chunk_numbers(sector, count);
        self.step = WalkStep::Next;
    }

    pub(crate) fn area(&self) -> &Rc<DiffArea> {
        &self.area
    }
}

/// `DiffArea::copy`'s future.
pub struct CopyRange(ChunkWalk);

impl Future for CopyRange {
    type Output = Result<(), Errno>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().0.poll_copy(cx)
    }
}

/// `DiffArea::wait`'s future.
pub struct WaitRange(ChunkWalk);

impl Future for WaitRange {
    type Output = Result<(), Errno>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().0.poll_wait(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_queue::Event;
    use crate::kernel::testing::{dev, load, quirks, run, TestKernel};
    use crate::kernel::Stamp;
    use crate::kernel::{BioOp, Kernel};
    use crate::params::Params;
    use crate::quirks::Quirks;

    const MIB: u64 = 2048; // sectors
    const GIB: u64 = 1024 * MIB;
    const TIB: u64 = 1024 * GIB;

    /// What the original device holds at a sector before any write.
    fn orig(sector: u64) -> Stamp {
        1_000_000 + sector
    }

    fn origs(range: std::ops::Range<u64>) -> Vec<Stamp> {
        range.map(orig).collect()
    }

    struct Setup {
        k: Rc<TestKernel>,
        storage: Rc<DiffStorage>,
        area: Rc<DiffArea>,
        orig: DevT,
        store: DevT,
    }

    /// A 64 MiB original (256 chunks of 512 sectors, the first 8 filled)
    /// and `storage_sectors` of diff storage.
    fn setup_with(params: Params, quirk_ids: &[&str], storage_sectors: u64) -> Setup {
        let k = TestKernel::new();
        let (orig_dev, store) = (dev(0), dev(16));
        k.add_device(orig_dev, 64 * MIB);
        k.add_device(store, 64 * MIB);
        k.fill(orig_dev, 0, 8 * 512, orig);
        let m = load(&k, params, quirks(quirk_ids));
        let storage = run(&k, DiffStorage::new(&m)).unwrap();
        storage.append_begin(store).unwrap();
        storage.append_range(store, 0, storage_sectors);
        storage.append_end();
        let area = run(&k, DiffArea::new(&m, orig_dev, &storage)).unwrap();
        Setup {
            k,
            storage,
            area,
            orig: orig_dev,
            store,
        }
    }

    fn setup(quirk_ids: &[&str]) -> Setup {
        setup_with(Params::default(), quirk_ids, 64 * MIB)
    }

    /// COW of a range as the tracker does it: copy, then wait.
    fn cow(s: &Setup, sector: u64, count: u64) -> (Result<(), Errno>, Result<(), Errno>) {
        run(&s.k, async {
            let copied = s.area.copy(sector, count, false, false).await;
            let waited = s.area.wait(sector, count, false, false).await;
            s.k.settle().await;
            (copied, waited)
        })
    }

    fn image_read(s: &Setup, number: u64, offset: u64, count: u64) -> Result<Vec<Stamp>, Errno> {
        run(&s.k, s.area.image_io(number, offset, count, None)).map(|d| d.to_vec())
    }

    fn events(s: &Setup) -> Vec<Event> {
        run(&s.k, async {
            let mut events = Vec::new();
            while let Ok(event) = s.storage.event_queue.wait(0).await {
                events.push(event);
            }
            events
        })
    }

    fn corrupted_payload(d: DevT, err: Errno) -> Vec<u8> {
        let mut payload = d.major().to_le_bytes().to_vec();
        payload.extend_from_slice(&d.minor().to_le_bytes());
        payload.extend_from_slice(&err.0.to_le_bytes());
        payload
    }

    /// Free the area and the storage; nothing may be left behind.
    fn teardown(s: Setup) {
        run(&s.k, async {
            s.area.put().await;
            s.k.settle().await;
        });
        s.storage.free();
        assert!(s.k.open_bdevs().is_empty(), "{:?}", s.k.open_bdevs());
        assert!(s.k.live_allocs().is_empty(), "{:?}", s.k.live_allocs());
        assert!(s.k.warns().is_empty(), "{:?}", s.k.warns());
    }

    /// Acceptance of issue 8 item 1: the COW path sleeps in its GFP_NOIO
    /// buffer allocation with the chunk lock held, and another writer runs
    /// there. Writer A must reach its sleeping point, then writer B its own,
    /// before A's allocation happens; without the await A would allocate at
    /// once and B could not run in between.
    #[test]
    fn two_writers_interleave_at_the_cow_buffer_allocation() {
        let s = setup(&[]);
        for (name, sector) in [("writer A", 0), ("writer B", 512)] {
            let area = s.area.clone();
            s.k.spawn(
                TaskKind::Work,
                name.into(),
                Box::pin(async move {
                    area.copy(sector, 8, false, false).await.unwrap();
                    area.wait(sector, 8, false, false).await.unwrap();
                }),
            );
        }
        run(&s.k, s.k.settle());
        let at_buffer: Vec<String> =
            s.k.sched_log()
                .into_iter()
                .filter(|e| e.ends_with(" diff_buffer"))
                .collect();
        assert_eq!(
            at_buffer,
            [
                "sleep writer A diff_buffer",
                "sleep writer B diff_buffer",
                "alloc writer A diff_buffer",
                "alloc writer B diff_buffer",
            ]
        );
        assert_eq!(image_read(&s, 1, 0, 8), Ok(origs(512..520)));
        teardown(s);
    }

    #[test]
    fn chunk_geometry_follows_spec_5_1() {
        let m = load(&TestKernel::new(), Params::default(), Quirks::default());
        #[rustfmt::skip]
        let cases = [
            // (capacity, io_min, shift, count)
            (64 * MIB,         512, 18, 256),
            (512 * GIB,        512, 18, 2_097_152),
            (512 * GIB + 1,    512, 19, 1_048_577),
            (TIB,              512, 19, 2_097_152),
            (TIB + 1,          512, 20, 1_048_577),
            (2 * TIB,          512, 20, 2_097_152),
            (4 * TIB,          512, 21, 2_097_152),
            (8 * TIB,          512, 22, 2_097_152),
            (1000,             512, 18, 2),
            // A chunk is at least io_min.
            (64 * MIB,        4096, 18, 256),
            (64 * MIB,  512 * 1024, 19, 128),
            (64 * MIB, 1024 * 1024, 20, 64),
        ];
        for (capacity, io_min, shift, count) in cases {
            assert_eq!(
                chunk_geometry(&m, capacity, io_min),
                (shift, count),
                "capacity {capacity}, io_min {io_min}"
            );
        }
    }

    #[test]
    fn the_last_chunk_is_trimmed() {
        let k = TestKernel::new();
        let (orig_dev, store) = (dev(0), dev(16));
        k.add_device(orig_dev, 1000);
        k.add_device(store, 4096);
        let m = load(&k, Params::default(), Quirks::default());
        let storage = run(&k, DiffStorage::new(&m)).unwrap();
        storage.append_range(store, 0, 4096);
        let area = run(&k, DiffArea::new(&m, orig_dev, &storage)).unwrap();
        assert_eq!((area.chunk_sectors(), area.chunk_count()), (512, 2));
        assert_eq!(area.chunk(0).unwrap().sector_count, 512);
        assert_eq!(area.chunk(1).unwrap().sector_count, 488);
        assert!(area.chunk(2).is_none());
    }

    #[test]
    fn copy_and_wait_store_the_original_and_the_image_reads_it() {
        let s = setup(&[]);
        // Spec 5.9: a write at 1020..1027 spans chunks 1 and 2.
        assert_eq!(cow(&s, 1020, 8), (Ok(()), Ok(())));
        assert_eq!(s.storage.counters().filled, 1024);
        for number in [1, 2] {
            let chunk = s.area.chunk(number).unwrap();
            assert_eq!(chunk.state(), bits::BUFFER_READY | bits::STORE_READY);
            assert!(!chunk.lock.is_locked());
            // Regions in read-completion order: chunk 1 first here.
            let region = chunk.region.get().unwrap();
            assert_eq!(region.sector, (number - 1) * 512);
            assert_eq!(
                s.k.peek(s.store, region.sector, 512),
                origs(number * 512..(number + 1) * 512)
            );
        }
        assert_eq!(s.area.read_cache.borrow().len(), 2);
        assert_eq!(s.area.pending_io(), 0);
        // The write the COW held back now reaches the original.
        s.k.poke(s.orig, 1020, &[7; 8]);
        assert_eq!(image_read(&s, 1, 508, 4), Ok(origs(1020..1024)));
        assert_eq!(image_read(&s, 2, 0, 4), Ok(origs(1024..1028)));
        // A second COW of a stored chunk does nothing.
        s.k.clear_bios();
        assert_eq!(cow(&s, 1020, 8), (Ok(()), Ok(())));
        assert!(s.k.bios().is_empty());
        assert_eq!(s.storage.counters().filled, 1024);
        teardown(s);
    }

    #[test]
    fn an_evicted_chunk_is_read_back_from_its_region() {
        let params = Params {
            chunk_maximum_in_cache: 0,
            ..Params::default()
        };
        let s = setup_with(params, &[], 64 * MIB);
        assert_eq!(cow(&s, 0, 8), (Ok(()), Ok(())));
        let chunk = s.area.chunk(0).unwrap();
        assert_eq!(
            chunk.state(),
            bits::STORE_READY,
            "eviction dropped the buffer"
        );
        assert!(chunk.buffer.borrow().is_none());
        assert!(s.area.read_cache.borrow().is_empty());
        assert_eq!(s.area.free_buffers.borrow().len(), 1, "back in the pool");
        s.k.poke(s.orig, 0, &[9; 512]);
        s.k.clear_bios();
        assert_eq!(image_read(&s, 0, 0, 512), Ok(origs(0..512)));
        let loads: Vec<_> = s.k.bios().iter().map(|b| (b.dev, b.op)).collect();
        assert_eq!(
            loads,
            vec![(s.store, BioOp::Read)],
            "loaded from the region"
        );
        teardown(s);
    }

    #[test]
    fn eviction_trims_the_read_cache_oldest_first() {
        let params = Params {
            chunk_maximum_in_cache: 2,
            ..Params::default()
        };
        let s = setup_with(params, &[], 64 * MIB);
        assert_eq!(cow(&s, 0, 4 * 512), (Ok(()), Ok(())));
        let cached: Vec<u64> = s
            .area
            .read_cache
            .borrow()
            .iter()
            .map(|c| c.number)
            .collect();
        assert_eq!(cached, vec![2, 3]);
        for number in [0, 1] {
            assert_eq!(s.area.chunk(number).unwrap().state(), bits::STORE_READY);
        }
        teardown(s);
    }

    /// B-DA-5 as the C shows it: a failed image load leaves its buffer on
    /// the chunk; the next COW of that chunk WARNs "buffer has been lost"
    /// (diff_area_copy) and leaks it. The fix gave the buffer back.
    #[test]
    fn quirk_da_5_the_next_cow_warns_and_leaks_the_lost_buffer() {
        let lost_after_cow = |ids: &[&str]| {
            let s = setup_with(Params::default(), ids, 64 * MIB);
            s.k.set_fail_io(s.orig, true);
            assert_eq!(image_read(&s, 0, 0, 8), Err(Errno::EIO));
            s.k.set_fail_io(s.orig, false);
            assert_eq!(cow(&s, 0, 8), (Ok(()), Ok(())));
            assert_eq!(image_read(&s, 0, 0, 8), Ok(origs(0..8)));
            let warns = s.k.warns();
            let buffers = |s: &Setup| {
                s.k.live_allocs()
                    .iter()
                    .filter(|(site, _)| *site == "diff_buffer")
                    .count()
            };
            let live = buffers(&s);
            (warns, live)
        };
        let (warns, live) = lost_after_cow(&[]);
        assert!(warns.is_empty(), "{warns:?}");
        assert_eq!(live, 1, "the chunk's one buffer");
        let (warns, live) = lost_after_cow(&["B-DA-5"]);
        assert_eq!(warns, vec!["chunk buffer has been lost"]);
        assert_eq!(live, 2, "the lost buffer leaked");
    }

    /// B-PARAM-1: the limits are C ints compared signed, so -1 (stored as
    /// its bits) means "always evict" and "always free" as in v2, not
    /// "never" as an unsigned compare would have it.
    #[test]
    fn minus_one_limits_always_evict_and_always_free() {
        let minus_one = u64::from(u32::MAX);
        let params = Params {
            chunk_maximum_in_cache: minus_one,
            free_diff_buffer_pool_size: minus_one,
            ..Params::default()
        };
        let s = setup_with(params, &["B-PARAM-1"], 64 * MIB);
        assert_eq!(cow(&s, 0, 2 * 512), (Ok(()), Ok(())));
        assert!(s.area.read_cache.borrow().is_empty(), "every chunk evicted");
        assert!(
            s.area.free_buffers.borrow().is_empty(),
            "every buffer freed"
        );
        for number in [0, 1] {
            assert_eq!(s.area.chunk(number).unwrap().state(), bits::STORE_READY);
        }
        let buffers =
            s.k.live_allocs()
                .iter()
                .filter(|(site, _)| *site == "diff_buffer")
                .count();
        assert_eq!(buffers, 0);
        teardown(s);
    }

    #[test]
    fn the_buffer_pool_holds_one_more_than_its_size() {
        let params = Params {
            chunk_maximum_in_cache: 0,
            free_diff_buffer_pool_size: 0,
            ..Params::default()
        };
        let s = setup_with(params, &[], 64 * MIB);
        assert_eq!(cow(&s, 0, 3 * 512), (Ok(()), Ok(())));
        assert_eq!(s.area.free_buffers.borrow().len(), 1);
        let buffers =
            s.k.live_allocs()
                .iter()
                .filter(|(site, _)| *site == "diff_buffer")
                .count();
        assert_eq!(buffers, 1, "the others were freed");
        teardown(s);
    }

    #[test]
    fn an_image_write_marks_dirty_and_leaves_the_original_alone() {
        let s = setup(&[]);
        let stamps = Stamps::from_slice(&[77, 78]);
        let written = run(&s.k, s.area.image_io(0, 5, 2, Some(&stamps)));
        assert_eq!(written, Ok(stamps));
        let chunk = s.area.chunk(0).unwrap();
        assert_eq!(chunk.state(), bits::BUFFER_READY | bits::DIRTY);
        assert_eq!(s.area.write_cache.borrow().len(), 1);
        assert!(s.area.read_cache.borrow().is_empty());
        assert_eq!(s.k.peek(s.orig, 4, 4), origs(4..8), "original untouched");
        assert_eq!(s.storage.counters().filled, 0, "no storage before eviction");
        assert_eq!(image_read(&s, 0, 4, 4), Ok(vec![orig(4), 77, 78, orig(7)]));
        // A write to the original no longer copies a DIRTY chunk.
        s.k.clear_bios();
        assert_eq!(cow(&s, 0, 8), (Ok(()), Ok(())));
        assert!(s.k.bios().is_empty());
        assert_eq!(chunk.state(), bits::BUFFER_READY | bits::DIRTY);
        teardown(s);
    }

    #[test]
    fn a_dirty_chunk_is_stored_by_eviction_and_read_back() {
        let params = Params {
            chunk_maximum_in_cache: 0,
            ..Params::default()
        };
        let s = setup_with(params, &[], 64 * MIB);
        run(&s.k, async {
            let stamps = Stamps::from_slice(&[77, 78]);
            s.area.image_io(0, 5, 2, Some(&stamps)).await.unwrap();
            s.k.settle().await;
        });
        let chunk = s.area.chunk(0).unwrap();
        assert_eq!(
            chunk.state(),
            bits::STORE_READY,
            "DIRTY cleared, buffer released"
        );
        let region = chunk.region.get().unwrap();
        assert_eq!(
            s.k.peek(s.store, region.sector + 4, 4),
            vec![orig(4), 77, 78, orig(7)]
        );
        assert_eq!(image_read(&s, 0, 5, 2), Ok(vec![77, 78]));
        assert_eq!(s.k.peek(s.orig, 5, 2), origs(5..7));
        teardown(s);
    }

    #[test]
    fn copy_of_a_clean_buffered_chunk_stores_the_buffer_without_a_read() {
        let s = setup(&[]);
        assert_eq!(image_read(&s, 0, 0, 8), Ok(origs(0..8)));
        assert_eq!(s.area.chunk(0).unwrap().state(), bits::BUFFER_READY);
        s.k.clear_bios();
        assert_eq!(cow(&s, 0, 8), (Ok(()), Ok(())));
        let ios: Vec<_> = s.k.bios().iter().map(|b| (b.dev, b.op)).collect();
        assert_eq!(ios, vec![(s.store, BioOp::Write)]);
        let chunk = s.area.chunk(0).unwrap();
        assert_eq!(chunk.state(), bits::BUFFER_READY | bits::STORE_READY);
        teardown(s);
    }

    #[test]
    fn nowait_allocation_failure_is_only_eagain() {
        let s = setup(&[]);
        s.k.fail_site("diff_buffer");
        let copied = run(&s.k, s.area.copy(0, 8, true, false));
        assert_eq!(copied, Err(Errno::EAGAIN));
        let chunk = s.area.chunk(0).unwrap();
        assert_eq!(chunk.state(), 0, "the chunk is left as it was");
        assert!(!chunk.lock.is_locked());
        assert!(!s.area.is_corrupted());
        assert_eq!(events(&s).len(), 1, "only the creation event");
        // A retry once memory is back succeeds.
        s.k.unfail_site("diff_buffer");
        assert_eq!(cow(&s, 0, 8), (Ok(()), Ok(())));
        assert_eq!(chunk.state(), bits::BUFFER_READY | bits::STORE_READY);
        teardown(s);
    }

    #[test]
    fn quirk_da_3_nowait_allocation_failure_corrupts_the_snapshot() {
        let s = setup(&["B-DA-3"]);
        s.k.fail_site("diff_buffer");
        let copied = run(&s.k, s.area.copy(0, 8, true, false));
        assert_eq!(copied, Err(Errno::EAGAIN));
        assert_eq!(s.area.chunk(0).unwrap().state(), bits::FAILED);
        assert!(s.area.is_corrupted());
        let events = events(&s);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].code, EVENT_CORRUPTED);
        assert_eq!(events[1].data, corrupted_payload(s.orig, Errno::EAGAIN));
    }

    #[test]
    fn nowait_on_a_busy_chunk_is_eagain_without_failure() {
        let s = setup(&["B-DA-3"]);
        let chunk = s.area.chunk(0).unwrap();
        assert!(chunk.lock.down_trylock(&*s.k));
        assert_eq!(
            run(&s.k, s.area.copy(0, 8, true, false)),
            Err(Errno::EAGAIN)
        );
        assert_eq!(
            run(&s.k, s.area.wait(0, 8, true, false)),
            Err(Errno::EAGAIN)
        );
        chunk.lock.up(&*s.k);
        assert_eq!(chunk.state(), 0);
        assert!(!s.area.is_corrupted());
    }

    #[test]
    fn blocking_allocation_failure_fails_the_chunk_with_enomem() {
        let s = setup(&[]);
        s.k.fail_site("diff_buffer");
        assert_eq!(
            run(&s.k, s.area.copy(0, 8, false, false)),
            Err(Errno::ENOMEM)
        );
        assert_eq!(s.area.chunk(0).unwrap().state(), bits::FAILED);
        assert!(s.area.is_corrupted());
        assert_eq!(events(&s)[1].data, corrupted_payload(s.orig, Errno::ENOMEM));
        // The image reports the failed chunk.
        assert_eq!(image_read(&s, 0, 0, 8), Err(Errno::EIO));
    }

    #[test]
    fn storage_overflow_fails_the_chunk_with_enospc_once() {
        // Room for one chunk only.
        let s = setup_with(Params::default(), &[], 512);
        assert_eq!(cow(&s, 0, 8), (Ok(()), Ok(())));
        // The region is allocated by the load completion: copy succeeds,
        // wait sees the FAILED chunk.
        assert_eq!(cow(&s, 512, 8), (Ok(()), Err(Errno::EFAULT)));
        let chunk = s.area.chunk(1).unwrap();
        assert!(chunk.has(bits::FAILED));
        assert!(!chunk.has(bits::BUFFER_READY));
        assert!(chunk.region.get().is_none());
        assert!(s.storage.is_overflow());
        assert!(s.area.is_corrupted());
        assert_eq!(cow(&s, 1024, 8), (Ok(()), Err(Errno::EFAULT)));
        let events = events(&s);
        assert_eq!(events.len(), 2, "one corrupted event per area");
        assert_eq!(events[1].data, corrupted_payload(s.orig, Errno::ENOSPC));
        // The chunk stored before the overflow still reads correctly.
        s.k.poke(s.orig, 0, &[5; 8]);
        assert_eq!(image_read(&s, 0, 0, 8), Ok(origs(0..8)));
        teardown(s);
    }

    #[test]
    fn a_failed_cow_read_fails_the_chunk_with_eio() {
        let s = setup(&[]);
        s.k.set_fail_io(s.orig, true);
        assert_eq!(cow(&s, 0, 8), (Ok(()), Err(Errno::EFAULT)));
        assert!(s.area.chunk(0).unwrap().has(bits::FAILED));
        assert_eq!(events(&s)[1].data, corrupted_payload(s.orig, Errno::EIO));
        s.k.set_fail_io(s.orig, false);
        teardown(s);
    }

    #[test]
    fn an_unaligned_storage_range_corrupts_with_einval_on_first_store() {
        // Only B-DS-1 lets such a range in through APPEND; the area itself
        // trusts the storage.
        let k = TestKernel::new();
        let (orig_dev, store) = (dev(0), dev(16));
        k.add_device(orig_dev, 64 * MIB);
        k.add_device(store, 64 * MIB);
        let m = load(&k, Params::default(), quirks(&["B-DS-1"]));
        let storage = run(&k, DiffStorage::new(&m)).unwrap();
        storage.append_begin(store).unwrap();
        storage.append_range(store, 4, 4096);
        storage.append_end();
        let area = run(&k, DiffArea::new(&m, orig_dev, &storage)).unwrap();
        let s = Setup {
            k,
            storage,
            area,
            orig: orig_dev,
            store,
        };
        assert_eq!(cow(&s, 0, 8), (Ok(()), Err(Errno::EFAULT)));
        assert_eq!(events(&s)[1].data, corrupted_payload(s.orig, Errno::EINVAL));
        teardown(s);
    }

    #[test]
    fn a_storage_range_past_the_device_corrupts_with_eio() {
        let s = setup_with(Params::default(), &[], 64 * MIB);
        s.storage.append_range(s.store, 64 * MIB, 4096);
        // Use up the first range so the next region lands past the end.
        for _ in 0..(64 * MIB / 512) {
            let region = run(&s.k, s.storage.new_region(512)).unwrap();
            s.storage.free_region(region);
        }
        assert_eq!(cow(&s, 0, 8), (Ok(()), Err(Errno::EFAULT)));
        assert_eq!(events(&s)[1].data, corrupted_payload(s.orig, Errno::EIO));
        teardown(s);
    }

    #[test]
    fn copy_past_the_end_corrupts_with_einval() {
        let s = setup(&[]);
        let copied = run(&s.k, s.area.copy(64 * MIB, 8, false, false));
        assert_eq!(copied, Err(Errno::EINVAL));
        assert!(s.area.is_corrupted());
        assert_eq!(events(&s)[1].data, corrupted_payload(s.orig, Errno::EINVAL));
        teardown(s);
    }

    #[test]
    fn empty_storage_is_efault_and_leaks_nothing() {
        let k = TestKernel::new();
        k.add_device(dev(0), 64 * MIB);
        let m = load(&k, Params::default(), Quirks::default());
        let storage = run(&k, DiffStorage::new(&m)).unwrap();
        assert_eq!(
            run(&k, DiffArea::new(&m, dev(0), &storage)).err(),
            Some(Errno::EFAULT)
        );
        assert!(k.open_bdevs().is_empty());
        assert_eq!(
            run(&k, DiffArea::new(&m, dev(5), &storage)).err(),
            Some(Errno::ENXIO)
        );
        storage.free();
        assert!(k.live_allocs().is_empty(), "{:?}", k.live_allocs());
    }

    #[test]
    fn quirk_da_1_empty_storage_leaks_the_device_and_the_struct() {
        let k = TestKernel::new();
        k.add_device(dev(0), 64 * MIB);
        let m = load(&k, Params::default(), quirks(&["B-DA-1"]));
        let storage = run(&k, DiffStorage::new(&m)).unwrap();
        assert_eq!(
            run(&k, DiffArea::new(&m, dev(0), &storage)).err(),
            Some(Errno::EFAULT)
        );
        assert_eq!(k.open_bdevs(), vec![dev(0)]);
        storage.free();
        assert_eq!(k.live_allocs().len(), 1);
        assert_eq!(k.live_allocs()[0].0, "diff_area");
    }

    #[test]
    fn references_free_the_area_with_the_last_put() {
        let s = setup(&[]);
        s.area.get();
        run(&s.k, s.area.put());
        assert_eq!(s.k.open_bdevs(), vec![s.store, s.orig], "still alive");
        run(&s.k, s.area.put());
        assert_eq!(s.k.open_bdevs(), vec![s.store]);
        run(&s.k, s.area.put());
        assert_eq!(
            s.k.warns().len(),
            1,
            "a put too many is a refcount underflow"
        );
    }
}
