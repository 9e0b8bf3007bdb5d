//! A running pipeline: `workers` tasks sharing one reader over the pipeline's cursors (one per
//! queue it reads, each named after the pipeline, so pipelines on the same queue never share a
//! position, a retry or a backlog). A worker takes a batch, runs the chain, hands the result to
//! the sinks, and acknowledges the batch to its queue only once every sink confirmed its part or
//! the failed events are durably in the dead-letter queue.
//!
//! Scheduling: the reader holds at most one read-ahead batch per queue and serves the most urgent
//! queue that has events — unless a batch of a less urgent queue has waited `starvation_max`
//! since its oldest event was accepted: then the longest-waiting such batch goes first. So under
//! a flood of urgent events, a less urgent event waits at most about `starvation_max` plus one
//! batch per starving queue.
//!
//! Batching: without a `batch` processor a worker delivers each read (at most
//! `batch_events_max` events) as it comes. With one, a worker keeps what it processed across
//! reads — records and their output, acknowledgements held — until it has `max_events` records
//! or `max_bytes` of output, or `max_wait` has passed since its first record, then delivers
//! once; each sink write carries at most `max_events` events and `max_bytes` (a single larger
//! event goes alone). Memory per worker: `max_bytes` of output plus one read (at most
//! `batch_events_max` records and 4 MiB).
//!
//! Routes: the chain splits the output into one part per sink (the pipeline's `sink` and the
//! routes' sinks). The parts are delivered concurrently, each with the sink's own retries; a part
//! that fails for good dead-letters the records it holds (naming that sink), the others are
//! delivered, and the batch is acknowledged once every part is done. One pipeline keeps one
//! cursor per queue whatever its routes: a slow route's sink holds the batch, and with it the
//! pipeline's progress (as one sink does); give a sink its own pipeline when it must not.
//!
//! Retries: retryable sink errors are retried up to `attempts_max` attempts in all, waiting a
//! random time in `[0, min(backoff_max, backoff_initial × 2^n)]` (full jitter; at least the
//! sink's `Retry-After`, capped at `backoff_max`). Permanent errors and exhausted retries
//! dead-letter the write's events; so does a processor failing on an event.
//!
//! Poison events: when the sink blames the data of a write of several events, the write is
//! split and the parts delivered in order, recursively, so only the events it blames alone are
//! dead-lettered and the rest are delivered (`veltrix_sink_batch_splits_total`). Blaming is a
//! permanent error (4xx, a PostgreSQL data or constraint error, ...: split in halves at once,
//! not retried) or an HTTP 500 (a receiver failing on what it got: after the backoff wait, the
//! events are resent in `k` parts instead of whole; a part is split again only while the sink
//! accepted some write since the batch's first attempt, so a receiver answering 500 to
//! everything costs one split, not a cascade of waits). Every send counts as an attempt for each
//! event in it, so a retried event is sent exactly `attempts_max` times in all, whole or split:
//! `k` is chosen so that `k^(attempts left) ≥ events`, and a poison event stands alone for its
//! last attempt. Unavailability (timeouts, connection errors, 429, 502–504) is retried whole:
//! it does not name a culprit, and splitting an outage would multiply its waits. Head-of-line
//! delay for one batch is at most `attempts_max × (backoff_max + sink timeout)`, plus, for each
//! blamed part, its sibling parts' writes; other workers keep delivering meanwhile. Ordering:
//! none across batches when `workers > 1`.
//!
//! Aggregates: events an aggregate consumes are acknowledged by the pipeline's emitter task once
//! their window's derived events are durably in the `into` queue (see `processors/aggregate.rs`
//! for the loss window). The emitter wakes at every window close and at stop.
//!
//! Shutdown: the stop signal ends waiting for input and retry waits at once; a worker delivers
//! what it holds with one attempt per part; an unfinished batch is left unacknowledged and is
//! delivered again at the next start. The emitter emits the windows that have closed; the open
//! one's events stay unacknowledged and come back at the next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{join_all, select_all};
use rand::Rng;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use veltrix_core::config::{BatchConfig, RetryConfig};
use veltrix_log::{Acker, Cursor, Record};

use crate::deadletter::{DeadLetters, Failure};
use crate::handler::{Batch, Retry, Sink};
use crate::ingest::{self, StoreError};
use crate::live::Live;
use crate::processors::{AggregateStep, Chain, Closed, HeldAck, Input as ChainInput, Outcome};
use crate::processors::{Output, Scratch};
use crate::record;
use crate::stats::{PipelineCounters, SinkCounters};

/// Failpoint between a batch's delivery (or dead-lettering) and its acknowledgement.
#[cfg(feature = "failpoints")]
pub const DELIVERED_BEFORE_ACK: &str = "veltrix-engine/pipeline/delivered-before-ack";
/// Payload bytes one worker takes at once, besides `batch_events_max`.
const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// At most one warning line per this period per pipeline for per-event problems.
const WARN_EVERY: Duration = Duration::from_secs(1);
/// Wait between attempts to put events into a full dead-letter queue (or `into` queue).
const DLQ_FULL_WAIT: Duration = Duration::from_millis(500);

