//! The copy-on-write area of one device for one snapshot (v2 `diff_area.c`,
//! spec 5). It owns the chunks, their caches, the buffer pool, and the
//! eviction work; chunks move through the state machine of `chunk`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use crate::chunk::{bits, Chunk};
use crate::diff_buffer::DiffBuffer;
use crate::diff_io;
use crate::diff_storage::DiffStorage;
use crate::event_queue::EVENT_CORRUPTED;
use crate::kernel::{
    preempt, AllocId, BdevHandle, BioResult, DevT, Errno, Gfp, NoioScope, Stamp, TaskKind,
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
    chunks: RefCell<BTreeMap<u64, Rc<Chunk>>>,
    read_cache: RefCell<VecDeque<Rc<Chunk>>>,
    write_cache: RefCell<VecDeque<Rc<Chunk>>>,
    eviction_queued: Cell<bool>,
    free_buffers: RefCell<Vec<DiffBuffer>>,
    corrupt_flag: Cell<u64>,
    pending_io: Cell<u64>,
    refs: Cell<u64>,
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

impl DiffArea {
    /// `diff_area_new`, at TAKE. The returned area holds one reference,
    /// owned by the tracker.
    pub fn new(
        module: &Rc<Module>,
        dev: DevT,
        storage: &Rc<DiffStorage>,
    ) -> Result<Rc<DiffArea>, Errno> {
        let k = module.k();
        let orig = k.bdev_open(dev)?;
        let capacity = k.bdev_nr_sectors(dev);
        let (chunk_shift, chunk_count) = chunk_geometry(module, capacity, k.bdev_io_min(dev));
        let bytes = 512 + chunk_count * CHUNK_STRUCT_BYTES;
        let struct_alloc = match k.kmalloc("diff_area", bytes, Gfp::Kernel) {
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
            chunks: RefCell::new(BTreeMap::new()),
            read_cache: RefCell::new(VecDeque::new()),
            write_cache: RefCell::new(VecDeque::new()),
            eviction_queued: Cell::new(false),
            free_buffers: RefCell::new(Vec::new()),
            corrupt_flag: Cell::new(0),
            pending_io: Cell::new(0),
            refs: Cell::new(1),
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
    fn chunk(&self, number: u64) -> Option<Rc<Chunk>> {
        if number >= self.chunk_count {
            return None;
        }
        let mut chunks = self.chunks.borrow_mut();
        let chunk = chunks.entry(number).or_insert_with(|| {
            let sectors = self.chunk_sectors();
            let start = number * sectors;
            let count = sectors.min(self.capacity - start);
            Rc::new(Chunk::new(self.module.k(), number, count))
        });
        Some(chunk.clone())
    }

    /// The chunk numbers a sector range touches, in ascending order.
    fn chunk_numbers(&self, sector: u64, count: u64) -> std::ops::RangeInclusive<u64> {
        let shift = self.chunk_shift - SECTOR_SHIFT;
        (sector >> shift)..=((sector + count.max(1) - 1) >> shift)
    }

    // --- references ----------------------------------------------------------

    pub fn get(&self) {
        assert!(self.refs.get() > 0, "diff_area_get after the last put");
        self.refs.set(self.refs.get() + 1);
    }

    /// Drop a reference; the last one frees the area (which may sleep).
    pub async fn put(self: &Rc<Self>) {
        let refs = self.refs.get();
        if refs == 0 {
            self.module
                .k()
                .warn("refcount_t: underflow; use-after-free (diff_area)");
            return;
        }
        self.refs.set(refs - 1);
        if refs == 1 {
            self.free().await;
        }
    }

    // --- corruption ------------------------------------------------------------

    /// `diff_area_set_corrupted`: only the first call raises the event.
    pub fn set_corrupted(&self, err: Errno) {
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
        self.storage.event_queue.generate(EVENT_CORRUPTED, payload);
    }

    // --- buffers ----------------------------------------------------------------

    fn take_buffer(&self, nowait: bool) -> Result<DiffBuffer, Errno> {
        if let Some(buffer) = self.free_buffers.borrow_mut().pop() {
            return Ok(buffer);
        }
        DiffBuffer::new(self.module.k(), self.chunk_sectors(), nowait)
    }

    /// Back to the pool, unless the pool already holds more than its size.
    fn give_buffer(&self, buffer: DiffBuffer) {
        let limit = self.module.params().free_diff_buffer_pool_size;
        let mut pool = self.free_buffers.borrow_mut();
        if pool.len() as u64 > limit {
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
            cache.len() as u64
        };
        chunk.lock.up(self.module.k());
        if len > self.module.params().chunk_maximum_in_cache {
            self.maybe_queue_eviction();
        }
    }

    /// Caches over their limit, read cache first.
    fn over_limit(&self) -> Vec<Cache> {
        let max = self.module.params().chunk_maximum_in_cache as usize;
        let mut over = Vec::new();
        if self.read_cache.borrow().len() > max {
            over.push(Cache::Read);
        }
        if self.write_cache.borrow().len() > max {
            over.push(Cache::Write);
        }
        over
    }

    /// Eviction stops for good on a corrupted area in v2, so image IO grows
    /// the caches without bound (B-DA-8); the fix keeps trimming them.
    fn eviction_stopped(&self) -> bool {
        self.is_corrupted() && self.module.quirks.da_8
    }

    fn maybe_queue_eviction(self: &Rc<Self>) {
        if self.eviction_stopped() || self.eviction_queued.get() || self.over_limit().is_empty() {
            return;
        }
        // Like v2's work item, it holds no reference: free flushes it.
        self.eviction_queued.set(true);
        let area = self.clone();
        let name = format!("blksnap_cache_release {}", self.orig_dev);
        self.module.k().spawn(
            TaskKind::Work,
            name,
            Box::pin(async move {
                area.evict();
                area.eviction_queued.set(false);
            }),
        );
    }

    /// The eviction work: trim each cache back to its limit.
    fn evict(self: &Rc<Self>) {
        while !self.eviction_stopped() && !self.freed.get() {
            let Some(chunk) = self.pick_for_eviction() else {
                return;
            };
            if !chunk.has(bits::BUFFER_READY) {
                self.module.k().warn("cached chunk without a ready buffer");
                chunk.lock.up(self.module.k());
            } else if chunk.has(bits::DIRTY) {
                if let Err(e) = self.schedule_storing(&chunk, false) {
                    self.store_failed(&chunk, Some(e));
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
        self.over_limit().into_iter().find_map(|which| {
            let mut cache = self.cache(which).borrow_mut();
            let index = cache.iter().position(|c| c.lock.down_trylock(k))?;
            cache.remove(index)
        })
    }

    // --- the state machine of spec 5.3 -------------------------------------------

    /// `chunk_store_failed`: the chunk is lost for good; its storage space
    /// is not given back. `err` None means "no new event" (v2 passes 0).
    fn store_failed(&self, chunk: &Rc<Chunk>, err: Option<Errno>) {
        chunk.set(bits::FAILED);
        self.release_buffer(chunk);
        chunk.region.set(None);
        chunk.lock.up(self.module.k());
        if let Some(err) = err {
            self.set_corrupted(err);
        }
    }

    /// Write the chunk's buffer to its region (allocated on first store).
    /// The chunk lock stays held until the store completes.
    fn schedule_storing(self: &Rc<Self>, chunk: &Rc<Chunk>, nowait: bool) -> Result<(), Errno> {
        let region = match chunk.region.get() {
            Some(region) => region,
            None => {
                let region = self.storage.new_region(self.chunk_sectors())?;
                chunk.region.set(Some(region));
                region
            }
        };
        let data = match chunk.buffer.borrow().as_ref() {
            Some(buffer) => buffer.data.clone(),
            None => return Err(Errno::EFAULT),
        };
        let io = diff_io::write(&self.module, region.dev, region.sector, data, nowait)?;
        chunk.set(bits::STORING);
        self.spawn_notify("chunk_notify_store", chunk, io, Self::notify_store);
        Ok(())
    }

    /// Run `notify` in a work item once `io` ends, counting it as pending.
    /// Like v2, IO in flight holds no reference: `free` waits for it.
    fn spawn_notify(
        self: &Rc<Self>,
        name: &str,
        chunk: &Rc<Chunk>,
        io: diff_io::DiffIo,
        notify: fn(&Rc<DiffArea>, &Rc<Chunk>, BioResult),
    ) {
        self.pending_io.set(self.pending_io.get() + 1);
        let (area, chunk) = (self.clone(), chunk.clone());
        let name = format!("{name} {}#{}", self.orig_dev, chunk.number);
        self.module.k().spawn(
            TaskKind::Work,
            name,
            Box::pin(async move {
                let result = io.await;
                if area.freed.get() {
                    panic!("BUG: use-after-free: IO completed on a freed diff_area (B-DA-7)");
                }
                notify(&area, &chunk, result);
                // The worker can be preempted once the chunk is unlocked;
                // a free that stopped waiting may run to the end meanwhile.
                preempt().await;
                if area.freed.get() {
                    panic!("BUG: use-after-free: pending_io_count of a freed diff_area (B-DA-7)");
                }
                area.pending_io.set(area.pending_io.get() - 1);
            }),
        );
    }

    /// Completion of the COW read of the original.
    fn notify_load(self: &Rc<Self>, chunk: &Rc<Chunk>, result: BioResult) {
        let data = match result {
            Ok(data) => data,
            Err(_) => return self.store_failed(chunk, Some(Errno::EIO)),
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
            buffer.data[..data.len()].copy_from_slice(&data);
        }
        chunk.clear(bits::LOADING);
        chunk.set(bits::BUFFER_READY);
        let _noio = NoioScope::enter(self.module.k());
        if let Err(e) = self.schedule_storing(chunk, false) {
            self.store_failed(chunk, Some(e));
        }
    }

    /// Completion of the write to the diff storage.
    fn notify_store(self: &Rc<Self>, chunk: &Rc<Chunk>, result: BioResult) {
        if result.is_err() {
            return self.store_failed(chunk, Some(Errno::EIO));
        }
        if chunk.has(bits::FAILED) {
            return self.store_failed(chunk, None);
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
    fn schedule_loading(self: &Rc<Self>, chunk: &Rc<Chunk>, nowait: bool) -> Result<(), Errno> {
        let buffer = self.take_buffer(nowait)?;
        *chunk.buffer.borrow_mut() = Some(buffer);
        let start = chunk.number * self.chunk_sectors();
        let io = match diff_io::read(
            &self.module,
            self.orig_dev,
            start,
            chunk.sector_count,
            nowait,
        ) {
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
        self.spawn_notify("chunk_notify_load", chunk, io, Self::notify_load);
        Ok(())
    }

    /// `diff_area_copy`: start the COW of every chunk a write touches, in
    /// ascending order. Bios go to the writer's `bio_list`; the caller
    /// submits them once the whole range is scheduled.
    pub async fn copy(
        self: &Rc<Self>,
        sector: u64,
        count: u64,
        nowait: bool,
        killable: bool,
    ) -> Result<(), Errno> {
        for number in self.chunk_numbers(sector, count) {
            let Some(chunk) = self.chunk(number) else {
                self.set_corrupted(Errno::EINVAL);
                return Err(Errno::EINVAL);
            };
            self.lock_chunk(&chunk, nowait, killable).await?;
            self.copy_chunk(&chunk, nowait)?;
        }
        Ok(())
    }

    async fn lock_chunk(&self, chunk: &Chunk, nowait: bool, killable: bool) -> Result<(), Errno> {
        let k = self.module.k();
        if nowait {
            return if chunk.lock.down_trylock(k) {
                Ok(())
            } else {
                Err(Errno::EAGAIN)
            };
        }
        if killable {
            return chunk.lock.down_killable(k).await;
        }
        chunk.lock.down(k).await;
        Ok(())
    }

    /// The COW decision for one locked chunk (spec 5.3, first block).
    fn copy_chunk(self: &Rc<Self>, chunk: &Rc<Chunk>, nowait: bool) -> Result<(), Errno> {
        let k = self.module.k();
        if chunk.has(bits::FAILED | bits::DIRTY | bits::STORE_READY) {
            chunk.lock.up(k);
            return Ok(());
        }
        if chunk.has(bits::LOADING | bits::STORING) {
            // IO in flight would hold the lock: a stale bit is a broken chunk.
            self.store_failed(chunk, Some(Errno::EFAULT));
            return Err(Errno::EFAULT);
        }
        let started = if chunk.has(bits::BUFFER_READY) {
            self.cache_remove(chunk);
            self.schedule_storing(chunk, nowait)
        } else {
            self.schedule_loading(chunk, nowait)
        };
        match started {
            Ok(()) => Ok(()),
            // "Would block" is not a broken chunk: leave it as it was and
            // let the writer retry. v2 fails the chunk and corrupts the
            // whole snapshot (B-DA-3).
            Err(Errno::EAGAIN) if !self.module.quirks.da_3 => {
                if chunk.has(bits::BUFFER_READY) {
                    self.cache_and_unlock(chunk);
                } else {
                    chunk.lock.up(k);
                }
                Err(Errno::EAGAIN)
            }
            Err(e) => {
                self.store_failed(chunk, Some(e));
                Err(e)
            }
        }
    }

    /// `diff_area_wait`: block until no chunk of the range is being copied.
    pub async fn wait(
        &self,
        sector: u64,
        count: u64,
        nowait: bool,
        killable: bool,
    ) -> Result<(), Errno> {
        let k = self.module.k();
        for number in self.chunk_numbers(sector, count) {
            let Some(chunk) = self.chunk(number) else {
                self.set_corrupted(Errno::EINVAL);
                return Err(Errno::EINVAL);
            };
            self.lock_chunk(&chunk, nowait, killable).await?;
            let state = chunk.state();
            chunk.lock.up(k);
            if state & bits::FAILED != 0 {
                return Err(Errno::EFAULT);
            }
            if state & (bits::BUFFER_READY | bits::DIRTY | bits::STORE_READY) == 0 {
                // Unreachable in v2 too (B-DA-6), where the lock would leak.
                k.warn("diff_area_wait: chunk in no ready state");
            }
        }
        Ok(())
    }

    // --- image IO ------------------------------------------------------------------

    /// Read or write the image view of one chunk, from `offset` sectors into
    /// it. Writes change the buffer only (never the original).
    pub async fn image_io(
        self: &Rc<Self>,
        number: u64,
        offset: u64,
        count: u64,
        write: Option<&[Stamp]>,
    ) -> Result<Vec<Stamp>, Errno> {
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
        let range = offset as usize..(offset + count) as usize;
        let data = {
            let mut buffer = chunk.buffer.borrow_mut();
            let buffer = buffer.as_mut().expect("BUFFER_READY has a buffer");
            if let Some(stamps) = write {
                buffer.data[range.clone()].copy_from_slice(stamps);
            }
            buffer.data[range].to_vec()
        };
        if write.is_some() {
            chunk.set(bits::DIRTY);
        }
        self.cache_and_unlock(&chunk);
        Ok(data)
    }

    /// Synchronous load for the image: from the storage region if the chunk
    /// was stored, else from the original (safe: a write to the original
    /// would have copied the chunk first, and we hold its lock).
    async fn load_for_image(self: &Rc<Self>, chunk: &Rc<Chunk>) -> Result<(), Errno> {
        if chunk.buffer.borrow().is_some() {
            // A buffer without BUFFER_READY: left by a failed load (B-DA-5).
            self.module.k().warn("chunk buffer has been lost");
            chunk.buffer.borrow_mut().take();
        }
        let buffer = self.take_buffer(false)?;
        let io = match chunk.region.get().filter(|_| chunk.has(bits::STORE_READY)) {
            Some(region) => {
                diff_io::read(&self.module, region.dev, region.sector, region.count, false)
            }
            None => {
                let start = chunk.number * self.chunk_sectors();
                diff_io::read(
                    &self.module,
                    self.orig_dev,
                    start,
                    chunk.sector_count,
                    false,
                )
            }
        };
        let loaded = match io {
            Ok(io) => io.await,
            Err(e) => Err(e),
        };
        let mut buffer = buffer;
        match loaded {
            Ok(data) => {
                let n = data.len().min(buffer.data.len());
                buffer.data[..n].copy_from_slice(&data[..n]);
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
                break;
            }
            k.sleep(1_000_000).await;
        }
        // Corrupted (no event): nothing queues eviction any more; then
        // flush the work that may be queued.
        self.corrupt_flag.set(self.corrupt_flag.get() + 1);
        while self.eviction_queued.get() {
            k.sleep(1_000_000).await;
        }
        let chunks: Vec<Rc<Chunk>> = self.chunks.borrow().values().cloned().collect();
        for chunk in chunks {
            chunk.lock.down(k).await;
            self.release_buffer(&chunk);
            chunk.region.set(None);
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
}
