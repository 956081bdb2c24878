//! One chunk of a diff_area (v2 `chunk.c`, spec 5.2-5.3).
//!
//! The chunk semaphore guards the state, the buffer, the region and the IO
//! in flight. It is held across asynchronous IO and released by the
//! completion worker, which is why it is a semaphore and not a mutex.

use std::cell::{Cell, RefCell};

use crate::diff_buffer::DiffBuffer;
use crate::diff_storage::DiffRegion;
use crate::kernel::sync::Semaphore;
use crate::kernel::Kernel;

/// State bits (spec 5.2). A chunk's state is a set of them.
pub mod bits {
    /// Permanently unusable.
    pub const FAILED: u8 = 0x01;
    /// The image wrote to it; the buffer holds the newest image data.
    pub const DIRTY: u8 = 0x02;
    /// The buffer holds valid data for the image view.
    pub const BUFFER_READY: u8 = 0x04;
    /// A valid copy is in the diff storage. Never cleared.
    pub const STORE_READY: u8 = 0x08;
    /// A read from the original is in flight.
    pub const LOADING: u8 = 0x10;
    /// A write to the diff storage is in flight.
    pub const STORING: u8 = 0x20;
}

pub struct Chunk {
    pub number: u64,
    /// The chunk size, or less for the last chunk of the device.
    pub sector_count: u64,
    pub lock: Semaphore,
    state: Cell<u8>,
    pub buffer: RefCell<Option<DiffBuffer>>,
    pub region: Cell<Option<DiffRegion>>,
}

impl Chunk {
    pub fn new(kernel: &dyn Kernel, number: u64, sector_count: u64) -> Chunk {
        Chunk {
            number,
            sector_count,
            lock: Semaphore::new(kernel, "chunk.lock"),
            state: Cell::new(0),
            buffer: RefCell::new(None),
            region: Cell::new(None),
        }
    }

    pub fn state(&self) -> u8 {
        self.state.get()
    }

    pub fn has(&self, bit: u8) -> bool {
        self.state.get() & bit != 0
    }

    /// Set a bit. Only the holder of the chunk lock changes the state.
    pub fn set(&self, bit: u8) {
        debug_assert!(
            self.lock.is_locked(),
            "chunk state changed without its lock"
        );
        if bit == bits::DIRTY || bit == bits::BUFFER_READY {
            assert!(self.buffer.borrow().is_some(), "{bit:#x} without a buffer");
        }
        self.state.set(self.state.get() | bit);
    }

    pub fn clear(&self, bit: u8) {
        debug_assert!(
            self.lock.is_locked(),
            "chunk state changed without its lock"
        );
        assert!(bit != bits::STORE_READY, "STORE_READY is never cleared");
        self.state.set(self.state.get() & !bit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testing::{run, TestKernel};

    fn locked_chunk(k: &TestKernel) -> Chunk {
        let chunk = Chunk::new(k, 3, 512);
        assert!(chunk.lock.down_trylock(k));
        chunk
    }

    #[test]
    fn a_new_chunk_is_clean_and_unlocked() {
        let k = TestKernel::new();
        let chunk = Chunk::new(&*k, 3, 100);
        assert_eq!(
            (chunk.number, chunk.sector_count, chunk.state()),
            (3, 100, 0)
        );
        assert!(!chunk.lock.is_locked());
        assert!(chunk.buffer.borrow().is_none());
        assert!(chunk.region.get().is_none());
    }

    #[test]
    fn set_and_clear_bits() {
        let k = TestKernel::new();
        let chunk = locked_chunk(&k);
        chunk.set(bits::LOADING);
        assert!(chunk.has(bits::LOADING));
        assert!(!chunk.has(bits::STORING));
        chunk.set(bits::STORING);
        assert_eq!(chunk.state(), bits::LOADING | bits::STORING);
        assert!(chunk.has(bits::LOADING | bits::FAILED), "has() is any-of");
        chunk.clear(bits::LOADING);
        assert_eq!(chunk.state(), bits::STORING);
        chunk.set(bits::STORE_READY);
        chunk.set(bits::FAILED);
        chunk.clear(bits::STORING);
        assert_eq!(chunk.state(), bits::STORE_READY | bits::FAILED);
        chunk.lock.up(&*k);
    }

    #[test]
    fn buffer_bits_need_a_buffer() {
        let k = TestKernel::new();
        let chunk = locked_chunk(&k);
        *chunk.buffer.borrow_mut() = Some(run(&k, DiffBuffer::new(&*k, 512, false)).unwrap());
        chunk.set(bits::BUFFER_READY);
        chunk.set(bits::DIRTY);
        assert_eq!(chunk.state(), bits::BUFFER_READY | bits::DIRTY);
        assert_eq!(k.live_allocs(), vec![("diff_buffer", 512 * 512)]);
    }

    #[test]
    #[should_panic(expected = "without a buffer")]
    fn buffer_ready_without_a_buffer_panics() {
        let k = TestKernel::new();
        locked_chunk(&k).set(bits::BUFFER_READY);
    }

    #[test]
    #[should_panic(expected = "without a buffer")]
    fn dirty_without_a_buffer_panics() {
        let k = TestKernel::new();
        locked_chunk(&k).set(bits::DIRTY);
    }

    #[test]
    #[should_panic(expected = "STORE_READY is never cleared")]
    fn store_ready_cannot_be_cleared() {
        let k = TestKernel::new();
        let chunk = locked_chunk(&k);
        chunk.set(bits::STORE_READY);
        chunk.clear(bits::STORE_READY);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "chunk state changed without its lock")]
    fn state_changes_need_the_lock() {
        let k = TestKernel::new();
        Chunk::new(&*k, 0, 8).set(bits::FAILED);
    }
}
