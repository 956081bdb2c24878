#![no_main]

// mimalloc unless a sanitizer is on (see build.rs).
#[cfg(not(sanitized))]
#[global_allocator]
static ALLOCATOR: blksnap_alloc::SimAllocator = blksnap_alloc::SimAllocator;

// lifecycle with power cuts and storage tails; `FUZZ_QUIRKS` as lifecycle's.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    blksnap_fuzz::lifecycle_everything::lifecycle_everything_env(data)
});
