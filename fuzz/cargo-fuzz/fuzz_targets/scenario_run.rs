#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blksnap_fuzz::scenario_run(data));
