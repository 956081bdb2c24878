#![no_main]

// mimalloc unless a sanitizer is on (see build.rs).
#[cfg(not(sanitized))]
#[global_allocator]
static ALLOCATOR: blksnap_alloc::SimAllocator = blksnap_alloc::SimAllocator;

libfuzzer_sys::fuzz_target!(|data: &[u8]| blksnap_fuzz::scenario_run(data));
