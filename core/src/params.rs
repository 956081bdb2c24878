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
    /// multiple of a page (8 sectors). The C shifts the int (arithmetic for
    /// a negative value) and compares the result with an unsigned sector
    /// count, so a negative minimum sign-extends into a threshold near
    /// 2^64: every region allocation is then "half full" (B-PARAM-1).
    pub fn low_space_threshold(&self) -> u64 {
        ((self.diff_storage_minimum as i64 >> 1) & !7) as u64
    }

    /// `chunk_maximum_in_cache` as the C int it is: v2 compares the cache
    /// counts with it signed, so -1 puts every cached chunk over the limit
    /// (always evict), where an unsigned compare would never evict.
    pub fn cache_limit(&self) -> i64 {
        c_int(self.chunk_maximum_in_cache)
    }

    /// `free_diff_buffer_pool_size` as the C int it is: -1 frees every
    /// released buffer.
    pub fn pool_limit(&self) -> i64 {
        c_int(self.free_diff_buffer_pool_size)
    }
}

/// The C int a parameter slot holds (values are stored as the int's bits).
fn c_int(value: u64) -> i64 {
    i64::from(value as u32 as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Errno;

    #[test]
    fn defaults_are_the_v2_values() {
        let p = Params::default();
        assert_eq!(p.tracking_block_minimum_shift, 16);
        assert_eq!(p.tracking_block_maximum_count, 2_097_152);
        assert_eq!(p.tracking_block_maximum_shift, 26);
        assert_eq!(p.chunk_minimum_shift, 18);
        assert_eq!(p.chunk_maximum_count, 2_097_152);
        assert_eq!(p.chunk_maximum_in_cache, 32);
        assert_eq!(p.free_diff_buffer_pool_size, 128);
        assert_eq!(p.diff_storage_minimum, 2_097_152);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn every_name_can_be_set() {
        for (i, name) in Params::NAMES.iter().enumerate() {
            let mut p = Params::default();
            let value = 20 + i as i64;
            p.set(name, value, true).unwrap();
            assert_ne!(p, Params::default(), "{name} changed nothing");
        }
        let mut p = Params::default();
        p.set("chunk_minimum_shift", 20, true).unwrap();
        p.set("diff_storage_minimum", 262_144, true).unwrap();
        assert_eq!(p.chunk_minimum_shift, 20);
        assert_eq!(p.diff_storage_minimum, 262_144);
    }

    #[test]
    fn unknown_names_are_enoent() {
        let mut p = Params::default();
        assert_eq!(
            p.set("chunk_maximum_in_queue", 16, false),
            Err(Errno::ENOENT)
        );
        assert_eq!(p, Params::default());
    }

    #[test]
    fn validated_set_refuses_out_of_range_values() {
        let mut p = Params::default();
        for (name, value) in [
            ("chunk_minimum_shift", 10),
            ("chunk_minimum_shift", 31),
            ("tracking_block_minimum_shift", 8),
            ("chunk_maximum_count", 0),
            ("chunk_maximum_in_cache", 0),
            ("diff_storage_minimum", -1),
            ("diff_storage_minimum", 7),
        ] {
            assert_eq!(
                p.set(name, value, true),
                Err(Errno::EINVAL),
                "{name} = {value}"
            );
        }
        assert_eq!(p, Params::default());
    }

    #[test]
    fn unvalidated_set_stores_any_int_as_v2_does() {
        let mut p = Params::default();
        p.set("chunk_minimum_shift", 10, false).unwrap();
        assert_eq!(p.chunk_minimum_shift, 10);
        let err = p.validate().unwrap_err();
        assert!(err.contains("chunk_minimum_shift"), "{err}");
        // A negative minimum becomes a huge request (B-PARAM-1).
        p.set("diff_storage_minimum", -1, false).unwrap();
        assert_eq!(p.diff_storage_minimum, u64::MAX);
        // Other parameters are C ints read back as unsigned.
        p.set("chunk_maximum_in_cache", -1, false).unwrap();
        assert_eq!(p.chunk_maximum_in_cache, u64::from(u32::MAX));
    }

    /// B-PARAM-1 as the C compares: -1 is "always" for the int limits,
    /// and a negative minimum makes the threshold sign-extend.
    #[test]
    fn negative_int_parameters_compare_signed_as_in_c() {
        let mut p = Params::default();
        p.set("chunk_maximum_in_cache", -1, false).unwrap();
        p.set("free_diff_buffer_pool_size", -1, false).unwrap();
        assert_eq!((p.cache_limit(), p.pool_limit()), (-1, -1));
        assert!(0 > p.cache_limit(), "an empty cache is already over -1");
        p.set("diff_storage_minimum", -1, false).unwrap();
        // (-1 >> 1) & ~7 == -8, read as a sector_t.
        assert_eq!(p.low_space_threshold(), u64::MAX - 7);
        p.set("diff_storage_minimum", -4096, false).unwrap();
        assert_eq!(p.low_space_threshold(), (-2048i64) as u64);
        assert_eq!(Params::default().cache_limit(), 32);
        assert_eq!(Params::default().pool_limit(), 128);
    }

    #[test]
    fn low_space_threshold_is_half_the_minimum_rounded_down_to_8() {
        let threshold = |minimum| {
            Params {
                diff_storage_minimum: minimum,
                ..Params::default()
            }
            .low_space_threshold()
        };
        assert_eq!(threshold(2_097_152), 1_048_576);
        assert_eq!(threshold(262_144), 131_072);
        assert_eq!(threshold(65_536), 32_768);
        assert_eq!(threshold(1000), 496);
        assert_eq!(threshold(17), 8);
        assert_eq!(threshold(15), 0);
    }
}
