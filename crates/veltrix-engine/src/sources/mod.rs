//! Pull sources: everything but HTTP. Each runs as one task ([`RunningSource`]) that reads from
//! its upstream, stores through [`SourceContext::store`] — the same route-and-append path as HTTP
//! ingest — and acknowledges upstream only after the store returned (the events are then as
//! durable as their queue promises). A full backpressure queue pauses the source: it waits and
//! retries the same events instead of dropping them (`veltrix_source_pauses_total` counts the waits).
//!
//! Line sources (`file`, `stdin`) read NDJSON: `lines.rs` splits, `ndjson.rs` decodes a batch
//! and skips bad lines (counted), `file.rs` tails files with `checkpoint.rs`, `stdin.rs` reads
//! standard input and may ask the engine to stop at its end ([`SourceContext::request_exit`]).
//!
//! Shutdown: sources stop before pipelines. A source stops at its next await point; a store in
//! progress completes (or is refused) first, so nothing acknowledged upstream is lost.

mod checkpoint;
mod file;
mod generator;
mod lines;
mod nats;
mod ndjson;
mod stdin;

pub(crate) use nats::describe as describe_nats;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use veltrix_core::config::SourceConfig;
use veltrix_core::event::{Event, EventRef};

use crate::ingest::{self, Accepted, StoreError};
use crate::live::Live;
use crate::stats::SourceCounters;

/// First wait of a paused source; doubles up to [`PAUSE_MAX`].
const PAUSE_INITIAL: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_secs(1);

/// What a pull source gets: where to store, its counters and its stop signal.
pub(crate) struct SourceContext {
    pub(crate) name: String,
    live: Arc<Live>,
    counters: Arc<SourceCounters>,
    received: metrics::Counter,
    paused: metrics::Counter,
    /// Becomes `true` when the engine stops.
    pub(crate) stop: watch::Receiver<bool>,
    /// Asks the engine to stop, with the reason (see [`SourceContext::request_exit`]).
    exit: Option<Arc<watch::Sender<Option<String>>>>,
}

impl SourceContext {
    pub(crate) fn new(
        name: &str,
        live: Arc<Live>,
        counters: Arc<SourceCounters>,
        stop: watch::Receiver<bool>,
    ) -> SourceContext {
        SourceContext {
            name: name.to_owned(),
            live,
            counters,
            received: metrics::counter!("veltrix_events_received_total", "source" => name.to_owned()),
            paused: metrics::counter!("veltrix_source_pauses_total", "source" => name.to_owned()),
            stop,
            exit: None,
        }
    }

    /// Lets the source ask the engine to stop through `exit` (read by `Engine::exit_requested`).
    pub(crate) fn with_exit(mut self, exit: Arc<watch::Sender<Option<String>>>) -> SourceContext {
        self.exit = Some(exit);
        self
    }

    /// Asks the engine to shut down gracefully, as a signal would (a stdin source at the end of
    /// its input). The first reason given wins.
    pub(crate) fn request_exit(&self, reason: String) {
        if let Some(exit) = &self.exit {
            exit.send_if_modified(|current| {
                let first = current.is_none();
                if first {
                    *current = Some(reason);
                }
                first
            });
        }
    }

    /// Whether the engine is stopping.
    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Stores `events` (all or nothing), waiting while a backpressure queue is full. `Err` is a
    /// refusal that waiting cannot fix (unroutable or oversized events, storage failure), or
    /// [`StoreError::Closed`] when the engine stops while waiting; the events were not stored
    /// (for `Failed`, an earlier queue may hold its share: redelivery deduplicates by id).
    pub(crate) async fn store(&mut self, events: &[Event]) -> Result<Accepted, StoreError> {
        let result = self.store_waiting(events).await;
        if let Err(e) = &result {
            let reason = match e {
                StoreError::Unroutable(_) => "unroutable-events",
                StoreError::TooLarge { .. } => "event-too-large",
                StoreError::Full { .. } | StoreError::Closed => "unavailable",
                StoreError::Failed { .. } => "storage-failed",
            };
            self.reject(reason, events.len() as u64);
        }
        result
    }

    /// [`SourceContext::store`] without counting a refusal: for sources that sort out which of
    /// the events were at fault and count those ([`SourceContext::reject`]).
    pub(crate) async fn store_waiting(&mut self, events: &[Event]) -> Result<Accepted, StoreError> {
        let views: Vec<EventRef<'_>> = events.iter().map(EventRef::from).collect();
        let mut pause = PAUSE_INITIAL;
        loop {
            match ingest::store(&self.live, &views).await {
                Ok(accepted) => {
                    self.received.increment(accepted.accepted as u64);
                    self.counters
                        .received
                        .fetch_add(accepted.accepted as u64, Ordering::Relaxed);
                    return Ok(accepted);
                }
                Err(StoreError::Full { .. }) if !self.stopping() => {
                    self.paused.increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.stop.changed() => return Err(StoreError::Closed),
                    }
                    pause = (pause * 2).min(PAUSE_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Counts `events` refused for `reason` (`veltrix_events_rejected_total` and the stats).
    pub(crate) fn reject(&self, reason: &'static str, events: u64) {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("veltrix_events_rejected_total", "source" => self.name.clone(), "reason" => reason)
            .increment(events);
    }

    /// Whether some queue takes events of type `ty` (as routing stands now; a reload may change
    /// it before the next store).
    pub(crate) fn routes(&self, ty: &str) -> bool {
        self.live.routing().router.route(ty).is_some()
    }
}

/// Help text of the line sources' own metrics (called with the engine's other descriptions).
pub(crate) fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        "veltrix_source_files_open",
        Unit::Count,
        "Files a file source has open (tailing, or finishing after a rotation)."
    );
    describe_gauge!(
        "veltrix_source_files_waiting",
        Unit::Count,
        "Matching files a file source does not read yet: more than open_files_max match."
    );
    describe_gauge!(
        "veltrix_source_lag_bytes",
        Unit::Bytes,
        "Bytes of a file source's open files not yet stored (file sizes minus read positions)."
    );
    describe_counter!(
        "veltrix_source_file_rotations_total",
        Unit::Count,
        "Rotations a file source followed, by kind: rename (a new file took the path) or truncate (copytruncate: read again from the start)."
    );
}

/// A started pull source.
pub(crate) struct RunningSource {
    pub(crate) name: String,
    task: JoinHandle<()>,
}

impl RunningSource {
    /// Starts the pull source `config` (`None` for HTTP, which the engine serves itself).
    pub(crate) fn start(config: &SourceConfig, ctx: SourceContext) -> Option<RunningSource> {
        let name = ctx.name.clone();
        let task = match config {
            SourceConfig::Http(_) => return None,
            SourceConfig::Generator(g) => tokio::spawn(generator::run(g.clone(), ctx)),
            SourceConfig::File(f) => file::start(f.clone(), ctx),
            SourceConfig::Stdin(s) => stdin::start(s.clone(), ctx),
            SourceConfig::Nats(n) => tokio::spawn(nats::run(n.clone(), ctx)),
        };
        Some(RunningSource { name, task })
    }

    /// Waits for the source to finish after the stop signal, at most until `deadline`.
    pub(crate) async fn join(self, deadline: tokio::time::Instant) {
        let mut task = self.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            tracing::warn!(source = %self.name, "a source did not stop in time");
            task.abort();
        }
    }
}
