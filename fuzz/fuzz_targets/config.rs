//! libFuzzer entry point of [`veltrix_fuzz::config::check`] (see `src/config.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltrix_fuzz::config::check(data));
