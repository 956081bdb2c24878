//! A chunk-sized in-memory buffer (v2 `diff_buffer.c`).
//!
//! A buffer is always one whole chunk, even for the trimmed last chunk. Free
//! buffers wait in a per-diff_area pool (see `diff_area`).

use crate::kernel::{kmalloc, AllocId, Errno, Gfp, Kernel, Stamps, SECTOR_SIZE};

pub struct DiffBuffer {
    /// One stamp per sector of the chunk, as runs: a fresh buffer is one
    /// run of zeros whatever the chunk size.
    pub data: Stamps,
    alloc: AllocId,
}

impl DiffBuffer {
    /// `diff_buffer_new`: GFP_NOIO, or NOIO|NOWAIT for a REQ_NOWAIT writer,
    /// whose failure is -EAGAIN rather than -ENOMEM. GFP_NOIO sleeps in
    /// reclaim (the COW path does it under the chunk lock); NOWAIT never.
    pub async fn new(kernel: &dyn Kernel, sectors: u64, nowait: bool) -> Result<DiffBuffer, Errno> {
        let gfp = if nowait { Gfp::NoioNowait } else { Gfp::Noio };
        let alloc = kmalloc(kernel, "diff_buffer", sectors * SECTOR_SIZE, gfp)
            .await
            .map_err(|_| if nowait { Errno::EAGAIN } else { Errno::ENOMEM })?;
        Ok(DiffBuffer {
            data: Stamps::repeat(0, sectors),
            alloc,
        })
    }

    /// `diff_buffer_free`.
    pub fn free(self, kernel: &dyn Kernel) {
        kernel.kfree(self.alloc);
    }

    pub fn sectors(&self) -> u64 {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testing::{run, TestKernel};

    #[test]
    fn a_buffer_is_one_zeroed_chunk_and_is_accounted() {
        let k = TestKernel::new();
        let buffer = run(&k, DiffBuffer::new(&*k, 512, false)).unwrap();
        assert_eq!(buffer.sectors(), 512);
        assert!(buffer.data.is_all(0));
        assert_eq!(k.live_allocs(), vec![("diff_buffer", 512 * SECTOR_SIZE)]);
        buffer.free(&*k);
        assert!(k.live_allocs().is_empty());
    }

    #[test]
    fn allocation_failure_is_enomem_or_eagain_under_nowait() {
        let k = TestKernel::new();
        k.fail_site("diff_buffer");
        assert_eq!(
            run(&k, DiffBuffer::new(&*k, 512, false)).err(),
            Some(Errno::ENOMEM)
        );
        assert_eq!(
            run(&k, DiffBuffer::new(&*k, 512, true)).err(),
            Some(Errno::EAGAIN)
        );
        k.unfail_site("diff_buffer");
        assert!(run(&k, DiffBuffer::new(&*k, 512, true)).is_ok());
    }
}
