//! blksnap-alloc: the global allocator of the `blksnap-sim` binary and of
//! the cargo-fuzz targets, for speed only.
//!
//! It is its own crate because it is the project's only unsafe code: `core`,
//! `sim` and `fuzz` forbid `unsafe`, and each binary that wants it names it
//! as its `#[global_allocator]`. Sanitizer builds must not (ASan and LSan
//! see only the heap they intercept, glibc's).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Allocation speed only: mimalloc hands out memory as glibc does, so no
/// result depends on it (addresses never reach a digest or a verdict).
///
/// `mimalloc::MiMalloc` asks for every block through `mi_malloc_aligned`.
/// In mimalloc 3 that call, when a size's bin has no free block, takes a
/// block of the next bin up and never refills the exact one, so the size
/// stays on the slow path for the rest of the run (about 150 instructions
/// instead of 20; 93 % of the allocations of a 1 PiB run). Blocks of plain
/// `mi_malloc` are aligned to 8 bytes, and to 16 from 16 bytes up, which
/// covers nearly every Rust layout; only larger alignments go the aligned
/// way.
pub struct SimAllocator;

/// Whether plain `mi_malloc` gives this layout its alignment.
fn natural(layout: &Layout) -> bool {
    layout.align() <= 8 || (layout.align() == 16 && layout.size() >= 16)
}

// SAFETY: each call hands the layout's size (and, where `natural` does not
// hold, its alignment) to mimalloc, which returns null or a block at least
// that large and that aligned; frees and reallocs go back to mimalloc,
// which owns every block, however it was allocated.
unsafe impl GlobalAlloc for SimAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if natural(&layout) {
            unsafe { mi::mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if natural(&layout) {
            unsafe { mi::mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align(new_size, layout.align()).ok();
        if new.as_ref().is_some_and(natural) {
            unsafe { mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8 }
        } else {
            unsafe {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}
