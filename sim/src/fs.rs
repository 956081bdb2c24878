//! A filesystem model on a device: a page cache of dirty sectors, written
//! back by a flusher, synced on freeze; writers wait while it is frozen.
//!
//! freeze/thaw nest per device (`bd_fsfreeze_count`). Adversarial variant:
//! a filesystem that ignores the bdev freeze (no sync, writers not held).

use std::collections::BTreeMap;
use std::rc::Rc;

use blksnap_core::kernel::{completion, Bio, Completer, DevT, Errno, Stamp};

use crate::block;
use crate::kernel::Sim;
use crate::trace::TraceEvent;

/// Dirty data is written back this long after it was first dirtied.
const WRITEBACK_DELAY_NS: u64 = 5_000_000;
/// Largest bio the flusher builds, in sectors.
const WRITEBACK_MAX_SECTORS: u64 = 256;

#[derive(Default)]
pub struct FsModel {
    dirty: BTreeMap<u64, Stamp>,
    frozen: bool,
    flush_scheduled: bool,
    thaw_waiters: Vec<Completer<()>>,
    /// Adversarial: the filesystem does not implement freeze.
    pub ignores_freeze: bool,
}

impl FsModel {
    pub fn new(ignores_freeze: bool) -> FsModel {
        FsModel {
            ignores_freeze,
            ..FsModel::default()
        }
    }

    pub fn dirty_sectors(&self) -> usize {
        self.dirty.len()
    }
}

/// `freeze_bdev`: hold new writers, write the dirty data back.
pub async fn freeze_bdev(sim: &Rc<Sim>, dev: DevT) -> Result<(), Errno> {
    let depth = {
        let mut devices = sim.devices.borrow_mut();
        let device = devices.get_mut(&dev).ok_or(Errno::ENXIO)?;
        device.freeze_count += 1;
        device.freeze_count
    };
    sim.record(TraceEvent::Freeze { dev: dev.0, depth });
    if depth > 1 {
        return Ok(());
    }
    let honours = sim
        .fs
        .borrow()
        .get(&dev)
        .is_some_and(|fs| !fs.ignores_freeze);
    if honours {
        if let Some(fs) = sim.fs.borrow_mut().get_mut(&dev) {
            fs.frozen = true;
        }
        writeback(sim, dev).await;
    }
    Ok(())
}

/// `thaw_bdev`: -EINVAL if not frozen; the last thaw lets writers go.
pub fn thaw_bdev(sim: &Rc<Sim>, dev: DevT) -> Result<(), Errno> {
    let depth = {
        let mut devices = sim.devices.borrow_mut();
        let device = devices.get_mut(&dev).ok_or(Errno::ENXIO)?;
        if device.freeze_count == 0 {
            return Err(Errno::EINVAL);
        }
        device.freeze_count -= 1;
        device.freeze_count
    };
    sim.record(TraceEvent::Thaw { dev: dev.0, depth });
    if depth == 0 {
        let waiters = match sim.fs.borrow_mut().get_mut(&dev) {
            Some(fs) => {
                fs.frozen = false;
                std::mem::take(&mut fs.thaw_waiters)
            }
            None => Vec::new(),
        };
        for waiter in waiters {
            waiter.complete(());
        }
    }
    Ok(())
}

/// A write through the filesystem: into the page cache once not frozen.
/// A filesystem never writes past its device: that is -EIO at once.
pub async fn fs_write(sim: &Rc<Sim>, dev: DevT, sector: u64, data: &[Stamp]) -> Result<(), Errno> {
    let capacity = sim.devices.borrow().get(&dev).map_or(0, |d| d.capacity);
    if sector
        .checked_add(data.len() as u64)
        .is_none_or(|end| end > capacity)
    {
        return Err(Errno::EIO);
    }
    loop {
        let wait = {
            let mut fs = sim.fs.borrow_mut();
            let Some(fs) = fs.get_mut(&dev) else {
                return Ok(());
            };
            if !fs.frozen {
                for (i, stamp) in data.iter().enumerate() {
                    fs.dirty.insert(sector + i as u64, *stamp);
                }
                None
            } else {
                let (wait, waiter) = completion();
                fs.thaw_waiters.push(waiter);
                Some(wait)
            }
        };
        match wait {
            Some(wait) => wait.await,
            None => break,
        }
    }
    schedule_flush(sim, dev);
    Ok(())
}

/// A read through the filesystem: the page cache over the device.
pub async fn fs_read(
    sim: &Rc<Sim>,
    dev: DevT,
    sector: u64,
    count: u64,
) -> Result<Vec<Stamp>, Errno> {
    let mut data = block::user_bio(sim, Bio::read(dev, sector, count)).await?;
    if let Some(fs) = sim.fs.borrow().get(&dev) {
        for (s, stamp) in fs.dirty.range(sector..sector + count) {
            data[(s - sector) as usize] = *stamp;
        }
    }
    Ok(data)
}

fn schedule_flush(sim: &Rc<Sim>, dev: DevT) {
    let scheduled = match sim.fs.borrow_mut().get_mut(&dev) {
        Some(fs) => std::mem::replace(&mut fs.flush_scheduled, true),
        None => true,
    };
    if scheduled {
        return;
    }
    let flusher = sim.clone();
    let at = sim.now() + WRITEBACK_DELAY_NS;
    sim.at(
        at,
        Box::new(move |sim| {
            let name = format!("flush-{dev}");
            sim.spawn_background(
                name,
                Box::pin(async move { writeback(&flusher, dev).await }),
            );
        }),
    );
}

/// Write every dirty sector back, in runs of contiguous sectors.
pub async fn writeback(sim: &Rc<Sim>, dev: DevT) {
    let dirty = match sim.fs.borrow_mut().get_mut(&dev) {
        Some(fs) => {
            fs.flush_scheduled = false;
            std::mem::take(&mut fs.dirty)
        }
        None => return,
    };
    let mut pending = Vec::new();
    for (sector, data) in runs(&dirty) {
        let sim = sim.clone();
        let (done, completer) = completion();
        sim.clone().spawn_background(
            format!("writeback-{dev}"),
            Box::pin(async move {
                let result = block::user_bio(&sim, Bio::write(dev, sector, data)).await;
                completer.complete(result);
            }),
        );
        pending.push(done);
    }
    for done in pending {
        if let Err(e) = done.await {
            sim.fail("fs", format!("writeback to {dev} failed: {e}"));
        }
    }
}

/// Contiguous runs of a sector map, each at most the flusher's bio size.
fn runs(dirty: &BTreeMap<u64, Stamp>) -> Vec<(u64, Vec<Stamp>)> {
    let mut out: Vec<(u64, Vec<Stamp>)> = Vec::new();
    for (&sector, &stamp) in dirty {
        match out.last_mut() {
            Some((start, data))
                if *start + data.len() as u64 == sector
                    && (data.len() as u64) < WRITEBACK_MAX_SECTORS =>
            {
                data.push(stamp)
            }
            _ => out.push((sector, vec![stamp])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_on_gaps_and_size() {
        let mut m = BTreeMap::new();
        for s in 0..300 {
            m.insert(s, s);
        }
        m.insert(400, 1);
        let r = runs(&m);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].1.len(), 256);
        assert_eq!(r[1], (256, (256..300).collect()));
        assert_eq!(r[2], (400, vec![1]));
    }
}