/// One queue read by a pipeline.
pub(crate) struct Input {
    pub(crate) queue: String,
    pub(crate) priority: u8,
    pub(crate) cursor: Cursor,
}

/// One sink of a pipeline, as it is handed to the pipeline.
pub(crate) struct SinkTarget {
    pub(crate) name: String,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) counters: Arc<SinkCounters>,
}

/// The cursors of a pipeline, most urgent first, with one read-ahead batch each.
struct Reader {
    inputs: Vec<Input>,
    ahead: Vec<Option<Vec<Record>>>,
    starvation_max: Duration,
}

/// What a read gave.
enum Read {
    /// Records from input number `.0`.
    Batch(usize, Vec<Record>),
    /// The caller's deadline passed first.
    Deadline,
    /// The stop signal (or a failed queue: logged).
    Stop,
}

impl Reader {
    /// Which read-ahead batch to serve: the most urgent, unless a batch of a less urgent queue
    /// has waited `starvation_max` (then the longest-waiting such batch). The most urgent queue
    /// never counts as starving: priority serves it anyway, and a backlog of its own must not
    /// block the starvation bound of the others.
    fn pick(&self) -> Option<usize> {
        let top = (0..self.ahead.len()).find(|&i| self.ahead[i].is_some())?;
        let bound = self.starvation_max.as_secs_f64();
        let starving = (top + 1..self.ahead.len())
            .filter_map(|i| {
                self.ahead[i]
                    .as_ref()
                    .map(|b| (record::split(&b[0].payload).0, i))
            })
            .filter(|(accepted, _)| record::age_seconds(*accepted) >= bound)
            .min();
        Some(starving.map_or(top, |(_, i)| i))
    }

