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
