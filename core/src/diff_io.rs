//! Chunk IO between a buffer and a device (v2 `diff_io.c`, spec 5.6).
//!
//! Every bio is flagged `BIO_FILTERED`, so the engine's own IO never enters
//! the filter. v2 sends one bio per chunk operation, which hits `BUG()` for
//! more than 256 pages (B-IO-1); the fix splits the range into bios of at
//! most 256 pages, as v3 does.

use std::rc::Rc;

use crate::kernel::{
    submit, Bio, BioOp, BioResult, Completion, DevT, Errno, Gfp, LocalBoxFuture, Stamp,
    PAGE_SECTORS,
};
use crate::module::Module;

/// The most pages one bio may carry in 6.1 (`BIO_MAX_VECS`).
pub const BIO_MAX_VECS: u64 = 256;

/// An IO in flight: await it for the data read (or the write's status).
pub type DiffIo = LocalBoxFuture<'static, BioResult>;

/// Start a read of `count` sectors at `sector`. `nowait` is a REQ_NOWAIT
/// writer's context: an allocation that would block fails with -EAGAIN.
pub fn read(
    module: &Rc<Module>,
    dev: DevT,
    sector: u64,
    count: u64,
    nowait: bool,
) -> Result<DiffIo, Errno> {
    start(module, BioOp::Read, dev, sector, count, Vec::new(), nowait)
}

/// Start a `REQ_SYNC|REQ_FUA` write of `data` at `sector`.
pub fn write(
    module: &Rc<Module>,
    dev: DevT,
    sector: u64,
    data: Vec<Stamp>,
    nowait: bool,
) -> Result<DiffIo, Errno> {
    let count = data.len() as u64;
    start(module, BioOp::Write, dev, sector, count, data, nowait)
}

fn start(
    module: &Rc<Module>,
    op: BioOp,
    dev: DevT,
    sector: u64,
    count: u64,
    mut data: Vec<Stamp>,
    nowait: bool,
) -> Result<DiffIo, Errno> {
    let k = module.k();
    // diff_io maps whole pages, so the range must start on a page.
    if !sector.is_multiple_of(PAGE_SECTORS) {
        return Err(Errno::EINVAL);
    }
    let pages = count.div_ceil(PAGE_SECTORS);
    if pages > BIO_MAX_VECS && module.quirks.io_1 {
        panic!("kernel BUG at block/bio.c: biovec_slab: {pages} vecs in one bio (B-IO-1)");
    }
    if module.bioset_destroyed.get() {
        // Module exit tore the bio set down before the snapshots (B-TRK-9).
        panic!("BUG: bio allocation from a destroyed bio_set (B-TRK-9)");
    }
    let (gfp, fail) = if nowait {
        (Gfp::NoioNowait, Errno::EAGAIN)
    } else {
        (Gfp::Noio, Errno::ENOMEM)
    };
    let alloc = k.kmalloc("diff_io", 64, gfp).map_err(|_| fail)?;
    k.kfree(alloc);
    let per_bio = BIO_MAX_VECS * PAGE_SECTORS;
    let mut parts: Vec<Completion<BioResult>> = Vec::new();
    let mut done = 0;
    while done < count {
        let n = per_bio.min(count - done);
        let mut bio = match op {
            BioOp::Read => Bio::read(dev, sector + done, n),
            _ => Bio::write(dev, sector + done, data.drain(..n as usize).collect()),
        };
        bio.flags.sync = true;
        bio.flags.fua = op.is_write();
        bio.flags.filtered = true;
        parts.push(submit(k, bio));
        done += n;
    }
    Ok(Box::pin(join(parts)))
}

/// The end of a split IO: all parts, any error maps to -EIO.
async fn join(parts: Vec<Completion<BioResult>>) -> BioResult {
    let mut data = Vec::new();
    let mut failed = false;
    for part in parts {
        match part.await {
            Ok(mut stamps) => data.append(&mut stamps),
            Err(_) => failed = true,
        }
    }
    if failed {
        Err(Errno::EIO)
    } else {
        Ok(data)
    }
}