    /// The next batch of at most `max` records, waiting until `deadline` at most.
    async fn next(
        &mut self,
        max: usize,
        stop: &mut watch::Receiver<bool>,
        deadline: Option<tokio::time::Instant>,
        pipeline: &str,
    ) -> Read {
        loop {
            if *stop.borrow() {
                return Read::Stop;
            }
            for (i, input) in self.inputs.iter_mut().enumerate() {
                if self.ahead[i].is_some() {
                    continue;
                }
                match input.cursor.try_read_batch(max, BATCH_BYTES_MAX) {
                    Ok(records) if !records.is_empty() => self.ahead[i] = Some(records),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(pipeline, queue = %input.queue, error = %e, "reading the queue failed; pipeline stops");
                        return Read::Stop;
                    }
                }
            }
            if let Some(i) = self.pick() {
                let mut batch = self.ahead[i].take().expect("picked");
                // A read-ahead batch larger than the caller has room for: keep the rest.
                if batch.len() > max {
                    let rest = batch.split_off(max);
                    self.ahead[i] = Some(rest);
                }
                return Read::Batch(i, batch);
            }
            let waits = self.inputs.iter_mut().map(|i| Box::pin(i.cursor.wait()));
            let deadline = deadline.unwrap_or_else(far_future);
            tokio::select! {
                _ = select_all(waits) => {}
                _ = stop.changed() => return Read::Stop,
                _ = tokio::time::sleep_until(deadline) => return Read::Deadline,
            }
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// One sink of the pipeline with its metric handles.
struct SinkSlot {
    name: String,
    sink: Arc<dyn Sink>,
    counters: Arc<SinkCounters>,
    metrics: SinkMetrics,
    /// When a write to this sink last succeeded (µs since the epoch; any worker): evidence that
    /// a 500 blames the data rather than a broken receiver.
    last_success_micros: AtomicU64,
}

/// Everything a worker shares with its siblings.
struct Shared {
    name: String,
    reader: Mutex<Reader>,
    /// Per input: its queue name and acknowledger.
    ackers: Vec<(String, Acker)>,
    chain: Chain,
    /// Index 0 is the pipeline's `sink`, then the routes' sinks (the chain's output parts).
    sinks: Vec<SinkSlot>,
    dead_letters: Arc<DeadLetters>,
    batch_events_max: usize,
    batch: Option<BatchConfig>,
    retry: RetryConfig,
    counters: Arc<PipelineCounters>,
    live: Arc<Live>,
    last_warning: std::sync::Mutex<Option<Instant>>,
    metrics: Metrics,
}

impl Shared {
    /// Logs a per-event problem, at most once per `WARN_EVERY`.
    fn warn_rate_limited(&self, what: &str, detail: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(pipeline = %self.name, detail, "{what} (more in the next second are counted, not logged)");
        }
    }

    fn add_busy(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.counters
            .busy_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    fn count(&self, what: Counted, n: u64) {
        let counter = match what {
            Counted::Delivered => Some(&self.counters.delivered),
            Counted::Filtered => Some(&self.counters.filtered),
            Counted::DeadLettered => Some(&self.counters.dead_lettered),
            Counted::Aggregated => Some(&self.counters.aggregated),
            Counted::Retried => None, // the stats count retries per attempt
        };
        if let Some(counter) = counter {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        if n > 0 {
            self.metrics.events[what as usize].increment(n);
        }
    }
}

/// What became of a pipeline's events (the `outcome` label of `veltrix_pipeline_events_total`).
#[derive(Debug, Clone, Copy)]
enum Counted {
    Delivered,
    /// Dropped by a processor (filter, dedupe, throttle, sample, custom).
    Filtered,
    DeadLettered,
    /// Each retry of a batch counts its events.
    Retried,
    /// Consumed by an aggregate.
    Aggregated,
}

/// The pipeline's metric handles, resolved once at start: the hot path records into them
/// without building label sets per batch.
struct Metrics {
    events: [metrics::Counter; 5],
    retries: metrics::Counter,
    processing: metrics::Histogram,
    e2e: metrics::Histogram,
}

impl Metrics {
    fn new(pipeline: &str) -> Metrics {
        let p = pipeline.to_owned();
        let events = ["delivered", "filtered", "dead_lettered", "retried", "aggregated"]
            .map(|outcome| metrics::counter!("veltrix_pipeline_events_total", "pipeline" => p.clone(), "outcome" => outcome));
        Metrics {
            events,
            retries: metrics::counter!("veltrix_pipeline_retries_total", "pipeline" => p.clone()),
            processing: metrics::histogram!("veltrix_pipeline_processing_duration_seconds", "pipeline" => p.clone()),
            e2e: metrics::histogram!("veltrix_e2e_latency_seconds", "pipeline" => p),
        }
    }
}

/// One sink's metric handles in one pipeline.
struct SinkMetrics {
    batch_events: metrics::Histogram,
    ok: metrics::Counter,
    duration: metrics::Histogram,
    in_flight: metrics::Gauge,
    /// `veltrix_pipeline_sink_events_total{outcome="delivered"|"dead_lettered"}`.
    delivered: metrics::Counter,
    dead_lettered: metrics::Counter,
    /// `veltrix_sink_batch_splits_total`: writes split in two to isolate a poison event.
    splits: metrics::Counter,
}

impl SinkMetrics {
    fn new(pipeline: &str, sink: &str) -> SinkMetrics {
        let (p, s) = (pipeline.to_owned(), sink.to_owned());
        SinkMetrics {
            batch_events: metrics::histogram!("veltrix_sink_batch_events", "sink" => s.clone()),
            ok: metrics::counter!("veltrix_sink_requests_total", "sink" => s.clone(), "outcome" => "ok", "status" => "ok"),
            duration: metrics::histogram!("veltrix_sink_request_duration_seconds", "sink" => s.clone()),
            in_flight: metrics::gauge!("veltrix_sink_in_flight_requests", "sink" => s.clone()),
            delivered: metrics::counter!("veltrix_pipeline_sink_events_total", "pipeline" => p.clone(), "sink" => s.clone(), "outcome" => "delivered"),
            dead_lettered: metrics::counter!("veltrix_pipeline_sink_events_total", "pipeline" => p.clone(), "sink" => s.clone(), "outcome" => "dead_lettered"),
            splits: metrics::counter!("veltrix_sink_batch_splits_total", "pipeline" => p, "sink" => s),
        }
    }
}

/// How a pipeline is set up (from its config, with its queues, sinks and DLQ opened).
pub(crate) struct Setup {
    pub(crate) name: String,
    pub(crate) inputs: Vec<Input>,
    pub(crate) chain: Chain,
    /// The pipeline's `sink` first, then the routes' sinks, as the chain's output parts.
    pub(crate) sinks: Vec<SinkTarget>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) workers: usize,
    pub(crate) batch_events_max: usize,
    pub(crate) batch: Option<BatchConfig>,
    pub(crate) starvation_max: Duration,
    pub(crate) retry: RetryConfig,
    pub(crate) counters: Arc<PipelineCounters>,
    /// Where an aggregate finds its `into` queue.
    pub(crate) live: Arc<Live>,
}

/// A started pipeline; [`Pipeline::join`] waits for it after the stop signal.
pub(crate) struct Pipeline {
    pub(crate) name: String,
    workers: Vec<JoinHandle<()>>,
}

impl Pipeline {
    pub(crate) fn start(setup: Setup, stop: &watch::Receiver<bool>) -> Pipeline {
        let Setup {
            name,
            mut inputs,
            chain,
            sinks,
            dead_letters,
            workers,
            batch_events_max,
            batch,
            starvation_max,
            retry,
            counters,
            live,
        } = setup;
        assert_eq!(sinks.len(), chain.sinks(), "one sink per output part");
        inputs.sort_by_key(|i| i.priority);
        let ackers = inputs
            .iter()
            .map(|i| (i.queue.clone(), i.cursor.acker()))
            .collect();
        let ahead = inputs.iter().map(|_| None).collect();
        let sinks = sinks
            .into_iter()
            .map(|t| SinkSlot {
                metrics: SinkMetrics::new(&name, &t.name),
                name: t.name,
                sink: t.sink,
                counters: t.counters,
                last_success_micros: AtomicU64::new(0),
            })
            .collect();
        let shared = Arc::new(Shared {
            name: name.clone(),
            reader: Mutex::new(Reader {
                inputs,
                ahead,
                starvation_max,
            }),
            ackers,
            chain,
            sinks,
            dead_letters,
            batch_events_max,
            batch,
            retry,
            counters,
            live,
            last_warning: std::sync::Mutex::new(None),
            metrics: Metrics::new(&name),
        });
        let mut tasks: Vec<JoinHandle<()>> = (0..workers.max(1))
            .map(|_| tokio::spawn(work(shared.clone(), stop.clone())))
            .collect();
        if shared.chain.aggregate().is_some() {
            tasks.push(tokio::spawn(emit(shared.clone(), stop.clone())));
        }
        Pipeline {
            name,
            workers: tasks,
        }
    }

    /// Waits for the workers to finish after the stop signal, at most until `deadline`; workers
    /// still busy then are aborted (their batch is not acknowledged and will be redelivered).
    pub(crate) async fn join(self, deadline: tokio::time::Instant) {
        for mut worker in self.workers {
            if tokio::time::timeout_at(deadline, &mut worker)
                .await
                .is_err()
            {
                tracing::warn!(pipeline = %self.name, "a worker did not finish in time; its batch will be redelivered");
                worker.abort();
            }
        }
    }
}

/// What became of one record of the pending batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its events are in the output, waiting for delivery.
    Emitted,
    /// Dropped by a processor: acknowledge with the batch.
    Dropped,
    /// Consumed by an aggregate, whose window acknowledges it.
    Aggregated,
    /// Dead-lettered (its entry is in `Pending::dead`).
    Dead,
}

/// A worker's batch in the making: the records read since its last delivery and their output.
struct Pending {
    /// Per record: the input it came from, the record, and what became of it.
    records: Vec<(usize, Record, State)>,
    output: Output,
    /// Dead-letter entries of records a processor failed on.
    dead: Vec<Vec<u8>>,
    filtered: u64,
    aggregated: u64,
    /// When the first record came.
    started: Option<tokio::time::Instant>,
}

impl Pending {
    fn new(sinks: usize) -> Pending {
        Pending {
            records: Vec::new(),
            output: Output::new(sinks),
            dead: Vec::new(),
            filtered: 0,
            aggregated: 0,
            started: None,
        }
    }

