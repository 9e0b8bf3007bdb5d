//! Veltrix as a library: the [`Processor`] and [`Sink`] traits and [`Plugins`], the registry
//! that makes a user's handlers available under a `type` name in the config.
//!
//! A custom handler runs with everything a built-in one gets: the same config file (its table's
//! keys, except `type`, arrive as JSON options), queues, worker pool, retries with backoff,
//! dead-letter queue and metrics. The built-in sinks implement the same [`Sink`] trait.
//!
//! ```no_run
//! use std::sync::Arc;
//! use veltrix_engine::handler::{Plugins, Processor, ProcessError};
//! use veltrix_engine::handler::Event;
//!
//! struct Upper;
//! impl Processor for Upper {
//!     fn process(&self, event: Event, out: &mut Vec<Event>) -> Result<(), ProcessError> {
//!         let mut json = event.to_json();
//!         json["subject"] = "UPPER".into();
//!         out.push(Event::from_json(&json).map_err(|e| ProcessError::new(e.to_string()))?);
//!         Ok(())
//!     }
//! }
//! let plugins = Plugins::new().processor("upper", |_options| Ok(Arc::new(Upper)));
//! ```
//!
//! Factories are called when the config is loaded (to validate the options, so `veltrix
//! validate` reports a bad option at its table) and again when the engine starts the handler:
//! they must be cheap and must not connect anywhere — connect on first use.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
/// What [`Sink::write`] returns: a boxed future (`Box::pin(async move { ... })`).
pub use futures_util::future::BoxFuture;
use serde_json::Value as Json;
use veltrix_core::config::{Extensions, OptionsValidator};
pub use veltrix_core::event::{Data, Event, ExtensionValue, InvalidEvent};

/// A batch of events on its way to a sink: NDJSON, one compact structured-mode CloudEvent per
/// line (the form the pipeline builds; a file sink writes it as is).
#[derive(Debug, Clone)]
pub struct Batch {
    ndjson: Bytes,
    len: usize,
}

impl Batch {
    /// `ndjson` must hold `len` lines, each ending in `\n`.
    pub fn new(ndjson: Bytes, len: usize) -> Batch {
        debug_assert_eq!(ndjson.iter().filter(|b| **b == b'\n').count(), len);
        Batch { ndjson, len }
    }

    /// The whole batch as NDJSON.
    pub fn ndjson(&self) -> &Bytes {
        &self.ndjson
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Each event's JSON text (without the newline).
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.ndjson
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
    }

    /// Each event, parsed and validated.
    pub fn events(&self) -> impl Iterator<Item = Result<Event, InvalidEvent>> {
        self.lines().map(Event::from_stored)
    }

    /// The batch as one JSON array (`application/cloudevents-batch+json`).
    pub fn to_json_array(&self) -> Vec<u8> {
        let body = self.ndjson.strip_suffix(b"\n").unwrap_or(&self.ndjson);
        let mut out = Vec::with_capacity(body.len() + 2);
        out.push(b'[');
        // Compact JSON has no raw newline inside a line: each one separates two events.
        out.extend(body.iter().map(|&b| if b == b'\n' { b',' } else { b }));
        out.push(b']');
        out
    }
}

/// Whether trying again may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Timeouts, connection errors, 5xx, 408, 429, local I/O errors: try again, not before
    /// `after` when the downstream said so (`Retry-After`).
    Retryable { after: Option<Duration> },
    /// The downstream refused this batch for good: dead-letter it at once.
    Permanent,
}

/// Why a sink did not confirm a batch.
#[derive(Debug, Clone)]
pub struct SinkError {
    pub retry: Retry,
    pub message: String,
    /// The downstream's status code when it answered (the `status` label of
    /// `veltrix_sink_requests_total`).
    pub status: Option<u16>,
}

impl SinkError {
    /// A failure worth retrying (with backoff, up to the pipeline's `attempts_max`).
    pub fn retryable(message: impl Into<String>) -> SinkError {
        SinkError {
            retry: Retry::Retryable { after: None },
            message: message.into(),
            status: None,
        }
    }

    /// A failure retrying cannot fix: the batch is dead-lettered with `message`.
    pub fn permanent(message: impl Into<String>) -> SinkError {
        SinkError {
            retry: Retry::Permanent,
            message: message.into(),
            status: None,
        }
    }

