//! A running pipeline: `workers` tasks sharing one reader over the pipeline's cursors (one per
//! queue it reads, each named after the pipeline, so pipelines on the same queue never share a
//! position, a retry or a backlog). A worker takes a batch, runs the chain, hands the result to
//! the sink, and acknowledges the batch to its queue only once the sink confirmed it or the
//! failed events are durably in the dead-letter queue.
//!
//! Scheduling: the reader holds at most one read-ahead batch per queue and serves the most urgent
//! queue that has events — unless a batch of a less urgent queue has waited `starvation_max`
//! since its oldest event was accepted: then the longest-waiting such batch goes first. So under
//! a flood of urgent events, a less urgent event waits at most about `starvation_max` plus one
//! batch per starving queue.
//!
//! Retries: retryable sink errors are retried up to `attempts_max` attempts in all, waiting a
//! random time in `[0, min(backoff_max, backoff_initial × 2^n)]` (full jitter; at least the
//! sink's `Retry-After`, capped at `backoff_max`). Permanent errors and exhausted retries
//! dead-letter the batch's events; so does a processor failing on an event. Head-of-line delay
//! for one batch is therefore at most `attempts_max × (backoff_max + sink timeout)`; other
//! workers keep delivering meanwhile. Ordering: none across batches when `workers > 1`.
//!
//! Shutdown: the stop signal ends waiting for input and retry waits at once; an unfinished batch
//! is left unacknowledged and is delivered again at the next start.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::select_all;
use rand::Rng;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use veltrix_core::config::RetryConfig;
use veltrix_core::expr::Runtime;
use veltrix_log::{Acker, Cursor, Record};

use crate::deadletter::{DeadLetters, Failure};
use crate::handler::{Batch, Retry, Sink};
use crate::processors::{Chain, Outcome};
use crate::record;
use crate::stats::{PipelineCounters, SinkCounters};

/// Failpoint between a batch's delivery (or dead-lettering) and its acknowledgement.
#[cfg(feature = "failpoints")]
pub const DELIVERED_BEFORE_ACK: &str = "veltrix-engine/pipeline/delivered-before-ack";
/// Payload bytes one worker takes at once, besides `batch_events_max`.
const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// At most one warning line per this period per pipeline for per-event problems.
const WARN_EVERY: Duration = Duration::from_secs(1);
/// Wait between attempts to put events into a full dead-letter queue.
const DLQ_FULL_WAIT: Duration = Duration::from_millis(500);

/// One queue read by a pipeline.
pub(crate) struct Input {
    pub(crate) queue: String,
    pub(crate) priority: u8,
    pub(crate) cursor: Cursor,
}

/// The cursors of a pipeline, most urgent first, with one read-ahead batch each.
struct Reader {
    inputs: Vec<Input>,
    ahead: Vec<Option<Vec<Record>>>,
    starvation_max: Duration,
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

    /// The next batch, or `None` on stop (or when a queue failed: the error is logged).
    async fn next(
        &mut self,
        max: usize,
        stop: &mut watch::Receiver<bool>,
        pipeline: &str,
    ) -> Option<(usize, Vec<Record>)> {
        loop {
            if *stop.borrow() {
                return None;
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
                        return None;
                    }
                }
            }
            if let Some(i) = self.pick() {
                return self.ahead[i].take().map(|batch| (i, batch));
            }
            let waits = self.inputs.iter_mut().map(|i| Box::pin(i.cursor.wait()));
            tokio::select! {
                _ = select_all(waits) => {}
                _ = stop.changed() => return None,
            }
        }
    }
}

/// Everything a worker shares with its siblings.
struct Shared {
    name: String,
    sink_name: String,
    reader: Mutex<Reader>,
    /// Per input: its queue name and acknowledger.
    ackers: Vec<(String, Acker)>,
    chain: Chain,
    sink: Arc<dyn Sink>,
    dead_letters: Arc<DeadLetters>,
    batch_events_max: usize,
    retry: RetryConfig,
    counters: Arc<PipelineCounters>,
    sink_counters: Arc<SinkCounters>,
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
    Filtered,
    DeadLettered,
    /// Each retry of a batch counts its events.
    Retried,
}

