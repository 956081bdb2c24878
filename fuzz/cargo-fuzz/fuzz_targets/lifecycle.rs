#![no_main]

// mimalloc unless a sanitizer is on (see build.rs).
#[cfg(not(sanitized))]
#[global_allocator]
static ALLOCATOR: blksnap_alloc::SimAllocator = blksnap_alloc::SimAllocator;

// `FUZZ_QUIRKS=B-EVT-1` switches a bug on, to time its find (README, "Speed").
libfuzzer_sys::fuzz_target!(|data: &[u8]| blksnap_fuzz::lifecycle::lifecycle_env(data));
