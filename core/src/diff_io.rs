//! Chunk IO between a buffer and a device (v2 `diff_io.c`, spec 5.6).
//!
//! Every bio is flagged `BIO_FILTERED`, so the engine's own IO never enters
//! the filter. v2 sends one bio per chunk operation, which hits `BUG()` for
//! more than 256 pages (B-IO-1); the fix splits the range into bios of at
//! most 256 pages, as v3 does.

use std::rc::Rc;

use crate::kernel::{
    kmalloc, submit, AllocId, Bio, BioOp, BioResult, Completion, DevT, Errno, Gfp, LocalBoxFuture,
    Stamps, PAGE_SECTORS,
};
use crate::module::Module;

/// The most pages one bio may carry in 6.1 (`BIO_MAX_VECS`).
pub const BIO_MAX_VECS: u64 = 256;

/// An IO in flight: await it for the data read (or the write's status).
pub type DiffIo = LocalBoxFuture<'static, BioResult>;

/// Start a read of `count` sectors at `sector`. `nowait` is a REQ_NOWAIT
/// writer's context: an allocation that would block fails with -EAGAIN.
pub async fn read(
    module: &Rc<Module>,
    dev: DevT,
    sector: u64,
    count: u64,
    nowait: bool,
) -> Result<DiffIo, Errno> {
    start(
        module,
        BioOp::Read,
        dev,
        sector,
        count,
        Stamps::new(),
        nowait,
    )
    .await
}

/// Start a `REQ_SYNC|REQ_FUA` write of `data` at `sector`.
pub async fn write(
    module: &Rc<Module>,
    dev: DevT,
    sector: u64,
    data: Stamps,
    nowait: bool,
) -> Result<DiffIo, Errno> {
    let count = data.len();
    start(module, BioOp::Write, dev, sector, count, data, nowait).await
}

async fn start(
    module: &Rc<Module>,
    op: BioOp,
    dev: DevT,
    sector: u64,
    count: u64,
    data: Stamps,
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
    // The `struct diff_io` lives until its IO has ended.
    let alloc = kmalloc(k, "diff_io", 64, gfp).await.map_err(|_| fail)?;
    let per_bio = BIO_MAX_VECS * PAGE_SECTORS;
    // Sized at once: a 512 MiB chunk is 512 parts, grown one by one it
    // was nine reallocations per IO.
    let mut parts: Vec<Completion<BioResult>> =
        Vec::with_capacity(count.div_ceil(per_bio) as usize);
    let mut done = 0;
    while done < count {
        let n = per_bio.min(count - done);
        // Each part takes its slice of the runs: O(runs), not O(sectors).
        let mut bio = match op {
            BioOp::Read => Bio::read(dev, sector + done, n),
            _ => Bio::write(dev, sector + done, data.slice(done, done + n)),
        };
        bio.flags.sync = true;
        bio.flags.fua = op.is_write();
        bio.flags.filtered = true;
        parts.push(submit(k, bio));
        done += n;
    }
    Ok(Box::pin(join(module.clone(), alloc, parts)))
}