/// The pipeline's metric handles, resolved once at start: the hot path records into them
/// without building label sets per batch.
struct Metrics {
    events: [metrics::Counter; 4],
    retries: metrics::Counter,
    processing: metrics::Histogram,
    e2e: metrics::Histogram,
    batch_events: metrics::Histogram,
    sink_ok: metrics::Counter,
    sink_duration: metrics::Histogram,
    sink_in_flight: metrics::Gauge,
}

impl Metrics {
    fn new(pipeline: &str, sink: &str) -> Metrics {
        let (p, s) = (pipeline.to_owned(), sink.to_owned());
        let events = ["delivered", "filtered", "dead_lettered", "retried"]
            .map(|outcome| metrics::counter!("veltrix_pipeline_events_total", "pipeline" => p.clone(), "outcome" => outcome));
        Metrics {
            events,
            retries: metrics::counter!("veltrix_pipeline_retries_total", "pipeline" => p.clone()),
            processing: metrics::histogram!("veltrix_pipeline_processing_duration_seconds", "pipeline" => p.clone()),
            e2e: metrics::histogram!("veltrix_e2e_latency_seconds", "pipeline" => p),
            batch_events: metrics::histogram!("veltrix_sink_batch_events", "sink" => s.clone()),
            sink_ok: metrics::counter!("veltrix_sink_requests_total", "sink" => s.clone(), "outcome" => "ok", "status" => "ok"),
            sink_duration: metrics::histogram!("veltrix_sink_request_duration_seconds", "sink" => s.clone()),
            sink_in_flight: metrics::gauge!("veltrix_sink_in_flight_requests", "sink" => s),
        }
    }
}

/// How a pipeline is set up (from its config, with its queues, sink and DLQ opened).
pub(crate) struct Setup {
    pub(crate) name: String,
    pub(crate) inputs: Vec<Input>,
    pub(crate) chain: Chain,
    pub(crate) sink_name: String,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) workers: usize,
    pub(crate) batch_events_max: usize,
    pub(crate) starvation_max: Duration,
    pub(crate) retry: RetryConfig,
    pub(crate) counters: Arc<PipelineCounters>,
    pub(crate) sink_counters: Arc<SinkCounters>,
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
            sink_name,
            sink,
            dead_letters,
            workers,
            batch_events_max,
            starvation_max,
            retry,
            counters,
            sink_counters,
        } = setup;
        inputs.sort_by_key(|i| i.priority);
        let metrics = Metrics::new(&name, &sink_name);
        let ackers = inputs
            .iter()
            .map(|i| (i.queue.clone(), i.cursor.acker()))
            .collect();
        let ahead = inputs.iter().map(|_| None).collect();
        let shared = Arc::new(Shared {
            name: name.clone(),
            sink_name,
            reader: Mutex::new(Reader {
                inputs,
                ahead,
                starvation_max,
            }),
            ackers,
            chain,
            sink,
            dead_letters,
            batch_events_max,
            retry,
            counters,
            sink_counters,
            last_warning: std::sync::Mutex::new(None),
            metrics,
        });
        let workers = (0..workers.max(1))
            .map(|_| tokio::spawn(work(shared.clone(), stop.clone())))
            .collect();
        Pipeline { name, workers }
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

