//! libFuzzer entry point of [`veltrix_fuzz::log_segment::check`] (see `src/log_segment.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltrix_fuzz::log_segment::check(data));