/// The end of a split IO: all parts, any error maps to -EIO; then the
/// `diff_io` is freed.
async fn join(module: Rc<Module>, alloc: AllocId, parts: Vec<Completion<BioResult>>) -> BioResult {
    let mut data = Stamps::new();
    let mut failed = false;
    for part in parts {
        match part.await {
            Ok(stamps) => data.append(&stamps),
            Err(_) => failed = true,
        }
    }
    module.k().kfree(alloc);
    if failed {
        Err(Errno::EIO)
    } else {
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testing::{dev, load, quirks, run, BioRecord, TestKernel};
    use crate::kernel::BioFlags;
    use crate::params::Params;

    /// Start an IO: run its allocation (a sleeping point) to the end.
    fn start_now(
        k: &Rc<TestKernel>,
        io: impl std::future::Future<Output = Result<DiffIo, Errno>>,
    ) -> Result<DiffIo, Errno> {
        run(k, io)
    }

    fn setup(quirk_ids: &[&str]) -> (Rc<TestKernel>, Rc<Module>, DevT) {
        let k = TestKernel::new();
        let d = dev(0);
        k.add_device(d, 1 << 20);
        let m = load(&k, Params::default(), quirks(quirk_ids));
        (k, m, d)
    }

    #[test]
    fn a_read_is_split_into_bios_of_at_most_256_pages() {
        let (k, m, d) = setup(&[]);
        // 4608 sectors = 576 pages: 256 + 256 + 64 pages.
        k.fill(d, 8, 4608, |s| s * 10);
        let data = run(&k, start_now(&k, read(&m, d, 8, 4608, false)).unwrap()).unwrap();
        assert_eq!(data, (8..8 + 4608).map(|s| s * 10).collect::<Vec<_>>());
        let flags = BioFlags {
            sync: true,
            filtered: true,
            ..BioFlags::default()
        };
        let bio = |sector, sectors| BioRecord {
            dev: d,
            op: BioOp::Read,
            sector,
            sectors,
            flags,
        };
        assert_eq!(
            k.bios(),
            vec![bio(8, 2048), bio(2056, 2048), bio(4104, 512)]
        );
    }

    #[test]
    fn a_write_is_split_and_flagged_sync_fua_filtered() {
        let (k, m, d) = setup(&[]);
        let data = Stamps::counting(1, 4096);
        run(
            &k,
            start_now(&k, write(&m, d, 0, data.clone(), false)).unwrap(),
        )
        .unwrap();
        assert_eq!(data, k.peek(d, 0, 4096));
        let bios = k.bios();
        assert_eq!(bios.len(), 2);
        for (i, bio) in bios.iter().enumerate() {
            assert_eq!(
                (bio.op, bio.sector, bio.sectors),
                (BioOp::Write, 2048 * i as u64, 2048)
            );
            assert!(bio.flags.sync && bio.flags.fua && bio.flags.filtered);
        }
    }

    #[test]
    fn exactly_256_pages_is_one_bio() {
        let (k, m, d) = setup(&["B-IO-1"]);
        run(&k, start_now(&k, read(&m, d, 0, 2048, false)).unwrap()).unwrap();
        assert_eq!(k.bios().len(), 1);
    }

    #[test]
    fn a_start_off_a_page_boundary_is_einval() {
        let (k, m, d) = setup(&[]);
        assert_eq!(
            start_now(&k, read(&m, d, 3, 8, false)).err(),
            Some(Errno::EINVAL)
        );
        assert_eq!(
            start_now(&k, write(&m, d, 4, Stamps::repeat(1, 8), false)).err(),
            Some(Errno::EINVAL)
        );
        assert!(k.bios().is_empty());
        assert!(
            start_now(&k, read(&m, d, 8, 3, false)).is_ok(),
            "a short count is fine"
        );
    }

    #[test]
    #[should_panic(expected = "B-IO-1")]
    fn quirk_io_1_panics_above_256_pages() {
        let (_k, m, d) = setup(&["B-IO-1"]);
        let _ = start_now(&_k, read(&m, d, 0, 2056, false));
    }

    #[test]
    fn allocation_failure_is_enomem_or_eagain_under_nowait() {
        let (k, m, d) = setup(&[]);
        k.fail_site("diff_io");
        assert_eq!(
            start_now(&k, read(&m, d, 0, 8, false)).err(),
            Some(Errno::ENOMEM)
        );
        assert_eq!(
            start_now(&k, read(&m, d, 0, 8, true)).err(),
            Some(Errno::EAGAIN)
        );
        assert!(k.bios().is_empty());
    }

    #[test]
    fn any_failed_part_ends_the_io_with_eio() {
        let (k, m, d) = setup(&[]);
        // The second part runs past the end of the device.
        let past = start_now(&k, read(&m, d, (1 << 20) - 2048, 4096, false)).unwrap();
        assert_eq!(run(&k, past), Err(Errno::EIO));
        k.set_fail_io(d, true);
        let failed = start_now(&k, write(&m, d, 0, Stamps::repeat(1, 8), false)).unwrap();
        assert_eq!(run(&k, failed), Err(Errno::EIO));
    }

    #[test]
    #[should_panic(expected = "B-TRK-9")]
    fn io_after_the_bio_set_is_destroyed_panics() {
        let (_k, m, d) = setup(&[]);
        m.bioset_destroyed.set(true);
        let _ = start_now(&_k, read(&m, d, 0, 8, false));
    }
}
