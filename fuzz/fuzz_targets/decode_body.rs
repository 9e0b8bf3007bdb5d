//! libFuzzer entry point of [`veltrix_fuzz::decode_body::check`] (see `src/decode_body.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltrix_fuzz::decode_body::check(data));