    fn clear(&mut self) {
        self.records.clear();
        self.output.clear();
        self.dead.clear();
        self.filtered = 0;
        self.aggregated = 0;
        self.started = None;
    }
}

/// Reads the next batch, giving up at `deadline` (also while another worker holds the reader).
async fn read(
    shared: &Shared,
    max: usize,
    deadline: Option<tokio::time::Instant>,
    stop: &mut watch::Receiver<bool>,
) -> Read {
    let mut reader = match deadline {
        Some(deadline) => tokio::select! {
            reader = shared.reader.lock() => reader,
            _ = tokio::time::sleep_until(deadline) => return Read::Deadline,
        },
        None => shared.reader.lock().await,
    };
    reader.next(max, stop, deadline, &shared.name).await
}

async fn work(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut scratch = shared.chain.scratch();
    let mut pending = Pending::new(shared.sinks.len());
    loop {
        let (max, deadline) = match &shared.batch {
            None => (shared.batch_events_max, None),
            Some(b) => (
                shared
                    .batch_events_max
                    .min(b.max_events.saturating_sub(pending.records.len()))
                    .max(1),
                pending.started.map(|s| s + b.max_wait),
            ),
        };
        match read(&shared, max, deadline, &mut stop).await {
            Read::Batch(input, records) => {
                process(&shared, &mut scratch, &mut pending, input, records);
                let full = shared.batch.as_ref().is_none_or(|b| {
                    pending.records.len() >= b.max_events
                        || pending.output.bytes() >= b.max_bytes.bytes() as usize
                });
                if full && !flush(&shared, &mut scratch, &mut pending, &mut stop).await {
                    return;
                }
            }
            Read::Deadline => {
                if !flush(&shared, &mut scratch, &mut pending, &mut stop).await {
                    return;
                }
            }
            Read::Stop => {
                if !pending.records.is_empty() {
                    flush(&shared, &mut scratch, &mut pending, &mut stop).await;
                }
                return;
            }
        }
    }
}

/// Runs the chain on a read batch, adding its records and output to `pending`.
fn process(
    shared: &Shared,
    scratch: &mut Scratch,
    pending: &mut Pending,
    input: usize,
    records: Vec<Record>,
) {
    let processing = Instant::now();
    let queue = &shared.ackers[input].0;
    pending
        .started
        .get_or_insert_with(tokio::time::Instant::now);
    for r in records {
        let index = u32::try_from(pending.records.len()).expect("a pending batch is bounded");
        let parts = record::parts(&r.payload);
        let chain_input = ChainInput {
            owner: Some(&r.payload),
            body: parts.body,
            members: parts.members,
            index,
            ack: Some(HeldAck {
                input,
                offset: r.offset,
            }),
        };
        let state = match shared
            .chain
            .apply(&chain_input, scratch, &mut pending.output)
        {
            Outcome::Emitted(_) => State::Emitted,
            Outcome::Filtered { .. } => {
                pending.filtered += 1;
                State::Dropped
            }
            Outcome::Aggregated => {
                pending.aggregated += 1;
                State::Aggregated
            }
            Outcome::DeadLetter { reason, error } => {
                shared.warn_rate_limited("an event failed processing; dead-lettered", &error);
                let now = record::now_micros();
                let failure = Failure {
                    reason,
                    attempts: 1,
                    last_error: &error,
                    first_attempt_micros: now,
                    last_attempt_micros: now,
                    sink: None,
                };
                pending
                    .dead
                    .push(shared.dead_letters.entry(queue, &r.payload, &failure));
                State::Dead
            }
        };
        pending.records.push((input, r, state));
    }
    shared.chain.publish(scratch);
    let processed = processing.elapsed();
    shared.metrics.processing.record(processed.as_secs_f64());
    shared.add_busy(processed);
}

/// Lines `first..last` of a part.
type Lines = (usize, usize);

/// The line ranges of each sink write of a part: at most `max_events` lines and `max_bytes`
/// bytes each (a line larger than `max_bytes` alone).
fn chunks(ends: &[usize], max_events: usize, max_bytes: usize) -> Vec<Lines> {
    let mut out = Vec::new();
    let (mut first, mut first_byte) = (0, 0);
    for (i, &end) in ends.iter().enumerate() {
        let lines = i + 1 - first;
        if lines > 1 && (lines > max_events || end - first_byte > max_bytes) {
            out.push((first, i));
            first_byte = ends[i - 1];
            first = i;
        }
    }
    if first < ends.len() {
        out.push((first, ends.len()));
    }
    out
}

/// A write still to do: lines `lines` of a part, whose events have already been sent
/// `attempts` times (in larger writes that were split), the first time at `since`.
struct Todo {
    lines: Lines,
    attempts: u32,
    since: Option<u64>,
}

/// How one sink write went.
enum Written {
    Delivered,
    /// The sink blamed the data (refused it for good, or answered 500) on a write of several
    /// events: split it and send the parts, each event having been sent `attempts` times.
    Split {
        attempts: u32,
        permanent: bool,
        since: u64,
    },
    /// Failed for good.
    Failed {
        reason: &'static str,
        attempts: u32,
        last_error: String,
        first: u64,
        last: u64,
    },
    /// The stop signal came first.
    Stopped,
}

/// Delivers everything pending (each sink's part concurrently), dead-letters what failed for
/// good, acknowledges the records. Returns `false` when the stop signal came first (nothing is
/// acknowledged then: it will be delivered again).
async fn flush(
    shared: &Shared,
    scratch: &mut Scratch,
    pending: &mut Pending,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let (max_events, max_bytes) = shared.batch.as_ref().map_or((usize::MAX, usize::MAX), |b| {
        (b.max_events, b.max_bytes.bytes() as usize)
    });
    // Per sink: its part as shared bytes (sliced per write without copying) and the writes.
    let parts: Vec<(usize, Bytes, Vec<Lines>)> = pending
        .output
        .parts
        .iter_mut()
        .enumerate()
        .filter(|(_, p)| p.lines() > 0)
        .map(|(i, p)| {
            let writes = chunks(&p.ends, max_events, max_bytes);
            (i, Bytes::from(std::mem::take(&mut p.ndjson)), writes)
        })
        .collect();
    let deliveries = parts.iter().map(|(sink, bytes, writes)| {
        let mut stop = stop.clone();
        let ends = &pending.output.parts[*sink].ends;
        async move {
            let slot = &shared.sinks[*sink];
            let mut results = Vec::with_capacity(writes.len());
            // Writes still to do, next last; a write whose data the sink blames is split into
            // parts (in order) until the blamed events stand alone (see the module comment).
            let mut todo: Vec<Todo> = writes
                .iter()
                .rev()
                .map(|&lines| Todo {
                    lines,
                    attempts: 0,
                    since: None,
                })
                .collect();
            while let Some(Todo {
                lines: (first, last),
                attempts,
                since,
            }) = todo.pop()
            {
                let start = if first == 0 { 0 } else { ends[first - 1] };
                let batch = Batch::new(bytes.slice(start..ends[last - 1]), last - first);
                let written = deliver(shared, slot, &batch, &mut stop, attempts, since).await;
                if let Written::Split {
                    attempts,
                    permanent,
                    since,
                } = written
                {
                    slot.metrics.splits.increment(1);
                    let left = shared.retry.attempts_max.saturating_sub(attempts);
                    let size = (last - first).div_ceil(split_parts(last - first, permanent, left));
                    let starts: Vec<usize> = (first..last).step_by(size).collect();
                    todo.extend(starts.into_iter().rev().map(|s| Todo {
                        lines: (s, (s + size).min(last)),
                        attempts,
                        since: Some(since),
                    }));
                    continue;
                }
                let stopped = matches!(written, Written::Stopped);
                results.push(((first, last), written));
                if stopped {
                    break;
                }
            }
            (*sink, results)
        }
    });
    let results = join_all(deliveries).await;
    if results
        .iter()
        .any(|(_, writes)| writes.iter().any(|(_, w)| matches!(w, Written::Stopped)))
    {
        return false;
    }

    let mut delivered = 0u64;
    for (sink, writes) in &results {
        let slot = &shared.sinks[*sink];
        let owners = &pending.output.parts[*sink].owners;
        for ((first, last), written) in writes {
            let lines = (last - first) as u64;
            match written {
                Written::Delivered => {
                    delivered += lines;
                    slot.metrics.delivered.increment(lines);
                    shared.counters.add_sink_delivered(*sink, lines);
                }
                Written::Failed {
                    reason,
                    attempts,
                    last_error,
                    first: first_micros,
                    last: last_micros,
                } => {
                    shared.warn_rate_limited("a batch failed for good; dead-lettered", last_error);
                    slot.metrics.dead_lettered.increment(lines);
                    let failure = Failure {
                        reason,
                        attempts: *attempts,
                        last_error,
                        first_attempt_micros: *first_micros,
                        last_attempt_micros: *last_micros,
                        sink: Some(&slot.name),
                    };
                    for &owner in &owners[*first..*last] {
                        let (input, r, state) = &mut pending.records[owner as usize];
                        if *state != State::Dead {
                            *state = State::Dead;
                            let queue = &shared.ackers[*input].0;
                            pending
                                .dead
                                .push(shared.dead_letters.entry(queue, &r.payload, &failure));
                        }
                    }
                }
                Written::Stopped | Written::Split { .. } => unreachable!("handled above"),
            }
        }
    }
    shared.count(Counted::Delivered, delivered);
    let confirmed: Vec<&Record> = pending
        .records
        .iter()
        .filter(|(_, _, s)| *s == State::Emitted)
        .map(|(_, r, _)| r)
        .collect();
    if !confirmed.is_empty() {
        let now = record::now_micros();
        for r in &confirmed {
            shared
                .metrics
                .e2e
                .record(now.saturating_sub(record::split(&r.payload).0) as f64 / 1e6);
        }
        shared
            .counters
            .record_latencies(confirmed.iter().map(|r| record::split(&r.payload).0));
        trace_deliveries(shared, &confirmed);
    }
    let records = &pending.records;
    shared
        .chain
        .settle(scratch, |i| records[i as usize].2 == State::Dead);
    shared.count(Counted::Filtered, pending.filtered);
    shared.count(Counted::Aggregated, pending.aggregated);
    if !pending.dead.is_empty() {
        if !dead_letter(shared, &pending.dead, stop).await {
            return false;
        }
        shared.count(Counted::DeadLettered, pending.dead.len() as u64);
    }
    // Acknowledge per input; an aggregated record is its window's to acknowledge.
    let mut offsets: HashMap<usize, Vec<u64>> = HashMap::new();
    for (input, r, state) in &pending.records {
        if *state != State::Aggregated {
            offsets.entry(*input).or_default().push(r.offset);
        }
    }
    pending.clear();
    for (input, offsets) in offsets {
        if !acknowledge(shared, input, &offsets) {
            return false;
        }
    }
    true
}

/// Acknowledges `offsets` of input `input`; `false` when the queue failed (logged).
fn acknowledge(shared: &Shared, input: usize, offsets: &[u64]) -> bool {
    // Failpoint (feature `failpoints`; a no-op without it): armed with `return`, the process
    // dies right here, the sink holding the batch and the queue not knowing it — the crash
    // that at-least-once must turn into a redelivery, never a loss.
    #[cfg(feature = "failpoints")]
    fail::fail_point!(DELIVERED_BEFORE_ACK, |_| std::process::abort());
    match shared.ackers[input].1.ack_many(offsets) {
        // A `drop_oldest` queue discarded the segment under us: nothing left to acknowledge.
        Ok(()) | Err(veltrix_log::Error::NotInFlight(_)) => true,
        Err(e) => {
            tracing::error!(pipeline = %shared.name, error = %e, "acknowledging a delivered batch failed");
            false
        }
    }
}

/// One span per delivered event (`veltrix::event`, enabled only when spans are exported), so an
/// event can be followed from ingest to sink by its id.
fn trace_deliveries(shared: &Shared, delivered: &[&Record]) {
    if !tracing::enabled!(target: "veltrix::event", tracing::Level::TRACE) {
        return;
    }
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: &'a str,
    }
    for r in delivered {
        let id = serde_json::from_slice::<Id<'_>>(record::split(&r.payload).1).map_or("", |i| i.id);
        let _span = tracing::trace_span!(target: "veltrix::event", "veltrix.deliver", event.id = id, pipeline = %shared.name).entered();
    }
}

