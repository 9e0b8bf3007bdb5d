//! libFuzzer entry point of [`veltrix_fuzz::vrl_compile::check`] (see `src/vrl_compile.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltrix_fuzz::vrl_compile::check(data));
