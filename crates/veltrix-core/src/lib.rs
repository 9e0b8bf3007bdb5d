//! Veltrix's pure core: the CloudEvents model and ingest decoding ([`event`]), the config
//! schema with validation and diagnostics ([`config`]), and VRL expressions ([`expr`]).
//!
//! Key design decisions:
//! - **Pure.** No I/O anywhere except [`config::load`] reading the config file it is given (and
//!   `std::env` for `${VAR}` interpolation); no async runtime, no network. Everything here is
//!   testable with plain values, and nothing on the per-event hot path blocks or allocates more
//!   than it must: bodies decode in one pass without a JSON tree per event, expressions are
//!   compiled once at load and run against a reused runtime.
//! - **Config errors always carry `file:line:col`.** Every diagnostic points at the offending
//!   key or value in the file as written (even after `${VAR}` interpolation), quotes the line,
//!   and says how to fix it; all problems are reported at once, not just the first.
//! - **All or nothing.** An ingest body is accepted whole or rejected with every bad event
//!   named; a config is valid whole or not at all.

pub mod config;
pub mod event;
pub mod expr;
pub mod member_index;