/// Upper bound of the wait before retry `n` (1-based): `backoff_initial × 2^(n-1)`, capped.
fn backoff_cap(retry: &RetryConfig, n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(30));
    retry
        .backoff_initial
        .saturating_mul(factor)
        .min(retry.backoff_max)
}

/// Into how many parts a write of `events` the sink blamed is split: halves when it refused them
/// for good (no retry budget involved), else `k` parts with `k^left ≥ events`, so that the
/// blamed events stand alone by the time their `left` remaining attempts run out.
fn split_parts(events: usize, permanent: bool, left: u32) -> usize {
    if permanent || left == 0 {
        return 2.min(events);
    }
    let mut k = 2usize;
    while k < events && k.saturating_pow(left) < events {
        k += 1;
    }
    k.min(events)
}

/// Writes one batch to one sink with retries; see the module comment. Its events have been
/// sent `attempts_before` times already (in a write that was split, first at `since`).
async fn deliver(
    shared: &Shared,
    slot: &SinkSlot,
    batch: &Batch,
    stop: &mut watch::Receiver<bool>,
    attempts_before: u32,
    since: Option<u64>,
) -> Written {
    let events = batch.len() as u64;
    slot.metrics.batch_events.record(events as f64);
    let first = since.unwrap_or_else(record::now_micros);
    let mut attempt = attempts_before;
    loop {
        attempt += 1;
        let started = Instant::now();
        slot.metrics.in_flight.increment(1.0);
        let result = slot.sink.write(batch).await;
        slot.metrics.in_flight.decrement(1.0);
        slot.counters
            .record_request(result.is_ok(), started.elapsed());
        shared.add_busy(started.elapsed());
        slot.metrics
            .duration
            .record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(()) => {
                slot.metrics.ok.increment(1);
                slot.last_success_micros
                    .store(record::now_micros(), Ordering::Relaxed);
                return Written::Delivered;
            }
            Err(e) => e,
        };
        // A failure: `status` is the downstream's code (http), or "error" when it never answered.
        let outcome = if error.retry == Retry::Permanent {
            "permanent"
        } else {
            "retryable"
        };
        let status = error
            .status
            .map_or_else(|| "error".to_owned(), |s| s.to_string());
        metrics::counter!("veltrix_sink_requests_total", "sink" => slot.name.clone(), "outcome" => outcome, "status" => status).increment(1);
        let failed = |reason| Written::Failed {
            reason,
            attempts: attempt,
            last_error: error.message.clone(),
            first,
            last: record::now_micros(),
        };
        let several = batch.len() > 1;
        let after = match error.retry {
            Retry::Permanent if several => {
                return Written::Split {
                    attempts: attempt,
                    permanent: true,
                    since: first,
                };
            }
            Retry::Permanent => return failed("permanent sink error"),
            Retry::Retryable { .. } if attempt >= shared.retry.attempts_max => {
                return failed("retries exhausted");
            }
            Retry::Retryable { after } => after,
        };
        shared.metrics.retries.increment(1);
        shared.count(Counted::Retried, events);
        shared.warn_rate_limited("the sink failed; retrying", &error.message);
        let cap = backoff_cap(&shared.retry, attempt);
        let jitter = rand::rng().random_range(Duration::ZERO..=cap);
        let wait = after
            .map_or(jitter, |a| a.max(jitter))
            .min(shared.retry.backoff_max);
        if *stop.borrow() {
            return Written::Stopped;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return Written::Stopped,
        }
        // A receiver that answers 500 failed on what it was given (an unavailable one answers
        // 502–504, 429 or nothing): resend the events in smaller writes rather than all again —
        // once for a whole write, and again for a part only while the sink keeps accepting other
        // writes (a receiver answering 500 to everything is broken, not fed poison).
        let accepting = slot.last_success_micros.load(Ordering::Relaxed) >= first;
        if several && error.status == Some(500) && (attempts_before == 0 || accepting) {
            return Written::Split {
                attempts: attempt,
                permanent: false,
                since: first,
            };
        }
    }
}

