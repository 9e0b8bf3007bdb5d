//! `veltrix-engine`: the runtime that turns a validated [`veltrix_core::config::Config`] into
//! running sources, queues, pipelines and sinks.
//!
//! Key design decision: an event travels as part of a batch from the HTTP request to the sink —
//! one decode pass per request, one group commit per queue per request, one sink write (and
//! fdatasync) per pipeline batch — and it is acknowledged to its queue only after the sink
//! confirms it. A crash anywhere therefore redelivers (at-least-once) and never loses an event
//! that was answered `202`.
//!
//! Only this crate and the binary know HTTP; `veltrix-core` stays pure and `veltrix-log` knows
//! nothing about events.

mod api;
mod auth;
/// For benches, not a stable API: thin wrappers over the hot path for `benches/`.
#[doc(hidden)]
pub mod bench_support;
mod components;
mod concurrency;
mod dashboard;
mod deadletter;
mod engine;
pub mod handler;
mod ingest;
mod listener;
mod live;
mod nats_client;
mod pipeline;
mod postgres;
mod problem;
mod processors;
mod queue_sink;
mod queues;
pub mod record;
mod sink;
mod sources;
mod stats;
pub mod testing;

pub use api::GUARDED_ROUTES as ADMIN_GUARDED_ROUTES;
pub use components::{Changes, Delta};
pub use engine::{Engine, EngineError, Reload, Topology};
