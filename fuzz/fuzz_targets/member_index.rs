//! libFuzzer entry point of [`veltrix_fuzz::member_index::check`] (see `src/member_index.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltrix_fuzz::member_index::check(data));
