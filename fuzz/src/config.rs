//! Config loading: `veltrix_core::config::parse_str_with_env` on arbitrary text with an empty
//! environment, and rendering every diagnostic (snippet and caret from the spans).
use veltrix_core::config::parse_str_with_env;

/// In a directory that does not exist, so `include` patterns match nothing (no file I/O).
const FILE: &str = "/nonexistent-veltrix-fuzz/fuzz.toml";

/// One input: panics on any violated property.
pub fn check(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match parse_str_with_env(src, FILE, 2, &|_| None) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                let _ = warning.to_string();
            }
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "rejected without a diagnostic");
            for diagnostic in &diagnostics {
                let _ = diagnostic.to_string();
            }
        }
    }
}
