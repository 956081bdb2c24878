//! Module parameters (v2 `params.h` and `main.c`), with their defaults.
//!
//! v2 reads each value at the moment of use and validates none of them
//! (B-PARAM-1); the engine does the same, so a scenario may change them
//! between steps as a write to `/sys/module/blksnap/parameters/*` would.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Starting log2 of the CBT block size in bytes (64 KiB).
    pub tracking_block_minimum_shift: u32,
    /// Upper limit on the number of CBT blocks.
    pub tracking_block_maximum_count: u64,
    /// Cap on the CBT block shift; v3 added it with the fixed size rule.
    pub tracking_block_maximum_shift: u32,
    /// Starting log2 of the chunk size in bytes (256 KiB).
    pub chunk_minimum_shift: u32,
    /// Upper limit on the number of chunks of one device.
    pub chunk_maximum_count: u64,
    /// Limit of each of the two per-device chunk caches.
    pub chunk_maximum_in_cache: u64,
    /// Per-device pool of free chunk buffers.
    pub free_diff_buffer_pool_size: u64,
    /// Sectors asked for in each low-free-space event (1 GiB).
    pub diff_storage_minimum: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            tracking_block_minimum_shift: 16,
            tracking_block_maximum_count: 2_097_152,
            tracking_block_maximum_shift: 26,
            chunk_minimum_shift: 18,
            chunk_maximum_count: 2_097_152,
            chunk_maximum_in_cache: 32,
            free_diff_buffer_pool_size: 128,
            diff_storage_minimum: 2_097_152,
        }
    }
}

impl Params {
    /// The low-free-space threshold: half the minimum, rounded down to a
    /// multiple of a page (8 sectors).
    pub fn low_space_threshold(&self) -> u64 {
        (self.diff_storage_minimum / 2) & !7
    }
}
