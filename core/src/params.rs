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

/// A parameter name that does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownParam(pub String);

impl Params {
    /// Every parameter name, as in /sys/module/blksnap/parameters.
    pub const NAMES: &'static [&'static str] = &[
        "tracking_block_minimum_shift",
        "tracking_block_maximum_count",
        "tracking_block_maximum_shift",
        "chunk_minimum_shift",
        "chunk_maximum_count",
        "chunk_maximum_in_cache",
        "free_diff_buffer_pool_size",
        "diff_storage_minimum",
    ];

    /// A write to a parameter file. v2 takes any int (B-PARAM-1); the fix
    /// (6.15 checks at init) refuses values the engine cannot work with.
    pub fn set(
        &mut self,
        name: &str,
        value: i64,
        validate: bool,
    ) -> Result<(), crate::kernel::Errno> {
        use crate::kernel::Errno;
        if validate && !Self::valid(name, value) {
            return Err(Errno::EINVAL);
        }
        // Stored as the C int it is in v2, reinterpreted as unsigned.
        let as_u64 = value as i32 as u32 as u64;
        match name {
            "tracking_block_minimum_shift" => self.tracking_block_minimum_shift = as_u64 as u32,
            "tracking_block_maximum_count" => self.tracking_block_maximum_count = as_u64,
            "tracking_block_maximum_shift" => self.tracking_block_maximum_shift = as_u64 as u32,
            "chunk_minimum_shift" => self.chunk_minimum_shift = as_u64 as u32,
            "chunk_maximum_count" => self.chunk_maximum_count = as_u64,
            "chunk_maximum_in_cache" => self.chunk_maximum_in_cache = as_u64,
            "free_diff_buffer_pool_size" => self.free_diff_buffer_pool_size = as_u64,
            "diff_storage_minimum" => self.diff_storage_minimum = value as i32 as i64 as u64,
            _ => return Err(Errno::ENOENT),
        }
        Ok(())
    }

    /// Check every parameter as a careful module does at load.
    pub fn validate(&self) -> Result<(), String> {
        let values: [(&str, u64); 8] = [
            (
                "tracking_block_minimum_shift",
                u64::from(self.tracking_block_minimum_shift),
            ),
            (
                "tracking_block_maximum_count",
                self.tracking_block_maximum_count,
            ),
            (
                "tracking_block_maximum_shift",
                u64::from(self.tracking_block_maximum_shift),
            ),
            ("chunk_minimum_shift", u64::from(self.chunk_minimum_shift)),
            ("chunk_maximum_count", self.chunk_maximum_count),
            ("chunk_maximum_in_cache", self.chunk_maximum_in_cache),
            (
                "free_diff_buffer_pool_size",
                self.free_diff_buffer_pool_size,
            ),
            ("diff_storage_minimum", self.diff_storage_minimum),
        ];
        for (name, value) in values {
            if !Self::valid(name, value as i64) {
                return Err(format!("parameter {name} = {value} is out of range"));
            }
        }
        Ok(())
    }

    /// The ranges a careful module accepts.
    fn valid(name: &str, value: i64) -> bool {
        match name {
            "tracking_block_minimum_shift" | "tracking_block_maximum_shift" => {
                (12..=40).contains(&value)
            }
            "chunk_minimum_shift" => (12..=30).contains(&value),
            "tracking_block_maximum_count" | "chunk_maximum_count" => {
                (1..=(1 << 30)).contains(&value)
            }
            "chunk_maximum_in_cache" | "free_diff_buffer_pool_size" => {
                (1..=(1 << 20)).contains(&value)
            }
            "diff_storage_minimum" => (8..=(1 << 40)).contains(&value),
            _ => false,
        }
    }

    /// The low-free-space threshold: half the minimum, rounded down to a
    /// multiple of a page (8 sectors).
    pub fn low_space_threshold(&self) -> u64 {
        (self.diff_storage_minimum / 2) & !7
    }
}
