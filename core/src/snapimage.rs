//! The snapshot image: a block device per original device (v2
//! `snapimage.c`, spec 7). Bios queue in FIFO order and one kthread per
//! image serves them, one at a time, through the diff_area's chunks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use crate::cbt_map::CbtMap;
use crate::diff_area::DiffArea;
use crate::kernel::{
    completion, Bio, BioOp, BioResult, Completer, Completion, DevT, Errno, GenDisk, Stamp,
    TaskKind, SECTOR_SHIFT,
};
use crate::module::Module;

/// How long the worker lets pending COW IO go first (HZ/10).
const THROTTLE_NS: u64 = 100_000_000;
/// One step of that wait, and the v2 idle poll period (HZ/100).
const POLL_NS: u64 = 10_000_000;
const THROTTLE_STEP_NS: u64 = 1_000_000;

pub struct SnapImage {
    module: Rc<Module>,
    pub image_dev_id: DevT,
    pub capacity: u64,
    diff_area: Rc<DiffArea>,
    /// Held for the image's life; the CBT is shared with the tracker.
    _cbt_map: Rc<CbtMap>,
    queue: RefCell<VecDeque<(Bio, Completer<BioResult>)>>,
    is_ready: Cell<bool>,
    should_stop: Cell<bool>,
    wake: RefCell<Option<Completer<()>>>,
    stopped: RefCell<Option<Completion<()>>>,
}

impl SnapImage {
    /// `snapimage_create`, at the end of TAKE.
    pub async fn create(
        module: &Rc<Module>,
        diff_area: &Rc<DiffArea>,
        cbt_map: &Rc<CbtMap>,
    ) -> Result<Rc<SnapImage>, Errno> {
        let k = module.k();
        let minor = module.image_minor_alloc()?;
        let image_dev_id = DevT::new(k.image_major(), minor);
        diff_area.get();
        let image = Rc::new(SnapImage {
            module: module.clone(),
            image_dev_id,
            capacity: cbt_map.device_capacity(),
            diff_area: diff_area.clone(),
            _cbt_map: cbt_map.clone(),
            queue: RefCell::new(VecDeque::new()),
            is_ready: Cell::new(true),
            should_stop: Cell::new(false),
            wake: RefCell::new(None),
            stopped: RefCell::new(None),
        });
        image.start_worker();
        let name = format!("blksnap-image{minor}");
        if let Err(e) = k.add_disk(image_dev_id, name, image.capacity, image.clone()) {
            image.should_stop.set(true);
            image.kick();
            module.image_minor_free(minor);
            // v2 keeps the references it took before add_disk (B-IMG-2).
            if !module.quirks.img_2 {
                diff_area.put().await;
            }
            return Err(e);
        }
        Ok(image)
    }

    fn start_worker(self: &Rc<Self>) {
        let (stopped, done) = completion();
        *self.stopped.borrow_mut() = Some(stopped);
        let image = self.clone();
        let name = format!("blksnap-image{}", self.image_dev_id.minor());
        self.module.k().spawn(
            TaskKind::Kthread { noio: true },
            name,
            Box::pin(async move {
                image.worker().await;
                done.complete(());
            }),
        );
    }

    /// Wake the worker if it sleeps waiting for work.
    fn kick(&self) {
        if let Some(wake) = self.wake.borrow_mut().take() {
            wake.complete(());
        }
    }

    /// The kthread: serve bios in order; drain the queue before stopping.
    async fn worker(&self) {
        let k = self.module.k();
        loop {
            let next = self.queue.borrow_mut().pop_front();
            if let Some((bio, done)) = next {
                self.throttle().await;
                let result = self.process(&bio).await;
                done.complete(result);
                continue;
            }
            if self.should_stop.get() {
                return;
            }
            if self.module.quirks.img_3 {
                k.sleep(POLL_NS).await;
            } else {
                let (woken, wake) = completion();
                *self.wake.borrow_mut() = Some(wake);
                woken.await;
            }
        }
    }

    /// Let COW IO in flight go first, for at most 100 ms.
    async fn throttle(&self) {
        let k = self.module.k();
        let deadline = k.now_ns() + THROTTLE_NS;
        while self.diff_area.pending_io() > 0 && k.now_ns() < deadline {
            k.sleep(THROTTLE_STEP_NS).await;
        }
    }

    /// `snapimage_process_bio`: chunk by chunk through the diff_area.
    async fn process(&self, bio: &Bio) -> BioResult {
        match bio.op {
            BioOp::Flush if bio.sectors == 0 => return Ok(Vec::new()),
            BioOp::Read | BioOp::Write => {}
            _ => return Err(Errno::EIO),
        }
        let swallow_errors = self.module.quirks.img_1;
        if !swallow_errors && self.diff_area.is_corrupted() {
            return Err(Errno::EIO);
        }
        let mut data: Vec<Stamp> = Vec::with_capacity(bio.sectors as usize);
        let chunk_sectors = self.diff_area.chunk_sectors();
        let mut sector = bio.sector;
        let end = bio.sector + bio.sectors;
        while sector < end {
            let number = sector / chunk_sectors;
            let offset = sector % chunk_sectors;
            let count = (chunk_sectors - offset).min(end - sector);
            let done = (sector - bio.sector) as usize;
            let write = (bio.op == BioOp::Write).then(|| &bio.data[done..done + count as usize]);
            match self.diff_area.image_io(number, offset, count, write).await {
                Ok(mut stamps) => data.append(&mut stamps),
                // v2 stops at the first failed segment and ends the bio with
                // status OK (B-IMG-1): the rest of the reader's buffer keeps
                // whatever it held, modelled as zeros.
                Err(_) if swallow_errors => {
                    data.resize(bio.sectors as usize, 0);
                    break;
                }
                Err(e) => return Err(e),
            }
            sector += count;
        }
        if bio.op == BioOp::Write {
            data.clear();
        }
        Ok(data)
    }

    /// `snapimage_free`: refuse new IO, drain and stop the worker, delete the
    /// disk, drop the diff_area reference and the minor.
    pub async fn free(&self) {
        let k = self.module.k();
        self.is_ready.set(false);
        self.should_stop.set(true);
        self.kick();
        let stopped = self.stopped.borrow_mut().take();
        if let Some(stopped) = stopped {
            stopped.await;
        }
        k.del_gendisk(self.image_dev_id);
        self.diff_area.put().await;
        self.module.image_minor_free(self.image_dev_id.minor());
    }

    /// The device's size in bytes, for the record.
    pub fn size_bytes(&self) -> u64 {
        self.capacity << SECTOR_SHIFT
    }
}

impl GenDisk for SnapImage {
    fn submit_bio(&self, bio: Bio, done: Completer<BioResult>) {
        if !self.is_ready.get() {
            done.complete(Err(Errno::EIO));
            return;
        }
        self.queue.borrow_mut().push_back((bio, done));
        self.kick();
    }
}
