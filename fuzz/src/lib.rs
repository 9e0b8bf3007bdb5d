//! The fuzz targets' properties, one module per target: `check(data)` panics when an input
//! breaks one (a plain panic is what libFuzzer reports as a crash). The binaries in
//! `fuzz_targets/` only feed them libFuzzer's inputs, so the checks need no libFuzzer and no
//! nightly toolchain to compile, and a crashing input can be replayed through the same function.

pub mod config;
pub mod decode_body;
pub mod log_segment;
pub mod member_index;
pub mod vrl_compile;
