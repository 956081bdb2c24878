//! A chunk-sized in-memory buffer (v2 `diff_buffer.c`).
//!
//! A buffer is always one whole chunk, even for the trimmed last chunk. Free
//! buffers wait in a per-diff_area pool (see `diff_area`).

use crate::kernel::{AllocId, Errno, Gfp, Kernel, Stamp, SECTOR_SIZE};

pub struct DiffBuffer {
    /// One stamp per sector of the chunk.
    pub data: Vec<Stamp>,
    alloc: AllocId,
}

impl DiffBuffer {
    /// `diff_buffer_new`: GFP_NOIO, or NOIO|NOWAIT for a REQ_NOWAIT writer,
    /// whose failure is -EAGAIN rather than -ENOMEM.
    pub fn new(kernel: &dyn Kernel, sectors: u64, nowait: bool) -> Result<DiffBuffer, Errno> {
        let gfp = if nowait { Gfp::NoioNowait } else { Gfp::Noio };
        let alloc = kernel
            .kmalloc("diff_buffer", sectors * SECTOR_SIZE, gfp)
            .map_err(|_| if nowait { Errno::EAGAIN } else { Errno::ENOMEM })?;
        Ok(DiffBuffer {
            data: vec![0; sectors as usize],
            alloc,
        })
    }

    /// `diff_buffer_free`.
    pub fn free(self, kernel: &dyn Kernel) {
        kernel.kfree(self.alloc);
    }

    pub fn sectors(&self) -> u64 {
        self.data.len() as u64
    }
}