    /// The same error, labelled with the downstream's status code.
    pub fn with_status(self, status: u16) -> SinkError {
        SinkError {
            status: Some(status),
            ..self
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SinkError {}

/// Where a pipeline delivers. `write` returns once the batch is as durable as the destination
/// can make it: returning `Ok` is what lets the pipeline acknowledge the events to their queue,
/// so a sink that confirms early can lose events in a crash. Called concurrently by the
/// pipeline's workers; delivery is at-least-once, so a sink should be idempotent on the event id
/// (`source`, `id`) where the destination allows it.
pub trait Sink: Send + Sync + 'static {
    fn write<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>>;

    /// A short description for the startup banner and the stats ("postgres events@127.0.0.1").
    fn describe(&self) -> String;
}

/// Why a processor failed on an event: the event is dead-lettered with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessError(pub String);

impl ProcessError {
    pub fn new(message: impl Into<String>) -> ProcessError {
        ProcessError(message.into())
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProcessError {}

/// One step of a pipeline, run on every event by the pipeline's workers (concurrently: keep
/// state behind a lock). Push the events that go on into `out`: none drops the event (counted
/// as filtered), one passes or replaces it, several split it. `Err` dead-letters the event.
pub trait Processor: Send + Sync + 'static {
    fn process(&self, event: Event, out: &mut Vec<Event>) -> Result<(), ProcessError>;
}

/// Builds a processor from its table's options (every key but `type`, as a JSON object).
pub type ProcessorFactory = Arc<dyn Fn(&Json) -> Result<Arc<dyn Processor>, String> + Send + Sync>;
/// Builds a sink from its table's options (every key but `type`, as a JSON object).
pub type SinkFactory = Arc<dyn Fn(&Json) -> Result<Arc<dyn Sink>, String> + Send + Sync>;

/// The custom handler types an embedding program registers. Pass it to
/// `Engine::start_with_plugins`, or to the `veltrix` crate's `main_with` to get the whole CLI
/// (`run`, `validate`, `test`, ...) with the handlers available.
#[derive(Clone, Default)]
pub struct Plugins {
    processors: Vec<(String, ProcessorFactory)>,
    sinks: Vec<(String, SinkFactory)>,
}

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugins")
            .field(
                "processors",
                &self.processors.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field(
                "sinks",
                &self.sinks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Plugins {
    pub fn new() -> Plugins {
        Plugins::default()
    }

    /// Registers a processor type. A later registration of the same name replaces the earlier.
    pub fn processor(
        mut self,
        type_name: &str,
        factory: impl Fn(&Json) -> Result<Arc<dyn Processor>, String> + Send + Sync + 'static,
    ) -> Plugins {
        self.processors.retain(|(n, _)| n != type_name);
        self.processors
            .push((type_name.to_owned(), Arc::new(factory)));
        self
    }

    /// Registers a sink type. A later registration of the same name replaces the earlier.
    pub fn sink(
        mut self,
        type_name: &str,
        factory: impl Fn(&Json) -> Result<Arc<dyn Sink>, String> + Send + Sync + 'static,
    ) -> Plugins {
        self.sinks.retain(|(n, _)| n != type_name);
        self.sinks.push((type_name.to_owned(), Arc::new(factory)));
        self
    }

    /// What the config decoder needs: the type names, each with a validator that runs the
    /// factory and keeps only its verdict.
    pub fn extensions(&self) -> Extensions {
        Extensions {
            processors: self
                .processors
                .iter()
                .map(|(name, factory)| {
                    let factory = factory.clone();
                    let validate: OptionsValidator =
                        Arc::new(move |options: &Json| factory(options).map(drop));
                    (name.clone(), validate)
                })
                .collect(),
            sinks: self
                .sinks
                .iter()
                .map(|(name, factory)| {
                    let factory = factory.clone();
                    let validate: OptionsValidator =
                        Arc::new(move |options: &Json| factory(options).map(drop));
                    (name.clone(), validate)
                })
                .collect(),
        }
    }

    pub(crate) fn build_processor(
        &self,
        type_name: &str,
        options: &Json,
    ) -> Result<Arc<dyn Processor>, String> {
        let (_, factory) = self
            .processors
            .iter()
            .find(|(n, _)| n == type_name)
            .ok_or_else(|| format!("no processor type `{type_name}` is registered"))?;
        factory(options)
    }

    pub(crate) fn build_sink(
        &self,
        type_name: &str,
        options: &Json,
    ) -> Result<Arc<dyn Sink>, String> {
        let (_, factory) = self
            .sinks
            .iter()
            .find(|(n, _)| n == type_name)
            .ok_or_else(|| format!("no sink type `{type_name}` is registered"))?;
        factory(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_becomes_a_json_array() {
        let batch = Batch::new(Bytes::from_static(b"{\"a\":1}\n{\"b\":\"x\\ny\"}\n"), 2);
        assert_eq!(batch.to_json_array(), b"[{\"a\":1},{\"b\":\"x\\ny\"}]");
        assert_eq!(batch.lines().count(), 2);
        assert_eq!(Batch::new(Bytes::new(), 0).to_json_array(), b"[]");
    }

    #[test]
    fn a_registered_type_validates_its_options_through_its_factory() {
        struct Nothing;
        impl Processor for Nothing {
            fn process(&self, _: Event, _: &mut Vec<Event>) -> Result<(), ProcessError> {
                Ok(())
            }
        }
        let plugins = Plugins::new().processor("nothing", |options| {
            if options.get("level").is_some() {
                Ok(Arc::new(Nothing))
            } else {
                Err("`level` is required".to_owned())
            }
        });
        let extensions = plugins.extensions();
        let (name, validate) = &extensions.processors[0];
        assert_eq!(name, "nothing");
        assert_eq!(
            validate(&serde_json::json!({})),
            Err("`level` is required".to_owned())
        );
        assert_eq!(validate(&serde_json::json!({"level": 1})), Ok(()));
    }
}