/// The result of delivering one batch.
enum Delivery {
    Delivered,
    /// Failed for good after `attempts`.
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

async fn work(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut runtime = Runtime::new();
    let mut offsets = Vec::with_capacity(shared.batch_events_max);
    loop {
        let next = {
            let mut reader = shared.reader.lock().await;
            reader
                .next(shared.batch_events_max, &mut stop, &shared.name)
                .await
        };
        let Some((input, records)) = next else {
            return;
        };
        let queue = &shared.ackers[input].0;
        let processing = Instant::now();
        let mut out = Vec::with_capacity(records.iter().map(|r| r.payload.len()).sum());
        let mut emitted: Vec<&Record> = Vec::with_capacity(records.len());
        let mut lines = 0;
        let mut dead: Vec<Vec<u8>> = Vec::new();
        let mut filtered = 0u64;
        for r in &records {
            let (_, body) = record::split(&r.payload);
            match shared.chain.apply(body, &mut runtime, &mut out) {
                Outcome::Emitted(n) => {
                    emitted.push(r);
                    lines += n;
                }
                Outcome::Filtered => filtered += 1,
                Outcome::Failed(why) => {
                    shared.warn_rate_limited("an event failed processing; dead-lettered", &why);
                    let now = record::now_micros();
                    let failure = Failure {
                        reason: "processing failed",
                        attempts: 1,
                        last_error: &why,
                        first_attempt_micros: now,
                        last_attempt_micros: now,
                    };
                    dead.push(shared.dead_letters.entry(queue, &r.payload, &failure));
                }
            }
        }
        let processed = processing.elapsed();
        shared.metrics.processing.record(processed.as_secs_f64());
        shared.add_busy(processed);
        if !emitted.is_empty() {
            shared.metrics.batch_events.record(lines as f64);
            let batch = Batch::new(out.into(), lines);
            match deliver(&shared, &batch, &mut stop).await {
                Delivery::Delivered => {
                    shared.count(Counted::Delivered, lines as u64);
                    let now = record::now_micros();
                    for r in &emitted {
                        shared
                            .metrics
                            .e2e
                            .record(now.saturating_sub(record::split(&r.payload).0) as f64 / 1e6);
                    }
                    shared
                        .counters
                        .record_latencies(emitted.iter().map(|r| record::split(&r.payload).0));
                    trace_deliveries(&shared, &emitted);
                }
                Delivery::Failed {
                    reason,
                    attempts,
                    last_error,
                    first,
                    last,
                } => {
                    shared.warn_rate_limited("a batch failed for good; dead-lettered", &last_error);
                    let failure = Failure {
                        reason,
                        attempts,
                        last_error: &last_error,
                        first_attempt_micros: first,
                        last_attempt_micros: last,
                    };
                    dead.extend(
                        emitted
                            .iter()
                            .map(|r| shared.dead_letters.entry(queue, &r.payload, &failure)),
                    );
                }
                Delivery::Stopped => return,
            }
        }
        shared.count(Counted::Filtered, filtered);
        if !dead.is_empty() {
            if !dead_letter(&shared, &dead, &mut stop).await {
                return;
            }
            shared.count(Counted::DeadLettered, dead.len() as u64);
        }
        // Failpoint (feature `failpoints`; a no-op without it): armed with `return`, the process
        // dies right here, the sink holding the batch and the queue not knowing it — the crash
        // that at-least-once must turn into a redelivery, never a loss.
        #[cfg(feature = "failpoints")]
        fail::fail_point!(DELIVERED_BEFORE_ACK, |_| std::process::abort());
        offsets.clear();
        offsets.extend(records.iter().map(|r| r.offset));
        match shared.ackers[input].1.ack_many(&offsets) {
            Ok(()) => {}
            // A `drop_oldest` queue discarded the segment under us: nothing left to acknowledge.
            Err(veltrix_log::Error::NotInFlight(_)) => {}
            Err(e) => {
                tracing::error!(pipeline = %shared.name, error = %e, "acknowledging a delivered batch failed");
                return;
            }
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
        let _span = tracing::trace_span!(target: "veltrix::event", "veltrix.deliver", event.id = id, pipeline = %shared.name, sink = %shared.sink_name).entered();
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

/// Writes one batch to the sink with retries; see the module comment.
async fn deliver(shared: &Shared, batch: &Batch, stop: &mut watch::Receiver<bool>) -> Delivery {
    let events = batch.len() as u64;
    let first = record::now_micros();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = Instant::now();
        shared.metrics.sink_in_flight.increment(1.0);
        let result = shared.sink.write(batch).await;
        shared.metrics.sink_in_flight.decrement(1.0);
        shared
            .sink_counters
            .record_request(result.is_ok(), started.elapsed());
        shared.add_busy(started.elapsed());
        shared
            .metrics
            .sink_duration
            .record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(()) => {
                shared.metrics.sink_ok.increment(1);
                return Delivery::Delivered;
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
        metrics::counter!("veltrix_sink_requests_total", "sink" => shared.sink_name.clone(), "outcome" => outcome, "status" => status).increment(1);
        let failed = |reason| Delivery::Failed {
            reason,
            attempts: attempt,
            last_error: error.message.clone(),
            first,
            last: record::now_micros(),
        };
        let after = match error.retry {
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
            return Delivery::Stopped;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return Delivery::Stopped,
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
}
