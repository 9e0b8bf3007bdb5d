//! VRL program loading: a filter condition and a remap source compiled the way config loading
//! compiles them (`veltrix_core::expr::{Filter, Remap}::compile`), diagnostics included.
use veltrix_core::expr::{Filter, Remap};

/// One input: panics on any violated property.
pub fn check(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match Filter::compile(source) {
        Ok(filter) => assert_eq!(filter.source(), source),
        Err(diagnostics) => assert!(!diagnostics.is_empty(), "rejected without a diagnostic"),
    }
    match Remap::compile(source) {
        Ok(remap) => assert_eq!(remap.source(), source),
        Err(diagnostics) => assert!(!diagnostics.is_empty(), "rejected without a diagnostic"),
    }
}