/// Puts entries into the dead-letter queue, waiting while it is full. Returns `false` on stop.
async fn dead_letter(
    shared: &Shared,
    entries: &[Vec<u8>],
    stop: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        let result = match shared.dead_letters.log.append_batch(entries) {
            Ok(ticket) => ticket.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => return true,
            Err(e) => {
                shared.warn_rate_limited(
                    "the dead-letter queue cannot take entries; waiting",
                    &e.to_string(),
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(DLQ_FULL_WAIT) => {}
            _ = stop.changed() => return false,
        }
    }
}

/// The aggregate's emitter: at every window close (and at stop), appends the closed windows'
/// derived events to the `into` queue, then acknowledges the events those windows held.
async fn emit(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let aggregate = shared.chain.aggregate().expect("started for an aggregate");
    loop {
        let now = record::now_micros();
        let wait = Duration::from_micros(aggregate.next_close(now).saturating_sub(now));
        let stopping = *stop.borrow()
            || tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = stop.changed() => true,
            };
        for window in aggregate.take_closed(record::now_micros()) {
            if !emit_window(&shared, aggregate, window, &mut stop, !stopping).await {
                return;
            }
        }
        if stopping {
            return;
        }
    }
}

/// Appends one closed window's events durably, then acknowledges what it held. With `patient`,
/// waits while `into` is full; otherwise (stopping) gives up at once — the window's events are
/// not acknowledged then, so they come back at the next start. `false`: gave up.
async fn emit_window(
    shared: &Shared,
    aggregate: &AggregateStep,
    window: Closed,
    stop: &mut watch::Receiver<bool>,
    patient: bool,
) -> bool {
    let now = record::now_micros();
    let records: Vec<Vec<u8>> = window
        .events
        .iter()
        .map(|event| {
            let mut stored = Vec::with_capacity(event.len() + 8);
            record::begin(&mut stored, now);
            stored.extend_from_slice(event);
            stored
        })
        .collect();
    let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    loop {
        let queue = shared
            .live
            .routing()
            .queues
            .iter()
            .find(|q| q.name == aggregate.into())
            .cloned();
        let result = match &queue {
            Some(queue) => ingest::append_to(queue, &slices).await,
            None => Err(StoreError::Failed {
                queue: aggregate.into().to_owned(),
                message: "the queue is not open".to_owned(),
            }),
        };
        match result {
            Ok(accepted) => {
                aggregate.count_emitted(accepted.accepted as u64);
                tracing::debug!(pipeline = %shared.name, into = aggregate.into(), window_start = %crate::deadletter::rfc3339(window.start_micros), events = accepted.accepted, "aggregate window emitted");
                break;
            }
            Err(e) if patient => {
                shared.warn_rate_limited(
                    "an aggregate cannot emit its window yet; waiting",
                    &e.to_string(),
                );
                tokio::select! {
                    _ = tokio::time::sleep(DLQ_FULL_WAIT) => {}
                    _ = stop.changed() => return false,
                }
            }
            Err(e) => {
                tracing::warn!(pipeline = %shared.name, error = %e, "an aggregate window could not be emitted at stop; its events will be aggregated again at the next start");
                return false;
            }
        }
    }
    let mut offsets: HashMap<usize, Vec<u64>> = HashMap::new();
    for held in &window.held {
        offsets.entry(held.input).or_default().push(held.offset);
    }
    offsets
        .into_iter()
        .all(|(input, offsets)| acknowledge(shared, input, &offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_caps_double_up_to_the_maximum() {
        let retry = RetryConfig {
            attempts_max: 10,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(1),
        };
        let caps: Vec<u128> = (1..=5)
            .map(|n| backoff_cap(&retry, n).as_millis())
            .collect();
        assert_eq!(caps, [200, 400, 800, 1000, 1000]);
        assert_eq!(
            backoff_cap(&retry, 1000),
            Duration::from_secs(1),
            "no overflow"
        );
    }

    #[test]
    fn writes_are_cut_at_max_events_and_max_bytes() {
        // Five lines of 10 bytes each.
        let ends = [10, 20, 30, 40, 50];
        assert_eq!(chunks(&ends, usize::MAX, usize::MAX), [(0, 5)]);
        assert_eq!(chunks(&ends, 2, usize::MAX), [(0, 2), (2, 4), (4, 5)]);
        assert_eq!(chunks(&ends, 10, 25), [(0, 2), (2, 4), (4, 5)]);
        assert_eq!(chunks(&ends, 10, 30), [(0, 3), (3, 5)]);
        // A line larger than max_bytes goes alone.
        assert_eq!(chunks(&[100, 110, 210], 10, 50), [(0, 1), (1, 2), (2, 3)]);
        assert!(chunks(&[], 10, 10).is_empty());
    }
}
